//! Lambda function for `GET /admin/flags/{flagKey}/schedule`.
use flags_api::Route;

#[tokio::main]
async fn main() -> Result<(), lambda_http::Error> {
    flags_api::lambda::run(Route::AdminListSchedules).await
}
