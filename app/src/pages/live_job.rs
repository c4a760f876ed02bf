//! A job followed live over server-sent events: phase, a progress bar, bytes and files of
//! total, rate and ETA (announced politely to screen readers), then the summary.

use leptos::prelude::*;

use crate::format;
use crate::model::{Job, JobKind, JobStatus};
use crate::server_fns::CancelJob;

#[component]
pub fn LiveJob(job: Job) -> impl IntoView {
    let state = RwSignal::new(job.clone());
    // The stream ends with the job's final state.
    if !job.status.is_final() {
        follow(job.events_url.clone(), move |ev| {
            let done = ev.job.status.is_final();
            state.set(ev.job);
            !done
        });
    }
    let cancel = ServerAction::<CancelJob>::new();
    Effect::new(move |_| {
        if let Some(Ok(Ok(job))) = cancel.value().get() {
            state.set(job);
        }
    });
    let kind = job.kind;
    view! {
        <section class="card live-job" data-job-id=job.id.clone()>
            <h2>{move || format!("{} job: {}", kind.as_str(), state.with(|j| j.status.as_str()))}</h2>
            <div aria-live="polite" class="job-progress">
                {move || {
                    let j = state.get();
                    let p = j.progress.clone().unwrap_or_default();
                    let percent = match j.status {
                        JobStatus::Succeeded => 100.0,
                        _ => p.percent.unwrap_or(0.0),
                    };
                    let phase = if j.status == JobStatus::Succeeded {
                        "done".to_string()
                    } else if j.status.is_final() {
                        j.status.as_str().to_string()
                    } else {
                        j.phase.map_or_else(|| j.status.as_str(), |p| p.as_str()).to_string()
                    };
                    let waiting = j.waiting_for.clone().map(|w| view! { <p class="notice waiting" role="status">{w}</p> });
                    view! {
                        {waiting}
                        <p class="phase">"Phase: " <strong>{phase}</strong></p>
                        <progress max="100" value=format!("{percent:.0}") aria-label="Progress"></progress>
                        <span class="percent">{format!("{percent:.0} %")}</span>
                        {(!j.status.is_final()).then(|| view! {
                        <p class="muted">
                            {format!(
                                "{} of {} · {} of {} files",
                                format::bytes(p.bytes_done as i64),
                                p.bytes_total.map(|b| format::bytes(b as i64)).unwrap_or_else(|| "?".into()),
                                p.files_done,
                                p.files_total.map(|f| f.to_string()).unwrap_or_else(|| "?".into()),
                            )}
                            {p.bytes_per_second.map(|r| format!(" · {}/s", format::bytes(r as i64)))}
                            {p.eta_seconds.filter(|_| !j.status.is_final()).map(|s| format!(" · about {s:.0} s left"))}
                        </p>
                        })}
                    }
                }}
            </div>
            {move || {
                let j = state.get();
                match j.status {
                    JobStatus::Succeeded => view! { <JobSummary job=j/> }.into_any(),
                    JobStatus::Failed | JobStatus::Cancelled => view! {
                        <p class="error-box" role="alert">{j.error.clone().unwrap_or_default()}</p>
                    }
                    .into_any(),
                    _ => view! {
                        <ActionForm action=cancel>
                            <input type="hidden" name="id" value=j.id.clone()/>
                            <button type="submit">"Cancel"</button>
                        </ActionForm>
                    }
                    .into_any(),
                }
            }}
        </section>
    }
}

#[component]
fn JobSummary(job: Job) -> impl IntoView {
    if job.kind == JobKind::Delete {
        // Its page shows a container that is gone: on to the list.
        let navigate = leptos_router::hooks::use_navigate();
        Effect::new(move |_| navigate("/containers", Default::default()));
        return view! {
            <div class="job-summary">
                <p><strong>"Deleted."</strong> " " <a href="/containers">"Back to the containers"</a></p>
            </div>
        }
        .into_any();
    }
    let s = job.summary.clone().unwrap_or_default();
    if job.kind == JobKind::Convert {
        // What became of the tree and of each snapshot is in its notes.
        let took = match s.downtime_ms {
            Some(down) => format!(
                "took {:.1} s; it was stopped for {:.1} s of it, for the final pass",
                s.duration_ms as f64 / 1000.0,
                down as f64 / 1000.0
            ),
            None => format!("took {:.1} s", s.duration_ms as f64 / 1000.0),
        };
        return view! {
            <div class="job-summary">
                <p><strong>"Done."</strong></p>
                <ul>
                    {s.notes.into_iter().map(|note| view! { <li>{note}</li> }).collect_view()}
                    <li>{took}</li>
                </ul>
            </div>
        }
        .into_any();
    }
    let link = view! {
        <a href=format!("/containers/{}", job.container_id)>"Open the container"</a>
    };
    view! {
        <div class="job-summary">
            <p><strong>"Done."</strong> " " {link}</p>
            <ul>
                <li>{format!("{} added, {} changed, {} deleted, {} metadata only", s.files_added, s.files_changed, s.files_deleted, s.metadata_only)}</li>
                <li>{moved(&s)}</li>
                <li>{format!("drift found on the copy: {}", s.drift)}</li>
                <li>{format!("took {:.1} s", s.duration_ms as f64 / 1000.0)}</li>
            </ul>
        </div>
    }
    .into_any()
}

/// What a transfer moved, and how: sent through doppel's stream, laid down by the kernel
/// (shared extents or copy_file_range: a same-server copy sends next to nothing), taken
/// from trees the target's server had.
fn moved(s: &crate::model::JobSummary) -> String {
    let mut how = vec![format!("{} sent", format::bytes(s.bytes_sent as i64))];
    if s.kernel_bytes > 0 {
        how.push(format!(
            "{} laid down by the kernel",
            format::bytes(s.kernel_bytes as i64)
        ));
    }
    if s.local_bytes > 0 {
        how.push(format!(
            "{} taken from trees on its server",
            format::bytes(s.local_bytes as i64)
        ));
    }
    format!(
        "{} for a tree of {}",
        how.join(", "),
        format::bytes(s.tree_bytes as i64)
    )
}

/// Follows every job the user may see (`/api/v1/events`) while the calling component is
/// mounted, handing each event to `on_event`.
pub fn follow_all_jobs(on_event: impl Fn(crate::model::JobEvent) + 'static) {
    follow("/api/v1/events".into(), move |ev| {
        on_event(ev);
        true
    });
}

/// Reads the job events at `url` while the calling component is mounted and `on_event`
/// returns true. In the browser only (the server renders the state as loaded): EventSource
/// reconnects by itself and resumes with Last-Event-ID.
fn follow(url: String, on_event: impl Fn(crate::model::JobEvent) -> bool + 'static) {
    #[cfg(feature = "hydrate")]
    {
        use futures::StreamExt;
        let (abort, registration) = futures::future::AbortHandle::new_pair();
        let task = async move {
            let Ok(mut es) = gloo_net::eventsource::futures::EventSource::new(&url) else {
                return;
            };
            use crate::model::EventKind;
            let (Ok(progress), Ok(status)) = (
                es.subscribe(EventKind::Progress.as_str()),
                es.subscribe(EventKind::Status.as_str()),
            ) else {
                return;
            };
            let mut events = futures::stream::select(progress, status);
            while let Some(item) = events.next().await {
                let Ok((_, msg)) = item else { continue };
                let event = msg
                    .data()
                    .as_string()
                    .and_then(|t| serde_json::from_str::<crate::model::JobEvent>(&t).ok());
                if let Some(ev) = event {
                    if !on_event(ev) {
                        break;
                    }
                }
            }
        };
        leptos::task::spawn_local(async move {
            let _ = futures::future::Abortable::new(task, registration).await;
        });
        // Leaving the page drops the stream, which closes the connection.
        on_cleanup(move || abort.abort());
    }
    #[cfg(not(feature = "hydrate"))]
    let _ = (url, on_event);
}

/// A compact progress bar for a job in a table row.
#[component]
pub fn JobProgressBar(job: Job) -> impl IntoView {
    let p = job.progress.clone().unwrap_or_default();
    let percent = match job.status {
        JobStatus::Succeeded => 100.0,
        _ => p.percent.unwrap_or(0.0),
    };
    let phase = job
        .phase
        .map_or_else(|| job.status.as_str(), |p| p.as_str());
    let detail = match (p.bytes_total, p.bytes_per_second) {
        (Some(total), rate) => format!(
            "{} of {}{}",
            format::bytes(p.bytes_done as i64),
            format::bytes(total as i64),
            rate.map(|r| format!(" · {}/s", format::bytes(r as i64)))
                .unwrap_or_default()
        ),
        _ => String::new(),
    };
    view! {
        <div class="row-progress">
            <span class="phase">{phase}</span>
            <progress max="100" value=format!("{percent:.0}") aria-label="Progress"></progress>
            <span class="percent">{format!("{percent:.0} %")}</span>
            <span class="muted small">{detail}</span>
        </div>
    }
}

/// A function that reloads a page's data (bumps `version`) soon, at most twice a second
/// however often it is called: a burst of job events reloads the page once, not once per
/// event.
pub fn reloader(version: RwSignal<u32>) -> impl Fn() + Copy + 'static {
    let pending = StoredValue::new(false);
    move || {
        if pending.get_value() {
            return;
        }
        pending.set_value(true);
        #[cfg(feature = "hydrate")]
        set_timeout(
            move || {
                pending.set_value(false);
                version.update(|v| *v += 1);
            },
            std::time::Duration::from_millis(500),
        );
        #[cfg(not(feature = "hydrate"))]
        let _ = version;
    }
}

#[cfg(test)]
mod tests {
    use super::moved;
    use crate::model::JobSummary;

    #[test]
    fn what_a_transfer_moved_counts_the_kernel_and_local_trees_too() {
        let s = JobSummary {
            bytes_sent: 2048,
            kernel_bytes: 5 << 20,
            tree_bytes: 6 << 20,
            ..Default::default()
        };
        let text = moved(&s);
        assert!(
            text.starts_with("2.0 KiB sent, 5.0 MiB laid down by the kernel"),
            "{text}"
        );
        assert!(text.ends_with("for a tree of 6.0 MiB"), "{text}");
        let streamed = JobSummary {
            bytes_sent: 2048,
            tree_bytes: 2048,
            ..Default::default()
        };
        assert_eq!(moved(&streamed), "2.0 KiB sent for a tree of 2.0 KiB");
    }
}
