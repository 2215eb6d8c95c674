//! Shared helpers for tests that run against real PostgreSQL and Redis servers.
//!
//! Servers are found through `DATABASE_URL` (PostgreSQL) and `REDIS_URL`, defaulting to the
//! local ones. A missing server fails the test loudly: these tests are never skipped.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

pub mod service;
pub mod store_contract;

use flags_core::domain::{Environment, FlagKey, NewFlag, Rollout};
use flags_core::store::{FlagStore, PostgresStore, SqliteStore};
pub use flags_testkit::OwnedRedis;
use std::sync::Arc;
use std::time::{Duration, Instant};

pub const DEFAULT_DATABASE_URL: &str = "postgres://postgres@127.0.0.1:5432/test";
pub const DEFAULT_REDIS_URL: &str = "redis://127.0.0.1:6379";

pub fn database_url() -> String {
    std::env::var("DATABASE_URL")
        .ok()
        .filter(|u| u.starts_with("postgres"))
        .unwrap_or_else(|| DEFAULT_DATABASE_URL.to_owned())
}

pub fn redis_url() -> String {
    std::env::var("REDIS_URL")
        .ok()
        .filter(|u| !u.is_empty())
        .unwrap_or_else(|| DEFAULT_REDIS_URL.to_owned())
}

pub use flags_testkit::unique;

/// A fresh environment name per test, so tests sharing one Redis never see each other's keys.
pub fn unique_env() -> Environment {
    Environment::parse(&unique("t")).unwrap()
}

pub fn key(value: &str) -> FlagKey {
    FlagKey::parse(value).unwrap()
}

pub fn new_flag(key_name: &str, enabled: bool, rollout: i64) -> NewFlag {
    NewFlag {
        flag_key: key(key_name),
        enabled,
        rollout: Rollout::new(rollout).unwrap(),
        description: None,
    }
}

/// A PostgreSQL store in a schema of its own, migrated, so tests run in parallel.
pub async fn postgres_store() -> Arc<PostgresStore> {
    let url = postgres_schema_url().await;
    Arc::new(PostgresStore::connect_lazy(&url, 4).unwrap())
}

/// A fresh, migrated PostgreSQL schema, as a URL whose connections use it (for `App::build`).
pub async fn postgres_schema_url() -> String {
    let url = flags_testkit::postgres::fresh_schema(&database_url(), &unique("test_"))
        .await
        .unwrap_or_else(|e| panic!("{e}; start PostgreSQL or set DATABASE_URL"));
    let store = PostgresStore::connect_lazy(&url, 1).unwrap();
    store.migrate().await.expect("migrations apply");
    store.pool().close().await;
    url
}

/// A SQLite store in a file of its own under the system temp folder, migrated.
pub async fn sqlite_store() -> Arc<SqliteStore> {
    let path = std::env::temp_dir().join(format!("{}.db", unique("flags-test-")));
    let store = SqliteStore::connect_lazy(&format!("sqlite://{}", path.display()), 4).unwrap();
    store.migrate().await.expect("migrations apply");
    Arc::new(store)
}

/// A raw Redis client for inspecting what the adapter wrote.
pub async fn redis_client(url: &str) -> fred::prelude::Client {
    use fred::prelude::*;
    let client = Builder::from_config(Config::from_url(url).unwrap())
        .with_connection_config(|c| c.connection_timeout = Duration::from_secs(2))
        .with_performance_config(|p| p.default_command_timeout = Duration::from_secs(2))
        .build()
        .unwrap();
    client.init().await.unwrap_or_else(|e| {
        panic!("Redis is required for this test and is not reachable at {url} ({e})")
    });
    client
}

/// A Redis server owned by one test, on a spare port (the test kit's): it may be killed, frozen
/// and restarted without touching the shared server. `DEBUG` is allowed: `DEBUG POPULATE`
/// fills it with a million keys in a second.
pub async fn spare_redis() -> OwnedRedis {
    OwnedRedis::start_with_args(&["--enable-debug-command", "local"])
        .await
        .expect("redis-server must be installed for the fault tests")
}

/// Polls `check` every 50 ms until it returns true or `limit` passes.
pub async fn eventually<F, Fut>(limit: Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + limit;
    loop {
        if check().await {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

pub fn as_dyn_store<S: FlagStore + 'static>(store: Arc<S>) -> Arc<dyn FlagStore> {
    store
}

pub fn env(name: &str) -> Environment {
    Environment::parse(name).unwrap()
}
