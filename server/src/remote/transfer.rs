//! Transfers that involve another host, as the control plane runs them. Three shapes:
//! - this process's server to an agent: the target's agent expects this control plane's
//!   certificate, and the source's half runs here over a connection to it;
//! - an agent to an agent: the target's agent expects the source agent's certificate, and
//!   the source's agent is asked to send (the data goes host to host; only progress comes
//!   here);
//! - an agent to this process's server: the control plane pulls, running the target's
//!   half here over a connection to the source's agent.

use std::time::Duration;

use axum::http::{header, StatusCode};

use super::protocol::{
    ErrorAnswer, Expect, ExpectAnswer, LocalRequest, NewIdentity, PullRequest, SendLine,
    SendRequest, TransferMode, TICKET_HEADER, TRANSFER_UPGRADE,
};
use super::{describe, Agents};
use crate::engine::{self, identity, Control, EngineError, Peer as Stream, Place, Summary};

/// Where one end of a transfer is.
#[derive(Clone)]
pub enum Where {
    /// A server of this process: the tree's place (a container's, or a snapshot's).
    Here(Place),
    /// An agent: its server id.
    Agent(String),
}

#[derive(Clone)]
pub struct TransferRequest<'a> {
    pub mode: TransferMode,
    pub source: Where,
    pub source_container: &'a str,
    pub snapshot: Option<&'a str>,
    pub target: Where,
    pub target_container: &'a str,
    /// Bytes a second, paced by the side that sends.
    pub bwlimit: Option<u64>,
}

/// A call to another server that did not get through (or its answer did not): worth
/// trying again once that server answers.
pub(super) fn failed(context: String, why: String) -> EngineError {
    EngineError::Disconnected {
        context,
        source: std::io::Error::other(why),
    }
}

/// An answer's JSON body.
pub(super) async fn answer_json<T: serde::de::DeserializeOwned>(
    resp: reqwest::Response,
) -> Result<T, EngineError> {
    resp.json()
        .await
        .map_err(|e| failed("the other server's answer".into(), describe(&e)))
}

/// An error answer's message (or its status).
async fn answer_error(resp: reqwest::Response) -> String {
    let status = resp.status();
    resp.json::<ErrorAnswer>()
        .await
        .map(|e| e.error)
        .unwrap_or_else(|_| status.to_string())
}

impl Agents {
    pub(super) fn reach_or_fail(
        &self,
        server_id: &str,
    ) -> Result<(String, crate::tls::Fingerprint, reqwest::Client), EngineError> {
        self.reach(server_id).ok_or_else(|| {
            EngineError::Refused(format!(
                "server {server_id} has no agent (it has not joined)"
            ))
        })
    }

    /// A control call to an agent: `build` makes the request from its client and address;
    /// the answer once it said yes (a refusal carries the agent's reason).
    pub(super) async fn control_call(
        &self,
        server_id: &str,
        timeout: Duration,
        build: impl FnOnce(&reqwest::Client, &str) -> reqwest::RequestBuilder,
    ) -> Result<reqwest::Response, EngineError> {
        let (address, _, client) = self.reach_or_fail(server_id)?;
        let resp = build(&client, &address)
            .timeout(timeout)
            .send()
            .await
            .map_err(|e| failed(format!("reaching the server at {address}"), describe(&e)))?;
        if resp.status() == StatusCode::INSUFFICIENT_STORAGE {
            return Err(EngineError::Io {
                context: format!("the server at {address}"),
                source: std::io::ErrorKind::StorageFull.into(),
            });
        }
        if !resp.status().is_success() {
            let why = answer_error(resp).await;
            return Err(EngineError::Refused(format!(
                "the server at {address}: {why}"
            )));
        }
        Ok(resp)
    }

    /// Tells the target's agent a transfer will come from `peer`; the mode it will take
    /// (a copy whose tree is there already becomes a sync).
    async fn expect(
        &self,
        target: &str,
        ticket: &str,
        mode: TransferMode,
        container: &str,
        peer: crate::tls::Fingerprint,
    ) -> Result<TransferMode, EngineError> {
        let expect = Expect {
            ticket: ticket.to_string(),
            mode,
            container_id: container.to_string(),
            peer: peer.to_string(),
            identity: None,
        };
        let answer: ExpectAnswer = answer_json(
            self.control_call(target, Duration::from_secs(10), |client, address| {
                client
                    .post(format!("https://{address}/v1/expect"))
                    .json(&expect)
            })
            .await?,
        )
        .await?;
        Ok(if answer.exists {
            TransferMode::Sync
        } else {
            mode
        })
    }

    /// Runs a transfer with at least one end on an agent (see the module's doc).
    pub async fn transfer(
        &self,
        req: TransferRequest<'_>,
        ctl: Control,
    ) -> Result<Summary, EngineError> {
        let ticket = crate::ids::new_secret();
        match (&req.source, &req.target) {
            (Where::Here(src), Where::Agent(target)) => {
                let mode = self
                    .expect(
                        target,
                        &ticket,
                        req.mode,
                        req.target_container,
                        self.me.fingerprint,
                    )
                    .await?;
                let (address, _, client) = self.reach_or_fail(target)?;
                let request = client
                    .post(format!("https://{address}/v1/transfer"))
                    .header(TICKET_HEADER, &ticket);
                let upgraded = open_transfer(request, &address).await?;
                let (src, target) = (src.clone(), req.target_container.to_string());
                let ctl = ctl.with_bwlimit(req.bwlimit);
                run_half(upgraded, move |stream| {
                    send_half(&src, mode, &target, stream, &ctl)
                })
                .await
            }
            // Both trees on one agent's server: made there as on this host's (clones,
            // snapshots, the kernel's copies), not sent to itself through a connection.
            (Where::Agent(server), Where::Agent(target)) if server == target => {
                let (address, _, client) = self.reach_or_fail(server)?;
                let local = LocalRequest {
                    mode: req.mode,
                    container_id: req.source_container.to_string(),
                    target_container_id: req.target_container.to_string(),
                    snapshot_id: req.snapshot.map(str::to_string),
                    bwlimit: req.bwlimit,
                };
                let request = client.post(format!("https://{address}/v1/local"));
                followed(request.json(&local), ("the server", &address), &ctl).await
            }
            (Where::Agent(source), Where::Agent(target)) => {
                let (_, source_pin, _) = self.reach_or_fail(source)?;
                let mode = self
                    .expect(target, &ticket, req.mode, req.target_container, source_pin)
                    .await?;
                let (to, to_pin, _) = self.reach_or_fail(target)?;
                let (address, _, client) = self.reach_or_fail(source)?;
                let send = SendRequest {
                    ticket,
                    mode,
                    container_id: req.source_container.to_string(),
                    target_container_id: req.target_container.to_string(),
                    snapshot_id: req.snapshot.map(str::to_string),
                    to,
                    to_fingerprint: to_pin.to_string(),
                    bwlimit: req.bwlimit,
                };
                let request = client.post(format!("https://{address}/v1/send"));
                followed(request.json(&send), ("the source server", &address), &ctl).await
            }
            (Where::Agent(source), Where::Here(dst)) => {
                let (address, _, client) = self.reach_or_fail(source)?;
                // A copy whose tree an earlier run committed is brought up to date instead.
                let mode =
                    if req.mode == TransferMode::Copy && dst.root.is_dir() && !dst.commit_pending()
                    {
                        TransferMode::Sync
                    } else {
                        req.mode
                    };
                let pull = PullRequest {
                    mode,
                    container_id: req.source_container.to_string(),
                    target_container_id: req.target_container.to_string(),
                    snapshot_id: req.snapshot.map(str::to_string),
                    bwlimit: req.bwlimit,
                };
                let request = client
                    .post(format!("https://{address}/v1/pull"))
                    .query(&pull);
                let upgraded = open_transfer(request, &address).await?;
                let dst = dst.clone();
                run_half(upgraded, move |stream| match mode {
                    TransferMode::Copy => engine::receive_copy_from(&dst, stream, &ctl),
                    TransferMode::Sync => {
                        engine::receive_sync_from(&dst, stream, &identity::is_identity_path, &ctl)
                    }
                })
                .await
            }
            (Where::Here(_), Where::Here(_)) => Err(EngineError::Refused(
                "both ends are on this host: no agent is involved".into(),
            )),
        }
    }

    /// A new copy's identity on its agent: the files made.
    pub async fn make_identity(
        &self,
        server_id: &str,
        container_id: &str,
        identity: NewIdentity,
    ) -> Result<Vec<String>, EngineError> {
        let resp = self
            .control_call(server_id, Duration::from_secs(60), |client, address| {
                client
                    .post(format!(
                        "https://{address}/v1/containers/{container_id}/identity"
                    ))
                    .json(&identity)
            })
            .await?;
        answer_json(resp).await
    }

    /// A source tree's state on its agent (see `engine::probe`).
    pub async fn probe(&self, server_id: &str, container_id: &str) -> Result<String, EngineError> {
        let resp = self
            .control_call(server_id, Duration::from_secs(30), |client, address| {
                client.get(format!(
                    "https://{address}/v1/containers/{container_id}/probe"
                ))
            })
            .await?;
        answer_json(resp).await
    }

    /// Removes a deleted container's trees on its agent.
    pub async fn remove_container(
        &self,
        server_id: &str,
        container_id: &str,
    ) -> Result<(), EngineError> {
        self.control_call(server_id, Duration::from_secs(600), |client, address| {
            client.delete(format!("https://{address}/v1/containers/{container_id}"))
        })
        .await
        .map(|_| ())
    }
}

/// The source's half of a transfer in `mode` to the container `target` (a sync keeps the
/// copy's identity files; the source keeps a copy of the manifest it left there, so the
/// next sync need not receive it).
pub fn send_half(
    src: &Place,
    mode: TransferMode,
    target: &str,
    stream: &mut dyn engine::Duplex,
    ctl: &Control,
) -> Result<Summary, EngineError> {
    let peer = src.state_dir.join("peers").join(target);
    match mode {
        TransferMode::Copy => engine::send_copy_to(src, stream, Some(&peer), ctl),
        TransferMode::Sync => {
            engine::send_sync_to(src, stream, &identity::is_identity_path, Some(&peer), ctl)
        }
    }
}

/// A transfer's connection: `request` (to the server at `address`) upgraded to the
/// engine's stream.
pub async fn open_transfer(
    request: reqwest::RequestBuilder,
    address: &str,
) -> Result<reqwest::Upgraded, EngineError> {
    let resp = request
        .header(header::CONNECTION, "upgrade")
        .header(header::UPGRADE, TRANSFER_UPGRADE)
        .send()
        .await
        .map_err(|e| failed(format!("reaching the server at {address}"), describe(&e)))?;
    if resp.status() != StatusCode::SWITCHING_PROTOCOLS {
        let why = answer_error(resp).await;
        return Err(EngineError::Refused(format!(
            "the server at {address} refused the transfer: {why}"
        )));
    }
    resp.upgrade()
        .await
        .map_err(|e| failed("taking over the connection".into(), e.to_string()))
}

/// Runs this process's half of a transfer over a connection that was upgraded to the
/// engine's stream, off the async workers (the engine reads and writes blocking).
pub async fn run_half<T>(
    connection: T,
    half: impl FnOnce(&mut dyn engine::Duplex) -> Result<Summary, EngineError> + Send + 'static,
) -> Result<Summary, EngineError>
where
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    tokio::task::spawn_blocking(move || {
        let mut stream = Stream::new(tokio_util::io::SyncIoBridge::new(connection));
        half(&mut stream)
    })
    .await
    .unwrap_or_else(|_| Err(EngineError::Integrity("a transfer panicked".into())))
}

/// Follows a source agent's `/v1/send` answer: progress relayed to `ctl`, until it ends;
/// a cancel of `ctl` ends it (dropping the answer cancels the send there).
/// Sends `request` to an agent (`who`, at `address`) that answers with a transfer's lines,
/// and follows them to the end.
async fn followed(
    request: reqwest::RequestBuilder,
    (who, address): (&str, &str),
    ctl: &Control,
) -> Result<Summary, EngineError> {
    let resp = request
        .send()
        .await
        .map_err(|e| failed(format!("reaching {who} at {address}"), describe(&e)))?;
    if !resp.status().is_success() {
        let why = answer_error(resp).await;
        return Err(EngineError::Refused(format!("{who}: {why}")));
    }
    follow(resp, ctl).await
}

async fn follow(resp: reqwest::Response, ctl: &Control) -> Result<Summary, EngineError> {
    use futures::StreamExt;
    let mut body = resp.bytes_stream();
    let mut pending: Vec<u8> = Vec::new();
    let mut tick = tokio::time::interval(Duration::from_millis(200));
    loop {
        let chunk = tokio::select! {
            chunk = body.next() => chunk,
            _ = tick.tick() => {
                if ctl.is_cancelled() {
                    return Err(EngineError::Cancelled);
                }
                continue;
            }
        };
        let Some(chunk) = chunk else {
            return Err(failed(
                "following the transfer".into(),
                "the source server ended it without saying how it went".into(),
            ));
        };
        let chunk = chunk.map_err(|e| failed("following the transfer".into(), describe(&e)))?;
        pending.extend_from_slice(&chunk);
        while let Some(end) = pending.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = pending.drain(..=end).collect();
            let line: SendLine = serde_json::from_slice(&line)
                .map_err(|e| failed("following the transfer".into(), e.to_string()))?;
            match line {
                SendLine::Progress(p) => ctl.relay(&p),
                SendLine::Done(summary) => return Ok(*summary),
                SendLine::Failed {
                    error,
                    incomplete,
                    cancelled,
                    disconnected,
                } => {
                    return Err(if cancelled {
                        EngineError::Cancelled
                    } else if incomplete {
                        EngineError::Incomplete(error)
                    } else if disconnected {
                        failed("the source server".into(), error)
                    } else {
                        EngineError::Refused(error)
                    })
                }
            }
        }
    }
}
