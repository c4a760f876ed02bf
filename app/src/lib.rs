#![recursion_limit = "512"]
//! The doppel console: pages, components, the types shared with the REST API, and the
//! server functions. Compiled twice: with `ssr` into the server, with `hydrate` into WASM.

pub mod format;
pub mod model;
pub mod rules_text;
pub mod server_fns;

#[cfg(feature = "ssr")]
pub mod backend;

mod pages;

use leptos::prelude::*;
use leptos_meta::{provide_meta_context, MetaTags, Stylesheet, Title};
use leptos_router::{
    components::{ParentRoute, Route, Router, Routes},
    path, Lazy, SsrMode,
};

/// The HTML document around the app, rendered by the server only.
pub fn shell(options: LeptosOptions) -> impl IntoView {
    view! {
        <!DOCTYPE html>
        <html lang="en">
            <head>
                <meta charset="utf-8"/>
                <meta name="viewport" content="width=device-width, initial-scale=1"/>
                <link rel="icon" href="/favicon.svg" type="image/svg+xml"/>
                <AutoReload options=options.clone()/>
                <HydrationScripts options/>
                <MetaTags/>
            </head>
            <body>
                <App/>
            </body>
        </html>
    }
}

/// Every page is rendered whole before it is sent (`SsrMode::Async`): the data pages need is
/// a few local queries, and a complete page works in a browser without JavaScript (or
/// before the WASM arrives), where streamed-out-of-order fragments would stay "Loading…".
#[component]
pub fn App() -> impl IntoView {
    provide_meta_context();

    view! {
        <Stylesheet id="leptos" href="/pkg/doppel.css"/>
        <Title text="doppel"/>
        <Router>
            <Routes fallback=pages::NotFound>
                <Route path=path!("/login") view=pages::LoginPage ssr=SsrMode::Async/>
                <ParentRoute path=path!("") view=pages::Layout ssr=SsrMode::Async>
                    <Route path=path!("") view=pages::ContainersPage ssr=SsrMode::Async/>
                    <Route path=path!("/containers") view=pages::ContainersPage ssr=SsrMode::Async/>
                    <Route path=path!("/containers/:id") view={Lazy::<pages::ContainerRoute>::new()} ssr=SsrMode::Async/>
                    <Route path=path!("/containers/:id/copy") view={Lazy::<pages::CopyRoute>::new()} ssr=SsrMode::Async/>
                    <Route path=path!("/sync-status") view={Lazy::<pages::SyncStatusRoute>::new()} ssr=SsrMode::Async/>
                    <Route path=path!("/jobs") view={Lazy::<pages::JobsRoute>::new()} ssr=SsrMode::Async/>
                    <Route path=path!("/settings") view={Lazy::<pages::SettingsRoute>::new()} ssr=SsrMode::Async/>
                    <Route path=path!("/audit") view={Lazy::<pages::AuditRoute>::new()} ssr=SsrMode::Async/>
                    <Route path=path!("/admin") view={Lazy::<pages::AdminRoute>::new()} ssr=SsrMode::Async/>
                    <Route path=path!("/servers") view={Lazy::<pages::ServersRoute>::new()} ssr=SsrMode::Async/>
                </ParentRoute>
            </Routes>
        </Router>
    }
}
