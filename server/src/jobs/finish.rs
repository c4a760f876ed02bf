//! How a job ends: the job's status and error, and its container's status and reason, from
//! the engine's result; written in one commit, then announced.

use app::model::{ContainerStatus, EventKind, JobKind, JobStatus, JobSummary};

use super::{JobParams, JobRunner};
use crate::engine::{self, EngineError};
use crate::ids::now_ms;
use crate::store::{execute, job_from_row, query_first, DbError, SyncConn};

impl JobRunner {
    /// Records how a job ended, the job and its container in one commit, and says so.
    pub(super) async fn finish(
        &self,
        job_id: &str,
        kind: JobKind,
        target_id: &str,
        params: &JobParams,
        result: Result<engine::Summary, EngineError>,
        last_progress: Option<String>,
    ) -> Result<(), DbError> {
        let previous = params
            .previous_status
            .as_deref()
            .and_then(ContainerStatus::parse)
            .unwrap_or(ContainerStatus::Running);
        let (status, error) = match &result {
            Ok(_) => (JobStatus::Succeeded, None),
            Err(EngineError::Cancelled) => (JobStatus::Cancelled, Some("cancelled".to_string())),
            Err(e) => {
                tracing::warn!(job = %job_id, error = %e, "job failed");
                (JobStatus::Failed, Some(e.to_string()))
            }
        };
        // A finished copy starts automatically and a sync returns its target to its status.
        // A copy that did not finish leaves no tree: the container is failed. A sync that
        // did not finish left the copy as it was: its status comes back.
        let (container_status, reason) = match (&error, kind) {
            (None, JobKind::Copy) => (ContainerStatus::Running, None),
            (None, JobKind::Sync) => (previous, None),
            (Some(m), JobKind::Copy) => (
                ContainerStatus::Failed,
                Some(format!("copy {}: {m}", status.as_str())),
            ),
            (Some(m), JobKind::Sync) => (
                previous,
                Some(format!("last sync {}: {m}", status.as_str())),
            ),
        };
        let summary = result.ok().map(summary_of);
        let (job_id, target_id) = (job_id.to_string(), target_id.to_string());
        let summary_json = summary
            .as_ref()
            .map(|s| serde_json::to_string(s).unwrap_or_default());
        let job = self
            .db
            .transact(move |c| {
                let now = now_ms();
                let job = query_first(
                    c,
                    "UPDATE jobs SET status = $1, phase = NULL, summary = $2, error = $3,
                        finished_at = $4, progress = COALESCE($5, progress)
                     WHERE id = $6 RETURNING *",
                    &[
                        &status.as_str(),
                        &summary_json,
                        &error,
                        &now,
                        &last_progress,
                        &job_id,
                    ],
                    |row| job_from_row(row),
                )?
                .ok_or(rusqlite::Error::QueryReturnedNoRows)?;
                set_container_status(c, &target_id, container_status, reason.as_deref(), now)?;
                // What the tree now is, for the next sync and the sync status page.
                if let Some(summary) = &summary {
                    execute(
                        c,
                        "UPDATE containers SET source_state = $1, last_synced_at = $2,
                            file_count = $3, size_bytes = $4
                         WHERE id = $5",
                        &[
                            &summary.root_hash,
                            &now,
                            &(summary.tree_files as i64),
                            &(summary.tree_bytes as i64),
                            &target_id,
                        ],
                    )?;
                }
                Ok::<_, rusqlite::Error>(job)
            })
            .await?;
        self.hub.publish(EventKind::Status, job);
        Ok(())
    }
}

/// The engine's account of a run, as the API shows it. Every field is named, so a field
/// added to the engine's summary does not compile until it is placed here.
fn summary_of(s: engine::Summary) -> JobSummary {
    let engine::Summary {
        files_added,
        files_changed,
        files_deleted,
        files_unchanged,
        metadata_only,
        tree_files,
        tree_bytes,
        bytes_sent,
        content_bytes,
        reused_bytes,
        delta_files,
        drift,
        drift_paths,
        skipped_special,
        unstable,
        duration_ms,
        root_hash,
        recovered,
        phase_ms,
    } = s;
    JobSummary {
        files_added,
        files_changed,
        files_deleted,
        files_unchanged,
        metadata_only,
        tree_files,
        tree_bytes,
        bytes_sent,
        content_bytes,
        reused_bytes,
        delta_files,
        drift,
        drift_paths,
        skipped_special,
        unstable,
        duration_ms,
        root_hash,
        recovered,
        phase_ms,
    }
}

/// A container's status and why, in the caller's transaction.
pub(super) fn set_container_status(
    c: &SyncConn,
    id: &str,
    status: ContainerStatus,
    reason: Option<&str>,
    now: i64,
) -> rusqlite::Result<()> {
    execute(
        c,
        "UPDATE containers SET status = $1, status_reason = $2, updated_at = $3 WHERE id = $4",
        &[&status.as_str(), &reason, &now, &id],
    )
    .map(drop)
}
