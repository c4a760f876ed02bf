//! The service layer: every business rule and authorisation check, shared by the REST
//! handlers and the console's server functions (through [`app::backend::Backend`]).

use std::collections::HashMap;
use std::path::Path;

use app::backend::Backend;
use app::model::*;
use sqlx::Row;

use crate::config::{container_root, DataConfig};
use crate::db::{Cols, Db};

pub struct Service {
    pub db: Db,
    pub data: DataConfig,
    pub jobs: std::sync::Arc<crate::jobs::JobRunner>,
    /// API tokens verified in the last 2 s (see `TokenCache`).
    pub tokens: crate::auth::TokenCache,
    /// Walks of sources under way, shared by sync status loads (see `SharedProbes`).
    pub probes: crate::sync_status::SharedProbes,
}

/// Logs an unexpected failure and gives the user a generic error (details stay in the log).
pub fn internal(err: impl std::fmt::Display) -> ApiError {
    tracing::error!(error = %err, "internal error");
    ApiError::internal()
}

/// Filters for listing jobs.
#[derive(Debug, Default, Clone, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobFilter {
    pub container_id: Option<String>,
    pub project_id: Option<String>,
    pub status: Option<String>,
    pub kind: Option<String>,
}

/// A row of `CONTAINER_SELECT`.
pub(crate) struct ContainerRow {
    pub(crate) id: String,
    pub(crate) name: String,
    pub(crate) status: String,
    pub(crate) status_reason: Option<String>,
    pub(crate) project_id: String,
    pub(crate) project_name: String,
    pub(crate) server_id: String,
    pub(crate) server_name: String,
    pub(crate) storage_root: String,
    pub(crate) ssh_public_key: Option<String>,
    pub(crate) firewall_rules: String,
    pub(crate) network_rules: String,
    pub(crate) source_container_id: Option<String>,
    pub(crate) source_state: Option<String>,
    pub(crate) last_synced_at: Option<i64>,
    pub(crate) file_count: i64,
    pub(crate) size_bytes: i64,
    pub(crate) created_at: i64,
    pub(crate) updated_at: i64,
    pub(crate) src_name: Option<String>,
    pub(crate) src_project_id: Option<String>,
    pub(crate) src_project_name: Option<String>,
}

pub(crate) const CONTAINER_SELECT: &str =
    "SELECT c.id, c.name, c.status, c.status_reason, c.project_id,
        p.name AS project_name, c.server_id, s.name AS server_name, s.storage_root,
        c.ssh_public_key, c.firewall_rules, c.network_rules, c.source_container_id,
        c.source_state, c.last_synced_at, c.file_count, c.size_bytes, c.created_at, c.updated_at,
        src.name AS src_name, src.project_id AS src_project_id, sp.name AS src_project_name
    FROM containers c
    JOIN projects p ON p.id = c.project_id
    JOIN servers s ON s.id = c.server_id
    LEFT JOIN containers src ON src.id = c.source_container_id
    LEFT JOIN projects sp ON sp.id = src.project_id";

/// The projects a user may see, with their role in each (`None`: admin, not a member).
pub(crate) struct Visibility {
    pub(crate) roles: HashMap<String, Option<Role>>,
}

impl Visibility {
    /// The rule, in one place: a platform admin sees every project, with full rights
    /// whether a member or not; anyone else sees the projects they are a member of, with
    /// their role there. `projects` are (project id, the user's membership role if any).
    pub(crate) fn of(
        user: &UserInfo,
        projects: impl IntoIterator<Item = (String, Option<String>)>,
    ) -> Visibility {
        let roles = projects
            .into_iter()
            .filter_map(|(id, member)| match (user.is_admin, member) {
                (true, _) => Some((id, None)),
                // (The schema allows only known roles; anything else gets the least.)
                (false, Some(role)) => Some((id, Some(Role::parse(&role).unwrap_or(Role::Viewer)))),
                (false, None) => None,
            })
            .collect();
        Visibility { roles }
    }

    pub(crate) fn can_see(&self, project_id: &str) -> bool {
        self.roles.contains_key(project_id)
    }
}

impl ContainerRow {
    pub(crate) fn from_cols(r: &impl Cols) -> Self {
        ContainerRow {
            id: r.col("id"),
            name: r.col("name"),
            status: r.col("status"),
            status_reason: r.col("status_reason"),
            project_id: r.col("project_id"),
            project_name: r.col("project_name"),
            server_id: r.col("server_id"),
            server_name: r.col("server_name"),
            storage_root: r.col("storage_root"),
            ssh_public_key: r.col("ssh_public_key"),
            firewall_rules: r.col("firewall_rules"),
            network_rules: r.col("network_rules"),
            source_container_id: r.col("source_container_id"),
            source_state: r.col("source_state"),
            last_synced_at: r.col("last_synced_at"),
            file_count: r.col("file_count"),
            size_bytes: r.col("size_bytes"),
            created_at: r.col("created_at"),
            updated_at: r.col("updated_at"),
            src_name: r.col("src_name"),
            src_project_id: r.col("src_project_id"),
            src_project_name: r.col("src_project_name"),
        }
    }

    pub(crate) fn summary(&self, vis: &Visibility) -> ContainerSummary {
        let source = match (&self.source_container_id, &self.src_project_id) {
            (Some(id), Some(pid)) if vis.can_see(pid) => Some(ContainerRef {
                id: id.clone(),
                name: self.src_name.clone().unwrap_or_default(),
                project_id: pid.clone(),
                project_name: self.src_project_name.clone().unwrap_or_default(),
            }),
            _ => None,
        };
        ContainerSummary {
            id: self.id.clone(),
            name: self.name.clone(),
            // The CHECK constraint guarantees a known status.
            status: ContainerStatus::parse(&self.status).unwrap_or(ContainerStatus::Failed),
            project_id: self.project_id.clone(),
            project_name: self.project_name.clone(),
            server_id: self.server_id.clone(),
            server_name: self.server_name.clone(),
            is_copy: self.source_container_id.is_some(),
            source,
            created_at: self.created_at,
        }
    }
}

/// `query_as` reads `CONTAINER_SELECT` rows with the same mapping.
impl sqlx::FromRow<'_, sqlx::sqlite::SqliteRow> for ContainerRow {
    fn from_row(r: &sqlx::sqlite::SqliteRow) -> sqlx::Result<Self> {
        Ok(ContainerRow::from_cols(r))
    }
}

pub(crate) fn check_id(what: &str, id: &str) -> Result<(), ApiError> {
    if is_valid_id(id) {
        Ok(())
    } else {
        Err(ApiError::invalid(format!(
            "{what} {id:?} is not a valid id (24 lowercase hex digits)"
        )))
    }
}

impl Service {
    pub fn new(db: Db, data: DataConfig, limits: crate::jobs::Limits) -> Self {
        let jobs = crate::jobs::JobRunner::new(db.clone(), limits);
        Service {
            db,
            data,
            jobs,
            tokens: crate::auth::TokenCache::new(std::time::Duration::from_secs(2)),
            probes: Default::default(),
        }
    }

    /// The caller's projects and role in each (`None`: a platform admin, not a member).
    pub(crate) async fn visibility_roles(
        &self,
        user: &UserInfo,
    ) -> Result<HashMap<String, Option<Role>>, ApiError> {
        Ok(self.visibility(user).await?.roles)
    }

    pub(crate) async fn visibility(&self, user: &UserInfo) -> Result<Visibility, ApiError> {
        // One statement: every project for a platform admin, the member's for anyone else.
        let rows = sqlx::query(
            "SELECT p.id, m.role FROM projects p
             LEFT JOIN memberships m ON m.project_id = p.id AND m.user_id = $1
             WHERE $2 OR m.user_id IS NOT NULL",
        )
        .bind(&user.id)
        .bind(user.is_admin)
        .fetch_all(&self.db.read)
        .await
        .map_err(internal)?;
        Ok(Visibility::of(
            user,
            rows.iter().map(|row| (row.get("id"), row.get("role"))),
        ))
    }

    /// A container the user may see, or 404 whether it exists or not (no leak).
    pub(crate) async fn visible_container(
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
    pub(crate) async fn container_detail(
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

    pub async fn list_jobs(
        &self,
        user: &UserInfo,
        filter: &JobFilter,
    ) -> Result<Vec<Job>, ApiError> {
        let vis = self.visibility(user).await?;
        if let Some(id) = &filter.container_id {
            check_id("container_id", id)?;
        }
        if let Some(id) = &filter.project_id {
            check_id("project_id", id)?;
            if !vis.can_see(id) {
                return Err(ApiError::not_found("project", id));
            }
        }
        if let Some(s) = &filter.status {
            JobStatus::parse(s).ok_or_else(|| {
                ApiError::invalid(format!(
                    "status {s:?} is not one of queued, running, succeeded, failed, cancelled"
                ))
            })?;
        }
        if let Some(k) = &filter.kind {
            JobKind::parse(k)
                .ok_or_else(|| ApiError::invalid(format!("kind {k:?} is not one of copy, sync")))?;
        }
        let rows = sqlx::query(
            "SELECT * FROM jobs
             WHERE ($1 IS NULL OR container_id = $1 OR source_container_id = $1)
               AND ($2 IS NULL OR project_id = $2)
               AND ($3 IS NULL OR status = $3)
               AND ($4 IS NULL OR kind = $4)
               AND ($5 = 1 OR project_id IN (SELECT project_id FROM memberships WHERE user_id = $6))
             ORDER BY created_at DESC, id DESC LIMIT 500",
        )
        .bind(&filter.container_id)
        .bind(&filter.project_id)
        .bind(&filter.status)
        .bind(&filter.kind)
        .bind(i64::from(user.is_admin))
        .bind(&user.id)
        .fetch_all(&self.db.read)
        .await
        .map_err(internal)?;
        Ok(rows
            .iter()
            .filter(|r| vis.can_see(r.get::<&str, _>("project_id")))
            .map(job_from_row)
            .collect())
    }

    pub async fn get_job(&self, user: &UserInfo, id: &str) -> Result<Job, ApiError> {
        check_id("job id", id)?;
        let vis = self.visibility(user).await?;
        let row = sqlx::query("SELECT * FROM jobs WHERE id = $1")
            .bind(id)
            .fetch_optional(&self.db.read)
            .await
            .map_err(internal)?;
        match row {
            Some(r) if vis.can_see(r.get::<&str, _>("project_id")) => Ok(job_from_row(&r)),
            _ => Err(ApiError::not_found("job", id)),
        }
    }
}

pub(crate) fn job_from_row(r: &impl Cols) -> Job {
    let json = |col: &str| -> Option<serde_json::Value> {
        r.col::<Option<String>>(col)
            .and_then(|s| serde_json::from_str(&s).ok())
    };
    let id: String = r.col("id");
    Job {
        kind: JobKind::parse(&r.col::<String>("kind")).unwrap_or(JobKind::Copy),
        status: JobStatus::parse(&r.col::<String>("status")).unwrap_or(JobStatus::Failed),
        phase: r.col("phase"),
        project_id: r.col("project_id"),
        container_id: r.col("container_id"),
        source_container_id: r.col("source_container_id"),
        progress: json("progress").and_then(|v| serde_json::from_value(v).ok()),
        summary: json("summary"),
        error: r.col("error"),
        created_at: r.col("created_at"),
        started_at: r.col("started_at"),
        finished_at: r.col("finished_at"),
        url: format!("/api/v1/jobs/{id}"),
        events_url: format!("/api/v1/jobs/{id}/events"),
        id,
    }
}

#[async_trait::async_trait]
impl Backend for Service {
    async fn list_projects(&self, user: &UserInfo) -> Result<Vec<Project>, ApiError> {
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

    async fn list_servers(&self, user: &UserInfo) -> Result<Vec<Server>, ApiError> {
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

    async fn list_containers(
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

    async fn get_container(&self, user: &UserInfo, id: &str) -> Result<ContainerDetail, ApiError> {
        let (row, vis) = self.visible_container(user, id).await?;
        self.container_detail(user, row, &vis, true).await
    }

    async fn copy_container(
        &self,
        user: &UserInfo,
        source_id: &str,
        req: CopyRequest,
    ) -> Result<CopyStarted, ApiError> {
        self.start_copy(user, source_id, req, None).await
    }

    async fn sync_container(&self, user: &UserInfo, id: &str) -> Result<Job, ApiError> {
        self.start_sync(user, id, None).await
    }

    async fn stop_job(&self, user: &UserInfo, id: &str) -> Result<Job, ApiError> {
        self.cancel_job(user, id).await
    }

    async fn job(&self, user: &UserInfo, id: &str) -> Result<Job, ApiError> {
        self.get_job(user, id).await
    }

    async fn sync_status(&self, user: &UserInfo) -> Result<Vec<CopyStatus>, ApiError> {
        self.copy_statuses(user).await
    }

    async fn recent_jobs(
        &self,
        user: &UserInfo,
        kind: Option<String>,
        status: Option<String>,
    ) -> Result<Vec<Job>, ApiError> {
        let filter = JobFilter {
            kind,
            status,
            ..JobFilter::default()
        };
        self.list_jobs(user, &filter).await
    }
}
