//! The core of the feature-flag service: the domain (no I/O), the ports (store, cache) with their
//! adapters (PostgreSQL, SQLite, Redis, in-memory), the flag service and its wiring.
//!
//! Nothing here knows about HTTP or Lambda; the `flags-api` crate is the edge.

pub mod cache;
pub mod config;
pub mod domain;
pub mod rate_limit;
pub mod redis;
pub mod secret;
pub mod seed;
pub mod service;
pub mod store;
pub mod telemetry;
pub mod wiring;

pub use config::Config;
pub use service::FlagService;
pub use wiring::App;
