//! Hostile and unusual input at the HTTP edge of the local server, on both databases: the
//! `Authorization` header spelt without `Bearer ` or in another case, control characters in text
//! fields and path ids, malformed percent-encoding in the path (contract §2.3, §2.4), and a
//! signing key rotated while the server runs. Each is a clear answer, never a 500, and a refused
//! request changes nothing.
#![allow(clippy::unwrap_used, clippy::expect_used)]
mod common;

use common::server::Server;
use common::{seeded_postgres_url, seeded_sqlite_url};
use flags_core::Config;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

/// The in-memory cache: these tests need no Redis.
async fn start(database_url: String) -> Server {
    Server::start_config(Config::new(database_url, None)).await
}

/// A request with the `Authorization` header exactly as given.
async fn with_authorization(
    server: &Server,
    path: &str,
    authorization: &str,
) -> (StatusCode, Value) {
    let response = reqwest::Client::new()
        .get(format!("{}{path}", server.http.base))
        .header("authorization", authorization)
        .send()
        .await
        .unwrap();
    let status = response.status();
    (status, response.json().await.unwrap())
}

fn field_errors(body: &Value, field: &str) -> Value {
    assert_eq!(body["error"], "Validation failed", "{body}");
    body["details"]["fieldErrors"][field].clone()
}

async fn token_spellings(server: Server) {
    let admin = server.admin.clone();
    for spelling in [
        admin.clone(),
        format!("BEARER {admin}"),
        format!("bearer  {admin}"),
    ] {
        let (status, body) = with_authorization(&server, "/admin/flags", &spelling).await;
        assert_eq!(status, StatusCode::OK, "{spelling:.12}…: {body}");
    }
    let (status, body) =
        with_authorization(&server, "/admin/flags", &format!("Basic {admin}")).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(body["message"], "Invalid or expired token");

    // On the optional-auth route the bare token identifies the caller too.
    let (status, _) = server
        .admin(
            Method::POST,
            "/admin/flags/wishlist-gallery/users",
            Some(r#"{"userId": "raw-token-user", "overrideType": "exclude"}"#),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED);
    let user = server.token("raw-token-user");
    let (_, anonymous) = server.get("/config/flags", None).await;
    assert_eq!(anonymous["wishlist-gallery"], true);
    for spelling in [user.clone(), format!("BeArEr {user}")] {
        let (status, flags) = with_authorization(&server, "/config/flags", &spelling).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(
            flags["wishlist-gallery"], false,
            "the user's exclude override applies"
        );
    }
    server.shutdown().await;
}

async fn control_characters_and_bad_escapes(server: Server) {
    let overrides = "/admin/flags/wishlist-gallery/users";
    let (_, before) = server.admin(Method::GET, overrides, None).await;
    let (_, flags_before) = server.admin(Method::GET, "/admin/flags", None).await;
    let control = "String must not contain control characters";
    let cases: Vec<(Method, &str, Value, &str)> = vec![
        (
            Method::POST,
            overrides,
            json!({"userId": "a\u{0}b", "overrideType": "include"}),
            "userId",
        ),
        (
            Method::POST,
            overrides,
            json!({"userId": "u1", "overrideType": "include", "reason": "ring\u{7}"}),
            "reason",
        ),
        (
            Method::POST,
            "/admin/flags",
            json!({"flagKey": "new-flag", "description": "del\u{7f}"}),
            "description",
        ),
        (
            Method::POST,
            "/admin/flags/wishlist-gallery",
            json!({"description": "line\nbreak"}),
            "description",
        ),
    ];
    for (method, path, body, field) in cases {
        let (status, answer) = server.admin(method, path, Some(&body.to_string())).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}: {answer}");
        assert_eq!(field_errors(&answer, field), json!([control]), "{body}");
    }
    let (status, answer) = server
        .admin(Method::DELETE, &format!("{overrides}/a%00b"), None)
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{answer}");
    assert_eq!(
        field_errors(&answer, "userId"),
        json!(["User id must not contain control characters"])
    );

    let bad_escape = json!({
        "error": "Validation failed",
        "details": {"formErrors": ["Invalid percent-encoding in the request path"], "fieldErrors": {}}
    });
    for path in [
        "/config/flags/%FF",
        "/config/flags/wishlist%",
        "/admin/flags/wishlist-gallery/users/%C3",
    ] {
        let (status, answer, _) = server
            .call(Method::GET, path, Some(&server.admin), None)
            .await;
        assert_eq!(
            (status, answer),
            (StatusCode::BAD_REQUEST, bad_escape.clone()),
            "{path}"
        );
    }
    let (status, answer) = server
        .admin(Method::DELETE, &format!("{overrides}/%FF"), None)
        .await;
    assert_eq!((status, answer), (StatusCode::BAD_REQUEST, bad_escape));

    // Nothing of it was written.
    let (_, after) = server.admin(Method::GET, overrides, None).await;
    assert_eq!(after, before);
    let (_, flags_after) = server.admin(Method::GET, "/admin/flags", None).await;
    assert_eq!(flags_after, flags_before);
    server.shutdown().await;
}

/// Replacing an override keeps its `createdAt`; `GET /admin/flags` lists in byte order (`B`
/// before `a`) on both databases.
async fn replaced_overrides_and_listing_order(server: Server) {
    let overrides = "/admin/flags/wishlist-gallery/users";
    let first = json!({"userId": "same-user", "overrideType": "include"}).to_string();
    let (status, created) = server.admin(Method::POST, overrides, Some(&first)).await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    let second = json!({"userId": "same-user", "overrideType": "exclude", "reason": "opted out"});
    let (status, replaced) = server
        .admin(Method::POST, overrides, Some(&second.to_string()))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{replaced}");
    assert_eq!(replaced["overrideType"], "exclude");
    assert_eq!(replaced["createdAt"], created["createdAt"], "{replaced}");

    for key in ["Beta-flag", "alpha-flag"] {
        let body = json!({"flagKey": key}).to_string();
        let (status, _) = server
            .admin(Method::POST, "/admin/flags", Some(&body))
            .await;
        assert_eq!(status, StatusCode::CREATED);
    }
    let (_, listed) = server.admin(Method::GET, "/admin/flags", None).await;
    let keys: Vec<&str> = listed
        .as_array()
        .unwrap()
        .iter()
        .map(|flag| flag["key"].as_str().unwrap())
        .collect();
    let mut byte_order = keys.clone();
    byte_order.sort_unstable();
    assert_eq!(keys, byte_order);
    assert!(
        keys.iter().position(|k| *k == "Beta-flag") < keys.iter().position(|k| *k == "alpha-flag")
    );
    server.shutdown().await;
}

#[tokio::test]
async fn replaced_overrides_and_listing_order_on_postgres() {
    replaced_overrides_and_listing_order(start(seeded_postgres_url().await).await).await;
}

#[tokio::test]
async fn replaced_overrides_and_listing_order_on_sqlite() {
    replaced_overrides_and_listing_order(start(seeded_sqlite_url().await).await).await;
}

#[tokio::test]
async fn token_spellings_on_postgres() {
    token_spellings(start(seeded_postgres_url().await).await).await;
}

#[tokio::test]
async fn token_spellings_on_sqlite() {
    token_spellings(start(seeded_sqlite_url().await).await).await;
}

#[tokio::test]
async fn control_characters_and_bad_escapes_on_postgres() {
    control_characters_and_bad_escapes(start(seeded_postgres_url().await).await).await;
}

#[tokio::test]
async fn control_characters_and_bad_escapes_on_sqlite() {
    control_characters_and_bad_escapes(start(seeded_sqlite_url().await).await).await;
}

/// Key rotation (contract §2.4): the JWKS file gains a key while the server runs. A token signed
/// with it is accepted after one reread, tokens of the old key stay valid, and another unknown
/// key within the minute is refused without a second reread.
#[tokio::test]
async fn a_rotated_signing_key_is_accepted_after_one_jwks_reread() {
    let server = start(seeded_sqlite_url().await).await;
    let admin = ["admin".to_owned()];
    let before_rotation = server.admin.clone();
    server.keys.rotate().unwrap();
    let rotated = server.keys.mint("admin-2", &admin, 600).unwrap();
    for token in [&rotated, &before_rotation] {
        let (status, body) =
            with_authorization(&server, "/admin/flags", &format!("Bearer {token}")).await;
        assert_eq!(status, StatusCode::OK, "{body}");
    }
    server.keys.rotate().unwrap();
    let too_soon = server.keys.mint("admin-3", &admin, 600).unwrap();
    let (status, body) =
        with_authorization(&server, "/admin/flags", &format!("Bearer {too_soon}")).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    assert_eq!(body["message"], "Invalid or expired token");
    server.shutdown().await;
}

/// CORS (the local server's default origins): a preflight from an allowed origin is answered
/// 204 with the methods, headers and credentials a browser needs; one from a refused origin is
/// answered without them, so the browser refuses; real answers carry the origin only when it is
/// allowed, and expose the `ETag` OFREP clients compare.
#[tokio::test]
async fn cors_preflight_from_an_allowed_and_a_refused_origin() {
    let server = start(seeded_sqlite_url().await).await;
    let client = reqwest::Client::new();
    let preflight = |origin: &'static str| {
        client
            .request(
                Method::OPTIONS,
                format!("{}/ofrep/v1/evaluate/flags", server.http.base),
            )
            .header("origin", origin)
            .header("access-control-request-method", "POST")
            .header(
                "access-control-request-headers",
                "content-type,authorization,if-none-match,x-environment",
            )
            .send()
    };

    let allowed = preflight("http://localhost:5173").await.unwrap();
    assert_eq!(allowed.status(), StatusCode::NO_CONTENT);
    let headers = allowed.headers();
    assert_eq!(
        headers["access-control-allow-origin"],
        "http://localhost:5173"
    );
    assert_eq!(headers["access-control-allow-credentials"], "true");
    let methods = headers["access-control-allow-methods"].to_str().unwrap();
    for method in ["GET", "POST", "DELETE"] {
        assert!(methods.contains(method), "{methods}");
    }
    let allowed_headers = headers["access-control-allow-headers"]
        .to_str()
        .unwrap()
        .to_lowercase();
    for header in [
        "authorization",
        "content-type",
        "if-none-match",
        "x-environment",
    ] {
        assert!(allowed_headers.contains(header), "{allowed_headers}");
    }

    let refused = preflight("https://evil.example").await.unwrap();
    assert_eq!(refused.status(), StatusCode::NO_CONTENT);
    assert!(
        refused
            .headers()
            .get("access-control-allow-origin")
            .is_none()
    );

    for (origin, echoed) in [
        ("http://127.0.0.1:8080", true),
        ("https://evil.example", false),
    ] {
        let answer = client
            .post(format!("{}/ofrep/v1/evaluate/flags", server.http.base))
            .header("origin", origin)
            .send()
            .await
            .unwrap();
        assert_eq!(answer.status(), StatusCode::OK);
        let headers = answer.headers();
        assert_eq!(
            headers.get("access-control-allow-origin").is_some(),
            echoed,
            "{origin}"
        );
        if echoed {
            assert_eq!(headers["access-control-allow-origin"], origin);
            let exposed = headers["access-control-expose-headers"]
                .to_str()
                .unwrap()
                .to_lowercase();
            assert!(exposed.contains("etag"), "{exposed}");
        }
    }
}

/// `GET /openapi.json` serves the document every route is described in, without the database.
#[tokio::test]
async fn the_openapi_document_is_served() {
    let server = start(seeded_sqlite_url().await).await;
    let (status, document) = server.http.get("/openapi.json", None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(document["openapi"], "3.1.0");
    assert_eq!(&document, flags_api::openapi::document());
    let (status, same) = server.http.get("/api/openapi.json", None).await;
    assert_eq!((status, same), (StatusCode::OK, document));
}
