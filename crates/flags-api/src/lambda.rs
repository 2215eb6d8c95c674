//! The Lambda edge: API Gateway HTTP API (payload v2) events in, responses out. Each function
//! binary calls [`run`] with its route, on the runtime [`start`] builds; everything is built
//! during init, before the runtime loop, and reused by every warm invocation.

use crate::api::{ApiError, ApiRequest};
use crate::context::AppContext;
use crate::handlers::handle;
use crate::routes::Route;
use bytes::Bytes;
use flags_core::domain::{ApplyReport, Timestamp};
use flags_core::service::SweepReport;
use flags_core::telemetry::{self, LogFormat};
use lambda_http::{Body, LambdaEvent, Request, RequestExt, service_fn};
use serde::Serialize;
use serde_json::{Value, json};
use std::future::Future;
use std::sync::Arc;

/// Runs a function's main future on a single-threaded Tokio runtime. An execution environment
/// handles one event at a time, so a second worker thread has nothing to do but be woken: with
/// one thread, the handler, the Redis and database drivers and the runtime loop never hand work
/// across threads, which shortens every warm invocation (`make lambdawarm`).
pub fn start(
    main: impl Future<Output = Result<(), lambda_http::Error>>,
) -> Result<(), lambda_http::Error> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(main)
}

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
            Ok::<_, std::convert::Infallible>(
                handle(&context, route, into_api_request(event))
                    .await
                    .into_http::<Body>(),
            )
        }
    }))
    .await
}

/// The runtime loop of the `$default` route: a request that matches no route gets the
/// contract's 404 body instead of API Gateway's own `{"message":"Not Found"}`.
pub async fn run_not_found() -> Result<(), lambda_http::Error> {
    run_without_io("no route", || ApiError::RouteNotFound.into_response()).await
}

/// The runtime loop of `GET /openapi.json`: the document is built in.
pub async fn run_openapi() -> Result<(), lambda_http::Error> {
    run_without_io("openapi", crate::handlers::openapi_document).await
}

/// A function that reads no configuration and opens no connection, so that it cannot fail for
/// want of either: every request gets `answer()`.
async fn run_without_io(
    what: &'static str,
    answer: fn() -> crate::api::ApiResponse,
) -> Result<(), lambda_http::Error> {
    telemetry::init(LogFormat::Json);
    lambda_http::run(service_fn(move |event: Request| async move {
        let response = answer();
        tracing::info!(method = %event.method(), path = event.uri().path(), status = response.status.as_u16(), "{what}");
        Ok::<_, std::convert::Infallible>(response.into_http::<Body>())
    }))
    .await
}

/// Why a scheduled invocation failed; its `errorType` is the variant's name, for alarms and
/// log filters.
#[derive(Debug, thiserror::Error)]
pub enum SchedulerError {
    #[error("the database did not answer: {0}")]
    Database(#[from] flags_core::service::ServiceError),
    #[error("{0} environment(s) still owe a cache invalidation: Redis did not answer")]
    RedisUnavailable(u64),
}

impl From<SchedulerError> for lambda_http::lambda_runtime::Diagnostic {
    fn from(error: SchedulerError) -> Self {
        let error_type = match &error {
            SchedulerError::Database(_) => "DatabaseUnavailable",
            SchedulerError::RedisUnavailable(_) => "RedisUnavailable",
        };
        Self {
            error_type: error_type.to_owned(),
            error_message: error.to_string(),
        }
    }
}

/// What one scheduled invocation did: the applier pass, then the invalidation sweep.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SchedulerReport {
    #[serde(flatten)]
    pub schedules: ApplyReport,
    /// How late the most overdue schedule still waiting is (0 when none), in seconds.
    pub overdue_seconds: u64,
    pub invalidations: SweepReport,
}

/// One scheduled invocation: applies the due schedules (contract §2.6), reports how overdue the
/// rest are, then completes the pending invalidations (§3.1). A sweep that still cannot reach
/// Redis fails the invocation, so the function's error alarm tells operators that caches wait.
pub async fn run_scheduled_work(context: &AppContext) -> Result<SchedulerReport, SchedulerError> {
    let schedules = context.service.apply_due_schedules().await?;
    let overdue_seconds = context.service.overdue_seconds(Timestamp::now()).await?;
    emit_overdue_metric(overdue_seconds);
    let invalidations = context.service.sweep_pending_invalidations().await?;
    if invalidations.failed > 0 {
        return Err(SchedulerError::RedisUnavailable(invalidations.failed));
    }
    Ok(SchedulerReport {
        schedules,
        overdue_seconds,
        invalidations,
    })
}

/// Writes `OverdueScheduleSeconds` as a CloudWatch Embedded Metric Format line: Lambda's log
/// stream turns it into a metric, which the template's overdue alarm watches.
fn emit_overdue_metric(seconds: u64) {
    let function = std::env::var("AWS_LAMBDA_FUNCTION_NAME").unwrap_or_default();
    let line = json!({
        "_aws": {
            "Timestamp": Timestamp::now().as_datetime().timestamp_millis(),
            "CloudWatchMetrics": [{
                "Namespace": "FeatureFlags",
                "Dimensions": [["FunctionName"]],
                "Metrics": [{"Name": "OverdueScheduleSeconds", "Unit": "Seconds"}],
            }],
        },
        "FunctionName": function,
        "OverdueScheduleSeconds": seconds,
    });
    println!("{line}");
}

/// Init, then the runtime loop of the scheduled function (any event, e.g. EventBridge's).
pub async fn run_scheduler() -> Result<(), lambda_http::Error> {
    let context = init().await?;
    lambda_http::lambda_runtime::run(service_fn(move |_event: LambdaEvent<Value>| {
        let context = context.clone();
        async move { run_scheduled_work(&context).await }
    }))
    .await
}

/// The API Gateway event as the handlers see it: API Gateway already decoded the path
/// parameters and the query.
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
    let (parts, body) = event.into_parts();
    let body = match body {
        Body::Empty => Bytes::new(),
        Body::Text(text) => Bytes::from(text),
        Body::Binary(bytes) => Bytes::from(bytes),
        _ => Bytes::new(),
    };
    ApiRequest::from_parts(parts, path_params, query, body)
}
