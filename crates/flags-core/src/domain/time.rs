//! Timestamps with millisecond precision, serialised like JavaScript's `Date.toISOString()`.
//!
//! The original service wrote `2024-05-01T12:00:00.000Z`; truncating to milliseconds at the
//! source means what the database stores, what the cache holds and what clients see are equal.

use chrono::{DateTime, SecondsFormat, SubsecRound, Utc};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timestamp(DateTime<Utc>);

impl Timestamp {
    pub fn now() -> Self {
        Self::from_datetime(Utc::now())
    }

    pub fn from_datetime(value: DateTime<Utc>) -> Self {
        Self(value.trunc_subsecs(3))
    }

    pub fn as_datetime(&self) -> DateTime<Utc> {
        self.0
    }

    pub fn to_iso(&self) -> String {
        self.0.to_rfc3339_opts(SecondsFormat::Millis, true)
    }

    /// Accepts any RFC 3339 timestamp (with or without fraction, any offset).
    pub fn parse(value: &str) -> Option<Self> {
        DateTime::parse_from_rfc3339(value)
            .ok()
            .map(|dt| Self::from_datetime(dt.with_timezone(&Utc)))
    }
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_iso())
    }
}

impl Serialize for Timestamp {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.to_iso())
    }
}

/// In the OpenAPI document: an RFC 3339 string, as serialised above.
impl utoipa::PartialSchema for Timestamp {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        utoipa::openapi::ObjectBuilder::new()
            .schema_type(utoipa::openapi::schema::Type::String)
            .format(Some(utoipa::openapi::SchemaFormat::KnownFormat(
                utoipa::openapi::KnownFormat::DateTime,
            )))
            .examples(["2024-05-01T12:00:00.000Z"])
            .into()
    }
}

impl utoipa::ToSchema for Timestamp {}

impl<'de> Deserialize<'de> for Timestamp {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        Self::parse(&text).ok_or_else(|| serde::de::Error::custom("invalid ISO-8601 timestamp"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn iso_format_matches_javascript() {
        let ts = Timestamp::parse("2024-05-01T12:00:00.123456+02:00").unwrap();
        assert_eq!(ts.to_iso(), "2024-05-01T10:00:00.123Z");
        assert_eq!(
            Timestamp::parse("2024-05-01T10:00:00Z").unwrap().to_iso(),
            "2024-05-01T10:00:00.000Z"
        );
        assert!(Timestamp::parse("yesterday").is_none());
    }
}
