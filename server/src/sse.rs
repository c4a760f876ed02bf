//! Server-sent event streams of job progress: one job's (`/jobs/{id}/events`, ends with the
//! job) or every job the caller may see (`/events`). Event ids let a reconnecting client
//! resume with `Last-Event-ID` without missing anything still buffered.

use std::collections::HashSet;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use app::model::{ApiError, JobEvent, UserInfo};
use axum::body::{Body, Bytes};
use axum::http::{HeaderMap, HeaderValue};
use axum::response::{IntoResponse, Response};
use bytes::BytesMut;
use futures::stream::{self, Stream};
use tokio::sync::broadcast::{
    self,
    error::{RecvError, TryRecvError},
};

use crate::events::{EventHub, Published};
use crate::service::Service;

/// The id to resume after: the `Last-Event-ID` header, or `?last_event_id=` (for clients
/// that cannot set headers on a first connection).
pub fn resume_point(headers: &HeaderMap, query: Option<u64>) -> Result<Option<u64>, ApiError> {
    match headers.get("last-event-id") {
        Some(v) => v
            .to_str()
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .map(Some)
            .ok_or_else(|| ApiError::invalid("Last-Event-ID must be an event id (a number)")),
        None => Ok(query),
    }
}

/// A keep-alive comment, sent when nothing else was for this long.
const KEEP_ALIVE: Duration = Duration::from_secs(15);
/// Events that are ready together go out in one write, up to this many bytes.
const BATCH_BYTES: usize = 64 * 1024;
/// After a write, a stream waits this long before the next one: events of a burst (200
/// jobs queued at once, progress of many jobs) then cost each client a few writes instead
/// of one wake-up and write per event. The first event after a quiet spell goes at once.
const COALESCE: Duration = Duration::from_millis(25);

/// A `text/event-stream` response of pre-formatted frames. Nothing may buffer or
/// transform it on the way: events must arrive as they happen.
fn respond(stream: impl Stream<Item = Result<Bytes, Infallible>> + Send + 'static) -> Response {
    let mut resp = Body::from_stream(stream).into_response();
    let h = resp.headers_mut();
    h.insert(
        "content-type",
        HeaderValue::from_static("text/event-stream"),
    );
    h.insert(
        "cache-control",
        HeaderValue::from_static("no-cache, no-transform"),
    );
    h.insert("x-accel-buffering", HeaderValue::from_static("no"));
    resp
}

struct Live {
    rx: broadcast::Receiver<Arc<Published>>,
    hub: Arc<EventHub>,
    /// Events to send before reading the channel again (replay, catch-up).
    queue: std::collections::VecDeque<Arc<Published>>,
    last: u64,
    done: bool,
    /// When the last frames went out (see `COALESCE`).
    last_write: Option<tokio::time::Instant>,
}

/// What a stream sends next.
enum Next {
    Frames(Bytes),
    KeepAlive,
    End,
}

impl Live {
    /// The next event that passes `keep`, catching up from the buffer if the channel
    /// lagged; with `wait` false, only one that is ready now.
    async fn next(
        &mut self,
        keep: &(dyn Fn(&JobEvent) -> bool + Send + Sync),
        wait: bool,
    ) -> Option<Arc<Published>> {
        loop {
            if let Some(ev) = self.queue.pop_front() {
                if ev.ev.id > self.last && keep(&ev.ev) {
                    self.last = ev.ev.id;
                    return Some(ev);
                }
                continue;
            }
            let got = if wait {
                self.rx.recv().await
            } else {
                match self.rx.try_recv() {
                    Ok(ev) => Ok(ev),
                    Err(TryRecvError::Lagged(n)) => Err(RecvError::Lagged(n)),
                    Err(TryRecvError::Closed) => Err(RecvError::Closed),
                    Err(TryRecvError::Empty) => return None,
                }
            };
            match got {
                Ok(ev) => self.queue.push_back(ev),
                Err(RecvError::Lagged(_)) => self.queue.extend(self.hub.since(self.last)),
                Err(RecvError::Closed) => {
                    self.done = true;
                    return None;
                }
            }
        }
    }

    /// Waits for the next event, then takes every other event that is ready too: one
    /// write for many (a burst of jobs costs each client a few writes, not one per event).
    /// `last` says whether an event ends the stream (it is still sent).
    async fn next_batch(
        &mut self,
        keep: &(dyn Fn(&JobEvent) -> bool + Send + Sync),
        last: &(dyn Fn(&JobEvent) -> bool + Send + Sync),
    ) -> Next {
        if self.done {
            return Next::End;
        }
        if let Some(at) = self.last_write {
            tokio::time::sleep_until(at + COALESCE).await;
        }
        let first = match tokio::time::timeout(KEEP_ALIVE, self.next(keep, true)).await {
            Err(_) => return Next::KeepAlive,
            Ok(None) => return Next::End,
            Ok(Some(ev)) => ev,
        };
        if last(&first.ev) {
            self.done = true;
        }
        let mut more = Vec::new();
        let mut size = first.frame.len();
        while !self.done && size < BATCH_BYTES {
            let Some(ev) = self.next(keep, false).await else {
                break;
            };
            size += ev.frame.len();
            self.done = last(&ev.ev);
            more.push(ev);
        }
        self.last_write = Some(tokio::time::Instant::now());
        if more.is_empty() {
            return Next::Frames(first.frame.clone());
        }
        let mut buf = BytesMut::with_capacity(size);
        buf.extend_from_slice(&first.frame);
        for ev in more {
            buf.extend_from_slice(&ev.frame);
        }
        Next::Frames(buf.freeze())
    }
}

/// Turns a live subscription into the response body's chunks.
fn frames(
    live: Live,
    keep: impl Fn(&JobEvent) -> bool + Send + Sync + 'static,
    last: impl Fn(&JobEvent) -> bool + Send + Sync + 'static,
) -> impl Stream<Item = Result<Bytes, Infallible>> + Send + 'static {
    stream::unfold((live, keep, last), |(mut live, keep, last)| async move {
        let chunk = match live.next_batch(&keep, &last).await {
            Next::End => return None,
            Next::KeepAlive => Bytes::from_static(b": keep-alive\n\n"),
            Next::Frames(b) => b,
        };
        Some((Ok(chunk), (live, keep, last)))
    })
}

/// One job's events, ending after its final event.
pub async fn job_stream(
    service: &Service,
    user: &UserInfo,
    job_id: &str,
    after: Option<u64>,
) -> Result<Response, ApiError> {
    let job = service.get_job(user, job_id).await?;
    let hub = service.jobs.hub.clone();
    let (_, rx) = hub.subscribe(None);
    let mut queue: std::collections::VecDeque<Arc<Published>> = hub.of_job(job_id).into();
    let last = after.unwrap_or(0);
    if queue.iter().all(|e| e.ev.id <= last) {
        // Nothing buffered to replay (e.g. after a restart): start from the current state.
        let id = hub.peek_id().saturating_sub(1).max(last + 1);
        let kind = if job.status.is_final() {
            "status"
        } else {
            "progress"
        };
        if after.is_none() || job.status.is_final() {
            queue.push_back(Arc::new(Published::new(JobEvent {
                id,
                kind: kind.into(),
                at: crate::ids::now_ms(),
                job,
            })));
        }
    }
    let id = job_id.to_string();
    let live = Live {
        rx,
        hub,
        queue,
        last,
        done: false,
        last_write: None,
    };
    let keep = move |e: &JobEvent| e.job.id == id;
    let end = |e: &JobEvent| e.job.status.is_final();
    Ok(respond(frames(live, keep, end)))
}

/// Every visible job's events, until the client goes away.
pub async fn all_stream(
    service: &Service,
    user: &UserInfo,
    after: Option<u64>,
) -> Result<Response, ApiError> {
    let projects: HashSet<String> = service.visibility_roles(user).await?.into_keys().collect();
    let hub = service.jobs.hub.clone();
    let (replay, rx) = hub.subscribe(after);
    let live = Live {
        rx,
        hub,
        queue: replay.into(),
        last: after.unwrap_or(0),
        done: false,
        last_write: None,
    };
    let keep = move |e: &JobEvent| projects.contains(&e.job.project_id);
    Ok(respond(frames(live, keep, |_: &JobEvent| false)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::test_job as job;
    use app::model::JobStatus;

    fn live(hub: &Arc<EventHub>) -> Live {
        let (_, rx) = hub.subscribe(None);
        Live {
            rx,
            hub: hub.clone(),
            queue: Default::default(),
            last: 0,
            done: false,
            last_write: None,
        }
    }

    #[tokio::test]
    async fn ready_events_go_out_together_and_a_job_stream_ends_with_its_final_event() {
        let hub = Arc::new(EventHub::new());
        let mut all = live(&hub);
        let mut one = live(&hub);
        hub.publish("status", job("a", JobStatus::Running));
        hub.publish("progress", job("b", JobStatus::Running));
        hub.publish("status", job("a", JobStatus::Succeeded));
        hub.publish("status", job("a", JobStatus::Succeeded));

        let Next::Frames(chunk) = all.next_batch(&|_| true, &|_| false).await else {
            panic!("frames expected");
        };
        let text = std::str::from_utf8(&chunk).unwrap();
        assert_eq!(text.matches("\n\n").count(), 4, "{text}");
        assert!(text.starts_with("id: ") && text.contains("event: progress\ndata: {"));

        let keep = |e: &JobEvent| e.job.id == "a";
        let end = |e: &JobEvent| e.job.status.is_final();
        let Next::Frames(chunk) = one.next_batch(&keep, &end).await else {
            panic!("frames expected");
        };
        let text = std::str::from_utf8(&chunk).unwrap();
        assert_eq!(
            text.matches("\n\n").count(),
            2,
            "other jobs' events and anything after the end are left out: {text}"
        );
        assert!(matches!(one.next_batch(&keep, &end).await, Next::End));
    }

    #[tokio::test(start_paused = true)]
    async fn events_soon_after_a_write_wait_to_go_out_together() {
        let hub = Arc::new(EventHub::new());
        let mut all = live(&hub);
        let t0 = tokio::time::Instant::now();
        hub.publish("status", job("a", JobStatus::Running));
        let Next::Frames(first) = all.next_batch(&|_| true, &|_| false).await else {
            panic!("frames expected");
        };
        assert_eq!(
            std::str::from_utf8(&first).unwrap().matches("\n\n").count(),
            1
        );
        assert_eq!(t0.elapsed(), Duration::ZERO, "the first event goes at once");

        // Two events 10 ms apart, right after that write: one write, 25 ms after the first.
        let publisher = {
            let hub = hub.clone();
            tokio::spawn(async move {
                hub.publish("progress", job("b", JobStatus::Running));
                tokio::time::sleep(Duration::from_millis(10)).await;
                hub.publish("progress", job("c", JobStatus::Running));
            })
        };
        let Next::Frames(second) = all.next_batch(&|_| true, &|_| false).await else {
            panic!("frames expected");
        };
        publisher.await.unwrap();
        let text = std::str::from_utf8(&second).unwrap();
        assert_eq!(text.matches("\n\n").count(), 2, "{text}");
        assert_eq!(t0.elapsed(), COALESCE);
    }

    #[test]
    fn a_published_frame_carries_exactly_its_events_json() {
        let hub = EventHub::new();
        let mut j = job("a\"b", JobStatus::Failed);
        j.error = Some("line one\nline \"two\"".into());
        j.summary = Some(serde_json::json!({"files_added": 3, "drift_paths": ["x\ny"]}));
        let p = hub.publish("status", j);
        let text = std::str::from_utf8(&p.frame).unwrap();
        let data = text.lines().find_map(|l| l.strip_prefix("data: ")).unwrap();
        assert_eq!(data, serde_json::to_string(&p.ev).unwrap());
        assert!(text.starts_with(&format!("id: {}\nevent: status\n", p.ev.id)));
        assert!(
            text.ends_with("}\n\n") && text.matches('\n').count() == 4,
            "{text:?}"
        );
    }
}
