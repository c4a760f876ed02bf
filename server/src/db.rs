//! The database: two sqlx pools on one file, with the embedded migrations applied.
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
//! so the failed one is undone alone. A burst of requests then costs one commit,
//! one connection checkout and one checkout test, not one of each per request; and since
//! the task, not the request, runs the write, a client that hangs up mid-request cannot
//! leave a write half done.

use std::panic::AssertUnwindSafe;
use std::str::FromStr;
use std::time::Duration;

use futures::future::BoxFuture;
use futures::FutureExt;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{Connection, SqliteConnection, SqlitePool};
use tokio::sync::{mpsc, oneshot};

#[derive(Clone)]
pub struct Db {
    /// Read-only connections, for queries that change nothing.
    pub read: SqlitePool,
    /// The single connection every write (and every write transaction) goes through.
    pub write: SqlitePool,
    /// Writes waiting for the group-commit task (`transact`).
    batched: mpsc::UnboundedSender<Box<dyn Queued>>,
}

/// Most writes one group commit takes.
const MAX_BATCH: usize = 256;

/// A queued write. It may run twice: first in a pass without savepoints (the usual case,
/// where every write of the batch succeeds: one round trip to the connection's thread per
/// statement, nothing more), then, if a write of the batch failed, again in a pass where
/// each write has a savepoint of its own (the first pass is rolled back whole).
trait Queued: Send {
    /// Runs the write's statements; says whether they succeeded.
    fn run<'c>(&'c mut self, conn: &'c mut SqliteConnection) -> BoxFuture<'c, bool>;
    /// Answers the caller, given how the transaction ended.
    fn answer(self: Box<Self>, outcome: Result<(), String>);
}

struct Write<F, T, E> {
    write: F,
    /// The outcome of the write's last run (`None`: it never ran, or panicked).
    result: Option<Result<T, E>>,
    caller: oneshot::Sender<Result<T, E>>,
}

impl<F, T, E> Queued for Write<F, T, E>
where
    F: for<'c> Fn(&'c mut SqliteConnection) -> BoxFuture<'c, Result<T, E>> + Send,
    T: Send,
    E: From<sqlx::Error> + Send,
{
    fn run<'c>(&'c mut self, conn: &'c mut SqliteConnection) -> BoxFuture<'c, bool> {
        self.result = None;
        Box::pin(async move {
            let result = (self.write)(conn).await;
            let ok = result.is_ok();
            self.result = Some(result);
            ok
        })
    }

    fn answer(self: Box<Self>, outcome: Result<(), String>) {
        let failed = |e: String| Err(E::from(sqlx::Error::Protocol(e)));
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
        .busy_timeout(Duration::from_secs(10))
        // Pages come from the page cache by memory mapping, not a read() per page.
        .pragma("mmap_size", "268435456")
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
    })
}

/// Takes every write queued at the moment and runs them in one transaction.
async fn group_commit(pool: SqlitePool, mut queue: mpsc::UnboundedReceiver<Box<dyn Queued>>) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    while queue.recv_many(&mut batch, MAX_BATCH).await > 0 {
        let outcome = run_batch(&pool, &mut batch)
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

/// Runs one write, and says whether it succeeded. A write that panics counts as failed
/// (its caller hears that the writer failed it); the writer carries on for everyone else.
async fn run_one(write: &mut Box<dyn Queued>, conn: &mut SqliteConnection) -> bool {
    AssertUnwindSafe(write.run(conn))
        .catch_unwind()
        .await
        .unwrap_or_else(|_| {
            tracing::error!("a database write panicked; it was rolled back");
            false
        })
}

async fn run_batch(pool: &SqlitePool, batch: &mut [Box<dyn Queued>]) -> Result<(), sqlx::Error> {
    let mut conn = pool.acquire().await?;
    // First pass, no savepoints: each write costs only its own statements.
    let mut tx = conn.begin().await?;
    let mut all_ok = true;
    for write in batch.iter_mut() {
        if !run_one(write, &mut tx).await {
            all_ok = false;
            break;
        }
    }
    if all_ok {
        return tx.commit().await;
    }
    tx.rollback().await?;
    // A write failed: all of them again, each in a savepoint, so a failed one is undone
    // alone. One savepoint, kept open from write to write: released and taken again in one
    // round trip after a write that succeeded; rolled back to (which keeps it) after one
    // that failed.
    let mut tx = conn.begin().await?;
    sqlx::query("SAVEPOINT write").execute(&mut *tx).await?;
    for write in batch.iter_mut() {
        let next = if run_one(write, &mut tx).await {
            "RELEASE write; SAVEPOINT write"
        } else {
            "ROLLBACK TO write"
        };
        sqlx::query(next).execute(&mut *tx).await?;
    }
    sqlx::query("RELEASE write").execute(&mut *tx).await?;
    tx.commit().await
}

impl Db {
    /// Runs `write` in a transaction of its own: all of its statements take effect, or
    /// (when it returns an error) none. It shares one commit with the writes queued beside
    /// it, and answers once that commit is done.
    ///
    /// `write` may run twice (see `Queued`): it must do nothing but its statements.
    pub async fn transact<T, E, F>(&self, write: F) -> Result<T, E>
    where
        F: for<'c> Fn(&'c mut SqliteConnection) -> BoxFuture<'c, Result<T, E>> + Send + 'static,
        T: Send + 'static,
        E: From<sqlx::Error> + Send + 'static,
    {
        let (caller, answered) = oneshot::channel::<Result<T, E>>();
        let queued: Box<dyn Queued> = Box::new(Write {
            write,
            result: None,
            caller,
        });
        self.batched
            .send(queued)
            .map_err(|_| E::from(sqlx::Error::PoolClosed))?;
        answered
            .await
            .map_err(|_| E::from(sqlx::Error::WorkerCrashed))?
    }
}

/// `true` when `err` is a violation of a UNIQUE constraint (a name or key already taken).
pub fn is_unique_violation(err: &sqlx::Error) -> bool {
    matches!(err, sqlx::Error::Database(e) if e.is_unique_violation())
}

impl Db {
    /// Closes both pools (the writer last, so the WAL is checkpointed by the last one out).
    pub async fn close(&self) {
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
    async fn insert_pair(db: &Db, k: &str, k2: &str, v: i64) -> Result<i64, sqlx::Error> {
        let (k, k2) = (k.to_string(), k2.to_string());
        db.transact(move |c| {
            let (k, k2) = (k.clone(), k2.clone());
            Box::pin(async move {
                for key in [&k, &k2] {
                    sqlx::query("INSERT INTO t (k, v) VALUES ($1, $2)")
                        .bind(key)
                        .bind(v)
                        .execute(&mut *c)
                        .await?;
                }
                Ok(v)
            })
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
                    assert!(is_unique_violation(&e), "{e}");
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
                    Box::pin(async move {
                        sqlx::query("INSERT INTO t (k, v) VALUES ('half', 1)")
                            .execute(&mut *c)
                            .await?;
                        if c.ping().await.is_ok() {
                            panic!("a bug in a write");
                        }
                        Ok::<_, sqlx::Error>(())
                    })
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
    async fn the_read_pool_refuses_writes() {
        let (_d, db) = db().await;
        let err = sqlx::query("INSERT INTO t (k, v) VALUES ('x', 1)")
            .execute(&db.read)
            .await
            .unwrap_err();
        assert!(err.to_string().contains("readonly"), "{err}");
    }
}
