//! The real release Lambda binaries under a Lambda runtime emulator (`cargo lambda watch
//! --only-lambda-apis`), fed the API Gateway events in `events/`: with Redis up, with Redis
//! down, without `REDIS_URL`, and with the URLs in a local SSM emulator (AC5, AC16). Cargo builds
//! the binaries for this test in the test's own profile: `make test` runs it with `--release`.
#![allow(clippy::unwrap_used, clippy::expect_used)]
// The end-to-end helpers are shared with the local server's tests.
#[path = "../../flags-local/tests/common/mod.rs"]
mod common;

use common::{free_port, local_keys, redis_url, seeded_postgres_url, tool, workspace_root};
use serde_json::Value;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Kills the process when dropped, so a failing assertion leaves nothing running.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn wait_for_port(port: u16) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            Instant::now() < deadline,
            "emulator did not start on {port}"
        );
        std::thread::sleep(Duration::from_millis(50));
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
        other => panic!("no function binary named {other}"),
    }
}

fn event(function: &str) -> Value {
    let path = workspace_root()
        .join("events")
        .join(format!("{function}.json"));
    serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap()
}

/// The Lambda runtime emulator on a spare port, with only its runtime and invoke APIs.
fn start_emulator() -> (Running, u16) {
    let port = free_port();
    let emulator = Command::new(tool("CARGO_LAMBDA", "cargo-lambda"))
        .args([
            "lambda",
            "watch",
            "--only-lambda-apis",
            "-A",
            "127.0.0.1",
            "-P",
            &port.to_string(),
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("cargo-lambda runs");
    let emulator = Running(emulator);
    wait_for_port(port);
    (emulator, port)
}

/// A function binary pointed at the emulator, with a clean environment (as in Lambda).
fn function_command(function: &str, port: u16) -> Command {
    let mut command = Command::new(release_binary(function));
    command
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env(
            "AWS_LAMBDA_RUNTIME_API",
            format!("http://127.0.0.1:{port}/.rt"),
        )
        .env("AWS_LAMBDA_FUNCTION_NAME", "_")
        .env("AWS_LAMBDA_FUNCTION_VERSION", "1")
        .env("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "256")
        .env("RUST_LOG", "info");
    command
}

/// Starts the emulator and the function binary, sends `events`, returns the API Gateway responses.
async fn invoke(function: &str, env: &[(&str, String)], events: Vec<Value>) -> Vec<Value> {
    let (_emulator, port) = start_emulator();
    let mut command = function_command(function, port);
    command.stdout(Stdio::null()).stderr(Stdio::null());
    for (key, value) in env {
        command.env(key, value);
    }
    let _function = Running(command.spawn().expect("function binary starts"));
    let client = reqwest::Client::new();
    let mut responses = Vec::new();
    for event in events {
        let response = client
            .post(format!(
                "http://127.0.0.1:{port}/2015-03-31/functions/_/invocations"
            ))
            .json(&event)
            .timeout(Duration::from_secs(30))
            .send()
            .await
            .unwrap_or_else(|e| panic!("{function}: invoke failed: {e}"));
        responses.push(response.json::<Value>().await.unwrap());
    }
    responses
}

fn status(response: &Value) -> i64 {
    response["statusCode"].as_i64().unwrap_or_default()
}

fn body(response: &Value) -> Value {
    serde_json::from_str(response["body"].as_str().unwrap_or("null")).unwrap_or(Value::Null)
}

/// Every function, in an order where each event finds what it needs (create before delete).
const SEQUENCE: [(&str, i64); 11] = [
    ("health", 200),
    ("get-flags", 200),
    ("get-flag", 200),
    ("admin-list-flags", 200),
    ("admin-create-flag", 201),
    ("admin-update-flag", 200),
    ("admin-upsert-override", 201),
    ("admin-list-overrides", 200),
    ("admin-delete-override", 204),
    ("admin-delete-flag", 204),
    ("admin-invalidate-cache", 200),
];

async fn every_function_answers(redis: Option<String>, expected_redis: &str) {
    let database_url = seeded_postgres_url().await;
    let keys = local_keys();
    let mut env = vec![
        ("DATABASE_URL", database_url),
        ("AUTH_JWKS_FILE", keys.jwks_path().display().to_string()),
        ("AUTH_ISSUER", flags_local::keys::LOCAL_ISSUER.to_owned()),
        (
            "AUTH_CLIENT_ID",
            flags_local::keys::LOCAL_CLIENT_ID.to_owned(),
        ),
    ];
    if let Some(url) = redis {
        env.push(("REDIS_URL", url));
    }
    for (function, expected) in SEQUENCE {
        let mut events = vec![event(function), event(function)];
        if function == "get-flags" {
            // The same event with a token minted for user-123, who is later given an override.
            let token = keys.mint("user-123", &[], 600).unwrap();
            events[1]["headers"]["authorization"] = Value::String(format!("Bearer {token}"));
        }
        let responses = invoke(function, &env, events).await;
        // The first invocation is the cold start, the second a warm one on the same process.
        for response in &responses {
            let code = status(response);
            let ok = code == expected
                || (function == "admin-create-flag" && code == 409)
                || (function.starts_with("admin-delete") && code == 404);
            assert!(ok, "{function}: {response}");
        }
        let first = body(&responses[0]);
        match function {
            "health" => {
                assert_eq!(first["database"], "up", "{first}");
                assert_eq!(first["redis"], expected_redis, "{first}");
            }
            "get-flags" => assert_eq!(first["wishlist-gallery"], true, "{first}"),
            "get-flag" => assert_eq!(first["key"], "wishlist-gallery"),
            "admin-list-flags" => assert_eq!(first.as_array().map(Vec::len), Some(5)),
            "admin-update-flag" => assert_eq!(first["rolloutPercentage"], 75),
            "admin-upsert-override" => {
                assert_eq!(first["createdBy"], "a1b2c3d4-0000-1111-2222-admin0000001")
            }
            "admin-list-overrides" => assert_eq!(first["includes"][0]["userId"], "user-123"),
            _ => {}
        }
    }
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
        wait_for_port(port);
        Self {
            _server: server,
            endpoint: format!("http://127.0.0.1:{port}"),
        }
    }

    /// Creates a SecureString parameter through the SSM JSON API.
    async fn put_secure(&self, name: &str, value: &str) {
        let response = reqwest::Client::new()
            .post(&self.endpoint)
            .header("x-amz-target", "AmazonSSM.PutParameter")
            .header("content-type", "application/x-amz-json-1.1")
            .header("authorization", "AWS4-HMAC-SHA256 Credential=testing/20261126/us-east-1/ssm/aws4_request, SignedHeaders=host, Signature=0")
            .body(serde_json::json!({"Name": name, "Value": value, "Type": "SecureString"}).to_string())
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
