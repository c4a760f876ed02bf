//! `/jobs`: list, read, cancel.

use app::model::{Job, JobFilter};
use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::Json;
use serde::Serialize;
use utoipa::ToSchema;

use super::{no_body, path, query, ApiResult, Caller, JobAnswer, ReadErrors, WriteErrors};
use crate::http::AppState;

#[derive(Serialize, ToSchema)]
pub(super) struct JobList {
    jobs: Vec<Job>,
}

/// Copy and sync jobs the caller may see, newest first
#[utoipa::path(
    get,
    path = "/jobs",
    params(JobFilter),
    responses((status = 200, body = JobList), ReadErrors)
)]
pub(super) async fn list_jobs(
    State(st): State<AppState>,
    Caller(user): Caller,
    q: Result<Query<JobFilter>, QueryRejection>,
) -> ApiResult<JobList> {
    let filter = query(q)?;
    let jobs = st.service.list_jobs(&user, &filter).await?;
    Ok(Json(JobList { jobs }))
}

/// One job
#[utoipa::path(
    get,
    path = "/jobs/{id}",
    params(("id" = String, Path, description = "The job's id", pattern = "^[0-9a-f]{24}$")),
    responses((status = 200, body = Job), ReadErrors)
)]
pub(super) async fn get_job(
    State(st): State<AppState>,
    Caller(user): Caller,
    id: Result<Path<String>, PathRejection>,
) -> ApiResult<Job> {
    let id = path(id)?;
    Ok(Json(st.service.get_job(&user, &id).await?))
}

/// Stop a queued or running job
///
/// A cancelled copy leaves no tree and a `failed` container saying so; a cancelled sync
/// leaves the copy as it was.
#[utoipa::path(
    post,
    path = "/jobs/{id}/cancel",
    params(("id" = String, Path, description = "The job's id", pattern = "^[0-9a-f]{24}$")),
    responses((status = 200, body = JobAnswer), WriteErrors)
)]
pub(super) async fn cancel_job(
    State(st): State<AppState>,
    Caller(user): Caller,
    id: Result<Path<String>, PathRejection>,
    sent: Result<Bytes, BytesRejection>,
) -> ApiResult<JobAnswer> {
    let id = path(id)?;
    no_body(sent)?;
    let job = st.service.cancel_job(&user, &id).await?;
    Ok(Json(JobAnswer { job }))
}
