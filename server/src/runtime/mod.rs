//! Running containers on this host: runc through OCI bundles, a shim per container
//! (`shim.rs`), network namespaces and bridges (`net.rs`), nftables inside each namespace
//! (`firewall.rs`). Host mechanics only: no database, no web types; the `lifecycle` layer
//! decides when, and records what happened.
//!
//! A container's bundle directory (`config.json`, the shim's log and exit record) is given
//! by the caller; runc's own state lives under `<data dir>/runc`, so two doppels on one
//! host (tests) never see each other's containers. Host-wide names (namespaces, bridges,
//! veth ends) carry a tag of the data dir for the same reason.

pub mod firewall;
pub mod net;
pub mod oci;
pub mod shim;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use app::model::FirewallRule;

pub use net::{Attachment, Ipv4Net};
pub use shim::Exit;

#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error("no container runtime here: {0}")]
    Unavailable(String),
    #[error("{0}")]
    Command(String),
    #[error("network: {0}")]
    Network(String),
    #[error("firewall: {0}")]
    Firewall(String),
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("the process did not start within {0} s")]
    StartTimeout(u64),
}

/// A program found on this host, in PATH or the system's sbin directories (where Debian
/// puts runc, ip and nft, and a non-login root shell may not look).
fn find(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/local/sbin", "/usr/sbin", "/sbin", "/usr/bin", "/bin"].map(PathBuf::from))
        .map(|d| d.join(program))
        .find(|p| p.is_file())
}

/// Whether `runc list` failed only because an entry of its state directory went away
/// between reading the directory and looking at the entry.
fn vanished_during_list(said: &str) -> bool {
    said.contains("msg=\"stat ") && said.contains("no such file or directory")
}

/// Runs a host tool; its output, or an error with what it said.
pub(crate) async fn command(
    program: &str,
    args: &[&str],
    stdin: Option<&str>,
) -> Result<String, RuntimeError> {
    use tokio::io::AsyncWriteExt;
    let path = find(program)
        .ok_or_else(|| RuntimeError::Unavailable(format!("{program} is not installed")))?;
    let mut child = tokio::process::Command::new(path)
        .args(args)
        .stdin(if stdin.is_some() {
            std::process::Stdio::piped()
        } else {
            std::process::Stdio::null()
        })
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()?;
    if let (Some(text), Some(mut pipe)) = (stdin, child.stdin.take()) {
        pipe.write_all(text.as_bytes()).await?;
    }
    let out = child.wait_with_output().await?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        let said = String::from_utf8_lossy(&out.stderr);
        Err(RuntimeError::Command(format!(
            "{program} {}: {}",
            args.join(" "),
            said.trim()
        )))
    }
}

/// What runc says of one container.
#[derive(Clone, Debug, serde::Deserialize)]
pub struct RuncState {
    pub id: String,
    pub pid: i64,
    /// `created`, `running`, `paused` or `stopped`.
    pub status: String,
}

impl RuncState {
    /// Whether the container has a process (made, running or paused).
    fn has_process(&self) -> bool {
        matches!(self.status.as_str(), "running" | "created" | "paused")
    }
}

/// Every container runc knows of in its state directory `state`, by id.
async fn list_at(state: &Path) -> Result<HashMap<String, RuncState>, RuntimeError> {
    let state = state.display().to_string();
    // runc (1.1) reads its state directory, then stats each entry and gives up when one
    // is gone: a container deleted between the two (a process that could not start,
    // whose `runc run` removes it) fails a list of everything else. It is retried.
    let mut tries = 0;
    let out = loop {
        match command(
            "runc",
            &["--root", &state, "list", "--format", "json"],
            None,
        )
        .await
        {
            Err(RuntimeError::Command(said))
                if tries < LIST_RETRIES && vanished_during_list(&said) =>
            {
                tries += 1;
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            other => break other?,
        }
    };
    // runc prints `null` when there are none.
    let states: Option<Vec<RuncState>> = serde_json::from_str(out.trim())
        .map_err(|e| RuntimeError::Command(format!("runc list: {e}")))?;
    Ok(states
        .unwrap_or_default()
        .into_iter()
        .map(|s| (s.id.clone(), s))
        .collect())
}

/// The containers of the doppel whose data dir this is that have a process now, read
/// without it (containers outlive doppel): what must not be changed under them while
/// doppel is stopped. Empty where runc is not installed (nothing runs without it).
pub async fn with_processes(
    data_dir: &Path,
) -> Result<std::collections::HashSet<String>, RuntimeError> {
    let state = data_dir.join("runc");
    if !state.exists() || find("runc").is_none() {
        return Ok(Default::default());
    }
    Ok(list_at(&state)
        .await?
        .into_values()
        .filter(RuncState::has_process)
        .map(|s| s.id)
        .collect())
}

/// What is true of a container's process now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Observed {
    Running {
        pid: i64,
    },
    Exited(Exit),
    /// No process and no record of its end (e.g. the host rebooted).
    Gone,
}

/// What starting a container needs.
pub struct RunSpec<'a> {
    pub id: &'a str,
    /// Where `config.json`, the log and the exit record go (not inside the tree).
    pub bundle: &'a Path,
    pub rootfs: &'a Path,
    pub hostname: &'a str,
    pub process: oci::ProcessSpec<'a>,
    pub attachments: &'a [Attachment],
    pub firewall: &'a [FirewallRule],
}

/// The container runtime of this host, or why there is none.
pub struct Runtime {
    /// `Err`: why containers cannot run here (said at start, in /healthz and the console).
    available: Result<(), String>,
    /// runc's state directory (`--root`).
    state: PathBuf,
    /// The binary that runs `doppel shim`.
    shim_exe: PathBuf,
    /// Four hex digits of the data dir, in every host-wide name.
    tag: String,
    /// The network containers' subnets are taken from.
    pub network: Ipv4Net,
    /// Whether this doppel's host table (`net::guard_host`) is in place.
    host_guarded: std::sync::atomic::AtomicBool,
}

/// How long a started process has to show up in runc's state.
const START_TIMEOUT: Duration = Duration::from_secs(15);
/// How often `runc list` is asked again when a container vanished while it listed.
const LIST_RETRIES: u32 = 20;
/// How long a killed process has to end before runc deletes it by force.
const KILL_WAIT: Duration = Duration::from_secs(5);

impl Runtime {
    /// Looks for what running containers needs: root, runc, ip and nft. `disabled` is the
    /// operator's choice (`--no-runtime`).
    pub async fn detect(
        data_dir: &Path,
        shim_exe: PathBuf,
        network: Ipv4Net,
        disabled: bool,
    ) -> Runtime {
        let data_dir = std::fs::canonicalize(data_dir).unwrap_or_else(|_| data_dir.to_path_buf());
        let tag = tag_of(&data_dir);
        let available = if disabled {
            Err("disabled with --no-runtime".to_string())
        } else {
            Self::check().await
        };
        Runtime {
            available,
            state: data_dir.join("runc"),
            shim_exe,
            tag,
            network,
            host_guarded: Default::default(),
        }
    }

    /// A runtime that runs nothing, saying `why`.
    pub fn none(why: &str) -> Runtime {
        Runtime {
            available: Err(why.to_string()),
            state: PathBuf::new(),
            shim_exe: PathBuf::new(),
            tag: String::new(),
            network: Ipv4Net::parse("10.88.0.0/16").expect("a valid network"),
            host_guarded: Default::default(),
        }
    }

    async fn check() -> Result<(), String> {
        // SAFETY: geteuid has no preconditions and cannot fail.
        if unsafe { libc::geteuid() } != 0 {
            return Err(
                "doppel is not running as root (runc and network namespaces need it)".into(),
            );
        }
        for (program, arg, package) in [
            ("runc", "--version", "runc"),
            ("ip", "-V", "iproute2"),
            ("nft", "--version", "nftables"),
        ] {
            command(program, &[arg], None)
                .await
                .map_err(|e| format!("{e} (install the Debian package {package})"))?;
        }
        Ok(())
    }

    /// `None` when containers can run here, else why not.
    pub fn unavailable(&self) -> Option<&str> {
        self.available.as_ref().err().map(String::as_str)
    }

    fn ready(&self) -> Result<(), RuntimeError> {
        self.available.clone().map_err(RuntimeError::Unavailable)
    }

    /// The network namespace of a container.
    pub fn netns(&self, id: &str) -> String {
        format!("doppel-{}-{id}", self.tag)
    }

    /// The bridge of the `n`th network (at most 15 bytes, as interface names are).
    pub fn bridge(&self, n: u32) -> String {
        format!("{}n{n}", self.bridge_prefix())
    }

    /// What every bridge of this doppel's name starts with.
    fn bridge_prefix(&self) -> String {
        format!("dpb{}", self.tag)
    }

    /// The host's end of a container's `n`th interface (n < 8): 15 bytes, 28 bits of the
    /// container's id (two containers sharing them: about one chance in 500 at 1,000
    /// containers of one doppel).
    pub fn host_end(&self, id: &str, n: usize) -> String {
        let h = blake3::hash(id.as_bytes()).to_hex();
        format!("dpv{}{}{n}", self.tag, &h[..7])
    }

    fn host_ends(&self, id: &str, count: usize) -> Vec<String> {
        (0..count).map(|n| self.host_end(id, n)).collect()
    }

    /// A container interface's MAC address: locally administered, from the container's id
    /// and the interface (so a copy, a new id, always has new ones).
    pub fn mac(id: &str, iface: &str) -> String {
        let h = blake3::hash(format!("{id}/{iface}").as_bytes());
        let b = h.as_bytes();
        format!(
            "02:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            b[0], b[1], b[2], b[3], b[4]
        )
    }

    async fn runc(&self, args: &[&str]) -> Result<String, RuntimeError> {
        let state = self.state.display().to_string();
        let mut all = vec!["--root", state.as_str()];
        all.extend_from_slice(args);
        command("runc", &all, None).await
    }

    /// Every container runc knows of under our state directory.
    pub async fn list(&self) -> Result<HashMap<String, RuncState>, RuntimeError> {
        self.ready()?;
        if !self.state.exists() {
            return Ok(HashMap::new());
        }
        list_at(&self.state).await
    }

    /// The truth about one container, from runc's list (`listed`) and its exit record.
    pub fn observe(listed: &HashMap<String, RuncState>, id: &str, bundle: &Path) -> Observed {
        match listed.get(id) {
            Some(s) if s.has_process() => Observed::Running { pid: s.pid },
            _ => match shim::read_exit(bundle) {
                Some(exit) => Observed::Exited(exit),
                None => Observed::Gone,
            },
        }
    }

    /// Starts a container: its network, its firewall, its bundle, then its shim; returns
    /// once runc runs the process (or it has already ended).
    pub async fn start(&self, spec: &RunSpec<'_>) -> Result<Observed, RuntimeError> {
        self.ready()?;
        // Only root reads a bundle (its config.json holds the environment) or enters the
        // trees (a tenant's setuid file is no way in for the host's other users).
        use std::os::unix::fs::PermissionsExt;
        std::fs::create_dir_all(spec.bundle)?;
        for dir in [spec.bundle.parent(), spec.rootfs.parent()]
            .into_iter()
            .flatten()
        {
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
        }
        std::fs::set_permissions(spec.bundle, std::fs::Permissions::from_mode(0o700))?;
        std::fs::create_dir_all(&self.state)?;
        // A container left by runc (it deletes those it ran to their end; a killed runc may not).
        if self.list().await?.contains_key(spec.id) {
            self.runc(&["delete", "--force", spec.id]).await?;
        }
        let _ = std::fs::remove_file(spec.bundle.join(shim::EXIT));
        if !self
            .host_guarded
            .swap(true, std::sync::atomic::Ordering::SeqCst)
        {
            if let Err(e) = net::guard_host(&self.tag, &self.bridge_prefix()).await {
                self.host_guarded
                    .store(false, std::sync::atomic::Ordering::SeqCst);
                return Err(e);
            }
        }
        let netns = self.netns(spec.id);
        net::setup(&netns, spec.attachments, &self.bridge_prefix()).await?;
        let result = self.launch(spec, &netns).await;
        if !matches!(result, Ok(Observed::Running { .. })) {
            net::teardown(&netns, &self.host_ends(spec.id, spec.attachments.len())).await;
        }
        result
    }

    async fn launch(&self, spec: &RunSpec<'_>, netns: &str) -> Result<Observed, RuntimeError> {
        firewall::apply(netns, spec.firewall).await?;
        let config = oci::spec(
            spec.rootfs,
            spec.hostname,
            &spec.process,
            &net::netns_path(netns),
        );
        let json = serde_json::to_vec_pretty(&config).map_err(std::io::Error::other)?;
        std::fs::write(spec.bundle.join("config.json"), json)?;
        let mut shim = tokio::process::Command::new(&self.shim_exe);
        shim.arg("shim")
            .arg("--runc")
            .arg(find("runc").unwrap_or_else(|| "runc".into()))
            .arg("--state")
            .arg(&self.state)
            .arg("--bundle")
            .arg(spec.bundle)
            .arg("--id")
            .arg(spec.id)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null());
        // SAFETY: setsid is async-signal-safe; the shim leaves doppel's session, so a signal
        // to doppel's terminal or process group does not reach the containers.
        unsafe {
            shim.pre_exec(|| {
                libc::setsid();
                Ok(())
            });
        }
        let mut child = shim.spawn()?;
        // Reaped whenever it ends (if doppel is still here then).
        tokio::spawn(async move {
            let _ = child.wait().await;
        });
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            let listed = self.list().await?;
            match Self::observe(&listed, spec.id, spec.bundle) {
                Observed::Running { pid } if listed[spec.id].status == "running" => {
                    return Ok(Observed::Running { pid })
                }
                Observed::Exited(exit) => return Ok(Observed::Exited(exit)),
                _ if Instant::now() > deadline => {
                    let _ = self.runc(&["delete", "--force", spec.id]).await;
                    return Err(RuntimeError::StartTimeout(START_TIMEOUT.as_secs()));
                }
                _ => tokio::time::sleep(Duration::from_millis(25)).await,
            }
        }
    }

    /// Stops a container: SIGTERM, `grace` to end, then SIGKILL; removes its network.
    /// Returns how the process ended (`None`: it left no record).
    pub async fn stop(
        &self,
        id: &str,
        bundle: &Path,
        interfaces: usize,
        grace: Duration,
    ) -> Result<Option<Exit>, RuntimeError> {
        self.ready()?;
        let mut exit = shim::read_exit(bundle);
        let listed = self.list().await?;
        if let (None, Some(state)) = (exit, listed.get(id)) {
            let _ = self.runc(&["kill", id, "TERM"]).await;
            // A container's first process is its pid namespace's init: the kernel drops a
            // signal it has no handler for. Without one for SIGTERM when it was sent (a
            // shell running a server, say), the grace would only be waited out.
            let dropped = !catches_sigterm(state.pid);
            if dropped {
                tracing::info!(
                    container = id,
                    "its process does not handle SIGTERM: killed at once"
                );
            }
            exit = match dropped {
                true => None,
                false => wait_exit(bundle, grace, state.pid).await,
            };
            if exit.is_none() && alive(state.pid) {
                let _ = self.runc(&["kill", id, "KILL"]).await;
                exit = wait_exit(bundle, KILL_WAIT, state.pid).await;
            }
            if exit.is_none() {
                let _ = self.runc(&["delete", "--force", id]).await;
                exit = wait_exit(bundle, KILL_WAIT, state.pid).await;
            }
            // (A process in uninterruptible sleep outlives SIGKILL until its I/O ends.) It
            // still runs: not stopped, and its network stays.
            if exit.is_none() && alive(state.pid) {
                return Err(RuntimeError::Command(format!(
                    "its process ({}) still runs after SIGKILL",
                    state.pid
                )));
            }
        }
        net::teardown(&self.netns(id), &self.host_ends(id, interfaces)).await;
        Ok(exit)
    }

    /// Loads a running container's firewall rules again (after they changed).
    pub async fn apply_firewall(
        &self,
        id: &str,
        rules: &[FirewallRule],
    ) -> Result<(), RuntimeError> {
        self.ready()?;
        firewall::apply(&self.netns(id), rules).await
    }
}

/// Whether process `pid` has a handler for SIGTERM (its `SigCgt` mask in
/// `/proc/<pid>/status`). Unknown (gone, unreadable) counts as yes: then the grace is waited.
fn catches_sigterm(pid: i64) -> bool {
    let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) else {
        return true;
    };
    status
        .lines()
        .find_map(|l| l.strip_prefix("SigCgt:"))
        .and_then(|mask| u64::from_str_radix(mask.trim(), 16).ok())
        // Signal n is bit n-1; SIGTERM is 15.
        .is_none_or(|mask| mask & (1 << 14) != 0)
}

/// Waits up to `within` for the shim's record of how the container's process (`pid`)
/// ended. When the process is gone and no shim of its bundle is left to write one (the
/// shim was killed from outside), there is nothing to wait for: the end is unknown.
async fn wait_exit(bundle: &Path, within: Duration, pid: i64) -> Option<Exit> {
    let deadline = Instant::now() + within;
    loop {
        if let Some(exit) = shim::read_exit(bundle) {
            return Some(exit);
        }
        // (The shim writes its record just after its process ends: read it once more.)
        if !alive(pid) && !process_mentions(&bundle.display().to_string()) {
            return shim::read_exit(bundle);
        }
        if Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Whether process `pid` still runs (not gone, not a zombie waiting to be reaped).
fn alive(pid: i64) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state follows the command in parentheses, which may itself hold any bytes.
        Ok(stat) => stat
            .rsplit_once(')')
            .is_none_or(|(_, rest)| !rest.trim_start().starts_with(['Z', 'X'])),
        Err(_) => false,
    }
}

/// Whether a process of this host has `needle` among its arguments (a shim's `--state`,
/// runc's `--root`).
fn process_mentions(needle: &str) -> bool {
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return false;
    };
    procs.flatten().any(|p| {
        std::fs::read(p.path().join("cmdline"))
            .map(|c| c.split(|b| *b == 0).any(|arg| arg == needle.as_bytes()))
            .unwrap_or(false)
    })
}

/// The tag of a data dir in host-wide names.
fn tag_of(data_dir: &Path) -> String {
    blake3::hash(data_dir.as_os_str().as_encoded_bytes()).to_hex()[..4].to_string()
}

/// Removes every container, network namespace, veth and bridge of the doppel whose data
/// dir this is: what a test ends with, whether it passed or not. doppel itself never does
/// this (its containers outlive it).
pub fn purge(data_dir: &Path) {
    use std::process::Command;
    let data_dir = std::fs::canonicalize(data_dir).unwrap_or_else(|_| data_dir.to_path_buf());
    let tag = tag_of(&data_dir);
    let run = |program: &str, args: &[&str]| -> String {
        find(program)
            .and_then(|p| Command::new(p).args(args).output().ok())
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default()
    };
    let state = data_dir.join("runc").display().to_string();
    // A shim started just now may not have its container in runc's state yet: kill what
    // runc lists, and look again while any shim or runc of this data dir still runs.
    for _ in 0..100 {
        if Path::new(&state).exists() {
            for id in run("runc", &["--root", &state, "list", "-q"]).lines() {
                run("runc", &["--root", &state, "kill", id, "KILL"]);
                run("runc", &["--root", &state, "delete", "--force", id]);
            }
        }
        if !process_mentions(&state) {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    run("nft", &["delete", "table", "inet", &net::host_table(&tag)]);
    let ns_prefix = format!("doppel-{tag}-");
    for line in run("ip", &["netns", "list"]).lines() {
        let name = line.split_whitespace().next().unwrap_or("");
        if name.starts_with(&ns_prefix) {
            run("ip", &["netns", "delete", name]);
        }
    }
    for line in run("ip", &["-o", "link", "show"]).lines() {
        // "12: dpvab12cd34ef0@if11: <...>"
        let name = line.split(':').nth(1).unwrap_or("").trim();
        let name = name.split('@').next().unwrap_or("");
        if name.starts_with(&format!("dpv{tag}")) || name.starts_with(&format!("dpb{tag}")) {
            run("ip", &["link", "delete", name]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A container runc deletes while another caller lists (what a process that cannot
    /// start does) never fails that list.
    #[tokio::test]
    async fn a_list_survives_containers_vanishing_while_it_reads() {
        let dir = tempfile::tempdir().unwrap();
        let runtime = Runtime::detect(
            dir.path(),
            PathBuf::from("/nonexistent"),
            Ipv4Net::parse("10.250.0.0/16").unwrap(),
            false,
        )
        .await;
        if let Some(why) = runtime.unavailable() {
            panic!("this test needs runc here: {why}");
        }
        std::fs::create_dir_all(&runtime.state).unwrap();
        // Entries deleted one after another while lists run, as containers that end are.
        let entries: Vec<PathBuf> = (0..300)
            .map(|n| runtime.state.join(format!("gone{n}")))
            .collect();
        for entry in &entries {
            std::fs::create_dir(entry).unwrap();
        }
        let churn = std::thread::spawn(move || {
            for entry in entries {
                std::fs::remove_dir(entry).unwrap();
                std::thread::sleep(Duration::from_millis(1));
            }
        });
        let mut failed = None;
        while !churn.is_finished() {
            if let Err(e) = runtime.list().await {
                failed = Some(e.to_string());
                break;
            }
        }
        churn.join().unwrap();
        assert_eq!(failed, None);
    }
}
