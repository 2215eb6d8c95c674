//! The process-wide Redis client: `fred` configured for Lambda, plus a circuit breaker.
//!
//! fred's defaults (no command timeout, reconnect forever or never) are wrong for a function
//! that must answer quickly, so every timeout and the reconnect policy are set explicitly.
//! While Redis is known to be down the breaker answers "unavailable" without touching the
//! network, so requests go straight to the database instead of each waiting out a timeout.

use crate::cache::CacheError;
use crate::config::{RedisSettings, redact_url};
use fred::prelude::{
    Builder, Client, ClientLike, Config, Error as FredError, EventInterface, Pool, ReconnectPolicy,
};
use fred::types::config::ReconnectError;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Largest pool a process may open (AC1: at most 10 connections per process).
pub const MAX_POOL_SIZE: usize = 10;
/// Reconnect backoff: exponential from 100 ms, capped at 2 s, with jitter.
const RECONNECT_MIN_DELAY_MS: u32 = 100;
const RECONNECT_MAX_DELAY_MS: u32 = 2_000;
const RECONNECT_JITTER_MS: u32 = 100;
/// How long the breaker stays open after the first failure, doubling up to the maximum.
const BREAKER_BASE_COOLDOWN: Duration = Duration::from_millis(250);
const BREAKER_MAX_COOLDOWN: Duration = Duration::from_secs(2);

/// A connected (or reconnecting) Redis pool shared by the cache and the rate limiter.
#[derive(Clone)]
pub struct RedisConnection {
    pool: Pool,
    breaker: Arc<CircuitBreaker>,
    command_timeout: Duration,
    safe_url: Arc<str>,
}

impl std::fmt::Debug for RedisConnection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisConnection")
            .field("url", &self.safe_url)
            .finish_non_exhaustive()
    }
}

impl RedisConnection {
    /// Builds the pool and starts connecting in the background. Never fails because Redis is
    /// unreachable: the connection is retried with backoff while callers use the database.
    pub fn start(settings: &RedisSettings) -> Result<Self, FredError> {
        let mut config = Config::from_url(settings.url.expose())?;
        // The first connection is tried at once. (With `fail_fast = false` fred would sleep the
        // policy's first delay, 100-200 ms, before it: on every cold start.) A failed first
        // attempt is retried by `keep_connecting`; later drops by fred's policy below.
        config.fail_fast = true;
        let mut policy =
            ReconnectPolicy::new_exponential(0, RECONNECT_MIN_DELAY_MS, RECONNECT_MAX_DELAY_MS, 2);
        policy.set_jitter(RECONNECT_JITTER_MS);
        let pool = Builder::from_config(config)
            .set_policy(policy)
            .with_connection_config(|c| {
                c.connection_timeout = settings.connect_timeout;
                c.internal_command_timeout = settings.connect_timeout;
                c.max_command_attempts = settings.max_attempts;
                // A replica promoted/demoted under us answers READONLY; a restarting node LOADING.
                c.reconnect_errors = vec![
                    ReconnectError::ReadOnly,
                    ReconnectError::Loading,
                    ReconnectError::MasterDown,
                ];
                // ElastiCache may rotate AUTH tokens: reconnect rather than fail every command.
                c.reconnect_on_auth_error = true;
                c.tcp.nodelay = Some(true);
                // A frozen server keeps its TCP connection open; declare it dead after this.
                c.unresponsive.max_timeout = Some(settings.command_timeout * 4);
                c.unresponsive.interval = settings.command_timeout;
            })
            .with_performance_config(|p| {
                p.default_command_timeout = settings.command_timeout;
            })
            .build_pool(settings.pool_size.clamp(1, MAX_POOL_SIZE))?;

        let safe_url: Arc<str> = redact_url(settings.url.expose()).into();
        log_connection_events(&pool, safe_url.clone());
        // Spawns the connection tasks; does not wait for them.
        for client in pool.clients() {
            tokio::spawn(keep_connecting(client.clone()));
        }
        Ok(Self {
            pool,
            breaker: Arc::new(CircuitBreaker::default()),
            command_timeout: settings.command_timeout,
            safe_url,
        })
    }

    /// Waits up to `limit` for the first connection (at cold start), without failing.
    pub async fn wait_connected(&self, limit: Duration) -> bool {
        matches!(
            tokio::time::timeout(limit, self.pool.wait_for_connect()).await,
            Ok(Ok(()))
        )
    }

    pub fn pool(&self) -> &Pool {
        &self.pool
    }

    pub fn is_up(&self) -> bool {
        self.pool.is_connected()
    }

    /// Runs one Redis operation under the breaker and a hard deadline.
    pub async fn run<T, F, Fut>(&self, op: &'static str, f: F) -> Result<T, CacheError>
    where
        F: FnOnce(Pool) -> Fut,
        Fut: Future<Output = Result<T, FredError>>,
    {
        if !self.breaker.allows_request() {
            return Err(CacheError::Unavailable("circuit open"));
        }
        if !self.pool.is_connected() {
            // fred is reconnecting in the background; don't queue behind it. The cache is
            // used again as soon as fred reports the connection up.
            return Err(CacheError::Unavailable("not connected"));
        }
        match tokio::time::timeout(self.command_timeout, f(self.pool.clone())).await {
            Ok(Ok(value)) => {
                self.breaker.record_success();
                Ok(value)
            }
            Ok(Err(error)) => {
                let failures = self.breaker.record_failure();
                tracing::warn!(redis_op = op, error = %error, consecutive_failures = failures, "redis command failed");
                Err(CacheError::Command(error.to_string()))
            }
            Err(_) => {
                let failures = self.breaker.record_failure();
                tracing::warn!(
                    redis_op = op,
                    timeout_ms = self.command_timeout.as_millis() as u64,
                    consecutive_failures = failures,
                    "redis command timed out"
                );
                Err(CacheError::Timeout)
            }
        }
    }

    pub async fn quit(&self) {
        let _ = self.pool.quit().await;
    }
}

/// Runs one client's connection task. While the first connection fails (Redis down at cold
/// start), tries again after 100 ms doubling to 2 s, with jitter, like fred's policy does for
/// later drops. Returns when the client quits.
async fn keep_connecting(client: Client) {
    let mut delay_ms = u64::from(RECONNECT_MIN_DELAY_MS);
    loop {
        match client.connect().await {
            // The connection task ended without error: `quit` was called.
            Ok(Ok(())) | Err(_) => return,
            Ok(Err(_)) => {}
        }
        let jitter = rand::random_range(0..u64::from(RECONNECT_JITTER_MS));
        tokio::time::sleep(Duration::from_millis(delay_ms + jitter)).await;
        delay_ms = (delay_ms * 2).min(u64::from(RECONNECT_MAX_DELAY_MS));
    }
}

fn log_connection_events(pool: &Pool, safe_url: Arc<str>) {
    for client in pool.clients() {
        let url = safe_url.clone();
        client.on_error(move |(error, server)| {
            let url = url.clone();
            async move {
                tracing::warn!(redis = %url, server = ?server.map(|s| s.to_string()), error = %error,
                    "redis connection error; reconnecting with backoff (100 ms doubling to 2 s)");
                Ok(())
            }
        });
        let url = safe_url.clone();
        client.on_reconnect(move |server| {
            let url = url.clone();
            async move {
                tracing::info!(redis = %url, server = %server, "redis connected");
                Ok(())
            }
        });
    }
}

/// Opens after a failure for a cooldown that doubles with consecutive failures; after the
/// cooldown one request is let through as a probe, and a success closes it again.
#[derive(Debug)]
pub struct CircuitBreaker {
    epoch: Instant,
    consecutive_failures: AtomicU32,
    open_until_ms: AtomicU64,
}

impl Default for CircuitBreaker {
    fn default() -> Self {
        Self {
            epoch: Instant::now(),
            consecutive_failures: AtomicU32::new(0),
            open_until_ms: AtomicU64::new(0),
        }
    }
}

impl CircuitBreaker {
    fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    pub fn allows_request(&self) -> bool {
        self.now_ms() >= self.open_until_ms.load(Ordering::Acquire)
    }

    pub fn record_success(&self) {
        if self.consecutive_failures.swap(0, Ordering::AcqRel) > 0 {
            tracing::info!("redis answering again; cache back in use");
        }
        self.open_until_ms.store(0, Ordering::Release);
    }

    /// Returns the number of consecutive failures so far.
    pub fn record_failure(&self) -> u32 {
        let failures = self
            .consecutive_failures
            .fetch_add(1, Ordering::AcqRel)
            .saturating_add(1);
        let factor = 1u32 << failures.saturating_sub(1).min(8);
        let cooldown = (BREAKER_BASE_COOLDOWN * factor).min(BREAKER_MAX_COOLDOWN);
        let until = self
            .now_ms()
            .saturating_add(u64::try_from(cooldown.as_millis()).unwrap_or(u64::MAX));
        self.open_until_ms.store(until, Ordering::Release);
        failures
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn breaker_opens_on_failure_and_closes_on_success() {
        let breaker = CircuitBreaker::default();
        assert!(breaker.allows_request());
        assert_eq!(breaker.record_failure(), 1);
        assert!(!breaker.allows_request());
        breaker.record_success();
        assert!(breaker.allows_request());
    }

    #[test]
    fn breaker_cooldown_is_capped() {
        let breaker = CircuitBreaker::default();
        for _ in 0..40 {
            breaker.record_failure();
        }
        let open_for = breaker.open_until_ms.load(Ordering::Acquire) - breaker.now_ms();
        assert!(open_for <= BREAKER_MAX_COOLDOWN.as_millis() as u64);
    }
}
