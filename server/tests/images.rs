//! `--image-trees`: on a storage root on XFS, the trees doppel lays down are image trees,
//! its copies of them are clones of their images, and a container whose tree's filesystem
//! went away with a restart of the host is mounted again when it starts. Runs the real
//! binary, as an operator would, on an XFS this test makes (root, as CI) and removes.

#[path = "common/process.rs"]
mod process;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use doppel::engine::image;
use serde_json::{json, Value};

/// `doppel serve` on the data dir with `--image-trees <size>`, the demo data on first
/// start.
fn serve(data: &Path, port: u16, network: &str, size: &str) -> process::Serving {
    serve_with(data, port, network, &["--image-trees", size])
}

/// `doppel serve` on the data dir with these flags besides its address and network.
fn serve_with(data: &Path, port: u16, network: &str, flags: &[&str]) -> process::Serving {
    let child = process::doppel(data)
        .args(["serve", "--addr", &format!("127.0.0.1:{port}")])
        .args(["--container-network", network])
        .args(flags)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    process::Serving::adopt(child, data)
}

struct Api {
    client: reqwest::Client,
    base: String,
    token: String,
}

impl Api {
    /// The port doppel listens on.
    fn port(&self) -> u16 {
        self.base.rsplit(':').next().unwrap().parse().unwrap()
    }
    async fn get(&self, path: &str) -> Value {
        process::get_json(&self.client, format!("{}{path}", self.base), &self.token).await
    }
    async fn post(&self, path: &str, body: Option<Value>) -> (u16, Value) {
        let mut req = self
            .client
            .post(format!("{}{path}", self.base))
            .bearer_auth(&self.token);
        if let Some(body) = body {
            req = req.json(&body);
        }
        let resp = req.send().await.unwrap();
        (
            resp.status().as_u16(),
            resp.json().await.unwrap_or(Value::Null),
        )
    }
    /// A POST without a body that is refused with `status`: what its error says.
    async fn refused(&self, path: &str, status: u16) -> String {
        let (got, body) = self.post(path, None).await;
        assert_eq!(got, status, "{path}: {body}");
        body["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    }
    /// Starts the container: it answers running.
    async fn start_running(&self, id: &str) {
        let (status, started) = self
            .post(&format!("/api/v1/containers/{id}/start"), None)
            .await;
        assert_eq!(
            (status, &started["status"]),
            (200, &json!("running")),
            "{started}"
        );
    }
    /// Stops the container, and waits until it is recorded stopped.
    async fn stop_and_wait(&self, id: &str) {
        let (status, stopped) = self
            .post(&format!("/api/v1/containers/{id}/stop"), None)
            .await;
        assert_eq!(status, 200, "{stopped}");
        let deadline = Instant::now() + Duration::from_secs(20);
        while self.container(id).await["status"] != "stopped" {
            assert!(Instant::now() < deadline, "{id} does not stop");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    /// A copy of `source` (`body`: the copy request) that succeeded as a clone of its
    /// source's image; its job.
    async fn copied_as_clone(&self, source: &str, body: Value) -> Value {
        let (status, copied) = self
            .post(&format!("/api/v1/containers/{source}/copy"), Some(body))
            .await;
        assert_eq!(status, 202, "{copied}");
        let job = self.wait_job(copied["job"]["url"].as_str().unwrap()).await;
        assert_eq!(job["status"], "succeeded", "{job}");
        assert!(
            job["summary"]["notes"]
                .to_string()
                .contains("a clone of the source's image"),
            "{job}"
        );
        job
    }
    /// `DELETE /containers/{id}`, and its job once it ended.
    async fn delete_and_wait(&self, id: &str) -> Value {
        let resp = self
            .client
            .delete(format!("{}/api/v1/containers/{id}", self.base))
            .bearer_auth(&self.token)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status().as_u16(), 202);
        let body: Value = resp.json().await.unwrap();
        self.wait_job(body["job"]["url"].as_str().unwrap()).await
    }
    async fn container(&self, id: &str) -> Value {
        self.get(&format!("/api/v1/containers/{id}")).await
    }
    async fn wait_job(&self, url: &str) -> Value {
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let job = self.get(url).await;
            if matches!(
                job["status"].as_str(),
                Some("succeeded" | "failed" | "cancelled")
            ) {
                return job;
            }
            assert!(Instant::now() < deadline, "the job did not end: {job}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// `doppel serve` started on an XFS of its own, with these flags, once it answers; and
/// the API as its admin.
async fn start_on(xfs: &process::Xfs, flags: &[&str]) -> (process::Serving, Api, String) {
    let data = xfs.data();
    std::fs::create_dir_all(&data).unwrap();
    let port = process::free_port();
    let network = process::test_network().to_string();
    let doppel = serve_with(&data, port, &network, flags);
    let client = reqwest::Client::new();
    let base = format!("http://127.0.0.1:{port}");
    process::wait_up(&client, &base).await;
    let api = Api {
        client,
        base,
        token: process::admin_token(&data),
    };
    (doppel, api, network)
}

/// The length of the image of the image tree at `root`.
fn image_len(root: &Path) -> u64 {
    std::fs::metadata(image::image_path(root)).unwrap().len()
}

/// The room the filesystem at `dir` offers, in bytes.
fn free(dir: &Path) -> u64 {
    let st = rustix::fs::statvfs(dir).unwrap();
    st.f_bavail * st.f_frsize
}

/// Waits until `done`, 10 s at most; `said` says where things stood if they never were.
async fn within_10s(done: impl Fn() -> bool, said: impl Fn() -> String) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !done() {
        assert!(Instant::now() < deadline, "{}", said());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The size of the filesystem mounted at `root`, in bytes.
fn filesystem_size(root: &Path) -> u64 {
    let st = rustix::fs::statvfs(root).unwrap();
    st.f_blocks * st.f_frsize
}

fn root(c: &Value) -> PathBuf {
    PathBuf::from(c["root_path"].as_str().unwrap())
}

/// The page a container serves on port 80 (retried for a few seconds: its server starts).
async fn page(c: &Value) -> String {
    let address = c["interfaces"][0]["ipv4"]
        .as_str()
        .unwrap_or_else(|| panic!("{c}"));
    let address = address.split('/').next().unwrap();
    let client = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(2))
        .build()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let got = client.get(format!("http://{address}/")).send().await;
        if let Ok(resp) = got {
            if resp.status().is_success() {
                return resp.text().await.unwrap();
            }
        }
        assert!(Instant::now() < deadline, "no page from {address}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn image_trees_are_laid_down_copied_as_clones_and_mounted_again_after_a_host_restart() {
    let xfs = process::Xfs::new();
    let data = xfs.data();
    let (mut doppel, api, network) = start_on(&xfs, &["--image-trees", "2G"]).await;
    let port = api.port();

    // The server says what it lays down.
    let servers = api.get("/api/v1/servers").await;
    let server = &servers["servers"][0];
    assert_eq!(server["storage"], "reflink", "{servers}");
    assert_eq!(server["image_trees"], 2u64 << 30, "{servers}");

    // The demo's trees were laid down as image trees, and run.
    let list = api.get("/api/v1/containers").await;
    let web = list["containers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "web-app")
        .unwrap_or_else(|| panic!("{list}"))["id"]
        .as_str()
        .unwrap()
        .to_string();
    let web = api.container(&web).await;
    assert!(image::is_image_tree(&root(&web)), "{web}");
    assert_eq!(web["tree"], "image_tree", "{web}");
    assert_eq!(web["status"], "running", "{web}");
    assert_eq!(image_len(&root(&web)), 2 << 30);
    let web_page = page(&web).await;

    // A copy on its server is a clone of its image: a tree of its own that runs.
    let project = web["project_id"].as_str().unwrap();
    let (status, started) = api
        .post(
            &format!("/api/v1/containers/{}/copy", web["id"].as_str().unwrap()),
            Some(json!({"target_project_id": project, "name": "web-clone"})),
        )
        .await;
    assert_eq!(status, 202, "{started}");
    let job = api.wait_job(started["job"]["url"].as_str().unwrap()).await;
    assert_eq!(job["status"], "succeeded", "{job}");
    let notes = job["summary"]["notes"].to_string();
    assert!(notes.contains("a clone of the source's image"), "{job}");
    let copy_id = started["container"]["id"].as_str().unwrap().to_string();
    let copy = api.container(&copy_id).await;
    let copy_root = root(&copy);
    assert!(image::is_image_tree(&copy_root), "{copy}");
    assert_ne!(copy_root, root(&web));
    let served = page(&copy).await;
    assert!(!served.is_empty());

    // The host restarts: processes and loop mounts gone, the empty directory left.
    doppel.kill().unwrap();
    doppel.wait().unwrap();
    drop(doppel);
    doppel::runtime::purge(&data);
    let out = Command::new("umount").arg(&copy_root).output().unwrap();
    assert!(out.status.success(), "{out:?}");
    let t = Instant::now();
    while image::attached(&image::image_path(&copy_root)).unwrap() {
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "the loop device stays"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(!image::is_image_tree(&copy_root));
    assert_eq!(std::fs::read_dir(&copy_root).unwrap().count(), 0);

    // Started again, with larger image trees: the trees still mounted are grown at start
    // and run as before; the copy's tree is mounted (and grown) before its process runs,
    // and it serves its page.
    let doppel = serve(&data, port, &network, "3G");
    process::wait_up(&api.client, &api.base).await;
    let servers = api.get("/api/v1/servers").await;
    assert_eq!(
        servers["servers"][0]["image_trees"],
        3u64 << 30,
        "{servers}"
    );
    assert_eq!(image_len(&root(&web)), 3 << 30);
    assert!(filesystem_size(&root(&web)) > 5 << 29);
    let web_id = web["id"].as_str().unwrap();
    if api.container(web_id).await["status"] != "running" {
        let (status, started) = api
            .post(&format!("/api/v1/containers/{web_id}/start"), None)
            .await;
        assert_eq!(status, 200, "{started}");
    }
    assert_eq!(page(&web).await, web_page);
    assert_eq!(api.container(&copy_id).await["status"], "stopped");
    let (status, copy) = api
        .post(&format!("/api/v1/containers/{copy_id}/start"), None)
        .await;
    assert_eq!(status, 200, "{copy}");
    assert_eq!(copy["status"], "running", "{copy}");
    assert!(image::is_image_tree(&copy_root));
    assert_eq!(image_len(&copy_root), 3 << 30);
    assert!(filesystem_size(&copy_root) > 5 << 29);
    assert_eq!(page(&copy).await, served);

    // The host runs short of room (another tenant's file): within a moment, no image tree
    // offers its container more than the host has left, less a margin, so a tree fills up
    // like a disk before its host does; room back, they offer it again.
    let trees = [root(&web), copy_root.clone()];
    let hog = data.join("another-tenant");
    let file = std::fs::File::create(&hog).unwrap();
    rustix::fs::fallocate(
        &file,
        rustix::fs::FallocateFlags::empty(),
        0,
        free(&data) - (1 << 30),
    )
    .unwrap();
    let margin = 256 << 20;
    let said = || format!("{} of {}", free(&trees[0]), free(&data));
    within_10s(
        || trees.iter().all(|t| free(t) + margin <= free(&data)),
        said,
    )
    .await;
    // Short of that margin, a copy onto the server is refused up front (507): its tree
    // would fail half way with "no space left".
    let had = file.metadata().unwrap().len();
    rustix::fs::fallocate(
        &file,
        rustix::fs::FallocateFlags::empty(),
        had,
        free(&data) - (200 << 20),
    )
    .unwrap();
    let (status, refused) = api
        .post(
            &format!("/api/v1/containers/{web_id}/copy"),
            Some(json!({"target_project_id": project, "name": "web-short"})),
        )
        .await;
    assert_eq!(status, 507, "{refused}");
    assert!(
        refused["error"]["message"]
            .as_str()
            .unwrap()
            .contains("kept free for its image trees' writes"),
        "{refused}"
    );
    drop(file);
    std::fs::remove_file(&hog).unwrap();
    within_10s(|| trees.iter().all(|t| free(t) >= 2 << 30), said).await;

    // Deleted: its process, its mount, its loop device and its image are gone.
    let job = api.delete_and_wait(&copy_id).await;
    assert_eq!(job["status"], "succeeded", "{job}");
    assert!(!copy_root.exists() && !image::image_path(&copy_root).exists());
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap();
    assert!(!mounts.contains(copy_root.to_str().unwrap()), "{mounts}");
    // The source is untouched.
    assert!(image::is_image_tree(&root(&web)));
    drop(doppel);
}

/// Trees made before doppel ran with `--image-trees` are directories. `doppel
/// convert-trees`, run while doppel is stopped, makes image trees of those whose container
/// has no process: they run as before, their copies on their server are clones, and the
/// copies made of them before are still their state. It leaves a running container's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn convert_trees_makes_the_trees_made_before_image_trees_and_leaves_running_ones() {
    let xfs = process::Xfs::new();
    let data = xfs.data();
    let (mut doppel, api, network) = start_on(&xfs, &[]).await;
    let port = api.port();
    let list = api.get("/api/v1/containers").await;
    let by_name = |name: &str| -> Value {
        list["containers"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["name"] == name)
            .unwrap_or_else(|| panic!("{name}: {list}"))
            .clone()
    };
    // (The list's entries are short: each container read whole.)
    let web = api
        .container(by_name("web-app")["id"].as_str().unwrap())
        .await;
    let etl = api
        .container(by_name("etl-worker")["id"].as_str().unwrap())
        .await;
    let staging = by_name("web-app-staging");
    let web_id = web["id"].as_str().unwrap().to_string();
    for c in [&web, &etl] {
        assert!(!image::is_image_tree(&root(c)), "{c}");
        assert_eq!(c["tree"], "directory", "{c}");
        assert_eq!(c["status"], "running", "{c}");
    }
    let web_page = page(&web).await;
    // edge-proxy gets a snapshot and a copy, both directories: it is converted later by a
    // job, while doppel runs.
    let edge = api
        .container(by_name("edge-proxy")["id"].as_str().unwrap())
        .await;
    let edge_id = edge["id"].as_str().unwrap().to_string();
    let (status, snapshot) = api
        .post(
            &format!("/api/v1/containers/{edge_id}/snapshots"),
            Some(json!({"name": "before-convert"})),
        )
        .await;
    assert_eq!(status, 201, "{snapshot}");
    let body = json!({"target_project_id": edge["project_id"], "name": "edge-copy"});
    let (status, copied) = api
        .post(&format!("/api/v1/containers/{edge_id}/copy"), Some(body))
        .await;
    assert_eq!(status, 202, "{copied}");
    let edge_copy = copied["container"]["id"].as_str().unwrap().to_string();
    let job = api.wait_job(copied["job"]["url"].as_str().unwrap()).await;
    assert_eq!(job["status"], "succeeded", "{job}");
    // web-app is stopped in doppel first; etl-worker is left running.
    api.stop_and_wait(&web_id).await;
    doppel.kill().unwrap();
    doppel.wait().unwrap();

    let convert = |args: &[&str]| {
        let out = process::doppel(&data).args(args).output().unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    // The line of a container's tree, or of its snapshot `snapshot`'s.
    let line_of = |out: &str, c: &Value, snapshot: Option<&str>| -> String {
        let start = format!(
            "{} ({}){} at ",
            c["name"].as_str().unwrap(),
            c["id"].as_str().unwrap(),
            snapshot
                .map(|s| format!(" snapshot {s}"))
                .unwrap_or_default()
        );
        out.lines()
            .find(|l| l.starts_with(&start))
            .unwrap_or_else(|| panic!("no line for {start}: {out}"))
            .to_string()
    };
    let (ok, _, err) = convert(&["convert-trees"]);
    assert!(!ok && err.contains("--image-trees SIZE"), "{err}");
    let (ok, out, err) = convert(&[
        "--image-trees",
        "2G",
        "convert-trees",
        "--container",
        "web-app",
        "--container",
        "etl-worker",
    ]);
    assert!(
        !ok,
        "a running container's tree stays a directory: {out}{err}"
    );
    assert!(err.contains("trees stay directories"), "{err}");
    assert!(err.contains("  web-app: transfer, "), "its progress: {err}");
    // (The demo's web-app has a snapshot, before-upgrade: converted with its tree.)
    for snapshot in [None, Some("before-upgrade")] {
        assert!(
            line_of(&out, &web, snapshot).contains(": converted: an image tree holding"),
            "{out}"
        );
    }
    assert!(
        line_of(&out, &etl, None).contains(": stays a directory: its process is running"),
        "{out}"
    );
    assert!(image::is_image_tree(&root(&web)));
    assert!(!image::is_image_tree(&root(&etl)));
    let (ok, out, err) = convert(&[
        "--image-trees",
        "2G",
        "convert-trees",
        "--container",
        "web-app",
    ]);
    assert!(ok, "{out}{err}");
    for snapshot in [None, Some("before-upgrade")] {
        assert!(
            line_of(&out, &web, snapshot).ends_with(": an image tree already"),
            "{out}"
        );
    }
    assert_eq!(out.lines().count(), 2, "{out}");
    let (ok, _, err) = convert(&[
        "--image-trees",
        "2G",
        "convert-trees",
        "--container",
        "nope",
    ]);
    assert!(
        !ok && err.contains("no container \"nope\" on this host"),
        "{err}"
    );

    // Started again: web-app runs from its image tree and serves its page as before.
    let _doppel = serve(&data, port, &network, "2G");
    process::wait_up(&api.client, &api.base).await;
    api.start_running(&web_id).await;
    assert!(image::is_image_tree(&root(&web)));
    assert_eq!(api.container(&web_id).await["tree"], "image_tree");
    let etl_id = etl["id"].as_str().unwrap();
    assert_eq!(api.container(etl_id).await["tree"], "directory");
    assert_eq!(page(&web).await, web_page);
    // Its copy made before is still its state: a sync finds nothing to send.
    let staging_id = staging["id"].as_str().unwrap();
    let (status, synced) = api
        .post(&format!("/api/v1/containers/{staging_id}/sync"), None)
        .await;
    assert_eq!(status, 202, "{synced}");
    let job = api.wait_job(synced["job"]["url"].as_str().unwrap()).await;
    assert_eq!(job["status"], "succeeded", "{job}");
    let s = &job["summary"];
    for count in [
        "files_added",
        "files_changed",
        "files_deleted",
        "metadata_only",
        "drift",
    ] {
        assert_eq!(s[count], 0, "{count}: {job}");
    }
    // A copy of it on its server is a clone of its image, and so is one of its snapshot.
    for (name, snapshot) in [
        ("web-converted-copy", None),
        ("web-from-its-snapshot", Some("before-upgrade")),
    ] {
        let mut body = json!({"target_project_id": web["project_id"], "name": name});
        if let Some(snapshot) = snapshot {
            body["source_snapshot"] = snapshot.into();
        }
        api.copied_as_clone(&web_id, body).await;
    }

    // While doppel runs, through the API: edge-proxy, left a directory above, is converted
    // by a job while it runs (stopped for the final pass only), its snapshot with it; then
    // etl-worker, stopped first, in one pass.
    let convert = format!("/api/v1/containers/{edge_id}/convert-tree");
    api.start_running(&edge_id).await;
    let edge_page = page(&api.container(&edge_id).await).await;
    // Where its server lacks the room for the images, it is refused (507), nothing queued.
    let filler = data.join("filler");
    let fill = Command::new("fallocate")
        .arg("-l")
        .arg((free(&data) - (1 << 20)).to_string())
        .arg(&filler)
        .status()
        .unwrap();
    assert!(fill.success());
    let said = api.refused(&convert, 507).await;
    std::fs::remove_file(&filler).unwrap();
    assert!(
        said.contains("converting its tree and its snapshots' needs about"),
        "{said}"
    );
    // A slow copy of etl-worker, on edge-proxy's server, holds that server's one job slot:
    // the conversion waits in the queue, and a stop of edge-proxy meanwhile is refused,
    // naming its job. Once that copy is cancelled, the conversion runs.
    let body = json!({"target_project_id": etl["project_id"], "name": "etl-slow-copy"});
    let (status, slow) = api
        .post(
            &format!("/api/v1/containers/{etl_id}/copy?bwlimit=100K"),
            Some(body),
        )
        .await;
    assert_eq!(status, 202, "{slow}");
    let (status, started) = api.post(&convert, None).await;
    assert_eq!(status, 202, "{started}");
    assert_eq!(
        (&started["job"]["kind"], &started["job"]["status"]),
        (&json!("convert"), &json!("queued")),
        "{started}"
    );
    let convert_job = started["job"]["url"].as_str().unwrap();
    let said = api
        .refused(&format!("/api/v1/containers/{edge_id}/stop"), 409)
        .await;
    assert!(
        said.contains("a job is already queued or running for this container")
            && said.contains(convert_job),
        "{said}"
    );
    let slow_job = slow["job"]["id"].as_str().unwrap();
    let (status, cancelled) = api
        .post(&format!("/api/v1/jobs/{slow_job}/cancel"), None)
        .await;
    assert_eq!(status, 200, "{cancelled}");
    let job = api.wait_job(convert_job).await;
    assert_eq!(job["status"], "succeeded", "{job}");
    let notes = job["summary"]["notes"].to_string();
    assert!(notes.contains("its tree is an image tree"), "{job}");
    assert!(
        notes.contains("snapshot before-convert: an image tree now"),
        "{job}"
    );
    assert!(job["summary"]["downtime_ms"].is_u64(), "{job}");
    // Running again, from its image tree, serving the same page.
    let c = api.container(&edge_id).await;
    assert_eq!(
        (&c["tree"], &c["status"]),
        (&json!("image_tree"), &json!("running")),
        "{c}"
    );
    assert!(image::is_image_tree(&root(&c)));
    assert_eq!(page(&c).await, edge_page);
    // (Its row is as it was: not a copy, it matched no source.)
    assert_eq!(c["last_synced_at"], Value::Null, "{c}");
    let said = api.refused(&convert, 409).await;
    assert!(said.contains("an image tree already"), "{said}");
    // Its copy is as current as before, and a sync of it finds nothing to send.
    let statuses = api.get("/api/v1/sync-status").await;
    let copy_status = statuses["copies"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["copy"]["id"] == edge_copy.as_str())
        .unwrap_or_else(|| panic!("no edge-copy: {statuses}"))
        .clone();
    assert_eq!(copy_status["freshness"], "current", "{copy_status}");
    let (status, synced) = api
        .post(&format!("/api/v1/containers/{edge_copy}/sync"), None)
        .await;
    assert_eq!(status, 202, "{synced}");
    let job = api.wait_job(synced["job"]["url"].as_str().unwrap()).await;
    assert_eq!(job["status"], "succeeded", "{job}");
    for count in ["files_added", "files_changed", "files_deleted", "drift"] {
        assert_eq!(job["summary"][count], 0, "{count}: {job}");
    }
    // A copy of its converted snapshot is a clone of its image.
    let body = json!({"target_project_id": c["project_id"], "name": "edge-from-its-snapshot",
        "source_snapshot": "before-convert"});
    api.copied_as_clone(&edge_id, body).await;

    // A stopped container: converted in one pass, and left stopped.
    api.stop_and_wait(etl_id).await;
    let (status, started) = api
        .post(&format!("/api/v1/containers/{etl_id}/convert-tree"), None)
        .await;
    assert_eq!(status, 202, "{started}");
    let job = api.wait_job(started["job"]["url"].as_str().unwrap()).await;
    assert_eq!(job["status"], "succeeded", "{job}");
    assert!(job["summary"]["downtime_ms"].is_null(), "{job}");
    let c = api.container(etl_id).await;
    assert_eq!(
        (&c["tree"], &c["status"]),
        (&json!("image_tree"), &json!("stopped")),
        "{c}"
    );

    // Every directory tree left on edge-proxy's server at once: edge-copy gets a job, the
    // cancelled etl-slow-copy (no tree) is refused saying why, the image trees are counted.
    let (status, started) = api
        .post(
            &format!(
                "/api/v1/servers/{}/convert-trees",
                edge["server_id"].as_str().unwrap()
            ),
            None,
        )
        .await;
    assert_eq!(status, 202, "{started}");
    let jobs = started["jobs"].as_array().unwrap();
    assert_eq!(jobs.len(), 1, "{started}");
    assert_eq!(jobs[0]["container_id"], edge_copy.as_str(), "{started}");
    let refused = started["refused"].as_array().unwrap();
    assert!(
        refused.len() == 1
            && refused[0]["name"] == "etl-slow-copy"
            && refused[0]["reason"]
                .as_str()
                .unwrap()
                .contains("no complete tree"),
        "{started}"
    );
    assert!(started["already"].as_u64().unwrap() >= 5, "{started}");
    let job = api.wait_job(jobs[0]["url"].as_str().unwrap()).await;
    assert_eq!(job["status"], "succeeded", "{job}");
    assert_eq!(api.container(&edge_copy).await["tree"], "image_tree");

    // A converted tree that syncs have read (the change watch looked at it) is deleted
    // whole: its image unmounted and removed.
    let web_root = root(&web);
    let job = api.delete_and_wait(&web_id).await;
    assert_eq!(job["status"], "succeeded", "{job}");
    assert!(!web_root.exists() && !image::image_path(&web_root).exists());
}
