//! Schedules (contract §2.6) over HTTP against the local server, backed by real PostgreSQL and
//! Redis: every validation message and error body, environments kept apart, and a schedule
//! applied by the server's own background pass while clients read.
#![allow(clippy::unwrap_used, clippy::expect_used)]
mod common;

use chrono::{SecondsFormat, Utc};
use common::server::Server;
use common::{redis_url, seeded_postgres_url};
use flags_core::Config;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use std::time::Duration;

/// Redis databases 14 and 15: the other HTTP tests use 2..=10, the emulator tests 11..=13.
async fn start(redis_db: u8) -> Server {
    let mut config = Config::new(seeded_postgres_url().await, Some(redis_url(redis_db).await));
    config.database_pool_size = 5;
    Server::start_config(config).await
}

fn in_seconds(seconds: i64) -> String {
    (Utc::now() + chrono::TimeDelta::seconds(seconds)).to_rfc3339_opts(SecondsFormat::Millis, true)
}

fn field_errors(body: &Value, field: &str) -> Vec<String> {
    assert_eq!(body["error"], "Validation failed", "{body}");
    body["details"]["fieldErrors"][field]
        .as_array()
        .map(|a| a.iter().map(|m| m.as_str().unwrap().to_owned()).collect())
        .unwrap_or_default()
}

const SCHEDULES: &str = "/admin/flags/wishlist-gallery/schedule";

#[tokio::test]
async fn schedule_routes_validate_and_answer_like_the_contract() {
    let server = start(14).await;
    let post = |path: &'static str, body: String| {
        let server = &server;
        async move { server.admin(Method::POST, path, Some(&body)).await }
    };

    // Each §2.6 validation message, in `fieldErrors` under the field it is about.
    let future = in_seconds(3600);
    let cases: Vec<(Value, &str, &str)> = vec![
        (
            json!({"updates": {"enabled": true}}),
            "scheduledAt",
            "Required",
        ),
        (
            json!({"scheduledAt": "2020-01-01T00:00:00.000Z", "updates": {"enabled": true}}),
            "scheduledAt",
            "scheduledAt must be in the future",
        ),
        (
            json!({"scheduledAt": "tomorrow", "updates": {"enabled": true}}),
            "scheduledAt",
            "scheduledAt must be a valid ISO 8601 datetime",
        ),
        (
            json!({"scheduledAt": "2030-01-01T09:00:00+02:00", "updates": {"enabled": true}}),
            "scheduledAt",
            "scheduledAt must be a valid ISO 8601 datetime",
        ),
        (
            json!({"scheduledAt": 1_893_488_400_000_u64, "updates": {"enabled": true}}),
            "scheduledAt",
            "Expected string, received number",
        ),
        (
            json!({"scheduledAt": future, "updates": {}}),
            "updates",
            "At least one update property (enabled or rolloutPercentage) is required",
        ),
        (json!({"scheduledAt": future}), "updates", "Required"),
        (
            json!({"scheduledAt": future, "updates": [true]}),
            "updates",
            "Expected object, received array",
        ),
        (
            json!({"scheduledAt": future, "updates": {"rolloutPercentage": 101}}),
            "updates",
            "Number must be less than or equal to 100",
        ),
        (
            json!({"scheduledAt": future, "updates": {"enabled": "yes"}}),
            "updates",
            "Expected boolean, received string",
        ),
        (
            json!({"scheduledAt": future, "updates": {"description": "x"}}),
            "updates",
            "Unrecognized key(s) in object: 'description'",
        ),
    ];
    for (body, field, message) in cases {
        let (status, answer) = post(SCHEDULES, body.to_string()).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}: {answer}");
        assert_eq!(field_errors(&answer, field), [message], "{body}: {answer}");
    }
    let (status, answer) = post(SCHEDULES, r#"{"scheduledAt": "#.to_owned()).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(
        answer["details"]["formErrors"],
        json!(["Malformed JSON in request body"])
    );
    let unknown = json!({"scheduledAt": future, "updates": {"enabled": true}, "maxRetries": 9});
    let (status, answer) = post(SCHEDULES, unknown.to_string()).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(
        answer["details"]["formErrors"],
        json!(["Unrecognized key(s) in object: 'maxRetries'"])
    );
    // 400 comes before 404: a bad body on a missing flag is still a validation error.
    let (status, _) = post("/admin/flags/no-such-flag/schedule", "{}".to_owned()).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);

    // A valid schedule, in production (the default) and one in development for the same key.
    let body = json!({"scheduledAt": future, "updates": {"rolloutPercentage": 25}}).to_string();
    let (status, created) = post(SCHEDULES, body.clone()).await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    let id = created["id"].as_str().unwrap().to_owned();
    assert_eq!(created["flagKey"], "wishlist-gallery");
    assert_eq!(created["scheduledAt"], future);
    assert_eq!(created["status"], "pending");
    assert_eq!(created["updates"], json!({"rolloutPercentage": 25}));
    assert_eq!(
        (&created["appliedAt"], &created["errorMessage"]),
        (&Value::Null, &Value::Null)
    );
    assert_eq!(created["createdBy"], "admin-1");
    assert!(created.get("cancelledBy").is_none() && created.get("cancelledAt").is_none());
    let dev_path = "/admin/flags/wishlist-gallery/schedule?environment=development";
    let (status, dev) = post(dev_path, body).await;
    assert_eq!(status, StatusCode::CREATED, "{dev}");
    let (_, production_list) = server.admin(Method::GET, SCHEDULES, None).await;
    assert_eq!(production_list, json!([created]));
    let (_, development_list) = server.admin(Method::GET, dev_path, None).await;
    assert_eq!(development_list, json!([dev]));

    let missing_flag = json!({"error": "NOT_FOUND", "message": "Flag 'no-such-flag' not found"});
    let (status, answer) = post(
        "/admin/flags/no-such-flag/schedule",
        json!({"scheduledAt": future, "updates": {"enabled": true}}).to_string(),
    )
    .await;
    assert_eq!(
        (status, answer),
        (StatusCode::NOT_FOUND, missing_flag.clone())
    );
    let (status, answer) = server
        .admin(Method::GET, "/admin/flags/no-such-flag/schedule", None)
        .await;
    assert_eq!(
        (status, answer),
        (StatusCode::NOT_FOUND, missing_flag.clone())
    );

    // Cancelling: unknown, non-UUID and other environments' ids are the schedule 404.
    let no_schedule = |flag: &str| json!({"error": "NOT_FOUND", "message": format!("Schedule not found for flag '{flag}'")});
    let dev_id = dev["id"].as_str().unwrap();
    for (path, flag) in [
        (format!("{SCHEDULES}/not-a-uuid"), "wishlist-gallery"),
        (
            format!("{SCHEDULES}/{}", uuid::Uuid::new_v4()),
            "wishlist-gallery",
        ),
        (format!("{SCHEDULES}/{dev_id}"), "wishlist-gallery"),
        (
            format!("/admin/flags/wishlist-add-item/schedule/{id}"),
            "wishlist-add-item",
        ),
    ] {
        let (status, answer) = server.admin(Method::DELETE, &path, None).await;
        assert_eq!(
            (status, answer),
            (StatusCode::NOT_FOUND, no_schedule(flag)),
            "{path}"
        );
    }
    let (status, answer) = server
        .admin(
            Method::DELETE,
            &format!("/admin/flags/no-such-flag/schedule/{id}"),
            None,
        )
        .await;
    assert_eq!((status, answer), (StatusCode::NOT_FOUND, missing_flag));

    let (status, cancelled) = server
        .admin(Method::DELETE, &format!("{SCHEDULES}/{id}"), None)
        .await;
    assert_eq!(status, StatusCode::OK, "{cancelled}");
    assert_eq!(cancelled["status"], "cancelled");
    assert_eq!(cancelled["cancelledBy"], "admin-1");
    assert!(cancelled["cancelledAt"].is_string());
    let (status, again) = server
        .admin(Method::DELETE, &format!("{SCHEDULES}/{id}"), None)
        .await;
    assert_eq!(
        (status, again),
        (StatusCode::OK, cancelled.clone()),
        "re-cancelling is allowed"
    );
    let (_, development_list) = server.admin(Method::GET, dev_path, None).await;
    assert_eq!(
        development_list[0]["status"], "pending",
        "the other environment is untouched"
    );

    let (_, audit) = server
        .admin(
            Method::GET,
            "/admin/audit?flagKey=wishlist-gallery&environment=production",
            None,
        )
        .await;
    let actions: Vec<&str> = audit["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|item| item["action"].as_str().unwrap())
        .collect();
    assert_eq!(
        actions[..2],
        ["schedule.cancelled", "schedule.created"],
        "{audit}"
    );
    assert_eq!(audit["items"][0]["actor"]["sub"], "admin-1");
    server.shutdown().await;
}

/// The server's background pass applies a schedule within a second of its time: a client
/// polling `GET /config/flags` sees the change no later than two seconds after `scheduledAt`.
#[tokio::test]
async fn a_schedule_applies_on_the_running_server_within_two_seconds_of_its_time() {
    let server = start(15).await;
    let (status, _) = server
        .admin(
            Method::POST,
            "/admin/flags",
            Some(r#"{"flagKey": "scheduled-launch", "enabled": false, "rolloutPercentage": 100}"#),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED);
    let (_, flags) = server.get("/config/flags", None).await;
    assert_eq!(
        flags["scheduled-launch"], false,
        "cached as off before the schedule"
    );

    let at = in_seconds(2);
    let scheduled_at: chrono::DateTime<Utc> = at.parse().unwrap();
    let body = json!({"scheduledAt": at, "updates": {"enabled": true}}).to_string();
    let (status, created) = server
        .admin(
            Method::POST,
            "/admin/flags/scheduled-launch/schedule",
            Some(&body),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{created}");

    let deadline = scheduled_at + chrono::TimeDelta::seconds(2);
    let seen_on = loop {
        let (_, flags) = server.get("/config/flags", None).await;
        let now = Utc::now();
        if flags["scheduled-launch"] == true {
            break now;
        }
        assert!(now <= deadline, "not applied 2 s after its time: {flags}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(seen_on >= scheduled_at, "applied before its time");
    assert!(
        seen_on <= deadline,
        "seen at {seen_on}, scheduled at {scheduled_at}"
    );

    let (_, listed) = server
        .admin(Method::GET, "/admin/flags/scheduled-launch/schedule", None)
        .await;
    assert_eq!(listed[0]["status"], "applied", "{listed}");
    assert!(listed[0]["appliedAt"].is_string());
    let id = listed[0]["id"].as_str().unwrap();
    let (status, answer) = server
        .admin(
            Method::DELETE,
            &format!("/admin/flags/scheduled-launch/schedule/{id}"),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(
        answer,
        json!({"error": "INVALID_STATE", "message": "Cannot cancel schedule that is already applied or failed"})
    );
    server.shutdown().await;
}
