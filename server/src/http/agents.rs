//! The control plane's agent port: where a host joins as a server (`doppel agent join`).
//! TLS with this control plane's certificate (the join token carries its fingerprint);
//! the joining agent's certificate is the one pinned from then on.

use std::sync::Arc;

use axum::extract::rejection::JsonRejection;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Extension, Json, Router};

use crate::remote::protocol::{JoinRequest, Refused};
use crate::service::Service;
use crate::tls::Peer;

pub fn router(service: Arc<Service>) -> Router {
    Router::new()
        .route("/v1/join", post(join))
        .with_state(service)
}

fn refused(status: StatusCode, error: String) -> Response {
    Refused(status, error).into_response()
}

async fn join(
    State(service): State<Arc<Service>>,
    Extension(peer): Extension<Peer>,
    body: Result<Json<JoinRequest>, JsonRejection>,
) -> Response {
    let Json(req) = match body {
        Ok(b) => b,
        Err(e) => return refused(StatusCode::BAD_REQUEST, e.body_text()),
    };
    match service
        .join_agent(req, peer.fingerprint, peer.address)
        .await
    {
        Ok(answer) => Json(answer).into_response(),
        Err(e) => refused(
            StatusCode::from_u16(e.code.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
            e.message,
        ),
    }
}
