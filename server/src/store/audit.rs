//! The audit log: appended to, read with filters and pages; never changed.

use app::model::{AuditEntry, AuditFilter};
use sqlx::Row;

use super::sql::execute;
use super::{Db, DbError, SyncConn};

/// An audit entry.
pub(super) const INSERT_AUDIT: &str = "INSERT INTO audit (id, at, actor_id, actor_name, action,
        project_id, target, address, result, detail)
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)";

/// Appends `e` in the caller's transaction (a write that records its own success commits
/// its entry with its rows: `Db::admit_copy`).
pub(crate) fn insert_audit(c: &SyncConn, e: &AuditEntry) -> rusqlite::Result<()> {
    execute(
        c,
        INSERT_AUDIT,
        &[
            &e.id,
            &e.at,
            &e.actor_id,
            &e.actor_name,
            &e.action,
            &e.project_id,
            &e.target,
            &e.address,
            &e.result,
            &e.detail,
        ],
    )?;
    Ok(())
}

impl Db {
    /// Appends one entry.
    pub(crate) async fn append_audit(&self, e: AuditEntry) -> Result<(), DbError> {
        self.transact(move |c| Ok::<_, DbError>(insert_audit(c, &e)?))
            .await
    }

    /// Entries as `filter` narrows them, newest first: all of them (`projects` = `None`),
    /// or those of these projects only.
    pub(crate) async fn audit(
        &self,
        filter: &AuditFilter,
        projects: Option<&[String]>,
        limit: u32,
    ) -> Result<Vec<AuditEntry>, DbError> {
        let scope = match projects {
            None => String::new(),
            Some([]) => " AND 1 = 0".to_string(),
            Some(ids) => format!(
                " AND project_id IN ({})",
                (0..ids.len())
                    .map(|i| format!("${}", i + 6))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        };
        // Ids grow with time (`ids::new_id`): "before" an entry is a smaller id.
        let sql = format!(
            "SELECT * FROM audit
             WHERE ($1 IS NULL OR project_id = $1)
               AND ($2 IS NULL OR actor_name = $2)
               AND ($3 IS NULL OR action = $3)
               AND ($4 IS NULL OR id < $4){scope}
             ORDER BY id DESC LIMIT $5"
        );
        let mut query = sqlx::query(&sql)
            .bind(&filter.project_id)
            .bind(&filter.actor)
            .bind(&filter.action)
            .bind(&filter.before)
            .bind(i64::from(limit));
        for id in projects.unwrap_or_default() {
            query = query.bind(id);
        }
        let rows = query.fetch_all(&self.read).await?;
        Ok(rows
            .iter()
            .map(|r| AuditEntry {
                id: r.get("id"),
                at: r.get("at"),
                actor_id: r.get("actor_id"),
                actor_name: r.get("actor_name"),
                action: r.get("action"),
                project_id: r.get("project_id"),
                target: r.get("target"),
                address: r.get("address"),
                result: r.get("result"),
                detail: r.get("detail"),
            })
            .collect())
    }
}
