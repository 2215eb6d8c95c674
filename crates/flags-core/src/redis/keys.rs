//! Every Redis key this service reads or writes, in one place.
//!
//! `feature_flags:*` is cache data (contract §3, the original's key names) and may be dropped at
//! any time. The counters live outside that namespace on purpose: invalidate-all must not reset
//! them, or a reader holding an old generation could see it "match" again.

use crate::domain::{Environment, FlagKey};

/// Everything under this prefix is cache data.
pub const CACHE_PREFIX: &str = "feature_flags:";

/// The environment's flag snapshot.
pub fn snapshot_key(env: &Environment) -> String {
    format!("{CACHE_PREFIX}{env}")
}

/// One user's overrides in the environment.
pub fn overrides_key(env: &Environment, user_id: &str) -> String {
    format!("{CACHE_PREFIX}{env}:overrides:{user_id}")
}

/// The list of environments that have flags in the database `scope` names (see
/// `FlagStore::cache_scope`). `_` cannot start an environment name, so no snapshot can take it.
pub fn environments_key(scope: &str) -> String {
    format!("{CACHE_PREFIX}_environments:{scope}")
}

/// Bumped by every write that may change which environments exist (a flag created or deleted).
pub fn environments_generation_key(scope: &str) -> String {
    format!("feature_flags_generation:_environments:{scope}")
}

/// Bumped by every write to the environment: a fill lands only under the generation its reader saw.
pub fn generation_key(env: &Environment) -> String {
    format!("feature_flags_generation:{env}")
}

/// Bumped when every user's cached overrides of the environment must go (a flag deleted, a
/// sweep): each cached override value carries the epoch it was filled under.
pub fn overrides_epoch_key(env: &Environment) -> String {
    format!("feature_flags_overrides_epoch:{env}")
}

/// The override-change counter of one flag in one rate-limit window (contract §2.5).
pub fn rate_limit_key(env: &Environment, flag: &FlagKey, window_index: u64) -> String {
    format!("feature_flags_ratelimit:{env}:{flag}:{window_index}")
}
