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

use super::{check_param_id, internal, Service};
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
    running: Mutex<HashMap<String, Arc<OnceCell<Probed>>>>,
}

/// What a probe of a source found: its state, or why it could not be read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Probed {
    State(String),
    /// Its tree is not there.
    Missing,
    /// Its tree is there but could not be read (the error).
    Unreadable(String),
}

impl SharedProbes {
    /// The state of source `id` from `probe` (run on a blocking thread), or from the walk
    /// of it already under way.
    pub async fn get(&self, id: &str, probe: impl FnOnce() -> Probed + Send + 'static) -> Probed {
        let walk = {
            let mut running = self.running.lock();
            running.retain(|_, walk| !walk.initialized());
            running.entry(id.to_string()).or_default().clone()
        };
        walk.get_or_init(|| async move {
            tokio::task::spawn_blocking(probe)
                .await
                .unwrap_or_else(|_| Probed::Unreadable("its check stopped unexpectedly".into()))
        })
        .await
        .clone()
    }
}

/// A local source's state ([`crate::engine::probe`]): missing only where its tree is.
fn probe_local(place: &crate::engine::Place) -> Probed {
    match crate::engine::probe(place) {
        Ok(state) => Probed::State(state),
        Err(_) if !place.root.exists() => Probed::Missing,
        Err(e) => Probed::Unreadable(e.to_string()),
    }
}

impl Service {
    pub async fn sync_status(
        &self,
        user: &UserInfo,
        project_id: Option<&str>,
    ) -> Result<Vec<CopyStatus>, ApiError> {
        let vis = self.visibility(user).await?;
        if let Some(pid) = project_id {
            check_param_id("project_id", pid)?;
            if !vis.can_see(pid) {
                return Err(ApiError::not_found("project", pid).on_field("project_id"));
            }
        }
        // The copies shown: of the project asked for, of the projects the caller sees.
        let narrowed = vis.narrowed(user);
        let rows: Vec<ContainerRow> = self
            .db
            .copies(project_id, narrowed.as_deref())
            .await
            .map_err(internal)?
            .into_iter()
            // (A deleted project's, which the rule of who sees what leaves out.)
            .filter(|r| vis.can_see(&r.project_id))
            .collect();
        if rows.is_empty() {
            return Ok(Vec::new());
        }

        // The newest jobs of each copy shown, newest first (of every copy when all are).
        let shown: Option<Vec<String>> = (narrowed.is_some() || project_id.is_some())
            .then(|| rows.iter().map(|r| r.id.clone()).collect());
        let recent = self
            .db
            .recent_jobs_of_copies((HISTORY + 8) as i64, shown.as_deref())
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
        let states: HashMap<String, Probed> = futures::stream::iter(wanted)
            .map(|(id, (server, root))| async move {
                let state = if self.agents.is_agent(&server) {
                    // (Its server not answering says nothing of whether the source is there.)
                    match self.agents.probe(&server, &id).await {
                        Ok(state) => Probed::State(state),
                        Err(e) => Probed::Unreadable(e.to_string()),
                    }
                } else if self.jobs.is_converting(&id) {
                    // (Its tree is swapped for an image tree: not looked at meanwhile.)
                    Probed::Unreadable(
                        "its tree is being made an image tree (a convert job); it is checked \
                         again once that job ends"
                            .into(),
                    )
                } else {
                    let place = container_place(Path::new(&root), &id);
                    self.probes.get(&id, move || probe_local(&place)).await
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
                // (A source deleted since has no storage root: not probed, missing.)
                let probed = row
                    .source_container_id
                    .as_ref()
                    .and_then(|id| states.get(id).cloned())
                    .unwrap_or(Probed::Missing);
                // A copy that never completed (failed or cancelled; not one under way) has
                // no tree a sync could bring up to date.
                let first_copy = row.last_synced_at.is_none();
                let copying = ContainerStatus::parse(&row.status) == Some(ContainerStatus::Copying);
                let (freshness, source_error) = match probed {
                    Probed::Missing => (Freshness::SourceMissing, None),
                    _ if first_copy && copying => (Freshness::Copying, None),
                    _ if first_copy => (Freshness::Incomplete, None),
                    Probed::State(now) if row.source_state.as_deref() == Some(now.as_str()) => {
                        (Freshness::Current, None)
                    }
                    Probed::State(_) => (Freshness::Stale, None),
                    // Not known to match it: stale, saying why it could not be checked.
                    Probed::Unreadable(e) => (Freshness::Stale, Some(e)),
                };
                let mut status =
                    copy_status(row.summary(&vis), row, (freshness, source_error), jobs);
                if freshness == Freshness::Incomplete && status.last_error.is_none() {
                    // (A cancelled copy is no failure in a row, but it is why.)
                    status.last_error = row.status_reason.clone();
                }
                status.may_sync = !matches!(freshness, Freshness::Incomplete | Freshness::Copying)
                    && vis.require_operator(&row.project_id, "").is_ok()
                    && row
                        .src_project_id
                        .as_ref()
                        .is_some_and(|p| vis.require_source_operator(p, "").is_ok());
                status
            })
            .collect())
    }
}

/// Assembles one copy's status from its jobs, newest first.
fn copy_status(
    copy: ContainerSummary,
    row: &ContainerRow,
    (freshness, source_error): (Freshness, Option<String>),
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
        source_error,
        may_sync: false,
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
                Probed::State(format!("state {n}"))
            }
        };
        let (a, b, c) = tokio::join!(
            shared.get("src", walk()),
            shared.get("src", walk()),
            shared.get("src", walk()),
        );
        assert_eq!(walks.load(Ordering::SeqCst), 1, "one walk for three loads");
        let one = Probed::State("state 1".into());
        assert_eq!((a, b, c), (one.clone(), one.clone(), one));
        let other = shared.get("other", walk()).await;
        assert_eq!(
            other,
            Probed::State("state 2".into()),
            "each source its own walk"
        );
        let later = shared.get("src", walk()).await;
        assert_eq!(
            later,
            Probed::State("state 3".into()),
            "a finished walk is not reused"
        );
    }
}
