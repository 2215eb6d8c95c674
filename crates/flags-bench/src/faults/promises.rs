//! The contract's promises under faults (AC6, §3), judged on the runs the `faults` benchmark
//! measures, shorter and with fewer clients: for every fault, no read and no admin write fails,
//! and the cache is used again after the repair.
//!
//! One test runs the faults one after another: the cache-hit counter reads the service's own
//! log events, which are process-wide. It is a unit test of this crate rather than a file in
//! `tests/`, because Cargo builds every binary of a package for its integration tests, and the
//! benchmarks need not be built to judge the faults.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use super::{FAULTS, Fault, Outcome, Plan, Setup};
use std::time::Duration;

fn database_url() -> String {
    std::env::var("DATABASE_URL")
        .ok()
        .filter(|u| u.starts_with("postgres"))
        .unwrap_or_else(|| "postgres://postgres@127.0.0.1:5432/test".to_owned())
}

/// The promises of one fault, as messages for the ones broken.
fn broken_promises(outcome: &Outcome) -> Vec<String> {
    let name = outcome.fault.name();
    let mut broken = Vec::new();
    if outcome.during.requests == 0 && outcome.fault != Fault::RestartRedis {
        broken.push(format!("{name}: no read ran during the fault"));
    }
    if outcome.reads.errors > 0 {
        broken.push(format!("{name}: {} reads failed", outcome.reads.errors));
    }
    if outcome.writes.errors > 0 {
        broken.push(format!(
            "{name}: {} admin writes failed",
            outcome.writes.errors
        ));
    }
    if outcome.cache_back_after.is_none() {
        broken.push(format!("{name}: the cache was not used again"));
    }
    broken
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_request_fails_and_the_cache_comes_back_under_every_fault() {
    let keys = std::env::temp_dir().join(flags_testkit::unique("flags-fault-keys-"));
    let schema = flags_testkit::unique("faults_");
    let setup = Setup::new(&database_url(), &schema, &keys).await.unwrap();
    let plan = Plan {
        clients: 4,
        warm_up: Duration::from_secs(1),
        before: Duration::from_secs(1),
        fault: Duration::from_secs(2),
        // The slowest recovery measured is the 1,500 ms delay's (about 2 s): the breaker's
        // probe has to outlast one delayed reply.
        recovery: Duration::from_secs(6),
        write_every: Duration::from_millis(250),
    };
    let mut broken = Vec::new();
    for fault in FAULTS {
        let outcome = super::run(&setup, plan, fault).await.unwrap();
        broken.extend(broken_promises(&outcome));
    }
    assert!(broken.is_empty(), "{broken:#?}");
}
