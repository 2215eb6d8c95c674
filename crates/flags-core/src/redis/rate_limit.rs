//! The override rate limit's shared counter in Redis: `INCR` + `EXPIRE` in one script, one key
//! per flag and window. When Redis does not answer, the change is counted in the audit log.

use super::RedisConnection;
use super::keys::rate_limit_key;
use crate::domain::{Environment, FlagKey};
use crate::rate_limit::{OverrideRateLimiter, RateDecision, RateWindow};
use async_trait::async_trait;
use chrono::Utc;
use fred::types::scripts::Script;
use std::sync::LazyLock;

/// Counts KEYS[1] up and gives it an expiry on the first hit of the window.
static COUNT_IN_WINDOW: LazyLock<Script> = LazyLock::new(|| {
    Script::from_lua(
        r"local n = redis.call('INCR', KEYS[1])
if n == 1 then redis.call('EXPIRE', KEYS[1], ARGV[1]) end
return n",
    )
});

#[derive(Debug, Clone)]
pub struct RedisRateLimiter {
    redis: RedisConnection,
    window: RateWindow,
}

impl RedisRateLimiter {
    pub fn new(redis: RedisConnection, window: RateWindow) -> Self {
        Self { redis, window }
    }
}

#[async_trait]
impl OverrideRateLimiter for RedisRateLimiter {
    fn counts_before_the_change(&self) -> bool {
        true
    }

    async fn check(&self, env: &Environment, flag: &FlagKey) -> RateDecision {
        let (window_index, window) = self.window.at(Utc::now());
        let key = rate_limit_key(env, flag, window_index);
        let ttl = window.retry_after_secs + 1;
        let counted = self
            .redis
            .run("rate_limit", |client| async move {
                COUNT_IN_WINDOW
                    .evalsha_with_reload::<u64, _, _>(&client, key, ttl)
                    .await
            })
            .await;
        match counted {
            Ok(count) if count > u64::from(self.window.limit()) => {
                RateDecision::Limited(window.limited())
            }
            Ok(_) => RateDecision::Admitted,
            Err(error) => {
                tracing::warn!(error = %error, rate_limit = "audit_log",
                    "rate limiter counting in the audit log while Redis does not answer");
                RateDecision::CountInAuditLog(window)
            }
        }
    }
}
