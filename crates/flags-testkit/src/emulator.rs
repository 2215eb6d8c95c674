//! The Lambda runtime emulator (`cargo lambda watch`) and the function processes that poll it,
//! as the emulator tests and the Lambda benchmarks start them.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

/// `cargo lambda watch` serving only the Runtime and Invoke APIs, on `port`.
pub fn emulator_command(cargo_lambda: &Path, port: u16) -> Command {
    let mut command = Command::new(cargo_lambda);
    command.args([
        "lambda",
        "watch",
        "--only-lambda-apis",
        "-A",
        "127.0.0.1",
        "-P",
        &port.to_string(),
    ]);
    command
}

/// A function binary that polls the emulator on `port`, with a clean environment as in Lambda:
/// only `PATH`, the runtime's variables and `RUST_LOG=info`; the caller adds the function's own.
pub fn function_command(binary: &Path, port: u16) -> Command {
    let mut command = Command::new(binary);
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

/// The emulator's Invoke API for the function that polls it.
pub fn invoke_url(port: u16) -> String {
    format!("http://127.0.0.1:{port}/2015-03-31/functions/_/invocations")
}

/// Waits up to 20 s for something to listen on `port` (blocking).
pub fn wait_for_port(port: u16) -> std::io::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        if Instant::now() > deadline {
            return Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("nothing listens on {port} after 20 s"),
            ));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}
