//! The in-process event hub: every job event gets an increasing id and goes into a replay
//! buffer, so a client that reconnects with `Last-Event-ID` misses nothing still buffered.
//! Live subscribers get events in batches: everything published within one `COALESCE`
//! window, with its frames already joined, so 500 subscribers of a burst each write one
//! shared buffer instead of each receiving, filtering and copying every event.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;
use std::time::Duration;

use app::model::{EventKind, Job, JobEvent};
use axum::body::Bytes;
use bytes::BytesMut;
use tokio::sync::{broadcast, Notify};

/// Events kept for replay (across all jobs).
const REPLAY: usize = 20_000;
/// The most events one reconnecting stream is sent from the buffer.
pub const REPLAY_PER_STREAM: usize = 1_000;
/// A batch goes out this long after its first event: events of a burst (200 jobs queued at
/// once, progress of many jobs) then cost each client a few writes instead of one wake-up
/// and write per event. Even the first event of a burst waits: sent at once, it alone would
/// cost every subscriber a write while the burst's requests wait for the cores (`make load`).
pub const COALESCE: Duration = Duration::from_millis(25);

/// An event and its server-sent-event frame (`id`, `event`, `data` lines), formatted once
/// however many clients receive it; clients share the bytes.
pub struct Published {
    pub ev: JobEvent,
    pub frame: Bytes,
}

/// Consecutive events published within one `COALESCE` window, in id order.
pub struct Batch {
    pub events: Vec<Arc<Published>>,
    /// Every event's frame, joined: what a subscriber that keeps them all writes.
    pub frames: Bytes,
    /// The projects of the batch's jobs (each once): a subscriber that sees them all
    /// writes `frames` without looking at single events.
    pub projects: Vec<String>,
}

/// The frames of `events`, in order, as one buffer (a single event's is shared, not copied).
pub fn join_frames(events: &[Arc<Published>]) -> Bytes {
    match events {
        [one] => one.frame.clone(),
        many => {
            let mut buf = BytesMut::with_capacity(many.iter().map(|e| e.frame.len()).sum());
            for e in many {
                buf.extend_from_slice(&e.frame);
            }
            buf.freeze()
        }
    }
}

impl Batch {
    fn new(events: Vec<Arc<Published>>) -> Batch {
        let mut projects: Vec<String> = Vec::new();
        for e in &events {
            if !projects.contains(&e.ev.job.project_id) {
                projects.push(e.ev.job.project_id.clone());
            }
        }
        Batch {
            frames: join_frames(&events),
            events,
            projects,
        }
    }

    /// The id of its first event (batches are never empty).
    pub fn first_id(&self) -> u64 {
        self.events.first().map_or(0, |e| e.ev.id)
    }

    pub fn last_id(&self) -> u64 {
        self.events.last().map_or(0, |e| e.ev.id)
    }
}

struct Buffers {
    /// The last `REPLAY` events.
    recent: VecDeque<Arc<Published>>,
    /// Events not yet in a batch; only gathered once someone has subscribed.
    pending: Vec<Arc<Published>>,
    /// Whether the task that sends batches runs (it starts with the first subscriber).
    batching: bool,
}

pub struct EventHub {
    next_id: AtomicU64,
    buffers: Mutex<Buffers>,
    tx: broadcast::Sender<Arc<Batch>>,
    /// Wakes the batching task when an event is pending.
    wake: Notify,
    /// Set when doppel stops: every event stream ends (cleanly, rather than being cut
    /// when the connections' grace period runs out).
    closing: tokio::sync::watch::Sender<bool>,
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
        let kind = ev.kind.as_str();
        let frame = format!(
            "id: {id}\nevent: {kind}\ndata: {{\"id\":{id},\"kind\":\"{kind}\",\"at\":{},\"job\":{job}}}\n\n",
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
            buffers: Mutex::new(Buffers {
                recent: VecDeque::with_capacity(1024),
                pending: Vec::new(),
                batching: false,
            }),
            tx: broadcast::channel(4096).0,
            wake: Notify::new(),
            closing: tokio::sync::watch::channel(false).0,
        }
    }

    /// Ends every event stream: doppel is stopping.
    pub fn close(&self) {
        self.closing.send_replace(true);
    }

    /// Whether doppel is stopping, and a way to wait for it.
    pub fn closing(&self) -> tokio::sync::watch::Receiver<bool> {
        self.closing.subscribe()
    }

    fn buffers(&self) -> parking_lot::MutexGuard<'_, Buffers> {
        self.buffers.lock()
    }

    /// The id the next event will get.
    pub fn peek_id(&self) -> u64 {
        self.next_id.load(Ordering::SeqCst)
    }

    pub fn publish(&self, kind: EventKind, job: Job) -> Arc<Published> {
        // The costly part (the job's JSON) outside the lock.
        let job_json = serde_json::to_string(&job).unwrap_or_default();
        let mut buffers = self.buffers();
        // Id and order are assigned under the lock, so the buffer and the batches agree.
        let ev = JobEvent {
            id: self.next_id.fetch_add(1, Ordering::SeqCst),
            kind,
            at: crate::ids::now_ms(),
            job,
        };
        let ev = Arc::new(Published::with_job_json(ev, &job_json));
        if buffers.recent.len() == REPLAY {
            buffers.recent.pop_front();
        }
        buffers.recent.push_back(ev.clone());
        if buffers.batching {
            buffers.pending.push(ev.clone());
            drop(buffers);
            self.wake.notify_one();
        }
        ev
    }

    /// Buffered events after `after`, the id a subscriber has seen up to (`after`, or the
    /// last id published: without `after` only later events are wanted), and a receiver of
    /// every later batch, with no gap between the two. A batch may repeat events the
    /// replay holds; ids tell them apart.
    pub fn subscribe(
        self: &Arc<Self>,
        after: Option<u64>,
    ) -> (Vec<Arc<Published>>, u64, broadcast::Receiver<Arc<Batch>>) {
        let mut buffers = self.buffers();
        if !buffers.batching {
            buffers.batching = true;
            tokio::spawn(self.clone().send_batches());
        }
        // An id not issued yet (made up) resumes nothing. One from before a restart is older
        // than every id this process issued: everything buffered is newer, and replayed.
        let after = after.filter(|&id| id < self.peek_id());
        let seen = after.unwrap_or_else(|| self.peek_id().saturating_sub(1));
        let replay = match after {
            Some(id) => {
                let mut replay: Vec<_> = buffers
                    .recent
                    .iter()
                    .filter(|e| e.ev.id > id)
                    .cloned()
                    .collect();
                // A client far behind gets the newest events (each carries its job's whole
                // state), not the whole buffer on every reconnect.
                let skip = replay.len().saturating_sub(REPLAY_PER_STREAM);
                replay.drain(..skip);
                replay
            }
            None => Vec::new(),
        };
        (replay, seen, self.tx.subscribe())
    }

    /// Sends what is pending as one batch, `COALESCE` after the first event of the batch.
    async fn send_batches(self: Arc<Self>) {
        loop {
            self.wake.notified().await;
            tokio::time::sleep(COALESCE).await;
            let events = std::mem::take(&mut self.buffers().pending);
            if events.is_empty() {
                continue;
            }
            let _ = self.tx.send(Arc::new(Batch::new(events)));
        }
    }

    /// Buffered events after `after` (to catch up after a lagging receiver).
    pub fn since(&self, after: u64) -> Vec<Arc<Published>> {
        let buffers = self.buffers();
        buffers
            .recent
            .iter()
            .filter(|e| e.ev.id > after)
            .cloned()
            .collect()
    }

    /// The buffered events of one job.
    pub fn of_job(&self, job_id: &str) -> Vec<Arc<Published>> {
        let buffers = self.buffers();
        buffers
            .recent
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
        waiting_for: None,
        summary: None,
        error: None,
        created_at: 0,
        started_at: None,
        finished_at: None,
        url: String::new(),
        events_url: String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use app::model::JobStatus;

    #[tokio::test]
    async fn a_resume_replays_at_most_the_newest_events_and_a_future_id_replays_none() {
        let hub = Arc::new(EventHub::new());
        for i in 0..REPLAY_PER_STREAM + 500 {
            hub.publish(
                EventKind::Progress,
                test_job(&format!("j{i}"), JobStatus::Running),
            );
        }
        let newest = hub.peek_id() - 1;
        let (replay, seen, _rx) = hub.subscribe(Some(0));
        assert_eq!(seen, 0);
        assert_eq!(replay.len(), REPLAY_PER_STREAM);
        assert_eq!(replay.last().unwrap().ev.id, newest);
        assert!(replay.windows(2).all(|w| w[0].ev.id + 1 == w[1].ev.id));
        let (replay, seen, _rx) = hub.subscribe(Some(newest - 3));
        assert_eq!(replay.len(), 3);
        assert_eq!(seen, newest - 3);
        // From the future (made up): live from now on, nothing skipped.
        let (replay, seen, _rx) = hub.subscribe(Some(u64::MAX));
        assert!(replay.is_empty());
        assert_eq!(seen, newest);
    }
}
