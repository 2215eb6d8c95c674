//! One function per route. [`handle`] answers in the contract's order: 413 for an oversized
//! body, then on admin routes 401 → 403 (the token, checked once here), then each route's own
//! 400 → 404 → 429 → change. Errors become responses in [`ApiError::into_response`]; success
//! bodies are the types of `bodies.rs`.

use crate::api::{ApiError, ApiRequest, ApiResponse, MAX_BODY_BYTES, ValidationErrors};
use crate::auth::{Caller, optional_caller, require_admin};
use crate::bodies::{
    AuditPageBody, AuthStatus, CacheInvalidated, FlagDetail, FlagListItem, Health, OverridesPage,
    Pagination,
};
use crate::context::AppContext;
use crate::ofrep;
use crate::openapi::{
    AuditQuery, CreateFlagRequest, CreateScheduleRequest, EnvironmentQuery, ErrorBody, FlagPath,
    PageQuery, UpdateFlagRequest, UpsertOverrideRequest, ValidationErrorBody,
};
use crate::routes::Route;
use crate::validation::{
    Fields, environment, flag_target, json_object, optional_query, page_request, user_id_param,
    utc_timestamp, validated,
};
use flags_core::domain::{
    AuditFilter, DEFAULT_MAX_RETRIES, Environment, FlagKey, FlagPatch, MAX_DESCRIPTION_CHARS,
    NewFlag, NewOverride, NewSchedule, OverrideType, Rollout, Schedule, ScheduleUpdates, Timestamp,
    UserId, UserOverride,
};
use http::StatusCode;
use serde_json::{Value, json};
use std::time::Instant;
use uuid::Uuid;

/// Handles one request for one route; never fails (errors are responses).
pub async fn handle(ctx: &AppContext, route: Route, request: ApiRequest) -> ApiResponse {
    let started = Instant::now();
    let response = answer(ctx, route, &request)
        .await
        .unwrap_or_else(ApiError::into_response);
    tracing::info!(
        route = route.function_name(),
        status = response.status.as_u16(),
        // The handler's own time, without the runtime's: what the code costs per request.
        duration_us = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX),
        "request handled"
    );
    response
}

async fn answer(
    ctx: &AppContext,
    route: Route,
    request: &ApiRequest,
) -> Result<ApiResponse, ApiError> {
    // Before anything else, on every route, as the local server's body limit answers it.
    if request.body.len() > MAX_BODY_BYTES {
        return Err(ApiError::PayloadTooLarge);
    }
    if !route.is_admin() {
        return match route {
            Route::GetFlags => get_flags(ctx, request).await,
            Route::GetFlag => get_flag(ctx, request).await,
            Route::Health => Ok(health(ctx).await),
            Route::OfrepEvaluateFlag => ofrep::evaluate_flag(ctx, request).await,
            Route::OfrepEvaluateFlags => ofrep::evaluate_flags(ctx, request).await,
            Route::OpenApi => Ok(openapi_document()),
            admin_route => Err(ApiError::internal(format!(
                "{admin_route:?} reached the public dispatch"
            ))),
        };
    }
    let admin = &require_admin(ctx.verifier.as_ref(), request).await?;
    match route {
        Route::AdminListFlags => admin_list_flags(ctx, request).await,
        Route::AdminCreateFlag => admin_create_flag(ctx, request, admin).await,
        Route::AdminUpdateFlag => admin_update_flag(ctx, request, admin).await,
        Route::AdminDeleteFlag => admin_delete_flag(ctx, request, admin).await,
        Route::AdminUpsertOverride => admin_upsert_override(ctx, request, admin).await,
        Route::AdminDeleteOverride => admin_delete_override(ctx, request, admin).await,
        Route::AdminListOverrides => admin_list_overrides(ctx, request).await,
        Route::AdminInvalidateCache => admin_invalidate_cache(ctx, admin).await,
        Route::AdminAudit => admin_audit(ctx, request).await,
        Route::AdminCreateSchedule => admin_create_schedule(ctx, request, admin).await,
        Route::AdminListSchedules => admin_list_schedules(ctx, request).await,
        Route::AdminCancelSchedule => admin_cancel_schedule(ctx, request, admin).await,
        public_route => Err(ApiError::internal(format!(
            "{public_route:?} reached the admin dispatch"
        ))),
    }
}

#[utoipa::path(get, path = "/config/flags", tag = "evaluation", summary = "Every flag, evaluated for the caller",
    params(EnvironmentQuery),
    responses(
        (status = 200, description = "Every flag of the environment, evaluated for the caller (the token's `sub`; anonymous without a valid token)", body = BTreeMap<String, bool>),
        (status = 400, description = "A bad environment name", body = ValidationErrorBody),
    ))]
async fn get_flags(ctx: &AppContext, request: &ApiRequest) -> Result<ApiResponse, ApiError> {
    let mut errors = ValidationErrors::default();
    let env = environment(request, &mut errors);
    let env = validated(errors, env)?;
    let caller = optional_caller(ctx.verifier.as_ref(), request).await;
    let flags = ctx
        .service
        .evaluate_all(&env, caller.as_ref().map(|c| c.sub.as_str()))
        .await?;
    Ok(ApiResponse::ok(&flags))
}

#[utoipa::path(get, path = "/config/flags/{flagKey}", tag = "evaluation", summary = "One flag's settings",
    params(FlagPath, EnvironmentQuery),
    responses(
        (status = 200, description = "The flag", body = FlagDetail),
        (status = 400, description = "A bad flag key or environment", body = ValidationErrorBody),
        (status = 404, description = "No such flag", body = ErrorBody),
    ))]
async fn get_flag(ctx: &AppContext, request: &ApiRequest) -> Result<ApiResponse, ApiError> {
    let mut errors = ValidationErrors::default();
    let target = flag_target(request, &mut errors);
    let (env, key) = validated(errors, target)?;
    let flag = ctx.service.get_flag(&env, &key).await?;
    Ok(ApiResponse::ok(json!(FlagDetail::from(&flag))))
}

#[utoipa::path(get, path = "/health", tag = "operations", summary = "Health of the database and the cache",
    responses(
        (status = 200, description = "The database answers (Redis or the token keys may be down: the service still answers)", body = Health),
        (status = 503, description = "The database does not answer", body = Health),
    ))]
async fn health(ctx: &AppContext) -> ApiResponse {
    let report = ctx.service.health().await;
    let auth = match &ctx.verifier {
        Some(verifier) if verifier.has_keys().await => AuthStatus::Up,
        Some(_) => AuthStatus::Down,
        None => AuthStatus::Disabled,
    };
    let status = if report.database_up {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    ApiResponse::json(status, json!(Health::new(report, auth)))
}

#[utoipa::path(get, path = "/admin/flags", tag = "admin", summary = "List the flags of an environment",
    params(EnvironmentQuery),
    responses(
        (status = 200, description = "Every flag of the environment, by key", body = Vec<FlagListItem>),
        (status = 400, description = "A bad environment name", body = ValidationErrorBody),
    ))]
async fn admin_list_flags(ctx: &AppContext, request: &ApiRequest) -> Result<ApiResponse, ApiError> {
    let mut errors = ValidationErrors::default();
    let env = environment(request, &mut errors);
    let env = validated(errors, env)?;
    let flags = ctx.service.list_flags(&env).await?;
    let items: Vec<FlagListItem> = flags.iter().map(FlagListItem::from).collect();
    Ok(ApiResponse::ok(json!(items)))
}

#[utoipa::path(post, path = "/admin/flags", tag = "admin", summary = "Create a flag",
    params(EnvironmentQuery),
    request_body = CreateFlagRequest,
    responses(
        (status = 201, description = "Created", body = FlagDetail),
        (status = 400, description = "Malformed JSON or bad fields, all listed", body = ValidationErrorBody),
        (status = 409, description = "The key exists in this environment", body = ErrorBody),
    ))]
async fn admin_create_flag(
    ctx: &AppContext,
    request: &ApiRequest,
    admin: &Caller,
) -> Result<ApiResponse, ApiError> {
    let mut errors = ValidationErrors::default();
    let env = environment(request, &mut errors);
    let body = json_object(request)?;
    let mut fields = Fields::new(
        body,
        &["flagKey", "enabled", "rolloutPercentage", "description"],
    );
    let flag_key = fields.string("flagKey", 1, FlagKey::MAX_LEN, true);
    let flag_key = flag_key.and_then(|k| {
        FlagKey::parse(&k)
            .map_err(|e| fields.errors.add("flagKey", e.0))
            .ok()
    });
    let enabled = fields.bool("enabled");
    let rollout = fields.integer("rolloutPercentage", 0, 100);
    let description = fields.nullable_string("description", MAX_DESCRIPTION_CHARS);
    errors.merge(fields.errors);
    let (env, flag_key) = validated(errors, env.zip(flag_key))?;
    let rollout = Rollout::new(rollout.unwrap_or(0))
        .ok_or_else(|| ApiError::internal("a validated rollout is out of range"))?;
    let new = NewFlag {
        flag_key,
        enabled: enabled.unwrap_or(false),
        rollout,
        description: description.flatten(),
    };
    let flag = ctx
        .service
        .create_flag(&env, new, Some(&admin.actor()))
        .await?;
    Ok(ApiResponse::json(
        StatusCode::CREATED,
        json!(FlagDetail::from(&flag)),
    ))
}

#[utoipa::path(post, path = "/admin/flags/{flagKey}", tag = "admin", summary = "Update a flag",
    params(FlagPath, EnvironmentQuery),
    request_body = UpdateFlagRequest,
    responses(
        (status = 200, description = "Updated", body = FlagDetail),
        (status = 400, description = "Malformed JSON or bad fields, all listed", body = ValidationErrorBody),
        (status = 404, description = "No such flag", body = ErrorBody),
    ))]
async fn admin_update_flag(
    ctx: &AppContext,
    request: &ApiRequest,
    admin: &Caller,
) -> Result<ApiResponse, ApiError> {
    let mut errors = ValidationErrors::default();
    let target = flag_target(request, &mut errors);
    let body = json_object(request)?;
    let mut fields = Fields::new(body, &["enabled", "rolloutPercentage", "description"]);
    let patch = FlagPatch {
        enabled: fields.bool("enabled"),
        rollout: fields
            .integer("rolloutPercentage", 0, 100)
            .and_then(Rollout::new),
        description: fields.nullable_string("description", MAX_DESCRIPTION_CHARS),
    };
    errors.merge(fields.errors);
    let (env, key) = validated(errors, target)?;
    let flag = ctx
        .service
        .update_flag(&env, &key, patch, Some(&admin.actor()))
        .await?;
    Ok(ApiResponse::ok(json!(FlagDetail::from(&flag))))
}

#[utoipa::path(delete, path = "/admin/flags/{flagKey}", tag = "admin", summary = "Delete a flag",
    params(FlagPath, EnvironmentQuery),
    responses(
        (status = 204, description = "Deleted, with its overrides and schedules"),
        (status = 400, description = "A bad flag key or environment", body = ValidationErrorBody),
        (status = 404, description = "No such flag", body = ErrorBody),
    ))]
async fn admin_delete_flag(
    ctx: &AppContext,
    request: &ApiRequest,
    admin: &Caller,
) -> Result<ApiResponse, ApiError> {
    let mut errors = ValidationErrors::default();
    let target = flag_target(request, &mut errors);
    let (env, key) = validated(errors, target)?;
    ctx.service
        .delete_flag(&env, &key, Some(&admin.actor()))
        .await?;
    Ok(ApiResponse::no_content())
}

#[utoipa::path(post, path = "/admin/flags/{flagKey}/users", tag = "admin", summary = "Include or exclude a user",
    params(FlagPath, EnvironmentQuery),
    request_body = UpsertOverrideRequest,
    responses(
        (status = 201, description = "The user's override, created or replaced", body = UserOverride),
        (status = 400, description = "Malformed JSON or bad fields, all listed", body = ValidationErrorBody),
        (status = 404, description = "No such flag", body = ErrorBody),
        (status = 429, description = "Too many override changes for this flag; see `Retry-After`", body = ErrorBody,
            headers(("Retry-After" = u64, description = "Seconds to wait"))),
    ))]
async fn admin_upsert_override(
    ctx: &AppContext,
    request: &ApiRequest,
    admin: &Caller,
) -> Result<ApiResponse, ApiError> {
    let mut errors = ValidationErrors::default();
    let target = flag_target(request, &mut errors);
    let body = json_object(request)?;
    let mut fields = Fields::new(body, &["userId", "overrideType", "reason"]);
    let user_id = fields
        .string("userId", 1, UserId::MAX_CHARS, true)
        .and_then(|u| UserId::parse(&u).ok());
    let override_type = fields
        .one_of("overrideType", &["include", "exclude"], true)
        .as_deref()
        .and_then(OverrideType::parse);
    let reason = fields.nullable_string("reason", MAX_DESCRIPTION_CHARS);
    errors.merge(fields.errors);
    let ((env, key), (user_id, override_type)) =
        validated(errors, target.zip(user_id.zip(override_type)))?;
    let new = NewOverride {
        user_id,
        override_type,
        reason: reason.flatten(),
        created_by: Some(admin.sub.clone()),
    };
    let saved = ctx
        .service
        .upsert_override(&env, &key, new, Some(&admin.actor()))
        .await?;
    Ok(ApiResponse::json(StatusCode::CREATED, json!(saved)))
}

#[utoipa::path(delete, path = "/admin/flags/{flagKey}/users/{userId}", tag = "admin", summary = "Remove a user's override",
    params(FlagPath, EnvironmentQuery, ("userId" = String, Path, description = "The user's id, percent-encoded")),
    responses(
        (status = 204, description = "Deleted"),
        (status = 400, description = "A bad flag key, user id or environment", body = ValidationErrorBody),
        (status = 404, description = "No such flag, or no override for this user", body = ErrorBody),
        (status = 429, description = "Too many override changes for this flag; see `Retry-After`", body = ErrorBody,
            headers(("Retry-After" = u64, description = "Seconds to wait"))),
    ))]
async fn admin_delete_override(
    ctx: &AppContext,
    request: &ApiRequest,
    admin: &Caller,
) -> Result<ApiResponse, ApiError> {
    let mut errors = ValidationErrors::default();
    let target = flag_target(request, &mut errors);
    let user_id = user_id_param(request, &mut errors);
    let ((env, key), user_id) = validated(errors, target.zip(user_id))?;
    ctx.service
        .delete_override(&env, &key, user_id.as_str(), Some(&admin.actor()))
        .await?;
    Ok(ApiResponse::no_content())
}

#[utoipa::path(get, path = "/admin/flags/{flagKey}/users", tag = "admin", summary = "List a flag's overrides",
    params(FlagPath, EnvironmentQuery, PageQuery),
    responses(
        (status = 200, description = "One page of the flag's overrides, newest first", body = OverridesPage),
        (status = 400, description = "A bad flag key, environment or page", body = ValidationErrorBody),
        (status = 404, description = "No such flag", body = ErrorBody),
    ))]
async fn admin_list_overrides(
    ctx: &AppContext,
    request: &ApiRequest,
) -> Result<ApiResponse, ApiError> {
    let mut errors = ValidationErrors::default();
    let target = flag_target(request, &mut errors);
    let page = page_request(request, &mut errors);
    let ((env, key), page) = validated(errors, target.zip(page))?;
    let result = ctx.service.list_overrides(&env, &key, page).await?;
    let body = OverridesPage::new(&result.overrides, Pagination::new(page, result.total));
    Ok(ApiResponse::ok(json!(body)))
}

#[utoipa::path(post, path = "/admin/cache/invalidate", tag = "admin", summary = "Empty the shared cache",
    responses(
        (status = 200, description = "The cache keys deleted; `complete` is false when Redis stopped answering part-way", body = CacheInvalidated),
    ))]
async fn admin_invalidate_cache(ctx: &AppContext, admin: &Caller) -> Result<ApiResponse, ApiError> {
    let report = ctx.service.invalidate_all(Some(&admin.actor())).await?;
    Ok(ApiResponse::ok(json!(CacheInvalidated {
        invalidated_keys: report.deleted,
        complete: report.complete,
    })))
}

/// The audit log, newest first; without `environment`, every environment.
#[utoipa::path(get, path = "/admin/audit", tag = "admin", summary = "Read the audit log",
    params(AuditQuery, PageQuery),
    responses(
        (status = 200, description = "One page of the audit log, newest first", body = AuditPageBody),
        (status = 400, description = "A bad filter or page", body = ValidationErrorBody),
    ))]
async fn admin_audit(ctx: &AppContext, request: &ApiRequest) -> Result<ApiResponse, ApiError> {
    let mut errors = ValidationErrors::default();
    let environment = optional_query(request, "environment", Environment::parse, &mut errors);
    let flag_key = optional_query(request, "flagKey", FlagKey::parse, &mut errors);
    let page = page_request(request, &mut errors);
    let page = validated(errors, page)?;
    let filter = AuditFilter {
        environment: environment.map(|e| e.as_str().to_owned()),
        flag_key: flag_key.map(|k| k.as_str().to_owned()),
    };
    let result = ctx.service.list_audit(&filter, page).await?;
    Ok(ApiResponse::ok(json!(AuditPageBody {
        items: &result.entries,
        pagination: Pagination::new(page, result.total),
    })))
}

/// Schedules a change of the flag at a future time.
#[utoipa::path(post, path = "/admin/flags/{flagKey}/schedule", tag = "admin", summary = "Schedule a change",
    params(FlagPath, EnvironmentQuery),
    request_body = CreateScheduleRequest,
    responses(
        (status = 201, description = "Scheduled", body = Schedule),
        (status = 400, description = "Malformed JSON or bad fields, all listed", body = ValidationErrorBody),
        (status = 404, description = "No such flag", body = ErrorBody),
    ))]
async fn admin_create_schedule(
    ctx: &AppContext,
    request: &ApiRequest,
    admin: &Caller,
) -> Result<ApiResponse, ApiError> {
    let mut errors = ValidationErrors::default();
    let target = flag_target(request, &mut errors);
    let body = json_object(request)?;
    let mut fields = Fields::new(body, &["scheduledAt", "updates"]);
    let scheduled_at = fields
        .string("scheduledAt", 0, usize::MAX, true)
        .and_then(|raw| match utc_timestamp(&raw) {
            None => {
                fields.errors.add(
                    "scheduledAt",
                    "scheduledAt must be a valid ISO 8601 datetime",
                );
                None
            }
            Some(at) if at <= Timestamp::now() => {
                fields
                    .errors
                    .add("scheduledAt", "scheduledAt must be in the future");
                None
            }
            Some(at) => Some(at),
        });
    let updates = fields
        .object("updates", true)
        .and_then(|map| schedule_updates(map, &mut fields.errors));
    errors.merge(fields.errors);
    let ((env, key), (scheduled_at, updates)) =
        validated(errors, target.zip(scheduled_at.zip(updates)))?;
    let new = NewSchedule {
        scheduled_at,
        updates,
        max_retries: DEFAULT_MAX_RETRIES,
    };
    let schedule = ctx
        .service
        .create_schedule(&env, &key, new, Some(&admin.actor()))
        .await?;
    Ok(ApiResponse::json(StatusCode::CREATED, json!(schedule)))
}

/// The `updates` object of a schedule; its problems are reported under `updates`.
fn schedule_updates(
    map: serde_json::Map<String, Value>,
    errors: &mut ValidationErrors,
) -> Option<ScheduleUpdates> {
    let mut fields = Fields::new(map, &["enabled", "rolloutPercentage"]);
    let updates = ScheduleUpdates {
        enabled: fields.bool("enabled"),
        rollout: fields
            .integer("rolloutPercentage", 0, 100)
            .and_then(Rollout::new),
    };
    let nested = fields.errors;
    if !nested.is_empty() {
        let messages = nested
            .form
            .into_iter()
            .chain(nested.fields.into_values().flatten());
        for message in messages {
            errors.add("updates", message);
        }
        return None;
    }
    if updates.is_empty() {
        errors.add(
            "updates",
            "At least one update property (enabled or rolloutPercentage) is required",
        );
        return None;
    }
    Some(updates)
}

/// `GET /admin/flags/{flagKey}/schedule`: every status, by `scheduledAt`.
#[utoipa::path(get, path = "/admin/flags/{flagKey}/schedule", tag = "admin", summary = "List a flag's schedules",
    params(FlagPath, EnvironmentQuery),
    responses(
        (status = 200, description = "The flag's schedules, every status, by `scheduledAt`", body = Vec<Schedule>),
        (status = 400, description = "A bad flag key or environment", body = ValidationErrorBody),
        (status = 404, description = "No such flag", body = ErrorBody),
    ))]
async fn admin_list_schedules(
    ctx: &AppContext,
    request: &ApiRequest,
) -> Result<ApiResponse, ApiError> {
    let mut errors = ValidationErrors::default();
    let target = flag_target(request, &mut errors);
    let (env, key) = validated(errors, target)?;
    let schedules = ctx.service.list_schedules(&env, &key).await?;
    Ok(ApiResponse::ok(json!(schedules)))
}

/// `DELETE /admin/flags/{flagKey}/schedule/{scheduleId}`: a pending schedule (also one waiting
/// for a retry) becomes `cancelled`.
#[utoipa::path(delete, path = "/admin/flags/{flagKey}/schedule/{scheduleId}", tag = "admin", summary = "Cancel a pending schedule",
    params(FlagPath, EnvironmentQuery, ("scheduleId" = String, Path, format = "uuid")),
    responses(
        (status = 200, description = "Cancelled", body = Schedule),
        (status = 400, description = "A bad flag key or environment, or the schedule is no longer pending", body = ErrorBody),
        (status = 404, description = "No such flag or schedule", body = ErrorBody),
    ))]
async fn admin_cancel_schedule(
    ctx: &AppContext,
    request: &ApiRequest,
    admin: &Caller,
) -> Result<ApiResponse, ApiError> {
    let mut errors = ValidationErrors::default();
    let target = flag_target(request, &mut errors);
    let (env, key) = validated(errors, target)?;
    // An id that is not a UUID names no schedule: the same 404 as an unknown one.
    let id = request
        .path_param("scheduleId")
        .and_then(|raw| Uuid::parse_str(raw).ok())
        .unwrap_or(Uuid::nil());
    let schedule = ctx
        .service
        .cancel_schedule(&env, &key, id, Some(&admin.actor()))
        .await?;
    Ok(ApiResponse::ok(json!(schedule)))
}

/// This document. It is built in, so it needs neither the database nor Redis.
#[utoipa::path(get, path = "/openapi.json", tag = "operations", summary = "This OpenAPI document",
    responses((status = 200, description = "This document (OpenAPI 3.1)", body = Object)))]
pub fn openapi_document() -> ApiResponse {
    ApiResponse::ok(crate::openapi::document().clone())
}
