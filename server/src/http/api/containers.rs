//! `/projects`, `/servers`, `/containers` and a container's copy, sync and snapshots.

use app::model::{
    ContainerDetail, CopyRequest, CopyStarted, NewServer, Project, Server, ServerBwlimit,
    ServerConversions, ServerWithJoinToken, Snapshot, TransferOptions,
};
use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::{
    accepted, body, idempotency_key, no_body, path, query, ApiResult, Caller, JobAnswer, JsonBody,
    ReadErrors, RestError, WriteErrors,
};
use crate::http::AppState;

#[derive(Serialize, ToSchema)]
pub(super) struct ProjectList {
    projects: Vec<Project>,
}

#[derive(Serialize, ToSchema)]
pub(super) struct ServerList {
    servers: Vec<Server>,
}

#[derive(Serialize, ToSchema)]
pub(super) struct ContainerList {
    containers: Vec<app::model::ContainerSummary>,
}

#[derive(Serialize, ToSchema)]
pub(super) struct SnapshotList {
    snapshots: Vec<Snapshot>,
}

/// Projects the caller is a member of (all, for a platform admin)
#[utoipa::path(get, path = "/projects", responses((status = 200, body = ProjectList), ReadErrors))]
pub(super) async fn list_projects(
    State(st): State<AppState>,
    Caller(user): Caller,
) -> ApiResult<ProjectList> {
    let projects = st.service.list_projects(&user).await?;
    Ok(Json(ProjectList { projects }))
}

/// Servers containers can live on, with their state (online, offline, pending), free space
/// and container count; where they are to platform admins only
#[utoipa::path(get, path = "/servers", responses((status = 200, body = ServerList), ReadErrors))]
pub(super) async fn list_servers(
    State(st): State<AppState>,
    Caller(user): Caller,
) -> ApiResult<ServerList> {
    let servers = st.service.list_servers(&user).await?;
    Ok(Json(ServerList { servers }))
}

/// Limit a server's bandwidth (platform admins)
///
/// Copies and syncs to or from the server move at most this many bytes a second (the
/// lowest of both servers' limits and the request's `?bwlimit=` applies); `null` lifts it.
/// Jobs that start from then on keep to it.
#[utoipa::path(
    put,
    path = "/servers/{id}/bwlimit",
    params(("id" = String, Path, description = "The server", pattern = "^[0-9a-f]{24}$")),
    request_body = ServerBwlimit,
    responses((status = 200, body = Server, description = "The server with its limit"), WriteErrors)
)]
pub(super) async fn set_server_bwlimit(
    State(st): State<AppState>,
    Caller(user): Caller,
    id: Result<Path<String>, PathRejection>,
    req: JsonBody,
) -> ApiResult<Server> {
    let id = path(id)?;
    let req: ServerBwlimit = body(req)?;
    Ok(Json(st.service.set_server_bwlimit(&user, &id, req).await?))
}

/// Make every directory tree on a server an image tree (asynchronous; platform admins)
///
/// A `convert` job for each container on the server whose tree is a directory, as
/// `POST /containers/{id}/convert-tree` starts one (a running container is stopped for
/// the final pass only); those that get none are listed with why. 409 where none could:
/// a server on another host, or doppel without `--image-trees`.
#[utoipa::path(
    post,
    path = "/servers/{id}/convert-trees",
    params(("id" = String, Path, description = "The server", pattern = "^[0-9a-f]{24}$")),
    responses((status = 202, body = ServerConversions, description = "Accepted: the jobs started, and the containers refused"), WriteErrors)
)]
pub(super) async fn convert_server_trees(
    State(st): State<AppState>,
    Caller(user): Caller,
    id: Result<Path<String>, PathRejection>,
    sent: Result<Bytes, BytesRejection>,
) -> Result<Response, RestError> {
    let id = path(id)?;
    no_body(sent)?;
    let done = st.service.convert_server_trees(&user, &id).await?;
    Ok((StatusCode::ACCEPTED, Json(done)).into_response())
}

/// Add a server on another host (platform admins): the answer holds the one-time token
/// its host joins with (`doppel agent join URL TOKEN`)
#[utoipa::path(
    post,
    path = "/servers",
    request_body = NewServer,
    responses((status = 201, body = ServerWithJoinToken, description = "Added: waiting for its host"), WriteErrors)
)]
pub(super) async fn add_server(
    State(st): State<AppState>,
    Caller(user): Caller,
    req: JsonBody,
) -> Result<Response, RestError> {
    let req = body::<NewServer>(req)?;
    let added = st.service.add_server(&user, req).await?;
    Ok((StatusCode::CREATED, Json(added)).into_response())
}

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(super) struct ContainerQuery {
    /// Only the containers of this project
    #[param(pattern = "^[0-9a-f]{24}$")]
    pub(super) project_id: Option<String>,
}

/// Containers the caller may see
#[utoipa::path(
    get,
    path = "/containers",
    params(ContainerQuery),
    responses((status = 200, body = ContainerList), ReadErrors)
)]
pub(super) async fn list_containers(
    State(st): State<AppState>,
    Caller(user): Caller,
    q: Result<Query<ContainerQuery>, QueryRejection>,
) -> ApiResult<ContainerList> {
    let q = query(q)?;
    let containers = st
        .service
        .list_containers(&user, q.project_id.as_deref())
        .await?;
    Ok(Json(ContainerList { containers }))
}

/// One container with snapshots, rules and lineage
#[utoipa::path(
    get,
    path = "/containers/{id}",
    params(("id" = String, Path, description = "The container's id (24 lowercase hex digits)", pattern = "^[0-9a-f]{24}$")),
    responses((status = 200, body = ContainerDetail), ReadErrors)
)]
pub(super) async fn get_container(
    State(st): State<AppState>,
    Caller(user): Caller,
    id: Result<Path<String>, PathRejection>,
) -> ApiResult<ContainerDetail> {
    let id = path(id)?;
    Ok(Json(st.service.get_container(&user, &id).await?))
}

/// Delete a container (asynchronous)
///
/// A job stops its process and removes its tree, state, snapshots and network; the answer
/// is the job (`Location` names it). Its copies stay: their syncs answer 409 from then on.
/// 409 while another job is queued or running for it.
#[utoipa::path(
    delete,
    path = "/containers/{id}",
    params(
        ("id" = String, Path, description = "The container", pattern = "^[0-9a-f]{24}$"),
        ("Idempotency-Key" = Option<String>, Header, pattern = "^[!-~]{1,200}$",
            description = "A retried request with the same key returns the same job instead of starting another"),
    ),
    responses((status = 202, body = JobAnswer, description = "Accepted: the delete's job"), WriteErrors)
)]
pub(super) async fn delete_container(
    State(st): State<AppState>,
    Caller(user): Caller,
    id: Result<Path<String>, PathRejection>,
    headers: HeaderMap,
) -> Result<Response, RestError> {
    let id = path(id)?;
    let key = idempotency_key(&headers)?;
    let job = st
        .service
        .delete_container(&user, &id, key.as_deref())
        .await?;
    let url = job.url.clone();
    Ok(accepted(&url, &JobAnswer { job }))
}

/// Copy a container into a project and onto a server (asynchronous)
///
/// The answer is the new container (status `copying`) and its job; `Location` names the
/// job. `target_server_id` defaults to the source's server, `name` to `<source>-copy`
/// (then `-copy-2`, ...); the SSH key is never inherited.
#[utoipa::path(
    post,
    path = "/containers/{id}/copy",
    params(
        ("id" = String, Path, description = "The source container", pattern = "^[0-9a-f]{24}$"),
        ("Idempotency-Key" = Option<String>, Header, pattern = "^[!-~]{1,200}$",
            description = "A retried request with the same key returns the same job instead of starting another"),
        TransferOptions,
    ),
    request_body = CopyRequest,
    responses((status = 202, body = CopyStarted, description = "Accepted: the new container and its job"), WriteErrors)
)]
pub(super) async fn copy_container(
    State(st): State<AppState>,
    Caller(user): Caller,
    id: Result<Path<String>, PathRejection>,
    options: Result<Query<TransferOptions>, QueryRejection>,
    headers: HeaderMap,
    req: JsonBody,
) -> Result<Response, RestError> {
    let id = path(id)?;
    let options = query(options)?;
    let key = idempotency_key(&headers)?;
    let req = body::<CopyRequest>(req)?;
    let started = st
        .service
        .copy_container(&user, &id, req, key.as_deref(), &options)
        .await?;
    Ok(accepted(&started.job.url, &started))
}

/// Bring a copy up to date with its source, incrementally (asynchronous)
///
/// One at a time per container: a second request gets 409 naming the running job. Only for
/// containers created by copy (409 otherwise).
#[utoipa::path(
    post,
    path = "/containers/{id}/sync",
    params(
        ("id" = String, Path, description = "The copy", pattern = "^[0-9a-f]{24}$"),
        ("Idempotency-Key" = Option<String>, Header, pattern = "^[!-~]{1,200}$",
            description = "A retried request with the same key returns the same job instead of starting another"),
        TransferOptions,
    ),
    responses((status = 202, body = JobAnswer, description = "Accepted: the sync's job"), WriteErrors)
)]
pub(super) async fn sync_container(
    State(st): State<AppState>,
    Caller(user): Caller,
    id: Result<Path<String>, PathRejection>,
    options: Result<Query<TransferOptions>, QueryRejection>,
    headers: HeaderMap,
    sent: Result<Bytes, BytesRejection>,
) -> Result<Response, RestError> {
    let id = path(id)?;
    let options = query(options)?;
    let key = idempotency_key(&headers)?;
    no_body(sent)?;
    let job = st
        .service
        .sync_container(&user, &id, key.as_deref(), &options)
        .await?;
    let url = job.url.clone();
    Ok(accepted(&url, &JobAnswer { job }))
}

/// Make a container's directory tree an image tree (asynchronous; platform admins)
///
/// Its copies on its server are then clones of its image instead of file-by-file copies;
/// its snapshots are converted too. A running container is copied while it runs, then
/// stopped for the final pass only (`downtime_ms`) and started again. Needs doppel started
/// with `--image-trees` and XFS with reflink=1 under the server's storage; 409 saying why
/// where it cannot be done (a job has the container, it failed, it is on another host, or
/// it is an image tree or subvolume already); 507 where its server lacks the room.
#[utoipa::path(
    post,
    path = "/containers/{id}/convert-tree",
    params(
        ("id" = String, Path, description = "The container", pattern = "^[0-9a-f]{24}$"),
        ("Idempotency-Key" = Option<String>, Header, pattern = "^[!-~]{1,200}$",
            description = "A retried request with the same key returns the same job instead of starting another"),
    ),
    responses((status = 202, body = JobAnswer, description = "Accepted: the conversion's job"), WriteErrors)
)]
pub(super) async fn convert_tree(
    State(st): State<AppState>,
    Caller(user): Caller,
    id: Result<Path<String>, PathRejection>,
    headers: HeaderMap,
    sent: Result<Bytes, BytesRejection>,
) -> Result<Response, RestError> {
    let id = path(id)?;
    let key = idempotency_key(&headers)?;
    no_body(sent)?;
    let job = st.service.convert_tree(&user, &id, key.as_deref()).await?;
    let url = job.url.clone();
    Ok(accepted(&url, &JobAnswer { job }))
}

/// A container's snapshots
#[utoipa::path(
    get,
    path = "/containers/{id}/snapshots",
    params(("id" = String, Path, description = "The container", pattern = "^[0-9a-f]{24}$")),
    responses((status = 200, body = SnapshotList), ReadErrors)
)]
pub(super) async fn list_snapshots(
    State(st): State<AppState>,
    Caller(user): Caller,
    id: Result<Path<String>, PathRejection>,
) -> ApiResult<SnapshotList> {
    let id = path(id)?;
    let snapshots = st.service.list_snapshots(&user, &id).await?;
    Ok(Json(SnapshotList { snapshots }))
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct SnapshotRequest {
    /// Letters, digits and hyphens, unique among the container's snapshots
    #[schema(pattern = "^[A-Za-z]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?$")]
    pub(super) name: String,
}

/// Freeze the container's current tree under a name
#[utoipa::path(
    post,
    path = "/containers/{id}/snapshots",
    params(("id" = String, Path, description = "The container", pattern = "^[0-9a-f]{24}$")),
    request_body = SnapshotRequest,
    responses((status = 201, body = Snapshot, description = "Created"), WriteErrors)
)]
pub(super) async fn create_snapshot(
    State(st): State<AppState>,
    Caller(user): Caller,
    id: Result<Path<String>, PathRejection>,
    req: JsonBody,
) -> Result<Response, RestError> {
    let id = path(id)?;
    let req = body::<SnapshotRequest>(req)?;
    let snap = st.service.create_snapshot(&user, &id, &req.name).await?;
    Ok((StatusCode::CREATED, Json(snap)).into_response())
}
