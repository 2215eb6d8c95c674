//! Lambda function for `GET /admin/audit`.
use flags_api::Route;
use flags_api::lambda::Function;

fn main() -> Result<(), lambda_http::Error> {
    flags_api::lambda::main(Function::Route(Route::AdminAudit))
}
