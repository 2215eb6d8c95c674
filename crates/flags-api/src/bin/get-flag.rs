//! Lambda function for `GET /config/flags/{flagKey}`.
use flags_api::Route;

fn main() -> Result<(), lambda_http::Error> {
    flags_api::lambda::start(flags_api::lambda::run(Route::GetFlag))
}
