//! Creating projects, servers, memberships, containers and snapshots: what `import` and
//! the demo data need (copy and sync add their own paths through the job runner later).

use std::path::{Path, PathBuf};

use app::model::{validate_container_name, ContainerStatus, FirewallRule, NetworkRule, Role};
use sqlx::Row;

use crate::config::{container_place, snapshot_place, DataConfig};
use crate::engine::{self, Control, Place, Summary};
use crate::ids::{new_id, now_ms};
use crate::store::{is_unique_violation, Db};

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
    #[error("database: {0}")]
    Db(#[from] sqlx::Error),
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> InventoryError + '_ {
    move |source| InventoryError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Servers, containers and snapshots share the naming rule of containers.
fn valid_name(name: &str) -> Result<(), InventoryError> {
    validate_container_name(name).map_err(|reason| InventoryError::BadName {
        name: name.into(),
        reason,
    })
}

/// A whole-tree copy through the engine, off the async workers.
async fn run_copy(src: Place, dst: Place) -> Result<Summary, InventoryError> {
    let path = src.root.clone();
    tokio::task::spawn_blocking(move || engine::copy(&src, &dst, &Control::new()))
        .await
        .map_err(|e| InventoryError::Io {
            path: path.clone(),
            source: std::io::Error::other(e),
        })?
        .map_err(|e| InventoryError::Copy {
            path,
            message: e.to_string(),
        })
}

pub async fn create_project(
    db: &Db,
    name: &str,
    description: &str,
) -> Result<String, InventoryError> {
    let id = new_id();
    sqlx::query("INSERT INTO projects (id, name, description, created_at) VALUES ($1, $2, $3, $4)")
        .bind(&id)
        .bind(name)
        .bind(description)
        .bind(now_ms())
        .execute(&db.write)
        .await
        .map_err(|e| {
            if is_unique_violation(&e) {
                InventoryError::Exists(format!("project {name:?}"))
            } else {
                e.into()
            }
        })?;
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
    let id = new_id();
    sqlx::query("INSERT INTO servers (id, name, description, storage_root, created_at) VALUES ($1, $2, $3, $4, $5)")
        .bind(&id)
        .bind(name)
        .bind(description)
        .bind(root.display().to_string())
        .bind(now_ms())
        .execute(&db.write)
        .await
        .map_err(|e| if is_unique_violation(&e) { InventoryError::Exists(format!("server {name:?}")) } else { e.into() })?;
    Ok(id)
}

pub async fn add_member(
    db: &Db,
    project_id: &str,
    user_id: &str,
    role: Role,
) -> Result<(), InventoryError> {
    sqlx::query("INSERT INTO memberships (project_id, user_id, role) VALUES ($1, $2, $3)")
        .bind(project_id)
        .bind(user_id)
        .bind(role.as_str())
        .execute(&db.write)
        .await?;
    Ok(())
}

async fn storage_root(db: &Db, server_id: &str) -> Result<PathBuf, InventoryError> {
    let root: Option<String> = sqlx::query_scalar("SELECT storage_root FROM servers WHERE id = $1")
        .bind(server_id)
        .fetch_optional(&db.read)
        .await?;
    root.map(PathBuf::from)
        .ok_or_else(|| InventoryError::NoServer(server_id.into()))
}

/// What a new container starts with besides its tree.
#[derive(Debug, Default, Clone)]
pub struct NewContainer {
    pub project_id: String,
    pub server_id: String,
    pub name: String,
    pub status: Option<ContainerStatus>,
    pub ssh_public_key: Option<String>,
    pub firewall_rules: Vec<FirewallRule>,
    pub network_rules: Vec<NetworkRule>,
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
    let exists: Option<String> = sqlx::query_scalar("SELECT id FROM projects WHERE id = $1")
        .bind(&new.project_id)
        .fetch_optional(&db.read)
        .await?;
    if exists.is_none() {
        return Err(InventoryError::NoProject(new.project_id));
    }
    let taken: Option<String> =
        sqlx::query_scalar("SELECT id FROM containers WHERE project_id = $1 AND name = $2")
            .bind(&new.project_id)
            .bind(&new.name)
            .fetch_optional(&db.read)
            .await?;
    if taken.is_some() {
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
    let stats = run_copy(Place::new(tree, &scratch), dest.clone()).await;
    let _ = std::fs::remove_dir_all(&scratch);
    let stats = stats?;
    for skipped in &stats.skipped_special {
        tracing::warn!(path = %skipped, "device file or socket not imported");
    }
    let now = now_ms();
    let status = new.status.unwrap_or(ContainerStatus::Running);
    let res = sqlx::query(
        "INSERT INTO containers (id, name, project_id, server_id, status, ssh_public_key,
            firewall_rules, network_rules, source_container_id, last_synced_at,
            file_count, size_bytes, created_at, updated_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $13)",
    )
    .bind(&id)
    .bind(&new.name)
    .bind(&new.project_id)
    .bind(&new.server_id)
    .bind(status.as_str())
    .bind(&new.ssh_public_key)
    .bind(serde_json::to_string(&new.firewall_rules).unwrap_or_else(|_| "[]".into()))
    .bind(serde_json::to_string(&new.network_rules).unwrap_or_else(|_| "[]".into()))
    .bind(&new.source_container_id)
    .bind(new.source_container_id.as_ref().map(|_| now))
    .bind(stats.tree_files as i64)
    .bind(stats.tree_bytes as i64)
    .bind(now)
    .execute(&db.write)
    .await;
    if let Err(e) = res {
        let _ = std::fs::remove_dir_all(&dest.root);
        let _ = std::fs::remove_dir_all(&dest.state_dir);
        return Err(if is_unique_violation(&e) {
            InventoryError::Exists(format!(
                "a container named {:?} or with this SSH key",
                new.name
            ))
        } else {
            e.into()
        });
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
    let row = sqlx::query("SELECT c.id, s.storage_root FROM containers c JOIN servers s ON s.id = c.server_id WHERE c.id = $1")
        .bind(container_id)
        .fetch_optional(&db.read)
        .await?
        .ok_or_else(|| InventoryError::NoContainer(container_id.into()))?;
    let root = PathBuf::from(row.get::<String, _>("storage_root"));
    let id = new_id();
    let dest = snapshot_place(&root, container_id, &id);
    let stats = run_copy(container_place(&root, container_id), dest.clone()).await?;
    let res = sqlx::query(
        "INSERT INTO snapshots (id, container_id, name, file_count, size_bytes, created_at) VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(&id)
    .bind(container_id)
    .bind(name)
    .bind(stats.tree_files as i64)
    .bind(stats.tree_bytes as i64)
    .bind(now_ms())
    .execute(&db.write)
    .await;
    if let Err(e) = res {
        let _ = std::fs::remove_dir_all(&dest.root);
        let _ = std::fs::remove_dir_all(&dest.state_dir);
        return Err(if is_unique_violation(&e) {
            InventoryError::Exists(format!("a snapshot named {name:?} of this container"))
        } else {
            e.into()
        });
    }
    Ok(id)
}
