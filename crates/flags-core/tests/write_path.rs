//! The write path of contract §3.1 over real PostgreSQL and Redis: deterministic interleavings of
//! readers and writers, writes while Redis misbehaves, the sweeper, and the rate limit when Redis
//! goes away (contract §2.5).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::bool_assert_comparison
)]
mod common;

use common::service::{
    PauseAt, PausingStore, redis_connection, service_with_memory, service_with_redis,
};
use common::{
    as_dyn_store, eventually, key, new_flag, postgres_schema_url, postgres_store, redis_client,
    redis_url, spare_redis, unique_env,
};
use flags_core::domain::{FlagPatch, NewOverride, OverrideType, UserId};
use flags_core::service::ServiceError;
use flags_core::store::PostgresStore;
use flags_core::{App, Config, FlagService};
use fred::prelude::{ClientLike, KeysInterface};
use std::sync::Arc;
use std::time::Duration;

fn exclude(user: &str) -> NewOverride {
    NewOverride {
        user_id: UserId::parse(user).unwrap(),
        override_type: OverrideType::Exclude,
        reason: None,
        created_by: None,
    }
}

fn kill_switch() -> FlagPatch {
    FlagPatch {
        enabled: Some(false),
        ..FlagPatch::default()
    }
}

/// Both cache adapters, over one PostgreSQL store that can pause a reader.
async fn services(pausing: Arc<PausingStore>) -> Vec<(&'static str, Arc<FlagService>)> {
    let redis = redis_connection(&redis_url(), Duration::from_millis(500)).await;
    vec![
        (
            "redis",
            Arc::new(service_with_redis(pausing.clone(), redis, 100)),
        ),
        ("memory", Arc::new(service_with_memory(pausing))),
    ]
}

/// A reader loads the flags, the flag is deleted (commit + invalidation), then the reader fills:
/// the deleted flag must not come back from the cache.
#[tokio::test]
async fn a_fill_racing_a_flag_delete_cannot_bring_the_flag_back() {
    let pausing = Arc::new(PausingStore::new(as_dyn_store(postgres_store().await)));
    for (name, service) in services(pausing.clone()).await {
        let env = unique_env();
        service
            .create_flag(&env, new_flag("doomed", true, 100), None)
            .await
            .unwrap();
        pausing.arm_at(PauseAt::ListFlags);
        let reader = {
            let (service, env) = (service.clone(), env.clone());
            tokio::spawn(async move { service.evaluate_all(&env, Some("u1")).await.unwrap() })
        };
        pausing.loaded.notified().await;
        service
            .delete_flag(&env, &key("doomed"), None)
            .await
            .unwrap();
        pausing.resume.notify_one();
        assert_eq!(reader.await.unwrap()["doomed"], true, "{name}: old answer");
        for user in [None, Some("u1"), Some("u2")] {
            assert_eq!(
                service
                    .evaluate_all(&env, user)
                    .await
                    .unwrap()
                    .get("doomed"),
                None,
                "{name}: {user:?} must not see the deleted flag"
            );
        }
    }
}

/// A reader loads a user's overrides, an exclude override is added for that user, then the
/// reader fills: the user's old (empty) overrides must not land.
#[tokio::test]
async fn a_fill_racing_an_override_change_cannot_restore_the_old_override() {
    let pausing = Arc::new(PausingStore::new(as_dyn_store(postgres_store().await)));
    for (name, service) in services(pausing.clone()).await {
        let env = unique_env();
        service
            .create_flag(&env, new_flag("f", true, 100), None)
            .await
            .unwrap();
        // The snapshot is cached already; only the user's overrides are missing.
        service.evaluate_all(&env, None).await.unwrap();
        pausing.arm_at(PauseAt::UserOverrides);
        let reader = {
            let (service, env) = (service.clone(), env.clone());
            tokio::spawn(async move { service.evaluate_all(&env, Some("alice")).await.unwrap() })
        };
        pausing.loaded.notified().await;
        service
            .upsert_override(&env, &key("f"), exclude("alice"), None)
            .await
            .unwrap();
        pausing.resume.notify_one();
        assert_eq!(reader.await.unwrap()["f"], true, "{name}: old answer");
        for _ in 0..3 {
            assert_eq!(
                service.evaluate_all(&env, Some("alice")).await.unwrap()["f"],
                false,
                "{name}: the exclude override holds"
            );
        }
    }
}

/// A flag delete holds the flag's row lock; an override upsert arriving then waits for it and,
/// once the delete commits, answers 404 (never the foreign-key error as a 500).
#[tokio::test]
async fn an_override_upsert_racing_a_flag_delete_is_a_404_never_a_500() {
    let store = postgres_store().await;
    let redis = redis_connection(&redis_url(), Duration::from_millis(500)).await;
    let dyn_store = as_dyn_store(store.clone());
    let services = [
        (
            "redis",
            Arc::new(service_with_redis(dyn_store.clone(), redis, 100)),
        ),
        ("memory", Arc::new(service_with_memory(dyn_store))),
    ];
    for (name, service) in services {
        let env = unique_env();
        service
            .create_flag(&env, new_flag("contested", true, 0), None)
            .await
            .unwrap();
        let mut delete = store.pool().begin().await.unwrap();
        let deleter: i32 = sqlx::query_scalar("SELECT pg_backend_pid()")
            .fetch_one(&mut *delete)
            .await
            .unwrap();
        sqlx::query("DELETE FROM feature_flags WHERE environment = $1 AND flag_key = 'contested'")
            .bind(env.as_str())
            .execute(&mut *delete)
            .await
            .unwrap();
        let upsert = {
            let (service, env) = (service.clone(), env.clone());
            tokio::spawn(async move {
                service
                    .upsert_override(&env, &key("contested"), exclude("bob"), None)
                    .await
            })
        };
        assert!(
            eventually(Duration::from_secs(10), || blocked_by(&store, deleter)).await,
            "{name}: the upsert waits for the delete's lock"
        );
        delete.commit().await.unwrap();
        let error = upsert.await.unwrap().unwrap_err();
        assert!(
            matches!(&error, ServiceError::FlagNotFound(k) if k == "contested"),
            "{name}: {error:?}"
        );
    }
}

async fn blocked_by(store: &PostgresStore, pid: i32) -> bool {
    let waiting: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM pg_stat_activity WHERE $1 = ANY(pg_blocking_pids(pid))",
    )
    .bind(pid)
    .fetch_one(store.pool())
    .await
    .unwrap();
    waiting > 0
}

/// 100 override changes counted by Redis; Redis goes away; the 101st is still refused, because
/// the count then comes from the audit log (contract §2.5), never from a fresh per-process count.
#[tokio::test]
async fn the_101st_override_change_is_limited_after_redis_is_cut() {
    let mut redis = spare_redis().await;
    let store = as_dyn_store(postgres_store().await);
    let connection = redis_connection(&redis.url(), Duration::from_millis(500)).await;
    let service = service_with_redis(store, connection, 100);
    let env = unique_env();
    for name in ["busy", "quiet"] {
        service
            .create_flag(&env, new_flag(name, true, 0), None)
            .await
            .unwrap();
    }
    for i in 0..100 {
        service
            .upsert_override(&env, &key("busy"), exclude(&format!("user-{i}")), None)
            .await
            .unwrap();
    }
    // A missing flag is a 404 and is never counted (the lookup comes before the count).
    let error = service
        .upsert_override(&env, &key("absent"), exclude("user-1"), None)
        .await
        .unwrap_err();
    assert!(matches!(error, ServiceError::FlagNotFound(_)), "{error:?}");
    let raw = redis_client(&redis.url()).await;
    let counters: Vec<String> = raw
        .custom(fred::cmd!("KEYS"), vec!["feature_flags_ratelimit:*"])
        .await
        .unwrap();
    assert_eq!(
        counters.len(),
        1,
        "only the busy flag is counted: {counters:?}"
    );
    raw.quit().await.unwrap();
    redis.kill().await;
    let error = service
        .upsert_override(&env, &key("busy"), exclude("user-100"), None)
        .await
        .unwrap_err();
    let ServiceError::RateLimited(limited) = error else {
        panic!("expected a 429, got {error:?}")
    };
    assert!((1..=3600).contains(&limited.retry_after_secs));
    let error = service
        .delete_override(&env, &key("busy"), "user-1", None)
        .await
        .unwrap_err();
    assert!(matches!(error, ServiceError::RateLimited(_)), "{error:?}");
    service
        .upsert_override(&env, &key("quiet"), exclude("user-1"), None)
        .await
        .expect("another flag has its own budget");
}

/// The read path's breaker is open because of an unrelated slow command; a write right then
/// still invalidates (its retry is not gated by that breaker), so the very next read is fresh.
#[tokio::test]
async fn a_write_with_the_read_breaker_open_still_invalidates() {
    let redis = spare_redis().await;
    let store = as_dyn_store(postgres_store().await);
    let connection = redis_connection(&redis.url(), Duration::from_millis(500)).await;
    let service = service_with_redis(store, connection, 100);
    let env = unique_env();
    service
        .create_flag(&env, new_flag("switch", true, 100), None)
        .await
        .unwrap();
    assert_eq!(
        service.evaluate_all(&env, None).await.unwrap()["switch"],
        true
    );

    let sleeper = redis_client(&redis.url()).await;
    let slow = tokio::spawn(async move {
        let _: () = sleeper
            .custom(fred::cmd!("DEBUG"), vec!["SLEEP", "0.8"])
            .await
            .unwrap();
    });
    tokio::time::sleep(Duration::from_millis(50)).await;
    // Times out at 500 ms and opens the breaker; answered from the database meanwhile.
    assert_eq!(
        service.evaluate_all(&env, None).await.unwrap()["switch"],
        true
    );
    service
        .update_flag(&env, &key("switch"), kill_switch(), None)
        .await
        .unwrap();
    assert_eq!(
        service.evaluate_all(&env, None).await.unwrap()["switch"],
        false,
        "the first read after the write is fresh"
    );
    assert!(
        service
            .store()
            .pending_invalidations(10)
            .await
            .unwrap()
            .is_empty()
    );
    slow.await.unwrap();
}

/// A write while Redis is frozen answers 2xx and leaves its invalidation pending; as soon as the
/// instance reaches Redis again it sweeps on its own (no scheduled sweep, no TTL), so reads are
/// fresh again within the promise of §3.1 and nothing stays pending.
#[tokio::test]
async fn a_write_while_redis_is_frozen_is_completed_when_redis_comes_back() {
    let redis = spare_redis().await;
    let app = App::build(&Config::new(postgres_schema_url().await, Some(redis.url())))
        .await
        .unwrap();
    let service = app.service.clone();
    let env = unique_env();
    service
        .create_flag(&env, new_flag("switch", true, 100), None)
        .await
        .unwrap();
    assert_eq!(
        service.evaluate_all(&env, None).await.unwrap()["switch"],
        true
    );

    redis.freeze().await;
    service
        .update_flag(&env, &key("switch"), kill_switch(), None)
        .await
        .expect("a write is never refused because of the cache");
    assert_eq!(
        service
            .store()
            .pending_invalidations(10)
            .await
            .unwrap()
            .len(),
        1,
        "the invalidation is owed"
    );
    redis.thaw().await;
    let fresh = eventually(Duration::from_millis(2_500), || async {
        !service.evaluate_all(&env, None).await.unwrap()["switch"]
            && service
                .store()
                .pending_invalidations(10)
                .await
                .unwrap()
                .is_empty()
    })
    .await;
    assert!(fresh, "swept by the instance whose Redis came back");
    let raw = redis_client(&redis.url()).await;
    let snapshot: Option<String> = raw
        .get(flags_core::redis::snapshot_key(&env))
        .await
        .unwrap();
    assert!(
        snapshot
            .as_deref()
            .is_none_or(|s| s.contains(r#""enabled":false"#)),
        "the stale snapshot is gone: {snapshot:?}"
    );
    for _ in 0..5 {
        assert_eq!(
            service.evaluate_all(&env, None).await.unwrap()["switch"],
            false
        );
    }
    app.redis.unwrap().quit().await;
}
