//! Users: platform admins list, create (a password shown once), change (admin, disabled)
//! and reset them; each user changes their own password.

use std::net::{IpAddr, Ipv4Addr};

use app::model::*;

use super::{internal, require_full_credential, Service};
use crate::auth::{self, AuthError};

fn account(user: &UserInfo, created_at: Millis) -> UserAccount {
    UserAccount {
        id: user.id.clone(),
        name: user.name.clone(),
        is_admin: user.is_admin,
        disabled: false,
        created_at,
    }
}

impl Service {
    /// `GET /users`: platform admins.
    pub async fn list_users(&self, user: &UserInfo) -> Result<Vec<UserAccount>, ApiError> {
        if !user.is_admin || user.scope.projects.is_some() {
            return Err(ApiError::forbidden(
                "the list of users is for platform admins (with a token for every project)",
            ));
        }
        self.db.users().await.map_err(internal)
    }

    async fn account_named(&self, name: &str) -> Result<UserAccount, ApiError> {
        self.db
            .users()
            .await
            .map_err(internal)?
            .into_iter()
            // (Names are unique whatever their case: `BOB` is bob.)
            .find(|u| u.name.to_lowercase() == name.to_lowercase())
            .ok_or_else(|| ApiError::not_found("user", name))
    }

    /// `POST /users`: a new user with a random password, shown once.
    pub async fn create_user(
        &self,
        user: &UserInfo,
        req: NewUser,
    ) -> Result<UserWithPassword, ApiError> {
        let project = None;
        let target = req.name.clone();
        self.audited(user, "user.create", &target, project, async {
            Self::require_platform_admin(user, "making a user")?;
            validate_container_name(&req.name).map_err(|m| {
                ApiError::new(
                    ErrorCode::Unprocessable,
                    format!("name: {}", m.replace("a name", "a user name")),
                )
                .on_field("name")
            })?;
            // Names differing only in case would be told apart by nobody reading the audit
            // log or a member list ("bob" and "BOB"): one of them is enough.
            let users = self.db.users().await.map_err(internal)?;
            if let Some(like) = users
                .iter()
                .find(|u| u.name != req.name && u.name.eq_ignore_ascii_case(&req.name))
            {
                return Err(ApiError::new(
                    ErrorCode::Conflict,
                    format!(
                        "a user named {:?} exists; names differing only in case are not told apart",
                        like.name
                    ),
                )
                .on_field("name"));
            }
            let password = auth::random_password();
            match auth::create_user(&self.db, &req.name, Some(&password), req.is_admin).await {
                Ok(made) => Ok(UserWithPassword {
                    user: account(&made, crate::ids::now_ms()),
                    password,
                }),
                Err(AuthError::UserExists(_)) => Err(ApiError::new(
                    ErrorCode::Conflict,
                    format!("a user named {:?} exists", req.name),
                )
                .on_field("name")),
                Err(e) => Err(internal(e)),
            }
        })
        .await
    }

    /// `PATCH /users/{name}`: platform admin or not, disabled or not. Nobody disables or
    /// demotes themselves (the last admin would lock everyone out).
    pub async fn update_user(
        &self,
        user: &UserInfo,
        name: &str,
        change: UserChange,
    ) -> Result<UserAccount, ApiError> {
        let project = None;
        let target = name.to_string();
        let asked = [
            change.is_admin.map(|a| format!("is_admin {a}")),
            change.disabled.map(|d| format!("disabled {d}")),
        ]
        .into_iter()
        .flatten()
        .collect::<Vec<_>>()
        .join(", ");
        self.audited_change(user, "user.update", (&target, asked), project, async {
            Self::require_platform_admin(user, "changing a user")?;
            let mut target = self.account_named(name).await?;
            let is_admin = change.is_admin.unwrap_or(target.is_admin);
            let disabled = change.disabled.unwrap_or(target.disabled);
            if target.id == user.id && (disabled || !is_admin) {
                return Err(ApiError::new(
                    ErrorCode::Conflict,
                    "you cannot disable yourself or take your own admin rights; another admin can",
                ));
            }
            let set = self
                .db
                .set_user_flags(&target.id, is_admin, disabled, &user.id)
                .await
                .map_err(internal)?;
            if !set {
                // (The target exists: it was read above, and users are never deleted.)
                return Err(ApiError::forbidden(
                    "changing a user is for platform admins, and you are no longer one",
                ));
            }
            // Their tokens answer from the database again (refused, when disabled).
            self.tokens.forget_user(&target.id);
            target.is_admin = is_admin;
            target.disabled = disabled;
            Ok(target)
        })
        .await
    }

    /// `POST /users/{name}/password`: a new random password (shown once); their console
    /// sessions end.
    pub async fn reset_password(
        &self,
        user: &UserInfo,
        name: &str,
    ) -> Result<UserWithPassword, ApiError> {
        let project = None;
        let target = name.to_string();
        self.audited(user, "user.reset_password", &target, project, async {
            Self::require_platform_admin(user, "resetting a password")?;
            let target = self.account_named(name).await?;
            let password = auth::random_password();
            auth::set_password(&self.db, name, &password)
                .await
                .map_err(internal)?;
            Ok(UserWithPassword {
                user: target,
                password,
            })
        })
        .await
    }

    /// `POST /me/password`: with the current one, and a session or a token without limits.
    /// Every console session of the user ends (this one too).
    pub async fn change_own_password(
        &self,
        user: &UserInfo,
        change: PasswordChange,
    ) -> Result<(), ApiError> {
        let project = None;
        let target = user.name.clone();
        self.audited(user, "user.change_password", &target, project, async {
            require_full_credential(user, "changing a password")?;
            // Guessing the current password from a stolen session is slowed down like
            // guessing it at the login form, with the same counts.
            let from = user.from.unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED));
            if let Err(wait) = self.logins.check(&user.name, from) {
                return Err(ApiError::new(
                    ErrorCode::TooManyRequests,
                    format!(
                        "too many wrong passwords: try again in {} s",
                        wait.as_secs().max(1)
                    ),
                )
                .on_field("current")
                .retry_after(wait.as_secs()));
            }
            let checked = auth::check_login(&self.db, &user.name, &change.current)
                .await
                .map_err(internal)?;
            if checked.is_none() {
                self.logins.failed(&user.name, from);
                return Err(
                    ApiError::forbidden("the current password is wrong").on_field("current")
                );
            }
            self.logins.succeeded(&user.name, from);
            match auth::set_password(&self.db, &user.name, &change.new).await {
                Ok(()) => Ok(()),
                Err(AuthError::WeakPassword) => Err(ApiError::new(
                    ErrorCode::Unprocessable,
                    "new: at least 8 characters",
                )
                .on_field("new")),
                Err(e) => Err(internal(e)),
            }
        })
        .await
    }
}
