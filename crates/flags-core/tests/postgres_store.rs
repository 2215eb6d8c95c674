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
