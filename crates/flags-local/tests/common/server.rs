//! The local server in process, as `flagctl serve` runs it (the same axum server, handlers and
//! background sweeper), on a spare port, with a small HTTP client for it.

use super::local_keys;
use flags_api::AppContext;
use flags_api::local_keys::LocalKeys;
use flags_core::Config;
use reqwest::{Method, StatusCode};
use serde_json::Value;
use std::sync::Arc;
use std::time::Duration;

/// How often the in-process server completes pending invalidations: `flagctl serve`'s default.
pub const SWEEP_INTERVAL: Duration = flags_local::settings::DEFAULT_POLL_INTERVAL;
/// No request of these tests may take longer: a hung server fails the test instead of hanging it.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(15);

/// A `(status, JSON body or Null or the raw text, headers)` answer.
pub type Answer = (StatusCode, Value, reqwest::header::HeaderMap);

/// HTTP calls to one base URL, with an optional bearer token and JSON body.
#[derive(Debug, Clone)]
pub struct Http {
    pub base: String,
    client: reqwest::Client,
}

impl Http {
    pub fn new(base: String) -> Self {
        let client = reqwest::Client::builder()
            .timeout(REQUEST_TIMEOUT)
            .build()
            .unwrap();
        Self { base, client }
    }

    pub async fn call(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<&str>,
    ) -> Answer {
        self.call_with_headers(method, path, token, body, &[]).await
    }

    /// [`Self::call`] with extra request headers.
    pub async fn call_with_headers(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<&str>,
        headers: &[(&str, &str)],
    ) -> Answer {
        let mut request = self.client.request(method, format!("{}{path}", self.base));
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        if let Some(token) = token {
            request = request.header("authorization", format!("Bearer {token}"));
        }
        if let Some(body) = body {
            request = request
                .header("content-type", "application/json")
                .body(body.to_owned());
        }
        let response = request.send().await.unwrap();
        let (status, headers) = (response.status(), response.headers().clone());
        let text = response.text().await.unwrap();
        let json = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or(Value::String(text))
        };
        (status, json, headers)
    }

    pub async fn get(&self, path: &str, token: Option<&str>) -> (StatusCode, Value) {
        let (status, body, _) = self.call(Method::GET, path, token, None).await;
        (status, body)
    }
}

/// The in-process server. Dropping it stops the server and its background work.
#[derive(Debug)]
pub struct Server {
    pub http: Http,
    pub keys: LocalKeys,
    /// A token of `admin-1` in the `admin` group.
    pub admin: String,
    pub context: Arc<AppContext>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    background: tokio::task::JoinHandle<()>,
}

impl Server {
    /// Serves `config` with fresh signing keys, and sweeps pending invalidations every second
    /// like `flagctl serve`.
    pub async fn start_config(config: Config) -> Self {
        let keys = local_keys();
        let context = Arc::new(AppContext::new(&config, &keys.auth_config()).await.unwrap());
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0))
            .await
            .unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let cors =
            flags_local::cors::AllowedOrigins::parse(flags_local::cors::DEFAULT_ALLOWED_ORIGINS)
                .unwrap();
        tokio::spawn(flags_local::server::serve(
            listener,
            context.clone(),
            cors,
            async move {
                let _ = stopped.await;
            },
        ));
        let background =
            flags_local::server::spawn_background_work(context.service.clone(), SWEEP_INTERVAL);
        let admin = keys.mint("admin-1", &["admin".to_owned()], 600).unwrap();
        Self {
            http: Http::new(base),
            keys,
            admin,
            context,
            stop: Some(stop),
            background,
        }
    }

    /// Stops serving and sweeping and closes the Redis connection, so that nothing of this
    /// server keeps reconnecting to a Redis the test is about to kill.
    pub async fn shutdown(mut self) {
        self.background.abort();
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(redis) = &self.context.redis {
            redis.quit().await;
        }
    }

    pub fn token(&self, sub: &str) -> String {
        self.keys.mint(sub, &[], 600).unwrap()
    }

    pub async fn call(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<&str>,
    ) -> Answer {
        self.http.call(method, path, token, body).await
    }

    pub async fn get(&self, path: &str, token: Option<&str>) -> (StatusCode, Value) {
        self.http.get(path, token).await
    }

    pub async fn admin(
        &self,
        method: Method,
        path: &str,
        body: Option<&str>,
    ) -> (StatusCode, Value) {
        let (status, body, _) = self.http.call(method, path, Some(&self.admin), body).await;
        (status, body)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.background.abort();
    }
}
