//! Accepting connections: what stands between the internet and the router.
//!
//! `axum::serve` sets no timer, so hyper's header read timeout never fires, and it accepts
//! without limit: a client that never finishes its headers held its connection forever,
//! and enough of them used up the process's descriptors (which running copies need). Here
//! every connection must send its request head within `header_timeout` (also when it sits
//! idle between requests), at most `max_connections` are open at once (beyond that new
//! ones wait in the kernel's backlog until one closes), and a stop waits for requests in
//! flight for a bounded time. Responses themselves, such as event streams, are not timed.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ConnectInfo;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tower::Service;

/// Limits on client connections (`doppel serve --header-timeout --max-connections`).
#[derive(Clone, Debug)]
pub struct ConnLimits {
    /// How long a client may take to send a request's head, and to start the next one on
    /// a kept-alive connection.
    pub header_timeout: Duration,
    /// How many connections are served at once (event streams included).
    pub max_connections: usize,
    /// How long a stop waits for requests in flight before it closes their connections.
    pub stop_grace: Duration,
    /// Event streams one user may have open at once.
    pub streams_per_user: usize,
}

impl Default for ConnLimits {
    fn default() -> Self {
        ConnLimits {
            header_timeout: Duration::from_secs(10),
            max_connections: 4096,
            stop_grace: Duration::from_secs(10),
            streams_per_user: 32,
        }
    }
}

/// Serves `router` on `listener` until `stop` completes, then lets requests in flight end
/// (up to `limits.stop_grace`).
pub async fn serve(
    listener: TcpListener,
    router: axum::Router,
    limits: &ConnLimits,
    stop: impl Future<Output = ()>,
) {
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .keep_alive(true);
    let slots = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    tokio::pin!(stop);
    loop {
        let slot = tokio::select! {
            slot = slots.clone().acquire_owned() => slot.expect("the semaphore is never closed"),
            () = &mut stop => break,
        };
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of descriptors (or a connection reset before it was taken): wait
                    // a moment instead of spinning; established connections go on.
                    tracing::warn!(error = %e, "accepting a connection failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            () = &mut stop => break,
        };
        let _ = stream.set_nodelay(true);
        // The client's address, for handlers that need it (login throttling), as axum's
        // `ConnectInfo` carries it.
        let router = router.clone();
        let service = TowerToHyperService::new(tower::service_fn(
            move |mut req: hyper::Request<hyper::body::Incoming>| {
                req.extensions_mut().insert(ConnectInfo(peer));
                let mut router = router.clone();
                async move { router.call(req).await }
            },
        ));
        // No upgrades: doppel speaks plain HTTP/1.1 (events are server-sent, not WebSocket).
        let conn = graceful.watch(http.serve_connection(TokioIo::new(stream), service));
        tokio::spawn(async move {
            // Errors here are the client's (reset, timed out, malformed): nothing to report.
            let _ = conn.await;
            drop(slot);
        });
    }
    drop(listener);
    if tokio::time::timeout(limits.stop_grace, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::info!("closing connections still open after the grace period");
    }
}
