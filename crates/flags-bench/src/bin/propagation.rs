//! Write propagation (contract §3.1): the time from an admin write's 2xx on one instance to the
//! first fresh read on another, with Redis healthy and under the faults the promise covers.
//!
//! Two instances, as two Lambda execution environments or two servers would be: two separate
//! handler contexts (each its own PostgreSQL pool and Redis pool, each running the local
//! server's one-second sweeper), over one fresh PostgreSQL schema and one Redis server owned by
//! the run. The writer A reaches Redis through a proxy the run controls (so a fault can hit A
//! alone); the reader B reaches it directly. Requests go through `flags_api::handlers::handle`.
//!
//! Each write flips `enabled` of a flag that is on at 100 % (`POST /admin/flags/{key}` on A)
//! while B's cache holds the pre-write snapshot; from the 2xx on, B is read (anonymous
//! `GET /config/flags`) about every millisecond until the new value shows, no invalidation is
//! pending any more, and further reads confirm it. The propagation time is the start of the
//! first read after which every read was fresh, from the 2xx (0 when no read after the 2xx was
//! stale) and, under a fault, from the fault's end. The report counts the writes where a read
//! was stale although the promise allows none (Redis healthy, or reachable again within a
//! second of the commit), or fresh later than 2 s + a 250 ms scheduling margin after the fault
//! ended. It measures; the verdict on the same promise is the test
//! `crates/flags-local/tests/write_propagation.rs`, which `make test` runs.
//!
//! `make propagation` runs it; `--help` lists the options.

use bytes::Bytes;
use clap::Parser;
use flags_api::handlers::handle;
use flags_api::{AppContext, Route};
use flags_bench::fixtures::{self, BoxError, CacheChoice};
use flags_bench::load::{api_request, bearer};
use flags_bench::stats::{ms, percentile};
use flags_core::domain::Environment;
use flags_testkit::{OwnedRedis, ProxyMode, TcpProxy};
use http::header::CONTENT_TYPE;
use http::{HeaderMap, HeaderValue, Method, StatusCode};
use serde_json::Value;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Contract §3.1, locally: pre-write state only until the first sweep after Redis is reachable
/// again, at most 2 s.
const PROMISE: Duration = Duration::from_secs(2);
/// Scheduling slack on a shared two-core machine.
const MARGIN: Duration = Duration::from_millis(250);
/// Pause between two reads of B.
const POLL: Duration = Duration::from_millis(1);
/// How often the pending-invalidation table is looked at while the watch waits for it.
const PENDING_EVERY: Duration = Duration::from_millis(10);
/// Reads after the pending record is gone that must all be fresh before the watch ends.
const CONFIRMATIONS: usize = 20;
/// Every write is watched at least this long after its 2xx.
const MIN_WATCH: Duration = Duration::from_millis(200);
/// A watch gives up this long after the promise's deadline (the write then counts as broken).
const WATCH_OVERRUN: Duration = Duration::from_secs(3);
/// `CLIENT PAUSE … WRITE`: longer than a write's one-second invalidation budget.
const PAUSE: Duration = Duration::from_millis(1500);
/// `DEBUG SLEEP`: long enough for one read to wait out its 500 ms deadline, short enough that
/// Redis answers again within a second of the write's commit.
const DEBUG_SLEEP: &str = "0.8";
/// A read that opened the breaker waited out the 500 ms command deadline (minus timer slack).
const BREAKER_READ_MIN: Duration = Duration::from_millis(450);
/// Scenario 5: how many times the scene is set before the write goes ahead anyway.
const BREAKER_ATTEMPTS: usize = 3;
/// Limit for getting both instances back to a healthy, warm state before a write.
const SETTLE_LIMIT: Duration = Duration::from_secs(15);
/// Hard limit for the whole run.
const RUN_LIMIT: Duration = Duration::from_secs(15 * 60);
const ENVIRONMENT: &str = "production";
const SNAPSHOT_KEY: &str = "feature_flags:production";

#[derive(Debug, Parser)]
struct Args {
    #[command(flatten)]
    database: fixtures::DatabaseArg,
    /// Writes in each fault scenario (each one is a fault episode of its own, 1-3 s).
    #[arg(long, default_value_t = 100)]
    writes: usize,
    /// Writes with Redis healthy (cheap, so more of them).
    #[arg(long, default_value_t = 200)]
    healthy_writes: usize,
    /// Run only the scenarios whose name contains this text.
    #[arg(long)]
    only: Option<String>,
    /// Where the Markdown report is written (also printed).
    #[arg(long, default_value = "target/bench/propagation.md")]
    out: PathBuf,
    /// Print every write's timeline to stderr: latency, pending record, B's answers over time.
    #[arg(long)]
    verbose: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Scenario {
    Healthy,
    Frozen,
    PausedWrites,
    WriterCut,
    BreakerOpen,
}

impl Scenario {
    const ALL: [Self; 5] = [
        Self::Healthy,
        Self::Frozen,
        Self::PausedWrites,
        Self::WriterCut,
        Self::BreakerOpen,
    ];

    fn name(self) -> &'static str {
        match self {
            Self::Healthy => "1. Redis healthy",
            Self::Frozen => "2. Redis frozen (SIGSTOP) during the write, thawed after the 2xx",
            Self::PausedWrites => "3. `CLIENT PAUSE 1500 WRITE` just before the write",
            Self::WriterCut => {
                "4. A's Redis connection cut (proxy) during the write, restored after the 2xx; B connected"
            }
            Self::BreakerOpen => {
                "5. A's read breaker open (a read timed out behind `DEBUG SLEEP 0.8`), Redis back within 1 s"
            }
        }
    }

    /// Whether the promise allows no stale read at all after the 2xx (Redis reachable within a
    /// second of the commit).
    fn no_stale_allowed(self) -> bool {
        matches!(self, Self::Healthy | Self::BreakerOpen)
    }

    fn has_fault_end(self) -> bool {
        matches!(self, Self::Frozen | Self::PausedWrites | Self::WriterCut)
    }
}

/// One write and what B answered after it.
#[derive(Debug, Clone)]
struct Episode {
    write_latency: Duration,
    /// From the 2xx to the first read after which every read was fresh (0: none was stale).
    from_2xx: Duration,
    /// Same, from the end of the fault (0 when fresh before it ended).
    from_fault_end: Option<Duration>,
    stale_reads: usize,
    reads: usize,
    /// Pending records in the database right after the 2xx (the writer could not invalidate).
    pending_at_2xx: i64,
    /// Scenario 5: how long the read that was meant to open A's breaker took.
    breaker_read: Option<Duration>,
    /// Scenario 5: scenes set again because that read did not wait out its deadline.
    breaker_retries: usize,
    /// B's answers over time (for `--verbose`).
    timeline: String,
    /// The slowest read of B after the 2xx.
    slowest_read: Duration,
    /// The pending record was still there (or B still stale) when the watch gave up.
    gave_up: bool,
    /// Scheduled reads of B not started (too many in flight).
    skipped_reads: usize,
}

#[derive(Debug)]
struct Outcome {
    scenario: Scenario,
    episodes: Vec<Episode>,
    failures: Vec<String>,
}

/// The two instances, their Redis and what the run needs to judge them.
struct Rig {
    redis: OwnedRedis,
    proxy: TcpProxy,
    a: Arc<AppContext>,
    b: Arc<AppContext>,
    sweepers: Vec<tokio::task::JoinHandle<()>>,
    observer: sqlx::PgPool,
    admin: HeaderMap,
    flag_key: String,
    /// The flag's `enabled` as committed by the last write.
    value: bool,
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let args = Args::parse();
    match tokio::time::timeout(RUN_LIMIT, run(&args)).await {
        Ok(result) => result,
        Err(_) => Err(format!("propagation: the run took more than {RUN_LIMIT:?}; stopped").into()),
    }
}

async fn run(args: &Args) -> Result<(), BoxError> {
    let _events = fixtures::logging("error");
    let started = Instant::now();
    let env = Environment::parse(ENVIRONMENT).map_err(|e| e.0)?;
    let tokens = fixtures::mint_tokens(&PathBuf::from("target/bench/keys"), 0)?;
    let database_url = fixtures::fresh_postgres_schema(
        &args.database.database_url,
        "flags_propagation",
        "flags-propagation",
    )
    .await?;
    let flag_keys = fixtures::seed_flags(&database_url, &env, 4).await?;
    // bench-flag-0000 is on at 100 %: anonymous callers see exactly its `enabled`.
    let flag_key = flag_keys.first().ok_or("no flag seeded")?.clone();

    // DEBUG is off by default since Redis 7; scenario 5 needs DEBUG SLEEP.
    let redis = OwnedRedis::start_with_args(&["--enable-debug-command", "local"]).await?;
    let proxy = TcpProxy::start(SocketAddr::from(([127, 0, 0, 1], redis.port))).await?;
    let a = fixtures::context(
        &database_url,
        &CacheChoice::Redis(format!("redis://127.0.0.1:{}", proxy.port)),
        &tokens,
    )
    .await?;
    let b = fixtures::context(&database_url, &CacheChoice::Redis(redis.url()), &tokens).await?;
    // Both run the local server's background work: the sweeper every second.
    let sweepers = [&a, &b]
        .iter()
        .map(|context| {
            flags_local::server::spawn_background_work(
                context.service.clone(),
                Duration::from_secs(1),
            )
        })
        .collect();
    let observer = sqlx::postgres::PgPoolOptions::new()
        .max_connections(1)
        .connect(&database_url)
        .await?;
    let mut rig = Rig {
        redis,
        proxy,
        a,
        b,
        sweepers,
        observer,
        admin: bearer(&tokens.admin),
        flag_key,
        value: true,
    };

    let mut outcomes = Vec::new();
    for scenario in Scenario::ALL {
        if args
            .only
            .as_ref()
            .is_some_and(|only| !scenario.name().contains(only.as_str()))
        {
            continue;
        }
        let writes = if scenario == Scenario::Healthy {
            args.healthy_writes
        } else {
            args.writes
        };
        eprintln!("==> {} ({writes} writes)", scenario.name());
        let began = Instant::now();
        let outcome = rig.scenario(scenario, writes, args.verbose).await?;
        eprintln!(
            "    {:.1} s; {} writes with a stale read; {}",
            began.elapsed().as_secs_f64(),
            outcome
                .episodes
                .iter()
                .filter(|e| e.stale_reads > 0)
                .count(),
            if outcome.failures.is_empty() {
                "promise held".to_owned()
            } else {
                format!("{} BROKEN", outcome.failures.len())
            }
        );
        outcomes.push(outcome);
    }
    for sweeper in &rig.sweepers {
        sweeper.abort();
    }
    for context in [&rig.a, &rig.b] {
        if let Some(redis) = &context.redis {
            redis.quit().await;
        }
    }

    let report = report(&outcomes, started.elapsed());
    fixtures::publish(&report, &args.out)?;
    let failures: Vec<&String> = outcomes.iter().flat_map(|o| &o.failures).collect();
    eprintln!(
        "\npropagation: {} scenarios, {} write(s) outside the §3.1 promise",
        outcomes.len(),
        failures.len()
    );
    for failure in failures.iter().take(40) {
        eprintln!("  - {failure}");
    }
    if failures.len() > 40 {
        eprintln!("  … and {} more", failures.len() - 40);
    }
    Ok(())
}

impl Rig {
    async fn scenario(
        &mut self,
        scenario: Scenario,
        writes: usize,
        verbose: bool,
    ) -> Result<Outcome, BoxError> {
        let mut outcome = Outcome {
            scenario,
            episodes: Vec::with_capacity(writes),
            failures: Vec::new(),
        };
        for index in 0..writes {
            // Boxed: the handler's future nested this deep overflows the compiler's layout query.
            let episode = Box::pin(self.episode(scenario)).await?;
            if verbose {
                eprintln!(
                    "    #{}: write {} ms, pending at the 2xx {}, {} reads of B, {} stale, fresh {} ms after the 2xx{}; B: {}",
                    index + 1,
                    ms(episode.write_latency),
                    episode.pending_at_2xx,
                    episode.reads,
                    episode.stale_reads,
                    ms(episode.from_2xx),
                    episode.breaker_read.map_or(String::new(), |d| format!(
                        ", breaker read {} ms ({} retries)",
                        ms(d),
                        episode.breaker_retries
                    )),
                    episode.timeline
                );
            }
            judge(scenario, index, &episode, &mut outcome.failures);
            outcome.episodes.push(episode);
        }
        Ok(outcome)
    }

    /// One write under the scenario's fault, and B watched from its 2xx.
    async fn episode(&mut self, scenario: Scenario) -> Result<Episode, BoxError> {
        self.settle().await?;
        let target = !self.value;
        let mut breaker_read = None;
        let mut sleeper = None;
        let mut pause_end = None;
        let mut breaker_retries = 0;
        match scenario {
            Scenario::Healthy => {}
            Scenario::Frozen => self.redis.freeze().await,
            Scenario::PausedWrites => {
                let pause = PAUSE.as_millis().to_string();
                let reply = command(self.redis.port, &["CLIENT", "PAUSE", &pause, "WRITE"]).await?;
                // The pause began before the reply arrived, so it ends at the latest then + PAUSE.
                pause_end = Some(Instant::now() + PAUSE);
                if reply != "+OK" {
                    return Err(format!("CLIENT PAUSE answered {reply}").into());
                }
            }
            Scenario::WriterCut => self.proxy.set(ProxyMode::Cut),
            Scenario::BreakerOpen => {
                for attempt in 1..=BREAKER_ATTEMPTS {
                    let sleeping = debug_sleep(self.redis.port, DEBUG_SLEEP).await?;
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    // An unrelated read on A waits out its deadline behind the sleep: the
                    // breaker opens.
                    let began = Instant::now();
                    read_flag(&self.a, &self.flag_key).await?;
                    let took = began.elapsed();
                    if took >= BREAKER_READ_MIN || attempt == BREAKER_ATTEMPTS {
                        sleeper = Some(sleeping);
                        breaker_read = Some(took);
                        break;
                    }
                    // The read did not wait (on a loaded machine Redis may not have started the
                    // sleep yet): let the sleep end and set the scene again.
                    await_reply(sleeping).await?;
                    breaker_retries += 1;
                }
            }
        }

        let began = Instant::now();
        let status = self.write(target).await;
        let answered = Instant::now();
        let write_latency = answered - began;
        if status != StatusCode::OK {
            // Restore Redis before giving up, so the owned server is not left frozen.
            self.end_fault(scenario).await;
            return Err(format!(
                "{}: the write answered {status}: a write is never refused because of the cache",
                scenario.name()
            )
            .into());
        }
        self.value = target;
        let pending_at_2xx = self.pending().await?;
        let fault_end = match scenario {
            Scenario::Frozen | Scenario::WriterCut => {
                self.end_fault(scenario).await;
                Some(Instant::now())
            }
            Scenario::PausedWrites => pause_end,
            Scenario::Healthy | Scenario::BreakerOpen => None,
        };

        let watch = self.watch(target, answered, fault_end).await?;
        if let Some(sleeper) = sleeper {
            await_reply(sleeper).await?;
        }
        if let Some(end) = pause_end {
            // The next episode starts from a Redis that accepts writes again.
            tokio::time::sleep(end.saturating_duration_since(Instant::now())).await;
        }
        let from_2xx = watch
            .fresh_since
            .map_or(Duration::MAX, |at| at.saturating_duration_since(answered));
        let from_2xx = if watch.stale_reads == 0 {
            Duration::ZERO
        } else {
            from_2xx
        };
        let from_fault_end = fault_end.map(|end| {
            if watch.stale_reads == 0 {
                Duration::ZERO
            } else {
                watch
                    .fresh_since
                    .map_or(Duration::MAX, |at| at.saturating_duration_since(end))
            }
        });
        Ok(Episode {
            write_latency,
            from_2xx,
            from_fault_end,
            stale_reads: watch.stale_reads,
            reads: watch.reads,
            pending_at_2xx,
            breaker_read,
            breaker_retries,
            timeline: watch.timeline(answered, fault_end),
            slowest_read: watch.slowest,
            gave_up: watch.gave_up,
            skipped_reads: watch.skipped,
        })
    }

    async fn end_fault(&self, scenario: Scenario) {
        match scenario {
            Scenario::Frozen => self.redis.thaw().await,
            Scenario::WriterCut => self.proxy.set(ProxyMode::Pass),
            Scenario::Healthy | Scenario::PausedWrites | Scenario::BreakerOpen => {}
        }
    }

    /// `POST /admin/flags/{key}` `{"enabled": target}` on A.
    async fn write(&self, target: bool) -> StatusCode {
        let mut headers = self.admin.clone();
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        let body = Bytes::from(format!("{{\"enabled\":{target}}}"));
        let request = api_request(
            ENVIRONMENT,
            Method::POST,
            Some(&self.flag_key),
            headers,
            body,
        );
        handle(&self.a, Route::AdminUpdateFlag, request)
            .await
            .status
    }

    async fn pending(&self) -> Result<i64, BoxError> {
        Ok(
            sqlx::query_scalar("SELECT COUNT(*) FROM pending_invalidations")
                .fetch_one(&self.observer)
                .await?,
        )
    }

    /// Both instances connected to Redis, nothing pending, and B's cache holding the current
    /// state (so that a stale read is possible at all).
    async fn settle(&self) -> Result<(), BoxError> {
        let deadline = Instant::now() + SETTLE_LIMIT;
        loop {
            let up = [&self.a, &self.b]
                .iter()
                .all(|c| c.redis.as_ref().is_some_and(|r| r.is_up()));
            if up && self.pending().await? == 0 {
                let seen = read_flag(&self.b, &self.flag_key).await?;
                if seen == Some(self.value)
                    && command(self.redis.port, &["EXISTS", SNAPSHOT_KEY]).await? == ":1"
                    && read_flag(&self.b, &self.flag_key).await? == Some(self.value)
                {
                    return Ok(());
                }
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "the instances did not get back to a healthy, warm state within {SETTLE_LIMIT:?} \
                     (Redis up: {up})"
                )
                .into());
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Reads B from the 2xx on a fixed schedule (one read started every [`POLL`], each on its
    /// own task, so a read stuck behind a blocked Redis connection does not hide what the
    /// others answer meanwhile) until the change shows, nothing is pending any more and
    /// [`CONFIRMATIONS`] reads started after that agree; bounded by the promise's deadline plus
    /// an overrun. Reads still in flight are awaited before the answers are judged.
    async fn watch(
        &self,
        target: bool,
        answered: Instant,
        fault_end: Option<Instant>,
    ) -> Result<Watch, BoxError> {
        let reference = fault_end.map_or(answered, |end| end.max(answered));
        let give_up = reference + PROMISE + MARGIN + WATCH_OVERRUN;
        let mut reads: Vec<Read> = Vec::new();
        let mut in_flight = tokio::task::JoinSet::new();
        let mut cleared_at: Option<Instant> = None;
        let mut pending_checked: Option<Instant> = None;
        let mut ticker = tokio::time::interval(POLL);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        let mut gave_up = false;
        let mut skipped = 0;
        loop {
            ticker.tick().await;
            while let Some(done) = in_flight.try_join_next() {
                reads.push(done??);
            }
            if in_flight.len() >= MAX_IN_FLIGHT {
                skipped += 1;
            } else {
                let (context, key) = (Arc::clone(&self.b), self.flag_key.clone());
                in_flight.spawn(async move {
                    let started = Instant::now();
                    let value = read_flag(&context, &key).await?;
                    Ok::<_, BoxError>(Read {
                        started,
                        finished: Instant::now(),
                        value,
                    })
                });
            }
            let now = Instant::now();
            if cleared_at.is_none() && pending_checked.is_none_or(|at| now >= at + PENDING_EVERY) {
                pending_checked = Some(now);
                if self.pending().await? == 0 {
                    cleared_at = Some(Instant::now());
                }
            }
            let confirmed = cleared_at.map_or(0, |cleared| {
                reads
                    .iter()
                    .filter(|r| r.started >= cleared && r.value == Some(target))
                    .count()
            });
            if confirmed >= CONFIRMATIONS && now >= answered + MIN_WATCH {
                break;
            }
            if now >= give_up {
                gave_up = true;
                break;
            }
        }
        let drained = tokio::time::timeout(Duration::from_secs(10), async {
            while let Some(done) = in_flight.join_next().await {
                reads.push(done??);
            }
            Ok::<_, BoxError>(())
        });
        drained
            .await
            .map_err(|_| "reads of B still in flight 10 s after the watch")??;
        reads.sort_by_key(|r| r.started);
        if let Some(odd) = reads.iter().find(|r| r.value.is_none()) {
            return Err(format!(
                "B answered without {} at {:?} after the 2xx: neither before nor after",
                self.flag_key,
                odd.started.saturating_duration_since(answered)
            )
            .into());
        }
        let mut watch = Watch::new(reads, target, cleared_at, gave_up);
        watch.skipped = skipped;
        Ok(watch)
    }
}

/// Reads of B in flight at most (a safety bound, far above what the schedule needs: reads stuck
/// behind a blocked connection wait up to their 500 ms deadline, so a few hundred can be in
/// flight). A tick skipped at the bound is counted and reported: it would be a blind spot.
const MAX_IN_FLIGHT: usize = 2000;

/// One read of B: when it started and finished, and the flag's value in the answer.
#[derive(Debug, Clone, Copy)]
struct Read {
    started: Instant,
    finished: Instant,
    value: Option<bool>,
}

#[derive(Debug, Default)]
struct Watch {
    reads: usize,
    stale_reads: usize,
    /// Start of the first read after which every read (by start) was fresh; `None`: the last
    /// read was still stale when the watch gave up.
    fresh_since: Option<Instant>,
    /// The slowest read of B.
    slowest: Duration,
    /// Each read whose answer differed from the previous one (by start): (start, fresh).
    changes: Vec<(Instant, bool)>,
    /// When the pending-invalidation table was first seen empty.
    cleared_at: Option<Instant>,
    /// The watch reached its limit before the pending record was gone and confirmed.
    gave_up: bool,
    /// Scheduled reads not started because [`MAX_IN_FLIGHT`] were in flight.
    skipped: usize,
}

impl Watch {
    fn new(reads: Vec<Read>, target: bool, cleared_at: Option<Instant>, gave_up: bool) -> Self {
        let mut watch = Self {
            reads: reads.len(),
            cleared_at,
            ..Self::default()
        };
        for read in &reads {
            let fresh = read.value == Some(target);
            if fresh {
                watch.fresh_since.get_or_insert(read.started);
            } else {
                watch.stale_reads += 1;
                watch.fresh_since = None;
            }
            if watch.changes.last().is_none_or(|(_, last)| *last != fresh) {
                watch.changes.push((read.started, fresh));
            }
            watch.slowest = watch.slowest.max(read.finished - read.started);
        }
        watch.gave_up = gave_up;
        watch
    }

    /// "+0.1 ms stale, +12.3 ms fresh, …" relative to the 2xx, with the fault's end and the
    /// moment nothing was pending any more.
    fn timeline(&self, answered: Instant, fault_end: Option<Instant>) -> String {
        let at = |instant: Instant| {
            let signed = if instant >= answered {
                (instant - answered).as_secs_f64()
            } else {
                -(answered - instant).as_secs_f64()
            };
            format!("{:+.1} ms", signed * 1000.0)
        };
        let mut events: Vec<(Instant, String)> = self
            .changes
            .iter()
            .map(|(instant, fresh)| (*instant, if *fresh { "fresh" } else { "stale" }.to_owned()))
            .collect();
        if let Some(end) = fault_end {
            events.push((end, "fault ended".to_owned()));
        }
        if let Some(cleared) = self.cleared_at {
            events.push((cleared, "nothing pending".to_owned()));
        }
        events.sort_by_key(|(instant, _)| *instant);
        let mut line = events
            .iter()
            .map(|(instant, what)| format!("{} {what}", at(*instant)))
            .collect::<Vec<_>>()
            .join(", ");
        let _ = write!(line, "; slowest read {} ms", ms(self.slowest));
        line
    }
}

/// The contract's promise for one write.
fn judge(scenario: Scenario, index: usize, episode: &Episode, failures: &mut Vec<String>) {
    let label = format!("{} write #{}", scenario.name(), index + 1);
    if episode.from_2xx == Duration::MAX {
        failures.push(format!(
            "{label}: B still served the pre-write state when the watch gave up ({} stale reads)",
            episode.stale_reads
        ));
        return;
    }
    if episode.gave_up {
        failures.push(format!(
            "{label}: the pending invalidation was still in the database when the watch gave up \
             ({} ms after the promise's deadline)",
            WATCH_OVERRUN.as_millis()
        ));
    }
    if scenario.no_stale_allowed() && episode.stale_reads > 0 {
        failures.push(format!(
            "{label}: {} of {} reads of B after the 2xx returned the pre-write state (fresh {} ms after the 2xx); \
             Redis was reachable within 1 s of the commit, so none may",
            episode.stale_reads,
            episode.reads,
            ms(episode.from_2xx)
        ));
    }
    if let Some(late) = episode.from_fault_end
        && late > PROMISE + MARGIN
    {
        failures.push(format!(
            "{label}: B fresh only {} ms after the fault ended (promise {} ms + {} ms margin)",
            ms(late),
            PROMISE.as_millis(),
            MARGIN.as_millis()
        ));
    }
}

/// `GET /config/flags` for an anonymous caller; the flag's evaluated value.
async fn read_flag(context: &AppContext, key: &str) -> Result<Option<bool>, BoxError> {
    let request = api_request(
        ENVIRONMENT,
        Method::GET,
        None,
        HeaderMap::new(),
        Bytes::new(),
    );
    let response = handle(context, Route::GetFlags, request).await;
    if response.status != StatusCode::OK {
        return Err(format!(
            "GET /config/flags answered {}: Redis trouble is never an error",
            response.status
        )
        .into());
    }
    let body: Option<Value> = response
        .body
        .as_deref()
        .and_then(|text| serde_json::from_str(text).ok());
    Ok(body
        .as_ref()
        .and_then(|body| body.get(key))
        .and_then(Value::as_bool))
}

fn resp(args: &[&str]) -> Vec<u8> {
    let mut out = format!("*{}\r\n", args.len());
    for arg in args {
        let _ = write!(out, "${}\r\n{arg}\r\n", arg.len());
    }
    out.into_bytes()
}

/// Reads one reply line (`+OK`, `:1`, `-ERR …`).
async fn reply_line(socket: &mut TcpStream) -> Result<String, BoxError> {
    let mut reply = Vec::new();
    let mut byte = [0u8; 1];
    while !reply.ends_with(b"\r\n") {
        if socket.read(&mut byte).await? == 0 {
            return Err("Redis closed the connection".into());
        }
        reply.push(byte[0]);
    }
    Ok(String::from_utf8_lossy(&reply).trim().to_owned())
}

/// One command on a connection of its own, straight to the owned Redis (not through A's proxy).
async fn command(port: u16, args: &[&str]) -> Result<String, BoxError> {
    let exchange = async {
        let mut socket = TcpStream::connect(("127.0.0.1", port)).await?;
        socket.write_all(&resp(args)).await?;
        reply_line(&mut socket).await
    };
    tokio::time::timeout(Duration::from_secs(5), exchange)
        .await
        .map_err(|_| format!("Redis did not answer {args:?}"))?
}

/// Waits for the `DEBUG SLEEP` reply (`+OK` when the sleep is over).
async fn await_reply(
    sleeper: tokio::task::JoinHandle<Result<String, BoxError>>,
) -> Result<(), BoxError> {
    let reply = tokio::time::timeout(Duration::from_secs(5), sleeper)
        .await
        .map_err(|_| "DEBUG SLEEP never answered")???;
    if reply == "+OK" {
        Ok(())
    } else {
        Err(format!("DEBUG SLEEP answered {reply} (is DEBUG enabled?)").into())
    }
}

/// Sends `DEBUG SLEEP <seconds>` on a raw connection of its own and returns once it is on its
/// way, with the task that reads the reply (Redis answers when the sleep ends).
async fn debug_sleep(
    port: u16,
    seconds: &str,
) -> Result<tokio::task::JoinHandle<Result<String, BoxError>>, BoxError> {
    let mut socket = TcpStream::connect(("127.0.0.1", port)).await?;
    socket
        .write_all(&resp(&["DEBUG", "SLEEP", seconds]))
        .await?;
    Ok(tokio::spawn(async move { reply_line(&mut socket).await }))
}

fn durations(episodes: &[Episode], pick: impl Fn(&Episode) -> Option<Duration>) -> Vec<Duration> {
    let mut values: Vec<Duration> = episodes.iter().filter_map(pick).collect();
    values.sort_unstable();
    values
}

fn median_max(sorted: &[Duration]) -> String {
    if sorted.is_empty() {
        return "–".to_owned();
    }
    let show = |d: Duration| {
        if d == Duration::MAX {
            "never".to_owned()
        } else {
            ms(d)
        }
    };
    format!(
        "{} / {}",
        show(percentile(sorted, 50.0)),
        show(sorted.last().copied().unwrap_or_default())
    )
}

fn report(outcomes: &[Outcome], took: Duration) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "Two instances (two handler contexts, each with its own PostgreSQL pool of 10 and Redis pool of 4, \
         each running the 1 s sweeper), one PostgreSQL schema, one owned Redis; the writer A reaches Redis \
         through a proxy, the reader B directly. Each write flips `enabled` of a flag on at 100 % on A while B's \
         cache holds the old snapshot. From the 2xx on, B is read (anonymous `GET /config/flags`) on a schedule: \
         one read started every {} ms, each on its own task (at most {MAX_IN_FLIGHT} in flight, so a read stuck \
         behind a blocked connection hides nothing), until the new value shows, no invalidation is pending and \
         {CONFIRMATIONS} reads started after that agree (at least {} ms). Propagation: start of the first read \
         after which every read was fresh (0 when no read after the 2xx was stale). Run took {:.0} s, finished {}.\n",
        POLL.as_millis(),
        MIN_WATCH.as_millis(),
        took.as_secs_f64(),
        chrono::Utc::now().format("%Y-%m-%d %H:%M UTC"),
    );
    let _ = writeln!(
        out,
        "| Scenario | Writes | Propagation from the 2xx, median / max ms | From the fault's end, median / max ms | Writes with a stale read after the 2xx | Stale reads (all writes) | Writer left the record pending | Slowest read of B, ms | Write latency p50 / p99 ms | Promise |"
    );
    let _ = writeln!(out, "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|");
    for o in outcomes {
        let e = &o.episodes;
        let from_2xx = durations(e, |x| Some(x.from_2xx));
        let from_end = durations(e, |x| x.from_fault_end);
        let latency = durations(e, |x| Some(x.write_latency));
        let stale_writes = e.iter().filter(|x| x.stale_reads > 0).count();
        let stale_reads: usize = e.iter().map(|x| x.stale_reads).sum();
        let left_pending = e.iter().filter(|x| x.pending_at_2xx > 0).count();
        let slowest = e.iter().map(|x| x.slowest_read).max().unwrap_or_default();
        let verdict = if o.failures.is_empty() {
            "held".to_owned()
        } else {
            format!("**BROKEN in {} writes**", o.failures.len())
        };
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} / {} | {} |",
            o.scenario.name(),
            e.len(),
            median_max(&from_2xx),
            if o.scenario.has_fault_end() {
                median_max(&from_end)
            } else {
                "–".to_owned()
            },
            stale_writes,
            stale_reads,
            left_pending,
            ms(slowest),
            ms(percentile(&latency, 50.0)),
            ms(percentile(&latency, 99.0)),
            verdict
        );
    }
    let skipped: usize = outcomes
        .iter()
        .flat_map(|o| &o.episodes)
        .map(|e| e.skipped_reads)
        .sum();
    if skipped > 0 {
        let _ = writeln!(
            out,
            "\n{skipped} scheduled reads of B were not started because {MAX_IN_FLIGHT} were in flight: \
             the read schedule has gaps there."
        );
    }
    for o in outcomes {
        if o.scenario == Scenario::BreakerOpen {
            let reads = durations(&o.episodes, |x| x.breaker_read);
            let opened = reads.iter().filter(|d| **d >= BREAKER_READ_MIN).count();
            let retries: usize = o.episodes.iter().map(|x| x.breaker_retries).sum();
            let _ = writeln!(
                out,
                "\nScenario 5: the read on A just before each write took {} ms (median; min {} ms); {opened} of {} \
                 waited out the 500 ms deadline, which opens the read breaker ({retries} time(s) the read did not \
                 wait and the scene was set again first).",
                ms(percentile(&reads, 50.0)),
                ms(reads.first().copied().unwrap_or_default()),
                reads.len()
            );
        }
    }
    let _ = writeln!(
        out,
        "\n\"Writer left the record pending\": writes after whose 2xx a pending invalidation was still in the \
         database, i.e. the writer could not invalidate (in scenario 4, B's sweeper may already have completed \
         it). Promise (contract §3.1): no stale read after the 2xx when Redis is reachable within 1 s of the \
         commit (1, 5); otherwise fresh at most {} ms + {} ms margin after the fault ended (2-4).",
        PROMISE.as_millis(),
        MARGIN.as_millis()
    );
    let failures: Vec<&String> = outcomes.iter().flat_map(|o| &o.failures).collect();
    if !failures.is_empty() {
        let _ = writeln!(
            out,
            "\nBroken promises ({} writes; the first 20):\n",
            failures.len()
        );
        for failure in failures.iter().take(20) {
            let _ = writeln!(out, "- {failure}");
        }
    }
    out
}
