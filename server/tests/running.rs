//! Containers that really run: runc, a network namespace each, nftables, as root (like CI).
//! Each test's doppel has a network of its own; whatever it ran is removed when it ends
//! (`TestServer`'s drop, `Purge` for the one that runs the binary).

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::{process, TestServer};
use serde_json::{json, Value};

/// A client for containers' addresses: no proxy, short timeouts (a dropped packet is an
/// unreachable page, not a hung test).
fn direct() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .connect_timeout(Duration::from_secs(2))
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap()
}

/// The address a container answers on (its first interface's).
fn address(c: &Value) -> String {
    let cidr = c["interfaces"][0]["ipv4"]
        .as_str()
        .unwrap_or_else(|| panic!("no interface: {c}"));
    cidr.split('/').next().unwrap().to_string()
}

/// The pid of the shim (`doppel shim ... --id <id>`) running container `id`.
fn shim_of(id: &str) -> Option<i32> {
    std::fs::read_dir("/proc").ok()?.flatten().find_map(|p| {
        let pid: i32 = p.file_name().to_str()?.parse().ok()?;
        let cmdline = std::fs::read(p.path().join("cmdline")).ok()?;
        let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
        let is_shim = args.get(1) == Some(&&b"shim"[..])
            && args
                .windows(2)
                .any(|w| w[0] == b"--id" && w[1] == id.as_bytes());
        is_shim.then_some(pid)
    })
}

/// The first three octets of interface `n`'s address (the /24 it is on).
fn subnet(c: &Value, n: usize) -> String {
    let a = c["interfaces"][n]["ipv4"]
        .as_str()
        .unwrap_or_else(|| panic!("no interface {n}: {c}"));
    a[..a.rfind('.').unwrap()].to_string()
}

/// The page at `path` of a container's port 80, or the error.
async fn page(c: &Value, path: &str) -> Result<String, String> {
    let resp = direct()
        .get(format!("http://{}{path}", address(c)))
        .send()
        .await
        .map_err(|e| e.to_string())?;
    if !resp.status().is_success() {
        return Err(format!("status {}", resp.status()));
    }
    resp.text().await.map_err(|e| e.to_string())
}

async fn send(
    s: &TestServer,
    method: reqwest::Method,
    path: &str,
    body: Option<Value>,
) -> (u16, Value) {
    s.call(method, path, &s.admin_token, body).await
}

async fn post(s: &TestServer, path: &str, body: Option<Value>) -> (u16, Value) {
    send(s, reqwest::Method::POST, path, body).await
}

async fn container(s: &TestServer, id: &str) -> Value {
    s.get(&format!("/api/v1/containers/{id}"), &s.admin_token)
        .await
        .1
}

/// Copies `source` and waits for the job's end: (the copy, the job).
async fn copy(s: &TestServer, source: &str, body: Value) -> (Value, Value) {
    let (st, started) = post(s, &format!("/api/v1/containers/{source}/copy"), Some(body)).await;
    assert_eq!(st, 202, "{started}");
    let job = s.wait_job(started["job"]["url"].as_str().unwrap()).await;
    assert_eq!(job["status"], "succeeded", "{job}");
    let id = started["container"]["id"].as_str().unwrap();
    (container(s, id).await, job)
}

fn root(c: &Value) -> PathBuf {
    PathBuf::from(c["root_path"].as_str().unwrap())
}

fn read(root: &Path, rel: &str) -> String {
    std::fs::read_to_string(root.join(rel)).unwrap_or_default()
}
/// Makes a running container a probe: it restarts serving its page, checks that `nc`
/// connects (to that page), then tries each `(address, port)`. Its log says, for each,
/// `REACHED <address>` or `BLOCKED <address>` (after `SELF-OK`); returns the log.
async fn probe(s: &TestServer, id: &str, targets: &[(&str, u16)]) -> String {
    let tries: String = targets
        .iter()
        .map(|(a, p)| {
            format!(
                "if nc -w 3 {a} {p} </dev/null; then echo REACHED {a}; else echo BLOCKED {a}; fi; "
            )
        })
        .collect();
    let command = json!({"args": ["/bin/sh", "-c", format!(
        // nc connects (to the container's own page), so a failure is the block.
        "httpd -p 80 -h /www; nc -w 3 127.0.0.1 80 </dev/null && echo SELF-OK; {tries}echo PROBED; sleep 60"
    )]});
    let path = format!("/api/v1/containers/{id}/command");
    let (st, body) = send(s, reqwest::Method::PUT, &path, Some(command)).await;
    assert_eq!(st, 200, "{body}");
    let (st, body) = post(
        s,
        &format!("/api/v1/containers/{id}/restart?timeout=1"),
        None,
    )
    .await;
    assert_eq!(st, 200, "{body}");
    let deadline = Instant::now() + Duration::from_secs(10 + 5 * targets.len() as u64);
    loop {
        let (_, logs) = s
            .get(&format!("/api/v1/containers/{id}/logs"), &s.admin_token)
            .await;
        let text = logs["lines"].to_string();
        if text.contains("PROBED") {
            return text;
        }
        assert!(Instant::now() < deadline, "the probe said nothing: {logs}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_copy_runs_on_its_own_address_as_a_new_machine() {
    let s = TestServer::start().await;
    let web = s.project_id("web-platform").await;
    let source_id = s.container_id("web-app").await;
    let source = container(&s, &source_id).await;
    assert_eq!(
        source["status"], "running",
        "the demo's web-app runs: {source}"
    );
    assert!(page(&source, "/")
        .await
        .unwrap()
        .contains("<h1>web-app</h1>"));
    assert_eq!(
        page(&source, "/cgi-bin/host").await.unwrap().trim(),
        "web-app"
    );

    let key =
        ssh_key::PrivateKey::random(&mut ssh_key::rand_core::OsRng, ssh_key::Algorithm::Ed25519)
            .unwrap()
            .public_key()
            .to_openssh()
            .unwrap();
    let key = key.as_str();
    let (copy, job) = copy(
        &s,
        &source_id,
        json!({"target_project_id": web, "name": "web-app-run", "ssh_public_key": key,
               "copy_network_rules": true}),
    )
    .await;
    assert_eq!(
        copy["status"], "running",
        "a copy starts automatically: {copy}"
    );
    assert!(copy["started_at"].is_i64());
    assert_eq!(
        copy["command"], source["command"],
        "the copy runs what its source runs"
    );

    // Its own address on the same network: the source's static address was taken, so the
    // copy got another, and its job says so.
    let (a, b) = (address(&source), address(&copy));
    assert_ne!(a, b);
    assert_eq!(copy["interfaces"][0]["network"], "web-frontend");
    assert_ne!(copy["interfaces"][0]["mac"], source["interfaces"][0]["mac"]);
    let notes = job["summary"]["notes"].to_string();
    assert!(notes.contains(&a) && notes.contains(&b), "{job}");
    // Its rules say the address it has, not the one it could not take.
    let rule = copy["network_rules"][0]["ipv4"]
        .as_str()
        .unwrap_or_default();
    assert_eq!(rule.split('/').next(), Some(b.as_str()), "{copy}");

    // The source's content, the copy's own name.
    assert_eq!(
        page(&copy, "/content.html").await.unwrap(),
        page(&source, "/content.html").await.unwrap()
    );
    assert!(page(&copy, "/")
        .await
        .unwrap()
        .contains("Served by <b>web-app-run</b>"));
    assert_eq!(
        page(&copy, "/cgi-bin/host").await.unwrap().trim(),
        "web-app-run"
    );

    // A new machine: hostname, machine-id, host keys, authorized_keys.
    let (src, dst) = (root(&source), root(&copy));
    assert_eq!(read(&dst, "etc/hostname").trim(), "web-app-run");
    assert_ne!(read(&dst, "etc/machine-id"), read(&src, "etc/machine-id"));
    assert_eq!(read(&dst, "etc/machine-id").trim().len(), 32);
    assert_ne!(
        read(&dst, "etc/ssh/ssh_host_ed25519_key"),
        read(&src, "etc/ssh/ssh_host_ed25519_key")
    );
    assert_eq!(read(&dst, "root/.ssh/authorized_keys").trim(), key);
    let source_keys = read(&src, "root/.ssh/authorized_keys");
    assert!(!source_keys.is_empty());
    assert!(!read(&dst, "root/.ssh/authorized_keys")
        .contains(source_keys.split_whitespace().nth(1).unwrap()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn firewall_rules_are_enforced_in_the_namespace_and_copied_only_when_asked() {
    let s = TestServer::start().await;
    let web = s.project_id("web-platform").await;
    let id = s.container_id("web-app").await;
    let c = container(&s, &id).await;
    assert!(
        page(&c, "/").await.is_ok(),
        "its rules allow port 80 from 10/8"
    );

    let deny = json!({"rules": [
        {"direction": "ingress", "protocol": "tcp", "port": "80", "cidr": "0.0.0.0/0", "action": "deny"}
    ]});
    let (st, body) = send(
        &s,
        reqwest::Method::PUT,
        &format!("/api/v1/containers/{id}/firewall-rules"),
        Some(deny.clone()),
    )
    .await;
    assert_eq!(st, 200, "{body}");
    assert!(
        page(&c, "/").await.is_err(),
        "denied at once in the running container"
    );

    // Copied when asked, not otherwise.
    let (with, _) = copy(
        &s,
        &id,
        json!({"target_project_id": web, "name": "fw-copied", "copy_firewall_rules": true}),
    )
    .await;
    let (without, _) = copy(
        &s,
        &id,
        json!({"target_project_id": web, "name": "fw-not-copied"}),
    )
    .await;
    assert_eq!(with["status"], "running");
    assert_eq!(without["status"], "running");
    assert!(
        page(&with, "/").await.is_err(),
        "the copied deny rule holds: {with}"
    );
    assert!(
        page(&without, "/").await.is_ok(),
        "no rules, nothing denied: {without}"
    );

    // Rules checked in order, first match wins: allow from this host's bridge first.
    let gateway = {
        let a: std::net::Ipv4Addr = address(&c).parse().unwrap();
        let o = a.octets();
        format!("{}.{}.{}.1", o[0], o[1], o[2])
    };
    let allow_then_deny = json!({"rules": [
        {"direction": "ingress", "protocol": "tcp", "port": "80", "cidr": format!("{gateway}/32"), "action": "allow"},
        {"direction": "ingress", "protocol": "tcp", "port": "80", "cidr": "0.0.0.0/0", "action": "deny"}
    ]});
    let (st, _) = send(
        &s,
        reqwest::Method::PUT,
        &format!("/api/v1/containers/{id}/firewall-rules"),
        Some(allow_then_deny),
    )
    .await;
    assert_eq!(st, 200);
    assert!(
        page(&c, "/").await.is_ok(),
        "the first matching rule allows"
    );

    // Traffic stays on this host, and the host keeps to itself: a container cannot open a
    // connection to the host (its bridge's address), though the host reaches it.
    let listener = std::net::TcpListener::bind("0.0.0.0:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    // Whatever connects is answered by a close (so a probe that gets through says so).
    let acceptor = listener.try_clone().unwrap();
    std::thread::spawn(move || {
        for conn in acceptor.incoming() {
            drop(conn);
        }
    });
    // Its own network's gateway: the host's address on its bridge.
    let host = {
        let a: std::net::Ipv4Addr = address(&without).parse().unwrap();
        let o = a.octets();
        format!("{}.{}.{}.1", o[0], o[1], o[2])
    };
    let probe_id = without["id"].as_str().unwrap().to_string();
    let said = probe(&s, &probe_id, &[(&host, port)]).await;
    assert!(said.contains("SELF-OK"), "the probe works: {said}");
    assert!(
        said.contains(&format!("BLOCKED {host}")),
        "a container reached the host: {said}"
    );
    drop(listener);

    // Bad rules: 422 naming the rule, nothing changed.
    let bad = json!({"rules": [
        {"direction": "ingress", "protocol": "icmp", "port": "80", "cidr": "0.0.0.0/0", "action": "deny"}
    ]});
    let (st, body) = send(
        &s,
        reqwest::Method::PUT,
        &format!("/api/v1/containers/{id}/firewall-rules"),
        Some(bad),
    )
    .await;
    assert_eq!(st, 422, "{body}");
    assert_eq!(body["error"]["field"], "rules[0]");
    // A misspelt field is refused, not dropped: without its port, a rule meant for one
    // port would deny them all.
    let typo = json!({"rules": [
        {"direction": "ingress", "protocol": "tcp", "ports": "22", "cidr": "10.0.0.1/32", "action": "deny"}
    ]});
    let (st, body) = send(
        &s,
        reqwest::Method::PUT,
        &format!("/api/v1/containers/{id}/firewall-rules"),
        Some(typo),
    )
    .await;
    assert_eq!(
        (st, body["error"]["field"].as_str()),
        (422, Some("rules[0].ports")),
        "{body}"
    );
    // The rules alone, without their object: said so, not "[0] must be a JSON array". An
    // array that serde would read as the object (its fields in order: `[[]]` as
    // `{"rules": []}`), and one for a body whose fields are all optional: refused alike,
    // and the rules stay.
    let bare =
        json!([{"direction": "ingress", "protocol": "any", "cidr": "0.0.0.0/0", "action": "deny"}]);
    for (path, array) in [
        ("firewall-rules", bare),
        ("firewall-rules", json!([[]])),
        ("network-rules", json!([[]])),
    ] {
        let (st, body) = send(
            &s,
            reqwest::Method::PUT,
            &format!("/api/v1/containers/{id}/{path}"),
            Some(array),
        )
        .await;
        assert_eq!(st, 422, "{path}: {body}");
        assert_eq!(
            body["error"]["message"], "the body must be a JSON object, not an array",
            "{path}"
        );
        assert!(body["error"]["field"].is_null(), "{path}: {body}");
    }
    let (_, kept) = send(
        &s,
        reqwest::Method::GET,
        &format!("/api/v1/containers/{id}"),
        None,
    )
    .await;
    assert!(
        !kept["firewall_rules"].as_array().unwrap().is_empty(),
        "{kept}"
    );
    assert!(page(&c, "/").await.is_ok());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_start_restart_and_a_process_that_exits() {
    let s = TestServer::start().await;
    let id = s.container_id("etl-worker").await;
    let c = container(&s, &id).await;
    assert_eq!(c["status"], "running");
    assert!(page(&c, "/").await.is_ok());

    // Every start, stop and restart shows live on the event streams, as a job.
    let mut events = TestServer::client()
        .get(s.url("/api/v1/events"))
        .bearer_auth(&s.admin_token)
        .send()
        .await
        .unwrap();
    let (st, stopped) = post(&s, &format!("/api/v1/containers/{id}/stop"), None).await;
    assert_eq!(st, 200, "{stopped}");
    let mut seen = String::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !(seen.contains("\"kind\":\"stop\"") && seen.contains("\"status\":\"succeeded\"")) {
        assert!(
            Instant::now() < deadline,
            "no stop job on the stream: {seen}"
        );
        let chunk = tokio::time::timeout(Duration::from_secs(10), events.chunk())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        seen.push_str(&String::from_utf8_lossy(&chunk));
    }
    assert!(seen.contains(&id), "{seen}");
    drop(events);
    assert_eq!(stopped["status"], "stopped");
    assert_eq!(
        stopped["exit_code"], 0,
        "its shell ends on SIGTERM: {stopped}"
    );
    assert!(page(&c, "/").await.is_err(), "nothing answers");
    // Idempotent.
    let (st, again) = post(&s, &format!("/api/v1/containers/{id}/stop"), None).await;
    assert_eq!((st, &again["status"]), (200, &json!("stopped")));

    let (st, started) = post(&s, &format!("/api/v1/containers/{id}/start"), None).await;
    assert_eq!(st, 200, "{started}");
    assert_eq!(started["status"], "running");
    assert_eq!(address(&started), address(&c), "its address stays its own");
    assert!(page(&started, "/").await.is_ok());
    let (st, _) = post(&s, &format!("/api/v1/containers/{id}/start"), None).await;
    assert_eq!(st, 200, "starting a running container changes nothing");

    let (st, restarted) = post(
        &s,
        &format!("/api/v1/containers/{id}/restart?timeout=2"),
        None,
    )
    .await;
    assert_eq!(st, 200, "{restarted}");
    assert_eq!(restarted["status"], "running");
    assert!(restarted["started_at"].as_i64() > started["started_at"].as_i64());

    let (_, logs) = s
        .get(
            &format!("/api/v1/containers/{id}/logs?lines=50"),
            &s.admin_token,
        )
        .await;
    let text = logs["lines"].to_string();
    assert!(
        text.contains("serving /www on port 80 as etl-worker"),
        "{logs}"
    );
    assert!(
        text.contains("stopping"),
        "the first run's end is in the log: {logs}"
    );

    // A process that has no SIGTERM handler: as its namespace's init, the kernel drops
    // the signal, so it is killed at once rather than after the whole grace (60 s here).
    let cmd = json!({"args": ["/bin/sleep", "600"]});
    let path = format!("/api/v1/containers/{id}/command");
    let (st, body) = send(&s, reqwest::Method::PUT, &path, Some(cmd)).await;
    assert_eq!(st, 200, "{body}");
    let (st, body) = post(
        &s,
        &format!("/api/v1/containers/{id}/restart?timeout=0"),
        None,
    )
    .await;
    assert_eq!((st, &body["status"]), (200, &json!("running")), "{body}");
    let asked = Instant::now();
    let (st, stopped) = post(
        &s,
        &format!("/api/v1/containers/{id}/stop?timeout=60"),
        None,
    )
    .await;
    assert_eq!(st, 200, "{stopped}");
    assert_eq!(stopped["status"], "stopped");
    assert_eq!(stopped["exit_code"], 137, "killed: {stopped}");
    assert!(
        asked.elapsed() < Duration::from_secs(30),
        "the grace was waited out for a signal that was dropped: {:?}",
        asked.elapsed()
    );

    // Its shim killed from outside (the process runs on, unrecorded): a stop ends it
    // without waiting out the grace for a record nobody is left to write.
    let cmd =
        json!({"args": ["/bin/sh", "-c", "trap 'exit 0' TERM; while true; do sleep 1; done"]});
    let (st, body) = send(&s, reqwest::Method::PUT, &path, Some(cmd)).await;
    assert_eq!(st, 200, "{body}");
    let (st, body) = post(&s, &format!("/api/v1/containers/{id}/start"), None).await;
    assert_eq!((st, &body["status"]), (200, &json!("running")), "{body}");
    let shim = shim_of(&id).expect("the container's shim");
    assert_eq!(unsafe { libc::kill(shim, libc::SIGKILL) }, 0);
    let asked = Instant::now();
    let (st, stopped) = post(
        &s,
        &format!("/api/v1/containers/{id}/stop?timeout=60"),
        None,
    )
    .await;
    assert_eq!(st, 200, "{stopped}");
    assert_eq!(stopped["status"], "stopped", "{stopped}");
    assert!(
        asked.elapsed() < Duration::from_secs(30),
        "waited for a record no shim was left to write: {:?}",
        asked.elapsed()
    );

    // A process that ends on its own: stopped, with its exit code, within a few seconds.
    let cmd = json!({"args": ["/bin/sh", "-c", "echo about to fail; sleep 1; exit 3"]});
    let (st, body) = send(
        &s,
        reqwest::Method::PUT,
        &format!("/api/v1/containers/{id}/command"),
        Some(cmd),
    )
    .await;
    assert_eq!(st, 200, "{body}");
    let (st, _) = post(
        &s,
        &format!("/api/v1/containers/{id}/restart?timeout=0"),
        None,
    )
    .await;
    assert_eq!(st, 200);
    let ended = s.wait_status(&id, "stopped", 10).await;
    assert_eq!(ended["exit_code"], 3, "{ended}");
    assert!(ended["status_reason"].as_str().unwrap().contains("code 3"));

    // One that cannot start at all: 409 with the reason, recorded.
    let cmd = json!({"args": ["/no/such/program"]});
    send(
        &s,
        reqwest::Method::PUT,
        &format!("/api/v1/containers/{id}/command"),
        Some(cmd),
    )
    .await;
    let (st, body) = post(&s, &format!("/api/v1/containers/{id}/start"), None).await;
    assert_eq!(st, 409, "{body}");
    // runc's reason, not "its process exited at once with code 1": nothing ran.
    let said = body["error"]["message"].as_str().unwrap();
    assert!(
        said.contains("could not be run: exec") && said.contains("/no/such/program"),
        "{body}"
    );
    let c = container(&s, &id).await;
    assert_eq!(c["status"], "stopped");
    assert!(c["exit_code"].is_null(), "no process, no exit code: {c}");
    assert_eq!(
        c["status_reason"].as_str(),
        said.split_once(": ").map(|(_, r)| r),
        "{c}"
    );
    // ... and in the history: the failed start with its reason.
    let (_, jobs) = s
        .get(
            &format!("/api/v1/jobs?container_id={id}&kind=start"),
            &s.admin_token,
        )
        .await;
    let last = &jobs["jobs"][0];
    assert_eq!(last["status"], "failed", "{jobs}");
    assert!(
        last["error"].as_str().unwrap().contains("did not start"),
        "{jobs}"
    );

    // Bad commands and limits: 422 naming the field at fault, nothing stored.
    for (bad, field) in [
        (json!({"args": [""]}), "args"),
        (json!({"args": ["x"], "cwd": "relative"}), "cwd"),
        (json!({"args": ["x"], "env": ["NOEQUALS"]}), "env"),
        (json!({"args": ["x"], "env": ["A=b\u{0}c"]}), "env"),
    ] {
        let (st, body) = send(
            &s,
            reqwest::Method::PUT,
            &format!("/api/v1/containers/{id}/command"),
            Some(bad.clone()),
        )
        .await;
        assert_eq!(
            (st, body["error"]["field"].as_str()),
            (422, Some(field)),
            "{bad}: {body}"
        );
    }
    // Parameters out of range or malformed are refused naming the parameter; ones an
    // endpoint does not take, and a body where it takes none, are refused, not ignored.
    for (path, param) in [
        ("stop?timeout=301", "timeout"),
        ("stop?timeout=-1", "timeout"),
        ("restart?timeout=abc", "timeout"),
        ("start?timeout=1", "timeout"),
        ("start?foo=1", "foo"),
    ] {
        let (st, body) = post(&s, &format!("/api/v1/containers/{id}/{path}"), None).await;
        assert_eq!(
            (st, body["error"]["field"].as_str()),
            (400, Some(param)),
            "{path}: {body}"
        );
    }
    for verb in ["start", "stop", "restart"] {
        let path = format!("/api/v1/containers/{id}/{verb}");
        let (st, body) = post(&s, &path, Some(json!({"timeout": 1}))).await;
        assert_eq!(
            (st, body["error"]["field"].as_str()),
            (422, Some("timeout")),
            "{verb}: {body}"
        );
    }
    let (st, body) = s
        .get(
            &format!("/api/v1/containers/{id}/logs?lines=abc"),
            &s.admin_token,
        )
        .await;
    assert_eq!(
        (st, body["error"]["field"].as_str()),
        (400, Some("lines")),
        "{body}"
    );
    let (st, _) = s
        .get(
            &format!("/api/v1/containers/{id}/logs?lines=0"),
            &s.admin_token,
        )
        .await;
    assert_eq!(st, 400);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_operators_start_and_stop() {
    let s = TestServer::start().await;
    // alice is an operator of web-platform only.
    let data_db = s.container_id("db-primary").await;
    let resp = TestServer::client()
        .post(s.url(&format!("/api/v1/containers/{data_db}/stop")))
        .bearer_auth(&s.alice_token)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 404, "a container alice cannot see");
    assert_eq!(container(&s, &data_db).await["status"], "running");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn containers_outlive_a_kill_9_and_every_status_is_true_after_the_restart() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    let port = process::free_port();
    let base = format!("http://127.0.0.1:{port}");
    let client = reqwest::Client::new();
    let network = common::test_network().to_string();
    // Both starts on one network, as an operator's would be.
    let serve = || {
        let child = process::doppel(&data)
            .args([
                "serve",
                "--addr",
                &format!("127.0.0.1:{port}"),
                "--container-network",
                &network,
            ])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        process::Serving::adopt(child, &data)
    };
    let mut doppel = serve();
    process::wait_up(&client, &base).await;
    let token = process::admin_token(&data);
    let list = process::get_json(&client, format!("{base}/api/v1/containers"), &token).await;
    let by_name = |list: &Value, name: &str| -> String {
        list["containers"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["name"] == name)
            .unwrap()["id"]
            .as_str()
            .unwrap()
            .to_string()
    };
    let web = by_name(&list, "web-app");
    let etl = by_name(&list, "etl-worker");
    let get = |id: String| {
        let (client, base, token) = (client.clone(), base.clone(), token.clone());
        async move { process::get_json(&client, format!("{base}/api/v1/containers/{id}"), &token).await }
    };
    let before = get(web.clone()).await;
    assert_eq!(before["status"], "running", "{before}");
    assert_eq!(get(etl.clone()).await["status"], "running");

    doppel.kill().unwrap();
    doppel.wait().unwrap();
    // While doppel is gone: web-app keeps serving; etl-worker's process is killed.
    assert!(
        page(&before, "/").await.is_ok(),
        "containers run without doppel"
    );
    let runc_state = data.join("runc").display().to_string();
    let killed = std::process::Command::new("runc")
        .args(["--root", &runc_state, "kill", &etl, "KILL"])
        .status()
        .unwrap();
    assert!(killed.success());
    tokio::time::sleep(Duration::from_millis(500)).await;

    let mut doppel = serve();
    process::wait_up(&client, &base).await;
    let web_after = get(web.clone()).await;
    assert_eq!(web_after["status"], "running", "re-attached: {web_after}");
    assert_eq!(
        web_after["started_at"], before["started_at"],
        "the same process"
    );
    let etl_after = get(etl.clone()).await;
    assert_eq!(etl_after["status"], "stopped", "{etl_after}");
    assert_eq!(
        etl_after["exit_code"], 137,
        "killed by SIGKILL: {etl_after}"
    );
    // And the watch goes on: a stop through runc, behind doppel's back, is noticed.
    std::process::Command::new("runc")
        .args(["--root", &runc_state, "kill", &web, "KILL"])
        .status()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let c = get(web.clone()).await;
        if c["status"] == "stopped" {
            assert_eq!(c["exit_code"], 137);
            break;
        }
        assert!(Instant::now() < deadline, "not noticed: {c}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    doppel.kill().unwrap();
    doppel.wait().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_serves_the_page_sandboxed_without_doppel_credentials() {
    let s = TestServer::start().await;
    let id = s.container_id("web-app").await;
    let c = container(&s, &id).await;
    // A page that shows what the container was sent.
    let echo = root(&c).join("www/cgi-bin/echo");
    std::fs::write(
        &echo,
        "#!/bin/sh\necho 'Content-Type: text/plain'\necho 'Set-Cookie: doppel_session=stolen; Path=/'\necho\nenv\n",
    )
    .unwrap();
    std::fs::set_permissions(&echo, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let cookie = s.session("admin", &s.admin_password).await;
    let base = s.base.clone();
    let get = |path: String, cookie: Option<String>| {
        let url = format!("{base}{path}");
        async move {
            let mut req = TestServer::client().get(url);
            if let Some(c) = cookie {
                req = req.header("cookie", c);
            }
            req.send().await.unwrap()
        }
    };

    let resp = get(format!("/containers/{id}/open/"), Some(cookie.clone())).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["x-hostname"], "web-app");
    let csp = resp.headers()["content-security-policy"]
        .to_str()
        .unwrap()
        .to_string();
    assert!(csp.starts_with("sandbox"), "{csp}");
    assert!(resp.text().await.unwrap().contains("<h1>web-app</h1>"));

    let resp = get(
        format!("/containers/{id}/open/cgi-bin/echo?x=1"),
        Some(cookie.clone()),
    )
    .await;
    assert_eq!(resp.status(), 200);
    assert!(
        resp.headers().get("set-cookie").is_none(),
        "a page sets no doppel cookie"
    );
    let env = resp.text().await.unwrap();
    let session_value = cookie.split('=').nth(1).unwrap();
    assert!(env.contains("QUERY_STRING=x=1"), "{env}");
    assert!(
        !env.contains(session_value),
        "the visitor's session never reaches the page: {env}"
    );

    // Its headers: its own pass, none that act on doppel's origin; its redirects stay
    // inside it.
    let redirect = root(&c).join("www/cgi-bin/go");
    std::fs::write(
        &redirect,
        "#!/bin/sh\necho 'Status: 302 Found'\necho \"Location: $QUERY_STRING\"\necho 'Clear-Site-Data: \"cookies\"'\necho 'X-Served-By: the-page'\necho\n",
    )
    .unwrap();
    std::fs::set_permissions(
        &redirect,
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let resp = get(
        format!("/containers/{id}/open/cgi-bin/go?/elsewhere"),
        Some(cookie.clone()),
    )
    .await;
    assert_eq!(resp.status(), 302);
    assert_eq!(
        resp.headers()["location"],
        format!("/containers/{id}/open/elsewhere")
    );
    assert_eq!(resp.headers()["x-served-by"], "the-page");
    assert!(resp.headers().get("clear-site-data").is_none());
    let resp = get(
        format!("/containers/{id}/open/cgi-bin/go?https://elsewhere.example/"),
        Some(cookie.clone()),
    )
    .await;
    assert!(
        resp.headers().get("location").is_none(),
        "no way out of doppel's origin"
    );
    let resp = get("/containers/%0A/open".into(), Some(cookie.clone())).await;
    assert_eq!(resp.status(), 404);

    // Without a login: to the login page. A viewer-less stranger: 404. Stopped: 409.
    let resp = get(format!("/containers/{id}/open/"), None).await;
    assert_eq!(resp.status(), 303);
    let (st, _) = post(&s, &format!("/api/v1/containers/{id}/stop?timeout=1"), None).await;
    assert_eq!(st, 200);
    let resp = get(format!("/containers/{id}/open/"), Some(cookie.clone())).await;
    assert_eq!(resp.status(), 409);
    let resp = get(
        "/containers/000000000000000000000000/open/".into(),
        Some(cookie),
    )
    .await;
    assert_eq!(resp.status(), 404);
}

/// The demo's web-app and a copy of it in its project (`body` adds to the request), running.
async fn running_copy_of_web_app(s: &TestServer, mut body: Value) -> (Value, Value) {
    let source_id = s.container_id("web-app").await;
    let source = container(s, &source_id).await;
    body["target_project_id"] = s.project_id("web-platform").await.into();
    let (copy, _) = copy(s, &source_id, body).await;
    assert_eq!(copy["status"], "running", "{copy}");
    (source, copy)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sync_of_a_running_copy_is_down_only_for_its_final_pass() {
    let s = TestServer::start().await;
    // Its static address is replaced at its first start, and stays so on the next.
    let (source, copy) = running_copy_of_web_app(
        &s,
        json!({"name": "web-app-synced", "copy_network_rules": true}),
    )
    .await;
    let id = copy["id"].as_str().unwrap().to_string();

    std::fs::write(root(&source).join("www/content.html"), "<h1>edited</h1>\n").unwrap();
    let (st, body) = post(&s, &format!("/api/v1/containers/{id}/sync"), None).await;
    assert_eq!(st, 202, "{body}");
    let job = s.wait_job(body["job"]["url"].as_str().unwrap()).await;
    assert_eq!(job["status"], "succeeded", "{job}");
    let downtime = job["summary"]["downtime_ms"]
        .as_u64()
        .expect("downtime reported");
    assert!(downtime < 15_000, "{job}");
    assert_eq!(job["summary"]["files_changed"], 1, "{job}");
    let after = container(&s, &id).await;
    assert_eq!(after["status"], "running", "{after}");
    assert!(
        after["started_at"].as_i64() > copy["started_at"].as_i64(),
        "started again"
    );
    assert_eq!(
        page(&after, "/content.html").await.unwrap(),
        "<h1>edited</h1>\n"
    );
    assert!(page(&after, "/")
        .await
        .unwrap()
        .contains("Served by <b>web-app-synced</b>"));
    assert_eq!(
        read(&root(&after), "etc/hostname").trim(),
        "web-app-synced",
        "identity kept"
    );
    // Its summary counts both passes: the bytes the first moved, and a duration that holds
    // the downtime.
    let summary = &job["summary"];
    let moved: u64 = ["kernel_bytes", "content_bytes", "local_bytes"]
        .iter()
        .map(|k| summary[k].as_u64().unwrap())
        .sum();
    assert!(moved >= "<h1>edited</h1>\n".len() as u64, "{job}");
    assert!(
        summary["duration_ms"].as_u64().unwrap() >= downtime,
        "{job}"
    );

    // With nothing to change, the running copy is not stopped at all.
    let (st, body) = post(&s, &format!("/api/v1/containers/{id}/sync"), None).await;
    assert_eq!(st, 202, "{body}");
    let job = s.wait_job(body["job"]["url"].as_str().unwrap()).await;
    assert_eq!(job["status"], "succeeded", "{job}");
    assert!(job["summary"].get("downtime_ms").is_none(), "{job}");
    let unchanged = container(&s, &id).await;
    assert_eq!(unchanged["status"], "running", "{unchanged}");
    assert_eq!(
        unchanged["started_at"], after["started_at"],
        "not restarted"
    );

    // A stopped copy is synced as it is (no downtime to speak of), then started: as the
    // contract says, the target is running once its job is done.
    let (st, _) = post(&s, &format!("/api/v1/containers/{id}/stop"), None).await;
    assert_eq!(st, 200);
    std::fs::write(root(&source).join("www/content.html"), "<h1>again</h1>\n").unwrap();
    let (_, body) = post(&s, &format!("/api/v1/containers/{id}/sync"), None).await;
    let job = s.wait_job(body["job"]["url"].as_str().unwrap()).await;
    assert_eq!(job["status"], "succeeded", "{job}");
    assert!(job["summary"].get("downtime_ms").is_none(), "{job}");
    let synced = container(&s, &id).await;
    assert_eq!(synced["status"], "running", "{synced}");
    assert_eq!(read(&root(&after), "www/content.html"), "<h1>again</h1>\n");
    assert_eq!(
        page(&synced, "/content.html").await.unwrap(),
        "<h1>again</h1>\n"
    );
}

/// A copy's process that ends on its own while a sync has the copy (`syncing`, which the
/// watch leaves alone) is not lost: the sync's notes say its exit code, its end is its
/// downtime's start, and it is started again, as a finished sync leaves its copy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_copy_whose_process_ends_during_a_sync_is_said_and_started_again() {
    let s = TestServer::start().await;
    let (source, copy) = running_copy_of_web_app(&s, json!({"name": "web-app-ends"})).await;
    let id = copy["id"].as_str().unwrap().to_string();

    // A change the sync lays down for several seconds (512 KiB at 64 KiB a second).
    let big: Vec<u8> = (0..512 * 1024u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    std::fs::write(root(&source).join("www/big.bin"), &big).unwrap();
    let (st, body) = post(
        &s,
        &format!("/api/v1/containers/{id}/sync?bwlimit=64K"),
        None,
    )
    .await;
    assert_eq!(st, 202, "{body}");
    let job_url = body["job"]["url"].as_str().unwrap().to_string();
    s.wait_status(&id, "syncing", 10).await;
    // Its process killed from outside while the first pass runs (as if it crashed).
    let runc_state = s.data_dir.path().join("runc");
    let killed = std::process::Command::new("runc")
        .arg("--root")
        .arg(&runc_state)
        .args(["kill", &id, "KILL"])
        .status()
        .unwrap();
    assert!(killed.success());

    let job = s.wait_job(&job_url).await;
    assert_eq!(job["status"], "succeeded", "{job}");
    let notes = job["summary"]["notes"].to_string();
    assert!(
        notes
            .contains("the copy's process had exited with code 137 during the sync; started again"),
        "{job}"
    );
    assert!(job["summary"]["downtime_ms"].as_u64().is_some(), "{job}");
    let after = container(&s, &id).await;
    assert_eq!(after["status"], "running", "{after}");
    assert!(
        after["started_at"].as_i64() > copy["started_at"].as_i64(),
        "started again: {after}"
    );
    assert_eq!(
        std::fs::read(root(&after).join("www/big.bin")).unwrap(),
        big
    );
    assert!(page(&after, "/").await.is_ok(), "it serves again");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_stops_and_removes_a_container_and_its_copies_stay() {
    let s = TestServer::start().await;
    let web = s.project_id("web-platform").await;
    let id = s.container_id("web-app").await;
    let c = container(&s, &id).await;
    assert_eq!(c["status"], "running");
    let tree = root(&c);
    let server_root = tree.parent().unwrap().parent().unwrap().to_path_buf();

    // Not by someone who cannot see it.
    let data_db = s.container_id("db-primary").await;
    let resp = TestServer::client()
        .delete(s.url(&format!("/api/v1/containers/{data_db}")))
        .bearer_auth(&s.alice_token)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 404);

    let (st, body) = send(
        &s,
        reqwest::Method::DELETE,
        &format!("/api/v1/containers/{id}"),
        None,
    )
    .await;
    assert_eq!(st, 202, "{body}");
    assert_eq!(body["job"]["kind"], "delete");
    let job = s.wait_job(body["job"]["url"].as_str().unwrap()).await;
    assert_eq!(job["status"], "succeeded", "{job}");

    let (st, _) = s
        .get(&format!("/api/v1/containers/{id}"), &s.admin_token)
        .await;
    assert_eq!(st, 404, "gone from the API");
    assert!(s.containers().await.iter().all(|c| c["id"] != id.as_str()));
    assert!(!tree.exists(), "its tree is removed");
    assert!(
        !server_root.join("snapshots").join(&id).exists(),
        "and its snapshots"
    );
    assert!(
        !server_root.join("state").join(&id).exists(),
        "and its engine state"
    );
    assert!(
        !server_root.join("runtime").join(&id).exists(),
        "and its bundle"
    );
    assert!(page(&c, "/").await.is_err(), "its process is stopped");
    let namespaces = std::process::Command::new("ip")
        .args(["netns", "list"])
        .output()
        .unwrap();
    assert!(
        !String::from_utf8_lossy(&namespaces.stdout).contains(&id),
        "its namespace is gone"
    );

    // Its copy stays, and says why it cannot be synced.
    let staging = s.container_id("web-app-staging").await;
    let (st, body) = post(&s, &format!("/api/v1/containers/{staging}/sync"), None).await;
    assert_eq!(st, 409, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("deleted"),
        "{body}"
    );
    // Its name is free again; a second delete finds nothing.
    let (copy, _) = copy(
        &s,
        &staging,
        json!({"target_project_id": web, "name": "web-app"}),
    )
    .await;
    assert_eq!(copy["status"], "running");
    let (st, _) = send(
        &s,
        reqwest::Method::DELETE,
        &format!("/api/v1/containers/{id}"),
        None,
    )
    .await;
    assert_eq!(st, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn containers_started_together_get_addresses_of_their_own() {
    let s = TestServer::start().await;
    let etl = s.container_id("etl-worker").await;
    let edge = s.container_id("edge-proxy").await;
    let (st, _) = post(
        &s,
        &format!("/api/v1/containers/{etl}/stop?timeout=1"),
        None,
    )
    .await;
    assert_eq!(st, 200);
    // Neither has an address kept from before on this network: both are planned now.
    for id in [&etl, &edge] {
        let body = json!({"rules": [{"interface": "eth0", "network": "fresh"}]});
        let (st, b) = send(
            &s,
            reqwest::Method::PUT,
            &format!("/api/v1/containers/{id}/network-rules"),
            Some(body),
        )
        .await;
        assert_eq!(st, 200, "{b}");
    }
    let (start_etl, start_edge) = (
        format!("/api/v1/containers/{etl}/start"),
        format!("/api/v1/containers/{edge}/start"),
    );
    let (a, b) = tokio::join!(post(&s, &start_etl, None), post(&s, &start_edge, None));
    assert_eq!((a.0, b.0), (200, 200), "{a:?} {b:?}");
    assert_ne!(address(&a.1), address(&b.1));
    assert!(page(&a.1, "/").await.is_ok() && page(&b.1, "/").await.is_ok());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn containers_of_two_projects_never_share_a_network() {
    let s = TestServer::start().await;
    // web-app and edge-proxy are web-platform's, web-app on its `web-frontend` network;
    // etl-worker is data-pipeline's, without rules: on its project's `default` network.
    // edge-proxy (stopped in the demo) joins web-platform's `web-frontend` and `default`,
    // a name etl-worker's network has too, on the same server.
    let edge = s.container_id("edge-proxy").await;
    let rules = json!({"rules": [
        {"interface": "eth0", "network": "web-frontend"},
        {"interface": "eth1", "network": "default"},
    ]});
    let path = format!("/api/v1/containers/{edge}/network-rules");
    let (st, body) = send(&s, reqwest::Method::PUT, &path, Some(rules)).await;
    assert_eq!(st, 200, "{body}");
    let (st, body) = post(&s, &format!("/api/v1/containers/{edge}/start"), None).await;
    assert_eq!(st, 200, "{body}");
    let mut running = Vec::new();
    for name in ["web-app", "edge-proxy", "etl-worker"] {
        let id = s.container_id(name).await;
        running.push(s.wait_status(&id, "running", 30).await);
    }
    let [web_app, edge, etl] = &running[..] else {
        unreachable!()
    };
    assert_eq!(
        subnet(web_app, 0),
        subnet(edge, 0),
        "one project, one network"
    );
    assert_eq!(etl["server_id"], edge["server_id"]);
    assert_eq!(etl["interfaces"][0]["network"], "default");
    assert_eq!(edge["interfaces"][1]["network"], "default");
    assert_ne!(
        subnet(etl, 0),
        subnet(edge, 1),
        "one name, two projects, two networks"
    );
    // Both pages are up (the host reaches every container)...
    assert!(page(web_app, "/").await.is_ok() && page(etl, "/").await.is_ok());
    // ...but from edge-proxy only its own project's container is reachable.
    let (a, b) = (address(web_app), address(etl));
    let said = probe(&s, edge["id"].as_str().unwrap(), &[(&a, 80), (&b, 80)]).await;
    assert!(said.contains("SELF-OK"), "the probe works: {said}");
    assert!(said.contains(&format!("REACHED {a}")), "{said}");
    assert!(
        said.contains(&format!("BLOCKED {b}")),
        "another project's container: {said}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_static_address_that_could_never_be_had_is_refused_when_set() {
    let s = TestServer::start().await;
    let web_app = s.container_id("web-app").await;
    let etl = s.container_id("etl-worker").await;
    // web-app is on web-platform's `web-frontend`; etl-worker on data-pipeline's `default`.
    let ours = subnet(&s.wait_status(&web_app, "running", 30).await, 0);
    let theirs = subnet(&s.wait_status(&etl, "running", 30).await, 0);
    let set = |network: &str, ipv4: String| {
        let rules = json!({"rules": [{"interface": "eth0", "network": network, "ipv4": ipv4}]});
        let s = &s;
        let path = format!("/api/v1/containers/{web_app}/network-rules");
        async move { send(s, reqwest::Method::PUT, &path, Some(rules)).await }
    };
    for (network, ipv4, why) in [
        (
            "web-frontend",
            format!("{ours}.1/24"),
            "not a container address",
        ),
        (
            "web-frontend",
            format!("{ours}.0/24"),
            "not a container address",
        ),
        (
            "web-frontend",
            format!("{ours}.255/24"),
            "not a container address",
        ),
        // A new network whose subnet is another project's: it would get another.
        ("lab", format!("{theirs}.50/24"), "overlaps another network"),
        // Another prefix than the network's: the interface would get the network's.
        (
            "web-frontend",
            format!("{ours}.20/28"),
            "network web-frontend is",
        ),
    ] {
        let (st, body) = set(network, ipv4.clone()).await;
        assert_eq!(st, 422, "{ipv4}: {body}");
        assert_eq!(body["error"]["field"], "rules[0]", "{body}");
        let msg = body["error"]["message"].as_str().unwrap();
        assert!(msg.contains(why), "{ipv4}: {body}");
    }
    let (_, c) = s
        .get(&format!("/api/v1/containers/{web_app}"), &s.admin_token)
        .await;
    assert_eq!(
        c["network_rules"][0]["network"], "web-frontend",
        "nothing changed: {c}"
    );
    // One it can have is kept, and is its address at the next start.
    let (st, body) = set("web-frontend", format!("{ours}.77/24")).await;
    assert_eq!(st, 200, "{body}");
    let path = format!("/api/v1/containers/{web_app}/restart?timeout=1");
    let (st, restarted) = post(&s, &path, None).await;
    assert_eq!(st, 200, "{restarted}");
    assert_eq!(address(&restarted), format!("{ours}.77"));
}

/// A stop whose kill fails (runc refuses it here, as it would for a process stuck in
/// uninterruptible sleep) is a 409 that says so, and the container stays `running`: its
/// process does. Once runc obeys again, the stop goes through.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stop_that_could_not_stop_the_process_leaves_the_container_running() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    // runc itself, except that `kill` and `delete` fail while the file `refuse` exists.
    let bin = tmp.path().join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    let refuse = tmp.path().join("refuse");
    let runc = which_runc();
    std::fs::write(
        bin.join("runc"),
        format!(
            "#!/bin/sh\nfor a in \"$@\"; do case \"$a\" in kill|delete) \
             [ -e '{}' ] && {{ echo 'refused by the test' >&2; exit 1; }};; esac; done\n\
             exec '{}' \"$@\"\n",
            refuse.display(),
            runc.display()
        ),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(bin.join("runc"), std::fs::Permissions::from_mode(0o755)).unwrap();
    let path = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let port = process::free_port();
    let base = format!("http://127.0.0.1:{port}");
    let client = reqwest::Client::new();
    let child = process::doppel(&data)
        .args(["serve", "--addr", &format!("127.0.0.1:{port}")])
        .arg("--container-network")
        .arg(common::test_network().to_string())
        .env("PATH", path)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let _doppel = process::Serving::adopt(child, &data);
    process::wait_up(&client, &base).await;
    let token = process::admin_token(&data);
    let list = process::get_json(&client, format!("{base}/api/v1/containers"), &token).await;
    let etl = list["containers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "etl-worker")
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let get = || process::get_json(&client, format!("{base}/api/v1/containers/{etl}"), &token);
    assert_eq!(get().await["status"], "running");
    let stop = || async {
        let resp = client
            .post(format!("{base}/api/v1/containers/{etl}/stop?timeout=0"))
            .bearer_auth(&token)
            .send()
            .await
            .unwrap();
        (resp.status().as_u16(), resp.json::<Value>().await.unwrap())
    };

    std::fs::write(&refuse, "").unwrap();
    let (st, body) = stop().await;
    assert_eq!(st, 409, "{body}");
    let said = body.to_string();
    assert!(
        said.contains("not stopped") && said.contains("still runs"),
        "{body}"
    );
    let after = get().await;
    assert_eq!(after["status"], "running", "its process runs: {after}");
    let runc_state = data.join("runc").display().to_string();
    let listed = std::process::Command::new(&runc)
        .args(["--root", &runc_state, "state", &etl])
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&listed.stdout).contains("\"running\""),
        "runc still runs it: {listed:?}"
    );

    // A delete needs the process stopped too: it fails, and the container runs on, saying
    // why (not `failed`, its tree still there).
    let resp = client
        .delete(format!("{base}/api/v1/containers/{etl}"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 202);
    let body: Value = resp.json().await.unwrap();
    let job_url = format!("{base}{}", body["job"]["url"].as_str().unwrap());
    let deadline = Instant::now() + Duration::from_secs(60);
    let ended = loop {
        let j = process::get_json(&client, job_url.clone(), &token).await;
        if j["status"] != "queued" && j["status"] != "running" {
            break j;
        }
        assert!(Instant::now() < deadline, "the delete did not end: {j}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(ended["status"], "failed", "{ended}");
    assert!(
        ended["error"]
            .as_str()
            .is_some_and(|e| e.contains("could not be stopped")),
        "{ended}"
    );
    let after = get().await;
    assert_eq!(after["status"], "running", "{after}");
    assert!(
        after["status_reason"]
            .as_str()
            .is_some_and(|r| r.contains("delete it again")),
        "{after}"
    );
    assert!(root(&after).exists(), "its tree is still there");

    std::fs::remove_file(&refuse).unwrap();
    let (st, body) = stop().await;
    assert_eq!((st, &body["status"]), (200, &json!("stopped")), "{body}");
}

/// runc as this host has it (the test's PATH, or where Debian puts it).
fn which_runc() -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/local/sbin", "/usr/sbin", "/sbin"].map(PathBuf::from))
        .map(|d| d.join("runc"))
        .find(|p| p.is_file())
        .expect("runc is installed")
}
