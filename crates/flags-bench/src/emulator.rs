//! The Lambda runtime emulator (`cargo lambda watch --only-lambda-apis`) and a release function
//! binary polling it: what `coldstart` and `lambdawarm` run their invocations through.

use crate::fixtures::BoxError;
use flags_testkit::emulator::{emulator_command, function_command, invoke_url, wait_for_port};
use flags_testkit::free_port;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;
use tokio::process::{Child, Command};

/// The emulator binary (`--emulator`).
#[derive(Debug, clap::Args)]
pub struct EmulatorArg {
    /// The Lambda runtime emulator (cargo-lambda); `make tools-test` installs it.
    #[arg(
        long = "emulator",
        env = "CARGO_LAMBDA",
        default_value = ".tools/test/bin/cargo-lambda"
    )]
    pub cargo_lambda: PathBuf,
}

/// The emulator's Runtime API and Invoke API on a spare port; stopped when dropped.
#[derive(Debug)]
pub struct Emulator {
    pub port: u16,
    _process: Child,
}

impl Emulator {
    /// Starts `cargo-lambda` and waits for its port.
    pub async fn start(cargo_lambda: &Path) -> Result<Self, BoxError> {
        let port = free_port()?;
        let process = Command::from(emulator_command(cargo_lambda, port))
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
        tokio::task::spawn_blocking(move || wait_for_port(port)).await??;
        Ok(Self {
            port,
            _process: process,
        })
    }

    /// A function process for `binary` that will poll this emulator, with only `env` (and the
    /// variables the Lambda runtime needs) in its environment; its output is discarded unless
    /// the caller pipes it.
    pub fn function(&self, binary: &Path, env: &[(&str, String)]) -> Command {
        let mut command = Command::from(function_command(binary, self.port));
        command
            .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true);
        command
    }
    /// Invokes the function with `event` and returns its API Gateway response, which must be 200.
    pub async fn invoke(&self, client: &reqwest::Client, event: &Value) -> Result<Value, BoxError> {
        let response: Value = client
            .post(invoke_url(self.port))
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
