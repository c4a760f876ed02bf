//! Containers: rows read with their project's, server's and source's names
//! (`ContainerRow`), and what copies, imports and syncs read and write of them.

use std::collections::{HashMap, HashSet};
use std::sync::LazyLock;

use app::model::{AuditEntry, ContainerRef, ContainerStatus, JobKind, JobStatus};
use sqlx::Row;

use super::audit::insert_audit;
use super::jobs::{Admission, JobCaps};
use super::scope::in_projects;
use super::{
    execute, query_first, unique_violation, Arg, Cols, ContainerRow, Db, DbError, SyncConn,
    CONTAINER_SELECT,
};

/// The rows a copy request creates: the new container (status `copying`) and its job.
#[derive(Clone)]
pub(crate) struct NewCopy {
    pub(crate) id: String,
    pub(crate) job_id: String,
    pub(crate) name: String,
    pub(crate) project_id: String,
    pub(crate) server_id: String,
    pub(crate) source_id: String,
    pub(crate) ssh_public_key: Option<String>,
    pub(crate) firewall_rules: String,
    pub(crate) network_rules: String,
    pub(crate) command: String,
    pub(crate) requested_by: String,
    pub(crate) params: String,
    pub(crate) idempotency_key: Option<String>,
    /// With a key: what the request was (see `request_fingerprint`).
    pub(crate) request_fingerprint: Option<String>,
    pub(crate) now: i64,
}

/// Why the rows of a copy were not written: a unique index said no, or the database failed.
pub(crate) enum Refusal {
    NameTaken,
    KeyTaken,
    SameIdempotencyKey,
    /// The target project was deleted meanwhile.
    ProjectGone,
    /// Its user or project is at a cap (see [`JobCaps`]).
    TooMany {
        by_user: u64,
        in_project: u64,
    },
    Db(rusqlite::Error),
}

impl From<rusqlite::Error> for Refusal {
    fn from(e: rusqlite::Error) -> Self {
        // Which index said no: SQLite names its columns in the message ("UNIQUE constraint
        // failed: containers.project_id, containers.name").
        match unique_violation(&e) {
            Some(m) if m.contains("idempotency_key") => Refusal::SameIdempotencyKey,
            Some(m) if m.contains("name") => Refusal::NameTaken,
            Some(_) => Refusal::KeyTaken,
            None => Refusal::Db(e),
        }
    }
}

/// A copy's container row.
pub(super) const INSERT_COPY: &str = "INSERT INTO containers (id, name, project_id, server_id,
        status, ssh_public_key, firewall_rules, network_rules, source_container_id, created_at,
        updated_at, command)
     VALUES ($1, $2, $3, $4, $10, $5, $6, $7, $8, $9, $9, $11)";

/// Whether project `$1` still exists, and whether a container of it is named `$2` (ignoring
/// case), both read from indexes (`containers_name_nocase`).
pub(super) const PROJECT_AND_NAME: &str = "SELECT
        EXISTS (SELECT 1 FROM projects WHERE id = $1 AND deleted_at IS NULL),
        EXISTS (SELECT 1 FROM containers WHERE project_id = $1
            AND name = $2 COLLATE NOCASE AND deleted_at IS NULL)";

/// A live container whose SSH key is `$1` (its `type base64`), with any comment: the key
/// alone, or followed by a space (from `$2`, the key and a space, up to `$3`, the key and
/// `!`, the character after the space). Both read the index of keys; a `LIKE` read every
/// container (and ignored case, which base64 does not).
pub(super) const KEY_IN_USE: &str = "SELECT id FROM containers
     WHERE (ssh_public_key = $1 OR (ssh_public_key >= $2 AND ssh_public_key < $3))
        AND deleted_at IS NULL";

/// The names in project `$1` that start with `$3` (`$2` characters long), ignoring case. The
/// range (`$4`: the prefix and U+10FFFF, which sorts after whatever follows a prefix in a
/// name) reads `containers_name_nocase` from the prefix on; `substr` says exactly.
pub(super) const NAMES_STARTING_WITH: &str = "SELECT lower(name) FROM containers
     WHERE project_id = $1 AND name >= $3 COLLATE NOCASE AND name < $4 COLLATE NOCASE
        AND substr(name, 1, $2) = $3 COLLATE NOCASE AND deleted_at IS NULL";

impl NewCopy {
    /// Both rows, in the caller's transaction.
    fn insert(&self, c: &SyncConn) -> Result<(), Refusal> {
        // Only into a project that still exists (a delete of it checked for containers in
        // its own write, and writes run one at a time), and under a name no container of
        // it has, whatever its case: a name is the container's host name (the unique index
        // compares exactly). Asked first, then a plain insert: an `INSERT ... SELECT ...
        // WHERE NOT EXISTS` reading the table it writes made SQLite stage the row in a
        // temporary table, and that was most of a copy request's commit (`make load`).
        let found = query_first(c, PROJECT_AND_NAME, &[&self.project_id, &self.name], |r| {
            Ok::<_, rusqlite::Error>((r.get::<_, bool>(0)?, r.get::<_, bool>(1)?))
        })?
        .transpose()?;
        match found {
            Some((true, false)) => {}
            Some((_, true)) => return Err(Refusal::NameTaken),
            _ => return Err(Refusal::ProjectGone),
        }
        execute(
            c,
            INSERT_COPY,
            &[
                &self.id,
                &self.name,
                &self.project_id,
                &self.server_id,
                &self.ssh_public_key,
                &self.firewall_rules,
                &self.network_rules,
                &self.source_id,
                &self.now,
                &ContainerStatus::Copying.as_str(),
                &self.command,
            ],
        )?;
        execute(
            c,
            super::jobs::INSERT_QUEUED_JOB,
            &[
                &self.job_id,
                &self.project_id,
                &self.id,
                &self.source_id,
                &self.requested_by,
                &self.params,
                &self.idempotency_key,
                &self.now,
                &JobKind::Copy.as_str(),
                &JobStatus::Queued.as_str(),
                &self.request_fingerprint,
            ],
        )?;
        Ok(())
    }
}

/// Everything a copy request is checked against, in one statement: the source, the caller's
/// membership in its project and in the target project, and the target project's and
/// server's names (NULL when they do not exist).
static COPY_CONTEXT: LazyLock<String> = LazyLock::new(|| {
    format!(
        "SELECT x.*,
            (SELECT role FROM memberships WHERE project_id = x.project_id AND user_id = $2)
                AS member_of_source,
            (SELECT role FROM memberships WHERE project_id = $3 AND user_id = $2)
                AS member_of_target,
            (SELECT name FROM projects WHERE id = $3 AND deleted_at IS NULL)
                AS target_project_name,
            ts.name AS target_server_name, ts.storage_root AS target_storage_root
         FROM ({CONTAINER_SELECT} WHERE c.id = $1) x
         LEFT JOIN servers ts ON ts.id = COALESCE($4, x.server_id)"
    )
});

/// `Db::containers`' and `Db::copies`' statement: the copies only (`copies`), `$1` a
/// project (`project`: given), then the `scope` projects from `$2` on (their number;
/// `None`: every project). A project given, or the scope's, is looked up in an index by
/// project (`$1 IS NULL OR ...` read every container of the platform, as did keeping what
/// a member may see after reading them all).
pub(super) fn containers_sql(copies: bool, project: bool, scope: Option<usize>) -> String {
    let project = match project {
        true => "c.project_id = $1",
        false => "$1 IS NULL",
    };
    let copies = match copies {
        true => " AND c.source_container_id IS NOT NULL",
        false => "",
    };
    let scope = scope.map_or(String::new(), |n| in_projects("c.project_id", n, 2));
    format!("{CONTAINER_SELECT} WHERE {project}{copies}{scope} ORDER BY p.name, c.name")
}

/// A row of `COPY_CONTEXT`.
pub(crate) struct CopyContext {
    pub(crate) source: ContainerRow,
    pub(crate) member_of_source: Option<String>,
    pub(crate) member_of_target: Option<String>,
    pub(crate) target_project_name: Option<String>,
    pub(crate) target_server_name: Option<String>,
    pub(crate) target_storage_root: Option<String>,
}

/// A tree on this host (`Db::trees_on_this_host`): a container's, or one of its snapshots'.
pub(crate) struct HostTree {
    /// The container's id and name.
    pub(crate) id: String,
    pub(crate) name: String,
    pub(crate) storage_root: String,
    /// The snapshot's id and name, for a snapshot's tree.
    pub(crate) snapshot: Option<(String, String)>,
}

/// A container imported from a directory (the CLI, the demo data).
pub(crate) struct ImportedContainer<'a> {
    pub(crate) id: &'a str,
    pub(crate) name: &'a str,
    pub(crate) project_id: &'a str,
    pub(crate) server_id: &'a str,
    pub(crate) status: ContainerStatus,
    pub(crate) ssh_public_key: Option<&'a str>,
    pub(crate) firewall_rules: String,
    pub(crate) network_rules: String,
    pub(crate) command: String,
    pub(crate) source_container_id: Option<&'a str>,
    /// For a copy: the state of its source it matches.
    pub(crate) source_state: Option<&'a str>,
    pub(crate) file_count: i64,
    pub(crate) size_bytes: i64,
    pub(crate) now: i64,
}

impl Db {
    pub(crate) async fn container(&self, id: &str) -> Result<Option<ContainerRow>, DbError> {
        Ok(
            sqlx::query_as(&format!("{CONTAINER_SELECT} WHERE c.id = $1"))
                .bind(id)
                .fetch_optional(&self.read)
                .await?,
        )
    }

    /// Every container (of one project, if given), by project and name.
    /// The containers of `project_id` if given, of the `projects` (those a caller may see)
    /// if given, else every one; by project and name.
    pub(crate) async fn containers(
        &self,
        project_id: Option<&str>,
        projects: Option<&[String]>,
    ) -> Result<Vec<ContainerRow>, DbError> {
        self.container_list(false, project_id, projects).await
    }

    /// The containers made by copy, as `containers` narrows them.
    pub(crate) async fn copies(
        &self,
        project_id: Option<&str>,
        projects: Option<&[String]>,
    ) -> Result<Vec<ContainerRow>, DbError> {
        self.container_list(true, project_id, projects).await
    }

    async fn container_list(
        &self,
        copies: bool,
        project_id: Option<&str>,
        projects: Option<&[String]>,
    ) -> Result<Vec<ContainerRow>, DbError> {
        let sql = containers_sql(copies, project_id.is_some(), projects.map(<[String]>::len));
        let mut query = sqlx::query_as(&sql).bind(project_id);
        for id in projects.unwrap_or_default() {
            query = query.bind(id);
        }
        Ok(query.fetch_all(&self.read).await?)
    }

    /// The copies of a container, by project and name.
    pub(crate) async fn copies_of(&self, id: &str) -> Result<Vec<ContainerRef>, DbError> {
        let rows = sqlx::query(
            "SELECT c.id, c.name, c.project_id, p.name AS project_name FROM containers c
             JOIN projects p ON p.id = c.project_id
             WHERE c.source_container_id = $1 AND c.deleted_at IS NULL
             ORDER BY p.name, c.name",
        )
        .bind(id)
        .fetch_all(&self.read)
        .await?;
        Ok(rows
            .iter()
            .map(|r| ContainerRef {
                id: r.get("id"),
                name: r.get("name"),
                project_id: r.get("project_id"),
                project_name: r.get("project_name"),
            })
            .collect())
    }

    /// The server and its storage root (empty for an agent's) of every container that is
    /// the source of a copy, by its id.
    pub(crate) async fn storage_roots_of_sources(
        &self,
    ) -> Result<HashMap<String, (String, String)>, DbError> {
        let rows = sqlx::query(
            "SELECT c.id, c.server_id, s.storage_root FROM containers c
             JOIN servers s ON s.id = c.server_id
             WHERE c.deleted_at IS NULL AND c.id IN (SELECT source_container_id FROM containers
                            WHERE source_container_id IS NOT NULL)",
        )
        .fetch_all(&self.read)
        .await?;
        Ok(rows
            .iter()
            .map(|r| (r.get("id"), (r.get("server_id"), r.get("storage_root"))))
            .collect())
    }

    /// The trees on this host (of containers whose server is embedded): each container's,
    /// then its snapshots', by the container's name and the snapshot's.
    pub(crate) async fn trees_on_this_host(&self) -> Result<Vec<HostTree>, DbError> {
        // (SQLite sorts NULL first: a container's own tree before its snapshots.)
        let rows = sqlx::query(
            "SELECT c.id AS id, c.name AS name, s.storage_root AS storage_root,
                    NULL AS snapshot_id, NULL AS snapshot_name
             FROM containers c JOIN servers s ON s.id = c.server_id
             WHERE c.deleted_at IS NULL AND s.kind = $1
             UNION ALL
             SELECT c.id, c.name, s.storage_root, sn.id, sn.name
             FROM snapshots sn JOIN containers c ON c.id = sn.container_id
             JOIN servers s ON s.id = c.server_id
             WHERE c.deleted_at IS NULL AND s.kind = $1
             ORDER BY name, id, snapshot_name",
        )
        .bind(super::projects::kind_str(app::model::ServerKind::Embedded))
        .fetch_all(&self.read)
        .await?;
        Ok(rows
            .iter()
            .map(|r| HostTree {
                id: r.get("id"),
                name: r.get("name"),
                storage_root: r.get("storage_root"),
                snapshot: r
                    .get::<Option<String>, _>("snapshot_id")
                    .zip(r.get::<Option<String>, _>("snapshot_name")),
            })
            .collect())
    }

    /// The storage root of a container's server (None for a container on an agent: its
    /// root is on the agent's host).
    pub(crate) async fn container_storage_root(&self, id: &str) -> Result<Option<String>, DbError> {
        Ok(sqlx::query_scalar(
            "SELECT s.storage_root FROM containers c JOIN servers s ON s.id = c.server_id
             WHERE c.id = $1 AND c.deleted_at IS NULL AND s.kind = $2",
        )
        .bind(id)
        .bind(super::projects::kind_str(app::model::ServerKind::Embedded))
        .fetch_optional(&self.read)
        .await?)
    }

    /// A container's status (`None`: no such container).
    pub(crate) async fn container_status(
        &self,
        id: &str,
    ) -> Result<Option<ContainerStatus>, DbError> {
        let status: Option<String> = sqlx::query_scalar(
            "SELECT status FROM containers WHERE id = $1 AND deleted_at IS NULL",
        )
        .bind(id)
        .fetch_optional(&self.read)
        .await?;
        Ok(status.as_deref().and_then(ContainerStatus::parse))
    }

    /// The id of the container of this name in this project, if any.
    pub(crate) async fn container_named(
        &self,
        project_id: &str,
        name: &str,
    ) -> Result<Option<String>, DbError> {
        Ok(sqlx::query_scalar(
            "SELECT id FROM containers
             WHERE project_id = $1 AND name = $2 COLLATE NOCASE AND deleted_at IS NULL",
        )
        .bind(project_id)
        .bind(name)
        .fetch_optional(&self.read)
        .await?)
    }

    /// The names in a project that start with `prefix` (ignoring case), in lowercase.
    pub(crate) async fn names_starting_with(
        &self,
        project_id: &str,
        prefix: &str,
    ) -> Result<HashSet<String>, DbError> {
        let names: Vec<String> = sqlx::query_scalar(NAMES_STARTING_WITH)
            .bind(project_id)
            .bind(prefix.chars().count() as i64)
            .bind(prefix)
            .bind(format!("{prefix}\u{10FFFF}"))
            .fetch_all(&self.read)
            .await?;
        Ok(names.into_iter().collect())
    }

    /// Whether a container holds the SSH key `identity` (its `type base64`, any comment).
    pub(crate) async fn ssh_key_in_use(&self, identity: &str) -> Result<bool, DbError> {
        let taken: Option<String> = sqlx::query_scalar(KEY_IN_USE)
            .bind(identity)
            .bind(format!("{identity} "))
            .bind(format!("{identity}!"))
            .fetch_optional(&self.read)
            .await?;
        Ok(taken.is_some())
    }

    /// Everything a copy request is checked against, read on this thread (`COPY_CONTEXT`).
    pub(crate) fn copy_context(
        &self,
        source_id: &str,
        user_id: &str,
        target_project_id: &str,
        target_server_id: Option<&str>,
    ) -> Result<Option<CopyContext>, DbError> {
        self.read_now(|c| {
            query_first(
                c,
                &COPY_CONTEXT,
                &[&source_id, &user_id, &target_project_id, &target_server_id],
                |r| CopyContext {
                    source: ContainerRow::from_cols(r),
                    member_of_source: r.col("member_of_source"),
                    member_of_target: r.col("member_of_target"),
                    target_project_name: r.col("target_project_name"),
                    target_server_name: r.col("target_server_name"),
                    target_storage_root: r.col("target_storage_root"),
                },
            )
        })
    }

    /// Writes a copy's two rows and the audit entry of its success in one atomic write,
    /// group-committed with the writes queued beside it.
    pub(crate) async fn admit_copy(
        &self,
        copy: NewCopy,
        entry: AuditEntry,
        caps: JobCaps,
    ) -> Result<(), Refusal> {
        self.transact(move |c| {
            if let Some(Admission::TooMany {
                by_user,
                in_project,
            }) = caps.exceeded(c, &copy.requested_by, &copy.project_id)?
            {
                return Err(Refusal::TooMany {
                    by_user,
                    in_project,
                });
            }
            copy.insert(c)?;
            insert_audit(c, &entry).map_err(Refusal::Db)?;
            JobCaps::admitted(c, &copy.requested_by, &copy.project_id);
            Ok(())
        })
        .await
    }

    pub(crate) async fn insert_imported(&self, c: ImportedContainer<'_>) -> Result<(), DbError> {
        self.write(
            "INSERT INTO containers (id, name, project_id, server_id, status, ssh_public_key,
                firewall_rules, network_rules, source_container_id, last_synced_at,
                file_count, size_bytes, created_at, updated_at, command, source_state)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $13, $14, $15)",
            vec![
                Arg::arg(c.id),
                Arg::arg(c.name),
                Arg::arg(c.project_id),
                Arg::arg(c.server_id),
                Arg::arg(c.status.as_str()),
                Arg::arg(c.ssh_public_key),
                Arg::arg(&c.firewall_rules),
                Arg::arg(&c.network_rules),
                Arg::arg(c.source_container_id),
                Arg::arg(c.source_container_id.map(|_| c.now)),
                Arg::arg(c.file_count),
                Arg::arg(c.size_bytes),
                Arg::arg(c.now),
                Arg::arg(&c.command),
                Arg::arg(c.source_state),
            ],
        )
        .await?;
        Ok(())
    }
}
