//! The fault-injection suite (AC6 and contract §3): the service under continuous load (readers
//! plus an admin writer) while Redis is killed, restarted, frozen, demoted to a replica, slowed
//! down or filled with garbage, and while PostgreSQL is cut off behind a proxy with the cache warm.
//!
//! For each fault: requests sent, errors, latency percentiles during the fault, cache hits during
//! the fault, and the time from the repair until the cache is used again. The run fails when a
//! request fails where the contract promises it does not, or when the cache never comes back.
//!
//! `make faults` runs it (CI too); `--help` lists the options.

use clap::Parser;
use flags_bench::cache_events::CacheEvents;
use flags_bench::fixtures::{self, BoxError, CacheChoice, Tokens};
use flags_bench::load::{self, LoadPlan, Workload};
use flags_bench::stats::{Sample, Summary, ms};
use flags_core::domain::Environment;
use flags_testkit::{OwnedRedis, ProxyMode, TcpProxy};
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Debug, Parser)]
struct Args {
    #[command(flatten)]
    database: fixtures::DatabaseArg,
    /// Concurrent reading clients (one admin writer comes on top).
    #[arg(long, default_value_t = 10)]
    clients: usize,
    /// How long each fault lasts, in seconds.
    #[arg(long, default_value_t = 3)]
    fault_seconds: u64,
    /// Load kept up after the repair, in seconds: the window in which the cache must come back.
    #[arg(long, default_value_t = 8)]
    recovery_seconds: u64,
    /// Milliseconds between admin writes (each invalidates the cache).
    #[arg(long, default_value_t = 250)]
    write_every_ms: u64,
    /// Run only the faults whose name contains this text.
    #[arg(long)]
    only: Option<String>,
    /// Where the Markdown report is written (also printed).
    #[arg(long, default_value = "target/bench/faults.md")]
    out: PathBuf,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fault {
    KillRedis,
    RestartRedis,
    FreezeRedis,
    DemoteRedis,
    SlowRedis(Duration),
    GarbageInCache,
    CutPostgres,
}

impl Fault {
    fn name(self) -> String {
        match self {
            Self::KillRedis => "Redis killed (SIGKILL), started again after the fault".into(),
            Self::RestartRedis => {
                "Redis restarted (SHUTDOWN NOSAVE, started again at once, empty)".into()
            }
            Self::FreezeRedis => "Redis frozen (SIGSTOP), then thawed (SIGCONT)".into(),
            Self::DemoteRedis => {
                "Redis demoted to a replica: writes answer READONLY (failover)".into()
            }
            Self::SlowRedis(delay) => {
                format!("Redis replies delayed by {} ms (proxy)", delay.as_millis())
            }
            Self::GarbageInCache => {
                "Garbage written under every cache key, generation included".into()
            }
            Self::CutPostgres => {
                "PostgreSQL cut off (proxy closes every connection), cache warm".into()
            }
        }
    }
}

const FAULTS: [Fault; 8] = [
    Fault::KillRedis,
    Fault::RestartRedis,
    Fault::FreezeRedis,
    Fault::DemoteRedis,
    Fault::SlowRedis(Duration::from_millis(100)),
    Fault::SlowRedis(Duration::from_millis(1500)),
    Fault::GarbageInCache,
    Fault::CutPostgres,
];

/// Everything a fault needs to act on.
struct Rig {
    redis: OwnedRedis,
    redis_proxy: TcpProxy,
    postgres_proxy: TcpProxy,
}

struct Outcome {
    fault: Fault,
    during: Summary,
    reads: Summary,
    writes: Summary,
    hits_during: usize,
    unavailable_logged: usize,
    cache_back_after: Option<Duration>,
    failures: Vec<String>,
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let args = Args::parse();
    let events = fixtures::logging("error");
    let env = Environment::parse("production").map_err(|e| e.0)?;
    let tokens = fixtures::mint_tokens(&PathBuf::from("target/bench/keys"), 100)?;
    let database_url = fixtures::fresh_postgres_schema(
        &args.database.database_url,
        "flags_faults",
        "flags-faults",
    )
    .await?;
    let flag_keys = fixtures::seed_flags(&database_url, &env, 20).await?;
    let postgres_address = postgres_address(&database_url)?;

    let mut outcomes = Vec::new();
    for fault in FAULTS {
        if args
            .only
            .as_ref()
            .is_some_and(|only| !fault.name().contains(only.as_str()))
        {
            continue;
        }
        eprintln!("==> {}", fault.name());
        let outcome = run_fault(
            &args,
            fault,
            &events,
            &tokens,
            &database_url,
            postgres_address,
            &env,
            &flag_keys,
        )
        .await?;
        eprintln!(
            "    reads during the fault: {} sent, {} failed, p95 {} ms; cache back after {}",
            outcome.during.requests,
            outcome.during.errors,
            ms(outcome.during.p95),
            outcome
                .cache_back_after
                .map_or("never".into(), |d| format!("{} ms", d.as_millis()))
        );
        outcomes.push(outcome);
    }

    let report = report(&args, &outcomes);
    fixtures::publish(&report, &args.out)?;
    let failures: Vec<String> = outcomes.iter().flat_map(|o| o.failures.clone()).collect();
    if failures.is_empty() {
        eprintln!("faults: every promise held in {} scenarios", outcomes.len());
        Ok(())
    } else {
        Err(format!("faults: {}", failures.join("; ")).into())
    }
}

#[allow(clippy::too_many_arguments)]
async fn run_fault(
    args: &Args,
    fault: Fault,
    events: &Arc<CacheEvents>,
    tokens: &Tokens,
    database_url: &str,
    postgres_address: SocketAddr,
    env: &Environment,
    flag_keys: &[String],
) -> Result<Outcome, BoxError> {
    // A fresh Redis, proxies and service per fault, so one fault's aftermath cannot hide another.
    let redis = OwnedRedis::start().await?;
    let redis_proxy = TcpProxy::start(SocketAddr::from(([127, 0, 0, 1], redis.port))).await?;
    let postgres_proxy = TcpProxy::start(postgres_address).await?;
    let redis_url = match fault {
        Fault::SlowRedis(_) => format!("redis://127.0.0.1:{}", redis_proxy.port),
        _ => redis.url(),
    };
    let service_database_url = match fault {
        Fault::CutPostgres => with_port(database_url, postgres_proxy.port)?,
        _ => database_url.to_owned(),
    };
    let mut rig = Rig {
        redis,
        redis_proxy,
        postgres_proxy,
    };
    let context = fixtures::context(
        &service_database_url,
        &CacheChoice::Redis(redis_url),
        tokens,
    )
    .await?;
    let workload = Arc::new(Workload::new(
        context,
        env.as_str(),
        flag_keys.to_vec(),
        tokens,
    ));

    // Warm-up: pools open, the snapshot and every user's overrides cached.
    let warm_up = LoadPlan {
        clients: args.clients,
        duration: Duration::from_secs(2),
        single_flag_percent: 20,
        write_every: None,
    };
    load::run(Arc::clone(&workload), warm_up, tokio::time::Instant::now()).await;

    let before = Duration::from_secs(2);
    let fault_length = Duration::from_secs(args.fault_seconds);
    let plan = LoadPlan {
        clients: args.clients,
        duration: before + fault_length + Duration::from_secs(args.recovery_seconds),
        single_flag_percent: 20,
        // Cutting the database tests reads from a warm cache: a write just before the cut would
        // have emptied it. Every other fault runs with the writer invalidating the cache.
        write_every: (fault != Fault::CutPostgres)
            .then(|| Duration::from_millis(args.write_every_ms)),
    };
    let unavailable_before = events.counts().unavailable;
    let start = tokio::time::Instant::now();
    let script = async {
        tokio::time::sleep(before).await;
        let injected = Instant::now();
        inject(fault, &mut rig, env).await?;
        // A restart is down only for as long as starting takes.
        if fault != Fault::RestartRedis {
            tokio::time::sleep(fault_length).await;
        }
        repair(fault, &mut rig).await?;
        Ok::<_, BoxError>((injected, Instant::now()))
    };
    let (samples, marks) = tokio::join!(load::run(Arc::clone(&workload), plan, start), script);
    let (injected, repaired) = marks?;

    let start = start.into_std();
    let window = (injected - start, repaired - start);
    let during: Vec<&Sample> = samples
        .iter()
        .filter(|s| !s.write && s.at >= window.0 && s.at < window.1)
        .collect();
    let reads: Vec<&Sample> = samples.iter().filter(|s| !s.write).collect();
    let writes: Vec<&Sample> = samples.iter().filter(|s| s.write).collect();
    // Garbage needs no repair: the cache must heal itself from the moment it was written.
    let healing_from = if fault == Fault::GarbageInCache {
        injected
    } else {
        repaired
    };
    let outcome = Outcome {
        fault,
        during: Summary::of(during.iter().copied(), repaired - injected),
        reads: Summary::of(reads.iter().copied(), plan.duration),
        writes: Summary::of(writes.iter().copied(), plan.duration),
        hits_during: events.hits_between(injected, repaired),
        unavailable_logged: events.counts().unavailable - unavailable_before,
        cache_back_after: events.first_hit_after(healing_from),
        failures: Vec::new(),
    };
    Ok(judge(outcome))
}

/// The contract's promises for this fault.
fn judge(mut outcome: Outcome) -> Outcome {
    let name = outcome.fault.name();
    if outcome.reads.errors > 0 {
        outcome
            .failures
            .push(format!("{name}: {} reads failed", outcome.reads.errors));
    }
    if outcome.writes.errors > 0 {
        outcome.failures.push(format!(
            "{name}: {} admin writes failed",
            outcome.writes.errors
        ));
    }
    if outcome.cache_back_after.is_none() {
        outcome
            .failures
            .push(format!("{name}: the cache was not used again"));
    }
    outcome
}

async fn inject(fault: Fault, rig: &mut Rig, env: &Environment) -> Result<(), BoxError> {
    match fault {
        Fault::KillRedis => rig.redis.kill().await,
        Fault::RestartRedis => {
            let _ = rig.redis.cli(&["SHUTDOWN", "NOSAVE"]).await;
            rig.redis.kill().await; // reaps the process
        }
        Fault::FreezeRedis => rig.redis.freeze().await,
        Fault::DemoteRedis => {
            rig.redis.demote().await?;
        }
        Fault::SlowRedis(delay) => rig.redis_proxy.set(ProxyMode::Delay(delay)),
        Fault::GarbageInCache => {
            // Every key of the environment: snapshot, each user's overrides and the generation.
            let script = "local keys = redis.call('KEYS', ARGV[1]) \
                 for _, key in ipairs(redis.call('KEYS', ARGV[2])) do table.insert(keys, key) end \
                 for _, key in ipairs(keys) do redis.call('SET', key, 'garbage{not json', 'KEEPTTL') end \
                 return #keys";
            let snapshot_pattern = format!("feature_flags:{env}*");
            let generation_pattern = format!("feature_flags_generation:{env}");
            rig.redis
                .cli(&["EVAL", script, "0", &snapshot_pattern, &generation_pattern])
                .await?;
        }
        Fault::CutPostgres => rig.postgres_proxy.set(ProxyMode::Cut),
    }
    Ok(())
}

async fn repair(fault: Fault, rig: &mut Rig) -> Result<(), BoxError> {
    match fault {
        Fault::KillRedis | Fault::RestartRedis => rig.redis.restart().await?,
        Fault::FreezeRedis => rig.redis.thaw().await,
        Fault::DemoteRedis => {
            rig.redis.promote().await?;
        }
        Fault::SlowRedis(_) => rig.redis_proxy.set(ProxyMode::Pass),
        Fault::CutPostgres => rig.postgres_proxy.set(ProxyMode::Pass),
        Fault::GarbageInCache => {}
    }
    Ok(())
}

fn postgres_address(database_url: &str) -> Result<SocketAddr, BoxError> {
    let url = url::Url::parse(database_url)?;
    let host = url.host_str().unwrap_or("127.0.0.1");
    let port = url.port().unwrap_or(5432);
    std::net::ToSocketAddrs::to_socket_addrs(&(host, port))?
        .next()
        .ok_or_else(|| format!("cannot resolve {host}").into())
}

fn with_port(database_url: &str, port: u16) -> Result<String, BoxError> {
    let mut url = url::Url::parse(database_url)?;
    url.set_host(Some("127.0.0.1"))?;
    url.set_port(Some(port))
        .map_err(|()| "cannot set the port")?;
    Ok(url.to_string())
}

fn report(args: &Args, outcomes: &[Outcome]) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{} reading clients (80 % `GET /config/flags` for 100 users, 20 % `GET /config/flags/{{flagKey}}`) plus one admin update every {} ms; each fault lasts {} s after 2 s of normal load, then {} s of load follow the repair.\n",
        args.clients, args.write_every_ms, args.fault_seconds, args.recovery_seconds
    );
    let _ = writeln!(
        out,
        "| Fault | Reads during fault | Failed | p50 ms | p95 ms | p99 ms | Max ms | Cache hits during fault | `cache=unavailable` logs | Reads (whole run) / failed | Admin writes / failed | Cache used again after the repair |"
    );
    let _ = writeln!(
        out,
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    );
    for o in outcomes {
        let back = o
            .cache_back_after
            .map_or("never".into(), |d| format!("{} ms", d.as_millis()));
        let writes = if o.fault == Fault::CutPostgres {
            "paused (the cache must be warm)".to_owned()
        } else {
            format!("{} / {}", o.writes.requests, o.writes.errors)
        };
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} / {} | {} | {} |",
            o.fault.name(),
            o.during.requests,
            o.during.errors,
            ms(o.during.p50),
            ms(o.during.p95),
            ms(o.during.p99),
            ms(o.during.max),
            o.hits_during,
            o.unavailable_logged,
            o.reads.requests,
            o.reads.errors,
            writes,
            back
        );
    }
    let _ = writeln!(
        out,
        "\n¹ From the repair (thaw, restart, promotion, proxy back to normal); for the garbage, from the moment it was written. A restart's fault window is the time Redis was down. \"Max ms\" is the requests in flight when the fault began: they wait out the 500 ms command deadline, after which the circuit breaker sends the rest straight to the database."
    );
    out
}
