//! Creating projects, servers, memberships, containers and snapshots: what `import` and
//! the demo data need (copy and sync add their own paths through the job runner later).

use std::path::{Path, PathBuf};

use app::model::{
    validate_container_name, ContainerCommand, ContainerStatus, FirewallRule, NetworkRule,
    NewServer, Role,
};

use crate::config::{container_place, snapshot_place, DataConfig};
use crate::engine::{self, Control, EngineError, Place, Summary};
use crate::ids::{new_id, now_ms};
use crate::store::{Db, DbError, ImportedContainer, NewSnapshot, ServerRow};

#[derive(Debug, thiserror::Error)]
pub enum InventoryError {
    #[error("no project with id {0:?}")]
    NoProject(String),
    #[error("no server with id {0:?}")]
    NoServer(String),
    #[error("no container with id {0:?}")]
    NoContainer(String),
    #[error("invalid name {name:?}: {reason}")]
    BadName { name: String, reason: String },
    #[error("{0} already exists")]
    Exists(String),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("copying {path}: {message}")]
    Copy { path: PathBuf, message: String },
    /// The filesystem filled up during the copy (what was written is removed again).
    #[error("copying {path}: no space left on the server")]
    NoSpace { path: PathBuf },
    #[error("database: {0}")]
    Db(#[from] DbError),
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> InventoryError + '_ {
    move |source| InventoryError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// `Exists` (named by `what`) when a unique index said no, else the database's error.
fn exists_or(e: DbError, what: impl FnOnce() -> String) -> InventoryError {
    if e.is_unique_violation() {
        InventoryError::Exists(what())
    } else {
        e.into()
    }
}

/// Servers, containers and snapshots share the naming rule of containers.
fn valid_name(name: &str) -> Result<(), InventoryError> {
    validate_container_name(name).map_err(|reason| InventoryError::BadName {
        name: name.into(),
        reason,
    })
}

/// A whole-tree copy through the engine, off the async workers; where `identity` (host
/// name, SSH key) is given, a copy of a container, the tree then becomes a new machine,
/// as a copy job's does.
async fn run_copy(
    src: Place,
    dst: Place,
    identity: Option<(String, Option<String>)>,
) -> Result<Summary, InventoryError> {
    let path = src.root.clone();
    tokio::task::spawn_blocking(move || {
        let mut summary = engine::copy(&src, &dst, &Control::new())?;
        if let Some((hostname, key)) = &identity {
            let id = engine::identity::Identity {
                hostname,
                ssh_public_key: key.as_deref(),
            };
            engine::identity::make_new_machine(&dst, &id)?.record_in(&mut summary);
        }
        Ok(summary)
    })
    .await
    .map_err(|e| InventoryError::Io {
        path: path.clone(),
        source: std::io::Error::other(e),
    })?
    .map_err(|e| match e {
        EngineError::Io { source, .. } if source.kind() == std::io::ErrorKind::StorageFull => {
            InventoryError::NoSpace { path }
        }
        e => InventoryError::Copy {
            path,
            message: e.to_string(),
        },
    })
}

pub async fn create_project(
    db: &Db,
    name: &str,
    description: &str,
) -> Result<String, InventoryError> {
    let id = new_id();
    let made = db
        .insert_project(&id, name, description, now_ms())
        .await
        .map_err(|e| exists_or(e, || format!("project {name:?}")))?;
    if !made {
        return Err(InventoryError::Exists(format!("project {name:?}")));
    }
    Ok(id)
}

/// Creates an embedded server: a storage root under the data dir, named after the server.
pub async fn create_server(
    db: &Db,
    data: &DataConfig,
    name: &str,
    description: &str,
) -> Result<String, InventoryError> {
    valid_name(name)?;
    let root = data.servers_dir().join(name);
    std::fs::create_dir_all(root.join("containers")).map_err(io_err(&root))?;
    let root = root.canonicalize().map_err(io_err(&root))?;
    let mut row = ServerRow::embedded(
        new_id(),
        name.to_string(),
        root.display().to_string(),
        now_ms(),
    );
    row.description = description.to_string();
    db.insert_server(&row)
        .await
        .map_err(|e| exists_or(e, || format!("server {name:?}")))?;
    Ok(row.id)
}

pub async fn add_member(
    db: &Db,
    project_id: &str,
    user_id: &str,
    role: Role,
) -> Result<(), InventoryError> {
    Ok(db.insert_membership(project_id, user_id, role).await?)
}

async fn storage_root(db: &Db, server_id: &str) -> Result<PathBuf, InventoryError> {
    db.server_storage_root(server_id)
        .await?
        .map(PathBuf::from)
        .ok_or_else(|| InventoryError::NoServer(server_id.into()))
}

/// What a new container starts with besides its tree.
#[derive(Debug, Default, Clone)]
pub struct NewContainer {
    pub project_id: String,
    pub server_id: String,
    pub name: String,
    pub ssh_public_key: Option<String>,
    pub firewall_rules: Vec<FirewallRule>,
    pub network_rules: Vec<NetworkRule>,
    /// What it runs (empty: nothing; it cannot start until it has a command).
    pub command: ContainerCommand,
    /// For a copy made outside the job runner (demo data): its source and matched state.
    pub source_container_id: Option<String>,
}

/// Creates a container whose root is a copy of the directory `tree`. The row exists only
/// once the tree is complete, so a failed import leaves neither a row nor files behind.
pub async fn import_container(
    db: &Db,
    new: NewContainer,
    tree: &Path,
) -> Result<String, InventoryError> {
    valid_name(&new.name)?;
    if !db.project_exists(&new.project_id).await? {
        return Err(InventoryError::NoProject(new.project_id));
    }
    if db
        .container_named(&new.project_id, &new.name)
        .await?
        .is_some()
    {
        return Err(InventoryError::Exists(format!(
            "a container named {:?} in this project",
            new.name
        )));
    }
    let root = storage_root(db, &new.server_id).await?;
    let id = new_id();
    let dest = container_place(&root, &id);
    // The imported directory gets a throwaway state dir: doppel never writes beside it.
    let scratch = root.join("state").join(format!("import-{id}"));
    // A copy of a container (the demo's) is a new machine, as a copy job makes it.
    let identity = new
        .source_container_id
        .as_ref()
        .map(|_| (new.name.clone(), new.ssh_public_key.clone()));
    let stats = run_copy(Place::new(tree, &scratch), dest.clone(), identity).await;
    let _ = std::fs::remove_dir_all(&scratch);
    let stats = stats?;
    for skipped in &stats.skipped_special {
        tracing::warn!(path = %skipped, "device file or socket not imported");
    }
    let now = now_ms();
    // An imported container runs only once started: no status claims a process that
    // does not exist.
    let status = ContainerStatus::Stopped;
    let res = db
        .insert_imported(ImportedContainer {
            id: &id,
            name: &new.name,
            project_id: &new.project_id,
            server_id: &new.server_id,
            status,
            ssh_public_key: new.ssh_public_key.as_deref(),
            firewall_rules: serde_json::to_string(&new.firewall_rules)
                .unwrap_or_else(|_| "[]".into()),
            network_rules: serde_json::to_string(&new.network_rules)
                .unwrap_or_else(|_| "[]".into()),
            command: serde_json::to_string(&new.command).unwrap_or_else(|_| "{}".into()),
            source_container_id: new.source_container_id.as_deref(),
            // The state of the source it matches (its own tree differs by its identity).
            source_state: new
                .source_container_id
                .as_ref()
                .map(|_| stats.source_root_hash.as_str()),
            file_count: stats.tree_files as i64,
            size_bytes: stats.tree_bytes as i64,
            now,
        })
        .await;
    if let Err(e) = res {
        let _ = std::fs::remove_dir_all(&dest.root);
        let _ = std::fs::remove_dir_all(&dest.state_dir);
        return Err(exists_or(e, || {
            format!("a container named {:?} or with this SSH key", new.name)
        }));
    }
    Ok(id)
}

/// Freezes the container's current tree as a named snapshot.
pub async fn create_snapshot(
    db: &Db,
    container_id: &str,
    name: &str,
) -> Result<String, InventoryError> {
    valid_name(name)?;
    let root = db
        .container_storage_root(container_id)
        .await?
        .map(PathBuf::from)
        .ok_or_else(|| InventoryError::NoContainer(container_id.into()))?;
    let id = new_id();
    let dest = snapshot_place(&root, container_id, &id);
    let stats = run_copy(container_place(&root, container_id), dest.clone(), None).await?;
    let res = record_snapshot(db, (&id, container_id, name), &stats).await;
    if let Err(e) = res {
        let _ = std::fs::remove_dir_all(&dest.root);
        let _ = std::fs::remove_dir_all(&dest.state_dir);
        return Err(exists_or(e, || {
            format!("a snapshot named {name:?} of this container")
        }));
    }
    Ok(id)
}

/// A snapshot's row, for a tree `stats` describes.
async fn record_snapshot(
    db: &Db,
    (id, container_id, name): (&str, &str, &str),
    stats: &Summary,
) -> Result<(), crate::store::DbError> {
    db.insert_snapshot(NewSnapshot {
        id,
        container_id,
        name,
        file_count: stats.tree_files as i64,
        size_bytes: stats.tree_bytes as i64,
        created_at: now_ms(),
    })
    .await
}

/// A snapshot of a container on an agent: the tree frozen there, then its row written here
/// (or the tree removed again there).
pub(super) async fn create_snapshot_on_agent(
    db: &Db,
    agents: &crate::remote::Agents,
    server: &str,
    container_id: &str,
    name: &str,
) -> Result<String, InventoryError> {
    valid_name(name)?;
    let id = new_id();
    let stats = agents
        .make_snapshot(server, container_id, &id)
        .await
        .map_err(|e| match e {
            EngineError::Io { source, context }
                if source.kind() == std::io::ErrorKind::StorageFull =>
            {
                InventoryError::NoSpace {
                    path: PathBuf::from(context),
                }
            }
            e => InventoryError::Copy {
                path: PathBuf::from(format!("server {server}")),
                message: e.to_string(),
            },
        })?;
    let res = record_snapshot(db, (&id, container_id, name), &stats).await;
    if let Err(e) = res {
        let _ = agents.remove_snapshot(server, container_id, &id).await;
        return Err(exists_or(e, || {
            format!("a snapshot named {name:?} of this container")
        }));
    }
    Ok(id)
}

/// `doppel server add NAME`: a server whose host joins later; its one-time join token.
pub async fn add_agent_server(
    db: &Db,
    data: &DataConfig,
    name: &str,
    description: &str,
) -> anyhow::Result<String> {
    let me = crate::tls::Identity::load_or_create(&data.identity_dir(), "doppel-control-plane")?;
    let req = NewServer {
        name: name.to_string(),
        description: Some(description.to_string()),
    };
    let (_, token) = super::servers::add_pending_server(db, me.fingerprint, req)
        .await
        .map_err(|e| anyhow::anyhow!("{}", e.message))?;
    Ok(token)
}
