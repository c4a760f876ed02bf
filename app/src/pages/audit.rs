//! The audit log (`/audit`): who did what, when, from where, and how it ended. Platform
//! admins see everything, project admins their projects'.

use leptos::prelude::*;
use leptos_meta::Title;
use leptos_router::components::Form;
use leptos_router::hooks::use_query_map;

use super::widgets::{Loading, PageError};
use crate::format;
use crate::server_fns::list_audit;

#[component]
pub fn AuditPage() -> impl IntoView {
    let query = use_query_map();
    let filter = move || {
        query.with(|q| {
            (
                q.get("actor").filter(|v| !v.is_empty()),
                q.get("action").filter(|v| !v.is_empty()),
                q.get("before").filter(|v| !v.is_empty()),
            )
        })
    };
    let entries = Resource::new(filter, |(actor, action, before)| {
        list_audit(actor, action, before)
    });
    let value = move |k: &str| query.with(|q| q.get(k).unwrap_or_default());
    view! {
        <Title text="Audit · doppel"/>
        <div class="page-head">
            <h1>"Audit log"</h1>
        </div>
        <div class="filters">
            <Form method="GET" action="">
                <label for="audit-actor">"User"</label>
                <input id="audit-actor" name="actor" value=move || value("actor")/>
                <label for="audit-action">"Action"</label>
                <input id="audit-action" name="action" placeholder="container.copy" value=move || value("action")/>
                <button type="submit">"Filter"</button>
            </Form>
        </div>
        <Suspense fallback=Loading>
            {move || Suspend::new(async move {
                match entries.await {
                    Ok(list) if list.is_empty() => view! { <p class="muted">"Nothing recorded (with these filters)."</p> }.into_any(),
                    Ok(list) => {
                        let more = (list.len() == 100).then(|| list.last().map(|e| e.id.clone())).flatten();
                        view! {
                            <table class="grid audit">
                                <thead>
                                    <tr>
                                        <th scope="col">"When"</th>
                                        <th scope="col">"Who"</th>
                                        <th scope="col">"What"</th>
                                        <th scope="col">"On"</th>
                                        <th scope="col">"From"</th>
                                        <th scope="col">"Result"</th>
                                    </tr>
                                </thead>
                                <tbody>
                                    {list
                                        .into_iter()
                                        .map(|e| {
                                            let class = format!("audit-{}", e.result);
                                            view! {
                                            <tr class=class>
                                                <td data-label="When">{format::utc(e.at)}</td>
                                                <td data-label="Who">{e.actor_name}</td>
                                                <td data-label="What"><code>{e.action}</code></td>
                                                <td data-label="On"><code>{e.target}</code></td>
                                                <td data-label="From">{e.address}</td>
                                                <td data-label="Result">
                                                    {e.result}
                                                    {e.detail.map(|d| view! { <span class="muted">": " {d}</span> })}
                                                </td>
                                            </tr>
                                            }
                                        })
                                        .collect_view()}
                                </tbody>
                            </table>
                            {more.map(|id| view! { <p><a href=format!("/audit?before={id}")>"Older entries"</a></p> })}
                        }
                            .into_any()
                    }
                    Err(error) => view! { <PageError error/> }.into_any(),
                }
            })}
        </Suspense>
    }
}
