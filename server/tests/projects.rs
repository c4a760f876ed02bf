//! Projects and members through the API: who may make, change and delete them, and a
//! member removed loses access at once.

mod common;

use common::TestServer;
use serde_json::json;

use reqwest::Method;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admins_make_projects_and_project_admins_manage_members() {
    let s = TestServer::start().await;
    // Only platform admins make projects.
    let (st, _) = s
        .call(
            Method::POST,
            "/api/v1/projects",
            &s.alice_token,
            Some(json!({"name": "alices"})),
        )
        .await;
    assert_eq!(st, 403);
    let (st, p) = s
        .call(
            Method::POST,
            "/api/v1/projects",
            &s.admin_token,
            Some(json!({"name": "staging", "description": "Pre-production copies"})),
        )
        .await;
    assert_eq!(st, 201, "{p}");
    let id = p["id"].as_str().unwrap().to_string();
    // Taken whatever its case, as user and container names are; by a rename too.
    for (method, path, name) in [
        (Method::POST, "/api/v1/projects".to_string(), "staging"),
        (Method::POST, "/api/v1/projects".to_string(), "STAGING"),
        (
            Method::PATCH,
            format!("/api/v1/projects/{}", s.project_id("web-platform").await),
            "Staging",
        ),
    ] {
        let (st, e) = s
            .call(method, &path, &s.admin_token, Some(json!({"name": name})))
            .await;
        assert_eq!(
            (st, e["error"]["field"].as_str()),
            (409, Some("name")),
            "{name}: {e}"
        );
    }
    let (st, e) = s
        .call(
            Method::POST,
            "/api/v1/projects",
            &s.admin_token,
            Some(json!({"name": "Bad Name"})),
        )
        .await;
    assert_eq!(st, 422, "{e}");

    // alice cannot see it until she is a member.
    let (st, _) = s
        .get(&format!("/api/v1/projects/{id}/members"), &s.alice_token)
        .await;
    assert_eq!(st, 404);
    // (A user is named whatever the case: ALICE is alice.)
    let (st, m) = s
        .call(
            Method::PUT,
            &format!("/api/v1/projects/{id}/members/ALICE"),
            &s.admin_token,
            Some(json!({"role": "viewer"})),
        )
        .await;
    assert_eq!(st, 200, "{m}");
    assert_eq!(
        (m["role"].as_str(), m["user_name"].as_str()),
        (Some("viewer"), Some("alice"))
    );
    let (_, projects) = s.get("/api/v1/projects", &s.alice_token).await;
    assert!(projects.to_string().contains("staging"), "{projects}");
    // A viewer cannot manage members or rename; an admin of the project can.
    let (st, _) = s
        .call(
            Method::PUT,
            &format!("/api/v1/projects/{id}/members/alice"),
            &s.alice_token,
            Some(json!({"role": "admin"})),
        )
        .await;
    assert_eq!(st, 403, "no promoting oneself");
    s.call(
        Method::PUT,
        &format!("/api/v1/projects/{id}/members/alice"),
        &s.admin_token,
        Some(json!({"role": "admin"})),
    )
    .await;
    let (st, renamed) = s
        .call(
            Method::PATCH,
            &format!("/api/v1/projects/{id}"),
            &s.alice_token,
            Some(json!({"name": "staging-eu"})),
        )
        .await;
    assert_eq!(st, 200, "{renamed}");
    assert_eq!(
        renamed["description"], "Pre-production copies",
        "unchanged fields stay"
    );
    let (_, members) = s
        .get(&format!("/api/v1/projects/{id}/members"), &s.alice_token)
        .await;
    assert_eq!(members["members"][0]["user_name"], "alice");
    let (st, _) = s
        .call(
            Method::PUT,
            &format!("/api/v1/projects/{id}/members/nobody"),
            &s.alice_token,
            Some(json!({"role": "viewer"})),
        )
        .await;
    assert_eq!(st, 404, "no such user");
    // Nor does she demote or remove herself: the project would have no admin of its own.
    for (method, body) in [
        (Method::PUT, Some(json!({"role": "operator"}))),
        (Method::DELETE, None),
    ] {
        let (st, e) = s
            .call(
                method.clone(),
                &format!("/api/v1/projects/{id}/members/alice"),
                &s.alice_token,
                body,
            )
            .await;
        assert_eq!(st, 409, "{method}: {e}");
        assert!(
            e["error"]["message"]
                .as_str()
                .unwrap()
                .contains("another of its admins"),
            "{e}"
        );
    }
    let (_, members) = s
        .get(&format!("/api/v1/projects/{id}/members"), &s.alice_token)
        .await;
    assert_eq!(members["members"][0]["role"], "admin", "{members}");

    // Removed (by a platform admin): out at once.
    let (st, _) = s
        .call(
            Method::DELETE,
            &format!("/api/v1/projects/{id}/members/alice"),
            &s.admin_token,
            None,
        )
        .await;
    assert_eq!(st, 204);
    let (st, _) = s
        .get(&format!("/api/v1/projects/{id}/members"), &s.alice_token)
        .await;
    assert_eq!(st, 404, "her very next request");

    // Only platform admins delete, and only an empty project.
    let web = s.project_id("web-platform").await;
    let (st, _) = s
        .call(
            Method::DELETE,
            &format!("/api/v1/projects/{web}"),
            &s.alice_token,
            None,
        )
        .await;
    assert_eq!(st, 403, "alice (operator of web-platform) cannot delete it");
    let (st, e) = s
        .call(
            Method::DELETE,
            &format!("/api/v1/projects/{web}"),
            &s.admin_token,
            None,
        )
        .await;
    assert_eq!(st, 409, "it holds containers: {e}");
    let (st, _) = s
        .call(
            Method::DELETE,
            &format!("/api/v1/projects/{id}"),
            &s.admin_token,
            None,
        )
        .await;
    assert_eq!(st, 204);
    let (st, projects) = s.get("/api/v1/projects", &s.admin_token).await;
    assert_eq!(st, 200);
    assert!(!projects.to_string().contains("staging-eu"), "{projects}");
    let (st, p) = s
        .call(
            Method::POST,
            "/api/v1/projects",
            &s.admin_token,
            Some(json!({"name": "staging-eu"})),
        )
        .await;
    assert_eq!(st, 201, "the name is free again: {p}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_member_copies_into_their_project_and_a_removed_one_cannot() {
    let s = TestServer::start().await;
    let (_, p) = s
        .call(
            Method::POST,
            "/api/v1/projects",
            &s.admin_token,
            Some(json!({"name": "team-b"})),
        )
        .await;
    let id = p["id"].as_str().unwrap().to_string();
    let web_app = s.container_id("web-app").await;
    let copy = |token: String| {
        let (base, id, web_app) = (s.base.clone(), id.clone(), web_app.clone());
        async move {
            TestServer::client()
                .post(format!("{base}/api/v1/containers/{web_app}/copy"))
                .bearer_auth(token)
                .json(&json!({"target_project_id": id, "name": "b-copy"}))
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }
    };
    assert_eq!(copy(s.alice_token.clone()).await, 404, "not hers");
    s.call(
        Method::PUT,
        &format!("/api/v1/projects/{id}/members/alice"),
        &s.admin_token,
        Some(json!({"role": "operator"})),
    )
    .await;
    assert_eq!(
        copy(s.alice_token.clone()).await,
        202,
        "an operator copies into it"
    );
    s.call(
        Method::DELETE,
        &format!("/api/v1/projects/{id}/members/alice"),
        &s.admin_token,
        None,
    )
    .await;
    assert_eq!(
        copy(s.alice_token.clone()).await,
        404,
        "removed: not any more"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_project_admins_demoting_each_other_at_once_leave_one() {
    let s = TestServer::start().await;
    let (st, p) = s
        .call(
            Method::POST,
            "/api/v1/projects",
            &s.admin_token,
            Some(json!({"name": "contested"})),
        )
        .await;
    assert_eq!(st, 201, "{p}");
    let id = p["id"].as_str().unwrap().to_string();
    let mut tokens = Vec::new();
    for name in ["pa", "pb"] {
        tokens.push(s.user_with_token(name).await.1);
    }
    let member = |who: &str| format!("/api/v1/projects/{id}/members/{who}");
    for round in 0..5 {
        for who in ["pa", "pb"] {
            let (st, _) = s
                .call(
                    Method::PUT,
                    &member(who),
                    &s.admin_token,
                    Some(json!({"role": "admin"})),
                )
                .await;
            assert_eq!(st, 200);
        }
        // Each takes the other's role (demoted, or taken out) at the same moment.
        let (pa_to_pb, pb_to_pa) = (member("pb"), member("pa"));
        let (a, b) = if round % 2 == 0 {
            tokio::join!(
                s.call(
                    Method::PUT,
                    &pa_to_pb,
                    &tokens[0],
                    Some(json!({"role": "viewer"}))
                ),
                s.call(
                    Method::PUT,
                    &pb_to_pa,
                    &tokens[1],
                    Some(json!({"role": "viewer"}))
                ),
            )
        } else {
            tokio::join!(
                s.call(Method::DELETE, &pa_to_pb, &tokens[0], None),
                s.call(Method::DELETE, &pb_to_pa, &tokens[1], None),
            )
        };
        let (_, members) = s
            .get(&format!("/api/v1/projects/{id}/members"), &s.admin_token)
            .await;
        let admins = members["members"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|m| m["role"] == "admin")
            .count();
        assert_eq!(admins, 1, "round {round}: {a:?} {b:?}: {members}");
        // The loser is refused: its role went before its change committed (403), or
        // before it was read (taken out: it no longer sees the project, 404).
        assert!(
            [a.0, b.0].iter().any(|st| [200, 204].contains(st))
                && [a.0, b.0].iter().any(|st| [403, 404].contains(st)),
            "round {round}: {a:?} {b:?}"
        );
    }
}
