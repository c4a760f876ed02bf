use leptos::prelude::*;
use leptos_meta::Title;
use leptos_router::hooks::{use_params_map, use_query_map};

use super::copy_dialog::{CopyDialog, SyncNow};
use super::live_job::{follow_all_jobs, reloader, LiveJob};
use super::process::{DeleteCard, ProcessCard};
use super::settings::{CommandEditor, Edits, FirewallEditor, NetworkEditor};
use super::widgets::{ErrorBox, Loading, PageError, ReloadWithoutScript, StatusBadge};
use crate::format;
use crate::model::{ContainerDetail, ContainerStatus, EventKind, TreeKind};
use crate::server_fns::{get_container, get_job, ContainerAction, ConvertTree};

/// One container: details, snapshots, rules, lineage.
#[component]
pub fn ContainerPage() -> impl IntoView {
    let params = use_params_map();
    let id = move || params.with(|p| p.get("id").unwrap_or_default());
    // Start, stop and restart; each one done reloads the container.
    let action = ServerAction::<ContainerAction>::new();
    let edits = Edits::new();
    let container = Resource::new(
        move || (id(), action.version().get() + edits.version()),
        |(id, _)| get_container(id),
    );
    // `?job=ID`: a job this page was reached for (a copy started by a plain form post).
    let query = use_query_map();
    let job = Resource::new(
        move || query.with(|q| q.get("job")),
        |id| async move {
            match id {
                Some(id) => get_job(id).await.ok(),
                None => None,
            }
        },
    );
    // `?error=`: why a start, stop or restart posted without JavaScript was refused.
    let refused = move || {
        query.with(|q| q.get("error")).map(|message| {
            view! { <p class="error-box" role="alert">{message}</p> }
        })
    };
    view! {
        {refused}
        <Suspense fallback=|| ()>
            {move || Suspend::new(async move { job.await.map(|job| view! { <LiveJob job/> }) })}
        </Suspense>
        <Suspense fallback=Loading>
            {move || Suspend::new(async move {
                match container.await {
                    Ok(c) => view! { <ContainerView c action edits/> }.into_any(),
                    Err(error) => view! { <PageError error/> }.into_any(),
                }
            })}
        </Suspense>
    }
}

/// The container's status as its jobs change it, from `loaded` on: every event of a job on
/// it (a status, or a new phase: a sync stops a running copy for its final pass and starts
/// it again) has its status read again, at most twice a second. Only the badge follows:
/// reloading the whole page would cut short the forms and the live job on it.
fn live_status(
    id: String,
    loaded: ContainerStatus,
) -> impl Fn() -> ContainerStatus + Copy + Send + Sync + 'static {
    let version = RwSignal::new(0u32);
    let reload = reloader(version);
    let last_phase = StoredValue::new(None);
    let mine = id.clone();
    follow_all_jobs(move |ev| {
        if ev.job.container_id != mine {
            return;
        }
        let new_phase = last_phase.get_value() != Some(ev.job.phase);
        last_phase.set_value(Some(ev.job.phase));
        if ev.kind == EventKind::Status || new_phase {
            reload();
        }
    });
    // In the browser only (effects run there): the server renders the status as loaded.
    // Not a resource: a Suspense around the page would wait for it, and a page rendered
    // for a browser without JavaScript would never be complete.
    let status = RwSignal::new(loaded);
    Effect::new(move |_| {
        if version.get() == 0 {
            return;
        }
        let id = id.clone();
        leptos::task::spawn_local(async move {
            if let Ok(c) = get_container(id).await {
                // (The page may have been left meanwhile.)
                let _ = status.try_set(c.summary.status);
            }
        });
    });
    move || status.get()
}

#[component]
fn ContainerView(
    c: ContainerDetail,
    action: ServerAction<ContainerAction>,
    edits: Edits,
) -> impl IntoView {
    // A viewer sees what it may not do disabled, not forms that fail only when sent (the
    // server refuses them anyway).
    let viewer = !c.may_change;
    let guarded = move |controls: AnyView| {
        view! { <fieldset class="plain" disabled=viewer>{controls}</fieldset> }
    };
    let viewer_note = viewer.then(|| {
        view! {
            <p class="notice" role="note">
                "Your role in this container's project is viewer: you may look at it, not change it."
            </p>
        }
    });
    let copy_dialog = view! { <CopyDialog c=c.clone()/> };
    let process = guarded(
        view! {
            <ProcessCard c=c.clone() action/>
            <CommandEditor id=c.summary.id.clone() command=c.command.clone() action=edits.command/>
        }
        .into_any(),
    );
    let firewall_editor = guarded(
        view! {
            <FirewallEditor id=c.summary.id.clone() rules=c.firewall_rules.clone() action=edits.firewall/>
        }
        .into_any(),
    );
    let network_editor = guarded(
        view! {
            <NetworkEditor id=c.summary.id.clone() rules=c.network_rules.clone() action=edits.network/>
        }
        .into_any(),
    );
    let delete = guarded(
        view! { <DeleteCard id=c.summary.id.clone() name=c.summary.name.clone()/> }.into_any(),
    );
    let sync_now = c.summary.is_copy.then(|| {
        // A copy whose source was deleted has nothing to sync from: said, not offered.
        let sync = if c.source_deleted {
            view! { <p class="notice" role="note">"Its source was deleted: there is nothing to sync from."</p> }
                .into_any()
        } else {
            view! { <SyncNow id=c.summary.id.clone()/> }.into_any()
        };
        guarded(
            view! {
                <section class="card sync-card">
                    <h2>"Sync with the source"</h2>
                    <p class="muted">"Brings this copy up to the source's current state, sending only what changed. Changes made on the copy itself are overwritten and reported as drift."</p>
                    {sync}
                </section>
            }
            .into_any(),
        )
    });
    let s = c.summary;
    let title = format!("{} · doppel", s.name);
    let lineage = match (s.source, s.is_copy) {
        (Some(src), _) => view! {
            <dt>"Copy of"</dt>
            <dd>
                <a href=format!("/containers/{}", src.id)>{src.name}</a>
                " in " {src.project_name}
            </dd>
        }
        .into_any(),
        (None, true) if c.source_deleted => view! {
            <dt>"Copy of"</dt>
            <dd>"a container since deleted"</dd>
        }
        .into_any(),
        (None, true) => view! {
            <dt>"Copy of"</dt>
            <dd>"a container in a project you cannot see"</dd>
        }
        .into_any(),
        (None, false) => ().into_any(),
    };
    let synced = c.last_synced_at.map(|t| {
        view! {
            <dt>"Last matched source"</dt>
            <dd>{format::utc(t)}</dd>
        }
    });
    let root = c.root_path.map(|p| {
        view! {
            <dt>"Root on disk"</dt>
            <dd><code>{p}</code></dd>
        }
    });
    // What the tree is says what its copies on its server cost.
    let tree = c.tree.map(|t| {
        let said = match t {
            TreeKind::ImageTree => {
                "an image tree: its copies on its server are clones of its image"
            }
            TreeKind::Subvolume => "a btrfs subvolume: its copies on its server are snapshots",
            TreeKind::Directory => {
                "a directory: its copies go file by file (an image tree's are clones of its \
                 image; that needs doppel started with --image-trees and XFS with reflinks)"
            }
        };
        let convert = (t == TreeKind::Directory).then(|| view! { <ConvertTree id=s.id.clone()/> });
        view! {
            <dt>"Tree"</dt>
            <dd>{said} {convert}</dd>
        }
    });
    let reason = c
        .status_reason
        .map(|r| view! { <p class="error-box">{r}</p> });
    // A copy or sync under way: after a copy or "Sync now" posted as a plain form, the
    // page follows it by reloading.
    let reload = matches!(
        s.status,
        ContainerStatus::Copying | ContainerStatus::Syncing
    )
    .then(|| view! { <ReloadWithoutScript/> });
    let badge = live_status(s.id.clone(), s.status);
    view! {
        <Title text=title/>
        {reload}
        <div class="page-head">
            <h1>{s.name.clone()} " " {move || view! { <StatusBadge status=badge()/> }}</h1>
            <div class="actions">{copy_dialog}</div>
        </div>
        {reason}
        {viewer_note}
        {process}
        {sync_now}
        <section class="card">
            <h2>"Details"</h2>
            <dl class="details">
                <dt>"ID"</dt>
                <dd><code>{s.id.clone()}</code></dd>
                <dt>"Project"</dt>
                <dd><a href=format!("/containers?project={}", s.project_id)>{s.project_name}</a></dd>
                <dt>"Server"</dt>
                <dd>{s.server_name}</dd>
                {lineage}
                {synced}
                <dt>"Files"</dt>
                <dd>{c.file_count} " files, " {format::bytes(c.size_bytes)}</dd>
                <dt>"SSH key"</dt>
                <dd>
                    {match c.ssh_public_key {
                        Some(k) => view! { <code class="key">{k}</code> }.into_any(),
                        None => view! { <span class="muted">"none"</span> }.into_any(),
                    }}
                </dd>
                <dt>"Created"</dt>
                <dd>{format::utc(s.created_at)}</dd>
                {root}
                {tree}
            </dl>
        </section>
        <section class="card">
            <h2>"Snapshots"</h2>
            {if c.snapshots.is_empty() {
                view! { <p class="muted">"No snapshots."</p> }.into_any()
            } else {
                view! {
                    <table class="grid snapshots">
                        <thead>
                            <tr>
                                <th scope="col">"Name"</th>
                                <th scope="col">"Taken"</th>
                                <th scope="col">"Files"</th>
                                <th scope="col">"Size"</th>
                            </tr>
                        </thead>
                        <tbody>
                            {c.snapshots
                                .into_iter()
                                .map(|snap| view! {
                                    <tr>
                                        <td data-label="Name">{snap.name}</td>
                                        <td data-label="Taken">{format::utc(snap.created_at)}</td>
                                        <td data-label="Files">{snap.file_count}</td>
                                        <td data-label="Size">{format::bytes(snap.size_bytes)}</td>
                                    </tr>
                                })
                                .collect_view()}
                        </tbody>
                    </table>
                }
                    .into_any()
            }}
        </section>
        <div class="two-col">
            <section class="card">
                <h2>"Firewall rules"</h2>
                {if c.firewall_rules.is_empty() {
                    view! { <p class="muted">"No firewall rules."</p> }.into_any()
                } else {
                    view! {
                        <table class="grid rules">
                            <thead>
                                <tr>
                                    <th scope="col">"Direction"</th>
                                    <th scope="col">"Protocol"</th>
                                    <th scope="col">"Port"</th>
                                    <th scope="col">"Peer"</th>
                                    <th scope="col">"Action"</th>
                                </tr>
                            </thead>
                            <tbody>
                                {c.firewall_rules
                                    .into_iter()
                                    .map(|r| view! {
                                        <tr>
                                            <td data-label="Direction">{r.direction}</td>
                                            <td data-label="Protocol">{r.protocol}</td>
                                            <td data-label="Port">{r.port.unwrap_or_else(|| "all".into())}</td>
                                            <td data-label="Peer">{r.cidr}</td>
                                            <td data-label="Action">{r.action}</td>
                                        </tr>
                                    })
                                    .collect_view()}
                            </tbody>
                        </table>
                    }
                        .into_any()
                }}
                {firewall_editor}
            </section>
            <section class="card">
                <h2>"Network"</h2>
                {if c.network_rules.is_empty() {
                    view! { <p class="muted">"No network settings."</p> }.into_any()
                } else {
                    view! {
                        <table class="grid rules">
                            <thead>
                                <tr>
                                    <th scope="col">"Interface"</th>
                                    <th scope="col">"Network"</th>
                                    <th scope="col">"IPv4"</th>
                                    <th scope="col">"MTU"</th>
                                </tr>
                            </thead>
                            <tbody>
                                {c.network_rules
                                    .into_iter()
                                    .map(|r| view! {
                                        <tr>
                                            <td data-label="Interface">{r.interface}</td>
                                            <td data-label="Network">{r.network}</td>
                                            <td data-label="IPv4">{r.ipv4.unwrap_or_else(|| "allocated".into())}</td>
                                            <td data-label="MTU">{r.mtu.map(|m| m.to_string()).unwrap_or_else(|| "default".into())}</td>
                                        </tr>
                                    })
                                    .collect_view()}
                            </tbody>
                        </table>
                    }
                        .into_any()
                }}
                {network_editor}
            </section>
        </div>
        <section class="card">
            <h2>"Copies"</h2>
            {if c.copies.is_empty() {
                view! { <p class="muted">"No copies of this container."</p> }.into_any()
            } else {
                view! {
                    <ul class="copies">
                        {c.copies
                            .into_iter()
                            .map(|r| view! {
                                <li>
                                    <a href=format!("/containers/{}", r.id)>{r.name}</a>
                                    " in " {r.project_name}
                                </li>
                            })
                            .collect_view()}
                    </ul>
                }
                    .into_any()
            }}
        </section>
        {delete}
    }
}

/// "Make it an image tree" on a directory tree (platform admins see the tree): starts the
/// conversion and follows it live (a running container is stopped for its final pass;
/// a refusal says why).
#[component]
fn ConvertTree(id: String) -> impl IntoView {
    let action = ServerAction::<ConvertTree>::new();
    // Once its job is started, the job says the rest.
    let started = move || matches!(action.value().get(), Some(Ok(Ok(_))));
    let form = move || {
        let id = id.clone();
        (!started()).then(move || {
            view! {
                <ActionForm action=action attr:class="inline-form">
                    <input type="hidden" name="id" value=id/>
                    <button type="submit" disabled=move || action.pending().get()>"Make it an image tree"</button>
                </ActionForm>
            }
        })
    };
    view! {
        {form}
        {move || match action.value().get().map(Result::flatten) {
            Some(Ok(job)) => view! { <LiveJob job/> }.into_any(),
            Some(Err(error)) => view! { <ErrorBox error/> }.into_any(),
            None => ().into_any(),
        }}
    }
}
