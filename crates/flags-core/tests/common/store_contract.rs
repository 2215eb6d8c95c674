//! The storage contract, run unchanged against every adapter (see `store_contract_tests!`).
#![allow(dead_code, clippy::unwrap_used)]

use super::{env, key, new_flag};
use flags_core::domain::{FlagPatch, NewOverride, OverrideType, Rollout, UserId};
use flags_core::store::{FlagStore, StoreError};

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
    for name in ["b-flag", "a-flag", "c-flag"] {
        store
            .create_flag(&prod, &new_flag(name, true, 25))
            .await
            .unwrap();
    }
    store
        .create_flag(&env("development"), &new_flag("z-dev-only", false, 0))
        .await
        .unwrap();
    let keys: Vec<_> = store
        .list_flags(&prod)
        .await
        .unwrap()
        .into_iter()
        .map(|f| f.flag_key)
        .collect();
    assert_eq!(keys, ["a-flag", "b-flag", "c-flag"]);
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
    let created = store
        .create_flag(&env("production"), &new_flag("ts", false, 0))
        .await
        .unwrap();
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
    store
        .create_flag(&env("production"), &new_flag("dup", false, 0))
        .await
        .unwrap();
    let error = store
        .create_flag(&env("production"), &new_flag("dup", true, 5))
        .await
        .unwrap_err();
    assert!(matches!(error, StoreError::AlreadyExists), "{error:?}");
    store
        .create_flag(&env("development"), &new_flag("dup", false, 0))
        .await
        .unwrap();
}

pub async fn partial_update_bumps_updated_at(store: &dyn FlagStore) {
    let prod = env("production");
    let mut new = new_flag("upd", false, 10);
    new.description = Some("first".into());
    let created = store.create_flag(&prod, &new).await.unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(5)).await;

    let patch = FlagPatch {
        rollout: Rollout::new(60),
        ..FlagPatch::default()
    };
    let updated = store
        .update_flag(&prod, &key("upd"), &patch)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(updated.rollout_percentage, 60);
    assert!(!updated.enabled, "unset fields are left alone");
    assert_eq!(updated.description.as_deref(), Some("first"));
    assert_eq!(updated.created_at, created.created_at);
    assert!(updated.updated_at > created.updated_at);

    tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    let touched = store
        .update_flag(&prod, &key("upd"), &FlagPatch::default())
        .await
        .unwrap()
        .unwrap();
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
    let cleared = store
        .update_flag(&prod, &key("upd"), &cleared)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(cleared.description, None);
    assert!(cleared.enabled);

    assert!(
        store
            .update_flag(&prod, &key("missing"), &FlagPatch::default())
            .await
            .unwrap()
            .is_none()
    );
    assert!(
        store
            .update_flag(&env("development"), &key("upd"), &FlagPatch::default())
            .await
            .unwrap()
            .is_none()
    );
}

pub async fn delete_removes_flag_and_its_overrides(store: &dyn FlagStore) {
    let prod = env("production");
    let flag = store
        .create_flag(&prod, &new_flag("gone", true, 0))
        .await
        .unwrap();
    store
        .upsert_override(flag.id, &override_for("u1", OverrideType::Include))
        .await
        .unwrap();
    assert!(store.delete_flag(&prod, &key("gone")).await.unwrap());
    assert!(!store.delete_flag(&prod, &key("gone")).await.unwrap());
    assert!(store.user_overrides(&prod, "u1").await.unwrap().is_empty());
    assert_eq!(store.list_overrides(flag.id, 10, 0).await.unwrap().total, 0);
    // Re-created under the same key, it starts without the old overrides.
    let again = store
        .create_flag(&prod, &new_flag("gone", true, 0))
        .await
        .unwrap();
    assert_eq!(
        store.list_overrides(again.id, 10, 0).await.unwrap().total,
        0
    );
}

pub async fn override_upsert_is_unique_per_user(store: &dyn FlagStore) {
    let flag = store
        .create_flag(&env("production"), &new_flag("ovr", true, 0))
        .await
        .unwrap();
    let first = store
        .upsert_override(flag.id, &override_for("user-1", OverrideType::Include))
        .await
        .unwrap();
    assert_eq!(first.override_type, OverrideType::Include);
    assert_eq!(first.created_by.as_deref(), Some("admin-1"));
    let mut replacement = override_for("user-1", OverrideType::Exclude);
    replacement.reason = Some("beta opt-out".into());
    let second = store.upsert_override(flag.id, &replacement).await.unwrap();
    assert_eq!(second.override_type, OverrideType::Exclude);
    assert_eq!(second.reason.as_deref(), Some("beta opt-out"));
    let page = store.list_overrides(flag.id, 10, 0).await.unwrap();
    assert_eq!(page.total, 1);
    assert_eq!(page.overrides, vec![second]);
}

pub async fn override_delete(store: &dyn FlagStore) {
    let flag = store
        .create_flag(&env("production"), &new_flag("ovr-del", true, 0))
        .await
        .unwrap();
    store
        .upsert_override(flag.id, &override_for("user-1", OverrideType::Include))
        .await
        .unwrap();
    assert!(store.delete_override(flag.id, "user-1").await.unwrap());
    assert!(!store.delete_override(flag.id, "user-1").await.unwrap());
}

pub async fn overrides_page_newest_first_with_total(store: &dyn FlagStore) {
    let flag = store
        .create_flag(&env("production"), &new_flag("paged", true, 0))
        .await
        .unwrap();
    for i in 0..7 {
        let kind = if i % 2 == 0 {
            OverrideType::Include
        } else {
            OverrideType::Exclude
        };
        store
            .upsert_override(flag.id, &override_for(&format!("user-{i}"), kind))
            .await
            .unwrap();
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
    let a = store
        .create_flag(&prod, &new_flag("a", true, 0))
        .await
        .unwrap();
    let b = store
        .create_flag(&prod, &new_flag("b", true, 0))
        .await
        .unwrap();
    let dev_a = store
        .create_flag(&dev, &new_flag("a", true, 0))
        .await
        .unwrap();
    store
        .upsert_override(a.id, &override_for("José 用户", OverrideType::Include))
        .await
        .unwrap();
    store
        .upsert_override(b.id, &override_for("José 用户", OverrideType::Exclude))
        .await
        .unwrap();
    store
        .upsert_override(dev_a.id, &override_for("José 用户", OverrideType::Exclude))
        .await
        .unwrap();
    store
        .upsert_override(a.id, &override_for("someone-else", OverrideType::Exclude))
        .await
        .unwrap();
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
            user_overrides_are_per_environment);
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
