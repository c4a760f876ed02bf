//! Server-sent event streams of job progress: one job's (`/jobs/{id}/events`, ends with the
//! job) or every job the caller may see (`/events`). Event ids let a reconnecting client
//! resume with `Last-Event-ID` without missing anything still buffered.

use std::collections::HashSet;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use app::model::{ApiError, JobEvent, UserInfo};
use axum::http::{HeaderMap, HeaderValue};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures::stream::{self, Stream, StreamExt};
use tokio::sync::broadcast::{self, error::RecvError};

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

fn to_sse(p: &Published) -> Event {
    Event::default()
        .id(p.ev.id.to_string())
        .event(p.ev.kind.clone())
        .data(p.json.as_str())
}

fn respond(stream: impl Stream<Item = Result<Event, Infallible>> + Send + 'static) -> Response {
    let mut resp = Sse::new(stream)
        .keep_alive(
            KeepAlive::new()
                .interval(Duration::from_secs(15))
                .text("keep-alive"),
        )
        .into_response();
    // No proxy buffering or transforming: events must arrive as they happen.
    let h = resp.headers_mut();
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
}

impl Live {
    /// The next event that passes `keep`, catching up from the buffer if the channel lagged.
    async fn next(
        &mut self,
        keep: &(dyn Fn(&JobEvent) -> bool + Send + Sync),
    ) -> Option<Arc<Published>> {
        loop {
            if let Some(ev) = self.queue.pop_front() {
                if ev.ev.id > self.last && keep(&ev.ev) {
                    self.last = ev.ev.id;
                    return Some(ev);
                }
                continue;
            }
            match self.rx.recv().await {
                Ok(ev) => self.queue.push_back(ev),
                Err(RecvError::Lagged(_)) => self.queue.extend(self.hub.since(self.last)),
                Err(RecvError::Closed) => return None,
            }
        }
    }
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
    };
    let stream = stream::unfold((live, id), |(mut live, id)| async move {
        if live.done {
            return None;
        }
        let keep = |e: &JobEvent| e.job.id == id;
        let ev = live.next(&keep).await?;
        live.done = ev.ev.job.status.is_final();
        Some((Ok::<_, Infallible>(to_sse(&ev)), (live, id)))
    });
    Ok(respond(stream.boxed()))
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
    };
    let stream = stream::unfold((live, projects), |(mut live, projects)| async move {
        let keep = |e: &JobEvent| projects.contains(&e.job.project_id);
        let ev = live.next(&keep).await?;
        Some((Ok::<_, Infallible>(to_sse(&ev)), (live, projects)))
    });
    Ok(respond(stream.boxed()))
}
