//! kill -9 during a copy, start again: the job resumes and both containers end consistent.
//! Runs the real binary, as an operator would.

#[path = "common/process.rs"]
mod process;

use std::time::{Duration, Instant};

use process::{admin_token, doppel, free_port, get_json, project_and_server, wait_up};
use serde_json::Value;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_copy_interrupted_by_kill_9_is_resumed_after_the_restart() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let client = reqwest::Client::new();

    // A project, a server and a container big enough that the copy takes a while.
    std::fs::create_dir_all(&data).unwrap();
    let db = doppel::store::connect(&format!("sqlite://{}", data.join("doppel.db").display()))
        .await
        .unwrap();
    let (project, server) = project_and_server(&db, &data).await;
    db.close().await;
    let tree = tmp.path().join("tree");
    let mut seed = 1u64;
    for i in 0..48 {
        let mut buf = vec![0u8; 8 << 20];
        for b in buf.chunks_mut(8) {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            b.copy_from_slice(&seed.to_le_bytes());
        }
        let dir = tree.join(format!("d{}", i % 4));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(format!("f{i}")), &buf).unwrap();
    }
    let out = doppel(&data)
        .args([
            "import",
            tree.to_str().unwrap(),
            "--project",
            &project,
            "--server",
            &server,
            "--name",
            "big",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let source = String::from_utf8(out.stdout).unwrap().trim().to_string();
    let token = admin_token(&data);

    let mut server_proc = process::serve(&data, port, false);
    wait_up(&client, &base).await;
    let resp: Value = client
        .post(format!("{base}/api/v1/containers/{source}/copy"))
        .bearer_auth(&token)
        .json(&serde_json::json!({"target_project_id": project, "name": "big-copy"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let job_url = format!("{base}{}", resp["job"]["url"].as_str().unwrap());
    let copy_id = resp["container"]["id"].as_str().unwrap().to_string();

    // Kill it hard once the transfer is under way.
    let deadline = Instant::now() + Duration::from_secs(30);
    let interrupted = loop {
        let job: Value = get_json(&client, &job_url, &token).await;
        if job["phase"] == "transfer" {
            break true;
        }
        if job["status"] != "queued" && job["status"] != "running" {
            break false;
        }
        assert!(Instant::now() < deadline, "the copy never started: {job}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    server_proc.kill().unwrap();
    server_proc.wait().unwrap();

    let mut server_proc = process::serve(&data, port, false);
    wait_up(&client, &base).await;
    let deadline = Instant::now() + Duration::from_secs(120);
    let job = loop {
        let job: Value = get_json(&client, &job_url, &token).await;
        if job["status"] != "queued" && job["status"] != "running" {
            break job;
        }
        assert!(
            Instant::now() < deadline,
            "the resumed copy did not finish: {job}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(job["status"], "succeeded", "{job}");
    if interrupted {
        assert_eq!(
            job["summary"]["recovered"], true,
            "the engine cleaned up the killed attempt: {job}"
        );
        // ... and says what that meant for the work.
        assert!(
            job["summary"]["notes"]
                .to_string()
                .contains("made again from the start"),
            "{job}"
        );
    }
    let c = get_json(
        &client,
        format!("{base}/api/v1/containers/{copy_id}"),
        &token,
    )
    .await;
    // Copied whole; an imported tree has no command, so the copy has nothing to run.
    assert_eq!(c["status"], "stopped", "{c}");
    assert!(
        c["status_reason"].as_str().unwrap().contains("no command"),
        "{c}"
    );
    // Given one, that reason is no longer so, and goes.
    let resp = client
        .put(format!("{base}/api/v1/containers/{copy_id}/command"))
        .bearer_auth(&token)
        .json(&serde_json::json!({"args": ["/bin/sleep", "60"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let changed: Value = resp.json().await.unwrap();
    assert!(changed["status_reason"].is_null(), "{changed}");
    assert_eq!(changed["status"], "stopped", "{changed}");
    let root = std::path::PathBuf::from(c["root_path"].as_str().unwrap());
    for i in [0, 17, 47] {
        let rel = format!("d{}/f{i}", i % 4);
        assert_eq!(
            std::fs::read(root.join(&rel)).unwrap(),
            std::fs::read(tree.join(&rel)).unwrap(),
            "{rel}"
        );
    }
    assert_eq!(c["file_count"], 48);
    let state = root
        .parent()
        .unwrap()
        .parent()
        .unwrap()
        .join("state")
        .join(&copy_id);
    assert!(
        !state.join("work").exists(),
        "no leftovers of the interrupted attempt"
    );
    server_proc.kill().unwrap();
    server_proc.wait().unwrap();
}
