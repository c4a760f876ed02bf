//! The real `doppel` binary, started as an operator would: for the tests and benchmarks
//! that run it as a process (`restart.rs`, `cli.rs`, `benches/load.rs`).
#![allow(dead_code)]

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// `doppel --data-dir DATA`, ignoring any database URL from the environment. The binary is
/// this build's, or `DOPPEL_LOAD_BIN` (`scripts/load-compare.sh` runs `make load` against
/// several builds in turn).
pub fn doppel(data: &Path) -> Command {
    let bin =
        std::env::var_os("DOPPEL_LOAD_BIN").unwrap_or_else(|| env!("CARGO_BIN_EXE_doppel").into());
    let mut c = Command::new(bin);
    c.arg("--data-dir")
        .arg(data)
        .env_remove("DOPPEL_DATABASE_URL");
    c
}

/// `doppel serve` on a loopback port, with or without the demo data.
pub fn serve(data: &Path, port: u16, demo: bool) -> Child {
    let mut c = doppel(data);
    c.args(["serve", "--addr", &format!("127.0.0.1:{port}")]);
    if !demo {
        c.arg("--no-demo");
    }
    c.stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

/// Waits until the server at `base` answers its health check.
pub async fn wait_up(client: &reqwest::Client, base: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while client.get(format!("{base}/healthz")).send().await.is_err() {
        assert!(Instant::now() < deadline, "doppel did not start");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

pub async fn get_json(
    client: &reqwest::Client,
    url: impl reqwest::IntoUrl,
    token: &str,
) -> serde_json::Value {
    client
        .get(url)
        .bearer_auth(token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

/// A project "p" and a server "s1" in the database of `data`: (project id, server id).
pub async fn project_and_server(db: &doppel::store::Db, data: &Path) -> (String, String) {
    let project = doppel::service::inventory::create_project(db, "p", "")
        .await
        .unwrap();
    let config = doppel::config::DataConfig {
        data_dir: data.to_path_buf(),
        database_url: None,
    };
    let server = doppel::service::inventory::create_server(db, &config, "s1", "")
        .await
        .unwrap();
    (project, server)
}
