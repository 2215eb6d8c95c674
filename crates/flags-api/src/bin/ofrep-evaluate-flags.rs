//! Lambda function for `POST /ofrep/v1/evaluate/flags` (OFREP).
use flags_api::Route;

#[tokio::main]
async fn main() -> Result<(), lambda_http::Error> {
    flags_api::lambda::run(Route::OfrepEvaluateFlags).await
}
