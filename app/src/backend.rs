//! The interface the console's server functions need from the server (ssr only).
//!
//! `app` cannot depend on the `doppel` server crate (that depends on `app`), so the
//! server implements this trait with its service layer and provides it as Leptos context.
//! The REST handlers call the very same methods: one set of business rules, two transports.

use std::sync::Arc;

use crate::model::*;

/// Every operation of the service, under the one name the REST handlers, the server
/// functions and the service share.
#[async_trait::async_trait]
pub trait Backend: Send + Sync + 'static {
    async fn list_projects(&self, user: &UserInfo) -> Result<Vec<Project>, ApiError>;
    async fn list_servers(&self, user: &UserInfo) -> Result<Vec<Server>, ApiError>;
    async fn add_server(
        &self,
        user: &UserInfo,
        req: NewServer,
    ) -> Result<ServerWithJoinToken, ApiError>;
    /// A server's bandwidth limit, or none (platform admins).
    async fn set_server_bwlimit(
        &self,
        user: &UserInfo,
        id: &str,
        req: ServerBwlimit,
    ) -> Result<Server, ApiError>;
    /// Starts a convert job for each directory tree on one of this host's servers
    /// (platform admins).
    async fn convert_server_trees(
        &self,
        user: &UserInfo,
        server_id: &str,
    ) -> Result<ServerConversions, ApiError>;
    async fn list_containers(
        &self,
        user: &UserInfo,
        project_id: Option<&str>,
    ) -> Result<Vec<ContainerSummary>, ApiError>;
    async fn get_container(&self, user: &UserInfo, id: &str) -> Result<ContainerDetail, ApiError>;
    /// Starts a copy; a retry with the same `idempotency_key` gets the same copy.
    async fn copy_container(
        &self,
        user: &UserInfo,
        source_id: &str,
        req: CopyRequest,
        idempotency_key: Option<&str>,
        options: &TransferOptions,
    ) -> Result<CopyStarted, ApiError>;
    /// Starts a sync of a copy with its source (one at a time per copy).
    async fn sync_container(
        &self,
        user: &UserInfo,
        id: &str,
        idempotency_key: Option<&str>,
        options: &TransferOptions,
    ) -> Result<Job, ApiError>;
    async fn list_snapshots(
        &self,
        user: &UserInfo,
        container_id: &str,
    ) -> Result<Vec<Snapshot>, ApiError>;
    async fn create_snapshot(
        &self,
        user: &UserInfo,
        container_id: &str,
        name: &str,
    ) -> Result<Snapshot, ApiError>;
    async fn get_job(&self, user: &UserInfo, id: &str) -> Result<Job, ApiError>;
    /// Jobs the user can see, newest first, as `filter` narrows them.
    async fn list_jobs(&self, user: &UserInfo, filter: &JobFilter) -> Result<Vec<Job>, ApiError>;
    async fn cancel_job(&self, user: &UserInfo, id: &str) -> Result<Job, ApiError>;
    /// Every copy the user can see, with how current it is and its recent syncs.
    async fn sync_status(&self, user: &UserInfo) -> Result<Vec<CopyStatus>, ApiError>;
    /// Starts a job that stops the container and removes it (its copies stay).
    async fn delete_container(&self, user: &UserInfo, id: &str) -> Result<Job, ApiError>;
    /// Starts a job that makes a container's directory tree, and its snapshots',
    /// image trees (platform admins).
    async fn convert_tree(&self, user: &UserInfo, id: &str) -> Result<Job, ApiError>;
    /// Starts a stopped container (a running one stays as it is).
    async fn start_container(&self, user: &UserInfo, id: &str)
        -> Result<ContainerDetail, ApiError>;
    /// Stops a running container (SIGTERM, a grace period, SIGKILL).
    async fn stop_container(&self, user: &UserInfo, id: &str) -> Result<ContainerDetail, ApiError>;
    async fn restart_container(
        &self,
        user: &UserInfo,
        id: &str,
    ) -> Result<ContainerDetail, ApiError>;
    /// The last lines its process wrote.
    async fn container_logs(&self, user: &UserInfo, id: &str) -> Result<ContainerLogs, ApiError>;
    /// What it runs from its next start.
    async fn set_command(
        &self,
        user: &UserInfo,
        id: &str,
        command: ContainerCommand,
    ) -> Result<ContainerDetail, ApiError>;
    /// Its firewall rules (in force at once while it runs).
    async fn set_firewall_rules(
        &self,
        user: &UserInfo,
        id: &str,
        rules: Vec<FirewallRule>,
    ) -> Result<ContainerDetail, ApiError>;
    /// Its network rules (from its next start).
    async fn set_network_rules(
        &self,
        user: &UserInfo,
        id: &str,
        rules: Vec<NetworkRule>,
    ) -> Result<ContainerDetail, ApiError>;
    /// Users (platform admins).
    async fn list_users(&self, user: &UserInfo) -> Result<Vec<UserAccount>, ApiError>;
    async fn create_user(
        &self,
        user: &UserInfo,
        req: NewUser,
    ) -> Result<UserWithPassword, ApiError>;
    async fn update_user(
        &self,
        user: &UserInfo,
        name: &str,
        change: UserChange,
    ) -> Result<UserAccount, ApiError>;
    async fn reset_password(
        &self,
        user: &UserInfo,
        name: &str,
    ) -> Result<UserWithPassword, ApiError>;
    /// Projects and members.
    async fn create_project(&self, user: &UserInfo, req: NewProject) -> Result<Project, ApiError>;
    async fn update_project(
        &self,
        user: &UserInfo,
        id: &str,
        req: ProjectRequest,
    ) -> Result<Project, ApiError>;
    async fn delete_project(&self, user: &UserInfo, id: &str) -> Result<(), ApiError>;
    async fn list_members(&self, user: &UserInfo, id: &str) -> Result<Vec<Member>, ApiError>;
    async fn set_member(
        &self,
        user: &UserInfo,
        id: &str,
        member: &str,
        role: Role,
    ) -> Result<Member, ApiError>;
    async fn remove_member(&self, user: &UserInfo, id: &str, member: &str) -> Result<(), ApiError>;
    /// The audit log as the caller may read it.
    async fn list_audit(
        &self,
        user: &UserInfo,
        filter: &AuditFilter,
    ) -> Result<Vec<AuditEntry>, ApiError>;
    /// The caller's API tokens.
    async fn list_tokens(&self, user: &UserInfo) -> Result<Vec<ApiToken>, ApiError>;
    /// A new token of the caller (its secret in the answer only).
    async fn create_token(&self, user: &UserInfo, req: NewToken) -> Result<CreatedToken, ApiError>;
    /// Revokes one of the caller's tokens.
    async fn revoke_token(&self, user: &UserInfo, id: &str) -> Result<(), ApiError>;
    /// Changes the caller's password (the current one required).
    async fn change_own_password(
        &self,
        user: &UserInfo,
        change: PasswordChange,
    ) -> Result<(), ApiError>;
    /// Whether containers can run on this doppel, and why not.
    fn health(&self) -> Health;
}

/// The backend as stored in Leptos context.
pub type SharedBackend = Arc<dyn Backend>;

/// The authenticated user of a request, put into the request's extensions by the server's
/// session middleware; server functions read it from there.
#[derive(Clone, Debug)]
pub struct CurrentUser(pub UserInfo);

/// Percent-encodes a URL query value (or path) for a redirect: everything but RFC 3986's
/// unreserved characters and `/`. One rule for the server's redirects and the console's.
pub fn percent_encode(s: &str) -> String {
    use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
    const KEEP: &AsciiSet = &NON_ALPHANUMERIC
        .remove(b'-')
        .remove(b'_')
        .remove(b'.')
        .remove(b'~')
        .remove(b'/');
    utf8_percent_encode(s, KEEP).to_string()
}
