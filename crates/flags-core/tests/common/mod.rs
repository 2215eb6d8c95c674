//! Shared helpers for tests that run against real PostgreSQL and Redis servers.
//!
//! Servers are found through `DATABASE_URL` (PostgreSQL) and `REDIS_URL`, defaulting to the
//! local ones. A missing server fails the test loudly: these tests are never skipped.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

pub mod service;
pub mod store_contract;

use flags_core::domain::{Environment, FlagKey, NewFlag, Rollout};
use flags_core::store::{FlagStore, PostgresStore, SqliteStore};
use sqlx::postgres::PgConnectOptions;
use sqlx::{ConnectOptions, Connection};
use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::str::FromStr;
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

pub fn unique(prefix: &str) -> String {
    format!(
        "{prefix}{}",
        &uuid::Uuid::new_v4().simple().to_string()[..12]
    )
}

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
    let url = database_url();
    let schema = unique("test_");
    let options = PgConnectOptions::from_str(&url).expect("DATABASE_URL must be a postgres:// URL");
    let mut admin = options.connect().await.unwrap_or_else(|e| {
        panic!("PostgreSQL is required for this test and is not reachable ({e}); start it or set DATABASE_URL")
    });
    sqlx::query(&format!("CREATE SCHEMA {schema}"))
        .execute(&mut admin)
        .await
        .unwrap();
    admin.close().await.unwrap();
    let store = PostgresStore::with_options(options.options([("search_path", schema.as_str())]), 4);
    store.migrate().await.expect("migrations apply");
    Arc::new(store)
}

/// A fresh, migrated PostgreSQL schema, as a URL whose connections use it (for `App::build`).
pub async fn postgres_schema_url() -> String {
    let store = postgres_store().await;
    let schema: String = sqlx::query_scalar("SELECT current_schema()")
        .fetch_one(store.pool())
        .await
        .unwrap();
    let base = database_url();
    let separator = if base.contains('?') { '&' } else { '?' };
    format!("{base}{separator}options=-c%20search_path%3D{schema}")
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

/// A Redis server owned by one test, on a spare port: it may be stopped, frozen and restarted
/// without touching the shared server on 6379.
pub struct SpareRedis {
    pub port: u16,
    child: Option<Child>,
}

impl SpareRedis {
    pub fn start() -> Self {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut redis = Self { port, child: None };
        redis.restart();
        redis
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// (Re)starts the server on the same port and waits until it answers.
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "already running");
        let child = Command::new("redis-server")
            .args([
                "--port",
                &self.port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                // DEBUG POPULATE fills a test's server with a million keys in a second.
                "--enable-debug-command",
                "local",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server must be installed for the fault tests");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "spare redis did not start on {}",
                self.port
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Kills the server abruptly (no clean shutdown), as a crash or node loss would.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            signal(child.id(), "CONT");
            child.kill().unwrap();
            child.wait().unwrap();
        }
    }

    pub fn freeze(&self) {
        signal(self.pid(), "STOP");
    }

    pub fn thaw(&self) {
        signal(self.pid(), "CONT");
    }
}

impl Drop for SpareRedis {
    fn drop(&mut self) {
        self.kill();
    }
}

fn signal(pid: u32, name: &str) {
    let status = Command::new("kill")
        .arg(format!("-{name}"))
        .arg(pid.to_string())
        .status()
        .unwrap();
    assert!(status.success(), "kill -{name} {pid}");
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
