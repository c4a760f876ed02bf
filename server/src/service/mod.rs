//! The service layer: every business rule and authorisation check, shared by the REST
//! handlers and the console's server functions. One name per operation: the methods here
//! carry the names of [`app::backend::Backend`]'s, which the REST handlers and the server
//! functions call alike. Each family of operations has its own file; none of them knows
//! about HTTP.

pub mod audit;
mod containers;
pub mod convert;
mod copy;
mod delete;
pub mod inventory;
mod jobs;
mod login_throttle;
mod projects;
mod running;
mod servers;
mod sessions;
mod snapshots;
mod sync;
mod sync_status;
mod tokens;
mod users;
mod visibility;

use std::sync::Arc;

use app::backend::Backend;
use app::model::*;

use crate::auth::TokenCache;
use crate::events::EventHub;
use crate::jobs::{JobRunner, Limits};
use crate::lifecycle::Lifecycle;
use crate::remote::Agents;
use crate::store::{Db, DbError};

pub use audit::AUDIT_PAGE;
pub use copy::parse_ssh_public_key;
pub use running::{MAX_LOG_LINES, MAX_STOP_GRACE_S};
pub use servers::{image_trees_in, storage_mode_of, JOIN_TOKEN_TTL_MS};
pub use sessions::LoginOutcome;
use sync_status::SharedProbes;

pub struct Service {
    db: Db,
    jobs: Arc<JobRunner>,
    /// The job limits it was started with (the caps per user and project are checked here).
    limits: Limits,
    /// API tokens verified in the last 2 s (see `TokenCache`).
    tokens: TokenCache,
    /// Failed logins per name and address (see `LoginThrottle`).
    logins: login_throttle::LoginThrottle,
    /// Walks of sources under way, shared by sync status loads (see `SharedProbes`).
    probes: SharedProbes,
    /// Containers' processes (start, stop, the watch that keeps statuses true).
    lifecycle: Arc<Lifecycle>,
    /// Servers on other hosts: their clients and what was last heard from them.
    agents: Arc<Agents>,
}

/// A 409: what the request asks cannot be done as things are now (saying why).
fn conflict(m: impl Into<String>) -> ApiError {
    ApiError::new(ErrorCode::Conflict, m)
}

/// Logs an unexpected failure and gives the user a generic error (details stay in the log).
fn internal(err: impl std::fmt::Display) -> ApiError {
    tracing::error!(error = %err, "internal error");
    ApiError::internal()
}

/// What only a credential with every right of its user may do (a console session, or an
/// API token neither read-only nor limited to projects): manage tokens, users, projects
/// and one's password. A limited token could widen itself otherwise.
fn require_full_credential(user: &UserInfo, what: &str) -> Result<(), ApiError> {
    if user.scope.is_full() {
        return Ok(());
    }
    Err(ApiError::forbidden(format!(
        "{what} needs a console session or an API token without limits"
    )))
}

/// An id from a request: 24 lowercase hex digits, or a 400 saying so.
/// `check_id` of a request parameter: its error names the parameter.
fn check_param_id(param: &str, id: &str) -> Result<(), ApiError> {
    check_id(param, id).map_err(|e| e.on_field(param))
}

fn check_id(what: &str, id: &str) -> Result<(), ApiError> {
    if is_valid_id(id) {
        Ok(())
    } else {
        Err(ApiError::invalid(format!(
            "{what} {id:?} is not a valid id (24 lowercase hex digits)"
        )))
    }
}

impl Service {
    pub fn new(db: Db, limits: Limits, lifecycle: Arc<Lifecycle>, agents: Arc<Agents>) -> Self {
        let jobs = JobRunner::new(db.clone(), limits, lifecycle.clone(), agents.clone());
        Service {
            db,
            jobs,
            limits,
            tokens: TokenCache::new(std::time::Duration::from_secs(2)),
            logins: Default::default(),
            probes: SharedProbes::default(),
            lifecycle,
            agents,
        }
    }

    /// After a start: every container's status from what runs (containers outlive doppel),
    /// then a check every few seconds for as long as doppel runs.
    pub async fn watch_containers(&self) -> Result<(), DbError> {
        self.lifecycle.reconcile(true).await?;
        self.lifecycle.watch();
        Ok(())
    }

    /// Starts a container without a caller (the demo data's first start).
    pub async fn start_unattended(&self, id: &str) -> Result<(), DbError> {
        let outcome = self
            .lifecycle
            .start(id, &[ContainerStatus::Stopped])
            .await?;
        if let Some(reason) = outcome.reason {
            tracing::warn!(container = %id, %reason, "not started");
        }
        Ok(())
    }

    /// The event hub every job's events go through (the HTTP layer streams it).
    pub fn events(&self) -> &Arc<EventHub> {
        &self.jobs.hub
    }

    /// After a start: resumes the jobs a stop interrupted; says how many.
    pub async fn resume_jobs(&self) -> Result<usize, DbError> {
        self.collect_orphan_snapshots().await?;
        self.jobs.recover().await
    }

    /// Closes the database (at a graceful stop).
    pub async fn close(&self) {
        self.db.close().await;
    }

    /// The database, for the demo data and tests that set up rows directly.
    pub fn db(&self) -> &Db {
        &self.db
    }
}

/// The console's server functions call the service through this trait (`app` cannot name
/// this crate). Each method is the service's method of the same name.
#[async_trait::async_trait]
impl Backend for Service {
    async fn list_projects(&self, user: &UserInfo) -> Result<Vec<Project>, ApiError> {
        Service::list_projects(self, user).await
    }

    async fn list_servers(&self, user: &UserInfo) -> Result<Vec<Server>, ApiError> {
        Service::list_servers(self, user).await
    }

    async fn add_server(
        &self,
        user: &UserInfo,
        req: NewServer,
    ) -> Result<ServerWithJoinToken, ApiError> {
        Service::add_server(self, user, req).await
    }

    async fn set_server_bwlimit(
        &self,
        user: &UserInfo,
        id: &str,
        req: ServerBwlimit,
    ) -> Result<Server, ApiError> {
        Service::set_server_bwlimit(self, user, id, req).await
    }

    async fn convert_server_trees(
        &self,
        user: &UserInfo,
        server_id: &str,
    ) -> Result<ServerConversions, ApiError> {
        Service::convert_server_trees(self, user, server_id).await
    }

    async fn list_containers(
        &self,
        user: &UserInfo,
        project_id: Option<&str>,
    ) -> Result<Vec<ContainerSummary>, ApiError> {
        Service::list_containers(self, user, project_id).await
    }

    async fn get_container(&self, user: &UserInfo, id: &str) -> Result<ContainerDetail, ApiError> {
        Service::get_container(self, user, id).await
    }

    async fn copy_container(
        &self,
        user: &UserInfo,
        source_id: &str,
        req: CopyRequest,
        idempotency_key: Option<&str>,
        options: &TransferOptions,
    ) -> Result<CopyStarted, ApiError> {
        Service::copy_container(self, user, source_id, req, idempotency_key, options).await
    }

    async fn sync_container(
        &self,
        user: &UserInfo,
        id: &str,
        idempotency_key: Option<&str>,
        options: &TransferOptions,
    ) -> Result<Job, ApiError> {
        Service::sync_container(self, user, id, idempotency_key, options).await
    }

    async fn list_snapshots(
        &self,
        user: &UserInfo,
        container_id: &str,
    ) -> Result<Vec<Snapshot>, ApiError> {
        Service::list_snapshots(self, user, container_id).await
    }

    async fn create_snapshot(
        &self,
        user: &UserInfo,
        container_id: &str,
        name: &str,
    ) -> Result<Snapshot, ApiError> {
        Service::create_snapshot(self, user, container_id, name).await
    }

    async fn get_job(&self, user: &UserInfo, id: &str) -> Result<Job, ApiError> {
        Service::get_job(self, user, id).await
    }

    async fn list_jobs(&self, user: &UserInfo, filter: &JobFilter) -> Result<Vec<Job>, ApiError> {
        Service::list_jobs(self, user, filter).await
    }

    async fn cancel_job(&self, user: &UserInfo, id: &str) -> Result<Job, ApiError> {
        Service::cancel_job(self, user, id).await
    }

    async fn sync_status(&self, user: &UserInfo) -> Result<Vec<CopyStatus>, ApiError> {
        Service::sync_status(self, user, None).await
    }

    async fn delete_container(&self, user: &UserInfo, id: &str) -> Result<Job, ApiError> {
        Service::delete_container(self, user, id, None).await
    }

    async fn convert_tree(&self, user: &UserInfo, id: &str) -> Result<Job, ApiError> {
        Service::convert_tree(self, user, id, None).await
    }

    async fn start_container(
        &self,
        user: &UserInfo,
        id: &str,
    ) -> Result<ContainerDetail, ApiError> {
        Service::start_container(self, user, id).await
    }

    async fn stop_container(&self, user: &UserInfo, id: &str) -> Result<ContainerDetail, ApiError> {
        Service::stop_container(self, user, id, None).await
    }

    async fn restart_container(
        &self,
        user: &UserInfo,
        id: &str,
    ) -> Result<ContainerDetail, ApiError> {
        Service::restart_container(self, user, id, None).await
    }

    async fn container_logs(&self, user: &UserInfo, id: &str) -> Result<ContainerLogs, ApiError> {
        Service::container_logs(self, user, id, None).await
    }

    async fn set_command(
        &self,
        user: &UserInfo,
        id: &str,
        command: ContainerCommand,
    ) -> Result<ContainerDetail, ApiError> {
        Service::set_command(self, user, id, command).await
    }

    async fn set_firewall_rules(
        &self,
        user: &UserInfo,
        id: &str,
        rules: Vec<FirewallRule>,
    ) -> Result<ContainerDetail, ApiError> {
        Service::set_firewall_rules(self, user, id, rules).await
    }

    async fn set_network_rules(
        &self,
        user: &UserInfo,
        id: &str,
        rules: Vec<NetworkRule>,
    ) -> Result<ContainerDetail, ApiError> {
        Service::set_network_rules(self, user, id, rules).await
    }

    async fn list_users(&self, user: &UserInfo) -> Result<Vec<UserAccount>, ApiError> {
        Service::list_users(self, user).await
    }

    async fn create_user(
        &self,
        user: &UserInfo,
        req: NewUser,
    ) -> Result<UserWithPassword, ApiError> {
        Service::create_user(self, user, req).await
    }

    async fn update_user(
        &self,
        user: &UserInfo,
        name: &str,
        change: UserChange,
    ) -> Result<UserAccount, ApiError> {
        Service::update_user(self, user, name, change).await
    }

    async fn reset_password(
        &self,
        user: &UserInfo,
        name: &str,
    ) -> Result<UserWithPassword, ApiError> {
        Service::reset_password(self, user, name).await
    }

    async fn create_project(&self, user: &UserInfo, req: NewProject) -> Result<Project, ApiError> {
        Service::create_project(self, user, req).await
    }

    async fn update_project(
        &self,
        user: &UserInfo,
        id: &str,
        req: ProjectRequest,
    ) -> Result<Project, ApiError> {
        Service::update_project(self, user, id, req).await
    }

    async fn delete_project(&self, user: &UserInfo, id: &str) -> Result<(), ApiError> {
        Service::delete_project(self, user, id).await
    }

    async fn list_members(&self, user: &UserInfo, id: &str) -> Result<Vec<Member>, ApiError> {
        Service::list_members(self, user, id).await
    }

    async fn set_member(
        &self,
        user: &UserInfo,
        id: &str,
        member: &str,
        role: Role,
    ) -> Result<Member, ApiError> {
        Service::set_member(self, user, id, member, role).await
    }

    async fn remove_member(&self, user: &UserInfo, id: &str, member: &str) -> Result<(), ApiError> {
        Service::remove_member(self, user, id, member).await
    }

    async fn list_audit(
        &self,
        user: &UserInfo,
        filter: &AuditFilter,
    ) -> Result<Vec<AuditEntry>, ApiError> {
        Service::list_audit(self, user, filter).await
    }

    async fn list_tokens(&self, user: &UserInfo) -> Result<Vec<ApiToken>, ApiError> {
        Service::list_tokens(self, user).await
    }

    async fn create_token(&self, user: &UserInfo, req: NewToken) -> Result<CreatedToken, ApiError> {
        Service::create_token(self, user, req).await
    }

    async fn revoke_token(&self, user: &UserInfo, id: &str) -> Result<(), ApiError> {
        Service::revoke_token(self, user, id).await
    }

    async fn change_own_password(
        &self,
        user: &UserInfo,
        change: PasswordChange,
    ) -> Result<(), ApiError> {
        Service::change_own_password(self, user, change).await
    }

    fn health(&self) -> Health {
        Service::health(self)
    }
}
