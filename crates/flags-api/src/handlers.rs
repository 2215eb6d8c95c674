//! One function per route. Each validates in the contract's order (401 → 403 → 400 → 404 →
//! 429 → change), calls the flag service and shapes the JSON; errors become responses in
//! [`ApiError::into_response`].

use crate::api::{ApiError, ApiRequest, ApiResponse, MAX_BODY_BYTES, ValidationErrors};
use crate::auth::{optional_caller, require_admin};
use crate::context::AppContext;
use crate::routes::Route;
use crate::validation::{
    Fields, environment, flag_key_param, json_object, optional_query, page_request, user_id_param,
    utc_timestamp,
};
use flags_core::domain::{
    AuditFilter, DEFAULT_MAX_RETRIES, Environment, Flag, FlagKey, FlagPatch, MAX_DESCRIPTION_CHARS,
    NewFlag, NewOverride, NewSchedule, OverrideType, Rollout, ScheduleUpdates, Timestamp, UserId,
    UserOverride,
};
use flags_core::service::RedisStatus;
use http::StatusCode;
use serde_json::{Value, json};
use uuid::Uuid;

/// Handles one request for one route; never fails (errors are responses). An oversized body is
/// a 413 before anything else, on every route, as the local server's body limit answers it.
pub async fn handle(ctx: &AppContext, route: Route, request: ApiRequest) -> ApiResponse {
    let result = if request.body.len() > MAX_BODY_BYTES {
        Err(ApiError::PayloadTooLarge)
    } else {
        dispatch(ctx, route, &request).await
    };
    let response = result.unwrap_or_else(ApiError::into_response);
    tracing::info!(
        route = route.function_name(),
        status = response.status.as_u16(),
        "request handled"
    );
    response
}

async fn dispatch(
    ctx: &AppContext,
    route: Route,
    request: &ApiRequest,
) -> Result<ApiResponse, ApiError> {
    match route {
        Route::GetFlags => get_flags(ctx, request).await,
        Route::GetFlag => get_flag(ctx, request).await,
        Route::Health => Ok(health(ctx).await),
        Route::AdminListFlags => admin_list_flags(ctx, request).await,
        Route::AdminCreateFlag => admin_create_flag(ctx, request).await,
        Route::AdminUpdateFlag => admin_update_flag(ctx, request).await,
        Route::AdminDeleteFlag => admin_delete_flag(ctx, request).await,
        Route::AdminUpsertOverride => admin_upsert_override(ctx, request).await,
        Route::AdminDeleteOverride => admin_delete_override(ctx, request).await,
        Route::AdminListOverrides => admin_list_overrides(ctx, request).await,
        Route::AdminInvalidateCache => admin_invalidate_cache(ctx, request).await,
        Route::AdminAudit => admin_audit(ctx, request).await,
        Route::AdminCreateSchedule => admin_create_schedule(ctx, request).await,
        Route::AdminListSchedules => admin_list_schedules(ctx, request).await,
        Route::AdminCancelSchedule => admin_cancel_schedule(ctx, request).await,
    }
}

fn flag_detail(flag: &Flag) -> Value {
    json!({
        "key": flag.flag_key,
        "enabled": flag.enabled,
        "rolloutPercentage": flag.rollout_percentage,
        "description": flag.description,
    })
}

fn override_json(item: &UserOverride) -> Value {
    json!({
        "userId": item.user_id,
        "overrideType": item.override_type.as_str(),
        "reason": item.reason,
        "createdBy": item.created_by,
        "createdAt": item.created_at,
    })
}

async fn get_flags(ctx: &AppContext, request: &ApiRequest) -> Result<ApiResponse, ApiError> {
    let mut errors = ValidationErrors::default();
    let env = environment(request, &mut errors);
    errors.into_result()?;
    let env = env.ok_or(ApiError::Internal)?;
    let caller = optional_caller(ctx.verifier.as_ref(), request).await;
    let flags = ctx
        .service
        .evaluate_all(&env, caller.as_ref().map(|c| c.sub.as_str()))
        .await?;
    Ok(ApiResponse::ok(json!(flags)))
}

async fn get_flag(ctx: &AppContext, request: &ApiRequest) -> Result<ApiResponse, ApiError> {
    let mut errors = ValidationErrors::default();
    let (env, key) = (
        environment(request, &mut errors),
        flag_key_param(request, &mut errors),
    );
    errors.into_result()?;
    let (env, key) = env.zip(key).ok_or(ApiError::Internal)?;
    let flag = ctx.service.get_flag(&env, &key).await?;
    Ok(ApiResponse::ok(flag_detail(&flag)))
}

async fn health(ctx: &AppContext) -> ApiResponse {
    let report = ctx.service.health().await;
    let status = if report.database_up {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let body = json!({
        "status": if report.is_ok() { "ok" } else { "degraded" },
        "cache": report.cache.map_or("none", |kind| kind.as_str()),
        "redis": match report.redis {
            RedisStatus::Up => "up",
            RedisStatus::Down => "down",
            RedisStatus::Disabled => "disabled",
        },
        "database": if report.database_up { "up" } else { "down" },
    });
    ApiResponse::json(status, body)
}

async fn admin_list_flags(ctx: &AppContext, request: &ApiRequest) -> Result<ApiResponse, ApiError> {
    require_admin(ctx.verifier.as_ref(), request).await?;
    let mut errors = ValidationErrors::default();
    let env = environment(request, &mut errors);
    errors.into_result()?;
    let flags = ctx
        .service
        .list_flags(&env.ok_or(ApiError::Internal)?)
        .await?;
    let body: Vec<Value> = flags
        .iter()
        .map(|f| {
            let mut detail = flag_detail(f);
            detail["createdAt"] = json!(f.created_at);
            detail["updatedAt"] = json!(f.updated_at);
            detail
        })
        .collect();
    Ok(ApiResponse::ok(json!(body)))
}

async fn admin_create_flag(
    ctx: &AppContext,
    request: &ApiRequest,
) -> Result<ApiResponse, ApiError> {
    let admin = require_admin(ctx.verifier.as_ref(), request).await?;
    let mut errors = ValidationErrors::default();
    let env = environment(request, &mut errors);
    let body = json_object(request)?;
    let mut fields = Fields::new(
        body,
        &["flagKey", "enabled", "rolloutPercentage", "description"],
    );
    let flag_key = fields.string("flagKey", 1, flags_core::domain::FlagKey::MAX_LEN, true);
    let flag_key = flag_key.and_then(|k| {
        flags_core::domain::FlagKey::parse(&k)
            .map_err(|e| fields.errors.add("flagKey", e.0))
            .ok()
    });
    let enabled = fields.bool("enabled");
    let rollout = fields.integer("rolloutPercentage", 0, 100);
    let description = fields.nullable_string("description", MAX_DESCRIPTION_CHARS);
    errors.merge(fields.errors);
    errors.into_result()?;
    let (env, flag_key) = env.zip(flag_key).ok_or(ApiError::Internal)?;
    let new = NewFlag {
        flag_key,
        enabled: enabled.unwrap_or(false),
        rollout: Rollout::new(rollout.unwrap_or(0)).ok_or(ApiError::Internal)?,
        description: description.flatten(),
    };
    let flag = ctx
        .service
        .create_flag(&env, new, Some(&admin.actor()))
        .await?;
    Ok(ApiResponse::json(StatusCode::CREATED, flag_detail(&flag)))
}

async fn admin_update_flag(
    ctx: &AppContext,
    request: &ApiRequest,
) -> Result<ApiResponse, ApiError> {
    let admin = require_admin(ctx.verifier.as_ref(), request).await?;
    let mut errors = ValidationErrors::default();
    let (env, key) = (
        environment(request, &mut errors),
        flag_key_param(request, &mut errors),
    );
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
    errors.into_result()?;
    let (env, key) = env.zip(key).ok_or(ApiError::Internal)?;
    let flag = ctx
        .service
        .update_flag(&env, &key, patch, Some(&admin.actor()))
        .await?;
    Ok(ApiResponse::ok(flag_detail(&flag)))
}

async fn admin_delete_flag(
    ctx: &AppContext,
    request: &ApiRequest,
) -> Result<ApiResponse, ApiError> {
    let admin = require_admin(ctx.verifier.as_ref(), request).await?;
    let mut errors = ValidationErrors::default();
    let (env, key) = (
        environment(request, &mut errors),
        flag_key_param(request, &mut errors),
    );
    errors.into_result()?;
    let (env, key) = env.zip(key).ok_or(ApiError::Internal)?;
    ctx.service
        .delete_flag(&env, &key, Some(&admin.actor()))
        .await?;
    Ok(ApiResponse::no_content())
}

async fn admin_upsert_override(
    ctx: &AppContext,
    request: &ApiRequest,
) -> Result<ApiResponse, ApiError> {
    let admin = require_admin(ctx.verifier.as_ref(), request).await?;
    let mut errors = ValidationErrors::default();
    let (env, key) = (
        environment(request, &mut errors),
        flag_key_param(request, &mut errors),
    );
    let body = json_object(request)?;
    let mut fields = Fields::new(body, &["userId", "overrideType", "reason"]);
    let user_id = fields
        .string("userId", 1, UserId::MAX_CHARS, true)
        .and_then(|u| UserId::parse(&u).ok());
    let override_type = fields.one_of("overrideType", &["include", "exclude"], true);
    let reason = fields.nullable_string("reason", MAX_DESCRIPTION_CHARS);
    errors.merge(fields.errors);
    errors.into_result()?;
    let override_type = override_type.as_deref().and_then(OverrideType::parse);
    let (((env, key), user_id), override_type) = env
        .zip(key)
        .zip(user_id)
        .zip(override_type)
        .ok_or(ApiError::Internal)?;
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
    Ok(ApiResponse::json(
        StatusCode::CREATED,
        override_json(&saved),
    ))
}

async fn admin_delete_override(
    ctx: &AppContext,
    request: &ApiRequest,
) -> Result<ApiResponse, ApiError> {
    let admin = require_admin(ctx.verifier.as_ref(), request).await?;
    let mut errors = ValidationErrors::default();
    let (env, key) = (
        environment(request, &mut errors),
        flag_key_param(request, &mut errors),
    );
    let user_id = user_id_param(request, &mut errors);
    errors.into_result()?;
    let ((env, key), user_id) = env.zip(key).zip(user_id).ok_or(ApiError::Internal)?;
    ctx.service
        .delete_override(&env, &key, user_id.as_str(), Some(&admin.actor()))
        .await?;
    Ok(ApiResponse::no_content())
}

async fn admin_list_overrides(
    ctx: &AppContext,
    request: &ApiRequest,
) -> Result<ApiResponse, ApiError> {
    require_admin(ctx.verifier.as_ref(), request).await?;
    let mut errors = ValidationErrors::default();
    let (env, key) = (
        environment(request, &mut errors),
        flag_key_param(request, &mut errors),
    );
    let page = page_request(request, &mut errors);
    errors.into_result()?;
    let ((env, key), page) = env.zip(key).zip(page).ok_or(ApiError::Internal)?;
    let result = ctx.service.list_overrides(&env, &key, page).await?;
    let of_type = |kind: OverrideType| -> Vec<Value> {
        result
            .overrides
            .iter()
            .filter(|o| o.override_type == kind)
            .map(override_json)
            .collect()
    };
    Ok(ApiResponse::ok(json!({
        "includes": of_type(OverrideType::Include),
        "excludes": of_type(OverrideType::Exclude),
        "pagination": { "page": page.page, "pageSize": page.page_size, "total": result.total },
    })))
}

async fn admin_invalidate_cache(
    ctx: &AppContext,
    request: &ApiRequest,
) -> Result<ApiResponse, ApiError> {
    let admin = require_admin(ctx.verifier.as_ref(), request).await?;
    let report = ctx.service.invalidate_all(Some(&admin.actor())).await?;
    // `complete: false` when Redis stopped answering part-way: the count is still exact.
    Ok(ApiResponse::ok(json!({
        "invalidatedKeys": report.deleted,
        "complete": report.complete,
    })))
}

/// `GET /admin/audit` (contract §2.7): newest first; without `environment`, every environment.
async fn admin_audit(ctx: &AppContext, request: &ApiRequest) -> Result<ApiResponse, ApiError> {
    require_admin(ctx.verifier.as_ref(), request).await?;
    let mut errors = ValidationErrors::default();
    let environment = optional_query(request, "environment", Environment::parse, &mut errors);
    let flag_key = optional_query(request, "flagKey", FlagKey::parse, &mut errors);
    let page = page_request(request, &mut errors);
    errors.into_result()?;
    let page = page.ok_or(ApiError::Internal)?;
    let filter = AuditFilter {
        environment: environment.map(|e| e.as_str().to_owned()),
        flag_key: flag_key.map(|k| k.as_str().to_owned()),
    };
    let result = ctx.service.list_audit(&filter, page).await?;
    Ok(ApiResponse::ok(json!({
        "items": result.entries,
        "pagination": { "page": page.page, "pageSize": page.page_size, "total": result.total },
    })))
}

/// `POST /admin/flags/{flagKey}/schedule` (contract §2.6).
async fn admin_create_schedule(
    ctx: &AppContext,
    request: &ApiRequest,
) -> Result<ApiResponse, ApiError> {
    let admin = require_admin(ctx.verifier.as_ref(), request).await?;
    let mut errors = ValidationErrors::default();
    let (env, key) = (
        environment(request, &mut errors),
        flag_key_param(request, &mut errors),
    );
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
    errors.into_result()?;
    let (((env, key), scheduled_at), updates) = env
        .zip(key)
        .zip(scheduled_at)
        .zip(updates)
        .ok_or(ApiError::Internal)?;
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
async fn admin_list_schedules(
    ctx: &AppContext,
    request: &ApiRequest,
) -> Result<ApiResponse, ApiError> {
    require_admin(ctx.verifier.as_ref(), request).await?;
    let mut errors = ValidationErrors::default();
    let (env, key) = (
        environment(request, &mut errors),
        flag_key_param(request, &mut errors),
    );
    errors.into_result()?;
    let (env, key) = env.zip(key).ok_or(ApiError::Internal)?;
    let schedules = ctx.service.list_schedules(&env, &key).await?;
    Ok(ApiResponse::ok(json!(schedules)))
}

/// `DELETE /admin/flags/{flagKey}/schedule/{scheduleId}`: a pending schedule (also one waiting
/// for a retry) becomes `cancelled`.
async fn admin_cancel_schedule(
    ctx: &AppContext,
    request: &ApiRequest,
) -> Result<ApiResponse, ApiError> {
    let admin = require_admin(ctx.verifier.as_ref(), request).await?;
    let mut errors = ValidationErrors::default();
    let (env, key) = (
        environment(request, &mut errors),
        flag_key_param(request, &mut errors),
    );
    errors.into_result()?;
    let (env, key) = env.zip(key).ok_or(ApiError::Internal)?;
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
