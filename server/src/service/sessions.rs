//! Who is calling: API tokens (answered from `TokenCache` for 2 s), console sessions, login
//! and logout. The HTTP layer asks here; the rules and the database stay below it.

use std::net::IpAddr;
use std::time::Duration;

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

    /// Checks a name and password from a client's address and starts a session. After
    /// repeated failures the attempt is refused without checking (see `LoginThrottle`).
    pub async fn log_in(
        &self,
        name: &str,
        password: &str,
        from: IpAddr,
    ) -> Result<LoginOutcome, DbError> {
        if let Err(wait) = self.logins.check(name, from) {
            return Ok(LoginOutcome::Wait(wait));
        }
        match auth::check_login(&self.db, name, password).await? {
            Some(user) => {
                self.logins.succeeded(name, from);
                Ok(LoginOutcome::Session(
                    auth::create_session(&self.db, &user).await?,
                ))
            }
            None => {
                self.logins.failed(name, from);
                Ok(LoginOutcome::Wrong)
            }
        }
    }

    /// Ends a session (and clears expired ones).
    pub async fn log_out(&self, secret: &str) -> Result<(), DbError> {
        auth::end_session(&self.db, secret).await
    }
}

/// How a login attempt went.
pub enum LoginOutcome {
    /// In: the new session's cookie value.
    Session(String),
    /// The name or the password is wrong (which one is not said).
    Wrong,
    /// Too many failures lately: not checked; try again after this long.
    Wait(Duration),
}
