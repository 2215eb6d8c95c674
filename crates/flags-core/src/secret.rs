//! Values that may hold passwords: [`Secret`] never prints them, [`redact_url`] masks them.

/// A string that must not reach logs or response bodies.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret([redacted])")
    }
}

/// A URL fit for logs: the password (if any) replaced by `***`.
pub fn redact_url(raw: &str) -> String {
    match url::Url::parse(raw) {
        Ok(mut url) => {
            if url.password().is_some() {
                let _ = url.set_password(Some("***"));
            }
            url.to_string()
        }
        Err(_) => "<unparseable url>".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redacts_passwords() {
        assert_eq!(
            redact_url("rediss://:s3cret@cache.example:6379/0"),
            "rediss://:***@cache.example:6379/0"
        );
        assert_eq!(
            redact_url("postgres://app:pw@db/flags"),
            "postgres://app:***@db/flags"
        );
        assert_eq!(
            redact_url("redis://127.0.0.1:6379"),
            "redis://127.0.0.1:6379"
        );
        assert!(!format!("{:?}", Secret::new("pw")).contains("pw"));
    }
}
