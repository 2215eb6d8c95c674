//! The Redis cache adapter (contract §3, §3.1). Key formats: `crate::redis::keys`.

use super::payload::{decode_overrides, decode_snapshot, encode_overrides, encode_snapshot};
use super::{
    CacheError, CacheFill, CacheKind, CacheRead, Environments, EnvironmentsRead, FlagCache,
    Generation, InvalidateAllReport, Invalidation,
};
use crate::config::INVALIDATION_RETRY_BUDGET;
use crate::domain::Environment;
use crate::redis::{
    CACHE_PREFIX, RedisConnection, environments_generation_key, environments_key, generation_key,
    overrides_epoch_key, overrides_key, snapshot_key,
};
use async_trait::async_trait;
use fred::prelude::{ClientLike, KeysInterface, Value};
use fred::types::scripts::Script;
use std::sync::LazyLock;
use std::time::Duration;

/// SCAN page size for invalidate-all; each page (SCAN + DEL) runs under its own deadline.
const SCAN_COUNT: u32 = 1_000;

/// The counter KEYS[i] as a string ('0' when absent). A value no reader can hold (garbage,
/// another type, a number INCR cannot take) is replaced by a fresh time-based number and `nil`
/// is returned: the next reader sees a usable value and invalidation keeps working.
const CURRENT_COUNTER: &str = r"local function current(key)
  local value = redis.pcall('GET', key)
  if value == false then return '0' end
  if type(value) == 'string' and #value <= 18
    and (value == '0' or string.match(value, '^[1-9]%d*$')) then return value end
  local now = redis.call('TIME')
  redis.call('SET', key, now[1] .. string.format('%06d', tonumber(now[2])))
  return nil
end
";

/// Sets KEYS[3..] to ARGV[4..] with `EX ARGV[3]`, only while the generation KEYS[1] still
/// equals ARGV[1] and the overrides epoch KEYS[2] still equals ARGV[2].
static FILL_IF_CURRENT: LazyLock<Script> = LazyLock::new(|| {
    Script::from_lua(format!(
        r"{CURRENT_COUNTER}
if current(KEYS[1]) ~= ARGV[1] then return 0 end
if current(KEYS[2]) ~= ARGV[2] then return 0 end
for i = 3, #KEYS do redis.call('SET', KEYS[i], ARGV[i + 1], 'EX', ARGV[3]) end
return 1"
    ))
});

/// Sets KEYS[2] to ARGV[2] with `EX ARGV[3]`, only while the counter KEYS[1] still equals
/// ARGV[1] (the list of environments under its generation).
static FILL_ONE_IF_CURRENT: LazyLock<Script> = LazyLock::new(|| {
    Script::from_lua(format!(
        r"{CURRENT_COUNTER}
if current(KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[2], ARGV[2], 'EX', ARGV[3])
return 1"
    ))
});

/// Bumps the counters KEYS[1..ARGV[1]] (one a reset already moved from a garbage value is left
/// as it is) and deletes the rest of KEYS: atomically, a fixed handful of keys.
static BUMP_AND_DELETE: LazyLock<Script> = LazyLock::new(|| {
    Script::from_lua(format!(
        r"{CURRENT_COUNTER}
local counters = tonumber(ARGV[1])
for i = 1, counters do
  if current(KEYS[i]) ~= nil then redis.call('INCR', KEYS[i]) end
end
if #KEYS > counters then return redis.call('DEL', unpack(KEYS, counters + 1)) end
return 0"
    ))
});

#[derive(Debug, Clone)]
pub struct RedisCache {
    redis: RedisConnection,
    ttl: Duration,
    /// The keys of the list of environments of this cache's database.
    environments_key: String,
    environments_generation_key: String,
}

impl RedisCache {
    /// `scope` names the database whose environments the list holds (`FlagStore::cache_scope`).
    pub fn new(redis: RedisConnection, ttl: Duration, scope: &str) -> Self {
        Self {
            redis,
            ttl,
            environments_key: environments_key(scope),
            environments_generation_key: environments_generation_key(scope),
        }
    }

    pub fn connection(&self) -> &RedisConnection {
        &self.redis
    }

    /// One SCAN page and the deletion of what it matched; returns the next cursor and the
    /// number of keys deleted.
    async fn invalidate_page(&self, cursor: String) -> Result<(String, u64), CacheError> {
        let pattern = format!("{CACHE_PREFIX}*");
        self.redis
            .run_with_retry("invalidate_all_page", INVALIDATION_RETRY_BUDGET, |client| {
                let (cursor, pattern) = (cursor.clone(), pattern.clone());
                async move {
                    let page: Vec<Value> = client
                        .custom(
                            fred::cmd!("SCAN"),
                            vec![
                                cursor,
                                "MATCH".to_owned(),
                                pattern,
                                "COUNT".to_owned(),
                                SCAN_COUNT.to_string(),
                            ],
                        )
                        .await?;
                    let mut page = page.into_iter();
                    let next = page.next().and_then(Value::into_string);
                    let keys: Vec<String> = match page.next() {
                        Some(keys) => keys.convert()?,
                        None => Vec::new(),
                    };
                    // A reply without a cursor ends the scan rather than looping on it.
                    let next = next.unwrap_or_else(|| "0".to_owned());
                    let deleted = if keys.is_empty() {
                        0
                    } else {
                        client.del::<u64, _>(keys).await?
                    };
                    Ok((next, deleted))
                }
            })
            .await
    }
}

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

fn parse_counter(text: Option<String>) -> Option<u64> {
    match text {
        None => Some(0),
        Some(text) => text.parse().ok(),
    }
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
        let mut keys = vec![
            generation_key(env),
            overrides_epoch_key(env),
            snapshot_key(env),
        ];
        if let Some(user) = user_id {
            keys.push(overrides_key(env, user));
        }
        let values: Vec<Value> = self
            .redis
            .run("mget", |client| async move { client.mget(keys).await })
            .await?;
        let text = |i: usize| values.get(i).and_then(|v| v.as_string());
        let generation = Generation {
            fills: parse_counter(text(0)).unwrap_or(0),
            overrides_epoch: parse_counter(text(1)),
        };
        let flags = text(2).and_then(|raw| {
            let decoded = decode_snapshot(&raw, now_ms());
            if decoded.is_none() {
                tracing::warn!(key = %snapshot_key(env), "unreadable flag snapshot in redis; treating as a miss");
            }
            decoded
        });
        // Values cached under an older epoch were retired by a flag deletion or a sweep.
        let overrides = user_id
            .and_then(|_| text(3))
            .and_then(|raw| decode_overrides(&raw))
            .filter(|(_, epoch)| Some(*epoch) == generation.overrides_epoch)
            .map(|(overrides, _)| overrides);
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
        // An unusable epoch never matches: the script resets it and this fill stores nothing.
        let epoch = generation
            .overrides_epoch
            .map_or_else(|| "unusable".to_owned(), |e| e.to_string());
        let mut keys = vec![generation_key(env), overrides_epoch_key(env)];
        let mut args = vec![generation.fills.to_string(), epoch, ttl.to_string()];
        if let Some(flags) = fill.flags {
            keys.push(snapshot_key(env));
            args.push(encode_snapshot(flags, now_ms(), ttl));
        }
        if let Some((user, overrides)) = fill.overrides {
            keys.push(overrides_key(env, user));
            args.push(encode_overrides(
                overrides,
                generation.overrides_epoch.unwrap_or(0),
            ));
        }
        if keys.len() == 2 {
            return Ok(false);
        }
        let stored: i64 = self
            .redis
            .run("fill", |client| async move {
                FILL_IF_CURRENT
                    .evalsha_with_reload(&client, keys, args)
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
        // The counters to bump, then the keys to delete.
        let (counters, deleted) = match what {
            Invalidation::Flags => (vec![generation_key(env)], vec![snapshot_key(env)]),
            Invalidation::User(user) => (vec![generation_key(env)], vec![overrides_key(env, user)]),
            Invalidation::NewFlag => (
                vec![
                    generation_key(env),
                    self.environments_generation_key.clone(),
                ],
                vec![snapshot_key(env), self.environments_key.clone()],
            ),
            Invalidation::Environment => (
                vec![
                    generation_key(env),
                    overrides_epoch_key(env),
                    self.environments_generation_key.clone(),
                ],
                vec![snapshot_key(env), self.environments_key.clone()],
            ),
        };
        let count = counters.len().to_string();
        let keys: Vec<String> = counters.into_iter().chain(deleted).collect();
        self.redis
            .run_with_retry("invalidate", INVALIDATION_RETRY_BUDGET, |client| {
                let (keys, count) = (keys.clone(), count.clone());
                async move {
                    BUMP_AND_DELETE
                        .evalsha_with_reload::<i64, _, _>(&client, keys, vec![count])
                        .await
                }
            })
            .await?;
        Ok(())
    }

    async fn read_environments(&self) -> Result<EnvironmentsRead, CacheError> {
        let keys = vec![
            self.environments_generation_key.clone(),
            self.environments_key.clone(),
        ];
        let values: Vec<Value> = self
            .redis
            .run("mget_environments", |client| async move {
                client.mget(keys).await
            })
            .await?;
        let text = |i: usize| values.get(i).and_then(|v| v.as_string());
        let environments = text(1).and_then(|raw| {
            let decoded = serde_json::from_str::<Environments>(&raw).ok();
            if decoded.is_none() {
                tracing::warn!(key = %self.environments_key, "unreadable environment list in redis; treating as a miss");
            }
            decoded
        });
        Ok(EnvironmentsRead {
            environments,
            generation: Generation::of_fills(parse_counter(text(0)).unwrap_or(0)),
        })
    }

    async fn fill_environments(
        &self,
        generation: Generation,
        environments: &Environments,
    ) -> Result<bool, CacheError> {
        let keys = vec![
            self.environments_generation_key.clone(),
            self.environments_key.clone(),
        ];
        let args = vec![
            generation.fills.to_string(),
            serde_json::to_string(environments).map_err(|e| CacheError::Command(e.to_string()))?,
            self.ttl.as_secs().max(1).to_string(),
        ];
        let stored: i64 = self
            .redis
            .run("fill_environments", |client| async move {
                FILL_ONE_IF_CURRENT
                    .evalsha_with_reload(&client, keys, args)
                    .await
            })
            .await?;
        Ok(stored == 1)
    }

    async fn invalidate_all(&self) -> InvalidateAllReport {
        let mut report = InvalidateAllReport::default();
        let mut cursor = "0".to_owned();
        loop {
            match self.invalidate_page(cursor).await {
                Ok((next, deleted)) => {
                    report.deleted += deleted;
                    if next == "0" {
                        report.complete = true;
                        return report;
                    }
                    cursor = next;
                }
                Err(error) => {
                    tracing::warn!(error = %error, deleted = report.deleted,
                        "invalidate-all stopped before the end of the keyspace");
                    return report;
                }
            }
        }
    }

    async fn ping(&self) -> Result<(), CacheError> {
        self.redis
            .run(
                "ping",
                |client| async move { client.ping::<()>(None).await },
            )
            .await
    }
}
