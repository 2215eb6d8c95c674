//! The storage port and its two sqlx adapters: PostgreSQL (production) and SQLite (the
//! embedded default for local runs). Both run the same SQL and the same contract tests.

mod sql;

pub use sql::{PostgresStore, SqliteStore};

use crate::domain::{
    Environment, Flag, FlagKey, FlagPatch, NewFlag, NewOverride, OverridePage, UserOverride,
    UserOverrides,
};
use async_trait::async_trait;
use uuid::Uuid;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("a flag with this key already exists in this environment")]
    AlreadyExists,
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    #[error("database migration failed: {0}")]
    Migration(#[from] sqlx::migrate::MigrateError),
    #[error("unsupported DATABASE_URL scheme (expected postgres:// or sqlite:)")]
    UnsupportedUrl,
}

/// Where flags and overrides live. Every method is one short transaction or statement.
#[async_trait]
pub trait FlagStore: Send + Sync + std::fmt::Debug {
    /// `postgres` or `sqlite`, for logs and the health report.
    fn backend(&self) -> &'static str;
    async fn ping(&self) -> Result<(), StoreError>;
    async fn migrate(&self) -> Result<(), StoreError>;

    /// Every flag of an environment, sorted by key.
    async fn list_flags(&self, env: &Environment) -> Result<Vec<Flag>, StoreError>;
    async fn get_flag(&self, env: &Environment, key: &FlagKey) -> Result<Option<Flag>, StoreError>;
    /// Fails with [`StoreError::AlreadyExists`] when the key is taken in this environment.
    async fn create_flag(&self, env: &Environment, new: &NewFlag) -> Result<Flag, StoreError>;
    /// Applies the set fields and bumps `updated_at`; `None` when the flag does not exist.
    async fn update_flag(
        &self,
        env: &Environment,
        key: &FlagKey,
        patch: &FlagPatch,
    ) -> Result<Option<Flag>, StoreError>;
    /// Deletes the flag and (by cascade) its overrides; `false` when it did not exist.
    async fn delete_flag(&self, env: &Environment, key: &FlagKey) -> Result<bool, StoreError>;

    /// Inserts or replaces the override of `new.user_id` on the flag.
    async fn upsert_override(
        &self,
        flag_id: Uuid,
        new: &NewOverride,
    ) -> Result<UserOverride, StoreError>;
    async fn delete_override(&self, flag_id: Uuid, user_id: &str) -> Result<bool, StoreError>;
    /// One page of a flag's overrides, newest first, and the total count.
    async fn list_overrides(
        &self,
        flag_id: Uuid,
        limit: u32,
        offset: u64,
    ) -> Result<OverridePage, StoreError>;
    /// All overrides of one user in an environment, by flag key.
    async fn user_overrides(
        &self,
        env: &Environment,
        user_id: &str,
    ) -> Result<UserOverrides, StoreError>;
}
