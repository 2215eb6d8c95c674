//! Contract §3.1 (write propagation) over HTTP, with Redis faults the test controls.
//!
//! Each scenario runs the local server in process (the same handlers and the same background
//! sweeper, every second, as `flagctl serve`) over a fresh PostgreSQL schema and a Redis server
//! of its own (`OwnedRedis`, sometimes behind a `TcpProxy`). It warms the cache for an anonymous
//! and a signed-in caller, makes an admin change **while the fault is active**, checks the write
//! answered 2xx, ends the fault, then reads until the change shows, against the promise:
//!
//! - Redis reachable within one second of the commit (the breaker was open for an unrelated
//!   reason): no read that starts after the 2xx returns the pre-write state;
//! - otherwise: the pre-write state only until the first sweep after Redis is reachable again,
//!   at most 2 s locally (plus [`MARGIN`] for scheduling on a loaded machine), never the TTL;
//!
//! and the `pending_invalidations` table is empty afterwards. Two real `flagctl serve` processes
//! sharing one Redis and one database check the same across instances.
#![allow(clippy::unwrap_used, clippy::expect_used)]
mod common;

use common::process::ServerProcess;
use common::server::{Http, Server};
use common::{pending_invalidations, seeded_postgres_url, unique};
use flags_api::local_keys::LocalKeys;
use flags_local::settings::LocalSettings;
use flags_testkit::{OwnedRedis, ProxyMode, TcpProxy};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Contract §3.1, locally: stale reads end with the first sweep after Redis is reachable again.
const PROMISE: Duration = Duration::from_secs(2);
/// Scheduling slack on a loaded two-core machine (never anything like the 300 s TTL).
const MARGIN: Duration = Duration::from_millis(500);
/// How long `CLIENT PAUSE … WRITE` lasts: longer than a write's 1 s invalidation budget.
const PAUSE: Duration = Duration::from_millis(2500);
/// How long reads are watched when every one of them must already be fresh.
const WATCH: Duration = Duration::from_millis(1500);
/// Reads after the first fresh one (with the pending record gone) that must all be fresh too.
const CONFIRMATIONS: usize = 10;
/// The signed-in reader (bucket 35: inside wishlist-edit-item's 50 % rollout).
const USER: &str = "user-123";
const SNAPSHOT_KEY: &str = "feature_flags:production";

/// The admin changes, each on a flag of the seeded `production` data of its own, so that all
/// three can run one after the other on one database.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Change {
    /// `POST /admin/flags/wishlist-gallery {"enabled":false}`: on for everyone, then off.
    KillSwitch,
    /// An exclude override of [`USER`] on wishlist-add-item (on at 100 %).
    ExcludeUser,
    /// `DELETE /admin/flags/wishlist-edit-item`: the key disappears from `GET /config/flags`.
    DeleteFlag,
}

impl Change {
    const ALL: [Self; 3] = [Self::KillSwitch, Self::ExcludeUser, Self::DeleteFlag];

    fn flag(self) -> &'static str {
        match self {
            Self::KillSwitch => "wishlist-gallery",
            Self::ExcludeUser => "wishlist-add-item",
            Self::DeleteFlag => "wishlist-edit-item",
        }
    }

    /// `flags[flag]` before and after the change (`Null`: absent) for one caller.
    fn values(self, signed_in: bool) -> (Value, Value) {
        match self {
            Self::KillSwitch => (json!(true), json!(false)),
            // Only the excluded user's answer changes.
            Self::ExcludeUser => (json!(true), json!(!signed_in)),
            // Anonymous callers are outside the 50 % rollout; user-123 is inside it.
            Self::DeleteFlag => (json!(signed_in), Value::Null),
        }
    }

    /// Makes the change through the admin API and checks it answered its 2xx.
    async fn apply(self, http: &Http, admin: &str) {
        let flag = self.flag();
        let (method, path, body, expected) = match self {
            Self::KillSwitch => (
                Method::POST,
                format!("/admin/flags/{flag}"),
                Some(r#"{"enabled":false}"#.to_owned()),
                StatusCode::OK,
            ),
            Self::ExcludeUser => (
                Method::POST,
                format!("/admin/flags/{flag}/users"),
                Some(format!(r#"{{"userId":"{USER}","overrideType":"exclude"}}"#)),
                StatusCode::CREATED,
            ),
            Self::DeleteFlag => (
                Method::DELETE,
                format!("/admin/flags/{flag}"),
                None,
                StatusCode::NO_CONTENT,
            ),
        };
        let (status, response, _) = http.call(method, &path, Some(admin), body.as_deref()).await;
        assert_eq!(
            status, expected,
            "{self:?}: a write is never refused because of the cache: {response}"
        );
    }

    /// Whether both callers see the pre-write state.
    fn is_before(self, view: &View) -> bool {
        view.values(self.flag())
            .iter()
            .all(|(signed_in, value)| *value == self.values(*signed_in).0)
    }

    /// Whether both callers see the change. Any answer that is neither the state before nor
    /// the state after the change is a failure on the spot.
    fn is_after(self, view: &View) -> bool {
        view.values(self.flag())
            .iter()
            .all(|(signed_in, value)| {
                let (before, after) = self.values(*signed_in);
                assert!(
                    *value == before || *value == after,
                    "{self:?}: {} = {value} for {}, neither the state before ({before}) nor after ({after}): {view:?}",
                    self.flag(),
                    if *signed_in { USER } else { "an anonymous caller" },
                );
                *value == after
            })
    }
}

/// What one anonymous and one signed-in `GET /config/flags` answered.
#[derive(Debug)]
struct View {
    anonymous: Value,
    user: Value,
}

impl View {
    /// `(signed in, flags[flag])` for both callers; `Null` when the key is absent.
    fn values(&self, flag: &str) -> [(bool, Value); 2] {
        let value = |flags: &Value| flags.get(flag).cloned().unwrap_or(Value::Null);
        [(false, value(&self.anonymous)), (true, value(&self.user))]
    }
}

/// The two callers whose reads are checked, against one server.
struct Reader {
    http: Http,
    user_token: String,
}

impl Reader {
    async fn view(&self) -> View {
        let (status, anonymous) = self.http.get("/config/flags", None).await;
        assert_eq!(
            status,
            StatusCode::OK,
            "Redis trouble is never a 5xx: {anonymous}"
        );
        let (status, user) = self.http.get("/config/flags", Some(&self.user_token)).await;
        assert_eq!(
            status,
            StatusCode::OK,
            "Redis trouble is never a 5xx: {user}"
        );
        View { anonymous, user }
    }
}

/// Whether `key` exists in the Redis on `port`.
async fn exists(redis: &OwnedRedis, key: &str) -> bool {
    redis.cli(&["EXISTS", key]).await.unwrap().trim() == "1"
}

/// Both callers read the pre-write state, and the cache really holds it: the snapshot and the
/// user's overrides are in Redis.
async fn warm(reader: &Reader, redis: &OwnedRedis, change: Change, label: &str) {
    for _ in 0..2 {
        let view = reader.view().await;
        assert!(
            change.is_before(&view),
            "{label}: before the change: {view:?}"
        );
    }
    assert!(
        exists(redis, SNAPSHOT_KEY).await,
        "{label}: the reads cached the snapshot"
    );
    let overrides = format!("{SNAPSHOT_KEY}:overrides:{USER}");
    assert!(
        exists(redis, &overrides).await,
        "{label}: the signed-in read cached {overrides}"
    );
}

/// Reads until both callers see the change and no invalidation is pending any more, and fails
/// if a read that starts after `reachable + PROMISE + MARGIN` still shows the pre-write state.
/// Returns how long after `reachable` the first fresh read (with nothing pending) started.
async fn await_fresh(
    reader: &Reader,
    database_url: &str,
    change: Change,
    reachable: Instant,
    label: &str,
) -> Duration {
    let deadline = reachable + PROMISE + MARGIN;
    loop {
        let started = Instant::now();
        let fresh = change.is_after(&reader.view().await);
        let pending = pending_invalidations(database_url).await;
        if fresh && pending == 0 {
            // The sweep has invalidated after the commit: the old state cannot come back.
            for _ in 0..CONFIRMATIONS {
                let view = reader.view().await;
                assert!(
                    change.is_after(&view),
                    "{label}: the pre-write state came back after the sweep: {view:?}"
                );
            }
            return started.saturating_duration_since(reachable);
        }
        assert!(
            started < deadline,
            "{label}: {} {:?} after Redis was reachable again (promise: {PROMISE:?}, margin {MARGIN:?})",
            if fresh {
                format!("{pending} pending invalidation(s) still there")
            } else {
                "reads still show the pre-write state".to_owned()
            },
            started - reachable,
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// Every read from now until `until` must show the change.
async fn always_fresh(reader: &Reader, change: Change, until: Instant, label: &str) -> usize {
    let mut reads = 0;
    while Instant::now() < until {
        let view = reader.view().await;
        assert!(
            change.is_after(&view),
            "{label}: read #{} after the 2xx shows the pre-write state: {view:?}",
            reads + 1
        );
        reads += 1;
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    reads
}

/// The local server's configuration, exactly as `flagctl serve` builds it from these variables.
fn local_config(database_url: &str, redis_url: &str) -> flags_core::Config {
    LocalSettings::from_lookup(|name| match name {
        "DATABASE_URL" => Some(database_url.to_owned()),
        "REDIS_URL" => Some(redis_url.to_owned()),
        _ => None,
    })
    .unwrap()
    .config
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fault {
    /// The Redis process stopped with SIGSTOP during the write, thawed after the 2xx.
    Freeze,
    /// `CLIENT PAUSE 2500 WRITE`: reads still answered, writes and scripts held back.
    PauseWrites,
    /// The connection cut by a proxy (and new ones closed at once) during the write.
    Cut,
    /// Redis blocked by `DEBUG SLEEP 1` so that a read times out and opens the read breaker,
    /// then the write at once: Redis is reachable again within a second of the commit.
    BreakerOpen,
}

/// One scenario's server, its Redis, and what the test needs to judge it.
struct Rig {
    redis: OwnedRedis,
    proxy: Option<TcpProxy>,
    server: Server,
    reader: Reader,
    database_url: String,
}

impl Rig {
    async fn start(fault: Fault) -> Self {
        let redis = match fault {
            // DEBUG is off by default since Redis 7.
            Fault::BreakerOpen => OwnedRedis::start_with_args(&["--enable-debug-command", "local"]),
            _ => OwnedRedis::start_with_args(&[]),
        }
        .await
        .unwrap();
        let proxy = match fault {
            Fault::Cut => Some(
                TcpProxy::start(SocketAddr::from(([127, 0, 0, 1], redis.port)))
                    .await
                    .unwrap(),
            ),
            _ => None,
        };
        let redis_url = proxy.as_ref().map_or_else(
            || redis.url(),
            |proxy| format!("redis://127.0.0.1:{}", proxy.port),
        );
        let database_url = seeded_postgres_url().await;
        let server = Server::start_config(local_config(&database_url, &redis_url)).await;
        let reader = Reader {
            http: server.http.clone(),
            user_token: server.token(USER),
        };
        wait_for_redis(&server.http, "up", "in-process server").await;
        Self {
            redis,
            proxy,
            server,
            reader,
            database_url,
        }
    }

    async fn pending(&self) -> i64 {
        pending_invalidations(&self.database_url).await
    }

    /// A fault the writer cannot get past leaves its record for the sweeper: this is how the
    /// test knows the fault really was active during the write.
    async fn assert_left_pending(&self, label: &str) {
        assert!(
            self.pending().await >= 1,
            "{label}: the writer reached Redis, so the fault was not active during the write"
        );
    }
}

/// Polls `/health` until it reports Redis `state` ("up" or "down").
async fn wait_for_redis(http: &Http, state: &str, who: &str) {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let (status, health) = http.get("/health", None).await;
        if status == StatusCode::OK && health["redis"] == state {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{who}: Redis never reported {state}: {status} {health}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Sends `DEBUG SLEEP <seconds>` on a raw connection of its own; returns once the command is
/// on its way, with the task that reads the reply (Redis answers when the sleep ends).
async fn debug_sleep(port: u16, seconds: u32) -> tokio::task::JoinHandle<String> {
    let mut socket = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    socket
        .write_all(format!("DEBUG SLEEP {seconds}\r\n").as_bytes())
        .await
        .unwrap();
    tokio::spawn(async move {
        let mut reply = vec![0u8; 64];
        let n = socket.read(&mut reply).await.unwrap();
        String::from_utf8_lossy(&reply[..n]).trim().to_owned()
    })
}

/// One fault × one change, from a fresh server, schema and Redis; returns the time from the
/// end of the fault to the first fresh read.
async fn scenario(fault: Fault, change: Change) -> Duration {
    let label = format!("{fault:?} × {change:?}");
    let rig = Rig::start(fault).await;
    warm(&rig.reader, &rig.redis, change, &label).await;
    assert_eq!(rig.pending().await, 0, "{label}: nothing pending before");
    let (http, admin) = (&rig.server.http, rig.server.admin.as_str());

    let fresh_after = match fault {
        Fault::Freeze => {
            rig.redis.freeze().await;
            change.apply(http, admin).await;
            rig.assert_left_pending(&label).await;
            rig.redis.thaw().await;
            let thawed = Instant::now();
            await_fresh(&rig.reader, &rig.database_url, change, thawed, &label).await
        }
        Fault::PauseWrites => {
            let pause = PAUSE.as_millis().to_string();
            let reply = rig.redis.cli(&["CLIENT", "PAUSE", &pause, "WRITE"]).await;
            // The pause began before the reply arrived, so it ends before this instant.
            let resumed = Instant::now() + PAUSE;
            assert_eq!(reply.unwrap().trim(), "OK", "{label}");
            change.apply(http, admin).await;
            assert!(
                Instant::now() < resumed,
                "{label}: the write must have happened during the pause"
            );
            rig.assert_left_pending(&label).await;
            // Reads may still show the pre-write state during the pause (MGET is not held
            // back): allowed until the first sweep after it ends. They are read all along.
            await_fresh(&rig.reader, &rig.database_url, change, resumed, &label).await
        }
        Fault::Cut => {
            let proxy = rig.proxy.as_ref().unwrap();
            proxy.set(ProxyMode::Cut);
            change.apply(http, admin).await;
            rig.assert_left_pending(&label).await;
            proxy.set(ProxyMode::Pass);
            let restored = Instant::now();
            await_fresh(&rig.reader, &rig.database_url, change, restored, &label).await
        }
        Fault::BreakerOpen => {
            let sleeper = debug_sleep(rig.redis.port, 1).await;
            tokio::time::sleep(Duration::from_millis(50)).await;
            let started = Instant::now();
            let (status, _) = http.get("/config/flags", None).await;
            let waited = started.elapsed();
            assert_eq!(status, StatusCode::OK, "{label}");
            assert!(
                waited >= Duration::from_millis(450),
                "{label}: the read should have waited out the 500 ms command timeout, which \
                 opens the read breaker; it took {waited:?}"
            );
            change.apply(http, admin).await;
            let answered = Instant::now();
            let reads = always_fresh(&rig.reader, change, answered + WATCH, &label).await;
            assert!(reads > 0);
            assert_eq!(
                rig.pending().await,
                0,
                "{label}: Redis answered within the writer's retry budget, so the writer \
                 completed its own invalidation"
            );
            assert_eq!(sleeper.await.unwrap(), "+OK", "{label}: DEBUG SLEEP ran");
            Duration::ZERO
        }
    };
    assert_eq!(rig.pending().await, 0, "{label}: nothing left pending");
    eprintln!("{label}: fresh {fresh_after:?} after the fault ended");
    rig.server.shutdown().await;
    fresh_after
}

async fn every_change(fault: Fault) {
    let mut times = Vec::new();
    for change in Change::ALL {
        times.push((change, scenario(fault, change).await));
    }
    eprintln!("{fault:?}: fresh after the fault ended: {times:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_frozen_during_the_write() {
    every_change(Fault::Freeze).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_writes_paused_during_the_write() {
    every_change(Fault::PauseWrites).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_connection_cut_during_the_write() {
    every_change(Fault::Cut).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_breaker_open_at_the_write_every_read_after_the_2xx_is_fresh() {
    every_change(Fault::BreakerOpen).await;
}

/// Two `flagctl serve` processes over one database, sharing the signing keys of one data
/// folder, with the Redis URLs given.
struct Pair {
    a: ServerProcess,
    b: ServerProcess,
    admin: String,
    user_token: String,
    database_url: String,
}

impl Pair {
    async fn start(redis_url_a: &str, redis_url_b: &str) -> Self {
        let database_url = seeded_postgres_url().await;
        let data_dir = std::env::temp_dir().join(unique("flags-two-processes-"));
        // Both processes load these keys (`<FLAGS_DATA_DIR>/auth`): a token works on either.
        let keys = LocalKeys::load_or_create(&data_dir.join("auth")).unwrap();
        let spawn = |name, redis_url| {
            let vars = [
                ("DATABASE_URL", database_url.as_str()),
                ("REDIS_URL", redis_url),
            ];
            ServerProcess::spawn(name, &vars, &data_dir)
        };
        let (mut a, mut b) = (spawn("a", redis_url_a), spawn("b", redis_url_b));
        a.wait_ready("up").await;
        b.wait_ready("up").await;
        Self {
            a,
            b,
            admin: keys.mint("admin-1", &["admin".to_owned()], 600).unwrap(),
            user_token: keys.mint(USER, &[], 600).unwrap(),
            database_url,
        }
    }

    /// The anonymous and the signed-in caller, reading from B.
    fn reader_b(&self) -> Reader {
        Reader {
            http: self.b.http.clone(),
            user_token: self.user_token.clone(),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_processes_a_write_on_one_is_seen_by_the_next_read_of_the_other() {
    let redis = OwnedRedis::start().await.unwrap();
    let pair = Pair::start(&redis.url(), &redis.url()).await;
    let reader_b = pair.reader_b();
    for change in Change::ALL {
        let label = format!("two processes × {change:?}");
        warm(&reader_b, &redis, change, &label).await;
        change.apply(&pair.a.http, &pair.admin).await;
        let view = reader_b.view().await;
        assert!(
            change.is_after(&view),
            "{label}: B's very next read after A's 2xx: {view:?}"
        );
        assert_eq!(
            pending_invalidations(&pair.database_url).await,
            0,
            "{label}: A completed its own invalidation"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_processes_the_other_sweeps_what_a_writer_cut_off_from_redis_left() {
    let redis = OwnedRedis::start().await.unwrap();
    let proxy = TcpProxy::start(SocketAddr::from(([127, 0, 0, 1], redis.port)))
        .await
        .unwrap();
    // Only A goes through the proxy; B talks to Redis directly.
    let pair = Pair::start(&format!("redis://127.0.0.1:{}", proxy.port), &redis.url()).await;
    let reader_b = pair.reader_b();
    for change in Change::ALL {
        let label = format!("two processes, A cut off × {change:?}");
        warm(&reader_b, &redis, change, &label).await;
        proxy.set(ProxyMode::Cut);
        wait_for_redis(&pair.a.http, "down", "A").await;
        change.apply(&pair.a.http, &pair.admin).await;
        let answered = Instant::now();
        // B's Redis was reachable all along: its own sweeper completes A's pending record.
        let fresh_after =
            await_fresh(&reader_b, &pair.database_url, change, answered, &label).await;
        eprintln!("{label}: B fresh {fresh_after:?} after A's 2xx");
        proxy.set(ProxyMode::Pass);
        // The next change cuts a live connection again.
        wait_for_redis(&pair.a.http, "up", "A").await;
    }
}
