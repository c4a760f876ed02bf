//! Who sees what: platform admins see every project; anyone else sees the projects they are
//! a member of. Anything outside is a 404, indistinguishable from a missing one.

use std::collections::{HashMap, HashSet};

use app::model::*;

use super::{internal, Service};
use crate::store::ContainerRow;

/// The projects a user may see, with their role in each (`None`: admin, not a member).
pub(super) struct Visibility {
    pub(super) roles: HashMap<String, Option<Role>>,
    /// A read-only API token: every write is refused.
    read_only: bool,
}

impl Visibility {
    /// The rule, in one place: a platform admin sees every project, with full rights
    /// whether a member or not; anyone else sees the projects they are a member of, with
    /// their role there. `projects` are (project id, the user's membership role if any).
    pub(super) fn of(
        user: &UserInfo,
        projects: impl IntoIterator<Item = (String, Option<String>)>,
    ) -> Visibility {
        // An API token limited to some projects sees those of them only.
        let scoped = |id: &String| {
            user.scope
                .projects
                .as_ref()
                .is_none_or(|allowed| allowed.contains(id))
        };
        let roles = projects
            .into_iter()
            .filter(|(id, _)| scoped(id))
            .filter_map(|(id, member)| match (user.is_admin, member) {
                (true, _) => Some((id, None)),
                // (The schema allows only known roles; anything else gets the least.)
                (false, Some(role)) => Some((id, Some(Role::parse(&role).unwrap_or(Role::Viewer)))),
                (false, None) => None,
            })
            .collect();
        Visibility {
            roles,
            read_only: user.scope.read_only,
        }
    }

    /// A read-only token's 403, for any write.
    fn refuse_read_only(&self, what: &str) -> Result<(), ApiError> {
        if self.read_only {
            return Err(ApiError::forbidden(format!(
                "this API token is read-only; {what} needs a token that may write"
            )));
        }
        Ok(())
    }

    /// The projects a read is narrowed to: those seen, or `None` when that is every
    /// project (a platform admin, with a token not limited to some).
    pub(super) fn narrowed(&self, user: &UserInfo) -> Option<Vec<String>> {
        match user.is_admin && user.scope.projects.is_none() {
            true => None,
            false => Some(self.roles.keys().cloned().collect()),
        }
    }

    pub(super) fn can_see(&self, project_id: &str) -> bool {
        self.roles.contains_key(project_id)
    }

    /// Who may change things in a project: its operators and admins, and platform admins.
    /// A project the user cannot see is a 404, as if it did not exist.
    pub(super) fn require_operator(&self, project_id: &str, what: &str) -> Result<(), ApiError> {
        if self.can_see(project_id) {
            self.refuse_read_only(what)?;
        }
        match self.roles.get(project_id) {
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

    /// Who may change a project itself and its members: its admins and platform admins.
    /// A project the user cannot see is a 404.
    pub(super) fn require_project_admin(
        &self,
        project_id: &str,
        what: &str,
    ) -> Result<(), ApiError> {
        match self.roles.get(project_id) {
            None => Err(ApiError::not_found("project", project_id)),
            Some(_) if self.read_only => self.refuse_read_only(what),
            Some(None) | Some(Some(Role::Admin)) => Ok(()),
            Some(Some(r)) => Err(ApiError::forbidden(format!(
                "your role in this project is {}; {what} needs admin",
                r.as_str()
            ))),
        }
    }

    /// Taking data out of a project (copying a container, syncing a copy from it) needs the
    /// same rights as changing it: a viewer may look, not clone. Unlike
    /// [`Self::require_operator`], a project the user cannot see is a 403 here: the
    /// container asked about is visible, only its source's project is not.
    pub(super) fn require_source_operator(
        &self,
        project_id: &str,
        what: &str,
    ) -> Result<(), ApiError> {
        self.refuse_read_only(what)?;
        match self.roles.get(project_id) {
            Some(None) => Ok(()),
            Some(Some(r)) if *r >= Role::Operator => Ok(()),
            Some(Some(_)) => Err(ApiError::forbidden(format!(
                "your role in the source's project is viewer; {what} needs operator or admin there"
            ))),
            None => Err(ApiError::forbidden(format!(
                "{what} needs operator or admin in the source's project, and you are not a \
                 member of it"
            ))),
        }
    }
}

impl Service {
    /// The ids of the projects `user` may see; `None`: every project (a platform admin).
    pub async fn visible_projects(
        &self,
        user: &UserInfo,
    ) -> Result<Option<HashSet<String>>, ApiError> {
        if user.is_admin && user.scope.projects.is_none() {
            return Ok(None);
        }
        Ok(Some(
            self.visibility(user).await?.roles.into_keys().collect(),
        ))
    }

    pub(super) async fn visibility(&self, user: &UserInfo) -> Result<Visibility, ApiError> {
        // One statement: every project for a platform admin, the member's for anyone else.
        let memberships = self
            .db
            .project_memberships(&user.id, user.is_admin)
            .await
            .map_err(internal)?;
        Ok(Visibility::of(user, memberships))
    }
}

impl ContainerRow {
    /// The container as `vis` may see it: its source is named only when visible.
    pub(super) fn summary(&self, vis: &Visibility) -> ContainerSummary {
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
