//! Running containers: start, stop, restart, their output, and the settings that shape a
//! run (command, firewall rules, network rules). Authorised like a copy: operators and
//! admins of the container's project act, viewers read.

use std::time::Duration;

use app::model::*;

use super::{conflict, internal, Service};
use crate::ids::{new_id, now_ms};
use crate::lifecycle::{Outcome, BAD_COMMAND, NO_COMMAND};
use crate::runtime::{firewall, Ipv4Net};
use crate::store::{ContainerRow, JsonColumn, NewJob};

/// A stop's default grace before SIGKILL, and the most a caller may ask for.
pub const STOP_GRACE: Duration = Duration::from_secs(10);
pub const MAX_STOP_GRACE_S: u64 = 300;
/// Lines of output a logs request gets by default, and at most.
pub const LOG_LINES: usize = 100;
pub const MAX_LOG_LINES: usize = 1000;

/// A failed container (a copy or sync that did not complete) has no tree to run.
fn refuse_failed(row: &ContainerRow, status: ContainerStatus) -> Result<(), ApiError> {
    if status != ContainerStatus::Failed {
        return Ok(());
    }
    // What makes it whole again: a copy that never completed has no tree a sync could
    // repair (a sync of it is refused too).
    let remedy = match (&row.source_container_id, &row.source_state) {
        (Some(_), None) => "the copy never completed: make a new copy (and delete this one)",
        (Some(_), Some(_)) => "sync it again before starting it",
        (None, _) => "it has no complete tree to run",
    };
    Err(conflict(format!(
        "{} failed ({}); {remedy}",
        row.name,
        row.status_reason.as_deref().unwrap_or("no reason recorded")
    )))
}

/// A start's outcome as an answer: running, or a 409 with the reason.
fn started(name: &str, outcome: Outcome, failed: &str) -> Result<(), ApiError> {
    if outcome.status == ContainerStatus::Running {
        return Ok(());
    }
    Err(conflict(format!(
        "{name} {failed}: {}",
        outcome.reason.as_deref().unwrap_or("it is not stopped")
    )))
}

/// A job (copy, sync) writes the tree: nothing starts or stops meanwhile.
fn not_during_a_job(row: &ContainerRow, what: &str) -> Result<ContainerStatus, ApiError> {
    let status = ContainerStatus::parse(&row.status).unwrap_or(ContainerStatus::Stopped);
    match status {
        ContainerStatus::Copying | ContainerStatus::Syncing | ContainerStatus::Deleting => {
            Err(conflict(format!(
                "{} is {}; {what} it once that job has ended",
                row.name,
                status.as_str()
            )))
        }
        _ => Ok(status),
    }
}

impl Service {
    /// A container the user may change, with its status (not while a job writes it).
    async fn operable(
        &self,
        user: &UserInfo,
        id: &str,
        what: &str,
    ) -> Result<(ContainerRow, ContainerStatus), ApiError> {
        let (row, vis) = self.visible_container(user, id).await?;
        vis.require_operator(&row.project_id, &format!("{what} a container"))?;
        let status = not_during_a_job(&row, what)?;
        Ok((row, status))
    }

    async fn detail_now(&self, user: &UserInfo, id: &str) -> Result<ContainerDetail, ApiError> {
        self.get_container(user, id).await
    }

    /// Does a start, stop or restart recorded as a job of `kind` (running, then how it
    /// ended), each change announced on the event streams like any job's. The work runs
    /// in a task of its own: a client that goes away does not leave it half done.
    async fn recorded(
        &self,
        user: &UserInfo,
        row: &ContainerRow,
        kind: JobKind,
        op: impl std::future::Future<Output = Result<(), ApiError>> + Send + 'static,
    ) -> Result<(), ApiError> {
        let job = self
            .db
            .record_op(NewJob {
                kind,
                job_id: new_id(),
                project_id: row.project_id.clone(),
                container_id: row.id.clone(),
                source_id: row.id.clone(),
                requested_by: user.id.clone(),
                params: "{}".into(),
                idempotency_key: None,
                request_fingerprint: None,
                now: now_ms(),
            })
            .await
            .map_err(internal)?;
        let Some(job) = job else {
            return Err(self.job_in_the_way(&row.id).await);
        };
        let (db, hub) = (self.db.clone(), self.jobs.hub.clone());
        let job_id = job.id.clone();
        hub.publish(EventKind::Status, job);
        tokio::spawn(async move {
            let result = op.await;
            let (status, error) = match &result {
                Ok(()) => (JobStatus::Succeeded, None),
                Err(e) => (JobStatus::Failed, Some(e.message.clone())),
            };
            let job = db.end_op(&job_id, status, error).await.map_err(internal)?;
            hub.publish(EventKind::Status, job);
            result
        })
        .await
        .map_err(internal)?
    }

    /// Starts a stopped container; a running one stays as it is. A start that does not get
    /// the process running is a 409 with the reason (recorded on the container too).
    pub async fn start_container(
        &self,
        user: &UserInfo,
        id: &str,
    ) -> Result<ContainerDetail, ApiError> {
        let project = self.project_of(id).await;
        let target = id.to_string();
        self.audited(user, "container.start", &target, project, async {
            let (row, status) = self.operable(user, id, "start").await?;
            refuse_failed(&row, status)?;
            let (lifecycle, name, cid) = (self.lifecycle.clone(), row.name.clone(), row.id.clone());
            let start = async move {
                let outcome = lifecycle
                    .start(&cid, &[ContainerStatus::Stopped])
                    .await
                    .map_err(internal)?;
                started(&name, outcome, "did not start")
            };
            self.recorded(user, &row, JobKind::Start, start).await?;
            self.detail_now(user, id).await
        })
        .await
    }

    /// Stops a running container: SIGTERM, `grace` (default 10 s), then SIGKILL. A stopped
    /// one stays as it is.
    pub async fn stop_container(
        &self,
        user: &UserInfo,
        id: &str,
        grace: Option<Duration>,
    ) -> Result<ContainerDetail, ApiError> {
        let project = self.project_of(id).await;
        let target = id.to_string();
        self.audited(user, "container.stop", &target, project, async {
            let (row, _) = self.operable(user, id, "stop").await?;
            let (lifecycle, name, cid) = (self.lifecycle.clone(), row.name.clone(), row.id.clone());
            let stop = async move {
                let outcome = lifecycle
                    .stop(&cid, grace.unwrap_or(STOP_GRACE))
                    .await
                    .map_err(internal)?;
                match outcome {
                    // Its server did not answer: it is not known to have stopped.
                    Outcome {
                        status: ContainerStatus::Running,
                        reason: Some(why),
                        ..
                    } => Err(conflict(format!("{name}: {why}"))),
                    _ => Ok(()),
                }
            };
            self.recorded(user, &row, JobKind::Stop, stop).await?;
            self.detail_now(user, id).await
        })
        .await
    }

    /// Stops (if it runs) and starts a container.
    pub async fn restart_container(
        &self,
        user: &UserInfo,
        id: &str,
        grace: Option<Duration>,
    ) -> Result<ContainerDetail, ApiError> {
        let project = self.project_of(id).await;
        let target = id.to_string();
        self.audited(user, "container.restart", &target, project, async {
            let (row, status) = self.operable(user, id, "restart").await?;
            refuse_failed(&row, status)?;
            let (lifecycle, name, cid) = (self.lifecycle.clone(), row.name.clone(), row.id.clone());
            let restart = async move {
                let outcome = lifecycle
                    .restart(&cid, grace.unwrap_or(STOP_GRACE))
                    .await
                    .map_err(internal)?;
                started(&name, outcome, "did not start again")
            };
            self.recorded(user, &row, JobKind::Restart, restart).await?;
            self.detail_now(user, id).await
        })
        .await
    }

    /// The last `lines` lines (default 100, at most 1000) its process wrote.
    pub async fn container_logs(
        &self,
        user: &UserInfo,
        id: &str,
        lines: Option<usize>,
    ) -> Result<ContainerLogs, ApiError> {
        let (row, _) = self.visible_container(user, id).await?;
        let lines = lines.unwrap_or(LOG_LINES);
        if lines == 0 || lines > MAX_LOG_LINES {
            return Err(
                ApiError::invalid(format!("lines is 1 to {MAX_LOG_LINES}")).on_field("lines")
            );
        }
        let lines = self
            .lifecycle
            .logs(&row, lines)
            .await
            .map_err(|why| conflict(format!("its server did not give the logs: {why}")))?;
        Ok(ContainerLogs { lines })
    }

    /// What the container runs from its next start on.
    pub async fn set_command(
        &self,
        user: &UserInfo,
        id: &str,
        command: ContainerCommand,
    ) -> Result<ContainerDetail, ApiError> {
        let project = self.project_of(id).await;
        let target = id.to_string();
        self.audited(user, "container.set_command", &target, project, async {
            let (row, vis) = self.visible_container(user, id).await?;
            vis.require_operator(&row.project_id, "changing a container")?;
            if let Some((field, why)) = command.problem() {
                return Err(ApiError::new(ErrorCode::Unprocessable, why).on_field(field));
            }
            let json = serde_json::to_string(&command).map_err(internal)?;
            self.db
                .set_container_json(id, JsonColumn::Command, json)
                .await
                .map_err(internal)?;
            // "not started: it has no command (or an unreadable one)" is no longer so.
            if let Some(reason) = row
                .status_reason
                .as_deref()
                .filter(|r| r.starts_with(NO_COMMAND) || r.starts_with(BAD_COMMAND))
            {
                self.db
                    .clear_status_reason(id, reason)
                    .await
                    .map_err(internal)?;
            }
            self.detail_now(user, id).await
        })
        .await
    }

    /// Replaces the firewall rules; a running container gets them at once.
    pub async fn set_firewall_rules(
        &self,
        user: &UserInfo,
        id: &str,
        rules: Vec<FirewallRule>,
    ) -> Result<ContainerDetail, ApiError> {
        let project = self.project_of(id).await;
        let target = id.to_string();
        self.audited(user, "container.set_firewall_rules", &target, project, async {
            let (row, vis) = self.visible_container(user, id).await?;
            vis.require_operator(&row.project_id, "changing a container")?;
            if rules.len() > 256 {
                return Err(
                    ApiError::new(ErrorCode::Unprocessable, "at most 256 rules").on_field("rules")
                );
            }
            if let Err((at, why)) = firewall::validate(&rules) {
                return Err(
                    ApiError::new(ErrorCode::Unprocessable, format!("rule {at}: {why}"))
                        .on_field(&format!("rules[{at}]")),
                );
            }
            let json = serde_json::to_string(&rules).map_err(internal)?;
            self.db
                .set_container_json(id, JsonColumn::FirewallRules, json)
                .await
                .map_err(internal)?;
            if let Err(e) = self.lifecycle.apply_firewall(id).await {
                tracing::warn!(container = %id, error = %e, "firewall not applied");
                return Err(conflict(format!(
                    "the rules are saved but not yet in force in the running container ({e}); restart it"
                )));
            }
            self.detail_now(user, id).await
        })
        .await
    }

    /// Replaces the network rules; they take effect at the next start.
    pub async fn set_network_rules(
        &self,
        user: &UserInfo,
        id: &str,
        rules: Vec<NetworkRule>,
    ) -> Result<ContainerDetail, ApiError> {
        let project = self.project_of(id).await;
        let target = id.to_string();
        self.audited(
            user,
            "container.set_network_rules",
            &target,
            project,
            async {
                let (row, vis) = self.visible_container(user, id).await?;
                vis.require_operator(&row.project_id, "changing a container")?;
                if let Some((at, why)) =
                    network_rules_problem(&rules, self.lifecycle.runtime.network)
                {
                    return Err(ApiError::new(
                        ErrorCode::Unprocessable,
                        format!("rule {at}: {why}"),
                    )
                    .on_field(&format!("rules[{at}]")));
                }
                for (at, rule) in rules.iter().enumerate() {
                    let problem = self
                        .lifecycle
                        .static_address_problem(&row.server_id, &row.project_id, rule)
                        .await
                        .map_err(internal)?;
                    if let Some(why) = problem {
                        return Err(ApiError::new(
                            ErrorCode::Unprocessable,
                            format!("rule {at}: {why}"),
                        )
                        .on_field(&format!("rules[{at}]")));
                    }
                }
                let json = serde_json::to_string(&rules).map_err(internal)?;
                self.db
                    .set_container_json(id, JsonColumn::NetworkRules, json)
                    .await
                    .map_err(internal)?;
                self.detail_now(user, id).await
            },
        )
        .await
    }

    /// Where a running container's page answers (its first interface, port 80), for the
    /// console's Open link; whoever may see the container may open it.
    pub async fn open_address(&self, user: &UserInfo, id: &str) -> Result<OpenAt, ApiError> {
        let (row, _) = self.visible_container(user, id).await?;
        if row.status != ContainerStatus::Running.as_str() {
            return Err(conflict(format!("{} is not running", row.name)));
        }
        let interfaces: Vec<Interface> = serde_json::from_str(&row.interfaces).map_err(internal)?;
        let address = interfaces
            .first()
            .and_then(|i| i.ipv4.split('/').next()?.parse::<std::net::Ipv4Addr>().ok())
            .ok_or_else(|| conflict(format!("{} has no address", row.name)))?;
        Ok(OpenAt {
            address: std::net::SocketAddr::from((address, 80)),
            // Its address is on its own host's bridge: that host's agent asks it.
            agent: row.is_on_agent().then(|| row.server_id.clone()),
        })
    }

    /// The agents of servers on other hosts (Open asks them for pages).
    pub fn agents(&self) -> &std::sync::Arc<crate::remote::Agents> {
        &self.agents
    }

    /// `GET /healthz`: serving, and whether containers can run here.
    pub fn health(&self) -> Health {
        let reason = self.lifecycle.runtime.unavailable().map(str::to_string);
        Health {
            status: "ok".into(),
            runtime: RuntimeHealth {
                available: reason.is_none(),
                reason,
            },
        }
    }
}

/// Where a container's page answers: its address, on this host or (`agent`: that server's)
/// on another.
pub struct OpenAt {
    pub address: std::net::SocketAddr,
    pub agent: Option<String>,
}

/// The first network rule that cannot be set up, and why. Static addresses come from the
/// container network (`pool`): doppel puts no bridge on the host's other networks.
pub fn network_rules_problem(rules: &[NetworkRule], pool: Ipv4Net) -> Option<(usize, String)> {
    if rules.len() > 8 {
        return Some((8, "a container has at most 8 interfaces".into()));
    }
    for (i, r) in rules.iter().enumerate() {
        let iface_ok = !r.interface.is_empty()
            && r.interface.len() <= 15
            && r.interface != "lo"
            && r.interface
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b));
        if !iface_ok {
            return Some((
                i,
                format!(
                    "interface {:?} is not a name of 1 to 15 letters, digits, '_', '.' or '-' (and not lo)",
                    r.interface
                ),
            ));
        }
        if rules[..i].iter().any(|o| o.interface == r.interface) {
            return Some((i, format!("interface {} appears twice", r.interface)));
        }
        if let Err(e) = validate_container_name(&r.network) {
            return Some((i, format!("network {:?}: {e}", r.network)));
        }
        if let Some(a) = &r.ipv4 {
            let (addr, prefix) = a.split_once('/').unwrap_or((a, "24"));
            let parsed = addr.parse::<std::net::Ipv4Addr>().ok();
            let prefix_ok = prefix
                .parse::<u8>()
                .is_ok_and(|p| p >= pool.prefix && p <= 30);
            match parsed {
                Some(a) if prefix_ok && pool.contains(a) => {}
                _ => {
                    return Some((
                        i,
                        format!(
                            "{a:?} is not an address of this doppel's container network {pool} \
                             (with a prefix from {} to 30), such as {}/24",
                            pool.prefix,
                            pool.host(5).unwrap_or(pool.base)
                        ),
                    ))
                }
            }
        }
        if let Some(mtu) = r.mtu {
            if !(576..=9000).contains(&mtu) {
                return Some((i, format!("mtu {mtu} is not from 576 to 9000")));
            }
        }
    }
    None
}
