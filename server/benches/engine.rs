//! `make bench`: doppel's engine against rsync and cp, in one run, on one machine.
//!
//! Builds a deterministic reference tree (about 1 GB at BENCH_SCALE=1: 40,000 files of
//! 1-64 KiB in 2,000 directories, four 100 MiB files, 400 symlinks, hard links), then times
//! a full copy (doppel, `rsync -a`, `cp -a`; three rounds, each contender going first
//! once, the median of the rounds' ratios reported), syncs after a "1 %" change (doppel
//! against `rsync -a --delete --no-whole-file`, three rounds taking turns at going first,
//! the median ratio reported), and a sync with
//! nothing changed. Each doppel copy is a child process, so its peak memory
//! (RSS) is measured alone. Syncs run as `serve` runs them: in one long-lived process with
//! the change watch, which has synced the copy once before the change (its steady state);
//! a no-op sync in a new process without the watch is timed too. The page cache is warm
//! for every contender and `sync` runs before each timing, so nobody pays for another's writes. doppel's times include its
//! durability barrier (syncfs); rsync and cp do not sync, so their copies are also timed
//! with the `sync` that makes them durable.

use std::fs;
use std::io::{BufRead, Write};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Instant;

use doppel::engine::{self, Control, Place, Summary};

#[path = "tree.rs"]
mod tree;

use tree::{build_tree, change_tree_with, rsync_sent_bytes, small_files};

/// The allocator the `doppel` binary runs the engine with (see server/src/main.rs).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Rounds of the sync after a 1 % change (odd: the median is one of them).
const SYNC_ROUNDS: usize = 3;

/// Rounds of the copy (odd, as the syncs').
const COPY_ROUNDS: usize = 3;

/// One round of copies: doppel's time and summary, rsync's and cp's times without and
/// with the `sync` that makes them durable.
struct CopyRound {
    doppel: f64,
    summary: Summary,
    rsync: (f64, f64),
    cp: (f64, f64),
}

fn sync_all() {
    let _ = Command::new("sync").status();
}

/// Reads every file once so all contenders start from a warm page cache.
fn warm(root: &Path) {
    let _ = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "find '{}' -type f -exec cat {{}} + > /dev/null",
            root.display()
        ))
        .status();
}

fn timed(mut cmd: Command) -> (f64, String) {
    sync_all();
    let t = Instant::now();
    let out = cmd.output().expect("run");
    let secs = t.elapsed().as_secs_f64();
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    (secs, String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Runs `cmd` after a `sync`; returns its time and its time including the `sync` that
/// makes what it wrote durable.
fn timed_then_synced(cmd: Command) -> (f64, f64) {
    let (t, _) = timed(cmd);
    let start = Instant::now();
    sync_all();
    (t, t + start.elapsed().as_secs_f64())
}

fn children_peak_rss_mb() -> f64 {
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, &mut ru) };
    ru.ru_maxrss as f64 / 1024.0
}

/// This binary again, running one engine operation (so it is measured alone).
fn doppel_op(op: &str, src: &Place, dst: &Place) -> Command {
    let mut c = Command::new(std::env::current_exe().unwrap());
    c.args([op])
        .arg(&src.root)
        .arg(&src.state_dir)
        .arg(&dst.root)
        .arg(&dst.state_dir);
    c
}

/// Processes added for the no-op sync on a busy host (a host running many containers has
/// thousands).
const BUSY_HOST_PROCESSES: usize = 1000;

/// A host busy with other work: processes that sleep, each holding seven files open to
/// read (as a container's processes hold their libraries and data, on the filesystem of
/// the trees, files in `files`), in a process group of their own, killed when dropped
/// (a failed run included).
struct Crowd(Child);

impl Crowd {
    fn start(n: usize, files: &Path) -> Crowd {
        fs::create_dir_all(files).unwrap();
        let fds: String = (3..10)
            .map(|fd| {
                let file = files.join(format!("file{fd}"));
                fs::write(&file, b"held open").unwrap();
                format!(" {fd}<'{}'", file.display())
            })
            .collect();
        let mut child = Command::new("sh")
            .arg("-c")
            .arg(format!(
                "for i in $(seq {n}); do sleep 3600{fds} & done; echo started; wait"
            ))
            .stdout(Stdio::piped())
            .process_group(0)
            .spawn()
            .expect("sh runs");
        let out = child.stdout.take().unwrap();
        let crowd = Crowd(child);
        // (Printed once every one of them is forked.)
        let mut line = String::new();
        std::io::BufReader::new(out).read_line(&mut line).unwrap();
        assert_eq!(line.trim(), "started");
        // Then each of them still runs `sleep` in (an exec, its libraries): the timing waits
        // until all of them sleep, so that it shares the cores with none of that.
        let group = crowd.0.id();
        let started = Instant::now();
        while sleeping_in(group) < n && started.elapsed().as_secs() < 60 {
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        crowd
    }
}

impl Drop for Crowd {
    fn drop(&mut self) {
        // SAFETY: a signal to the process group this crowd leads.
        unsafe { libc::kill(-(self.0.id() as i32), libc::SIGKILL) };
        let _ = self.0.wait();
    }
}

/// How many processes of the process group `group` sleep in `sleep`.
fn sleeping_in(group: u32) -> usize {
    let Ok(procs) = fs::read_dir("/proc") else {
        return 0;
    };
    procs
        .flatten()
        .filter_map(|p| fs::read_to_string(p.path().join("stat")).ok())
        .filter(|stat| {
            // pid (comm) state ppid pgrp ...
            let Some((comm, rest)) = stat.split_once(") ") else {
                return false;
            };
            let fields: Vec<&str> = rest.split(' ').collect();
            comm.ends_with("(sleep")
                && fields.first() == Some(&"S")
                && fields.get(2) == Some(&group.to_string().as_str())
        })
        .count()
}

/// How many processes the host runs.
fn process_count() -> usize {
    fs::read_dir("/proc")
        .map(|d| {
            d.flatten()
                .filter(|e| {
                    e.file_name()
                        .as_encoded_bytes()
                        .iter()
                        .all(u8::is_ascii_digit)
                })
                .count()
        })
        .unwrap_or(0)
}

/// This binary again, running engine operations one after the other as `serve` does: in
/// one process, with the change watch.
struct Session {
    child: Child,
    out: std::io::BufReader<std::process::ChildStdout>,
}

impl Session {
    fn start() -> Session {
        let mut child = Command::new(std::env::current_exe().unwrap())
            .arg("__session")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("run");
        let out = std::io::BufReader::new(child.stdout.take().unwrap());
        Session { child, out }
    }

    /// Runs a sync after a `sync`: its time and its summary.
    fn timed_sync(&mut self, src: &Place, dst: &Place) -> (f64, Summary) {
        self.timed("sync", src, dst)
    }

    /// [`Session::timed_sync`], for operation `op` (`sync` or `copy`).
    fn timed(&mut self, op: &str, src: &Place, dst: &Place) -> (f64, Summary) {
        sync_all();
        let t = Instant::now();
        let line = [&src.root, &src.state_dir, &dst.root, &dst.state_dir]
            .map(|p| p.to_str().unwrap())
            .join("\t");
        let line = format!("{op}\t{line}");
        let stdin = self.child.stdin.as_mut().unwrap();
        writeln!(stdin, "{line}")
            .and_then(|()| stdin.flush())
            .unwrap();
        let mut answer = String::new();
        self.out.read_line(&mut answer).unwrap();
        let secs = t.elapsed().as_secs_f64();
        let summary =
            serde_json::from_str(answer.trim()).unwrap_or_else(|_| panic!("{op} failed: {answer}"));
        (secs, summary)
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        drop(self.child.stdin.take());
        let _ = self.child.wait();
    }
}

/// `__session`: one operation per line of stdin (`sync` or `copy`, then both places'
/// roots and state dirs, tab-separated), one summary (JSON) or error per line of stdout.
fn run_session() {
    let watch = engine::watch::Watch::shared();
    for line in std::io::stdin().lock().lines() {
        let line = line.unwrap();
        let f: Vec<&str> = line.split('\t').collect();
        let (src, dst) = (Place::new(f[1], f[2]), Place::new(f[3], f[4]));
        let ctl = Control::new().with_watch(watch.clone());
        let done = match f[0] {
            "copy" => engine::copy(&src, &dst, &ctl),
            _ => engine::sync(&src, &dst, &ctl),
        };
        match done {
            Ok(s) => println!("{}", serde_json::to_string(&s).unwrap()),
            Err(e) => println!("{e}"),
        }
    }
}

fn run_child(args: &[String]) {
    let src = Place::new(&args[2], &args[3]);
    let dst = Place::new(&args[4], &args[5]);
    let ctl = Control::new();
    let s = match args[1].as_str() {
        // A copy as `serve` makes it, with the change watch, its first in this process: it
        // knows nothing of the source from before (the watch starts with the copy).
        "__copy" => engine::copy(&src, &dst, &ctl.with_watch(engine::watch::Watch::shared())),
        // (The no-op sync of a new process without the watch: both trees walked.)
        "__sync" => engine::sync(&src, &dst, &ctl),
        _ => unreachable!(),
    }
    .unwrap_or_else(|e| {
        eprintln!("{e}");
        std::process::exit(1)
    });
    println!("{}", serde_json::to_string(&s).unwrap());
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() == 6 && args[1].starts_with("__") {
        return run_child(&args);
    }
    if args.get(1).map(String::as_str) == Some("__session") {
        return run_session();
    }
    let scale: f64 = std::env::var("BENCH_SCALE")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1.0);
    // `__change <root> <seed>`: the 1 % change, again, with new bytes, on a tree the bench
    // built (BENCH_KEEP=1), to time syncs one by one in a `__session`.
    if let (Some("__change"), Some(root)) = (args.get(1).map(String::as_str), args.get(2)) {
        let root = Path::new(root);
        let seed = args.get(3).and_then(|s| s.parse().ok()).unwrap_or(1);
        return change_tree_with(root, &small_files(root, scale), scale, seed);
    }
    let base = std::env::var("BENCH_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/bench"));
    // (What a run with BENCH_KEEP left mounted goes first.)
    for kind in ["xfs", "xfs-image", "btrfs"] {
        let _ = Command::new("umount")
            .arg("-R")
            .arg(base.join(kind).join("mnt"))
            .stderr(Stdio::null())
            .status();
    }
    let _ = fs::remove_dir_all(&base);
    fs::create_dir_all(&base).unwrap();
    let base = base.canonicalize().unwrap();
    // The host's filesystem, then XFS (reflink) and btrfs images made and mounted for the
    // run (root, mkfs.xfs and mkfs.btrfs: `make bench` installs them).
    // BENCH_FS (say `host,btrfs`) measures only those filesystems.
    // `xfs-image`: XFS again, its source tree an image tree (see `engine::image`).
    let wanted = std::env::var("BENCH_FS").unwrap_or_else(|_| "host,xfs,xfs-image,btrfs".into());
    let wanted: Vec<&str> = wanted.split(',').map(str::trim).collect();
    if wanted.contains(&"host") {
        let host = base.join("host");
        fs::create_dir_all(&host).unwrap();
        bench(&host, scale, &fs_type(&host));
    }
    // Room for the tree, rsync's three full copies and cp's, with margin.
    let image = ((12u64 << 30) as f64 * scale).max((2u64 << 30) as f64) as u64;
    for kind in ["xfs", "xfs-image", "btrfs"]
        .into_iter()
        .filter(|k| wanted.contains(k))
    {
        // (From an image tree, cp's copies are not reflinked: three more full copies.)
        let size = if kind == "xfs-image" {
            2 * image
        } else {
            image
        };
        match LoopFs::mount(&base.join(kind), kind, size) {
            Ok(mounted) => bench(&mounted.root, scale, kind),
            Err(why) => println!("\n{kind}: not measured ({why})"),
        }
    }
    if std::env::var("BENCH_KEEP").is_err() {
        let _ = fs::remove_dir_all(&base);
    }
}

/// The type of the filesystem `dir` is on (`ext4`, `xfs`, ...).
fn fs_type(dir: &Path) -> String {
    Command::new("findmnt")
        .args(["-n", "-o", "FSTYPE", "-T"])
        .arg(dir)
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .filter(|t| !t.is_empty())
        .unwrap_or_else(|| "host".into())
}

/// A filesystem image loop-mounted for the run; unmounted and removed when dropped.
struct LoopFs {
    root: PathBuf,
    image: PathBuf,
}

impl LoopFs {
    fn mount(dir: &Path, kind: &str, size: u64) -> Result<LoopFs, String> {
        fs::create_dir_all(dir).map_err(|e| e.to_string())?;
        let image = dir.join("image");
        let root = dir.join("mnt");
        fs::create_dir_all(&root).map_err(|e| e.to_string())?;
        fs::File::create(&image)
            .and_then(|f| f.set_len(size))
            .map_err(|e| e.to_string())?;
        let mkfs = match kind {
            "xfs" | "xfs-image" => Command::new("mkfs.xfs")
                .args(["-q", "-m", "reflink=1"])
                .arg(&image)
                .output(),
            _ => Command::new("mkfs.btrfs").arg("-q").arg(&image).output(),
        }
        .map_err(|e| format!("mkfs.{kind}: {e}"))?;
        if !mkfs.status.success() {
            return Err(String::from_utf8_lossy(&mkfs.stderr).trim().to_string());
        }
        let mount = Command::new("mount")
            .args(["-o", "loop"])
            .arg(&image)
            .arg(&root)
            .output()
            .map_err(|e| e.to_string())?;
        if !mount.status.success() {
            return Err(String::from_utf8_lossy(&mount.stderr).trim().to_string());
        }
        Ok(LoopFs { root, image })
    }
}

impl Drop for LoopFs {
    fn drop(&mut self) {
        // BENCH_KEEP: left mounted, to time syncs by hand (`__change`, `__session`).
        if std::env::var("BENCH_KEEP").is_ok() {
            return;
        }
        // (Recursively: image trees are mounted inside.)
        let _ = Command::new("umount").arg("-R").arg(&self.root).status();
        let _ = fs::remove_file(&self.image);
    }
}

/// The benchmark in `dir`, on the filesystem called `fs_name`.
fn bench(dir: &Path, scale: f64, fs_name: &str) {
    let place = |n: &str| Place::new(dir.join("roots").join(n), dir.join("state").join(n));
    let src = place("src");

    println!();
    println!(
        "doppel engine benchmark on {fs_name}, BENCH_SCALE={scale}, in {}",
        dir.display()
    );
    // On btrfs every tree doppel lays down (a new container, a copy) is a subvolume of its
    // own: the source is made one, as doppel would have made it.
    if fs_name == "btrfs" {
        let parent = src.root.parent().unwrap();
        fs::create_dir_all(parent).unwrap();
        let parent = engine::fsx::open_dir(parent).unwrap();
        engine::btrfs::create_subvolume(std::os::fd::AsFd::as_fd(&parent), b"src").unwrap();
    }
    // An image tree: an XFS filesystem in a sparse file (as large as the filesystem the
    // bench runs on), loop-mounted.
    if fs_name == "xfs-image" {
        fs::create_dir_all(src.root.parent().unwrap()).unwrap();
        let (_, total) = engine::fsx::free_space(dir).unwrap();
        engine::image::create(&src.root, total).unwrap();
    }
    let t = Instant::now();
    let (files, paths) = build_tree(&src.root, scale);
    println!(
        "built the tree: {files} small files + 4 big ones in {:.1} s",
        t.elapsed().as_secs_f64()
    );
    warm(&src.root);

    // Copy. Three rounds of doppel, rsync and cp, each contender going first once, and
    // the median of the rounds' ratios reported: on these shared machines one copy's time
    // can double from one minute to the next (the disk's, not the contender's), and a
    // ratio taken within one round shares its weather. Creating files also gets slower or
    // faster as the filesystem's state drifts during a run (on ext4 without a journal,
    // inodes freed in the last minutes are skipped at a cost), so no contender keeps its
    // place in the line. Each copy's `sync` afterwards is timed too: doppel's copy is
    // durable when it ends, the others' are not yet.
    let dcopy = place("doppel");
    let rs_dst = dir.join("roots/rsync");
    let cp_dst = dir.join("roots/cp");
    let mut copy_rounds: Vec<CopyRound> = Vec::new();
    let mut peak_rss = 0.0;
    for round in 0..COPY_ROUNDS {
        let suffix = if round == 0 {
            String::new()
        } else {
            format!("-{}", round + 1)
        };
        let (mut doppel, mut rsync, mut cp) = (None, None, None);
        for turn in 0..3 {
            match (round + turn) % 3 {
                0 => {
                    let to = place(&format!("doppel{suffix}"));
                    let (t, out) = timed(doppel_op("__copy", &src, &to));
                    if round == 0 && turn == 0 {
                        // The largest child so far (only small helpers ran before it).
                        peak_rss = children_peak_rss_mb();
                    }
                    doppel = Some((t, serde_json::from_str::<Summary>(out.trim()).unwrap()));
                }
                1 => {
                    let mut c = Command::new("rsync");
                    c.arg("-a")
                        .arg(format!("{}/", src.root.display()))
                        .arg(format!("{}{suffix}", rs_dst.display()));
                    rsync = Some(timed_then_synced(c));
                }
                _ => {
                    let mut c = Command::new("cp");
                    c.arg("-a")
                        .arg(&src.root)
                        .arg(format!("{}{suffix}", cp_dst.display()));
                    cp = Some(timed_then_synced(c));
                }
            }
        }
        let (doppel, summary) = doppel.unwrap();
        copy_rounds.push(CopyRound {
            doppel,
            summary,
            rsync: rsync.unwrap(),
            cp: cp.unwrap(),
        });
    }
    let copy_per_round: Vec<String> = copy_rounds
        .iter()
        .map(|r| format!("{:.2}/{:.2}/{:.2}", r.doppel, r.rsync.0, r.rsync.1))
        .collect();
    let median = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let copy_ratio = median(copy_rounds.iter().map(|r| r.doppel / r.rsync.0).collect());
    let durable_ratio = median(copy_rounds.iter().map(|r| r.doppel / r.rsync.1).collect());
    let copy_doppel = median(copy_rounds.iter().map(|r| r.doppel).collect());
    let copy_rsync = (
        median(copy_rounds.iter().map(|r| r.rsync.0).collect()),
        median(copy_rounds.iter().map(|r| r.rsync.1).collect()),
    );
    let copy_cp = (
        median(copy_rounds.iter().map(|r| r.cp.0).collect()),
        median(copy_rounds.iter().map(|r| r.cp.1).collect()),
    );
    // What a copy does in the steady state: the last round's (the first copy of all reads
    // the source without a quick-check cache).
    let copy_summary = copy_rounds.pop().unwrap().summary;

    // Syncs after the 1 % change, in serve's steady state: the copy was synced once before.
    // Three rounds, each after a new 1 % change, doppel and rsync taking turns at going
    // first (whoever goes first meets the filesystem still busy with what came before);
    // the median of each round's ratio is reported.
    let mut session = Session::start();
    let (_, first) = session.timed_sync(&src, &dcopy);
    assert_eq!(first.bytes_sent, 0);
    let rsync_sync = || {
        timed({
            let mut c = Command::new("rsync");
            c.args(["-a", "--delete", "--no-whole-file", "--stats"])
                .arg(format!("{}/", src.root.display()))
                .arg(&rs_dst);
            c
        })
    };
    let mut rounds = Vec::new();
    for round in 0..SYNC_ROUNDS {
        change_tree_with(&src.root, &paths, scale, tree::SEED + round as u64);
        warm(&src.root);
        let ((d, summary), (r, stats)) = if round % 2 == 0 {
            let d = session.timed_sync(&src, &dcopy);
            (d, rsync_sync())
        } else {
            let r = rsync_sync();
            (session.timed_sync(&src, &dcopy), r)
        };
        rounds.push((d, r, summary, rsync_sent_bytes(&stats)));
    }
    rounds.sort_by(|a, b| (a.0 / a.1).total_cmp(&(b.0 / b.1)));
    let per_round: Vec<String> = rounds
        .iter()
        .map(|(d, r, _, _)| format!("{d:.2}/{r:.2}"))
        .collect();
    let (sync_doppel, sync_rsync, sync_summary, rsync_bytes) = rounds.swap_remove(SYNC_ROUNDS / 2);

    // Nothing changed since. (Right after the syncs: the check below reads the trees, and
    // a first read after a change writes access times, which on btrfs changes the
    // subvolume, as any other use of it would.)
    let (noop, noop_summary) = session.timed_sync(&src, &dcopy);
    assert_eq!(noop_summary.bytes_sent, 0);
    // The same on a busy host: the change watch looks at every process's open files and
    // mappings at each question (see engine/watch.rs), so its cost grows with them.
    let (noop_busy, busy_processes, busy_summary) = {
        let crowd = Crowd::start(BUSY_HOST_PROCESSES, &dir.join("crowd"));
        let processes = process_count();
        let (t, s) = session.timed_sync(&src, &dcopy);
        assert_eq!(s.bytes_sent, 0);
        drop(crowd);
        (t, processes, s)
    };
    // A copy taken whole (a clone, a snapshot) of a source at rest, in a running doppel:
    // the second of two in a row reads none of the source again (its first scan, or the
    // syncs', are paired with the source's mark).
    let again = matches!(fs_name, "xfs-image" | "btrfs").then(|| {
        session.timed("copy", &src, &place("doppel-again-1"));
        session.timed("copy", &src, &place("doppel-again-2"))
    });
    drop(session);
    // The same in a new process, without the watch: both trees walked (outside btrfs).
    let (noop_walked, out) = timed(doppel_op("__sync", &src, &dcopy));
    let noop_walked_summary: Summary = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(noop_walked_summary.bytes_sent, 0);

    // Both copies must now equal the source.
    let (check, _) = timed({
        let mut c = Command::new("diff");
        c.arg("-r")
            .arg("--no-dereference")
            .arg(&src.root)
            .arg(&dcopy.root);
        c
    });
    let _ = check;

    let mb = |b: u64| b as f64 / 1e6;
    println!();
    println!("| operation | doppel | rsync | cp -a |");
    println!("|---|---|---|---|");
    println!(
        "| copy (s, median of {COPY_ROUNDS} rounds) | {copy_doppel:.2} | {:.2} | {:.2} |",
        copy_rsync.0, copy_cp.0
    );
    println!(
        "| copy until durable (s, median; + sync for rsync and cp) | {copy_doppel:.2} | {:.2} | {:.2} |",
        copy_rsync.1, copy_cp.1
    );
    println!(
        "| sync after 1 % change (s, the round of median ratio of {SYNC_ROUNDS}) | {sync_doppel:.2} | {sync_rsync:.2} | |"
    );
    println!(
        "| sync bytes sent (MB) | {:.2} | {:.2} | |",
        mb(sync_summary.bytes_sent),
        mb(rsync_bytes)
    );
    println!("| no-op sync (s) | {noop:.3} | | |");
    println!(
        "| no-op sync, {BUSY_HOST_PROCESSES} more processes on the host ({busy_processes} in all) (s) | {noop_busy:.3} | | |"
    );
    println!("| no-op sync, new process without the watch (s) | {noop_walked:.3} | | |");
    if let Some((t, _)) = &again {
        println!("| copy again, the source at rest, in a running doppel (s) | {t:.2} | | |");
    }
    println!();
    println!(
        "copy: {} files, {:.1} MB ({:.1} MB laid down by the kernel: {:?}); sync: +{} ~{} -{} meta {} delta files {}, content {:.2} MB, reused {:.2} MB, {:?}",
        copy_summary.tree_files,
        mb(copy_summary.tree_bytes),
        mb(copy_summary.kernel_bytes),
        copy_summary.notes,
        sync_summary.files_added,
        sync_summary.files_changed,
        sync_summary.files_deleted,
        sync_summary.metadata_only,
        sync_summary.delta_files,
        mb(sync_summary.content_bytes),
        mb(sync_summary.reused_bytes),
        sync_summary.notes
    );
    println!(
        "copy rounds, doppel/rsync/rsync then sync (s): {}",
        copy_per_round.join(", ")
    );
    println!(
        "sync rounds, doppel/rsync (s), by ratio: {}",
        per_round.join(", ")
    );
    println!(
        "doppel phases (ms): copy {:?}; sync {:?}; no-op sync {:?}; on a busy host {:?}; without the watch {:?}",
        copy_summary.phase_ms,
        sync_summary.phase_ms,
        noop_summary.phase_ms,
        busy_summary.phase_ms,
        noop_walked_summary.phase_ms
    );
    if let Some((t, summary)) = &again {
        println!(
            "copy again: {:?}, phases (ms) {:?}",
            summary.notes, summary.phase_ms
        );
        println!(
            "{fs_name} copy_again_time_ratio_vs_rsync {:.3}",
            t / copy_rsync.0
        );
    }
    println!("{fs_name} doppel_peak_rss_mb_during_copy {peak_rss:.1}");
    // Medians of the rounds' ratios.
    println!("{fs_name} copy_time_ratio_vs_rsync {copy_ratio:.3}");
    println!("{fs_name} copy_time_ratio_vs_rsync_then_sync {durable_ratio:.3}");
    println!(
        "{fs_name} sync_time_ratio_vs_rsync {:.3}",
        sync_doppel / sync_rsync
    );
    println!(
        "{fs_name} sync_bytes_ratio_vs_rsync {:.3}",
        sync_summary.bytes_sent as f64 / rsync_bytes.max(1) as f64
    );
    println!("{fs_name} noop_sync_seconds {noop:.3}");
    println!("{fs_name} noop_sync_without_watch_seconds {noop_walked:.3}");
    println!("{fs_name} noop_sync_busy_host_seconds {noop_busy:.3}");
    // XFS with directory trees: what `doppel convert-trees` costs once (a copy into an
    // image tree, then the swap), and a copy of the converted source after it, in a new
    // process (as a job after doppel starts again): a clone of its image.
    if fs_name == "xfs" {
        let (_, total) = engine::fsx::free_space(dir).unwrap();
        // A running container's tree as a convert job takes it (rsync's copy of the source
        // stands in): copied into its image while it runs, the 1 % change made meanwhile,
        // then the final pass, with the container stopped: its downtime (less the stop and
        // the start of its process).
        // (A job's control has the change watch, but the passes into the image leave it
        // out; in this process it would hold the bench's filesystem, which could not be
        // unmounted at the end.)
        let running = Place::new(&rs_dst, dir.join("state/rsync-converted"));
        let ctl = Control::new();
        let t = Instant::now();
        let first = engine::convert::copy_while_running(&running, total, &ctl);
        let first_s = t.elapsed().as_secs_f64();
        assert!(
            matches!(first, Ok(engine::convert::Converted::Done(_))),
            "{first:?}"
        );
        change_tree_with(&rs_dst, &small_files(&rs_dst, scale), scale, 99);
        let t = Instant::now();
        let last = engine::convert::finish_stopped(&running, total, &ctl.for_another_run());
        let last = last.unwrap();
        let down_s = t.elapsed().as_secs_f64();
        let engine::convert::Converted::Done(last) = last else {
            panic!("{last:?}")
        };
        engine::convert::remove_old(&running).unwrap();
        println!(
            "a running tree converted: first pass {first_s:.2} s while it runs; after the 1 % \
             change, the final pass {down_s:.2} s (+{} ~{} -{}), its downtime; phases (ms) {:?}, \
             {:?}",
            last.files_added, last.files_changed, last.files_deleted, last.phase_ms, last.notes
        );
        println!("{fs_name} convert_running_first_pass_seconds {first_s:.3}");
        println!("{fs_name} convert_running_downtime_seconds {down_s:.3}");
        let t = Instant::now();
        let converted = engine::convert::to_image_tree(&src, total, &Control::new()).unwrap();
        let convert_s = t.elapsed().as_secs_f64();
        assert!(
            matches!(converted, engine::convert::Converted::Done(_)),
            "{converted:?}"
        );
        let (copy_s, out) = timed(doppel_op("__copy", &src, &place("doppel-converted")));
        let copied: Summary = serde_json::from_str(out.trim()).unwrap();
        println!(
            "convert-trees of the source: {convert_s:.2} s; then a copy: {copy_s:.2} s, {:?}",
            copied.notes
        );
        println!(
            "{fs_name} convert_time_ratio_vs_rsync {:.3}",
            convert_s / copy_rsync.0
        );
        println!(
            "{fs_name} copy_after_convert_time_ratio_vs_rsync {:.3}",
            copy_s / copy_rsync.0
        );
    }
}
