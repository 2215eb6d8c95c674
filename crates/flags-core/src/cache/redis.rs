//! The Redis cache adapter (contract §3, §3.1). Key formats: `crate::redis::keys`.

use super::payload::{
    decode_overrides, decode_snapshot_with_expiry, encode_overrides, encode_snapshot,
};
use super::{
    CacheError, CacheFill, CacheKind, CacheRead, Environments, EnvironmentsRead, FlagCache,
    Generation, InvalidateAllReport, Invalidation,
};
use crate::domain::{Environment, FlagSet, UserOverrides};
use crate::redis::{
    CACHE_PREFIX, RedisConnection, environments_generation_key, environments_key, generation_key,
    overrides_epoch_key, overrides_key, snapshot_key,
};
use async_trait::async_trait;
use fred::prelude::{ClientLike, KeysInterface, Value};
use fred::types::scripts::Script;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock};
use std::time::Duration;

/// How long a write keeps retrying its cache invalidation before leaving it to the sweeper.
const INVALIDATION_RETRY_BUDGET: Duration = Duration::from_secs(1);
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

/// The read of an instance that holds a decoded snapshot of the environment: the generation,
/// the overrides epoch and the user's overrides as always (KEYS[4], when given), and the snapshot
/// KEYS[3] only when it is not the held one. The held one is recognised by the generation it was
/// read or filled under (ARGV[1]) and the last ARGV[3] bytes of its text (ARGV[2]), which end with
/// its `expiresAt`: a refill after a flush, or a writer that does not bump the generation, changes
/// them. Returns {generation, epoch, snapshot or false, overrides or false, 1 if held}.
static READ_UNLESS_HELD: LazyLock<Script> = LazyLock::new(|| {
    // `no-writes`: it also runs on a replica (after a failover) and while Redis is out of memory.
    Script::from_lua(
        r"#!lua flags=no-writes
local function text(key)
  local value = redis.pcall('GET', key)
  if type(value) == 'string' then return value end
  return false
end
local generation = text(KEYS[1])
local epoch = text(KEYS[2])
local overrides = false
if KEYS[4] then overrides = text(KEYS[4]) end
local tail = redis.pcall('GETRANGE', KEYS[3], -tonumber(ARGV[3]), -1)
if (generation or '0') == ARGV[1] and type(tail) == 'string' and tail == ARGV[2] then
  return {generation, epoch, false, overrides, 1}
end
return {generation, epoch, text(KEYS[3]), overrides, 0}",
    )
});

/// How many bytes of a snapshot's text identify it (its end holds `expiresAt`, in ms).
const HELD_TAIL_BYTES: usize = 64;
/// Environments whose decoded snapshot one instance keeps.
const HELD_ENVIRONMENTS: u64 = 256;

/// A snapshot this instance decoded, kept while Redis still holds the same one: a read then
/// transfers and decodes nothing but the generation and the user's overrides.
#[derive(Debug, Clone)]
struct HeldSnapshot {
    /// The generation text it was read or filled under (`0` when there was none).
    generation: String,
    /// The last bytes of its text, on a character boundary.
    tail: String,
    flags: Arc<FlagSet>,
    /// Its `expiresAt` (epoch ms): past it, it is not used even if Redis still has it.
    expires_at_ms: Option<i64>,
}

impl HeldSnapshot {
    fn new(generation: String, raw: &str, flags: Arc<FlagSet>, expires_at_ms: Option<i64>) -> Self {
        let mut start = raw.len().saturating_sub(HELD_TAIL_BYTES);
        while !raw.is_char_boundary(start) {
            start += 1;
        }
        Self {
            generation,
            tail: raw[start..].to_owned(),
            flags,
            expires_at_ms,
        }
    }

    fn is_live(&self, now_ms: i64) -> bool {
        self.expires_at_ms.is_none_or(|at| at >= now_ms)
    }
}

#[derive(Debug, Clone)]
pub struct RedisCache {
    redis: RedisConnection,
    ttl: Duration,
    /// The keys of the list of environments of this cache's database.
    environments_key: String,
    environments_generation_key: String,
    /// Decoded snapshots, per environment (shared by the clones of this cache).
    held: moka::sync::Cache<String, HeldSnapshot>,
    /// Reads answered with a held snapshot (for tests and benchmarks).
    held_reads: Arc<AtomicU64>,
}

impl RedisCache {
    /// `scope` names the database whose environments the list holds (`FlagStore::cache_scope`).
    pub fn new(redis: RedisConnection, ttl: Duration, scope: &str) -> Self {
        Self {
            redis,
            ttl,
            environments_key: environments_key(scope),
            environments_generation_key: environments_generation_key(scope),
            held: moka::sync::Cache::new(HELD_ENVIRONMENTS),
            held_reads: Arc::default(),
        }
    }

    /// How many reads were answered with a snapshot this instance had already decoded.
    pub fn held_reads(&self) -> u64 {
        self.held_reads.load(Ordering::Relaxed)
    }

    /// The read while holding `held`: one script, the same round trip as the plain read.
    async fn read_holding(
        &self,
        env: &Environment,
        user_id: Option<&str>,
        held: HeldSnapshot,
    ) -> Result<CacheRead, CacheError> {
        let keys = read_keys(env, user_id);
        let args = vec![
            held.generation.clone(),
            held.tail.clone(),
            held.tail.len().to_string(),
        ];
        let values: Vec<Value> = self
            .redis
            .run("read_unless_held", |client| async move {
                READ_UNLESS_HELD
                    .evalsha_with_reload(&client, keys, args)
                    .await
            })
            .await?;
        let text = |i: usize| values.get(i).and_then(|v| v.as_string());
        let still_held = values.get(4).and_then(Value::as_i64) == Some(1);
        if still_held {
            self.held_reads.fetch_add(1, Ordering::Relaxed);
            let generation = self.generation_of(text(0), text(1));
            let overrides = self.overrides_of(user_id, text(3), generation);
            return Ok(CacheRead {
                flags: Some(held.flags),
                overrides,
                generation,
            });
        }
        Ok(self.decoded(env, user_id, text(0), text(1), text(2), text(3)))
    }

    fn generation_of(&self, generation: Option<String>, epoch: Option<String>) -> Generation {
        Generation {
            fills: parse_counter(generation).unwrap_or(0),
            overrides_epoch: parse_counter(epoch),
        }
    }

    /// Values cached under an older epoch were retired by a flag deletion or a sweep.
    fn overrides_of(
        &self,
        user_id: Option<&str>,
        raw: Option<String>,
        generation: Generation,
    ) -> Option<UserOverrides> {
        user_id
            .and(raw)
            .and_then(|raw| decode_overrides(&raw))
            .filter(|(_, epoch)| Some(*epoch) == generation.overrides_epoch)
            .map(|(overrides, _)| overrides)
    }

    /// A read's texts decoded; a readable snapshot is kept for the next read.
    fn decoded(
        &self,
        env: &Environment,
        user_id: Option<&str>,
        generation_text: Option<String>,
        epoch_text: Option<String>,
        snapshot_text: Option<String>,
        overrides_text: Option<String>,
    ) -> CacheRead {
        let held_generation = generation_text.clone().unwrap_or_else(|| "0".to_owned());
        let generation = self.generation_of(generation_text, epoch_text);
        let flags = snapshot_text.and_then(|raw| {
            let Some((flags, expires_at_ms)) = decode_snapshot_with_expiry(&raw, now_ms()) else {
                tracing::warn!(key = %snapshot_key(env), "unreadable flag snapshot in redis; treating as a miss");
                return None;
            };
            let flags = Arc::new(flags);
            self.held.insert(
                env.as_str().to_owned(),
                HeldSnapshot::new(held_generation, &raw, Arc::clone(&flags), expires_at_ms),
            );
            Some(flags)
        });
        let overrides = self.overrides_of(user_id, overrides_text, generation);
        CacheRead {
            flags,
            overrides,
            generation,
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
            .map_err(CacheError::from)
    }
}

/// What a read fetches: the generation, the overrides epoch, the snapshot and, for a user, the
/// user's overrides (in this order).
fn read_keys(env: &Environment, user_id: Option<&str>) -> Vec<String> {
    let mut keys = vec![
        generation_key(env),
        overrides_epoch_key(env),
        snapshot_key(env),
    ];
    if let Some(user) = user_id {
        keys.push(overrides_key(env, user));
    }
    keys
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
        if let Some(held) = self.held.get(env.as_str()).filter(|h| h.is_live(now_ms())) {
            return self.read_holding(env, user_id, held).await;
        }
        let keys = read_keys(env, user_id);
        let values: Vec<Value> = self
            .redis
            .run("mget", |client| async move { client.mget(keys).await })
            .await?;
        let text = |i: usize| values.get(i).and_then(|v| v.as_string());
        Ok(self.decoded(env, user_id, text(0), text(1), text(2), text(3)))
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
        let now = now_ms();
        let snapshot = fill
            .flags
            .map(|flags| (flags, encode_snapshot(flags, now, ttl)));
        if let Some((_, raw)) = &snapshot {
            keys.push(snapshot_key(env));
            args.push(raw.clone());
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
        // What this instance stored under this generation is what the next read would fetch.
        if let (1, Some((flags, raw))) = (stored, snapshot) {
            let expires_at_ms = now.saturating_add(i64::try_from(ttl * 1000).unwrap_or(i64::MAX));
            self.held.insert(
                env.as_str().to_owned(),
                HeldSnapshot::new(
                    generation.fills.to_string(),
                    &raw,
                    Arc::new(flags.clone()),
                    Some(expires_at_ms),
                ),
            );
        }
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
            .map_err(CacheError::from)
    }
}
