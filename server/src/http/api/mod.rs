//! The REST API under `/api/v1`: thin handlers that authenticate, parse, call the service
//! layer and shape JSON. Errors are `{"error": {"code", "message"}}` with the status of the
//! code; a malformed request is a 400, never a 500.

mod audit;
mod containers;
mod jobs;
mod openapi;
mod params;
mod projects;
mod running;
mod sse;
mod sync_status;
mod tokens;
mod users;

pub(crate) use sse::StreamSlots;

use app::backend::CurrentUser;
use app::model::{ApiError, ErrorCode, Job, UserInfo};
use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, JsonRejection, PathRejection, QueryRejection};
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
        .routes(routes!(containers::convert_server_trees))
        .routes(routes!(containers::list_containers))
        .routes(routes!(
            containers::get_container,
            containers::delete_container
        ))
        .routes(routes!(containers::copy_container))
        .routes(routes!(containers::sync_container))
        .routes(routes!(containers::convert_tree))
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
    let (routes, document) = routes_and_document();
    let documented = std::sync::Arc::new(params::Documented::of(&document));
    routes
        .route_layer(axum::middleware::from_fn_with_state(
            documented,
            params::refuse_undocumented,
        ))
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
        status = 413,
        description = "The request body is larger than 2 MiB, the most doppel reads"
    )]
    PayloadTooLarge(ErrorBody),
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
    #[response(
        status = 503,
        description = "The database does not answer, or (a snapshot) no job slot came free within 10 s; try again"
    )]
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
        let retry_after = self.0.retry_after;
        let mut resp = (status, Json(ErrorBody { error: self.0 })).into_response();
        if let Some(secs) = retry_after {
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
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
                "invalid credentials: the token is unknown, revoked or expired, or the Authorization header is not `Bearer <token>`; make a token in Settings or with `doppel token create`",
            )
            .into());
        }
        Err(ApiError::unauthorized().into())
    }
}

/// Query parameters that fail to parse become a 400 that names the problem.
fn query<T>(q: Result<Query<T>, QueryRejection>) -> Result<T, RestError> {
    q.map(|Query(v)| v).map_err(|e| {
        // (axum's text says which library failed before what was wrong.)
        let text = e.body_text();
        let why = text
            .strip_prefix("Failed to deserialize query string: ")
            .unwrap_or(&text);
        // Which parameter: serde names it before its problem ("timeout: invalid digit").
        // (One an operation does not take never gets here: `params` refuses it first.)
        let named = why.split_once(": ").map(|(name, _)| name).filter(|name| {
            !name.is_empty() && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
        });
        let e = ApiError::invalid(format!("bad query string: {why}"));
        match named {
            Some(name) => e.on_field(name),
            None => e,
        }
        .into()
    })
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
fn body<T: serde::de::DeserializeOwned>(b: JsonBody) -> Result<T, RestError> {
    let Json(raw) = b.map_err(|e| unread(e.status(), &e.body_text()))?;
    // Every request body is an object, but serde also reads a struct from an array (its
    // fields in order): `[[]]` would be a firewall rule list's `{"rules": []}`.
    if raw.get().trim_start().starts_with('[') {
        return Err(ApiError::new(
            ErrorCode::Unprocessable,
            "the body must be a JSON object, not an array",
        )
        .into());
    }
    serde_path_to_error::deserialize(&mut serde_json::Deserializer::from_str(raw.get()))
        .map_err(|e| field_error(&e.path().to_string(), &e.inner().to_string()).into())
}

/// A request's JSON body as sent (checked to be JSON, within the size limit, with a JSON
/// content type), read into its type by [`body`].
type JsonBody = Result<Json<Box<serde_json::value::RawValue>>, JsonRejection>;

/// A body that could not be read: beyond axum's default limit (2 MiB, which no request of
/// this API comes near), 413; else (malformed, not JSON) 400.
fn unread(status: StatusCode, why: &str) -> RestError {
    match status {
        StatusCode::PAYLOAD_TOO_LARGE => ApiError::new(
            ErrorCode::PayloadTooLarge,
            "the request body is larger than 2 MiB, the most doppel reads",
        ),
        _ => ApiError::invalid(format!("bad request body: {why}")),
    }
    .into()
}

/// A request that takes no body (a sync): none, or an empty JSON object. Anything else is
/// refused rather than ignored (a client sending options there would think they were
/// taken).
fn no_body(sent: Result<Bytes, BytesRejection>) -> Result<(), RestError> {
    let sent = sent.map_err(|e| unread(e.status(), &e.body_text()))?;
    if sent.iter().all(u8::is_ascii_whitespace) {
        return Ok(());
    }
    match serde_json::from_slice::<serde_json::Value>(&sent) {
        Ok(serde_json::Value::Object(fields)) => match fields.keys().next() {
            None => Ok(()),
            Some(field) => Err(ApiError::new(
                ErrorCode::Unprocessable,
                format!("{field} is not a field of this request: it takes no request body"),
            )
            .on_field(field)
            .into()),
        },
        _ => Err(ApiError::invalid("this request takes no request body").into()),
    }
}

/// The message for serde's `message` about the value at `path` of a body (`.`: the body
/// itself): which field, and what is wrong with it, in the request's terms (serde's own
/// message names Rust types).
fn field_error(path: &str, message: &str) -> ApiError {
    // Every request body is an object, but serde also reads a struct from an array (its
    // fields in order): a path that starts with an index is inside a body that is an array.
    if path.starts_with('[') {
        return ApiError::new(
            ErrorCode::Unprocessable,
            "the body must be a JSON object, not an array",
        );
    }
    // (serde_json ends its messages with where: " at line 1 column 25".)
    let message = message.rsplit_once(" at line ").map_or(message, |(m, _)| m);
    let quoted = |m: &str| m.split('`').nth(1).map(str::to_string);
    let (field, text) = if let Some(f) = message.strip_prefix("missing field ").and_then(quoted) {
        let at = nested(path, &f);
        (Some(at.clone()), format!("{at} is required"))
    } else if let Some(f) = message.strip_prefix("unknown field ").and_then(quoted) {
        let at = nested(path, &f);
        let known = message
            .split_once(", expected one of ")
            .map(|(_, k)| format!(" (it has {})", k.replace('`', "")))
            .unwrap_or_default();
        (
            Some(at.clone()),
            format!("{at} is not a field of this request{known}"),
        )
    } else if let Some(v) = message.strip_prefix("unknown variant ").and_then(quoted) {
        let known = message
            .split_once(", expected one of ")
            .map(|(_, k)| format!(": one of {}", k.replace('`', "")))
            .unwrap_or_default();
        (
            field_at(path),
            format!("{} must be{known}, not {v:?}", named(path)),
        )
    } else if let Some((got, want)) = message
        .strip_prefix("invalid type: ")
        .and_then(|m| m.split_once(", expected "))
    {
        (
            field_at(path),
            format!("{} must be {}, not {got}", named(path), json_kind(want)),
        )
    } else if let Some((_, want)) = message
        .strip_prefix("invalid length ")
        .and_then(|m| m.split_once(", expected "))
    {
        // (An array where an object or a fixed number of items is wanted.)
        (
            field_at(path),
            format!("{} must be {}, not an array", named(path), json_kind(want)),
        )
    } else if let Some((got, want)) = message
        .strip_prefix("invalid value: ")
        .and_then(|m| m.split_once(", expected "))
    {
        (
            field_at(path),
            format!("{} must be {want}, not {got}", named(path)),
        )
    } else {
        (field_at(path), format!("{}: {message}", named(path)))
    };
    let e = ApiError::new(ErrorCode::Unprocessable, text);
    match field {
        Some(f) => e.on_field(&f),
        None => e,
    }
}

/// The field at `path`, if the error is about one (not the body itself).
fn field_at(path: &str) -> Option<String> {
    (path != ".").then(|| path.to_string())
}

/// How a message names the value at `path`.
fn named(path: &str) -> String {
    field_at(path).unwrap_or_else(|| "the body".into())
}

/// `field` inside the object at `path` (an unknown field's path already ends with it).
fn nested(path: &str, field: &str) -> String {
    match field_at(path) {
        Some(p) if p == field || p.ends_with(&format!(".{field}")) => p,
        Some(p) => format!("{p}.{field}"),
        None => field.to_string(),
    }
}

/// What serde expected, as JSON calls it.
fn json_kind(want: &str) -> String {
    if want.starts_with("struct ") || want.starts_with("a map") {
        return "a JSON object".into();
    }
    if want.starts_with("a sequence") || want.starts_with("tuple") {
        return "a JSON array".into();
    }
    match want {
        "u8" | "u16" | "u32" | "u64" | "usize" | "i8" | "i16" | "i32" | "i64" | "isize" => {
            "a whole number".into()
        }
        "f32" | "f64" => "a number".into(),
        w => w.to_string(),
    }
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
