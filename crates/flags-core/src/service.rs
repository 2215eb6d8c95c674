//! The flag service: cache-aside reads with database fallback; writes that commit the change,
//! its audit row and a pending invalidation together, then invalidate the cache (contract §3.1).

use crate::cache::{
    CacheFill, CacheKind, Environments, FlagCache, InvalidateAllReport, Invalidation,
};
use crate::domain::{
    APPLY_BATCH, Actor, ApplyOutcome, ApplyReport, AuditAction, AuditFilter, AuditPage,
    Environment, EvaluationContext, Evaluations, Flag, FlagKey, FlagPatch, FlagSet, NewFlag,
    NewOverride, NewSchedule, OverridePage, Schedule, Timestamp, UserOverride, UserOverrides,
    evaluate, random_jitter,
};
use crate::rate_limit::{OverrideRateLimiter, RateDecision, RateLimited};
use crate::store::{
    AuditLimit, AuditRecord, Committed, FlagStore, PendingId, ScheduleClaim, StoreError,
};
use chrono::TimeDelta;
use serde::Serialize;
use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Instant;
use uuid::Uuid;

/// Pending invalidations one sweep takes on at most; the next sweep takes the rest.
const SWEEP_BATCH: u32 = 1_000;

#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error("flag '{0}' not found")]
    FlagNotFound(String),
    #[error("user override not found for flag '{0}'")]
    OverrideNotFound(String),
    #[error("flag '{0}' already exists")]
    AlreadyExists(String),
    #[error("schedule not found for flag '{0}'")]
    ScheduleNotFound(String),
    #[error("the schedule is already applied or failed")]
    ScheduleNotCancellable,
    #[error(transparent)]
    RateLimited(#[from] RateLimited),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Whether Redis answers; `Disabled` when none is configured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RedisStatus {
    Up,
    Down,
    Disabled,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HealthReport {
    /// The cache requests are served from right now: `None` while Redis is down.
    pub cache: Option<CacheKind>,
    pub redis: RedisStatus,
    pub database_up: bool,
}

impl HealthReport {
    pub fn is_ok(&self) -> bool {
        self.database_up && self.redis != RedisStatus::Down
    }
}

/// A page request, already validated (page ≥ 1, 1 ≤ size ≤ 500).
#[derive(Debug, Clone, Copy)]
pub struct PageRequest {
    pub page: u32,
    pub page_size: u32,
}

impl PageRequest {
    fn offset(self) -> u64 {
        u64::from(self.page.saturating_sub(1)) * u64::from(self.page_size)
    }
}

/// What one sweep of pending invalidations did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SweepReport {
    /// Pending records completed and removed.
    pub swept: u64,
    /// Environments whose cache was invalidated.
    pub environments: u64,
    /// Environments whose invalidation failed again (their records stay for the next sweep).
    pub failed: u64,
}

#[derive(Debug)]
pub struct FlagService {
    store: Arc<dyn FlagStore>,
    cache: Arc<dyn FlagCache>,
    rate_limiter: Arc<dyn OverrideRateLimiter>,
}

impl FlagService {
    pub fn new(
        store: Arc<dyn FlagStore>,
        cache: Arc<dyn FlagCache>,
        rate_limiter: Arc<dyn OverrideRateLimiter>,
    ) -> Self {
        Self {
            store,
            cache,
            rate_limiter,
        }
    }

    pub fn store(&self) -> &Arc<dyn FlagStore> {
        &self.store
    }

    pub fn cache(&self) -> &Arc<dyn FlagCache> {
        &self.cache
    }

    /// The environment's flags and (for a signed-in caller) the caller's overrides: from the
    /// cache when it has them, else from the database, putting them back before returning
    /// (Lambda freezes the process after the response, so later work might never run).
    async fn load(
        &self,
        env: &Environment,
        user_id: Option<&str>,
    ) -> Result<(Arc<FlagSet>, UserOverrides), ServiceError> {
        let cached = match self.cache.read(env, user_id).await {
            Ok(read) => Some(read),
            Err(error) => {
                tracing::warn!(cache = "unavailable", environment = %env, error = %error,
                    "cache unavailable; answering from the database");
                None
            }
        };
        let (cached_flags, cached_overrides, generation) = match cached {
            Some(read) => (read.flags, read.overrides, Some(read.generation)),
            None => (None, None, None),
        };
        let overrides_needed = user_id.is_some();
        if let Some(flags) = &cached_flags
            && (!overrides_needed || cached_overrides.is_some())
        {
            tracing::info!(cache = "hit", environment = %env, flags = flags.len(), "flags served from cache");
            return Ok((
                cached_flags.unwrap_or_default(),
                cached_overrides.unwrap_or_default(),
            ));
        }

        let flags_missed = cached_flags.is_none();
        // A name nobody created (a typo, or a loop over made-up names) is answered from the
        // cached list of environments: no database query, and nothing cached under the name.
        if flags_missed && generation.is_some() && !self.environment_exists(env).await {
            tracing::info!(cache = "hit", environment = %env, "no flags in this environment");
            return Ok((Arc::default(), UserOverrides::new()));
        }
        let flags = match cached_flags {
            Some(flags) => flags,
            None => Arc::new(
                self.store
                    .list_flags(env)
                    .await?
                    .into_iter()
                    .map(|f| (f.flag_key.clone(), f))
                    .collect(),
            ),
        };
        let overrides_missed = user_id.filter(|_| cached_overrides.is_none());
        let overrides = match (cached_overrides, overrides_missed) {
            (Some(overrides), _) => overrides,
            (None, Some(user)) => self.store.user_overrides(env, user).await?,
            (None, None) => UserOverrides::new(),
        };

        if let Some(generation) = generation {
            let fill = CacheFill {
                flags: flags_missed.then_some(flags.as_ref()),
                overrides: overrides_missed.map(|user| (user, &overrides)),
            };
            match self.cache.fill(env, generation, fill).await {
                Ok(stored) => {
                    tracing::info!(cache = "miss", environment = %env, repopulated = stored,
                    "flags loaded from the database")
                }
                Err(error) => {
                    tracing::warn!(cache = "unavailable", environment = %env, error = %error,
                    "could not repopulate the cache")
                }
            }
        }
        Ok((flags, overrides))
    }

    /// Whether `env` holds flags, from the cached list of environments (loaded from the database
    /// and put back on a miss). `true` when the list cannot be had: the caller asks the database.
    async fn environment_exists(&self, env: &Environment) -> bool {
        let read = match self.cache.read_environments().await {
            Ok(read) => read,
            Err(_) => return true,
        };
        let environments = match read.environments {
            Some(environments) => environments,
            None => {
                let environments: Environments = match self.store.list_environments().await {
                    Ok(names) => names.into_iter().collect(),
                    Err(_) => return true,
                };
                if let Err(error) = self
                    .cache
                    .fill_environments(read.generation, &environments)
                    .await
                {
                    tracing::warn!(cache = "unavailable", error = %error,
                        "could not cache the list of environments");
                }
                environments
            }
        };
        environments.contains(env.as_str())
    }

    /// The environment's flags and the caller's overrides, from the same cache-aside read as
    /// every evaluation: for callers that report more than the value (OFREP's reasons, ETag).
    pub async fn evaluation_inputs(
        &self,
        env: &Environment,
        user_id: Option<&str>,
    ) -> Result<(Arc<FlagSet>, UserOverrides), ServiceError> {
        self.load(env, user_id.filter(|id| !id.is_empty())).await
    }

    /// Every flag of the environment evaluated for the caller (contract §1.1).
    pub async fn evaluate_all(
        &self,
        env: &Environment,
        user_id: Option<&str>,
    ) -> Result<Evaluations, ServiceError> {
        let user_id = user_id.filter(|id| !id.is_empty());
        let (flags, overrides) = self.load(env, user_id).await?;
        Ok(Evaluations::new(flags, user_id, overrides))
    }

    /// One flag evaluated for the caller; same rules and data as [`Self::evaluate_all`].
    pub async fn evaluate(
        &self,
        env: &Environment,
        key: &FlagKey,
        user_id: Option<&str>,
    ) -> Result<bool, ServiceError> {
        let user_id = user_id.filter(|id| !id.is_empty());
        let (flags, overrides) = self.load(env, user_id).await?;
        Ok(evaluate(
            flags.get(key.as_str()),
            EvaluationContext::new(user_id, &overrides),
        ))
    }

    /// A flag's raw configuration, served from the cached snapshot.
    pub async fn get_flag(&self, env: &Environment, key: &FlagKey) -> Result<Flag, ServiceError> {
        let (flags, _) = self.load(env, None).await?;
        flags
            .get(key.as_str())
            .cloned()
            .ok_or_else(|| ServiceError::FlagNotFound(key.to_string()))
    }

    /// Admin listing, read from the database (the source of truth), sorted by key.
    pub async fn list_flags(&self, env: &Environment) -> Result<Vec<Flag>, ServiceError> {
        Ok(self.store.list_flags(env).await?)
    }

    pub async fn create_flag(
        &self,
        env: &Environment,
        new: NewFlag,
        actor: Option<&Actor>,
    ) -> Result<Flag, ServiceError> {
        let committed = self
            .store
            .create_flag(env, &new, actor)
            .await
            .map_err(|e| named_after(e, &new.flag_key))?;
        Ok(self.propagate(env, Invalidation::NewFlag, committed).await)
    }

    pub async fn update_flag(
        &self,
        env: &Environment,
        key: &FlagKey,
        patch: FlagPatch,
        actor: Option<&Actor>,
    ) -> Result<Flag, ServiceError> {
        let committed = self
            .store
            .update_flag(env, key, &patch, actor)
            .await
            .map_err(|e| named_after(e, key))?;
        Ok(self.propagate(env, Invalidation::Flags, committed).await)
    }

    pub async fn delete_flag(
        &self,
        env: &Environment,
        key: &FlagKey,
        actor: Option<&Actor>,
    ) -> Result<(), ServiceError> {
        let committed = self
            .store
            .delete_flag(env, key, actor)
            .await
            .map_err(|e| named_after(e, key))?;
        // Its overrides went with it, and a flag re-created under the same key must not inherit
        // them: every user's cached overrides go too (one epoch bump, not a keyspace scan).
        self.propagate(env, Invalidation::Environment, committed)
            .await;
        Ok(())
    }

    /// Where an override change is counted (contract §2.5): after the flag lookup, so a missing
    /// flag is a 404 and never counted. With a counter ahead of the store (Redis) the lookup
    /// comes first here; otherwise the store looks the flag up and counts in one transaction.
    async fn override_limit(
        &self,
        env: &Environment,
        key: &FlagKey,
    ) -> Result<AuditLimit, ServiceError> {
        if self.rate_limiter.counts_before_the_change()
            && self.store.get_flag(env, key).await?.is_none()
        {
            return Err(ServiceError::FlagNotFound(key.to_string()));
        }
        match self.rate_limiter.check(env, key).await {
            RateDecision::Admitted => Ok(None),
            RateDecision::Limited(limited) => Err(limited.into()),
            RateDecision::CountInAuditLog(window) => Ok(Some(window)),
        }
    }

    /// Adds or replaces a user's override. Order: flag lookup (404), rate limit (429), change.
    pub async fn upsert_override(
        &self,
        env: &Environment,
        key: &FlagKey,
        new: NewOverride,
        actor: Option<&Actor>,
    ) -> Result<UserOverride, ServiceError> {
        let limit = self.override_limit(env, key).await?;
        let committed = self
            .store
            .upsert_override(env, key, &new, actor, limit)
            .await
            .map_err(|e| named_after(e, key))?;
        Ok(self
            .propagate(env, Invalidation::User(new.user_id.as_str()), committed)
            .await)
    }

    pub async fn delete_override(
        &self,
        env: &Environment,
        key: &FlagKey,
        user_id: &str,
        actor: Option<&Actor>,
    ) -> Result<(), ServiceError> {
        let limit = self.override_limit(env, key).await?;
        let committed = self
            .store
            .delete_override(env, key, user_id, actor, limit)
            .await
            .map_err(|e| named_after(e, key))?;
        self.propagate(env, Invalidation::User(user_id), committed)
            .await;
        Ok(())
    }

    pub async fn list_overrides(
        &self,
        env: &Environment,
        key: &FlagKey,
        page: PageRequest,
    ) -> Result<OverridePage, ServiceError> {
        let flag = self
            .store
            .get_flag(env, key)
            .await?
            .ok_or_else(|| ServiceError::FlagNotFound(key.to_string()))?;
        Ok(self
            .store
            .list_overrides(flag.id, page.page_size, page.offset())
            .await?)
    }

    /// Schedules `new.updates` for the flag (contract §2.6).
    pub async fn create_schedule(
        &self,
        env: &Environment,
        key: &FlagKey,
        new: NewSchedule,
        actor: Option<&Actor>,
    ) -> Result<Schedule, ServiceError> {
        self.store
            .create_schedule(env, key, &new, actor)
            .await
            .map_err(|e| named_after(e, key))
    }

    /// Every schedule of the flag, by `scheduledAt`.
    pub async fn list_schedules(
        &self,
        env: &Environment,
        key: &FlagKey,
    ) -> Result<Vec<Schedule>, ServiceError> {
        self.store
            .list_schedules(env, key)
            .await
            .map_err(|e| named_after(e, key))
    }

    pub async fn cancel_schedule(
        &self,
        env: &Environment,
        key: &FlagKey,
        id: Uuid,
        actor: Option<&Actor>,
    ) -> Result<Schedule, ServiceError> {
        self.store
            .cancel_schedule(env, key, id, actor)
            .await
            .map_err(|e| named_after(e, key))
    }

    /// The schedules an applier pass would take now, in its order (at most one pass's worth).
    pub async fn due_schedules(&self, now: Timestamp) -> Result<Vec<Schedule>, ServiceError> {
        Ok(self.store.due_schedules(now, APPLY_BATCH).await?)
    }

    /// How late the most overdue schedule still waiting is, in whole seconds (0 when none).
    pub async fn overdue_seconds(&self, now: Timestamp) -> Result<u64, ServiceError> {
        let due = self.store.due_schedules(now, APPLY_BATCH).await?;
        Ok(due
            .iter()
            .map(|s| (now.as_datetime() - s.due_at().as_datetime()).num_seconds())
            .max()
            .map_or(0, |late| u64::try_from(late).unwrap_or(0)))
    }

    /// One applier pass (contract §2.6): up to 100 due schedules, each claimed and applied in its
    /// own transaction; applied changes then reach readers like any flag update (§3.1).
    pub async fn apply_due_schedules(&self) -> Result<ApplyReport, ServiceError> {
        self.apply_due_schedules_at(Timestamp::now(), random_jitter)
            .await
    }

    /// [`Self::apply_due_schedules`] at a given time with a given retry jitter: tests use it to
    /// step through retries without waiting minutes for them.
    pub async fn apply_due_schedules_at(
        &self,
        now: Timestamp,
        jitter: impl Fn() -> TimeDelta,
    ) -> Result<ApplyReport, ServiceError> {
        let started = Instant::now();
        let mut report = ApplyReport::default();
        let mut busy: Vec<Uuid> = Vec::new();
        while report.processed < u64::from(APPLY_BATCH) && busy.len() < APPLY_BATCH as usize {
            match self.store.apply_next_schedule(now, jitter(), &busy).await? {
                ScheduleClaim::NothingDue => break,
                ScheduleClaim::FlagBusy(id) => busy.push(id),
                ScheduleClaim::Attempted { outcome, pending } => {
                    report.processed += 1;
                    self.after_attempt(*outcome, pending, &mut report).await;
                }
            }
        }
        report.duration_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
        if report.processed > 0 || !busy.is_empty() {
            tracing::info!(
                processed = report.processed,
                applied = report.applied,
                failed = report.failed,
                busy = busy.len(),
                duration_ms = report.duration_ms,
                "schedules applied"
            );
        }
        Ok(report)
    }

    async fn after_attempt(
        &self,
        outcome: ApplyOutcome,
        pending: Option<PendingId>,
        report: &mut ApplyReport,
    ) {
        match outcome {
            ApplyOutcome::Applied { schedule } => {
                report.applied += 1;
                tracing::info!(schedule = %schedule.id, flag_key = %schedule.flag_key,
                    environment = %schedule.environment, "schedule applied");
                if let (Some(pending), Ok(env)) =
                    (pending, Environment::parse(&schedule.environment))
                {
                    let committed = Committed { value: (), pending };
                    self.propagate(&env, Invalidation::Flags, committed).await;
                }
            }
            ApplyOutcome::RetryScheduled {
                schedule,
                next_attempt,
            } => {
                tracing::warn!(schedule = %schedule.id, flag_key = %schedule.flag_key,
                    environment = %schedule.environment, attempt = schedule.retry_count,
                    next_attempt = %next_attempt, error = schedule.error_message.as_deref(),
                    "schedule attempt failed; retrying later");
            }
            ApplyOutcome::Failed { schedule } => {
                report.failed += 1;
                tracing::error!(schedule = %schedule.id, flag_key = %schedule.flag_key,
                    environment = %schedule.environment, attempts = schedule.retry_count,
                    error = schedule.error_message.as_deref(), "schedule failed");
            }
        }
    }

    /// One page of the audit log, newest first.
    pub async fn list_audit(
        &self,
        filter: &AuditFilter,
        page: PageRequest,
    ) -> Result<AuditPage, ServiceError> {
        Ok(self
            .store
            .list_audit(filter, page.page_size, page.offset())
            .await?)
    }

    /// Drops every cached key, page by page, and reports exactly what it deleted. Redis trouble
    /// is never an error: the report says how far it got.
    pub async fn invalidate_all(
        &self,
        actor: Option<&Actor>,
    ) -> Result<InvalidateAllReport, ServiceError> {
        let report = self.cache.invalidate_all().await;
        tracing::info!(
            cache_invalidated = report.complete,
            keys = report.deleted,
            "cache invalidate-all"
        );
        self.store
            .record_audit(&AuditRecord {
                action: AuditAction::CacheInvalidated,
                environment: None,
                flag_key: None,
                actor: actor.cloned(),
                before: None,
                after: Some(serde_json::json!({
                    "invalidatedKeys": report.deleted,
                    "complete": report.complete,
                })),
            })
            .await?;
        Ok(report)
    }

    /// After a commit: invalidates the cache (bounded retry, not gated by the read breaker) and
    /// removes the pending record once that worked. When Redis cannot be reached the record
    /// stays and the sweeper completes it (contract §3.1).
    async fn propagate<T>(
        &self,
        env: &Environment,
        what: Invalidation<'_>,
        committed: Committed<T>,
    ) -> T {
        match self.cache.invalidate(env, what).await {
            Ok(()) => {
                tracing::info!(cache_invalidated = true, environment = %env, scope = ?what, "cache invalidated");
                self.clear_pending(&[committed.pending]).await;
            }
            Err(error) => {
                tracing::warn!(cache_invalidated = false, environment = %env, scope = ?what,
                    pending_invalidation = committed.pending.0, error = %error,
                    "cache invalidation failed; the sweeper completes it once Redis answers");
            }
        }
        committed.value
    }

    /// A record left behind is only an extra invalidation for the next sweep; never an error.
    async fn clear_pending(&self, ids: &[PendingId]) {
        if let Err(error) = self.store.clear_pending(ids).await {
            tracing::warn!(error = %error, records = ids.len(),
                "could not remove completed pending invalidations; the sweeper will redo them");
        }
    }

    /// Completes the invalidations that writers could not (contract §3.1): the local server
    /// runs it every second, AWS once a minute, and any instance when its Redis comes back.
    pub async fn sweep_pending_invalidations(&self) -> Result<SweepReport, ServiceError> {
        let pending = self.store.pending_invalidations(SWEEP_BATCH).await?;
        let mut report = SweepReport::default();
        let environments: BTreeSet<&str> = pending.iter().map(|p| p.environment.as_str()).collect();
        for name in environments {
            let ids: Vec<PendingId> = pending
                .iter()
                .filter(|p| p.environment == name)
                .map(|p| p.id)
                .collect();
            // A name that is not an environment (never written by this service) has nothing cached.
            let invalidated = match Environment::parse(name) {
                Ok(env) => self.cache.invalidate(&env, Invalidation::Environment).await,
                Err(_) => Ok(()),
            };
            match invalidated {
                Ok(()) => {
                    self.clear_pending(&ids).await;
                    report.environments += 1;
                    report.swept += ids.len() as u64;
                }
                Err(error) => {
                    report.failed += 1;
                    tracing::warn!(environment = name, error = %error, records = ids.len(),
                        "sweep could not invalidate; the records stay for the next sweep");
                }
            }
        }
        if report.swept > 0 || report.failed > 0 {
            tracing::info!(
                swept = report.swept,
                environments = report.environments,
                failed = report.failed,
                "pending invalidations swept"
            );
        }
        Ok(report)
    }

    pub async fn health(&self) -> HealthReport {
        let database_up = match self.store.ping().await {
            Ok(()) => true,
            Err(error) => {
                tracing::error!(error = %error, "database health check failed");
                false
            }
        };
        let kind = self.cache.kind();
        let redis = match kind {
            CacheKind::Memory => RedisStatus::Disabled,
            CacheKind::Redis => match self.cache.ping().await {
                Ok(()) => RedisStatus::Up,
                Err(_) => RedisStatus::Down,
            },
        };
        let cache = (redis != RedisStatus::Down).then_some(kind);
        HealthReport {
            cache,
            redis,
            database_up,
        }
    }
}

/// The store's outcomes about one flag, named after the flag the caller asked about.
fn named_after(error: StoreError, key: &FlagKey) -> ServiceError {
    match error {
        StoreError::AlreadyExists => ServiceError::AlreadyExists(key.to_string()),
        StoreError::FlagNotFound => ServiceError::FlagNotFound(key.to_string()),
        StoreError::OverrideNotFound => ServiceError::OverrideNotFound(key.to_string()),
        StoreError::ScheduleNotFound => ServiceError::ScheduleNotFound(key.to_string()),
        StoreError::ScheduleNotCancellable => ServiceError::ScheduleNotCancellable,
        StoreError::RateLimited(limited) => ServiceError::RateLimited(limited),
        other => other.into(),
    }
}
