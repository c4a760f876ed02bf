//! What the control plane and an agent say to each other (JSON over mutual TLS).

use serde::{Deserialize, Serialize};

/// The agent protocol's version: both sides refuse a peer of another.
pub const PROTOCOL: u32 = 3;

/// `POST /v1/join` on the control plane's agent port, from a host joining with a token.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JoinRequest {
    /// The secret part of the join token.
    pub secret: String,
    /// host:port where the control plane reaches this agent; empty: the address the join
    /// came from, with `port`.
    #[serde(default)]
    pub address: Option<String>,
    pub port: u16,
    pub protocol: u32,
    pub version: String,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct JoinAnswer {
    pub server_id: String,
    pub server_name: String,
    /// The address the control plane will call.
    pub address: String,
}

/// An error answer of either side: `{"error": "..."}`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ErrorAnswer {
    pub error: String,
}

/// A request refused, as either side answers it: its status and an [`ErrorAnswer`].
pub struct Refused(pub axum::http::StatusCode, pub String);

impl axum::response::IntoResponse for Refused {
    fn into_response(self) -> axum::response::Response {
        (self.0, axum::Json(ErrorAnswer { error: self.1 })).into_response()
    }
}

/// `GET /v1/status` on an agent.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentStatus {
    pub server_id: String,
    pub version: String,
    pub protocol: u32,
    /// Free and total bytes of the filesystem of its storage root.
    pub free_bytes: u64,
    pub total_bytes: u64,
    /// Container trees in its storage root.
    pub containers: u64,
    /// Why containers cannot run on it (none: they can).
    #[serde(default)]
    pub runtime: Option<String>,
    /// What its storage's filesystem does for copies within it.
    #[serde(default)]
    pub storage: Option<app::model::StorageMode>,
    /// The size of the image trees it lays down (`--image-trees`), if it does.
    #[serde(default)]
    pub image_trees: Option<u64>,
    /// Where its storage root is on its host: a job's error names it as the server's
    /// storage, not by that host's path.
    #[serde(default)]
    pub storage_root: String,
}

/// What a transfer does to its target.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TransferMode {
    /// A new tree (a new copy).
    Copy,
    /// An existing copy brought up to its source (its own identity files kept).
    Sync,
}

/// A new copy's identity: made on its server once its tree is there.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct NewIdentity {
    pub hostname: String,
    pub ssh_public_key: Option<String>,
}

/// The header that names a transfer's ticket on `/v1/transfer` and `/v1/pull`.
pub const TICKET_HEADER: &str = "x-doppel-ticket";
/// The protocol a transfer's connection is upgraded to.
pub const TRANSFER_UPGRADE: &str = "doppel-transfer/1";

/// `POST /v1/expect`, control plane -> the target's agent: a transfer with this ticket
/// will come from the peer with this certificate (it is let in for it, for a minute).
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Expect {
    pub ticket: String,
    pub mode: TransferMode,
    pub container_id: String,
    /// The sending peer's certificate fingerprint.
    pub peer: String,
    /// A copy's new identity.
    #[serde(default)]
    pub identity: Option<NewIdentity>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ExpectAnswer {
    /// A copy's tree is there, complete, already (an earlier run committed before its job
    /// could record it): it is brought up to date by a sync instead.
    pub exists: bool,
}

/// `POST /v1/local`, control plane -> an agent: a copy or sync between two trees of its
/// own server, made there as on any server (clones, snapshots, the kernel's copies: the
/// engine's same-server paths), never through a connection. A copy whose tree an earlier
/// run finished is brought up to date. The answer is JSON lines, as `/v1/send`'s.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LocalRequest {
    pub mode: TransferMode,
    pub container_id: String,
    pub target_container_id: String,
    #[serde(default)]
    pub snapshot_id: Option<String>,
    #[serde(default)]
    pub bwlimit: Option<u64>,
}

/// `POST /v1/send`, control plane -> the source's agent: send this tree to the target's
/// agent. The answer is JSON lines: progress, then how it ended.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SendRequest {
    pub ticket: String,
    pub mode: TransferMode,
    pub container_id: String,
    /// The container it goes to (the source keeps a copy of what it left there).
    pub target_container_id: String,
    #[serde(default)]
    pub snapshot_id: Option<String>,
    /// The target agent: host:port and certificate fingerprint.
    pub to: String,
    pub to_fingerprint: String,
    /// Bytes a second the source's agent may send.
    #[serde(default)]
    pub bwlimit: Option<u64>,
}

/// `POST /v1/pull` (upgraded), control plane -> the source's agent: send this tree over
/// this very connection (the control plane's own server receives it).
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PullRequest {
    pub mode: TransferMode,
    pub container_id: String,
    pub target_container_id: String,
    #[serde(default)]
    pub snapshot_id: Option<String>,
    /// Bytes a second the source's agent may send.
    #[serde(default)]
    pub bwlimit: Option<u64>,
}

/// One line of a `/v1/send` answer.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SendLine {
    Progress(crate::engine::Progress),
    Done(Box<app::model::JobSummary>),
    Failed {
        error: String,
        /// The target is partly changed (a sync failed while committing).
        incomplete: bool,
        cancelled: bool,
        /// The connection between the two servers broke: worth trying again.
        #[serde(default)]
        disconnected: bool,
    },
}

/// A join token as the operator copies it: `doppel-join-1.<secret>.<fingerprint>`. The
/// fingerprint is the control plane's certificate's, so the joining agent knows whom it
/// talks to before it sends the secret.
pub fn join_token(secret: &str, control_plane: crate::tls::Fingerprint) -> String {
    format!("doppel-join-1.{secret}.{control_plane}")
}

/// The secret and the control plane's fingerprint of a join token.
pub fn parse_join_token(token: &str) -> Option<(String, crate::tls::Fingerprint)> {
    let mut parts = token.trim().split('.');
    let (Some("doppel-join-1"), Some(secret), Some(fp), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return None;
    };
    if secret.len() != 64 || !secret.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    Some((secret.to_string(), crate::tls::Fingerprint::parse(fp)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn join_tokens_round_trip_and_refuse_garbage() {
        let fp = crate::tls::Fingerprint::of(b"cp");
        let secret = "ab".repeat(32);
        let token = join_token(&secret, fp);
        assert_eq!(parse_join_token(&token), Some((secret.clone(), fp)));
        assert_eq!(parse_join_token(&format!(" {token}\n")), Some((secret, fp)));
        for bad in [
            "",
            "doppel-join-1",
            "doppel-join-2.aa.bb",
            &format!("{token}.x"),
        ] {
            assert_eq!(parse_join_token(bad), None, "{bad}");
        }
    }
}

/// One interface of a container to start on an agent, as the control plane planned it
/// (addresses are allocated there, per server); the agent names the host's ends itself.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunInterface {
    pub iface: String,
    /// The number of its network on that server (its bridge).
    pub bridge: u32,
    /// The network, e.g. `10.88.3.0/24`.
    pub network: String,
    pub address: std::net::Ipv4Addr,
    pub mac: String,
    #[serde(default)]
    pub mtu: Option<u32>,
}

/// `POST /v1/containers/{id}/start`, control plane -> the container's agent.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunRequest {
    pub hostname: String,
    pub command: app::model::ContainerCommand,
    pub interfaces: Vec<RunInterface>,
    pub firewall: Vec<app::model::FirewallRule>,
}

/// What is true of a container's process on an agent (the runtime's `Observed`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RunState {
    Running { pid: i64 },
    Exited(crate::runtime::Exit),
    Gone,
}

impl From<crate::runtime::Observed> for RunState {
    fn from(o: crate::runtime::Observed) -> RunState {
        match o {
            crate::runtime::Observed::Running { pid } => RunState::Running { pid },
            crate::runtime::Observed::Exited(e) => RunState::Exited(e),
            crate::runtime::Observed::Gone => RunState::Gone,
        }
    }
}

impl From<RunState> for crate::runtime::Observed {
    fn from(s: RunState) -> crate::runtime::Observed {
        match s {
            RunState::Running { pid } => crate::runtime::Observed::Running { pid },
            RunState::Exited(e) => crate::runtime::Observed::Exited(e),
            RunState::Gone => crate::runtime::Observed::Gone,
        }
    }
}

/// `POST /v1/containers/{id}/stop`: SIGTERM, `grace_ms`, then SIGKILL; the answer is how
/// its process ended (`null`: it left no record).
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StopRequest {
    pub grace_ms: u64,
    /// How many interfaces it has (their host ends are removed).
    pub interfaces: usize,
}

/// `POST /v1/observe`: the state of each of these containers.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ObserveRequest {
    pub ids: Vec<String>,
}
