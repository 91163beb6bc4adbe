//! `spec.exclude.events`: a source of contacts fed by AutoSend webhooks instead of files.
//!
//! Only events whose payload names a recipient *and* say the address should not be mailed
//! can be a source: `email.bounced` (optionally only one `bounceType`) and
//! `email.spam_reported`. The rest are refused with the reason that applies to them, because
//! each misunderstanding has a different fix: unsubscribe events carry no address at all,
//! contact events are hints every policy already gets, and engagement events (opened,
//! clicked) name someone who wants the mail.
//!
//! The filters are a set: sorted, without repeats, and an `email.bounced` filter that takes
//! every bounce swallows the ones limited to a bounce type, so two spellings of the same set
//! give the same policy revision. What was merged is reported as one warning, like repeated
//! addresses.

use serde::Serialize;

use super::raw::RawEventSource;
use crate::contact::quoted;
use crate::webhook::event::{
    BounceType, EMAIL_BOUNCED, EMAIL_SPAM_REPORTED, EventKind, KNOWN_TYPES, NO_ADDRESS_TYPES,
};

/// The types a policy may take events of.
pub const SOURCE_TYPES: [&str; 2] = [EMAIL_BOUNCED, EMAIL_SPAM_REPORTED];

/// Which events a filter takes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "camelCase", tag = "type")]
pub enum EventSourceKind {
    /// `bounce_type: None` takes every bounce, whatever its type (or none).
    Bounced {
        bounce_type: Option<BounceType>,
    },
    SpamReported,
}

/// One entry of `spec.exclude.events`, validated.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct EventFilter {
    pub kind: EventSourceKind,
}

impl EventFilter {
    /// Whether `event` names a contact this filter excludes. A filter limited to one bounce
    /// type does not take a bounce whose type is unknown: a removal is not lightly undone.
    pub fn matches(&self, event: &EventKind) -> bool {
        match (self.kind, event) {
            (EventSourceKind::Bounced { bounce_type: None }, EventKind::Bounced { .. }) => true,
            (
                EventSourceKind::Bounced {
                    bounce_type: Some(want),
                },
                EventKind::Bounced { bounce_type, .. },
            ) => *bounce_type == Some(want),
            (EventSourceKind::SpamReported, EventKind::SpamReported { .. }) => true,
            _ => false,
        }
    }

    /// Whether this filter takes an event recorded as `event_type` with `bounce_type` (as
    /// the store keeps what fed a contact): the same judgement as [`EventFilter::matches`].
    pub fn takes(&self, event_type: &str, bounce_type: Option<&str>) -> bool {
        match self.kind {
            EventSourceKind::Bounced { bounce_type: None } => event_type == EMAIL_BOUNCED,
            EventSourceKind::Bounced {
                bounce_type: Some(want),
            } => {
                event_type == EMAIL_BOUNCED
                    && bounce_type.and_then(BounceType::from_name) == Some(want)
            }
            EventSourceKind::SpamReported => event_type == EMAIL_SPAM_REPORTED,
        }
    }

    /// Whether every event this filter takes, `other` takes too.
    fn covered_by(&self, other: &EventFilter) -> bool {
        self == other
            || (matches!(self.kind, EventSourceKind::Bounced { .. })
                && other.kind == EventSourceKind::Bounced { bounce_type: None })
    }

    /// What the policy revision is computed from. Kept apart from `Display` so rewording
    /// what people read cannot change every revision.
    pub(super) fn revision_key(&self) -> String {
        match self.kind {
            EventSourceKind::Bounced { bounce_type: None } => "email.bounced".into(),
            EventSourceKind::Bounced {
                bounce_type: Some(b),
            } => format!("email.bounced/{b}"),
            EventSourceKind::SpamReported => "email.spam_reported".into(),
        }
    }
}

impl std::fmt::Display for EventFilter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.kind {
            EventSourceKind::Bounced { bounce_type: None } => f.write_str(EMAIL_BOUNCED),
            EventSourceKind::Bounced {
                bounce_type: Some(b),
            } => write!(f, "{EMAIL_BOUNCED} ({b})"),
            EventSourceKind::SpamReported => f.write_str(EMAIL_SPAM_REPORTED),
        }
    }
}

/// Checks every entry, reporting each problem through `err(field, message)`. Returns the
/// valid filters as a set, and how many entries merging removed.
pub(super) fn validate(
    raw: &[RawEventSource],
    err: &mut impl FnMut(&str, String),
) -> (Vec<EventFilter>, usize) {
    let mut filters = Vec::with_capacity(raw.len());
    for (i, entry) in raw.iter().enumerate() {
        let field = format!("spec.exclude.events[{i}]");
        let kind = match entry.event_type.as_deref() {
            None => {
                err(
                    &format!("{field}.type"),
                    "missing type; add `type: email.bounced` or `type: email.spam_reported`".into(),
                );
                None
            }
            Some(t) => match type_problem(t) {
                Some(message) => {
                    err(&format!("{field}.type"), message);
                    None
                }
                None => Some(t),
            },
        };
        let bounce_type = match entry.bounce_type.as_deref() {
            None => None,
            Some(b) => match BounceType::from_name(b) {
                Some(b) => Some(b),
                None => {
                    err(&format!("{field}.bounceType"), bounce_type_problem(b));
                    None
                }
            },
        };
        let bounce_given = entry.bounce_type.is_some();
        match kind {
            Some(EMAIL_BOUNCED) if bounce_type.is_some() || !bounce_given => {
                filters.push(EventFilter {
                    kind: EventSourceKind::Bounced { bounce_type },
                });
            }
            // Its bounceType was refused above; no filter can stand in for it.
            Some(EMAIL_BOUNCED) => {}
            Some(t) => {
                if bounce_given {
                    err(
                        &format!("{field}.bounceType"),
                        format!("bounceType applies only to {EMAIL_BOUNCED}, not {t}; remove it"),
                    );
                } else {
                    filters.push(EventFilter {
                        kind: EventSourceKind::SpamReported,
                    });
                }
            }
            None => {}
        }
    }
    let before = filters.len();
    filters.sort();
    filters.dedup();
    let all = filters.clone();
    filters.retain(|f| !all.iter().any(|o| o != f && f.covered_by(o)));
    let merged = before - filters.len();
    (filters, merged)
}

/// Why `t` cannot be a source, or `None` when it can.
fn type_problem(t: &str) -> Option<String> {
    if SOURCE_TYPES.contains(&t) {
        return None;
    }
    let shown = quoted(t);
    Some(if NO_ADDRESS_TYPES.contains(&t) {
        format!(
            "{t} events carry no address (AutoSend leaves out the recipient for privacy), so \
             they cannot name a contact to exclude; use {EMAIL_BOUNCED} or {EMAIL_SPAM_REPORTED}"
        )
    } else if t.starts_with("contact.") {
        format!(
            "{t} is not a source: contact events are hints listwarden handles for every \
             policy automatically; remove this entry"
        )
    } else if KNOWN_TYPES.contains(&t) {
        format!(
            "{t} events cannot be a source: only {EMAIL_BOUNCED} and {EMAIL_SPAM_REPORTED} \
             name a contact who must not be mailed"
        )
    } else {
        match did_you_mean(t) {
            Some(meant) => format!("unknown event type {shown}; did you mean `{meant}`?"),
            None => {
                format!("unknown event type {shown}; use {EMAIL_BOUNCED} or {EMAIL_SPAM_REPORTED}")
            }
        }
    })
}

/// The source type `t` is a near miss of: a wrong case, a letter or two off, or the part
/// after `email.` alone. An edit distance rather than the Jaro-Winkler score the field names
/// use, because every type shares the `email.` prefix, which Jaro-Winkler rewards.
fn did_you_mean(t: &str) -> Option<&'static str> {
    let t = t.trim().to_ascii_lowercase();
    SOURCE_TYPES
        .into_iter()
        .map(|s| {
            let short = &s["email.".len()..];
            let distance =
                strsim::damerau_levenshtein(&t, s).min(strsim::damerau_levenshtein(&t, short));
            (distance, s)
        })
        .filter(|(distance, _)| *distance <= 2)
        .min()
        .map(|(_, s)| s)
}

fn bounce_type_problem(b: &str) -> String {
    let shown = quoted(b);
    match [BounceType::Permanent, BounceType::Transient]
        .into_iter()
        .find(|t| t.as_str().eq_ignore_ascii_case(b.trim()))
    {
        Some(t) => format!("bounceType {shown} must be written `{t}`, as AutoSend writes it"),
        None => format!(
            "unknown bounceType {shown}; use Permanent or Transient, or omit it to take every \
             bounce"
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::contact::{ContactId, Email};

    pub(super) fn bounced(bounce_type: Option<BounceType>) -> EventFilter {
        EventFilter {
            kind: EventSourceKind::Bounced { bounce_type },
        }
    }

    pub(super) const SPAM: EventFilter = EventFilter {
        kind: EventSourceKind::SpamReported,
    };

    fn email() -> Email {
        Email::parse("jane@example.com").unwrap()
    }

    fn bounce_event(bounce_type: Option<BounceType>) -> EventKind {
        EventKind::Bounced {
            email: email(),
            bounce_type,
        }
    }

    #[test]
    fn a_bounce_filter_without_a_type_matches_every_bounce_and_nothing_else() {
        let f = bounced(None);
        assert!(f.matches(&bounce_event(None)));
        assert!(f.matches(&bounce_event(Some(BounceType::Permanent))));
        assert!(f.matches(&bounce_event(Some(BounceType::Transient))));
        assert!(!f.matches(&EventKind::SpamReported { email: email() }));
    }

    #[test]
    fn a_bounce_filter_with_a_type_matches_only_bounces_of_that_type() {
        let f = bounced(Some(BounceType::Permanent));
        assert!(f.matches(&bounce_event(Some(BounceType::Permanent))));
        assert!(!f.matches(&bounce_event(Some(BounceType::Transient))));
        assert!(
            !f.matches(&bounce_event(None)),
            "an unknown type is not taken"
        );
        let f = bounced(Some(BounceType::Transient));
        assert!(f.matches(&bounce_event(Some(BounceType::Transient))));
        assert!(!f.matches(&bounce_event(Some(BounceType::Permanent))));
    }

    #[test]
    fn a_spam_filter_matches_only_spam_reports() {
        assert!(SPAM.matches(&EventKind::SpamReported { email: email() }));
        assert!(!SPAM.matches(&bounce_event(Some(BounceType::Permanent))));
    }

    #[test]
    fn no_filter_matches_contact_hints_or_events_without_an_address() {
        let others = [
            EventKind::ContactChanged {
                created: true,
                email: Some(email()),
                contact_id: ContactId::parse("c1").ok(),
            },
            EventKind::NoAddress {
                event_type: "email.unsubscribed".into(),
            },
            EventKind::Other {
                event_type: "email.opened".into(),
            },
        ];
        for f in [
            bounced(None),
            bounced(Some(BounceType::Permanent)),
            bounced(Some(BounceType::Transient)),
            SPAM,
        ] {
            for event in &others {
                assert!(!f.matches(event), "{f} {event:?}");
            }
        }
    }

    #[test]
    fn near_misses_of_a_source_type_get_a_suggestion_and_unrelated_types_do_not() {
        assert_eq!(did_you_mean("email.bounce"), Some(EMAIL_BOUNCED));
        assert_eq!(did_you_mean("Email.Bounced"), Some(EMAIL_BOUNCED));
        assert_eq!(did_you_mean("bounced"), Some(EMAIL_BOUNCED));
        assert_eq!(
            did_you_mean("email.spamreported"),
            Some(EMAIL_SPAM_REPORTED)
        );
        assert_eq!(did_you_mean("spam_report"), Some(EMAIL_SPAM_REPORTED));
        assert_eq!(did_you_mean("email.foo"), None);
        assert_eq!(did_you_mean("email.complaint"), None);
    }
}

#[cfg(test)]
mod load_tests {
    use super::tests::{SPAM, bounced};
    use super::*;
    use crate::manifest::{Manifests, Severity, load};

    fn load_spec(exclude: &str) -> Manifests {
        let dir = tempfile::tempdir().unwrap();
        let text = format!(
            "apiVersion: listwarden.dev/v1\nkind: ListPolicy\nmetadata: {{name: bounces}}\n\
             spec:\n  contactListId: list-a\n  exclude:\n{exclude}"
        );
        std::fs::write(dir.path().join("policy.yaml"), text).unwrap();
        load(dir.path())
    }

    /// Every error as `field: message`.
    fn errors(m: &Manifests) -> Vec<String> {
        m.errors()
            .map(|d| format!("{}: {}", d.field.as_deref().unwrap_or("-"), d.message))
            .collect()
    }

    fn the_error(exclude: &str) -> String {
        let m = load_spec(exclude);
        assert!(m.policies.is_empty(), "loaded: {exclude}");
        let errors = errors(&m);
        assert_eq!(errors.len(), 1, "{errors:#?}");
        errors[0].clone()
    }

    #[test]
    fn a_policy_with_only_events_loads_with_its_filters_and_no_warning() {
        let m = load_spec(
            "    events:\n      - {type: email.bounced, bounceType: Permanent}\n      \
             - type: email.spam_reported\n",
        );
        assert!(m.diagnostics.is_empty(), "{:?}", m.diagnostics);
        let p = &m.policies[0];
        assert_eq!(
            p.events,
            vec![bounced(Some(BounceType::Permanent)), SPAM],
            "sorted"
        );
        assert!(p.emails.is_empty() && p.contact_ids.is_empty());
    }

    #[test]
    fn events_are_a_source_alongside_emails() {
        let m =
            load_spec("    emails: [a@example.com]\n    events: [{type: email.spam_reported}]\n");
        assert!(!m.has_errors(), "{:?}", m.diagnostics);
        assert_eq!(m.policies[0].events, vec![SPAM]);
        assert_eq!(m.policies[0].emails.len(), 1);
    }

    #[test]
    fn repeated_and_covered_event_entries_are_merged_with_one_warning() {
        let m = load_spec(
            "    events:\n      - {type: email.spam_reported}\n      \
             - {type: email.bounced, bounceType: Transient}\n      \
             - {type: email.bounced}\n      - {type: email.spam_reported}\n",
        );
        assert!(!m.has_errors(), "{:?}", m.diagnostics);
        assert_eq!(m.policies[0].events, vec![bounced(None), SPAM]);
        let warnings: Vec<_> = m.warnings().collect();
        assert_eq!(warnings.len(), 1, "{warnings:?}");
        assert_eq!(warnings[0].severity, Severity::Warning);
        assert_eq!(warnings[0].field.as_deref(), Some("spec.exclude.events"));
        assert!(warnings[0].message.starts_with("2 event entries removed"));
    }

    #[test]
    fn the_revision_changes_when_the_event_filters_change_and_not_when_they_are_reordered() {
        let revision = |exclude: &str| load_spec(exclude).policies[0].revision.clone();
        let emails = "    emails: [a@example.com]\n";
        let none = revision(emails);
        let bounces = revision(&format!("{emails}    events: [{{type: email.bounced}}]\n"));
        let hard = revision(&format!(
            "{emails}    events: [{{type: email.bounced, bounceType: Permanent}}]\n"
        ));
        let both = revision(&format!(
            "{emails}    events: [{{type: email.bounced}}, {{type: email.spam_reported}}]\n"
        ));
        let both_reordered = revision(&format!(
            "{emails}    events: [{{type: email.spam_reported}}, {{type: email.bounced}}]\n"
        ));
        assert_ne!(none, bounces);
        assert_ne!(bounces, hard);
        assert_ne!(bounces, both);
        assert_eq!(both, both_reordered);
        let list = crate::contact::ContactListId::parse("list-a").unwrap();
        let email = crate::contact::Email::parse("a@example.com").unwrap();
        assert_eq!(
            none,
            crate::manifest::revision(&list, &[email], &[]),
            "a policy without events keeps the revision it had"
        );
    }

    #[test]
    fn an_event_entry_without_type_is_refused_at_its_type_field() {
        assert_eq!(
            the_error("    events: [{bounceType: Permanent}]\n"),
            "spec.exclude.events[0].type: missing type; add `type: email.bounced` or \
             `type: email.spam_reported`"
        );
    }

    #[test]
    fn unsubscribe_events_are_refused_because_they_carry_no_address() {
        for t in NO_ADDRESS_TYPES {
            let error = the_error(&format!(
                "    events: [{{type: email.bounced}}, {{type: {t}}}]\n"
            ));
            assert_eq!(
                error,
                format!(
                    "spec.exclude.events[1].type: {t} events carry no address (AutoSend leaves \
                     out the recipient for privacy), so they cannot name a contact to exclude; \
                     use email.bounced or email.spam_reported"
                )
            );
        }
    }

    #[test]
    fn contact_events_are_refused_as_hints_every_policy_gets() {
        for t in ["contact.created", "contact.updated", "contact.deleted"] {
            assert_eq!(
                the_error(&format!("    events: [{{type: {t}}}]\n")),
                format!(
                    "spec.exclude.events[0].type: {t} is not a source: contact events are hints \
                     listwarden handles for every policy automatically; remove this entry"
                )
            );
        }
    }

    #[test]
    fn engagement_events_are_refused_as_not_naming_a_contact_to_exclude() {
        assert_eq!(
            the_error("    events: [{type: email.opened}]\n"),
            "spec.exclude.events[0].type: email.opened events cannot be a source: only \
             email.bounced and email.spam_reported name a contact who must not be mailed"
        );
    }

    #[test]
    fn an_unknown_event_type_is_refused_with_a_suggestion_when_close() {
        assert_eq!(
            the_error("    events: [{type: email.bounce}]\n"),
            "spec.exclude.events[0].type: unknown event type \"email.bounce\"; did you mean \
             `email.bounced`?"
        );
        assert_eq!(
            the_error("    events: [{type: email.complaint}]\n"),
            "spec.exclude.events[0].type: unknown event type \"email.complaint\"; use \
             email.bounced or email.spam_reported"
        );
    }

    #[test]
    fn a_bounce_type_on_another_event_is_refused_at_its_bounce_type_field() {
        assert_eq!(
            the_error("    events: [{type: email.spam_reported, bounceType: Permanent}]\n"),
            "spec.exclude.events[0].bounceType: bounceType applies only to email.bounced, not \
             email.spam_reported; remove it"
        );
    }

    #[test]
    fn a_bounce_type_must_be_permanent_or_transient_as_autosend_writes_it() {
        assert_eq!(
            the_error("    events: [{type: email.bounced, bounceType: permanent}]\n"),
            "spec.exclude.events[0].bounceType: bounceType \"permanent\" must be written \
             `Permanent`, as AutoSend writes it"
        );
        assert_eq!(
            the_error("    events: [{type: email.bounced, bounceType: Hard}]\n"),
            "spec.exclude.events[0].bounceType: unknown bounceType \"Hard\"; use Permanent or \
             Transient, or omit it to take every bounce"
        );
    }

    #[test]
    fn every_broken_event_entry_is_reported() {
        let m = load_spec(
            "    events:\n      - {type: email.unsubscribed}\n      - {}\n      \
             - {type: email.spam_reported, bounceType: Soft}\n      - {type: email.bounced}\n",
        );
        let fields: Vec<_> = m.errors().filter_map(|d| d.field.clone()).collect();
        assert_eq!(
            fields,
            [
                "spec.exclude.events[0].type",
                "spec.exclude.events[1].type",
                "spec.exclude.events[2].bounceType",
                "spec.exclude.events[2].bounceType",
            ],
            "{:#?}",
            errors(&m)
        );
        assert!(m.policies.is_empty());
    }

    #[test]
    fn an_unknown_field_in_an_event_entry_is_refused_with_a_suggestion() {
        let m = load_spec("    events: [{type: email.bounced, bouncetype: Permanent}]\n");
        let errors = errors(&m);
        assert_eq!(errors.len(), 1, "{errors:#?}");
        assert!(
            errors[0].contains("did you mean `bounceType`?"),
            "{errors:#?}"
        );
    }
}
