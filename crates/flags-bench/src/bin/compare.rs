//! This service beside Unleash Edge, in one run: `make compare`.
//!
//! For each flag count (5 and 1,000 by default) one flag set is generated and given to both:
//!
//! - **this service**: the flags are created through `FlagService` in a fresh PostgreSQL schema,
//!   and the local server (`flags_local::server::serve`, Redis cache on a Redis server of its own)
//!   runs in a child process: this binary started again with `--serve-database-url`;
//! - **Unleash Edge** (offline mode): the same flags written as an Unleash client-features
//!   bootstrap file, each feature `enabled` as ours, with one `flexibleRollout` strategy
//!   (`rollout` = our percentage, `stickiness: userId`, `groupId` = the feature name).
//!
//! Both servers are separate processes on loopback, so each one's CPU time is read from
//! `/proc/<pid>/stat`. The measured request, for one of 1,000 users drawn at random per request:
//!
//! - this service: `GET /config/flags` with the user's bearer token (its `sub` is the user id);
//! - Edge: `GET /api/frontend?userId=<id>` with a frontend token (`--edge-path` for another).
//!
//! Before the load, every user is asked once on both sides: every answer must be 200 and name
//! the flags it should, and the report gives the share of (user, flag) pairs that are on for each
//! side next to what the percentages predict. The bucketing hashes differ (Unleash: murmur3 of
//! `groupId:userId`), so the two sides' answers for one user can differ; the shares should not.
//!
//! Then 1, 10 and 50 clients (one keep-alive connection each, closed loop) against each side in
//! turn, after a warm-up. The report, `target/bench/compare.md`, gives req/s, p50 and p99 of
//! both, the ratio (this service / Edge), the servers' CPU per request, and the 1,000-flag vs
//! 5-flag throughput ratio. Exits non-zero on any failed request or unexpected answer.
//!
//! `--help` lists the options.

use clap::Parser;
use flags_bench::fixtures::{self, BoxError, CacheChoice};
use flags_bench::load;
use flags_bench::stats::{Summary, ms};
use flags_core::Config;
use flags_core::domain::{Environment, FlagKey, NewFlag, Rollout};
use flags_local::cors::{AllowedOrigins, DEFAULT_ALLOWED_ORIGINS};
use flags_testkit::{OwnedRedis, free_port};
use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

#[derive(Debug, Parser)]
struct Args {
    #[command(flatten)]
    database: fixtures::DatabaseArg,
    /// Seconds each (side, flag count, clients) row runs, after the warm-up.
    #[arg(long, default_value_t = 5)]
    seconds: u64,
    /// Seconds of warm-up (10 clients) per side and flag count.
    #[arg(long, default_value_t = 2)]
    warmup_seconds: u64,
    /// Concurrent clients, one row per value.
    #[arg(long, value_delimiter = ',', default_value = "1,10,50")]
    clients: Vec<usize>,
    /// Flag counts, one flag set (and one pair of servers) per value.
    #[arg(long, value_delimiter = ',', default_value = "5,1000")]
    flags: Vec<usize>,
    /// Distinct users, each drawn at random per request.
    #[arg(long, default_value_t = 1000)]
    users: usize,
    /// The `unleash-edge` binary (20.1.0; scripts/compare.sh installs it).
    #[arg(
        long,
        env = "UNLEASH_EDGE",
        default_value = ".tools/unleash-edge/bin/unleash-edge"
    )]
    edge: PathBuf,
    /// Edge's measured path (`/api/frontend` answers the enabled flags only;
    /// `/api/frontend/all` answers every flag).
    #[arg(long, default_value = "/api/frontend")]
    edge_path: String,
    /// `RUST_LOG` of both servers (log volume is not what is compared).
    #[arg(long, default_value = "warn")]
    server_log: String,
    /// Where the Markdown report is written (also printed); the bootstrap files, the signing
    /// keys and the servers' logs go to `compare/` beside it.
    #[arg(long, default_value = "target/bench/compare.md")]
    out: PathBuf,

    /// Run this service's server under `perf record --call-graph dwarf`, writing
    /// `<dir>/perf-<flags>.data` (`make flamegraph`). The CPU columns stay the server's own.
    #[arg(long)]
    profile_ours: Option<PathBuf>,

    /// (Internal) serve this service on this database and print the address: the child mode.
    #[arg(long, hide = true)]
    serve_database_url: Option<String>,
    #[arg(long, hide = true)]
    serve_redis_url: Option<String>,
    #[arg(long, hide = true)]
    serve_keys: Option<PathBuf>,
}

const FRONTEND_TOKEN: &str = "*:development.compare-frontend-token";
const CLIENT_TOKEN: &str = "*:development.compare-client-token";

/// One flag of the generated set, as both sides get it.
#[derive(Debug, Clone)]
struct FlagSpec {
    key: String,
    enabled: bool,
    rollout: u8,
}

/// `count` flags with the mix of the other benchmarks (`fixtures::seed_flags`): rollouts of
/// 100, 50, 10 and 0 % in turn, every fourth flag disabled.
fn flag_set(count: usize) -> Vec<FlagSpec> {
    (0..count)
        .map(|index| FlagSpec {
            key: format!("bench-flag-{index:04}"),
            enabled: index % 4 != 3,
            rollout: [100, 50, 10, 0][index % 4],
        })
        .collect()
}

/// The share of (user, flag) pairs the percentages turn on, in %.
fn expected_on_share(flags: &[FlagSpec]) -> f64 {
    let sum: f64 = flags
        .iter()
        .filter(|f| f.enabled)
        .map(|f| f64::from(f.rollout))
        .sum();
    sum / flags.len().max(1) as f64
}

/// Creates the flags through the service (migrating the database first).
async fn seed_service(
    database_url: &str,
    env: &Environment,
    flags: &[FlagSpec],
) -> Result<(), BoxError> {
    let app = flags_core::App::build(&Config::new(database_url, None)).await?;
    app.service.store().migrate().await?;
    for flag in flags {
        let new = NewFlag {
            flag_key: FlagKey::parse(&flag.key).map_err(|e| e.0)?,
            enabled: flag.enabled,
            rollout: Rollout::new(i64::from(flag.rollout)).ok_or("rollout")?,
            description: Some("compare".to_owned()),
        };
        app.service.create_flag(env, new, None).await?;
    }
    Ok(())
}

/// The same flags as Unleash client features (what `unleash-edge offline --bootstrap-file` reads).
fn unleash_bootstrap(flags: &[FlagSpec]) -> serde_json::Value {
    let features: Vec<serde_json::Value> = flags
        .iter()
        .map(|flag| {
            serde_json::json!({
                "name": flag.key,
                "type": "release",
                "project": "default",
                "enabled": flag.enabled,
                "stale": false,
                "impressionData": false,
                "strategies": [{
                    "name": "flexibleRollout",
                    "constraints": [],
                    "parameters": {
                        "rollout": flag.rollout.to_string(),
                        "stickiness": "userId",
                        "groupId": flag.key,
                    },
                }],
                "variants": [],
            })
        })
        .collect();
    serde_json::json!({ "version": 2, "features": features, "segments": [] })
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Side {
    Ours,
    Edge,
}

impl Side {
    fn name(self) -> &'static str {
        match self {
            Side::Ours => "this service",
            Side::Edge => "Unleash Edge",
        }
    }
}

/// A server process, stopped when dropped: a piped standard input is closed first (this service
/// then returns, and a profiler around it writes its data), and it is killed if still running
/// 10 s later.
struct Server {
    side: Side,
    base: String,
    child: Child,
    /// The serving process: the child itself, or the child's child under a profiler.
    pid: u32,
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(stdin) = self.child.stdin.take() {
            drop(stdin);
            let deadline = std::time::Instant::now() + Duration::from_secs(10);
            while matches!(self.child.try_wait(), Ok(None)) && std::time::Instant::now() < deadline
            {
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Server {
    fn pid(&self) -> u32 {
        self.pid
    }
}

/// The first child of a process (Linux `/proc`).
fn first_child(pid: u32) -> Option<u32> {
    std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// What every client needs for one side.
struct Target {
    side: Side,
    base: String,
    edge_path: String,
    user_ids: Vec<String>,
    tokens: Vec<String>,
}

impl Target {
    fn request(&self, client: &reqwest::Client, user: usize) -> reqwest::RequestBuilder {
        match self.side {
            Side::Ours => client
                .get(format!("{}/config/flags", self.base))
                .bearer_auth(&self.tokens[user]),
            Side::Edge => client
                .get(format!(
                    "{}{}?userId={}",
                    self.base, self.edge_path, self.user_ids[user]
                ))
                .header("authorization", FRONTEND_TOKEN),
        }
    }
}

/// What the check pass found for one side: the flags on per user, mean body size.
struct Answers {
    on: Vec<BTreeSet<String>>,
    mean_bytes: f64,
}

struct Row {
    flags: usize,
    clients: usize,
    side: Side,
    summary: Summary,
    /// The server process's CPU time per request, in µs (user + system).
    cpu_us_per_request: Option<f64>,
    /// This service's Redis server's CPU time per request, in µs (Edge has no other process).
    redis_cpu_us_per_request: Option<f64>,
}

struct FlagCountNotes {
    flags: usize,
    expected_on: f64,
    ours_on: f64,
    edge_on: f64,
    agreement: f64,
    ours_bytes: f64,
    edge_bytes: f64,
    /// Peak resident memory (VmHWM) of each server, KiB, at the end of its runs.
    ours_peak_kib: Option<u64>,
    edge_peak_kib: Option<u64>,
}

fn main() -> Result<(), BoxError> {
    let args = Args::parse();
    let runtime = tokio::runtime::Runtime::new()?;
    if let Some(database_url) = args.serve_database_url.clone() {
        return runtime.block_on(serve_child(&args, &database_url));
    }
    runtime.block_on(compare(args))
}

/// The child mode: this service's local server on `database_url` with the Redis cache; prints
/// `listening <address>` and serves until its standard input closes (or it is killed).
async fn serve_child(args: &Args, database_url: &str) -> Result<(), BoxError> {
    let _events = fixtures::logging(&args.server_log);
    let redis_url = args
        .serve_redis_url
        .clone()
        .ok_or("--serve-redis-url is required")?;
    let keys = args.serve_keys.clone().ok_or("--serve-keys is required")?;
    let tokens = fixtures::mint_tokens(&keys, 0)?;
    let context = fixtures::context(database_url, &CacheChoice::Redis(redis_url), &tokens).await?;
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0)).await?;
    println!("listening {}", listener.local_addr()?);
    let (closed, stdin_closed) = tokio::sync::oneshot::channel::<()>();
    std::thread::spawn(move || {
        let _ = std::io::copy(&mut std::io::stdin(), &mut std::io::sink());
        let _ = closed.send(());
    });
    let cors = AllowedOrigins::parse(DEFAULT_ALLOWED_ORIGINS)?;
    flags_local::server::serve(listener, context, cors, async {
        let _ = stdin_closed.await;
    })
    .await?;
    Ok(())
}

async fn compare(args: Args) -> Result<(), BoxError> {
    let _events = fixtures::logging("error");
    let env = Environment::parse("production").map_err(|e| e.0)?;
    let out_dir = args
        .out
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."));
    let work_dir = out_dir.join("compare");
    std::fs::create_dir_all(&work_dir)?;
    let keys_dir = work_dir.join("keys");
    let tokens = fixtures::mint_tokens(&keys_dir, args.users)?;
    let user_ids: Vec<String> = (0..args.users).map(|i| format!("bench-user-{i}")).collect();
    if !args.edge.is_file() {
        return Err(format!(
            "Unleash Edge not found at {}: run scripts/compare.sh (it installs it into .tools/unleash-edge) or set UNLEASH_EDGE",
            args.edge.display()
        )
        .into());
    }
    let clock_ticks = clock_ticks_per_second();
    let mut edge_version = String::from("Unleash Edge (version not reported)");

    let mut rows: Vec<Row> = Vec::new();
    let mut notes: Vec<FlagCountNotes> = Vec::new();
    for &count in &args.flags {
        let flags = flag_set(count);
        // This service: a fresh schema, the flags created through the service, a Redis of its own.
        let schema = format!("flags_compare_{count}");
        let database_url =
            fixtures::fresh_postgres_schema(&args.database.database_url, &schema, "flags-compare")
                .await?;
        seed_service(&database_url, &env, &flags).await?;
        let redis = OwnedRedis::start().await?;
        let redis_pid = redis_pid(&redis).await;
        let ours = start_ours(
            &args,
            &database_url,
            &redis.url(),
            &keys_dir,
            &work_dir,
            count,
        )?;
        // Edge: the same flags in a bootstrap file.
        let bootstrap = work_dir.join(format!("unleash-bootstrap-{count}.json"));
        std::fs::write(
            &bootstrap,
            serde_json::to_vec_pretty(&unleash_bootstrap(&flags))?,
        )?;
        let edge = start_edge(&args, &bootstrap, &work_dir, count).await?;
        if let Some(version) = reported_edge_version(&edge.base).await {
            edge_version = format!("Unleash Edge {version}");
        }
        eprintln!(
            "{count:>5} flags: {edge_version} at {}",
            args.edge.display()
        );

        let targets: Vec<(Arc<Target>, &Server)> = [&ours, &edge]
            .into_iter()
            .map(|server| {
                (
                    Arc::new(Target {
                        side: server.side,
                        base: server.base.clone(),
                        edge_path: args.edge_path.clone(),
                        user_ids: user_ids.clone(),
                        tokens: tokens.users.clone(),
                    }),
                    server,
                )
            })
            .collect();

        // Every user once on each side: all answers 200 and well formed (and the token cache warm).
        let ours_answers = check(&targets[0].0, &flags).await?;
        let edge_answers = check(&targets[1].0, &flags).await?;
        let pairs = (args.users * count).max(1) as f64;
        let on_share = |answers: &Answers| {
            answers.on.iter().map(BTreeSet::len).sum::<usize>() as f64 * 100.0 / pairs
        };
        let mut agreeing = 0usize;
        for (ours_on, edge_on) in ours_answers.on.iter().zip(&edge_answers.on) {
            agreeing += count - ours_on.symmetric_difference(edge_on).count();
        }
        let mut note = FlagCountNotes {
            flags: count,
            expected_on: expected_on_share(&flags),
            ours_on: on_share(&ours_answers),
            edge_on: on_share(&edge_answers),
            agreement: agreeing as f64 * 100.0 / pairs,
            ours_bytes: ours_answers.mean_bytes,
            edge_bytes: edge_answers.mean_bytes,
            ours_peak_kib: None,
            edge_peak_kib: None,
        };
        eprintln!(
            "{count:>5} flags: on {:.1} % (this service) / {:.1} % (Edge) / {:.1} % expected; same answer for {:.1} % of (user, flag) pairs; mean body {:.0} B / {:.0} B",
            note.ours_on,
            note.edge_on,
            note.expected_on,
            note.agreement,
            note.ours_bytes,
            note.edge_bytes
        );

        for (target, _) in &targets {
            run(target, 10, Duration::from_secs(args.warmup_seconds)).await;
        }
        for &clients in &args.clients {
            for (target, server) in &targets {
                let redis_pid = redis_pid.filter(|_| server.side == Side::Ours);
                let cpu_before = cpu_seconds(Some(server.pid()), clock_ticks);
                let redis_before = cpu_seconds(redis_pid, clock_ticks);
                let summary = run(target, clients, Duration::from_secs(args.seconds)).await;
                let cpu_after = cpu_seconds(Some(server.pid()), clock_ticks);
                let redis_after = cpu_seconds(redis_pid, clock_ticks);
                let per_request = |before: Option<f64>, after: Option<f64>| match (before, after) {
                    (Some(before), Some(after)) if summary.requests > 0 => {
                        Some((after - before) * 1e6 / summary.requests as f64)
                    }
                    _ => None,
                };
                let cpu_us_per_request = per_request(cpu_before, cpu_after);
                let redis_cpu_us_per_request = per_request(redis_before, redis_after);
                eprintln!(
                    "{count:>5} flags {:<13} {clients:>3} clients: {:>8.0} req/s  p50 {} ms  p99 {} ms  cpu {}{} µs/req  errors {}",
                    target.side.name(),
                    summary.per_second,
                    ms(summary.p50),
                    ms(summary.p99),
                    cpu_us_per_request.map_or("–".to_owned(), |c| format!("{c:.0}")),
                    redis_cpu_us_per_request.map_or(String::new(), |c| format!(" + Redis {c:.0}")),
                    summary.errors
                );
                rows.push(Row {
                    flags: count,
                    clients,
                    side: target.side,
                    summary,
                    cpu_us_per_request,
                    redis_cpu_us_per_request,
                });
            }
        }
        note.ours_peak_kib = peak_rss_kib(ours.pid());
        note.edge_peak_kib = peak_rss_kib(edge.pid());
        notes.push(note);
        drop(targets);
        drop(edge);
        drop(ours);
        drop(redis);
    }

    let commit = git_commit();
    let report = report(&args, &edge_version, &commit, &rows, &notes);
    fixtures::publish(&report, &args.out)?;
    let errors: usize = rows.iter().map(|r| r.summary.errors).sum();
    if errors > 0 {
        return Err(format!("{errors} requests failed or answered an unexpected status").into());
    }
    Ok(())
}

/// Starts this binary again in the child mode and reads the address it prints.
fn start_ours(
    args: &Args,
    database_url: &str,
    redis_url: &str,
    keys_dir: &Path,
    work_dir: &Path,
    count: usize,
) -> Result<Server, BoxError> {
    let log = std::fs::File::create(work_dir.join(format!("service-{count}.log")))?;
    let mut command = match &args.profile_ours {
        Some(dir) => {
            std::fs::create_dir_all(dir)?;
            let mut perf = Command::new("perf");
            perf.args([
                "record",
                "--quiet",
                "-F",
                "997",
                "--call-graph",
                "dwarf,16384",
                "-o",
            ])
            .arg(dir.join(format!("perf-{count}.data")))
            .arg("--")
            .arg(std::env::current_exe()?);
            perf
        }
        None => Command::new(std::env::current_exe()?),
    };
    let mut child = command
        .arg("--serve-database-url")
        .arg(database_url)
        .arg("--serve-redis-url")
        .arg(redis_url)
        .arg("--serve-keys")
        .arg(keys_dir)
        .arg("--server-log")
        .arg(&args.server_log)
        .env("RUST_LOG", &args.server_log)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(log)
        .spawn()?;
    let stdout = child.stdout.take().ok_or("no stdout")?;
    let mut line = String::new();
    let read = BufReader::new(stdout).read_line(&mut line);
    let address = match (read, line.trim().strip_prefix("listening ")) {
        (Ok(_), Some(address)) => address.to_owned(),
        _ => {
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!(
                "the service did not start (see {}/service-{count}.log)",
                work_dir.display()
            )
            .into());
        }
    };
    let pid = match args.profile_ours {
        Some(_) => first_child(child.id()).ok_or("the profiled server has no process")?,
        None => child.id(),
    };
    Ok(Server {
        side: Side::Ours,
        base: format!("http://{address}"),
        child,
        pid,
    })
}

/// Starts `unleash-edge offline` on a spare port with the bootstrap file and waits until the
/// measured request answers 200.
async fn start_edge(
    args: &Args,
    bootstrap: &Path,
    work_dir: &Path,
    count: usize,
) -> Result<Server, BoxError> {
    let port = free_port()?;
    let log_path = work_dir.join(format!("edge-{count}.log"));
    let log = std::fs::File::create(&log_path)?;
    let child = Command::new(&args.edge)
        .args(["--port", &port.to_string(), "--interface", "127.0.0.1"])
        .arg("offline")
        .arg("--bootstrap-file")
        .arg(bootstrap)
        .args(["--client-tokens", CLIENT_TOKEN])
        .args(["--frontend-tokens", FRONTEND_TOKEN])
        .env("RUST_LOG", &args.server_log)
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
        .map_err(|e| format!("cannot start {}: {e}", args.edge.display()))?;
    let mut server = Server {
        side: Side::Edge,
        base: format!("http://127.0.0.1:{port}"),
        pid: child.id(),
        child,
    };
    let client = reqwest::Client::new();
    let url = format!("{}{}?userId=bench-user-0", server.base, args.edge_path);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(response) = client
            .get(&url)
            .header("authorization", FRONTEND_TOKEN)
            .send()
            .await
            && response.status() == reqwest::StatusCode::OK
        {
            return Ok(server);
        }
        if let Some(status) = server.child.try_wait()? {
            return Err(format!(
                "unleash-edge exited ({status}) before answering; see {}",
                log_path.display()
            )
            .into());
        }
        if Instant::now() > deadline {
            return Err(format!(
                "unleash-edge did not answer 200 on {url} within 30 s; see {}",
                log_path.display()
            )
            .into());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Asks for every user once; fails on any status but 200 or an answer that is not the flag set.
async fn check(target: &Arc<Target>, flags: &[FlagSpec]) -> Result<Answers, BoxError> {
    let keys: BTreeSet<&str> = flags.iter().map(|f| f.key.as_str()).collect();
    let client = reqwest::Client::new();
    let mut on = Vec::with_capacity(target.user_ids.len());
    let mut bytes = 0usize;
    for user in 0..target.user_ids.len() {
        let response = target.request(&client, user).send().await?;
        let status = response.status();
        let body = response.bytes().await?;
        if status != reqwest::StatusCode::OK {
            return Err(format!(
                "{} answered {status} for {}: {}",
                target.side.name(),
                target.user_ids[user],
                String::from_utf8_lossy(&body)
            )
            .into());
        }
        bytes += body.len();
        let user_on: BTreeSet<String> = match target.side {
            Side::Ours => {
                let answer: BTreeMap<String, bool> = serde_json::from_slice(&body)?;
                if answer.len() != flags.len() || !answer.keys().all(|k| keys.contains(k.as_str()))
                {
                    return Err(format!(
                        "this service answered {} flags for {}, not the {} seeded",
                        answer.len(),
                        target.user_ids[user],
                        flags.len()
                    )
                    .into());
                }
                answer
                    .into_iter()
                    .filter(|(_, v)| *v)
                    .map(|(k, _)| k)
                    .collect()
            }
            Side::Edge => {
                let answer: serde_json::Value = serde_json::from_slice(&body)?;
                let toggles = answer["toggles"]
                    .as_array()
                    .ok_or("Edge answered no `toggles` array")?;
                let mut user_on = BTreeSet::new();
                for toggle in toggles {
                    let name = toggle["name"].as_str().ok_or("a toggle without a name")?;
                    if !keys.contains(name) {
                        return Err(format!("Edge answered an unknown flag {name}").into());
                    }
                    if toggle["enabled"].as_bool() == Some(true) {
                        user_on.insert(name.to_owned());
                    }
                }
                user_on
            }
        };
        on.push(user_on);
    }
    Ok(Answers {
        on,
        mean_bytes: bytes as f64 / target.user_ids.len().max(1) as f64,
    })
}

/// `clients` HTTP clients against one side for `duration`; anything but a 200 with a complete
/// body counts as an error.
async fn run(target: &Arc<Target>, clients: usize, duration: Duration) -> Summary {
    let users = target.user_ids.len();
    let target = Arc::clone(target);
    load::http_closed_loop(
        clients,
        duration,
        users,
        reqwest::StatusCode::OK,
        move |client, user| target.request(client, user),
    )
    .await
}

/// The version a running Edge reports (`GET /internal-backstage/instancedata`; the binary has
/// no `--version`).
async fn reported_edge_version(base: &str) -> Option<String> {
    let body: serde_json::Value = reqwest::get(format!("{base}/internal-backstage/instancedata"))
        .await
        .ok()?
        .json()
        .await
        .ok()?;
    body["this_instance"]["edgeVersion"]
        .as_str()
        .map(str::to_owned)
}

/// `getconf CLK_TCK` (the unit of /proc/<pid>/stat's times), 100 when unknown.
fn clock_ticks_per_second() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
        .unwrap_or(100.0)
}

/// The process id of a Redis server (`INFO server`).
async fn redis_pid(redis: &OwnedRedis) -> Option<u32> {
    let info = redis.cli(&["INFO", "server"]).await.ok()?;
    info.lines()
        .find_map(|line| line.trim().strip_prefix("process_id:"))
        .and_then(|pid| pid.trim().parse().ok())
}

/// User + system CPU seconds of a process so far (Linux `/proc`); `None` elsewhere.
fn cpu_seconds(pid: Option<u32>, ticks_per_second: f64) -> Option<f64> {
    let pid = pid?;
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may hold spaces): state is field 3, utime 14, stime 15.
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) / ticks_per_second)
}

/// Peak resident set size (`VmHWM`) of a process, KiB.
fn peak_rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// `HEAD`, and the last commit that changed the service's code (what the numbers are of).
fn git_commit() -> String {
    let git = |args: &[&str]| {
        Command::new("git")
            .args(args)
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
            .filter(|o| !o.is_empty())
    };
    let head = git(&["rev-parse", "--short", "HEAD"]).unwrap_or_else(|| "unknown".to_owned());
    let service = git(&[
        "log",
        "-1",
        "--format=%h",
        "--",
        "crates/flags-core",
        "crates/flags-api",
        "crates/flags-local",
        "Cargo.lock",
    ]);
    let dirty = git(&[
        "status",
        "--porcelain",
        "--",
        "crates/flags-core",
        "crates/flags-api",
        "crates/flags-local",
    ])
    .map_or("", |_| ", with uncommitted changes");
    match service {
        Some(service) => format!("{head}, service code as of {service}{dirty}"),
        None => head,
    }
}

fn thousands(value: f64) -> String {
    let digits = format!("{:.0}", value);
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn ratio(a: f64, b: f64) -> String {
    if b > 0.0 {
        format!("{:.2}×", a / b)
    } else {
        "–".to_owned()
    }
}

fn report(
    args: &Args,
    edge_version: &str,
    commit: &str,
    rows: &[Row],
    notes: &[FlagCountNotes],
) -> String {
    let find = |flags: usize, clients: usize, side: Side| {
        rows.iter()
            .find(|r| r.flags == flags && r.clients == clients && r.side == side)
    };
    let cpu = |row: &Row| {
        let process = row
            .cpu_us_per_request
            .map_or("–".to_owned(), |c| format!("{c:.0}"));
        match row.redis_cpu_us_per_request {
            Some(redis) => format!("{process} + {redis:.0}"),
            None => process,
        }
    };
    let mut out = String::new();
    let _ = writeln!(
        out,
        "This service (commit {commit}: local server, PostgreSQL + Redis cache, `GET /config/flags` with a bearer token) beside {edge_version} (offline mode, `GET {}?userId=<id>` with a frontend token), one run; {} users drawn at random per request, {} s per row after a {} s warm-up, each client one keep-alive connection. Ratio = this service's req/s / Edge's at the same flag count and clients. CPU = the server process's user + system time per request (this service: its process + its Redis server's).\n",
        args.edge_path, args.users, args.seconds, args.warmup_seconds
    );
    let _ = writeln!(
        out,
        "| Flags | Clients | This service req/s | p50 ms | p99 ms | CPU µs/req (+ Redis) | Edge req/s | p50 ms | p99 ms | CPU µs/req | Ratio (this / Edge) | Errors |"
    );
    let _ = writeln!(
        out,
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    );
    for &flags in &args.flags {
        for &clients in &args.clients {
            let (Some(ours), Some(edge)) = (
                find(flags, clients, Side::Ours),
                find(flags, clients, Side::Edge),
            ) else {
                continue;
            };
            let _ = writeln!(
                out,
                "| {} | {clients} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
                thousands(flags as f64),
                thousands(ours.summary.per_second),
                ms(ours.summary.p50),
                ms(ours.summary.p99),
                cpu(ours),
                thousands(edge.summary.per_second),
                ms(edge.summary.p50),
                ms(edge.summary.p99),
                cpu(edge),
                ratio(ours.summary.per_second, edge.summary.per_second),
                ours.summary.errors + edge.summary.errors
            );
        }
    }

    if let (Some(&few), Some(&many)) = (args.flags.first(), args.flags.last())
        && few != many
    {
        let _ = writeln!(
            out,
            "\nThroughput with {} flags / with {} flags, same run:\n",
            thousands(many as f64),
            thousands(few as f64)
        );
        let _ = writeln!(out, "| Clients | This service | Unleash Edge |");
        let _ = writeln!(out, "|---:|---:|---:|");
        for &clients in &args.clients {
            let side_ratio = |side| match (find(many, clients, side), find(few, clients, side)) {
                (Some(m), Some(f)) => ratio(m.summary.per_second, f.summary.per_second),
                _ => "–".to_owned(),
            };
            let _ = writeln!(
                out,
                "| {clients} | {} | {} |",
                side_ratio(Side::Ours),
                side_ratio(Side::Edge)
            );
        }
    }

    let _ = writeln!(
        out,
        "\nThe answers, every user asked once before the load (the bucketing hashes differ, so one user's answers may differ; the shares follow the same percentages):\n"
    );
    let _ = writeln!(
        out,
        "| Flags | (user, flag) pairs on: this service | Edge | expected | Same answer on both | Mean body B: this service | Edge | Peak RSS MiB: this service | Edge |"
    );
    let _ = writeln!(out, "|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    let mib =
        |kib: Option<u64>| kib.map_or("–".to_owned(), |k| format!("{:.1}", k as f64 / 1024.0));
    for note in notes {
        let _ = writeln!(
            out,
            "| {} | {:.1} % | {:.1} % | {:.1} % | {:.1} % | {} | {} | {} | {} |",
            thousands(note.flags as f64),
            note.ours_on,
            note.edge_on,
            note.expected_on,
            note.agreement,
            thousands(note.ours_bytes),
            thousands(note.edge_bytes),
            mib(note.ours_peak_kib),
            mib(note.edge_peak_kib)
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_sides_get_the_same_percentages() {
        let flags = flag_set(5);
        let bootstrap = unleash_bootstrap(&flags);
        let features = bootstrap["features"].as_array().unwrap();
        assert_eq!(features.len(), 5);
        for (flag, feature) in flags.iter().zip(features) {
            assert_eq!(feature["name"], flag.key.as_str());
            assert_eq!(feature["enabled"], flag.enabled);
            let parameters = &feature["strategies"][0]["parameters"];
            assert_eq!(parameters["rollout"], flag.rollout.to_string().as_str());
            assert_eq!(parameters["stickiness"], "userId");
            assert_eq!(parameters["groupId"], flag.key.as_str());
        }
        // 100, 50, 10, 0 (disabled), 100.
        assert!((expected_on_share(&flags) - 52.0).abs() < 1e-9);
    }

    #[test]
    fn thousands_separators() {
        assert_eq!(thousands(5.0), "5");
        assert_eq!(thousands(1000.0), "1,000");
        assert_eq!(thousands(23326.4), "23,326");
        assert_eq!(thousands(1234567.0), "1,234,567");
    }
}
