//! A conversion job (`POST /containers/{id}/convert-tree`): a stopped container's
//! directory tree, then its snapshots', made image trees on this host
//! ([`engine::convert`]). The runner holds the container's lock for writing meanwhile, so
//! no copy, sync or snapshot reads or writes the trees; no start is recorded while the
//! job is queued or running. The container's row is left as it was: the tree holds the
//! same entries (and its manifest the same root hash), so its copies stay as current as
//! they were.

use std::path::Path;

use app::model::ContainerStatus;

use super::thread::{run_in_background, without_paths};
use super::JobRunner;
use crate::config::{container_place, image_tree_size, snapshot_place};
use crate::engine::convert::{to_image_tree, Converted};
use crate::engine::{self, Control, EngineError};
use crate::store::DbError;

impl JobRunner {
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
        let tree = container_place(storage, id);
        let names = vec![
            (tree.root.display().to_string(), "the tree"),
            (tree.state_dir.display().to_string(), "the tree's state"),
            (storage.display().to_string(), "the server"),
        ];
        let (storage, id) = (storage.to_path_buf(), id.to_string());
        let result = run_in_background(move || {
            let mut summary = match to_image_tree(&tree, size, &ctl)? {
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
            // Its snapshots too (copies from them are clones then); one that cannot be
            // converted stays a directory, said so, and the job still succeeds: the
            // container's own tree is converted.
            for snapshot in snapshots {
                let place = snapshot_place(&storage, &id, &snapshot.id);
                let name = &snapshot.name;
                let note = match to_image_tree(&place, size, &ctl.for_another_run()) {
                    Ok(Converted::Done(_)) => format!("snapshot {name}: an image tree now"),
                    Ok(Converted::Already) => format!("snapshot {name}: an image tree already"),
                    Ok(Converted::NotConverted(why)) => {
                        format!("snapshot {name} stays a directory: {why}")
                    }
                    Err(EngineError::Cancelled) => return Err(EngineError::Cancelled),
                    Err(e) => format!("snapshot {name} stays a directory: {e}"),
                };
                summary.notes.push(note);
            }
            Ok(summary)
        })
        .await;
        Ok(result.map_err(|e| without_paths(e, &names)))
    }
}
