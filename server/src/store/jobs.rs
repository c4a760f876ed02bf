//! The `jobs` table, as the job runner reads and writes it: what a job needs to start, and
//! its running, progress and end (group-committed: they come in bursts).

use std::path::PathBuf;

use app::model::{
    ContainerStatus, Job, JobFilter, JobKind, JobPhase, JobProgress, JobStatus, JobSummary,
};
use sqlx::Row;

use super::scope::{in_projects, scoped_page};
use super::{execute, job_from_row, query_first, Arg, Db, DbError, SyncConn};
use crate::ids::now_ms;

/// What a job acts on and where the trees are, as the database has it.
pub(crate) struct JobTargets {
    pub(crate) kind: JobKind,
    /// The job's parameters as accepted (JSON).
    pub(crate) params: String,
    pub(crate) target_id: String,
    pub(crate) source_id: String,
    pub(crate) target_server: String,
    pub(crate) source_server: String,
    pub(crate) target_root: PathBuf,
    pub(crate) source_root: PathBuf,
    /// The target's name and SSH key: a copy's new identity.
    pub(crate) target_name: String,
    pub(crate) target_ssh_key: Option<String>,
}

/// How a job ended, for `Db::finish_job`.
pub(crate) struct JobEnd {
    pub(crate) job_id: String,
    pub(crate) status: JobStatus,
    pub(crate) error: Option<String>,
    pub(crate) summary: Option<JobSummary>,
    /// The last progress seen, kept on the finished job to show where it ended.
    pub(crate) last_progress: Option<JobProgress>,
    pub(crate) target_id: String,
    pub(crate) container_status: ContainerStatus,
    pub(crate) container_reason: Option<String>,
    /// Whether the job changed the container: its status and reason are set, and a
    /// summary records its tree's state. `false` leaves the container's row as it was.
    pub(crate) container_changed: bool,
    /// A delete that succeeded: the container is marked deleted in the same commit.
    pub(crate) deleted: bool,
}

/// How many copy, sync and delete jobs one user, and one project, may have queued or
/// running at once.
#[derive(Clone, Copy, Debug)]
pub(crate) struct JobCaps {
    pub(crate) per_user: u64,
    pub(crate) per_project: u64,
}

impl JobCaps {
    /// `Some(TooMany)` if a new job of `user_id` in `project_id` would exceed a cap, counted
    /// in the caller's write (so two writes cannot both take the last place).
    pub(crate) fn exceeded(
        self,
        c: &SyncConn,
        user_id: &str,
        project_id: &str,
    ) -> rusqlite::Result<Option<Admission>> {
        let (by_user, in_project) = counted(c, user_id, project_id)?;
        Ok(
            (by_user >= self.per_user || in_project >= self.per_project).then_some(
                Admission::TooMany {
                    by_user,
                    in_project,
                },
            ),
        )
    }

    /// Says that the write `exceeded` let in has queued its one job (its last statement
    /// done): the counts it read, plus that job, hold for the next admission of the same
    /// transaction while nothing else is written in between.
    pub(crate) fn admitted(c: &SyncConn, user_id: &str, project_id: &str) {
        LAST_COUNTED.with_borrow_mut(|last| {
            *last = last
                .take()
                .filter(|l| l.user_id == user_id && l.project_id == project_id)
                .map(|l| Counted {
                    counts: (l.counts.0 + 1, l.counts.1 + 1),
                    changes: c.total_changes(),
                    ..l
                });
        });
    }
}

/// The active jobs of a user and a project as the writer's transaction last counted them,
/// and the connection's change count then: while that count has not moved, no row has
/// changed since (SQLite counts every row any statement inserts, updates or deletes), so
/// the next admission of the same user and project takes them instead of counting again.
/// A burst of copy requests of one user in one project (`make load` lifts the caps) made
/// each admission count every job the burst had queued before it: rows by the square of
/// the burst, 14 % of doppel's CPU in the burst (perf), half of the group commit's.
/// Forgotten when a transaction begins and whenever writes are rolled back (`commit.rs`:
/// the change count does not go back).
struct Counted {
    user_id: String,
    project_id: String,
    counts: (u64, u64),
    changes: u64,
}

thread_local! {
    // (The writer runs a transaction's writes on one thread, in one call.)
    static LAST_COUNTED: std::cell::RefCell<Option<Counted>> = const { std::cell::RefCell::new(None) };
}

/// Forgets the counts a transaction's admissions left (see [`Counted`]).
pub(super) fn forget_counts() {
    LAST_COUNTED.with_borrow_mut(|last| *last = None);
}

/// The active jobs of `user_id` and of `project_id`: as the last admission left them where
/// nothing changed since, else counted.
fn counted(c: &SyncConn, user_id: &str, project_id: &str) -> rusqlite::Result<(u64, u64)> {
    let changes = c.total_changes();
    let known = LAST_COUNTED.with_borrow(|last| {
        last.as_ref()
            .filter(|l| l.user_id == user_id && l.project_id == project_id)
            .filter(|l| l.changes == changes)
            .map(|l| l.counts)
    });
    let counts = match known {
        Some(counts) => counts,
        None => active_jobs(c, user_id, project_id)?,
    };
    LAST_COUNTED.with_borrow_mut(|last| {
        *last = Some(Counted {
            user_id: user_id.to_string(),
            project_id: project_id.to_string(),
            counts,
            changes,
        })
    });
    Ok(counts)
}

/// What became of a job asked for.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) enum Admission {
    Yes,
    /// A job is already queued or running for its container.
    Busy,
    /// Its user or project is at a cap: the jobs each has queued or running.
    TooMany {
        by_user: u64,
        in_project: u64,
    },
}

/// The jobs list (`Db::jobs`): `$1` a container, `$2` a project, `$3` a status, `$4` a
/// kind, `$5` the page's last job, `$6` the limit, then the projects the caller may see
/// (`scope`: their number; `None`: every project). Each page is read newest first from an
/// index until it is full, never every job sorted (235 ms a page at 200,000 jobs):
/// - one container's: its own (`jobs_container`) merged with those it is the source of
///   (`jobs_source`); the other filters narrow those (few);
/// - else a filter given is written as a plain comparison (a status as its literal, so
///   SQLite sees which partial index holds it), so SQLite reads the page from that
///   filter's index: `jobs_project`, `jobs_kind`, `jobs_live` (queued, running),
///   `jobs_ended`; with none, `jobs_created`. A filter not given is `$n IS NULL`. (A
///   deleted project's are left out by a look-up per job: `project_id IN (...)` would be
///   taken for a filter, and all its jobs read and sorted);
/// - a caller who sees some projects only gets each project's newest (`jobs_project`),
///   then the newest of those (`scope::scoped_page`): walking every job for theirs read
///   all 200,000 for a quiet project.
pub(super) fn jobs_list_sql(
    of_container: bool,
    given: JobsGiven,
    status: Option<JobStatus>,
    scope: Option<usize>,
) -> String {
    let term = |is_given: bool, n: u32, cmp: &str| match (is_given, of_container) {
        (false, _) => format!("${n} IS NULL"),
        (true, false) => format!("{cmp} ${n}"),
        (true, true) => format!("(${n} IS NULL OR {cmp} ${n})"),
    };
    let status = match status {
        Some(s) if !of_container || !s.is_final() => {
            format!("status = '{0}' AND $3 = '{0}'", s.as_str())
        }
        _ => "($3 IS NULL OR status = $3)".to_string(),
    };
    let before = match given.before {
        true => "(created_at, id) < (SELECT created_at, id FROM jobs WHERE id = $5)",
        false => "$5 IS NULL",
    };
    let filters = format!(
        "{} AND {status} AND {} AND {before}
           AND EXISTS (SELECT 1 FROM projects p
                       WHERE p.id = jobs.project_id AND p.deleted_at IS NULL)",
        term(given.project, 2, "project_id ="),
        term(given.kind, 4, "kind ="),
    );
    let newest = "ORDER BY created_at DESC, id DESC LIMIT $6";
    let page = |from: &str, scope: &str| {
        format!("SELECT * FROM jobs WHERE {from} AND {filters}{scope} {newest}")
    };
    if of_container {
        let scope = scope.map_or(String::new(), |n| in_projects("project_id", n, 7));
        // (A job of the container that is its own source, a start or a delete, is in
        // both halves: `UNION` keeps it once.)
        return format!(
            "SELECT * FROM ({}) UNION SELECT * FROM ({}) {newest}",
            page("container_id = $1", &scope),
            page("source_container_id = $1", &scope)
        );
    }
    scoped_page(scope, 7, |scope| page("$1 IS NULL", scope), newest)
}

/// Which of the jobs list's filters were given (their values are bound).
#[derive(Clone, Copy, Debug, Default)]
pub(super) struct JobsGiven {
    pub(super) project: bool,
    pub(super) kind: bool,
    pub(super) before: bool,
}

/// The newest `$1` runs (copy, sync) of every copy, by copy and newest first: from the
/// copies to each one's newest jobs in `jobs_container`. (A window over every job, as it
/// was, read and sorted all of them: 877 ms at 200,000 jobs, now 3 ms.) `CROSS JOIN` keeps
/// SQLite from starting at the jobs. A deleted copy's are not read.
/// `copies`: only the copies `$2`, `$3`, ... (their number), or every one.
pub(super) fn recent_runs_of_copies(copies: Option<usize>) -> String {
    let only = match copies {
        None => String::new(),
        Some(n) => format!(
            " AND c.id IN ({})",
            (0..n)
                .map(|i| format!("${}", i + 2))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    };
    format!(
        "SELECT j.* FROM containers c CROSS JOIN jobs j
         WHERE c.source_container_id IS NOT NULL AND c.deleted_at IS NULL{only}
           AND j.id IN (SELECT l.id FROM jobs l
                        WHERE l.container_id = c.id AND l.kind IN ('copy', 'sync')
                        ORDER BY l.created_at DESC, l.id DESC LIMIT $1)
         ORDER BY j.container_id, j.created_at DESC, j.id DESC"
    )
}

/// The most copies one statement of `recent_runs_of_copies` names.
const COPIES_PER_READ: usize = 500;

/// Whether a job is queued or running for container `$1`: from `jobs_live` alone (the
/// statuses written out, so SQLite sees the query matches its condition; one look-up per
/// status, as `status IN` or `OR` would make it build a temporary list of the two).
pub(super) const CONTAINER_BUSY: &str = "SELECT
        EXISTS (SELECT 1 FROM jobs WHERE status = 'queued' AND container_id = $1)
        OR EXISTS (SELECT 1 FROM jobs WHERE status = 'running' AND container_id = $1)";

/// Whether a job is queued or running for the container: asked before a job is written for
/// it, in the same transaction (writes run one at a time, so nothing comes between). Not
/// an `INSERT ... SELECT ... WHERE NOT EXISTS`: an insert that reads the table it writes
/// makes SQLite stage the row in a temporary table first.
fn container_busy(c: &SyncConn, container_id: &str) -> rusqlite::Result<bool> {
    let busy = query_first(c, CONTAINER_BUSY, &[&container_id], |r| r.get::<_, bool>(0))?;
    busy.transpose().map(|b| b.unwrap_or(false))
}

/// A queued job: a copy, sync, delete or conversion.
pub(super) const INSERT_QUEUED_JOB: &str = "INSERT INTO jobs (id, kind, status, project_id,
        container_id, source_container_id, requested_by, params, idempotency_key, created_at,
        request_fingerprint)
     VALUES ($1, $9, $10, $2, $3, $4, $5, $6, $7, $8, $11)";

/// A start, stop or restart, recorded as running.
pub(super) const INSERT_RECORDED_OP: &str = "INSERT INTO jobs (id, kind, status, project_id,
        container_id, source_container_id, requested_by, params, created_at, started_at)
     VALUES ($1, $2, $3, $4, $5, $5, $6, $7, $8, $8)";

/// Counts the active jobs of a user (`$1`) and of a project (`$2`), each from its partial
/// index alone (`jobs_active_by_user`, `jobs_active_in_project`): the statuses are written
/// out, not bound, so SQLite can tell the query matches the indexes' condition.
pub(super) const ACTIVE_JOBS: &str = "SELECT
        (SELECT COUNT(*) FROM jobs WHERE requested_by = $1 AND status IN ('queued', 'running')),
        (SELECT COUNT(*) FROM jobs WHERE project_id = $2 AND status IN ('queued', 'running'))";

/// The jobs `user_id` has queued or running, and those of `project_id`.
fn active_jobs(c: &SyncConn, user_id: &str, project_id: &str) -> rusqlite::Result<(u64, u64)> {
    let counts = query_first(c, ACTIVE_JOBS, &[&user_id, &project_id], |r| {
        Ok::<_, rusqlite::Error>((r.get::<_, i64>(0)?, r.get::<_, i64>(1)?))
    })?
    .transpose()?;
    let (by_user, in_project) = counts.unwrap_or((0, 0));
    Ok((by_user.max(0) as u64, in_project.max(0) as u64))
}

/// A job row made by a request (a sync, a delete, a start, stop or restart): for
/// `Db::queue_job` and `Db::record_op`.
pub(crate) struct NewJob {
    pub(crate) kind: JobKind,
    pub(crate) job_id: String,
    pub(crate) project_id: String,
    pub(crate) container_id: String,
    pub(crate) source_id: String,
    pub(crate) requested_by: String,
    pub(crate) params: String,
    pub(crate) idempotency_key: Option<String>,
    pub(crate) request_fingerprint: Option<String>,
    pub(crate) now: i64,
}

impl Db {
    /// Jobs as `filter` narrows them, newest first (`limit` of them, older than
    /// `filter.before` if given), of every project (`projects` = `None`) or of these
    /// projects only (those the caller may see). Never of a deleted project.
    pub(crate) async fn jobs(
        &self,
        filter: &JobFilter,
        projects: Option<&[String]>,
        limit: u32,
    ) -> Result<Vec<Job>, DbError> {
        // The scope is in the statement, not applied after the limit: 500 jobs of other
        // projects must not hide this one's.
        let given = JobsGiven {
            project: filter.project_id.is_some(),
            kind: filter.kind.is_some(),
            before: filter.before.is_some(),
        };
        let status = filter.status.as_deref().and_then(JobStatus::parse);
        let sql = jobs_list_sql(
            filter.container_id.is_some(),
            given,
            status,
            projects.map(<[String]>::len),
        );
        // (Ids hold whole seconds: within one, only `created_at` orders jobs, so a page
        // ends where the order says, not at a smaller id.)
        let mut query = sqlx::query(&sql)
            .bind(&filter.container_id)
            .bind(&filter.project_id)
            .bind(&filter.status)
            .bind(&filter.kind)
            .bind(&filter.before)
            .bind(i64::from(limit));
        for id in projects.unwrap_or_default() {
            query = query.bind(id);
        }
        let rows = query.fetch_all(&self.read).await?;
        Ok(rows.iter().map(job_from_row).collect())
    }

    /// The newest `per_copy` runs of every copy (the copy that made it and its syncs: a
    /// start, stop, restart or delete is not a run of its sync), newest first.
    ///
    /// Of every copy, or of `only` these (a caller who sees some of them: what they cannot
    /// see is not read, however many copies the platform has).
    pub(crate) async fn recent_jobs_of_copies(
        &self,
        per_copy: i64,
        only: Option<&[String]>,
    ) -> Result<Vec<Job>, DbError> {
        let Some(only) = only else {
            let rows = sqlx::query(&recent_runs_of_copies(None))
                .bind(per_copy)
                .fetch_all(&self.read)
                .await?;
            return Ok(rows.iter().map(job_from_row).collect());
        };
        let mut jobs = Vec::new();
        for ids in only.chunks(COPIES_PER_READ) {
            let sql = recent_runs_of_copies(Some(ids.len()));
            let mut query = sqlx::query(&sql).bind(per_copy);
            for id in ids {
                query = query.bind(id);
            }
            let rows = query.fetch_all(&self.read).await?;
            jobs.extend(rows.iter().map(job_from_row));
        }
        Ok(jobs)
    }

    /// The job a user started with this idempotency key, if any, and the fingerprint of
    /// the request that started it (`None` for jobs from before fingerprints).
    pub(crate) async fn job_by_idempotency_key(
        &self,
        user_id: &str,
        key: &str,
    ) -> Result<Option<(Job, Option<String>)>, DbError> {
        let row =
            sqlx::query("SELECT * FROM jobs WHERE requested_by = $1 AND idempotency_key = $2")
                .bind(user_id)
                .bind(key)
                .fetch_optional(&self.read)
                .await?;
        Ok(row
            .as_ref()
            .map(|r| (job_from_row(r), r.get("request_fingerprint"))))
    }

    /// Cancels a job that is still queued (a running one is stopped by its runner).
    pub(crate) async fn cancel_if_queued(&self, id: &str) -> Result<(), DbError> {
        self.write(
            // (Its error as the runner records one it stops: the answer to the cancel and
            // every later read agree.)
            "UPDATE jobs SET status = $1, error = $4 WHERE id = $2 AND status = $3",
            vec![
                Arg::arg(JobStatus::Cancelled.as_str()),
                Arg::arg(id),
                Arg::arg(JobStatus::Queued.as_str()),
                Arg::arg("cancelled"),
            ],
        )
        .await?;
        Ok(())
    }

    /// Queues a sync, a delete or a conversion unless a job is queued or running for its
    /// container (`Busy`) or its user or project has `caps` jobs queued or running already,
    /// in one write: SQLite runs writes one at a time, so racing requests cannot both get in.
    pub(crate) async fn queue_job(&self, s: NewJob, caps: JobCaps) -> Result<Admission, DbError> {
        Ok(self
            .transact(move |c| {
                if let Some(over) = caps.exceeded(c, &s.requested_by, &s.project_id)? {
                    return Ok(over);
                }
                if container_busy(c, &s.container_id)? {
                    return Ok(Admission::Busy);
                }
                execute(
                    c,
                    INSERT_QUEUED_JOB,
                    &[
                        &s.job_id,
                        &s.project_id,
                        &s.container_id,
                        &s.source_id,
                        &s.requested_by,
                        &s.params,
                        &s.idempotency_key,
                        &s.now,
                        &s.kind.as_str(),
                        &JobStatus::Queued.as_str(),
                        &s.request_fingerprint,
                    ],
                )?;
                JobCaps::admitted(c, &s.requested_by, &s.project_id);
                Ok::<_, rusqlite::Error>(Admission::Yes)
            })
            .await?)
    }

    /// A start, stop or restart, recorded as a running job (its request does it), unless
    /// a job is queued or running for the container (`None`).
    pub(crate) async fn record_op(&self, s: NewJob) -> Result<Option<Job>, DbError> {
        Ok(self
            .transact(move |c| {
                if container_busy(c, &s.container_id)? {
                    return Ok(None);
                }
                execute(
                    c,
                    INSERT_RECORDED_OP,
                    &[
                        &s.job_id,
                        &s.kind.as_str(),
                        &JobStatus::Running.as_str(),
                        &s.project_id,
                        &s.container_id,
                        &s.requested_by,
                        &s.params,
                        &s.now,
                    ],
                )?;
                // Read back by its key (`RETURNING` would stage the row in a temporary table).
                query_first(c, "SELECT * FROM jobs WHERE id = $1", &[&s.job_id], |row| {
                    job_from_row(row)
                })
            })
            .await?)
    }

    /// How a recorded start, stop or restart ended.
    pub(crate) async fn end_op(
        &self,
        job_id: &str,
        status: JobStatus,
        error: Option<String>,
    ) -> Result<Job, DbError> {
        let id = job_id.to_string();
        Ok(self
            .transact(move |c| {
                query_first(
                    c,
                    "UPDATE jobs SET status = $1, error = $2, finished_at = $3 WHERE id = $4
                     RETURNING *",
                    &[&status.as_str(), &error, &now_ms(), &id],
                    |row| job_from_row(row),
                )?
                .ok_or(rusqlite::Error::QueryReturnedNoRows)
            })
            .await?)
    }

    /// The job queued or running for a container, if any.
    pub(crate) async fn active_job_of(
        &self,
        container_id: &str,
    ) -> Result<Option<String>, DbError> {
        Ok(sqlx::query_scalar(
            "SELECT id FROM jobs WHERE container_id = $1
               AND (status = 'queued' OR status = 'running') LIMIT 1",
        )
        .bind(container_id)
        .fetch_optional(&self.read)
        .await?)
    }

    pub(crate) async fn job(&self, id: &str) -> Result<Option<Job>, DbError> {
        let row = sqlx::query("SELECT * FROM jobs WHERE id = $1")
            .bind(id)
            .fetch_optional(&self.read)
            .await?;
        Ok(row.as_ref().map(job_from_row))
    }

    /// Jobs that a stop left queued or running, oldest first, queued again.
    pub(crate) async fn requeue_interrupted_jobs(&self) -> Result<Vec<String>, DbError> {
        // A start, stop or restart is done by its request: one a stop interrupted ended
        // there (the lifecycle corrects the container's status from what runs).
        self.write(
            "UPDATE jobs SET status = $1, phase = NULL, finished_at = $2,
                error = 'interrupted by a stop of doppel'
             WHERE (status = 'queued' OR status = 'running') AND kind IN ($3, $4, $5)",
            vec![
                Arg::arg(JobStatus::Failed.as_str()),
                Arg::arg(now_ms()),
                Arg::arg(JobKind::Start.as_str()),
                Arg::arg(JobKind::Stop.as_str()),
                Arg::arg(JobKind::Restart.as_str()),
            ],
        )
        .await?;
        let ids: Vec<String> = sqlx::query_scalar(
            "SELECT id FROM jobs WHERE (status = 'queued' OR status = 'running')
                 ORDER BY created_at",
        )
        .fetch_all(&self.read)
        .await?;
        for id in &ids {
            self.write(
                "UPDATE jobs SET status = $1, phase = NULL WHERE id = $2",
                vec![Arg::arg(JobStatus::Queued.as_str()), Arg::arg(id)],
            )
            .await?;
        }
        Ok(ids)
    }

    /// Jobs queued or running that `user_id` started, and in `project_id`: what the caps
    /// count (a request counts them in the write that queues its job).
    #[cfg(test)]
    pub(crate) fn active_jobs_of(
        &self,
        user_id: &str,
        project_id: &str,
    ) -> Result<(u64, u64), DbError> {
        self.read_now(|c| active_jobs(c, user_id, project_id))
    }

    /// Jobs cancelled while queued whose container still says `copying` or `syncing`: the
    /// cancel was recorded but doppel stopped before it finished the job (put the container
    /// back, or mark the copy failed). Only a container's latest job counts, and only while
    /// no other job is queued or running for it.
    pub(crate) async fn cancelled_jobs_left_unfinished(&self) -> Result<Vec<String>, DbError> {
        let ids = sqlx::query_scalar(
            // From the containers (few) to each one's latest job (`jobs_container`), not
            // from every cancelled job.
            "SELECT j.id FROM containers c CROSS JOIN jobs j
             WHERE c.status IN ($1, $2)
               AND j.id = (SELECT l.id FROM jobs l WHERE l.container_id = c.id
                           ORDER BY l.created_at DESC, l.id DESC LIMIT 1)
               AND j.status = $3
               AND NOT EXISTS (SELECT 1 FROM jobs q WHERE q.container_id = c.id
                               AND (q.status = 'queued' OR q.status = 'running'))
             ORDER BY j.created_at",
        )
        .bind(ContainerStatus::Copying.as_str())
        .bind(ContainerStatus::Syncing.as_str())
        .bind(JobStatus::Cancelled.as_str())
        .fetch_all(&self.read)
        .await?;
        Ok(ids)
    }

    /// What a job acts on (after a restart, or for a sync).
    pub(crate) async fn job_targets(&self, job_id: &str) -> Result<JobTargets, DbError> {
        let row = sqlx::query(
            "SELECT j.kind, j.params, j.container_id, j.source_container_id,
                    t.server_id AS target_server, s.server_id AS source_server,
                    ts.storage_root AS target_root,
                    ss.storage_root AS source_root, t.name AS target_name,
                    t.ssh_public_key AS target_ssh_key
             FROM jobs j
             JOIN containers t ON t.id = j.container_id
             JOIN servers ts ON ts.id = t.server_id
             JOIN containers s ON s.id = j.source_container_id
             JOIN servers ss ON ss.id = s.server_id
             WHERE j.id = $1",
        )
        .bind(job_id)
        .fetch_one(&self.read)
        .await?;
        Ok(JobTargets {
            // The CHECK constraint guarantees a known kind.
            kind: JobKind::parse(row.get("kind")).unwrap_or(JobKind::Copy),
            params: row.get("params"),
            target_id: row.get("container_id"),
            source_id: row.get("source_container_id"),
            target_server: row.get("target_server"),
            source_server: row.get("source_server"),
            target_root: PathBuf::from(row.get::<String, _>("target_root")),
            source_root: PathBuf::from(row.get::<String, _>("source_root")),
            target_name: row.get("target_name"),
            target_ssh_key: row.get("target_ssh_key"),
        })
    }

    /// The settled containers on a server in the projects of `excluded` (the copy and its
    /// source), most recently updated first, but those two:
    /// trees a copy onto that server may take content from.
    pub(crate) async fn settled_containers_on(
        &self,
        server_id: &str,
        excluded: [&str; 2],
        limit: i64,
    ) -> Result<Vec<String>, DbError> {
        // Only the projects of the copy and of its source: trees its requester may read.
        // Content from other tenants' trees would tell (reused_bytes) whether they hold a
        // given file, and let them fail the copy by changing it at the right moment.
        Ok(sqlx::query_scalar(
            "SELECT id FROM containers
             WHERE server_id = $1 AND id <> $2 AND id <> $3 AND status IN ($4, $5)
               AND deleted_at IS NULL
               AND project_id IN (SELECT project_id FROM containers WHERE id IN ($2, $3))
             ORDER BY updated_at DESC LIMIT $6",
        )
        .bind(server_id)
        .bind(excluded[0])
        .bind(excluded[1])
        .bind(ContainerStatus::Running.as_str())
        .bind(ContainerStatus::Stopped.as_str())
        .bind(limit)
        .fetch_all(&self.read)
        .await?)
    }

    /// Marks a queued (or interrupted) job running, unless it was cancelled meanwhile
    /// (`None`); `syncing`: its target shows `syncing` from the same commit on.
    /// Copies and syncs running now: (job, its target's name, project, target server and
    /// source server).
    pub(crate) async fn running_transfers(
        &self,
    ) -> Result<Vec<(Job, String, String, String)>, DbError> {
        let rows = sqlx::query(
            "SELECT j.*, t.name AS target_name, t.server_id AS target_server,
                    s.server_id AS source_server
             FROM jobs j
             JOIN containers t ON t.id = j.container_id
             JOIN containers s ON s.id = j.source_container_id
             WHERE j.status = 'running' AND j.kind IN ($1, $2)",
        )
        .bind(JobKind::Copy.as_str())
        .bind(JobKind::Sync.as_str())
        .fetch_all(&self.read)
        .await?;
        Ok(rows
            .iter()
            .map(|r| {
                (
                    job_from_row(r),
                    r.get("target_name"),
                    r.get("target_server"),
                    r.get("source_server"),
                )
            })
            .collect())
    }

    /// Why a queued or running job waits (None: it no longer does); the job as it is now.
    pub(crate) async fn set_job_waiting(
        &self,
        job_id: &str,
        why: Option<String>,
    ) -> Result<Option<Job>, DbError> {
        let id = job_id.to_string();
        Ok(self
            .transact(move |c| {
                query_first(
                    c,
                    "UPDATE jobs SET waiting_for = $1 WHERE id = $2 AND status IN ($3, $4)
                     RETURNING *",
                    &[
                        &why,
                        &id,
                        &JobStatus::Queued.as_str(),
                        &JobStatus::Running.as_str(),
                    ],
                    |row| job_from_row(row),
                )
            })
            .await?)
    }

    pub(crate) async fn start_job(
        &self,
        job_id: &str,
        target: Option<(&str, ContainerStatus)>,
    ) -> Result<Option<Job>, DbError> {
        let (id, target) = (job_id.to_string(), target.map(|(t, s)| (t.to_string(), s)));
        Ok(self
            .transact(move |c| {
                let now = now_ms();
                let running = query_first(
                    c,
                    "UPDATE jobs SET status = $3, started_at = COALESCE(started_at, $1), phase = $4,
                        waiting_for = NULL
                     WHERE id = $2 AND status IN ($5, $3) RETURNING *",
                    &[
                        &now,
                        &id,
                        &JobStatus::Running.as_str(),
                        &JobPhase::Scan.as_str(),
                        &JobStatus::Queued.as_str(),
                    ],
                    |row| job_from_row(row),
                )?;
                if let (Some(_), Some((target, status))) = (&running, &target) {
                    set_container_status(c, target, *status, None, now)?;
                }
                Ok::<_, rusqlite::Error>(running)
            })
            .await?)
    }

    /// A running job's progress.
    pub(crate) async fn record_progress(
        &self,
        job_id: &str,
        progress: &JobProgress,
    ) -> Result<(), DbError> {
        let json = serde_json::to_string(progress).unwrap_or_default();
        let (id, phase) = (job_id.to_string(), progress.phase.as_str());
        self.transact(move |c| {
            execute(
                c,
                "UPDATE jobs SET phase = $1, progress = $2 WHERE id = $3 AND status = $4",
                &[&phase, &json, &id, &JobStatus::Running.as_str()],
            )
        })
        .await?;
        Ok(())
    }

    /// A job's end, its container's status and (when it succeeded) what the tree now is,
    /// in one commit. Returns the job as it ended.
    pub(crate) async fn finish_job(&self, end: JobEnd) -> Result<Job, DbError> {
        let summary_json = end
            .summary
            .as_ref()
            .map(|s| serde_json::to_string(s).unwrap_or_default());
        let progress_json = end
            .last_progress
            .as_ref()
            .map(|p| serde_json::to_string(p).unwrap_or_default());
        Ok(self
            .transact(move |c| {
                let now = now_ms();
                let job = query_first(
                    c,
                    "UPDATE jobs SET status = $1, phase = NULL, waiting_for = NULL, summary = $2, error = $3,
                        finished_at = $4, progress = COALESCE($5, progress)
                     WHERE id = $6 RETURNING *",
                    &[
                        &end.status.as_str(),
                        &summary_json,
                        &end.error,
                        &now,
                        &progress_json,
                        &end.job_id,
                    ],
                    |row| job_from_row(row),
                )?
                .ok_or(rusqlite::Error::QueryReturnedNoRows)?;
                if !end.container_changed {
                    return Ok(job);
                }
                set_container_status(
                    c,
                    &end.target_id,
                    end.container_status,
                    end.container_reason.as_deref(),
                    now,
                )?;
                // A deleted container: out of every list, its name and key free, its
                // snapshots' records gone with their trees.
                if end.deleted {
                    execute(
                        c,
                        "UPDATE containers SET deleted_at = $1, name = name || '~deleted~' || id,
                            ssh_public_key = NULL, interfaces = '[]' WHERE id = $2",
                        &[&now, &end.target_id],
                    )?;
                    execute(
                        c,
                        "DELETE FROM snapshots WHERE container_id = $1",
                        &[&end.target_id],
                    )?;
                } else if let Some(summary) = &end.summary {
                    // What the tree now is, for the next sync and the sync status page.
                    execute(
                        c,
                        "UPDATE containers SET source_state = $1, last_synced_at = $2,
                            file_count = $3, size_bytes = $4
                         WHERE id = $5",
                        &[
                            // The source's state it matches (its own tree differs by its
                            // identity files).
                            &summary.source_root_hash,
                            &now,
                            &(summary.tree_files as i64),
                            &(summary.tree_bytes as i64),
                            &end.target_id,
                        ],
                    )?;
                }
                Ok::<_, rusqlite::Error>(job)
            })
            .await?)
    }
}

/// A container's status and why, in the caller's transaction.
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
