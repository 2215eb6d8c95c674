//! Building services over real backends, and a store that can pause a reader mid-request.
#![allow(dead_code, clippy::unwrap_used)]

use async_trait::async_trait;
use flags_core::FlagService;
use flags_core::cache::{FlagCache, MemoryCache, RedisCache};
use flags_core::config::RedisSettings;
use flags_core::domain::{
    Environment, Flag, FlagKey, FlagPatch, NewFlag, NewOverride, OverridePage, UserOverride,
    UserOverrides,
};
use flags_core::rate_limit::{DEFAULT_WINDOW, OverrideRateLimiter};
use flags_core::redis_client::RedisConnection;
use flags_core::store::{FlagStore, StoreError};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
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
    let cache: Arc<dyn FlagCache> =
        Arc::new(RedisCache::new(redis.clone(), Duration::from_secs(300)));
    FlagService::new(
        store,
        cache,
        OverrideRateLimiter::new(Some(redis), rate_limit, DEFAULT_WINDOW),
    )
}

pub fn service_with_memory(store: Arc<dyn FlagStore>) -> FlagService {
    let cache: Arc<dyn FlagCache> = Arc::new(MemoryCache::new(Duration::from_secs(300)));
    FlagService::new(
        store,
        cache,
        OverrideRateLimiter::new(None, 100, DEFAULT_WINDOW),
    )
}

/// Delegates to a real store; when armed, `list_flags` returns only after the test says so,
/// which lets a test put a write between a reader's database load and its cache fill.
#[derive(Debug)]
pub struct PausingStore {
    pub inner: Arc<dyn FlagStore>,
    armed: AtomicBool,
    pub loaded: Notify,
    pub resume: Notify,
}

impl PausingStore {
    pub fn new(inner: Arc<dyn FlagStore>) -> Self {
        Self {
            inner,
            armed: AtomicBool::new(false),
            loaded: Notify::new(),
            resume: Notify::new(),
        }
    }

    pub fn arm(&self) {
        self.armed.store(true, Ordering::SeqCst);
    }
}

#[async_trait]
impl FlagStore for PausingStore {
    fn backend(&self) -> &'static str {
        self.inner.backend()
    }
    async fn ping(&self) -> Result<(), StoreError> {
        self.inner.ping().await
    }
    async fn migrate(&self) -> Result<(), StoreError> {
        self.inner.migrate().await
    }
    async fn list_flags(&self, env: &Environment) -> Result<Vec<Flag>, StoreError> {
        let flags = self.inner.list_flags(env).await?;
        if self.armed.swap(false, Ordering::SeqCst) {
            self.loaded.notify_one();
            self.resume.notified().await;
        }
        Ok(flags)
    }
    async fn get_flag(&self, env: &Environment, key: &FlagKey) -> Result<Option<Flag>, StoreError> {
        self.inner.get_flag(env, key).await
    }
    async fn create_flag(&self, env: &Environment, new: &NewFlag) -> Result<Flag, StoreError> {
        self.inner.create_flag(env, new).await
    }
    async fn update_flag(
        &self,
        env: &Environment,
        key: &FlagKey,
        patch: &FlagPatch,
    ) -> Result<Option<Flag>, StoreError> {
        self.inner.update_flag(env, key, patch).await
    }
    async fn delete_flag(&self, env: &Environment, key: &FlagKey) -> Result<bool, StoreError> {
        self.inner.delete_flag(env, key).await
    }
    async fn upsert_override(
        &self,
        flag_id: Uuid,
        new: &NewOverride,
    ) -> Result<UserOverride, StoreError> {
        self.inner.upsert_override(flag_id, new).await
    }
    async fn delete_override(&self, flag_id: Uuid, user_id: &str) -> Result<bool, StoreError> {
        self.inner.delete_override(flag_id, user_id).await
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
        self.inner.user_overrides(env, user_id).await
    }
}
