//! A real doppel on a random loopback port with its own temporary data dir.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::Arc;

use doppel::config::DataConfig;
use doppel::serve::{self, RuntimeConfig, ServeConfig};
use doppel::service::Service;

#[path = "process.rs"]
pub mod process;

#[path = "lab.rs"]
pub mod lab;

pub use process::test_network;

/// The URL path of the console's server function named `f` (its registered path ends
/// with the name and a hash).
pub fn server_fn_path(f: &str) -> String {
    leptos::server_fn::axum::server_fn_paths()
        .map(|(p, _)| p)
        .find(|p| p.rsplit('/').next().unwrap().starts_with(f))
        .unwrap_or_else(|| panic!("server function {f}"))
        .to_string()
}

pub struct TestServer {
    pub base: String,
    pub service: Arc<Service>,
    pub admin_token: String,
    pub alice_token: String,
    pub admin_password: String,
    pub data_dir: tempfile::TempDir,
}

impl TestServer {
    pub async fn start() -> TestServer {
        let data_dir = tempfile::tempdir().unwrap();
        let cfg = ServeConfig {
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            data: DataConfig {
                data_dir: data_dir.path().to_path_buf(),
                database_url: None,
            },
            demo: true,
            site_root: data_dir.path().join("site"),
            limits: Default::default(),
            conn: Default::default(),
            runtime: RuntimeConfig {
                disabled: false,
                network: test_network(),
                shim_exe: env!("CARGO_BIN_EXE_doppel").into(),
            },
            agents_addr: None,
        };
        let prepared = serve::prepare(&cfg).await.expect("doppel starts");
        let admin_password = prepared
            .admin_password
            .clone()
            .expect("first start creates the admin");
        let listener = tokio::net::TcpListener::bind(cfg.addr).await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move {
            let limits = doppel::serve::ConnLimits::default();
            doppel::serve::serve_http(listener, prepared.router, &limits, std::future::pending())
                .await;
        });
        let db = prepared.service.db();
        let admin_token = doppel::auth::create_token(db, "admin", "test")
            .await
            .unwrap();
        let alice_token = doppel::auth::create_token(db, "alice", "test")
            .await
            .unwrap();
        TestServer {
            base,
            service: prepared.service,
            admin_token,
            alice_token,
            admin_password,
            data_dir,
        }
    }

    /// Waits until the container has this status (or panics after `secs`).
    pub async fn wait_status(&self, id: &str, want: &str, secs: u64) -> serde_json::Value {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(secs);
        loop {
            let (_, c) = self
                .get(&format!("/api/v1/containers/{id}"), &self.admin_token)
                .await;
            if c["status"] == want {
                return c;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "container {id} is not {want} after {secs} s: {c}"
            );
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
    }

    /// Waits for a job's end (its id, or its `url`) and returns it.
    pub async fn wait_job(&self, id_or_url: &str) -> serde_json::Value {
        let path = if id_or_url.starts_with('/') {
            id_or_url.to_string()
        } else {
            format!("/api/v1/jobs/{id_or_url}")
        };
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        loop {
            let (st, job) = self.get(&path, &self.admin_token).await;
            assert_eq!(st, 200, "{job}");
            if ["succeeded", "failed", "cancelled"].contains(&job["status"].as_str().unwrap()) {
                return job;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "job {id_or_url} did not finish: {job}"
            );
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    }

    /// The id of the project with this name.
    pub async fn project_id(&self, name: &str) -> String {
        let (_, body) = self.get("/api/v1/projects", &self.admin_token).await;
        body["projects"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == name)
            .unwrap_or_else(|| panic!("no project {name}"))["id"]
            .as_str()
            .unwrap()
            .to_string()
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    /// A client that does not follow redirects, so tests see them.
    pub fn client() -> reqwest::Client {
        reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap()
    }

    pub async fn get(&self, path: &str, token: &str) -> (u16, serde_json::Value) {
        let resp = Self::client()
            .get(self.url(path))
            .bearer_auth(token)
            .send()
            .await
            .unwrap();
        let status = resp.status().as_u16();
        let body = resp.json().await.unwrap_or(serde_json::Value::Null);
        (status, body)
    }

    /// A console page as the holder of session `cookie` gets it: its status and HTML.
    pub async fn page(&self, path: &str, cookie: &str) -> (u16, String) {
        let resp = Self::client()
            .get(self.url(path))
            .header("cookie", cookie)
            .send()
            .await
            .unwrap();
        let status = resp.status().as_u16();
        (status, resp.text().await.unwrap())
    }

    /// Any request with a token and an optional JSON body: its status and JSON answer.
    pub async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        token: &str,
        body: Option<serde_json::Value>,
    ) -> (u16, serde_json::Value) {
        let mut req = Self::client()
            .request(method, self.url(path))
            .bearer_auth(token);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.unwrap();
        let status = resp.status().as_u16();
        (status, resp.json().await.unwrap_or(serde_json::Value::Null))
    }

    /// A user the admin makes through the API: their password (shown once) and an API
    /// token of theirs.
    pub async fn user_with_token(&self, name: &str) -> (String, String) {
        let (st, made) = self
            .call(
                reqwest::Method::POST,
                "/api/v1/users",
                &self.admin_token,
                Some(serde_json::json!({"name": name})),
            )
            .await;
        assert_eq!(st, 201, "{made}");
        let token = doppel::auth::create_token(self.service.db(), name, "t")
            .await
            .unwrap();
        (made["password"].as_str().unwrap().to_string(), token)
    }

    /// Logs in through the console's form: the session cookie (`name=value`).
    pub async fn session(&self, user: &str, password: &str) -> String {
        let resp = Self::client()
            .post(self.url("/auth/login"))
            .form(&[("username", user), ("password", password)])
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 303);
        let set_cookie = resp.headers()["set-cookie"].to_str().unwrap();
        set_cookie.split(';').next().unwrap().to_string()
    }

    /// Every container the admin sees.
    pub async fn containers(&self) -> Vec<serde_json::Value> {
        let (_, body) = self.get("/api/v1/containers", &self.admin_token).await;
        body["containers"].as_array().unwrap().clone()
    }

    /// The id of the container with this name (as the admin sees it).
    pub async fn container_id(&self, name: &str) -> String {
        self.containers()
            .await
            .iter()
            .find(|c| c["name"] == name)
            .unwrap_or_else(|| panic!("no container {name}"))["id"]
            .as_str()
            .unwrap()
            .to_string()
    }
}

/// Whatever a test's doppel ran on this host (containers, namespaces, veths, bridges) goes
/// with it, whether the test passed or not. A job of the test may still start a container
/// after this (the test's runtime goes on a moment longer), so the data dir is kept, and
/// purged again when the test binary exits.
impl Drop for TestServer {
    fn drop(&mut self) {
        doppel::runtime::purge(self.data_dir.path());
        let dir = std::mem::replace(&mut self.data_dir, tempfile::tempdir().unwrap());
        process::purge_at_exit(dir);
    }
}
