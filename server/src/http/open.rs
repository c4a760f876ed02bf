//! `/containers/{id}/open/...`: a running container's web page (port 80), through doppel,
//! for whoever may see the container.
//!
//! The page comes from the tenant, so it must not act with doppel's origin: it is served
//! with `Content-Security-Policy: sandbox` (an opaque origin, no scripts), its `Set-Cookie`
//! headers are dropped, and the visitor's cookies and credentials are never sent to it.

use app::backend::CurrentUser;
use axum::body::Body;
use axum::extract::{Path, Request, State};
use axum::http::{header, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::Extension;

use super::AppState;

use crate::remote::page::{self, FORWARDED};

fn text(status: StatusCode, message: impl Into<String>) -> Response {
    (status, message.into()).into_response()
}

/// `/containers/{id}/open` without the slash: relative links need it.
pub(super) async fn open_root(Path(id): Path<String>) -> Response {
    if !app::model::is_valid_id(&id) {
        return text(StatusCode::NOT_FOUND, "no such container");
    }
    Redirect::permanent(&format!("/containers/{id}/open/")).into_response()
}

pub(super) async fn open_page(
    State(st): State<AppState>,
    user: Option<Extension<CurrentUser>>,
    Path((id, _)): Path<(String, String)>,
    req: Request,
) -> Response {
    open(st, user, id, req).await
}

pub(super) async fn open_index(
    State(st): State<AppState>,
    user: Option<Extension<CurrentUser>>,
    Path(id): Path<String>,
    req: Request,
) -> Response {
    open(st, user, id, req).await
}

/// Response headers a page may send through doppel: its content's description and
/// caching, and its own `X-` headers; nothing that acts on doppel's origin (cookies, site
/// data, CORS, HSTS, refresh). `Location` is handled on its own.
fn passes(name: &header::HeaderName) -> bool {
    const KEPT: [header::HeaderName; 12] = [
        header::CONTENT_TYPE,
        header::CONTENT_LENGTH,
        header::CONTENT_ENCODING,
        header::CONTENT_LANGUAGE,
        header::CONTENT_RANGE,
        header::ACCEPT_RANGES,
        header::ETAG,
        header::LAST_MODIFIED,
        header::CACHE_CONTROL,
        header::EXPIRES,
        header::VARY,
        header::DATE,
    ];
    let n = name.as_str();
    KEPT.contains(name)
        || (n.starts_with("x-")
            && !matches!(
                n,
                "x-frame-options"
                    | "x-content-type-options"
                    | "x-xss-protection"
                    | "x-permitted-cross-domain-policies"
            ))
}

/// A redirect the page sends, kept inside it: a path of the page's own becomes the same
/// path under `prefix`; anything else (another site, a scheme) is dropped.
fn inside(location: &str, prefix: &str) -> Option<String> {
    if location.starts_with("//") || location.contains("://") || location.contains('\\') {
        return None;
    }
    Some(match location.strip_prefix('/') {
        Some(path) => format!("{prefix}/{path}"),
        // Relative: the browser resolves it against the page it is on.
        None => location.to_string(),
    })
}

async fn open(
    st: AppState,
    user: Option<Extension<CurrentUser>>,
    id: String,
    req: Request,
) -> Response {
    let Some(Extension(CurrentUser(user))) = user else {
        return text(
            StatusCode::UNAUTHORIZED,
            "log in to doppel to open this container",
        );
    };
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return text(
            StatusCode::METHOD_NOT_ALLOWED,
            "a container's page is opened with GET or HEAD through doppel",
        );
    }
    let at = match st.service.open_address(&user, &id).await {
        Ok(a) => a,
        Err(e) => {
            let status =
                StatusCode::from_u16(e.code.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            return text(status, e.message);
        }
    };
    // The path as the browser sent it (still percent-encoded), under the page's root.
    let prefix = format!("/containers/{id}/open");
    let path = req.uri().path().strip_prefix(&prefix).unwrap_or("/");
    let mut target = if path.is_empty() {
        "/".to_string()
    } else {
        path.to_string()
    };
    if let Some(q) = req.uri().query() {
        target.push('?');
        target.push_str(q);
    }
    let addr = at.address;
    let mut forwarded = axum::http::HeaderMap::new();
    for name in FORWARDED {
        if let Some(v) = req.headers().get(&name) {
            forwarded.insert(name, v.clone());
        }
    }
    let unreachable = |why: String| {
        text(
            StatusCode::BAD_GATEWAY,
            format!("the container does not answer on {addr}: {why}"),
        )
    };
    let (mut parts, body) = match &at.agent {
        None => {
            let mut out = hyper::Request::builder()
                .method(req.method().clone())
                .uri(&target)
                .header(header::HOST, addr.to_string());
            if let Some(h) = out.headers_mut() {
                h.extend(forwarded);
            }
            let Ok(out) = out.body(Body::empty()) else {
                return text(StatusCode::BAD_REQUEST, "this path cannot be opened");
            };
            match page::fetch(addr, out).await {
                Ok(resp) => {
                    let (parts, body) = resp.into_parts();
                    (parts, Body::new(body))
                }
                Err(why) => return unreachable(why),
            }
        }
        Some(server) => {
            let agents = st.service.agents();
            let asked = (req.method().clone(), target.as_str(), forwarded);
            let resp = match agents.open_page(server, &id, addr, asked).await {
                Ok(resp) => resp,
                Err(e) => return unreachable(format!("its server: {e}")),
            };
            if resp.headers().contains_key(page::UNREACHABLE) {
                let why = resp
                    .json::<crate::remote::protocol::ErrorAnswer>()
                    .await
                    .map(|e| e.error)
                    .unwrap_or_default();
                return unreachable(why);
            }
            let mut parts = Response::new(()).into_parts().0;
            parts.status = resp.status();
            parts.headers = resp.headers().clone();
            (parts, Body::from_stream(resp.bytes_stream()))
        }
    };
    let location = parts
        .headers
        .get(header::LOCATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|l| inside(l, &prefix))
        .and_then(|l| HeaderValue::from_str(&l).ok());
    let kept: Vec<_> = parts
        .headers
        .iter()
        .filter(|(name, _)| passes(name))
        .map(|(n, v)| (n.clone(), v.clone()))
        .collect();
    parts.headers.clear();
    parts.headers.extend(kept);
    if let Some(l) = location {
        parts.headers.insert(header::LOCATION, l);
    }
    // Sandboxed: an opaque origin without scripts; it may only frame and load itself.
    parts.headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static("sandbox; frame-ancestors 'self'"),
    );
    parts.headers.insert(
        header::X_FRAME_OPTIONS,
        HeaderValue::from_static("SAMEORIGIN"),
    );
    Response::from_parts(parts, body)
}
