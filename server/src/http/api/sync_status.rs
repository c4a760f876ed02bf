//! `/sync-status`: every copy the caller may see and how current it is.

use app::model::CopyStatus;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::Json;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::{query, ApiResult, Caller, ReadErrors};
use crate::http::AppState;

#[derive(Serialize, ToSchema)]
pub(super) struct CopyStatusList {
    copies: Vec<CopyStatus>,
}

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(super) struct SyncStatusQuery {
    /// Only the copies in this project
    #[param(pattern = "^[0-9a-f]{24}$")]
    project_id: Option<String>,
}

/// Every copy the caller may see: current, stale or failing, with its recent syncs
///
/// Freshness is checked from metadata with the source's quick-check cache; no content is
/// read.
#[utoipa::path(
    get,
    path = "/sync-status",
    params(SyncStatusQuery),
    responses((status = 200, body = CopyStatusList), ReadErrors)
)]
pub(super) async fn sync_status(
    State(st): State<AppState>,
    Caller(user): Caller,
    q: Result<Query<SyncStatusQuery>, QueryRejection>,
) -> ApiResult<CopyStatusList> {
    let q = query(q)?;
    let copies = st
        .service
        .sync_status(&user, q.project_id.as_deref())
        .await?;
    Ok(Json(CopyStatusList { copies }))
}
