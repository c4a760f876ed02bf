//! A running job's progress: events at most every `EVENT_INTERVAL`, database updates
//! about every `DB_INTERVAL` and at each phase, and rate and ETA for the console.

use std::sync::Arc;
use std::time::{Duration, Instant};

use app::model::{EventKind, Job, JobPhase, JobProgress};
use parking_lot::Mutex;

use super::JobRunner;
use crate::engine::{self, Progress};

/// At most this many progress events per second per job (the final state always goes).
pub(super) const EVENT_INTERVAL: Duration = Duration::from_millis(100);
/// How often running progress is written to the database.
const DB_INTERVAL: Duration = Duration::from_secs(1);

/// Turns engine progress into job events (at most 10 a second) and database updates
/// (about once a second). Called from the engine's threads.
pub(super) struct ProgressReporter {
    runner: Arc<JobRunner>,
    job_id: String,
    /// The job as it runs; progress events are this plus the latest progress (no database
    /// read per event: nothing else about a running job changes).
    running: Job,
    handle: tokio::runtime::Handle,
    state: Mutex<ReporterState>,
    /// Database writes in flight; the final status waits for them, so it is written last.
    pending: Mutex<Vec<tokio::task::JoinHandle<()>>>,
}

#[derive(Default)]
struct ReporterState {
    last_event: Option<Instant>,
    last_db: Option<Instant>,
    last_phase: Option<engine::Phase>,
    latest: Option<JobProgress>,
    /// Each transfer's last progress (a sync of a running copy has two passes): what a
    /// finished job says it moved.
    transfers: Vec<JobProgress>,
    /// The publication of a state held back by the interval.
    trail: Option<tokio::task::JoinHandle<()>>,
    /// The job has ended: nothing more is published.
    finished: bool,
}

impl ProgressReporter {
    pub(super) fn new(runner: Arc<JobRunner>, running: Job) -> Self {
        ProgressReporter {
            runner,
            job_id: running.id.clone(),
            running,
            handle: tokio::runtime::Handle::current(),
            state: Mutex::new(ReporterState::default()),
            pending: Mutex::new(Vec::new()),
        }
    }

    pub(super) fn report(self: &Arc<Self>, p: &Progress) {
        let progress = to_job_progress(p);
        let mut st = self.state.lock();
        let phase_changed = st.last_phase != Some(p.phase);
        st.latest = Some(progress.clone());
        if p.phase == engine::Phase::Transfer {
            if phase_changed {
                st.transfers.push(progress.clone());
            } else if let Some(last) = st.transfers.last_mut() {
                *last = progress.clone();
            }
        }
        // At most one event per interval, phase changes included (a short copy goes
        // through four phases in a few milliseconds); a state held back goes out at the
        // end of the interval (`trail`) unless the final status comes first.
        let event_due = st.last_event.is_none_or(|t| t.elapsed() >= EVENT_INTERVAL);
        // The database keeps every phase (readers of `GET /jobs/{id}` see it move).
        let db_due = phase_changed || st.last_db.is_none_or(|t| t.elapsed() >= DB_INTERVAL);
        st.last_phase = Some(p.phase);
        if event_due {
            st.last_event = Some(Instant::now());
            // Published here, under the lock: events leave in the order of the reports.
            self.publish(progress.clone());
        }
        if db_due {
            st.last_db = Some(Instant::now());
        }
        if !event_due && st.trail.is_none() && !st.finished {
            let wait = st
                .last_event
                .map(|t| EVENT_INTERVAL.saturating_sub(t.elapsed()))
                .unwrap_or_default();
            let me = self.clone();
            st.trail = Some(self.handle.spawn(async move {
                tokio::time::sleep(wait).await;
                // Published under the lock: `flush` marks the job finished under it, so
                // this event cannot come after the final status.
                let mut st = me.state.lock();
                st.trail = None;
                // Finished, or an event went out meanwhile.
                if st.finished || st.last_event.is_some_and(|t| t.elapsed() < EVENT_INTERVAL) {
                    return;
                }
                st.last_event = Some(Instant::now());
                if let Some(progress) = st.latest.clone() {
                    me.publish(progress);
                }
            }));
        }
        drop(st);
        if !db_due {
            return;
        }
        let runner = self.runner.clone();
        let job_id = self.job_id.clone();
        // The engine runs on a blocking thread: hand the database write to the runtime.
        let task = self.handle.spawn(async move {
            let _ = runner.db.record_progress(&job_id, &progress).await;
        });
        let mut pending = self.pending.lock();
        pending.retain(|t| !t.is_finished());
        pending.push(task);
    }

    fn publish(&self, progress: JobProgress) {
        let mut job = self.running.clone();
        job.phase = Some(progress.phase);
        job.progress = Some(progress);
        self.runner.hub.publish(EventKind::Progress, job);
    }

    /// Waits for the progress writes already handed out (a state held back is dropped: the
    /// final status says more), and gives the last progress seen, for the finished job to
    /// show where it ended. A job that `succeeded` ends with its transfers whole: every byte
    /// and entry of them done, at 100 % (the later phases count nothing, and a sync with
    /// nothing to move has a transfer of nothing), in the phase it ended in.
    pub(super) async fn flush(&self, succeeded: bool) -> Option<JobProgress> {
        let latest = {
            let mut st = self.state.lock();
            st.finished = true;
            if let Some(trail) = st.trail.take() {
                trail.abort();
            }
            match (succeeded, &st.latest) {
                (true, Some(latest)) => Some(completed(latest.phase, &st.transfers)),
                _ => st.latest.clone(),
            }
        };
        let tasks = std::mem::take(&mut *self.pending.lock());
        for t in tasks {
            let _ = t.await;
        }
        latest
    }
}

impl ProgressReporter {
    /// Says the job's container is being started, its tree done (`done`: the progress
    /// [`Self::flush`] gave): the seconds a start takes show as phase `start`, not as a
    /// commit at 100 %.
    pub(super) async fn starting(&self, done: Option<&JobProgress>) {
        let mut progress = done.cloned().unwrap_or_default();
        progress.phase = JobPhase::Start;
        self.publish(progress.clone());
        let _ = self
            .runner
            .db
            .record_progress(&self.job_id, &progress)
            .await;
    }
}

/// The engine's phase as the API names it.
pub(super) fn phase_of(p: engine::Phase) -> JobPhase {
    match p {
        engine::Phase::Scan => JobPhase::Scan,
        engine::Phase::Plan => JobPhase::Plan,
        engine::Phase::Transfer => JobPhase::Transfer,
        engine::Phase::Verify => JobPhase::Verify,
        engine::Phase::Commit => JobPhase::Commit,
    }
}

/// The progress of a job done in `phase`, whose transfers last reported `transfers`.
fn completed(phase: JobPhase, transfers: &[JobProgress]) -> JobProgress {
    let bytes = transfers
        .iter()
        .map(|t| t.bytes_total.unwrap_or(t.bytes_done))
        .sum();
    let files = transfers
        .iter()
        .map(|t| t.files_total.unwrap_or(t.files_done))
        .sum();
    let rate = transfers.last().and_then(|t| t.bytes_per_second);
    JobProgress {
        phase,
        bytes_done: bytes,
        bytes_total: Some(bytes),
        files_done: files,
        files_total: Some(files),
        percent: Some(100.0),
        bytes_per_second: rate,
        eta_seconds: None,
    }
}

fn to_job_progress(p: &Progress) -> JobProgress {
    let percent = match (p.phase, p.bytes_total) {
        (engine::Phase::Transfer, Some(0)) => Some(100.0),
        (engine::Phase::Transfer, Some(t)) => {
            Some((p.bytes_done as f64 * 100.0 / t as f64).min(100.0))
        }
        (engine::Phase::Verify | engine::Phase::Commit, _) => Some(100.0),
        _ => None,
    };
    let rate = (p.rate > 0.0).then_some(p.rate);
    let eta = match (p.bytes_total, rate) {
        (Some(t), Some(r)) if p.phase == engine::Phase::Transfer => {
            Some(t.saturating_sub(p.bytes_done) as f64 / r)
        }
        _ => None,
    };
    JobProgress {
        phase: phase_of(p.phase),
        bytes_done: p.bytes_done,
        bytes_total: p.bytes_total,
        files_done: p.files_done,
        files_total: p.files_total,
        percent,
        bytes_per_second: rate,
        eta_seconds: eta,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::jobs::Limits;
    use app::model::JobStatus;

    fn at(phase: engine::Phase, bytes_done: u64) -> Progress {
        Progress {
            phase,
            bytes_done,
            bytes_total: Some(100),
            files_done: 0,
            files_total: Some(1),
            elapsed: Duration::ZERO,
            rate: 0.0,
        }
    }

    /// The phases of each progress event published after event `seen` (which it moves on).
    fn phases(hub: &crate::events::EventHub, seen: &mut u64) -> Vec<String> {
        let published = hub.since(*seen);
        if let Some(last) = published.last() {
            *seen = last.ev.id;
        }
        published
            .iter()
            .map(|e| {
                e.ev.job
                    .phase
                    .map(|p| p.as_str())
                    .unwrap_or_default()
                    .to_string()
            })
            .collect()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn progress_events_come_at_most_every_interval_and_a_held_back_state_follows() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("t.db").display());
        let db = crate::store::connect(&url).await.unwrap();
        let runtime = crate::runtime::Runtime::none("a unit test");
        let me = crate::tls::Identity::load_or_create(&dir.path().join("identity"), "t").unwrap();
        let agents = crate::remote::Agents::new(me);
        let lifecycle =
            crate::lifecycle::Lifecycle::new(db.clone(), Arc::new(runtime), agents.clone());
        let runner = JobRunner::new(db, Limits::default(), lifecycle, agents);
        let mut seen = runner.hub.peek_id().saturating_sub(1);
        let job = crate::events::test_job("a", JobStatus::Running);
        let reporter = Arc::new(ProgressReporter::new(runner.clone(), job));
        // A short copy: four phases within a few milliseconds.
        for phase in [
            engine::Phase::Scan,
            engine::Phase::Transfer,
            engine::Phase::Verify,
        ] {
            reporter.report(&at(phase, 50));
        }
        assert_eq!(
            phases(&runner.hub, &mut seen),
            ["scan"],
            "only the first goes at once"
        );
        tokio::time::sleep(EVENT_INTERVAL + EVENT_INTERVAL / 2).await;
        assert_eq!(
            phases(&runner.hub, &mut seen),
            ["verify"],
            "the state held back goes out at the end of the interval"
        );
        // Held back again, but the job ends first: nothing after its end.
        reporter.report(&at(engine::Phase::Commit, 100));
        reporter.report(&at(engine::Phase::Commit, 100));
        let before = phases(&runner.hub, &mut seen);
        assert!(before.len() <= 1, "{before:?}");
        let last = reporter.flush(true).await.expect("the last progress");
        assert_eq!(last.phase, JobPhase::Commit, "{last:?}");
        // Done: the transfer whole, not the commit's count of nothing.
        assert_eq!(
            (last.bytes_done, last.bytes_total, last.percent),
            (100, Some(100), Some(100.0)),
            "{last:?}"
        );
        tokio::time::sleep(EVENT_INTERVAL * 2).await;
        assert_eq!(
            phases(&runner.hub, &mut seen),
            Vec::<String>::new(),
            "nothing after the end"
        );

        // A sync of a running copy: two passes, each with its transfer; done, it shows both.
        let two = Arc::new(ProgressReporter::new(
            runner.clone(),
            crate::events::test_job("b", JobStatus::Running),
        ));
        for (phase, done) in [
            (engine::Phase::Transfer, 20),
            (engine::Phase::Transfer, 70),
            (engine::Phase::Commit, 0),
            (engine::Phase::Transfer, 10),
            (engine::Phase::Verify, 0),
        ] {
            two.report(&at(phase, done));
        }
        let last = two.flush(true).await.expect("the last progress");
        assert_eq!(
            (last.phase, last.bytes_done, last.bytes_total),
            (JobPhase::Verify, 200, Some(200)),
            "{last:?}"
        );
    }
}
