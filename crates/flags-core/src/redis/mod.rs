//! Redis: its settings, the process-wide client (`fred` configured for Lambda), a circuit
//! breaker for the read path, a bounded retry for the write path, every key format (`keys.rs`)
//! and the shared counter of the override rate limit (`rate_limit.rs`).
//!
//! fred's defaults (no command timeout, reconnect forever or never) are wrong for a function
//! that must answer quickly, so every timeout and the reconnect policy are set explicitly.
//! While Redis is known to be down the breaker answers "unavailable" without touching the
//! network, so reads go straight to the database instead of each waiting out a timeout.
//! Invalidations after a write are not gated by that breaker (contract §3.1): one unrelated slow
//! read must not make the next write skip its invalidation.

mod keys;
mod rate_limit;

pub use keys::{
    CACHE_PREFIX, environments_generation_key, environments_key, generation_key,
    overrides_epoch_key, overrides_key, snapshot_key,
};
pub use rate_limit::RedisRateLimiter;

use crate::secret::{Secret, redact_url};
use fred::prelude::{
    Builder, Client, ClientLike, Config, Error as FredError, EventInterface, Pool, ReconnectPolicy,
};
use fred::types::config::ReconnectError;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tokio::sync::Notify;

/// Reconnect backoff: exponential from 100 ms, capped at 2 s, with jitter.
const RECONNECT_MIN_DELAY_MS: u32 = 100;
const RECONNECT_MAX_DELAY_MS: u32 = 2_000;
const RECONNECT_JITTER_MS: u32 = 100;
/// How long the breaker stays open after the first failure, doubling up to the maximum.
const BREAKER_BASE_COOLDOWN: Duration = Duration::from_millis(250);
const BREAKER_MAX_COOLDOWN: Duration = Duration::from_secs(2);
/// Pauses between attempts of a write-path command (doubling), within its overall budget.
const WRITE_RETRY_FIRST_PAUSE: Duration = Duration::from_millis(50);
const WRITE_RETRY_MAX_PAUSE: Duration = Duration::from_millis(200);

pub const DEFAULT_REDIS_COMMAND_TIMEOUT: Duration = Duration::from_millis(500);
pub const REDIS_CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
pub const REDIS_MAX_ATTEMPTS: u32 = 3;
/// Largest pool a process may open (AC1: at most 10 connections per process).
pub const MAX_REDIS_POOL_SIZE: usize = 10;

#[derive(Debug, Clone)]
pub struct RedisSettings {
    pub url: Secret,
    pub connect_timeout: Duration,
    pub command_timeout: Duration,
    pub max_attempts: u32,
    pub pool_size: usize,
}

impl RedisSettings {
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: Secret::new(url),
            connect_timeout: REDIS_CONNECT_TIMEOUT,
            command_timeout: DEFAULT_REDIS_COMMAND_TIMEOUT,
            max_attempts: REDIS_MAX_ATTEMPTS,
            pool_size: 1,
        }
    }
}

/// Why a Redis operation did not answer; the cache and the rate limiter each decide what that
/// means for them.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RedisError {
    /// Known to be down (circuit open or not connected): nothing was sent.
    #[error("redis unavailable: {0}")]
    Unavailable(&'static str),
    #[error("redis command timed out")]
    Timeout,
    #[error("redis command failed: {0}")]
    Command(String),
}

/// A connected (or reconnecting) Redis pool shared by the cache and the rate limiter.
#[derive(Clone)]
pub struct RedisConnection {
    pool: Pool,
    breaker: Arc<CircuitBreaker>,
    command_timeout: Duration,
    safe_url: Arc<str>,
    recovered: Arc<Notify>,
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
            .build_pool(settings.pool_size.clamp(1, MAX_REDIS_POOL_SIZE))?;

        let safe_url: Arc<str> = redact_url(settings.url.expose()).into();
        let recovered = Arc::new(Notify::new());
        watch_connection_events(&pool, safe_url.clone(), recovered.clone());
        // Spawns the connection tasks; does not wait for them.
        for client in pool.clients() {
            tokio::spawn(keep_connecting(client.clone()));
        }
        Ok(Self {
            pool,
            // A probe that never reports (its request was dropped) frees the next one after this.
            breaker: Arc::new(CircuitBreaker::new(settings.command_timeout * 2)),
            command_timeout: settings.command_timeout,
            safe_url,
            recovered,
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

    /// Whether some connection of the pool is up (fred reconnects the others).
    pub fn is_up(&self) -> bool {
        self.connected_client().is_some()
    }

    /// Completes each time Redis comes back: a connection up (at start, after a reconnect) or
    /// the first success after failures (a freeze or a cut that fred never saw as a disconnect),
    /// so that work owed to Redis is finished by the instance that can reach it again.
    pub async fn recovered(&self) {
        self.recovered.notified().await;
    }

    fn record_success(&self) {
        if self.breaker.record_success() {
            self.recovered.notify_one();
        }
    }

    /// A client whose connection is up, round robin; `None` while every one is down. The
    /// command is sent on the client that was checked, never on another pool member.
    fn connected_client(&self) -> Option<Client> {
        let client = self.pool.next_connected();
        client.is_connected().then(|| client.clone())
    }

    /// Runs one read-path Redis operation under the breaker and a hard deadline.
    pub async fn run<T, F, Fut>(&self, op: &'static str, f: F) -> Result<T, RedisError>
    where
        F: FnOnce(Client) -> Fut,
        Fut: Future<Output = Result<T, FredError>>,
    {
        if !self.breaker.allows_request() {
            return Err(RedisError::Unavailable("circuit open"));
        }
        let Some(client) = self.connected_client() else {
            // fred is reconnecting in the background; don't queue behind it. The cache is
            // used again as soon as fred reports a connection up.
            self.breaker.release_probe();
            return Err(RedisError::Unavailable("not connected"));
        };
        let result = self.attempt(op, self.command_timeout, f(client)).await;
        match &result {
            Ok(_) => self.record_success(),
            Err(_) => {
                self.breaker.record_failure();
            }
        }
        result
    }

    /// Runs one write-path operation (an invalidation owed after a commit): not gated by the
    /// breaker, retried on a connected client until it succeeds or `budget` has passed.
    pub async fn run_with_retry<T, F, Fut>(
        &self,
        op: &'static str,
        budget: Duration,
        f: F,
    ) -> Result<T, RedisError>
    where
        F: Fn(Client) -> Fut,
        Fut: Future<Output = Result<T, FredError>>,
    {
        let deadline = Instant::now() + budget;
        let mut pause = WRITE_RETRY_FIRST_PAUSE;
        let mut attempts = 0u32;
        loop {
            let remaining = deadline.saturating_duration_since(Instant::now());
            let result = match self.connected_client() {
                Some(client) => {
                    attempts += 1;
                    self.attempt(op, self.command_timeout.min(remaining), f(client))
                        .await
                }
                None => Err(RedisError::Unavailable("not connected")),
            };
            match result {
                Ok(value) => {
                    self.record_success();
                    return Ok(value);
                }
                Err(error) if Instant::now() + pause >= deadline => {
                    let failures = self.breaker.record_failure();
                    tracing::warn!(redis_op = op, attempts, consecutive_failures = failures,
                        error = %error, "redis write-path command gave up after its retry budget");
                    return Err(error);
                }
                Err(_) => {
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(WRITE_RETRY_MAX_PAUSE);
                }
            }
        }
    }

    /// One attempt under `limit`; failures are logged, not recorded on the breaker.
    async fn attempt<T>(
        &self,
        op: &'static str,
        limit: Duration,
        command: impl Future<Output = Result<T, FredError>>,
    ) -> Result<T, RedisError> {
        match tokio::time::timeout(limit, command).await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(error)) => {
                tracing::warn!(redis_op = op, error = %error, "redis command failed");
                Err(RedisError::Command(error.to_string()))
            }
            Err(_) => {
                tracing::warn!(
                    redis_op = op,
                    timeout_ms = limit.as_millis() as u64,
                    "redis command timed out"
                );
                Err(RedisError::Timeout)
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

fn watch_connection_events(pool: &Pool, safe_url: Arc<str>, recovered: Arc<Notify>) {
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
        // A client's first connection is the start, not a recovery: sweeping then would only
        // compete with the cold start's first request for the database connection.
        let connected_before = Arc::new(AtomicBool::new(false));
        let (url, recovered) = (safe_url.clone(), recovered.clone());
        client.on_reconnect(move |server| {
            let (url, recovered) = (url.clone(), recovered.clone());
            let was_connected = connected_before.swap(true, Ordering::AcqRel);
            async move {
                tracing::info!(redis = %url, server = %server, "redis connected");
                if was_connected {
                    recovered.notify_one();
                }
                Ok(())
            }
        });
    }
}

/// Opens after a failure for a cooldown that doubles with consecutive failures. After the
/// cooldown exactly one request is let through as a probe (half-open); the others are refused
/// until it reports: a success closes the breaker, a failure opens it again for longer.
#[derive(Debug)]
pub struct CircuitBreaker {
    epoch: Instant,
    consecutive_failures: AtomicU32,
    /// 0: closed. Otherwise no request passes before this instant (ms since `epoch`); the first
    /// caller at or after it becomes the probe and moves it `probe_timeout` ahead.
    open_until_ms: AtomicU64,
    probe_timeout: Duration,
}

impl CircuitBreaker {
    pub fn new(probe_timeout: Duration) -> Self {
        Self {
            epoch: Instant::now(),
            consecutive_failures: AtomicU32::new(0),
            open_until_ms: AtomicU64::new(0),
            probe_timeout,
        }
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    fn ms(duration: Duration) -> u64 {
        u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
    }

    /// Whether this request may go to Redis; in half-open state only the one probe may.
    pub fn allows_request(&self) -> bool {
        let open_until = self.open_until_ms.load(Ordering::Acquire);
        if open_until == 0 {
            return true;
        }
        let now = self.now_ms();
        if now < open_until {
            return false;
        }
        let probe_until = now.saturating_add(Self::ms(self.probe_timeout)).max(1);
        self.open_until_ms
            .compare_exchange(open_until, probe_until, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
    }

    /// The probe did not reach Redis (no connection): let the next request probe at once.
    pub fn release_probe(&self) {
        if self.consecutive_failures.load(Ordering::Acquire) > 0 {
            let now = self.now_ms().max(1);
            let current = self.open_until_ms.load(Ordering::Acquire);
            if current > now {
                let _ = self.open_until_ms.compare_exchange(
                    current,
                    now,
                    Ordering::AcqRel,
                    Ordering::Acquire,
                );
            }
        }
    }

    /// Closes the breaker; returns whether it had failures (Redis has just come back).
    pub fn record_success(&self) -> bool {
        let was_failing = self.consecutive_failures.swap(0, Ordering::AcqRel) > 0;
        if was_failing {
            tracing::info!("redis answering again; cache back in use");
        }
        self.open_until_ms.store(0, Ordering::Release);
        was_failing
    }

    /// Returns the number of consecutive failures so far.
    pub fn record_failure(&self) -> u32 {
        let failures = self
            .consecutive_failures
            .fetch_add(1, Ordering::AcqRel)
            .saturating_add(1);
        let factor = 1u32 << failures.saturating_sub(1).min(8);
        let cooldown = (BREAKER_BASE_COOLDOWN * factor).min(BREAKER_MAX_COOLDOWN);
        let until = self.now_ms().saturating_add(Self::ms(cooldown)).max(1);
        self.open_until_ms.store(until, Ordering::Release);
        failures
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A breaker whose clock started a while ago, so that "now" is well past 0.
    fn breaker() -> CircuitBreaker {
        let mut breaker = CircuitBreaker::new(Duration::from_secs(1));
        breaker.epoch = Instant::now()
            .checked_sub(Duration::from_secs(60))
            .unwrap_or(breaker.epoch);
        breaker
    }

    #[test]
    fn breaker_opens_on_failure_and_closes_on_success() {
        let breaker = breaker();
        assert!(breaker.allows_request());
        assert_eq!(breaker.record_failure(), 1);
        assert!(!breaker.allows_request());
        breaker.record_success();
        assert!(breaker.allows_request());
    }

    #[test]
    fn breaker_cooldown_is_capped() {
        let breaker = breaker();
        for _ in 0..40 {
            breaker.record_failure();
        }
        let open_for = breaker.open_until_ms.load(Ordering::Acquire) - breaker.now_ms();
        assert!(open_for <= BREAKER_MAX_COOLDOWN.as_millis() as u64);
    }

    #[test]
    fn half_open_lets_exactly_one_probe_through() {
        let breaker = breaker();
        breaker.record_failure();
        // The cooldown has passed: pretend it by moving the deadline to now.
        breaker
            .open_until_ms
            .store(breaker.now_ms().max(1), Ordering::Release);
        let admitted = (0..10).filter(|_| breaker.allows_request()).count();
        assert_eq!(admitted, 1, "one probe, the others wait for its verdict");
        breaker.record_success();
        assert_eq!((0..10).filter(|_| breaker.allows_request()).count(), 10);
    }

    #[test]
    fn a_failed_probe_reopens_and_a_lost_probe_frees_the_next() {
        let breaker = breaker();
        breaker.record_failure();
        breaker
            .open_until_ms
            .store(breaker.now_ms().max(1), Ordering::Release);
        assert!(breaker.allows_request());
        assert_eq!(breaker.record_failure(), 2);
        assert!(!breaker.allows_request(), "open again, for longer");

        breaker
            .open_until_ms
            .store(breaker.now_ms().max(1), Ordering::Release);
        assert!(breaker.allows_request());
        breaker.release_probe();
        assert!(
            breaker.allows_request(),
            "a probe that sent nothing frees the next one"
        );
    }
}
