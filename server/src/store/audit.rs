//! The audit log: appended to, read with filters and pages; never changed.

use app::model::{AuditEntry, AuditFilter};
use sqlx::Row;

use super::scope::scoped_page;
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

/// The statement of an audit page: `$1` project, `$2` actor, `$3` action, `$4` before (an
/// entry's id), `$5` the limit, then the projects the caller may see (`scope`: their
/// number; `None`: every project). A filter given is written as a plain comparison and one
/// not given as `$n IS NULL`, so SQLite reads the page from that filter's index (ordered by
/// id within it), newest first (ids grow with time), and stops when it is full; a caller
/// who sees some projects gets each one's page from `audit_project`, merged
/// (`scope::scoped_page`).
pub(super) fn audit_list_sql(filter: &AuditFilter, scope: Option<usize>) -> String {
    let term = |given: bool, n: u32, cmp: &str| match given {
        true => format!("{cmp} ${n}"),
        false => format!("${n} IS NULL"),
    };
    let terms = [
        term(filter.project_id.is_some(), 1, "project_id ="),
        term(filter.actor.is_some(), 2, "actor_name ="),
        term(filter.action.is_some(), 3, "action ="),
        term(filter.before.is_some(), 4, "id <"),
    ]
    .join(" AND ");
    let newest = "ORDER BY id DESC LIMIT $5";
    let page = |extra: &str| format!("SELECT * FROM audit WHERE {terms}{extra} {newest}");
    scoped_page(scope, 6, page, newest)
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
        let sql = audit_list_sql(filter, projects.map(<[String]>::len));
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
