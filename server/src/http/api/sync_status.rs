//! `/sync-status`: every copy the caller may see and how current it is.

use axum::extract::State;
use axum::Json;
use serde_json::json;

use super::{ApiResult, Caller};
use crate::http::AppState;

pub(super) async fn sync_status(
    State(st): State<AppState>,
    Caller(user): Caller,
) -> ApiResult<serde_json::Value> {
    let copies = st.service.sync_status(&user).await?;
    Ok(Json(json!({ "copies": copies })))
}
