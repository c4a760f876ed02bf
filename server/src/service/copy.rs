//! Starting a copy: validation, authorisation and idempotency, then the new container
//! (status `copying`) and its job in one commit, handed to the job runner. The work itself
//! is the runner's.

use std::path::Path;

use app::model::*;

use super::audit::Committed;
use super::jobs::{check_idempotency_key, parse_bwlimit, request_fingerprint};
use super::visibility::Visibility;
use super::{check_id, internal, Service};
use crate::config::container_root;
use crate::engine::fsx;
use crate::ids::{new_id, now_ms};
use crate::jobs::{JobParams, JobStart};
use crate::store::{ContainerRow, NewCopy, Refusal};

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
    // The blob is the key itself, in SSH's wire format: it must be whole, of the type it
    // says, and nothing more (a cut key, or one with bytes added, is refused).
    key_blob_is(kind, &blob)?;
    let comment: Vec<&str> = parts.collect();
    let comment_len: usize = comment.iter().map(|c| c.chars().count() + 1).sum();
    if comment_len > MAX_KEY_COMMENT {
        return Err(format!(
            "the comment after the key is at most {MAX_KEY_COMMENT} characters"
        ));
    }
    if comment.iter().any(|c| c.chars().any(char::is_control)) {
        return Err("the comment after the key has control characters".into());
    }
    Ok(if comment.is_empty() {
        format!("{kind} {b64}")
    } else {
        format!("{kind} {b64} {}", comment.join(" "))
    })
}

/// The longest comment a key may carry (a name, an address: a .pub file's).
const MAX_KEY_COMMENT: usize = 1024;

/// Checks that `blob` is exactly a public key of type `kind` in SSH's wire format
/// (RFC 4253 6.6, RFC 5656 3.1, OpenSSH's PROTOCOL.u2f): its fields, their sizes, and no
/// bytes after them.
fn key_blob_is(kind: &str, blob: &[u8]) -> Result<(), String> {
    const BAD: &str = "the key data is not a whole key of its type";
    let mut rest = blob;
    // One SSH string (a u32 length, then that many bytes).
    let mut string = || -> Result<&[u8], String> {
        let len = rest.get(..4).ok_or(BAD)?;
        let len = u32::from_be_bytes([len[0], len[1], len[2], len[3]]) as usize;
        let value = rest.get(4..4 + len).ok_or(BAD)?;
        rest = &rest[4 + len..];
        Ok(value)
    };
    if string()? != kind.as_bytes() {
        return Err("the key data does not match its type".into());
    }
    let ecdsa_point = |curve: &[u8], point: &[u8], name: &str, size: usize| {
        curve == name.as_bytes() && point.len() == 1 + 2 * size && point[0] == 4
    };
    let ok = match kind {
        "ssh-ed25519" => string()?.len() == 32,
        "sk-ssh-ed25519@openssh.com" => string()?.len() == 32 && !string()?.is_empty(),
        "ssh-rsa" => {
            let (e, n) = (string()?, string()?);
            // (mpints: a leading zero byte keeps a high bit from reading as a sign.)
            let bits = n.iter().skip_while(|b| **b == 0).count() * 8;
            !e.is_empty() && (1024..=16384).contains(&bits)
        }
        "ecdsa-sha2-nistp256" => ecdsa_point(string()?, string()?, "nistp256", 32),
        "ecdsa-sha2-nistp384" => ecdsa_point(string()?, string()?, "nistp384", 48),
        "ecdsa-sha2-nistp521" => ecdsa_point(string()?, string()?, "nistp521", 66),
        "sk-ecdsa-sha2-nistp256@openssh.com" => {
            ecdsa_point(string()?, string()?, "nistp256", 32) && !string()?.is_empty()
        }
        "ssh-dss" => (0..4).all(|_| string().is_ok_and(|v| !v.is_empty())),
        _ => false,
    };
    if !ok || !rest.is_empty() {
        return Err(BAD.into());
    }
    Ok(())
}

/// The `type base64` part that identifies a key (comments do not make keys different).
fn key_identity(key: &str) -> String {
    key.split_whitespace().take(2).collect::<Vec<_>>().join(" ")
}

impl NewCopy {
    /// The job as written.
    fn job(&self) -> Job {
        Job {
            id: self.job_id.clone(),
            kind: JobKind::Copy,
            status: JobStatus::Queued,
            phase: None,
            project_id: self.project_id.clone(),
            container_id: self.id.clone(),
            source_container_id: self.source_id.clone(),
            progress: None,
            waiting_for: None,
            summary: None,
            error: None,
            created_at: self.now,
            started_at: None,
            finished_at: None,
            url: Job::url_of(&self.job_id),
            events_url: Job::events_url_of(&self.job_id),
        }
    }

    /// The container as written, as `user` sees it.
    fn container(
        &self,
        user: &UserInfo,
        source: &ContainerSummary,
        target: Target,
    ) -> Result<ContainerDetail, ApiError> {
        Ok(ContainerDetail {
            summary: ContainerSummary {
                id: self.id.clone(),
                name: self.name.clone(),
                status: ContainerStatus::Copying,
                project_id: target.project_id,
                project_name: target.project_name,
                server_id: target.server_id,
                server_name: target.server_name,
                is_copy: true,
                source: Some(ContainerRef {
                    id: source.id.clone(),
                    name: source.name.clone(),
                    project_id: source.project_id.clone(),
                    project_name: source.project_name.clone(),
                }),
                created_at: self.now,
            },
            status_reason: None,
            ssh_public_key: self.ssh_public_key.clone(),
            firewall_rules: serde_json::from_str(&self.firewall_rules).map_err(internal)?,
            network_rules: serde_json::from_str(&self.network_rules).map_err(internal)?,
            command: serde_json::from_str(&self.command).map_err(internal)?,
            started_at: None,
            stopped_at: None,
            exit_code: None,
            interfaces: Vec::new(),
            snapshots: Vec::new(),
            copies: Vec::new(),
            source_state: None,
            last_synced_at: None,
            file_count: 0,
            size_bytes: 0,
            updated_at: self.now,
            // Only an operator of the target project gets this far.
            may_change: true,
            source_deleted: false,
            root_path: (user.is_admin
                && user.scope.projects.is_none()
                && !target.storage_root.is_empty())
            .then(|| {
                container_root(Path::new(&target.storage_root), &self.id)
                    .display()
                    .to_string()
            }),
            // (Not made yet.)
            tree: None,
        })
    }
}

/// Where a copy goes, once the caller may put it there.
struct Target {
    project_id: String,
    project_name: String,
    server_id: String,
    server_name: String,
    storage_root: String,
}

/// What a copy must leave free on its target's filesystem beyond the tree itself: room for
/// the database and the manifests, and for the source to have grown a little. 64 MiB, or a
/// twentieth of a smaller filesystem.
const FREE_SPACE_RESERVE: u64 = 64 << 20;

/// Whether a tree copied from the storage root `source` to `target` (both of this host)
/// shares its extents: one filesystem, which shares them.
fn shares_extents(source: &str, target: &str) -> bool {
    use std::os::unix::fs::MetadataExt;
    if source.is_empty() || target.is_empty() {
        return false;
    }
    let device = |root: &str| std::fs::metadata(root).map(|m| m.dev()).ok();
    matches!((device(source), device(target)), (Some(a), Some(b)) if a == b)
        && fsx::kernel_copy_support(Path::new(target)) == Some(fsx::KernelCopy::Reflink)
}

/// `size` bytes more fit on the server named `server` whose storage is `storage_root`
/// (`what` takes them: "the copy"), or 507 saying how much is missing. (A tree that grew
/// since it was last measured can still fill the disk: then the job fails, and the engine
/// gives the space back.)
///
/// Where the target lays trees down as image trees (`image_trees`), what it must leave
/// free is at least the margin its keeper keeps free of them (`engine::image_room`): a
/// copy into that room would fail half way with "no space left".
pub(super) fn check_free_space(
    (server, storage_root): (&str, &str),
    agent_space: Option<(u64, u64)>,
    image_trees: bool,
    size: i64,
    what: &str,
) -> Result<(), ApiError> {
    // An agent's as it last said; this host's read now.
    let space = match agent_space {
        Some(space) => Ok(space),
        None if storage_root.is_empty() => return Ok(()),
        None => fsx::free_space(Path::new(storage_root)),
    };
    let (free, total) = match space {
        Ok(space) => space,
        Err(e) => {
            tracing::warn!(server = %server, error = %e, "cannot read free space");
            return Ok(());
        }
    };
    let (reserve, kept) = match image_trees {
        true => (
            crate::engine::image_room::margin(total),
            "kept free for its image trees' writes",
        ),
        false => (FREE_SPACE_RESERVE.min(total / 20), "to spare"),
    };
    let need = (size.max(0) as u64).saturating_add(reserve);
    if need > free {
        return Err(ApiError::new(
            ErrorCode::InsufficientStorage,
            format!(
                "not enough space on server {server}: {what} needs about {} MiB ({} MiB of \
                 data and {} MiB {kept}), {} MiB are free",
                need.div_ceil(1 << 20),
                (size.max(0) as u64).div_ceil(1 << 20),
                reserve.div_ceil(1 << 20),
                free >> 20
            ),
        ));
    }
    Ok(())
}

/// Whether `e` is the refusal of a copy's name as taken.
fn is_name_taken(e: &ApiError) -> bool {
    e.code == ErrorCode::Conflict && e.field.as_deref() == Some("name")
}

const KEY_TAKEN: &str = "ssh_public_key is already used by another container; keys are unique";

impl Service {
    /// `POST /containers/{id}/copy`: validates everything, creates the container (status
    /// `copying`) and its job in one commit, and queues the job.
    pub async fn copy_container(
        &self,
        user: &UserInfo,
        source_id: &str,
        req: CopyRequest,
        idempotency_key: Option<&str>,
        options: &TransferOptions,
    ) -> Result<CopyStarted, ApiError> {
        let project = is_valid_id(&req.target_project_id).then(|| req.target_project_id.clone());
        let target = source_id.to_string();
        self.audited_with(
            user,
            "container.copy",
            &target,
            project,
            |entry| async move {
                let idem = check_idempotency_key(idempotency_key)?;
                let body = serde_json::to_string(&req).map_err(internal)?;
                let limit = options.bwlimit.as_deref().unwrap_or_default();
                let fingerprint = request_fingerprint(&["copy", source_id, &body, limit]);
                if let Some(started) = self
                    .copy_started_with(user, idem.as_deref(), &fingerprint)
                    .await?
                {
                    return Ok((started, Committed::No));
                }
                check_id("container id", source_id)?;
                let (source, visibility, target) =
                    self.copy_source_and_target(user, source_id, &req)?;
                let bwlimit = parse_bwlimit(options.bwlimit.as_deref())?;
                let snapshot_id = self
                    .snapshot_of(source_id, req.source_snapshot.as_deref())
                    .await?;
                let key = self.unused_ssh_key(req.ssh_public_key.as_deref()).await?;
                let name = match &req.name {
                    Some(n) => {
                        validate_container_name(n).map_err(|m| {
                            ApiError::new(ErrorCode::Unprocessable, format!("name: {m}"))
                                .on_field("name")
                        })?;
                        // Taken or not, the insert says: UNIQUE (project_id, name).
                        n.clone()
                    }
                    None => self.generate_name(&target.project_id, &source.name).await?,
                };
                let agent = self.agents.view(&target.server_id).and_then(|v| v.status);
                let agent_space = agent.as_ref().map(|st| (st.free_bytes, st.total_bytes));
                // (An agent says; this host's is asked only where it lays image trees at all.)
                let image_trees = match &agent {
                    Some(st) => st.image_trees.is_some(),
                    None => {
                        !target.storage_root.is_empty()
                            && super::image_trees_in(Path::new(&target.storage_root)).is_some()
                    }
                };
                // A copy that shares its source's extents (a reflink, a btrfs snapshot, a clone
                // of an image) takes next to nothing of its filesystem: only the reserve is
                // checked.
                let size = if shares_extents(&source.storage_root, &target.storage_root) {
                    0
                } else {
                    source.size_bytes
                };
                let room = (target.server_name.as_str(), target.storage_root.as_str());
                check_free_space(room, agent_space, image_trees, size, "the copy")?;
                // The source's rules as stored, or none.
                let rules =
                    |copy: bool, json: &str| if copy { json.to_string() } else { "[]".into() };
                let params = JobParams {
                    source_snapshot_id: snapshot_id,
                    previous_status: None,
                    bwlimit,
                };
                let mut row = NewCopy {
                    id: new_id(),
                    job_id: new_id(),
                    name,
                    project_id: target.project_id.clone(),
                    server_id: target.server_id.clone(),
                    source_id: source_id.to_string(),
                    ssh_public_key: key,
                    firewall_rules: rules(req.copy_firewall_rules, &source.firewall_rules),
                    network_rules: rules(req.copy_network_rules, &source.network_rules),
                    // What runs in it runs in its copy (with the copy's own identity and address).
                    command: source.command.clone(),
                    requested_by: user.id.clone(),
                    params: serde_json::to_string(&params).map_err(internal)?,
                    request_fingerprint: idem.is_some().then(|| fingerprint.clone()),
                    idempotency_key: idem,
                    now: now_ms(),
                };
                // A name made here may be taken meanwhile by a copy admitted beside this one
                // (concurrent requests without a name): the next free one is taken instead.
                let mut tries = 0;
                loop {
                    match self.admit_copy(user, &row, entry.clone()).await {
                        Ok(Some(started)) => return Ok((started, Committed::No)),
                        Ok(None) => break,
                        Err(e) if req.name.is_none() && tries < 8 && is_name_taken(&e) => {
                            tries += 1;
                            row.name = self.generate_name(&row.project_id, &source.name).await?;
                        }
                        Err(e) => return Err(e),
                    }
                }
                // The answer is what was just written: no need to read it back.
                let job = row.job();
                self.jobs.hub.publish(EventKind::Status, job.clone());
                // The runner starts from what was checked here, without reading it back.
                self.jobs.spawn(
                    job.id.clone(),
                    Some(JobStart {
                        kind: JobKind::Copy,
                        params,
                        target_id: row.id.clone(),
                        source_id: row.source_id.clone(),
                        target_server: target.server_id.clone(),
                        source_server: source.server_id.clone(),
                        target_root: target.storage_root.clone().into(),
                        source_root: source.storage_root.clone().into(),
                        target_name: row.name.clone(),
                        target_ssh_key: row.ssh_public_key.clone(),
                    }),
                );
                let container = row.container(user, &source.summary(&visibility), target)?;
                Ok((CopyStarted { container, job }, Committed::Yes))
            },
        )
        .await
    }

    /// The copy this user already started with this idempotency key, if any.
    async fn copy_started_with(
        &self,
        user: &UserInfo,
        idempotency_key: Option<&str>,
        fingerprint: &str,
    ) -> Result<Option<CopyStarted>, ApiError> {
        let Some(key) = idempotency_key else {
            return Ok(None);
        };
        match self.job_by_idempotency_key(user, key, fingerprint).await? {
            Some(job) => {
                let container = self.get_container(user, &job.container_id).await?;
                Ok(Some(CopyStarted { container, job }))
            }
            None => Ok(None),
        }
    }

    /// The source (visible to the caller) and the target (where the caller may create
    /// containers), from one read.
    fn copy_source_and_target(
        &self,
        user: &UserInfo,
        source_id: &str,
        req: &CopyRequest,
    ) -> Result<(ContainerRow, Visibility, Target), ApiError> {
        let ctx = self
            .db
            .copy_context(
                source_id,
                &user.id,
                &req.target_project_id,
                req.target_server_id.as_deref(),
            )
            .map_err(internal)?;
        let Some(ctx) = ctx else {
            return Err(ApiError::not_found("container", source_id));
        };
        let source = ctx.source;
        let visibility = Visibility::of(
            user,
            std::iter::once((source.project_id.clone(), ctx.member_of_source)).chain(
                ctx.target_project_name
                    .is_some()
                    .then(|| (req.target_project_id.clone(), ctx.member_of_target)),
            ),
        );
        if !visibility.can_see(&source.project_id) {
            return Err(ApiError::not_found("container", source_id));
        }
        visibility.require_source_operator(&source.project_id, "copying this container")?;
        if source.status == ContainerStatus::Deleting.as_str() {
            return Err(ApiError::new(
                ErrorCode::Conflict,
                format!("{} is being deleted", source.name),
            ));
        }
        // Still being copied, or a copy, sync or delete of it failed: no complete tree to
        // copy (as a sync from it is refused). A job would only fail, leaving another
        // failed container.
        if [ContainerStatus::Copying, ContainerStatus::Failed]
            .iter()
            .any(|s| source.status == s.as_str())
        {
            let why = match &source.status_reason {
                Some(reason) => format!(" ({reason})"),
                None => String::new(),
            };
            return Err(ApiError::new(
                ErrorCode::Conflict,
                format!(
                    "{} is {}{why}: it has no complete tree to copy",
                    source.name, source.status
                ),
            ));
        }
        if !is_valid_id(&req.target_project_id) {
            return Err(
                ApiError::invalid("target_project_id must be 24 lowercase hex digits")
                    .on_field("target_project_id"),
            );
        }
        if !visibility.can_see(&req.target_project_id) {
            return Err(
                ApiError::not_found("target project", &req.target_project_id)
                    .on_field("target_project_id"),
            );
        }
        visibility
            .require_operator(&req.target_project_id, "copying into it")
            .map_err(|e| e.on_field("target_project_id"))?;
        let server_id = req
            .target_server_id
            .clone()
            .unwrap_or_else(|| source.server_id.clone());
        if !is_valid_id(&server_id) {
            return Err(
                ApiError::invalid("target_server_id must be 24 lowercase hex digits")
                    .on_field("target_server_id"),
            );
        }
        let (Some(project_name), Some(server_name), Some(storage_root)) = (
            ctx.target_project_name,
            ctx.target_server_name,
            ctx.target_storage_root,
        ) else {
            return Err(ApiError::not_found("server", &server_id).on_field("target_server_id"));
        };
        if storage_root.is_empty() && !self.agents.is_agent(&server_id) {
            return Err(ApiError::new(
                ErrorCode::Conflict,
                format!("server {server_name} has no host yet: it joins with `doppel agent join`"),
            )
            .on_field("target_server_id"));
        }
        let target = Target {
            project_id: req.target_project_id.clone(),
            project_name,
            server_id,
            server_name,
            storage_root,
        };
        Ok((source, visibility, target))
    }

    /// The id of the source's snapshot named (by name or id) in the request.
    async fn snapshot_of(
        &self,
        source_id: &str,
        snapshot: Option<&str>,
    ) -> Result<Option<String>, ApiError> {
        let Some(s) = snapshot else {
            return Ok(None);
        };
        let id = self
            .db
            .snapshot_id(source_id, s)
            .await
            .map_err(internal)?
            .ok_or_else(|| {
                ApiError::new(
                    ErrorCode::Unprocessable,
                    format!("source_snapshot {s:?} is not a snapshot of this container"),
                )
                .on_field("source_snapshot")
            })?;
        Ok(Some(id))
    }

    /// The request's SSH key, normalised, if no container uses it yet.
    async fn unused_ssh_key(&self, key: Option<&str>) -> Result<Option<String>, ApiError> {
        let Some(key) = key else {
            return Ok(None);
        };
        let key = parse_ssh_public_key(key).map_err(|m| {
            ApiError::new(ErrorCode::Unprocessable, format!("ssh_public_key: {m}"))
                .on_field("ssh_public_key")
        })?;
        let taken = self
            .db
            .ssh_key_in_use(&key_identity(&key))
            .await
            .map_err(internal)?;
        if taken {
            return Err(ApiError::new(ErrorCode::Conflict, KEY_TAKEN).on_field("ssh_public_key"));
        }
        Ok(Some(key))
    }

    /// Writes both rows and `entry` (the audit entry of the copy's success) in one atomic
    /// write, group-committed with the writes queued beside it. `Some`: a retry that raced
    /// its first attempt, answered with the copy that won (and nothing written).
    async fn admit_copy(
        &self,
        user: &UserInfo,
        row: &NewCopy,
        entry: AuditEntry,
    ) -> Result<Option<CopyStarted>, ApiError> {
        let written = self
            .db
            .admit_copy(row.clone(), entry, self.job_caps())
            .await;
        // The same idempotency key means the same name too: the job that won is committed
        // by now.
        if let Err(Refusal::NameTaken | Refusal::SameIdempotencyKey) = &written {
            if let Some(started) = self
                .copy_started_with(
                    user,
                    row.idempotency_key.as_deref(),
                    row.request_fingerprint.as_deref().unwrap_or_default(),
                )
                .await?
            {
                return Ok(Some(started));
            }
        }
        match written {
            Ok(()) => Ok(None),
            Err(Refusal::SameIdempotencyKey) => Err(ApiError::internal()),
            Err(Refusal::NameTaken) => Err(ApiError::new(
                ErrorCode::Conflict,
                format!(
                    "a container named {:?} already exists in the target project",
                    row.name
                ),
            )
            .on_field("name")),
            Err(Refusal::KeyTaken) => {
                Err(ApiError::new(ErrorCode::Conflict, KEY_TAKEN).on_field("ssh_public_key"))
            }
            Err(Refusal::TooMany {
                by_user,
                in_project,
            }) => Err(self.too_many_jobs(by_user, in_project)),
            Err(Refusal::ProjectGone) => {
                Err(ApiError::not_found("project", &row.project_id).on_field("target_project_id"))
            }
            Err(Refusal::Db(e)) => Err(internal(e)),
        }
    }

    /// `<source>-copy`, then `<source>-copy-2`, `-3`, ...: the first free name (one query,
    /// however many copies exist).
    async fn generate_name(&self, project_id: &str, source: &str) -> Result<String, ApiError> {
        let prefix = default_copy_name(source);
        let taken = self
            .db
            .names_starting_with(project_id, &prefix)
            .await
            .map_err(internal)?;
        (1..1000)
            .map(|n| match n {
                1 => prefix.clone(),
                n => format!("{prefix}-{n}"),
            })
            // (Names are unique ignoring case; `taken` holds them in lowercase.)
            .find(|candidate| !taken.contains(&candidate.to_lowercase()))
            .ok_or_else(|| ApiError::new(ErrorCode::Conflict, "no free name; give one"))
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
        // A key cut short, or with bytes added after it, is not a key.
        use base64::Engine;
        let b64 = base64::engine::general_purpose::STANDARD;
        let blob = b64
            .decode("AAAAC3NzaC1lZDI1NTE5AAAAIAABAgMEBQYHCAkKCwwNDg8QERITFBUWFxgZGhscHR4f")
            .unwrap();
        for bad in [
            &blob[..blob.len() - 4],
            &[&blob[..], &[0, 0, 0, 0]].concat(),
        ] {
            let text = format!("ssh-ed25519 {}", b64.encode(bad));
            let why = parse_ssh_public_key(&text).unwrap_err();
            assert!(why.contains("not a whole key"), "{why}");
        }
        // Comments: of a .pub file's size, printable.
        assert!(parse_ssh_public_key(&format!("{k} {}", "x".repeat(2000))).is_err());
        assert!(parse_ssh_public_key(&format!("{k} a\u{7}b")).is_err());
        // Other types, whole: RSA (2048 bits) and ECDSA P-256.
        let ssh_string = |v: &[u8]| [&(v.len() as u32).to_be_bytes()[..], v].concat();
        let rsa = [
            ssh_string(b"ssh-rsa"),
            ssh_string(&[1, 0, 1]),
            ssh_string(&[&[0u8][..], &[0xC5; 256]].concat()),
        ]
        .concat();
        assert!(parse_ssh_public_key(&format!("ssh-rsa {}", b64.encode(&rsa))).is_ok());
        let short_rsa = [
            ssh_string(b"ssh-rsa"),
            ssh_string(&[1, 0, 1]),
            ssh_string(&[0xC5; 64]),
        ]
        .concat();
        assert!(parse_ssh_public_key(&format!("ssh-rsa {}", b64.encode(&short_rsa))).is_err());
        let p256 = [
            ssh_string(b"ecdsa-sha2-nistp256"),
            ssh_string(b"nistp256"),
            ssh_string(&[&[4u8][..], &[7; 64]].concat()),
        ]
        .concat();
        let p256 = format!("ecdsa-sha2-nistp256 {}", b64.encode(&p256));
        assert!(parse_ssh_public_key(&p256).is_ok());
        assert_eq!(
            key_identity(k),
            "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIAABAgMEBQYHCAkKCwwNDg8QERITFBUWFxgZGhscHR4f"
        );
    }
}
