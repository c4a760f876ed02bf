//! `/audit`: the audit log (append-only: there is no way to change it here).

use app::model::{AuditEntry, AuditFilter};
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::Json;
use serde::Serialize;
use utoipa::ToSchema;

use super::{query, ApiResult, Caller, ReadErrors};
use crate::http::AppState;

#[derive(Serialize, ToSchema)]
pub(super) struct AuditPage {
    entries: Vec<AuditEntry>,
    /// The `before` of the next page, when there may be one.
    next_before: Option<String>,
}

/// Who did what, when, from where, and how it ended: every write and every login
///
/// Newest first. Platform admins see every entry; a project's admins see their projects'
/// (403 for anyone else). Page with `before` (the last entry's id, or `next_before`).
#[utoipa::path(
    get,
    path = "/audit",
    params(AuditFilter),
    responses((status = 200, body = AuditPage), (status = 403, description = "Neither a platform admin nor a project admin"), ReadErrors)
)]
pub(super) async fn list_audit(
    State(st): State<AppState>,
    Caller(user): Caller,
    q: Result<Query<AuditFilter>, QueryRejection>,
) -> ApiResult<AuditPage> {
    let filter = query(q)?;
    let limit = filter.limit.unwrap_or(crate::service::AUDIT_PAGE) as usize;
    let entries = st.service.list_audit(&user, &filter).await?;
    let next_before = (entries.len() == limit)
        .then(|| entries.last().map(|e| e.id.clone()))
        .flatten();
    Ok(Json(AuditPage {
        entries,
        next_before,
    }))
}
