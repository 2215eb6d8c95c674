//! The rate limit on override changes (contract §2.5): 100 per flag per hour, fixed window,
//! never per process. [`OverrideRateLimiter`] is the port: Redis counts while it answers
//! ([`crate::redis::RedisRateLimiter`]); while it does not, or when none is configured
//! ([`AuditLogRateLimiter`]), the count comes from the audit log inside the change's own
//! transaction (see [`crate::store::FlagStore::upsert_override`]), so it stays shared and exact.

use crate::domain::{Environment, FlagKey};
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use std::time::Duration;

pub const DEFAULT_LIMIT: u32 = 100;
pub const DEFAULT_WINDOW: Duration = Duration::from_secs(3600);

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
    /// The shared counter counted it within the budget.
    Admitted,
    Limited(RateLimited),
    /// No shared counter answered: count it in the audit log, in the change's transaction.
    CountInAuditLog(AuditWindow),
}

/// Counts override changes per flag and window, shared by every process.
#[async_trait]
pub trait OverrideRateLimiter: Send + Sync + std::fmt::Debug {
    /// Whether changes are counted before the store sees them. The caller then looks the flag
    /// up first, so that a change to a missing flag is a 404 and never counted.
    fn counts_before_the_change(&self) -> bool;

    /// Counts one change to the flag's overrides, or says to count it in the audit log.
    async fn check(&self, env: &Environment, flag: &FlagKey) -> RateDecision;
}

/// A budget per fixed, epoch-aligned window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateWindow {
    limit: u32,
    length: Duration,
}

impl RateWindow {
    pub fn new(limit: u32, length: Duration) -> Self {
        Self {
            limit,
            length: length.max(Duration::from_secs(1)),
        }
    }

    pub fn limit(&self) -> u32 {
        self.limit
    }

    /// The window containing `now`: its index since the epoch and its bounds.
    pub fn at(&self, now: DateTime<Utc>) -> (u64, AuditWindow) {
        let length_secs = self.length.as_secs();
        let now_secs = u64::try_from(now.timestamp()).unwrap_or_default();
        let index = now_secs / length_secs;
        let start_secs = i64::try_from(index * length_secs).unwrap_or_default();
        let window = AuditWindow {
            limit: self.limit,
            start: DateTime::from_timestamp(start_secs, 0).unwrap_or(now),
            retry_after_secs: ((index + 1) * length_secs).saturating_sub(now_secs).max(1),
        };
        (index, window)
    }
}

/// No shared counter (no Redis configured): every change is counted in the audit log.
#[derive(Debug, Clone)]
pub struct AuditLogRateLimiter {
    window: RateWindow,
}

impl AuditLogRateLimiter {
    pub fn new(window: RateWindow) -> Self {
        Self { window }
    }
}

#[async_trait]
impl OverrideRateLimiter for AuditLogRateLimiter {
    fn counts_before_the_change(&self) -> bool {
        false
    }

    async fn check(&self, _env: &Environment, _flag: &FlagKey) -> RateDecision {
        RateDecision::CountInAuditLog(self.window.at(Utc::now()).1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_are_epoch_aligned() {
        let window = RateWindow::new(3, DEFAULT_WINDOW);
        let now = DateTime::from_timestamp(7_200 + 600, 0).unwrap();
        let (index, bounds) = window.at(now);
        assert_eq!(index, 2);
        assert_eq!(bounds.start.timestamp(), 7_200);
        assert_eq!(bounds.retry_after_secs, 3_000);
        assert_eq!(bounds.limit, 3);
    }

    #[tokio::test]
    async fn without_redis_the_audit_log_counts() {
        let limiter = AuditLogRateLimiter::new(RateWindow::new(3, DEFAULT_WINDOW));
        let env = Environment::parse("production").unwrap();
        let decision = limiter.check(&env, &FlagKey::parse("a").unwrap()).await;
        assert!(matches!(decision, RateDecision::CountInAuditLog(w) if w.limit == 3));
        assert!(!limiter.counts_before_the_change());
    }
}
