//! Copy and sync over the API: the contract's curl examples run as written, validation and
//! authorisation, idempotency, snapshots, cancellation and server-sent events.

mod common;

use std::time::Duration;

use common::TestServer;
use serde_json::{json, Value};

async fn server_id(s: &TestServer, name: &str) -> String {
    let (_, body) = s.get("/api/v1/servers", &s.admin_token).await;
    body["servers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == name)
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string()
}

async fn post(
    s: &TestServer,
    path: &str,
    token: &str,
    body: Option<Value>,
    key: Option<&str>,
) -> (u16, Value, Option<String>) {
    let mut req = TestServer::client().post(s.url(path)).bearer_auth(token);
    if let Some(b) = body {
        req = req.json(&b);
    }
    if let Some(k) = key {
        req = req.header("idempotency-key", k);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    let location = resp
        .headers()
        .get("location")
        .map(|v| v.to_str().unwrap().to_string());
    (status, resp.json().await.unwrap_or(Value::Null), location)
}

/// `POST /containers/{source}/copy` of `body` as the admin: the answer, and the job once
/// it has ended.
async fn copy_and_wait(s: &TestServer, source: &str, body: Value) -> (Value, Value) {
    let (st, started, _) = post(
        s,
        &format!("/api/v1/containers/{source}/copy"),
        &s.admin_token,
        Some(body),
        None,
    )
    .await;
    assert_eq!(st, 202, "{started}");
    let done = s.wait_job(started["job"]["id"].as_str().unwrap()).await;
    (started, done)
}

/// `POST /containers/{copy}/sync` as the admin, and the job once it has ended.
async fn sync_and_wait(s: &TestServer, copy: &str) -> Value {
    let (st, body, _) = post(
        s,
        &format!("/api/v1/containers/{copy}/sync"),
        &s.admin_token,
        None,
        None,
    )
    .await;
    assert_eq!(st, 202, "{body}");
    s.wait_job(body["job"]["id"].as_str().unwrap()).await
}

/// `POST /containers/{source}/copy` as the holder of `token`.
async fn copy_as(
    s: &TestServer,
    token: &str,
    source: &str,
    body: Value,
) -> (u16, Value, Option<String>) {
    post(
        s,
        &format!("/api/v1/containers/{source}/copy"),
        token,
        Some(body),
        None,
    )
    .await
}

/// Runs curl (asynchronously: the server under test shares this runtime).
async fn curl(args: &[&str]) -> (u16, Value) {
    let out = tokio::process::Command::new("curl")
        .args(["-s", "-w", "\n%{http_code}"])
        .args(args)
        .output()
        .await
        .expect("curl runs");
    let text = String::from_utf8(out.stdout).unwrap();
    let (body, code) = text.rsplit_once('\n').unwrap();
    (
        code.trim().parse().unwrap(),
        serde_json::from_str(body).unwrap_or(Value::Null),
    )
}

/// A tmpfs mounted over a server's storage root for a test, so the server is on another
/// filesystem than the others (the kernel cannot copy between them: content streams, or
/// comes from what that server holds); unmounted when dropped, whatever the test did.
struct OtherFilesystem(std::path::PathBuf);

impl OtherFilesystem {
    async fn under(s: &TestServer, server: &str) -> OtherFilesystem {
        let (_, body) = s.get("/api/v1/servers", &s.admin_token).await;
        let root = body["servers"]
            .as_array()
            .unwrap()
            .iter()
            .find(|x| x["name"] == server)
            .unwrap()["storage_root"]
            .as_str()
            .unwrap()
            .to_string();
        let root = std::path::PathBuf::from(root);
        std::fs::create_dir_all(&root).unwrap();
        let ok = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=256m", "tmpfs"])
            .arg(&root)
            .status()
            .unwrap();
        assert!(ok.success(), "mounting a tmpfs needs root");
        std::fs::create_dir_all(root.join("containers")).unwrap();
        OtherFilesystem(root)
    }
}

impl Drop for OtherFilesystem {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .status();
    }
}

fn tree_root(c: &Value) -> std::path::PathBuf {
    std::path::PathBuf::from(c["root_path"].as_str().unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_copy_that_cannot_have_a_key_of_its_own_fails_saying_why_and_leaves_no_tree() {
    let s = TestServer::start().await;
    let source = s.container_id("edge-proxy").await;
    let project = s.project_id("web-platform").await;
    let (_, src) = s
        .get(&format!("/api/v1/containers/{source}"), &s.admin_token)
        .await;
    // The source's root/.ssh leads elsewhere in its tree: the copy's authorized_keys
    // would have no place of its own (a sync would bring the source's back there).
    let home = tree_root(&src).join("root");
    std::fs::create_dir_all(home.join("keys")).unwrap();
    let _ = std::fs::remove_dir_all(home.join(".ssh"));
    std::os::unix::fs::symlink("keys", home.join(".ssh")).unwrap();
    let key = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIAABAgMEBQYHCAkKCwwNDg8QERITFBUWFxgZGhscHR4f me@laptop";
    let (started, done) = copy_and_wait(
        &s,
        &source,
        json!({"target_project_id": project, "name": "keyed", "ssh_public_key": key}),
    )
    .await;
    assert_eq!(done["status"], "failed", "{done}");
    let error = done["error"].as_str().unwrap();
    assert!(error.contains("root/.ssh is a symlink"), "{error}");
    let (_, copy) = s
        .get(
            &format!(
                "/api/v1/containers/{}",
                started["container"]["id"].as_str().unwrap()
            ),
            &s.admin_token,
        )
        .await;
    assert_eq!(copy["status"], "failed", "{copy}");
    assert!(
        !tree_root(&copy).exists(),
        "a copy with its source's identity is no copy: its tree is gone"
    );
    assert!(
        !home.join("keys/authorized_keys").exists(),
        "nothing written through the link"
    );

    // Without a key the copy is made, and says whose keys the link leads to.
    let (_, done) = copy_and_wait(
        &s,
        &source,
        json!({"target_project_id": project, "name": "keyless"}),
    )
    .await;
    assert_eq!(done["status"], "succeeded", "{done}");
    let notes = done["summary"]["notes"].to_string();
    assert!(notes.contains("root/.ssh is a symlink"), "{notes}");
}

#[tokio::test]
async fn the_contract_curl_examples_work_as_written() {
    let s = TestServer::start().await;
    let source = s.container_id("web-app").await;
    let target_project = s.project_id("data-pipeline").await;
    let target_server = server_id(&s, "local-c").await;

    // POST /copy, exactly the contract's example with real ids.
    let (status, body) = curl(&[
        "-X",
        "POST",
        &s.url(&format!("/api/v1/containers/{source}/copy")),
        "-H",
        &format!("Authorization: Bearer {}", s.admin_token),
        "-H",
        "Content-Type: application/json",
        "-d",
        &format!(
            r#"{{
    "target_project_id": "{target_project}",
    "target_server_id": "{target_server}",
    "name": "web-app-staging",
    "copy_firewall_rules": true,
    "copy_network_rules": true
  }}"#
        ),
    ])
    .await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(body["container"]["status"], "copying");
    assert_eq!(body["container"]["name"], "web-app-staging");
    let job = &body["job"];
    assert_eq!(job["kind"], "copy");
    assert_eq!(
        job["url"],
        format!("/api/v1/jobs/{}", job["id"].as_str().unwrap())
    );
    assert_eq!(
        job["events_url"],
        format!("/api/v1/jobs/{}/events", job["id"].as_str().unwrap())
    );
    let done = s.wait_job(job["id"].as_str().unwrap()).await;
    assert_eq!(done["status"], "succeeded", "{done}");
    assert_eq!(done["progress"]["percent"], 100.0);
    // Where it ended: its transfer whole, not the last phase's count of nothing.
    let progress = &done["progress"];
    assert_eq!(progress["bytes_done"], progress["bytes_total"], "{done}");
    assert_eq!(progress["files_done"], progress["files_total"], "{done}");
    assert!(progress["files_done"].as_u64().unwrap() > 0, "{done}");

    let copy_id = body["container"]["id"].as_str().unwrap().to_string();
    let (_, copy) = s
        .get(&format!("/api/v1/containers/{copy_id}"), &s.admin_token)
        .await;
    let (_, src) = s
        .get(&format!("/api/v1/containers/{source}"), &s.admin_token)
        .await;
    assert_eq!(copy["status"], "running", "a copy starts automatically");
    assert_eq!(copy["server_name"], "local-c");
    assert_eq!(copy["project_name"], "data-pipeline");
    assert_eq!(copy["firewall_rules"], src["firewall_rules"]);
    // The source's network rules, but for a static address the copy could not have on
    // its server (another /24 there): its rule holds the address it got instead.
    let without_address = |rules: &Value| {
        let mut rules = rules.clone();
        for r in rules.as_array_mut().unwrap() {
            r.as_object_mut().unwrap().remove("ipv4");
        }
        rules
    };
    assert_eq!(
        without_address(&copy["network_rules"]),
        without_address(&src["network_rules"])
    );
    assert_eq!(
        copy["network_rules"][0]["ipv4"], copy["interfaces"][0]["ipv4"],
        "{copy}"
    );
    assert!(copy["ssh_public_key"].is_null(), "never inherited");
    assert_eq!(copy["source"]["id"], source.as_str());
    assert_eq!(copy["file_count"], src["file_count"]);
    assert!(copy["source_state"].is_string());
    let (src_root, copy_root) = (tree_root(&src), tree_root(&copy));
    assert_eq!(
        std::fs::read(copy_root.join("var/lib/web-app/data-00.db")).unwrap(),
        std::fs::read(src_root.join("var/lib/web-app/data-00.db")).unwrap()
    );

    // Change the source, then POST /sync exactly as the contract shows.
    std::fs::write(src_root.join("etc/web-app/config.toml"), b"port = 9090\n").unwrap();
    std::fs::write(src_root.join("etc/new-file"), b"added").unwrap();
    std::fs::remove_file(src_root.join("var/log/web-app/access-01.log")).unwrap();
    let (status, body) = curl(&[
        "-X",
        "POST",
        &s.url(&format!("/api/v1/containers/{copy_id}/sync")),
        "-H",
        &format!("Authorization: Bearer {}", s.admin_token),
    ])
    .await;
    assert_eq!(status, 202, "{body}");
    let done = s.wait_job(body["job"]["id"].as_str().unwrap()).await;
    assert_eq!(done["status"], "succeeded", "{done}");
    let summary = &done["summary"];
    assert_eq!(summary["files_added"], 1, "{summary}");
    assert_eq!(summary["files_deleted"], 1, "{summary}");
    assert!(summary["files_changed"].as_u64().unwrap() >= 1, "{summary}");
    assert_eq!(summary["drift"], 0);
    assert!(
        summary["bytes_sent"].as_u64().unwrap() < 100_000,
        "only the change travels: {summary}"
    );
    assert_eq!(
        std::fs::read(copy_root.join("etc/web-app/config.toml")).unwrap(),
        b"port = 9090\n"
    );
    assert!(!copy_root.join("var/log/web-app/access-01.log").exists());
    let (_, copy) = s
        .get(&format!("/api/v1/containers/{copy_id}"), &s.admin_token)
        .await;
    assert_eq!(
        copy["status"], "running",
        "back to its status after the sync"
    );
}

#[tokio::test]
async fn copy_validation_answers_each_mistake_with_its_status() {
    let s = TestServer::start().await;
    let source = s.container_id("web-app").await;
    let web = s.project_id("web-platform").await;
    let data = s.project_id("data-pipeline").await;
    let copy = |body: Value| {
        let s = &s;
        let source = source.clone();
        async move {
            post(
                s,
                &format!("/api/v1/containers/{source}/copy"),
                &s.admin_token,
                Some(body),
                None,
            )
            .await
        }
    };
    let key = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIAABAgMEBQYHCAkKCwwNDg8QERITFBUWFxgZGhscHR4f me@laptop";
    let cases: Vec<(Value, u16, &str)> = vec![
        (json!({}), 422, "unprocessable"),
        (
            json!({"target_project_id": web, "colour": "red"}),
            422,
            "unprocessable",
        ),
        (
            json!({"target_project_id": web, "copy_firewall_rules": "yes"}),
            422,
            "unprocessable",
        ),
        (json!({"target_project_id": "nope"}), 400, "invalid_request"),
        (
            json!({"target_project_id": "000000000000000000000000"}),
            404,
            "not_found",
        ),
        (
            json!({"target_project_id": web, "target_server_id": "000000000000000000000000"}),
            404,
            "not_found",
        ),
        (
            json!({"target_project_id": web, "name": "Bad Name!"}),
            422,
            "unprocessable",
        ),
        (
            json!({"target_project_id": web, "name": "web-app-staging"}),
            409,
            "conflict",
        ),
        (
            json!({"target_project_id": web, "ssh_public_key": "ssh-ed25519 garbage"}),
            422,
            "unprocessable",
        ),
        (
            json!({"target_project_id": web, "source_snapshot": "no-such-snapshot"}),
            422,
            "unprocessable",
        ),
    ];
    for (body, status, code) in cases {
        let (st, resp, _) = copy(body.clone()).await;
        assert_eq!(st, status, "{body}: {resp}");
        assert_eq!(resp["error"]["code"], code, "{body}: {resp}");
    }
    // A body that is not the request names the field and says what is wrong in JSON's
    // terms, never in Rust's.
    for (body, field, says) in [
        (
            json!({}),
            Some("target_project_id"),
            "target_project_id is required",
        ),
        (
            json!({"target_project_id": web, "colour": "red"}),
            Some("colour"),
            "colour is not a field of this request",
        ),
        (
            json!({"target_project_id": web, "copy_firewall_rules": "yes"}),
            Some("copy_firewall_rules"),
            "copy_firewall_rules must be a boolean",
        ),
        (
            json!({"target_project_id": 123}),
            Some("target_project_id"),
            "target_project_id must be a string",
        ),
        (json!([]), None, "the body must be a JSON object"),
    ] {
        let (st, resp, _) = copy(body.clone()).await;
        assert_eq!(st, 422, "{body}: {resp}");
        assert_eq!(resp["error"]["field"].as_str(), field, "{body}: {resp}");
        let message = resp["error"]["message"].as_str().unwrap();
        assert!(message.contains(says), "{body}: {resp}");
        assert!(
            !message.contains("struct") && !message.contains("CopyRequest"),
            "{body}: {resp}"
        );
    }
    // `null` is absent, for the flags as for the optional strings.
    let (st, nulls, _) = copy(json!({
        "target_project_id": data, "name": "nulls", "target_server_id": null,
        "copy_firewall_rules": null, "copy_network_rules": null
    }))
    .await;
    assert_eq!(st, 202, "{nulls}");
    assert_eq!(nulls["container"]["firewall_rules"], json!([]));
    s.wait_job(nulls["job"]["id"].as_str().unwrap()).await;
    // A body beyond what doppel reads: 413, saying the limit.
    let resp = TestServer::client()
        .post(s.url(&format!("/api/v1/containers/{source}/copy")))
        .bearer_auth(&s.admin_token)
        .json(&json!({"target_project_id": web, "name": "a".repeat(3 << 20)}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 413);
    let resp: Value = resp.json().await.unwrap();
    assert!(
        resp["error"]["message"].as_str().unwrap().contains("2 MiB"),
        "{resp}"
    );

    // A taken name is named as such (the unique index decides, the message explains).
    let (_, resp, _) = copy(json!({"target_project_id": web, "name": "web-app-staging"})).await;
    assert_eq!(
        resp["error"]["message"],
        "a container named \"web-app-staging\" already exists in the target project"
    );
    // Names are host names: taken whatever their case.
    let (st, resp, _) = copy(json!({"target_project_id": web, "name": "Web-App-Staging"})).await;
    assert_eq!(st, 409, "{resp}");
    assert_eq!(resp["error"]["field"], "name", "{resp}");
    let resp = TestServer::client()
        .post(s.url(&format!("/api/v1/containers/{source}/copy")))
        .bearer_auth(&s.admin_token)
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    let (st, _, _) = post(
        &s,
        "/api/v1/containers/000000000000000000000000/copy",
        &s.admin_token,
        Some(json!({"target_project_id": web})),
        None,
    )
    .await;
    assert_eq!(st, 404);

    // Defaults: generated name, same server, no rules; a key is unique across containers.
    let (st, first, location) =
        copy(json!({"target_project_id": data, "ssh_public_key": key})).await;
    assert_eq!(st, 202, "{first}");
    assert_eq!(first["container"]["name"], "web-app-copy");
    assert_eq!(first["container"]["server_name"], "local-a");
    assert_eq!(first["container"]["firewall_rules"], json!([]));
    assert_eq!(first["container"]["network_rules"], json!([]));
    assert_eq!(location.as_deref(), first["job"]["url"].as_str());
    let (st, resp, _) = copy(
        json!({"target_project_id": data, "ssh_public_key": key.replace("me@laptop", "other")}),
    )
    .await;
    assert_eq!(st, 409, "same key, other comment: {resp}");
    let (st, second, _) = copy(json!({"target_project_id": data})).await;
    assert_eq!(st, 202);
    assert_eq!(second["container"]["name"], "web-app-copy-2");
    s.wait_job(first["job"]["id"].as_str().unwrap()).await;
    s.wait_job(second["job"]["id"].as_str().unwrap()).await;

    // Copies asked for at once, none with a name: each gets the next free name, none a
    // 409 for a name the client never sent.
    let burst: Vec<_> = (0..8)
        .map(|_| copy(json!({"target_project_id": data})))
        .collect();
    let mut names = std::collections::BTreeSet::new();
    for (st, started, _) in futures::future::join_all(burst).await {
        assert_eq!(st, 202, "{started}");
        names.insert(started["container"]["name"].as_str().unwrap().to_string());
        s.wait_job(started["job"]["id"].as_str().unwrap()).await;
    }
    let wanted: std::collections::BTreeSet<String> =
        (3..11).map(|n| format!("web-app-copy-{n}")).collect();
    assert_eq!(names, wanted);

    // The jobs list in pages: `limit` of them, then those `before` the last one seen.
    let (st, all) = s
        .get("/api/v1/jobs?kind=copy&limit=500", &s.admin_token)
        .await;
    assert_eq!(st, 200, "{all}");
    let all: Vec<String> = all["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|j| j["id"].as_str().unwrap().to_string())
        .collect();
    assert!(all.len() >= 10, "{all:?}");
    let mut paged = Vec::new();
    let mut before = String::new();
    loop {
        let (st, page) = s
            .get(
                &format!("/api/v1/jobs?kind=copy&limit=3{before}"),
                &s.admin_token,
            )
            .await;
        assert_eq!(st, 200, "{page}");
        let page = page["jobs"].as_array().unwrap().clone();
        assert!(page.len() <= 3);
        let Some(last) = page.last() else { break };
        before = format!("&before={}", last["id"].as_str().unwrap());
        paged.extend(page.iter().map(|j| j["id"].as_str().unwrap().to_string()));
    }
    assert_eq!(
        paged, all,
        "the pages, one after the other, are the whole list"
    );
    // The console's jobs page pages the same way.
    let cookie = s.session("admin", &s.admin_password).await;
    let (st, html) = s
        .page(&format!("/jobs?kind=copy&before={}", all[0]), &cookie)
        .await;
    assert_eq!(st, 200);
    assert!(html.contains("Newest jobs"), "{html}");
    assert!(
        !html.contains(&format!("data-job-id=\"{}\"", all[0])),
        "{html}"
    );
    assert!(
        html.contains(&format!("data-job-id=\"{}\"", all[1])),
        "{html}"
    );
}

#[tokio::test]
async fn members_cannot_copy_from_or_into_other_projects_nor_see_their_jobs() {
    let s = TestServer::start().await;
    let web_app = s.container_id("web-app").await;
    let db_primary = s.container_id("db-primary").await;
    let web = s.project_id("web-platform").await;
    let data = s.project_id("data-pipeline").await;
    let t = &s.alice_token;
    let (st, _, _) = copy_as(&s, t, &db_primary, json!({"target_project_id": web})).await;
    assert_eq!(st, 404, "copy from a project she cannot see");
    let (st, _, _) = copy_as(&s, t, &web_app, json!({"target_project_id": data})).await;
    assert_eq!(st, 404, "copy into a project she cannot see");
    let (st, ok, _) = copy_as(&s, t, &web_app, json!({"target_project_id": web})).await;
    assert_eq!(st, 202, "operator in her project: {ok}");
    s.wait_job(ok["job"]["id"].as_str().unwrap()).await;

    // The admin's job in the other project is invisible to her, in lists, by id and live.
    let (_, theirs, _) = copy_as(
        &s,
        &s.admin_token,
        &db_primary,
        json!({"target_project_id": data}),
    )
    .await;
    let their_job = theirs["job"]["id"].as_str().unwrap().to_string();
    s.wait_job(&their_job).await;
    let (st, _) = s.get(&format!("/api/v1/jobs/{their_job}"), t).await;
    assert_eq!(st, 404);
    let (st, _) = s.get(&format!("/api/v1/jobs/{their_job}/events"), t).await;
    assert_eq!(st, 404);
    let (_, jobs) = s.get("/api/v1/jobs", t).await;
    assert!(jobs["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .all(|j| j["project_id"] == web.as_str()));
    let (st, _, _) = post(
        &s,
        &format!("/api/v1/jobs/{their_job}/cancel"),
        t,
        None,
        None,
    )
    .await;
    assert_eq!(st, 404);

    // A viewer may look but not copy or sync.
    let db = s.service.db();
    let viewer = doppel::auth::create_user(db, "victor", None, false)
        .await
        .unwrap();
    doppel::service::inventory::add_member(db, &web, &viewer.id, app::model::Role::Viewer)
        .await
        .unwrap();
    let vt = doppel::auth::create_token(db, "victor", "t").await.unwrap();
    let (st, body, _) = copy_as(&s, &vt, &web_app, json!({"target_project_id": web})).await;
    assert_eq!(st, 403, "{body}");
    let staging = s.container_id("web-app-staging").await;
    let (st, _, _) = post(
        &s,
        &format!("/api/v1/containers/{staging}/sync"),
        &vt,
        None,
        None,
    )
    .await;
    assert_eq!(st, 403);
}

/// How many containers the admin sees with this name.
async fn containers_named(s: &TestServer, name: &str) -> usize {
    s.containers()
        .await
        .iter()
        .filter(|c| c["name"] == name)
        .count()
}

/// The copy endpoint of "web-app" and the id of the "web-platform" project.
async fn web_app_copy(s: &TestServer) -> (String, String) {
    let source = s.container_id("web-app").await;
    let web = s.project_id("web-platform").await;
    (format!("/api/v1/containers/{source}/copy"), web)
}

#[tokio::test]
async fn retries_with_an_idempotency_key_get_the_same_job() {
    let s = TestServer::start().await;
    let (path, web) = web_app_copy(&s).await;
    let body = json!({"target_project_id": web, "name": "once"});
    let (st, a, _) = post(
        &s,
        &path,
        &s.admin_token,
        Some(body.clone()),
        Some("retry-123"),
    )
    .await;
    assert_eq!(st, 202);
    let (st, b, _) = post(&s, &path, &s.admin_token, Some(body), Some("retry-123")).await;
    assert_eq!(st, 202, "{b}");
    assert_eq!(a["job"]["id"], b["job"]["id"]);
    assert_eq!(a["container"]["id"], b["container"]["id"]);
    s.wait_job(a["job"]["id"].as_str().unwrap()).await;
    assert_eq!(containers_named(&s, "once").await, 1);

    let staging = s.container_id("web-app-staging").await;
    let sync = format!("/api/v1/containers/{staging}/sync");
    let (_, x, _) = post(&s, &sync, &s.admin_token, None, Some("sync-1")).await;
    let (_, y, _) = post(&s, &sync, &s.admin_token, None, Some("sync-1")).await;
    assert_eq!(x["job"]["id"], y["job"]["id"]);
    s.wait_job(x["job"]["id"].as_str().unwrap()).await;
}

#[tokio::test]
async fn concurrent_retries_with_one_idempotency_key_make_one_copy() {
    let s = TestServer::start().await;
    let (path, web) = web_app_copy(&s).await;
    let body = json!({"target_project_id": web, "name": "racing"});
    // Sent together, so they pass the key's first check before any of them is written.
    let answers = futures::future::join_all((0..8).map(|_| {
        post(
            &s,
            &path,
            &s.admin_token,
            Some(body.clone()),
            Some("race-1"),
        )
    }))
    .await;
    let first = &answers[0].1;
    for (st, answer, _) in &answers {
        assert_eq!(*st, 202, "{answer}");
        assert_eq!(answer["job"]["id"], first["job"]["id"]);
        assert_eq!(answer["container"]["id"], first["container"]["id"]);
    }
    s.wait_job(first["job"]["id"].as_str().unwrap()).await;
    assert_eq!(containers_named(&s, "racing").await, 1);
    // Every request is audited once: the one that wrote the copy in the copy's own commit,
    // the retries answered from it apart.
    let web_app = s.container_id("web-app").await;
    let (st, audit) = s
        .get(
            "/api/v1/audit?action=container.copy&limit=100",
            &s.admin_token,
        )
        .await;
    assert_eq!(st, 200, "{audit}");
    let ok = audit["entries"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["target"] == web_app.as_str() && e["result"] == "ok")
        .count();
    assert_eq!(ok, answers.len(), "{audit:#}");
}

#[tokio::test]
async fn sync_rules_originals_running_jobs_and_snapshots() {
    let s = TestServer::start().await;
    let web_app = s.container_id("web-app").await;
    let (st, body, _) = post(
        &s,
        &format!("/api/v1/containers/{web_app}/sync"),
        &s.admin_token,
        None,
        None,
    )
    .await;
    assert_eq!(st, 409, "an original has no source: {body}");
    assert!(body["error"]["message"]
        .as_str()
        .unwrap()
        .contains("not created by copy"));

    // A sync takes no body: options sent there are refused, not ignored; `{}` is none.
    let staging = s.container_id("web-app-staging").await;
    let sync_with = |body: &'static str| {
        TestServer::client()
            .post(s.url(&format!("/api/v1/containers/{staging}/sync")))
            .bearer_auth(&s.admin_token)
            .header("content-type", "application/json")
            .body(body)
            .send()
    };
    let resp = sync_with(r#"{"bwlimit": "1M"}"#).await.unwrap();
    assert_eq!(resp.status(), 422);
    let refused: Value = resp.json().await.unwrap();
    assert_eq!(refused["error"]["field"], "bwlimit", "{refused}");
    assert_eq!(sync_with("garbage").await.unwrap().status(), 400);
    let resp = sync_with("{}").await.unwrap();
    assert_eq!(resp.status(), 202);
    let started: Value = resp.json().await.unwrap();
    s.wait_job(started["job"]["id"].as_str().unwrap()).await;

    // Snapshots: take one, change the source, copy from the snapshot: the old state.
    let (st, snap, _) = post(
        &s,
        &format!("/api/v1/containers/{web_app}/snapshots"),
        &s.admin_token,
        Some(json!({"name": "pre-change"})),
        None,
    )
    .await;
    assert_eq!(st, 201, "{snap}");
    let (st, _, _) = post(
        &s,
        &format!("/api/v1/containers/{web_app}/snapshots"),
        &s.admin_token,
        Some(json!({"name": "pre-change"})),
        None,
    )
    .await;
    assert_eq!(st, 409);
    let (_, list) = s
        .get(
            &format!("/api/v1/containers/{web_app}/snapshots"),
            &s.admin_token,
        )
        .await;
    assert!(list["snapshots"]
        .as_array()
        .unwrap()
        .iter()
        .any(|x| x["name"] == "pre-change"));
    let (_, src) = s
        .get(&format!("/api/v1/containers/{web_app}"), &s.admin_token)
        .await;
    let src_root = tree_root(&src);
    std::fs::write(src_root.join("added-after-snapshot"), b"new\n").unwrap();
    let web = s.project_id("web-platform").await;
    let (st, started, _) = post(
        &s,
        &format!("/api/v1/containers/{web_app}/copy"),
        &s.admin_token,
        Some(
            json!({"target_project_id": web, "name": "from-snap", "source_snapshot": "pre-change"}),
        ),
        None,
    )
    .await;
    assert_eq!(st, 202, "{started}");
    let done = s.wait_job(started["job"]["id"].as_str().unwrap()).await;
    assert_eq!(done["status"], "succeeded", "{done}");
    let (_, copy) = s
        .get(
            &format!(
                "/api/v1/containers/{}",
                started["container"]["id"].as_str().unwrap()
            ),
            &s.admin_token,
        )
        .await;
    assert!(
        !tree_root(&copy).join("added-after-snapshot").exists(),
        "the copy is of the snapshot, not of the live tree"
    );
    assert_eq!(
        std::fs::read(tree_root(&copy).join("etc/hostname")).unwrap(),
        b"from-snap\n",
        "and a machine of its own"
    );

    // One sync at a time: a second request while one is queued or running is a 409 that
    // names the running job (the first may already be done on a fast machine).
    let staging = s.container_id("web-app-staging").await;
    let (st1, first, _) = post(
        &s,
        &format!("/api/v1/containers/{staging}/sync"),
        &s.admin_token,
        None,
        None,
    )
    .await;
    assert_eq!(st1, 202);
    let (st2, second, _) = post(
        &s,
        &format!("/api/v1/containers/{staging}/sync"),
        &s.admin_token,
        None,
        None,
    )
    .await;
    if st2 == 409 {
        assert!(second["error"]["message"]
            .as_str()
            .unwrap()
            .contains(first["job"]["id"].as_str().unwrap()));
    } else {
        assert_eq!(st2, 202);
        s.wait_job(second["job"]["id"].as_str().unwrap()).await;
    }
    s.wait_job(first["job"]["id"].as_str().unwrap()).await;
}

#[tokio::test]
async fn a_snapshot_waits_for_its_job_slot_a_bounded_time_and_leaves_nothing_when_refused() {
    let s = TestServer::start().await;
    let web_app = s.container_id("web-app").await;
    let web = s.project_id("web-platform").await;
    let snapshot = |name: &'static str| {
        let path = format!("/api/v1/containers/{web_app}/snapshots");
        let s = &s;
        async move {
            post(
                s,
                &path,
                &s.admin_token,
                Some(json!({ "name": name })),
                None,
            )
            .await
        }
    };
    // A bad name is refused at once, naming its field.
    let (st, refused, _) = snapshot("../x").await;
    assert_eq!(st, 422, "{refused}");
    assert_eq!(refused["error"]["field"], "name", "{refused}");

    // A slow copy onto web-app's own server takes its one job slot (the default).
    let job = slow_copy(
        &s,
        &web_app,
        json!({"target_project_id": web, "name": "slow-copy"}),
    )
    .await;

    // The snapshot is refused once its wait is over; before, it hung until the copy ended.
    let (st, refused, _) = snapshot("while-busy").await;
    assert_eq!(st, 503, "{refused}");
    let msg = refused["error"]["message"].as_str().unwrap();
    assert!(
        msg.contains("no job slot") && msg.contains("not taken"),
        "{refused}"
    );
    assert_eq!(refused["error"]["retry_after"], 10, "{refused}");

    // With the slot free again, the refused snapshot does not appear after all.
    let (st, body, _) = post(
        &s,
        &format!("/api/v1/jobs/{job}/cancel"),
        &s.admin_token,
        None,
        None,
    )
    .await;
    assert_eq!(st, 200, "{body}");
    s.wait_job(&job).await;
    let (st, taken, _) = snapshot("after").await;
    assert_eq!(st, 201, "{taken}");
    let (_, list) = s
        .get(
            &format!("/api/v1/containers/{web_app}/snapshots"),
            &s.admin_token,
        )
        .await;
    let names: Vec<_> = list["snapshots"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x["name"].as_str().unwrap())
        .collect();
    assert!(names.contains(&"after"), "{list}");
    assert!(!names.contains(&"while-busy"), "{list}");
}

#[tokio::test]
async fn a_cancelled_copy_leaves_a_truthful_state() {
    let s = TestServer::start().await;
    let source = s.container_id("db-primary").await;
    let data = s.project_id("data-pipeline").await;
    let (_, started, _) = copy_as(
        &s,
        &s.admin_token,
        &source,
        json!({"target_project_id": data, "name": "to-cancel"}),
    )
    .await;
    let job_id = started["job"]["id"].as_str().unwrap().to_string();
    let (st, _, _) = post(
        &s,
        &format!("/api/v1/jobs/{job_id}/cancel"),
        &s.admin_token,
        None,
        None,
    )
    .await;
    let done = s.wait_job(&job_id).await;
    let (_, c) = s
        .get(
            &format!(
                "/api/v1/containers/{}",
                started["container"]["id"].as_str().unwrap()
            ),
            &s.admin_token,
        )
        .await;
    match done["status"].as_str().unwrap() {
        "cancelled" => {
            assert_eq!(st, 200);
            assert_eq!(c["status"], "failed");
            assert_eq!(c["status_reason"], "copy cancelled", "{c}");
            assert!(!tree_root(&c).exists(), "no half copy on disk");
            // A start and a sync say the same: only a new copy makes it whole.
            let id = c["id"].as_str().unwrap();
            for action in ["start", "sync"] {
                let path = format!("/api/v1/containers/{id}/{action}");
                let (st, refused, _) = post(&s, &path, &s.admin_token, None, None).await;
                assert_eq!(st, 409, "{refused}");
                let msg = refused["error"]["message"].as_str().unwrap();
                assert!(
                    msg.contains("never completed: make a new copy"),
                    "{action}: {refused}"
                );
            }
            // With no tree, it cannot be the source of a copy: refused up front, no job.
            let (st, refused, _) = copy_as(
                &s,
                &s.admin_token,
                c["id"].as_str().unwrap(),
                json!({"target_project_id": data}),
            )
            .await;
            assert_eq!(st, 409, "{refused}");
            let msg = refused["error"]["message"].as_str().unwrap_or_default();
            assert!(msg.contains("no complete tree"), "{refused}");
        }
        // The copy won the race: then the cancel was refused and the copy is whole.
        "succeeded" => {
            assert_eq!(c["status"], "running");
            assert!(st == 409 || st == 200);
        }
        other => panic!("unexpected final status {other}: {done}"),
    }
    let (st, body, _) = post(
        &s,
        &format!("/api/v1/jobs/{job_id}/cancel"),
        &s.admin_token,
        None,
        None,
    )
    .await;
    assert_eq!(st, 409, "a finished job cannot be cancelled: {body}");
}

/// Reads server-sent events from a response until `stop` says so or the stream ends.
async fn read_events(
    resp: reqwest::Response,
    mut stop: impl FnMut(&Value) -> bool,
) -> Vec<(u64, String, Value)> {
    use futures::StreamExt;
    let mut events = Vec::new();
    let mut buf = String::new();
    let mut stream = resp.bytes_stream();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while let Ok(Some(chunk)) = tokio::time::timeout_at(deadline, stream.next()).await {
        buf.push_str(&String::from_utf8_lossy(&chunk.unwrap()));
        while let Some(end) = buf.find("\n\n") {
            let block: String = buf.drain(..end + 2).collect();
            let (mut id, mut kind, mut data) = (None, String::new(), String::new());
            for line in block.lines() {
                if let Some(v) = line.strip_prefix("id:") {
                    id = v.trim().parse().ok();
                } else if let Some(v) = line.strip_prefix("event:") {
                    kind = v.trim().to_string();
                } else if let Some(v) = line.strip_prefix("data:") {
                    data.push_str(v.trim());
                }
            }
            if let Some(id) = id {
                let v: Value = serde_json::from_str(&data).unwrap();
                let done = stop(&v);
                events.push((id, kind, v));
                if done {
                    return events;
                }
            }
        }
    }
    events
}

#[tokio::test]
async fn job_events_stream_to_the_end_and_resume_without_loss() {
    let s = TestServer::start().await;
    let source = s.container_id("db-primary").await;
    let data = s.project_id("data-pipeline").await;
    let (_, started, _) = copy_as(
        &s,
        &s.admin_token,
        &source,
        json!({"target_project_id": data, "name": "watched"}),
    )
    .await;
    let events_url = started["job"]["events_url"].as_str().unwrap().to_string();

    let resp = TestServer::client()
        .get(s.url(&events_url))
        .bearer_auth(&s.admin_token)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], "text/event-stream");
    assert_eq!(resp.headers()["x-accel-buffering"], "no");
    let all = read_events(resp, |_| false).await;
    let last = all.last().expect("events");
    assert_eq!(
        last.2["job"]["status"], "succeeded",
        "the stream ends with the final state"
    );
    assert!(last.2["job"]["summary"]["tree_files"].as_u64().unwrap() > 0);
    assert!(all.windows(2).all(|w| w[0].0 < w[1].0), "ids increase");
    let progress: Vec<u64> = all
        .iter()
        .filter(|e| e.1 == "progress" && e.2["job"]["progress"]["phase"] == "transfer")
        .map(|e| e.2["job"]["progress"]["bytes_done"].as_u64().unwrap())
        .collect();
    assert!(
        progress.windows(2).all(|w| w[0] <= w[1]),
        "monotonic: {progress:?}"
    );
    // Its tree done, the copy is started before the job ends, and says so: the last
    // progress is phase `start` with the whole transfer, right before the end.
    let before_end = &all[all.len() - 2];
    assert_eq!(before_end.1, "progress", "{before_end:?}");
    let p = &before_end.2["job"]["progress"];
    assert_eq!(p["phase"], "start", "{before_end:?}");
    assert_eq!(p["percent"], 100.0, "{p}");
    assert_eq!(p["bytes_done"], p["bytes_total"], "{p}");
    assert_eq!(last.2["job"]["status"], "succeeded");
    let (_, copy) = s
        .get(
            &format!(
                "/api/v1/containers/{}",
                started["container"]["id"].as_str().unwrap()
            ),
            &s.admin_token,
        )
        .await;
    assert_eq!(copy["status"], "running", "started by then: {copy}");

    // Reconnect after the second event: the rest comes, nothing lost, nothing repeated.
    let resp = TestServer::client()
        .get(s.url(&events_url))
        .bearer_auth(&s.admin_token)
        .send()
        .await
        .unwrap();
    let mut n = 0;
    let first_two = read_events(resp, |_| {
        n += 1;
        n == 2
    })
    .await;
    let resume_after = first_two.last().unwrap().0;
    let resp = TestServer::client()
        .get(s.url(&events_url))
        .bearer_auth(&s.admin_token)
        .header("last-event-id", resume_after.to_string())
        .send()
        .await
        .unwrap();
    let rest = read_events(resp, |_| false).await;
    let ids: Vec<u64> = first_two.iter().chain(&rest).map(|e| e.0).collect();
    let expected: Vec<u64> = all.iter().map(|e| e.0).collect();
    assert_eq!(ids, expected);

    // An id doppel never issued (made up) resumes from now: the job's state as it is, not
    // its history again.
    let resp = TestServer::client()
        .get(s.url(&events_url))
        .bearer_auth(&s.admin_token)
        .header(
            "last-event-id",
            (expected.last().unwrap() + 5000).to_string(),
        )
        .send()
        .await
        .unwrap();
    let now = read_events(resp, |_| false).await;
    assert_eq!(now.len(), 1, "{now:?}");
    assert_eq!(now[0].2["job"]["status"], "succeeded", "{now:?}");

    // The all-jobs stream replays from a Last-Event-ID too.
    let resp = TestServer::client()
        .get(s.url("/api/v1/events"))
        .bearer_auth(&s.admin_token)
        .header("last-event-id", (expected[0] - 1).to_string())
        .send()
        .await
        .unwrap();
    let replayed = read_events(resp, |v| v["job"]["status"] == "succeeded").await;
    assert_eq!(replayed.last().unwrap().0, *expected.last().unwrap());
}

/// Starts a copy of `source` (`body` as the request's) that runs for about a minute: 4 MiB
/// of noise added to the source, at 64 KiB/s. Its job's id, once it runs.
async fn slow_copy(s: &TestServer, source: &str, body: Value) -> String {
    let (_, src) = s
        .get(&format!("/api/v1/containers/{source}"), &s.admin_token)
        .await;
    std::fs::write(tree_root(&src).join("big.bin"), random_bytes(4 << 20)).unwrap();
    let (st, started, _) = post(
        s,
        &format!("/api/v1/containers/{source}/copy?bwlimit=64K"),
        &s.admin_token,
        Some(body),
        None,
    )
    .await;
    assert_eq!(st, 202, "{started}");
    let job = started["job"]["id"].as_str().unwrap().to_string();
    wait_running(s, &job).await;
    job
}

/// Waits (at most 20 s) until the job `id` runs.
async fn wait_running(s: &TestServer, id: &str) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let (_, j) = s.get(&format!("/api/v1/jobs/{id}"), &s.admin_token).await;
        if j["status"] == "running" {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the job never ran: {j}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sync_whose_source_is_deleted_while_it_waits_fails_saying_so() {
    let s = TestServer::start().await;
    let admin = &s.admin_token;
    let web_app = s.container_id("web-app").await;
    let staging = s.container_id("web-app-staging").await;
    let db = s.container_id("db-primary").await;
    let (_, db_row) = s.get(&format!("/api/v1/containers/{db}"), admin).await;
    let (_, staging_row) = s.get(&format!("/api/v1/containers/{staging}"), admin).await;
    // A slow copy onto staging's server takes its one job slot.
    let slow = slow_copy(
        &s,
        &db,
        json!({
            "target_project_id": db_row["project_id"],
            "target_server_id": staging_row["server_id"],
            "name": "slow-copy"
        }),
    )
    .await;
    // A sync of staging waits behind it; meanwhile its source is deleted.
    let (st, sync, _) = post(
        &s,
        &format!("/api/v1/containers/{staging}/sync"),
        admin,
        None,
        None,
    )
    .await;
    assert_eq!(st, 202, "{sync}");
    let (st, deleted) = s
        .call(
            reqwest::Method::DELETE,
            &format!("/api/v1/containers/{web_app}"),
            admin,
            None,
        )
        .await;
    assert_eq!(st, 202, "{deleted}");
    let deleted = s.wait_job(deleted["job"]["id"].as_str().unwrap()).await;
    assert_eq!(deleted["status"], "succeeded", "{deleted}");
    let (st, _, _) = post(
        &s,
        &format!("/api/v1/jobs/{slow}/cancel"),
        admin,
        None,
        None,
    )
    .await;
    assert_eq!(st, 200);
    // The sync then runs, and says why it cannot: not as a missing directory.
    let sync = s.wait_job(sync["job"]["id"].as_str().unwrap()).await;
    assert_eq!(sync["status"], "failed", "{sync}");
    let error = sync["error"].as_str().unwrap_or_default();
    assert!(
        error.contains("the source was deleted before this sync ran"),
        "{sync}"
    );
    assert!(!error.contains("os error"), "{sync}");

    // The copy says so: in the API, and on its page, which offers no sync.
    let (_, copy) = s.get(&format!("/api/v1/containers/{staging}"), admin).await;
    assert_eq!(copy["source_deleted"], true, "{copy}");
    let cookie = s.session("admin", &s.admin_password).await;
    let (_, html) = s.page(&format!("/containers/{staging}"), &cookie).await;
    assert!(html.contains("a container since deleted"), "{html}");
    assert!(html.contains("Its source was deleted"), "{html}");
    assert!(!html.contains("Sync now"), "{html}");
}

#[tokio::test]
async fn sync_status_tells_current_stale_and_failing_copies_apart() {
    let s = TestServer::start().await;
    let admin = &s.admin_token;
    let web_app = s.container_id("web-app").await;
    let web = s.project_id("web-platform").await;
    let (st, started, _) = copy_as(
        &s,
        admin,
        &web_app,
        json!({"target_project_id": web, "name": "status-probe"}),
    )
    .await;
    assert_eq!(st, 202, "{started}");
    let copy_id = started["container"]["id"].as_str().unwrap().to_string();
    s.wait_job(started["job"]["id"].as_str().unwrap()).await;
    let row = |body: &Value| {
        body["copies"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["copy"]["id"] == copy_id.as_str())
            .cloned()
            .expect("the copy is listed")
    };
    let sync = || sync_and_wait(&s, &copy_id);

    let (st, body) = s.get("/api/v1/sync-status", admin).await;
    assert_eq!(st, 200, "{body}");
    let r = row(&body);
    assert_eq!(r["freshness"], "current", "{r}");
    assert_eq!(r["failures_in_row"], 0);
    assert_eq!(r["history"].as_array().unwrap().len(), 1);
    assert_eq!(r["last_run"]["kind"], "copy");
    assert!(r["last_run"]["bytes_sent"].as_u64().unwrap() > 0, "{r}");
    assert_eq!(r["copy"]["source"]["id"], web_app.as_str());
    assert_eq!(r["may_sync"], true, "the admin may sync it: {r}");

    // The source changes: the copy is stale until synced.
    let (_, src) = s.get(&format!("/api/v1/containers/{web_app}"), admin).await;
    let root = tree_root(&src);
    std::fs::write(root.join("status-probe.txt"), b"changed on the source").unwrap();
    let (_, body) = s.get("/api/v1/sync-status", admin).await;
    assert_eq!(row(&body)["freshness"], "stale");

    // The source's tree goes away: syncs fail, and keep counting until one succeeds.
    let away = root.with_extension("away");
    std::fs::rename(&root, &away).unwrap();
    assert_eq!(sync().await["status"], "failed");
    assert_eq!(sync().await["status"], "failed");
    let (_, body) = s.get("/api/v1/sync-status", admin).await;
    let r = row(&body);
    assert_eq!(r["failures_in_row"], 2, "{r}");
    assert_eq!(r["freshness"], "source_missing");
    let error = r["last_error"].as_str().unwrap();
    assert!(error.contains("the source tree"), "{error}");
    assert!(
        !error.contains(s.data_dir.path().to_str().unwrap()),
        "no server paths in errors members read: {error}"
    );
    assert_eq!(r["last_run"]["status"], "failed");

    // A restart of the copy is not a run of its sync: the copy is still failing.
    let (st, restarted, _) = post(
        &s,
        &format!("/api/v1/containers/{copy_id}/restart"),
        admin,
        None,
        None,
    )
    .await;
    assert_eq!(st, 200, "{restarted}");
    let (_, body) = s.get("/api/v1/sync-status", admin).await;
    let r = row(&body);
    assert_eq!(r["failures_in_row"], 2, "{r}");
    assert_eq!(r["last_run"]["kind"], "sync", "{r}");
    assert!(r["last_error"].as_str().is_some(), "{r}");
    assert!(
        r["history"]
            .as_array()
            .unwrap()
            .iter()
            .all(|h| h["kind"] == "copy" || h["kind"] == "sync"),
        "{r}"
    );

    std::fs::rename(&away, &root).unwrap();

    // A source that is there but cannot be read is not missing: stale, saying why.
    let deep = root.join("deep");
    std::fs::create_dir_all(deep.join("d/".repeat(1100))).unwrap();
    let (_, body) = s.get("/api/v1/sync-status", admin).await;
    let r = row(&body);
    assert_eq!(r["freshness"], "stale", "{r}");
    let why = r["source_error"].as_str().unwrap_or_default();
    assert!(why.contains("deep"), "{r}");
    std::fs::remove_dir_all(&deep).unwrap();

    assert_eq!(sync().await["status"], "succeeded");
    let (_, body) = s.get("/api/v1/sync-status", admin).await;
    let r = row(&body);
    assert_eq!(r["failures_in_row"], 0, "{r}");
    assert_eq!(r["freshness"], "current");
    assert!(r["last_error"].is_null());
    assert!(r["source_error"].is_null(), "{r}");
    let statuses: Vec<&str> = r["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["status"].as_str().unwrap())
        .collect();
    assert_eq!(statuses, ["succeeded", "failed", "failed", "succeeded"]);

    // Alice sees the copies of her projects only.
    let (_, mine) = s.get("/api/v1/projects", &s.alice_token).await;
    let hers: Vec<&str> = mine["projects"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["id"].as_str().unwrap())
        .collect();
    let (st, body) = s.get("/api/v1/sync-status", &s.alice_token).await;
    assert_eq!(st, 200);
    let copies = body["copies"].as_array().unwrap();
    assert!(!copies.is_empty());
    assert!(copies
        .iter()
        .all(|c| hers.contains(&c["copy"]["project_id"].as_str().unwrap())));

    // A copy cancelled before it completed has no tree to sync: it never completed, says
    // why, and offers no sync.
    let job = slow_copy(
        &s,
        &web_app,
        json!({"target_project_id": web, "name": "never-done"}),
    )
    .await;
    let never_done = |body: &Value| {
        body["copies"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["copy"]["name"] == "never-done")
            .unwrap()
            .clone()
    };
    // While it is being made it says so: not stale (it never matched anything yet).
    let (_, body) = s.get("/api/v1/sync-status", admin).await;
    let r = never_done(&body);
    assert_eq!(r["freshness"], "copying", "{r}");
    assert_eq!(r["may_sync"], false, "{r}");
    let (st, _, _) = post(&s, &format!("/api/v1/jobs/{job}/cancel"), admin, None, None).await;
    assert_eq!(st, 200);
    assert_eq!(s.wait_job(&job).await["status"], "cancelled");
    let (_, body) = s.get("/api/v1/sync-status", admin).await;
    let r = never_done(&body);
    assert_eq!(r["freshness"], "incomplete", "{r}");
    assert_eq!(r["last_error"], "copy cancelled", "{r}");
    assert_eq!(r["may_sync"], false, "{r}");
}

#[tokio::test]
async fn a_copy_takes_what_its_target_server_already_holds() {
    let s = TestServer::start().await;
    let web_app = s.container_id("web-app").await;
    let web = s.project_id("web-platform").await;
    let empty_server = server_id(&s, "local-c").await;
    let _other = OtherFilesystem::under(&s, "local-c").await;
    let mut summaries = Vec::new();
    for name in ["reuse-first", "reuse-second"] {
        let (st, started, _) = copy_as(
            &s,
            &s.admin_token,
            &web_app,
            json!({"target_project_id": web, "target_server_id": empty_server, "name": name}),
        )
        .await;
        assert_eq!(st, 202, "{started}");
        let job = s.wait_job(started["job"]["id"].as_str().unwrap()).await;
        assert_eq!(job["status"], "succeeded", "{job}");
        summaries.push(job["summary"].clone());
    }
    let n = |v: &Value, k: &str| v[k].as_u64().unwrap();
    let (first, second) = (&summaries[0], &summaries[1]);
    assert_eq!(n(first, "content_bytes"), n(first, "tree_bytes"), "{first}");
    assert!(n(first, "tree_bytes") > 0);
    // All of it was on local-c but the first copy's own identity files (host name,
    // machine id, host keys, authorized_keys), which differ from the source's.
    let (_, src) = s
        .get(&format!("/api/v1/containers/{web_app}"), &s.admin_token)
        .await;
    let identity: u64 = second["identity_files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            std::fs::metadata(tree_root(&src).join(p.as_str().unwrap()))
                .unwrap()
                .len()
        })
        .sum();
    assert!(identity > 0);
    assert_eq!(n(second, "content_bytes"), identity, "{second}");
    assert_eq!(
        n(second, "reused_bytes"),
        n(second, "tree_bytes") - identity,
        "{second}"
    );
    // Onto a server on the source's filesystem, the kernel lays every file down: nothing
    // streams, nothing needs to be held there already.
    let same_fs = server_id(&s, "local-b").await;
    let (st, started, _) = copy_as(
        &s,
        &s.admin_token,
        &web_app,
        json!({"target_project_id": web, "target_server_id": same_fs, "name": "by-kernel"}),
    )
    .await;
    assert_eq!(st, 202, "{started}");
    let job = s.wait_job(started["job"]["id"].as_str().unwrap()).await;
    let third = &job["summary"];
    assert_eq!(n(third, "content_bytes"), 0, "{third}");
    assert_eq!(n(third, "kernel_bytes"), n(third, "tree_bytes"), "{third}");
}

/// The runner's limits (2 jobs at once, 1 per target server by default): never exceeded,
/// and a job for a free server does not wait behind jobs queued for a busy one.
#[tokio::test]
async fn jobs_run_within_their_limits_and_a_busy_server_does_not_hold_up_another() {
    let s = TestServer::start().await;
    let web_app = s.container_id("web-app").await;
    let web = s.project_id("web-platform").await;
    let (busy, free) = (
        server_id(&s, "local-b").await,
        server_id(&s, "local-c").await,
    );
    // Copies that take a while (32 MiB more to copy), so that all four are queued while the
    // first runs.
    let (_, detail) = s
        .get(&format!("/api/v1/containers/{web_app}"), &s.admin_token)
        .await;
    let root = tree_root(&detail);
    let mut rng = doppel::rng::Rng(3);
    std::fs::write(root.join("limits.bin"), rng.bytes(32 << 20)).unwrap();
    let events = TestServer::client()
        .get(s.url("/api/v1/events"))
        .bearer_auth(&s.admin_token)
        .send()
        .await
        .unwrap();
    let mut server_of = std::collections::HashMap::new();
    for (i, server) in [&busy, &busy, &busy, &free].into_iter().enumerate() {
        let (st, started, _) = copy_as(
            &s,
            &s.admin_token,
            &web_app,
            json!({"target_project_id": web, "target_server_id": server, "name": format!("limits-{i}")}),
        )
        .await;
        assert_eq!(st, 202, "{started}");
        server_of.insert(
            started["job"]["id"].as_str().unwrap().to_string(),
            server.clone(),
        );
    }
    let mut finished = 0;
    let events = read_events(events, |e| {
        let done = e["job"]["status"] == "succeeded" || e["job"]["status"] == "failed";
        finished += usize::from(e["kind"] == "status" && done);
        finished == 4
    })
    .await;

    // Replay the job lifecycle in event order (a job's final event is published before its
    // slots are released, so the order is exact).
    let mut running: Vec<String> = Vec::new();
    let (mut max_total, mut busy_finished, mut free_started_after) = (0, 0, None);
    for (_, kind, e) in &events {
        let id = e["job"]["id"].as_str().unwrap().to_string();
        if kind != "status" || !server_of.contains_key(&id) {
            continue;
        }
        match e["job"]["status"].as_str().unwrap() {
            "running" if !running.contains(&id) => {
                running.push(id.clone());
                max_total = max_total.max(running.len());
                let on_busy = running.iter().filter(|j| server_of[*j] == busy).count();
                assert!(on_busy <= 1, "two jobs at once on one server");
                if server_of[&id] == free {
                    free_started_after = Some(busy_finished);
                }
            }
            "succeeded" | "failed" => {
                assert_eq!(e["job"]["status"], "succeeded", "{e}");
                running.retain(|j| *j != id);
                busy_finished += usize::from(server_of[&id] == busy);
            }
            _ => {}
        }
    }
    assert!(max_total <= 2, "more than 2 jobs at once");
    assert!(
        free_started_after.is_some_and(|n| n < 2),
        "the job for the free server waited for {free_started_after:?} jobs of the busy one"
    );
}

/// `chattr +i` on a directory until dropped: even root cannot rename into it.
struct Immutable(std::path::PathBuf);

impl Immutable {
    fn set(dir: &std::path::Path) -> Immutable {
        let st = std::process::Command::new("chattr")
            .arg("+i")
            .arg(dir)
            .status()
            .unwrap();
        assert!(st.success(), "chattr +i (ext4 and root, as in CI)");
        Immutable(dir.to_path_buf())
    }
}

impl Drop for Immutable {
    fn drop(&mut self) {
        let _ = std::process::Command::new("chattr")
            .arg("-i")
            .arg(&self.0)
            .status();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sync_that_fails_while_applying_its_changes_marks_the_copy_failed_until_the_next_one() {
    let s = TestServer::start().await;
    let web_app = s.container_id("web-app").await;
    let staging = s.container_id("web-app-staging").await;
    let root_of = |c: &Value| std::path::PathBuf::from(c["root_path"].as_str().unwrap());
    let (_, src) = s
        .get(&format!("/api/v1/containers/{web_app}"), &s.admin_token)
        .await;
    let (_, dst) = s
        .get(&format!("/api/v1/containers/{staging}"), &s.admin_token)
        .await;
    let (src, dst) = (root_of(&src), root_of(&dst));
    let sync = || sync_and_wait(&s, &staging);
    for dir in ["aaa-first", "zzz-last"] {
        std::fs::create_dir(src.join(dir)).unwrap();
        std::fs::write(src.join(dir).join("f"), b"old").unwrap();
    }
    assert_eq!(sync().await["status"], "succeeded");
    for dir in ["aaa-first", "zzz-last"] {
        std::fs::write(src.join(dir).join("f"), b"new content").unwrap();
    }
    // The second change cannot be applied: the sync stops half way through its commit.
    let frozen = Immutable::set(&dst.join("zzz-last"));
    let job = sync().await;
    assert_eq!(job["status"], "failed", "{job}");
    let (_, c) = s
        .get(&format!("/api/v1/containers/{staging}"), &s.admin_token)
        .await;
    assert_eq!(
        c["status"], "failed",
        "not `running` with a half-applied tree: {c}"
    );
    assert!(
        c["status_reason"]
            .as_str()
            .unwrap()
            .contains("partly updated"),
        "{c}"
    );
    assert_eq!(
        std::fs::read(dst.join("aaa-first/f")).unwrap(),
        b"new content"
    );
    assert_eq!(std::fs::read(dst.join("zzz-last/f")).unwrap(), b"old");
    // The next sync completes it.
    drop(frozen);
    let job = sync().await;
    assert_eq!(job["status"], "succeeded", "{job}");
    let (_, c) = s
        .get(&format!("/api/v1/containers/{staging}"), &s.admin_token)
        .await;
    assert_eq!(c["status"], "running", "{c}");
    assert_eq!(
        std::fs::read(dst.join("zzz-last/f")).unwrap(),
        b"new content"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_first_copy_takes_content_only_from_trees_of_its_own_projects() {
    use doppel::service::inventory::{create_project, import_container, NewContainer};
    let s = TestServer::start().await;
    let db = s.service.db();
    let web = s.project_id("web-platform").await;
    let web_app = s.container_id("web-app").await;
    let (_, c) = s
        .get(&format!("/api/v1/containers/{web_app}"), &s.admin_token)
        .await;
    let tree = std::path::PathBuf::from(c["root_path"].as_str().unwrap());
    let empty_server = server_id(&s, "local-c").await;
    let _other = OtherFilesystem::under(&s, "local-c").await;
    let import = |project: String, name: &'static str| {
        let tree = tree.clone();
        let server = empty_server.clone();
        async move {
            let new = NewContainer {
                project_id: project,
                server_id: server,
                name: name.into(),
                ssh_public_key: None,
                firewall_rules: Vec::new(),
                network_rules: Vec::new(),
                command: Default::default(),
                source_container_id: None,
            };
            import_container(db, new, &tree).await.unwrap()
        }
    };
    let copy_to_c = |name: &'static str| {
        let (web, server, web_app) = (web.clone(), empty_server.clone(), web_app.clone());
        let s = &s;
        async move {
            let (st, body, _) = post(
                s,
                &format!("/api/v1/containers/{web_app}/copy"),
                &s.alice_token,
                Some(json!({"target_project_id": web, "target_server_id": server, "name": name})),
                None,
            )
            .await;
            assert_eq!(st, 202, "{body}");
            s.wait_job(body["job"]["id"].as_str().unwrap()).await
        }
    };
    // Another tenant holds the same files on the target server: none of it is used (nor
    // does reused_bytes say they are there).
    let other = create_project(db, "other-tenant", "").await.unwrap();
    import(other, "their-copy").await;
    let job = copy_to_c("first").await;
    assert_eq!(job["status"], "succeeded", "{job}");
    assert_eq!(job["summary"]["reused_bytes"], 0, "{job}");
    // The copy's own project may be used.
    let job = copy_to_c("second").await;
    assert_eq!(job["status"], "succeeded", "{job}");
    assert!(
        job["summary"]["reused_bytes"].as_u64().unwrap() > 0,
        "{job}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idempotency_key_stands_for_one_request() {
    let s = TestServer::start().await;
    let web = s.project_id("web-platform").await;
    let web_app = s.container_id("web-app").await;
    let staging = s.container_id("web-app-staging").await;
    let copy = |name: &'static str, key: &'static str| {
        let (s, web, web_app) = (&s, web.clone(), web_app.clone());
        async move {
            post(
                s,
                &format!("/api/v1/containers/{web_app}/copy"),
                &s.admin_token,
                Some(json!({"target_project_id": web, "name": name})),
                Some(key),
            )
            .await
        }
    };
    let (st, first, _) = copy("once", "key-1").await;
    assert_eq!(st, 202, "{first}");
    let (st, again, _) = copy("once", "key-1").await;
    assert_eq!(st, 202, "{again}");
    assert_eq!(
        again["job"]["id"], first["job"]["id"],
        "a retry gets the same job"
    );
    // The same key with another body is not a retry.
    let (st, other, _) = copy("another-name", "key-1").await;
    assert_eq!(st, 409, "{other}");
    assert!(other.to_string().contains("different request"), "{other}");
    s.wait_job(first["job"]["id"].as_str().unwrap()).await;
    // Nor is the same key on another operation.
    let (st, body, _) = post(
        &s,
        &format!("/api/v1/containers/{staging}/sync"),
        &s.admin_token,
        None,
        Some("key-1"),
    )
    .await;
    assert_eq!(st, 409, "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_copy_gets_its_own_identity_and_never_the_source_s_keys() {
    let s = TestServer::start().await;
    let web = s.project_id("web-platform").await;
    let web_app = s.container_id("web-app").await;
    let (_, c) = s
        .get(&format!("/api/v1/containers/{web_app}"), &s.admin_token)
        .await;
    let src = std::path::PathBuf::from(c["root_path"].as_str().unwrap());
    for (path, content) in [
        ("etc/hostname", "web-app\n"),
        ("etc/machine-id", "0123456789abcdef0123456789abcdef\n"),
        (
            "etc/ssh/ssh_host_ed25519_key",
            "the source's private host key\n",
        ),
        (
            "root/.ssh/authorized_keys",
            "ssh-ed25519 AAAA whoever-could-log-into-the-source\n",
        ),
    ] {
        std::fs::create_dir_all(src.join(path).parent().unwrap()).unwrap();
        std::fs::write(src.join(path), content).unwrap();
    }
    let key =
        ssh_key::PrivateKey::random(&mut ssh_key::rand_core::OsRng, ssh_key::Algorithm::Ed25519)
            .unwrap()
            .public_key()
            .to_openssh()
            .unwrap();
    let (body, job) = copy_and_wait(
        &s,
        &web_app,
        json!({"target_project_id": web, "name": "new-machine", "ssh_public_key": key}),
    )
    .await;
    assert_eq!(job["status"], "succeeded", "{job}");
    let copy_id = body["container"]["id"].as_str().unwrap().to_string();
    let (_, c) = s
        .get(&format!("/api/v1/containers/{copy_id}"), &s.admin_token)
        .await;
    let dst = std::path::PathBuf::from(c["root_path"].as_str().unwrap());
    let read = |p: &str| std::fs::read_to_string(dst.join(p)).unwrap();
    assert_eq!(read("etc/hostname"), "new-machine\n");
    assert_ne!(read("etc/machine-id"), "0123456789abcdef0123456789abcdef\n");
    assert!(read("etc/ssh/ssh_host_ed25519_key").contains("OPENSSH PRIVATE KEY"));
    assert_eq!(
        read("root/.ssh/authorized_keys"),
        format!("{key}\n"),
        "exactly the given key"
    );
    let listed = job["summary"]["identity_files"].to_string();
    assert!(
        listed.contains("etc/hostname") && listed.contains("authorized_keys"),
        "{job}"
    );
    let sync = || sync_and_wait(&s, &copy_id);
    // Its root hash is its own tree's (as a sync with nothing to do finds it), not its
    // source's.
    let copied = job["summary"]["root_hash"].clone();
    assert_ne!(copied, job["summary"]["source_root_hash"], "{job}");
    let noop = sync().await;
    for changed in ["files_added", "files_changed", "files_deleted", "drift"] {
        assert_eq!(noop["summary"][changed], 0, "{noop}");
    }
    // Done, with nothing to move: 100 % of nothing, not a scan of unknown length.
    assert_eq!(noop["progress"]["percent"], 100.0, "{noop}");
    assert_eq!(noop["progress"]["bytes_total"], 0, "{noop}");
    assert_eq!(noop["summary"]["root_hash"], copied, "{noop}");
    // A sync brings the source's changes and keeps the copy's identity.
    std::fs::write(
        src.join("root/.ssh/authorized_keys"),
        "ssh-ed25519 AAAA someone-new\n",
    )
    .unwrap();
    std::fs::write(src.join("etc/new-file"), "x").unwrap();
    let job = sync().await;
    assert_eq!(job["status"], "succeeded", "{job}");
    assert_eq!(job["summary"]["drift"], 0, "{job}");
    assert_eq!(read("etc/new-file"), "x");
    assert_eq!(read("etc/hostname"), "new-machine\n");
    assert_eq!(read("root/.ssh/authorized_keys"), format!("{key}\n"));
}

/// `n` random bytes (they do not compress).
fn random_bytes(n: u64) -> Vec<u8> {
    use std::io::Read;
    let mut bytes = Vec::new();
    std::fs::File::open("/dev/urandom")
        .unwrap()
        .take(n)
        .read_to_end(&mut bytes)
        .unwrap();
    bytes
}

/// Posts a copy or sync that moves 3 MiB under a limit of 1 MiB/s, as the admin: it
/// succeeds, and cannot have taken less than 2 s. Its answer.
async fn job_held_to_a_mebibyte_a_second(s: &TestServer, path: &str, body: Option<Value>) -> Value {
    let started = std::time::Instant::now();
    let (st, body, _) = post(s, path, &s.admin_token, body, None).await;
    assert_eq!(st, 202, "{body}");
    let job = s.wait_job(body["job"]["url"].as_str().unwrap()).await;
    assert_eq!(job["status"], "succeeded", "{job}");
    let took = started.elapsed();
    // The bucket holds a tenth of a second's worth: no more than that goes at once.
    assert!(
        took >= Duration::from_millis(2700),
        "3 MiB at 1 MiB/s in {took:?}"
    );
    body
}

async fn put_bwlimit(s: &TestServer, server: &str, token: &str, body: Value) -> (u16, Value) {
    let resp = TestServer::client()
        .put(s.url(&format!("/api/v1/servers/{server}/bwlimit")))
        .bearer_auth(token)
        .json(&body)
        .send()
        .await
        .unwrap();
    (
        resp.status().as_u16(),
        resp.json().await.unwrap_or(Value::Null),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bandwidth_limits_hold_copies_and_syncs_to_their_rate() {
    let s = TestServer::start().await;
    let source = s.container_id("web-app").await;
    let (_, src) = s
        .get(&format!("/api/v1/containers/{source}"), &s.admin_token)
        .await;
    let big = tree_root(&src).join("srv/big.bin");
    std::fs::create_dir_all(big.parent().unwrap()).unwrap();
    std::fs::write(&big, random_bytes(3 << 20)).unwrap();
    let project = src["project_id"].as_str().unwrap().to_string();
    let copy_path = format!("/api/v1/containers/{source}/copy");
    // Limits that are not rates, or too low to move a piece a second, are refused.
    for bad in ["banana", "12X", "1K", "", "-5M"] {
        let (st, body, _) = post(
            &s,
            &format!("{copy_path}?bwlimit={bad}"),
            &s.admin_token,
            Some(json!({"target_project_id": project})),
            None,
        )
        .await;
        assert_eq!(
            (st, body["error"]["field"].as_str()),
            (422, Some("bwlimit")),
            "{bad}: {body}"
        );
    }
    // A copy at 1 MiB/s: more than 3 MiB take more than 2.7 s.
    let body = job_held_to_a_mebibyte_a_second(
        &s,
        &format!("{copy_path}?bwlimit=1M"),
        Some(json!({"target_project_id": project, "name": "slow-copy"})),
    )
    .await;
    let copy = body["container"]["id"].as_str().unwrap().to_string();

    // A server's limit: platform admins set it; everyone sees it.
    let server = src["server_id"].as_str().unwrap().to_string();
    let (st, _) = put_bwlimit(&s, &server, &s.alice_token, json!({"bwlimit": "1M"})).await;
    assert_eq!(st, 403);
    let (st, body) = put_bwlimit(&s, &server, &s.admin_token, json!({"bwlimit": "fast"})).await;
    assert_eq!(
        (st, body["error"]["field"].as_str()),
        (422, Some("bwlimit")),
        "{body}"
    );
    let (st, body) = put_bwlimit(&s, &server, &s.admin_token, json!({"bwlimit": "1M"})).await;
    assert_eq!(st, 200, "{body}");
    assert_eq!(body["bwlimit_bytes_per_second"], 1 << 20);
    let (_, listed) = s.get("/api/v1/servers", &s.alice_token).await;
    let shown = listed["servers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["id"] == server.as_str())
        .unwrap()
        .clone();
    assert_eq!(shown["bwlimit_bytes_per_second"], 1 << 20);
    // What its filesystem does for copies, found by trying it.
    assert!(
        ["reflink", "copy_file_range", "stream"].contains(&shown["storage"].as_str().unwrap()),
        "{shown}"
    );
    // A sync that moves 3 MiB again keeps to the server's limit.
    std::fs::write(&big, random_bytes(3 << 20)).unwrap();
    job_held_to_a_mebibyte_a_second(&s, &format!("/api/v1/containers/{copy}/sync"), None).await;
    // Lifted: the field is gone.
    let (st, body) = put_bwlimit(&s, &server, &s.admin_token, json!({"bwlimit": null})).await;
    assert_eq!(st, 200, "{body}");
    assert!(body.get("bwlimit_bytes_per_second").is_none(), "{body}");
    let (st, _) = put_bwlimit(&s, &"0".repeat(24), &s.admin_token, json!({})).await;
    assert_eq!(st, 404);
}
