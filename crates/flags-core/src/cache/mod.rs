//! The cache port and its adapters: Redis (shared by every instance) and in-memory (one process).
//!
//! Both implement the same protocol against stale repopulation: a read returns a
//! [`Generation`] for the environment; a writer bumps that generation when it invalidates;
//! a fill only lands when the generation is still the one the reader saw. A reader that loaded
//! the database before a write committed can therefore never put the old state back.
//!
//! Every invalidation costs O(1) work, whatever the number of cached users: cached override
//! values carry the environment's overrides epoch, and bumping it retires all of them at once.
//!
//! The caches also hold the list of environments that have flags, under the same protocol, so
//! that a request for an environment nobody created is answered without a database query and
//! without a cache entry of its own: made-up names cost neither memory nor the database anything.

mod memory;
mod payload;
mod redis;

pub use memory::{DEFAULT_MEMORY_CACHE_MAX_BYTES, MemoryCache};
pub use payload::{decode_overrides, decode_snapshot, encode_overrides, encode_snapshot};
pub use redis::RedisCache;

use crate::domain::{Environment, FlagSet, UserOverrides};
use crate::redis::RedisError;
use async_trait::async_trait;
use std::collections::BTreeSet;
use std::sync::Arc;

/// The names of the environments that hold at least one flag.
pub type Environments = BTreeSet<String>;

/// Which cache a service runs with; reported by `/health`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheKind {
    Redis,
    Memory,
}

impl CacheKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Redis => "redis",
            Self::Memory => "memory",
        }
    }
}

/// The cache could not be used; the caller falls back to the database.
#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    /// Known to be down (circuit open or not connected): nothing was sent.
    #[error("cache unavailable: {0}")]
    Unavailable(&'static str),
    #[error("cache command timed out")]
    Timeout,
    #[error("cache command failed: {0}")]
    Command(String),
}

impl From<RedisError> for CacheError {
    fn from(error: RedisError) -> Self {
        match error {
            RedisError::Unavailable(reason) => Self::Unavailable(reason),
            RedisError::Timeout => Self::Timeout,
            RedisError::Command(message) => Self::Command(message),
        }
    }
}

/// An opaque token for an environment's invalidation counts (see the module docs). The
/// default is what an environment starts with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Generation {
    /// Bumped by every invalidation; a fill lands only while it is unchanged.
    pub fills: u64,
    /// Bumped when every user's cached overrides go; `None` when the stored value is unusable.
    pub overrides_epoch: Option<u64>,
}

impl Generation {
    /// A generation with only a fill count: the in-memory cache, whose overrides go with every
    /// invalidation, and the list of environments, which has no per-user values.
    pub fn of_fills(fills: u64) -> Self {
        Self {
            fills,
            overrides_epoch: Some(0),
        }
    }
}

impl Default for Generation {
    fn default() -> Self {
        Self::of_fills(0)
    }
}

/// What one cache round trip found. `None` is a miss (absent, expired or unreadable).
#[derive(Debug, Clone, Default)]
pub struct CacheRead {
    /// Shared: a cache may hand out the same decoded snapshot to every request.
    pub flags: Option<Arc<FlagSet>>,
    pub overrides: Option<UserOverrides>,
    pub generation: Generation,
}

/// Values to put back after a miss, each only if it was missed.
#[derive(Debug, Clone, Copy, Default)]
pub struct CacheFill<'a> {
    pub flags: Option<&'a FlagSet>,
    pub overrides: Option<(&'a str, &'a UserOverrides)>,
}

/// What a write makes stale.
#[derive(Debug, Clone, Copy)]
pub enum Invalidation<'a> {
    /// The environment's flag snapshot (flag updated).
    Flags,
    /// The snapshot and the list of environments: a flag was created, perhaps the first one of
    /// its environment.
    NewFlag,
    /// One user's overrides (override added or removed).
    User(&'a str),
    /// Everything cached for the environment: the snapshot, every user's overrides and the list
    /// of environments (a flag deleted took its overrides with it; a sweep does not know what the
    /// failed write changed).
    Environment,
}

impl Invalidation<'_> {
    /// Whether the write may have changed which environments exist.
    pub fn retires_environments(self) -> bool {
        matches!(self, Self::NewFlag | Self::Environment)
    }
}

/// The cached list of environments (a miss is `None`) and the generation to fill it under.
#[derive(Debug, Clone, Default)]
pub struct EnvironmentsRead {
    pub environments: Option<Environments>,
    pub generation: Generation,
}

/// What invalidate-all did: exactly the keys it deleted, and whether it reached the end.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct InvalidateAllReport {
    pub deleted: u64,
    pub complete: bool,
}

#[async_trait]
pub trait FlagCache: Send + Sync + std::fmt::Debug {
    fn kind(&self) -> CacheKind;
    /// The snapshot, the user's overrides (when a user is given) and the generation, in one round trip.
    async fn read(&self, env: &Environment, user_id: Option<&str>)
    -> Result<CacheRead, CacheError>;
    /// Stores the values with the configured TTL unless `generation` is outdated.
    /// Returns whether they were stored.
    async fn fill(
        &self,
        env: &Environment,
        generation: Generation,
        fill: CacheFill<'_>,
    ) -> Result<bool, CacheError>;
    /// Bumps the generation and retires the affected values, with O(1) work. Not gated by the
    /// read path's breaker; retried briefly before it fails (contract §3.1).
    async fn invalidate(&self, env: &Environment, what: Invalidation<'_>)
    -> Result<(), CacheError>;
    /// The cached list of environments, in one round trip.
    async fn read_environments(&self) -> Result<EnvironmentsRead, CacheError>;
    /// Stores the list unless `generation` is outdated; returns whether it was stored.
    async fn fill_environments(
        &self,
        generation: Generation,
        environments: &Environments,
    ) -> Result<bool, CacheError>;
    /// Deletes every `feature_flags:*` key, page by page; never fails, reports what it did.
    async fn invalidate_all(&self) -> InvalidateAllReport;
    /// Whether the cache answers right now (for `/health`).
    async fn ping(&self) -> Result<(), CacheError>;
}
