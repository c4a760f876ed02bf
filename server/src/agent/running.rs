//! Containers that run on an agent's host: its own runtime (runc, a network namespace per
//! container, nftables) does what the control plane's lifecycle asks. The control plane
//! keeps the statuses and plans the addresses; the agent starts, stops, observes, loads
//! firewall rules and reads logs. Its containers outlive it (each has its shim), so an
//! agent killed and started again finds them running.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path as UrlPath, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;

use super::work::{checked_id, refused};
use super::AgentState;
use crate::config::{container_root, runtime_dir};
use crate::remote::page;
use crate::remote::protocol::{ObserveRequest, Refused, RunRequest, RunState, StopRequest};
use crate::runtime::{oci, shim, Attachment, Ipv4Net, RunSpec, Runtime};

/// Interfaces a container may have (the host's end of each is named by its index).
const MAX_INTERFACES: usize = 8;

impl AgentState {
    fn bundle(&self, id: &str) -> std::path::PathBuf {
        runtime_dir(&self.storage_root, id)
    }

    /// Stops a container if it runs (and removes its network): before its tree goes.
    pub(super) async fn stop_if_running(&self, id: &str) {
        if self.runtime.unavailable().is_some() {
            return;
        }
        let _ = self
            .runtime
            .stop(id, &self.bundle(id), MAX_INTERFACES, Duration::ZERO)
            .await;
    }
}

/// Starts a container of this host as planned by the control plane.
pub(super) async fn start(
    State(st): State<Arc<AgentState>>,
    UrlPath(id): UrlPath<String>,
    Json(req): Json<RunRequest>,
) -> Result<Response, Refused> {
    let id = checked_id(&id)?.to_string();
    if let Some(why) = st.runtime.unavailable() {
        return Err(Refused(
            StatusCode::CONFLICT,
            format!("no container runtime on this host ({why})"),
        ));
    }
    if req.interfaces.len() > MAX_INTERFACES {
        return Err(Refused(
            StatusCode::BAD_REQUEST,
            "too many interfaces".into(),
        ));
    }
    let rootfs = container_root(&st.storage_root, &id);
    if !rootfs.is_dir() {
        return Err(Refused(
            StatusCode::NOT_FOUND,
            "its tree is not on this host".into(),
        ));
    }
    let mut attachments = Vec::with_capacity(req.interfaces.len());
    for (n, i) in req.interfaces.iter().enumerate() {
        let network = Ipv4Net::parse(&i.network)
            .map_err(|e| Refused(StatusCode::BAD_REQUEST, format!("network: {e}")))?;
        attachments.push(Attachment {
            iface: i.iface.clone(),
            host_end: st.runtime.host_end(&id, n),
            bridge: st.runtime.bridge(i.bridge),
            network,
            address: i.address,
            mac: i.mac.clone(),
            mtu: i.mtu,
        });
    }
    let lock = st.lock_of(&id);
    let _one = lock.lock().await;
    crate::lifecycle::mount_image_tree(&rootfs)
        .await
        .map_err(|e| Refused(StatusCode::CONFLICT, e))?;
    let bundle = st.bundle(&id);
    let spec = RunSpec {
        id: &id,
        bundle: &bundle,
        rootfs: &rootfs,
        hostname: &req.hostname,
        process: oci::ProcessSpec {
            args: &req.command.args,
            env: &req.command.env,
            cwd: &req.command.cwd,
        },
        attachments: &attachments,
        firewall: &req.firewall,
    };
    let observed = st
        .runtime
        .start(&spec)
        .await
        .map_err(|e| Refused(StatusCode::CONFLICT, format!("start failed: {e}")))?;
    Ok(Json(RunState::from(observed)).into_response())
}

/// Stops a container: how its process ended (`null`: it left no record).
pub(super) async fn stop(
    State(st): State<Arc<AgentState>>,
    UrlPath(id): UrlPath<String>,
    Json(req): Json<StopRequest>,
) -> Result<Response, Refused> {
    let id = checked_id(&id)?.to_string();
    if st.runtime.unavailable().is_some() {
        return Ok(Json(None::<crate::runtime::Exit>).into_response());
    }
    let lock = st.lock_of(&id);
    let _one = lock.lock().await;
    let grace = Duration::from_millis(req.grace_ms.min(600_000));
    let interfaces = req.interfaces.clamp(1, MAX_INTERFACES);
    let exit = st
        .runtime
        .stop(&id, &st.bundle(&id), interfaces, grace)
        .await
        .map_err(|e| Refused(StatusCode::CONFLICT, format!("stop failed: {e}")))?;
    Ok(Json(exit).into_response())
}

/// The state of each container asked for, from one `runc list`.
pub(super) async fn observe(
    State(st): State<Arc<AgentState>>,
    Json(req): Json<ObserveRequest>,
) -> Response {
    let listed = match st.runtime.unavailable() {
        Some(_) => HashMap::new(),
        None => match st.runtime.list().await {
            Ok(l) => l,
            Err(e) => return refused(StatusCode::CONFLICT, format!("runc list: {e}")),
        },
    };
    let mut states = HashMap::new();
    for id in &req.ids {
        if let Ok(id) = checked_id(id) {
            let observed = Runtime::observe(&listed, id, &st.bundle(id));
            states.insert(id.to_string(), RunState::from(observed));
        }
    }
    Json(states).into_response()
}

#[derive(Deserialize)]
pub(super) struct OpenQuery {
    /// The container's address and port.
    address: std::net::SocketAddr,
    /// The path and query to ask for.
    target: String,
}

/// A page of a container of this host, for the control plane's Open: asked with the
/// headers it forwards (those a page may see), answered as the container answered.
pub(super) async fn open(
    UrlPath(id): UrlPath<String>,
    Query(q): Query<OpenQuery>,
    req: axum::extract::Request,
) -> Result<Response, Refused> {
    checked_id(&id)?;
    let method = req.method().clone();
    if method != axum::http::Method::GET && method != axum::http::Method::HEAD {
        return Err(Refused(
            StatusCode::METHOD_NOT_ALLOWED,
            "GET or HEAD only".into(),
        ));
    }
    if !q.target.starts_with('/') {
        return Err(Refused(
            StatusCode::BAD_REQUEST,
            "the target is a path".into(),
        ));
    }
    let mut out = axum::http::Request::builder()
        .method(method)
        .uri(&q.target)
        .header(axum::http::header::HOST, q.address.to_string());
    for name in page::FORWARDED {
        if let Some(v) = req.headers().get(&name) {
            out = out.header(name, v);
        }
    }
    let out = out
        .body(axum::body::Body::empty())
        .map_err(|_| Refused(StatusCode::BAD_REQUEST, "this path cannot be opened".into()))?;
    Ok(match page::fetch(q.address, out).await {
        Ok(resp) => {
            let (parts, body) = resp.into_parts();
            Response::from_parts(parts, axum::body::Body::new(body))
        }
        Err(why) => {
            let mut r = refused(StatusCode::BAD_GATEWAY, why);
            r.headers_mut()
                .insert(page::UNREACHABLE, axum::http::HeaderValue::from_static("1"));
            r
        }
    })
}

#[derive(Deserialize)]
pub(super) struct LogQuery {
    lines: Option<usize>,
}

/// The last lines of a container's output.
pub(super) async fn logs(
    State(st): State<Arc<AgentState>>,
    UrlPath(id): UrlPath<String>,
    Query(q): Query<LogQuery>,
) -> Result<Response, Refused> {
    let id = checked_id(&id)?.to_string();
    let lines = q.lines.unwrap_or(200).min(10_000);
    let bundle = st.bundle(&id);
    let tail = tokio::task::spawn_blocking(move || shim::tail(&bundle, lines))
        .await
        .unwrap_or_default();
    Ok(Json(tail).into_response())
}

/// Loads a running container's firewall rules again.
pub(super) async fn firewall(
    State(st): State<Arc<AgentState>>,
    UrlPath(id): UrlPath<String>,
    Json(rules): Json<Vec<app::model::FirewallRule>>,
) -> Result<Response, Refused> {
    let id = checked_id(&id)?.to_string();
    let lock = st.lock_of(&id);
    let _one = lock.lock().await;
    st.runtime
        .apply_firewall(&id, &rules)
        .await
        .map_err(|e| Refused(StatusCode::CONFLICT, format!("firewall: {e}")))?;
    Ok(StatusCode::NO_CONTENT.into_response())
}
