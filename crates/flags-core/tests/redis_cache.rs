//! The Redis cache adapter against a real Redis server (contract §3, AC2, AC3, AC7, AC15).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::bool_assert_comparison
)]
mod common;

use common::{redis_client, redis_url, spare_redis, unique, unique_env};
use flags_core::cache::{
    CacheFill, FlagCache, Generation, InvalidateAllReport, Invalidation, RedisCache,
    decode_snapshot, encode_snapshot,
};
use flags_core::config::RedisSettings;
use flags_core::domain::{Flag, FlagSet, OverrideType, Timestamp, UserOverrides};
use flags_core::redis::{
    RedisConnection, generation_key, overrides_epoch_key, overrides_key, snapshot_key,
};
use fred::prelude::{ClientLike, Expiration, KeysInterface};
use std::time::Duration;

async fn cache_at(url: &str, ttl_secs: u64) -> RedisCache {
    cache_for_scope(url, ttl_secs, &unique("scope-")).await
}

async fn cache_for_scope(url: &str, ttl_secs: u64, scope: &str) -> RedisCache {
    let connection = RedisConnection::start(&RedisSettings::new(url)).unwrap();
    assert!(
        connection.wait_connected(Duration::from_secs(5)).await,
        "Redis must be reachable at {url}"
    );
    RedisCache::new(connection, Duration::from_secs(ttl_secs), scope)
}

async fn cache() -> RedisCache {
    cache_at(&redis_url(), 300).await
}

fn flag(env: &str, key: &str, rollout: i32) -> Flag {
    Flag {
        id: uuid::Uuid::new_v4(),
        flag_key: key.to_owned(),
        environment: env.to_owned(),
        enabled: true,
        rollout_percentage: rollout,
        description: Some("Ünïcode description".into()),
        created_at: Timestamp::parse("2025-01-15T10:30:00.123Z").unwrap(),
        updated_at: Timestamp::now(),
    }
}

fn flag_set(env: &str, flags: &[(&str, i32)]) -> FlagSet {
    flags
        .iter()
        .map(|(k, r)| ((*k).to_owned(), flag(env, k, *r)))
        .collect()
}

#[tokio::test]
async fn ttl_is_set_by_redis_at_300_seconds() {
    let cache = cache().await;
    let env = unique_env();
    let flags = flag_set(env.as_str(), &[("a", 10)]);
    assert!(
        cache
            .fill(
                &env,
                Generation::default(),
                CacheFill {
                    flags: Some(&flags),
                    overrides: None
                }
            )
            .await
            .unwrap()
    );
    let raw = redis_client(&redis_url()).await;
    let ttl: i64 = raw.ttl(snapshot_key(&env)).await.unwrap();
    assert!((295..=300).contains(&ttl), "TTL was {ttl}");
}

#[tokio::test]
async fn snapshot_round_trip_keeps_exact_timestamps() {
    let cache = cache().await;
    let env = unique_env();
    let flags = flag_set(env.as_str(), &[("a", 10), ("b.c_d-e", 100)]);
    cache
        .fill(
            &env,
            Generation::default(),
            CacheFill {
                flags: Some(&flags),
                overrides: None,
            },
        )
        .await
        .unwrap();
    let read = cache.read(&env, None).await.unwrap();
    assert_eq!(read.flags.as_deref(), Some(&flags));
    // The stored JSON is the contract's shape.
    let raw: String = redis_client(&redis_url())
        .await
        .get(snapshot_key(&env))
        .await
        .unwrap();
    let json: serde_json::Value = serde_json::from_str(&raw).unwrap();
    assert!(json["expiresAt"].is_i64());
    assert_eq!(json["flags"]["a"]["createdAt"], "2025-01-15T10:30:00.123Z");
    assert_eq!(json["flags"]["a"]["flagKey"], "a");
    assert_eq!(json["flags"]["a"]["rolloutPercentage"], 10);
}

#[tokio::test]
async fn reads_a_snapshot_written_by_the_original_service() {
    let cache = cache().await;
    let env = unique_env();
    let future_ms = chrono::Utc::now().timestamp_millis() + 300_000;
    let original = format!(
        r#"{{"flags":{{"wishlist-gallery":{{"id":"3f1e1c9a-58a4-4a43-9a3e-0d1c2b7f9a10","flagKey":"wishlist-gallery","enabled":true,"rolloutPercentage":50,"description":null,"environment":"{env}","createdAt":"2025-01-15T10:30:00.000Z","updatedAt":"2025-02-01T08:00:00.123Z"}}}},"expiresAt":{future_ms}}}"#
    );
    let raw = redis_client(&redis_url()).await;
    raw.set::<(), _, _>(
        snapshot_key(&env),
        original,
        Some(Expiration::EX(300)),
        None,
        false,
    )
    .await
    .unwrap();
    let flags = cache
        .read(&env, None)
        .await
        .unwrap()
        .flags
        .expect("original payload is a hit");
    assert_eq!(flags["wishlist-gallery"].rollout_percentage, 50);
    assert_eq!(
        flags["wishlist-gallery"].updated_at.to_iso(),
        "2025-02-01T08:00:00.123Z"
    );
}

#[tokio::test]
async fn garbage_and_empty_objects_are_misses_not_errors() {
    let cache = cache().await;
    let env = unique_env();
    let raw = redis_client(&redis_url()).await;
    for garbage in [
        "{}",
        "not json at all",
        r#"{"flags":"nope"}"#,
        "\u{0}\u{1}binary",
        "[1,2,3]",
    ] {
        raw.set::<(), _, _>(snapshot_key(&env), garbage, None, None, false)
            .await
            .unwrap();
        raw.set::<(), _, _>(overrides_key(&env, "u1"), garbage, None, None, false)
            .await
            .unwrap();
        let read = cache
            .read(&env, Some("u1"))
            .await
            .expect("garbage is not an error");
        assert!(read.flags.is_none(), "{garbage:?} must be a miss");
        assert!(read.overrides.is_none() || garbage == "{}", "{garbage:?}");
    }
}

#[tokio::test]
async fn empty_overrides_are_cached_negatively() {
    let cache = cache().await;
    let env = unique_env();
    let none = UserOverrides::new();
    cache
        .fill(
            &env,
            Generation::default(),
            CacheFill {
                flags: None,
                overrides: Some(("user-1", &none)),
            },
        )
        .await
        .unwrap();
    let raw: String = redis_client(&redis_url())
        .await
        .get(overrides_key(&env, "user-1"))
        .await
        .unwrap();
    assert_eq!(raw, "{}");
    assert_eq!(
        cache.read(&env, Some("user-1")).await.unwrap().overrides,
        Some(UserOverrides::new())
    );
    assert_eq!(
        cache.read(&env, Some("user-2")).await.unwrap().overrides,
        None
    );
}

#[tokio::test]
async fn environments_are_independent() {
    let cache = cache().await;
    let (a, b) = (unique_env(), unique_env());
    let flags_a = flag_set(a.as_str(), &[("x", 1)]);
    let flags_b = flag_set(b.as_str(), &[("y", 2)]);
    cache
        .fill(
            &a,
            Generation::default(),
            CacheFill {
                flags: Some(&flags_a),
                overrides: None,
            },
        )
        .await
        .unwrap();
    cache
        .fill(
            &b,
            Generation::default(),
            CacheFill {
                flags: Some(&flags_b),
                overrides: None,
            },
        )
        .await
        .unwrap();
    cache.invalidate(&a, Invalidation::Flags).await.unwrap();
    assert!(cache.read(&a, None).await.unwrap().flags.is_none());
    assert_eq!(
        cache.read(&b, None).await.unwrap().flags.as_deref(),
        Some(&flags_b)
    );
}

fn fill_flags(flags: &FlagSet) -> CacheFill<'_> {
    CacheFill {
        flags: Some(flags),
        overrides: None,
    }
}

/// Garbage under the generation key (a string INCR cannot take, or another type) must neither
/// stop fills for good nor stop invalidation from deleting the snapshot.
#[tokio::test]
async fn a_garbage_generation_heals_and_invalidation_still_deletes() {
    let cache = cache().await;
    let raw = redis_client(&redis_url()).await;
    for garbage in ["garbage", "-1", "007", "99999999999999999999", "hash"] {
        let env = unique_env();
        let flags = flag_set(env.as_str(), &[("a", 10)]);
        let generation_key = generation_key(&env);
        if garbage == "hash" {
            let _: fred::prelude::Value = raw
                .custom(fred::cmd!("HSET"), vec![generation_key.as_str(), "f", "v"])
                .await
                .unwrap();
        } else {
            raw.set::<(), _, _>(&generation_key, garbage, None, None, false)
                .await
                .unwrap();
        }

        // A reader of the unusable generation does not fill, but the next reader can.
        let seen = cache
            .read(&env, None)
            .await
            .expect("not an error")
            .generation;
        let _ = cache
            .fill(&env, seen, fill_flags(&flags))
            .await
            .expect("not an error");
        let next = cache.read(&env, None).await.unwrap().generation;
        assert!(
            cache.fill(&env, next, fill_flags(&flags)).await.unwrap(),
            "{garbage:?}: the cache is usable again"
        );
        assert!(cache.read(&env, None).await.unwrap().flags.is_some());

        // Garbage again, then a write: the snapshot must go, and older readers stay refused.
        raw.set::<(), _, _>(&generation_key, garbage, None, None, false)
            .await
            .unwrap();
        cache
            .invalidate(&env, Invalidation::Flags)
            .await
            .expect("invalidation works over garbage");
        let read = cache.read(&env, None).await.unwrap();
        assert!(read.flags.is_none(), "{garbage:?}: snapshot deleted");
        assert!(!cache.fill(&env, next, fill_flags(&flags)).await.unwrap());
        assert!(
            cache
                .fill(&env, read.generation, fill_flags(&flags))
                .await
                .unwrap()
        );
    }
}

#[tokio::test]
async fn a_fill_with_an_outdated_generation_is_refused() {
    let cache = cache().await;
    let env = unique_env();
    let old = flag_set(env.as_str(), &[("a", 10)]);
    let seen = cache.read(&env, None).await.unwrap().generation;
    cache.invalidate(&env, Invalidation::Flags).await.unwrap();
    let stored = cache
        .fill(
            &env,
            seen,
            CacheFill {
                flags: Some(&old),
                overrides: None,
            },
        )
        .await
        .unwrap();
    assert!(!stored);
    assert!(cache.read(&env, None).await.unwrap().flags.is_none());
    let current = cache.read(&env, None).await.unwrap().generation;
    assert!(
        cache
            .fill(
                &env,
                current,
                CacheFill {
                    flags: Some(&old),
                    overrides: None
                }
            )
            .await
            .unwrap()
    );
}

#[tokio::test]
async fn user_invalidation_drops_only_that_user() {
    let cache = cache().await;
    let env = unique_env();
    let inc: UserOverrides = [("a".to_owned(), OverrideType::Include)].into();
    for user in ["u1", "u2"] {
        let generation = cache.read(&env, Some(user)).await.unwrap().generation;
        cache
            .fill(
                &env,
                generation,
                CacheFill {
                    flags: None,
                    overrides: Some((user, &inc)),
                },
            )
            .await
            .unwrap();
    }
    cache
        .invalidate(&env, Invalidation::User("u1"))
        .await
        .unwrap();
    assert!(
        cache
            .read(&env, Some("u1"))
            .await
            .unwrap()
            .overrides
            .is_none()
    );
    assert_eq!(
        cache.read(&env, Some("u2")).await.unwrap().overrides,
        Some(inc.clone())
    );
    cache
        .invalidate(&env, Invalidation::Environment)
        .await
        .unwrap();
    assert!(
        cache
            .read(&env, Some("u2"))
            .await
            .unwrap()
            .overrides
            .is_none()
    );
}

/// Against a server of its own, so that dropping every `feature_flags:*` key cannot disturb
/// other tests, and so that its command statistics show SCAN was used and KEYS never was.
#[tokio::test]
async fn invalidate_all_scans_and_never_uses_keys() {
    let redis = spare_redis().await;
    let cache = cache_at(&redis.url(), 300).await;
    let raw = redis_client(&redis.url()).await;
    for i in 0..1_200 {
        raw.set::<(), _, _>(format!("feature_flags:env{i}"), "{}", None, None, false)
            .await
            .unwrap();
    }
    raw.set::<(), _, _>(
        "feature_flags:production:overrides:u1",
        "{}",
        None,
        None,
        false,
    )
    .await
    .unwrap();
    raw.set::<(), _, _>("unrelated:key", "keep", None, None, false)
        .await
        .unwrap();
    let report = cache.invalidate_all().await;
    assert_eq!(
        report,
        InvalidateAllReport {
            deleted: 1_201,
            complete: true
        }
    );
    let remaining: Vec<String> = raw.custom(fred::cmd!("KEYS"), vec!["*"]).await.unwrap();
    assert_eq!(remaining, ["unrelated:key"]);
    let stats: String = raw
        .info(Some(fred::types::InfoKind::CommandStats))
        .await
        .unwrap();
    assert!(stats.contains("cmdstat_scan:"), "{stats}");
    // The one KEYS call is this test's own check above.
    assert!(stats.contains("cmdstat_keys:calls=1,"), "{stats}");
    raw.quit().await.unwrap();
}

#[tokio::test]
async fn concurrent_fills_and_reads_stay_consistent() {
    let cache = std::sync::Arc::new(cache().await);
    let env = unique_env();
    let mut tasks = Vec::new();
    for i in 0..50 {
        let (cache, env) = (cache.clone(), env.clone());
        tasks.push(tokio::spawn(async move {
            let flags = flag_set(env.as_str(), &[("same", 50)]);
            let user = format!("user-{}", i % 5);
            let overrides: UserOverrides = [("same".to_owned(), OverrideType::Include)].into();
            let read = cache.read(&env, Some(&user)).await.unwrap();
            cache
                .fill(
                    &env,
                    read.generation,
                    CacheFill {
                        flags: Some(&flags),
                        overrides: Some((&user, &overrides)),
                    },
                )
                .await
                .unwrap();
            let again = cache.read(&env, Some(&user)).await.unwrap();
            assert_eq!(again.flags.map(|f| f["same"].rollout_percentage), Some(50));
            assert_eq!(again.overrides, Some(overrides));
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    let raw: String = redis_client(&redis_url())
        .await
        .get(snapshot_key(&env))
        .await
        .unwrap();
    assert!(
        decode_snapshot(&raw, 0).is_some(),
        "the final value is a whole snapshot"
    );
}

/// Garbage under the overrides epoch: overrides are misses (never wrong), the next fill resets
/// it, and the cache is usable again.
#[tokio::test]
async fn a_garbage_overrides_epoch_heals() {
    let cache = cache().await;
    let raw = redis_client(&redis_url()).await;
    let env = unique_env();
    let overrides: UserOverrides = [("a".to_owned(), OverrideType::Include)].into();
    let fill = CacheFill {
        flags: None,
        overrides: Some(("u1", &overrides)),
    };
    raw.set::<(), _, _>(overrides_epoch_key(&env), "garbage", None, None, false)
        .await
        .unwrap();
    let seen = cache.read(&env, Some("u1")).await.unwrap().generation;
    assert_eq!(seen.overrides_epoch, None);
    assert!(
        !cache.fill(&env, seen, fill).await.unwrap(),
        "refused, and reset"
    );
    let next = cache.read(&env, Some("u1")).await.unwrap().generation;
    assert!(next.overrides_epoch.is_some());
    assert!(cache.fill(&env, next, fill).await.unwrap());
    assert_eq!(
        cache.read(&env, Some("u1")).await.unwrap().overrides,
        Some(overrides)
    );
}

/// An environment invalidation retires every user's cached overrides with one epoch bump:
/// values filled under the old epoch read as misses, whatever their TTL, and a payload in the
/// original format (no epoch) is retired too.
#[tokio::test]
async fn an_environment_invalidation_retires_every_user_without_touching_their_keys() {
    let cache = cache().await;
    let raw = redis_client(&redis_url()).await;
    let env = unique_env();
    let overrides: UserOverrides = [("a".to_owned(), OverrideType::Exclude)].into();
    for user in ["u1", "u2", "u3"] {
        let generation = cache.read(&env, Some(user)).await.unwrap().generation;
        let fill = CacheFill {
            flags: None,
            overrides: Some((user, &overrides)),
        };
        assert!(cache.fill(&env, generation, fill).await.unwrap());
    }
    raw.set::<(), _, _>(
        overrides_key(&env, "original"),
        r#"{"a":"exclude"}"#,
        None,
        None,
        false,
    )
    .await
    .unwrap();
    assert_eq!(
        cache.read(&env, Some("original")).await.unwrap().overrides,
        Some(overrides.clone()),
        "the original's format reads as epoch 0"
    );
    cache
        .invalidate(&env, Invalidation::Environment)
        .await
        .unwrap();
    for user in ["u1", "u2", "u3", "original"] {
        assert!(
            raw.exists::<bool, _>(overrides_key(&env, user))
                .await
                .unwrap(),
            "{user}: the key is not touched (no scan)"
        );
        assert!(
            cache
                .read(&env, Some(user))
                .await
                .unwrap()
                .overrides
                .is_none(),
            "{user}: retired"
        );
    }
    // A user-scoped invalidation keeps the others.
    let generation = cache.read(&env, Some("u1")).await.unwrap().generation;
    for user in ["u1", "u2"] {
        let fill = CacheFill {
            flags: None,
            overrides: Some((user, &overrides)),
        };
        assert!(cache.fill(&env, generation, fill).await.unwrap());
    }
    cache
        .invalidate(&env, Invalidation::User("u1"))
        .await
        .unwrap();
    assert!(
        cache
            .read(&env, Some("u1"))
            .await
            .unwrap()
            .overrides
            .is_none()
    );
    assert_eq!(
        cache.read(&env, Some("u2")).await.unwrap().overrides,
        Some(overrides)
    );
}

/// With a million unrelated keys in Redis: invalidating an environment (a flag delete) sends no
/// SCAN at all, and invalidate-all pages through the keyspace and reports exactly what it deleted.
#[tokio::test]
async fn a_million_unrelated_keys_cost_invalidation_nothing_and_invalidate_all_pages() {
    let redis = spare_redis().await;
    let cache = cache_at(&redis.url(), 300).await;
    let raw = redis_client(&redis.url()).await;
    let _: String = raw
        .custom(
            fred::cmd!("DEBUG"),
            vec!["POPULATE", "1000000", "unrelated"],
        )
        .await
        .unwrap();
    let env = unique_env();
    let flags = flag_set(env.as_str(), &[("a", 10)]);
    let overrides: UserOverrides = [("a".to_owned(), OverrideType::Include)].into();
    for i in 0..250 {
        let user = format!("user-{i}");
        let generation = cache.read(&env, Some(&user)).await.unwrap().generation;
        let fill = CacheFill {
            flags: (i == 0).then_some(&flags),
            overrides: Some((&user, &overrides)),
        };
        assert!(cache.fill(&env, generation, fill).await.unwrap());
    }
    let _: () = raw
        .custom(fred::cmd!("CONFIG"), vec!["RESETSTAT"])
        .await
        .unwrap();

    cache
        .invalidate(&env, Invalidation::Environment)
        .await
        .unwrap();
    let stats: String = raw
        .info(Some(fred::types::InfoKind::CommandStats))
        .await
        .unwrap();
    assert!(
        !stats.contains("cmdstat_scan:"),
        "no SCAN on the write path: {stats}"
    );
    assert!(
        cache
            .read(&env, Some("user-7"))
            .await
            .unwrap()
            .overrides
            .is_none()
    );
    assert!(cache.read(&env, None).await.unwrap().flags.is_none());

    let report = cache.invalidate_all().await;
    assert_eq!(
        report,
        InvalidateAllReport {
            deleted: 250,
            complete: true
        },
        "the 250 override keys (the snapshot went with the environment invalidation)"
    );
    let stats: String = raw
        .info(Some(fred::types::InfoKind::CommandStats))
        .await
        .unwrap();
    let scans: u64 = stats
        .lines()
        .find_map(|l| l.strip_prefix("cmdstat_scan:calls="))
        .and_then(|rest| rest.split(',').next())
        .and_then(|n| n.parse().ok())
        .unwrap();
    assert!(scans >= 1_000, "paged: {scans} SCAN calls of 1,000");
    let size: u64 = raw
        .custom(fred::cmd!("DBSIZE"), Vec::<String>::new())
        .await
        .unwrap();
    // The unrelated keys, the environment's two counters and the counter of its database's list
    // of environments (`Invalidation::Environment` retires that list too): nothing else.
    assert_eq!(size, 1_000_000 + 3);
    raw.quit().await.unwrap();
}

/// Invalidate-all never claims keys it did not delete: with Redis gone it reports 0 and
/// `complete: false`.
#[tokio::test]
async fn invalidate_all_against_a_dead_redis_reports_incomplete() {
    let mut redis = spare_redis().await;
    let cache = cache_at(&redis.url(), 300).await;
    redis.kill().await;
    let report = cache.invalidate_all().await;
    assert_eq!(report, InvalidateAllReport::default());
}

/// The list of environments (answers for made-up names) follows the generation protocol: a fill
/// read before a flag creation or a sweep is refused, both retire the list, an update does not,
/// garbage is a miss that the next fill repairs, and each database's scope has its own list.
#[tokio::test]
async fn the_list_of_environments_follows_the_generation_protocol() {
    let scope = unique("scope-");
    let cache = cache_for_scope(&redis_url(), 300, &scope).await;
    let env = unique_env();
    let listed = |names: &[&str]| -> flags_core::cache::Environments {
        names.iter().map(|n| (*n).to_owned()).collect()
    };

    let empty = cache.read_environments().await.unwrap();
    assert_eq!(empty.environments, None);
    cache.invalidate(&env, Invalidation::NewFlag).await.unwrap();
    assert!(
        !cache
            .fill_environments(empty.generation, &listed(&["old"]))
            .await
            .unwrap(),
        "read before the flag was created"
    );
    let current = cache.read_environments().await.unwrap();
    assert!(
        cache
            .fill_environments(current.generation, &listed(&[env.as_str()]))
            .await
            .unwrap()
    );
    let read = cache.read_environments().await.unwrap();
    assert_eq!(read.environments, Some(listed(&[env.as_str()])));
    let other_database = cache_for_scope(&redis_url(), 300, &unique("scope-")).await;
    assert_eq!(
        other_database
            .read_environments()
            .await
            .unwrap()
            .environments,
        None
    );

    cache.invalidate(&env, Invalidation::Flags).await.unwrap();
    assert!(
        cache
            .read_environments()
            .await
            .unwrap()
            .environments
            .is_some()
    );
    cache
        .invalidate(&env, Invalidation::Environment)
        .await
        .unwrap();
    assert_eq!(cache.read_environments().await.unwrap().environments, None);

    let raw = redis_client(&redis_url()).await;
    let key = flags_core::redis::environments_key(&scope);
    raw.set::<(), _, _>(&key, "not json", None, None, false)
        .await
        .unwrap();
    let garbage = cache.read_environments().await.unwrap();
    assert_eq!(garbage.environments, None);
    assert!(
        cache
            .fill_environments(garbage.generation, &listed(&["a"]))
            .await
            .unwrap()
    );
    assert_eq!(
        cache.read_environments().await.unwrap().environments,
        Some(listed(&["a"]))
    );
}

/// Fills `flags` under the generation a read finds, as the service does after a miss.
async fn fill_current(cache: &RedisCache, env: &flags_core::domain::Environment, flags: &FlagSet) {
    let generation = cache.read(env, None).await.unwrap().generation;
    let fill = CacheFill {
        flags: Some(flags),
        overrides: None,
    };
    assert!(cache.fill(env, generation, fill).await.unwrap());
}

/// An instance keeps the snapshot it decoded (or stored) and reads only the generation and the
/// user's overrides while Redis holds the same one; a write by another instance moves the
/// generation, and the very next read fetches and decodes the new snapshot.
#[tokio::test]
async fn a_held_snapshot_serves_reads_until_another_instance_writes() {
    let (reader, writer) = (cache().await, cache().await);
    let env = unique_env();
    let before = flag_set(env.as_str(), &[("a", 10), ("b", 100)]);
    fill_current(&writer, &env, &before).await;

    assert_eq!(
        reader.read(&env, None).await.unwrap().flags.as_deref(),
        Some(&before)
    );
    assert_eq!(reader.held_reads(), 0, "the first read decodes");
    assert_eq!(
        reader.read(&env, None).await.unwrap().flags.as_deref(),
        Some(&before)
    );
    assert_eq!(
        reader.held_reads(),
        1,
        "the second is served from the held copy"
    );

    // Another instance writes: the generation moves, its refill lands under the new one.
    writer.invalidate(&env, Invalidation::Flags).await.unwrap();
    let after = flag_set(env.as_str(), &[("a", 90), ("b", 0)]);
    assert!(
        reader.read(&env, None).await.unwrap().flags.is_none(),
        "a miss after the write"
    );
    fill_current(&writer, &env, &after).await;
    assert_eq!(
        reader.read(&env, None).await.unwrap().flags.as_deref(),
        Some(&after)
    );
    assert_eq!(
        reader.held_reads(),
        1,
        "the changed snapshot was fetched, not the held one"
    );
    assert_eq!(
        reader.read(&env, None).await.unwrap().flags.as_deref(),
        Some(&after)
    );
    assert_eq!(reader.held_reads(), 2);
}

/// With the snapshot held, the user's overrides still come from Redis in the same round trip:
/// an override written or invalidated by another instance is seen at once.
#[tokio::test]
async fn overrides_are_read_fresh_while_the_snapshot_is_held() {
    let (reader, writer) = (cache().await, cache().await);
    let env = unique_env();
    let flags = flag_set(env.as_str(), &[("a", 0)]);
    fill_current(&writer, &env, &flags).await;
    reader.read(&env, None).await.unwrap();
    let include: UserOverrides = [("a".to_owned(), OverrideType::Include)].into();
    let generation = reader.read(&env, Some("u1")).await.unwrap().generation;
    let fill = CacheFill {
        flags: None,
        overrides: Some(("u1", &include)),
    };
    assert!(writer.fill(&env, generation, fill).await.unwrap());

    let read = reader.read(&env, Some("u1")).await.unwrap();
    assert_eq!(
        (read.flags.as_deref(), read.overrides),
        (Some(&flags), Some(include))
    );
    writer
        .invalidate(&env, Invalidation::User("u1"))
        .await
        .unwrap();
    let read = reader.read(&env, Some("u1")).await.unwrap();
    assert_eq!(
        read.flags.as_deref(),
        Some(&flags),
        "the flags did not change"
    );
    assert!(read.overrides.is_none(), "the user's overrides did");
    // An override change moves the generation too (it fences stale fills), so that read
    // fetched the unchanged snapshot once more; the next is held again.
    assert_eq!(reader.held_reads(), 2);
    reader.read(&env, Some("u1")).await.unwrap();
    assert_eq!(reader.held_reads(), 3);
}

/// The held copy is recognised by the end of the snapshot's text too, not by the generation
/// alone: a snapshot replaced without a generation bump (the original service's writer, or a
/// refill after Redis lost its data) is fetched; a snapshot gone is a miss, never the held copy.
#[tokio::test]
async fn a_replaced_or_vanished_snapshot_is_never_answered_from_the_held_copy() {
    let cache = cache().await;
    let env = unique_env();
    let raw = redis_client(&redis_url()).await;
    let first = flag_set(env.as_str(), &[("a", 10)]);
    fill_current(&cache, &env, &first).await;
    assert_eq!(
        cache.read(&env, None).await.unwrap().flags.as_deref(),
        Some(&first)
    );

    let replaced = flag_set(env.as_str(), &[("a", 55)]);
    let text = encode_snapshot(&replaced, chrono::Utc::now().timestamp_millis() + 1, 300);
    raw.set::<(), _, _>(snapshot_key(&env), text, None, None, false)
        .await
        .unwrap();
    assert_eq!(
        cache.read(&env, None).await.unwrap().flags.as_deref(),
        Some(&replaced)
    );

    let _: i64 = raw
        .del(vec![snapshot_key(&env), generation_key(&env)])
        .await
        .unwrap();
    assert!(cache.read(&env, None).await.unwrap().flags.is_none());
    assert_eq!(
        cache.held_reads(),
        1,
        "only the read before the replacement was held"
    );
}
