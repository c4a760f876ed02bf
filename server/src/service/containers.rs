//! Reading projects and containers.

use std::path::Path;

use app::model::*;

use super::visibility::Visibility;
use super::{check_id, check_param_id, internal, Service};
use crate::config::container_root;
use crate::store::ContainerRow;

impl Service {
    pub async fn list_projects(&self, user: &UserInfo) -> Result<Vec<Project>, ApiError> {
        let vis = self.visibility(user).await?;
        let projects = self.db.projects().await.map_err(internal)?;
        Ok(projects
            .into_iter()
            .filter_map(|p| {
                let role = *vis.roles.get(&p.id)?;
                Some(Project { role, ..p })
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
            check_param_id("project_id", pid)?;
            if !vis.can_see(pid) {
                return Err(ApiError::not_found("project", pid).on_field("project_id"));
            }
        }
        // A member's (or a scoped token's) projects only: not every container read, then
        // most of them dropped.
        let projects = vis.narrowed(user);
        let rows = self
            .db
            .containers(project_id, projects.as_deref())
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
        self.container_detail(user, row, &vis).await
    }

    /// A container the user may see, or 404 whether it exists or not (no leak).
    pub(super) async fn visible_container(
        &self,
        user: &UserInfo,
        id: &str,
    ) -> Result<(ContainerRow, Visibility), ApiError> {
        check_id("container id", id)?;
        let vis = self.visibility(user).await?;
        match self.db.container(id).await.map_err(internal)? {
            Some(row) if vis.can_see(&row.project_id) => Ok((row, vis)),
            _ => Err(ApiError::not_found("container", id)),
        }
    }

    /// A container's full detail from its row, with its snapshots and visible copies.
    pub(super) async fn container_detail(
        &self,
        user: &UserInfo,
        row: ContainerRow,
        vis: &Visibility,
    ) -> Result<ContainerDetail, ApiError> {
        let snapshots = self.db.snapshots_of(&row.id).await.map_err(internal)?;
        let copies = self
            .db
            .copies_of(&row.id)
            .await
            .map_err(internal)?
            .into_iter()
            .filter(|c| vis.can_see(&c.project_id))
            .collect();
        let on_agent = row.is_on_agent();
        let shows_root = user.is_admin && user.scope.projects.is_none() && !on_agent;
        let root = container_root(Path::new(&row.storage_root), &row.id);
        let root = root.as_path();
        Ok(ContainerDetail {
            summary: row.summary(vis),
            status_reason: row.status_reason,
            ssh_public_key: row.ssh_public_key,
            firewall_rules: serde_json::from_str(&row.firewall_rules).map_err(internal)?,
            network_rules: serde_json::from_str(&row.network_rules).map_err(internal)?,
            command: serde_json::from_str(&row.command).map_err(internal)?,
            started_at: row.started_at,
            stopped_at: row.stopped_at,
            exit_code: row.exit_code,
            interfaces: serde_json::from_str(&row.interfaces).map_err(internal)?,
            snapshots,
            copies,
            source_state: row.source_state,
            last_synced_at: row.last_synced_at,
            file_count: row.file_count,
            size_bytes: row.size_bytes,
            updated_at: row.updated_at,
            may_change: vis.require_operator(&row.project_id, "").is_ok(),
            // (The row's source is joined whoever may see it, and only while it exists.)
            source_deleted: row.source_container_id.is_some() && row.src_name.is_none(),
            root_path: shows_root.then(|| root.display().to_string()),
            tree: match shows_root {
                true => tree_kind(root).await,
                false => None,
            },
        })
    }
}

/// What the tree at `root` is on disk (`None`: there is none there, as while its copy is
/// made). An image tree whose filesystem is not mounted (after a restart of the host) is
/// one still: its image is beside it.
pub(super) async fn tree_kind(root: &Path) -> Option<TreeKind> {
    use crate::engine::{btrfs, fsx, image};
    let root = root.to_path_buf();
    tokio::task::spawn_blocking(move || {
        // (A mounted image tree has its image beside it too.)
        if image::image_path(&root).exists() {
            return Some(TreeKind::ImageTree);
        }
        let dir = fsx::open_dir(&root).ok()?;
        Some(match btrfs::is_subvolume(std::os::fd::AsFd::as_fd(&dir)) {
            true => TreeKind::Subvolume,
            false => TreeKind::Directory,
        })
    })
    .await
    .ok()
    .flatten()
}
