//! `doppel serve`: open the data, seed the demo on a first start, serve HTTP until a signal.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use leptos::prelude::LeptosOptions;

use crate::config::DataConfig;
pub use crate::http::listener::{serve as serve_http, ConnLimits};
use crate::http::{self, AppState};
use crate::jobs::Limits;
use crate::lifecycle::Lifecycle;
use crate::remote::Agents;
use crate::runtime::{Ipv4Net, Runtime};
use crate::service::Service;
use crate::tls::{self, ClientPins, Identity};
use crate::{auth, seed, store};

#[derive(Clone, Debug)]
pub struct ServeConfig {
    pub addr: SocketAddr,
    pub data: DataConfig,
    /// Seed demo data when the database has no projects.
    pub demo: bool,
    /// Where the built console (JS, WASM, CSS) lives; `make build` writes it to target/site.
    pub site_root: PathBuf,
    /// How many jobs run at once.
    pub limits: Limits,
    /// Header timeout and connection cap.
    pub conn: ConnLimits,
    /// Running containers: runc, networks.
    pub runtime: RuntimeConfig,
    /// `--agents-addr`: where hosts join as servers (`doppel agent join`), over TLS with
    /// this control plane's certificate. None: no host can join.
    pub agents_addr: Option<SocketAddr>,
}

/// How containers run here.
#[derive(Clone, Debug)]
pub struct RuntimeConfig {
    /// `--no-runtime`: containers never start (they stay `stopped`, saying why).
    pub disabled: bool,
    /// The addresses containers' networks are taken from (`--container-network`), a /24
    /// for each network.
    pub network: Ipv4Net,
    /// The binary that runs `doppel shim` (this one, normally).
    pub shim_exe: PathBuf,
}

impl RuntimeConfig {
    pub const DEFAULT_NETWORK: &'static str = "10.88.0.0/16";

    /// Containers run with the default network, through this very binary's shim.
    pub fn this_binary() -> RuntimeConfig {
        RuntimeConfig {
            disabled: false,
            network: Ipv4Net::parse(Self::DEFAULT_NETWORK).expect("a valid network"),
            shim_exe: std::env::current_exe().unwrap_or_else(|_| "doppel".into()),
        }
    }
}

/// What a started (but not yet listening) doppel consists of.
pub struct Prepared {
    pub router: axum::Router,
    /// The agent port's routes (joining).
    pub agents_router: axum::Router,
    pub service: Arc<Service>,
    /// The first admin's password, when this start created it.
    pub admin_password: Option<String>,
}

pub fn leptos_options(cfg: &ServeConfig) -> LeptosOptions {
    // `make build` (and `cargo leptos watch`) set LEPTOS_* at build time; the builder's
    // values are what a plain `doppel serve` needs.
    let env = match std::env::var("LEPTOS_ENV").as_deref() {
        Ok("DEV") | Ok("dev") => leptos::config::Env::DEV,
        _ => leptos::config::Env::PROD,
    };
    let reload_port = std::env::var("LEPTOS_RELOAD_PORT")
        .ok()
        .and_then(|p| p.parse().ok())
        .unwrap_or(3001);
    LeptosOptions::builder()
        .output_name("doppel")
        .site_root(cfg.site_root.display().to_string())
        .site_pkg_dir("pkg")
        .site_addr(cfg.addr)
        .env(env)
        .reload_port(reload_port)
        .build()
}

pub async fn prepare(cfg: &ServeConfig) -> anyhow::Result<Prepared> {
    std::fs::create_dir_all(&cfg.data.data_dir)?;
    crate::engine::image::tend_below(&cfg.data.data_dir, crate::config::image_tree_size());
    let pool = store::connect(&cfg.data.database_url()).await?;
    let admin_password = auth::bootstrap_admin(&pool).await?;
    // Before anything uses a tree: a conversion to an image tree that was interrupted.
    crate::service::convert::recover_conversions(&pool).await?;
    let runtime = Runtime::detect(
        &cfg.data.data_dir,
        cfg.runtime.shim_exe.clone(),
        cfg.runtime.network,
        cfg.runtime.disabled,
    )
    .await;
    if let Some(why) = runtime.unavailable() {
        tracing::warn!("containers cannot run here: {why}; they stay stopped");
    }
    let identity = Identity::load_or_create(&cfg.data.identity_dir(), "doppel-control-plane")
        .map_err(|e| anyhow::anyhow!("this control plane's certificate: {e}"))?;
    let agents = Agents::new(identity);
    let lifecycle = Lifecycle::new(pool.clone(), Arc::new(runtime), agents.clone());
    let service = Arc::new(Service::new(
        pool.clone(),
        cfg.limits,
        lifecycle,
        agents.clone(),
    ));
    service.load_agents().await?;
    agents.spawn_monitor();
    service.watch_containers().await?;
    if cfg.demo {
        if let Some(to_start) = seed::seed_if_empty(&pool, &cfg.data, cfg.runtime.network).await? {
            tracing::info!("seeded demo data (start with --no-demo to skip this)");
            for id in to_start {
                service.start_unattended(&id).await?;
            }
        }
    }
    let resumed = service.resume_jobs().await?;
    if resumed > 0 {
        tracing::info!(resumed, "resumed jobs interrupted by the last stop");
    }
    let router = http::router(AppState::new(
        service.clone(),
        leptos_options(cfg),
        cfg.conn.streams_per_user,
    ));
    Ok(Prepared {
        router,
        agents_router: http::agents::router(service.clone()),
        service,
        admin_password,
    })
}

pub async fn run(cfg: ServeConfig) -> anyhow::Result<()> {
    let prepared = prepare(&cfg).await?;
    // (For the life of the process: here, not in `prepare`, which tests call for each
    // server they start in theirs.)
    crate::engine::image_room::keep_below(&cfg.data.data_dir);
    let listener = tokio::net::TcpListener::bind(cfg.addr)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {}: {e}", cfg.addr))?;
    let url = format!("http://{}", listener.local_addr()?);
    if let Some(password) = &prepared.admin_password {
        println!(
            "\n  doppel first start: log in at {url}/login\n    user:     {}\n    password: {password}\n  This password is shown once. Change it with: doppel user set-password {}\n",
            auth::ADMIN_USER,
            auth::ADMIN_USER
        );
    }
    if !cfg.site_root.join("pkg").exists() {
        tracing::warn!(site_root = %cfg.site_root.display(), "no built console here; run `make run` (or make build) first");
    }
    if let Some(addr) = cfg.agents_addr {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|e| anyhow::anyhow!("cannot listen for agents on {addr}: {e}"))?;
        // Any client certificate: a joining host proves it holds its key; its token says
        // whether it may join.
        let tls = tls::server_config(prepared.service.identity(), ClientPins::Any)?;
        tracing::info!(%addr, fingerprint = %prepared.service.identity().fingerprint, "hosts join at https://{addr}");
        prepared.service.listen_for_joins_at(listener.local_addr()?);
        tokio::spawn(tls::serve(
            listener,
            tls,
            prepared.agents_router.clone(),
            shutdown_signal(),
        ));
    }
    tracing::info!(%url, data_dir = %cfg.data.data_dir.display(), "doppel listening");
    // Stopping ends every event stream first: their connections then close cleanly,
    // without waiting out the grace period.
    let events = prepared.service.events().clone();
    let stop = async move {
        shutdown_signal().await;
        events.close();
    };
    http::listener::serve(listener, prepared.router, &cfg.conn, stop).await;
    prepared.service.close().await;
    tracing::info!("doppel stopped");
    Ok(())
}

/// Ctrl-C or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
    tracing::info!("shutting down");
}
