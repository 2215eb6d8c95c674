//! Transport-neutral request and response types. The Lambda adapter and the local server both
//! translate to and from these, so every route is handled by exactly the same code.

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use serde::Serialize;
use serde_json::json;
use std::collections::{BTreeMap, HashMap};

/// Largest accepted request body (contract §2.3: 413 above 64 KiB).
pub const MAX_BODY_BYTES: usize = 64 * 1024;

#[derive(Debug, Clone, Default)]
pub struct ApiRequest {
    pub method: Method,
    pub path: String,
    pub path_params: HashMap<String, String>,
    pub query: HashMap<String, String>,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl ApiRequest {
    /// What either edge received: `parts` gives the method, path and headers; the edge gives
    /// what it decoded itself (path parameters, query) and the body.
    pub fn from_parts(
        parts: http::request::Parts,
        path_params: HashMap<String, String>,
        query: HashMap<String, String>,
        body: Bytes,
    ) -> Self {
        Self {
            method: parts.method,
            path: parts.uri.path().to_owned(),
            path_params,
            query,
            headers: parts.headers,
            body,
        }
    }

    pub fn path_param(&self, name: &str) -> Option<&str> {
        self.path_params.get(name).map(String::as_str)
    }

    pub fn query_param(&self, name: &str) -> Option<&str> {
        self.query.get(name).map(String::as_str)
    }

    /// The token of the `Authorization` header: `None` when the header is absent. The `Bearer `
    /// prefix is optional and matched case-insensitively, as the original accepted both.
    pub fn bearer_token(&self) -> Option<&str> {
        let value = self
            .headers
            .get(header::AUTHORIZATION)?
            .to_str()
            .unwrap_or("")
            .trim();
        let token = match value.split_once(' ') {
            Some((scheme, rest)) if scheme.eq_ignore_ascii_case("bearer") => rest,
            _ => value,
        };
        Some(token.trim())
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct ApiResponse {
    pub status: StatusCode,
    pub headers: HeaderMap,
    /// The JSON text; `None` for 204 and 304.
    pub body: Option<String>,
}

impl ApiResponse {
    /// `body` serialised straight to text: a map or struct is written without first becoming a
    /// `serde_json::Value` tree (`json!(...)` bodies, small ones, still may).
    pub fn json(status: StatusCode, body: impl Serialize) -> Self {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        // Evaluations differ per caller and change with every admin write.
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        // Serialising maps with string keys, structs and `Value`s cannot fail.
        let text = serde_json::to_string(&body).unwrap_or_else(|error| {
            tracing::error!(error = %error, "a response body did not serialise");
            String::from("{}")
        });
        Self {
            status,
            headers,
            body: Some(text),
        }
    }

    pub fn ok(body: impl Serialize) -> Self {
        Self::json(StatusCode::OK, body)
    }

    /// 304: the client's copy (its `If-None-Match`) is current; no body.
    pub fn not_modified() -> Self {
        let mut response = Self::no_content();
        response.status = StatusCode::NOT_MODIFIED;
        response
    }

    pub fn no_content() -> Self {
        Self {
            status: StatusCode::NO_CONTENT,
            headers: HeaderMap::new(),
            body: None,
        }
    }

    /// The response either edge sends; `B` is its body type (empty for 204).
    pub fn into_http<B: From<String> + Default>(self) -> http::Response<B> {
        let body = self.body.map_or_else(B::default, B::from);
        let mut response = http::Response::new(body);
        *response.status_mut() = self.status;
        *response.headers_mut() = self.headers;
        response
    }
}

/// Field and form errors, in the shape of the original's zod `flatten()` (contract §2.3).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ValidationErrors {
    pub form: Vec<String>,
    pub fields: BTreeMap<String, Vec<String>>,
}

impl ValidationErrors {
    pub fn form(message: impl Into<String>) -> Self {
        Self {
            form: vec![message.into()],
            fields: BTreeMap::new(),
        }
    }

    pub fn field(name: &str, message: impl Into<String>) -> Self {
        let mut errors = Self::default();
        errors.add(name, message);
        errors
    }

    pub fn add(&mut self, field: &str, message: impl Into<String>) {
        self.fields
            .entry(field.to_owned())
            .or_default()
            .push(message.into());
    }

    pub fn merge(&mut self, other: Self) {
        self.form.extend(other.form);
        for (field, messages) in other.fields {
            self.fields.entry(field).or_default().extend(messages);
        }
    }

    pub fn is_empty(&self) -> bool {
        self.form.is_empty() && self.fields.is_empty()
    }

    /// `Ok(())` when nothing was recorded.
    pub fn into_result(self) -> Result<(), ApiError> {
        if self.is_empty() {
            Ok(())
        } else {
            Err(ApiError::Validation(self))
        }
    }
}

/// Every error a route can answer with; [`ApiError::into_response`] is the one place that maps
/// them to status codes and stable bodies. Details go to the logs, never to the client.
#[derive(Debug, Clone, PartialEq)]
pub enum ApiError {
    Validation(ValidationErrors),
    MissingToken,
    InvalidToken,
    Forbidden,
    FlagNotFound(String),
    OverrideNotFound(String),
    AlreadyExists(String),
    ScheduleNotFound(String),
    ScheduleNotCancellable,
    PayloadTooLarge,
    RateLimited {
        retry_after_secs: u64,
    },
    RouteNotFound,
    /// An OFREP evaluation error (contract §2.8): its own body shape, `{"key"?, "errorCode",
    /// "errorDetails"}`.
    Ofrep {
        status: StatusCode,
        key: Option<String>,
        code: &'static str,
        details: String,
    },
    Internal,
}

impl ApiError {
    /// A 500 for what cannot happen: `what` goes to the log, the client sees no detail.
    pub fn internal(what: impl std::fmt::Display) -> Self {
        tracing::error!(error = %what, "internal error");
        Self::Internal
    }

    pub fn into_response(self) -> ApiResponse {
        let (status, body) = match self {
            Self::Validation(errors) => (
                StatusCode::BAD_REQUEST,
                json!({
                    "error": "Validation failed",
                    "details": { "formErrors": errors.form, "fieldErrors": errors.fields },
                }),
            ),
            Self::MissingToken => (
                StatusCode::UNAUTHORIZED,
                json!({"error": "Unauthorized", "message": "Missing Authorization header"}),
            ),
            Self::InvalidToken => (
                StatusCode::UNAUTHORIZED,
                json!({"error": "Unauthorized", "message": "Invalid or expired token"}),
            ),
            Self::Forbidden => (
                StatusCode::FORBIDDEN,
                json!({"error": "Forbidden", "message": "Admin access required"}),
            ),
            Self::FlagNotFound(key) => (
                StatusCode::NOT_FOUND,
                json!({"error": "NOT_FOUND", "message": format!("Flag '{key}' not found")}),
            ),
            Self::OverrideNotFound(key) => (
                StatusCode::NOT_FOUND,
                json!({"error": "NOT_FOUND", "message": format!("User override not found for flag '{key}'")}),
            ),
            Self::AlreadyExists(key) => (
                StatusCode::CONFLICT,
                json!({"error": "ALREADY_EXISTS", "message": format!("Flag '{key}' already exists")}),
            ),
            Self::ScheduleNotFound(key) => (
                StatusCode::NOT_FOUND,
                json!({"error": "NOT_FOUND", "message": format!("Schedule not found for flag '{key}'")}),
            ),
            Self::ScheduleNotCancellable => (
                StatusCode::BAD_REQUEST,
                json!({"error": "INVALID_STATE", "message": "Cannot cancel schedule that is already applied or failed"}),
            ),
            Self::PayloadTooLarge => (
                StatusCode::PAYLOAD_TOO_LARGE,
                json!({"error": "PAYLOAD_TOO_LARGE", "message": format!("Request body must be at most {MAX_BODY_BYTES} bytes")}),
            ),
            Self::RateLimited { retry_after_secs } => {
                let mut response = ApiResponse::json(
                    StatusCode::TOO_MANY_REQUESTS,
                    json!({"error": "RATE_LIMITED", "message": "Too many user override changes. Try again later."}),
                );
                response
                    .headers
                    .insert(header::RETRY_AFTER, HeaderValue::from(retry_after_secs));
                return response;
            }
            Self::RouteNotFound => (StatusCode::NOT_FOUND, json!({"error": "Not found"})),
            Self::Ofrep {
                status,
                key,
                code,
                details,
            } => {
                let mut body = json!({"errorCode": code, "errorDetails": details});
                if let Some(key) = key {
                    body["key"] = json!(key);
                }
                (status, body)
            }
            Self::Internal => (
                StatusCode::INTERNAL_SERVER_ERROR,
                json!({"error": "Internal server error"}),
            ),
        };
        ApiResponse::json(status, body)
    }
}

impl From<flags_core::service::ServiceError> for ApiError {
    fn from(error: flags_core::service::ServiceError) -> Self {
        use flags_core::service::ServiceError as E;
        match error {
            E::FlagNotFound(key) => Self::FlagNotFound(key),
            E::OverrideNotFound(key) => Self::OverrideNotFound(key),
            E::AlreadyExists(key) => Self::AlreadyExists(key),
            E::ScheduleNotFound(key) => Self::ScheduleNotFound(key),
            E::ScheduleNotCancellable => Self::ScheduleNotCancellable,
            E::RateLimited(limited) => Self::RateLimited {
                retry_after_secs: limited.retry_after_secs,
            },
            E::Store(store) => {
                // The detail (SQL, host) stays in the logs.
                tracing::error!(error = %store, "database error");
                Self::Internal
            }
        }
    }
}
