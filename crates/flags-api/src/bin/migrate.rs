//! Applies the pending database migrations, from inside the VPC (invoked by the pre-traffic
//! hook and by `make deploy`; not behind the HTTP API).
fn main() -> Result<(), lambda_http::Error> {
    flags_api::lambda::start(flags_api::lambda::run_migrator())
}
