//! The verified-token cache (`TokenVerifier::verify`): a token verified once is answered from
//! memory, but an expired token, or one whose signing key is no longer published, is refused
//! although it was cached. Real RS256 tokens from the local key pair; no server needed.
#![allow(clippy::unwrap_used, clippy::expect_used)]
mod support;

use flags_api::auth::{AuthError, TokenVerifier};
use flags_api::local_keys::{LOCAL_CLIENT_ID, LOCAL_ISSUER};
use support::local_keys;

fn verifier(keys: &flags_api::local_keys::LocalKeys) -> TokenVerifier {
    TokenVerifier::with_jwks_file(
        keys.jwks_path(),
        LOCAL_ISSUER,
        Some(LOCAL_CLIENT_ID.to_owned()),
    )
    .unwrap()
}

#[tokio::test]
async fn a_verified_token_is_cached_and_failures_are_not() {
    let keys = local_keys();
    let verifier = verifier(&keys);
    let token = keys.mint("alice", &["admin".to_owned()], 600).unwrap();
    for _ in 0..3 {
        assert_eq!(verifier.verify(&token).await.unwrap().sub, "alice");
    }
    assert_eq!(verifier.cached_tokens(), 1);
    let id_token = keys
        .mint_with("alice", &[], 600, LOCAL_ISSUER, "id")
        .unwrap();
    for _ in 0..2 {
        assert!(matches!(
            verifier.verify(&id_token).await,
            Err(AuthError::Rejected(_))
        ));
    }
    assert_eq!(verifier.cached_tokens(), 1, "failures are never kept");
}

/// Verification allows 30 s of clock skew; the cache does not extend it: once the token is past
/// its expiry and the skew, it is refused although it was cached.
#[tokio::test]
async fn an_expired_token_is_refused_although_it_was_cached() {
    let keys = local_keys();
    let verifier = verifier(&keys);
    let token = keys.mint("alice", &[], -29).unwrap();
    assert!(verifier.verify(&token).await.is_ok(), "within the skew");
    tokio::time::sleep(std::time::Duration::from_millis(2_100)).await;
    assert!(matches!(
        verifier.verify(&token).await,
        Err(AuthError::Rejected(_))
    ));
}

/// A key withdrawn from the JWKS (a compromised key removed by the pool) revokes the tokens it
/// signed, cached or not, as soon as the verifier has read the new JWKS.
#[tokio::test]
async fn a_token_of_a_withdrawn_key_is_refused_although_it_was_cached() {
    let keys = local_keys();
    let verifier = verifier(&keys);
    let old = keys.mint("alice", &[], 600).unwrap();
    assert!(verifier.verify(&old).await.is_ok());

    keys.rotate().unwrap();
    let mut jwks = keys.jwks().unwrap();
    jwks.keys.remove(0);
    std::fs::write(keys.jwks_path(), serde_json::to_vec(&jwks).unwrap()).unwrap();
    // A token of the new key makes the verifier read the JWKS again.
    let new = keys.mint("bob", &[], 600).unwrap();
    assert_eq!(verifier.verify(&new).await.unwrap().sub, "bob");

    assert!(matches!(
        verifier.verify(&old).await,
        Err(AuthError::Rejected(_))
    ));
}
