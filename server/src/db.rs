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

use std::str::FromStr;
use std::time::Duration;

use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::SqlitePool;

#[derive(Clone, Debug)]
pub struct Db {
    /// Read-only connections, for queries that change nothing.
    pub read: SqlitePool,
    /// The single connection every write (and every write transaction) goes through.
    pub write: SqlitePool,
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
        .pragma("mmap_size", "268435456");
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
    Ok(Db { read, write })
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
