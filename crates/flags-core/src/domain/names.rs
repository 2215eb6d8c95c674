//! Validated names: environments, flag keys and override user ids (contract §1).

use std::fmt;

/// Why a name was refused; the message is shown to API clients as a field error.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct NameError(pub &'static str);

/// An environment name: `^[a-z0-9][a-z0-9-]{0,19}$`. It is part of every cache key, which is
/// why it is validated before anything else happens.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Environment(String);

impl Environment {
    pub const DEFAULT: &'static str = "production";

    /// Missing or empty means `production` (contract §1).
    pub fn parse_or_default(value: Option<&str>) -> Result<Self, NameError> {
        match value {
            None | Some("") => Ok(Self(Self::DEFAULT.to_owned())),
            Some(value) => Self::parse(value),
        }
    }

    pub fn parse(value: &str) -> Result<Self, NameError> {
        let bytes = value.as_bytes();
        let valid = matches!(bytes.first(), Some(b) if b.is_ascii_lowercase() || b.is_ascii_digit())
            && bytes.len() <= 20
            && bytes
                .iter()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-');
        if valid {
            Ok(Self(value.to_owned()))
        } else {
            Err(NameError(
                "Environment must be 1-20 characters of a-z, 0-9 and '-', starting with a letter or digit",
            ))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Environment {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A flag key: 1..=100 characters of `[A-Za-z0-9._-]`, starting with a letter or digit.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FlagKey(String);

impl FlagKey {
    pub const MAX_LEN: usize = 100;

    pub fn parse(value: &str) -> Result<Self, NameError> {
        let bytes = value.as_bytes();
        let valid = matches!(bytes.first(), Some(b) if b.is_ascii_alphanumeric())
            && bytes.len() <= Self::MAX_LEN
            && bytes
                .iter()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
        if valid {
            Ok(Self(value.to_owned()))
        } else {
            Err(NameError(
                "Flag key must be 1-100 characters of A-Z, a-z, 0-9, '.', '_' and '-', starting with a letter or digit",
            ))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for FlagKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Whether `text` holds a control character (U+0000–U+001F, U+007F): PostgreSQL refuses NUL in
/// text, and none of them belongs in an id, a description or a reason (contract §2.3).
pub fn has_control_chars(text: &str) -> bool {
    text.chars().any(|c| c <= '\u{1f}' || c == '\u{7f}')
}

/// The user id of an override: 1..=255 characters (Unicode scalar values), no control characters.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct UserId(String);

impl UserId {
    pub const MAX_CHARS: usize = 255;

    pub fn parse(value: &str) -> Result<Self, NameError> {
        let chars = value.chars().count();
        if chars == 0 {
            Err(NameError("User id must not be empty"))
        } else if chars > Self::MAX_CHARS {
            Err(NameError("User id must be at most 255 characters"))
        } else if has_control_chars(value) {
            Err(NameError("User id must not contain control characters"))
        } else {
            Ok(Self(value.to_owned()))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn environment_rules() {
        for ok in [
            "production",
            "dev",
            "a",
            "0",
            "qa-2",
            "abcdefghijklmnopqrst",
        ] {
            assert!(Environment::parse(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "-dev",
            "Dev",
            "dev_1",
            "dev:1",
            "feature_flags:*",
            "abcdefghijklmnopqrstu",
            "dév",
            " dev",
        ] {
            assert!(Environment::parse(bad).is_err(), "{bad:?}");
        }
        assert_eq!(
            Environment::parse_or_default(None).unwrap().as_str(),
            "production"
        );
        assert_eq!(
            Environment::parse_or_default(Some("")).unwrap().as_str(),
            "production"
        );
        assert!(Environment::parse_or_default(Some("PROD")).is_err());
    }

    #[test]
    fn flag_key_rules() {
        for ok in ["a", "wishlist-gallery", "A.b_c-1", &"k".repeat(100)] {
            assert!(FlagKey::parse(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "-a",
            ".a",
            "_a",
            "a b",
            "a/b",
            "a*",
            "ä",
            &"k".repeat(101),
        ] {
            assert!(FlagKey::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn user_id_counts_characters_not_bytes() {
        assert!(UserId::parse("").is_err());
        assert!(UserId::parse(&"é".repeat(255)).is_ok());
        assert!(UserId::parse(&"é".repeat(256)).is_err());
    }
}
