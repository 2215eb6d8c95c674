//! Local configuration: `.env.local` (if present) and the environment, with embedded defaults
//! so that `make run` works with nothing installed but Rust.

use crate::cors::{AllowedOrigins, DEFAULT_ALLOWED_ORIGINS};
use flags_api::AuthConfig;
use flags_core::Config;
use flags_core::config::{ConfigError, redact_url};
use std::path::PathBuf;
use std::time::Duration;

/// The ignored folder for local state: the SQLite database and the local signing keys.
pub const DATA_DIR: &str = ".data";
pub const DEFAULT_PORT: u16 = 3000;
/// How often the local server completes pending invalidations (contract §3.1: ≤ 2 s locally).
pub const DEFAULT_POLL_INTERVAL: Duration = Duration::from_secs(1);

#[derive(Debug, Clone)]
pub struct LocalSettings {
    pub config: Config,
    pub port: u16,
    pub data_dir: PathBuf,
    /// `SCHEDULE_POLL_SECONDS`: the background work's period.
    pub poll_interval: Duration,
    /// Token verification when `COGNITO_USER_POOL_ID` (or `AUTH_JWKS_FILE`) is set; `None`
    /// means the local key pair's JWKS.
    pub auth: Option<AuthConfig>,
    /// `CORS_ALLOWED_ORIGINS`: the origins browsers may call from.
    pub cors_allowed_origins: AllowedOrigins,
}

impl LocalSettings {
    /// Reads `.env.local` from the working directory (values already in the environment win),
    /// then builds the configuration. Pools are sized for a server, not a Lambda function.
    pub fn load() -> Result<Self, ConfigError> {
        let _ = dotenvy::from_filename(".env.local");
        Self::from_lookup(|name| std::env::var(name).ok())
    }

    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let get = |name: &str| lookup(name).filter(|v| !v.trim().is_empty());
        let data_dir = PathBuf::from(get("FLAGS_DATA_DIR").unwrap_or_else(|| DATA_DIR.to_owned()));
        let database_url = get("DATABASE_URL")
            .unwrap_or_else(|| format!("sqlite://{}/flags.db", data_dir.display()));
        let config =
            Config::for_server(database_url, get("REDIS_URL")).with_env_overrides(&lookup)?;
        let port = match get("PORT") {
            None => DEFAULT_PORT,
            Some(raw) => raw
                .parse()
                .map_err(|_| ConfigError::new("PORT", "must be a port number"))?,
        };
        let poll_interval = match get("SCHEDULE_POLL_SECONDS") {
            None => DEFAULT_POLL_INTERVAL,
            Some(raw) => raw
                .trim()
                .parse::<u64>()
                .ok()
                .filter(|s| (1..=3600).contains(s))
                .map(Duration::from_secs)
                .ok_or_else(|| {
                    ConfigError::new("SCHEDULE_POLL_SECONDS", "must be an integer from 1 to 3600")
                })?,
        };
        let auth = match AuthConfig::from_env(&lookup)? {
            AuthConfig::Disabled => None,
            configured => Some(configured),
        };
        let cors_allowed_origins = AllowedOrigins::parse(
            get("CORS_ALLOWED_ORIGINS")
                .as_deref()
                .unwrap_or(DEFAULT_ALLOWED_ORIGINS),
        )?;
        Ok(Self {
            config,
            port,
            data_dir,
            poll_interval,
            auth,
            cors_allowed_origins,
        })
    }

    pub fn keys_dir(&self) -> PathBuf {
        self.data_dir.join("auth")
    }

    /// Creates the data folder when the database is the embedded SQLite file.
    pub fn prepare_data_dir(&self) -> std::io::Result<()> {
        std::fs::create_dir_all(&self.data_dir)
    }

    /// One line per store, for the start-up banner; never shows a password.
    pub fn describe_stores(&self) -> (String, String) {
        let database = redact_url(self.config.database_url.expose());
        let cache = match &self.config.redis {
            Some(redis) => format!("Redis at {}", redact_url(redis.url.expose())),
            None => "in-memory (set REDIS_URL to use Redis)".to_owned(),
        };
        (database, cache)
    }

    /// Where tokens are verified, for the start-up banner.
    pub fn describe_auth(&self) -> String {
        match &self.auth {
            Some(AuthConfig::Cognito { user_pool_id, .. }) => {
                format!("Cognito user pool {user_pool_id}")
            }
            Some(AuthConfig::JwksFile { path, .. }) => format!("JWKS file {}", path.display()),
            Some(AuthConfig::Disabled) | None => format!(
                "local key pair in {} (flagctl token mints tokens)",
                self.keys_dir().display()
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_embedded() {
        let settings = LocalSettings::from_lookup(|_| None).unwrap();
        assert_eq!(settings.port, 3000);
        assert_eq!(
            settings.config.database_url.expose(),
            "sqlite://.data/flags.db"
        );
        assert!(settings.config.redis.is_none());
        assert_eq!(settings.poll_interval, Duration::from_secs(1));
        assert_eq!(settings.auth, None);
        assert!(
            settings
                .cors_allowed_origins
                .allows("http://localhost:5173")
        );
        assert!(!settings.cors_allowed_origins.allows("https://example.com"));
    }

    #[test]
    fn redis_can_be_disabled_and_cognito_chosen() {
        let settings = LocalSettings::from_lookup(|name| match name {
            "REDIS_URL" => Some("disabled".into()),
            "COGNITO_USER_POOL_ID" => Some("eu-west-1_EXAMPLE".into()),
            "COGNITO_CLIENT_ID" => Some("client".into()),
            _ => None,
        })
        .unwrap();
        assert!(settings.config.redis.is_none());
        assert_eq!(
            settings.auth,
            Some(AuthConfig::Cognito {
                region: "eu-west-1".into(),
                user_pool_id: "eu-west-1_EXAMPLE".into(),
                client_id: Some("client".into()),
            })
        );
        assert!(settings.describe_auth().contains("eu-west-1_EXAMPLE"));
    }

    #[test]
    fn environment_overrides_defaults() {
        let settings = LocalSettings::from_lookup(|name| match name {
            "PORT" => Some("4000".into()),
            "REDIS_URL" => Some("redis://:pw@127.0.0.1:6379".into()),
            "DATABASE_URL" => Some("postgres://postgres@127.0.0.1/test".into()),
            _ => None,
        })
        .unwrap();
        assert_eq!(settings.port, 4000);
        let (database, cache) = settings.describe_stores();
        assert!(database.starts_with("postgres://"));
        assert!(cache.contains("***") && !cache.contains("pw"));
        assert!(LocalSettings::from_lookup(|n| (n == "PORT").then(|| "x".into())).is_err());
        let error =
            LocalSettings::from_lookup(|n| (n == "SCHEDULE_POLL_SECONDS").then(|| "0".into()))
                .unwrap_err();
        assert_eq!(error.variable, "SCHEDULE_POLL_SECONDS");
    }
}
