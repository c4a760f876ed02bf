//! Sync status, for team leads: every copy the user can see, whether it is current with its
//! source, stale or failing, its last sync and recent history, with "Sync now" per row and
//! for a selection. Rows follow jobs live over server-sent events.

use std::collections::{HashMap, HashSet};

use leptos::prelude::*;
use leptos_meta::Title;
use leptos_router::{components::Form, hooks::use_query_map};

use super::live_job::{follow_all_jobs, reloader, JobProgressBar};
use super::widgets::{Loading, PageError, StatusBadge};
use crate::format;
use crate::model::{CopyStatus, EventKind, Freshness, Job, JobStatus, Millis, SyncRun};
use crate::server_fns::{sync_container, sync_status, SyncContainer};

/// The page's view settings, from the query string (`?show=stale&project=ID&sort=failures`),
/// so a filtered view is a link a team lead can share, and works before hydration.
#[derive(Clone, Debug, PartialEq)]
struct View {
    show: String,
    project: String,
    sort: String,
}

impl View {
    fn keeps(&self, c: &CopyStatus) -> bool {
        let shown = match self.show.as_str() {
            "stale" => c.freshness == Freshness::Stale,
            "failing" => c.failing(),
            "current" => c.freshness == Freshness::Current && !c.failing(),
            "source_missing" => c.freshness == Freshness::SourceMissing,
            "incomplete" => c.freshness == Freshness::Incomplete,
            "copying" => c.freshness == Freshness::Copying,
            _ => true,
        };
        shown && (self.project.is_empty() || c.copy.project_id == self.project)
    }

    fn sort(&self, list: &mut [CopyStatus]) {
        match self.sort.as_str() {
            // Least recently synced first: what needs attention.
            "last_sync" => list.sort_by_key(|c| c.last_synced_at.unwrap_or(0)),
            "failures" => list.sort_by_key(|c| std::cmp::Reverse(c.failures_in_row)),
            "bytes" => list.sort_by_key(|c| {
                std::cmp::Reverse(c.last_run.as_ref().and_then(|r| r.bytes_sent).unwrap_or(0))
            }),
            _ => list.sort_by(|a, b| {
                (&a.copy.project_name, &a.copy.name).cmp(&(&b.copy.project_name, &b.copy.name))
            }),
        }
    }
}

#[component]
pub fn SyncStatusPage() -> impl IntoView {
    let query = use_query_map();
    let view_settings = Memo::new(move |_| {
        query.with(|q| View {
            show: q.get("show").unwrap_or_default(),
            project: q.get("project").unwrap_or_default(),
            sort: q.get("sort").unwrap_or_default(),
        })
    });
    // Bumped when a job starts or ends: the rows are loaded again.
    let version = RwSignal::new(0u32);
    let status = Resource::new(move || version.get(), |_| sync_status());
    // Live progress of running jobs, by the copy they work on.
    let live: RwSignal<HashMap<String, Job>> = RwSignal::new(HashMap::new());
    let reload = reloader(version);
    follow_all_jobs(move |ev| {
        let job = ev.job;
        if ev.kind == EventKind::Status {
            live.update(|m| {
                m.remove(&job.container_id);
            });
            reload();
        } else {
            live.update(|m| {
                m.insert(job.container_id.clone(), job);
            });
        }
    });

    // Kept outside the rows, which are rebuilt whenever the list is loaded again.
    let selected: RwSignal<HashSet<String>> = RwSignal::new(HashSet::new());

    view! {
        <Title text="Sync status · doppel"/>
        <div class="page-head">
            <h1>"Sync status"</h1>
            <SyncSelected selected/>
        </div>
        <Transition fallback=Loading>
            {move || Suspend::new(async move {
                match status.await {
                    Ok((now, list)) => view! { <StatusView now list view=view_settings live selected/> }.into_any(),
                    Err(error) => view! { <PageError error/> }.into_any(),
                }
            })}
        </Transition>
    }
}

#[component]
fn StatusView(
    now: Millis,
    list: Vec<CopyStatus>,
    view: Memo<View>,
    live: RwSignal<HashMap<String, Job>>,
    selected: RwSignal<HashSet<String>>,
) -> impl IntoView {
    // Each copy in one tally of its freshness (failing counts apart: a copy can be both).
    let of = |f: Freshness| list.iter().filter(|c| c.freshness == f).count();
    let counts = (
        list.len(),
        list.iter()
            .filter(|c| c.freshness == Freshness::Current && !c.failing())
            .count(),
        of(Freshness::Stale),
        list.iter().filter(|c| c.failing()).count(),
    );
    let (missing, incomplete, copying) = (
        of(Freshness::SourceMissing),
        of(Freshness::Incomplete),
        of(Freshness::Copying),
    );
    let mut projects: Vec<(String, String)> = list
        .iter()
        .map(|c| (c.copy.project_id.clone(), c.copy.project_name.clone()))
        .collect::<HashMap<_, _>>()
        .into_iter()
        .collect();
    projects.sort_by(|a, b| a.1.cmp(&b.1));
    let rows = move || {
        let v = view.get();
        let mut shown: Vec<CopyStatus> = list.iter().filter(|c| v.keeps(c)).cloned().collect();
        v.sort(&mut shown);
        shown
    };
    let (total, current, stale, failing) = counts;
    view! {
        <p class="overview" aria-label="Overview">
            <a href="?show=" class="tally">{total} " copies"</a>
            <a href="?show=current" class="tally good">{current} " current"</a>
            <a href="?show=stale" class="tally warn">{stale} " stale"</a>
            <a href="?show=failing" class="tally bad">{failing} " failing"</a>
            {(missing > 0).then(|| view! {
                <a href="?show=source_missing" class="tally bad">{missing} " source missing"</a>
            })}
            {(incomplete > 0).then(|| view! {
                <a href="?show=incomplete" class="tally bad">{incomplete} " never completed"</a>
            })}
            {(copying > 0).then(|| view! {
                <a href="?show=copying" class="tally">{copying} " being copied"</a>
            })}
        </p>
        <div class="filters">
        <Form method="GET" action="">
            <label for="show">"Show"</label>
            <select id="show" name="show">
                {[("", "all copies"), ("stale", "stale"), ("failing", "failing"), ("current", "current"), ("source_missing", "source missing"), ("incomplete", "never completed"), ("copying", "being copied")]
                    .into_iter()
                    .map(|(value, label)| {
                        view! { <option value=value selected=move || view.get().show == value>{label}</option> }
                    })
                    .collect_view()}
            </select>
            <label for="project">"Project"</label>
            <select id="project" name="project">
                <option value="" selected=move || view.get().project.is_empty()>"All projects"</option>
                {projects
                    .into_iter()
                    .map(|(id, name)| {
                        let is = id.clone();
                        view! { <option value=id selected=move || view.get().project == is>{name}</option> }
                    })
                    .collect_view()}
            </select>
            <label for="sort">"Sort by"</label>
            <select id="sort" name="sort">
                {[("", "name"), ("last_sync", "least recently synced"), ("failures", "failures in a row"), ("bytes", "bytes sent")]
                    .into_iter()
                    .map(|(value, label)| {
                        view! { <option value=value selected=move || view.get().sort == value>{label}</option> }
                    })
                    .collect_view()}
            </select>
            <button type="submit">"Apply"</button>
        </Form>
        </div>
        {move || {
            let rows = rows();
            if rows.is_empty() {
                return view! { <p class="empty">"No copies match."</p> }.into_any();
            }
            view! {
                <table class="grid sync-status">
                    <thead>
                        <tr>
                            <th scope="col"><span class="visually-hidden">"Select"</span></th>
                            <th scope="col">"Copy"</th>
                            <th scope="col">"Source"</th>
                            <th scope="col">"State"</th>
                            <th scope="col" title="When the copy last matched its source: its copy, or its last successful sync">"Matched source"</th>
                            <th scope="col" title="The latest copy or sync of it, successful or not">"Last run"</th>
                            <th scope="col">"Recent syncs"</th>
                            <th scope="col"><span class="visually-hidden">"Actions"</span></th>
                        </tr>
                    </thead>
                    <tbody>
                        {rows
                            .into_iter()
                            .map(|c| view! { <CopyRow c now live selected/> })
                            .collect_view()}
                    </tbody>
                </table>
            }
            .into_any()
        }}
    }
}

/// "Sync selected": starts a sync of every ticked copy and says how each went.
#[component]
fn SyncSelected(selected: RwSignal<HashSet<String>>) -> impl IntoView {
    let outcome = RwSignal::new(Vec::<String>::new());
    let start = Action::new(move |ids: &Vec<String>| {
        let ids = ids.clone();
        async move {
            let mut lines = Vec::new();
            for id in ids {
                lines.push(match sync_container(id.clone()).await {
                    Ok(Ok(job)) => format!("sync {} started", job.id),
                    Ok(Err(e)) | Err(e) => e.message,
                });
            }
            outcome.set(lines);
        }
    });
    let count = move || selected.with(|s| s.len());
    view! {
        <div class="bulk">
            <button
                type="button"
                disabled=move || count() == 0 || start.pending().get()
                on:click=move |_| {
                    let mut ids: Vec<String> = selected.get_untracked().into_iter().collect();
                    ids.sort();
                    selected.set(HashSet::new());
                    start.dispatch(ids);
                }
            >
                {move || format!("Sync selected ({})", count())}
            </button>
            <ul class="bulk-outcome" aria-live="polite">
                {move || outcome.get().into_iter().map(|l| view! { <li>{l}</li> }).collect_view()}
            </ul>
        </div>
    }
}

#[component]
fn CopyRow(
    c: CopyStatus,
    now: Millis,
    live: RwSignal<HashMap<String, Job>>,
    selected: RwSignal<HashSet<String>>,
) -> impl IntoView {
    let id = c.copy.id.clone();
    let source = match &c.copy.source {
        Some(src) => view! {
            <a href=format!("/containers/{}", src.id)>{src.name.clone()}</a>
            <span class="muted small">" in " {src.project_name.clone()}</span>
        }
        .into_any(),
        None if c.freshness == Freshness::SourceMissing => {
            view! { <span class="muted">"deleted"</span> }.into_any()
        }
        None => view! { <span class="muted">"not visible to you"</span> }.into_any(),
    };
    let state_class = if c.failing() {
        "badge sync-failing"
    } else {
        match c.freshness {
            Freshness::Current => "badge sync-current",
            Freshness::Stale => "badge sync-stale",
            Freshness::SourceMissing | Freshness::Incomplete => "badge sync-failing",
            Freshness::Copying => "badge",
        }
    };
    let state_text = c.freshness.label();
    // Stale because its source could not be checked: why.
    let unchecked = c.source_error.clone().map(|e| {
        view! {
            <p class="row-error" role="note">{format!("the source could not be checked: {e}")}</p>
        }
    });
    let failing = c.failing().then(|| {
        let n = c.failures_in_row;
        view! {
            <span class="badge sync-failing">
                {format!("failing ({n} in a row)")}
            </span>
        }
    });
    let started = c.running_job.clone();
    let row_id = id.clone();
    let running = move || {
        live.with(|m| m.get(&row_id).cloned())
            .or_else(|| started.clone())
            .map(|job| view! { <JobProgressBar job/> })
    };
    let last_sync = match c.last_synced_at {
        Some(t) => view! {
            <time title=format::utc(t)>{format::ago(now, t)}</time>
            <span class="muted small">{format::utc(t)}</span>
        }
        .into_any(),
        None => view! { <span class="muted">"never"</span> }.into_any(),
    };
    // The latest run with its own time: beside "Matched source" (the last success), a
    // failure after it would otherwise read as that success's result.
    let result = c.last_run.clone().map(|r| {
        let status = r.status;
        view! {
            <span class=format!("badge job-{}", status.as_str())>{status.as_str()}</span>
            " "
            <time class="small" title=format::utc(r.finished_at)>{format::ago(now, r.finished_at)}</time>
            <span class="small">
                {r.duration_ms.map(|d| format!(" in {}", format::duration(d)))}
                {r.bytes_sent.map(|b| format!(" · {} sent", format::bytes(b as i64)))}
                {format!(" of {}", format::bytes(c.size_bytes))}
            </span>
        }
    });
    let error = c
        .last_error
        .clone()
        .map(|e| view! { <p class="row-error" role="note">{e}</p> });
    let check_id = id.clone();
    let toggle_id = id.clone();
    let href = format!("/containers/{id}");
    let form_id = id.clone();
    let sync = ServerAction::<SyncContainer>::new();
    let sync_msg = move || match sync.value().get() {
        Some(Ok(Ok(_))) => Some("started".to_string()),
        Some(Ok(Err(e))) | Some(Err(e)) => Some(e.message),
        None => None,
    };
    let may_sync = c.may_sync;
    let incomplete_copy = c.freshness == Freshness::Incomplete;
    let being_copied = c.freshness == Freshness::Copying;
    view! {
        <tr
            data-container-id=id
            data-freshness=state_text
            data-failing=c.failing().to_string()
        >
            <td>
                <input
                    type="checkbox"
                    disabled=!may_sync
                    aria-label=format!("Select {}", c.copy.name)
                    prop:checked=move || selected.with(|s| s.contains(&check_id))
                    on:change=move |_| {
                        let id = toggle_id.clone();
                        selected.update(|s| {
                            if !s.remove(&id) {
                                s.insert(id);
                            }
                        })
                    }
                />
            </td>
            <td data-label="Copy">
                <a href=href>{c.copy.name.clone()}</a>
                <span class="muted small">
                    {format!(" {} · {}", c.copy.project_name, c.copy.server_name)}
                </span>
                " "
                <StatusBadge status=c.copy.status/>
            </td>
            <td data-label="Source">{source}</td>
            <td data-label="State">
                <span class=state_class>{state_text}</span>
                {failing}
                {running}
                {unchecked}
            </td>
            <td data-label="Matched source">{last_sync}</td>
            <td data-label="Last run">{result}{error}</td>
            <td data-label="Recent syncs"><HistoryChart runs=c.history.clone()/></td>
            <td>
                <ActionForm action=sync>
                    <input type="hidden" name="id" value=form_id/>
                    <button
                        type="submit"
                        disabled=move || !may_sync || sync.pending().get()
                        title=(!may_sync).then_some(if incomplete_copy {
                            "It never completed: there is nothing to sync into; make a new copy"
                        } else if being_copied {
                            "It is still being copied"
                        } else {
                            "Syncing it needs operator or admin in its project and its source's"
                        })
                    >
                        "Sync now"
                    </button>
                </ActionForm>
                <span class="small" aria-live="polite">{sync_msg}</span>
            </td>
        </tr>
    }
}

/// Recent runs as a small SVG: a bar per run for the bytes it sent (red when it failed),
/// and a dot for how long each took. Each bar has a tooltip with the figures.
#[component]
fn HistoryChart(runs: Vec<SyncRun>) -> impl IntoView {
    if runs.is_empty() {
        return view! { <span class="muted small">"no runs yet"</span> }.into_any();
    }
    const W: f64 = 132.0;
    const H: f64 = 36.0;
    let slot = W / 12.0;
    let max_bytes = runs
        .iter()
        .filter_map(|r| r.bytes_sent)
        .max()
        .unwrap_or(0)
        .max(1) as f64;
    let max_ms = runs
        .iter()
        .filter_map(|r| r.duration_ms)
        .max()
        .unwrap_or(0)
        .max(1) as f64;
    let bars = runs
        .iter()
        .enumerate()
        .map(|(i, r)| {
            let x = i as f64 * slot + 1.0;
            let h = match (r.status, r.bytes_sent) {
                (JobStatus::Succeeded, Some(b)) => (b as f64 / max_bytes * (H - 4.0)).max(2.0),
                _ => H - 4.0,
            };
            let class = format!("bar run-{}", r.status.as_str());
            let tip = format!(
                "{} {} {}: {} sent in {}",
                format::utc(r.finished_at),
                r.kind.as_str(),
                r.status.as_str(),
                format::bytes(r.bytes_sent.unwrap_or(0) as i64),
                format::duration(r.duration_ms.unwrap_or(0)),
            );
            view! {
                <rect class=class x=format!("{x:.1}") y=format!("{:.1}", H - h) width=format!("{:.1}", slot - 2.0) height=format!("{h:.1}")>
                    <title>{tip}</title>
                </rect>
            }
        })
        .collect_view();
    let dots = runs
        .iter()
        .enumerate()
        .filter_map(|(i, r)| {
            let ms = r.duration_ms?;
            let x = i as f64 * slot + slot / 2.0;
            let y = H - 3.0 - ms as f64 / max_ms * (H - 6.0);
            Some(view! { <circle class="duration" cx=format!("{x:.1}") cy=format!("{y:.1}") r="1.8"/> })
        })
        .collect_view();
    let failed = runs
        .iter()
        .filter(|r| r.status == JobStatus::Failed)
        .count();
    let label = format!(
        "{} recent runs, {failed} failed; bars: bytes sent, dots: duration",
        runs.len()
    );
    view! {
        <svg class="history" role="img" aria-label=label width=W height=H viewBox=format!("0 0 {W} {H}")>
            {bars}
            {dots}
        </svg>
    }
    .into_any()
}
