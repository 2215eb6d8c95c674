//! OFREP over HTTP next to `GET /config/flags`, in one run: the local server (`make run`'s
//! defaults: SQLite and the in-memory cache) in this process, real HTTP/1.1 keep-alive clients,
//! 1, 10 and 50 of them. Four kinds of request, each user drawn at random per request:
//!
//! - `GET /config/flags` with the user's bearer token (the baseline of the ratios);
//! - OFREP bulk answered 200 (no `If-None-Match`);
//! - OFREP bulk answered 304 (the user's current `ETag` in `If-None-Match`);
//! - OFREP single flag.
//!
//! The OFREP requests name the user by `targetingKey`, as providers do; the baseline's caller is
//! the token's `sub` (the verified-token cache makes that a hash and a lookup after the first).
//!
//! `make ofrepbench`; `--help` lists the options.

use clap::Parser;
use flags_bench::fixtures::{self, BoxError, CacheChoice};
use flags_bench::load;
use flags_bench::stats::{Summary, ms};
use flags_core::domain::Environment;
use flags_local::cors::{AllowedOrigins, DEFAULT_ALLOWED_ORIGINS};
use reqwest::StatusCode;
use std::fmt::Write as _;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

#[derive(Debug, Parser)]
struct Args {
    /// Seconds each request kind runs per concurrency level, after a warm-up.
    #[arg(long, default_value_t = 5)]
    seconds: u64,
    /// Concurrent clients, one run per value.
    #[arg(long, value_delimiter = ',', default_value = "1,10,50")]
    clients: Vec<usize>,
    /// Flags in the environment.
    #[arg(long, default_value_t = 20)]
    flags: usize,
    /// Distinct users.
    #[arg(long, default_value_t = 200)]
    users: usize,
    /// Where the Markdown report is written (also printed).
    #[arg(long, default_value = "target/bench/ofrepbench.md")]
    out: PathBuf,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Kind {
    ConfigFlags,
    BulkFresh,
    BulkNotModified,
    Single,
}

impl Kind {
    const ALL: [Kind; 4] = [
        Kind::ConfigFlags,
        Kind::BulkFresh,
        Kind::BulkNotModified,
        Kind::Single,
    ];

    fn name(self) -> &'static str {
        match self {
            Kind::ConfigFlags => "GET /config/flags (bearer token)",
            Kind::BulkFresh => "OFREP bulk, 200",
            Kind::BulkNotModified => "OFREP bulk, 304 (If-None-Match)",
            Kind::Single => "OFREP single flag",
        }
    }

    fn expected(self) -> StatusCode {
        match self {
            Kind::BulkNotModified => StatusCode::NOT_MODIFIED,
            _ => StatusCode::OK,
        }
    }
}

/// What every client needs: the server's address, the users' tokens and current ETags.
struct Target {
    base: String,
    user_ids: Vec<String>,
    tokens: Vec<String>,
    etags: Vec<String>,
    flag_keys: Vec<String>,
}

impl Target {
    fn request(
        &self,
        client: &reqwest::Client,
        kind: Kind,
        user: usize,
    ) -> reqwest::RequestBuilder {
        let context = format!(
            r#"{{"context":{{"targetingKey":"{}"}}}}"#,
            self.user_ids[user]
        );
        let bulk = format!("{}/ofrep/v1/evaluate/flags", self.base);
        match kind {
            Kind::ConfigFlags => client
                .get(format!("{}/config/flags", self.base))
                .bearer_auth(&self.tokens[user]),
            Kind::BulkFresh => client.post(bulk).body(context),
            Kind::BulkNotModified => client
                .post(bulk)
                .header("if-none-match", &self.etags[user])
                .body(context),
            Kind::Single => {
                let key = &self.flag_keys[user % self.flag_keys.len()];
                client
                    .post(format!("{}/ofrep/v1/evaluate/flags/{key}", self.base))
                    .body(context)
            }
        }
        .header("content-type", "application/json")
    }
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let args = Args::parse();
    let _events = fixtures::logging("error");
    let env = Environment::parse("production").map_err(|e| e.0)?;
    let work_dir = PathBuf::from("target/bench");
    let tokens = fixtures::mint_tokens(&work_dir.join("keys"), args.users)?;
    let sqlite_url = fixtures::fresh_sqlite_file(&work_dir, "ofrepbench")?;
    let flag_keys = fixtures::seed_flags(&sqlite_url, &env, args.flags).await?;
    let context = fixtures::context(&sqlite_url, &CacheChoice::Memory, &tokens).await?;

    let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0)).await?;
    let base = format!("http://{}", listener.local_addr()?);
    let cors = AllowedOrigins::parse(DEFAULT_ALLOWED_ORIGINS)?;
    tokio::spawn(flags_local::server::serve(
        listener,
        context,
        cors,
        std::future::pending(),
    ));

    let user_ids: Vec<String> = (0..args.users).map(|i| format!("bench-user-{i}")).collect();
    let mut target = Target {
        base,
        user_ids,
        tokens: tokens.users.clone(),
        etags: Vec::new(),
        flag_keys,
    };
    // Each user's current ETag (nothing is written during the run, so it stays current).
    let client = reqwest::Client::new();
    for user in 0..args.users {
        let response = target
            .request(&client, Kind::BulkFresh, user)
            .send()
            .await?;
        let etag = response
            .headers()
            .get("etag")
            .and_then(|v| v.to_str().ok())
            .ok_or("the bulk answer has no ETag")?
            .to_owned();
        target.etags.push(etag);
    }
    let target = Arc::new(target);

    let mut rows: Vec<(Kind, usize, Summary)> = Vec::new();
    for kind in Kind::ALL {
        run(&target, kind, 10, Duration::from_secs(1)).await; // warm-up
        for &clients in &args.clients {
            let summary = run(&target, kind, clients, Duration::from_secs(args.seconds)).await;
            eprintln!(
                "{:<36} {clients:>3} clients: {:>8.0} req/s  p50 {} ms  p99 {} ms  errors {}",
                kind.name(),
                summary.per_second,
                ms(summary.p50),
                ms(summary.p99),
                summary.errors
            );
            rows.push((kind, clients, summary));
        }
    }

    let report = report(&args, &rows);
    fixtures::publish(&report, &args.out)?;
    let errors: usize = rows.iter().map(|(_, _, s)| s.errors).sum();
    if errors > 0 {
        return Err(format!("{errors} requests failed or answered an unexpected status").into());
    }
    Ok(())
}

/// `clients` HTTP clients sending `kind` for `duration`.
async fn run(target: &Arc<Target>, kind: Kind, clients: usize, duration: Duration) -> Summary {
    let users = target.user_ids.len();
    let target = Arc::clone(target);
    load::http_closed_loop(
        clients,
        duration,
        users,
        kind.expected(),
        move |client, user| target.request(client, kind, user),
    )
    .await
}

fn report(args: &Args, rows: &[(Kind, usize, Summary)]) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "OFREP over HTTP on the local server (SQLite + in-memory cache), {} flags, {} users, {} s per run; ratio = req/s vs. `GET /config/flags` at the same concurrency, same run.\n",
        args.flags, args.users, args.seconds
    );
    let _ = writeln!(
        out,
        "| Request | Clients | Requests | Req/s | vs. GET /config/flags | p50 ms | p99 ms | Errors |"
    );
    let _ = writeln!(out, "|---|---|---|---|---|---|---|---|");
    for (kind, clients, summary) in rows {
        let baseline = rows
            .iter()
            .find(|(k, c, _)| *k == Kind::ConfigFlags && c == clients)
            .map(|(_, _, s)| s.per_second)
            .unwrap_or(0.0);
        let ratio = if baseline > 0.0 {
            format!("{:.2}×", summary.per_second / baseline)
        } else {
            "–".to_owned()
        };
        let _ = writeln!(
            out,
            "| {} | {clients} | {} | {:.0} | {ratio} | {} | {} | {} |",
            kind.name(),
            summary.requests,
            summary.per_second,
            ms(summary.p50),
            ms(summary.p99),
            summary.errors
        );
    }
    out
}
