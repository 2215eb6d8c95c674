//! Lambda function for the HTTP API's `$default` route: any method and path no route matches.
fn main() -> Result<(), lambda_http::Error> {
    flags_api::lambda::start(flags_api::lambda::run_not_found())
}
