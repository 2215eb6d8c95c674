//! The storage contract, run unchanged against every adapter (see `store_contract_tests!`).
#![allow(dead_code, clippy::unwrap_used)]

use super::{env, key, new_flag};
use flags_core::domain::{
    Actor, AuditFilter, Environment, Flag, FlagPatch, NewFlag, NewOverride, OverrideType, Rollout,
    UserId, UserOverride,
};
use flags_core::rate_limit::AuditWindow;
use flags_core::store::{FlagStore, StoreError};

async fn create(store: &dyn FlagStore, env: &Environment, new: &NewFlag) -> Flag {
    store.create_flag(env, new, None).await.unwrap().value
}

async fn update(store: &dyn FlagStore, env: &Environment, name: &str, patch: &FlagPatch) -> Flag {
    store
        .update_flag(env, &key(name), patch, None)
        .await
        .unwrap()
        .value
}

async fn upsert(
    store: &dyn FlagStore,
    env: &Environment,
    flag: &str,
    new: &NewOverride,
) -> UserOverride {
    store
        .upsert_override(env, &key(flag), new, None, None)
        .await
        .unwrap()
        .value
}

fn override_for(user: &str, kind: OverrideType) -> NewOverride {
    NewOverride {
        user_id: UserId::parse(user).unwrap(),
        override_type: kind,
        reason: None,
        created_by: Some("admin-1".into()),
    }
}

pub async fn migrations_are_idempotent(store: &dyn FlagStore) {
    store.migrate().await.unwrap();
    store.ping().await.unwrap();
}

pub async fn create_get_and_list_sorted(store: &dyn FlagStore) {
    let prod = env("production");
    for name in ["b-flag", "a-flag", "c-flag", "B-flag", "Zed"] {
        create(store, &prod, &new_flag(name, true, 25)).await;
    }
    create(
        store,
        &env("development"),
        &new_flag("z-dev-only", false, 0),
    )
    .await;
    let keys: Vec<_> = store
        .list_flags(&prod)
        .await
        .unwrap()
        .into_iter()
        .map(|f| f.flag_key)
        .collect();
    // Byte order, the same on both databases whatever their collation.
    assert_eq!(keys, ["B-flag", "Zed", "a-flag", "b-flag", "c-flag"]);
    let flag = store
        .get_flag(&prod, &key("a-flag"))
        .await
        .unwrap()
        .unwrap();
    assert!(flag.enabled);
    assert_eq!(flag.rollout_percentage, 25);
    assert_eq!(flag.environment, "production");
    assert_eq!(flag.created_at, flag.updated_at);
    assert!(
        store
            .get_flag(&prod, &key("z-dev-only"))
            .await
            .unwrap()
            .is_none()
    );
    assert!(store.list_flags(&env("staging")).await.unwrap().is_empty());
}

pub async fn timestamps_round_trip_exactly(store: &dyn FlagStore) {
    let created = create(store, &env("production"), &new_flag("ts", false, 0)).await;
    let loaded = store
        .get_flag(&env("production"), &key("ts"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        created, loaded,
        "what create returns is what a later read returns"
    );
    assert!(loaded.created_at.to_iso().ends_with('Z'));
}

pub async fn duplicate_key_is_already_exists_per_environment(store: &dyn FlagStore) {
    create(store, &env("production"), &new_flag("dup", false, 0)).await;
    let error = store
        .create_flag(&env("production"), &new_flag("dup", true, 5), None)
        .await
        .unwrap_err();
    assert!(matches!(error, StoreError::AlreadyExists), "{error:?}");
    create(store, &env("development"), &new_flag("dup", false, 0)).await;
}

pub async fn partial_update_bumps_updated_at(store: &dyn FlagStore) {
    let prod = env("production");
    let mut new = new_flag("upd", false, 10);
    new.description = Some("first".into());
    let created = create(store, &prod, &new).await;
    tokio::time::sleep(std::time::Duration::from_millis(5)).await;

    let patch = FlagPatch {
        rollout: Rollout::new(60),
        ..FlagPatch::default()
    };
    let updated = update(store, &prod, "upd", &patch).await;
    assert_eq!(updated.rollout_percentage, 60);
    assert!(!updated.enabled, "unset fields are left alone");
    assert_eq!(updated.description.as_deref(), Some("first"));
    assert_eq!(updated.created_at, created.created_at);
    assert!(updated.updated_at > created.updated_at);

    tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    let touched = update(store, &prod, "upd", &FlagPatch::default()).await;
    assert!(
        touched.updated_at > updated.updated_at,
        "an empty patch only bumps updatedAt"
    );
    assert_eq!(touched.rollout_percentage, 60);

    let cleared = FlagPatch {
        description: Some(None),
        enabled: Some(true),
        ..FlagPatch::default()
    };
    let cleared = update(store, &prod, "upd", &cleared).await;
    assert_eq!(cleared.description, None);
    assert!(cleared.enabled);

    for (environment, name) in [(&prod, "missing"), (&env("development"), "upd")] {
        let error = store
            .update_flag(environment, &key(name), &FlagPatch::default(), None)
            .await
            .unwrap_err();
        assert!(matches!(error, StoreError::FlagNotFound), "{error:?}");
    }
}

pub async fn delete_removes_flag_and_its_overrides(store: &dyn FlagStore) {
    let prod = env("production");
    let flag = create(store, &prod, &new_flag("gone", true, 0)).await;
    upsert(
        store,
        &prod,
        "gone",
        &override_for("u1", OverrideType::Include),
    )
    .await;
    let deleted = store.delete_flag(&prod, &key("gone"), None).await.unwrap();
    assert_eq!(deleted.value, flag, "the deleted flag is returned");
    let error = store
        .delete_flag(&prod, &key("gone"), None)
        .await
        .unwrap_err();
    assert!(matches!(error, StoreError::FlagNotFound), "{error:?}");
    assert!(store.user_overrides(&prod, "u1").await.unwrap().is_empty());
    assert_eq!(store.list_overrides(flag.id, 10, 0).await.unwrap().total, 0);
    // Re-created under the same key, it starts without the old overrides.
    let again = create(store, &prod, &new_flag("gone", true, 0)).await;
    assert_eq!(
        store.list_overrides(again.id, 10, 0).await.unwrap().total,
        0
    );
}

pub async fn override_upsert_is_unique_per_user(store: &dyn FlagStore) {
    let flag = create(store, &env("production"), &new_flag("ovr", true, 0)).await;
    let prod = env("production");
    let first = upsert(
        store,
        &prod,
        "ovr",
        &override_for("user-1", OverrideType::Include),
    )
    .await;
    assert_eq!(first.override_type, OverrideType::Include);
    assert_eq!(first.created_by.as_deref(), Some("admin-1"));
    let mut replacement = override_for("user-1", OverrideType::Exclude);
    replacement.reason = Some("beta opt-out".into());
    tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    let second = upsert(store, &prod, "ovr", &replacement).await;
    assert_eq!(second.override_type, OverrideType::Exclude);
    assert_eq!(second.reason.as_deref(), Some("beta opt-out"));
    assert_eq!(
        second.created_at, first.created_at,
        "replacing an override keeps when it was created"
    );
    let page = store.list_overrides(flag.id, 10, 0).await.unwrap();
    assert_eq!(page.total, 1);
    assert_eq!(page.overrides, vec![second]);
}

pub async fn override_delete(store: &dyn FlagStore) {
    let flag = create(store, &env("production"), &new_flag("ovr-del", true, 0)).await;
    let prod = env("production");
    let saved = upsert(
        store,
        &prod,
        "ovr-del",
        &override_for("user-1", OverrideType::Include),
    )
    .await;
    let deleted = store
        .delete_override(&prod, &key("ovr-del"), "user-1", None, None)
        .await
        .unwrap();
    assert_eq!(deleted.value, saved);
    let error = store
        .delete_override(&prod, &key("ovr-del"), "user-1", None, None)
        .await
        .unwrap_err();
    assert!(matches!(error, StoreError::OverrideNotFound), "{error:?}");
    assert_eq!(store.list_overrides(flag.id, 10, 0).await.unwrap().total, 0);
}

pub async fn overrides_page_newest_first_with_total(store: &dyn FlagStore) {
    let flag = create(store, &env("production"), &new_flag("paged", true, 0)).await;
    for i in 0..7 {
        let kind = if i % 2 == 0 {
            OverrideType::Include
        } else {
            OverrideType::Exclude
        };
        upsert(
            store,
            &env("production"),
            "paged",
            &override_for(&format!("user-{i}"), kind),
        )
        .await;
        tokio::time::sleep(std::time::Duration::from_millis(3)).await;
    }
    let first = store.list_overrides(flag.id, 3, 0).await.unwrap();
    assert_eq!(first.total, 7);
    let ids: Vec<_> = first.overrides.iter().map(|o| o.user_id.as_str()).collect();
    assert_eq!(ids, ["user-6", "user-5", "user-4"]);
    let last = store.list_overrides(flag.id, 3, 6).await.unwrap();
    assert_eq!(last.overrides.len(), 1);
    assert_eq!(last.overrides[0].user_id, "user-0");
    assert!(
        store
            .list_overrides(flag.id, 3, 30)
            .await
            .unwrap()
            .overrides
            .is_empty()
    );
}

pub async fn user_overrides_are_per_environment(store: &dyn FlagStore) {
    let (prod, dev) = (env("production"), env("development"));
    create(store, &prod, &new_flag("a", true, 0)).await;
    create(store, &prod, &new_flag("b", true, 0)).await;
    create(store, &dev, &new_flag("a", true, 0)).await;
    upsert(
        store,
        &prod,
        "a",
        &override_for("José 用户", OverrideType::Include),
    )
    .await;
    upsert(
        store,
        &prod,
        "b",
        &override_for("José 用户", OverrideType::Exclude),
    )
    .await;
    upsert(
        store,
        &dev,
        "a",
        &override_for("José 用户", OverrideType::Exclude),
    )
    .await;
    upsert(
        store,
        &prod,
        "a",
        &override_for("someone-else", OverrideType::Exclude),
    )
    .await;
    let overrides = store.user_overrides(&prod, "José 用户").await.unwrap();
    assert_eq!(overrides.len(), 2);
    assert_eq!(overrides["a"], OverrideType::Include);
    assert_eq!(overrides["b"], OverrideType::Exclude);
    assert_eq!(
        store.user_overrides(&dev, "José 用户").await.unwrap()["a"],
        OverrideType::Exclude
    );
    assert!(
        store
            .user_overrides(&prod, "nobody")
            .await
            .unwrap()
            .is_empty()
    );
}

fn admin() -> Actor {
    Actor {
        sub: "admin-sub".into(),
        email: Some("admin@example.com".into()),
    }
}

/// Every write leaves exactly one audit row with its actor, before and after, and one pending
/// invalidation; a write that fails leaves neither (contract §2.7, §3.1).
pub async fn every_write_is_audited_once_with_a_pending_invalidation(store: &dyn FlagStore) {
    let (prod, actor) = (env("production"), admin());
    let created = store
        .create_flag(&prod, &new_flag("audited", true, 100), Some(&actor))
        .await
        .unwrap();
    let patch = FlagPatch {
        enabled: Some(false),
        ..FlagPatch::default()
    };
    let updated = store
        .update_flag(&prod, &key("audited"), &patch, Some(&actor))
        .await
        .unwrap();
    let upserted = store
        .upsert_override(
            &prod,
            &key("audited"),
            &override_for("u1", OverrideType::Exclude),
            Some(&actor),
            None,
        )
        .await
        .unwrap();
    let removed = store
        .delete_override(&prod, &key("audited"), "u1", Some(&actor), None)
        .await
        .unwrap();
    let deleted = store
        .delete_flag(&prod, &key("audited"), Some(&actor))
        .await
        .unwrap();

    // Failed writes: duplicate, missing flag, missing override. None leaves a trace.
    create(store, &prod, &new_flag("other", true, 0)).await;
    let all = AuditFilter::default();
    let before_failures = store.list_audit(&all, 100, 0).await.unwrap().total;
    let pending_before = store.pending_invalidations(100).await.unwrap().len();
    assert!(
        store
            .create_flag(&prod, &new_flag("other", true, 0), Some(&actor))
            .await
            .is_err()
    );
    assert!(
        store
            .update_flag(&prod, &key("audited"), &patch, Some(&actor))
            .await
            .is_err()
    );
    assert!(
        store
            .delete_flag(&prod, &key("audited"), Some(&actor))
            .await
            .is_err()
    );
    assert!(
        store
            .upsert_override(
                &prod,
                &key("audited"),
                &override_for("u1", OverrideType::Include),
                Some(&actor),
                None
            )
            .await
            .is_err()
    );
    assert!(
        store
            .delete_override(&prod, &key("other"), "nobody", Some(&actor), None)
            .await
            .is_err()
    );
    assert_eq!(
        store.list_audit(&all, 100, 0).await.unwrap().total,
        before_failures
    );
    assert_eq!(
        store.pending_invalidations(100).await.unwrap().len(),
        pending_before
    );

    let page = store
        .list_audit(
            &AuditFilter {
                environment: Some("production".into()),
                flag_key: Some("audited".into()),
            },
            100,
            0,
        )
        .await
        .unwrap();
    let actions: Vec<_> = page.entries.iter().map(|e| e.action.as_str()).collect();
    assert_eq!(
        actions,
        [
            "flag.deleted",
            "override.deleted",
            "override.upserted",
            "flag.updated",
            "flag.created"
        ],
        "newest first"
    );
    assert_eq!(page.total, 5);
    for entry in &page.entries {
        assert_eq!(entry.actor.as_ref(), Some(&actor));
        assert_eq!(entry.environment.as_deref(), Some("production"));
        assert_eq!(entry.flag_key.as_deref(), Some("audited"));
    }
    let [deleted_e, removed_e, upserted_e, updated_e, created_e] = &page.entries[..] else {
        panic!("five entries")
    };
    assert_eq!(created_e.before, None);
    assert_eq!(created_e.after.as_ref().unwrap()["enabled"], true);
    assert_eq!(updated_e.before.as_ref().unwrap()["enabled"], true);
    assert_eq!(updated_e.after.as_ref().unwrap()["enabled"], false);
    assert_eq!(upserted_e.before, None);
    assert_eq!(
        upserted_e.after.as_ref().unwrap()["overrideType"],
        "exclude"
    );
    assert_eq!(removed_e.before.as_ref().unwrap()["userId"], "u1");
    assert_eq!(removed_e.after, None);
    assert_eq!(deleted_e.before.as_ref().unwrap()["flagKey"], "audited");
    assert_eq!(deleted_e.after, None);

    // One pending invalidation per write, for its environment, until cleared.
    let ids = [
        created.pending,
        updated.pending,
        upserted.pending,
        removed.pending,
        deleted.pending,
    ];
    let pending = store.pending_invalidations(100).await.unwrap();
    for id in ids {
        let record = pending
            .iter()
            .find(|p| p.id == id)
            .expect("a pending record per write");
        assert_eq!(record.environment, "production");
    }
    store.clear_pending(&ids).await.unwrap();
    let left = store.pending_invalidations(100).await.unwrap();
    assert!(left.iter().all(|p| !ids.contains(&p.id)), "{left:?}");
    assert_eq!(left.len(), pending.len() - ids.len());

    // Paging and the environment filter.
    let second = store.list_audit(&all, 2, 2).await.unwrap();
    assert_eq!(second.entries.len(), 2);
    assert!(second.entries[0].id > second.entries[1].id);
    let none = AuditFilter {
        environment: Some("staging".into()),
        flag_key: None,
    };
    assert_eq!(store.list_audit(&none, 10, 0).await.unwrap().total, 0);
}

/// Without a shared counter, override changes are counted in the audit log inside the write
/// transaction: exact, including removals, and a missing flag is a 404 before it is counted.
pub async fn the_audit_log_counts_override_changes_per_window(store: &dyn FlagStore) {
    let prod = env("production");
    create(store, &prod, &new_flag("limited", true, 0)).await;
    create(store, &prod, &new_flag("free", true, 0)).await;
    let window = AuditWindow {
        limit: 3,
        start: chrono::Utc::now() - chrono::Duration::seconds(5),
        retry_after_secs: 42,
    };
    for user in ["u1", "u2"] {
        store
            .upsert_override(
                &prod,
                &key("limited"),
                &override_for(user, OverrideType::Include),
                None,
                Some(window),
            )
            .await
            .unwrap();
    }
    store
        .delete_override(&prod, &key("limited"), "u1", None, Some(window))
        .await
        .unwrap();
    let error = store
        .upsert_override(
            &prod,
            &key("limited"),
            &override_for("u3", OverrideType::Include),
            None,
            Some(window),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(error, StoreError::RateLimited(l) if l.retry_after_secs == 42),
        "{error:?}"
    );
    let error = store
        .delete_override(&prod, &key("limited"), "u2", None, Some(window))
        .await
        .unwrap_err();
    assert!(
        matches!(error, StoreError::RateLimited(_)),
        "removals are limited too"
    );
    let error = store
        .upsert_override(
            &prod,
            &key("absent"),
            &override_for("u3", OverrideType::Include),
            None,
            Some(window),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(error, StoreError::FlagNotFound),
        "404 before 429: {error:?}"
    );
    store
        .upsert_override(
            &prod,
            &key("free"),
            &override_for("u3", OverrideType::Include),
            None,
            Some(window),
        )
        .await
        .expect("per flag");
    let next_window = AuditWindow {
        start: chrono::Utc::now() + chrono::Duration::seconds(1),
        ..window
    };
    store
        .upsert_override(
            &prod,
            &key("limited"),
            &override_for("u4", OverrideType::Include),
            None,
            Some(next_window),
        )
        .await
        .expect("a new window starts from zero");
}

/// Concurrent writers on one flag are serialised by the flag lock, so the count is exact.
pub async fn concurrent_override_writers_on_one_flag_never_exceed_the_limit(store: &dyn FlagStore) {
    let prod = env("production");
    create(store, &prod, &new_flag("contended", true, 0)).await;
    let window = AuditWindow {
        limit: 5,
        start: chrono::Utc::now() - chrono::Duration::seconds(5),
        retry_after_secs: 60,
    };
    let attempts = (0..12).map(|i| {
        let new = override_for(&format!("user-{i}"), OverrideType::Include);
        let prod = prod.clone();
        async move {
            store
                .upsert_override(&prod, &key("contended"), &new, None, Some(window))
                .await
        }
    });
    let results = futures_util::future::join_all(attempts).await;
    let admitted = results.iter().filter(|r| r.is_ok()).count();
    let limited = results
        .iter()
        .filter(|r| matches!(r, Err(StoreError::RateLimited(_))))
        .count();
    assert_eq!((admitted, limited), (5, 7), "{results:?}");
}

/// Generates one `#[tokio::test]` per contract case for the store built by `$factory`.
#[macro_export]
macro_rules! store_contract_tests {
    ($factory:path) => {
        $crate::store_contract_tests!(@cases $factory;
            migrations_are_idempotent,
            create_get_and_list_sorted,
            timestamps_round_trip_exactly,
            duplicate_key_is_already_exists_per_environment,
            partial_update_bumps_updated_at,
            delete_removes_flag_and_its_overrides,
            override_upsert_is_unique_per_user,
            override_delete,
            overrides_page_newest_first_with_total,
            user_overrides_are_per_environment,
            every_write_is_audited_once_with_a_pending_invalidation,
            the_audit_log_counts_override_changes_per_window,
            concurrent_override_writers_on_one_flag_never_exceed_the_limit);
    };
    (@cases $factory:path; $($case:ident),*) => {
        $(
            #[tokio::test]
            async fn $case() {
                let store = $factory().await;
                common::store_contract::$case(&*store).await;
            }
        )*
    };
}
