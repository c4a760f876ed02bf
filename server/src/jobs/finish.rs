//! How a job ends: the job's status and error, and its container's status and reason, from
//! the engine's result; written in one commit, then announced.

use app::model::{ContainerStatus, EventKind, JobKind, JobProgress, JobStatus, JobSummary};

use super::{JobParams, JobRunner};
use crate::engine::{self, EngineError};
use crate::store::{DbError, JobEnd};

impl JobRunner {
    /// Records how a job ended, the job and its container in one commit, and says so.
    pub(super) async fn finish(
        &self,
        job_id: &str,
        kind: JobKind,
        target_id: &str,
        params: &JobParams,
        result: Result<engine::Summary, EngineError>,
        last_progress: Option<JobProgress>,
    ) -> Result<(), DbError> {
        let previous = params.previous_status.unwrap_or(ContainerStatus::Running);
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
        let job = self
            .db
            .finish_job(JobEnd {
                job_id: job_id.to_string(),
                status,
                error,
                summary: result.ok().map(summary_of),
                last_progress,
                target_id: target_id.to_string(),
                container_status,
                container_reason: reason,
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
