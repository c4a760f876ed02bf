//! The control plane's side of servers on other hosts: each joined agent's client (mutual
//! TLS, its certificate pinned) and what was last heard from it. A monitor asks every
//! agent for its status each second; an agent that has not answered for
//! [`OFFLINE_AFTER`] is offline, with the last error as the reason.

pub mod page;
pub mod protocol;
mod running;
mod transfer;

pub use transfer::{open_transfer, run_half, send_half, TransferRequest, Where};

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use crate::tls::{self, Fingerprint, Identity};
use protocol::AgentStatus;

/// How often the monitor asks each agent.
pub const POLL_EVERY: Duration = Duration::from_secs(1);
/// An agent silent this long is offline.
pub const OFFLINE_AFTER: Duration = Duration::from_secs(3);
/// A control call that takes longer than this failed.
const CALL_TIMEOUT: Duration = Duration::from_secs(2);

/// What the control plane knows of one agent now.
#[derive(Clone, Debug, Default)]
pub struct AgentView {
    pub online: bool,
    /// Unix milliseconds of the last answer.
    pub last_seen_ms: Option<i64>,
    pub status: Option<AgentStatus>,
    /// Why it is offline: the last call's error.
    pub reason: Option<String>,
}

struct Agent {
    /// Its server's name (for messages).
    name: String,
    address: String,
    pin: Fingerprint,
    /// Status calls (a short timeout).
    client: reqwest::Client,
    /// Transfers and other work (no overall timeout: a transfer takes what it takes).
    worker: reqwest::Client,
    last_seen: Option<(Instant, i64)>,
    status: Option<AgentStatus>,
    error: Option<String>,
}

/// Every joined agent of this control plane, by server id.
pub struct Agents {
    me: Identity,
    agents: Mutex<HashMap<String, Agent>>,
    /// Where hosts join (`--agents-addr`), once this control plane listens there.
    join_at: std::sync::OnceLock<std::net::SocketAddr>,
}

impl Agents {
    pub fn new(me: Identity) -> Arc<Agents> {
        Arc::new(Agents {
            me,
            agents: Mutex::new(HashMap::new()),
            join_at: std::sync::OnceLock::new(),
        })
    }

    /// Hosts join at `addr` from now on (`--agents-addr`).
    pub fn listen_for_joins_at(&self, addr: std::net::SocketAddr) {
        let _ = self.join_at.set(addr);
    }

    /// Where hosts join, if they can.
    pub fn join_address(&self) -> Option<std::net::SocketAddr> {
        self.join_at.get().copied()
    }

    /// This control plane's certificate fingerprint (join tokens carry it).
    pub fn fingerprint(&self) -> Fingerprint {
        self.me.fingerprint
    }

    pub fn identity(&self) -> &Identity {
        &self.me
    }

    /// Adds (or replaces, after a new join) the agent of a server.
    pub fn set(
        &self,
        server_id: &str,
        name: &str,
        address: &str,
        pin: Fingerprint,
    ) -> Result<(), String> {
        let client = tls::client(&self.me, pin, CALL_TIMEOUT)?;
        let worker = tls::client(&self.me, pin, Duration::from_secs(7 * 24 * 3600))?;
        self.agents.lock().insert(
            server_id.to_string(),
            Agent {
                name: name.to_string(),
                address: address.to_string(),
                pin,
                client,
                worker,
                last_seen: None,
                status: None,
                error: Some("not heard from yet".into()),
            },
        );
        Ok(())
    }

    /// Whether the server is another host's (a joined agent).
    /// The storage roots the agents reported (for naming them in errors).
    pub fn storage_roots(&self) -> Vec<String> {
        self.agents
            .lock()
            .values()
            .filter_map(|a| a.status.as_ref().map(|s| s.storage_root.clone()))
            .collect()
    }

    pub fn is_agent(&self, server_id: &str) -> bool {
        self.agents.lock().contains_key(server_id)
    }

    /// The first of these servers that is an agent and offline: its name and why.
    pub fn first_offline(&self, server_ids: &[&str]) -> Option<(String, String)> {
        server_ids.iter().find_map(|id| {
            let name = self.agents.lock().get(*id)?.name.clone();
            let view = self.view(id)?;
            (!view.online).then(|| (name, view.reason.unwrap_or_else(|| "no answer".into())))
        })
    }

    /// Where an agent is, its certificate, and a client for work on it.
    fn reach(&self, server_id: &str) -> Option<(String, Fingerprint, reqwest::Client)> {
        let agents = self.agents.lock();
        let a = agents.get(server_id)?;
        Some((a.address.clone(), a.pin, a.worker.clone()))
    }

    pub fn view(&self, server_id: &str) -> Option<AgentView> {
        let agents = self.agents.lock();
        let a = agents.get(server_id)?;
        let online = a
            .last_seen
            .is_some_and(|(at, _)| at.elapsed() < OFFLINE_AFTER);
        Some(AgentView {
            online,
            last_seen_ms: a.last_seen.map(|(_, ms)| ms),
            status: a.status.clone(),
            reason: (!online).then(|| a.error.clone().unwrap_or_else(|| "no answer".to_string())),
        })
    }

    /// Asks every agent for its status, all at once; records answers and errors.
    pub async fn poll_all(&self) {
        let calls: Vec<(String, reqwest::Client, String)> = self
            .agents
            .lock()
            .iter()
            .map(|(id, a)| (id.clone(), a.client.clone(), a.address.clone()))
            .collect();
        let answers =
            futures::future::join_all(calls.into_iter().map(|(id, client, address)| async move {
                let result = fetch_status(&client, &address).await;
                (id, result)
            }))
            .await;
        let mut agents = self.agents.lock();
        for (id, result) in answers {
            let Some(a) = agents.get_mut(&id) else {
                continue;
            };
            match result {
                Ok(status) => {
                    a.last_seen = Some((Instant::now(), crate::ids::now_ms()));
                    a.status = Some(status);
                    a.error = None;
                }
                Err(e) => a.error = Some(e),
            }
        }
    }

    /// The monitor: [`poll_all`](Self::poll_all) every [`POLL_EVERY`] until the process ends.
    pub fn spawn_monitor(self: &Arc<Self>) -> tokio::task::JoinHandle<()> {
        let agents = Arc::clone(self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(POLL_EVERY);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                agents.poll_all().await;
            }
        })
    }
}

/// `GET /v1/status` of one agent; an error as a sentence.
async fn fetch_status(client: &reqwest::Client, address: &str) -> Result<AgentStatus, String> {
    let resp = client
        .get(format!("https://{address}/v1/status"))
        .send()
        .await
        .map_err(|e| describe(&e))?;
    if !resp.status().is_success() {
        return Err(format!("it answered {}", resp.status()));
    }
    resp.json().await.map_err(|e| describe(&e))
}

/// A client error as a person reads it: the innermost cause says what went wrong
/// ("connection refused", "invalid peer certificate").
pub fn describe(e: &reqwest::Error) -> String {
    let mut cause: &dyn std::error::Error = e;
    while let Some(inner) = cause.source() {
        cause = inner;
    }
    if e.is_timeout() {
        "no answer in time".to_string()
    } else {
        cause.to_string()
    }
}
