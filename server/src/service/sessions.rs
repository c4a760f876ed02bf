//! Who is calling: API tokens (answered from `TokenCache` for 2 s), console sessions, login
//! and logout. The HTTP layer asks here; the rules and the database stay below it.

use std::net::IpAddr;
use std::time::Duration;

use app::model::UserInfo;

use super::audit::Actor;
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
        // Every attempt is in the audit log (the name as typed, capped).
        let typed: String = name.chars().take(100).collect();
        let refused = |why: &str| app::model::ApiError::forbidden(why);
        if let Err(wait) = self.logins.check(name, from) {
            let e = refused("too many failed logins: not checked");
            self.record(anonymous(&typed, from), "login", &typed, None, Some(&e))
                .await;
            return Ok(LoginOutcome::Wait(wait));
        }
        match auth::check_login(&self.db, name, password).await? {
            Some(user) => {
                self.logins.succeeded(name, from);
                let actor = Actor {
                    user: Some(&user),
                    name: &user.name,
                    address: Some(from),
                };
                self.record(actor, "login", &user.name, None, None).await;
                Ok(LoginOutcome::Session(
                    auth::create_session(&self.db, &user).await?,
                ))
            }
            None => {
                self.logins.failed(name, from);
                let e = refused("wrong user name or password");
                self.record(anonymous(&typed, from), "login", &typed, None, Some(&e))
                    .await;
                Ok(LoginOutcome::Wrong)
            }
        }
    }

    /// Ends a session (and clears expired ones).
    pub async fn log_out(&self, secret: &str) -> Result<(), DbError> {
        auth::end_session(&self.db, secret).await
    }
}

/// A login attempt's actor: the name typed, from where.
fn anonymous(name: &str, from: IpAddr) -> Actor<'_> {
    Actor {
        user: None,
        name,
        address: Some(from),
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
