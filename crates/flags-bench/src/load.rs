//! The load generator: concurrent clients calling the handler in a loop, plus an optional admin
//! writer, every request timed.

use crate::stats::Sample;
use bytes::Bytes;
use flags_api::handlers::handle;
use flags_api::{ApiRequest, AppContext, Route};
use http::header::{AUTHORIZATION, CONTENT_TYPE};
use http::{HeaderMap, HeaderValue, Method};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

/// What the clients ask for: the routes of contract §2 the original's clients call most.
#[derive(Debug)]
pub struct Workload {
    pub context: Arc<AppContext>,
    pub environment: String,
    pub flag_keys: Vec<String>,
    user_headers: Vec<HeaderMap>,
    admin_headers: HeaderMap,
}

impl Workload {
    pub fn new(
        context: Arc<AppContext>,
        environment: &str,
        flag_keys: Vec<String>,
        tokens: &crate::fixtures::Tokens,
    ) -> Self {
        Self {
            context,
            environment: environment.to_owned(),
            flag_keys,
            user_headers: tokens.users.iter().map(|t| bearer(t)).collect(),
            admin_headers: bearer(&tokens.admin),
        }
    }

    /// `GET /config/flags` for one of the users (evaluated for that user).
    pub async fn get_flags(&self, user: usize) -> bool {
        let headers = self.user_headers[user % self.user_headers.len()].clone();
        self.call(
            Route::GetFlags,
            self.request(Method::GET, None, headers, Bytes::new()),
        )
        .await
    }

    /// `GET /config/flags/{flagKey}` (raw configuration).
    pub async fn get_flag(&self, flag: usize) -> bool {
        let key = &self.flag_keys[flag % self.flag_keys.len()];
        self.call(
            Route::GetFlag,
            self.request(Method::GET, Some(key), HeaderMap::new(), Bytes::new()),
        )
        .await
    }

    /// `POST /admin/flags/{flagKey}`: a rollout change, which invalidates the cache.
    pub async fn update_flag(&self, flag: usize, rollout: u32) -> bool {
        let key = &self.flag_keys[flag % self.flag_keys.len()];
        let mut headers = self.admin_headers.clone();
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        let body = Bytes::from(format!("{{\"rolloutPercentage\":{}}}", rollout % 101));
        self.call(
            Route::AdminUpdateFlag,
            self.request(Method::POST, Some(key), headers, body),
        )
        .await
    }

    fn request(
        &self,
        method: Method,
        flag_key: Option<&str>,
        headers: HeaderMap,
        body: Bytes,
    ) -> ApiRequest {
        api_request(&self.environment, method, flag_key, headers, body)
    }

    async fn call(&self, route: Route, request: ApiRequest) -> bool {
        handle(&self.context, route, request)
            .await
            .status
            .is_success()
    }
}

/// A request as API Gateway would hand it over: the environment in the query, the flag key (if
/// the route has one) as a path parameter.
pub fn api_request(
    environment: &str,
    method: Method,
    flag_key: Option<&str>,
    headers: HeaderMap,
    body: Bytes,
) -> ApiRequest {
    let path_params: HashMap<String, String> = flag_key
        .map(|key| [("flagKey".to_owned(), key.to_owned())].into())
        .unwrap_or_default();
    ApiRequest {
        method,
        path: String::new(),
        path_params,
        query: [("environment".to_owned(), environment.to_owned())].into(),
        headers,
        body,
    }
}

/// `Authorization: Bearer <token>`.
pub fn bearer(token: &str) -> HeaderMap {
    let mut headers = HeaderMap::new();
    if let Ok(value) = HeaderValue::from_str(&format!("Bearer {token}")) {
        headers.insert(AUTHORIZATION, value);
    }
    headers
}

/// How hard and how long to push.
#[derive(Debug, Clone, Copy)]
pub struct LoadPlan {
    pub clients: usize,
    pub duration: Duration,
    /// Share of reads that are `GET /config/flags/{flagKey}`; the rest are `GET /config/flags`.
    pub single_flag_percent: u32,
    /// One admin update every this often, besides the readers (`None`: read-only load).
    pub write_every: Option<Duration>,
}

/// Runs the plan from `start` and returns every request's sample, in no particular order.
pub async fn run(workload: Arc<Workload>, plan: LoadPlan, start: Instant) -> Vec<Sample> {
    let deadline = start + plan.duration;
    let mut tasks = Vec::with_capacity(plan.clients + 1);
    for client in 0..plan.clients {
        let workload = Arc::clone(&workload);
        tasks.push(tokio::spawn(async move {
            let mut rng = StdRng::seed_from_u64(client as u64);
            let mut samples = Vec::new();
            while Instant::now() < deadline {
                let began = Instant::now();
                let ok = if rng.random_range(0..100) < plan.single_flag_percent {
                    workload.get_flag(rng.random::<u32>() as usize).await
                } else {
                    workload.get_flags(rng.random::<u32>() as usize).await
                };
                samples.push(sample(start, began, ok, false));
            }
            samples
        }));
    }
    if let Some(every) = plan.write_every {
        let workload = Arc::clone(&workload);
        tasks.push(tokio::spawn(async move {
            let mut samples = Vec::new();
            let mut ticker = tokio::time::interval(every);
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut round = 0u32;
            while Instant::now() < deadline {
                ticker.tick().await;
                let began = Instant::now();
                let ok = workload.update_flag(round as usize, round * 7).await;
                samples.push(sample(start, began, ok, true));
                round += 1;
            }
            samples
        }));
    }
    let mut all = Vec::new();
    for task in tasks {
        if let Ok(samples) = task.await {
            all.extend(samples);
        }
    }
    all
}

fn sample(start: Instant, began: Instant, ok: bool, write: bool) -> Sample {
    Sample {
        at: began - start,
        latency: began.elapsed(),
        ok,
        write,
    }
}

/// `clients` closed loops over real HTTP for `duration`, each client with its own keep-alive
/// connection and a random user (of `users`) per request; `request` builds the request for a
/// user. A request counts as an error unless it answers `expected` with a complete body.
pub async fn http_closed_loop<F>(
    clients: usize,
    duration: Duration,
    users: usize,
    expected: reqwest::StatusCode,
    request: F,
) -> crate::stats::Summary
where
    F: Fn(&reqwest::Client, usize) -> reqwest::RequestBuilder + Send + Sync + 'static,
{
    let request = Arc::new(request);
    let start = Instant::now();
    let deadline = start + duration;
    let mut tasks = Vec::with_capacity(clients);
    for client_index in 0..clients {
        let request = Arc::clone(&request);
        tasks.push(tokio::spawn(async move {
            let client = reqwest::Client::new();
            let mut rng = StdRng::seed_from_u64(client_index as u64);
            let mut samples = Vec::new();
            while Instant::now() < deadline {
                let user = rng.random_range(0..users.max(1));
                let began = Instant::now();
                let ok = match request(&client, user).send().await {
                    Ok(response) => {
                        let status = response.status();
                        response.bytes().await.is_ok() && status == expected
                    }
                    Err(_) => false,
                };
                samples.push(sample(start, began, ok, false));
            }
            samples
        }));
    }
    let mut all = Vec::new();
    for task in tasks {
        if let Ok(samples) = task.await {
            all.extend(samples);
        }
    }
    crate::stats::Summary::of(&all, start.elapsed())
}
