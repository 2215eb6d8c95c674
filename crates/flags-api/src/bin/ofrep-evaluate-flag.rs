//! Lambda function for `POST /ofrep/v1/evaluate/flags/{key}` (OFREP).
use flags_api::Route;

fn main() -> Result<(), lambda_http::Error> {
    flags_api::lambda::start(flags_api::lambda::run(Route::OfrepEvaluateFlag))
}
