//! Rows that several parts read, with their one mapping (either driver, through `Cols`).

use app::model::{Job, JobKind, JobPhase, JobStatus};

use super::Cols;

/// A container with its project's and server's names and its source's: a row of
/// `CONTAINER_SELECT`.
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
    /// JSON: the process (`app::model::ContainerCommand`).
    pub(crate) command: String,
    pub(crate) started_at: Option<i64>,
    pub(crate) stopped_at: Option<i64>,
    pub(crate) exit_code: Option<i64>,
    /// JSON: the interfaces of its namespace (`app::model::Interface`).
    pub(crate) interfaces: String,
    pub(crate) src_name: Option<String>,
    pub(crate) src_project_id: Option<String>,
    pub(crate) src_project_name: Option<String>,
}

impl ContainerRow {
    /// Whether it lives on another host (an agent's server, whose storage root is the
    /// agent's own and is not recorded here).
    pub(crate) fn is_on_agent(&self) -> bool {
        self.storage_root.is_empty()
    }
}

/// Deleted containers (`deleted_at`) are left out, and so is a copy's deleted source.
pub(crate) const CONTAINER_SELECT: &str =
    "SELECT c.id, c.name, c.status, c.status_reason, c.project_id,
        p.name AS project_name, c.server_id, s.name AS server_name, s.storage_root,
        c.ssh_public_key, c.firewall_rules, c.network_rules, c.source_container_id,
        c.source_state, c.last_synced_at, c.file_count, c.size_bytes, c.created_at, c.updated_at,
        c.command, c.started_at, c.stopped_at, c.exit_code, c.interfaces,
        src.name AS src_name, src.project_id AS src_project_id, sp.name AS src_project_name
    FROM (SELECT * FROM containers WHERE deleted_at IS NULL) c
    JOIN projects p ON p.id = c.project_id
    JOIN servers s ON s.id = c.server_id
    LEFT JOIN containers src ON src.id = c.source_container_id AND src.deleted_at IS NULL
    LEFT JOIN projects sp ON sp.id = src.project_id";

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
            command: r.col("command"),
            started_at: r.col("started_at"),
            stopped_at: r.col("stopped_at"),
            exit_code: r.col("exit_code"),
            interfaces: r.col("interfaces"),
            src_name: r.col("src_name"),
            src_project_id: r.col("src_project_id"),
            src_project_name: r.col("src_project_name"),
        }
    }
}

/// `query_as` reads `CONTAINER_SELECT` rows with the same mapping.
impl sqlx::FromRow<'_, sqlx::sqlite::SqliteRow> for ContainerRow {
    fn from_row(r: &sqlx::sqlite::SqliteRow) -> sqlx::Result<Self> {
        Ok(ContainerRow::from_cols(r))
    }
}

/// A row of `jobs` (`SELECT *`) as the API shows it.
pub(crate) fn job_from_row(r: &impl Cols) -> Job {
    let json = |col: &str| r.col::<Option<String>>(col);
    let id: String = r.col("id");
    Job {
        // The CHECK constraints guarantee a known kind and status.
        kind: JobKind::parse(&r.col::<String>("kind")).unwrap_or(JobKind::Copy),
        status: JobStatus::parse(&r.col::<String>("status")).unwrap_or(JobStatus::Failed),
        phase: r
            .col::<Option<String>>("phase")
            .and_then(|p| JobPhase::parse(&p)),
        project_id: r.col("project_id"),
        container_id: r.col("container_id"),
        source_container_id: r.col("source_container_id"),
        progress: json("progress").and_then(|s| serde_json::from_str(&s).ok()),
        waiting_for: r.col("waiting_for"),
        summary: json("summary").and_then(|s| serde_json::from_str(&s).ok()),
        error: r.col("error"),
        created_at: r.col("created_at"),
        started_at: r.col("started_at"),
        finished_at: r.col("finished_at"),
        url: Job::url_of(&id),
        events_url: Job::events_url_of(&id),
        id,
    }
}
