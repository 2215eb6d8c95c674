//! The per-process cache used when no `REDIS_URL` is configured (local runs, tests).
//! Same TTL and the same generation protocol as Redis; values are kept decoded.

use super::{
    CacheError, CacheFill, CacheKind, CacheRead, FlagCache, Generation, InvalidateAllReport,
    Invalidation,
};
use crate::domain::{Environment, FlagSet, UserOverrides};
use async_trait::async_trait;
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

#[derive(Debug, Default)]
struct EnvEntry {
    generation: u64,
    flags: Option<(Instant, FlagSet)>,
    overrides: HashMap<String, (Instant, UserOverrides)>,
}

#[derive(Debug)]
pub struct MemoryCache {
    ttl: Duration,
    envs: Mutex<HashMap<String, EnvEntry>>,
}

impl MemoryCache {
    pub fn new(ttl: Duration) -> Self {
        Self {
            ttl,
            envs: Mutex::new(HashMap::new()),
        }
    }

    fn with_envs<T>(&self, f: impl FnOnce(&mut HashMap<String, EnvEntry>) -> T) -> T {
        // A poisoned lock only means another request panicked mid-update; the map is still usable.
        let mut guard = self
            .envs
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        f(&mut guard)
    }
}

fn fresh<T: Clone>(entry: Option<&(Instant, T)>, now: Instant) -> Option<T> {
    entry
        .filter(|(expires, _)| *expires > now)
        .map(|(_, value)| value.clone())
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
        let now = Instant::now();
        Ok(self.with_envs(|envs| match envs.get(env.as_str()) {
            None => CacheRead::default(),
            Some(entry) => CacheRead {
                flags: fresh(entry.flags.as_ref(), now),
                overrides: user_id.and_then(|u| fresh(entry.overrides.get(u), now)),
                generation: Generation {
                    fills: entry.generation,
                    overrides_epoch: Some(0),
                },
            },
        }))
    }

    async fn fill(
        &self,
        env: &Environment,
        generation: Generation,
        fill: CacheFill<'_>,
    ) -> Result<bool, CacheError> {
        let expires = Instant::now() + self.ttl;
        Ok(self.with_envs(|envs| {
            let entry = envs.entry(env.as_str().to_owned()).or_default();
            if entry.generation != generation.fills {
                return false;
            }
            if let Some(flags) = fill.flags {
                entry.flags = Some((expires, flags.clone()));
            }
            if let Some((user, overrides)) = fill.overrides {
                entry
                    .overrides
                    .insert(user.to_owned(), (expires, overrides.clone()));
            }
            true
        }))
    }

    async fn invalidate(
        &self,
        env: &Environment,
        what: Invalidation<'_>,
    ) -> Result<(), CacheError> {
        self.with_envs(|envs| {
            let entry = envs.entry(env.as_str().to_owned()).or_default();
            entry.generation += 1;
            match what {
                Invalidation::Flags => entry.flags = None,
                Invalidation::User(user) => {
                    entry.overrides.remove(user);
                }
                Invalidation::Environment => {
                    entry.flags = None;
                    entry.overrides.clear();
                }
            }
        });
        Ok(())
    }

    async fn invalidate_all(&self) -> InvalidateAllReport {
        let now = Instant::now();
        let deleted = self.with_envs(|envs| {
            let mut dropped = 0;
            for entry in envs.values_mut() {
                dropped += u64::from(entry.flags.take().is_some_and(|(exp, _)| exp > now));
                dropped += entry
                    .overrides
                    .drain()
                    .filter(|(_, (exp, _))| *exp > now)
                    .count() as u64;
            }
            dropped
        });
        InvalidateAllReport {
            deleted,
            complete: true,
        }
    }

    async fn ping(&self) -> Result<(), CacheError> {
        Ok(())
    }
}
