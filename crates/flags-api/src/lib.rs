//! The HTTP edge of the feature-flag service: request parsing, validation, authentication,
//! error mapping and JSON responses, shared by every Lambda function (`src/bin/*.rs`, one per
//! route) and by the local server (`flags-local`).

pub mod api;
pub mod auth;
pub mod bodies;
pub mod context;
pub mod handlers;
#[cfg(feature = "lambda")]
pub mod lambda;
pub mod local_keys;
pub mod ofrep;
pub mod openapi;
pub mod routes;
pub mod validation;

pub use api::{ApiError, ApiRequest, ApiResponse};
pub use context::{AppContext, AuthConfig};
pub use routes::Route;
