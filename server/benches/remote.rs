//! `make bench-remote`: doppel between two hosts against rsync over the same link, in one
//! run. A control plane and two agents, each a `doppel` process in its own network
//! namespace (tests/common/lab.rs); the agents' links shaped with `tc netem` (a rate and
//! 1 ms of delay each way; where the kernel has no netem, `tbf` for the rate alone, and
//! the output says so). On the reference tree of `make bench` (BENCH_SCALE, default
//! 1): the first copy from agent a to agent b, a sync after the "1 %" change, and a sync
//! with nothing changed; rsync pushes the same tree from a to an rsync daemon on b (and
//! over ssh when sshd is installed). Bytes on the wire are counted on a's link (both
//! directions, TCP and TLS included); times are from the request to the job's end.
//! Prints one figure per line, and the ratios.

#[path = "../tests/common/lab.rs"]
mod lab;
#[path = "tree.rs"]
mod tree;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use lab::{Lab, Running};
use serde_json::{json, Value};

fn doppel() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_doppel"))
}

/// Bytes through a host's link, both ways.
fn wire_bytes(veth: &str) -> u64 {
    let read = |what: &str| {
        std::fs::read_to_string(format!("/sys/class/net/{veth}/statistics/{what}"))
            .ok()
            .and_then(|s| s.trim().parse::<u64>().ok())
            .unwrap_or(0)
    };
    read("rx_bytes") + read("tx_bytes")
}

/// The peak resident memory of a process, in MB.
fn peak_mb(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        })
        .map_or(0.0, |kb| kb / 1024.0)
}

struct Api {
    base: String,
    token: String,
    client: reqwest::blocking::Client,
}

impl Api {
    fn call(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
        let mut req = self
            .client
            .request(method, format!("{}/api/v1{path}", self.base))
            .bearer_auth(&self.token);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().expect("the control plane answers");
        let status = resp.status();
        let v: Value = resp.json().unwrap_or(Value::Null);
        assert!(status.is_success(), "{path}: {status} {v}");
        v
    }

    fn find(&self, list: &str, key: &str, name: &str) -> String {
        self.call(reqwest::Method::GET, list, None)[key]
            .as_array()
            .unwrap()
            .iter()
            .find(|x| x["name"] == name)
            .unwrap_or_else(|| panic!("no {name} in {list}"))["id"]
            .as_str()
            .unwrap()
            .to_string()
    }

    /// Waits for the job to succeed; its summary.
    fn finished(&self, job: &Value) -> Value {
        let id = job["id"].as_str().unwrap();
        loop {
            let j = self.call(reqwest::Method::GET, &format!("/jobs/{id}"), None);
            match j["status"].as_str().unwrap() {
                "succeeded" => return j["summary"].clone(),
                "failed" | "cancelled" => panic!("job failed: {j}"),
                // Often, so that the time measured is the job's, not the polling's.
                _ => std::thread::sleep(Duration::from_millis(2)),
            }
        }
    }
}

/// One shaped link: the figures of doppel and rsync.
struct Figures {
    copy: (f64, f64),
    copy_bytes: (u64, u64),
    sync: (f64, f64),
    sync_bytes: (u64, u64),
    noop: (f64, f64),
    /// The no-op sync's own time, as its job's summary gives it (the rest of `noop.0` is
    /// the request, the job's start and its end being seen).
    noop_job: f64,
    noop_bytes: (u64, u64),
    /// Whether sshd is here (rsync over ssh is not measured yet either way).
    ssh: bool,
    peak: (f64, f64),
    /// Whether the links have their 1 ms of delay (netem), or only the rate (tbf).
    delayed: bool,
    /// The compressible tree's bytes, and its first copy (time, bytes on the wire) by
    /// doppel, rsync and rsync -z.
    text_bytes: u64,
    text: ((f64, u64), (f64, u64), (f64, u64)),
}

fn run(rate: &str, scale: f64, dir: &Path) -> Figures {
    let lab = Lab::new(&["cp", "a", "b"]);
    let mut delayed = true;
    for host in ["a", "b"] {
        delayed &= lab.shape(host, rate, Some("1ms"));
    }
    let cp_data = dir.join("cp");
    let cp_addr = lab.addr("cp");
    let mut c = lab.command("cp", doppel());
    c.arg("--data-dir")
        .arg(&cp_data)
        .args(["serve", "--no-runtime", "--max-jobs", "4"])
        .args(["--addr", &format!("{cp_addr}:3000")])
        .args(["--agents-addr", &format!("{cp_addr}:7443")])
        .env_remove("DOPPEL_DATABASE_URL");
    let _cp = Running::spawn(c, &dir.join("cp.log"));
    let client = reqwest::blocking::Client::new();
    let base = format!("http://{cp_addr}:3000");
    let deadline = Instant::now() + Duration::from_secs(60);
    while client.get(format!("{base}/healthz")).send().is_err() {
        assert!(Instant::now() < deadline, "the control plane did not start");
        std::thread::sleep(Duration::from_millis(100));
    }
    let token = Command::new(doppel())
        .arg("--data-dir")
        .arg(&cp_data)
        .args(["token", "create", "--user", "admin"])
        .output()
        .unwrap();
    let api = Api {
        base,
        token: String::from_utf8(token.stdout).unwrap().trim().to_string(),
        client,
    };
    let mut agents = Vec::new();
    for host in ["a", "b"] {
        let added = api.call(
            reqwest::Method::POST,
            "/servers",
            Some(json!({"name": host})),
        );
        let mut c = lab.command(host, doppel());
        c.arg("--data-dir")
            .arg(dir.join(host))
            .args(["agent", "--listen", &format!("{}:7700", lab.addr(host))])
            .args([
                "join",
                &format!("https://{cp_addr}:7443"),
                added["join_token"].as_str().unwrap(),
            ]);
        agents.push(Running::spawn(c, &dir.join(format!("{host}.log"))));
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let servers = api.call(reqwest::Method::GET, "/servers", None);
        let online = servers["servers"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|s| s["kind"] == "agent" && s["state"] == "online")
            .count();
        if online == 2 {
            break;
        }
        assert!(Instant::now() < deadline, "the agents did not come online");
        std::thread::sleep(Duration::from_millis(100));
    }

    // The reference tree, imported on this host's server, then copied onto a (not timed).
    let reference = dir.join("reference");
    let (_, paths) = tree::build_tree(&reference, scale);
    let project = api.find("/projects", "projects", "web-platform");
    let local = api.find("/servers", "servers", "local-a");
    let (a, b) = (
        api.find("/servers", "servers", "a"),
        api.find("/servers", "servers", "b"),
    );
    let imported = Command::new(doppel())
        .arg("--data-dir")
        .arg(&cp_data)
        .arg("import")
        .arg(&reference)
        .args([
            "--project",
            &project,
            "--server",
            &local,
            "--name",
            "reference",
        ])
        .output()
        .unwrap();
    assert!(
        imported.status.success(),
        "{}",
        String::from_utf8_lossy(&imported.stderr)
    );
    let reference_id = String::from_utf8(imported.stdout)
        .unwrap()
        .trim()
        .to_string();
    let copy = |source: &str, server: &str, name: &str| -> (String, Value) {
        let started = api.call(
            reqwest::Method::POST,
            &format!("/containers/{source}/copy"),
            Some(json!({"target_project_id": project, "target_server_id": server, "name": name})),
        );
        let summary = api.finished(&started["job"]);
        (
            started["container"]["id"].as_str().unwrap().to_string(),
            summary,
        )
    };
    let (on_a, _) = copy(&reference_id, &a, "on-a");
    let a_root = dir.join("a/storage/containers").join(&on_a);
    let veth = lab.veth_of("a");
    let pids: Vec<u32> = agents.iter().map(|r| r.0.id()).collect();

    // doppel: a -> b.
    let _ = Command::new("sync").status();
    let (w, t) = (wire_bytes(&veth), Instant::now());
    let (on_b, _) = copy(&on_a, &b, "on-b");
    let copy_doppel = (t.elapsed().as_secs_f64(), wire_bytes(&veth) - w);

    // rsync: a -> an rsync daemon on b.
    let module = dir.join("rsync-target");
    std::fs::create_dir_all(&module).unwrap();
    let conf = dir.join("rsyncd.conf");
    std::fs::write(
        &conf,
        format!(
            "uid = root\ngid = root\nuse chroot = no\n[m]\npath = {}\nread only = no\n",
            module.display()
        ),
    )
    .unwrap();
    let mut daemon = lab.command("b", "rsync");
    daemon
        .args(["--daemon", "--no-detach", "--port", "8730", "--config"])
        .arg(&conf);
    let _daemon = Running::spawn(daemon, &dir.join("rsyncd.log"));
    std::thread::sleep(Duration::from_millis(500));
    let target = format!("rsync://{}:8730/m/tree/", lab.addr("b"));
    // rsync from a's `from` to `to` (an rsync URL on b): its time and bytes on a's link.
    let rsync_from = |from: &Path, to: &str, extra: &[&str]| -> (f64, u64) {
        let _ = Command::new("sync").status();
        let (w, t) = (wire_bytes(&veth), Instant::now());
        let out = lab
            .command("a", "rsync")
            .args(["-a", "--stats"])
            .args(extra)
            .arg(format!("{}/", from.display()))
            .arg(to)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "rsync: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        (t.elapsed().as_secs_f64(), wire_bytes(&veth) - w)
    };
    let rsync = |extra: &[&str]| rsync_from(&a_root, &target, extra);
    let (copy_rsync_t, copy_rsync_b) = rsync(&[]);

    // The "1 %" change on a's tree; each syncs it.
    let on_a_paths: Vec<PathBuf> = paths
        .iter()
        .map(|p| a_root.join(p.strip_prefix(&reference).unwrap()))
        .collect();
    tree::change_tree(&a_root, &on_a_paths, scale);
    // A sync through the API, as a user starts one: its time until the job is seen done,
    // its bytes on the wire, and the job's own time (its summary's duration).
    let sync_job = |id: &str| -> (f64, u64, f64) {
        let _ = Command::new("sync").status();
        let (w, t) = (wire_bytes(&veth), Instant::now());
        let started = api.call(
            reqwest::Method::POST,
            &format!("/containers/{id}/sync"),
            None,
        );
        let summary = api.finished(&started["job"]);
        let job_s = summary["duration_ms"].as_f64().unwrap_or(f64::NAN) / 1000.0;
        (t.elapsed().as_secs_f64(), wire_bytes(&veth) - w, job_s)
    };
    let sync = |id: &str| -> (f64, u64) {
        let (t, b, _) = sync_job(id);
        (t, b)
    };
    let sync_doppel = sync(&on_b);
    let (sync_rsync_t, sync_rsync_b) = rsync(&["--delete", "--no-whole-file"]);
    let (noop_t, noop_b, noop_job) = sync_job(&on_b);
    let noop_doppel = (noop_t, noop_b);
    let (noop_rsync_t, noop_rsync_b) = rsync(&["--delete", "--no-whole-file"]);
    let peak = (peak_mb(pids[0]), peak_mb(pids[1]));

    // A tree that compresses (log-like text): doppel compresses what pays; rsync does not
    // unless asked (-z), so it runs both ways.
    let text = dir.join("text");
    let text_bytes = tree::build_text_tree(&text, scale);
    let imported = Command::new(doppel())
        .arg("--data-dir")
        .arg(&cp_data)
        .arg("import")
        .arg(&text)
        .args(["--project", &project, "--server", &local, "--name", "text"])
        .output()
        .unwrap();
    assert!(imported.status.success());
    let text_id = String::from_utf8(imported.stdout)
        .unwrap()
        .trim()
        .to_string();
    let (text_on_a, _) = copy(&text_id, &a, "text-on-a");
    let text_root = dir.join("a/storage/containers").join(&text_on_a);
    let _ = Command::new("sync").status();
    let (w, t) = (wire_bytes(&veth), Instant::now());
    copy(&text_on_a, &b, "text-on-b");
    let text_doppel = (t.elapsed().as_secs_f64(), wire_bytes(&veth) - w);
    let text_to = |dir: &str| format!("rsync://{}:8730/m/{dir}/", lab.addr("b"));
    let text_rsync = rsync_from(&text_root, &text_to("text"), &[]);
    let text_rsync_z = rsync_from(&text_root, &text_to("text-z"), &["-z"]);

    // rsync over ssh needs sshd, which this machine may not have (it is not installed).
    let ssh = Path::new("/usr/sbin/sshd").exists();
    Figures {
        copy: (copy_doppel.0, copy_rsync_t),
        copy_bytes: (copy_doppel.1, copy_rsync_b),
        sync: (sync_doppel.0, sync_rsync_t),
        sync_bytes: (sync_doppel.1, sync_rsync_b),
        noop: (noop_doppel.0, noop_rsync_t),
        noop_job,
        noop_bytes: (noop_doppel.1, noop_rsync_b),
        ssh,
        peak,
        delayed,
        text_bytes,
        text: (text_doppel, text_rsync, text_rsync_z),
    }
}

fn main() {
    let scale: f64 = std::env::var("BENCH_SCALE")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1.0);
    let rates: Vec<String> = std::env::var("BENCH_RATES")
        .unwrap_or_else(|_| "1gbit,100mbit".into())
        .split(',')
        .map(str::to_string)
        .collect();
    let base = std::env::var("BENCH_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/bench-remote"));
    println!("doppel between two hosts against rsync, BENCH_SCALE={scale}, links {rates:?} with 1 ms delay");
    for rate in &rates {
        let dir = base.join(rate);
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let f = run(rate, scale, &dir);
        let mb = |b: u64| b as f64 / 1e6;
        println!();
        if f.delayed {
            println!("link {rate}, 1 ms:");
        } else {
            println!("link {rate} (tbf; this kernel has no netem, so no added delay):");
        }
        println!(
            "  first copy: doppel {:.2} s, rsync {:.2} s, ratio {:.2}",
            f.copy.0,
            f.copy.1,
            f.copy.0 / f.copy.1
        );
        println!(
            "  first copy on the wire: doppel {:.1} MB, rsync {:.1} MB",
            mb(f.copy_bytes.0),
            mb(f.copy_bytes.1)
        );
        println!(
            "  sync after the 1 % change: doppel {:.2} s, rsync {:.2} s, ratio {:.2}",
            f.sync.0,
            f.sync.1,
            f.sync.0 / f.sync.1
        );
        println!(
            "  sync on the wire: doppel {:.2} MB, rsync {:.2} MB, ratio {:.2}",
            mb(f.sync_bytes.0),
            mb(f.sync_bytes.1),
            f.sync_bytes.0 as f64 / f.sync_bytes.1.max(1) as f64
        );
        println!(
            "  no-op sync: doppel {:.3} s (its job {:.3} s) and {:.1} KB on the wire; rsync {:.3} s and {:.1} KB",
            f.noop.0,
            f.noop_job,
            f.noop_bytes.0 as f64 / 1e3,
            f.noop.1,
            f.noop_bytes.1 as f64 / 1e3
        );
        println!(
            "  peak memory: agent a {:.0} MB, agent b {:.0} MB",
            f.peak.0, f.peak.1
        );
        let ((dt, db), (rt, rb), (zt, zb)) = f.text;
        println!(
            "  compressible tree ({:.0} MB of log-like text), first copy: doppel {dt:.2} s and {:.1} MB on the wire; rsync {rt:.2} s and {:.1} MB (ratio {:.2}); rsync -z {zt:.2} s and {:.1} MB (ratio {:.2})",
            mb(f.text_bytes),
            mb(db),
            mb(rb),
            dt / rt,
            mb(zb),
            dt / zt
        );
        if f.ssh {
            println!("  rsync over ssh: not measured yet");
        } else {
            println!("  rsync over ssh: no sshd here");
        }
    }
}
