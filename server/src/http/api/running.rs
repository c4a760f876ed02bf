//! A container's process (start, stop, restart, logs) and the settings of its runs
//! (command, firewall rules, network rules).

use std::time::Duration;

use app::model::{ContainerCommand, ContainerDetail, ContainerLogs, FirewallRule, NetworkRule};
use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::Json;
use serde::Deserialize;
use utoipa::{IntoParams, ToSchema};

use super::{body, no_body, path, query, ApiResult, Caller, JsonBody, ReadErrors, WriteErrors};
use crate::http::AppState;
use crate::service::{MAX_LOG_LINES, MAX_STOP_GRACE_S};

// The maxima the parameters below document.
const _: () = assert!(MAX_LOG_LINES == 1000 && MAX_STOP_GRACE_S == 300);

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(super) struct StopQuery {
    /// Seconds the process has to end after SIGTERM before it is killed (default 10)
    #[param(minimum = 0, maximum = 300)]
    pub(super) timeout: Option<u64>,
}

impl StopQuery {
    fn grace(&self) -> Result<Option<Duration>, app::model::ApiError> {
        match self.timeout {
            Some(t) if t > MAX_STOP_GRACE_S => Err(app::model::ApiError::invalid(format!(
                "timeout is 0 to {MAX_STOP_GRACE_S} seconds"
            ))
            .on_field("timeout")),
            t => Ok(t.map(Duration::from_secs)),
        }
    }
}

/// Start a stopped container
///
/// Its process runs in its own network namespace, firewall rules in force. Starting a
/// running container changes nothing. 409 when a job writes it, when it failed, or when
/// its process does not start (the reason is in the message and in `status_reason`).
#[utoipa::path(
    post,
    path = "/containers/{id}/start",
    params(("id" = String, Path, description = "The container", pattern = "^[0-9a-f]{24}$")),
    responses((status = 200, body = ContainerDetail, description = "Running"), WriteErrors)
)]
pub(super) async fn start_container(
    State(st): State<AppState>,
    Caller(user): Caller,
    id: Result<Path<String>, PathRejection>,
    sent: Result<Bytes, BytesRejection>,
) -> ApiResult<ContainerDetail> {
    let id = path(id)?;
    no_body(sent)?;
    Ok(Json(st.service.start_container(&user, &id).await?))
}

/// Stop a running container
///
/// SIGTERM, then SIGKILL after `timeout` seconds. Stopping a stopped container changes
/// nothing. The answer has the process's exit code.
#[utoipa::path(
    post,
    path = "/containers/{id}/stop",
    params(("id" = String, Path, description = "The container", pattern = "^[0-9a-f]{24}$"), StopQuery),
    responses((status = 200, body = ContainerDetail, description = "Stopped"), WriteErrors)
)]
pub(super) async fn stop_container(
    State(st): State<AppState>,
    Caller(user): Caller,
    id: Result<Path<String>, PathRejection>,
    q: Result<Query<StopQuery>, QueryRejection>,
    sent: Result<Bytes, BytesRejection>,
) -> ApiResult<ContainerDetail> {
    let id = path(id)?;
    let grace = query(q)?.grace()?;
    no_body(sent)?;
    Ok(Json(st.service.stop_container(&user, &id, grace).await?))
}

/// Stop (if running) and start a container
#[utoipa::path(
    post,
    path = "/containers/{id}/restart",
    params(("id" = String, Path, description = "The container", pattern = "^[0-9a-f]{24}$"), StopQuery),
    responses((status = 200, body = ContainerDetail, description = "Running again"), WriteErrors)
)]
pub(super) async fn restart_container(
    State(st): State<AppState>,
    Caller(user): Caller,
    id: Result<Path<String>, PathRejection>,
    q: Result<Query<StopQuery>, QueryRejection>,
    sent: Result<Bytes, BytesRejection>,
) -> ApiResult<ContainerDetail> {
    let id = path(id)?;
    let grace = query(q)?.grace()?;
    no_body(sent)?;
    Ok(Json(st.service.restart_container(&user, &id, grace).await?))
}

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(super) struct LogsQuery {
    /// How many of the last lines (default 100)
    #[param(minimum = 1, maximum = 1000)]
    pub(super) lines: Option<usize>,
}

/// The last lines its process wrote (stdout and stderr; at most 1000)
#[utoipa::path(
    get,
    path = "/containers/{id}/logs",
    params(("id" = String, Path, description = "The container", pattern = "^[0-9a-f]{24}$"), LogsQuery),
    responses((status = 200, body = ContainerLogs), ReadErrors)
)]
pub(super) async fn container_logs(
    State(st): State<AppState>,
    Caller(user): Caller,
    id: Result<Path<String>, PathRejection>,
    q: Result<Query<LogsQuery>, QueryRejection>,
) -> ApiResult<ContainerLogs> {
    let id = path(id)?;
    let q = query(q)?;
    Ok(Json(st.service.container_logs(&user, &id, q.lines).await?))
}

/// Set what the container runs (from its next start; a copy carries it)
#[utoipa::path(
    put,
    path = "/containers/{id}/command",
    params(("id" = String, Path, description = "The container", pattern = "^[0-9a-f]{24}$")),
    request_body = ContainerCommand,
    responses((status = 200, body = ContainerDetail), WriteErrors)
)]
pub(super) async fn set_command(
    State(st): State<AppState>,
    Caller(user): Caller,
    id: Result<Path<String>, PathRejection>,
    req: JsonBody,
) -> ApiResult<ContainerDetail> {
    let id = path(id)?;
    let command = body::<ContainerCommand>(req)?;
    Ok(Json(st.service.set_command(&user, &id, command).await?))
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct FirewallRules {
    /// In order: the first rule that matches a packet decides
    #[schema(max_items = 256)]
    rules: Vec<FirewallRule>,
}

/// Replace the firewall rules (in force at once in a running container)
///
/// nftables in the container's network namespace: rules are checked in order and the
/// first that matches decides (`allow` or `deny`, which drops); `ingress` rules match
/// packets coming in by their source, `egress` rules packets going out by their
/// destination; what no rule matches is allowed. Replies of allowed connections and the
/// container's loopback are always allowed. `port` (a port or `from-to` range) only with
/// `tcp` or `udp`.
#[utoipa::path(
    put,
    path = "/containers/{id}/firewall-rules",
    params(("id" = String, Path, description = "The container", pattern = "^[0-9a-f]{24}$")),
    request_body = FirewallRules,
    responses((status = 200, body = ContainerDetail), WriteErrors)
)]
pub(super) async fn set_firewall_rules(
    State(st): State<AppState>,
    Caller(user): Caller,
    id: Result<Path<String>, PathRejection>,
    req: JsonBody,
) -> ApiResult<ContainerDetail> {
    let id = path(id)?;
    let rules = body::<FirewallRules>(req)?.rules;
    Ok(Json(
        st.service.set_firewall_rules(&user, &id, rules).await?,
    ))
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct NetworkRules {
    /// One per interface (none: `eth0` on the server's `default` network)
    #[schema(max_items = 8)]
    rules: Vec<NetworkRule>,
}

/// Replace the network rules (from the next start)
///
/// Each rule is an interface of the container's namespace on a network of its server (a
/// bridge and a subnet on the host, made on first use: from the pool of
/// `--container-network`, or the network of the first static address given). Without
/// `ipv4` an address is allocated and kept; two containers never share one on a network.
#[utoipa::path(
    put,
    path = "/containers/{id}/network-rules",
    params(("id" = String, Path, description = "The container", pattern = "^[0-9a-f]{24}$")),
    request_body = NetworkRules,
    responses((status = 200, body = ContainerDetail), WriteErrors)
)]
pub(super) async fn set_network_rules(
    State(st): State<AppState>,
    Caller(user): Caller,
    id: Result<Path<String>, PathRejection>,
    req: JsonBody,
) -> ApiResult<ContainerDetail> {
    let id = path(id)?;
    let rules = body::<NetworkRules>(req)?.rules;
    Ok(Json(st.service.set_network_rules(&user, &id, rules).await?))
}
