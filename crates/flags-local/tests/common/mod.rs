//! Helpers for end-to-end tests: a migrated, seeded PostgreSQL schema per test, local signing
//! keys, and paths to the tools `make test` installs. Missing servers or tools fail loudly.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

pub mod process;
pub mod server;

use flags_api::local_keys::LocalKeys;
use flags_core::Config;
use sqlx::Connection;
use std::path::PathBuf;

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

/// The shared Redis, on a database index that only one test uses (2..=15; the core tests use
/// 0), emptied first: these tests all use the `production` keys of the seeded data.
pub async fn redis_url(db: u8) -> String {
    use fred::prelude::{ClientLike, Config};
    let base = std::env::var("REDIS_URL")
        .ok()
        .filter(|u| !u.is_empty())
        .unwrap_or_else(|| "redis://127.0.0.1:6379".into());
    let url = format!(
        "{}/{db}",
        base.trim_end_matches('/')
            .split('/')
            .take(3)
            .collect::<Vec<_>>()
            .join("/")
    );
    let client = fred::prelude::Client::new(Config::from_url(&url).unwrap(), None, None, None);
    client.init().await.unwrap_or_else(|e| {
        panic!("Redis is required for this test and is not reachable at {url} ({e})")
    });
    let _: () = client
        .custom(fred::cmd!("FLUSHDB"), Vec::<String>::new())
        .await
        .unwrap();
    client.quit().await.unwrap();
    url
}

pub use flags_testkit::unique;

/// Creates a fresh schema, migrates and seeds it, and returns a URL whose connections use it.
pub async fn seeded_postgres_url() -> String {
    let url = flags_testkit::postgres::fresh_schema(&database_url(), &unique("e2e_"))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    migrated_and_seeded(url).await
}

/// A migrated, seeded SQLite file of its own under the system temp folder, as a URL.
pub async fn seeded_sqlite_url() -> String {
    let path = std::env::temp_dir().join(format!("{}.db", unique("flags-e2e-")));
    migrated_and_seeded(format!("sqlite://{}", path.display())).await
}

/// Applies the migrations and the demo flags to the database `url` names; returns `url`.
async fn migrated_and_seeded(url: String) -> String {
    let app = flags_core::App::build(&Config::new(url.clone(), None))
        .await
        .unwrap();
    app.service.store().migrate().await.unwrap();
    flags_core::seed::seed(&app.service).await.unwrap();
    url
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

/// The rows of `pending_invalidations` (contract §3.1) in the schema `database_url` names.
pub async fn pending_invalidations(database_url: &str) -> i64 {
    let mut connection = sqlx::PgConnection::connect(database_url).await.unwrap();
    let count = sqlx::query_scalar("SELECT COUNT(*) FROM pending_invalidations")
        .fetch_one(&mut connection)
        .await
        .unwrap();
    connection.close().await.unwrap();
    count
}
