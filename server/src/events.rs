//! The in-process event hub: every job event gets an increasing id, goes to live
//! subscribers (a broadcast channel) and into a replay buffer, so a client that reconnects
//! with `Last-Event-ID` misses nothing still buffered.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use app::model::{Job, JobEvent};
use tokio::sync::broadcast;

/// Events kept for replay (across all jobs).
const REPLAY: usize = 20_000;

/// An event and its server-sent-event frame (`id`, `event`, `data` lines), formatted once
/// however many clients receive it; clients share the bytes.
pub struct Published {
    pub ev: JobEvent,
    pub frame: axum::body::Bytes,
}

pub struct EventHub {
    next_id: AtomicU64,
    recent: Mutex<VecDeque<Arc<Published>>>,
    tx: broadcast::Sender<Arc<Published>>,
}

impl Default for EventHub {
    fn default() -> Self {
        Self::new()
    }
}

impl Published {
    pub fn new(ev: JobEvent) -> Published {
        let job = serde_json::to_string(&ev.job).unwrap_or_default();
        Published::with_job_json(ev, &job)
    }

    /// The frame around the job's JSON, already serialized: `publish` serializes the job
    /// before it takes the hub's lock, and only numbers the event under it. The data is
    /// what serde writes for a `JobEvent` (fields in order; compact JSON has no line
    /// breaks, so it fits on one `data:` line).
    fn with_job_json(ev: JobEvent, job: &str) -> Published {
        let kind = serde_json::to_string(&ev.kind).unwrap_or_default();
        let frame = format!(
            "id: {id}\nevent: {}\ndata: {{\"id\":{id},\"kind\":{kind},\"at\":{},\"job\":{job}}}\n\n",
            ev.kind,
            ev.at,
            id = ev.id,
        );
        Published {
            ev,
            frame: frame.into(),
        }
    }
}

impl EventHub {
    pub fn new() -> EventHub {
        // Ids continue to grow across restarts (milliseconds at start, times 1000), so a
        // client resuming after a restart never mistakes new events for old ones.
        let start = crate::ids::now_ms().max(0) as u64 * 1000;
        EventHub {
            next_id: AtomicU64::new(start),
            recent: Mutex::new(VecDeque::with_capacity(1024)),
            tx: broadcast::channel(4096).0,
        }
    }

    /// The id the next event will get.
    pub fn peek_id(&self) -> u64 {
        self.next_id.load(Ordering::SeqCst)
    }

    pub fn publish(&self, kind: &str, job: Job) -> Arc<Published> {
        // The costly part (the job's JSON) outside the lock.
        let job_json = serde_json::to_string(&job).unwrap_or_default();
        let mut recent = self.recent.lock().unwrap_or_else(|e| e.into_inner());
        // Id and order are assigned under the lock, so the buffer and the channel agree.
        let ev = JobEvent {
            id: self.next_id.fetch_add(1, Ordering::SeqCst),
            kind: kind.to_string(),
            at: crate::ids::now_ms(),
            job,
        };
        let ev = Arc::new(Published::with_job_json(ev, &job_json));
        if recent.len() == REPLAY {
            recent.pop_front();
        }
        recent.push_back(ev.clone());
        let _ = self.tx.send(ev.clone());
        ev
    }

    /// Buffered events after `after` (none without it), and a receiver for everything
    /// later, with no gap between the two.
    pub fn subscribe(
        &self,
        after: Option<u64>,
    ) -> (Vec<Arc<Published>>, broadcast::Receiver<Arc<Published>>) {
        let recent = self.recent.lock().unwrap_or_else(|e| e.into_inner());
        let replay = match after {
            Some(id) => recent.iter().filter(|e| e.ev.id > id).cloned().collect(),
            None => Vec::new(),
        };
        (replay, self.tx.subscribe())
    }

    /// Buffered events after `after` (to catch up after a lagging receiver).
    pub fn since(&self, after: u64) -> Vec<Arc<Published>> {
        let recent = self.recent.lock().unwrap_or_else(|e| e.into_inner());
        recent.iter().filter(|e| e.ev.id > after).cloned().collect()
    }

    /// The buffered events of one job.
    pub fn of_job(&self, job_id: &str) -> Vec<Arc<Published>> {
        let recent = self.recent.lock().unwrap_or_else(|e| e.into_inner());
        recent
            .iter()
            .filter(|e| e.ev.job.id == job_id)
            .cloned()
            .collect()
    }
}

/// A job to publish in tests: only its id and status matter to the hub and the streams.
#[cfg(test)]
pub(crate) fn test_job(id: &str, status: app::model::JobStatus) -> Job {
    Job {
        id: id.into(),
        kind: app::model::JobKind::Copy,
        status,
        phase: None,
        project_id: "p".into(),
        container_id: "c".into(),
        source_container_id: "s".into(),
        progress: None,
        summary: None,
        error: None,
        created_at: 0,
        started_at: None,
        finished_at: None,
        url: String::new(),
        events_url: String::new(),
    }
}
