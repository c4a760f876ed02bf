//! The audit log: every write (and every login) is recorded with who, when, from where,
//! what and how it ended. Platform admins read all of it; a project's admins read their
//! project's entries. Nothing changes or removes an entry.

use std::future::Future;

use app::model::*;

use super::{check_param_id, internal, Service};

/// Entries a page holds by default, and at most.
pub const AUDIT_PAGE: u32 = 100;
const MAX_PAGE: u32 = 500;

/// Who did it: a user (`None` for a login of an unknown name), the name as given, and
/// the address the request came from.
pub(super) struct Actor<'a> {
    pub(super) user: Option<&'a UserInfo>,
    pub(super) name: &'a str,
    pub(super) address: Option<std::net::IpAddr>,
}

impl<'a> Actor<'a> {
    fn of(user: &'a UserInfo) -> Actor<'a> {
        Actor {
            user: Some(user),
            name: &user.name,
            address: user.from,
        }
    }
}

/// Whether a write committed the audit entry of its success itself (`audited_with`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Committed {
    Yes,
    /// It answered from an earlier write (a retried request): recorded apart.
    No,
}

/// The entry of an action: `ok`, `refused` (an error the caller can fix) or `failed`.
fn entry(
    actor: &Actor<'_>,
    action: &str,
    target: &str,
    project: Option<String>,
    error: Option<&ApiError>,
) -> AuditEntry {
    let result = match error.map(|e| e.code) {
        None => "ok",
        Some(ErrorCode::Internal | ErrorCode::Unavailable) => "failed",
        Some(_) => "refused",
    };
    AuditEntry {
        id: entry_id(),
        at: crate::ids::now_ms(),
        actor_id: actor.user.map(|u| u.id.clone()),
        actor_name: actor.name.to_string(),
        action: action.to_string(),
        project_id: project,
        target: target.to_string(),
        address: actor
            .address
            .map_or_else(|| "unknown".to_string(), |a| a.to_string()),
        result: result.to_string(),
        detail: error.map(|e| e.message.clone()),
    }
}

/// Records what an admin subcommand of the `doppel` binary did (`token create`, `user
/// set-password`, `server add`, `import`): run as root on the host, by no user of doppel,
/// so the actor is "command line" and the address "local". Those commands bypass the API's
/// checks; the log still says what they did.
pub async fn record_command_line(
    db: &crate::store::Db,
    action: &str,
    target: &str,
    project: Option<String>,
) -> Result<(), crate::store::DbError> {
    let mut e = entry(
        &Actor {
            user: None,
            name: COMMAND_LINE,
            address: None,
        },
        action,
        target,
        project,
        None,
    );
    e.address = "local".into();
    db.append_audit(e).await
}

/// The actor name of what the command line did.
pub const COMMAND_LINE: &str = "command line";

/// An id that sorts by the millisecond: 12 hex digits of time, 12 random.
fn entry_id() -> String {
    format!(
        "{:012x}{}",
        crate::ids::now_ms().max(0),
        &crate::ids::new_id()[12..]
    )
}

impl Service {
    /// Runs `work` and records how it went: `ok`, `refused` (an error the caller can fix)
    /// or `failed`. `project`: the project it concerns, when known.
    pub(super) async fn audited<T>(
        &self,
        user: &UserInfo,
        action: &str,
        target: &str,
        project: Option<String>,
        work: impl Future<Output = Result<T, ApiError>>,
    ) -> Result<T, ApiError> {
        self.audited_saying(user, action, (target, None), project, work)
            .await
    }

    /// Like `audited`, saying in the entry of its success what it changed (`change`: a
    /// role given, flags set), so the log tells granting from taking away.
    pub(super) async fn audited_change<T>(
        &self,
        user: &UserInfo,
        action: &str,
        (target, change): (&str, String),
        project: Option<String>,
        work: impl Future<Output = Result<T, ApiError>>,
    ) -> Result<T, ApiError> {
        self.audited_saying(user, action, (target, Some(change)), project, work)
            .await
    }

    async fn audited_saying<T>(
        &self,
        user: &UserInfo,
        action: &str,
        (target, change): (&str, Option<String>),
        project: Option<String>,
        work: impl Future<Output = Result<T, ApiError>>,
    ) -> Result<T, ApiError> {
        let result = work.await;
        let mut e = entry(
            &Actor::of(user),
            action,
            target,
            project,
            result.as_ref().err(),
        );
        if result.is_ok() {
            e.detail = change;
        }
        self.append(e).await;
        result
    }

    /// Like `audited`, for a write that commits the entry of its success with its own rows
    /// (one commit, and never the rows without their entry): `work` gets that entry and says
    /// whether it committed it. A refusal or failure is recorded here, as by `audited`.
    pub(super) async fn audited_with<T, F>(
        &self,
        user: &UserInfo,
        action: &str,
        target: &str,
        project: Option<String>,
        work: impl FnOnce(AuditEntry) -> F,
    ) -> Result<T, ApiError>
    where
        F: Future<Output = Result<(T, Committed), ApiError>>,
    {
        let actor = Actor::of(user);
        let success = entry(&actor, action, target, project.clone(), None);
        let (value, committed) = match work(success).await {
            Ok(done) => done,
            Err(e) => {
                self.record(actor, action, target, project, Some(&e)).await;
                return Err(e);
            }
        };
        if committed == Committed::No {
            self.record(actor, action, target, project, None).await;
        }
        Ok(value)
    }

    /// Appends an entry; a failure to is logged, and the request it records stands.
    pub(super) async fn record(
        &self,
        actor: Actor<'_>,
        action: &str,
        target: &str,
        project: Option<String>,
        error: Option<&ApiError>,
    ) {
        self.append(entry(&actor, action, target, project, error))
            .await;
    }

    /// Appends `e`; a failure to is logged, and the request it records stands.
    async fn append(&self, e: AuditEntry) {
        let (action, target) = (e.action.clone(), e.target.clone());
        if let Err(err) = self.db.append_audit(e).await {
            tracing::error!(error = %err, action, target, "audit entry not written");
        }
    }

    /// The project of a container (for its entries), when it exists.
    pub(super) async fn project_of(&self, container_id: &str) -> Option<String> {
        if !is_valid_id(container_id) {
            return None;
        }
        self.db
            .container(container_id)
            .await
            .ok()
            .flatten()
            .map(|c| c.project_id)
    }

    /// The project of a job (for its entries), when it exists.
    pub(super) async fn project_of_job(&self, job_id: &str) -> Option<String> {
        if !is_valid_id(job_id) {
            return None;
        }
        self.db
            .job(job_id)
            .await
            .ok()
            .flatten()
            .map(|j| j.project_id)
    }

    /// `GET /audit`: platform admins see everything; a project's admins their projects'.
    pub async fn list_audit(
        &self,
        user: &UserInfo,
        filter: &AuditFilter,
    ) -> Result<Vec<AuditEntry>, ApiError> {
        for (param, id) in [
            ("project_id", &filter.project_id),
            ("before", &filter.before),
        ] {
            if let Some(id) = id {
                check_param_id(param, id)?;
            }
        }
        let limit = filter.limit.unwrap_or(AUDIT_PAGE);
        if limit == 0 || limit > MAX_PAGE {
            return Err(ApiError::invalid(format!("limit is 1 to {MAX_PAGE}")).on_field("limit"));
        }
        let everything = user.is_admin && user.scope.projects.is_none();
        // A project asked for that the caller cannot see is a 404, as everywhere (an empty
        // page would say nothing, or that it exists).
        if let Some(project) = &filter.project_id {
            if !self.visibility(user).await?.can_see(project) {
                return Err(ApiError::not_found("project", project).on_field("project_id"));
            }
        }
        let projects: Option<Vec<String>> = if everything {
            None
        } else {
            let vis = self.visibility(user).await?;
            let admin_of: Vec<String> = vis
                .roles
                .iter()
                .filter(|(_, role)| matches!(role, None | Some(Role::Admin)))
                .map(|(id, _)| id.clone())
                .collect();
            if admin_of.is_empty() {
                return Err(ApiError::forbidden(
                    "the audit log is for platform admins and project admins",
                ));
            }
            Some(admin_of)
        };
        self.db
            .audit(filter, projects.as_deref(), limit)
            .await
            .map_err(internal)
    }
}
