//! The REST API under `/api/v1`: thin handlers that authenticate, parse, call the service
//! layer and shape JSON. Errors are `{"error": {"code", "message"}}` with the status of the
//! code; a malformed request is a 400, never a 500.

use app::backend::{Backend, CurrentUser};
use app::model::{ApiError, ErrorCode, UserInfo};
use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::extract::{FromRequestParts, Path, Query, State};
use axum::http::{header, request::Parts, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::json;

use crate::service::JobFilter;
use crate::web::AppState;

/// The API's error response.
pub struct RestError(pub ApiError);

impl From<ApiError> for RestError {
    fn from(e: ApiError) -> Self {
        RestError(e)
    }
}

impl IntoResponse for RestError {
    fn into_response(self) -> Response {
        let status =
            StatusCode::from_u16(self.0.code.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let mut resp = (status, Json(json!({ "error": self.0 }))).into_response();
        if self.0.code == ErrorCode::Unauthorized {
            resp.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"doppel\""),
            );
        }
        resp
    }
}

type ApiResult<T> = Result<Json<T>, RestError>;

/// The authenticated caller, resolved by the session middleware from a Bearer token or the
/// console's session cookie.
pub struct Caller(pub UserInfo);

/// Marks a request whose Authorization header named no valid token.
#[derive(Clone, Copy)]
pub struct BadCredentials;

impl<S: Send + Sync> FromRequestParts<S> for Caller {
    type Rejection = RestError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        if let Some(CurrentUser(user)) = parts.extensions.get::<CurrentUser>() {
            return Ok(Caller(user.clone()));
        }
        if parts.extensions.get::<BadCredentials>().is_some() {
            return Err(ApiError::new(
                ErrorCode::Unauthorized,
                "invalid credentials: the Authorization header must be `Bearer <token>` with a token from `doppel token create`",
            )
            .into());
        }
        Err(ApiError::unauthorized().into())
    }
}

/// Query parameters that fail to parse become a 400 that names the problem.
fn query<T>(q: Result<Query<T>, QueryRejection>) -> Result<T, RestError> {
    q.map(|Query(v)| v)
        .map_err(|e| ApiError::invalid(format!("bad query string: {}", e.body_text())).into())
}

/// A path parameter that fails to decode becomes a 400 in the API's error format.
fn path(p: Result<Path<String>, PathRejection>) -> Result<String, RestError> {
    p.map(|Path(v)| v)
        .map_err(|e| ApiError::invalid(format!("bad path: {}", e.body_text())).into())
}

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/projects", get(list_projects))
        .route("/servers", get(list_servers))
        .route("/containers", get(list_containers))
        .route("/containers/{id}", get(get_container))
        .route("/containers/{id}/copy", post(copy_container))
        .route("/containers/{id}/sync", post(sync_container))
        .route(
            "/containers/{id}/snapshots",
            get(list_snapshots).post(create_snapshot),
        )
        .route("/jobs", get(list_jobs))
        .route("/jobs/{id}", get(get_job))
        .route("/jobs/{id}/cancel", post(cancel_job))
        .route("/jobs/{id}/events", get(job_events))
        .route("/events", get(all_events))
        .route("/sync-status", get(sync_status))
        .route("/openapi.json", get(openapi))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
}

/// The OpenAPI description of this API (kept true by `tests/openapi.rs`).
pub const OPENAPI: &str = include_str!("openapi.json");

async fn openapi() -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "application/json")], OPENAPI)
}

async fn not_found() -> RestError {
    ApiError::new(
        ErrorCode::NotFound,
        "no such API endpoint; see /api/v1/openapi.json",
    )
    .into()
}

async fn method_not_allowed() -> Response {
    let mut resp = RestError(ApiError::invalid(
        "method not allowed on this endpoint; see /api/v1/openapi.json",
    ))
    .into_response();
    *resp.status_mut() = StatusCode::METHOD_NOT_ALLOWED;
    resp
}

async fn list_projects(
    State(st): State<AppState>,
    Caller(user): Caller,
) -> ApiResult<serde_json::Value> {
    let projects = st.service.list_projects(&user).await?;
    Ok(Json(json!({ "projects": projects })))
}

async fn list_servers(
    State(st): State<AppState>,
    Caller(user): Caller,
) -> ApiResult<serde_json::Value> {
    let servers = st.service.list_servers(&user).await?;
    Ok(Json(json!({ "servers": servers })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ContainerQuery {
    project_id: Option<String>,
}

async fn list_containers(
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

async fn get_container(
    State(st): State<AppState>,
    Caller(user): Caller,
    id: Result<Path<String>, PathRejection>,
) -> ApiResult<app::model::ContainerDetail> {
    let id = path(id)?;
    Ok(Json(st.service.get_container(&user, &id).await?))
}

async fn list_jobs(
    State(st): State<AppState>,
    Caller(user): Caller,
    q: Result<Query<JobFilter>, QueryRejection>,
) -> ApiResult<serde_json::Value> {
    let filter = query(q)?;
    let jobs = st.service.list_jobs(&user, &filter).await?;
    Ok(Json(json!({ "jobs": jobs })))
}

async fn sync_status(
    State(st): State<AppState>,
    Caller(user): Caller,
) -> ApiResult<serde_json::Value> {
    let copies = st.service.copy_statuses(&user).await?;
    Ok(Json(json!({ "copies": copies })))
}

async fn get_job(
    State(st): State<AppState>,
    Caller(user): Caller,
    id: Result<Path<String>, PathRejection>,
) -> ApiResult<app::model::Job> {
    let id = path(id)?;
    Ok(Json(st.service.get_job(&user, &id).await?))
}

/// A JSON body that fails to parse: 400 for malformed JSON or a missing content type, 422
/// for well-formed JSON with wrong, missing or unknown fields.
fn body<T>(b: Result<Json<T>, JsonRejection>) -> Result<T, RestError> {
    b.map(|Json(v)| v).map_err(|e| {
        let code = match e {
            JsonRejection::JsonDataError(_) => ErrorCode::Unprocessable,
            _ => ErrorCode::InvalidRequest,
        };
        ApiError::new(code, format!("bad request body: {}", e.body_text())).into()
    })
}

fn idempotency_key(headers: &HeaderMap) -> Result<Option<String>, RestError> {
    match headers.get("idempotency-key") {
        None => Ok(None),
        Some(v) => v
            .to_str()
            .map(|s| Some(s.to_string()))
            .map_err(|_| ApiError::invalid("Idempotency-Key must be visible ASCII").into()),
    }
}

/// 202 Accepted, pointing at the job to follow.
fn accepted<T: serde::Serialize>(job_url: &str, body: &T) -> Response {
    let mut resp = (StatusCode::ACCEPTED, Json(body)).into_response();
    if let Ok(v) = HeaderValue::from_str(job_url) {
        resp.headers_mut().insert(header::LOCATION, v);
    }
    resp
}

async fn copy_container(
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
        .start_copy(&user, &id, req, key.as_deref())
        .await?;
    Ok(accepted(&started.job.url, &started))
}

async fn sync_container(
    State(st): State<AppState>,
    Caller(user): Caller,
    id: Result<Path<String>, PathRejection>,
    headers: HeaderMap,
) -> Result<Response, RestError> {
    let id = path(id)?;
    let key = idempotency_key(&headers)?;
    let job = st.service.start_sync(&user, &id, key.as_deref()).await?;
    Ok(accepted(&job.url, &serde_json::json!({ "job": job })))
}

async fn cancel_job(
    State(st): State<AppState>,
    Caller(user): Caller,
    id: Result<Path<String>, PathRejection>,
) -> ApiResult<serde_json::Value> {
    let id = path(id)?;
    let job = st.service.cancel_job(&user, &id).await?;
    Ok(Json(json!({ "job": job })))
}

async fn list_snapshots(
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
struct SnapshotRequest {
    name: String,
}

async fn create_snapshot(
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

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EventsQuery {
    last_event_id: Option<u64>,
}

async fn job_events(
    State(st): State<AppState>,
    Caller(user): Caller,
    id: Result<Path<String>, PathRejection>,
    headers: HeaderMap,
    q: Result<Query<EventsQuery>, QueryRejection>,
) -> Result<Response, RestError> {
    let id = path(id)?;
    let after = crate::sse::resume_point(&headers, query(q)?.last_event_id)?;
    Ok(crate::sse::job_stream(&st.service, &user, &id, after).await?)
}

async fn all_events(
    State(st): State<AppState>,
    Caller(user): Caller,
    headers: HeaderMap,
    q: Result<Query<EventsQuery>, QueryRejection>,
) -> Result<Response, RestError> {
    let after = crate::sse::resume_point(&headers, query(q)?.last_event_id)?;
    Ok(crate::sse::all_stream(&st.service, &user, after).await?)
}
