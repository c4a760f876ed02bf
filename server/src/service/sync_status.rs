//! The sync status of every copy a user can see: is it current with its source, how did
//! its recent syncs go, is one running. Read side of the service, for the team lead's page
//! (and `GET /api/v1/sync-status`).

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use parking_lot::Mutex;

use app::model::*;
use futures::StreamExt;
use tokio::sync::OnceCell;

use super::{internal, Service};
use crate::config::container_place;
use crate::store::ContainerRow;

/// Runs per copy kept for the history chart.
const HISTORY: usize = 12;
/// Sources walked at once for one page.
const PROBES_AT_ONCE: usize = 4;

/// Walks of sources under way (each a probe: a metadata-only walk of a source's tree).
/// Sync status loads that come while a source is being walked (several team leads, the
/// page reloading as jobs start and end) wait for that walk instead of starting another:
/// one walk per source at a time, however many loads. A finished walk is not reused: the
/// next load sees changes made since.
#[derive(Default)]
pub struct SharedProbes {
    running: Mutex<HashMap<String, Arc<OnceCell<Option<String>>>>>,
}

impl SharedProbes {
    /// The state of source `id` from `probe` (run on a blocking thread), or from the walk
    /// of it already under way. `None` when it cannot be read (missing).
    pub async fn get(
        &self,
        id: &str,
        probe: impl FnOnce() -> Option<String> + Send + 'static,
    ) -> Option<String> {
        let walk = {
            let mut running = self.running.lock();
            running.retain(|_, walk| !walk.initialized());
            running.entry(id.to_string()).or_default().clone()
        };
        walk.get_or_init(|| async move { tokio::task::spawn_blocking(probe).await.ok().flatten() })
            .await
            .clone()
    }
}

impl Service {
    pub async fn sync_status(&self, user: &UserInfo) -> Result<Vec<CopyStatus>, ApiError> {
        let vis = self.visibility(user).await?;
        let rows = self.db.copies().await.map_err(internal)?;
        let rows: Vec<ContainerRow> = rows
            .into_iter()
            .filter(|r| vis.can_see(&r.project_id))
            .collect();
        if rows.is_empty() {
            return Ok(Vec::new());
        }

        // The newest jobs of every copy, newest first.
        let recent = self
            .db
            .recent_jobs_of_copies((HISTORY + 8) as i64)
            .await
            .map_err(internal)?;
        let mut jobs: HashMap<String, Vec<Job>> = HashMap::new();
        for job in recent {
            jobs.entry(job.container_id.clone()).or_default().push(job);
        }

        // Where each source lives, to ask whether it changed since.
        let sources = self.db.storage_roots_of_sources().await.map_err(internal)?;
        let wanted: Vec<(String, (String, String))> = rows
            .iter()
            .filter_map(|r| r.source_container_id.clone())
            .filter_map(|id| sources.get(&id).map(|at| (id, at.clone())))
            .collect::<HashMap<_, _>>()
            .into_iter()
            .collect();
        // Metadata-only scans with each source's quick-check cache: no content is read. A
        // source on another host is scanned there.
        let states: HashMap<String, Option<String>> = futures::stream::iter(wanted)
            .map(|(id, (server, root))| async move {
                let state = if self.agents.is_agent(&server) {
                    self.agents.probe(&server, &id).await.ok()
                } else {
                    let place = container_place(Path::new(&root), &id);
                    self.probes
                        .get(&id, move || crate::engine::probe(&place).ok())
                        .await
                };
                (id, state)
            })
            .buffer_unordered(PROBES_AT_ONCE)
            .collect()
            .await;

        Ok(rows
            .iter()
            .map(|row| {
                let jobs = jobs.remove(&row.id).unwrap_or_default();
                let source_state = row
                    .source_container_id
                    .as_ref()
                    .and_then(|id| states.get(id).cloned().flatten());
                let freshness = match source_state {
                    None => Freshness::SourceMissing,
                    Some(now) if row.source_state.as_deref() == Some(now.as_str()) => {
                        Freshness::Current
                    }
                    Some(_) => Freshness::Stale,
                };
                copy_status(row.summary(&vis), row, freshness, jobs)
            })
            .collect())
    }
}

/// Assembles one copy's status from its jobs, newest first.
fn copy_status(
    copy: ContainerSummary,
    row: &ContainerRow,
    freshness: Freshness,
    jobs: Vec<Job>,
) -> CopyStatus {
    let running_job = jobs.iter().find(|j| !j.status.is_final()).cloned();
    let finished: Vec<SyncRun> = jobs
        .iter()
        .filter(|j| j.status.is_final())
        .map(sync_run)
        .collect();
    // Failures since the last success; a cancelled run neither breaks nor extends a streak.
    let failures: Vec<&SyncRun> = finished
        .iter()
        .filter(|r| r.status != JobStatus::Cancelled)
        .take_while(|r| r.status == JobStatus::Failed)
        .collect();
    CopyStatus {
        copy,
        freshness,
        last_synced_at: row.last_synced_at,
        last_run: finished.first().cloned(),
        running_job,
        failures_in_row: failures.len() as u32,
        last_error: failures.first().and_then(|r| r.error.clone()),
        history: finished.iter().take(HISTORY).rev().cloned().collect(),
        size_bytes: row.size_bytes,
    }
}

fn sync_run(j: &Job) -> SyncRun {
    SyncRun {
        job_id: j.id.clone(),
        kind: j.kind,
        status: j.status,
        finished_at: j.finished_at.unwrap_or(j.created_at),
        duration_ms: match (j.started_at, j.finished_at) {
            (Some(a), Some(b)) if b >= a => Some((b - a) as u64),
            _ => None,
        },
        bytes_sent: j.summary.as_ref().map(|s| s.bytes_sent),
        tree_bytes: j.summary.as_ref().map(|s| s.tree_bytes),
        error: j.error.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn loads_during_a_walk_share_it_and_a_later_load_walks_again() {
        let shared = SharedProbes::default();
        let walks = Arc::new(AtomicUsize::new(0));
        let walk = || {
            let walks = walks.clone();
            move || {
                let n = walks.fetch_add(1, Ordering::SeqCst) + 1;
                std::thread::sleep(std::time::Duration::from_millis(100));
                Some(format!("state {n}"))
            }
        };
        let (a, b, c) = tokio::join!(
            shared.get("src", walk()),
            shared.get("src", walk()),
            shared.get("src", walk()),
        );
        assert_eq!(walks.load(Ordering::SeqCst), 1, "one walk for three loads");
        assert_eq!(
            (a.as_deref(), b, c),
            (Some("state 1"), a.clone(), a.clone())
        );
        let other = shared.get("other", walk()).await;
        assert_eq!(
            other.as_deref(),
            Some("state 2"),
            "each source its own walk"
        );
        let later = shared.get("src", walk()).await;
        assert_eq!(
            later.as_deref(),
            Some("state 3"),
            "a finished walk is not reused"
        );
    }
}
