//! A conversion job (`POST /containers/{id}/convert-tree`): a container's directory tree,
//! then its snapshots', made image trees on this host ([`engine::convert`]); a running
//! container is stopped for the final pass only ([`JobRunner::convert_running`]). The
//! runner holds the container's lock for writing meanwhile, so no copy, sync or snapshot
//! reads or writes the trees; no start or stop is recorded while the job is queued or
//! running; the sync status does not look at the tree while it is
//! swapped ([`JobRunner::is_converting`]). The job's end leaves the container's row as it
//! was (a running one's stop and start for the final pass record themselves): the tree
//! holds the same entries (and its manifest the same root hash), so its copies stay as
//! current as they were.

use std::path::Path;

use app::model::ContainerStatus;

use super::thread::{run_in_background, without_paths};
use super::JobRunner;
use crate::config::{container_place, image_tree_size, snapshot_place};
use crate::engine::convert::{
    copy_while_running, finish_stopped, recover, remove_old, to_image_tree, Converted,
};
use crate::engine::{self, Control, EngineError, Place};
use crate::lifecycle::Outcome;
use crate::store::DbError;

/// How long a container stopped for a conversion's final pass has to exit before it is
/// killed (as for a sync's).
const STOP_GRACE: std::time::Duration = std::time::Duration::from_secs(10);

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
    /// `was`: its status when the job was asked for (one that ran then runs after it).
    pub(super) async fn convert(
        &self,
        id: &str,
        storage: &Path,
        was: Option<ContainerStatus>,
        ctl: Control,
    ) -> Result<Result<engine::Summary, EngineError>, DbError> {
        let refused = |m: String| Ok(Err(EngineError::Refused(m)));
        // Its request found it stopped or running, and no start or stop is recorded while
        // this job is queued; as it is now decides how its tree is converted.
        let mut status = self.db.container_status(id).await?;
        // It ran when the job was asked for, and has stopped since: this job stopped it for
        // its final pass before a restart of doppel (or it ended on its own, as it may
        // during a sync, which starts it again too). Started again first, it is converted
        // while it runs, down for the final pass only.
        let mut not_started = None;
        if was == Some(ContainerStatus::Running) && status == Some(ContainerStatus::Stopped) {
            let again = self
                .lifecycle
                .start(id, &[ContainerStatus::Stopped])
                .await?;
            if again.status != ContainerStatus::Running {
                not_started = Some(format!(
                    "it did not start again: {}",
                    again.reason.as_deref().unwrap_or("no reason recorded")
                ));
            }
            status = Some(again.status);
        }
        let running = match status {
            Some(ContainerStatus::Stopped) => false,
            Some(ContainerStatus::Running) => true,
            Some(status) => {
                return refused(format!(
                    "the container is {}: a tree is converted while its container is stopped \
                     or running",
                    status.as_str()
                ))
            }
            None => return refused("the container was deleted".into()),
        };
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
        let own = match running {
            true => self.convert_running(id, &tree, size, &ctl).await?,
            false => {
                let (tree, ctl) = (tree.clone(), ctl.clone());
                let done = run_in_background(move || converted(&tree, size, Pass::Whole, &ctl));
                own_tree(done.await)
            }
        };
        let mut summary = match own {
            Ok(summary) => summary,
            Err(e) => return Ok(Err(without_paths(e, &named))),
        };
        summary.notes.extend(not_started);
        // Its snapshots too (copies from them are clones then). One that cannot be
        // converted stays a directory, said so, and the job still succeeds: the container's
        // own tree is converted. So does a job cancelled now: the snapshots not converted
        // yet stay directories.
        let (storage, id) = (storage.to_path_buf(), id.to_string());
        let result = run_in_background(move || {
            for snapshot in snapshots {
                let place = snapshot_place(&storage, &id, &snapshot.id);
                let name = &snapshot.name;
                let note = match ctl.is_cancelled() {
                    true => Ok(Converted::NotConverted("the job was cancelled".into())),
                    false => converted(&place, size, Pass::Whole, &ctl.for_another_run()),
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

    /// The container's own tree while its process runs: copied into its image meanwhile,
    /// then the container stopped, what changed since synced in and the two swapped, and
    /// the container started again. It is down for the final pass alone (`downtime_ms`).
    /// A final pass that fails leaves the directory, and the container is started again
    /// from it.
    async fn convert_running(
        &self,
        id: &str,
        tree: &Place,
        size: u64,
        ctl: &Control,
    ) -> Result<Result<engine::Summary, EngineError>, DbError> {
        let (t, c) = (tree.clone(), ctl.clone());
        let first = run_in_background(move || converted(&t, size, Pass::WhileRunning, &c)).await;
        let first = match first {
            Ok(Converted::Done(first)) => *first,
            other => return Ok(own_tree(other)),
        };
        // (The image made by the first pass goes where no final pass follows; the
        // directory is the tree.)
        let undo = || {
            let t = tree.clone();
            run_in_background(move || recover(&t))
        };
        if ctl.is_cancelled() {
            let _ = undo().await;
            return Ok(Err(EngineError::Cancelled));
        }
        let down = std::time::Instant::now();
        let stopped = self.lifecycle.stop(id, STOP_GRACE).await?;
        // (Recorded stopped, it must have no process: the final pass must not race one.)
        let still = match stopped.status {
            ContainerStatus::Stopped => self.lifecycle.has_process(id).await,
            _ => Err(stopped
                .reason
                .unwrap_or_else(|| stopped.status.as_str().into())),
        };
        if still != Ok(false) {
            let _ = undo().await;
            let why = match still {
                Err(why) => why,
                Ok(_) => "its process still runs".into(),
            };
            return Ok(Err(EngineError::Refused(format!(
                "it could not be stopped for the final pass: {why}"
            ))));
        }
        let (t, c) = (tree.clone(), ctl.for_another_run());
        let last = run_in_background(move || converted(&t, size, Pass::Final, &c)).await;
        let again = self
            .lifecycle
            .start(id, &[ContainerStatus::Stopped])
            .await?;
        let down = down.elapsed();
        // The old directory goes once it runs again (outside its downtime).
        let t = tree.clone();
        let removed = run_in_background(move || remove_old(&t)).await;
        let mut result = own_tree(last).map(|last| super::two_passes(first, last, down));
        if let (Ok(summary), Err(e)) = (&mut result, removed) {
            tracing::warn!(tree = %tree.root.display(), error = %e, "removing a converted tree's old directory");
            summary.notes.push(
                "its old directory is not removed yet (doppel removes it at its next start)".into(),
            );
        }
        started_again(&mut result, again);
        Ok(result)
    }
}

/// How starting the container again went: in the summary's notes, or with the error.
fn started_again(result: &mut Result<engine::Summary, EngineError>, again: Outcome) {
    if again.status == ContainerStatus::Running {
        if let Ok(summary) = result {
            summary.notes.extend(again.notes);
        }
        return;
    }
    let not = format!(
        "it did not start again: {}",
        again.reason.as_deref().unwrap_or("no reason recorded")
    );
    match result {
        Ok(summary) => summary.notes.push(not),
        Err(e) => *e = EngineError::Refused(format!("{e}; {not}")),
    }
}

/// Which pass of a conversion.
#[derive(Clone, Copy)]
enum Pass {
    /// The tree, nothing running from it, copied and swapped at once.
    Whole,
    /// The first of two, while its container runs: its image made.
    WhileRunning,
    /// The last, its container stopped: the changes since synced in, then the swap.
    Final,
}

/// A pass of a conversion, and where it fails, what it left put right at once (not at the
/// next start of doppel): the directory back, or the swap finished.
fn converted(
    place: &Place,
    size: u64,
    pass: Pass,
    ctl: &Control,
) -> Result<Converted, EngineError> {
    let result = match pass {
        Pass::Whole => to_image_tree(place, size, ctl),
        Pass::WhileRunning => copy_while_running(place, size, ctl),
        Pass::Final => finish_stopped(place, size, ctl),
    };
    if result.is_err() {
        if let Err(e) = recover(place) {
            tracing::error!(tree = %place.root.display(), error = %e, "cannot put right a failed conversion to an image tree");
        }
    }
    result
}

/// What became of the container's own tree, as the job's result.
fn own_tree(done: Result<Converted, EngineError>) -> Result<engine::Summary, EngineError> {
    let mut summary = match done? {
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
        "its tree is an image tree: its copies on its server are clones of its image".into(),
    );
    Ok(summary)
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
