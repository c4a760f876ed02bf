//! Copy and sync: the coordinator, the sender and the receiver.

use std::collections::HashMap;
use std::fs;
use std::io::{self, Write};
use std::os::fd::AsFd;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::time::Instant;

use super::fsx::{self, split_parent, Walker};
use super::manifest::{diff, path_cmp, Change, Chunk, Entry, Kind, Manifest};
use super::scan::{self, chunked_file_hash, hash_reader, CHUNKED_FILE_MIN};
use super::wire::{self, Frame, FrameReader, FrameWriter, PipeReader, PipeWriter, WireStats};
use super::{Control, EngineError, Phase, Place, Summary};

fn io_err(context: &'static str) -> impl Fn(io::Error) -> EngineError {
    EngineError::io(context)
}

fn remove_tree(path: &Path) -> Result<(), EngineError> {
    match fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => {
            fs::remove_dir_all(path).map_err(EngineError::io_path("removing", path))
        }
        Ok(_) => fs::remove_file(path).map_err(EngineError::io_path("removing", path)),
        Err(_) => Ok(()),
    }
}

/// Writes the commit marker durably: from here on, an interruption means "repair".
fn write_marker(place: &Place) -> Result<(), EngineError> {
    let path = place.commit_marker();
    let mut f = fs::File::create(&path).map_err(io_err("writing the commit marker"))?;
    f.write_all(b"commit in progress\n")
        .map_err(io_err("writing the commit marker"))?;
    f.sync_all().map_err(io_err("writing the commit marker"))
}

/// What a target holds of a source state: device files and sockets are reported, not copied.
fn without_specials(mut m: Manifest) -> Manifest {
    m.entries.retain(|e| e.kind != Kind::Special);
    m
}

/// Reads back the metadata of every entry of `want` under `root` (not following links),
/// keeping content identity (hashes, targets, xattrs) from `want`, whose content the
/// receiver verified as it wrote it. Comparing its root hash with `want`'s checks that
/// everything landed where and how it should.
fn restat(
    root: &Path,
    want: &Manifest,
    before: Option<&Manifest>,
) -> Result<Manifest, EngineError> {
    let mut walker =
        Walker::new(fsx::open_dir(root).map_err(EngineError::io_path("opening", root))?);
    let mut out = Vec::with_capacity(want.entries.len());
    let before = before.map_or(&[][..], |m| &m.entries[..]);
    // Names of an inode with several links, before or after: linking or unlinking another
    // name of the same inode moves its ctime, though the entry itself did not change.
    let multiply_linked: std::collections::HashSet<&[u8]> = before
        .iter()
        .chain(&want.entries)
        .filter_map(|e| e.link_to.as_deref().map(|first| [first, e.path.as_slice()]))
        .flatten()
        .collect();
    let mut old = before.iter().peekable();
    for w in &want.entries {
        // A file that a sync found already as wanted was not touched by it: the state its
        // scan just read is current. (Directories are re-read: their entries changed.)
        while old
            .peek()
            .is_some_and(|o| path_cmp(&o.path, &w.path) == std::cmp::Ordering::Less)
        {
            old.next();
        }
        if let Some(o) = old.peek().filter(|o| {
            o.path == w.path
                && o.kind != Kind::Dir
                && o.same_content(w)
                && o.same_metadata(w)
                && !multiply_linked.contains(o.path.as_slice())
        }) {
            out.push((*o).clone());
            continue;
        }
        let (dir, name) = walker
            .parent(&w.path)
            .map_err(io_err("re-reading the target"))?;
        let st = fsx::stat_at(dir, name).map_err(io_err("re-reading the target"))?;
        let mut e = w.clone();
        e.kind = fsx::kind_of(&st);
        e.mode = st.st_mode & 0o7777;
        e.uid = st.st_uid;
        e.gid = st.st_gid;
        e.ino = st.st_ino;
        e.ctime_ns = fsx::ctime_ns(&st);
        if e.kind != Kind::Dir {
            e.mtime_ns = fsx::mtime_ns(&st);
            e.size = st.st_size as u64;
        }
        out.push(e);
    }
    Ok(Manifest { entries: out })
}

/// Compares the two trees' root hashes; returns the (common) root as hex.
fn check_roots(want: &Manifest, got: &Manifest) -> Result<String, EngineError> {
    let root = got.root_hash();
    if want.root_hash() == root {
        return Ok(hex::encode(root));
    }
    let first = want
        .entries
        .iter()
        .zip(&got.entries)
        .find(|(a, b)| !(a.same_content(b) && a.same_metadata(b)))
        .map(|(a, b)| format!("{:?}: want {a:?}, found {b:?}", a.display_path()))
        .unwrap_or_default();
    Err(EngineError::Integrity(format!(
        "the target differs from the plan: {first}"
    )))
}

/// Combines the results of the two ends. When one end fails, the other sees the stream
/// break; the error worth reporting is the first cause: a cancellation, else the end that
/// did not just see the other one go away.
fn join_ends<S, R>(
    sent: std::thread::Result<Result<S, EngineError>>,
    received: Result<R, EngineError>,
    ctl: &Control,
) -> Result<(S, R), EngineError> {
    let sent = sent.unwrap_or_else(|_| Err(EngineError::Integrity("the sender panicked".into())));
    ctl.check()?;
    let broken = |e: &EngineError| {
        matches!(e, EngineError::Io { source, .. }
            if matches!(source.kind(), io::ErrorKind::UnexpectedEof | io::ErrorKind::BrokenPipe))
    };
    match (sent, received) {
        (Ok(s), Ok(r)) => Ok((s, r)),
        (Err(se), Err(re)) if broken(&re) && !broken(&se) => Err(se),
        (_, Err(re)) => Err(re),
        (Err(se), Ok(_)) => Err(se),
    }
}

// ---------------------------------------------------------------------------------------
// Copy

pub(super) fn copy(
    src: &Place,
    dst: &Place,
    local: &[Place],
    ctl: &Control,
) -> Result<Summary, EngineError> {
    let started = Instant::now();
    let work = dst.work_dir();
    let mut recovered = false;
    if dst.commit_marker().exists() {
        // An earlier copy was interrupted while committing: its result is not trusted.
        remove_tree(&dst.root)?;
        recovered = true;
    } else if fs::symlink_metadata(&dst.root).is_ok() {
        return Err(EngineError::Refused(format!(
            "the target {} already exists",
            dst.root.display()
        )));
    }
    if work.exists() {
        remove_tree(&work)?;
        recovered = true;
    }
    let staging = work.join("root");
    fs::create_dir_all(&staging).map_err(EngineError::io_path("creating", &staging))?;
    let result = copy_staged(src, dst, &staging, local, ctl);
    match &result {
        Ok(_) => {
            let _ = fs::remove_dir_all(&work);
        }
        Err(_) => {
            if !dst.commit_marker().exists() {
                let _ = fs::remove_dir_all(&work);
            }
        }
    }
    result.map(|mut s| {
        s.recovered = recovered;
        s.duration_ms = started.elapsed().as_millis() as u64;
        s.phase_ms = ctl.timings();
        s
    })
}

fn copy_staged(
    src: &Place,
    dst: &Place,
    staging: &Path,
    local: &[Place],
    ctl: &Control,
) -> Result<Summary, EngineError> {
    let cache = src.load_manifest().ok().flatten();
    // Stat only: the sender hashes each file while sending it (one read, not two).
    ctl.phase(Phase::Scan, None, None);
    let (mut m, report) = scan::scan(&src.root, cache.as_ref(), false, ctl)?;
    ctl.phase(Phase::Plan, None, None);
    let total_bytes = m.bytes();
    let total_files = m.entries.iter().filter(|e| e.kind != Kind::Special).count() as u64;
    ctl.phase(Phase::Transfer, Some(total_bytes), Some(total_files));

    // The receiver's offer: content its server holds already, by hash.
    let offer = local_content(local, &m);
    let (w, r) = wire::pipe();
    let (sent, received) = std::thread::scope(|s| {
        let sender = s.spawn(|| send_copy(&src.root, &mut m, &offer, w, ctl));
        let received = receive(Mode::Copy, staging, staging, r, None, local, ctl);
        (sender.join(), received)
    });
    let ((stats, unstable), received) = join_ends(sent, received, ctl)?;

    ctl.phase(Phase::Verify, None, None);
    let want = without_specials(m.clone());
    let got = restat(staging, &want, None)?;
    let root_hash = check_roots(&want, &got)?;

    ctl.phase(Phase::Commit, None, None);
    got.store(&dst.manifest_path())
        .map_err(io_err("writing the target manifest"))?;
    // The source's manifest is its quick-check cache for the next sync (kept outside the
    // container root: the source tree itself is never written).
    let _ = m.store(&src.manifest_path());
    write_marker(dst)?;
    let staging_fd = fsx::open_dir(staging).map_err(io_err("opening the staging tree"))?;
    fsx::syncfs(staging_fd.as_fd()).map_err(io_err("syncfs"))?;
    ctl.fail("copy:before-rename")?;
    if let Some(parent) = dst.root.parent() {
        fs::create_dir_all(parent).map_err(EngineError::io_path("creating", parent))?;
    }
    fs::rename(staging, &dst.root).map_err(EngineError::io_path(
        "moving the copy into place at",
        &dst.root,
    ))?;
    if let Some(parent) = dst.root.parent() {
        if let Ok(d) = fs::File::open(parent) {
            let _ = d.sync_all();
        }
    }
    let _ = fs::remove_file(dst.commit_marker());
    Ok(Summary {
        files_added: want.entries.len() as u64,
        tree_files: got.files(),
        tree_bytes: got.bytes(),
        bytes_sent: stats.total,
        content_bytes: stats.data,
        reused_bytes: received.reused_bytes,
        skipped_special: report.specials,
        unstable: report.unstable.into_iter().chain(unstable).collect(),
        root_hash,
        ..Summary::default()
    })
}

/// Sends every entry of `m` with its content, hashing files as it reads them and
/// recording the hashes in `m`. Returns the stream's counters and files that changed
/// while read.
fn send_copy(
    root: &Path,
    m: &mut Manifest,
    offer: &HashMap<[u8; 32], (u32, Vec<u8>)>,
    out: PipeWriter,
    ctl: &Control,
) -> Result<(WireStats, Vec<String>), EngineError> {
    let mut fw = FrameWriter::new(out);
    let mut walker =
        Walker::new(fsx::open_dir(root).map_err(EngineError::io_path("opening", root))?);
    let mut gone = Vec::new();
    let mut unstable = Vec::new();
    let mut hashes: HashMap<Vec<u8>, [u8; 32]> = HashMap::new();
    for (i, e) in m.entries.iter_mut().enumerate() {
        ctl.check()?;
        match e.kind {
            Kind::Special => continue,
            // Content the receiver's server holds (known from the source's cache: the scan
            // found the file unchanged): no need to read or send it.
            Kind::File
                if e.link_to.is_none() && e.hash != [0; 32] && offer.contains_key(&e.hash) =>
            {
                let (tree, from) = &offer[&e.hash];
                fw.send(&Frame::Entry(e.clone()))
                    .map_err(io_err("sending"))?;
                let from = Frame::ReuseLocal {
                    tree: *tree,
                    from: from.clone(),
                };
                send_reused(&mut fw, from, e)?;
                hashes.insert(e.path.clone(), e.hash);
            }
            Kind::File if e.link_to.is_none() => {
                let file = match walker
                    .parent(&e.path)
                    .and_then(|(dir, name)| fsx::open_file_at(dir, name))
                {
                    Ok(f) => f,
                    // Vanished or replaced since the scan: not part of this copy.
                    Err(_) => {
                        gone.push(i);
                        continue;
                    }
                };
                if e.hash == [0; 32] {
                    e.xattrs = fsx::read_xattrs(file.as_fd()).map_err(io_err("reading xattrs"))?;
                }
                fw.send(&Frame::Entry(e.clone()))
                    .map_err(io_err("sending"))?;
                let (hash, chunks, len) = hash_reader(&file, e.size, ctl, |data, _| fw.data(data))?;
                if len != e.size {
                    unstable.push(e.display_path());
                    e.size = len;
                }
                e.hash = hash;
                e.chunks = chunks;
                hashes.insert(e.path.clone(), hash);
                fw.send(&Frame::FileEnd { hash, size: len })
                    .map_err(io_err("sending"))?;
            }
            Kind::File => {
                if let Some(h) = e.link_to.as_ref().and_then(|l| hashes.get(l)) {
                    e.hash = *h;
                }
                fw.send(&Frame::Entry(e.clone()))
                    .map_err(io_err("sending"))?;
            }
            _ => fw
                .send(&Frame::Entry(e.clone()))
                .map_err(io_err("sending"))?,
        }
    }
    for i in gone.into_iter().rev() {
        m.entries.remove(i);
    }
    fw.send(&Frame::Done).map_err(io_err("sending"))?;
    fw.flush().map_err(io_err("sending"))?;
    Ok((fw.stats, unstable))
}

/// A file's whole content taken from elsewhere on the receiver's side (`from`: a `Reuse`
/// or `ReuseLocal` frame), then the end of the file the receiver must check it against.
fn send_reused(
    fw: &mut FrameWriter<PipeWriter>,
    from: Frame,
    e: &Entry,
) -> Result<(), EngineError> {
    fw.send(&from).map_err(io_err("sending"))?;
    fw.send(&Frame::FileEnd {
        hash: e.hash,
        size: e.size,
    })
    .map_err(io_err("sending"))
}

// ---------------------------------------------------------------------------------------
// Receiver

#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// Build a fresh tree in place (the staging root).
    Copy,
    /// Stage changed content in a work dir; change the tree only at commit.
    Sync,
}

/// A change the receiver staged for the commit (sync).
enum Pending {
    Delete(Vec<u8>),
    /// Content staged in the work dir under `tmp`, verified, metadata applied.
    Place {
        tmp: Vec<u8>,
        e: Entry,
    },
    /// A large file changed only in place: the new ranges are staged in the work dir under
    /// `tmp` (at `(file offset, staged offset, len)`), the rest of the file stays as it is.
    Patch {
        tmp: Vec<u8>,
        ranges: Vec<(u64, u64, u64)>,
        e: Entry,
    },
    /// A directory, symlink, FIFO or hard link to create (replacing what is there).
    Create(Entry),
    /// Only metadata changes.
    Meta(Entry),
}

struct Received {
    pending: Vec<Pending>,
    reused_bytes: u64,
}

/// Applies frames from the stream. `root` is the tree being built (copy) or synced (sync);
/// `stage` is where sync content goes first; `current` is the target's current manifest
/// (sync), from which deltas and reuse draw.
fn receive(
    mode: Mode,
    root: &Path,
    stage: &Path,
    input: PipeReader,
    current: Option<&Manifest>,
    local: &[Place],
    ctl: &Control,
) -> Result<Received, EngineError> {
    let mut local = LocalTrees {
        places: local,
        open: local.iter().map(|_| None).collect(),
    };
    let mut fr = FrameReader::new(input);
    let mut walker = Walker::new(fsx::open_dir(root).map_err(io_err("opening the target"))?);
    // A second walker for a second path at once (hard-link sources, reused files).
    let mut other = Walker::new(fsx::open_dir(root).map_err(io_err("opening the target"))?);
    let stage_fd = fsx::open_dir(stage).map_err(io_err("opening the work dir"))?;
    let current: HashMap<&[u8], &Entry> = current
        .map(|m| m.entries.iter().map(|e| (e.path.as_slice(), e)).collect())
        .unwrap_or_default();
    // Names that other names are hard links of: never changed in place.
    let linked: std::collections::HashSet<&[u8]> = current
        .values()
        .filter_map(|e| e.link_to.as_deref())
        .collect();
    let mut dirs = Vec::new();
    let mut out = Received {
        pending: Vec::new(),
        reused_bytes: 0,
    };
    let mut seq = 0u64;
    loop {
        ctl.check()?;
        let frame = fr.read_frame().map_err(io_err("receiving"))?;
        let e = match frame {
            Frame::Done => break,
            Frame::Delete { path } if mode == Mode::Sync => {
                out.pending.push(Pending::Delete(path));
                ctl.add_progress(0, 1);
                continue;
            }
            Frame::Meta(e) if mode == Mode::Sync => {
                out.pending.push(Pending::Meta(e));
                ctl.add_progress(0, 1);
                continue;
            }
            Frame::Entry(e) => e,
            _ => return Err(EngineError::Integrity("unexpected frame".into())),
        };
        if e.has_data() {
            let (dir, name) = match mode {
                Mode::Copy => walker
                    .parent(&e.path)
                    .map_err(io_err("opening a directory"))?,
                Mode::Sync => {
                    seq += 1;
                    (stage_fd.as_fd(), &b""[..])
                }
            };
            let mut tmp_name = seq.to_string().into_bytes();
            let name = if mode == Mode::Sync {
                &tmp_name[..]
            } else {
                name
            };
            let mut file = fsx::create_file_at(dir, name).map_err(io_err("creating a file"))?;
            // The version the target has now, for deltas.
            let old = match (mode, current.get(e.path.as_slice())) {
                (Mode::Sync, Some(c)) if c.kind == Kind::File && !c.chunks.is_empty() => {
                    let (d, n) = other
                        .parent(&e.path)
                        .map_err(io_err("opening a directory"))?;
                    fsx::open_file_at(d, n).ok()
                }
                _ => None,
            };
            // A large file the target has under the same name, alone on its inode, may be
            // changed in place: only its new ranges are written.
            let base = match (&old, current.get(e.path.as_slice())) {
                (Some(_), Some(c))
                    if c.link_to.is_none() && !linked.contains(c.path.as_slice()) =>
                {
                    Some(*c)
                }
                _ => None,
            };
            let got = receive_content(
                &mut fr,
                &mut file,
                &e,
                old.as_ref(),
                base,
                &mut other,
                &mut local,
                ctl,
            )?;
            out.reused_bytes += got.reused;
            let mut e = e;
            e.hash = got.hash;
            e.size = got.size;
            e.chunks = got.chunks;
            match got.patch {
                Some(ops) if ops.iter().all(|op| op.old.is_none_or(|o| o == op.at)) => {
                    fsx::start_writeback(file.as_fd());
                    let ranges = ops
                        .iter()
                        .filter(|op| op.old.is_none())
                        .map(|op| (op.at, op.staged, op.len))
                        .collect();
                    ctl.fail("receive:file")?;
                    ctl.add_progress(0, 1);
                    out.pending.push(Pending::Patch {
                        tmp: tmp_name,
                        ranges,
                        e,
                    });
                    continue;
                }
                Some(ops) => {
                    // Content moved within the file: build the whole new version after all.
                    seq += 1;
                    let full_name = seq.to_string().into_bytes();
                    let mut full = fsx::create_file_at(stage_fd.as_fd(), &full_name)
                        .map_err(io_err("creating a file"))?;
                    let old = old.as_ref().expect("patches have a base");
                    assemble(
                        &mut full,
                        &file,
                        old,
                        &ops,
                        base.expect("patches have a base"),
                    )?;
                    drop(file);
                    fsx::remove_at(stage_fd.as_fd(), &tmp_name)
                        .map_err(io_err("removing a staged file"))?;
                    file = full;
                    tmp_name = full_name;
                }
                None => {}
            }
            fsx::apply_meta_fd(file.as_fd(), &e).map_err(io_err("setting metadata"))?;
            fsx::start_writeback(file.as_fd());
            ctl.fail("receive:file")?;
            ctl.add_progress(0, 1);
            match mode {
                Mode::Copy => {}
                Mode::Sync => out.pending.push(Pending::Place { tmp: tmp_name, e }),
            }
            continue;
        }
        ctl.add_progress(0, 1);
        if mode == Mode::Sync {
            out.pending.push(Pending::Create(e));
            continue;
        }
        let (dir, name) = walker
            .parent(&e.path)
            .map_err(io_err("opening a directory"))?;
        create_entry(dir, name, &e, &mut other)?;
        if e.kind == Kind::Dir {
            dirs.push(e);
        } else {
            fsx::apply_meta_at(dir, name, &e).map_err(io_err("setting metadata"))?;
        }
    }
    // Directory metadata last, deepest first: creating children moves a directory's mtime.
    for d in dirs.iter().rev() {
        let (dir, name) = walker
            .parent(&d.path)
            .map_err(io_err("opening a directory"))?;
        fsx::apply_meta_at(dir, name, d).map_err(io_err("setting metadata"))?;
    }
    Ok(out)
}

/// Creates a directory, symlink, FIFO or hard link named `name` in `dir`.
fn create_entry(
    dir: std::os::fd::BorrowedFd<'_>,
    name: &[u8],
    e: &Entry,
    other: &mut Walker,
) -> Result<(), EngineError> {
    match (e.kind, &e.link_to) {
        (Kind::Dir, _) => fsx::mkdir_at(dir, name).map_err(io_err("creating a directory")),
        (Kind::Symlink, _) => {
            fsx::symlink_at(&e.target, dir, name).map_err(io_err("creating a symlink"))
        }
        (Kind::Fifo, _) => fsx::mkfifo_at(dir, name).map_err(io_err("creating a FIFO")),
        (Kind::File, Some(first)) => {
            let (fdir, fname) = other.parent(first).map_err(io_err("opening a directory"))?;
            fsx::link_at(fdir, fname, dir, name).map_err(io_err("creating a hard link"))
        }
        _ => Err(EngineError::Integrity(format!(
            "cannot create {:?}",
            e.display_path()
        ))),
    }
}

/// Other trees on the receiver's server that content may be taken from, opened when first
/// used (always beneath their roots, like the tree being built).
struct LocalTrees<'a> {
    places: &'a [Place],
    open: Vec<Option<Walker>>,
}

impl LocalTrees<'_> {
    fn walker(&mut self, tree: u32) -> Result<&mut Walker, EngineError> {
        let i = tree as usize;
        let place = self
            .places
            .get(i)
            .ok_or_else(|| EngineError::Integrity("reuse from an unknown tree".into()))?;
        if self.open[i].is_none() {
            let fd = fsx::open_dir(&place.root).map_err(io_err("opening a local tree"))?;
            self.open[i] = Some(Walker::new(fd));
        }
        Ok(self.open[i].as_mut().expect("opened above"))
    }
}

/// What the receiver's server holds of the content `m` needs: for each hash, a tree (index
/// into `local`) and a path there. Only files that still match their tree's recorded
/// manifest entry are offered, so the offer is current; what is taken is hashed and checked
/// again as it is written.
fn local_content(local: &[Place], m: &Manifest) -> HashMap<[u8; 32], (u32, Vec<u8>)> {
    let wanted: std::collections::HashSet<[u8; 32]> = m
        .entries
        .iter()
        .filter(|e| e.kind == Kind::File && e.link_to.is_none() && e.hash != [0; 32] && e.size > 0)
        .map(|e| e.hash)
        .collect();
    let mut offer = HashMap::new();
    for (i, place) in local.iter().enumerate() {
        if offer.len() == wanted.len() {
            break;
        }
        let (Ok(Some(manifest)), Ok(root)) = (place.load_manifest(), fsx::open_dir(&place.root))
        else {
            continue;
        };
        let mut walker = Walker::new(root);
        for e in &manifest.entries {
            if e.kind != Kind::File
                || e.link_to.is_some()
                || !wanted.contains(&e.hash)
                || offer.contains_key(&e.hash)
            {
                continue;
            }
            let Ok((dir, name)) = walker.parent(&e.path) else {
                continue;
            };
            let still = fsx::stat_at(dir, name).is_ok_and(|st| {
                fsx::kind_of(&st) == Kind::File
                    && st.st_size as u64 == e.size
                    && fsx::mtime_ns(&st) == e.mtime_ns
                    && fsx::ctime_ns(&st) == e.ctime_ns
                    && st.st_ino == e.ino
            });
            if still {
                offer.insert(e.hash, (i as u32, e.path.clone()));
            }
        }
    }
    offer
}

/// One piece of a file received as a patch: `len` bytes at `at` in the new version, from
/// the previous version at `old`, or else from the staged file at `staged`.
struct PatchOp {
    at: u64,
    old: Option<u64>,
    staged: u64,
    len: u64,
}

/// What `receive_content` got.
struct Content {
    hash: [u8; 32],
    size: u64,
    chunks: Vec<Chunk>,
    reused: u64,
    /// For a patch: how the new version is made of the previous one and the staged bytes.
    patch: Option<Vec<PatchOp>>,
}

/// Receives one file's content into `out`, hashing as it writes; fails unless the result
/// is exactly what the sender announced.
///
/// With a `base` (a large file the target has, whose chunk hashes its scan just recorded),
/// only new bytes go to `out`, and ranges of the previous version are recorded, not copied:
/// their hashes come from the base's chunk list. The caller applies such a patch in place
/// when every kept range stays where it was, and assembles the whole file otherwise.
// The stream, the file being written, its entry, the previous version (file and chunk
// list) and the three places content may be taken from: all needed, none related enough
// to bundle.
#[allow(clippy::too_many_arguments)]
fn receive_content(
    fr: &mut FrameReader<PipeReader>,
    out: &mut fs::File,
    e: &Entry,
    old: Option<&fs::File>,
    base: Option<&Entry>,
    other: &mut Walker,
    local: &mut LocalTrees<'_>,
    ctl: &Control,
) -> Result<Content, EngineError> {
    let chunked = e.size >= CHUNKED_FILE_MIN;
    let base_chunks: HashMap<u64, &Chunk> = base
        .filter(|_| chunked)
        .map(|b| b.chunks.iter().map(|c| (c.offset, c)).collect())
        .unwrap_or_default();
    let mut patch: Option<Vec<PatchOp>> = (!base_chunks.is_empty()).then(Vec::new);
    let mut staged = 0u64;
    let mut whole = blake3::Hasher::new();
    let mut chunks: Vec<Chunk> = Vec::new();
    let mut written = 0u64;
    let mut reused = 0u64;
    let mut from_reuse: Option<([u8; 32], Vec<Chunk>)> = None;
    let mut buf = Vec::new();
    loop {
        match fr.read_frame().map_err(io_err("receiving"))? {
            Frame::Data(d) => {
                out.write_all(&d).map_err(io_err("writing a file"))?;
                if chunked {
                    chunks.push(Chunk {
                        offset: written,
                        len: d.len() as u32,
                        hash: *blake3::hash(&d).as_bytes(),
                    });
                } else {
                    whole.update(&d);
                }
                if let Some(ops) = &mut patch {
                    ops.push(PatchOp {
                        at: written,
                        old: None,
                        staged,
                        len: d.len() as u64,
                    });
                    staged += d.len() as u64;
                }
                written += d.len() as u64;
                ctl.add_progress(d.len() as u64, 0);
            }
            Frame::CopyOld { offset, len } => {
                let old =
                    old.ok_or_else(|| EngineError::Integrity("delta without a base".into()))?;
                if !chunked || len > 8 << 20 {
                    return Err(EngineError::Integrity("bad delta range".into()));
                }
                let known = base_chunks
                    .get(&offset)
                    .filter(|c| c.len as u64 == len)
                    .map(|c| c.hash);
                let hash = match (&mut patch, known) {
                    (Some(ops), Some(hash)) => {
                        ops.push(PatchOp {
                            at: written,
                            old: Some(offset),
                            staged: 0,
                            len,
                        });
                        hash
                    }
                    // The sender draws its ranges from the same chunk list.
                    (Some(_), None) => {
                        return Err(EngineError::Integrity(
                            "a delta range that is not a chunk of the previous version".into(),
                        ))
                    }
                    (None, _) => {
                        buf.resize(len as usize, 0);
                        old.read_exact_at(&mut buf, offset)
                            .map_err(io_err("reading the previous version"))?;
                        out.write_all(&buf).map_err(io_err("writing a file"))?;
                        *blake3::hash(&buf).as_bytes()
                    }
                };
                chunks.push(Chunk {
                    offset: written,
                    len: len as u32,
                    hash,
                });
                written += len;
                reused += len;
                ctl.add_progress(len, 0);
            }
            // The whole content of a file the receiver's side holds: in this tree, or in
            // another tree on its server. Only where it is found differs.
            frame @ (Frame::Reuse { .. } | Frame::ReuseLocal { .. }) => {
                if written > 0 {
                    return Err(EngineError::Integrity("reuse inside a file".into()));
                }
                patch = None;
                let (walker, from) = match frame {
                    Frame::ReuseLocal { tree, from } => (local.walker(tree)?, from),
                    Frame::Reuse { from } => (&mut *other, from),
                    _ => unreachable!("matched above"),
                };
                let (d, n) = walker
                    .parent(&from)
                    .map_err(io_err("opening a directory"))?;
                let src = fsx::open_file_at(d, n).map_err(io_err("opening a file to reuse"))?;
                let (hash, c, len) = hash_reader(&src, e.size, ctl, |data, _| out.write_all(data))?;
                written += len;
                reused += len;
                ctl.add_progress(len, 0);
                from_reuse = Some((hash, c));
            }
            Frame::FileEnd { hash, size } => {
                let (got, got_chunks) = match from_reuse {
                    Some(r) => r,
                    None if chunked => (chunked_file_hash(&chunks), chunks),
                    None => (*whole.finalize().as_bytes(), Vec::new()),
                };
                if got != hash || written != size {
                    return Err(EngineError::Integrity(format!(
                        "{:?}: received content does not match its hash",
                        e.display_path()
                    )));
                }
                return Ok(Content {
                    hash: got,
                    size: written,
                    chunks: got_chunks,
                    reused,
                    patch,
                });
            }
            _ => {
                return Err(EngineError::Integrity(
                    "unexpected frame inside a file".into(),
                ))
            }
        }
    }
}

/// Builds the whole new version of a patched file into `full`, checking every range kept
/// from the previous version against the hash its chunk list recorded.
fn assemble(
    full: &mut fs::File,
    staged: &fs::File,
    old: &fs::File,
    ops: &[PatchOp],
    base: &Entry,
) -> Result<(), EngineError> {
    let known: HashMap<u64, [u8; 32]> = base.chunks.iter().map(|c| (c.offset, c.hash)).collect();
    let mut buf = Vec::new();
    for op in ops {
        buf.resize(op.len as usize, 0);
        match op.old {
            Some(o) => {
                old.read_exact_at(&mut buf, o)
                    .map_err(io_err("reading the previous version"))?;
                if known.get(&o) != Some(blake3::hash(&buf).as_bytes()) {
                    return Err(EngineError::Integrity(format!(
                        "{:?} changed on the target during the sync",
                        base.display_path()
                    )));
                }
            }
            None => staged
                .read_exact_at(&mut buf, op.staged)
                .map_err(io_err("reading a staged file"))?,
        }
        full.write_all(&buf).map_err(io_err("writing a file"))?;
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Sync

pub(super) fn sync(src: &Place, dst: &Place, ctl: &Control) -> Result<Summary, EngineError> {
    let started = Instant::now();
    let work = dst.work_dir();
    let interrupted_commit = dst.commit_marker().exists();
    let recovered = work.exists();
    if recovered {
        remove_tree(&work)?;
    }
    if !dst.root.is_dir() {
        return Err(EngineError::Refused(format!(
            "the target {} does not exist",
            dst.root.display()
        )));
    }
    // Both trees at once, each with its recorded manifest as quick-check cache: each scan
    // is mostly waiting on metadata syscalls.
    ctl.phase(Phase::Scan, None, None);
    let (src_cache, s_scan, t_scan) = std::thread::scope(|s| {
        let t = s.spawn(|| {
            // After an interrupted commit the target's recorded state cannot be trusted:
            // scan it without the cache, so every file is read and the diff is against
            // what is really there.
            let old = if interrupted_commit {
                None
            } else {
                dst.load_manifest()
                    .map_err(io_err("reading the target manifest"))?
            };
            let scanned = scan::scan(&dst.root, old.as_ref(), true, ctl)?;
            Ok::<_, EngineError>((old, scanned))
        });
        let src_cache = src.load_manifest().ok().flatten();
        let src_result = scan::scan(&src.root, src_cache.as_ref(), true, ctl);
        (src_cache, src_result, t.join())
    });
    let (s_man, s_report) = s_scan?;
    let (old, (t_man, t_report)) =
        t_scan.map_err(|_| EngineError::Integrity("the target scan panicked".into()))??;
    // Whether the recorded manifests still describe the trees (then they need no rewrite).
    let t_recorded = old.is_some() && t_report.hashed_files == 0;
    let s_recorded = src_cache.is_some() && s_report.hashed_files == 0;

    ctl.phase(Phase::Plan, None, None);
    let mut summary = Summary {
        recovered,
        ..Summary::default()
    };
    if let Some(old) = &old {
        let (pairs, deleted) = diff(old, &t_man);
        for (c, e, _) in &pairs {
            if *c != Change::Unchanged {
                summary.drift += 1;
                summary.drift_paths.push(e.display_path());
            }
        }
        summary.drift += deleted.len() as u64;
        summary
            .drift_paths
            .extend(deleted.iter().map(|e| e.display_path()));
        summary.drift_paths.truncate(20);
    }
    if !s_recorded {
        // The source's quick-check cache for the next sync.
        let _ = s_man.store(&src.manifest_path());
    }
    let mut want = without_specials(s_man);
    let (pairs, deleted) = diff(&t_man, &want);
    let mut bytes_total = 0;
    for (c, e, _) in &pairs {
        match c {
            Change::Added => summary.files_added += 1,
            Change::Changed => summary.files_changed += 1,
            Change::MetadataOnly => summary.metadata_only += 1,
            Change::Unchanged => summary.files_unchanged += 1,
        }
        if matches!(c, Change::Added | Change::Changed) && e.has_data() {
            bytes_total += e.size;
        }
    }
    summary.files_deleted = deleted.len() as u64;
    let files_total =
        summary.files_added + summary.files_changed + summary.metadata_only + summary.files_deleted;
    summary.skipped_special = s_report.specials.clone();
    summary.unstable = s_report.unstable.clone();

    if files_total > 0 {
        ctl.phase(Phase::Transfer, Some(bytes_total), Some(files_total));
        let stage = work.join("stage");
        fs::create_dir_all(&stage).map_err(EngineError::io_path("creating", &stage))?;
        let deleted_paths: Vec<Vec<u8>> = deleted.iter().map(|e| e.path.clone()).collect();
        let changes: Vec<(Change, Entry)> = pairs
            .iter()
            .filter(|(c, _, _)| *c != Change::Unchanged)
            .map(|(c, e, _)| (*c, (*e).clone()))
            .collect();
        let result = (|| {
            let (w, r) = wire::pipe();
            let (sent, received) = std::thread::scope(|s| {
                let sender =
                    s.spawn(|| send_sync(&src.root, &changes, &deleted_paths, &t_man, w, ctl));
                let received = receive(Mode::Sync, &dst.root, &stage, r, Some(&t_man), &[], ctl);
                (sender.join(), received)
            });
            let (sent, received) = join_ends(sent, received, ctl)?;
            ctl.fail("sync:after-transfer")?;
            Ok::<_, EngineError>((sent, received))
        })();
        let (sent, received) = match result {
            Ok(r) => r,
            Err(e) => {
                // Nothing of the target was touched yet: roll back the staged content.
                let _ = fs::remove_dir_all(&work);
                return Err(e);
            }
        };
        summary.bytes_sent = sent.stats.total;
        summary.content_bytes = sent.stats.data;
        summary.delta_files = sent.delta_files;
        summary.reused_bytes = received.reused_bytes;
        // Files that changed between the scan and the send: record what was really sent.
        for (path, hash, size, chunks) in sent.reread {
            if let Some(e) = want.entries.iter_mut().find(|e| e.path == path) {
                e.hash = hash;
                e.size = size;
                e.chunks = chunks;
                summary.unstable.push(e.display_path());
            }
        }

        ctl.phase(Phase::Commit, None, Some(received.pending.len() as u64));
        write_marker(dst)?;
        let root_fd = fsx::open_dir(&dst.root).map_err(io_err("opening the target"))?;
        fsx::syncfs(root_fd.as_fd()).map_err(io_err("syncfs"))?;
        apply_pending(&dst.root, &stage, received.pending, &t_man, &want, ctl)?;
    }

    ctl.phase(Phase::Verify, None, None);
    // Nothing changed: the target scan just read back exactly this state.
    let got = if files_total == 0 {
        t_man
    } else {
        restat(&dst.root, &want, Some(&t_man))?
    };
    // Nothing changed: the diff already compared every entry, one root hash is enough.
    let root_hash = if files_total == 0 {
        got.root_hex()
    } else {
        check_roots(&want, &got)?
    };
    if files_total > 0 || !t_recorded || summary.drift > 0 {
        got.store(&dst.manifest_path())
            .map_err(io_err("writing the target manifest"))?;
    }
    if files_total > 0 || interrupted_commit {
        let root_fd = fsx::open_dir(&dst.root).map_err(io_err("opening the target"))?;
        fsx::syncfs(root_fd.as_fd()).map_err(io_err("syncfs"))?;
    }
    let _ = fs::remove_dir_all(&work);
    summary.recovered |= interrupted_commit;
    summary.tree_files = got.files();
    summary.tree_bytes = got.bytes();
    summary.root_hash = root_hash;
    summary.duration_ms = started.elapsed().as_millis() as u64;
    summary.phase_ms = ctl.timings();
    Ok(summary)
}

/// A file read again for sending: (path, hash, size, chunks) of what was really sent.
type Reread = (Vec<u8>, [u8; 32], u64, Vec<Chunk>);

struct Sent {
    stats: WireStats,
    delta_files: u64,
    /// Files whose content differed from the scan when read for sending.
    reread: Vec<Reread>,
}

fn send_sync(
    root: &Path,
    changes: &[(Change, Entry)],
    deleted: &[Vec<u8>],
    target: &Manifest,
    out: PipeWriter,
    ctl: &Control,
) -> Result<Sent, EngineError> {
    let mut fw = FrameWriter::new(out);
    let mut walker =
        Walker::new(fsx::open_dir(root).map_err(EngineError::io_path("opening", root))?);
    let by_path: HashMap<&[u8], &Entry> = target
        .entries
        .iter()
        .map(|e| (e.path.as_slice(), e))
        .collect();
    let by_hash: HashMap<[u8; 32], &[u8]> = target
        .entries
        .iter()
        .filter(|e| e.has_data() && e.hash != [0; 32])
        .map(|e| (e.hash, e.path.as_slice()))
        .collect();
    let mut sent = Sent {
        stats: WireStats::default(),
        delta_files: 0,
        reread: Vec::new(),
    };
    for path in deleted {
        fw.send(&Frame::Delete { path: path.clone() })
            .map_err(io_err("sending"))?;
    }
    for (change, e) in changes {
        ctl.check()?;
        if *change == Change::MetadataOnly {
            fw.send(&Frame::Meta(e.clone()))
                .map_err(io_err("sending"))?;
            continue;
        }
        fw.send(&Frame::Entry(e.clone()))
            .map_err(io_err("sending"))?;
        if !e.has_data() {
            continue;
        }
        // Content the target already has, under any name: nothing to send.
        if let Some(from) = by_hash.get(&e.hash) {
            let from = Frame::Reuse {
                from: from.to_vec(),
            };
            send_reused(&mut fw, from, e)?;
            continue;
        }
        let (dir, name) = walker
            .parent(&e.path)
            .map_err(io_err("opening a source directory"))?;
        let file = fsx::open_file_at(dir, name).map_err(io_err("opening a source file"))?;
        // A large file whose previous version the target has: send only new chunks.
        let base: Option<HashMap<[u8; 32], (u64, u32)>> = by_path
            .get(e.path.as_slice())
            .filter(|t| t.kind == Kind::File && !t.chunks.is_empty() && e.size >= CHUNKED_FILE_MIN)
            .map(|t| {
                t.chunks
                    .iter()
                    .map(|c| (c.hash, (c.offset, c.len)))
                    .collect()
            });
        if base.is_some() {
            sent.delta_files += 1;
        }
        let (hash, chunks, len) = match &base {
            // The scan already cut this file into chunks: send the new ones by reading
            // just their ranges, and skip reading what the target has.
            Some(base) if !e.chunks.is_empty() => {
                send_known_chunks(&file, &e.chunks, base, &mut fw, ctl)?
            }
            _ => hash_reader(&file, e.size, ctl, |data, chunk| match (chunk, &base) {
                (Some(c), Some(base)) => match base.get(&c.hash) {
                    Some(&(offset, len)) if len == c.len => fw.send(&Frame::CopyOld {
                        offset,
                        len: len as u64,
                    }),
                    _ => fw.data(data),
                },
                _ => fw.data(data),
            })?,
        };
        if hash != e.hash || len != e.size {
            sent.reread
                .push((e.path.clone(), hash, len, chunks.clone()));
        }
        fw.send(&Frame::FileEnd { hash, size: len })
            .map_err(io_err("sending"))?;
    }
    fw.send(&Frame::Done).map_err(io_err("sending"))?;
    fw.flush().map_err(io_err("sending"))?;
    sent.stats = fw.stats;
    Ok(sent)
}

/// Sends a file as the chunks its scan recorded: chunks the target has as `CopyOld`, the
/// others read (by range) and sent. If the file changed since the scan, the data read is
/// what is sent, and the returned hash says so (the caller records it).
fn send_known_chunks(
    file: &fs::File,
    chunks: &[Chunk],
    base: &HashMap<[u8; 32], (u64, u32)>,
    fw: &mut FrameWriter<PipeWriter>,
    ctl: &Control,
) -> Result<([u8; 32], Vec<Chunk>, u64), EngineError> {
    let mut sent = Vec::with_capacity(chunks.len());
    let mut buf = Vec::new();
    let mut total = 0u64;
    for c in chunks {
        ctl.check()?;
        if let Some(&(offset, len)) = base.get(&c.hash).filter(|(_, len)| *len == c.len) {
            fw.send(&Frame::CopyOld {
                offset,
                len: len as u64,
            })
            .map_err(io_err("sending"))?;
            sent.push(Chunk {
                offset: total,
                len,
                hash: c.hash,
            });
            total += len as u64;
            continue;
        }
        buf.resize(c.len as usize, 0);
        let mut got = 0;
        while got < buf.len() {
            match file.read_at(&mut buf[got..], c.offset + got as u64) {
                Ok(0) => break,
                Ok(n) => got += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(io_err("reading a source file")(e)),
            }
        }
        if got == 0 {
            break; // shrank since the scan
        }
        fw.data(&buf[..got]).map_err(io_err("sending"))?;
        sent.push(Chunk {
            offset: total,
            len: got as u32,
            hash: *blake3::hash(&buf[..got]).as_bytes(),
        });
        total += got as u64;
    }
    Ok((chunked_file_hash(&sent), sent, total))
}

/// The commit of a sync: removals deepest first, then creations and placements in path
/// order (parents before children), then metadata, then the mtimes of every directory
/// whose contents changed.
fn apply_pending(
    root: &Path,
    stage: &Path,
    pending: Vec<Pending>,
    current: &Manifest,
    want: &Manifest,
    ctl: &Control,
) -> Result<(), EngineError> {
    let current: HashMap<&[u8], &Entry> = current
        .entries
        .iter()
        .map(|e| (e.path.as_slice(), e))
        .collect();
    let stage_fd = fsx::open_dir(stage).map_err(io_err("opening the work dir"))?;
    let mut walker = Walker::new(fsx::open_dir(root).map_err(io_err("opening the target"))?);
    let mut other = Walker::new(fsx::open_dir(root).map_err(io_err("opening the target"))?);
    let mut touched_dirs: Vec<Vec<u8>> = Vec::new();

    // 1. Removals: deleted paths, and whatever stands where an entry of another kind (or
    //    a link, symlink or FIFO, which cannot be replaced in one rename) must go.
    let mut removals: Vec<&[u8]> = Vec::new();
    for p in &pending {
        match p {
            Pending::Delete(path) => removals.push(path),
            // Same file, same inode: nothing to remove.
            Pending::Patch { .. } => {}
            Pending::Place { e, .. } | Pending::Create(e) => {
                if let Some(c) = current.get(e.path.as_slice()) {
                    let replace_in_one_rename = c.kind == Kind::File
                        && c.link_to.is_none()
                        && matches!(p, Pending::Place { .. });
                    let keep_dir = c.kind == Kind::Dir && e.kind == Kind::Dir;
                    if !replace_in_one_rename && !keep_dir {
                        removals.push(&e.path);
                    }
                }
            }
            Pending::Meta(_) => {}
        }
    }
    removals.sort_by(|a, b| path_cmp(b, a));
    for path in removals {
        ctl.fail("sync:commit-op")?;
        let (dir, name) = walker.parent(path).map_err(io_err("opening a directory"))?;
        fsx::remove_at(dir, name).map_err(io_err("removing"))?;
        touched_dirs.push(split_parent(path).0.to_vec());
    }
    walker.reset();
    other.reset();

    // 2. Creations and placements, parents first.
    let mut metas = Vec::new();
    for p in &pending {
        match p {
            Pending::Delete(_) => {}
            Pending::Place { tmp, e } => {
                ctl.fail("sync:commit-op")?;
                let (dir, name) = walker
                    .parent(&e.path)
                    .map_err(io_err("opening a directory"))?;
                fsx::rename_at(stage_fd.as_fd(), tmp, dir, name)
                    .map_err(io_err("placing a file"))?;
                touched_dirs.push(split_parent(&e.path).0.to_vec());
            }
            Pending::Patch { tmp, ranges, e } => {
                ctl.fail("sync:commit-op")?;
                let staged = fsx::open_file_at(stage_fd.as_fd(), tmp)
                    .map_err(io_err("opening a staged file"))?;
                let (dir, name) = walker
                    .parent(&e.path)
                    .map_err(io_err("opening a directory"))?;
                let target =
                    fsx::open_file_for_patch_at(dir, name).map_err(io_err("opening a file"))?;
                let mut buf = Vec::new();
                for &(at, from, len) in ranges {
                    buf.resize(len as usize, 0);
                    staged
                        .read_exact_at(&mut buf, from)
                        .map_err(io_err("reading a staged file"))?;
                    target
                        .write_all_at(&buf, at)
                        .map_err(io_err("patching a file"))?;
                }
                target.set_len(e.size).map_err(io_err("patching a file"))?;
                fsx::apply_meta_fd(target.as_fd(), e).map_err(io_err("setting metadata"))?;
            }
            Pending::Create(e) => {
                ctl.fail("sync:commit-op")?;
                let exists_as_dir = e.kind == Kind::Dir
                    && current
                        .get(e.path.as_slice())
                        .is_some_and(|c| c.kind == Kind::Dir);
                let (dir, name) = walker
                    .parent(&e.path)
                    .map_err(io_err("opening a directory"))?;
                if !exists_as_dir {
                    create_entry(dir, name, e, &mut other)?;
                }
                touched_dirs.push(split_parent(&e.path).0.to_vec());
                metas.push(e);
            }
            Pending::Meta(e) => metas.push(e),
        }
    }
    // 3. Metadata of what was created or changed in place (directories come in step 4).
    for e in metas {
        if e.kind == Kind::Dir {
            touched_dirs.push(e.path.clone());
            continue;
        }
        if e.kind == Kind::File && e.link_to.is_some() {
            // A hard link shares its first name's inode and metadata.
            continue;
        }
        let (dir, name) = walker
            .parent(&e.path)
            .map_err(io_err("opening a directory"))?;
        fsx::apply_meta_at(dir, name, e).map_err(io_err("setting metadata"))?;
    }
    // 4. Directories whose entries changed get their recorded metadata back, deepest first.
    touched_dirs.retain(|d| !d.is_empty());
    touched_dirs.sort_by(|a, b| path_cmp(b, a));
    touched_dirs.dedup();
    let want_dirs: HashMap<&[u8], &Entry> = want
        .entries
        .iter()
        .filter(|e| e.kind == Kind::Dir)
        .map(|e| (e.path.as_slice(), e))
        .collect();
    for d in touched_dirs {
        // Every ancestor's mtime is unaffected, but the directory itself moved.
        if let Some(e) = want_dirs.get(d.as_slice()) {
            let (dir, name) = walker
                .parent(&e.path)
                .map_err(io_err("opening a directory"))?;
            fsx::apply_meta_at(dir, name, e).map_err(io_err("setting metadata"))?;
        }
    }
    Ok(())
}
