//! Flag evaluation (contract §1.1). Batch evaluation is single evaluation applied to every flag,
//! so the two cannot disagree.

use super::{Flag, FlagSet, OverrideType, UserOverrides};
use serde::{Serialize, Serializer};
use sha2::{Digest, Sha256};
use std::fmt;
use std::sync::Arc;

/// Who is asking: the caller's rollout bucket (none when anonymous) and overrides.
#[derive(Debug, Clone, Copy)]
pub struct EvaluationContext<'a> {
    bucket: Option<u8>,
    overrides: &'a UserOverrides,
}

impl<'a> EvaluationContext<'a> {
    /// The bucket depends on the user id alone, so it is hashed here once for every flag the
    /// context evaluates. A missing or empty id is anonymous.
    pub fn new(user_id: Option<&str>, overrides: &'a UserOverrides) -> Self {
        Self {
            bucket: user_id.filter(|id| !id.is_empty()).map(bucket),
            overrides,
        }
    }
}

/// The rollout bucket of a user: the first four bytes of SHA-256(UTF-8 id), big-endian, mod 100.
/// Bit-compatible with the original service so users keep their cohort.
pub fn bucket(user_id: &str) -> u8 {
    let digest = Sha256::digest(user_id.as_bytes());
    let head = u32::from_be_bytes([digest[0], digest[1], digest[2], digest[3]]);
    // `head % 100` is below 100, so the cast cannot truncate.
    (head % 100) as u8
}

/// Which rule of §1.1 decided an evaluation (OpenFeature's reasons, as OFREP reports them).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// The flag is off: the kill switch.
    Disabled,
    /// The caller's include or exclude override.
    TargetingMatch,
    /// 0 % or 100 %: the same answer for everyone.
    Static,
    /// The caller's rollout bucket.
    Split,
    /// An anonymous caller at a partial rollout.
    Default,
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Disabled => "DISABLED",
            Self::TargetingMatch => "TARGETING_MATCH",
            Self::Static => "STATIC",
            Self::Split => "SPLIT",
            Self::Default => "DEFAULT",
        }
    }
}

/// Evaluates one existing flag for one caller, with the rule that decided; the rules apply in
/// order, first match wins.
pub fn evaluate_with_reason(flag: &Flag, ctx: EvaluationContext<'_>) -> (bool, Reason) {
    if !flag.enabled {
        return (false, Reason::Disabled); // kill switch beats every override
    }
    match ctx.overrides.get(&flag.flag_key) {
        Some(OverrideType::Exclude) => return (false, Reason::TargetingMatch),
        Some(OverrideType::Include) => return (true, Reason::TargetingMatch),
        None => {}
    }
    if flag.rollout_percentage >= 100 {
        return (true, Reason::Static);
    }
    if flag.rollout_percentage <= 0 {
        return (false, Reason::Static);
    }
    match ctx.bucket {
        // Changed on purpose: anonymous callers are outside every partial rollout.
        None => (false, Reason::Default),
        Some(bucket) => (i32::from(bucket) < flag.rollout_percentage, Reason::Split),
    }
}

/// Evaluates one flag for one caller; a flag that does not exist is off.
pub fn evaluate(flag: Option<&Flag>, ctx: EvaluationContext<'_>) -> bool {
    flag.is_some_and(|flag| evaluate_with_reason(flag, ctx).0)
}

/// Every flag of an environment evaluated for one caller. Each value is computed where it is read
/// or serialised, so the answer never exists as a map of copied keys.
pub struct Evaluations {
    flags: Arc<FlagSet>,
    bucket: Option<u8>,
    overrides: UserOverrides,
}

impl Evaluations {
    pub fn new(flags: Arc<FlagSet>, user_id: Option<&str>, overrides: UserOverrides) -> Self {
        let bucket = EvaluationContext::new(user_id, &overrides).bucket;
        Self {
            flags,
            bucket,
            overrides,
        }
    }

    fn context(&self) -> EvaluationContext<'_> {
        EvaluationContext {
            bucket: self.bucket,
            overrides: &self.overrides,
        }
    }

    /// The value of one flag; `None` when the environment has no such flag.
    pub fn get(&self, key: &str) -> Option<bool> {
        let flag = self.flags.get(key)?;
        Some(evaluate_with_reason(flag, self.context()).0)
    }

    /// Every flag's key and value, sorted by key.
    pub fn iter(&self) -> impl Iterator<Item = (&str, bool)> {
        let context = self.context();
        self.flags
            .iter()
            .map(move |(key, flag)| (key.as_str(), evaluate_with_reason(flag, context).0))
    }

    pub fn len(&self) -> usize {
        self.flags.len()
    }

    pub fn is_empty(&self) -> bool {
        self.flags.is_empty()
    }
}

/// Like a map's index: the value of a flag that exists, a panic otherwise.
impl std::ops::Index<&str> for Evaluations {
    type Output = bool;

    fn index(&self, key: &str) -> &bool {
        match self.get(key) {
            Some(true) => &true,
            Some(false) => &false,
            None => panic!("no flag {key:?} in the evaluated environment"),
        }
    }
}

/// A JSON object `{"key": value, …}` with the keys sorted.
impl Serialize for Evaluations {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_map(self.iter())
    }
}

impl fmt::Debug for Evaluations {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map().entries(self.iter()).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::Timestamp;
    use std::collections::BTreeMap;
    use uuid::Uuid;

    /// Expectations produced independently with Python:
    /// `int.from_bytes(hashlib.sha256(s.encode()).digest()[:4], "big") % 100`.
    /// The first three are the contract's published examples.
    const BUCKET_VECTORS: &[(&str, u8)] = &[
        ("user-123", 35),
        ("user-456", 15),
        ("dev-user", 40),
        ("", 10),
        ("a", 10),
        ("alice", 1),
        ("bob", 12),
        ("admin", 57),
        ("user-0", 73),
        ("user-1", 52),
        ("user-99", 36),
        ("00000000-0000-0000-0000-000000000000", 52),
        ("550e8400-e29b-41d4-a716-446655440000", 29),
        ("José", 37),
        ("Zoë", 44),
        ("用户", 2),
        ("😀", 88),
        ("Ωmega", 34),
        ("naïve café", 44),
        ("UPPER", 61),
        ("user with spaces", 14),
        ("tab\there", 19),
        ("emoji-🚀-rocket", 86),
        ("ß", 70),
    ];

    #[test]
    fn bucket_is_bit_compatible_with_the_original() {
        for (id, expected) in BUCKET_VECTORS {
            assert_eq!(bucket(id), *expected, "bucket({id:?})");
        }
        assert_eq!(bucket(&"x".repeat(255)), 50);
    }

    fn flag(key: &str, enabled: bool, rollout: i32) -> Flag {
        let now = Timestamp::now();
        Flag {
            id: Uuid::new_v4(),
            flag_key: key.to_owned(),
            environment: "production".to_owned(),
            enabled,
            rollout_percentage: rollout,
            description: None,
            created_at: now,
            updated_at: now,
        }
    }

    fn ctx<'a>(user: Option<&'a str>, overrides: &'a UserOverrides) -> EvaluationContext<'a> {
        EvaluationContext::new(user, overrides)
    }

    #[test]
    fn rules_apply_in_order() {
        let none = UserOverrides::new();
        let include: UserOverrides = [("f".to_owned(), OverrideType::Include)].into();
        let exclude: UserOverrides = [("f".to_owned(), OverrideType::Exclude)].into();
        // 1. missing flag
        assert!(!evaluate(None, ctx(Some("user-123"), &include)));
        // 2. disabled beats include
        assert!(!evaluate(
            Some(&flag("f", false, 100)),
            ctx(Some("user-123"), &include)
        ));
        // 3. exclude beats 100 %
        assert!(!evaluate(
            Some(&flag("f", true, 100)),
            ctx(Some("user-123"), &exclude)
        ));
        // 4. include beats 0 % and anonymity rules
        assert!(evaluate(
            Some(&flag("f", true, 0)),
            ctx(Some("user-123"), &include)
        ));
        // 5. 100 % is on for everyone, anonymous included
        assert!(evaluate(Some(&flag("f", true, 100)), ctx(None, &none)));
        // 6. 0 % is off
        assert!(!evaluate(
            Some(&flag("f", true, 0)),
            ctx(Some("user-456"), &none)
        ));
        // 7. anonymous (missing or empty id) is outside a partial rollout (changed on purpose)
        assert!(!evaluate(Some(&flag("f", true, 99)), ctx(None, &none)));
        assert!(!evaluate(Some(&flag("f", true, 99)), ctx(Some(""), &none)));
        // 8. bucket < percentage: user-123 is bucket 35
        assert!(evaluate(
            Some(&flag("f", true, 36)),
            ctx(Some("user-123"), &none)
        ));
        assert!(!evaluate(
            Some(&flag("f", true, 35)),
            ctx(Some("user-123"), &none)
        ));
    }

    #[test]
    fn each_rule_reports_its_reason() {
        let none = UserOverrides::new();
        let include: UserOverrides = [("f".to_owned(), OverrideType::Include)].into();
        let exclude: UserOverrides = [("f".to_owned(), OverrideType::Exclude)].into();
        let cases = [
            (
                flag("f", false, 100),
                Some("user-123"),
                &include,
                (false, Reason::Disabled),
            ),
            (
                flag("f", true, 100),
                Some("user-123"),
                &exclude,
                (false, Reason::TargetingMatch),
            ),
            (
                flag("f", true, 0),
                Some("user-123"),
                &include,
                (true, Reason::TargetingMatch),
            ),
            (flag("f", true, 100), None, &none, (true, Reason::Static)),
            (
                flag("f", true, 0),
                Some("user-456"),
                &none,
                (false, Reason::Static),
            ),
            (flag("f", true, 50), None, &none, (false, Reason::Default)),
            (
                flag("f", true, 36),
                Some("user-123"),
                &none,
                (true, Reason::Split),
            ),
            (
                flag("f", true, 35),
                Some("user-123"),
                &none,
                (false, Reason::Split),
            ),
        ];
        for (f, user, overrides, expected) in cases {
            let c = ctx(user, overrides);
            assert_eq!(evaluate_with_reason(&f, c), expected, "{f:?} {user:?}");
            assert_eq!(evaluate(Some(&f), c), expected.0);
        }
    }

    #[test]
    fn batch_and_single_evaluation_agree() {
        let flags: FlagSet = [
            flag("off", false, 100),
            flag("all", true, 100),
            flag("none", true, 0),
            flag("half", true, 50),
            flag("inc", true, 0),
            flag("exc", true, 100),
        ]
        .into_iter()
        .map(|f| (f.flag_key.clone(), f))
        .collect();
        let overrides: UserOverrides = [
            ("inc".to_owned(), OverrideType::Include),
            ("exc".to_owned(), OverrideType::Exclude),
            ("off".to_owned(), OverrideType::Include),
        ]
        .into();
        let flags = Arc::new(flags);
        for (id, _) in BUCKET_VECTORS {
            for user in [Some(*id), None] {
                let c = ctx(user, &overrides);
                let batch = Evaluations::new(flags.clone(), user, overrides.clone());
                let single: BTreeMap<&str, bool> = flags
                    .iter()
                    .map(|(key, f)| (key.as_str(), evaluate(Some(f), c)))
                    .collect();
                assert_eq!(batch.iter().collect::<BTreeMap<_, _>>(), single, "{user:?}");
                assert_eq!(
                    serde_json::to_value(&batch).unwrap(),
                    serde_json::to_value(&single).unwrap(),
                    "{user:?}"
                );
                assert_eq!(batch.get("missing"), None);
            }
        }
        let batch = Evaluations::new(flags, Some("user-123"), overrides);
        assert!(batch["inc"] && !batch["exc"] && !batch["off"] && batch["half"]);
        assert_eq!(batch.len(), 6);
    }
}
