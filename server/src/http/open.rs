//! `/containers/{id}/open/...`: a running container's web page (port 80), through doppel,
//! for whoever may see the container.
//!
//! The page comes from the tenant, so it must not act with doppel's origin: it is served
//! with `Content-Security-Policy: sandbox` (an opaque origin, no scripts), its `Set-Cookie`
//! headers are dropped, and the visitor's cookies and credentials are never sent to it.

use std::time::Duration;

use app::backend::CurrentUser;
use axum::body::Body;
use axum::extract::{Path, Request, State};
use axum::http::{header, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::Extension;
use hyper_util::rt::TokioIo;

use super::AppState;

/// Request headers a page may see; nothing that identifies the visitor to doppel.
const FORWARDED: [header::HeaderName; 7] = [
    header::ACCEPT,
    header::ACCEPT_LANGUAGE,
    header::USER_AGENT,
    header::RANGE,
    header::IF_MODIFIED_SINCE,
    header::IF_NONE_MATCH,
    header::CACHE_CONTROL,
];

const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(30);

fn text(status: StatusCode, message: impl Into<String>) -> Response {
    (status, message.into()).into_response()
}

/// `/containers/{id}/open` without the slash: relative links need it.
pub(super) async fn open_root(Path(id): Path<String>) -> Redirect {
    Redirect::permanent(&format!("/containers/{id}/open/"))
}

pub(super) async fn open_page(
    State(st): State<AppState>,
    user: Option<Extension<CurrentUser>>,
    Path((id, rest)): Path<(String, String)>,
    req: Request,
) -> Response {
    open(st, user, id, rest, req).await
}

pub(super) async fn open_index(
    State(st): State<AppState>,
    user: Option<Extension<CurrentUser>>,
    Path(id): Path<String>,
    req: Request,
) -> Response {
    open(st, user, id, String::new(), req).await
}

async fn open(
    st: AppState,
    user: Option<Extension<CurrentUser>>,
    id: String,
    rest: String,
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
    let addr = match st.service.open_address(&user, &id).await {
        Ok(a) => a,
        Err(e) => {
            let status =
                StatusCode::from_u16(e.code.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            return text(status, e.message);
        }
    };
    let mut target = format!("/{rest}");
    if let Some(q) = req.uri().query() {
        target.push('?');
        target.push_str(q);
    }
    let mut out = hyper::Request::builder()
        .method(req.method().clone())
        .uri(&target)
        .header(header::HOST, addr.to_string());
    for name in FORWARDED {
        if let Some(v) = req.headers().get(&name) {
            out = out.header(name, v);
        }
    }
    let Ok(out) = out.body(Body::empty()) else {
        return text(StatusCode::BAD_REQUEST, "this path cannot be opened");
    };
    let unreachable = |why: String| {
        text(
            StatusCode::BAD_GATEWAY,
            format!("the container does not answer on {addr}: {why}"),
        )
    };
    let stream =
        match tokio::time::timeout(CONNECT_TIMEOUT, tokio::net::TcpStream::connect(addr)).await {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => return unreachable(e.to_string()),
            Err(_) => return unreachable("no answer within 5 s (its firewall may drop it)".into()),
        };
    let (mut sender, conn) = match hyper::client::conn::http1::handshake(TokioIo::new(stream)).await
    {
        Ok(pair) => pair,
        Err(e) => return unreachable(e.to_string()),
    };
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let resp = match tokio::time::timeout(RESPONSE_TIMEOUT, sender.send_request(out)).await {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => return unreachable(e.to_string()),
        Err(_) => return unreachable("no answer within 30 s".into()),
    };
    let (mut parts, body) = resp.into_parts();
    parts.headers.remove(header::SET_COOKIE);
    // Sandboxed: an opaque origin without scripts; it may only frame and load itself.
    parts.headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static("sandbox; frame-ancestors 'self'"),
    );
    parts.headers.insert(
        header::X_FRAME_OPTIONS,
        HeaderValue::from_static("SAMEORIGIN"),
    );
    Response::from_parts(parts, Body::new(body))
}
