//! Deleting a container: a job that stops it and removes its tree, state, snapshots and
//! runtime bundle. Its copies stay; their syncs answer 409 (the source was deleted).

use app::model::*;

use super::jobs::{check_idempotency_key, new_job, request_fingerprint};
use super::Service;
use crate::jobs::JobParams;

impl Service {
    /// `DELETE /containers/{id}`: operators and admins of its project; not while another
    /// job writes or reads it as its target (409 naming that job).
    pub async fn delete_container(
        &self,
        user: &UserInfo,
        id: &str,
        idempotency_key: Option<&str>,
    ) -> Result<Job, ApiError> {
        let project = self.project_of(id).await;
        let target = id.to_string();
        self.audited(user, "container.delete", &target, project, async {
            let idem = check_idempotency_key(idempotency_key)?;
            // Rights are checked on every request, replays included (as for a sync). A replay
            // after the container is gone finds it no more: 404, the delete is done.
            let (row, vis) = self.visible_container(user, id).await?;
            vis.require_operator(&row.project_id, "deleting a container")?;
            let fingerprint = request_fingerprint(&["delete", id]);
            if let Some(key) = &idem {
                if let Some(job) = self.job_by_idempotency_key(user, key, &fingerprint).await? {
                    return Ok(job);
                }
            }
            let status = ContainerStatus::parse(&row.status).unwrap_or(ContainerStatus::Stopped);
            let params = JobParams {
                source_snapshot_id: None,
                previous_status: Some(status),
                bwlimit: None,
            };
            // (A delete reads nothing else: its "source" is the container itself.)
            let on = (row.project_id.as_str(), id, id);
            let job = new_job(JobKind::Delete, user, on, &params, (idem, fingerprint))?;
            self.queue_and_run(job).await
        })
        .await
    }
}
