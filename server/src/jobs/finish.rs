//! How a job ends: the job's status and error, and its container's status and reason, from
//! the engine's result; written in one commit, then announced.

use app::model::{ContainerStatus, EventKind, JobKind, JobProgress, JobStatus};

use super::{JobParams, JobRunner};
use crate::engine::{self, EngineError};
use crate::lifecycle::Outcome;
use crate::store::{DbError, JobEnd};

/// How a job's work ended.
pub(super) struct Ended {
    pub(super) result: Result<engine::Summary, EngineError>,
    /// The last progress reported, kept on the finished job.
    pub(super) last_progress: Option<JobProgress>,
    /// A sync of a running copy: how starting it again after the final pass went.
    pub(super) restarted: Option<Outcome>,
}

impl Ended {
    /// Ended before any work (cancelled while queued, a delete's own path).
    pub(super) fn with(result: Result<engine::Summary, EngineError>) -> Ended {
        Ended {
            result,
            last_progress: None,
            restarted: None,
        }
    }
}

impl JobRunner {
    /// Records how a job ended, the job and its container in one commit, and says so.
    pub(super) async fn finish(
        &self,
        job_id: &str,
        kind: JobKind,
        target_id: &str,
        params: &JobParams,
        ended: Ended,
    ) -> Result<(), DbError> {
        let Ended {
            result,
            last_progress,
            restarted,
        } = ended;
        let previous = params.previous_status.unwrap_or(ContainerStatus::Running);
        let (status, error) = match &result {
            Ok(_) => (JobStatus::Succeeded, None),
            Err(EngineError::Cancelled) => (JobStatus::Cancelled, Some("cancelled".to_string())),
            Err(e) => {
                tracing::warn!(job = %job_id, error = %e, "job failed");
                (JobStatus::Failed, Some(e.to_string()))
            }
        };
        // A finished copy starts automatically (before the job ends, so whoever sees the job
        // done sees the copy running, or stopped with the reason it is not), and so does a
        // synced one. A copy that did not finish leaves no tree: the container is failed. A
        // sync that did not finish left the copy as it was: its status comes back.
        let mut result = result;
        let incomplete = matches!(result, Err(EngineError::Incomplete(_)));
        // (One rule with the `start` phase the runner announced: `starts_after`.)
        let starts = error.is_none() && starts_after(kind, params, restarted.is_some());
        // A delete that failed while the process still runs (it could not be stopped): the
        // container is running, saying why, not `failed`.
        let still_runs = kind == JobKind::Delete
            && error.is_some()
            && !matches!(result, Err(EngineError::Cancelled))
            && self.lifecycle.has_process(target_id).await == Ok(true);
        let (container_status, reason) = match (&error, kind, restarted) {
            // Recorded by their requests, never run here.
            (_, JobKind::Start | JobKind::Stop | JobKind::Restart, _) => (previous, None),
            // (Not written: a conversion leaves the container's row as it was.)
            (_, JobKind::Convert, _) => (previous, None),
            // Deleted: the row stays for its jobs (marked deleted in the same commit).
            (None, JobKind::Delete, _) => (ContainerStatus::Deleting, None),
            // Cancelled before it began: nothing was touched.
            (Some(_), JobKind::Delete, _) if matches!(result, Err(EngineError::Cancelled)) => {
                (previous, Some("delete cancelled".into()))
            }
            (Some(m), JobKind::Delete, _) if still_runs => (
                ContainerStatus::Running,
                Some(format!("{}; delete it again", outcome("delete", status, m))),
            ),
            // Part of it may be gone: not usable, and a delete again finishes it.
            (Some(m), JobKind::Delete, _) => (
                ContainerStatus::Failed,
                Some(format!("{}; delete it again", outcome("delete", status, m))),
            ),
            // A finished copy starts automatically, and so does a synced copy that was
            // stopped before: as the contract says, the target is running once its job is
            // done (one that cannot run stays stopped, saying why).
            _ if starts => {
                let during = match kind {
                    JobKind::Copy => ContainerStatus::Copying,
                    _ => ContainerStatus::Syncing,
                };
                self.start_after(target_id, during, &mut result).await?
            }
            // A running copy stopped for the final pass: as its start again went.
            (_, JobKind::Sync, Some(o)) if !incomplete => {
                let reason = match (&error, o.reason) {
                    (Some(m), Some(r)) => Some(format!("{}; {r}", outcome("last sync", status, m))),
                    (Some(m), None) => Some(outcome("last sync", status, m)),
                    (None, r) => r,
                };
                (o.status, reason)
            }
            // (A finished copy always starts: `starts` above.)
            (None, JobKind::Sync | JobKind::Copy, _) => (previous, None),
            (Some(m), JobKind::Copy, _) => {
                (ContainerStatus::Failed, Some(outcome("copy", status, m)))
            }
            // Stopped half way through applying its changes: not as it was, not current.
            (Some(m), JobKind::Sync, _) if incomplete => (
                ContainerStatus::Failed,
                Some(outcome("last sync", status, m)),
            ),
            (Some(m), JobKind::Sync, _) => (previous, Some(outcome("last sync", status, m))),
        };
        let deleted = kind == JobKind::Delete && error.is_none();
        let job = self
            .db
            .finish_job(JobEnd {
                job_id: job_id.to_string(),
                status,
                error,
                summary: result.ok(),
                last_progress,
                target_id: target_id.to_string(),
                container_status,
                container_reason: reason,
                // The same tree, laid down otherwise: its status, reason and recorded
                // state are what they were.
                container_changed: kind != JobKind::Convert,
                deleted,
            })
            .await?;
        self.hub.publish(EventKind::Status, job);
        Ok(())
    }

    /// Starts a job's container (`during`: its status while the job ran); its status and
    /// the reason after, and the start's notes added to the job's summary.
    async fn start_after(
        &self,
        target_id: &str,
        during: ContainerStatus,
        result: &mut Result<engine::Summary, EngineError>,
    ) -> Result<(ContainerStatus, Option<String>), DbError> {
        let started = self.lifecycle.start(target_id, &[during]).await?;
        if let Ok(summary) = result {
            summary.notes.extend(started.notes);
        }
        Ok((started.status, started.reason))
    }
}

/// Whether a job that succeeded starts its container before it ends (see
/// `JobRunner::finish`): a copy, and a sync of a stopped copy (`restarted`: a running one
/// was started again by its final pass already).
pub(super) fn starts_after(kind: JobKind, params: &JobParams, restarted: bool) -> bool {
    match kind {
        JobKind::Copy => true,
        JobKind::Sync => !restarted && params.previous_status == Some(ContainerStatus::Stopped),
        _ => false,
    }
}

/// "copy failed: <error>", or "copy cancelled" (not "copy cancelled: cancelled").
fn outcome(what: &str, status: JobStatus, error: &str) -> String {
    match error == status.as_str() {
        true => format!("{what} {error}"),
        false => format!("{what} {}: {error}", status.as_str()),
    }
}
