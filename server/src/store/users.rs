//! Users, API tokens and console sessions (tokens and sessions by the hash of their secret).

use app::model::{ApiToken, TokenScope, UserAccount, UserInfo};
use sqlx::sqlite::SqliteRow;
use sqlx::Row;

use super::{execute, Arg, Db, DbError};

fn user(row: &SqliteRow) -> UserInfo {
    UserInfo {
        id: row.get("id"),
        name: row.get("name"),
        is_admin: row.get::<i64, _>("is_admin") != 0,
        scope: TokenScope::default(),
        from: None,
    }
}

fn token(row: &SqliteRow) -> ApiToken {
    ApiToken {
        id: row.get("id"),
        name: row.get("name"),
        created_at: row.get("created_at"),
        last_used_at: row.get("last_used_at"),
        expires_at: row.get("expires_at"),
        read_only: row.get::<i64, _>("read_only") != 0,
        projects: projects_of(row),
    }
}

/// A token's projects column (JSON), or `None` for all.
fn projects_of(row: &SqliteRow) -> Option<Vec<String>> {
    let json = row.get::<Option<String>, _>("projects")?;
    // A scope that cannot be read grants nothing, never everything.
    Some(serde_json::from_str(&json).unwrap_or_else(|e| {
        tracing::error!(error = %e, "an API token's projects cannot be read");
        Vec::new()
    }))
}

impl Db {
    /// A user by name, whatever its case (names are unique ignoring it).
    pub(crate) async fn user_named(&self, name: &str) -> Result<Option<UserInfo>, DbError> {
        let row =
            sqlx::query("SELECT id, name, is_admin FROM users WHERE name = $1 COLLATE NOCASE")
                .bind(name)
                .fetch_optional(&self.read)
                .await?;
        Ok(row.as_ref().map(user))
    }

    /// A user and their password hash (`None`: no password set), by name.
    pub(crate) async fn user_with_password(
        &self,
        name: &str,
    ) -> Result<Option<(UserInfo, Option<String>)>, DbError> {
        let row = sqlx::query(
            "SELECT id, name, is_admin, password_hash FROM users
                 WHERE name = $1 AND disabled_at IS NULL",
        )
        .bind(name)
        .fetch_optional(&self.read)
        .await?;
        Ok(row.map(|r| (user(&r), r.get("password_hash"))))
    }

    /// Every user by name, with whether they are disabled.
    pub(crate) async fn users(&self) -> Result<Vec<UserAccount>, DbError> {
        let rows = sqlx::query(
            "SELECT id, name, is_admin, disabled_at, created_at FROM users ORDER BY name",
        )
        .fetch_all(&self.read)
        .await?;
        Ok(rows
            .iter()
            .map(|r| UserAccount {
                id: r.get("id"),
                name: r.get("name"),
                is_admin: r.get::<i64, _>("is_admin") != 0,
                disabled: r.get::<Option<i64>, _>("disabled_at").is_some(),
                created_at: r.get("created_at"),
            })
            .collect())
    }

    /// Makes a user a platform admin or not, disabled or not (disabling ends their
    /// sessions); whether the user exists.
    /// Sets a user's flags, as the platform admin `by` asks: only while `by` still is one,
    /// enabled, when the change commits (`false` otherwise). Two admins taking each other's
    /// rights at once would otherwise both succeed, and leave no admin at all.
    pub(crate) async fn set_user_flags(
        &self,
        user_id: &str,
        is_admin: bool,
        disabled: bool,
        by: &str,
    ) -> Result<bool, DbError> {
        let (user_id, now, by) = (user_id.to_string(), crate::ids::now_ms(), by.to_string());
        self.transact(move |c| {
            let n = execute(
                c,
                "UPDATE users SET is_admin = $2,
                    disabled_at = CASE WHEN $3 THEN COALESCE(disabled_at, $4) ELSE NULL END
                 WHERE id = $1
                   AND EXISTS (SELECT 1 FROM users AS caller
                               WHERE caller.id = $5 AND caller.is_admin <> 0
                                 AND caller.disabled_at IS NULL)",
                &[&user_id, &i64::from(is_admin), &disabled, &now, &by],
            )?;
            if n == 0 {
                return Ok(false);
            }
            if disabled {
                execute(c, "DELETE FROM sessions WHERE user_id = $1", &[&user_id])?;
            }
            Ok::<_, DbError>(n > 0)
        })
        .await
    }

    /// A platform admin, enabled, whoever asks (the command line, run as root on the host).
    pub(crate) async fn make_admin(&self, user_id: &str) -> Result<(), DbError> {
        let user_id = user_id.to_string();
        self.transact(move |c| {
            execute(
                c,
                "UPDATE users SET is_admin = 1, disabled_at = NULL WHERE id = $1",
                &[&user_id],
            )?;
            Ok::<_, DbError>(())
        })
        .await
    }

    pub(crate) async fn user_count(&self) -> Result<i64, DbError> {
        Ok(sqlx::query_scalar("SELECT COUNT(*) FROM users")
            .fetch_one(&self.read)
            .await?)
    }

    pub(crate) async fn insert_user(
        &self,
        user: &UserInfo,
        password_hash: Option<&str>,
        now: i64,
    ) -> Result<(), DbError> {
        self.write(
            "INSERT INTO users (id, name, password_hash, is_admin, created_at)
             VALUES ($1, $2, $3, $4, $5)",
            vec![
                Arg::arg(&user.id),
                Arg::arg(&user.name),
                Arg::arg(password_hash),
                Arg::arg(i64::from(user.is_admin)),
                Arg::arg(now),
            ],
        )
        .await?;
        Ok(())
    }

    /// Sets a user's password hash and ends their sessions, in one transaction.
    pub(crate) async fn set_password_hash(&self, user_id: &str, hash: &str) -> Result<(), DbError> {
        let (user_id, hash) = (user_id.to_string(), hash.to_string());
        self.transact(move |c| {
            execute(
                c,
                "UPDATE users SET password_hash = $1 WHERE id = $2",
                &[&hash, &user_id],
            )?;
            execute(c, "DELETE FROM sessions WHERE user_id = $1", &[&user_id])?;
            Ok::<_, DbError>(())
        })
        .await
    }

    pub(crate) async fn insert_token(
        &self,
        t: &ApiToken,
        user_id: &str,
        token_hash: &str,
    ) -> Result<(), DbError> {
        let projects = t
            .projects
            .as_ref()
            .map(|p| serde_json::to_string(p).unwrap_or_else(|_| "[]".into()));
        self.write(
            "INSERT INTO api_tokens (id, user_id, token_hash, name, created_at, expires_at,
                read_only, projects)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
            vec![
                Arg::arg(&t.id),
                Arg::arg(user_id),
                Arg::arg(token_hash),
                Arg::arg(&t.name),
                Arg::arg(t.created_at),
                Arg::arg(t.expires_at),
                Arg::arg(t.read_only as i64),
                Arg::arg(&projects),
            ],
        )
        .await?;
        Ok(())
    }

    /// The user of a token (with the token's scope), when it was last used and when it
    /// expires.
    pub(crate) async fn token_user(
        &self,
        token_hash: &str,
    ) -> Result<Option<(UserInfo, Option<i64>, Option<i64>)>, DbError> {
        let row = sqlx::query(
            "SELECT u.id, u.name, u.is_admin, t.last_used_at, t.expires_at, t.read_only,
                t.projects
             FROM api_tokens t JOIN users u ON u.id = t.user_id
             WHERE t.token_hash = $1 AND u.disabled_at IS NULL",
        )
        .bind(token_hash)
        .fetch_optional(&self.read)
        .await?;
        Ok(row.map(|r| {
            let mut u = user(&r);
            u.scope = TokenScope {
                read_only: r.get::<i64, _>("read_only") != 0,
                projects: projects_of(&r),
            };
            (u, r.get("last_used_at"), r.get("expires_at"))
        }))
    }

    /// A user's tokens, newest first.
    pub(crate) async fn tokens_of(&self, user_id: &str) -> Result<Vec<ApiToken>, DbError> {
        let rows = sqlx::query(
            "SELECT id, name, created_at, last_used_at, expires_at, read_only, projects
             FROM api_tokens WHERE user_id = $1 ORDER BY created_at DESC, id DESC",
        )
        .bind(user_id)
        .fetch_all(&self.read)
        .await?;
        Ok(rows.iter().map(token).collect())
    }

    /// Removes one of a user's tokens; whether there was one.
    pub(crate) async fn delete_token(&self, user_id: &str, id: &str) -> Result<bool, DbError> {
        let n = self
            .write(
                "DELETE FROM api_tokens WHERE user_id = $1 AND id = $2",
                vec![Arg::arg(user_id), Arg::arg(id)],
            )
            .await?;
        Ok(n > 0)
    }

    pub(crate) async fn touch_token(&self, token_hash: &str, now: i64) -> Result<(), DbError> {
        self.write(
            "UPDATE api_tokens SET last_used_at = $1 WHERE token_hash = $2",
            vec![Arg::arg(now), Arg::arg(token_hash)],
        )
        .await?;
        Ok(())
    }

    pub(crate) async fn insert_session(
        &self,
        id_hash: &str,
        user_id: &str,
        now: i64,
        expires_at: i64,
    ) -> Result<(), DbError> {
        self.write(
            "INSERT INTO sessions (id_hash, user_id, created_at, expires_at)
             VALUES ($1, $2, $3, $4)",
            vec![
                Arg::arg(id_hash),
                Arg::arg(user_id),
                Arg::arg(now),
                Arg::arg(expires_at),
            ],
        )
        .await?;
        Ok(())
    }

    /// The user of a session that has not expired at `now`.
    pub(crate) async fn session_user(
        &self,
        id_hash: &str,
        now: i64,
    ) -> Result<Option<UserInfo>, DbError> {
        let row = sqlx::query(
            "SELECT u.id, u.name, u.is_admin FROM sessions s JOIN users u ON u.id = s.user_id
             WHERE s.id_hash = $1 AND s.expires_at > $2 AND u.disabled_at IS NULL",
        )
        .bind(id_hash)
        .bind(now)
        .fetch_optional(&self.read)
        .await?;
        Ok(row.as_ref().map(user))
    }

    /// Ends a session, and every session expired at `now`.
    pub(crate) async fn delete_session(&self, id_hash: &str, now: i64) -> Result<(), DbError> {
        self.write(
            "DELETE FROM sessions WHERE id_hash = $1 OR expires_at <= $2",
            vec![Arg::arg(id_hash), Arg::arg(now)],
        )
        .await?;
        Ok(())
    }
}
