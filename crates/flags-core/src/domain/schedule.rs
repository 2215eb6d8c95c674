//! Scheduled flag changes (contract §2.6): `updates` applied to a flag at `scheduledAt`, with a
//! bounded retry after a failed attempt.

use super::{FlagPatch, Rollout, Timestamp};
use chrono::TimeDelta;
use serde::Serialize;
use serde_json::{Map, Value};
use uuid::Uuid;

/// Retries after the first attempt unless a schedule says otherwise: 3 means 4 attempts.
pub const DEFAULT_MAX_RETRIES: u32 = 3;
/// Schedules one applier pass takes on at most; the next pass takes the rest.
pub const APPLY_BATCH: u32 = 100;
/// The random delay added to every retry, so that failures do not retry in lockstep.
pub const RETRY_JITTER_MAX: TimeDelta = TimeDelta::seconds(30);

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum ScheduleStatus {
    /// Waiting for its time, or for a retry.
    Pending,
    Applied,
    /// Gave up: the flag is gone, or every attempt failed.
    Failed,
    Cancelled,
}

impl ScheduleStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Applied => "applied",
            Self::Failed => "failed",
            Self::Cancelled => "cancelled",
        }
    }

    pub fn parse(value: &str) -> Option<Self> {
        [Self::Pending, Self::Applied, Self::Failed, Self::Cancelled]
            .into_iter()
            .find(|s| s.as_str() == value)
    }
}

/// What a schedule changes: a subset of a flag update, at least one field set.
/// In the API (and the OpenAPI document) `{"enabled"?, "rolloutPercentage"?}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, utoipa::ToSchema)]
pub struct ScheduleUpdates {
    #[schema(value_type = bool, required = false)]
    pub enabled: Option<bool>,
    #[schema(rename = "rolloutPercentage", value_type = i32, minimum = 0, maximum = 100, required = false)]
    pub rollout: Option<Rollout>,
}

impl ScheduleUpdates {
    pub fn is_empty(&self) -> bool {
        self.enabled.is_none() && self.rollout.is_none()
    }

    pub fn as_patch(&self) -> FlagPatch {
        FlagPatch {
            enabled: self.enabled,
            rollout: self.rollout,
            description: None,
        }
    }

    /// `{"enabled"?, "rolloutPercentage"?}`: only the fields it sets.
    pub fn to_json(&self) -> Value {
        let mut map = Map::new();
        if let Some(enabled) = self.enabled {
            map.insert("enabled".into(), Value::Bool(enabled));
        }
        if let Some(rollout) = self.rollout {
            map.insert("rolloutPercentage".into(), Value::from(rollout.get()));
        }
        Value::Object(map)
    }

    /// Reads what [`Self::to_json`] wrote; `None` for anything else.
    pub fn from_json(value: &Value) -> Option<Self> {
        let map = value.as_object()?;
        let enabled = match map.get("enabled") {
            None => None,
            Some(v) => Some(v.as_bool()?),
        };
        let rollout = match map.get("rolloutPercentage") {
            None => None,
            Some(v) => Some(Rollout::new(v.as_i64()?)?),
        };
        let updates = Self { enabled, rollout };
        (!updates.is_empty()
            && map.len() == usize::from(enabled.is_some()) + usize::from(rollout.is_some()))
        .then_some(updates)
    }
}

/// A scheduled change of a flag, as stored and as the API shows it.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Schedule {
    #[schema(value_type = String, format = "uuid")]
    pub id: Uuid,
    pub flag_key: String,
    #[serde(skip)]
    pub flag_id: Uuid,
    #[serde(skip)]
    pub environment: String,
    pub scheduled_at: Timestamp,
    pub status: ScheduleStatus,
    #[serde(serialize_with = "serialize_updates")]
    pub updates: ScheduleUpdates,
    pub applied_at: Option<Timestamp>,
    pub error_message: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub created_by: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cancelled_by: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cancelled_at: Option<Timestamp>,
    pub created_at: Timestamp,
    /// Failed attempts so far.
    #[serde(skip)]
    pub retry_count: u32,
    /// Retries allowed after the first attempt.
    #[serde(skip)]
    pub max_retries: u32,
    /// When the next attempt is due, while waiting for a retry.
    #[serde(skip)]
    pub next_retry_at: Option<Timestamp>,
}

fn serialize_updates<S: serde::Serializer>(
    updates: &ScheduleUpdates,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    updates.to_json().serialize(serializer)
}

impl Schedule {
    /// When the next attempt is due: the retry time while waiting for one, else `scheduledAt`.
    pub fn due_at(&self) -> Timestamp {
        self.next_retry_at.unwrap_or(self.scheduled_at)
    }
}

/// A schedule to create, already validated (`scheduled_at` in the future, updates not empty).
#[derive(Debug, Clone)]
pub struct NewSchedule {
    pub scheduled_at: Timestamp,
    pub updates: ScheduleUpdates,
    pub max_retries: u32,
}

/// When attempt `failures + 1` is due after `failures` failed attempts, the last one at `now`:
/// 2, 4, 8 … minutes later, plus `jitter` (0..=30 s, drawn by the caller).
pub fn retry_at(now: Timestamp, failures: u32, jitter: TimeDelta) -> Timestamp {
    let minutes = 1_i64 << failures.clamp(1, 20);
    Timestamp::from_datetime(now.as_datetime() + TimeDelta::minutes(minutes) + jitter)
}

/// A jitter in `0..=RETRY_JITTER_MAX`, millisecond resolution.
pub fn random_jitter() -> TimeDelta {
    use rand::Rng;
    TimeDelta::milliseconds(rand::rng().random_range(0..=RETRY_JITTER_MAX.num_milliseconds()))
}

/// What happened to one schedule in an applier pass.
#[derive(Debug, Clone, PartialEq)]
pub enum ApplyOutcome {
    /// The flag was updated; the schedule is `applied`.
    Applied { schedule: Schedule },
    /// The attempt failed and another is due at `next_attempt`.
    RetryScheduled {
        schedule: Schedule,
        next_attempt: Timestamp,
    },
    /// The flag is gone or no retry is left; the schedule is `failed`.
    Failed { schedule: Schedule },
}

/// What one applier pass did (contract §2.6), as the scheduled function returns it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ApplyReport {
    /// Schedules attempted (applied, failed, or waiting for a retry now).
    pub processed: u64,
    pub applied: u64,
    /// Schedules that failed for good in this pass.
    pub failed: u64,
    pub duration_ms: u64,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn retries_wait_two_four_eight_minutes_plus_jitter() {
        let now = Timestamp::parse("2030-01-01T09:00:00.000Z").unwrap();
        let at =
            |failures, jitter_s| retry_at(now, failures, TimeDelta::seconds(jitter_s)).to_iso();
        assert_eq!(at(1, 0), "2030-01-01T09:02:00.000Z");
        assert_eq!(at(2, 30), "2030-01-01T09:04:30.000Z");
        assert_eq!(at(3, 7), "2030-01-01T09:08:07.000Z");
        for _ in 0..100 {
            let jitter = random_jitter();
            assert!(jitter >= TimeDelta::zero() && jitter <= RETRY_JITTER_MAX);
        }
    }

    #[test]
    fn updates_round_trip_through_json() {
        let updates = ScheduleUpdates {
            enabled: Some(true),
            rollout: Rollout::new(50),
        };
        let value = updates.to_json();
        assert_eq!(value, json!({"enabled": true, "rolloutPercentage": 50}));
        assert_eq!(ScheduleUpdates::from_json(&value), Some(updates));
        assert_eq!(ScheduleUpdates::from_json(&json!({})), None);
        assert_eq!(
            ScheduleUpdates::from_json(&json!({"rolloutPercentage": 101})),
            None
        );
        assert_eq!(
            ScheduleUpdates::from_json(&json!({"enabled": true, "x": 1})),
            None
        );
    }
}
