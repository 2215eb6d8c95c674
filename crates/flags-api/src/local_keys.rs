//! The local stand-in for Cognito: an RSA key pair generated on first use, its public half
//! published as a JWKS file, and access tokens shaped like Cognito's, signed with it. The
//! handlers verify these tokens with the same code that verifies Cognito's in AWS.

use aws_lc_rs::encoding::AsDer;
use aws_lc_rs::rsa::{KeyPair, KeySize};
use base64::Engine;
use jsonwebtoken::jwk::{Jwk, JwkSet, KeyAlgorithm, PublicKeyUse};
use jsonwebtoken::{Algorithm, EncodingKey, Header, encode};
use serde::Serialize;
use std::path::{Path, PathBuf};

/// The issuer and client id of local tokens; the handlers check both, as with Cognito.
pub const LOCAL_ISSUER: &str = "urn:flags-local:issuer";
pub const LOCAL_CLIENT_ID: &str = "flags-local";
/// The key id of the first key pair; [`LocalKeys::rotate`] numbers the next ones.
const FIRST_KEY_ID: &str = "flags-local-1";

/// Files of the local key pair under one folder.
#[derive(Debug, Clone)]
pub struct LocalKeys {
    dir: PathBuf,
}

#[derive(Serialize)]
struct AccessTokenClaims<'a> {
    sub: &'a str,
    iss: &'a str,
    client_id: &'a str,
    token_use: &'a str,
    username: &'a str,
    #[serde(
        rename = "cognito:groups",
        skip_serializing_if = "<[String]>::is_empty"
    )]
    groups: &'a [String],
    scope: &'a str,
    iat: i64,
    exp: i64,
    jti: String,
}

impl LocalKeys {
    /// Uses the key pair in `dir`, generating it (and the JWKS) when missing.
    pub fn load_or_create(dir: &Path) -> std::io::Result<Self> {
        let keys = Self {
            dir: dir.to_owned(),
        };
        if !keys.private_key_path().exists() || !keys.jwks_path().exists() {
            keys.generate()?;
        }
        Ok(keys)
    }

    pub fn private_key_path(&self) -> PathBuf {
        self.dir.join("private-key.pem")
    }

    pub fn jwks_path(&self) -> PathBuf {
        self.dir.join("jwks.json")
    }

    fn generate(&self) -> std::io::Result<()> {
        std::fs::create_dir_all(&self.dir)?;
        self.write_new_pair(FIRST_KEY_ID, Vec::new())
    }

    /// Replaces the signing key with a new one under a new key id, keeping the old public keys
    /// in the JWKS so that tokens already issued stay valid: a rotation as Cognito does it.
    pub fn rotate(&self) -> std::io::Result<()> {
        let previous = self.jwks()?.keys;
        let kid = format!("flags-local-{}", previous.len() + 1);
        self.write_new_pair(&kid, previous)
    }

    /// The key id of the current signing key: the JWKS's newest entry.
    fn current_kid(&self) -> std::io::Result<String> {
        self.jwks()?
            .keys
            .last()
            .and_then(|jwk| jwk.common.key_id.clone())
            .ok_or_else(|| std::io::Error::other("the local JWKS holds no key id"))
    }

    fn write_new_pair(&self, kid: &str, mut published: Vec<Jwk>) -> std::io::Result<()> {
        let invalid = |e: &dyn std::fmt::Display| std::io::Error::other(e.to_string());
        let pair = KeyPair::generate(KeySize::Rsa2048).map_err(|e| invalid(&e))?;
        let der = pair.as_der().map_err(|e| invalid(&e))?;
        let body = base64::engine::general_purpose::STANDARD.encode(der.as_ref());
        let lines: Vec<&str> = body
            .as_bytes()
            .chunks(64)
            .map(|c| std::str::from_utf8(c).unwrap_or_default())
            .collect();
        let pem = format!(
            "-----BEGIN PRIVATE KEY-----\n{}\n-----END PRIVATE KEY-----\n",
            lines.join("\n")
        );
        let encoding = EncodingKey::from_rsa_pem(pem.as_bytes()).map_err(|e| invalid(&e))?;
        let mut jwk =
            Jwk::from_encoding_key(&encoding, Algorithm::RS256).map_err(|e| invalid(&e))?;
        jwk.common.key_id = Some(kid.to_owned());
        jwk.common.public_key_use = Some(PublicKeyUse::Signature);
        jwk.common.key_algorithm = Some(KeyAlgorithm::RS256);
        published.push(jwk);
        let jwks = JwkSet { keys: published };
        write_private(&self.private_key_path(), pem.as_bytes())?;
        // Written aside and renamed, so a server rereading it never sees half a file.
        let staged = self.dir.join("jwks.json.new");
        std::fs::write(
            &staged,
            serde_json::to_vec_pretty(&jwks).map_err(|e| invalid(&e))?,
        )?;
        std::fs::rename(staged, self.jwks_path())?;
        Ok(())
    }

    /// A Cognito-shaped access token for `sub`, valid for `ttl_secs` (negative: already expired).
    pub fn mint(&self, sub: &str, groups: &[String], ttl_secs: i64) -> std::io::Result<String> {
        self.mint_with(sub, groups, ttl_secs, LOCAL_ISSUER, "access")
    }

    /// Like [`Self::mint`] with another issuer or `token_use`: for tests of rejected tokens.
    pub fn mint_with(
        &self,
        sub: &str,
        groups: &[String],
        ttl_secs: i64,
        issuer: &str,
        token_use: &str,
    ) -> std::io::Result<String> {
        let pem = std::fs::read(self.private_key_path())?;
        let key = EncodingKey::from_rsa_pem(&pem).map_err(std::io::Error::other)?;
        let now = chrono::Utc::now().timestamp();
        let claims = AccessTokenClaims {
            sub,
            iss: issuer,
            client_id: LOCAL_CLIENT_ID,
            token_use,
            username: sub,
            groups,
            scope: "aws.cognito.signin.user.admin",
            iat: now,
            exp: now + ttl_secs,
            jti: uuid::Uuid::new_v4().to_string(),
        };
        let mut header = Header::new(Algorithm::RS256);
        header.kid = Some(self.current_kid()?);
        encode(&header, &claims, &key).map_err(std::io::Error::other)
    }

    pub fn auth_config(&self) -> crate::AuthConfig {
        crate::AuthConfig::JwksFile {
            path: self.jwks_path(),
            issuer: LOCAL_ISSUER.to_owned(),
            client_id: Some(LOCAL_CLIENT_ID.to_owned()),
        }
    }

    pub fn jwks(&self) -> std::io::Result<JwkSet> {
        serde_json::from_slice(&std::fs::read(self.jwks_path())?).map_err(std::io::Error::other)
    }
}

/// Writes the private key readable by its owner only.
fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    file.write_all(bytes)
}
