//! Cold start and footprint of a release Lambda binary under the Lambda runtime emulator
//! (`cargo lambda watch --only-lambda-apis`): for each run a new process is started, the
//! API Gateway event of `events/` is invoked, and the time from process start to the response
//! is taken (configuration, the Redis connection and the first request included). Also the
//! binary's size and its peak resident memory (`VmHWM`), and, measured in the same run as a
//! floor for the Node.js original, how long `node` takes to start and exit an empty script.
//!
//! `make coldstart` runs it; `--help` lists the options.

use clap::Parser;
use flags_bench::emulator::{self, Emulator};
use flags_bench::fixtures::{self, BoxError};
use flags_bench::stats::{ms, percentile};
use flags_core::domain::Environment;
use flags_testkit::{OwnedRedis, free_port};
use serde_json::Value;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use tokio::process::{Child, Command};

#[derive(Debug, Parser)]
struct Args {
    #[command(flatten)]
    database: fixtures::DatabaseArg,
    /// The function binary (release build) and the event it is fed.
    #[arg(long, default_value = "get-flags")]
    function: String,
    /// Cold starts per configuration.
    #[arg(long, default_value_t = 20)]
    runs: usize,
    #[command(flatten)]
    emulator: emulator::EmulatorArg,
    #[arg(long, default_value = "target/bench/coldstart.md")]
    out: PathBuf,
}

struct Row {
    name: &'static str,
    times: Vec<Duration>,
    peak_kib: Vec<u64>,
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let args = Args::parse();
    let binary = PathBuf::from("target/release").join(&args.function);
    let size = std::fs::metadata(&binary)
        .map_err(|e| {
            format!(
                "{}: {e} (cargo build --release -p flags-api)",
                binary.display()
            )
        })?
        .len();
    let event = emulator::event(&args.function)?;

    let env = Environment::parse("production").map_err(|e| e.0)?;
    let database_url = fixtures::fresh_postgres_schema(
        &args.database.database_url,
        "flags_coldstart",
        "flags-coldstart",
    )
    .await?;
    fixtures::seed_flags(&database_url, &env, 20).await?;
    let redis = OwnedRedis::start().await?;
    let (_tokens, auth_env) = fixtures::lambda_tokens(0)?;

    let emulator = Emulator::start(&args.emulator.cargo_lambda).await?;
    let client = reqwest::Client::new();

    let mut base: Vec<(&str, String)> = vec![("DATABASE_URL", database_url.clone())];
    base.extend(auth_env);
    let configurations: [(&'static str, Option<String>); 3] = [
        ("Redis up (cache hit)", Some(redis.url())),
        ("No `REDIS_URL` (in-memory cache, database read)", None),
        (
            "Redis unreachable (database read)",
            Some(format!("redis://127.0.0.1:{}", free_port()?)),
        ),
    ];
    let mut rows = Vec::new();
    for (name, redis_url) in configurations {
        let mut env = base.clone();
        if let Some(url) = redis_url {
            env.push(("REDIS_URL", url));
        }
        // One unmeasured start fills the Redis cache and the page cache of the binary.
        cold_start(&emulator, &binary, &env, &client, &event).await?;
        let mut row = Row {
            name,
            times: Vec::new(),
            peak_kib: Vec::new(),
        };
        for _ in 0..args.runs {
            let (time, peak) = cold_start(&emulator, &binary, &env, &client, &event).await?;
            row.times.push(time);
            row.peak_kib.push(peak);
        }
        eprintln!("{name}: median {} ms", ms(median(&row.times)));
        rows.push(row);
    }
    drop(emulator);

    let mut node = Vec::new();
    for _ in 0..args.runs {
        let started = Instant::now();
        let status = Command::new("node").args(["-e", "0"]).status().await;
        if status.is_ok_and(|s| s.success()) {
            node.push(started.elapsed());
        }
    }

    let report = report(&args, size, &rows, &node);
    fixtures::publish(&report, &args.out)?;
    Ok(())
}

/// Starts the function, invokes it once, and returns the time from start to the response and
/// the process's peak resident memory.
async fn cold_start(
    emulator: &Emulator,
    binary: &Path,
    env: &[(&str, String)],
    client: &reqwest::Client,
    event: &Value,
) -> Result<(Duration, u64), BoxError> {
    let started = Instant::now();
    let mut function: Child = emulator.function(binary, env).spawn()?;
    emulator.invoke(client, event).await?;
    let elapsed = started.elapsed();
    let peak = function.id().map_or(0, peak_resident_kib);
    let _ = function.kill().await;
    Ok((elapsed, peak))
}

/// `VmHWM` of /proc/<pid>/status: the peak resident set size, in KiB.
fn peak_resident_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|line| line.strip_prefix("VmHWM:"))
                .and_then(|value| value.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

fn median(values: &[Duration]) -> Duration {
    let mut sorted = values.to_vec();
    sorted.sort_unstable();
    percentile(&sorted, 50.0)
}

fn report(args: &Args, size: u64, rows: &[Row], node: &[Duration]) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "`{}` (release, x86_64 here; {:.1} MiB stripped), {} cold starts per row under `cargo lambda watch`, each a new process: start → configuration → Redis/database clients → runtime poll → first API Gateway event answered 200.\n",
        args.function,
        size as f64 / (1024.0 * 1024.0),
        args.runs
    );
    let _ = writeln!(
        out,
        "| Configuration | Median ms | p90 ms | Max ms | Peak RSS (median) MiB |"
    );
    let _ = writeln!(out, "|---|---:|---:|---:|---:|");
    for row in rows {
        let mut sorted = row.times.clone();
        sorted.sort_unstable();
        let mut peaks = row.peak_kib.clone();
        peaks.sort_unstable();
        let peak = peaks.get(peaks.len() / 2).copied().unwrap_or(0);
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {:.1} |",
            row.name,
            ms(percentile(&sorted, 50.0)),
            ms(percentile(&sorted, 90.0)),
            ms(sorted.last().copied().unwrap_or_default()),
            peak as f64 / 1024.0
        );
    }
    if !node.is_empty() {
        let node_median = median(node);
        let ours = rows.first().map(|r| median(&r.times)).unwrap_or_default();
        let _ = writeln!(
            out,
            "\nSame run, same machine: `node -e 0` (Node.js {} starting and exiting an empty script, no handler, no clients) takes a median of {} ms over {} runs; the whole Rust cold start above (Redis up) is {:.2}× that.",
            node_version(),
            ms(node_median),
            node.len(),
            ours.as_secs_f64() / node_median.as_secs_f64().max(f64::EPSILON)
        );
    }
    out
}

fn node_version() -> String {
    std::process::Command::new("node")
        .arg("--version")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default()
}
