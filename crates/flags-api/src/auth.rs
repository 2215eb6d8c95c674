//! Token verification (contract §2.4): RS256 access tokens checked against a JWKS for
//! signature, issuer, expiry, `token_use == "access"` and client id. In AWS the JWKS is the
//! Cognito user pool's, fetched once per execution environment; locally it is a file written
//! by `flagctl`, verified by exactly the same code.

use crate::api::{ApiError, ApiRequest, AuthorizerClaims};
use flags_core::domain::Actor;
use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, Validation, decode, decode_header};
use serde::Deserialize;
use std::time::Duration;
use tokio::sync::OnceCell;

const JWKS_FETCH_TIMEOUT: Duration = Duration::from_secs(3);
const ADMIN_GROUPS: [&str; 2] = ["admin", "admins"];

/// Who the caller is, from a verified token or from API Gateway's authorizer.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Caller {
    pub sub: String,
    #[serde(rename = "cognito:groups", default)]
    pub groups: Vec<String>,
    #[serde(default)]
    token_use: Option<String>,
    #[serde(default)]
    client_id: Option<String>,
    #[serde(default)]
    pub email: Option<String>,
}

impl Caller {
    /// Who the audit log names for this caller's changes.
    pub fn actor(&self) -> Actor {
        Actor {
            sub: self.sub.clone(),
            email: self.email.clone(),
        }
    }

    pub fn is_admin(&self) -> bool {
        self.groups
            .iter()
            .any(|g| ADMIN_GROUPS.contains(&g.as_str()))
    }

    /// API Gateway passes JWT claims as strings; arrays arrive as `"[admin users]"`.
    pub fn from_authorizer(claims: &AuthorizerClaims) -> Option<Self> {
        let sub = claims.get("sub").filter(|s| !s.is_empty())?.clone();
        let groups = claims
            .get("cognito:groups")
            .map(|raw| {
                raw.trim_matches(|c| c == '[' || c == ']')
                    .split(|c: char| c == ',' || c.is_whitespace())
                    .map(|g| g.trim_matches('"'))
                    .filter(|g| !g.is_empty())
                    .map(str::to_owned)
                    .collect()
            })
            .unwrap_or_default();
        Some(Self {
            sub,
            groups,
            token_use: claims.get("token_use").cloned(),
            client_id: claims.get("client_id").cloned(),
            email: claims.get("email").cloned(),
        })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("token rejected: {0}")]
    Rejected(String),
    #[error("signing keys unavailable: {0}")]
    KeysUnavailable(String),
}

#[derive(Debug)]
enum KeySource {
    Static(JwkSet),
    /// Fetched on first use (the cold start warms it) and kept for the process's life.
    Remote {
        url: String,
        client: reqwest::Client,
        keys: OnceCell<JwkSet>,
    },
}

#[derive(Debug)]
pub struct TokenVerifier {
    keys: KeySource,
    issuer: String,
    client_id: Option<String>,
}

impl TokenVerifier {
    pub fn with_jwks(jwks: JwkSet, issuer: impl Into<String>, client_id: Option<String>) -> Self {
        Self {
            keys: KeySource::Static(jwks),
            issuer: issuer.into(),
            client_id,
        }
    }

    /// A Cognito user pool: issuer `https://cognito-idp.{region}.amazonaws.com/{pool}`.
    pub fn cognito(region: &str, user_pool_id: &str, client_id: Option<String>) -> Self {
        let issuer = format!("https://cognito-idp.{region}.amazonaws.com/{user_pool_id}");
        let url = format!("{issuer}/.well-known/jwks.json");
        let client = reqwest::Client::builder()
            .timeout(JWKS_FETCH_TIMEOUT)
            .build()
            .unwrap_or_default();
        Self {
            keys: KeySource::Remote {
                url,
                client,
                keys: OnceCell::new(),
            },
            issuer,
            client_id,
        }
    }

    /// Loads the keys now if they are remote; errors are logged and retried on first use.
    pub async fn warm_up(&self) {
        if let Err(error) = self.keys().await {
            tracing::warn!(error = %error, "could not fetch the JWKS at start; will retry on first token");
        }
    }

    async fn keys(&self) -> Result<&JwkSet, AuthError> {
        match &self.keys {
            KeySource::Static(keys) => Ok(keys),
            KeySource::Remote { url, client, keys } => {
                keys.get_or_try_init(|| async {
                    let response = client
                        .get(url)
                        .send()
                        .await
                        .map_err(|e| AuthError::KeysUnavailable(e.to_string()))?;
                    response
                        .error_for_status()
                        .map_err(|e| AuthError::KeysUnavailable(e.to_string()))?
                        .json::<JwkSet>()
                        .await
                        .map_err(|e| AuthError::KeysUnavailable(e.to_string()))
                })
                .await
            }
        }
    }

    pub async fn verify(&self, token: &str) -> Result<Caller, AuthError> {
        let reject = |reason: &str| AuthError::Rejected(reason.to_owned());
        let header = decode_header(token).map_err(|e| AuthError::Rejected(e.to_string()))?;
        if header.alg != Algorithm::RS256 {
            return Err(reject("algorithm must be RS256"));
        }
        let kid = header.kid.ok_or_else(|| reject("token has no kid"))?;
        let keys = self.keys().await?;
        let jwk = keys
            .find(&kid)
            .ok_or_else(|| reject("unknown signing key"))?;
        let key = DecodingKey::from_jwk(jwk).map_err(|e| AuthError::Rejected(e.to_string()))?;
        let mut validation = Validation::new(Algorithm::RS256);
        validation.set_issuer(&[&self.issuer]);
        validation.set_required_spec_claims(&["exp", "iss", "sub"]);
        // Cognito access tokens carry `client_id`, not `aud`; it is checked below.
        validation.validate_aud = false;
        validation.leeway = 30;
        let caller = decode::<Caller>(token, &key, &validation)
            .map_err(|e| AuthError::Rejected(e.to_string()))?
            .claims;
        if caller.token_use.as_deref() != Some("access") {
            return Err(reject("token_use must be access"));
        }
        if let Some(expected) = &self.client_id
            && caller.client_id.as_deref() != Some(expected.as_str())
        {
            return Err(reject("token issued for another client"));
        }
        if caller.sub.is_empty() {
            return Err(reject("empty sub"));
        }
        Ok(caller)
    }
}

/// The admin check of every admin route: 401 without a valid identity, 403 without the group.
/// Behind API Gateway the authorizer's claims are used (it verified the token); without them
/// (the local server, or a misrouted event) the handler verifies the bearer token itself.
pub async fn require_admin(
    verifier: Option<&TokenVerifier>,
    request: &ApiRequest,
) -> Result<Caller, ApiError> {
    let caller = match &request.authorizer_claims {
        Some(claims) => Caller::from_authorizer(claims).ok_or(ApiError::InvalidToken)?,
        None => {
            let token = request.bearer_token().ok_or(ApiError::MissingToken)?;
            if token.is_empty() {
                return Err(ApiError::InvalidToken);
            }
            let verifier = verifier.ok_or_else(|| {
                tracing::error!(
                    "admin request without authorizer claims and no token verifier configured"
                );
                ApiError::InvalidToken
            })?;
            verifier.verify(token).await.map_err(|error| {
                tracing::info!(error = %error, "admin token rejected");
                ApiError::InvalidToken
            })?
        }
    };
    if caller.is_admin() {
        Ok(caller)
    } else {
        Err(ApiError::Forbidden)
    }
}

/// The optional-auth route: a valid token identifies the caller, anything else is anonymous.
pub async fn optional_caller(
    verifier: Option<&TokenVerifier>,
    request: &ApiRequest,
) -> Option<Caller> {
    let token = request.bearer_token().filter(|t| !t.is_empty())?;
    let verifier = verifier?;
    match verifier.verify(token).await {
        Ok(caller) => Some(caller),
        Err(error) => {
            tracing::info!(error = %error, "invalid token on an optional-auth route; treating the caller as anonymous");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn authorizer_group_claims_are_parsed() {
        let claims: AuthorizerClaims = [
            ("sub".to_owned(), "abc".to_owned()),
            ("cognito:groups".to_owned(), "[users admins]".to_owned()),
        ]
        .into();
        let caller = Caller::from_authorizer(&claims).unwrap();
        assert!(caller.is_admin());
        assert_eq!(caller.groups, ["users", "admins"]);
        let claims: AuthorizerClaims = [
            ("sub".to_owned(), "abc".to_owned()),
            ("cognito:groups".to_owned(), "users".to_owned()),
        ]
        .into();
        assert!(!Caller::from_authorizer(&claims).unwrap().is_admin());
        assert!(Caller::from_authorizer(&AuthorizerClaims::new()).is_none());
    }
}
