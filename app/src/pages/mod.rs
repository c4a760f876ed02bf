//! The console's pages. Each loads its data through a server function in a `Resource`,
//! so it renders on the server and hydrates without a second fetch.

mod container;
mod containers;
mod copy_dialog;
mod layout;
mod live_job;
mod login;
mod widgets;

pub use container::ContainerPage;
pub use containers::ContainersPage;
pub use layout::{Layout, NotFound};
pub use login::LoginPage;
