//! The store as a report: per policy and per list, what the last syncs did. Shared by
//! `listwarden status` and the daemon's `/status` endpoint, so both say the same thing.

use std::fmt::Write as _;

use serde::Serialize;

use crate::condition::{Ready, Reason};
use crate::human::thousands;
use crate::store::{ListStatus, LoadSummary, PolicyStatus, Store, StoreError};

pub const STATUS_FORMAT_VERSION: u32 = 1;

/// Failing contacts quoted per list.
const FAILING_PER_LIST: usize = 20;

/// Times are epoch seconds (`*_at`, as in format version 1 from the start) and, beside each,
/// the same instant in RFC 3339 (`*_at_rfc3339`, added later: documents only gain fields).
#[derive(Clone, Debug, Serialize)]
pub struct StatusDocument {
    pub format_version: u32,
    pub state: String,
    pub generated_at: String,
    pub ready: bool,
    /// The last manifest load: a manifest with an error means some policy may not be
    /// enforced, even one no load ever saw, so `ready` is false while it lasts.
    #[serde(
        skip_serializing_if = "Option::is_none",
        serialize_with = "rfc3339::load"
    )]
    pub manifests: Option<LoadSummary>,
    #[serde(serialize_with = "rfc3339::policies")]
    pub policies: Vec<PolicyStatus>,
    #[serde(serialize_with = "rfc3339::lists")]
    pub lists: Vec<ListStatus>,
}

/// The RFC 3339 twins of the store's epoch times, added beside them when serialised, so the
/// store's row types stay as they are.
mod rfc3339 {
    use serde::{Serialize, Serializer};
    use serde_json::{Map, Value};

    use crate::store::{ListStatus, LoadSummary, PolicyStatus};

    /// Adds `KEY_rfc3339` beside each epoch `KEY` of `object` (null when never).
    fn twin(object: &mut Map<String, Value>, keys: &[&str]) {
        for key in keys {
            let t = object.get(*key).and_then(Value::as_i64).filter(|&s| s > 0);
            let text = t.map(|s| {
                humantime::format_rfc3339_seconds(
                    std::time::UNIX_EPOCH + std::time::Duration::from_secs(s as u64),
                )
                .to_string()
            });
            object.insert(format!("{key}_rfc3339"), text.into());
        }
    }

    /// `row` as JSON with the twins of `keys`, and of `inner_keys` in each object of its
    /// array `nested`.
    fn twinned<T: Serialize, E: serde::ser::Error>(
        row: T,
        keys: &[&str],
        nested: Option<(&str, &[&str])>,
    ) -> Result<Value, E> {
        let mut value = serde_json::to_value(row).map_err(E::custom)?;
        if let Some(object) = value.as_object_mut() {
            twin(object, keys);
            if let Some((field, inner_keys)) = nested
                && let Some(Value::Array(items)) = object.get_mut(field)
            {
                for item in items.iter_mut().filter_map(Value::as_object_mut) {
                    twin(item, inner_keys);
                }
            }
        }
        Ok(value)
    }

    pub fn load<S: Serializer>(l: &Option<LoadSummary>, s: S) -> Result<S::Ok, S::Error> {
        l.as_ref()
            .map(|load| twinned::<_, S::Error>(load, &["at"], None))
            .transpose()?
            .serialize(s)
    }

    pub fn policies<S: Serializer>(p: &[PolicyStatus], s: S) -> Result<S::Ok, S::Error> {
        let keys = ["last_attempt_at", "last_success_at"];
        let rows: Result<Vec<Value>, S::Error> =
            p.iter().map(|row| twinned(row, &keys, None)).collect();
        rows?.serialize(s)
    }

    pub fn lists<S: Serializer>(l: &[ListStatus], s: S) -> Result<S::Ok, S::Error> {
        let keys = ["last_attempt_at", "last_success_at", "last_observed_at"];
        let failing: &[&str] = &["failed_at"];
        let rows: Result<Vec<Value>, S::Error> = l
            .iter()
            .map(|row| twinned(row, &keys, Some(("failing", failing))))
            .collect();
        rows?.serialize(s)
    }
}

/// The status of `store`. Without `show_contacts`, contact addresses are masked everywhere
/// (`j***@example.com`): the daemon's `/status` is unauthenticated, and addresses are
/// personal data.
pub fn status_document(store: &Store, show_contacts: bool) -> Result<StatusDocument, StoreError> {
    let mut policies = store.policies()?;
    let fed = store.event_contact_counts()?;
    let held = store.held_event_contact_counts()?;
    for p in &mut policies {
        p.event_contacts = fed.get(&p.name).copied().unwrap_or(0);
        p.event_contacts_held = held.get(&p.name).copied().unwrap_or(0);
    }
    let mut lists = store.lists(FAILING_PER_LIST)?;
    let mut manifests = store.last_load()?;
    if !show_contacts {
        if let Some(m) = &mut manifests {
            m.first_error = m.first_error.as_deref().map(mask_emails);
        }
        for p in &mut policies {
            p.condition.message = mask_emails(&p.condition.message);
            p.last_error = p.last_error.as_deref().map(mask_emails);
        }
        for l in &mut lists {
            l.last_error = l.last_error.as_deref().map(mask_emails);
            for f in &mut l.failing {
                f.contact = mask_emails(&f.contact);
                f.error = mask_emails(&f.error);
            }
        }
    }
    let load_ok = manifests.as_ref().is_none_or(|m| m.errors == 0);
    Ok(StatusDocument {
        format_version: STATUS_FORMAT_VERSION,
        state: store.path().display().to_string(),
        generated_at: humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string(),
        ready: load_ok
            && !policies.is_empty()
            && policies.iter().all(|p| {
                p.condition.ready == Ready::True || p.condition.reason == Reason::Suspended
            }),
        manifests,
        policies,
        lists,
    })
}

/// Masks every email address in `text`: the first character of the local part is kept, the
/// rest of it becomes `***`, the domain stays (it says which provider, not who).
pub fn mask_emails(text: &str) -> String {
    let is_part = |c: char| c.is_alphanumeric() || "._%+-'".contains(c);
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find('@') {
        let (before, after) = rest.split_at(at);
        let local_start = before
            .char_indices()
            .rev()
            .take_while(|(_, c)| is_part(*c))
            .last()
            .map_or(before.len(), |(i, _)| i);
        let domain_len = after[1..]
            .char_indices()
            .take_while(|(_, c)| is_part(*c))
            .last()
            .map_or(0, |(i, c)| i + c.len_utf8());
        if local_start == before.len() || domain_len == 0 {
            out.push_str(before);
            out.push('@');
            rest = &after[1..];
            continue;
        }
        out.push_str(&before[..local_start]);
        let first = before[local_start..]
            .chars()
            .next()
            .expect("non-empty local part");
        out.push(first);
        out.push_str("***@");
        out.push_str(&after[1..1 + domain_len]);
        rest = &after[1 + domain_len..];
    }
    out.push_str(rest);
    out
}

pub fn time(t: Option<i64>) -> String {
    match t {
        Some(secs) if secs > 0 => humantime::format_rfc3339_seconds(
            std::time::UNIX_EPOCH + std::time::Duration::from_secs(secs as u64),
        )
        .to_string(),
        _ => "never".into(),
    }
}

/// A list as [`crate::contact::ListKey`] shows it: `account/list`, the bare id in the
/// default account.
fn shown_list(account: &str, list: &str) -> String {
    if account == crate::contact::AccountName::DEFAULT {
        list.to_string()
    } else {
        format!("{account}/{list}")
    }
}

pub fn status_text(doc: &StatusDocument) -> String {
    let mut out = String::new();
    if let Some(m) = doc.manifests.as_ref().filter(|m| m.errors > 0) {
        let _ = writeln!(
            out,
            "Manifests: {} error(s) at the last load ({}): the policies concerned are not \
             enforced; first: {}\n",
            m.errors,
            time(Some(m.at)),
            m.first_error.as_deref().unwrap_or("?")
        );
    }
    let _ = writeln!(out, "Policies ({}):", doc.policies.len());
    for p in &doc.policies {
        let ready = match p.condition.ready {
            Ready::True => "True",
            Ready::False => "False",
            Ready::Unknown => "Unknown",
        };
        let _ = writeln!(
            out,
            "  {}  Ready={} reason={}  list={}  ({} document {})",
            p.name,
            ready,
            p.condition.reason,
            shown_list(&p.account, p.contact_list_id.as_deref().unwrap_or("?")),
            p.file,
            p.document
        );
        let _ = writeln!(
            out,
            "      last sync {}, last success {}, applied revision {}",
            time(p.last_attempt_at),
            time(p.last_success_at),
            p.last_applied_revision.as_deref().unwrap_or("none")
        );
        let _ = writeln!(
            out,
            "      in that sync: removed {}, not in list {}, failed {}, pending {}",
            thousands(p.counts.removed as usize),
            thousands(p.counts.not_in_list as usize),
            thousands(p.counts.failed as usize),
            thousands(p.counts.pending as usize)
        );
        if p.event_contacts > 0 {
            let _ = writeln!(
                out,
                "      from webhook events: {} (listwarden events export --policy {})",
                crate::human::plural(p.event_contacts as usize, "contact"),
                p.name
            );
        }
        if p.event_contacts_held > 0 {
            let _ = writeln!(
                out,
                "      HELD: {} fed by webhook events beyond maxRemovalsPerSync within an hour \
                 (a bounce storm?); check them, then `listwarden approve {}`",
                crate::human::plural(p.event_contacts_held as usize, "contact"),
                p.name
            );
        }
        if p.condition.ready != Ready::True && !p.condition.message.is_empty() {
            let _ = writeln!(out, "      {}", p.condition.message);
        }
    }
    let _ = writeln!(out, "\nLists ({}):", doc.lists.len());
    for l in &doc.lists {
        let _ = writeln!(
            out,
            "  {}  confirmed absent {}, failing {}, last sync {}, last success {}",
            shown_list(&l.account, &l.contact_list_id),
            thousands(l.confirmed as usize),
            thousands(l.failed as usize),
            time(l.last_attempt_at),
            time(l.last_success_at)
        );
        if let Some(s) = &l.strategy {
            let _ = writeln!(
                out,
                "      strategy {s}: {}",
                l.strategy_reason.as_deref().unwrap_or("")
            );
        }
        if let Some(d) = l.drift {
            let _ = writeln!(
                out,
                "      drift {} (desired-absent contacts found in the list), observed {}",
                d,
                time(l.last_observed_at)
            );
        }
        if let Some(e) = &l.last_error {
            let _ = writeln!(out, "      last error: {e}");
        }
        for f in &l.failing {
            let _ = writeln!(
                out,
                "      failing {} {}: {} ({} attempt(s))",
                f.kind, f.contact, f.error, f.attempts
            );
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn email_addresses_are_masked_and_other_text_is_kept() {
        assert_eq!(
            mask_emails("refused: jane.doe@example.com is locked; bob@x.org too"),
            "refused: j***@example.com is locked; b***@x.org too"
        );
        assert_eq!(mask_emails("no address @ all, a@"), "no address @ all, a@");
        assert_eq!(
            mask_emails("60d5ec49f1b2c72d9c8b1111"),
            "60d5ec49f1b2c72d9c8b1111"
        );
    }

    #[test]
    fn json_times_gain_rfc3339_twins_and_keep_their_epoch_seconds() {
        use crate::store::{FailingContact, PolicyCounts};
        let policy = PolicyStatus {
            name: "news".into(),
            account: "default".into(),
            contact_list_id: Some("L1".into()),
            file: "m.yaml".into(),
            document: 1,
            revision: None,
            last_attempted_revision: None,
            last_applied_revision: None,
            last_attempt_at: Some(1_700_000_000),
            last_success_at: None,
            counts: PolicyCounts::default(),
            condition: crate::condition::Condition::new(Ready::True, Reason::Converged, ""),
            last_error: None,
            event_contacts: 0,
            event_contacts_held: 0,
        };
        let list = ListStatus {
            contact_list_id: "L1".into(),
            last_success_at: Some(1_700_000_060),
            failing: vec![FailingContact {
                kind: "email",
                contact: "a@example.com".into(),
                error: "refused".into(),
                attempts: 1,
                failed_at: 1_700_000_120,
            }],
            ..ListStatus::default()
        };
        let doc = StatusDocument {
            format_version: STATUS_FORMAT_VERSION,
            state: "s.db".into(),
            generated_at: "2023-11-14T22:13:20Z".into(),
            ready: true,
            manifests: Some(LoadSummary {
                at: 1_700_000_000,
                ..LoadSummary::default()
            }),
            policies: vec![policy],
            lists: vec![list],
        };
        let json = serde_json::to_value(&doc).unwrap();
        let p = &json["policies"][0];
        assert_eq!(p["last_attempt_at"], 1_700_000_000);
        assert_eq!(p["last_attempt_at_rfc3339"], "2023-11-14T22:13:20Z");
        assert_eq!(p["last_success_at"], serde_json::Value::Null);
        assert_eq!(p["last_success_at_rfc3339"], serde_json::Value::Null);
        assert_eq!(p["name"], "news");
        let l = &json["lists"][0];
        assert_eq!(l["last_success_at"], 1_700_000_060);
        assert_eq!(l["last_success_at_rfc3339"], "2023-11-14T22:14:20Z");
        assert_eq!(l["failing"][0]["failed_at"], 1_700_000_120);
        assert_eq!(l["failing"][0]["failed_at_rfc3339"], "2023-11-14T22:15:20Z");
        assert_eq!(json["manifests"]["at"], 1_700_000_000);
        assert_eq!(json["manifests"]["at_rfc3339"], "2023-11-14T22:13:20Z");
    }
}
