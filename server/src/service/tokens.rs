//! A user's API tokens: list, create (a name, an expiry, a scope), revoke. Each user
//! manages their own, with a console session or a token that may do all they may: a
//! limited token cannot make itself a wider one.

use app::model::*;

use super::{check_id, internal, require_full_credential, Service};
use crate::auth;

/// The furthest a token may expire: ten years ahead.
const MAX_LIFETIME_MS: i64 = 10 * 366 * 24 * 3600 * 1000;

impl Service {
    /// The caller's tokens, newest first.
    pub async fn list_tokens(&self, user: &UserInfo) -> Result<Vec<ApiToken>, ApiError> {
        self.db.tokens_of(&user.id).await.map_err(internal)
    }

    /// A new token of the caller; its secret is in the answer and nowhere else.
    pub async fn create_token(
        &self,
        user: &UserInfo,
        req: NewToken,
    ) -> Result<CreatedToken, ApiError> {
        let project = None;
        let target = req.name.clone();
        self.audited(user, "token.create", &target, project, async {
            require_full_credential(user, "managing tokens")?;
            let unprocessable =
                |field: &str, m: String| ApiError::new(ErrorCode::Unprocessable, m).on_field(field);
            let name = req.name.trim();
            if name.is_empty()
                || name.chars().count() > 100
                || name.chars().any(|c| c.is_ascii_control())
            {
                return Err(unprocessable(
                    "name",
                    "name: 1 to 100 characters, no control characters".into(),
                ));
            }
            let now = crate::ids::now_ms();
            if let Some(at) = req.expires_at {
                if at <= now || at > now + MAX_LIFETIME_MS {
                    return Err(unprocessable(
                        "expires_at",
                        "expires_at: a time in the future (Unix ms), at most ten years ahead"
                            .into(),
                    ));
                }
            }
            if let Some(projects) = &req.projects {
                if projects.is_empty() || projects.len() > 100 {
                    return Err(unprocessable(
                        "projects",
                        "projects: 1 to 100 project ids (leave it out for all)".into(),
                    ));
                }
                let vis = self.visibility(user).await?;
                for p in projects {
                    if !is_valid_id(p) {
                        return Err(unprocessable(
                            "projects",
                            format!(
                                "projects: {p:?} is not a project id (24 lowercase hex digits)"
                            ),
                        ));
                    }
                    if !vis.can_see(p) {
                        return Err(ApiError::not_found("project", p).on_field("projects"));
                    }
                }
            }
            let mut projects = req.projects;
            if let Some(p) = &mut projects {
                p.sort();
                p.dedup();
            }
            let scope = TokenScope {
                read_only: req.read_only,
                projects,
            };
            let (token, secret) =
                auth::issue_token(&self.db, &user.id, name, req.expires_at, &scope)
                    .await
                    .map_err(internal)?;
            Ok(CreatedToken { token, secret })
        })
        .await
    }

    /// Revokes one of the caller's tokens: it stops working at once (open event streams
    /// made with it end at their next check, within seconds).
    pub async fn revoke_token(&self, user: &UserInfo, id: &str) -> Result<(), ApiError> {
        let project = None;
        let target = id.to_string();
        self.audited(user, "token.revoke", &target, project, async {
            check_id("token id", id)?;
            require_full_credential(user, "managing tokens")?;
            if !self.db.delete_token(&user.id, id).await.map_err(internal)? {
                return Err(ApiError::not_found("token", id));
            }
            self.tokens.forget_user(&user.id);
            Ok(())
        })
        .await
    }
}
