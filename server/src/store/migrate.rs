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
    include_str!("../../migrations/0014_checks_and_name_index.sql"),
    include_str!("../../migrations/0015_job_indexes.sql"),
    include_str!("../../migrations/0016_list_indexes.sql"),
];

pub(super) fn migrate(conn: &SyncConn) -> rusqlite::Result<()> {
    let mut applied: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    if applied == 0 {
        // A database made by an earlier doppel recorded its migrations in sqlx's table.
        applied = applied_by_sqlx(conn)?;
    }
    // A migration that makes a table again drops the old one: with foreign keys enforced,
    // that would delete what references it (a container's snapshots cascade) or fail.
    // SQLite's way: enforcement off (it cannot change inside a transaction), and each
    // migration checked for broken references before it commits.
    let enforced: bool = conn.query_row("PRAGMA foreign_keys", [], |r| r.get(0))?;
    conn.pragma_update(None, "foreign_keys", false)?;
    let result = run(conn, applied);
    conn.pragma_update(None, "foreign_keys", enforced)?;
    result
}

fn run(conn: &SyncConn, applied: i64) -> rusqlite::Result<()> {
    for (n, sql) in MIGRATIONS.iter().enumerate() {
        let version = n as i64 + 1;
        let tx = conn.unchecked_transaction()?;
        if version > applied {
            // (A reference already broken before, by whatever wrote the file, is not this
            // migration's doing and does not stop doppel from starting.)
            let before = broken_references(&tx)?;
            tx.execute_batch(sql)?;
            if let Some((table, parent)) = broken_references(&tx)?
                .into_iter()
                .find(|b| !before.contains(b))
                .map(|(table, _, parent)| (table, parent))
            {
                return Err(rusqlite::Error::SqliteFailure(
                    rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_CONSTRAINT_FOREIGNKEY),
                    Some(format!(
                        "migration {version} left a row of {table} referencing a missing row of {parent}"
                    )),
                ));
            }
        }
        tx.pragma_update(None, "user_version", version)?;
        tx.commit()?;
    }
    Ok(())
}

/// Rows whose foreign key names a row that does not exist: (table, rowid, parent table).
fn broken_references(conn: &SyncConn) -> rusqlite::Result<Vec<(String, Option<i64>, String)>> {
    let mut check = conn.prepare("PRAGMA foreign_key_check")?;
    let rows = check.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?;
    rows.collect()
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

    /// Migration 14 makes containers, jobs and audit again: every row stays, nothing that
    /// references them goes (a container's snapshots would cascade if foreign keys were
    /// enforced), the checks still refuse what they refused, and foreign keys are enforced
    /// again afterwards.
    #[test]
    fn tables_made_again_keep_their_rows_and_what_references_them() {
        let conn = SyncConn::open_in_memory().unwrap();
        conn.pragma_update(None, "foreign_keys", true).unwrap();
        for sql in &MIGRATIONS[..13] {
            conn.execute_batch(sql).unwrap();
        }
        conn.pragma_update(None, "user_version", 13).unwrap();
        conn.execute_batch(
            "INSERT INTO users (id, name, created_at) VALUES ('u', 'ada', 1);
             INSERT INTO projects (id, name, created_at) VALUES ('p', 'web', 1);
             INSERT INTO servers (id, name, storage_root, created_at) VALUES ('s', 'local', '/x', 1);
             INSERT INTO containers (id, name, project_id, server_id, status, created_at, updated_at)
                 VALUES ('a', 'web-app', 'p', 's', 'running', 1, 1);
             INSERT INTO containers (id, name, project_id, server_id, status, source_container_id,
                     created_at, updated_at)
                 VALUES ('b', 'web-app-copy', 'p', 's', 'stopped', 'a', 2, 2);
             INSERT INTO snapshots (id, container_id, name, created_at) VALUES ('n', 'a', 'before', 3);
             INSERT INTO jobs (id, kind, status, project_id, container_id, source_container_id,
                     requested_by, created_at)
                 VALUES ('j', 'copy', 'succeeded', 'p', 'b', 'a', 'u', 2);
             INSERT INTO audit (id, at, actor_name, action, target, address, result)
                 VALUES ('e', 2, 'ada', 'container.copy', 'a', '::1', 'ok');",
        )
        .unwrap();
        let rows = |conn: &SyncConn| -> Vec<i64> {
            ["containers", "snapshots", "jobs", "audit"]
                .iter()
                .map(|t| {
                    conn.query_row(&format!("SELECT COUNT(*) FROM {t}"), [], |r| r.get(0))
                        .unwrap()
                })
                .collect()
        };
        assert_eq!(rows(&conn), [2, 1, 1, 1]);
        migrate(&conn).unwrap();
        assert_eq!(
            rows(&conn),
            [2, 1, 1, 1],
            "no row lost, no snapshot cascaded"
        );
        let enforced: bool = conn
            .query_row("PRAGMA foreign_keys", [], |r| r.get(0))
            .unwrap();
        assert!(enforced, "foreign keys are enforced again");
        let refused = |sql: &str| conn.execute(sql, []).unwrap_err().to_string();
        assert!(
            refused("UPDATE containers SET status = 'lost' WHERE id = 'a'").contains("CHECK"),
            "the status check holds"
        );
        assert!(refused("UPDATE jobs SET kind = 'move'").contains("CHECK"));
        assert!(refused("UPDATE audit SET result = 'maybe'").contains("CHECK"));
        assert!(
            refused("DELETE FROM containers WHERE id = 'a'").contains("FOREIGN KEY"),
            "a copy's and a job's references to their source hold"
        );
        // Inserts build no temporary index of a list of values.
        for insert in [
            "INSERT INTO containers (id, name, project_id, server_id, status, created_at, updated_at)
                 VALUES ('c', 'c', 'p', 's', 'copying', 1, 1)",
            "INSERT INTO jobs (id, kind, status, project_id, container_id, source_container_id,
                 created_at) VALUES ('k', 'sync', 'queued', 'p', 'b', 'a', 1)",
            "INSERT INTO audit (id, at, actor_name, action, target, address, result)
                 VALUES ('f', 2, 'ada', 'login', 'u', '::1', 'refused')",
        ] {
            let ops = super::super::sql::explain::opcodes(&conn, insert);
            assert!(!ops.iter().any(|op| op == "OpenEphemeral"), "{insert}: {ops:?}");
            conn.execute(insert, []).unwrap();
        }
    }
}
