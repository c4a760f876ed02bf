//! Server-sent event streams of job progress: one job's (`/jobs/{id}/events`, ends with the
//! job) or every job the caller may see (`/events`). Event ids let a reconnecting client
//! resume with `Last-Event-ID` without missing anything still buffered.

use std::collections::{HashMap, HashSet, VecDeque};
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use app::model::{ApiError, ErrorCode, EventKind, JobEvent, UserInfo};
use axum::body::{Body, Bytes};
use axum::http::{HeaderMap, HeaderValue};
use axum::response::{IntoResponse, Response};
use axum::Extension;
use futures::stream::{self, Stream};
use tokio::sync::broadcast::{self, error::RecvError};

use crate::events::{join_frames, Batch, EventHub, Published};
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use serde::Deserialize;

use super::{path, query, Caller, ReadErrors, RestError};
use crate::http::session::Credential;
use crate::http::AppState;
use crate::service::Service;
use utoipa::IntoParams;

/// The id to resume after: the `Last-Event-ID` header, or `?last_event_id=` (for clients
/// that cannot set headers on a first connection).
fn resume_point(headers: &HeaderMap, query: Option<u64>) -> Result<Option<u64>, ApiError> {
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

/// How often an open stream checks its caller again: a logout, an expired session, a
/// removed token or a lost membership ends it (or narrows it) within this time.
const RECHECK: Duration = Duration::from_secs(5);

/// The event streams open per user, at most `cap` each (a console tab holds one or two).
pub(crate) struct StreamSlots {
    cap: usize,
    open: parking_lot::Mutex<HashMap<String, usize>>,
}

/// One open stream's place, given back when the stream ends (the body is dropped).
struct StreamSlot {
    slots: Arc<StreamSlots>,
    user: String,
}

impl StreamSlots {
    pub(crate) fn new(cap: usize) -> StreamSlots {
        StreamSlots {
            cap: cap.max(1),
            open: Default::default(),
        }
    }

    fn take(self: &Arc<Self>, user: &UserInfo) -> Result<StreamSlot, ApiError> {
        let mut open = self.open.lock();
        let n = open.entry(user.id.clone()).or_insert(0);
        if *n >= self.cap {
            return Err(ApiError::new(
                ErrorCode::TooManyRequests,
                format!(
                    "{} event streams are open for this user already; close one first",
                    self.cap
                ),
            ));
        }
        *n += 1;
        Ok(StreamSlot {
            slots: self.clone(),
            user: user.id.clone(),
        })
    }
}

impl Drop for StreamSlot {
    fn drop(&mut self) {
        let mut open = self.slots.open.lock();
        if let Some(n) = open.get_mut(&self.user) {
            *n -= 1;
            if *n == 0 {
                open.remove(&self.user);
            }
        }
    }
}

/// Who a stream is for, checked again every [`RECHECK`].
struct Recheck {
    service: Arc<Service>,
    credential: Option<Credential>,
    due: tokio::time::Instant,
    _slot: StreamSlot,
}

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

/// Which events a stream sends, and which one ends it.
enum Filter {
    /// One job's, up to and including its final event.
    Job(String),
    /// Every job's in these projects (`None`: every project, for a platform admin).
    Projects(Option<HashSet<String>>),
}

impl Filter {
    fn keeps(&self, ev: &JobEvent) -> bool {
        match self {
            Filter::Job(id) => ev.job.id == *id,
            Filter::Projects(None) => true,
            Filter::Projects(Some(set)) => set.contains(&ev.job.project_id),
        }
    }

    fn ends_with(&self, ev: &JobEvent) -> bool {
        matches!(self, Filter::Job(_)) && ev.job.status.is_final()
    }

    /// Whether every event of `batch` goes out, so its joined frames can be written as
    /// they are.
    fn keeps_all(&self, batch: &Batch) -> bool {
        match self {
            Filter::Job(_) => false,
            Filter::Projects(None) => true,
            Filter::Projects(Some(set)) => batch.projects.iter().all(|p| set.contains(p)),
        }
    }
}

struct Live {
    rx: broadcast::Receiver<Arc<Batch>>,
    /// `None` only in unit tests of the event logic.
    recheck: Option<Recheck>,
    hub: Arc<EventHub>,
    filter: Filter,
    /// Events to look at before reading the channel again (replay, catch-up, or a batch
    /// this stream sends only part of).
    queue: VecDeque<Arc<Published>>,
    /// The last event id sent (or not wanted).
    last: u64,
    done: bool,
    /// Set when doppel stops: the stream ends.
    closing: tokio::sync::watch::Receiver<bool>,
}

/// What a stream sends next.
enum Next {
    Frames(Bytes),
    KeepAlive,
    End,
}

impl Live {
    /// The next frames to write: queued events, or the next batch (shared as it is when
    /// every event in it goes out: the usual case, with no work per event).
    async fn next_batch(&mut self) -> Next {
        loop {
            if self.done {
                return Next::End;
            }
            if let Some(frames) = self.take_queued() {
                return Next::Frames(frames);
            }
            let now = tokio::time::Instant::now();
            if self.recheck.as_ref().is_some_and(|r| r.due <= now) && !self.recheck().await {
                return Next::End;
            }
            let wait = self.recheck.as_ref().map_or(KEEP_ALIVE, |r| {
                r.due.saturating_duration_since(now).min(KEEP_ALIVE)
            });
            if *self.closing.borrow() {
                return Next::End;
            }
            let received = tokio::select! {
                r = tokio::time::timeout(wait, self.rx.recv()) => r,
                _ = self.closing.wait_for(|stopping| *stopping) => return Next::End,
            };
            let batch = match received {
                Err(_)
                    if self
                        .recheck
                        .as_ref()
                        .is_some_and(|r| r.due <= tokio::time::Instant::now()) =>
                {
                    continue
                }
                Err(_) => return Next::KeepAlive,
                Ok(Ok(batch)) => batch,
                Ok(Err(RecvError::Lagged(_))) => {
                    self.queue.extend(self.hub.since(self.last));
                    continue;
                }
                Ok(Err(RecvError::Closed)) => return Next::End,
            };
            if batch.first_id() > self.last && self.filter.keeps_all(&batch) {
                self.last = batch.last_id();
                return Next::Frames(batch.frames.clone());
            }
            self.queue.extend(batch.events.iter().cloned());
        }
    }

    /// Checks the caller again; narrows what the stream sends to what they may see now.
    /// `false`: the stream must end (logged out, token removed, job no longer visible).
    async fn recheck(&mut self) -> bool {
        let Some(r) = &mut self.recheck else {
            return true;
        };
        r.due = tokio::time::Instant::now() + RECHECK;
        let user = match &r.credential {
            Some(c) => c.user(&r.service).await,
            None => None,
        };
        let Some(user) = user else {
            return false;
        };
        match &self.filter {
            Filter::Job(id) => r.service.get_job(&user, id).await.is_ok(),
            Filter::Projects(_) => match r.service.visible_projects(&user).await {
                Ok(projects) => {
                    self.filter = Filter::Projects(projects);
                    true
                }
                Err(_) => false,
            },
        }
    }

    /// The queued events this stream sends, joined (none left: `None`).
    fn take_queued(&mut self) -> Option<Bytes> {
        let mut out: Vec<Arc<Published>> = Vec::new();
        while let Some(ev) = self.queue.pop_front() {
            if ev.ev.id <= self.last || !self.filter.keeps(&ev.ev) {
                continue;
            }
            self.last = ev.ev.id;
            let end = self.filter.ends_with(&ev.ev);
            out.push(ev);
            if end {
                self.done = true;
                self.queue.clear();
            }
        }
        (!out.is_empty()).then(|| join_frames(&out))
    }
}

/// Turns a live subscription into the response body's chunks.
fn frames(live: Live) -> impl Stream<Item = Result<Bytes, Infallible>> + Send + 'static {
    stream::unfold(live, |mut live| async move {
        let chunk = match live.next_batch().await {
            Next::End => return None,
            Next::KeepAlive => Bytes::from_static(b": keep-alive\n\n"),
            Next::Frames(b) => b,
        };
        Some((Ok(chunk), live))
    })
}

/// One job's events, ending after its final event.
async fn job_stream(
    service: &Service,
    user: &UserInfo,
    job_id: &str,
    after: Option<u64>,
    recheck: Recheck,
) -> Result<Response, ApiError> {
    let job = service.get_job(user, job_id).await?;
    let hub = service.events().clone();
    let (_, _, rx) = hub.subscribe(None);
    let mut queue: VecDeque<Arc<Published>> = hub.of_job(job_id).into();
    // An id this doppel has not issued yet (made up) is no place to resume from: the
    // stream starts from the job's current state, its history not replayed. (One from
    // before a restart is older than anything buffered: all of the job's buffered events
    // follow it.)
    // (One look at the next id: an event published between two would fall between.)
    let next_id = hub.peek_id();
    if after.is_some_and(|a| a >= next_id) {
        queue.clear();
    }
    let after = after.filter(|&a| a < next_id);
    let last = after.unwrap_or(0);
    if queue.iter().all(|e| e.ev.id <= last) {
        // Nothing buffered to replay (e.g. after a restart): start from the current state.
        let id = next_id.saturating_sub(1).max(last.saturating_add(1));
        let kind = if job.status.is_final() {
            EventKind::Status
        } else {
            EventKind::Progress
        };
        if after.is_none() || job.status.is_final() {
            queue.push_back(Arc::new(Published::new(JobEvent {
                id,
                kind,
                at: crate::ids::now_ms(),
                job,
            })));
        }
    }
    let live = Live {
        rx,
        recheck: Some(recheck),
        closing: hub.closing(),
        hub,
        filter: Filter::Job(job_id.to_string()),
        queue,
        last,
        done: false,
    };
    Ok(respond(frames(live)))
}

/// Every visible job's events, until the client goes away.
async fn all_stream(
    service: &Service,
    user: &UserInfo,
    after: Option<u64>,
    recheck: Recheck,
) -> Result<Response, ApiError> {
    let projects = service.visible_projects(user).await?;
    let hub = service.events().clone();
    let (replay, seen, rx) = hub.subscribe(after);
    let live = Live {
        rx,
        recheck: Some(recheck),
        closing: hub.closing(),
        hub,
        filter: Filter::Projects(projects),
        queue: replay.into(),
        last: seen,
        done: false,
    };
    Ok(respond(frames(live)))
}

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(super) struct EventsQuery {
    /// Resume after this event id (as the Last-Event-ID header, for clients that cannot set
    /// headers)
    last_event_id: Option<u64>,
}

/// Live events of one job; the stream ends after the job's final event
///
/// Each event has an `id` (resume with Last-Event-ID), an `event` (`progress` or `status`)
/// and `data`, a JobEvent as JSON. Progress comes at most every 100 ms.
#[utoipa::path(
    get,
    path = "/jobs/{id}/events",
    params(
        ("id" = String, Path, description = "The job's id", pattern = "^[0-9a-f]{24}$"),
        ("Last-Event-ID" = Option<u64>, Header, description = "Resume after this event id"),
        EventsQuery,
    ),
    responses(
        (status = 200, description = "A text/event-stream of job events", content_type = "text/event-stream", body = JobEvent),
        ReadErrors
    )
)]
pub(super) async fn job_events(
    State(st): State<AppState>,
    Caller(user): Caller,
    credential: Option<Extension<Credential>>,
    id: Result<Path<String>, PathRejection>,
    headers: HeaderMap,
    q: Result<Query<EventsQuery>, QueryRejection>,
) -> Result<Response, RestError> {
    let id = path(id)?;
    let after = resume_point(&headers, query(q)?.last_event_id)?;
    let recheck = recheck_for(&st, &user, credential)?;
    Ok(job_stream(&st.service, &user, &id, after, recheck).await?)
}

/// A stream's place among the user's (or 429) and what it needs to check them again.
fn recheck_for(
    st: &AppState,
    user: &UserInfo,
    credential: Option<Extension<Credential>>,
) -> Result<Recheck, ApiError> {
    Ok(Recheck {
        _slot: st.streams.take(user)?,
        service: st.service.clone(),
        credential: credential.map(|Extension(c)| c),
        due: tokio::time::Instant::now() + RECHECK,
    })
}

/// Live events of every job the caller may see
#[utoipa::path(
    get,
    path = "/events",
    params(
        ("Last-Event-ID" = Option<u64>, Header, description = "Resume after this event id"),
        EventsQuery,
    ),
    responses(
        (status = 200, description = "A text/event-stream of job events", content_type = "text/event-stream", body = JobEvent),
        ReadErrors
    )
)]
pub(super) async fn all_events(
    State(st): State<AppState>,
    Caller(user): Caller,
    credential: Option<Extension<Credential>>,
    headers: HeaderMap,
    q: Result<Query<EventsQuery>, QueryRejection>,
) -> Result<Response, RestError> {
    let after = resume_point(&headers, query(q)?.last_event_id)?;
    let recheck = recheck_for(&st, &user, credential)?;
    Ok(all_stream(&st.service, &user, after, recheck).await?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::{test_job as job, COALESCE};
    use app::model::JobStatus;

    fn live(hub: &Arc<EventHub>, filter: Filter) -> Live {
        let (_, last, rx) = hub.subscribe(None);
        Live {
            rx,
            recheck: None,
            closing: hub.closing(),
            hub: hub.clone(),
            filter,
            queue: Default::default(),
            last,
            done: false,
        }
    }

    #[tokio::test]
    async fn ready_events_go_out_together_and_a_job_stream_ends_with_its_final_event() {
        let hub = Arc::new(EventHub::new());
        let mut all = live(&hub, Filter::Projects(None));
        let mut one = live(&hub, Filter::Job("a".into()));
        hub.publish(EventKind::Status, job("a", JobStatus::Running));
        hub.publish(EventKind::Progress, job("b", JobStatus::Running));
        hub.publish(EventKind::Status, job("a", JobStatus::Succeeded));
        hub.publish(EventKind::Status, job("a", JobStatus::Succeeded));

        let Next::Frames(chunk) = all.next_batch().await else {
            panic!("frames expected");
        };
        let text = std::str::from_utf8(&chunk).unwrap();
        assert_eq!(text.matches("\n\n").count(), 4, "{text}");
        assert!(text.starts_with("id: ") && text.contains("event: progress\ndata: {"));

        let Next::Frames(chunk) = one.next_batch().await else {
            panic!("frames expected");
        };
        let text = std::str::from_utf8(&chunk).unwrap();
        assert_eq!(
            text.matches("\n\n").count(),
            2,
            "other jobs' events and anything after the end are left out: {text}"
        );
        assert!(matches!(one.next_batch().await, Next::End));
    }

    #[tokio::test]
    async fn streams_end_when_doppel_stops() {
        let hub = Arc::new(EventHub::new());
        let mut waiting = live(&hub, Filter::Projects(None));
        let closer = {
            let hub = hub.clone();
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(50)).await;
                hub.close();
            })
        };
        let t0 = std::time::Instant::now();
        assert!(matches!(waiting.next_batch().await, Next::End));
        assert!(
            t0.elapsed() < KEEP_ALIVE,
            "ended at once, not at the next keep-alive"
        );
        closer.await.unwrap();
        let mut later = live(&hub, Filter::Projects(None));
        assert!(matches!(later.next_batch().await, Next::End));
    }

    #[tokio::test(start_paused = true)]
    async fn events_go_out_together_a_window_after_the_first() {
        let hub = Arc::new(EventHub::new());
        let mut all = live(&hub, Filter::Projects(None));
        let count = |chunk: &Bytes| std::str::from_utf8(chunk).unwrap().matches("\n\n").count();
        // Two events 10 ms apart: one write, a window after the first.
        let t0 = tokio::time::Instant::now();
        let publisher = {
            let hub = hub.clone();
            tokio::spawn(async move {
                hub.publish(EventKind::Status, job("a", JobStatus::Running));
                tokio::time::sleep(Duration::from_millis(10)).await;
                hub.publish(EventKind::Progress, job("b", JobStatus::Running));
            })
        };
        let Next::Frames(first) = all.next_batch().await else {
            panic!("frames expected");
        };
        publisher.await.unwrap();
        assert_eq!(count(&first), 2, "the first event waited for the second");
        assert_eq!(t0.elapsed(), COALESCE);

        // A lone event later: it too goes a window after it was published.
        tokio::time::sleep(Duration::from_millis(100)).await;
        let t1 = tokio::time::Instant::now();
        hub.publish(EventKind::Progress, job("c", JobStatus::Running));
        let Next::Frames(second) = all.next_batch().await else {
            panic!("frames expected");
        };
        assert_eq!(count(&second), 1);
        assert_eq!(t1.elapsed(), COALESCE);
    }

    fn in_project(id: &str, project: &str) -> app::model::Job {
        let mut j = job(id, JobStatus::Running);
        j.project_id = project.into();
        j
    }

    fn event_ids(chunk: &Bytes) -> Vec<String> {
        std::str::from_utf8(chunk)
            .unwrap()
            .lines()
            .filter_map(|l| l.strip_prefix("data: "))
            .map(|d| serde_json::from_str::<JobEvent>(d).unwrap().job.id)
            .collect()
    }

    #[tokio::test]
    async fn a_stream_sends_only_its_projects_and_one_that_sees_all_shares_the_batch() {
        let hub = Arc::new(EventHub::new());
        hub.publish(EventKind::Status, in_project("before", "p1"));
        let mut admin = live(&hub, Filter::Projects(None));
        let mut member = live(&hub, Filter::Projects(Some(HashSet::from(["p1".into()]))));
        let mut everything = live(
            &hub,
            Filter::Projects(Some(HashSet::from(["p1".into(), "p2".into()]))),
        );
        for (id, project) in [("a", "p1"), ("b", "p2"), ("c", "p1")] {
            hub.publish(EventKind::Status, in_project(id, project));
        }
        let frames = |next| match next {
            Next::Frames(b) => b,
            _ => panic!("frames expected"),
        };
        let (a, m, e) = (
            frames(admin.next_batch().await),
            frames(member.next_batch().await),
            frames(everything.next_batch().await),
        );
        assert_eq!(
            event_ids(&a),
            ["a", "b", "c"],
            "nothing from before subscribing"
        );
        assert_eq!(event_ids(&m), ["a", "c"], "no event of another project");
        assert_eq!(event_ids(&e), ["a", "b", "c"]);
        assert_eq!(a.as_ptr(), e.as_ptr(), "one buffer shared, not copied");
    }

    #[test]
    fn a_published_frame_carries_exactly_its_events_json() {
        let hub = EventHub::new();
        let mut j = job("a\"b", JobStatus::Failed);
        j.error = Some("line one\nline \"two\"".into());
        j.summary = Some(app::model::JobSummary {
            files_added: 3,
            drift_paths: vec!["x\ny".into()],
            ..Default::default()
        });
        let p = hub.publish(EventKind::Status, j);
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
