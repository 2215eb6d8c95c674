//! Lambda function for `POST /admin/cache/invalidate`.
use flags_api::Route;

fn main() -> Result<(), lambda_http::Error> {
    flags_api::lambda::start(flags_api::lambda::run(Route::AdminInvalidateCache))
}
