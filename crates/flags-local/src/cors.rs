//! CORS for the local server, so that a browser page (the web OpenFeature provider, an admin UI)
//! on another origin can call it. Deployed, the HTTP API answers CORS itself, from the template's
//! `CorsAllowedOrigins` parameter.

use axum::extract::Request;
use axum::middleware::Next;
use axum::response::Response;
use flags_core::config::ConfigError;
use http::{HeaderName, HeaderValue, Method, StatusCode, header};
use std::time::Duration;
use tower_http::cors::{AllowOrigin, CorsLayer};

/// `CORS_ALLOWED_ORIGINS` when unset: pages served from this machine, on any port.
pub const DEFAULT_ALLOWED_ORIGINS: &str = "http://localhost:*,http://127.0.0.1:*";

/// The origins a browser may call from: exact origins, or patterns where `*` stands for a run
/// of host-name or port characters (`https://*.ts.net`, `http://localhost:*`); a lone `*` is
/// every origin.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AllowedOrigins(Vec<String>);

impl AllowedOrigins {
    /// A comma-separated list; each entry is `scheme://host[:port]` (no path), or `*`.
    pub fn parse(list: &str) -> Result<Self, ConfigError> {
        let patterns: Vec<String> = list
            .split(',')
            .map(str::trim)
            .filter(|p| !p.is_empty())
            .map(str::to_owned)
            .collect();
        let well_formed = |pattern: &String| {
            pattern == "*"
                || pattern.split_once("://").is_some_and(|(scheme, rest)| {
                    !scheme.is_empty() && !rest.is_empty() && !rest.contains('/')
                })
        };
        match patterns.iter().find(|p| !well_formed(p)) {
            Some(_) => Err(ConfigError::new(
                "CORS_ALLOWED_ORIGINS",
                "must be comma-separated origins like https://app.example.com or http://localhost:*",
            )),
            None => Ok(Self(patterns)),
        }
    }

    pub fn allows(&self, origin: &str) -> bool {
        self.0
            .iter()
            .any(|pattern| pattern == "*" || matches(pattern.as_bytes(), origin.as_bytes()))
    }

    /// The layer answering preflights and adding the CORS headers to every answer for an
    /// allowed origin. Credentials are allowed (the original did), so the allowed origin is
    /// echoed, never `*`.
    pub fn layer(self) -> CorsLayer {
        CorsLayer::new()
            .allow_origin(AllowOrigin::predicate(move |origin: &HeaderValue, _| {
                origin.to_str().is_ok_and(|origin| self.allows(origin))
            }))
            .allow_credentials(true)
            .allow_methods([Method::GET, Method::POST, Method::DELETE])
            .allow_headers([
                header::AUTHORIZATION,
                header::CONTENT_TYPE,
                header::IF_NONE_MATCH,
                HeaderName::from_static("x-environment"),
            ])
            .expose_headers([header::ETAG, header::RETRY_AFTER])
            .max_age(Duration::from_secs(600))
    }
}

/// `*` matches one or more of `A-Z a-z 0-9 . -` in a host and one or more digits in a port
/// (after `:`); never `/`, `:` or `@`, so a pattern cannot reach past its host or port.
fn matches(pattern: &[u8], text: &[u8]) -> bool {
    fn from(pattern: &[u8], text: &[u8], previous: u8) -> bool {
        match pattern.split_first() {
            None => text.is_empty(),
            Some((b'*', rest)) => {
                let allowed = |b: &u8| match previous {
                    b':' => b.is_ascii_digit(),
                    _ => b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-'),
                };
                let run = text.iter().take_while(|b| allowed(b)).count();
                (1..=run).any(|taken| from(rest, &text[taken..], b'*'))
            }
            Some((&first, rest)) => text.split_first().is_some_and(|(head, tail)| {
                head.eq_ignore_ascii_case(&first) && from(rest, tail, first)
            }),
        }
    }
    from(pattern, text, 0)
}

/// A preflight is answered 204 No Content, as API Gateway answers it (tower-http's layer says
/// 200); a refused origin gets the same status without the CORS headers, so the browser refuses.
pub async fn preflight_no_content(request: Request, next: Next) -> Response {
    let preflight = request.method() == Method::OPTIONS
        && request
            .headers()
            .contains_key(header::ACCESS_CONTROL_REQUEST_METHOD);
    let mut response = next.run(request).await;
    if preflight && response.status() == StatusCode::OK {
        *response.status_mut() = StatusCode::NO_CONTENT;
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_match_hosts_and_ports_only() {
        let origins = AllowedOrigins::parse(DEFAULT_ALLOWED_ORIGINS).unwrap();
        assert!(origins.allows("http://localhost:3000"));
        assert!(origins.allows("http://127.0.0.1:5173"));
        assert!(!origins.allows("http://localhost"));
        assert!(!origins.allows("https://localhost:3000"));
        assert!(!origins.allows("http://localhost:3000.evil.com"));
        assert!(!origins.allows("http://localhost.evil.com:80"));

        let tailnet = AllowedOrigins::parse("https://*.ts.net, https://app.example.com").unwrap();
        assert!(tailnet.allows("https://box.tail1234.ts.net"));
        assert!(tailnet.allows("https://APP.example.com"));
        assert!(!tailnet.allows("https://ts.net"));
        assert!(!tailnet.allows("https://evil.com/.ts.net"));
        assert!(!tailnet.allows("https://a.ts.net.evil.com"));
        assert!(!tailnet.allows("https://user@a.ts.net"));

        assert!(
            AllowedOrigins::parse("*")
                .unwrap()
                .allows("https://anything.example")
        );
        assert!(
            !AllowedOrigins::parse("")
                .unwrap()
                .allows("http://localhost:3000")
        );
    }

    #[test]
    fn malformed_lists_are_refused() {
        for bad in ["localhost:3000", "https://a.example.com/path", "://x"] {
            let error = AllowedOrigins::parse(bad).unwrap_err();
            assert_eq!(error.variable, "CORS_ALLOWED_ORIGINS", "{bad}");
        }
    }
}
