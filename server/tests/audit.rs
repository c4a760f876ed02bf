//! The audit log: every write and login, once, with who, what, from where and the result;
//! readable by platform admins (all) and project admins (their projects); never changed.

mod common;

use common::TestServer;
use reqwest::Method;
use serde_json::{json, Value};

async fn entries(s: &TestServer, token: &str, query: &str) -> (u16, Vec<Value>) {
    let (st, page) = s.get(&format!("/api/v1/audit{query}"), token).await;
    let list = page["entries"].as_array().cloned().unwrap_or_default();
    (st, list)
}

fn count(list: &[Value], action: &str, target: &str, result: &str) -> usize {
    list.iter()
        .filter(|e| e["action"] == action && e["target"] == target && e["result"] == result)
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_write_and_login_is_recorded_once_and_read_by_admins() {
    let s = TestServer::start().await;
    let web = s.project_id("web-platform").await;
    let data = s.project_id("data-pipeline").await;
    let web_app = s.container_id("web-app").await;
    let etl = s.container_id("etl-worker").await;

    let (st, copy) = s
        .call(
            Method::POST,
            &format!("/api/v1/containers/{web_app}/copy"),
            &s.admin_token,
            Some(json!({"target_project_id": web, "name": "audited"})),
        )
        .await;
    assert_eq!(st, 202, "{copy}");
    let (st, _) = s
        .call(
            Method::POST,
            &format!("/api/v1/containers/{web_app}/copy"),
            &s.alice_token,
            Some(json!({"target_project_id": data})),
        )
        .await;
    assert_eq!(st, 404, "alice cannot copy into a project she is not in");
    let (st, _) = s
        .call(
            Method::POST,
            &format!("/api/v1/containers/{etl}/stop?timeout=1"),
            &s.admin_token,
            None,
        )
        .await;
    assert_eq!(st, 200);
    s.call(
        Method::POST,
        "/api/v1/tokens",
        &s.admin_token,
        Some(json!({"name": "audit-token"})),
    )
    .await;
    s.call(
        Method::PUT,
        &format!("/api/v1/projects/{data}/members/alice"),
        &s.admin_token,
        Some(json!({"role": "viewer"})),
    )
    .await;
    let form = |pw: &str| {
        let url = s.url("/auth/login");
        let pw = pw.to_string();
        async move {
            TestServer::client()
                .post(url)
                .form(&[("username", "admin"), ("password", pw.as_str())])
                .send()
                .await
                .unwrap()
        }
    };
    form("not-the-password").await;
    form(&s.admin_password).await;

    let (st, all) = entries(&s, &s.admin_token, "?limit=500").await;
    assert_eq!(st, 200);
    assert_eq!(count(&all, "container.copy", &web_app, "ok"), 1, "{all:#?}");
    assert_eq!(count(&all, "container.copy", &web_app, "refused"), 1);
    assert_eq!(count(&all, "container.stop", &etl, "ok"), 1);
    assert_eq!(count(&all, "token.create", "audit-token", "ok"), 1);
    assert_eq!(count(&all, "member.set", "alice", "ok"), 1);
    assert_eq!(count(&all, "login", "admin", "refused"), 1);
    assert_eq!(count(&all, "login", "admin", "ok"), 1);
    let refused = all
        .iter()
        .find(|e| e["action"] == "container.copy" && e["result"] == "refused")
        .unwrap();
    assert_eq!(refused["actor_name"], "alice");
    assert_eq!(refused["address"], "127.0.0.1");
    assert!(
        refused["detail"].as_str().unwrap().contains("not found"),
        "{refused}"
    );
    // What a grant gave is in its entry: granting and taking away read apart.
    let granted = all
        .iter()
        .find(|e| e["action"] == "member.set" && e["result"] == "ok")
        .unwrap();
    assert_eq!(granted["detail"], "role viewer", "{granted}");
    let copied = all
        .iter()
        .find(|e| e["action"] == "container.copy" && e["result"] == "ok")
        .unwrap();
    assert_eq!(copied["project_id"], web.as_str());
    assert!(
        all.windows(2)
            .all(|w| w[0]["id"].as_str() > w[1]["id"].as_str()),
        "newest first"
    );

    // Pages.
    let (_, first) = entries(&s, &s.admin_token, "?limit=2").await;
    let (_, page) = s.get("/api/v1/audit?limit=2", &s.admin_token).await;
    let next = page["next_before"].as_str().unwrap();
    let (_, second) = entries(&s, &s.admin_token, &format!("?limit=2&before={next}")).await;
    assert_eq!(first.len(), 2);
    assert!(second.iter().all(|e| !first.contains(e)));
    let (_, stops) = entries(&s, &s.admin_token, "?action=container.stop&actor=admin").await;
    assert!(!stops.is_empty() && stops.iter().all(|e| e["action"] == "container.stop"));

    // alice: not an admin of any project, then of web-platform: its entries only.
    let (st, _) = entries(&s, &s.alice_token, "").await;
    assert_eq!(st, 403);
    s.call(
        Method::PUT,
        &format!("/api/v1/projects/{web}/members/alice"),
        &s.admin_token,
        Some(json!({"role": "admin"})),
    )
    .await;
    let (st, hers) = entries(&s, &s.alice_token, "?limit=500").await;
    assert_eq!(st, 200);
    // A project she cannot see is not there, as everywhere.
    let (st, page) = s
        .get(
            &format!("/api/v1/audit?project_id={}", "0".repeat(24)),
            &s.alice_token,
        )
        .await;
    assert_eq!(
        (st, page["error"]["field"].as_str()),
        (404, Some("project_id")),
        "{page}"
    );
    assert!(
        !hers.is_empty() && hers.iter().all(|e| e["project_id"] == web.as_str()),
        "{hers:#?}"
    );

    // Append-only: no way to change it.
    for method in [Method::PUT, Method::DELETE, Method::POST, Method::PATCH] {
        let (st, _) = s
            .call(
                method.clone(),
                "/api/v1/audit",
                &s.admin_token,
                Some(json!({})),
            )
            .await;
        assert_eq!(st, 405, "{method}");
    }
}
