//! Administration (`/admin`): users (platform admins) and projects with their members
//! (platform admins, and each project's admins for theirs).

use leptos::prelude::*;
use leptos_meta::Title;

use super::widgets::{one_error_at_a_time, ErrorBox, Loading};
use crate::model::{ApiError, Project, Role};
use crate::server_fns::{
    list_members, list_projects, list_users, ChangeUser, CreateProject, CreateUser, DeleteProject,
    RemoveMember, ResetUserPassword, SetMember, UpdateProject,
};

/// A password shown once, or the error of the last attempt.
fn shown_once(
    answer: impl Fn() -> Option<Result<(String, String), ApiError>> + Send + Sync + 'static,
) -> impl IntoView {
    move || match answer() {
        Some(Ok((name, password))) => view! {
            <div class="notice" role="status">
                <p>"Password of " <strong>{name}</strong> ", shown once; give it to them:"</p>
                <code class="secret">{password}</code>
            </div>
        }
        .into_any(),
        Some(Err(error)) => view! { <ErrorBox error/> }.into_any(),
        None => ().into_any(),
    }
}

#[component]
pub fn AdminPage() -> impl IntoView {
    let create_user = ServerAction::<CreateUser>::new();
    let change_user = ServerAction::<ChangeUser>::new();
    let reset = ServerAction::<ResetUserPassword>::new();
    let create_project = ServerAction::<CreateProject>::new();
    let users = Resource::new(
        move || (create_user.version().get(), change_user.version().get()),
        |_| list_users(),
    );
    let me = super::current_user();
    let update_project = ServerAction::<UpdateProject>::new();
    let delete_project = ServerAction::<DeleteProject>::new();
    let projects = Resource::new(
        move || {
            (
                create_project.version().get(),
                update_project.version().get(),
                delete_project.version().get(),
            )
        },
        |_| list_projects(),
    );
    one_error_at_a_time(vec![
        create_user.into(),
        change_user.into(),
        reset.into(),
        create_project.into(),
        update_project.into(),
        delete_project.into(),
    ]);
    view! {
        <Title text="Administration · doppel"/>
        <div class="page-head">
            <h1>"Administration"</h1>
        </div>
        <super::widgets::PostedResult page="/admin"/>
        <Suspense fallback=Loading>
            {move || Suspend::new(async move {
                // Who is looking: nobody disables or demotes themselves (the server refuses
                // it), so their own row offers neither.
                let me = me.await.ok().flatten().map(|u| u.name).unwrap_or_default();
                // Platform admins only: anyone else sees the projects part alone.
                users.await.ok().map(|list| view! {
                    <section class="card">
                        <h2>"Users"</h2>
                        <table class="grid users">
                            <thead>
                                <tr>
                                    <th scope="col">"Name"</th>
                                    <th scope="col">"Platform admin"</th>
                                    <th scope="col">"State"</th>
                                    <th scope="col"><span class="visually-hidden">"Actions"</span></th>
                                </tr>
                            </thead>
                            <tbody>
                                {list.into_iter().map(|u| {
                                    let name = u.name.clone();
                                    let act = move |change: &'static str, label: String| {
                                        let name = name.clone();
                                        view! {
                                            <ActionForm action=change_user attr:class="inline-form">
                                                <input type="hidden" name="name" value=name/>
                                                <input type="hidden" name="change" value=change/>
                                                <button type="submit">{label}</button>
                                            </ActionForm>
                                        }
                                    };
                                    view! {
                                        <tr>
                                            <td data-label="Name">{u.name.clone()}</td>
                                            <td data-label="Platform admin">{if u.is_admin { "yes" } else { "no" }}</td>
                                            <td data-label="State">{if u.disabled { "disabled" } else { "active" }}</td>
                                            <td class="actions">
                                                {(u.name != me).then(|| view! {
                                                    {if u.disabled { act("enable", format!("Enable {}", u.name)) } else { act("disable", format!("Disable {}", u.name)) }}
                                                    {if u.is_admin { act("remove-admin", format!("Remove admin from {}", u.name)) } else { act("make-admin", format!("Make {} admin", u.name)) }}
                                                })}
                                                <ActionForm action=reset attr:class="inline-form">
                                                    <input type="hidden" name="name" value=u.name.clone()/>
                                                    <button type="submit">{format!("Reset password of {}", u.name)}</button>
                                                </ActionForm>
                                            </td>
                                        </tr>
                                    }
                                }).collect_view()}
                            </tbody>
                        </table>
                        {move || change_user.value().get().map(Result::flatten).and_then(Result::err).map(|error| view! { <ErrorBox error/> })}
                        {shown_once(move || reset.value().get().map(|r| r.flatten().map(|u| (u.user.name, u.password))))}
                        <h3>"New user"</h3>
                        <ActionForm action=create_user attr:class="stacked-form">
                            <label for="new-user-name">"Name"</label>
                            <input id="new-user-name" name="name" required/>
                            <label class="check"><input type="checkbox" name="is_admin"/>" Platform admin"</label>
                            <button type="submit" class="primary">"Create user"</button>
                        </ActionForm>
                        {shown_once(move || create_user.value().get().map(|r| r.flatten().map(|u| (u.user.name, u.password))))}
                    </section>
                })
            })}
        </Suspense>
        <section class="card">
            <h2>"Projects"</h2>
            <Suspense fallback=Loading>
                {move || Suspend::new(async move {
                    // Only platform admins may list users, and only they delete projects.
                    let platform_admin = users.await.is_ok();
                    match projects.await {
                        Ok(list) => list
                            .into_iter()
                            .filter(|p| matches!(p.role, None | Some(Role::Admin)))
                            .map(|p| view! {
                                <ProjectCard project=p update=update_project delete=delete_project platform_admin/>
                            })
                            .collect_view()
                            .into_any(),
                        Err(error) => view! { <ErrorBox error/> }.into_any(),
                    }
                })}
            </Suspense>
            <super::PlatformAdminsOnly>
                <h3>"New project"</h3>
                <ActionForm action=create_project attr:class="stacked-form">
                    <label for="new-project-name">"Name"</label>
                    <input id="new-project-name" name="name" required/>
                    <label for="new-project-description">"Description"</label>
                    <input id="new-project-description" name="description"/>
                    <button type="submit" class="primary">"Create project"</button>
                </ActionForm>
            </super::PlatformAdminsOnly>
            {move || create_project.value().get().map(Result::flatten).and_then(Result::err).map(|error| view! { <ErrorBox error/> })}
            {move || update_project.value().get().map(Result::flatten).and_then(Result::err).map(|error| view! { <ErrorBox error/> })}
            {move || delete_project.value().get().map(Result::flatten).and_then(Result::err).map(|error| view! { <ErrorBox error/> })}
        </section>
    }
}

/// A project: its name and description (its admins), its delete (platform admins, once the
/// name is typed, refused while it holds containers) and its members.
#[component]
fn ProjectCard(
    project: Project,
    update: ServerAction<UpdateProject>,
    delete: ServerAction<DeleteProject>,
    platform_admin: bool,
) -> impl IntoView {
    let Project {
        id,
        name,
        description,
        ..
    } = project.clone();
    let field = |what: &str| format!("project-{what}-{id}");
    let (name_field, description_field, confirm_field) =
        (field("name"), field("description"), field("confirm"));
    let (delete_id, delete_label, confirm_label) = (
        id.clone(),
        format!("Delete {name}"),
        format!("Type {name} to delete it"),
    );
    let delete_form = platform_admin.then(move || {
        view! {
            <ActionForm action=delete attr:class="inline-form delete-project">
                <input type="hidden" name="project_id" value=delete_id/>
                <label for=confirm_field.clone()>{confirm_label}</label>
                <input id=confirm_field name="confirm" autocomplete="off" required/>
                <button type="submit" class="danger">{delete_label}</button>
            </ActionForm>
        }
    });
    view! {
        <div class="project-card">
            <h3>{name.clone()}</h3>
            <ActionForm action=update attr:class="stacked-form">
                <input type="hidden" name="project_id" value=id/>
                <label for=name_field.clone()>{format!("Name of {name}")}</label>
                <input id=name_field name="name" value=name.clone() required/>
                <label for=description_field.clone()>{format!("Description of {name}")}</label>
                <textarea id=description_field name="description" rows="2">{description}</textarea>
                <button type="submit">{format!("Save {name}")}</button>
            </ActionForm>
            <ProjectMembers project/>
            {delete_form}
        </div>
    }
}

/// A project's members: roles changed, members removed and added.
#[component]
fn ProjectMembers(project: Project) -> impl IntoView {
    let set = ServerAction::<SetMember>::new();
    let remove = ServerAction::<RemoveMember>::new();
    one_error_at_a_time(vec![set.into(), remove.into()]);
    let id = project.id.clone();
    let members = Resource::new(
        move || (set.version().get(), remove.version().get()),
        move |_| list_members(id.clone()),
    );
    let pid = project.id.clone();
    view! {
        <div class="project-members">
            <h4>"Members"</h4>
            <Suspense fallback=Loading>
                {move || {
                    let pid = pid.clone();
                    Suspend::new(async move {
                        match members.await {
                            Ok(list) => view! {
                                <ul class="members">
                                    {list.into_iter().map(|m| {
                                        let label = format!("Remove {}", m.user_name);
                                        let pid = pid.clone();
                                        view! {
                                            <li>
                                                {m.user_name.clone()} ": " {m.role.as_str()}
                                                <ActionForm action=remove attr:class="inline-form">
                                                    <input type="hidden" name="project_id" value=pid/>
                                                    <input type="hidden" name="user_name" value=m.user_name.clone()/>
                                                    <button type="submit" class="link">{label}</button>
                                                </ActionForm>
                                            </li>
                                        }
                                    }).collect_view()}
                                </ul>
                            }
                            .into_any(),
                            Err(error) => view! { <ErrorBox error/> }.into_any(),
                        }
                    })
                }}
            </Suspense>
            <ActionForm action=set attr:class="inline-form add-member">
                <input type="hidden" name="project_id" value=project.id.clone()/>
                <label for=format!("member-{}", project.id)>{format!("Add to {} (or change the role of)", project.name)}</label>
                <input id=format!("member-{}", project.id) name="user_name" placeholder="user name" required/>
                <select name="role" aria-label=format!("Role in {}", project.name)>
                    <option value="viewer">"viewer"</option>
                    <option value="operator" selected>"operator"</option>
                    <option value="admin">"admin"</option>
                </select>
                <button type="submit">"Save member"</button>
            </ActionForm>
            {move || set.value().get().map(Result::flatten).and_then(Result::err).map(|error| view! { <ErrorBox error/> })}
            {move || remove.value().get().map(Result::flatten).and_then(Result::err).map(|error| view! { <ErrorBox error/> })}
        </div>
    }
}
