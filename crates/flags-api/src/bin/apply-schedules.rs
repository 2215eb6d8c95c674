//! Lambda function on an EventBridge `rate(1 minute)` rule: applies the flag schedules that are
//! due (contract §2.6), then completes the cache invalidations writers could not (§3.1).
use flags_api::lambda::Function;

fn main() -> Result<(), lambda_http::Error> {
    flags_api::lambda::main(Function::Scheduler)
}
