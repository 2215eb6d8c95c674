//! The Rust load benchmark (AC10): throughput and latency percentiles at 1, 10 and 50 concurrent
//! clients for each cache and database combination, every figure measured in this one run, with
//! the Redis and PostgreSQL connection counts seen during the 50-client runs.
//!
//! `make load` runs it; `cargo run --release -p flags-bench --bin loadbench -- --help` lists
//! the options.

use clap::Parser;
use flags_bench::fixtures::{self, BoxError, CacheChoice};
use flags_bench::load::{self, LoadPlan, Workload};
use flags_bench::stats::{Summary, ms};
use flags_core::config::{MAX_REDIS_POOL_SIZE, SERVER_DATABASE_POOL_SIZE};
use flags_core::domain::Environment;
use flags_testkit::{OwnedRedis, client_count, free_port};
use sqlx::{ConnectOptions, Connection};
use std::fmt::Write as _;
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;
use tokio::time::Instant;

#[derive(Debug, Parser)]
struct Args {
    #[command(flatten)]
    database: fixtures::DatabaseArg,
    /// Seconds each concurrency level runs, after a warm-up.
    #[arg(long, default_value_t = 5)]
    seconds: u64,
    /// Concurrent clients, one run per value.
    #[arg(long, value_delimiter = ',', default_value = "1,10,50")]
    clients: Vec<usize>,
    /// Flags in the environment.
    #[arg(long, default_value_t = 20)]
    flags: usize,
    /// Distinct users (tokens), each with its own cached overrides.
    #[arg(long, default_value_t = 200)]
    users: usize,
    /// Where the Markdown report is written (also printed).
    #[arg(long, default_value = "target/bench/loadbench.md")]
    out: PathBuf,
}

struct Scenario {
    name: &'static str,
    database: Database,
    cache: CacheChoice,
}

#[derive(Clone, Copy)]
enum Database {
    Postgres,
    Sqlite,
}

struct Row {
    scenario: &'static str,
    clients: usize,
    summary: Summary,
    /// Peak Redis and PostgreSQL connections of this scenario's service (50-client run).
    connections: Option<(Option<usize>, Option<usize>)>,
}

const BASELINE: &str = "PostgreSQL, no cache";

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let args = Args::parse();
    let events = fixtures::logging("error");
    let env = Environment::parse("production").map_err(|e| e.0)?;
    let work_dir = PathBuf::from("target/bench");
    let tokens = fixtures::mint_tokens(&work_dir.join("keys"), args.users)?;

    let postgres_url = fixtures::fresh_postgres_schema(
        &args.database.database_url,
        "flags_loadbench",
        "flags-loadbench-seed",
    )
    .await?;
    let sqlite_url = fixtures::fresh_sqlite_file(&work_dir, "loadbench")?;
    let flag_keys = fixtures::seed_flags(&postgres_url, &env, args.flags).await?;
    fixtures::seed_flags(&sqlite_url, &env, args.flags).await?;

    let redis = OwnedRedis::start().await?;
    let nothing_listens = format!("redis://127.0.0.1:{}", free_port()?);
    let scenarios = [
        Scenario {
            name: "PostgreSQL + Redis (cache hits)",
            database: Database::Postgres,
            cache: CacheChoice::Redis(redis.url()),
        },
        Scenario {
            name: "PostgreSQL + Redis down (database fallback)",
            database: Database::Postgres,
            cache: CacheChoice::Redis(nothing_listens),
        },
        Scenario {
            name: "PostgreSQL + in-memory cache",
            database: Database::Postgres,
            cache: CacheChoice::Memory,
        },
        Scenario {
            name: BASELINE,
            database: Database::Postgres,
            cache: CacheChoice::None,
        },
        Scenario {
            name: "SQLite + in-memory cache (`make run` default)",
            database: Database::Sqlite,
            cache: CacheChoice::Memory,
        },
        Scenario {
            name: "SQLite, no cache",
            database: Database::Sqlite,
            cache: CacheChoice::None,
        },
    ];

    let monitor = Monitor {
        database_url: args.database.database_url.clone(),
    };
    let mut rows = Vec::new();
    for (index, scenario) in scenarios.iter().enumerate() {
        // A name per scenario, so pg_stat_activity counts this scenario's pool only.
        let application_name = format!("flags-loadbench-{index}");
        let url = match scenario.database {
            Database::Postgres => postgres_url.replace("flags-loadbench-seed", &application_name),
            Database::Sqlite => sqlite_url.clone(),
        };
        let context = fixtures::context(&url, &scenario.cache, &tokens).await?;
        let workload = Arc::new(Workload::new(
            context,
            env.as_str(),
            flag_keys.clone(),
            &tokens,
        ));
        let before = events.counts();
        // Warm-up: pools open, the cache fills for every user.
        let warm_up = plan(10, Duration::from_secs(1));
        load::run(Arc::clone(&workload), warm_up, Instant::now()).await;
        for &clients in &args.clients {
            let plan = plan(clients, Duration::from_secs(args.seconds));
            let watching = clients >= 50;
            let sampler = watching.then(|| {
                let redis_used =
                    matches!(&scenario.cache, CacheChoice::Redis(url) if *url == redis.url());
                let postgres_used = matches!(scenario.database, Database::Postgres);
                monitor.watch(
                    redis_used.then_some(redis.port),
                    postgres_used.then(|| application_name.clone()),
                )
            });
            let start = Instant::now();
            let samples = load::run(Arc::clone(&workload), plan, start).await;
            let summary = Summary::of(&samples, start.elapsed());
            let connections = match sampler {
                Some(sampler) => Some(sampler.finish().await),
                None => None,
            };
            eprintln!(
                "{:<48} {clients:>3} clients: {:>9.0} req/s  p50 {} ms  p95 {} ms  p99 {} ms  errors {}",
                scenario.name,
                summary.per_second,
                ms(summary.p50),
                ms(summary.p95),
                ms(summary.p99),
                summary.errors
            );
            rows.push(Row {
                scenario: scenario.name,
                clients,
                summary,
                connections,
            });
        }
        // Close this scenario's Redis connections so the next scenario counts only its own.
        if let Some(connection) = &workload.context.redis {
            connection.quit().await;
        }
        let after = events.counts();
        eprintln!(
            "{:<48} cache log events: {} hit, {} miss, {} unavailable",
            scenario.name,
            after.hits - before.hits,
            after.misses - before.misses,
            after.unavailable - before.unavailable
        );
    }

    let report = report(&args, &rows);
    fixtures::publish(&report, &args.out)?;
    let errors: usize = rows.iter().map(|r| r.summary.errors).sum();
    let unbounded = rows
        .iter()
        .filter_map(|r| r.connections)
        .any(|(redis, postgres)| {
            redis.unwrap_or(0) > MAX_REDIS_POOL_SIZE
                || postgres.unwrap_or(0) > SERVER_DATABASE_POOL_SIZE as usize
        });
    if errors > 0 || unbounded {
        return Err(format!("{errors} failed requests; connections unbounded: {unbounded}").into());
    }
    Ok(())
}

fn plan(clients: usize, duration: Duration) -> LoadPlan {
    LoadPlan {
        clients,
        duration,
        single_flag_percent: 20,
        write_every: None,
    }
}

fn report(args: &Args, rows: &[Row]) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{} flags, {} users, {} s per row, 80 % `GET /config/flags` (evaluated per user) + 20 % `GET /config/flags/{{flagKey}}`, in-process through the handler (token check included).\n",
        args.flags, args.users, args.seconds
    );
    let _ = writeln!(
        out,
        "| Scenario | Clients | Requests | Req/s | vs. {BASELINE} | p50 ms | p95 ms | p99 ms | Max ms | Errors | Max Redis conns | Max PostgreSQL conns |"
    );
    let _ = writeln!(
        out,
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    );
    for row in rows {
        let baseline = rows
            .iter()
            .find(|b| b.scenario == BASELINE && b.clients == row.clients)
            .map(|b| b.summary.per_second)
            .filter(|rate| *rate > 0.0);
        let ratio = baseline.map_or("–".to_owned(), |b| {
            format!("{:.1}×", row.summary.per_second / b)
        });
        let count = |value: Option<usize>| value.map_or("–".to_owned(), |n| n.to_string());
        let (redis, postgres) = row
            .connections
            .map_or(("–".to_owned(), "–".to_owned()), |(r, p)| {
                (count(r), count(p))
            });
        let s = &row.summary;
        let _ = writeln!(
            out,
            "| {} | {} | {} | {:.0} | {} | {} | {} | {} | {} | {} | {} | {} |",
            row.scenario,
            row.clients,
            s.requests,
            s.per_second,
            ratio,
            ms(s.p50),
            ms(s.p95),
            ms(s.p99),
            ms(s.max),
            s.errors,
            redis,
            postgres
        );
    }
    out
}

/// Samples the connection counts every 100 ms while a run lasts.
struct Monitor {
    database_url: String,
}

struct Sampling {
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<()>,
    redis_max: Arc<AtomicUsize>,
    postgres_max: Arc<AtomicUsize>,
    watched: (bool, bool),
}

impl Monitor {
    /// Watches the clients of the Redis on `redis_port` and the PostgreSQL sessions named
    /// `application_name`; `None` for a server the scenario does not use.
    fn watch(&self, redis_port: Option<u16>, application_name: Option<String>) -> Sampling {
        let stop = Arc::new(AtomicBool::new(false));
        let redis_max = Arc::new(AtomicUsize::new(0));
        let postgres_max = Arc::new(AtomicUsize::new(0));
        let watched = (redis_port.is_some(), application_name.is_some());
        let url = self.database_url.clone();
        let (s, r, p) = (
            Arc::clone(&stop),
            Arc::clone(&redis_max),
            Arc::clone(&postgres_max),
        );
        let task = tokio::spawn(async move {
            let Ok(options) = sqlx::postgres::PgConnectOptions::from_str(&url) else {
                return;
            };
            let Ok(mut connection) = options
                .application_name("flags-bench-monitor")
                .connect()
                .await
            else {
                return;
            };
            while !s.load(Ordering::Relaxed) {
                if let Some(name) = &application_name
                    && let Ok(count) = sqlx::query_scalar::<_, i64>(
                        "SELECT count(*) FROM pg_stat_activity WHERE application_name = $1",
                    )
                    .bind(name)
                    .fetch_one(&mut connection)
                    .await
                {
                    p.fetch_max(usize::try_from(count).unwrap_or(0), Ordering::Relaxed);
                }
                if let Some(port) = redis_port
                    && let Ok(count) = client_count(port).await
                {
                    r.fetch_max(count, Ordering::Relaxed);
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            let _ = connection.close().await;
        });
        Sampling {
            stop,
            task,
            redis_max,
            postgres_max,
            watched,
        }
    }
}

impl Sampling {
    async fn finish(self) -> (Option<usize>, Option<usize>) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = self.task.await;
        (
            self.watched
                .0
                .then(|| self.redis_max.load(Ordering::Relaxed)),
            self.watched
                .1
                .then(|| self.postgres_max.load(Ordering::Relaxed)),
        )
    }
}
