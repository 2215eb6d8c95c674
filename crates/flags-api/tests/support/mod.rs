//! Helpers of the Lambda emulator tests: a migrated, seeded PostgreSQL schema per test, the shared
//! Redis on a database index of its own, local signing keys, the tools `make test` installs, and
//! direct access to the rows and keys the functions are expected to change. Missing servers or
//! tools fail loudly: no test is skipped.
//!
//! Deliberately self-contained (only the libraries of flags-core and flags-local and this
//! package's dev-dependencies), so that this test target does not depend on another crate's test
//! helpers.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use flags_api::local_keys::LocalKeys;
use flags_core::Config;
use sqlx::{Connection, PgConnection};
use std::path::PathBuf;
use std::time::Duration;

pub fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .unwrap()
}

pub fn database_url() -> String {
    std::env::var("DATABASE_URL")
        .ok()
        .filter(|u| u.starts_with("postgres"))
        .unwrap_or_else(|| "postgres://postgres@127.0.0.1:5432/test".to_owned())
}

/// The shared Redis (`REDIS_URL`, default `redis://127.0.0.1:6379`) on database index `db`.
pub fn redis_url_without_flush(db: u8) -> String {
    let base = std::env::var("REDIS_URL")
        .ok()
        .filter(|u| !u.is_empty())
        .unwrap_or_else(|| "redis://127.0.0.1:6379".into());
    format!(
        "{}/{db}",
        base.trim_end_matches('/')
            .split('/')
            .take(3)
            .collect::<Vec<_>>()
            .join("/")
    )
}

/// The shared Redis on a database index that only one test uses, emptied first. Indexes taken:
/// 0 (flags-core tests), 2..=9 (flags-local's HTTP tests), 11..=13 (this test target).
pub async fn redis_url(db: u8) -> String {
    use fred::prelude::ClientLike;
    let url = redis_url_without_flush(db);
    let client = redis_client(&url).await;
    let _: () = client
        .custom(fred::cmd!("FLUSHDB"), Vec::<String>::new())
        .await
        .unwrap();
    client.quit().await.unwrap();
    url
}

/// A plain client of the Redis at `url`, for looking at (and preparing) what functions see.
pub async fn redis_client(url: &str) -> fred::prelude::Client {
    use fred::prelude::{Builder, ClientLike, Config};
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

pub use flags_testkit::unique;

/// Creates a fresh schema, migrates and seeds it, and returns a URL whose connections use it.
pub async fn seeded_postgres_url() -> String {
    let url = empty_postgres_url().await;
    let app = flags_core::App::build(&Config::new(url.clone(), None))
        .await
        .unwrap();
    app.service.store().migrate().await.unwrap();
    flags_core::seed::seed(&app.service).await.unwrap();
    url
}

/// Creates a fresh, empty schema and returns a URL whose connections use it.
pub async fn empty_postgres_url() -> String {
    flags_testkit::postgres::fresh_schema(&database_url(), &unique("e2e_"))
        .await
        .unwrap_or_else(|e| panic!("{e}"))
}

/// A connection to the schema `database_url` names (its `search_path`).
pub async fn postgres(database_url: &str) -> PgConnection {
    PgConnection::connect(database_url).await.unwrap()
}

/// Records that `environment`'s cache must be invalidated, as a writer that could not reach
/// Redis leaves it (contract §3.1); returns the row's id.
pub async fn insert_pending(database_url: &str, environment: &str) -> i64 {
    let mut connection = postgres(database_url).await;
    let id = sqlx::query_scalar(
        "INSERT INTO pending_invalidations (environment, created_at) VALUES ($1, now()) RETURNING id",
    )
    .bind(environment)
    .fetch_one(&mut connection)
    .await
    .unwrap();
    connection.close().await.unwrap();
    id
}

/// `(id, environment)` of every row of `pending_invalidations`, oldest first.
pub async fn pending_rows(database_url: &str) -> Vec<(i64, String)> {
    let mut connection = postgres(database_url).await;
    let rows = sqlx::query_as("SELECT id, environment FROM pending_invalidations ORDER BY id")
        .fetch_all(&mut connection)
        .await
        .unwrap();
    connection.close().await.unwrap();
    rows
}

/// Signing keys in a folder of their own.
pub fn local_keys() -> LocalKeys {
    let dir = std::env::temp_dir().join(unique("flags-keys-"));
    LocalKeys::load_or_create(&dir).unwrap()
}

/// A tool installed by `make tools-test` into `.tools/test/bin`, or named by an env variable.
pub fn tool(env_var: &str, name: &str) -> PathBuf {
    let path = std::env::var(env_var)
        .map(PathBuf::from)
        .unwrap_or_else(|_| workspace_root().join(".tools/test/bin").join(name));
    assert!(
        path.exists(),
        "{} not found at {}: run `make tools-test` (make test does)",
        name,
        path.display()
    );
    path
}

/// A local port nothing listens on right now.
pub fn free_port() -> u16 {
    flags_testkit::free_port().unwrap()
}
