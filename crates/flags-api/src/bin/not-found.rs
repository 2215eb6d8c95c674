//! Lambda function for the HTTP API's `$default` route: any method and path no route matches.
use flags_api::lambda::Function;

fn main() -> Result<(), lambda_http::Error> {
    flags_api::lambda::main(Function::NotFound)
}
