//! The rate limit on override changes (contract §2.5): 100 per flag per hour, fixed window,
//! shared through Redis (`INCR` + `EXPIRE` in one script), per process without Redis or while
//! Redis is unavailable.

use crate::domain::{Environment, FlagKey};
use crate::redis_client::RedisConnection;
use fred::types::scripts::Script;
use std::collections::HashMap;
use std::sync::{LazyLock, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

pub const DEFAULT_LIMIT: u32 = 100;
pub const DEFAULT_WINDOW: Duration = Duration::from_secs(3600);

/// Counts KEYS[1] up and gives it an expiry on the first hit of the window.
static COUNT_IN_WINDOW: LazyLock<Script> = LazyLock::new(|| {
    Script::from_lua(
        r"local n = redis.call('INCR', KEYS[1])
if n == 1 then redis.call('EXPIRE', KEYS[1], ARGV[1]) end
return n",
    )
});

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("rate limited; retry after {retry_after_secs} s")]
pub struct RateLimited {
    pub retry_after_secs: u64,
}

#[derive(Debug)]
pub struct OverrideRateLimiter {
    redis: Option<RedisConnection>,
    limit: u32,
    window: Duration,
    /// (key, window index) → count; used without Redis or while Redis is unavailable.
    local: Mutex<HashMap<String, (u64, u32)>>,
}

impl OverrideRateLimiter {
    pub fn new(redis: Option<RedisConnection>, limit: u32, window: Duration) -> Self {
        Self {
            redis,
            limit,
            window: window.max(Duration::from_secs(1)),
            local: Mutex::new(HashMap::new()),
        }
    }

    /// Counts one change to the flag's overrides; `Err` when the window's budget is spent.
    pub async fn check(&self, env: &Environment, flag: &FlagKey) -> Result<(), RateLimited> {
        let window_secs = self.window.as_secs();
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs();
        let window_index = now / window_secs;
        let retry_after_secs = ((window_index + 1) * window_secs)
            .saturating_sub(now)
            .max(1);
        let key = format!("feature_flags_ratelimit:{env}:{flag}:{window_index}");

        let count = match &self.redis {
            Some(redis) => {
                let (script_key, ttl) = (key.clone(), retry_after_secs + 1);
                let shared = redis
                    .run("rate_limit", |pool| async move {
                        COUNT_IN_WINDOW
                            .evalsha_with_reload::<u64, _, _>(pool.next(), script_key, ttl)
                            .await
                    })
                    .await;
                match shared {
                    Ok(count) => count,
                    Err(error) => {
                        tracing::warn!(error = %error, "rate limiter falling back to a per-process count");
                        self.count_locally(key, window_index)
                    }
                }
            }
            None => self.count_locally(key, window_index),
        };
        if count > u64::from(self.limit) {
            Err(RateLimited { retry_after_secs })
        } else {
            Ok(())
        }
    }

    fn count_locally(&self, key: String, window_index: u64) -> u64 {
        let mut local = self
            .local
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        local.retain(|_, (window, _)| *window == window_index);
        let entry = local.entry(key).or_insert((window_index, 0));
        entry.1 = entry.1.saturating_add(1);
        u64::from(entry.1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn local_limit_counts_per_flag() {
        let limiter = OverrideRateLimiter::new(None, 3, DEFAULT_WINDOW);
        let env = Environment::parse("production").unwrap();
        let (a, b) = (FlagKey::parse("a").unwrap(), FlagKey::parse("b").unwrap());
        for _ in 0..3 {
            limiter.check(&env, &a).await.unwrap();
        }
        let limited = limiter.check(&env, &a).await.unwrap_err();
        assert!(limited.retry_after_secs >= 1 && limited.retry_after_secs <= 3600);
        limiter.check(&env, &b).await.unwrap();
    }
}
