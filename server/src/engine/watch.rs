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
//! - Writes through a shared writable mapping raise no event. While such a mapping of a
//!   file in a tree exists (any process's `/proc/<pid>/maps`), the tree's generation moves
//!   on every question; once it is gone, the file's last close was reported.
//! - Changes made before a tree was first asked about: the first question registers it,
//!   and a sync that records a generation walked the tree after asking.
//! - Changes while no doppel process ran: a process's generations carry its own random id,
//!   so nothing recorded by another process matches.
//! - A file hard-linked into two trees is reported under the path it was written through.
//!
//! A directory that can no longer be resolved was deleted: its deletion (or that of an
//! ancestor) is queued after the event and is reported against a directory that still
//! exists, in the same tree.

use std::collections::HashMap;
use std::fs;
use std::io;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

/// `statfs.f_type` of the filesystems watched: ext2/3/4 and XFS (btrfs has generations of
/// its own; others are walked).
const EXT4_SUPER_MAGIC: i64 = 0xEF53;
const XFS_SUPER_MAGIC: i64 = 0x5846_5342;

/// Above this many directories remembered, the cache of their paths starts again.
const CACHED_DIRS: usize = 65_536;

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
    /// and its device number (to find its mapped files).
    filesystems: HashMap<[u8; 8], (OwnedFd, u64)>,
    /// The trees asked about (canonical paths) and their counters.
    trees: HashMap<PathBuf, u64>,
    /// Changes that could not be placed in one tree: every tree's generation includes it.
    everything: u64,
    /// Directory handles already resolved, and their paths (forgotten when a directory
    /// moves).
    dirs: HashMap<Vec<u8>, Option<PathBuf>>,
}

impl Watch {
    /// The process's watch, started on first use; `None` where fanotify cannot watch whole
    /// filesystems (not root, or a kernel without it).
    pub fn shared() -> Option<Arc<Watch>> {
        static SHARED: OnceLock<Option<Arc<Watch>>> = OnceLock::new();
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
        let flags = libc::FAN_CLASS_NOTIF
            | libc::FAN_CLOEXEC
            | libc::FAN_NONBLOCK
            | libc::FAN_UNLIMITED_QUEUE
            | libc::FAN_REPORT_DFID_NAME;
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
        // Reads the queue as it fills, so that it stays short between questions.
        let reader = inner.clone();
        std::thread::Builder::new()
            .name("doppel-watch".into())
            .spawn(move || reader.run())?;
        Ok(Watch { inner })
    }

    /// The generation of the tree at `root` and this watch's id: it changes whenever
    /// something under `root` changes. `None` where the tree's filesystem is not watched
    /// (then it must be walked).
    pub fn generation(&self, root: &Path) -> Option<(String, u64)> {
        let root = fs::canonicalize(root).ok()?;
        let mut st = self.inner.state.lock().ok()?;
        if !st.trees.contains_key(&root) {
            self.inner.track(&mut st, &root).ok()?;
        }
        self.inner.drain(&mut st);
        for path in writable_mappings(&st) {
            st.bump(&path);
        }
        Some((self.inner.id.clone(), st.everything + st.trees[&root]))
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        self.inner.stop.store(true, Ordering::Relaxed);
    }
}

impl Inner {
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

    /// Registers the tree at `root` (canonical), watching its filesystem from now on.
    fn track(&self, st: &mut State, root: &Path) -> io::Result<()> {
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
            let mask = libc::FAN_MODIFY
                | libc::FAN_ATTRIB
                | libc::FAN_CLOSE_WRITE
                | libc::FAN_CREATE
                | libc::FAN_DELETE
                | libc::FAN_RENAME
                | libc::FAN_DELETE_SELF
                | libc::FAN_MOVE_SELF
                | libc::FAN_ONDIR;
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
        let key = handle_of(root).map(|h| [&fsid[..], &h].concat())?;
        if resolve(mount, &key[8..]).ok().as_deref() != Some(root) {
            return Err(io::Error::other("the tree is named otherwise by its mount"));
        }
        st.trees.insert(root.to_path_buf(), 0);
        Ok(())
    }

    /// Reads every queued event and counts it against its tree.
    fn drain(&self, st: &mut State) {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = match rustix::io::read(&self.fd, &mut buf) {
                Ok(0) => return,
                Ok(n) => n,
                Err(rustix::io::Errno::INTR) => continue,
                Err(rustix::io::Errno::AGAIN) => return,
                Err(_) => {
                    // The queue cannot be read: nothing it held is known.
                    st.everything += 1;
                    return;
                }
            };
            let mut events = &buf[..n];
            while let Some((event, rest)) = next_event(events) {
                st.count(&event);
                events = rest;
            }
        }
    }
}

impl State {
    /// Counts one event against the trees of the paths it names.
    fn count(&mut self, event: &Event<'_>) {
        if event.mask & libc::FAN_Q_OVERFLOW != 0 {
            self.everything += 1;
            return;
        }
        for (dir, name) in &event.dirs {
            match self.dir_path(dir) {
                Ok(Some(path)) => {
                    self.bump(&path);
                    // The event may be about a tree itself (created, removed, moved,
                    // changed), reported in its parent.
                    if !name.is_empty() && *name != b"." {
                        self.bump(&path.join(std::ffi::OsStr::from_bytes(name)));
                    }
                }
                // Deleted since: its deletion is reported in a directory that exists.
                Ok(None) => {}
                Err(()) => self.everything += 1,
            }
        }
        if event.mask & libc::FAN_RENAME != 0 && event.mask & libc::FAN_ONDIR != 0 {
            // Every path remembered under the directory moved is wrong now.
            self.dirs.clear();
        }
    }

    /// Counts a change at `path` against the tree holding it, if any.
    fn bump(&mut self, path: &Path) {
        for dir in path.ancestors() {
            if let Some(n) = self.trees.get_mut(dir) {
                *n += 1;
                return;
            }
        }
    }

    /// The path of the directory with `key` (fsid then handle); `None` if it is gone;
    /// `Err` where it cannot be told.
    fn dir_path(&mut self, key: &[u8]) -> Result<Option<PathBuf>, ()> {
        if let Some(p) = self.dirs.get(key) {
            return Ok(p.clone());
        }
        let fsid: [u8; 8] = key.get(..8).and_then(|f| f.try_into().ok()).ok_or(())?;
        let (mount, _) = self.filesystems.get(&fsid).ok_or(())?;
        let path = match resolve(mount, &key[8..]) {
            Ok(p) => Some(p),
            Err(e) if gone(&e) => None,
            Err(_) => return Err(()),
        };
        if self.dirs.len() >= CACHED_DIRS {
            self.dirs.clear();
        }
        self.dirs.insert(key.to_vec(), path.clone());
        Ok(path)
    }
}

fn gone(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::ESTALE) | Some(libc::ENOENT))
}

/// One event: its mask, and the directories (fsid then handle) and names it names.
struct Event<'a> {
    mask: u64,
    dirs: Vec<(Vec<u8>, &'a [u8])>,
}

/// The first event in `buf` and what follows it.
fn next_event(buf: &[u8]) -> Option<(Event<'_>, &[u8])> {
    let meta = std::mem::size_of::<libc::fanotify_event_metadata>();
    if buf.len() < meta {
        return None;
    }
    let event_len = u32::from_ne_bytes(buf[0..4].try_into().ok()?) as usize;
    let metadata_len = u16::from_ne_bytes(buf[6..8].try_into().ok()?) as usize;
    let mask = u64::from_ne_bytes(buf[8..16].try_into().ok()?);
    if event_len < metadata_len || event_len > buf.len() {
        return None;
    }
    let mut event = Event {
        mask,
        dirs: Vec::new(),
    };
    let mut info = &buf[metadata_len..event_len];
    while info.len() >= 4 {
        let kind = info[0];
        let len = u16::from_ne_bytes([info[2], info[3]]) as usize;
        if len < 4 || len > info.len() {
            break;
        }
        let record = &info[4..len];
        if matches!(
            kind,
            libc::FAN_EVENT_INFO_TYPE_DFID_NAME
                | libc::FAN_EVENT_INFO_TYPE_DFID
                | libc::FAN_EVENT_INFO_TYPE_OLD_DFID_NAME
                | libc::FAN_EVENT_INFO_TYPE_NEW_DFID_NAME
        ) {
            if let Some(dir) = dir_record(record, kind != libc::FAN_EVENT_INFO_TYPE_DFID) {
                event.dirs.push(dir);
            }
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

/// The handle of the directory at `path`: its type (4 bytes) then its bytes.
fn handle_of(path: &Path) -> io::Result<Vec<u8>> {
    let c = std::ffi::CString::new(path.as_os_str().as_bytes())?;
    // `struct file_handle` with room for the largest handle (MAX_HANDLE_SZ, 128 bytes),
    // as u32s for its alignment.
    let mut buf = [0u32; 2 + 32];
    buf[0] = 128;
    let mut mount_id = 0;
    // SAFETY: `buf` is a `struct file_handle` with `handle_bytes` set to its room.
    let r = unsafe {
        libc::name_to_handle_at(
            libc::AT_FDCWD,
            c.as_ptr(),
            buf.as_mut_ptr().cast(),
            &mut mount_id,
            0,
        )
    };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    let bytes = buf[0] as usize;
    let raw: Vec<u8> = buf.iter().flat_map(|w| w.to_ne_bytes()).collect();
    Ok(raw[4..8 + bytes].to_vec())
}

/// The path of the directory with `handle` (its type then its bytes), through the mount
/// of `mount`.
fn resolve(mount: &OwnedFd, handle: &[u8]) -> io::Result<PathBuf> {
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
        return Err(io::Error::last_os_error());
    }
    // SAFETY: just opened, owned by nothing else.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let path = fs::read_link(format!("/proc/self/fd/{}", fd.as_fd().as_raw_fd()))?;
    if path.as_os_str().as_bytes().ends_with(b" (deleted)") {
        return Err(io::Error::from_raw_os_error(libc::ENOENT));
    }
    Ok(path)
}

/// Files of the watched filesystems that some process maps shared and writable (writes
/// through such a mapping raise no event): their paths as seen here.
fn writable_mappings(st: &State) -> Vec<PathBuf> {
    let devs: Vec<(u32, u32)> = st
        .filesystems
        .values()
        .map(|(_, dev)| (libc::major(*dev), libc::minor(*dev)))
        .collect();
    let mut found = Vec::new();
    let Ok(procs) = fs::read_dir("/proc") else {
        return found;
    };
    for p in procs.flatten() {
        let name = p.file_name();
        if !name.as_bytes().iter().all(u8::is_ascii_digit) {
            continue;
        }
        let Ok(maps) = fs::read(p.path().join("maps")) else {
            continue;
        };
        let mut root: Option<PathBuf> = None;
        for line in maps.split(|b| *b == b'\n') {
            let Some(file) = writable_shared(line, &devs) else {
                continue;
            };
            let root = match &root {
                Some(r) => r,
                None => match fs::read_link(p.path().join("root")) {
                    Ok(r) => root.insert(r),
                    Err(_) => break,
                },
            };
            let rel = file.strip_prefix(b"/").unwrap_or(file);
            found.push(root.join(std::ffi::OsStr::from_bytes(rel)));
        }
    }
    found
}

/// The path of a `maps` line's file if it is mapped shared and writable and lives on one
/// of `devs` (major, minor).
fn writable_shared<'a>(line: &'a [u8], devs: &[(u32, u32)]) -> Option<&'a [u8]> {
    // address perms offset dev inode path
    let mut fields = line.splitn(6, |b| *b == b' ');
    let _address = fields.next()?;
    let perms = fields.next()?;
    if perms.get(1) != Some(&b'w') || perms.get(3) != Some(&b's') {
        return None;
    }
    let _offset = fields.next()?;
    let dev = std::str::from_utf8(fields.next()?).ok()?;
    let (major, minor) = dev.split_once(':')?;
    let dev = (
        u32::from_str_radix(major, 16).ok()?,
        u32::from_str_radix(minor, 16).ok()?,
    );
    if !devs.contains(&dev) {
        return None;
    }
    let _inode = fields.next()?;
    let path = fields.next()?.trim_ascii_start();
    (path.starts_with(b"/") && !path.ends_with(b" (deleted)")).then_some(path)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

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
        assert_eq!(generation(&w, &b), last);
        fs::write(a.join("other"), b"x").unwrap();
        assert_eq!(generation(&w, &b), last);
        // A write in a directory that moved into `a` counts for `a` now.
        let a_now = generation(&w, &a);
        fs::write(a.join("deep/file"), b"changed").unwrap();
        assert_ne!(generation(&w, &a), a_now);
        assert_eq!(generation(&w, &b), last);
    }

    /// A write through a shared mapping raises no event: the tree counts as changed while
    /// the mapping lives, and its end (the file's last close) is seen.
    #[test]
    fn a_writable_mapping_keeps_its_tree_changing() {
        let base = tempfile::tempdir().unwrap();
        let w = Watch::new().expect("a watch (the tests run as root)");
        let root = tree(base.path(), "m");
        let file = fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(root.join("etc/deep/file"))
            .unwrap();
        let before = generation(&w, &root);
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

    /// Another process's watch (or one after a restart) never names the same generation.
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
    }
}
