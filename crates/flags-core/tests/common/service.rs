//! Building services over real backends, and a store that can pause a reader mid-request.
#![allow(dead_code, clippy::unwrap_used)]

use async_trait::async_trait;
use flags_core::FlagService;
use flags_core::cache::{FlagCache, MemoryCache, RedisCache};
use flags_core::config::RedisSettings;
use flags_core::domain::{
    Actor, AuditFilter, AuditPage, Environment, Flag, FlagKey, FlagPatch, NewFlag, NewOverride,
    NewSchedule, OverridePage, Schedule, Timestamp, UserOverride, UserOverrides,
};
use flags_core::rate_limit::{AuditLogRateLimiter, DEFAULT_WINDOW, RateWindow};
use flags_core::redis::{RedisConnection, RedisRateLimiter};
use flags_core::store::{
    AuditLimit, AuditRecord, Committed, FlagStore, PendingId, PendingInvalidation, ScheduleClaim,
    StoreError,
};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Notify;
use uuid::Uuid;

pub async fn redis_connection(url: &str, command_timeout: Duration) -> RedisConnection {
    let mut settings = RedisSettings::new(url);
    settings.command_timeout = command_timeout;
    let connection = RedisConnection::start(&settings).unwrap();
    connection.wait_connected(Duration::from_secs(3)).await;
    connection
}

pub fn service_with_redis(
    store: Arc<dyn FlagStore>,
    redis: RedisConnection,
    rate_limit: u32,
) -> FlagService {
    let cache: Arc<dyn FlagCache> = Arc::new(RedisCache::new(
        redis.clone(),
        Duration::from_secs(300),
        store.cache_scope(),
    ));
    let window = RateWindow::new(rate_limit, DEFAULT_WINDOW);
    FlagService::new(store, cache, Arc::new(RedisRateLimiter::new(redis, window)))
}

pub fn service_with_memory(store: Arc<dyn FlagStore>) -> FlagService {
    let cache: Arc<dyn FlagCache> = Arc::new(MemoryCache::new(Duration::from_secs(300)));
    let window = RateWindow::new(100, DEFAULT_WINDOW);
    FlagService::new(store, cache, Arc::new(AuditLogRateLimiter::new(window)))
}

/// Which read a [`PausingStore`] holds back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PauseAt {
    ListFlags,
    UserOverrides,
}

/// Delegates to a real store; when armed, the chosen read returns only after the test says so,
/// which lets a test put a write between a reader's database load and its cache fill.
#[derive(Debug)]
pub struct PausingStore {
    pub inner: Arc<dyn FlagStore>,
    armed: std::sync::Mutex<Option<PauseAt>>,
    pub loaded: Notify,
    pub resume: Notify,
    /// How often each read reached the database.
    pub list_flags_calls: std::sync::atomic::AtomicUsize,
    pub list_environments_calls: std::sync::atomic::AtomicUsize,
}

impl PausingStore {
    pub fn new(inner: Arc<dyn FlagStore>) -> Self {
        Self {
            inner,
            armed: std::sync::Mutex::new(None),
            loaded: Notify::new(),
            resume: Notify::new(),
            list_flags_calls: std::sync::atomic::AtomicUsize::new(0),
            list_environments_calls: std::sync::atomic::AtomicUsize::new(0),
        }
    }

    /// Holds back the next `list_flags`.
    pub fn arm(&self) {
        self.arm_at(PauseAt::ListFlags);
    }

    pub fn arm_at(&self, at: PauseAt) {
        *self.armed.lock().unwrap() = Some(at);
    }

    async fn maybe_pause(&self, at: PauseAt) {
        let hit = {
            let mut armed = self.armed.lock().unwrap();
            if *armed == Some(at) {
                *armed = None;
                true
            } else {
                false
            }
        };
        if hit {
            self.loaded.notify_one();
            self.resume.notified().await;
        }
    }
}

#[async_trait]
impl FlagStore for PausingStore {
    fn backend(&self) -> &'static str {
        self.inner.backend()
    }
    fn cache_scope(&self) -> &str {
        self.inner.cache_scope()
    }
    async fn ping(&self) -> Result<(), StoreError> {
        self.inner.ping().await
    }
    async fn migrate(&self) -> Result<i64, StoreError> {
        self.inner.migrate().await
    }
    async fn list_environments(&self) -> Result<Vec<String>, StoreError> {
        self.list_environments_calls
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        self.inner.list_environments().await
    }
    async fn list_flags(&self, env: &Environment) -> Result<Vec<Flag>, StoreError> {
        self.list_flags_calls
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let flags = self.inner.list_flags(env).await?;
        self.maybe_pause(PauseAt::ListFlags).await;
        Ok(flags)
    }
    async fn get_flag(&self, env: &Environment, key: &FlagKey) -> Result<Option<Flag>, StoreError> {
        self.inner.get_flag(env, key).await
    }
    async fn create_flag(
        &self,
        env: &Environment,
        new: &NewFlag,
        actor: Option<&Actor>,
    ) -> Result<Committed<Flag>, StoreError> {
        self.inner.create_flag(env, new, actor).await
    }
    async fn update_flag(
        &self,
        env: &Environment,
        key: &FlagKey,
        patch: &FlagPatch,
        actor: Option<&Actor>,
    ) -> Result<Committed<Flag>, StoreError> {
        self.inner.update_flag(env, key, patch, actor).await
    }
    async fn delete_flag(
        &self,
        env: &Environment,
        key: &FlagKey,
        actor: Option<&Actor>,
    ) -> Result<Committed<Flag>, StoreError> {
        self.inner.delete_flag(env, key, actor).await
    }
    async fn upsert_override(
        &self,
        env: &Environment,
        key: &FlagKey,
        new: &NewOverride,
        actor: Option<&Actor>,
        limit: AuditLimit,
    ) -> Result<Committed<UserOverride>, StoreError> {
        self.inner
            .upsert_override(env, key, new, actor, limit)
            .await
    }
    async fn delete_override(
        &self,
        env: &Environment,
        key: &FlagKey,
        user_id: &str,
        actor: Option<&Actor>,
        limit: AuditLimit,
    ) -> Result<Committed<UserOverride>, StoreError> {
        self.inner
            .delete_override(env, key, user_id, actor, limit)
            .await
    }
    async fn list_overrides(
        &self,
        flag_id: Uuid,
        limit: u32,
        offset: u64,
    ) -> Result<OverridePage, StoreError> {
        self.inner.list_overrides(flag_id, limit, offset).await
    }
    async fn user_overrides(
        &self,
        env: &Environment,
        user_id: &str,
    ) -> Result<UserOverrides, StoreError> {
        let overrides = self.inner.user_overrides(env, user_id).await?;
        self.maybe_pause(PauseAt::UserOverrides).await;
        Ok(overrides)
    }
    async fn create_schedule(
        &self,
        env: &Environment,
        key: &FlagKey,
        new: &NewSchedule,
        actor: Option<&Actor>,
    ) -> Result<Schedule, StoreError> {
        self.inner.create_schedule(env, key, new, actor).await
    }
    async fn list_schedules(
        &self,
        env: &Environment,
        key: &FlagKey,
    ) -> Result<Vec<Schedule>, StoreError> {
        self.inner.list_schedules(env, key).await
    }
    async fn cancel_schedule(
        &self,
        env: &Environment,
        key: &FlagKey,
        id: Uuid,
        actor: Option<&Actor>,
    ) -> Result<Schedule, StoreError> {
        self.inner.cancel_schedule(env, key, id, actor).await
    }
    async fn due_schedules(&self, now: Timestamp, limit: u32) -> Result<Vec<Schedule>, StoreError> {
        self.inner.due_schedules(now, limit).await
    }
    async fn apply_next_schedule(
        &self,
        now: Timestamp,
        jitter: chrono::TimeDelta,
        skip: &[Uuid],
    ) -> Result<ScheduleClaim, StoreError> {
        self.inner.apply_next_schedule(now, jitter, skip).await
    }
    async fn record_audit(&self, record: &AuditRecord) -> Result<(), StoreError> {
        self.inner.record_audit(record).await
    }
    async fn list_audit(
        &self,
        filter: &AuditFilter,
        limit: u32,
        offset: u64,
    ) -> Result<AuditPage, StoreError> {
        self.inner.list_audit(filter, limit, offset).await
    }
    async fn pending_invalidations(
        &self,
        limit: u32,
    ) -> Result<Vec<PendingInvalidation>, StoreError> {
        self.inner.pending_invalidations(limit).await
    }
    async fn clear_pending(&self, ids: &[PendingId]) -> Result<(), StoreError> {
        self.inner.clear_pending(ids).await
    }
}
