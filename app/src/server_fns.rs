//! Server functions: the console's calls into the backend. Each is a thin shim that finds
//! the caller and forwards to the shared [`Backend`](crate::backend::Backend).

// The copy form posts the contract's fields one by one, so its server function takes many.
#![allow(clippy::too_many_arguments)]

use leptos::prelude::*;

use crate::model::*;

#[cfg(feature = "ssr")]
async fn caller() -> Result<(crate::backend::SharedBackend, UserInfo), ApiError> {
    use crate::backend::{CurrentUser, SharedBackend};
    let backend = use_context::<SharedBackend>().ok_or_else(ApiError::internal)?;
    let parts: http::request::Parts = leptos_axum::extract()
        .await
        .map_err(|_| ApiError::internal())?;
    match parts.extensions.get::<CurrentUser>() {
        Some(CurrentUser(user)) => Ok((backend, user.clone())),
        None => Err(ApiError::unauthorized()),
    }
}

/// The logged-in user, or `None` when the session is missing or expired.
#[server]
pub async fn whoami() -> Result<Option<UserInfo>, ApiError> {
    match caller().await {
        Ok((_, user)) => Ok(Some(user)),
        Err(e) if e.code == ErrorCode::Unauthorized => Ok(None),
        Err(e) => Err(e),
    }
}

#[server]
pub async fn list_projects() -> Result<Vec<Project>, ApiError> {
    let (backend, user) = caller().await?;
    backend.list_projects(&user).await
}

#[server]
pub async fn list_containers(
    project_id: Option<String>,
) -> Result<Vec<ContainerSummary>, ApiError> {
    let (backend, user) = caller().await?;
    backend.list_containers(&user, project_id.as_deref()).await
}

#[server]
pub async fn get_container(id: String) -> Result<ContainerDetail, ApiError> {
    let (backend, user) = caller().await?;
    backend.get_container(&user, &id).await
}

#[server]
pub async fn list_servers() -> Result<Vec<Server>, ApiError> {
    let (backend, user) = caller().await?;
    backend.list_servers(&user).await
}

/// Every copy the user can see with its sync status, and the server's clock (so that
/// "5 min ago" reads the same on the server and in the browser).
#[server]
pub async fn sync_status() -> Result<(Millis, Vec<CopyStatus>), ApiError> {
    let (backend, user) = caller().await?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as Millis);
    Ok((now, backend.sync_status(&user).await?))
}

/// Recent jobs, newest first, filtered by kind and status (empty: any): a page of them,
/// older than the job `before` when given.
#[server]
pub async fn list_jobs(
    kind: Option<String>,
    status: Option<String>,
    before: Option<String>,
) -> Result<Vec<Job>, ApiError> {
    let (backend, user) = caller().await?;
    let given = |v: Option<String>| v.filter(|s| !s.is_empty());
    let filter = JobFilter {
        kind: given(kind),
        status: given(status),
        before: given(before),
        ..JobFilter::default()
    };
    backend.list_jobs(&user, &filter).await
}

/// A request the backend refused for a reason the user can fix (a taken name, a bad key)
/// comes back as `Ok(Err(..))`: an expected answer, not a failed call (which a browser
/// would log as an error).
pub type Answer<T> = Result<Result<T, ApiError>, ApiError>;

#[cfg(feature = "ssr")]
fn answer<T>(r: Result<T, ApiError>) -> Answer<T> {
    match r {
        Err(e) if e.code == ErrorCode::Internal || e.code == ErrorCode::Unauthorized => Err(e),
        other => Ok(other),
    }
}

/// The copy dialog's form: every field of the contract, as a form posts them (empty text
/// means "not given", a checked box is "on").
#[server]
pub async fn copy_container(
    id: String,
    target_project_id: String,
    target_server_id: Option<String>,
    name: Option<String>,
    ssh_public_key: Option<String>,
    source_snapshot: Option<String>,
    copy_firewall_rules: Option<String>,
    copy_network_rules: Option<String>,
) -> Answer<CopyStarted> {
    let (backend, user) = caller().await?;
    let given = |v: Option<String>| v.map(|s| s.trim().to_string()).filter(|s| !s.is_empty());
    let req = CopyRequest {
        target_project_id,
        target_server_id: given(target_server_id),
        name: given(name),
        ssh_public_key: given(ssh_public_key),
        source_snapshot: given(source_snapshot),
        copy_firewall_rules: copy_firewall_rules.is_some(),
        copy_network_rules: copy_network_rules.is_some(),
    };
    let result = backend
        .copy_container(&user, &id, req.clone(), None, &TransferOptions::default())
        .await;
    if plain_form_post().await {
        // No JavaScript: answer with a page. The new container with its job, or the form
        // again with what was sent and why it was refused.
        match &result {
            Ok(started) => leptos_axum::redirect(&format!(
                "/containers/{}?job={}",
                started.container.summary.id, started.job.id
            )),
            Err(e) => {
                let mut q = vec![
                    ("error", e.message.clone()),
                    ("target_project_id", req.target_project_id),
                ];
                q.extend(e.field.clone().map(|f| ("error_field", f)));
                for (k, v) in [
                    ("target_server_id", req.target_server_id),
                    ("name", req.name),
                    ("ssh_public_key", req.ssh_public_key),
                    ("source_snapshot", req.source_snapshot),
                ] {
                    q.extend(v.map(|v| (k, v)));
                }
                for (k, on) in [
                    ("copy_firewall_rules", req.copy_firewall_rules),
                    ("copy_network_rules", req.copy_network_rules),
                ] {
                    if on {
                        q.push((k, "on".into()));
                    }
                }
                let query: Vec<String> = q
                    .iter()
                    .map(|(k, v)| format!("{k}={}", crate::backend::percent_encode(v)))
                    .collect();
                leptos_axum::redirect(&format!(
                    "/containers/{}/copy?{}",
                    crate::backend::percent_encode(&id),
                    query.join("&")
                ));
            }
        }
    }
    answer(result)
}

/// Whether the request is a plain HTML form post (no JavaScript): the browser asks for a
/// page, where the server function client asks for data.
#[cfg(feature = "ssr")]
async fn plain_form_post() -> bool {
    let parts: Option<http::request::Parts> = leptos_axum::extract().await.ok();
    parts
        .and_then(|p| {
            p.headers
                .get(http::header::ACCEPT)
                .and_then(|v| v.to_str().ok())
                .map(|v| v.contains("text/html"))
        })
        .unwrap_or(false)
}

/// The cookie a plain form post's secret, shown once, rides on to the page the post
/// redirects to: HttpOnly, for that page's path only, a minute at most, and taken (cleared)
/// by the page that shows it ([`take_shown_once`]).
#[cfg(feature = "ssr")]
const SHOWN_ONCE: &str = "doppel_shown_once";

/// After a form of the page at `page`, posted without JavaScript: back to that page, with
/// the error (`?error=`, `&error_field=`) or, when the answer holds a secret shown once
/// (`secret`: what it says, and the secret), that secret for the page to show. (With
/// JavaScript the form's action shows both itself.)
#[cfg(feature = "ssr")]
async fn back_to_page<T>(
    page: &str,
    result: Answer<T>,
    secret: impl FnOnce(&T) -> Option<(String, String)>,
) -> Answer<T> {
    if plain_form_post().await {
        let enc = crate::backend::percent_encode;
        match &result {
            Ok(Err(e)) | Err(e) => leptos_axum::redirect(&format!(
                "{page}?error={}&error_field={}",
                enc(&e.message),
                enc(e.field.as_deref().unwrap_or_default())
            )),
            Ok(Ok(value)) => {
                if let Some((what, secret)) = secret(value) {
                    let cookie = format!(
                        "{SHOWN_ONCE}={}:{}; Path={page}; Max-Age=60; HttpOnly; SameSite=Strict",
                        enc(&what),
                        enc(&secret)
                    );
                    if let (Some(resp), Ok(v)) = (
                        use_context::<leptos_axum::ResponseOptions>(),
                        http::HeaderValue::from_str(&cookie),
                    ) {
                        resp.append_header(http::header::SET_COOKIE, v);
                    }
                }
                leptos_axum::redirect(page)
            }
        }
    }
    result
}

/// The secret a plain form post left for this page (see [`back_to_page`]): what it is,
/// and the secret, once; the cookie that held it is cleared with this page's answer.
#[server]
pub async fn take_shown_once(page: String) -> Result<Option<(String, String)>, ApiError> {
    // Only the pages that are sent one (the path goes into a cookie attribute).
    if !["/settings", "/admin", "/servers"].contains(&page.as_str()) {
        return Ok(None);
    }
    let parts: Option<http::request::Parts> = leptos_axum::extract().await.ok();
    let found = parts.as_ref().and_then(|p| {
        p.headers
            .get_all(http::header::COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(';'))
            .find_map(|c| c.trim().strip_prefix(&format!("{SHOWN_ONCE}=")))
            .and_then(|v| v.split_once(':'))
            .and_then(|(what, secret)| Some((percent_decode(what)?, percent_decode(secret)?)))
    });
    if found.is_some() {
        let clear = format!("{SHOWN_ONCE}=; Path={page}; Max-Age=0; HttpOnly; SameSite=Strict");
        if let (Some(resp), Ok(v)) = (
            use_context::<leptos_axum::ResponseOptions>(),
            http::HeaderValue::from_str(&clear),
        ) {
            resp.append_header(http::header::SET_COOKIE, v);
        }
    }
    Ok(found)
}

/// The inverse of `percent_encode` (`%XX` escapes; `None` if malformed or not UTF-8).
#[cfg(feature = "ssr")]
fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 3;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

/// One job, as the caller may see it.
#[server]
pub async fn get_job(id: String) -> Result<Job, ApiError> {
    let (backend, user) = caller().await?;
    backend.get_job(&user, &id).await
}

#[server]
pub async fn sync_container(id: String) -> Answer<Job> {
    let (backend, user) = caller().await?;
    answer(
        backend
            .sync_container(&user, &id, None, &TransferOptions::default())
            .await,
    )
}

#[server]
pub async fn cancel_job(id: String) -> Answer<Job> {
    let (backend, user) = caller().await?;
    answer(backend.cancel_job(&user, &id).await)
}

/// Starts, stops or restarts a container (`action`: `start`, `stop` or `restart`); the
/// container as it is afterwards. Without JavaScript the browser goes back to its page.
#[server]
pub async fn container_action(id: String, action: String) -> Answer<ContainerDetail> {
    let (backend, user) = caller().await?;
    let result = match action.as_str() {
        "start" => backend.start_container(&user, &id).await,
        "stop" => backend.stop_container(&user, &id).await,
        "restart" => backend.restart_container(&user, &id).await,
        other => Err(ApiError::invalid(format!(
            "{other:?} is not start, stop or restart"
        ))),
    };
    back_to_container(&id, answer(result)).await
}

/// The last lines a container's process wrote.
#[server]
pub async fn get_container_logs(id: String) -> Result<ContainerLogs, ApiError> {
    let (backend, user) = caller().await?;
    backend.container_logs(&user, &id).await
}

/// Whether containers can run on this doppel (and why not).
#[server]
pub async fn get_runtime_health() -> Result<RuntimeHealth, ApiError> {
    let (backend, _) = caller().await?;
    Ok(backend.health().runtime)
}

/// Deletes a container once its name is typed again (`confirm`); the delete's job.
/// Without JavaScript the browser goes to the jobs page.
#[server]
pub async fn delete_container(id: String, confirm: String) -> Answer<Job> {
    let (backend, user) = caller().await?;
    let result = match backend.get_container(&user, &id).await {
        Ok(c) if confirm.trim() == c.summary.name => backend.delete_container(&user, &id).await,
        Ok(c) => Err(ApiError::new(
            ErrorCode::Unprocessable,
            format!("type {:?} to confirm the delete", c.summary.name),
        )
        .on_field("confirm")),
        Err(e) => Err(e),
    };
    if plain_form_post().await {
        match &result {
            Ok(_) => leptos_axum::redirect("/jobs?kind=delete"),
            Err(e) => leptos_axum::redirect(&format!(
                "/containers/{}?error={}",
                crate::backend::percent_encode(&id),
                crate::backend::percent_encode(&e.message)
            )),
        }
    }
    answer(result)
}

/// Makes a container's directory tree an image tree (platform admins); the job.
/// Without JavaScript the browser goes back to the container's page, which follows the job
/// (`?job=`) or says why it was refused.
#[server]
pub async fn convert_tree(id: String) -> Answer<Job> {
    let (backend, user) = caller().await?;
    let result = backend.convert_tree(&user, &id).await;
    if plain_form_post().await {
        let enc = crate::backend::percent_encode;
        let page = format!("/containers/{}", enc(&id));
        match &result {
            Ok(job) => leptos_axum::redirect(&format!("{page}?job={}", enc(&job.id))),
            Err(e) => leptos_axum::redirect(&format!("{page}?error={}", enc(&e.message))),
        }
    }
    answer(result)
}

/// After a settings form: the container again, or (without JavaScript) its page, with the
/// error when there is one.
#[cfg(feature = "ssr")]
async fn back_to_container(id: &str, result: Answer<ContainerDetail>) -> Answer<ContainerDetail> {
    let back = format!("/containers/{}", crate::backend::percent_encode(id));
    back_to_page(&back, result, |_| None).await
}

/// What the container runs: arguments and environment one per line, and a directory.
#[server]
pub async fn set_command(
    id: String,
    args: String,
    env: String,
    cwd: String,
) -> Answer<ContainerDetail> {
    let (backend, user) = caller().await?;
    let command = ContainerCommand {
        args: crate::rules_text::parse_list(&args),
        env: crate::rules_text::parse_list(&env),
        cwd: if cwd.trim().is_empty() {
            "/".into()
        } else {
            cwd.trim().to_string()
        },
    };
    let result = answer(backend.set_command(&user, &id, command).await);
    back_to_container(&id, result).await
}

/// The firewall rules, one per line (`rules_text`).
#[server]
pub async fn set_firewall_rules(id: String, rules: String) -> Answer<ContainerDetail> {
    let (backend, user) = caller().await?;
    let result = match crate::rules_text::parse_firewall(&rules) {
        Ok(rules) => answer(backend.set_firewall_rules(&user, &id, rules).await),
        Err(e) => Ok(Err(
            ApiError::new(ErrorCode::Unprocessable, e).on_field("rules")
        )),
    };
    back_to_container(&id, result).await
}

/// The network rules, one per line (`rules_text`).
#[server]
pub async fn set_network_rules(id: String, rules: String) -> Answer<ContainerDetail> {
    let (backend, user) = caller().await?;
    let result = match crate::rules_text::parse_network(&rules) {
        Ok(rules) => answer(backend.set_network_rules(&user, &id, rules).await),
        Err(e) => Ok(Err(
            ApiError::new(ErrorCode::Unprocessable, e).on_field("rules")
        )),
    };
    back_to_container(&id, result).await
}

/// The caller's API tokens.
#[server]
pub async fn list_my_tokens() -> Result<Vec<ApiToken>, ApiError> {
    let (backend, user) = caller().await?;
    backend.list_tokens(&user).await
}

/// A new API token of the caller: a name, an expiry in days (empty: never), read-only or
/// not. The secret is in the answer, once.
#[server]
pub async fn create_my_token(
    name: String,
    expires_in_days: Option<String>,
    read_only: Option<String>,
) -> Answer<CreatedToken> {
    let (backend, user) = caller().await?;
    let days = expires_in_days
        .map(|d| d.trim().to_string())
        .filter(|d| !d.is_empty());
    let expires_at = match days.map(|d| d.parse::<u32>()) {
        None => None,
        Some(Ok(d)) if (1..=3650).contains(&d) => Some(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |t| t.as_millis() as Millis)
                + i64::from(d) * 86_400_000,
        ),
        Some(_) => {
            let refused = Ok(Err(ApiError::new(
                ErrorCode::Unprocessable,
                "expires in: a number of days from 1 to 3650, or empty for never",
            )
            .on_field("expires_in_days")));
            return back_to_page("/settings", refused, |_| None).await;
        }
    };
    let req = NewToken {
        name,
        expires_at,
        read_only: read_only.is_some(),
        projects: None,
    };
    let result = answer(backend.create_token(&user, req).await);
    back_to_page("/settings", result, |made| {
        Some((
            format!("Token {:?}, shown once; copy it now:", made.token.name),
            made.secret.clone(),
        ))
    })
    .await
}

#[server]
pub async fn revoke_my_token(id: String) -> Answer<()> {
    let (backend, user) = caller().await?;
    back_to_page(
        "/settings",
        answer(backend.revoke_token(&user, &id).await),
        |_| None,
    )
    .await
}

/// Changes the caller's password; their console sessions end (this one too).
#[server]
pub async fn change_my_password(current: String, new: String) -> Answer<()> {
    let (backend, user) = caller().await?;
    let result = answer(
        backend
            .change_own_password(&user, PasswordChange { current, new })
            .await,
    );
    back_to_page("/settings", result, |_| None).await
}

/// The audit log, newest first, as `AuditFilter` narrows it (empty fields: any).
#[server]
pub async fn list_audit(
    actor: Option<String>,
    action: Option<String>,
    before: Option<String>,
) -> Result<Vec<AuditEntry>, ApiError> {
    let (backend, user) = caller().await?;
    let given = |v: Option<String>| v.map(|s| s.trim().to_string()).filter(|s| !s.is_empty());
    let filter = AuditFilter {
        actor: given(actor),
        action: given(action),
        before: given(before),
        limit: Some(100),
        ..AuditFilter::default()
    };
    backend.list_audit(&user, &filter).await
}

/// Every user (platform admins; anyone else gets 403).
#[server]
pub async fn list_users() -> Result<Vec<UserAccount>, ApiError> {
    let (backend, user) = caller().await?;
    backend.list_users(&user).await
}

/// A new user; the answer holds their password, once.
#[server]
pub async fn create_user(name: String, is_admin: Option<String>) -> Answer<UserWithPassword> {
    let (backend, user) = caller().await?;
    let req = NewUser {
        name: name.trim().to_string(),
        is_admin: is_admin.is_some(),
    };
    let result = answer(backend.create_user(&user, req).await);
    back_to_page("/admin", result, shown_password).await
}

/// A new or reset password, as a plain form post's page shows it once.
#[cfg(feature = "ssr")]
fn shown_password(made: &UserWithPassword) -> Option<(String, String)> {
    Some((
        format!(
            "Password of {:?}, shown once; give it to them:",
            made.user.name
        ),
        made.password.clone(),
    ))
}

/// `change`: `disable`, `enable`, `make-admin` or `remove-admin`.
#[server]
pub async fn change_user(name: String, change: String) -> Answer<UserAccount> {
    let (backend, user) = caller().await?;
    let change = match change.as_str() {
        "disable" => UserChange {
            disabled: Some(true),
            ..Default::default()
        },
        "enable" => UserChange {
            disabled: Some(false),
            ..Default::default()
        },
        "make-admin" => UserChange {
            is_admin: Some(true),
            ..Default::default()
        },
        "remove-admin" => UserChange {
            is_admin: Some(false),
            ..Default::default()
        },
        other => return Ok(Err(ApiError::invalid(format!("{other:?} is not a change")))),
    };
    back_to_page(
        "/admin",
        answer(backend.update_user(&user, &name, change).await),
        |_| None,
    )
    .await
}

/// A new random password for a user, shown once.
#[server]
pub async fn reset_user_password(name: String) -> Answer<UserWithPassword> {
    let (backend, user) = caller().await?;
    let result = answer(backend.reset_password(&user, &name).await);
    back_to_page("/admin", result, shown_password).await
}

#[server]
pub async fn create_project(name: String, description: Option<String>) -> Answer<Project> {
    let (backend, user) = caller().await?;
    let req = NewProject {
        name: name.trim().to_string(),
        description: description.filter(|d| !d.trim().is_empty()),
    };
    back_to_page(
        "/admin",
        answer(backend.create_project(&user, req).await),
        |_| None,
    )
    .await
}

/// Every server with its state, and the server's clock (for "seen 3 s ago").
#[server]
pub async fn server_overview() -> Result<(Millis, Vec<Server>), ApiError> {
    let (backend, user) = caller().await?;
    let servers = backend.list_servers(&user).await?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as Millis);
    Ok((now, servers))
}

/// A server on another host (platform admins); the answer holds its one-time join token.
#[server]
pub async fn add_server(name: String, description: Option<String>) -> Answer<ServerWithJoinToken> {
    let (backend, user) = caller().await?;
    let req = NewServer {
        name: name.trim().to_string(),
        description: description.filter(|d| !d.trim().is_empty()),
    };
    let result = answer(backend.add_server(&user, req).await);
    back_to_page("/servers", result, |added| {
        Some((
            format!(
                "Join token of {:?}, shown once (good until it expires): on its host run doppel agent join https://<this host's --agents-addr> TOKEN with",
                added.server.name
            ),
            added.join_token.clone(),
        ))
    })
    .await
}

/// A server's bandwidth limit (`50M`), or none when empty (platform admins).
#[server]
pub async fn set_server_bwlimit(server_id: String, bwlimit: Option<String>) -> Answer<Server> {
    let (backend, user) = caller().await?;
    let req = ServerBwlimit {
        bwlimit: bwlimit
            .map(|b| b.trim().to_string())
            .filter(|b| !b.is_empty()),
    };
    let result = answer(backend.set_server_bwlimit(&user, &server_id, req).await);
    back_to_page("/servers", result, |_| None).await
}

/// A convert job for each directory tree on one of this host's servers (platform
/// admins). Without JavaScript the browser goes back to the Servers page.
#[server]
pub async fn convert_server_trees(server_id: String) -> Answer<ServerConversions> {
    let (backend, user) = caller().await?;
    let result = answer(backend.convert_server_trees(&user, &server_id).await);
    back_to_page("/servers", result, |_| None).await
}

/// A project's new name and description (its admins).
#[server]
pub async fn update_project(
    project_id: String,
    name: String,
    description: Option<String>,
) -> Answer<Project> {
    let (backend, user) = caller().await?;
    let req = ProjectRequest {
        name: Some(name.trim().to_string()),
        description: Some(description.unwrap_or_default().trim().to_string()),
    };
    let result = answer(backend.update_project(&user, &project_id, req).await);
    back_to_page("/admin", result, |_| None).await
}

/// Deletes a project that holds no containers (platform admins), once its name is typed.
#[server]
pub async fn delete_project(project_id: String, confirm: String) -> Answer<()> {
    let (backend, user) = caller().await?;
    let project = backend
        .list_projects(&user)
        .await?
        .into_iter()
        .find(|p| p.id == project_id);
    let result = answer(match project {
        Some(p) if confirm.trim() == p.name => backend.delete_project(&user, &project_id).await,
        Some(p) => Err(ApiError::new(
            ErrorCode::Unprocessable,
            format!("type {:?} to confirm the delete", p.name),
        )
        .on_field("confirm")),
        None => Err(ApiError::not_found("project", &project_id)),
    });
    back_to_page("/admin", result, |_| None).await
}

#[server]
pub async fn list_members(project_id: String) -> Result<Vec<Member>, ApiError> {
    let (backend, user) = caller().await?;
    backend.list_members(&user, &project_id).await
}

/// Gives a user (by name) a role in a project.
#[server]
pub async fn set_member(project_id: String, user_name: String, role: String) -> Answer<Member> {
    let (backend, user) = caller().await?;
    let result = match Role::parse(&role) {
        None => Ok(Err(
            ApiError::invalid("role is viewer, operator or admin").on_field("role")
        )),
        Some(role) => answer(
            backend
                .set_member(&user, &project_id, user_name.trim(), role)
                .await,
        ),
    };
    back_to_page("/admin", result, |_| None).await
}

#[server]
pub async fn remove_member(project_id: String, user_name: String) -> Answer<()> {
    let (backend, user) = caller().await?;
    let result = answer(backend.remove_member(&user, &project_id, &user_name).await);
    back_to_page("/admin", result, |_| None).await
}
