#![recursion_limit = "512"]
//! doppel's server: the REST API, the console's backend, auth, the database and the storage
//! engine. `main.rs` is only the command line; everything here is testable on its own.
//!
//! Layers, each using only those below it (`tests/layers.rs` checks the `use` lines):
//! `serve`, `agent` (composition roots) > `http` > `seed` > `service` > `jobs` >
//! `lifecycle`, `auth`, `remote` > `store`, `events` > `config` > `engine`, `runtime`, `tls`,
//! `ids`, `rng`. See ARCHITECTURE.md.

pub mod agent;
pub mod auth;
pub mod config;
pub mod engine;
mod events;
mod http;
mod ids;
mod jobs;
mod lifecycle;
pub mod remote;
pub mod rng;
pub mod runtime;
mod seed;
pub mod serve;
pub mod service;
pub mod store;
pub mod tls;

pub use http::openapi_document;
pub use jobs::Limits;
