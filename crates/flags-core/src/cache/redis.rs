//! The Redis cache adapter (contract §3).

use super::payload::{decode_overrides, decode_snapshot, encode_overrides, encode_snapshot};
use super::{CacheError, CacheFill, CacheKind, CacheRead, FlagCache, Generation, Invalidation};
use crate::domain::Environment;
use crate::redis_client::RedisConnection;
use async_trait::async_trait;
use fred::prelude::{KeysInterface, Value};
use fred::types::scripts::Script;
use futures_util::TryStreamExt;
use std::sync::LazyLock;
use std::time::Duration;

/// Everything under this prefix is cache data and may be dropped at any time.
pub const KEY_PREFIX: &str = "feature_flags:";
/// SCAN page size for bulk invalidation.
const SCAN_COUNT: u32 = 500;
/// Keys deleted per DEL during bulk invalidation.
const DELETE_BATCH: usize = 500;

pub fn snapshot_key(env: &Environment) -> String {
    format!("{KEY_PREFIX}{env}")
}

pub fn overrides_key(env: &Environment, user_id: &str) -> String {
    format!("{KEY_PREFIX}{env}:overrides:{user_id}")
}

/// Outside the `feature_flags:` namespace on purpose: invalidate-all must not reset it, or a
/// reader holding an old generation could see the counter "match" again.
pub fn generation_key(env: &Environment) -> String {
    format!("feature_flags_generation:{env}")
}

/// The generation KEYS[1] as a string ('0' when absent). A value no reader can hold (garbage,
/// another type, a number INCR cannot take) is replaced by a fresh time-based number and `nil`
/// is returned: the next reader sees a usable generation and invalidation keeps working.
const CURRENT_GENERATION: &str = r"local function current_generation(key)
  local value = redis.pcall('GET', key)
  if value == false then return '0' end
  if type(value) == 'string' and #value <= 18
    and (value == '0' or string.match(value, '^[1-9]%d*$')) then return value end
  local now = redis.call('TIME')
  redis.call('SET', key, now[1] .. string.format('%06d', tonumber(now[2])))
  return nil
end
";

/// Sets KEYS[2..] to ARGV[3..] with `EX ARGV[2]`, only if KEYS[1] still equals ARGV[1].
static FILL_IF_CURRENT: LazyLock<Script> = LazyLock::new(|| {
    Script::from_lua(format!(
        r"{CURRENT_GENERATION}
if current_generation(KEYS[1]) ~= ARGV[1] then return 0 end
for i = 2, #KEYS do redis.call('SET', KEYS[i], ARGV[i + 1], 'EX', ARGV[2]) end
return 1"
    ))
});

/// Bumps the generation KEYS[1] (a reset already moved it) and deletes KEYS[2..], atomically.
static BUMP_AND_DELETE: LazyLock<Script> = LazyLock::new(|| {
    Script::from_lua(format!(
        r"{CURRENT_GENERATION}
if current_generation(KEYS[1]) ~= nil then redis.call('INCR', KEYS[1]) end
if #KEYS > 1 then return redis.call('DEL', unpack(KEYS, 2)) end
return 0"
    ))
});

#[derive(Debug, Clone)]
pub struct RedisCache {
    redis: RedisConnection,
    ttl: Duration,
}

impl RedisCache {
    pub fn new(redis: RedisConnection, ttl: Duration) -> Self {
        Self { redis, ttl }
    }

    pub fn connection(&self) -> &RedisConnection {
        &self.redis
    }

    async fn scan_keys(&self, pattern: String) -> Result<Vec<String>, CacheError> {
        self.redis
            .run("scan", |pool| async move {
                let keys: Vec<fred::types::Key> = pool
                    .next()
                    .scan_buffered(pattern, Some(SCAN_COUNT), None)
                    .try_collect()
                    .await?;
                Ok(keys.into_iter().filter_map(|k| k.into_string()).collect())
            })
            .await
    }

    async fn delete_keys(&self, keys: Vec<String>) -> Result<u64, CacheError> {
        let mut deleted = 0;
        for batch in keys.chunks(DELETE_BATCH) {
            let batch = batch.to_vec();
            deleted += self
                .redis
                .run("del", |pool| async move { pool.del::<u64, _>(batch).await })
                .await?;
        }
        Ok(deleted)
    }
}

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

#[async_trait]
impl FlagCache for RedisCache {
    fn kind(&self) -> CacheKind {
        CacheKind::Redis
    }

    async fn read(
        &self,
        env: &Environment,
        user_id: Option<&str>,
    ) -> Result<CacheRead, CacheError> {
        let mut keys = vec![generation_key(env), snapshot_key(env)];
        if let Some(user) = user_id {
            keys.push(overrides_key(env, user));
        }
        let values: Vec<Value> = self
            .redis
            .run("mget", |pool| async move { pool.mget(keys).await })
            .await?;
        let text = |i: usize| values.get(i).and_then(|v| v.as_string());
        let generation = Generation(text(0).and_then(|g| g.parse().ok()).unwrap_or(0));
        let flags = text(1).and_then(|raw| {
            let decoded = decode_snapshot(&raw, now_ms());
            if decoded.is_none() {
                tracing::warn!(key = %snapshot_key(env), "unreadable flag snapshot in redis; treating as a miss");
            }
            decoded
        });
        let overrides = user_id
            .and_then(|_| text(2))
            .and_then(|raw| decode_overrides(&raw));
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
        let ttl = self.ttl.as_secs().max(1);
        let mut keys = vec![generation_key(env)];
        let mut args = vec![generation.0.to_string(), ttl.to_string()];
        if let Some(flags) = fill.flags {
            keys.push(snapshot_key(env));
            args.push(encode_snapshot(flags, now_ms(), ttl));
        }
        if let Some((user, overrides)) = fill.overrides {
            keys.push(overrides_key(env, user));
            args.push(encode_overrides(overrides));
        }
        if keys.len() == 1 {
            return Ok(false);
        }
        let stored: i64 = self
            .redis
            .run("fill", |pool| async move {
                FILL_IF_CURRENT
                    .evalsha_with_reload(pool.next(), keys, args)
                    .await
            })
            .await?;
        Ok(stored == 1)
    }

    async fn invalidate(
        &self,
        env: &Environment,
        what: Invalidation<'_>,
    ) -> Result<(), CacheError> {
        let mut keys = vec![generation_key(env)];
        match what {
            Invalidation::Flags => keys.push(snapshot_key(env)),
            Invalidation::User(user) => keys.push(overrides_key(env, user)),
            Invalidation::FlagsAndAllUsers => {
                keys.push(snapshot_key(env));
                // Environment names contain no glob characters, so this pattern is exact.
                keys.extend(
                    self.scan_keys(format!("{KEY_PREFIX}{env}:overrides:*"))
                        .await?,
                );
            }
        }
        for batch in keys[1..]
            .chunks(DELETE_BATCH)
            .map(<[String]>::to_vec)
            .collect::<Vec<_>>()
        {
            let mut batch_keys = vec![keys[0].clone()];
            batch_keys.extend(batch);
            self.redis
                .run("invalidate", |pool| async move {
                    BUMP_AND_DELETE
                        .evalsha_with_reload::<i64, _, _>(
                            pool.next(),
                            batch_keys,
                            Vec::<String>::new(),
                        )
                        .await
                })
                .await?;
        }
        Ok(())
    }

    async fn invalidate_all(&self) -> Result<u64, CacheError> {
        let keys = self.scan_keys(format!("{KEY_PREFIX}*")).await?;
        self.delete_keys(keys).await
    }

    async fn ping(&self) -> Result<(), CacheError> {
        self.redis
            .run("ping", |pool| async move {
                use fred::prelude::ClientLike;
                pool.ping::<()>(None).await
            })
            .await
    }
}
