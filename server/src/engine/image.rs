//! Trees that are filesystem images: an XFS filesystem in a sparse file on a filesystem
//! with reflinks (XFS), loop-mounted at the tree's root. A copy of such a tree is a clone
//! of its image (one `FICLONE` of one file), the whole tree at one instant whatever its
//! number of files. File by file, XFS spends about 50 µs of kernel time on each (a create,
//! a clone and a time set, each a transaction), which bounds a 40,000-file copy to about a
//! second. The price: two image trees are two filesystems, which the kernel copies nothing
//! between: a sync between two of one server has its receiver read the changed files from
//! the source itself, and tells their unchanged ranges by the extents the images share
//! ([`super::extents::same_ranges_through_images`]).
//!
//! The image of the tree at `root` is the file `<root>.xfs` beside it, so that a tree
//! and its image move and go together. Each is mounted on a loop device of its own, freed
//! when the tree is unmounted, with `nouuid` (a clone has its source's filesystem id, and
//! both are mounted).
//!
//! doppel lays trees down as images where it is started with `--image-trees` (a copy laid
//! down file by file is made in an empty image tree, `transfer::copy::stage_as_image`);
//! copies of them are then clones. The engine, and the lifecycle before a container
//! starts, mount an image tree again where its filesystem is not mounted
//! ([`ensure_mounted`]).

use std::ffi::OsString;
use std::fs;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::os::unix::ffi::OsStringExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use super::fsx;

/// The image file of the tree at `root`: `<root>.xfs`.
pub fn image_path(root: &Path) -> PathBuf {
    let mut p = root.as_os_str().to_owned();
    p.push(".xfs");
    PathBuf::from(p)
}

/// Whether the tree at `root` is an image tree: its root is the root of a filesystem on a
/// loop device whose backing file is its image.
pub fn is_image_tree(root: &Path) -> bool {
    backing_file(root)
        .is_some_and(|b| fs::canonicalize(image_path(root)).is_ok_and(|image| image == b))
}

/// The backing file of the loop device whose filesystem is mounted at `root` (`None`: no
/// filesystem's root is at `root`, or it is not on a loop device).
fn backing_file(root: &Path) -> Option<PathBuf> {
    loop_backing_file(&mounted_device(root)?)
}

/// The sysfs directory of the block device whose filesystem's root is mounted at `root`.
fn mounted_device(root: &Path) -> Option<PathBuf> {
    let flags = rustix::fs::AtFlags::SYMLINK_NOFOLLOW;
    let (major, minor) = mount_root_device(rustix::fs::CWD, root, flags)?;
    Some(PathBuf::from(format!("/sys/dev/block/{major}:{minor}")))
}

/// The device (major, minor) of the filesystem whose root is mounted at `path` in `dir`
/// (`""` and `AtFlags::EMPTY_PATH`: `dir` itself); `None`: it is not the root of a mount
/// (a directory of one), or cannot be read.
pub(super) fn mount_root_device<Fd: AsFd>(
    dir: Fd,
    path: &Path,
    flags: rustix::fs::AtFlags,
) -> Option<(u32, u32)> {
    use rustix::fs::{statx, StatxAttributes, StatxFlags};
    let st = statx(dir, path, flags, StatxFlags::BASIC_STATS).ok()?;
    let root_of_mount = StatxAttributes::MOUNT_ROOT;
    (st.stx_attributes_mask.contains(root_of_mount) && st.stx_attributes.contains(root_of_mount))
        .then_some((st.stx_dev_major, st.stx_dev_minor))
}

/// The backing file of the block device whose sysfs directory is `device` (`None`: it is
/// not a loop device, or has none).
fn loop_backing_file(device: &Path) -> Option<PathBuf> {
    let mut file = fs::read(device.join("loop/backing_file")).ok()?;
    if file.last() == Some(&b'\n') {
        file.pop();
    }
    Some(PathBuf::from(OsString::from_vec(file)))
}

/// Mounts the image tree at `root` again where its filesystem is not mounted (the host
/// restarted: loop mounts do not survive that), so that `root` is the tree and not the
/// empty directory beneath it: a sync from that would empty the tree's copies. An image
/// that a loop device holds already (its tree unmounted here while a running container's
/// mount namespace holds its filesystem, or a move interrupted) has that device mounted
/// here again. A root that holds anything of its own is refused instead: something
/// wrote into it while its filesystem was away, and mounting would hide that. A tree
/// mounted again is grown to `grow_to` where its image is smaller ([`grow`]).
pub fn ensure_mounted(root: &Path, grow_to: Option<u64>) -> io::Result<()> {
    // One at a time: two jobs reading one source must not both mount it.
    static MOUNTING: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let image = image_path(root);
    if !image.is_file() || !root.is_dir() {
        return Ok(());
    }
    let _one = MOUNTING.lock().unwrap_or_else(|e| e.into_inner());
    if is_image_tree(root) {
        return thaw_left_frozen(root);
    }
    let device = attached_device(&image)?;
    if fs::read_dir(root)?.next().is_some() {
        return Err(io::Error::other(format!(
            "{} is an image tree whose filesystem ({}) is not mounted, and the directory \
             under it is not empty; move what is in it away, then try again",
            root.display(),
            image.display()
        )));
    }
    match device {
        // Its loop device is still there (the tree was unmounted here while its running
        // container, in a mount namespace of its own, holds its filesystem; or a move was
        // interrupted): that filesystem is mounted here again. Left as it was, the empty
        // directory under it was read as the tree, and a sync emptied its copies.
        Some(device) => {
            tracing::warn!(tree = %root.display(), device = %device.display(),
                "an image tree's filesystem is not mounted at its tree; mounting its loop device there again");
            mount_device(&device, root)?;
        }
        None => {
            tracing::info!(tree = %root.display(), "mounting an image tree again");
            mount(&image, root)?;
        }
    }
    if let Some(size) = grow_to {
        grow_or_warn(root, size);
    }
    Ok(())
}

/// Thaws the image tree at `root` if it is frozen: a doppel killed while it cloned the
/// tree left it so ([`clone_tree`]), which would hold its container's writers until someone
/// thawed it. (Never while this process holds a freeze of its own.)
/// Best effort, as the freeze is: a thaw refused is logged, and the job goes on (it reads
/// a frozen tree as well as any).
fn thaw_left_frozen(root: &Path) -> io::Result<()> {
    let dir = fsx::open_dir(root)?;
    let _one = FREEZING.lock().unwrap_or_else(|e| e.into_inner());
    match thaw(dir.as_fd()) {
        Ok(true) => tracing::warn!(tree = %root.display(), "thawed an image tree left frozen"),
        Ok(false) => {}
        Err(e) => tracing::warn!(tree = %root.display(), error = %e, "cannot thaw an image tree"),
    }
    Ok(())
}

/// At start, for the image trees mounted below `dir` (a data dir): thaws those a doppel
/// killed while it cloned them left frozen, so that their containers' writers do not wait
/// for the next job on them, and grows those whose image is smaller than `grow_to` (the
/// `--image-trees` size, raised since they were made: [`grow`]). Best effort.
pub fn tend_below(dir: &Path, grow_to: Option<u64>) {
    let Ok(dir) = fs::canonicalize(dir) else {
        return;
    };
    for root in fsx::mount_points().unwrap_or_default() {
        if root.starts_with(&dir) && is_image_tree(&root) {
            let _ = thaw_left_frozen(&root);
            if let Some(size) = grow_to {
                grow_or_warn(&root, size);
            }
        }
    }
}

/// Grows the mounted image tree at `root` to `size` bytes where its image is smaller: the
/// image lengthened (sparse: nothing is written), its loop device told
/// (`LOOP_SET_CAPACITY`), and its XFS grown in place (`xfs_growfs`), while it is in use.
/// `false`: it was that large already (XFS cannot shrink: a smaller size leaves it as it
/// is). Where the filesystem cannot grow, the image is given its length back.
pub fn grow(root: &Path, size: u64) -> io::Result<bool> {
    let image = fs::OpenOptions::new().write(true).open(image_path(root))?;
    let was = image.metadata()?.len();
    if was >= size {
        return Ok(false);
    }
    let device = loop_device(root)?;
    let resize = |len: u64| {
        image.set_len(len)?;
        // SAFETY: LOOP_SET_CAPACITY takes no argument, on an open loop device.
        match unsafe { libc::ioctl(device.as_raw_fd(), LOOP_SET_CAPACITY as _, 0) } {
            0 => Ok(()),
            _ => Err(io::Error::last_os_error()),
        }
    };
    let grown = resize(size).and_then(|()| run(Command::new("xfs_growfs").arg("-d").arg(root)));
    if let Err(e) = grown {
        // (A failed growfs leaves the filesystem as it was: nothing lies past `was`.)
        let _ = resize(was);
        return Err(e);
    }
    Ok(true)
}

/// [`grow`], its failure logged: the tree stays usable at its size.
pub(in crate::engine) fn grow_or_warn(root: &Path, size: u64) {
    match grow(root, size) {
        Ok(true) => tracing::info!(tree = %root.display(), size, "grew an image tree"),
        Ok(false) => {}
        Err(e) => {
            tracing::warn!(tree = %root.display(), size, error = %e, "cannot grow an image tree")
        }
    }
}

/// The loop device (opened) whose filesystem is mounted at `root`.
fn loop_device(root: &Path) -> io::Result<fs::File> {
    let not_image = || io::Error::other(format!("{} is not an image tree", root.display()));
    let sysfs = mounted_device(root).ok_or_else(not_image)?;
    let uevent = fs::read_to_string(sysfs.join("uevent"))?;
    let name = uevent
        .lines()
        .find_map(|l| l.strip_prefix("DEVNAME="))
        .filter(|n| n.starts_with("loop") && !n.contains('/'))
        .ok_or_else(not_image)?;
    fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(Path::new("/dev").join(name))
}

/// Whether a loop device is backed by `image`.
pub fn attached(image: &Path) -> io::Result<bool> {
    Ok(attached_device(image)?.is_some())
}

/// The loop device backed by `image` (`/dev/loopN`), if one is.
fn attached_device(image: &Path) -> io::Result<Option<PathBuf>> {
    let image = fs::canonicalize(image)?;
    let Ok(devices) = fs::read_dir("/sys/block") else {
        return Ok(None);
    };
    Ok(devices.flatten().find_map(|d| {
        loop_backing_file(&d.path())
            .filter(|file| *file == image)
            .map(|_| Path::new("/dev").join(d.file_name()))
    }))
}

/// Whether image trees are worth making in `dir`: its filesystem has reflinks (a copy of
/// an image is a clone then) and is not btrfs (whose trees are subvolumes, copied by
/// snapshots).
pub fn can_hold(dir: &Path) -> bool {
    let on_btrfs = fsx::open_dir(dir).is_ok_and(|d| super::btrfs::is_btrfs(d.as_fd()));
    !on_btrfs && fsx::kernel_copy_support(dir) == Some(fsx::KernelCopy::Reflink)
}

/// Makes an empty image tree at `root` (which must not exist): an image of `size` bytes
/// (sparse: it takes room as it fills), an XFS filesystem in it, mounted at `root`.
pub fn create(root: &Path, size: u64) -> io::Result<()> {
    let image = image_path(root);
    let sized = fs::File::create_new(&image)?.set_len(size);
    let made = sized
        .and_then(|()| {
            run(Command::new("mkfs.xfs")
                .args(["-q", "-m", "reflink=1"])
                .arg(&image))
        })
        .and_then(|()| fs::create_dir(root))
        .and_then(|()| mount(&image, root));
    or_removed(made, root)
}

/// Makes `to` (which must not exist) a clone of the image tree at `from`, sharing all its
/// extents: the tree as it was at one instant. Its filesystem is written out (`syncfs`),
/// then frozen for the clone and thawed right after (the source's writers wait that
/// long: 40 ms here, 140 ms just after 40,000 files were made): a frozen XFS has written
/// back all its metadata and left its log clean, so the clone mounts at once. Not frozen
/// (that is refused, or someone else holds it frozen), the clone is as a power cut at that
/// instant would leave the source, and mounting it replays the source's log (measured: 0.5
/// s after 40,000 files were made, until the source has written them back by itself, a
/// minute later). Either way the scan of the clone then records what it holds.
///
/// A doppel killed between the freeze and the thaw (a fraction of a second) leaves the
/// source frozen; the engine thaws it before it touches the tree again ([`ensure_mounted`]).
pub fn clone_tree(from: &Path, to: &Path) -> io::Result<()> {
    let (from_image, to_image) = (image_path(from), image_path(to));
    let dir = fsx::open_dir(from)?;
    // (Most of what is dirty is written before the writers are held.)
    fsx::syncfs(dir.as_fd())?;
    let source = fs::File::open(&from_image)?;
    let clone = fs::File::create_new(&to_image)?;
    let cloned = {
        let _frozen = Frozen::freeze(dir.as_fd());
        rustix::fs::ioctl_ficlone(&clone, &source).map_err(io::Error::from)
    };
    let cloned = cloned
        .and_then(|()| fs::create_dir(to))
        .and_then(|()| mount(&to_image, to));
    or_removed(cloned, to)
}

/// One freeze at a time in this process; held while an image tree is frozen, and while
/// [`ensure_mounted`] thaws what a killed doppel left frozen (so that it never thaws this
/// process's own freeze).
static FREEZING: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// An image tree's filesystem frozen by this process (`FIFREEZE`), thawed when dropped.
struct Frozen<'a> {
    dir: BorrowedFd<'a>,
    _one: std::sync::MutexGuard<'static, ()>,
}

impl<'a> Frozen<'a> {
    /// `None`: not frozen (refused: not permitted, or it is frozen already, by someone
    /// else).
    fn freeze(dir: BorrowedFd<'a>) -> Option<Frozen<'a>> {
        let one = FREEZING.lock().unwrap_or_else(|e| e.into_inner());
        // SAFETY: FIFREEZE takes an int argument it ignores, on an open descriptor.
        let r = unsafe { libc::ioctl(dir.as_raw_fd(), FIFREEZE as _, 0) };
        (r == 0).then_some(Frozen { dir, _one: one })
    }
}

impl Drop for Frozen<'_> {
    fn drop(&mut self) {
        if let Err(e) = thaw(self.dir) {
            tracing::error!(error = %e, "cannot thaw an image tree doppel froze");
        }
    }
}

/// Thaws the filesystem of `dir` (`FITHAW`). `false`: it was not frozen.
fn thaw(dir: BorrowedFd<'_>) -> io::Result<bool> {
    // SAFETY: FITHAW takes an int argument it ignores, on an open descriptor.
    let r = unsafe { libc::ioctl(dir.as_raw_fd(), FITHAW as _, 0) };
    match r {
        0 => Ok(true),
        _ => match io::Error::last_os_error() {
            e if e.raw_os_error() == Some(libc::EINVAL) => Ok(false),
            e => Err(e),
        },
    }
}

// <linux/fs.h>: _IOWR('X', 119, int) and _IOWR('X', 120, int).
pub(crate) const FIFREEZE: libc::c_ulong = 0xC004_5877;
pub(crate) const FITHAW: libc::c_ulong = 0xC004_5878;

/// `made` (a new image tree at `root`, whose image this call created); where it failed,
/// what it left of the tree and its image removed.
fn or_removed(made: io::Result<()>, root: &Path) -> io::Result<()> {
    if made.is_err() {
        let _ = fs::remove_dir(root);
        let _ = fs::remove_file(image_path(root));
    }
    made
}

/// Moves the image tree at `from` to `to` (which must not exist; a mount's root cannot be
/// renamed): its image renamed, its mount moved (`MS_MOVE`; where the mount above is
/// shared, which forbids that, unmounted and mounted again). The renames are made durable.
pub fn rename_tree(from: &Path, to: &Path) -> io::Result<()> {
    fs::rename(image_path(from), image_path(to))?;
    fs::create_dir(to)?;
    if move_mount(from, to).is_err() {
        unmount(from)?;
        mount(&image_path(to), to)?;
    }
    fs::remove_dir(from)?;
    for dir in [from.parent(), to.parent()].into_iter().flatten() {
        fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

/// Removes the image tree at `root` if it is one: unmounted, its root and image removed.
/// `false`: it is not an image tree (nothing was done).
fn remove_if_image(root: &Path) -> io::Result<bool> {
    if !is_image_tree(root) {
        return Ok(false);
    }
    unmount(root)?;
    fs::remove_dir(root)?;
    fs::remove_file(image_path(root))?;
    Ok(true)
}

/// Before a tree at `path` is removed: removes the image trees at `path` and below it
/// (unmounted, their images removed), and an image left beside `path` unmounted (by an
/// interruption), so that what remains is plain files. `true`: `path` itself was an image
/// tree, and is gone.
pub fn remove_image_trees(path: &Path) -> io::Result<bool> {
    remove_images_below(path)?;
    if remove_if_image(path)? {
        return Ok(true);
    }
    match fs::remove_file(image_path(path)) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(false),
    }
}

/// Unmounts everything mounted below `dir` (deepest first), removing the image trees
/// among them, so that `dir` can be removed as plain files: an interrupted copy's work dir,
/// say. (Below doppel's trees and work dirs, only doppel mounts; a mount whose image was
/// already renamed away by an interruption is unmounted too.)
fn remove_images_below(dir: &Path) -> io::Result<()> {
    let Ok(dir) = fs::canonicalize(dir) else {
        return Ok(());
    };
    let mut below: Vec<PathBuf> = fsx::mount_points()?
        .into_iter()
        .filter(|m| m.starts_with(&dir) && m != &dir)
        .collect();
    below.sort_by_key(|m| std::cmp::Reverse(m.as_os_str().len()));
    for m in below {
        if !remove_if_image(&m)? {
            unmount(&m)?;
        }
    }
    Ok(())
}

/// Mounts the XFS filesystem in `image` at `root` on a loop device of its own, by syscalls
/// (not `mount(8)`: a mount that a helper process finished after its caller was killed
/// could land on a tree the caller's next attempt had made since). The loop device is set
/// to clear itself when last closed: when the tree is unmounted, or, if this process dies
/// before the mount, when it does.
fn mount(image: &Path, root: &Path) -> io::Result<()> {
    let image = fs::OpenOptions::new().read(true).write(true).open(image)?;
    let control = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/loop-control")?;
    // A free device may be taken by another process before it is configured: try again.
    let mut tries = 0;
    let (device, path) = loop {
        // SAFETY: an ioctl without argument on an open descriptor.
        let n = unsafe { libc::ioctl(control.as_raw_fd(), LOOP_CTL_GET_FREE as _) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        let path = format!("/dev/loop{n}");
        let device = fs::OpenOptions::new().read(true).write(true).open(&path)?;
        let mut config = LoopConfig {
            fd: image.as_raw_fd() as u32,
            block_size: 0,
            info: [0; 232],
            reserved: [0; 8],
        };
        // `lo_flags`, after five u64 and three u32 of `loop_info64`.
        config.info[52..56].copy_from_slice(&LO_FLAGS_AUTOCLEAR.to_ne_bytes());
        // SAFETY: LOOP_CONFIGURE reads a `struct loop_config`, which `LoopConfig` lays out.
        let configured = unsafe { libc::ioctl(device.as_raw_fd(), LOOP_CONFIGURE as _, &config) };
        if configured == 0 {
            break (device, path);
        }
        let e = io::Error::last_os_error();
        tries += 1;
        if e.raw_os_error() != Some(libc::EBUSY) || tries == 10 {
            return Err(e);
        }
    };
    let mounted = mount_device(Path::new(&path), root);
    // (The mount holds the device now; closing it here clears it where the mount failed.)
    drop(device);
    mounted
}

/// Mounts the XFS of the loop device `device` at `root`.
fn mount_device(device: &Path, root: &Path) -> io::Result<()> {
    // `noatime`: reading a tree (doppel's scans, a backup, a copy by other means) writes
    // nothing into it, where `relatime` logs a new access time at the first read of each
    // file since its last change: doppel would write into a source it only reads.
    // `discard`: what is freed inside the tree is punched out of its image (a few seconds
    // later, at XFS's next log checkpoint), else a sparse image only grows: 200 MB
    // written and deleted kept 200 MB of the host without it, none with it (measured
    // with `du` of the image). `make bench`'s sync between image trees took as long
    // with it (0.28-0.34 s against 0.26-0.29 s, one run each: noise on this machine).
    rustix::mount::mount(
        device,
        root,
        "xfs",
        rustix::mount::MountFlags::NOATIME,
        c"nouuid,discard",
    )
    .map_err(io::Error::from)
}

// <linux/loop.h>
const LOOP_CTL_GET_FREE: libc::c_ulong = 0x4C82;
const LOOP_CONFIGURE: libc::c_ulong = 0x4C0A;
const LO_FLAGS_AUTOCLEAR: u32 = 4;
const LOOP_SET_CAPACITY: libc::c_ulong = 0x4C07;

/// `struct loop_config`: the backing file, a block size (0: the default) and a
/// `struct loop_info64` (232 bytes), then reserved room.
#[repr(C)]
struct LoopConfig {
    fd: u32,
    block_size: u32,
    info: [u8; 232],
    reserved: [u64; 8],
}

/// Moves the mount at `from` to `to` (an empty directory).
fn move_mount(from: &Path, to: &Path) -> io::Result<()> {
    rustix::mount::mount_move(from, to).map_err(io::Error::from)
}

/// Unmounts the filesystem at `root`, which the process's change watch lets go of first
/// ([`super::watch::Watch::release_shared`]). Busy, it is tried again for a moment (half a
/// second): the keeper of image trees' room ([`super::image_room`]) holds each tree open
/// for a few microseconds as it looks.
fn unmount(root: &Path) -> io::Result<()> {
    super::watch::Watch::release_shared(root);
    let mut tries = 0;
    loop {
        match rustix::mount::unmount(root, rustix::mount::UnmountFlags::NOFOLLOW) {
            Err(rustix::io::Errno::BUSY) if tries < 50 => {
                tries += 1;
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            done => return done.map_err(io::Error::from),
        }
    }
}

/// Runs a command, its failure an error that says what it printed.
fn run(cmd: &mut Command) -> io::Result<()> {
    let out = cmd.output().map_err(|e| {
        io::Error::new(
            e.kind(),
            format!("cannot run {}: {e}", cmd.get_program().to_string_lossy()),
        )
    })?;
    if out.status.success() {
        return Ok(());
    }
    Err(io::Error::other(format!(
        "{} failed: {}",
        cmd.get_program().to_string_lossy(),
        String::from_utf8_lossy(&out.stderr).trim()
    )))
}
