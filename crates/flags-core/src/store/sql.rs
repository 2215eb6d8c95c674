//! The PostgreSQL and SQLite adapters. The SQL is identical for both (`$n` placeholders,
//! `ON CONFLICT`, `RETURNING` work in each), so one macro writes both impls; only pool set-up,
//! migrations and how a write transaction locks differ. Runtime-checked queries keep the build
//! free of a database. Flags list in byte order on both: PostgreSQL's default collation would
//! put `a` before `B`, SQLite's `BINARY` does not, so PostgreSQL's query says `COLLATE "C"`.
//!
//! A write transaction locks the flag it is about: `SELECT … FOR UPDATE` on PostgreSQL, and
//! `BEGIN IMMEDIATE` (the database's single write lock, taken at the start) on SQLite. Writers
//! to the same flag therefore run one after the other, so the existence check, the rate-limit
//! count and the change cannot be interleaved with another writer's.

use super::{
    AuditLimit, AuditRecord, Committed, FlagStore, PendingId, PendingInvalidation, ScheduleClaim,
    StoreError, audit_json,
};
use crate::domain::{
    Actor, ApplyOutcome, AuditAction, AuditEntry, AuditFilter, AuditPage, Environment, Flag,
    FlagKey, FlagPatch, NewFlag, NewOverride, NewSchedule, OverridePage, OverrideType, Schedule,
    ScheduleStatus, ScheduleUpdates, Timestamp, UserOverride, UserOverrides, retry_at,
};
use async_trait::async_trait;
use chrono::{DateTime, TimeDelta, Utc};
use sqlx::Acquire;
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

/// The flag lock makes this unreachable; should it ever happen, it is still a 404, not a 500.
fn map_foreign_key_violation(error: sqlx::Error) -> StoreError {
    match &error {
        sqlx::Error::Database(db) if db.is_foreign_key_violation() => StoreError::FlagNotFound,
        _ => StoreError::Database(error),
    }
}

const OVERRIDE_COLUMNS: &str = "user_id, override_type, reason, created_by, created_at";

#[derive(sqlx::FromRow)]
struct AuditRow {
    id: i64,
    at: DateTime<Utc>,
    action: String,
    environment: Option<String>,
    flag_key: Option<String>,
    actor_sub: Option<String>,
    actor_email: Option<String>,
    before: Option<String>,
    after: Option<String>,
}

impl From<AuditRow> for AuditEntry {
    fn from(row: AuditRow) -> Self {
        let json = |text: Option<String>| text.and_then(|t| serde_json::from_str(&t).ok());
        AuditEntry {
            id: row.id,
            at: Timestamp::from_datetime(row.at),
            action: row.action,
            environment: row.environment,
            flag_key: row.flag_key,
            actor: row.actor_sub.map(|sub| Actor {
                sub,
                email: row.actor_email,
            }),
            before: json(row.before),
            after: json(row.after),
        }
    }
}

const SCHEDULE_COLUMNS: &str = "id, flag_id, environment, flag_key, scheduled_at, status, updates, \
     retry_count, max_retries, next_retry_at, last_error, applied_at, created_by, created_at, \
     cancelled_by, cancelled_at";

/// Due for an attempt at `$1`: pending, and its time (or its retry's) has come.
const DUE_SCHEDULES: &str = "status = 'pending' AND COALESCE(next_retry_at, scheduled_at) <= $1";
/// Retries first, then by the time they were due.
const DUE_ORDER: &str = "ORDER BY CASE WHEN next_retry_at IS NULL THEN 1 ELSE 0 END, \
     COALESCE(next_retry_at, scheduled_at), id";

#[derive(sqlx::FromRow)]
struct ScheduleRow {
    id: Uuid,
    flag_id: Uuid,
    environment: String,
    flag_key: String,
    scheduled_at: DateTime<Utc>,
    status: String,
    updates: String,
    retry_count: i32,
    max_retries: i32,
    next_retry_at: Option<DateTime<Utc>>,
    last_error: Option<String>,
    applied_at: Option<DateTime<Utc>>,
    created_by: Option<String>,
    created_at: DateTime<Utc>,
    cancelled_by: Option<String>,
    cancelled_at: Option<DateTime<Utc>>,
}

impl TryFrom<ScheduleRow> for Schedule {
    type Error = StoreError;

    fn try_from(row: ScheduleRow) -> Result<Self, StoreError> {
        let corrupt = |what: String| StoreError::Database(sqlx::Error::Decode(what.into()));
        let status = ScheduleStatus::parse(&row.status)
            .ok_or_else(|| corrupt(format!("unknown schedule status {:?}", row.status)))?;
        let updates = serde_json::from_str(&row.updates)
            .ok()
            .and_then(|value| ScheduleUpdates::from_json(&value))
            .ok_or_else(|| corrupt(format!("invalid schedule updates {:?}", row.updates)))?;
        let timestamp = |value: Option<DateTime<Utc>>| value.map(Timestamp::from_datetime);
        Ok(Schedule {
            id: row.id,
            flag_id: row.flag_id,
            flag_key: row.flag_key,
            environment: row.environment,
            scheduled_at: Timestamp::from_datetime(row.scheduled_at),
            status,
            updates,
            applied_at: timestamp(row.applied_at),
            error_message: row.last_error,
            created_by: row.created_by,
            cancelled_by: row.cancelled_by,
            cancelled_at: timestamp(row.cancelled_at),
            created_at: Timestamp::from_datetime(row.created_at),
            retry_count: u32::try_from(row.retry_count).unwrap_or_default(),
            max_retries: u32::try_from(row.max_retries).unwrap_or_default(),
            next_retry_at: timestamp(row.next_retry_at),
        })
    }
}

/// PostgreSQL's "lock not available", the answer of `FOR UPDATE NOWAIT` on a locked row.
fn is_lock_not_available(error: &sqlx::Error) -> bool {
    matches!(error, sqlx::Error::Database(db) if db.code().as_deref() == Some("55P03"))
}

/// What a failed attempt leaves in `errorMessage`: the database's own message (a trigger's or a
/// constraint's), never the connection details of other errors.
fn attempt_error(error: &sqlx::Error) -> String {
    match error {
        sqlx::Error::Database(db) => db.message().to_owned(),
        _ => "database error".to_owned(),
    }
}

/// An audit row about a schedule.
fn schedule_record(
    action: AuditAction,
    actor: Option<&Actor>,
    before: Option<&Schedule>,
    after: &Schedule,
) -> AuditRecord {
    AuditRecord {
        action,
        environment: Environment::parse(&after.environment).ok(),
        flag_key: FlagKey::parse(&after.flag_key).ok(),
        actor: actor.cloned(),
        before: before.map(audit_json),
        after: Some(audit_json(after)),
    }
}

/// The original service's structured audit line, written once the change has committed.
fn log_audit(action: AuditAction, env: Option<&str>, key: Option<&str>, actor: Option<&Actor>) {
    tracing::info!(
        audit = action.as_str(),
        environment = env,
        flag_key = key,
        actor = actor.map(|a| a.sub.as_str()),
        "Audit event: {}",
        action.as_str()
    );
}

/// One `$n` placeholder per id, for `IN (...)`.
fn placeholders(count: usize) -> String {
    (1..=count)
        .map(|i| format!("${i}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// PostgreSQL, the source of truth in production.
#[derive(Debug, Clone)]
pub struct PostgresStore {
    pool: PgPool,
    cache_scope: String,
}

/// A short, stable name for a database: a hash, so no host name ends up in a Redis key.
fn scope_of(identity: &str) -> String {
    use sha2::{Digest, Sha256};
    let digest = Sha256::digest(identity.as_bytes());
    digest[..8]
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect()
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
            .connect_lazy_with(options.clone());
        let identity = format!(
            "postgres://{}@{}:{}/{}?{}",
            options.get_username(),
            options.get_host(),
            options.get_port(),
            options.get_database().unwrap_or_default(),
            options.get_options().unwrap_or_default()
        );
        Self {
            pool,
            cache_scope: scope_of(&identity),
        }
    }

    pub fn pool(&self) -> &PgPool {
        &self.pool
    }
}

/// SQLite, the embedded default for local runs: one file, no server.
#[derive(Debug, Clone)]
pub struct SqliteStore {
    pool: SqlitePool,
    cache_scope: String,
}

impl SqliteStore {
    pub fn connect_lazy(url: &str, max_connections: u32) -> Result<Self, StoreError> {
        let options = SqliteConnectOptions::from_str(url)?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .busy_timeout(Duration::from_secs(5))
            .foreign_keys(true);
        let cache_scope = scope_of(&format!("sqlite:{}", options.get_filename().display()));
        let pool = SqlitePoolOptions::new()
            .max_connections(max_connections)
            .connect_lazy_with(options);
        Ok(Self { pool, cache_scope })
    }

    pub fn pool(&self) -> &SqlitePool {
        &self.pool
    }
}

static POSTGRES_MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/postgres");
static SQLITE_MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/sqlite");

macro_rules! sql_flag_store {
    (
        $store:ty,
        $db:ty,
        $backend:literal,
        $migrator:expr,
        $begin:literal,
        $lock:literal,
        $claim_lock:literal,
        $lock_nowait:literal,
        $byte_order:literal
    ) => {
        impl $store {
            /// Starts a write transaction (see the module docs for how it locks).
            async fn begin_write(&self) -> Result<sqlx::Transaction<'static, $db>, StoreError> {
                Ok(self.pool.begin_with($begin).await?)
            }

            /// The flag, locked until the transaction ends.
            async fn locked_flag(
                tx: &mut sqlx::Transaction<'static, $db>,
                env: &Environment,
                key: &FlagKey,
            ) -> Result<Flag, StoreError> {
                let sql = format!(
                    "SELECT {FLAG_COLUMNS} FROM feature_flags WHERE environment = $1 AND flag_key = $2{}",
                    $lock
                );
                let row: Option<FlagRow> = sqlx::query_as(&sql)
                    .bind(env.as_str())
                    .bind(key.as_str())
                    .fetch_optional(&mut **tx)
                    .await?;
                row.map(Flag::from).ok_or(StoreError::FlagNotFound)
            }

            /// The rate limit from the audit log (contract §2.5): override changes of this flag
            /// since the window started, counted under the flag's lock.
            async fn check_audit_limit(
                tx: &mut sqlx::Transaction<'static, $db>,
                env: &Environment,
                key: &FlagKey,
                limit: AuditLimit,
            ) -> Result<(), StoreError> {
                let Some(window) = limit else { return Ok(()) };
                let changes: i64 = sqlx::query_scalar(
                    "SELECT COUNT(*) FROM flag_audit_log \
                     WHERE environment = $1 AND flag_key = $2 AND action IN ($3, $4) AND at >= $5",
                )
                .bind(env.as_str())
                .bind(key.as_str())
                .bind(AuditAction::OverrideUpserted.as_str())
                .bind(AuditAction::OverrideDeleted.as_str())
                .bind(window.start)
                .fetch_one(&mut **tx)
                .await?;
                if changes >= i64::from(window.limit) {
                    return Err(window.limited().into());
                }
                Ok(())
            }

            async fn insert_audit(
                tx: &mut sqlx::Transaction<'static, $db>,
                record: &AuditRecord,
            ) -> Result<(), StoreError> {
                let text = |value: &Option<serde_json::Value>| value.as_ref().map(|v| v.to_string());
                sqlx::query(
                    "INSERT INTO flag_audit_log \
                       (at, action, environment, flag_key, actor_sub, actor_email, before, after) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
                )
                .bind(Timestamp::now().as_datetime())
                .bind(record.action.as_str())
                .bind(record.environment.as_ref().map(Environment::as_str))
                .bind(record.flag_key.as_ref().map(FlagKey::as_str))
                .bind(record.actor.as_ref().map(|a| a.sub.as_str()))
                .bind(record.actor.as_ref().and_then(|a| a.email.as_deref()))
                .bind(text(&record.before))
                .bind(text(&record.after))
                .execute(&mut **tx)
                .await?;
                Ok(())
            }

            /// Records that the environment's cache owes an invalidation (contract §3.1).
            async fn insert_pending(
                tx: &mut sqlx::Transaction<'static, $db>,
                env: Option<&Environment>,
            ) -> Result<PendingId, StoreError> {
                let id: i64 = sqlx::query_scalar(
                    "INSERT INTO pending_invalidations (environment, created_at) VALUES ($1, $2) RETURNING id",
                )
                .bind(env.map_or("", Environment::as_str))
                .bind(Timestamp::now().as_datetime())
                .fetch_one(&mut **tx)
                .await?;
                Ok(PendingId(id))
            }

            /// Writes the audit rows, commits, then logs them.
            async fn commit_audited(
                mut tx: sqlx::Transaction<'static, $db>,
                records: &[AuditRecord],
            ) -> Result<(), StoreError> {
                for record in records {
                    Self::insert_audit(&mut tx, record).await?;
                }
                tx.commit().await?;
                for record in records {
                    log_audit(
                        record.action,
                        record.environment.as_ref().map(Environment::as_str),
                        record.flag_key.as_ref().map(FlagKey::as_str),
                        record.actor.as_ref(),
                    );
                }
                Ok(())
            }

            /// Commits a change readers must see: its audit row and a pending invalidation.
            async fn commit_change<T>(
                mut tx: sqlx::Transaction<'static, $db>,
                record: AuditRecord,
                value: T,
            ) -> Result<Committed<T>, StoreError> {
                let pending = Self::insert_pending(&mut tx, record.environment.as_ref()).await?;
                Self::commit_audited(tx, &[record]).await?;
                Ok(Committed { value, pending })
            }

            /// The flag update of `POST /admin/flags/{flagKey}`: the set fields, and `updated_at`.
            async fn apply_patch(
                conn: &mut <$db as sqlx::Database>::Connection,
                flag_id: Uuid,
                patch: &FlagPatch,
            ) -> Result<Flag, sqlx::Error> {
                let sql = format!(
                    "UPDATE feature_flags SET \
                       enabled = COALESCE($2, enabled), \
                       rollout_percentage = COALESCE($3, rollout_percentage), \
                       description = CASE WHEN $4 THEN $5 ELSE description END, \
                       updated_at = $6 \
                     WHERE id = $1 \
                     RETURNING {FLAG_COLUMNS}"
                );
                let row: FlagRow = sqlx::query_as(&sql)
                    .bind(flag_id)
                    .bind(patch.enabled)
                    .bind(patch.rollout.map(|r| r.get()))
                    .bind(patch.description.is_some())
                    .bind(patch.description.clone().flatten())
                    .bind(Timestamp::now().as_datetime())
                    .fetch_one(&mut *conn)
                    .await?;
                Ok(Flag::from(row))
            }

            /// Sets a schedule's outcome columns and returns the row as it is now.
            async fn finish_schedule(
                tx: &mut sqlx::Transaction<'static, $db>,
                schedule: &Schedule,
                status: ScheduleStatus,
                applied_at: Option<Timestamp>,
                next_retry_at: Option<Timestamp>,
                error: Option<&str>,
            ) -> Result<Schedule, StoreError> {
                let sql = format!(
                    "UPDATE flag_schedules SET status = $2, applied_at = $3, next_retry_at = $4, \
                       last_error = COALESCE($5, last_error), retry_count = $6 \
                     WHERE id = $1 RETURNING {SCHEDULE_COLUMNS}"
                );
                let failures = schedule.retry_count + u32::from(error.is_some());
                let row: ScheduleRow = sqlx::query_as(&sql)
                    .bind(schedule.id)
                    .bind(status.as_str())
                    .bind(applied_at.map(|t| t.as_datetime()))
                    .bind(next_retry_at.map(|t| t.as_datetime()))
                    .bind(error)
                    .bind(i32::try_from(failures).unwrap_or(i32::MAX))
                    .fetch_one(&mut **tx)
                    .await?;
                Schedule::try_from(row)
            }

            async fn schedule_of_flag(
                tx: &mut sqlx::Transaction<'static, $db>,
                flag_id: Uuid,
                id: Uuid,
            ) -> Result<Option<Schedule>, StoreError> {
                let sql = format!(
                    "SELECT {SCHEDULE_COLUMNS} FROM flag_schedules WHERE id = $1 AND flag_id = $2{}",
                    $lock
                );
                let row: Option<ScheduleRow> = sqlx::query_as(&sql)
                    .bind(id)
                    .bind(flag_id)
                    .fetch_optional(&mut **tx)
                    .await?;
                row.map(Schedule::try_from).transpose()
            }

            /// Attempts a claimed schedule inside its claim transaction. The flag change runs in
            /// a savepoint, so that a failed attempt can still record its retry (or failure)
            /// in the same transaction, under the same lock.
            async fn attempt_schedule(
                mut tx: sqlx::Transaction<'static, $db>,
                schedule: Schedule,
                now: Timestamp,
                jitter: TimeDelta,
            ) -> Result<ScheduleClaim, StoreError> {
                let flag_sql = format!(
                    "SELECT {FLAG_COLUMNS} FROM feature_flags WHERE id = $1{}",
                    $lock_nowait
                );
                let flag: Option<FlagRow> = match sqlx::query_as(&flag_sql)
                    .bind(schedule.flag_id)
                    .fetch_optional(&mut *tx)
                    .await
                {
                    Ok(row) => row,
                    Err(error) if is_lock_not_available(&error) => {
                        tx.rollback().await?;
                        return Ok(ScheduleClaim::FlagBusy(schedule.id));
                    }
                    Err(error) => return Err(error.into()),
                };
                let Some(before) = flag.map(Flag::from) else {
                    let message = format!("Flag '{}' not found", schedule.flag_key);
                    let failed = Self::finish_schedule(
                        &mut tx, &schedule, ScheduleStatus::Failed, None, None, Some(&message),
                    )
                    .await?;
                    let record = schedule_record(AuditAction::ScheduleFailed, None, Some(&schedule), &failed);
                    Self::commit_audited(tx, &[record]).await?;
                    return Ok(ScheduleClaim::Attempted {
                        outcome: Box::new(ApplyOutcome::Failed { schedule: failed }),
                        pending: None,
                    });
                };

                let mut savepoint = (&mut tx).begin().await?;
                let changed = Self::apply_patch(&mut savepoint, before.id, &schedule.updates.as_patch()).await;
                let after = match changed {
                    Ok(after) => {
                        savepoint.commit().await?;
                        after
                    }
                    Err(error) => {
                        savepoint.rollback().await?;
                        return Self::record_failed_attempt(tx, schedule, now, jitter, &attempt_error(&error)).await;
                    }
                };
                let applied = Self::finish_schedule(
                    &mut tx, &schedule, ScheduleStatus::Applied, Some(now), None, None,
                )
                .await?;
                let env = Environment::parse(&after.environment).ok();
                let key = FlagKey::parse(&after.flag_key).ok();
                let flag_record = AuditRecord {
                    action: AuditAction::FlagUpdated,
                    environment: env,
                    flag_key: key,
                    actor: None,
                    before: Some(audit_json(&before)),
                    after: Some(audit_json(&after)),
                };
                let schedule_record =
                    schedule_record(AuditAction::ScheduleApplied, None, Some(&schedule), &applied);
                let pending = Self::insert_pending(&mut tx, flag_record.environment.as_ref()).await?;
                Self::commit_audited(tx, &[flag_record, schedule_record]).await?;
                Ok(ScheduleClaim::Attempted {
                    outcome: Box::new(ApplyOutcome::Applied { schedule: applied }),
                    pending: Some(pending),
                })
            }

            /// A failed attempt: the retry 2, 4, 8 … minutes (plus jitter) later, or `failed`
            /// once `max_retries` retries have been spent.
            async fn record_failed_attempt(
                mut tx: sqlx::Transaction<'static, $db>,
                schedule: Schedule,
                now: Timestamp,
                jitter: TimeDelta,
                message: &str,
            ) -> Result<ScheduleClaim, StoreError> {
                let failures = schedule.retry_count + 1;
                if failures > schedule.max_retries {
                    let failed = Self::finish_schedule(
                        &mut tx, &schedule, ScheduleStatus::Failed, None, None, Some(message),
                    )
                    .await?;
                    let record = schedule_record(AuditAction::ScheduleFailed, None, Some(&schedule), &failed);
                    Self::commit_audited(tx, &[record]).await?;
                    return Ok(ScheduleClaim::Attempted {
                        outcome: Box::new(ApplyOutcome::Failed { schedule: failed }),
                        pending: None,
                    });
                }
                let next_attempt = retry_at(now, failures, jitter);
                let waiting = Self::finish_schedule(
                    &mut tx, &schedule, ScheduleStatus::Pending, None, Some(next_attempt), Some(message),
                )
                .await?;
                tx.commit().await?;
                Ok(ScheduleClaim::Attempted {
                    outcome: Box::new(ApplyOutcome::RetryScheduled { schedule: waiting, next_attempt }),
                    pending: None,
                })
            }

            /// Starts an override change, in the contract's order: the flag looked up and locked
            /// (404), the audit-log count (429); returns the user's current override too.
            async fn begin_override_change(
                &self,
                env: &Environment,
                key: &FlagKey,
                user_id: &str,
                limit: AuditLimit,
            ) -> Result<(sqlx::Transaction<'static, $db>, Uuid, Option<UserOverride>), StoreError> {
                let mut tx = self.begin_write().await?;
                let flag = Self::locked_flag(&mut tx, env, key).await?;
                Self::check_audit_limit(&mut tx, env, key, limit).await?;
                let current = Self::find_override(&mut tx, flag.id, user_id).await?;
                Ok((tx, flag.id, current))
            }

            async fn find_override(
                tx: &mut sqlx::Transaction<'static, $db>,
                flag_id: Uuid,
                user_id: &str,
            ) -> Result<Option<UserOverride>, StoreError> {
                let sql = format!(
                    "SELECT {OVERRIDE_COLUMNS} FROM feature_flag_user_overrides WHERE flag_id = $1 AND user_id = $2"
                );
                let row: Option<OverrideRow> = sqlx::query_as(&sql)
                    .bind(flag_id)
                    .bind(user_id)
                    .fetch_optional(&mut **tx)
                    .await?;
                row.map(UserOverride::try_from).transpose()
            }
        }

        #[async_trait]
        impl FlagStore for $store {
            fn backend(&self) -> &'static str {
                $backend
            }

            fn cache_scope(&self) -> &str {
                &self.cache_scope
            }

            async fn ping(&self) -> Result<(), StoreError> {
                sqlx::query("SELECT 1").execute(&self.pool).await?;
                Ok(())
            }

            async fn migrate(&self) -> Result<i64, StoreError> {
                $migrator.run(&self.pool).await?;
                Ok($migrator.iter().map(|migration| migration.version).max().unwrap_or(0))
            }

            async fn list_environments(&self) -> Result<Vec<String>, StoreError> {
                Ok(sqlx::query_scalar("SELECT DISTINCT environment FROM feature_flags")
                    .fetch_all(&self.pool)
                    .await?)
            }

            async fn list_flags(&self, env: &Environment) -> Result<Vec<Flag>, StoreError> {
                let sql = format!(
                    "SELECT {FLAG_COLUMNS} FROM feature_flags WHERE environment = $1 ORDER BY flag_key{}",
                    $byte_order
                );
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

            async fn create_flag(
                &self,
                env: &Environment,
                new: &NewFlag,
                actor: Option<&Actor>,
            ) -> Result<Committed<Flag>, StoreError> {
                let mut tx = self.begin_write().await?;
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
                    .fetch_one(&mut *tx)
                    .await
                    .map_err(map_unique_violation)?;
                let flag = Flag::from(row);
                let record = AuditRecord::flag_change(
                    AuditAction::FlagCreated,
                    env,
                    &new.flag_key,
                    actor,
                    None,
                    Some(audit_json(&flag)),
                );
                Self::commit_change(tx, record, flag).await
            }

            async fn update_flag(
                &self,
                env: &Environment,
                key: &FlagKey,
                patch: &FlagPatch,
                actor: Option<&Actor>,
            ) -> Result<Committed<Flag>, StoreError> {
                let mut tx = self.begin_write().await?;
                let before = Self::locked_flag(&mut tx, env, key).await?;
                let after = Self::apply_patch(&mut tx, before.id, patch).await?;
                let record = AuditRecord::flag_change(
                    AuditAction::FlagUpdated,
                    env,
                    key,
                    actor,
                    Some(audit_json(&before)),
                    Some(audit_json(&after)),
                );
                Self::commit_change(tx, record, after).await
            }

            async fn delete_flag(
                &self,
                env: &Environment,
                key: &FlagKey,
                actor: Option<&Actor>,
            ) -> Result<Committed<Flag>, StoreError> {
                let mut tx = self.begin_write().await?;
                let before = Self::locked_flag(&mut tx, env, key).await?;
                // Its schedules go with it (there is no foreign key to cascade; see the migration).
                sqlx::query("DELETE FROM flag_schedules WHERE flag_id = $1")
                    .bind(before.id)
                    .execute(&mut *tx)
                    .await?;
                sqlx::query("DELETE FROM feature_flags WHERE id = $1")
                    .bind(before.id)
                    .execute(&mut *tx)
                    .await?;
                let record = AuditRecord::flag_change(
                    AuditAction::FlagDeleted,
                    env,
                    key,
                    actor,
                    Some(audit_json(&before)),
                    None,
                );
                Self::commit_change(tx, record, before).await
            }

            async fn upsert_override(
                &self,
                env: &Environment,
                key: &FlagKey,
                new: &NewOverride,
                actor: Option<&Actor>,
                limit: AuditLimit,
            ) -> Result<Committed<UserOverride>, StoreError> {
                let (mut tx, flag_id, before) =
                    self.begin_override_change(env, key, new.user_id.as_str(), limit).await?;
                let sql = format!(
                    "INSERT INTO feature_flag_user_overrides \
                       (id, flag_id, user_id, override_type, reason, created_by, created_at) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7) \
                     ON CONFLICT (flag_id, user_id) DO UPDATE SET \
                       override_type = excluded.override_type, reason = excluded.reason, \
                       created_by = excluded.created_by \
                     RETURNING {OVERRIDE_COLUMNS}"
                );
                let row: OverrideRow = sqlx::query_as(&sql)
                    .bind(Uuid::new_v4())
                    .bind(flag_id)
                    .bind(new.user_id.as_str())
                    .bind(new.override_type.as_str())
                    .bind(new.reason.as_deref())
                    .bind(new.created_by.as_deref())
                    .bind(Timestamp::now().as_datetime())
                    .fetch_one(&mut *tx)
                    .await
                    .map_err(map_foreign_key_violation)?;
                let saved = UserOverride::try_from(row)?;
                let record = AuditRecord::flag_change(
                    AuditAction::OverrideUpserted,
                    env,
                    key,
                    actor,
                    before.as_ref().map(audit_json),
                    Some(audit_json(&saved)),
                );
                Self::commit_change(tx, record, saved).await
            }

            async fn delete_override(
                &self,
                env: &Environment,
                key: &FlagKey,
                user_id: &str,
                actor: Option<&Actor>,
                limit: AuditLimit,
            ) -> Result<Committed<UserOverride>, StoreError> {
                let (mut tx, flag_id, before) =
                    self.begin_override_change(env, key, user_id, limit).await?;
                let before = before.ok_or(StoreError::OverrideNotFound)?;
                sqlx::query("DELETE FROM feature_flag_user_overrides WHERE flag_id = $1 AND user_id = $2")
                    .bind(flag_id)
                    .bind(user_id)
                    .execute(&mut *tx)
                    .await?;
                let record = AuditRecord::flag_change(
                    AuditAction::OverrideDeleted,
                    env,
                    key,
                    actor,
                    Some(audit_json(&before)),
                    None,
                );
                Self::commit_change(tx, record, before).await
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
                let sql = format!(
                    "SELECT {OVERRIDE_COLUMNS} FROM feature_flag_user_overrides WHERE flag_id = $1 \
                     ORDER BY created_at DESC, user_id ASC LIMIT $2 OFFSET $3"
                );
                let rows: Vec<OverrideRow> = sqlx::query_as(&sql)
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

            async fn create_schedule(
                &self,
                env: &Environment,
                key: &FlagKey,
                new: &NewSchedule,
                actor: Option<&Actor>,
            ) -> Result<Schedule, StoreError> {
                let mut tx = self.begin_write().await?;
                let flag = Self::locked_flag(&mut tx, env, key).await?;
                let sql = format!(
                    "INSERT INTO flag_schedules \
                       (id, flag_id, environment, flag_key, scheduled_at, status, updates, \
                        retry_count, max_retries, created_by, created_at) \
                     VALUES ($1, $2, $3, $4, $5, 'pending', $6, 0, $7, $8, $9) \
                     RETURNING {SCHEDULE_COLUMNS}"
                );
                let row: ScheduleRow = sqlx::query_as(&sql)
                    .bind(Uuid::new_v4())
                    .bind(flag.id)
                    .bind(env.as_str())
                    .bind(key.as_str())
                    .bind(new.scheduled_at.as_datetime())
                    .bind(new.updates.to_json().to_string())
                    .bind(i32::try_from(new.max_retries).unwrap_or(i32::MAX))
                    .bind(actor.map(|a| a.sub.as_str()))
                    .bind(Timestamp::now().as_datetime())
                    .fetch_one(&mut *tx)
                    .await?;
                let schedule = Schedule::try_from(row)?;
                let record = schedule_record(AuditAction::ScheduleCreated, actor, None, &schedule);
                Self::commit_audited(tx, &[record]).await?;
                Ok(schedule)
            }

            async fn list_schedules(
                &self,
                env: &Environment,
                key: &FlagKey,
            ) -> Result<Vec<Schedule>, StoreError> {
                let flag = self.get_flag(env, key).await?.ok_or(StoreError::FlagNotFound)?;
                let sql = format!(
                    "SELECT {SCHEDULE_COLUMNS} FROM flag_schedules WHERE flag_id = $1 \
                     ORDER BY scheduled_at, created_at, id"
                );
                let rows: Vec<ScheduleRow> = sqlx::query_as(&sql).bind(flag.id).fetch_all(&self.pool).await?;
                rows.into_iter().map(Schedule::try_from).collect()
            }

            async fn cancel_schedule(
                &self,
                env: &Environment,
                key: &FlagKey,
                id: Uuid,
                actor: Option<&Actor>,
            ) -> Result<Schedule, StoreError> {
                let mut tx = self.begin_write().await?;
                let flag = Self::locked_flag(&mut tx, env, key).await?;
                let before = Self::schedule_of_flag(&mut tx, flag.id, id)
                    .await?
                    .ok_or(StoreError::ScheduleNotFound)?;
                match before.status {
                    ScheduleStatus::Pending => {}
                    ScheduleStatus::Cancelled => return Ok(before),
                    ScheduleStatus::Applied | ScheduleStatus::Failed => {
                        return Err(StoreError::ScheduleNotCancellable);
                    }
                }
                let sql = format!(
                    "UPDATE flag_schedules SET status = 'cancelled', next_retry_at = NULL, \
                       cancelled_by = $2, cancelled_at = $3 \
                     WHERE id = $1 RETURNING {SCHEDULE_COLUMNS}"
                );
                let row: ScheduleRow = sqlx::query_as(&sql)
                    .bind(id)
                    .bind(actor.map(|a| a.sub.as_str()))
                    .bind(Timestamp::now().as_datetime())
                    .fetch_one(&mut *tx)
                    .await?;
                let cancelled = Schedule::try_from(row)?;
                let record = schedule_record(AuditAction::ScheduleCancelled, actor, Some(&before), &cancelled);
                Self::commit_audited(tx, &[record]).await?;
                Ok(cancelled)
            }

            async fn due_schedules(&self, now: Timestamp, limit: u32) -> Result<Vec<Schedule>, StoreError> {
                let sql = format!(
                    "SELECT {SCHEDULE_COLUMNS} FROM flag_schedules WHERE {DUE_SCHEDULES} {DUE_ORDER} LIMIT $2"
                );
                let rows: Vec<ScheduleRow> = sqlx::query_as(&sql)
                    .bind(now.as_datetime())
                    .bind(i64::from(limit))
                    .fetch_all(&self.pool)
                    .await?;
                rows.into_iter().map(Schedule::try_from).collect()
            }

            async fn apply_next_schedule(
                &self,
                now: Timestamp,
                jitter: TimeDelta,
                skip: &[Uuid],
            ) -> Result<ScheduleClaim, StoreError> {
                let mut tx = self.begin_write().await?;
                let skipped = if skip.is_empty() {
                    String::new()
                } else {
                    let ids = (0..skip.len()).map(|i| format!("${}", i + 2)).collect::<Vec<_>>();
                    format!(" AND id NOT IN ({})", ids.join(", "))
                };
                let sql = format!(
                    "SELECT {SCHEDULE_COLUMNS} FROM flag_schedules WHERE {DUE_SCHEDULES}{skipped} \
                     {DUE_ORDER} LIMIT 1{}",
                    $claim_lock
                );
                let mut query = sqlx::query_as::<_, ScheduleRow>(&sql).bind(now.as_datetime());
                for id in skip {
                    query = query.bind(*id);
                }
                let Some(row) = query.fetch_optional(&mut *tx).await? else {
                    tx.rollback().await?;
                    return Ok(ScheduleClaim::NothingDue);
                };
                Self::attempt_schedule(tx, Schedule::try_from(row)?, now, jitter).await
            }

            async fn record_audit(&self, record: &AuditRecord) -> Result<(), StoreError> {
                let tx = self.pool.begin().await?;
                Self::commit_audited(tx, std::slice::from_ref(record)).await
            }

            async fn list_audit(
                &self,
                filter: &AuditFilter,
                limit: u32,
                offset: u64,
            ) -> Result<AuditPage, StoreError> {
                const WHERE: &str = "WHERE ($1 IS NULL OR environment = $1) AND ($2 IS NULL OR flag_key = $2)";
                let mut tx = self.pool.begin().await?;
                let total: i64 = sqlx::query_scalar(&format!("SELECT COUNT(*) FROM flag_audit_log {WHERE}"))
                    .bind(filter.environment.as_deref())
                    .bind(filter.flag_key.as_deref())
                    .fetch_one(&mut *tx)
                    .await?;
                let rows: Vec<AuditRow> = sqlx::query_as(&format!(
                    "SELECT id, at, action, environment, flag_key, actor_sub, actor_email, before, after \
                     FROM flag_audit_log {WHERE} ORDER BY id DESC LIMIT $3 OFFSET $4"
                ))
                .bind(filter.environment.as_deref())
                .bind(filter.flag_key.as_deref())
                .bind(i64::from(limit))
                .bind(i64::try_from(offset).unwrap_or(i64::MAX))
                .fetch_all(&mut *tx)
                .await?;
                tx.commit().await?;
                Ok(AuditPage {
                    entries: rows.into_iter().map(AuditEntry::from).collect(),
                    total: u64::try_from(total).unwrap_or_default(),
                })
            }

            async fn pending_invalidations(&self, limit: u32) -> Result<Vec<PendingInvalidation>, StoreError> {
                let rows: Vec<(i64, String)> = sqlx::query_as(
                    "SELECT id, environment FROM pending_invalidations ORDER BY id LIMIT $1",
                )
                .bind(i64::from(limit))
                .fetch_all(&self.pool)
                .await?;
                Ok(rows
                    .into_iter()
                    .map(|(id, environment)| PendingInvalidation { id: PendingId(id), environment })
                    .collect())
            }

            async fn clear_pending(&self, ids: &[PendingId]) -> Result<(), StoreError> {
                if ids.is_empty() {
                    return Ok(());
                }
                let sql = format!("DELETE FROM pending_invalidations WHERE id IN ({})", placeholders(ids.len()));
                let mut query = sqlx::query(&sql);
                for id in ids {
                    query = query.bind(id.0);
                }
                query.execute(&self.pool).await?;
                Ok(())
            }
        }
    };
}

// SQLite has no row locks: `BEGIN IMMEDIATE` already makes every write transaction the only one.
sql_flag_store!(
    PostgresStore,
    sqlx::Postgres,
    "postgres",
    POSTGRES_MIGRATOR,
    "BEGIN",
    " FOR UPDATE",
    " FOR UPDATE SKIP LOCKED",
    " FOR UPDATE NOWAIT",
    " COLLATE \"C\""
);
sql_flag_store!(
    SqliteStore,
    sqlx::Sqlite,
    "sqlite",
    SQLITE_MIGRATOR,
    "BEGIN IMMEDIATE",
    "",
    "",
    "",
    ""
);
