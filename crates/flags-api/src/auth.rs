//! Token verification (contract §2.4): RS256 access tokens checked against a JWKS for
//! signature, issuer, expiry, `token_use == "access"` and client id. In AWS the JWKS is the
//! Cognito user pool's, fetched once per execution environment and again (at most once a
//! minute) when a token names a key it does not hold, as after a rotation. It comes from the
//! pool's URL, or from a copy the operator published (a [`JwksSource`]: a pool with a domain
//! cannot serve its JWKS through a VPC endpoint). Locally it is a file written by `flagctl`,
//! verified by exactly the same code. A token that passed is kept (by its
//! SHA-256) and answered from memory until it expires, while its signing key is still published.

use crate::api::{ApiError, ApiRequest};
use flags_core::domain::Actor;
use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, Validation, decode, decode_header};
use moka::sync::Cache;
use serde::Deserialize;
use sha2::{Digest, Sha256};
use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};
use tokio::sync::Mutex;

const JWKS_FETCH_TIMEOUT: Duration = Duration::from_secs(3);
/// A token naming an unknown key refetches the JWKS at most this often (key rotation).
const REFETCH_INTERVAL: Duration = Duration::from_secs(60);
/// How long a failed fetch is answered from memory instead of being tried again.
const FAILURE_MEMORY: Duration = Duration::from_secs(5);
/// Verified tokens kept per process; past this the least useful are evicted.
const VERIFIED_TOKENS: u64 = 10_000;
/// No token stays cached longer than this, whatever its expiry (Cognito's default lifetime).
const VERIFIED_TTL: Duration = Duration::from_secs(3600);
const ADMIN_GROUPS: [&str; 2] = ["admin", "admins"];

/// Who the caller is, from a verified token.
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
    /// Expiry, seconds since the epoch (required by the verification).
    #[serde(default)]
    exp: i64,
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
}

#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("token rejected: {0}")]
    Rejected(String),
    #[error("signing keys unavailable: {0}")]
    KeysUnavailable(String),
}

/// Where the signing keys come from.
#[derive(Debug)]
enum KeyOrigin {
    /// The Cognito user pool's JWKS URL.
    Url {
        url: String,
        client: reqwest::Client,
    },
    /// A JWKS file (local runs; `flagctl` writes it).
    File(PathBuf),
    /// A copy of the JWKS kept elsewhere (in AWS, an SSM parameter).
    Source(Box<dyn JwksSource>),
}

/// Where a verifier reads a published copy of the JWKS: again whenever a token names a key the
/// copy it holds lacks (at most once a minute), so republishing after a rotation is enough.
pub trait JwksSource: std::fmt::Debug + Send + Sync {
    /// The JWKS document (JSON) as published now.
    fn read(&self) -> Pin<Box<dyn Future<Output = Result<String, String>> + Send + '_>>;
}

/// The last fetch attempt, serialised so that concurrent requests wait for one fetch instead of
/// starting their own.
#[derive(Debug, Default)]
struct FetchState {
    /// When an unknown `kid` last caused a refetch.
    last_refetch: Option<Instant>,
    /// The last failed fetch, remembered for [`FAILURE_MEMORY`].
    failure: Option<(Instant, String)>,
}

/// A token that passed the full verification, kept under the SHA-256 of the token.
#[derive(Debug)]
struct Verified {
    caller: Caller,
    /// The key that signed it: a hit counts only while the current keys still hold it.
    kid: String,
}

#[derive(Debug)]
pub struct TokenVerifier {
    origin: KeyOrigin,
    /// Tokens already verified: a signed-in caller's next requests skip the RS256 check until
    /// the token expires. Only successes are kept; a failure is verified again every time.
    verified: Cache<[u8; 32], Arc<Verified>>,
    /// The current keys; `None` until the first successful fetch.
    keys: RwLock<Option<Arc<JwkSet>>>,
    fetch: Mutex<FetchState>,
    issuer: String,
    client_id: Option<String>,
}

impl TokenVerifier {
    fn new(
        origin: KeyOrigin,
        keys: Option<JwkSet>,
        issuer: String,
        client_id: Option<String>,
    ) -> Self {
        Self {
            origin,
            verified: Cache::builder()
                .max_capacity(VERIFIED_TOKENS)
                .time_to_live(VERIFIED_TTL)
                .build(),
            keys: RwLock::new(keys.map(Arc::new)),
            fetch: Mutex::new(FetchState::default()),
            issuer,
            client_id,
        }
    }

    /// A JWKS file, read now and read again when a token names a key it does not hold (the
    /// local key pair was rotated).
    pub fn with_jwks_file(
        path: PathBuf,
        issuer: impl Into<String>,
        client_id: Option<String>,
    ) -> Result<Self, AuthError> {
        let keys = read_jwks_file(&path)?;
        Ok(Self::new(
            KeyOrigin::File(path),
            Some(keys),
            issuer.into(),
            client_id,
        ))
    }

    /// A Cognito user pool: issuer `https://cognito-idp.{region}.amazonaws.com/{pool}`.
    pub fn cognito(region: &str, user_pool_id: &str, client_id: Option<String>) -> Self {
        let issuer = cognito_issuer(region, user_pool_id);
        let url = format!("{issuer}/.well-known/jwks.json");
        Self::with_jwks_url(url, issuer, client_id)
    }

    /// A Cognito user pool whose JWKS is read from `source`, starting from `published` (the
    /// copy read with the rest of the configuration); an empty or unreadable copy is refused.
    pub fn cognito_with_source(
        region: &str,
        user_pool_id: &str,
        client_id: Option<String>,
        published: &str,
        source: Box<dyn JwksSource>,
    ) -> Result<Self, AuthError> {
        let keys = parse_jwks(published).map_err(|e| AuthError::KeysUnavailable(e.to_string()))?;
        let issuer = cognito_issuer(region, user_pool_id);
        Ok(Self::new(
            KeyOrigin::Source(source),
            Some(keys),
            issuer,
            client_id,
        ))
    }

    /// Keys fetched from `url` on first use, and again for an unknown `kid`.
    pub fn with_jwks_url(url: String, issuer: String, client_id: Option<String>) -> Self {
        let client = reqwest::Client::builder()
            .timeout(JWKS_FETCH_TIMEOUT)
            .build()
            .unwrap_or_default();
        Self::new(KeyOrigin::Url { url, client }, None, issuer, client_id)
    }

    /// Loads the keys now if they are remote; errors are logged and retried on first use.
    pub async fn warm_up(&self) {
        if let Err(error) = self.current_keys().await {
            tracing::warn!(error = %error, "could not fetch the JWKS at start; will retry on first token");
        }
    }

    /// Whether the signing keys are loaded, fetching them if they are not (a failed fetch is
    /// not repeated within [`FAILURE_MEMORY`]).
    pub async fn has_keys(&self) -> bool {
        self.current_keys().await.is_ok()
    }

    fn loaded(&self) -> Option<Arc<JwkSet>> {
        self.keys.read().ok().and_then(|keys| keys.clone())
    }

    /// The keys, fetched if none were loaded yet. A failed fetch is remembered for
    /// [`FAILURE_MEMORY`], so requests fail fast instead of each waiting out the fetch timeout.
    async fn current_keys(&self) -> Result<Arc<JwkSet>, AuthError> {
        if let Some(keys) = self.loaded() {
            return Ok(keys);
        }
        let mut state = self.fetch.lock().await;
        if let Some(keys) = self.loaded() {
            return Ok(keys);
        }
        self.fetch_into(&mut state).await
    }

    /// The keys after one refetch for an unknown `kid`, at most once per [`REFETCH_INTERVAL`];
    /// `None` when a refetch is not due (the caller rejects the token).
    async fn refetched_keys(&self, seen: &Arc<JwkSet>) -> Option<Arc<JwkSet>> {
        let mut state = self.fetch.lock().await;
        match self.loaded() {
            // Another request refetched while this one waited for the lock.
            Some(keys) if !Arc::ptr_eq(&keys, seen) => return Some(keys),
            _ => {}
        }
        if state
            .last_refetch
            .is_some_and(|at| at.elapsed() < REFETCH_INTERVAL)
        {
            return None;
        }
        state.last_refetch = Some(Instant::now());
        match self.fetch_into(&mut state).await {
            Ok(keys) => Some(keys),
            Err(error) => {
                tracing::warn!(error = %error, "JWKS refetch for an unknown kid failed");
                None
            }
        }
    }

    async fn fetch_into(&self, state: &mut FetchState) -> Result<Arc<JwkSet>, AuthError> {
        if let Some((at, message)) = &state.failure
            && at.elapsed() < FAILURE_MEMORY
        {
            return Err(AuthError::KeysUnavailable(message.clone()));
        }
        match self.fetch_keys().await {
            Ok(keys) => {
                let keys = Arc::new(keys);
                if let Ok(mut slot) = self.keys.write() {
                    *slot = Some(Arc::clone(&keys));
                }
                state.failure = None;
                Ok(keys)
            }
            Err(error) => {
                state.failure = Some((Instant::now(), error.to_string()));
                Err(error)
            }
        }
    }

    async fn fetch_keys(&self) -> Result<JwkSet, AuthError> {
        let unavailable = |e: &dyn std::fmt::Display| AuthError::KeysUnavailable(e.to_string());
        match &self.origin {
            KeyOrigin::Url { url, client } => client
                .get(url)
                .send()
                .await
                .and_then(reqwest::Response::error_for_status)
                .map_err(|e| unavailable(&e))?
                .json::<JwkSet>()
                .await
                .map_err(|e| unavailable(&e)),
            KeyOrigin::File(path) => read_jwks_file(path),
            KeyOrigin::Source(source) => {
                let text = source.read().await.map_err(|e| unavailable(&e))?;
                parse_jwks(&text).map_err(|e| unavailable(&e))
            }
        }
    }

    /// The caller of a valid access token. A token verified before is answered from memory
    /// while it has not expired and its signing key is still published; anything else gets the
    /// full verification.
    pub async fn verify(&self, token: &str) -> Result<Caller, AuthError> {
        let digest: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        if let Some(hit) = self.verified.get(&digest) {
            let unexpired = hit.caller.exp > chrono::Utc::now().timestamp();
            let key_published = self
                .loaded()
                .is_some_and(|keys| keys.find(&hit.kid).is_some());
            if unexpired && key_published {
                return Ok(hit.caller.clone());
            }
            self.verified.invalidate(&digest);
        }
        let (caller, kid) = self.verify_fully(token).await?;
        self.verified.insert(
            digest,
            Arc::new(Verified {
                caller: caller.clone(),
                kid,
            }),
        );
        Ok(caller)
    }

    /// Verified tokens held right now (for tests and measurements).
    pub fn cached_tokens(&self) -> u64 {
        self.verified.run_pending_tasks();
        self.verified.entry_count()
    }

    /// Signature, issuer, expiry, `token_use` and client id; the caller and the signing key id.
    async fn verify_fully(&self, token: &str) -> Result<(Caller, String), AuthError> {
        let reject = |reason: &str| AuthError::Rejected(reason.to_owned());
        let header = decode_header(token).map_err(|e| AuthError::Rejected(e.to_string()))?;
        if header.alg != Algorithm::RS256 {
            return Err(reject("algorithm must be RS256"));
        }
        let kid = header.kid.ok_or_else(|| reject("token has no kid"))?;
        let mut keys = self.current_keys().await?;
        if keys.find(&kid).is_none() {
            // The pool may have rotated its keys since they were fetched.
            keys = self
                .refetched_keys(&keys)
                .await
                .ok_or_else(|| reject("unknown signing key"))?;
        }
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
        Ok((caller, kid))
    }
}

/// The `iss` of a user pool's tokens, whichever way its JWKS is read.
fn cognito_issuer(region: &str, user_pool_id: &str) -> String {
    format!("https://cognito-idp.{region}.amazonaws.com/{user_pool_id}")
}

/// A JWKS document that holds at least one key: an empty set would reject every token.
fn parse_jwks(text: &str) -> Result<JwkSet, String> {
    let keys: JwkSet = serde_json::from_str(text).map_err(|e| format!("not a JWKS: {e}"))?;
    if keys.keys.is_empty() {
        return Err("the JWKS holds no key".to_owned());
    }
    Ok(keys)
}

fn read_jwks_file(path: &Path) -> Result<JwkSet, AuthError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| AuthError::KeysUnavailable(format!("{}: {e}", path.display())))?;
    serde_json::from_str(&text)
        .map_err(|e| AuthError::KeysUnavailable(format!("{}: {e}", path.display())))
}

/// The admin check of every admin route: 401 without a valid access token, 403 without the
/// group. The handler verifies the token itself, in AWS too: an API Gateway authorizer would
/// answer with its own bodies and accepted Cognito ID tokens.
pub async fn require_admin(
    verifier: Option<&TokenVerifier>,
    request: &ApiRequest,
) -> Result<Caller, ApiError> {
    let token = request.bearer_token().ok_or(ApiError::MissingToken)?;
    if token.is_empty() {
        return Err(ApiError::InvalidToken);
    }
    let verifier = verifier.ok_or_else(|| {
        tracing::error!("admin request but no token verifier is configured (COGNITO_USER_POOL_ID)");
        ApiError::InvalidToken
    })?;
    let caller = verifier.verify(token).await.map_err(|error| {
        match &error {
            AuthError::Rejected(_) => tracing::info!(error = %error, "admin token rejected"),
            AuthError::KeysUnavailable(_) => {
                tracing::error!(error = %error, "admin token not verifiable")
            }
        }
        ApiError::InvalidToken
    })?;
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
    use base64::Engine;
    use std::io::{Read, Write};
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// A JWKS endpoint on a spare port answering `status` and `body` to every request, and
    /// counting them. A plain thread: the test runtime stays free for the verifier.
    fn jwks_endpoint(status: u16, body: &'static str) -> (String, Arc<AtomicUsize>) {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/jwks.json", listener.local_addr().unwrap());
        let requests = Arc::new(AtomicUsize::new(0));
        let counter = Arc::clone(&requests);
        std::thread::spawn(move || {
            for mut socket in listener.incoming().flatten() {
                counter.fetch_add(1, Ordering::SeqCst);
                let mut buffer = [0u8; 4096];
                let _ = socket.read(&mut buffer);
                let response = format!(
                    "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = socket.write_all(response.as_bytes());
            }
        });
        (url, requests)
    }

    /// A token whose header names `kid`; its claims and signature never get checked here.
    fn token_with_kid(kid: &str) -> String {
        let encode = |json: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(json);
        format!(
            "{}.{}.c2ln",
            encode(&format!(r#"{{"alg":"RS256","typ":"JWT","kid":"{kid}"}}"#)),
            encode("{}")
        )
    }

    #[tokio::test]
    async fn a_failed_fetch_is_remembered_instead_of_retried_by_every_request() {
        let (url, requests) = jwks_endpoint(500, "{}");
        let verifier = TokenVerifier::with_jwks_url(url, "issuer".into(), None);
        for _ in 0..5 {
            let result = verifier.verify(&token_with_kid("k1")).await;
            assert!(
                matches!(result, Err(AuthError::KeysUnavailable(_))),
                "{result:?}"
            );
        }
        assert_eq!(requests.load(Ordering::SeqCst), 1);
    }

    const KNOWN_KEY: &str =
        r#"{"keys":[{"kty":"RSA","kid":"known","alg":"RS256","use":"sig","n":"AQAB","e":"AQAB"}]}"#;

    /// A published copy of the JWKS that counts its reads.
    #[derive(Debug)]
    struct Published {
        document: &'static str,
        reads: Arc<AtomicUsize>,
    }

    impl JwksSource for Published {
        fn read(&self) -> Pin<Box<dyn Future<Output = Result<String, String>> + Send + '_>> {
            self.reads.fetch_add(1, Ordering::SeqCst);
            Box::pin(async { Ok(self.document.to_owned()) })
        }
    }

    #[tokio::test]
    async fn a_published_jwks_is_read_again_only_for_an_unknown_kid_once_per_interval() {
        let reads = Arc::new(AtomicUsize::new(0));
        let source = Published {
            document: KNOWN_KEY,
            reads: Arc::clone(&reads),
        };
        let verifier = TokenVerifier::cognito_with_source(
            "eu-west-1",
            "eu-west-1_x",
            None,
            KNOWN_KEY,
            Box::new(source),
        )
        .unwrap();
        assert!(verifier.has_keys().await);
        assert_eq!(
            reads.load(Ordering::SeqCst),
            0,
            "the copy read at start is used"
        );
        for _ in 0..3 {
            let result = verifier.verify(&token_with_kid("rotated")).await;
            assert!(
                matches!(&result, Err(AuthError::Rejected(reason)) if reason == "unknown signing key"),
                "{result:?}"
            );
        }
        assert_eq!(reads.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn an_empty_or_malformed_published_jwks_is_refused_at_start() {
        for document in [r#"{"keys":[]}"#, "<html>", ""] {
            let source = Published {
                document,
                reads: Arc::default(),
            };
            let result = TokenVerifier::cognito_with_source(
                "eu-west-1",
                "eu-west-1_x",
                None,
                document,
                Box::new(source),
            );
            assert!(
                matches!(&result, Err(AuthError::KeysUnavailable(_))),
                "{document}: {result:?}"
            );
        }
    }

    #[tokio::test]
    async fn an_unknown_kid_refetches_once_then_waits_the_interval() {
        const JWKS: &str = r#"{"keys":[{"kty":"RSA","kid":"known","alg":"RS256","use":"sig","n":"AQAB","e":"AQAB"}]}"#;
        let (url, requests) = jwks_endpoint(200, JWKS);
        let verifier = TokenVerifier::with_jwks_url(url, "issuer".into(), None);
        verifier.warm_up().await;
        assert_eq!(requests.load(Ordering::SeqCst), 1);
        for _ in 0..3 {
            let result = verifier.verify(&token_with_kid("rotated")).await;
            assert!(
                matches!(&result, Err(AuthError::Rejected(reason)) if reason == "unknown signing key"),
                "{result:?}"
            );
        }
        assert_eq!(
            requests.load(Ordering::SeqCst),
            2,
            "one refetch for the unknown kid, then none within the interval"
        );
    }
}
