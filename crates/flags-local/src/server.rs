//! The local HTTP server: API Gateway's part played locally. It routes every contract path
//! (also under `/api`) to the very same handler functions the Lambda binaries call.

use crate::cors::{AllowedOrigins, preflight_no_content};
use axum::Router;
use axum::body::Body;
use axum::extract::State;
use flags_api::api::MAX_BODY_BYTES;
use flags_api::api::ValidationErrors;
use flags_api::handlers::handle;
use flags_api::{ApiError, ApiRequest, AppContext, Route};
use flags_core::FlagService;
use http::{Request, Response};
use percent_encoding::percent_decode_str;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;

/// The local server's background work, every `interval` until the returned handle is aborted:
/// applying the flag schedules that are due (contract §2.6), then completing the cache
/// invalidations writers could not (§3.1). In AWS a scheduled function does both once a minute.
pub fn spawn_background_work(
    service: Arc<FlagService>,
    interval: Duration,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut ticks = tokio::time::interval(interval);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticks.tick().await;
            if let Err(error) = service.apply_due_schedules().await {
                tracing::warn!(error = %error, "background schedule pass failed; retrying next tick");
            }
            if let Err(error) = service.sweep_pending_invalidations().await {
                tracing::warn!(error = %error, "background sweep failed; retrying next tick");
            }
        }
    })
}

/// Serves until `shutdown` completes, then finishes in-flight requests and returns. Browsers on
/// `cors` origins may call it.
pub async fn serve(
    listener: TcpListener,
    context: Arc<AppContext>,
    cors: AllowedOrigins,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let app = Router::new()
        .fallback(dispatch)
        .with_state(context)
        .layer(cors.layer())
        .layer(axum::middleware::from_fn(preflight_no_content));
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
}

async fn dispatch(
    State(context): State<Arc<AppContext>>,
    request: Request<Body>,
) -> Response<Body> {
    let response = match to_api_request(request).await {
        Ok((route, api_request)) => handle(&context, route, api_request).await,
        Err(error) => error.into_response(),
    };
    response.into_http()
}

/// Splits the path into decoded segments, dropping the optional `/api` prefix. A `%` that is not
/// followed by two hex digits, or an escape that does not decode to UTF-8, is a 400: decoding it
/// lossily would turn `%FF` into U+FFFD and address something the client never named.
fn path_segments(path: &str) -> Result<Vec<String>, ApiError> {
    let path = path
        .strip_prefix("/api")
        .filter(|p| p.is_empty() || p.starts_with('/'))
        .unwrap_or(path);
    path.trim_start_matches('/')
        .trim_end_matches('/')
        .split('/')
        .map(decode_segment)
        .collect()
}

fn decode_segment(segment: &str) -> Result<String, ApiError> {
    let bytes = segment.as_bytes();
    let well_formed = bytes.iter().enumerate().all(|(i, &b)| {
        b != b'%'
            || bytes
                .get(i + 1..i + 3)
                .is_some_and(|hex| hex.iter().all(u8::is_ascii_hexdigit))
    });
    let decoded = percent_decode_str(segment).decode_utf8();
    match decoded {
        Ok(text) if well_formed => Ok(text.into_owned()),
        _ => Err(ApiError::Validation(ValidationErrors::form(
            "Invalid percent-encoding in the request path",
        ))),
    }
}

async fn to_api_request(request: Request<Body>) -> Result<(Route, ApiRequest), ApiError> {
    let (parts, body) = request.into_parts();
    let segments = path_segments(parts.uri.path())?;
    let (route, path_params) =
        Route::match_path(&parts.method, &segments).ok_or(ApiError::RouteNotFound)?;
    let query = url::form_urlencoded::parse(parts.uri.query().unwrap_or("").as_bytes())
        .into_owned()
        .collect();
    // Reading one byte past the limit is enough to know the body is too large.
    let body = axum::body::to_bytes(body, MAX_BODY_BYTES + 1)
        .await
        .map_err(|_| ApiError::PayloadTooLarge)?;
    if body.len() > MAX_BODY_BYTES {
        return Err(ApiError::PayloadTooLarge);
    }
    let api_request = ApiRequest::from_parts(parts, path_params, query, body);
    Ok((route, api_request))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn api_prefix_and_encoding() {
        let segments = |path| path_segments(path).unwrap();
        assert_eq!(segments("/api/config/flags"), ["config", "flags"]);
        assert_eq!(segments("/config/flags/"), ["config", "flags"]);
        assert_eq!(segments("/apiary"), ["apiary"]);
        assert_eq!(
            segments("/admin/flags/f/users/a%20b%2Fc%C3%A9"),
            ["admin", "flags", "f", "users", "a b/cé"]
        );
    }

    #[test]
    fn bad_percent_encoding_is_an_error_not_a_replacement_character() {
        for path in [
            "/admin/flags/f/users/%FF",
            "/x/%",
            "/x/%4",
            "/x/%zz",
            "/x/%C3",
        ] {
            assert!(path_segments(path).is_err(), "{path}");
        }
    }
}
