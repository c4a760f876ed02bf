//! The REST API under `/api/v1`: thin handlers that authenticate, parse, call the service
//! layer and shape JSON. Errors are `{"error": {"code", "message"}}` with the status of the
//! code; a malformed request is a 400, never a 500.

mod audit;
mod containers;
mod jobs;
mod openapi;
mod projects;
mod running;
mod sse;
mod sync_status;
mod tokens;
mod users;

pub(crate) use sse::StreamSlots;

use app::backend::CurrentUser;
use app::model::{ApiError, ErrorCode, Job, UserInfo};
use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::extract::{FromRequestParts, Path, Query};
use axum::http::{header, request::Parts, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::{Json, Router};
use serde::Serialize;
use utoipa::{IntoResponses, OpenApi, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::AppState;

/// The REST API's routes and their OpenAPI document, from the same list: an operation is
/// documented exactly when it is routed.
fn routes_and_document() -> (Router<AppState>, utoipa::openapi::OpenApi) {
    OpenApiRouter::with_openapi(openapi::Header::openapi())
        .routes(routes!(containers::list_projects, projects::create_project))
        .routes(routes!(projects::update_project, projects::delete_project))
        .routes(routes!(projects::list_members))
        .routes(routes!(projects::set_member, projects::remove_member))
        .routes(routes!(containers::list_servers, containers::add_server))
        .routes(routes!(containers::set_server_bwlimit))
        .routes(routes!(containers::list_containers))
        .routes(routes!(
            containers::get_container,
            containers::delete_container
        ))
        .routes(routes!(containers::copy_container))
        .routes(routes!(containers::sync_container))
        .routes(routes!(
            containers::list_snapshots,
            containers::create_snapshot
        ))
        .routes(routes!(running::start_container))
        .routes(routes!(running::stop_container))
        .routes(routes!(running::restart_container))
        .routes(routes!(running::container_logs))
        .routes(routes!(running::set_command))
        .routes(routes!(running::set_firewall_rules))
        .routes(routes!(running::set_network_rules))
        .routes(routes!(jobs::list_jobs))
        .routes(routes!(jobs::get_job))
        .routes(routes!(jobs::cancel_job))
        .routes(routes!(sse::job_events))
        .routes(routes!(sse::all_events))
        .routes(routes!(sync_status::sync_status))
        .routes(routes!(audit::list_audit))
        .routes(routes!(tokens::list_tokens, tokens::create_token))
        .routes(routes!(tokens::revoke_token))
        .routes(routes!(users::list_users, users::create_user))
        .routes(routes!(users::update_user))
        .routes(routes!(users::reset_password))
        .routes(routes!(users::change_own_password))
        .routes(routes!(openapi::openapi))
        .split_for_parts()
}

pub fn routes() -> Router<AppState> {
    routes_and_document()
        .0
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
}

/// The OpenAPI document of the REST API, as `/api/v1/openapi.json` serves it.
pub fn document() -> String {
    openapi::DOCUMENT.clone()
}

/// The body of every error answer.
#[derive(Serialize, ToSchema)]
struct ErrorBody {
    error: ApiError,
}

/// An answer that is one job (`{"job": ...}`).
#[derive(Serialize, ToSchema)]
struct JobAnswer {
    job: Job,
}

/// The errors a read may answer with.
#[derive(IntoResponses)]
#[allow(dead_code)] // Only described: the answers are `RestError`s.
enum ReadErrors {
    #[response(status = 400, description = "Bad request (a malformed id or query)")]
    BadRequest(ErrorBody),
    #[response(status = 401, description = "No or invalid credentials")]
    Unauthorized(ErrorBody),
    #[response(status = 404, description = "Not found, or not visible to the caller")]
    NotFound(ErrorBody),
    #[response(status = 503, description = "The database does not answer; try again")]
    Unavailable(ErrorBody),
}

/// The errors a write may answer with.
#[derive(IntoResponses)]
#[allow(dead_code)] // Only described: the answers are `RestError`s.
enum WriteErrors {
    #[response(
        status = 400,
        description = "Bad request (malformed JSON, id or header)"
    )]
    BadRequest(ErrorBody),
    #[response(status = 401, description = "No or invalid credentials")]
    Unauthorized(ErrorBody),
    #[response(status = 403, description = "Forbidden: the caller's role is too low")]
    Forbidden(ErrorBody),
    #[response(status = 404, description = "Not found, or not visible to the caller")]
    NotFound(ErrorBody),
    #[response(
        status = 409,
        description = "Conflict (a taken name or key, a job already running)"
    )]
    Conflict(ErrorBody),
    #[response(
        status = 422,
        description = "Unprocessable: a field is missing, unknown or invalid"
    )]
    Unprocessable(ErrorBody),
    #[response(
        status = 429,
        description = "Too many jobs queued or running for this user or project"
    )]
    TooManyRequests(ErrorBody),
    #[response(status = 503, description = "The database does not answer; try again")]
    Unavailable(ErrorBody),
    #[response(
        status = 507,
        description = "Not enough free space on the target server for a copy"
    )]
    InsufficientStorage(ErrorBody),
}

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
        let unauthorized = self.0.code == ErrorCode::Unauthorized;
        let mut resp = (status, Json(ErrorBody { error: self.0 })).into_response();
        if unauthorized {
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

/// A body that must be a JSON object, for structs whose fields are all optional: serde
/// would also read one from an array (`[null, null]`), which is no such request.
type ObjectBody = Result<Json<serde_json::Map<String, serde_json::Value>>, JsonRejection>;

fn object_body<T: serde::de::DeserializeOwned>(b: ObjectBody) -> Result<T, RestError> {
    serde_json::from_value(serde_json::Value::Object(body(b)?)).map_err(|e| {
        ApiError::new(ErrorCode::Unprocessable, format!("bad request body: {e}")).into()
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
