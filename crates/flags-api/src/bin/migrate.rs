//! Applies the pending database migrations, from inside the VPC (invoked by the pre-traffic
//! hook and by `make deploy`; not behind the HTTP API).
use flags_api::lambda::Function;

fn main() -> Result<(), lambda_http::Error> {
    flags_api::lambda::main(Function::Migrator)
}
