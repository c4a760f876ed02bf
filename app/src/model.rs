//! Types shared by the REST API, the server functions and the console.
//!
//! They are the wire format of `/api/v1` (serde) and the props of the pages, so the two
//! transports cannot drift apart.

use serde::{Deserialize, Serialize};

/// Unix time in milliseconds (UTC). Portable across SQLite and PostgreSQL and cheap to
/// format identically on the server and in the browser (no hydration mismatch).
pub type Millis = i64;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserInfo {
    pub id: String,
    pub name: String,
    /// Platform administrators see every project and the paths on disk.
    pub is_admin: bool,
    /// What the credential of this request may do (an API token's scope); a console
    /// session may do all its user may.
    #[serde(skip)]
    pub scope: TokenScope,
    /// Where the request came from (for the audit log).
    #[serde(skip)]
    pub from: Option<std::net::IpAddr>,
}

/// One entry of the audit log.
#[cfg_attr(feature = "ssr", derive(utoipa::ToSchema))]
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditEntry {
    pub id: String,
    pub at: Millis,
    /// Absent for a login attempt with an unknown name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub actor_id: Option<String>,
    pub actor_name: String,
    /// What was done, e.g. `container.copy`, `member.set`, `token.create`, `login`.
    pub action: String,
    /// Absent when it concerns no project (tokens, users, logins) or none was known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub project_id: Option<String>,
    /// What it was done to (an id, or a user's name).
    pub target: String,
    /// The client's address.
    pub address: String,
    /// `ok`, `refused` (an error the caller can fix) or `failed`.
    pub result: String,
    /// The error, when there was one.
    pub detail: Option<String>,
}

/// `GET /api/v1/audit`: filters and paging.
#[cfg_attr(feature = "ssr", derive(utoipa::IntoParams))]
#[cfg_attr(feature = "ssr", into_params(parameter_in = Query))]
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditFilter {
    /// Only this project's entries.
    #[cfg_attr(feature = "ssr", param(pattern = "^[0-9a-f]{24}$"))]
    pub project_id: Option<String>,
    /// Only this user's (by name).
    pub actor: Option<String>,
    /// Only this action.
    pub action: Option<String>,
    /// Entries before this one (its id): the next page.
    #[cfg_attr(feature = "ssr", param(pattern = "^[0-9a-f]{24}$"))]
    pub before: Option<String>,
    /// How many (default 100, at most 500).
    #[cfg_attr(feature = "ssr", param(minimum = 1, maximum = 500))]
    pub limit: Option<u32>,
}

/// A user as platform admins manage them.
#[cfg_attr(feature = "ssr", derive(utoipa::ToSchema))]
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserAccount {
    pub id: String,
    pub name: String,
    pub is_admin: bool,
    /// Cannot log in; their sessions and tokens do not work.
    pub disabled: bool,
    pub created_at: Millis,
}

/// `POST /api/v1/users`.
#[cfg_attr(feature = "ssr", derive(utoipa::ToSchema))]
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewUser {
    /// Letters, digits and hyphens, starting with a letter (as container names).
    #[cfg_attr(
        feature = "ssr",
        schema(pattern = "^[A-Za-z]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?$")
    )]
    pub name: String,
    /// A platform admin (sees and may do everything).
    #[serde(default)]
    pub is_admin: bool,
}

/// A new user, or a reset: the password, shown this once.
#[cfg_attr(feature = "ssr", derive(utoipa::ToSchema))]
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserWithPassword {
    pub user: UserAccount,
    /// Give it to the user; they change it (`POST /api/v1/me/password`). Not shown again.
    pub password: String,
}

/// `PATCH /api/v1/users/{name}`: what changes (absent: stays).
#[cfg_attr(feature = "ssr", derive(utoipa::ToSchema))]
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UserChange {
    #[serde(default)]
    pub is_admin: Option<bool>,
    #[serde(default)]
    pub disabled: Option<bool>,
}

/// `POST /api/v1/me/password`.
#[cfg_attr(feature = "ssr", derive(utoipa::ToSchema))]
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PasswordChange {
    pub current: String,
    /// At least 8 characters.
    #[cfg_attr(feature = "ssr", schema(min_length = 8))]
    pub new: String,
}

/// What an API token may do beyond being its user: nothing more, sometimes less.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenScope {
    /// Reads only: every write answers 403.
    pub read_only: bool,
    /// Only these projects (of those its user may see); `None`: all of them.
    pub projects: Option<Vec<String>>,
}

impl TokenScope {
    /// Whether the credential may do everything its user may.
    pub fn is_full(&self) -> bool {
        !self.read_only && self.projects.is_none()
    }
}

/// One of a user's API tokens (never its secret, which is shown once).
#[cfg_attr(feature = "ssr", derive(utoipa::ToSchema))]
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiToken {
    pub id: String,
    pub name: String,
    pub created_at: Millis,
    /// When it was last used (to the minute).
    pub last_used_at: Option<Millis>,
    /// When it stops working; `None`: never.
    pub expires_at: Option<Millis>,
    pub read_only: bool,
    /// The projects it is limited to; `None`: all its user may see.
    pub projects: Option<Vec<String>>,
}

/// `POST /api/v1/tokens`.
#[cfg_attr(feature = "ssr", derive(utoipa::ToSchema))]
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewToken {
    /// What it is for, e.g. `ci-deploy` (1 to 100 characters, not only spaces, no control
    /// characters).
    #[cfg_attr(
        feature = "ssr",
        schema(
            min_length = 1,
            max_length = 100,
            pattern = "^[^\\u0000-\\u001f\\u007f]*[^\\s\\u0000-\\u001f\\u007f][^\\u0000-\\u001f\\u007f]*$"
        )
    )]
    pub name: String,
    /// When it stops working (Unix ms, in the future, at most ten years ahead); absent:
    /// never.
    #[serde(default)]
    pub expires_at: Option<Millis>,
    /// Reads only.
    #[serde(default)]
    pub read_only: bool,
    /// Limited to these projects (ids of projects the user may see; at least one).
    #[serde(default)]
    #[cfg_attr(feature = "ssr", schema(min_items = 1, max_items = 100))]
    pub projects: Option<Vec<String>>,
}

/// A new token: the secret, shown this once.
#[cfg_attr(feature = "ssr", derive(utoipa::ToSchema))]
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CreatedToken {
    pub token: ApiToken,
    /// `Authorization: Bearer <secret>`; not stored, not shown again.
    pub secret: String,
}

/// A user's role in a project. Ordered: each role can do what the ones before it can.
#[cfg_attr(feature = "ssr", derive(utoipa::ToSchema))]
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    Viewer,
    Operator,
    Admin,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Operator => "operator",
            Role::Admin => "admin",
        }
    }

    pub fn parse(s: &str) -> Option<Role> {
        match s {
            "viewer" => Some(Role::Viewer),
            "operator" => Some(Role::Operator),
            "admin" => Some(Role::Admin),
            _ => None,
        }
    }
}

#[cfg_attr(feature = "ssr", derive(utoipa::ToSchema))]
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Project {
    pub id: String,
    pub name: String,
    pub description: String,
    /// The caller's role here; `None` for a platform admin who is not a member.
    pub role: Option<Role>,
    pub created_at: Millis,
}

/// A member of a project.
#[cfg_attr(feature = "ssr", derive(utoipa::ToSchema))]
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    pub user_id: String,
    pub user_name: String,
    pub role: Role,
}

/// `POST /api/v1/projects`.
#[cfg_attr(feature = "ssr", derive(utoipa::ToSchema))]
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewProject {
    /// Letters, digits and hyphens, unique among projects.
    #[cfg_attr(
        feature = "ssr",
        schema(pattern = "^[A-Za-z]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?$")
    )]
    pub name: String,
    /// At most 500 characters, no control characters but line breaks.
    #[cfg_attr(
        feature = "ssr",
        schema(
            max_length = 500,
            pattern = "^[^\\u0000-\\u0009\\u000b-\\u001f\\u007f]*$"
        )
    )]
    #[serde(default)]
    pub description: Option<String>,
}

/// `PATCH /api/v1/projects/{id}`: what changes (absent: stays).
#[cfg_attr(feature = "ssr", derive(utoipa::ToSchema))]
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProjectRequest {
    /// Letters, digits and hyphens, unique among projects.
    #[cfg_attr(
        feature = "ssr",
        schema(pattern = "^[A-Za-z]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?$")
    )]
    #[serde(default)]
    pub name: Option<String>,
    /// At most 500 characters, no control characters but line breaks.
    #[cfg_attr(
        feature = "ssr",
        schema(
            max_length = 500,
            pattern = "^[^\\u0000-\\u0009\\u000b-\\u001f\\u007f]*$"
        )
    )]
    #[serde(default)]
    pub description: Option<String>,
}

/// `PUT /api/v1/projects/{id}/members/{user}`.
#[cfg_attr(feature = "ssr", derive(utoipa::ToSchema))]
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MemberRequest {
    pub role: Role,
}

#[cfg_attr(feature = "ssr", derive(utoipa::ToSchema))]
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Server {
    pub id: String,
    pub name: String,
    pub description: String,
    /// The storage root on disk; shown to platform admins only (an agent's is on its host).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub storage_root: Option<String>,
    pub created_at: Millis,
    /// `embedded`: a storage root of the control plane's own host; `agent`: a host running
    /// `doppel agent`.
    pub kind: ServerKind,
    pub state: ServerState,
    /// Why it is offline (the last call's error), or what it waits for.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub state_reason: Option<String>,
    /// When the control plane last heard from it.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub last_seen_at: Option<Millis>,
    /// The doppel version it runs.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub version: Option<String>,
    /// Free and total bytes of its storage root's filesystem, as last seen.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub free_bytes: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub total_bytes: Option<u64>,
    /// Containers on it (as recorded by the control plane).
    pub container_count: u64,
    /// Where the control plane reaches the agent, and its certificate's SHA-256; platform
    /// admins only.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub agent_address: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub agent_fingerprint: Option<String>,
    /// A pending server: until when its join token is good.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub join_expires_at: Option<Millis>,
    /// Copies and syncs under way to or from it (of containers the caller may see), with
    /// their rates.
    #[serde(default)]
    pub transfers: Vec<ServerTransfer>,
    /// Bytes a second that transfers to or from it may move (the lowest of the two
    /// servers' and the request's limits applies); absent: no limit.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub bwlimit_bytes_per_second: Option<u64>,
    /// What its filesystem does for copies from a source on the same filesystem (found at
    /// start; absent while an agent has not said).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub storage: Option<StorageMode>,
    /// The trees it makes are image trees of this many bytes each (its host's
    /// `--image-trees`, where its filesystem can hold them): a copy of one on this server
    /// is a clone of one file. Absent: its trees are directories (btrfs: subvolumes).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub image_trees: Option<u64>,
}

/// `POST /api/v1/servers/{id}/convert-trees`: the convert jobs started, one per container
/// whose tree is a directory, and the containers with such a tree that got none, with why.
#[cfg_attr(feature = "ssr", derive(utoipa::ToSchema))]
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ServerConversions {
    pub jobs: Vec<Job>,
    pub refused: Vec<ConversionRefused>,
    /// Containers on the server whose trees are image trees (or subvolumes) already.
    pub already: u64,
}

/// A container whose directory tree no convert job was started for.
#[cfg_attr(feature = "ssr", derive(utoipa::ToSchema))]
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConversionRefused {
    pub container_id: String,
    pub name: String,
    /// What the container's own request would have been answered.
    pub reason: String,
}

/// `PUT /api/v1/servers/{id}/bwlimit`: a server's bandwidth limit, or none.
#[cfg_attr(feature = "ssr", derive(utoipa::ToSchema))]
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerBwlimit {
    /// Bytes a second, as `?bwlimit=` takes them (`50M`); null or absent: no limit.
    #[serde(default)]
    // (At least 64K, as `?bwlimit=`.)
    #[cfg_attr(
        feature = "ssr",
        schema(
            pattern = "^([1-9][0-9]{5,14}|6553[6-9]|655[4-9][0-9]|65[6-9][0-9]{2}|6[6-9][0-9]{3}|[7-9][0-9]{4}|(6[4-9]|[7-9][0-9]|[1-9][0-9]{2,14})[Kk]|[1-9][0-9]{0,14}[MmGg])$"
        )
    )]
    pub bwlimit: Option<String>,
}

/// A copy or sync under way, as a server sees it.
#[cfg_attr(feature = "ssr", derive(utoipa::ToSchema))]
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ServerTransfer {
    pub job_id: String,
    pub kind: JobKind,
    /// The container it makes or updates.
    pub container_id: String,
    pub container_name: String,
    /// `in`: the server receives it; `out`: it sends it (both, for a copy between two
    /// containers of one server).
    pub direction: String,
    pub bytes_done: u64,
    pub bytes_total: Option<u64>,
    pub bytes_per_second: Option<f64>,
}

#[cfg_attr(feature = "ssr", derive(utoipa::ToSchema))]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ServerKind {
    Embedded,
    Agent,
}

/// How a copy onto a server is laid down when its source is on the same filesystem.
#[cfg_attr(feature = "ssr", derive(utoipa::ToSchema))]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StorageMode {
    /// Files share the source's extents (XFS with reflink, btrfs): a copy is nearly free.
    Reflink,
    /// The kernel copies the bytes (ext4 and others): none pass through doppel.
    CopyFileRange,
    /// doppel streams every byte (what a copy between hosts always does).
    Stream,
}

impl StorageMode {
    pub fn as_str(self) -> &'static str {
        match self {
            StorageMode::Reflink => "reflink",
            StorageMode::CopyFileRange => "copy_file_range",
            StorageMode::Stream => "stream",
        }
    }
}

#[cfg_attr(feature = "ssr", derive(utoipa::ToSchema))]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ServerState {
    /// Answering (an embedded server always is).
    Online,
    /// An agent that has not answered for a few seconds.
    Offline,
    /// Made, waiting for its agent to join with the token.
    Pending,
}

impl ServerState {
    pub fn as_str(self) -> &'static str {
        match self {
            ServerState::Online => "online",
            ServerState::Offline => "offline",
            ServerState::Pending => "pending",
        }
    }
}

/// `POST /api/v1/servers`: a server whose host joins later.
#[cfg_attr(feature = "ssr", derive(utoipa::ToSchema))]
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewServer {
    /// Letters, digits and hyphens, unique among servers.
    #[cfg_attr(
        feature = "ssr",
        schema(pattern = "^[A-Za-z]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?$")
    )]
    pub name: String,
    /// At most 500 characters, no control characters but line breaks.
    #[cfg_attr(
        feature = "ssr",
        schema(
            max_length = 500,
            pattern = "^[^\\u0000-\\u0009\\u000b-\\u001f\\u007f]*$"
        )
    )]
    #[serde(default)]
    pub description: Option<String>,
}

/// A new server and the one-time token its host joins with.
#[cfg_attr(feature = "ssr", derive(utoipa::ToSchema))]
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ServerWithJoinToken {
    pub server: Server,
    /// For `doppel agent join URL TOKEN` on the new host: good once, until
    /// `server.join_expires_at`. It holds this control plane's certificate fingerprint, so
    /// the agent knows whom it joins.
    pub join_token: String,
    /// The whole command for the new host, with where this control plane listens for
    /// joins (`--agents-addr`); absent when it listens nowhere.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub join_command: Option<String>,
    /// Why the host cannot join yet, when it cannot (no `--agents-addr`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub warning: Option<String>,
}

#[cfg_attr(feature = "ssr", derive(utoipa::ToSchema))]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ContainerStatus {
    Copying,
    Syncing,
    Running,
    Stopped,
    Failed,
    /// A delete job is removing it.
    Deleting,
}

impl ContainerStatus {
    pub const ALL: [ContainerStatus; 6] = [
        ContainerStatus::Copying,
        ContainerStatus::Syncing,
        ContainerStatus::Running,
        ContainerStatus::Stopped,
        ContainerStatus::Failed,
        ContainerStatus::Deleting,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ContainerStatus::Copying => "copying",
            ContainerStatus::Syncing => "syncing",
            ContainerStatus::Running => "running",
            ContainerStatus::Stopped => "stopped",
            ContainerStatus::Failed => "failed",
            ContainerStatus::Deleting => "deleting",
        }
    }

    pub fn parse(s: &str) -> Option<ContainerStatus> {
        Self::ALL.into_iter().find(|st| st.as_str() == s)
    }
}

/// A link to another container (lineage). Only containers the caller may see are linked.
#[cfg_attr(feature = "ssr", derive(utoipa::ToSchema))]
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerRef {
    pub id: String,
    pub name: String,
    pub project_id: String,
    pub project_name: String,
}

/// One row of the containers list.
#[cfg_attr(feature = "ssr", derive(utoipa::ToSchema))]
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerSummary {
    pub id: String,
    pub name: String,
    pub status: ContainerStatus,
    pub project_id: String,
    pub project_name: String,
    pub server_id: String,
    pub server_name: String,
    /// Whether this container was created by copy (and so can be synced).
    pub is_copy: bool,
    /// For a copy whose source the caller may see: the source itself.
    pub source: Option<ContainerRef>,
    pub created_at: Millis,
}

/// A firewall (ACL) rule of a container.
#[cfg_attr(feature = "ssr", derive(utoipa::ToSchema))]
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FirewallRule {
    /// `ingress` (packets coming in, by their source) or `egress` (going out, by their
    /// destination).
    #[cfg_attr(feature = "ssr", schema(pattern = "^(ingress|egress)$"))]
    pub direction: String,
    /// `tcp`, `udp`, `icmp` or `any`.
    #[cfg_attr(feature = "ssr", schema(pattern = "^(tcp|udp|icmp|any)$"))]
    pub protocol: String,
    /// A port or range such as `443` or `8000-8100` (tcp and udp only); absent for all
    /// ports.
    #[cfg_attr(feature = "ssr", schema(pattern = "^[0-9]{1,5}(-[0-9]{1,5})?$"))]
    pub port: Option<String>,
    /// The peer: an IPv4 network such as `10.0.0.0/8`, or one address.
    #[cfg_attr(
        feature = "ssr",
        schema(pattern = "^[0-9]{1,3}(\\.[0-9]{1,3}){3}(/[0-9]{1,2})?$")
    )]
    pub cidr: String,
    /// `allow` or `deny` (the packet is dropped).
    #[cfg_attr(feature = "ssr", schema(pattern = "^(allow|deny)$"))]
    pub action: String,
}

/// A network attachment / setting of a container.
#[cfg_attr(feature = "ssr", derive(utoipa::ToSchema))]
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetworkRule {
    /// The interface's name in the container, e.g. `eth0`.
    #[cfg_attr(feature = "ssr", schema(pattern = "^[A-Za-z0-9_.-]{1,15}$"))]
    pub interface: String,
    /// The network (a bridge of the container's server) it is on.
    #[cfg_attr(
        feature = "ssr",
        schema(pattern = "^[A-Za-z]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?$")
    )]
    pub network: String,
    /// A static IPv4 address with its prefix, from doppel's container network
    /// (`--container-network`); absent: one is allocated and kept.
    #[cfg_attr(
        feature = "ssr",
        schema(pattern = "^[0-9]{1,3}(\\.[0-9]{1,3}){3}(/[0-9]{1,2})?$")
    )]
    pub ipv4: Option<String>,
    #[cfg_attr(feature = "ssr", schema(minimum = 576, maximum = 9000))]
    pub mtu: Option<u32>,
}

/// What a container runs: its process, started by the OCI runtime in the container's
/// root. A copy carries it.
#[cfg_attr(feature = "ssr", derive(utoipa::ToSchema))]
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ContainerCommand {
    /// The argv, e.g. `["/bin/httpd", "-f", "-p", "80"]`; empty: nothing to run (the
    /// container cannot start).
    #[cfg_attr(feature = "ssr", schema(max_items = 256))]
    pub args: Vec<String>,
    /// `NAME=value` entries (`PATH` defaults to the usual directories).
    #[serde(default)]
    #[cfg_attr(feature = "ssr", schema(max_items = 256))]
    pub env: Vec<String>,
    /// The working directory, absolute; `/` when absent.
    #[serde(default = "root_dir")]
    #[cfg_attr(feature = "ssr", schema(pattern = "^/[^\\u0000]{0,4095}$"))]
    pub cwd: String,
}

fn root_dir() -> String {
    "/".to_string()
}

impl ContainerCommand {
    /// Why this command cannot be a container's, if it cannot.
    pub fn problem(&self) -> Option<(&'static str, String)> {
        if self.args.len() > 256 || self.args.iter().any(|a| a.len() > 4096) {
            return Some(("args", "at most 256 arguments of 4096 bytes each".into()));
        }
        if self.args.first().is_some_and(|a| a.is_empty()) {
            return Some(("args", "the program (the first argument) is empty".into()));
        }
        if self.args.iter().any(|a| a.contains('\0')) {
            return Some(("args", "arguments hold no NUL bytes".into()));
        }
        if self.env.len() > 256 || self.env.iter().any(|e| e.len() > 4096) {
            return Some(("env", "at most 256 entries of 4096 bytes each".into()));
        }
        if self.env.iter().any(|e| e.contains('\0')) {
            return Some(("env", "environment entries hold no NUL bytes".into()));
        }
        if let Some(e) = self
            .env
            .iter()
            .find(|e| e.split_once('=').is_none_or(|(k, _)| k.is_empty()))
        {
            return Some(("env", format!("{e:?} is not NAME=value")));
        }
        if !self.cwd.starts_with('/') || self.cwd.len() > 4096 || self.cwd.contains('\0') {
            return Some(("cwd", format!("{:?} is not an absolute path", self.cwd)));
        }
        None
    }
}

/// One interface of a container's network namespace, as doppel set it up.
#[cfg_attr(feature = "ssr", derive(utoipa::ToSchema))]
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Interface {
    /// Its name inside the container, e.g. `eth0`.
    pub interface: String,
    /// The network (a bridge on the server's host) it is on.
    pub network: String,
    /// Its IPv4 address with the network's prefix, e.g. `10.88.0.2/24`.
    pub ipv4: String,
    pub mac: String,
}

/// The last lines a container's process wrote (stdout and stderr, interleaved).
#[cfg_attr(feature = "ssr", derive(utoipa::ToSchema))]
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerLogs {
    pub lines: Vec<String>,
}

/// Whether this doppel can run containers, and why not.
#[cfg_attr(feature = "ssr", derive(utoipa::ToSchema))]
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RuntimeHealth {
    pub available: bool,
    /// Why containers cannot run here (they stay `stopped` with this reason).
    pub reason: Option<String>,
}

/// `GET /healthz`.
#[cfg_attr(feature = "ssr", derive(utoipa::ToSchema))]
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Health {
    /// `ok` while doppel serves.
    pub status: String,
    pub runtime: RuntimeHealth,
}

#[cfg_attr(feature = "ssr", derive(utoipa::ToSchema))]
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Snapshot {
    pub id: String,
    pub name: String,
    pub created_at: Millis,
    pub file_count: i64,
    pub size_bytes: i64,
}

/// Everything about one container.
#[cfg_attr(feature = "ssr", derive(utoipa::ToSchema))]
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerDetail {
    #[serde(flatten)]
    pub summary: ContainerSummary,
    /// Why the container is in its status (e.g. the error of a failed copy).
    pub status_reason: Option<String>,
    pub ssh_public_key: Option<String>,
    pub firewall_rules: Vec<FirewallRule>,
    pub network_rules: Vec<NetworkRule>,
    /// What it runs.
    pub command: ContainerCommand,
    /// When its process last started, and (once it ended) when it ended and how.
    pub started_at: Option<Millis>,
    pub stopped_at: Option<Millis>,
    /// 128 + n when the process was killed by signal n.
    pub exit_code: Option<i64>,
    /// Its interfaces, once it has started; the first one's address is where it answers.
    pub interfaces: Vec<Interface>,
    pub snapshots: Vec<Snapshot>,
    /// Copies of this container that the caller may see.
    pub copies: Vec<ContainerRef>,
    /// For a copy: the source state (manifest root) it last matched, and when.
    pub source_state: Option<String>,
    pub last_synced_at: Option<Millis>,
    pub file_count: i64,
    pub size_bytes: i64,
    pub updated_at: Millis,
    /// Whether the caller may change it (start, stop, edit, sync, snapshot, delete): an
    /// operator or admin of its project. The console disables what a viewer may not do.
    pub may_change: bool,
    /// A copy whose source was deleted: there is nothing to sync it from.
    #[serde(default)]
    pub source_deleted: bool,
    /// The container's root directory on disk; shown to platform admins only.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub root_path: Option<String>,
    /// What that tree is on disk, which says what its copies on its server cost; with
    /// `root_path`, where the tree is there.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub tree: Option<TreeKind>,
}

/// What a container's tree is on disk.
#[cfg_attr(feature = "ssr", derive(utoipa::ToSchema))]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TreeKind {
    /// A directory: its copies go file by file (`doppel convert-trees` makes it an image
    /// tree where its filesystem can hold one).
    Directory,
    /// An XFS filesystem in an image beside it (`--image-trees`): its copies on its
    /// server are clones of its image.
    ImageTree,
    /// A btrfs subvolume: its copies on its server are snapshots.
    Subvolume,
}

#[cfg_attr(feature = "ssr", derive(utoipa::ToSchema))]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobKind {
    Copy,
    Sync,
    /// Stops a container and removes its tree, state and snapshots.
    Delete,
    /// A container's process started, stopped or restarted: done when asked (the request
    /// answers when it is), recorded as a job so it shows live and in the history.
    Start,
    Stop,
    Restart,
    /// A container's directory tree (and its snapshots') made an image tree, so that its
    /// copies on its server are clones of one file (platform admins, on a doppel started
    /// with `--image-trees`); a running container is stopped for the final pass only.
    Convert,
}

impl JobKind {
    pub const ALL: [JobKind; 7] = [
        JobKind::Copy,
        JobKind::Sync,
        JobKind::Delete,
        JobKind::Start,
        JobKind::Stop,
        JobKind::Restart,
        JobKind::Convert,
    ];

    /// A job the runner does (queued, resumed after a restart); the others are done by the
    /// request that records them.
    pub fn is_queued_work(self) -> bool {
        matches!(
            self,
            JobKind::Copy | JobKind::Sync | JobKind::Delete | JobKind::Convert
        )
    }

    pub fn as_str(self) -> &'static str {
        match self {
            JobKind::Copy => "copy",
            JobKind::Sync => "sync",
            JobKind::Delete => "delete",
            JobKind::Start => "start",
            JobKind::Stop => "stop",
            JobKind::Restart => "restart",
            JobKind::Convert => "convert",
        }
    }

    pub fn parse(s: &str) -> Option<JobKind> {
        match s {
            "copy" => Some(JobKind::Copy),
            "sync" => Some(JobKind::Sync),
            "delete" => Some(JobKind::Delete),
            "start" => Some(JobKind::Start),
            "stop" => Some(JobKind::Stop),
            "restart" => Some(JobKind::Restart),
            "convert" => Some(JobKind::Convert),
            _ => None,
        }
    }
}

#[cfg_attr(feature = "ssr", derive(utoipa::ToSchema))]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobStatus {
    Queued,
    Running,
    Succeeded,
    Failed,
    Cancelled,
}

impl JobStatus {
    pub const ALL: [JobStatus; 5] = [
        JobStatus::Queued,
        JobStatus::Running,
        JobStatus::Succeeded,
        JobStatus::Failed,
        JobStatus::Cancelled,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            JobStatus::Queued => "queued",
            JobStatus::Running => "running",
            JobStatus::Succeeded => "succeeded",
            JobStatus::Failed => "failed",
            JobStatus::Cancelled => "cancelled",
        }
    }

    pub fn parse(s: &str) -> Option<JobStatus> {
        Self::ALL.into_iter().find(|st| st.as_str() == s)
    }

    pub fn is_final(self) -> bool {
        matches!(
            self,
            JobStatus::Succeeded | JobStatus::Failed | JobStatus::Cancelled
        )
    }
}

/// Where a running job is: it scans, plans, transfers, verifies and commits, in that order.
#[cfg_attr(feature = "ssr", derive(utoipa::ToSchema))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobPhase {
    #[default]
    Scan,
    Plan,
    Transfer,
    Verify,
    Commit,
    /// The tree is in place and the container's process is being started (a new copy, or
    /// a stopped copy just synced); the job ends once it runs, or says why it does not.
    Start,
}

impl JobPhase {
    pub const ALL: [JobPhase; 6] = [
        JobPhase::Scan,
        JobPhase::Plan,
        JobPhase::Transfer,
        JobPhase::Verify,
        JobPhase::Commit,
        JobPhase::Start,
    ];

    /// The name in JSON and in the database, as serde writes it.
    pub fn as_str(self) -> &'static str {
        match self {
            JobPhase::Scan => "scan",
            JobPhase::Plan => "plan",
            JobPhase::Transfer => "transfer",
            JobPhase::Verify => "verify",
            JobPhase::Commit => "commit",
            JobPhase::Start => "start",
        }
    }

    pub fn parse(s: &str) -> Option<JobPhase> {
        Self::ALL.into_iter().find(|p| p.as_str() == s)
    }
}

/// What a finished copy or sync did (`Job::summary`).
#[cfg_attr(feature = "ssr", derive(utoipa::ToSchema))]
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct JobSummary {
    pub files_added: u64,
    pub files_changed: u64,
    pub files_deleted: u64,
    pub files_unchanged: u64,
    /// Entries whose content was the same but metadata (mode, owner, mtime, xattrs) not.
    pub metadata_only: u64,
    /// Regular files and content bytes of the resulting tree.
    pub tree_files: u64,
    pub tree_bytes: u64,
    /// Everything that crossed the sender/receiver stream.
    pub bytes_sent: u64,
    /// Literal content in that stream (whole files and the literal parts of deltas).
    pub content_bytes: u64,
    /// Between two hosts: the bytes that crossed their connection, both ways, after
    /// compression (absent within one host).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wire_bytes: Option<u64>,
    /// Bytes the target produced from what it already had (delta copies, reused files).
    pub reused_bytes: u64,
    /// Bytes the kernel laid down from the source on the same filesystem (shared extents
    /// or copy_file_range): neither streamed nor taken from the target's own content.
    #[serde(default)]
    pub kernel_bytes: u64,
    /// Bytes taken from the source tree on the same server but read and written by doppel:
    /// between two filesystems the kernel cannot copy across (two image trees); neither
    /// streamed nor the kernel's.
    #[serde(default)]
    pub local_bytes: u64,
    /// Files sent as deltas against their previous version.
    pub delta_files: u64,
    /// Entries changed on the copy itself since its last sync (overwritten).
    pub drift: u64,
    pub drift_paths: Vec<String>,
    /// Device files and sockets in the source, which are not copied (at most the first
    /// 100; `skipped_special_count` has them all).
    pub skipped_special: Vec<String>,
    #[serde(default)]
    pub skipped_special_count: u64,
    /// Files that kept changing while being read, or vanished between the scan and the
    /// read; the next sync picks them up (at most 100; `unstable_count` has them all).
    pub unstable: Vec<String>,
    #[serde(default)]
    pub unstable_count: u64,
    /// The copy's own identity files (host name, machine id, SSH host keys, root's
    /// authorized_keys): made new by a copy, kept as they are by a sync.
    #[serde(default)]
    pub identity_files: Vec<String>,
    pub duration_ms: u64,
    /// The resulting tree's manifest root (BLAKE3, hex).
    pub root_hash: String,
    /// The source's state the copy was brought to (its manifest root): what the sync
    /// status compares the source with. It differs from `root_hash` by the copy's own
    /// identity files.
    #[serde(default)]
    pub source_root_hash: String,
    /// An interrupted earlier run was repaired first.
    pub recovered: bool,
    /// What differs from what was asked, e.g. a copied static address that would clash
    /// on the target's network, replaced by a new one.
    #[serde(default)]
    pub notes: Vec<String>,
    /// A sync of a running copy: how long its process was stopped (for the final delta).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub downtime_ms: Option<u64>,
    /// Milliseconds spent per phase (scan, plan, transfer, verify, commit).
    pub phase_ms: std::collections::BTreeMap<String, u64>,
}

/// Live progress of a job; totals are known once planning is done.
#[cfg_attr(feature = "ssr", derive(utoipa::ToSchema))]
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct JobProgress {
    pub phase: JobPhase,
    /// Of the transfer: bytes moved so far, and in all once planned. A finished job shows
    /// its transfer whole (0 of 0 where a sync had nothing to move).
    pub bytes_done: u64,
    pub bytes_total: Option<u64>,
    /// Entries (files, directories, links) of the phase, done and in all; a summary's
    /// `tree_files` counts regular files only.
    pub files_done: u64,
    pub files_total: Option<u64>,
    /// Of the transfer, once totals are known (0 to 100).
    pub percent: Option<f64>,
    pub bytes_per_second: Option<f64>,
    /// Estimated seconds left in the transfer.
    pub eta_seconds: Option<f64>,
}

#[cfg_attr(feature = "ssr", derive(utoipa::ToSchema))]
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Job {
    pub id: String,
    pub kind: JobKind,
    pub status: JobStatus,
    /// While running.
    pub phase: Option<JobPhase>,
    pub project_id: String,
    /// The container the job creates (copy) or updates (sync).
    pub container_id: String,
    pub source_container_id: String,
    pub progress: Option<JobProgress>,
    /// Why a queued job has not started yet, e.g. `waiting for server b (offline: connection
    /// refused)`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub waiting_for: Option<String>,
    /// Once succeeded.
    pub summary: Option<JobSummary>,
    pub error: Option<String>,
    pub created_at: Millis,
    pub started_at: Option<Millis>,
    pub finished_at: Option<Millis>,
    /// Where to read this job, and its live event stream (server-sent events).
    pub url: String,
    pub events_url: String,
}

impl Job {
    /// Where a job is read (`url`): part of the contract, so every job carries it.
    pub fn url_of(id: &str) -> String {
        format!("/api/v1/jobs/{id}")
    }

    /// A job's live event stream (`events_url`).
    pub fn events_url_of(id: &str) -> String {
        format!("/api/v1/jobs/{id}/events")
    }
}

/// One finished run of a copy (its first copy, or a sync), for the sync status page.
#[cfg_attr(feature = "ssr", derive(utoipa::ToSchema))]
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SyncRun {
    pub job_id: String,
    pub kind: JobKind,
    pub status: JobStatus,
    pub finished_at: Millis,
    pub duration_ms: Option<u64>,
    /// Bytes that crossed the wire (content and deltas); none for a failed run.
    pub bytes_sent: Option<u64>,
    pub tree_bytes: Option<u64>,
    pub error: Option<String>,
}

/// Where a copy stands against its source.
#[cfg_attr(feature = "ssr", derive(utoipa::ToSchema))]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Freshness {
    /// The source is in the state the copy last matched.
    Current,
    /// The source changed since (or the copy never matched its live state), or it could
    /// not be checked (`source_error` says why).
    Stale,
    /// The source was deleted, or its tree is gone.
    SourceMissing,
    /// The copy never completed (its copy failed or was cancelled): it has no tree a sync
    /// could bring up to date; a new copy is the way.
    Incomplete,
    /// The copy is being made: its first copy has not finished yet.
    Copying,
}

impl Freshness {
    /// How the console says it.
    pub fn label(self) -> &'static str {
        match self {
            Freshness::Current => "current",
            Freshness::Stale => "stale",
            Freshness::SourceMissing => "source missing",
            Freshness::Incomplete => "never completed",
            Freshness::Copying => "being copied",
        }
    }
}

/// A copy as a team lead sees it on the sync status page.
#[cfg_attr(feature = "ssr", derive(utoipa::ToSchema))]
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CopyStatus {
    /// The copy (its `source` is set when the caller may see the source).
    pub copy: ContainerSummary,
    pub freshness: Freshness,
    /// When the copy last matched its source (its first copy or last successful sync).
    pub last_synced_at: Option<Millis>,
    /// The latest finished run, successful or not.
    pub last_run: Option<SyncRun>,
    /// A copy or sync of this copy that is queued or running now.
    pub running_job: Option<Job>,
    /// Failed runs since the last success (0: not failing).
    pub failures_in_row: u32,
    pub last_error: Option<String>,
    /// Recent finished runs, oldest first (at most 12), for the chart.
    pub history: Vec<SyncRun>,
    pub size_bytes: i64,
    /// Why the source could not be checked (its tree is there but could not be read, or
    /// its server did not answer): the copy is then not known to be current.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_error: Option<String>,
    /// Whether the caller may sync it: operator or admin of its project and of its
    /// source's. The console disables "Sync now" otherwise.
    #[serde(default)]
    pub may_sync: bool,
}

impl CopyStatus {
    pub fn failing(&self) -> bool {
        self.failures_in_row > 0
    }
}

/// What a job event says: a status change, or progress while running.
#[cfg_attr(feature = "ssr", derive(utoipa::ToSchema))]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    Status,
    Progress,
}

impl EventKind {
    /// The name in the stream (`event:`), as serde writes it.
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::Status => "status",
            EventKind::Progress => "progress",
        }
    }
}

/// A job event, as streamed over server-sent events (`event:` is `kind`).
#[cfg_attr(feature = "ssr", derive(utoipa::ToSchema))]
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct JobEvent {
    /// Increasing across all jobs; a reconnecting client sends the last one it saw.
    pub id: u64,
    /// `progress` while running, `status` on a status change; the last event of a job has
    /// status `succeeded`, `failed` or `cancelled` and carries the summary or error.
    pub kind: EventKind,
    /// When the event was published (Unix ms).
    pub at: Millis,
    pub job: Job,
}

/// Filters for listing jobs (`GET /api/v1/jobs?...`); every one is optional.
#[cfg_attr(feature = "ssr", derive(utoipa::IntoParams), into_params(parameter_in = Query))]
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobFilter {
    /// Jobs of this container: its copy (when it is the new container or the source) and
    /// its syncs.
    #[cfg_attr(feature = "ssr", param(pattern = "^[0-9a-f]{24}$"))]
    pub container_id: Option<String>,
    #[cfg_attr(feature = "ssr", param(pattern = "^[0-9a-f]{24}$"))]
    pub project_id: Option<String>,
    #[cfg_attr(
        feature = "ssr",
        param(pattern = "^(queued|running|succeeded|failed|cancelled)$")
    )]
    pub status: Option<String>,
    #[cfg_attr(
        feature = "ssr",
        param(pattern = "^(copy|sync|delete|start|stop|restart|convert)$")
    )]
    pub kind: Option<String>,
    /// Jobs older than this one (its id): the next page, after the last job of a page.
    #[cfg_attr(feature = "ssr", param(pattern = "^[0-9a-f]{24}$"))]
    pub before: Option<String>,
    /// How many, newest first (default 100, at most 500).
    #[cfg_attr(feature = "ssr", param(minimum = 1, maximum = 500))]
    pub limit: Option<u32>,
}

/// Jobs a page of `GET /jobs` holds unless its `limit` says.
pub const JOBS_PAGE: u32 = 100;

/// How a copy or sync moves its data: `?bwlimit=` on both endpoints (beside the
/// contract's fields, which it leaves as they are).
#[cfg_attr(feature = "ssr", derive(utoipa::IntoParams))]
#[cfg_attr(feature = "ssr", into_params(parameter_in = Query))]
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TransferOptions {
    /// At most this many bytes a second, as rsync's `--bwlimit`: a number with an optional
    /// K, M or G (powers of 1024), at least 64K. The servers' own limits apply too: the
    /// lowest wins.
    #[serde(default)]
    // (At least 64K: bytes from 65536, K from 64, M or G from 1.)
    #[cfg_attr(
        feature = "ssr",
        param(
            pattern = "^([1-9][0-9]{5,14}|6553[6-9]|655[4-9][0-9]|65[6-9][0-9]{2}|6[6-9][0-9]{3}|[7-9][0-9]{4}|(6[4-9]|[7-9][0-9]|[1-9][0-9]{2,14})[Kk]|[1-9][0-9]{0,14}[MmGg])$"
        )
    )]
    pub bwlimit: Option<String>,
}

/// The body of `POST /api/v1/containers/{id}/copy` (the contract's fields).
#[cfg_attr(feature = "ssr", derive(utoipa::ToSchema))]
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CopyRequest {
    #[cfg_attr(feature = "ssr", schema(pattern = "^[0-9a-f]{24}$"))]
    pub target_project_id: String,
    #[serde(default)]
    #[cfg_attr(feature = "ssr", schema(pattern = "^[0-9a-f]{24}$"))]
    pub target_server_id: Option<String>,
    #[serde(default)]
    #[cfg_attr(
        feature = "ssr",
        schema(pattern = "^[A-Za-z]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?$")
    )]
    pub name: Option<String>,
    /// An OpenSSH public key (`<type> <base64> [comment]`), unique among containers.
    #[serde(default)]
    #[cfg_attr(
        feature = "ssr",
        schema(
            pattern = "^(ssh-ed25519|ssh-rsa|ecdsa-sha2-nistp(256|384|521)) [A-Za-z0-9+/]+=*( [^\\n]*)?$"
        )
    )]
    pub ssh_public_key: Option<String>,
    /// A snapshot of the source, by id or name.
    #[serde(default)]
    #[cfg_attr(
        feature = "ssr",
        schema(pattern = "^([0-9a-f]{24}|[A-Za-z]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)$")
    )]
    pub source_snapshot: Option<String>,
    /// Absent or `null`: false (as the optional strings take `null` for absent).
    #[serde(default, deserialize_with = "null_is_false")]
    #[cfg_attr(feature = "ssr", schema(nullable))]
    pub copy_firewall_rules: bool,
    #[serde(default, deserialize_with = "null_is_false")]
    #[cfg_attr(feature = "ssr", schema(nullable))]
    pub copy_network_rules: bool,
}

/// A boolean that may be given as `null`, meaning false.
fn null_is_false<'de, D: serde::Deserializer<'de>>(d: D) -> Result<bool, D::Error> {
    Ok(Option::<bool>::deserialize(d)?.unwrap_or(false))
}

/// What a copy request starts: the new container and the job that fills it.
#[cfg_attr(feature = "ssr", derive(utoipa::ToSchema))]
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CopyStarted {
    pub container: ContainerDetail,
    pub job: Job,
}

/// What every error of the API and of the server functions carries.
#[cfg_attr(feature = "ssr", derive(utoipa::ToSchema))]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    Unauthorized,
    Forbidden,
    NotFound,
    InvalidRequest,
    Conflict,
    Unprocessable,
    /// A per-user or per-project limit is reached (jobs queued, event streams open).
    TooManyRequests,
    Internal,
    /// doppel cannot do it now (its database does not answer); try again later.
    Unavailable,
    /// The target server has not enough free space for it.
    InsufficientStorage,
    /// The request body is larger than doppel reads.
    PayloadTooLarge,
}

impl ErrorCode {
    /// The HTTP status that goes with the code.
    pub fn status(self) -> u16 {
        match self {
            ErrorCode::Unauthorized => 401,
            ErrorCode::Forbidden => 403,
            ErrorCode::NotFound => 404,
            ErrorCode::InvalidRequest => 400,
            ErrorCode::Conflict => 409,
            ErrorCode::Unprocessable => 422,
            ErrorCode::TooManyRequests => 429,
            ErrorCode::Internal => 500,
            ErrorCode::Unavailable => 503,
            ErrorCode::InsufficientStorage => 507,
            ErrorCode::PayloadTooLarge => 413,
        }
    }
}

/// An error for a user: a stable code and a sentence that says what to do.
#[cfg_attr(feature = "ssr", derive(utoipa::ToSchema))]
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{message}")]
pub struct ApiError {
    pub code: ErrorCode,
    pub message: String,
    /// The request field the error is about, when it is about one (a form shows the
    /// message next to that field).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
    /// Seconds to wait before trying again, when that is known (a throttled password
    /// change, a snapshot that found no job slot); also sent as `Retry-After`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_after: Option<u64>,
}

impl ApiError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        ApiError {
            code,
            message: message.into(),
            field: None,
            retry_after: None,
        }
    }

    /// The same error, about the request field `field`.
    pub fn on_field(mut self, field: &str) -> Self {
        self.field = Some(field.to_string());
        self
    }

    /// The same error, with when to try again.
    pub fn retry_after(mut self, secs: u64) -> Self {
        self.retry_after = Some(secs.max(1));
        self
    }

    /// The message as the console shows it: a request field it starts with is named as the
    /// console's forms label it ("SSH public key: ...", not "ssh_public_key: ..."). API
    /// clients get the field's own name, which is what they sent.
    pub fn for_people(&self) -> String {
        humane_message(&self.message)
    }

    pub fn unauthorized() -> Self {
        Self::new(
            ErrorCode::Unauthorized,
            "authentication required: log in, or send Authorization: Bearer <token>",
        )
    }
    pub fn not_found(what: &str, id: &str) -> Self {
        Self::new(ErrorCode::NotFound, format!("{what} {id:?} not found"))
    }
    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::Forbidden, message)
    }
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::InvalidRequest, message)
    }
    pub fn unavailable() -> Self {
        Self::new(
            ErrorCode::Unavailable,
            "doppel cannot reach its database right now; try again in a moment",
        )
    }
    pub fn internal() -> Self {
        Self::new(
            ErrorCode::Internal,
            "internal error; the server log has the details",
        )
    }
}

/// The console's names of the request fields whose errors it shows (see
/// [`ApiError::for_people`]).
const FIELD_LABELS: &[(&str, &str)] = &[
    ("ssh_public_key", "SSH public key"),
    ("target_project_id", "Target project"),
    ("target_server_id", "Target server"),
    ("source_snapshot", "Source state"),
    ("name", "Name"),
    ("new", "New password"),
    ("current", "Current password"),
    ("bwlimit", "Limit"),
    ("timeout", "Timeout"),
];

/// `message` with the API field it starts with ("field: ..." or "field is ...") named by
/// its console label.
pub fn humane_message(message: &str) -> String {
    for (field, label) in FIELD_LABELS {
        if let Some(rest) = message.strip_prefix(field) {
            if rest.starts_with(':') || rest.starts_with(' ') {
                return format!("{label}{rest}");
            }
        }
    }
    message.to_string()
}

impl leptos::server_fn::error::FromServerFnError for ApiError {
    type Encoder = leptos::server_fn::codec::JsonEncoding;

    fn from_server_fn_error(value: leptos::server_fn::error::ServerFnErrorErr) -> Self {
        use leptos::server_fn::error::ServerFnErrorErr as E;
        let code = match value {
            E::Args(_) | E::MissingArg(_) | E::Deserialization(_) => ErrorCode::InvalidRequest,
            _ => ErrorCode::Internal,
        };
        ApiError::new(code, value.to_string())
    }
}

/// `true` for a 24-digit lowercase hex id, the form of every doppel id.
pub fn is_valid_id(id: &str) -> bool {
    id.len() == 24 && id.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// The name a copy gets when none is given, if it is free in the target project (else the
/// server takes `-copy-2`, `-3`, ...): the source's name cut to 50 characters, so that
/// the suffixes keep it within the 63 a name may have. Shared with the copy form's
/// placeholder.
pub fn default_copy_name(source: &str) -> String {
    let base: String = source.chars().take(50).collect();
    format!("{}-copy", base.trim_end_matches('-'))
}

/// The rule for container names (shared with the console, which validates as you type):
/// 1 to 63 characters, ASCII letters, digits and hyphens, starting with a letter and not
/// ending with a hyphen, so a name is also a valid host name.
pub fn validate_container_name(name: &str) -> Result<(), String> {
    let bytes = name.as_bytes();
    if bytes.is_empty() || bytes.len() > 63 {
        return Err("a name has 1 to 63 characters".into());
    }
    if !bytes[0].is_ascii_alphabetic() {
        return Err("a name starts with a letter".into());
    }
    if bytes[bytes.len() - 1] == b'-' {
        return Err("a name does not end with a hyphen".into());
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || *c == '-'))
    {
        return Err(format!(
            "a name has only letters, digits and hyphens (not {c:?})"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_console_names_a_field_an_error_starts_with_as_its_form_labels_it() {
        assert_eq!(
            humane_message("ssh_public_key: not a key"),
            "SSH public key: not a key"
        );
        assert_eq!(
            humane_message("ssh_public_key is already used by another container"),
            "SSH public key is already used by another container"
        );
        assert_eq!(humane_message("name: too long"), "Name: too long");
        // Only a whole field name at the start: words that merely begin like one stay.
        assert_eq!(humane_message("names must differ"), "names must differ");
        assert_eq!(humane_message("newer: x"), "newer: x");
        assert_eq!(
            humane_message("the project holds containers"),
            "the project holds containers"
        );
    }

    #[test]
    fn a_default_copy_name_is_a_valid_name_with_room_for_its_suffix() {
        assert_eq!(default_copy_name("web-app"), "web-app-copy");
        // 49 letters and a hyphen: the cut leaves a trailing hyphen, which goes.
        let long = format!("{}-{}", "a".repeat(49), "b".repeat(13));
        assert_eq!(long.len(), 63);
        let name = default_copy_name(&long);
        assert_eq!(name, format!("{}-copy", "a".repeat(49)));
        assert!(validate_container_name(&format!("{name}-999")).is_ok());
    }

    #[test]
    fn container_names_follow_host_name_rules() {
        for ok in ["web", "web-app-staging", "a1", &"x".repeat(63)] {
            assert_eq!(validate_container_name(ok), Ok(()), "{ok}");
        }
        for bad in [
            "",
            "1web",
            "-web",
            "web-",
            "web app",
            "wéb",
            "web_app",
            &"x".repeat(64),
        ] {
            assert!(validate_container_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn ids_are_24_lowercase_hex() {
        assert!(is_valid_id("507f1f77bcf86cd799439011"));
        assert!(!is_valid_id("507F1F77BCF86CD799439011"));
        assert!(!is_valid_id("507f1f77bcf86cd79943901"));
        assert!(!is_valid_id("../../etc/passwd0000000"));
    }

    #[test]
    fn error_codes_map_to_their_statuses() {
        assert_eq!(ErrorCode::NotFound.status(), 404);
        assert_eq!(ErrorCode::Unprocessable.status(), 422);
        let json = serde_json::to_value(ApiError::unauthorized()).unwrap();
        assert_eq!(json["code"], "unauthorized");
    }
}
