//! Running and recent jobs, filterable by kind and status, with live progress.

use std::collections::HashMap;

use leptos::prelude::*;
use leptos_meta::Title;
use leptos_router::{components::Form, hooks::use_query_map};

use super::live_job::{follow_all_jobs, reloader, JobProgressBar};
use super::widgets::{Loading, PageError};
use crate::format;
use crate::model::{EventKind, Job, JobKind, JobStatus, JOBS_PAGE};
use crate::server_fns::{list_containers, list_jobs};

#[component]
pub fn JobsPage() -> impl IntoView {
    let query = use_query_map();
    let filter = move || {
        query.with(|q| {
            (
                q.get("kind").filter(|k| !k.is_empty()),
                q.get("status").filter(|s| !s.is_empty()),
            )
        })
    };
    // `?before=ID`: the page of jobs older than that one.
    let before = move || query.with(|q| q.get("before").filter(|b| !b.is_empty()));
    // Bumped when a job starts or ends: the list is loaded again.
    let version = RwSignal::new(0u32);
    let jobs = Resource::new(
        move || (filter(), before(), version.get()),
        |((kind, status), before, _)| list_jobs(kind, status, before),
    );
    // Links to the next page (older jobs) and back to the newest, keeping the filter.
    let page_link = move |before: Option<&str>| {
        let (kind, status) = filter();
        let mut href = format!(
            "?kind={}&status={}",
            kind.unwrap_or_default(),
            status.unwrap_or_default()
        );
        if let Some(b) = before {
            href.push_str(&format!("&before={b}"));
        }
        href
    };
    // Names for the containers jobs refer to (jobs carry ids only).
    let containers = Resource::new(|| (), |_| list_containers(None));
    let live: RwSignal<HashMap<String, Job>> = RwSignal::new(HashMap::new());
    let reload = reloader(version);
    follow_all_jobs(move |ev| {
        if ev.kind == EventKind::Status {
            reload();
        }
        live.update(|m| {
            m.insert(ev.job.id.clone(), ev.job);
        });
    });
    let selected = move |name: &'static str, value: &'static str| {
        move || {
            let (kind, status) = filter();
            let current = if name == "kind" { kind } else { status };
            current.as_deref().unwrap_or("") == value
        }
    };
    view! {
        <Title text="Jobs · doppel"/>
        <div class="page-head">
            <h1>"Jobs"</h1>
            <div class="filters">
            <Form method="GET" action="">
                <label for="kind">"Kind"</label>
                <select id="kind" name="kind">
                    <option value="" selected=selected("kind", "")>"any"</option>
                    {JobKind::ALL
                        .into_iter()
                        .map(|k| view! { <option value=k.as_str() selected=selected("kind", k.as_str())>{k.as_str()}</option> })
                        .collect_view()}
                </select>
                <label for="status">"Status"</label>
                <select id="status" name="status">
                    <option value="" selected=selected("status", "")>"any"</option>
                    {JobStatus::ALL
                        .into_iter()
                        .map(|s| view! { <option value=s.as_str() selected=selected("status", s.as_str())>{s.as_str()}</option> })
                        .collect_view()}
                </select>
                <button type="submit">"Filter"</button>
            </Form>
            </div>
        </div>
        <Transition fallback=Loading>
            {move || Suspend::new(async move {
                let names: HashMap<String, String> = containers
                    .await
                    .unwrap_or_default()
                    .into_iter()
                    .map(|c| (c.id, c.name))
                    .collect();
                match jobs.await {
                    Ok(list) => {
                        // A full page may have older jobs after it.
                        let older = (list.len() >= JOBS_PAGE as usize)
                            .then(|| list.last().map(|j| page_link(Some(&j.id))))
                            .flatten()
                            .map(|href| view! { <a href=href rel="next">"Older jobs"</a> });
                        let newest = before().map(|_| {
                            view! { <a href=page_link(None)>"Newest jobs"</a> " " }
                        });
                        view! {
                            <JobTable list live names/>
                            <p class="pager">{newest}{older}</p>
                        }
                        .into_any()
                    }
                    Err(error) => view! { <PageError error/> }.into_any(),
                }
            })}
        </Transition>
    }
}

#[component]
fn JobTable(
    list: Vec<Job>,
    live: RwSignal<HashMap<String, Job>>,
    names: HashMap<String, String>,
) -> impl IntoView {
    // A container the list loaded with the page names itself; one made since (a copy that
    // arrived live) or deleted since is named by the end of its id, still linked.
    let name = move |id: &str| {
        names.get(id).cloned().unwrap_or_else(|| {
            let tail = &id[id.len().saturating_sub(6)..];
            format!("container …{tail}")
        })
    };
    if list.is_empty() {
        return view! { <p class="empty">"No jobs match."</p> }.into_any();
    }
    view! {
        <table class="grid jobs">
            <thead>
                <tr>
                    <th scope="col">"Job"</th>
                    <th scope="col">"Container"</th>
                    <th scope="col">"Status"</th>
                    <th scope="col">"Progress or result"</th>
                    <th scope="col">"Started"</th>
                </tr>
            </thead>
            <tbody>
                {list
                    .into_iter()
                    .map(|job| {
                        let id = job.id.clone();
                        let loaded = job.clone();
                        // The live version of the job once an event arrived, else as loaded.
                        let current = move || {
                            live.with(|m| m.get(&id).cloned()).unwrap_or_else(|| loaded.clone())
                        };
                        let status_of = current.clone();
                        let progress_of = current.clone();
                        view! {
                            <tr data-job-id=job.id.clone()>
                                <td data-label="Job">
                                    {job.kind.as_str()} " "
                                    <a href=job.url.clone() class="muted small mono">{job.id.clone()}</a>
                                </td>
                                <td data-label="Container">
                                    <a href=format!("/containers/{}", job.container_id)>{name(&job.container_id)}</a>
                                    <span class="muted small">
                                        " from "
                                        <a href=format!("/containers/{}", job.source_container_id)>{name(&job.source_container_id)}</a>
                                    </span>
                                </td>
                                <td data-label="Status">
                                    {move || {
                                        let s = status_of().status;
                                        view! { <span class=format!("badge job-{}", s.as_str())>{s.as_str()}</span> }
                                    }}
                                </td>
                                <td data-label="Progress or result">
                                    {move || {
                                        let j = progress_of();
                                        match j.status {
                                            JobStatus::Queued | JobStatus::Running => view! { <JobProgressBar job=j/> }.into_any(),
                                            JobStatus::Succeeded => view! { <span class="small">{outcome(&j)}</span> }.into_any(),
                                            _ => view! { <span class="row-error">{j.error.clone().unwrap_or_default()}</span> }.into_any(),
                                        }
                                    }}
                                </td>
                                <td data-label="Started">
                                    <time>{format::utc(job.started_at.unwrap_or(job.created_at))}</time>
                                </td>
                            </tr>
                        }
                    })
                    .collect_view()}
            </tbody>
        </table>
    }
    .into_any()
}

/// "+3 ~12 -1 · 1.2 MiB sent in 2.1 s" from a finished job's summary.
fn outcome(j: &Job) -> String {
    let s = j.summary.clone().unwrap_or_default();
    if j.kind == JobKind::Convert {
        // (Nothing moved between containers: its notes say what became of each tree.)
        return format!(
            "made an image tree in {} ({} notes)",
            format::duration(s.duration_ms),
            s.notes.len()
        );
    }
    let kernel = match s.kernel_bytes {
        0 => String::new(),
        k => format!(" (+{} by the kernel)", format::bytes(k as i64)),
    };
    format!(
        "+{} ~{} -{} · {} sent{kernel} in {}",
        s.files_added,
        s.files_changed,
        s.files_deleted,
        format::bytes(s.bytes_sent as i64),
        format::duration(s.duration_ms),
    )
}
