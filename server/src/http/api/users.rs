//! `/users` (platform admins) and `/me/password` (everyone, for themselves).

use app::model::{NewUser, PasswordChange, UserAccount, UserChange, UserWithPassword};
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
pub(super) struct UserList {
    users: Vec<UserAccount>,
}

/// Every user (platform admins)
#[utoipa::path(get, path = "/users", responses((status = 200, body = UserList), (status = 403, description = "Not a platform admin"), ReadErrors))]
pub(super) async fn list_users(
    State(st): State<AppState>,
    Caller(user): Caller,
) -> ApiResult<UserList> {
    let users = st.service.list_users(&user).await?;
    Ok(Json(UserList { users }))
}

/// Make a user (platform admins); the answer holds their password, shown this once
#[utoipa::path(
    post,
    path = "/users",
    request_body = NewUser,
    responses((status = 201, body = UserWithPassword, description = "Created"), WriteErrors)
)]
pub(super) async fn create_user(
    State(st): State<AppState>,
    Caller(user): Caller,
    req: JsonBody,
) -> Result<Response, RestError> {
    let req = body::<NewUser>(req)?;
    let made = st.service.create_user(&user, req).await?;
    Ok((StatusCode::CREATED, Json(made)).into_response())
}

/// Make a user a platform admin or not, disable or enable them (platform admins)
///
/// A disabled user cannot log in; their sessions end and their tokens stop working at once.
#[utoipa::path(
    patch,
    path = "/users/{name}",
    params(("name" = String, Path, description = "The user's name")),
    request_body = UserChange,
    responses((status = 200, body = UserAccount), WriteErrors)
)]
pub(super) async fn update_user(
    State(st): State<AppState>,
    Caller(user): Caller,
    name: Result<Path<String>, PathRejection>,
    req: JsonBody,
) -> ApiResult<UserAccount> {
    let name = path(name)?;
    let change: UserChange = body(req)?;
    Ok(Json(st.service.update_user(&user, &name, change).await?))
}

/// Give a user a new random password, shown this once (platform admins); their console
/// sessions end
#[utoipa::path(
    post,
    path = "/users/{name}/password",
    params(("name" = String, Path, description = "The user's name")),
    responses((status = 200, body = UserWithPassword), WriteErrors)
)]
pub(super) async fn reset_password(
    State(st): State<AppState>,
    Caller(user): Caller,
    name: Result<Path<String>, PathRejection>,
) -> ApiResult<UserWithPassword> {
    let name = path(name)?;
    Ok(Json(st.service.reset_password(&user, &name).await?))
}

/// Change one's own password (the current one required); every console session of the
/// user ends
#[utoipa::path(
    post,
    path = "/me/password",
    request_body = PasswordChange,
    responses((status = 204, description = "Changed"), WriteErrors)
)]
pub(super) async fn change_own_password(
    State(st): State<AppState>,
    Caller(user): Caller,
    req: JsonBody,
) -> Result<StatusCode, RestError> {
    let req = body::<PasswordChange>(req)?;
    st.service.change_own_password(&user, req).await?;
    Ok(StatusCode::NO_CONTENT)
}
