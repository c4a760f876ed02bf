//! Projects and their members. Platform admins make and delete projects; a project's
//! admins (and platform admins) rename it and manage its members. A member removed loses
//! access at once: every request reads the memberships afresh (event streams within
//! their next check).

use app::model::*;

use super::{check_id, internal, require_full_credential, Service};

fn unprocessable(field: &str, message: String) -> ApiError {
    ApiError::new(ErrorCode::Unprocessable, message).on_field(field)
}

pub(super) fn check_name(name: &str) -> Result<(), ApiError> {
    validate_container_name(name).map_err(|m| {
        unprocessable(
            "name",
            format!("name: {}", m.replace("a name", "a project name")),
        )
    })
}

pub(super) fn check_description(d: &str) -> Result<(), ApiError> {
    if d.chars().count() > 500 || d.chars().any(|c| c.is_ascii_control() && c != '\n') {
        return Err(unprocessable(
            "description",
            "description: at most 500 characters, no control characters".into(),
        ));
    }
    Ok(())
}

impl Service {
    /// Platform admins only, with a credential that may write.
    pub(super) fn require_platform_admin(user: &UserInfo, what: &str) -> Result<(), ApiError> {
        if !user.is_admin {
            return Err(ApiError::forbidden(format!(
                "{what} is for platform admins"
            )));
        }
        require_full_credential(user, what)
    }

    /// `POST /projects`: a new project (its maker is a platform admin, so no membership).
    pub async fn create_project(
        &self,
        user: &UserInfo,
        req: NewProject,
    ) -> Result<Project, ApiError> {
        let project = None;
        let target = req.name.clone();
        self.audited(user, "project.create", &target, project, async {
            Self::require_platform_admin(user, "making a project")?;
            let name = req.name;
            check_name(&name)?;
            let description = req.description.unwrap_or_default();
            check_description(&description)?;
            let id = crate::ids::new_id();
            let now = crate::ids::now_ms();
            match self.db.insert_project(&id, &name, &description, now).await {
                Ok(false) => Err(name_taken(&name)),
                Ok(true) => Ok(Project {
                    id,
                    name,
                    description,
                    role: None,
                    created_at: now,
                }),
                Err(e) if e.is_unique_violation() => Err(name_taken(&name)),
                Err(e) => Err(internal(e)),
            }
        })
        .await
    }

    /// `PATCH /projects/{id}`: a new name or description (project admins).
    pub async fn update_project(
        &self,
        user: &UserInfo,
        id: &str,
        req: ProjectRequest,
    ) -> Result<Project, ApiError> {
        let project = is_valid_id(id).then(|| id.to_string());
        let target = id.to_string();
        self.audited(user, "project.update", &target, project, async {
            check_id("project id", id)?;
            let vis = self.visibility(user).await?;
            vis.require_project_admin(id, "changing this project")?;
            require_full_credential(user, "changing a project")?;
            let current = self
                .db
                .projects()
                .await
                .map_err(internal)?
                .into_iter()
                .find(|p| p.id == id)
                .ok_or_else(|| ApiError::not_found("project", id))?;
            let name = req.name.unwrap_or(current.name);
            check_name(&name)?;
            let description = req.description.unwrap_or(current.description);
            check_description(&description)?;
            match self.db.update_project(id, &name, &description).await {
                Ok(true) => {}
                // Still there (it was a moment ago): its new name is another's.
                Ok(false)
                    if self
                        .db
                        .projects()
                        .await
                        .map_err(internal)?
                        .iter()
                        .any(|p| p.id == id) =>
                {
                    return Err(name_taken(&name))
                }
                Ok(false) => return Err(ApiError::not_found("project", id)),
                Err(e) if e.is_unique_violation() => return Err(name_taken(&name)),
                Err(e) => return Err(internal(e)),
            }
            Ok(Project {
                id: id.to_string(),
                name,
                description,
                role: vis.roles.get(id).copied().flatten(),
                created_at: current.created_at,
            })
        })
        .await
    }

    /// `DELETE /projects/{id}`: platform admins; refused (409) while it holds containers.
    pub async fn delete_project(&self, user: &UserInfo, id: &str) -> Result<(), ApiError> {
        let project = is_valid_id(id).then(|| id.to_string());
        let target = id.to_string();
        self.audited(user, "project.delete", &target, project, async {
            check_id("project id", id)?;
            let vis = self.visibility(user).await?;
            if !vis.can_see(id) {
                return Err(ApiError::not_found("project", id));
            }
            Self::require_platform_admin(user, "deleting a project")?;
            if self.db.delete_empty_project(id).await.map_err(internal)? {
                return Ok(());
            }
            Err(ApiError::new(
                ErrorCode::Conflict,
                "the project holds containers: delete them (or copy them elsewhere) first",
            ))
        })
        .await
    }

    /// `GET /projects/{id}/members`: for whoever sees the project.
    pub async fn list_members(&self, user: &UserInfo, id: &str) -> Result<Vec<Member>, ApiError> {
        check_id("project id", id)?;
        if !self.visibility(user).await?.can_see(id) {
            return Err(ApiError::not_found("project", id));
        }
        self.db.members_of(id).await.map_err(internal)
    }

    /// `PUT /projects/{id}/members/{user}`: gives a user (by name) a role there.
    pub async fn set_member(
        &self,
        user: &UserInfo,
        id: &str,
        member: &str,
        role: Role,
    ) -> Result<Member, ApiError> {
        let project = is_valid_id(id).then(|| id.to_string());
        let target = member.to_string();
        let change = format!("role {}", role.as_str());
        self.audited_change(user, "member.set", (&target, change), project, async {
            check_id("project id", id)?;
            self.visibility(user)
                .await?
                .require_project_admin(id, "managing this project's members")?;
            require_full_credential(user, "managing a project's members")?;
            let who = crate::auth::find_user(&self.db, member)
                .await
                .map_err(internal)?
                .ok_or_else(|| ApiError::not_found("user", member))?;
            if role != Role::Admin {
                refuse_own_step_down(user, &who.id, "lower your own role in this project")?;
            }
            if !self
                .db
                .set_membership(id, &who.id, role, &user.id)
                .await
                .map_err(internal)?
            {
                return Err(no_longer_admin());
            }
            Ok(Member {
                user_id: who.id,
                user_name: who.name,
                role,
            })
        })
        .await
    }

    /// `DELETE /projects/{id}/members/{user}`: takes a user out (at once).
    pub async fn remove_member(
        &self,
        user: &UserInfo,
        id: &str,
        member: &str,
    ) -> Result<(), ApiError> {
        let project = is_valid_id(id).then(|| id.to_string());
        let target = member.to_string();
        self.audited(user, "member.remove", &target, project, async {
            check_id("project id", id)?;
            self.visibility(user)
                .await?
                .require_project_admin(id, "managing this project's members")?;
            require_full_credential(user, "managing a project's members")?;
            let who = crate::auth::find_user(&self.db, member)
                .await
                .map_err(internal)?
                .ok_or_else(|| ApiError::not_found("user", member))?;
            refuse_own_step_down(user, &who.id, "take yourself out of this project")?;
            if !self
                .db
                .delete_membership(id, &who.id, &user.id)
                .await
                .map_err(internal)?
            {
                // Not a member, or the caller's own rights went meanwhile.
                let vis = self.visibility(user).await?;
                if vis
                    .require_project_admin(id, "managing this project's members")
                    .is_err()
                {
                    return Err(no_longer_admin());
                }
                return Err(ApiError::not_found("member", member));
            }
            Ok(())
        })
        .await
    }
}

/// A project's admin does not demote or remove themselves (as nobody disables or demotes
/// themselves as a user): the project would be left without an admin of its own. Another
/// of its admins, or a platform admin, can. (A platform admin keeps every right anyway.)
fn refuse_own_step_down(user: &UserInfo, member_id: &str, what: &str) -> Result<(), ApiError> {
    if member_id != user.id || user.is_admin {
        return Ok(());
    }
    Err(ApiError::new(
        ErrorCode::Conflict,
        format!("you may not {what}: another of its admins, or a platform admin, can"),
    ))
}

/// The 409 of a project name another project has (names are unique ignoring case).
fn name_taken(name: &str) -> ApiError {
    ApiError::new(
        ErrorCode::Conflict,
        format!("a project named {name:?} exists (names are unique whatever their case)"),
    )
    .on_field("name")
}

/// The 403 of a change to a project's members whose maker lost the right to make it
/// before it committed (another admin took it at the same moment).
fn no_longer_admin() -> ApiError {
    ApiError::forbidden(
        "managing this project's members is for its admins, and you are no longer one",
    )
}
