//! Snapshots: a container's tree frozen under a name.

use std::os::fd::AsFd;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use app::model::*;

use super::{internal, Service};
use crate::config::{snapshot_place, snapshots_dir};
use crate::engine::fsx;
use crate::store::DbError;

/// How long taking a snapshot waits for its job slots (on the container's server and
/// overall, which copies and syncs take too) before it is refused with 503.
const SLOT_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

impl Service {
    pub async fn list_snapshots(
        &self,
        user: &UserInfo,
        container_id: &str,
    ) -> Result<Vec<Snapshot>, ApiError> {
        Ok(self.get_container(user, container_id).await?.snapshots)
    }

    /// `POST /containers/{id}/snapshots`: freezes the current tree under a name.
    pub async fn create_snapshot(
        &self,
        user: &UserInfo,
        container_id: &str,
        name: &str,
    ) -> Result<Snapshot, ApiError> {
        let project = self.project_of(container_id).await;
        let target = container_id.to_string();
        self.audited(user, "snapshot.create", &target, project, async {
            let c = self.get_container(user, container_id).await?;
            self.visibility(user)
                .await?
                .require_operator(&c.summary.project_id, "taking a snapshot")?;
            validate_container_name(name).map_err(|m| {
                ApiError::new(ErrorCode::Unprocessable, format!("name: {m}")).on_field("name")
            })?;
            if c.snapshots.iter().any(|s| s.name == name) {
                return Err(ApiError::new(
                    ErrorCode::Conflict,
                    format!("a snapshot named {name:?} exists"),
                ));
            }
            if matches!(
                c.summary.status,
                ContainerStatus::Copying | ContainerStatus::Failed | ContainerStatus::Deleting
            ) {
                return Err(ApiError::new(
                    ErrorCode::Conflict,
                    "the container has no complete tree yet",
                ));
            }
            let (db, agents) = (self.db.clone(), self.agents.clone());
            let (server, container, name) = (
                c.summary.server_id.clone(),
                container_id.to_string(),
                name.to_string(),
            );
            // The slots are waited for here, not in the task: a request answers in bounded
            // time, and a client that gives up before the snapshot starts leaves none behind.
            let held = tokio::time::timeout(
                SLOT_WAIT,
                self.jobs.hold_for_snapshot(&server, &container),
            )
            .await
            .map_err(|_| {
                ApiError::new(
                    ErrorCode::Unavailable,
                    format!(
                        "no job slot on server {} came free within {} s (jobs running or \
                         queued take them, or a sync or conversion of this container is \
                         running); the snapshot was not taken: try again when they are done",
                        c.summary.server_name,
                        SLOT_WAIT.as_secs()
                    ),
                )
                .retry_after(SLOT_WAIT.as_secs())
            })?;
            let on_agent = agents.is_agent(&server);
            // A task of its own: the tree is copied and recorded (or removed) even if the client
            // goes away meanwhile, so no half-made or unrecorded tree is left behind.
            let task = tokio::spawn(async move {
                let _held = held;
                if on_agent {
                    // Taken on its own host, then recorded here.
                    super::inventory::create_snapshot_on_agent(
                        &db, &agents, &server, &container, &name,
                    )
                    .await
                } else {
                    super::inventory::create_snapshot(&db, &container, &name).await
                }
            });
            let id = task.await.map_err(internal)?.map_err(|e| match e {
                super::inventory::InventoryError::Exists(m) => {
                    ApiError::new(ErrorCode::Conflict, format!("{m} already exists"))
                }
                super::inventory::InventoryError::NoSpace { .. } => ApiError::new(
                    ErrorCode::InsufficientStorage,
                    "not enough space on the container's server for this snapshot; nothing was kept",
                ),
                e => internal(e),
            })?;
            self.db
                .snapshot(&id)
                .await
                .map_err(internal)?
                .ok_or_else(ApiError::internal)
        })
        .await
    }

    /// Removes snapshot trees no snapshot row names: left by a stop in the middle of taking
    /// one (before its row was written). Run at start, before anything else takes one.
    pub(super) async fn collect_orphan_snapshots(&self) -> Result<usize, DbError> {
        let known = self.db.snapshot_ids().await?;
        let roots: Vec<PathBuf> = self
            .db
            .servers()
            .await?
            .into_iter()
            // An agent's storage root is on its own host.
            .filter(|s| s.kind == app::model::ServerKind::Embedded)
            .map(|s| PathBuf::from(s.storage_root))
            .collect();
        let removed = tokio::task::spawn_blocking(move || {
            let mut removed = 0;
            for root in roots {
                for (container, snapshot) in snapshot_dirs(&root) {
                    if known.contains(&snapshot) {
                        continue;
                    }
                    let place = snapshot_place(&root, &container, &snapshot);
                    let gone = [&place.root, &place.state_dir].into_iter().all(|dir| {
                        let (Some(parent), Some(name)) = (dir.parent(), dir.file_name()) else {
                            return false;
                        };
                        fsx::open_dir(parent)
                            .and_then(|p| fsx::remove_at(p.as_fd(), name.as_bytes()))
                            .map_err(|e| {
                                tracing::warn!(dir = %dir.display(), error = %e, "removing an orphan snapshot failed")
                            })
                            .is_ok()
                    });
                    if gone {
                        tracing::info!(container, snapshot, "removed a snapshot tree left by an interrupted snapshot");
                        removed += 1;
                    }
                }
            }
            removed
        })
        .await
        .unwrap_or(0);
        Ok(removed)
    }
}

/// (container id, snapshot id) of every snapshot tree under a storage root.
fn snapshot_dirs(root: &Path) -> Vec<(String, String)> {
    let ids_in = |dir: &Path| -> Vec<String> {
        std::fs::read_dir(dir)
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| e.file_name().into_string().ok())
            .filter(|n| is_valid_id(n))
            .collect()
    };
    let base = snapshots_dir(root);
    ids_in(&base)
        .into_iter()
        .flat_map(|c| {
            ids_in(&base.join(&c))
                .into_iter()
                .map(move |s| (c.clone(), s))
        })
        .collect()
}
