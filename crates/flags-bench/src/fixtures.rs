//! What a run needs before the first request: an empty database (a PostgreSQL schema or a SQLite
//! file of its own), seeded flags, signing keys with minted tokens, and the handler context.

use crate::cache_events::CacheEvents;
use async_trait::async_trait;
use flags_api::local_keys::LocalKeys;
use flags_api::{AppContext, AuthConfig};
use flags_core::cache::{
    CacheError, CacheFill, CacheKind, CacheRead, Environments, EnvironmentsRead, FlagCache,
    Generation, InvalidateAllReport, Invalidation,
};
use flags_core::domain::{Environment, FlagKey, NewFlag, Rollout};
use flags_core::rate_limit::{AuditLogRateLimiter, DEFAULT_WINDOW, RateWindow};
use flags_core::wiring::open_store;
use flags_core::{Config, FlagService};
use flags_testkit::postgres;
use std::path::Path;
use std::sync::Arc;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The PostgreSQL server a benchmark binary uses (`--database-url`).
#[derive(Debug, clap::Args)]
pub struct DatabaseArg {
    /// PostgreSQL to use: the binary recreates a schema of its own in it (the server is never
    /// stopped).
    #[arg(
        long,
        env = "DATABASE_URL_TEST",
        default_value = "postgres://postgres@127.0.0.1:5432/test"
    )]
    pub database_url: String,
}

/// Prints a Markdown report and writes it to `out`.
pub fn publish(report: &str, out: &Path) -> std::io::Result<()> {
    println!("{report}");
    if let Some(dir) = out.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(out, report)
}

/// A fresh, empty schema in the PostgreSQL database of `base_url`; returns a URL that uses it.
/// Its connections show up in `pg_stat_activity` under `application_name`.
pub async fn fresh_postgres_schema(
    base_url: &str,
    schema: &str,
    application_name: &str,
) -> Result<String, BoxError> {
    let url = postgres::fresh_schema(base_url, schema).await?;
    Ok(postgres::with_option(
        &url,
        &format!("application_name={application_name}"),
    ))
}

/// A fresh SQLite file under `dir`; returns its URL.
pub fn fresh_sqlite_file(dir: &Path, name: &str) -> Result<String, BoxError> {
    std::fs::create_dir_all(dir)?;
    let path = dir.join(format!("{name}.db"));
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
    }
    Ok(format!("sqlite://{}", path.display()))
}

/// Migrates the database behind `database_url` and creates `count` flags in `env`, a mix of
/// fully on, partial rollouts and disabled flags.
pub async fn seed_flags(
    database_url: &str,
    env: &Environment,
    count: usize,
) -> Result<Vec<String>, BoxError> {
    let app = flags_core::App::build(&Config::new(database_url, None)).await?;
    app.service.store().migrate().await?;
    let mut keys = Vec::with_capacity(count);
    for index in 0..count {
        let key = format!("bench-flag-{index:04}");
        let new = NewFlag {
            flag_key: FlagKey::parse(&key).map_err(|e| e.0)?,
            enabled: index % 4 != 3,
            rollout: Rollout::new([100, 50, 10, 0][index % 4]).ok_or("rollout")?,
            description: Some(format!("benchmark flag {index}")),
        };
        app.service.create_flag(env, new, None).await?;
        keys.push(key);
    }
    Ok(keys)
}

/// Signing keys in `dir` and bearer tokens for `users` users plus one admin.
#[derive(Debug, Clone)]
pub struct Tokens {
    pub auth: AuthConfig,
    pub users: Vec<String>,
    pub admin: String,
}

pub fn mint_tokens(dir: &Path, users: usize) -> Result<Tokens, BoxError> {
    let keys = LocalKeys::load_or_create(dir)?;
    let hour = 3600;
    let users = (0..users)
        .map(|i| keys.mint(&format!("bench-user-{i}"), &[], hour))
        .collect::<Result<Vec<_>, _>>()?;
    let admin = keys.mint("bench-admin", &["admin".to_owned()], hour)?;
    Ok(Tokens {
        auth: keys.auth_config(),
        users,
        admin,
    })
}

/// Environment variables of a process, as (name, value).
pub type ProcessEnv = Vec<(&'static str, String)>;

/// Tokens for `users` users, signed by the keys in `target/bench/keys`, and the environment that
/// makes a Lambda function verify them (`AUTH_JWKS_FILE`, `AUTH_ISSUER`).
pub fn lambda_tokens(users: usize) -> Result<(Tokens, ProcessEnv), BoxError> {
    let tokens = mint_tokens(&std::env::current_dir()?.join("target/bench/keys"), users)?;
    let AuthConfig::JwksFile { path, issuer, .. } = &tokens.auth else {
        return Err("local keys give a JWKS file".into());
    };
    let env = vec![
        ("AUTH_JWKS_FILE", path.display().to_string()),
        ("AUTH_ISSUER", issuer.clone()),
    ];
    Ok((tokens, env))
}

/// Which cache the service under test uses.
#[derive(Debug, Clone)]
pub enum CacheChoice {
    Redis(String),
    Memory,
    /// No cache at all: every read goes to the database (the database-only baseline).
    None,
}

/// The handler context, built as the local server builds it (its pool sizes), with the
/// cache-event counter already listening.
pub async fn context(
    database_url: &str,
    cache: &CacheChoice,
    tokens: &Tokens,
) -> Result<Arc<AppContext>, BoxError> {
    let redis_url = match cache {
        CacheChoice::Redis(url) => Some(url.clone()),
        CacheChoice::Memory | CacheChoice::None => None,
    };
    let config = Config::for_server(database_url, redis_url);
    let mut context = AppContext::new(&config, &tokens.auth).await?;
    if matches!(cache, CacheChoice::None) {
        let store = open_store(database_url, config.database_pool_size)?;
        let window = RateWindow::new(config.override_rate_limit, DEFAULT_WINDOW);
        let limiter = Arc::new(AuditLogRateLimiter::new(window));
        context.service = Arc::new(FlagService::new(store, Arc::new(NoCache), limiter));
    }
    Ok(Arc::new(context))
}

/// Installs logging with the cache-event counter; call once per process.
pub fn logging(default_output: &str) -> Arc<CacheEvents> {
    let events = CacheEvents::new();
    crate::cache_events::install(&events, default_output);
    events
}

/// A cache that never holds anything: the database-only baseline.
#[derive(Debug)]
pub struct NoCache;

#[async_trait]
impl FlagCache for NoCache {
    fn kind(&self) -> CacheKind {
        CacheKind::Memory
    }

    async fn read(&self, _: &Environment, _: Option<&str>) -> Result<CacheRead, CacheError> {
        Ok(CacheRead::default())
    }

    async fn fill(
        &self,
        _: &Environment,
        _: Generation,
        _: CacheFill<'_>,
    ) -> Result<bool, CacheError> {
        Ok(false)
    }

    async fn invalidate(&self, _: &Environment, _: Invalidation<'_>) -> Result<(), CacheError> {
        Ok(())
    }

    /// No list either: every request asks the database, as the baseline should.
    async fn read_environments(&self) -> Result<EnvironmentsRead, CacheError> {
        Err(CacheError::Unavailable("no cache"))
    }

    async fn fill_environments(&self, _: Generation, _: &Environments) -> Result<bool, CacheError> {
        Ok(false)
    }

    async fn invalidate_all(&self) -> InvalidateAllReport {
        InvalidateAllReport {
            deleted: 0,
            complete: true,
        }
    }

    async fn ping(&self) -> Result<(), CacheError> {
        Ok(())
    }
}
