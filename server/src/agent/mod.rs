//! `doppel agent`: a host that is one server of a control plane. It owns its storage root
//! (and, as the work moves here, its containers and engine state); the control plane keeps
//! the database, the API and the jobs, and calls it over mutual TLS. It answers only the
//! certificate of the control plane it joined.
//!
//! Its data dir holds `identity/` (its certificate and key), `agent.json` (whom it joined)
//! and `storage/` (its storage root).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{anyhow, bail, Context};
use axum::extract::State;
use axum::Json;
use serde::{Deserialize, Serialize};

use crate::remote::protocol::{
    parse_join_token, AgentStatus, ErrorAnswer, JoinAnswer, JoinRequest, PROTOCOL,
};
use crate::tls::{self, ClientPins, Fingerprint, Identity};

#[derive(Clone, Debug)]
pub struct AgentConfig {
    pub data_dir: PathBuf,
    /// Where it listens for the control plane (and, later, other agents).
    pub listen: SocketAddr,
    /// host:port the control plane should call, when not the address it joins from with
    /// the listen port.
    pub advertise: Option<String>,
    /// Do not run containers (`--no-runtime`): they stay stopped, saying why.
    pub no_runtime: bool,
}

impl AgentConfig {
    fn state_file(&self) -> PathBuf {
        self.data_dir.join("agent.json")
    }

    fn storage_root(&self) -> PathBuf {
        self.data_dir.join("storage")
    }

    fn identity(&self) -> anyhow::Result<Identity> {
        Identity::load_or_create(&self.data_dir.join("identity"), "doppel-agent")
            .context("this agent's certificate")
    }
}

/// What an agent keeps of its join.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Joined {
    pub server_id: String,
    pub server_name: String,
    /// The control plane's certificate fingerprint: the only client it answers.
    pub control_plane: String,
    /// Where the control plane calls it.
    pub address: String,
}

fn read_joined(path: &Path) -> anyhow::Result<Option<Joined>> {
    match std::fs::read(path) {
        Ok(bytes) => Ok(Some(
            serde_json::from_slice(&bytes)
                .with_context(|| format!("reading {}", path.display()))?,
        )),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
    }
}

/// `doppel agent join URL TOKEN`: joins the control plane at `url` (its agent port) with a
/// token from `doppel server add`, and records whom it joined.
pub async fn join(cfg: &AgentConfig, url: &str, token: &str) -> anyhow::Result<Joined> {
    if let Some(j) = read_joined(&cfg.state_file())? {
        bail!(
            "this agent has joined already, as server {:?}; to join again, remove {}",
            j.server_name,
            cfg.state_file().display()
        );
    }
    let (secret, control_plane) = parse_join_token(token).ok_or_else(|| {
        anyhow!("this is not a join token (doppel-join-1.<secret>.<fingerprint>); make one with `doppel server add NAME`")
    })?;
    std::fs::create_dir_all(&cfg.data_dir)
        .with_context(|| format!("creating {}", cfg.data_dir.display()))?;
    let me = cfg.identity()?;
    let client = tls::client(&me, control_plane, std::time::Duration::from_secs(15))
        .map_err(|e| anyhow!("{e}"))?;
    let base = url.trim_end_matches('/');
    let base = if base.contains("://") {
        base.to_string()
    } else {
        format!("https://{base}")
    };
    let resp = client
        .post(format!("{base}/v1/join"))
        .json(&JoinRequest {
            secret,
            address: cfg.advertise.clone(),
            port: cfg.listen.port(),
            protocol: PROTOCOL,
            version: env!("CARGO_PKG_VERSION").to_string(),
        })
        .send()
        .await
        .map_err(|e| {
            anyhow!(
                "cannot reach the control plane at {base}: {} (is it started with --agents-addr, and is this its token?)",
                crate::remote::describe(&e)
            )
        })?;
    if !resp.status().is_success() {
        let status = resp.status();
        let why = resp
            .json::<ErrorAnswer>()
            .await
            .map(|e| e.error)
            .unwrap_or_else(|_| status.to_string());
        bail!("the control plane refused the join: {why}");
    }
    let answer: JoinAnswer = resp.json().await.context("the control plane's answer")?;
    let joined = Joined {
        server_id: answer.server_id,
        server_name: answer.server_name,
        control_plane: control_plane.to_string(),
        address: answer.address,
    };
    let text = serde_json::to_vec_pretty(&joined)?;
    let tmp = cfg.data_dir.join(".agent.json.tmp");
    std::fs::write(&tmp, text).context("writing agent.json")?;
    std::fs::rename(&tmp, cfg.state_file()).context("writing agent.json")?;
    Ok(joined)
}

mod running;
mod work;

/// What the agent's handlers share.
pub(crate) struct AgentState {
    joined: Joined,
    storage_root: PathBuf,
    me: Identity,
    control_plane: Fingerprint,
    /// Who may connect: its control plane, and the peers of transfers it expects.
    pins: ClientPins,
    /// Transfers announced by the control plane, by ticket, until used or expired.
    expected: parking_lot::Mutex<std::collections::HashMap<String, work::Expected>>,
    /// One change at a time per container (a transfer, a delete, a start or stop): a
    /// retry after a lost connection waits for the attempt it replaces to end.
    busy: parking_lot::Mutex<std::collections::HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// This host's container runtime (or why there is none).
    runtime: Arc<crate::runtime::Runtime>,
    /// What its storage's filesystem does for copies within it (found at start).
    storage: app::model::StorageMode,
    /// The size of the image trees it lays down, if it does (found at start).
    image_trees: Option<u64>,
}

impl AgentState {
    fn lock_of(&self, container_id: &str) -> Arc<tokio::sync::Mutex<()>> {
        self.busy
            .lock()
            .entry(container_id.to_string())
            .or_default()
            .clone()
    }

    /// The pins: the control plane, and the peer of each transfer still expected.
    fn repin(&self) {
        let now = std::time::Instant::now();
        let mut expected = self.expected.lock();
        expected.retain(|_, e| e.until > now);
        let peers: Vec<Fingerprint> = expected.values().map(|e| e.peer).collect();
        self.pins
            .replace(std::iter::once(self.control_plane).chain(peers));
    }
}

/// `doppel agent`: serves the control plane it joined until `stop` resolves.
pub async fn run(
    cfg: &AgentConfig,
    stop: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let joined = read_joined(&cfg.state_file())?.ok_or_else(|| {
        anyhow!(
            "this agent has not joined a control plane yet: run `doppel agent join URL TOKEN` (no {})",
            cfg.state_file().display()
        )
    })?;
    let control_plane = Fingerprint::parse(&joined.control_plane)
        .ok_or_else(|| anyhow!("agent.json: a bad control plane fingerprint"))?;
    let me = cfg.identity()?;
    let storage_root = cfg.storage_root();
    std::fs::create_dir_all(crate::config::containers_dir(&storage_root))
        .with_context(|| format!("creating {}", storage_root.display()))?;
    crate::engine::image::tend_below(&cfg.data_dir, crate::config::image_tree_size());
    crate::engine::image_room::keep_below(&cfg.data_dir);
    let listener = tokio::net::TcpListener::bind(cfg.listen)
        .await
        .with_context(|| format!("listening on {}", cfg.listen))?;
    let pins = ClientPins::only([control_plane]);
    let tls = tls::server_config(&me, pins.clone())?;
    // Addresses are planned by the control plane; this network is not used to pick any.
    let network = crate::runtime::Ipv4Net::parse("10.88.0.0/16").expect("a valid network");
    let shim = std::env::current_exe().context("finding this program (it runs the shims)")?;
    let runtime =
        crate::runtime::Runtime::detect(&cfg.data_dir, shim, network, cfg.no_runtime).await;
    if let Some(why) = runtime.unavailable() {
        tracing::warn!(%why, "containers on this host will not run");
    }
    tracing::info!(
        server = %joined.server_name,
        listen = %cfg.listen,
        fingerprint = %me.fingerprint,
        "doppel agent serving its control plane"
    );
    let state = Arc::new(AgentState {
        joined,
        storage_root,
        me,
        control_plane,
        pins,
        expected: Default::default(),
        busy: Default::default(),
        runtime: Arc::new(runtime),
        storage: crate::service::storage_mode_of(crate::engine::fsx::kernel_copy_support(
            &cfg.storage_root(),
        )),
        image_trees: crate::service::image_trees_in(&cfg.storage_root()),
    });
    tls::serve(listener, tls, work::router(state), stop).await;
    Ok(())
}

async fn status(State(st): State<Arc<AgentState>>) -> Json<AgentStatus> {
    let root = st.storage_root.clone();
    let (free, total, containers) = tokio::task::spawn_blocking(move || {
        let (free, total) = crate::engine::fsx::free_space(&root).unwrap_or((0, 0));
        let containers = std::fs::read_dir(crate::config::containers_dir(&root))
            .map(|d| d.filter_map(Result::ok).count() as u64)
            .unwrap_or(0);
        (free, total, containers)
    })
    .await
    .unwrap_or((0, 0, 0));
    Json(AgentStatus {
        server_id: st.joined.server_id.clone(),
        version: env!("CARGO_PKG_VERSION").to_string(),
        protocol: PROTOCOL,
        free_bytes: free,
        total_bytes: total,
        containers,
        runtime: st.runtime.unavailable().map(str::to_string),
        storage: Some(st.storage),
        image_trees: st.image_trees,
        storage_root: st.storage_root.display().to_string(),
    })
}
