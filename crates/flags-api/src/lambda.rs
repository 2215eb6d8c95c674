//! The Lambda edge: API Gateway HTTP API (payload v2) events in, responses out. Each function
//! binary calls [`run`] with its route; everything is built during init, before the runtime
//! loop, and reused by every warm invocation.

use crate::api::{ApiRequest, ApiResponse};
use crate::context::AppContext;
use crate::handlers::handle;
use crate::routes::Route;
use bytes::Bytes;
use flags_core::telemetry::{self, LogFormat};
use lambda_http::request::RequestContext;
use lambda_http::{Body, LambdaEvent, Request, RequestExt, Response, service_fn};
use serde_json::Value;
use std::sync::Arc;

/// Init shared by every function: configuration, pools, Redis client, JWKS.
async fn init() -> Result<Arc<AppContext>, lambda_http::Error> {
    telemetry::init(LogFormat::Json);
    match AppContext::from_env().await {
        Ok(context) => Ok(Arc::new(context)),
        Err(error) => {
            // Fails the init phase with a message that names what is wrong, never a secret.
            tracing::error!(error = %error, "initialisation failed");
            Err(error.into())
        }
    }
}

/// Init, then the runtime loop of one HTTP route.
pub async fn run(route: Route) -> Result<(), lambda_http::Error> {
    let context = init().await?;
    lambda_http::run(service_fn(move |event: Request| {
        let context = context.clone();
        async move {
            Ok::<_, std::convert::Infallible>(into_lambda_response(
                handle(&context, route, into_api_request(event)).await,
            ))
        }
    }))
    .await
}

/// Why a sweep invocation failed; its `errorType` is the variant's name, for alarms and filters.
#[derive(Debug, thiserror::Error)]
pub enum SweepError {
    #[error("could not read the pending invalidations: {0}")]
    Database(#[from] flags_core::service::ServiceError),
    #[error("{0} environment(s) still owe a cache invalidation: Redis did not answer")]
    RedisUnavailable(u64),
}

impl From<SweepError> for lambda_http::lambda_runtime::Diagnostic {
    fn from(error: SweepError) -> Self {
        let error_type = match &error {
            SweepError::Database(_) => "DatabaseUnavailable",
            SweepError::RedisUnavailable(_) => "RedisUnavailable",
        };
        Self {
            error_type: error_type.to_owned(),
            error_message: error.to_string(),
        }
    }
}

/// Init, then the runtime loop of the scheduled sweeper (any event, e.g. EventBridge's). An
/// invalidation that fails again is an error of the invocation, so the function's error alarm
/// tells operators that caches are waiting on Redis.
pub async fn run_sweeper() -> Result<(), lambda_http::Error> {
    let context = init().await?;
    lambda_http::lambda_runtime::run(service_fn(move |_event: LambdaEvent<Value>| {
        let context = context.clone();
        async move {
            let report = context.service.sweep_pending_invalidations().await?;
            if report.failed > 0 {
                return Err(SweepError::RedisUnavailable(report.failed));
            }
            Ok(report)
        }
    }))
    .await
}

pub fn into_api_request(event: Request) -> ApiRequest {
    let path_params = event
        .path_parameters()
        .iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
    let query = event
        .query_string_parameters()
        .iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
    let authorizer_claims = match event.request_context_ref() {
        Some(RequestContext::ApiGatewayV2(context)) => context
            .authorizer
            .as_ref()
            .and_then(|a| a.jwt.as_ref())
            .map(|jwt| jwt.claims.clone()),
        _ => None,
    };
    let (parts, body) = event.into_parts();
    let body = match body {
        Body::Empty => Bytes::new(),
        Body::Text(text) => Bytes::from(text),
        Body::Binary(bytes) => Bytes::from(bytes),
        _ => Bytes::new(),
    };
    ApiRequest {
        method: parts.method,
        path: parts.uri.path().to_owned(),
        path_params,
        query,
        headers: parts.headers,
        body,
        authorizer_claims,
    }
}

pub fn into_lambda_response(response: ApiResponse) -> Response<Body> {
    let body = match &response.body {
        Some(value) => Body::Text(value.to_string()),
        None => Body::Empty,
    };
    let mut lambda_response = Response::new(body);
    *lambda_response.status_mut() = response.status;
    *lambda_response.headers_mut() = response.headers;
    lambda_response
}
