//! Demo data for a first start, so the console is alive at once: two projects, three
//! servers, several containers with real, deterministic trees, a copy and snapshots.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::Path;

use app::model::{ContainerStatus, FirewallRule, NetworkRule, Role};

use crate::auth;
use crate::config::DataConfig;
use crate::rng::Rng;
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
    Ok(())
}

fn rules_web() -> (Vec<FirewallRule>, Vec<NetworkRule>) {
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
            rule("ingress", "tcp", Some("443"), "0.0.0.0/0", "allow"),
            rule("ingress", "tcp", Some("22"), "10.0.0.0/8", "allow"),
            rule("ingress", "any", None, "0.0.0.0/0", "deny"),
        ],
        vec![NetworkRule {
            interface: "eth0".into(),
            network: "web-frontend".into(),
            ipv4: Some("10.20.0.10/24".into()),
            mtu: Some(1450),
        }],
    )
}

/// Seeds the demo data if the database has no projects yet. Returns whether it did.
pub async fn seed_if_empty(db: &Db, data: &DataConfig) -> Result<bool, InventoryError> {
    if !db.projects().await?.is_empty() {
        return Ok(false);
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
    let (fw, net) = rules_web();
    let web_app = inventory::import_container(
        db,
        NewContainer {
            project_id: web.clone(),
            server_id: a.clone(),
            name: "web-app".into(),
            ssh_public_key: Some(
                "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIDemoKeyForWebAppOnlyNotRealxxxxxxxxxxxxx demo@web-app".into(),
            ),
            firewall_rules: fw,
            network_rules: net,
            ..Default::default()
        },
        &make("web-app", 1, 3)?,
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
    inventory::import_container(
        db,
        NewContainer {
            project_id: web.clone(),
            server_id: b.clone(),
            name: "web-app-staging".into(),
            source_container_id: Some(web_app.clone()),
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
            status: Some(ContainerStatus::Stopped),
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
            ..Default::default()
        },
        &make("db-primary", 3, 4)?,
    )
    .await?;
    inventory::create_snapshot(db, &db_primary, "nightly").await?;
    inventory::import_container(
        db,
        NewContainer {
            project_id: data_proj.clone(),
            server_id: a.clone(),
            name: "etl-worker".into(),
            ..Default::default()
        },
        &make("etl-worker", 4, 2)?,
    )
    .await?;
    let _ = fs::remove_dir_all(&scratch);
    Ok(true)
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
