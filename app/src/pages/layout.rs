use leptos::prelude::*;
use leptos_router::components::{Outlet, A};

use crate::model::{ApiError, UserInfo};
use crate::server_fns::{get_runtime_health, whoami};

/// Who is logged in, asked once per page load by the layout and shared with the pages
/// (a page shows forms only to those who may use them).
#[derive(Clone, Copy)]
pub struct LoggedIn(pub Resource<Result<Option<UserInfo>, ApiError>>);

/// The logged-in user's resource: the layout's, or a new one outside it.
pub fn current_user() -> Resource<Result<Option<UserInfo>, ApiError>> {
    use_context::<LoggedIn>()
        .map(|c| c.0)
        .unwrap_or_else(|| Resource::new(|| (), |_| whoami()))
}

/// What only platform admins are offered (a form whose use anyone else would see
/// refused): nothing at all for everyone else.
#[component]
pub fn PlatformAdminsOnly(children: ChildrenFn) -> impl IntoView {
    let me = current_user();
    view! {
        <Suspense fallback=|| ()>
            {move || {
                let children = children.clone();
                Suspend::new(async move {
                    matches!(me.await, Ok(Some(user)) if user.is_admin).then(|| children())
                })
            }}
        </Suspense>
    }
}

/// Navigation around every page but the login.
#[component]
pub fn Layout() -> impl IntoView {
    let me = Resource::new(|| (), |_| whoami());
    provide_context(LoggedIn(me));
    let runtime = Resource::new(|| (), |_| get_runtime_health());
    view! {
        <header class="topbar">
            <a class="brand" href="/">"doppel"</a>
            <nav aria-label="Main">
                <A href="/containers">"Containers"</A>
                <A href="/sync-status">"Sync status"</A>
                <A href="/jobs">"Jobs"</A>
                <A href="/servers">"Servers"</A>
                <A href="/audit">"Audit"</A>
                <A href="/admin">"Admin"</A>
            </nav>
            <div class="user">
                <Suspense fallback=|| ()>
                    {move || Suspend::new(async move {
                        match me.await {
                            Ok(Some(user)) => {
                                view! {
                                    <a class="user-name" href="/settings">{user.name}</a>
                                    <form method="post" action="/auth/logout">
                                        <button type="submit" class="link">"Log out"</button>
                                    </form>
                                }
                                    .into_any()
                            }
                            _ => view! { <a href="/login">"Log in"</a> }.into_any(),
                        }
                    })}
                </Suspense>
            </div>
        </header>
        <Suspense fallback=|| ()>
            {move || Suspend::new(async move {
                match runtime.await {
                    Ok(r) if !r.available => Some(view! {
                        <p class="warning-box runtime-missing" role="status">
                            "Containers cannot run on this doppel: "
                            {r.reason.unwrap_or_default()}
                            ". They stay stopped; copies and syncs work."
                        </p>
                    }),
                    _ => None,
                }
            })}
        </Suspense>
        <main class="content">
            <Outlet/>
        </main>
    }
}

#[component]
pub fn NotFound() -> impl IntoView {
    #[cfg(feature = "ssr")]
    if let Some(resp) = use_context::<leptos_axum::ResponseOptions>() {
        resp.set_status(http::StatusCode::NOT_FOUND);
    }
    view! {
        <main class="content">
            <h1>"Page not found"</h1>
            <p><a href="/containers">"Back to the containers"</a></p>
        </main>
    }
}
