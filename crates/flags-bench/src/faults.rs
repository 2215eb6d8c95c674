//! Faults under load (AC6 and contract §3): the service under continuous load (readers plus an
//! admin writer) while Redis is killed, restarted, frozen, demoted to a replica, slowed down or
//! filled with garbage, and while PostgreSQL is cut off behind a proxy with the cache warm.
//!
//! [`run`] measures one fault: requests sent and failed, latency percentiles during the fault,
//! cache hits during the fault, and the time from the repair until the cache is used again.
//! The `faults` binary reports those numbers; the test in `faults/promises.rs` holds the
//! contract's verdict on them.

use crate::cache_events::CacheEvents;
use crate::fixtures::{self, BoxError, CacheChoice, Tokens};
use crate::load::{self, LoadPlan, Workload};
use crate::stats::{Sample, Summary};
use flags_core::domain::Environment;
use flags_testkit::{OwnedRedis, ProxyMode, TcpProxy};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

#[cfg(test)]
mod promises;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    KillRedis,
    RestartRedis,
    FreezeRedis,
    DemoteRedis,
    SlowRedis(Duration),
    GarbageInCache,
    CutPostgres,
}

impl Fault {
    pub fn name(self) -> String {
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

pub const FAULTS: [Fault; 8] = [
    Fault::KillRedis,
    Fault::RestartRedis,
    Fault::FreezeRedis,
    Fault::DemoteRedis,
    Fault::SlowRedis(Duration::from_millis(100)),
    Fault::SlowRedis(Duration::from_millis(1500)),
    Fault::GarbageInCache,
    Fault::CutPostgres,
];

/// How hard and how long each fault is run.
#[derive(Debug, Clone, Copy)]
pub struct Plan {
    /// Concurrent reading clients (one admin writer comes on top).
    pub clients: usize,
    /// Load before measuring: pools open, the snapshot and every user's overrides cached.
    pub warm_up: Duration,
    /// Normal load before the fault.
    pub before: Duration,
    /// How long the fault lasts.
    pub fault: Duration,
    /// Load kept up after the repair: the window in which the cache must come back.
    pub recovery: Duration,
    /// Time between admin writes (each invalidates the cache).
    pub write_every: Duration,
}

/// What one fault's run measured.
#[derive(Debug)]
pub struct Outcome {
    pub fault: Fault,
    /// Reads that started during the fault.
    pub during: Summary,
    pub reads: Summary,
    pub writes: Summary,
    pub hits_during: usize,
    pub unavailable_logged: usize,
    /// From the repair (for garbage, from the moment it was written) to the first cache hit.
    pub cache_back_after: Option<Duration>,
}

/// What every fault shares: the tokens, a seeded PostgreSQL schema and the cache-event counter.
#[derive(Debug)]
pub struct Setup {
    pub events: Arc<CacheEvents>,
    pub tokens: Tokens,
    pub database_url: String,
    pub environment: Environment,
    pub flag_keys: Vec<String>,
}

impl Setup {
    /// Seeds a fresh `schema`; logging (with the counter) is installed here, once per process.
    pub async fn new(database_url: &str, schema: &str, keys_dir: &Path) -> Result<Self, BoxError> {
        let events = fixtures::logging("error");
        let environment = Environment::parse("production").map_err(|e| e.0)?;
        let tokens = fixtures::mint_tokens(keys_dir, 100)?;
        let database_url =
            fixtures::fresh_postgres_schema(database_url, schema, "flags-faults").await?;
        let flag_keys = fixtures::seed_flags(&database_url, &environment, 20).await?;
        Ok(Self {
            events,
            tokens,
            database_url,
            environment,
            flag_keys,
        })
    }
}

/// Everything a fault acts on.
struct Rig {
    redis: OwnedRedis,
    redis_proxy: TcpProxy,
    postgres_proxy: TcpProxy,
}

/// One fault under load, with a fresh Redis, proxies and service, so that one fault's
/// aftermath cannot hide another.
pub async fn run(setup: &Setup, plan: Plan, fault: Fault) -> Result<Outcome, BoxError> {
    let redis = OwnedRedis::start().await?;
    let redis_proxy = TcpProxy::start(SocketAddr::from(([127, 0, 0, 1], redis.port))).await?;
    let postgres_proxy = TcpProxy::start(postgres_address(&setup.database_url)?).await?;
    let redis_url = match fault {
        Fault::SlowRedis(_) => format!("redis://127.0.0.1:{}", redis_proxy.port),
        _ => redis.url(),
    };
    let service_database_url = match fault {
        Fault::CutPostgres => with_port(&setup.database_url, postgres_proxy.port)?,
        _ => setup.database_url.clone(),
    };
    let mut rig = Rig {
        redis,
        redis_proxy,
        postgres_proxy,
    };
    let context = fixtures::context(
        &service_database_url,
        &CacheChoice::Redis(redis_url),
        &setup.tokens,
    )
    .await?;
    let workload = Arc::new(Workload::new(
        context,
        setup.environment.as_str(),
        setup.flag_keys.clone(),
        &setup.tokens,
    ));

    let warm_up = LoadPlan {
        clients: plan.clients,
        duration: plan.warm_up,
        single_flag_percent: 20,
        write_every: None,
    };
    load::run(Arc::clone(&workload), warm_up, tokio::time::Instant::now()).await;

    let load_plan = LoadPlan {
        clients: plan.clients,
        duration: plan.before + plan.fault + plan.recovery,
        single_flag_percent: 20,
        // Cutting the database tests reads from a warm cache: a write just before the cut would
        // have emptied it. Every other fault runs with the writer invalidating the cache.
        write_every: (fault != Fault::CutPostgres).then_some(plan.write_every),
    };
    let events = &setup.events;
    let unavailable_before = events.counts().unavailable;
    let start = tokio::time::Instant::now();
    let script = async {
        tokio::time::sleep(plan.before).await;
        let injected = Instant::now();
        inject(fault, &mut rig, &setup.environment).await?;
        // A restart is down only for as long as starting takes.
        if fault != Fault::RestartRedis {
            tokio::time::sleep(plan.fault).await;
        }
        repair(fault, &mut rig).await?;
        Ok::<_, BoxError>((injected, Instant::now()))
    };
    let (samples, marks) = tokio::join!(load::run(Arc::clone(&workload), load_plan, start), script);
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
    Ok(Outcome {
        fault,
        during: Summary::of(during.iter().copied(), repaired - injected),
        reads: Summary::of(reads.iter().copied(), load_plan.duration),
        writes: Summary::of(writes.iter().copied(), load_plan.duration),
        hits_during: events.hits_between(injected, repaired),
        unavailable_logged: events.counts().unavailable - unavailable_before,
        cache_back_after: events.first_hit_after(healing_from),
    })
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
