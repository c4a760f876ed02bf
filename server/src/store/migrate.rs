//! The schema, brought up to date at start: each migration of `migrations/` once, in order,
//! in a transaction of its own, recorded in SQLite's `user_version`.

use super::SyncConn;

/// Every migration, oldest first; a migration is never changed once released.
const MIGRATIONS: &[&str] = &[
    include_str!("../../migrations/0001_initial.sql"),
    include_str!("../../migrations/0002_request_fingerprint.sql"),
    include_str!("../../migrations/0003_running_containers.sql"),
    include_str!("../../migrations/0004_deleting_containers.sql"),
    include_str!("../../migrations/0005_token_scopes.sql"),
    include_str!("../../migrations/0006_project_admin.sql"),
    include_str!("../../migrations/0007_disabled_users.sql"),
    include_str!("../../migrations/0008_audit.sql"),
    include_str!("../../migrations/0009_agents.sql"),
    include_str!("../../migrations/0010_job_waiting.sql"),
    include_str!("../../migrations/0011_server_bwlimit.sql"),
    include_str!("../../migrations/0012_active_jobs.sql"),
    include_str!("../../migrations/0013_convert_jobs.sql"),
    include_str!("../../migrations/0014_container_names.sql"),
];

pub(super) fn migrate(conn: &SyncConn) -> rusqlite::Result<()> {
    let mut applied: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    if applied == 0 {
        // A database made by an earlier doppel recorded its migrations in sqlx's table.
        applied = applied_by_sqlx(conn)?;
    }
    for (n, sql) in MIGRATIONS.iter().enumerate() {
        let version = n as i64 + 1;
        let tx = conn.unchecked_transaction()?;
        if version > applied {
            tx.execute_batch(sql)?;
        }
        tx.pragma_update(None, "user_version", version)?;
        tx.commit()?;
    }
    Ok(())
}

fn applied_by_sqlx(conn: &SyncConn) -> rusqlite::Result<i64> {
    let has_table: i64 = conn.query_row(
        "SELECT COUNT(*) FROM sqlite_master WHERE type = 'table' AND name = '_sqlx_migrations'",
        [],
        |r| r.get(0),
    )?;
    if has_table == 0 {
        return Ok(0);
    }
    conn.query_row(
        "SELECT COALESCE(MAX(version), 0) FROM _sqlx_migrations WHERE success",
        [],
        |r| r.get(0),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_migration_runs_once_and_an_sqlx_made_database_is_adopted() {
        let conn = SyncConn::open_in_memory().unwrap();
        migrate(&conn).unwrap();
        migrate(&conn).unwrap();
        let version: i64 = conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .unwrap();
        assert_eq!(version, MIGRATIONS.len() as i64);
        let tables: i64 = conn
            .query_row(
                "SELECT COUNT(*) FROM sqlite_master WHERE type = 'table' AND name = 'jobs'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(tables, 1);

        // As sqlx left a database: the schema, its table, user_version 0.
        let old = SyncConn::open_in_memory().unwrap();
        old.execute_batch(MIGRATIONS[0]).unwrap();
        old.execute_batch(
            "CREATE TABLE _sqlx_migrations (version BIGINT PRIMARY KEY, success BOOLEAN);
             INSERT INTO _sqlx_migrations VALUES (1, TRUE);",
        )
        .unwrap();
        migrate(&old).expect("the schema is not created twice");
        let version: i64 = old
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .unwrap();
        assert_eq!(version, MIGRATIONS.len() as i64, "the later migrations ran");
        old.prepare("SELECT request_fingerprint FROM jobs")
            .expect("migration 2 added its column");
    }
}
