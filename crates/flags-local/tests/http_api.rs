//! End to end over HTTP against the local server (the same handlers as the Lambda functions),
//! backed by real PostgreSQL and Redis: every route of contract §2 and every error shape of §2.3.
#![allow(clippy::unwrap_used, clippy::expect_used)]
mod common;

use common::server::Server;
use common::{free_port, local_keys, redis_url, seeded_postgres_url, unique};
use flags_api::Route;
use flags_api::local_keys::LOCAL_ISSUER;
use flags_core::Config;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

/// A server over a fresh schema and Redis database `redis_db` (one per test).
async fn start(redis_db: u8) -> Server {
    start_with(redis_db, |_| {}).await
}

async fn start_with(redis_db: u8, adjust: impl FnOnce(&mut Config)) -> Server {
    let mut config = Config::new(seeded_postgres_url().await, Some(redis_url(redis_db).await));
    config.database_pool_size = 5;
    adjust(&mut config);
    Server::start_config(config).await
}

fn validation_field(body: &Value, field: &str) -> Vec<String> {
    assert_eq!(body["error"], "Validation failed", "{body}");
    body["details"]["fieldErrors"][field]
        .as_array()
        .map(|a| a.iter().map(|m| m.as_str().unwrap().to_owned()).collect())
        .unwrap_or_default()
}

fn form_errors(body: &Value) -> Vec<String> {
    assert_eq!(body["error"], "Validation failed", "{body}");
    body["details"]["formErrors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m.as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test]
async fn public_routes() {
    let server = start(2).await;
    let (status, flags) = server.get("/config/flags", None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(flags["wishlist-gallery"], true);
    assert_eq!(flags["wishlist-got-it"], false);
    assert_eq!(
        flags["wishlist-reorder"], false,
        "anonymous callers are outside partial rollouts"
    );
    assert_eq!(
        server.get("/api/config/flags?environment=", None).await.1,
        flags,
        "/api prefix, empty env = production"
    );
    let (_, development) = server
        .get("/config/flags?environment=development", None)
        .await;
    assert_eq!(development["wishlist-got-it"], true);
    let (status, empty) = server
        .get(&format!("/config/flags?environment={}", unique("e")), None)
        .await;
    assert_eq!((status, empty), (StatusCode::OK, json!({})));

    // user-123 is bucket 35: inside the 50 % rollout of wishlist-edit-item, outside reorder's 25 %.
    let token = server.keys.mint("user-123", &[], 600).unwrap();
    let (_, user) = server.get("/config/flags", Some(&token)).await;
    assert_eq!(
        (
            user["wishlist-edit-item"].clone(),
            user["wishlist-reorder"].clone()
        ),
        (json!(true), json!(false))
    );
    for bad in [
        "garbage",
        "",
        &server.keys.mint("user-123", &[], -120).unwrap(),
    ] {
        let (status, body) = server.get("/config/flags", Some(bad)).await;
        assert_eq!(
            (status, body),
            (StatusCode::OK, flags.clone()),
            "a bad token is anonymous, never a 401"
        );
    }

    let (status, detail) = server.get("/config/flags/wishlist-edit-item", None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        detail,
        json!({"key": "wishlist-edit-item", "enabled": true, "rolloutPercentage": 50, "description": "Edit wishlist items (rolling out)"})
    );
    let (status, missing) = server.get("/config/flags/nope", None).await;
    assert_eq!(
        (status, missing),
        (
            StatusCode::NOT_FOUND,
            json!({"error": "NOT_FOUND", "message": "Flag 'nope' not found"})
        )
    );
    let (status, bad_key) = server.get("/config/flags/-bad", None).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(!validation_field(&bad_key, "flagKey").is_empty());

    let (status, health) = server.get("/health", None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        health,
        json!({"status": "ok", "cache": "redis", "redis": "up", "database": "up", "auth": "up"})
    );

    let (status, body) = server.get("/nothing/here", None).await;
    assert_eq!(
        (status, body),
        (StatusCode::NOT_FOUND, json!({"error": "Not found"}))
    );
    let (status, _, _) = server.call(Method::PUT, "/config/flags", None, None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn invalid_environment_names_are_400_on_every_route() {
    let server = start(3).await;
    for env in [
        "PROD",
        "a_b",
        "-x",
        "feature_flags:*",
        &"a".repeat(21),
        "d%C3%A9v",
    ] {
        for route in Route::ALL {
            let (method, template) = route.spec();
            let path = template
                .replace("{flagKey}", "wishlist-gallery")
                .replace("{key}", "wishlist-gallery")
                .replace("{userId}", "u1");
            if matches!(
                route,
                Route::Health | Route::AdminInvalidateCache | Route::OpenApi
            ) {
                continue; // no environment parameter
            }
            let body = (method == Method::POST).then_some("{}");
            let (status, response, _) = server
                .call(
                    method,
                    &format!("{path}?environment={env}"),
                    Some(&server.admin),
                    body,
                )
                .await;
            assert_eq!(
                status,
                StatusCode::BAD_REQUEST,
                "{route:?} with {env}: {response}"
            );
            if matches!(route, Route::OfrepEvaluateFlag | Route::OfrepEvaluateFlags) {
                // OFREP answers in its own error shape (contract 2.8).
                assert_eq!(
                    response["errorCode"], "INVALID_CONTEXT",
                    "{route:?}: {response}"
                );
            } else {
                assert!(
                    !validation_field(&response, "environment").is_empty(),
                    "{route:?}"
                );
            }
        }
    }
}

#[tokio::test]
async fn every_admin_route_rejects_bad_tokens() {
    let server = start(4).await;
    let keys = &server.keys;
    let admin = vec!["admin".to_owned()];
    let cases: Vec<(Option<String>, StatusCode, &str)> = vec![
        (
            None,
            StatusCode::UNAUTHORIZED,
            "Missing Authorization header",
        ),
        (
            Some("garbage".into()),
            StatusCode::UNAUTHORIZED,
            "Invalid or expired token",
        ),
        (
            Some(String::new()),
            StatusCode::UNAUTHORIZED,
            "Invalid or expired token",
        ),
        (
            Some(keys.mint("a", &admin, -120).unwrap()),
            StatusCode::UNAUTHORIZED,
            "Invalid or expired token",
        ),
        (
            Some(
                keys.mint_with("a", &admin, 600, "https://evil.example", "access")
                    .unwrap(),
            ),
            StatusCode::UNAUTHORIZED,
            "Invalid or expired token",
        ),
        (
            Some(
                keys.mint_with("a", &admin, 600, LOCAL_ISSUER, "id")
                    .unwrap(),
            ),
            StatusCode::UNAUTHORIZED,
            "Invalid or expired token",
        ),
        (
            Some(local_keys().mint("a", &admin, 600).unwrap()),
            StatusCode::UNAUTHORIZED,
            "Invalid or expired token",
        ),
        (
            Some(keys.mint("a", &["users".to_owned()], 600).unwrap()),
            StatusCode::FORBIDDEN,
            "Admin access required",
        ),
        (
            Some(keys.mint("a", &[], 600).unwrap()),
            StatusCode::FORBIDDEN,
            "Admin access required",
        ),
    ];
    for route in Route::ALL.into_iter().filter(|r| r.is_admin()) {
        let (method, template) = route.spec();
        // Invalid input too: authentication is checked before validation (401 → 403 → 400).
        let path = format!(
            "{}?environment=NOT-VALID",
            template
                .replace("{flagKey}", "wishlist-gallery")
                .replace("{userId}", "u1")
        );
        for (token, expected, message) in &cases {
            let (status, body, _) = server
                .call(method.clone(), &path, token.as_deref(), Some("{not json"))
                .await;
            assert_eq!(status, *expected, "{route:?} with {token:?}: {body}");
            assert_eq!(body["message"], *message, "{route:?}");
            assert_eq!(
                body["error"],
                if *expected == StatusCode::FORBIDDEN {
                    "Forbidden"
                } else {
                    "Unauthorized"
                }
            );
        }
    }
    let admins = keys.mint("b", &["admins".to_owned()], 600).unwrap();
    assert_eq!(
        server.get("/admin/flags", Some(&admins)).await.0,
        StatusCode::OK,
        "the admins group works too"
    );
}

#[tokio::test]
async fn flag_lifecycle_and_validation() {
    let server = start(5).await;
    let env = unique("e");
    let q = format!("?environment={env}");
    let flags = |s: &'static str| format!("/admin/flags{s}");

    let (status, created) = server
        .admin(
            Method::POST,
            &format!("{}{q}", flags("")),
            Some(r#"{"flagKey":"new-flag","description":"Ünïcode ✓"}"#),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED);
    assert_eq!(
        created,
        json!({"key": "new-flag", "enabled": false, "rolloutPercentage": 0, "description": "Ünïcode ✓"})
    );
    let (status, conflict) = server
        .admin(
            Method::POST,
            &format!("{}{q}", flags("")),
            Some(r#"{"flagKey":"new-flag"}"#),
        )
        .await;
    assert_eq!(
        (status, conflict),
        (
            StatusCode::CONFLICT,
            json!({"error": "ALREADY_EXISTS", "message": "Flag 'new-flag' already exists"})
        )
    );

    // Bad input: a clear 400, and nothing changes.
    let bad_bodies: Vec<(String, &str, &str)> = vec![
        (
            "{\"flagKey\": ".into(),
            "",
            "Malformed JSON in request body",
        ),
        ("[1,2]".into(), "", "Expected object, received array"),
        (
            r#"{"flagKey":"x","rollout":50}"#.into(),
            "",
            "Unrecognized key(s) in object: 'rollout'",
        ),
        (r#"{"enabled":true}"#.into(), "flagKey", "Required"),
        (
            r#"{"flagKey":"a b"}"#.into(),
            "flagKey",
            "Flag key must be 1-100 characters of A-Z, a-z, 0-9, '.', '_' and '-', starting with a letter or digit",
        ),
        (
            format!(r#"{{"flagKey":"{}"}}"#, "k".repeat(101)),
            "flagKey",
            "String must contain at most 100 character(s)",
        ),
        (
            r#"{"flagKey":"x","enabled":"yes"}"#.into(),
            "enabled",
            "Expected boolean, received string",
        ),
        (
            r#"{"flagKey":"x","rolloutPercentage":"50"}"#.into(),
            "rolloutPercentage",
            "Expected number, received string",
        ),
        (
            r#"{"flagKey":"x","rolloutPercentage":101}"#.into(),
            "rolloutPercentage",
            "Number must be less than or equal to 100",
        ),
        (
            r#"{"flagKey":"x","rolloutPercentage":-1}"#.into(),
            "rolloutPercentage",
            "Number must be greater than or equal to 0",
        ),
        (
            r#"{"flagKey":"x","rolloutPercentage":12.5}"#.into(),
            "rolloutPercentage",
            "Expected integer, received float",
        ),
        (
            format!(r#"{{"flagKey":"x","description":"{}"}}"#, "d".repeat(501)),
            "description",
            "String must contain at most 500 character(s)",
        ),
        (
            r#"{"flagKey":42}"#.into(),
            "flagKey",
            "Expected string, received number",
        ),
    ];
    for (body, field, message) in &bad_bodies {
        let (status, response) = server
            .admin(Method::POST, &format!("{}{q}", flags("")), Some(body))
            .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}: {response}");
        let messages = if field.is_empty() {
            form_errors(&response)
        } else {
            validation_field(&response, field)
        };
        assert!(messages.iter().any(|m| m == message), "{body}: {response}");
    }
    let oversized = format!(
        r#"{{"flagKey":"big","description":"{}"}}"#,
        "x".repeat(70 * 1024)
    );
    let (status, response) = server
        .admin(Method::POST, &format!("{}{q}", flags("")), Some(&oversized))
        .await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{response}");
    let (_, listed) = server
        .admin(Method::GET, &format!("{}{q}", flags("")), None)
        .await;
    assert_eq!(
        listed.as_array().unwrap().len(),
        1,
        "bad requests lost nothing and added nothing: {listed}"
    );

    // Partial update; {} only bumps updatedAt.
    let (status, updated) = server
        .admin(
            Method::POST,
            &format!("{}{q}", flags("/new-flag")),
            Some(r#"{"enabled":true,"rolloutPercentage":40}"#),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        updated,
        json!({"key": "new-flag", "enabled": true, "rolloutPercentage": 40, "description": "Ünïcode ✓"})
    );
    let before = listed[0]["updatedAt"].as_str().unwrap().to_owned();
    let (status, _) = server
        .admin(
            Method::POST,
            &format!("{}{q}", flags("/new-flag")),
            Some("{}"),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let (_, listed) = server
        .admin(Method::GET, &format!("{}{q}", flags("")), None)
        .await;
    assert!(listed[0]["updatedAt"].as_str().unwrap() > before.as_str());
    assert_eq!(listed[0]["createdAt"], created_at(&listed));
    let (status, cleared) = server
        .admin(
            Method::POST,
            &format!("{}{q}", flags("/new-flag")),
            Some(r#"{"description":null}"#),
        )
        .await;
    assert_eq!(
        (status, cleared["description"].clone()),
        (StatusCode::OK, Value::Null)
    );
    let (status, response) = server
        .admin(
            Method::POST,
            &format!("{}{q}", flags("/new-flag")),
            Some(r#"{"rolloutPercentage":150,"enabled":1}"#),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(
        validation_field(&response, "enabled"),
        ["Expected boolean, received number"]
    );
    assert_eq!(
        validation_field(&response, "rolloutPercentage"),
        ["Number must be less than or equal to 100"]
    );
    let (status, missing) = server
        .admin(Method::POST, &format!("{}{q}", flags("/ghost")), Some("{}"))
        .await;
    assert_eq!(
        (status, missing),
        (
            StatusCode::NOT_FOUND,
            json!({"error": "NOT_FOUND", "message": "Flag 'ghost' not found"})
        )
    );
    let (status, _) = server
        .admin(
            Method::POST,
            &format!("{}{q}", flags("/ghost")),
            Some(r#"{"bogus":1}"#),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "400 comes before 404");

    // The change is visible to the public route at once (cache invalidated).
    let (_, public) = server
        .get(
            &format!("/config/flags{q}"),
            Some(&server.keys.mint("user-456", &[], 600).unwrap()),
        )
        .await;
    assert_eq!(public["new-flag"], true, "user-456 is bucket 15 < 40");

    let (status, body, _) = server
        .call(
            Method::DELETE,
            &format!("{}{q}", flags("/new-flag")),
            Some(&server.admin),
            None,
        )
        .await;
    assert_eq!((status, body), (StatusCode::NO_CONTENT, Value::Null));
    let (status, _) = server
        .admin(Method::DELETE, &format!("{}{q}", flags("/new-flag")), None)
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(
        server.get(&format!("/config/flags{q}"), None).await.1,
        json!({})
    );
}

fn created_at(listed: &Value) -> Value {
    listed[0]["createdAt"].clone()
}

#[tokio::test]
async fn overrides_routes() {
    let server = start(6).await;
    let users = "/admin/flags/wishlist-got-it/users";
    let token = server.keys.mint("user-9", &[], 600).unwrap();
    assert_eq!(
        server
            .get("/config/flags?environment=development", Some(&token))
            .await
            .1["wishlist-got-it"],
        true
    );

    let (status, saved) = server
        .admin(
            Method::POST,
            users,
            Some(r#"{"userId":"user-9","overrideType":"include","reason":"beta"}"#),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED);
    assert_eq!(saved["userId"], "user-9");
    assert_eq!(saved["overrideType"], "include");
    assert_eq!(saved["createdBy"], "admin-1");
    assert!(saved["createdAt"].as_str().unwrap().ends_with('Z'));
    // A disabled flag is a kill switch: the include does not turn it on.
    assert_eq!(
        server.get("/config/flags", Some(&token)).await.1["wishlist-got-it"],
        false
    );
    let (status, replaced) = server
        .admin(
            Method::POST,
            users,
            Some(r#"{"userId":"user-9","overrideType":"exclude"}"#),
        )
        .await;
    assert_eq!(
        (
            status,
            replaced["overrideType"].clone(),
            replaced["reason"].clone()
        ),
        (StatusCode::CREATED, json!("exclude"), Value::Null)
    );
    server
        .admin(
            Method::POST,
            users,
            Some(r#"{"userId":"José 用户","overrideType":"include"}"#),
        )
        .await;

    let reorder = "/admin/flags/wishlist-reorder/users";
    server
        .admin(
            Method::POST,
            reorder,
            Some(r#"{"userId":"user-123","overrideType":"include"}"#),
        )
        .await;
    let vip = server.keys.mint("user-123", &[], 600).unwrap();
    assert_eq!(
        server.get("/config/flags", Some(&vip)).await.1["wishlist-reorder"],
        true,
        "include beats the rollout"
    );

    let (status, page) = server
        .admin(Method::GET, &format!("{users}?page=1&pageSize=1"), None)
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        page["pagination"],
        json!({"page": 1, "pageSize": 1, "total": 2})
    );
    assert_eq!(page["includes"][0]["userId"], "José 用户", "newest first");
    assert_eq!(page["excludes"], json!([]));
    let (_, all) = server
        .admin(Method::GET, &format!("{users}?pageSize=1000"), None)
        .await;
    assert_eq!(all["pagination"]["pageSize"], 500, "pageSize is capped");
    assert_eq!(all["excludes"][0]["userId"], "user-9");
    for bad in ["page=0", "page=abc", "pageSize=-1", "pageSize=1.5"] {
        let (status, response) = server
            .admin(Method::GET, &format!("{users}?{bad}"), None)
            .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{bad}: {response}");
    }
    let (status, _) = server
        .admin(Method::GET, "/admin/flags/ghost/users", None)
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    for (body, field) in [
        (
            format!(
                r#"{{"userId":"{}","overrideType":"include"}}"#,
                "u".repeat(256)
            ),
            "userId",
        ),
        (
            r#"{"userId":"","overrideType":"include"}"#.to_owned(),
            "userId",
        ),
        (
            r#"{"userId":"u","overrideType":"maybe"}"#.to_owned(),
            "overrideType",
        ),
        (r#"{"userId":"u"}"#.to_owned(), "overrideType"),
        (
            format!(
                r#"{{"userId":"u","overrideType":"include","reason":"{}"}}"#,
                "r".repeat(501)
            ),
            "reason",
        ),
    ] {
        let (status, response) = server.admin(Method::POST, users, Some(&body)).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{response}");
        assert!(!validation_field(&response, field).is_empty(), "{response}");
    }
    let (status, response) = server
        .admin(
            Method::POST,
            users,
            Some(r#"{"userId":"u","overrideType":"include","extra":true}"#),
        )
        .await;
    assert_eq!(
        form_errors(&response),
        ["Unrecognized key(s) in object: 'extra'"],
        "{status}"
    );
    let (status, _) = server
        .admin(
            Method::POST,
            "/admin/flags/ghost/users",
            Some(r#"{"userId":"u","overrideType":"include"}"#),
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    let (status, _) = server
        .admin(
            Method::DELETE,
            &format!("{users}/Jos%C3%A9%20%E7%94%A8%E6%88%B7"),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (status, missing) = server
        .admin(Method::DELETE, &format!("{users}/nobody"), None)
        .await;
    assert_eq!(
        (status, missing),
        (
            StatusCode::NOT_FOUND,
            json!({"error": "NOT_FOUND", "message": "User override not found for flag 'wishlist-got-it'"})
        )
    );
    let (status, _) = server
        .admin(Method::DELETE, "/admin/flags/ghost/users/u", None)
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(
        server.admin(Method::GET, users, None).await.1["pagination"]["total"],
        1
    );
}

#[tokio::test]
async fn override_changes_are_rate_limited_with_retry_after() {
    let server = start_with(7, |config| config.override_rate_limit = 3).await;
    let users = format!(
        "/admin/flags/wishlist-gallery/users?environment={}",
        "development"
    );
    for i in 0..3 {
        let body = format!(r#"{{"userId":"u{i}","overrideType":"include"}}"#);
        assert_eq!(
            server.admin(Method::POST, &users, Some(&body)).await.0,
            StatusCode::CREATED
        );
    }
    let (status, body, headers) = server
        .call(
            Method::POST,
            &users,
            Some(&server.admin),
            Some(r#"{"userId":"u9","overrideType":"include"}"#),
        )
        .await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(
        body,
        json!({"error": "RATE_LIMITED", "message": "Too many user override changes. Try again later."})
    );
    let retry_after: u64 = headers["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=3600).contains(&retry_after));
    let (status, _) = server
        .admin(
            Method::DELETE,
            "/admin/flags/wishlist-gallery/users/u0?environment=development",
            None,
        )
        .await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "removals count too");
    let (status, _) = server
        .admin(
            Method::DELETE,
            "/admin/flags/ghost/users/u0?environment=development",
            None,
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "404 comes before 429");
}

#[tokio::test]
async fn cache_invalidation_route() {
    let server = start(8).await;
    server.get("/config/flags", None).await; // fills the cache
    let (status, body) = server
        .admin(Method::POST, "/admin/cache/invalidate", None)
        .await;
    assert_eq!(status, StatusCode::OK);
    assert!(body["invalidatedKeys"].as_u64().unwrap() >= 1, "{body}");
    assert_eq!(body["complete"], true, "Redis answered every page: {body}");
    let (status, again) = server
        .admin(Method::POST, "/admin/cache/invalidate", None)
        .await;
    assert_eq!(
        (status, again),
        (
            StatusCode::OK,
            json!({"invalidatedKeys": 0, "complete": true})
        ),
        "the count is exact: nothing was left to delete"
    );
}

#[tokio::test]
async fn database_down_is_a_503_health_and_a_500_without_details() {
    let url = format!(
        "postgres://app:s3cret-password@127.0.0.1:{}/flags",
        free_port()
    );
    let server = Server::start_config(Config::new(url, None)).await;
    let (status, health) = server.get("/health", None).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(
        health,
        json!({"status": "degraded", "cache": "memory", "redis": "disabled", "database": "down", "auth": "up"})
    );
    let (status, body) = server.get("/config/flags", None).await;
    assert_eq!(
        (status, body.clone()),
        (
            StatusCode::INTERNAL_SERVER_ERROR,
            json!({"error": "Internal server error"})
        )
    );
    let text = body.to_string() + &health.to_string();
    assert!(!text.contains("s3cret") && !text.contains("127.0.0.1"));
}

#[tokio::test]
async fn redis_down_still_answers_every_public_route() {
    let server = start_with(9, |config| {
        config.redis = Some(flags_core::config::RedisSettings::new(format!(
            "redis://127.0.0.1:{}",
            free_port()
        )));
    })
    .await;
    assert_eq!(server.get("/config/flags", None).await.0, StatusCode::OK);
    assert_eq!(
        server.get("/config/flags/wishlist-gallery", None).await.0,
        StatusCode::OK
    );
    let (status, health) = server.get("/health", None).await;
    assert_eq!(
        status,
        StatusCode::OK,
        "Redis down is degraded, not unavailable"
    );
    assert_eq!(
        health,
        json!({"status": "degraded", "cache": "none", "redis": "down", "database": "up", "auth": "up"})
    );
    assert_eq!(
        server
            .admin(Method::POST, "/admin/cache/invalidate", None)
            .await
            .1,
        json!({"invalidatedKeys": 0, "complete": false}),
        "never reports success for keys it could not delete"
    );
}

/// The audit entries of one listing, checked for the order the contract promises (newest first).
fn audit_items(listing: &Value) -> Vec<Value> {
    let items = listing["items"].as_array().unwrap().clone();
    for pair in items.windows(2) {
        assert!(
            pair[0]["id"].as_i64().unwrap() > pair[1]["id"].as_i64().unwrap(),
            "newest first: {listing}"
        );
        assert!(
            pair[0]["at"].as_str().unwrap() >= pair[1]["at"].as_str().unwrap(),
            "newest first: {listing}"
        );
    }
    items
}

fn actions(items: &[Value]) -> Vec<&str> {
    items
        .iter()
        .map(|i| i["action"].as_str().unwrap())
        .collect()
}

#[tokio::test]
async fn audit_log_records_every_admin_write_once() {
    let server = start(10).await;
    let env = unique("e");
    let audit = |query: &str| format!("/admin/audit?environment={env}{query}");
    let flags = format!("/admin/flags?environment={env}");
    let flag = |key: &str, rest: &str| format!("/admin/flags/{key}{rest}?environment={env}");

    // Every kind of admin write, each answered 2xx.
    let writes: Vec<(Method, String, Option<&str>, StatusCode)> = vec![
        (
            Method::POST,
            flags.clone(),
            Some(
                r#"{"flagKey":"audited","enabled":true,"rolloutPercentage":100,"description":"d"}"#,
            ),
            StatusCode::CREATED,
        ),
        (
            Method::POST,
            flag("audited", ""),
            Some(r#"{"enabled":false}"#),
            StatusCode::OK,
        ),
        (
            Method::POST,
            flag("audited", "/users"),
            Some(r#"{"userId":"user-1","overrideType":"include","reason":"beta"}"#),
            StatusCode::CREATED,
        ),
        (
            Method::POST,
            flag("audited", "/users"),
            Some(r#"{"userId":"user-1","overrideType":"exclude"}"#),
            StatusCode::CREATED,
        ),
        (
            Method::DELETE,
            flag("audited", "/users/user-1"),
            None,
            StatusCode::NO_CONTENT,
        ),
        (
            Method::POST,
            flags.clone(),
            Some(r#"{"flagKey":"other"}"#),
            StatusCode::CREATED,
        ),
        (
            Method::DELETE,
            flag("audited", ""),
            None,
            StatusCode::NO_CONTENT,
        ),
    ];
    for (method, path, body, expected) in &writes {
        let (status, response) = server.admin(method.clone(), path, *body).await;
        assert_eq!(status, *expected, "{method} {path}: {response}");
    }

    // Failed writes (404, 409, 400) leave no row.
    let failures: Vec<(Method, String, Option<&str>, StatusCode)> = vec![
        (
            Method::POST,
            flags.clone(),
            Some(r#"{"flagKey":"other"}"#),
            StatusCode::CONFLICT,
        ),
        (
            Method::POST,
            flags.clone(),
            Some(r#"{"flagKey":"x","rollout":5}"#),
            StatusCode::BAD_REQUEST,
        ),
        (
            Method::POST,
            flag("ghost", ""),
            Some(r#"{"enabled":true}"#),
            StatusCode::NOT_FOUND,
        ),
        (
            Method::POST,
            flag("other", ""),
            Some(r#"{"enabled":"yes"}"#),
            StatusCode::BAD_REQUEST,
        ),
        (
            Method::DELETE,
            flag("ghost", ""),
            None,
            StatusCode::NOT_FOUND,
        ),
        (
            Method::POST,
            flag("ghost", "/users"),
            Some(r#"{"userId":"u","overrideType":"include"}"#),
            StatusCode::NOT_FOUND,
        ),
        (
            Method::POST,
            flag("other", "/users"),
            Some(r#"{"userId":"u","overrideType":"maybe"}"#),
            StatusCode::BAD_REQUEST,
        ),
        (
            Method::DELETE,
            flag("other", "/users/nobody"),
            None,
            StatusCode::NOT_FOUND,
        ),
    ];
    for (method, path, body, expected) in &failures {
        let (status, response) = server.admin(method.clone(), path, *body).await;
        assert_eq!(status, *expected, "{method} {path}: {response}");
    }

    let (status, listing) = server.admin(Method::GET, &audit(""), None).await;
    assert_eq!(status, StatusCode::OK, "{listing}");
    assert_eq!(
        listing["pagination"],
        json!({"page": 1, "pageSize": 50, "total": 7}),
        "exactly one row per successful write, none for a failed one: {listing}"
    );
    let items = audit_items(&listing);
    assert_eq!(
        actions(&items),
        [
            "flag.deleted",
            "flag.created",
            "override.deleted",
            "override.upserted",
            "override.upserted",
            "flag.updated",
            "flag.created",
        ],
        "{listing}"
    );
    for item in &items {
        assert_eq!(item["actor"], json!({"sub": "admin-1"}), "{item}");
        assert_eq!(item["environment"], env.as_str(), "{item}");
        assert!(item["at"].as_str().unwrap().ends_with('Z'), "{item}");
    }
    let [
        deleted,
        created_other,
        override_deleted,
        replaced,
        included,
        updated,
        created,
    ] = <[Value; 7]>::try_from(items.clone()).unwrap();
    assert_eq!(created["flagKey"], "audited");
    assert_eq!(created["before"], Value::Null);
    assert_eq!(
        (
            created["after"]["flagKey"].clone(),
            created["after"]["enabled"].clone(),
            created["after"]["rolloutPercentage"].clone(),
            created["after"]["description"].clone(),
        ),
        (json!("audited"), json!(true), json!(100), json!("d")),
        "{created}"
    );
    assert_eq!(updated["before"]["enabled"], true, "{updated}");
    assert_eq!(updated["after"]["enabled"], false, "{updated}");
    assert_eq!(
        updated["before"]["rolloutPercentage"], updated["after"]["rolloutPercentage"],
        "a partial update keeps the other fields: {updated}"
    );
    assert_eq!(included["before"], Value::Null, "{included}");
    assert_eq!(
        (
            included["after"]["userId"].clone(),
            included["after"]["overrideType"].clone(),
            included["after"]["reason"].clone(),
            included["after"]["createdBy"].clone(),
        ),
        (
            json!("user-1"),
            json!("include"),
            json!("beta"),
            json!("admin-1")
        ),
        "{included}"
    );
    assert_eq!(
        (
            replaced["before"]["overrideType"].clone(),
            replaced["after"]["overrideType"].clone()
        ),
        (json!("include"), json!("exclude")),
        "an upsert that replaces records what it replaced: {replaced}"
    );
    assert_eq!(
        override_deleted["before"]["overrideType"], "exclude",
        "{override_deleted}"
    );
    assert_eq!(override_deleted["after"], Value::Null);
    assert_eq!(created_other["flagKey"], "other");
    assert_eq!(deleted["flagKey"], "audited");
    assert_eq!(deleted["before"]["enabled"], false, "{deleted}");
    assert_eq!(deleted["after"], Value::Null);

    // Filters: one flag; another environment.
    let (_, other) = server
        .admin(Method::GET, &audit("&flagKey=other"), None)
        .await;
    assert_eq!(other["pagination"]["total"], 1, "{other}");
    assert_eq!(actions(&audit_items(&other)), ["flag.created"]);
    let (_, audited) = server
        .admin(Method::GET, &audit("&flagKey=audited"), None)
        .await;
    assert_eq!(audited["pagination"]["total"], 6, "{audited}");
    assert_eq!(
        audit_items(&audited),
        items[..1]
            .iter()
            .chain(&items[2..])
            .cloned()
            .collect::<Vec<_>>()
    );
    let (_, nothing) = server
        .admin(Method::GET, &audit("&flagKey=never-written"), None)
        .await;
    assert_eq!(
        nothing,
        json!({"items": [], "pagination": {"page": 1, "pageSize": 50, "total": 0}})
    );
    let (_, development) = server
        .admin(Method::GET, "/admin/audit?environment=development", None)
        .await;
    let seeded = audit_items(&development);
    assert_eq!(
        seeded.len(),
        5,
        "the seed created 5 flags there: {development}"
    );
    for item in &seeded {
        assert_eq!(
            (
                item["environment"].clone(),
                item["action"].clone(),
                item["actor"].clone()
            ),
            (json!("development"), json!("flag.created"), Value::Null),
            "the seed ran without an admin: {item}"
        );
    }

    // Pages are slices of the same newest-first order.
    for (page, range) in [(1, 0..3), (2, 3..6), (3, 6..7), (4, 7..7)] {
        let (status, listing) = server
            .admin(
                Method::GET,
                &audit(&format!("&page={page}&pageSize=3")),
                None,
            )
            .await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(
            listing["pagination"],
            json!({"page": page, "pageSize": 3, "total": 7})
        );
        assert_eq!(audit_items(&listing), items[range].to_vec(), "page {page}");
    }
    let (_, capped) = server
        .admin(Method::GET, &audit("&pageSize=1000"), None)
        .await;
    assert_eq!(capped["pagination"]["pageSize"], 500);
    for bad in ["page=0", "pageSize=abc", "environment=PROD", "flagKey=-bad"] {
        let (status, response) = server
            .admin(Method::GET, &format!("/admin/audit?{bad}"), None)
            .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{bad}: {response}");
    }

    // Without `environment`: every environment, and the actions that span all of them.
    let (status, _) = server
        .admin(Method::POST, "/admin/cache/invalidate", None)
        .await;
    assert_eq!(status, StatusCode::OK);
    let (_, everything) = server
        .admin(Method::GET, "/admin/audit?pageSize=500", None)
        .await;
    let all = audit_items(&everything);
    assert_eq!(
        everything["pagination"]["total"],
        7 + 10 + 1,
        "this test's writes, the seed's 10 and the invalidation: {everything}"
    );
    assert_eq!(all[0]["action"], "cache.invalidated", "{everything}");
    assert_eq!(all[0]["environment"], Value::Null);
    assert_eq!(all[0]["actor"], json!({"sub": "admin-1"}));
    assert_eq!(all[0]["after"]["complete"], true, "{}", all[0]);
    assert_eq!(all[1..8].to_vec(), items, "{everything}");

    // Admin only, like every other admin route.
    let (status, body) = server.get("/admin/audit", None).await;
    assert_eq!(
        (status, body),
        (
            StatusCode::UNAUTHORIZED,
            json!({"error": "Unauthorized", "message": "Missing Authorization header"})
        )
    );
    let (status, body) = server
        .get(
            "/admin/audit",
            Some(&server.keys.mint("user-1", &[], 600).unwrap()),
        )
        .await;
    assert_eq!(
        (status, body),
        (
            StatusCode::FORBIDDEN,
            json!({"error": "Forbidden", "message": "Admin access required"})
        )
    );
}
