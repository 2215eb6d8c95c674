//! The JSON bodies of successful responses (contract §2), as types: field names and shapes are
//! declared once here instead of in `json!` literals spread over the handlers.

use flags_core::domain::{AuditEntry, Flag, OverrideType, Timestamp, UserOverride};
use flags_core::service::{HealthReport, PageRequest, RedisStatus};
use serde::Serialize;
use utoipa::ToSchema;

/// "Flag detail": what create, update and `GET /config/flags/{flagKey}` answer.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct FlagDetail<'a> {
    pub key: &'a str,
    pub enabled: bool,
    #[schema(minimum = 0, maximum = 100)]
    pub rollout_percentage: i32,
    pub description: Option<&'a str>,
}

impl<'a> From<&'a Flag> for FlagDetail<'a> {
    fn from(flag: &'a Flag) -> Self {
        Self {
            key: &flag.flag_key,
            enabled: flag.enabled,
            rollout_percentage: flag.rollout_percentage,
            description: flag.description.as_deref(),
        }
    }
}

/// One item of `GET /admin/flags`: the detail and its timestamps.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct FlagListItem<'a> {
    #[serde(flatten)]
    pub detail: FlagDetail<'a>,
    pub created_at: &'a Timestamp,
    pub updated_at: &'a Timestamp,
}

impl<'a> From<&'a Flag> for FlagListItem<'a> {
    fn from(flag: &'a Flag) -> Self {
        Self {
            detail: FlagDetail::from(flag),
            created_at: &flag.created_at,
            updated_at: &flag.updated_at,
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Pagination {
    pub page: u32,
    pub page_size: u32,
    pub total: u64,
}

impl Pagination {
    pub fn new(page: PageRequest, total: u64) -> Self {
        Self {
            page: page.page,
            page_size: page.page_size,
            total,
        }
    }
}

/// `GET /admin/flags/{flagKey}/users`: one page of overrides, split by type. An override is
/// shown as `UserOverride` serialises (`userId`, `overrideType`, `reason`, `createdBy`,
/// `createdAt`), as the upsert answers it.
#[derive(Debug, Serialize, ToSchema)]
pub struct OverridesPage<'a> {
    pub includes: Vec<&'a UserOverride>,
    pub excludes: Vec<&'a UserOverride>,
    pub pagination: Pagination,
}

impl<'a> OverridesPage<'a> {
    pub fn new(overrides: &'a [UserOverride], pagination: Pagination) -> Self {
        let of_type = |kind: OverrideType| {
            overrides
                .iter()
                .filter(|o| o.override_type == kind)
                .collect()
        };
        Self {
            includes: of_type(OverrideType::Include),
            excludes: of_type(OverrideType::Exclude),
            pagination,
        }
    }
}

/// `GET /admin/audit`.
#[derive(Debug, Serialize, ToSchema)]
pub struct AuditPageBody<'a> {
    pub items: &'a [AuditEntry],
    pub pagination: Pagination,
}

/// `POST /admin/cache/invalidate`: `complete` is false when Redis stopped answering part-way;
/// the count is still exact.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct CacheInvalidated {
    pub invalidated_keys: u64,
    pub complete: bool,
}

/// `GET /health`.
#[derive(Debug, Serialize, ToSchema)]
pub struct Health {
    #[schema(pattern = "^(ok|degraded)$")]
    pub status: &'static str,
    #[schema(pattern = "^(redis|memory|none)$")]
    pub cache: &'static str,
    #[schema(pattern = "^(up|down|disabled)$")]
    pub redis: &'static str,
    #[schema(pattern = "^(up|down)$")]
    pub database: &'static str,
    /// Whether admin tokens can be verified: the signing keys are loaded (`up`), cannot be
    /// fetched (`down`: every admin request fails until they can), or no verifier is configured.
    #[schema(pattern = "^(up|down|disabled)$")]
    pub auth: &'static str,
}

/// Whether tokens can be verified.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthStatus {
    /// The verifier holds its signing keys.
    Up,
    /// The verifier cannot fetch its signing keys.
    Down,
    /// No verifier is configured.
    Disabled,
}

impl Health {
    pub fn new(report: HealthReport, auth: AuthStatus) -> Self {
        Self {
            status: if report.is_ok() && auth != AuthStatus::Down {
                "ok"
            } else {
                "degraded"
            },
            cache: report.cache.map_or("none", |kind| kind.as_str()),
            redis: match report.redis {
                RedisStatus::Up => "up",
                RedisStatus::Down => "down",
                RedisStatus::Disabled => "disabled",
            },
            database: if report.database_up { "up" } else { "down" },
            auth: match auth {
                AuthStatus::Up => "up",
                AuthStatus::Down => "down",
                AuthStatus::Disabled => "disabled",
            },
        }
    }
}
