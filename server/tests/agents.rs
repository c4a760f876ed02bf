//! Servers on other hosts, across a real network: a control plane and agents, each its own
//! `doppel` process in its own network namespace (tests/common/lab.rs). Joining with a
//! one-time token, the pinned certificates both ways, and a server's state as the control
//! plane sees it (online, offline within seconds, online again).

mod common;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::lab::{Lab, Running};
use doppel::engine::image;
use serde_json::{json, Value};

fn doppel() -> String {
    env!("CARGO_BIN_EXE_doppel").to_string()
}

/// `doppel serve` in the lab's host `cp` (its data in `dir/cp`), once it answers.
async fn cp_process(lab: &Lab, dir: &Path, demo: bool, wait: u32, log: &str) -> Running {
    let addr = lab.addr("cp");
    let mut c = lab.command("cp", doppel());
    c.arg("--data-dir")
        .arg(dir.join("cp"))
        .args(["serve", "--no-runtime", "--server-wait", &wait.to_string()])
        .args(if demo { &[][..] } else { &["--no-demo"][..] })
        .args(["--addr", &format!("{addr}:3000")])
        .args(["--agents-addr", &format!("{addr}:7443")])
        .env_remove("DOPPEL_DATABASE_URL");
    let process = Running::spawn(c, &dir.join(log));
    common::process::wait_up(
        &common::TestServer::client(),
        &format!("http://{addr}:3000"),
    )
    .await;
    process
}

/// A control plane in the lab's host `cp`: the console on :3000, the agent port on :7443.
struct ControlPlane {
    process: Running,
    base: String,
    join_url: String,
    token: String,
    data: std::path::PathBuf,
}

async fn control_plane(lab: &Lab, dir: &Path) -> ControlPlane {
    control_plane_with(lab, dir, false, 4).await
}

/// With `demo`, the demo's projects and containers (on this host's servers). Jobs wait
/// `wait` seconds for an offline server.
async fn control_plane_with(lab: &Lab, dir: &Path, demo: bool, wait: u32) -> ControlPlane {
    let data = dir.join("cp");
    let addr = lab.addr("cp");
    let process = cp_process(lab, dir, demo, wait, "cp.log").await;
    let base = format!("http://{addr}:3000");
    let out = Command::new(doppel())
        .arg("--data-dir")
        .arg(&data)
        .args(["token", "create", "--user", "admin"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    ControlPlane {
        process,
        base,
        join_url: format!("https://{addr}:7443"),
        token: String::from_utf8(out.stdout).unwrap().trim().to_string(),
        data,
    }
}

impl ControlPlane {
    async fn call(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> (u16, Value) {
        let mut req = common::TestServer::client()
            .request(method, format!("{}/api/v1{path}", self.base))
            .bearer_auth(&self.token);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.unwrap();
        let status = resp.status().as_u16();
        (status, resp.json().await.unwrap_or(Value::Null))
    }

    async fn server(&self, name: &str) -> Value {
        let (st, list) = self.call(reqwest::Method::GET, "/servers", None).await;
        assert_eq!(st, 200, "{list}");
        list["servers"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["name"] == name)
            .cloned()
            .unwrap_or_else(|| panic!("no server {name}: {list}"))
    }

    /// Waits until the server is in this state; its last view.
    async fn wait_state(&self, name: &str, state: &str, within: Duration) -> Value {
        let deadline = Instant::now() + within;
        loop {
            let s = self.server(name).await;
            if s["state"] == state {
                return s;
            }
            assert!(
                Instant::now() < deadline,
                "{name} not {state} within {within:?}: {s}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn add_server(&self, name: &str) -> String {
        let (st, added) = self
            .call(
                reqwest::Method::POST,
                "/servers",
                Some(json!({"name": name})),
            )
            .await;
        assert_eq!(st, 201, "{added}");
        assert_eq!(added["server"]["state"], "pending", "{added}");
        let token = added["join_token"].as_str().unwrap().to_string();
        // The whole command, where this control plane listens for joins.
        let command = added["join_command"].as_str().unwrap();
        assert!(
            command.starts_with("doppel agent join https://") && command.ends_with(&token),
            "{added}"
        );
        assert!(added.get("warning").is_none(), "{added}");
        token
    }
}

/// `doppel agent [join URL TOKEN]` on the lab's host, listening on :7700. Its containers
/// (they run with its host's runtime) are purged when it is dropped, and again when the
/// test binary exits; killing it leaves them running, as a real kill does.
fn agent(lab: &Lab, host: &str, data: &Path, join: Option<(&str, &str)>, log: &Path) -> Agent {
    common::process::purge_path_at_exit(data);
    Agent {
        process: agent_process(lab, host, data, join, log),
        data: data.to_path_buf(),
    }
}

fn agent_process(
    lab: &Lab,
    host: &str,
    data: &Path,
    join: Option<(&str, &str)>,
    log: &Path,
) -> Running {
    let mut c = lab.host_command(host, doppel());
    c.arg("--data-dir")
        .arg(data)
        .args(["agent", "--listen", &format!("{}:7700", lab.addr(host))]);
    if let Some((url, token)) = join {
        c.args(["join", url, token]);
    }
    Running::spawn(c, log)
}

/// A control plane with the demo (jobs wait `wait` s for an offline server) and an agent
/// joined, online, for each of `hosts` (its data dir `dir/<host>`).
async fn with_agents(
    lab: &Lab,
    dir: &Path,
    wait: u32,
    hosts: &[&str],
) -> (ControlPlane, Vec<Agent>) {
    let cp = control_plane_with(lab, dir, true, wait).await;
    let mut agents = Vec::new();
    for host in hosts {
        let token = cp.add_server(host).await;
        agents.push(agent(
            lab,
            host,
            &dir.join(host),
            Some((&cp.join_url, &token)),
            &dir.join(format!("{host}.log")),
        ));
        cp.wait_state(host, "online", Duration::from_secs(20)).await;
    }
    (cp, agents)
}

/// [`with_agents`] with one agent, b: the control plane, b's data dir, and b.
async fn with_agent_b(
    lab: &Lab,
    dir: &Path,
    wait: u32,
) -> (ControlPlane, std::path::PathBuf, Agent) {
    let (cp, mut agents) = with_agents(lab, dir, wait, &["b"]).await;
    (cp, dir.join("b"), agents.remove(0))
}

struct Agent {
    process: Running,
    data: std::path::PathBuf,
}

impl Agent {
    fn kill(&mut self) {
        self.process.kill();
    }

    /// Started again (after a kill), its containers as they are.
    fn restart(&mut self, lab: &Lab, host: &str, log: &Path) {
        self.process.kill();
        self.process = agent_process(lab, host, &self.data, None, log);
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.process.kill();
        doppel::runtime::purge(&self.data);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_joins_once_and_its_state_is_seen_within_seconds() {
    let lab = Lab::new(&["cp", "b"]);
    let dir = tempfile::tempdir().unwrap();
    let cp = control_plane(&lab, dir.path()).await;
    let token = cp.add_server("b").await;
    assert!(token.starts_with("doppel-join-1."), "{token}");

    // The agent joins and serves: online, with what it reports.
    let b_data = dir.path().join("b");
    let mut b = agent(
        &lab,
        "b",
        &b_data,
        Some((&cp.join_url, &token)),
        &dir.path().join("b.log"),
    );
    let seen = cp.wait_state("b", "online", Duration::from_secs(20)).await;
    assert_eq!(seen["kind"], "agent", "{seen}");
    assert_eq!(
        seen["agent_address"],
        format!("{}:7700", lab.addr("b")),
        "{seen}"
    );
    assert_eq!(seen["version"], env!("CARGO_PKG_VERSION"), "{seen}");
    assert!(
        seen["storage"].is_string(),
        "what its filesystem does: {seen}"
    );
    assert!(seen["free_bytes"].as_u64().unwrap() > 0, "{seen}");
    assert_eq!(seen["container_count"], 0, "{seen}");
    let b_identity =
        doppel::tls::Identity::load_or_create(&b_data.join("identity"), "unused").unwrap();
    assert_eq!(
        seen["agent_fingerprint"],
        b_identity.fingerprint.to_string(),
        "the pinned certificate is the agent's"
    );

    // The token is spent: another host cannot join with it.
    let again = lab
        .command("b", doppel())
        .arg("--data-dir")
        .arg(dir.path().join("b2"))
        .args([
            "agent",
            "--listen",
            &format!("{}:7701", lab.addr("b")),
            "join",
            &cp.join_url,
            &token,
        ])
        .output()
        .unwrap();
    assert!(!again.status.success());
    let err = String::from_utf8_lossy(&again.stderr);
    assert!(err.contains("unknown, used or expired"), "{err}");

    // Killed: offline within seconds, with a reason; started again: online.
    b.kill();
    let t = Instant::now();
    let off = cp.wait_state("b", "offline", Duration::from_secs(10)).await;
    assert!(
        t.elapsed() < Duration::from_secs(6),
        "offline after {:?}",
        t.elapsed()
    );
    assert!(
        off["state_reason"].as_str().is_some_and(|r| !r.is_empty()),
        "{off}"
    );
    assert!(off["last_seen_at"].as_i64().is_some(), "{off}");
    let _b = agent(&lab, "b", &b_data, None, &dir.path().join("b-again.log"));
    cp.wait_state("b", "online", Duration::from_secs(20)).await;

    // The link cut: offline; restored: online.
    lab.cut("b");
    cp.wait_state("b", "offline", Duration::from_secs(10)).await;
    lab.restore("b");
    cp.wait_state("b", "online", Duration::from_secs(20)).await;

    // Both joins are in the audit log, the refused one too.
    let (_, audit) = cp
        .call(reqwest::Method::GET, "/audit?action=server.join", None)
        .await;
    let results: Vec<&str> = audit["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["result"].as_str().unwrap())
        .collect();
    assert_eq!(results.len(), 2, "{audit}");
    assert!(
        results.contains(&"ok") && results.contains(&"refused"),
        "{audit}"
    );
    drop(cp);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_pinned_certificates_are_answered_both_ways() {
    let lab = Lab::new(&["cp", "b", "mallory"]);
    let dir = tempfile::tempdir().unwrap();
    let cp = control_plane(&lab, dir.path()).await;
    let token = cp.add_server("b").await;
    let b_data = dir.path().join("b");
    let b = agent(
        &lab,
        "b",
        &b_data,
        Some((&cp.join_url, &token)),
        &dir.path().join("b.log"),
    );
    cp.wait_state("b", "online", Duration::from_secs(20)).await;
    let b_fp = doppel::tls::Identity::load_or_create(&b_data.join("identity"), "unused")
        .unwrap()
        .fingerprint;

    // An agent answers no one but its control plane: a client with another certificate
    // (that even pins the agent's correctly) is refused in the handshake.
    let stranger =
        doppel::tls::Identity::load_or_create(&dir.path().join("stranger"), "x").unwrap();
    let client = doppel::tls::client(&stranger, b_fp, Duration::from_secs(5)).unwrap();
    let refused = client
        .get(format!("https://{}:7700/v1/status", lab.addr("b")))
        .send()
        .await;
    assert!(
        refused.is_err(),
        "the agent answered a stranger: {refused:?}"
    );

    // A forged agent at b's address (another key, b's agent.json copied) is refused by
    // the control plane: b stays offline, and says why.
    drop(b);
    let forged = dir.path().join("forged");
    std::fs::create_dir_all(&forged).unwrap();
    std::fs::copy(b_data.join("agent.json"), forged.join("agent.json")).unwrap();
    let _forged = agent(&lab, "b", &forged, None, &dir.path().join("forged.log"));
    tokio::time::sleep(Duration::from_secs(5)).await;
    let s = cp.wait_state("b", "offline", Duration::from_secs(1)).await;
    let reason = s["state_reason"]
        .as_str()
        .unwrap_or_default()
        .to_lowercase();
    assert!(reason.contains("certificate"), "{s}");

    // A token's control plane fingerprint is checked before the secret is sent: a token
    // altered to name another control plane does not join.
    let token2 = cp.add_server("c").await;
    let (secret_part, _) = token2.rsplit_once('.').unwrap();
    let wrong = format!("{secret_part}.{}", "00".repeat(32));
    let out = lab
        .command("mallory", doppel())
        .arg("--data-dir")
        .arg(dir.path().join("mallory"))
        .args([
            "agent",
            "--listen",
            &format!("{}:7700", lab.addr("mallory")),
            "join",
            &cp.join_url,
            &wrong,
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr).to_lowercase();
    assert!(err.contains("certificate"), "{err}");
    // And c still waits for its host, whose real token still works.
    assert_eq!(cp.server("c").await["state"], "pending");
    let _c = agent(
        &lab,
        "mallory",
        &dir.path().join("c"),
        Some((&cp.join_url, &token2)),
        &dir.path().join("c.log"),
    );
    cp.wait_state("c", "online", Duration::from_secs(20)).await;
    let _ = cp.data.as_path();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn adding_a_server_is_for_platform_admins_and_names_are_checked() {
    let s = common::TestServer::start().await;
    let (st, e) = s
        .call(
            reqwest::Method::POST,
            "/api/v1/servers",
            &s.alice_token,
            Some(json!({"name": "x"})),
        )
        .await;
    assert_eq!(st, 403, "{e}");
    let (st, e) = s
        .call(
            reqwest::Method::POST,
            "/api/v1/servers",
            &s.admin_token,
            Some(json!({"name": "no spaces"})),
        )
        .await;
    assert_eq!(
        (st, e["error"]["field"].as_str()),
        (422, Some("name")),
        "{e}"
    );
    let (st, added) = s
        .call(
            reqwest::Method::POST,
            "/api/v1/servers",
            &s.admin_token,
            Some(json!({"name": "far"})),
        )
        .await;
    assert_eq!(st, 201, "{added}");
    let (st, e) = s
        .call(
            reqwest::Method::POST,
            "/api/v1/servers",
            &s.admin_token,
            Some(json!({"name": "far"})),
        )
        .await;
    assert_eq!(st, 409, "{e}");
    // Nothing is copied onto it before its host joins: a clear answer, and no tree written
    // anywhere on this host.
    let web_app = s.container_id("web-app").await;
    let project = s.project_id("web-platform").await;
    let far_id = added["server"]["id"].as_str().unwrap();
    let (st, e) = s
        .call(
            reqwest::Method::POST,
            &format!("/api/v1/containers/{web_app}/copy"),
            &s.admin_token,
            Some(json!({"target_project_id": project, "target_server_id": far_id})),
        )
        .await;
    assert_eq!(
        (st, e["error"]["field"].as_str()),
        (409, Some("target_server_id")),
        "{e}"
    );
    assert!(
        e["error"]["message"]
            .as_str()
            .unwrap()
            .contains("no host yet"),
        "{e}"
    );
    // Everyone sees it pending; only platform admins see where servers are.
    let (_, list) = s.get("/api/v1/servers", &s.alice_token).await;
    let far = list["servers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["name"] == "far")
        .unwrap();
    assert_eq!(far["state"], "pending", "{far}");
    assert!(
        list["servers"]
            .as_array()
            .unwrap()
            .iter()
            .all(|x| x.get("storage_root").is_none()),
        "{list}"
    );
    let (_, list) = s.get("/api/v1/servers", &s.admin_token).await;
    let embedded = list["servers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["kind"] == "embedded")
        .unwrap();
    assert_eq!(embedded["state"], "online", "{embedded}");
    assert!(
        embedded["storage_root"].is_string() && embedded["free_bytes"].as_u64().unwrap() > 0,
        "{embedded}"
    );
}

/// Every regular file and symlink under `root` (relative path -> content or link target,
/// and mode), the copy's own identity files left out.
fn tree(root: &Path) -> std::collections::BTreeMap<String, (Vec<u8>, u32)> {
    use std::os::unix::fs::PermissionsExt;
    let mut out = std::collections::BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            let rel = path
                .strip_prefix(root)
                .unwrap()
                .to_string_lossy()
                .to_string();
            if doppel::engine::identity::is_identity_path(rel.as_bytes()) {
                continue;
            }
            let meta = std::fs::symlink_metadata(&path).unwrap();
            let mode = meta.permissions().mode();
            if meta.is_dir() {
                stack.push(path);
                out.insert(rel, (Vec::new(), mode));
            } else if meta.file_type().is_symlink() {
                let target = std::fs::read_link(&path).unwrap();
                out.insert(rel, (target.as_os_str().as_encoded_bytes().to_vec(), mode));
            } else if meta.is_file() {
                out.insert(rel, (std::fs::read(&path).unwrap(), mode));
            }
        }
    }
    out
}

fn assert_same(a: &Path, b: &Path) {
    let (ta, tb) = (tree(a), tree(b));
    assert!(!ta.is_empty(), "{} is empty", a.display());
    let differing: Vec<&String> = ta
        .keys()
        .chain(tb.keys())
        .filter(|k| ta.get(*k) != tb.get(*k))
        .take(5)
        .collect();
    assert!(
        differing.is_empty(),
        "{} and {} differ at {differing:?}",
        a.display(),
        b.display()
    );
}

impl ControlPlane {
    async fn id_of(&self, name: &str) -> String {
        let (_, list) = self.call(reqwest::Method::GET, "/containers", None).await;
        list["containers"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["name"] == name)
            .unwrap_or_else(|| panic!("no container {name}: {list}"))["id"]
            .as_str()
            .unwrap()
            .to_string()
    }

    async fn server_id(&self, name: &str) -> String {
        self.server(name).await["id"].as_str().unwrap().to_string()
    }

    /// A job's end (it must succeed).
    async fn succeeded(&self, job: &Value) -> Value {
        let id = job["id"].as_str().unwrap();
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let (_, j) = self
                .call(reqwest::Method::GET, &format!("/jobs/{id}"), None)
                .await;
            match j["status"].as_str().unwrap() {
                "succeeded" => return j,
                "failed" | "cancelled" => panic!("job failed: {j}"),
                _ => {}
            }
            assert!(Instant::now() < deadline, "job did not end: {j}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The contract's copy: the new container's id, once its job succeeded.
    async fn copy(&self, source: &str, project: &str, server: &str, name: &str) -> (String, Value) {
        let (st, started) = self
            .call(
                reqwest::Method::POST,
                &format!("/containers/{source}/copy"),
                Some(json!({
                    "target_project_id": project,
                    "target_server_id": server,
                    "name": name,
                    "copy_firewall_rules": true,
                    "copy_network_rules": true
                })),
            )
            .await;
        assert_eq!(st, 202, "{started}");
        let job = self.succeeded(&started["job"]).await;
        (
            started["container"]["id"].as_str().unwrap().to_string(),
            job,
        )
    }

    /// The contract's sync: its job, once it succeeded.
    async fn sync(&self, copy: &str) -> Value {
        let (st, started) = self
            .call(
                reqwest::Method::POST,
                &format!("/containers/{copy}/sync"),
                None,
            )
            .await;
        assert_eq!(st, 202, "{started}");
        self.succeeded(&started["job"]).await
    }

    async fn root_here(&self, id: &str) -> std::path::PathBuf {
        let (_, c) = self
            .call(reqwest::Method::GET, &format!("/containers/{id}"), None)
            .await;
        c["root_path"]
            .as_str()
            .unwrap_or_else(|| panic!("no root: {c}"))
            .into()
    }
}

/// A container's tree on an agent whose data dir is `data`.
fn root_on(data: &Path, id: &str) -> std::path::PathBuf {
    data.join("storage").join("containers").join(id)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copies_and_syncs_cross_hosts_in_every_direction() {
    let lab = Lab::new(&["cp", "b", "c"]);
    let dir = tempfile::tempdir().unwrap();
    let (cp, agents) = with_agents(&lab, dir.path(), 4, &["b", "c"]).await;
    let (b_data, c_data) = (dir.path().join("b"), dir.path().join("c"));
    let project = cp.project("web-platform").await;
    let (b, c) = (cp.server_id("b").await, cp.server_id("c").await);
    let local = cp.server_id("local-b").await;
    let web_app = cp.id_of("web-app").await;
    let web_root = cp.root_here(&web_app).await;

    // This host -> b: the whole tree arrives, a new machine (its own hostname). Its busybox
    // compresses (the demo's data files are random and do not): fewer bytes cross than the
    // engine sent.
    let (on_b, job) = cp.copy(&web_app, &project, &b, "web-on-b").await;
    assert_same(&web_root, &root_on(&b_data, &on_b));
    let sent = job["summary"]["bytes_sent"].as_u64().unwrap();
    let wire = job["summary"]["wire_bytes"].as_u64().unwrap();
    assert!(sent > 0 && wire < sent * 9 / 10, "{job}");
    assert!(
        !job["summary"]["identity_files"]
            .as_array()
            .unwrap()
            .is_empty(),
        "{job}"
    );
    let hostname = std::fs::read_to_string(root_on(&b_data, &on_b).join("etc/hostname")).unwrap();
    assert_eq!(hostname.trim(), "web-on-b");
    // It runs there (see containers_run_on_their_agent_s_host_and_survive_its_restart).
    cp.wait_container(&on_b, "running").await;
    // b -> c, agent to agent.
    let (on_c, _) = cp.copy(&on_b, &project, &c, "web-on-c").await;
    assert_same(&web_root, &root_on(&c_data, &on_c));
    // c -> this host.
    let (home, _) = cp.copy(&on_c, &project, &local, "web-home").await;
    assert_same(&web_root, &cp.root_here(&home).await);

    // A snapshot of the copy on b, taken there.
    let (st, snap) = cp
        .call(
            reqwest::Method::POST,
            &format!("/containers/{on_b}/snapshots"),
            Some(json!({"name": "before"})),
        )
        .await;
    assert_eq!(st, 201, "{snap}");
    assert!(snap["file_count"].as_u64().unwrap() > 0, "{snap}");
    let before = tree(&root_on(&b_data, &on_b));

    // The source changes; each sync brings exactly that, and the copy keeps its identity.
    std::fs::write(
        web_root.join("www/content.html"),
        b"changed at the source\n",
    )
    .unwrap();
    let job = cp.sync(&on_b).await;
    assert!(
        job["summary"]["files_changed"].as_u64().unwrap() >= 1,
        "{job}"
    );
    assert_same(&web_root, &root_on(&b_data, &on_b));
    let hostname = std::fs::read_to_string(root_on(&b_data, &on_b).join("etc/hostname")).unwrap();
    assert_eq!(hostname.trim(), "web-on-b");
    let job = cp.sync(&on_c).await;
    assert_same(&web_root, &root_on(&c_data, &on_c));
    assert!(
        job["summary"]["files_changed"].as_u64().unwrap() >= 1,
        "{job}"
    );
    cp.sync(&home).await;
    assert_same(&web_root, &cp.root_here(&home).await);
    // Nothing changed: a sync sends no content.
    let job = cp.sync(&on_c).await;
    assert_eq!(job["summary"]["content_bytes"], 0, "{job}");
    // A copy from b's snapshot to this host has the tree as it was then.
    let (st, started) = cp
        .call(
            reqwest::Method::POST,
            &format!("/containers/{on_b}/copy"),
            Some(
                json!({"target_project_id": project, "target_server_id": local,
                "name": "from-snapshot", "source_snapshot": "before"}),
            ),
        )
        .await;
    assert_eq!(st, 202, "{started}");
    cp.succeeded(&started["job"]).await;
    let from_snapshot = started["container"]["id"].as_str().unwrap();
    assert!(
        tree(&cp.root_here(from_snapshot).await) == before,
        "the snapshot's tree, not the synced one"
    );

    // The sync status knows copies whose sources are on agents are current.
    let (_, status) = cp.call(reqwest::Method::GET, "/sync-status", None).await;
    let row = status["copies"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["copy"]["id"] == on_c.as_str())
        .unwrap();
    assert_eq!(row["freshness"], "current", "{row}");

    // c's bandwidth limit holds an agent-to-agent sync (b's agent paces what it sends):
    // 3 MiB at 1 MiB/s take more than 2.7 s (no more than a tenth of a second's worth goes
    // at once).
    let (st, limited) = cp
        .call(
            reqwest::Method::PUT,
            &format!("/servers/{c}/bwlimit"),
            Some(json!({"bwlimit": "1M"})),
        )
        .await;
    assert_eq!(st, 200, "{limited}");
    let mut rng = doppel::rng::Rng(5);
    std::fs::write(web_root.join("www/big.bin"), rng.bytes(3 << 20)).unwrap();
    cp.sync(&on_b).await;
    let started = Instant::now();
    cp.sync(&on_c).await;
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(2700),
        "3 MiB at 1 MiB/s in {took:?}"
    );
    assert_same(&web_root, &root_on(&c_data, &on_c));

    // Deleted on c: its tree goes from c.
    let (st, started) = cp
        .call(
            reqwest::Method::DELETE,
            &format!("/containers/{on_c}"),
            None,
        )
        .await;
    assert_eq!(st, 202, "{started}");
    cp.succeeded(&started["job"]).await;
    assert!(!root_on(&c_data, &on_c).exists());
    drop(agents);
}

impl ControlPlane {
    async fn job(&self, id: &str) -> Value {
        self.call(reqwest::Method::GET, &format!("/jobs/{id}"), None)
            .await
            .1
    }

    async fn project(&self, name: &str) -> String {
        let (_, list) = self.call(reqwest::Method::GET, "/projects", None).await;
        list["projects"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == name)
            .unwrap()["id"]
            .as_str()
            .unwrap()
            .to_string()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_for_an_offline_host_waits_saying_so_then_runs_or_fails_in_time() {
    let lab = Lab::new(&["cp", "b"]);
    let dir = tempfile::tempdir().unwrap();
    let (cp, b_data, mut b) = with_agent_b(&lab, dir.path(), 4).await;
    let (project, server) = (cp.project("web-platform").await, cp.server_id("b").await);
    let web_app = cp.id_of("web-app").await;

    // b goes down; a copy onto it is accepted and waits, saying for what.
    b.kill();
    cp.wait_state("b", "offline", Duration::from_secs(10)).await;
    let (st, started) = cp
        .call(
            reqwest::Method::POST,
            &format!("/containers/{web_app}/copy"),
            Some(json!({"target_project_id": project, "target_server_id": server, "name": "patient"})),
        )
        .await;
    assert_eq!(st, 202, "{started}");
    let job = started["job"]["id"].as_str().unwrap().to_string();
    let deadline = Instant::now() + Duration::from_secs(5);
    let waiting = loop {
        let j = cp.job(&job).await;
        if j["waiting_for"].is_string() {
            break j;
        }
        assert!(Instant::now() < deadline, "no reason to wait given: {j}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(waiting["status"], "queued", "{waiting}");
    assert!(
        waiting["waiting_for"]
            .as_str()
            .unwrap()
            .starts_with("waiting for server b"),
        "{waiting}"
    );
    // Back within the wait: it runs, and the reason is gone.
    b = agent(&lab, "b", &b_data, None, &dir.path().join("b2.log"));
    let done = cp.succeeded(&started["job"]).await;
    assert!(done.get("waiting_for").is_none(), "{done}");
    let copy = started["container"]["id"].as_str().unwrap().to_string();
    assert!(root_on(&b_data, &copy).join("www/content.html").is_file());

    // Down for longer than the wait (4 s here): the sync fails, saying so, and the copy is
    // as it was.
    b.kill();
    cp.wait_state("b", "offline", Duration::from_secs(10)).await;
    let (st, started) = cp
        .call(
            reqwest::Method::POST,
            &format!("/containers/{copy}/sync"),
            None,
        )
        .await;
    assert_eq!(st, 202, "{started}");
    let id = started["job"]["id"].as_str().unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let failed = loop {
        let j = cp.job(id).await;
        if j["status"] == "failed" {
            break j;
        }
        assert!(Instant::now() < deadline, "did not fail in time: {j}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(
        failed["error"].as_str().unwrap().contains("stayed offline"),
        "{failed}"
    );
    let (_, detail) = cp
        .call(reqwest::Method::GET, &format!("/containers/{copy}"), None)
        .await;
    // (Its process runs on b, which a killed agent leaves running.)
    assert_eq!(detail["status"], "running", "{detail}");
}

/// A control plane and agents a and b, a 24 MB tree copied onto a, and the links
/// between the agents slowed to 16 Mbit/s (a copy to b takes about 12 s).
/// Fields drop in this order: the agents (their containers purged while their data dirs
/// are there), the control plane, the lab, the data dirs.
struct SlowPair {
    agents: Vec<Agent>,
    cp: ControlPlane,
    lab: Lab,
    dir: tempfile::TempDir,
    b_data: std::path::PathBuf,
    tree: std::path::PathBuf,
    project: String,
    b: String,
    on_a: String,
}

async fn slow_pair() -> SlowPair {
    let lab = Lab::new(&["cp", "a", "b"]);
    let dir = tempfile::tempdir().unwrap();
    let (cp, agents) = with_agents(&lab, dir.path(), 60, &["a", "b"]).await;
    let b_data = dir.path().join("b");
    let tree = dir.path().join("big");
    let mut rng = doppel::rng::Rng(77);
    for i in 0..24 {
        let d = tree.join(format!("d{}", i % 4));
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join(format!("f{i}")), rng.bytes(1 << 20)).unwrap();
    }
    let project = cp.project("web-platform").await;
    let local = cp.server_id("local-a").await;
    let out = Command::new(doppel())
        .arg("--data-dir")
        .arg(&cp.data)
        .arg("import")
        .arg(&tree)
        .args(["--project", &project, "--server", &local, "--name", "big"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let big = String::from_utf8(out.stdout).unwrap().trim().to_string();
    let (a, b) = (cp.server_id("a").await, cp.server_id("b").await);
    let (on_a, _) = cp.copy(&big, &project, &a, "big-on-a").await;
    for host in ["a", "b"] {
        lab.shape(host, "16mbit", None);
    }
    SlowPair {
        lab,
        dir,
        cp,
        agents,
        b_data,
        tree,
        project,
        b,
        on_a,
    }
}

impl SlowPair {
    /// Starts the copy of a's tree onto b: its answer.
    async fn start_copy(&self, name: &str) -> Value {
        let (st, started) = self
            .cp
            .call(
                reqwest::Method::POST,
                &format!("/containers/{}/copy", self.on_a),
                Some(json!({"target_project_id": self.project, "target_server_id": self.b, "name": name})),
            )
            .await;
        assert_eq!(st, 202, "{started}");
        started
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_copy_whose_link_is_cut_resumes_from_what_arrived_when_it_returns() {
    let SlowPair {
        lab,
        dir: _dir,
        cp,
        agents,
        b_data,
        tree: tree_dir,
        project,
        b,
        on_a,
    } = slow_pair().await;
    let (st, started) = cp
        .call(
            reqwest::Method::POST,
            &format!("/containers/{on_a}/copy"),
            Some(json!({"target_project_id": project, "target_server_id": b, "name": "big-on-b"})),
        )
        .await;
    assert_eq!(st, 202, "{started}");
    // Cut b off a few seconds in, for longer than it takes both ends to notice.
    tokio::time::sleep(Duration::from_secs(4)).await;
    lab.cut("b");
    let deadline = Instant::now() + Duration::from_secs(40);
    let waiting = loop {
        let j = cp.job(started["job"]["id"].as_str().unwrap()).await;
        if j["waiting_for"]
            .as_str()
            .is_some_and(|w| w.contains("server b") || w.contains("connection"))
        {
            break j;
        }
        assert!(
            Instant::now() < deadline,
            "the job never said it waits: {j}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(waiting["status"], "running", "{waiting}");
    tokio::time::sleep(Duration::from_secs(12)).await;
    lab.restore("b");
    let job = cp.succeeded(&started["job"]).await;
    let copy = started["container"]["id"].as_str().unwrap().to_string();
    assert_same(&tree_dir, &root_on(&b_data, &copy));
    let summary = &job["summary"];
    eprintln!("the resumed copy: {summary}");
    let notes = summary["notes"].to_string();
    assert!(notes.contains("resumed"), "{job}");
    assert!(
        summary["content_bytes"].as_u64().unwrap() < 20 << 20,
        "less than what was there again: {job}"
    );
    drop(agents);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agents_killed_mid_copy_and_mid_sync_and_a_control_plane_killed_mid_copy_end_truthfully() {
    let mut pair = slow_pair().await;
    // The target's agent is killed (-9) mid-copy: the job waits for it, and when it is
    // started again the copy completes, whole.
    let started = pair.start_copy("after-agent-kill").await;
    tokio::time::sleep(Duration::from_secs(4)).await;
    // Meanwhile both servers show it, with its rate.
    for (server, direction) in [("a", "out"), ("b", "in")] {
        let s = pair.cp.server(server).await;
        let t = &s["transfers"][0];
        assert_eq!(t["job_id"], started["job"]["id"], "{s}");
        assert_eq!(t["direction"], direction, "{s}");
        assert_eq!(t["container_name"], "after-agent-kill", "{s}");
        assert!(t["bytes_done"].as_u64().unwrap() > 0, "{s}");
    }
    pair.agents[1].kill();
    tokio::time::sleep(Duration::from_secs(3)).await;
    pair.agents[1] = agent(
        &pair.lab,
        "b",
        &pair.b_data,
        None,
        &pair.dir.path().join("b2.log"),
    );
    pair.cp.succeeded(&started["job"]).await;
    let copy = started["container"]["id"].as_str().unwrap().to_string();
    assert_same(&pair.tree, &root_on(&pair.b_data, &copy));

    // Half the source changes on a, and the target's agent is killed (-9) mid-sync: when it
    // is back, the sync ends succeeded with the copy exactly the new source, and the source
    // as it was written.
    let source_root = root_on(&pair.dir.path().join("a"), &pair.on_a);
    let mut rng = doppel::rng::Rng(78);
    for i in (0..24).step_by(2) {
        let f = source_root.join(format!("d{}/f{i}", i % 4));
        std::fs::write(f, rng.bytes(1 << 20)).unwrap();
    }
    let expected = tree(&source_root);
    let (st, syncing) = pair
        .cp
        .call(
            reqwest::Method::POST,
            &format!("/containers/{copy}/sync"),
            None,
        )
        .await;
    assert_eq!(st, 202, "{syncing}");
    tokio::time::sleep(Duration::from_secs(3)).await;
    let during = pair.cp.job(syncing["job"]["id"].as_str().unwrap()).await;
    assert_eq!(during["status"], "running", "killed mid-sync: {during}");
    pair.agents[1].kill();
    tokio::time::sleep(Duration::from_secs(3)).await;
    pair.agents[1] = agent(
        &pair.lab,
        "b",
        &pair.b_data,
        None,
        &pair.dir.path().join("b3.log"),
    );
    let job = pair.cp.succeeded(&syncing["job"]).await;
    assert_same(&source_root, &root_on(&pair.b_data, &copy));
    assert!(tree(&source_root) == expected, "the source is untouched");
    assert!(
        job["summary"]["files_changed"].as_u64().unwrap() >= 1,
        "{job}"
    );

    // The control plane is killed (-9) mid-copy: the source's agent stops sending (its
    // answer went away), and the job, resumed when the control plane starts again, ends
    // with the tree whole on b.
    let started = pair.start_copy("after-cp-kill").await;
    tokio::time::sleep(Duration::from_secs(4)).await;
    pair.cp.process.kill();
    pair.cp.process = cp_process(&pair.lab, pair.dir.path(), true, 60, "cp2.log").await;
    let job = pair.cp.succeeded(&started["job"]).await;
    let copy = started["container"]["id"].as_str().unwrap().to_string();
    assert_same(&source_root, &root_on(&pair.b_data, &copy));
    let (_, detail) = pair
        .cp
        .call(reqwest::Method::GET, &format!("/containers/{copy}"), None)
        .await;
    assert_eq!(detail["status"], "stopped", "{detail} {job}");
    // Nothing was left half-made on b: the two copies' trees, and no staging.
    let staging: Vec<_> = std::fs::read_dir(pair.b_data.join("storage/state"))
        .unwrap()
        .filter_map(Result::ok)
        .filter(|e| e.path().join("work").exists())
        .collect();
    assert!(staging.is_empty(), "{staging:?}");
}

/// A page of a container on `host`, fetched from that host (its bridge reaches it); `None`
/// when it does not answer within 3 s.
fn page_from(lab: &Lab, host: &str, address: &str, path: &str) -> Option<String> {
    let out = lab
        .command(host, "curl")
        .args(["-s", "-f", "-m", "3", &format!("http://{address}{path}")])
        .output()
        .unwrap();
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).to_string())
}

impl ControlPlane {
    async fn detail(&self, id: &str) -> Value {
        self.call(reqwest::Method::GET, &format!("/containers/{id}"), None)
            .await
            .1
    }

    /// A container's first address (without its prefix).
    async fn address(&self, id: &str) -> String {
        let d = self.detail(id).await;
        d["interfaces"][0]["ipv4"]
            .as_str()
            .unwrap_or_else(|| panic!("no address: {d}"))
            .split('/')
            .next()
            .unwrap()
            .to_string()
    }

    async fn wait_container(&self, id: &str, status: &str) -> Value {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let d = self.detail(id).await;
            if d["status"] == status {
                return d;
            }
            assert!(Instant::now() < deadline, "never {status}: {d}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn containers_run_on_their_agent_s_host_and_survive_its_restart() {
    let lab = Lab::new(&["cp", "b"]);
    let dir = tempfile::tempdir().unwrap();
    let (cp, b_data, mut b_agent) = with_agent_b(&lab, dir.path(), 30).await;
    let project = cp.project("web-platform").await;
    let b = cp.server_id("b").await;
    let web_app = cp.id_of("web-app").await;
    let web_root = cp.root_here(&web_app).await;

    // The copy starts on b, a new machine with its own address, serving its page there.
    let (on_b, job) = cp.copy(&web_app, &project, &b, "web-on-b").await;
    let d = cp.wait_container(&on_b, "running").await;
    assert!(d["status_reason"].is_null(), "{d} {job}");
    let address = cp.address(&on_b).await;
    let content = std::fs::read_to_string(web_root.join("www/content.html")).unwrap();
    assert_eq!(
        page_from(&lab, "b", &address, "/content.html").as_deref(),
        Some(content.as_str())
    );
    // Its output comes from b, with its own hostname.
    let (st, logs) = cp
        .call(
            reqwest::Method::GET,
            &format!("/containers/{on_b}/logs"),
            None,
        )
        .await;
    assert_eq!(st, 200, "{logs}");
    assert!(logs["lines"].to_string().contains("as web-on-b"), "{logs}");
    // Open reaches it through b's agent, sandboxed as a page of this host is.
    let open = common::TestServer::client()
        .get(format!("{}/containers/{on_b}/open/content.html", cp.base))
        .bearer_auth(&cp.token)
        .send()
        .await
        .unwrap();
    assert_eq!(open.status().as_u16(), 200);
    assert!(open
        .headers()
        .get("content-security-policy")
        .is_some_and(|v| v.to_str().unwrap().starts_with("sandbox")));
    assert_eq!(open.text().await.unwrap(), content);

    // A firewall rule is in force on b at once, and lifted again.
    let rules = d["firewall_rules"].clone();
    let deny = json!({"rules": [
        {"direction": "ingress", "protocol": "tcp", "port": "80", "cidr": "0.0.0.0/0", "action": "deny"}
    ]});
    let path = format!("/containers/{on_b}/firewall-rules");
    let (st, body) = cp.call(reqwest::Method::PUT, &path, Some(deny)).await;
    assert_eq!(st, 200, "{body}");
    assert_eq!(page_from(&lab, "b", &address, "/content.html"), None);
    let open = common::TestServer::client()
        .get(format!("{}/containers/{on_b}/open/content.html", cp.base))
        .bearer_auth(&cp.token)
        .send()
        .await
        .unwrap();
    assert_eq!(open.status().as_u16(), 502);
    assert!(open.text().await.unwrap().contains("does not answer"));
    let (st, body) = cp
        .call(reqwest::Method::PUT, &path, Some(json!({ "rules": rules })))
        .await;
    assert_eq!(st, 200, "{body}");
    assert!(page_from(&lab, "b", &address, "/content.html").is_some());

    // A sync of the running copy: stopped only for its final pass, running after, and
    // serving the new page.
    std::fs::write(
        web_root.join("www/content.html"),
        b"changed at the source\n",
    )
    .unwrap();
    let job = cp.sync(&on_b).await;
    assert!(job["summary"]["downtime_ms"].is_u64(), "{job}");
    cp.wait_container(&on_b, "running").await;
    assert_eq!(
        page_from(&lab, "b", &address, "/content.html").as_deref(),
        Some("changed at the source\n")
    );

    // b's agent is killed (-9): its container runs on, and its status stays true; when the
    // agent is back, the control plane stops and starts it there.
    b_agent.kill();
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert!(page_from(&lab, "b", &address, "/content.html").is_some());
    assert_eq!(cp.detail(&on_b).await["status"], "running");
    let (st, body) = cp
        .call(
            reqwest::Method::POST,
            &format!("/containers/{on_b}/stop"),
            None,
        )
        .await;
    assert_eq!(st, 409, "its server is down: not known to stop: {body}");
    b_agent.restart(&lab, "b", &dir.path().join("b2.log"));
    cp.wait_state("b", "online", Duration::from_secs(20)).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(cp.detail(&on_b).await["status"], "running");
    assert!(page_from(&lab, "b", &address, "/content.html").is_some());
    let (st, body) = cp
        .call(
            reqwest::Method::POST,
            &format!("/containers/{on_b}/stop"),
            None,
        )
        .await;
    assert_eq!(st, 200, "{body}");
    assert_eq!(body["status"], "stopped", "{body}");
    assert_eq!(page_from(&lab, "b", &address, "/content.html"), None);
    let (st, body) = cp
        .call(
            reqwest::Method::POST,
            &format!("/containers/{on_b}/start"),
            None,
        )
        .await;
    assert_eq!(st, 200, "{body}");
    assert_eq!(body["status"], "running", "{body}");
    assert!(page_from(&lab, "b", &address, "/content.html").is_some());

    // Its process ends on its own (killed on b): the watch sees it and says how it ended.
    let pid = Command::new("runc")
        .arg("--root")
        .arg(b_data.join("runc"))
        .args(["state", &on_b])
        .output()
        .unwrap();
    let state: Value = serde_json::from_slice(&pid.stdout).unwrap();
    let pid = state["pid"].as_i64().unwrap();
    Command::new("kill")
        .args(["-9", &pid.to_string()])
        .status()
        .unwrap();
    let d = cp.wait_container(&on_b, "stopped").await;
    assert!(
        d["status_reason"]
            .as_str()
            .unwrap_or_default()
            .contains("exited with code"),
        "{d}"
    );

    // Deleted while it runs: its process, network namespace and tree go from b.
    let (st, _) = cp
        .call(
            reqwest::Method::POST,
            &format!("/containers/{on_b}/start"),
            None,
        )
        .await;
    assert_eq!(st, 200);
    let (st, started) = cp
        .call(
            reqwest::Method::DELETE,
            &format!("/containers/{on_b}"),
            None,
        )
        .await;
    assert_eq!(st, 202, "{started}");
    cp.succeeded(&started["job"]).await;
    assert!(!root_on(&b_data, &on_b).exists());
    let netns = Command::new("ip").args(["netns", "list"]).output().unwrap();
    assert!(
        !String::from_utf8_lossy(&netns.stdout).contains(&on_b),
        "its network namespace is gone"
    );
    drop(b_agent);
}

/// An agent's server holding both trees: a copy there and its syncs are made on its host as
/// on the control plane's (not sent to itself through a connection). Started with
/// `--image-trees` on an XFS, it lays the copies it receives down as image trees (the
/// servers API says so), and a copy of one on its server is a clone of its image. A source
/// grown beyond what an image tree holds arrives as a directory, whatever doppel last
/// recorded of its size, and a sync grows its copy that is an image tree to hold it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_copies_on_its_own_server_there_and_with_image_trees_by_clones() {
    let xfs = common::process::Xfs::new();
    let lab = Lab::new(&["cp", "b"]);
    let dir = tempfile::tempdir().unwrap();
    let cp = control_plane_with(&lab, dir.path(), true, 4).await;
    let token = cp.add_server("b").await;
    let b_data = xfs.data();
    common::process::purge_path_at_exit(&b_data);
    let mut c = lab.host_command("b", doppel());
    c.arg("--data-dir")
        .arg(&b_data)
        .args(["--image-trees", "1G", "agent"])
        .args(["--listen", &format!("{}:7700", lab.addr("b"))])
        .args(["join", &cp.join_url, &token]);
    let _b_agent = Agent {
        process: Running::spawn(c, &dir.path().join("b.log")),
        data: b_data.clone(),
    };
    let server = cp.wait_state("b", "online", Duration::from_secs(20)).await;
    assert_eq!(server["storage"], "reflink", "{server}");
    assert_eq!(server["image_trees"], 1u64 << 30, "{server}");
    let project = cp.project("web-platform").await;
    let b = cp.server_id("b").await;
    let web_app = cp.id_of("web-app").await;
    let web_root = cp.root_here(&web_app).await;

    // Received from this host: laid down as an image tree.
    let (on_b, job) = cp.copy(&web_app, &project, &b, "web-on-b").await;
    let notes = job["summary"]["notes"].to_string();
    assert!(
        notes.contains("laid down as an image tree of 1.0 GiB"),
        "{job}"
    );
    assert!(image::is_image_tree(&root_on(&b_data, &on_b)));
    assert_same(&web_root, &root_on(&b_data, &on_b));

    // Copied on b: a clone of its image, nothing through a connection, a new machine.
    let (again, job) = cp.copy(&on_b, &project, &b, "web-again").await;
    let notes = job["summary"]["notes"].to_string();
    assert!(notes.contains("a clone of the source's image"), "{job}");
    assert_eq!(
        job["summary"]["wire_bytes"].as_u64().unwrap_or(0),
        0,
        "{job}"
    );
    let again_root = root_on(&b_data, &again);
    assert!(image::is_image_tree(&again_root));
    assert_same(&web_root, &again_root);
    let hostname = std::fs::read_to_string(again_root.join("etc/hostname")).unwrap();
    assert_eq!(hostname.trim(), "web-again");
    cp.wait_container(&again, "running").await;

    // Synced on b: what changed in its source arrives, its identity stays.
    std::fs::write(
        root_on(&b_data, &on_b).join("www/content.html"),
        b"changed on b\n",
    )
    .unwrap();
    let job = cp.sync(&again).await;
    assert!(
        job["summary"]["files_changed"].as_u64().unwrap() >= 1,
        "{job}"
    );
    assert_eq!(
        job["summary"]["wire_bytes"].as_u64().unwrap_or(0),
        0,
        "{job}"
    );
    assert_eq!(
        std::fs::read(again_root.join("www/content.html")).unwrap(),
        b"changed on b\n"
    );
    let hostname = std::fs::read_to_string(again_root.join("etc/hostname")).unwrap();
    assert_eq!(hostname.trim(), "web-again");
    cp.wait_container(&again, "running").await;

    // A source grown in use to 1.1 GB (a hole on this host) while doppel's record of its
    // size still says a few MB: its copy on b is not laid down in an image tree of 1 GiB it
    // would not fit (the job failed with no room left, before), but as a directory, known
    // from the source's own scan before anything arrives.
    let grown = web_root.join("grown.img");
    std::fs::File::create(&grown)
        .unwrap()
        .set_len(1100 << 20)
        .unwrap();
    let (big, job) = cp.copy(&web_app, &project, &b, "web-grown").await;
    let notes = job["summary"]["notes"].to_string();
    assert!(
        notes.contains("would fill most of an image tree of 1.0 GiB"),
        "{job}"
    );
    let big_root = root_on(&b_data, &big);
    assert!(!image::is_image_tree(&big_root));
    assert_eq!(
        std::fs::metadata(big_root.join("grown.img")).unwrap().len(),
        1100 << 20
    );
    assert_eq!(
        std::fs::read(big_root.join("www/content.html")).unwrap(),
        std::fs::read(web_root.join("www/content.html")).unwrap()
    );

    // Its copy laid down as an image tree of 1 GiB before it grew: the sync grows that
    // image on b (sparse) to hold it and what it stages, instead of failing with no room.
    let job = cp.sync(&on_b).await;
    std::fs::remove_file(&grown).unwrap();
    let notes = job["summary"]["notes"].to_string();
    assert!(
        notes.contains("its image tree grown from 1.0 to 3.0 GiB"),
        "{job}"
    );
    let on_b_root = root_on(&b_data, &on_b);
    assert!(image::is_image_tree(&on_b_root));
    assert_eq!(
        std::fs::metadata(on_b_root.join("grown.img"))
            .unwrap()
            .len(),
        1100 << 20
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_copy_form_says_which_target_servers_a_copy_would_wait_for_or_cannot_take() {
    let s = common::TestServer::start().await;
    let (st, e) = s
        .call(
            reqwest::Method::POST,
            "/api/v1/servers",
            &s.admin_token,
            Some(json!({"name": "far-away"})),
        )
        .await;
    assert_eq!(st, 201, "{e}");
    // This doppel listens for no joins (no --agents-addr): said with the token.
    assert!(
        e["warning"].as_str().unwrap().contains("--agents-addr"),
        "{e}"
    );
    assert!(e.get("join_command").is_none(), "{e}");
    let web_app = s.container_id("web-app").await;
    let cookie = s.session("admin", &s.admin_password).await;
    let (st, html) = s
        .page(&format!("/containers/{web_app}/copy"), &cookie)
        .await;
    assert_eq!(st, 200);
    // A server whose host never joined takes no copy (the API refuses it): offered
    // disabled, saying why.
    assert!(
        html.contains("far-away (its host has not joined yet: no copy can go there)"),
        "{html}"
    );
    let option = html
        .split("<option")
        .find(|o| o.contains("far-away"))
        .unwrap();
    assert!(option.contains("disabled"), "{option}");
    assert!(html.contains("(the source&#x27;s server)") || html.contains("(the source's server)"));
}
