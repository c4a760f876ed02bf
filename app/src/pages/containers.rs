use leptos::prelude::*;
use leptos_meta::Title;
use leptos_router::{components::Form, hooks::use_query_map};

use super::widgets::{Loading, PageError, StatusBadge};
use crate::model::ContainerSummary;
use crate::server_fns::{list_containers, list_projects};

/// Every container the user may see, filterable by project (`?project=ID`).
#[component]
pub fn ContainersPage() -> impl IntoView {
    let query = use_query_map();
    let project = move || query.with(|q| q.get("project").filter(|p| !p.is_empty()));
    let containers = Resource::new(project, list_containers);
    let projects = Resource::new(|| (), |_| list_projects());

    view! {
        <Title text="Containers · doppel"/>
        <div class="page-head">
            <h1>"Containers"</h1>
            // A GET form: works as a plain link before hydration, client-side after.
            <Form method="GET" action="">
                <label for="project-filter">"Project"</label>
                <Suspense fallback=|| view! { <select id="project-filter" name="project"></select> }>
                    {move || Suspend::new(async move {
                        let selected = project().unwrap_or_default();
                        let options = projects.await.unwrap_or_default();
                        view! {
                            <select id="project-filter" name="project">
                                <option value="" selected=selected.is_empty()>"All projects"</option>
                                {options
                                    .into_iter()
                                    .map(|p| {
                                        let is_sel = p.id == selected;
                                        view! { <option value=p.id selected=is_sel>{p.name}</option> }
                                    })
                                    .collect_view()}
                            </select>
                        }
                    })}
                </Suspense>
                <button type="submit">"Filter"</button>
            </Form>
        </div>
        <Suspense fallback=Loading>
            {move || Suspend::new(async move {
                match containers.await {
                    Ok(list) => view! { <ContainerTable list/> }.into_any(),
                    Err(error) => view! { <PageError error/> }.into_any(),
                }
            })}
        </Suspense>
    }
}

#[component]
fn ContainerTable(list: Vec<ContainerSummary>) -> impl IntoView {
    if list.is_empty() {
        return view! { <p class="empty">"No containers here yet."</p> }.into_any();
    }
    view! {
        <table class="grid containers">
            <thead>
                <tr>
                    <th scope="col">"Name"</th>
                    <th scope="col">"Status"</th>
                    <th scope="col">"Server"</th>
                    <th scope="col">"Project"</th>
                    <th scope="col">"Lineage"</th>
                </tr>
            </thead>
            <tbody>
                {list
                    .into_iter()
                    .map(|c| {
                        let lineage = match (&c.source, c.is_copy) {
                            (Some(src), _) => {
                                view! {
                                    "copy of "
                                    <a href=format!("/containers/{}", src.id)>{src.name.clone()}</a>
                                }
                                    .into_any()
                            }
                            (None, true) => view! { "copy (source not visible)" }.into_any(),
                            (None, false) => view! { <span class="muted">"original"</span> }.into_any(),
                        };
                        view! {
                            <tr data-container-id=c.id.clone()>
                                <td data-label="Name">
                                    <a href=format!("/containers/{}", c.id)>{c.name}</a>
                                </td>
                                <td data-label="Status"><StatusBadge status=c.status/></td>
                                <td data-label="Server">{c.server_name}</td>
                                <td data-label="Project">{c.project_name}</td>
                                <td data-label="Lineage">{lineage}</td>
                            </tr>
                        }
                    })
                    .collect_view()}
            </tbody>
        </table>
    }
    .into_any()
}
