//! Warm invocations of release `get-flags` binaries under the Lambda runtime emulator
//! (`cargo lambda watch --only-lambda-apis`), timed by the handler itself: each binary is started
//! once per flag count, invoked `--warmup` times unmeasured, then `--invocations` times, and the
//! `duration_us` of its "request handled" log lines is summarised (p50, p99), next to the invoke
//! round trip the caller saw. The event is `events/get-flags.json` with a signed-in user's bearer
//! token, on PostgreSQL and a Redis of the run's own (the cache is hit after the first call).
//!
//! `make lambdawarm` builds the earlier version and runs both; `--help` lists the options.

use clap::Parser;
use flags_bench::emulator::{self, Emulator};
use flags_bench::fixtures::{self, BoxError};
use flags_bench::stats::percentile;
use flags_core::domain::Environment;
use flags_testkit::OwnedRedis;
use serde_json::Value;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::sync::mpsc;

#[derive(Debug, Parser)]
struct Args {
    #[command(flatten)]
    database: fixtures::DatabaseArg,
    /// A binary to measure, as `label=path`; repeat it to compare versions (the first is the
    /// baseline of the ratio column).
    #[arg(long = "binary", value_parser = labelled, default_value = "current=target/release/get-flags")]
    binaries: Vec<(String, PathBuf)>,
    /// Flag counts of the environment, one run per count and binary.
    #[arg(long, value_delimiter = ',', default_value = "5,1000")]
    flags: Vec<usize>,
    /// Measured invocations per binary and flag count.
    #[arg(long, default_value_t = 1_000)]
    invocations: usize,
    /// Unmeasured invocations first (fill the cache, warm the token cache and connections).
    #[arg(long, default_value_t = 100)]
    warmup: usize,
    #[command(flatten)]
    emulator: emulator::EmulatorArg,
    #[arg(long, default_value = "target/bench/lambdawarm.md")]
    out: PathBuf,
}

fn labelled(value: &str) -> Result<(String, PathBuf), String> {
    let (label, path) = value
        .split_once('=')
        .ok_or_else(|| format!("{value}: expected label=path"))?;
    Ok((label.to_owned(), PathBuf::from(path)))
}

struct Row {
    flags: usize,
    label: String,
    handler: Vec<Duration>,
    round_trip: Vec<Duration>,
    body_bytes: usize,
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let args = Args::parse();
    for (label, binary) in &args.binaries {
        if !binary.is_file() {
            return Err(format!("{label}: {} is not a built binary", binary.display()).into());
        }
    }
    let (tokens, auth_env) = fixtures::lambda_tokens(1)?;
    let mut event = emulator::event("get-flags")?;
    event["headers"]["authorization"] = Value::from(format!("Bearer {}", tokens.users[0]));

    let redis = OwnedRedis::start().await?;
    let emulator = Emulator::start(&args.emulator.cargo_lambda).await?;
    let client = reqwest::Client::new();
    let env = Environment::parse("production").map_err(|e| e.0)?;
    let mut rows = Vec::new();
    if args.flags.len() * args.binaries.len() > 15 {
        return Err("at most 15 (flag count, binary) pairs: one Redis database each".into());
    }
    for (count_index, &count) in args.flags.iter().enumerate() {
        let database_url = fixtures::fresh_postgres_schema(
            &args.database.database_url,
            &format!("flags_lambdawarm_{count}"),
            "flags-lambdawarm",
        )
        .await?;
        fixtures::seed_flags(&database_url, &env, count).await?;
        for (index, (label, binary)) in args.binaries.iter().enumerate() {
            // A Redis database per flag count and binary: nothing cached for one schema or by one
            // version is read by another (the keys name the environment, not the schema).
            let database = count_index * args.binaries.len() + index + 1;
            let mut function_env = vec![
                ("DATABASE_URL", database_url.clone()),
                ("REDIS_URL", format!("{}/{database}", redis.url())),
            ];
            function_env.extend(auth_env.iter().cloned());
            let (handler, round_trip, body) =
                measure(&args, &emulator, &client, binary, &function_env, &event).await?;
            let answered = serde_json::from_str::<serde_json::Map<String, Value>>(&body)
                .map_or(0, |flags| flags.len());
            if answered != count {
                return Err(format!("{label}: {answered} flags answered, not {count}").into());
            }
            let row = Row {
                flags: count,
                label: label.clone(),
                handler,
                round_trip,
                body_bytes: body.len(),
            };
            eprintln!(
                "{count} flags, {label}: handler p50 {} µs",
                micros(percentile(&row.handler, 50.0))
            );
            rows.push(row);
        }
    }
    fixtures::publish(&report(&args, &rows), &args.out)?;
    Ok(())
}

/// One binary started once: warm-up, then the measured invocations, each answered 200. Returns
/// the handler's and the caller's times, sorted, and the last body.
async fn measure(
    args: &Args,
    emulator: &Emulator,
    client: &reqwest::Client,
    binary: &Path,
    env: &[(&str, String)],
    event: &Value,
) -> Result<(Vec<Duration>, Vec<Duration>, String), BoxError> {
    let mut function = emulator
        .function(binary, env)
        .stderr(Stdio::piped())
        .spawn()?;
    let stderr = function.stderr.take().ok_or("no stderr")?;
    let (durations, mut handled) = mpsc::unbounded_channel();
    let reader = tokio::spawn(async move {
        let mut lines = BufReader::new(stderr).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            let Ok(entry) = serde_json::from_str::<Value>(&line) else {
                continue;
            };
            if entry["message"] == "request handled"
                && let Some(us) = entry["duration_us"].as_u64()
            {
                let _ = durations.send(Duration::from_micros(us));
            }
        }
    });
    let mut round_trip = Vec::with_capacity(args.invocations);
    let mut last = Value::Null;
    for call in 0..args.warmup + args.invocations {
        let started = Instant::now();
        let response = emulator.invoke(client, event).await?;
        if call >= args.warmup {
            round_trip.push(started.elapsed());
        }
        last = response;
    }
    let mut handler = Vec::with_capacity(args.invocations);
    let deadline = Instant::now() + Duration::from_secs(10);
    while handler.len() < args.warmup + args.invocations {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, handled.recv()).await {
            Ok(Some(duration)) => handler.push(duration),
            _ => {
                return Err(format!(
                    "{}: {} of {} \"request handled\" lines with duration_us",
                    binary.display(),
                    handler.len(),
                    args.warmup + args.invocations
                )
                .into());
            }
        }
    }
    let _ = function.kill().await;
    reader.abort();
    let mut handler = handler.split_off(args.warmup);
    handler.sort_unstable();
    round_trip.sort_unstable();
    let body = last["body"].as_str().unwrap_or_default().to_owned();
    Ok((handler, round_trip, body))
}

fn micros(value: Duration) -> String {
    format!("{}", value.as_micros())
}

fn report(args: &Args, rows: &[Row]) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "`get-flags` (release) under `cargo lambda watch`, one process per row, invoked one at a time: {} warm-up invocations, then {} measured. \"Handler\" is the `duration_us` the function logs for each request (`handle()`: token, cache read, evaluation, body); \"round trip\" is the invoke as the caller saw it, through the emulator. Signed-in user, PostgreSQL, a Redis of the run's own.\n",
        args.warmup, args.invocations
    );
    let _ = writeln!(
        out,
        "| Flags | Binary | Handler p50 µs | Handler p99 µs | Round trip p50 µs | Round trip p99 µs | Body B | Handler p50 vs first binary |"
    );
    let _ = writeln!(out, "|---:|---|---:|---:|---:|---:|---:|---:|");
    for row in rows {
        let baseline = rows
            .iter()
            .find(|r| r.flags == row.flags)
            .map_or(row.handler.as_slice(), |r| r.handler.as_slice());
        let p50 = percentile(&row.handler, 50.0).as_secs_f64();
        let base = percentile(baseline, 50.0).as_secs_f64();
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} | {} | {} | {:.2}× |",
            row.flags,
            row.label,
            micros(percentile(&row.handler, 50.0)),
            micros(percentile(&row.handler, 99.0)),
            micros(percentile(&row.round_trip, 50.0)),
            micros(percentile(&row.round_trip, 99.0)),
            row.body_bytes,
            p50 / base.max(f64::EPSILON)
        );
    }
    out
}
