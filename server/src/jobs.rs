//! The job runner: runs queued copy and sync jobs with bounded concurrency (globally and per
//! target server), streams their progress to the event hub, keeps the database truthful,
//! and after a restart resumes whatever was queued or running.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use app::model::{ContainerStatus, Job, JobKind, JobProgress, JobStatus};
use sqlx::Row;
use tokio::sync::Semaphore;

use crate::config::{container_place, snapshot_place};
use crate::db::{execute, query_first, Db, DbError, SyncConn};
use crate::engine::{self, Control, EngineError, Place, Progress};
use crate::events::EventHub;
use crate::ids::now_ms;
use crate::service::job_from_row;

/// What a job needs beyond its row, as accepted (the `params` column).
#[derive(Clone, Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct JobParams {
    /// Copy from this snapshot of the source instead of its live state.
    pub source_snapshot_id: Option<String>,
    /// Sync: the target's status before the sync, restored after it.
    pub previous_status: Option<String>,
}

/// What the runner needs to start a job: the rows it acts on and where their trees are.
pub struct JobStart {
    pub kind: JobKind,
    pub params: JobParams,
    pub target_id: String,
    pub source_id: String,
    pub target_server: String,
    pub target_root: PathBuf,
    pub source_root: PathBuf,
}

#[derive(Clone, Copy, Debug)]
pub struct Limits {
    pub global: usize,
    pub per_server: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            global: 2,
            per_server: 1,
        }
    }
}

pub struct JobRunner {
    db: Db,
    pub hub: Arc<EventHub>,
    global: Arc<Semaphore>,
    per_server_limit: usize,
    per_server: Mutex<HashMap<String, Arc<Semaphore>>>,
    /// Controls of queued and running jobs, to cancel them.
    active: Mutex<HashMap<String, Control>>,
}

/// At most this many progress events per second per job (the final state always goes).
const EVENT_INTERVAL: Duration = Duration::from_millis(100);
/// How often running progress is written to the database.
const DB_INTERVAL: Duration = Duration::from_secs(1);

impl JobRunner {
    pub fn new(db: Db, limits: Limits) -> Arc<JobRunner> {
        Arc::new(JobRunner {
            db,
            hub: Arc::new(EventHub::new()),
            global: Arc::new(Semaphore::new(limits.global.max(1))),
            per_server_limit: limits.per_server.max(1),
            per_server: Mutex::new(HashMap::new()),
            active: Mutex::new(HashMap::new()),
        })
    }

    fn server_slot(&self, server_id: &str) -> Arc<Semaphore> {
        let mut map = self.per_server.lock().unwrap_or_else(|e| e.into_inner());
        map.entry(server_id.to_string())
            .or_insert_with(|| Arc::new(Semaphore::new(self.per_server_limit)))
            .clone()
    }

    /// Starts running a queued job in the background. `start`: what the job needs, when
    /// the caller has it at hand (it is read from the database otherwise).
    pub fn spawn(self: &Arc<Self>, job_id: String, start: Option<JobStart>) {
        let ctl = Control::new();
        self.active
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(job_id.clone(), ctl.clone());
        let runner = self.clone();
        tokio::spawn(async move {
            if let Err(e) = runner.run(&job_id, start, ctl).await {
                tracing::error!(job = %job_id, error = %e, "job bookkeeping failed");
            }
            runner
                .active
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&job_id);
        });
    }

    /// Asks a queued or running job to stop. `false` if it is not active here.
    pub fn cancel(&self, job_id: &str) -> bool {
        match self
            .active
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(job_id)
        {
            Some(ctl) => {
                ctl.cancel();
                true
            }
            None => false,
        }
    }

    /// After a start: jobs that were queued or running when doppel stopped run again. The
    /// engine repairs or rolls back whatever an interruption left on disk.
    pub async fn recover(self: &Arc<Self>) -> Result<usize, sqlx::Error> {
        let ids: Vec<String> = sqlx::query_scalar(
            "SELECT id FROM jobs WHERE status IN ('queued', 'running') ORDER BY created_at",
        )
        .fetch_all(&self.db.read)
        .await?;
        for id in &ids {
            sqlx::query("UPDATE jobs SET status = 'queued', phase = NULL WHERE id = $1")
                .bind(id)
                .execute(&self.db.write)
                .await?;
            tracing::info!(job = %id, "resuming a job interrupted by a restart");
            self.spawn(id.clone(), None);
        }
        Ok(ids.len())
    }

    pub async fn load(&self, job_id: &str) -> Result<Job, sqlx::Error> {
        let row = sqlx::query("SELECT * FROM jobs WHERE id = $1")
            .bind(job_id)
            .fetch_one(&self.db.read)
            .await?;
        Ok(job_from_row(&row))
    }

    /// What a job needs to start, from the database (after a restart, or for a sync).
    async fn load_start(&self, job_id: &str) -> Result<JobStart, sqlx::Error> {
        let row = sqlx::query(
            "SELECT j.kind, j.params, j.container_id, j.source_container_id,
                    t.server_id AS target_server, ts.storage_root AS target_root,
                    ss.storage_root AS source_root
             FROM jobs j
             JOIN containers t ON t.id = j.container_id
             JOIN servers ts ON ts.id = t.server_id
             JOIN containers s ON s.id = j.source_container_id
             JOIN servers ss ON ss.id = s.server_id
             WHERE j.id = $1",
        )
        .bind(job_id)
        .fetch_one(&self.db.read)
        .await?;
        Ok(JobStart {
            kind: JobKind::parse(row.get("kind")).unwrap_or(JobKind::Copy),
            params: serde_json::from_str(row.get("params")).unwrap_or_default(),
            target_id: row.get("container_id"),
            source_id: row.get("source_container_id"),
            target_server: row.get("target_server"),
            target_root: PathBuf::from(row.get::<String, _>("target_root")),
            source_root: PathBuf::from(row.get::<String, _>("source_root")),
        })
    }

    async fn run(
        self: &Arc<Self>,
        job_id: &str,
        start: Option<JobStart>,
        ctl: Control,
    ) -> Result<(), DbError> {
        let start = match start {
            Some(start) => start,
            None => self.load_start(job_id).await?,
        };
        let JobStart {
            kind,
            params,
            target_id,
            source_id,
            target_server,
            target_root,
            source_root,
        } = start;

        // Wait for a slot on the target server, then globally: a job waiting for a busy
        // server holds no global slot, so jobs for other servers are not held up behind it.
        let _server = self.server_slot(&target_server).acquire_owned().await;
        let _global = self.global.clone().acquire_owned().await;
        // Running now, unless it was cancelled while it waited; a sync's target shows
        // `syncing` from the same commit on.
        let (id, is_sync) = (job_id.to_string(), kind == JobKind::Sync);
        let target = target_id.clone();
        let running = self
            .db
            .transact(move |c| {
                let now = now_ms();
                let running = query_first(
                    c,
                    "UPDATE jobs SET status = 'running', started_at = COALESCE(started_at, $1),
                        phase = 'scan'
                     WHERE id = $2 AND status IN ('queued', 'running') RETURNING *",
                    &[&now, &id],
                    |row| job_from_row(row),
                )?;
                if running.is_some() && is_sync {
                    set_container_status(c, &target, ContainerStatus::Syncing, None, now)?;
                }
                Ok::<_, rusqlite::Error>(running)
            })
            .await?;
        let Some(running) = running else {
            return self
                .finish(
                    job_id,
                    kind,
                    &target_id,
                    &params,
                    Err(EngineError::Cancelled),
                    None,
                )
                .await;
        };
        self.hub.publish("status", running.clone());

        let src = match &params.source_snapshot_id {
            Some(snap) => snapshot_place(&source_root, &source_id, snap),
            None => container_place(&source_root, &source_id),
        };
        let dst = container_place(&target_root, &target_id);
        // A copy takes content its target server already holds from there: the most recently
        // updated settled containers on that server (other than the source) are offered to
        // the engine.
        let local: Vec<Place> = if kind == JobKind::Copy {
            sqlx::query_scalar::<_, String>(
                "SELECT id FROM containers
                 WHERE server_id = $1 AND id <> $2 AND id <> $3
                   AND status IN ('running', 'stopped')
                 ORDER BY updated_at DESC LIMIT 8",
            )
            .bind(&target_server)
            .bind(&target_id)
            // Reading the source there would be no cheaper than reading it here.
            .bind(&source_id)
            .fetch_all(&self.db.read)
            .await?
            .iter()
            .map(|id| container_place(&target_root, id))
            .collect()
        } else {
            Vec::new()
        };
        // Longest first, so that a tree inside a storage root is named as the tree.
        let mut names: Vec<(String, &str)> = vec![
            (src.root.display().to_string(), "the source tree"),
            (dst.root.display().to_string(), "the target tree"),
            (src.state_dir.display().to_string(), "the source's state"),
            (dst.state_dir.display().to_string(), "the target's state"),
            (source_root.display().to_string(), "the source server"),
            (target_root.display().to_string(), "the target server"),
        ];
        names.sort_by_key(|(path, _)| std::cmp::Reverse(path.len()));
        let reporter = Arc::new(ProgressReporter::new(self.clone(), running));
        let r2 = reporter.clone();
        let ctl = ctl.with_progress(move |p| r2.report(p));
        let result = run_in_background(move || match kind {
            // The target is this job's new container: if a run before a restart already
            // finished its tree, it is brought up to date rather than refused.
            JobKind::Copy => engine::resume_copy(&src, &dst, &local, &ctl),
            JobKind::Sync => engine::sync(&src, &dst, &ctl),
        })
        .await
        .map_err(|e| without_paths(e, &names));
        let last_progress = reporter.flush().await;
        self.finish(job_id, kind, &target_id, &params, result, last_progress)
            .await
    }

    /// Records how a job ended, the job and its container in one commit, and says so.
    async fn finish(
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
        let summary = result.ok();
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
        self.hub.publish("status", job);
        Ok(())
    }
}

/// Runs a job's engine work on a thread of its own at the lowest CPU priority
/// (`SCHED_IDLE`): a copy may use the machine fully, but requests and event streams come
/// first, so the API stays responsive while copies run. (At nice 10, `make load` showed a
/// copy's thread, busy in the kernel creating files, holding a third of both cores while
/// 500 event streams waited.)
async fn run_in_background(
    work: impl FnOnce() -> Result<engine::Summary, EngineError> + Send + 'static,
) -> Result<engine::Summary, EngineError> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    let spawned = std::thread::Builder::new()
        .name("doppel-job".into())
        .spawn(move || {
            // SAFETY: a plain syscall; on Linux, pid 0 is the calling thread only (threads
            // it starts inherit the policy).
            unsafe {
                let param = libc::sched_param { sched_priority: 0 };
                libc::sched_setscheduler(0, libc::SCHED_IDLE, &param);
            }
            let _ = tx.send(work());
        });
    if let Err(e) = spawned {
        return Err(EngineError::Integrity(format!(
            "cannot start the job thread: {e}"
        )));
    }
    rx.await
        .unwrap_or_else(|_| Err(EngineError::Integrity("the job panicked".into())))
}

/// Job errors are read by project members, who are not told where servers keep their
/// trees: paths on a server are named by what they are ("the source tree: No such file").
fn without_paths(e: EngineError, names: &[(String, &str)]) -> EngineError {
    let clean = |mut text: String| {
        for (path, name) in names {
            text = text.replace(path.as_str(), name);
        }
        text
    };
    match e {
        EngineError::Io { context, source } => EngineError::Io {
            context: clean(context),
            source,
        },
        EngineError::Integrity(m) => EngineError::Integrity(clean(m)),
        EngineError::Refused(m) => EngineError::Refused(clean(m)),
        EngineError::Cancelled => EngineError::Cancelled,
    }
}

fn set_container_status(
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

/// Turns engine progress into job events (at most 10 a second) and database updates
/// (about once a second). Called from the engine's threads.
struct ProgressReporter {
    runner: Arc<JobRunner>,
    job_id: String,
    /// The job as it runs; progress events are this plus the latest progress (no database
    /// read per event: nothing else about a running job changes).
    running: Job,
    handle: tokio::runtime::Handle,
    state: Mutex<ReporterState>,
    /// Database writes in flight; the final status waits for them, so it is written last.
    pending: Mutex<Vec<tokio::task::JoinHandle<()>>>,
}

#[derive(Default)]
struct ReporterState {
    last_event: Option<Instant>,
    last_db: Option<Instant>,
    last_phase: Option<engine::Phase>,
    latest: Option<JobProgress>,
    /// The publication of a state held back by the interval.
    trail: Option<tokio::task::JoinHandle<()>>,
    /// The job has ended: nothing more is published.
    finished: bool,
}

impl ProgressReporter {
    fn new(runner: Arc<JobRunner>, running: Job) -> Self {
        ProgressReporter {
            runner,
            job_id: running.id.clone(),
            running,
            handle: tokio::runtime::Handle::current(),
            state: Mutex::new(ReporterState::default()),
            pending: Mutex::new(Vec::new()),
        }
    }

    fn report(self: &Arc<Self>, p: &Progress) {
        let progress = to_job_progress(p);
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let phase_changed = st.last_phase != Some(p.phase);
        st.latest = Some(progress.clone());
        // At most one event per interval, phase changes included (a short copy goes
        // through four phases in a few milliseconds); a state held back goes out at the
        // end of the interval (`trail`) unless the final status comes first.
        let event_due = st.last_event.is_none_or(|t| t.elapsed() >= EVENT_INTERVAL);
        // The database keeps every phase (readers of `GET /jobs/{id}` see it move).
        let db_due = phase_changed || st.last_db.is_none_or(|t| t.elapsed() >= DB_INTERVAL);
        st.last_phase = Some(p.phase);
        if event_due {
            st.last_event = Some(Instant::now());
            // Published here, under the lock: events leave in the order of the reports.
            self.publish(progress.clone());
        }
        if db_due {
            st.last_db = Some(Instant::now());
        }
        if !event_due && st.trail.is_none() && !st.finished {
            let wait = st
                .last_event
                .map(|t| EVENT_INTERVAL.saturating_sub(t.elapsed()))
                .unwrap_or_default();
            let me = self.clone();
            st.trail = Some(self.handle.spawn(async move {
                tokio::time::sleep(wait).await;
                // Published under the lock: `flush` marks the job finished under it, so
                // this event cannot come after the final status.
                let mut st = me.state.lock().unwrap_or_else(|e| e.into_inner());
                st.trail = None;
                // Finished, or an event went out meanwhile.
                if st.finished || st.last_event.is_some_and(|t| t.elapsed() < EVENT_INTERVAL) {
                    return;
                }
                st.last_event = Some(Instant::now());
                if let Some(progress) = st.latest.clone() {
                    me.publish(progress);
                }
            }));
        }
        drop(st);
        if !db_due {
            return;
        }
        let db = self.runner.db.clone();
        let job_id = self.job_id.clone();
        // The engine runs on a blocking thread: hand the database write to the runtime.
        let task = self.handle.spawn(async move {
            let json = serde_json::to_string(&progress).unwrap_or_default();
            let phase = progress.phase.clone();
            let _ = db
                .transact(move |c| {
                    execute(
                        c,
                        "UPDATE jobs SET phase = $1, progress = $2
                             WHERE id = $3 AND status = 'running'",
                        &[&phase, &json, &job_id],
                    )
                })
                .await;
        });
        let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        pending.retain(|t| !t.is_finished());
        pending.push(task);
    }

    fn publish(&self, progress: JobProgress) {
        let mut job = self.running.clone();
        job.phase = Some(progress.phase.clone());
        job.progress = Some(progress);
        self.runner.hub.publish("progress", job);
    }

    /// Waits for the progress writes already handed out (a state held back is dropped: the
    /// final status says more), and gives the last progress seen (as JSON), for the finished job
    /// to show where it ended.
    async fn flush(&self) -> Option<String> {
        let latest = {
            let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
            st.finished = true;
            if let Some(trail) = st.trail.take() {
                trail.abort();
            }
            st.latest.clone()
        };
        let tasks = std::mem::take(&mut *self.pending.lock().unwrap_or_else(|e| e.into_inner()));
        for t in tasks {
            let _ = t.await;
        }
        latest.map(|p| serde_json::to_string(&p).unwrap_or_default())
    }
}

fn to_job_progress(p: &Progress) -> JobProgress {
    let percent = match (p.phase, p.bytes_total) {
        (engine::Phase::Transfer, Some(0)) => Some(100.0),
        (engine::Phase::Transfer, Some(t)) => {
            Some((p.bytes_done as f64 * 100.0 / t as f64).min(100.0))
        }
        (engine::Phase::Verify | engine::Phase::Commit, _) => Some(100.0),
        _ => None,
    };
    let rate = (p.rate > 0.0).then_some(p.rate);
    let eta = match (p.bytes_total, rate) {
        (Some(t), Some(r)) if p.phase == engine::Phase::Transfer => {
            Some(t.saturating_sub(p.bytes_done) as f64 / r)
        }
        _ => None,
    };
    JobProgress {
        phase: p.phase.as_str().to_string(),
        bytes_done: p.bytes_done,
        bytes_total: p.bytes_total,
        files_done: p.files_done,
        files_total: p.files_total,
        percent,
        bytes_per_second: rate,
        eta_seconds: eta,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(phase: engine::Phase, bytes_done: u64) -> Progress {
        Progress {
            phase,
            bytes_done,
            bytes_total: Some(100),
            files_done: 0,
            files_total: Some(1),
            elapsed: Duration::ZERO,
            rate: 0.0,
        }
    }

    /// The phases of each progress event published after event `seen` (which it moves on).
    fn phases(hub: &crate::events::EventHub, seen: &mut u64) -> Vec<String> {
        let published = hub.since(*seen);
        if let Some(last) = published.last() {
            *seen = last.ev.id;
        }
        published
            .iter()
            .map(|e| e.ev.job.phase.clone().unwrap_or_default())
            .collect()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn progress_events_come_at_most_every_interval_and_a_held_back_state_follows() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("t.db").display());
        let runner = JobRunner::new(crate::db::connect(&url).await.unwrap(), Limits::default());
        let mut seen = runner.hub.peek_id().saturating_sub(1);
        let job = crate::events::test_job("a", JobStatus::Running);
        let reporter = Arc::new(ProgressReporter::new(runner.clone(), job));
        // A short copy: four phases within a few milliseconds.
        for phase in [
            engine::Phase::Scan,
            engine::Phase::Transfer,
            engine::Phase::Verify,
        ] {
            reporter.report(&at(phase, 50));
        }
        assert_eq!(
            phases(&runner.hub, &mut seen),
            ["scan"],
            "only the first goes at once"
        );
        tokio::time::sleep(EVENT_INTERVAL + EVENT_INTERVAL / 2).await;
        assert_eq!(
            phases(&runner.hub, &mut seen),
            ["verify"],
            "the state held back goes out at the end of the interval"
        );
        // Held back again, but the job ends first: nothing after its end.
        reporter.report(&at(engine::Phase::Commit, 100));
        reporter.report(&at(engine::Phase::Commit, 100));
        let before = phases(&runner.hub, &mut seen);
        assert!(before.len() <= 1, "{before:?}");
        let last = reporter.flush().await.expect("the last progress");
        assert!(last.contains("\"commit\""), "{last}");
        tokio::time::sleep(EVENT_INTERVAL * 2).await;
        assert_eq!(
            phases(&runner.hub, &mut seen),
            Vec::<String>::new(),
            "nothing after the end"
        );
    }
}
