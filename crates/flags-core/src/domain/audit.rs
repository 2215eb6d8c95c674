//! The audit log's vocabulary (contract §2.7): who changed what, before and after.

use super::Timestamp;
use serde::Serialize;
use serde_json::Value;

/// The admin behind a change, from a verified token; `None` in an entry means the system.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct Actor {
    pub sub: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub email: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuditAction {
    FlagCreated,
    FlagUpdated,
    FlagDeleted,
    OverrideUpserted,
    OverrideDeleted,
    ScheduleCreated,
    ScheduleCancelled,
    ScheduleApplied,
    ScheduleFailed,
    CacheInvalidated,
}

impl AuditAction {
    pub const ALL: [AuditAction; 10] = [
        Self::FlagCreated,
        Self::FlagUpdated,
        Self::FlagDeleted,
        Self::OverrideUpserted,
        Self::OverrideDeleted,
        Self::ScheduleCreated,
        Self::ScheduleCancelled,
        Self::ScheduleApplied,
        Self::ScheduleFailed,
        Self::CacheInvalidated,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::FlagCreated => "flag.created",
            Self::FlagUpdated => "flag.updated",
            Self::FlagDeleted => "flag.deleted",
            Self::OverrideUpserted => "override.upserted",
            Self::OverrideDeleted => "override.deleted",
            Self::ScheduleCreated => "schedule.created",
            Self::ScheduleCancelled => "schedule.cancelled",
            Self::ScheduleApplied => "schedule.applied",
            Self::ScheduleFailed => "schedule.failed",
            Self::CacheInvalidated => "cache.invalidated",
        }
    }

    pub fn parse(value: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|a| a.as_str() == value)
    }
}

/// One row of the audit log as the API shows it.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct AuditEntry {
    pub id: i64,
    pub at: Timestamp,
    pub action: String,
    pub environment: Option<String>,
    #[serde(rename = "flagKey")]
    pub flag_key: Option<String>,
    pub actor: Option<Actor>,
    /// The flag, override or schedule before the change (`null` when it did not exist).
    #[schema(value_type = Option<Object>)]
    pub before: Option<Value>,
    #[schema(value_type = Option<Object>)]
    pub after: Option<Value>,
}

/// Which entries to list; `None` fields do not filter.
#[derive(Debug, Clone, Default)]
pub struct AuditFilter {
    pub environment: Option<String>,
    pub flag_key: Option<String>,
}

/// One page of the audit log, newest first, with the total over all pages.
#[derive(Debug, Clone, PartialEq)]
pub struct AuditPage {
    pub entries: Vec<AuditEntry>,
    pub total: u64,
}
