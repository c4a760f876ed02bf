//! Servers (`/servers`): where containers live, online or not, their free space and
//! containers; platform admins add a server on another host here (a one-time join token).
//! The list refreshes every 2 s while the page is open, so a host that goes down shows as
//! offline within seconds.

use std::time::Duration;

use leptos::prelude::*;
use leptos_meta::Title;

use super::widgets::{one_error_at_a_time, ErrorBox, Loading, PageError};
use crate::format;
use crate::model::{Millis, Server, ServerKind, ServerState};
use crate::server_fns::{server_overview, AddServer, ConvertServerTrees, SetServerBwlimit};

#[component]
pub fn ServersPage() -> impl IntoView {
    let add = ServerAction::<AddServer>::new();
    let me = super::current_user();
    let limit = ServerAction::<SetServerBwlimit>::new();
    let convert = ServerAction::<ConvertServerTrees>::new();
    one_error_at_a_time(vec![add.into(), limit.into(), convert.into()]);
    let tick = RwSignal::new(0u64);
    Effect::new(move |_| {
        set_interval(move || tick.update(|t| *t += 1), Duration::from_secs(2));
    });
    let servers = Resource::new(
        move || (tick.get(), add.version().get(), limit.version().get()),
        |_| server_overview(),
    );
    view! {
        <Title text="Servers · doppel"/>
        <div class="page-head">
            <h1>"Servers"</h1>
        </div>
        <super::widgets::PostedResult page="/servers"/>
        <Transition fallback=Loading>
            {move || Suspend::new(async move {
                match servers.await {
                    Ok((now, list)) => {
                        let admin = matches!(me.await, Ok(Some(user)) if user.is_admin);
                        let names: Vec<(String, String)> =
                            list.iter().map(|s| (s.id.clone(), s.name.clone())).collect();
                        // (Trees are converted on this host's servers only.)
                        let here: Vec<(String, String)> = list
                            .iter()
                            .filter(|s| s.kind == ServerKind::Embedded)
                            .map(|s| (s.id.clone(), s.name.clone()))
                            .collect();
                        view! {
                            <ServerTable now list admin/>
                            {admin.then(|| view! {
                                <LimitForm action=limit names/>
                                <ConvertForm action=convert names=here/>
                            })}
                        }
                        .into_any()
                    }
                    Err(error) => view! { <PageError error/> }.into_any(),
                }
            })}
        </Transition>
        <super::PlatformAdminsOnly>
            <section class="card">
                <h2>"Add a server on another host"</h2>
                <p class="muted">
                    "Its host joins with the token, once, within the hour: "
                    <code>"doppel agent join https://<this control plane's --agents-addr> TOKEN"</code>
                </p>
                <ActionForm action=add attr:class="stacked-form">
                    <label for="new-server-name">"Name"</label>
                    <input id="new-server-name" name="name" required/>
                    <label for="new-server-description">"Description"</label>
                    <input id="new-server-description" name="description"/>
                    <button type="submit" class="primary">"Add server"</button>
                </ActionForm>
                {move || match add.value().get().map(Result::flatten) {
                    Some(Ok(added)) => view! {
                        <div class="notice" role="status">
                            <p>"Join token of " <strong>{added.server.name.clone()}</strong> ", shown once:"</p>
                            <code class="secret">{added.join_token}</code>
                            {added.join_command.map(|c| view! { <p>"On its host, run: " <code>{c}</code></p> })}
                        </div>
                        {added.warning.map(|w| view! { <p class="warning-box" role="alert">{w}</p> })}
                    }
                    .into_any(),
                    Some(Err(error)) => view! { <ErrorBox error/> }.into_any(),
                    None => ().into_any(),
                }}
            </section>
        </super::PlatformAdminsOnly>
    }
}

/// Every directory tree of one of this host's servers made an image tree: a convert job
/// each (platform admins).
#[component]
fn ConvertForm(
    action: ServerAction<ConvertServerTrees>,
    names: Vec<(String, String)>,
) -> impl IntoView {
    view! {
        <section class="card">
            <h2>"Image trees"</h2>
            <p class="muted">
                "A copy of an image tree on its server is a clone of one file; a directory's goes \
                 file by file. This starts a job for each container whose tree is a directory: \
                 a running one is stopped only for the job's final pass. It needs doppel started \
                 with " <code>"--image-trees"</code> " and XFS with reflinks."
            </p>
            <ActionForm action attr:class="stacked-form">
                <label for="convert-server">"Server"</label>
                <select id="convert-server" name="server_id">
                    {names.into_iter().map(|(id, name)| view! { <option value=id>{name}</option> }).collect_view()}
                </select>
                <button type="submit">"Make its directory trees image trees"</button>
            </ActionForm>
            {move || match action.value().get().map(Result::flatten) {
                Some(Ok(done)) => view! {
                    <div class="notice" role="status">
                        <p>{format!(
                            "{} conversion jobs started ({} image trees already); follow them on the Jobs page.",
                            done.jobs.len(),
                            done.already
                        )}</p>
                        <ul>
                            {done.refused.into_iter().map(|r| view! {
                                <li>{format!("{}: {}", r.name, r.reason)}</li>
                            }).collect_view()}
                        </ul>
                    </div>
                }
                .into_any(),
                Some(Err(error)) => view! { <ErrorBox error/> }.into_any(),
                None => ().into_any(),
            }}
        </section>
    }
}

/// A server's bandwidth limit, set or lifted (platform admins).
#[component]
fn LimitForm(
    action: ServerAction<SetServerBwlimit>,
    names: Vec<(String, String)>,
) -> impl IntoView {
    view! {
        <section class="card">
            <h2>"Bandwidth limit"</h2>
            <p class="muted">
                "Copies and syncs to or from a server move at most this many bytes a second (e.g. "
                <code>"50M"</code>"); empty lifts the limit. A copy or sync may ask for less with "
                <code>"?bwlimit="</code>"."
            </p>
            <ActionForm action attr:class="stacked-form">
                <label for="limit-server">"Server"</label>
                <select id="limit-server" name="server_id">
                    {names.into_iter().map(|(id, name)| view! { <option value=id>{name}</option> }).collect_view()}
                </select>
                <label for="limit-rate">"Limit (bytes a second)"</label>
                <input id="limit-rate" name="bwlimit" placeholder="none"/>
                <button type="submit">"Set limit"</button>
            </ActionForm>
            {move || match action.value().get().map(Result::flatten) {
                Some(Err(error)) => view! { <ErrorBox error/> }.into_any(),
                _ => ().into_any(),
            }}
        </section>
    }
}

fn state_badge(s: &Server) -> impl IntoView {
    let class = match s.state {
        ServerState::Online => "badge sync-current",
        ServerState::Offline => "badge sync-failing",
        ServerState::Pending => "badge sync-stale",
    };
    view! {
        <span class=class>{s.state.as_str()}</span>
        {s.state_reason.clone().map(|r| view! { <span class="muted small">{r}</span> })}
    }
}

#[component]
fn ServerTable(now: Millis, list: Vec<Server>, admin: bool) -> impl IntoView {
    view! {
        <table class="grid servers">
            <thead>
                <tr>
                    <th scope="col">"Name"</th>
                    <th scope="col">"State"</th>
                    <th scope="col">"Kind"</th>
                    <th scope="col">"Last seen"</th>
                    <th scope="col">"Version"</th>
                    <th scope="col">"Free space"</th>
                    <th scope="col">"Containers"</th>
                    <th scope="col">"Transfers"</th>
                    <th scope="col">"Limit"</th>
                    <th scope="col" title="How a copy from the same filesystem is laid down">"Storage"</th>
                    {admin.then(|| view! { <th scope="col">"Where"</th> })}
                </tr>
            </thead>
            <tbody>
                {list.into_iter().map(|s| {
                    let seen = s.last_seen_at.map(|t| view! {
                        <time title=format::utc(t)>{seconds_ago(now, t)}</time>
                    });
                    let space = match (s.free_bytes, s.total_bytes) {
                        (Some(free), Some(total)) => format!(
                            "{} of {}",
                            format::bytes(free as i64),
                            format::bytes(total as i64)
                        ),
                        _ => "—".into(),
                    };
                    let place = s
                        .agent_address
                        .clone()
                        .map(|a| match &s.agent_fingerprint {
                            Some(fp) => format!("{a} (certificate {}…)", &fp[..fp.len().min(16)]),
                            None => a,
                        })
                        .or_else(|| s.storage_root.clone());
                    let limit = s
                        .bwlimit_bytes_per_second
                        .map(|b| format!("{}/s", format::bytes(b as i64)))
                        .unwrap_or_else(|| "none".into());
                    let transfers = s
                        .transfers
                        .iter()
                        .map(|t| {
                            let rate = t
                                .bytes_per_second
                                .map(|r| format!(" at {}/s", format::bytes(r as i64)))
                                .unwrap_or_default();
                            let done = match t.bytes_total {
                                Some(total) => format!(
                                    "{} of {}",
                                    format::bytes(t.bytes_done as i64),
                                    format::bytes(total as i64)
                                ),
                                None => format::bytes(t.bytes_done as i64),
                            };
                            view! {
                                <div>
                                    <a href=format!("/containers/{}", t.container_id)>{t.container_name.clone()}</a>
                                    {format!(" ({} {}): {done}{rate}", t.kind.as_str(), t.direction)}
                                </div>
                            }
                        })
                        .collect_view();
                    let mut storage = s.storage.map_or("—", |m| m.as_str()).to_string();
                    if let Some(size) = s.image_trees {
                        storage += &format!(", image trees of {}", format::bytes(size as i64));
                    }
                    view! {
                        <tr data-server=s.name.clone()>
                            <td data-label="Name">{s.name.clone()}</td>
                            <td data-label="State">{state_badge(&s)}</td>
                            <td data-label="Kind">{match s.kind { ServerKind::Embedded => "this host", ServerKind::Agent => "agent" }}</td>
                            <td data-label="Last seen">{seen}</td>
                            <td data-label="Version">{s.version.clone().unwrap_or_default()}</td>
                            <td data-label="Free space">{space}</td>
                            <td data-label="Containers">{s.container_count}</td>
                            <td data-label="Transfers" class="small">{transfers}</td>
                            <td data-label="Limit">{limit}</td>
                            <td data-label="Storage">{storage}</td>
                            {admin.then(|| view! { <td data-label="Where" class="small">{place}</td> })}
                        </tr>
                    }
                }).collect_view()}
            </tbody>
        </table>
    }
}

/// "now", "3 s ago", then as `format::ago` says it.
fn seconds_ago(now: Millis, then: Millis) -> String {
    match (now - then).max(0) / 1000 {
        0 => "now".into(),
        s @ 1..=59 => format!("{s} s ago"),
        _ => format::ago(now, then),
    }
}
