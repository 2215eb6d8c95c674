//! The OpenAPI 3.1 document of every route (contract §2.9): served at `GET /openapi.json` and
//! written to `docs/openapi.json` by `make openapi`. Each operation is declared on its handler
//! (`#[utoipa::path]`); this module gathers them, describes the request and error bodies, and
//! adds what routes share by kind, from the route table: the bearer scheme, and the error
//! answers of [`ApiError::into_response`](crate::ApiError::into_response).
//!
//! The request types below only describe: the handlers read bodies field by field, so that one
//! answer lists every bad field in the contract's error shape. The fuzzing test
//! (`make test-clients`) holds the server to this document.

use crate::bodies::{
    AuditPageBody, CacheInvalidated, FlagDetail, FlagListItem, Health, OverridesPage, Pagination,
};
use crate::ofrep::{BulkEvaluation, Evaluation, Metadata};
use crate::routes::Route;
use flags_core::domain::{
    Actor, AuditEntry, OverrideType, Schedule, ScheduleStatus, ScheduleUpdates, Timestamp,
    UserOverride,
};
use http::Method;
use serde::Deserialize;
use serde_json::Value;
use std::collections::BTreeMap;
use std::sync::LazyLock;
use utoipa::openapi::path::Operation;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityRequirement, SecurityScheme};
use utoipa::openapi::{ContentBuilder, Ref, ResponseBuilder};
use utoipa::{IntoParams, Modify, OpenApi, ToSchema};

/// The name of the bearer security scheme (a Cognito access token, or a local one).
const BEARER: &str = "bearerAuth";

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Feature flags",
        description = "Feature flags per environment: evaluation for callers (plain and OpenFeature OFREP) and administration. Admin routes need a bearer access token of a member of the `admin` group; public routes take an optional one (its `sub` is the user the flags are evaluated for)."
    ),
    paths(
        crate::handlers::get_flags,
        crate::handlers::get_flag,
        crate::handlers::health,
        crate::handlers::admin_list_flags,
        crate::handlers::admin_create_flag,
        crate::handlers::admin_update_flag,
        crate::handlers::admin_delete_flag,
        crate::handlers::admin_upsert_override,
        crate::handlers::admin_delete_override,
        crate::handlers::admin_list_overrides,
        crate::handlers::admin_invalidate_cache,
        crate::handlers::admin_audit,
        crate::handlers::admin_create_schedule,
        crate::handlers::admin_list_schedules,
        crate::handlers::admin_cancel_schedule,
        crate::ofrep::evaluate_flag,
        crate::ofrep::evaluate_flags,
        crate::handlers::openapi_document,
    ),
    components(schemas(
        ErrorBody,
        ValidationErrorBody,
        ValidationDetails,
        OfrepErrorBody,
        FlagDetail,
        FlagListItem,
        Pagination,
        OverridesPage,
        AuditPageBody,
        CacheInvalidated,
        Health,
        Evaluation,
        Metadata,
        BulkEvaluation,
        UserOverride,
        OverrideType,
        AuditEntry,
        Actor,
        Schedule,
        ScheduleStatus,
        ScheduleUpdates,
        Timestamp,
    )),
    modifiers(&SharedAnswers),
    tags(
        (name = "evaluation", description = "Flags evaluated for a caller"),
        (name = "openfeature", description = "OpenFeature Remote Evaluation Protocol (OFREP)"),
        (name = "admin", description = "Flags, overrides, schedules, audit and cache (admin group)"),
        (name = "operations", description = "Health and this document"),
    )
)]
struct ApiDoc;

/// The document as JSON, keys sorted (built once per process).
pub fn document() -> &'static Value {
    static DOCUMENT: LazyLock<Value> = LazyLock::new(|| {
        serde_json::to_value(ApiDoc::openapi()).unwrap_or_else(|error| {
            tracing::error!(error = %error, "the OpenAPI document does not serialise");
            Value::Null
        })
    });
    &DOCUMENT
}

/// What `make openapi` writes to `docs/openapi.json`.
pub fn document_pretty() -> String {
    let mut text = serde_json::to_string_pretty(document()).unwrap_or_default();
    text.push('\n');
    text
}

// --- request bodies ---------------------------------------------------------------------------

/// `POST /admin/flags`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CreateFlagRequest {
    #[schema(pattern = "^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")]
    pub flag_key: String,
    /// Default `false`.
    #[schema(value_type = bool, required = false)]
    pub enabled: Option<bool>,
    /// Default 0.
    #[schema(value_type = i32, required = false, minimum = 0, maximum = 100)]
    pub rollout_percentage: Option<i32>,
    /// At most 500 characters, no control characters.
    #[schema(max_length = 500)]
    pub description: Option<String>,
}

/// `POST /admin/flags/{flagKey}`: the fields to change.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct UpdateFlagRequest {
    #[schema(value_type = bool, required = false)]
    pub enabled: Option<bool>,
    #[schema(value_type = i32, required = false, minimum = 0, maximum = 100)]
    pub rollout_percentage: Option<i32>,
    #[schema(max_length = 500)]
    pub description: Option<String>,
}

/// `POST /admin/flags/{flagKey}/users`: creates or replaces the user's override.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct UpsertOverrideRequest {
    /// 1–255 characters, no control characters.
    #[schema(min_length = 1, max_length = 255)]
    pub user_id: String,
    pub override_type: OverrideType,
    #[schema(max_length = 500)]
    pub reason: Option<String>,
}

/// `POST /admin/flags/{flagKey}/schedule`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CreateScheduleRequest {
    /// An ISO 8601 date-time in the future.
    #[schema(format = DateTime)]
    pub scheduled_at: String,
    #[schema(value_type = ScheduleUpdates)]
    pub updates: Value,
}

/// The body of both OFREP routes; empty, or without `context`, is the anonymous context.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct OfrepRequest {
    pub context: Option<OfrepContext>,
}

/// The evaluation context: `targetingKey` is the user; other attributes are accepted and unused.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct OfrepContext {
    #[schema(max_length = 255)]
    pub targeting_key: Option<String>,
}

// --- parameters -------------------------------------------------------------------------------

/// `?environment=`: 1–20 of `a-z 0-9 -`, starting with a letter or digit; `production` when
/// absent or empty.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct EnvironmentQuery {
    #[param(pattern = "^[a-z0-9][a-z0-9-]{0,19}$")]
    pub environment: Option<String>,
}

/// `{flagKey}`: 1–100 of `A-Z a-z 0-9 . _ -`, starting with a letter or digit.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(rename_all = "camelCase")]
#[into_params(parameter_in = Path)]
pub struct FlagPath {
    #[param(pattern = "^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")]
    pub flag_key: String,
}

/// `?page=&pageSize=`: 1-based; `pageSize` defaults to 50 and is capped at 500.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(rename_all = "camelCase")]
#[into_params(parameter_in = Query)]
pub struct PageQuery {
    #[param(minimum = 1)]
    pub page: Option<u32>,
    #[param(minimum = 1)]
    pub page_size: Option<u32>,
}

/// `GET /admin/audit`'s filters; without one, every environment or every flag.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(rename_all = "camelCase")]
#[into_params(parameter_in = Query)]
pub struct AuditQuery {
    #[param(pattern = "^[a-z0-9][a-z0-9-]{0,19}$")]
    pub environment: Option<String>,
    #[param(pattern = "^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")]
    pub flag_key: Option<String>,
}

// --- error bodies -----------------------------------------------------------------------------

/// Every error but validation's: `{"error"}` or `{"error", "message"}`.
#[derive(Debug, Deserialize, ToSchema)]
pub struct ErrorBody {
    pub error: String,
    #[schema(required = false)]
    pub message: Option<String>,
}

/// 400: every bad field at once, in the shape of zod's `flatten()`.
#[derive(Debug, Deserialize, ToSchema)]
pub struct ValidationErrorBody {
    #[schema(pattern = "^Validation failed$")]
    pub error: String,
    pub details: ValidationDetails,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ValidationDetails {
    pub form_errors: Vec<String>,
    pub field_errors: BTreeMap<String, Vec<String>>,
}

/// An OFREP evaluation error.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct OfrepErrorBody {
    /// The flag's key, on the single-flag route.
    #[schema(required = false)]
    pub key: Option<String>,
    #[schema(
        pattern = "^(FLAG_NOT_FOUND|PARSE_ERROR|INVALID_CONTEXT|TARGETING_KEY_MISSING|GENERAL)$"
    )]
    pub error_code: String,
    pub error_details: String,
}

// --- what routes share --------------------------------------------------------------------------

/// Adds, per route of the route table: the security requirement (admin: the bearer token;
/// evaluation: optional), and the errors any route of its kind can answer, unless the
/// operation already declares that status.
struct SharedAnswers;

impl Modify for SharedAnswers {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            BEARER,
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("JWT")
                    .description(Some("An access token; admin routes need the `admin` group"))
                    .build(),
            ),
        );
        for route in Route::ALL {
            let (method, path) = route.spec();
            let Some(operation) = operation_mut(openapi, &method, path) else {
                continue;
            };
            for (status, description, schema) in shared_errors(route) {
                add_response(operation, status, description, schema);
            }
            let bearer = || SecurityRequirement::new(BEARER, Vec::<String>::new());
            operation.security = match route {
                _ if route.is_admin() => Some(vec![bearer()]),
                Route::GetFlags | Route::OfrepEvaluateFlag | Route::OfrepEvaluateFlags => {
                    Some(vec![SecurityRequirement::default(), bearer()])
                }
                _ => None,
            };
        }
    }
}

/// The errors [`ApiError::into_response`](crate::ApiError::into_response) gives any route of
/// this kind: (status, description, body schema).
fn shared_errors(route: Route) -> Vec<(&'static str, &'static str, &'static str)> {
    let mut errors = vec![("413", "The body is larger than 64 KiB", "ErrorBody")];
    if route.is_admin() {
        errors.push(("401", "No token, or not a valid one", "ErrorBody"));
        errors.push((
            "403",
            "The token's user is not in the admin group",
            "ErrorBody",
        ));
    }
    if route.spec().1.contains('{') {
        errors.push(("404", "Nothing at this path", "ErrorBody"));
    }
    if route.uses_database() {
        errors.push(("500", "The database failed", "ErrorBody"));
    }
    errors
}

fn operation_mut<'a>(
    openapi: &'a mut utoipa::openapi::OpenApi,
    method: &Method,
    path: &str,
) -> Option<&'a mut Operation> {
    let item = openapi.paths.paths.get_mut(path)?;
    match *method {
        Method::GET => item.get.as_mut(),
        Method::POST => item.post.as_mut(),
        Method::DELETE => item.delete.as_mut(),
        _ => None,
    }
}

fn add_response(operation: &mut Operation, status: &str, description: &str, schema: &str) {
    let responses = &mut operation.responses.responses;
    if responses.contains_key(status) {
        return;
    }
    let response = ResponseBuilder::new()
        .description(description)
        .content(
            "application/json",
            ContentBuilder::new()
                .schema(Some(Ref::from_schema_name(schema)))
                .build(),
        )
        .build();
    responses.insert(status.to_owned(), response.into());
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every route of the route table is in the document with its method, and nothing else is.
    #[test]
    fn the_document_describes_exactly_the_route_table() {
        let document = document();
        assert_eq!(document["openapi"], "3.1.0");
        let mut described: Vec<(String, String)> = document["paths"]
            .as_object()
            .unwrap()
            .iter()
            .flat_map(|(path, item)| {
                item.as_object()
                    .unwrap()
                    .keys()
                    .filter(|key| ["get", "post", "delete", "put", "patch"].contains(&key.as_str()))
                    .map(|method| (method.to_uppercase(), path.clone()))
                    .collect::<Vec<_>>()
            })
            .collect();
        let mut routes: Vec<(String, String)> = Route::ALL
            .iter()
            .map(|route| {
                let (method, path) = route.spec();
                (method.to_string(), path.to_owned())
            })
            .collect();
        described.sort();
        routes.sort();
        assert_eq!(described, routes);
    }

    #[test]
    fn admin_routes_need_the_bearer_token_and_answer_401_and_403() {
        let document = document();
        for route in Route::ALL.into_iter().filter(|r| r.is_admin()) {
            let (method, path) = route.spec();
            let operation = &document["paths"][path][method.as_str().to_lowercase()];
            assert_eq!(
                operation["security"],
                serde_json::json!([{ BEARER: [] }]),
                "{path}"
            );
            for status in ["401", "403", "500"] {
                assert!(
                    operation["responses"][status].is_object(),
                    "{path} {status}"
                );
            }
        }
    }

    /// `docs/openapi.json` is what the code serves (`make openapi` rewrites it).
    #[test]
    fn the_committed_copy_is_current() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/openapi.json");
        let committed = std::fs::read_to_string(path).unwrap_or_default();
        assert!(
            committed == document_pretty(),
            "docs/openapi.json is not what GET /openapi.json serves: run `make openapi`"
        );
    }

    #[test]
    fn every_schema_reference_resolves() {
        let document = document();
        let text = document.to_string();
        let schemas = document["components"]["schemas"].as_object().unwrap();
        for reference in text.split("\"#/components/schemas/").skip(1) {
            let name = reference.split('"').next().unwrap();
            assert!(
                schemas.contains_key(name),
                "{name} is referenced, not declared"
            );
        }
    }
}
