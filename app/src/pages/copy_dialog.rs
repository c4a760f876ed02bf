//! "Copy container": a modal dialog with every field of the copy contract. It submits
//! through a server function; the server's errors appear next to their field; once
//! accepted, the job is followed live.

use leptos::html::Dialog;
use leptos::prelude::*;

use super::live_job::LiveJob;
use super::widgets::ErrorBox;
use crate::model::{validate_container_name, ContainerDetail, Role};
use crate::server_fns::{list_projects, list_servers, CopyContainer, SyncContainer};

/// Which form field a server error is about (its message starts with the field's name).
fn field_of(message: &str) -> &'static str {
    for field in [
        "name",
        "ssh_public_key",
        "source_snapshot",
        "target_server_id",
        "target_project_id",
    ] {
        if message.starts_with(&format!("{field}:")) || message.contains(&format!("{field} ")) {
            return field;
        }
    }
    if message.contains("a container named") {
        return "name";
    }
    ""
}

#[component]
pub fn CopyDialog(c: ContainerDetail) -> impl IntoView {
    let dialog = NodeRef::<Dialog>::new();
    let action = ServerAction::<CopyContainer>::new();
    let projects = Resource::new(|| (), |_| list_projects());
    let servers = Resource::new(|| (), |_| list_servers());
    let name_error = RwSignal::new(String::new());
    let default_name = format!("{}-copy", c.summary.name);
    let source_server = c.summary.server_id.clone();
    let source_project = c.summary.project_id.clone();
    let fw = c.firewall_rules.len();
    let net = c.network_rules.len();
    let snapshots = c.snapshots.clone();
    // Leaving the page closes the dialog (it is modal: it would block the next page).
    on_cleanup(move || {
        if let Some(d) = dialog.get_untracked() {
            d.close();
        }
    });
    let error_for = move |field: &'static str| {
        move || match action.value().get().map(Result::flatten) {
            Some(Err(e)) if field_of(&e.message) == field => {
                Some(view! { <p class="field-error" role="alert">{e.message}</p> })
            }
            _ => None,
        }
    };
    let general_error = move || match action.value().get().map(Result::flatten) {
        Some(Err(e)) if field_of(&e.message).is_empty() => Some(view! { <ErrorBox error=e/> }),
        _ => None,
    };
    view! {
        <button type="button" class="primary" on:click=move |_| {
            if let Some(d) = dialog.get() {
                let _ = d.show_modal();
            }
        }>"Copy container"</button>
        <dialog node_ref=dialog class="dialog" aria-labelledby="copy-title">
            <h2 id="copy-title">"Copy " {c.summary.name.clone()}</h2>
            <ActionForm action=action attr:class="copy-form">
                <input type="hidden" name="id" value=c.summary.id.clone()/>
                <label for="copy-project">"Target project"</label>
                <Suspense fallback=|| view! { <select id="copy-project" name="target_project_id"></select> }>
                    {
                        let source_project = source_project.clone();
                        move || {
                            let source_project = source_project.clone();
                            Suspend::new(async move {
                                // Only projects where the user may create containers.
                                let list: Vec<_> = projects
                                    .await
                                    .unwrap_or_default()
                                    .into_iter()
                                    .filter(|p| p.role.is_none_or(|r| r >= Role::Operator))
                                    .collect();
                                view! {
                                    <select id="copy-project" name="target_project_id" required>
                                        {list
                                            .into_iter()
                                            .map(|p| {
                                                let sel = p.id == source_project;
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
                        let source_server = source_server.clone();
                        move || {
                            let source_server = source_server.clone();
                            Suspend::new(async move {
                                let list = servers.await.unwrap_or_default();
                                view! {
                                    <select id="copy-server" name="target_server_id">
                                        {list
                                            .into_iter()
                                            .map(|s| {
                                                let same = s.id == source_server;
                                                let label = if same { format!("{} (the source's server)", s.name) } else { s.name };
                                                view! { <option value=s.id selected=same>{label}</option> }
                                            })
                                            .collect_view()}
                                    </select>
                                }
                            })
                        }
                    }
                </Suspense>
                {error_for("target_server_id")}
                <label for="copy-name">"Name"</label>
                <input
                    id="copy-name"
                    name="name"
                    placeholder=default_name
                    autocomplete="off"
                    aria-describedby="copy-name-error"
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
                <textarea id="copy-key" name="ssh_public_key" rows="2" placeholder="ssh-ed25519 AAAA… you@host"></textarea>
                {error_for("ssh_public_key")}
                <label for="copy-snapshot">"Source state"</label>
                <select id="copy-snapshot" name="source_snapshot">
                    <option value="" selected>"Latest state"</option>
                    {snapshots.into_iter().map(|s| view! { <option value=s.name.clone()>{format!("snapshot {}", s.name)}</option> }).collect_view()}
                </select>
                {error_for("source_snapshot")}
                <label class="check">
                    <input type="checkbox" name="copy_firewall_rules"/>
                    {format!("Copy firewall rules ({fw} rule{})", if fw == 1 { "" } else { "s" })}
                </label>
                <label class="check">
                    <input type="checkbox" name="copy_network_rules"/>
                    {format!("Copy network settings ({net} setting{})", if net == 1 { "" } else { "s" })}
                </label>
                {general_error}
                <div class="dialog-buttons">
                    <button type="button" on:click=move |_| {
                        if let Some(d) = dialog.get() {
                            d.close();
                        }
                    }>"Close"</button>
                    <button type="submit" class="primary" disabled=move || action.pending().get()>"Copy"</button>
                </div>
            </ActionForm>
            {move || match action.value().get().map(Result::flatten) {
                Some(Ok(started)) => Some(view! {
                    <p>"Copying into " <a href=format!("/containers/{}", started.container.summary.id)>{started.container.summary.name.clone()}</a></p>
                    <LiveJob job=started.job/>
                }),
                _ => None,
            }}
        </dialog>
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
