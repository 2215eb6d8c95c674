//! Lambda function for `GET /config/flags/{flagKey}`.
use flags_api::Route;

#[tokio::main]
async fn main() -> Result<(), lambda_http::Error> {
    flags_api::lambda::run(Route::GetFlag).await
}
