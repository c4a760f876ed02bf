//! Who is calling: API tokens (answered from `TokenCache` for 2 s), console sessions, login
//! and logout. The HTTP layer asks here; the rules and the database stay below it.

use app::model::UserInfo;

use super::Service;
use crate::auth;
use crate::store::DbError;

impl Service {
    /// The user an API token belongs to (`None`: no such token).
    pub async fn user_for_token(&self, token: &str) -> Result<Option<UserInfo>, DbError> {
        self.tokens.user(&self.db, token).await
    }

    /// The user of a live console session (`None`: unknown or expired).
    pub async fn user_for_session(&self, secret: &str) -> Result<Option<UserInfo>, DbError> {
        auth::user_for_session(&self.db, secret).await
    }

    /// Checks a name and password and starts a session: its cookie value, or `None` when
    /// the name or the password is wrong (which one is not said).
    pub async fn log_in(&self, name: &str, password: &str) -> Result<Option<String>, DbError> {
        match auth::check_login(&self.db, name, password).await? {
            Some(user) => Ok(Some(auth::create_session(&self.db, &user).await?)),
            None => Ok(None),
        }
    }

    /// Ends a session (and clears expired ones).
    pub async fn log_out(&self, secret: &str) -> Result<(), DbError> {
        auth::end_session(&self.db, secret).await
    }
}
