//! The storage contract against a real PostgreSQL server (a fresh schema per test).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::bool_assert_comparison
)]
mod common;

store_contract_tests!(common::postgres_store);

#[tokio::test]
async fn database_constraints_back_the_validation() {
    let store = common::postgres_store().await;
    let bad_rollout = sqlx::query(
        "INSERT INTO feature_flags (id, flag_key, environment, rollout_percentage) VALUES ($1, 'x', 'production', 101)",
    )
    .bind(uuid::Uuid::new_v4())
    .execute(store.pool())
    .await;
    assert!(
        bad_rollout.is_err(),
        "rollout_percentage is checked by the database too"
    );
    let column_type: String = sqlx::query_scalar(
        "SELECT data_type FROM information_schema.columns WHERE table_schema = current_schema() \
         AND table_name = 'feature_flags' AND column_name = 'created_at'",
    )
    .fetch_one(store.pool())
    .await
    .unwrap();
    assert_eq!(column_type, "timestamp with time zone");
}

/// A database created with a linguistic default collation (ICU `en-US`, as many managed
/// PostgreSQL instances are) would sort `a` before `B`; the list stays in byte order.
#[tokio::test]
async fn flags_list_in_byte_order_under_a_linguistic_collation() {
    use flags_core::store::FlagStore;
    let store = common::postgres_store().await;
    sqlx::query(
        "ALTER TABLE feature_flags ALTER COLUMN flag_key TYPE varchar(100) COLLATE \"en-US-x-icu\"",
    )
    .execute(store.pool())
    .await
    .unwrap();
    let prod = common::env("production");
    for name in ["a-flag", "B-flag", "c-flag"] {
        store
            .create_flag(&prod, &common::new_flag(name, false, 0), None)
            .await
            .unwrap();
    }
    let keys: Vec<_> = store
        .list_flags(&prod)
        .await
        .unwrap()
        .into_iter()
        .map(|f| f.flag_key.to_string())
        .collect();
    assert_eq!(keys, ["B-flag", "a-flag", "c-flag"]);
}
