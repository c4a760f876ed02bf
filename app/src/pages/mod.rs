//! The console's pages. Each loads its data through a server function in a `Resource`,
//! so it renders on the server and hydrates without a second fetch.

mod container;
mod containers;
mod copy_dialog;
mod jobs;
mod layout;
mod live_job;
mod login;
mod sync_status;
mod widgets;

pub use container::ContainerPage;
pub use containers::ContainersPage;
pub use copy_dialog::CopyPage;
pub use jobs::JobsPage;
pub use layout::{Layout, NotFound};
pub use login::LoginPage;
pub use sync_status::SyncStatusPage;
