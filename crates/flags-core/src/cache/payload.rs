//! The JSON stored under the cache keys, compatible with the original service (contract §3).

use crate::domain::{Flag, FlagSet, OverrideType, UserOverrides};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct SnapshotOut<'a> {
    flags: &'a FlagSet,
    expires_at: i64,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct SnapshotIn {
    flags: BTreeMap<String, Flag>,
    #[serde(default)]
    expires_at: Option<f64>,
}

/// `{"flags":{"<key>":{..flag..}},"expiresAt":<epoch ms>}`.
pub fn encode_snapshot(flags: &FlagSet, now_ms: i64, ttl_secs: u64) -> String {
    let ttl_ms = i64::try_from(ttl_secs.saturating_mul(1000)).unwrap_or(i64::MAX);
    let payload = SnapshotOut {
        flags,
        expires_at: now_ms.saturating_add(ttl_ms),
    };
    // Serialising plain structs with string keys cannot fail.
    serde_json::to_string(&payload).unwrap_or_default()
}

/// `None` for anything that is not a valid, unexpired snapshot: garbage, `{}`, a non-object
/// `flags`, a flag entry with missing or mistyped fields, or an `expiresAt` in the past.
pub fn decode_snapshot(text: &str, now_ms: i64) -> Option<FlagSet> {
    let snapshot: SnapshotIn = serde_json::from_str(text).ok()?;
    if snapshot.expires_at.is_some_and(|at| at < now_ms as f64) {
        return None;
    }
    Some(snapshot.flags)
}

/// `{"<flagKey>":"include"|"exclude"}`; `{}` is a valid, cached "no overrides".
pub fn encode_overrides(overrides: &UserOverrides) -> String {
    serde_json::to_string(overrides).unwrap_or_default()
}

pub fn decode_overrides(text: &str) -> Option<UserOverrides> {
    serde_json::from_str::<BTreeMap<String, OverrideType>>(text).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A payload as the TypeScript service wrote it (JSON.stringify of Date → ISO strings).
    const ORIGINAL: &str = r#"{"flags":{"wishlist-gallery":{"id":"3f1e1c9a-58a4-4a43-9a3e-0d1c2b7f9a10","flagKey":"wishlist-gallery","enabled":true,"rolloutPercentage":50,"description":"Gallery view","environment":"production","createdAt":"2025-01-15T10:30:00.000Z","updatedAt":"2025-02-01T08:00:00.123Z"}},"expiresAt":1738400000000}"#;

    #[test]
    fn reads_the_original_format() {
        let flags = decode_snapshot(ORIGINAL, 1_738_300_000_000).expect("valid snapshot");
        let flag = &flags["wishlist-gallery"];
        assert_eq!(flag.rollout_percentage, 50);
        assert_eq!(flag.updated_at.to_iso(), "2025-02-01T08:00:00.123Z");
        assert_eq!(flag.description.as_deref(), Some("Gallery view"));
    }

    #[test]
    fn round_trip_is_exact() {
        let flags = decode_snapshot(ORIGINAL, 0).unwrap();
        let text = encode_snapshot(&flags, 1_000, 300);
        assert!(text.contains(r#""expiresAt":301000"#));
        assert!(text.contains(r#""createdAt":"2025-01-15T10:30:00.000Z""#));
        assert_eq!(decode_snapshot(&text, 1_000).unwrap(), flags);
    }

    #[test]
    fn garbage_is_a_miss() {
        for text in [
            "",
            "not json",
            "{}",
            "[]",
            r#"{"flags":[]}"#,
            r#"{"flags":{"a":{"flagKey":"a"}}}"#,
            "null",
        ] {
            assert!(decode_snapshot(text, 0).is_none(), "{text:?}");
        }
        assert!(
            decode_snapshot(ORIGINAL, 1_738_400_000_001).is_none(),
            "expired"
        );
        assert!(decode_overrides(r#"{"a":"maybe"}"#).is_none());
        assert_eq!(decode_overrides("{}"), Some(UserOverrides::new()));
    }
}
