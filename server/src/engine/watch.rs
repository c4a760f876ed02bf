//! Which trees something changed, as the kernel reports it (fanotify), so that a sync of
//! trees nothing touched since the last one needs no walk on filesystems without btrfs's
//! subvolume generations (ext4, XFS).
//!
//! One fanotify group per process watches, whole, each filesystem that holds a tree asked
//! about ([`Watch::generation`]). Every change there (a write, truncate, chmod, xattr,
//! create, delete, rename, a file opened for writing being closed) is reported with the
//! directory it happened in; that directory's path names the tree, whose counter goes up.
//! A tree's generation is its counter, plus one shared counter for changes that could not
//! be placed. Events are queued by the syscall that makes the change, so reading the queue
//! to its end before answering sees every change made before the question.
//!
//! What the kernel does not report, and how it is covered:
//! - Writes through a shared mapping, Linux AIO and a few other paths raise no event. So
//!   every question first looks at every process (`/proc`): while a file of a watched
//!   filesystem is mapped shared, or open for writing, its tree's generation moves at
//!   every question. A file is placed by its device and inode: at the path the process
//!   names it by, under the process's root, or under a tree (a container's process names
//!   its files from its own root, its tree); a path seen through another mount of the
//!   filesystem (a bind mount of part of a tree) is followed to where the trees' mounts
//!   show it. Where it cannot be placed, every tree's generation moves. Its last close
//!   is an event. Loop devices' backing files count as open for writing.
//! - Changes made before a tree was first asked about: the first question registers it,
//!   and a sync that records a generation walked the tree after asking.
//! - Changes while no doppel process ran: a generation's id carries the watch's random id,
//!   so nothing recorded by another process matches. It also carries the tree's root
//!   directory (its handle), so another tree at the same path, or another source synced
//!   into the same copy, never matches either.
//! - A filesystem mounted inside a tree is not watched: such a tree gets no generation.
//! - Not covered: a file hard-linked into two trees, written through the other's path;
//!   processes doppel may not inspect (marked not dumpable).
//!
//! Each tree also remembers where it changed (the directories events named, and the names
//! in them, with the generation each change made): [`Watch::changed_since`] tells a
//! sync's source scan what to read again since the generation its last scan started at.
//! Events lost or not placed make that unknown until the tree's next generation.
//!
//! A directory that can no longer be resolved was deleted: its deletion (or that of an
//! ancestor) is queued after the event and is reported against a directory that still
//! exists, in the same tree.

use std::collections::HashMap;
use std::fs;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use super::{fsx, FastMap};

/// `statfs.f_type` of the filesystems watched: ext2/3/4 and XFS (btrfs has generations of
/// its own; others are walked).
const EXT4_SUPER_MAGIC: i64 = 0xEF53;
const XFS_SUPER_MAGIC: i64 = 0x5846_5342;

/// Above this many directories remembered, the cache of their paths starts again.
const CACHED_DIRS: usize = 65_536;
/// How many levels up a directory too deep to be told looks for an ancestor that can be
/// (each look is a few syscalls, once per directory; a tree can be deeper than that).
const DEEP_LOOKS: usize = 4096;

/// How many times a handle is resolved before it counts as one that cannot be.
const RESOLVE_TRIES: usize = 4;

/// Above this many places remembered as changed in one tree, it forgets them (the next
/// sync of it walks it whole, which costs little more than reading that many places
/// again). About 2 MB per tree at most.
const CHANGED_PLACES: usize = 20_000;

/// Changes under trees, counted per tree (see the module's documentation).
pub struct Watch {
    inner: Arc<Inner>,
}

struct Inner {
    fd: OwnedFd,
    /// This process's watch: generations are only comparable within it.
    id: String,
    state: Mutex<State>,
    stop: AtomicBool,
}

#[derive(Default)]
struct State {
    /// Each watched filesystem (its `f_fsid`): a directory of it to resolve handles with,
    /// and its device number (to find its open and mapped files).
    filesystems: HashMap<[u8; 8], (OwnedFd, u64)>,
    /// The mounts trees are seen through (a file found through another is not placed).
    mounts: Vec<i32>,
    /// The trees asked about (canonical paths).
    trees: FastMap<PathBuf, Tree>,
    /// Changes that could not be placed in one tree: every tree's generation includes it.
    everything: u64,
    /// Directory handles already resolved, and where they are (forgotten when a directory
    /// moves).
    dirs: FastMap<Vec<u8>, DirAt>,
}

/// Where a directory is.
#[derive(Clone)]
enum DirAt {
    Path(PathBuf),
    /// Somewhere below this directory: its own path is too long to be told (PATH_MAX),
    /// this is its deepest ancestor's that can be (shared by all the directories below).
    Below(Arc<Path>),
}

/// A tree asked about.
struct Tree {
    /// Its root directory's key (fsid, handle).
    key: Vec<u8>,
    /// Changes counted in it.
    count: u64,
    /// Where it changed (paths relative to its root: directories whose list changed, and
    /// what each change named), each with the tree's generation just after the change.
    changed: FastMap<PathBuf, u64>,
    /// Where it changed before this generation is not known.
    floor: u64,
}

/// The process's watch ([`Watch::shared`]), once started.
static SHARED: OnceLock<Option<Arc<Watch>>> = OnceLock::new();

/// What a watched filesystem's mark asks to hear of.
const MARK_MASK: u64 = libc::FAN_MODIFY
    | libc::FAN_ATTRIB
    | libc::FAN_CLOSE_WRITE
    | libc::FAN_CREATE
    | libc::FAN_DELETE
    | libc::FAN_RENAME
    | libc::FAN_ONDIR;

impl Watch {
    /// Before the filesystem mounted at `point` is unmounted (an image tree removed): the
    /// process's watch, if started, lets go of it. Each watched filesystem is held open by
    /// a directory of it, which would keep the unmount busy (a delete of an image tree a
    /// sync had looked at failed so). Its trees are watched no more; one asked about again
    /// is watched anew, from then on.
    pub fn release_shared(point: &Path) {
        if let Some(Some(watch)) = SHARED.get() {
            watch.inner.release(point);
        }
    }

    /// The process's watch, started on first use; `None` where fanotify cannot watch whole
    /// filesystems (not root, or a kernel without it).
    pub fn shared() -> Option<Arc<Watch>> {
        SHARED
            .get_or_init(|| match Watch::new() {
                Ok(w) => Some(Arc::new(w)),
                Err(e) => {
                    tracing::info!(error = %e, "no change watch: every sync walks its trees");
                    None
                }
            })
            .clone()
    }

    /// A new watch (its own fanotify group and reader thread), watching nothing yet.
    pub fn new() -> io::Result<Watch> {
        // With the object's own handle too: an event that names no directory (a write
        // through a handle, by the NFS server) cannot be placed, and is counted for all.
        let flags = libc::FAN_CLASS_NOTIF
            | libc::FAN_CLOEXEC
            | libc::FAN_NONBLOCK
            | libc::FAN_REPORT_DFID_NAME
            | libc::FAN_REPORT_FID;
        // SAFETY: plain syscall; the descriptor it returns is owned below.
        let fd = unsafe { libc::fanotify_init(flags, (libc::O_RDONLY | libc::O_CLOEXEC) as u32) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` was just returned open and is owned by nothing else.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let inner = Arc::new(Inner {
            fd,
            id: crate::ids::new_id(),
            state: Mutex::new(State::default()),
            stop: AtomicBool::new(false),
        });
        // Reads the queue as it fills (it holds 16,384 events; beyond, the kernel says it
        // overflowed, and every tree counts as changed).
        let reader = inner.clone();
        std::thread::Builder::new()
            .name("doppel-watch".into())
            .spawn(move || reader.run())?;
        Ok(Watch { inner })
    }

    /// The generation of the tree at `root`, and what it is comparable with (this watch,
    /// this root directory): it changes whenever something under `root` changes. `None`
    /// where the tree is not watched (then it must be walked).
    pub fn generation(&self, root: &Path) -> Option<(String, u64)> {
        let [g] = self.generations([root]);
        g
    }

    /// [`Watch::generation`] of several trees at once (one look at the processes' files,
    /// one read of the queue).
    pub fn generations<const N: usize>(&self, roots: [&Path; N]) -> [Option<(String, u64)>; N] {
        self.generations_looking(roots, true)
    }

    /// The generation of the tree at `root` as the earlier of two to be compared (a mark
    /// recorded now, compared with a generation read later): the changes queued so far,
    /// without the look at the processes' files. That look is needed only by the later
    /// question: a file written without events (mapped shared, open for writing) is
    /// either still mapped or open then, and that look moves the generation, or its last
    /// close since was an event. On a busy host the look is most of what a question costs.
    pub fn earlier_generation(&self, root: &Path) -> Option<(String, u64)> {
        let [g] = self.generations_looking([root], false);
        g
    }

    /// [`Watch::generations`], with the look at the processes' files only if `look`.
    fn generations_looking<const N: usize>(
        &self,
        roots: [&Path; N],
        look: bool,
    ) -> [Option<(String, u64)>; N] {
        let Ok(mut st) = self.inner.state.lock() else {
            return [(); N].map(|()| None);
        };
        // The mounts, read once for this look (`None`: not readable; then no tree is
        // watched, and no file seen through another mount is placed).
        let table = fsx::mounts().ok();
        let trees = roots.map(|root| {
            let root = fs::canonicalize(root).ok()?;
            if table.as_deref().is_none_or(|t| mounts_below(&root, t)) {
                return None;
            }
            let (key, mount) = key_of(&root).ok()?;
            if st.trees.get(&root).map(|t| &t.key) != Some(&key) {
                self.inner.track(&mut st, &root, &key, mount).ok()?;
            }
            Some((root, key))
        });
        // Open and mapped files first (a mapping gone after this look closed its file,
        // which the queue read next holds), without holding up the reader meanwhile.
        if look {
            let (devs, all) = (st.devs(), st.trees.keys().cloned().collect::<Vec<_>>());
            let mounts = st.mounts.clone();
            drop(st);
            let table = table.as_deref().unwrap_or_default();
            let seen = open_for_writing(&devs, &all, &mounts, table);
            st = match self.inner.state.lock() {
                Ok(st) => st,
                Err(_) => return [(); N].map(|()| None),
            };
            seen.placed.iter().for_each(|f| st.bump(f));
            if !seen.all_placed {
                st.unplaced();
            }
        }
        self.inner.drain(&mut st);
        trees.map(|tree| {
            let (root, key) = tree?;
            // (Gone meanwhile: it is another tree, or none, now.)
            let t = st.trees.get(&root)?;
            Some((self.inner.id_of(&key), st.everything + t.count))
        })
    }

    /// Where the tree at `root` changed since its generation `generation` (as
    /// [`Watch::generations`] gave it, with `id`), up to at least its last generation
    /// given: paths relative to `root`, of directories where entries were made, removed or
    /// renamed, and of every entry a change named (those, and entries written or whose
    /// metadata changed), so a scan may take an entry not named from its last scan, and
    /// the list of a directory not named too.
    /// `None` where that is not known (another watch or tree, events lost or not placed
    /// since): then the tree must be walked whole.
    pub fn changed_since(&self, root: &Path, id: &str, generation: u64) -> Option<Vec<PathBuf>> {
        let root = fs::canonicalize(root).ok()?;
        let st = self.inner.state.lock().ok()?;
        let t = st.trees.get(&root)?;
        if self.inner.id_of(&t.key) != id
            || generation < t.floor
            || generation > st.everything + t.count
        {
            return None;
        }
        Some(
            t.changed
                .iter()
                .filter(|(_, g)| **g > generation)
                .map(|(p, _)| p.clone())
                .collect(),
        )
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        self.inner.stop.store(true, Ordering::Relaxed);
        // Lets go of the filesystems now (each is held open by a directory): they can be
        // unmounted as soon as their last user is gone.
        if let Ok(mut st) = self.inner.state.lock() {
            *st = State::default();
        }
    }
}

impl Inner {
    /// What a generation of the tree whose root has `key` is comparable with.
    fn id_of(&self, key: &[u8]) -> String {
        format!("{}:{}", self.id, hex::encode(key))
    }

    fn run(&self) {
        while !self.stop.load(Ordering::Relaxed) {
            let mut poll = libc::pollfd {
                fd: self.fd.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: one pollfd, on a descriptor this struct owns. (Half a second: how
            // long a dropped watch's thread lingers.)
            if unsafe { libc::poll(&mut poll, 1, 500) } > 0 {
                if let Ok(mut st) = self.state.lock() {
                    self.drain(&mut st);
                }
            }
        }
    }

    /// Lets go of the filesystem mounted at `point` (see [`Watch::release_shared`]).
    fn release(&self, point: &Path) {
        let Ok(dir) = crate::engine::fsx::open_dir(point) else {
            return;
        };
        // SAFETY: fstatfs fills the zeroed struct it is given.
        let mut sfs: libc::statfs = unsafe { std::mem::zeroed() };
        if unsafe { libc::fstatfs(dir.as_raw_fd(), &mut sfs) } != 0 {
            return;
        }
        let fsid = fsid_bytes(&sfs);
        let Ok(mut st) = self.state.lock() else {
            return;
        };
        if st.filesystems.remove(&fsid).is_none() {
            return;
        }
        let on_it = |key: &[u8]| key.get(..8) == Some(&fsid[..]);
        st.trees.retain(|_, t| !on_it(&t.key));
        st.dirs.retain(|key, _| !on_it(key));
        // (Its mark would go with the unmount; removed now, no event of it comes after.)
        if let Ok(path) = std::ffi::CString::new(point.as_os_str().as_bytes()) {
            // SAFETY: plain syscall on descriptors and a C string we own.
            unsafe {
                libc::fanotify_mark(
                    self.fd.as_raw_fd(),
                    libc::FAN_MARK_REMOVE | libc::FAN_MARK_FILESYSTEM,
                    MARK_MASK,
                    libc::AT_FDCWD,
                    path.as_ptr(),
                )
            };
        }
    }

    /// Registers the tree at `root` (canonical; `key`: its root's), watching its
    /// filesystem from now on.
    fn track(&self, st: &mut State, root: &Path, key: &[u8], mount_id: i32) -> io::Result<()> {
        let dir = crate::engine::fsx::open_dir(root)?;
        // SAFETY: fstatfs fills the zeroed struct it is given.
        let mut sfs: libc::statfs = unsafe { std::mem::zeroed() };
        if unsafe { libc::fstatfs(dir.as_raw_fd(), &mut sfs) } != 0 {
            return Err(io::Error::last_os_error());
        }
        let kind = sfs.f_type as i64;
        if kind != EXT4_SUPER_MAGIC && kind != XFS_SUPER_MAGIC {
            return Err(io::Error::other("not a watched filesystem"));
        }
        let fsid = fsid_bytes(&sfs);
        if let std::collections::hash_map::Entry::Vacant(slot) = st.filesystems.entry(fsid) {
            let mask = MARK_MASK;
            let path = std::ffi::CString::new(root.as_os_str().as_bytes())?;
            // SAFETY: plain syscall on descriptors and a C string we own.
            let r = unsafe {
                libc::fanotify_mark(
                    self.fd.as_raw_fd(),
                    libc::FAN_MARK_ADD | libc::FAN_MARK_FILESYSTEM,
                    mask,
                    libc::AT_FDCWD,
                    path.as_ptr(),
                )
            };
            if r != 0 {
                return Err(io::Error::last_os_error());
            }
            let dev = fs::metadata(root)?.dev();
            slot.insert((dir, dev));
        }
        // Directories are named through the first tree's mount: a tree seen through
        // another mount (a bind mount elsewhere) would be named otherwise, and is walked.
        let (mount, _) = &st.filesystems[&fsid];
        if key.get(..8) != Some(&fsid[..])
            || resolve(mount, &key[8..])
                .ok()
                .flatten()
                .map(|(p, _)| p)
                .as_deref()
                != Some(root)
        {
            return Err(io::Error::other("the tree is named otherwise by its mount"));
        }
        if !st.mounts.contains(&mount_id) {
            st.mounts.push(mount_id);
        }
        let count = st.trees.get(root).map_or(0, |t| t.count);
        st.trees.insert(
            root.to_path_buf(),
            Tree {
                key: key.to_vec(),
                count,
                changed: FastMap::default(),
                // Nothing is known of what changed before now.
                floor: st.everything + count,
            },
        );
        Ok(())
    }

    /// Reads the events queued when it starts (not more: under a steady stream of changes
    /// it would never end) and counts each against its tree.
    fn drain(&self, st: &mut State) {
        let mut queued: libc::c_int = 0;
        // SAFETY: FIONREAD writes the queue's length in bytes into the int it is given.
        if unsafe { libc::ioctl(self.fd.as_raw_fd(), libc::FIONREAD, &mut queued) } != 0 {
            st.lost();
            return;
        }
        let mut left = usize::try_from(queued).unwrap_or(0);
        let mut buf = vec![0u8; 64 * 1024];
        while left > 0 {
            let n = match rustix::io::read(&self.fd, &mut buf) {
                Ok(0) => return,
                Ok(n) => n,
                Err(rustix::io::Errno::INTR) => continue,
                Err(rustix::io::Errno::AGAIN) => return,
                Err(_) => {
                    // The queue cannot be read: nothing it held is known.
                    st.lost();
                    return;
                }
            };
            left = left.saturating_sub(n);
            let mut events = &buf[..n];
            while !events.is_empty() {
                match next_event(events) {
                    Some((event, rest)) => {
                        st.count(&event);
                        events = rest;
                    }
                    None => {
                        // Not an event this code knows how to read: what it said is lost.
                        st.lost();
                        break;
                    }
                }
            }
        }
    }
}

impl State {
    /// Counts one event against the trees of the paths it names.
    fn count(&mut self, event: &Event<'_>) {
        if event.mask & libc::FAN_Q_OVERFLOW != 0 {
            self.lost();
            return;
        }
        if event.dirs.is_empty() {
            // A change made through a handle (the NFS server's), with no directory to
            // tell; or, for a bare ATTRIB, an inode's link count changing (its name is an
            // event in its directory). Placed by the object's own handle where it can be.
            let place = match &event.object {
                Some(key) if event.mask == libc::FAN_ATTRIB => self.object_path(key),
                _ => Err(()),
            };
            match place {
                Ok(Some(path)) => self.bump(&path),
                // Unlinked: in no tree.
                Ok(None) => {}
                Err(()) => self.unplaced(),
            }
            return;
        }
        let on_dir = event.mask & libc::FAN_ONDIR != 0;
        let dirent = event.mask & (libc::FAN_CREATE | libc::FAN_DELETE | libc::FAN_RENAME) != 0;
        for (dir, name) in &event.dirs {
            match self.dir_path(dir) {
                Ok(Some(DirAt::Below(above))) => self.bump_below(&above),
                Ok(Some(DirAt::Path(path))) => {
                    if name.is_empty() || *name == b"." {
                        self.bump(&path);
                        continue;
                    }
                    // The directory's list changed only where an entry was made, removed
                    // or renamed; a write or a metadata change names the entry alone.
                    if dirent {
                        self.bump(&path);
                    }
                    // The event may be about a tree itself (created, removed, moved,
                    // changed), reported in its parent, or about a directory above trees.
                    let named = path.join(std::ffi::OsStr::from_bytes(name));
                    self.bump(&named);
                    if on_dir && dirent {
                        let everything = self.everything;
                        let renamed = event.mask & libc::FAN_RENAME != 0;
                        for (root, t) in self.trees.iter_mut() {
                            if root.starts_with(&named) && *root != named {
                                // Moved or deleted from above: events meanwhile named it
                                // otherwise.
                                t.count += 1;
                                t.forget(everything);
                            } else if renamed && named.starts_with(root) {
                                // A directory moved within, into or out of it: changes
                                // remembered under it (by the path they were read at,
                                // maybe after it moved, maybe before it moved back) may
                                // name another place than where they happened.
                                t.forget(everything);
                            }
                        }
                    }
                }
                // Deleted since: its deletion is reported in a directory that exists.
                Ok(None) => {}
                Err(()) => self.unplaced(),
            }
        }
        if on_dir && event.mask & libc::FAN_RENAME != 0 {
            // Every path remembered under the directory moved is wrong now.
            self.dirs.clear();
        }
    }

    /// Events were lost: every tree changed, and any directory may have moved.
    fn lost(&mut self) {
        self.unplaced();
        self.dirs.clear();
    }

    /// A change that could not be placed in one tree: it counts for every tree, and where
    /// each tree changed before is not known any more.
    fn unplaced(&mut self) {
        self.everything += 1;
        let generation = self.everything;
        self.trees.values_mut().for_each(|t| t.forget(generation));
    }

    fn devs(&self) -> Vec<u64> {
        self.filesystems.values().map(|(_, dev)| *dev).collect()
    }

    /// The path of the file or directory with `key` (fsid then handle), if it has one
    /// that names it (a file reached by handle alone may have none: `Err`); `None` if it
    /// is linked nowhere.
    fn object_path(&self, key: &[u8]) -> Result<Option<PathBuf>, ()> {
        // (A name being renamed or removed can name something else for a moment, while
        // the file is being unlinked or another of its names stays.)
        resolve_settled(self.mount_of(key)?, &key[8..], |found| match found {
            None => Some(None),
            Some((path, (dev, ino))) => fs::symlink_metadata(&path)
                .is_ok_and(|m| m.dev() == dev && m.ino() == ino)
                .then_some(Some(path)),
        })
        .ok_or(())
    }

    /// The directory to resolve handles of the filesystem `key` (fsid then handle) is on.
    fn mount_of(&self, key: &[u8]) -> Result<&OwnedFd, ()> {
        let fsid: [u8; 8] = key.get(..8).and_then(|f| f.try_into().ok()).ok_or(())?;
        self.filesystems
            .get(&fsid)
            .map(|(mount, _)| mount)
            .ok_or(())
    }

    /// Counts a change at `path` against every tree holding it, and remembers it there.
    fn bump(&mut self, path: &Path) {
        let everything = self.everything;
        // (Every event goes up its path: cut at its slashes, without parsing components.)
        let bytes = path.as_os_str().as_bytes();
        let cuts = (1..bytes.len()).rev().filter(|&i| bytes[i] == b'/');
        let root = (bytes.len() > 1 && bytes[0] == b'/').then_some(Path::new("/"));
        let ancestors = std::iter::once(bytes.len())
            .chain(cuts)
            .map(|i| Path::new(std::ffi::OsStr::from_bytes(&bytes[..i])))
            .chain(root);
        for dir in ancestors {
            if let Some(t) = self.trees.get_mut(dir) {
                t.count += 1;
                let generation = everything + t.count;
                if t.changed.len() >= CHANGED_PLACES {
                    t.forget(everything);
                } else {
                    let rel = path.strip_prefix(dir).unwrap_or(path);
                    t.changed.insert(rel.to_path_buf(), generation);
                }
            }
        }
    }

    /// Where the directory with `key` (fsid then handle) is; `None` if it is gone; `Err`
    /// where that cannot be told.
    fn dir_path(&mut self, key: &[u8]) -> Result<Option<DirAt>, ()> {
        if let Some(at) = self.dirs.get(key) {
            return Ok(Some(at.clone()));
        }
        let at = match resolve_settled(self.mount_of(key)?, &key[8..], Some) {
            Some(found) => found.map(|(path, _)| DirAt::Path(path)),
            None => Some(DirAt::Below(self.printable_ancestor(key).ok_or(())?)),
        };
        if let Some(at) = &at {
            self.remember(key.to_vec(), at.clone());
        }
        Ok(at)
    }

    /// For the directory with `key` whose path is too long to be told: its deepest ancestor
    /// whose path can be, as the directories above it tell (resolved already, or read
    /// now); the directories passed on the way up are remembered below it too. `None` if
    /// it is gone, or no directory up to [`DEEP_LOOKS`] levels above says.
    fn printable_ancestor(&mut self, key: &[u8]) -> Option<Arc<Path>> {
        let mut dir = open_handle(self.mount_of(key).ok()?, &key[8..]).ok()??;
        let path_of = |fd: &OwnedFd| fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd()));
        if !path_of(&dir).is_err_and(|e| e.raw_os_error() == Some(libc::ENAMETOOLONG)) {
            return None;
        }
        let mut passed = Vec::new();
        for _ in 0..DEEP_LOOKS {
            dir = rustix::fs::openat(
                &dir,
                "..",
                rustix::fs::OFlags::PATH
                    | rustix::fs::OFlags::DIRECTORY
                    | rustix::fs::OFlags::CLOEXEC,
                rustix::fs::Mode::empty(),
            )
            .ok()?;
            let up = handle_of(dir.as_raw_fd(), c"", libc::AT_EMPTY_PATH)
                .ok()
                .map(|(handle, _)| [&key[..8], &handle[..]].concat());
            let found = match up.as_ref().and_then(|k| self.dirs.get(k)) {
                Some(DirAt::Path(p)) => Arc::from(p.as_path()),
                Some(DirAt::Below(p)) => p.clone(),
                None => match path_of(&dir) {
                    Err(e) if e.raw_os_error() == Some(libc::ENAMETOOLONG) => {
                        passed.extend(up);
                        continue;
                    }
                    found => Arc::from(found.ok()?.as_path()),
                },
            };
            for k in passed {
                self.remember(k, DirAt::Below(found.clone()));
            }
            return Some(found);
        }
        None
    }

    fn remember(&mut self, key: Vec<u8>, at: DirAt) {
        if self.dirs.len() >= CACHED_DIRS {
            self.dirs.clear();
        }
        self.dirs.insert(key, at);
    }

    /// A change somewhere below `dir`, in a directory whose path cannot be told: counted
    /// in the trees holding `dir`, which forget where they changed.
    fn bump_below(&mut self, dir: &Path) {
        let everything = self.everything;
        for (root, t) in self.trees.iter_mut() {
            if dir.starts_with(root) {
                t.count += 1;
                t.forget(everything);
            }
        }
    }
}

impl Tree {
    /// Where it changed before `everything` (the changes counted for all trees) moved on is
    /// not known any more.
    fn forget(&mut self, everything: u64) {
        self.changed.clear();
        self.floor = everything + self.count;
    }
}

/// One event: its mask, and the directories (fsid then handle) and names it names.
struct Event<'a> {
    mask: u64,
    dirs: Vec<(Vec<u8>, &'a [u8])>,
    /// The object's own key (fsid then handle).
    object: Option<Vec<u8>>,
}

/// The first event in `buf` and what follows it; `None` if it is not one.
fn next_event(buf: &[u8]) -> Option<(Event<'_>, &[u8])> {
    let meta = std::mem::size_of::<libc::fanotify_event_metadata>();
    if buf.len() < meta || buf[4] != libc::FANOTIFY_METADATA_VERSION {
        return None;
    }
    let event_len = u32::from_ne_bytes(buf[0..4].try_into().ok()?) as usize;
    let metadata_len = u16::from_ne_bytes(buf[6..8].try_into().ok()?) as usize;
    let mask = u64::from_ne_bytes(buf[8..16].try_into().ok()?);
    if metadata_len < meta || event_len < metadata_len || event_len > buf.len() {
        return None;
    }
    let mut event = Event {
        mask,
        dirs: Vec::new(),
        object: None,
    };
    let mut info = &buf[metadata_len..event_len];
    while info.len() >= 4 {
        let kind = info[0];
        let len = u16::from_ne_bytes([info[2], info[3]]) as usize;
        if len < 4 || len > info.len() {
            return None;
        }
        let record = &info[4..len];
        if matches!(
            kind,
            libc::FAN_EVENT_INFO_TYPE_DFID_NAME
                | libc::FAN_EVENT_INFO_TYPE_DFID
                | libc::FAN_EVENT_INFO_TYPE_OLD_DFID_NAME
                | libc::FAN_EVENT_INFO_TYPE_NEW_DFID_NAME
        ) {
            event
                .dirs
                .push(dir_record(record, kind != libc::FAN_EVENT_INFO_TYPE_DFID)?);
        } else if kind == libc::FAN_EVENT_INFO_TYPE_FID {
            event.object = Some(dir_record(record, false)?.0);
        }
        info = &info[len..];
    }
    Some((event, &buf[event_len..]))
}

/// A directory record: fsid (8 bytes), `struct file_handle`, then (`named`) a name ending
/// in NUL. The key is the fsid, the handle's type and its bytes.
fn dir_record(record: &[u8], named: bool) -> Option<(Vec<u8>, &[u8])> {
    let bytes = u32::from_ne_bytes(record.get(8..12)?.try_into().ok()?) as usize;
    let end = 16 + bytes;
    let mut key = record.get(..8)?.to_vec();
    key.extend_from_slice(record.get(12..end)?);
    let name = if named {
        let rest = record.get(end..)?;
        &rest[..rest.iter().position(|b| *b == 0).unwrap_or(rest.len())]
    } else {
        &[][..]
    };
    Some((key, name))
}

fn fsid_bytes(sfs: &libc::statfs) -> [u8; 8] {
    // SAFETY: `fsid_t` is two `int`s (8 bytes, no padding), read as bytes.
    unsafe { std::mem::transmute_copy::<libc::fsid_t, [u8; 8]>(&sfs.f_fsid) }
}

/// The key of the directory at `path` (its filesystem's fsid, its handle's type (4 bytes)
/// and its handle's bytes, as events name directories), and the mount it is seen through.
fn key_of(path: &Path) -> io::Result<(Vec<u8>, i32)> {
    let (handle, mount_id) = handle_at(path)?;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes())?;
    // SAFETY: statfs fills the zeroed struct it is given.
    let mut sfs: libc::statfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statfs(c.as_ptr(), &mut sfs) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let mut key = fsid_bytes(&sfs).to_vec();
    key.extend_from_slice(&handle);
    Ok((key, mount_id))
}

/// The handle of what `path` names (its type, 4 bytes, then its bytes), and the id of the
/// mount it is seen through.
fn handle_at(path: &Path) -> io::Result<(Vec<u8>, i32)> {
    let c = std::ffi::CString::new(path.as_os_str().as_bytes())?;
    handle_of(libc::AT_FDCWD, &c, 0)
}

/// [`handle_at`] of `path` from the directory `dir` (with `flags`: `AT_EMPTY_PATH` for
/// `dir` itself).
fn handle_of(
    dir: libc::c_int,
    path: &std::ffi::CStr,
    flags: libc::c_int,
) -> io::Result<(Vec<u8>, i32)> {
    // `struct file_handle` with room for the largest handle (MAX_HANDLE_SZ, 128 bytes),
    // as u32s for its alignment.
    let mut buf = [0u32; 2 + 32];
    buf[0] = 128;
    let mut mount_id = 0;
    // SAFETY: `buf` is a `struct file_handle` with `handle_bytes` set to its room.
    let r = unsafe {
        libc::name_to_handle_at(
            dir,
            path.as_ptr(),
            buf.as_mut_ptr().cast(),
            &mut mount_id,
            flags,
        )
    };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    let bytes = (buf[0] as usize).min(128);
    let raw: Vec<u8> = buf.iter().flat_map(|w| w.to_ne_bytes()).collect();
    Ok((raw[4..8 + bytes].to_vec(), mount_id))
}

/// The path of what `handle` (its type then its bytes) names, through the mount of
/// `mount`, and its device and inode (a file's path may name another file by now); `None`
/// if it is linked nowhere.
fn resolve(mount: &OwnedFd, handle: &[u8]) -> io::Result<Option<(PathBuf, (u64, u64))>> {
    let Some(fd) = open_handle(mount, handle)? else {
        return Ok(None);
    };
    let st = crate::engine::fsx::stat_fd(std::os::fd::AsFd::as_fd(&fd))?;
    if st.st_nlink == 0 {
        return Ok(None);
    }
    let path = fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd()))?;
    Ok(Some((path, (st.st_dev, st.st_ino))))
}

/// [`resolve`], tried up to [`RESOLVE_TRIES`] times, 200 µs apart, until it gives what
/// `settled` takes: a directory being renamed, or a file being unlinked, can fail to
/// resolve (XFS: ENOMEM) for a moment. `None` if it never does.
fn resolve_settled<T>(
    mount: &OwnedFd,
    handle: &[u8],
    settled: impl Fn(Option<(PathBuf, (u64, u64))>) -> Option<T>,
) -> Option<T> {
    for i in 0..RESOLVE_TRIES {
        if i > 0 {
            std::thread::sleep(std::time::Duration::from_micros(200));
        }
        match resolve(mount, handle) {
            // (Not a passing state: tried no more.)
            Err(e) if e.raw_os_error() == Some(libc::ENAMETOOLONG) => return None,
            found => {
                if let Some(taken) = found.ok().and_then(&settled) {
                    return Some(taken);
                }
            }
        }
    }
    None
}

/// What `handle` (its type then its bytes) names, opened (`O_PATH`) through the mount of
/// `mount`; `None` if it is gone.
fn open_handle(mount: &OwnedFd, handle: &[u8]) -> io::Result<Option<OwnedFd>> {
    let bytes = handle.len().checked_sub(4).filter(|b| *b <= 128);
    let bytes = bytes.ok_or_else(|| io::Error::from_raw_os_error(libc::EINVAL))?;
    let mut buf = [0u32; 2 + 32];
    buf[0] = bytes as u32;
    // SAFETY: writes `handle` (at most 4 + 128 bytes) into the u32 buffer's bytes after
    // `handle_bytes`, within its 136 bytes.
    unsafe {
        std::ptr::copy_nonoverlapping(
            handle.as_ptr(),
            buf.as_mut_ptr().cast::<u8>().add(4),
            handle.len(),
        );
    }
    // SAFETY: `buf` is a complete `struct file_handle`; the descriptor is owned below.
    let fd = unsafe {
        libc::open_by_handle_at(
            mount.as_raw_fd(),
            buf.as_mut_ptr().cast(),
            libc::O_PATH | libc::O_CLOEXEC,
        )
    };
    if fd < 0 {
        let e = io::Error::last_os_error();
        return match e.raw_os_error() {
            Some(libc::ESTALE) | Some(libc::ENOENT) => Ok(None),
            _ => Err(e),
        };
    }
    // SAFETY: just opened, owned by nothing else.
    Ok(Some(unsafe { OwnedFd::from_raw_fd(fd) }))
}

/// Whether a filesystem is mounted somewhere below `root` (its changes are not watched).
fn mounts_below(root: &Path, table: &[fsx::Mount]) -> bool {
    table
        .iter()
        .any(|m| m.point != root && m.point.starts_with(root))
}

/// The files of watched filesystems that some process maps shared or holds open for
/// writing (changes to those may raise no event).
struct OpenFiles {
    /// Where they are here.
    placed: Vec<PathBuf>,
    /// Whether every one of them was placed (if not, every tree counts as changed).
    all_placed: bool,
}

/// The files on `devs` that some process maps shared or holds open for writing (see
/// [`OpenFiles`]). `trees`: the trees watched; `mounts`: the mounts they are seen through;
/// `table`: every mount.
fn open_for_writing(
    devs: &[u64],
    trees: &[PathBuf],
    mounts: &[i32],
    table: &[fsx::Mount],
) -> OpenFiles {
    let mut open = OpenFiles {
        placed: Vec::new(),
        all_placed: true,
    };
    if devs.is_empty() {
        return open;
    }
    let (mut found, all_seen) = processes_files(devs);
    open.all_placed &= all_seen;
    // Loop devices write their backing files from the kernel, with no event.
    for dev in fs::read_dir("/sys/block").into_iter().flatten().flatten() {
        let loop_dir = dev.path().join("loop");
        let (Ok(file), Ok(ro)) = (
            fs::read_to_string(loop_dir.join("backing_file")),
            fs::read_to_string(dev.path().join("ro")),
        ) else {
            continue;
        };
        let file = PathBuf::from(file.trim_end_matches('\n'));
        match fs::metadata(&file) {
            Ok(m) if ro.trim() == "0" && devs.contains(&m.dev()) => {
                found.push(Seen {
                    dev: m.dev(),
                    ino: m.ino(),
                    link: loop_dir.join("backing_file"),
                    path: file,
                    root: PathBuf::from("/"),
                });
            }
            _ => {}
        }
    }
    for seen in found {
        let at = place(seen.dev, seen.ino, &seen.path, &seen.root, trees);
        if at.is_empty() {
            if seen.names_another() {
                // Closed, unmapped, renamed or unlinked since it was seen: not its name any
                // more. A rename is an event; a file still open is found by its new name
                // at the next look.
                continue;
            }
            open.all_placed = false;
        }
        for p in at {
            if trees.iter().any(|t| p.starts_with(t)) {
                open.placed.push(p);
                continue;
            }
            match mount_of(&p) {
                Some(m) if mounts.contains(&m) => open.placed.push(p),
                // Found outside every tree, through a mount trees are not seen through (a
                // bind mount of part of one): it may still be a tree's file, where that
                // mount's directory is seen through theirs.
                Some(m) => match through_mounts(&p, seen.dev, seen.ino, m, mounts, table) {
                    Some(here) => open.placed.extend(here),
                    None => open.all_placed = false,
                },
                // Unlinked or renamed since (an event, read next).
                None if fs::symlink_metadata(&p).is_err() => {}
                None => open.all_placed = false,
            }
        }
    }
    open
}

/// Where the file `dev`/`ino`, found at `path` through the mount `mount`, is seen through
/// the mounts `mounts` (`table`: every mount): its path within its filesystem (the mount's
/// root, then its path below the mount point), below each of theirs that shows that
/// directory. `None` if through none of them.
fn through_mounts(
    path: &Path,
    dev: u64,
    ino: u64,
    mount: i32,
    mounts: &[i32],
    table: &[fsx::Mount],
) -> Option<Vec<PathBuf>> {
    let by = table.iter().find(|m| m.id == mount)?;
    let within = by.root.join(path.strip_prefix(&by.point).ok()?);
    let here: Vec<PathBuf> = table
        .iter()
        .filter(|m| mounts.contains(&m.id))
        .filter_map(|m| Some(m.point.join(within.strip_prefix(&m.root).ok()?)))
        .filter(|p| fs::symlink_metadata(p).is_ok_and(|m| m.dev() == dev && m.ino() == ino))
        .collect();
    (!here.is_empty()).then_some(here)
}

/// The id of the mount `path` is seen through.
fn mount_of(path: &Path) -> Option<i32> {
    handle_at(path).ok().map(|(_, mount_id)| mount_id)
}

/// A file open for writing or mapped shared, as a process's entry in `/proc` shows it.
struct Seen {
    dev: u64,
    ino: u64,
    /// Its path as printed, for the process's root `root`.
    path: PathBuf,
    root: PathBuf,
    /// The link in `/proc` it was read from (a descriptor's, a mapping's), read again
    /// to tell whether that path was still its name.
    link: PathBuf,
}

impl Seen {
    /// Whether its link in `/proc` names another path, or another file, than when it was
    /// seen (or nothing now).
    fn names_another(&self) -> bool {
        fs::read_link(&self.link).ok().as_ref() != Some(&self.path)
            || fs::metadata(&self.link).is_ok_and(|m| (m.dev(), m.ino()) != (self.dev, self.ino))
    }
}

/// Above this many processes, `/proc` is read on several threads: each process costs a
/// dozen syscalls or so (its mappings, its descriptors, a stat of each), all in the kernel,
/// and a host running many containers has thousands of processes.
const PROCESSES_PER_THREAD: usize = 256;

/// The files on `devs` that some process maps shared or holds open for writing, as
/// [`process_files`] finds them, and whether every process could be looked at.
fn processes_files(devs: &[u64]) -> (Vec<Seen>, bool) {
    let Ok(proc) = fsx::open_dir(Path::new("/proc")) else {
        return (Vec::new(), false);
    };
    let Ok(pids) = fsx::list_dir(proc.as_fd()) else {
        return (Vec::new(), false);
    };
    let pids: Vec<Vec<u8>> = pids
        .into_iter()
        .filter(|name| name.iter().all(u8::is_ascii_digit))
        .collect();
    let look = |pids: &[Vec<u8>]| {
        let mut found = Vec::new();
        let mut all_seen = true;
        // (One buffer for every process's mappings.)
        let mut buf = Vec::new();
        for pid in pids {
            let looked = process_files(proc.as_fd(), pid, devs, &mut found, &mut buf);
            match looked.map_err(|e| e.raw_os_error()) {
                // Gone meanwhile.
                Ok(()) | Err(Some(libc::ENOENT | libc::ESRCH)) => {}
                // Not ours to look at (a process marked not dumpable, as some sandboxes'
                // init is): its writes through a mapping or Linux AIO are not seen.
                Err(Some(libc::EACCES | libc::EPERM)) => {}
                Err(_) => all_seen = false,
            }
        }
        (found, all_seen)
    };
    // (The cores are asked only where more than one thread is wanted: most looks.)
    let wanted = pids.len().div_ceil(PROCESSES_PER_THREAD);
    if wanted <= 1 {
        return look(&pids);
    }
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get().clamp(1, 4));
    let threads = threads.min(wanted);
    if threads == 1 {
        return look(&pids);
    }
    let parts = pids.chunks(pids.len().div_ceil(threads));
    std::thread::scope(|s| {
        let looks: Vec<_> = parts.map(|part| s.spawn(move || look(part))).collect();
        looks
            .into_iter()
            .fold((Vec::new(), true), |(mut found, all), l| match l.join() {
                Ok((more, seen)) => {
                    found.extend(more);
                    (found, all && seen)
                }
                Err(_) => (found, false),
            })
    })
}

/// Adds the files of the process `pid` (its directory in `proc`, `/proc`) on `devs` that
/// it maps shared or holds open for writing. Everything is read relative to the process's
/// directory, opened once: `/proc` resolves a process at each path that names it.
fn process_files(
    proc: BorrowedFd<'_>,
    pid: &[u8],
    devs: &[u64],
    found: &mut Vec<Seen>,
    buf: &mut Vec<u8>,
) -> io::Result<()> {
    use rustix::fs::{openat, statat, AtFlags, Mode, OFlags};
    let pid = std::ffi::OsStr::from_bytes(pid);
    let dir = openat(
        proc,
        pid,
        OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )?;
    // Its `/proc` path, for the links a `Seen` keeps (made only for what is found).
    let at = |rel: &[u8]| -> PathBuf {
        let mut p = PathBuf::from("/proc");
        p.push(pid);
        p.push(std::ffi::OsStr::from_bytes(rel));
        p
    };
    let mut root: Option<PathBuf> = None;
    let root_of = |root: &mut Option<PathBuf>| -> io::Result<PathBuf> {
        if root.is_none() {
            let link = rustix::fs::readlinkat(&dir, "root", Vec::new())?;
            *root = Some(PathBuf::from(std::ffi::OsString::from_vec(
                link.into_bytes(),
            )));
        }
        Ok(root.clone().unwrap_or_default())
    };
    // (A file in no directory, unlinked while open, is in no tree: a link made to it
    // again is an event.)
    let unlinked = |rel: &[u8]| {
        statat(&dir, std::ffi::OsStr::from_bytes(rel), AtFlags::empty())
            .is_ok_and(|st| st.st_nlink == 0)
    };
    let maps = openat(
        &dir,
        "maps",
        OFlags::RDONLY | OFlags::CLOEXEC,
        Mode::empty(),
    )?;
    let mut mapped = Vec::new();
    if !shared_file_mappings(&maps, devs, &mut mapped, buf)? {
        // (A kernel before 6.11: its mappings as text, all of them.)
        buf.clear();
        io::Read::read_to_end(&mut fs::File::from(maps), buf)?;
        for line in buf.split(|b| *b == b'\n') {
            if let Some((range, dev, ino, path)) = shared_mapping(line, devs) {
                let path = fsx::unescape_proc_path(path);
                mapped.push(([&b"map_files/"[..], range].concat(), dev, ino, path));
            }
        }
    }
    for (link, dev, ino, path) in mapped {
        if unlinked(&link) {
            continue;
        }
        found.push(Seen {
            dev,
            ino,
            path: PathBuf::from(std::ffi::OsString::from_vec(path)),
            root: root_of(&mut root)?,
            link: at(&link),
        });
    }
    let fds = openat(
        &dir,
        "fd",
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )?;
    for name in fsx::list_dir(fds.as_fd())? {
        let fd_name = std::ffi::OsStr::from_bytes(&name);
        // The link's own mode is the descriptor's access (`lr-x`: open to read only, `l-wx`
        // or `lrwx`: for writing): no descriptor open only to read (most are) is followed,
        // and none needs its `fdinfo` read.
        let Ok(link) = statat(&fds, fd_name, AtFlags::SYMLINK_NOFOLLOW) else {
            continue;
        };
        if link.st_mode & libc::S_IWUSR == 0 {
            continue;
        }
        // (The link followed: the open file itself.)
        let Ok(st) = statat(&fds, fd_name, AtFlags::empty()) else {
            continue;
        };
        let is_file = st.st_mode & libc::S_IFMT == libc::S_IFREG;
        if !devs.contains(&st.st_dev) || !is_file || st.st_nlink == 0 {
            continue;
        }
        let Ok(path) = rustix::fs::readlinkat(&fds, fd_name, Vec::new()) else {
            continue;
        };
        found.push(Seen {
            dev: st.st_dev,
            ino: st.st_ino,
            path: PathBuf::from(std::ffi::OsString::from_vec(path.into_bytes())),
            root: root_of(&mut root)?,
            link: at(&[&b"fd/"[..], &name].concat()),
        });
    }
    Ok(())
}

/// `struct procmap_query` (linux/fs.h): one question about a process's mappings, asked
/// of its `maps` file (`PROCMAP_QUERY`, Linux 6.11).
#[repr(C)]
#[derive(Default)]
struct ProcmapQuery {
    size: u64,
    query_flags: u64,
    query_addr: u64,
    vma_start: u64,
    vma_end: u64,
    vma_flags: u64,
    vma_page_size: u64,
    vma_offset: u64,
    inode: u64,
    dev_major: u32,
    dev_minor: u32,
    vma_name_size: u32,
    build_id_size: u32,
    vma_name_addr: u64,
    build_id_addr: u64,
}

/// `_IOWR('f', 17, struct procmap_query)`.
const PROCMAP_QUERY: libc::c_ulong = 0xC068_6611;
/// The mapping may be shared (`VM_MAYSHARE`: the `s` of `maps`).
const QUERY_VMA_SHARED: u64 = 0x08;
/// The mapping at the address, or the next one after it.
const QUERY_COVERING_OR_NEXT_VMA: u64 = 0x10;
const QUERY_FILE_BACKED_VMA: u64 = 0x20;

/// Where the kernel has no `PROCMAP_QUERY`, so that it is not asked again.
static NO_PROCMAP_QUERY: AtomicBool = AtomicBool::new(false);

/// Adds to `out` the mappings of `maps` (a process's `maps` file) that are shared and of a
/// file on `devs`: each one's `map_files/` link, device, inode and path. The kernel finds
/// them (`PROCMAP_QUERY`): a process with none costs one call, where its `maps` text
/// would print and this process parse every mapping it has (most of the time of a look at
/// a process). `name`: room for a path, reused. `false`: the kernel cannot answer (before
/// 6.11), nothing was added.
fn shared_file_mappings(
    maps: &OwnedFd,
    devs: &[u64],
    out: &mut Vec<(Vec<u8>, u64, u64, Vec<u8>)>,
    name: &mut Vec<u8>,
) -> io::Result<bool> {
    if NO_PROCMAP_QUERY.load(Ordering::Relaxed) {
        return Ok(false);
    }
    name.resize(libc::PATH_MAX as usize, 0);
    let mut addr = 0u64;
    loop {
        let mut q = ProcmapQuery {
            size: std::mem::size_of::<ProcmapQuery>() as u64,
            query_flags: QUERY_VMA_SHARED | QUERY_COVERING_OR_NEXT_VMA | QUERY_FILE_BACKED_VMA,
            query_addr: addr,
            vma_name_size: name.len() as u32,
            vma_name_addr: name.as_mut_ptr() as u64,
            ..Default::default()
        };
        // SAFETY: `q` is a `struct procmap_query` of the size it says; the name buffer
        // outlives the call and is as long as `vma_name_size` says.
        let r = unsafe { libc::ioctl(maps.as_raw_fd(), PROCMAP_QUERY, &mut q) };
        if r < 0 {
            let e = io::Error::last_os_error();
            return match e.raw_os_error() {
                // No mapping left; or no memory at all (a kernel thread, a process
                // exiting, which may still hold its descriptors), as its text says.
                Some(libc::ENOENT | libc::ESRCH) => Ok(true),
                Some(libc::ENOTTY | libc::EINVAL) if addr == 0 => {
                    NO_PROCMAP_QUERY.store(true, Ordering::Relaxed);
                    Ok(false)
                }
                _ => Err(e),
            };
        }
        let dev = libc::makedev(q.dev_major, q.dev_minor);
        if devs.contains(&dev) {
            // (The name's size counts its NUL.)
            let len = (q.vma_name_size as usize).saturating_sub(1).min(name.len());
            out.push((
                format!("map_files/{:x}-{:x}", q.vma_start, q.vma_end).into_bytes(),
                dev,
                q.inode,
                name[..len].to_vec(),
            ));
        }
        if q.vma_end <= addr {
            return Ok(true);
        }
        addr = q.vma_end;
    }
}

/// A `maps` line's address range, device, inode and path, if it maps a file shared (of
/// any protection: one mapped writable may have been made read-only since) on one of
/// `devs`.
fn shared_mapping<'a>(line: &'a [u8], devs: &[u64]) -> Option<(&'a [u8], u64, u64, &'a [u8])> {
    // address perms offset dev inode path
    let mut fields = line.splitn(6, |b| *b == b' ');
    let range = fields.next()?;
    if fields.next()?.get(3) != Some(&b's') {
        return None;
    }
    let _offset = fields.next()?;
    let (major, minor) = std::str::from_utf8(fields.next()?).ok()?.split_once(':')?;
    let dev = libc::makedev(
        u32::from_str_radix(major, 16).ok()?,
        u32::from_str_radix(minor, 16).ok()?,
    );
    if !devs.contains(&dev) {
        return None;
    }
    let ino = std::str::from_utf8(fields.next()?).ok()?.parse().ok()?;
    Some((range, dev, ino, fields.next()?.trim_ascii_start()))
}

/// Where the file `dev`/`ino`, which a process with root `root` names `path`, is here:
/// `path` itself, under `root`, or under one of `trees` (a container's process, whose
/// root is its tree, names its files from there): each of those that is that file.
fn place(dev: u64, ino: u64, path: &Path, root: &Path, trees: &[PathBuf]) -> Vec<PathBuf> {
    let rel = path.strip_prefix("/").unwrap_or(path);
    let mut at: Vec<PathBuf> = std::iter::once(path.to_path_buf())
        .chain(std::iter::once(root.join(rel)))
        .chain(trees.iter().map(|t| t.join(rel)))
        .filter(|p| fs::symlink_metadata(p).is_ok_and(|m| m.dev() == dev && m.ino() == ino))
        .collect();
    at.sort();
    at.dedup();
    at
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::fsx;
    use std::io::Write;
    use std::os::fd::AsFd;

    fn tree(base: &Path, name: &str) -> PathBuf {
        let root = base.join(name);
        fs::create_dir_all(root.join("etc/deep")).unwrap();
        fs::write(root.join("etc/deep/file"), b"one").unwrap();
        root
    }

    type Change<'a> = (&'static str, Box<dyn Fn() + 'a>);

    /// The generation of `root`, which must be watched.
    fn generation(w: &Watch, root: &Path) -> u64 {
        w.generation(root).expect("the tree is watched").1
    }

    /// The changes counted in `root`'s tree itself, without those counted for every tree
    /// (changes the watch could not place, which tests running beside this one make):
    /// what "nothing changed here" compares, as a generation would only when nothing else
    /// runs.
    fn own_changes(w: &Watch, root: &Path) -> u64 {
        generation(w, root);
        let root = fs::canonicalize(root).unwrap();
        w.inner.state.lock().unwrap().trees[&root].count
    }

    /// Each change moves the generation of its tree, and only of its tree.
    #[test]
    fn every_kind_of_change_is_seen_in_its_tree() {
        let base = tempfile::tempdir().unwrap();
        let w = Watch::new().expect("a watch (the tests run as root)");
        let (a, b) = (tree(base.path(), "a"), tree(base.path(), "b"));
        let mut last = generation(&w, &b);
        let mut changes: Vec<Change<'_>> = vec![
            (
                "write",
                Box::new(|| {
                    let mut f = fs::OpenOptions::new()
                        .append(true)
                        .open(b.join("etc/deep/file"))
                        .unwrap();
                    f.write_all(b"more").unwrap();
                }),
            ),
            (
                "chmod",
                Box::new(|| {
                    use std::os::unix::fs::PermissionsExt;
                    fs::set_permissions(b.join("etc/deep/file"), fs::Permissions::from_mode(0o600))
                        .unwrap()
                }),
            ),
            (
                "create",
                Box::new(|| fs::write(b.join("etc/new"), b"x").unwrap()),
            ),
            (
                "mkdir",
                Box::new(|| fs::create_dir(b.join("etc/d2")).unwrap()),
            ),
            (
                "rename",
                Box::new(|| fs::rename(b.join("etc/new"), b.join("etc/d2/new")).unwrap()),
            ),
            (
                "truncate",
                Box::new(|| {
                    fs::OpenOptions::new()
                        .write(true)
                        .open(b.join("etc/d2/new"))
                        .unwrap()
                        .set_len(0)
                        .unwrap()
                }),
            ),
            (
                "remove",
                Box::new(|| fs::remove_file(b.join("etc/d2/new")).unwrap()),
            ),
            (
                "rmdir",
                Box::new(|| fs::remove_dir(b.join("etc/d2")).unwrap()),
            ),
            (
                "symlink",
                Box::new(|| std::os::unix::fs::symlink("x", b.join("l")).unwrap()),
            ),
            (
                "dir moved out",
                Box::new(|| fs::rename(b.join("etc/deep"), a.join("deep")).unwrap()),
            ),
        ];
        let a_before = generation(&w, &a);
        for (what, change) in changes.drain(..) {
            change();
            let now = generation(&w, &b);
            assert_ne!(now, last, "{what} was not seen");
            last = now;
        }
        assert_ne!(generation(&w, &a), a_before, "the move into a was not seen");
        // Nothing changed: the generation stays, and another tree's change is not this one's.
        let b_own = own_changes(&w, &b);
        assert_eq!(own_changes(&w, &b), b_own);
        fs::write(a.join("other"), b"x").unwrap();
        assert_eq!(own_changes(&w, &b), b_own);
        // A write in a directory that moved into `a` counts for `a` now.
        let a_now = generation(&w, &a);
        fs::write(a.join("deep/file"), b"changed").unwrap();
        assert_ne!(generation(&w, &a), a_now);
        assert_eq!(own_changes(&w, &b), b_own);
    }

    /// A write through a shared mapping raises no event: the tree counts as changed while
    /// the mapping lives (in its own count: the mapping is placed in it, and in no other
    /// tree), and its end (the file's last close) is seen.
    #[test]
    fn a_writable_mapping_keeps_its_tree_changing() {
        let base = tempfile::tempdir().unwrap();
        let w = Watch::new().expect("a watch (the tests run as root)");
        let (root, other) = (tree(base.path(), "m"), tree(base.path(), "n"));
        let file = fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(root.join("etc/deep/file"))
            .unwrap();
        let before = generation(&w, &root);
        let other_before = own_changes(&w, &other);
        // SAFETY: a 3-byte shared mapping of a file we hold open, unmapped below.
        let map = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                3,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                file.as_raw_fd(),
                0,
            )
        };
        assert_ne!(map, libc::MAP_FAILED);
        drop(file);
        let while_mapped = generation(&w, &root);
        assert_ne!(while_mapped, before);
        let own = own_changes(&w, &root);
        assert_ne!(
            own_changes(&w, &root),
            own,
            "placed in its tree at every look"
        );
        assert_eq!(own_changes(&w, &other), other_before);
        // SAFETY: the mapping is 3 bytes long and still mapped.
        unsafe { *map.cast::<u8>() = b'X' };
        assert_ne!(generation(&w, &root), while_mapped);
        // SAFETY: unmapping what was mapped above.
        unsafe { libc::munmap(map, 3) };
        let after = generation(&w, &root);
        assert_eq!(
            generation(&w, &root),
            after,
            "no mapping left: the tree rests"
        );
        assert_eq!(fs::read(root.join("etc/deep/file")).unwrap(), b"Xne");
    }

    /// A file held open for writing (written perhaps by Linux AIO, which raises no event)
    /// keeps its tree changing until it is closed.
    #[test]
    fn a_file_open_for_writing_keeps_its_tree_changing() {
        let base = tempfile::tempdir().unwrap();
        let w = Watch::new().expect("a watch (the tests run as root)");
        let (root, other) = (tree(base.path(), "o"), tree(base.path(), "p"));
        let before = own_changes(&w, &root);
        let other_before = own_changes(&w, &other);
        let file = fs::OpenOptions::new()
            .write(true)
            .open(root.join("etc/deep/file"))
            .unwrap();
        let open = own_changes(&w, &root);
        assert_ne!(open, before);
        assert_ne!(own_changes(&w, &root), open);
        assert_eq!(own_changes(&w, &other), other_before, "only its own tree");
        drop(file);
        let closed = own_changes(&w, &root);
        assert_eq!(own_changes(&w, &root), closed);
        // Unlinked while open for writing: in no tree, so in no tree's way.
        let gone = fs::File::create(base.path().join("scratch")).unwrap();
        fs::remove_file(base.path().join("scratch")).unwrap();
        let before_gone = own_changes(&w, &root);
        assert_eq!(own_changes(&w, &root), before_gone);
        drop(gone);
        // Open for reading only: nothing.
        let read = fs::File::open(root.join("etc/deep/file")).unwrap();
        assert_eq!(own_changes(&w, &root), closed);
        // Open to read and write: as open for writing.
        let both = fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(root.join("etc/deep/file"))
            .unwrap();
        let open = own_changes(&w, &root);
        assert_ne!(own_changes(&w, &root), open);
        drop((read, both));
    }

    /// A generation read as an earlier mark does not look at the processes (a file open
    /// for writing does not move it), and the later question's look still tells that file
    /// apart from a tree at rest.
    #[test]
    fn an_earlier_generation_leaves_the_look_to_the_later_question() {
        let base = tempfile::tempdir().unwrap();
        let w = Watch::new().expect("a watch (the tests run as root)");
        let root = tree(base.path(), "e");
        let canonical = fs::canonicalize(&root).unwrap();
        let own_earlier = |w: &Watch| {
            w.earlier_generation(&root).expect("the tree is watched");
            w.inner.state.lock().unwrap().trees[&canonical].count
        };
        own_changes(&w, &root);
        let file = fs::OpenOptions::new()
            .write(true)
            .open(root.join("etc/deep/file"))
            .unwrap();
        let earlier = own_earlier(&w);
        assert_eq!(
            own_earlier(&w),
            earlier,
            "no look: the open file is not seen"
        );
        assert_ne!(own_changes(&w, &root), earlier, "the later look sees it");
        drop(file);
        // At rest, a look sees nothing. (A process forked by a test running beside this one
        // while the file was open holds a copy of its descriptor until it execs, and that
        // close is an event of its own a moment later, which one round may see: `make
        // test` once failed here so. A watch that keeps seeing the closed file fails every
        // round.)
        let at_rest = (0..5).any(|_| {
            let earlier = own_earlier(&w);
            let rest = own_changes(&w, &root) == earlier;
            if !rest {
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
            rest
        });
        assert!(at_rest, "at rest, a look sees no change");
    }

    /// A file a container's process names from its own root is found in its tree (and
    /// only where it is that file).
    #[test]
    fn files_are_placed_in_the_tree_a_container_names_them_from() {
        let base = tempfile::tempdir().unwrap();
        let (a, b) = (tree(base.path(), "a"), tree(base.path(), "b"));
        let m = fs::metadata(b.join("etc/deep/file")).unwrap();
        let named = Path::new("/etc/deep/file");
        let trees = [a.clone(), b.clone()];
        let at = place(m.dev(), m.ino(), named, Path::new("/"), &trees);
        assert_eq!(at, vec![b.join("etc/deep/file")]);
        assert!(place(m.dev(), m.ino(), named, Path::new("/"), &trees[..1]).is_empty());
        let own = fs::metadata(b.join("etc")).unwrap();
        assert_eq!(
            place(own.dev(), own.ino(), &b.join("etc"), Path::new("/"), &[]),
            vec![b.join("etc")]
        );
    }

    /// Renaming or removing a directory above trees changes them; another directory at a
    /// tree's path is another tree.
    #[test]
    fn trees_moved_or_replaced_under_their_path_are_changed() {
        let base = tempfile::tempdir().unwrap();
        let w = Watch::new().expect("a watch (the tests run as root)");
        let root = tree(&base.path().join("p"), "t");
        let (id, before) = w.generation(&root).unwrap();
        fs::rename(base.path().join("p"), base.path().join("q")).unwrap();
        fs::rename(base.path().join("q"), base.path().join("p")).unwrap();
        let (same_id, after) = w.generation(&root).unwrap();
        assert_eq!(id, same_id);
        assert_ne!(after, before, "its parent moved away and back");
        // Replaced by another directory: another id.
        fs::rename(&root, base.path().join("old")).unwrap();
        tree(&base.path().join("p"), "t");
        let (new_id, _) = w.generation(&root).unwrap();
        assert_ne!(new_id, id);
    }

    /// A file open for writing through a bind mount of part of a tree (outside every tree
    /// and its mount) is found in that tree, where the mount's directory is, and in no
    /// other.
    #[test]
    fn a_file_open_through_a_bind_mount_counts_in_the_tree_it_is_in() {
        let base = tempfile::tempdir().unwrap();
        let w = Watch::new().expect("a watch (the tests run as root)");
        let (root, other) = (tree(base.path(), "b"), tree(base.path(), "c"));
        let point = base.path().join("bound");
        fs::create_dir(&point).unwrap();
        struct Mounted(PathBuf);
        impl Drop for Mounted {
            fn drop(&mut self) {
                let _ = std::process::Command::new("umount").arg(&self.0).status();
            }
        }
        let ok = std::process::Command::new("mount")
            .arg("--bind")
            .arg(root.join("etc"))
            .arg(&point)
            .status()
            .unwrap();
        assert!(ok.success(), "a bind mount (the tests run as root)");
        let _mounted = Mounted(point.clone());
        let (before, other_before) = (own_changes(&w, &root), own_changes(&w, &other));
        let file = fs::OpenOptions::new()
            .write(true)
            .open(point.join("deep/file"))
            .unwrap();
        let open = own_changes(&w, &root);
        assert_ne!(open, before, "counted in its tree");
        assert_ne!(own_changes(&w, &root), open, "at every look while open");
        assert_eq!(own_changes(&w, &other), other_before, "and in no other");
        drop(file);
    }

    /// A filesystem mounted inside a tree is not watched: the tree has no generation.
    #[test]
    fn a_tree_with_a_mount_inside_is_not_watched() {
        let base = tempfile::tempdir().unwrap();
        let w = Watch::new().expect("a watch (the tests run as root)");
        let root = tree(base.path(), "m");
        assert!(w.generation(&root).is_some());
        let point = root.join("etc/deep");
        struct Mounted<'a>(&'a Path);
        impl Drop for Mounted<'_> {
            fn drop(&mut self) {
                let _ = std::process::Command::new("umount").arg(self.0).status();
            }
        }
        let ok = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=1m", "tmpfs"])
            .arg(&point)
            .status()
            .unwrap();
        assert!(ok.success(), "mounting a tmpfs (the tests run as root)");
        let mounted = Mounted(&point);
        assert!(w.generation(&root).is_none());
        drop(mounted);
        assert!(w.generation(&root).is_some());
    }

    /// Another process's watch (or one after a restart) never names the same generation, nor
    /// does another tree.
    #[test]
    fn generations_are_only_comparable_within_one_watch() {
        let base = tempfile::tempdir().unwrap();
        let w1 = Watch::new().expect("a watch (the tests run as root)");
        let w2 = Watch::new().expect("a watch (the tests run as root)");
        let root = tree(base.path(), "t");
        assert_ne!(
            w1.generation(&root).unwrap().0,
            w2.generation(&root).unwrap().0
        );
        // Nor do two trees nothing changed (two snapshots synced in turn into one copy).
        let other = tree(base.path(), "u");
        assert_ne!(w1.generation(&root), w1.generation(&other));
    }

    #[test]
    fn where_a_tree_changed_is_told_since_any_of_its_generations() {
        let base = tempfile::tempdir().unwrap();
        let root = tree(base.path(), "w");
        let w = Watch::new().unwrap();
        let (id, g0) = w.generation(&root).unwrap();
        fs::write(root.join("etc/deep/file"), b"two").unwrap();
        let (_, g1) = w.generation(&root).unwrap();
        fs::create_dir(root.join("new")).unwrap();
        let (_, g2) = w.generation(&root).unwrap();
        let since = |g| {
            let mut places = w.changed_since(&root, &id, g).unwrap();
            places.sort();
            places
        };
        let p = |s: &str| PathBuf::from(s);
        // A write names the file alone (its directory's list is as it was); a directory
        // made names it and the directory it is in.
        assert_eq!(since(g0), [p(""), p("etc/deep/file"), p("new")]);
        assert_eq!(since(g1), [p(""), p("new")]);
        assert_eq!(since(g2), Vec::<PathBuf>::new());
        // Not for another tree's or watch's generations.
        assert_eq!(w.changed_since(&root, "another", g0), None);
        assert_eq!(w.changed_since(&base.path().join("none"), &id, g0), None);
        // Nor once events were lost.
        w.inner.state.lock().unwrap().lost();
        assert_eq!(w.changed_since(&root, &id, g2), None);
        let (_, g3) = w.generation(&root).unwrap();
        assert_eq!(since(g3), Vec::<PathBuf>::new());
    }

    /// A change in a directory whose path is longer than PATH_MAX counts in the tree that
    /// holds it (which forgets where it changed), and in no other tree.
    #[test]
    fn a_change_too_deep_to_be_named_counts_in_its_tree_only() {
        let base = tempfile::tempdir().unwrap();
        let (deep, other) = (tree(base.path(), "deep"), tree(base.path(), "other"));
        let w = Watch::new().unwrap();
        // 40 levels of 200-byte names: 8,000 bytes below the root.
        let mut dir = fsx::open_dir(&deep).unwrap();
        let name = "d".repeat(200);
        for _ in 0..40 {
            fsx::mkdir_at(dir.as_fd(), name.as_bytes()).unwrap();
            dir = fsx::open_dir_at(dir.as_fd(), name.as_bytes()).unwrap();
        }
        let (id, g0) = w.generation(&deep).unwrap();
        let (deep0, other0) = (own_changes(&w, &deep), own_changes(&w, &other));
        let file = fsx::create_file_at(dir.as_fd(), b"file").unwrap();
        std::io::Write::write_all(&mut &file, b"written deep down").unwrap();
        drop(file);
        let (_, g1) = w.generation(&deep).unwrap();
        // (Asked first: each look after this one could meet a change of another test's
        // that cannot be placed, which rightly makes where the tree changed unknown.)
        assert_eq!(
            w.changed_since(&deep, &id, g1),
            Some(Vec::new()),
            "known again from the next generation on"
        );
        assert_eq!(w.changed_since(&deep, &id, g0), None, "where: not known");
        assert!(
            own_changes(&w, &deep) > deep0,
            "counted in its tree (not unplaced)"
        );
        assert_eq!(own_changes(&w, &other), other0, "not in another");
    }

    /// The kernel's answer about a process's shared file mappings (`PROCMAP_QUERY`) is what
    /// its `maps` text says: here, of this process, with a file of its own mapped shared
    /// (and the same file mapped private, which neither counts).
    #[test]
    fn the_kernel_finds_the_shared_mappings_the_text_shows() {
        let base = tempfile::tempdir().unwrap();
        let path = base.path().join("mapped file");
        fs::write(&path, vec![7u8; 8192]).unwrap();
        let file = fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .unwrap();
        let (dev, ino) = (
            file.metadata().unwrap().dev(),
            file.metadata().unwrap().ino(),
        );
        let map = |flags| {
            // SAFETY: a mapping of a file we hold open, unmapped below.
            let m = unsafe {
                libc::mmap(
                    std::ptr::null_mut(),
                    8192,
                    libc::PROT_READ | libc::PROT_WRITE,
                    flags,
                    file.as_raw_fd(),
                    0,
                )
            };
            assert_ne!(m, libc::MAP_FAILED);
            m
        };
        let (shared, private) = (map(libc::MAP_SHARED), map(libc::MAP_PRIVATE));
        let maps = fs::File::open("/proc/self/maps").unwrap();
        let mut asked = Vec::new();
        let answered =
            shared_file_mappings(&OwnedFd::from(maps), &[dev], &mut asked, &mut Vec::new())
                .unwrap();
        // (Only this file's: tests beside this one map files of this filesystem too.)
        asked.retain(|m| m.2 == ino);
        let text = fs::read("/proc/self/maps").unwrap();
        let read: Vec<_> = text
            .split(|b| *b == b'\n')
            .filter_map(|line| shared_mapping(line, &[dev]))
            .filter(|m| m.2 == ino)
            .map(|(range, dev, ino, path)| {
                let range = std::str::from_utf8(range).unwrap();
                let (start, end) = range.split_once('-').unwrap();
                let hex = |h: &str| u64::from_str_radix(h, 16).unwrap();
                let link = format!("map_files/{:x}-{:x}", hex(start), hex(end));
                (link.into_bytes(), dev, ino, fsx::unescape_proc_path(path))
            })
            .collect();
        // A look at this process finds it either way: by the kernel's answer, and by the
        // text that kernels before 6.11 are read by. (Forcing the text for a moment makes
        // tests beside this one read it too, which finds the same.)
        let proc = fsx::open_dir(Path::new("/proc")).unwrap();
        let pid = std::process::id().to_string();
        let look = || {
            let mut found = Vec::new();
            process_files(
                proc.as_fd(),
                pid.as_bytes(),
                &[dev],
                &mut found,
                &mut Vec::new(),
            )
            .unwrap();
            let mut found: Vec<_> = found
                .into_iter()
                // (The file is open to write too: its descriptor is found as well.)
                .filter(|s| {
                    s.ino == ino && s.link.parent().is_some_and(|d| d.ends_with("map_files"))
                })
                .map(|s| (s.dev, s.ino, s.path, s.link))
                .collect();
            found.sort();
            found
        };
        let by_kernel = look();
        let answers = NO_PROCMAP_QUERY.swap(true, Ordering::Relaxed);
        let by_text = look();
        NO_PROCMAP_QUERY.store(answers, Ordering::Relaxed);
        assert_eq!(by_kernel.len(), 1, "{by_kernel:?}");
        assert_eq!(by_kernel, by_text);
        assert_eq!(by_kernel[0].2, path);
        // SAFETY: unmapping what was mapped above.
        unsafe {
            libc::munmap(shared, 8192);
            libc::munmap(private, 8192);
        }
        assert_eq!(read.len(), 1, "one shared mapping of the file");
        assert_eq!(read[0].3, path.as_os_str().as_bytes());
        if answered {
            assert_eq!(asked, read);
        } else {
            assert!(asked.is_empty(), "a kernel before 6.11: the text is read");
        }
    }
}
