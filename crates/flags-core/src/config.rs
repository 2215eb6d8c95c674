//! Configuration from environment variables (contract §4). Values that may hold passwords are
//! kept in [`Secret`], whose `Debug` never prints them; errors name the variable, not its value.

pub use crate::redis::{MAX_REDIS_POOL_SIZE, RedisSettings};
pub use crate::secret::{Secret, redact_url};
use std::time::Duration;

pub const DEFAULT_CACHE_TTL_SECS: u64 = 300;

/// Values of `REDIS_URL` (or its SSM parameter) that mean "no Redis": the emergency switch back
/// to the in-memory cache without a code change, and the documented local opt-out.
const REDIS_DISABLED_VALUES: [&str; 3] = ["disabled", "none", "off"];

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("configuration error in {variable}: {message}")]
pub struct ConfigError {
    pub variable: &'static str,
    pub message: String,
}

impl ConfigError {
    pub fn new(variable: &'static str, message: impl Into<String>) -> Self {
        Self {
            variable,
            message: message.into(),
        }
    }
}

#[derive(Debug, Clone)]
pub struct Config {
    pub database_url: Secret,
    pub database_pool_size: u32,
    /// `None`: no `REDIS_URL` (or `disabled`), use the in-memory cache.
    pub redis: Option<RedisSettings>,
    pub cache_ttl: Duration,
    /// What the in-memory cache may hold (`CACHE_MEMORY_MAX_MB`); unused with Redis.
    pub memory_cache_max_bytes: u64,
    pub override_rate_limit: u32,
}

/// Pool sizes for a long-running server with concurrent requests (the local server, the
/// benchmarks); a Lambda execution environment handles one request at a time.
pub const SERVER_DATABASE_POOL_SIZE: u32 = 10;
pub const SERVER_REDIS_POOL_SIZE: usize = 4;

impl Config {
    /// The Lambda profile: one request at a time, so one database connection and one Redis
    /// connection.
    pub fn new(database_url: impl Into<String>, redis_url: Option<String>) -> Self {
        Self {
            database_url: Secret::new(database_url),
            database_pool_size: 1,
            redis: redis_url
                .filter(|url| {
                    let url = url.trim().to_ascii_lowercase();
                    !url.is_empty() && !REDIS_DISABLED_VALUES.contains(&url.as_str())
                })
                .map(RedisSettings::new),
            cache_ttl: Duration::from_secs(DEFAULT_CACHE_TTL_SECS),
            memory_cache_max_bytes: crate::cache::DEFAULT_MEMORY_CACHE_MAX_BYTES,
            override_rate_limit: crate::rate_limit::DEFAULT_LIMIT,
        }
    }

    /// The server profile: pools sized for concurrent requests.
    pub fn for_server(database_url: impl Into<String>, redis_url: Option<String>) -> Self {
        let mut config = Self::new(database_url, redis_url);
        config.database_pool_size = SERVER_DATABASE_POOL_SIZE;
        if let Some(redis) = config.redis.as_mut() {
            redis.pool_size = SERVER_REDIS_POOL_SIZE;
        }
        config
    }

    /// Reads the optional tuning variables on top of already-resolved URLs (which may come from
    /// the environment, SSM or local defaults; see the HTTP crate).
    pub fn with_env_overrides(
        mut self,
        lookup: impl Fn(&str) -> Option<String>,
    ) -> Result<Self, ConfigError> {
        if let Some(ttl) = parse_var(&lookup, "FLAG_CACHE_TTL_SECONDS", 1..=86_400)? {
            self.cache_ttl = Duration::from_secs(ttl);
        }
        if let Some(mib) = parse_var(&lookup, "CACHE_MEMORY_MAX_MB", 1..=4096)? {
            self.memory_cache_max_bytes = mib * 1024 * 1024;
        }
        if let Some(size) = parse_var(&lookup, "DATABASE_POOL_SIZE", 1..=100)? {
            self.database_pool_size = size as u32;
        }
        if let Some(limit) = parse_var(&lookup, "OVERRIDE_RATE_LIMIT_PER_HOUR", 1..=1_000_000)? {
            self.override_rate_limit = limit as u32;
        }
        if let Some(redis) = self.redis.as_mut() {
            if let Some(ms) = parse_var(&lookup, "REDIS_COMMAND_TIMEOUT_MS", 10..=10_000)? {
                redis.command_timeout = Duration::from_millis(ms);
            }
            if let Some(size) =
                parse_var(&lookup, "REDIS_POOL_SIZE", 1..=MAX_REDIS_POOL_SIZE as u64)?
            {
                redis.pool_size = size as usize;
            }
        }
        Ok(self)
    }
}

fn parse_var(
    lookup: &impl Fn(&str) -> Option<String>,
    variable: &'static str,
    range: std::ops::RangeInclusive<u64>,
) -> Result<Option<u64>, ConfigError> {
    let Some(raw) = lookup(variable).filter(|v| !v.trim().is_empty()) else {
        return Ok(None);
    };
    match raw.trim().parse::<u64>() {
        Ok(value) if range.contains(&value) => Ok(Some(value)),
        _ => Err(ConfigError::new(
            variable,
            format!(
                "must be an integer from {} to {}",
                range.start(),
                range.end()
            ),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tuning_variables_are_validated() {
        let env = |pairs: &'static [(&'static str, &'static str)]| {
            move |k: &str| {
                pairs
                    .iter()
                    .find(|(n, _)| *n == k)
                    .map(|(_, v)| (*v).to_owned())
            }
        };
        let config = Config::new("sqlite::memory:", Some("redis://x".into()))
            .with_env_overrides(env(&[
                ("FLAG_CACHE_TTL_SECONDS", "60"),
                ("REDIS_POOL_SIZE", "4"),
            ]))
            .unwrap();
        assert_eq!(config.cache_ttl, Duration::from_secs(60));
        assert_eq!(config.redis.unwrap().pool_size, 4);
        let error = Config::new("x", None)
            .with_env_overrides(env(&[("FLAG_CACHE_TTL_SECONDS", "-1")]))
            .unwrap_err();
        assert_eq!(error.variable, "FLAG_CACHE_TTL_SECONDS");
        let error = Config::new("x", Some("redis://x".into()))
            .with_env_overrides(env(&[("REDIS_POOL_SIZE", "11")]))
            .unwrap_err();
        assert_eq!(error.variable, "REDIS_POOL_SIZE");
        for none in ["  ", "disabled", "Off", " none "] {
            assert!(
                Config::new("x", Some(none.into())).redis.is_none(),
                "{none:?}"
            );
        }
    }
}
