//! A sync: stage what changed, verify it, write the commit marker, apply, verify again.

use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

use crate::engine::scan::Sharing;
use crate::engine::watch::Watch;

use super::receive::*;
use super::*;

pub(in crate::engine) fn sync(
    src: &Place,
    dst: &Place,
    keep: &dyn Fn(&[u8]) -> bool,
    ctl: &Control,
) -> Result<Summary, EngineError> {
    let started = Instant::now();
    let prepared = prepare_target(dst)?;
    ctl.phase(Phase::Scan, None, None);
    // Between btrfs subvolumes, or watched trees: the trees nothing changed since the last
    // sync are not walked.
    let watch = ctl.watch.as_deref();
    // The marks (the watch looks at every process) while the target's manifest and the
    // source's quick-check cache are read: none needs another, and each took a few
    // milliseconds of a sync of 40,000 files. (The target's is mostly kept decoded from
    // the sync before: `Manifest::store_keeping`. A sync that finds neither tree changed
    // reads the source's cache for nothing, as it used to decode the target's.)
    let (marks, old, source_cache) = std::thread::scope(|s| {
        let marks = (!prepared.interrupted_commit && !prepared.recovered)
            .then(|| s.spawn(|| untouched::marks(src, dst, watch)));
        let source_cache = s.spawn(|| SourceCache::load(src));
        let old = recorded_target(dst, prepared);
        let marks = marks.and_then(|m| m.join().ok()).flatten();
        (marks, old, source_cache.join())
    });
    let source_cache = source_cache
        .map_err(|_| EngineError::Integrity("reading the source's cache panicked".into()))?;
    let old = old?;
    let last = marks
        .as_ref()
        .and_then(|m| untouched::last(dst, m, old.as_ref(), keep));
    if let Some(last) = last.as_ref().filter(|l| l.source_untouched) {
        let mut summary = last.unchanged.clone();
        summary.duration_ms = started.elapsed().as_millis() as u64;
        summary.phase_ms = ctl.timings();
        return Ok(summary);
    }
    // Both trees at once, each with its recorded manifest as quick-check cache: each scan
    // is mostly waiting on metadata syscalls. A target as the last sync left it is not
    // scanned.
    let walk_target = last.is_none();
    // (Looked at once: the twin's extents and the transfer both depend on it.)
    let images = images_of_one_server(src, dst);
    let (s_scan, t_scan) = std::thread::scope(|s| {
        let t = walk_target.then(|| s.spawn(|| scan::scan(&dst.root, old.as_ref(), true, ctl)));
        let twin = || {
            old.as_ref()
                .and_then(|recorded| twin(src, dst, recorded, images))
        };
        let src_result = scan_source_beside(src, source_cache, twin, marks.as_ref(), watch, ctl);
        (src_result, t.map(|t| t.join()))
    });
    let (s_man, s_report) = s_scan?;
    let target = match t_scan {
        Some(t) => {
            let t = t.map_err(|_| EngineError::Integrity("the target scan panicked".into()))?;
            TargetState::new(prepared, old, t?)
        }
        // Its recorded manifest is its state: nothing to compare it with for drift.
        None => TargetState {
            prepared,
            old: None,
            man: old.ok_or_else(|| EngineError::Integrity("no recorded target".into()))?,
            recorded: true,
        },
    };

    ctl.phase(Phase::Plan, None, None);
    let mut summary = Summary::default();
    if s_report.shared_bytes > 0 {
        summary.notes.push(format!(
            "{:.1} MB of changed files not read again: their extents are still shared with \
             the copy's",
            s_report.shared_bytes as f64 / 1e6
        ));
    }
    if s_report.compared_bytes > 0 {
        summary.notes.push(format!(
            "{:.1} MB of changed files compared with the copy's cached bytes instead of \
             hashed",
            s_report.compared_bytes as f64 / 1e6
        ));
    }
    if s_report.partial {
        summary.notes.push(format!(
            "the source's scan read again only where it changed since its last scan ({} \
             directories listed, {} entries looked at); the rest is as that scan found it",
            s_report.listed_dirs, s_report.looked_at
        ));
    }
    drift(&target, keep, &mut summary);
    let marks = match marks {
        Some(_) if untouched::beyond_marks(src, &s_man) => {
            untouched::forget(dst);
            None
        }
        marks => marks,
    };
    let source_kept: Vec<Vec<u8>> = match marks {
        Some(_) => s_man
            .entries
            .iter()
            .filter(|e| keep(&e.path))
            .map(|e| e.path.clone())
            .collect(),
        None => Vec::new(),
    };
    let mut plan = plan(s_man, &s_report, &target.man, keep, &mut summary, ctl);
    let received = if plan.files_total > 0 {
        summary
            .notes
            .extend(make_room(dst, plan.want.bytes(), plan.bytes_total)?);
        let stage = stage_dir(dst)?;
        // On the source's filesystem, changed files are laid down by the kernel from the
        // source (shared extents, or copy_file_range) instead of streamed; deltas of large
        // files stay deltas (only their new ranges are written). Between two image trees
        // of one server, the receiver reads them from the source itself (the kernel copies
        // nothing across two filesystems): one server's data crosses no connection.
        let kernel = !ctl.stream_only
            && super::copy::same_filesystem(&src.root, &stage)
            && fsx::kernel_copy_support(&dst.work_dir()).is_some();
        let source = [src.clone()];
        let (trees, source_tree): (&[Place], _) = if kernel || (images && !ctl.stream_only) {
            (&source, Some(0))
        } else {
            (&[], None)
        };
        // Even with shared extents a sync writes pages (a large file's new ranges); a
        // short one ends before the first round.
        let writeback = fsx::WriteBack::start(&stage);
        let result = (|| {
            let (w, r) = wire::pipe();
            let (sent, received) = std::thread::scope(|s| {
                let man = &target.man;
                let (changes, deleted) = (&plan.changes, &plan.deleted);
                let sender =
                    s.spawn(|| send_sync(&src.root, (changes, deleted), man, source_tree, w, ctl));
                let received = receive(
                    Mode::Sync,
                    &dst.root,
                    &stage,
                    r,
                    Some(man),
                    (trees, source_tree),
                    ctl,
                );
                (sender.join(), received)
            });
            let (sent, received) = join_ends(sent, received, ctl)?;
            ctl.fail("sync:after-transfer")?;
            Ok::<_, EngineError>((sent, received))
        })();
        drop(writeback);
        let (mut sent, received) = match result {
            Ok(r) => r,
            Err(e) => {
                // Nothing of the target was touched yet: roll back the staged content.
                let _ = remove_work(dst);
                return Err(e);
            }
        };
        // Files of the source that changed between the scan and their kernel copy: the
        // state records them as copied, as for those the sender saw change.
        for c in &received.changed {
            sent.reread
                .push((c.path.clone(), c.hash, c.size, c.chunks.clone()));
        }
        summary.kernel_bytes = received.kernel_bytes;
        summary.local_bytes = received.local_bytes;
        plan.sent(sent, &mut summary);
        Some(received)
    } else {
        None
    };
    let changed = received.is_some();
    commit_sync(dst, target, &plan.want, received, &mut summary, ctl)?;
    if let Some(marks) = marks {
        untouched::record(
            dst,
            watch,
            marks,
            changed,
            &plan.want,
            source_kept,
            keep,
            &summary,
        );
    }
    plan.finish(&mut summary);
    summary.duration_ms = started.elapsed().as_millis() as u64;
    summary.phase_ms = ctl.timings();
    Ok(summary)
}

/// Whether an earlier sync of `dst` was interrupted while committing (its recorded state
/// cannot be trusted then), and whether it left a work dir (removed here).
#[derive(Clone, Copy)]
pub(in crate::engine) struct Prepared {
    interrupted_commit: bool,
    recovered: bool,
}

/// The target's side, first: an interrupted run's work dir removed; the target must exist.
pub(in crate::engine) fn prepare_target(dst: &Place) -> Result<Prepared, EngineError> {
    let work = dst.work_dir();
    let prepared = Prepared {
        interrupted_commit: dst.commit_marker().exists(),
        recovered: work.exists(),
    };
    if prepared.recovered {
        remove_work(dst)?;
    }
    if !dst.root.is_dir() {
        return Err(EngineError::Refused(format!(
            "the target {} does not exist",
            dst.root.display()
        )));
    }
    Ok(prepared)
}

/// The target as it is, and as it was recorded.
pub(in crate::engine) struct TargetState {
    prepared: Prepared,
    /// Its recorded manifest (none after an interrupted commit).
    old: Option<Manifest>,
    pub(in crate::engine) man: Manifest,
    /// Whether the recorded manifest still describes the tree (then it needs no rewrite).
    recorded: bool,
}

pub(in crate::engine) fn scan_target(
    dst: &Place,
    prepared: Prepared,
    ctl: &Control,
) -> Result<TargetState, EngineError> {
    let old = recorded_target(dst, prepared)?;
    let scanned = scan::scan(&dst.root, old.as_ref(), true, ctl)?;
    Ok(TargetState::new(prepared, old, scanned))
}

/// The source's twin: its target, as recorded (`recorded`: the target's manifest). A large
/// file changed in place is compared with the target's: on one filesystem with reflinks
/// (or in two image trees whose images share extents on one), it is read only where it no
/// longer shares the target's extents; elsewhere, the target's
/// bytes in the page cache are compared instead of hashing the source's. `images`: both
/// are image trees of one server ([`images_of_one_server`]).
fn twin<'a>(
    src: &Place,
    dst: &Place,
    recorded: &'a Manifest,
    images: bool,
) -> Option<scan::Twin<'a>> {
    // (Probed in the state dir: never a file of a tree being scanned.)
    let reflinks = fsx::kernel_copy_support(&dst.state_dir) == Some(fsx::KernelCopy::Reflink);
    let sharing = if !reflinks {
        Sharing::Nothing
    } else if super::copy::same_filesystem(&src.root, &dst.root) {
        Sharing::OneFilesystem
    } else if images {
        let [a, b] = [&src.root, &dst.root].map(|root| fs::File::open(image::image_path(root)));
        a.and_then(|a| Ok(Sharing::Images(a, b?)))
            .unwrap_or(Sharing::Nothing)
    } else {
        Sharing::Nothing
    };
    let root = fsx::open_dir(&dst.root).ok()?;
    Some(scan::Twin {
        root,
        recorded,
        sharing,
    })
}

/// Whether source and target are image trees whose images are on the filesystem of the
/// target's state: two trees of one server.
fn images_of_one_server(src: &Place, dst: &Place) -> bool {
    let on_state_fs =
        |root: &Path| super::copy::same_filesystem(&image::image_path(root), &dst.state_dir);
    [&src.root, &dst.root]
        .iter()
        .all(|root| image::is_image_tree(root) && on_state_fs(root))
}

/// The target's recorded manifest. After an interrupted commit the target's recorded state
/// cannot be trusted: none, so the scan reads every file and the diff is against what is
/// really there.
fn recorded_target(dst: &Place, prepared: Prepared) -> Result<Option<Manifest>, EngineError> {
    if prepared.interrupted_commit {
        return Ok(None);
    }
    dst.load_manifest()
        .map_err(io_err("reading the target manifest"))
}

impl TargetState {
    /// The target as `scanned` with `old` (its recorded manifest) as cache.
    fn new(
        prepared: Prepared,
        old: Option<Manifest>,
        (man, report): (Manifest, scan::ScanReport),
    ) -> TargetState {
        TargetState {
            prepared,
            recorded: old.is_some() && report.hashed_files == 0,
            old,
            man,
        }
    }
}

/// The source's side, first: its scan with its quick-check cache, which is updated.
pub(in crate::engine) fn scan_sync_source(
    src: &Place,
    ctl: &Control,
) -> Result<(Manifest, scan::ScanReport), EngineError> {
    scan_source_beside(src, SourceCache::load(src), || None, None, None, ctl)
}

/// A source's quick-check cache as read before its scan, and when that read began (a scan
/// is stored as the cache only if no other scan stored one since it began).
struct SourceCache {
    began: std::time::SystemTime,
    loaded: Option<(Manifest, crate::engine::manifest::StoredAs)>,
}

impl SourceCache {
    fn load(src: &Place) -> SourceCache {
        let began = scan_begins();
        SourceCache {
            began,
            loaded: Manifest::load_stored(&src.manifest_path()).ok().flatten(),
        }
    }
}

/// [`scan_sync_source`], with the source's twin (its target on the same filesystem), and,
/// where the source has marks (`since`: this sync's), reading only where it changed since
/// its quick-check cache was scanned (as btrfs or the change watch `watch` tell).
fn scan_source_beside<'a>(
    src: &Place,
    SourceCache { began, loaded }: SourceCache,
    twin: impl Fn() -> Option<scan::Twin<'a>>,
    since: Option<&untouched::Marks>,
    watch: Option<&Watch>,
    ctl: &Control,
) -> Result<(Manifest, scan::ScanReport), EngineError> {
    let changed = since
        .zip(loaded.as_ref())
        .and_then(|(marks, (cache, stored))| {
            untouched::source_changes(src, None, cache, *stored, &marks.source, watch)
        });
    let cache = loaded.as_ref().map(|(m, _)| m);
    let partial = match (changed, cache) {
        (Some(changed), Some(cache)) => {
            scan::scan_changed(&src.root, cache, &changed, twin(), ctl)?
        }
        _ => None,
    };
    let (s_man, s_report) = match partial {
        Some(scanned) => scanned,
        None => scan::scan_beside(&src.root, cache, true, twin(), ctl)?,
    };
    let Some(marks) = since else {
        if !(cache.is_some() && s_report.hashed_files == 0) {
            // The source's quick-check cache for the next sync.
            let _ = store_source_cache(src, &s_man, began);
        }
        return Ok((s_man, s_report));
    };
    // The cache, paired with the mark read before this scan: the next sync reads again
    // only what changed since.
    let stored = match loaded {
        Some((cache, stored)) if s_report.hashed_files == 0 && cache == s_man => Some(stored),
        _ => store_source_cache(src, &s_man, began),
    };
    if let Some(stored) = stored {
        untouched::record_source(src, &marks.source, stored);
    }
    Ok((s_man, s_report))
}

/// Changes made to the target since it was last synced (its own identity files aside).
pub(in crate::engine) fn drift(
    target: &TargetState,
    keep: &dyn Fn(&[u8]) -> bool,
    summary: &mut Summary,
) {
    summary.recovered = target.prepared.recovered;
    let Some(old) = &target.old else {
        return;
    };
    let (pairs, deleted) = diff(old, &target.man);
    // The copy's own identity files are its business, not drift.
    for (c, e, _) in &pairs {
        if *c != Change::Unchanged && !keep(&e.path) {
            summary.drift += 1;
            summary.drift_paths.push(e.display_path());
        }
    }
    let deleted: Vec<_> = deleted.iter().filter(|e| !keep(&e.path)).collect();
    summary.drift += deleted.len() as u64;
    summary
        .drift_paths
        .extend(deleted.iter().map(|e| e.display_path()));
    summary.drift_paths.truncate(20);
}

/// What a sync sends and the state it reaches.
pub(in crate::engine) struct Plan {
    pub(in crate::engine) want: Manifest,
    pub(in crate::engine) changes: Vec<(Change, Entry)>,
    pub(in crate::engine) deleted: Vec<Vec<u8>>,
    pub(in crate::engine) files_total: u64,
    /// The bytes of the files added or changed (staged beside those they replace).
    pub(in crate::engine) bytes_total: u64,
    unstable: Listed,
}

/// The source's side: the state to reach and the changes that lead there from `target`.
pub(in crate::engine) fn plan(
    s_man: Manifest,
    s_report: &scan::ScanReport,
    target: &Manifest,
    keep: &dyn Fn(&[u8]) -> bool,
    summary: &mut Summary,
    ctl: &Control,
) -> Plan {
    let want = without_specials(s_man);
    // The source's state, which the sync status compares against.
    summary.source_root_hash = want.root_hex();
    let want = keeping(want, target, keep, &mut summary.identity_files);
    let (pairs, deleted) = diff(target, &want);
    let mut bytes_total = 0;
    for (c, e, _) in &pairs {
        match c {
            Change::Added => summary.files_added += 1,
            Change::Changed => summary.files_changed += 1,
            Change::MetadataOnly => summary.metadata_only += 1,
            Change::Unchanged => summary.files_unchanged += 1,
        }
        if matches!(c, Change::Added | Change::Changed) && e.has_data() {
            bytes_total += e.size;
        }
    }
    summary.files_deleted = deleted.len() as u64;
    let files_total =
        summary.files_added + summary.files_changed + summary.metadata_only + summary.files_deleted;
    summary.skipped_special = s_report.specials.paths.clone();
    summary.skipped_special_count = s_report.specials.count;
    let deleted = deleted.iter().map(|e| e.path.clone()).collect();
    let changes = pairs
        .iter()
        .filter(|(c, _, _)| *c != Change::Unchanged)
        .map(|(c, e, _)| (*c, (*e).clone()))
        .collect();
    if files_total > 0 {
        ctl.phase(Phase::Transfer, Some(bytes_total), Some(files_total));
    }
    Plan {
        unstable: s_report.unstable.clone(),
        want,
        changes,
        deleted,
        files_total,
        bytes_total,
    }
}

impl Plan {
    /// What the sender did: its counters, and files that changed between the scan and the
    /// send (the state records what was really sent).
    pub(in crate::engine) fn sent(&mut self, sent: Sent, summary: &mut Summary) {
        summary.bytes_sent = sent.stats.total;
        summary.content_bytes = sent.stats.data;
        summary.delta_files = sent.delta_files;
        for (path, hash, size, chunks) in sent.reread {
            if let Some(e) = self.want.entries.iter_mut().find(|e| e.path == path) {
                e.hash = hash;
                e.size = size;
                e.chunks = chunks;
                self.unstable.push(|| e.display_path());
            }
        }
    }

    pub(in crate::engine) fn finish(self, summary: &mut Summary) {
        summary.unstable = self.unstable.paths;
        summary.unstable_count = self.unstable.count;
    }
}

/// Room in a copy laid down as an image tree for what its source holds now: where the state
/// to reach (`want` bytes) or what the copy holds, with the changed files (`staged` bytes)
/// staged beside those they replace, would fill more than a copy leaves room for (see
/// [`super::copy::stage_as_image`]), its image grows first, in use (sparse: the host gives
/// it only what it holds), by whole GiB. A copy holds what its source holds (a source
/// that is a directory has no such limit); the container's own writes stay within its
/// image. Its note, where it grew. An image that cannot grow, or a host without room for
/// what the source adds to it (beyond the margin image trees are not offered), fails the
/// sync here, before anything is written, grown or not.
pub(in crate::engine) fn make_room(
    dst: &Place,
    want: u64,
    staged: u64,
) -> Result<Option<String>, EngineError> {
    if !image::is_image_tree(&dst.root) {
        return Ok(None);
    }
    let (room, capacity) =
        image_room::own_room(&dst.root).map_err(io_err("reading the copy's room"))?;
    let used = capacity.saturating_sub(room);
    const GIB: u64 = 1 << 30;
    let gib = |b: u64| b as f64 / GIB as f64;
    // What the image will take of the host beyond what it holds now: what the state to
    // reach adds, and never more than the sync writes. (`want` counts files' lengths, and
    // `used` the blocks they take: a tree holding sparse or shared files would otherwise
    // seem to need room for a sync that writes nothing. `staged` can be far more than is
    // written: a changed large file stays a delta, its unchanged ranges shared.) The host
    // keeps a margin free that image trees are not offered (`image_room`): a sync that
    // needs it would fail half way with "no space left".
    let image = image::image_path(&dst.root);
    let host = image.parent().unwrap_or(Path::new("/"));
    let (free, host_size) = fsx::free_space(host).map_err(io_err("reading the server's room"))?;
    let offered = free.saturating_sub(image_room::margin(host_size));
    let adds = want.saturating_sub(used).min(staged);
    if offered < adds {
        return Err(EngineError::Refused(format!(
            "the copy's image tree would take {:.2} GiB more of its server, where it may take \
             {:.2} GiB: the server has {:.2} GiB free, {:.2} GiB of it kept free for the \
             image trees' writes",
            gib(adds),
            gib(offered),
            gib(free),
            gib(free - offered)
        )));
    }
    // At its fullest the copy holds what it held (what the source deleted goes only at the
    // commit) or what it will hold, whichever is more, and what is staged beside it.
    let needed = want
        .max(used)
        .saturating_add(staged)
        .saturating_add(super::copy::IMAGE_OVERHEAD);
    if needed <= capacity / 10 * 9 {
        return Ok(None);
    }
    let was = fs::metadata(&image)
        .map_err(io_err("reading the copy's image"))?
        .len();
    let size = (needed / 9)
        .saturating_mul(10)
        .div_ceil(GIB)
        .max(was / GIB + 1)
        .saturating_mul(GIB);
    image::grow(&dst.root, size).map_err(io_err("growing the copy's image tree"))?;
    Ok(Some(format!(
        "its image tree grown from {:.1} to {:.1} GiB to hold its source ({:.1} GiB)",
        gib(was),
        gib(size),
        gib(want)
    )))
}

/// The target's stage for a sync's content: a directory its files are renamed from into
/// the target, at the commit.
///
/// Usually `stage` in the target's work dir. But no rename crosses into a btrfs subvolume
/// or an image tree (a filesystem of its own, [`image`]): where the target is one, the
/// stage is a directory in the target's own root,
/// `.doppel-stage-<id>`. It is named first by an empty file in the work dir
/// (`in-tree-<name>`), so that what a failure or a crash leaves of it is found and removed
/// ([`remove_work`]), and it is gone before the commit's last flush. (Before, each staged
/// file was cloned a second time beside its place, and both copies freed.)
pub(in crate::engine) fn stage_dir(dst: &Place) -> Result<PathBuf, EngineError> {
    let work = dst.work_dir();
    fs::create_dir_all(&work).map_err(EngineError::io_path("creating", &work))?;
    let in_tree = fsx::open_dir(&dst.root).is_ok_and(|d| btrfs::is_subvolume(d.as_fd()))
        || image::is_image_tree(&dst.root);
    let stage = if in_tree {
        let name = format!("{IN_TREE_STAGE}{}", crate::ids::new_id());
        let named = work.join(format!("{IN_TREE_MARK}{name}"));
        fs::File::create(&named).map_err(EngineError::io_path("creating", &named))?;
        let stage = dst.root.join(name);
        fs::DirBuilder::new()
            .mode(0o700)
            .create(&stage)
            .map_err(EngineError::io_path("creating", &stage))?;
        stage
    } else {
        let stage = work.join("stage");
        fs::create_dir_all(&stage).map_err(EngineError::io_path("creating", &stage))?;
        stage
    };
    Ok(stage)
}

/// The names of a stage in the target's tree ([`stage_dir`]), and of the work dir's file
/// that names it.
const IN_TREE_STAGE: &str = ".doppel-stage-";
const IN_TREE_MARK: &str = "in-tree-";

/// The name, in the target's root, of the stage a sync made there, if it made one.
fn in_tree_stage(dst: &Place) -> Option<String> {
    fs::read_dir(dst.work_dir())
        .ok()?
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter_map(|n| n.strip_prefix(IN_TREE_MARK).map(str::to_owned))
        .find(|n| n.starts_with(IN_TREE_STAGE) && !n.contains('/'))
}

/// Where the sync under way stages its content ([`stage_dir`]).
fn staged_at(dst: &Place) -> PathBuf {
    match in_tree_stage(dst) {
        Some(name) => dst.root.join(name),
        None => dst.work_dir().join("stage"),
    }
}

/// Removes a sync's stage from the target's tree, if it made one there (whatever is left in
/// it: never followed out of it).
fn remove_in_tree_stage(dst: &Place) -> Result<(), EngineError> {
    // (A target that is gone has no stage left in it.)
    if let (Some(name), Ok(root)) = (in_tree_stage(dst), fsx::open_dir(&dst.root)) {
        fsx::remove_at(root.as_fd(), name.as_bytes()).map_err(io_err("removing the stage"))?;
    }
    Ok(())
}

/// Removes what a sync left to roll back: its stage, wherever it is, and its work dir.
pub(in crate::engine) fn remove_work(dst: &Place) -> Result<(), EngineError> {
    remove_in_tree_stage(dst)?;
    remove_tree(&dst.work_dir())
}

/// The target's side, last: the staged changes applied (behind the commit marker), the
/// tree verified against `want`, its manifest recorded, all made durable.
pub(in crate::engine) fn commit_sync(
    dst: &Place,
    target: TargetState,
    want: &Manifest,
    received: Option<Received>,
    summary: &mut Summary,
    ctl: &Control,
) -> Result<(), EngineError> {
    let path = dst.manifest_path();
    let ((files, bytes), root_hash) = if let Some(received) = received {
        summary.reused_bytes = received.reused_bytes;
        ctl.phase(Phase::Commit, None, Some(received.pending.len() as u64));
        // The marker durable before the first change to the target. What was staged goes
        // to disk while it is put in place, and what was put in place while it is read
        // back, checked, and its manifest written and made durable by itself (fsync, and
        // its directory's): a flush begun beside the first change, another after the
        // last. Until both are done (and then the work dir goes) the marker stands, and a
        // commit it finds interrupted is not trusted: the next sync reads every file of
        // the target again and mends what did not reach the disk. (Waiting for the staged
        // files before the first rename took a sync of the bench's 1 % change on an image
        // tree 8 % longer, and waiting for that first flush before reading back, up to
        // 18 ms more.)
        let root_fd = fsx::open_dir(&dst.root).map_err(io_err("opening the target"))?;
        // (Each flush with a descriptor of its own: a writeback error is told once per
        // descriptor, and both are checked.)
        let last_fd = fsx::open_dir(&dst.root).map_err(io_err("opening the target"))?;
        let stage = staged_at(dst);
        std::thread::scope(|s| {
            let first = s.spawn(|| fsx::syncfs(root_fd.as_fd()));
            let applied = write_marker(dst)
                .and_then(|()| {
                    apply_pending(
                        (&dst.root, &stage),
                        received.pending,
                        (&target.man, want),
                        ctl,
                    )
                })
                // (Before the last flush, so the target's generation, read after it, is
                // final.)
                .and_then(|()| remove_in_tree_stage(dst));
            if let Err(e) = applied {
                // (What failed to apply is the error to tell, not how its flush ended.)
                let _ = first.join();
                return Err(e);
            }
            ctl.phase(Phase::Verify, None, None);
            let last = s.spawn(|| fsx::syncfs(last_fd.as_fd()));
            let read_back = restat(&dst.root, want, Some(&target.man)).and_then(|got| {
                let root_hash = check_roots(want, &got)?;
                let counts = (got.files(), got.bytes());
                // (Kept decoded: the next sync loads it.)
                got.store_keeping(&path)
                    .and_then(|()| fsx::sync_dir_of(&path))
                    .map_err(io_err("writing the target manifest"))?;
                Ok((counts, root_hash))
            });
            for flush in [first.join(), last.join()] {
                flush
                    .map_err(|_| EngineError::Integrity("syncfs panicked".into()))?
                    .map_err(io_err("syncfs"))?;
            }
            read_back
        })?
    } else {
        ctl.phase(Phase::Verify, None, None);
        // Nothing changed: the target scan just read back exactly this state, and the
        // diff already compared every entry: one root hash is enough.
        let root_hash = target.man.root_hex();
        let counts = (target.man.files(), target.man.bytes());
        let interrupted = target.prepared.interrupted_commit;
        if !target.recorded || summary.drift > 0 {
            // Made durable by the syncfs that follows, if one does.
            match interrupted {
                true => target.man.store_unsynced(&path).map(drop),
                false => target.man.store_keeping(&path),
            }
            .map_err(io_err("writing the target manifest"))?;
        }
        if interrupted {
            let root_fd = fsx::open_dir(&dst.root).map_err(io_err("opening the target"))?;
            fsx::syncfs(root_fd.as_fd()).map_err(io_err("syncfs"))?;
        }
        (counts, root_hash)
    };
    fsx::remove_files_freeing_later(&dst.work_dir().join("stage"));
    let _ = fs::remove_dir_all(dst.work_dir());
    summary.recovered |= target.prepared.interrupted_commit;
    summary.tree_files = files;
    summary.tree_bytes = bytes;
    summary.root_hash = root_hash;
    Ok(())
}

/// The state to reach: the source's, but at the paths `keep` names, the target's entry as
/// it is (a regular file whose directory the new state still has) or none. Those land in
/// `kept`.
fn keeping(
    mut want: Manifest,
    target: &Manifest,
    keep: &dyn Fn(&[u8]) -> bool,
    kept: &mut Vec<String>,
) -> Manifest {
    want.entries.retain(|e| !keep(&e.path));
    let dirs: FastSet<&[u8]> = want
        .entries
        .iter()
        .filter(|e| e.kind == Kind::Dir)
        .map(|e| e.path.as_slice())
        .collect();
    let mine: Vec<Entry> = target
        .entries
        .iter()
        .filter(|e| keep(&e.path) && e.kind == Kind::File && e.link_to.is_none())
        .filter(|e| {
            let parent = split_parent(&e.path).0;
            parent.is_empty() || dirs.contains(parent)
        })
        .cloned()
        .collect();
    if !mine.is_empty() {
        kept.extend(mine.iter().map(|e| e.display_path()));
        want.entries.extend(mine);
        want.entries.sort_by(|a, b| path_cmp(&a.path, &b.path));
    }
    want
}

/// A file read again for sending: (path, hash, size, chunks) of what was really sent.
pub(super) type Reread = (Vec<u8>, [u8; 32], u64, Vec<Chunk>);

pub(super) struct Sent {
    pub(super) stats: WireStats,
    pub(super) delta_files: u64,
    /// Files whose content differed from the scan when read for sending.
    pub(super) reread: Vec<Reread>,
}

pub(super) fn send_sync(
    root: &Path,
    (changes, deleted): (&[(Change, Entry)], &[Vec<u8>]),
    target: &Manifest,
    source_tree: Option<u32>,
    out: PipeWriter,
    ctl: &Control,
) -> Result<Sent, EngineError> {
    let mut fw = FrameWriter::new(out);
    let mut walker =
        Walker::new(fsx::open_dir(root).map_err(EngineError::io_path("opening", root))?);
    let by_path: FastMap<&[u8], &Entry> = target
        .entries
        .iter()
        .map(|e| (e.path.as_slice(), e))
        .collect();
    let by_hash: FastMap<[u8; 32], &[u8]> = target
        .entries
        .iter()
        .filter(|e| e.has_data() && e.hash != [0; 32])
        .map(|e| (e.hash, e.path.as_slice()))
        .collect();
    let mut sent = Sent {
        stats: WireStats::default(),
        delta_files: 0,
        reread: Vec::new(),
    };
    for path in deleted {
        fw.send(&Frame::Delete { path: path.clone() })
            .map_err(io_err("sending"))?;
        ctl.sent_entry();
    }
    for (change, e) in changes {
        ctl.check()?;
        ctl.sent_entry();
        if *change == Change::MetadataOnly {
            fw.send(&Frame::Meta(e.clone()))
                .map_err(io_err("sending"))?;
            continue;
        }
        fw.send(&Frame::Entry(e.clone()))
            .map_err(io_err("sending"))?;
        if !e.has_data() {
            continue;
        }
        // Content the target already has, under any name: nothing to send.
        if let Some(from) = by_hash.get(&e.hash) {
            let from = Frame::Reuse {
                from: from.to_vec(),
            };
            send_reused(&mut fw, from, e, ctl)?;
            continue;
        }
        let has_base = by_path.get(e.path.as_slice()).is_some_and(|t| {
            t.kind == Kind::File && !t.chunks.is_empty() && e.size >= CHUNKED_FILE_MIN
        });
        // The receiver has the source on its filesystem: the kernel lays the file down
        // from there (a large file with a previous version still goes as a delta).
        if let Some(tree) = source_tree.filter(|_| !has_base && e.hash != [0; 32] && e.size > 0) {
            let from = Frame::ReuseLocal {
                tree,
                from: e.path.clone(),
            };
            send_reused(&mut fw, from, e, ctl)?;
            continue;
        }
        let (dir, name) = walker
            .parent(&e.path)
            .map_err(io_err("opening a source directory"))?;
        let file = fsx::open_file_at(dir, name).map_err(io_err("opening a source file"))?;
        // A large file whose previous version the target has: send only new chunks.
        let base: Option<FastMap<[u8; 32], (u64, u32)>> = by_path
            .get(e.path.as_slice())
            .filter(|t| t.kind == Kind::File && !t.chunks.is_empty() && e.size >= CHUNKED_FILE_MIN)
            .map(|t| {
                t.chunks
                    .iter()
                    .map(|c| (c.hash, (c.offset, c.len)))
                    .collect()
            });
        if base.is_some() {
            sent.delta_files += 1;
        }
        let (hash, chunks, len) = match &base {
            // The scan already cut this file into chunks: send the new ones by reading
            // just their ranges, and skip reading what the target has.
            Some(base) if !e.chunks.is_empty() => {
                let sent = send_known_chunks(&file, &e.chunks, base, &mut fw, ctl)?;
                // (Its new chunks and those the target has: the whole file, done.)
                ctl.sent_bytes(sent.2);
                sent
            }
            _ => hash_reader(&file, e.size, ctl, |data, chunk| match (chunk, &base) {
                (Some(c), Some(base)) => match base.get(&c.hash) {
                    Some(&(offset, len)) if len == c.len => fw.send(&Frame::CopyOld {
                        offset,
                        len: len as u64,
                    }),
                    _ => fw.data(data),
                },
                _ => fw.data(data),
            })?,
        };
        if hash != e.hash || len != e.size {
            sent.reread
                .push((e.path.clone(), hash, len, chunks.clone()));
        }
        fw.send(&Frame::FileEnd { hash, size: len })
            .map_err(io_err("sending"))?;
    }
    fw.send(&Frame::Done).map_err(io_err("sending"))?;
    fw.flush().map_err(io_err("sending"))?;
    sent.stats = fw.stats;
    Ok(sent)
}

/// Sends a file as the chunks its scan recorded: chunks the target has as `CopyOld`, the
/// others read (by range) and sent. If the file changed since the scan, the data read is
/// what is sent, and the returned hash says so (the caller records it).
pub(super) fn send_known_chunks(
    file: &fs::File,
    chunks: &[Chunk],
    base: &FastMap<[u8; 32], (u64, u32)>,
    fw: &mut FrameWriter<PipeWriter>,
    ctl: &Control,
) -> Result<([u8; 32], Vec<Chunk>, u64), EngineError> {
    let mut sent = Vec::with_capacity(chunks.len());
    let mut buf = Vec::new();
    let mut total = 0u64;
    for c in chunks {
        ctl.check()?;
        if let Some(&(offset, len)) = base.get(&c.hash).filter(|(_, len)| *len == c.len) {
            fw.send(&Frame::CopyOld {
                offset,
                len: len as u64,
            })
            .map_err(io_err("sending"))?;
            sent.push(Chunk {
                offset: total,
                len,
                hash: c.hash,
            });
            total += len as u64;
            continue;
        }
        buf.resize(c.len as usize, 0);
        let mut got = 0;
        while got < buf.len() {
            match file.read_at(&mut buf[got..], c.offset + got as u64) {
                Ok(0) => break,
                Ok(n) => got += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(io_err("reading a source file")(e)),
            }
        }
        if got == 0 {
            break; // shrank since the scan
        }
        fw.data(&buf[..got]).map_err(io_err("sending"))?;
        sent.push(Chunk {
            offset: total,
            len: got as u32,
            hash: *blake3::hash(&buf[..got]).as_bytes(),
        });
        total += got as u64;
    }
    Ok((chunked_file_hash(&sent), sent, total))
}

/// Writes the staged ranges of a patch, `(at, from, len)`: `len` bytes from `from` in
/// `staged` to `at` in `target`.
fn write_ranges(
    staged: &fs::File,
    target: &fs::File,
    ranges: &[(u64, u64, u64)],
) -> Result<(), EngineError> {
    let mut buf = Vec::new();
    for &(at, from, len) in ranges {
        buf.resize(len as usize, 0);
        staged
            .read_exact_at(&mut buf, from)
            .map_err(io_err("reading a staged file"))?;
        // Zeros become a hole (a sparse file stays sparse), where the filesystem can.
        if fsx::is_zero(&buf) && fsx::punch_hole(target, at, len).is_ok() {
            continue;
        }
        target
            .write_all_at(&buf, at)
            .map_err(io_err("patching a file"))?;
    }
    Ok(())
}

/// A patched file's new version as a file of its own: the old content, the staged ranges
/// over it, then renamed over the old name (which keeps its other names as they were).
/// Redone from the start if a commit is resumed.
fn rewrite_whole(
    stage: BorrowedFd<'_>,
    tmp: &[u8],
    staged: &fs::File,
    ranges: &[(u64, u64, u64)],
    e: &Entry,
    dir: BorrowedFd<'_>,
    name: &[u8],
) -> Result<(), EngineError> {
    let whole_name = [tmp, b".whole"].concat();
    fsx::remove_at(stage, &whole_name).map_err(io_err("removing a staged file"))?;
    let whole = fsx::create_file_at(stage, &whole_name).map_err(io_err("creating a file"))?;
    let old = fsx::open_file_at(dir, name).map_err(io_err("opening a file"))?;
    let len = old.metadata().map_err(io_err("reading a file"))?.len();
    if fsx::kernel_copy(&whole, &old, len).is_err() {
        fsx::copy_content(&whole, &old, len).map_err(io_err("copying a file"))?;
    }
    write_ranges(staged, &whole, ranges)?;
    whole.set_len(e.size).map_err(io_err("writing a file"))?;
    fsx::apply_meta_fd(whole.as_fd(), e).map_err(io_err("setting metadata"))?;
    place_staged(stage, &whole_name, dir, name, e)
}

/// Places the staged files `places` (staged name, entry) in the tree at `root`, on two
/// threads where there are many: each is one rename, and a rename that replaces a file
/// waits for the filesystem to let go of it (on btrfs, XFS: its extents) in the caller's
/// time. Their directories exist; each thread takes its own part of the list, so the two
/// mostly rename in different directories.
fn place_all(
    root: &Path,
    stage: BorrowedFd<'_>,
    places: &[(&[u8], &Entry)],
    ctl: &Control,
) -> Result<(), EngineError> {
    let place_part = |part: &[(&[u8], &Entry)]| -> Result<(), EngineError> {
        let mut walker = Walker::new(fsx::open_dir(root).map_err(io_err("opening the target"))?);
        for (tmp, e) in part {
            ctl.fail("sync:commit-op")?;
            let (dir, name) = walker
                .parent(&e.path)
                .map_err(io_err("opening a directory"))?;
            // (The file it replaces, if any.)
            fsx::free_later(fsx::hold_file_at(dir, name));
            place_staged(stage, tmp, dir, name, e)?;
        }
        Ok(())
    };
    // (Tests place on two threads from a few files on, so their syncs take that path.)
    const TWO_THREADS_FROM: usize = if cfg!(test) { 4 } else { 64 };
    if places.len() < TWO_THREADS_FROM {
        return place_part(places);
    }
    let (first, second) = places.split_at(places.len() / 2);
    let (a, b) = std::thread::scope(|s| {
        let other = s.spawn(|| place_part(second));
        (place_part(first), other.join())
    });
    a?;
    b.map_err(|_| EngineError::Integrity("a placing thread panicked".into()))?
}

/// Moves the staged file `tmp` (its metadata `e` already set) to `name` in `dir` in one
/// rename. Where no rename can cross from the stage (a btrfs subvolume in the tree, whose
/// own stage could not be made inside it: see [`stage_dir`]), the file is cloned (shared
/// extents, nothing copied) to a name of this thread's own beside its place, given its
/// metadata, and renamed over it: still one atomic rename. (What a crash leaves under that
/// name is drift the next sync removes.)
fn place_staged(
    stage: BorrowedFd<'_>,
    tmp: &[u8],
    dir: BorrowedFd<'_>,
    name: &[u8],
    e: &Entry,
) -> Result<(), EngineError> {
    match fsx::rename_at(stage, tmp, dir, name) {
        Err(err) if err.raw_os_error() == Some(libc::EXDEV) => {}
        placed => return placed.map_err(io_err("placing a file")),
    }
    // (Of this thread's own: two threads may place files in one directory.)
    thread_local! {
        static BESIDE: Vec<u8> = format!(".doppel-placing-{}", crate::ids::new_id()).into_bytes();
    }
    let beside = BESIDE.with(Vec::clone);
    let beside: &[u8] = &beside;
    fsx::remove_at(dir, beside).map_err(io_err("removing a file"))?;
    let staged = fsx::open_file_at(stage, tmp).map_err(io_err("opening a staged file"))?;
    let len = staged
        .metadata()
        .map_err(io_err("reading a staged file"))?
        .len();
    let copy = fsx::create_file_at(dir, beside).map_err(io_err("creating a file"))?;
    if fsx::kernel_copy(&copy, &staged, len).is_err() {
        fsx::copy_content(&copy, &staged, len).map_err(io_err("copying a staged file"))?;
    }
    fsx::apply_meta_fd(copy.as_fd(), e).map_err(io_err("setting metadata"))?;
    fsx::rename_at(dir, beside, dir, name).map_err(io_err("placing a file"))
}

/// The commit of a sync: removals deepest first, then creations and placements in path
/// order (parents before children), then metadata, then the mtimes of every directory
/// whose contents changed.
pub(super) fn apply_pending(
    (root, stage): (&Path, &Path),
    pending: Vec<Pending>,
    (current, want): (&Manifest, &Manifest),
    ctl: &Control,
) -> Result<(), EngineError> {
    let current: FastMap<&[u8], &Entry> = current
        .entries
        .iter()
        .map(|e| (e.path.as_slice(), e))
        .collect();
    let stage_fd = fsx::open_dir(stage).map_err(io_err("opening the work dir"))?;
    let mut walker = Walker::new(fsx::open_dir(root).map_err(io_err("opening the target"))?);
    let mut other = Walker::new(fsx::open_dir(root).map_err(io_err("opening the target"))?);
    let mut touched_dirs: Vec<Vec<u8>> = Vec::new();

    // 1. Removals: deleted paths, and whatever stands where an entry of another kind (or
    //    a link, symlink or FIFO, which cannot be replaced in one rename) must go.
    let mut removals: Vec<&[u8]> = Vec::new();
    for p in &pending {
        match p {
            Pending::Delete(path) => removals.push(path),
            // Same file, same inode: nothing to remove.
            Pending::Patch { .. } => {}
            Pending::Place { e, .. } | Pending::Create(e) => {
                if let Some(c) = current.get(e.path.as_slice()) {
                    let replace_in_one_rename = c.kind == Kind::File
                        && c.link_to.is_none()
                        && matches!(p, Pending::Place { .. });
                    let keep_dir = c.kind == Kind::Dir && e.kind == Kind::Dir;
                    if !replace_in_one_rename && !keep_dir {
                        removals.push(&e.path);
                    }
                }
            }
            Pending::Meta(_) => {}
        }
    }
    removals.sort_by(|a, b| path_cmp(b, a));
    for path in removals {
        ctl.fail("sync:commit-op")?;
        let (dir, name) = walker.parent(path).map_err(io_err("opening a directory"))?;
        // (Freed beside the rest of the commit, as the files placements replace.)
        fsx::free_later(fsx::hold_file_at(dir, name));
        fsx::remove_at(dir, name).map_err(io_err("removing"))?;
        touched_dirs.push(split_parent(path).0.to_vec());
    }
    walker.reset();
    other.reset();

    // 2. Directories made and files changed in place, parents first; the files placed
    //    (below) and the other entries made (after them: a hard link may name a file
    //    placed) wait.
    let mut metas = Vec::new();
    let mut places = Vec::new();
    let mut made_after = Vec::new();
    for p in &pending {
        match p {
            Pending::Delete(_) => {}
            Pending::Place { tmp, e } => {
                places.push((tmp.as_slice(), e));
                touched_dirs.push(split_parent(&e.path).0.to_vec());
            }
            Pending::Patch { tmp, ranges, e } => {
                ctl.fail("sync:commit-op")?;
                let staged = fsx::open_file_at(stage_fd.as_fd(), tmp)
                    .map_err(io_err("opening a staged file"))?;
                let (dir, name) = walker
                    .parent(&e.path)
                    .map_err(io_err("opening a directory"))?;
                let target =
                    fsx::open_file_for_patch_at(dir, name).map_err(io_err("opening a file"))?;
                let nlink = std::os::unix::fs::MetadataExt::nlink(
                    &target.metadata().map_err(io_err("reading metadata"))?,
                );
                if nlink > 1
                    && !want
                        .entries
                        .iter()
                        .any(|x| x.link_to.as_ref() == Some(&e.path))
                {
                    // Its other names are not this tree's files (a hard link from outside, or
                    // one the new state no longer has): patching in place would write through
                    // them. A whole new file takes its place instead.
                    drop(target);
                    rewrite_whole(stage_fd.as_fd(), tmp, &staged, ranges, e, dir, name)?;
                    touched_dirs.push(split_parent(&e.path).0.to_vec());
                    continue;
                }
                write_ranges(&staged, &target, ranges)?;
                target.set_len(e.size).map_err(io_err("patching a file"))?;
                fsx::apply_meta_fd(target.as_fd(), e).map_err(io_err("setting metadata"))?;
            }
            Pending::Create(e) if e.kind != Kind::Dir => made_after.push(e),
            Pending::Create(e) => {
                ctl.fail("sync:commit-op")?;
                let exists_as_dir = e.kind == Kind::Dir
                    && current
                        .get(e.path.as_slice())
                        .is_some_and(|c| c.kind == Kind::Dir);
                let (dir, name) = walker
                    .parent(&e.path)
                    .map_err(io_err("opening a directory"))?;
                if !exists_as_dir {
                    create_entry(dir, name, e, &mut other)?;
                }
                touched_dirs.push(split_parent(&e.path).0.to_vec());
                metas.push(e);
            }
            Pending::Meta(e) => metas.push(e),
        }
    }
    place_all(root, stage_fd.as_fd(), &places, ctl)?;
    for e in made_after {
        ctl.fail("sync:commit-op")?;
        let (dir, name) = walker
            .parent(&e.path)
            .map_err(io_err("opening a directory"))?;
        create_entry(dir, name, e, &mut other)?;
        touched_dirs.push(split_parent(&e.path).0.to_vec());
        metas.push(e);
    }
    // 3. Metadata of what was created or changed in place (directories come in step 4).
    let mut meta_dirs: FastSet<&[u8]> = FastSet::default();
    for e in metas {
        if e.kind == Kind::Dir {
            meta_dirs.insert(&e.path);
            touched_dirs.push(e.path.clone());
            continue;
        }
        if e.kind == Kind::File && e.link_to.is_some() {
            // A hard link shares its first name's inode and metadata.
            continue;
        }
        let (dir, name) = walker
            .parent(&e.path)
            .map_err(io_err("opening a directory"))?;
        fsx::apply_meta_at(dir, name, e).map_err(io_err("setting metadata"))?;
    }
    // 4. Directories whose entries changed get their recorded mtime back, deepest first
    //    (all their metadata, for those made or changed).
    touched_dirs.retain(|d| !d.is_empty());
    touched_dirs.sort_by(|a, b| path_cmp(b, a));
    touched_dirs.dedup();
    let want_dirs: FastMap<&[u8], &Entry> = want
        .entries
        .iter()
        .filter(|e| e.kind == Kind::Dir)
        .map(|e| (e.path.as_slice(), e))
        .collect();
    for d in touched_dirs {
        // Every ancestor's mtime is unaffected, but the directory itself moved.
        if let Some(e) = want_dirs.get(d.as_slice()) {
            let (dir, name) = walker
                .parent(&e.path)
                .map_err(io_err("opening a directory"))?;
            match meta_dirs.contains(d.as_slice()) {
                true => fsx::apply_meta_at(dir, name, e),
                false => fsx::set_mtime_at(dir, name, e.mtime_ns),
            }
            .map_err(io_err("setting metadata"))?;
        }
    }
    Ok(())
}
