//! Who is calling: a Bearer token or the console's session cookie becomes the request's
//! `CurrentUser`; login and logout; the guards around cookies (same-site writes only, no
//! open redirect after login).

use app::backend::{percent_encode, CurrentUser};
use axum::extract::rejection::FormRejection;
use std::net::{IpAddr, SocketAddr};

use axum::extract::{ConnectInfo, FromRequestParts, Request, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Redirect, Response};
use axum::Form;
use serde::Deserialize;

use app::model::{ApiError, UserInfo};

use super::api::{BadCredentials, RestError};
use super::AppState;
use crate::auth::{SESSION_COOKIE, SESSION_TTL_MS};
use crate::service::{LoginOutcome, Service};

/// The value of a cookie in the request, if present.
fn cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(cookie::Cookie::split_parse)
        .filter_map(Result::ok)
        .find(|c| c.name() == name)
        .map(|c| c.value().to_string())
}

/// Pages of the console that need a login; everything else (API, assets, login itself)
/// answers for itself.
fn is_console_page(path: &str) -> bool {
    !(path.starts_with("/api/")
        || path.starts_with("/pkg/")
        || path.starts_with("/auth/")
        || path == "/login"
        || path == "/healthz"
        || path.starts_with("/favicon"))
}

/// Resolves the caller (Bearer token first, else the session cookie) into a `CurrentUser`
/// request extension, and sends a visitor without a session from a console page to the login.
pub(super) async fn resolve_caller(
    State(state): State<AppState>,
    mut req: Request,
    next: Next,
) -> Response {
    // Static assets are public and frequent: no credential lookups for them.
    let path = req.uri().path();
    if path.starts_with("/pkg/") || path.starts_with("/favicon") || path == "/healthz" {
        return next.run(req).await;
    }
    let service = &state.service;
    let headers = req.headers();
    let has_auth_header = headers.contains_key(header::AUTHORIZATION);
    let credential = Credential::of(headers, req.method());
    // An expired or unknown cookie is the same as none: the login page, not an error.
    let lookup = match &credential {
        Some(c) => c.lookup(service).await,
        None => Ok(None),
    };
    let user = match lookup {
        Ok(user) => user,
        // Not a 401: the credential may well be good, and a client that drops its token
        // on a 401 would be wrong to.
        Err(e) => {
            tracing::error!(error = %e, "credential lookup failed");
            return RestError(ApiError::unavailable()).into_response();
        }
    };
    match user {
        Some(mut user) => {
            // Where it came from, for the audit log.
            user.from = req
                .extensions()
                .get::<ConnectInfo<SocketAddr>>()
                .map(|c| c.0.ip());
            if let Some(credential) = credential {
                req.extensions_mut().insert(credential);
            }
            req.extensions_mut().insert(CurrentUser(user));
        }
        None => {
            if has_auth_header {
                req.extensions_mut().insert(BadCredentials);
            }
            if req.method() == Method::GET && is_console_page(req.uri().path()) {
                let target = req
                    .uri()
                    .path_and_query()
                    .map(|pq| pq.as_str())
                    .unwrap_or("/");
                return Redirect::to(&format!("/login?next={}", percent_encode(target)))
                    .into_response();
            }
        }
    }
    next.run(req).await
}

fn cross_site_refused() -> Response {
    (
        StatusCode::FORBIDDEN,
        "cross-site request refused: log in and out from doppel's own pages",
    )
        .into_response()
}

/// `; Secure` when the browser reached doppel over HTTPS: directly (not supported yet) or
/// through a proxy that says so. Only ever restricts the cookie, so the header is trusted.
fn secure_attribute(headers: &HeaderMap) -> &'static str {
    let forwarded_https = headers
        .get("x-forwarded-proto")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("https"))
        || headers
            .get(header::FORWARDED)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.to_ascii_lowercase().contains("proto=https"));
    if forwarded_https {
        "; Secure"
    } else {
        ""
    }
}

/// The client's address (from the connection; unspecified when unknown, e.g. in tests
/// that call the router directly).
pub(super) struct ClientAddr(pub IpAddr);

impl<S: Send + Sync> FromRequestParts<S> for ClientAddr {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        Ok(ClientAddr(
            parts
                .extensions
                .get::<ConnectInfo<SocketAddr>>()
                .map_or(IpAddr::from([0, 0, 0, 0]), |c| c.0.ip()),
        ))
    }
}

/// The credential a request was let in with, kept for long-lived responses (event streams)
/// to check again while they last: a logout, an expired session or a removed token ends them.
#[derive(Clone)]
pub(crate) enum Credential {
    Token(String),
    Session(String),
}

impl Credential {
    /// What a request offers: the Bearer token when it has an Authorization header (a
    /// malformed one offers nothing), else the session cookie, which is only taken for
    /// same-site writes.
    fn of(headers: &HeaderMap, method: &Method) -> Option<Credential> {
        if headers.contains_key(header::AUTHORIZATION) {
            bearer_token(headers).map(|t| Credential::Token(t.to_string()))
        } else {
            cookie(headers, SESSION_COOKIE)
                .filter(|_| same_origin(method, headers))
                .map(Credential::Session)
        }
    }

    /// Who the credential stands for (`None`: nobody, or nobody any more); `Err`: the
    /// database did not answer (said in the log, not to the client).
    async fn lookup(&self, service: &Service) -> Result<Option<UserInfo>, String> {
        match self {
            Credential::Token(t) => service.user_for_token(t).await,
            Credential::Session(s) => service.user_for_session(s).await,
        }
        .map_err(|e| e.to_string())
    }

    /// [`Self::lookup`] for a stream checking its caller again: a database that does not
    /// answer ends the stream (the client reconnects and is checked afresh).
    pub(crate) async fn user(&self, service: &Service) -> Option<UserInfo> {
        self.lookup(service).await.unwrap_or_else(|e| {
            tracing::warn!(error = %e, "checking a stream's credential failed");
            None
        })
    }
}

/// Cross-site request forgery guard for cookie-authenticated requests that change things:
/// a browser says where a request comes from (Sec-Fetch-Site, Origin); anything but this
/// site does not get the session. Bearer tokens are not sent by browsers on their own.
fn same_origin(method: &Method, headers: &HeaderMap) -> bool {
    if matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS) {
        return true;
    }
    if let Some(site) = headers.get("sec-fetch-site").and_then(|v| v.to_str().ok()) {
        return site == "same-origin" || site == "none";
    }
    match (headers.get(header::ORIGIN), headers.get(header::HOST)) {
        (Some(origin), Some(host)) => {
            let origin = origin.to_str().unwrap_or("");
            let host = host.to_str().unwrap_or("");
            origin == format!("http://{host}") || origin == format!("https://{host}")
        }
        (Some(_), None) => false,
        // No browser origin information: not a browser-driven cross-site request.
        (None, _) => true,
    }
}

fn bearer_token(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

#[derive(Deserialize)]
pub(super) struct LoginForm {
    username: String,
    password: String,
    next: Option<String>,
}

/// Only same-site paths are followed after login (no open redirect): a path starting
/// with one `/`, of visible ASCII only (browsers drop tabs and newlines in a Location,
/// which would turn `/\t/evil` into `//evil`).
fn safe_next(next: Option<&str>) -> &str {
    match next {
        Some(n)
            if n.starts_with('/')
                && !n.starts_with("//")
                && !n.starts_with("/\\")
                && n.bytes().all(|b| (0x21..=0x7e).contains(&b) && b != b'\\') =>
        {
            n
        }
        _ => "/containers",
    }
}

pub(super) async fn login(
    State(state): State<AppState>,
    ClientAddr(from): ClientAddr,
    headers: HeaderMap,
    form: Result<Form<LoginForm>, FormRejection>,
) -> Response {
    if !same_origin(&Method::POST, &headers) {
        return cross_site_refused();
    }
    let Ok(Form(form)) = form else {
        return Redirect::to("/login?error=1").into_response();
    };
    match state
        .service
        .log_in(form.username.trim(), &form.password, from)
        .await
    {
        Ok(LoginOutcome::Session(secret)) => {
            let cookie = format!(
                "{SESSION_COOKIE}={secret}; Path=/; HttpOnly; SameSite=Lax; Max-Age={}{}",
                SESSION_TTL_MS / 1000,
                secure_attribute(&headers)
            );
            let mut resp = Redirect::to(safe_next(form.next.as_deref())).into_response();
            if let Ok(v) = HeaderValue::from_str(&cookie) {
                resp.headers_mut().insert(header::SET_COOKIE, v);
            }
            resp
        }
        Ok(LoginOutcome::Wrong) => {
            // Debug formatting: a name with line breaks cannot forge log lines.
            tracing::info!(user = ?form.username, client = %from, "failed login");
            Redirect::to("/login?error=1").into_response()
        }
        Ok(LoginOutcome::Wait(wait)) => {
            tracing::info!(user = ?form.username, client = %from, "login refused: too many failures");
            let mut resp = Redirect::to("/login?error=wait").into_response();
            if let Ok(v) = HeaderValue::from_str(&wait.as_secs().max(1).to_string()) {
                resp.headers_mut().insert(header::RETRY_AFTER, v);
            }
            resp
        }
        Err(e) => {
            tracing::error!(error = %e, "login failed");
            (
                StatusCode::SERVICE_UNAVAILABLE,
                "login is unavailable; try again",
            )
                .into_response()
        }
    }
}

pub(super) async fn logout(State(state): State<AppState>, headers: HeaderMap) -> Response {
    // Another site cannot log a user out (nor, above, in as someone else).
    if !same_origin(&Method::POST, &headers) {
        return cross_site_refused();
    }
    if let Some(secret) = cookie(&headers, SESSION_COOKIE) {
        if let Err(e) = state.service.log_out(&secret).await {
            tracing::error!(error = %e, "ending a session failed");
        }
    }
    let mut resp = Redirect::to("/login").into_response();
    resp.headers_mut().insert(
        header::SET_COOKIE,
        HeaderValue::from_static("doppel_session=; Path=/; HttpOnly; SameSite=Lax; Max-Age=0"),
    );
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn next_after_login_stays_on_this_site() {
        assert_eq!(
            safe_next(Some("/containers/abc?x=1")),
            "/containers/abc?x=1"
        );
        assert_eq!(safe_next(Some("//evil.example")), "/containers");
        assert_eq!(safe_next(Some("https://evil.example")), "/containers");
        assert_eq!(safe_next(Some("/\\evil.example")), "/containers");
        assert_eq!(safe_next(Some("/\t/evil.example")), "/containers");
        assert_eq!(safe_next(Some("/x\n")), "/containers");
        assert_eq!(safe_next(None), "/containers");
    }

    #[test]
    fn cookie_sessions_refuse_cross_site_writes() {
        let mut h = HeaderMap::new();
        h.insert(header::HOST, HeaderValue::from_static("127.0.0.1:3000"));
        assert!(
            same_origin(&Method::POST, &h),
            "no browser headers: a script"
        );
        h.insert(
            header::ORIGIN,
            HeaderValue::from_static("http://127.0.0.1:3000"),
        );
        assert!(same_origin(&Method::POST, &h));
        h.insert(
            header::ORIGIN,
            HeaderValue::from_static("http://evil.example"),
        );
        assert!(!same_origin(&Method::POST, &h));
        assert!(
            same_origin(&Method::GET, &h),
            "reads are not forgery targets"
        );
        h.insert("sec-fetch-site", HeaderValue::from_static("cross-site"));
        assert!(!same_origin(&Method::POST, &h));
        h.insert("sec-fetch-site", HeaderValue::from_static("same-origin"));
        assert!(same_origin(&Method::POST, &h));
    }

    #[test]
    fn cookies_are_found_among_others() {
        let mut h = HeaderMap::new();
        h.insert(
            header::COOKIE,
            HeaderValue::from_static("a=1; doppel_session=xyz; b=2"),
        );
        assert_eq!(cookie(&h, SESSION_COOKIE).as_deref(), Some("xyz"));
        assert_eq!(cookie(&h, "c"), None);
    }

    #[test]
    fn console_pages_need_a_login_but_assets_and_api_do_not() {
        assert!(is_console_page("/"));
        assert!(is_console_page("/containers/abc"));
        assert!(!is_console_page("/login"));
        assert!(!is_console_page("/pkg/doppel.js"));
        assert!(!is_console_page("/api/v1/containers"));
        assert_eq!(
            percent_encode("/containers?project=a b"),
            "/containers%3Fproject%3Da%20b"
        );
    }
}
