//! A directory tree made an image tree in place ([`super::image`]): the trees a host laid
//! down before doppel was started with `--image-trees` stay directories, copied file by
//! file (on XFS about 50 µs of kernel time per file); an image tree's copy is one clone.
//!
//! The tree is copied into a new image tree in its state dir (`convert/new`): a copy like
//! any other, staged, checked against the tree's scan and made durable. Then the two are
//! swapped: the directory renamed to `convert/old`, the image tree moved to the tree's
//! place (its image renamed to `<root>.xfs` first), the directory removed. The tree's
//! manifest becomes the new tree's (its quick-check data names the new inodes).
//!
//! What an interruption leaves is put right by [`recover`], which every conversion runs
//! first and doppel runs at start: until the image is `<root>.xfs`, the directory is the
//! tree (put back where it was moved aside); from then on, the image is (the swap is
//! finished, and the tree mounted where it is next used: [`image::ensure_mounted`]).

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use super::{image, remove_trees, Control, EngineError, Place, Summary};

/// What a conversion did.
#[derive(Debug)]
pub enum Converted {
    /// The tree is an image tree now; what its copy found and did.
    Done(Box<Summary>),
    /// It was one already.
    Already,
    /// It stays a directory, for this reason; nothing was changed.
    NotConverted(String),
}

/// Where a conversion of the tree at `place` works: in its state dir, on the tree's
/// filesystem (so that the directory and the image can be renamed in and out).
fn work_dir(place: &Place) -> PathBuf {
    place.state_dir.join("convert")
}

/// Makes the directory tree of `place` an image tree of `size` bytes (sparse), holding
/// the same entries with the same content and metadata. Whoever calls this makes sure
/// nothing else reads or writes the tree meanwhile (no job, no running process): a file
/// written during the copy is refused, not lost, but one written after it would be.
pub fn to_image_tree(place: &Place, size: u64, ctl: &Control) -> Result<Converted, EngineError> {
    match copy_into_image(place, size, false, ctl)? {
        Converted::Done(summary) => {
            swap(place, &work_dir(place), &image_place(place).root, ctl)?;
            remove_old(place)?;
            Ok(Converted::Done(summary))
        }
        other => Ok(other),
    }
}

/// The first pass of a conversion of a tree whose container runs: the tree copied into its
/// image (`Done`: ready, not yet in the tree's place). Files written meanwhile are fine:
/// [`finish_stopped`], once the container is stopped, brings them.
pub fn copy_while_running(
    place: &Place,
    size: u64,
    ctl: &Control,
) -> Result<Converted, EngineError> {
    copy_into_image(place, size, true, ctl)
}

/// The final pass of a conversion begun by [`copy_while_running`], its container stopped:
/// what changed since brought into the image by a sync, then the swap. Refused (the image
/// removed, the directory the tree) where a file changes even now, or the tree holds
/// device files or sockets. The old directory is left in the work dir, for
/// [`remove_old`] once the container runs again (removing 40,000 files took most of a
/// second of the downtime; [`recover`] removes it too).
pub fn finish_stopped(place: &Place, size: u64, ctl: &Control) -> Result<Converted, EngineError> {
    let ctl = &unwatched(ctl);
    let work = work_dir(place);
    let new = image_place(place).with_image_size(Some(size));
    if !image::is_image_tree(&new.root) {
        return Err(EngineError::Refused(
            "no image made by a first pass to finish".into(),
        ));
    }
    let summary = match super::sync(place, &new, ctl) {
        Ok(summary) => summary,
        Err(e) => {
            let _ = remove_trees(&[work]);
            return Err(e);
        }
    };
    if let Some(why) = refusal(&summary) {
        remove_trees(&[work])?;
        return Ok(Converted::NotConverted(why));
    }
    swap(place, &work, &new.root, ctl)?;
    Ok(Converted::Done(Box::new(summary)))
}

/// `ctl` without the change watch, for a pass into the image: the watch holds open each
/// filesystem it is asked about, so the image's could not be unmounted should the
/// conversion be refused. (Its source is walked then: a copy file by file records no
/// mark of it anyway.)
fn unwatched(ctl: &Control) -> Control {
    ctl.clone().with_watch(None)
}

/// Where a conversion lays the tree's image down: in its work dir, with its own state.
fn image_place(place: &Place) -> Place {
    let work = work_dir(place);
    Place::new(work.join("new"), work.join("state"))
}

/// The checks before a conversion, then the tree copied into a new image tree in its work
/// dir (`Done`: its copy's summary). `running`: files changing meanwhile, and device files
/// or sockets (a service's socket is there only while it runs), are let be: the final
/// pass decides; else they refuse it.
fn copy_into_image(
    place: &Place,
    size: u64,
    running: bool,
    ctl: &Control,
) -> Result<Converted, EngineError> {
    let ctl = &unwatched(ctl);
    recover(place)?;
    // (Mounted or not, an image tree has its image beside it.)
    if image::image_path(&place.root).exists() {
        return Ok(Converted::Already);
    }
    if !fs::symlink_metadata(&place.root).is_ok_and(|m| m.is_dir()) {
        return Err(EngineError::Refused(format!(
            "no directory tree at {}",
            place.root.display()
        )));
    }
    if place.work_dir().exists() {
        return Err(EngineError::Refused(format!(
            "a job that did not end left its work in {}: doppel's next start finishes or \
             undoes it (a copy's next sync too); then convert",
            place.work_dir().display()
        )));
    }
    // (A mount's root cannot be moved aside: found before the copy, not after it.)
    if is_mount_point(&place.root) {
        return Ok(Converted::NotConverted(
            "something is mounted at its root (unmount it first)".into(),
        ));
    }
    let parent = place.root.parent().unwrap_or(&place.root);
    if !image::can_hold(parent) {
        return Ok(Converted::NotConverted(
            "its filesystem cannot hold image trees (they need XFS with reflink=1)".into(),
        ));
    }
    let work = work_dir(place);
    fs::create_dir_all(&work).map_err(EngineError::io_path("creating", &work))?;
    let new = image_place(place).with_image_size(Some(size));
    let summary = match super::copy(place, &new, ctl) {
        Ok(summary) => summary,
        Err(e) => {
            let _ = remove_trees(&[work]);
            return Err(e);
        }
    };
    let refused = if !image::is_image_tree(&new.root) {
        // (The copy's note says why it was laid down as a directory: too big for `size`.)
        Some(
            summary
                .notes
                .iter()
                .find(|n| n.starts_with("laid down as a directory"))
                .cloned()
                .unwrap_or_else(|| "its copy was laid down as a directory".into()),
        )
    } else if running {
        None
    } else {
        refusal(&summary)
    };
    if let Some(why) = refused {
        remove_trees(&[work])?;
        return Ok(Converted::NotConverted(why));
    }
    Ok(Converted::Done(Box::new(summary)))
}

/// Why a pass's copy cannot become the tree, if it cannot: it left device files or sockets
/// out, or files changed while it copied them.
fn refusal(summary: &Summary) -> Option<String> {
    if summary.skipped_special_count > 0 {
        Some(format!(
            "it holds {} device files or sockets, which a copy leaves out (first: {})",
            summary.skipped_special_count,
            summary.skipped_special.first().map_or("", String::as_str)
        ))
    } else if summary.unstable_count > 0 {
        Some(format!(
            "{} files changed while it was copied (first: {}): stop what writes to it",
            summary.unstable_count,
            summary.unstable.first().map_or("", String::as_str)
        ))
    } else {
        None
    }
}

/// The swap: the directory moved aside, the image tree moved to its place, then
/// [`finish`]. Each step durable before the next; an error leaves what [`recover`] mends.
fn swap(place: &Place, work: &Path, new_root: &Path, ctl: &Control) -> Result<(), EngineError> {
    let old = work.join("old");
    if let Err(e) = fs::rename(&place.root, &old) {
        // Nothing moved: the directory is the tree, and the new image goes.
        let _ = remove_trees(&[work.to_path_buf()]);
        return Err(EngineError::io_path("moving aside", &place.root)(e));
    }
    sync_dirs(&[place.root.parent(), Some(work)]).map_err(EngineError::io_path("syncing", work))?;
    ctl.fail("convert:aside")?;
    image::rename_tree(new_root, &place.root).map_err(EngineError::io_path(
        "moving the image tree to",
        &place.root,
    ))?;
    ctl.fail("convert:swapped")?;
    finish(place, work)
}

/// What a conversion left once its image took the tree's place (the old directory) is
/// removed; nothing to do where there is none.
pub fn remove_old(place: &Place) -> Result<(), EngineError> {
    let work = work_dir(place);
    match fs::symlink_metadata(&work) {
        Ok(_) => remove_trees(&[work]),
        Err(_) => Ok(()),
    }
}

/// After the image took the tree's place: its manifest becomes the tree's, and the records
/// of what the directory's syncs saw are dropped (they name the directory's generations).
/// The work dir, with the old directory, is left for [`remove_old`].
fn finish(place: &Place, work: &Path) -> Result<(), EngineError> {
    let manifest = work.join("state").join("manifest");
    if manifest.exists() {
        fs::rename(&manifest, place.manifest_path())
            .map_err(EngineError::io_path("moving into place", &manifest))?;
    }
    for record in ["untouched", "scanned"] {
        let path = place.state_dir.join(record);
        match fs::remove_file(&path) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => {
                return Err(EngineError::io_path("removing", &path)(e))
            }
            _ => {}
        }
    }
    sync_dirs(&[Some(place.state_dir.as_path())])
        .map_err(EngineError::io_path("syncing", &place.state_dir))
}

/// Puts right what an interrupted conversion of the tree at `place` left, if anything:
/// before its image was renamed to the tree's (`<root>.xfs`), the directory is put back
/// and the new image tree removed; after, the swap is finished. Nothing to do (one `stat`)
/// where no conversion ran.
pub fn recover(place: &Place) -> Result<(), EngineError> {
    let work = work_dir(place);
    if fs::symlink_metadata(&work).is_err() {
        return Ok(());
    }
    let old = work.join("old");
    if fs::symlink_metadata(&old).is_ok() {
        if image::image_path(&place.root).exists() {
            tracing::info!(tree = %place.root.display(), "finishing an interrupted conversion to an image tree");
            // (Where the image's mount had not moved yet, the tree's root is made; the
            // tree is mounted there when it is next used.)
            if fs::symlink_metadata(&place.root).is_err() {
                fs::create_dir(&place.root)
                    .map_err(EngineError::io_path("creating", &place.root))?;
            }
            finish(place, &work)?;
            return remove_old(place);
        }
        tracing::info!(tree = %place.root.display(), "undoing an interrupted conversion to an image tree");
        // (The image is renamed before the tree's root is made: a root here is empty.)
        if fs::symlink_metadata(&place.root).is_ok() {
            fs::remove_dir(&place.root).map_err(EngineError::io_path("removing", &place.root))?;
        }
        fs::rename(&old, &place.root).map_err(EngineError::io_path("putting back", &old))?;
        sync_dirs(&[place.root.parent(), Some(work.as_path())])
            .map_err(EngineError::io_path("syncing", &place.root))?;
    }
    remove_trees(&[work])
}

fn sync_dirs(dirs: &[Option<&Path>]) -> io::Result<()> {
    for dir in dirs.iter().flatten() {
        fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

/// Whether a filesystem is mounted at `root` (a bind mount, say).
fn is_mount_point(root: &Path) -> bool {
    let Ok(root) = fs::canonicalize(root) else {
        return false;
    };
    super::fsx::mount_points().is_ok_and(|points| points.contains(&root))
}
