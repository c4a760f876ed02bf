//! Filesystem access that never leaves a root: every path is resolved one component at a
//! time from a directory descriptor with `O_NOFOLLOW`, so no symlink, `..` or concurrent
//! rename inside an (untrusted) container tree can make doppel read or write outside it.

use std::ffi::{CStr, OsStr};
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rustix::fs::{self as rfs, AtFlags, FileType, Mode, OFlags, Timespec, Timestamps};

use super::manifest::{Entry, Kind};

pub fn to_io(e: rustix::io::Errno) -> io::Error {
    io::Error::from(e)
}

/// Opens a trusted directory (a path doppel itself owns).
pub fn open_dir(path: &Path) -> io::Result<OwnedFd> {
    without_atime(|more| {
        rfs::open(
            path,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC | more,
            Mode::empty(),
        )
        .map_err(to_io)
    })
}

/// Opens the directory `name` in `dir`, refusing symlinks.
pub fn open_dir_at(dir: BorrowedFd<'_>, name: &[u8]) -> io::Result<OwnedFd> {
    without_atime(|more| {
        rfs::openat(
            dir,
            OsStr::from_bytes(name),
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC | more,
            Mode::empty(),
        )
        .map_err(to_io)
    })
}

/// Opens with `O_NOATIME` where the caller may (the owner, or root), else without: reading
/// a tree for a copy is no use of it, and on btrfs an access time written would change the
/// subvolume's generation (see `transfer/untouched.rs`).
fn without_atime<T>(open: impl Fn(OFlags) -> io::Result<T>) -> io::Result<T> {
    match open(OFlags::NOATIME) {
        Err(e) if e.raw_os_error() == Some(libc::EPERM) => open(OFlags::empty()),
        r => r,
    }
}

/// Opens the regular file `name` in `dir` for reading, refusing symlinks and anything that
/// is not a regular file (a FIFO would block), without touching its access time where the
/// caller may (see `without_atime`).
pub fn open_file_at(dir: BorrowedFd<'_>, name: &[u8]) -> io::Result<std::fs::File> {
    without_atime(|more| open_regular_at(dir, name, OFlags::RDONLY | more))
}

/// Whether the page cache holds every page of `file` from `offset` for `len` bytes (which
/// should lie within the file): `cachestat` (Linux 6.5) counts them without reading or
/// starting to read ahead. False where it cannot say.
pub fn is_cached(file: &std::fs::File, offset: u64, len: u64) -> bool {
    use std::os::fd::AsRawFd;
    #[repr(C)]
    struct Range {
        off: u64,
        len: u64,
    }
    #[repr(C)]
    #[derive(Default)]
    struct CacheStat {
        nr_cache: u64,
        nr_dirty: u64,
        nr_writeback: u64,
        nr_evicted: u64,
        nr_recently_evicted: u64,
    }
    // The same number on every architecture (the generic table; libc does not name it yet).
    const SYS_CACHESTAT: libc::c_long = 451;
    if len == 0 {
        return true;
    }
    let range = Range { off: offset, len };
    let mut stat = CacheStat::default();
    // SAFETY: both pointers are to live structs laid out as linux/mman.h says; the kernel
    // only reads the first and fills the second.
    let r = unsafe {
        libc::syscall(
            SYS_CACHESTAT,
            file.as_raw_fd(),
            &range as *const Range,
            &mut stat as *mut CacheStat,
            0u32,
        )
    };
    // SAFETY: sysconf reads a constant.
    let page = u64::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).unwrap_or(4096);
    let pages = (offset + len).div_ceil(page) - offset / page;
    r == 0 && stat.nr_cache >= pages
}

/// Reads `file` at `offset` into `buf` only as far as the page cache holds it, without
/// waiting for the disk (`RWF_NOWAIT`): the bytes read, or `None` when none were cached (or
/// the filesystem cannot say). (After a miss the kernel starts reading ahead: ask
/// [`is_cached`] first.)
pub fn read_cached_at(file: &std::fs::File, buf: &mut [u8], offset: u64) -> Option<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        let mut piece = [io::IoSliceMut::new(&mut buf[filled..])];
        match rustix::io::preadv2(
            file,
            &mut piece,
            offset + filled as u64,
            rustix::io::ReadWriteFlags::NOWAIT,
        ) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(rustix::io::Errno::INTR) => continue,
            Err(_) => break,
        }
    }
    (filled > 0).then_some(filled)
}

/// The file `name` in `dir` held (opened as a path, not followed), if it is a regular file
/// with that one name: while the handle lives, removing the name does not free it.
/// Freeing a file's blocks is work (ext4 does it inside the unlink or rename that drops
/// the last name); holding it first lets the caller drop the handle where that work does
/// not hold it up ([`free_later`]). (A file with other names is not freed by losing one,
/// and is not held: a held name would stay its name for whoever resolves the file by
/// handle, as the change watch does, though it is gone.)
pub fn hold_file_at(dir: BorrowedFd<'_>, name: &[u8]) -> Option<OwnedFd> {
    let fd = rfs::openat(
        dir,
        OsStr::from_bytes(name),
        OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .ok()?;
    let st = rfs::fstat(&fd).ok()?;
    (FileType::from_raw_mode(st.st_mode) == FileType::RegularFile && st.st_nlink == 1).then_some(fd)
}

/// Drops `held` ([`hold_file_at`]) on the process's reaper thread, so the
/// file it holds is freed there, on another core, while the caller goes on (its space
/// comes free a moment later). At most [`REAPED_AT_ONCE`] wait; beyond that (the thread
/// is behind, freeing for every job of the process) it is dropped here, as if never held:
/// a caller never waits for another job's frees, and never runs out of descriptors.
/// (Dropped here too if the thread cannot be started.)
pub fn free_later(held: Option<OwnedFd>) {
    static REAPER: std::sync::OnceLock<Option<std::sync::mpsc::SyncSender<OwnedFd>>> =
        std::sync::OnceLock::new();
    let reaper = REAPER.get_or_init(|| {
        let (queue, handles) = std::sync::mpsc::sync_channel::<OwnedFd>(REAPED_AT_ONCE);
        std::thread::Builder::new()
            .name("doppel-reaper".into())
            .spawn(move || handles.into_iter().for_each(drop))
            .ok()
            .map(|_| queue)
    });
    if let (Some(fd), Some(queue)) = (held, reaper) {
        // (Full or gone: the descriptor comes back in the error, and is dropped here.)
        let _ = queue.try_send(fd);
    }
}

const REAPED_AT_ONCE: usize = 64;

/// Unlinks the regular files directly in `dir`, each freed on the reaper's thread where it
/// has room ([`free_later`]): a sync's staged files may be clones of large files, whose
/// extents take a while to let go of. What is not a file, or cannot be removed, stays.
pub fn remove_files_freeing_later(dir: &Path) {
    let Ok(fd) = open_dir(dir) else {
        return;
    };
    for name in list_dir(fd.as_fd()).unwrap_or_default() {
        if let Some(held) = hold_file_at(fd.as_fd(), &name) {
            if remove_at(fd.as_fd(), &name).is_ok() {
                free_later(Some(held));
            }
        }
    }
}

/// Replaces the file at `path` with `bytes`, whole or not at all: written to a temp file
/// of this writer's own beside it (several threads or processes may replace one file at
/// once), made durable first if `durable`, then renamed over it. The file replaced is
/// freed on the reaper's thread ([`free_later`]). The new file's metadata (the rename
/// keeps its inode and mtime).
pub fn replace_file(path: &Path, bytes: &[u8], durable: bool) -> io::Result<std::fs::Metadata> {
    use std::io::Write as _;
    use std::sync::atomic::AtomicU64;
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let tmp = path.with_extension(format!("tmp-{}-{n}", std::process::id()));
    let written = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        if durable {
            f.sync_all()?;
        }
        let meta = f.metadata()?;
        let old = hold_file_at(rfs::CWD, path.as_os_str().as_bytes());
        std::fs::rename(&tmp, path)?;
        free_later(old);
        Ok(meta)
    })();
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written
}

/// Opens an existing regular file for writing in place (never through a symlink).
pub fn open_file_for_patch_at(dir: BorrowedFd<'_>, name: &[u8]) -> io::Result<std::fs::File> {
    open_regular_at(dir, name, OFlags::WRONLY)
}

/// Opens `name` for reading or writing only if it is a regular file, without ever opening
/// anything else: it is first taken as a path (O_PATH, which opens no device, FIFO or
/// socket), checked, then reopened through /proc for the access wanted. A device node a
/// tenant put (or swapped in) there is never opened, so opening cannot rewind a tape or
/// block on a terminal.
fn open_regular_at(dir: BorrowedFd<'_>, name: &[u8], access: OFlags) -> io::Result<std::fs::File> {
    use std::os::fd::AsRawFd;
    let path = rfs::openat(
        dir,
        OsStr::from_bytes(name),
        OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(to_io)?;
    let st = rfs::fstat(&path).map_err(to_io)?;
    if FileType::from_raw_mode(st.st_mode) != FileType::RegularFile {
        return Err(io::Error::other(NotRegular));
    }
    let reopened = rfs::open(
        format!("/proc/self/fd/{}", path.as_raw_fd()),
        access | OFlags::CLOEXEC | OFlags::NONBLOCK,
        Mode::empty(),
    );
    let fd = match reopened {
        Ok(fd) => fd,
        // No /proc (a minimal sandbox): open the name again, and check that it is still
        // the regular file just seen (a swap in between is refused, though it was opened).
        Err(rustix::io::Errno::NOENT) => {
            let fd = rfs::openat(
                dir,
                OsStr::from_bytes(name),
                access | OFlags::NOFOLLOW | OFlags::CLOEXEC | OFlags::NONBLOCK,
                Mode::empty(),
            )
            .map_err(to_io)?;
            let now = rfs::fstat(&fd).map_err(to_io)?;
            if (now.st_dev, now.st_ino) != (st.st_dev, st.st_ino) {
                return Err(io::Error::other(NotRegular));
            }
            fd
        }
        Err(e) => return Err(to_io(e)),
    };
    Ok(std::fs::File::from(fd))
}

/// What [`open_file_at`] answers for a name that is no longer a regular file.
#[derive(Debug)]
pub struct NotRegular;

impl std::fmt::Display for NotRegular {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("not a regular file")
    }
}

impl std::error::Error for NotRegular {}

/// Whether opening an entry a scan saw failed because the entry is gone or was replaced
/// since (deleted, renamed, now a symlink or another kind): the tree changed, and the entry
/// is simply not part of the state being read. Any other failure (permission, no more
/// descriptors, an I/O error) means content doppel cannot read, and must fail the job.
pub fn is_gone(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::NotFound
        || matches!(e.raw_os_error(), Some(libc::ELOOP | libc::ENOTDIR))
        || e.get_ref().is_some_and(|inner| inner.is::<NotRegular>())
}

/// Creates a new file (never follows or reuses an existing name). Readable too: a staged
/// patch is read back when it has to become a whole file.
pub fn create_file_at(dir: BorrowedFd<'_>, name: &[u8]) -> io::Result<std::fs::File> {
    create_file_with_mode_at(dir, name, 0o600)
}

/// [`create_file_at`], with the permission bits of `mode` (what the umask leaves of them;
/// never setuid, setgid or sticky): a file made to be given an entry's metadata then needs
/// no chmod, which on XFS is a transaction of its own ([`apply_meta_fd`]).
pub fn create_file_with_mode_at(
    dir: BorrowedFd<'_>,
    name: &[u8],
    mode: u32,
) -> io::Result<std::fs::File> {
    let fd = rfs::openat(
        dir,
        OsStr::from_bytes(name),
        OFlags::RDWR | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::from_raw_mode(mode & 0o777),
    )
    .map_err(to_io)?;
    Ok(std::fs::File::from(fd))
}

pub fn stat_at(dir: BorrowedFd<'_>, name: &[u8]) -> io::Result<rfs::Stat> {
    rfs::statat(dir, OsStr::from_bytes(name), AtFlags::SYMLINK_NOFOLLOW).map_err(to_io)
}

pub fn stat_fd(fd: BorrowedFd<'_>) -> io::Result<rfs::Stat> {
    rfs::fstat(fd).map_err(to_io)
}

/// Whether a file is the version an entry describes, by the scan's quick check: the same
/// inode, size, and modification and change times (content or xattr changes move them).
pub fn same_version(st: &rfs::Stat, e: &Entry) -> bool {
    st.st_ino == e.ino
        && st.st_size as u64 == e.size
        && mtime_ns(st) == e.mtime_ns
        && ctime_ns(st) == e.ctime_ns
}

pub fn kind_of(st: &rfs::Stat) -> Kind {
    match FileType::from_raw_mode(st.st_mode) {
        FileType::Directory => Kind::Dir,
        FileType::RegularFile => Kind::File,
        FileType::Symlink => Kind::Symlink,
        FileType::Fifo => Kind::Fifo,
        _ => Kind::Special,
    }
}

/// Nanoseconds since the epoch; times past 2262 (beyond i64 nanoseconds) are clamped, not
/// wrapped: a tenant's `touch -d 2300-01-01` cannot crash or confuse doppel.
pub fn mtime_ns(st: &rfs::Stat) -> i64 {
    nanos(st.st_mtime, st.st_mtime_nsec as i64)
}

fn atime_ns(st: &rfs::Stat) -> i64 {
    nanos(st.st_atime, st.st_atime_nsec as i64)
}

pub fn ctime_ns(st: &rfs::Stat) -> i64 {
    nanos(st.st_ctime, st.st_ctime_nsec as i64)
}

fn nanos(secs: i64, nsec: i64) -> i64 {
    secs.saturating_mul(1_000_000_000).saturating_add(nsec)
}

fn timestamps(mtime_ns: i64) -> Timestamps {
    let t = Timespec {
        tv_sec: mtime_ns.div_euclid(1_000_000_000),
        tv_nsec: mtime_ns.rem_euclid(1_000_000_000) as _,
    };
    Timestamps {
        last_access: t,
        last_modification: t,
    }
}

/// Where extended attributes are read or written: an open file or directory, or a symlink
/// itself. A symlink cannot be opened for xattr calls, and their `*at` forms only exist
/// from Linux 6.13, so it is named as `/proc/self/fd/<dir>/<name>`: the directory is
/// reached through its open descriptor, and the `l*` calls do not follow the final
/// component (`name`, a single component). Only `trusted.` and `security.` names can exist
/// on a symlink.
enum XattrOf<'a> {
    Fd(BorrowedFd<'a>),
    Link(std::path::PathBuf),
}

impl XattrOf<'_> {
    /// `None` without a mounted /proc: then symlinks are taken to have no xattrs (rather
    /// than every symlink failing to read).
    fn link(dir: BorrowedFd<'_>, name: &[u8]) -> Option<XattrOf<'static>> {
        use std::os::fd::AsRawFd;
        static PROC_FD: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
        if !*PROC_FD.get_or_init(|| Path::new("/proc/self/fd").is_dir()) {
            return None;
        }
        let mut path = std::path::PathBuf::from(format!("/proc/self/fd/{}", dir.as_raw_fd()));
        path.push(OsStr::from_bytes(name));
        Some(XattrOf::Link(path))
    }

    fn list_size(&self) -> rustix::io::Result<usize> {
        match self {
            XattrOf::Fd(fd) => rfs::flistxattr_query(fd),
            XattrOf::Link(p) => rfs::llistxattr_query(p),
        }
    }

    fn list(&self, buf: &mut [u8]) -> rustix::io::Result<usize> {
        match self {
            XattrOf::Fd(fd) => rfs::flistxattr(fd, buf),
            XattrOf::Link(p) => rfs::llistxattr(p, buf),
        }
    }

    fn value_size(&self, name: &CStr) -> rustix::io::Result<usize> {
        match self {
            XattrOf::Fd(fd) => rfs::fgetxattr_query(fd, name),
            XattrOf::Link(p) => rfs::lgetxattr_query(p, name),
        }
    }

    fn get(&self, name: &CStr, buf: &mut [u8]) -> rustix::io::Result<usize> {
        match self {
            XattrOf::Fd(fd) => rfs::fgetxattr(fd, name, buf),
            XattrOf::Link(p) => rfs::lgetxattr(p, name, buf),
        }
    }

    fn set(&self, name: &CStr, value: &[u8]) -> rustix::io::Result<()> {
        let flags = rfs::XattrFlags::empty();
        match self {
            XattrOf::Fd(fd) => rfs::fsetxattr(fd, name, value, flags),
            XattrOf::Link(p) => rfs::lsetxattr(p, name, value, flags),
        }
    }

    fn remove(&self, name: &CStr) -> rustix::io::Result<()> {
        match self {
            XattrOf::Fd(fd) => rfs::fremovexattr(fd, name),
            XattrOf::Link(p) => rfs::lremovexattr(p, name),
        }
    }

    /// Every extended attribute, sorted by name.
    fn read(&self) -> io::Result<Vec<(Vec<u8>, Vec<u8>)>> {
        let size = match self.list_size() {
            Ok(n) => n,
            Err(rustix::io::Errno::OPNOTSUPP) => return Ok(Vec::new()),
            Err(e) => return Err(to_io(e)),
        };
        if size == 0 {
            return Ok(Vec::new());
        }
        let mut names = vec![0u8; size];
        let n = self.list(&mut names[..]).map_err(to_io)?;
        let mut out = Vec::new();
        for name in names[..n].split(|&c| c == 0).filter(|n| !n.is_empty()) {
            let cname = xattr_name(name)?;
            let len = match self.value_size(&cname) {
                Ok(len) => len,
                Err(rustix::io::Errno::NODATA) => continue,
                Err(e) => return Err(to_io(e)),
            };
            let mut value = vec![0u8; len];
            let got = self.get(&cname, &mut value[..]).map_err(to_io)?;
            value.truncate(got);
            out.push((name.to_vec(), value));
        }
        out.sort();
        Ok(out)
    }

    /// Makes the extended attributes exactly `want` (touching only those that differ).
    fn write(&self, want: &[(Vec<u8>, Vec<u8>)]) -> io::Result<()> {
        let current = self.read()?;
        for (k, _) in &current {
            if !want.iter().any(|(n, _)| n == k) {
                let _ = self.remove(&xattr_name(k)?);
            }
        }
        for (k, v) in want {
            if current.iter().any(|(n, cv)| n == k && cv == v) {
                continue;
            }
            self.set(&xattr_name(k)?, v).map_err(to_io)?;
        }
        Ok(())
    }
}

fn xattr_name(name: &[u8]) -> io::Result<std::ffi::CString> {
    std::ffi::CString::new(name).map_err(|_| io::Error::other("bad xattr name"))
}

/// Reads the extended attributes of an open file or directory, sorted by name.
pub fn read_xattrs(fd: BorrowedFd<'_>) -> io::Result<Vec<(Vec<u8>, Vec<u8>)>> {
    XattrOf::Fd(fd).read()
}

/// Reads the extended attributes of the symlink `name` in `dir` (not of what it points to).
pub fn read_link_xattrs(dir: BorrowedFd<'_>, name: &[u8]) -> io::Result<Vec<(Vec<u8>, Vec<u8>)>> {
    XattrOf::link(dir, name).map_or(Ok(Vec::new()), |x| x.read())
}

/// Applies owner, mode, xattrs and mtime of `e` to an open file or directory. Owner first:
/// chown clears setuid/setgid bits, which the mode then restores.
///
/// What the file already has is not set again: each change of an inode is a transaction
/// of its own on XFS, even one to the same value, and a copy applies this to every file.
/// (One `fstat` tells; a file just made already has our owner, and often its mode.)
pub fn apply_meta_fd(fd: BorrowedFd<'_>, e: &Entry) -> io::Result<()> {
    let st = rfs::fstat(fd).map_err(to_io)?;
    let chown = (st.st_uid, st.st_gid) != (e.uid, e.gid);
    if chown {
        match rfs::fchown(
            fd,
            Some(rfs::Uid::from_raw(e.uid)),
            Some(rfs::Gid::from_raw(e.gid)),
        ) {
            Ok(()) | Err(rustix::io::Errno::PERM) => {}
            Err(err) => return Err(to_io(err)),
        }
    }
    // (After a chown, always: it may have cleared setuid/setgid bits.)
    if chown || st.st_mode & 0o7777 != e.mode {
        rfs::fchmod(fd, Mode::from_raw_mode(e.mode)).map_err(to_io)?;
    }
    XattrOf::Fd(fd).write(&e.xattrs)?;
    if mtime_ns(&st) == e.mtime_ns && atime_ns(&st) == e.mtime_ns {
        return Ok(());
    }
    rfs::futimens(fd, &timestamps(e.mtime_ns)).map_err(to_io)
}

/// Sets the mtime (and atime) of `name` in `dir`, without following it: for a directory
/// whose entries changed, the one thing that moved.
pub fn set_mtime_at(dir: BorrowedFd<'_>, name: &[u8], mtime_ns: i64) -> io::Result<()> {
    rfs::utimensat(
        dir,
        OsStr::from_bytes(name),
        &timestamps(mtime_ns),
        AtFlags::SYMLINK_NOFOLLOW,
    )
    .map_err(to_io)
}

/// Applies metadata to `name` in `dir` without following it: symlinks get owner, xattrs
/// and mtime; files, directories and FIFOs everything (opened with O_NOFOLLOW first).
pub fn apply_meta_at(dir: BorrowedFd<'_>, name: &[u8], e: &Entry) -> io::Result<()> {
    let os = OsStr::from_bytes(name);
    match e.kind {
        Kind::Symlink => {
            match rfs::chownat(
                dir,
                os,
                Some(rfs::Uid::from_raw(e.uid)),
                Some(rfs::Gid::from_raw(e.gid)),
                AtFlags::SYMLINK_NOFOLLOW,
            ) {
                Ok(()) | Err(rustix::io::Errno::PERM) => {}
                Err(err) => return Err(to_io(err)),
            }
            match XattrOf::link(dir, name) {
                Some(x) => x.write(&e.xattrs)?,
                None if e.xattrs.is_empty() => {}
                None => return Err(io::Error::other("setting a symlink's xattrs needs /proc")),
            }
            rfs::utimensat(dir, os, &timestamps(e.mtime_ns), AtFlags::SYMLINK_NOFOLLOW)
                .map_err(to_io)
        }
        Kind::Dir => apply_meta_fd(open_dir_at(dir, name)?.as_fd(), e),
        Kind::File | Kind::Fifo => {
            // O_PATH cannot fchmod; open for reading without following (NONBLOCK: FIFOs).
            let fd = rfs::openat(
                dir,
                os,
                OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC | OFlags::NONBLOCK,
                Mode::empty(),
            )
            .map_err(to_io)?;
            apply_meta_fd(fd.as_fd(), e)
        }
        Kind::Special => Ok(()),
    }
}

/// Removes `name` from `dir` whatever it is; a directory with everything below it (never
/// following symlinks). Missing is fine.
///
/// Iterative, with at most [`REMOVE_OPEN_DIRS`] directories open however deep the tree is
/// (a container's owner can build one 100,000 levels deep): a directory met below that many
/// is first moved up to the top of what is being removed, and removed from there.
pub fn remove_at(dir: BorrowedFd<'_>, name: &[u8]) -> io::Result<()> {
    let st = match stat_at(dir, name) {
        Ok(st) => st,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    if kind_of(&st) != Kind::Dir {
        return unlink_at(dir, name, false);
    }
    struct Level {
        fd: OwnedFd,
        name: Vec<u8>,
        children: std::vec::IntoIter<Vec<u8>>,
    }
    let open = |parent: BorrowedFd<'_>, name: &[u8]| -> io::Result<Level> {
        let fd = open_dir_at(parent, name)?;
        let children = list_dir(fd.as_fd())?.into_iter();
        Ok(Level {
            fd,
            name: name.to_vec(),
            children,
        })
    };
    let mut stack = vec![open(dir, name)?];
    let mut moved = 0u64;
    while let Some(level) = stack.last_mut() {
        let Some(child) = level.children.next() else {
            // Listed again before it goes: directories moved up into the top level (and
            // anything created meanwhile) are in it now.
            let again = list_dir(level.fd.as_fd())?;
            if !again.is_empty() {
                level.children = again.into_iter();
                continue;
            }
            let done = stack.pop().expect("a level");
            let parent = stack.last().map_or(dir, |l| l.fd.as_fd());
            unlink_at(parent, &done.name, true)?;
            continue;
        };
        let fd = stack.last().expect("a level").fd.as_fd();
        let st = match stat_at(fd, &child) {
            Ok(st) => st,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        if kind_of(&st) != Kind::Dir {
            unlink_at(fd, &child, false)?;
        } else if stack.len() < REMOVE_OPEN_DIRS {
            let next = open(fd, &child)?;
            stack.push(next);
        } else {
            // Too deep to keep every parent open: move it to the top, under a new name.
            loop {
                moved += 1;
                let to = format!(".doppel-removing-{moved}");
                match rfs::renameat_with(
                    fd,
                    OsStr::from_bytes(&child),
                    stack[0].fd.as_fd(),
                    OsStr::from_bytes(to.as_bytes()),
                    rfs::RenameFlags::NOREPLACE,
                ) {
                    Ok(()) => break,
                    Err(rustix::io::Errno::EXIST) => continue,
                    Err(e) => return Err(to_io(e)),
                }
            }
        }
    }
    Ok(())
}

/// How many directories [`remove_at`] keeps open at once.
pub const REMOVE_OPEN_DIRS: usize = 64;

fn unlink_at(dir: BorrowedFd<'_>, name: &[u8], is_dir: bool) -> io::Result<()> {
    let flags = if is_dir {
        AtFlags::REMOVEDIR
    } else {
        AtFlags::empty()
    };
    match rfs::unlinkat(dir, OsStr::from_bytes(name), flags) {
        Err(rustix::io::Errno::NOENT) => Ok(()),
        r => r.map_err(to_io),
    }
}

/// The names in a directory (without `.` and `..`), sorted bytewise.
pub fn list_dir(dir: BorrowedFd<'_>) -> io::Result<Vec<Vec<u8>>> {
    Ok(list_dir_inodes(dir)?.into_iter().map(|(n, _)| n).collect())
}

/// The names in `dir`, sorted, each with the inode number the listing gives (no stat).
pub fn list_dir_inodes(dir: BorrowedFd<'_>) -> io::Result<Vec<(Vec<u8>, u64)>> {
    let mut names = Vec::new();
    for entry in rfs::Dir::read_from(dir).map_err(to_io)? {
        let entry = entry.map_err(to_io)?;
        let name = entry.file_name().to_bytes();
        if name != b"." && name != b".." {
            names.push((name.to_vec(), entry.ino()));
        }
    }
    names.sort_unstable();
    Ok(names)
}

pub fn mkdir_at(dir: BorrowedFd<'_>, name: &[u8]) -> io::Result<()> {
    rfs::mkdirat(dir, OsStr::from_bytes(name), Mode::from_raw_mode(0o700)).map_err(to_io)
}

pub fn symlink_at(target: &[u8], dir: BorrowedFd<'_>, name: &[u8]) -> io::Result<()> {
    rfs::symlinkat(OsStr::from_bytes(target), dir, OsStr::from_bytes(name)).map_err(to_io)
}

pub fn mkfifo_at(dir: BorrowedFd<'_>, name: &[u8]) -> io::Result<()> {
    rfs::mknodat(
        dir,
        OsStr::from_bytes(name),
        FileType::Fifo,
        Mode::from_raw_mode(0o600),
        0,
    )
    .map_err(to_io)
}

pub fn link_at(
    from_dir: BorrowedFd<'_>,
    from: &[u8],
    to_dir: BorrowedFd<'_>,
    to: &[u8],
) -> io::Result<()> {
    rfs::linkat(
        from_dir,
        OsStr::from_bytes(from),
        to_dir,
        OsStr::from_bytes(to),
        AtFlags::empty(),
    )
    .map_err(to_io)
}

pub fn rename_at(
    from_dir: BorrowedFd<'_>,
    from: &[u8],
    to_dir: BorrowedFd<'_>,
    to: &[u8],
) -> io::Result<()> {
    rfs::renameat(
        from_dir,
        OsStr::from_bytes(from),
        to_dir,
        OsStr::from_bytes(to),
    )
    .map_err(to_io)
}

/// (free, total) bytes of the filesystem holding `path`; free is what an unprivileged
/// writer can still write.
pub fn free_space(path: &Path) -> io::Result<(u64, u64)> {
    let st = rfs::statvfs(path).map_err(to_io)?;
    Ok((
        st.f_bavail.saturating_mul(st.f_frsize),
        st.f_blocks.saturating_mul(st.f_frsize),
    ))
}

/// How a file's content is laid down from another file of the same filesystem.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum KernelCopy {
    /// The new file shares the old one's extents (FICLONE: XFS with reflink, btrfs):
    /// nothing is copied, and a write to either later copies only what it writes.
    Reflink,
    /// The kernel copies the bytes (copy_file_range): none pass through doppel.
    CopyFileRange,
}

/// `dst` (new and empty) given `src`'s content by the kernel: its extents shared where the
/// filesystem can, else copied by `copy_file_range`, its holes kept (a sparse file stays
/// sparse: `copy_file_range` alone writes a hole out in full, and a 60 GB sparse file of
/// 4 KB would have taken 60 GB). `Err` where neither works (another filesystem, an old
/// kernel): `dst` is left empty, for the caller to write it itself.
pub fn kernel_copy(dst: &std::fs::File, src: &std::fs::File, len: u64) -> io::Result<KernelCopy> {
    if rfs::ioctl_ficlone(dst, src).is_ok() {
        return Ok(KernelCopy::Reflink);
    }
    let copied = (|| {
        let segments = data_segments(src, len);
        // A file shorter than its scan said (truncated since) is no copy of that version.
        // Its end and a hole look alike to `SEEK_DATA`, so where it seems to have holes
        // its length decides; a file read whole ends its `copy_file_range` early instead.
        if segments != [(0, len)] && src.metadata()?.len() < len {
            return Err(io::Error::other("the file is shorter than its scan said"));
        }
        for (start, end) in segments {
            let (mut from, mut to) = (start, start);
            while from < end {
                let want = (end - from).min(1 << 30) as usize;
                match rfs::copy_file_range(src, Some(&mut from), dst, Some(&mut to), want) {
                    Ok(0) => {
                        return Err(io::Error::other("the file is shorter than its scan said"))
                    }
                    Ok(_) => {}
                    Err(e) => return Err(to_io(e)),
                }
            }
        }
        // A hole at the end: the length says where the file ends.
        dst.set_len(len)
    })();
    match copied {
        Ok(()) => Ok(KernelCopy::CopyFileRange),
        Err(e) => {
            // Nothing half-copied is left for the caller's own write to follow.
            let _ = dst.set_len(0);
            Err(e)
        }
    }
}

/// The parts of the first `len` bytes of `file` that hold data, as (start, end): its holes
/// left out. One part, all of it, for a file without holes (one `lseek` tells) or where
/// the filesystem cannot say. Moves the file's offset: callers read and write at offsets.
pub fn data_segments(file: &std::fs::File, len: u64) -> Vec<(u64, u64)> {
    use rustix::fs::SeekFrom;
    let whole = vec![(0, len)];
    match rfs::seek(file, SeekFrom::Hole(0)) {
        Ok(hole) if hole < len => {}
        _ => return whole,
    }
    let mut parts = Vec::new();
    let mut at = 0;
    while at < len {
        let start = match rfs::seek(file, SeekFrom::Data(at)) {
            Ok(start) => start,
            // No data after `at`: the rest is a hole.
            Err(rustix::io::Errno::NXIO) => break,
            Err(_) => return whole,
        };
        if start >= len {
            break;
        }
        let end = match rfs::seek(file, SeekFrom::Hole(start)) {
            Ok(end) => end.min(len),
            Err(_) => return whole,
        };
        if end <= start {
            return whole;
        }
        parts.push((start, end));
        at = end;
    }
    parts
}

/// `dst` (new and empty) given the first `len` bytes of `src` read and written here (two
/// filesystems), at offsets (whatever either file's offset is), holes kept. Says how many
/// bytes of content `src` had (less than `len` if it ended sooner).
pub fn copy_content(dst: &std::fs::File, src: &std::fs::File, len: u64) -> io::Result<u64> {
    use std::os::unix::fs::FileExt;
    let mut out = SparseOut::new(dst);
    let mut buf = vec![0u8; (len.min(1 << 20) as usize).max(1)];
    let mut end = 0;
    for (start, stop) in data_segments(src, len) {
        out.skip_to(start);
        let mut at = start;
        while at < stop {
            let want = ((stop - at) as usize).min(buf.len());
            let n = src.read_at(&mut buf[..want], at)?;
            if n == 0 {
                return out.finish().map(|_| at);
            }
            out.write(&buf[..n])?;
            at += n as u64;
        }
        end = stop;
    }
    // Content after the last data, up to `len`, is a hole: zeros.
    out.skip_to(end.max(len.min(src.metadata()?.len())));
    out.finish()
}

/// Makes `len` bytes of `file` from `at` a hole (zeros that take no room), where the
/// filesystem can; beyond the file's end it changes nothing.
pub fn punch_hole(file: &std::fs::File, at: u64, len: u64) -> io::Result<()> {
    rfs::fallocate(
        file,
        rfs::FallocateFlags::PUNCH_HOLE | rfs::FallocateFlags::KEEP_SIZE,
        at,
        len,
    )
    .map_err(to_io)
}

/// What of a file's `len` bytes of content takes room on its filesystem (its data, not
/// its holes): what a copy of it moved.
pub fn data_bytes(file: &std::fs::File, len: u64) -> u64 {
    use std::os::unix::fs::MetadataExt;
    file.metadata()
        .map_or(len, |m| m.blocks().saturating_mul(512))
        .min(len)
}

/// Whether `data` is all zeros.
pub fn is_zero(data: &[u8]) -> bool {
    let (words, rest) = data.as_chunks::<16>();
    words.iter().all(|w| u128::from_ne_bytes(*w) == 0) && rest.iter().all(|b| *b == 0)
}

/// Writes a new, empty file's content in order, at offsets, leaving a hole where a whole
/// piece written is zeros (as `cp --sparse` and `rsync --sparse` do), so that a sparse
/// file stays sparse wherever its content passes through doppel. `finish` sets the length
/// a hole at the end leaves short.
pub struct SparseOut<'a> {
    file: &'a std::fs::File,
    at: u64,
}

impl<'a> SparseOut<'a> {
    pub fn new(file: &'a std::fs::File) -> SparseOut<'a> {
        SparseOut { file, at: 0 }
    }

    /// The next piece of the content.
    pub fn write(&mut self, data: &[u8]) -> io::Result<()> {
        use std::os::unix::fs::FileExt;
        if !is_zero(data) {
            self.file.write_all_at(data, self.at)?;
        }
        self.at += data.len() as u64;
        Ok(())
    }

    /// Zeros up to `at` (a hole of the source).
    pub fn skip_to(&mut self, at: u64) {
        self.at = self.at.max(at);
    }

    /// The content's length, set on the file where it ends in a hole.
    pub fn finish(self) -> io::Result<u64> {
        if self.file.metadata()?.len() < self.at {
            self.file.set_len(self.at)?;
        }
        Ok(self.at)
    }
}

/// What the kernel can do for copies within the filesystem of `dir`: tried once per
/// filesystem in this process, on two scratch files made and removed in `dir`. `None`:
/// only doppel's own stream.
pub fn kernel_copy_support(dir: &Path) -> Option<KernelCopy> {
    use std::collections::HashMap;
    use std::sync::Mutex;
    // A filesystem by its device and id (a device number alone may be reused by another
    // filesystem mounted later).
    type Found = HashMap<(u64, u64), Option<KernelCopy>>;
    static FOUND: Mutex<Option<Found>> = Mutex::new(None);
    let key = match (rfs::stat(dir), rfs::statvfs(dir)) {
        (Ok(st), Ok(vfs)) => Some((st.st_dev, vfs.f_fsid)),
        _ => None,
    };
    if let Some(found) = key.and_then(|k| FOUND.lock().ok()?.as_ref()?.get(&k).copied()) {
        return found;
    }
    let name = |n: &str| dir.join(format!(".doppel-copy-probe-{}-{n}", std::process::id()));
    let (a, b) = (name("a"), name("b"));
    let probe = (|| -> io::Result<KernelCopy> {
        std::fs::write(&a, [7u8; 4096])?;
        let src = std::fs::File::open(&a)?;
        let dst = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&b)?;
        kernel_copy(&dst, &src, 4096)
    })();
    let _ = std::fs::remove_file(&a);
    let _ = std::fs::remove_file(&b);
    let found = probe.ok();
    if let (Some(k), Ok(mut cache)) = (key, FOUND.lock()) {
        cache.get_or_insert_with(HashMap::new).insert(k, found);
    }
    found
}

/// The mount points of this process's mount namespace (`/proc/self/mountinfo`).
pub fn mount_points() -> io::Result<Vec<std::path::PathBuf>> {
    Ok(mounts()?.into_iter().map(|m| m.point).collect())
}

/// A mount of this process's mount namespace, as `/proc/self/mountinfo` tells it.
#[derive(Debug, Clone)]
pub struct Mount {
    /// Its id (as `name_to_handle_at` gives it).
    pub id: i32,
    /// The directory of its filesystem that it shows (`/` unless a bind mount of part).
    pub root: std::path::PathBuf,
    /// Where it is mounted.
    pub point: std::path::PathBuf,
}

/// The mounts of this process's mount namespace.
pub fn mounts() -> io::Result<Vec<Mount>> {
    let info = std::fs::read("/proc/self/mountinfo")?;
    let path = |p: &[u8]| OsStr::from_bytes(&unescape_proc_path(p)).into();
    Ok(info
        .split(|b| *b == b'\n')
        .filter_map(|line| {
            // id parent major:minor root mount-point ...
            let mut fields = line.split(|b| *b == b' ');
            let id = std::str::from_utf8(fields.next()?).ok()?.parse().ok()?;
            let root = fields.nth(2)?;
            Some(Mount {
                id,
                root: path(root),
                point: path(fields.next()?),
            })
        })
        .collect())
}

/// A path as `/proc` prints it: space, tab, newline and backslash as `\ooo`.
pub fn unescape_proc_path(raw: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(raw.len());
    let mut i = 0;
    while i < raw.len() {
        let octal = raw
            .get(i + 1..i + 4)
            .filter(|d| d.iter().all(|c| (b'0'..=b'7').contains(c)));
        match (raw[i], octal) {
            (b'\\', Some(d)) => {
                out.push((d[0] - b'0') * 64 + (d[1] - b'0') * 8 + (d[2] - b'0'));
                i += 4;
            }
            (c, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    out
}

/// Makes the entry `path` durable in its directory (a rename into it, say).
pub fn sync_dir_of(path: &Path) -> io::Result<()> {
    match path.parent() {
        Some(dir) => std::fs::File::open(dir)?.sync_all(),
        None => Ok(()),
    }
}

pub fn syncfs(fd: BorrowedFd<'_>) -> io::Result<()> {
    rfs::syncfs(fd).map_err(to_io)
}

/// Writes a filesystem back to disk again and again while it lives (a thread, stopped and
/// joined when dropped), for a copy to run while its pages are written: the kernel starts
/// writeback only once a tenth of memory is dirty, so a copy smaller than that would
/// otherwise leave the disk idle and then wait for all of it at its commit's syncfs.
/// (syncfs batches writeback across the tree; a `sync_file_range` per small file measured
/// slower than no flushing at all.) Errors are ignored: the commit's own syncfs reports them.
pub struct WriteBack {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl WriteBack {
    /// Starts writing back the filesystem of `dir`.
    pub fn start(dir: &Path) -> WriteBack {
        let stop = Arc::new(AtomicBool::new(false));
        let thread = open_dir(dir).ok().and_then(|fd| {
            let stop = stop.clone();
            std::thread::Builder::new()
                .name("writeback".into())
                .spawn(move || {
                    // A wait first: a transfer that ends within it never pays for a round
                    // (its commit's syncfs is enough). Dropping unparks the thread.
                    let mut wait = true;
                    loop {
                        if wait {
                            std::thread::park_timeout(Duration::from_millis(50));
                        }
                        if stop.load(Ordering::Relaxed) {
                            return;
                        }
                        let started = Instant::now();
                        let _ = rfs::syncfs(&fd);
                        // Little was dirty: wait for more before the next round.
                        wait = started.elapsed() < Duration::from_millis(20);
                    }
                })
                .ok()
        });
        WriteBack { stop, thread }
    }
}

impl Drop for WriteBack {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            t.thread().unpark();
            let _ = t.join();
        }
    }
}

/// Splits `a/b/c` into (`a/b`, `c`).
pub fn split_parent(path: &[u8]) -> (&[u8], &[u8]) {
    match path.iter().rposition(|&c| c == b'/') {
        Some(i) => (&path[..i], &path[i + 1..]),
        None => (&[], path),
    }
}

/// Opens parent directories of a sequence of paths beneath a root, keeping the chain of
/// open directories so that sorted paths cost one `openat` per new directory.
pub struct Walker {
    root: OwnedFd,
    stack: Vec<(Vec<u8>, OwnedFd)>,
}

impl Walker {
    pub fn new(root: OwnedFd) -> Walker {
        Walker {
            root,
            stack: Vec::new(),
        }
    }

    pub fn root(&self) -> BorrowedFd<'_> {
        self.root.as_fd()
    }

    /// The open directory `dir` (a relative path; empty for the root).
    pub fn dir(&mut self, dir: &[u8]) -> io::Result<BorrowedFd<'_>> {
        let comps: Vec<&[u8]> = if dir.is_empty() {
            Vec::new()
        } else {
            dir.split(|&c| c == b'/').collect()
        };
        let common = self
            .stack
            .iter()
            .zip(&comps)
            .take_while(|((name, _), c)| name.as_slice() == **c)
            .count();
        self.stack.truncate(common);
        for comp in &comps[common..] {
            if comp.is_empty() || *comp == b"." || *comp == b".." {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    "invalid path component",
                ));
            }
            let parent = self
                .stack
                .last()
                .map(|(_, fd)| fd.as_fd())
                .unwrap_or(self.root.as_fd());
            let fd = open_dir_at(parent, comp)?;
            self.stack.push((comp.to_vec(), fd));
        }
        Ok(self
            .stack
            .last()
            .map(|(_, fd)| fd.as_fd())
            .unwrap_or(self.root.as_fd()))
    }

    /// The parent directory of `path`, opened, and the last component.
    pub fn parent<'p>(&mut self, path: &'p [u8]) -> io::Result<(BorrowedFd<'_>, &'p [u8])> {
        let (dir, name) = split_parent(path);
        Ok((self.dir(dir)?, name))
    }

    /// Forgets the open chain (after the tree changed shape).
    pub fn reset(&mut self) {
        self.stack.clear();
    }
}
