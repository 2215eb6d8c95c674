//! The rate limit on override changes (contract §2.5): 100 per flag per hour, fixed window,
//! never per process. Redis counts when it answers (`INCR` + `EXPIRE` in one script); while it
//! does not, or when none is configured, the count comes from the audit log inside the change's
//! own transaction (see [`crate::store::FlagStore::upsert_override`]), so it stays shared and exact.

use crate::domain::{Environment, FlagKey};
use crate::redis::{RedisConnection, rate_limit_key};
use chrono::{DateTime, Utc};
use fred::types::scripts::Script;
use std::sync::LazyLock;
use std::time::Duration;

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

/// The current window, for counting override changes in the audit log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AuditWindow {
    pub limit: u32,
    pub start: DateTime<Utc>,
    pub retry_after_secs: u64,
}

impl AuditWindow {
    pub fn limited(&self) -> RateLimited {
        RateLimited {
            retry_after_secs: self.retry_after_secs,
        }
    }
}

/// What the shared counter said about one override change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RateDecision {
    /// Redis counted it within the budget.
    Admitted,
    Limited(RateLimited),
    /// No Redis answer: count it in the audit log, in the change's transaction.
    CountInAuditLog(AuditWindow),
}

#[derive(Debug)]
pub struct OverrideRateLimiter {
    redis: Option<RedisConnection>,
    limit: u32,
    window: Duration,
}

impl OverrideRateLimiter {
    pub fn new(redis: Option<RedisConnection>, limit: u32, window: Duration) -> Self {
        Self {
            redis,
            limit,
            window: window.max(Duration::from_secs(1)),
        }
    }

    /// Whether a Redis counter is configured (it may still be unreachable at the moment).
    pub fn counts_in_redis(&self) -> bool {
        self.redis.is_some()
    }

    /// The window containing `now`: epoch-aligned, `window` long.
    pub fn window_at(&self, now: DateTime<Utc>) -> (u64, AuditWindow) {
        let window_secs = self.window.as_secs();
        let now_secs = u64::try_from(now.timestamp()).unwrap_or_default();
        let index = now_secs / window_secs;
        let start_secs = i64::try_from(index * window_secs).unwrap_or_default();
        let window = AuditWindow {
            limit: self.limit,
            start: DateTime::from_timestamp(start_secs, 0).unwrap_or(now),
            retry_after_secs: ((index + 1) * window_secs).saturating_sub(now_secs).max(1),
        };
        (index, window)
    }

    /// Counts one change to the flag's overrides in Redis, or says where to count it instead.
    pub async fn check(&self, env: &Environment, flag: &FlagKey) -> RateDecision {
        let (window_index, window) = self.window_at(Utc::now());
        let Some(redis) = &self.redis else {
            return RateDecision::CountInAuditLog(window);
        };
        let key = rate_limit_key(env, flag, window_index);
        let ttl = window.retry_after_secs + 1;
        let counted = redis
            .run("rate_limit", |client| async move {
                COUNT_IN_WINDOW
                    .evalsha_with_reload::<u64, _, _>(&client, key, ttl)
                    .await
            })
            .await;
        match counted {
            Ok(count) if count > u64::from(self.limit) => RateDecision::Limited(window.limited()),
            Ok(_) => RateDecision::Admitted,
            Err(error) => {
                tracing::warn!(error = %error, rate_limit = "audit_log",
                    "rate limiter counting in the audit log while Redis does not answer");
                RateDecision::CountInAuditLog(window)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_are_epoch_aligned() {
        let limiter = OverrideRateLimiter::new(None, 3, DEFAULT_WINDOW);
        let now = DateTime::from_timestamp(7_200 + 600, 0).unwrap();
        let (index, window) = limiter.window_at(now);
        assert_eq!(index, 2);
        assert_eq!(window.start.timestamp(), 7_200);
        assert_eq!(window.retry_after_secs, 3_000);
        assert_eq!(window.limit, 3);
    }

    #[tokio::test]
    async fn without_redis_the_audit_log_counts() {
        let limiter = OverrideRateLimiter::new(None, 3, DEFAULT_WINDOW);
        let env = Environment::parse("production").unwrap();
        let decision = limiter.check(&env, &FlagKey::parse("a").unwrap()).await;
        assert!(matches!(decision, RateDecision::CountInAuditLog(w) if w.limit == 3));
    }
}
