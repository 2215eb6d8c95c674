//! The local server under made-up input (contract §3): 10,000 made-up environments and 10,000
//! signed-in user ids against a `flagctl serve` process with the in-memory cache
//! (`REDIS_URL=disabled`, as the README documents it) held to 1 MiB. Made-up environments are
//! answered from the cached list of environments and cached under no name of their own; the
//! user ids' overrides are evicted past the budget. The process's resident memory grows by less
//! than [`MAX_GROWTH_KIB`].
#![allow(clippy::unwrap_used, clippy::expect_used)]
mod common;

use common::process::ServerProcess;
use common::unique;
use flags_api::local_keys::LocalKeys;
use reqwest::StatusCode;
use serde_json::{Value, json};

/// The stated bound: the cache's budget is 1 MiB; the rest is allocator slack.
const MAX_GROWTH_KIB: u64 = 16 * 1024;
const NAMES: usize = 10_000;

async fn get(client: &reqwest::Client, url: String, token: Option<&str>) -> Value {
    let mut request = client.get(url);
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let response = request.send().await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    response.json().await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn made_up_environments_and_users_keep_the_process_small() {
    let data_dir = std::env::temp_dir().join(unique("flags-memory-"));
    let vars = [("REDIS_URL", "disabled"), ("CACHE_MEMORY_MAX_MB", "1")];
    let mut server = ServerProcess::spawn("server", &vars, &data_dir);
    server.wait_ready("disabled").await;
    let base = server.http.base.clone();
    let client = reqwest::Client::new();
    let health = get(&client, format!("{base}/health"), None).await;
    assert_eq!(health["cache"], "memory", "{health}");

    let keys = LocalKeys::load_or_create(&data_dir.join("auth")).unwrap();
    let tokens: Vec<String> = (0..NAMES)
        .map(|i| keys.mint(&format!("user-{i}"), &[], 600).unwrap())
        .collect();
    // Warm up every path first, so the baseline holds the allocator's working set.
    for (i, token) in tokens.iter().take(100).enumerate() {
        let warm = format!("{base}/config/flags?environment=warm-{i}");
        get(&client, warm, None).await;
        get(&client, format!("{base}/config/flags"), Some(token)).await;
    }
    let before = server.resident_kib();

    for i in 0..NAMES {
        let flags = get(
            &client,
            format!("{base}/config/flags?environment=nx-{i}"),
            None,
        )
        .await;
        assert_eq!(flags, json!({}));
    }
    for token in &tokens {
        let flags = get(&client, format!("{base}/config/flags"), Some(token)).await;
        assert_eq!(flags["wishlist-gallery"], true, "{flags}");
    }
    let after = server.resident_kib();
    println!(
        "resident memory: {before} KiB before, {after} KiB after {NAMES} environments and {NAMES} users"
    );
    assert!(
        after.saturating_sub(before) < MAX_GROWTH_KIB,
        "grew from {before} KiB to {after} KiB"
    );
}
