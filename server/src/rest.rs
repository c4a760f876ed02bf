//! The REST API under `/api/v1`: thin handlers that authenticate, parse, call the service
//! layer and shape JSON. Errors are `{"error": {"code", "message"}}` with the status of the
//! code; a malformed request is a 400, never a 500.

use app::backend::{Backend, CurrentUser};
use app::model::{ApiError, ErrorCode, UserInfo};
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{FromRequestParts, Path, Query, State};
use axum::http::{header, request::Parts, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
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
        .route("/jobs", get(list_jobs))
        .route("/jobs/{id}", get(get_job))
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

async fn get_job(
    State(st): State<AppState>,
    Caller(user): Caller,
    id: Result<Path<String>, PathRejection>,
) -> ApiResult<app::model::Job> {
    let id = path(id)?;
    Ok(Json(st.service.get_job(&user, &id).await?))
}
