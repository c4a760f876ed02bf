//! Who may do what, as one table: every REST route and event stream, for a platform admin,
//! a project admin, an operator, a viewer and a non-member of a project, on that project's
//! containers and jobs ("own") and on another project's ("other").

mod common;

use std::time::{Duration, Instant};

use app::model::Role;
use common::TestServer;
use serde_json::{json, Value};

const WHO: [&str; 5] = [
    "platform admin",
    "project admin",
    "operator",
    "viewer",
    "non-member",
];

async fn call(
    s: &TestServer,
    token: &str,
    method: &str,
    path: &str,
    body: Option<Value>,
) -> (u16, Value) {
    let url = s.url(&format!("/api/v1{path}"));
    let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
    let mut req = TestServer::client().request(method, url).bearer_auth(token);
    if let Some(b) = body {
        req = req.json(&b);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    let is_stream = resp
        .headers()
        .get("content-type")
        .is_some_and(|v| v.to_str().unwrap_or("").starts_with("text/event-stream"));
    // An event stream never ends: its status is the answer.
    let body = if is_stream {
        Value::Null
    } else {
        resp.json().await.unwrap_or(Value::Null)
    };
    (status, body)
}

async fn wait_idle(s: &TestServer, job: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (_, j) = s.get(&format!("/api/v1/jobs/{job}"), &s.admin_token).await;
        if !["queued", "running"].contains(&j["status"].as_str().unwrap_or("")) {
            return;
        }
        assert!(Instant::now() < deadline, "job {job} did not end");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn user(s: &TestServer, name: &str, roles: &[(&str, Role)]) -> String {
    let db = s.service.db();
    let u = doppel::auth::create_user(db, name, None, false)
        .await
        .unwrap();
    for (project, role) in roles {
        doppel::service::inventory::add_member(db, project, &u.id, *role)
            .await
            .unwrap();
    }
    doppel::auth::create_token(db, name, "t").await.unwrap()
}

fn find(list: &Value, key: &str, name: &str) -> String {
    list[key]
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["name"] == name)
        .unwrap_or_else(|| panic!("no {name}"))["id"]
        .as_str()
        .unwrap()
        .to_string()
}

/// The two projects, a container, a copy and a finished job in each, as the admin made them.
struct World {
    own_p: String,
    other_p: String,
    own_c: String,
    own_copy: String,
    other_c: String,
    other_copy: String,
    own_job: String,
    other_job: String,
}

async fn world(s: &TestServer) -> World {
    let (_, projects) = s.get("/api/v1/projects", &s.admin_token).await;
    let own_p = find(&projects, "projects", "web-platform");
    let other_p = find(&projects, "projects", "data-pipeline");
    let (_, containers) = s.get("/api/v1/containers", &s.admin_token).await;
    let own_c = find(&containers, "containers", "web-app");
    let own_copy = find(&containers, "containers", "web-app-staging");
    let other_c = find(&containers, "containers", "db-primary");
    // A copy in the other project, and a job in each.
    let (st, body) = call(
        s,
        &s.admin_token,
        "POST",
        &format!("/containers/{other_c}/copy"),
        Some(json!({"target_project_id": other_p, "name": "db-copy"})),
    )
    .await;
    assert_eq!(st, 202, "{body}");
    let other_copy = body["container"]["id"].as_str().unwrap().to_string();
    let other_job = body["job"]["id"].as_str().unwrap().to_string();
    wait_idle(s, &other_job).await;
    let (st, body) = call(
        s,
        &s.admin_token,
        "POST",
        &format!("/containers/{own_copy}/sync"),
        None,
    )
    .await;
    assert_eq!(st, 202, "{body}");
    let own_job = body["job"]["id"].as_str().unwrap().to_string();
    wait_idle(s, &own_job).await;
    World {
        own_p,
        other_p,
        own_c,
        own_copy,
        other_c,
        other_copy,
        own_job,
        other_job,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_authorisation_matrix() {
    let s = TestServer::start().await;
    let World {
        own_p,
        other_p,
        own_c,
        own_copy,
        other_c,
        other_copy,
        own_job,
        other_job,
    } = world(&s).await;
    let tokens = [
        s.admin_token.clone(),
        user(&s, "pat", &[(&own_p, Role::Admin)]).await,
        s.alice_token.clone(), // the demo's operator of web-platform
        user(&s, "victor", &[(&own_p, Role::Viewer)]).await,
        user(&s, "nora", &[]).await,
    ];

    let all_ok = [200; 5];
    let members = [200, 200, 200, 200, 404];
    let writers = |ok: u16| [ok, ok, ok, 403, 404];
    let admin_only = |ok: u16| [ok, 404, 404, 404, 404];
    // (method, path on own, path on other, body, expected on own, expected on other)
    type Row = (
        &'static str,
        String,
        String,
        Option<Value>,
        [u16; 5],
        [u16; 5],
    );
    let rows: Vec<Row> = vec![
        (
            "GET",
            "/projects".into(),
            "/projects".into(),
            None,
            all_ok,
            all_ok,
        ),
        (
            "GET",
            "/servers".into(),
            "/servers".into(),
            None,
            all_ok,
            all_ok,
        ),
        (
            "GET",
            "/containers".into(),
            "/containers".into(),
            None,
            all_ok,
            all_ok,
        ),
        ("GET", "/jobs".into(), "/jobs".into(), None, all_ok, all_ok),
        (
            "GET",
            "/sync-status".into(),
            "/sync-status".into(),
            None,
            all_ok,
            all_ok,
        ),
        (
            "GET",
            "/events".into(),
            "/events".into(),
            None,
            all_ok,
            all_ok,
        ),
        (
            "GET",
            format!("/containers/{own_c}"),
            format!("/containers/{other_c}"),
            None,
            members,
            admin_only(200),
        ),
        (
            "GET",
            format!("/containers/{own_c}/snapshots"),
            format!("/containers/{other_c}/snapshots"),
            None,
            members,
            admin_only(200),
        ),
        (
            "POST",
            format!("/containers/{own_c}/snapshots"),
            format!("/containers/{other_c}/snapshots"),
            Some(json!({})),
            writers(201),
            admin_only(201),
        ),
        (
            "GET",
            format!("/jobs/{own_job}"),
            format!("/jobs/{other_job}"),
            None,
            members,
            admin_only(200),
        ),
        (
            "GET",
            format!("/jobs/{own_job}/events"),
            format!("/jobs/{other_job}/events"),
            None,
            members,
            admin_only(200),
        ),
        // The jobs have ended: whoever may cancel learns it is too late.
        (
            "POST",
            format!("/jobs/{own_job}/cancel"),
            format!("/jobs/{other_job}/cancel"),
            None,
            writers(409),
            admin_only(409),
        ),
        (
            "POST",
            format!("/containers/{own_copy}/sync"),
            format!("/containers/{other_copy}/sync"),
            None,
            writers(202),
            admin_only(202),
        ),
        (
            "POST",
            format!("/containers/{own_c}/copy"),
            format!("/containers/{other_c}/copy"),
            Some(json!({})),
            writers(202),
            admin_only(202),
        ),
        // The host's storage: platform admins alone (who hear that this doppel runs
        // without --image-trees); members who see the container are refused, others
        // do not see it.
        (
            "POST",
            format!("/containers/{own_c}/convert-tree"),
            format!("/containers/{other_c}/convert-tree"),
            None,
            [409, 403, 403, 403, 404],
            admin_only(409),
        ),
    ];
    let mut failures = Vec::new();
    for (method, own_path, other_path, body, want_own, want_other) in rows {
        for (side, path, want, project) in [
            ("own", &own_path, want_own, &own_p),
            ("other", &other_path, want_other, &other_p),
        ] {
            for (i, token) in tokens.iter().enumerate() {
                let body = body.clone().map(|mut b| {
                    if path.ends_with("/copy") {
                        b = json!({"target_project_id": project, "name": format!("m-{side}-{i}")});
                    } else if path.ends_with("/snapshots") {
                        b = json!({"name": format!("m-{side}-{i}")});
                    }
                    b
                });
                let (st, answer) = call(&s, token, method, path, body).await;
                if st != want[i] {
                    failures.push(format!(
                        "{method} {path} ({side}) as {}: {st}, want {}: {answer}",
                        WHO[i], want[i]
                    ));
                }
                if let Some(job) = answer["job"]["id"].as_str() {
                    wait_idle(&s, job).await;
                }
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// The same table for running containers, deleting them, and administration: tokens,
/// projects, members, users and the audit log. A path may differ per caller (a container
/// or a member of their own to delete), so each side holds one path per caller.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_authorisation_matrix_of_lifecycle_and_administration() {
    let s = TestServer::start().await;
    let World {
        own_p,
        other_p,
        own_c,
        other_c,
        ..
    } = world(&s).await;
    let tokens = [
        s.admin_token.clone(),
        user(&s, "pat", &[(&own_p, Role::Admin)]).await,
        s.alice_token.clone(),
        user(&s, "victor", &[(&own_p, Role::Viewer)]).await,
        user(&s, "nora", &[]).await,
    ];
    // Per caller: a copy of their own to delete, and a member to remove, on each side.
    let mut doomed: [Vec<String>; 2] = Default::default();
    for (side, (project, source)) in [(&own_p, &own_c), (&other_p, &other_c)].iter().enumerate() {
        for i in 0..5 {
            let (st, body) = call(
                &s,
                &s.admin_token,
                "POST",
                &format!("/containers/{source}/copy"),
                Some(json!({"target_project_id": project, "name": format!("doomed-{side}-{i}")})),
            )
            .await;
            assert_eq!(st, 202, "{body}");
            wait_idle(&s, body["job"]["id"].as_str().unwrap()).await;
            doomed[side].push(body["container"]["id"].as_str().unwrap().to_string());
        }
    }
    for i in 0..5 {
        doppel::auth::create_user(s.service.db(), &format!("member{i}"), None, false)
            .await
            .unwrap();
        for project in [&own_p, &other_p] {
            let (st, body) = call(
                &s,
                &s.admin_token,
                "PUT",
                &format!("/projects/{project}/members/member{i}"),
                Some(json!({"role": "viewer"})),
            )
            .await;
            assert_eq!(st, 200, "{body}");
        }
    }
    let (st, spare) = call(
        &s,
        &s.admin_token,
        "POST",
        "/tokens",
        Some(json!({"name": "spare"})),
    )
    .await;
    assert_eq!(st, 201, "{spare}");
    let spare = spare["token"]["id"].as_str().unwrap().to_string();
    let (_, detail) = s
        .get(&format!("/api/v1/containers/{own_c}"), &s.admin_token)
        .await;
    let command = json!(detail["command"]);
    // Its networks without the static address: that address's subnet is its project's
    // network, which a container of another project could never have (422).
    let mut rules = detail["network_rules"].clone();
    for r in rules.as_array_mut().unwrap() {
        r.as_object_mut().unwrap().remove("ipv4");
    }
    let network = json!({ "rules": rules });

    let (_, servers) = s.get("/api/v1/servers", &s.admin_token).await;
    let server = servers["servers"][0]["id"].as_str().unwrap().to_string();
    let members = [200, 200, 200, 200, 404];
    let writers = |ok: u16| [ok, ok, ok, 403, 404];
    let project_admins = |ok: u16| [ok, ok, 403, 403, 404];
    let admin_only = |ok: u16| [ok, 404, 404, 404, 404];
    let platform_admins = |ok: u16| [ok, 403, 403, 403, 403];
    let same = |p: String| vec![p; 5];
    let each = |f: &dyn Fn(usize) -> String| (0..5).map(f).collect::<Vec<_>>();
    // (method, paths on own, paths on other, body, expected on own, expected on other);
    // the administration of the platform has no "other" side (an empty list).
    type Row = (
        &'static str,
        Vec<String>,
        Vec<String>,
        Option<Value>,
        [u16; 5],
        [u16; 5],
    );
    let own_verb = |verb: &str| same(format!("/containers/{own_c}/{verb}"));
    let other_verb = |verb: &str| same(format!("/containers/{other_c}/{verb}"));
    let rows: Vec<Row> = vec![
        (
            "POST",
            own_verb("stop"),
            other_verb("stop"),
            None,
            writers(200),
            admin_only(200),
        ),
        (
            "POST",
            own_verb("start"),
            other_verb("start"),
            None,
            writers(200),
            admin_only(200),
        ),
        (
            "POST",
            own_verb("restart"),
            other_verb("restart"),
            None,
            writers(200),
            admin_only(200),
        ),
        (
            "GET",
            own_verb("logs"),
            other_verb("logs"),
            None,
            members,
            admin_only(200),
        ),
        (
            "PUT",
            own_verb("command"),
            other_verb("command"),
            Some(command),
            writers(200),
            admin_only(200),
        ),
        (
            "PUT",
            own_verb("firewall-rules"),
            other_verb("firewall-rules"),
            Some(json!({"rules": []})),
            writers(200),
            admin_only(200),
        ),
        (
            "PUT",
            own_verb("network-rules"),
            other_verb("network-rules"),
            Some(network),
            writers(200),
            admin_only(200),
        ),
        (
            "DELETE",
            doomed[0]
                .iter()
                .map(|id| format!("/containers/{id}"))
                .collect(),
            doomed[1]
                .iter()
                .map(|id| format!("/containers/{id}"))
                .collect(),
            None,
            writers(202),
            admin_only(202),
        ),
        (
            "GET",
            same(format!("/projects/{own_p}/members")),
            same(format!("/projects/{other_p}/members")),
            None,
            members,
            admin_only(200),
        ),
        (
            "PUT",
            same(format!("/projects/{own_p}/members/member0")),
            same(format!("/projects/{other_p}/members/member0")),
            Some(json!({"role": "operator"})),
            project_admins(200),
            admin_only(200),
        ),
        (
            "DELETE",
            each(&|i| format!("/projects/{own_p}/members/member{i}")),
            each(&|i| format!("/projects/{other_p}/members/member{i}")),
            None,
            project_admins(204),
            admin_only(204),
        ),
        (
            "PATCH",
            same(format!("/projects/{own_p}")),
            same(format!("/projects/{other_p}")),
            Some(json!({"description": "changed"})),
            project_admins(200),
            admin_only(200),
        ),
        // Both hold containers: even a platform admin is refused, after the rights check.
        (
            "DELETE",
            same(format!("/projects/{own_p}")),
            same(format!("/projects/{other_p}")),
            None,
            [409, 403, 403, 403, 404],
            admin_only(409),
        ),
        (
            "POST",
            each(&|i| format!("/projects?n=p{i}")),
            vec![],
            Some(json!({})),
            platform_admins(201),
            [0; 5],
        ),
        (
            "GET",
            same("/tokens".into()),
            vec![],
            None,
            [200; 5],
            [0; 5],
        ),
        (
            "POST",
            same("/tokens".into()),
            vec![],
            Some(json!({"name": "more"})),
            [201; 5],
            [0; 5],
        ),
        // Someone else's token is not there for anyone but its owner.
        (
            "DELETE",
            same(format!("/tokens/{spare}")),
            vec![],
            None,
            admin_only(204),
            [0; 5],
        ),
        (
            "GET",
            same("/users".into()),
            vec![],
            None,
            platform_admins(200),
            [0; 5],
        ),
        (
            "POST",
            each(&|i| format!("/users?n=u{i}")),
            vec![],
            Some(json!({})),
            platform_admins(201),
            [0; 5],
        ),
        (
            "PATCH",
            same("/users/member1".into()),
            vec![],
            Some(json!({"is_admin": false})),
            platform_admins(200),
            [0; 5],
        ),
        (
            "POST",
            same("/users/member1/password".into()),
            vec![],
            None,
            platform_admins(200),
            [0; 5],
        ),
        (
            "GET",
            same("/audit".into()),
            vec![],
            None,
            [200, 200, 403, 403, 403],
            [0; 5],
        ),
        (
            "PUT",
            same(format!("/servers/{server}/bwlimit")),
            vec![],
            Some(json!({"bwlimit": null})),
            platform_admins(200),
            [0; 5],
        ),
    ];
    let mut failures = Vec::new();
    for (method, own_paths, other_paths, body, want_own, want_other) in rows {
        for (side, paths, want) in [
            ("own", &own_paths, want_own),
            ("other", &other_paths, want_other),
        ] {
            for (i, (token, path)) in tokens.iter().zip(paths).enumerate() {
                // A name of the caller's own where the row makes something.
                let (path, body) = match path.split_once("?n=") {
                    Some((path, name)) => (path.to_string(), Some(json!({"name": name}))),
                    None => (path.clone(), body.clone()),
                };
                let (st, answer) = call(&s, token, method, &path, body).await;
                if st != want[i] {
                    failures.push(format!(
                        "{method} {path} ({side}) as {}: {st}, want {}: {answer}",
                        WHO[i], want[i]
                    ));
                }
                if let Some(job) = answer["job"]["id"].as_str() {
                    wait_idle(&s, job).await;
                }
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// Taking data out of a project needs operator rights there: a viewer of the source who
/// operates another project cannot copy into it, nor keep syncing a copy from a project they
/// are not (or no longer) an operator of.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copying_or_syncing_out_of_a_project_needs_operator_rights_on_the_source() {
    let s = TestServer::start().await;
    let (_, projects) = s.get("/api/v1/projects", &s.admin_token).await;
    let web = find(&projects, "projects", "web-platform");
    let data = find(&projects, "projects", "data-pipeline");
    let (_, containers) = s.get("/api/v1/containers", &s.admin_token).await;
    let web_app = find(&containers, "containers", "web-app");
    let olga = user(&s, "olga", &[(&web, Role::Viewer), (&data, Role::Operator)]).await;
    let (st, body) = call(
        &s,
        &olga,
        "POST",
        &format!("/containers/{web_app}/copy"),
        Some(json!({"target_project_id": data, "name": "exfil"})),
    )
    .await;
    assert_eq!(st, 403, "{body}");
    assert!(body.to_string().contains("source"), "{body}");
    // An admin made a copy of web-app in data-pipeline: its operator there may not sync it
    // from web-platform, where they only view.
    let (st, body) = call(
        &s,
        &s.admin_token,
        "POST",
        &format!("/containers/{web_app}/copy"),
        Some(json!({"target_project_id": data, "name": "web-in-data"})),
    )
    .await;
    assert_eq!(st, 202, "{body}");
    let copy = body["container"]["id"].as_str().unwrap().to_string();
    wait_idle(&s, body["job"]["id"].as_str().unwrap()).await;
    let (st, body) = call(&s, &olga, "POST", &format!("/containers/{copy}/sync"), None).await;
    assert_eq!(st, 403, "{body}");
    let sam = user(&s, "sam", &[(&data, Role::Operator)]).await;
    let (st, body) = call(&s, &sam, "POST", &format!("/containers/{copy}/sync"), None).await;
    assert_eq!(st, 403, "{body}");
    assert!(body.to_string().contains("not a member"), "{body}");
    // An operator of both projects may.
    let otto = user(
        &s,
        "otto",
        &[(&web, Role::Operator), (&data, Role::Operator)],
    )
    .await;
    let (st, body) = call(&s, &otto, "POST", &format!("/containers/{copy}/sync"), None).await;
    assert_eq!(st, 202, "{body}");
}

/// What a server function answered: `ok`, or the error code it carried (in the body of an
/// error status, or inside an `Answer`'s `Err`).
fn outcome(status: u16, body: &Value) -> String {
    fn code(v: &Value) -> Option<String> {
        match v {
            Value::Object(m) => m
                .get("code")
                .and_then(|c| c.as_str().map(str::to_string))
                .or_else(|| m.get("Err").and_then(code)),
            _ => None,
        }
    }
    match code(body) {
        Some(c) => c,
        None if status < 300 => "ok".into(),
        None => format!("status {status}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_authorisation_matrix_of_the_console_server_functions() {
    let s = TestServer::start().await;
    let db = s.service.db();
    let World {
        own_p,
        other_p,
        own_c,
        own_copy,
        other_c,
        other_copy,
        own_job,
        other_job,
    } = world(&s).await;

    // Console sessions for each role.
    let password = "correct horse battery staple";
    let names = ["admin", "pat", "alice", "victor", "nora"];
    for (name, role) in [
        ("pat", Some(Role::Admin)),
        ("victor", Some(Role::Viewer)),
        ("nora", None),
    ] {
        let u = doppel::auth::create_user(db, name, None, false)
            .await
            .unwrap();
        if let Some(role) = role {
            doppel::service::inventory::add_member(db, &own_p, &u.id, role)
                .await
                .unwrap();
        }
    }
    let mut cookies = Vec::new();
    for name in names {
        doppel::auth::set_password(db, name, password)
            .await
            .unwrap();
        cookies.push(s.session(name, password).await);
    }
    // The copy page tells a viewer it may not copy, before anything is sent; an operator
    // gets the form.
    for (who, refused) in [(3, true), (2, false)] {
        let (_, html) = s
            .page(&format!("/containers/{own_c}/copy"), &cookies[who])
            .await;
        assert!(html.contains("copy-form"), "{}", WHO[who]);
        assert_eq!(html.contains("not copy it"), refused, "{}", WHO[who]);
        // The container's page: its controls disabled for a viewer, with the reason.
        let (_, html) = s.page(&format!("/containers/{own_c}"), &cookies[who]).await;
        assert!(
            html.contains("Stop") || html.contains("Start"),
            "{}",
            WHO[who]
        );
        assert_eq!(
            html.contains(r#"<fieldset disabled class="plain">"#),
            refused,
            "{}",
            WHO[who]
        );
        assert_eq!(
            html.contains("you may look at it, not change it"),
            refused,
            "{}",
            WHO[who]
        );
        // The sync status page: "Sync now" disabled, saying why, for a viewer of the copy.
        let (_, html) = s.page("/sync-status", &cookies[who]).await;
        assert!(html.contains("Sync now"), "{}", WHO[who]);
        assert_eq!(
            html.contains("Syncing it needs operator or admin"),
            refused,
            "{}",
            WHO[who]
        );
    }
    // Forms only platform admins may use are offered to nobody else: making a project
    // (Admin) and adding a server (Servers).
    for (who, cookie) in cookies.iter().enumerate() {
        let platform_admin = who == 0;
        let (_, html) = s.page("/admin", cookie).await;
        assert!(html.contains("Projects"), "{}", WHO[who]);
        assert_eq!(
            html.contains("Create project"),
            platform_admin,
            "{}",
            WHO[who]
        );
        let (_, html) = s.page("/servers", cookie).await;
        assert!(html.contains("Free space"), "{}", WHO[who]);
        assert_eq!(html.contains("Add server"), platform_admin, "{}", WHO[who]);
    }
    let path_of = common::server_fn_path;
    let (_, servers) = s.get("/api/v1/servers", &s.admin_token).await;
    let server = servers["servers"][0]["id"].as_str().unwrap().to_string();
    let all_ok = ["ok"; 5];
    let members = ["ok", "ok", "ok", "ok", "not_found"];
    let writers = |ok: &'static str| [ok, ok, ok, "forbidden", "not_found"];
    let admin_only = |ok: &'static str| [ok, "not_found", "not_found", "not_found", "not_found"];
    let project_admins = ["ok", "ok", "forbidden", "forbidden", "not_found"];
    let platform_admins = ["ok", "forbidden", "forbidden", "forbidden", "forbidden"];
    let audit_readers = ["ok", "ok", "forbidden", "forbidden", "forbidden"];
    // (function, args on own, args on other, expected on own, on other)
    type Row = (
        &'static str,
        Vec<(&'static str, String)>,
        Vec<(&'static str, String)>,
        [&'static str; 5],
        [&'static str; 5],
    );
    let rows: Vec<Row> = vec![
        ("whoami", vec![], vec![], all_ok, all_ok),
        ("list_projects", vec![], vec![], all_ok, all_ok),
        ("list_servers", vec![], vec![], all_ok, all_ok),
        ("sync_status", vec![], vec![], all_ok, all_ok),
        ("list_jobs", vec![], vec![], all_ok, all_ok),
        (
            "list_containers",
            vec![("project_id", own_p.clone())],
            vec![("project_id", other_p.clone())],
            members,
            admin_only("ok"),
        ),
        (
            "get_container",
            vec![("id", own_c.clone())],
            vec![("id", other_c.clone())],
            members,
            admin_only("ok"),
        ),
        (
            "get_job",
            vec![("id", own_job.clone())],
            vec![("id", other_job.clone())],
            members,
            admin_only("ok"),
        ),
        (
            "cancel_job",
            vec![("id", own_job.clone())],
            vec![("id", other_job.clone())],
            writers("conflict"),
            admin_only("conflict"),
        ),
        (
            "sync_container",
            vec![("id", own_copy.clone())],
            vec![("id", other_copy.clone())],
            writers("ok"),
            admin_only("ok"),
        ),
        (
            "copy_container",
            vec![("id", own_c.clone()), ("target_project_id", own_p.clone())],
            vec![
                ("id", other_c.clone()),
                ("target_project_id", other_p.clone()),
            ],
            writers("ok"),
            admin_only("ok"),
        ),
        (
            "get_container_logs",
            vec![("id", own_c.clone())],
            vec![("id", other_c.clone())],
            members,
            admin_only("ok"),
        ),
        (
            "container_action",
            vec![("id", own_c.clone()), ("action", "restart".into())],
            vec![("id", other_c.clone()), ("action", "restart".into())],
            writers("ok"),
            admin_only("ok"),
        ),
        (
            "list_members",
            vec![("project_id", own_p.clone())],
            vec![("project_id", other_p.clone())],
            members,
            admin_only("ok"),
        ),
        // The platform admin's own membership changes nobody's sight.
        (
            "set_member",
            vec![
                ("project_id", own_p.clone()),
                ("user_name", "admin".into()),
                ("role", "admin".into()),
            ],
            vec![
                ("project_id", other_p.clone()),
                ("user_name", "admin".into()),
                ("role", "admin".into()),
            ],
            project_admins,
            admin_only("ok"),
        ),
        ("list_my_tokens", vec![], vec![], all_ok, all_ok),
        ("list_audit", vec![], vec![], audit_readers, audit_readers),
        (
            "list_users",
            vec![],
            vec![],
            platform_admins,
            platform_admins,
        ),
        (
            "create_project",
            vec![],
            vec![],
            platform_admins,
            platform_admins,
        ),
        (
            "create_user",
            vec![],
            vec![],
            platform_admins,
            platform_admins,
        ),
        (
            "set_server_bwlimit",
            vec![("server_id", server.clone())],
            vec![("server_id", server.clone())],
            platform_admins,
            platform_admins,
        ),
    ];
    let mut failures = Vec::new();
    for (f, own_args, other_args, want_own, want_other) in rows {
        let path = path_of(f);
        for (side, args, want) in [
            ("own", &own_args, want_own),
            ("other", &other_args, want_other),
        ] {
            for (i, cookie) in cookies.iter().enumerate() {
                let mut form = args.clone();
                if ["copy_container", "create_project", "create_user"].contains(&f) {
                    form.push(("name", format!("sf-{side}-{i}")));
                }
                let resp = TestServer::client()
                    .post(s.url(&path))
                    .header("cookie", cookie)
                    .form(&form)
                    .send()
                    .await
                    .unwrap();
                let status = resp.status().as_u16();
                let body: Value = resp.json().await.unwrap_or(Value::Null);
                let got = outcome(status, &body);
                if got != want[i] {
                    failures.push(format!(
                        "{f} ({side}) as {}: {got}, want {}: {body}",
                        WHO[i], want[i]
                    ));
                }
                for job in [&body["Ok"]["job"]["id"], &body["Ok"]["id"]] {
                    if let Some(job) = job.as_str().filter(|_| f != "get_job" && f != "cancel_job")
                    {
                        wait_idle(&s, job).await;
                    }
                }
            }
        }
    }
    // And without a session, every one of them is refused.
    for f in [
        "list_projects",
        "get_container",
        "copy_container",
        "sync_container",
        "cancel_job",
    ] {
        let form = [
            ("id", own_c.as_str()),
            ("target_project_id", own_p.as_str()),
        ];
        let form = if f == "copy_container" {
            &form[..]
        } else {
            &form[..1]
        };
        let resp = TestServer::client()
            .post(s.url(&path_of(f)))
            .form(form)
            .send()
            .await
            .unwrap();
        let status = resp.status().as_u16();
        let body: Value = resp.json().await.unwrap_or(Value::Null);
        let got = outcome(status, &body);
        if got != "unauthorized" {
            failures.push(format!("{f} without a session: {got}: {body}"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
