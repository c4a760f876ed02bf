//! A conversion job (`POST /containers/{id}/convert-tree`): a stopped container's
//! directory tree, then its snapshots', made image trees on this host
//! ([`engine::convert`]). The runner holds the container's lock for writing meanwhile, so
//! no copy, sync or snapshot reads or writes the trees; no start is recorded while the
//! job is queued or running; the sync status does not look at the tree while it is
//! swapped ([`JobRunner::is_converting`]). The container's row is left as it was: the tree
//! holds the same entries (and its manifest the same root hash), so its copies stay as
//! current as they were.

use std::path::Path;

use app::model::ContainerStatus;

use super::thread::{run_in_background, without_paths};
use super::JobRunner;
use crate::config::{container_place, image_tree_size, snapshot_place};
use crate::engine::convert::{recover, to_image_tree, Converted};
use crate::engine::{self, Control, EngineError, Place};
use crate::store::DbError;

/// Marks a container as being converted while it lives.
struct Converting<'a>(&'a JobRunner, String);

impl Drop for Converting<'_> {
    fn drop(&mut self) {
        self.0.converting.lock().remove(&self.1);
    }
}

impl JobRunner {
    /// Whether a convert job is swapping the container's trees now: what its tree is may
    /// change under a reader (the sync status looks at its source's tree without a lock).
    pub fn is_converting(&self, container_id: &str) -> bool {
        self.converting.lock().contains(container_id)
    }

    /// Converts the trees of container `id` on the server whose storage is `storage`.
    pub(super) async fn convert(
        &self,
        id: &str,
        storage: &Path,
        ctl: Control,
    ) -> Result<Result<engine::Summary, EngineError>, DbError> {
        let refused = |m: String| Ok(Err(EngineError::Refused(m)));
        // Its request found it stopped, and no start is recorded while this job is queued;
        // but a start that ended between that read and the job's queueing is seen here.
        match self.db.container_status(id).await? {
            Some(ContainerStatus::Stopped) => {}
            Some(status) => {
                return refused(format!(
                    "the container is {}: a tree is converted only while its container is \
                     stopped",
                    status.as_str()
                ))
            }
            None => return refused("the container was deleted".into()),
        }
        // (A job resumed after a restart without the setting.)
        let Some(size) = image_tree_size() else {
            return refused(
                "doppel runs without --image-trees now: start it with --image-trees SIZE to \
                 convert trees"
                    .into(),
            );
        };
        let snapshots = self.db.snapshots_of(id).await?;
        self.converting.lock().insert(id.to_string());
        let _converting = Converting(self, id.to_string());
        let tree = container_place(storage, id);
        let named = names(&tree, ("the tree", "the tree's state"), storage);
        let (storage, id) = (storage.to_path_buf(), id.to_string());
        let result = run_in_background(move || {
            let mut summary = match converted(&tree, size, &ctl)? {
                Converted::Done(summary) => *summary,
                Converted::Already => engine::Summary::default(),
                Converted::NotConverted(why) => {
                    return Err(EngineError::Refused(format!(
                        "its tree stays the directory it was: {why}"
                    )))
                }
            };
            summary.notes.insert(
                0,
                "its tree is an image tree: its copies on its server are clones of its image"
                    .into(),
            );
            // Its snapshots too (copies from them are clones then). One that cannot be
            // converted stays a directory, said so, and the job still succeeds: the
            // container's own tree is converted. So does a job cancelled now: the snapshots
            // not converted yet stay directories.
            for snapshot in snapshots {
                let place = snapshot_place(&storage, &id, &snapshot.id);
                let name = &snapshot.name;
                let note = match ctl.is_cancelled() {
                    true => Ok(Converted::NotConverted("the job was cancelled".into())),
                    false => converted(&place, size, &ctl.for_another_run()),
                };
                summary.notes.push(match note {
                    Ok(Converted::Done(_)) => format!("snapshot {name}: an image tree now"),
                    Ok(Converted::Already) => format!("snapshot {name}: an image tree already"),
                    Ok(Converted::NotConverted(why)) => {
                        format!("snapshot {name} stays a directory: {why}")
                    }
                    Err(e) => {
                        let snapshot = ("the snapshot", "the snapshot's state");
                        let e = without_paths(e, &names(&place, snapshot, &storage));
                        format!("snapshot {name} stays a directory: {e}")
                    }
                });
            }
            Ok(summary)
        })
        .await;
        Ok(result.map_err(|e| without_paths(e, &named)))
    }
}

/// [`to_image_tree`], and where it fails, what it left put right at once (not at the next
/// start of doppel): the directory back, or the swap finished.
fn converted(place: &Place, size: u64, ctl: &Control) -> Result<Converted, EngineError> {
    let result = to_image_tree(place, size, ctl);
    if result.is_err() {
        if let Err(e) = recover(place) {
            tracing::error!(tree = %place.root.display(), error = %e, "cannot put right a failed conversion to an image tree");
        }
    }
    result
}

/// How errors name the tree at `place` and its state (`(tree, state)`: "the tree", "the
/// tree's state") and its server, not by their paths.
fn names(
    place: &Place,
    (tree, state): (&'static str, &'static str),
    storage: &Path,
) -> Vec<(String, &'static str)> {
    vec![
        (place.root.display().to_string(), tree),
        (place.state_dir.display().to_string(), state),
        (storage.display().to_string(), "the server"),
    ]
}
