//! Lambda function for `POST /admin/flags/{flagKey}/users`.
use flags_api::Route;

fn main() -> Result<(), lambda_http::Error> {
    flags_api::lambda::start(flags_api::lambda::run(Route::AdminUpsertOverride))
}
