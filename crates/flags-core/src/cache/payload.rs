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
    decode_snapshot_with_expiry(text, now_ms).map(|(flags, _)| flags)
}

/// [`decode_snapshot`] with the snapshot's `expiresAt` (epoch ms), if it has one.
pub fn decode_snapshot_with_expiry(text: &str, now_ms: i64) -> Option<(FlagSet, Option<i64>)> {
    let snapshot: SnapshotIn = serde_json::from_str(text).ok()?;
    if snapshot.expires_at.is_some_and(|at| at < now_ms as f64) {
        return None;
    }
    Some((snapshot.flags, snapshot.expires_at.map(|at| at as i64)))
}

/// The member of a cached overrides object that holds its overrides epoch. A flag key starts
/// with a letter or digit, so it can never collide with this name.
pub const EPOCH_MEMBER: &str = "_epoch";

#[derive(Serialize)]
struct OverridesOut<'a> {
    #[serde(flatten)]
    overrides: &'a UserOverrides,
    #[serde(rename = "_epoch", skip_serializing_if = "is_zero")]
    epoch: u64,
}

fn is_zero(value: &u64) -> bool {
    *value == 0
}

/// `{"<flagKey>":"include"|"exclude"}` plus `"_epoch"` once the environment has one; `{}` is a
/// valid, cached "no overrides". Epoch 0 writes exactly the original's format.
pub fn encode_overrides(overrides: &UserOverrides, epoch: u64) -> String {
    serde_json::to_string(&OverridesOut { overrides, epoch }).unwrap_or_default()
}

/// The overrides and the epoch they were cached under (0 when absent, as the original wrote them).
pub fn decode_overrides(text: &str) -> Option<(UserOverrides, u64)> {
    let mut object: BTreeMap<String, serde_json::Value> = serde_json::from_str(text).ok()?;
    let epoch = match object.remove(EPOCH_MEMBER) {
        None => 0,
        Some(value) => value.as_u64()?,
    };
    let overrides = object
        .into_iter()
        .map(|(key, value)| Some((key, OverrideType::parse(value.as_str()?)?)))
        .collect::<Option<UserOverrides>>()?;
    Some((overrides, epoch))
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
        assert!(decode_overrides(r#"{"a":"include","_epoch":"x"}"#).is_none());
        assert_eq!(decode_overrides("{}"), Some((UserOverrides::new(), 0)));
    }

    #[test]
    fn overrides_carry_their_epoch_and_epoch_zero_is_the_original_format() {
        let overrides: UserOverrides = [("f".to_owned(), OverrideType::Include)].into();
        assert_eq!(encode_overrides(&overrides, 0), r#"{"f":"include"}"#);
        let text = encode_overrides(&overrides, 7);
        assert_eq!(text, r#"{"f":"include","_epoch":7}"#);
        assert_eq!(decode_overrides(&text), Some((overrides, 7)));
    }
}
