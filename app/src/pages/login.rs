use leptos::prelude::*;
use leptos_meta::Title;
use leptos_router::hooks::use_query_map;

/// The login form. A plain HTML form posted to `/auth/login` (handled by the server,
/// which sets the HttpOnly session cookie), so it works before and after hydration.
#[component]
pub fn LoginPage() -> impl IntoView {
    let query = use_query_map();
    let error = move || query.with(|q| q.get("error"));
    let failed = move || error().is_some();
    // `wait`: the server refused the attempt after too many failures.
    let message = move || match error().as_deref() {
        Some("wait") => "Too many failed attempts. Wait a minute, then try again.",
        _ => "Wrong user name or password.",
    };
    let next = move || query.with(|q| q.get("next").unwrap_or_default());
    view! {
        <Title text="Log in · doppel"/>
        <main class="login">
            <form class="card login-card" method="post" action="/auth/login">
                <h1 class="brand">"doppel"</h1>
                <p class="muted">"Copy containers, keep the copies in sync."</p>
                <Show when=failed>
                    <p class="error-box" role="alert">{message}</p>
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
