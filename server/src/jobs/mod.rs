//! The job runner: runs queued copy and sync jobs with bounded concurrency (globally and per
//! target server), streams their progress to the event hub, keeps the database truthful,
//! and after a restart resumes whatever was queued or running.

mod convert;
mod finish;

use finish::Ended;
mod progress;
mod thread;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

use app::model::{ContainerStatus, EventKind, JobKind};
use parking_lot::Mutex;
use tokio::sync::{
    Notify, OwnedRwLockReadGuard, OwnedRwLockWriteGuard, OwnedSemaphorePermit, RwLock, Semaphore,
};

use crate::config::{container_place, snapshot_place};
use crate::engine::{self, Control, EngineError, Place};
use crate::events::EventHub;
use crate::lifecycle::{Halted, Lifecycle, Outcome};
use crate::remote::protocol::{NewIdentity, TransferMode};
use crate::remote::{Agents, TransferRequest, Where};
use crate::store::{Db, DbError};
use progress::ProgressReporter;
use thread::{run_in_background, without_paths};

/// What a job needs beyond its row, as accepted (the `params` column).
#[derive(Clone, Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct JobParams {
    /// Copy from this snapshot of the source instead of its live state.
    pub source_snapshot_id: Option<String>,
    /// Sync: the target's status before the sync, restored after it.
    pub previous_status: Option<ContainerStatus>,
    /// The request's bandwidth limit (bytes a second; the servers' limits apply too).
    #[serde(default)]
    pub bwlimit: Option<u64>,
}

/// What the runner needs to start a job: the rows it acts on and where their trees are.
pub struct JobStart {
    pub kind: JobKind,
    pub params: JobParams,
    pub target_id: String,
    pub source_id: String,
    pub target_server: String,
    pub source_server: String,
    /// Storage roots of this process's servers (empty for an agent's: its own host's).
    pub target_root: PathBuf,
    pub source_root: PathBuf,
    /// The target's name and the one key root may log in with: what a copy makes its new
    /// identity from (see `engine::identity`).
    pub target_name: String,
    pub target_ssh_key: Option<String>,
}

/// How many times a transfer whose connection broke is tried.
const TRANSFER_ATTEMPTS: u32 = 10;

/// How many jobs run at once, and how many one user or project may have queued or running.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    pub global: usize,
    pub per_server: usize,
    /// Queued or running jobs one user may have (`--max-queued-jobs-per-user`).
    pub per_user: u64,
    /// Queued or running jobs one project may have, whoever started them.
    pub per_project: u64,
    /// How long a job waits for an offline server it needs before it fails
    /// (`--server-wait`).
    pub server_wait: std::time::Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            global: 2,
            per_server: 1,
            per_user: 20,
            per_project: 50,
            server_wait: std::time::Duration::from_secs(600),
        }
    }
}

pub struct JobRunner {
    db: Db,
    pub hub: Arc<EventHub>,
    global: Arc<Semaphore>,
    per_server_limit: usize,
    per_server: Mutex<HashMap<String, Arc<Semaphore>>>,
    /// One readers-writer lock per container: a sync writes its target, copies, syncs and
    /// snapshots read their sources. So nothing reads a tree while a sync changes it, and
    /// two syncs never write one container.
    locks: Mutex<HashMap<String, Arc<RwLock<()>>>>,
    /// Controls of queued and running jobs, to cancel them (the notification wakes a job
    /// still waiting for a slot).
    active: Mutex<HashMap<String, (Control, Arc<Notify>)>>,
    /// Starts a finished copy (a copy is a container that runs).
    lifecycle: Arc<Lifecycle>,
    /// Servers on other hosts: transfers to, from and between them.
    agents: Arc<Agents>,
    /// How long a job waits for an offline server.
    server_wait: std::time::Duration,
    /// Containers whose trees a convert job is swapping now (`is_converting`).
    converting: Mutex<std::collections::HashSet<String>>,
}

/// A container lock held by a job or snapshot (until it is dropped).
#[allow(dead_code)] // Held, never read.
pub(crate) enum ContainerGuard {
    Read(OwnedRwLockReadGuard<()>),
    Write(OwnedRwLockWriteGuard<()>),
}

/// Held while a snapshot copies its container (see [`JobRunner::hold_for_snapshot`]).
pub struct SnapshotHold {
    _slots: (OwnedSemaphorePermit, OwnedSemaphorePermit),
    _locks: Vec<ContainerGuard>,
}

impl JobRunner {
    pub fn new(
        db: Db,
        limits: Limits,
        lifecycle: Arc<Lifecycle>,
        agents: Arc<Agents>,
    ) -> Arc<JobRunner> {
        Arc::new(JobRunner {
            db,
            hub: Arc::new(EventHub::new()),
            global: Arc::new(Semaphore::new(limits.global.max(1))),
            per_server_limit: limits.per_server.max(1),
            per_server: Mutex::new(HashMap::new()),
            locks: Mutex::new(HashMap::new()),
            active: Mutex::new(HashMap::new()),
            lifecycle,
            agents,
            server_wait: limits.server_wait,
            converting: Mutex::default(),
        })
    }

    fn server_slot(&self, server_id: &str) -> Arc<Semaphore> {
        let mut map = self.per_server.lock();
        map.entry(server_id.to_string())
            .or_insert_with(|| Arc::new(Semaphore::new(self.per_server_limit)))
            .clone()
    }

    /// Waits for the containers' locks: `reads` shared, `writes` exclusive. Taken in one
    /// order (by id) by everyone, and only by holders of a job slot, who wait for nothing
    /// else: no two holders can wait for each other.
    pub(crate) async fn lock_containers(
        &self,
        reads: &[&str],
        writes: &[&str],
    ) -> Vec<ContainerGuard> {
        let mut wanted: Vec<(&str, bool)> = writes.iter().map(|id| (*id, true)).collect();
        for id in reads {
            if !writes.contains(id) {
                wanted.push((id, false));
            }
        }
        wanted.sort();
        wanted.dedup_by(|a, b| a.0 == b.0);
        let mut guards = Vec::with_capacity(wanted.len());
        for (id, write) in wanted {
            let lock = self.locks.lock().entry(id.to_string()).or_default().clone();
            guards.push(if write {
                ContainerGuard::Write(lock.write_owned().await)
            } else {
                ContainerGuard::Read(lock.read_owned().await)
            });
        }
        guards
    }

    /// What a snapshot of a container holds while it copies the tree: a job slot on its
    /// server and a global one (snapshots count against the same limits as jobs), and the
    /// container's lock shared (no sync changes it meanwhile).
    pub async fn hold_for_snapshot(&self, server_id: &str, container_id: &str) -> SnapshotHold {
        let closed = "the job semaphores are never closed";
        let server = self
            .server_slot(server_id)
            .acquire_owned()
            .await
            .expect(closed);
        let global = self.global.clone().acquire_owned().await.expect(closed);
        let locks = self.lock_containers(&[container_id], &[]).await;
        SnapshotHold {
            _slots: (server, global),
            _locks: locks,
        }
    }

    /// Starts running a queued job in the background. `start`: what the job needs, when
    /// the caller has it at hand (it is read from the database otherwise).
    pub fn spawn(self: &Arc<Self>, job_id: String, start: Option<JobStart>) {
        // Syncs skip the walks of trees nothing changed since they last looked.
        let ctl = Control::new().with_watch(engine::watch::Watch::shared());
        let cancelled = Arc::new(Notify::new());
        self.active
            .lock()
            .insert(job_id.clone(), (ctl.clone(), cancelled.clone()));
        let runner = self.clone();
        // (Small: what a job does once it runs is boxed then, `run_in_slots`. Spawned whole,
        // every state of every kind of job was copied, and zeroed memory allocated for it,
        // on each copy request: 5 % of its CPU in `make load`.)
        tokio::spawn(async move {
            if let Err(e) = runner.run(&job_id, start, ctl, &cancelled).await {
                tracing::error!(job = %job_id, error = %e, "job bookkeeping failed");
            }
            runner.active.lock().remove(&job_id);
        });
    }

    /// Asks a queued or running job to stop. `false` if it is not active here.
    pub fn cancel(&self, job_id: &str) -> bool {
        match self.active.lock().get(job_id) {
            Some((ctl, cancelled)) => {
                ctl.cancel();
                // Stored if the job is not waiting yet: it is seen whenever it starts to.
                cancelled.notify_one();
                true
            }
            None => false,
        }
    }

    /// After a start: jobs that were queued or running when doppel stopped run again. The
    /// engine repairs or rolls back whatever an interruption left on disk.
    pub async fn recover(self: &Arc<Self>) -> Result<usize, DbError> {
        for id in self.db.cancelled_jobs_left_unfinished().await? {
            tracing::info!(job = %id, "finishing a job cancelled before the last stop");
            let s = self.load_start(&id).await?;
            let cancelled = Err(EngineError::Cancelled);
            self.finish(&id, s.kind, &s.target_id, &s.params, Ended::with(cancelled))
                .await?;
        }
        let ids = self.db.requeue_interrupted_jobs().await?;
        for id in &ids {
            tracing::info!(job = %id, "resuming a job interrupted by a restart");
            self.spawn(id.clone(), None);
        }
        Ok(ids.len())
    }

    /// What a job needs to start, from the database (after a restart, or for a sync).
    async fn load_start(&self, job_id: &str) -> Result<JobStart, DbError> {
        let t = self.db.job_targets(job_id).await?;
        Ok(JobStart {
            kind: t.kind,
            params: serde_json::from_str(&t.params).unwrap_or_default(),
            target_id: t.target_id,
            source_id: t.source_id,
            target_server: t.target_server,
            source_server: t.source_server,
            target_root: t.target_root,
            source_root: t.source_root,
            target_name: t.target_name,
            target_ssh_key: t.target_ssh_key,
        })
    }

    async fn run(
        self: &Arc<Self>,
        job_id: &str,
        start: Option<JobStart>,
        ctl: Control,
        cancelled: &Notify,
    ) -> Result<(), DbError> {
        let start = match start {
            Some(start) => start,
            None => self.load_start(job_id).await?,
        };
        if !start.kind.is_queued_work() {
            // Done by its request, never queued: nothing to run.
            tracing::error!(job = %job_id, kind = start.kind.as_str(), "not a job for the runner");
            return Ok(());
        }
        let kind = start.kind;
        // Servers on other hosts it needs must be online: it waits for them (saying so)
        // before it takes a slot, so nothing else waits behind it.
        let needs: Vec<&str> = match kind {
            JobKind::Delete | JobKind::Convert => vec![start.target_server.as_str()],
            _ => vec![start.source_server.as_str(), start.target_server.as_str()],
        };
        if let Err(e) = self.wait_for_servers(job_id, &needs, &ctl, cancelled).await {
            let ended = Ended::with(Err(e));
            return Box::pin(self.finish(job_id, kind, &start.target_id, &start.params, ended))
                .await;
        }
        // Wait for a slot on the target server, then globally: a job waiting for a busy
        // server holds no global slot, so jobs for other servers are not held up behind it.
        // A job cancelled while it waits stops waiting: its copy is marked failed (or its
        // sync target put back) now, not when a slot frees.
        let slots = async {
            let server = self.server_slot(&start.target_server).acquire_owned().await;
            let global = self.global.clone().acquire_owned().await;
            // The source is read; the target written (a new copy's too, for form's sake).
            let locks = self
                .lock_containers(&[start.source_id.as_str()], &[start.target_id.as_str()])
                .await;
            (server, global, locks)
        };
        let _slots = tokio::select! {
            slots = slots => Some(slots),
            () = cancelled.notified() => None,
        };
        // The rest, every kind of job's states (kilobytes), in a box of its own made once
        // the job has its slots: what a copy request spawns stays small (`make load`).
        Box::pin(self.run_in_slots(job_id, start, ctl, cancelled)).await
    }

    /// A job that has its slots and locks (held by `run` until this returns): marked
    /// running, then run and finished.
    async fn run_in_slots(
        self: &Arc<Self>,
        job_id: &str,
        start: JobStart,
        ctl: Control,
        cancelled: &Notify,
    ) -> Result<(), DbError> {
        let JobStart {
            kind,
            params,
            target_id,
            source_id,
            target_server,
            source_server,
            target_root,
            source_root,
            target_name,
            target_ssh_key,
        } = start;

        // Running now, unless it was cancelled while it waited; a sync's target shows
        // `syncing` from the same commit on.
        let during = match kind {
            JobKind::Copy => None,
            JobKind::Sync => Some((target_id.as_str(), ContainerStatus::Syncing)),
            JobKind::Delete => Some((target_id.as_str(), ContainerStatus::Deleting)),
            // (A conversion keeps it stopped: no start is recorded while it runs.)
            JobKind::Convert | JobKind::Start | JobKind::Stop | JobKind::Restart => None,
        };
        let running = self.db.start_job(job_id, during).await?;
        let Some(running) = running else {
            return self
                .finish(
                    job_id,
                    kind,
                    &target_id,
                    &params,
                    Ended::with(Err(EngineError::Cancelled)),
                )
                .await;
        };
        self.hub.publish(EventKind::Status, running.clone());
        let job_created = running.created_at;
        if kind == JobKind::Delete {
            let result = if self.agents.is_agent(&target_server) {
                // Its process stopped on its agent (recorded here), then its trees removed
                // there.
                let started = std::time::Instant::now();
                match self
                    .lifecycle
                    .stop_for_job(&target_id, ContainerStatus::Deleting)
                    .await?
                {
                    Err(why) => Err(not_stopped(&why)),
                    Ok(halted) => self
                        .agents
                        .remove_container(&target_server, &target_id)
                        .await
                        .map(|()| engine::Summary {
                            duration_ms: started.elapsed().as_millis() as u64,
                            notes: if halted.stopped() {
                                vec!["its process was stopped".into()]
                            } else {
                                Vec::new()
                            },
                            ..Default::default()
                        }),
                }
            } else {
                self.remove_container(&target_id, &target_root).await
            };
            return self
                .finish(job_id, kind, &target_id, &params, Ended::with(result))
                .await;
        }
        if kind == JobKind::Convert {
            let reporter = Arc::new(ProgressReporter::new(self.clone(), running));
            let r2 = reporter.clone();
            let ctl = ctl.with_progress(move |p| r2.report(p));
            let was = params.previous_status;
            let result = self.convert(&target_id, &target_root, was, ctl).await?;
            let last_progress = reporter.flush(result.is_ok()).await;
            let ended = Ended {
                result,
                last_progress,
                restarted: None,
            };
            return self.finish(job_id, kind, &target_id, &params, ended).await;
        }
        // A source deleted while this job waited (its delete ran first): nothing to read,
        // said so rather than as a missing directory.
        if self.db.container_status(&source_id).await?.is_none() {
            let what = kind.as_str();
            let gone = EngineError::Refused(format!(
                "the source was deleted before this {what} ran: there is nothing to {what} from"
            ));
            return self
                .finish(job_id, kind, &target_id, &params, Ended::with(Err(gone)))
                .await;
        }
        // The lowest of the request's and both servers' bandwidth limits.
        let server_limit = self
            .db
            .servers_bwlimit(&[&source_server, &target_server])
            .await?;
        let bwlimit = match (params.bwlimit, server_limit) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        if self.agents.is_agent(&source_server) || self.agents.is_agent(&target_server) {
            let reporter = Arc::new(ProgressReporter::new(self.clone(), running));
            let r2 = reporter.clone();
            let ctl = ctl.with_progress(move |p| r2.report(p));
            // The transfer keeps to the lowest limit (the request's is one of them).
            let limited = JobParams {
                bwlimit,
                ..params.clone()
            };
            let pass = |ctl: Control| {
                self.across_hosts(
                    kind,
                    &limited,
                    (&source_id, &source_server, &source_root),
                    (&target_id, &target_server, &target_root),
                    (&target_name, target_ssh_key.as_deref()),
                    (job_id, ctl, cancelled),
                )
            };
            let first = pass(ctl.clone()).await;
            let first = first.map_err(|e| self.paths_named(e, &source_root, &target_root));
            // (For a target on an agent this place is not on this host: its half-changed
            // state comes back as `Incomplete`.)
            let here = container_place(&target_root, &target_id);
            let last = || async {
                pass(ctl)
                    .await
                    .map_err(|e| self.paths_named(e, &source_root, &target_root))
            };
            let (result, restarted) = self
                .final_pass(kind, &params, (&target_id, &here), job_created, first, last)
                .await?;
            let last_progress = reporter.flush(result.is_ok()).await;
            if result.is_ok() && finish::starts_after(kind, &params, restarted.is_some()) {
                reporter.starting(last_progress.as_ref()).await;
            }
            let ended = Ended {
                last_progress,
                result,
                restarted,
            };
            return self.finish(job_id, kind, &target_id, &params, ended).await;
        }

        let src = match &params.source_snapshot_id {
            Some(snap) => snapshot_place(&source_root, &source_id, snap),
            None => container_place(&source_root, &source_id),
        };
        let dst = container_place(&target_root, &target_id);
        // A copy takes content its target server already holds from there: the most recently
        // updated settled containers on that server (other than the source) are offered to
        // the engine.
        let local: Vec<Place> = if kind == JobKind::Copy {
            // (Reading the source there would be no cheaper than reading it here.)
            self.db
                .settled_containers_on(&target_server, [&target_id, &source_id], 8)
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
        let ctl = ctl
            .with_progress(move |p| r2.report(p))
            .with_bwlimit(bwlimit);
        let target = dst.clone();
        let (src2, dst2, ctl2) = (src.clone(), dst.clone(), ctl.for_another_run());
        let result = run_in_background(move || match kind {
            // The target is this job's new container: if a run before a restart already
            // finished its tree, it is brought up to date rather than refused.
            JobKind::Copy => {
                let mut summary = engine::resume_copy(&src, &dst, &local, &ctl)?;
                let id = engine::identity::Identity {
                    hostname: &target_name,
                    ssh_public_key: target_ssh_key.as_deref(),
                };
                match engine::identity::make_new_machine(&dst, &id) {
                    Ok(made) => made.record_in(&mut summary),
                    // A copy that is not a machine of its own is no copy: like any copy
                    // that did not finish, it leaves no tree.
                    Err(e) => {
                        if let Err(left) =
                            engine::remove_trees(&[dst.root.clone(), dst.manifest_path()])
                        {
                            tracing::warn!(error = %left, "removing a copy without its identity");
                        }
                        return Err(e);
                    }
                }
                Ok(summary)
            }
            // The copy keeps its own identity files.
            JobKind::Sync => {
                engine::sync_keeping(&src, &dst, &engine::identity::is_identity_path, &ctl)
            }
            JobKind::Delete
            | JobKind::Convert
            | JobKind::Start
            | JobKind::Stop
            | JobKind::Restart => Err(EngineError::Refused(format!(
                "a {} has no transfer",
                kind.as_str()
            ))),
        })
        .await
        .map_err(|e| without_paths(e, &names));
        let last = || async move {
            run_in_background(move || {
                engine::sync_keeping(&src2, &dst2, &engine::identity::is_identity_path, &ctl2)
            })
            .await
            .map_err(|e| without_paths(e, &names))
        };
        let (result, restarted) = self
            .final_pass(
                kind,
                &params,
                (&target_id, &target),
                job_created,
                result,
                last,
            )
            .await?;
        let last_progress = reporter.flush(result.is_ok()).await;
        if result.is_ok() && finish::starts_after(kind, &params, restarted.is_some()) {
            reporter.starting(last_progress.as_ref()).await;
        }
        let result = match result {
            Err(e) if kind == JobKind::Sync && target.commit_pending() => {
                Err(EngineError::Incomplete(e.to_string()))
            }
            r => r,
        };
        let ended = Ended {
            result,
            last_progress,
            restarted,
        };
        self.finish(job_id, kind, &target_id, &params, ended).await
    }
}

impl JobRunner {
    /// A sync of a running copy: its first pass (`first`) ran while it ran; now it stops,
    /// `last` brings the changes made meanwhile, and it starts again (unless its tree is
    /// left half changed: it is failed then). Its downtime is only that final pass. The
    /// result, and how starting it again went.
    async fn final_pass<F, Fut>(
        &self,
        kind: JobKind,
        params: &JobParams,
        (target_id, target): (&str, &Place),
        job_created: i64,
        first: Result<engine::Summary, EngineError>,
        last: F,
    ) -> Result<(Result<engine::Summary, EngineError>, Option<Outcome>), DbError>
    where
        F: FnOnce() -> Fut,
        Fut: std::future::Future<Output = Result<engine::Summary, EngineError>>,
    {
        let first = match first {
            // A first pass that found the copy as its source was (nothing to change, no
            // drift) leaves nothing for a final pass: the copy is not stopped.
            Ok(first)
                if kind == JobKind::Sync
                    && params.previous_status == Some(ContainerStatus::Running)
                    && changed_anything(&first) =>
            {
                first
            }
            other => return Ok((other, None)),
        };
        let started = std::time::Instant::now();
        let ended = match self
            .lifecycle
            .stop_for_job(target_id, ContainerStatus::Syncing)
            .await?
        {
            Ok(Halted::Stopped) => None,
            Ok(Halted::NotRunning { ended }) => Some(ended),
            // It runs on: no final pass, and the sync fails (the copy keeps its status).
            Err(why) => return Ok((Err(not_stopped(&why)), None)),
        };
        if let Some(ended) = ended {
            // Nothing ran to stop (it ended before or during the pass, or this sync stopped
            // it before a restart): started again, as a finished sync leaves its copy. It
            // was down from that stop, if it came after the sync was asked for. A process
            // that ended on its own is said, with its exit code: the start replaces it.
            let stopped_at = self
                .db
                .container(target_id)
                .await?
                .and_then(|row| row.stopped_at)
                .filter(|at| *at >= job_created);
            let started = self
                .lifecycle
                .start(target_id, &[ContainerStatus::Syncing])
                .await?;
            let mut first = first;
            if let Some(exit) = ended {
                let then = match started.status {
                    ContainerStatus::Running => "started again",
                    _ => "it did not start again (its status says why)",
                };
                first.notes.push(format!(
                    "the copy's process had exited with code {} during the sync; {then}",
                    exit.code
                ));
            }
            if let Some(at) = stopped_at {
                first.downtime_ms = Some(crate::ids::now_ms().saturating_sub(at).max(0) as u64);
            }
            return Ok((Ok(first), Some(started)));
        }
        let result = last().await;
        let half_changed = matches!(result, Err(EngineError::Incomplete(_)))
            || (result.is_err() && target.commit_pending());
        let restarted = if half_changed {
            None
        } else {
            Some(
                self.lifecycle
                    .start(target_id, &[ContainerStatus::Syncing])
                    .await?,
            )
        };
        // (Down from its stop until its start again returned.)
        let result = result.map(|last| two_passes(first, last, started.elapsed()));
        Ok((result, restarted))
    }

    /// Waits until none of `servers` is an offline agent, saying why on the job meanwhile;
    /// fails after `--server-wait`, or when the job is cancelled.
    async fn wait_for_servers(
        &self,
        job_id: &str,
        servers: &[&str],
        ctl: &Control,
        cancelled: &Notify,
    ) -> Result<(), EngineError> {
        let deadline = std::time::Instant::now() + self.server_wait;
        let mut said: Option<String> = None;
        loop {
            if ctl.is_cancelled() {
                return Err(EngineError::Cancelled);
            }
            let Some((name, reason)) = self.agents.first_offline(servers) else {
                if said.is_some() {
                    if let Ok(Some(job)) = self.db.set_job_waiting(job_id, None).await {
                        self.hub.publish(EventKind::Status, job);
                    }
                }
                return Ok(());
            };
            if std::time::Instant::now() >= deadline {
                return Err(EngineError::Refused(format!(
                    "server {name} stayed offline for {} s, the longest a job waits (--server-wait): {reason}",
                    self.server_wait.as_secs()
                )));
            }
            let why = format!("waiting for server {name} (offline: {reason})");
            if said.as_deref() != Some(why.as_str()) {
                if let Ok(Some(job)) = self.db.set_job_waiting(job_id, Some(why.clone())).await {
                    self.hub.publish(EventKind::Status, job);
                }
                said = Some(why);
            }
            tokio::select! {
                () = tokio::time::sleep(std::time::Duration::from_millis(500)) => {}
                () = cancelled.notified() => return Err(EngineError::Cancelled),
            }
        }
    }

    /// A copy or sync with an end on another host (see `remote::transfer`); then a new
    /// copy's identity, made on its server.
    async fn across_hosts(
        &self,
        kind: JobKind,
        params: &JobParams,
        (source_id, source_server, source_root): (&str, &str, &std::path::Path),
        (target_id, target_server, target_root): (&str, &str, &std::path::Path),
        (hostname, ssh_public_key): (&str, Option<&str>),
        (job_id, ctl, cancelled): (&str, Control, &Notify),
    ) -> Result<engine::Summary, EngineError> {
        let mode = match kind {
            JobKind::Copy => TransferMode::Copy,
            JobKind::Sync => TransferMode::Sync,
            other => {
                return Err(EngineError::Refused(format!(
                    "a {} has no transfer",
                    other.as_str()
                )))
            }
        };
        let snapshot = params.source_snapshot_id.as_deref();
        let source = if self.agents.is_agent(source_server) {
            Where::Agent(source_server.to_string())
        } else {
            Where::Here(match snapshot {
                Some(snap) => snapshot_place(source_root, source_id, snap),
                None => container_place(source_root, source_id),
            })
        };
        let target_here = container_place(target_root, target_id);
        let target = if self.agents.is_agent(target_server) {
            Where::Agent(target_server.to_string())
        } else {
            Where::Here(target_here.clone())
        };
        let request = TransferRequest {
            mode,
            source,
            source_container: source_id,
            snapshot,
            target,
            target_container: target_id,
            bwlimit: params.bwlimit,
        };
        // A broken connection (a host down, a link cut) is tried again once the servers
        // answer (each wait within --server-wait), a few times; a copy resumes from what
        // already arrived.
        let mut attempts = 0;
        let mut summary = loop {
            attempts += 1;
            match self.agents.transfer(request.clone(), ctl.clone()).await {
                Err(e @ EngineError::Disconnected { .. })
                    if attempts < TRANSFER_ATTEMPTS && !ctl.is_cancelled() =>
                {
                    tracing::warn!(job = %job_id, error = %e, "a transfer lost its connection; trying again when the servers answer");
                    let why =
                        format!("its connection broke ({e}); trying again when the servers answer");
                    if let Ok(Some(job)) = self.db.set_job_waiting(job_id, Some(why)).await {
                        self.hub.publish(EventKind::Status, job);
                    }
                    tokio::select! {
                        () = tokio::time::sleep(std::time::Duration::from_secs(2)) => {}
                        () = cancelled.notified() => return Err(EngineError::Cancelled),
                    }
                    self.wait_for_servers(job_id, &[source_server, target_server], &ctl, cancelled)
                        .await?;
                    if let Ok(Some(job)) = self.db.set_job_waiting(job_id, None).await {
                        self.hub.publish(EventKind::Status, job);
                    }
                }
                r => break r?,
            }
        };
        if kind == JobKind::Copy {
            // The copy's own files, and its tree's root hash with them.
            (summary.identity_files, summary.root_hash) = if self.agents.is_agent(target_server) {
                let identity = NewIdentity {
                    hostname: hostname.to_string(),
                    ssh_public_key: ssh_public_key.map(str::to_string),
                };
                let written = self
                    .agents
                    .make_identity(target_server, target_id, identity)
                    .await?;
                // (Its manifest was just recorded there: a look at metadata. The copy is
                // whole either way: where the look fails, the source's hash stays.)
                let root_hash = self
                    .agents
                    .probe(target_server, target_id)
                    .await
                    .unwrap_or_else(|_| summary.root_hash.clone());
                (written, root_hash)
            } else {
                let (hostname, key) = (hostname.to_string(), ssh_public_key.map(str::to_string));
                let made = run_in_background(move || {
                    let id = engine::identity::Identity {
                        hostname: &hostname,
                        ssh_public_key: key.as_deref(),
                    };
                    let mut made = engine::Summary::default();
                    engine::identity::make_new_machine(&target_here, &id)?.record_in(&mut made);
                    Ok(made)
                })
                .await?;
                (made.identity_files, made.root_hash)
            };
        }
        Ok(summary)
    }

    /// An error of a transfer across hosts with the storage roots it may name (this host's
    /// and the agents') put as the servers they are.
    fn paths_named(
        &self,
        e: EngineError,
        source_root: &std::path::Path,
        target_root: &std::path::Path,
    ) -> EngineError {
        let agent_roots: Vec<String> = self
            .agents
            .storage_roots()
            .into_iter()
            .filter(|r| !r.is_empty())
            .collect();
        let mut names: Vec<(String, &str)> = agent_roots
            .into_iter()
            .map(|r| (r, "the other host's storage"))
            .collect();
        for (root, name) in [
            (source_root, "the source server"),
            (target_root, "the target server"),
        ] {
            if !root.as_os_str().is_empty() {
                names.push((root.display().to_string(), name));
            }
        }
        names.sort_by_key(|(path, _)| std::cmp::Reverse(path.len()));
        without_paths(e, &names)
    }

    /// A delete: the process stopped (its network goes with it), then the tree, the
    /// engine's state, the snapshots and the runtime bundle removed.
    async fn remove_container(
        &self,
        id: &str,
        storage_root: &std::path::Path,
    ) -> Result<engine::Summary, EngineError> {
        let stopped = self
            .lifecycle
            .stop_for_job(id, ContainerStatus::Deleting)
            .await
            .map_err(|e| EngineError::Refused(format!("stopping it: {e}")))?
            .map_err(|why| not_stopped(&why))?
            .stopped();
        let place = container_place(storage_root, id);
        let trees = vec![
            place.root.clone(),
            place.state_dir.clone(),
            crate::config::snapshots_dir(storage_root).join(id),
            crate::config::runtime_dir(storage_root, id),
        ];
        // (Its errors name what they are about, not paths on the server.)
        let mut names: Vec<(String, &str)> = trees
            .iter()
            .map(|t| t.display().to_string())
            .zip([
                "its tree",
                "its state",
                "its snapshots",
                "its runtime files",
            ])
            .collect();
        names.push((storage_root.display().to_string(), "the server"));
        let started = std::time::Instant::now();
        run_in_background(move || engine::remove_trees(&trees))
            .await
            .map_err(|e| without_paths(e, &names))?;
        let mut summary = engine::Summary {
            duration_ms: started.elapsed().as_millis() as u64,
            ..Default::default()
        };
        if stopped {
            summary.notes.push("its process was stopped".into());
        }
        Ok(summary)
    }
}

/// Whether a pass changed the copy (or found it changed on its own).
fn changed_anything(s: &engine::Summary) -> bool {
    s.files_added + s.files_changed + s.files_deleted + s.metadata_only + s.drift > 0
}

/// The summary of a sync done in two passes (while the copy ran, then stopped): what both
/// changed, the tree as the last left it, and how long the copy was down.
fn two_passes(
    first: engine::Summary,
    last: engine::Summary,
    downtime: std::time::Duration,
) -> engine::Summary {
    let mut phase_ms = first.phase_ms;
    for (phase, ms) in last.phase_ms {
        *phase_ms.entry(phase).or_default() += ms;
    }
    // A path that drifted before both passes is one entry, listed and counted once.
    let again = last
        .drift_paths
        .iter()
        .filter(|p| first.drift_paths.contains(p))
        .count() as u64;
    let mut drift_paths = first.drift_paths;
    for p in last.drift_paths {
        if !drift_paths.contains(&p) {
            drift_paths.push(p);
        }
    }
    let mut notes = first.notes;
    notes.extend(last.notes);
    let wire_bytes = match (first.wire_bytes, last.wire_bytes) {
        (None, None) => None,
        (a, b) => Some(a.unwrap_or(0) + b.unwrap_or(0)),
    };
    engine::Summary {
        files_added: first.files_added + last.files_added,
        files_changed: first.files_changed + last.files_changed,
        files_deleted: first.files_deleted + last.files_deleted,
        metadata_only: first.metadata_only + last.metadata_only,
        bytes_sent: first.bytes_sent + last.bytes_sent,
        content_bytes: first.content_bytes + last.content_bytes,
        wire_bytes,
        reused_bytes: first.reused_bytes + last.reused_bytes,
        kernel_bytes: first.kernel_bytes + last.kernel_bytes,
        local_bytes: first.local_bytes + last.local_bytes,
        delta_files: first.delta_files + last.delta_files,
        drift: (first.drift + last.drift).saturating_sub(again),
        drift_paths,
        // The first pass, then the copy down for the final one.
        duration_ms: first.duration_ms + downtime.as_millis() as u64,
        recovered: first.recovered || last.recovered,
        phase_ms,
        notes,
        downtime_ms: Some(downtime.as_millis() as u64),
        ..last
    }
}

#[cfg(test)]
impl JobRunner {
    /// Takes every global job slot, so jobs queued meanwhile stay queued.
    pub(crate) async fn hold_every_slot(&self) -> tokio::sync::OwnedSemaphorePermit {
        let n = self.global.available_permits() as u32;
        self.global.clone().acquire_many_owned(n).await.unwrap()
    }
}

/// A job that needed its container's process stopped, which still runs.
fn not_stopped(why: &str) -> EngineError {
    EngineError::Refused(format!("its process could not be stopped: {why}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_path_that_drifted_before_both_passes_is_one_entry() {
        let drifted = |paths: &[&str]| engine::Summary {
            drift: paths.len() as u64,
            drift_paths: paths.iter().map(|p| p.to_string()).collect(),
            ..Default::default()
        };
        let both = two_passes(
            drifted(&["data/blob", "data/counter"]),
            drifted(&["data/counter", "data/blob", "tmp/x"]),
            std::time::Duration::from_millis(150),
        );
        assert_eq!(both.drift_paths, ["data/blob", "data/counter", "tmp/x"]);
        assert_eq!(both.drift, 3);
        assert_eq!(both.downtime_ms, Some(150));
    }
}
