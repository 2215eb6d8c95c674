//! The real release Lambda binaries under a Lambda runtime emulator (`cargo lambda watch
//! --only-lambda-apis`), fed the events in `events/`: every route function with Redis up, with
//! Redis down, without `REDIS_URL`, and with the URLs in a local SSM emulator (AC5, AC16); the
//! scheduled `apply-schedules` function (contract §2.6, and the §3.1 sweep it also runs) in the
//! same three cases. Cargo builds
//! the binaries for this test in the test's own profile: `make test` runs it with `--release`.
#![allow(clippy::unwrap_used, clippy::expect_used)]
mod support;

use flags_testkit::emulator::{self, emulator_command, wait_for_port};
use fred::prelude::KeysInterface;
use reqwest::StatusCode;
use serde_json::{Value, json};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;
use support::{
    empty_postgres_url, free_port, insert_pending, local_keys, pending_rows, postgres,
    redis_client, redis_url, seeded_postgres_url, tool, unique, workspace_root,
};

/// The admin whose token the tests put into the admin events (`events/admin-*.json`).
const ADMIN_SUB: &str = "a1b2c3d4-0000-1111-2222-admin0000001";

/// Kills the process when dropped, so a failing assertion leaves nothing running.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The function binaries of this package, built by Cargo for this test in the test's profile.
fn release_binary(function: &str) -> &'static str {
    match function {
        "get-flags" => env!("CARGO_BIN_EXE_get-flags"),
        "get-flag" => env!("CARGO_BIN_EXE_get-flag"),
        "health" => env!("CARGO_BIN_EXE_health"),
        "admin-list-flags" => env!("CARGO_BIN_EXE_admin-list-flags"),
        "admin-create-flag" => env!("CARGO_BIN_EXE_admin-create-flag"),
        "admin-update-flag" => env!("CARGO_BIN_EXE_admin-update-flag"),
        "admin-delete-flag" => env!("CARGO_BIN_EXE_admin-delete-flag"),
        "admin-upsert-override" => env!("CARGO_BIN_EXE_admin-upsert-override"),
        "admin-delete-override" => env!("CARGO_BIN_EXE_admin-delete-override"),
        "admin-list-overrides" => env!("CARGO_BIN_EXE_admin-list-overrides"),
        "admin-invalidate-cache" => env!("CARGO_BIN_EXE_admin-invalidate-cache"),
        "admin-audit" => env!("CARGO_BIN_EXE_admin-audit"),
        "admin-create-schedule" => env!("CARGO_BIN_EXE_admin-create-schedule"),
        "admin-list-schedules" => env!("CARGO_BIN_EXE_admin-list-schedules"),
        "admin-cancel-schedule" => env!("CARGO_BIN_EXE_admin-cancel-schedule"),
        "apply-schedules" => env!("CARGO_BIN_EXE_apply-schedules"),
        "migrate" => env!("CARGO_BIN_EXE_migrate"),
        "not-found" => env!("CARGO_BIN_EXE_not-found"),
        "ofrep-evaluate-flag" => env!("CARGO_BIN_EXE_ofrep-evaluate-flag"),
        "ofrep-evaluate-flags" => env!("CARGO_BIN_EXE_ofrep-evaluate-flags"),
        "openapi" => env!("CARGO_BIN_EXE_openapi"),
        other => panic!("no function binary named {other}"),
    }
}

fn event(function: &str) -> Value {
    let path = workspace_root()
        .join("events")
        .join(format!("{function}.json"));
    serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap()
}

/// `event` with its `Authorization` header set to `value`, or removed (`None`).
fn with_authorization(mut event: Value, value: Option<String>) -> Value {
    let headers = event["headers"].as_object_mut().unwrap();
    match value {
        Some(value) => headers.insert("authorization".to_owned(), Value::String(value)),
        None => headers.remove("authorization"),
    };
    event
}

/// The environment of a function that verifies tokens against `keys`' JWKS file.
fn auth_env(keys: &flags_api::local_keys::LocalKeys) -> Vec<(&'static str, String)> {
    vec![
        ("AUTH_JWKS_FILE", keys.jwks_path().display().to_string()),
        (
            "AUTH_ISSUER",
            flags_api::local_keys::LOCAL_ISSUER.to_owned(),
        ),
        (
            "AUTH_CLIENT_ID",
            flags_api::local_keys::LOCAL_CLIENT_ID.to_owned(),
        ),
    ]
}

/// The Lambda runtime emulator on a spare port, with only its runtime and invoke APIs.
fn start_emulator() -> (Running, u16) {
    let port = free_port();
    let emulator = emulator_command(&tool("CARGO_LAMBDA", "cargo-lambda"), port)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("cargo-lambda runs");
    let emulator = Running(emulator);
    wait_for_port(port).expect("the emulator starts");
    (emulator, port)
}

/// A function binary pointed at the emulator, with a clean environment (as in Lambda).
fn function_command(function: &str, port: u16) -> Command {
    emulator::function_command(Path::new(release_binary(function)), port)
}

/// What the emulator's invoke API answered: 200 with the function's result, or (an error
/// invocation) 500 with `{"errorType","errorMessage"}`.
struct Invocation {
    status: StatusCode,
    payload: Value,
}

/// The emulator and one function binary attached to it: the first invocation is the cold start,
/// the next ones are warm invocations of the same process. The function's logs go to a file.
struct Lambda {
    function: String,
    port: u16,
    client: reqwest::Client,
    logs: PathBuf,
    // Dropped in this order: the function, then the emulator.
    _function: Running,
    _emulator: Running,
}

impl Lambda {
    fn start(function: &str, env: &[(&str, String)]) -> Self {
        let (emulator, port) = start_emulator();
        let logs = std::env::temp_dir().join(format!("{}.log", unique("flags-lambda-")));
        let file = std::fs::File::create(&logs).unwrap();
        let mut command = function_command(function, port);
        command
            .stdout(file.try_clone().unwrap())
            .stderr(file)
            .envs(env.iter().map(|(k, v)| (k, v)));
        let process = Running(command.spawn().expect("function binary starts"));
        Self {
            function: function.to_owned(),
            port,
            client: reqwest::Client::new(),
            logs,
            _function: process,
            _emulator: emulator,
        }
    }

    async fn invoke(&self, event: &Value) -> Invocation {
        let response = self
            .client
            .post(emulator::invoke_url(self.port))
            .json(event)
            .timeout(Duration::from_secs(30))
            .send()
            .await
            .unwrap_or_else(|e| panic!("{}: invoke failed: {e}\n{}", self.function, self.logs()));
        let status = response.status();
        let text = response.text().await.unwrap();
        let payload = serde_json::from_str(&text).unwrap_or_else(|e| {
            panic!(
                "{}: the emulator answered {status} with no JSON ({e}): {text}\n{}",
                self.function,
                self.logs()
            )
        });
        Invocation { status, payload }
    }

    /// An invocation that must succeed; its result.
    async fn invoke_ok(&self, event: &Value) -> Value {
        let invocation = self.invoke(event).await;
        assert_eq!(
            invocation.status,
            StatusCode::OK,
            "{}: the invocation failed: {}\n{}",
            self.function,
            invocation.payload,
            self.logs()
        );
        invocation.payload
    }

    /// What the function logged so far (one JSON object per line).
    fn logs(&self) -> String {
        std::fs::read_to_string(&self.logs).unwrap_or_default()
    }
}

impl Drop for Lambda {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.logs);
    }
}

/// Starts the emulator and the function binary, sends `events`, returns the function's results.
async fn invoke(function: &str, env: &[(&str, String)], events: Vec<Value>) -> Vec<Value> {
    let lambda = Lambda::start(function, env);
    let mut results = Vec::new();
    for event in &events {
        results.push(lambda.invoke_ok(event).await);
    }
    results
}

fn status(response: &Value) -> i64 {
    response["statusCode"].as_i64().unwrap_or_default()
}

fn body(response: &Value) -> Value {
    serde_json::from_str(response["body"].as_str().unwrap_or("null")).unwrap_or(Value::Null)
}

/// Every route function, in an order where each event finds what it needs (create before
/// delete), the audit log last so that it sees every write before it.
const SEQUENCE: [(&str, i64); 17] = [
    ("health", 200),
    ("get-flags", 200),
    ("get-flag", 200),
    ("ofrep-evaluate-flag", 200),
    ("ofrep-evaluate-flags", 200),
    ("admin-list-flags", 200),
    ("admin-create-flag", 201),
    ("admin-update-flag", 200),
    ("admin-upsert-override", 201),
    ("admin-list-overrides", 200),
    ("admin-delete-override", 204),
    ("admin-delete-flag", 204),
    ("admin-invalidate-cache", 200),
    ("admin-audit", 200),
    // After the audit check: creating a schedule writes an audit row but owes the cache nothing.
    ("admin-create-schedule", 201),
    ("admin-list-schedules", 200),
    ("admin-cancel-schedule", 404),
];

/// Writes of `SEQUENCE` that succeed (each function is invoked twice: the second create is a 409,
/// the second deletes are 404s): each leaves one audit row and one pending invalidation.
const SUCCESSFUL_WRITES: usize = 7;

/// The audit rows of `production` after `SEQUENCE`, newest first: (action, flag, by the admin).
/// The five oldest are the seed's, written without an actor.
const PRODUCTION_AUDIT: [(&str, &str, bool); 12] = [
    ("flag.deleted", "checkout-v2", true),
    ("override.deleted", "wishlist-gallery", true),
    ("override.upserted", "wishlist-gallery", true),
    ("override.upserted", "wishlist-gallery", true),
    ("flag.updated", "wishlist-gallery", true),
    ("flag.updated", "wishlist-gallery", true),
    ("flag.created", "checkout-v2", true),
    ("flag.created", "wishlist-reorder", false),
    ("flag.created", "wishlist-got-it", false),
    ("flag.created", "wishlist-edit-item", false),
    ("flag.created", "wishlist-add-item", false),
    ("flag.created", "wishlist-gallery", false),
];

/// `events/admin-audit.json` without its `environment` filter: every environment's rows.
fn audit_of_every_environment(mut event: Value) -> Value {
    event["rawQueryString"] = Value::String("page=1&pageSize=20".to_owned());
    event["queryStringParameters"]
        .as_object_mut()
        .unwrap()
        .remove("environment");
    event
}

/// The audit page of `production` the first `admin-audit` invocation answered.
fn assert_production_audit(page: &Value) {
    assert_eq!(
        page["pagination"],
        json!({"page": 1, "pageSize": 20, "total": PRODUCTION_AUDIT.len()}),
        "{page}"
    );
    let items = page["items"].as_array().unwrap();
    assert_eq!(items.len(), PRODUCTION_AUDIT.len(), "{page}");
    for (item, (action, flag_key, by_admin)) in items.iter().zip(PRODUCTION_AUDIT) {
        assert_eq!(item["action"], action, "{item}");
        assert_eq!(item["flagKey"], flag_key, "{item}");
        assert_eq!(item["environment"], "production", "{item}");
        let actor = if by_admin {
            json!({"sub": ADMIN_SUB})
        } else {
            Value::Null
        };
        assert_eq!(item["actor"], actor, "{item}");
        let at = item["at"].as_str().unwrap();
        assert!(
            at.len() == 24 && at.ends_with('Z') && chrono::DateTime::parse_from_rfc3339(at).is_ok(),
            "{item}"
        );
    }
    // Newest first: ids strictly decrease, timestamps never increase.
    for pair in items.windows(2) {
        assert!(pair[0]["id"].as_i64() > pair[1]["id"].as_i64(), "{page}");
        assert!(
            pair[0]["at"].as_str().unwrap() >= pair[1]["at"].as_str().unwrap(),
            "{page}"
        );
    }
    // What each change was, from its before and after.
    let deleted_flag = &items[0];
    assert_eq!(deleted_flag["before"]["flagKey"], "checkout-v2");
    assert_eq!(deleted_flag["before"]["rolloutPercentage"], 10);
    assert_eq!(deleted_flag["after"], Value::Null);
    let deleted_override = &items[1];
    assert_eq!(deleted_override["before"]["userId"], "user-123");
    assert_eq!(deleted_override["before"]["overrideType"], "include");
    assert_eq!(deleted_override["after"], Value::Null);
    let (replaced, created) = (&items[2], &items[3]);
    assert_eq!(replaced["before"]["userId"], "user-123", "{replaced}");
    assert_eq!(replaced["after"]["userId"], "user-123", "{replaced}");
    assert_eq!(created["before"], Value::Null, "{created}");
    assert_eq!(created["after"]["userId"], "user-123", "{created}");
    assert_eq!(created["after"]["overrideType"], "include", "{created}");
    assert_eq!(created["after"]["reason"], "Beta tester", "{created}");
    assert_eq!(created["after"]["createdBy"], ADMIN_SUB, "{created}");
    let (second_update, first_update) = (&items[4], &items[5]);
    assert_eq!(first_update["before"]["rolloutPercentage"], 100);
    assert_eq!(first_update["after"]["rolloutPercentage"], 75);
    assert_eq!(second_update["before"]["rolloutPercentage"], 75);
    assert_eq!(second_update["after"]["rolloutPercentage"], 75);
    let created_flag = &items[6];
    assert_eq!(created_flag["before"], Value::Null);
    assert_eq!(
        (
            &created_flag["after"]["flagKey"],
            &created_flag["after"]["enabled"],
            &created_flag["after"]["rolloutPercentage"]
        ),
        (&json!("checkout-v2"), &json!(true), &json!(10)),
        "{created_flag}"
    );
    for seeded in &items[7..] {
        assert_eq!(seeded["before"], Value::Null, "{seeded}");
        assert_eq!(seeded["after"]["environment"], "production", "{seeded}");
    }
}

/// The unfiltered audit page (second, warm `admin-audit` invocation): the two invalidate-all
/// rows (no environment) newest, then the production rows as above among the development seed's.
fn assert_audit_of_every_environment(page: &Value, production: &Value, invalidations: &[Value]) {
    // production's rows, both invalidate-all calls, and the five flags seeded in development.
    let total = PRODUCTION_AUDIT.len() + 2 + 5;
    assert_eq!(
        page["pagination"],
        json!({"page": 1, "pageSize": 20, "total": total}),
        "{page}"
    );
    let items = page["items"].as_array().unwrap();
    assert_eq!(items.len(), total, "{page}");
    // Newest first: the warm invalidate-all call, then the cold one.
    for (item, response) in items[..2].iter().zip(invalidations.iter().rev()) {
        assert_eq!(item["action"], "cache.invalidated", "{item}");
        assert_eq!(item["environment"], Value::Null, "{item}");
        assert_eq!(item["flagKey"], Value::Null, "{item}");
        assert_eq!(item["actor"], json!({"sub": ADMIN_SUB}), "{item}");
        assert_eq!(item["before"], Value::Null, "{item}");
        assert_eq!(&item["after"], response, "{item}");
    }
    let in_production: Vec<&Value> = items
        .iter()
        .filter(|i| i["environment"] == "production")
        .collect();
    let expected: Vec<&Value> = production["items"].as_array().unwrap().iter().collect();
    assert_eq!(in_production, expected);
    let in_development: Vec<&Value> = items
        .iter()
        .filter(|i| i["environment"] == "development")
        .collect();
    assert_eq!(in_development.len(), 5, "{page}");
    assert!(
        in_development
            .iter()
            .all(|i| i["action"] == "flag.created" && i["actor"] == Value::Null),
        "{page}"
    );
}

async fn every_function_answers(redis: Option<String>, expected_redis: &str) {
    let redis_down = expected_redis == "down";
    let database_url = seeded_postgres_url().await;
    let keys = local_keys();
    let mut env = auth_env(&keys);
    env.push(("DATABASE_URL", database_url.clone()));
    if let Some(url) = redis {
        env.push(("REDIS_URL", url));
    }
    let admin_token = keys.mint(ADMIN_SUB, &["admin".to_owned()], 600).unwrap();
    let mut bodies: HashMap<&str, Vec<Value>> = HashMap::new();
    for (function, expected) in SEQUENCE {
        let mut events = vec![event(function), event(function)];
        if function.starts_with("admin-") {
            // The handler verifies the admin's token itself (no API Gateway authorizer).
            for event in &mut events {
                *event = with_authorization(event.take(), Some(format!("Bearer {admin_token}")));
            }
        }
        if function == "get-flags" {
            // The same event with a token minted for user-123, who is later given an override.
            let token = keys.mint("user-123", &[], 600).unwrap();
            events[1]["headers"]["authorization"] = Value::String(format!("Bearer {token}"));
        }
        if function == "admin-audit" {
            events[1] = audit_of_every_environment(events[1].clone());
        }
        // The first invocation is the cold start, the second a warm one on the same process.
        let lambda = Lambda::start(function, &env);
        let mut responses = Vec::new();
        for event in &events {
            responses.push(lambda.invoke_ok(event).await);
        }
        for response in &responses {
            let code = status(response);
            let ok = code == expected
                || (function == "admin-create-flag" && code == 409)
                || (function.starts_with("admin-delete") && code == 404);
            assert!(ok, "{function}: {response}\n{}", lambda.logs());
        }
        let first = body(&responses[0]);
        match function {
            "health" => {
                assert_eq!(first["database"], "up", "{first}");
                assert_eq!(first["redis"], expected_redis, "{first}");
                // The JWKS file was read at init.
                assert_eq!(first["auth"], "up", "{first}");
            }
            "get-flags" => assert_eq!(first["wishlist-gallery"], true, "{first}"),
            "get-flag" => assert_eq!(first["key"], "wishlist-gallery"),
            "ofrep-evaluate-flag" => assert_eq!(
                first,
                json!({"key": "wishlist-gallery", "value": true, "variant": "on", "reason": "STATIC",
                       "metadata": {"environment": "production", "rolloutPercentage": 100}})
            ),
            "ofrep-evaluate-flags" => {
                assert_eq!(first["flags"].as_array().map(Vec::len), Some(5), "{first}");
                let etag = &responses[0]["headers"]["etag"];
                assert!(etag.as_str().is_some_and(|t| t.starts_with('"')), "{etag}");
            }
            "admin-list-flags" => assert_eq!(first.as_array().map(Vec::len), Some(5)),
            "admin-create-flag" => assert_eq!(status(&responses[0]), 201),
            "admin-update-flag" => assert_eq!(first["rolloutPercentage"], 75),
            "admin-upsert-override" => assert_eq!(first["createdBy"], ADMIN_SUB),
            "admin-list-overrides" => assert_eq!(first["includes"][0]["userId"], "user-123"),
            "admin-delete-override" | "admin-delete-flag" => {
                assert_eq!(status(&responses[0]), 204)
            }
            "admin-invalidate-cache" => {
                for response in responses.iter().map(body) {
                    // Not complete when Redis is down: nothing was deleted, and it says so.
                    assert_eq!(response["complete"], !redis_down, "{response}");
                    assert!(response["invalidatedKeys"].is_u64(), "{response}");
                    assert_eq!(response.as_object().map(|o| o.len()), Some(2), "{response}");
                    if redis_down {
                        assert_eq!(response["invalidatedKeys"], 0, "{response}");
                    }
                }
            }
            "admin-create-schedule" => {
                assert_eq!(first["status"], "pending", "{first}");
                assert_eq!(first["flagKey"], "wishlist-gallery", "{first}");
                assert_eq!(
                    first["updates"],
                    json!({"rolloutPercentage": 50}),
                    "{first}"
                );
                assert_eq!(first["scheduledAt"], "2030-01-01T09:00:00.000Z", "{first}");
                assert_eq!(first["createdBy"], ADMIN_SUB, "{first}");
            }
            "admin-list-schedules" => assert_eq!(first.as_array().map(Vec::len), Some(2)),
            "admin-cancel-schedule" => assert_eq!(
                first,
                json!({"error": "NOT_FOUND", "message": "Schedule not found for flag 'wishlist-gallery'"})
            ),
            "admin-audit" => {
                assert_production_audit(&first);
                assert_audit_of_every_environment(
                    &body(&responses[1]),
                    &first,
                    &bodies["admin-invalidate-cache"],
                );
            }
            _ => {}
        }
        bodies.insert(function, responses.iter().map(body).collect());
    }
    // Every successful write recorded that production's cache must be invalidated; the writer
    // removed the record once Redis (or the in-memory cache) was invalidated. With Redis down
    // they all stay, for the sweeper.
    let pending = pending_rows(&database_url).await;
    let expected_pending = if redis_down { SUCCESSFUL_WRITES } else { 0 };
    assert_eq!(pending.len(), expected_pending, "{pending:?}");
    assert!(pending.iter().all(|(_, env)| env == "production"));
}

#[tokio::test]
async fn functions_with_redis_up() {
    every_function_answers(Some(redis_url(11).await), "up").await;
}

#[tokio::test]
async fn functions_with_redis_down() {
    // Nothing listens on this port: the functions start anyway and answer from PostgreSQL.
    every_function_answers(Some(format!("redis://127.0.0.1:{}", free_port())), "down").await;
}

#[tokio::test]
async fn functions_without_redis_url() {
    every_function_answers(None, "disabled").await;
}

/// The error message of a sweep that could not invalidate one environment (`lambda::run_scheduled_work`).
const ONE_INVALIDATION_OWED: &str =
    "1 environment(s) still owe a cache invalidation: Redis did not answer";

async fn redis_get(client: &fred::prelude::Client, key: String) -> Option<String> {
    client.get(key).await.unwrap()
}

/// The generation and overrides epoch of `env`, as numbers (absent: `None`).
async fn counters(client: &fred::prelude::Client, env: &str) -> (Option<u64>, Option<u64>) {
    let number = |value: Option<String>| value.map(|v| v.parse::<u64>().unwrap());
    (
        number(redis_get(client, format!("feature_flags_generation:{env}")).await),
        number(redis_get(client, format!("feature_flags_overrides_epoch:{env}")).await),
    )
}

#[tokio::test]
async fn sweep_with_redis_up_invalidates_each_environment_and_removes_its_records() {
    let database_url = seeded_postgres_url().await;
    assert_eq!(
        pending_rows(&database_url).await,
        vec![],
        "seeding owes nothing"
    );
    let redis = redis_url(13).await;
    let raw = redis_client(&redis).await;
    let (env_a, env_b, untouched) = (unique("sweep-"), unique("sweep-"), unique("other-"));
    let snapshot = json!({"flags": {}, "expiresAt": 4_102_444_800_000_u64}).to_string();
    for env in [&env_a, &untouched] {
        for (key, value) in [
            (format!("feature_flags:{env}"), snapshot.as_str()),
            (format!("feature_flags_generation:{env}"), "41"),
            (format!("feature_flags_overrides_epoch:{env}"), "7"),
        ] {
            let _: () = raw.set(key, value, None, None, false).await.unwrap();
        }
    }
    let id = insert_pending(&database_url, &env_a).await;
    assert_eq!(pending_rows(&database_url).await, vec![(id, env_a.clone())]);

    let lambda = Lambda::start(
        "apply-schedules",
        &[
            ("DATABASE_URL", database_url.clone()),
            ("REDIS_URL", redis.clone()),
        ],
    );
    let sweep = event("apply-schedules");

    // Cold start with a record owed, as after an outage. Two sweeps race for it: this
    // invocation's, and the one every instance starts when its Redis connection comes up
    // (flags-core `wiring::sweep_when_recovered`, which counts the first connection as a
    // recovery). Whichever order they run in, when the invocation returns the record is gone with
    // the snapshot, and the counters were bumped together once or (both sweeps saw the record)
    // twice. The invocation reports the record only when its own sweep did it.
    let cold = lambda.invoke_ok(&sweep).await["invalidations"].clone();
    assert!(
        cold == json!({"swept": 1, "environments": 1, "failed": 0})
            || cold == json!({"swept": 0, "environments": 0, "failed": 0}),
        "{cold}\n{}",
        lambda.logs()
    );
    assert_eq!(pending_rows(&database_url).await, vec![]);
    assert_eq!(
        redis_get(&raw, format!("feature_flags:{env_a}")).await,
        None
    );
    let (generation, epoch) = counters(&raw, &env_a).await;
    assert!(
        matches!(
            (generation, epoch),
            (Some(42), Some(8)) | (Some(43), Some(9))
        ),
        "generation {generation:?}, epoch {epoch:?}\n{}",
        lambda.logs()
    );

    // Warm, nothing owed: nothing done.
    let warm = lambda.invoke_ok(&sweep).await["invalidations"].clone();
    assert_eq!(warm, json!({"swept": 0, "environments": 0, "failed": 0}));

    // Warm, several records of two environments: this invocation alone completes them (the
    // start-up sweep finished long ago), with one invalidation per environment.
    let (generation, epoch) = counters(&raw, &env_a).await;
    let (generation, epoch) = (generation.unwrap(), epoch.unwrap());
    assert_eq!(generation - 41, epoch - 7, "bumped together");
    for env in [&env_b, &env_a, &env_b] {
        insert_pending(&database_url, env).await;
    }
    let batch = lambda.invoke_ok(&sweep).await["invalidations"].clone();
    assert_eq!(
        batch,
        json!({"swept": 3, "environments": 2, "failed": 0}),
        "{}",
        lambda.logs()
    );
    assert_eq!(pending_rows(&database_url).await, vec![]);
    assert_eq!(
        counters(&raw, &env_a).await,
        (Some(generation + 1), Some(epoch + 1))
    );
    // Counters that did not exist start from 0.
    assert_eq!(counters(&raw, &env_b).await, (Some(1), Some(1)));

    // An environment nobody owed an invalidation was left alone.
    assert_eq!(
        redis_get(&raw, format!("feature_flags:{untouched}"))
            .await
            .as_deref(),
        Some(snapshot.as_str())
    );
    assert_eq!(counters(&raw, &untouched).await, (Some(41), Some(7)));
}

#[tokio::test]
async fn sweep_with_redis_unreachable_fails_the_invocation_and_keeps_the_record() {
    let database_url = seeded_postgres_url().await;
    let env = unique("sweep-");
    let id = insert_pending(&database_url, &env).await;
    // Nothing listens on this port.
    let lambda = Lambda::start(
        "apply-schedules",
        &[
            ("DATABASE_URL", database_url.clone()),
            ("REDIS_URL", format!("redis://127.0.0.1:{}", free_port())),
        ],
    );
    let sweep = event("apply-schedules");
    // Cold, then warm: the process survives a failed invocation and tries again.
    for _ in 0..2 {
        let invocation = lambda.invoke(&sweep).await;
        // The emulator's answer to an error invocation: 500 and the runtime's error payload.
        assert_eq!(
            invocation.status,
            StatusCode::INTERNAL_SERVER_ERROR,
            "{}\n{}",
            invocation.payload,
            lambda.logs()
        );
        let error = invocation.payload.as_object().unwrap();
        let mut fields: Vec<&str> = error.keys().map(String::as_str).collect();
        fields.sort_unstable();
        assert_eq!(fields, ["errorMessage", "errorType"], "{error:?}");
        assert_eq!(error["errorMessage"], ONE_INVALIDATION_OWED, "{error:?}");
        assert!(
            error["errorType"].as_str().is_some_and(|t| !t.is_empty()),
            "{error:?}"
        );
        assert_eq!(pending_rows(&database_url).await, vec![(id, env.clone())]);
    }
    // Operators can tell which environment is waiting.
    let logs = lambda.logs();
    assert!(
        logs.contains(&format!("\"environment\":\"{env}\"")),
        "{logs}"
    );
}

#[tokio::test]
async fn sweep_without_redis_url_completes_at_once() {
    let database_url = seeded_postgres_url().await;
    let env = unique("sweep-");
    insert_pending(&database_url, &env).await;
    let lambda = Lambda::start("apply-schedules", &[("DATABASE_URL", database_url.clone())]);
    let sweep = event("apply-schedules");
    let cold = lambda.invoke_ok(&sweep).await;
    assert_eq!(
        cold["invalidations"],
        json!({"swept": 1, "environments": 1, "failed": 0})
    );
    assert_eq!(pending_rows(&database_url).await, vec![]);
    let warm = lambda.invoke_ok(&sweep).await;
    assert_eq!(
        warm["invalidations"],
        json!({"swept": 0, "environments": 0, "failed": 0})
    );
}

/// A schedule that came due a second ago on the seeded `wishlist-gallery` (production).
async fn insert_due_schedule(database_url: &str, rollout: i32) -> uuid::Uuid {
    let mut connection = support::postgres(database_url).await;
    let id = uuid::Uuid::new_v4();
    sqlx::query(
        "INSERT INTO flag_schedules (id, flag_id, environment, flag_key, scheduled_at, status, \
           updates, retry_count, max_retries, created_at) \
         SELECT $1, id, environment, flag_key, now() - interval '1 second', 'pending', $2, 0, 3, now() \
         FROM feature_flags WHERE environment = 'production' AND flag_key = 'wishlist-gallery'",
    )
    .bind(id)
    .bind(json!({"rolloutPercentage": rollout}).to_string())
    .execute(&mut connection)
    .await
    .unwrap();
    id
}

/// The EventBridge event applies a due schedule once, through the write path: the flag changes,
/// the cached snapshot goes, nothing is owed; the next invocation has nothing to do.
#[tokio::test]
async fn the_applier_applies_a_due_schedule_once() {
    let database_url = seeded_postgres_url().await;
    let redis = redis_url(12).await;
    let raw = redis_client(&redis).await;
    let id = insert_due_schedule(&database_url, 33).await;
    let snapshot = json!({"flags": {}, "expiresAt": 4_102_444_800_000_u64}).to_string();
    let _: () = raw
        .set("feature_flags:production", snapshot, None, None, false)
        .await
        .unwrap();
    let lambda = Lambda::start(
        "apply-schedules",
        &[("DATABASE_URL", database_url.clone()), ("REDIS_URL", redis)],
    );
    let tick = event("apply-schedules");

    let first = lambda.invoke_ok(&tick).await;
    assert_eq!(
        (
            &first["processed"],
            &first["applied"],
            &first["failed"],
            &first["overdueSeconds"]
        ),
        (&json!(1), &json!(1), &json!(0), &json!(0)),
        "{first}\n{}",
        lambda.logs()
    );
    assert!(first["durationMs"].is_u64(), "{first}");
    let mut connection = support::postgres(&database_url).await;
    let (status, rollout): (String, i32) = sqlx::query_as(
        "SELECT s.status, f.rollout_percentage FROM flag_schedules s \
         JOIN feature_flags f ON f.id = s.flag_id WHERE s.id = $1",
    )
    .bind(id)
    .fetch_one(&mut connection)
    .await
    .unwrap();
    assert_eq!((status.as_str(), rollout), ("applied", 33));
    assert_eq!(
        redis_get(&raw, "feature_flags:production".to_owned()).await,
        None
    );
    assert_eq!(pending_rows(&database_url).await, vec![]);

    let second = lambda.invoke_ok(&tick).await;
    assert_eq!(
        (&second["processed"], &second["applied"]),
        (&json!(0), &json!(0)),
        "{second}"
    );
    let applied: i64 =
        sqlx::query_scalar("SELECT COUNT(*) FROM flag_audit_log WHERE action = 'schedule.applied'")
            .fetch_one(&mut connection)
            .await
            .unwrap();
    assert_eq!(applied, 1);
    // The overdue metric reaches CloudWatch as an Embedded Metric Format line on stdout.
    assert!(
        lambda.logs().contains("\"OverdueScheduleSeconds\":0"),
        "{}",
        lambda.logs()
    );
}

/// Admin functions answer with the contract's bodies in AWS too: API Gateway no longer checks
/// tokens, so the handler refuses a missing, expired, ID or non-admin token itself, and an
/// oversized body is a 413 before any of that, as on the local server.
#[tokio::test]
async fn admin_functions_verify_tokens_and_answer_the_contract_bodies() {
    let database_url = seeded_postgres_url().await;
    let keys = local_keys();
    let mut env = auth_env(&keys);
    env.push(("DATABASE_URL", database_url));
    let issuer = flags_api::local_keys::LOCAL_ISSUER;
    let admin = ["admin".to_owned()];
    let admin_token = keys.mint(ADMIN_SUB, &admin, 600).unwrap();
    let id_token = keys
        .mint_with(ADMIN_SUB, &admin, 600, issuer, "id")
        .unwrap();
    let expired = keys.mint(ADMIN_SUB, &admin, -120).unwrap();
    let not_admin = keys.mint("user-123", &["users".to_owned()], 600).unwrap();
    let invalid = json!({"error": "Unauthorized", "message": "Invalid or expired token"});
    let cases = [
        (
            None,
            401,
            json!({"error": "Unauthorized", "message": "Missing Authorization header"}),
        ),
        (Some(format!("Bearer {id_token}")), 401, invalid.clone()),
        (Some(format!("Bearer {expired}")), 401, invalid.clone()),
        (Some("Bearer not-a-jwt".to_owned()), 401, invalid),
        (
            Some(format!("Bearer {not_admin}")),
            403,
            json!({"error": "Forbidden", "message": "Admin access required"}),
        ),
    ];
    let lambda = Lambda::start("admin-list-flags", &env);
    for (authorization, expected_status, expected_body) in cases {
        let event = with_authorization(event("admin-list-flags"), authorization.clone());
        let response = lambda.invoke_ok(&event).await;
        assert_eq!(
            status(&response),
            expected_status,
            "{authorization:?}: {response}"
        );
        assert_eq!(body(&response), expected_body, "{authorization:?}");
    }
    // The prefix is optional and its case does not matter (contract 2.4).
    for authorization in [
        format!("Bearer {admin_token}"),
        format!("BEARER {admin_token}"),
        admin_token.clone(),
    ] {
        let event = with_authorization(event("admin-list-flags"), Some(authorization));
        let response = lambda.invoke_ok(&event).await;
        assert_eq!(status(&response), 200, "{response}");
    }
    drop(lambda);

    let lambda = Lambda::start("admin-create-flag", &env);
    let oversized = json!({"flagKey": "big", "description": "x".repeat(70 * 1024)}).to_string();
    for authorization in [None, Some(format!("Bearer {admin_token}"))] {
        let mut event = with_authorization(event("admin-create-flag"), authorization);
        event["body"] = Value::String(oversized.clone());
        let response = lambda.invoke_ok(&event).await;
        assert_eq!(status(&response), 413, "{response}");
        assert_eq!(body(&response)["error"], "PAYLOAD_TOO_LARGE", "{response}");
    }
}

/// The OFREP bulk function under the emulator: its `ETag` on the first answer, a 304 without a
/// body for a request that sends it back, on a warm invocation of the same process.
#[tokio::test]
async fn ofrep_bulk_answers_304_for_its_own_etag() {
    let mut env = auth_env(&local_keys());
    env.push(("DATABASE_URL", seeded_postgres_url().await));
    let lambda = Lambda::start("ofrep-evaluate-flags", &env);
    let first = lambda.invoke_ok(&event("ofrep-evaluate-flags")).await;
    assert_eq!(status(&first), 200, "{first}");
    let etag = first["headers"]["etag"].as_str().unwrap().to_owned();
    let mut again = event("ofrep-evaluate-flags");
    again["headers"]["if-none-match"] = json!(etag);
    let second = lambda.invoke_ok(&again).await;
    assert_eq!(status(&second), 304, "{second}");
    assert_eq!(second["headers"]["etag"], json!(etag));
    assert!(body(&second).is_null(), "{second}");
}

/// The `$default` route's function: the contract's 404 body for any method and path, with no
/// configuration at all (it opens no connection).
#[tokio::test]
async fn the_default_route_answers_the_contract_404() {
    let lambda = Lambda::start("not-found", &[]);
    let mut post = event("not-found");
    post["requestContext"]["http"]["method"] = json!("POST");
    post["rawPath"] = json!("/admin/flagz");
    post["requestContext"]["http"]["path"] = json!("/admin/flagz");
    for event in [event("not-found"), post] {
        let response = lambda.invoke_ok(&event).await;
        assert_eq!(status(&response), 404, "{response}");
        assert_eq!(body(&response), json!({"error": "Not found"}));
    }
}

/// `GET /openapi.json`'s function: the built-in document, with no configuration at all.
#[tokio::test]
async fn the_openapi_function_serves_the_document_without_configuration() {
    let lambda = Lambda::start("openapi", &[]);
    let response = lambda.invoke_ok(&event("openapi")).await;
    assert_eq!(status(&response), 200, "{response}");
    assert_eq!(&body(&response), flags_api::openapi::document());
}

/// The `ServerErrorResponses` metric lines (Embedded Metric Format) in a function's logs.
fn server_error_metrics(logs: &str) -> Vec<Value> {
    logs.lines()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .filter(|line| line.get("ServerErrorResponses").is_some())
        .collect()
}

/// A 5xx answer is no Lambda error, so the function writes it as a metric of its own version:
/// the canary's errors alarm adds it to that version's errors. A 2xx answer writes none.
#[tokio::test]
async fn a_5xx_answer_is_counted_for_the_version_that_gave_it() {
    let version = [
        (
            "AWS_LAMBDA_FUNCTION_NAME",
            "feature-flags-test-health".to_owned(),
        ),
        ("AWS_LAMBDA_FUNCTION_VERSION", "7".to_owned()),
        ("REDIS_URL", "disabled".to_owned()),
    ];
    // Nothing listens on port 1: the health function answers 503.
    let mut env = vec![(
        "DATABASE_URL",
        "postgres://postgres@127.0.0.1:1/unreachable".to_owned(),
    )];
    env.extend(version.clone());
    let lambda = Lambda::start("health", &env);
    let response = lambda.invoke_ok(&event("health")).await;
    assert_eq!(status(&response), 503, "{response}");
    let metrics = server_error_metrics(&lambda.logs());
    assert_eq!(metrics.len(), 1, "{}", lambda.logs());
    let metric = &metrics[0];
    assert_eq!(metric["ServerErrorResponses"], 1);
    assert_eq!(metric["FunctionName"], "feature-flags-test-health");
    assert_eq!(metric["ExecutedVersion"], "7");
    let declared = &metric["_aws"]["CloudWatchMetrics"][0];
    assert_eq!(declared["Namespace"], "FeatureFlags");
    assert_eq!(
        declared["Dimensions"],
        json!([["FunctionName", "ExecutedVersion"]])
    );
    assert_eq!(
        declared["Metrics"],
        json!([{"Name": "ServerErrorResponses", "Unit": "Count"}])
    );

    let mut env = vec![("DATABASE_URL", seeded_postgres_url().await)];
    env.extend(version);
    let lambda = Lambda::start("health", &env);
    let response = lambda.invoke_ok(&event("health")).await;
    assert_eq!(status(&response), 200, "{response}");
    assert_eq!(server_error_metrics(&lambda.logs()), Vec::<Value>::new());
}

/// The migrate function applies every migration to an empty schema, from its own parameter
/// (a login that may create tables), and a second invocation finds nothing left to apply.
#[tokio::test]
async fn the_migrate_function_applies_the_schema_from_its_own_parameter() {
    let ssm = Ssm::start().await;
    let url = empty_postgres_url().await;
    ssm.put_secure("/feature-flags/test/migration-database-url", &url)
        .await;
    let mut env = ssm.env();
    env.push((
        "MIGRATION_DATABASE_URL_SSM_PARAMETER",
        "/feature-flags/test/migration-database-url".to_owned(),
    ));
    let responses = invoke("migrate", &env, vec![event("migrate"), event("migrate")]).await;
    let latest = std::fs::read_dir(workspace_root().join("crates/flags-core/migrations/postgres"))
        .unwrap()
        .filter_map(|entry| {
            let name = entry.unwrap().file_name().into_string().unwrap();
            name.split('_').next()?.parse::<i64>().ok()
        })
        .max()
        .unwrap();
    assert_eq!(responses, vec![json!({"schemaVersion": latest}); 2]);
    let tables: Vec<String> = sqlx::query_scalar(
        "SELECT table_name::text FROM information_schema.tables \
         WHERE table_schema = current_schema() ORDER BY table_name",
    )
    .fetch_all(&mut postgres(&url).await)
    .await
    .unwrap();
    assert!(
        tables.contains(&"feature_flags".to_owned())
            && tables.contains(&"flag_schedules".to_owned()),
        "{tables:?}"
    );

    // Without its parameter the function does not start, and says which setting is missing.
    let (_emulator, port) = start_emulator();
    let output = function_command("migrate", port).output().unwrap();
    assert!(!output.status.success());
    let logs = String::from_utf8_lossy(&output.stderr);
    assert!(logs.contains("MIGRATION_DATABASE_URL"), "{logs}");
}

#[tokio::test]
async fn a_missing_database_url_fails_the_init_with_a_clear_message() {
    let (_emulator, port) = start_emulator();
    let output = function_command("health", port).output().unwrap();
    assert!(!output.status.success());
    let logs = String::from_utf8_lossy(&output.stderr);
    assert!(logs.contains("DATABASE_URL"), "{logs}");
}

/// A local SSM emulator (moto, installed by `make tools-test`) on a spare loopback port.
struct Ssm {
    _server: Running,
    endpoint: String,
}

impl Ssm {
    async fn start() -> Self {
        let port = free_port();
        let server = Running(
            Command::new(tool("MOTO_SERVER", "moto_server"))
                .args(["-H", "127.0.0.1", "-p", &port.to_string()])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("moto_server runs"),
        );
        wait_for_port(port).expect("moto_server starts");
        Self {
            _server: server,
            endpoint: format!("http://127.0.0.1:{port}"),
        }
    }

    /// Creates a SecureString parameter through the SSM JSON API.
    async fn put_secure(&self, name: &str, value: &str) {
        self.put(name, value, "SecureString").await;
    }

    /// Creates or replaces a parameter of `kind` (`String`, `SecureString`).
    async fn put(&self, name: &str, value: &str, kind: &str) {
        let response = reqwest::Client::new()
            .post(&self.endpoint)
            .header("x-amz-target", "AmazonSSM.PutParameter")
            .header("content-type", "application/x-amz-json-1.1")
            .header("authorization", "AWS4-HMAC-SHA256 Credential=testing/20261126/us-east-1/ssm/aws4_request, SignedHeaders=host, Signature=0")
            .body(serde_json::json!({"Name": name, "Value": value, "Type": kind, "Overwrite": true}).to_string())
            .send()
            .await
            .unwrap();
        assert!(
            response.status().is_success(),
            "{:?}",
            response.text().await
        );
    }

    fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("AWS_ENDPOINT_URL", self.endpoint.clone()),
            ("AWS_REGION", "us-east-1".to_owned()),
            ("AWS_ACCESS_KEY_ID", "testing".to_owned()),
            ("AWS_SECRET_ACCESS_KEY", "testing".to_owned()),
        ]
    }
}

#[tokio::test]
async fn urls_come_from_ssm_secure_strings_at_init() {
    let ssm = Ssm::start().await;
    ssm.put_secure(
        "/feature-flags/test/database-url",
        &seeded_postgres_url().await,
    )
    .await;
    ssm.put_secure("/feature-flags/test/redis-url", &redis_url(12).await)
        .await;
    let mut env = ssm.env();
    env.push((
        "DATABASE_URL_SSM_PARAMETER",
        "/feature-flags/test/database-url".to_owned(),
    ));
    env.push((
        "REDIS_URL_SSM_PARAMETER",
        "/feature-flags/test/redis-url".to_owned(),
    ));
    let responses = invoke("health", &env, vec![event("health")]).await;
    assert_eq!(status(&responses[0]), 200, "{}", responses[0]);
    assert_eq!(body(&responses[0])["redis"], "up");
    let responses = invoke("get-flags", &env, vec![event("get-flags")]).await;
    assert_eq!(body(&responses[0])["wishlist-gallery"], true);

    // The emergency switch: a Redis parameter set to "disabled" means the in-memory cache.
    ssm.put_secure("/feature-flags/test/redis-off", "disabled")
        .await;
    env.retain(|(k, _)| *k != "REDIS_URL_SSM_PARAMETER");
    env.push((
        "REDIS_URL_SSM_PARAMETER",
        "/feature-flags/test/redis-off".to_owned(),
    ));
    let responses = invoke("health", &env, vec![event("health")]).await;
    assert_eq!(body(&responses[0])["redis"], "disabled");
}

#[tokio::test]
async fn a_missing_ssm_parameter_fails_the_init_naming_it_not_the_values() {
    let ssm = Ssm::start().await;
    ssm.put_secure(
        "/feature-flags/test/redis-url",
        "redis://:very-secret-token@127.0.0.1:6379",
    )
    .await;
    let (_emulator, port) = start_emulator();
    let mut command = function_command("health", port);
    command
        .env(
            "DATABASE_URL_SSM_PARAMETER",
            "/feature-flags/test/does-not-exist",
        )
        .env("REDIS_URL_SSM_PARAMETER", "/feature-flags/test/redis-url");
    for (key, value) in ssm.env() {
        command.env(key, value);
    }
    let output = command.output().unwrap();
    assert!(!output.status.success(), "init must fail");
    let logs = String::from_utf8_lossy(&output.stderr);
    assert!(
        logs.contains("/feature-flags/test/does-not-exist"),
        "{logs}"
    );
    assert!(!logs.contains("very-secret-token"), "{logs}");
}

/// A user pool with a domain cannot serve its JWKS through the VPC endpoint: the operator
/// publishes a copy in SSM (`COGNITO_JWKS_SSM_PARAMETER`). Tokens of the pool's issuer verify
/// against it, a rotation needs only a new copy (read again for the unknown key id, by the
/// running function), and a key never published is refused.
#[tokio::test]
async fn a_pool_with_a_domain_verifies_tokens_against_the_jwks_published_in_ssm() {
    const PARAMETER: &str = "/feature-flags/test/cognito-jwks";
    const POOL: &str = "us-east-1_FlagsTest";
    let issuer = format!("https://cognito-idp.us-east-1.amazonaws.com/{POOL}");
    let ssm = Ssm::start().await;
    let keys = local_keys();
    let publish = |keys: &flags_api::local_keys::LocalKeys| {
        serde_json::to_string(&keys.jwks().unwrap()).unwrap()
    };
    ssm.put(PARAMETER, &publish(&keys), "String").await;
    let mut env = ssm.env();
    env.extend([
        ("DATABASE_URL", seeded_postgres_url().await),
        ("COGNITO_USER_POOL_ID", POOL.to_owned()),
        (
            "COGNITO_CLIENT_ID",
            flags_api::local_keys::LOCAL_CLIENT_ID.to_owned(),
        ),
        ("COGNITO_JWKS_SSM_PARAMETER", PARAMETER.to_owned()),
    ]);
    let admin = ["admin".to_owned()];
    let mint = |keys: &flags_api::local_keys::LocalKeys| {
        keys.mint_with(ADMIN_SUB, &admin, 600, &issuer, "access")
            .unwrap()
    };
    let answer = |token: String| {
        with_authorization(event("admin-list-flags"), Some(format!("Bearer {token}")))
    };

    let health = invoke("health", &env, vec![event("health")]).await;
    assert_eq!(body(&health[0])["auth"], "up", "{}", health[0]);

    let lambda = Lambda::start("admin-list-flags", &env);
    let response = lambda.invoke_ok(&answer(mint(&keys))).await;
    assert_eq!(status(&response), 200, "{response}");
    // The local issuer's token is not the pool's.
    let other_issuer = keys.mint(ADMIN_SUB, &admin, 600).unwrap();
    assert_eq!(status(&lambda.invoke_ok(&answer(other_issuer)).await), 401);

    keys.rotate().unwrap();
    ssm.put(PARAMETER, &publish(&keys), "String").await;
    let response = lambda.invoke_ok(&answer(mint(&keys))).await;
    assert_eq!(
        status(&response),
        200,
        "the rotated key is read again: {response}"
    );

    let stranger = local_keys();
    stranger.rotate().unwrap();
    stranger.rotate().unwrap();
    let response = lambda.invoke_ok(&answer(mint(&stranger))).await;
    assert_eq!(status(&response), 401, "a key never published: {response}");
    drop(lambda);

    // Without the copy the init fails, naming the parameter.
    let mut missing = env.clone();
    missing.retain(|(name, _)| *name != "COGNITO_JWKS_SSM_PARAMETER");
    missing.push((
        "COGNITO_JWKS_SSM_PARAMETER",
        "/feature-flags/test/none".to_owned(),
    ));
    let (_emulator, port) = start_emulator();
    let output = function_command("health", port)
        .envs(missing.iter().map(|(k, v)| (k, v)))
        .output()
        .unwrap();
    assert!(!output.status.success(), "init must fail");
    let logs = String::from_utf8_lossy(&output.stderr);
    assert!(logs.contains("/feature-flags/test/none"), "{logs}");
}
