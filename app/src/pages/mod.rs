//! The console's pages. Each loads its data through a server function in a `Resource`,
//! so it renders on the server and hydrates without a second fetch.

mod account;
mod admin;
mod audit;
mod container;
mod containers;
mod copy_dialog;
mod jobs;
mod layout;
mod live_job;
mod login;
mod process;
mod servers;
mod settings;
mod sync_status;
mod widgets;

pub use account::SettingsPage;
pub use admin::AdminPage;
pub use audit::AuditPage;
pub use container::ContainerPage;
pub use containers::ContainersPage;
pub use copy_dialog::CopyPage;
pub use jobs::JobsPage;
use layout::{current_user, PlatformAdminsOnly};
pub use layout::{Layout, NotFound};
pub use login::LoginPage;
pub use servers::ServersPage;
pub use sync_status::SyncStatusPage;

// Pages other than the first ones a user sees are lazy routes: their code is a separate
// WASM chunk (cut by `tools/wasm-split` in `make build`), fetched when the page is first opened, so the
// initial download stays small.
use leptos::prelude::*;
use leptos_router::{lazy_route, LazyRoute};

macro_rules! lazy_page {
    ($route:ident, $page:ident) => {
        pub struct $route;

        #[lazy_route]
        impl LazyRoute for $route {
            fn data() -> Self {
                $route
            }

            fn view(_this: Self) -> AnyView {
                view! { <$page/> }.into_any()
            }
        }
    };
}

lazy_page!(ContainerRoute, ContainerPage);
lazy_page!(CopyRoute, CopyPage);
lazy_page!(SyncStatusRoute, SyncStatusPage);
lazy_page!(JobsRoute, JobsPage);
lazy_page!(SettingsRoute, SettingsPage);
lazy_page!(AuditRoute, AuditPage);
lazy_page!(AdminRoute, AdminPage);
lazy_page!(ServersRoute, ServersPage);
