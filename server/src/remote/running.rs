//! Containers running on agents, as the control plane's lifecycle asks for them: start as
//! planned here, stop, observe, firewall rules and logs, each a control call.

use std::collections::HashMap;
use std::time::Duration;

use super::protocol::{ObserveRequest, RunRequest, RunState, StopRequest};
use super::transfer::answer_json;
use super::Agents;
use crate::engine::EngineError;
use crate::runtime::{Exit, Observed};

/// A start waits for the process to show up (the runtime's own limit is 15 s).
const START_CALL: Duration = Duration::from_secs(30);

impl Agents {
    /// Starts a container on its agent; what is true of its process then.
    pub async fn start_container(
        &self,
        server_id: &str,
        id: &str,
        req: &RunRequest,
    ) -> Result<Observed, EngineError> {
        let resp = self
            .control_call(server_id, START_CALL, |client, address| {
                client
                    .post(format!("https://{address}/v1/containers/{id}/start"))
                    .json(req)
            })
            .await?;
        answer_json::<RunState>(resp).await.map(Observed::from)
    }

    /// Stops a container on its agent (SIGTERM, `grace`, SIGKILL): how its process ended.
    pub async fn stop_container(
        &self,
        server_id: &str,
        id: &str,
        interfaces: usize,
        grace: Duration,
    ) -> Result<Option<Exit>, EngineError> {
        let req = StopRequest {
            grace_ms: grace.as_millis() as u64,
            interfaces,
        };
        // The grace, then the kill's own waits.
        let timeout = grace + Duration::from_secs(30);
        let resp = self
            .control_call(server_id, timeout, |client, address| {
                client
                    .post(format!("https://{address}/v1/containers/{id}/stop"))
                    .json(&req)
            })
            .await?;
        answer_json(resp).await
    }

    /// What is true of these containers' processes on their agent.
    pub async fn observe(
        &self,
        server_id: &str,
        ids: &[String],
    ) -> Result<HashMap<String, Observed>, EngineError> {
        let req = ObserveRequest { ids: ids.to_vec() };
        let resp = self
            .control_call(server_id, Duration::from_secs(10), |client, address| {
                client
                    .post(format!("https://{address}/v1/observe"))
                    .json(&req)
            })
            .await?;
        let states: HashMap<String, RunState> = answer_json(resp).await?;
        Ok(states.into_iter().map(|(k, v)| (k, v.into())).collect())
    }

    /// Loads a running container's firewall rules again on its agent.
    pub async fn apply_firewall(
        &self,
        server_id: &str,
        id: &str,
        rules: &[app::model::FirewallRule],
    ) -> Result<(), EngineError> {
        self.control_call(server_id, Duration::from_secs(30), |client, address| {
            client
                .put(format!("https://{address}/v1/containers/{id}/firewall"))
                .json(rules)
        })
        .await
        .map(|_| ())
    }

    /// A snapshot of a container made on its agent (`snapshot` is its new id): the copy's
    /// summary. A full disk there is `Io` with `StorageFull`.
    pub async fn make_snapshot(
        &self,
        server_id: &str,
        id: &str,
        snapshot: &str,
    ) -> Result<crate::engine::Summary, EngineError> {
        let resp = self
            .control_call(server_id, Duration::from_secs(3600), |client, address| {
                client.post(format!(
                    "https://{address}/v1/containers/{id}/snapshots/{snapshot}"
                ))
            })
            .await?;
        answer_json(resp).await
    }

    /// Removes a snapshot's trees on its agent.
    pub async fn remove_snapshot(
        &self,
        server_id: &str,
        id: &str,
        snapshot: &str,
    ) -> Result<(), EngineError> {
        self.control_call(server_id, Duration::from_secs(600), |client, address| {
            client.delete(format!(
                "https://{address}/v1/containers/{id}/snapshots/{snapshot}"
            ))
        })
        .await
        .map(|_| ())
    }

    /// A page of a container on its agent (Open): `target` (path and query) from `address`,
    /// with the headers a page may see; the agent's answer is the page's.
    pub async fn open_page(
        &self,
        server_id: &str,
        id: &str,
        address: std::net::SocketAddr,
        (method, target, headers): (axum::http::Method, &str, axum::http::HeaderMap),
    ) -> Result<reqwest::Response, EngineError> {
        let (agent, _, client) = self.reach_or_fail(server_id)?;
        let out = client
            .request(method, format!("https://{agent}/v1/containers/{id}/open"))
            .query(&[
                ("address", address.to_string()),
                ("target", target.to_string()),
            ])
            .headers(headers)
            .timeout(Duration::from_secs(40));
        out.send().await.map_err(|e| {
            super::transfer::failed(
                format!("reaching the server at {agent}"),
                super::describe(&e),
            )
        })
    }

    /// The last lines of a container's output on its agent.
    pub async fn logs(
        &self,
        server_id: &str,
        id: &str,
        lines: usize,
    ) -> Result<Vec<String>, EngineError> {
        let resp = self
            .control_call(server_id, Duration::from_secs(10), |client, address| {
                client
                    .get(format!("https://{address}/v1/containers/{id}/logs"))
                    .query(&[("lines", lines)])
            })
            .await?;
        answer_json(resp).await
    }
}
