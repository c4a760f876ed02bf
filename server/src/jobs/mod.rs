//! The job runner: runs queued copy and sync jobs with bounded concurrency (globally and per
//! target server), streams their progress to the event hub, keeps the database truthful,
//! and after a restart resumes whatever was queued or running.

mod finish;
mod progress;
mod thread;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

use app::model::{ContainerStatus, EventKind, Job, JobKind, JobPhase};
use parking_lot::Mutex;
use sqlx::Row;
use tokio::sync::Semaphore;

use crate::config::{container_place, snapshot_place};
use crate::engine::{self, Control, EngineError, Place};
use crate::events::EventHub;
use crate::ids::now_ms;
use crate::store::{job_from_row, query_first, Db, DbError};
use finish::set_container_status;
use progress::ProgressReporter;
use thread::{run_in_background, without_paths};

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
        let mut map = self.per_server.lock();
        map.entry(server_id.to_string())
            .or_insert_with(|| Arc::new(Semaphore::new(self.per_server_limit)))
            .clone()
    }

    /// Starts running a queued job in the background. `start`: what the job needs, when
    /// the caller has it at hand (it is read from the database otherwise).
    pub fn spawn(self: &Arc<Self>, job_id: String, start: Option<JobStart>) {
        let ctl = Control::new();
        self.active.lock().insert(job_id.clone(), ctl.clone());
        let runner = self.clone();
        tokio::spawn(async move {
            if let Err(e) = runner.run(&job_id, start, ctl).await {
                tracing::error!(job = %job_id, error = %e, "job bookkeeping failed");
            }
            runner.active.lock().remove(&job_id);
        });
    }

    /// Asks a queued or running job to stop. `false` if it is not active here.
    pub fn cancel(&self, job_id: &str) -> bool {
        match self.active.lock().get(job_id) {
            Some(ctl) => {
                ctl.cancel();
                true
            }
            None => false,
        }
    }

    /// After a start: jobs that were queued or running when doppel stopped run again. The
    /// engine repairs or rolls back whatever an interruption left on disk.
    pub async fn recover(self: &Arc<Self>) -> Result<usize, DbError> {
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
                        phase = $3
                     WHERE id = $2 AND status IN ('queued', 'running') RETURNING *",
                    &[&now, &id, &JobPhase::Scan.as_str()],
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
        self.hub.publish(EventKind::Status, running.clone());

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
}
