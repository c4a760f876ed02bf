//! `/tokens`: the caller's API tokens.

use app::model::{ApiToken, CreatedToken, NewToken};
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Serialize;
use utoipa::ToSchema;

use super::{body, path, ApiResult, Caller, JsonBody, ReadErrors, RestError, WriteErrors};
use crate::http::AppState;

#[derive(Serialize, ToSchema)]
pub(super) struct TokenList {
    tokens: Vec<ApiToken>,
}

/// The caller's API tokens, newest first (never their secrets)
#[utoipa::path(get, path = "/tokens", responses((status = 200, body = TokenList), ReadErrors))]
pub(super) async fn list_tokens(
    State(st): State<AppState>,
    Caller(user): Caller,
) -> ApiResult<TokenList> {
    let tokens = st.service.list_tokens(&user).await?;
    Ok(Json(TokenList { tokens }))
}

/// Create an API token for the caller
///
/// The answer holds its secret, shown this once. A token may expire (`expires_at`), be
/// read-only (every write answers 403) and be limited to some projects. Tokens are made
/// with a console session or a token without limits (403 otherwise).
#[utoipa::path(
    post,
    path = "/tokens",
    request_body = NewToken,
    responses((status = 201, body = CreatedToken, description = "Created: the secret, once"), WriteErrors)
)]
pub(super) async fn create_token(
    State(st): State<AppState>,
    Caller(user): Caller,
    req: JsonBody,
) -> Result<Response, RestError> {
    let req = body::<NewToken>(req)?;
    let created = st.service.create_token(&user, req).await?;
    Ok((StatusCode::CREATED, Json(created)).into_response())
}

/// Revoke one of the caller's tokens (it stops working at once)
#[utoipa::path(
    delete,
    path = "/tokens/{id}",
    params(("id" = String, Path, description = "The token", pattern = "^[0-9a-f]{24}$")),
    responses((status = 204, description = "Revoked"), WriteErrors)
)]
pub(super) async fn revoke_token(
    State(st): State<AppState>,
    Caller(user): Caller,
    id: Result<Path<String>, PathRejection>,
) -> Result<StatusCode, RestError> {
    let id = path(id)?;
    st.service.revoke_token(&user, &id).await?;
    Ok(StatusCode::NO_CONTENT)
}
