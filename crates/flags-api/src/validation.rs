//! Request validation with the original's error wording (zod's messages), collecting every
//! problem of a request into one 400 instead of stopping at the first.

use crate::api::{ApiError, ApiRequest, ValidationErrors};
use flags_core::domain::{Environment, FlagKey, NameError, Timestamp, UserId, has_control_chars};
use flags_core::service::PageRequest;

pub const DEFAULT_PAGE_SIZE: u32 = 50;
pub const MAX_PAGE_SIZE: u32 = 500;
use serde_json::{Map, Value};

fn type_name(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

/// The body as a JSON object; an empty body is `{}`. `handle` has already refused oversized ones.
pub fn json_object(request: &ApiRequest) -> Result<Map<String, Value>, ApiError> {
    if request.body.iter().all(u8::is_ascii_whitespace) {
        return Ok(Map::new());
    }
    match serde_json::from_slice::<Value>(&request.body) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(other) => Err(ApiError::Validation(ValidationErrors::form(format!(
            "Expected object, received {}",
            type_name(&other)
        )))),
        Err(_) => Err(ApiError::Validation(ValidationErrors::form(
            "Malformed JSON in request body",
        ))),
    }
}

/// Reads typed fields out of a JSON object, recording an error for each bad one.
#[derive(Debug)]
pub struct Fields {
    map: Map<String, Value>,
    pub errors: ValidationErrors,
}

impl Fields {
    /// Rejects keys outside `allowed` (a typo such as `"rollout"` must not silently do nothing).
    pub fn new(map: Map<String, Value>, allowed: &[&str]) -> Self {
        let mut errors = ValidationErrors::default();
        let unknown: Vec<String> = map
            .keys()
            .filter(|k| !allowed.contains(&k.as_str()))
            .map(|k| format!("'{k}'"))
            .collect();
        if !unknown.is_empty() {
            errors.form.push(format!(
                "Unrecognized key(s) in object: {}",
                unknown.join(", ")
            ));
        }
        Self { map, errors }
    }

    fn wrong_type(&mut self, name: &str, expected: &str, value: &Value) {
        self.errors.add(
            name,
            format!("Expected {expected}, received {}", type_name(value)),
        );
    }

    fn required(&mut self, name: &str) {
        self.errors.add(name, "Required");
    }

    pub fn bool(&mut self, name: &str) -> Option<bool> {
        match self.map.get(name)? {
            Value::Bool(b) => Some(*b),
            other => {
                let other = other.clone();
                self.wrong_type(name, "boolean", &other);
                None
            }
        }
    }

    /// An integer in `min..=max`.
    pub fn integer(&mut self, name: &str, min: i64, max: i64) -> Option<i64> {
        let value = self.map.get(name)?.clone();
        let Value::Number(number) = &value else {
            self.wrong_type(name, "number", &value);
            return None;
        };
        let Some(int) = number.as_i64().or_else(|| {
            number
                .as_f64()
                .filter(|f| f.fract() == 0.0 && f.abs() < 1e15)
                .map(|f| f as i64)
        }) else {
            self.errors.add(name, "Expected integer, received float");
            return None;
        };
        if int < min {
            self.errors.add(
                name,
                format!("Number must be greater than or equal to {min}"),
            );
            None
        } else if int > max {
            self.errors
                .add(name, format!("Number must be less than or equal to {max}"));
            None
        } else {
            Some(int)
        }
    }

    /// A string of `min..=max` characters; `None` when absent (recorded as "Required" if `required`).
    pub fn string(&mut self, name: &str, min: usize, max: usize, required: bool) -> Option<String> {
        let Some(value) = self.map.get(name).cloned() else {
            if required {
                self.required(name);
            }
            return None;
        };
        let Value::String(text) = &value else {
            self.wrong_type(name, "string", &value);
            return None;
        };
        self.check_length(name, text, min, max)
            .then(|| text.clone())
    }

    /// A string or `null`: `None` absent, `Some(None)` null, `Some(Some(s))` a string.
    pub fn nullable_string(&mut self, name: &str, max: usize) -> Option<Option<String>> {
        match self.map.get(name).cloned()? {
            Value::Null => Some(None),
            Value::String(text) => self.check_length(name, &text, 0, max).then_some(Some(text)),
            other => {
                self.wrong_type(name, "string", &other);
                None
            }
        }
    }

    /// Length in characters, and no control characters.
    fn check_length(&mut self, name: &str, text: &str, min: usize, max: usize) -> bool {
        let chars = text.chars().count();
        if has_control_chars(text) {
            self.errors
                .add(name, "String must not contain control characters");
            false
        } else if chars < min {
            self.errors.add(
                name,
                format!("String must contain at least {min} character(s)"),
            );
            false
        } else if chars > max {
            self.errors.add(
                name,
                format!("String must contain at most {max} character(s)"),
            );
            false
        } else {
            true
        }
    }

    /// A JSON object; absent → "Required" when `required`.
    pub fn object(&mut self, name: &str, required: bool) -> Option<Map<String, Value>> {
        let Some(value) = self.map.get(name).cloned() else {
            if required {
                self.required(name);
            }
            return None;
        };
        match value {
            Value::Object(map) => Some(map),
            other => {
                self.wrong_type(name, "object", &other);
                None
            }
        }
    }

    /// One of `options`; absent → "Required" when `required`.
    pub fn one_of(&mut self, name: &str, options: &[&str], required: bool) -> Option<String> {
        let value = self.string(name, 0, usize::MAX, required)?;
        if options.contains(&value.as_str()) {
            Some(value)
        } else {
            let expected = options
                .iter()
                .map(|o| format!("'{o}'"))
                .collect::<Vec<_>>()
                .join(" | ");
            self.errors.add(
                name,
                format!("Invalid enum value. Expected {expected}, received '{value}'"),
            );
            None
        }
    }
}

/// An ISO 8601 UTC timestamp as JavaScript writes it: `YYYY-MM-DDTHH:MM:SS[.fff…]Z`.
pub fn utc_timestamp(raw: &str) -> Option<Timestamp> {
    let shaped = raw.len() >= 20 && raw.as_bytes()[10] == b'T' && raw.ends_with('Z');
    shaped.then(|| Timestamp::parse(raw)).flatten()
}

/// The `environment` query parameter (missing or empty → `production`).
pub fn environment(request: &ApiRequest, errors: &mut ValidationErrors) -> Option<Environment> {
    Environment::parse_or_default(request.query_param("environment"))
        .map_err(|e| errors.add("environment", e.0))
        .ok()
}

/// The environment and the path's flag key that every flag route starts with.
pub fn flag_target(
    request: &ApiRequest,
    errors: &mut ValidationErrors,
) -> Option<(Environment, FlagKey)> {
    let env = environment(request, errors);
    let key = flag_key_param(request, errors);
    env.zip(key)
}

/// The end of a handler's validation: every recorded problem as one 400, else the value. A value
/// missing although no problem was recorded is a bug in the handler: logged, and a 500.
pub fn validated<T>(errors: ValidationErrors, value: Option<T>) -> Result<T, ApiError> {
    errors.into_result()?;
    value.ok_or_else(|| ApiError::internal("validation recorded no problem but left a value out"))
}

pub fn flag_key_param(request: &ApiRequest, errors: &mut ValidationErrors) -> Option<FlagKey> {
    FlagKey::parse(request.path_param("flagKey").unwrap_or(""))
        .map_err(|e| errors.add("flagKey", e.0))
        .ok()
}

pub fn user_id_param(request: &ApiRequest, errors: &mut ValidationErrors) -> Option<UserId> {
    UserId::parse(request.path_param("userId").unwrap_or(""))
        .map_err(|e| errors.add("userId", e.0))
        .ok()
}

/// An optional query parameter checked by `parse`; absent or empty is `None`.
pub fn optional_query<T>(
    request: &ApiRequest,
    name: &str,
    parse: impl Fn(&str) -> Result<T, NameError>,
    errors: &mut ValidationErrors,
) -> Option<T> {
    let raw = request.query_param(name).filter(|v| !v.is_empty())?;
    parse(raw).map_err(|e| errors.add(name, e.0)).ok()
}

/// `page` (default 1) and `pageSize` (default 50, capped at 500): positive integers.
pub fn page_request(request: &ApiRequest, errors: &mut ValidationErrors) -> Option<PageRequest> {
    let page = positive_query_int(request, "page", 1, errors);
    let page_size = positive_query_int(request, "pageSize", DEFAULT_PAGE_SIZE, errors)
        .map(|s| s.min(MAX_PAGE_SIZE));
    page.zip(page_size)
        .map(|(page, page_size)| PageRequest { page, page_size })
}

/// A positive integer query parameter, `default` when absent.
pub fn positive_query_int(
    request: &ApiRequest,
    name: &str,
    default: u32,
    errors: &mut ValidationErrors,
) -> Option<u32> {
    match request.query_param(name) {
        None | Some("") => Some(default),
        Some(raw) => match raw.parse::<u64>() {
            Ok(value) if value >= 1 => Some(u32::try_from(value).unwrap_or(u32::MAX)),
            _ => {
                errors.add(name, format!("{name} must be a positive integer"));
                None
            }
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn fields(value: Value, allowed: &[&str]) -> Fields {
        let Value::Object(map) = value else {
            panic!("object")
        };
        Fields::new(map, allowed)
    }

    #[test]
    fn unknown_keys_are_form_errors() {
        let f = fields(
            json!({"rollout": 50, "enabled": true}),
            &["enabled", "rolloutPercentage"],
        );
        assert_eq!(f.errors.form, ["Unrecognized key(s) in object: 'rollout'"]);
    }

    #[test]
    fn typed_fields_report_zod_messages() {
        let mut f = fields(
            json!({"enabled": "yes", "rolloutPercentage": 101, "description": 5, "n": 1.5, "t": "maybe"}),
            &["enabled", "rolloutPercentage", "description", "n", "t"],
        );
        assert_eq!(f.bool("enabled"), None);
        assert_eq!(f.integer("rolloutPercentage", 0, 100), None);
        assert_eq!(f.nullable_string("description", 500), None);
        assert_eq!(f.integer("n", 0, 100), None);
        assert_eq!(f.one_of("t", &["include", "exclude"], true), None);
        assert_eq!(f.string("flagKey", 1, 100, true), None);
        let e = &f.errors.fields;
        assert_eq!(e["enabled"], ["Expected boolean, received string"]);
        assert_eq!(
            e["rolloutPercentage"],
            ["Number must be less than or equal to 100"]
        );
        assert_eq!(e["description"], ["Expected string, received number"]);
        assert_eq!(e["n"], ["Expected integer, received float"]);
        assert_eq!(
            e["t"],
            ["Invalid enum value. Expected 'include' | 'exclude', received 'maybe'"]
        );
        assert_eq!(e["flagKey"], ["Required"]);
    }

    #[test]
    fn utc_timestamps_need_the_javascript_shape() {
        assert!(utc_timestamp("2030-01-01T09:00:00.000Z").is_some());
        assert!(utc_timestamp("2030-01-01T09:00:00Z").is_some());
        for bad in [
            "2030-01-01T09:00:00+00:00",
            "2030-01-01 09:00:00Z",
            "2030-01-01",
            "2030-13-01T09:00:00Z",
            "tomorrow",
            "",
        ] {
            assert!(utc_timestamp(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn control_characters_are_rejected_in_every_string() {
        let mut f = fields(
            json!({"a": "x\u{0}y", "b": "bell\u{7}", "c": "del\u{7f}", "d": "tab\tok?", "e": "fine é"}),
            &["a", "b", "c", "d", "e"],
        );
        assert_eq!(f.string("a", 1, 10, true), None);
        assert_eq!(f.nullable_string("b", 10), None);
        assert_eq!(f.nullable_string("c", 10), None);
        assert_eq!(f.string("d", 1, 10, true), None);
        assert_eq!(f.string("e", 1, 10, true).as_deref(), Some("fine é"));
        for field in ["a", "b", "c", "d"] {
            assert_eq!(
                f.errors.fields[field],
                ["String must not contain control characters"]
            );
        }
    }

    #[test]
    fn integral_floats_are_integers() {
        let mut f = fields(json!({"r": 50.0}), &["r"]);
        assert_eq!(f.integer("r", 0, 100), Some(50));
    }
}
