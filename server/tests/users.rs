//! Users through the API: platform admins make, disable, promote and reset them; each
//! user changes their own password.

mod common;

use common::TestServer;
use reqwest::Method;
use serde_json::json;

/// Whether a console login with this name and password works.
async fn logs_in(s: &TestServer, name: &str, password: &str) -> bool {
    let resp = TestServer::client()
        .post(s.url("/auth/login"))
        .form(&[("username", name), ("password", password)])
        .send()
        .await
        .unwrap();
    resp.headers().get("set-cookie").is_some()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admins_make_disable_and_reset_users() {
    let s = TestServer::start().await;
    let (st, _) = s
        .call(Method::GET, "/api/v1/users", &s.alice_token, None)
        .await;
    assert_eq!(st, 403, "not for alice");
    let (st, _) = s
        .call(
            Method::POST,
            "/api/v1/users",
            &s.alice_token,
            Some(json!({"name": "eve"})),
        )
        .await;
    assert_eq!(st, 403);

    let (st, made) = s
        .call(
            Method::POST,
            "/api/v1/users",
            &s.admin_token,
            Some(json!({"name": "bob"})),
        )
        .await;
    assert_eq!(st, 201, "{made}");
    let password = made["password"].as_str().unwrap().to_string();
    assert!(password.len() >= 16);
    assert!(logs_in(&s, "bob", &password).await, "bob logs in with it");
    let (st, _) = s
        .call(
            Method::POST,
            "/api/v1/users",
            &s.admin_token,
            Some(json!({"name": "bob"})),
        )
        .await;
    assert_eq!(st, 409);
    // Nor a name that differs only in case: nobody would tell "Bob" from bob in a list.
    let (st, refused) = s
        .call(
            Method::POST,
            "/api/v1/users",
            &s.admin_token,
            Some(json!({"name": "Bob"})),
        )
        .await;
    assert_eq!(st, 409, "{refused}");
    assert_eq!(refused["error"]["field"], "name", "{refused}");
    assert!(
        refused["error"]["message"]
            .as_str()
            .unwrap()
            .contains("\"bob\" exists"),
        "{refused}"
    );
    let (_, list) = s
        .call(Method::GET, "/api/v1/users", &s.admin_token, None)
        .await;
    assert!(list["users"]
        .as_array()
        .unwrap()
        .iter()
        .any(|u| u["name"] == "bob" && u["disabled"] == false));

    // Disabled: no login, no session, no token; enabled again: the token works again.
    let bobs_token = doppel::auth::create_token(s.service.db(), "bob", "t")
        .await
        .unwrap();
    let cookie = s.session("bob", &password).await;
    let (st, _) = s.get("/api/v1/projects", &bobs_token).await;
    assert_eq!(st, 200);
    let (st, u) = s
        .call(
            Method::PATCH,
            "/api/v1/users/bob",
            &s.admin_token,
            Some(json!({"disabled": true})),
        )
        .await;
    assert_eq!((st, &u["disabled"]), (200, &json!(true)), "{u}");
    let (st, _) = s.get("/api/v1/projects", &bobs_token).await;
    assert_eq!(st, 401, "his token stops at once");
    let resp = TestServer::client()
        .get(s.url("/api/v1/projects"))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401, "his session too");
    assert!(!logs_in(&s, "bob", &password).await);
    s.call(
        Method::PATCH,
        "/api/v1/users/bob",
        &s.admin_token,
        Some(json!({"disabled": false})),
    )
    .await;
    let (st, _) = s.get("/api/v1/projects", &bobs_token).await;
    assert_eq!(st, 200, "enabled again");

    // Promoted: he sees every project.
    s.call(
        Method::PATCH,
        "/api/v1/users/bob",
        &s.admin_token,
        Some(json!({"is_admin": true})),
    )
    .await;
    let (_, projects) = s.get("/api/v1/projects", &bobs_token).await;
    assert_eq!(projects["projects"].as_array().unwrap().len(), 2);

    // Reset: the old password no longer works, the new one does.
    let (st, reset) = s
        .call(
            Method::POST,
            "/api/v1/users/bob/password",
            &s.admin_token,
            None,
        )
        .await;
    assert_eq!(st, 200, "{reset}");
    assert!(!logs_in(&s, "bob", &password).await);
    assert!(logs_in(&s, "bob", reset["password"].as_str().unwrap()).await);

    // Nobody locks themselves out.
    let (st, _) = s
        .call(
            Method::PATCH,
            "/api/v1/users/admin",
            &s.admin_token,
            Some(json!({"disabled": true})),
        )
        .await;
    assert_eq!(st, 409);
    let (st, _) = s
        .call(
            Method::PATCH,
            "/api/v1/users/admin",
            &s.admin_token,
            Some(json!({"is_admin": false})),
        )
        .await;
    assert_eq!(st, 409);
    let (st, _) = s
        .call(
            Method::PATCH,
            "/api/v1/users/nobody",
            &s.admin_token,
            Some(json!({"disabled": true})),
        )
        .await;
    assert_eq!(st, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_admins_taking_each_others_rights_at_once_leave_one() {
    let s = TestServer::start().await;
    for round in 0..5 {
        let name = format!("adm{round}");
        let (_, token) = s.user_with_token(&name).await;
        let (st, _) = s
            .call(
                Method::PATCH,
                &format!("/api/v1/users/{name}"),
                &s.admin_token,
                Some(json!({"is_admin": true})),
            )
            .await;
        assert_eq!(st, 200);
        // Each demotes the other at the same moment: one of them wins, and stays an admin.
        let other = format!("/api/v1/users/{name}");
        let demote_other = s.call(
            Method::PATCH,
            &other,
            &s.admin_token,
            Some(json!({"is_admin": false})),
        );
        let demote_admin = s.call(
            Method::PATCH,
            "/api/v1/users/admin",
            &token,
            Some(json!({"is_admin": false})),
        );
        let ((a, _), (b, body)) = tokio::join!(demote_other, demote_admin);
        let (_, users) = s.get("/api/v1/users", &s.admin_token).await;
        let (_, users_too) = s.get("/api/v1/users", &token).await;
        let admins = [&users, &users_too]
            .iter()
            .flat_map(|u| u["users"].as_array().cloned().unwrap_or_default())
            .filter(|u| u["is_admin"] == true)
            .map(|u| u["name"].as_str().unwrap().to_string())
            .collect::<std::collections::BTreeSet<_>>();
        assert_eq!(admins.len(), 1, "{a} {b} {body}: {admins:?}");
        assert!(
            [a, b].contains(&200) && [a, b].contains(&403),
            "{a} {b} {body}"
        );
        if admins.contains(&name) {
            // The other way round: the admin gets their rights back, and the next round
            // starts from one admin again.
            let (st, _) = s
                .call(
                    Method::PATCH,
                    "/api/v1/users/admin",
                    &token,
                    Some(json!({"is_admin": true})),
                )
                .await;
            assert_eq!(st, 200);
            let (st, _) = s
                .call(
                    Method::PATCH,
                    &other,
                    &s.admin_token,
                    Some(json!({"is_admin": false})),
                )
                .await;
            assert_eq!(st, 200);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_changes_their_own_password() {
    let s = TestServer::start().await;
    let (first, token) = s.user_with_token("carol").await;
    let (st, e) = s
        .call(
            Method::POST,
            "/api/v1/me/password",
            &token,
            Some(json!({"current": "wrong-one", "new": "a-new-password"})),
        )
        .await;
    assert_eq!(
        (st, e["error"]["field"].as_str()),
        (403, Some("current")),
        "{e}"
    );
    let (st, e) = s
        .call(
            Method::POST,
            "/api/v1/me/password",
            &token,
            Some(json!({"current": first, "new": "short"})),
        )
        .await;
    assert_eq!(st, 422, "{e}");
    let (st, _) = s
        .call(
            Method::POST,
            "/api/v1/me/password",
            &token,
            Some(json!({"current": first, "new": "a-new-password"})),
        )
        .await;
    assert_eq!(st, 204);
    assert!(!logs_in(&s, "carol", &first).await);
    assert!(logs_in(&s, "carol", "a-new-password").await);
    // A limited token cannot.
    let (ro, _) = {
        let (st, c) = s
            .call(
                Method::POST,
                "/api/v1/tokens",
                &token,
                Some(json!({"name": "ro", "read_only": true})),
            )
            .await;
        assert_eq!(st, 201, "{c}");
        (c["secret"].as_str().unwrap().to_string(), ())
    };
    let (st, _) = s
        .call(
            Method::POST,
            "/api/v1/me/password",
            &ro,
            Some(json!({"current": "a-new-password", "new": "another-one"})),
        )
        .await;
    assert_eq!(st, 403);
}

/// Guessing one's current password through `/me/password` (a stolen session or token) is
/// slowed down as guessing it at the login form is: after five wrong ones, even the right
/// one waits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn guessing_the_current_password_is_throttled() {
    let s = TestServer::start().await;
    let (password, token) = s.user_with_token("gus").await;
    let change = |current: &str| json!({"current": current, "new": "a-new-password"});
    for i in 0..5 {
        let (st, e) = s
            .call(
                Method::POST,
                "/api/v1/me/password",
                &token,
                Some(change(&format!("guess-{i}"))),
            )
            .await;
        assert_eq!(st, 403, "{e}");
    }
    let (st, e) = s
        .call(
            Method::POST,
            "/api/v1/me/password",
            &token,
            Some(change(&password)),
        )
        .await;
    assert_eq!(st, 429, "{e}");
    assert_eq!(e["error"]["field"], "current", "{e}");
    // When to try again, as the login form says it: in the body and as Retry-After.
    let wait = e["error"]["retry_after"].as_u64().unwrap_or(0);
    assert!(wait >= 1, "{e}");
    let resp = TestServer::client()
        .post(s.url("/api/v1/me/password"))
        .bearer_auth(&token)
        .json(&change(&password))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 429);
    let header = resp.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse::<u64>();
    assert!(
        header.is_ok_and(|h| (1..=wait).contains(&h)),
        "{:?}",
        resp.headers()
    );
    // The login form counts the same failures.
    assert!(!logs_in(&s, "gus", &password).await);
}
