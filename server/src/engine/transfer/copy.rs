//! A copy: stage a new tree, verify it, make it durable, then rename it into place.

use std::sync::atomic::{AtomicBool, Ordering};

use super::receive::*;
use super::*;
use crate::engine::warm;

pub(in crate::engine) fn copy(
    src: &Place,
    dst: &Place,
    local: &[Place],
    ctl: &Control,
) -> Result<Summary, EngineError> {
    copy_into(dst, ctl, |staging| {
        copy_staged(src, dst, staging, local, ctl)
    })
}

/// Lays a new tree down at `dst`: `fill` builds it in a staging dir and moves it into place
/// (see [`finish_copy`]). What an interrupted earlier run left is repaired first; a staging
/// dir that did not commit is removed, whatever happens.
pub(in crate::engine) fn copy_into(
    dst: &Place,
    ctl: &Control,
    fill: impl FnOnce(&Path) -> Result<Summary, EngineError>,
) -> Result<Summary, EngineError> {
    let started = Instant::now();
    let work = dst.work_dir();
    let mut recovered = false;
    if dst.commit_marker().exists() {
        // An earlier copy was interrupted while committing: its result is not trusted.
        remove_tree(&dst.root)?;
        recovered = true;
    } else if fs::symlink_metadata(&dst.root).is_ok() {
        return Err(EngineError::Refused(format!(
            "the target {} already exists",
            dst.root.display()
        )));
    }
    if work.exists() {
        remove_tree(&work)?;
        recovered = true;
    }
    let staging = work.join(STAGING);
    fs::create_dir_all(&work).map_err(EngineError::io_path("creating", &work))?;
    make_tree_root(&work, STAGING.as_bytes())
        .map_err(EngineError::io_path("creating", &staging))?;
    let result = fill(&staging);
    match &result {
        Ok(_) => {
            let _ = remove_tree(&work);
        }
        Err(_) => {
            if !dst.commit_marker().exists() {
                let _ = remove_tree(&work);
            }
        }
    }
    result.map(|mut s| {
        s.recovered = recovered;
        if recovered {
            // (Across servers a partial tree is kept and synced instead: see `peer`.)
            s.notes.push(
                "an earlier run of this copy was interrupted: what it had laid down was \
                 removed, and the copy made again from the start"
                    .into(),
            );
        }
        s.duration_ms = started.elapsed().as_millis() as u64;
        s.phase_ms = ctl.timings();
        s
    })
}

/// The source's side of a copy, first: a stat-only scan (the sender hashes each file while
/// sending it: one read, not two), and the totals as progress.
pub(in crate::engine) fn scan_source(
    src: &Place,
    ctl: &Control,
) -> Result<(Manifest, scan::ScanReport), EngineError> {
    let cache = src.load_manifest().ok().flatten();
    ctl.phase(Phase::Scan, None, None);
    let (m, report) = scan::scan(&src.root, cache.as_ref(), false, ctl)?;
    ctl.phase(Phase::Plan, None, None);
    let total_bytes = m.bytes();
    let total_files = m.entries.iter().filter(|e| e.kind != Kind::Special).count() as u64;
    ctl.phase(Phase::Transfer, Some(total_bytes), Some(total_files));
    Ok((m, report))
}

/// What the source's side adds to a copy's summary: what it sent, skipped and saw change.
pub(in crate::engine) fn source_facts(
    summary: &mut Summary,
    report: scan::ScanReport,
    sent_unstable: Listed,
    stats: WireStats,
) {
    let mut unstable = report.unstable;
    unstable.extend(sent_unstable);
    summary.bytes_sent = stats.total;
    summary.content_bytes = stats.data;
    summary.skipped_special = report.specials.paths;
    summary.skipped_special_count = report.specials.count;
    summary.unstable = unstable.paths;
    summary.unstable_count = unstable.count;
}

/// The name of a copy's staging tree in its work dir.
const STAGING: &str = "root";

/// A new, empty tree root `name` in `parent`: on btrfs a subvolume (so that copies of it
/// are snapshots), elsewhere a directory.
fn make_tree_root(parent: &Path, name: &[u8]) -> io::Result<()> {
    let dir = fsx::open_dir(parent)?;
    if btrfs::is_btrfs(dir.as_fd()) && btrfs::create_subvolume(dir.as_fd(), name).is_ok() {
        return Ok(());
    }
    fsx::mkdir_at(dir.as_fd(), name)
}

pub(super) fn copy_staged(
    src: &Place,
    dst: &Place,
    staging: &Path,
    local: &[Place],
    ctl: &Control,
) -> Result<Summary, EngineError> {
    if let Some(summary) = copy_by_snapshot(src, dst, staging, ctl)? {
        return Ok(summary);
    }
    if let Some(summary) = copy_by_image(src, dst, staging, ctl)? {
        return Ok(summary);
    }
    let began = scan_begins();
    let (mut m, report) = scan_source(src, ctl)?;
    let laid_down = stage_as_image(dst, staging, Some(m.bytes()))?;
    // Both trees on one filesystem whose kernel copies files (shared extents, or
    // copy_file_range): every file is taken from the source tree by the kernel, none
    // streamed. Otherwise the receiver's offer: content its server holds already, by hash.
    let mut trees = local.to_vec();
    let kernel = (!ctl.stream_only && same_filesystem(&src.root, staging))
        .then(|| fsx::kernel_copy_support(staging.parent().unwrap_or(staging)))
        .flatten();
    let source_tree = kernel.map(|_| {
        trees.push(src.clone());
        (trees.len() - 1) as u32
    });
    let offer = match source_tree {
        Some(_) => HashMap::new(),
        None => local_content(local, &m),
    };
    let (w, r) = wire::pipe();
    // Written pages go to disk during the transfer, not all at the commit (shared extents
    // have none).
    let writeback =
        (kernel != Some(fsx::KernelCopy::Reflink)).then(|| fsx::WriteBack::start(staging));
    let (sent, received) = std::thread::scope(|s| {
        let sender = s.spawn(|| send_copy(&src.root, &mut m, (&offer, source_tree), w, ctl));
        let received = receive(
            Mode::Copy,
            staging,
            staging,
            r,
            None,
            (&trees, source_tree),
            ctl,
        );
        (sender.join(), received)
    });
    drop(writeback);
    let ((stats, mut sent_unstable), received) = join_ends(sent, received, ctl)?;
    // Files of the source that changed between its scan and their copy: the copy holds
    // them as they were copied (the next sync brings them up to date).
    for changed in &received.changed {
        sent_unstable.push(|| changed.display_path());
        // The file and its other names (hard links share its content).
        for e in m.entries.iter_mut().filter(|e| {
            e.path == changed.path || e.link_to.as_deref() == Some(changed.path.as_slice())
        }) {
            e.hash = changed.hash;
            e.size = changed.size;
            e.chunks = changed.chunks.clone();
        }
    }
    // The source's manifest is its quick-check cache for the next sync (kept outside the
    // container root: the source tree itself is never written).
    let _ = store_source_cache(src, &m, began);
    let mut summary = finish_copy(dst, staging, &m, ctl)?;
    summary.reused_bytes = received.reused_bytes;
    summary.kernel_bytes = received.kernel_bytes;
    summary.local_bytes = received.local_bytes;
    if received.kernel_copied > 0 {
        summary.notes.push(format!(
            "{} files laid down by the kernel from the source ({}), none streamed",
            received.kernel_copied,
            match kernel {
                Some(fsx::KernelCopy::Reflink) => "shared extents",
                _ => "copy_file_range",
            }
        ));
    }
    summary.notes.extend(laid_down);
    source_facts(&mut summary, report, sent_unstable, stats);
    Ok(summary)
}

/// Makes the empty staging tree an image tree where `dst` asks for one
/// ([`Place::image_size`]) and its work dir's filesystem can hold one: XFS with reflinks.
/// (On btrfs the staging tree is a subvolume already; elsewhere a directory.) A note says
/// how the copy was laid down, or why not as asked. `bytes`: the tree's size where it is
/// known; a tree that would fill most of the image is laid down as a directory instead
/// (it would have no room to change, or fail the copy).
pub(super) fn stage_as_image(
    dst: &Place,
    staging: &Path,
    bytes: Option<u64>,
) -> Result<Option<String>, EngineError> {
    let Some(size) = dst.image_size else {
        return Ok(None);
    };
    let work = staging.parent().unwrap_or(staging);
    if fsx::open_dir(work).is_ok_and(|d| btrfs::is_btrfs(d.as_fd())) {
        return Ok(None);
    }
    if !image::can_hold(work) {
        return Ok(Some(
            "laid down as a directory, not an image tree: its server's filesystem has no \
             reflinks (image trees need XFS with reflink=1)"
                .into(),
        ));
    }
    // (GiB: as `--image-trees` counts.)
    let gib = |n: u64| n as f64 / (1u64 << 30) as f64;
    // (XFS keeps a log of 64 MB and metadata in it besides the files.)
    if bytes.is_some_and(|b| b.saturating_add(IMAGE_OVERHEAD) > size / 10 * 9) {
        return Ok(Some(format!(
            "laid down as a directory, not an image tree: its {:.1} GiB would fill most of \
             an image tree of {:.1} GiB (--image-trees)",
            gib(bytes.unwrap_or(0)),
            gib(size)
        )));
    }
    fs::remove_dir(staging).map_err(EngineError::io_path("removing", staging))?;
    match image::create(staging, size) {
        Ok(()) => Ok(Some(format!(
            "laid down as an image tree of {:.1} GiB (sparse: it takes what it holds)",
            gib(size)
        ))),
        Err(e) => {
            tracing::warn!(error = %e, "cannot make an image tree: copying into a directory");
            // (`create` leaves nothing behind when it fails.)
            make_tree_root(work, STAGING.as_bytes())
                .map_err(EngineError::io_path("creating", staging))?;
            Ok(Some(format!(
                "laid down as a directory, not an image tree: {e}"
            )))
        }
    }
}

/// What an image tree holds besides its files: XFS's log (64 MB) and its metadata.
pub(super) const IMAGE_OVERHEAD: u64 = 128 << 20;

/// A copy on btrfs whose source tree is a subvolume: the staging tree is made a snapshot
/// of it, the whole tree at one instant, sharing everything (no file is created, read or
/// copied), then the copy's truth ([`finish_whole_tree_copy`]). `None`: not possible here;
/// the copy goes file by file.
fn copy_by_snapshot(
    src: &Place,
    dst: &Place,
    staging: &Path,
    ctl: &Control,
) -> Result<Option<Summary>, EngineError> {
    let work = staging.parent().unwrap_or(staging);
    let (Ok(source), Ok(work_fd)) = (fsx::open_dir(&src.root), fsx::open_dir(work)) else {
        return Ok(None);
    };
    if ctl.stream_only || !btrfs::is_subvolume(source.as_fd()) || !same_filesystem(&src.root, work)
    {
        return Ok(None);
    }
    copy_whole_tree(
        src,
        dst,
        staging,
        || btrfs::snapshot(source.as_fd(), work_fd.as_fd(), STAGING.as_bytes()),
        ("copy:snapshot-taken", "a btrfs snapshot of the source"),
        ctl,
    )
}

/// A copy on XFS whose source is an image tree ([`image`]) whose image is on the
/// filesystem of the copy's work dir, which has reflinks: the staging tree is a clone of
/// the source's image, mounted, the whole tree at one instant (no file is created, read or
/// copied), then the copy's truth ([`finish_whole_tree_copy`]).
/// `None`: not possible here; the copy goes file by file.
fn copy_by_image(
    src: &Place,
    dst: &Place,
    staging: &Path,
    ctl: &Control,
) -> Result<Option<Summary>, EngineError> {
    let work = staging.parent().unwrap_or(staging);
    if ctl.stream_only
        || !image::is_image_tree(&src.root)
        || !same_filesystem(&image::image_path(&src.root), work)
        || fsx::kernel_copy_support(work) != Some(fsx::KernelCopy::Reflink)
    {
        return Ok(None);
    }
    copy_whole_tree(
        src,
        dst,
        staging,
        || {
            image::clone_tree(&src.root, staging)?;
            // (A clone is its source's size; this host's trees may be larger now.)
            if let Some(size) = dst.image_size {
                image::grow_or_warn(staging, size);
            }
            Ok(())
        },
        ("copy:image-cloned", "a clone of the source's image"),
        ctl,
    )
}

/// The staging tree made whole by `take` (a snapshot or a clone of the source, in place of
/// the empty staging root), then the copy's truth ([`finish_whole_tree_copy`]). `None`:
/// `take` failed (it leaves nothing); the copy goes file by file. `what`: the failure
/// point once it is taken, and how the summary's note names it.
fn copy_whole_tree(
    src: &Place,
    dst: &Place,
    staging: &Path,
    take: impl FnOnce() -> io::Result<()>,
    (point, how): (&'static str, &str),
    ctl: &Control,
) -> Result<Option<Summary>, EngineError> {
    ctl.phase(Phase::Transfer, None, None);
    fs::remove_dir(staging).map_err(EngineError::io_path("removing", staging))?;
    let mark = untouched::source_mark_before(src, ctl.watch.as_deref());
    if let Err(e) = take() {
        tracing::debug!(error = %e, "not taken whole ({how}): copying file by file");
        let work = staging.parent().unwrap_or(staging);
        make_tree_root(work, STAGING.as_bytes())
            .map_err(EngineError::io_path("creating", staging))?;
        return Ok(None);
    }
    ctl.fail(point)?;
    finish_whole_tree_copy(src, dst, staging, (how, mark), ctl).map(Some)
}

/// The rest of a copy whose staging tree is the source's whole tree at one instant (a
/// snapshot or a clone, `how`): its manifest scanned there (never from the source, which
/// may change meanwhile) with the source's quick-check cache, which still holds (inode
/// numbers and times are kept); files the cache cannot vouch for are read and hashed
/// there. Walkers read the fresh tree's metadata ahead of the scan ([`warm`]). Where the
/// cache is paired with a mark of the source and btrfs or the change watch tell what
/// changed in the source since (`untouched`), only that is looked at in the taken tree,
/// the rest taken from the cache (as a sync's source scan does): a copy of a tree that
/// rests, a template say, walks none of it. Else, where the change watch watches the
/// source, the manifest is read from the source, whose metadata is in the caches
/// ([`scan_from_source`]). Special files are taken out, as a copy never
/// has them. Then it is made durable and moved into place like any copy; its metadata is
/// not read back to be checked against that manifest unless special files were taken out
/// of it: the manifest was read from the staged tree itself, which nothing else writes.
/// `mark`: the source's, read before its tree was taken.
fn finish_whole_tree_copy(
    src: &Place,
    dst: &Place,
    staging: &Path,
    (how, mark): (&str, Option<untouched::Mark>),
    ctl: &Control,
) -> Result<Summary, EngineError> {
    ctl.phase(Phase::Scan, None, None);
    let began = scan_begins();
    let loaded = Manifest::load_stored(&src.manifest_path()).ok().flatten();
    let watch = ctl.watch.as_deref();
    let changed = loaded
        .as_ref()
        .zip(mark.as_ref())
        .and_then(|((cache, stored), before)| {
            let now = untouched::source_mark_now(src, watch)?;
            untouched::source_changes(src, Some((staging, before)), cache, *stored, &now, watch)
        });
    let partial = match (&changed, &loaded) {
        (Some(changed), Some((cache, _))) => {
            scan::scan_changed(staging, cache, changed, None, ctl)?
        }
        _ => None,
    };
    let cache = loaded.as_ref().map(|(m, _)| m);
    let (m, report, read) = match partial {
        Some((m, report)) => {
            let note = format!(
                "the copy's manifest is the source's last scan, read again in the copy only \
                 where the source changed since ({} directories listed, {} entries looked at)",
                report.listed_dirs, report.looked_at
            );
            (m, report, Some(note))
        }
        None => match scan_from_source(src, staging, cache, mark.as_ref(), ctl)? {
            Some((m, report, again)) => {
                let mut note = "the copy's manifest read from its source, which the change \
                                watch saw unchanged from before it was taken until after that \
                                scan"
                    .to_string();
                if again > 0 {
                    let entries = if again == 1 { "entry" } else { "entries" };
                    note += &format!(" but for {again} {entries}, read again in the copy");
                }
                (m, report, Some(note))
            }
            None => {
                let done = AtomicBool::new(false);
                let (m, report) = std::thread::scope(|s| {
                    s.spawn(|| warm::warm(staging, warm::WALKERS, &done));
                    let scanned = scan::scan(staging, cache, true, ctl);
                    done.store(true, Ordering::Relaxed);
                    scanned
                })?;
                (m, report, None)
            }
        },
    };
    let mut walker =
        Walker::new(fsx::open_dir(staging).map_err(EngineError::io_path("opening", staging))?);
    let mut specials = false;
    for e in m.entries.iter().filter(|e| e.kind == Kind::Special) {
        let (dir, name) = walker
            .parent(&e.path)
            .map_err(io_err("opening a directory of the staged tree"))?;
        fsx::remove_at(dir, name)
            .map_err(io_err("removing a special file from the staged tree"))?;
        specials = true;
    }
    drop(walker);
    // The source's quick-check cache for the next copy or sync, paired with the mark read
    // before the tree was taken (it describes the source then).
    let stored = match loaded {
        Some((cache, stored)) if cache == m => Some(stored),
        _ => store_source_cache(src, &m, began),
    };
    if let (Some(mark), Some(stored)) = (mark, stored) {
        untouched::record_source(src, &mark, stored);
    }
    let mut summary = if specials {
        // (Their directories' times moved: what the copy records is read back.)
        finish_copy(dst, staging, &m, ctl)?
    } else {
        let root_hash = hex::encode(m.root_hash());
        place_copy(dst, staging, m, root_hash, ctl)?
    };
    summary.kernel_bytes = summary.tree_bytes;
    summary.notes.push(format!(
        "{how}: {} files shared at once, none copied",
        summary.tree_files
    ));
    summary.notes.extend(read);
    source_facts(
        &mut summary,
        report,
        Listed::default(),
        WireStats::default(),
    );
    Ok(summary)
}

/// The manifest of a tree taken whole (`staging`), read from its source instead: the
/// source's metadata is likely in the kernel's caches (a running container's, a tree just
/// read) where that of the tree just taken is not (a new filesystem). Sound where the
/// change watch tells what changed in the source from before the take (`mark`) until after
/// this scan: those entries are looked at again in the taken tree, the rest are as the
/// source has them. With how many were. `None` where the watch cannot tell, or the source
/// cannot be scanned now (it changes under the scan): then the taken tree is scanned.
fn scan_from_source(
    src: &Place,
    staging: &Path,
    cache: Option<&Manifest>,
    mark: Option<&untouched::Mark>,
    ctl: &Control,
) -> Result<Option<(Manifest, scan::ScanReport, usize)>, EngineError> {
    let watch = ctl.watch.as_deref();
    let Some(mark) = mark.filter(|m| untouched::watched_with(src, m, watch)) else {
        return Ok(None);
    };
    let (from_source, report) = match scan::scan(&src.root, cache, true, ctl) {
        Ok(scanned) => scanned,
        Err(EngineError::Cancelled) => return Err(EngineError::Cancelled),
        Err(e) => {
            tracing::debug!(error = %e, "the source changed under its scan: scanning the copy");
            return Ok(None);
        }
    };
    let Some(changed) = untouched::watched_since(src, mark, watch) else {
        return Ok(None);
    };
    if changed.is_empty() {
        return Ok(Some((from_source, report, 0)));
    }
    let again = changed
        .iter()
        .collect::<std::collections::HashSet<_>>()
        .len();
    Ok(
        scan::scan_changed(staging, &from_source, &changed, None, ctl)?
            .map(|(m, report)| (m, report, again)),
    )
}

/// The target's side of a copy, last: the staged tree checked against `m` (the source's
/// manifest as sent), made durable, then moved into place.
pub(in crate::engine) fn finish_copy(
    dst: &Place,
    staging: &Path,
    m: &Manifest,
    ctl: &Control,
) -> Result<Summary, EngineError> {
    ctl.phase(Phase::Verify, None, None);
    let want = without_specials(m.clone());
    let got = restat(staging, &want, None)?;
    let root_hash = check_roots(&want, &got)?;
    place_copy(dst, staging, got, root_hash, ctl)
}

/// The staged tree, which `got` describes as it is (its root hash `root_hash`, in hex),
/// made durable and moved into place.
fn place_copy(
    dst: &Place,
    staging: &Path,
    got: Manifest,
    root_hash: String,
    ctl: &Control,
) -> Result<Summary, EngineError> {
    ctl.phase(Phase::Commit, None, None);
    let (entries, files, bytes) = (got.entries.len() as u64, got.files(), got.bytes());
    // (Kept decoded: the copy's first sync loads it.)
    got.store_keeping(&dst.manifest_path())
        .map_err(io_err("writing the target manifest"))?;
    write_marker(dst)?;
    let staging_fd = fsx::open_dir(staging).map_err(io_err("opening the staging tree"))?;
    fsx::syncfs(staging_fd.as_fd()).map_err(io_err("syncfs"))?;
    // (Nothing of it held open: an image tree is unmounted to be moved.)
    drop(staging_fd);
    ctl.fail("copy:before-rename")?;
    move_into_place(staging, dst)?;
    let _ = fs::remove_file(dst.commit_marker());
    Ok(Summary {
        files_added: entries,
        tree_files: files,
        tree_bytes: bytes,
        source_root_hash: root_hash.clone(),
        root_hash,
        ..Summary::default()
    })
}

/// Content the receiver's server holds: for each hash, a tree and a path there.
pub(super) type Offer = HashMap<[u8; 32], (u32, Vec<u8>)>;

/// A file whose content the receiver takes from the source tree (`tree`) by the kernel:
/// its entry, where to take it, and what it must be.
fn from_source(
    fw: &mut FrameWriter<PipeWriter>,
    tree: u32,
    e: &Entry,
    ctl: &Control,
) -> Result<(), EngineError> {
    ctl.fail("copy:kernel-file")?;
    fw.send(&Frame::Entry(e.clone()))
        .map_err(io_err("sending"))?;
    let from = Frame::ReuseLocal {
        tree,
        from: e.path.clone(),
    };
    send_reused(fw, from, e, ctl)
}

/// Whether two paths are on one filesystem (the kernel can copy between them). btrfs gives
/// each subvolume a device number of its own: there, two paths of one mount are one
/// filesystem.
pub(super) fn same_filesystem(a: &Path, b: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (fs::metadata(a), fs::metadata(b)) {
        (Ok(ma), Ok(mb)) if ma.dev() == mb.dev() => true,
        (Ok(_), Ok(_)) => {
            let on_btrfs = |p: &Path| fsx::open_dir(p).is_ok_and(|d| btrfs::is_btrfs(d.as_fd()));
            let mount = |p: &Path| {
                rustix::fs::statx(
                    rustix::fs::CWD,
                    p,
                    rustix::fs::AtFlags::empty(),
                    rustix::fs::StatxFlags::MNT_ID,
                )
                .ok()
                .filter(|st| st.stx_mask & rustix::fs::StatxFlags::MNT_ID.bits() != 0)
                .map(|st| st.stx_mnt_id)
            };
            on_btrfs(a) && on_btrfs(b) && mount(a).is_some() && mount(a) == mount(b)
        }
        _ => false,
    }
}

/// Sends every entry of `m` with its content, hashing files as it reads them and
/// recording the hashes in `m`. With `source_tree` (the receiver has the source tree on
/// its filesystem, as that local tree), a file's content is not sent: the receiver takes
/// it from there, and the sender reads only files its cache has no hash of (one read, to
/// hash). Returns the stream's counters and files that changed while read.
pub(super) fn send_copy(
    root: &Path,
    m: &mut Manifest,
    (offer, source_tree): (&Offer, Option<u32>),
    out: PipeWriter,
    ctl: &Control,
) -> Result<(WireStats, Listed), EngineError> {
    let mut fw = FrameWriter::new(out);
    let mut walker =
        Walker::new(fsx::open_dir(root).map_err(EngineError::io_path("opening", root))?);
    let mut gone = Vec::new();
    let mut unstable = Listed::default();
    let mut hashes: HashMap<Vec<u8>, [u8; 32]> = HashMap::new();
    for (i, e) in m.entries.iter_mut().enumerate() {
        ctl.check()?;
        if e.kind != Kind::Special {
            ctl.sent_entry();
        }
        match e.kind {
            Kind::Special => continue,
            // Content the receiver's server holds (known from the source's cache: the scan
            // found the file unchanged): no need to read or send it.
            Kind::File
                if e.link_to.is_none() && e.hash != [0; 32] && offer.contains_key(&e.hash) =>
            {
                let (tree, from) = &offer[&e.hash];
                fw.send(&Frame::Entry(e.clone()))
                    .map_err(io_err("sending"))?;
                let from = Frame::ReuseLocal {
                    tree: *tree,
                    from: from.clone(),
                };
                send_reused(&mut fw, from, e, ctl)?;
                hashes.insert(e.path.clone(), e.hash);
            }
            // Known content the receiver takes from the source by the kernel: not opened.
            Kind::File
                if e.link_to.is_none()
                    && source_tree.is_some()
                    && e.hash != [0; 32]
                    && e.size > 0 =>
            {
                let tree = source_tree.expect("matched above");
                from_source(&mut fw, tree, e, ctl)?;
                hashes.insert(e.path.clone(), e.hash);
            }
            Kind::File if e.link_to.is_none() => {
                let file = match walker
                    .parent(&e.path)
                    .and_then(|(dir, name)| fsx::open_file_at(dir, name))
                {
                    Ok(f) => f,
                    // Vanished or replaced since the scan: not part of this copy (and said so
                    // in the summary). Anything else is content the copy would lack.
                    Err(err) if fsx::is_gone(&err) => {
                        unstable.push(|| e.display_path());
                        gone.push(i);
                        continue;
                    }
                    Err(err) => {
                        return Err(EngineError::Io {
                            context: format!("opening {}", e.display_path()),
                            source: err,
                        })
                    }
                };
                if e.hash == [0; 32] {
                    e.xattrs = fsx::read_xattrs(file.as_fd()).map_err(io_err("reading xattrs"))?;
                }
                if let Some(tree) = source_tree.filter(|_| e.size > 0) {
                    if e.hash == [0; 32] {
                        let (hash, chunks, len) = hash_reader(&file, e.size, ctl, |_, _| Ok(()))?;
                        if len != e.size {
                            unstable.push(|| e.display_path());
                            e.size = len;
                        }
                        e.hash = hash;
                        e.chunks = chunks;
                    }
                    from_source(&mut fw, tree, e, ctl)?;
                    hashes.insert(e.path.clone(), e.hash);
                    continue;
                }
                fw.send(&Frame::Entry(e.clone()))
                    .map_err(io_err("sending"))?;
                let (hash, chunks, len) = hash_reader(&file, e.size, ctl, |data, _| fw.data(data))?;
                if len != e.size {
                    unstable.push(|| e.display_path());
                    e.size = len;
                }
                e.hash = hash;
                e.chunks = chunks;
                hashes.insert(e.path.clone(), hash);
                fw.send(&Frame::FileEnd { hash, size: len })
                    .map_err(io_err("sending"))?;
            }
            Kind::File => {
                if let Some(h) = e.link_to.as_ref().and_then(|l| hashes.get(l)) {
                    e.hash = *h;
                }
                fw.send(&Frame::Entry(e.clone()))
                    .map_err(io_err("sending"))?;
            }
            _ => fw
                .send(&Frame::Entry(e.clone()))
                .map_err(io_err("sending"))?,
        }
    }
    for i in gone.into_iter().rev() {
        m.entries.remove(i);
    }
    fw.send(&Frame::Done).map_err(io_err("sending"))?;
    fw.flush().map_err(io_err("sending"))?;
    Ok((fw.stats, unstable))
}
