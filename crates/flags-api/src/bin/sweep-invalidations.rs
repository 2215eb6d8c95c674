//! Lambda function on an EventBridge `rate(1 minute)` rule: completes the cache invalidations
//! writers could not (contract §3.1).
#[tokio::main]
async fn main() -> Result<(), lambda_http::Error> {
    flags_api::lambda::run_sweeper().await
}
