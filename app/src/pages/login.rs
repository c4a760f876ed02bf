use leptos::prelude::*;
use leptos_meta::Title;
use leptos_router::hooks::use_query_map;

/// The login form. A plain HTML form posted to `/auth/login` (handled by the server,
/// which sets the HttpOnly session cookie), so it works before and after hydration.
#[component]
pub fn LoginPage() -> impl IntoView {
    let query = use_query_map();
    let failed = move || query.with(|q| q.get("error").is_some());
    let next = move || query.with(|q| q.get("next").unwrap_or_default());
    view! {
        <Title text="Log in · doppel"/>
        <main class="login">
            <form class="card login-card" method="post" action="/auth/login">
                <h1 class="brand">"doppel"</h1>
                <p class="muted">"Copy containers, keep the copies in sync."</p>
                <Show when=failed>
                    <p class="error-box" role="alert">"Wrong user name or password."</p>
                </Show>
                <input type="hidden" name="next" value=next/>
                <label for="username">"User name"</label>
                <input id="username" name="username" autocomplete="username" required autofocus/>
                <label for="password">"Password"</label>
                <input
                    id="password"
                    name="password"
                    type="password"
                    autocomplete="current-password"
                    required
                />
                <button type="submit" class="primary">"Log in"</button>
            </form>
        </main>
    }
}
