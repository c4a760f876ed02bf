//! Small pieces the pages share.

use leptos::prelude::*;

use crate::model::{ApiError, ContainerStatus, ErrorCode};

#[component]
pub fn StatusBadge(status: ContainerStatus) -> impl IntoView {
    view! { <span class=format!("badge status-{}", status.as_str())>{status.as_str()}</span> }
}

/// How a page shows an error from the backend; an expired session links to the login.
#[component]
pub fn ErrorBox(error: ApiError) -> impl IntoView {
    let login = (error.code == ErrorCode::Unauthorized)
        .then(|| view! { " " <a href="/login">"Log in again"</a> });
    view! {
        <div class="error-box" role="alert">
            <strong>{error.for_people()}</strong>
            {login}
        </div>
    }
}

/// A page whose own data could not be loaded: the error, and, rendered on the server, the
/// error's status as the page's (a container that is not there is a 404, not a page that
/// says so with a 200).
#[component]
pub fn PageError(error: ApiError) -> impl IntoView {
    #[cfg(feature = "ssr")]
    if let Some(resp) = use_context::<leptos_axum::ResponseOptions>() {
        if let Ok(status) = http::StatusCode::from_u16(error.code.status()) {
            resp.set_status(status);
        }
    }
    view! { <ErrorBox error/> }
}

/// What a form of the page at `page`, posted without JavaScript, came back with: its
/// error (`?error=`) or a secret shown once (`take_shown_once`). With JavaScript the
/// forms' actions show both themselves, and the query holds no error.
#[component]
pub fn PostedResult(page: &'static str) -> impl IntoView {
    let query = leptos_router::hooks::use_query_map();
    let error = move || {
        query.with(|q| {
            q.get("error")
                .filter(|e| !e.is_empty())
                .map(|e| crate::model::humane_message(&e))
        })
    };
    let once = Resource::new(
        || (),
        move |_| crate::server_fns::take_shown_once(page.to_string()),
    );
    view! {
        {move || error().map(|message| view! { <p class="error-box" role="alert">{message}</p> })}
        <Suspense fallback=|| ()>
            {move || Suspend::new(async move {
                once.await.ok().flatten().map(|(what, secret)| view! {
                    <div class="notice" role="status">
                        <p>{what}</p>
                        <code class="secret">{secret}</code>
                    </div>
                })
            })}
        </Suspense>
    }
}

/// Without JavaScript nothing follows a job live, so a page showing one still under way
/// reloads itself every 2 s (a refresh inside `noscript`: browsers running scripts ignore
/// it, and the live view updates them instead). Set as inner HTML so hydration leaves it be.
#[component]
pub fn ReloadWithoutScript() -> impl IntoView {
    view! { <noscript inner_html=r#"<meta http-equiv="refresh" content="2">"#></noscript> }
}

#[component]
pub fn Loading() -> impl IntoView {
    view! { <p class="loading">"Loading…"</p> }
}

/// One form of a page, as `one_error_at_a_time` sees it: whether it is being sent, and how
/// to clear the error it shows.
pub struct Shown {
    sending: Signal<bool>,
    clear_error: Callback<()>,
}

impl<S, T> From<ServerAction<S>> for Shown
where
    S: leptos::server_fn::ServerFn<Output = Result<T, ApiError>, Error = ApiError>
        + Clone
        + Send
        + Sync
        + 'static,
    T: Send + Sync + 'static,
{
    fn from(action: ServerAction<S>) -> Shown {
        Shown {
            sending: action.pending().into(),
            clear_error: Callback::new(move |()| {
                let failed = action
                    .value()
                    .with_untracked(|v| matches!(v, Some(Err(_) | Ok(Err(_)))));
                if failed {
                    action.clear();
                }
            }),
        }
    }
}

/// Of several forms on one page, only the one used last shows its error: sending one
/// clears the others' (an error stayed beside the later success of another form, and
/// errors piled up). What succeeded stays: a secret shown once is not taken away by
/// other work on the page.
pub fn one_error_at_a_time(forms: Vec<Shown>) {
    let clears: Vec<Callback<()>> = forms.iter().map(|f| f.clear_error).collect();
    for (i, form) in forms.into_iter().enumerate() {
        let others: Vec<Callback<()>> = clears
            .iter()
            .enumerate()
            .filter(|(j, _)| *j != i)
            .map(|(_, c)| *c)
            .collect();
        let sending = form.sending;
        Effect::new(move |_| {
            if sending.get() {
                for clear in &others {
                    clear.run(());
                }
            }
        });
    }
}
