//! The database: two sqlx pools on one file (and, for the hot paths, rusqlite on the same
//! connections' library), with the embedded migrations applied.
//!
//! SQLite by default (a file in the data dir, WAL mode so the admin subcommands can work
//! beside a running server). The SQL elsewhere sticks to what PostgreSQL also accepts.
//!
//! Reads and writes go through different pools. SQLite lets one connection write at a
//! time; when several connections of one process race for that lock, the losers sleep in
//! SQLite's busy handler (1, 2, 5, 10 … ms) and a burst of requests waits on sleeps while
//! the cores idle. So every write goes through the one connection of `write`, where
//! writers queue in order and none ever sleeps, while `read` (read-only connections,
//! which WAL lets run beside the writer) serves every query that changes nothing. A write
//! sent to `read` by mistake fails loudly (SQLITE_READONLY) instead of racing.
//!
//! Writes on the hot paths (accepting a copy, a job's status) go through `Db::transact`:
//! a task takes every write queued at that moment and runs them in one transaction (group
//! commit): first as they are, and only if one of them fails, again with a savepoint each,
//! so the failed one is undone alone. A burst of requests then costs one commit and one
//! connection checkout, not one of each per request; and since
//! the task, not the request, runs the write, a client that hangs up mid-request cannot
//! leave a write half done.
//!
//! The hot paths use rusqlite, over the same SQLite library as sqlx: sqlx runs each
//! statement on a thread of the connection's own and sends the request and every row
//! across, which was most of what a copy request cost (`make load`, perf). Group commit
//! runs its writes synchronously on the write connection's handle, locked from sqlx for the
//! batch; `Db::read_now` runs a short read on the calling thread, over read-only
//! connections of its own. Their SQL is the same portable SQL (`$1` parameters, bound by
//! number: `prepare`).

use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rusqlite::types::{FromSql, ToSql};
use rusqlite::{CachedStatement, OpenFlags};
use sqlx::sqlite::{
    Sqlite, SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteRow,
    SqliteSynchronous,
};
use sqlx::SqlitePool;
use tokio::sync::{mpsc, oneshot};

/// A connection for synchronous statements: the writer's (in `Db::transact`) or a read
/// connection (in `Db::read_now`).
pub use rusqlite::Connection as SyncConn;

#[derive(Clone)]
pub struct Db {
    /// Read-only connections, for queries that change nothing.
    pub read: SqlitePool,
    /// The single connection every write (and every write transaction) goes through.
    pub write: SqlitePool,
    /// Writes waiting for the group-commit task (`transact`).
    batched: mpsc::UnboundedSender<Box<dyn Queued>>,
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

/// Most writes one group commit takes.
const MAX_BATCH: usize = 256;

/// A queued write. It may run twice: first in a pass without savepoints (the usual case,
/// where every write of the batch succeeds), then, if a write of the batch failed, again in
/// a pass where each write has a savepoint of its own (the first pass is rolled back whole).
trait Queued: Send {
    /// Runs the write's statements; says whether they succeeded.
    fn run(&mut self, conn: &SyncConn) -> bool;
    /// Answers the caller, given how the transaction ended.
    fn answer(self: Box<Self>, outcome: Result<(), String>);
}

struct Write<F, T, E> {
    write: F,
    /// The outcome of the write's last run (`None`: it never ran, or panicked).
    result: Option<Result<T, E>>,
    caller: oneshot::Sender<Result<T, E>>,
}

/// An error that SQLite did not raise (a failed batch, a panicked write), as rusqlite's.
fn failure(message: String) -> rusqlite::Error {
    rusqlite::Error::SqliteFailure(
        rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_ERROR),
        Some(message),
    )
}

impl<F, T, E> Queued for Write<F, T, E>
where
    F: Fn(&SyncConn) -> Result<T, E> + Send,
    T: Send,
    E: From<rusqlite::Error> + Send,
{
    fn run(&mut self, conn: &SyncConn) -> bool {
        self.result = None;
        let result = (self.write)(conn);
        let ok = result.is_ok();
        self.result = Some(result);
        ok
    }

    fn answer(self: Box<Self>, outcome: Result<(), String>) {
        let failed = |e: String| Err(E::from(failure(e)));
        // Failures are answered after the commit too: a caller told "taken" can then read
        // whatever took it.
        let _ = self.caller.send(match (outcome, self.result) {
            (Err(e), None | Some(Ok(_))) => failed(e),
            (_, Some(result)) => result,
            (Ok(()), None) => failed("the write panicked; it was rolled back".into()),
        });
    }
}

/// Opens (creating if needed) the database at `url` and brings its schema up to date.
pub async fn connect(url: &str) -> Result<Db, sqlx::Error> {
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
    // An embedded database's connection cannot go stale: no ping round-trip to the
    // connection's thread before every statement.
    let write = SqlitePoolOptions::new()
        .max_connections(1)
        .test_before_acquire(false)
        .connect_with(opts.clone())
        .await?;
    sqlx::migrate!("./migrations").run(&write).await?;
    // One read connection opened now: the first request does not pay for it, and a
    // database that cannot be read this way fails the start, not a request.
    let path = opts.get_filename().to_path_buf();
    let first = open_read_only(&path).map_err(|e| sqlx::Error::Configuration(e.into()))?;
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
    tokio::spawn(group_commit(write.clone(), queue));
    Ok(Db {
        read,
        write,
        batched,
        sync_reads,
    })
}

const BUSY_TIMEOUT: Duration = Duration::from_secs(10);
const MMAP_SIZE: &str = "268435456";

/// Takes every write queued at the moment and runs them in one transaction.
async fn group_commit(pool: SqlitePool, mut queue: mpsc::UnboundedReceiver<Box<dyn Queued>>) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    while queue.recv_many(&mut batch, MAX_BATCH).await > 0 {
        let outcome = commit_batch(&pool, &mut batch)
            .await
            .map_err(|e| e.to_string());
        if let Err(e) = &outcome {
            tracing::error!(error = %e, "a group of database writes failed to commit");
        }
        for write in batch.drain(..) {
            write.answer(outcome.clone());
        }
    }
}

/// Runs a batch on the write connection, taken from sqlx for the time: no sqlx statement
/// runs on it meanwhile, and the batch leaves no transaction open behind it.
async fn commit_batch(pool: &SqlitePool, batch: &mut [Box<dyn Queued>]) -> Result<(), DbError> {
    let mut conn = pool.acquire().await?;
    let mut handle = conn.lock_handle().await?;
    // SAFETY: the handle is a live connection, locked for us until `handle` is dropped, which
    // is after `sync`; a connection made from a handle does not close it.
    let sync = unsafe { SyncConn::from_handle(handle.as_raw_handle().as_ptr())? };
    let result = run_batch(&sync, batch);
    if result.is_err() && !sync.is_autocommit() {
        let _ = sync.execute_batch("ROLLBACK");
    }
    drop(sync);
    drop(handle);
    Ok(result?)
}

/// Runs one write, and says whether it succeeded. A write that panics counts as failed
/// (its caller hears that the writer failed it); the writer carries on for everyone else.
fn run_one(write: &mut Box<dyn Queued>, conn: &SyncConn) -> bool {
    std::panic::catch_unwind(AssertUnwindSafe(|| write.run(conn))).unwrap_or_else(|_| {
        tracing::error!("a database write panicked; it was rolled back");
        false
    })
}

fn run_batch(conn: &SyncConn, batch: &mut [Box<dyn Queued>]) -> rusqlite::Result<()> {
    // First pass, no savepoints: each write costs only its own statements.
    conn.execute_batch("BEGIN")?;
    if batch.iter_mut().all(|write| run_one(write, conn)) {
        return conn.execute_batch("COMMIT");
    }
    conn.execute_batch("ROLLBACK")?;
    // A write failed: all of them again, each in a savepoint, so a failed one is undone
    // alone. One savepoint, kept open from write to write: released and taken again after a
    // write that succeeded; rolled back to (which keeps it) after one that failed.
    conn.execute_batch("BEGIN; SAVEPOINT write")?;
    for write in batch.iter_mut() {
        conn.execute_batch(if run_one(write, conn) {
            "RELEASE write; SAVEPOINT write"
        } else {
            "ROLLBACK TO write"
        })?;
    }
    conn.execute_batch("RELEASE write; COMMIT")
}

impl Db {
    /// Runs `write` in a transaction of its own: all of its statements take effect, or
    /// (when it returns an error) none. It shares one commit with the writes queued beside
    /// it, and answers once that commit is done.
    ///
    /// `write` may run twice (see `Queued`): it must do nothing but its statements.
    pub async fn transact<T, E, F>(&self, write: F) -> Result<T, E>
    where
        F: Fn(&SyncConn) -> Result<T, E> + Send + 'static,
        T: Send + 'static,
        E: From<rusqlite::Error> + Send + 'static,
    {
        let (caller, answered) = oneshot::channel::<Result<T, E>>();
        let queued: Box<dyn Queued> = Box::new(Write {
            write,
            result: None,
            caller,
        });
        let gone = || E::from(failure("the database writer has stopped".into()));
        self.batched.send(queued).map_err(|_| gone())?;
        answered.await.map_err(|_| gone())?
    }

    /// Runs `read` on this thread, on a read-only connection: for short reads on the hot
    /// paths (a few tens of microseconds, which a request would spend waiting for the
    /// answer from a connection's thread anyway). WAL readers never wait for the writer.
    pub fn read_now<T>(
        &self,
        read: impl FnOnce(&SyncConn) -> rusqlite::Result<T>,
    ) -> Result<T, DbError> {
        let reads = &self.sync_reads;
        let idle = reads.idle.lock().unwrap_or_else(|e| e.into_inner()).pop();
        let conn = match idle {
            Some(conn) => conn,
            None => open_read_only(&reads.path)?,
        };
        let result = read(&conn);
        let mut idle = reads.idle.lock().unwrap_or_else(|e| e.into_inner());
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

/// A cached statement with `args` bound to `$1`, `$2` … by number (SQLite numbers named
/// parameters in order of appearance, which need not be theirs). Every argument must be
/// used.
pub fn prepare<'c>(
    conn: &'c SyncConn,
    sql: &str,
    args: &[&dyn ToSql],
) -> rusqlite::Result<CachedStatement<'c>> {
    let mut stmt = conn.prepare_cached(sql)?;
    let count = stmt.parameter_count();
    if count != args.len() {
        return Err(rusqlite::Error::InvalidParameterCount(args.len(), count));
    }
    for index in 1..=count {
        let name = stmt.parameter_name(index).unwrap_or("?");
        let arg = name
            .strip_prefix('$')
            .and_then(|n| n.parse::<usize>().ok())
            .and_then(|n| args.get(n.checked_sub(1)?))
            .ok_or_else(|| rusqlite::Error::InvalidParameterName(name.to_string()))?;
        stmt.raw_bind_parameter(index, arg)?;
    }
    Ok(stmt)
}

/// Runs a statement that returns no rows; says how many rows it changed.
pub fn execute(conn: &SyncConn, sql: &str, args: &[&dyn ToSql]) -> rusqlite::Result<usize> {
    prepare(conn, sql, args)?.raw_execute()
}

/// The first row a statement returns, if any, as `map` makes it.
pub fn query_first<T>(
    conn: &SyncConn,
    sql: &str,
    args: &[&dyn ToSql],
    map: impl FnOnce(&rusqlite::Row) -> T,
) -> rusqlite::Result<Option<T>> {
    let mut stmt = prepare(conn, sql, args)?;
    let mut rows = stmt.raw_query();
    Ok(rows.next()?.map(map))
}

/// A type a column can be read as, by either driver.
pub trait ColumnType: for<'r> sqlx::Decode<'r, Sqlite> + sqlx::Type<Sqlite> + FromSql {}
impl<T> ColumnType for T where T: for<'r> sqlx::Decode<'r, Sqlite> + sqlx::Type<Sqlite> + FromSql {}

/// A row of either driver, read by column name: one mapping per type serves both. A column
/// missing or of another type is a bug in the query beside the mapping, and panics (as
/// sqlx's `Row::get` does).
pub trait Cols {
    fn col<T: ColumnType>(&self, name: &str) -> T;
}

impl Cols for SqliteRow {
    fn col<T: ColumnType>(&self, name: &str) -> T {
        sqlx::Row::get(self, name)
    }
}

impl Cols for rusqlite::Row<'_> {
    fn col<T: ColumnType>(&self, name: &str) -> T {
        self.get(name)
            .unwrap_or_else(|e| panic!("column {name}: {e}"))
    }
}

/// `true` when `err` is a violation of a UNIQUE constraint (a name or key already taken).
pub fn is_unique_violation(err: &sqlx::Error) -> bool {
    matches!(err, sqlx::Error::Database(e) if e.is_unique_violation())
}

/// The message of a UNIQUE constraint's violation (it names the columns: "UNIQUE
/// constraint failed: containers.project_id, containers.name"), if `err` is one.
pub fn unique_violation(err: &rusqlite::Error) -> Option<&str> {
    match err {
        rusqlite::Error::SqliteFailure(e, message)
            if e.extended_code == rusqlite::ffi::SQLITE_CONSTRAINT_UNIQUE
                || e.extended_code == rusqlite::ffi::SQLITE_CONSTRAINT_PRIMARYKEY =>
        {
            Some(message.as_deref().unwrap_or(""))
        }
        _ => None,
    }
}

impl Db {
    /// Closes both pools (the writer last, so the WAL is checkpointed by the last one out).
    pub async fn close(&self) {
        self.sync_reads
            .idle
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
        self.read.close().await;
        self.write.close().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn db() -> (tempfile::TempDir, Db) {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("t.db").display());
        let db = connect(&url).await.unwrap();
        sqlx::query("CREATE TABLE t (k TEXT PRIMARY KEY, v INTEGER)")
            .execute(&db.write)
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
