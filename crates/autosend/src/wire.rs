//! The API's request and answer types, read leniently where the documentation leaves room
//! and strictly where a wrong guess would confirm a contact.

use serde::Deserialize;
use serde_json::{Map, Value};

use crate::sanitise::sanitise;

/// The server is JavaScript: above `Number.MAX_SAFE_INTEGER` a number is no longer exact, so
/// it cannot be a count. Keeping counts below it also keeps their sums far from overflowing.
pub(crate) const MAX_COUNT: u64 = (1 << 53) - 1;

/// One batch for the remove endpoint: emails or contact ids, never both.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RemoveBatch {
    Emails(Vec<String>),
    ContactIds(Vec<String>),
}

impl RemoveBatch {
    pub fn len(&self) -> usize {
        match self {
            RemoveBatch::Emails(v) | RemoveBatch::ContactIds(v) => v.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn entries(&self) -> &[String] {
        match self {
            RemoveBatch::Emails(v) | RemoveBatch::ContactIds(v) => v,
        }
    }

    pub(crate) fn body(&self) -> Value {
        match self {
            RemoveBatch::Emails(v) => serde_json::json!({ "emails": v }),
            RemoveBatch::ContactIds(v) => serde_json::json!({ "contactIds": v }),
        }
    }
}

/// A contact the server named in `errors`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ContactError {
    pub contact: String,
    pub message: String,
}

/// The `data` of a successful remove. The counts are the server's, as sent (whole numbers up
/// to 2^53 - 1): nothing here checks them against the batch; that is the caller's job.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RemoveOutcome {
    pub removed: u64,
    pub not_in_list: u64,
    pub errors: Vec<ContactError>,
}

impl RemoveOutcome {
    /// How many contacts the answer accounts for: `removed + notInList + errors`, saturating,
    /// so that a server's oversized counts cannot overflow. Compare it with the batch's size:
    /// fewer means contacts went unmentioned, more means the counts cannot all be about it.
    pub fn accounted(&self) -> u64 {
        self.removed
            .saturating_add(self.not_in_list)
            .saturating_add(self.errors.len() as u64)
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ListInfo {
    #[serde(default, alias = "_id", deserialize_with = "lenient_string")]
    pub id: String,
    #[serde(default, deserialize_with = "lenient_string")]
    pub name: String,
    #[serde(rename = "type", default = "default_list_type")]
    pub kind: String,
    /// `None` when the answer does not say (missing or null): an unknown size is never taken
    /// for an empty list.
    #[serde(default, deserialize_with = "optional_count")]
    pub contact_count: Option<u64>,
}

/// A count that may be missing or null: `None` then.
fn optional_count<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    let v = Value::deserialize(d)?;
    count_of(&v).map_err(serde::de::Error::custom)
}

/// A count that must be there: null is an error, never 0 (a search page whose `total` is
/// null says nothing about the list, and an empty list would confirm everything absent).
fn required_count<'de, D: serde::Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    let v = Value::deserialize(d)?;
    count_of(&v)
        .map_err(serde::de::Error::custom)?
        .ok_or_else(|| serde::de::Error::custom("null is not a count"))
}

/// A count sent as a number or as a numeric string (`"6"`): reading it strictly would fail a
/// list over a formatting detail the documentation does not pin down. Null is 0.
fn lenient_u64<'de, D: serde::Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    let v = Value::deserialize(d)?;
    count_of(&v)
        .map(Option::unwrap_or_default)
        .map_err(serde::de::Error::custom)
}

/// Reads a count: a whole number from 0 to [`MAX_COUNT`], as a JSON number (`6`, `6.0`) or
/// a string of digits (`"6"`). Negative, fractional, non-finite, exponent-sized or
/// non-numeric values are errors, never a guess. `None` for null.
fn count_of(v: &Value) -> Result<Option<u64>, String> {
    let n = match v {
        Value::Null => return Ok(None),
        Value::Number(n) => n.as_u64().or_else(|| {
            n.as_f64()
                .filter(|f| f.is_finite() && *f >= 0.0 && f.fract() == 0.0)
                .filter(|f| *f <= MAX_COUNT as f64)
                .map(|f| f as u64)
        }),
        Value::String(s) => {
            let t = s.trim();
            if !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit()) {
                t.parse::<u64>().ok()
            } else {
                None
            }
        }
        _ => None,
    };
    match n {
        Some(n) if n <= MAX_COUNT => Ok(Some(n)),
        // The value is described, not quoted: a string may hold anything, the key included.
        _ => Err(format!(
            "is {}, not a count (a whole number from 0 to {MAX_COUNT})",
            match v {
                Value::Number(n) => n.to_string(),
                Value::String(_) => "a string that is no whole number".to_string(),
                Value::Bool(b) => b.to_string(),
                Value::Array(_) => "a list".to_string(),
                _ => "an object".to_string(),
            }
        )),
    }
}

/// A number the server sent to say how long to wait: a JSON number or a numeric string.
/// Only finite values: `"NaN"` and `"inf"` parse as floats, and must not reach a `Duration`.
pub(crate) fn number_of(v: &Value) -> Option<f64> {
    v.as_f64()
        .or_else(|| v.as_str().and_then(|s| s.trim().parse().ok()))
        .filter(|f: &f64| f.is_finite())
}

/// An id or a text sent as a string or a number; null is empty.
fn lenient_string<'de, D: serde::Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    match Value::deserialize(d)? {
        Value::Null => Ok(String::new()),
        Value::String(s) => Ok(s),
        Value::Number(n) => Ok(n.to_string()),
        other => Err(serde::de::Error::custom(format!("{other} is not a string"))),
    }
}

fn default_list_type() -> String {
    "list".into()
}

impl ListInfo {
    pub fn is_segment(&self) -> bool {
        self.kind.eq_ignore_ascii_case("segment")
    }
}

/// A member of a list, as the search endpoint names it. The id is also read from `_id` or
/// `contactId`; a member without one makes the read incomplete for ids (see `observe`).
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
pub struct Member {
    #[serde(
        default,
        alias = "_id",
        alias = "contactId",
        deserialize_with = "lenient_string"
    )]
    pub id: String,
    #[serde(default, deserialize_with = "lenient_string")]
    pub email: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
pub struct Pagination {
    #[serde(default, deserialize_with = "lenient_u64")]
    pub page: u64,
    #[serde(default, deserialize_with = "lenient_u64")]
    pub limit: u64,
    #[serde(deserialize_with = "required_count")]
    pub total: u64,
    #[serde(default, deserialize_with = "lenient_u64")]
    pub pages: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
pub struct MemberPage {
    pub contacts: Vec<Member>,
    pub pagination: Pagination,
}

/// Parses the remove `data`; the error says why it is not an answer (already sanitised).
///
/// The counts must be there: `removed` and/or `notInList` (a missing one is 0), each a
/// whole number; `{}` says nothing about the batch, so it confirms nothing. Error items are
/// read leniently (the contact by `email`, `contactId` or `id`; the text by `error`,
/// `message` or `reason`); an item that names no contact makes the whole response unusable,
/// so the batch is retried rather than guessed.
pub(crate) fn parse_remove(data: &Map<String, Value>, key: &str) -> Result<RemoveOutcome, String> {
    let count = |field: &str| -> Result<Option<u64>, String> {
        match data.get(field) {
            None => Ok(None),
            Some(v) => count_of(v).map_err(|e| format!("`{field}` {e}")),
        }
    };
    let (removed, not_in_list) = (count("removed")?, count("notInList")?);
    if removed.is_none() && not_in_list.is_none() {
        return Err("its `data` holds neither `removed` nor `notInList`".to_string());
    }
    let items: &[Value] = match data.get("errors") {
        None | Some(Value::Null) => &[],
        Some(Value::Array(items)) => items,
        Some(Value::Object(o)) if o.is_empty() => &[],
        // Anything else may well name failed contacts in a shape we cannot read: confirming
        // the batch would be a guess, so it stays pending and is asserted again.
        Some(other) => {
            return Err(format!(
                "`errors` is not a list: {}",
                sanitise(&other.to_string(), key)
            ));
        }
    };
    let mut errors = Vec::with_capacity(items.len());
    for item in items {
        let text_of = |keys: &[&str]| {
            keys.iter()
                .find_map(|k| item.get(*k).and_then(Value::as_str))
                .map(|t| sanitise(t, key))
        };
        let contact = match item {
            Value::String(s) => Some(sanitise(s, key)),
            _ => text_of(&["email", "contactId", "id"]),
        };
        let Some(contact) = contact else {
            return Err(format!(
                "an item of `errors` names no contact: {}",
                sanitise(&item.to_string(), key)
            ));
        };
        let message = text_of(&["error", "message", "reason"])
            .filter(|m| !m.is_empty())
            .unwrap_or_else(|| "failed".to_string());
        errors.push(ContactError { contact, message });
    }
    Ok(RemoveOutcome {
        removed: removed.unwrap_or(0),
        not_in_list: not_in_list.unwrap_or(0),
        errors,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(v: Value) -> Map<String, Value> {
        match v {
            Value::Object(m) => m,
            other => panic!("not an object: {other}"),
        }
    }

    #[test]
    fn remove_errors_are_parsed_leniently() {
        let d = data(serde_json::json!({
            "removed": 1, "notInList": 2,
            "errors": [
                {"email": "a@x.com", "error": "locked"},
                {"contactId": "c1", "message": "nope"},
                {"id": "c2", "reason": "why"},
                "b@x.com"
            ]
        }));
        let out = parse_remove(&d, "k").unwrap();
        assert_eq!(out.removed, 1);
        assert_eq!(out.not_in_list, 2);
        let names: Vec<&str> = out.errors.iter().map(|e| e.contact.as_str()).collect();
        assert_eq!(names, ["a@x.com", "c1", "c2", "b@x.com"]);
        assert_eq!(out.errors[1].message, "nope");
        assert_eq!(out.accounted(), 7);
    }

    #[test]
    fn an_error_item_naming_no_contact_fails_the_batch() {
        let d = data(serde_json::json!({"removed": 0, "notInList": 0, "errors": [{"error": "?"}]}));
        assert!(parse_remove(&d, "k").is_err());
    }

    #[test]
    fn remove_counts_are_whole_numbers_and_at_least_one_is_there() {
        let counts = |v: Value| parse_remove(&data(v), "k").map(|o| (o.removed, o.not_in_list));
        use serde_json::json;
        assert_eq!(
            counts(json!({"removed": "6", "notInList": 2.0})),
            Ok((6, 2))
        );
        assert_eq!(counts(json!({"notInList": 3})), Ok((0, 3)));
        assert_eq!(counts(json!({"removed": 4, "notInList": null})), Ok((4, 0)));
        for bad in [
            json!({}),
            json!({"errors": []}),
            json!({"removed": null, "notInList": null}),
            json!({"removed": -1}),
            json!({"removed": 1.5}),
            json!({"removed": "NaN"}),
            json!({"removed": "-2"}),
            json!({"removed": "1e3"}),
            json!({"removed": "six"}),
            json!({"removed": true}),
            json!({"removed": [1]}),
            json!({"removed": 1e300}),
            json!({"notInList": u64::MAX}),
        ] {
            assert!(counts(bad.clone()).is_err(), "{bad} was taken as an answer");
        }
    }

    #[test]
    fn accounted_saturates_instead_of_overflowing() {
        let o = RemoveOutcome {
            removed: u64::MAX,
            not_in_list: 5,
            errors: vec![ContactError {
                contact: "a".into(),
                message: "m".into(),
            }],
        };
        assert_eq!(o.accounted(), u64::MAX);
    }
}
