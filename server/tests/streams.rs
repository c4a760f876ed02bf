//! Event streams stay within what their caller may see, for as long as they last: they
//! end after a logout, each user has a bounded number, and any resume point is safe.

mod common;

use std::time::Duration;

use common::TestServer;

/// Reads the stream until it ends; `false` if it is still open after `limit`.
async fn ends_within(resp: &mut reqwest::Response, limit: Duration) -> bool {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        match tokio::time::timeout_at(deadline, resp.chunk()).await {
            Err(_) => return false,
            Ok(Ok(None)) | Ok(Err(_)) => return true,
            Ok(Ok(Some(_))) => continue,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_ends_after_its_session_is_logged_out() {
    let s = TestServer::start().await;
    let cookie = s.session("admin", &s.admin_password).await;
    let client = TestServer::client();
    let mut all = client
        .get(s.url("/api/v1/events"))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(all.status(), 200);
    let resp = client
        .post(s.url("/auth/logout"))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 303);
    assert!(
        ends_within(&mut all, Duration::from_secs(20)).await,
        "the stream ended after the logout"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_has_a_bounded_number_of_streams_and_gets_a_slot_back_when_one_closes() {
    let s = TestServer::start().await;
    let client = TestServer::client();
    let open = || {
        client
            .get(s.url("/api/v1/events"))
            .bearer_auth(&s.alice_token)
            .send()
    };
    let mut streams = Vec::new();
    loop {
        let resp = open().await.unwrap();
        if resp.status() == 429 {
            let body: serde_json::Value = resp.json().await.unwrap();
            assert!(body.to_string().contains("event streams"), "{body}");
            break;
        }
        assert_eq!(resp.status(), 200);
        streams.push(resp);
        assert!(streams.len() <= 32, "no limit on streams per user");
    }
    assert_eq!(streams.len(), 32);
    // Others are not affected.
    let other = client
        .get(s.url("/api/v1/events"))
        .bearer_auth(&s.admin_token)
        .send()
        .await
        .unwrap();
    assert_eq!(other.status(), 200);
    // A closed stream gives its slot back.
    drop(streams.pop());
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let resp = open().await.unwrap();
        if resp.status() == 200 {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "the slot came back");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn any_resume_point_is_safe() {
    let s = TestServer::start().await;
    let staging = s.container_id("web-app-staging").await;
    let resp = TestServer::client()
        .post(s.url(&format!("/api/v1/containers/{staging}/sync")))
        .bearer_auth(&s.admin_token)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 202);
    let job: serde_json::Value = resp.json().await.unwrap();
    let id = job["job"]["id"].as_str().unwrap();
    for path in [
        format!("/api/v1/jobs/{id}/events"),
        "/api/v1/events".to_string(),
    ] {
        for last in ["18446744073709551615", "18446744073709551614", "0"] {
            let mut resp = TestServer::client()
                .get(s.url(&path))
                .bearer_auth(&s.admin_token)
                .header("last-event-id", last)
                .send()
                .await
                .unwrap();
            assert_eq!(resp.status(), 200, "{path} after {last}");
            if path.contains("/jobs/") {
                // The job's stream still says how the job stands, then ends.
                let mut text = String::new();
                while let Ok(Some(chunk)) =
                    tokio::time::timeout(Duration::from_secs(30), resp.chunk())
                        .await
                        .unwrap()
                {
                    text.push_str(&String::from_utf8_lossy(&chunk));
                }
                assert!(text.contains(id), "{path} after {last}: {text}");
            }
        }
    }
    let resp = TestServer::client()
        .get(s.url("/api/v1/events"))
        .bearer_auth(&s.admin_token)
        .header("last-event-id", "18446744073709551616")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400, "not a u64");
}
