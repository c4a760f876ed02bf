//! `/jobs`: list, read, cancel.

use app::model::JobFilter;
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::Json;
use serde_json::json;

use super::{path, query, ApiResult, Caller};
use crate::http::AppState;

pub(super) async fn list_jobs(
    State(st): State<AppState>,
    Caller(user): Caller,
    q: Result<Query<JobFilter>, QueryRejection>,
) -> ApiResult<serde_json::Value> {
    let filter = query(q)?;
    let jobs = st.service.list_jobs(&user, &filter).await?;
    Ok(Json(json!({ "jobs": jobs })))
}

pub(super) async fn get_job(
    State(st): State<AppState>,
    Caller(user): Caller,
    id: Result<Path<String>, PathRejection>,
) -> ApiResult<app::model::Job> {
    let id = path(id)?;
    Ok(Json(st.service.get_job(&user, &id).await?))
}

pub(super) async fn cancel_job(
    State(st): State<AppState>,
    Caller(user): Caller,
    id: Result<Path<String>, PathRejection>,
) -> ApiResult<serde_json::Value> {
    let id = path(id)?;
    let job = st.service.cancel_job(&user, &id).await?;
    Ok(Json(json!({ "job": job })))
}
