//! `/openapi.json`: the description of this API, generated from the handlers' annotations
//! and the wire types (utoipa), so it cannot drift from them.

use std::sync::LazyLock;

use axum::http::header;
use axum::response::IntoResponse;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::OpenApi as Document;
use utoipa::{Modify, OpenApi};

use super::ErrorBody;

/// What the handlers' annotations do not say: the document's header, the servers' base
/// path and the Bearer scheme every operation uses.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "doppel API",
        version = "1",
        description = "Copy containers into other projects and servers, and keep the copies in sync. Every request carries `Authorization: Bearer <token>` (create one with `doppel token create --user NAME`). Errors are `{\"error\": {\"code\", \"message\", \"field\"?}}`."
    ),
    servers((url = "/api/v1")),
    security(("bearer" = [])),
    components(schemas(ErrorBody, app::model::JobEvent, app::model::EventKind)),
    modifiers(&BearerScheme)
)]
pub(super) struct Header;

struct BearerScheme;

impl Modify for BearerScheme {
    fn modify(&self, doc: &mut Document) {
        doc.components
            .get_or_insert_with(Default::default)
            .add_security_scheme(
                "bearer",
                SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
            );
    }
}

/// The document as served, built once.
pub(super) static DOCUMENT: LazyLock<String> =
    LazyLock::new(|| super::routes_and_document().1.to_json().unwrap_or_default());

/// This document
#[utoipa::path(
    get,
    path = "/openapi.json",
    security(()),
    responses((status = 200, description = "This document (OpenAPI 3.1)", content_type = "application/json"))
)]
pub(super) async fn openapi() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "application/json")],
        DOCUMENT.as_str(),
    )
}
