//! Reading and cancelling jobs, and the idempotency keys of the requests that start them.

use app::model::*;

use super::{check_id, check_param_id, internal, Service};
use crate::store::{Admission, JobCaps, NewJob};

/// A job of `kind` on `container` (of `project`; reading `source`) as `user` asks it: its
/// params, and the request's idempotency key with the request's fingerprint.
pub(super) fn new_job(
    kind: JobKind,
    user: &UserInfo,
    (project, container, source): (&str, &str, &str),
    params: &crate::jobs::JobParams,
    (idempotency_key, fingerprint): (Option<String>, String),
) -> Result<NewJob, ApiError> {
    Ok(NewJob {
        kind,
        job_id: crate::ids::new_id(),
        project_id: project.to_string(),
        container_id: container.to_string(),
        source_id: source.to_string(),
        requested_by: user.id.clone(),
        params: serde_json::to_string(params).map_err(internal)?,
        request_fingerprint: idempotency_key.is_some().then_some(fingerprint),
        idempotency_key,
        now: crate::ids::now_ms(),
    })
}

impl Service {
    /// Queues a sync, a delete or a conversion unless a job is queued or running for its container (409
    /// naming that one), announces it as queued, and hands it to the runner.
    pub(super) async fn queue_and_run(&self, new: NewJob) -> Result<Job, ApiError> {
        let (job_id, container_id) = (new.job_id.clone(), new.container_id.clone());
        match self
            .db
            .queue_job(new, self.job_caps())
            .await
            .map_err(internal)?
        {
            Admission::Yes => {}
            Admission::Busy => return Err(self.job_in_the_way(&container_id).await),
            Admission::TooMany {
                by_user,
                in_project,
            } => return Err(self.too_many_jobs(by_user, in_project)),
        }
        // Announced as queued before the runner can announce it running.
        let job = self
            .db
            .job(&job_id)
            .await
            .map_err(internal)?
            .ok_or_else(ApiError::internal)?;
        self.jobs.hub.publish(EventKind::Status, job.clone());
        self.jobs.spawn(job_id, None);
        Ok(job)
    }

    /// The 409 for a request that must wait for the job queued or running for a container.
    pub(super) async fn job_in_the_way(&self, container_id: &str) -> ApiError {
        match self.db.active_job_of(container_id).await {
            Ok(running) => ApiError::new(
                ErrorCode::Conflict,
                format!(
                    "a job is already queued or running for this container; try again once it has ended: {}",
                    running.map(|j| Job::url_of(&j)).unwrap_or_default()
                ),
            ),
            Err(e) => internal(e),
        }
    }

    pub async fn list_jobs(
        &self,
        user: &UserInfo,
        filter: &JobFilter,
    ) -> Result<Vec<Job>, ApiError> {
        let vis = self.visibility(user).await?;
        if let Some(id) = &filter.container_id {
            check_param_id("container_id", id)?;
        }
        if let Some(id) = &filter.before {
            check_param_id("before", id)?;
            // A page after a job the caller may not see would say when it was made: it is
            // not found, like a job that does not exist.
            let visible = self.db.job(id).await.map_err(internal)?;
            if !visible.is_some_and(|j| vis.can_see(&j.project_id)) {
                return Err(ApiError::not_found("job", id).on_field("before"));
            }
        }
        let limit = filter.limit.unwrap_or(JOBS_PAGE);
        if limit == 0 || limit > MAX_JOBS_PAGE {
            return Err(
                ApiError::invalid(format!("limit is 1 to {MAX_JOBS_PAGE}")).on_field("limit")
            );
        }
        if let Some(id) = &filter.project_id {
            check_param_id("project_id", id)?;
            if !vis.can_see(id) {
                return Err(ApiError::not_found("project", id).on_field("project_id"));
            }
        }
        if let Some(s) = &filter.status {
            JobStatus::parse(s).ok_or_else(|| {
                ApiError::invalid(format!(
                    "status {s:?} is not one of queued, running, succeeded, failed, cancelled"
                ))
                .on_field("status")
            })?;
        }
        if let Some(k) = &filter.kind {
            JobKind::parse(k).ok_or_else(|| {
                let kinds: Vec<&str> = JobKind::ALL.iter().map(|k| k.as_str()).collect();
                ApiError::invalid(format!("kind {k:?} is not one of {}", kinds.join(", ")))
                    .on_field("kind")
            })?;
        }
        // Every project's for a platform admin whose token is not scoped; else the
        // projects they may see, each read on its own.
        let projects = vis.narrowed(user);
        let jobs = self
            .db
            .jobs(filter, projects.as_deref(), limit)
            .await
            .map_err(internal)?;
        Ok(jobs
            .into_iter()
            .filter(|j| vis.can_see(&j.project_id))
            .collect())
    }

    pub async fn get_job(&self, user: &UserInfo, id: &str) -> Result<Job, ApiError> {
        check_id("job id", id)?;
        let vis = self.visibility(user).await?;
        match self.db.job(id).await.map_err(internal)? {
            Some(job) if vis.can_see(&job.project_id) => Ok(job),
            _ => Err(ApiError::not_found("job", id)),
        }
    }

    /// `POST /jobs/{id}/cancel`.
    pub async fn cancel_job(&self, user: &UserInfo, id: &str) -> Result<Job, ApiError> {
        let project = self.project_of_job(id).await;
        let target = id.to_string();
        self.audited(user, "job.cancel", &target, project, async {
            let job = self.get_job(user, id).await?;
            self.visibility(user)
                .await?
                .require_operator(&job.project_id, "cancelling this job")?;
            if job.status.is_final() {
                return Err(ApiError::new(
                    ErrorCode::Conflict,
                    match job.status {
                        JobStatus::Cancelled => "the job was cancelled already".to_string(),
                        s => format!("the job has already ended: it {}", s.as_str()),
                    },
                ));
            }
            // A queued job is marked at once (the runner sees it when it gets a slot); a
            // running one stops at its next check and the runner records it.
            self.db.cancel_if_queued(id).await.map_err(internal)?;
            self.jobs.cancel(id);
            self.get_job(user, id).await
        })
        .await
    }

    /// The caps on jobs queued or running, per user and per project (one user cannot fill
    /// the queue, and the disks, for everyone): checked in the write that queues a job, so
    /// concurrent requests cannot pass one together.
    pub(super) fn job_caps(&self) -> JobCaps {
        JobCaps {
            per_user: self.limits.per_user,
            per_project: self.limits.per_project,
        }
    }

    /// The 429 for a job refused at a cap (`by_user`, `in_project`: the jobs queued or
    /// running when it was refused).
    pub(super) fn too_many_jobs(&self, by_user: u64, in_project: u64) -> ApiError {
        let (per_user, per_project) = (self.limits.per_user, self.limits.per_project);
        let message = if by_user >= per_user {
            format!(
                "you have {by_user} copy and sync jobs queued or running (at most \
                 {per_user}); wait for some to finish"
            )
        } else {
            format!(
                "the project has {in_project} copy and sync jobs queued or running (at most \
                 {per_project}); wait for some to finish"
            )
        };
        ApiError::new(ErrorCode::TooManyRequests, message)
    }

    /// The job this user started with this idempotency key, if any. The key stands for
    /// one request: used again for a different one (`fingerprint` differs), it is refused
    /// rather than answered with a job the request did not ask for.
    pub(super) async fn job_by_idempotency_key(
        &self,
        user: &UserInfo,
        key: &str,
        fingerprint: &str,
    ) -> Result<Option<Job>, ApiError> {
        match self
            .db
            .job_by_idempotency_key(&user.id, key)
            .await
            .map_err(internal)?
        {
            // 409, as for any request that conflicts with what the server holds (here: what
            // the key was first used for).
            Some((job, Some(first))) if first != fingerprint => Err(ApiError::new(
                ErrorCode::Conflict,
                format!(
                    "this Idempotency-Key was already used for a different request (job {}); \
                     send a new key with a new request",
                    Job::url_of(&job.id)
                ),
            )),
            Some((job, _)) => Ok(Some(job)),
            None => Ok(None),
        }
    }
}

/// What a request with an Idempotency-Key was: its operation, target and body, hashed.
pub(super) fn request_fingerprint(parts: &[&str]) -> String {
    let mut h = blake3::Hasher::new();
    for p in parts {
        h.update(&(p.len() as u64).to_le_bytes());
        h.update(p.as_bytes());
    }
    h.finalize().to_hex().to_string()
}

/// An `Idempotency-Key` as given: 1 to 200 visible ASCII characters.
pub(super) fn check_idempotency_key(key: Option<&str>) -> Result<Option<String>, ApiError> {
    match key {
        None => Ok(None),
        Some(k)
            if !k.is_empty() && k.len() <= 200 && k.bytes().all(|b| (0x21..=0x7e).contains(&b)) =>
        {
            Ok(Some(k.to_string()))
        }
        Some(_) => Err(ApiError::invalid(
            "Idempotency-Key must be 1 to 200 visible ASCII characters",
        )),
    }
}

/// The lowest bandwidth limit there is (64 KiB/s): below it a transfer's pieces would
/// wait seconds each.
pub const MIN_BWLIMIT: u64 = 64 << 10;

/// The most jobs a page of `GET /jobs` may hold (`JOBS_PAGE` unless its `limit` says).
const MAX_JOBS_PAGE: u32 = 500;

/// A bandwidth limit as given (`?bwlimit=`, a server's limit): bytes a second, with an
/// optional K, M or G (powers of 1024, as rsync counts). None: no limit.
pub(super) fn parse_bwlimit(text: Option<&str>) -> Result<Option<u64>, ApiError> {
    let Some(text) = text.map(str::trim) else {
        return Ok(None);
    };
    // (Beyond any link, a limit of zettabytes a second is as good as none.)
    let rate = crate::config::parse_size(text);
    match rate {
        Some(r) if r >= MIN_BWLIMIT => Ok(Some(r)),
        Some(_) => Err(ApiError::new(
            ErrorCode::Unprocessable,
            format!("bwlimit: at least 64K (bytes a second), not {text:?}"),
        )
        .on_field("bwlimit")),
        None => Err(ApiError::new(
            ErrorCode::Unprocessable,
            format!("bwlimit: bytes a second, as a number with an optional K, M or G (e.g. 50M or 1.5M), not {text:?}"),
        )
        .on_field("bwlimit")),
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use app::model::*;

    use crate::config::DataConfig;
    use crate::jobs::Limits;
    use crate::serve::{prepare, RuntimeConfig, ServeConfig};
    use crate::service::Service;

    async fn start(data_dir: &std::path::Path) -> std::sync::Arc<Service> {
        let cfg = ServeConfig {
            addr: ([127, 0, 0, 1], 0).into(),
            data: DataConfig {
                data_dir: data_dir.to_path_buf(),
                database_url: None,
            },
            demo: true,
            site_root: data_dir.join("site"),
            limits: Limits {
                global: 1,
                per_server: 1,
                ..Default::default()
            },
            conn: Default::default(),
            // A unit test has no doppel binary for the shim: containers do not run here
            // (tests/running.rs runs them).
            runtime: RuntimeConfig {
                disabled: true,
                ..RuntimeConfig::this_binary()
            },
            agents_addr: None,
        };
        prepare(&cfg).await.unwrap().service
    }

    async fn admin(svc: &Service) -> UserInfo {
        let token = crate::auth::create_token(svc.db(), "admin", "t")
            .await
            .unwrap();
        svc.user_for_token(&token).await.unwrap().unwrap()
    }

    async fn status_becomes(svc: &Service, user: &UserInfo, id: &str, want: ContainerStatus) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let c = svc.get_container(user, id).await.unwrap();
            if c.summary.status == want {
                return;
            }
            assert!(Instant::now() < deadline, "still {:?}", c.summary.status);
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The container of this name.
    async fn named(svc: &Service, user: &UserInfo, name: &str) -> ContainerSummary {
        svc.list_containers(user, None)
            .await
            .unwrap()
            .into_iter()
            .find(|c| c.name == name)
            .unwrap()
    }

    /// A queued copy (every job slot held) of web-app.
    async fn queued_copy(svc: &Service, user: &UserInfo, name: &str) -> CopyStarted {
        let web_app = named(svc, user, "web-app").await;
        let req = CopyRequest {
            target_project_id: web_app.project_id.clone(),
            name: Some(name.into()),
            ..Default::default()
        };
        let started = svc
            .copy_container(user, &web_app.id, req, None, &TransferOptions::default())
            .await
            .unwrap();
        assert_eq!(started.job.status, JobStatus::Queued);
        started
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_copy_cancelled_while_queued_fails_at_once_and_after_a_restart() {
        let tmp = tempfile::tempdir().unwrap();
        let svc = start(tmp.path()).await;
        let user = admin(&svc).await;
        let held = svc.jobs.hold_every_slot().await;
        let started = queued_copy(&svc, &user, "cancelled-early").await;
        let answer = svc.cancel_job(&user, &started.job.id).await.unwrap();
        // The answer says what every later read says.
        assert_eq!(answer.status, JobStatus::Cancelled);
        assert_eq!(answer.error.as_deref(), Some("cancelled"));
        // Not `copying` until a slot frees: failed now, with the slots still held.
        status_becomes(
            &svc,
            &user,
            &started.container.summary.id,
            ContainerStatus::Failed,
        )
        .await;

        // Cancelled, then doppel stops before the runner finished the job: the next start
        // does it (the slots stay held, so this runner never gets to).
        let started = queued_copy(&svc, &user, "cancelled-then-stopped").await;
        svc.db().cancel_if_queued(&started.job.id).await.unwrap();
        std::mem::forget(held);
        let again = start(tmp.path()).await;
        let c = again
            .get_container(&user, &started.container.summary.id)
            .await
            .unwrap();
        assert_eq!(c.summary.status, ContainerStatus::Failed, "{c:?}");
        let job = again.get_job(&user, &started.job.id).await.unwrap();
        assert_eq!(job.status, JobStatus::Cancelled);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn copies_and_snapshots_of_a_container_wait_while_it_is_written() {
        let tmp = tempfile::tempdir().unwrap();
        let svc = start(tmp.path()).await;
        let user = admin(&svc).await;
        let web_app = named(&svc, &user, "web-app").await;
        // What a sync of web-app would hold while it changes the tree.
        let writing = svc.jobs.lock_containers(&[], &[&web_app.id]).await;
        let snapshot = {
            let svc = svc.clone();
            let (user, id) = (user.clone(), web_app.id.clone());
            tokio::spawn(async move { svc.create_snapshot(&user, &id, "during-sync").await })
        };
        let req = CopyRequest {
            target_project_id: web_app.project_id.clone(),
            name: Some("copy-during-sync".into()),
            ..Default::default()
        };
        let copy = svc
            .copy_container(&user, &web_app.id, req, None, &TransferOptions::default())
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert!(!snapshot.is_finished(), "the snapshot waits for the writer");
        let job = svc.get_job(&user, &copy.job.id).await.unwrap();
        assert_eq!(
            job.status,
            JobStatus::Queued,
            "the copy waits for the writer"
        );
        drop(writing);
        let snap = snapshot.await.unwrap().unwrap();
        assert_eq!(snap.name, "during-sync");
        // Done copying; without a runtime the copy is stopped (and says why).
        status_becomes(
            &svc,
            &user,
            &copy.container.summary.id,
            ContainerStatus::Stopped,
        )
        .await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_start_removes_snapshot_trees_no_snapshot_records() {
        let tmp = tempfile::tempdir().unwrap();
        let svc = start(tmp.path()).await;
        let user = admin(&svc).await;
        let web_app = named(&svc, &user, "web-app").await;
        let kept = svc.list_snapshots(&user, &web_app.id).await.unwrap();
        assert!(!kept.is_empty(), "the demo has a snapshot");
        let root = svc
            .db()
            .servers()
            .await
            .unwrap()
            .into_iter()
            .find(|s| s.id == web_app.server_id)
            .unwrap()
            .storage_root;
        let orphan = crate::config::snapshot_place(
            std::path::Path::new(&root),
            &web_app.id,
            &crate::ids::new_id(),
        );
        std::fs::create_dir_all(orphan.root.join("etc")).unwrap();
        std::fs::write(orphan.root.join("etc/half"), b"x").unwrap();
        std::fs::create_dir_all(&orphan.state_dir).unwrap();
        let again = start(tmp.path()).await;
        assert!(!orphan.root.exists() && !orphan.state_dir.exists());
        let still = again.list_snapshots(&user, &web_app.id).await.unwrap();
        assert_eq!(still, kept);
        let place =
            crate::config::snapshot_place(std::path::Path::new(&root), &web_app.id, &kept[0].id);
        assert!(place.root.exists(), "recorded snapshots stay");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_requests_cannot_queue_past_the_cap_together() {
        let tmp = tempfile::tempdir().unwrap();
        let svc = start(tmp.path()).await;
        let user = admin(&svc).await;
        let _held = svc.jobs.hold_every_slot().await;
        let cap = Limits::default().per_user;
        for i in 0..cap - 2 {
            queued_copy(&svc, &user, &format!("queued-{i}")).await;
        }
        // Room for two more; ten ask at once (each reads the count before any commits).
        let web_app = named(&svc, &user, "web-app").await;
        let asks = (0..10).map(|i| {
            let (svc, user, web_app) = (svc.clone(), user.clone(), web_app.clone());
            tokio::spawn(async move {
                let req = CopyRequest {
                    target_project_id: web_app.project_id.clone(),
                    name: Some(format!("at-once-{i}")),
                    ..Default::default()
                };
                svc.copy_container(&user, &web_app.id, req, None, &TransferOptions::default())
                    .await
            })
        });
        let answers: Vec<_> = futures::future::join_all(asks).await;
        let accepted = answers
            .iter()
            .filter(|a| a.as_ref().unwrap().is_ok())
            .count();
        for a in answers.iter().map(|a| a.as_ref().unwrap()) {
            if let Err(e) = a {
                assert_eq!(e.code, ErrorCode::TooManyRequests, "{e}");
            }
        }
        assert_eq!(accepted, 2);
        let (by_user, _) = svc
            .db()
            .active_jobs_of(&user.id, &web_app.project_id)
            .unwrap();
        assert_eq!(by_user, cap);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_user_queueing_more_than_the_cap_gets_429_and_others_jobs_still_run() {
        let tmp = tempfile::tempdir().unwrap();
        let svc = start(tmp.path()).await;
        let user = admin(&svc).await;
        let held = svc.jobs.hold_every_slot().await;
        for i in 0..Limits::default().per_user {
            queued_copy(&svc, &user, &format!("queued-{i}")).await;
        }
        let web_app = named(&svc, &user, "web-app").await;
        let req = CopyRequest {
            target_project_id: web_app.project_id.clone(),
            name: Some("one-too-many".into()),
            ..Default::default()
        };
        let err = svc
            .copy_container(&user, &web_app.id, req, None, &TransferOptions::default())
            .await
            .unwrap_err();
        assert_eq!(err.code, ErrorCode::TooManyRequests, "{err}");
        assert!(err.message.contains("wait for some to finish"), "{err}");
        let staging = named(&svc, &user, "web-app-staging").await;
        let err = svc
            .sync_container(&user, &staging.id, None, &TransferOptions::default())
            .await
            .unwrap_err();
        assert_eq!(err.code, ErrorCode::TooManyRequests, "{err}");
        // Another user (the demo's operator) still gets a job in, and it runs.
        let token = crate::auth::create_token(svc.db(), "alice", "t")
            .await
            .unwrap();
        let alice = svc.user_for_token(&token).await.unwrap().unwrap();
        let job = svc
            .sync_container(&alice, &staging.id, None, &TransferOptions::default())
            .await
            .unwrap();
        drop(held);
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let j = svc.get_job(&alice, &job.id).await.unwrap();
            if j.status.is_final() {
                assert_eq!(j.status, JobStatus::Succeeded, "{j:?}");
                break;
            }
            assert!(Instant::now() < deadline, "alice's sync did not run");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}
