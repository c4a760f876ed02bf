//! The database, and the only module that names a database driver: the rest of doppel asks
//! it by name (`Db::container`, `Db::finish_job`, ...), so another database can sit beside
//! SQLite here.
//!
//! SQLite by default (a file in the data dir, WAL mode so the admin subcommands can work
//! beside a running server). The SQL sticks to what PostgreSQL also accepts: `$n`
//! parameters, BIGINT millisecond times, TEXT JSON, no SQLite-only functions.
//!
//! Reads and writes go through different connections. SQLite lets one connection write at
//! a time; when several connections of one process race for that lock, the losers sleep in
//! SQLite's busy handler (1, 2, 5, 10 … ms) and a burst of requests waits on sleeps while
//! the cores idle. So every write goes through one connection, the writer, where writers
//! queue in order and none ever sleeps, while `read` (read-only sqlx connections, which WAL
//! lets run beside the writer) serves every query that changes nothing.
//!
//! Writes go through `Db::transact` (and `Db::write`, one statement): a task takes every
//! write queued at that moment and runs them in one transaction on the writer (group
//! commit, `commit.rs`): first as they are, and only if one of them fails, again with a
//! savepoint each, so the failed one is undone alone. A burst of requests then costs one
//! commit, not one per request; and since the task, not the request, runs the write, a
//! client that hangs up mid-request cannot leave a write half done.
//!
//! The writer and `Db::read_now` (a short read on the calling thread, for the copy
//! request) use rusqlite over the same SQLite library as sqlx: sqlx runs each statement on a
//! thread of the connection's own and sends the request and every row across, which was
//! most of what a copy request cost (`make load`, perf). Their SQL is the same portable
//! SQL (`$1` parameters, bound by number: `sql.rs`).

mod audit;
mod commit;
mod containers;
mod jobs;
mod migrate;
mod projects;
mod rows;
mod runs;
mod scope;
mod snapshots;
mod sql;
mod users;

pub(crate) use containers::{HostTree, ImportedContainer, NewCopy, Refusal};
pub(crate) use jobs::{Admission, JobCaps, JobEnd, NewJob};
pub(crate) use projects::ServerRow;
pub(crate) use rows::{job_from_row, ContainerRow, CONTAINER_SELECT};
pub(crate) use runs::{JsonColumn, NetworkRow, RunRecord};
pub(crate) use snapshots::NewSnapshot;
pub(crate) use sql::{execute, is_unique_violation, query_first, unique_violation, Arg, Cols};

use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use parking_lot::Mutex;
use rusqlite::OpenFlags;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::SqlitePool;
use std::sync::Arc;
use tokio::sync::mpsc;

/// A connection for synchronous statements: the writer's (in `Db::transact`) or a read
/// connection (in `Db::read_now`).
pub use rusqlite::Connection as SyncConn;

#[derive(Clone)]
pub struct Db {
    /// Read-only connections, for queries that change nothing.
    pub(crate) read: SqlitePool,
    /// The one connection every write goes through, from the group-commit task.
    writer: Arc<Mutex<SyncConn>>,
    /// Writes waiting for the group-commit task (`transact`).
    batched: mpsc::UnboundedSender<Box<dyn commit::Queued>>,
    /// Idle read-only connections for `read_now`.
    sync_reads: Arc<SyncReads>,
}

/// An error of either driver.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error(transparent)]
    Sqlx(#[from] sqlx::Error),
    #[error(transparent)]
    Sqlite(#[from] rusqlite::Error),
}

impl DbError {
    /// A UNIQUE constraint said no (a name or key already taken).
    pub fn is_unique_violation(&self) -> bool {
        match self {
            DbError::Sqlx(e) => is_unique_violation(e),
            DbError::Sqlite(e) => unique_violation(e).is_some(),
        }
    }
}

/// Opens (creating if needed) the database at `url` and brings its schema up to date.
pub async fn connect(url: &str) -> Result<Db, sqlx::Error> {
    // SQLite counts the memory it holds under a lock it takes on every allocation, shared
    // by all connections: only for `sqlite3_memory_used`, which doppel never asks. Off,
    // before SQLite starts (where it already has, SQLite says no and nothing changes).
    static NO_MEMORY_STATUS: std::sync::Once = std::sync::Once::new();
    NO_MEMORY_STATUS.call_once(|| unsafe {
        rusqlite::ffi::sqlite3_config(rusqlite::ffi::SQLITE_CONFIG_MEMSTATUS, 0);
    });
    let opts = SqliteConnectOptions::from_str(url)?
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        .synchronous(SqliteSynchronous::Normal)
        .foreign_keys(true)
        // Only other processes (the admin subcommands) can hold the write lock now.
        .busy_timeout(BUSY_TIMEOUT)
        // Pages come from the page cache by memory mapping, not a read() per page.
        .pragma("mmap_size", MMAP_SIZE)
        // Savepoint journals and sort buffers in memory, not in temporary files (group
        // commit opens a savepoint per write).
        .pragma("temp_store", "memory");
    let path = opts.get_filename().to_path_buf();
    let config = |e: rusqlite::Error| sqlx::Error::Configuration(e.into());
    // The writer makes the file if needed, sets WAL mode (which stays with the file) and
    // brings the schema up to date.
    let writer = open_writer(&path).map_err(config)?;
    migrate::migrate(&writer).map_err(config)?;
    let writer = Arc::new(Mutex::new(writer));
    // One read connection opened now: the first request does not pay for it, and a
    // database that cannot be read this way fails the start, not a request.
    let first = open_read_only(&path).map_err(config)?;
    let sync_reads = Arc::new(SyncReads {
        path,
        idle: Mutex::new(vec![first]),
    });
    let read = SqlitePoolOptions::new()
        .max_connections(8)
        .test_before_acquire(false)
        .connect_with(opts.create_if_missing(false).read_only(true))
        .await?;
    let (batched, queue) = mpsc::unbounded_channel();
    tokio::spawn(commit::group_commit(writer.clone(), queue));
    Ok(Db {
        read,
        writer,
        batched,
        sync_reads,
    })
}

const BUSY_TIMEOUT: Duration = Duration::from_secs(10);
const MMAP_SIZE: &str = "268435456";

impl Db {
    /// Runs `read` on this thread, on a read-only connection: for short reads on the hot
    /// paths (a few tens of microseconds, which a request would spend waiting for the
    /// answer from a connection's thread anyway). WAL readers never wait for the writer.
    pub fn read_now<T>(
        &self,
        read: impl FnOnce(&SyncConn) -> rusqlite::Result<T>,
    ) -> Result<T, DbError> {
        let reads = &self.sync_reads;
        let idle = reads.idle.lock().pop();
        let conn = match idle {
            Some(conn) => conn,
            None => open_read_only(&reads.path)?,
        };
        let result = read(&conn);
        let mut idle = reads.idle.lock();
        if idle.len() < SyncReads::MAX_IDLE {
            idle.push(conn);
        }
        Ok(result?)
    }
}

/// Read-only connections for `read_now`, kept between reads.
struct SyncReads {
    path: PathBuf,
    idle: Mutex<Vec<SyncConn>>,
}

impl SyncReads {
    /// More than the threads that read at once (the runtime's workers) is never needed.
    const MAX_IDLE: usize = 8;
}

/// The writer: foreign keys enforced; a writing admin subcommand beside the server is
/// waited for, not failed.
fn open_writer(path: &Path) -> rusqlite::Result<SyncConn> {
    let conn = SyncConn::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_WRITE
            | OpenFlags::SQLITE_OPEN_CREATE
            | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    conn.busy_timeout(BUSY_TIMEOUT)?;
    conn.query_row("PRAGMA journal_mode = WAL", [], |_| Ok(()))?;
    conn.pragma_update(None, "foreign_keys", true)?;
    conn.pragma_update(None, "synchronous", "NORMAL")?;
    conn.pragma_update(None, "mmap_size", MMAP_SIZE)?;
    // Savepoint journals and sort buffers in memory, not in temporary files (group commit
    // may take a savepoint per write).
    conn.pragma_update(None, "temp_store", "MEMORY")?;
    conn.set_prepared_statement_cache_capacity(64);
    Ok(conn)
}

fn open_read_only(path: &Path) -> rusqlite::Result<SyncConn> {
    let conn = SyncConn::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    conn.busy_timeout(BUSY_TIMEOUT)?;
    conn.pragma_update(None, "mmap_size", MMAP_SIZE)?;
    conn.set_prepared_statement_cache_capacity(64);
    Ok(conn)
}

impl Db {
    /// Closes the read pool, then folds the WAL into the database file (at a graceful stop).
    pub async fn close(&self) {
        self.sync_reads.idle.lock().clear();
        self.read.close().await;
        // The writer folds the WAL into the database file: the last one out.
        let _ = self
            .writer
            .lock()
            .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()));
    }
}

#[cfg(test)]
mod tests {
    use super::sql::explain::{opcodes, plan};
    use super::*;
    use app::model::{AuditEntry, AuditFilter};

    async fn db() -> (tempfile::TempDir, Db) {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("t.db").display());
        let db = connect(&url).await.unwrap();
        db.write("CREATE TABLE t (k TEXT PRIMARY KEY, v INTEGER)", vec![])
            .await
            .unwrap();
        (dir, db)
    }

    /// Inserts (k, v) and then (k2, v): the second fails when k2 is taken, and then the
    /// first must not stay either.
    async fn insert_pair(db: &Db, k: &str, k2: &str, v: i64) -> Result<i64, rusqlite::Error> {
        let (k, k2) = (k.to_string(), k2.to_string());
        db.transact(move |c| {
            for key in [&k, &k2] {
                execute(c, "INSERT INTO t (k, v) VALUES ($1, $2)", &[key, &v])?;
            }
            Ok(v)
        })
        .await
    }

    #[tokio::test]
    async fn writes_queued_together_commit_together_and_a_failed_one_leaves_nothing() {
        let (_d, db) = db().await;
        // 100 writes at once: one in ten collides with a key taken before.
        insert_pair(&db, "taken", "taken-too", 0).await.unwrap();
        let writes = (1..=100).map(|i| {
            let db = db.clone();
            tokio::spawn(async move {
                let second = if i % 10 == 0 {
                    "taken".to_string()
                } else {
                    format!("b{i}")
                };
                insert_pair(&db, &format!("a{i}"), &second, i).await
            })
        });
        let results = futures::future::join_all(writes).await;
        for (i, r) in (1..=100).zip(results) {
            match r.unwrap() {
                Ok(v) => assert_eq!(v, i, "each write gets its own answer"),
                Err(e) => {
                    assert_eq!(i % 10, 0, "write {i} failed: {e}");
                    assert!(unique_violation(&e).is_some(), "{e}");
                }
            }
        }
        let rows: Vec<(String, i64)> = sqlx::query_as("SELECT k, v FROM t ORDER BY v, k")
            .fetch_all(&db.read)
            .await
            .unwrap();
        let mut want = vec![("taken".to_string(), 0), ("taken-too".to_string(), 0)];
        for i in (1..=100).filter(|i| i % 10 != 0) {
            want.push((format!("a{i}"), i));
            want.push((format!("b{i}"), i));
        }
        want.sort_by(|a, b| (a.1, &a.0).cmp(&(b.1, &b.0)));
        assert_eq!(rows, want, "the failed writes left no half behind");
    }

    #[tokio::test]
    async fn a_write_that_panics_fails_alone_and_the_writer_carries_on() {
        let (_d, db) = db().await;
        let panicked = tokio::spawn({
            let db = db.clone();
            async move {
                db.transact(|c| {
                    execute(c, "INSERT INTO t (k, v) VALUES ('half', 1)", &[])?;
                    if !c.is_autocommit() {
                        panic!("a bug in a write");
                    }
                    Ok::<_, rusqlite::Error>(())
                })
                .await
            }
        });
        let after = insert_pair(&db, "x", "y", 7);
        let (panicked, after) = tokio::join!(panicked, after);
        assert!(panicked.unwrap().is_err(), "its caller hears of it");
        assert_eq!(after.unwrap(), 7, "later writes still work");
        let keys: Vec<String> = sqlx::query_scalar("SELECT k FROM t ORDER BY k")
            .fetch_all(&db.read)
            .await
            .unwrap();
        assert_eq!(keys, ["x", "y"], "nothing of the panicked write stays");
    }

    #[tokio::test]
    async fn read_now_sees_what_was_committed_binds_by_number_and_cannot_write() {
        let (_d, db) = db().await;
        insert_pair(&db, "a", "b", 3).await.unwrap();
        // `$2` comes first: it is still bound to the second argument.
        let sql = "SELECT k FROM t WHERE v = $2 AND k <> $1";
        let other = db.read_now(|c| query_first(c, sql, &[&"a", &3], |r| r.col::<String>("k")));
        assert_eq!(other.unwrap().as_deref(), Some("b"));
        let none = db.read_now(|c| query_first(c, sql, &[&"a", &4], |r| r.col::<String>("k")));
        assert_eq!(none.unwrap(), None);
        let short = db.read_now(|c| query_first(c, sql, &[&"a"], |r| r.col::<String>("k")));
        assert!(
            matches!(
                short,
                Err(DbError::Sqlite(rusqlite::Error::InvalidParameterCount(
                    1, 2
                )))
            ),
            "{short:?}"
        );
        let err = db
            .read_now(|c| execute(c, "INSERT INTO t (k, v) VALUES ('x', 1)", &[]))
            .unwrap_err();
        assert!(err.to_string().contains("readonly"), "{err}");
    }

    /// Every copy and sync request counts its user's and project's active jobs: from the
    /// partial indexes of active jobs alone, not from each active job's row (a statement
    /// whose statuses were bound as parameters would not match the indexes' condition).
    #[tokio::test]
    async fn the_caps_count_active_jobs_from_their_partial_indexes_alone() {
        // The statuses it names are the active ones.
        let (queued, running) = (
            app::model::JobStatus::Queued.as_str(),
            app::model::JobStatus::Running.as_str(),
        );
        let named = format!("status IN ('{queued}', '{running}')");
        assert_eq!(jobs::ACTIVE_JOBS.matches(&named).count(), 2);
        let migration = include_str!("../../migrations/0012_active_jobs.sql");
        assert_eq!(migration.matches(&named).count(), 2);
        let (_d, db) = db().await;
        let plan = db.read_now(|c| Ok(plan(c, jobs::ACTIVE_JOBS))).unwrap();
        for index in ["jobs_active_by_user", "jobs_active_in_project"] {
            assert!(
                plan.contains(&format!("USING COVERING INDEX {index} ")),
                "{index} not used:\n{plan}"
            );
        }
        assert!(!plan.contains("SCAN jobs"), "{plan}");
    }

    /// A copy's admission checks its name, ignoring case, against its project's containers, and
    /// a copy without a name looks for the names its source's name starts: both by name, in
    /// `containers_name_nocase`, not by reading every container of the project (which made
    /// each copy of a burst into one project slower than the one before it). A copy given an
    /// SSH key looks for it in the index of keys, not in every container.
    #[tokio::test]
    async fn a_copy_looks_up_names_and_keys_in_indexes() {
        let (_d, db) = db().await;
        let plan_of = |sql: &str| db.read_now(|c| Ok(plan(c, sql))).unwrap();
        let insert = plan_of(containers::PROJECT_AND_NAME);
        assert!(
            insert.contains(
                "SEARCH containers USING INDEX containers_name_nocase (project_id=? AND name=?)"
            ),
            "{insert}"
        );
        let prefixed = plan_of(containers::NAMES_STARTING_WITH);
        assert!(
            prefixed.contains(
                "SEARCH containers USING INDEX containers_name_nocase (project_id=? AND name>? AND name<?)"
            ),
            "{prefixed}"
        );
        // A key in use, with any comment: from the index of keys too.
        let key = plan_of(containers::KEY_IN_USE);
        assert!(
            key.contains("(ssh_public_key=?)")
                && key.contains("(ssh_public_key>? AND ssh_public_key<?)"),
            "{key}"
        );
        assert!(!key.contains("SCAN containers"), "{key}");
    }

    /// What a copy, sync, delete, conversion or start request writes: no statement builds a
    /// temporary table or index (an `IN` list in a CHECK did on every insert, an insert
    /// reading the table it writes staged its row in one), and the look-ups before them read
    /// indexes.
    #[tokio::test]
    async fn admissions_write_without_temporary_tables() {
        let (_d, db) = db().await;
        for sql in [
            containers::INSERT_COPY,
            containers::PROJECT_AND_NAME,
            jobs::INSERT_QUEUED_JOB,
            jobs::INSERT_RECORDED_OP,
            jobs::CONTAINER_BUSY,
            audit::INSERT_AUDIT,
        ] {
            let ops = db.read_now(|c| Ok(opcodes(c, sql))).unwrap();
            assert!(ops.iter().any(|op| op == "Halt"), "{sql}: {ops:?}");
            assert!(
                !ops.iter().any(|op| op == "OpenEphemeral"),
                "{sql}: {ops:?}"
            );
        }
        let busy = db.read_now(|c| Ok(plan(c, jobs::CONTAINER_BUSY))).unwrap();
        assert!(
            busy.contains("USING COVERING INDEX jobs_live (status=? AND container_id=?)"),
            "{busy}"
        );
    }

    /// Jobs pile up (a synced copy leaves hundreds a day): the jobs list and the sync
    /// status page read index ranges, newest first, never every job and a sort of them.
    #[tokio::test]
    async fn job_lists_read_the_newest_jobs_from_indexes() {
        let (_d, db) = db().await;
        let plan_of = |sql: &str| db.read_now(|c| Ok(plan(c, sql))).unwrap();
        use app::model::JobStatus;
        use jobs::{jobs_list_sql, JobsGiven};
        use scope::MERGED_PROJECTS;
        let none = JobsGiven::default();
        for before in [false, true] {
            let given = |project: bool, kind: bool| JobsGiven {
                project,
                kind,
                before,
            };
            let page = plan_of(&jobs_list_sql(false, given(false, false), None, None));
            assert!(page.contains("USING INDEX jobs_created"), "{page}");
            assert!(!page.contains("TEMP B-TREE"), "{page}");
            // A filter given: its index, newest first, with no sort.
            for (filter, status, index) in [
                (given(true, false), None, "jobs_project (project_id=?"),
                (given(false, true), None, "jobs_kind (kind=?"),
                (
                    given(false, false),
                    Some(JobStatus::Queued),
                    "jobs_live (status=?)",
                ),
                (
                    given(false, false),
                    Some(JobStatus::Running),
                    "jobs_live (status=?)",
                ),
                (
                    given(false, false),
                    Some(JobStatus::Succeeded),
                    "jobs_ended (status=?",
                ),
                (
                    given(false, false),
                    Some(JobStatus::Failed),
                    "jobs_ended (status=?",
                ),
                (
                    given(false, false),
                    Some(JobStatus::Cancelled),
                    "jobs_ended (status=?",
                ),
            ] {
                let page = plan_of(&jobs_list_sql(false, filter, status, None));
                assert!(
                    page.contains(&format!("SEARCH jobs USING INDEX {index}")),
                    "{page}"
                );
                if !status.is_some_and(|s| !s.is_final()) {
                    // (The live ones are few: sorted.)
                    assert!(!page.contains("TEMP B-TREE"), "{page}");
                    assert_eq!(page.contains("created_at<?"), before, "{page}");
                }
            }
            // A caller who sees some projects: each project's page from `jobs_project`.
            for projects in [1, 3, MERGED_PROJECTS] {
                let scoped = plan_of(&jobs_list_sql(
                    false,
                    given(false, false),
                    None,
                    Some(projects),
                ));
                assert_eq!(
                    scoped
                        .matches("SEARCH jobs USING INDEX jobs_project (project_id=?")
                        .count(),
                    projects,
                    "{scoped}"
                );
                assert!(!scoped.contains("SCAN jobs"), "{scoped}");
            }
        }
        // One container's: its jobs and those it was the source of, each from an index,
        // whatever else narrows them.
        for (given, status) in [
            (none, None),
            (
                JobsGiven {
                    project: true,
                    kind: true,
                    before: true,
                },
                None,
            ),
            (none, Some(JobStatus::Failed)),
        ] {
            for scope in [None, Some(2)] {
                let of_one = plan_of(&jobs_list_sql(true, given, status, scope));
                assert!(
                    of_one.contains("SEARCH jobs USING INDEX jobs_container (container_id=?")
                        && of_one
                            .contains("SEARCH jobs USING INDEX jobs_source (source_container_id=?"),
                    "{of_one}"
                );
                assert!(!of_one.contains("SCAN jobs"), "{of_one}");
            }
        }
        // An idempotency key is looked up in the index of keys, which holds only jobs with one.
        let keyed = plan_of("SELECT * FROM jobs WHERE requested_by = $1 AND idempotency_key = $2");
        assert!(keyed.contains("USING INDEX jobs_idempotency"), "{keyed}");
        // The sync status page: from each copy to its newest runs.
        let runs = plan_of(&jobs::recent_runs_of_copies(None));
        assert!(
            runs.starts_with("SEARCH c USING INDEX containers_source"),
            "{runs}"
        );
        assert!(
            runs.contains("SEARCH l USING INDEX jobs_container (container_id=?)"),
            "{runs}"
        );
        assert!(!runs.contains("SCAN j"), "{runs}");
        // Some copies only: each looked up by id, not every copy scanned.
        let some = plan_of(&jobs::recent_runs_of_copies(Some(3)));
        assert!(some.starts_with("SEARCH c USING INDEX"), "{some}");
        assert!(
            some.contains("SEARCH l USING INDEX jobs_container (container_id=?)"),
            "{some}"
        );
        assert!(!some.contains("SCAN"), "{some}");
    }

    /// The queries the indexes serve still pick the right jobs: a page of the list, newest
    /// first; each copy's newest runs (copies and syncs only); and at a start, the copies
    /// whose latest job was cancelled and not finished (none queued or running beside it).
    #[tokio::test]
    async fn job_queries_pick_the_newest_jobs() {
        let (_d, db) = db().await;
        db.transact(|c| {
            c.execute_batch(
                "INSERT INTO users (id, name, created_at) VALUES ('u', 'ada', 1);
                 INSERT INTO projects (id, name, created_at) VALUES ('p', 'web', 1);
                 INSERT INTO servers (id, name, storage_root, created_at)
                     VALUES ('s', 'local', '/x', 1);
                 INSERT INTO containers (id, name, project_id, server_id, status, created_at,
                         updated_at)
                     VALUES ('a', 'web-app', 'p', 's', 'running', 1, 1);
                 INSERT INTO containers (id, name, project_id, server_id, status,
                         source_container_id, created_at, updated_at)
                     VALUES ('b', 'copy-b', 'p', 's', 'copying', 'a', 2, 2),
                            ('c', 'copy-c', 'p', 's', 'syncing', 'a', 2, 2),
                            ('d', 'copy-d', 'p', 's', 'syncing', 'a', 2, 2);
                 INSERT INTO jobs (id, kind, status, project_id, container_id,
                         source_container_id, requested_by, created_at) VALUES
                     ('b1', 'copy', 'succeeded', 'p', 'b', 'a', 'u', 10),
                     ('b2', 'sync', 'succeeded', 'p', 'b', 'a', 'u', 20),
                     ('b3', 'stop', 'succeeded', 'p', 'b', 'b', 'u', 30),
                     ('b4', 'sync', 'cancelled', 'p', 'b', 'a', 'u', 40),
                     ('c1', 'copy', 'succeeded', 'p', 'c', 'a', 'u', 11),
                     ('c2', 'sync', 'cancelled', 'p', 'c', 'a', 'u', 21),
                     ('c3', 'sync', 'queued', 'p', 'c', 'a', 'u', 31),
                     ('d1', 'copy', 'succeeded', 'p', 'd', 'a', 'u', 12),
                     ('d2', 'sync', 'cancelled', 'p', 'd', 'a', 'u', 22),
                     ('d3', 'sync', 'succeeded', 'p', 'd', 'a', 'u', 32);",
            )
        })
        .await
        .unwrap();
        let ids = |jobs: Vec<app::model::Job>| jobs.into_iter().map(|j| j.id).collect::<Vec<_>>();
        let filter = app::model::JobFilter::default();
        let page = db.jobs(&filter, None, 3).await.unwrap();
        assert_eq!(ids(page), ["b4", "d3", "c3"]);
        let next = app::model::JobFilter {
            before: Some("c3".into()),
            ..Default::default()
        };
        let page = db.jobs(&next, None, 3).await.unwrap();
        assert_eq!(ids(page), ["b3", "d2", "c2"]);
        let of_c = app::model::JobFilter {
            container_id: Some("c".into()),
            ..Default::default()
        };
        assert_eq!(
            ids(db.jobs(&of_c, None, 10).await.unwrap()),
            ["c3", "c2", "c1"]
        );
        // A source's: the copies made of it and their syncs, not its copies' own stops.
        let of = |id: &str| app::model::JobFilter {
            container_id: Some(id.into()),
            ..Default::default()
        };
        let of_a = db.jobs(&of("a"), None, 4).await.unwrap();
        assert_eq!(ids(of_a), ["b4", "d3", "c3", "d2"]);
        // b's stop is its own and it is its source: once.
        let of_b = db.jobs(&of("b"), None, 10).await.unwrap();
        assert_eq!(ids(of_b), ["b4", "b3", "b2", "b1"]);
        let before = app::model::JobFilter {
            before: Some("b3".into()),
            ..of("b")
        };
        assert_eq!(ids(db.jobs(&before, None, 10).await.unwrap()), ["b2", "b1"]);
        for (status, want) in [
            ("queued", &["c3"][..]),
            ("running", &[]),
            ("cancelled", &["b4", "d2", "c2"]),
            ("succeeded", &["d3", "b3", "b2", "d1", "c1", "b1"]),
            ("failed", &[]),
        ] {
            let only = app::model::JobFilter {
                status: Some(status.into()),
                ..Default::default()
            };
            assert_eq!(
                ids(db.jobs(&only, None, 10).await.unwrap()),
                want,
                "{status}"
            );
        }
        let runs = db.recent_jobs_of_copies(2, None).await.unwrap();
        assert_eq!(ids(runs), ["b4", "b2", "c3", "c2", "d3", "d2"]);
        let only: Vec<String> = vec!["d".into(), "b".into()];
        let runs = db.recent_jobs_of_copies(2, Some(&only)).await.unwrap();
        assert_eq!(ids(runs), ["b4", "b2", "d3", "d2"]);
        // b: its latest job was cancelled; c: a sync is queued beside its cancelled one;
        // d: a job finished after the cancelled one.
        assert_eq!(db.cancelled_jobs_left_unfinished().await.unwrap(), ["b4"]);
    }

    /// The containers list looks a project's containers up in an index by project, and a
    /// member's projects' too, never reading every container of the platform.
    #[tokio::test]
    async fn container_lists_look_their_projects_up() {
        let (_d, db) = db().await;
        let plan_of = |sql: &str| db.read_now(|c| Ok(plan(c, sql))).unwrap();
        for (project, scope) in [
            (true, None),
            (false, Some(1)),
            (false, Some(3)),
            (true, Some(2)),
        ] {
            let list = plan_of(&containers::containers_sql(false, project, scope));
            let copies = plan_of(&containers::containers_sql(true, project, scope));
            assert!(!copies.contains("SCAN containers"), "{copies}");
            assert!(
                list.lines()
                    .any(|l| l.starts_with("SEARCH containers USING INDEX")
                        && l.ends_with("(project_id=?)")),
                "{list}"
            );
            assert!(!list.contains("SCAN containers"), "{list}");
        }
    }

    /// Whatever narrows it and whichever projects the caller sees, a page of the jobs list
    /// holds the newest matching jobs, newest first, and the next page those after it;
    /// never a deleted project's.
    #[tokio::test]
    async fn job_pages_hold_the_newest_matching_jobs() {
        use app::model::{JobFilter, JobKind, JobStatus};
        let (_d, db) = db().await;
        let mut setup = String::from(
            "INSERT INTO users (id, name, created_at) VALUES ('u', 'ada', 1);
             INSERT INTO servers (id, name, storage_root, created_at) VALUES ('s', 'local', '/x', 1);
             INSERT INTO projects (id, name, created_at, deleted_at) VALUES ('gone', 'gone', 1, 5);",
        );
        for p in 0..3 {
            setup +=
                &format!("INSERT INTO projects (id, name, created_at) VALUES ('p{p}', 'p{p}', 1);");
        }
        // Two containers per project (the second a copy of the first), and one in `gone`.
        let containers = ["p0", "p0", "p1", "p1", "p2", "p2", "gone"];
        for (i, p) in containers.iter().enumerate() {
            let source = if i % 2 == 1 {
                format!("'c{}'", i - 1)
            } else {
                "NULL".into()
            };
            setup += &format!(
                "INSERT INTO containers (id, name, project_id, server_id, status, source_container_id,
                     created_at, updated_at) VALUES ('c{i}', 'c{i}', '{p}', 's', 'stopped', {source}, 1, 1);"
            );
        }
        // 120 jobs, made in a scrambled order: kinds, statuses and containers spread.
        let kinds = [
            JobKind::Copy,
            JobKind::Sync,
            JobKind::Sync,
            JobKind::Delete,
            JobKind::Start,
        ];
        let mut jobs = Vec::new();
        for k in 0..120u32 {
            let n = (k * 53) % 120;
            let c = (n as usize * 5) % containers.len();
            let source = if c % 2 == 1 { c - 1 } else { c };
            let (kind, status) = (kinds[n as usize % 5], JobStatus::ALL[(n as usize / 5) % 5]);
            let id = format!("j{n:03}");
            setup += &format!(
                "INSERT INTO jobs (id, kind, status, project_id, container_id, source_container_id,
                     requested_by, created_at) VALUES ('{id}', '{}', '{}', '{}', 'c{c}', 'c{source}', 'u', {});",
                kind.as_str(),
                status.as_str(),
                containers[c],
                // Two jobs a millisecond: the id orders those.
                1000 + n / 2
            );
            jobs.push((
                id,
                kind,
                status,
                containers[c],
                format!("c{c}"),
                format!("c{source}"),
            ));
        }
        db.transact(move |c| c.execute_batch(&setup)).await.unwrap();
        let mut checked = 0;
        let p = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let many: Vec<String> = (0..70).map(|i| format!("p{i}")).collect();
        let scopes = [
            None,
            Some(p(&[])),
            Some(p(&["p1"])),
            Some(p(&["p0", "p2", "gone"])),
            Some(many),
        ];
        for scope in &scopes {
            for container in [None, Some("c2"), Some("c3")] {
                for project in [None, Some("p1")] {
                    for status in [None, Some(JobStatus::Running), Some(JobStatus::Failed)] {
                        for kind in [None, Some(JobKind::Sync)] {
                            for before in [None, Some("j080"), Some("j081")] {
                                let filter = JobFilter {
                                    container_id: container.map(Into::into),
                                    project_id: project.map(Into::into),
                                    status: status.map(|s| s.as_str().into()),
                                    kind: kind.map(|k| k.as_str().into()),
                                    before: before.map(Into::into),
                                    limit: None,
                                };
                                // Newest first: created_at, then id (both grow with n here).
                                let cut = before.map(|b| b.to_string());
                                let mut want: Vec<&String> = jobs
                                    .iter()
                                    .filter(|(id, k, st, proj, c, src)| {
                                        *proj != "gone"
                                            && scope
                                                .as_ref()
                                                .is_none_or(|s| s.iter().any(|x| x == proj))
                                            && container.is_none_or(|x| c == x || src == x)
                                            && project.is_none_or(|x| *proj == x)
                                            && status.is_none_or(|x| *st == x)
                                            && kind.is_none_or(|x| *k == x)
                                            && cut.as_ref().is_none_or(|b| id < b)
                                    })
                                    .map(|(id, ..)| id)
                                    .collect();
                                want.sort_by(|a, b| b.cmp(a));
                                want.truncate(6);
                                let got: Vec<String> = db
                                    .jobs(&filter, scope.as_deref(), 6)
                                    .await
                                    .unwrap()
                                    .into_iter()
                                    .map(|j| j.id)
                                    .collect();
                                let want: Vec<String> = want.into_iter().cloned().collect();
                                assert_eq!(
                                    got,
                                    want,
                                    "{filter:?} in {:?}",
                                    scope.as_ref().map(Vec::len)
                                );
                                checked += usize::from(!want.is_empty());
                            }
                        }
                    }
                }
            }
        }
        assert!(checked > 200, "most cases match some jobs: {checked}");
    }

    /// An audit page is an index range read newest first, whatever narrows it: the log
    /// itself, a project's, an actor's or an action's entries, and a project admin's
    /// projects each read from `audit_project`, never a walk of every entry or a sort.
    #[tokio::test]
    async fn audit_pages_read_an_index_range_newest_first() {
        let (_d, db) = db().await;
        let plan_of = |sql: &str| db.read_now(|c| Ok(plan(c, sql))).unwrap();
        let given = |project: bool, actor: bool, action: bool, before: bool| AuditFilter {
            project_id: project.then(|| "p".into()),
            actor: actor.then(|| "ada".into()),
            action: action.then(|| "login".into()),
            before: before.then(|| "e".into()),
            limit: None,
        };
        for before in [false, true] {
            let all = plan_of(&audit::audit_list_sql(
                &given(false, false, false, before),
                None,
            ));
            assert!(
                all.contains("USING INDEX sqlite_autoindex_audit_1"),
                "{all}"
            );
            for (filter, index) in [
                (
                    given(true, false, false, before),
                    "audit_project (project_id=?",
                ),
                (
                    given(false, true, false, before),
                    "audit_actor (actor_name=?",
                ),
                (given(false, false, true, before), "audit_action (action=?"),
            ] {
                let page = plan_of(&audit::audit_list_sql(&filter, None));
                assert!(
                    page.contains(&format!("SEARCH audit USING INDEX {index}")),
                    "{page}"
                );
                assert_eq!(page.contains("AND id<?"), before, "{page}");
                assert!(!page.contains("TEMP B-TREE"), "{page}");
            }
            for projects in [1, 3, scope::MERGED_PROJECTS] {
                let scoped = plan_of(&audit::audit_list_sql(
                    &given(false, false, false, before),
                    Some(projects),
                ));
                assert_eq!(
                    scoped
                        .matches("SEARCH audit USING INDEX audit_project (project_id=?")
                        .count(),
                    projects,
                    "{scoped}"
                );
                assert!(!scoped.contains("SCAN audit"), "{scoped}");
            }
        }
    }

    /// Whatever narrows it and however the caller is scoped, an audit page holds the newest
    /// entries that match, newest first, and the next page those after it.
    #[tokio::test]
    async fn audit_pages_hold_the_newest_matching_entries() {
        let (_d, db) = db().await;
        // 90 entries, written in a scrambled order (the page's order is the ids'), across
        // projects p0..p2 and none, two actors and three actions.
        let entries: Vec<AuditEntry> = (0..90u64)
            .map(|k| (k * 37) % 90)
            .map(|k| AuditEntry {
                id: format!("{k:024x}"),
                at: k as i64,
                actor_id: None,
                actor_name: ["ada", "bob"][k as usize % 2].into(),
                action: ["login", "container.copy", "token.create"][k as usize % 3].into(),
                project_id: (k % 4 != 3).then(|| format!("p{}", k % 4)),
                target: "t".into(),
                address: "::1".into(),
                result: "ok".into(),
                detail: None,
            })
            .collect();
        for e in &entries {
            db.append_audit(e.clone()).await.unwrap();
        }
        let ids = |page: Vec<AuditEntry>| page.into_iter().map(|e| e.id).collect::<Vec<_>>();
        // Projects p0..p69: past MERGED_PROJECTS, the scope is an `IN` list.
        let many: Vec<String> = (0..70).map(|i| format!("p{i}")).collect();
        let scopes: [Option<&[String]>; 5] = [
            None,
            Some(&[]),
            Some(&many[1..2]),
            Some(&many[..2]),
            Some(&many),
        ];
        let mut checked = 0;
        for scope in scopes {
            for project in [None, Some("p1"), Some("p3")] {
                for actor in [None, Some("bob")] {
                    for action in [None, Some("login")] {
                        for before in [None, Some(format!("{:024x}", 60))] {
                            let filter = AuditFilter {
                                project_id: project.map(Into::into),
                                actor: actor.map(Into::into),
                                action: action.map(Into::into),
                                before: before.clone(),
                                limit: None,
                            };
                            let mut want: Vec<&AuditEntry> = entries
                                .iter()
                                .filter(|e| {
                                    scope.is_none_or(|s| {
                                        e.project_id.as_ref().is_some_and(|p| s.contains(p))
                                    }) && project.is_none_or(|p| e.project_id.as_deref() == Some(p))
                                        && actor.is_none_or(|a| e.actor_name == a)
                                        && action.is_none_or(|a| e.action == a)
                                        && before.as_ref().is_none_or(|b| e.id < *b)
                                })
                                .collect();
                            want.sort_by(|a, b| b.id.cmp(&a.id));
                            want.truncate(7);
                            let want: Vec<String> =
                                want.into_iter().map(|e| e.id.clone()).collect();
                            let got = ids(db.audit(&filter, scope, 7).await.unwrap());
                            assert_eq!(got, want, "{filter:?} in {:?}", scope.map(<[String]>::len));
                            checked += usize::from(!want.is_empty());
                        }
                    }
                }
            }
        }
        assert!(
            checked > 60,
            "most of the cases match some entries: {checked}"
        );
    }

    #[tokio::test]
    async fn the_read_pool_refuses_writes() {
        let (_d, db) = db().await;
        let err = sqlx::query("INSERT INTO t (k, v) VALUES ('x', 1)")
            .execute(&db.read)
            .await
            .unwrap_err();
        assert!(err.to_string().contains("readonly"), "{err}");
    }
}
