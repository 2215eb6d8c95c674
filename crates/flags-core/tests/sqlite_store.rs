//! The storage contract against SQLite (a fresh database file per test).
mod common;

store_contract_tests!(common::sqlite_store);
