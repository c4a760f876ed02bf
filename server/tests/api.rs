//! The REST read API over real HTTP against a real doppel with demo data.

mod common;

use common::TestServer;
use serde_json::Value;

fn names(list: &Value) -> Vec<String> {
    let mut v: Vec<String> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x["name"].as_str().unwrap().to_string())
        .collect();
    v.sort();
    v
}

#[tokio::test]
async fn requests_without_valid_credentials_get_401_json() {
    let s = TestServer::start().await;
    let resp = TestServer::client()
        .get(s.url("/api/v1/containers"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);
    assert!(resp.headers()["www-authenticate"]
        .to_str()
        .unwrap()
        .starts_with("Bearer"));
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["error"]["code"], "unauthorized");
    assert!(body["error"]["message"]
        .as_str()
        .unwrap()
        .contains("Bearer"));

    for bad in [
        "Bearer dpl_0000",
        "Bearer ",
        "Basic YWRtaW46eA==",
        "",
        &s.admin_token,
    ] {
        let resp = TestServer::client()
            .get(s.url("/api/v1/projects"))
            .header("authorization", bad)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 401, "token {bad:?}");
    }
}

#[tokio::test]
async fn admin_sees_the_demo_inventory() {
    let s = TestServer::start().await;
    let (st, body) = s.get("/api/v1/projects", &s.admin_token).await;
    assert_eq!(st, 200);
    assert_eq!(names(&body["projects"]), ["data-pipeline", "web-platform"]);
    let (_, body) = s.get("/api/v1/servers", &s.admin_token).await;
    assert_eq!(names(&body["servers"]), ["local-a", "local-b", "local-c"]);
    assert!(
        body["servers"][0]["storage_root"].is_string(),
        "admins see paths"
    );
    let (_, body) = s.get("/api/v1/containers", &s.admin_token).await;
    assert_eq!(
        names(&body["containers"]),
        [
            "db-primary",
            "edge-proxy",
            "etl-worker",
            "web-app",
            "web-app-staging"
        ]
    );
    let staging = body["containers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "web-app-staging")
        .unwrap();
    assert_eq!(staging["source"]["name"], "web-app");
    assert_eq!(staging["server_name"], "local-b");
}

#[tokio::test]
async fn container_detail_has_snapshots_rules_lineage_and_a_real_root() {
    let s = TestServer::start().await;
    let id = s.container_id("web-app").await;
    let (st, c) = s
        .get(&format!("/api/v1/containers/{id}"), &s.admin_token)
        .await;
    assert_eq!(st, 200, "{c}");
    assert_eq!(c["name"], "web-app");
    assert_eq!(c["status"], "running");
    assert_eq!(c["may_change"], true, "the admin may change it");
    assert_eq!(c["snapshots"][0]["name"], "before-upgrade");
    assert_eq!(c["firewall_rules"].as_array().unwrap().len(), 3);
    assert_eq!(c["firewall_rules"][0]["port"], "80");
    assert_eq!(c["network_rules"][0]["network"], "web-frontend");
    assert_eq!(names(&c["copies"]), ["web-app-staging"]);
    assert!(c["ssh_public_key"]
        .as_str()
        .unwrap()
        .starts_with("ssh-ed25519 "));
    let root = std::path::PathBuf::from(c["root_path"].as_str().unwrap());
    // (Without --image-trees: a directory, or on btrfs a subvolume.)
    assert!(
        matches!(c["tree"].as_str(), Some("directory" | "subvolume")),
        "{c}"
    );
    assert!(
        root.join("etc/hostname").is_file(),
        "the tree exists on disk"
    );
    assert!(std::fs::symlink_metadata(root.join("srv/web-app/current"))
        .unwrap()
        .file_type()
        .is_symlink());
    let (m, _) =
        doppel::engine::scan::scan(&root, None, true, &doppel::engine::Control::new()).unwrap();
    assert_eq!(c["file_count"], m.files());
    assert_eq!(c["size_bytes"], m.bytes());

    // The copy has its own tree, same content, and no inherited key.
    let copy_id = s.container_id("web-app-staging").await;
    let (_, copy) = s
        .get(&format!("/api/v1/containers/{copy_id}"), &s.admin_token)
        .await;
    assert_eq!(copy["source"]["id"], id.as_str());
    assert!(copy["ssh_public_key"].is_null());
    let copy_root = std::path::PathBuf::from(copy["root_path"].as_str().unwrap());
    assert_ne!(copy_root, root);
    assert_eq!(
        std::fs::read(copy_root.join("var/lib/web-app/data-00.db")).unwrap(),
        std::fs::read(root.join("var/lib/web-app/data-00.db")).unwrap()
    );
    // ... and it is a new machine, as a copy job makes one: its own host name, machine id
    // and host key, and no one's key to log in as root.
    let read = |r: &std::path::Path, f: &str| std::fs::read_to_string(r.join(f)).unwrap();
    assert_eq!(read(&copy_root, "etc/hostname"), "web-app-staging\n");
    for own in ["etc/machine-id", "etc/ssh/ssh_host_ed25519_key"] {
        assert_ne!(read(&copy_root, own), read(&root, own), "{own}");
    }
    assert!(!copy_root.join("root/.ssh/authorized_keys").exists());
    // The source's key in the API is the one its tree lets in, and a valid one.
    let key = c["ssh_public_key"].as_str().unwrap();
    assert_eq!(read(&root, "root/.ssh/authorized_keys").trim(), key);
    let (st, refused) = s
        .call(
            reqwest::Method::POST,
            &format!("/api/v1/containers/{id}/copy"),
            &s.admin_token,
            Some(serde_json::json!({
                "target_project_id": c["project_id"], "name": "same-key", "ssh_public_key": key
            })),
        )
        .await;
    assert_eq!(st, 409, "a valid key, already in use: {refused}");
    // It matches its source as it was copied: current, with no sync run yet.
    let (_, status) = s.get("/api/v1/sync-status", &s.admin_token).await;
    let row = status["copies"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["copy"]["id"] == copy_id.as_str())
        .unwrap()
        .clone();
    assert_eq!(row["freshness"], "current", "{row}");
}

#[tokio::test]
async fn membership_limits_what_a_user_sees() {
    let s = TestServer::start().await;
    let (st, body) = s.get("/api/v1/projects", &s.alice_token).await;
    assert_eq!(st, 200);
    assert_eq!(names(&body["projects"]), ["web-platform"]);
    assert_eq!(body["projects"][0]["role"], "operator");
    let (_, body) = s.get("/api/v1/containers", &s.alice_token).await;
    assert_eq!(
        names(&body["containers"]),
        ["edge-proxy", "web-app", "web-app-staging"]
    );

    // Another project's container and the project itself look exactly like missing ones.
    let hidden = s.container_id("db-primary").await;
    let (st, body) = s
        .get(&format!("/api/v1/containers/{hidden}"), &s.alice_token)
        .await;
    assert_eq!(st, 404);
    let (_, missing) = s
        .get(
            "/api/v1/containers/000000000000000000000000",
            &s.alice_token,
        )
        .await;
    assert_eq!(body["error"]["code"], missing["error"]["code"]);
    let (_, admin_projects) = s.get("/api/v1/projects", &s.admin_token).await;
    let data_pid = admin_projects["projects"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "data-pipeline")
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let (st, _) = s
        .get(
            &format!("/api/v1/containers?project_id={data_pid}"),
            &s.alice_token,
        )
        .await;
    assert_eq!(st, 404);
    let (st, _) = s
        .get(
            &format!("/api/v1/jobs?project_id={data_pid}"),
            &s.alice_token,
        )
        .await;
    assert_eq!(st, 404);
    let (st, _) = s
        .get(
            &format!("/api/v1/sync-status?project_id={data_pid}"),
            &s.alice_token,
        )
        .await;
    assert_eq!(st, 404);
    // A sync status of one project has that project's copies alone: web-platform holds
    // the demo's copy, data-pipeline none.
    let web_pid = s.project_id("web-platform").await;
    let (_, all) = s.get("/api/v1/sync-status", &s.admin_token).await;
    for (pid, expected) in [(&web_pid, 1), (&data_pid, 0)] {
        let (st, one) = s
            .get(
                &format!("/api/v1/sync-status?project_id={pid}"),
                &s.admin_token,
            )
            .await;
        assert_eq!(st, 200, "{one}");
        let copies = one["copies"].as_array().unwrap();
        assert_eq!(copies.len(), expected, "{one}");
        assert!(
            copies
                .iter()
                .all(|c| c["copy"]["project_id"] == pid.as_str()),
            "{one}"
        );
    }
    assert_eq!(all["copies"].as_array().unwrap().len(), 1, "{all}");

    // No paths on disk for non-admins.
    let web = s.container_id("web-app").await;
    let (_, c) = s
        .get(&format!("/api/v1/containers/{web}"), &s.alice_token)
        .await;
    assert!(c.get("root_path").is_none());
    assert!(c.get("tree").is_none(), "{c}");
    // Converting a tree is about the host's storage: platform admins only. This doppel
    // runs without --image-trees, so an admin is told that, and nothing is queued.
    let convert = format!("/api/v1/containers/{web}/convert-tree");
    let (st, refused) = s
        .call(reqwest::Method::POST, &convert, &s.alice_token, None)
        .await;
    assert_eq!(st, 403, "{refused}");
    assert!(
        refused["error"]["message"]
            .as_str()
            .unwrap()
            .contains("is for platform admins"),
        "{refused}"
    );
    let (st, refused) = s
        .call(reqwest::Method::POST, &convert, &s.admin_token, None)
        .await;
    assert_eq!(st, 409, "{refused}");
    assert!(
        refused["error"]["message"]
            .as_str()
            .unwrap()
            .contains("doppel runs without --image-trees"),
        "{refused}"
    );
    // And a server's trees at once: the same.
    let (_, servers) = s.get("/api/v1/servers", &s.admin_token).await;
    let server = servers["servers"][0]["id"].as_str().unwrap().to_string();
    let convert = format!("/api/v1/servers/{server}/convert-trees");
    for (token, want, said) in [
        (&s.alice_token, 403, "is for platform admins"),
        (&s.admin_token, 409, "doppel runs without --image-trees"),
    ] {
        let (st, refused) = s.call(reqwest::Method::POST, &convert, token, None).await;
        assert_eq!(st, want, "{refused}");
        assert!(
            refused["error"]["message"].as_str().unwrap().contains(said),
            "{refused}"
        );
    }
    let (_, jobs) = s.get("/api/v1/jobs?kind=convert", &s.admin_token).await;
    assert_eq!(jobs["jobs"], serde_json::json!([]), "{jobs}");
    let (_, servers) = s.get("/api/v1/servers", &s.alice_token).await;
    assert!(servers["servers"][0].get("storage_root").is_none());
}

#[tokio::test]
async fn bad_input_gets_a_clear_4xx_never_a_500() {
    let s = TestServer::start().await;
    let cases = [
        ("/api/v1/containers/not-an-id", 400, "invalid_request"),
        (
            "/api/v1/containers/000000000000000000000000",
            404,
            "not_found",
        ),
        ("/api/v1/containers?project_id=xyz", 400, "invalid_request"),
        ("/api/v1/containers?bogus=1", 400, "invalid_request"),
        ("/api/v1/jobs?status=done", 400, "invalid_request"),
        ("/api/v1/jobs?kind=move", 400, "invalid_request"),
        ("/api/v1/sync-status?foo=1", 400, "invalid_request"),
        ("/api/v1/sync-status?project_id=xyz", 400, "invalid_request"),
        ("/api/v1/jobs?limit=0", 400, "invalid_request"),
        ("/api/v1/jobs?limit=501", 400, "invalid_request"),
        ("/api/v1/jobs?before=xyz", 400, "invalid_request"),
        (
            "/api/v1/jobs?before=000000000000000000000000",
            404,
            "not_found",
        ),
        ("/api/v1/jobs/000000000000000000000000", 404, "not_found"),
        ("/api/v1/jobs/ZZZ", 400, "invalid_request"),
        ("/api/v1/nope", 404, "not_found"),
        ("/api/v1/containers/%FF%FE", 400, "invalid_request"),
    ];
    for (path, status, code) in cases {
        let (st, body) = s.get(path, &s.admin_token).await;
        assert_eq!(st, status, "{path}: {body}");
        assert_eq!(body["error"]["code"], code, "{path}: {body}");
        assert!(!body["error"]["message"].as_str().unwrap().is_empty());
    }
    // A bad query string says what is wrong with it, not which library failed.
    let (_, body) = s.get("/api/v1/containers?bogus=1", &s.admin_token).await;
    let message = body["error"]["message"].as_str().unwrap();
    assert_eq!(
        message,
        "bad query string: \"bogus\" is not a parameter of this request (it takes project_id)",
        "{body}"
    );
    assert_eq!(body["error"]["field"], "bogus");
    // A value of one it takes that is out of range, not one of its values or malformed
    // names it too, so a client can point at it.
    for (path, field) in [
        ("/api/v1/jobs?status=done", "status"),
        ("/api/v1/jobs?kind=move", "kind"),
        ("/api/v1/jobs?limit=0", "limit"),
        ("/api/v1/jobs?before=xyz", "before"),
        ("/api/v1/jobs?before=000000000000000000000000", "before"),
        ("/api/v1/containers?project_id=xyz", "project_id"),
        ("/api/v1/sync-status?project_id=xyz", "project_id"),
        ("/api/v1/audit?before=xyz", "before"),
    ] {
        let (_, body) = s.get(path, &s.admin_token).await;
        assert_eq!(body["error"]["field"], field, "{path}: {body}");
    }
    let (st, body) = s.get("/api/v1/jobs?limit=abc", &s.admin_token).await;
    assert_eq!(
        (st, body["error"]["field"].as_str()),
        (400, Some("limit")),
        "{body}"
    );
    let resp = TestServer::client()
        .delete(s.url("/api/v1/projects"))
        .bearer_auth(&s.admin_token)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 405);
    let (st, body) = s.get("/api/v1/jobs", &s.admin_token).await;
    assert_eq!(st, 200);
    assert_eq!(body["jobs"], serde_json::json!([]));
}

#[tokio::test]
async fn console_login_sets_a_session_cookie_that_works_for_pages_and_api() {
    let s = TestServer::start().await;
    let client = TestServer::client();

    // A page without a session redirects to the login, remembering where to go back.
    let resp = client
        .get(s.url("/containers?project=x"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 303);
    assert_eq!(
        resp.headers()["location"],
        "/login?next=/containers%3Fproject%3Dx"
    );

    let resp = client
        .post(s.url("/auth/login"))
        .form(&[("username", "admin"), ("password", "wrong-password")])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 303);
    assert_eq!(resp.headers()["location"], "/login?error=1");
    assert!(resp.headers().get("set-cookie").is_none());

    let resp = client
        .post(s.url("/auth/login"))
        .form(&[
            ("username", "admin"),
            ("password", s.admin_password.as_str()),
            ("next", "/containers"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 303);
    assert_eq!(resp.headers()["location"], "/containers");
    let set_cookie = resp.headers()["set-cookie"].to_str().unwrap().to_string();
    assert!(
        set_cookie.contains("HttpOnly") && set_cookie.contains("SameSite=Lax"),
        "{set_cookie}"
    );
    let cookie = set_cookie.split(';').next().unwrap().to_string();

    // The server renders the page with the data in it (SSR through the server functions).
    let (_, html) = s.page("/containers", &cookie).await;
    assert!(html.contains("web-app-staging"), "SSR lists containers");
    assert!(html.contains("/pkg/doppel.js"), "hydration scripts");
    let id = s.container_id("db-primary").await;
    let (_, html) = s.page(&format!("/containers/{id}"), &cookie).await;
    assert!(
        html.contains("nightly") && html.contains("data-backend"),
        "container page"
    );
    // A page for a container that is not there says so, with the status to match.
    for (path, status) in [
        ("/containers/507f1f77bcf86cd799439011", 404),
        ("/containers/zzz", 400),
        ("/containers/507f1f77bcf86cd799439011/copy", 404),
    ] {
        let (got, html) = s.page(path, &cookie).await;
        assert_eq!(got, status, "{path}");
        assert!(html.contains("error-box"), "{path}");
    }

    // The session cookie also authenticates the API (EventSource cannot send headers).
    let resp = client
        .get(s.url("/api/v1/projects"))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);

    let resp = client
        .post(s.url("/auth/logout"))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 303);
    let resp = client
        .get(s.url("/api/v1/projects"))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401, "the session ended");
}

#[tokio::test]
async fn server_functions_refuse_anonymous_callers() {
    let s = TestServer::start().await;
    let html = TestServer::client()
        .get(s.url("/login"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(html.contains("User name"));
    // Find the list_containers server function's URL in the registered paths and call it.
    let path = leptos::server_fn::axum::server_fn_paths()
        .map(|(p, _)| p)
        .find(|p| p.contains("list_containers"))
        .expect("server function registered");
    let resp = TestServer::client()
        .post(s.url(path))
        .header("content-type", "application/x-www-form-urlencoded")
        .body("")
        .send()
        .await
        .unwrap();
    assert!(resp.status().is_client_error() || resp.status().is_server_error());
    let body = resp.text().await.unwrap();
    assert!(body.contains("unauthorized"), "{body}");
}

/// Without JavaScript, a form of Settings, Admin or Servers posts and is sent back to its
/// page: with the error when it was refused, and with a secret shown once (a token, a
/// password, a join token) when it made one, which that page shows once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_form_posts_come_back_with_their_error_or_their_secret_shown_once() {
    let s = TestServer::start().await;
    let cookie = s.session("admin", &s.admin_password).await;
    let path_of = common::server_fn_path;
    let plain_post = |f: &str, form: Vec<(&'static str, &'static str)>| {
        TestServer::client()
            .post(s.url(&path_of(f)))
            .header("cookie", &cookie)
            .header("accept", "text/html")
            .form(&form)
            .send()
    };
    let location = |r: &reqwest::Response| r.headers()["location"].to_str().unwrap().to_string();

    // Refused: back to the page with the error, which the page shows.
    let resp = plain_post(
        "create_my_token",
        vec![("name", "t"), ("expires_in_days", "-3")],
    )
    .await
    .unwrap();
    assert_eq!(resp.status(), 302);
    let back = location(&resp);
    assert!(back.starts_with("/settings?error="), "{back}");
    assert!(back.contains("error_field=expires_in_days"), "{back}");
    let (_, html) = s.page(&back, &cookie).await;
    assert!(html.contains("a number of days from 1 to 3650"), "{html}");

    // Made: back to the page, which shows the secret once.
    for (f, form, page, looks_like) in [
        (
            "create_my_token",
            vec![("name", "nojs")],
            "/settings",
            "dpl_",
        ),
        (
            "create_user",
            vec![("name", "nojs-user")],
            "/admin",
            "Password of",
        ),
        (
            "add_server",
            vec![("name", "nojs-far")],
            "/servers",
            "doppel-join-1.",
        ),
    ] {
        let resp = plain_post(f, form).await.unwrap();
        assert_eq!(resp.status(), 302, "{f}");
        assert_eq!(location(&resp), page, "{f}");
        let carried: Vec<String> = resp
            .headers()
            .get_all("set-cookie")
            .iter()
            .map(|v| v.to_str().unwrap().to_string())
            .filter(|c| c.starts_with("doppel_shown_once="))
            .collect();
        assert_eq!(carried.len(), 1, "{f}: {carried:?}");
        assert!(carried[0].contains("HttpOnly") && carried[0].contains(&format!("Path={page}")));
        let once = carried[0].split(';').next().unwrap().to_string();
        let resp = TestServer::client()
            .get(s.url(page))
            .header("cookie", format!("{cookie}; {once}"))
            .send()
            .await
            .unwrap();
        let cleared = resp
            .headers()
            .get_all("set-cookie")
            .iter()
            .any(|v| v.to_str().unwrap().starts_with("doppel_shown_once=;"));
        let html = resp.text().await.unwrap();
        assert!(html.contains(r#"<code class="secret">"#), "{f}: {html}");
        assert!(html.contains(looks_like), "{f}");
        assert!(cleared, "{f}: the page that shows it clears it");
        // Without the cookie (the next visit), it is not shown again.
        let (_, html) = s.page(page, &cookie).await;
        assert!(!html.contains(looks_like), "{f}");
    }
    // The users' table offers nobody to disable or demote themselves.
    let (_, html) = s.page("/admin", &cookie).await;
    assert!(html.contains("Disable alice") && html.contains("Reset password of admin"));
    assert!(!html.contains("Disable admin") && !html.contains("Remove admin from admin"));
}
