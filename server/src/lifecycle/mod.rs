//! Containers' processes, kept true: start, stop and restart through the runtime, each
//! recorded in the database, and a watch that notices a process that ended (every
//! `WATCH_EVERY`) and, at doppel's start, corrects every status from what runc reports.
//! Containers outlive doppel (their shims are not its children), so a restart re-attaches.
//! A container on another host runs there: its agent's runtime does what the local one
//! would (`remote::Agents`), with the addresses planned here.

mod network;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use app::model::{ContainerCommand, ContainerStatus, FirewallRule};
use parking_lot::Mutex;

use crate::config::{container_root, runtime_dir};
use crate::remote::protocol::{RunInterface, RunRequest};
use crate::remote::Agents;
use crate::runtime::{oci, shim, Observed, RunSpec, Runtime};
use crate::store::{ContainerRow, Db, DbError, RunRecord};

/// How long a copy's process has to end when a sync stops it for its final pass.
const STOP_FOR_SYNC: Duration = Duration::from_secs(10);

/// How a start that found no command to run says so (its status reason starts so).
pub const NO_COMMAND: &str = "not started: it has no command";
/// How a start that could not read its command says so.
pub const BAD_COMMAND: &str = "not started: its command cannot be read";

/// How often running containers are checked.
pub const WATCH_EVERY: Duration = Duration::from_secs(2);

/// Statuses a start or stop may change (never a job's `copying` or `syncing`).
const SETTLED: [ContainerStatus; 3] = [
    ContainerStatus::Running,
    ContainerStatus::Stopped,
    ContainerStatus::Failed,
];

pub struct Lifecycle {
    db: Db,
    pub runtime: Arc<Runtime>,
    /// Servers on other hosts: their containers run there.
    agents: Arc<Agents>,
    /// One start, stop or check at a time per container.
    busy: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// Address and subnet planning, one at a time.
    allocating: tokio::sync::Mutex<()>,
}

/// What `Lifecycle::stop_for_job` found.
#[derive(Debug)]
pub enum Halted {
    /// Its process ran, and was stopped.
    Stopped,
    /// Nothing ran. `ended`: its process had ended on its own since its last start, an
    /// end nothing had recorded (it is recorded now).
    NotRunning { ended: Option<shim::Exit> },
}

impl Halted {
    pub fn stopped(&self) -> bool {
        matches!(self, Halted::Stopped)
    }
}

/// Whether `exit` ended the container's current run (not one before its last start) and
/// is not what its row says already (a stop records the exit it caused).
fn ended_unrecorded(row: &ContainerRow, exit: &shim::Exit) -> bool {
    row.started_at.is_some_and(|started| exit.at >= started) && row.stopped_at != Some(exit.at)
}

/// How a container stands after a start or stop.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Outcome {
    pub status: ContainerStatus,
    pub reason: Option<String>,
    /// What the start did other than asked (a copy's clashing address replaced).
    pub notes: Vec<String>,
}

impl Outcome {
    pub fn stopped(reason: Option<String>) -> Outcome {
        Outcome {
            status: ContainerStatus::Stopped,
            reason,
            notes: Vec::new(),
        }
    }
}

impl RunRecord {
    fn running(now: i64) -> RunRecord {
        RunRecord {
            status: ContainerStatus::Running,
            reason: None,
            started_at: Some(now),
            stopped_at: None,
            exit_code: None,
        }
    }

    fn not_started(reason: &str) -> RunRecord {
        RunRecord {
            status: ContainerStatus::Stopped,
            reason: Some(reason.to_string()),
            started_at: None,
            stopped_at: None,
            exit_code: None,
        }
    }
}

impl Lifecycle {
    pub fn new(db: Db, runtime: Arc<Runtime>, agents: Arc<Agents>) -> Arc<Lifecycle> {
        Arc::new(Lifecycle {
            db,
            runtime,
            agents,
            busy: Mutex::new(HashMap::new()),
            allocating: tokio::sync::Mutex::new(()),
        })
    }

    fn lock_of(&self, id: &str) -> Arc<tokio::sync::Mutex<()>> {
        self.busy.lock().entry(id.to_string()).or_default().clone()
    }

    fn bundle(row: &ContainerRow) -> PathBuf {
        runtime_dir(Path::new(&row.storage_root), &row.id)
    }

    /// Starts a container whose status is one of `from` (the lifecycle's own statuses, or
    /// `copying` for a copy that just finished) and records how that went: `running`, or
    /// `stopped` with the reason. A container already running stays as it is.
    pub async fn start(&self, id: &str, from: &[ContainerStatus]) -> Result<Outcome, DbError> {
        let lock = self.lock_of(id);
        let _one = lock.lock().await;
        let Some(row) = self.db.container(id).await? else {
            return Ok(Outcome::stopped(Some("no such container".into())));
        };
        let status = ContainerStatus::parse(&row.status).unwrap_or(ContainerStatus::Failed);
        if status == ContainerStatus::Running {
            return Ok(Outcome {
                status: ContainerStatus::Running,
                reason: None,
                notes: Vec::new(),
            });
        }
        // Changed since the caller looked (a job took it): not this start's to touch.
        if !from.contains(&status) {
            return Ok(Outcome {
                status,
                reason: Some(format!("it is {} now", status.as_str())),
                notes: Vec::new(),
            });
        }
        let mut notes = Vec::new();
        let now = crate::ids::now_ms();
        let (bundle, local) = (Self::bundle(&row), !row.is_on_agent());
        let log_end = local.then(|| shim::log_end(&bundle));
        let launched = self.launch(&row, &mut notes).await;
        // runc itself failed (no such program, say): the process never ran, and runc's
        // last words, the last this run wrote to the log, say why.
        let runc_failed = match (&launched, log_end) {
            (Ok(Observed::Exited(exit)), Some(end)) if exit.code == 1 => {
                runc_failure(&shim::output_since(&bundle, end))
            }
            _ => None,
        };
        let (record, reason) = match (launched, runc_failed) {
            (_, Some(why)) => {
                let reason = format!("its program could not be run: {why}");
                (RunRecord::not_started(&reason), Some(reason))
            }
            (Ok(Observed::Running { .. }), None) => (RunRecord::running(now), None),
            (Ok(Observed::Exited(exit)), None) => {
                let reason = format!("its process exited at once with code {}", exit.code);
                let record = RunRecord {
                    status: ContainerStatus::Stopped,
                    reason: Some(reason.clone()),
                    started_at: Some(now),
                    stopped_at: Some(exit.at),
                    exit_code: Some(exit.code as i64),
                };
                (record, Some(reason))
            }
            (Ok(Observed::Gone), None) => {
                let reason = "start failed: no process".to_string();
                (RunRecord::not_started(&reason), Some(reason))
            }
            (Err(reason), None) => (RunRecord::not_started(&reason), Some(reason)),
        };
        let status = record.status;
        if !self.db.record_run(id, record, from).await? && status == ContainerStatus::Running {
            // A job took the container between the check and the record: its process must
            // not run unrecorded.
            let _ = self.halt(&row, Duration::ZERO).await;
            return Ok(Outcome::stopped(Some("it changed while starting".into())));
        }
        Ok(Outcome {
            status,
            reason,
            notes,
        })
    }

    /// What a start does on the host; `Err` is the reason it did not start.
    async fn launch(
        &self,
        row: &ContainerRow,
        notes: &mut Vec<String>,
    ) -> Result<Observed, String> {
        if !row.is_on_agent() {
            if let Some(why) = self.runtime.unavailable() {
                return Err(format!("not started: no container runtime here ({why})"));
            }
        }
        let command: ContainerCommand =
            serde_json::from_str(&row.command).map_err(|e| format!("{BAD_COMMAND} ({e})"))?;
        if command.args.is_empty() {
            return Err(format!(
                "{NO_COMMAND} (set one with PUT /api/v1/containers/{}/command)",
                row.id
            ));
        }
        let firewall: Vec<FirewallRule> = serde_json::from_str(&row.firewall_rules)
            .map_err(|e| format!("not started: its firewall rules cannot be read ({e})"))?;
        let plan = self
            .plan_network(row)
            .await
            .map_err(|e| format!("not started: {e}"))?;
        notes.extend(plan.notes);
        if row.is_on_agent() {
            let req = RunRequest {
                hostname: row.name.clone(),
                command,
                interfaces: plan
                    .attachments
                    .iter()
                    .zip(&plan.bridges)
                    .map(|(a, bridge)| RunInterface {
                        iface: a.iface.clone(),
                        bridge: *bridge,
                        network: a.network.to_string(),
                        address: a.address,
                        mac: a.mac.clone(),
                        mtu: a.mtu,
                    })
                    .collect(),
                firewall,
            };
            return self
                .agents
                .start_container(&row.server_id, &row.id, &req)
                .await
                .map_err(|e| format!("not started on its server: {e}"));
        }
        let rootfs = container_root(Path::new(&row.storage_root), &row.id);
        mount_image_tree(&rootfs).await?;
        let bundle = Self::bundle(row);
        let spec = RunSpec {
            id: &row.id,
            bundle: &bundle,
            rootfs: &rootfs,
            hostname: &row.name,
            process: oci::ProcessSpec {
                args: &command.args,
                env: &command.env,
                cwd: &command.cwd,
            },
            attachments: &plan.attachments,
            firewall: &firewall,
        };
        self.runtime
            .start(&spec)
            .await
            .map_err(|e| format!("start failed: {e}"))
    }

    /// Stops a container (SIGTERM, `grace`, SIGKILL) and records how its process ended.
    pub async fn stop(&self, id: &str, grace: Duration) -> Result<Outcome, DbError> {
        let lock = self.lock_of(id);
        let _one = lock.lock().await;
        self.stop_locked(id, grace).await
    }

    async fn stop_locked(&self, id: &str, grace: Duration) -> Result<Outcome, DbError> {
        let Some(row) = self.db.container(id).await? else {
            return Ok(Outcome::stopped(None));
        };
        let status = ContainerStatus::parse(&row.status).unwrap_or(ContainerStatus::Stopped);
        if status != ContainerStatus::Running {
            // Nothing runs; a stop says so and changes nothing (idempotent).
            return Ok(Outcome {
                status,
                reason: row.status_reason,
                notes: Vec::new(),
            });
        }
        let exit = match self.halt(&row, grace).await {
            Ok(exit) => exit,
            Err(why) => match self.still_runs(&row, &why).await {
                // Its server did not answer, or its process outlived the stop: not stopped.
                Some(why) => {
                    return Ok(Outcome {
                        status,
                        reason: Some(format!("not stopped: {why}")),
                        notes: Vec::new(),
                    })
                }
                None => None,
            },
        };
        let record = RunRecord {
            status: ContainerStatus::Stopped,
            reason: None,
            started_at: row.started_at,
            stopped_at: Some(exit.map_or_else(crate::ids::now_ms, |e| e.at)),
            exit_code: exit.map(|e| e.code as i64),
        };
        self.db.record_run(id, record, &SETTLED).await?;
        Ok(Outcome::stopped(None))
    }

    /// A sync's final pass or a delete: stops the container's process if it runs (its
    /// status stays the job's, `during`); says whether it did, or why its process still
    /// runs (`Err`: the job must not go on as if it were stopped). A sync starts it again
    /// with `start`.
    ///
    /// A process that ended on its own while the job had the container (whose status then
    /// keeps the watch from recording it) has its end recorded here, exit code and time,
    /// and said in `Halted::NotRunning`: a sync that starts it again would otherwise lose it.
    pub async fn stop_for_job(
        &self,
        id: &str,
        during: ContainerStatus,
    ) -> Result<Result<Halted, String>, DbError> {
        let lock = self.lock_of(id);
        let _one = lock.lock().await;
        let Some(row) = self.db.container(id).await? else {
            return Ok(Ok(Halted::NotRunning { ended: None }));
        };
        match self.observe_one(&row).await {
            Ok(Observed::Running { .. }) => {}
            Ok(Observed::Exited(exit)) if ended_unrecorded(&row, &exit) => {
                let record = RunRecord {
                    status: during,
                    reason: None,
                    started_at: row.started_at,
                    stopped_at: Some(exit.at),
                    exit_code: Some(exit.code as i64),
                };
                self.db.record_run(id, record, &[during]).await?;
                return Ok(Ok(Halted::NotRunning { ended: Some(exit) }));
            }
            Ok(_) => return Ok(Ok(Halted::NotRunning { ended: None })),
            Err(e) => {
                tracing::warn!(container = %id, error = %e, "observing before a job");
                return Ok(Ok(Halted::NotRunning { ended: None }));
            }
        }
        let exit = match self.halt(&row, STOP_FOR_SYNC).await {
            Ok(exit) => exit,
            Err(why) => match self.still_runs(&row, &why).await {
                Some(why) => return Ok(Err(why)),
                None => None,
            },
        };
        let record = RunRecord {
            status: during,
            reason: None,
            started_at: row.started_at,
            stopped_at: Some(exit.map_or_else(crate::ids::now_ms, |e| e.at)),
            exit_code: exit.map(|e| e.code as i64),
        };
        self.db.record_run(id, record, &[during]).await?;
        Ok(Ok(Halted::Stopped))
    }

    /// After a stop that failed (`why`): why the process may still run, or `None` when it
    /// is seen ended after all. A process that cannot be seen is not recorded stopped.
    async fn still_runs(&self, row: &ContainerRow, why: &str) -> Option<String> {
        tracing::warn!(container = %row.id, error = %why, "stop");
        // An agent's stop fails when the agent does not answer: asking it again would only
        // wait for it a second time.
        if row.is_on_agent() {
            return Some(why.to_string());
        }
        match self.observe_one(row).await {
            Ok(Observed::Running { .. }) => Some(why.to_string()),
            Ok(_) => None,
            Err(seen) => Some(format!("{why} (and it could not be seen: {seen})")),
        }
    }

    /// Stop, then start, as one step no other start or stop comes between.
    pub async fn restart(&self, id: &str, grace: Duration) -> Result<Outcome, DbError> {
        let lock = self.lock_of(id);
        let outcome = {
            let _one = lock.lock().await;
            self.stop_locked(id, grace).await?
        };
        if outcome.status != ContainerStatus::Stopped {
            return Ok(outcome);
        }
        // `start` takes the lock again; a stop that slips in between wins, as it should.
        self.start(id, &SETTLED).await
    }

    /// Loads a container's firewall rules again while it runs.
    pub(crate) async fn apply_firewall(&self, id: &str) -> Result<(), String> {
        // Under the container's lock, with the rules as stored now: a start under way
        // loads them itself, and two changes end with the last one in force.
        let lock = self.lock_of(id);
        let _one = lock.lock().await;
        let Some(row) = self.db.container(id).await.map_err(|e| e.to_string())? else {
            return Ok(());
        };
        if row.status != ContainerStatus::Running.as_str() {
            return Ok(());
        }
        let rules: Vec<FirewallRule> =
            serde_json::from_str(&row.firewall_rules).map_err(|e| e.to_string())?;
        if row.is_on_agent() {
            return self
                .agents
                .apply_firewall(&row.server_id, id, &rules)
                .await
                .map_err(|e| e.to_string());
        }
        if self.runtime.unavailable().is_some() {
            return Ok(());
        }
        self.runtime
            .apply_firewall(id, &rules)
            .await
            .map_err(|e| e.to_string())
    }

    /// The last lines of a container's output (`Err`: its server did not answer).
    pub(crate) async fn logs(
        &self,
        row: &ContainerRow,
        lines: usize,
    ) -> Result<Vec<String>, String> {
        if row.is_on_agent() {
            return self
                .agents
                .logs(&row.server_id, &row.id, lines)
                .await
                .map_err(|e| e.to_string());
        }
        let bundle = Self::bundle(row);
        tokio::task::spawn_blocking(move || shim::tail(&bundle, lines))
            .await
            .map_err(|e| e.to_string())
    }

    /// Stops a container's process wherever it runs; how it ended.
    async fn halt(
        &self,
        row: &ContainerRow,
        grace: Duration,
    ) -> Result<Option<shim::Exit>, String> {
        let interfaces = interface_count(row);
        if row.is_on_agent() {
            return self
                .agents
                .stop_container(&row.server_id, &row.id, interfaces, grace)
                .await
                .map_err(|e| e.to_string());
        }
        if self.runtime.unavailable().is_some() {
            return Ok(None);
        }
        self.runtime
            .stop(&row.id, &Self::bundle(row), interfaces, grace)
            .await
            .map_err(|e| e.to_string())
    }

    /// What is true of one container's process, wherever it runs.
    /// Whether the container's process runs, as its runtime says (`Err`: it could not
    /// tell).
    pub async fn has_process(&self, id: &str) -> Result<bool, String> {
        let Some(row) = self.db.container(id).await.map_err(|e| e.to_string())? else {
            return Ok(false);
        };
        Ok(matches!(
            self.observe_one(&row).await?,
            Observed::Running { .. }
        ))
    }

    async fn observe_one(&self, row: &ContainerRow) -> Result<Observed, String> {
        if row.is_on_agent() {
            let mut states = self
                .agents
                .observe(&row.server_id, std::slice::from_ref(&row.id))
                .await
                .map_err(|e| e.to_string())?;
            return Ok(states.remove(&row.id).unwrap_or(Observed::Gone));
        }
        if self.runtime.unavailable().is_some() {
            return Ok(Observed::Gone);
        }
        let listed = self.runtime.list().await.map_err(|e| e.to_string())?;
        Ok(Runtime::observe(&listed, &row.id, &Self::bundle(row)))
    }

    /// Makes every status true: a `running` container whose process ended is `stopped`
    /// with its exit code; with `at_start`, a `stopped` one runc still runs is `running`.
    pub async fn reconcile(&self, at_start: bool) -> Result<(), DbError> {
        let mut rows = self.db.containers_in(ContainerStatus::Running).await?;
        if at_start {
            rows.extend(self.db.containers_in(ContainerStatus::Stopped).await?);
        }
        if rows.is_empty() {
            return Ok(());
        }
        let local = rows.iter().any(|r| !r.is_on_agent());
        let listed = match self.runtime.unavailable() {
            Some(_) => Default::default(),
            None if !local => Default::default(),
            None => match self.runtime.list().await {
                Ok(l) => l,
                Err(e) => {
                    tracing::warn!(error = %e, "runc list");
                    return Ok(());
                }
            },
        };
        // Containers on other hosts: one question to each agent that answers (those that
        // do not are left as they are: nothing is known of them now).
        let mut remote: HashMap<String, HashMap<String, Observed>> = HashMap::new();
        for row in rows.iter().filter(|r| r.is_on_agent()) {
            if remote.contains_key(&row.server_id)
                || !self.agents.view(&row.server_id).is_some_and(|v| v.online)
            {
                continue;
            }
            let ids: Vec<String> = rows
                .iter()
                .filter(|r| r.server_id == row.server_id)
                .map(|r| r.id.clone())
                .collect();
            match self.agents.observe(&row.server_id, &ids).await {
                Ok(states) => {
                    remote.insert(row.server_id.clone(), states);
                }
                Err(e) => {
                    tracing::warn!(server = %row.server_id, error = %e, "observing an agent's containers")
                }
            }
        }
        for row in rows {
            let observed = if row.is_on_agent() {
                match remote.get(&row.server_id) {
                    Some(states) => states.get(&row.id).copied().unwrap_or(Observed::Gone),
                    None => continue,
                }
            } else {
                Runtime::observe(&listed, &row.id, &Self::bundle(&row))
            };
            let lock = self.lock_of(&row.id);
            // A start or stop under way will record the truth itself.
            let Ok(_one) = lock.try_lock() else { continue };
            // Started, stopped or restarted since the list was read: next round.
            match self.db.container(&row.id).await? {
                Some(now) if now.status == row.status && now.started_at == row.started_at => {}
                _ => continue,
            }
            let running = row.status == ContainerStatus::Running.as_str();
            let record = match (running, observed) {
                (true, Observed::Running { .. }) => continue,
                (false, Observed::Running { .. }) => RunRecord {
                    status: ContainerStatus::Running,
                    reason: None,
                    started_at: row.started_at,
                    stopped_at: None,
                    exit_code: None,
                },
                (false, _) => continue,
                (true, Observed::Exited(exit)) => RunRecord {
                    status: ContainerStatus::Stopped,
                    reason: Some(format!("its process exited with code {}", exit.code)),
                    started_at: row.started_at,
                    stopped_at: Some(exit.at),
                    exit_code: Some(exit.code as i64),
                },
                (true, Observed::Gone) => RunRecord {
                    status: ContainerStatus::Stopped,
                    reason: Some(match self.runtime.unavailable() {
                        Some(why) if !row.is_on_agent() => {
                            format!("not running: no container runtime here ({why})")
                        }
                        _ => {
                            "its process is gone and left no exit code (the host restarted?)".into()
                        }
                    }),
                    started_at: row.started_at,
                    stopped_at: Some(crate::ids::now_ms()),
                    exit_code: None,
                },
            };
            let stopping = record.status == ContainerStatus::Stopped;
            let from = if running {
                ContainerStatus::Running
            } else {
                ContainerStatus::Stopped
            };
            if self.db.record_run(&row.id, record, &[from]).await? && stopping {
                tracing::info!(container = %row.id, name = %row.name, "process ended");
                // Its network goes with it.
                let _ = self.halt(&row, Duration::ZERO).await;
            }
        }
        Ok(())
    }

    /// Checks running containers every `WATCH_EVERY`, for as long as doppel runs.
    pub fn watch(self: &Arc<Self>) {
        let me = Arc::downgrade(self);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(WATCH_EVERY).await;
                let Some(me) = me.upgrade() else { return };
                if let Err(e) = me.reconcile(false).await {
                    tracing::warn!(error = %e, "checking containers");
                }
            }
        });
    }
}

/// How many interfaces a container was started with (their host ends are named by number).
fn interface_count(row: &ContainerRow) -> usize {
    serde_json::from_str::<Vec<app::model::Interface>>(&row.interfaces)
        .map(|v| v.len())
        .unwrap_or(0)
        .max(1)
}

/// Before a container starts: its tree's filesystem mounted again where it is an image tree
/// and the host restarted since (loop mounts do not survive that), else runc would run the
/// empty directory beneath it. `Err`: why it cannot start.
pub(crate) async fn mount_image_tree(rootfs: &Path) -> Result<(), String> {
    let root = rootfs.to_path_buf();
    let size = crate::config::image_tree_size();
    tokio::task::spawn_blocking(move || crate::engine::image::ensure_mounted(&root, size))
        .await
        .map_err(|e| format!("not started: {e}"))?
        .map_err(|e| format!("not started: its tree cannot be mounted: {e}"))
}

/// What runc said when it could not start a container's process, if `output`'s last line
/// is that (`time=... level=error msg="runc run failed: unable to start container
/// process: exec: \"/x\": stat /x: no such file or directory"`): its message, unquoted.
fn runc_failure(output: &str) -> Option<String> {
    let last = output.lines().rev().find(|l| !l.trim().is_empty())?;
    let (_, said) = last.split_once("runc run failed: ")?;
    let said = said.trim_end().strip_suffix('"').unwrap_or(said.trim_end());
    let said = said
        .strip_prefix("unable to start container process: ")
        .unwrap_or(said);
    Some(said.replace("\\\"", "\""))
}
