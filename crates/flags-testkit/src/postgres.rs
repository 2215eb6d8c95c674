//! PostgreSQL schemas of their own: each test (or benchmark) migrates and fills its own schema
//! in the shared database, so that tests run in parallel and never see each other's rows.

use sqlx::postgres::PgConnectOptions;
use sqlx::{ConnectOptions, Connection};
use std::str::FromStr;

/// Creates the schema `schema` in the database of `base_url` (dropping one of that name first)
/// and returns a URL whose connections use it (`search_path`). Fails with a message naming the
/// server when PostgreSQL is not reachable.
pub async fn fresh_schema(base_url: &str, schema: &str) -> Result<String, String> {
    let unreachable = |e: sqlx::Error| format!("PostgreSQL is required at {base_url}: {e}");
    let mut admin = PgConnectOptions::from_str(base_url)
        .map_err(|e| format!("not a PostgreSQL URL: {e}"))?
        .connect()
        .await
        .map_err(unreachable)?;
    for statement in [
        format!("DROP SCHEMA IF EXISTS {schema} CASCADE"),
        format!("CREATE SCHEMA {schema}"),
    ] {
        sqlx::query(&statement)
            .execute(&mut admin)
            .await
            .map_err(unreachable)?;
    }
    admin.close().await.map_err(unreachable)?;
    Ok(with_option(
        base_url,
        &format!("options=-c%20search_path%3D{schema}"),
    ))
}

/// `url` with one more query parameter (`name=value`).
pub fn with_option(url: &str, option: &str) -> String {
    let separator = if url.contains('?') { '&' } else { '?' };
    format!("{url}{separator}{option}")
}
