//! The quick tier (`make check`): every Lambda event under `events/` parsed by `lambda_http` as
//! the runtime parses it, translated by the Lambda edge and answered by `handle` in this
//! process, over an embedded SQLite database and the in-memory cache. No server, no emulator:
//! it catches a broken event, route, handler or body in seconds. The same events run against
//! the real binaries, PostgreSQL and Redis in `lambda_emulator.rs`.
#![allow(clippy::unwrap_used, clippy::expect_used)]
mod support;

use flags_api::auth::TokenVerifier;
use flags_api::handlers::handle;
use flags_api::lambda::{into_api_request, run_scheduled_work};
use flags_api::local_keys::{LOCAL_CLIENT_ID, LOCAL_ISSUER, LocalKeys};
use flags_api::{ApiError, ApiResponse, AppContext, Route};
use flags_core::Config;
use serde_json::{Value, json};
use std::collections::BTreeSet;
use support::{free_port, local_keys, unique, workspace_root};

/// The admin whose token the admin events carry here.
const ADMIN_SUB: &str = "a1b2c3d4-0000-1111-2222-admin0000001";

/// Every route's event, in an order where each finds what it needs (create before delete), with
/// the status it must get; the same order as the emulator tests.
const SEQUENCE: [(Route, u16); 18] = [
    (Route::Health, 200),
    (Route::GetFlags, 200),
    (Route::GetFlag, 200),
    (Route::OfrepEvaluateFlag, 200),
    (Route::OfrepEvaluateFlags, 200),
    (Route::OpenApi, 200),
    (Route::AdminListFlags, 200),
    (Route::AdminCreateFlag, 201),
    (Route::AdminUpdateFlag, 200),
    (Route::AdminUpsertOverride, 201),
    (Route::AdminListOverrides, 200),
    (Route::AdminDeleteOverride, 204),
    (Route::AdminDeleteFlag, 204),
    (Route::AdminInvalidateCache, 200),
    (Route::AdminAudit, 200),
    (Route::AdminCreateSchedule, 201),
    (Route::AdminListSchedules, 200),
    // No schedule has the event's id.
    (Route::AdminCancelSchedule, 404),
];

/// The event files that are no route: the `$default` route's function, the scheduled one and
/// the migrate function (`lambda_emulator.rs` runs that one against PostgreSQL).
const NOT_FOUND_EVENT: &str = "not-found";
const SCHEDULER_EVENT: &str = "apply-schedules";
const MIGRATE_EVENT: &str = "migrate";

fn event_text(function: &str) -> String {
    let path = workspace_root()
        .join("events")
        .join(format!("{function}.json"));
    std::fs::read_to_string(&path).unwrap()
}

/// The event as the Lambda runtime hands it to the function, with an admin's token on admin
/// routes.
fn lambda_request(route: Route, keys: &LocalKeys) -> lambda_http::Request {
    let mut event: Value = serde_json::from_str(&event_text(route.function_name())).unwrap();
    if route.is_admin() {
        let token = keys.mint(ADMIN_SUB, &["admin".to_owned()], 600).unwrap();
        event["headers"]["authorization"] = json!(format!("Bearer {token}"));
    }
    lambda_http::request::from_str(&event.to_string())
        .unwrap_or_else(|e| panic!("{}: not an API Gateway event: {e}", route.function_name()))
}

/// A migrated, seeded SQLite database in a folder of its own, with the in-memory cache.
async fn sqlite_context(keys: &LocalKeys) -> AppContext {
    let dir = std::env::temp_dir().join(unique("flags-in-process-"));
    std::fs::create_dir_all(&dir).unwrap();
    let config = Config::new(format!("sqlite://{}", dir.join("flags.db").display()), None);
    let context = AppContext::new(&config, &keys.auth_config()).await.unwrap();
    context.service.store().migrate().await.unwrap();
    flags_core::seed::seed(&context.service).await.unwrap();
    context
}

fn body(response: &ApiResponse) -> Value {
    response
        .body
        .as_deref()
        .map_or(Value::Null, |text| serde_json::from_str(text).unwrap())
}

#[tokio::test]
async fn every_route_event_is_answered_by_handle_over_sqlite_and_the_memory_cache() {
    let keys = local_keys();
    let context = sqlite_context(&keys).await;
    for (route, expected) in SEQUENCE {
        let request = into_api_request(lambda_request(route, &keys));
        let response = handle(&context, route, request).await;
        assert_eq!(
            response.status.as_u16(),
            expected,
            "{}: {}",
            route.function_name(),
            body(&response)
        );
    }
    // What the writes above left: the flag they created and deleted, in the audit log.
    let request = into_api_request(lambda_request(Route::AdminAudit, &keys));
    let audit = body(&handle(&context, Route::AdminAudit, request).await);
    let actions: Vec<&str> = audit["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|item| item["action"].as_str().unwrap())
        .collect();
    assert!(actions.contains(&"flag.deleted"), "{audit}");
}

#[tokio::test]
async fn every_event_file_is_a_route_the_default_route_or_the_scheduler() {
    let files: BTreeSet<String> = std::fs::read_dir(workspace_root().join("events"))
        .unwrap()
        .map(|entry| entry.unwrap().file_name().into_string().unwrap())
        .collect();
    let mut expected: BTreeSet<String> = SEQUENCE
        .iter()
        .map(|(route, _)| format!("{}.json", route.function_name()))
        .collect();
    assert_eq!(
        expected.len(),
        Route::ALL.len(),
        "the sequence has every route once"
    );
    expected.insert(format!("{NOT_FOUND_EVENT}.json"));
    expected.insert(format!("{SCHEDULER_EVENT}.json"));
    expected.insert(format!("{MIGRATE_EVENT}.json"));
    assert_eq!(files, expected);

    // The $default route's event parses, and no route matches it: the contract's 404.
    let request =
        into_api_request(lambda_http::request::from_str(&event_text(NOT_FOUND_EVENT)).unwrap());
    let path: Vec<String> = request
        .path
        .trim_start_matches('/')
        .split('/')
        .map(str::to_owned)
        .collect();
    assert_eq!(Route::match_path(&request.method, &path), None);
    let response = ApiError::RouteNotFound.into_response();
    assert_eq!(response.status.as_u16(), 404);
    assert_eq!(body(&response), json!({"error": "Not found"}));

    // The scheduler's event is EventBridge's, not HTTP: one pass of its work.
    let event: Value = serde_json::from_str(&event_text(SCHEDULER_EVENT)).unwrap();
    assert_eq!(event["detail-type"], "Scheduled Event");
    let context = sqlite_context(&local_keys()).await;
    let report = run_scheduled_work(&context).await.unwrap();
    assert_eq!(report.overdue_seconds, 0);
}

async fn health(context: &AppContext, keys: &LocalKeys) -> ApiResponse {
    let request = into_api_request(lambda_request(Route::Health, keys));
    handle(context, Route::Health, request).await
}

/// `/health` says whether admin tokens can be verified: the signing keys loaded (`up`), not
/// fetchable (`down`, and the service is degraded), or no verifier at all (`disabled`).
#[tokio::test]
async fn health_reports_whether_the_token_keys_are_loaded() {
    let keys = local_keys();
    let mut context = sqlite_context(&keys).await;
    let response = health(&context, &keys).await;
    assert_eq!(
        body(&response),
        json!({"status": "ok", "cache": "memory", "redis": "disabled", "database": "up", "auth": "up"})
    );

    // A JWKS endpoint that does not answer.
    context.verifier = Some(TokenVerifier::with_jwks_url(
        format!("http://127.0.0.1:{}/.well-known/jwks.json", free_port()),
        LOCAL_ISSUER.to_owned(),
        Some(LOCAL_CLIENT_ID.to_owned()),
    ));
    let response = health(&context, &keys).await;
    assert_eq!(response.status.as_u16(), 200);
    assert_eq!(
        body(&response),
        json!({"status": "degraded", "cache": "memory", "redis": "disabled", "database": "up", "auth": "down"})
    );

    context.verifier = None;
    let disabled = body(&health(&context, &keys).await);
    assert_eq!(disabled["auth"], "disabled");
    assert_eq!(disabled["status"], "ok");
}
