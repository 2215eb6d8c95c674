//! The OpenFeature Remote Evaluation Protocol (contract §2.8): any OpenFeature SDK with an OFREP
//! provider evaluates these flags. The evaluation is §1.1's (`evaluate_with_reason`); this module
//! only reads the OFREP request and shapes the OFREP answers.

use crate::api::{ApiError, ApiRequest, ApiResponse};
use crate::auth::optional_caller;
use crate::context::AppContext;
use crate::openapi::{EnvironmentQuery, OfrepErrorBody, OfrepRequest};
use flags_core::domain::{
    Environment, EvaluationContext, Flag, FlagKey, FlagSet, UserId, UserOverrides,
    evaluate_with_reason,
};
use http::{HeaderValue, StatusCode, header};
use serde::Serialize;
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};
use utoipa::ToSchema;

/// The header OFREP clients can set when they cannot add a query parameter.
const ENVIRONMENT_HEADER: &str = "x-environment";

/// One evaluated flag, as OFREP's `evaluationSuccess`. Fields in alphabetical order: serialised
/// straight from the struct, the text is the same as the sorted-key `json!` it replaced.
#[derive(Debug, Serialize, ToSchema)]
pub struct Evaluation<'a> {
    pub key: &'a str,
    pub metadata: Metadata<'a>,
    #[schema(pattern = "^(DISABLED|TARGETING_MATCH|STATIC|SPLIT|DEFAULT)$")]
    pub reason: &'static str,
    pub value: bool,
    /// Always present: OpenFeature SDKs report it, and a boolean flag has two.
    #[schema(pattern = "^(on|off)$")]
    pub variant: &'static str,
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Metadata<'a> {
    pub environment: &'a str,
    pub rollout_percentage: i32,
}

/// `POST /ofrep/v1/evaluate/flags`'s answer.
#[derive(Debug, Serialize, ToSchema)]
pub struct BulkEvaluation<'a> {
    pub flags: Vec<Evaluation<'a>>,
}

/// `POST /ofrep/v1/evaluate/flags/{key}`.
#[utoipa::path(post, path = "/ofrep/v1/evaluate/flags/{key}", tag = "openfeature", summary = "OFREP: evaluate one flag",
    params(
        ("key" = String, Path, description = "The flag key"),
        EnvironmentQuery,
        ("X-Environment" = Option<String>, Header, description = "The environment, when the query does not name one"),
    ),
    request_body(content = Option<OfrepRequest>, content_type = "application/json"),
    responses(
        (status = 200, description = "The flag, evaluated for the context's `targetingKey` (else the token's `sub`)", body = Evaluation),
        (status = 400, description = "`PARSE_ERROR` or `INVALID_CONTEXT`", body = OfrepErrorBody),
        (status = 404, description = "`FLAG_NOT_FOUND`", body = OfrepErrorBody),
    ))]
pub async fn evaluate_flag(
    ctx: &AppContext,
    request: &ApiRequest,
) -> Result<ApiResponse, ApiError> {
    let raw_key = request.path_param("key").unwrap_or_default();
    let with_key = |error: OfrepError| error.into_api_error(Some(raw_key));
    let env = environment(request).map_err(with_key)?;
    let targeting_key = targeting_key(ctx, request).await.map_err(with_key)?;
    let not_found = || {
        OfrepError::new(
            StatusCode::NOT_FOUND,
            "FLAG_NOT_FOUND",
            format!("Flag '{raw_key}' not found"),
        )
    };
    // A key that cannot exist is not found, as OFREP providers expect (they answer the default).
    let key = FlagKey::parse(raw_key).map_err(|_| with_key(not_found()))?;
    let (flags, overrides) = ctx
        .service
        .evaluation_inputs(&env, targeting_key.as_deref())
        .await?;
    let flag = flags
        .get(key.as_str())
        .ok_or_else(|| with_key(not_found()))?;
    let context = EvaluationContext::new(targeting_key.as_deref(), &overrides);
    let evaluation = evaluation(flag, context);
    Ok(ApiResponse::ok(&evaluation))
}

/// `POST /ofrep/v1/evaluate/flags`: every flag of the environment, with an `ETag` over the flag
/// state and the context; `If-None-Match` with the current one is a 304 without a body.
#[utoipa::path(post, path = "/ofrep/v1/evaluate/flags", tag = "openfeature", summary = "OFREP: evaluate every flag",
    params(
        EnvironmentQuery,
        ("X-Environment" = Option<String>, Header, description = "The environment, when the query does not name one"),
        ("If-None-Match" = Option<String>, Header, description = "The `ETag` of the copy the client holds"),
    ),
    request_body(content = Option<OfrepRequest>, content_type = "application/json"),
    responses(
        (status = 200, description = "Every flag of the environment, evaluated", body = BulkEvaluation,
            headers(("ETag" = String, description = "Covers the flag state and the context"))),
        (status = 304, description = "The client's copy (`If-None-Match`) is current",
            headers(("ETag" = String, description = "The current one"))),
        (status = 400, description = "`PARSE_ERROR` or `INVALID_CONTEXT`", body = OfrepErrorBody),
    ))]
pub async fn evaluate_flags(
    ctx: &AppContext,
    request: &ApiRequest,
) -> Result<ApiResponse, ApiError> {
    let env = environment(request).map_err(|e| e.into_api_error(None))?;
    let targeting_key = targeting_key(ctx, request)
        .await
        .map_err(|e| e.into_api_error(None))?;
    let (flags, overrides) = ctx
        .service
        .evaluation_inputs(&env, targeting_key.as_deref())
        .await?;
    let etag = etag(&env, targeting_key.as_deref(), &flags, &overrides);
    let mut response = if if_none_match(request, &etag) {
        ApiResponse::not_modified()
    } else {
        let context = EvaluationContext::new(targeting_key.as_deref(), &overrides);
        let evaluations: Vec<Evaluation> = flags
            .values()
            .map(|flag| evaluation(flag, context))
            .collect();
        ApiResponse::ok(&BulkEvaluation { flags: evaluations })
    };
    if let Ok(value) = HeaderValue::from_str(&etag) {
        response.headers.insert(header::ETAG, value);
    }
    Ok(response)
}

fn evaluation<'a>(flag: &'a Flag, context: EvaluationContext<'_>) -> Evaluation<'a> {
    let (value, reason) = evaluate_with_reason(flag, context);
    Evaluation {
        key: &flag.flag_key,
        value,
        variant: if value { "on" } else { "off" },
        reason: reason.as_str(),
        metadata: Metadata {
            environment: &flag.environment,
            rollout_percentage: flag.rollout_percentage,
        },
    }
}

/// A strong validator over everything the answer depends on: the environment, the targeting
/// key, every flag's state (with `updatedAt`, so any write to a flag changes it) and the caller's
/// overrides.
fn etag(
    env: &Environment,
    targeting_key: Option<&str>,
    flags: &FlagSet,
    overrides: &UserOverrides,
) -> String {
    let mut hash = Sha256::new();
    let mut field = |text: &str| {
        hash.update(text.as_bytes());
        hash.update([0]);
    };
    field(env.as_str());
    field(targeting_key.unwrap_or(""));
    for flag in flags.values() {
        field(&flag.flag_key);
        field(if flag.enabled { "1" } else { "0" });
        field(&flag.rollout_percentage.to_string());
        field(&flag.updated_at.as_datetime().timestamp_micros().to_string());
    }
    field("overrides");
    for (key, kind) in overrides {
        field(key);
        field(kind.as_str());
    }
    let digest = hash.finalize();
    let hex: String = digest[..16].iter().map(|b| format!("{b:02x}")).collect();
    format!("\"{hex}\"")
}

/// Whether `If-None-Match` names `etag` (or is `*`); a weak `W/` prefix compares equal.
fn if_none_match(request: &ApiRequest, etag: &str) -> bool {
    request
        .headers
        .get_all(header::IF_NONE_MATCH)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .map(|tag| tag.trim().trim_start_matches("W/"))
        .any(|tag| tag == etag || tag == "*")
}

/// An OFREP error before its flag key is attached.
struct OfrepError {
    status: StatusCode,
    code: &'static str,
    details: String,
}

impl OfrepError {
    fn new(status: StatusCode, code: &'static str, details: impl Into<String>) -> Self {
        Self {
            status,
            code,
            details: details.into(),
        }
    }

    fn invalid_context(details: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "INVALID_CONTEXT", details)
    }

    fn into_api_error(self, key: Option<&str>) -> ApiError {
        ApiError::Ofrep {
            status: self.status,
            key: key.map(str::to_owned),
            code: self.code,
            details: self.details,
        }
    }
}

/// The `environment` query parameter, else the `X-Environment` header, else `production`.
fn environment(request: &ApiRequest) -> Result<Environment, OfrepError> {
    let from_header = request
        .headers
        .get(ENVIRONMENT_HEADER)
        .and_then(|value| value.to_str().ok());
    let name = request
        .query_param("environment")
        .filter(|name| !name.is_empty())
        .or(from_header);
    Environment::parse_or_default(name).map_err(|e| OfrepError::invalid_context(e.0))
}

/// The context's `targetingKey`, else a valid bearer token's `sub`, else anonymous. The body is
/// `{"context": {...}}`; an empty body or a missing context is the anonymous context.
async fn targeting_key(
    ctx: &AppContext,
    request: &ApiRequest,
) -> Result<Option<String>, OfrepError> {
    let context = request_context(request)?;
    let from_context = match context.get("targetingKey") {
        None | Some(Value::Null) => None,
        Some(Value::String(key)) if key.is_empty() => None,
        Some(Value::String(key)) => Some(
            UserId::parse(key)
                .map_err(|e| OfrepError::invalid_context(format!("targetingKey: {}", e.0)))?
                .as_str()
                .to_owned(),
        ),
        Some(_) => {
            return Err(OfrepError::invalid_context("targetingKey must be a string"));
        }
    };
    if from_context.is_some() {
        return Ok(from_context);
    }
    let caller = optional_caller(ctx.verifier.as_ref(), request).await;
    Ok(caller.map(|caller| caller.sub))
}

fn request_context(request: &ApiRequest) -> Result<Map<String, Value>, OfrepError> {
    if request.body.iter().all(u8::is_ascii_whitespace) {
        return Ok(Map::new());
    }
    let body: Value = serde_json::from_slice(&request.body).map_err(|_| {
        OfrepError::new(
            StatusCode::BAD_REQUEST,
            "PARSE_ERROR",
            "Malformed JSON in request body",
        )
    })?;
    let Value::Object(mut body) = body else {
        return Err(OfrepError::new(
            StatusCode::BAD_REQUEST,
            "PARSE_ERROR",
            "The request body must be an object",
        ));
    };
    if let Some(unknown) = body.keys().find(|name| *name != "context") {
        return Err(OfrepError::new(
            StatusCode::BAD_REQUEST,
            "PARSE_ERROR",
            format!("Unrecognized key in the request body: '{unknown}'"),
        ));
    }
    match body.remove("context") {
        None | Some(Value::Null) => Ok(Map::new()),
        Some(Value::Object(context)) => Ok(context),
        Some(_) => Err(OfrepError::invalid_context("context must be an object")),
    }
}
