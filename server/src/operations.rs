//! Starting copies and syncs, cancelling jobs, and snapshots: the business rules behind
//! the API's write endpoints (validation, authorisation, idempotency), shared by REST and
//! the console. The work itself is the job runner's.

use app::model::*;
use std::sync::LazyLock;

use sqlx::Row;

use crate::db::{execute, query_first, unique_violation, Cols, SyncConn};
use crate::ids::{new_id, now_ms};
use crate::jobs::{JobParams, JobStart};
use crate::service::{check_id, internal, ContainerRow, Service, Visibility, CONTAINER_SELECT};

/// Who may change things in a project: its operators and admins, and platform admins.
fn require_operator(role: Option<&Option<Role>>, what: &str) -> Result<(), ApiError> {
    match role {
        None => Err(ApiError::new(
            ErrorCode::NotFound,
            format!("{what} not found"),
        )),
        Some(None) => Ok(()),
        Some(Some(r)) if *r >= Role::Operator => Ok(()),
        Some(Some(_)) => Err(ApiError::forbidden(format!(
            "your role in this project is viewer; {what} needs operator or admin"
        ))),
    }
}

/// Checks an OpenSSH public key (`type base64 [comment]`) and returns it normalised.
pub fn parse_ssh_public_key(key: &str) -> Result<String, String> {
    const TYPES: [&str; 8] = [
        "ssh-ed25519",
        "ssh-rsa",
        "ecdsa-sha2-nistp256",
        "ecdsa-sha2-nistp384",
        "ecdsa-sha2-nistp521",
        "sk-ssh-ed25519@openssh.com",
        "sk-ecdsa-sha2-nistp256@openssh.com",
        "ssh-dss",
    ];
    let key = key.trim();
    if key.contains(['\n', '\r']) {
        return Err("an SSH public key is one line".into());
    }
    let mut parts = key.split_whitespace();
    let (Some(kind), Some(b64)) = (parts.next(), parts.next()) else {
        return Err("expected `<type> <base64> [comment]`, as in a .pub file".into());
    };
    if !TYPES.contains(&kind) {
        return Err(format!("unknown key type {kind:?}"));
    }
    use base64::Engine;
    let blob = base64::engine::general_purpose::STANDARD
        .decode(b64)
        .map_err(|_| "the key data is not valid base64".to_string())?;
    // The blob starts with its own type as an SSH string: it must agree.
    let inner = blob
        .get(..4)
        .map(|l| u32::from_be_bytes([l[0], l[1], l[2], l[3]]) as usize)
        .and_then(|n| blob.get(4..4 + n));
    if inner != Some(kind.as_bytes()) || blob.len() < 4 + kind.len() + 16 {
        return Err("the key data does not match its type".into());
    }
    let comment: Vec<&str> = parts.collect();
    Ok(if comment.is_empty() {
        format!("{kind} {b64}")
    } else {
        format!("{kind} {b64} {}", comment.join(" "))
    })
}

/// The `type base64` part that identifies a key (comments do not make keys different).
fn key_identity(key: &str) -> String {
    key.split_whitespace().take(2).collect::<Vec<_>>().join(" ")
}

fn check_idempotency_key(key: Option<&str>) -> Result<Option<String>, ApiError> {
    match key {
        None => Ok(None),
        Some(k)
            if !k.is_empty() && k.len() <= 200 && k.bytes().all(|b| (0x21..=0x7e).contains(&b)) =>
        {
            Ok(Some(k.to_string()))
        }
        Some(_) => Err(ApiError::invalid(
            "Idempotency-Key must be 1 to 200 visible ASCII characters",
        )),
    }
}

/// The rows a copy request creates: the new container (status `copying`) and its job.
struct NewCopy {
    id: String,
    job_id: String,
    name: String,
    project_id: String,
    server_id: String,
    source_id: String,
    ssh_public_key: Option<String>,
    firewall_rules: String,
    network_rules: String,
    requested_by: String,
    params: String,
    idempotency_key: Option<String>,
    now: i64,
}

/// Why the rows of a copy were not written: a unique index said no, or the database failed.
enum Refusal {
    NameTaken,
    KeyTaken,
    SameIdempotencyKey,
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

impl NewCopy {
    /// Both rows, in the caller's transaction.
    fn insert(&self, c: &SyncConn) -> Result<(), Refusal> {
        execute(
            c,
            "INSERT INTO containers (id, name, project_id, server_id, status, ssh_public_key,
                firewall_rules, network_rules, source_container_id, created_at, updated_at)
             VALUES ($1, $2, $3, $4, 'copying', $5, $6, $7, $8, $9, $9)",
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
            ],
        )?;
        execute(
            c,
            "INSERT INTO jobs (id, kind, status, project_id, container_id, source_container_id,
                requested_by, params, idempotency_key, created_at)
             VALUES ($1, 'copy', 'queued', $2, $3, $4, $5, $6, $7, $8)",
            &[
                &self.job_id,
                &self.project_id,
                &self.id,
                &self.source_id,
                &self.requested_by,
                &self.params,
                &self.idempotency_key,
                &self.now,
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
            (SELECT name FROM projects WHERE id = $3) AS target_project_name,
            ts.name AS target_server_name, ts.storage_root AS target_storage_root
         FROM ({CONTAINER_SELECT} WHERE c.id = $1) x
         LEFT JOIN servers ts ON ts.id = COALESCE($4, x.server_id)"
    )
});

/// A row of `COPY_CONTEXT`.
struct CopyContext {
    source: ContainerRow,
    member_of_source: Option<String>,
    member_of_target: Option<String>,
    target_project_name: Option<String>,
    target_server_name: Option<String>,
    target_storage_root: Option<String>,
}

impl Service {
    async fn job_by_idempotency_key(
        &self,
        user: &UserInfo,
        key: &str,
    ) -> Result<Option<Job>, ApiError> {
        let row =
            sqlx::query("SELECT * FROM jobs WHERE requested_by = $1 AND idempotency_key = $2")
                .bind(&user.id)
                .bind(key)
                .fetch_optional(&self.db.read)
                .await
                .map_err(internal)?;
        Ok(row.as_ref().map(crate::service::job_from_row))
    }

    /// `POST /containers/{id}/copy`: validates everything, creates the container (status
    /// `copying`) and its job in one transaction, and queues the job.
    pub async fn start_copy(
        &self,
        user: &UserInfo,
        source_id: &str,
        req: CopyRequest,
        idempotency_key: Option<&str>,
    ) -> Result<CopyStarted, ApiError> {
        use app::backend::Backend;
        let idem = check_idempotency_key(idempotency_key)?;
        if let Some(key) = &idem {
            if let Some(job) = self.job_by_idempotency_key(user, key).await? {
                let container = self.get_container(user, &job.container_id).await?;
                return Ok(CopyStarted { container, job });
            }
        }
        check_id("container id", source_id)?;
        let ctx = self
            .db
            .read_now(|c| {
                query_first(
                    c,
                    &COPY_CONTEXT,
                    &[
                        &source_id,
                        &user.id,
                        &req.target_project_id,
                        &req.target_server_id,
                    ],
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
            .map_err(internal)?;
        let Some(ctx) = ctx else {
            return Err(ApiError::not_found("container", source_id));
        };
        let source_row = ctx.source;
        let visibility = Visibility::of(
            user,
            std::iter::once((source_row.project_id.clone(), ctx.member_of_source)).chain(
                ctx.target_project_name
                    .is_some()
                    .then(|| (req.target_project_id.clone(), ctx.member_of_target)),
            ),
        );
        if !visibility.can_see(&source_row.project_id) {
            return Err(ApiError::not_found("container", source_id));
        }
        let source = source_row.summary(&visibility);
        let vis = &visibility.roles;
        if !is_valid_id(&req.target_project_id) {
            return Err(ApiError::invalid(
                "target_project_id must be 24 lowercase hex digits",
            ));
        }
        require_operator(vis.get(&req.target_project_id), "the target project")?;
        let server_id = req
            .target_server_id
            .clone()
            .unwrap_or_else(|| source.server_id.clone());
        if !is_valid_id(&server_id) {
            return Err(ApiError::invalid(
                "target_server_id must be 24 lowercase hex digits",
            ));
        }
        let (Some(project_name), Some(server_name), Some(storage_root)) = (
            ctx.target_project_name,
            ctx.target_server_name,
            ctx.target_storage_root,
        ) else {
            return Err(ApiError::not_found("server", &server_id));
        };
        let snapshot_id = match &req.source_snapshot {
            None => None,
            Some(s) => Some(
                sqlx::query_scalar::<_, String>(
                    "SELECT id FROM snapshots WHERE container_id = $1 AND (name = $2 OR id = $2)",
                )
                .bind(source_id)
                .bind(s)
                .fetch_optional(&self.db.read)
                .await
                .map_err(internal)?
                .ok_or_else(|| {
                    ApiError::new(
                        ErrorCode::Unprocessable,
                        format!("source_snapshot {s:?} is not a snapshot of this container"),
                    )
                })?,
            ),
        };
        let key = match &req.ssh_public_key {
            None => None,
            Some(k) => Some(parse_ssh_public_key(k).map_err(|m| {
                ApiError::new(ErrorCode::Unprocessable, format!("ssh_public_key: {m}"))
            })?),
        };
        if let Some(k) = &key {
            let ident = key_identity(k);
            let taken: Option<String> = sqlx::query_scalar(
                "SELECT id FROM containers WHERE ssh_public_key = $1 OR ssh_public_key LIKE $2",
            )
            .bind(&ident)
            .bind(format!("{ident} %"))
            .fetch_optional(&self.db.read)
            .await
            .map_err(internal)?;
            if taken.is_some() {
                return Err(ApiError::new(
                    ErrorCode::Conflict,
                    "ssh_public_key is already used by another container; keys are unique",
                ));
            }
        }
        let name = match &req.name {
            Some(n) => {
                validate_container_name(n)
                    .map_err(|m| ApiError::new(ErrorCode::Unprocessable, format!("name: {m}")))?;
                // Taken or not, the insert below says: UNIQUE (project_id, name).
                n.clone()
            }
            None => {
                self.generate_name(&req.target_project_id, &source.name)
                    .await?
            }
        };

        let id = new_id();
        let job_id = new_id();
        let now = now_ms();
        let firewall = if req.copy_firewall_rules {
            serde_json::from_str(&source_row.firewall_rules).map_err(internal)?
        } else {
            Vec::new()
        };
        let network = if req.copy_network_rules {
            serde_json::from_str(&source_row.network_rules).map_err(internal)?
        } else {
            Vec::new()
        };
        let params = JobParams {
            source_snapshot_id: snapshot_id,
            previous_status: None,
        };
        // Both rows in one atomic write (group-committed with the writes queued beside it).
        let row = NewCopy {
            id: id.clone(),
            job_id: job_id.clone(),
            name: name.clone(),
            project_id: req.target_project_id.clone(),
            server_id: server_id.clone(),
            source_id: source_id.to_string(),
            ssh_public_key: key.clone(),
            firewall_rules: serde_json::to_string(&firewall).map_err(internal)?,
            network_rules: serde_json::to_string(&network).map_err(internal)?,
            requested_by: user.id.clone(),
            params: serde_json::to_string(&params).map_err(internal)?,
            idempotency_key: idem.clone(),
            now,
        };
        let written = self.db.transact(move |c| row.insert(c)).await;
        // A retry that raced its first attempt (the same idempotency key, so the same name
        // too) is answered with the job that won, which is committed by now.
        if let (Err(Refusal::NameTaken | Refusal::SameIdempotencyKey), Some(key)) =
            (&written, &idem)
        {
            if let Some(job) = self.job_by_idempotency_key(user, key).await? {
                let container = self.get_container(user, &job.container_id).await?;
                return Ok(CopyStarted { container, job });
            }
        }
        match written {
            Ok(()) => {}
            Err(Refusal::SameIdempotencyKey) => return Err(ApiError::internal()),
            Err(Refusal::NameTaken) => {
                return Err(ApiError::new(
                    ErrorCode::Conflict,
                    format!("a container named {name:?} already exists in the target project"),
                ))
            }
            Err(Refusal::KeyTaken) => {
                return Err(ApiError::new(
                    ErrorCode::Conflict,
                    "ssh_public_key is already used by another container; keys are unique",
                ))
            }
            Err(Refusal::Db(e)) => return Err(internal(e)),
        }
        // The answer is what was just written: no need to read it back.
        let job = Job {
            id: job_id.clone(),
            kind: JobKind::Copy,
            status: JobStatus::Queued,
            phase: None,
            project_id: req.target_project_id.clone(),
            container_id: id.clone(),
            source_container_id: source_id.to_string(),
            progress: None,
            summary: None,
            error: None,
            created_at: now,
            started_at: None,
            finished_at: None,
            url: format!("/api/v1/jobs/{job_id}"),
            events_url: format!("/api/v1/jobs/{job_id}/events"),
        };
        self.jobs.hub.publish("status", job.clone());
        // The runner starts from what was checked here, without reading it back.
        self.jobs.spawn(
            job_id,
            Some(JobStart {
                kind: JobKind::Copy,
                params,
                target_id: id.clone(),
                source_id: source_id.to_string(),
                target_server: server_id.clone(),
                target_root: storage_root.clone().into(),
                source_root: source_row.storage_root.clone().into(),
            }),
        );
        let container = ContainerDetail {
            summary: ContainerSummary {
                id: id.clone(),
                name,
                status: ContainerStatus::Copying,
                project_id: req.target_project_id,
                project_name,
                server_id,
                server_name,
                is_copy: true,
                source: Some(ContainerRef {
                    id: source.id.clone(),
                    name: source.name.clone(),
                    project_id: source.project_id.clone(),
                    project_name: source.project_name.clone(),
                }),
                created_at: now,
            },
            status_reason: None,
            ssh_public_key: key,
            firewall_rules: firewall,
            network_rules: network,
            snapshots: Vec::new(),
            copies: Vec::new(),
            source_state: None,
            last_synced_at: None,
            file_count: 0,
            size_bytes: 0,
            updated_at: now,
            root_path: user.is_admin.then(|| {
                crate::config::container_root(std::path::Path::new(&storage_root), &id)
                    .display()
                    .to_string()
            }),
        };
        Ok(CopyStarted { container, job })
    }

    /// `<source>-copy`, then `<source>-copy-2`, `-3`, ...: the first free name (one query,
    /// however many copies exist).
    pub async fn generate_name(&self, project_id: &str, source: &str) -> Result<String, ApiError> {
        let base: String = source
            .chars()
            .take(50)
            .collect::<String>()
            .trim_end_matches('-')
            .to_string();
        let prefix = format!("{base}-copy");
        let taken: std::collections::HashSet<String> = sqlx::query_scalar(
            "SELECT name FROM containers WHERE project_id = $1 AND substr(name, 1, $2) = $3",
        )
        .bind(project_id)
        .bind(prefix.chars().count() as i64)
        .bind(&prefix)
        .fetch_all(&self.db.read)
        .await
        .map_err(internal)?
        .into_iter()
        .collect();
        (1..1000)
            .map(|n| match n {
                1 => prefix.clone(),
                n => format!("{prefix}-{n}"),
            })
            .find(|candidate| !taken.contains(candidate))
            .ok_or_else(|| ApiError::new(ErrorCode::Conflict, "no free name; give one"))
    }

    /// `POST /containers/{id}/sync`: one sync at a time per container (a second request
    /// gets 409 naming the running job).
    pub async fn start_sync(
        &self,
        user: &UserInfo,
        id: &str,
        idempotency_key: Option<&str>,
    ) -> Result<Job, ApiError> {
        use app::backend::Backend;
        let idem = check_idempotency_key(idempotency_key)?;
        if let Some(key) = &idem {
            if let Some(job) = self.job_by_idempotency_key(user, key).await? {
                return Ok(job);
            }
        }
        let c = self.get_container(user, id).await?;
        let vis = self.visibility_roles(user).await?;
        require_operator(vis.get(&c.summary.project_id), "syncing this container")?;
        let source_id: Option<String> =
            sqlx::query_scalar("SELECT source_container_id FROM containers WHERE id = $1")
                .bind(id)
                .fetch_one(&self.db.read)
                .await
                .map_err(internal)?;
        let Some(source_id) = source_id else {
            return Err(ApiError::new(
                ErrorCode::Conflict,
                "this container was not created by copy, so it has no source to sync from",
            ));
        };
        let source_status: Option<String> =
            sqlx::query_scalar("SELECT status FROM containers WHERE id = $1")
                .bind(&source_id)
                .fetch_optional(&self.db.read)
                .await
                .map_err(internal)?;
        match source_status.as_deref() {
            None | Some("deleting") => {
                return Err(ApiError::new(
                    ErrorCode::Conflict,
                    "the source of this copy no longer exists",
                ))
            }
            Some("copying") | Some("failed") => {
                return Err(ApiError::new(
                    ErrorCode::Conflict,
                    "the source has no complete tree to sync from",
                ))
            }
            _ => {}
        }
        let conflict = |m: String| ApiError::new(ErrorCode::Conflict, m);
        // The status to come back to after the sync.
        let previous = match c.summary.status {
            s @ (ContainerStatus::Copying | ContainerStatus::Deleting) => {
                return Err(conflict(format!(
                    "the container is {}; it can be synced once that is done",
                    s.as_str()
                )))
            }
            // A copy that never completed has no tree: a sync cannot repair that.
            ContainerStatus::Failed if c.source_state.is_none() => {
                return Err(conflict("the copy never completed; make a new copy".into()))
            }
            // Still "syncing" after a crash, or failed: a completed sync leaves it running.
            ContainerStatus::Syncing | ContainerStatus::Failed => ContainerStatus::Running,
            s => s,
        };
        let job_id = new_id();
        let params = JobParams {
            source_snapshot_id: None,
            previous_status: Some(previous.as_str().into()),
        };
        // Insert only if no job is active for this container, in one statement: SQLite runs
        // writes one at a time, so two racing requests cannot both get in.
        let res = sqlx::query(
            "INSERT INTO jobs (id, kind, status, project_id, container_id, source_container_id,
                requested_by, params, idempotency_key, created_at)
             SELECT $1, 'sync', 'queued', $2, $3, $4, $5, $6, $7, $8
             WHERE NOT EXISTS (SELECT 1 FROM jobs WHERE container_id = $3 AND status IN ('queued', 'running'))",
        )
        .bind(&job_id)
        .bind(&c.summary.project_id)
        .bind(id)
        .bind(&source_id)
        .bind(&user.id)
        .bind(serde_json::to_string(&params).map_err(internal)?)
        .bind(&idem)
        .bind(now_ms())
        .execute(&self.db.write)
        .await
        .map_err(internal)?;
        if res.rows_affected() == 0 {
            let running: Option<String> = sqlx::query_scalar(
                "SELECT id FROM jobs WHERE container_id = $1 AND status IN ('queued', 'running') LIMIT 1",
            )
            .bind(id)
            .fetch_optional(&self.db.read)
            .await
            .map_err(internal)?;
            return Err(ApiError::new(
                ErrorCode::Conflict,
                format!(
                    "a job is already running for this container: {}",
                    running
                        .map(|j| format!("/api/v1/jobs/{j}"))
                        .unwrap_or_default()
                ),
            ));
        }
        // Announced as queued before the runner can announce it running.
        let job = self.jobs.load(&job_id).await.map_err(internal)?;
        self.jobs.hub.publish("status", job.clone());
        self.jobs.spawn(job_id, None);
        Ok(job)
    }

    /// `POST /jobs/{id}/cancel`.
    pub async fn cancel_job(&self, user: &UserInfo, id: &str) -> Result<Job, ApiError> {
        let job = self.get_job(user, id).await?;
        let vis = self.visibility_roles(user).await?;
        require_operator(vis.get(&job.project_id), "cancelling this job")?;
        if job.status.is_final() {
            return Err(ApiError::new(
                ErrorCode::Conflict,
                format!("the job has already {}", job.status.as_str()),
            ));
        }
        // A queued job is marked at once (the runner sees it when it gets a slot); a
        // running one stops at its next check and the runner records it.
        sqlx::query("UPDATE jobs SET status = 'cancelled' WHERE id = $1 AND status = 'queued'")
            .bind(id)
            .execute(&self.db.write)
            .await
            .map_err(internal)?;
        self.jobs.cancel(id);
        self.get_job(user, id).await
    }

    pub async fn list_snapshots(
        &self,
        user: &UserInfo,
        container_id: &str,
    ) -> Result<Vec<Snapshot>, ApiError> {
        use app::backend::Backend;
        Ok(self.get_container(user, container_id).await?.snapshots)
    }

    /// `POST /containers/{id}/snapshots`: freezes the current tree under a name.
    pub async fn create_snapshot(
        &self,
        user: &UserInfo,
        container_id: &str,
        name: &str,
    ) -> Result<Snapshot, ApiError> {
        use app::backend::Backend;
        let c = self.get_container(user, container_id).await?;
        let vis = self.visibility_roles(user).await?;
        require_operator(vis.get(&c.summary.project_id), "taking a snapshot")?;
        validate_container_name(name)
            .map_err(|m| ApiError::new(ErrorCode::Unprocessable, format!("name: {m}")))?;
        if c.snapshots.iter().any(|s| s.name == name) {
            return Err(ApiError::new(
                ErrorCode::Conflict,
                format!("a snapshot named {name:?} exists"),
            ));
        }
        if matches!(
            c.summary.status,
            ContainerStatus::Copying | ContainerStatus::Failed
        ) {
            return Err(ApiError::new(
                ErrorCode::Conflict,
                "the container has no complete tree yet",
            ));
        }
        let id = crate::inventory::create_snapshot(&self.db, container_id, name)
            .await
            .map_err(|e| match e {
                crate::inventory::InventoryError::Exists(m) => {
                    ApiError::new(ErrorCode::Conflict, format!("{m} already exists"))
                }
                e => internal(e),
            })?;
        let row = sqlx::query(
            "SELECT id, name, created_at, file_count, size_bytes FROM snapshots WHERE id = $1",
        )
        .bind(&id)
        .fetch_one(&self.db.read)
        .await
        .map_err(internal)?;
        Ok(Snapshot {
            id: row.get("id"),
            name: row.get("name"),
            created_at: row.get("created_at"),
            file_count: row.get("file_count"),
            size_bytes: row.get("size_bytes"),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ssh_keys_are_parsed_not_just_pattern_matched() {
        // A real ed25519 key (test data only).
        let k = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIAABAgMEBQYHCAkKCwwNDg8QERITFBUWFxgZGhscHR4f me@laptop";
        assert!(
            parse_ssh_public_key(&format!("{k}\nssh-rsa AAAA")).is_err(),
            "one line only"
        );
        assert_eq!(parse_ssh_public_key(&format!("  {k}\n")).unwrap(), k);
        assert_eq!(parse_ssh_public_key("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIAABAgMEBQYHCAkKCwwNDg8QERITFBUWFxgZGhscHR4f  a b").unwrap(), "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIAABAgMEBQYHCAkKCwwNDg8QERITFBUWFxgZGhscHR4f a b");
        assert!(parse_ssh_public_key("ssh-ed25519").is_err());
        assert!(parse_ssh_public_key("ssh-foo AAAA").is_err());
        assert!(parse_ssh_public_key("ssh-ed25519 not*base64").is_err());
        // Valid base64 of a blob announcing another type.
        assert!(parse_ssh_public_key("ssh-ed25519 AAAAB3NzaC1yc2EAAAADAQABAAABAQC7").is_err());
        assert_eq!(
            key_identity(k),
            "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIAABAgMEBQYHCAkKCwwNDg8QERITFBUWFxgZGhscHR4f"
        );
    }
}
