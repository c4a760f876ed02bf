//! Demo data for a first start, so the console is alive at once: two projects, three
//! servers, several containers with real, deterministic trees, a copy and snapshots.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::Path;

use app::model::{ContainerCommand, FirewallRule, NetworkRule, Role};

use crate::auth;
use crate::config::DataConfig;
use crate::rng::Rng;
use crate::runtime::Ipv4Net;
use crate::service::inventory::{self, InventoryError, NewContainer};
use crate::store::Db;

fn write(root: &Path, rel: &str, content: &[u8], mode: u32) -> std::io::Result<()> {
    let path = root.join(rel);
    if let Some(parent) = path.parent() {
        fs::create_dir_all(parent)?;
    }
    fs::File::create(&path)?.write_all(content)?;
    fs::set_permissions(&path, fs::Permissions::from_mode(mode))
}

fn random_file(root: &Path, rel: &str, rng: &mut Rng, len: usize) -> std::io::Result<()> {
    let mut buf = vec![0u8; len];
    rng.fill(&mut buf);
    write(root, rel, &buf, 0o644)
}

/// A varied tree of about `mb` MiB: config, scripts, a private key, many small files,
/// a few large ones, symlinks (relative and absolute) and a hard link.
pub fn demo_tree(root: &Path, seed: u64, app: &str, mb: usize) -> std::io::Result<()> {
    let mut rng = Rng(seed | 1);
    fs::create_dir_all(root)?;
    write(root, "etc/hostname", format!("{app}\n").as_bytes(), 0o644)?;
    write(
        root,
        &format!("etc/{app}/config.toml"),
        format!("[server]\nname = \"{app}\"\nport = 8080\nworkers = 4\n").as_bytes(),
        0o644,
    )?;
    write(
        root,
        &format!("etc/{app}/secret.key"),
        b"-----BEGIN DEMO KEY-----\nnot-a-real-key\n-----END DEMO KEY-----\n",
        0o600,
    )?;
    write(
        root,
        "usr/local/bin/start.sh",
        format!("#!/bin/sh\nexec /srv/{app}/current/bin/{app} --config /etc/{app}/config.toml\n")
            .as_bytes(),
        0o755,
    )?;
    for release in ["v1", "v2"] {
        for i in 0..40 {
            let len = 512 + (rng.next_u64() % 16_384) as usize;
            random_file(
                root,
                &format!("srv/{app}/releases/{release}/assets/asset-{i:03}.bin"),
                &mut rng,
                len,
            )?;
        }
        write(
            root,
            &format!("srv/{app}/releases/{release}/bin/{app}"),
            format!("#!/bin/sh\necho {app} {release}\n").as_bytes(),
            0o755,
        )?;
    }
    symlink("releases/v2", root.join(format!("srv/{app}/current")))?;
    symlink("/etc/hostname", root.join("etc/hostname.link"))?;
    for day in 1..=14 {
        let lines: String = (0..200)
            .map(|i| {
                format!(
                    "2026-11-{day:02}T{:02}:00:00Z {app} request {i} ok {}\n",
                    i % 24,
                    rng.next_u64() % 1000
                )
            })
            .collect();
        write(
            root,
            &format!("var/log/{app}/access-{day:02}.log"),
            lines.as_bytes(),
            0o640,
        )?;
    }
    // Large files make up the bulk, so copy progress has something to show.
    let per_file = 1024 * 1024;
    for i in 0..mb.saturating_sub(1) {
        random_file(
            root,
            &format!("var/lib/{app}/data-{i:02}.db"),
            &mut rng,
            per_file,
        )?;
    }
    fs::hard_link(
        root.join(format!("etc/{app}/config.toml")),
        root.join(format!("etc/{app}/config.toml.bak")),
    )?;
    fs::create_dir_all(root.join("tmp"))?;
    fs::set_permissions(root.join("tmp"), fs::Permissions::from_mode(0o1777))?;
    rootfs(root, app, &mut rng)
}

/// Where Debian's busybox-static puts its binary.
const BUSYBOX: [&str; 2] = ["/bin/busybox", "/usr/bin/busybox"];
/// The busybox applets a demo container has as commands (not Debian's static wget: it
/// crashes on its first connection).
const APPLETS: [&str; 16] = [
    "sh", "httpd", "hostname", "cat", "ls", "echo", "sleep", "ps", "nc", "env", "date", "ip",
    "ifconfig", "vi", "grep", "kill",
];

/// The command of a demo container: busybox's httpd serves `/www` on port 80; the shell
/// before it ends on SIGTERM (a process 1 has no default signal handlers).
pub fn demo_command() -> ContainerCommand {
    ContainerCommand {
        args: vec![
            "/bin/sh".into(),
            "-c".into(),
            "trap 'echo stopping; exit 0' TERM; echo \"serving /www on port 80 as $(hostname)\"; \
             httpd -f -vv -p 80 -h /www & wait"
                .into(),
        ],
        env: vec!["LANG=C.UTF-8".into()],
        cwd: "/".into(),
    }
}

/// Makes a demo tree a minimal root filesystem that runs: Debian's static busybox (when
/// installed; without it the container cannot start, and says so), the directories a
/// runtime mounts over, `/etc` files, an SSH host key and root's `authorized_keys` (which
/// a copy must not inherit), and a web page whose CGI script tells the host name.
fn rootfs(root: &Path, app: &str, rng: &mut Rng) -> std::io::Result<()> {
    for dir in [
        "bin",
        "proc",
        "sys",
        "dev",
        "root/.ssh",
        "www/cgi-bin",
        "etc/ssh",
    ] {
        fs::create_dir_all(root.join(dir))?;
    }
    if let Some(busybox) = BUSYBOX.iter().map(Path::new).find(|p| p.is_file()) {
        fs::copy(busybox, root.join("bin/busybox"))?;
        fs::set_permissions(root.join("bin/busybox"), fs::Permissions::from_mode(0o755))?;
        for applet in APPLETS {
            symlink("busybox", root.join("bin").join(applet))?;
        }
    }
    write(
        root,
        "etc/passwd",
        b"root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n",
        0o644,
    )?;
    write(root, "etc/group", b"root:x:0:\nnogroup:x:65534:\n", 0o644)?;
    let mut id = [0u8; 16];
    rng.fill(&mut id);
    write(
        root,
        "etc/machine-id",
        format!("{}\n", hex::encode(id)).as_bytes(),
        0o444,
    )?;
    let mut seed = [0u8; 32];
    rng.fill(&mut seed);
    let key = ssh_key::PrivateKey::from(ssh_key::private::Ed25519Keypair::from_seed(&seed));
    let private = key
        .to_openssh(ssh_key::LineEnding::LF)
        .map_err(std::io::Error::other)?;
    let public = key
        .public_key()
        .to_openssh()
        .map_err(std::io::Error::other)?;
    write(
        root,
        "etc/ssh/ssh_host_ed25519_key",
        private.as_bytes(),
        0o600,
    )?;
    write(
        root,
        "etc/ssh/ssh_host_ed25519_key.pub",
        format!("{public} root@{app}\n").as_bytes(),
        0o644,
    )?;
    write(
        root,
        "root/.ssh/authorized_keys",
        format!("{public} admin-of-{app}\n").as_bytes(),
        0o600,
    )?;
    // The page is `content.html` (what a user edits); `cgi-bin/index.cgi` (busybox httpd
    // runs it for `/` when there is no index.html) wraps it with the host name, in the
    // page and in an `X-Hostname` header: a copy shows the same content under its own name.
    write(
        root,
        "www/content.html",
        format!(
            "<h1>{app}</h1>\n<p>This page is served by busybox httpd from the container's own \
             root.</p>\n"
        )
        .as_bytes(),
        0o644,
    )?;
    write(
        root,
        "www/cgi-bin/index.cgi",
        b"#!/bin/sh\nhost=$(hostname)\necho 'Content-Type: text/html; charset=utf-8'\n\
          echo \"X-Hostname: $host\"\necho\n\
          echo \"<!doctype html><html><head><meta charset=utf-8><title>$host</title></head><body>\"\n\
          echo \"<p class=host>Served by <b>$host</b></p>\"\ncat /www/content.html\n\
          echo '</body></html>'\n",
        0o755,
    )?;
    write(
        root,
        "www/cgi-bin/host",
        b"#!/bin/sh\necho 'Content-Type: text/plain'\necho\nhostname\n",
        0o755,
    )
}

/// web-app's rules: its page (port 80) and SSH from private addresses (the host reaches
/// containers from its bridges' addresses), nothing else in; a static address on a
/// network of its own, taken from the container network so it fits any host.
fn rules_web(pool: Ipv4Net) -> (Vec<FirewallRule>, Vec<NetworkRule>) {
    let frontend = pool
        .subnet(200, 24.max(pool.prefix))
        .or_else(|| pool.subnet(0, 24.max(pool.prefix)))
        .unwrap_or(pool);
    let address = frontend.host(10).unwrap_or(frontend.network());
    let rule = |direction: &str, protocol: &str, port: Option<&str>, cidr: &str, action: &str| {
        FirewallRule {
            direction: direction.into(),
            protocol: protocol.into(),
            port: port.map(Into::into),
            cidr: cidr.into(),
            action: action.into(),
        }
    };
    (
        vec![
            rule("ingress", "tcp", Some("80"), "10.0.0.0/8", "allow"),
            rule("ingress", "tcp", Some("22"), "10.0.0.0/8", "allow"),
            rule("ingress", "any", None, "0.0.0.0/0", "deny"),
        ],
        vec![NetworkRule {
            interface: "eth0".into(),
            network: "web-frontend".into(),
            ipv4: Some(format!("{address}/{}", frontend.prefix)),
            mtu: Some(1450),
        }],
    )
}

/// Seeds the demo data if the database has no projects yet: `None` if it did not, else
/// the containers to start (all but edge-proxy, which shows a stopped container).
pub async fn seed_if_empty(
    db: &Db,
    data: &DataConfig,
    pool: Ipv4Net,
) -> Result<Option<Vec<String>>, InventoryError> {
    if !db.projects().await?.is_empty() {
        return Ok(None);
    }
    let web = inventory::create_project(db, "web-platform", "Customer-facing web services").await?;
    let data_proj =
        inventory::create_project(db, "data-pipeline", "Batch jobs and databases").await?;
    let a = inventory::create_server(db, data, "local-a", "Embedded server A (this host)").await?;
    let b = inventory::create_server(db, data, "local-b", "Embedded server B (this host)").await?;
    inventory::create_server(db, data, "local-c", "Embedded server C (this host)").await?;

    // A member who sees only the web platform, to show (and test) what membership limits.
    // No password: `doppel user set-password alice` enables the login.
    let alice = match auth::create_user(db, "alice", None, false).await {
        Ok(user) => Some(user),
        Err(auth::AuthError::UserExists(_)) => auth::find_user(db, "alice").await?,
        Err(e) => {
            return Err(InventoryError::Io {
                path: "users".into(),
                source: std::io::Error::other(e.to_string()),
            })
        }
    };
    if let Some(alice) = alice {
        inventory::add_member(db, &web, &alice.id, Role::Operator).await?;
    }

    let scratch = tempfile_dir(data)?;
    let make = |name: &str, seed: u64, mb: usize| -> Result<std::path::PathBuf, InventoryError> {
        let dir = scratch.join(name);
        demo_tree(&dir, seed, name, mb).map_err(|source| InventoryError::Io {
            path: dir.clone(),
            source,
        })?;
        Ok(dir)
    };
    let (fw, net) = rules_web(pool);
    let web_tree = make("web-app", 1, 3)?;
    // The key its tree lets log in as root (a real key, as the API would take it).
    let web_key = fs::read_to_string(web_tree.join("root/.ssh/authorized_keys"))
        .ok()
        .map(|k| k.trim().to_string());
    let web_app = inventory::import_container(
        db,
        NewContainer {
            project_id: web.clone(),
            server_id: a.clone(),
            name: "web-app".into(),
            ssh_public_key: web_key,
            firewall_rules: fw,
            network_rules: net,
            command: demo_command(),
            ..Default::default()
        },
        &web_tree,
    )
    .await?;
    inventory::create_snapshot(db, &web_app, "before-upgrade").await?;
    let web_root = {
        let root = db
            .server_storage_root(&a)
            .await?
            .ok_or_else(|| InventoryError::NoServer(a.clone()))?;
        crate::config::container_root(Path::new(&root), &web_app)
    };
    let staging = inventory::import_container(
        db,
        NewContainer {
            project_id: web.clone(),
            server_id: b.clone(),
            name: "web-app-staging".into(),
            source_container_id: Some(web_app.clone()),
            command: demo_command(),
            ..Default::default()
        },
        &web_root,
    )
    .await?;
    inventory::import_container(
        db,
        NewContainer {
            project_id: web.clone(),
            server_id: a.clone(),
            name: "edge-proxy".into(),
            command: demo_command(),
            ..Default::default()
        },
        &make("edge-proxy", 2, 1)?,
    )
    .await?;
    let db_primary = inventory::import_container(
        db,
        NewContainer {
            project_id: data_proj.clone(),
            server_id: b.clone(),
            name: "db-primary".into(),
            network_rules: vec![NetworkRule {
                interface: "eth0".into(),
                network: "data-backend".into(),
                ipv4: None,
                mtu: None,
            }],
            command: demo_command(),
            ..Default::default()
        },
        &make("db-primary", 3, 4)?,
    )
    .await?;
    inventory::create_snapshot(db, &db_primary, "nightly").await?;
    let etl = inventory::import_container(
        db,
        NewContainer {
            project_id: data_proj.clone(),
            server_id: a.clone(),
            name: "etl-worker".into(),
            command: demo_command(),
            ..Default::default()
        },
        &make("etl-worker", 4, 2)?,
    )
    .await?;
    let _ = fs::remove_dir_all(&scratch);
    Ok(Some(vec![web_app, staging, db_primary, etl]))
}

fn tempfile_dir(data: &DataConfig) -> Result<std::path::PathBuf, InventoryError> {
    let dir = data
        .data_dir
        .join(format!(".seed-{}", crate::ids::new_id()));
    fs::create_dir_all(&dir).map_err(|source| InventoryError::Io {
        path: dir.clone(),
        source,
    })?;
    Ok(dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn demo_trees_are_deterministic_and_varied() {
        let tmp = tempfile::tempdir().unwrap();
        demo_tree(&tmp.path().join("a"), 7, "x", 2).unwrap();
        demo_tree(&tmp.path().join("b"), 7, "x", 2).unwrap();
        let ctl = crate::engine::Control::new();
        let (a, _) = crate::engine::scan::scan(&tmp.path().join("a"), None, true, &ctl).unwrap();
        let (b, _) = crate::engine::scan::scan(&tmp.path().join("b"), None, true, &ctl).unwrap();
        // Same names, types, modes and content (mtimes are when the tree was made).
        let shape = |m: &crate::engine::Manifest| -> Vec<_> {
            m.entries
                .iter()
                .map(|e| {
                    (
                        e.path.clone(),
                        e.kind,
                        e.mode,
                        e.size,
                        e.hash,
                        e.target.clone(),
                    )
                })
                .collect()
        };
        assert_eq!(shape(&a), shape(&b));
        assert!(a.files() > 90, "{}", a.files());
        assert!(a.bytes() > 1024 * 1024, "{}", a.bytes());
        for rel in [
            "var/lib/x/data-00.db",
            "srv/x/releases/v1/assets/asset-007.bin",
        ] {
            assert_eq!(
                fs::read(tmp.path().join("a").join(rel)).unwrap(),
                fs::read(tmp.path().join("b").join(rel)).unwrap()
            );
        }
        assert!(fs::symlink_metadata(tmp.path().join("a/srv/x/current"))
            .unwrap()
            .file_type()
            .is_symlink());
    }
}
