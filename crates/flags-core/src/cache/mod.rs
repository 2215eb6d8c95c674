//! The cache port and its adapters: Redis (shared by every instance) and in-memory (one process).
//!
//! Both implement the same protocol against stale repopulation: a read returns a
//! [`Generation`] for the environment; a writer bumps that generation when it invalidates;
//! a fill only lands when the generation is still the one the reader saw. A reader that loaded
//! the database before a write committed can therefore never put the old state back.

mod memory;
mod payload;
mod redis;

pub use memory::MemoryCache;
pub use payload::{decode_overrides, decode_snapshot, encode_overrides, encode_snapshot};
pub use redis::{RedisCache, generation_key, overrides_key, snapshot_key};

use crate::domain::{Environment, FlagSet, UserOverrides};
use async_trait::async_trait;

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

/// An opaque token for an environment's invalidation count (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Generation(pub u64);

/// What one cache round trip found. `None` is a miss (absent, expired or unreadable).
#[derive(Debug, Clone, Default)]
pub struct CacheRead {
    pub flags: Option<FlagSet>,
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
    /// The environment's flag snapshot (flag created or updated).
    Flags,
    /// One user's overrides (override added or removed).
    User(&'a str),
    /// The snapshot and every user's overrides (flag deleted: its overrides went with it).
    FlagsAndAllUsers,
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
    /// Bumps the generation and deletes the affected keys.
    async fn invalidate(&self, env: &Environment, what: Invalidation<'_>)
    -> Result<(), CacheError>;
    /// Deletes every `feature_flags:*` key; returns how many were deleted.
    async fn invalidate_all(&self) -> Result<u64, CacheError>;
    /// Whether the cache answers right now (for `/health`).
    async fn ping(&self) -> Result<(), CacheError>;
}
