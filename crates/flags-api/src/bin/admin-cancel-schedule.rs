//! Lambda function for `DELETE /admin/flags/{flagKey}/schedule/{scheduleId}`.
use flags_api::Route;

#[tokio::main]
async fn main() -> Result<(), lambda_http::Error> {
    flags_api::lambda::run(Route::AdminCancelSchedule).await
}
