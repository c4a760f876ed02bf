//! Server functions: the console's calls into the backend. Each is a thin shim that finds
//! the caller and forwards to the shared [`Backend`](crate::backend::Backend).

use leptos::prelude::*;

use crate::model::*;

#[cfg(feature = "ssr")]
async fn caller() -> Result<(crate::backend::SharedBackend, UserInfo), ApiError> {
    use crate::backend::{CurrentUser, SharedBackend};
    let backend = use_context::<SharedBackend>().ok_or_else(ApiError::internal)?;
    let parts: http::request::Parts = leptos_axum::extract()
        .await
        .map_err(|_| ApiError::internal())?;
    match parts.extensions.get::<CurrentUser>() {
        Some(CurrentUser(user)) => Ok((backend, user.clone())),
        None => Err(ApiError::unauthorized()),
    }
}

/// The logged-in user, or `None` when the session is missing or expired.
#[server]
pub async fn whoami() -> Result<Option<UserInfo>, ApiError> {
    match caller().await {
        Ok((_, user)) => Ok(Some(user)),
        Err(e) if e.code == ErrorCode::Unauthorized => Ok(None),
        Err(e) => Err(e),
    }
}

#[server]
pub async fn list_projects() -> Result<Vec<Project>, ApiError> {
    let (backend, user) = caller().await?;
    backend.list_projects(&user).await
}

#[server]
pub async fn list_containers(
    project_id: Option<String>,
) -> Result<Vec<ContainerSummary>, ApiError> {
    let (backend, user) = caller().await?;
    backend.list_containers(&user, project_id.as_deref()).await
}

#[server]
pub async fn get_container(id: String) -> Result<ContainerDetail, ApiError> {
    let (backend, user) = caller().await?;
    backend.get_container(&user, &id).await
}
