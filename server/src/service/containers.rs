//! Reading projects, servers and containers.

use std::path::Path;

use app::model::*;
use sqlx::Row;

use super::visibility::Visibility;
use super::{check_id, internal, Service};
use crate::config::container_root;
use crate::store::{ContainerRow, CONTAINER_SELECT};

impl Service {
    pub async fn list_projects(&self, user: &UserInfo) -> Result<Vec<Project>, ApiError> {
        let vis = self.visibility(user).await?;
        let rows =
            sqlx::query("SELECT id, name, description, created_at FROM projects ORDER BY name")
                .fetch_all(&self.db.read)
                .await
                .map_err(internal)?;
        Ok(rows
            .iter()
            .filter_map(|r| {
                let id: String = r.get("id");
                let role = *vis.roles.get(&id)?;
                Some(Project {
                    id,
                    name: r.get("name"),
                    description: r.get("description"),
                    role,
                    created_at: r.get("created_at"),
                })
            })
            .collect())
    }

    pub async fn list_servers(&self, user: &UserInfo) -> Result<Vec<Server>, ApiError> {
        let rows = sqlx::query(
            "SELECT id, name, description, storage_root, created_at FROM servers ORDER BY name",
        )
        .fetch_all(&self.db.read)
        .await
        .map_err(internal)?;
        Ok(rows
            .iter()
            .map(|r| Server {
                id: r.get("id"),
                name: r.get("name"),
                description: r.get("description"),
                storage_root: user.is_admin.then(|| r.get("storage_root")),
                created_at: r.get("created_at"),
            })
            .collect())
    }

    pub async fn list_containers(
        &self,
        user: &UserInfo,
        project_id: Option<&str>,
    ) -> Result<Vec<ContainerSummary>, ApiError> {
        let vis = self.visibility(user).await?;
        if let Some(pid) = project_id {
            check_id("project_id", pid)?;
            if !vis.can_see(pid) {
                return Err(ApiError::not_found("project", pid));
            }
        }
        let rows: Vec<ContainerRow> = sqlx::query_as(&format!(
            "{CONTAINER_SELECT} WHERE ($1 IS NULL OR c.project_id = $1) ORDER BY p.name, c.name"
        ))
        .bind(project_id)
        .fetch_all(&self.db.read)
        .await
        .map_err(internal)?;
        Ok(rows
            .iter()
            .filter(|r| vis.can_see(&r.project_id))
            .map(|r| r.summary(&vis))
            .collect())
    }

    pub async fn get_container(
        &self,
        user: &UserInfo,
        id: &str,
    ) -> Result<ContainerDetail, ApiError> {
        let (row, vis) = self.visible_container(user, id).await?;
        self.container_detail(user, row, &vis, true).await
    }

    /// A container the user may see, or 404 whether it exists or not (no leak).
    pub(super) async fn visible_container(
        &self,
        user: &UserInfo,
        id: &str,
    ) -> Result<(ContainerRow, Visibility), ApiError> {
        check_id("container id", id)?;
        let vis = self.visibility(user).await?;
        let row: Option<ContainerRow> =
            sqlx::query_as(&format!("{CONTAINER_SELECT} WHERE c.id = $1"))
                .bind(id)
                .fetch_optional(&self.db.read)
                .await
                .map_err(internal)?;
        match row {
            Some(row) if vis.can_see(&row.project_id) => Ok((row, vis)),
            _ => Err(ApiError::not_found("container", id)),
        }
    }

    /// A container's full detail from its row; `with_copies` also lists its copies.
    pub(super) async fn container_detail(
        &self,
        user: &UserInfo,
        row: ContainerRow,
        vis: &Visibility,
        with_copies: bool,
    ) -> Result<ContainerDetail, ApiError> {
        let id = row.id.as_str();
        let snapshots = sqlx::query(
            "SELECT id, name, created_at, file_count, size_bytes FROM snapshots WHERE container_id = $1 ORDER BY created_at DESC, name",
        )
        .bind(id)
        .fetch_all(&self.db.read)
        .await
        .map_err(internal)?
        .iter()
        .map(|r| Snapshot {
            id: r.get("id"),
            name: r.get("name"),
            created_at: r.get("created_at"),
            file_count: r.get("file_count"),
            size_bytes: r.get("size_bytes"),
        })
        .collect();
        let copies = if !with_copies {
            Vec::new()
        } else {
            sqlx::query(
            "SELECT c.id, c.name, c.project_id, p.name AS project_name FROM containers c
             JOIN projects p ON p.id = c.project_id WHERE c.source_container_id = $1 ORDER BY p.name, c.name",
        )
        .bind(id)
        .fetch_all(&self.db.read)
        .await
        .map_err(internal)?
        .iter()
        .filter(|r| vis.can_see(r.get::<&str, _>("project_id")))
        .map(|r| ContainerRef {
            id: r.get("id"),
            name: r.get("name"),
            project_id: r.get("project_id"),
            project_name: r.get("project_name"),
        })
        .collect()
        };
        Ok(ContainerDetail {
            summary: row.summary(vis),
            status_reason: row.status_reason,
            ssh_public_key: row.ssh_public_key,
            firewall_rules: serde_json::from_str(&row.firewall_rules).map_err(internal)?,
            network_rules: serde_json::from_str(&row.network_rules).map_err(internal)?,
            snapshots,
            copies,
            source_state: row.source_state,
            last_synced_at: row.last_synced_at,
            file_count: row.file_count,
            size_bytes: row.size_bytes,
            updated_at: row.updated_at,
            root_path: user.is_admin.then(|| {
                container_root(Path::new(&row.storage_root), &row.id)
                    .display()
                    .to_string()
            }),
        })
    }
}
