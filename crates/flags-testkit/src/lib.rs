//! Test and benchmark support for the feature-flag service. **Never shipped**: only
//! integration tests (`dev-dependencies`) and the `flags-bench` evidence crate use it, and it
//! depends on no `flags-*` crate so that any of them can use it without a dependency cycle.
//!
//! - [`OwnedRedis`]: a `redis-server` on a spare port that the test owns, so it can be killed,
//!   restarted, frozen (SIGSTOP), thawed and demoted without touching the shared server;
//! - [`TcpProxy`]: a proxy between the service and a server that passes, cuts or delays traffic;
//! - [`free_port`]: a local port nothing listens on right now; [`unique`]: a name of its own;
//! - [`emulator`]: the Lambda runtime emulator and the function processes that poll it;
//! - [`postgres`]: a PostgreSQL schema of its own per test or benchmark.

pub mod emulator;
pub mod postgres;
pub mod proxy;
pub mod redis_server;

pub use proxy::{ProxyMode, TcpProxy};
pub use redis_server::{OwnedRedis, client_count, redis_cli};

/// A name no other test of this run uses: `prefix` then 12 hex digits (schemas, environments,
/// temporary folders).
pub fn unique(prefix: &str) -> String {
    format!(
        "{prefix}{}",
        &uuid::Uuid::new_v4().simple().to_string()[..12]
    )
}

/// A local port nothing listens on right now (another process may take it later: use it at once).
pub fn free_port() -> std::io::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}
