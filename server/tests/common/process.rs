//! The real `doppel` binary, started as an operator would: for the tests and benchmarks
//! that run it as a process (`restart.rs`, `cli.rs`, `benches/load.rs`).
#![allow(dead_code)]

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// A container network of its own for each doppel a test starts: tests run side by side on
/// one host, and two bridges with one subnet would make both unreachable (doppel refuses
/// a network another interface already uses).
pub fn test_network() -> doppel::runtime::Ipv4Net {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let second = 100 + (std::process::id() % 100);
    let third = (n % 16) * 16;
    doppel::runtime::Ipv4Net::parse(&format!("10.{second}.{third}.0/20")).unwrap()
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// `doppel --data-dir DATA`, ignoring any database URL from the environment. The binary is
/// this build's, or `DOPPEL_LOAD_BIN` (`scripts/load-compare.sh` runs `make load` against
/// several builds in turn).
pub fn doppel(data: &Path) -> Command {
    let bin =
        std::env::var_os("DOPPEL_LOAD_BIN").unwrap_or_else(|| env!("CARGO_BIN_EXE_doppel").into());
    let mut c = Command::new(bin);
    c.arg("--data-dir")
        .arg(data)
        .env_remove("DOPPEL_DATABASE_URL");
    c
}

/// A `doppel serve` process. When dropped: killed, and whatever it ran on this host
/// (containers, namespaces, veths, bridges) removed, test passed or not.
pub struct Serving {
    child: Child,
    data: std::path::PathBuf,
}

impl Serving {
    /// A doppel started otherwise (another user, other flags), removed the same way.
    pub fn adopt(child: Child, data: &Path) -> Serving {
        Serving {
            child,
            data: data.to_path_buf(),
        }
    }
}

impl std::ops::Deref for Serving {
    type Target = Child;
    fn deref(&self) -> &Child {
        &self.child
    }
}

impl std::ops::DerefMut for Serving {
    fn deref_mut(&mut self) -> &mut Child {
        &mut self.child
    }
}

impl Drop for Serving {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        doppel::runtime::purge(&self.data);
    }
}

/// Data dirs whose containers are purged (again) when the test binary exits, and which
/// are removed only then.
static AT_EXIT: std::sync::Mutex<Vec<tempfile::TempDir>> = std::sync::Mutex::new(Vec::new());

/// Data dirs kept by someone else, purged (again) at exit if they are still there.
static PATHS_AT_EXIT: std::sync::Mutex<Vec<std::path::PathBuf>> = std::sync::Mutex::new(Vec::new());

extern "C" fn purge_all() {
    let dirs = std::mem::take(&mut *AT_EXIT.lock().unwrap_or_else(|e| e.into_inner()));
    for dir in &dirs {
        doppel::runtime::purge(dir.path());
    }
    let paths = std::mem::take(&mut *PATHS_AT_EXIT.lock().unwrap_or_else(|e| e.into_inner()));
    for path in paths.iter().filter(|p| p.exists()) {
        doppel::runtime::purge(path);
    }
}

fn register_purge_all() {
    static REGISTERED: std::sync::Once = std::sync::Once::new();
    // SAFETY: atexit only records the function; purge_all touches nothing torn down at
    // exit (static mutexes, files, child processes).
    REGISTERED.call_once(|| unsafe {
        libc::atexit(purge_all);
    });
}

/// Keeps `dir` until the test binary exits, and purges its containers then.
pub fn purge_at_exit(dir: tempfile::TempDir) {
    register_purge_all();
    AT_EXIT.lock().unwrap_or_else(|e| e.into_inner()).push(dir);
}

/// Purges the containers of the data dir at `path` when the test binary exits, if it is
/// still there then.
pub fn purge_path_at_exit(path: &std::path::Path) {
    register_purge_all();
    PATHS_AT_EXIT
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .push(path.to_path_buf());
}

/// `doppel serve` on a loopback port, with or without the demo data, with a container
/// network of its own.
pub fn serve(data: &Path, port: u16, demo: bool) -> Serving {
    let mut c = doppel(data);
    c.args(["serve", "--addr", &format!("127.0.0.1:{port}")])
        .arg("--container-network")
        .arg(test_network().to_string());
    if !demo {
        c.arg("--no-demo");
    }
    let child = c
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    Serving {
        child,
        data: data.to_path_buf(),
    }
}

/// A new API token of the admin of the data dir at `data` (`doppel token create`).
pub fn admin_token(data: &Path) -> String {
    let out = doppel(data)
        .args(["token", "create", "--user", "admin"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

/// Waits until the server at `base` answers its health check.
pub async fn wait_up(client: &reqwest::Client, base: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while client.get(format!("{base}/healthz")).send().await.is_err() {
        assert!(Instant::now() < deadline, "doppel did not start");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

pub async fn get_json(
    client: &reqwest::Client,
    url: impl reqwest::IntoUrl,
    token: &str,
) -> serde_json::Value {
    client
        .get(url)
        .bearer_auth(token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

/// A project "p" and a server "s1" in the database of `data`: (project id, server id).
pub async fn project_and_server(db: &doppel::store::Db, data: &Path) -> (String, String) {
    let project = doppel::service::inventory::create_project(db, "p", "")
        .await
        .unwrap();
    let config = doppel::config::DataConfig {
        data_dir: data.to_path_buf(),
        database_url: None,
    };
    let server = doppel::service::inventory::create_server(db, &config, "s1", "")
        .await
        .unwrap();
    (project, server)
}

/// A loop-mounted XFS (reflink) of its own. When dropped (test passed or not): the
/// containers of the data dir on it purged, everything mounted on and below it unmounted
/// (the image trees' loop devices clear themselves), its image removed.
pub struct Xfs {
    dir: tempfile::TempDir,
}

impl Xfs {
    pub fn new() -> Xfs {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("xfs.img");
        std::fs::File::create(&file)
            .unwrap()
            .set_len(8 << 30)
            .unwrap();
        let made = std::process::Command::new("mkfs.xfs")
            .args(["-q", "-m", "reflink=1"])
            .arg(&file)
            .status();
        assert!(
            made.is_ok_and(|s| s.success()),
            "mkfs.xfs (make setup-test installs it)"
        );
        std::fs::create_dir(dir.path().join("mnt")).unwrap();
        let mounted = std::process::Command::new("mount")
            .args(["-o", "loop"])
            .arg(&file)
            .arg(dir.path().join("mnt"))
            .status()
            .unwrap();
        assert!(mounted.success());
        Xfs { dir }
    }
    /// A data dir on it.
    pub fn data(&self) -> std::path::PathBuf {
        self.dir.path().join("mnt/data")
    }
}

impl Drop for Xfs {
    fn drop(&mut self) {
        doppel::runtime::purge(&self.data());
        let mnt = self.dir.path().join("mnt");
        // The loop devices of image trees inside detach a moment after their unmount, and
        // keep this filesystem busy until then: tried again for a while (a mount left
        // behind outlives the test and its temp dir).
        let mounted = || {
            Command::new("mountpoint")
                .arg("-q")
                .arg(&mnt)
                .status()
                .is_ok_and(|s| s.success())
        };
        for _ in 0..100 {
            let _ = Command::new("umount")
                .arg("--recursive")
                .arg(&mnt)
                .stderr(Stdio::null())
                .status();
            if !mounted() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        // Still busy (once, after a failed run: its holder was not found): detached
        // lazily, so that it goes when its last user does.
        let _ = Command::new("umount")
            .args(["--recursive", "--lazy"])
            .arg(&mnt)
            .status();
    }
}
