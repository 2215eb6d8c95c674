//! Lambda function for `GET /health`.
use flags_api::Route;

fn main() -> Result<(), lambda_http::Error> {
    flags_api::lambda::start(flags_api::lambda::run(Route::Health))
}
