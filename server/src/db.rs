//! The database: a sqlx pool with the embedded migrations applied.
//!
//! SQLite by default (a file in the data dir, WAL mode so the admin subcommands can work
//! beside a running server). The SQL elsewhere sticks to what PostgreSQL also accepts.

use std::str::FromStr;
use std::time::Duration;

use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};

pub type Db = sqlx::SqlitePool;

/// Opens (creating if needed) the database at `url` and brings its schema up to date.
pub async fn connect(url: &str) -> Result<Db, sqlx::Error> {
    let opts = SqliteConnectOptions::from_str(url)?
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        .synchronous(SqliteSynchronous::Normal)
        .foreign_keys(true)
        .busy_timeout(Duration::from_secs(10))
        // Pages come from the page cache by memory mapping, not a read() per page.
        .pragma("mmap_size", "268435456");
    let pool = SqlitePoolOptions::new()
        .max_connections(8)
        // An embedded database's connection cannot go stale: no ping round-trip to the
        // connection's thread before every statement.
        .test_before_acquire(false)
        .connect_with(opts)
        .await?;
    sqlx::migrate!("./migrations").run(&pool).await?;
    Ok(pool)
}

/// `true` when `err` is a violation of a UNIQUE constraint (a name or key already taken).
pub fn is_unique_violation(err: &sqlx::Error) -> bool {
    matches!(err, sqlx::Error::Database(e) if e.is_unique_violation())
}
