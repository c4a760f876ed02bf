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
/// The inode number of what a snapshot leaves where a subvolume was nested.
const EMPTY_SUBVOLUME_INO: u64 = 2;

/// Whether a directory of a btrfs subvolume with inode number `ino` is (or stands for) a
/// subvolume nested in it: its changes are in a tree of its own, and do not move the
/// generation of the subvolume it is in.
pub fn is_nested_subvolume(ino: u64) -> bool {
    matches!(ino, SUBVOLUME_ROOT_INO | EMPTY_SUBVOLUME_INO)
}

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

// Looking up what changed (linux/btrfs.h; both need CAP_SYS_ADMIN).
/// `_IOWR(0x94, 17, struct btrfs_ioctl_search_args_v2)` (112 bytes without its buffer).
const IOC_TREE_SEARCH_V2: libc::c_ulong = 0xC070_9411;
/// `_IOWR(0x94, 35, struct btrfs_ioctl_ino_path_args)` (56 bytes).
const IOC_INO_PATHS: libc::c_ulong = 0xC038_9423;
/// Item types (keys) of a subvolume's tree.
const INODE_ITEM_KEY: u32 = 1;
const EXTENT_DATA_KEY: u32 = 108;

/// `struct btrfs_ioctl_search_key`: the items from the `min` key to the `max` key
/// (objectid, type, offset, in that order), in tree blocks written in a transaction from
/// `min_transid` to `max_transid`.
#[repr(C)]
#[derive(Default)]
struct SearchKey {
    tree_id: u64,
    min_objectid: u64,
    max_objectid: u64,
    min_offset: u64,
    max_offset: u64,
    min_transid: u64,
    max_transid: u64,
    min_type: u32,
    max_type: u32,
    nr_items: u32,
    unused: u32,
    unused1: [u64; 4],
}

/// How many bytes of items one search returns at most.
const SEARCH_BUF: usize = 64 << 10;

/// `struct btrfs_ioctl_search_args_v2` with its buffer.
#[repr(C)]
struct SearchArgs {
    key: SearchKey,
    buf_size: u64,
    buf: [u8; SEARCH_BUF],
}

/// `struct btrfs_ioctl_ino_path_args`.
#[repr(C)]
struct InoPathArgs {
    inum: u64,
    size: u64,
    reserved: [u64; 4],
    /// A `struct btrfs_data_container *`.
    fspath: u64,
}

fn u64_at(bytes: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_le_bytes(bytes.get(at..at + 8)?.try_into().ok()?))
}

fn u32_at(bytes: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(bytes.get(at..at + 4)?.try_into().ok()?))
}

/// The inodes of the subvolume whose root is `root` that changed after its generation
/// `since` (as [`subvolume_generation`] gave it): those whose inode item or a data extent
/// was written in a later transaction. The search reads only the tree blocks written
/// since, so it costs what changed, not the tree's size. Changes not yet committed may be
/// missing: commit first (`syncfs`). A deleted inode is not among them; its directory is
/// (an entry gone changes the directory's times).
pub fn changed_inodes(root: BorrowedFd<'_>, since: u64) -> io::Result<Vec<u64>> {
    let mut args: Box<SearchArgs> = Box::new(SearchArgs {
        key: SearchKey {
            // (0: the tree of the subvolume `root` is in.)
            tree_id: 0,
            min_objectid: SUBVOLUME_ROOT_INO,
            max_objectid: u64::MAX,
            max_offset: u64::MAX,
            min_transid: since + 1,
            max_transid: u64::MAX,
            max_type: u32::from(u8::MAX),
            ..SearchKey::default()
        },
        buf_size: SEARCH_BUF as u64,
        buf: [0; SEARCH_BUF],
    });
    let mut changed = Vec::new();
    loop {
        args.key.nr_items = u32::MAX;
        args.buf_size = SEARCH_BUF as u64;
        ioctl(root, IOC_TREE_SEARCH_V2, &mut *args)?;
        let found = args.key.nr_items;
        if found == 0 {
            return Ok(changed);
        }
        let mut at = 0;
        let mut last = (0, 0, 0);
        for _ in 0..found {
            // `struct btrfs_ioctl_search_header`, then the item.
            let header = &args.buf[at..];
            let bad = || io::Error::new(io::ErrorKind::InvalidData, "a malformed tree search");
            let objectid = u64_at(header, 8).ok_or_else(bad)?;
            let offset = u64_at(header, 16).ok_or_else(bad)?;
            let kind = u32_at(header, 24).ok_or_else(bad)?;
            let len = u32_at(header, 28).ok_or_else(bad)? as usize;
            let item = args.buf.get(at + 32..at + 32 + len).ok_or_else(bad)?;
            at += 32 + len;
            last = (objectid, kind, offset);
            // The transaction that wrote it: an inode item's `transid`, an extent's
            // `generation` (the tree block's may be later for items it did not change).
            let written = match kind {
                INODE_ITEM_KEY => u64_at(item, 8),
                EXTENT_DATA_KEY => u64_at(item, 0),
                _ => None,
            };
            if written.is_some_and(|t| t > since) && changed.last() != Some(&objectid) {
                changed.push(objectid);
            }
        }
        // On from the key after the last one found.
        let (objectid, kind, offset) = last;
        match (offset.checked_add(1), kind < u32::from(u8::MAX)) {
            (Some(next), _) => (args.key.min_offset, args.key.min_type) = (next, kind),
            (None, true) => (args.key.min_offset, args.key.min_type) = (0, kind + 1),
            (None, false) => match objectid.checked_add(1) {
                Some(next) => {
                    (args.key.min_offset, args.key.min_type) = (0, 0);
                    args.key.min_objectid = next;
                    continue;
                }
                None => return Ok(changed),
            },
        }
        args.key.min_objectid = objectid;
    }
}

/// Every name of the inode `ino` in the subvolume whose root is `root`: paths relative to
/// that root (`""` for the root itself). Empty for an inode gone.
pub fn inode_paths(root: BorrowedFd<'_>, ino: u64) -> io::Result<Vec<Vec<u8>>> {
    if ino == SUBVOLUME_ROOT_INO {
        return Ok(vec![Vec::new()]);
    }
    // `struct btrfs_data_container`: four u32 counts, then offsets (from the first offset)
    // of NUL-terminated paths, which follow. (The kernel fills at most 4 KiB.)
    const SIZE: usize = 4096;
    let mut buf = vec![0u64; SIZE / 8];
    let mut args = InoPathArgs {
        inum: ino,
        size: SIZE as u64,
        reserved: [0; 4],
        fspath: buf.as_mut_ptr() as u64,
    };
    match ioctl(root, IOC_INO_PATHS, &mut args) {
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(Vec::new()),
        r => r?,
    }
    // SAFETY: the u64 buffer the kernel filled, seen as its bytes.
    let bytes: &[u8] = unsafe { std::slice::from_raw_parts(buf.as_ptr().cast(), SIZE) };
    let bad = || io::Error::new(io::ErrorKind::InvalidData, "a malformed path list");
    let count = u32_at(bytes, 8).ok_or_else(bad)? as usize;
    if u32_at(bytes, 12).ok_or_else(bad)? > 0 {
        return Err(io::Error::other(
            "an inode with more names than fit in 4 KiB",
        ));
    }
    let vals = &bytes[16..];
    (0..count)
        .map(|i| {
            let off = u64_at(vals, i * 8).ok_or_else(bad)? as usize;
            let rest = vals.get(off..).ok_or_else(bad)?;
            let end = rest.iter().position(|c| *c == 0).ok_or_else(bad)?;
            Ok(rest[..end].to_vec())
        })
        .collect()
}
