//! OFREP (contract §2.8) on the local server, PostgreSQL with Redis or the in-memory cache: single and bulk evaluation
//! with every reason, the targeting key from the context or from a bearer token, the environment
//! from the query or `X-Environment`, the bulk `ETag` and its 304, and the error bodies.
#![allow(clippy::unwrap_used, clippy::expect_used)]
mod common;

use common::server::Server;
use common::{redis_url, seeded_postgres_url};
use flags_core::Config;
use reqwest::header::HeaderMap;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

/// The tests share nothing: each has its own schema, and the one that uses Redis has Redis
/// database 1 to itself (the snapshots are keyed by environment name only).
async fn start(redis: bool) -> Server {
    let redis_url = if redis {
        Some(redis_url(1).await)
    } else {
        None
    };
    Server::start_config(Config::new(seeded_postgres_url().await, redis_url)).await
}

/// A POST to an OFREP path with `body` and extra headers; the status, JSON body and headers.
async fn post(
    server: &Server,
    path: &str,
    body: &str,
    headers: &[(&str, &str)],
) -> (StatusCode, Value, HeaderMap) {
    server
        .http
        .call_with_headers(Method::POST, path, None, Some(body), headers)
        .await
}

fn context(targeting_key: &str) -> String {
    json!({"context": {"targetingKey": targeting_key, "plan": "pro"}}).to_string()
}

/// One flag's value and reason for a body.
async fn single(
    server: &Server,
    key: &str,
    body: &str,
    headers: &[(&str, &str)],
) -> (bool, String) {
    let (status, answer, response_headers) = post(
        server,
        &format!("/ofrep/v1/evaluate/flags/{key}"),
        body,
        headers,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{key}: {answer}");
    assert_eq!(response_headers["content-type"], "application/json");
    let value = answer["value"].as_bool().unwrap();
    assert_eq!(answer["key"], key);
    assert_eq!(answer["variant"], if value { "on" } else { "off" });
    (value, answer["reason"].as_str().unwrap().to_owned())
}

#[tokio::test]
async fn single_evaluation_reports_every_reason() {
    let server = start(false).await;
    let reason = |value: bool, reason: &str| (value, reason.to_owned());
    // wishlist-reorder is on at 25 %: user-456 is bucket 15 (inside), user-123 bucket 35.
    let reorder = "wishlist-reorder";
    assert_eq!(
        single(&server, reorder, &context("user-456"), &[]).await,
        reason(true, "SPLIT")
    );
    assert_eq!(
        single(&server, reorder, &context("user-123"), &[]).await,
        reason(false, "SPLIT")
    );
    assert_eq!(
        single(&server, reorder, "", &[]).await,
        reason(false, "DEFAULT")
    );
    assert_eq!(
        single(&server, reorder, "{}", &[]).await,
        reason(false, "DEFAULT")
    );
    assert_eq!(
        single(&server, "wishlist-got-it", &context("user-456"), &[]).await,
        reason(false, "DISABLED")
    );
    assert_eq!(
        single(&server, "wishlist-gallery", "", &[]).await,
        reason(true, "STATIC")
    );

    for (user, kind) in [("user-123", "include"), ("user-456", "exclude")] {
        let body = json!({"userId": user, "overrideType": kind}).to_string();
        let path = format!("/admin/flags/{reorder}/users");
        let (status, _) = server.admin(Method::POST, &path, Some(&body)).await;
        assert_eq!(status, StatusCode::CREATED);
    }
    assert_eq!(
        single(&server, reorder, &context("user-123"), &[]).await,
        reason(true, "TARGETING_MATCH")
    );
    assert_eq!(
        single(&server, reorder, &context("user-456"), &[]).await,
        reason(false, "TARGETING_MATCH")
    );

    // Without a targeting key, a valid bearer token's sub is the caller.
    let token = format!("Bearer {}", server.token("user-123"));
    let auth = [("authorization", token.as_str())];
    assert_eq!(
        single(&server, reorder, "", &auth).await,
        reason(true, "TARGETING_MATCH")
    );
    // The environment from X-Environment (development has every flag fully on).
    let development = [("x-environment", "development")];
    assert_eq!(
        single(&server, "wishlist-got-it", "", &development).await,
        reason(true, "STATIC")
    );

    let (status, answer, _) = post(&server, "/ofrep/v1/evaluate/flags/no-such-flag", "", &[]).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(
        answer,
        json!({"key": "no-such-flag", "errorCode": "FLAG_NOT_FOUND", "errorDetails": "Flag 'no-such-flag' not found"})
    );
    server.shutdown().await;
}

/// A body, extra headers, and the `errorCode` they must get.
type BadRequest = (
    &'static str,
    &'static [(&'static str, &'static str)],
    &'static str,
);

#[tokio::test]
async fn bad_requests_get_the_ofrep_error_codes() {
    let server = start(false).await;
    let path = "/ofrep/v1/evaluate/flags/wishlist-gallery";
    let cases: [BadRequest; 6] = [
        ("{not json", &[], "PARSE_ERROR"),
        ("[1]", &[], "PARSE_ERROR"),
        (r#"{"context": {}, "flags": []}"#, &[], "PARSE_ERROR"),
        (r#"{"context": "user-1"}"#, &[], "INVALID_CONTEXT"),
        (
            r#"{"context": {"targetingKey": 42}}"#,
            &[],
            "INVALID_CONTEXT",
        ),
        ("", &[("x-environment", "Not An Env")], "INVALID_CONTEXT"),
    ];
    for (body, headers, code) in cases {
        let (status, answer, _) = post(&server, path, body, headers).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}: {answer}");
        assert_eq!(answer["errorCode"], code, "{body}: {answer}");
        assert_eq!(answer["key"], "wishlist-gallery");
        assert!(answer["errorDetails"].is_string());
    }
    let (status, answer, _) = post(&server, "/ofrep/v1/evaluate/flags", "{nope", &[]).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(answer["errorCode"], "PARSE_ERROR");
    assert!(answer.get("key").is_none(), "{answer}");
    server.shutdown().await;
}

#[tokio::test]
async fn bulk_evaluation_answers_304_until_something_changes() {
    let server = start(true).await;
    let path = "/ofrep/v1/evaluate/flags";
    let body = context("user-456");
    let (status, answer, headers) = post(&server, path, &body, &[]).await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    let flags = answer["flags"].as_array().unwrap();
    let keys: Vec<&str> = flags.iter().map(|f| f["key"].as_str().unwrap()).collect();
    assert_eq!(
        keys,
        [
            "wishlist-add-item",
            "wishlist-edit-item",
            "wishlist-gallery",
            "wishlist-got-it",
            "wishlist-reorder"
        ]
    );
    let reorder = flags
        .iter()
        .find(|f| f["key"] == "wishlist-reorder")
        .unwrap();
    assert_eq!(
        *reorder,
        json!({"key": "wishlist-reorder", "value": true, "variant": "on", "reason": "SPLIT",
               "metadata": {"environment": "production", "rolloutPercentage": 25}})
    );
    let etag = headers["etag"].to_str().unwrap().to_owned();
    assert!(etag.starts_with('"') && etag.ends_with('"'), "{etag}");

    let not_modified = [("if-none-match", etag.as_str())];
    let (status, answer, headers) = post(&server, path, &body, &not_modified).await;
    assert_eq!((status, answer), (StatusCode::NOT_MODIFIED, Value::Null));
    assert_eq!(headers["etag"], etag.as_str());

    // Another context is another answer.
    let (status, _, headers) = post(&server, path, &context("user-123"), &not_modified).await;
    assert_eq!(status, StatusCode::OK);
    assert_ne!(headers["etag"], etag.as_str());

    // Any write changes it: a flag update, then an override of this caller.
    let (status, _) = server
        .admin(
            Method::POST,
            "/admin/flags/wishlist-reorder",
            Some(r#"{"rolloutPercentage": 10}"#),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let (status, answer, headers) = post(&server, path, &body, &not_modified).await;
    assert_eq!(status, StatusCode::OK);
    let reorder = answer["flags"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["key"] == "wishlist-reorder")
        .unwrap()
        .clone();
    assert_eq!(
        (reorder["value"].clone(), reorder["reason"].clone()),
        (json!(false), json!("SPLIT"))
    );
    let updated = headers["etag"].to_str().unwrap().to_owned();
    assert_ne!(updated, etag);
    let include = r#"{"userId": "user-456", "overrideType": "include"}"#;
    let (status, _) = server
        .admin(
            Method::POST,
            "/admin/flags/wishlist-reorder/users",
            Some(include),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED);
    let (status, _, headers) =
        post(&server, path, &body, &[("if-none-match", updated.as_str())]).await;
    assert_eq!(status, StatusCode::OK);
    assert_ne!(headers["etag"], updated.as_str());
    server.shutdown().await;
}
