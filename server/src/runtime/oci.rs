//! The OCI runtime spec's `config.json`, as typed structures: only the fields doppel sets,
//! named as the spec names them (runtime-spec 1.0). runc reads what is written here.

use std::path::Path;

use serde::Serialize;

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Spec {
    pub oci_version: &'static str,
    pub process: Process,
    pub root: Root,
    pub hostname: String,
    pub mounts: Vec<Mount>,
    pub linux: Linux,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Process {
    /// Output goes to the shim's pipe, not a terminal.
    pub terminal: bool,
    pub user: User,
    pub args: Vec<String>,
    pub env: Vec<String>,
    pub cwd: String,
    pub capabilities: Capabilities,
    pub rlimits: Vec<Rlimit>,
    pub no_new_privileges: bool,
}

#[derive(Serialize)]
pub struct User {
    pub uid: u32,
    pub gid: u32,
}

#[derive(Serialize)]
pub struct Capabilities {
    pub bounding: Vec<&'static str>,
    pub effective: Vec<&'static str>,
    pub permitted: Vec<&'static str>,
    pub ambient: Vec<&'static str>,
}

#[derive(Serialize)]
pub struct Rlimit {
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub hard: u64,
    pub soft: u64,
}

#[derive(Serialize)]
pub struct Root {
    pub path: String,
    pub readonly: bool,
}

#[derive(Serialize)]
pub struct Mount {
    pub destination: &'static str,
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub source: &'static str,
    pub options: Vec<&'static str>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Linux {
    pub namespaces: Vec<Namespace>,
    pub resources: Resources,
    pub masked_paths: Vec<&'static str>,
    pub readonly_paths: Vec<&'static str>,
}

#[derive(Serialize)]
pub struct Resources {
    pub pids: Pids,
}

#[derive(Serialize)]
pub struct Pids {
    pub limit: i64,
}

/// At most this many processes in one container: a fork bomb stays inside its cgroup.
pub const PIDS_LIMIT: i64 = 4096;

#[derive(Serialize)]
pub struct Namespace {
    #[serde(rename = "type")]
    pub kind: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
}

/// What a container's process is: its argv, environment and working directory.
pub struct ProcessSpec<'a> {
    pub args: &'a [String],
    pub env: &'a [String],
    pub cwd: &'a str,
}

/// The capabilities a container's root keeps: those of runc's default spec (and Docker's
/// smaller set would break busybox's httpd, which binds port 80 and changes user).
const CAPS: &[&str] = &[
    "CAP_AUDIT_WRITE",
    "CAP_KILL",
    "CAP_NET_BIND_SERVICE",
    "CAP_CHOWN",
    "CAP_SETUID",
    "CAP_SETGID",
    "CAP_DAC_OVERRIDE",
    "CAP_FOWNER",
];

/// The spec of a container whose root is `rootfs`, in the network namespace at `netns`
/// (prepared by doppel) and new namespaces of every other kind.
pub fn spec(rootfs: &Path, hostname: &str, process: &ProcessSpec<'_>, netns: &Path) -> Spec {
    let caps = CAPS.to_vec();
    let mut env = process.env.to_vec();
    if !env.iter().any(|e| e.starts_with("PATH=")) {
        env.insert(
            0,
            "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into(),
        );
    }
    let ns = |kind| Namespace { kind, path: None };
    Spec {
        oci_version: "1.0.2",
        process: Process {
            terminal: false,
            user: User { uid: 0, gid: 0 },
            args: process.args.to_vec(),
            env,
            cwd: process.cwd.to_string(),
            capabilities: Capabilities {
                bounding: caps.clone(),
                effective: caps.clone(),
                permitted: caps.clone(),
                ambient: caps,
            },
            rlimits: vec![Rlimit {
                kind: "RLIMIT_NOFILE",
                hard: 1024,
                soft: 1024,
            }],
            no_new_privileges: true,
        },
        root: Root {
            path: rootfs.display().to_string(),
            readonly: false,
        },
        hostname: hostname.to_string(),
        mounts: vec![
            Mount {
                destination: "/proc",
                kind: "proc",
                source: "proc",
                options: vec![],
            },
            Mount {
                destination: "/dev",
                kind: "tmpfs",
                source: "tmpfs",
                options: vec!["nosuid", "strictatime", "mode=755", "size=65536k"],
            },
            Mount {
                destination: "/dev/pts",
                kind: "devpts",
                source: "devpts",
                options: vec![
                    "nosuid",
                    "noexec",
                    "newinstance",
                    "ptmxmode=0666",
                    "mode=0620",
                ],
            },
            Mount {
                destination: "/dev/shm",
                kind: "tmpfs",
                source: "shm",
                options: vec!["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"],
            },
            Mount {
                destination: "/sys",
                kind: "sysfs",
                source: "sysfs",
                options: vec!["nosuid", "noexec", "nodev", "ro"],
            },
        ],
        linux: Linux {
            namespaces: vec![
                ns("pid"),
                Namespace {
                    kind: "network",
                    path: Some(netns.display().to_string()),
                },
                ns("ipc"),
                ns("uts"),
                ns("mount"),
            ],
            resources: Resources {
                pids: Pids { limit: PIDS_LIMIT },
            },
            masked_paths: vec![
                "/proc/acpi",
                "/proc/asound",
                "/proc/kcore",
                "/proc/keys",
                "/proc/latency_stats",
                "/proc/timer_list",
                "/proc/timer_stats",
                "/proc/sched_debug",
                "/sys/firmware",
                "/proc/scsi",
            ],
            readonly_paths: vec![
                "/proc/bus",
                "/proc/fs",
                "/proc/irq",
                "/proc/sys",
                "/proc/sysrq-trigger",
            ],
        },
    }
}
