//! A running container's web page, fetched from its address: by the control plane for
//! containers of its host, by an agent for those of its own (Open, through doppel).

use std::net::SocketAddr;
use std::time::Duration;

use axum::body::Body;
use axum::http::header;
use hyper_util::rt::TokioIo;

/// Request headers a page may see; nothing that identifies the visitor to doppel.
pub const FORWARDED: [header::HeaderName; 7] = [
    header::ACCEPT,
    header::ACCEPT_LANGUAGE,
    header::USER_AGENT,
    header::RANGE,
    header::IF_MODIFIED_SINCE,
    header::IF_NONE_MATCH,
    header::CACHE_CONTROL,
];

/// Set on an agent's answer when the container did not answer it (the body says why), so
/// a page's own 502 is told apart.
pub const UNREACHABLE: &str = "x-doppel-unreachable";

const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(30);

/// Sends `req` (GET or HEAD, no body) to the container at `addr`: its answer, or why it
/// did not answer.
pub async fn fetch(
    addr: SocketAddr,
    req: hyper::Request<Body>,
) -> Result<hyper::Response<hyper::body::Incoming>, String> {
    let stream =
        match tokio::time::timeout(CONNECT_TIMEOUT, tokio::net::TcpStream::connect(addr)).await {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => return Err(e.to_string()),
            Err(_) => return Err("no answer within 5 s (its firewall may drop it)".into()),
        };
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    match tokio::time::timeout(RESPONSE_TIMEOUT, sender.send_request(req)).await {
        Ok(Ok(r)) => Ok(r),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err("no answer within 30 s".into()),
    }
}
