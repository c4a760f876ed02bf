//! Hostile trees and hostile requests against the real binary: doppel answers, fails the
//! job that cannot be done with an error that says why, and starts cleanly afterwards.

#[path = "common/process.rs"]
mod process;

use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use doppel::engine::fsx;
use process::{doppel, free_port, get_json, wait_up};
use serde_json::{json, Value};

/// `levels` nested directories `d/d/...` in `root`, made from the last one's descriptor.
fn deep_tree(root: &Path, levels: usize) {
    let mut dir = fsx::open_dir(root).unwrap();
    fsx::mkdir_at(dir.as_fd(), b"deep").unwrap();
    dir = fsx::open_dir_at(dir.as_fd(), b"deep").unwrap();
    for _ in 0..levels {
        fsx::mkdir_at(dir.as_fd(), b"d").unwrap();
        dir = fsx::open_dir_at(dir.as_fd(), b"d").unwrap();
    }
}

/// Removes `root/deep` when dropped, test failed or not (a recursive removal would overflow).
struct RemoveDeep(PathBuf);

impl Drop for RemoveDeep {
    fn drop(&mut self) {
        if let Ok(dir) = fsx::open_dir(&self.0) {
            let _ = fsx::remove_at(dir.as_fd(), b"deep");
        }
    }
}

async fn post(
    client: &reqwest::Client,
    url: &str,
    token: &str,
    body: Option<Value>,
) -> (u16, Value) {
    let mut req = client.post(url).bearer_auth(token);
    if let Some(body) = body {
        req = req.json(&body);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

/// Starts a sync of `copy` and waits for its end: (the job's URL, the job).
async fn sync_and_wait(
    client: &reqwest::Client,
    base: &str,
    token: &str,
    copy: &str,
) -> (String, Value) {
    let (st, body) = post(
        client,
        &format!("{base}/api/v1/containers/{copy}/sync"),
        token,
        None,
    )
    .await;
    assert_eq!(st, 202, "{body}");
    let url = format!("{base}{}", body["job"]["url"].as_str().unwrap());
    let job = finished(client, &url, token).await;
    (url, job)
}

async fn finished(client: &reqwest::Client, url: &str, token: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let job = get_json(client, url, token).await;
        if job["status"] != "queued" && job["status"] != "running" {
            return job;
        }
        assert!(Instant::now() < deadline, "the job did not end: {job}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The container of this name, in full (`GET /containers/{id}`).
async fn container(client: &reqwest::Client, base: &str, token: &str, name: &str) -> Value {
    let list = get_json(client, format!("{base}/api/v1/containers"), token).await;
    let id = list["containers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("no {name}"))["id"]
        .as_str()
        .unwrap()
        .to_string();
    get_json(client, format!("{base}/api/v1/containers/{id}"), token).await
}

fn token(data: &Path) -> String {
    let out = doppel(data)
        .args(["token", "create", "--user", "admin"])
        .output()
        .unwrap();
    assert!(out.status.success());
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_100000_deep_tree_fails_its_jobs_and_never_takes_doppel_down() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let client = reqwest::Client::new();
    let mut server = process::serve(&data, port, true);
    wait_up(&client, &base).await;
    let token = token(&data);
    let c = container(&client, &base, &token, "web-app").await;
    let source = c["id"].as_str().unwrap().to_string();
    let copy = container(&client, &base, &token, "web-app-staging").await["id"]
        .as_str()
        .unwrap()
        .to_string();
    let root = PathBuf::from(c["root_path"].as_str().unwrap());
    let _cleanup = RemoveDeep(root.clone());
    deep_tree(&root, 100_000);

    // The sync status page scans the sources of copies: it answers.
    let resp = client
        .get(format!("{base}/api/v1/sync-status"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);

    // A sync and a copy of it fail, saying why.
    let (sync_url, job) = sync_and_wait(&client, &base, &token, &copy).await;
    assert_eq!(job["status"], "failed", "{job}");
    assert!(
        job["error"].as_str().unwrap().contains("directories deep"),
        "{job}"
    );
    let (st, body) = post(
        &client,
        &format!("{base}/api/v1/containers/{source}/copy"),
        &token,
        Some(json!({"target_project_id": c["project_id"], "name": "deep-copy"})),
    )
    .await;
    assert_eq!(st, 202, "{body}");
    let copy_url = format!("{base}{}", body["job"]["url"].as_str().unwrap());
    let job = finished(&client, &copy_url, &token).await;
    assert_eq!(job["status"], "failed", "{job}");
    assert!(
        job["error"].as_str().unwrap().contains("directories deep"),
        "{job}"
    );
    let c = get_json(&client, format!("{base}/api/v1/containers/{copy}"), &token).await;
    assert_eq!(
        c["status"], "running",
        "the copy keeps its last good state: {c}"
    );

    // Still up; and after a hard stop it starts cleanly, with the jobs as they ended.
    assert!(client
        .get(format!("{base}/healthz"))
        .send()
        .await
        .unwrap()
        .status()
        .is_success());
    server.kill().unwrap();
    server.wait().unwrap();
    let _server = process::serve(&data, port, true);
    wait_up(&client, &base).await;
    let job = get_json(&client, &sync_url, &token).await;
    assert_eq!(job["status"], "failed", "{job}");
    let resp = client
        .get(format!("{base}/api/v1/sync-status"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
}

/// doppel as an unprivileged user (nobody), which is what makes a mode-000 entry unreadable.
fn as_nobody(mut c: std::process::Command) -> std::process::Command {
    use std::os::unix::process::CommandExt;
    c.uid(NOBODY).gid(NOBODY);
    c
}

const NOBODY: u32 = 65534;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreadable_file_or_directory_fails_the_job_instead_of_going_missing() {
    use std::os::unix::fs::PermissionsExt;
    let tmp = tempfile::tempdir().unwrap();
    std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o711)).unwrap();
    let data = tmp.path().join("data");
    std::fs::create_dir(&data).unwrap();
    std::os::unix::fs::chown(&data, Some(NOBODY), Some(NOBODY)).unwrap();
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let client = reqwest::Client::new();
    let mut serve = as_nobody(doppel(&data));
    serve
        .args(["serve", "--addr", &format!("127.0.0.1:{port}")])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    let _server = process::Serving::adopt(serve.spawn().unwrap(), &data);
    wait_up(&client, &base).await;
    let out = as_nobody(doppel(&data))
        .args(["token", "create", "--user", "admin"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let token = String::from_utf8(out.stdout).unwrap().trim().to_string();
    let c = container(&client, &base, &token, "web-app").await;
    let source = c["id"].as_str().unwrap().to_string();
    let staging = container(&client, &base, &token, "web-app-staging").await;
    let copy = staging["id"].as_str().unwrap().to_string();
    // Not root: doppel runs no containers, and says why.
    assert_eq!(staging["status"], "stopped", "{staging}");
    assert!(
        staging["status_reason"]
            .as_str()
            .unwrap()
            .contains("not running as root"),
        "{staging}"
    );
    let root = PathBuf::from(c["root_path"].as_str().unwrap());
    std::fs::create_dir(root.join("private")).unwrap();
    std::fs::write(root.join("private/key"), b"k").unwrap();
    std::fs::write(root.join("secret.txt"), b"s").unwrap();
    let mode = |p: &str, m: u32| {
        std::fs::set_permissions(root.join(p), std::fs::Permissions::from_mode(m)).unwrap()
    };
    mode("private", 0o000);
    mode("secret.txt", 0o000);

    let copy_once = |name: &'static str| {
        let (client, base, token, project) = (
            client.clone(),
            base.clone(),
            token.clone(),
            c["project_id"].clone(),
        );
        let source = source.clone();
        async move {
            let (st, body) = post(
                &client,
                &format!("{base}/api/v1/containers/{source}/copy"),
                &token,
                Some(json!({"target_project_id": project, "name": name})),
            )
            .await;
            assert_eq!(st, 202, "{body}");
            let url = format!("{base}{}", body["job"]["url"].as_str().unwrap());
            finished(&client, &url, &token).await
        }
    };
    // The walk meets the directory first, then (once it is readable) the file.
    let job = copy_once("copy-1").await;
    assert_eq!(job["status"], "failed", "{job}");
    let error = job["error"].as_str().unwrap();
    assert!(
        error.contains("private") && error.contains("ermission denied"),
        "{job}"
    );
    mode("private", 0o755);
    let job = copy_once("copy-2").await;
    assert_eq!(job["status"], "failed", "{job}");
    let error = job["error"].as_str().unwrap();
    assert!(
        error.contains("secret.txt") && error.contains("ermission denied"),
        "{job}"
    );
    // A sync needs every file too; the copy it would update stays as it was.
    let (_, job) = sync_and_wait(&client, &base, &token, &copy).await;
    assert_eq!(job["status"], "failed", "{job}");
    assert!(
        job["error"].as_str().unwrap().contains("secret.txt"),
        "{job}"
    );
    let c = get_json(&client, format!("{base}/api/v1/containers/{copy}"), &token).await;
    assert_eq!(c["status"], staging["status"], "as before the sync: {c}");
    assert!(!PathBuf::from(c["root_path"].as_str().unwrap())
        .join("secret.txt")
        .exists());
    mode("secret.txt", 0o644);
}

/// Whether the server closed `conn` (read returns end of file or an error) within `limit`.
async fn closed_within(conn: &mut tokio::net::TcpStream, limit: Duration) -> bool {
    use tokio::io::AsyncReadExt;
    let mut buf = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        match tokio::time::timeout_at(deadline, conn.read(&mut buf)).await {
            Err(_) => return false,
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => continue, // a response; keep reading until the close
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_sent_and_idle_connections_are_closed_but_event_streams_are_not() {
    use tokio::io::AsyncWriteExt;
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let client = reqwest::Client::new();
    let mut serve = doppel(&data);
    serve
        .args(["serve", "--addr", &format!("127.0.0.1:{port}")])
        .args(["--header-timeout", "2", "--max-connections", "8"])
        .arg("--container-network")
        .arg(process::test_network().to_string())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    let _server = process::Serving::adopt(serve.spawn().unwrap(), &data);
    wait_up(&client, &base).await;
    let token = token(&data);

    // An event stream, open before the slow clients come and kept past several timeouts.
    let mut events = client
        .get(format!("{base}/api/v1/events"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(events.status(), 200);

    // Seven clients that never finish their request head: with the stream they take all
    // eight connection slots.
    let mut slow = Vec::new();
    for _ in 0..7 {
        let mut c = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .unwrap();
        c.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
            .await
            .unwrap();
        slow.push(c);
    }
    // A real request waits for a free slot instead of failing, and gets one once the
    // header timeout has closed the slow clients.
    let resp = tokio::time::timeout(
        Duration::from_secs(30),
        reqwest::Client::new().get(format!("{base}/healthz")).send(),
    )
    .await
    .expect("answered once the slow clients are gone")
    .unwrap();
    assert!(resp.status().is_success());
    for c in &mut slow {
        assert!(
            closed_within(c, Duration::from_secs(20)).await,
            "a half-sent request was closed"
        );
    }
    // A kept-alive connection that goes quiet after its request is closed too.
    let mut idle = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    idle.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    assert!(
        closed_within(&mut idle, Duration::from_secs(20)).await,
        "an idle connection was closed"
    );

    // The stream outlived all of that, and still delivers: a sync now shows up on it.
    let copy = container(&client, &base, &token, "web-app-staging").await["id"]
        .as_str()
        .unwrap()
        .to_string();
    let (st, body) = post(
        &client,
        &format!("{base}/api/v1/containers/{copy}/sync"),
        &token,
        None,
    )
    .await;
    assert_eq!(st, 202, "{body}");
    let job_id = body["job"]["id"].as_str().unwrap().to_string();
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut seen = String::new();
    while !seen.contains(&job_id) {
        let chunk = tokio::time::timeout_at(deadline.into(), events.chunk())
            .await
            .expect("the event stream delivers the sync's events")
            .unwrap()
            .expect("the event stream is still open");
        seen.push_str(&String::from_utf8_lossy(&chunk));
    }
}

/// A tmpfs of `size` mounted at `dir` for the test, unmounted when dropped (failed or not).
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(dir: &Path, size: &str) -> Tmpfs {
        std::fs::create_dir_all(dir).unwrap();
        let st = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir)
            .status()
            .unwrap();
        assert!(st.success(), "mounting a tmpfs (this test runs as root)");
        Tmpfs(dir.to_path_buf())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .status();
    }
}

fn free_mib(dir: &Path) -> u64 {
    doppel::engine::fsx::free_space(dir).unwrap().0 >> 20
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_fails_the_copy_cleanly_and_doppel_goes_on() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    // The demo data (about 40 MiB, busybox in each tree) fits; the grown source's copy
    // does not.
    let _fs = Tmpfs::mount(&data, "112m");
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let client = reqwest::Client::new();
    let mut server = process::serve(&data, port, true);
    wait_up(&client, &base).await;
    let token = token(&data);
    let web_app = container(&client, &base, &token, "web-app").await;
    let id = web_app["id"].as_str().unwrap().to_string();
    let root = PathBuf::from(web_app["root_path"].as_str().unwrap());
    // The source grows behind doppel's back: its recorded size still says 3 MB, so the
    // copy is let in, and runs out of space half way.
    let big: Vec<u8> = (0..60u32 << 20)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    std::fs::write(root.join("grown.bin"), &big).unwrap();
    let free_before = free_mib(&data);
    assert!(
        free_before < 60,
        "the copy cannot fit: {free_before} MiB free"
    );
    let copy = |name: &'static str| {
        let (client, base, token, project, id) = (
            client.clone(),
            base.clone(),
            token.clone(),
            web_app["project_id"].clone(),
            id.clone(),
        );
        async move {
            post(
                &client,
                &format!("{base}/api/v1/containers/{id}/copy"),
                &token,
                Some(json!({"target_project_id": project, "name": name})),
            )
            .await
        }
    };
    let (st, body) = copy("too-big").await;
    assert_eq!(st, 202, "{body}");
    let job_url = format!("{base}{}", body["job"]["url"].as_str().unwrap());
    let copy_id = body["container"]["id"].as_str().unwrap().to_string();
    let job = finished(&client, &job_url, &token).await;
    assert_eq!(job["status"], "failed", "{job}");
    assert!(
        job["error"].as_str().unwrap().contains("No space left"),
        "{job}"
    );
    // The space is given back: nothing staged remains.
    let c = get_json(
        &client,
        format!("{base}/api/v1/containers/{copy_id}"),
        &token,
    )
    .await;
    assert_eq!(c["status"], "failed", "{c}");
    assert!(!PathBuf::from(c["root_path"].as_str().unwrap()).exists());
    let free_after = free_mib(&data);
    assert!(
        free_after + 2 >= free_before,
        "{free_after} MiB free after, {free_before} before"
    );
    // The database still writes, tokens still work, and the server answers.
    let out = doppel(&data)
        .args(["token", "create", "--user", "admin"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // A snapshot of the grown tree cannot fit either: a clear 507, and nothing kept.
    let (st, body) = post(
        &client,
        &format!("{base}/api/v1/containers/{id}/snapshots"),
        &token,
        Some(json!({"name": "after-the-full-disk"})),
    )
    .await;
    assert_eq!(st, 507, "{body}");
    assert!(
        free_mib(&data) + 2 >= free_before,
        "the snapshot's space is given back"
    );
    // Now that the recorded size is known to be too big, copies are refused up front.
    std::fs::remove_file(root.join("grown.bin")).unwrap();
    let ballast = data.join("ballast");
    let room = free_mib(&data).saturating_sub(2);
    std::fs::write(&ballast, vec![0u8; (room as usize) << 20]).unwrap();
    let (st, body) = copy("no-room").await;
    assert_eq!(st, 507, "{body}");
    assert!(body.to_string().contains("not enough space"), "{body}");
    std::fs::remove_file(&ballast).unwrap();
    let (st, body) = copy("fits-now").await;
    assert_eq!(st, 202, "{body}");
    let job = finished(
        &client,
        &format!("{base}{}", body["job"]["url"].as_str().unwrap()),
        &token,
    )
    .await;
    assert_eq!(job["status"], "succeeded", "{job}");
    server.kill().unwrap();
    server.wait().unwrap();
}
