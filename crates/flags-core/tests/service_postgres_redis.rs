//! The flag service over real PostgreSQL and Redis: cache-aside reads, invalidation, the
//! stale-repopulation race, the shared rate limit and the wiring (AC4, AC8, AC14).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::bool_assert_comparison
)]
mod common;

use common::service::{PausingStore, redis_connection, service_with_memory, service_with_redis};
use common::{as_dyn_store, key, new_flag, postgres_store, redis_client, redis_url, unique_env};
use flags_core::cache::CacheKind;
use flags_core::domain::{Environment, FlagPatch, NewOverride, OverrideType, Rollout, UserId};
use flags_core::redis::snapshot_key;
use flags_core::service::{PageRequest, RedisStatus, ServiceError};
use flags_core::store::FlagStore;
use flags_core::{App, Config, FlagService};
use fred::prelude::{Expiration, KeysInterface};
use std::sync::Arc;
use std::time::Duration;

async fn redis_service() -> (FlagService, Arc<dyn FlagStore>) {
    let store = as_dyn_store(postgres_store().await);
    let redis = redis_connection(&redis_url(), Duration::from_millis(500)).await;
    (service_with_redis(store.clone(), redis, 100), store)
}

fn include(user: &str) -> NewOverride {
    NewOverride {
        user_id: UserId::parse(user).unwrap(),
        override_type: OverrideType::Include,
        reason: None,
        created_by: None,
    }
}

#[tokio::test]
async fn a_miss_reads_the_database_and_repopulates_before_returning() {
    let (service, store) = redis_service().await;
    let env = unique_env();
    service
        .create_flag(&env, new_flag("a", true, 100), None)
        .await
        .unwrap();
    let raw = redis_client(&redis_url()).await;
    assert!(!raw.exists::<bool, _>(snapshot_key(&env)).await.unwrap());

    assert_eq!(
        service.evaluate_all(&env, Some("user-1")).await.unwrap()["a"],
        true
    );
    assert!(
        raw.exists::<bool, _>(snapshot_key(&env)).await.unwrap(),
        "repopulated before returning"
    );

    // Change the database behind the service's back: the cached snapshot is what answers now.
    let patch = FlagPatch {
        enabled: Some(false),
        ..FlagPatch::default()
    };
    store
        .update_flag(&env, &key("a"), &patch, None)
        .await
        .unwrap();
    assert_eq!(
        service.evaluate_all(&env, Some("user-1")).await.unwrap()["a"],
        true,
        "served from cache"
    );
}

#[tokio::test]
async fn every_write_invalidates_what_it_changed() {
    let (service, _) = redis_service().await;
    let env = unique_env();
    service
        .create_flag(&env, new_flag("f", true, 0), None)
        .await
        .unwrap();
    assert_eq!(
        service.evaluate_all(&env, Some("alice")).await.unwrap()["f"],
        false
    );

    service
        .upsert_override(&env, &key("f"), include("alice"), None)
        .await
        .unwrap();
    assert_eq!(
        service.evaluate_all(&env, Some("alice")).await.unwrap()["f"],
        true,
        "override add"
    );
    assert_eq!(
        service.evaluate_all(&env, Some("bob")).await.unwrap()["f"],
        false
    );

    let patch = FlagPatch {
        enabled: Some(false),
        ..FlagPatch::default()
    };
    service
        .update_flag(&env, &key("f"), patch, None)
        .await
        .unwrap();
    assert_eq!(
        service.evaluate_all(&env, Some("alice")).await.unwrap()["f"],
        false,
        "kill switch"
    );
    let patch = FlagPatch {
        enabled: Some(true),
        ..FlagPatch::default()
    };
    service
        .update_flag(&env, &key("f"), patch, None)
        .await
        .unwrap();

    service
        .delete_override(&env, &key("f"), "alice", None)
        .await
        .unwrap();
    assert_eq!(
        service.evaluate_all(&env, Some("alice")).await.unwrap()["f"],
        false,
        "override removed"
    );

    service
        .upsert_override(&env, &key("f"), include("alice"), None)
        .await
        .unwrap();
    assert_eq!(
        service.evaluate_all(&env, Some("alice")).await.unwrap()["f"],
        true
    );
    service.delete_flag(&env, &key("f"), None).await.unwrap();
    assert!(
        service
            .evaluate_all(&env, Some("alice"))
            .await
            .unwrap()
            .is_empty(),
        "flag deleted"
    );
    service
        .create_flag(&env, new_flag("f", true, 0), None)
        .await
        .unwrap();
    assert_eq!(
        service.evaluate_all(&env, Some("alice")).await.unwrap()["f"],
        false,
        "old override gone"
    );

    let error = service
        .update_flag(&env, &key("nope"), FlagPatch::default(), None)
        .await
        .unwrap_err();
    assert!(matches!(error, ServiceError::FlagNotFound(k) if k == "nope"));
    let error = service
        .delete_override(&env, &key("f"), "nobody", None)
        .await
        .unwrap_err();
    assert!(matches!(error, ServiceError::OverrideNotFound(k) if k == "f"));
    let error = service
        .create_flag(&env, new_flag("f", true, 0), None)
        .await
        .unwrap_err();
    assert!(matches!(error, ServiceError::AlreadyExists(k) if k == "f"));
}

#[tokio::test]
async fn batch_and_single_evaluation_agree_with_overrides() {
    let (service, _) = redis_service().await;
    let env = unique_env();
    for (name, enabled, rollout) in [
        ("off", false, 100),
        ("on", true, 100),
        ("half", true, 50),
        ("zero", true, 0),
    ] {
        service
            .create_flag(&env, new_flag(name, enabled, rollout), None)
            .await
            .unwrap();
    }
    service
        .upsert_override(&env, &key("zero"), include("user-123"), None)
        .await
        .unwrap();
    service
        .upsert_override(&env, &key("off"), include("user-123"), None)
        .await
        .unwrap();
    let mut exclude = include("user-456");
    exclude.override_type = OverrideType::Exclude;
    service
        .upsert_override(&env, &key("on"), exclude, None)
        .await
        .unwrap();
    for user in [
        Some("user-123"),
        Some("user-456"),
        Some("dev-user"),
        Some(""),
        None,
    ] {
        let batch = service.evaluate_all(&env, user).await.unwrap();
        for name in ["off", "on", "half", "zero", "missing"] {
            let single = service.evaluate(&env, &key(name), user).await.unwrap();
            assert_eq!(
                batch.get(name).unwrap_or(false),
                single,
                "{name} for {user:?}"
            );
        }
    }
    let alice = service.evaluate_all(&env, Some("user-123")).await.unwrap();
    assert!(alice["zero"] && !alice["off"] && alice["half"], "{alice:?}");
}

/// The race of contract §3, forced deterministically: a reader loads the database, a writer
/// commits and invalidates, then the reader tries to fill the cache. The old state must not land.
async fn assert_no_stale_repopulation(make: impl Fn(Arc<dyn FlagStore>) -> FlagService) {
    let pausing = Arc::new(PausingStore::new(as_dyn_store(postgres_store().await)));
    let service = Arc::new(make(pausing.clone()));
    let env = unique_env();
    service
        .create_flag(&env, new_flag("race", true, 100), None)
        .await
        .unwrap();

    pausing.arm();
    let reader = {
        let (service, env) = (service.clone(), env.clone());
        tokio::spawn(async move { service.evaluate_all(&env, None).await.unwrap() })
    };
    pausing.loaded.notified().await; // the reader holds the old state (enabled)
    let patch = FlagPatch {
        enabled: Some(false),
        ..FlagPatch::default()
    };
    service
        .update_flag(&env, &key("race"), patch, None)
        .await
        .unwrap(); // commit + invalidate
    pausing.resume.notify_one(); // now the reader tries to fill
    assert_eq!(
        reader.await.unwrap()["race"],
        true,
        "the reader answers with what it read"
    );

    for _ in 0..3 {
        assert_eq!(
            service.evaluate_all(&env, None).await.unwrap()["race"],
            false,
            "no stale state after the write"
        );
    }
}

#[tokio::test]
async fn no_stale_repopulation_with_redis() {
    let redis = redis_connection(&redis_url(), Duration::from_millis(500)).await;
    assert_no_stale_repopulation(|store| service_with_redis(store, redis.clone(), 100)).await;
}

#[tokio::test]
async fn no_stale_repopulation_with_the_memory_cache() {
    assert_no_stale_repopulation(service_with_memory).await;
}

#[tokio::test]
async fn garbage_in_redis_is_answered_from_the_database_and_repaired() {
    let (service, _) = redis_service().await;
    let env = unique_env();
    service
        .create_flag(&env, new_flag("g", true, 100), None)
        .await
        .unwrap();
    let raw = redis_client(&redis_url()).await;
    raw.set::<(), _, _>(
        snapshot_key(&env),
        "{not json",
        Some(Expiration::EX(300)),
        None,
        false,
    )
    .await
    .unwrap();
    assert_eq!(service.evaluate_all(&env, None).await.unwrap()["g"], true);
    let repaired: String = raw.get(snapshot_key(&env)).await.unwrap();
    assert!(repaired.starts_with("{\"flags\""), "{repaired}");
}

#[tokio::test]
async fn the_override_rate_limit_is_shared_between_instances() {
    let store = as_dyn_store(postgres_store().await);
    let first = service_with_redis(
        store.clone(),
        redis_connection(&redis_url(), Duration::from_millis(500)).await,
        3,
    );
    let second = service_with_redis(
        store,
        redis_connection(&redis_url(), Duration::from_millis(500)).await,
        3,
    );
    let env = unique_env();
    first
        .create_flag(&env, new_flag("limited", true, 0), None)
        .await
        .unwrap();
    first
        .upsert_override(&env, &key("limited"), include("u1"), None)
        .await
        .unwrap();
    second
        .upsert_override(&env, &key("limited"), include("u2"), None)
        .await
        .unwrap();
    first
        .delete_override(&env, &key("limited"), "u1", None)
        .await
        .unwrap();
    let error = second
        .upsert_override(&env, &key("limited"), include("u3"), None)
        .await
        .unwrap_err();
    let ServiceError::RateLimited(limited) = error else {
        panic!("expected 429, got {error:?}")
    };
    assert!((1..=3600).contains(&limited.retry_after_secs));
    // A missing flag is a 404 before the limit is counted.
    let error = second
        .upsert_override(&env, &key("absent"), include("u3"), None)
        .await
        .unwrap_err();
    assert!(matches!(error, ServiceError::FlagNotFound(_)));
}

#[tokio::test]
async fn override_listing_pages_newest_first() {
    let (service, _) = redis_service().await;
    let env = unique_env();
    service
        .create_flag(&env, new_flag("p", true, 0), None)
        .await
        .unwrap();
    for i in 0..5 {
        service
            .upsert_override(&env, &key("p"), include(&format!("u{i}")), None)
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(3)).await;
    }
    let page = service
        .list_overrides(
            &env,
            &key("p"),
            PageRequest {
                page: 2,
                page_size: 2,
            },
        )
        .await
        .unwrap();
    assert_eq!(page.total, 5);
    let ids: Vec<_> = page.overrides.iter().map(|o| o.user_id.as_str()).collect();
    assert_eq!(ids, ["u2", "u1"]);
}

#[tokio::test]
async fn wiring_picks_redis_when_configured_and_memory_otherwise() {
    let database_url = common::database_url();
    let with_redis = App::build(&Config::new(database_url.clone(), Some(redis_url())))
        .await
        .unwrap();
    assert_eq!(with_redis.service.cache().kind(), CacheKind::Redis);
    assert_eq!(with_redis.service.store().backend(), "postgres");
    let health = with_redis.service.health().await;
    assert!(
        health.is_ok() && health.redis == RedisStatus::Up && health.cache == Some(CacheKind::Redis)
    );

    let without = App::build(&Config::new(database_url, None)).await.unwrap();
    assert_eq!(without.service.cache().kind(), CacheKind::Memory);
    assert_eq!(without.service.health().await.redis, RedisStatus::Disabled);

    let sqlite_path = std::env::temp_dir().join(format!("{}.db", common::unique("wiring-")));
    let sqlite = App::build(&Config::new(
        format!("sqlite://{}", sqlite_path.display()),
        None,
    ))
    .await
    .unwrap();
    assert_eq!(sqlite.service.store().backend(), "sqlite");

    let bad = App::build(&Config::new("mysql://nope", None)).await;
    assert!(bad.is_err());
}

#[tokio::test]
async fn redis_unreachable_at_start_still_serves_from_the_database() {
    let closed_port = flags_testkit::free_port().unwrap();
    let store = as_dyn_store(postgres_store().await);
    let redis = redis_connection(
        &format!("redis://127.0.0.1:{closed_port}"),
        Duration::from_millis(500),
    )
    .await;
    let service = service_with_redis(store, redis, 100);
    let env = unique_env();
    service
        .create_flag(&env, new_flag("db-only", true, 100), None)
        .await
        .unwrap();
    assert_eq!(
        service.evaluate_all(&env, Some("u")).await.unwrap()["db-only"],
        true
    );
    let flag = service.get_flag(&env, &key("db-only")).await.unwrap();
    assert_eq!(flag.rollout_percentage, 100);
    let health = service.health().await;
    assert_eq!(
        (health.redis, health.cache, health.database_up),
        (RedisStatus::Down, None, true)
    );
    let report = service.invalidate_all(None).await.unwrap();
    assert_eq!(
        (report.deleted, report.complete),
        (0, false),
        "invalidate-all degrades to 0 keys and says it is incomplete"
    );
    let rollout = FlagPatch {
        rollout: Rollout::new(5),
        ..FlagPatch::default()
    };
    assert_eq!(
        service
            .update_flag(&env, &key("db-only"), rollout, None)
            .await
            .unwrap()
            .rollout_percentage,
        5
    );
}

/// Made-up environment names (a typo, or a loop over new names) cost the database nothing per
/// name: they are answered from the cached list of environments. A flag created in a brand-new
/// environment is seen by the next read, also on an instance that cached the list before.
async fn made_up_environments_never_reach_the_database(
    reader: &FlagService,
    reads: &PausingStore,
    writer: &FlagService,
) {
    use std::sync::atomic::Ordering::SeqCst;
    let prefix = common::unique("nx");
    for i in 0..10_000 {
        let env = Environment::parse(&format!("{prefix}-{i}")).unwrap();
        assert!(
            reader
                .evaluate_all(&env, Some("user-1"))
                .await
                .unwrap()
                .is_empty()
        );
    }
    assert_eq!(reads.list_flags_calls.load(SeqCst), 0);
    assert_eq!(reads.list_environments_calls.load(SeqCst), 1);

    let fresh = Environment::parse(&format!("{prefix}-new")).unwrap();
    writer
        .create_flag(&fresh, new_flag("a", true, 100), None)
        .await
        .unwrap();
    assert_eq!(reader.evaluate_all(&fresh, None).await.unwrap()["a"], true);
    assert_eq!(
        reader.get_flag(&fresh, &key("a")).await.unwrap().flag_key,
        "a"
    );
}

#[tokio::test]
async fn made_up_environments_with_redis_and_a_second_instance() {
    let store = as_dyn_store(postgres_store().await);
    let reads = Arc::new(PausingStore::new(store.clone()));
    let redis = redis_connection(&redis_url(), Duration::from_millis(500)).await;
    let reader = service_with_redis(reads.clone(), redis, 100);
    let other_redis = redis_connection(&redis_url(), Duration::from_millis(500)).await;
    let writer = service_with_redis(store, other_redis, 100);
    made_up_environments_never_reach_the_database(&reader, &reads, &writer).await;
}

#[tokio::test]
async fn made_up_environments_with_the_memory_cache() {
    let store = as_dyn_store(postgres_store().await);
    let reads = Arc::new(PausingStore::new(store));
    let service = service_with_memory(reads.clone());
    made_up_environments_never_reach_the_database(&service, &reads, &service).await;
}
