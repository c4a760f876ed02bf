//! Syncs skip the walks of trees that nothing changed since the last sync, where a tree
//! has a generation that moves with every change:
//! - a btrfs subvolume's: the transaction that last changed anything in it (after a
//!   `syncfs`, which commits every change made before it);
//! - elsewhere, the change watch's ([`crate::engine::watch`]), where the caller runs one
//!   (`serve` does) and it watches the tree's filesystem (ext4, XFS).
//!
//! At the end of a sync its target records both trees' generations (`untouched` in its
//! state dir). The next sync reads them again first:
//! - the target's unchanged: its recorded manifest is its state, no walk;
//! - the source's unchanged too: the last sync's result holds, nothing to do.
//!
//! The record also holds the paths `keep` named (a copy's own identity files), so a sync
//! that keeps other paths walks again. Elsewhere (other filesystems, a tree that is not a
//! subvolume's root, without a watch) every sync walks.
//!
//! A sync that wrote into the target reads its generation after its final `syncfs`: a
//! change someone else made to the copy while that sync ran (doppel itself holds the
//! container meanwhile) would be in that generation without being in the manifest, and is
//! seen only once the copy changes again. A sync that wrote nothing keeps the generation
//! it read before its walk, which has no such gap.

use std::fs;
use std::os::fd::AsFd;
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::super::manifest::StoredAs;
use super::super::watch::Watch;
use super::super::{btrfs, fsx, Manifest, Place, Summary};

/// A tree as a sync found it: what counts its generations (a subvolume's uuid, or a
/// watch's id), and its generation.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub(super) struct Mark {
    id: String,
    generation: u64,
}

impl Mark {
    /// The mark of the tree at `root` as the earlier of two to be compared (a btrfs
    /// subvolume's, committed first if `commit`, or the change watch's without its look at
    /// the processes: see [`Watch::earlier_generation`]).
    fn earlier(root: &Path, commit: bool, watch: Option<&Watch>) -> Option<Mark> {
        Mark::subvolume(root, commit).or_else(|| watch?.earlier_generation(root).map(Mark::from))
    }

    /// The mark of the btrfs subvolume whose root is `root` (`commit`: after a `syncfs`).
    fn subvolume(root: &Path, commit: bool) -> Option<Mark> {
        let fd = fsx::open_dir(root).ok()?;
        if !btrfs::is_subvolume(fd.as_fd()) {
            return None;
        }
        if commit {
            fsx::syncfs(fd.as_fd()).ok()?;
        }
        let (uuid, generation) = btrfs::subvolume_generation(fd.as_fd()).ok()?;
        Some(Mark {
            id: hex::encode(uuid),
            generation,
        })
    }
}

/// Both trees' marks, read as a sync starts.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub(super) struct Marks {
    pub(super) source: Mark,
    target: Mark,
}

/// What a sync leaves for the next one.
#[derive(Serialize, Deserialize)]
struct Record {
    marks: Marks,
    /// The paths `keep` named, of the target's entries (kept) and of the source's (left
    /// out of the state).
    kept: Vec<Vec<u8>>,
    /// What a sync that finds nothing to do says.
    unchanged: Summary,
}

/// What the last sync recorded, when the target is as it left it.
pub(super) struct Last {
    /// The source too: the last sync's result holds.
    pub(super) source_untouched: bool,
    pub(super) unchanged: Summary,
}

fn record_path(dst: &Place) -> std::path::PathBuf {
    dst.state_dir.join("untouched")
}

/// The source's quick-check cache (its stored manifest), paired with the source's mark
/// read before the scan that made it: where the watch saw no change since, the next scan
/// takes the cache's entries without looking at them.
#[derive(Serialize, Deserialize)]
struct Scanned {
    mark: Mark,
    manifest: StoredAs,
}

fn scanned_path(src: &Place) -> std::path::PathBuf {
    src.state_dir.join("scanned")
}

/// Where the source changed since its quick-check cache (`cache`, the manifest file
/// `stored`) was scanned: paths relative to its root, of directories whose entries changed
/// and of what changed in them. `marks` were read by this sync. A btrfs subvolume's tree
/// tells what changed since a generation; elsewhere `watch` does, if it watches the
/// source (up to `now`, the source's mark read last). `None` where neither knows.
///
/// `taken`: for a copy that took the source whole, the root of what it took and the
/// source's mark read before: only a cache scanned no later than that mark describes what
/// was taken or older (a sync running meanwhile may store a newer one), and btrfs names
/// the changed inodes where they are in the snapshot, not where they are now (a file
/// renamed since would be looked for under its new name).
pub(super) fn source_changes(
    src: &Place,
    taken: Option<(&Path, &Mark)>,
    cache: &Manifest,
    stored: StoredAs,
    now: &Mark,
    watch: Option<&Watch>,
) -> Option<Vec<Vec<u8>>> {
    let record: Scanned = serde_json::from_slice(&fs::read(scanned_path(src)).ok()?).ok()?;
    if record.manifest != stored || record.mark.id != now.id {
        return None;
    }
    if taken.is_some_and(|(_, before)| {
        before.id != record.mark.id || before.generation < record.mark.generation
    }) {
        return None;
    }
    let root = fsx::open_dir(&src.root).ok()?;
    if btrfs::is_subvolume(root.as_fd()) {
        let at = match taken {
            Some((taken, _)) => fsx::open_dir(taken).ok()?,
            None => root,
        };
        return subvolume_changes(at.as_fd(), cache, record.mark.generation);
    }
    watch_changes(watch?, src, &record.mark)
}

/// Where the watch saw the source change since `mark` (a mark of its own), as paths
/// (see [`Watch::changed_since`]).
fn watch_changes(watch: &Watch, src: &Place, mark: &Mark) -> Option<Vec<Vec<u8>>> {
    use std::os::unix::ffi::OsStringExt;
    let changed = watch.changed_since(&src.root, &mark.id, mark.generation)?;
    Some(
        changed
            .into_iter()
            .map(|p| p.into_os_string().into_vec())
            .collect(),
    )
}

/// Where the subvolume whose root is `root` changed since its generation `since` (its
/// changes committed since: [`marks`] commits them): every name of each inode written
/// since, and the directory each is in. `None` where a subvolume is nested in it (`cache`
/// records one: its changes are in a tree of its own) or the search fails.
fn subvolume_changes(
    root: std::os::fd::BorrowedFd<'_>,
    cache: &Manifest,
    since: u64,
) -> Option<Vec<Vec<u8>>> {
    if holds_subvolume(cache) {
        return None;
    }
    let mut changed = Vec::new();
    for ino in btrfs::changed_inodes(root, since).ok()? {
        for path in btrfs::inode_paths(root, ino).ok()? {
            changed.push(fsx::split_parent(&path).0.to_vec());
            changed.push(path);
        }
    }
    Some(changed)
}

/// Whether the scan `man` of a btrfs subvolume found another subvolume in it.
fn holds_subvolume(man: &Manifest) -> bool {
    man.entries
        .iter()
        .any(|e| e.kind == super::super::Kind::Dir && btrfs::is_nested_subvolume(e.ino))
}

/// Whether the source's scan `man` found a tree its generation does not cover (a btrfs
/// subvolume nested in the source's): then the next sync must walk it, as if it had no
/// marks.
pub(super) fn beyond_marks(src: &Place, man: &Manifest) -> bool {
    fsx::open_dir(&src.root).is_ok_and(|root| btrfs::is_subvolume(root.as_fd()))
        && holds_subvolume(man)
}

/// Drops the last sync's record: the next sync walks both trees.
pub(super) fn forget(dst: &Place) {
    let _ = fs::remove_file(record_path(dst));
}

/// Pairs the source's quick-check cache, just stored (`stored`) or found current, with the
/// source's mark `mark` (read before the scan, or before the tree scanned was taken).
pub(super) fn record_source(src: &Place, mark: &Mark, stored: StoredAs) {
    let record = Scanned {
        mark: mark.clone(),
        manifest: stored,
    };
    let Ok(bytes) = serde_json::to_vec(&record) else {
        return;
    };
    write_atomically(&scanned_path(src), &bytes);
}

/// Writes `bytes` to `path` whole (another sync may write the same record meanwhile); on
/// failure, no record at all. Not made durable: a record missing after a crash only costs
/// a walk, and an old one names a generation of a watch long gone.
fn write_atomically(path: &Path, bytes: &[u8]) {
    if fsx::replace_file(path, bytes, false).is_err() {
        let _ = fs::remove_file(path);
    }
}

/// The source's mark before a copy takes its tree whole (a clone of its image, a
/// snapshot): what changes from then on counts as changed since the scan of what was
/// taken. (As the earlier of two marks: see [`Watch::earlier_generation`].)
pub(super) fn source_mark_before(src: &Place, watch: Option<&Watch>) -> Option<Mark> {
    Mark::earlier(&src.root, true, watch)
}

/// The source's mark now, for [`source_changes`] after its tree was taken whole (btrfs
/// committed every change before a snapshot; the watch looks at the files open for
/// writing or mapped shared).
pub(super) fn source_mark_now(src: &Place, watch: Option<&Watch>) -> Option<Mark> {
    Mark::subvolume(&src.root, false).or_else(|| watch?.generation(&src.root).map(Mark::from))
}

/// Whether the change watch watches the source with `mark` (a mark of its, not btrfs's).
pub(super) fn watched_with(src: &Place, mark: &Mark, watch: Option<&Watch>) -> bool {
    watch
        .and_then(|w| w.earlier_generation(&src.root))
        .is_some_and(|(id, _)| id == mark.id)
}

/// Where the source changed since `mark` (read before its tree was taken whole), up to
/// now (a question with the look at the processes' files), as the change watch tells:
/// paths as [`source_changes`] gives them. `None` where it cannot tell (another watch, a
/// change it could not place).
pub(super) fn watched_since(
    src: &Place,
    mark: &Mark,
    watch: Option<&Watch>,
) -> Option<Vec<Vec<u8>>> {
    let watch = watch?;
    let (id, _) = watch.generation(&src.root)?;
    if id != mark.id {
        return None;
    }
    watch_changes(watch, src, mark)
}

/// Both trees' marks, if both have generations (committing their changes first).
pub(super) fn marks(src: &Place, dst: &Place, watch: Option<&Watch>) -> Option<Marks> {
    if let Some(source) = Mark::subvolume(&src.root, true) {
        let target = Mark::subvolume(&dst.root, true)?;
        return Some(Marks { source, target });
    }
    let [source, target] = watch?.generations([&src.root, &dst.root]);
    Some(Marks {
        source: source?.into(),
        target: target?.into(),
    })
}

impl From<(String, u64)> for Mark {
    /// A watch's generation.
    fn from((id, generation): (String, u64)) -> Mark {
        Mark { id, generation }
    }
}

/// The last sync's record, if the target is still as it left it (`marks`: read now),
/// `recorded` (the target's manifest) is the state it recorded, and `keep` names the same
/// paths.
pub(super) fn last(
    dst: &Place,
    marks: &Marks,
    recorded: Option<&Manifest>,
    keep: &dyn Fn(&[u8]) -> bool,
) -> Option<Last> {
    let record: Record = serde_json::from_slice(&fs::read(record_path(dst)).ok()?).ok()?;
    let recorded = recorded?;
    if record.marks.target != marks.target
        || recorded.root_hex() != record.unchanged.root_hash
        || !same_kept(&record.kept, recorded, keep)
    {
        return None;
    }
    Some(Last {
        source_untouched: record.marks.source == marks.source,
        unchanged: record.unchanged,
    })
}

/// Whether `keep` names exactly `kept` among the target's paths and the source's kept
/// ones (every other path of the source is one of the target's).
fn same_kept(kept: &[Vec<u8>], target: &Manifest, keep: &dyn Fn(&[u8]) -> bool) -> bool {
    let now: std::collections::BTreeSet<&[u8]> = target
        .entries
        .iter()
        .map(|e| e.path.as_slice())
        .chain(kept.iter().map(|p| p.as_slice()))
        .filter(|p| keep(p))
        .collect();
    now.len() == kept.len() && kept.iter().all(|p| now.contains(p.as_slice()))
}

/// Records, after a sync that reached `want` (`summary` says how), what the next sync
/// needs to skip its walks. `marks`: as read when this sync started; `changed`: whether it
/// wrote into the target (then committed: its generation is read again). `source_kept`:
/// the source's paths `keep` named.
#[allow(clippy::too_many_arguments)]
pub(super) fn record(
    dst: &Place,
    watch: Option<&Watch>,
    mut marks: Marks,
    changed: bool,
    want: &Manifest,
    source_kept: Vec<Vec<u8>>,
    keep: &dyn Fn(&[u8]) -> bool,
    summary: &Summary,
) {
    let path = record_path(dst);
    let target = if changed {
        // (Only ever compared with a mark read later.)
        Mark::earlier(&dst.root, false, watch)
    } else {
        Some(marks.target.clone())
    };
    let Some(target) = target else {
        let _ = fs::remove_file(&path);
        return;
    };
    marks.target = target;
    let mut kept = source_kept;
    kept.extend(
        want.entries
            .iter()
            .filter(|e| keep(&e.path))
            .map(|e| e.path.clone()),
    );
    kept.sort();
    kept.dedup();
    let record = Record {
        marks,
        kept,
        unchanged: Summary {
            files_unchanged: want.entries.len() as u64,
            tree_files: summary.tree_files,
            tree_bytes: summary.tree_bytes,
            root_hash: summary.root_hash.clone(),
            source_root_hash: summary.source_root_hash.clone(),
            identity_files: summary.identity_files.clone(),
            skipped_special: summary.skipped_special.clone(),
            skipped_special_count: summary.skipped_special_count,
            ..Summary::default()
        },
    };
    match serde_json::to_vec(&record) {
        Ok(bytes) => write_atomically(&path, &bytes),
        Err(_) => {
            let _ = fs::remove_file(&path);
        }
    }
}
