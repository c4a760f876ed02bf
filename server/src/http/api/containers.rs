//! `/projects`, `/servers`, `/containers` and a container's copy, sync and snapshots.

use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::json;

use super::{accepted, body, idempotency_key, path, query, ApiResult, Caller, RestError};
use crate::http::AppState;

pub(super) async fn list_projects(
    State(st): State<AppState>,
    Caller(user): Caller,
) -> ApiResult<serde_json::Value> {
    let projects = st.service.list_projects(&user).await?;
    Ok(Json(json!({ "projects": projects })))
}

pub(super) async fn list_servers(
    State(st): State<AppState>,
    Caller(user): Caller,
) -> ApiResult<serde_json::Value> {
    let servers = st.service.list_servers(&user).await?;
    Ok(Json(json!({ "servers": servers })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ContainerQuery {
    pub(super) project_id: Option<String>,
}

pub(super) async fn list_containers(
    State(st): State<AppState>,
    Caller(user): Caller,
    q: Result<Query<ContainerQuery>, QueryRejection>,
) -> ApiResult<serde_json::Value> {
    let q = query(q)?;
    let containers = st
        .service
        .list_containers(&user, q.project_id.as_deref())
        .await?;
    Ok(Json(json!({ "containers": containers })))
}

pub(super) async fn get_container(
    State(st): State<AppState>,
    Caller(user): Caller,
    id: Result<Path<String>, PathRejection>,
) -> ApiResult<app::model::ContainerDetail> {
    let id = path(id)?;
    Ok(Json(st.service.get_container(&user, &id).await?))
}

pub(super) async fn copy_container(
    State(st): State<AppState>,
    Caller(user): Caller,
    id: Result<Path<String>, PathRejection>,
    headers: HeaderMap,
    req: Result<Json<app::model::CopyRequest>, JsonRejection>,
) -> Result<Response, RestError> {
    let id = path(id)?;
    let key = idempotency_key(&headers)?;
    let req = body(req)?;
    let started = st
        .service
        .copy_container(&user, &id, req, key.as_deref())
        .await?;
    Ok(accepted(&started.job.url, &started))
}

pub(super) async fn sync_container(
    State(st): State<AppState>,
    Caller(user): Caller,
    id: Result<Path<String>, PathRejection>,
    headers: HeaderMap,
) -> Result<Response, RestError> {
    let id = path(id)?;
    let key = idempotency_key(&headers)?;
    let job = st
        .service
        .sync_container(&user, &id, key.as_deref())
        .await?;
    Ok(accepted(&job.url, &serde_json::json!({ "job": job })))
}

pub(super) async fn list_snapshots(
    State(st): State<AppState>,
    Caller(user): Caller,
    id: Result<Path<String>, PathRejection>,
) -> ApiResult<serde_json::Value> {
    let id = path(id)?;
    let snapshots = st.service.list_snapshots(&user, &id).await?;
    Ok(Json(json!({ "snapshots": snapshots })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct SnapshotRequest {
    pub(super) name: String,
}

pub(super) async fn create_snapshot(
    State(st): State<AppState>,
    Caller(user): Caller,
    id: Result<Path<String>, PathRejection>,
    req: Result<Json<SnapshotRequest>, JsonRejection>,
) -> Result<Response, RestError> {
    let id = path(id)?;
    let req = body(req)?;
    let snap = st.service.create_snapshot(&user, &id, &req.name).await?;
    Ok((StatusCode::CREATED, Json(snap)).into_response())
}
