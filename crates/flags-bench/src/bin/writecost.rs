//! The cost of the admin write path, before and after a change, in one run: N sequential admin
//! updates (`POST /admin/flags/{key}` `{"rolloutPercentage": i % 100}`) and N override upserts
//! (`POST /admin/flags/{key}/users`) against each of two running servers, over HTTP, with
//! latency percentiles, mean and request rate per server side by side and the ratio after/before.
//!
//! The requests to the two servers are interleaved one by one (which server goes first
//! alternates), so both see the same background load on a shared machine.
//!
//! `make writecost` builds the previous version, starts both servers and runs this
//! (`crates/flags-bench/scripts/writecost.sh`); `--help` lists the options.

use clap::Parser;
use flags_bench::fixtures::{self, BoxError};
use flags_bench::stats::{ms, percentile};
use reqwest::StatusCode;
use serde_json::json;
use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::{Duration, Instant};

#[derive(Debug, Parser)]
struct Args {
    /// Base URL of the server before the change, e.g. http://127.0.0.1:4101.
    #[arg(long)]
    before_url: String,
    /// An admin bearer token the "before" server accepts.
    #[arg(long, env = "WRITECOST_BEFORE_TOKEN", hide_env_values = true)]
    before_token: String,
    /// How the "before" server is named in the report.
    #[arg(long, default_value = "before")]
    before_label: String,
    /// Base URL of the server after the change.
    #[arg(long)]
    after_url: String,
    #[arg(long, env = "WRITECOST_AFTER_TOKEN", hide_env_values = true)]
    after_token: String,
    #[arg(long, default_value = "after")]
    after_label: String,
    /// Measured requests of each kind, per server.
    #[arg(short = 'n', long, default_value_t = 2000)]
    requests: usize,
    /// Unmeasured requests per server first (half updates, half override upserts).
    #[arg(long, default_value_t = 200)]
    warmup: usize,
    /// The flag the run creates (if missing) and writes to.
    #[arg(long, default_value = "writecost-flag")]
    flag: String,
    #[arg(long, default_value = "production")]
    environment: String,
    /// Where the Markdown report is written (also printed).
    #[arg(long, default_value = "target/bench/writecost.md")]
    out: PathBuf,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Update,
    Override,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Self::Update => "`POST /admin/flags/{key}` (rollout update)",
            Self::Override => "`POST /admin/flags/{key}/users` (override upsert)",
        }
    }
}

/// One server under test.
struct Server {
    label: String,
    base: String,
    token: String,
    client: reqwest::Client,
    environment: String,
    flag: String,
}

/// What one server did for one kind of write.
#[derive(Debug, Default)]
struct Tally {
    latencies: Vec<Duration>,
    errors: usize,
    first_error: Option<String>,
}

impl Server {
    fn new(label: &str, base: &str, token: &str, args: &Args) -> Result<Self, BoxError> {
        Ok(Self {
            label: label.to_owned(),
            base: base.trim_end_matches('/').to_owned(),
            token: token.trim().to_owned(),
            client: reqwest::Client::builder()
                .timeout(Duration::from_secs(30))
                .build()?,
            environment: args.environment.clone(),
            flag: args.flag.clone(),
        })
    }

    async fn post(&self, path: &str, body: serde_json::Value) -> Result<StatusCode, BoxError> {
        let response = self
            .client
            .post(format!(
                "{}{path}?environment={}",
                self.base, self.environment
            ))
            .bearer_auth(&self.token)
            .json(&body)
            .send()
            .await?;
        let status = response.status();
        // Read the whole body: the request is over when the client has the answer.
        let text = response.text().await?;
        if status.is_success() || status == StatusCode::CONFLICT {
            Ok(status)
        } else {
            Err(format!("{} {path}: {status} {text}", self.label).into())
        }
    }

    /// Creates the flag the run writes to (a 409 means it is there already).
    async fn prepare(&self) -> Result<(), BoxError> {
        let body = json!({"flagKey": self.flag, "enabled": true, "rolloutPercentage": 0,
            "description": "writecost benchmark"});
        self.post("/admin/flags", body).await?;
        Ok(())
    }

    /// The i-th write of one kind; returns its latency.
    async fn write(&self, kind: Kind, i: usize) -> Result<Duration, BoxError> {
        let (path, body) = match kind {
            Kind::Update => (
                format!("/admin/flags/{}", self.flag),
                json!({"rolloutPercentage": i % 100}),
            ),
            Kind::Override => (
                format!("/admin/flags/{}/users", self.flag),
                json!({
                    "userId": format!("writecost-user-{}", i % 100),
                    "overrideType": if (i / 100).is_multiple_of(2) { "include" } else { "exclude" },
                    "reason": "writecost benchmark",
                }),
            ),
        };
        let began = Instant::now();
        let status = self.post(&path, body).await?;
        let took = began.elapsed();
        if status == StatusCode::CONFLICT {
            return Err(format!("{} {path}: 409", self.label).into());
        }
        Ok(took)
    }

    async fn health(&self) -> Result<serde_json::Value, BoxError> {
        Ok(self
            .client
            .get(format!("{}/health", self.base))
            .send()
            .await?
            .json()
            .await?)
    }
}

impl Tally {
    fn record(&mut self, result: Result<Duration, BoxError>) {
        match result {
            Ok(latency) => self.latencies.push(latency),
            Err(error) => {
                self.errors += 1;
                self.first_error.get_or_insert_with(|| error.to_string());
            }
        }
    }

    fn sorted(&self) -> Vec<Duration> {
        let mut sorted = self.latencies.clone();
        sorted.sort_unstable();
        sorted
    }

    fn mean(&self) -> Duration {
        if self.latencies.is_empty() {
            return Duration::ZERO;
        }
        self.latencies.iter().sum::<Duration>() / self.latencies.len() as u32
    }

    /// Sequential requests per second: one over the mean latency.
    fn per_second(&self) -> f64 {
        let mean = self.mean().as_secs_f64();
        if mean > 0.0 { 1.0 / mean } else { 0.0 }
    }
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let args = Args::parse();
    let servers = [
        Server::new(
            &args.before_label,
            &args.before_url,
            &args.before_token,
            &args,
        )?,
        Server::new(&args.after_label, &args.after_url, &args.after_token, &args)?,
    ];
    for server in &servers {
        let health = server.health().await?;
        eprintln!("{}: {} /health {health}", server.label, server.base);
        server.prepare().await?;
    }

    eprintln!("warm-up: {} requests per server", args.warmup);
    for i in 0..args.warmup {
        let kind = if i.is_multiple_of(2) {
            Kind::Update
        } else {
            Kind::Override
        };
        for server in &servers {
            server.write(kind, i).await?;
        }
    }

    let started = Instant::now();
    let mut tallies: [[Tally; 2]; 2] = Default::default();
    for (k, kind) in [Kind::Update, Kind::Override].into_iter().enumerate() {
        eprintln!("{}: {} per server", kind.name(), args.requests);
        for i in 0..args.requests {
            // Alternate which server goes first, so neither always follows the other's write.
            let order = if i.is_multiple_of(2) { [0, 1] } else { [1, 0] };
            for s in order {
                tallies[s][k].record(servers[s].write(kind, i).await);
            }
        }
    }
    let took = started.elapsed();

    let report = report(&args, &servers, &tallies, took);
    fixtures::publish(&report, &args.out)?;
    let errors: usize = tallies.iter().flatten().map(|t| t.errors).sum();
    if errors > 0 {
        for (server, row) in servers.iter().zip(&tallies) {
            for tally in row {
                if let Some(error) = &tally.first_error {
                    eprintln!("{}: first error: {error}", server.label);
                }
            }
        }
        return Err(format!("writecost: {errors} requests failed").into());
    }
    Ok(())
}

fn ratio(after: f64, before: f64) -> String {
    if before > 0.0 {
        format!("{:.2}×", after / before)
    } else {
        "–".to_owned()
    }
}

fn report(args: &Args, servers: &[Server; 2], tallies: &[[Tally; 2]; 2], took: Duration) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{} sequential requests of each kind per server after {} warm-up requests, over HTTP (keep-alive), \
         the two servers' requests interleaved one by one; flag `{}` in `{}`. Run took {:.0} s, finished {}.\n",
        args.requests,
        args.warmup,
        args.flag,
        args.environment,
        took.as_secs_f64(),
        chrono::Utc::now().format("%Y-%m-%d %H:%M UTC"),
    );
    let _ = writeln!(
        out,
        "| Write | Server | Requests | Errors | p50 ms | p99 ms | Mean ms | Req/s (sequential) |"
    );
    let _ = writeln!(out, "|---|---|---:|---:|---:|---:|---:|---:|");
    for (k, kind) in [Kind::Update, Kind::Override].into_iter().enumerate() {
        for (s, server) in servers.iter().enumerate() {
            let tally = &tallies[s][k];
            let sorted = tally.sorted();
            let _ = writeln!(
                out,
                "| {} | {} | {} | {} | {} | {} | {} | {:.0} |",
                kind.name(),
                server.label,
                sorted.len(),
                tally.errors,
                ms(percentile(&sorted, 50.0)),
                ms(percentile(&sorted, 99.0)),
                ms(tally.mean()),
                tally.per_second()
            );
        }
        let (before, after) = (&tallies[0][k], &tallies[1][k]);
        let (b, a) = (before.sorted(), after.sorted());
        let secs = |d: Duration| d.as_secs_f64();
        let _ = writeln!(
            out,
            "| {} | **after / before** | | | {} | {} | {} | {} |",
            kind.name(),
            ratio(secs(percentile(&a, 50.0)), secs(percentile(&b, 50.0))),
            ratio(secs(percentile(&a, 99.0)), secs(percentile(&b, 99.0))),
            ratio(secs(after.mean()), secs(before.mean())),
            ratio(after.per_second(), before.per_second()),
        );
    }
    out
}
