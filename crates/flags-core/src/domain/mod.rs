//! The feature-flag domain: validated names, flags, overrides and evaluation. No I/O here.

mod audit;
mod evaluation;
mod names;
mod schedule;
mod time;

pub use audit::{Actor, AuditAction, AuditEntry, AuditFilter, AuditPage};
pub use evaluation::{
    EvaluationContext, Evaluations, Reason, bucket, evaluate, evaluate_with_reason,
};
pub use names::{Environment, FlagKey, NameError, UserId, has_control_chars};
pub use schedule::{
    APPLY_BATCH, ApplyOutcome, ApplyReport, DEFAULT_MAX_RETRIES, NewSchedule, RETRY_JITTER_MAX,
    Schedule, ScheduleStatus, ScheduleUpdates, random_jitter, retry_at,
};
pub use time::Timestamp;

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use uuid::Uuid;

/// Longest accepted `description` and override `reason`, in characters (contract §2.2).
pub const MAX_DESCRIPTION_CHARS: usize = 500;

/// A flag as stored and as cached in the snapshot (contract §3 field names).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Flag {
    pub id: Uuid,
    pub flag_key: String,
    pub environment: String,
    pub enabled: bool,
    pub rollout_percentage: i32,
    pub description: Option<String>,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
}

/// A validated rollout percentage, 0..=100.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rollout(u8);

impl Rollout {
    pub fn new(value: i64) -> Option<Self> {
        u8::try_from(value).ok().filter(|v| *v <= 100).map(Self)
    }

    pub fn get(self) -> i32 {
        i32::from(self.0)
    }
}

/// Fields of a new flag, already validated by the caller (HTTP layer or CLI).
#[derive(Debug, Clone)]
pub struct NewFlag {
    pub flag_key: FlagKey,
    pub enabled: bool,
    pub rollout: Rollout,
    pub description: Option<String>,
}

/// A partial update: `None` leaves the field as it is. `description: Some(None)` clears it.
#[derive(Debug, Clone, Default)]
pub struct FlagPatch {
    pub enabled: Option<bool>,
    pub rollout: Option<Rollout>,
    pub description: Option<Option<String>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum OverrideType {
    Include,
    Exclude,
}

impl OverrideType {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Include => "include",
            Self::Exclude => "exclude",
        }
    }

    pub fn parse(value: &str) -> Option<Self> {
        match value {
            "include" => Some(Self::Include),
            "exclude" => Some(Self::Exclude),
            _ => None,
        }
    }
}

/// A per-user override of one flag: `include` turns it on for the user, `exclude` off.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct UserOverride {
    pub user_id: String,
    pub override_type: OverrideType,
    pub reason: Option<String>,
    pub created_by: Option<String>,
    pub created_at: Timestamp,
}

/// The fields of an override upsert, already validated.
#[derive(Debug, Clone)]
pub struct NewOverride {
    pub user_id: UserId,
    pub override_type: OverrideType,
    pub reason: Option<String>,
    pub created_by: Option<String>,
}

/// One page of a flag's overrides, newest first, with the total over all pages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OverridePage {
    pub overrides: Vec<UserOverride>,
    pub total: u64,
}

/// All flags of one environment, by key: what the cache snapshot holds.
pub type FlagSet = BTreeMap<String, Flag>;

/// One user's overrides in one environment, by flag key.
pub type UserOverrides = BTreeMap<String, OverrideType>;
