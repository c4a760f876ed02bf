//! Engine tests on real trees in temp dirs: copies and syncs compared with an independent
//! walker (std::fs, not the engine's own scanner), random trees and change sets, hostile
//! trees, injected failures at every point, cancellation, deltas and reuse.

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::io::Write;
use std::os::fd::AsFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{symlink, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use super::convert::Converted;
use super::*;

use crate::rng::Rng;

/// What a tree looks like, read with std::fs alone.
#[derive(Debug, PartialEq)]
enum Node {
    Dir {
        mode: u32,
        uid: u32,
        gid: u32,
        xattrs: Xattrs,
    },
    File {
        mode: u32,
        uid: u32,
        gid: u32,
        mtime: i64,
        content_hash: [u8; 32],
        len: u64,
        xattrs: Xattrs,
    },
    Link {
        target: PathBuf,
        mtime: i64,
        xattrs: Xattrs,
    },
    Fifo {
        mode: u32,
    },
}

type Xattrs = Vec<(Vec<u8>, Vec<u8>)>;

/// Extended attributes of `path` itself (a symlink's own), sorted, read with the plain
/// path-based calls (not the engine's code).
fn xattrs_of(path: &Path) -> Xattrs {
    use rustix::fs::{lgetxattr, llistxattr};
    let mut names = vec![0u8; 64 * 1024];
    let n = llistxattr(path, &mut names[..]).unwrap();
    let mut out: Xattrs = names[..n]
        .split(|&c| c == 0)
        .filter(|n| !n.is_empty())
        .map(|name| {
            let mut value = vec![0u8; 64 * 1024];
            let cname = std::ffi::CString::new(name).unwrap();
            let len = lgetxattr(path, cname.as_c_str(), &mut value[..]).unwrap();
            value.truncate(len);
            (name.to_vec(), value)
        })
        .collect();
    out.sort();
    out
}

fn snapshot_tree(root: &Path) -> BTreeMap<PathBuf, Node> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<PathBuf, Node>) {
        for entry in fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            let m = fs::symlink_metadata(&path).unwrap();
            let rel = path.strip_prefix(root).unwrap().to_path_buf();
            let ft = m.file_type();
            let node = if ft.is_dir() {
                walk(root, &path, out);
                Node::Dir {
                    mode: m.mode() & 0o7777,
                    uid: m.uid(),
                    gid: m.gid(),
                    xattrs: xattrs_of(&path),
                }
            } else if ft.is_symlink() {
                Node::Link {
                    target: fs::read_link(&path).unwrap(),
                    mtime: m.mtime() * 1_000_000_000 + m.mtime_nsec(),
                    xattrs: xattrs_of(&path),
                }
            } else if ft.is_file() {
                let content = fs::read(&path).unwrap();
                Node::File {
                    mode: m.mode() & 0o7777,
                    uid: m.uid(),
                    gid: m.gid(),
                    mtime: m.mtime() * 1_000_000_000 + m.mtime_nsec(),
                    content_hash: *blake3::hash(&content).as_bytes(),
                    len: content.len() as u64,
                    xattrs: xattrs_of(&path),
                }
            } else if std::os::unix::fs::FileTypeExt::is_fifo(&ft) {
                Node::Fifo {
                    mode: m.mode() & 0o7777,
                }
            } else {
                continue; // devices and sockets are not copied
            };
            out.insert(rel, node);
        }
    }
    let mut out = BTreeMap::new();
    walk(root, root, &mut out);
    out
}

/// Hard-link groups: sets of paths sharing an inode.
fn link_groups(root: &Path) -> Vec<Vec<PathBuf>> {
    let mut by_ino: HashMap<u64, Vec<PathBuf>> = HashMap::new();
    for (path, node) in snapshot_tree(root) {
        if matches!(node, Node::File { .. }) {
            let m = fs::symlink_metadata(root.join(&path)).unwrap();
            if m.nlink() > 1 {
                by_ino.entry(m.ino()).or_default().push(path);
            }
        }
    }
    let mut groups: Vec<_> = by_ino
        .into_values()
        .map(|mut v| {
            v.sort();
            v
        })
        .collect();
    groups.sort();
    groups
}

fn assert_same_tree(a: &Path, b: &Path) {
    let (ta, tb) = (snapshot_tree(a), snapshot_tree(b));
    for (path, node) in &ta {
        assert_eq!(Some(node), tb.get(path), "{path:?} differs");
    }
    assert_eq!(
        ta.len(),
        tb.len(),
        "extra entries in target: {:?}",
        tb.keys()
            .filter(|k| !ta.contains_key(*k))
            .collect::<Vec<_>>()
    );
    assert_eq!(link_groups(a), link_groups(b), "hard links differ");
}

/// Directories' mtimes (not part of a tree's identity, so not in [`snapshot_tree`]): a
/// copy or sync sets them as the source has them, as `cp -a` and `rsync -a` do.
fn assert_same_dir_mtimes(a: &Path, b: &Path) {
    let mtimes = |root: &Path| -> BTreeMap<PathBuf, i64> {
        snapshot_tree(root)
            .into_iter()
            .filter(|(_, n)| matches!(n, Node::Dir { .. }))
            .map(|(p, _)| {
                let m = fs::symlink_metadata(root.join(&p)).unwrap();
                (p, m.mtime() * 1_000_000_000 + m.mtime_nsec())
            })
            .collect()
    };
    assert_eq!(mtimes(a), mtimes(b), "directory mtimes differ");
}

fn set_mtime(path: &Path, secs: u64) {
    let f = fs::File::open(path).unwrap();
    f.set_modified(SystemTime::UNIX_EPOCH + Duration::from_secs(secs))
        .unwrap();
}

fn write(path: &Path, content: &[u8]) {
    if let Some(p) = path.parent() {
        fs::create_dir_all(p).unwrap();
    }
    fs::File::create(path).unwrap().write_all(content).unwrap();
}

/// A random tree: nested directories, files of many sizes (some chunked), symlinks,
/// hard links, varied modes and mtimes.
fn random_tree(root: &Path, rng: &mut Rng, files: usize) {
    fs::create_dir_all(root).unwrap();
    let dirs = ["", "a", "a/b", "a/b/c", "d", "d/e", "f g", "h\nnewline"];
    for d in dirs {
        fs::create_dir_all(root.join(d)).unwrap();
    }
    let mut made = Vec::new();
    for i in 0..files {
        let dir = dirs[rng.below(dirs.len() as u64) as usize];
        let path = root.join(dir).join(format!("f{i}.bin"));
        let len = match rng.below(10) {
            0 => 0,
            1 => (1 << 20) + rng.below(1 << 20) as usize,
            _ => rng.below(20_000) as usize,
        };
        write(&path, &rng.bytes(len));
        let mode = [0o644, 0o600, 0o755, 0o400, 0o4755][rng.below(5) as usize];
        fs::set_permissions(&path, fs::Permissions::from_mode(mode)).unwrap();
        set_mtime(&path, 1_600_000_000 + rng.below(100_000_000));
        made.push(path);
    }
    symlink("a/b", root.join("to-b")).unwrap();
    symlink("/etc/passwd", root.join("d/abs-link")).unwrap();
    symlink("../../../../../../etc", root.join("a/b/up-link")).unwrap();
    if made.len() > 2 {
        fs::hard_link(&made[0], root.join("d/hard-link")).unwrap();
    }
    fs::set_permissions(root.join("d/e"), fs::Permissions::from_mode(0o750)).unwrap();
}

/// A random change set: rewrites, additions, deletions, chmods, renames, overwrites inside
/// large files, a file turned into a directory and a directory into a file.
fn random_changes(root: &Path, rng: &mut Rng) {
    let tree = snapshot_tree(root);
    let files: Vec<PathBuf> = tree
        .iter()
        .filter(|(_, n)| matches!(n, Node::File { .. }))
        .map(|(p, _)| p.clone())
        .collect();
    for (i, f) in files.iter().enumerate() {
        let path = root.join(f);
        if !path.exists() {
            continue;
        }
        match rng.below(12) {
            0 => {
                let n = rng.below(30_000) as usize;
                write(&path, &rng.bytes(n))
            }
            1 => fs::remove_file(&path).unwrap(),
            2 => fs::set_permissions(&path, fs::Permissions::from_mode(0o640)).unwrap(),
            3 => {
                let to = path.with_file_name(format!("renamed-{i}"));
                fs::rename(&path, to).unwrap();
            }
            4 => {
                let len = fs::metadata(&path).unwrap().len();
                if len > 300_000 {
                    let f = fs::OpenOptions::new().write(true).open(&path).unwrap();
                    use std::os::unix::fs::FileExt;
                    f.write_all_at(&rng.bytes(100_000), len / 3).unwrap();
                }
            }
            5 => set_mtime(&path, 1_700_000_000 + i as u64),
            6 => {
                // Bytes inserted near the start: later content moves (a delta that cannot be
                // applied in place).
                let old = fs::read(&path).unwrap();
                if old.len() > 300_000 {
                    let mut new = old[..1000].to_vec();
                    new.extend_from_slice(&rng.bytes(777));
                    new.extend_from_slice(&old[1000..]);
                    write(&path, &new);
                }
            }
            _ => {}
        }
    }
    write(
        &root.join(format!("new/dir/added-{}", rng.next_u64())),
        &rng.bytes(5000),
    );
    // A file becomes a directory, a directory a file, a symlink changes target.
    if let Some(f) = files.iter().find(|f| root.join(f).is_file()) {
        fs::remove_file(root.join(f)).unwrap();
        write(&root.join(f).join("inside"), b"now a directory");
    }
    if root.join("d/e").is_dir() {
        fs::remove_dir_all(root.join("d/e")).unwrap();
        write(&root.join("d/e"), b"now a file");
    }
    let _ = fs::remove_file(root.join("to-b"));
    symlink("d", root.join("to-b")).unwrap();
}

struct Env {
    _tmp: Option<tempfile::TempDir>,
    /// A loop-mounted filesystem of its own the trees are on (unmounted when dropped).
    _fs: Option<LoopFs>,
    /// What a source tree's root is made.
    roots: Roots,
    /// What copies lay their trees down as ([`Place::image_size`]).
    image_size: Option<u64>,
    base: PathBuf,
}

#[derive(Clone, Copy, PartialEq)]
enum Roots {
    Directories,
    /// On btrfs, as the engine makes them.
    Subvolumes,
    /// On XFS: image trees.
    Images,
}

impl Env {
    fn new() -> Env {
        let tmp = tempfile::tempdir().unwrap();
        let base = tmp.path().to_path_buf();
        Env {
            _tmp: Some(tmp),
            _fs: None,
            roots: Roots::Directories,
            image_size: None,
            base,
        }
    }
    /// On an ext4 of its own: for trees whose every change is an event for every change
    /// watch on their filesystem (a tree of 100,000 directories overflows a watch's queue,
    /// and its changes too deep to be named count for every tree).
    fn on_own_ext4() -> Env {
        Env::on(LoopFs::new("ext4"), Roots::Directories)
    }
    /// On an XFS (reflink) of its own, where a copy's files are clones of the source's.
    fn on_xfs() -> Env {
        Env::on(LoopFs::new("xfs"), Roots::Directories)
    }
    /// On a btrfs of its own, where trees are subvolumes and copies of them snapshots.
    fn on_btrfs() -> Env {
        Env::on(LoopFs::new("btrfs"), Roots::Subvolumes)
    }
    /// On an XFS of its own, where source trees are image trees and copies of them clones.
    fn with_xfs_images() -> Env {
        Env::on(LoopFs::new("xfs"), Roots::Images)
    }
    /// On an XFS of its own, where source trees are directories and copies lay their
    /// trees down as image trees (`--image-trees`).
    fn on_xfs_laying_down_images() -> Env {
        Env {
            image_size: Some(1 << 30),
            ..Env::on_xfs()
        }
    }
    fn on(fs: LoopFs, roots: Roots) -> Env {
        Env {
            _tmp: None,
            base: fs.root(),
            _fs: Some(fs),
            roots,
            image_size: None,
        }
    }
    fn place(&self, name: &str) -> Place {
        place_in(&self.base, name).with_image_size(self.image_size)
    }
    /// A source tree's place, its root made as the engine makes one (on btrfs a subvolume).
    fn source(&self, name: &str) -> Place {
        let p = self.place(name);
        match self.roots {
            Roots::Directories => {}
            Roots::Subvolumes => make_subvolume(&p),
            Roots::Images => make_image_tree(&p),
        }
        p
    }
}

/// Makes `p`'s root a new, empty btrfs subvolume.
fn make_subvolume(p: &Place) {
    let parent = p.root.parent().unwrap();
    fs::create_dir_all(parent).unwrap();
    let parent = fsx::open_dir(parent).unwrap();
    let name = p.root.file_name().unwrap().as_bytes();
    btrfs::create_subvolume(parent.as_fd(), name).unwrap();
}

/// Makes `p`'s root a new, empty image tree (of at most 1 GiB).
fn make_image_tree(p: &Place) {
    fs::create_dir_all(p.root.parent().unwrap()).unwrap();
    image::create(&p.root, 1 << 30).unwrap();
}

/// The mounts below `dir`.
fn mounts_below(dir: &Path) -> Vec<PathBuf> {
    let dir = fs::canonicalize(dir).unwrap();
    let points = fsx::mount_points().unwrap();
    points
        .into_iter()
        .filter(|m| m.starts_with(&dir) && m != &dir)
        .collect()
}

#[test]
fn paths_from_proc_are_unescaped() {
    let raw = br"/a\040b\011c\012d\134e";
    assert_eq!(fsx::unescape_proc_path(raw), b"/a b\tc\nd\\e");
    assert_eq!(fsx::unescape_proc_path(br"/plain\x"), br"/plain\x");
}

/// A tree `name` with its state dir under `base` (as an `Env` lays them out).
fn place_in(base: &Path, name: &str) -> Place {
    Place::new(base.join("roots").join(name), base.join("state").join(name))
}

/// Copies `src` (an image tree) to `to`: a clone of its image, a tree of its own (written,
/// the source does not change).
fn copy_is_a_clone_of_its_image(src: &Place, to: &Place) {
    let s = copy(src, to, &Control::new()).unwrap();
    assert!(
        s.notes
            .iter()
            .any(|n| n.contains("a clone of the source's image")),
        "{:?}",
        s.notes
    );
    assert!(image::is_image_tree(&to.root));
    assert_same_tree(&src.root, &to.root);
    write(&to.root.join("only-in-the-clone"), b"x");
    assert!(!src.root.join("only-in-the-clone").exists());
}

fn no_debris(p: &Place) {
    assert!(
        !p.work_dir().exists(),
        "work dir left behind at {}",
        p.work_dir().display()
    );
    let parent = p.root.parent().unwrap();
    for e in fs::read_dir(parent).unwrap() {
        let name = e.unwrap().file_name();
        assert!(!name.as_bytes().starts_with(b"."), "hidden debris {name:?}");
    }
}

#[test]
fn copy_reproduces_the_tree_exactly() {
    let env = Env::new();
    let (src, dst) = (env.place("src"), env.place("dst"));
    random_tree(&src.root, &mut Rng(42), 60);
    let reports = Arc::new(std::sync::Mutex::new(Vec::new()));
    let r2 = reports.clone();
    let ctl = Control::new()
        .with_progress(move |p| r2.lock().unwrap().push(p.clone()))
        .stream_only();
    let s = copy(&src, &dst, &ctl).unwrap();
    assert_same_tree(&src.root, &dst.root);
    no_debris(&dst);
    assert_eq!(
        s.tree_bytes, s.content_bytes,
        "a copy sends every byte once"
    );
    assert!(s.bytes_sent > s.content_bytes);
    assert_eq!(
        s.root_hash,
        dst.load_manifest().unwrap().unwrap().root_hex()
    );
    // Progress: totals after planning, monotonic bytes, reaching the total.
    let reports = reports.lock().unwrap();
    let transfer: Vec<_> = reports
        .iter()
        .filter(|p| p.phase == Phase::Transfer)
        .collect();
    assert!(transfer.iter().all(|p| p.bytes_total == Some(s.tree_bytes)));
    assert!(transfer
        .windows(2)
        .all(|w| w[0].bytes_done <= w[1].bytes_done));
    let phases: Vec<_> = reports.iter().map(|p| p.phase).collect();
    for ph in [
        Phase::Scan,
        Phase::Plan,
        Phase::Transfer,
        Phase::Verify,
        Phase::Commit,
    ] {
        assert!(phases.contains(&ph), "{ph:?} reported");
    }
    // The target's files are new inodes: changing the copy can never change the source.
    let a = fs::metadata(src.root.join("a/b")).unwrap();
    let b = fs::metadata(dst.root.join("a/b")).unwrap();
    assert_ne!((a.dev(), a.ino()), (b.dev(), b.ino()));
    assert!(verify(&dst, &Control::new()).unwrap().ok);
    // A second copy onto the same target is refused, and changes nothing.
    assert!(matches!(
        copy(&src, &dst, &Control::new()),
        Err(EngineError::Refused(_))
    ));
}

#[test]
fn random_trees_and_change_sets_sync_to_equality() {
    for seed in 1..=6u64 {
        random_changes_sync_to_equality(Env::new(), seed);
    }
}

#[test]
fn random_trees_and_change_sets_sync_to_equality_with_copy_on_write() {
    // Files cloned one by one (XFS), a snapshot (btrfs), a clone of an image (XFS).
    for (n, env) in [Env::on_xfs, Env::on_btrfs, Env::with_xfs_images]
        .into_iter()
        .enumerate()
    {
        random_changes_sync_to_equality(env(), 7 + n as u64);
    }
}

/// A random tree copied, then synced after three random change sets, then once more with
/// nothing changed.
fn random_changes_sync_to_equality(env: Env, seed: u64) {
    let (src, dst) = (env.source("src"), env.place("dst"));
    let mut rng = Rng(seed * 7919);
    random_tree(&src.root, &mut rng, 40);
    copy(&src, &dst, &Control::new()).unwrap();
    for round in 0..3 {
        random_changes(&src.root, &mut rng);
        let s = sync(&src, &dst, &Control::new())
            .unwrap_or_else(|e| panic!("seed {seed} round {round}: {e}"));
        assert_same_tree(&src.root, &dst.root);
        assert_same_dir_mtimes(&src.root, &dst.root);
        no_debris(&dst);
        assert_eq!(s.drift, 0);
        assert!(s.files_added + s.files_changed + s.files_deleted + s.metadata_only > 0);
    }
    // Nothing changed: nothing sent.
    let s = sync(&src, &dst, &Control::new()).unwrap();
    assert_eq!(
        (
            s.bytes_sent,
            s.files_added,
            s.files_changed,
            s.files_deleted
        ),
        (0, 0, 0, 0)
    );
}

#[test]
fn sync_sends_deltas_for_large_files_and_nothing_for_renames() {
    let env = Env::new();
    let (src, dst) = (env.place("src"), env.place("dst"));
    let mut rng = Rng(5);
    let big = rng.bytes(8 << 20);
    write(&src.root.join("big.img"), &big);
    write(&src.root.join("other.img"), &rng.bytes(3 << 20));
    copy(&src, &dst, &Control::new()).unwrap();

    // Overwrite 1 MiB in the middle of the big file; rename the other one.
    let f = fs::OpenOptions::new()
        .write(true)
        .open(src.root.join("big.img"))
        .unwrap();
    use std::os::unix::fs::FileExt;
    f.write_all_at(&rng.bytes(1 << 20), 3 << 20).unwrap();
    fs::rename(src.root.join("other.img"), src.root.join("moved.img")).unwrap();
    let inode = |p: &Path| fs::metadata(p).unwrap().ino();
    let big_inode = inode(&dst.root.join("big.img"));
    let s = sync(&src, &dst, &Control::new()).unwrap();
    assert_same_tree(&src.root, &dst.root);
    assert_eq!(
        inode(&dst.root.join("big.img")),
        big_inode,
        "an overwrite in place is applied in place, not by rewriting the file"
    );
    assert_eq!(s.delta_files, 1);
    assert!(s.content_bytes >= 1 << 20, "{s:?}");
    assert!(
        s.content_bytes < (1 << 20) + (600 << 10),
        "only the changed region and its edge chunks: {s:?}"
    );
    assert!(
        s.reused_bytes >= (7 << 20) - (600 << 10) + (3 << 20),
        "{s:?}"
    );
    assert_eq!((s.files_added, s.files_changed, s.files_deleted), (1, 1, 1));

    // Bytes inserted at the front move everything after them: still a delta, now applied
    // by building the new version beside the old one.
    let mut shifted = b"a new header line\n".to_vec();
    shifted.extend_from_slice(&fs::read(src.root.join("big.img")).unwrap());
    write(&src.root.join("big.img"), &shifted);
    let s = sync(&src, &dst, &Control::new()).unwrap();
    assert_same_tree(&src.root, &dst.root);
    assert_eq!(s.delta_files, 1);
    assert!(s.content_bytes < 200 << 10, "{s:?}");
}

#[test]
fn metadata_only_changes_cost_no_content() {
    let env = Env::new();
    let (src, dst) = (env.place("src"), env.place("dst"));
    random_tree(&src.root, &mut Rng(9), 30);
    copy(&src, &dst, &Control::new()).unwrap();
    fs::set_permissions(src.root.join("a"), fs::Permissions::from_mode(0o711)).unwrap();
    let some_file = snapshot_tree(&src.root)
        .into_iter()
        .find(|(p, n)| matches!(n, Node::File { .. }) && !p.to_string_lossy().contains("hard"))
        .unwrap()
        .0;
    fs::set_permissions(src.root.join(&some_file), fs::Permissions::from_mode(0o700)).unwrap();
    let s = sync(&src, &dst, &Control::new()).unwrap();
    assert_same_tree(&src.root, &dst.root);
    assert_eq!(s.content_bytes, 0, "{s:?}");
    assert!(s.metadata_only >= 2, "{s:?}");
}

#[test]
fn extended_attributes_are_copied_and_synced_on_files_directories_and_symlinks() {
    let env = Env::new();
    let (src, dst) = (env.place("src"), env.place("dst"));
    random_tree(&src.root, &mut Rng(5), 10);
    let set = |path: &Path, name: &str, value: &[u8]| {
        rustix::fs::lsetxattr(path, name, value, rustix::fs::XattrFlags::empty())
            .unwrap_or_else(|e| panic!("setting {name} on {path:?}: {e} (tests run as root)"));
    };
    fs::write(src.root.join("tagged"), b"x").unwrap();
    set(&src.root.join("tagged"), "user.origin", b"build 7");
    set(&src.root.join("a"), "user.dir", b"");
    symlink("tagged", src.root.join("tagged-link")).unwrap();
    // Only trusted. and security. names exist on symlinks (trusted. needs root).
    set(&src.root.join("tagged-link"), "trusted.label", b"one");
    copy(&src, &dst, &Control::new()).unwrap();
    assert_same_tree(&src.root, &dst.root);
    assert_eq!(
        xattrs_of(&dst.root.join("tagged-link")),
        vec![(b"trusted.label".to_vec(), b"one".to_vec())]
    );

    // A changed, an added and a removed attribute are metadata, not content.
    set(&src.root.join("tagged-link"), "trusted.label", b"two");
    set(&src.root.join("tagged"), "user.more", b"1");
    rustix::fs::lremovexattr(src.root.join("a"), "user.dir").unwrap();
    let s = sync(&src, &dst, &Control::new()).unwrap();
    assert_same_tree(&src.root, &dst.root);
    assert_eq!(s.content_bytes, 0, "{s:?}");
    assert_eq!(s.metadata_only, 3, "{s:?}");
    // Nothing changed since: nothing to do.
    let s = sync(&src, &dst, &Control::new()).unwrap();
    assert_eq!((s.metadata_only, s.files_changed), (0, 0), "{s:?}");
}

#[test]
fn changes_made_on_the_copy_are_overwritten_and_reported_as_drift() {
    let env = Env::new();
    let (src, dst) = (env.place("src"), env.place("dst"));
    random_tree(&src.root, &mut Rng(11), 20);
    copy(&src, &dst, &Control::new()).unwrap();
    write(&dst.root.join("a/b/intruder.txt"), b"made on the copy");
    fs::remove_file(dst.root.join("to-b")).unwrap();
    let s = sync(&src, &dst, &Control::new()).unwrap();
    assert_same_tree(&src.root, &dst.root);
    assert_eq!(s.drift, 2, "{s:?}");
    assert!(s.drift_paths.iter().any(|p| p.contains("intruder")));
}

#[test]
fn hostile_trees_never_make_the_engine_touch_anything_outside_the_roots() {
    hostile_trees(Env::new());
}

#[test]
fn hostile_trees_reflinked_never_make_the_engine_touch_anything_outside_the_roots() {
    hostile_trees(Env::on_xfs());
}

#[test]
fn hostile_trees_taken_whole_never_make_the_engine_touch_anything_outside_the_roots() {
    // A snapshot of the source, and a clone of its image: the same rules hold.
    hostile_trees(Env::on_btrfs());
    hostile_trees(Env::with_xfs_images());
}

fn hostile_trees(env: Env) {
    let (src, dst) = (env.source("src"), env.place("dst"));
    let outside = env.base.join("outside");
    write(&outside.join("secret"), b"outside the roots");
    fs::create_dir_all(&src.root).unwrap();
    symlink("/etc", src.root.join("etc-link")).unwrap();
    symlink("../../../../../..", src.root.join("up")).unwrap();
    symlink(&outside, src.root.join("abs-outside")).unwrap();
    symlink("loop", src.root.join("loop")).unwrap();
    symlink("b-loop", src.root.join("a-loop")).unwrap();
    symlink("a-loop", src.root.join("b-loop")).unwrap();
    let weird = std::ffi::OsStr::from_bytes(b"bad\xff\xfename\nwith newline");
    write(&src.root.join(weird), b"non-utf8 name");
    rustix::fs::mknodat(
        rustix::fs::CWD,
        src.root.join("fifo"),
        rustix::fs::FileType::Fifo,
        rustix::fs::Mode::from_raw_mode(0o644),
        0,
    )
    .unwrap();
    // A device node needs root; the engine must report it, not copy or drop it silently.
    let is_root = fs::metadata("/proc/self")
        .map(|m| m.uid() == 0)
        .unwrap_or(false);
    if is_root {
        rustix::fs::mknodat(
            rustix::fs::CWD,
            src.root.join("null-dev"),
            rustix::fs::FileType::CharacterDevice,
            rustix::fs::Mode::from_raw_mode(0o666),
            rustix::fs::makedev(1, 3),
        )
        .unwrap();
    }
    let s = copy(&src, &dst, &Control::new()).unwrap();
    // (Taken whole where the source is a subvolume or an image tree.)
    let whole = [
        "a btrfs snapshot of the source",
        "a clone of the source's image",
    ];
    assert_eq!(
        s.notes
            .iter()
            .any(|n| whole.iter().any(|w| n.starts_with(w))),
        !matches!(env.roots, Roots::Directories),
        "{:?}",
        s.notes
    );
    assert_same_tree(&src.root, &dst.root);
    if is_root {
        assert_eq!(s.skipped_special, ["null-dev"]);
        assert!(!dst.root.join("null-dev").exists());
    }
    assert_eq!(
        fs::read_link(dst.root.join("etc-link")).unwrap(),
        Path::new("/etc")
    );

    // The copy's user replaces a directory with a symlink pointing outside, then the source
    // changes files "inside" that directory: the sync must replace the link, not follow it.
    fs::create_dir_all(src.root.join("data")).unwrap();
    write(&src.root.join("data/file"), b"v1");
    sync(&src, &dst, &Control::new()).unwrap();
    fs::remove_dir_all(dst.root.join("data")).unwrap();
    symlink(&outside, dst.root.join("data")).unwrap();
    write(&src.root.join("data/file"), b"v2");
    write(
        &src.root.join("data/secret"),
        b"would overwrite the outside file",
    );
    let s = sync(&src, &dst, &Control::new()).unwrap();
    assert_same_tree(&src.root, &dst.root);
    assert_eq!(
        fs::read(outside.join("secret")).unwrap(),
        b"outside the roots"
    );
    assert_eq!(fs::read_dir(&outside).unwrap().count(), 1);
    assert!(s.drift >= 1);

    // A file replaced by a directory and back.
    fs::remove_file(src.root.join("data/file")).unwrap();
    write(&src.root.join("data/file/nested"), b"x");
    sync(&src, &dst, &Control::new()).unwrap();
    assert_same_tree(&src.root, &dst.root);
    fs::remove_dir_all(src.root.join("data/file")).unwrap();
    write(&src.root.join("data/file"), b"a file again");
    sync(&src, &dst, &Control::new()).unwrap();
    assert_same_tree(&src.root, &dst.root);
}

/// About `k` failure points spread over 1..=n, always including the first and the last.
fn spread(n: usize, k: usize) -> Vec<usize> {
    let mut v: Vec<usize> = (1..=n).step_by((n / k).max(1)).chain([n]).collect();
    v.dedup();
    v
}

/// After a copy or sync that took a source file as it changed: the copy's record is what
/// it holds, and the next sync brings it up to date.
fn recorded_as_held_then_synced(src: &Place, dst: &Place) {
    let report = verify(dst, &Control::new()).unwrap();
    assert!(
        report.ok,
        "the copy's record is what it holds: {:?}",
        report.differences
    );
    sync(src, dst, &Control::new()).unwrap();
    assert_same_tree(&src.root, &dst.root);
}

/// A control that writes into the file at `path` (in place, as a running container would)
/// the first time the failure point `at` is reached; and whether it has.
fn changes_file_at(at: &'static str, path: PathBuf) -> (Control, Arc<AtomicBool>) {
    let hit = Arc::new(AtomicBool::new(false));
    let h2 = hit.clone();
    let ctl = Control::new().with_failpoint(move |point| {
        if point == at && !h2.swap(true, Ordering::SeqCst) {
            let f = fs::OpenOptions::new().write(true).open(&path)?;
            std::os::unix::fs::FileExt::write_all_at(&f, b"changed", 0)?;
        }
        Ok(())
    });
    (ctl, hit)
}

/// Fails the n-th time any named point is reached.
fn fail_at(n: usize) -> (Control, Arc<AtomicUsize>) {
    let count = Arc::new(AtomicUsize::new(0));
    let c = count.clone();
    let ctl = Control::new().with_failpoint(move |point| {
        if c.fetch_add(1, Ordering::SeqCst) + 1 == n {
            Err(std::io::Error::other(format!(
                "injected failure at {point}"
            )))
        } else {
            Ok(())
        }
    });
    (ctl, count)
}

#[test]
fn a_copy_interrupted_anywhere_leaves_nothing_and_succeeds_on_the_next_attempt() {
    copy_interrupted_anywhere(&Env::new(), 20);
}

#[test]
fn a_reflinked_copy_interrupted_anywhere_leaves_nothing_and_succeeds_on_the_next_attempt() {
    // Its files cloned file by file, on the kernel copy's workers.
    copy_interrupted_anywhere(&Env::on_xfs(), 20);
}

#[test]
fn a_btrfs_snapshot_copy_interrupted_anywhere_leaves_nothing() {
    // A snapshot has few places to fail: taken, verified, committed.
    copy_interrupted_anywhere(&Env::on_btrfs(), 1);
}

#[test]
fn an_image_clone_copy_interrupted_anywhere_leaves_nothing() {
    image_copies_interrupted_anywhere_leave_nothing(&Env::with_xfs_images());
}

/// `copy_interrupted_anywhere` where the copies are image trees: then only the trees' own
/// mounts are left, none in a work dir.
fn image_copies_interrupted_anywhere_leave_nothing(env: &Env) {
    copy_interrupted_anywhere(env, 1);
    let mounts = mounts_below(&env.base);
    assert!(mounts.len() > 2, "{mounts:?}");
    let roots = env.base.join("roots");
    assert!(mounts.iter().all(|m| m.starts_with(&roots)), "{mounts:?}");
}

#[test]
fn xfs_copies_of_an_image_tree_are_clones_whole_independent_and_verified() {
    let env = Env::with_xfs_images();
    let src = env.source("src");
    assert!(image::is_image_tree(&src.root));
    let plain = env.place("plain");
    fs::create_dir_all(&plain.root).unwrap();
    assert!(!image::is_image_tree(&plain.root));
    let mut rng = Rng(62);
    random_tree(&src.root, &mut rng, 60);
    copies_taken_whole(
        &env.base,
        &src,
        &mut rng,
        ("copy:image-cloned", "a clone of the source's image"),
        |p| image::is_image_tree(&p.root),
    );
    // A plain directory's copy goes file by file.
    random_tree(&plain.root, &mut rng, 10);
    let s = copy(&plain, &env.place("of-plain"), &Control::new()).unwrap();
    assert!(
        !s.notes.iter().any(|n| n.contains("clone")),
        "{:?}",
        s.notes
    );
    // Removed, the copies left no image and no mount behind: only the source's is left.
    for gone in ["dst", "again", "failed"] {
        assert!(!image::image_path(&env.place(gone).root).exists(), "{gone}");
    }
    assert_eq!(
        mounts_below(&env.base),
        vec![fs::canonicalize(&src.root).unwrap()]
    );
}

#[test]
fn copies_laid_down_as_image_trees_hold_the_tree_and_their_copies_are_clones() {
    let env = Env::on_xfs_laying_down_images();
    let src = env.source("src");
    assert!(!image::is_image_tree(&src.root));
    let mut rng = Rng(66);
    random_tree(&src.root, &mut rng, 40);
    // File by file into a filesystem of its own: the same tree, verified.
    let dst = env.place("copy");
    let s = copy(&src, &dst, &Control::new()).unwrap();
    assert!(image::is_image_tree(&dst.root));
    assert!(
        s.notes
            .iter()
            .any(|n| n.starts_with("laid down as an image tree of 1.0 GiB")),
        "{:?}",
        s.notes
    );
    assert_same_tree(&src.root, &dst.root);
    assert!(verify(&dst, &Control::new()).unwrap().ok);
    // Its copy is a clone of its image, taken whole, and independent of it.
    let again = env.place("again");
    copy_is_a_clone_of_its_image(&dst, &again);
    // Syncs from the directory bring the image tree up to date (its stage inside it).
    random_changes(&src.root, &mut rng);
    sync(&src, &dst, &Control::new()).unwrap();
    assert_same_tree(&src.root, &dst.root);
    assert!(verify(&dst, &Control::new()).unwrap().ok);
    // A tree that would fill most of its image: a directory, and says why.
    let small = env.place("small").with_image_size(Some(150 << 20));
    random_tree(&src.root.join("big"), &mut rng, 10);
    write(&src.root.join("big/blob"), &vec![7u8; 8 << 20]);
    let s = copy(&src, &small, &Control::new()).unwrap();
    assert!(!image::is_image_tree(&small.root) && !image::image_path(&small.root).exists());
    assert!(
        s.notes.iter().any(|n| n.contains("would fill most of")),
        "{:?}",
        s.notes
    );
    assert_same_tree(&src.root, &small.root);
    // Where the filesystem has no reflinks, the copy is a directory, and says why.
    let plain = Env::new();
    let ext = plain.place("dir").with_image_size(Some(1 << 30));
    let s = copy(&src, &ext, &Control::new()).unwrap();
    assert!(!image::is_image_tree(&ext.root) && !image::image_path(&ext.root).exists());
    assert!(
        s.notes.iter().any(|n| n.contains("has no reflinks")),
        "{:?}",
        s.notes
    );
    assert_same_tree(&src.root, &ext.root);
}

#[test]
fn a_copy_laid_down_as_an_image_tree_interrupted_anywhere_leaves_nothing() {
    image_copies_interrupted_anywhere_leave_nothing(&Env::on_xfs_laying_down_images());
}

#[test]
fn a_sync_into_an_image_tree_laid_down_by_a_copy_interrupted_anywhere_converges() {
    sync_interrupted_anywhere(Env::on_xfs_laying_down_images());
}

#[test]
fn space_freed_inside_an_image_tree_is_given_back_to_the_host() {
    use std::os::unix::fs::MetadataExt;
    let env = Env::with_xfs_images();
    let tree = env.source("tree");
    let image = image::image_path(&tree.root);
    let held = || fs::metadata(&image).unwrap().blocks() * 512;
    let empty = held();
    write(&tree.root.join("big"), &vec![3u8; 64 << 20]);
    let dir = fsx::open_dir(&tree.root).unwrap();
    fsx::syncfs(dir.as_fd()).unwrap();
    assert!(held() >= empty + (60 << 20), "{} {empty}", held());
    fs::remove_file(tree.root.join("big")).unwrap();
    // (Punched out of the image at XFS's next log checkpoint: a few seconds.)
    let t = Instant::now();
    while held() > empty + (8 << 20) {
        assert!(
            t.elapsed() < Duration::from_secs(30),
            "the image still holds {} bytes (empty: {empty})",
            held()
        );
        fsx::syncfs(dir.as_fd()).unwrap();
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The sending half of a copy or a sync between servers reports its progress alone (its
/// receiver counts on another host): the files and the content it sent, up to their
/// totals (not the stream's own bytes, headers and metadata, beyond them).
#[test]
fn the_sending_half_between_servers_counts_the_files_it_sends() {
    let env = Env::new();
    let src = env.source("src");
    random_tree(&src.root, &mut Rng(71), 30);
    // Large enough to go as a delta when it changes.
    let mut big = vec![0u8; 4 << 20];
    Rng(72).fill(&mut big);
    write(&src.root.join("big"), &big);
    let last_transfer = |op: &dyn Fn(&Control)| {
        let reports = Arc::new(std::sync::Mutex::new(Vec::new()));
        let r2 = reports.clone();
        op(&Control::new().with_progress(move |p| r2.lock().unwrap().push(p.clone())));
        let reports = reports.lock().unwrap();
        let transfer: Vec<_> = reports
            .iter()
            .filter(|p| p.phase == Phase::Transfer)
            .cloned()
            .collect();
        assert!(transfer
            .windows(2)
            .all(|w| w[0].files_done <= w[1].files_done && w[0].bytes_done <= w[1].bytes_done));
        transfer.last().cloned().expect("a transfer reported")
    };
    let dst = env.place("dst");
    let p = last_transfer(&|ctl| {
        let (sent, received) = across(
            |c| send_copy_to(&src, c, None, ctl),
            |c| receive_copy_from(&dst, c, &Control::new()),
        );
        sent.unwrap();
        received.unwrap();
    });
    assert!(p.files_total.is_some_and(|t| t > 30), "{p:?}");
    assert_eq!(Some(p.files_done), p.files_total, "{p:?}");
    assert_eq!(Some(p.bytes_done), p.bytes_total, "{p:?}");
    write(&src.root.join("added"), b"new");
    fs::remove_file(
        fs::read_dir(&src.root)
            .unwrap()
            .flatten()
            .find(|e| e.path().is_file() && e.file_name() != "added" && e.file_name() != "big")
            .unwrap()
            .path(),
    )
    .unwrap();
    big[2 << 20..(2 << 20) + 100].fill(7);
    write(&src.root.join("big"), &big);
    let p = last_transfer(&|ctl| {
        let (sent, received) = across(
            |c| send_sync_to(&src, c, &|_| false, None, ctl),
            |c| receive_sync_from(&dst, c, &|_| false, &Control::new()),
        );
        assert_eq!(sent.unwrap().delta_files, 1);
        received.unwrap();
    });
    assert_eq!(p.files_total, Some(3), "{p:?}");
    assert_eq!(Some(p.files_done), p.files_total, "{p:?}");
    assert_eq!(p.bytes_total, Some(3 + (4 << 20)), "{p:?}");
    assert_eq!(Some(p.bytes_done), p.bytes_total, "{p:?}");
    assert_same_tree(&src.root, &dst.root);
}

/// A copy received from another server is laid down as an image tree where its place asks
/// for one, unless the tree, at the size the source's scan found (its first word), would
/// fill most of it: then a directory, saying why, before anything arrives. (What the
/// control plane last recorded of a source can be far behind: a tree grows in use.)
#[test]
fn copies_received_from_another_server_are_image_trees_where_they_fit() {
    let env = Env::on_xfs_laying_down_images();
    let src = env.source("src");
    random_tree(&src.root, &mut Rng(68), 30);
    let receive = |dst: &Place| {
        let (sent, received) = across(
            |c| send_copy_to(&src, c, None, &Control::new()),
            |c| receive_copy_from(dst, c, &Control::new()),
        );
        sent.unwrap();
        received.unwrap()
    };
    let fits = env.place("fits");
    let s = receive(&fits);
    assert!(image::is_image_tree(&fits.root), "{:?}", s.notes);
    assert!(s
        .notes
        .iter()
        .any(|n| n.starts_with("laid down as an image tree")));
    assert_same_tree(&src.root, &fits.root);
    // Grown to 200 MB (a hole: nothing on the source's disk), more than an image tree of
    // 320 MB holds with room to change (XFS's smallest is 300 MB).
    fs::File::create(src.root.join("grown.img"))
        .unwrap()
        .set_len(200 << 20)
        .unwrap();
    let too_big = env.place("too-big").with_image_size(Some(320 << 20));
    let s = receive(&too_big);
    assert!(!image::is_image_tree(&too_big.root));
    assert!(!image::image_path(&too_big.root).exists());
    assert!(
        s.notes
            .iter()
            .any(|n| n.contains("its 0.2 GiB would fill most of an image tree of 0.3 GiB")),
        "{:?}",
        s.notes
    );
    assert_same_tree(&src.root, &too_big.root);
    assert!(verify(&too_big, &Control::new()).unwrap().ok);
}

/// A copy laid down as an image tree holds what its source holds: a source (a directory,
/// with no such limit) grown beyond the copy's image makes a sync grow that image first,
/// on this server and from another, instead of failing with no room left.
#[test]
fn copies_laid_down_as_image_trees_grow_to_hold_their_source() {
    const MIB: u64 = 1 << 20;
    // (Two copies of 330 MB and their stages: more than the 512 MiB of the usual XFS.)
    let env = Env {
        image_size: Some(1 << 30),
        ..Env::on(
            LoopFs::mounted_with("xfs", "loop", Some(2 << 30)),
            Roots::Directories,
        )
    };
    let src = env.source("src");
    random_tree(&src.root, &mut Rng(69), 30);
    // (XFS's smallest: 300 MB.)
    let here = env.place("here").with_image_size(Some(320 * MIB));
    copy(&src, &here, &Control::new()).unwrap();
    let there = env.place("there").with_image_size(Some(320 * MIB));
    let (sent, received) = across(
        |c| send_copy_to(&src, c, None, &Control::new()),
        |c| receive_copy_from(&there, c, &Control::new()),
    );
    sent.unwrap();
    received.unwrap();
    for copy in [&here, &there] {
        assert!(image::is_image_tree(&copy.root));
        assert!(filesystem_size(&copy.root) <= 320 * MIB);
    }
    // 330 MB more (a hole in the source: nothing on its disk), more than either image has.
    fs::File::create(src.root.join("grown.img"))
        .unwrap()
        .set_len(330 * MIB)
        .unwrap();
    let s = sync(&src, &here, &Control::new()).unwrap();
    let (sent, received) = across(
        |c| send_sync_to(&src, c, &|_| false, None, &Control::new()),
        |c| receive_sync_from(&there, c, &|_| false, &Control::new()),
    );
    let (sent, received) = (sent.unwrap(), received.unwrap());
    for (copy, notes) in [
        (&here, &s.notes),
        (&there, &sent.notes),
        (&there, &received.notes),
    ] {
        assert!(
            notes
                .iter()
                .any(|n| n.starts_with("its image tree grown from 0.3 to 1.0 GiB")),
            "{notes:?}"
        );
        assert!(image::is_image_tree(&copy.root));
        assert!(filesystem_size(&copy.root) > 900 * MIB);
        assert_eq!(
            fs::metadata(copy.root.join("grown.img")).unwrap().len(),
            330 * MIB
        );
        assert!(verify(copy, &Control::new()).unwrap().ok);
    }
    // The rest of the trees as their source has them (the grown file aside: its 330 MB
    // read whole, twice per tree, is what the checks above spare).
    fs::remove_file(src.root.join("grown.img")).unwrap();
    sync(&src, &here, &Control::new()).unwrap();
    assert_same_tree(&src.root, &here.root);
}

/// A sync into an image tree whose host could not back what the source adds (beyond the
/// margin the keeper of image trees' room leaves free: `image_room`) is refused before
/// anything is written or grown, saying why, rather than failing half way with "no space
/// left"; the copy stays as it was.
#[test]
fn a_sync_into_an_image_tree_refuses_up_front_what_its_host_cannot_back() {
    const MIB: u64 = 1 << 20;
    let env = Env {
        image_size: Some(1 << 30),
        ..Env::on(
            LoopFs::mounted_with("xfs", "loop", Some(1 << 30)),
            Roots::Directories,
        )
    };
    let src = env.source("src");
    random_tree(&src.root, &mut Rng(73), 20);
    let dst = env.place("copy").with_image_size(Some(320 * MIB));
    copy(&src, &dst, &Control::new()).unwrap();
    assert!(image::is_image_tree(&dst.root));
    let image_len = || fs::metadata(image::image_path(&dst.root)).unwrap().len();
    let was = image_len();
    // More than the host has free less the margin, less than all it has free.
    let (free, size) = fsx::free_space(&env.base).unwrap();
    let grown = free - image_room::margin(size) / 2;
    fs::File::create(src.root.join("grown.img"))
        .unwrap()
        .set_len(grown)
        .unwrap();
    let e = sync(&src, &dst, &Control::new()).unwrap_err().to_string();
    assert!(e.contains("kept free for the image trees' writes"), "{e}");
    assert_eq!(image_len(), was);
    assert!(!dst.root.join("grown.img").exists());
    assert!(verify(&dst, &Control::new()).unwrap().ok);
}

/// The size of the filesystem mounted at `root`, in bytes.
fn filesystem_size(root: &Path) -> u64 {
    let st = rustix::fs::statvfs(root).unwrap();
    st.f_blocks * st.f_frsize
}

/// Image trees are sparse, so their host may hold less than they offer together. The
/// keeper lets each offer only what the host has left (less a margin): a tree filled up
/// refuses the write itself ("no space left") and keeps all it accepted, where the host's
/// full disk would have lost it behind writes that succeeded; room given back is offered
/// again.
#[test]
fn image_trees_offer_no_more_than_their_host_has_left() {
    const MIB: u64 = 1 << 20;
    const MARGIN: u64 = 32 * MIB;
    // Two image trees of 1 GiB on a host of 512 MiB.
    let host = LoopFs::new("xfs");
    let (a, b) = (host.root().join("a"), host.root().join("b"));
    image::create(&a, 1 << 30).unwrap();
    image::create(&b, 1 << 30).unwrap();
    let free = |dir: &Path| {
        let st = rustix::fs::statvfs(dir).unwrap();
        st.f_bavail * st.f_frsize
    };
    let mut keeper = image_room::Keeper::new(&host.root(), Some(MARGIN)).unwrap();
    let host_had = free(&host.root());
    let looked = keeper.look();
    keeper.settle();
    assert_eq!(looked.len(), 2, "{looked:?}");
    for tree in [&a, &b] {
        assert!(free(tree) + MARGIN <= free(&host.root()), "{}", free(tree));
    }
    // A container's writes into one, the keeper looking as they go.
    let data = Rng(71).bytes(4 << 20);
    let mut file = fs::File::create(a.join("filling")).unwrap();
    let mut written = 0;
    let refused = loop {
        let at = written as usize % data.len();
        match file.write(&data[at..]) {
            Ok(n) => written += n as u64,
            Err(e) => break e,
        }
        assert!(written < 1 << 30, "never refused");
        keeper.look();
        keeper.settle();
    };
    assert_eq!(refused.raw_os_error(), Some(libc::ENOSPC), "{refused}");
    // (Less what XFS sets aside as a file grows, and its metadata.)
    assert!(
        written > host_had - MARGIN - 64 * MIB,
        "{written} of {host_had}"
    );
    // All it accepted is on the host: written out without error, and read back from the
    // image (not the page cache).
    file.sync_all().unwrap();
    rustix::fs::fadvise(&file, 0, None, rustix::fs::Advice::DontNeed).unwrap();
    let back = fs::read(a.join("filling")).unwrap();
    assert_eq!(back.len() as u64, written);
    assert!(back.chunks(data.len()).all(|c| c == &data[..c.len()]));
    assert!(free(&host.root()) > MARGIN / 4, "{}", free(&host.root()));
    // The other tree offers only what is left.
    keeper.look();
    keeper.settle();
    assert!(free(&b) + MARGIN <= free(&host.root()), "{}", free(&b));
    // Emptied, the tree gives its room back to the host (`discard`), and both offer it again.
    // (Its blocks are freed after the unlink, and given back at a log checkpoint, which a
    // `syncfs` forces.)
    drop(file);
    fs::remove_file(a.join("filling")).unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let again = host_had - MARGIN - 64 * MIB;
    while free(&b) < again {
        assert!(
            std::time::Instant::now() < deadline,
            "{} (host {})",
            free(&b),
            free(&host.root())
        );
        std::thread::sleep(Duration::from_millis(100));
        fsx::syncfs(fsx::open_dir(&a).unwrap().as_fd()).unwrap();
        keeper.look();
        keeper.settle();
    }
    assert!(free(&a) >= again, "{}", free(&a));
    // A tree unmounted after it was found is never taken for its host, whose device its
    // root now shows: a reserve set there would take the host's free space.
    let dev = fs::metadata(&b).unwrap().dev();
    assert!(image_room::would_keep(&b, dev));
    rustix::mount::unmount(&b, rustix::mount::UnmountFlags::empty()).unwrap();
    let host_dev = fs::metadata(&b).unwrap().dev();
    assert_ne!(host_dev, dev);
    assert!(!image_room::would_keep(&b, dev));
    assert!(!image_room::would_keep(&b, host_dev));
    assert!(!image_room::would_keep(&host.root(), host_dev));
}

#[test]
fn image_trees_grow_to_a_larger_size_in_use_and_their_clones_with_them() {
    const GIB: u64 = 1 << 30;
    let env = Env::on_xfs_laying_down_images();
    let src = env.source("src");
    random_tree(&src.root, &mut Rng(67), 30);
    let dst = env.place("copy");
    copy(&src, &dst, &Control::new()).unwrap();
    assert!(image::is_image_tree(&dst.root));
    assert!(filesystem_size(&dst.root) <= GIB);
    // Grown while a file in it is open for writing: the same tree, more room, and the
    // file still writes.
    let mut open = fs::OpenOptions::new()
        .append(true)
        .create(true)
        .open(dst.root.join("in-use"))
        .unwrap();
    assert!(image::grow(&dst.root, 2 * GIB).unwrap());
    let image_len = |p: &Place| fs::metadata(image::image_path(&p.root)).unwrap().len();
    assert_eq!(image_len(&dst), 2 * GIB);
    assert!(
        filesystem_size(&dst.root) > GIB + GIB / 2,
        "{}",
        filesystem_size(&dst.root)
    );
    open.write_all(b"still here").unwrap();
    drop(open);
    assert_eq!(fs::read(dst.root.join("in-use")).unwrap(), b"still here");
    fs::remove_file(dst.root.join("in-use")).unwrap();
    assert_same_tree(&src.root, &dst.root);
    // Never shrunk, nor grown again.
    assert!(!image::grow(&dst.root, 2 * GIB).unwrap());
    assert!(!image::grow(&dst.root, GIB).unwrap());
    assert_eq!(image_len(&dst), 2 * GIB);
    // A clone of it is grown to its own place's size; the source stays as it is.
    let again = env.place("again").with_image_size(Some(3 * GIB));
    let s = copy(&dst, &again, &Control::new()).unwrap();
    assert!(s
        .notes
        .iter()
        .any(|n| n.contains("a clone of the source's image")));
    assert_eq!(image_len(&again), 3 * GIB);
    assert!(filesystem_size(&again.root) > 2 * GIB + GIB / 2);
    assert_eq!(image_len(&dst), 2 * GIB);
    assert_same_tree(&src.root, &again.root);
    // Mounted again (after a restart of the host) with a larger size: grown too.
    unmount_image_tree(&again.root);
    image::ensure_mounted(&again.root, Some(4 * GIB)).unwrap();
    assert!(image::is_image_tree(&again.root));
    assert_eq!(image_len(&again), 4 * GIB);
    assert!(filesystem_size(&again.root) > 3 * GIB + GIB / 2);
    assert_same_tree(&src.root, &again.root);
    assert!(verify(&again, &Control::new()).unwrap().ok);
}

/// As after a restart of the host: the image tree at `root` unmounted, its loop device
/// gone, the empty directory under it left.
fn unmount_image_tree(root: &Path) {
    let out = std::process::Command::new("umount")
        .arg(root)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    // (The loop device clears itself once closed.)
    let t = Instant::now();
    while image::attached(&image::image_path(root)).unwrap() {
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "the loop device stays"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(!image::is_image_tree(root));
    assert!(fs::read_dir(root).unwrap().next().is_none());
}

#[test]
fn image_trees_whose_filesystem_is_not_mounted_are_mounted_again_never_read_as_empty() {
    let env = Env::with_xfs_images();
    let src = env.source("src");
    random_tree(&src.root, &mut Rng(64), 40);
    let dst = env.place("copy");
    copy(&src, &dst, &Control::new()).unwrap();
    assert!(image::is_image_tree(&dst.root));
    let files = snapshot_tree(&src.root).len();
    assert!(files > 40, "{files}");

    // Both unmounted: the sync mounts them again and finds nothing to do.
    for p in [&src, &dst] {
        unmount_image_tree(&p.root);
    }
    let s = sync(&src, &dst, &Control::new()).unwrap();
    assert_eq!(
        (
            s.files_added,
            s.files_changed,
            s.files_deleted,
            s.bytes_sent
        ),
        (0, 0, 0, 0),
        "{s:?}"
    );
    assert!(image::is_image_tree(&src.root) && image::is_image_tree(&dst.root));
    assert_same_tree(&src.root, &dst.root);
    assert_eq!(snapshot_tree(&dst.root).len(), files);
    // So do a verification, a probe and a copy.
    unmount_image_tree(&dst.root);
    assert!(verify(&dst, &Control::new()).unwrap().ok);
    unmount_image_tree(&src.root);
    let state = probe(&src).unwrap();
    assert_eq!(state, probe(&dst).unwrap());
    unmount_image_tree(&src.root);
    let again = env.place("again");
    copy(&src, &again, &Control::new()).unwrap();
    assert_same_tree(&src.root, &again.root);

    // Something written into the directory under an unmounted tree: refused, and nothing
    // is lost on either side.
    unmount_image_tree(&src.root);
    write(&src.root.join("stray"), b"written while the tree was away");
    let e = sync(&src, &dst, &Control::new()).unwrap_err().to_string();
    assert!(e.contains("not mounted"), "{e}");
    assert!(!image::is_image_tree(&src.root));
    assert_eq!(
        fs::read(src.root.join("stray")).unwrap(),
        b"written while the tree was away"
    );
    assert_eq!(snapshot_tree(&dst.root).len(), files);
    assert!(verify(&dst, &Control::new()).unwrap().ok);
    fs::remove_file(src.root.join("stray")).unwrap();
    sync(&src, &dst, &Control::new()).unwrap();
    assert_same_tree(&src.root, &dst.root);
}

fn copy_interrupted_anywhere(env: &Env, at_least: usize) {
    let src = env.source("src");
    random_tree(&src.root, &mut Rng(77), 25);
    let (probe, count) = fail_at(usize::MAX);
    copy(&src, &env.place("probe"), &probe).unwrap();
    let points = count.load(Ordering::SeqCst);
    assert!(points > at_least, "{points} failure points");
    for n in spread(points, 12) {
        let dst = env.place(&format!("dst{n}"));
        let (ctl, _) = fail_at(n);
        assert!(copy(&src, &dst, &ctl).is_err(), "failure {n} took effect");
        if dst.commit_marker().exists() {
            // Interrupted in the commit: the next attempt must repair it.
        } else {
            assert!(!dst.root.exists(), "no half copy visible after failure {n}");
            assert!(!dst.work_dir().exists());
        }
        copy(&src, &dst, &Control::new()).unwrap();
        assert_same_tree(&src.root, &dst.root);
        no_debris(&dst);
    }
}

#[test]
fn a_sync_interrupted_anywhere_converges_on_the_next_run() {
    sync_interrupted_anywhere(Env::new());
}

#[test]
fn a_sync_into_a_btrfs_snapshot_interrupted_anywhere_converges_on_the_next_run() {
    // Its files cannot be renamed in from the work dir (another subvolume): they are
    // cloned beside their place and renamed there.
    sync_interrupted_anywhere(Env::on_btrfs());
}

#[test]
fn a_reflinked_sync_interrupted_anywhere_converges_on_the_next_run() {
    sync_interrupted_anywhere(Env::on_xfs());
}

#[test]
fn a_sync_between_image_trees_interrupted_anywhere_converges_on_the_next_run() {
    // The copies are clones of images: the sync reads changed files from the source into
    // another filesystem, and stages inside the copy (no rename crosses into it).
    sync_interrupted_anywhere(Env::with_xfs_images());
}

#[test]
fn an_image_tree_left_frozen_is_thawed_before_the_engine_touches_it() {
    use std::os::fd::AsRawFd;
    let env = Env::with_xfs_images();
    let src = env.source("src");
    random_tree(&src.root, &mut Rng(5), 20);
    let ioctl = |root: &Path, request| {
        let dir = fsx::open_dir(root).unwrap();
        // SAFETY: FIFREEZE and FITHAW take an int argument they ignore.
        unsafe { libc::ioctl(dir.as_raw_fd(), request, 0) }
    };
    // As a doppel killed between the freeze and the thaw of a copy's clone leaves it.
    assert_eq!(ioctl(&src.root, image::FIFREEZE as _), 0);
    let dst = env.place("dst");
    let s = copy(&src, &dst, &Control::new()).unwrap();
    assert!(
        s.notes
            .iter()
            .any(|n| n.contains("a clone of the source's image")),
        "{s:?}"
    );
    assert_same_tree(&src.root, &dst.root);
    // Thawed, and not left frozen by the copy's own freeze (a thaw of a filesystem that is
    // not frozen is refused).
    let thaw_refused = |root: &Path| {
        let r = ioctl(root, image::FITHAW as _);
        r == -1 && std::io::Error::last_os_error().raw_os_error() == Some(libc::EINVAL)
    };
    assert!(thaw_refused(&src.root));
    write(&src.root.join("after"), b"written");
    // At a start, what is left frozen below the data dir is thawed too.
    assert_eq!(ioctl(&src.root, image::FIFREEZE as _), 0);
    image::tend_below(&env.base, None);
    assert!(thaw_refused(&src.root));
}

#[test]
fn a_sync_between_image_trees_of_one_server_reads_changed_files_from_the_source_itself() {
    let env = Env::with_xfs_images();
    let src = env.source("src");
    let mut rng = Rng(77);
    random_tree(&src.root, &mut rng, 30);
    write(&src.root.join("x1"), &rng.bytes(1000));
    write(&src.root.join("x2"), &rng.bytes(1000));
    let dst = env.place("dst");
    copy(&src, &dst, &Control::new()).unwrap();
    // Two files changed, one new: 300 kB, none of it streamed.
    write(&src.root.join("x1"), &rng.bytes(100_000));
    write(&src.root.join("x2"), &rng.bytes(100_000));
    write(&src.root.join("x3"), &rng.bytes(100_000));
    let s = sync(&src, &dst, &Control::new()).unwrap();
    assert_same_tree(&src.root, &dst.root);
    assert_eq!(
        (s.local_bytes, s.kernel_bytes, s.content_bytes),
        (300_000, 0, 0),
        "{s:?}"
    );
    assert!(s.bytes_sent < 10_000, "{s:?}");
    assert!(verify(&dst, &Control::new()).unwrap().ok);
    // A source file that changes between the scan and its copy (a running container): the
    // copy holds it as copied (read back and hashed), says it was unstable, and the next
    // sync brings it up to date.
    write(&src.root.join("x1"), &rng.bytes(100_000));
    let (ctl, hit) = changes_file_at("receive:local-file", src.root.join("x1"));
    let s = sync(&src, &dst, &ctl).unwrap();
    assert!(hit.load(Ordering::SeqCst));
    assert_eq!((s.unstable_count, s.local_bytes), (1, 100_000), "{s:?}");
    assert_eq!(
        fs::read(dst.root.join("x1")).unwrap(),
        fs::read(src.root.join("x1")).unwrap()
    );
    recorded_as_held_then_synced(&src, &dst);
    // Forced to stream (as between two servers), the same content goes through the stream.
    write(&src.root.join("x1"), &rng.bytes(100_000));
    let s = sync(&src, &dst, &Control::new().stream_only()).unwrap();
    assert_same_tree(&src.root, &dst.root);
    assert_eq!((s.local_bytes, s.content_bytes), (0, 100_000), "{s:?}");
}

fn sync_interrupted_anywhere(env: Env) {
    let src = env.source("src");
    let mut rng = Rng(1234);
    random_tree(&src.root, &mut rng, 30);
    let base = env.place("base");
    copy(&src, &base, &Control::new()).unwrap();
    random_changes(&src.root, &mut rng);
    // Count the failure points of this sync on a throwaway copy of the target.
    let probe_dst = env.place("probe");
    copy(&base, &probe_dst, &Control::new()).unwrap();
    fs::copy(base.manifest_path(), probe_dst.manifest_path()).unwrap();
    let (probe, count) = fail_at(usize::MAX);
    sync(&src, &probe_dst, &probe).unwrap();
    let points = count.load(Ordering::SeqCst);
    assert!(points > 10, "{points} failure points");
    for n in spread(points, 10) {
        let dst = env.place(&format!("dst{n}"));
        copy(&base, &dst, &Control::new()).unwrap();
        fs::copy(base.manifest_path(), dst.manifest_path()).unwrap();
        let before = snapshot_tree(&dst.root);
        let (ctl, _) = fail_at(n);
        assert!(sync(&src, &dst, &ctl).is_err(), "failure {n} took effect");
        let in_commit = dst.commit_marker().exists();
        if !in_commit {
            assert_eq!(
                snapshot_tree(&dst.root),
                before,
                "untouched before the commit (failure {n})"
            );
            assert!(
                !dst.work_dir().exists(),
                "staged content rolled back (failure {n})"
            );
        }
        let s = sync(&src, &dst, &Control::new()).unwrap();
        assert_eq!(s.recovered, in_commit);
        assert_same_tree(&src.root, &dst.root);
        no_debris(&dst);
    }
}

#[test]
fn a_resumed_copy_whose_tree_was_already_committed_brings_it_up_to_date() {
    let env = Env::new();
    let (src, dst) = (env.place("src"), env.place("dst"));
    random_tree(&src.root, &mut Rng(21), 20);
    resume_copy(&src, &dst, &[], &Control::new()).unwrap();
    // The process stopped after the commit, before its job was recorded; meanwhile the
    // source changed. Run again, the copy is not refused: it is synced.
    random_changes(&src.root, &mut Rng(22));
    let s = resume_copy(&src, &dst, &[], &Control::new()).unwrap();
    assert!(
        s.files_added + s.files_changed + s.files_deleted > 0,
        "{s:?}"
    );
    assert_same_tree(&src.root, &dst.root);
    no_debris(&dst);
    // A plain copy onto it is still refused.
    assert!(matches!(
        copy(&src, &dst, &Control::new()),
        Err(EngineError::Refused(_))
    ));
}

#[test]
fn after_a_sync_the_recorded_state_matches_the_disk_so_the_next_scan_reads_nothing() {
    let env = Env::new();
    let (src, dst) = (env.place("src"), env.place("dst"));
    fs::create_dir_all(&src.root).unwrap();
    for name in ["a", "c", "plain"] {
        write(&src.root.join(name), name.as_bytes());
    }
    fs::hard_link(src.root.join("a"), src.root.join("b")).unwrap();
    for name in [
        "added/x",
        "removed/x",
        "replaced/x",
        "kept/x",
        "kept/deeper/x",
    ] {
        write(&src.root.join(name), name.as_bytes());
    }
    copy(&src, &dst, &Control::new()).unwrap();
    // Unlinking one name of an inode, or linking a new one, moves the other names' ctime.
    fs::remove_file(src.root.join("b")).unwrap();
    fs::hard_link(src.root.join("c"), src.root.join("e")).unwrap();
    write(&src.root.join("plain"), b"changed");
    // Entries added, removed or replaced move their directory's ctime; `kept` stays as is.
    write(&src.root.join("added/y"), b"new");
    fs::remove_file(src.root.join("removed/x")).unwrap();
    fs::remove_file(src.root.join("replaced/x")).unwrap();
    fs::create_dir(src.root.join("replaced/x")).unwrap();
    sync(&src, &dst, &Control::new()).unwrap();
    assert_same_tree(&src.root, &dst.root);
    let recorded = dst.load_manifest().unwrap().unwrap();
    for e in recorded
        .entries
        .iter()
        .filter(|e| matches!(e.kind, Kind::File | Kind::Dir))
    {
        let st = fs::symlink_metadata(dst.root.join(std::ffi::OsStr::from_bytes(&e.path))).unwrap();
        let ctime = st.ctime() * 1_000_000_000 + st.ctime_nsec();
        assert_eq!(
            (e.ino, e.ctime_ns),
            (st.ino(), ctime),
            "{}: the quick-check data recorded after the sync is stale",
            e.display_path()
        );
    }
}

#[test]
fn cancelling_a_copy_leaves_nothing_behind() {
    let env = Env::new();
    let (src, dst) = (env.place("src"), env.place("dst"));
    random_tree(&src.root, &mut Rng(3), 40);
    let ctl = Control::new();
    let flag = ctl.cancel_flag();
    let ctl = ctl.with_progress(move |p| {
        if p.phase == Phase::Transfer && p.files_done > 5 {
            flag.store(true, Ordering::Relaxed);
        }
    });
    // Progress is throttled; cancel directly too, in case no report came mid-transfer.
    let ctl2 = ctl.clone();
    let (_c, count) = fail_at(usize::MAX);
    let _ = count;
    let ctl = ctl.with_failpoint(move |point| {
        if point == "receive:file" {
            ctl2.cancel();
        }
        Ok(())
    });
    assert!(matches!(
        copy(&src, &dst, &ctl),
        Err(EngineError::Cancelled)
    ));
    assert!(!dst.root.exists());
    assert!(!dst.work_dir().exists());
}

#[test]
fn verify_finds_corruption() {
    let env = Env::new();
    let (src, dst) = (env.place("src"), env.place("dst"));
    random_tree(&src.root, &mut Rng(8), 10);
    copy(&src, &dst, &Control::new()).unwrap();
    assert!(verify(&dst, &Control::new()).unwrap().ok);
    let victim = snapshot_tree(&dst.root)
        .into_iter()
        .find(|(_, n)| matches!(n, Node::File { len, .. } if *len > 0))
        .unwrap()
        .0;
    let path = dst.root.join(&victim);
    let mtime = fs::metadata(&path).unwrap().modified().unwrap();
    let mut content = fs::read(&path).unwrap();
    content[0] ^= 0xff;
    fs::write(&path, content).unwrap();
    fs::File::open(&path).unwrap().set_modified(mtime).unwrap();
    let report = verify(&dst, &Control::new()).unwrap();
    assert!(!report.ok);
    assert_eq!(report.differences, [victim.to_string_lossy().to_string()]);
}

#[test]
fn a_first_copy_takes_what_the_target_server_already_holds_and_nothing_stale() {
    let env = Env::new();
    let (src, first, second) = (env.place("src"), env.place("first"), env.place("second"));
    let mut rng = Rng(21);
    random_tree(&src.root, &mut rng, 30);
    let unique = rng.bytes(70_000);
    write(&src.root.join("unique.bin"), &unique);
    copy(&src, &first, &Control::new()).unwrap();
    // The first copy's version of one file changes after its manifest was recorded: it is
    // no longer offered, so that file is sent.
    write(&first.root.join("unique.bin"), b"changed on the first copy");

    let s = copy_reusing(
        &src,
        &second,
        std::slice::from_ref(&first),
        &Control::new().stream_only(),
    )
    .unwrap();
    assert_same_tree(&src.root, &second.root);
    no_debris(&second);
    assert_eq!(s.content_bytes, unique.len() as u64, "{s:?}");
    assert!(s.reused_bytes > 0, "{s:?}");
    assert_eq!(s.reused_bytes + s.content_bytes, s.tree_bytes, "{s:?}");
}

/// Set in a child process (this test binary, run again) to make it perform one engine
/// operation: `copy:<base dir>` or `sync:<base dir>`.
const CHILD_OP: &str = "DOPPEL_ENGINE_TEST_CHILD_OP";

/// Runs `op` on `<base>/roots/src` -> `<base>/roots/<dst>` in a child process; `kill_after`
/// kills it with SIGKILL after that long. Returns (whether it was killed before it ended,
/// how long it ran).
fn run_child(op: &str, base: &Path, dst: &str, kill_after: Option<Duration>) -> (bool, Duration) {
    use std::process::{Command, Stdio};
    let started = std::time::Instant::now();
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "engine::tests::copies_and_syncs_killed_at_any_moment_converge_when_run_again",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_OP, format!("{op}:{dst}:{}", base.display()))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    if let Some(after) = kill_after {
        std::thread::sleep(after);
        let _ = child.kill(); // SIGKILL; fails only if it already ended
    }
    let status = child.wait().unwrap();
    let killed = std::os::unix::process::ExitStatusExt::signal(&status) == Some(9);
    assert!(killed || status.success(), "the child failed: {status:?}");
    (killed, started.elapsed())
}

/// The issue's crash test with a real kill: copies and syncs killed with SIGKILL at spread
/// moments of their run (in a child process), then run again as a resumed job would: the
/// target ends equal to the source, with nothing temporary left.
#[test]
fn copies_and_syncs_killed_at_any_moment_converge_when_run_again() {
    if let Ok(spec) = std::env::var(CHILD_OP) {
        let mut parts = spec.splitn(3, ':');
        let (op, dst, base) = (
            parts.next().unwrap(),
            parts.next().unwrap(),
            parts.next().unwrap(),
        );
        let base = Path::new(base);
        run_op(op, &place_in(base, "src"), &place_in(base, dst));
        return;
    }
    let env = Env::new();
    killed_at_any_moment(&env, &env.place("src"));
}

/// The same on btrfs, where the copies are subvolumes and a sync stages inside its copy.
#[test]
fn copies_and_syncs_into_btrfs_subvolumes_killed_at_any_moment_converge() {
    let env = Env::on_btrfs();
    killed_at_any_moment(&env, &env.place("src"));
}

/// The same from an image tree on XFS: copies are clones of its image, mounted, moved into
/// place, and a sync stages inside its copy; whatever a kill leaves mounted is unmounted.
#[test]
fn copies_and_syncs_of_image_trees_killed_at_any_moment_converge() {
    let env = Env::with_xfs_images();
    killed_at_any_moment(&env, &env.source("src"));
    let roots = env.base.join("roots");
    let mounts = mounts_below(&env.base);
    assert!(mounts.iter().all(|m| m.starts_with(&roots)), "{mounts:?}");
}

fn killed_at_any_moment(env: &Env, src: &Place) {
    let src = src.clone();
    random_tree(&src.root, &mut Rng(77), 400);
    const ROUNDS: u32 = 6;
    // Copies into fresh targets, then syncs of those copies after a change.
    for op in ["copy", "sync"] {
        if op == "sync" {
            random_changes(&src.root, &mut Rng(78));
        }
        // How long a whole run takes here, child start included: kills are spread over it.
        // (The shorter of two: a first copy leaves the source's quick-check cache behind,
        // and the copies after it take less.)
        let whole = ["timing", "timing-2"]
            .map(|dst| run_child(op, &env.base, dst, None).1)
            .into_iter()
            .min()
            .unwrap();
        let mut interrupted = 0;
        for round in 0..ROUNDS {
            let dst = format!("copy{round}");
            let at = whole * (2 * round + 1) / (2 * ROUNDS);
            interrupted += u32::from(run_child(op, &env.base, &dst, Some(at)).0);
            // Run again, as a resumed job would.
            let dst = env.place(&dst);
            run_op(op, &src, &dst);
            assert_same_tree(&src.root, &dst.root);
            no_debris(&dst);
        }
        println!("{op}: {interrupted} of {ROUNDS} kills landed inside (a whole run: {whole:?})");
        assert!(interrupted > 0, "no kill landed inside a {op}");
    }
}

/// The operation the crash test kills and runs again, as the job runner runs it.
fn run_op(op: &str, src: &Place, dst: &Place) {
    match op {
        "copy" => resume_copy(src, dst, &[], &Control::new()).map(drop),
        // A conversion's final pass, the tree `dst` (its first pass done).
        "finish" => convert::finish_stopped(dst, 1 << 30, &Control::new()).map(drop),
        _ => sync(src, dst, &Control::new()).map(drop),
    }
    .unwrap();
}

/// `levels` nested directories `d/d/...` under `root`, with a file at the bottom; made one
/// level at a time from the last directory's descriptor (no path is ever that long).
fn deep_tree(root: &Path, levels: usize) {
    fs::create_dir_all(root).unwrap();
    let mut dir = fsx::open_dir(root).unwrap();
    for _ in 0..levels {
        fsx::mkdir_at(dir.as_fd(), b"d").unwrap();
        dir = fsx::open_dir_at(dir.as_fd(), b"d").unwrap();
    }
    use std::io::Write as _;
    let mut f = fsx::create_file_at(dir.as_fd(), b"bottom").unwrap();
    f.write_all(b"the end").unwrap();
}

#[test]
fn a_tree_deeper_than_the_limit_fails_cleanly_and_is_removed_without_recursion() {
    let env = Env::on_own_ext4();
    let (src, dst) = (env.place("src"), env.place("dst"));
    // 100,000 levels: a recursive walk on a 2 MiB thread overflows its stack (and aborts
    // the process) long before the bottom.
    deep_tree(&src.root, 100_000);
    // Removed even if an assertion fails (the temp dir's own removal recurses).
    struct Remove(PathBuf);
    impl Drop for Remove {
        fn drop(&mut self) {
            if let Ok(parent) = fsx::open_dir(self.0.parent().unwrap()) {
                let _ = fsx::remove_at(parent.as_fd(), self.0.file_name().unwrap().as_bytes());
            }
        }
    }
    let _cleanup = Remove(src.root.clone());
    let err = scan::scan(&src.root, None, true, &Control::new()).unwrap_err();
    assert!(matches!(err, EngineError::Refused(_)), "{err}");
    let msg = err.to_string();
    assert!(
        msg.contains(&format!("more than {} directories deep", scan::MAX_DEPTH)),
        "{msg}"
    );
    assert!(msg.len() < 1000, "the error names the path in short: {msg}");
    let err = copy(&src, &dst, &Control::new()).unwrap_err();
    assert!(matches!(err, EngineError::Refused(_)), "{err}");
    assert!(!dst.root.exists());
    no_debris(&dst);
    // Removing it keeps a bounded number of directories open, and leaves nothing behind.
    let parent = fsx::open_dir(src.root.parent().unwrap()).unwrap();
    fsx::remove_at(parent.as_fd(), b"src").unwrap();
    assert!(!src.root.exists());
    assert_eq!(fs::read_dir(src.root.parent().unwrap()).unwrap().count(), 0);
}

#[test]
fn a_tree_just_within_the_depth_limit_copies_and_syncs() {
    let env = Env::on_own_ext4();
    let (src, dst) = (env.place("src"), env.place("dst"));
    deep_tree(&src.root, scan::MAX_DEPTH - 1);
    copy(&src, &dst, &Control::new()).unwrap();
    assert_same_tree(&src.root, &dst.root);
    // One more level on the source: the sync is refused and the copy stays as it was.
    let bottom = (0..scan::MAX_DEPTH - 1).fold(src.root.clone(), |p, _| p.join("d"));
    fs::create_dir(bottom.join("d")).unwrap();
    let err = sync(&src, &dst, &Control::new()).unwrap_err();
    assert!(matches!(err, EngineError::Refused(_)), "{err}");
    fs::remove_dir(bottom.join("d")).unwrap();
    assert_same_tree(&src.root, &dst.root);
    no_debris(&dst);
}

#[test]
fn summaries_list_a_bounded_number_of_paths_and_count_them_all() {
    let env = Env::new();
    let (src, dst) = (env.place("src"), env.place("dst"));
    fs::create_dir_all(&src.root).unwrap();
    let n = scan::LISTED_PATHS * 3;
    // Sockets are recorded, not copied: each one is a path in the summary.
    let _sockets: Vec<_> = (0..n)
        .map(|i| std::os::unix::net::UnixListener::bind(src.root.join(format!("s{i}"))).unwrap())
        .collect();
    let s = copy(&src, &dst, &Control::new()).unwrap();
    assert_eq!(s.skipped_special.len(), scan::LISTED_PATHS);
    assert_eq!(s.skipped_special_count, n as u64);
    let s = sync(&src, &dst, &Control::new()).unwrap();
    assert_eq!(s.skipped_special.len(), scan::LISTED_PATHS);
    assert_eq!(s.skipped_special_count, n as u64);
    let json = serde_json::to_string(&s).unwrap();
    assert!(json.len() < 10_000, "{} bytes", json.len());
}

#[test]
fn concurrent_stores_of_one_manifest_never_leave_a_torn_file() {
    let env = Env::new();
    let (a, b) = (env.place("a"), env.place("b"));
    random_tree(&a.root, &mut Rng(1), 200);
    random_tree(&b.root, &mut Rng(2), 20);
    let (ma, _) = scan::scan(&a.root, None, true, &Control::new()).unwrap();
    let (mb, _) = scan::scan(&b.root, None, true, &Control::new()).unwrap();
    let path = env.base.join("state/x/manifest");
    ma.store(&path).unwrap();
    let path = path.as_path();
    std::thread::scope(|s| {
        for m in [&ma, &mb] {
            s.spawn(move || {
                for _ in 0..100 {
                    m.store(path).unwrap();
                }
            });
        }
        s.spawn(|| {
            for _ in 0..200 {
                let got = Manifest::load(path).unwrap().unwrap();
                assert!(got == ma || got == mb, "a torn manifest");
            }
        });
    });
    // No temp files left behind.
    assert_eq!(fs::read_dir(path.parent().unwrap()).unwrap().count(), 1);
}

#[test]
fn opening_a_file_never_opens_what_is_not_a_regular_file() {
    let env = Env::new();
    fs::create_dir_all(&env.base).unwrap();
    let fifo = env.base.join("p");
    let dir = fsx::open_dir(&env.base).unwrap();
    fsx::mkfifo_at(dir.as_fd(), b"p").unwrap();
    // A writer blocks until someone opens the FIFO for reading: opening it is observable.
    let writer = {
        let fifo = fifo.clone();
        std::thread::spawn(move || fs::OpenOptions::new().write(true).open(fifo).map(drop))
    };
    std::thread::sleep(Duration::from_millis(100));
    let err = fsx::open_file_at(dir.as_fd(), b"p").unwrap_err();
    assert!(fsx::is_gone(&err), "refused as not a regular file: {err}");
    std::thread::sleep(Duration::from_millis(200));
    assert!(!writer.is_finished(), "the FIFO was opened");
    drop(fs::File::open(&fifo).unwrap());
    writer.join().unwrap().unwrap();
}

#[test]
fn times_past_2262_are_clamped_not_wrapped() {
    let env = Env::new();
    let (src, dst) = (env.place("src"), env.place("dst"));
    fs::create_dir_all(&src.root).unwrap();
    write(&src.root.join("future"), b"x");
    let f = fs::File::options()
        .write(true)
        .open(src.root.join("future"))
        .unwrap();
    // 2300-01-01.
    let t = SystemTime::UNIX_EPOCH + Duration::from_secs(10_413_792_000);
    f.set_modified(t).unwrap();
    let s = copy(&src, &dst, &Control::new()).unwrap();
    assert_eq!(s.tree_files, 1);
    let m = Manifest::load(&dst.manifest_path()).unwrap().unwrap();
    let e = m.entries.iter().find(|e| e.path == b"future").unwrap();
    assert_eq!(e.mtime_ns, i64::MAX, "clamped");
    sync(&src, &dst, &Control::new()).unwrap();
}

#[test]
fn a_sync_never_writes_through_a_hard_link_to_outside_the_tree() {
    let env = Env::new();
    let (src, dst) = (env.place("src"), env.place("dst"));
    fs::create_dir_all(&src.root).unwrap();
    // Large enough to be patched in place rather than replaced.
    let mut data: Vec<u8> = (0..(4u32 << 20))
        .map(|i| (i.wrapping_mul(2654435761) >> 7) as u8)
        .collect();
    write(&src.root.join("big"), &data);
    copy(&src, &dst, &Control::new()).unwrap();
    // Someone links the copy's file from outside the tree.
    let outside = env.base.join("outside");
    fs::hard_link(dst.root.join("big"), &outside).unwrap();
    let before = fs::read(&outside).unwrap();
    data[1 << 20..(1 << 20) + 10].copy_from_slice(b"0123456789");
    write(&src.root.join("big"), &data);
    let s = sync(&src, &dst, &Control::new()).unwrap();
    assert_eq!(s.files_changed, 1);
    assert_eq!(fs::read(dst.root.join("big")).unwrap(), data);
    assert_eq!(
        fs::read(&outside).unwrap(),
        before,
        "the outside name is untouched"
    );
    assert_eq!(fs::metadata(dst.root.join("big")).unwrap().nlink(), 1);
    assert_same_tree(&src.root, &dst.root);
}

/// A root filesystem's identity files, as a source would have them.
fn machine(root: &Path) {
    for (path, content) in [
        ("etc/hostname", "source\n"),
        ("etc/machine-id", "0123456789abcdef0123456789abcdef\n"),
        ("etc/ssh/ssh_host_ed25519_key", "source ed25519 private\n"),
        (
            "etc/ssh/ssh_host_ed25519_key.pub",
            "source ed25519 public\n",
        ),
        ("etc/ssh/ssh_host_rsa_key", "source rsa private\n"),
        ("etc/ssh/sshd_config", "PermitRootLogin prohibit-password\n"),
        (
            "root/.ssh/authorized_keys",
            "ssh-ed25519 AAAA source-admin\n",
        ),
        ("var/www/index.html", "<h1>hello</h1>\n"),
    ] {
        write(&root.join(path), content.as_bytes());
    }
}

const KEY: &str =
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl copy@test";

#[test]
fn a_copy_is_a_new_machine_and_a_sync_keeps_its_identity() {
    let env = Env::new();
    let (src, dst) = (env.place("src"), env.place("dst"));
    machine(&src.root);
    copy(&src, &dst, &Control::new()).unwrap();
    let id = identity::Identity {
        hostname: "web-copy",
        ssh_public_key: Some(KEY),
    };
    let written = identity::make_new_machine(&dst, &id).unwrap().written;
    assert_eq!(written.len(), 7, "{written:?}");
    let read = |p: &str| fs::read_to_string(dst.root.join(p)).unwrap();
    assert_eq!(read("etc/hostname"), "web-copy\n");
    let machine_id = read("etc/machine-id");
    assert_eq!(machine_id.trim().len(), 32);
    assert_ne!(machine_id, "0123456789abcdef0123456789abcdef\n");
    let ed = ssh_key::PrivateKey::from_openssh(read("etc/ssh/ssh_host_ed25519_key")).unwrap();
    assert_eq!(ed.algorithm(), ssh_key::Algorithm::Ed25519);
    let rsa = ssh_key::PrivateKey::from_openssh(read("etc/ssh/ssh_host_rsa_key")).unwrap();
    assert!(matches!(rsa.algorithm(), ssh_key::Algorithm::Rsa { .. }));
    assert!(read("etc/ssh/ssh_host_ed25519_key.pub").starts_with("ssh-ed25519 "));
    let mode = fs::metadata(dst.root.join("etc/ssh/ssh_host_rsa_key"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    assert!(
        !dst.root.join("etc/ssh/ssh_host_ecdsa_key").exists(),
        "only the types the tree had"
    );
    assert_eq!(read("root/.ssh/authorized_keys"), format!("{KEY}\n"));
    assert_eq!(
        read("etc/ssh/sshd_config"),
        "PermitRootLogin prohibit-password\n"
    );
    // The recorded state includes them: no drift on the next sync.
    let identity_now = || {
        [
            "etc/hostname",
            "etc/machine-id",
            "etc/ssh/ssh_host_rsa_key",
            "root/.ssh/authorized_keys",
        ]
        .map(read)
    };
    let before = identity_now();
    // The source changes, its identity too: a sync brings the rest, keeps the copy's own.
    write(&src.root.join("var/www/index.html"), b"<h1>changed</h1>\n");
    write(&src.root.join("etc/hostname"), b"renamed-source\n");
    write(
        &src.root.join("root/.ssh/authorized_keys"),
        b"ssh-ed25519 AAAA another-admin\n",
    );
    let s = sync_keeping(&src, &dst, &identity::is_identity_path, &Control::new()).unwrap();
    assert_eq!(read("var/www/index.html"), "<h1>changed</h1>\n");
    let after = identity_now();
    assert_eq!(after, before, "the copy's identity is kept");
    assert_eq!(s.drift, 0, "{s:?}");
    assert_eq!(s.files_changed, 1, "only the page: {s:?}");
    assert!(
        s.identity_files
            .iter()
            .any(|p| p.contains("authorized_keys")),
        "{s:?}"
    );
    assert!(verify(&dst, &Control::new()).unwrap().ok);
    // Without a key, root may not log in at all.
    let (src2, dst2) = (env.place("src2"), env.place("dst2"));
    machine(&src2.root);
    copy(&src2, &dst2, &Control::new()).unwrap();
    let none = identity::Identity {
        hostname: "no-key",
        ssh_public_key: None,
    };
    identity::make_new_machine(&dst2, &none).unwrap();
    assert!(!dst2.root.join("root/.ssh/authorized_keys").exists());
}

#[test]
fn a_copy_s_identity_is_never_written_through_a_symlink() {
    let env = Env::new();
    let dst = env.place("dst");
    let outside = env.base.join("outside-etc");
    fs::create_dir_all(&outside).unwrap();
    write(&outside.join("hostname"), b"host\n");
    fs::create_dir_all(&dst.root).unwrap();
    symlink(&outside, dst.root.join("etc")).unwrap();
    let id = identity::Identity {
        hostname: "x",
        ssh_public_key: Some(KEY),
    };
    let made = identity::make_new_machine(&dst, &id).unwrap();
    assert!(made.written.is_empty(), "{:?}", made.written);
    assert_eq!(fs::read(outside.join("hostname")).unwrap(), b"host\n");
    assert!(
        made.notes[0].starts_with("etc is a symlink"),
        "{:?}",
        made.notes
    );

    // Identity files that are links (here to files of the tree): replaced by the copy's
    // own, the files they led to left as they were.
    let inside = env.place("inside");
    machine(&inside.root);
    let etc = inside.root.join("etc");
    fs::rename(etc.join("machine-id"), etc.join("machine-id.real")).unwrap();
    symlink("machine-id.real", etc.join("machine-id")).unwrap();
    fs::rename(etc.join("hostname"), etc.join("hostname.real")).unwrap();
    symlink("hostname.real", etc.join("hostname")).unwrap();
    let made = identity::make_new_machine(&inside, &id).unwrap();
    assert!(
        made.written.contains(&"etc/machine-id".to_string()),
        "{:?}",
        made.written
    );
    let read = |p: &str| fs::read_to_string(inside.root.join(p)).unwrap();
    assert!(!fs::symlink_metadata(etc.join("machine-id"))
        .unwrap()
        .is_symlink());
    assert_ne!(read("etc/machine-id"), read("etc/machine-id.real"));
    assert_eq!(
        read("etc/machine-id.real"),
        "0123456789abcdef0123456789abcdef\n"
    );
    assert_eq!(read("etc/hostname"), "x\n");
    assert_eq!(read("etc/hostname.real"), "source\n");

    // root/.ssh a link: a key asked for is refused (it would have no place of its own);
    // without one, a note says whose keys are there.
    let home = inside.root.join("root");
    fs::rename(home.join(".ssh"), home.join("ssh.real")).unwrap();
    symlink("ssh.real", home.join(".ssh")).unwrap();
    write(
        &home.join("ssh.real/authorized_keys"),
        b"ssh-ed25519 AAAA source-admin\n",
    );
    let refused = identity::make_new_machine(&inside, &id).err().unwrap();
    assert!(
        refused.to_string().contains("root/.ssh is a symlink"),
        "{refused}"
    );
    assert_eq!(
        read("root/ssh.real/authorized_keys"),
        "ssh-ed25519 AAAA source-admin\n",
        "nothing written through it"
    );
    let none = identity::Identity {
        hostname: "x",
        ssh_public_key: None,
    };
    let made = identity::make_new_machine(&inside, &none).unwrap();
    assert!(
        made.notes
            .iter()
            .any(|n| n.starts_with("root/.ssh is a symlink")),
        "{:?}",
        made.notes
    );
}

/// The two halves of a copy or sync between processes, here two threads joined by a real
/// socket (a Unix socket pair): the source's half on one end, the target's on the other.
fn across<S: Send, T: Send>(
    source: impl FnOnce(&mut dyn Duplex) -> S + Send,
    target: impl FnOnce(&mut dyn Duplex) -> T + Send,
) -> (S, T) {
    let (a, b) = std::os::unix::net::UnixStream::pair().unwrap();
    std::thread::scope(|s| {
        let t = s.spawn(move || target(&mut Peer::new(b)));
        let out = source(&mut Peer::new(a));
        (out, t.join().unwrap())
    })
}

#[test]
fn copies_and_syncs_between_two_ends_of_a_connection_reach_equality() {
    let keep_identity = &identity::is_identity_path;
    for seed in [5u64, 11] {
        let env = Env::new();
        let (src, dst) = (env.place("src"), env.place("dst"));
        let mut rng = Rng(seed * 104_729);
        random_tree(&src.root, &mut rng, 40);
        let (sent, received) = across(
            |c| send_copy_to(&src, c, None, &Control::new()),
            |c| receive_copy_from(&dst, c, &Control::new()),
        );
        let (sent, received) = (sent.unwrap(), received.unwrap());
        assert_same_tree(&src.root, &dst.root);
        no_debris(&dst);
        assert_eq!(sent.root_hash, received.root_hash);
        assert!(sent.bytes_sent > 0 && sent.tree_files > 0, "{sent:?}");
        let peer = env.base.join("peer");
        let sync_across = || {
            across(
                |c| send_sync_to(&src, c, keep_identity, Some(&peer), &Control::new()),
                |c| receive_sync_from(&dst, c, keep_identity, &Control::new()),
            )
        };
        for round in 0..3 {
            random_changes(&src.root, &mut rng);
            let (sent, received) = sync_across();
            let sent = sent.unwrap_or_else(|e| panic!("seed {seed} round {round}: {e}"));
            received.unwrap();
            assert_same_tree(&src.root, &dst.root);
            no_debris(&dst);
            assert!(sent.files_added + sent.files_changed + sent.files_deleted > 0);
            assert_eq!(sent.source_root_hash, sent.root_hash, "{sent:?}");
        }
        // Nothing changed: no content crosses, and what does is small (two manifests).
        let (sent, _) = sync_across();
        let sent = sent.unwrap();
        assert_eq!(
            (sent.bytes_sent, sent.content_bytes, sent.files_changed),
            (0, 0, 0)
        );
        // Changes on the copy are drift, reported by the target's half, and undone.
        write(&dst.root.join("a/edited-on-the-copy"), b"x");
        let (sent, _) = sync_across();
        assert_eq!(sent.unwrap().drift, 1);
        assert_same_tree(&src.root, &dst.root);
    }
}

#[test]
fn a_half_that_fails_ends_both_cleanly_and_leaves_no_tree() {
    let env = Env::new();
    let (src, dst) = (env.place("src"), env.place("dst"));
    random_tree(&src.root, &mut Rng(17), 40);
    // The source stops before it sends a thing (cancelled): the target lays nothing down.
    let ctl = Control::new();
    ctl.cancel();
    let (sent, received) = across(
        |c| send_copy_to(&src, c, None, &ctl),
        |c| receive_copy_from(&dst, c, &Control::new()),
    );
    assert!(matches!(sent, Err(EngineError::Cancelled)), "{sent:?}");
    assert!(received.is_err());
    assert!(!dst.root.exists());
    no_debris(&dst);
    // The target fails mid-transfer (its fifth file): the source, still sending, is not
    // left blocked, and learns why; nothing is laid down.
    let (failing, _) = fail_at(5);
    let (sent, received) = across(
        |c| send_copy_to(&src, c, None, &Control::new()),
        |c| receive_copy_from(&dst, c, &failing),
    );
    let err = sent.unwrap_err().to_string();
    assert!(err.contains("the target server"), "{err}");
    assert!(received.is_err());
    assert!(!dst.root.exists());
    no_debris(&dst);
    // The target refuses (its tree exists): the source learns why, from the target.
    fs::create_dir_all(&dst.root).unwrap();
    let (sent, received) = across(
        |c| send_copy_to(&src, c, None, &Control::new()),
        |c| receive_copy_from(&dst, c, &Control::new()),
    );
    let err = sent.unwrap_err().to_string();
    assert!(
        err.contains("the target server") && err.contains("already exists"),
        "{err}"
    );
    assert!(received.is_err());
    // A sync's target that fails verification: its reply says so, the source reports it.
    let missing = env.place("missing");
    let (sent, _) = across(
        |c| send_sync_to(&src, c, &|_| false, None, &Control::new()),
        |c| receive_sync_from(&missing, c, &|_| false, &Control::new()),
    );
    let err = sent.unwrap_err().to_string();
    assert!(err.contains("does not exist"), "{err}");
}

/// One end of a real connection that counts what crosses it (both ways), and breaks, both
/// ends seeing it go, once `left` bytes were written.
struct Wire<'a> {
    inner: std::os::unix::net::UnixStream,
    left: usize,
    bytes: &'a AtomicUsize,
}

impl std::io::Read for Wire<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = std::io::Read::read(&mut self.inner, buf)?;
        self.bytes.fetch_add(n, Ordering::Relaxed);
        Ok(n)
    }
}

impl std::io::Write for Wire<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if self.left == 0 {
            let _ = self.inner.shutdown(std::net::Shutdown::Both);
            return Err(std::io::ErrorKind::BrokenPipe.into());
        }
        let n = buf.len().min(self.left);
        let n = std::io::Write::write(&mut self.inner, &buf[..n])?;
        self.left -= n;
        self.bytes.fetch_add(n, Ordering::Relaxed);
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        std::io::Write::flush(&mut self.inner)
    }
}

#[test]
fn a_copy_cut_off_half_way_resumes_from_what_arrived() {
    let env = Env::new();
    let (src, dst) = (env.place("src"), env.place("dst"));
    random_tree(&src.root, &mut Rng(23), 60);
    let total: u64 = snapshot_tree(&src.root)
        .values()
        .map(|n| match n {
            Node::File { len, .. } => *len,
            _ => 0,
        })
        .sum();
    // The source's connection breaks after about half the tree.
    let (a, b) = std::os::unix::net::UnixStream::pair().unwrap();
    let (sent, received) = std::thread::scope(|s| {
        let t = s.spawn(|| receive_copy_from(&dst, &mut Peer::new(b), &Control::new()));
        let bytes = AtomicUsize::new(0);
        let mut cut = Wire {
            inner: a,
            left: total as usize / 2,
            bytes: &bytes,
        };
        let sent = send_copy_to(&src, &mut Peer::new(&mut cut), None, &Control::new());
        drop(cut);
        (sent, t.join().unwrap())
    });
    assert!(
        matches!(sent, Err(EngineError::Disconnected { .. })),
        "{sent:?}"
    );
    assert!(
        matches!(received, Err(EngineError::Disconnected { .. })),
        "{received:?}"
    );
    assert!(!dst.root.exists(), "nothing is visible before it is whole");
    // The next attempt sends only the rest, and the copy is exact.
    let (sent, received) = across(
        |c| send_copy_to(&src, c, None, &Control::new()),
        |c| receive_copy_from(&dst, c, &Control::new()),
    );
    let (sent, _) = (sent.unwrap(), received.unwrap());
    assert_same_tree(&src.root, &dst.root);
    no_debris(&dst);
    assert!(
        sent.content_bytes < total * 3 / 4,
        "{} of {total} bytes sent again",
        sent.content_bytes
    );
    assert!(
        sent.notes.iter().any(|n| n.contains("resumed")),
        "{:?}",
        sent.notes
    );
}

#[test]
fn manifests_cross_between_hosts_as_changes_of_the_state_both_sides_agreed_on() {
    let env = Env::new();
    let (src, dst) = (env.place("src"), env.place("dst"));
    random_tree(&src.root, &mut Rng(31), 200);
    let peer = env.base.join("peer");
    let no_op = |peer: Option<&Path>| -> (Summary, usize) {
        let bytes = AtomicUsize::new(0);
        let (a, b) = std::os::unix::net::UnixStream::pair().unwrap();
        let (sent, received) = std::thread::scope(|s| {
            let t =
                s.spawn(|| receive_sync_from(&dst, &mut Peer::new(b), &|_| false, &Control::new()));
            let mut counted = Wire {
                inner: a,
                left: usize::MAX,
                bytes: &bytes,
            };
            let sent = send_sync_to(
                &src,
                &mut Peer::new(&mut counted),
                &|_| false,
                peer,
                &Control::new(),
            );
            (sent, t.join().unwrap())
        });
        received.unwrap();
        (sent.unwrap(), bytes.load(Ordering::Relaxed))
    };
    let (sent, received) = across(
        |c| send_copy_to(&src, c, Some(&peer), &Control::new()),
        |c| receive_copy_from(&dst, c, &Control::new()),
    );
    sent.unwrap();
    received.unwrap();
    // Both ends agree on the state the copy left: a sync with nothing to do sends no
    // manifest, only a few hundred bytes.
    let (s, first) = no_op(Some(&peer));
    assert_eq!(s.files_changed + s.files_added + s.files_deleted, 0);
    assert!(first < 2048, "{first} bytes for a sync with nothing to do");
    // A source without its copy of that state gets the whole manifest (compressed as it
    // crosses, as every large message is).
    let manifest = dst.load_manifest().unwrap().unwrap().encode();
    let packed = zstd::bulk::compress(&manifest, 1).unwrap().len();
    let (_, without) = no_op(None);
    assert!(
        without > packed,
        "{without} bytes for a manifest of {} ({packed} compressed)",
        manifest.len()
    );
    // A change on the target crosses as a change, and is undone.
    write(&dst.root.join("a/drifted"), b"x");
    let (s, after_drift) = no_op(Some(&peer));
    assert_eq!(s.drift, 1);
    assert!(
        after_drift < 4096,
        "{after_drift} bytes after one file of drift"
    );
    assert_same_tree(&src.root, &dst.root);
    // A changed source: only the changes and the state's delta cross, not the manifest.
    write(&src.root.join("a/new-at-the-source"), &[7u8; 10_000]);
    let (s, changed) = no_op(Some(&peer));
    assert_eq!(s.files_added, 1);
    assert!(
        changed < 10_000 + 4096,
        "{changed} bytes for one new 10 kB file"
    );
    assert_same_tree(&src.root, &dst.root);
}

/// A tree of `files` files of `len` bytes each: text that compresses well, or random bytes
/// that do not compress at all.
fn tree_of(root: &Path, files: usize, len: usize, text: bool, rng: &mut Rng) -> u64 {
    fs::create_dir_all(root).unwrap();
    let words = [
        "container ",
        "copy ",
        "sync ",
        "server ",
        "doppel ",
        "host ",
        "tree ",
    ];
    for i in 0..files {
        let mut bytes = Vec::with_capacity(len);
        if text {
            while bytes.len() < len {
                let w = words[(rng.next_u64() % words.len() as u64) as usize];
                bytes.extend_from_slice(w.as_bytes());
                if rng.next_u64().is_multiple_of(9) {
                    bytes.extend_from_slice(format!("{}\n", rng.next_u64() % 1000).as_bytes());
                }
            }
            bytes.truncate(len);
        } else {
            bytes.resize(len, 0);
            rng.fill(&mut bytes);
        }
        write(&root.join(format!("f{i:03}")), &bytes);
    }
    (files * len) as u64
}

#[test]
fn between_hosts_content_is_compressed_when_that_pays_and_sent_as_it_is_when_not() {
    for text in [true, false] {
        let env = Env::new();
        let (src, dst) = (env.place("src"), env.place("dst"));
        let total = tree_of(&src.root, 24, 300_000, text, &mut Rng(41));
        let (sent, received) = across(
            |c| send_copy_to(&src, c, None, &Control::new()),
            |c| receive_copy_from(&dst, c, &Control::new()),
        );
        let (sent, _) = (sent.unwrap(), received.unwrap());
        assert_same_tree(&src.root, &dst.root);
        let wire = sent
            .wire_bytes
            .expect("a transfer between hosts counts its bytes");
        assert_eq!(sent.content_bytes, total);
        if text {
            assert!(wire < total / 3, "{wire} bytes crossed for {total} of text");
        } else {
            // Not compressed (nor expanded): the content, frames and manifest.
            assert!(
                wire > total && wire < total + total / 50,
                "{wire} bytes crossed for {total} random bytes"
            );
        }
        // A sync of a changed text file compresses too.
        if text {
            let mut changed = fs::read(src.root.join("f003")).unwrap();
            changed.reverse();
            write(&src.root.join("f003"), &changed);
            let (sent, _) = across(
                |c| send_sync_to(&src, c, &|_| false, None, &Control::new()),
                |c| receive_sync_from(&dst, c, &|_| false, &Control::new()),
            );
            let sent = sent.unwrap();
            assert_same_tree(&src.root, &dst.root);
            assert!(sent.wire_bytes.unwrap() < 300_000 / 2, "{sent:?}");
        }
    }
}

#[test]
fn a_bandwidth_limit_holds_a_transfer_to_its_rate() {
    // 3 MB at 1 MB/s (after a first half-megabyte burst) cannot take less than 2 s: between
    // hosts the sender paces what it puts on the connection, within one the receiver what
    // it writes.
    let limit = 1_000_000;
    let env = Env::new();
    let src = env.place("src");
    let total = tree_of(&src.root, 12, 250_000, false, &mut Rng(43));
    let dst = env.place("across");
    let started = Instant::now();
    let (sent, received) = across(
        |c| send_copy_to(&src, c, None, &Control::new().with_bwlimit(Some(limit))),
        |c| receive_copy_from(&dst, c, &Control::new()),
    );
    let took = started.elapsed();
    sent.unwrap();
    received.unwrap();
    assert_same_tree(&src.root, &dst.root);
    assert!(took >= Duration::from_secs(2), "{total} bytes in {took:?}");
    let dst = env.place("local");
    let started = Instant::now();
    copy(&src, &dst, &Control::new().with_bwlimit(Some(limit))).unwrap();
    let took = started.elapsed();
    assert_same_tree(&src.root, &dst.root);
    assert!(took >= Duration::from_secs(2), "{total} bytes in {took:?}");
}

#[test]
fn copies_within_one_filesystem_are_laid_down_by_the_kernel_and_read_at_most_once() {
    let env = Env::new();
    let (src, dst, again) = (env.place("src"), env.place("dst"), env.place("again"));
    random_tree(&src.root, &mut Rng(44), 60);
    let s = copy(&src, &dst, &Control::new()).unwrap();
    assert_same_tree(&src.root, &dst.root);
    no_debris(&dst);
    assert_eq!(s.content_bytes, 0, "nothing streamed: {s:?}");
    assert_eq!(s.kernel_bytes, s.tree_bytes, "{s:?}");
    assert_eq!(s.reused_bytes, 0, "{s:?}");
    assert!(
        s.notes
            .iter()
            .any(|n| n.contains("laid down by the kernel")),
        "{:?}",
        s.notes
    );
    assert!(verify(&dst, &Control::new()).unwrap().ok);
    // The copy is its own: writing it leaves the source as it was.
    let before = snapshot_tree(&src.root);
    let victim = before
        .iter()
        .find(|(_, n)| matches!(n, Node::File { len, .. } if *len > 0))
        .unwrap()
        .0
        .clone();
    write(&dst.root.join(&victim), b"written on the copy");
    assert_eq!(snapshot_tree(&src.root), before);

    // A source file that changes between the scan and its copy (a running container): the
    // copy holds it as copied, says it was unstable, and the next sync brings it up to date.
    let (ctl, hit) = changes_file_at("copy:kernel-file", src.root.join(&victim));
    let s = copy(&src, &again, &ctl).unwrap();
    assert!(hit.load(Ordering::SeqCst));
    assert_eq!(s.unstable_count, 1, "{s:?}");
    recorded_as_held_then_synced(&src, &again);
    // A sync on one filesystem takes changed files from the source by the kernel too.
    write(&src.root.join(&victim), &Rng(46).bytes(20_000));
    write(&src.root.join("new-at-the-source"), &Rng(47).bytes(30_000));
    let s = sync(&src, &again, &Control::new()).unwrap();
    assert_same_tree(&src.root, &again.root);
    assert!(s.kernel_bytes > 0 && s.content_bytes == 0, "{s:?}");
    assert!(verify(&again, &Control::new()).unwrap().ok);
}

/// A copy that shares extents with its source (`big.img`, holding `big`) is independent
/// both ways: writing the copy leaves the source as it was, and the other way round.
fn assert_independent(src: &Place, dst: &Place, big: &[u8]) {
    let f = fs::OpenOptions::new()
        .write(true)
        .open(dst.root.join("big.img"))
        .unwrap();
    std::os::unix::fs::FileExt::write_all_at(&f, b"copy", 1 << 20).unwrap();
    drop(f);
    assert_eq!(fs::read(src.root.join("big.img")).unwrap(), big);
    write(&src.root.join("big.img"), b"the source changed");
    assert_eq!(fs::read(dst.root.join("big.img")).unwrap()[..4], big[..4]);
}

/// A filesystem image of `kind` (`xfs` with reflink, `ext4` or `btrfs`) loop-mounted for a
/// test (the change watch sees the whole filesystem: a test of its own sees only its own
/// changes, none of other tests running meanwhile);
/// unmounted and removed when dropped, whatever the test did.
struct LoopFs {
    dir: tempfile::TempDir,
    mounted: bool,
}

impl LoopFs {
    fn new(kind: &str) -> LoopFs {
        LoopFs::mounted_with(kind, "loop", None)
    }

    /// Mounted `noatime`: reading a file changes nothing (on btrfs, an access time
    /// written is a change of the subvolume's tree, and moves its generation).
    fn noatime(kind: &str) -> LoopFs {
        LoopFs::mounted_with(kind, "loop,noatime", None)
    }

    /// `size`: bytes, where the default (2 GiB for ext4, else 512 MiB) is not enough.
    fn mounted_with(kind: &str, options: &str, size: Option<u64>) -> LoopFs {
        let dir = tempfile::tempdir().unwrap();
        let image = dir.path().join("image");
        let mnt = dir.path().join("mnt");
        fs::create_dir(&mnt).unwrap();
        // (Sparse: only what is written takes space. ext4 holds a tree of 100,000
        // directories: 400 MB of directory blocks, and an inode each.)
        let size = size.unwrap_or(if kind == "ext4" { 2 << 30 } else { 512 << 20 });
        fs::File::create(&image).unwrap().set_len(size).unwrap();
        let mkfs = match kind {
            "xfs" => std::process::Command::new("mkfs.xfs")
                .args(["-q", "-m", "reflink=1"])
                .arg(&image)
                .status(),
            "ext4" => std::process::Command::new("mkfs.ext4")
                .args(["-q", "-F", "-i", "8192"])
                .arg(&image)
                .status(),
            _ => std::process::Command::new("mkfs.btrfs")
                .arg("-q")
                .arg(&image)
                .status(),
        };
        assert!(
            mkfs.is_ok_and(|s| s.success()),
            "mkfs.{kind} (make setup-test installs it)"
        );
        let mut fs = LoopFs {
            dir,
            mounted: false,
        };
        let mount = std::process::Command::new("mount")
            .args(["-o", options])
            .arg(&image)
            .arg(&mnt)
            .status()
            .unwrap();
        assert!(mount.success(), "mounting a {kind} image needs root");
        fs.mounted = true;
        fs
    }

    fn root(&self) -> PathBuf {
        self.dir.path().join("mnt")
    }
}

impl Drop for LoopFs {
    fn drop(&mut self) {
        if self.mounted {
            // (A few times: a file a sync replaced may still be held, for a moment, by
            // the thread that frees it; then lazily, so nothing stays mounted.)
            // (Recursively: image trees are mounted inside.)
            let unmounted = (0..20).any(|_| {
                let ok = std::process::Command::new("umount")
                    .arg("-R")
                    .arg(self.root())
                    .status()
                    .is_ok_and(|s| s.success());
                if !ok {
                    std::thread::sleep(Duration::from_millis(50));
                }
                ok
            });
            if !unmounted {
                let _ = std::process::Command::new("umount")
                    .args(["-R", "-l"])
                    .arg(self.root())
                    .status();
            }
        }
    }
}

#[test]
fn reflinked_copies_share_extents_stay_independent_and_keep_every_property() {
    for kind in ["xfs", "btrfs"] {
        let lfs = LoopFs::new(kind);
        let base = lfs.root();
        let (src, dst) = (place_in(&base, "src"), place_in(&base, "dst"));
        let mut rng = Rng(45);
        random_tree(&src.root, &mut rng, 60);
        let big = rng.bytes(64 << 20);
        write(&src.root.join("big.img"), &big);
        // (Written out first: btrfs counts space it has not allocated yet late.)
        let used = || {
            fsx::syncfs(fsx::open_dir(&base).unwrap().as_fd()).unwrap();
            let (free, total) = fsx::free_space(&base).unwrap();
            total - free
        };
        let before = used();
        let s = copy(&src, &dst, &Control::new()).unwrap();
        assert_same_tree(&src.root, &dst.root);
        no_debris(&dst);
        assert!(
            s.notes.iter().any(|n| n.contains("shared extents")),
            "{kind}: {:?}",
            s.notes
        );
        assert_eq!(s.content_bytes, 0, "{kind}: {s:?}");
        // 64 MB more in the tree, a few MB more on the disk: the extents are shared.
        let grew = used().saturating_sub(before);
        assert!(grew < 16 << 20, "{kind}: the copy took {grew} bytes");
        // Independent both ways: writing either leaves the other as it was.
        assert_independent(&src, &dst, &big);
        assert!(verify(&src, &Control::new()).is_ok());
        // Syncs on the same filesystem converge, as everywhere.
        for _ in 0..3 {
            random_changes(&src.root, &mut rng);
            sync(&src, &dst, &Control::new()).unwrap();
            assert_same_tree(&src.root, &dst.root);
            no_debris(&dst);
        }
    }
}

/// Writes `data` into the file `name` of `p` at `at`, in place.
fn overwrite(p: &Place, name: &str, at: u64, data: &[u8]) {
    use std::os::unix::fs::FileExt;
    let f = fs::OpenOptions::new()
        .write(true)
        .open(p.root.join(name))
        .unwrap();
    f.write_all_at(data, at).unwrap();
}

/// Copies a tree holding a 32 MiB and an 8 MiB file, then syncs it after 1 MiB was written
/// in place in the middle of the first, and a few bytes into the second, both in the source
/// and in the copy (drift: the copy's recorded version of it is no twin). The sync's
/// summary, once the trees are checked equal.
fn sync_after_writes_in_place(src: &Place, dst: &Place, rng: &mut Rng) -> Summary {
    random_tree(&src.root, rng, 20);
    write(&src.root.join("big.img"), &rng.bytes(32 << 20));
    write(&src.root.join("other.img"), &rng.bytes(8 << 20));
    copy(src, dst, &Control::new()).unwrap();
    // (Not yet on disk: a scan must not take the extent the file still maps for the old
    // bytes.)
    overwrite(src, "big.img", 12 << 20, &rng.bytes(1 << 20));
    overwrite(dst, "other.img", 4 << 20, b"drift");
    overwrite(src, "other.img", 1 << 20, b"changed");
    let s = sync(src, dst, &Control::new()).unwrap();
    assert_same_tree(&src.root, &dst.root);
    assert_eq!(s.drift, 1, "{s:?}");
    s
}

/// The megabytes a summary's note about `what` starts with.
fn note_mb(s: &Summary, what: &str) -> f64 {
    let note = s
        .notes
        .iter()
        .find(|n| n.contains(what))
        .unwrap_or_else(|| panic!("no note about {what:?}: {:?}", s.notes));
    note.split(' ').next().unwrap().parse().unwrap()
}

#[test]
fn a_sync_reads_a_large_file_only_where_it_no_longer_shares_its_copys_extents() {
    // Files cloned one by one (XFS), a snapshot (btrfs), a clone of an image (XFS): in
    // the last, the two files are on two filesystems whose images share extents.
    for (kind, env) in [
        ("xfs", Env::on_xfs()),
        ("btrfs", Env::on_btrfs()),
        ("xfs-image", Env::with_xfs_images()),
    ] {
        let (src, dst) = (env.source("src"), env.place("dst"));
        let mut rng = Rng(52);
        let s = sync_after_writes_in_place(&src, &dst, &mut rng);
        // Most of the big file was known from its shared extents; none of the other.
        let mb = note_mb(&s, "not read again");
        assert!((25.0..=33.6).contains(&mb), "{kind}: {mb} MB");
        // The states recorded for both trees are what hashing them from scratch gives.
        assert!(verify(&src, &Control::new()).unwrap().ok, "{kind}");
        assert!(verify(&dst, &Control::new()).unwrap().ok, "{kind}");
        // And again, with the sync's own writes shared or not.
        overwrite(&src, "big.img", 30 << 20, &rng.bytes(100_000));
        sync(&src, &dst, &Control::new()).unwrap();
        assert_same_tree(&src.root, &dst.root);
        assert!(verify(&src, &Control::new()).unwrap().ok, "{kind}");
        assert!(verify(&dst, &Control::new()).unwrap().ok, "{kind}");
    }
}

#[test]
fn a_sync_compares_a_large_file_with_its_copys_cached_bytes_instead_of_hashing_it() {
    // Where the copy shares no extents with its source (here: the temp dir's filesystem,
    // a copy by copy_file_range or the stream), a large file changed in place is compared
    // with the copy's file, whose bytes are still in the page cache, instead of hashed.
    let env = Env::new();
    let (src, dst) = (env.source("src"), env.place("dst"));
    let s = sync_after_writes_in_place(&src, &dst, &mut Rng(53));
    // Most of the big file; none of the other, whose copy drifted.
    let mb = note_mb(&s, "compared with the copy's cached bytes");
    assert!((25.0..=33.6).contains(&mb), "{mb} MB");
    // The states recorded for both trees are what hashing them from scratch gives.
    assert!(verify(&src, &Control::new()).unwrap().ok);
    assert!(verify(&dst, &Control::new()).unwrap().ok);
}

#[test]
fn a_btrfs_sync_skips_the_walks_of_trees_nothing_changed_and_only_those() {
    use std::os::unix::fs::FileExt;
    let env = Env::on_btrfs();
    let src = env.source("src");
    let mut rng = Rng(61);
    random_tree(&src.root, &mut rng, 40);
    write(&src.root.join("edited"), &[1u8; 5000]);
    let dst = env.place("dst");
    copy(&src, &dst, &Control::new()).unwrap();
    let walked = |s: &Summary| s.phase_ms.contains_key("plan");
    // Comparing the trees reads them: the access times it writes change both subvolumes,
    // so the sync after it walks again (finding nothing), and the one after that skips.
    let compared = || {
        assert_same_tree(&src.root, &dst.root);
        let s = sync(&src, &dst, &Control::new()).unwrap();
        assert!(walked(&s) && s.files_unchanged > 40, "{s:?}");
        assert!(!walked(&sync(&src, &dst, &Control::new()).unwrap()));
    };
    let without_times = |mut s: Summary| {
        (s.duration_ms, s.phase_ms) = (0, Default::default());
        s
    };
    // The first sync walks (nothing recorded yet); the next finds both trees untouched.
    assert!(walked(&sync(&src, &dst, &Control::new()).unwrap()));
    let skipped = sync(&src, &dst, &Control::new()).unwrap();
    assert!(!walked(&skipped), "{skipped:?}");
    // It says what a sync that walks both trees and finds nothing to do says.
    fs::remove_file(dst.state_dir.join("untouched")).unwrap();
    fs::remove_file(src.state_dir.join("scanned")).unwrap();
    let full = sync(&src, &dst, &Control::new()).unwrap();
    assert!(walked(&full));
    assert_eq!(without_times(skipped), without_times(full.clone()));
    assert!(
        full.files_unchanged > 40 && !full.root_hash.is_empty(),
        "{full:?}"
    );

    // The source edited in place (same size, not yet written back): seen.
    let f = fs::OpenOptions::new()
        .write(true)
        .open(src.root.join("edited"))
        .unwrap();
    f.write_all_at(b"changed", 100).unwrap();
    drop(f);
    let s = sync(&src, &dst, &Control::new()).unwrap();
    assert_eq!((s.files_changed, s.drift), (1, 0), "{s:?}");
    compared();

    // The copy edited (drift): seen, and overwritten.
    fs::write(dst.root.join("edited"), b"drift").unwrap();
    let s = sync(&src, &dst, &Control::new()).unwrap();
    assert_eq!((s.files_changed, s.drift), (1, 1), "{s:?}");
    compared();
    // Only the copy's metadata: seen too.
    fs::set_permissions(dst.root.join("edited"), fs::Permissions::from_mode(0o600)).unwrap();
    let s = sync(&src, &dst, &Control::new()).unwrap();
    assert_eq!((s.metadata_only, s.drift), (1, 1), "{s:?}");
    compared();

    // A sync that keeps other paths than the last one walks, and keeps them.
    let keep = |p: &[u8]| p == b"edited";
    let s = sync_keeping(&src, &dst, &keep, &Control::new()).unwrap();
    assert!(walked(&s));
    assert_eq!(s.identity_files, vec!["edited".to_string()]);
    assert!(!walked(
        &sync_keeping(&src, &dst, &keep, &Control::new()).unwrap()
    ));
    assert!(walked(&sync(&src, &dst, &Control::new()).unwrap()));

    // Another subvolume put where the copy was is not the one recorded.
    assert!(!walked(&sync(&src, &dst, &Control::new()).unwrap()));
    let moved = env.place("moved");
    fs::create_dir_all(moved.root.parent().unwrap()).unwrap();
    fs::rename(&dst.root, &moved.root).unwrap();
    let parent = fsx::open_dir(dst.root.parent().unwrap()).unwrap();
    btrfs::snapshot(
        fsx::open_dir(&moved.root).unwrap().as_fd(),
        parent.as_fd(),
        b"dst",
    )
    .unwrap();
    fs::write(dst.root.join("edited"), b"in the other one").unwrap();
    let s = sync(&src, &dst, &Control::new()).unwrap();
    assert!(walked(&s) && s.drift == 1, "{s:?}");
    assert_same_tree(&src.root, &dst.root);
}

/// A sync from the same source, run while a copy takes it whole (both only read it), stores
/// a newer scan of the source: the copy never takes that scan for what it took.
#[test]
fn a_copy_taken_whole_records_what_it_took_while_a_sync_of_its_source_runs() {
    let env = Env::with_xfs_images();
    let watch = Some(Arc::new(watch::Watch::new().unwrap()));
    let ctl = || Control::new().with_watch(watch.clone());
    let src = env.source("src");
    random_tree(&src.root, &mut Rng(73), 20);
    write(&src.root.join("edited"), &[1u8; 5000]);
    let other = env.place("other");
    copy(&src, &other, &ctl()).unwrap();
    // (The source's scan is paired with a mark of this watch.)
    sync(&src, &other, &ctl()).unwrap();
    let was = fs::read(src.root.join("edited")).unwrap();
    let hit = Arc::new(AtomicBool::new(false));
    let (h2, s2, o2, w2) = (hit.clone(), src.clone(), other.clone(), watch.clone());
    let meanwhile = ctl().with_failpoint(move |point| {
        if point == "copy:image-cloned" && !h2.swap(true, Ordering::SeqCst) {
            written_in_place(&s2.root.join("edited"));
            sync(&s2, &o2, &Control::new().with_watch(w2.clone()))
                .map_err(|e| std::io::Error::other(e.to_string()))?;
        }
        Ok(())
    });
    let dst = env.place("dst");
    copy(&src, &dst, &meanwhile).unwrap();
    assert!(hit.load(Ordering::SeqCst));
    assert_eq!(fs::read(dst.root.join("edited")).unwrap(), was);
    assert!(verify(&dst, &Control::new()).unwrap().ok);
    assert_same_tree(&src.root, &other.root);
}

/// The file at `path` opened to read and write, with "changed" written at offset 100 (in
/// place, as a running container writes).
fn written_in_place(path: &Path) -> fs::File {
    let f = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .unwrap();
    std::os::unix::fs::FileExt::write_all_at(&f, b"changed", 100).unwrap();
    f
}

/// A writable shared mapping of the first page of `f` (as a container's process may write
/// a file: no event); the caller unmaps it (`libc::munmap(map, 4096)`).
fn map_first_page(f: &fs::File) -> *mut libc::c_void {
    use std::os::fd::AsRawFd;
    // SAFETY: a new mapping of one page of an open file, which the caller unmaps.
    let map = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            4096,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED,
            f.as_raw_fd(),
            0,
        )
    };
    assert_ne!(map, libc::MAP_FAILED);
    map
}

/// With a change watch (what `serve` runs), syncs on ext4 and XFS skip the walks of trees
/// nothing touched, and see every change made to either tree.
#[test]
fn a_watched_sync_skips_the_walks_of_trees_nothing_changed_and_only_those() {
    let (ext4, xfs) = (LoopFs::new("ext4"), LoopFs::new("xfs"));
    for base in [ext4.root(), xfs.root()] {
        watched_syncs(&base);
    }
}

fn watched_syncs(base: &Path) {
    let watch = Some(Arc::new(
        watch::Watch::new().expect("a watch (tests run as root)"),
    ));
    let ctl = || Control::new().with_watch(watch.clone());
    let (src, dst) = (place_in(base, "src"), place_in(base, "dst"));
    let mut rng = Rng(62);
    random_tree(&src.root, &mut rng, 40);
    write(&src.root.join("edited"), &[1u8; 5000]);
    copy(&src, &dst, &Control::new()).unwrap();
    let walked = |s: &Summary| s.phase_ms.contains_key("plan");
    let at = base.display();
    // The first sync walks (nothing recorded yet); the next finds both trees untouched,
    // and says what the walk said.
    let full = sync(&src, &dst, &ctl()).unwrap();
    assert!(walked(&full) && full.files_unchanged > 40, "{at}: {full:?}");
    let mut skipped = sync(&src, &dst, &ctl()).unwrap();
    assert!(!walked(&skipped), "{at}: {skipped:?}");
    (skipped.duration_ms, skipped.phase_ms) = (full.duration_ms, full.phase_ms.clone());
    assert_eq!(skipped, full, "{at}");
    // Without the watch, a sync walks.
    assert!(walked(&sync(&src, &dst, &Control::new()).unwrap()));
    assert!(!walked(&sync(&src, &dst, &ctl()).unwrap()));

    // The source edited in place: seen.
    let f = written_in_place(&src.root.join("edited"));
    let s = sync(&src, &dst, &ctl()).unwrap();
    assert_eq!((s.files_changed, s.drift), (1, 0), "{at}: {s:?}");
    assert_same_tree(&src.root, &dst.root);
    // Written through a shared mapping (no event): seen while it is mapped...
    let map = map_first_page(&f);
    drop(f);
    sync(&src, &dst, &ctl()).unwrap();
    std::thread::sleep(Duration::from_millis(20));
    // SAFETY: within the mapping.
    unsafe { *map.cast::<u8>().add(10) = b'M' };
    let s = sync(&src, &dst, &ctl()).unwrap();
    assert!(walked(&s), "{at}: {s:?}");
    assert_eq!(fs::read(dst.root.join("edited")).unwrap()[10], b'M', "{at}");
    // ...and written again just before it is unmapped: the last close is seen. (Written
    // back first, so that the write faults and sets the file's times, as a quick check
    // needs: with or without a watch, a page that stays dirty takes writes unseen.)
    // SAFETY: within the mapping, then unmapped.
    unsafe {
        assert_eq!(libc::msync(map, 4096, libc::MS_SYNC), 0);
        std::thread::sleep(Duration::from_millis(20));
        *map.cast::<u8>().add(11) = b'N';
        libc::munmap(map, 4096);
    }
    let s = sync(&src, &dst, &ctl()).unwrap();
    assert!(walked(&s), "{at}: {s:?}");
    assert_same_tree(&src.root, &dst.root);
    assert!(!walked(&sync(&src, &dst, &ctl()).unwrap()), "{at}");

    // The copy edited (drift): seen, and overwritten.
    fs::write(dst.root.join("edited"), b"drift").unwrap();
    let s = sync(&src, &dst, &ctl()).unwrap();
    assert_eq!((s.files_changed, s.drift), (1, 1), "{at}: {s:?}");
    assert_same_tree(&src.root, &dst.root);
    // Only the copy's metadata: seen too.
    fs::set_permissions(dst.root.join("edited"), fs::Permissions::from_mode(0o600)).unwrap();
    let s = sync(&src, &dst, &ctl()).unwrap();
    assert_eq!((s.metadata_only, s.drift), (1, 1), "{at}: {s:?}");
    // A file added deep in the source, and one removed: seen.
    let deep = fs::read_dir(&src.root)
        .unwrap()
        .flatten()
        .find(|e| e.path().is_dir())
        .unwrap()
        .path();
    write(&deep.join("added"), b"new");
    let s = sync(&src, &dst, &ctl()).unwrap();
    assert_eq!(s.files_added, 1, "{at}: {s:?}");
    fs::remove_file(deep.join("added")).unwrap();
    let s = sync(&src, &dst, &ctl()).unwrap();
    assert_eq!(s.files_deleted, 1, "{at}: {s:?}");
    assert_same_tree(&src.root, &dst.root);
    assert!(!walked(&sync(&src, &dst, &ctl()).unwrap()), "{at}");

    // Another source synced into the copy (a snapshot, say) is walked, not taken for the
    // last one.
    let other_src = place_in(base, "src-2");
    copy(&src, &other_src, &Control::new()).unwrap();
    write(&other_src.root.join("edited"), b"in the other source");
    let s = sync(&other_src, &dst, &ctl()).unwrap();
    assert_eq!((s.files_changed, s.drift), (1, 0), "{at}: {s:?}");
    assert_same_tree(&other_src.root, &dst.root);
    let s = sync(&src, &dst, &ctl()).unwrap();
    assert_eq!(s.files_changed, 1, "{at}: {s:?}");
    assert_same_tree(&src.root, &dst.root);

    // Another watch (another process, or after a restart) knows nothing of this one's.
    let other = Some(Arc::new(watch::Watch::new().unwrap()));
    let s = sync(&src, &dst, &Control::new().with_watch(other)).unwrap();
    assert!(walked(&s), "{at}: {s:?}");
}

/// A copy that takes its source whole (a clone of its image, a btrfs snapshot) records the
/// scan of what it took as its source's, with the source's mark from before it was taken.
/// The next such copy reads again, in the tree it took, only where the source changed
/// since (as the change watch or btrfs tell): nothing of a source at rest. Each records
/// what a full scan of it finds, after changes of every kind (in place, through a shared
/// mapping that raises no event, metadata, added deep, removed, a directory renamed).
#[test]
fn copies_taken_whole_read_again_only_where_their_source_changed() {
    for (env, kind) in [
        (Env::with_xfs_images(), "image tree"),
        (Env::on_btrfs(), "subvolume"),
    ] {
        let watch = Some(Arc::new(
            watch::Watch::new().expect("a watch (tests run as root)"),
        ));
        let ctl = || Control::new().with_watch(watch.clone());
        let src = env.source("src");
        random_tree(&src.root, &mut Rng(70), 40);
        write(&src.root.join("edited"), &[1u8; 5000]);
        let reread = |s: &Summary| {
            s.notes
                .iter()
                .find(|n| n.starts_with("the copy's manifest is the source's last scan"))
                .cloned()
        };
        let copied = |name: &str| {
            let dst = env.place(name);
            let s = copy(&src, &dst, &ctl()).unwrap();
            assert_same_tree(&src.root, &dst.root);
            let report = verify(&dst, &Control::new()).unwrap();
            assert!(report.ok, "{kind}: {report:?}");
            (dst, s)
        };
        let from_source = |s: &Summary| {
            s.notes
                .iter()
                .any(|n| n.starts_with("the copy's manifest read from its source"))
        };
        // The first copy scans (nothing recorded of the source yet): the source itself
        // where the watch watches it (its pages are in the caches, the clone's are not),
        // else what it took.
        let (_, s) = copied("first");
        assert!(reread(&s).is_none(), "{kind}: {s:?}");
        assert_eq!(from_source(&s), kind == "image tree", "{kind}: {s:?}");
        // ...the next reads again only the directories of hard-linked files (a write through
        // one name is an event in that name's directory only): the source rests.
        let (_, s) = copied("at-rest");
        let note = reread(&s).unwrap_or_else(|| panic!("{kind}: {s:?}"));
        let listed: usize = note
            .rsplit('(')
            .next()
            .and_then(|n| n.split(' ').next()?.parse().ok())
            .unwrap();
        let dirs = snapshot_tree(&src.root)
            .values()
            .filter(|n| matches!(n, Node::Dir { .. }))
            .count();
        // (A btrfs snapshot rewrites its source's root block, and in a tree this small that
        // block is its only leaf: every inode counts as changed since.)
        assert!(
            listed * 3 < dirs || kind == "subvolume",
            "{kind}: {note}, of {dirs}"
        );

        // Changed in place, metadata, added deep, removed.
        let f = written_in_place(&src.root.join("edited"));
        let mut dirs = fs::read_dir(&src.root)
            .unwrap()
            .flatten()
            .filter(|e| e.path().is_dir())
            .map(|e| e.path());
        let (deep, moved) = (dirs.next().unwrap(), dirs.next().unwrap());
        write(&deep.join("added"), b"new");
        let file_in = |dir: &Path| {
            fs::read_dir(dir)
                .unwrap()
                .flatten()
                .find(|e| e.path().is_file())
                .map(|e| e.path())
        };
        if let Some(victim) = file_in(&deep) {
            fs::remove_file(victim).unwrap();
        }
        fs::set_permissions(src.root.join("edited"), fs::Permissions::from_mode(0o600)).unwrap();
        let (_, s) = copied("changed");
        assert!(reread(&s).is_some(), "{kind}: {s:?}");
        // A directory renamed (the watch cannot always place what moved: then the copy
        // scans whole).
        fs::rename(&moved, src.root.join("moved-here")).unwrap();
        copied("renamed");

        // Written through a shared mapping (no event) while the copy is taken.
        let map = map_first_page(&f);
        drop(f);
        copied("mapped");
        std::thread::sleep(Duration::from_millis(20));
        // SAFETY: within the mapping.
        unsafe { *map.cast::<u8>().add(10) = b'M' };
        let (dst, _) = copied("written-mapped");
        assert_eq!(
            fs::read(dst.root.join("edited")).unwrap()[10],
            b'M',
            "{kind}"
        );
        // SAFETY: the mapping made above.
        unsafe { libc::munmap(map, 4096) };
        let (_, s) = copied("unmapped");
        assert!(reread(&s).is_some(), "{kind}: {s:?}");
        let (_, s) = copied("at-rest-again");
        assert!(reread(&s).is_some(), "{kind}: {s:?}");
        if kind == "image tree" {
            // Without a record this watch knows (a new one), written in place just after
            // the clone was taken, before the scan of the source: the file is read again
            // in the copy, which has it as it was.
            let (changing, hit) = changes_file_at("copy:image-cloned", src.root.join("edited"));
            let fresh = Some(Arc::new(watch::Watch::new().unwrap()));
            let dst = env.place("changed-meanwhile");
            let was = fs::read(src.root.join("edited")).unwrap();
            let s = copy(&src, &dst, &changing.with_watch(fresh)).unwrap();
            assert!(hit.load(Ordering::SeqCst));
            assert!(
                // (The file alone: a write does not change its directory's list.)
                s.notes.iter().any(|n| n.contains("but for 1 entry,")),
                "{s:?}"
            );
            assert!(fs::read(src.root.join("edited"))
                .unwrap()
                .starts_with(b"changed"));
            assert_eq!(fs::read(dst.root.join("edited")).unwrap(), was);
            assert!(verify(&dst, &Control::new()).unwrap().ok);
        }
    }
}

/// With a change watch (ext4, XFS) or between btrfs subvolumes, a sync's source scan reads
/// again only where the source changed since its last scan, and finds what a full scan
/// finds: after random change sets, and changes a directory listing alone would not show
/// (in place, metadata, through a hard link, trees moved).
#[test]
fn watched_syncs_read_again_only_what_changed_and_find_what_a_full_scan_finds() {
    let (ext4, xfs) = (LoopFs::new("ext4"), LoopFs::new("xfs"));
    // (The test reads both trees after each sync.)
    let btrfs = LoopFs::noatime("btrfs");
    for (base, subvolume) in [
        (ext4.root(), false),
        (xfs.root(), false),
        (btrfs.root(), true),
    ] {
        partial_scans(&base, subvolume);
    }
}

/// `subvolume`: on btrfs, where the source is a subvolume and its tree tells what changed
/// (by inode: a change made while its directory was elsewhere is found where it is now).
fn partial_scans(base: &Path, subvolume: bool) {
    use std::os::unix::fs::FileExt;
    let watch = Some(Arc::new(
        watch::Watch::new().expect("a watch (tests run as root)"),
    ));
    let ctl = || Control::new().with_watch(watch.clone());
    let (src, dst) = (place_in(base, "src"), place_in(base, "dst"));
    if subvolume {
        make_subvolume(&src);
    }
    // (Outside the source's subvolume on btrfs, where nothing moves in from.)
    let outside = base.join("outside");
    let mut rng = Rng(63);
    random_tree(&src.root, &mut rng, 60);
    // Hard links across directories: a write through one name is an event in its
    // directory only.
    fs::hard_link(src.root.join("d/hard-link"), src.root.join("a/b/hard-2")).unwrap();
    copy(&src, &dst, &Control::new()).unwrap();
    let at = base.display();
    let partial = |s: &Summary| {
        s.notes
            .iter()
            .any(|n| n.contains("read again only where it changed"))
    };
    // The first sync walks, but after a copy that took the source whole (a btrfs
    // snapshot): that copy's scan of what it took is the source's, paired with its mark.
    let s = sync(&src, &dst, &ctl()).unwrap();
    assert_eq!(partial(&s), subvolume, "{at}: the first sync: {s:?}");
    let check = |what: &str, expect_partial: bool| {
        let s = sync(&src, &dst, &ctl()).unwrap_or_else(|e| panic!("{at}: {what}: {e}"));
        assert_eq!(partial(&s), expect_partial, "{at}: {what}: {s:?}");
        assert_same_tree(&src.root, &dst.root);
        // What the source's scan recorded is what a full scan finds now.
        let (full, _) = scan::scan(&src.root, None, true, &Control::new()).unwrap();
        let recorded = src.load_manifest().unwrap().unwrap();
        assert!(recorded == full, "{at}: {what}: the recorded scan differs");
        s
    };
    for round in 0..3 {
        random_changes(&src.root, &mut rng);
        let s = check(&format!("random changes, round {round}"), true);
        assert!(
            s.files_added + s.files_changed + s.files_deleted > 0,
            "{at}: {s:?}"
        );
    }
    let f = src.root.join("a/b/c");
    let file = fs::read_dir(&f)
        .unwrap()
        .flatten()
        .find(|e| e.path().is_file())
        .unwrap()
        .path();
    // (What changes, whether the next scan reads only where it changed, the change.)
    type Change<'a> = (&'static str, bool, Box<dyn Fn() + 'a>);
    let changes: Vec<Change> = vec![
        (
            "written in place",
            true,
            Box::new(|| {
                let h = fs::OpenOptions::new().write(true).open(&file).unwrap();
                h.write_all_at(b"in place", 0).unwrap();
            }),
        ),
        (
            "written through the other name of a hard link",
            true,
            Box::new(|| {
                let h = fs::OpenOptions::new()
                    .write(true)
                    .open(src.root.join("a/b/hard-2"))
                    .unwrap();
                h.write_all_at(b"through the link", 0).unwrap();
            }),
        ),
        (
            "a file's mode, a directory's mode and an xattr",
            true,
            Box::new(|| {
                fs::set_permissions(&file, fs::Permissions::from_mode(0o604)).unwrap();
                fs::set_permissions(src.root.join("a/b"), fs::Permissions::from_mode(0o711))
                    .unwrap();
                rustix::fs::lsetxattr(
                    src.root.join("a"),
                    "user.doppel",
                    b"on a directory",
                    rustix::fs::XattrFlags::empty(),
                )
                .unwrap();
            }),
        ),
        (
            "a directory renamed, then a file in it written",
            subvolume,
            Box::new(|| {
                fs::rename(src.root.join("a/b"), src.root.join("d/moved-b")).unwrap();
                let moved = src.root.join("d/moved-b/c");
                let inner = fs::read_dir(&moved).unwrap().flatten().next().unwrap();
                if inner.path().is_file() {
                    write(&inner.path(), b"written after the move");
                }
            }),
        ),
        (
            "a tree moved in from outside, at a name that was there",
            subvolume,
            Box::new(|| {
                // (On btrfs, from a directory of the source: nothing moves in across
                // subvolumes.)
                let outside = match subvolume {
                    true => src.root.join("outside"),
                    false => outside.clone(),
                };
                fs::remove_dir_all(&outside).ok();
                write(&outside.join("x/y/z"), b"from outside");
                fs::remove_dir_all(src.root.join("d/moved-b/c")).unwrap();
                fs::rename(&outside, src.root.join("d/moved-b/c")).unwrap();
            }),
        ),
        (
            "a symlink replaced and a fifo made",
            true,
            Box::new(|| {
                fs::remove_file(src.root.join("to-b")).unwrap();
                symlink("elsewhere", src.root.join("to-b")).unwrap();
                rustix::fs::mknodat(
                    rustix::fs::CWD,
                    src.root.join("d/fifo"),
                    rustix::fs::FileType::Fifo,
                    rustix::fs::Mode::from_raw_mode(0o600),
                    0,
                )
                .unwrap();
            }),
        ),
    ];
    // (A directory renamed within, into or out of the tree makes the watch forget where
    // the tree changed: the paths it remembers may name other places now.)
    for (what, partial, change) in &changes {
        change();
        let s = check(what, *partial);
        if *what == "written in place" {
            // Only that file is looked at again, besides the two names of the hard link
            // and the directories on the way to the three: every other directory is taken
            // from the last scan with all it holds, unopened.
            let looked_at = [
                file.strip_prefix(&src.root).unwrap(),
                Path::new("d/hard-link"),
                Path::new("a/b/hard-2"),
            ];
            let mut on_the_way: Vec<&Path> = looked_at
                .iter()
                .flat_map(|p| p.ancestors().skip(1))
                .filter(|d| !d.as_os_str().is_empty())
                .collect();
            on_the_way.sort();
            on_the_way.dedup();
            assert_eq!(on_the_way.len(), 4, "{on_the_way:?}"); // a, a/b, a/b/c, d
            let dirs = on_the_way.len();
            let recorded = dst.load_manifest().unwrap().unwrap();
            let all_dirs = recorded.entries.iter().filter(|e| e.kind == Kind::Dir);
            assert!(
                all_dirs.count() > dirs + 5,
                "a tree with directories to skip"
            );
            let note = s
                .notes
                .iter()
                .find(|n| n.contains("entries looked at"))
                .unwrap();
            assert!(
                note.contains(&format!("{} entries looked at", dirs + 3)),
                "{at}: {dirs} directories: {note}"
            );
        }
    }
    // A directory moved away and back, a file deep in it written meanwhile (and the watch
    // reading that event while the directory was away): the paths the watch remembers
    // name where the change was read, not where it happened, so the tree is scanned whole.
    let drain = || watch.as_ref().unwrap().generation(&src.root);
    fs::rename(src.root.join("d/moved-b"), src.root.join("d/away")).unwrap();
    drain();
    write(&src.root.join("d/away/c/x/y/z"), b"written while away");
    drain();
    fs::rename(src.root.join("d/away"), src.root.join("d/moved-b")).unwrap();
    check("a directory moved away and back", subvolume);
    // A new name for a file whose other names the last scan did not record as linked: its
    // other names may be anywhere, so the tree is walked whole.
    let single = fs::read_dir(src.root.join("d/moved-b"))
        .unwrap()
        .flatten()
        .find(|e| e.path().is_file() && e.metadata().unwrap().nlink() == 1)
        .unwrap()
        .path();
    fs::hard_link(&single, src.root.join("new-link")).unwrap();
    check("a new hard link", false);
    // Nothing changed: neither tree is walked.
    let s = sync(&src, &dst, &ctl()).unwrap();
    assert!(!s.phase_ms.contains_key("plan"), "{at}: {s:?}");
    // One name of a hard-linked file removed: the sync that removes it from the copy
    // leaves the file's other name resolvable for the watch, and the next sync walks
    // nothing.
    fs::remove_file(src.root.join("new-link")).unwrap();
    check("a hard link removed", true);
    let s = sync(&src, &dst, &ctl()).unwrap();
    assert!(!s.phase_ms.contains_key("plan"), "{at}: {s:?}");
    if subvolume {
        // A subvolume made in the source: what changes in it is in a tree of its own, and
        // does not move the source's generation, so every sync walks the source.
        let nested = place_in(&src.root.join("d"), "nested");
        make_subvolume(&nested);
        write(&nested.root.join("inner"), b"in a nested subvolume");
        check("a subvolume made in it", true);
        write(
            &nested.root.join("inner"),
            b"changed in the nested subvolume",
        );
        check("a change in the nested subvolume", false);
        check("nothing changed, with a nested subvolume", false);
        let parent = fsx::open_dir(nested.root.parent().unwrap()).unwrap();
        btrfs::delete_subvolume(parent.as_fd(), b"nested").unwrap();
    }
}

#[test]
fn btrfs_copies_of_a_subvolume_are_snapshots_whole_independent_and_verified() {
    let lfs = LoopFs::new("btrfs");
    let base = lfs.root();
    let (plain, src) = (place_in(&base, "plain"), place_in(&base, "src"));
    let mut rng = Rng(48);
    random_tree(&plain.root, &mut rng, 60);
    // A tree the engine lays down on btrfs is a subvolume: copying a plain directory makes
    // one (file by file).
    let s = copy(&plain, &src, &Control::new()).unwrap();
    assert!(
        !s.notes.iter().any(|n| n.contains("snapshot")),
        "{:?}",
        s.notes
    );
    let root = |p: &Place| fsx::open_dir(&p.root).unwrap();
    assert!(btrfs::is_subvolume(root(&src).as_fd()));
    assert!(!btrfs::is_subvolume(root(&plain).as_fd()));
    copies_taken_whole(
        &base,
        &src,
        &mut rng,
        ("copy:snapshot-taken", "a btrfs snapshot of the source"),
        |p| btrfs::is_subvolume(root(p).as_fd()),
    );
}

/// What a copy that takes its source tree whole (a btrfs snapshot, a clone of an image)
/// must be, its source `src` (under `base`) a tree of that kind: at the failure point
/// `point`, once the tree is taken, the source changes, and the copy has it as it was;
/// the summary says `note`; specials are left out; the copy is verified, of the kind
/// (`whole`), takes almost no room, and is independent of its source both ways; syncs into
/// it converge; its own copies are taken whole too; a copy that fails once its tree is
/// taken leaves nothing behind; copies go as any tree does.
fn copies_taken_whole(
    base: &Path,
    src: &Place,
    rng: &mut Rng,
    (point, note): (&'static str, &str),
    whole: impl Fn(&Place) -> bool,
) {
    let big = rng.bytes(64 << 20);
    write(&src.root.join("big.img"), &big);
    // A socket: not part of a copy.
    let _socket = std::os::unix::net::UnixListener::bind(src.root.join("a/socket")).unwrap();
    // (The source's filesystem written out first: an image tree's into its image.)
    let used = || {
        fsx::syncfs(fsx::open_dir(&src.root).unwrap().as_fd()).unwrap();
        fsx::syncfs(fsx::open_dir(base).unwrap().as_fd()).unwrap();
        let (free, total) = fsx::free_space(base).unwrap();
        total - free
    };

    let dst = place_in(base, "dst");
    let before = snapshot_tree(&src.root);
    let changed = src.root.join("a/changed-after-it-was-taken");
    let c2 = changed.clone();
    let ctl = Control::new().with_failpoint(move |at| {
        if at == point {
            fs::write(&c2, b"too late")?;
        }
        Ok(())
    });
    let used_before = used();
    let s = copy(src, &dst, &ctl).unwrap();
    assert!(s.notes.iter().any(|n| n.contains(note)), "{:?}", s.notes);
    assert_eq!((s.content_bytes, s.bytes_sent), (0, 0), "{s:?}");
    assert_eq!(s.skipped_special_count, 1, "{s:?}");
    assert_eq!(snapshot_tree(&dst.root), before);
    assert!(src.root.join("a/socket").exists() && !dst.root.join("a/socket").exists());
    assert!(changed.exists() && !dst.root.join("a/changed-after-it-was-taken").exists());
    no_debris(&dst);
    assert!(verify(&dst, &Control::new()).unwrap().ok);
    assert!(whole(&dst));
    // 64 MB in the tree, almost nothing more on the disk.
    let grew = used().saturating_sub(used_before);
    assert!(grew < 16 << 20, "the copy took {grew} bytes");

    assert_independent(src, &dst, &big);

    // Syncs into it converge as everywhere, and its own copies are taken whole too.
    for _ in 0..3 {
        random_changes(&src.root, rng);
        sync(src, &dst, &Control::new()).unwrap();
        assert_same_tree(&src.root, &dst.root);
        no_debris(&dst);
    }
    assert!(verify(&dst, &Control::new()).unwrap().ok);
    let again = place_in(base, "again");
    let s = copy(&dst, &again, &Control::new()).unwrap();
    assert!(s.notes.iter().any(|n| n.contains(note)), "{:?}", s.notes);
    assert_same_tree(&dst.root, &again.root);

    // A copy that fails once its tree is taken leaves nothing behind.
    let failed = place_in(base, "failed");
    let ctl = Control::new().with_failpoint(move |at| match at == point {
        true => Err(io::Error::other("injected")),
        false => Ok(()),
    });
    assert!(copy(src, &failed, &ctl).is_err());
    assert!(!failed.root.exists());
    no_debris(&failed);

    // Copies go like any tree.
    crate::engine::remove_trees(&[again.root.clone(), dst.root.clone()]).unwrap();
    assert!(!again.root.exists() && !dst.root.exists());
}

#[test]
fn bytes_laid_down_at_once_under_a_limit_count_as_the_limit_lets_them_through() {
    // 1.5 MiB at 1 MiB/s, beyond a burst of a tenth of a second's worth: a wait of about
    // 1.4 s. The limit holds from the start: no large first burst goes through at once
    // (it was 0.5 MiB, and this took a second).
    let total = 3 << 19;
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    let ctl = Control::new()
        .with_progress(move |p| log.lock().unwrap().push(p.bytes_done))
        .with_bwlimit(Some(1 << 20));
    ctl.phase(Phase::Transfer, Some(total), Some(1));
    let t0 = Instant::now();
    ctl.throttle_counting(total);
    assert!(
        t0.elapsed() >= Duration::from_millis(1300),
        "{:?}",
        t0.elapsed()
    );
    let seen = seen.lock().unwrap().clone();
    let during: Vec<u64> = seen
        .iter()
        .copied()
        .filter(|b| *b > 0 && *b < total)
        .collect();
    assert!(
        during.len() >= 3,
        "progress moved through the wait: {seen:?}"
    );
    assert!(during.windows(2).all(|w| w[0] <= w[1]), "{seen:?}");
    assert_eq!(
        ctl.state.bytes.load(Ordering::Relaxed),
        total,
        "all counted once"
    );
}

#[test]
fn a_copy_never_stores_an_older_picture_of_its_source_over_a_newer_one() {
    let env = Env::new();
    let (src, a, b) = (env.place("src"), env.place("a"), env.place("b"));
    random_tree(&src.root, &mut Rng(7), 40);
    copy(&src, &a, &Control::new()).unwrap();
    // While b is being copied (its source scanned already), the source changes and a is
    // synced to it: that sync's scan of the source is the newer one.
    let synced = Arc::new(std::sync::Mutex::new(None));
    let (s2, src2, a2) = (synced.clone(), src.clone(), a.clone());
    let ctl = Control::new().stream_only().with_failpoint(move |point| {
        let mut synced = s2.lock().unwrap();
        if point == "receive:file" && synced.is_none() {
            write(&src2.root.join("zz-late"), b"written during the copy\n");
            let s = sync(&src2, &a2, &Control::new()).map_err(std::io::Error::other)?;
            *synced = Some(s.source_root_hash);
        }
        Ok(())
    });
    copy(&src, &b, &ctl).unwrap();
    let state_after_sync = synced.lock().unwrap().clone().expect("the sync ran");
    // The source's quick-check cache still vouches for every file: a probe (which reads
    // no content) finds the state a was synced to, so a shows as current.
    assert_eq!(probe(&src).unwrap(), state_after_sync);
}

/// What a file takes on its filesystem (its allocated blocks), in bytes.
fn allocated(path: &Path) -> u64 {
    fs::metadata(path).unwrap().blocks() * 512
}

/// A 64 MiB file holding 8 KiB: data at its start and in its middle, holes around, and a
/// hole at its end.
fn write_sparse(path: &Path, rng: &mut Rng) {
    use std::os::unix::fs::FileExt;
    let f = fs::File::create(path).unwrap();
    f.write_all_at(&rng.bytes(4096), 0).unwrap();
    f.write_all_at(&rng.bytes(4096), 32 << 20).unwrap();
    f.set_len(64 << 20).unwrap();
}

#[test]
fn sparse_files_stay_sparse_through_copies_and_syncs() {
    // Through the kernel on one filesystem (ext4: copy_file_range), through the stream,
    // and between two filesystems (a directory copied into an image tree).
    let envs: Vec<(&str, Env, Control)> = vec![
        ("kernel", Env::new(), Control::new()),
        ("stream", Env::new(), Control::new().stream_only()),
        (
            "into an image tree",
            Env::on_xfs_laying_down_images(),
            Control::new(),
        ),
    ];
    for (how, env, ctl) in envs {
        let (src, dst) = (env.place("src"), env.place("dst"));
        let mut rng = Rng(9);
        random_tree(&src.root, &mut rng, 10);
        let file = Path::new("disk.img");
        write_sparse(&src.root.join(file), &mut rng);
        let holds = allocated(&src.root.join(file));
        assert!(holds < 1 << 20, "{how}: the source is sparse: {holds}");

        copy(&src, &dst, &ctl).unwrap();
        assert_same_tree(&src.root, &dst.root);
        let taken = allocated(&dst.root.join(file));
        assert!(
            taken < 4 << 20,
            "{how}: the copy of a 64 MiB file holding 8 KiB takes {taken} bytes"
        );

        // A change in its middle, and the file grown by a hole: synced, still sparse.
        {
            use std::os::unix::fs::FileExt;
            let f = fs::OpenOptions::new()
                .write(true)
                .open(src.root.join(file))
                .unwrap();
            f.write_all_at(&rng.bytes(4096), 16 << 20).unwrap();
            f.set_len(96 << 20).unwrap();
        }
        sync(&src, &dst, &ctl).unwrap();
        assert_same_tree(&src.root, &dst.root);
        assert_eq!(fs::metadata(dst.root.join(file)).unwrap().len(), 96 << 20);
        let taken = allocated(&dst.root.join(file));
        assert!(
            taken < 8 << 20,
            "{how}: the synced copy of a 96 MiB file holding 12 KiB takes {taken} bytes"
        );
    }
}

#[test]
fn a_piece_of_zeros_is_a_hole_and_the_length_is_kept() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("f");
    let f = fs::File::create(&path).unwrap();
    let mut out = fsx::SparseOut::new(&f);
    out.write(b"head").unwrap();
    out.write(&vec![0u8; 1 << 20]).unwrap();
    out.write(b"tail").unwrap();
    out.write(&vec![0u8; 1 << 20]).unwrap();
    assert_eq!(out.finish().unwrap(), (2 << 20) + 8);
    let content = fs::read(&path).unwrap();
    assert_eq!(content.len(), (2 << 20) + 8);
    assert_eq!(&content[..4], b"head");
    assert_eq!(&content[(1 << 20) + 4..(1 << 20) + 8], b"tail");
    assert!(fsx::is_zero(&content[4..(1 << 20) + 4]));
    assert!(allocated(&path) < 1 << 20, "{}", allocated(&path));
    assert!(!fsx::is_zero(&[
        0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1
    ]));
    assert!(fsx::is_zero(&[]));
}

#[test]
fn a_file_shorter_than_its_scan_is_not_padded_by_the_kernels_copy() {
    // (Truncated between the scan and the copy: the kernel's copy must not make up the
    // rest as a hole; the caller then copies what the file holds.)
    let tmp = tempfile::tempdir().unwrap();
    let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
    fs::write(&a, Rng(3).bytes(1 << 20)).unwrap();
    let src = fs::File::open(&a).unwrap();
    let dst = fs::File::create(&b).unwrap();
    match fsx::kernel_copy(&dst, &src, 2 << 20) {
        // A reflink shares what the file holds, whatever the scan said.
        Ok(fsx::KernelCopy::Reflink) => {}
        other => {
            assert!(other.is_err(), "{other:?}");
            assert_eq!(
                fs::metadata(&b).unwrap().len(),
                0,
                "left empty for the caller"
            );
        }
    }
}

#[test]
fn a_sparse_file_under_a_limit_waits_for_its_data_only() {
    // 64 MiB holding 8 KiB at 1 MiB/s: a wait for the data, not a minute for its holes.
    let env = Env::new();
    let (src, dst) = (env.place("src"), env.place("dst"));
    fs::create_dir_all(&src.root).unwrap();
    write_sparse(&src.root.join("disk.img"), &mut Rng(4));
    let t0 = std::time::Instant::now();
    copy(&src, &dst, &Control::new().with_bwlimit(Some(1 << 20))).unwrap();
    assert_same_tree(&src.root, &dst.root);
    assert!(
        t0.elapsed() < Duration::from_secs(20),
        "{:?} for 8 KiB of data",
        t0.elapsed()
    );
}

/// Unmounts what is mounted at its path when dropped (a test's extra mount).
struct MountedAt(PathBuf);

impl Drop for MountedAt {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg(&self.0).status();
    }
}

#[test]
fn an_image_tree_unmounted_while_its_filesystem_is_held_elsewhere_is_mounted_again_not_read_empty()
{
    let env = Env::with_xfs_images();
    let (src, dst) = (env.source("src"), env.place("dst"));
    random_tree(&src.root, &mut Rng(5), 20);
    // Its filesystem held elsewhere too (as a running container's mount namespace holds
    // it), then unmounted at its tree: its loop device stays, the directory under it is
    // empty.
    let out = std::process::Command::new("findmnt")
        .args(["-n", "-o", "SOURCE"])
        .arg(&src.root)
        .output()
        .unwrap();
    let device = String::from_utf8(out.stdout).unwrap().trim().to_string();
    assert!(device.starts_with("/dev/loop"), "{device:?}");
    let elsewhere = tempfile::tempdir().unwrap();
    let ok = std::process::Command::new("mount")
        .args(["-o", "nouuid"])
        .arg(&device)
        .arg(elsewhere.path())
        .status()
        .unwrap();
    assert!(ok.success());
    let _held = MountedAt(elsewhere.path().to_path_buf());
    let ok = std::process::Command::new("umount")
        .arg(&src.root)
        .status()
        .unwrap();
    assert!(ok.success());
    assert!(!image::is_image_tree(&src.root));
    assert!(image::attached(&image::image_path(&src.root)).unwrap());

    // A copy of it is a copy of the tree, not of the empty directory under it.
    copy(&src, &dst, &Control::new()).unwrap();
    assert!(image::is_image_tree(&src.root), "mounted at its tree again");
    assert_same_tree(elsewhere.path(), &dst.root);
    assert!(fs::read_dir(&dst.root).unwrap().count() > 3);
}

#[test]
fn files_laid_down_at_once_under_a_limit_show_the_limit_together() {
    // Two workers lay down 1 MiB each at once under 1 MiB/s: the second waits out the
    // first's bytes, then its own. When the first is done, about 1 MiB shows as done, not
    // the first's 1 MiB and a share of the second's counted over its whole wait.
    let ctl = Control::new().with_bwlimit(Some(1 << 20));
    ctl.phase(Phase::Transfer, Some(2 << 20), Some(2));
    let (done, first_done) = std::sync::mpsc::channel();
    let workers: Vec<_> = (0..2)
        .map(|_| {
            let (ctl, done) = (ctl.clone(), done.clone());
            std::thread::spawn(move || {
                ctl.throttle_counting(1 << 20);
                let _ = done.send(());
            })
        })
        .collect();
    first_done.recv().unwrap();
    let shown = ctl.state.bytes.load(Ordering::Relaxed);
    for w in workers {
        w.join().unwrap();
    }
    assert!(
        (900 << 10..=1200 << 10).contains(&shown),
        "{shown} bytes shown done when the first MiB was"
    );
    assert_eq!(ctl.state.bytes.load(Ordering::Relaxed), 2 << 20);
}

/// A `Control` whose run fails at the failpoint `at` (as a crash there would stop it).
fn failing_at(at: &'static str) -> Control {
    Control::new().with_failpoint(move |point| match point == at {
        true => Err(io::Error::other(format!("crash at {point}"))),
        false => Ok(()),
    })
}

#[test]
fn a_directory_tree_converted_is_an_image_tree_holding_the_same_tree() {
    let env = Env::on_xfs();
    let tree = env.source("tree");
    let mut rng = Rng(71);
    random_tree(&tree.root, &mut rng, 40);
    // What the tree was, kept apart; and a copy of it recorded (its syncs' records too).
    let was = env.place("was");
    copy(&tree, &was, &Control::new()).unwrap();
    let copied = env.place("copied");
    copy(&tree, &copied, &Control::new()).unwrap();
    sync(&tree, &copied, &Control::new()).unwrap();
    let Converted::Done(s) = convert::to_image_tree(&tree, 1 << 30, &Control::new()).unwrap()
    else {
        panic!("not converted")
    };
    assert!(image::is_image_tree(&tree.root));
    assert_eq!(s.tree_files, 40 + 1, "its files and the hard link");
    assert_same_tree(&was.root, &tree.root);
    assert_same_dir_mtimes(&was.root, &tree.root);
    // Its manifest is the new tree's: a verification passes, and its copy, untouched,
    // is still its source's state.
    assert!(verify(&tree, &Control::new()).unwrap().ok);
    let s = sync(&tree, &copied, &Control::new()).unwrap();
    assert_eq!(
        (
            s.files_added,
            s.files_changed,
            s.files_deleted,
            s.metadata_only,
            s.bytes_sent
        ),
        (0, 0, 0, 0, 0),
        "{s:?}"
    );
    assert!(!tree.state_dir.join("convert").exists());
    no_debris(&tree);
    // Copies of it are clones of its image now, and independent of it.
    let again = env.place("again");
    copy_is_a_clone_of_its_image(&tree, &again);
    // Converted again: nothing to do.
    assert!(matches!(
        convert::to_image_tree(&tree, 1 << 30, &Control::new()).unwrap(),
        Converted::Already
    ));
    let mut mounts = mounts_below(&env.base);
    mounts.sort();
    let mut want = vec![
        fs::canonicalize(&tree.root).unwrap(),
        fs::canonicalize(&again.root).unwrap(),
    ];
    want.sort();
    assert_eq!(mounts, want, "no other image is left mounted");
}

/// A running container's tree: copied into its image while it runs, then, stopped, what
/// changed meanwhile synced in and the two swapped. A stop between the passes leaves the
/// directory, and a device node appearing between them refuses the conversion.
#[test]
fn a_tree_converted_in_two_passes_takes_what_changed_between_them() {
    let env = Env::on_xfs();
    let tree = env.source("tree");
    random_tree(&tree.root, &mut Rng(75), 30);
    write(&tree.root.join("changed-between"), b"before");
    write(&tree.root.join("deleted-between"), b"gone soon");
    // A service's socket, there while it runs: no refusal, since it is gone by the stop.
    let socket = std::os::unix::net::UnixListener::bind(tree.root.join("run.sock")).unwrap();
    let first = convert::copy_while_running(&tree, 1 << 30, &Control::new()).unwrap();
    assert!(matches!(first, Converted::Done(_)), "{first:?}");
    assert!(!image::is_image_tree(&tree.root), "still the directory");
    // Written between the passes, as a running container does.
    write(&tree.root.join("changed-between"), b"after, and longer");
    write(&tree.root.join("added-between"), b"new");
    fs::remove_file(tree.root.join("deleted-between")).unwrap();
    drop(socket);
    fs::remove_file(tree.root.join("run.sock")).unwrap();
    let was = env.place("was");
    copy(&tree, &was, &Control::new()).unwrap();
    let Converted::Done(s) = convert::finish_stopped(&tree, 1 << 30, &Control::new()).unwrap()
    else {
        panic!("not converted")
    };
    assert_eq!(
        (s.files_added, s.files_changed, s.files_deleted),
        (1, 1, 1),
        "{s:?}"
    );
    assert!(image::is_image_tree(&tree.root));
    assert_same_tree(&was.root, &tree.root);
    assert!(verify(&tree, &Control::new()).unwrap().ok);
    // The old directory waits in the work dir until the container runs again.
    assert!(tree.state_dir.join("convert/old").is_dir());
    convert::remove_old(&tree).unwrap();
    assert!(!tree.state_dir.join("convert").exists());
    no_debris(&tree);

    // Stopped between the passes (doppel killed): put right, the directory as it was.
    let other = env.source("other");
    random_tree(&other.root, &mut Rng(76), 10);
    let before = snapshot_tree(&other.root);
    convert::copy_while_running(&other, 1 << 30, &Control::new()).unwrap();
    convert::recover(&other).unwrap();
    assert!(!image::is_image_tree(&other.root));
    assert!(!other.state_dir.join("convert").exists());
    assert_eq!(snapshot_tree(&other.root), before);
    // A device node made between the passes: not converted, nothing left of the image,
    // with the change watch in the control too (a job's has it; it holds open what it
    // watches, so a pass into the image must leave it out, or the image stays mounted).
    let watched = Control::new().with_watch(crate::engine::watch::Watch::shared());
    convert::copy_while_running(&other, 1 << 30, &watched).unwrap();
    rustix::fs::mknodat(
        rustix::fs::CWD,
        other.root.join("null-dev"),
        rustix::fs::FileType::CharacterDevice,
        rustix::fs::Mode::from_raw_mode(0o666),
        rustix::fs::makedev(1, 3),
    )
    .unwrap();
    match convert::finish_stopped(&other, 1 << 30, &watched.for_another_run()).unwrap() {
        Converted::NotConverted(said) => assert!(said.contains("1 device files"), "{said}"),
        other => panic!("{other:?}"),
    }
    assert!(!image::is_image_tree(&other.root));
    assert!(!other.state_dir.join("convert").exists());
    let mut mounts = mounts_below(&env.base);
    mounts.sort();
    assert_eq!(
        mounts,
        vec![fs::canonicalize(&tree.root).unwrap()],
        "no image left mounted"
    );
}

#[test]
fn a_conversion_interrupted_anywhere_leaves_the_tree_or_its_image_whole() {
    for (at, image_took_its_place) in [
        ("copy:before-rename", false),
        ("convert:aside", false),
        ("convert:swapped", true),
    ] {
        let env = Env::on_xfs();
        let tree = env.source("tree");
        random_tree(&tree.root, &mut Rng(72), 30);
        let was = env.place("was");
        copy(&tree, &was, &Control::new()).unwrap();
        let failed = convert::to_image_tree(&tree, 1 << 30, &failing_at(at));
        assert!(failed.is_err(), "{at}: {failed:?}");
        // Where it stopped: before the swap, in it (the directory moved aside), after it.
        let left = match at {
            "copy:before-rename" => tree.root.is_dir() && !image::is_image_tree(&tree.root),
            "convert:aside" => !tree.root.exists(),
            _ => image::is_image_tree(&tree.root) && tree.state_dir.join("convert/old").is_dir(),
        };
        assert!(left, "{at}");
        // Put right as doppel's next start (or the next conversion) does.
        convert::recover(&tree).unwrap();
        assert_eq!(
            image::is_image_tree(&tree.root),
            image_took_its_place,
            "{at}"
        );
        assert_same_tree(&was.root, &tree.root);
        assert!(verify(&tree, &Control::new()).unwrap().ok, "{at}");
        assert!(!tree.state_dir.join("convert").exists(), "{at}");
        no_debris(&tree);
        let mounts = mounts_below(&env.base);
        assert_eq!(
            mounts.len(),
            usize::from(image_took_its_place),
            "{at}: {mounts:?}"
        );
        // Converted again: done, or nothing to do.
        let again = convert::to_image_tree(&tree, 1 << 30, &Control::new()).unwrap();
        match image_took_its_place {
            true => assert!(matches!(again, Converted::Already), "{at}"),
            false => assert!(matches!(again, Converted::Done(_)), "{at}"),
        }
        assert!(image::is_image_tree(&tree.root));
        assert_same_tree(&was.root, &tree.root);
    }
}

/// A running container's conversion, doppel killed (SIGKILL, in a child process) at spread
/// moments of the final pass (the sync into the image, the swap): the next start's
/// `recover` leaves the tree whole, the directory as it was or its image, with nothing of
/// the conversion left mounted or on disk; converted again, it is the image tree.
#[test]
fn a_conversions_final_pass_killed_at_any_moment_leaves_the_tree_or_its_image_whole() {
    // (Room for an image tree per round beside the directories: 4 GiB, sparse.)
    let env = Env::on(
        LoopFs::mounted_with("xfs", "loop", Some(4 << 30)),
        Roots::Directories,
    );
    // A tree after its first pass, changed as a running container changes it meanwhile.
    let first_pass = |name: &str, seed: u64| {
        let tree = env.place(name);
        random_tree(&tree.root, &mut Rng(seed), 300);
        convert::copy_while_running(&tree, 1 << 30, &Control::new()).unwrap();
        random_changes(&tree.root, &mut Rng(seed + 1));
        let was = env.place(&format!("{name}-was"));
        copy(&tree, &was, &Control::new()).unwrap();
        (tree, was)
    };
    first_pass("timing", 80);
    let whole = run_child("finish", &env.base, "timing", None).1;
    const ROUNDS: u32 = 5;
    let (mut interrupted, mut images) = (0, 0);
    for round in 0..ROUNDS {
        let name = format!("tree{round}");
        let (tree, was) = first_pass(&name, 81 + 2 * u64::from(round));
        let at = whole * (2 * round + 1) / (2 * ROUNDS);
        interrupted += u32::from(run_child("finish", &env.base, &name, Some(at)).0);
        // Put right as doppel's next start does.
        convert::recover(&tree).unwrap();
        let is_image = image::is_image_tree(&tree.root);
        images += u32::from(is_image);
        assert_same_tree(&was.root, &tree.root);
        assert!(!tree.state_dir.join("convert").exists(), "round {round}");
        no_debris(&tree);
        let mounted = mounts_below(&env.base)
            .into_iter()
            .filter(|m| m.ends_with(&name) || m.to_string_lossy().contains(&format!("/{name}/")))
            .count();
        assert_eq!(mounted, usize::from(is_image), "round {round}");
        // Converted again: done, or nothing to do; the same tree.
        let again = convert::to_image_tree(&tree, 1 << 30, &Control::new()).unwrap();
        match is_image {
            true => assert!(matches!(again, Converted::Already), "round {round}"),
            false => assert!(matches!(again, Converted::Done(_)), "round {round}"),
        }
        assert!(image::is_image_tree(&tree.root));
        assert_same_tree(&was.root, &tree.root);
        assert!(verify(&tree, &Control::new()).unwrap().ok, "round {round}");
        crate::engine::remove_trees(&[tree.root, tree.state_dir, was.root, was.state_dir]).unwrap();
    }
    println!("final pass: {interrupted} of {ROUNDS} kills landed inside, {images} left the image (a whole run: {whole:?})");
    assert!(interrupted > 0, "no kill landed inside a final pass");
}

#[test]
fn a_tree_a_conversion_would_change_or_cannot_hold_stays_the_directory_it_was() {
    let is_root = fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0);
    let xfs = Env::on_xfs();
    let ext4 = Env::on_own_ext4();
    let mut cases = vec![
        (&ext4, "on-ext4", 1u64 << 30, "cannot hold image trees"),
        (
            &xfs,
            "too-big",
            150 << 20,
            "would fill most of an image tree",
        ),
    ];
    if is_root {
        cases.push((&xfs, "with-a-device", 1 << 30, "1 device files or sockets"));
        cases.push((
            &xfs,
            "a-mount-point",
            1 << 30,
            "something is mounted at its root",
        ));
    }
    for (env, name, size, why) in cases {
        let tree = env.source(name);
        random_tree(&tree.root, &mut Rng(73), 10);
        match name {
            "too-big" => write(&tree.root.join("big"), &Rng(74).bytes(12 << 20)),
            "with-a-device" => rustix::fs::mknodat(
                rustix::fs::CWD,
                tree.root.join("null-dev"),
                rustix::fs::FileType::CharacterDevice,
                rustix::fs::Mode::from_raw_mode(0o666),
                rustix::fs::makedev(1, 3),
            )
            .unwrap(),
            // (Bound onto itself: the root is a mount's, which cannot be moved aside.)
            "a-mount-point" => rustix::mount::mount_bind(&tree.root, &tree.root).unwrap(),
            _ => {}
        }
        let before = snapshot_tree(&tree.root);
        match convert::to_image_tree(&tree, size, &Control::new()).unwrap() {
            Converted::NotConverted(said) => assert!(said.contains(why), "{name}: {said}"),
            other => panic!("{name}: {other:?}"),
        }
        assert!(!image::is_image_tree(&tree.root), "{name}");
        assert_eq!(snapshot_tree(&tree.root), before, "{name}");
        assert!(!tree.state_dir.join("convert").exists(), "{name}");
        if name == "a-mount-point" {
            assert_eq!(mounts_below(&env.base).len(), 1, "{name}: its own only");
            rustix::mount::unmount(&tree.root, rustix::mount::UnmountFlags::empty()).unwrap();
        }
        assert!(mounts_below(&env.base).is_empty(), "{name}");
    }
}
