//! btrfs subvolumes. On btrfs every tree the engine lays down is a subvolume of its own, so
//! that a copy on the same filesystem is one snapshot: the source's whole tree shared at
//! once (its size does not matter), where a reflink per file costs a file's creation each.
//! A tree that is not a subvolume (made before, or by hand) is still copied file by file.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};

/// `statfs.f_type` of btrfs.
const BTRFS_SUPER_MAGIC: i64 = 0x9123_683E;
/// The inode number of a subvolume's root directory.
const SUBVOLUME_ROOT_INO: u64 = 256;

// The ioctls (linux/btrfs.h): _IOW(0x94, nr, 4096-byte argument).
const IOC_SUBVOL_CREATE: libc::c_ulong = 0x5000_940E;
const IOC_SNAP_DESTROY: libc::c_ulong = 0x5000_940F;
const IOC_SNAP_CREATE_V2: libc::c_ulong = 0x5000_9417;

/// `struct btrfs_ioctl_vol_args`.
#[repr(C)]
struct VolArgs {
    fd: i64,
    name: [u8; 4088],
}

/// `struct btrfs_ioctl_vol_args_v2` (flags 0: a writable snapshot).
#[repr(C)]
struct VolArgsV2 {
    fd: i64,
    transid: u64,
    flags: u64,
    unused: [u64; 4],
    name: [u8; 4040],
}

/// The name as the kernel takes it: NUL-terminated, one component.
fn c_name<const N: usize>(name: &[u8]) -> io::Result<[u8; N]> {
    if name.is_empty() || name.len() >= N || name.contains(&0) || name.contains(&b'/') {
        return Err(io::Error::from(io::ErrorKind::InvalidInput));
    }
    let mut out = [0u8; N];
    out[..name.len()].copy_from_slice(name);
    Ok(out)
}

fn ioctl<T>(dir: BorrowedFd<'_>, request: libc::c_ulong, args: &mut T) -> io::Result<()> {
    // SAFETY: `args` is the argument struct of `request`, laid out as linux/btrfs.h says,
    // and lives through the call.
    let r = unsafe { libc::ioctl(dir.as_raw_fd(), request as _, args as *mut T) };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// Whether the directory `dir` is on btrfs.
pub fn is_btrfs(dir: BorrowedFd<'_>) -> bool {
    // SAFETY: fstatfs fills the zeroed struct it is given.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    let r = unsafe { libc::fstatfs(dir.as_raw_fd(), &mut st) };
    r == 0 && st.f_type as i64 == BTRFS_SUPER_MAGIC
}

/// Whether the directory `dir` is the root of a btrfs subvolume.
pub fn is_subvolume(dir: BorrowedFd<'_>) -> bool {
    is_btrfs(dir) && rustix::fs::fstat(dir).is_ok_and(|st| st.st_ino == SUBVOLUME_ROOT_INO)
}

/// Makes `name` in `parent` a new, empty subvolume.
pub fn create_subvolume(parent: BorrowedFd<'_>, name: &[u8]) -> io::Result<()> {
    let mut args = VolArgs {
        fd: 0,
        name: c_name(name)?,
    };
    ioctl(parent, IOC_SUBVOL_CREATE, &mut args)
}

/// Makes `name` in `parent` a writable snapshot of the subvolume `source`: the whole tree,
/// as it is at this instant, sharing all its data and metadata with the source.
pub fn snapshot(source: BorrowedFd<'_>, parent: BorrowedFd<'_>, name: &[u8]) -> io::Result<()> {
    let mut args = VolArgsV2 {
        fd: i64::from(source.as_raw_fd()),
        transid: 0,
        flags: 0,
        unused: [0; 4],
        name: c_name(name)?,
    };
    ioctl(parent, IOC_SNAP_CREATE_V2, &mut args)
}

/// Deletes the subvolume `name` in `parent` whole, whatever it holds (one operation; the
/// space is given back in the background). Fails on a subvolume that holds another.
pub fn delete_subvolume(parent: BorrowedFd<'_>, name: &[u8]) -> io::Result<()> {
    let mut args = VolArgs {
        fd: 0,
        name: c_name(name)?,
    };
    ioctl(parent, IOC_SNAP_DESTROY, &mut args)
}

const IOC_GET_SUBVOL_INFO: libc::c_ulong = 0x81F8_943C;

/// `struct btrfs_ioctl_get_subvol_info_args` (504 bytes).
#[repr(C)]
struct SubvolInfo {
    treeid: u64,
    name: [u8; 256],
    parent_id: u64,
    dirid: u64,
    generation: u64,
    flags: u64,
    uuid: [u8; 16],
    parent_uuid: [u8; 16],
    received_uuid: [u8; 16],
    transids: [u64; 4],
    /// ctime, otime, stime, rtime: `{ u64 sec; u32 nsec; }`, padded to 16 bytes each.
    times: [[u64; 2]; 4],
    reserved: [u64; 8],
}

/// The subvolume `dir` is in: its UUID, and its generation (the transaction that last
/// changed anything in it). Only committed changes count: a `syncfs` first commits every
/// change made before it (and writes dirty pages, whose extents change the tree too).
pub fn subvolume_generation(dir: BorrowedFd<'_>) -> io::Result<([u8; 16], u64)> {
    // SAFETY: the kernel fills the zeroed struct, laid out as linux/btrfs.h says.
    let mut info: SubvolInfo = unsafe { std::mem::zeroed() };
    ioctl(dir, IOC_GET_SUBVOL_INFO, &mut info)?;
    Ok((info.uuid, info.generation))
}
