//! Users, passwords, API tokens and console sessions.
//!
//! Passwords are stored as argon2id PHC strings; tokens and session ids are 256-bit random
//! secrets of which only a BLAKE3 hash is stored, so a leaked database grants no access.

use parking_lot::{Mutex, MutexGuard};
use std::collections::HashMap;
use std::time::{Duration, Instant};

use app::model::{ApiToken, TokenScope, UserInfo};
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;

use crate::ids::{new_id, new_secret, now_ms, secret_hash};
use crate::store::{Db, DbError};

/// API tokens start with this, so they are recognisable in logs and secret scanners.
pub const TOKEN_PREFIX: &str = "dpl_";
/// The console's session cookie.
pub const SESSION_COOKIE: &str = "doppel_session";
/// How long a console session lasts.
pub const SESSION_TTL_MS: i64 = 7 * 24 * 3600 * 1000;
/// The platform administrator created on first start.
pub const ADMIN_USER: &str = "admin";

static VERIFY_SLOTS: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(2);
static DUMMY_HASH: std::sync::OnceLock<String> = std::sync::OnceLock::new();

#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("no user named {0:?}")]
    NoSuchUser(String),
    #[error("the password must have at least 8 characters")]
    WeakPassword,
    #[error("a user named {0:?} already exists")]
    UserExists(String),
    #[error("user {0:?} is disabled, so a token of theirs would not be let in; enable them first (Admin in the console, or PATCH /api/v1/users/{0})")]
    Disabled(String),
    #[error("database: {0}")]
    Db(#[from] DbError),
    #[error("password hashing failed: {0}")]
    Hash(String),
}

pub fn hash_password(password: &str) -> Result<String, AuthError> {
    let mut salt_bytes = [0u8; 16];
    rand::RngCore::fill_bytes(&mut rand::rng(), &mut salt_bytes);
    let salt = SaltString::encode_b64(&salt_bytes).map_err(|e| AuthError::Hash(e.to_string()))?;
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| AuthError::Hash(e.to_string()))
}

fn verify_password(password: &str, phc: &str) -> bool {
    PasswordHash::new(phc)
        .map(|parsed| {
            Argon2::default()
                .verify_password(password.as_bytes(), &parsed)
                .is_ok()
        })
        .unwrap_or(false)
}

/// A random password for the first admin: 20 characters without look-alikes.
pub fn random_password() -> String {
    use rand::Rng;
    const ALPHABET: &[u8] = b"abcdefghjkmnpqrstuvwxyzABCDEFGHJKLMNPQRSTUVWXYZ23456789";
    let mut rng = rand::rng();
    (0..20)
        .map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())] as char)
        .collect()
}

pub async fn find_user(db: &Db, name: &str) -> Result<Option<UserInfo>, DbError> {
    db.user_named(name).await
}

/// Creates a user; `password` may be `None` for a user who cannot log in until one is set.
pub async fn create_user(
    db: &Db,
    name: &str,
    password: Option<&str>,
    is_admin: bool,
) -> Result<UserInfo, AuthError> {
    let hash = match password {
        Some(p) if p.chars().count() < 8 => return Err(AuthError::WeakPassword),
        Some(p) => Some(hash_off_thread(p).await?),
        None => None,
    };
    let user = UserInfo {
        id: new_id(),
        name: name.to_string(),
        is_admin,
        scope: Default::default(),
        from: None,
    };
    match db.insert_user(&user, hash.as_deref(), now_ms()).await {
        Ok(()) => Ok(user),
        Err(e) if e.is_unique_violation() => Err(AuthError::UserExists(name.into())),
        Err(e) => Err(e.into()),
    }
}

/// `hash_password` off the async workers, a few at a time (argon2 is slow and takes memory
/// on purpose: a burst of password changes must not stall every request).
async fn hash_off_thread(password: &str) -> Result<String, AuthError> {
    let _permit = VERIFY_SLOTS.acquire().await;
    let password = password.to_string();
    tokio::task::spawn_blocking(move || hash_password(&password))
        .await
        .map_err(|e| AuthError::Hash(e.to_string()))?
}

/// Sets a user's password and ends their console sessions.
pub async fn set_password(db: &Db, name: &str, password: &str) -> Result<(), AuthError> {
    if password.chars().count() < 8 {
        return Err(AuthError::WeakPassword);
    }
    let user = find_user(db, name)
        .await?
        .ok_or_else(|| AuthError::NoSuchUser(name.into()))?;
    let hash = hash_off_thread(password).await?;
    Ok(db.set_password_hash(&user.id, &hash).await?)
}

/// Makes a user a platform admin, enabled (the command line's way back when none is left).
pub async fn make_admin(db: &Db, name: &str) -> Result<(), AuthError> {
    let user = find_user(db, name)
        .await?
        .ok_or_else(|| AuthError::NoSuchUser(name.into()))?;
    Ok(db.make_admin(&user.id).await?)
}

/// Checks a user name and password; `None` for any mismatch (no hint which part was wrong).
pub async fn check_login(db: &Db, name: &str, password: &str) -> Result<Option<UserInfo>, DbError> {
    let found = db.user_with_password(name).await?;
    // An unknown user (or one without a password) costs the same work as a wrong password,
    // so response times do not tell which user names exist.
    let phc: Option<String> = found.as_ref().and_then(|(_, phc)| phc.clone());
    let phc = phc.unwrap_or_else(|| {
        DUMMY_HASH
            .get_or_init(|| hash_password("not-a-password").unwrap_or_default())
            .clone()
    });
    let password = password.to_string();
    // argon2 is deliberately slow and memory-hungry: at most a few at once, off the async
    // workers, so a flood of login attempts cannot exhaust the machine.
    let _permit = VERIFY_SLOTS.acquire().await;
    let ok = tokio::task::spawn_blocking(move || verify_password(&password, &phc))
        .await
        .unwrap_or(false);
    Ok(found.filter(|_| ok).map(|(user, _)| user))
}

/// Creates the platform admin with a random password if there are no users yet.
/// Returns the password when it did, so the caller can show it once.
pub async fn bootstrap_admin(db: &Db) -> Result<Option<String>, AuthError> {
    if db.user_count().await? > 0 {
        return Ok(None);
    }
    let password = random_password();
    match create_user(db, ADMIN_USER, Some(&password), true).await {
        Ok(_) => Ok(Some(password)),
        // Another process (a subcommand beside the server) won the race: fine.
        Err(AuthError::UserExists(_)) => Ok(None),
        Err(e) => Err(e),
    }
}

/// Issues a new API token for `user_name`; the token is returned once and only its hash kept.
/// A token for a user by name, with every right of the user and no expiry (the CLI's).
pub async fn create_token(db: &Db, user_name: &str, label: &str) -> Result<String, AuthError> {
    let user = find_user(db, user_name)
        .await?
        .ok_or_else(|| AuthError::NoSuchUser(user_name.into()))?;
    if db
        .users()
        .await?
        .iter()
        .any(|u| u.id == user.id && u.disabled)
    {
        return Err(AuthError::Disabled(user.name));
    }
    let (_, secret) = issue_token(db, &user.id, label, None, &TokenScope::default()).await?;
    Ok(secret)
}

/// A new token of a user: its record and its secret (shown once; only its hash is kept).
pub async fn issue_token(
    db: &Db,
    user_id: &str,
    name: &str,
    expires_at: Option<i64>,
    scope: &TokenScope,
) -> Result<(ApiToken, String), DbError> {
    let secret = format!("{TOKEN_PREFIX}{}", new_secret());
    let token = ApiToken {
        id: new_id(),
        name: name.to_string(),
        created_at: now_ms(),
        last_used_at: None,
        expires_at,
        read_only: scope.read_only,
        projects: scope.projects.clone(),
    };
    db.insert_token(&token, user_id, &secret_hash(&secret))
        .await?;
    Ok((token, secret))
}

/// The user of a token that exists and has not expired, with the token's scope.
pub async fn user_for_token(db: &Db, token: &str) -> Result<Option<UserInfo>, DbError> {
    Ok(token_lookup(db, token).await?.map(|(user, _)| user))
}

/// [`user_for_token`], and when the token expires.
async fn token_lookup(db: &Db, token: &str) -> Result<Option<(UserInfo, Option<i64>)>, DbError> {
    let hash = secret_hash(token);
    let now = now_ms();
    let Some((user, last, expires)) = db.token_user(&hash).await? else {
        return Ok(None);
    };
    if expires.is_some_and(|at| at <= now) {
        return Ok(None);
    }
    // Record use at most once a minute: a write per request would serialise all requests
    // on the database's write lock.
    if last.is_none_or(|t| now - t > 60_000) {
        db.touch_token(&hash, now).await?;
    }
    Ok(Some((user, expires)))
}

/// API tokens verified in the last moments, so a client firing requests does not cost a
/// database lookup for each. Only tokens found are kept, each for `ttl` (2 s in the
/// server): a token taken out of the database stops working within that time. Console
/// sessions are not cached: a logout takes effect at once.
pub struct TokenCache {
    ttl: Duration,
    /// Token hash -> its user, when that was read from the database, and when the token
    /// expires.
    verified: Mutex<HashMap<String, Verified>>,
    /// Bumped by every `forget_user`: a lookup that began before one is not cached (it
    /// may have read what was just revoked).
    generation: std::sync::atomic::AtomicU64,
}

struct Verified {
    user: UserInfo,
    at: Instant,
    expires_at: Option<i64>,
}

impl TokenCache {
    /// Most tokens kept; when full it starts over (a real server has a handful).
    const MAX: usize = 10_000;

    pub fn new(ttl: Duration) -> TokenCache {
        TokenCache {
            ttl,
            verified: Default::default(),
            generation: Default::default(),
        }
    }

    /// The user `token` belongs to, as `user_for_token` says, at most `ttl` ago (and never
    /// past the token's expiry).
    pub async fn user(&self, db: &Db, token: &str) -> Result<Option<UserInfo>, DbError> {
        use std::sync::atomic::Ordering;
        let hash = secret_hash(token);
        let now = now_ms();
        let fresh = |v: &Verified| {
            (v.at.elapsed() < self.ttl && v.expires_at.is_none_or(|at| at > now))
                .then(|| v.user.clone())
        };
        if let Some(user) = self.lock().get(&hash).and_then(fresh) {
            return Ok(Some(user));
        }
        let generation = self.generation.load(Ordering::SeqCst);
        let found = token_lookup(db, token).await?;
        let mut verified = self.lock();
        match &found {
            Some((user, expires_at)) if self.generation.load(Ordering::SeqCst) == generation => {
                if verified.len() >= Self::MAX {
                    verified.clear();
                }
                verified.insert(
                    hash,
                    Verified {
                        user: user.clone(),
                        at: Instant::now(),
                        expires_at: *expires_at,
                    },
                );
            }
            Some(_) => {}
            None => {
                verified.remove(&hash);
            }
        }
        Ok(found.map(|(user, _)| user))
    }

    /// Forgets every token of a user (one was revoked, or the user changed): they answer
    /// from the database from now on, not after `ttl`.
    pub fn forget_user(&self, user_id: &str) {
        self.generation
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        self.lock().retain(|_, v| v.user.id != user_id);
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<String, Verified>> {
        self.verified.lock()
    }
}

/// Starts a console session; returns the cookie value.
pub async fn create_session(db: &Db, user: &UserInfo) -> Result<String, DbError> {
    let secret = new_secret();
    let now = now_ms();
    db.insert_session(&secret_hash(&secret), &user.id, now, now + SESSION_TTL_MS)
        .await?;
    Ok(secret)
}

pub async fn user_for_session(db: &Db, secret: &str) -> Result<Option<UserInfo>, DbError> {
    db.session_user(&secret_hash(secret), now_ms()).await
}

pub async fn end_session(db: &Db, secret: &str) -> Result<(), DbError> {
    db.delete_session(&secret_hash(secret), now_ms()).await
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn db() -> (tempfile::TempDir, Db) {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("t.db").display());
        let db = crate::store::connect(&url).await.unwrap();
        (dir, db)
    }

    /// A user "alice" and an API token of hers.
    async fn alice_with_token(db: &Db) -> (UserInfo, String) {
        let alice = create_user(db, "alice", Some("correct horse"), false)
            .await
            .unwrap();
        let token = create_token(db, "alice", "ci").await.unwrap();
        (alice, token)
    }

    #[tokio::test]
    async fn first_admin_gets_a_random_password_once() {
        let (_d, db) = db().await;
        let pw = bootstrap_admin(&db).await.unwrap().expect("created");
        assert_eq!(pw.len(), 20);
        assert!(bootstrap_admin(&db).await.unwrap().is_none());
        let user = check_login(&db, ADMIN_USER, &pw)
            .await
            .unwrap()
            .expect("login works");
        assert!(user.is_admin);
        assert!(check_login(&db, ADMIN_USER, "wrong-password")
            .await
            .unwrap()
            .is_none());
        assert!(check_login(&db, "nobody", &pw).await.unwrap().is_none());
    }

    #[tokio::test]
    async fn tokens_and_sessions_resolve_to_their_user_and_can_end() {
        let (_d, db) = db().await;
        let (alice, token) = alice_with_token(&db).await;
        assert!(token.starts_with(TOKEN_PREFIX));
        assert_eq!(
            user_for_token(&db, &token).await.unwrap(),
            Some(alice.clone())
        );
        assert_eq!(user_for_token(&db, "dpl_bogus").await.unwrap(), None);
        let stored: String = sqlx::query_scalar("SELECT token_hash FROM api_tokens")
            .fetch_one(&db.read)
            .await
            .unwrap();
        assert_ne!(stored, token, "only the hash is stored");

        let session = create_session(&db, &alice).await.unwrap();
        assert_eq!(
            user_for_session(&db, &session).await.unwrap(),
            Some(alice.clone())
        );
        end_session(&db, &session).await.unwrap();
        assert_eq!(user_for_session(&db, &session).await.unwrap(), None);
    }

    #[tokio::test]
    async fn a_cached_token_is_checked_again_once_its_time_is_up() {
        let (_d, db) = db().await;
        let (alice, token) = alice_with_token(&db).await;
        let cache = TokenCache::new(Duration::from_millis(300));
        assert_eq!(cache.user(&db, &token).await.unwrap(), Some(alice.clone()));
        assert_eq!(cache.user(&db, "dpl_bogus").await.unwrap(), None);
        db.write("DELETE FROM api_tokens", vec![]).await.unwrap();
        // Within its time the answer comes from memory, without the database...
        assert_eq!(cache.user(&db, &token).await.unwrap(), Some(alice));
        // ...and after it, the token is looked up again: gone.
        tokio::time::sleep(Duration::from_millis(350)).await;
        assert_eq!(cache.user(&db, &token).await.unwrap(), None);
    }

    #[tokio::test]
    async fn set_password_rejects_weak_passwords_and_ends_sessions() {
        let (_d, db) = db().await;
        let bob = create_user(&db, "bob", None, false).await.unwrap();
        assert!(
            check_login(&db, "bob", "").await.unwrap().is_none(),
            "no password, no login"
        );
        assert!(matches!(
            set_password(&db, "bob", "short").await,
            Err(AuthError::WeakPassword)
        ));
        assert!(matches!(
            set_password(&db, "carol", "long enough").await,
            Err(AuthError::NoSuchUser(_))
        ));
        let session = create_session(&db, &bob).await.unwrap();
        set_password(&db, "bob", "long enough").await.unwrap();
        assert!(check_login(&db, "bob", "long enough")
            .await
            .unwrap()
            .is_some());
        assert_eq!(user_for_session(&db, &session).await.unwrap(), None);
        assert!(matches!(
            create_user(&db, "bob", None, false).await,
            Err(AuthError::UserExists(_))
        ));
    }
}
