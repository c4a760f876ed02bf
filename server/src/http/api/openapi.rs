//! `/openapi.json`: the description of this API.

use axum::http::header;
use axum::response::IntoResponse;

/// The OpenAPI description of this API (kept true by `tests/openapi.rs`).
pub const OPENAPI: &str = include_str!("openapi.json");

pub(super) async fn openapi() -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "application/json")], OPENAPI)
}
