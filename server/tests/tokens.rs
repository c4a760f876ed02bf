//! API tokens a user manages: created with a name, an expiry and a scope; listed without
//! their secrets; revoked at once.

mod common;

use std::time::{Duration, Instant};

use common::TestServer;
use serde_json::{json, Value};

async fn create(s: &TestServer, body: Value) -> (String, Value) {
    let (st, created) = s
        .call(
            reqwest::Method::POST,
            "/api/v1/tokens",
            &s.admin_token,
            Some(body),
        )
        .await;
    assert_eq!(st, 201, "{created}");
    (
        created["secret"].as_str().unwrap().to_string(),
        created["token"].clone(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_is_made_listed_used_and_revoked_at_once() {
    let s = TestServer::start().await;
    let (secret, token) = create(&s, json!({"name": "ci-deploy"})).await;
    assert_eq!(token["name"], "ci-deploy");
    assert!(token["last_used_at"].is_null());
    let (st, _) = s.get("/api/v1/containers", &secret).await;
    assert_eq!(st, 200, "the new token works");
    let (_, list) = s.get("/api/v1/tokens", &s.admin_token).await;
    let listed = list["tokens"].as_array().unwrap();
    let mine = listed.iter().find(|t| t["id"] == token["id"]).unwrap();
    assert!(
        mine["last_used_at"].is_i64(),
        "its last use is recorded: {mine}"
    );
    assert!(
        !list.to_string().contains(&secret),
        "secrets are never listed"
    );
    // Someone else's tokens are not mine to see or revoke.
    let (_, theirs) = s.get("/api/v1/tokens", &s.alice_token).await;
    assert!(!theirs.to_string().contains(token["id"].as_str().unwrap()));
    let id = token["id"].as_str().unwrap();
    let (st, _) = s
        .call(
            reqwest::Method::DELETE,
            &format!("/api/v1/tokens/{id}"),
            &s.alice_token,
            None,
        )
        .await;
    assert_eq!(st, 404);

    // An event stream open with it ends once it is revoked.
    let mut stream = TestServer::client()
        .get(s.url("/api/v1/events"))
        .bearer_auth(&secret)
        .send()
        .await
        .unwrap();
    assert_eq!(stream.status(), 200);
    let (st, _) = s
        .call(
            reqwest::Method::DELETE,
            &format!("/api/v1/tokens/{id}"),
            &s.admin_token,
            None,
        )
        .await;
    assert_eq!(st, 204);
    let (st, _) = s.get("/api/v1/containers", &secret).await;
    assert_eq!(st, 401, "revoked: refused at once");
    let deadline = Instant::now() + Duration::from_secs(12);
    loop {
        match tokio::time::timeout(Duration::from_secs(12), stream.chunk()).await {
            Ok(Ok(None)) | Ok(Err(_)) => break,
            Ok(Ok(Some(_))) => assert!(Instant::now() < deadline, "the stream goes on"),
            Err(_) => panic!("the stream of a revoked token goes on"),
        }
    }
    let (st, _) = s
        .call(
            reqwest::Method::DELETE,
            &format!("/api/v1/tokens/{id}"),
            &s.admin_token,
            None,
        )
        .await;
    assert_eq!(st, 404, "gone");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_only_token_reads_and_cannot_write() {
    let s = TestServer::start().await;
    let (ro, _) = create(&s, json!({"name": "dashboard", "read_only": true})).await;
    let web_app = s.container_id("web-app").await;
    let (st, list) = s.get("/api/v1/containers", &ro).await;
    assert_eq!(st, 200);
    assert_eq!(
        list["containers"].as_array().unwrap().len(),
        5,
        "it sees what its user sees"
    );
    let project = s.project_id("web-platform").await;
    for (method, path, body) in [
        (
            reqwest::Method::POST,
            format!("/api/v1/containers/{web_app}/copy"),
            Some(json!({"target_project_id": project})),
        ),
        (
            reqwest::Method::POST,
            format!("/api/v1/containers/{web_app}/stop"),
            None,
        ),
        (
            reqwest::Method::PUT,
            format!("/api/v1/containers/{web_app}/firewall-rules"),
            Some(json!({"rules": []})),
        ),
        (
            reqwest::Method::DELETE,
            format!("/api/v1/containers/{web_app}"),
            None,
        ),
        (
            reqwest::Method::POST,
            "/api/v1/tokens".to_string(),
            Some(json!({"name": "wider"})),
        ),
    ] {
        let (st, body) = s.call(method.clone(), &path, &ro, body).await;
        assert_eq!(st, 403, "{method} {path}: {body}");
    }
    let (_, c) = s
        .get(&format!("/api/v1/containers/{web_app}"), &s.admin_token)
        .await;
    assert_eq!(c["status"], "running", "nothing was done");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_limited_to_a_project_sees_only_that_project() {
    let s = TestServer::start().await;
    let web = s.project_id("web-platform").await;
    let data = s.project_id("data-pipeline").await;
    let (scoped, token) = create(&s, json!({"name": "web-only", "projects": [web]})).await;
    assert_eq!(token["projects"], json!([web]));
    let (_, list) = s.get("/api/v1/containers", &scoped).await;
    let projects: Vec<&str> = list["containers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["project_name"].as_str().unwrap())
        .collect();
    assert!(
        !projects.is_empty() && projects.iter().all(|p| *p == "web-platform"),
        "{projects:?}"
    );
    let db_primary = s.container_id("db-primary").await;
    let (st, _) = s
        .get(&format!("/api/v1/containers/{db_primary}"), &scoped)
        .await;
    assert_eq!(st, 404, "the other project is out of its sight");
    let web_app = s.container_id("web-app").await;
    let (st, body) = s
        .call(
            reqwest::Method::POST,
            &format!("/api/v1/containers/{web_app}/copy"),
            &scoped,
            Some(json!({"target_project_id": data})),
        )
        .await;
    assert!(
        st == 404 || st == 403,
        "no copy into a project it is not for: {st} {body}"
    );
    let (st, _) = s
        .call(
            reqwest::Method::POST,
            &format!("/api/v1/containers/{web_app}/copy"),
            &scoped,
            Some(json!({"target_project_id": web, "name": "scoped-copy"})),
        )
        .await;
    assert_eq!(st, 202, "within its project it writes");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_token_is_refused_and_bad_requests_say_why() {
    let s = TestServer::start().await;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    let (short, _) = create(&s, json!({"name": "short", "expires_at": now + 1500})).await;
    let (st, _) = s.get("/api/v1/projects", &short).await;
    assert_eq!(st, 200);
    tokio::time::sleep(Duration::from_millis(3600)).await;
    let (st, _) = s.get("/api/v1/projects", &short).await;
    assert_eq!(st, 401, "expired");

    for (body, field) in [
        (json!({"name": ""}), "name"),
        (json!({"name": "x", "expires_at": now - 1}), "expires_at"),
        (json!({"name": "x", "projects": []}), "projects"),
        (
            json!({"name": "x", "projects": ["000000000000000000000000"]}),
            "projects",
        ),
    ] {
        let (st, err) = s
            .call(
                reqwest::Method::POST,
                "/api/v1/tokens",
                &s.admin_token,
                Some(body.clone()),
            )
            .await;
        assert!(st == 422 || st == 404, "{body}: {st} {err}");
        assert_eq!(err["error"]["field"], field, "{err}");
    }
    // alice cannot limit a token to a project she is not in.
    let data = s.project_id("data-pipeline").await;
    let (st, _) = s
        .call(
            reqwest::Method::POST,
            "/api/v1/tokens",
            &s.alice_token,
            Some(json!({"name": "x", "projects": [data]})),
        )
        .await;
    assert_eq!(st, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_limited_admin_token_has_no_admin_power() {
    let s = TestServer::start().await;
    let web = s.project_id("web-platform").await;
    let (limited, _) = create(&s, json!({"name": "web-ci", "projects": [web]})).await;
    let (ro, _) = create(&s, json!({"name": "all-ro", "read_only": true})).await;
    let staging = s.container_id("web-app-staging").await;
    for token in [&limited, &ro] {
        for (method, path, body) in [
            (reqwest::Method::GET, "/api/v1/users".to_string(), None),
            (
                reqwest::Method::POST,
                "/api/v1/users".to_string(),
                Some(json!({"name": "eve", "is_admin": true})),
            ),
            (
                reqwest::Method::POST,
                "/api/v1/users/admin/password".to_string(),
                None,
            ),
            (
                reqwest::Method::PATCH,
                "/api/v1/users/alice".to_string(),
                Some(json!({"is_admin": true})),
            ),
            (
                reqwest::Method::POST,
                "/api/v1/projects".to_string(),
                Some(json!({"name": "mine"})),
            ),
            (
                reqwest::Method::POST,
                "/api/v1/tokens".to_string(),
                Some(json!({"name": "wider"})),
            ),
            // Its own project's members and settings too: a leaked CI token could make
            // anyone an admin of the project, beyond the token's own revocation.
            (
                reqwest::Method::PUT,
                format!("/api/v1/projects/{web}/members/alice"),
                Some(json!({"role": "admin"})),
            ),
            (
                reqwest::Method::DELETE,
                format!("/api/v1/projects/{web}/members/alice"),
                None,
            ),
            (
                reqwest::Method::PATCH,
                format!("/api/v1/projects/{web}"),
                Some(json!({"description": "by a limited token"})),
            ),
        ] {
            if token == &ro && method == reqwest::Method::GET {
                continue; // reading the users is an admin's read
            }
            let (st, body) = s.call(method.clone(), &path, token, body).await;
            assert_eq!(st, 403, "{method} {path}: {body}");
        }
    }
    // And a read-only token writes nothing anywhere.
    for (method, path, body) in [
        (
            reqwest::Method::POST,
            format!("/api/v1/containers/{staging}/sync"),
            None,
        ),
        (
            reqwest::Method::POST,
            format!("/api/v1/containers/{staging}/snapshots"),
            Some(json!({"name": "snap"})),
        ),
        (
            reqwest::Method::POST,
            format!("/api/v1/containers/{staging}/restart"),
            None,
        ),
        (
            reqwest::Method::PUT,
            format!("/api/v1/containers/{staging}/command"),
            Some(json!({"args": ["/bin/sh"]})),
        ),
        (
            reqwest::Method::PUT,
            format!("/api/v1/containers/{staging}/network-rules"),
            Some(json!({"rules": []})),
        ),
        (
            reqwest::Method::PATCH,
            format!("/api/v1/projects/{web}"),
            Some(json!({"description": "x"})),
        ),
        (
            reqwest::Method::PUT,
            format!("/api/v1/projects/{web}/members/alice"),
            Some(json!({"role": "admin"})),
        ),
    ] {
        let (st, body) = s.call(method.clone(), &path, &ro, body).await;
        assert_eq!(st, 403, "{method} {path}: {body}");
    }
    let (_, users) = s.get("/api/v1/users", &s.admin_token).await;
    assert!(!users.to_string().contains("\"eve\""));
}
