//! Settings (`/settings`): one's own password and API tokens.

use leptos::prelude::*;
use leptos_meta::Title;

use super::widgets::{one_error_at_a_time, ErrorBox, Loading};
use crate::format;
use crate::server_fns::{list_my_tokens, ChangeMyPassword, CreateMyToken, RevokeMyToken};

#[component]
pub fn SettingsPage() -> impl IntoView {
    let create = ServerAction::<CreateMyToken>::new();
    let revoke = ServerAction::<RevokeMyToken>::new();
    let password = ServerAction::<ChangeMyPassword>::new();
    one_error_at_a_time(vec![create.into(), revoke.into(), password.into()]);
    let tokens = Resource::new(
        move || (create.version().get(), revoke.version().get()),
        |_| list_my_tokens(),
    );
    view! {
        <Title text="Settings · doppel"/>
        <div class="page-head">
            <h1>"Settings"</h1>
        </div>
        <super::widgets::PostedResult page="/settings"/>
        <section class="card">
            <h2>"API tokens"</h2>
            <p class="muted">
                "For scripts and CI: send " <code>"Authorization: Bearer <token>"</code>
                ". A token can do what you can (or only read); its secret is shown once."
            </p>
            <Suspense fallback=Loading>
                {move || Suspend::new(async move {
                    match tokens.await {
                        Ok(list) if list.is_empty() => view! { <p class="muted">"No tokens."</p> }.into_any(),
                        Ok(list) => view! {
                            <table class="grid tokens">
                                <thead>
                                    <tr>
                                        <th scope="col">"Name"</th>
                                        <th scope="col">"Created"</th>
                                        <th scope="col">"Last used"</th>
                                        <th scope="col">"Expires"</th>
                                        <th scope="col">"Rights"</th>
                                        <th scope="col"><span class="visually-hidden">"Revoke"</span></th>
                                    </tr>
                                </thead>
                                <tbody>
                                    {list
                                        .into_iter()
                                        .map(|t| view! {
                                            <tr>
                                                <td data-label="Name">{t.name.clone()}</td>
                                                <td data-label="Created">{format::utc(t.created_at)}</td>
                                                <td data-label="Last used">{t.last_used_at.map(format::utc).unwrap_or_else(|| "never".into())}</td>
                                                <td data-label="Expires">{t.expires_at.map(format::utc).unwrap_or_else(|| "never".into())}</td>
                                                <td data-label="Rights">
                                                    {if t.read_only { "read only" } else { "read and write" }}
                                                    {t.projects.as_ref().map(|p| format!(", {} project(s)", p.len()))}
                                                </td>
                                                <td>
                                                    <ActionForm action=revoke attr:class="inline-form">
                                                        <input type="hidden" name="id" value=t.id.clone()/>
                                                        <button type="submit" class="danger" aria-label=format!("Revoke {}", t.name)>"Revoke"</button>
                                                    </ActionForm>
                                                </td>
                                            </tr>
                                        })
                                        .collect_view()}
                                </tbody>
                            </table>
                        }
                            .into_any(),
                        Err(error) => view! { <ErrorBox error/> }.into_any(),
                    }
                })}
            </Suspense>
            <h3>"New token"</h3>
            <ActionForm action=create attr:class="stacked-form">
                <label for="token-name">"Name"</label>
                <input id="token-name" name="name" required placeholder="ci-deploy"/>
                <label for="token-expiry">"Expires in (days; empty: never)"</label>
                <input id="token-expiry" name="expires_in_days" inputmode="numeric"/>
                <label class="check">
                    <input type="checkbox" name="read_only"/>
                    " Read only"
                </label>
                <button type="submit" class="primary" disabled=move || create.pending().get()>"Create token"</button>
            </ActionForm>
            {move || match create.value().get().map(Result::flatten) {
                Some(Ok(made)) => view! {
                    <div class="notice" role="status">
                        <p>"Token " <strong>{made.token.name}</strong> " created. Copy its secret now; it is not shown again:"</p>
                        <code class="secret">{made.secret}</code>
                    </div>
                }
                    .into_any(),
                Some(Err(error)) => view! { <ErrorBox error/> }.into_any(),
                None => ().into_any(),
            }}
            {move || revoke.value().get().map(Result::flatten).and_then(Result::err).map(|error| view! { <ErrorBox error/> })}
        </section>
        <section class="card">
            <h2>"Password"</h2>
            <ActionForm action=password attr:class="stacked-form">
                <label for="current-password">"Current password"</label>
                <input id="current-password" name="current" type="password" autocomplete="current-password" required/>
                <label for="new-password">"New password (at least 8 characters)"</label>
                <input id="new-password" name="new" type="password" autocomplete="new-password" minlength="8" required/>
                <button type="submit" disabled=move || password.pending().get()>"Change password"</button>
            </ActionForm>
            {move || match password.value().get().map(Result::flatten) {
                Some(Ok(())) => view! {
                    <p class="notice" role="status">"Password changed. Your sessions have ended: " <a href="/login">"log in again"</a> "."</p>
                }
                    .into_any(),
                Some(Err(error)) => view! { <ErrorBox error/> }.into_any(),
                None => ().into_any(),
            }}
        </section>
    }
}
