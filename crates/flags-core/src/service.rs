//! The flag service: cache-aside reads with database fallback, invalidation after every write.

use crate::cache::{CacheFill, CacheKind, FlagCache, Invalidation};
use crate::domain::{
    Environment, EvaluationContext, Flag, FlagKey, FlagPatch, FlagSet, NewFlag, NewOverride,
    OverridePage, UserOverride, UserOverrides, evaluate, evaluate_all,
};
use crate::rate_limit::{OverrideRateLimiter, RateLimited};
use crate::store::{FlagStore, StoreError};
use std::collections::BTreeMap;
use std::sync::Arc;

#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error("flag '{0}' not found")]
    FlagNotFound(String),
    #[error("user override not found for flag '{0}'")]
    OverrideNotFound(String),
    #[error("flag '{0}' already exists")]
    AlreadyExists(String),
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

#[derive(Debug)]
pub struct FlagService {
    store: Arc<dyn FlagStore>,
    cache: Arc<dyn FlagCache>,
    rate_limiter: OverrideRateLimiter,
}

impl FlagService {
    pub fn new(
        store: Arc<dyn FlagStore>,
        cache: Arc<dyn FlagCache>,
        rate_limiter: OverrideRateLimiter,
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
    ) -> Result<(FlagSet, UserOverrides), ServiceError> {
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
        let flags = match cached_flags {
            Some(flags) => flags,
            None => self
                .store
                .list_flags(env)
                .await?
                .into_iter()
                .map(|f| (f.flag_key.clone(), f))
                .collect(),
        };
        let overrides_missed = user_id.filter(|_| cached_overrides.is_none());
        let overrides = match (cached_overrides, overrides_missed) {
            (Some(overrides), _) => overrides,
            (None, Some(user)) => self.store.user_overrides(env, user).await?,
            (None, None) => UserOverrides::new(),
        };

        if let Some(generation) = generation {
            let fill = CacheFill {
                flags: flags_missed.then_some(&flags),
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

    /// Every flag of the environment evaluated for the caller (contract §1.1).
    pub async fn evaluate_all(
        &self,
        env: &Environment,
        user_id: Option<&str>,
    ) -> Result<BTreeMap<String, bool>, ServiceError> {
        let user_id = user_id.filter(|id| !id.is_empty());
        let (flags, overrides) = self.load(env, user_id).await?;
        Ok(evaluate_all(
            &flags,
            EvaluationContext {
                user_id,
                overrides: &overrides,
            },
        ))
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
            EvaluationContext {
                user_id,
                overrides: &overrides,
            },
        ))
    }

    /// A flag's raw configuration, served from the cached snapshot.
    pub async fn get_flag(&self, env: &Environment, key: &FlagKey) -> Result<Flag, ServiceError> {
        let (mut flags, _) = self.load(env, None).await?;
        flags
            .remove(key.as_str())
            .ok_or_else(|| ServiceError::FlagNotFound(key.to_string()))
    }

    /// Admin listing, read from the database (the source of truth), sorted by key.
    pub async fn list_flags(&self, env: &Environment) -> Result<Vec<Flag>, ServiceError> {
        Ok(self.store.list_flags(env).await?)
    }

    pub async fn create_flag(&self, env: &Environment, new: NewFlag) -> Result<Flag, ServiceError> {
        let flag = self
            .store
            .create_flag(env, &new)
            .await
            .map_err(|error| match error {
                StoreError::AlreadyExists => ServiceError::AlreadyExists(new.flag_key.to_string()),
                other => other.into(),
            })?;
        self.invalidate(env, Invalidation::Flags).await;
        Ok(flag)
    }

    pub async fn update_flag(
        &self,
        env: &Environment,
        key: &FlagKey,
        patch: FlagPatch,
    ) -> Result<Flag, ServiceError> {
        let flag = self
            .store
            .update_flag(env, key, &patch)
            .await?
            .ok_or_else(|| ServiceError::FlagNotFound(key.to_string()))?;
        self.invalidate(env, Invalidation::Flags).await;
        Ok(flag)
    }

    pub async fn delete_flag(&self, env: &Environment, key: &FlagKey) -> Result<(), ServiceError> {
        if !self.store.delete_flag(env, key).await? {
            return Err(ServiceError::FlagNotFound(key.to_string()));
        }
        // Its overrides went with it, and a flag re-created under the same key must not inherit them.
        self.invalidate(env, Invalidation::FlagsAndAllUsers).await;
        Ok(())
    }

    async fn existing_flag(&self, env: &Environment, key: &FlagKey) -> Result<Flag, ServiceError> {
        self.store
            .get_flag(env, key)
            .await?
            .ok_or_else(|| ServiceError::FlagNotFound(key.to_string()))
    }

    /// Adds or replaces a user's override. Order: flag lookup (404), rate limit (429), change.
    pub async fn upsert_override(
        &self,
        env: &Environment,
        key: &FlagKey,
        new: NewOverride,
    ) -> Result<UserOverride, ServiceError> {
        let flag = self.existing_flag(env, key).await?;
        self.rate_limiter.check(env, key).await?;
        let saved = self.store.upsert_override(flag.id, &new).await?;
        self.invalidate(env, Invalidation::User(new.user_id.as_str()))
            .await;
        Ok(saved)
    }

    pub async fn delete_override(
        &self,
        env: &Environment,
        key: &FlagKey,
        user_id: &str,
    ) -> Result<(), ServiceError> {
        let flag = self.existing_flag(env, key).await?;
        self.rate_limiter.check(env, key).await?;
        if !self.store.delete_override(flag.id, user_id).await? {
            return Err(ServiceError::OverrideNotFound(key.to_string()));
        }
        self.invalidate(env, Invalidation::User(user_id)).await;
        Ok(())
    }

    pub async fn list_overrides(
        &self,
        env: &Environment,
        key: &FlagKey,
        page: PageRequest,
    ) -> Result<OverridePage, ServiceError> {
        let flag = self.existing_flag(env, key).await?;
        let offset = u64::from(page.page.saturating_sub(1)) * u64::from(page.page_size);
        Ok(self
            .store
            .list_overrides(flag.id, page.page_size, offset)
            .await?)
    }

    /// Drops every cached key. Redis trouble is logged and reported as 0 keys, never an error.
    pub async fn invalidate_all(&self) -> u64 {
        match self.cache.invalidate_all().await {
            Ok(count) => {
                tracing::info!(cache_invalidated = true, keys = count, "cache invalidated");
                count
            }
            Err(error) => {
                tracing::warn!(cache_invalidated = false, error = %error, "could not invalidate the cache");
                0
            }
        }
    }

    /// Called after a write has committed. A failure is logged, never returned: the write
    /// happened, and the TTL bounds how long a stale entry can live.
    async fn invalidate(&self, env: &Environment, what: Invalidation<'_>) {
        match self.cache.invalidate(env, what).await {
            Ok(()) => {
                tracing::info!(cache_invalidated = true, environment = %env, scope = ?what, "cache invalidated")
            }
            Err(error) => {
                tracing::warn!(cache_invalidated = false, environment = %env, scope = ?what, error = %error,
                "cache invalidation failed; stale entries expire with the TTL")
            }
        }
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
