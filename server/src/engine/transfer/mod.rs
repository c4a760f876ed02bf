//! Copy and sync: the coordinator, the sender and the receiver.

use std::collections::HashMap;
use std::fs;
use std::io::{self, Write};
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::time::Instant;

use super::fsx::{self, split_parent, Walker};
use super::manifest::{diff, path_cmp, Change, Chunk, Entry, Kind, Manifest};
use super::scan::{self, chunked_file_hash, hash_reader, Listed, CHUNKED_FILE_MIN};
use super::wire::{self, Frame, FrameReader, FrameWriter, PipeReader, PipeWriter, WireStats};
use super::{btrfs, image, image_room};
use super::{Control, EngineError, FastMap, FastSet, Phase, Place, Summary};

/// When a scan of a source begins, by the clock the kernel stamps files with (the coarse
/// one): compared with the time its stored quick-check cache was written.
pub(super) fn scan_begins() -> std::time::SystemTime {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime only writes the timespec it is given.
    if unsafe { libc::clock_gettime(libc::CLOCK_REALTIME_COARSE, &mut ts) } != 0 {
        return std::time::SystemTime::now();
    }
    std::time::UNIX_EPOCH + std::time::Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// Stores `m`, a scan of the source `src` begun at `began` ([`scan_begins`]), as the
/// source's quick-check cache, unless another scan stored one since (a sync of another
/// copy of it, while this copy or sync ran). An older picture over a newer one would not
/// vouch for what changed in between: a probe, which reads no content, would then find a
/// state nobody recorded, and call every copy stale until a sync that reads them again.
pub(super) fn store_source_cache(
    src: &Place,
    m: &Manifest,
    began: std::time::SystemTime,
) -> Option<super::manifest::StoredAs> {
    let path = src.manifest_path();
    let newer = fs::metadata(&path)
        .and_then(|md| md.modified())
        .is_ok_and(|stored| stored >= began);
    if newer {
        return None;
    }
    m.store_unsynced(&path).ok()
}

mod clones;
mod copy;
mod peer;
mod receive;
mod sync;
mod untouched;

pub(super) use copy::copy;
pub use peer::{receive_copy_from, receive_sync_from, send_copy_to, send_sync_to, Duplex, Peer};
pub(super) use sync::sync;

fn io_err(context: &'static str) -> impl Fn(io::Error) -> EngineError {
    EngineError::io(context)
}

fn remove_tree(path: &Path) -> Result<(), EngineError> {
    if image::remove_image_trees(path).map_err(EngineError::io_path("removing", path))? {
        return Ok(());
    }
    match fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => {
            fs::remove_dir_all(path).map_err(EngineError::io_path("removing", path))
        }
        Ok(_) => fs::remove_file(path).map_err(EngineError::io_path("removing", path)),
        Err(_) => Ok(()),
    }
}

/// Moves a complete, durable tree to `dst.root` (its parent made if needed) and makes the
/// rename itself durable.
fn move_into_place(tree: &Path, dst: &Place) -> Result<(), EngineError> {
    if let Some(parent) = dst.root.parent() {
        fs::create_dir_all(parent).map_err(EngineError::io_path("creating", parent))?;
    }
    // (A mount's root cannot be renamed: an image tree is mounted again at its place.)
    if image::is_image_tree(tree) {
        return image::rename_tree(tree, &dst.root).map_err(EngineError::io_path(
            "moving the copy into place at",
            &dst.root,
        ));
    }
    fs::rename(tree, &dst.root).map_err(EngineError::io_path(
        "moving the copy into place at",
        &dst.root,
    ))?;
    if let Some(parent) = dst.root.parent() {
        if let Ok(d) = fs::File::open(parent) {
            let _ = d.sync_all();
        }
    }
    Ok(())
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
    let nothing = Manifest::default();
    let before = before.unwrap_or(&nothing);
    // Names of an inode with several links, before or after: linking or unlinking another
    // name of the same inode moves its ctime, though the entry itself did not change.
    let multiply_linked: FastSet<&[u8]> = before
        .entries
        .iter()
        .chain(&want.entries)
        .filter_map(|e| e.link_to.as_deref().map(|first| [first, e.path.as_slice()]))
        .flatten()
        .collect();
    let (pairs, deleted) = diff(before, want);
    // Directories whose entries were added, changed or removed, or that changed
    // themselves: their change times moved.
    let mut dirty: FastSet<&[u8]> = deleted.iter().map(|o| split_parent(&o.path).0).collect();
    for (c, w, _) in &pairs {
        if *c != Change::Unchanged {
            dirty.insert(split_parent(&w.path).0);
            if w.kind == Kind::Dir {
                dirty.insert(&w.path);
            }
        }
    }
    for (c, w, o) in pairs {
        // An entry that a sync found already as wanted was not touched by it: the state its
        // scan just read is current. (A directory, unless its entries changed.)
        if let Some(o) = o.filter(|o| {
            c == Change::Unchanged
                && match o.kind {
                    Kind::Dir => !dirty.contains(o.path.as_slice()),
                    _ => !multiply_linked.contains(o.path.as_slice()),
                }
        }) {
            if o.kind == Kind::Dir {
                // (As read back below: the wanted entry, with what the disk says of it.)
                let mut e = w.clone();
                (e.ino, e.ctime_ns) = (o.ino, o.ctime_ns);
                out.push(e);
            } else {
                out.push(o.clone());
            }
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

/// A file's whole content taken from elsewhere on the receiver's side (`from`: a `Reuse`
/// or `ReuseLocal` frame), then the end of the file the receiver must check it against.
fn send_reused(
    fw: &mut FrameWriter<PipeWriter>,
    from: Frame,
    e: &Entry,
    ctl: &Control,
) -> Result<(), EngineError> {
    ctl.sent_bytes(e.size);
    fw.send(&from).map_err(io_err("sending"))?;
    fw.send(&Frame::FileEnd {
        hash: e.hash,
        size: e.size,
    })
    .map_err(io_err("sending"))
}
