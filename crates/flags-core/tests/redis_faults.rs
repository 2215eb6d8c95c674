//! Redis failures while the service is answering, against a Redis server each test owns on a
//! spare port (the shared server on 6379 is never stopped). Contract §3: Redis trouble never
//! becomes an error, and the cache comes back by itself (AC1, AC3, AC6).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::bool_assert_comparison
)]
mod common;

use common::service::{redis_connection, service_with_redis};
use common::{
    OwnedRedis, as_dyn_store, eventually, new_flag, postgres_store, redis_client, spare_redis,
    unique_env,
};
use flags_core::FlagService;
use flags_core::domain::Environment;
use flags_core::redis::snapshot_key;
use fred::prelude::{ClientLike, KeysInterface};
use std::time::{Duration, Instant};

const COMMAND_TIMEOUT: Duration = Duration::from_millis(300);

async fn service_on(redis: &OwnedRedis) -> (FlagService, Environment) {
    let store = as_dyn_store(postgres_store().await);
    let service = service_with_redis(
        store,
        redis_connection(&redis.url(), COMMAND_TIMEOUT).await,
        100,
    );
    let env = unique_env();
    service
        .create_flag(&env, new_flag("resilient", true, 100), None)
        .await
        .unwrap();
    (service, env)
}

/// Calls the service `n` times and requires every call to succeed with the right answer.
async fn all_calls_succeed(service: &FlagService, env: &Environment, n: usize) -> Duration {
    let mut slowest = Duration::ZERO;
    for _ in 0..n {
        let started = Instant::now();
        let flags = service
            .evaluate_all(env, Some("user-1"))
            .await
            .expect("served from the database");
        assert_eq!(flags.get("resilient"), Some(true));
        slowest = slowest.max(started.elapsed());
    }
    slowest
}

/// True once a call has put the snapshot back into this Redis, i.e. the cache is in use again.
async fn cache_in_use(service: &FlagService, env: &Environment, redis: &OwnedRedis) -> bool {
    let raw = redis_client(&redis.url()).await;
    let in_use = eventually(Duration::from_secs(15), || async {
        service.evaluate_all(env, Some("user-1")).await.unwrap();
        raw.exists::<bool, _>(snapshot_key(env))
            .await
            .unwrap_or(false)
    })
    .await;
    let _ = raw.quit().await;
    in_use
}

#[tokio::test]
async fn redis_killed_and_restarted_while_answering() {
    let mut redis = spare_redis().await;
    let (service, env) = service_on(&redis).await;
    all_calls_succeed(&service, &env, 5).await;
    assert!(cache_in_use(&service, &env, &redis).await);

    redis.kill().await;
    all_calls_succeed(&service, &env, 50).await;

    redis.restart().await.unwrap();
    assert!(
        cache_in_use(&service, &env, &redis).await,
        "cache used again without restarting the service"
    );
}

/// A cold start while Redis is down: the service starts without waiting out the connect
/// timeout, answers from the database, and uses the cache once Redis is up (the first
/// connection is retried; fred's own policy only covers connections that were once up).
#[tokio::test]
async fn redis_down_at_start_then_up() {
    let mut redis = spare_redis().await;
    redis.kill().await;
    let (service, env) = service_on(&redis).await;
    all_calls_succeed(&service, &env, 20).await;

    redis.restart().await.unwrap();
    assert!(
        cache_in_use(&service, &env, &redis).await,
        "the first connection is retried until Redis answers"
    );
}

#[tokio::test]
async fn frozen_redis_never_holds_a_call_past_the_command_timeout() {
    let redis = spare_redis().await;
    let (service, env) = service_on(&redis).await;
    assert!(cache_in_use(&service, &env, &redis).await);

    redis.freeze().await;
    // Writes too: the invalidation after a commit must not hang either.
    service
        .create_flag(&env, new_flag("while-frozen", true, 0), None)
        .await
        .unwrap();
    let slowest = all_calls_succeed(&service, &env, 30).await;
    // A bound on correctness (the per-command deadline holds), not a performance assertion:
    // one command timeout plus scheduling slack, far below what an unbounded wait would take.
    assert!(
        slowest < COMMAND_TIMEOUT * 4,
        "a call waited {slowest:?} on a frozen Redis"
    );

    redis.thaw().await;
    assert!(
        cache_in_use(&service, &env, &redis).await,
        "cache used again after thawing"
    );
}

#[tokio::test]
async fn a_primary_turned_replica_answers_readonly_and_the_service_keeps_answering() {
    let redis = spare_redis().await;
    let (service, env) = service_on(&redis).await;
    assert!(cache_in_use(&service, &env, &redis).await);

    // A failover as the client sees it: the node it talks to becomes a replica (of a primary
    // that does not exist), so every write is answered with READONLY.
    // The snapshot is dropped first so that every call misses and tries to write it back.
    let admin = redis_client(&redis.url()).await;
    let nowhere = flags_testkit::free_port().unwrap();
    let _: i64 = admin.del(snapshot_key(&env)).await.unwrap();
    let _: () = admin
        .custom(
            fred::cmd!("REPLICAOF"),
            vec!["127.0.0.1".to_owned(), nowhere.to_string()],
        )
        .await
        .unwrap();
    let _ = admin.quit().await;
    all_calls_succeed(&service, &env, 20).await;

    // Promoted again (a fresh client: the READONLY answers above make clients reconnect).
    let admin = redis_client(&redis.url()).await;
    let _: () = admin
        .custom(fred::cmd!("REPLICAOF"), vec!["NO", "ONE"])
        .await
        .unwrap();
    let _ = admin.quit().await;
    assert!(
        cache_in_use(&service, &env, &redis).await,
        "cache used again after the failover"
    );
}
