//! The Lambda edge: API Gateway HTTP API (payload v2) events in, responses out. Each function
//! binary calls [`main`] with its [`Function`], which runs on the runtime [`start`] builds;
//! everything is built during init (configuration from the environment and SSM, pools, JWKS),
//! before the runtime loop, and reused by every warm invocation.

use crate::api::{ApiError, ApiRequest};
use crate::auth::{JwksSource, TokenVerifier};
use crate::context::{AppContext, AuthConfig, InitError};
use crate::handlers::handle;
use crate::routes::Route;
use bytes::Bytes;
use flags_core::Config;
use flags_core::config::ConfigError;
use flags_core::domain::{ApplyReport, Timestamp};
use flags_core::service::SweepReport;
use flags_core::store::{FlagStore, StoreError};
use flags_core::telemetry::{self, LogFormat};
use flags_core::wiring::{WiringError, open_store};
use lambda_http::{Body, LambdaEvent, Request, RequestExt, service_fn};
use serde::Serialize;
use serde_json::{Value, json};
use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

/// What a function binary runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Function {
    /// One HTTP route.
    Route(Route),
    /// The HTTP API's `$default` route.
    NotFound,
    /// `GET /openapi.json`.
    OpenApi,
    /// The scheduled applier of flag schedules.
    Scheduler,
    /// The migrations, invoked by the pre-traffic hook and `make deploy`.
    Migrator,
}

/// The whole program of a function binary: its `main` only names the function. Not generic,
/// so the runtime, the handlers and the AWS SDK are compiled once, in this crate, instead of
/// once more in each of the 21 binaries.
pub fn main(function: Function) -> Result<(), lambda_http::Error> {
    start(async move {
        match function {
            Function::Route(route) => run(route).await,
            Function::NotFound => run_not_found().await,
            Function::OpenApi => run_openapi().await,
            Function::Scheduler => run_scheduler().await,
            Function::Migrator => run_migrator().await,
        }
    })
}

/// Runs a function's main future on a single-threaded Tokio runtime. An execution environment
/// handles one event at a time, so a second worker thread has nothing to do but be woken: with
/// one thread, the handler, the Redis and database drivers and the runtime loop never hand work
/// across threads, which shortens every warm invocation (`make lambdawarm`).
fn start(
    main: impl Future<Output = Result<(), lambda_http::Error>>,
) -> Result<(), lambda_http::Error> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(main)
}

/// The Lambda configuration: process environment and SSM; never `.env` files.
async fn context_from_env() -> Result<AppContext, InitError> {
    let lookup = |name: &str| std::env::var(name).ok();
    let get = |name: &str| lookup(name).filter(|v| !v.trim().is_empty());
    let jwks_parameter = get("COGNITO_JWKS_SSM_PARAMETER");
    let names = [
        "DATABASE_URL_SSM_PARAMETER",
        "REDIS_URL_SSM_PARAMETER",
        "COGNITO_JWKS_SSM_PARAMETER",
    ];
    let mut parameters =
        Parameters::read(names.iter().filter_map(|name| get(name)).collect()).await?;
    let (database_url, redis_url) = resolve_urls(&get, &mut parameters)?;
    let config = Config::new(database_url, redis_url).with_env_overrides(lookup)?;
    let auth = AuthConfig::from_env(&lookup)?;
    let verifier = match jwks_parameter {
        Some(name) => Some(published_jwks_verifier(&auth, name, &mut parameters)?),
        None => auth.verifier()?,
    };
    AppContext::with_verifier(&config, verifier).await
}

/// The database and Redis URLs, from their SSM SecureString parameters when their names are
/// configured, else from the environment.
fn resolve_urls(
    get: &impl Fn(&str) -> Option<String>,
    parameters: &mut Parameters,
) -> Result<(String, Option<String>), InitError> {
    let database_url = required_url(
        get,
        parameters,
        "DATABASE_URL",
        "DATABASE_URL_SSM_PARAMETER",
    )?;
    let redis_url = match get("REDIS_URL_SSM_PARAMETER") {
        Some(name) => match parameters.values.remove(&name) {
            Some(value) => Some(value),
            None => {
                // Removing the parameter is the documented emergency fallback to the in-memory cache.
                tracing::warn!(parameter = %name, "Redis URL parameter not found; using the in-memory cache");
                None
            }
        },
        None => get("REDIS_URL"),
    };
    Ok((database_url, redis_url))
}

/// A Cognito verifier over the copy of the pool's JWKS published in the parameter `name`
/// (`COGNITO_JWKS_SSM_PARAMETER`): a user pool with a domain does not serve its JWKS through
/// the cognito-idp VPC endpoint. The copy read at init is used at once; the parameter is read
/// again when a token names a key the copy lacks.
fn published_jwks_verifier(
    auth: &AuthConfig,
    name: String,
    parameters: &mut Parameters,
) -> Result<TokenVerifier, InitError> {
    let AuthConfig::Cognito {
        region,
        user_pool_id,
        client_id,
    } = auth
    else {
        return Err(ConfigError::new(
            "COGNITO_JWKS_SSM_PARAMETER",
            "requires COGNITO_USER_POOL_ID (the pool whose JWKS it holds)",
        )
        .into());
    };
    let (Some(published), Some(client)) =
        (parameters.values.remove(&name), parameters.client.clone())
    else {
        return Err(InitError::MissingParameter(name));
    };
    let source = SsmJwks {
        client,
        name: name.clone(),
    };
    TokenVerifier::cognito_with_source(
        region,
        user_pool_id,
        client_id.clone(),
        &published,
        Box::new(source),
    )
    .map_err(|error| InitError::PublishedJwks {
        parameter: name,
        message: error.to_string(),
    })
}

/// The published JWKS, read again from its parameter after a key rotation.
#[derive(Debug)]
struct SsmJwks {
    client: aws_sdk_ssm::Client,
    name: String,
}

impl JwksSource for SsmJwks {
    fn read(&self) -> Pin<Box<dyn Future<Output = Result<String, String>> + Send + '_>> {
        Box::pin(async move {
            let output = self
                .client
                .get_parameter()
                .name(&self.name)
                .send()
                .await
                .map_err(|e| aws_sdk_ssm::error::DisplayErrorContext(e).to_string())?;
            output
                .parameter()
                .and_then(|parameter| parameter.value())
                .map(str::to_owned)
                .ok_or_else(|| format!("{} has no value", self.name))
        })
    }
}

/// Parameters read at init, by name, decrypted, in one `GetParameters` call (none for no
/// name); a parameter that does not exist is absent. The client stays for later reads.
struct Parameters {
    client: Option<aws_sdk_ssm::Client>,
    values: HashMap<String, String>,
}

impl Parameters {
    async fn read(names: Vec<String>) -> Result<Self, InitError> {
        let mut values = HashMap::new();
        if names.is_empty() {
            return Ok(Self {
                client: None,
                values,
            });
        }
        let sdk = aws_config::load_defaults(aws_config::BehaviorVersion::latest()).await;
        let client = aws_sdk_ssm::Client::new(&sdk);
        let output = client
            .get_parameters()
            .set_names(Some(names))
            .with_decryption(true)
            .send()
            .await
            .map_err(|e| InitError::Ssm(aws_sdk_ssm::error::DisplayErrorContext(e).to_string()))?;
        for parameter in output.parameters() {
            if let (Some(name), Some(value)) = (parameter.name(), parameter.value()) {
                values.insert(name.to_owned(), value.to_owned());
            }
        }
        Ok(Self {
            client: Some(client),
            values,
        })
    }
}

/// A URL that must be configured: the parameter that `parameter_variable` names (read into
/// `parameters`), else the environment variable `variable`.
fn required_url(
    get: &impl Fn(&str) -> Option<String>,
    parameters: &mut Parameters,
    variable: &'static str,
    parameter_variable: &'static str,
) -> Result<String, InitError> {
    match get(parameter_variable) {
        Some(name) => parameters
            .values
            .remove(&name)
            .ok_or(InitError::MissingParameter(name)),
        None => get(variable).ok_or_else(|| {
            ConfigError::new(variable, format!("set {variable} or {parameter_variable}")).into()
        }),
    }
}

/// Init shared by every function: configuration, pools, Redis client, JWKS.
async fn init() -> Result<Arc<AppContext>, lambda_http::Error> {
    telemetry::init(LogFormat::Json);
    match context_from_env().await {
        Ok(context) => Ok(Arc::new(context)),
        Err(error) => {
            // Fails the init phase with a message that names what is wrong, never a secret.
            tracing::error!(error = %error, "initialisation failed");
            Err(error.into())
        }
    }
}

/// Init, then the runtime loop of one HTTP route.
async fn run(route: Route) -> Result<(), lambda_http::Error> {
    let context = init().await?;
    lambda_http::run(service_fn(move |event: Request| {
        let context = context.clone();
        async move {
            let response = handle(&context, route, into_api_request(event)).await;
            if response.status.is_server_error() {
                emit_server_error_metric();
            }
            Ok::<_, std::convert::Infallible>(response.into_http::<Body>())
        }
    }))
    .await
}

/// The runtime loop of the `$default` route: a request that matches no route gets the
/// contract's 404 body instead of API Gateway's own `{"message":"Not Found"}`.
async fn run_not_found() -> Result<(), lambda_http::Error> {
    run_without_io("no route", || ApiError::RouteNotFound.into_response()).await
}

/// The runtime loop of `GET /openapi.json`: the document is built in.
async fn run_openapi() -> Result<(), lambda_http::Error> {
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

/// `OverdueScheduleSeconds`, which the template's overdue alarm watches.
fn emit_overdue_metric(seconds: u64) {
    emit_metric(
        "OverdueScheduleSeconds",
        "Seconds",
        seconds,
        &[Dimension::FunctionName],
    );
}

/// `ServerErrorResponses` of this function version: a handler that turns a failure into a 5xx
/// answer is no Lambda error, so the canary's errors alarm counts these with the version's
/// `Errors`.
fn emit_server_error_metric() {
    emit_metric(
        "ServerErrorResponses",
        "Count",
        1,
        &[Dimension::FunctionName, Dimension::ExecutedVersion],
    );
}

/// A metric dimension whose value is the running function's.
#[derive(Debug, Clone, Copy)]
enum Dimension {
    FunctionName,
    ExecutedVersion,
}

impl Dimension {
    fn name(self) -> &'static str {
        match self {
            Self::FunctionName => "FunctionName",
            Self::ExecutedVersion => "ExecutedVersion",
        }
    }

    /// From Lambda's environment.
    fn value(self) -> String {
        let variable = match self {
            Self::FunctionName => "AWS_LAMBDA_FUNCTION_NAME",
            Self::ExecutedVersion => "AWS_LAMBDA_FUNCTION_VERSION",
        };
        std::env::var(variable).unwrap_or_default()
    }
}

/// Writes one metric as a CloudWatch Embedded Metric Format line (namespace `FeatureFlags`):
/// Lambda's log stream turns it into a metric, with no API call from the function.
fn emit_metric(name: &str, unit: &str, value: u64, dimensions: &[Dimension]) {
    let names: Vec<&str> = dimensions.iter().map(|d| d.name()).collect();
    let mut line = json!({
        "_aws": {
            "Timestamp": Timestamp::now().as_datetime().timestamp_millis(),
            "CloudWatchMetrics": [{
                "Namespace": "FeatureFlags",
                "Dimensions": [names],
                "Metrics": [{"Name": name, "Unit": unit}],
            }],
        },
        name: value,
    });
    for dimension in dimensions {
        line[dimension.name()] = json!(dimension.value());
    }
    println!("{line}");
}

/// Init, then the runtime loop of the scheduled function (any event, e.g. EventBridge's).
async fn run_scheduler() -> Result<(), lambda_http::Error> {
    let context = init().await?;
    lambda_http::lambda_runtime::run(service_fn(move |_event: LambdaEvent<Value>| {
        let context = context.clone();
        async move { run_scheduled_work(&context).await }
    }))
    .await
}

/// What one migrate invocation did: the schema is at this migration's version.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct MigrationReport {
    pub schema_version: i64,
}

/// A migration that did not apply; the invocation fails with it.
#[derive(Debug, thiserror::Error)]
#[error("the migrations did not apply: {0}")]
pub struct MigrationFailed(#[from] StoreError);

impl From<MigrationFailed> for lambda_http::lambda_runtime::Diagnostic {
    fn from(error: MigrationFailed) -> Self {
        Self {
            error_type: "MigrationFailed".to_owned(),
            error_message: error.to_string(),
        }
    }
}

/// The store the migrate function writes the schema with: the login of its own parameter
/// (`MIGRATION_DATABASE_URL_SSM_PARAMETER`, or `MIGRATION_DATABASE_URL`), which may create
/// tables; the service's own login need not.
async fn migration_store() -> Result<Arc<dyn FlagStore>, InitError> {
    let lookup = |name: &str| std::env::var(name).ok().filter(|v| !v.trim().is_empty());
    let names = lookup("MIGRATION_DATABASE_URL_SSM_PARAMETER");
    let mut parameters = Parameters::read(names.into_iter().collect()).await?;
    let url = required_url(
        &lookup,
        &mut parameters,
        "MIGRATION_DATABASE_URL",
        "MIGRATION_DATABASE_URL_SSM_PARAMETER",
    )?;
    Ok(open_store(&url, 1).map_err(WiringError::from)?)
}

/// Init, then the runtime loop of the migrate function (any event): each invocation applies the
/// pending migrations. An applied migration is skipped, and concurrent invocations wait on the
/// migrator's lock in PostgreSQL, so the hook may run it for every function it gates.
async fn run_migrator() -> Result<(), lambda_http::Error> {
    telemetry::init(LogFormat::Json);
    let store = match migration_store().await {
        Ok(store) => store,
        Err(error) => {
            tracing::error!(error = %error, "initialisation failed");
            return Err(error.into());
        }
    };
    lambda_http::lambda_runtime::run(service_fn(move |_event: LambdaEvent<Value>| {
        let store = store.clone();
        async move {
            let schema_version = store.migrate().await?;
            tracing::info!(schema_version, "migrations applied");
            Ok::<_, MigrationFailed>(MigrationReport { schema_version })
        }
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
