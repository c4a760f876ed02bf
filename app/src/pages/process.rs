//! A container's process on its page: what runs, since when, where it answers (and the
//! Open link through doppel), start / stop / restart, and the last lines of its output.

use leptos::prelude::*;

use super::live_job::LiveJob;
use super::widgets::ErrorBox;
use crate::format;
use crate::model::{ContainerDetail, ContainerStatus};
use crate::server_fns::{get_container_logs, ContainerAction, DeleteContainer};

#[component]
pub fn ProcessCard(c: ContainerDetail, action: ServerAction<ContainerAction>) -> impl IntoView {
    let id = c.summary.id.clone();
    let status = c.summary.status;
    let running = status == ContainerStatus::Running;
    let busy = matches!(status, ContainerStatus::Copying | ContainerStatus::Syncing);
    let command = if c.command.args.is_empty() {
        view! { <span class="muted">"none: this container has nothing to run"</span> }.into_any()
    } else {
        view! { <code class="command">{c.command.args.join(" ")}</code> }.into_any()
    };
    let since = match (running, c.started_at, c.stopped_at) {
        (true, Some(t), _) => {
            Some(view! { <dt>"Running since"</dt> <dd>{format::utc(t)}</dd> }.into_any())
        }
        (false, _, Some(t)) => Some(
            view! {
                <dt>"Stopped"</dt>
                <dd>
                    {format::utc(t)}
                    {c.exit_code.map(|code| format!(" (exit code {code})"))}
                </dd>
            }
            .into_any(),
        ),
        _ => None,
    };
    let addresses = (!c.interfaces.is_empty()).then(|| {
        let list = c
            .interfaces
            .iter()
            .map(|i| format!("{} {} on {}", i.interface, i.ipv4, i.network))
            .collect::<Vec<_>>()
            .join(", ");
        view! { <dt>"Address"</dt> <dd class="address">{list}</dd> }
    });
    let open = (running && !c.interfaces.is_empty()).then(|| {
        view! {
            <a class="button" href=format!("/containers/{id}/open/") target="_blank" rel="noopener">
                "Open"
            </a>
        }
    });
    let button = |verb: &'static str, label: &'static str, enabled: bool| {
        let id = id.clone();
        view! {
            <ActionForm action=action attr:class="inline-form">
                <input type="hidden" name="id" value=id/>
                <input type="hidden" name="action" value=verb/>
                <button type="submit" disabled=move || !enabled || action.pending().get()>{label}</button>
            </ActionForm>
        }
    };
    let logs_id = id.clone();
    let logs = Resource::new(
        move || action.version().get(),
        move |_| get_container_logs(logs_id.clone()),
    );
    view! {
        <section class="card process-card">
            <h2>"Process"</h2>
            <dl class="details">
                <dt>"Command"</dt>
                <dd>{command}</dd>
                {since}
                {addresses}
            </dl>
            <div class="actions">
                {open}
                {button("start", "Start", !running && !busy)}
                {button("stop", "Stop", running)}
                {button("restart", "Restart", !busy)}
            </div>
            {move || match action.value().get().map(Result::flatten) {
                Some(Err(error)) => view! { <ErrorBox error/> }.into_any(),
                _ => ().into_any(),
            }}
            <details class="logs">
                <summary>"Output (last lines)"</summary>
                <Suspense fallback=|| ()>
                    {move || Suspend::new(async move {
                        match logs.await {
                            Ok(l) if l.lines.is_empty() => view! { <p class="muted">"No output yet."</p> }.into_any(),
                            Ok(l) => view! { <pre class="log">{l.lines.join("\n")}</pre> }.into_any(),
                            Err(error) => view! { <ErrorBox error/> }.into_any(),
                        }
                    })}
                </Suspense>
            </details>
        </section>
    }
}

/// Deleting the container, once its name is typed again; the delete's job followed live.
#[component]
pub fn DeleteCard(id: String, name: String) -> impl IntoView {
    let action = ServerAction::<DeleteContainer>::new();
    view! {
        <section class="card danger-zone">
            <details>
                <summary>"Delete this container…"</summary>
                <p class="muted">
                    "Stops it and removes its files, snapshots and network. Its copies stay; they can no longer be synced."
                </p>
                <ActionForm action=action attr:class="inline-form">
                    <input type="hidden" name="id" value=id/>
                    <label for="delete-confirm">{format!("Type {name} to confirm")}</label>
                    <input id="delete-confirm" name="confirm" autocomplete="off"/>
                    <button type="submit" class="danger" disabled=move || action.pending().get()>"Delete"</button>
                </ActionForm>
                {move || match action.value().get().map(Result::flatten) {
                    // (Once done, the job's summary goes on to the list.)
                    Some(Ok(job)) => view! { <LiveJob job/> }.into_any(),
                    Some(Err(error)) => view! { <ErrorBox error/> }.into_any(),
                    None => ().into_any(),
                }}
            </details>
        </section>
    }
}
