//! `/projects` (making, changing, deleting) and `/projects/{id}/members`.

use app::model::{Member, MemberRequest, NewProject, Project, ProjectRequest};
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
pub(super) struct MemberList {
    members: Vec<Member>,
}

/// A project and a user name from the path.
fn project_and_user(
    p: Result<Path<(String, String)>, PathRejection>,
) -> Result<(String, String), RestError> {
    p.map(|Path(v)| v)
        .map_err(|e| RestError(app::model::ApiError::invalid(e.body_text())))
}

/// Make a project (platform admins)
#[utoipa::path(
    post,
    path = "/projects",
    request_body = NewProject,
    responses((status = 201, body = Project, description = "Created"), WriteErrors)
)]
pub(super) async fn create_project(
    State(st): State<AppState>,
    Caller(user): Caller,
    req: JsonBody,
) -> Result<Response, RestError> {
    let req = body::<NewProject>(req)?;
    let project = st.service.create_project(&user, req).await?;
    Ok((StatusCode::CREATED, Json(project)).into_response())
}

/// Rename or describe a project (its admins)
#[utoipa::path(
    patch,
    path = "/projects/{id}",
    params(("id" = String, Path, description = "The project", pattern = "^[0-9a-f]{24}$")),
    request_body = ProjectRequest,
    responses((status = 200, body = Project), WriteErrors)
)]
pub(super) async fn update_project(
    State(st): State<AppState>,
    Caller(user): Caller,
    id: Result<Path<String>, PathRejection>,
    req: JsonBody,
) -> ApiResult<Project> {
    let id = path(id)?;
    let req: ProjectRequest = body(req)?;
    Ok(Json(st.service.update_project(&user, &id, req).await?))
}

/// Delete a project (platform admins; 409 while it holds containers)
#[utoipa::path(
    delete,
    path = "/projects/{id}",
    params(("id" = String, Path, description = "The project", pattern = "^[0-9a-f]{24}$")),
    responses((status = 204, description = "Deleted"), WriteErrors)
)]
pub(super) async fn delete_project(
    State(st): State<AppState>,
    Caller(user): Caller,
    id: Result<Path<String>, PathRejection>,
) -> Result<StatusCode, RestError> {
    let id = path(id)?;
    st.service.delete_project(&user, &id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// A project's members and their roles
#[utoipa::path(
    get,
    path = "/projects/{id}/members",
    params(("id" = String, Path, description = "The project", pattern = "^[0-9a-f]{24}$")),
    responses((status = 200, body = MemberList), ReadErrors)
)]
pub(super) async fn list_members(
    State(st): State<AppState>,
    Caller(user): Caller,
    id: Result<Path<String>, PathRejection>,
) -> ApiResult<MemberList> {
    let id = path(id)?;
    let members = st.service.list_members(&user, &id).await?;
    Ok(Json(MemberList { members }))
}

/// Give a user a role in a project (its admins): viewer reads, operator also copies,
/// syncs and runs containers, admin also manages the project and its members
#[utoipa::path(
    put,
    path = "/projects/{id}/members/{user}",
    params(
        ("id" = String, Path, description = "The project", pattern = "^[0-9a-f]{24}$"),
        ("user" = String, Path, description = "The user's name"),
    ),
    request_body = MemberRequest,
    responses((status = 200, body = Member), WriteErrors)
)]
pub(super) async fn set_member(
    State(st): State<AppState>,
    Caller(user): Caller,
    ids: Result<Path<(String, String)>, PathRejection>,
    req: JsonBody,
) -> ApiResult<Member> {
    let (id, member) = project_and_user(ids)?;
    let req = body::<MemberRequest>(req)?;
    Ok(Json(
        st.service.set_member(&user, &id, &member, req.role).await?,
    ))
}

/// Take a user out of a project (at once: their requests, tokens and streams lose it)
#[utoipa::path(
    delete,
    path = "/projects/{id}/members/{user}",
    params(
        ("id" = String, Path, description = "The project", pattern = "^[0-9a-f]{24}$"),
        ("user" = String, Path, description = "The user's name"),
    ),
    responses((status = 204, description = "Removed"), WriteErrors)
)]
pub(super) async fn remove_member(
    State(st): State<AppState>,
    Caller(user): Caller,
    ids: Result<Path<(String, String)>, PathRejection>,
) -> Result<StatusCode, RestError> {
    let (id, member) = project_and_user(ids)?;
    st.service.remove_member(&user, &id, &member).await?;
    Ok(StatusCode::NO_CONTENT)
}
