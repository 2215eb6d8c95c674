//! The PostgreSQL and SQLite adapters. The SQL is identical for both (`$n` placeholders,
//! `ON CONFLICT`, `RETURNING` work in each), so one macro writes both impls; only pool set-up and
//! migrations differ. Runtime-checked queries keep the build free of a database.

use super::{FlagStore, StoreError};
use crate::domain::{
    Environment, Flag, FlagKey, FlagPatch, NewFlag, NewOverride, OverridePage, OverrideType,
    Timestamp, UserOverride, UserOverrides,
};
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions};
use sqlx::{PgPool, SqlitePool};
use std::str::FromStr;
use std::time::Duration;
use uuid::Uuid;

const FLAG_COLUMNS: &str =
    "id, flag_key, environment, enabled, rollout_percentage, description, created_at, updated_at";

#[derive(sqlx::FromRow)]
struct FlagRow {
    id: Uuid,
    flag_key: String,
    environment: String,
    enabled: bool,
    rollout_percentage: i32,
    description: Option<String>,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
}

impl From<FlagRow> for Flag {
    fn from(row: FlagRow) -> Self {
        Flag {
            id: row.id,
            flag_key: row.flag_key,
            environment: row.environment,
            enabled: row.enabled,
            rollout_percentage: row.rollout_percentage,
            description: row.description,
            created_at: Timestamp::from_datetime(row.created_at),
            updated_at: Timestamp::from_datetime(row.updated_at),
        }
    }
}

#[derive(sqlx::FromRow)]
struct OverrideRow {
    user_id: String,
    override_type: String,
    reason: Option<String>,
    created_by: Option<String>,
    created_at: DateTime<Utc>,
}

impl TryFrom<OverrideRow> for UserOverride {
    type Error = StoreError;

    fn try_from(row: OverrideRow) -> Result<Self, StoreError> {
        Ok(UserOverride {
            override_type: parse_override_type(&row.override_type)?,
            user_id: row.user_id,
            reason: row.reason,
            created_by: row.created_by,
            created_at: Timestamp::from_datetime(row.created_at),
        })
    }
}

fn parse_override_type(value: &str) -> Result<OverrideType, StoreError> {
    OverrideType::parse(value).ok_or_else(|| {
        StoreError::Database(sqlx::Error::Decode(
            format!("unknown override_type {value:?}").into(),
        ))
    })
}

fn map_unique_violation(error: sqlx::Error) -> StoreError {
    match &error {
        sqlx::Error::Database(db) if db.is_unique_violation() => StoreError::AlreadyExists,
        _ => StoreError::Database(error),
    }
}

/// PostgreSQL, the source of truth in production.
#[derive(Debug, Clone)]
pub struct PostgresStore {
    pool: PgPool,
}

impl PostgresStore {
    /// Connects lazily: no connection is opened until the first query, so a cold start does not
    /// wait for the database and a database outage does not stop the process from starting.
    pub fn connect_lazy(url: &str, max_connections: u32) -> Result<Self, StoreError> {
        let options = PgConnectOptions::from_str(url)?;
        Ok(Self::with_options(options, max_connections))
    }

    pub fn with_options(options: PgConnectOptions, max_connections: u32) -> Self {
        let pool = PgPoolOptions::new()
            .max_connections(max_connections)
            .acquire_timeout(Duration::from_secs(3))
            .connect_lazy_with(options);
        Self { pool }
    }

    pub fn pool(&self) -> &PgPool {
        &self.pool
    }
}

/// SQLite, the embedded default for local runs: one file, no server.
#[derive(Debug, Clone)]
pub struct SqliteStore {
    pool: SqlitePool,
}

impl SqliteStore {
    pub fn connect_lazy(url: &str, max_connections: u32) -> Result<Self, StoreError> {
        let options = SqliteConnectOptions::from_str(url)?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .busy_timeout(Duration::from_secs(5))
            .foreign_keys(true);
        let pool = SqlitePoolOptions::new()
            .max_connections(max_connections)
            .connect_lazy_with(options);
        Ok(Self { pool })
    }

    pub fn pool(&self) -> &SqlitePool {
        &self.pool
    }
}

static POSTGRES_MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/postgres");
static SQLITE_MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/sqlite");

macro_rules! sql_flag_store {
    ($store:ty, $backend:literal, $migrator:expr) => {
        #[async_trait]
        impl FlagStore for $store {
            fn backend(&self) -> &'static str {
                $backend
            }

            async fn ping(&self) -> Result<(), StoreError> {
                sqlx::query("SELECT 1").execute(&self.pool).await?;
                Ok(())
            }

            async fn migrate(&self) -> Result<(), StoreError> {
                $migrator.run(&self.pool).await?;
                Ok(())
            }

            async fn list_flags(&self, env: &Environment) -> Result<Vec<Flag>, StoreError> {
                let sql = format!("SELECT {FLAG_COLUMNS} FROM feature_flags WHERE environment = $1 ORDER BY flag_key");
                let rows: Vec<FlagRow> = sqlx::query_as(&sql).bind(env.as_str()).fetch_all(&self.pool).await?;
                Ok(rows.into_iter().map(Flag::from).collect())
            }

            async fn get_flag(&self, env: &Environment, key: &FlagKey) -> Result<Option<Flag>, StoreError> {
                let sql = format!(
                    "SELECT {FLAG_COLUMNS} FROM feature_flags WHERE environment = $1 AND flag_key = $2"
                );
                let row: Option<FlagRow> = sqlx::query_as(&sql)
                    .bind(env.as_str())
                    .bind(key.as_str())
                    .fetch_optional(&self.pool)
                    .await?;
                Ok(row.map(Flag::from))
            }

            async fn create_flag(&self, env: &Environment, new: &NewFlag) -> Result<Flag, StoreError> {
                let now = Timestamp::now().as_datetime();
                let sql = format!(
                    "INSERT INTO feature_flags ({FLAG_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $7) \
                     RETURNING {FLAG_COLUMNS}"
                );
                let row: FlagRow = sqlx::query_as(&sql)
                    .bind(Uuid::new_v4())
                    .bind(new.flag_key.as_str())
                    .bind(env.as_str())
                    .bind(new.enabled)
                    .bind(new.rollout.get())
                    .bind(new.description.as_deref())
                    .bind(now)
                    .fetch_one(&self.pool)
                    .await
                    .map_err(map_unique_violation)?;
                Ok(row.into())
            }

            async fn update_flag(
                &self,
                env: &Environment,
                key: &FlagKey,
                patch: &FlagPatch,
            ) -> Result<Option<Flag>, StoreError> {
                let sql = format!(
                    "UPDATE feature_flags SET \
                       enabled = COALESCE($3, enabled), \
                       rollout_percentage = COALESCE($4, rollout_percentage), \
                       description = CASE WHEN $5 THEN $6 ELSE description END, \
                       updated_at = $7 \
                     WHERE environment = $1 AND flag_key = $2 \
                     RETURNING {FLAG_COLUMNS}"
                );
                let row: Option<FlagRow> = sqlx::query_as(&sql)
                    .bind(env.as_str())
                    .bind(key.as_str())
                    .bind(patch.enabled)
                    .bind(patch.rollout.map(|r| r.get()))
                    .bind(patch.description.is_some())
                    .bind(patch.description.clone().flatten())
                    .bind(Timestamp::now().as_datetime())
                    .fetch_optional(&self.pool)
                    .await?;
                Ok(row.map(Flag::from))
            }

            async fn delete_flag(&self, env: &Environment, key: &FlagKey) -> Result<bool, StoreError> {
                let result = sqlx::query("DELETE FROM feature_flags WHERE environment = $1 AND flag_key = $2")
                    .bind(env.as_str())
                    .bind(key.as_str())
                    .execute(&self.pool)
                    .await?;
                Ok(result.rows_affected() > 0)
            }

            async fn upsert_override(&self, flag_id: Uuid, new: &NewOverride) -> Result<UserOverride, StoreError> {
                let row: OverrideRow = sqlx::query_as(
                    "INSERT INTO feature_flag_user_overrides \
                       (id, flag_id, user_id, override_type, reason, created_by, created_at) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7) \
                     ON CONFLICT (flag_id, user_id) DO UPDATE SET \
                       override_type = excluded.override_type, reason = excluded.reason, \
                       created_by = excluded.created_by, created_at = excluded.created_at \
                     RETURNING user_id, override_type, reason, created_by, created_at",
                )
                .bind(Uuid::new_v4())
                .bind(flag_id)
                .bind(new.user_id.as_str())
                .bind(new.override_type.as_str())
                .bind(new.reason.as_deref())
                .bind(new.created_by.as_deref())
                .bind(Timestamp::now().as_datetime())
                .fetch_one(&self.pool)
                .await?;
                row.try_into()
            }

            async fn delete_override(&self, flag_id: Uuid, user_id: &str) -> Result<bool, StoreError> {
                let result =
                    sqlx::query("DELETE FROM feature_flag_user_overrides WHERE flag_id = $1 AND user_id = $2")
                        .bind(flag_id)
                        .bind(user_id)
                        .execute(&self.pool)
                        .await?;
                Ok(result.rows_affected() > 0)
            }

            async fn list_overrides(
                &self,
                flag_id: Uuid,
                limit: u32,
                offset: u64,
            ) -> Result<OverridePage, StoreError> {
                let mut tx = self.pool.begin().await?;
                let total: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM feature_flag_user_overrides WHERE flag_id = $1")
                    .bind(flag_id)
                    .fetch_one(&mut *tx)
                    .await?;
                // `user_id` breaks ties so pages never overlap when timestamps are equal.
                let rows: Vec<OverrideRow> = sqlx::query_as(
                    "SELECT user_id, override_type, reason, created_by, created_at \
                     FROM feature_flag_user_overrides WHERE flag_id = $1 \
                     ORDER BY created_at DESC, user_id ASC LIMIT $2 OFFSET $3",
                )
                .bind(flag_id)
                .bind(i64::from(limit))
                .bind(i64::try_from(offset).unwrap_or(i64::MAX))
                .fetch_all(&mut *tx)
                .await?;
                tx.commit().await?;
                Ok(OverridePage {
                    overrides: rows.into_iter().map(UserOverride::try_from).collect::<Result<_, _>>()?,
                    total: u64::try_from(total).unwrap_or_default(),
                })
            }

            async fn user_overrides(&self, env: &Environment, user_id: &str) -> Result<UserOverrides, StoreError> {
                let rows: Vec<(String, String)> = sqlx::query_as(
                    "SELECT f.flag_key, o.override_type \
                     FROM feature_flag_user_overrides o JOIN feature_flags f ON f.id = o.flag_id \
                     WHERE f.environment = $1 AND o.user_id = $2",
                )
                .bind(env.as_str())
                .bind(user_id)
                .fetch_all(&self.pool)
                .await?;
                rows.into_iter()
                    .map(|(key, kind)| Ok((key, parse_override_type(&kind)?)))
                    .collect()
            }
        }
    };
}

sql_flag_store!(PostgresStore, "postgres", POSTGRES_MIGRATOR);
sql_flag_store!(SqliteStore, "sqlite", SQLITE_MIGRATOR);
