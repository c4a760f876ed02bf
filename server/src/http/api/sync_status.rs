//! `/sync-status`: every copy the caller may see and how current it is.

use app::model::CopyStatus;
use axum::extract::State;
use axum::Json;
use serde::Serialize;
use utoipa::ToSchema;

use super::{ApiResult, Caller, ReadErrors};
use crate::http::AppState;

#[derive(Serialize, ToSchema)]
pub(super) struct CopyStatusList {
    copies: Vec<CopyStatus>,
}

/// Every copy the caller may see: current, stale or failing, with its recent syncs
///
/// Freshness is checked from metadata with the source's quick-check cache; no content is
/// read.
#[utoipa::path(
    get,
    path = "/sync-status",
    responses((status = 200, body = CopyStatusList), ReadErrors)
)]
pub(super) async fn sync_status(
    State(st): State<AppState>,
    Caller(user): Caller,
) -> ApiResult<CopyStatusList> {
    let copies = st.service.sync_status(&user).await?;
    Ok(Json(CopyStatusList { copies }))
}
