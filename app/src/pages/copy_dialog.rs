//! "Copy container": a modal dialog with every field of the copy contract (and the same
//! form as a page of its own, for browsers without JavaScript or before hydration). It
//! submits through a server function; the server's errors appear next to their field; once
//! accepted, the job is followed live.

use leptos::html::Dialog;
use leptos::prelude::*;

use super::live_job::LiveJob;
use super::widgets::{ErrorBox, PageError};
use crate::model::{
    default_copy_name, validate_container_name, ContainerDetail, Role, ServerState,
};
use crate::server_fns::{list_projects, list_servers, CopyContainer, SyncContainer};

/// The form's fields that show their own errors; an error about anything else shows above
/// the buttons.
const FIELDS: [&str; 5] = [
    "name",
    "ssh_public_key",
    "source_snapshot",
    "target_server_id",
    "target_project_id",
];

/// What the copy form shows when it is drawn again after a plain (no-JavaScript) post was
/// refused: the values as sent, and the server's error. Read from the query string.
#[derive(Clone, Debug, Default)]
pub struct Prefill {
    pub project: String,
    pub server: String,
    pub name: String,
    pub key: String,
    pub snapshot: String,
    pub firewall: bool,
    pub network: bool,
    /// The server's error, and the field it is about (empty: none in particular).
    pub error: Option<(String, String)>,
}

impl Prefill {
    pub fn from_query(q: &leptos_router::params::ParamsMap) -> Prefill {
        let get = |k: &str| q.get(k).unwrap_or_default();
        Prefill {
            project: get("target_project_id"),
            server: get("target_server_id"),
            name: get("name"),
            key: get("ssh_public_key"),
            snapshot: get("source_snapshot"),
            firewall: q.get("copy_firewall_rules").is_some(),
            network: q.get("copy_network_rules").is_some(),
            error: q
                .get("error")
                .filter(|e| !e.is_empty())
                .map(|e| (get("error_field"), crate::model::humane_message(&e))),
        }
    }
}

/// "Copy container": a link to the copy page, which the browser follows before the page is
/// hydrated; once hydrated, it opens the same form in a modal dialog instead.
#[component]
pub fn CopyDialog(c: ContainerDetail) -> impl IntoView {
    let dialog = NodeRef::<Dialog>::new();
    let action = ServerAction::<CopyContainer>::new();
    // Leaving the page closes the dialog (it is modal: it would block the next page).
    on_cleanup(move || {
        if let Some(d) = dialog.get_untracked() {
            d.close();
        }
    });
    let close = move || {
        if let Some(d) = dialog.get() {
            d.close();
        }
    };
    view! {
        <a
            href=format!("/containers/{}/copy", c.summary.id)
            class="button primary"
            role="button"
            on:click=move |ev| {
                if let Some(d) = dialog.get() {
                    ev.prevent_default();
                    // A new copy each time it opens: the last one's job is not shown again.
                    action.value().set(None);
                    let _ = d.show_modal();
                }
            }
        >
            "Copy container"
        </a>
        <dialog node_ref=dialog class="dialog" aria-labelledby="copy-title">
            <h2 id="copy-title">"Copy " {c.summary.name.clone()}</h2>
            <CopyForm c action prefill=Prefill::default() close=Some(Callback::new(move |_| close()))/>
        </dialog>
    }
}

/// The copy form on a page of its own: what "Copy container" opens before hydration, and
/// where a refused plain form post comes back to, with its values and the error.
#[component]
pub fn CopyPage() -> impl IntoView {
    let params = leptos_router::hooks::use_params_map();
    let query = leptos_router::hooks::use_query_map();
    let id = move || params.with(|p| p.get("id").unwrap_or_default());
    let container = Resource::new(id, crate::server_fns::get_container);
    view! {
        <Suspense fallback=super::widgets::Loading>
            {move || Suspend::new(async move {
                match container.await {
                    Ok(c) => {
                        let prefill = query.with_untracked(Prefill::from_query);
                        let action = ServerAction::<CopyContainer>::new();
                        view! {
                            <leptos_meta::Title text=format!("Copy {} · doppel", c.summary.name)/>
                            <div class="page-head">
                                <h1>"Copy " {c.summary.name.clone()}</h1>
                            </div>
                            <section class="card copy-page">
                                <CopyForm c action prefill close=None/>
                            </section>
                        }
                            .into_any()
                    }
                    Err(error) => view! { <PageError error/> }.into_any(),
                }
            })}
        </Suspense>
    }
}

/// The id of the element that shows the server's error about `field` (the field's
/// `aria-describedby` names it, so a screen reader reads the error with the field).
fn error_id(field: &str) -> String {
    format!("copy-error-{}", field.replace('_', "-"))
}

/// Every field of the copy contract. Submits through the `copy_container` server function:
/// with JavaScript as an action (errors by their fields, then the job live below), without
/// it as a plain form post that the server answers with a redirect.
#[component]
fn CopyForm(
    c: ContainerDetail,
    action: ServerAction<CopyContainer>,
    prefill: Prefill,
    /// Closes the dialog; on the page, a link back to the container instead.
    close: Option<Callback<()>>,
) -> impl IntoView {
    let back = format!("/containers/{}", c.summary.id);
    let projects = Resource::new(|| (), |_| list_projects());
    let servers = Resource::new(|| (), |_| list_servers());
    let name_error = RwSignal::new(String::new());
    let default_name = default_copy_name(&c.summary.name);
    // The placeholder is the first choice; the server takes the next free one.
    let name_hint =
        format!("(optional; empty: {default_name}, or {default_name}-2, -3, … if taken)");
    let chosen_server = Some(prefill.server.clone())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| c.summary.server_id.clone());
    let source_server = c.summary.server_id.clone();
    let source_project = c.summary.project_id.clone();
    let chosen_project = Some(prefill.project.clone())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| c.summary.project_id.clone());
    let fw = c.firewall_rules.len();
    let net = c.network_rules.len();
    let snapshots = c.snapshots.clone();
    let chosen_snapshot = prefill.snapshot.clone();
    // The latest error: the action's, or the one a plain form post came back with.
    let posted_error = prefill.error.clone();
    // (field, message); the field is empty when the error is about none in particular.
    let error = move || match action.value().get().map(Result::flatten) {
        Some(Err(e)) => Some((e.field.clone().unwrap_or_default(), e.for_people())),
        Some(Ok(_)) => None,
        None => posted_error.clone(),
    };
    let error_for = {
        let error = error.clone();
        move |field: &'static str| {
            let error = error.clone();
            move || {
                error()
                    .filter(|(f, _)| f == field)
                    .map(|(_, m)| view! { <p id=error_id(field) class="field-error" role="alert">{m}</p> })
            }
        }
    };
    // Started: a second click would make a second copy (open the dialog again for one).
    let started = move || action.value().with(|v| matches!(v, Some(Ok(Ok(_)))));
    let general_error = {
        let error = error.clone();
        move || {
            error()
                .filter(|(f, _)| !FIELDS.contains(&f.as_str()))
                .map(|(_, m)| view! { <p class="error-box" role="alert">{m}</p> })
        }
    };
    view! {
        <ActionForm action=action attr:class="copy-form">
            <input type="hidden" name="id" value=c.summary.id.clone()/>
            <label for="copy-project">"Target project"</label>
            <Suspense fallback=|| view! { <select id="copy-project" name="target_project_id"></select> }>
                {
                    let chosen_project = chosen_project.clone();
                    move || {
                        let chosen_project = chosen_project.clone();
                        Suspend::new(async move {
                            // Only projects where the user may create containers.
                            let list: Vec<_> = projects
                                .await
                                .unwrap_or_default()
                                .into_iter()
                                .filter(|p| p.role.is_none_or(|r| r >= Role::Operator))
                                .collect();
                            view! {
                                <select id="copy-project" name="target_project_id" required aria-describedby=error_id("target_project_id")>
                                    {list
                                        .into_iter()
                                        .map(|p| {
                                            let sel = p.id == chosen_project;
                                            view! { <option value=p.id selected=sel>{p.name}</option> }
                                        })
                                        .collect_view()}
                                </select>
                            }
                        })
                    }
                }
            </Suspense>
            {error_for("target_project_id")}
            <label for="copy-server">"Target server"</label>
            <Suspense fallback=|| view! { <select id="copy-server" name="target_server_id"></select> }>
                {
                    let chosen_server = chosen_server.clone();
                    let source_server = source_server.clone();
                    move || {
                        let chosen_server = chosen_server.clone();
                        let source_server = source_server.clone();
                        Suspend::new(async move {
                            let list = servers.await.unwrap_or_default();
                            view! {
                                <select id="copy-server" name="target_server_id" aria-describedby=error_id("target_server_id")>
                                    {list
                                        .into_iter()
                                        .map(|s| {
                                            let sel = s.id == chosen_server;
                                            // A copy to a server that is offline waits for it (at most
                                            // --server-wait): said here, not discovered on the job. One
                                            // whose host never joined takes no copy (the server refuses
                                            // it): offered disabled, saying why.
                                            let pending = s.state == ServerState::Pending;
                                            let label = match (s.id == source_server, s.state) {
                                                (true, _) => format!("{} (the source's server)", s.name),
                                                (false, ServerState::Online) => s.name,
                                                (false, ServerState::Offline) => format!("{} (offline: the copy waits for it)", s.name),
                                                (false, ServerState::Pending) => format!("{} (its host has not joined yet: no copy can go there)", s.name),
                                            };
                                            view! { <option value=s.id selected=sel && !pending disabled=pending>{label}</option> }
                                        })
                                        .collect_view()}
                                </select>
                            }
                        })
                    }
                }
            </Suspense>
            {error_for("target_server_id")}
            <label for="copy-name">"Name " <span class="muted">{name_hint}</span></label>
            <input
                id="copy-name"
                name="name"
                value=prefill.name.clone()
                placeholder=default_name
                autocomplete="off"
                aria-describedby=format!("copy-name-error {}", error_id("name"))
                on:input=move |ev| {
                    let v = event_target_value(&ev);
                    name_error.set(if v.is_empty() { String::new() } else { validate_container_name(&v).err().unwrap_or_default() });
                }
            />
            <p id="copy-name-error" class="field-error" role="alert" hidden=move || name_error.with(|e| e.is_empty())>
                {move || name_error.get()}
            </p>
            {error_for("name")}
            <label for="copy-key">"SSH public key " <span class="muted">"(optional; never copied from the source)"</span></label>
            <textarea id="copy-key" name="ssh_public_key" rows="2" aria-describedby=error_id("ssh_public_key") placeholder="ssh-ed25519 AAAA… you@host">{prefill.key.clone()}</textarea>
            {error_for("ssh_public_key")}
            <label for="copy-snapshot">"Source state"</label>
            <select id="copy-snapshot" name="source_snapshot" aria-describedby=error_id("source_snapshot")>
                <option value="" selected=chosen_snapshot.is_empty()>"Latest state"</option>
                {snapshots
                    .into_iter()
                    .map(|s| {
                        let sel = s.name == chosen_snapshot;
                        view! { <option value=s.name.clone() selected=sel>{format!("snapshot {}", s.name)}</option> }
                    })
                    .collect_view()}
            </select>
            {error_for("source_snapshot")}
            <label class="check">
                <input type="checkbox" name="copy_firewall_rules" checked=prefill.firewall/>
                {format!("Copy firewall rules ({fw} rule{})", if fw == 1 { "" } else { "s" })}
            </label>
            <label class="check">
                <input type="checkbox" name="copy_network_rules" checked=prefill.network/>
                {format!("Copy network settings ({net} setting{})", if net == 1 { "" } else { "s" })}
            </label>
            {general_error}
            <div class="dialog-buttons">
                {match close {
                    Some(close) => view! { <button type="button" on:click=move |_| close.run(())>"Close"</button> }.into_any(),
                    None => view! { <a href=back class="button">"Back to the container"</a> }.into_any(),
                }}
                // A viewer of the source's project sees why it cannot copy, not a form
                // that only fails when sent.
                <Suspense fallback=|| view! { <button type="submit" class="primary" disabled=true>"Copy"</button> }>
                    {
                        let source_project = source_project.clone();
                        move || {
                            let source_project = source_project.clone();
                            Suspend::new(async move {
                                let viewer = projects.await.unwrap_or_default().iter().any(|p| {
                                    p.id == source_project && p.role == Some(Role::Viewer)
                                });
                                view! {
                                    {viewer.then(|| view! {
                                        <p class="error-box" role="note">
                                            "You may see this container but not copy it: your role in its project is viewer."
                                        </p>
                                    })}
                                    <button type="submit" class="primary" disabled=move || viewer || action.pending().get() || started()>"Copy"</button>
                                }
                            })
                        }
                    }
                </Suspense>
            </div>
        </ActionForm>
        {move || match action.value().get().map(Result::flatten) {
            Some(Ok(started)) => Some(view! {
                <p>"Copying into " <a href=format!("/containers/{}", started.container.summary.id)>{started.container.summary.name.clone()}</a></p>
                <LiveJob job=started.job/>
            }),
            _ => None,
        }}
    }
}

/// "Sync now" on a copy: starts a sync and follows it live.
#[component]
pub fn SyncNow(id: String) -> impl IntoView {
    let action = ServerAction::<SyncContainer>::new();
    view! {
        <ActionForm action=action attr:class="inline-form">
            <input type="hidden" name="id" value=id/>
            <button type="submit" disabled=move || action.pending().get()>"Sync now"</button>
        </ActionForm>
        {move || match action.value().get().map(Result::flatten) {
            Some(Ok(job)) => view! { <LiveJob job/> }.into_any(),
            Some(Err(error)) => view! { <ErrorBox error/> }.into_any(),
            None => ().into_any(),
        }}
    }
}
