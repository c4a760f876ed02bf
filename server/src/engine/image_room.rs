//! Image trees promise no more room than their host can back.
//!
//! An image tree's image is sparse: its XFS offers its container the image's whole size,
//! while the host filesystem that holds the image backs only what it has written. Where
//! the host fills up first, the loop device's writes fail after the container's `write`
//! calls succeeded: the data is lost ("critical space allocation error" in the kernel's
//! log, a `fsync` that fails, if anyone calls it; measured with a 1 GiB image on a 400 MB
//! host: a 500 MB `dd` "succeeded" and half of it was gone).
//!
//! So a keeper (a thread of `serve` and of the agent) tells each mounted image tree below
//! the data dir, several times a second, how much room its host has left: it raises the
//! tree's XFS reserve (`XFS_IOC_SET_RESBLKS`, blocks XFS keeps back from everyone) until
//! what the tree offers is no more than the host's free space, less a margin and less
//! what the trees hold that the host has not been given yet (written into a tree's page
//! cache but not yet out to its image). XFS counts a write against its free space when
//! the write is made, so a tree that reaches its allowance refuses the write itself, with
//! "no space left on device", and nothing accepted is lost. As room comes back (a tree
//! emptied: they are mounted `discard`, so their image gives it back), the reserve goes
//! back down to XFS's own.
//!
//! What it cannot bound: a tree overwriting in place what its image still shares with a
//! clone (every copy of an image tree is one) takes new room on the host when that is
//! written back, with nothing allocated inside the tree that a reserve could refuse; a
//! host that fills up that way still fails those writes. The margin covers what several
//! trees write between two looks, and the first of such overwrites. It keeps them only
//! while doppel runs: a tree keeps the reserve last set when doppel stops, and the next
//! start sets it again. A look costs about 7 µs per tree (100 trees: 0.67 ms, 0.3 % of a
//! core at five looks a second).

use std::collections::HashMap;
use std::fs;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::thread::JoinHandle;
use std::time::Duration;

use super::{fsx, image};

/// How often the keeper looks.
pub const EVERY: Duration = Duration::from_millis(200);

/// Room kept free on a host filesystem: for the writes made between two looks (above).
/// 2 % of the host, at least 256 MiB and at most 8 GiB.
pub fn margin(host_bytes: u64) -> u64 {
    (host_bytes / 50).clamp(256 << 20, 8 << 30)
}

/// Starts the keeper for the image trees mounted below `dir` (a data dir), on a thread of
/// its own for the life of the process.
pub fn keep_below(dir: &Path) {
    let Ok(mut keeper) = Keeper::new(dir, None) else {
        return;
    };
    let started = std::thread::Builder::new()
        .name("doppel-room".into())
        .spawn(move || loop {
            keeper.look();
            std::thread::sleep(EVERY);
        });
    if let Err(e) = started {
        tracing::warn!(error = %e, "cannot watch the room image trees have on their host");
    }
}

/// The room of the image tree at `root` as if the keeper held none of it back: (free,
/// size) in bytes. What a tree holds is its size less this (the reserve the keeper raised
/// is room the tree has, not room it uses).
/// Where the reserve cannot be read (not permitted), the free space as the filesystem says.
pub fn own_room(root: &Path) -> io::Result<(u64, u64)> {
    let dir = fs::File::open(root)?;
    let st = rustix::fs::fstatvfs(&dir)?;
    let block = st.f_frsize.max(1);
    let own = match get_reserve(&dir) {
        Ok(res) => {
            let image = fs::metadata(image::image_path(root))?;
            let base = xfs_base_reserve(image.len() / block);
            st.f_bavail + res.available.saturating_sub(base)
        }
        Err(_) => st.f_bavail,
    };
    Ok((own * block, st.f_blocks * block))
}

/// XFS's own reserve for a filesystem whose data section has `blocks` blocks (an image
/// tree's: its image's length, log included): 5 % of them, at most 8192
/// (`xfs_default_resblks`).
fn xfs_base_reserve(blocks: u64) -> u64 {
    (blocks / 20).min(8192)
}

/// What the keeper gave one tree at its last look.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Allowance {
    pub root: PathBuf,
    /// Bytes the tree offers its container now.
    pub offered: u64,
    /// Bytes it would offer if its host had room enough.
    pub own: u64,
}

/// The keeper of the image trees below one directory.
pub struct Keeper {
    dir: PathBuf,
    /// A fixed margin (tests); `None`: [`margin`] of each host.
    margin: Option<u64>,
    /// `/proc/self/mountinfo`, open: it says when the mounts changed (`poll`).
    mountinfo: fs::File,
    trees: Vec<Tree>,
    /// Whether a host was short of room at the last look (to log when that changes).
    short: bool,
}

struct Tree {
    root: PathBuf,
    image: PathBuf,
    /// The device of the tree's filesystem: a root found on another is not it any more.
    dev: u64,
    /// A reserve being set (on a thread: setting it waits while the tree is frozen).
    setting: Option<JoinHandle<()>>,
    /// The least the tree was ever seen to hold beyond its image: what XFS sets aside in
    /// it for its own metadata (per allocation group; about 0.6 % of a tree with reflinks)
    /// counts as used and is never written. Taken off what it holds beyond its image.
    set_aside: Option<u64>,
    /// Whether its reserve could not be read, said once.
    unreadable: bool,
}

impl Keeper {
    pub fn new(dir: &Path, margin: Option<u64>) -> io::Result<Keeper> {
        let mut keeper = Keeper {
            dir: fs::canonicalize(dir)?,
            margin,
            mountinfo: fs::File::open("/proc/self/mountinfo")?,
            trees: Vec::new(),
            short: false,
        };
        keeper.find_trees();
        Ok(keeper)
    }

    /// Looks at every tree and its host once, and sets the reserve of those whose
    /// allowance changed; says what each tree offers now.
    pub fn look(&mut self) -> Vec<Allowance> {
        if self.mounts_changed() {
            self.find_trees();
        }
        let mut hosts: HashMap<u64, Host> = HashMap::new();
        let mut seen = Vec::new();
        for (i, tree) in self.trees.iter_mut().enumerate() {
            let mut state = match TreeState::read(tree) {
                Ok(state) => state,
                Err(e) => {
                    if !tree.unreadable && e.kind() != io::ErrorKind::NotFound {
                        tree.unreadable = true;
                        tracing::warn!(tree = %tree.root.display(), error = %e,
                            "cannot read an image tree's room; it is not held to its host's");
                    }
                    continue;
                }
            };
            // (At most what XFS could set aside: a tree found while it is being filled
            // would otherwise have what it holds in memory taken for that.)
            let beyond = state.pending.min(state.size / 100 + (16 << 20));
            let set_aside = tree.set_aside.map_or(beyond, |s| s.min(beyond));
            tree.set_aside = Some(set_aside);
            state.pending -= set_aside;
            let Ok(host) = Host::of(state.host_dev, &tree.image, &mut hosts) else {
                continue;
            };
            host.pending += state.pending;
            seen.push((i, state));
        }
        let mut allowances = Vec::new();
        let mut short = false;
        for (i, state) in seen {
            let host = &hosts[&state.host_dev];
            let margin = self.margin.unwrap_or_else(|| margin(host.size));
            let room = host.free.saturating_sub(margin + host.pending);
            let (own, offered) = (state.own, state.own.min(room));
            short |= offered < own;
            let tree = &mut self.trees[i];
            allowances.push(Allowance {
                root: tree.root.clone(),
                offered,
                own,
            });
            if tree.setting.as_ref().is_some_and(|t| !t.is_finished()) {
                continue;
            }
            let want = state.base + (own - offered).div_ceil(state.block);
            // Less room: at once. More: once it is worth an ioctl (16 MiB).
            let worth = (16 << 20) / state.block;
            if want > state.reserve || state.reserve >= want + worth {
                tree.setting = state.set_reserve(want);
            }
        }
        if short != self.short {
            self.short = short;
            if short {
                tracing::warn!(
                    "image trees now offer their containers only what their host has left"
                );
            } else {
                tracing::info!("image trees offer their containers their whole size again");
            }
        }
        allowances
    }

    /// Waits for the reserves being set.
    #[cfg(test)]
    pub fn settle(&mut self) {
        for tree in &mut self.trees {
            if let Some(t) = tree.setting.take() {
                let _ = t.join();
            }
        }
    }

    /// Whether the mounts changed since the last look (`/proc/self/mountinfo` polls with
    /// `POLLPRI` then, once).
    fn mounts_changed(&self) -> bool {
        let mut fd = libc::pollfd {
            fd: self.mountinfo.as_raw_fd(),
            events: libc::POLLPRI,
            revents: 0,
        };
        // SAFETY: one pollfd, which lives across the call.
        let n = unsafe { libc::poll(&mut fd, 1, 0) };
        n > 0 && fd.revents & (libc::POLLPRI | libc::POLLERR) != 0
    }

    fn find_trees(&mut self) {
        let mut found = Vec::new();
        for root in fsx::mount_points().unwrap_or_default() {
            if !root.starts_with(&self.dir) {
                continue;
            }
            // The device before and after it is found an image tree: the same, or it was
            // unmounted meanwhile (and its device would be its host's).
            let dev = || fs::metadata(&root).map(|m| m.dev()).ok();
            let before = dev();
            if !image::is_image_tree(&root) || before.is_none() || dev() != before {
                continue;
            }
            let dev = before.expect("checked");
            // A tree found before keeps what the keeper knows of it (a mount elsewhere
            // must not make it forget what XFS sets aside in it), and the thread setting
            // its reserve.
            let before = self
                .trees
                .iter_mut()
                .find(|t| t.root == root && t.dev == dev);
            let (setting, set_aside) = before
                .map(|t| (t.setting.take(), t.set_aside))
                .unwrap_or_default();
            found.push(Tree {
                image: image::image_path(&root),
                root,
                dev,
                setting,
                set_aside,
                unreadable: false,
            });
        }
        self.trees = found;
    }
}

/// A host filesystem holding images.
struct Host {
    size: u64,
    free: u64,
    /// What its trees hold that their images do not yet.
    pending: u64,
}

impl Host {
    /// The host on device `dev`, which holds `image`; read at its first image.
    fn of<'a>(
        dev: u64,
        image: &Path,
        hosts: &'a mut HashMap<u64, Host>,
    ) -> io::Result<&'a mut Host> {
        use std::collections::hash_map::Entry;
        match hosts.entry(dev) {
            Entry::Occupied(host) => Ok(host.into_mut()),
            Entry::Vacant(new) => {
                let st = rustix::fs::statvfs(image)?;
                Ok(new.insert(Host {
                    size: st.f_blocks * st.f_frsize,
                    free: st.f_bavail * st.f_frsize,
                    pending: 0,
                }))
            }
        }
    }
}

/// One tree as the keeper read it.
struct TreeState {
    dir: fs::File,
    host_dev: u64,
    block: u64,
    /// XFS's own reserve for the filesystem, in blocks.
    base: u64,
    /// The reserve asked for now, in blocks.
    reserve: u64,
    /// Bytes it would offer with XFS's own reserve.
    own: u64,
    /// Bytes it holds that its image does not yet hold on the host.
    pending: u64,
    /// Its size, in bytes.
    size: u64,
}

impl TreeState {
    fn read(tree: &Tree) -> io::Result<TreeState> {
        let dir = fs::File::open(&tree.root)?;
        let image = fs::metadata(&tree.image)?;
        // What is open must be the root of the tree's own filesystem: a reserve set on
        // anything else (its host's, were it unmounted since it was found) would take
        // that filesystem's free space.
        if !is_root_of(&dir, tree.dev) || tree.dev == image.dev() {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                "not the tree's filesystem any more",
            ));
        }
        let st = rustix::fs::fstatvfs(&dir)?;
        let block = st.f_frsize.max(1);
        let res = get_reserve(&dir)?;
        let base = xfs_base_reserve(image.len() / block);
        // Free blocks exclude the reserve; what of it is unused beyond XFS's own would be
        // free without the keeper.
        let own_blocks = st.f_bavail + res.available.saturating_sub(base);
        let used = st
            .f_blocks
            .saturating_sub(st.f_bfree)
            .saturating_sub(res.available)
            * block;
        // The image holds the filesystem's log too (written whole when it was made, or
        // shared with the image it was cloned from), which its free space leaves out: the
        // filesystem spans the whole image, less the log.
        let log = image.len().saturating_sub(st.f_blocks * block);
        let held = (image.blocks() * 512).saturating_sub(log);
        Ok(TreeState {
            host_dev: image.dev(),
            block,
            base,
            reserve: res.asked,
            own: own_blocks * block,
            pending: used.saturating_sub(held),
            size: st.f_blocks * block,
            dir,
        })
    }

    /// Sets the reserve to `blocks`, on a thread (`XFS_IOC_SET_RESBLKS` waits while the
    /// filesystem is frozen, which someone else may hold for long).
    fn set_reserve(self, blocks: u64) -> Option<JoinHandle<()>> {
        let dir = self.dir;
        std::thread::Builder::new()
            .name("doppel-room-set".into())
            .spawn(move || {
                if let Err(e) = set_reserve(&dir, blocks) {
                    tracing::warn!(error = %e, "cannot set an image tree's reserve");
                }
            })
            .ok()
    }
}

/// Whether the keeper would read (and so could set the reserve of) the tree at `root`,
/// found on device `dev`.
#[cfg(test)]
pub(crate) fn would_keep(root: &Path, dev: u64) -> bool {
    let tree = Tree {
        root: root.to_path_buf(),
        image: image::image_path(root),
        dev,
        setting: None,
        set_aside: None,
        unreadable: false,
    };
    TreeState::read(&tree).is_ok()
}

/// Whether `dir` is the root of a mount of the filesystem on device `dev`.
fn is_root_of(dir: &fs::File, dev: u64) -> bool {
    let here = image::mount_root_device(dir, Path::new(""), rustix::fs::AtFlags::EMPTY_PATH);
    here.is_some_and(|(major, minor)| rustix::fs::makedev(major, minor) == dev)
}

/// `struct xfs_fsop_resblks`.
#[repr(C)]
#[derive(Default)]
struct Resblks {
    asked: u64,
    available: u64,
}

// <xfs/xfs_fs.h>: _IOWR('X', 114, struct xfs_fsop_resblks), _IOR('X', 115, ...).
const XFS_IOC_SET_RESBLKS: libc::c_ulong = 0xC010_5872;
const XFS_IOC_GET_RESBLKS: libc::c_ulong = 0x8010_5873;

fn get_reserve(dir: &fs::File) -> io::Result<Resblks> {
    let mut r = Resblks::default();
    // SAFETY: the ioctl writes a `struct xfs_fsop_resblks`, which `Resblks` lays out.
    let n = unsafe { libc::ioctl(dir.as_raw_fd(), XFS_IOC_GET_RESBLKS as _, &mut r) };
    if n != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(r)
}

fn set_reserve(dir: &fs::File, blocks: u64) -> io::Result<()> {
    let mut r = Resblks {
        asked: blocks,
        available: 0,
    };
    // SAFETY: the ioctl reads and writes a `struct xfs_fsop_resblks`.
    let n = unsafe { libc::ioctl(dir.as_raw_fd(), XFS_IOC_SET_RESBLKS as _, &mut r) };
    if n != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}
