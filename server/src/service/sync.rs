//! Syncing a copy with its source: one sync at a time per container.

use app::model::*;

use super::jobs::{check_idempotency_key, new_job, parse_bwlimit, request_fingerprint};
use super::{internal, Service};
use crate::jobs::JobParams;

impl Service {
    /// `POST /containers/{id}/sync`: one sync at a time per container (a second request
    /// gets 409 naming the running job).
    pub async fn sync_container(
        &self,
        user: &UserInfo,
        id: &str,
        idempotency_key: Option<&str>,
        options: &TransferOptions,
    ) -> Result<Job, ApiError> {
        let project = self.project_of(id).await;
        let target = id.to_string();
        self.audited(user, "container.sync", &target, project, async {
            let idem = check_idempotency_key(idempotency_key)?;
            // Rights are checked on every request, replays included: a user who lost access to
            // either project since cannot even learn how an earlier sync went this way.
            let (row, vis) = self.visible_container(user, id).await?;
            vis.require_operator(&row.project_id, "syncing this container")?;
            if let Some(source_project) = &row.src_project_id {
                vis.require_source_operator(source_project, "syncing from the source")?;
            }
            let bwlimit = parse_bwlimit(options.bwlimit.as_deref())?;
            let limit = options.bwlimit.as_deref().unwrap_or_default();
            let fingerprint = request_fingerprint(&["sync", id, limit]);
            if let Some(key) = &idem {
                if let Some(job) = self.job_by_idempotency_key(user, key, &fingerprint).await? {
                    return Ok(job);
                }
            }
            let source_id = row.source_container_id.clone();
            let c = self.container_detail(user, row, &vis).await?;
            let Some(source_id) = source_id else {
                return Err(ApiError::new(
                    ErrorCode::Conflict,
                    "this container was not created by copy, so it has no source to sync from",
                ));
            };
            let source_status = self
                .db
                .container_status(&source_id)
                .await
                .map_err(internal)?;
            match source_status {
                None => {
                    return Err(ApiError::new(
                        ErrorCode::Conflict,
                        "the source of this copy was deleted: there is nothing to sync from",
                    ))
                }
                Some(ContainerStatus::Deleting) => {
                    return Err(ApiError::new(
                        ErrorCode::Conflict,
                        "the source of this copy is being deleted",
                    ))
                }
                Some(ContainerStatus::Copying | ContainerStatus::Failed) => {
                    return Err(ApiError::new(
                        ErrorCode::Conflict,
                        "the source has no complete tree to sync from",
                    ))
                }
                _ => {}
            }
            let conflict = |m: String| ApiError::new(ErrorCode::Conflict, m);
            // The status to come back to after the sync.
            let previous = match c.summary.status {
                s @ (ContainerStatus::Copying | ContainerStatus::Deleting) => {
                    return Err(conflict(format!(
                        "the container is {}; it can be synced once that is done",
                        s.as_str()
                    )))
                }
                // A copy that never completed has no tree: a sync cannot repair that.
                ContainerStatus::Failed if c.source_state.is_none() => {
                    return Err(conflict(
                        "the copy never completed: make a new copy (and delete this one)".into(),
                    ))
                }
                // Still "syncing" after a crash, or failed: a completed sync leaves it running.
                ContainerStatus::Syncing | ContainerStatus::Failed => ContainerStatus::Running,
                s => s,
            };
            let params = JobParams {
                source_snapshot_id: None,
                previous_status: Some(previous),
                bwlimit,
            };
            let on = (c.summary.project_id.as_str(), id, source_id.as_str());
            let job = new_job(JobKind::Sync, user, on, &params, (idem, fingerprint))?;
            self.queue_and_run(job).await
        })
        .await
    }
}
