#![recursion_limit = "512"]
//! doppel's server: the REST API, the console's backend, auth, the database and the storage
//! engine. `main.rs` is only the command line; everything here is testable on its own.

pub mod auth;
pub mod config;
pub mod db;
pub mod engine;
pub mod events;
pub mod ids;
pub mod inventory;
pub mod jobs;
pub mod operations;
pub mod rest;
pub mod seed;
pub mod serve;
pub mod service;
pub mod sse;
pub mod sync_status;
pub mod web;
