//! The storage port and its two sqlx adapters: PostgreSQL (production) and SQLite (the
//! embedded default for local runs). Both run the same SQL and the same contract tests.
//!
//! Every write is one transaction that commits the change, its audit row (contract §2.7) and a
//! pending-invalidation record (§3.1) together; lookups that decide a write (does the flag exist,
//! how many override changes this hour) happen inside that transaction, under a lock on the flag.

mod sql;

pub use sql::{PostgresStore, SqliteStore};

use crate::domain::{
    Actor, ApplyOutcome, AuditFilter, AuditPage, Environment, Flag, FlagKey, FlagPatch, NewFlag,
    NewOverride, NewSchedule, OverridePage, Schedule, Timestamp, UserOverride, UserOverrides,
};
use crate::rate_limit::{AuditWindow, RateLimited};
use async_trait::async_trait;
use serde_json::Value;
use uuid::Uuid;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("a flag with this key already exists in this environment")]
    AlreadyExists,
    #[error("the flag does not exist")]
    FlagNotFound,
    #[error("the user override does not exist")]
    OverrideNotFound,
    #[error("the flag has no such schedule")]
    ScheduleNotFound,
    #[error("the schedule is already applied or failed")]
    ScheduleNotCancellable,
    #[error(transparent)]
    RateLimited(#[from] RateLimited),
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    #[error("database migration failed: {0}")]
    Migration(#[from] sqlx::migrate::MigrateError),
    #[error("unsupported DATABASE_URL scheme (expected postgres:// or sqlite:)")]
    UnsupportedUrl,
}

/// The id of a pending-invalidation record: the environment's cache is owed an invalidation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PendingId(pub i64);

/// A pending invalidation as the sweeper reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingInvalidation {
    pub id: PendingId,
    pub environment: String,
}

/// What a committed write returns: its result and the invalidation it still owes.
#[derive(Debug, Clone, PartialEq)]
pub struct Committed<T> {
    pub value: T,
    pub pending: PendingId,
}

/// What one step of an applier pass found.
#[derive(Debug, Clone, PartialEq)]
pub enum ScheduleClaim {
    /// No schedule is due (other than the skipped ones).
    NothingDue,
    /// The next due schedule's flag is being written right now: it is left for a later pass
    /// (waiting for that lock while holding the schedule's could deadlock with a flag delete).
    FlagBusy(Uuid),
    /// The schedule was attempted and its outcome committed; `pending` is the invalidation an
    /// applied change still owes the cache.
    Attempted {
        outcome: Box<ApplyOutcome>,
        pending: Option<PendingId>,
    },
}

/// How an override change is counted against the rate limit (contract §2.5) inside its
/// transaction: `None` when a shared counter (Redis) already admitted it.
pub type AuditLimit = Option<AuditWindow>;

/// An audit row to record outside a change (e.g. `cache.invalidated`).
#[derive(Debug, Clone)]
pub struct AuditRecord {
    pub action: crate::domain::AuditAction,
    pub environment: Option<Environment>,
    pub flag_key: Option<FlagKey>,
    pub actor: Option<Actor>,
    pub before: Option<Value>,
    pub after: Option<Value>,
}

impl AuditRecord {
    /// A change to one flag (or to one of its overrides) in one environment.
    pub fn flag_change(
        action: crate::domain::AuditAction,
        env: &Environment,
        key: &FlagKey,
        actor: Option<&Actor>,
        before: Option<Value>,
        after: Option<Value>,
    ) -> Self {
        Self {
            action,
            environment: Some(env.clone()),
            flag_key: Some(key.clone()),
            actor: actor.cloned(),
            before,
            after,
        }
    }
}

/// Where flags, overrides, the audit log and pending invalidations live.
#[async_trait]
pub trait FlagStore: Send + Sync + std::fmt::Debug {
    /// `postgres` or `sqlite`, for logs and the health report.
    fn backend(&self) -> &'static str;
    async fn ping(&self) -> Result<(), StoreError>;
    /// Applies the pending migrations; returns the schema's version (the newest migration).
    async fn migrate(&self) -> Result<i64, StoreError>;

    /// Names this database among others that may share one Redis (the test suite's schemas do):
    /// the cached list of environments is kept per database.
    fn cache_scope(&self) -> &str;

    /// The environments that hold at least one flag.
    async fn list_environments(&self) -> Result<Vec<String>, StoreError>;

    /// Every flag of an environment, sorted by key.
    async fn list_flags(&self, env: &Environment) -> Result<Vec<Flag>, StoreError>;
    async fn get_flag(&self, env: &Environment, key: &FlagKey) -> Result<Option<Flag>, StoreError>;
    /// Fails with [`StoreError::AlreadyExists`] when the key is taken in this environment.
    async fn create_flag(
        &self,
        env: &Environment,
        new: &NewFlag,
        actor: Option<&Actor>,
    ) -> Result<Committed<Flag>, StoreError>;
    /// Applies the set fields and bumps `updated_at`; [`StoreError::FlagNotFound`] when absent.
    async fn update_flag(
        &self,
        env: &Environment,
        key: &FlagKey,
        patch: &FlagPatch,
        actor: Option<&Actor>,
    ) -> Result<Committed<Flag>, StoreError>;
    /// Deletes the flag and (by cascade) its overrides; returns the deleted flag.
    async fn delete_flag(
        &self,
        env: &Environment,
        key: &FlagKey,
        actor: Option<&Actor>,
    ) -> Result<Committed<Flag>, StoreError>;

    /// Inserts or replaces the override of `new.user_id` on the flag. Order inside the
    /// transaction: flag lookup (404), the audit-log count when `limit` is set (429), the change.
    async fn upsert_override(
        &self,
        env: &Environment,
        key: &FlagKey,
        new: &NewOverride,
        actor: Option<&Actor>,
        limit: AuditLimit,
    ) -> Result<Committed<UserOverride>, StoreError>;
    /// Same order as [`Self::upsert_override`]; [`StoreError::OverrideNotFound`] when absent.
    async fn delete_override(
        &self,
        env: &Environment,
        key: &FlagKey,
        user_id: &str,
        actor: Option<&Actor>,
        limit: AuditLimit,
    ) -> Result<Committed<UserOverride>, StoreError>;
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

    /// Creates a schedule on the flag ([`StoreError::FlagNotFound`] when absent), with its
    /// `schedule.created` audit row.
    async fn create_schedule(
        &self,
        env: &Environment,
        key: &FlagKey,
        new: &NewSchedule,
        actor: Option<&Actor>,
    ) -> Result<Schedule, StoreError>;
    /// Every schedule of the flag, whatever its status, by `scheduledAt`.
    async fn list_schedules(
        &self,
        env: &Environment,
        key: &FlagKey,
    ) -> Result<Vec<Schedule>, StoreError>;
    /// Cancels a pending schedule, also one waiting for a retry; a cancelled one is returned as
    /// it is. [`StoreError::ScheduleNotCancellable`] once applied or failed.
    async fn cancel_schedule(
        &self,
        env: &Environment,
        key: &FlagKey,
        id: Uuid,
        actor: Option<&Actor>,
    ) -> Result<Schedule, StoreError>;
    /// Pending schedules due at `now`, in the order the applier takes them (retries first, then
    /// by time), at most `limit`. Nothing is locked: this is for display.
    async fn due_schedules(&self, now: Timestamp, limit: u32) -> Result<Vec<Schedule>, StoreError>;
    /// One step of an applier pass, in one transaction: claims the next due schedule not in
    /// `skip` (`FOR UPDATE SKIP LOCKED`, so concurrent appliers take different ones), applies its
    /// updates like [`Self::update_flag`] and commits the change, the schedule's new status and
    /// the audit rows together. A failed attempt schedules the retry due `jitter` after the
    /// backoff, or fails the schedule once its retries are spent or its flag is gone.
    async fn apply_next_schedule(
        &self,
        now: Timestamp,
        jitter: chrono::TimeDelta,
        skip: &[Uuid],
    ) -> Result<ScheduleClaim, StoreError>;

    /// Records an audit row that belongs to no database change.
    async fn record_audit(&self, record: &AuditRecord) -> Result<(), StoreError>;
    /// One page of the audit log, newest first, and the total count.
    async fn list_audit(
        &self,
        filter: &AuditFilter,
        limit: u32,
        offset: u64,
    ) -> Result<AuditPage, StoreError>;

    /// The oldest pending invalidations, at most `limit`.
    async fn pending_invalidations(
        &self,
        limit: u32,
    ) -> Result<Vec<PendingInvalidation>, StoreError>;
    /// Removes these records (the invalidation they stood for is done).
    async fn clear_pending(&self, ids: &[PendingId]) -> Result<(), StoreError>;
}

/// The audit entry's JSON for a changed value.
pub(crate) fn audit_json<T: serde::Serialize>(value: &T) -> Value {
    serde_json::to_value(value).unwrap_or(Value::Null)
}
