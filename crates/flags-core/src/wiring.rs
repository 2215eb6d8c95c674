//! Builds the service from configuration (AC14): Redis when `REDIS_URL` is set, in-memory
//! otherwise; PostgreSQL or SQLite by the scheme of `DATABASE_URL`.

use crate::cache::{FlagCache, MemoryCache, RedisCache};
use crate::config::{Config, redact_url};
use crate::rate_limit::{AuditLogRateLimiter, DEFAULT_WINDOW, OverrideRateLimiter, RateWindow};
use crate::redis::{RedisConnection, RedisRateLimiter};
use crate::service::FlagService;
use crate::store::{FlagStore, PostgresStore, SqliteStore, StoreError};
use std::sync::Arc;

#[derive(Debug, thiserror::Error)]
pub enum WiringError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("invalid REDIS_URL: {0}")]
    Redis(String),
}

/// Opens a lazily connected store for `postgres://`, `postgresql://` or `sqlite:` URLs.
pub fn open_store(url: &str, pool_size: u32) -> Result<Arc<dyn FlagStore>, StoreError> {
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        Ok(Arc::new(PostgresStore::connect_lazy(url, pool_size)?))
    } else if url.starts_with("sqlite:") {
        Ok(Arc::new(SqliteStore::connect_lazy(url, pool_size)?))
    } else {
        Err(StoreError::UnsupportedUrl)
    }
}

/// The service and the Redis connection it uses (if any), built once per process.
#[derive(Debug)]
pub struct App {
    pub service: Arc<FlagService>,
    pub redis: Option<RedisConnection>,
}

impl App {
    /// Never fails because a backend is down: the database pool connects lazily and Redis
    /// reconnects in the background. It fails only on configuration that cannot work.
    pub async fn build(config: &Config) -> Result<Self, WiringError> {
        let store = open_store(config.database_url.expose(), config.database_pool_size)?;
        let redis = match &config.redis {
            Some(settings) => {
                let connection = RedisConnection::start(settings)
                    .map_err(|e| WiringError::Redis(e.details().to_owned()))?;
                let safe_url = redact_url(settings.url.expose());
                if connection.wait_connected(settings.connect_timeout).await {
                    tracing::info!(redis = %safe_url, "using the Redis cache");
                } else {
                    tracing::warn!(redis = %safe_url, cache = "unavailable",
                        "Redis unreachable at start; serving from the database while reconnecting");
                }
                Some(connection)
            }
            None => {
                tracing::info!(
                    "no REDIS_URL (or `disabled`); using the per-process in-memory cache"
                );
                None
            }
        };
        let cache: Arc<dyn FlagCache> = match &redis {
            Some(connection) => Arc::new(RedisCache::new(
                connection.clone(),
                config.cache_ttl,
                store.cache_scope(),
            )),
            None => Arc::new(MemoryCache::with_max_bytes(
                config.cache_ttl,
                config.memory_cache_max_bytes,
            )),
        };
        let window = RateWindow::new(config.override_rate_limit, DEFAULT_WINDOW);
        let limiter: Arc<dyn OverrideRateLimiter> = match &redis {
            Some(connection) => Arc::new(RedisRateLimiter::new(connection.clone(), window)),
            None => Arc::new(AuditLogRateLimiter::new(window)),
        };
        tracing::info!(
            database = store.backend(),
            cache = cache.kind().as_str(),
            cache_ttl_secs = config.cache_ttl.as_secs(),
            "flag service ready"
        );
        let service = Arc::new(FlagService::new(store, cache, limiter));
        if let Some(connection) = &redis {
            tokio::spawn(sweep_when_recovered(connection.clone(), service.clone()));
        }
        Ok(Self { service, redis })
    }
}

/// The instance whose Redis comes back completes what writers left pending while it was gone
/// (contract §3.1), without waiting for the scheduled sweep.
async fn sweep_when_recovered(redis: RedisConnection, service: Arc<FlagService>) {
    loop {
        redis.recovered().await;
        if let Err(error) = service.sweep_pending_invalidations().await {
            tracing::warn!(error = %error, "sweep after reconnecting failed; the scheduled sweep retries");
        }
    }
}
