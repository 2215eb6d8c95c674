//! Lambda function for `GET /openapi.json`.
use flags_api::lambda::Function;

fn main() -> Result<(), lambda_http::Error> {
    flags_api::lambda::main(Function::OpenApi)
}
