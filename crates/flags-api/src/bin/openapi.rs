//! Lambda function for `GET /openapi.json`.
#[tokio::main]
async fn main() -> Result<(), lambda_http::Error> {
    flags_api::lambda::run_openapi().await
}
