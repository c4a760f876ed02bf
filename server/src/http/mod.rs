//! The HTTP server's shape: the REST API (`api/`), the console (Leptos SSR + hydration and
//! its server functions), login and logout, and the middleware that resolves who is calling
//! (`session.rs`). Handlers parse and shape; the service decides.

pub(crate) mod agents;
mod api;
pub(crate) mod listener;
mod open;
pub(crate) mod session;

use std::sync::Arc;

use app::backend::SharedBackend;
use app::{shell, App};
use axum::extract::FromRef;
use axum::http::{header, HeaderValue};
use axum::middleware;
use axum::routing::{any, get, post};
use axum::Router;
use leptos::prelude::*;
use leptos_axum::{generate_route_list, LeptosRoutes};
use tower_http::set_header::SetResponseHeaderLayer;
use tower_http::trace::TraceLayer;

use crate::service::Service;

pub use api::document as openapi_document;

#[derive(Clone)]
pub struct AppState {
    pub service: Arc<Service>,
    /// Behind an `Arc`: axum clones the state for every extractor of every request, and
    /// the options are a dozen strings only the console's routes read.
    pub leptos_options: Arc<LeptosOptions>,
    /// Event streams open per user (capped).
    pub(crate) streams: Arc<api::StreamSlots>,
}

impl AppState {
    pub fn new(
        service: Arc<Service>,
        leptos_options: LeptosOptions,
        streams_per_user: usize,
    ) -> AppState {
        AppState {
            service,
            leptos_options: Arc::new(leptos_options),
            streams: Arc::new(api::StreamSlots::new(streams_per_user)),
        }
    }
}

impl FromRef<AppState> for LeptosOptions {
    fn from_ref(s: &AppState) -> Self {
        (*s.leptos_options).clone()
    }
}

impl FromRef<AppState> for Arc<Service> {
    fn from_ref(s: &AppState) -> Self {
        s.service.clone()
    }
}

/// Serving, and whether containers can run here (and why not).
async fn healthz(
    axum::extract::State(st): axum::extract::State<AppState>,
) -> axum::Json<app::model::Health> {
    axum::Json(st.service.health())
}

pub fn router(state: AppState) -> Router {
    let backend: SharedBackend = state.service.clone();
    let fallback_backend = backend.clone();
    let routes = generate_route_list(App);
    let options = (*state.leptos_options).clone();
    // The console's JS, WASM and CSS: brotli or gzip copies made at build time
    // (scripts/precompress.mjs) go to browsers that accept them; the plain file otherwise.
    let pkg_dir =
        std::path::Path::new(options.site_root.as_ref()).join(options.site_pkg_dir.as_ref());
    let pkg = tower_http::services::ServeDir::new(pkg_dir)
        .precompressed_br()
        .precompressed_gzip();
    Router::new()
        .nest_service("/pkg", pkg)
        .nest("/api/v1", api::routes())
        .route("/auth/login", post(session::login))
        .route("/auth/logout", post(session::logout))
        .route("/healthz", get(healthz))
        .route("/containers/{id}/open", get(open::open_root))
        .route("/containers/{id}/open/", any(open::open_index))
        .route("/containers/{id}/open/{*rest}", any(open::open_page))
        .leptos_routes_with_context(
            &state,
            routes,
            move || provide_context(backend.clone()),
            move || shell(options.clone()),
        )
        .fallback(leptos_axum::file_and_error_handler_with_context::<
            AppState,
            _,
        >(
            move || provide_context(fallback_backend.clone()), shell
        ))
        .layer(middleware::from_fn_with_state(
            state.clone(),
            session::resolve_caller,
        ))
        .layer(SetResponseHeaderLayer::if_not_present(
            header::X_CONTENT_TYPE_OPTIONS,
            HeaderValue::from_static("nosniff"),
        ))
        .layer(SetResponseHeaderLayer::if_not_present(
            header::X_FRAME_OPTIONS,
            HeaderValue::from_static("DENY"),
        ))
        .layer(SetResponseHeaderLayer::if_not_present(
            header::REFERRER_POLICY,
            HeaderValue::from_static("same-origin"),
        ))
        .layer(TraceLayer::new_for_http())
        .with_state(state)
}
