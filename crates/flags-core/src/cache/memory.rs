//! The per-process cache used when no `REDIS_URL` is configured (local runs, tests).
//! Same TTL and the same generation protocol as Redis; values are kept decoded, in bounded
//! caches (`moka`): a loop over made-up user ids cannot grow the process without limit.

use super::{
    CacheError, CacheFill, CacheKind, CacheRead, Environments, EnvironmentsRead, FlagCache,
    Generation, InvalidateAllReport, Invalidation,
};
use crate::domain::{Environment, FlagSet, UserOverrides};
use async_trait::async_trait;
use moka::sync::Cache;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// What the snapshots and the overrides may weigh together, in (estimated) bytes.
pub const DEFAULT_MEMORY_CACHE_MAX_BYTES: u64 = 64 * 1024 * 1024;

/// Estimated heap bytes of a cached value: what the bound counts.
fn snapshot_weight(_: &String, flags: &Arc<FlagSet>) -> u32 {
    let bytes: usize = flags
        .values()
        .map(|flag| {
            // The map key and the flag's own strings, plus the fixed part of a `Flag`.
            2 * flag.flag_key.len()
                + flag.environment.len()
                + flag.description.as_ref().map_or(0, String::len)
                + 160
        })
        .sum();
    u32::try_from(bytes + 64).unwrap_or(u32::MAX)
}

fn overrides_weight(key: &(String, String), overrides: &Arc<UserOverrides>) -> u32 {
    let bytes: usize = overrides.keys().map(|flag| flag.len() + 48).sum();
    u32::try_from(bytes + key.0.len() + key.1.len() + 96).unwrap_or(u32::MAX)
}

/// The invalidation count and the list of environments, changed together under one lock.
#[derive(Debug, Default)]
struct Writes {
    /// Bumped by every invalidation, in any environment: a fill lands only while it is the one
    /// its reader saw. One counter for the process instead of one per environment, so that
    /// nothing about an environment must outlive its evicted entries.
    count: u64,
    /// The list of environments and when it expires.
    environments: Option<(Instant, Arc<Environments>)>,
}

#[derive(Debug)]
pub struct MemoryCache {
    ttl: Duration,
    snapshots: Cache<String, Arc<FlagSet>>,
    /// Keyed by (environment, user id).
    overrides: Cache<(String, String), Arc<UserOverrides>>,
    /// Also serialises each fill's generation check with its insert, and each invalidation's
    /// bump with its removals, so no fill can land between the two halves of an invalidation.
    writes: Mutex<Writes>,
}

impl MemoryCache {
    pub fn new(ttl: Duration) -> Self {
        Self::with_max_bytes(ttl, DEFAULT_MEMORY_CACHE_MAX_BYTES)
    }

    /// A cache whose snapshots and overrides weigh at most `max_bytes` (half each).
    pub fn with_max_bytes(ttl: Duration, max_bytes: u64) -> Self {
        Self {
            ttl,
            snapshots: Cache::builder()
                .max_capacity(max_bytes / 2)
                .weigher(snapshot_weight)
                .time_to_live(ttl)
                .build(),
            overrides: Cache::builder()
                .max_capacity(max_bytes / 2)
                .weigher(overrides_weight)
                .time_to_live(ttl)
                .support_invalidation_closures()
                .build(),
            writes: Mutex::new(Writes::default()),
        }
    }

    fn writes(&self) -> MutexGuard<'_, Writes> {
        // A poisoned lock only means another request panicked mid-update; the state is usable.
        self.writes
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn generation(&self) -> Generation {
        Generation::of_fills(self.writes().count)
    }

    /// Cached entries and their estimated bytes, after pending evictions ran (for tests).
    pub fn footprint(&self) -> (u64, u64) {
        self.snapshots.run_pending_tasks();
        self.overrides.run_pending_tasks();
        (
            self.snapshots.entry_count() + self.overrides.entry_count(),
            self.snapshots.weighted_size() + self.overrides.weighted_size(),
        )
    }
}

#[async_trait]
impl FlagCache for MemoryCache {
    fn kind(&self) -> CacheKind {
        CacheKind::Memory
    }

    async fn read(
        &self,
        env: &Environment,
        user_id: Option<&str>,
    ) -> Result<CacheRead, CacheError> {
        // The generation first: a value read after it is at least as new as it says.
        let generation = self.generation();
        let flags = self.snapshots.get(env.as_str());
        let overrides = user_id.and_then(|user| {
            self.overrides
                .get(&(env.as_str().to_owned(), user.to_owned()))
                .map(|overrides| overrides.as_ref().clone())
        });
        Ok(CacheRead {
            flags,
            overrides,
            generation,
        })
    }

    async fn fill(
        &self,
        env: &Environment,
        generation: Generation,
        fill: CacheFill<'_>,
    ) -> Result<bool, CacheError> {
        let writes = self.writes();
        if writes.count != generation.fills {
            return Ok(false);
        }
        if let Some(flags) = fill.flags {
            self.snapshots
                .insert(env.as_str().to_owned(), Arc::new(flags.clone()));
        }
        if let Some((user, overrides)) = fill.overrides {
            self.overrides.insert(
                (env.as_str().to_owned(), user.to_owned()),
                Arc::new(overrides.clone()),
            );
        }
        drop(writes);
        Ok(true)
    }

    async fn invalidate(
        &self,
        env: &Environment,
        what: Invalidation<'_>,
    ) -> Result<(), CacheError> {
        let mut writes = self.writes();
        writes.count += 1;
        if what.retires_environments() {
            writes.environments = None;
        }
        match what {
            Invalidation::Flags | Invalidation::NewFlag => self.snapshots.invalidate(env.as_str()),
            Invalidation::User(user) => self
                .overrides
                .invalidate(&(env.as_str().to_owned(), user.to_owned())),
            Invalidation::Environment => {
                self.snapshots.invalidate(env.as_str());
                let env = env.as_str().to_owned();
                self.overrides
                    .invalidate_entries_if(move |(cached_env, _), _| *cached_env == env)
                    .map_err(|e| CacheError::Command(e.to_string()))?;
            }
        }
        drop(writes);
        Ok(())
    }

    async fn read_environments(&self) -> Result<EnvironmentsRead, CacheError> {
        let writes = self.writes();
        let now = Instant::now();
        Ok(EnvironmentsRead {
            environments: writes
                .environments
                .as_ref()
                .filter(|(expires, _)| *expires > now)
                .map(|(_, environments)| environments.as_ref().clone()),
            generation: Generation::of_fills(writes.count),
        })
    }

    async fn fill_environments(
        &self,
        generation: Generation,
        environments: &Environments,
    ) -> Result<bool, CacheError> {
        let mut writes = self.writes();
        if writes.count != generation.fills {
            return Ok(false);
        }
        writes.environments = Some((Instant::now() + self.ttl, Arc::new(environments.clone())));
        Ok(true)
    }

    async fn invalidate_all(&self) -> InvalidateAllReport {
        let mut writes = self.writes();
        writes.count += 1;
        writes.environments = None;
        self.snapshots.run_pending_tasks();
        self.overrides.run_pending_tasks();
        let deleted = self.snapshots.entry_count() + self.overrides.entry_count();
        self.snapshots.invalidate_all();
        self.overrides.invalidate_all();
        drop(writes);
        InvalidateAllReport {
            deleted,
            complete: true,
        }
    }

    async fn ping(&self) -> Result<(), CacheError> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::OverrideType;

    fn env(name: &str) -> Environment {
        Environment::parse(name).unwrap_or_else(|e| panic!("{name}: {e}"))
    }

    #[tokio::test]
    async fn ten_thousand_users_stay_within_the_byte_bound() {
        const MAX_BYTES: u64 = 256 * 1024;
        let cache = MemoryCache::with_max_bytes(Duration::from_secs(300), MAX_BYTES);
        let production = env("production");
        let overrides: UserOverrides = [("checkout".to_owned(), OverrideType::Include)].into();
        for i in 0..10_000 {
            let user = format!("user-{i}");
            let read = cache.read(&production, Some(&user)).await.unwrap();
            let fill = CacheFill {
                flags: None,
                overrides: Some((&user, &overrides)),
            };
            assert!(
                cache
                    .fill(&production, read.generation, fill)
                    .await
                    .unwrap()
            );
        }
        let (entries, bytes) = cache.footprint();
        assert!(bytes <= MAX_BYTES / 2, "{bytes} bytes");
        assert!(entries < 10_000, "{entries} entries: nothing was evicted");
        assert!(entries > 0);
    }

    #[tokio::test]
    async fn a_fill_read_before_any_invalidation_is_refused() {
        let cache = MemoryCache::new(Duration::from_secs(300));
        let (a, b) = (env("a"), env("b"));
        let stale = cache.read(&a, None).await.unwrap().generation;
        cache.invalidate(&b, Invalidation::NewFlag).await.unwrap();
        let fill = CacheFill {
            flags: Some(&FlagSet::new()),
            overrides: None,
        };
        assert!(!cache.fill(&a, stale, fill).await.unwrap());
        let listed = cache.read_environments().await.unwrap();
        assert!(
            !cache
                .fill_environments(stale, &Environments::new())
                .await
                .unwrap()
        );
        assert!(
            cache
                .fill_environments(listed.generation, &["b".to_owned()].into())
                .await
                .unwrap()
        );
        let listed = cache.read_environments().await.unwrap();
        assert_eq!(listed.environments, Some(["b".to_owned()].into()));
        cache.invalidate(&a, Invalidation::Flags).await.unwrap();
        assert!(
            cache
                .read_environments()
                .await
                .unwrap()
                .environments
                .is_some()
        );
        cache
            .invalidate(&a, Invalidation::Environment)
            .await
            .unwrap();
        assert_eq!(cache.read_environments().await.unwrap().environments, None);
    }
}
