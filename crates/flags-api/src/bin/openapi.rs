//! Lambda function for `GET /openapi.json`.
fn main() -> Result<(), lambda_http::Error> {
    flags_api::lambda::start(flags_api::lambda::run_openapi())
}
