//! Evidence for the service's speed and robustness, produced by commands anyone can rerun:
//!
//! - `loadbench`: throughput and latency percentiles at 1, 10 and 50 concurrent clients for each
//!   cache and database combination, with Redis and PostgreSQL connection counts;
//! - `faults`: the service under continuous load while Redis is killed, restarted, frozen,
//!   demoted to a replica, slowed down or filled with garbage, and while PostgreSQL is cut off
//!   (the contract's verdict on the same runs is the test `src/faults/promises.rs`);
//! - `coldstart`: a release Lambda binary under the Lambda runtime emulator, from process start
//!   to its first response, with its size and peak memory;
//! - `lambdawarm`: warm invocations of release Lambda binaries (this version and an earlier one)
//!   under the same emulator, timed by the handler itself;
//! - `benches/evaluation.rs`: criterion micro-benchmarks of evaluation and snapshot decoding.
//!
//! Requests go through the same handler function the Lambda binaries and the local server call
//! (`flags_api::handlers::handle`), so token verification, validation, the cache and the
//! database are all on the measured path; only the HTTP hop is not.

pub mod cache_events;
pub mod emulator;
pub mod faults;
pub mod fixtures;
pub mod load;
pub mod stats;
