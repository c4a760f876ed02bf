//! Servers: the embedded ones (storage roots of this host) and agents on other hosts.
//! Platform admins add a server, which gives a one-time join token; `doppel agent join`
//! on the new host uses it (through the control plane's agent port), and from then on the
//! control plane calls that agent, pinning the certificate it joined with.

use std::net::SocketAddr;

use app::model::*;

use super::audit::Actor;
use super::jobs::parse_bwlimit;
use super::projects::{check_description, check_name};
use super::{check_id, internal, Service};
use crate::ids::{new_id, new_secret, now_ms, secret_hash};
use crate::remote::protocol::{join_token, JoinAnswer, JoinRequest, PROTOCOL};
use crate::store::{Db, ServerRow};
use crate::tls::Fingerprint;

/// The wire's name for what a filesystem's kernel does for copies.
pub fn storage_mode_of(found: Option<crate::engine::fsx::KernelCopy>) -> StorageMode {
    match found {
        Some(crate::engine::fsx::KernelCopy::Reflink) => StorageMode::Reflink,
        Some(crate::engine::fsx::KernelCopy::CopyFileRange) => StorageMode::CopyFileRange,
        None => StorageMode::Stream,
    }
}

/// The size of the image trees this host lays down in the storage root `root`: set
/// (`--image-trees`) and possible there.
pub fn image_trees_in(root: &std::path::Path) -> Option<u64> {
    crate::config::image_tree_size().filter(|_| crate::engine::image::can_hold(root))
}

/// How long a join token is good for.
pub const JOIN_TOKEN_TTL_MS: i64 = 60 * 60 * 1000;

/// A pending server and its join token (for the API, and the CLI on the control plane's
/// host): the token carries `control_plane`, this control plane's certificate fingerprint.
pub(super) async fn add_pending_server(
    db: &Db,
    control_plane: Fingerprint,
    req: NewServer,
) -> Result<(ServerRow, String), ApiError> {
    check_name(&req.name).map_err(|e| ApiError {
        message: e.message.replace("project name", "server name"),
        ..e
    })?;
    let description = req.description.unwrap_or_default();
    check_description(&description)?;
    let secret = new_secret();
    let now = now_ms();
    let mut row = ServerRow::embedded(new_id(), req.name.clone(), String::new(), now);
    row.kind = ServerKind::Agent;
    row.description = description;
    row.join_expires_at = Some(now + JOIN_TOKEN_TTL_MS);
    match db.insert_pending_agent(&row, &secret_hash(&secret)).await {
        Ok(()) => Ok((row, join_token(&secret, control_plane))),
        Err(e) if e.is_unique_violation() => Err(ApiError::new(
            ErrorCode::Conflict,
            format!("a server named {:?} exists", req.name),
        )
        .on_field("name")),
        Err(e) => Err(internal(e)),
    }
}

impl Service {
    /// `GET /servers`: every server with its state; where and which certificate to platform
    /// admins only.
    pub async fn list_servers(&self, user: &UserInfo) -> Result<Vec<Server>, ApiError> {
        let (rows, counts, running) = tokio::try_join!(
            self.db.servers(),
            self.db.container_counts(),
            self.db.running_transfers()
        )
        .map_err(internal)?;
        let vis = self.visibility(user).await?;
        let admin = user.is_admin && user.scope.projects.is_none();
        let mut servers = Vec::with_capacity(rows.len());
        for row in rows {
            let count = counts
                .iter()
                .find(|(id, _)| *id == row.id)
                .map_or(0, |(_, n)| *n as u64);
            let mut server = self.shown(row, count, admin).await;
            server.transfers = running
                .iter()
                .filter(|(job, ..)| vis.can_see(&job.project_id))
                .filter_map(|(job, name, target, source)| {
                    let direction = match (*target == server.id, *source == server.id) {
                        (true, true) => "in and out",
                        (true, false) => "in",
                        (false, true) => "out",
                        (false, false) => return None,
                    };
                    let progress = job.progress.as_ref();
                    Some(ServerTransfer {
                        job_id: job.id.clone(),
                        kind: job.kind,
                        container_id: job.container_id.clone(),
                        container_name: name.clone(),
                        direction: direction.to_string(),
                        bytes_done: progress.map_or(0, |p| p.bytes_done),
                        bytes_total: progress.and_then(|p| p.bytes_total),
                        bytes_per_second: progress.and_then(|p| p.bytes_per_second),
                    })
                })
                .collect();
            servers.push(server);
        }
        Ok(servers)
    }

    /// A server row as the API shows it, with what is known of it now.
    async fn shown(&self, row: ServerRow, container_count: u64, admin: bool) -> Server {
        let mut s = Server {
            id: row.id,
            name: row.name,
            description: row.description,
            storage_root: None,
            created_at: row.created_at,
            kind: row.kind,
            state: ServerState::Online,
            state_reason: None,
            last_seen_at: None,
            version: None,
            free_bytes: None,
            total_bytes: None,
            container_count,
            agent_address: None,
            agent_fingerprint: None,
            join_expires_at: None,
            transfers: Vec::new(),
            bwlimit_bytes_per_second: row.bwlimit.and_then(|b| u64::try_from(b).ok()),
            storage: None,
            image_trees: None,
        };
        match row.kind {
            ServerKind::Embedded => {
                s.version = Some(env!("CARGO_PKG_VERSION").to_string());
                s.last_seen_at = Some(now_ms());
                // Its free space, and what its filesystem does for copies (the engine tries
                // that once per filesystem).
                let root = std::path::PathBuf::from(&row.storage_root);
                let (space, found, images) = tokio::task::spawn_blocking(move || {
                    let _ = std::fs::create_dir_all(&root);
                    (
                        crate::engine::fsx::free_space(&root),
                        crate::engine::fsx::kernel_copy_support(&root),
                        image_trees_in(&root),
                    )
                })
                .await
                .unwrap_or((Err(std::io::ErrorKind::Other.into()), None, None));
                if let Ok((free, total)) = space {
                    s.free_bytes = Some(free);
                    s.total_bytes = Some(total);
                }
                s.storage = Some(storage_mode_of(found));
                s.image_trees = images;
                s.storage_root = admin.then_some(row.storage_root);
            }
            ServerKind::Agent if row.joined_at.is_none() => {
                s.state = ServerState::Pending;
                s.join_expires_at = row.join_expires_at;
                s.state_reason = Some(match row.join_expires_at {
                    Some(t) if t > now_ms() => "waiting for its host to join".into(),
                    _ => "its join token expired: add the server again".into(),
                });
            }
            ServerKind::Agent => {
                let view = self.agents.view(&s.id).unwrap_or_default();
                s.state = if view.online {
                    ServerState::Online
                } else {
                    ServerState::Offline
                };
                s.state_reason = view.reason;
                s.last_seen_at = view.last_seen_ms;
                if let Some(st) = view.status {
                    s.storage = st.storage;
                    s.image_trees = st.image_trees;
                    s.version = Some(st.version);
                    s.free_bytes = Some(st.free_bytes);
                    s.total_bytes = Some(st.total_bytes);
                }
                if admin {
                    s.agent_address = row.agent_address;
                    s.agent_fingerprint = row.agent_fingerprint;
                }
            }
        }
        s
    }

    /// `PUT /servers/{id}/bwlimit` (platform admins): the limit for transfers to and from a
    /// server, or none; jobs that start from now on keep to it.
    pub async fn set_server_bwlimit(
        &self,
        user: &UserInfo,
        id: &str,
        req: ServerBwlimit,
    ) -> Result<Server, ApiError> {
        self.audited(user, "server.bwlimit", id, None, async {
            Self::require_platform_admin(user, "limiting a server's bandwidth")?;
            check_id("server id", id)?;
            // A server that is not there is a 404 whatever the limit.
            let servers = self.db.servers().await.map_err(internal)?;
            if !servers.iter().any(|s| s.id == id) {
                return Err(ApiError::not_found("server", id));
            }
            let limit = parse_bwlimit(req.bwlimit.as_deref())?;
            let stored = limit.map(|l| i64::try_from(l).unwrap_or(i64::MAX));
            if !self
                .db
                .set_server_bwlimit(id, stored)
                .await
                .map_err(internal)?
            {
                return Err(ApiError::not_found("server", id));
            }
            self.list_servers(user)
                .await?
                .into_iter()
                .find(|s| s.id == id)
                .ok_or_else(|| ApiError::not_found("server", id))
        })
        .await
    }

    /// `POST /servers` (platform admins): a pending server and its one-time join token.
    pub async fn add_server(
        &self,
        user: &UserInfo,
        req: NewServer,
    ) -> Result<ServerWithJoinToken, ApiError> {
        let target = req.name.clone();
        self.audited(user, "server.add", &target, None, async {
            Self::require_platform_admin(user, "adding a server")?;
            self.add_pending_server(req).await
        })
        .await
    }

    async fn add_pending_server(&self, req: NewServer) -> Result<ServerWithJoinToken, ApiError> {
        let (row, join_token) =
            add_pending_server(&self.db, self.agents.fingerprint(), req).await?;
        // What to run on the new host, where this control plane listens for joins; where
        // it does not, no host can join, and the answer says so.
        let (join_command, warning) = match self.agents.join_address() {
            // (Listening on every address: the host is reached at one of this host's.)
            Some(addr) if addr.ip().is_unspecified() => (
                Some(format!(
                    "doppel agent join https://<this host's address>:{} {join_token}",
                    addr.port()
                )),
                None,
            ),
            Some(addr) => (
                Some(format!("doppel agent join https://{addr} {join_token}")),
                None,
            ),
            None => (
                None,
                Some(
                    "this control plane was started without --agents-addr: no host can join \
                     until it is started with one (e.g. --agents-addr 0.0.0.0:7443)"
                        .to_string(),
                ),
            ),
        };
        Ok(ServerWithJoinToken {
            server: self.shown(row, 0, true).await,
            join_token,
            join_command,
            warning,
        })
    }

    /// Hosts join at `addr` from now on (`--agents-addr`).
    pub fn listen_for_joins_at(&self, addr: std::net::SocketAddr) {
        self.agents.listen_for_joins_at(addr);
    }

    /// An agent joins (the control plane's agent port): its token must be good, and from
    /// now on its certificate (`peer`) is the server's. Recorded in the audit log either way.
    pub async fn join_agent(
        &self,
        req: JoinRequest,
        peer: Fingerprint,
        from: SocketAddr,
    ) -> Result<JoinAnswer, ApiError> {
        let from_text = from.ip().to_string();
        let result = self.join(req, peer, from).await;
        let target = result.as_ref().map_or("", |a| a.server_name.as_str());
        let actor = Actor {
            user: None,
            name: "agent",
            address: Some(from.ip()),
        };
        self.record(actor, "server.join", target, None, result.as_ref().err())
            .await;
        if let Err(e) = &result {
            tracing::warn!(from = %from_text, error = %e, "an agent's join was refused");
        }
        result
    }

    async fn join(
        &self,
        req: JoinRequest,
        peer: Fingerprint,
        from: SocketAddr,
    ) -> Result<JoinAnswer, ApiError> {
        if req.protocol != PROTOCOL {
            return Err(ApiError::invalid(format!(
                "this control plane speaks agent protocol {PROTOCOL}, the agent {} (doppel {}): run the same doppel version",
                req.protocol, req.version
            )));
        }
        let address = match req.address.as_deref().map(str::trim) {
            Some(a) if !a.is_empty() => a.to_string(),
            _ => SocketAddr::new(from.ip(), req.port).to_string(),
        };
        if address.len() > 255
            || address.chars().any(|c| c.is_whitespace() || c.is_control())
            || !address.contains(':')
        {
            return Err(ApiError::invalid(format!("{address:?} is not a host:port")));
        }
        let joined = self
            .db
            .join_agent(
                &secret_hash(&req.secret),
                &peer.to_string(),
                &address,
                now_ms(),
            )
            .await
            .map_err(internal)?
            .ok_or_else(|| ApiError::forbidden("this join token is unknown, used or expired"))?;
        self.agents
            .set(&joined.id, &joined.name, &address, peer)
            .map_err(internal)?;
        tracing::info!(server = %joined.name, %address, fingerprint = %peer, "an agent joined");
        Ok(JoinAnswer {
            server_id: joined.id,
            server_name: joined.name,
            address,
        })
    }

    /// This control plane's certificate (its agent port serves it).
    pub fn identity(&self) -> &crate::tls::Identity {
        self.agents.identity()
    }

    /// At start: every joined agent into the monitor.
    pub async fn load_agents(&self) -> Result<(), crate::store::DbError> {
        for row in self.db.servers().await? {
            if let (ServerKind::Agent, Some(address), Some(fp)) = (
                row.kind,
                &row.agent_address,
                row.agent_fingerprint
                    .as_deref()
                    .and_then(Fingerprint::parse),
            ) {
                if let Err(e) = self.agents.set(&row.id, &row.name, address, fp) {
                    tracing::error!(server = %row.name, error = %e, "cannot call this agent");
                }
            }
        }
        Ok(())
    }
}
