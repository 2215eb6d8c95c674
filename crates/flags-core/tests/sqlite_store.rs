//! The storage contract against SQLite (a fresh database file per test).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::bool_assert_comparison
)]
mod common;

store_contract_tests!(common::sqlite_store);
