//! Directory trees made image trees ([`crate::engine::convert`]), so that their copies on
//! their server are clones of one file. Two ways:
//! - `POST /containers/{id}/convert-tree` ([`Service::convert_tree`]): a job for one
//!   container on this host, stopped or running (stopped for the final pass only;
//!   platform admins); the runner holds its lock while it converts, so no job reads or
//!   writes the tree meanwhile, and no start or stop is recorded while the job is queued
//!   or running.
//! - `doppel convert-trees` ([`convert_trees`]): every tree of this host, while doppel is
//!   stopped (its caller holds the data dir), skipping the containers whose process runs
//!   (they outlive doppel).
//!
//! At start, doppel puts right what an interrupted conversion left before anything uses
//! the trees ([`recover_conversions`]).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use app::model::*;

use super::containers::tree_kind;
use super::jobs::{check_idempotency_key, new_job, request_fingerprint};
use super::{check_id, conflict, internal, Service};
use crate::config::{container_place, container_root, image_tree_size, snapshot_place};
use crate::engine::convert::{self, Converted};
use crate::engine::{Control, Place, Progress, Summary};
use crate::jobs::JobParams;
use crate::store::{Db, DbError, HostTree};

#[derive(Debug, thiserror::Error)]
pub enum ConvertError {
    #[error("no container {0:?} on this host (give its id or its name)")]
    Unknown(String),
    #[error("cannot tell which containers run: {0}")]
    Runtime(String),
    #[error("database: {0}")]
    Db(#[from] DbError),
}

/// What became of one tree: a container's, or one of its snapshots'.
pub struct TreeConverted {
    /// The container's id and name.
    pub id: String,
    pub name: String,
    /// The snapshot's name, for a snapshot's tree.
    pub snapshot: Option<String>,
    pub root: PathBuf,
    pub outcome: Outcome,
}

pub enum Outcome {
    /// An image tree now; what its copy did.
    Converted(Box<Summary>),
    /// It was one already.
    Already,
    /// Left a directory, unchanged, for this reason.
    Left(String),
    /// The conversion failed: the tree is the directory it was, or what the failure left
    /// is put right by the next conversion or doppel's next start ([`convert::recover`]).
    Failed(String),
}

const NO_IMAGE_TREES: &str = "doppel runs without --image-trees: start it with --image-trees \
     SIZE (the most each image tree may hold, e.g. 64G) to convert trees";

impl Service {
    /// `POST /containers/{id}/convert-tree`: a job that makes a container's directory tree,
    /// and its snapshots', image trees (platform admins: it is about the host's storage). A
    /// running container runs on meanwhile but for the final pass. Refused with a 409
    /// saying why where it cannot be: doppel runs without `--image-trees`, the container is
    /// on another host, neither stopped nor running (a job has it, or it failed), already
    /// an image tree or a subvolume, or its filesystem has no reflinks; with a 507 where
    /// its server lacks the room.
    pub async fn convert_tree(
        &self,
        user: &UserInfo,
        id: &str,
        idempotency_key: Option<&str>,
    ) -> Result<Job, ApiError> {
        let project = self.project_of(id).await;
        let target = id.to_string();
        self.audited(user, "container.convert_tree", &target, project, async {
            let idem = check_idempotency_key(idempotency_key)?;
            let (row, _) = self.visible_container(user, id).await?;
            Self::require_platform_admin(user, "converting a container's tree")?;
            let fingerprint = request_fingerprint(&["convert", id]);
            if let Some(key) = &idem {
                if let Some(job) = self.job_by_idempotency_key(user, key, &fingerprint).await? {
                    return Ok(job);
                }
            }
            let name = &row.name;
            if row.is_on_agent() {
                return Err(conflict(format!(
                    "{name} is on {}, a server on another host: only trees on doppel's own \
                     host can be converted",
                    row.server_name
                )));
            }
            if image_tree_size().is_none() {
                return Err(conflict(NO_IMAGE_TREES));
            }
            let status = ContainerStatus::parse(&row.status).unwrap_or(ContainerStatus::Stopped);
            match status {
                // (A running one is stopped for the final pass only.)
                ContainerStatus::Stopped | ContainerStatus::Running => {}
                ContainerStatus::Failed => {
                    return Err(conflict(format!(
                        "{name} failed: it has no complete tree to convert"
                    )))
                }
                other => {
                    return Err(conflict(format!(
                        "{name} is {}; convert it once that job has ended",
                        other.as_str()
                    )))
                }
            }
            let root = container_root(Path::new(&row.storage_root), id);
            match tree_kind(&root).await {
                Some(TreeKind::Directory) => {}
                Some(TreeKind::ImageTree) => {
                    return Err(conflict(format!("{name}'s tree is an image tree already")))
                }
                Some(TreeKind::Subvolume) => {
                    return Err(conflict(format!(
                        "{name}'s tree is a btrfs subvolume: its copies on its server are \
                         snapshots already"
                    )))
                }
                None => return Err(conflict(format!("{name} has no tree on disk"))),
            }
            // The trees to copy into images: its own, and its snapshots' that are directories.
            let snapshots = self.db.snapshots_of(id).await.map_err(internal)?;
            let storage = PathBuf::from(&row.storage_root);
            let of = id.to_string();
            let (holds, snapshot_bytes) = tokio::task::spawn_blocking(move || {
                let directories = snapshots.iter().filter(|s| {
                    let place = snapshot_place(&storage, &of, &s.id);
                    !crate::engine::image::image_path(&place.root).exists()
                });
                let bytes: i64 = directories.map(|s| s.size_bytes).sum();
                (crate::engine::image::can_hold(&storage), bytes)
            })
            .await
            .map_err(internal)?;
            if !holds {
                return Err(conflict(format!(
                    "{}'s storage cannot hold image trees (they need XFS with reflink=1)",
                    row.server_name
                )));
            }
            // Each tree is copied into its image before its directory goes, and a directory
            // whose extents its copies share frees nothing when it goes: all of it may stay.
            super::copy::check_free_space(
                (&row.server_name, &row.storage_root),
                None,
                true,
                row.size_bytes.saturating_add(snapshot_bytes),
                "converting its tree and its snapshots'",
            )?;
            let params = JobParams {
                source_snapshot_id: None,
                previous_status: Some(status),
                bwlimit: None,
            };
            // (A conversion reads nothing else: its "source" is the container itself.)
            let on = (row.project_id.as_str(), id, id);
            let job = new_job(JobKind::Convert, user, on, &params, (idem, fingerprint))?;
            self.queue_and_run(job).await
        })
        .await
    }
}

impl Service {
    /// `POST /servers/{id}/convert-trees` (platform admins): a convert job
    /// ([`Service::convert_tree`]) for each container on the server whose tree is a
    /// directory. Those refused (a job has one, it failed, no room) are listed with why; the
    /// request as a whole is refused only where no container of it could be converted: a
    /// server on another host, or doppel without `--image-trees`. The jobs run one at a
    /// time per server, as every job does with the default `--max-jobs-per-server`.
    pub async fn convert_server_trees(
        &self,
        user: &UserInfo,
        server_id: &str,
    ) -> Result<ServerConversions, ApiError> {
        Self::require_platform_admin(user, "converting a server's trees")?;
        check_id("server id", server_id)?;
        // (Its rows alone: what the Servers page shows of each is not needed here.)
        let servers = self.db.servers().await.map_err(internal)?;
        let Some(server) = servers.iter().find(|s| s.id == server_id) else {
            return Err(ApiError::not_found("server", server_id));
        };
        if server.kind == ServerKind::Agent {
            return Err(conflict(format!(
                "{} is a server on another host: only trees on doppel's own host can be \
                 converted",
                server.name
            )));
        }
        if image_tree_size().is_none() {
            return Err(conflict(NO_IMAGE_TREES));
        }
        let rows = self.db.containers(None, None).await.map_err(internal)?;
        let mut done = ServerConversions {
            jobs: Vec::new(),
            refused: Vec::new(),
            already: 0,
        };
        for row in rows.into_iter().filter(|r| r.server_id == server_id) {
            let root = container_root(Path::new(&row.storage_root), &row.id);
            match tree_kind(&root).await {
                Some(TreeKind::Directory) => {}
                Some(TreeKind::ImageTree | TreeKind::Subvolume) => {
                    done.already += 1;
                    continue;
                }
                // (No tree yet: a copy under way, or one that failed.)
                None => {}
            }
            match self.convert_tree(user, &row.id, None).await {
                Ok(job) => done.jobs.push(job),
                Err(e) => done.refused.push(ConversionRefused {
                    container_id: row.id,
                    name: row.name,
                    reason: e.message,
                }),
            }
        }
        Ok(done)
    }
}

/// How a conversion goes: the container's name and the engine's report (at most every
/// 50 ms, and at each phase).
pub type ConvertProgress = Arc<dyn Fn(&str, &Progress) + Send + Sync>;

/// Converts the trees of the containers on this host and of their snapshots (or only
/// those of the containers `only` names, by id or name) to image trees of `size` bytes,
/// one at a time; `each` hears of every tree as it is done, `progress` of each one's copy
/// as it goes. A container whose process runs keeps its tree (said so); its snapshots are
/// converted.
pub async fn convert_trees(
    db: &Db,
    data_dir: &Path,
    size: u64,
    only: &[String],
    progress: ConvertProgress,
    mut each: impl FnMut(&TreeConverted),
) -> Result<Vec<TreeConverted>, ConvertError> {
    let mut trees = db.trees_on_this_host().await?;
    if !only.is_empty() {
        if let Some(unknown) = only
            .iter()
            .find(|o| !trees.iter().any(|t| &t.id == *o || &t.name == *o))
        {
            return Err(ConvertError::Unknown(unknown.clone()));
        }
        trees.retain(|t| only.iter().any(|o| o == &t.id || o == &t.name));
    }
    let running = crate::runtime::with_processes(data_dir)
        .await
        .map_err(|e| ConvertError::Runtime(e.to_string()))?;
    let mut done = Vec::with_capacity(trees.len());
    for tree in trees {
        let place = place_of(&tree);
        let HostTree {
            id, name, snapshot, ..
        } = tree;
        // (A snapshot is no running process's.)
        let outcome = if snapshot.is_none() && running.contains(&id) {
            Outcome::Left(
                "its process is running: stop the container in doppel first, then stop doppel \
                 and convert"
                    .into(),
            )
        } else {
            let place = place.clone();
            let of = match &snapshot {
                Some((_, s)) => format!("{name} snapshot {s}"),
                None => name.clone(),
            };
            let progress = progress.clone();
            let ctl = Control::new().with_progress(move |p| progress(&of, p));
            let converted =
                tokio::task::spawn_blocking(move || convert::to_image_tree(&place, size, &ctl))
                    .await;
            match converted {
                Ok(Ok(Converted::Done(summary))) => Outcome::Converted(summary),
                Ok(Ok(Converted::Already)) => Outcome::Already,
                Ok(Ok(Converted::NotConverted(why))) => Outcome::Left(why),
                Ok(Err(e)) => Outcome::Failed(e.to_string()),
                Err(e) => Outcome::Failed(e.to_string()),
            }
        };
        let tree = TreeConverted {
            id,
            name,
            snapshot: snapshot.map(|(_, name)| name),
            root: place.root,
            outcome,
        };
        each(&tree);
        done.push(tree);
    }
    Ok(done)
}

/// At start, before anything uses the trees: what an interrupted conversion left is put
/// right (see [`convert::recover`]); one that cannot be is logged, its tree left as it is.
pub async fn recover_conversions(db: &Db) -> Result<(), DbError> {
    let places: Vec<_> = db
        .trees_on_this_host()
        .await?
        .into_iter()
        .map(|t| place_of(&t))
        .collect();
    let _ = tokio::task::spawn_blocking(move || {
        for place in places {
            if let Err(e) = convert::recover(&place) {
                tracing::error!(tree = %place.root.display(), error = %e, "cannot put right an interrupted conversion to an image tree");
            }
        }
    })
    .await;
    Ok(())
}

/// Where a tree on this host is, with its engine state.
fn place_of(tree: &HostTree) -> Place {
    let root = Path::new(&tree.storage_root);
    match &tree.snapshot {
        Some((snapshot, _)) => snapshot_place(root, &tree.id, snapshot),
        None => container_place(root, &tree.id),
    }
}
