//! The Lambda runtime emulator (`cargo lambda watch --only-lambda-apis`) and a release function
//! binary polling it: what `coldstart` and `lambdawarm` run their invocations through.

use crate::fixtures::BoxError;
use flags_testkit::free_port;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};
use tokio::process::{Child, Command};

/// The emulator's Runtime API and Invoke API on a spare port; stopped when dropped.
#[derive(Debug)]
pub struct Emulator {
    pub port: u16,
    _process: Child,
}

impl Emulator {
    /// Starts `cargo-lambda` (`make tools-test` installs it) and waits for its port.
    pub async fn start(cargo_lambda: &Path) -> Result<Self, BoxError> {
        let port = free_port()?;
        let process = Command::new(cargo_lambda)
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
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| {
                format!(
                    "{}: {e} (make tools-test installs it)",
                    cargo_lambda.display()
                )
            })?;
        wait_for_port(port).await?;
        Ok(Self {
            port,
            _process: process,
        })
    }

    /// A function process for `binary` that will poll this emulator, with only `env` (and the
    /// variables the Lambda runtime needs) in its environment; its output is discarded unless
    /// the caller pipes it.
    pub fn function(&self, binary: &PathBuf, env: &[(&str, String)]) -> Command {
        let mut command = Command::new(binary);
        command
            .env_clear()
            .env(
                "AWS_LAMBDA_RUNTIME_API",
                format!("http://127.0.0.1:{}/.rt", self.port),
            )
            .env("AWS_LAMBDA_FUNCTION_NAME", "_")
            .env("AWS_LAMBDA_FUNCTION_VERSION", "1")
            .env("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "256")
            .env("RUST_LOG", "info")
            .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true);
        command
    }

    /// Invokes the function with `event` and returns its API Gateway response, which must be 200.
    pub async fn invoke(&self, client: &reqwest::Client, event: &Value) -> Result<Value, BoxError> {
        let response: Value = client
            .post(format!(
                "http://127.0.0.1:{}/2015-03-31/functions/_/invocations",
                self.port
            ))
            .json(event)
            .timeout(Duration::from_secs(30))
            .send()
            .await?
            .json()
            .await?;
        if response["statusCode"].as_i64() != Some(200) {
            return Err(format!("the function answered {response}").into());
        }
        Ok(response)
    }
}

/// The API Gateway event `events/<function>.json`.
pub fn event(function: &str) -> Result<Value, BoxError> {
    let path = format!("events/{function}.json");
    let text = std::fs::read_to_string(&path).map_err(|e| format!("{path}: {e}"))?;
    Ok(serde_json::from_str(&text)?)
}

async fn wait_for_port(port: u16) -> Result<(), BoxError> {
    let deadline = Instant::now() + Duration::from_secs(20);
    while tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .is_err()
    {
        if Instant::now() > deadline {
            return Err(format!("the emulator did not start on {port}").into());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}
