//! The interface the console's server functions need from the server (ssr only).
//!
//! `app` cannot depend on the `doppel` server crate (that depends on `app`), so the
//! server implements this trait with its service layer and provides it as Leptos context.
//! The REST handlers call the very same methods: one set of business rules, two transports.

use std::sync::Arc;

use crate::model::*;

#[async_trait::async_trait]
pub trait Backend: Send + Sync + 'static {
    async fn list_projects(&self, user: &UserInfo) -> Result<Vec<Project>, ApiError>;
    async fn list_servers(&self, user: &UserInfo) -> Result<Vec<Server>, ApiError>;
    async fn list_containers(
        &self,
        user: &UserInfo,
        project_id: Option<&str>,
    ) -> Result<Vec<ContainerSummary>, ApiError>;
    async fn get_container(&self, user: &UserInfo, id: &str) -> Result<ContainerDetail, ApiError>;
    async fn copy_container(
        &self,
        user: &UserInfo,
        source_id: &str,
        req: CopyRequest,
    ) -> Result<CopyStarted, ApiError>;
    async fn sync_container(&self, user: &UserInfo, id: &str) -> Result<Job, ApiError>;
    async fn stop_job(&self, user: &UserInfo, id: &str) -> Result<Job, ApiError>;
    async fn job(&self, user: &UserInfo, id: &str) -> Result<Job, ApiError>;
    /// Every copy the user can see, with how current it is and its recent syncs.
    async fn sync_status(&self, user: &UserInfo) -> Result<Vec<CopyStatus>, ApiError>;
    /// Recent jobs the user can see, newest first; `kind` and `status` filter.
    async fn recent_jobs(
        &self,
        user: &UserInfo,
        kind: Option<String>,
        status: Option<String>,
    ) -> Result<Vec<Job>, ApiError>;
}

/// The backend as stored in Leptos context.
pub type SharedBackend = Arc<dyn Backend>;

/// The authenticated user of a request, put into the request's extensions by the server's
/// session middleware; server functions read it from there.
#[derive(Clone, Debug)]
pub struct CurrentUser(pub UserInfo);
