//! What an agent does for its control plane: transfers (expected from a peer, sent to a
//! peer, or pulled by the control plane itself), a new copy's identity, deletes, and
//! (`running.rs`) its containers' processes.
//! Every route answers only the control plane's certificate, but `/v1/transfer`, which
//! answers only the peer a ticket names (once, within a minute).

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::{Path as UrlPath, Query, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post, put};
use axum::{Extension, Json, Router};

use super::AgentState;
use crate::config::{container_place, runtime_dir, snapshot_place, snapshots_dir};
use crate::engine::{self, identity, Control, EngineError, Place};
use crate::remote::protocol::{
    Expect, ExpectAnswer, LocalRequest, NewIdentity, PullRequest, Refused, SendLine, SendRequest,
    TransferMode, TICKET_HEADER, TRANSFER_UPGRADE,
};
use crate::remote::{open_transfer, run_half, send_half};
use crate::tls::{self, Fingerprint, Peer};

/// How long an announced transfer waits for its peer.
const EXPECT_FOR: Duration = Duration::from_secs(60);

pub(super) struct Expected {
    pub(super) peer: Fingerprint,
    pub(super) until: Instant,
    mode: TransferMode,
    container_id: String,
}

pub(super) fn router(state: Arc<AgentState>) -> Router {
    let control = Router::new()
        .route("/v1/status", get(super::status))
        .route("/v1/expect", post(expect))
        .route("/v1/send", post(send))
        .route("/v1/local", post(local))
        .route("/v1/pull", post(pull))
        .route("/v1/containers/{id}", delete(remove))
        .route("/v1/containers/{id}/identity", post(make_identity))
        .route("/v1/containers/{id}/probe", get(probe))
        .route("/v1/containers/{id}/start", post(super::running::start))
        .route("/v1/containers/{id}/stop", post(super::running::stop))
        .route("/v1/containers/{id}/logs", get(super::running::logs))
        .route(
            "/v1/containers/{id}/firewall",
            put(super::running::firewall),
        )
        .route("/v1/observe", post(super::running::observe))
        .route("/v1/containers/{id}/open", get(super::running::open))
        .route(
            "/v1/containers/{id}/snapshots/{snapshot}",
            post(make_snapshot).delete(remove_snapshot),
        )
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            only_control_plane,
        ));
    Router::new()
        .route("/v1/transfer", post(transfer))
        .merge(control)
        .with_state(state)
}

pub(super) fn refused(status: StatusCode, error: impl Into<String>) -> Response {
    Refused(status, error.into()).into_response()
}

async fn only_control_plane(
    State(st): State<Arc<AgentState>>,
    Extension(peer): Extension<Peer>,
    req: Request,
    next: Next,
) -> Response {
    if peer.fingerprint != st.control_plane {
        return refused(StatusCode::FORBIDDEN, "only the control plane may ask this");
    }
    next.run(req).await
}

/// A container id from the control plane: 24 hex digits (it names directories).
pub(super) fn checked_id(id: &str) -> Result<&str, Refused> {
    if app::model::is_valid_id(id) {
        Ok(id)
    } else {
        Err(Refused(
            StatusCode::BAD_REQUEST,
            format!("{id:?} is not an id"),
        ))
    }
}

fn engine_failure(e: &EngineError, place: Option<&Place>) -> SendLine {
    SendLine::Failed {
        error: e.to_string(),
        incomplete: matches!(e, EngineError::Incomplete(_))
            || place.is_some_and(Place::commit_pending),
        cancelled: matches!(e, EngineError::Cancelled),
        disconnected: matches!(e, EngineError::Disconnected { .. }),
    }
}

async fn expect(State(st): State<Arc<AgentState>>, Json(req): Json<Expect>) -> Response {
    let id = match checked_id(&req.container_id) {
        Ok(id) => id.to_string(),
        Err(r) => return r.into_response(),
    };
    let Some(peer) = Fingerprint::parse(&req.peer) else {
        return refused(StatusCode::BAD_REQUEST, "a bad peer fingerprint");
    };
    // A copy whose tree an earlier run committed (its job could not record it) is brought
    // up to date by a sync instead.
    let dst = container_place(&st.storage_root, &id);
    let exists = req.mode == TransferMode::Copy && dst.root.is_dir() && !dst.commit_pending();
    let mode = if exists { TransferMode::Sync } else { req.mode };
    st.expected.lock().insert(
        req.ticket,
        Expected {
            peer,
            until: Instant::now() + EXPECT_FOR,
            mode,
            container_id: id,
        },
    );
    st.repin();
    Json(ExpectAnswer { exists }).into_response()
}

/// Whether a request asks to turn its connection into a transfer.
fn wants_upgrade(headers: &HeaderMap) -> bool {
    headers
        .get(header::UPGRADE)
        .is_some_and(|v| v.as_bytes() == TRANSFER_UPGRADE.as_bytes())
}

fn switching() -> Response {
    let mut resp = StatusCode::SWITCHING_PROTOCOLS.into_response();
    let h = resp.headers_mut();
    h.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    h.insert(header::UPGRADE, HeaderValue::from_static(TRANSFER_UPGRADE));
    resp
}

/// Runs one half of a transfer over the connection its request upgrades.
async fn over_connection(
    upgrade: hyper::upgrade::OnUpgrade,
    half: impl FnOnce(&mut dyn engine::Duplex) -> Result<engine::Summary, EngineError> + Send + 'static,
) -> Result<engine::Summary, EngineError> {
    let upgraded = upgrade.await.map_err(|e| EngineError::Io {
        context: "taking over the connection".into(),
        source: std::io::Error::other(e),
    })?;
    run_half(hyper_util::rt::TokioIo::new(upgraded), half).await
}

/// The target's half: a peer the control plane announced sends a tree.
async fn transfer(
    State(st): State<Arc<AgentState>>,
    Extension(peer): Extension<Peer>,
    mut req: Request,
) -> Response {
    if !wants_upgrade(req.headers()) {
        return refused(
            StatusCode::BAD_REQUEST,
            "a transfer upgrades its connection",
        );
    }
    let ticket = req
        .headers()
        .get(TICKET_HEADER)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    let expected = {
        let mut expected = st.expected.lock();
        match expected.get(&ticket) {
            Some(e) if e.peer == peer.fingerprint && e.until > Instant::now() => {
                expected.remove(&ticket)
            }
            _ => None,
        }
    };
    st.repin();
    let Some(expected) = expected else {
        return refused(
            StatusCode::FORBIDDEN,
            "no such transfer is expected from you",
        );
    };
    let upgrade = hyper::upgrade::on(&mut req);
    let dst = container_place(&st.storage_root, &expected.container_id);
    let lock = st.lock_of(&expected.container_id);
    tokio::spawn(async move {
        let _one = lock.lock().await;
        let mode = expected.mode;
        let result = over_connection(upgrade, move |stream| {
            let ctl = Control::new();
            match mode {
                TransferMode::Copy => engine::receive_copy_from(&dst, stream, &ctl),
                TransferMode::Sync => {
                    engine::receive_sync_from(&dst, stream, &identity::is_identity_path, &ctl)
                }
            }
        })
        .await;
        match result {
            Ok(s) => {
                tracing::info!(container = %expected.container_id, files = s.tree_files, "received")
            }
            Err(e) => {
                tracing::warn!(container = %expected.container_id, error = %e, "a transfer failed")
            }
        }
    });
    switching()
}

/// The place a source tree is read from: the container, or one of its snapshots.
fn source_place(root: &Path, id: &str, snapshot: Option<&str>) -> Result<Place, Refused> {
    let id = checked_id(id)?;
    Ok(match snapshot {
        Some(s) => snapshot_place(root, id, checked_id(s)?),
        None => container_place(root, id),
    })
}

/// The source's half, the other way round: the control plane's own server receives, over
/// this very connection.
async fn pull(
    State(st): State<Arc<AgentState>>,
    Query(q): Query<PullRequest>,
    mut req: Request,
) -> Response {
    if !wants_upgrade(req.headers()) {
        return refused(StatusCode::BAD_REQUEST, "a pull upgrades its connection");
    }
    let src = match source_place(&st.storage_root, &q.container_id, q.snapshot_id.as_deref()) {
        Ok(p) => p,
        Err(r) => return r.into_response(),
    };
    let upgrade = hyper::upgrade::on(&mut req);
    let (mode, target) = (q.mode, q.target_container_id.clone());
    tokio::spawn(async move {
        let result = over_connection(upgrade, move |stream| {
            let ctl = Control::new().with_bwlimit(q.bwlimit);
            send_half(&src, mode, &target, stream, &ctl)
        })
        .await;
        if let Err(e) = result {
            tracing::warn!(container = %q.container_id, error = %e, "a pull failed");
        }
    });
    switching()
}

/// Cancels a send when its answer is dropped (the control plane went away or cancelled).
struct CancelOnDrop(Control);

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        self.0.cancel();
    }
}

/// The source's half towards a peer: connect to the target's agent, send, and tell the
/// control plane how it goes (JSON lines: progress, then the end).
async fn send(State(st): State<Arc<AgentState>>, Json(req): Json<SendRequest>) -> Response {
    let src = match source_place(
        &st.storage_root,
        &req.container_id,
        req.snapshot_id.as_deref(),
    ) {
        Ok(p) => p,
        Err(r) => return r.into_response(),
    };
    let Some(to_fp) = Fingerprint::parse(&req.to_fingerprint) else {
        return refused(StatusCode::BAD_REQUEST, "a bad target fingerprint");
    };
    let (tx, rx) = tokio::sync::mpsc::channel::<SendLine>(64);
    let ctl = reporting(Control::new(), &tx).with_bwlimit(req.bwlimit);
    let guard = CancelOnDrop(ctl.clone());
    let client = tls::client(&st.me, to_fp, Duration::from_secs(3600));
    tokio::spawn(async move {
        let result = match client {
            Err(e) => Err(EngineError::Refused(e)),
            Ok(client) => {
                let request = client
                    .post(format!("https://{}/v1/transfer", req.to))
                    .header(TICKET_HEADER, &req.ticket);
                match open_transfer(request, &req.to).await {
                    Ok(upgraded) => {
                        let (mode, target) = (req.mode, req.target_container_id.clone());
                        run_half(upgraded, move |stream| {
                            send_half(&src, mode, &target, stream, &ctl)
                        })
                        .await
                    }
                    Err(e) => Err(e),
                }
            }
        };
        let _ = tx.send(ended(result, None)).await;
    });
    lines(rx, guard)
}

/// A copy or sync between two trees of this server, on this host (see `LocalRequest`),
/// told to the control plane as JSON lines (progress, then the end), as a send's.
async fn local(State(st): State<Arc<AgentState>>, Json(req): Json<LocalRequest>) -> Response {
    let src = match source_place(
        &st.storage_root,
        &req.container_id,
        req.snapshot_id.as_deref(),
    ) {
        Ok(p) => p,
        Err(r) => return r.into_response(),
    };
    let target = match checked_id(&req.target_container_id) {
        Ok(id) => id.to_string(),
        Err(r) => return r.into_response(),
    };
    let dst = container_place(&st.storage_root, &target);
    let (tx, rx) = tokio::sync::mpsc::channel::<SendLine>(64);
    // (A sync walks only the trees the change watch saw change, as on the control plane.)
    let ctl = Control::new().with_watch(engine::watch::Watch::shared());
    let ctl = reporting(ctl, &tx).with_bwlimit(req.bwlimit);
    let guard = CancelOnDrop(ctl.clone());
    let lock = st.lock_of(&target);
    tokio::spawn(async move {
        let _one = lock.lock().await;
        let place = dst.clone();
        let result = tokio::task::spawn_blocking(move || match req.mode {
            TransferMode::Copy => engine::resume_copy(&src, &dst, &[], &ctl),
            TransferMode::Sync => {
                engine::sync_keeping(&src, &dst, &identity::is_identity_path, &ctl)
            }
        })
        .await
        .unwrap_or_else(|e| Err(EngineError::Refused(format!("the engine stopped: {e}"))));
        let _ = tx.send(ended(result, Some(&place))).await;
    });
    lines(rx, guard)
}

/// `ctl`, its progress sent as lines to `tx` (dropped when the control plane reads slower).
fn reporting(ctl: Control, tx: &tokio::sync::mpsc::Sender<SendLine>) -> Control {
    let progress = tx.clone();
    ctl.with_progress(move |p| {
        let _ = progress.try_send(SendLine::Progress(p.clone()));
    })
}

/// How a transfer ended, as its last line.
fn ended(result: Result<engine::Summary, EngineError>, place: Option<&Place>) -> SendLine {
    match result {
        Ok(summary) => SendLine::Done(Box::new(summary)),
        Err(e) => engine_failure(&e, place),
    }
}

/// The lines of a transfer's answer as they come; the transfer is cancelled (`guard`) when
/// the answer is dropped.
fn lines(rx: tokio::sync::mpsc::Receiver<SendLine>, guard: CancelOnDrop) -> Response {
    let lines = futures::stream::unfold((rx, guard), |(mut rx, guard)| async move {
        let line = rx.recv().await?;
        let mut text = serde_json::to_vec(&line).unwrap_or_default();
        text.push(b'\n');
        Some((Ok::<_, std::convert::Infallible>(text), (rx, guard)))
    });
    Response::builder()
        .header(header::CONTENT_TYPE, "application/x-ndjson")
        .body(Body::from_stream(lines))
        .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
}

/// A new copy's identity, once its tree is here: the files it made.
async fn make_identity(
    State(st): State<Arc<AgentState>>,
    UrlPath(id): UrlPath<String>,
    Json(req): Json<NewIdentity>,
) -> Result<Response, Refused> {
    let id = checked_id(&id)?.to_string();
    let dst = container_place(&st.storage_root, &id);
    let lock = st.lock_of(&id);
    let _one = lock.lock().await;
    let files = blocking(StatusCode::CONFLICT, move || {
        let who = identity::Identity {
            hostname: &req.hostname,
            ssh_public_key: req.ssh_public_key.as_deref(),
        };
        identity::make_new_machine(&dst, &who).map(|made| made.written)
    })
    .await?;
    Ok(Json(files).into_response())
}

/// A deleted container's trees: its root, state, snapshots and runtime bundle.
async fn remove(
    State(st): State<Arc<AgentState>>,
    UrlPath(id): UrlPath<String>,
) -> Result<Response, Refused> {
    let id = checked_id(&id)?.to_string();
    let root = st.storage_root.clone();
    let lock = st.lock_of(&id);
    let _one = lock.lock().await;
    // Its process and network go first (the control plane stopped it already, normally).
    st.stop_if_running(&id).await;
    let place = container_place(&root, &id);
    removed(vec![
        place.root,
        place.state_dir,
        snapshots_dir(&root).join(&id),
        runtime_dir(&root, &id),
    ])
    .await
}

/// A snapshot: the container's tree frozen under `snapshot` (an id the control plane
/// made); the copy's summary (its files and bytes). A full disk is a 507.
async fn make_snapshot(
    State(st): State<Arc<AgentState>>,
    UrlPath((id, snapshot)): UrlPath<(String, String)>,
) -> Result<Response, Refused> {
    let (id, snapshot) = (
        checked_id(&id)?.to_string(),
        checked_id(&snapshot)?.to_string(),
    );
    let root = st.storage_root.clone();
    let lock = st.lock_of(&id);
    let _one = lock.lock().await;
    let summary = blocking(StatusCode::CONFLICT, move || {
        let (src, dst) = (
            container_place(&root, &id),
            snapshot_place(&root, &id, &snapshot),
        );
        let made = engine::copy(&src, &dst, &Control::new());
        if made.is_err() {
            // Nothing half-made is kept.
            let _ = engine::remove_trees(&[dst.root.clone(), dst.state_dir.clone()]);
        }
        made
    })
    .await?;
    Ok(Json(summary).into_response())
}

/// A snapshot's trees removed (one the control plane could not record).
async fn remove_snapshot(
    State(st): State<Arc<AgentState>>,
    UrlPath((id, snapshot)): UrlPath<(String, String)>,
) -> Result<Response, Refused> {
    let (id, snapshot) = (checked_id(&id)?, checked_id(&snapshot)?);
    let place = snapshot_place(&st.storage_root, id, snapshot);
    removed(vec![place.root, place.state_dir]).await
}

/// Removes trees: 204, or why not.
async fn removed(trees: Vec<std::path::PathBuf>) -> Result<Response, Refused> {
    blocking(StatusCode::CONFLICT, move || engine::remove_trees(&trees)).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// Engine work, off the async workers (it blocks); its failure as the agent refuses it:
/// `status`, or 507 when the disk is full.
pub(super) async fn blocking<T: Send + 'static>(
    status: StatusCode,
    work: impl FnOnce() -> Result<T, EngineError> + Send + 'static,
) -> Result<T, Refused> {
    match tokio::task::spawn_blocking(work).await {
        Ok(Ok(done)) => Ok(done),
        Ok(Err(EngineError::Io { source, .. }))
            if source.kind() == std::io::ErrorKind::StorageFull =>
        {
            Err(Refused(
                StatusCode::INSUFFICIENT_STORAGE,
                "not enough space on this host".into(),
            ))
        }
        Ok(Err(e)) => Err(Refused(status, e.to_string())),
        Err(_) => Err(Refused(
            StatusCode::INTERNAL_SERVER_ERROR,
            "it panicked".into(),
        )),
    }
}

/// The state of a source tree, read from metadata alone (see `engine::probe`): whether
/// it changed since a copy was synced from it.
async fn probe(
    State(st): State<Arc<AgentState>>,
    UrlPath(id): UrlPath<String>,
) -> Result<Response, Refused> {
    let place = container_place(&st.storage_root, checked_id(&id)?);
    let state = blocking(StatusCode::NOT_FOUND, move || engine::probe(&place)).await?;
    Ok(Json(state).into_response())
}
