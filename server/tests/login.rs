//! The console's login: a flood of wrong passwords is slowed down without holding up
//! real logins from elsewhere, other sites cannot log a browser in or out, and the session
//! cookie is `Secure` when the browser came over HTTPS.

mod common;

use common::TestServer;

fn client_from(addr: [u8; 4]) -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .local_address(std::net::IpAddr::from(addr))
        .build()
        .unwrap()
}

async fn login(
    client: &reqwest::Client,
    s: &TestServer,
    user: &str,
    password: &str,
    headers: &[(&str, &str)],
) -> reqwest::Response {
    let mut req = client
        .post(s.url("/auth/login"))
        .form(&[("username", user), ("password", password)]);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    req.send().await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_password_flood_is_slowed_down_and_real_logins_still_get_in() {
    let s = TestServer::start().await;
    let attacker = client_from([127, 0, 0, 2]);
    let mut refused = 0;
    for i in 0..30 {
        let resp = login(&attacker, &s, "admin", &format!("guess-{i}"), &[]).await;
        assert_eq!(resp.status(), 303);
        let location = resp.headers()["location"].to_str().unwrap().to_string();
        if location == "/login?error=wait" {
            assert!(resp.headers().contains_key("retry-after"));
            refused += 1;
        } else {
            assert_eq!(location, "/login?error=1");
        }
    }
    assert!(
        refused >= 20,
        "after 5 failures the attempts are refused unchecked: {refused}"
    );
    // Even the right password is refused from there for now.
    let resp = login(&attacker, &s, "admin", &s.admin_password, &[]).await;
    assert_eq!(resp.headers()["location"], "/login?error=wait");
    // The real admin, elsewhere, gets in.
    let resp = login(
        &client_from([127, 0, 0, 1]),
        &s,
        "admin",
        &s.admin_password,
        &[],
    )
    .await;
    assert_eq!(resp.headers()["location"], "/containers");
    assert!(resp.headers().contains_key("set-cookie"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn other_sites_cannot_log_a_browser_in_or_out() {
    let s = TestServer::start().await;
    let client = TestServer::client();
    let cross = [
        ("origin", "https://evil.example"),
        ("sec-fetch-site", "cross-site"),
    ];
    let resp = login(&client, &s, "admin", &s.admin_password, &cross).await;
    assert_eq!(resp.status(), 403);
    assert!(resp.headers().get("set-cookie").is_none());
    let resp = login(&client, &s, "admin", &s.admin_password, &[]).await;
    let cookie = resp.headers()["set-cookie"].to_str().unwrap();
    assert!(!cookie.contains("Secure"), "plain HTTP: {cookie}");
    let cookie = cookie.split(';').next().unwrap().to_string();
    let resp = client
        .post(s.url("/auth/logout"))
        .header("cookie", &cookie)
        .header("origin", "https://evil.example")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 403);
    let resp = client
        .get(s.url("/api/v1/projects"))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200, "still logged in");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_session_cookie_is_secure_behind_an_https_proxy() {
    let s = TestServer::start().await;
    for header in [
        ("x-forwarded-proto", "https"),
        ("forwarded", "for=10.0.0.1;proto=https"),
    ] {
        let resp = login(
            &TestServer::client(),
            &s,
            "admin",
            &s.admin_password,
            &[header],
        )
        .await;
        let cookie = resp.headers()["set-cookie"].to_str().unwrap();
        assert!(cookie.contains("; Secure"), "{header:?}: {cookie}");
    }
}
