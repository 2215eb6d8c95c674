//! Everything a handler needs, built once per execution environment (Lambda init) or once per
//! local server from a resolved configuration: the flag service with its database pool and
//! Redis client, and the token verifier. Where the configuration comes from is the caller's
//! part (`crate::lambda`: environment and SSM; `flags-local`: `.env.local` and defaults).

use crate::auth::TokenVerifier;
use flags_core::FlagService;
use flags_core::config::{Config, ConfigError};
use flags_core::redis::RedisConnection;
use flags_core::wiring::{App, WiringError};
use std::path::PathBuf;
use std::sync::Arc;

#[derive(Debug, thiserror::Error)]
pub enum InitError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("SSM parameter {0} does not exist (or is not readable by this function)")]
    MissingParameter(String),
    #[error("could not read SSM parameters: {0}")]
    Ssm(String),
    #[error(transparent)]
    Wiring(#[from] WiringError),
    #[error("could not load the JWKS file {path}: {message}")]
    Jwks { path: PathBuf, message: String },
    #[error("the JWKS published in {parameter} is not usable: {message}")]
    PublishedJwks { parameter: String, message: String },
}

/// How tokens are verified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthConfig {
    /// A Cognito user pool's JWKS (AWS).
    Cognito {
        region: String,
        user_pool_id: String,
        client_id: Option<String>,
    },
    /// A JWKS file with a matching issuer (local runs; written by `flagctl`).
    JwksFile {
        path: PathBuf,
        issuer: String,
        client_id: Option<String>,
    },
    /// No verifier: every optional-auth caller is anonymous and every admin request a 401.
    Disabled,
}

impl AuthConfig {
    pub fn from_env(lookup: &impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let get = |name: &str| lookup(name).filter(|v| !v.trim().is_empty());
        if let Some(path) = get("AUTH_JWKS_FILE") {
            let issuer = get("AUTH_ISSUER")
                .ok_or_else(|| ConfigError::new("AUTH_ISSUER", "required with AUTH_JWKS_FILE"))?;
            return Ok(Self::JwksFile {
                path: path.into(),
                issuer,
                client_id: get("AUTH_CLIENT_ID"),
            });
        }
        if let Some(user_pool_id) = get("COGNITO_USER_POOL_ID") {
            let region = get("AWS_REGION")
                .or_else(|| user_pool_id.split('_').next().map(str::to_owned))
                .ok_or_else(|| {
                    ConfigError::new("AWS_REGION", "required with COGNITO_USER_POOL_ID")
                })?;
            return Ok(Self::Cognito {
                region,
                user_pool_id,
                client_id: get("COGNITO_CLIENT_ID"),
            });
        }
        Ok(Self::Disabled)
    }

    pub fn verifier(&self) -> Result<Option<TokenVerifier>, InitError> {
        Ok(match self {
            Self::Cognito {
                region,
                user_pool_id,
                client_id,
            } => Some(TokenVerifier::cognito(
                region,
                user_pool_id,
                client_id.clone(),
            )),
            Self::JwksFile {
                path,
                issuer,
                client_id,
            } => Some(
                TokenVerifier::with_jwks_file(path.clone(), issuer.clone(), client_id.clone())
                    .map_err(|error| InitError::Jwks {
                        path: path.clone(),
                        message: error.to_string(),
                    })?,
            ),
            Self::Disabled => {
                tracing::warn!(
                    "no COGNITO_USER_POOL_ID or AUTH_JWKS_FILE: tokens are not verified by the handlers"
                );
                None
            }
        })
    }
}

/// What every handler gets.
#[derive(Debug)]
pub struct AppContext {
    pub service: Arc<FlagService>,
    pub verifier: Option<TokenVerifier>,
    pub redis: Option<RedisConnection>,
}

impl AppContext {
    pub async fn new(config: &Config, auth: &AuthConfig) -> Result<Self, InitError> {
        Self::with_verifier(config, auth.verifier()?).await
    }

    /// With a verifier built by the caller (the Lambda edge's, over a published JWKS).
    pub async fn with_verifier(
        config: &Config,
        verifier: Option<TokenVerifier>,
    ) -> Result<Self, InitError> {
        let App { service, redis } = App::build(config).await?;
        if let Some(verifier) = &verifier {
            verifier.warm_up().await;
        }
        Ok(Self {
            service,
            verifier,
            redis,
        })
    }
}
