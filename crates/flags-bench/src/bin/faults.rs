//! The fault-injection benchmark (AC6 and contract §3): each fault of `flags_bench::faults`
//! under load, measured: requests sent and failed, latency percentiles and cache hits during
//! the fault, and the time from the repair until the cache is used again. It reports; the
//! verdict (no failed request, the cache back) is the test `src/faults/promises.rs`, which
//! `make test` runs.
//!
//! `make faults` runs it; `--help` lists the options.

use clap::Parser;
use flags_bench::faults::{self, FAULTS, Fault, Outcome, Plan, Setup};
use flags_bench::fixtures::{self, BoxError};
use flags_bench::stats::ms;
use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::Duration;

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
    /// Load kept up after the repair, in seconds: the window in which the cache may come back.
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

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let args = Args::parse();
    let keys = PathBuf::from("target/bench/keys");
    let setup = Setup::new(&args.database.database_url, "flags_faults", &keys).await?;
    let plan = Plan {
        clients: args.clients,
        warm_up: Duration::from_secs(2),
        before: Duration::from_secs(2),
        fault: Duration::from_secs(args.fault_seconds),
        recovery: Duration::from_secs(args.recovery_seconds),
        write_every: Duration::from_millis(args.write_every_ms),
    };
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
        let outcome = faults::run(&setup, plan, fault).await?;
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
    fixtures::publish(&report(&args, &outcomes), &args.out)?;
    Ok(())
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
