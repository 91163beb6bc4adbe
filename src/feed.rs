//! Webhook events into the desired state: the one place where what AutoSend told us joins
//! what the manifests say.
//!
//! Two things, both pure over their inputs (the store reads and writes are the caller's):
//!
//! - [`join_event_contacts`]: each policy that declares `spec.exclude.events` gets the
//!   contacts events fed it (the store's `event_contacts`, minus forgotten ones) added to its
//!   desired-absent set, and a revision that changes when they do, so the daemon reconciles
//!   its list and `plan` counts them (as new contacts: they count toward
//!   `maxRemovalsPerSync` like any other). A policy without `events` gets nothing, whatever
//!   was recorded for it: invariant 1 holds through a source the manifests declare.
//! - [`decide`]: what an inbox event does. A bounce or a spam report feeds every policy whose
//!   `events` filters match it; a `contact.created` / `contact.updated` for a contact some
//!   list's desired set names resyncs it on those lists (it may be back). Nothing else acts.

use std::sync::Arc;

use crate::contact::{ContactId, ContactKind, Email};
use crate::desired::DesiredState;
use crate::manifest::{Manifests, Policy};
use crate::store::{EventContact, Handling, InboxEvent, Resync, Store, StoreError};
use crate::webhook::{BounceType, EventKind, event};

/// Adds to each policy with `events` sources the contacts events fed it.
pub fn join_event_contacts(manifests: &mut Manifests, store: &Store) -> Result<(), StoreError> {
    for policy in manifests
        .policies
        .iter_mut()
        .filter(|p| !p.events.is_empty())
    {
        // Only what the policy takes today, on the list it names today: an event fed under a
        // filter since removed, or while the policy named another list, is not asserted
        // (it stays recorded; invariant 1 holds through the source the manifests declare).
        let rows: Vec<(ContactKind, String)> = store
            .event_contact_sources(policy.name.as_str())?
            .into_iter()
            .filter(|c| {
                c.list_id == policy.list.as_str() && c.account == policy.list.account.as_str()
            })
            .filter(|c| {
                policy
                    .events
                    .iter()
                    .any(|f| f.takes(&c.event_type, c.bounce_type.as_deref()))
            })
            .map(|c| (c.kind, c.contact))
            .collect();
        join(policy, &rows);
    }
    Ok(())
}

/// `policy` with `rows` (what the store keeps of its event-fed contacts) joined.
pub fn join(policy: &mut Policy, rows: &[(ContactKind, String)]) {
    // Stored normalised; parsed again all the same, as everything read back is.
    let mut emails: Vec<Email> = rows
        .iter()
        .filter(|(k, _)| *k == ContactKind::Email)
        .filter_map(|(_, c)| Email::parse(c).ok())
        .collect();
    emails.sort_unstable();
    emails.dedup();
    let mut ids: Vec<ContactId> = rows
        .iter()
        .filter(|(k, _)| *k == ContactKind::ContactId)
        .filter_map(|(_, c)| ContactId::parse(c).ok())
        .collect();
    ids.sort_unstable();
    ids.dedup();
    policy.event_fed = emails.len() + ids.len();
    if policy.event_fed == 0 {
        return;
    }
    policy.event_only_emails = difference(&emails, &policy.emails);
    policy.event_only_ids = difference(&ids, &policy.contact_ids);
    policy.emails = union(&policy.emails, &emails);
    policy.contact_ids = union(&policy.contact_ids, &ids);
    let mut text = format!("{}\nevents", policy.revision);
    for c in emails
        .iter()
        .map(Email::as_str)
        .chain(ids.iter().map(ContactId::as_str))
    {
        text.push('\n');
        text.push_str(c);
    }
    policy.revision = crate::manifest::digest(text.as_bytes());
}

/// The elements of sorted `a` not in sorted `b`.
fn difference<T: Ord + Clone>(a: &[T], b: &[T]) -> Arc<[T]> {
    a.iter()
        .filter(|x| b.binary_search(x).is_err())
        .cloned()
        .collect()
}

/// The sorted union of two sorted sets without duplicates.
fn union<T: Ord + Clone>(a: &[T], b: &[T]) -> Arc<[T]> {
    let mut out = Vec::with_capacity(a.len() + b.len());
    let (mut i, mut j) = (0, 0);
    while i < a.len() && j < b.len() {
        match a[i].cmp(&b[j]) {
            std::cmp::Ordering::Less => {
                out.push(a[i].clone());
                i += 1;
            }
            std::cmp::Ordering::Greater => {
                out.push(b[j].clone());
                j += 1;
            }
            std::cmp::Ordering::Equal => {
                out.push(a[i].clone());
                i += 1;
                j += 1;
            }
        }
    }
    out.extend_from_slice(&a[i..]);
    out.extend_from_slice(&b[j..]);
    out.into()
}

/// What the inbox keeps of an event, as the event it was.
fn kind_of(e: &InboxEvent) -> Option<EventKind> {
    let email = e.email.as_deref().and_then(|m| Email::parse(m).ok());
    match e.event_type.as_str() {
        event::EMAIL_BOUNCED => Some(EventKind::Bounced {
            email: email?,
            bounce_type: e.bounce_type.as_deref().and_then(BounceType::from_name),
        }),
        event::EMAIL_SPAM_REPORTED => Some(EventKind::SpamReported { email: email? }),
        t @ (event::CONTACT_CREATED | event::CONTACT_UPDATED) => {
            let contact_id = e
                .contact_id
                .as_deref()
                .and_then(|c| ContactId::parse(c).ok());
            (email.is_some() || contact_id.is_some()).then_some(EventKind::ContactChanged {
                created: t == event::CONTACT_CREATED,
                email,
                contact_id,
            })
        }
        _ => None,
    }
}

/// What handling `events` does, against the current policies and desired state, and a
/// short outcome per event (kept in the inbox, for audit).
///
/// `budget(policy)` is how many more contacts events may feed the policy before its
/// `maxRemovalsPerSync` is spent for the storm window (`None`: no threshold). A storm
/// arrives as a trickle of events, each reconcile seeing a few, so the threshold is counted
/// over the window here, where the events arrive; beyond it, contacts are recorded held and
/// wait for `listwarden approve`, like any other large change.
pub fn decide(
    events: &[(i64, InboxEvent)],
    policies: &[Policy],
    desired: &DesiredState,
    budget: &dyn Fn(&Policy) -> Option<u64>,
) -> (Vec<(i64, String)>, Handling) {
    let mut handling = Handling::default();
    let mut left: std::collections::HashMap<&str, Option<u64>> = Default::default();
    let mut outcomes = Vec::with_capacity(events.len());
    for (id, e) in events {
        let outcome = match kind_of(e) {
            None => "nothing to act on".to_string(),
            Some(
                ref kind @ (EventKind::Bounced { ref email, .. }
                | EventKind::SpamReported { ref email }),
            ) => {
                let takers: Vec<&Policy> = policies
                    .iter()
                    .filter(|p| {
                        p.list.account.as_str() == e.account
                            && p.events.iter().any(|f| f.matches(kind))
                    })
                    .collect();
                let mut held = 0;
                for p in &takers {
                    let contact = EventContact {
                        policy: p.name.to_string(),
                        kind: ContactKind::Email,
                        contact: email.as_str().to_string(),
                        event_type: e.event_type.clone(),
                        bounce_type: e.bounce_type.clone(),
                        event_at_ms: e.created_at_ms,
                        delivery_id: e.delivery_id.clone(),
                        list_id: p.list.id.to_string(),
                        account: p.list.account.to_string(),
                    };
                    let left = left.entry(p.name.as_str()).or_insert_with(|| budget(p));
                    match left {
                        Some(0) => {
                            held += 1;
                            handling.held.push(contact);
                        }
                        Some(n) => {
                            *n -= 1;
                            handling.fed.push(contact);
                        }
                        None => handling.fed.push(contact),
                    }
                }
                let plural = |n: usize| if n == 1 { "policy" } else { "policies" };
                match (takers.len(), held) {
                    (0, _) => "no policy takes this event".to_string(),
                    (n, 0) => format!("fed to {n} {}", plural(n)),
                    (n, h) => format!(
                        "fed to {n} {}, held for {h} beyond maxRemovalsPerSync",
                        plural(n)
                    ),
                }
            }
            Some(EventKind::ContactChanged {
                email, contact_id, ..
            }) => {
                let before = handling.resync.len();
                // A contact id or address in one account says nothing of another's.
                for list in desired
                    .lists
                    .iter()
                    .filter(|l| l.list.account.as_str() == e.account)
                {
                    if let Some(email) = &email
                        && list
                            .emails
                            .binary_search_by(|m| m.contact.as_str().cmp(email.as_str()))
                            .is_ok()
                    {
                        handling.resync.push(Resync {
                            account: list.list.account.to_string(),
                            list_id: list.list.id.to_string(),
                            kind: ContactKind::Email,
                            contact: email.as_str().to_string(),
                        });
                    }
                    if let Some(id) = &contact_id
                        && list
                            .contact_ids
                            .binary_search_by(|m| m.contact.as_str().cmp(id.as_str()))
                            .is_ok()
                    {
                        handling.resync.push(Resync {
                            account: list.list.account.to_string(),
                            list_id: list.list.id.to_string(),
                            kind: ContactKind::ContactId,
                            contact: id.as_str().to_string(),
                        });
                    }
                }
                match handling.resync.len() - before {
                    0 => "no policy excludes this contact".to_string(),
                    n => format!("resync on {n} {}", if n == 1 { "list" } else { "lists" }),
                }
            }
            Some(_) => "nothing to act on".to_string(),
        };
        outcomes.push((*id, outcome));
    }
    (outcomes, handling)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(docs: &[(&str, &str)]) -> (tempfile::TempDir, Manifests) {
        let dir = tempfile::tempdir().unwrap();
        for (file, text) in docs {
            std::fs::write(dir.path().join(file), text).unwrap();
        }
        let m = crate::manifest::load(dir.path());
        assert!(!m.has_errors(), "{:?}", m.diagnostics);
        (dir, m)
    }

    fn doc(name: &str, list: &str, exclude: &str) -> String {
        format!(
            "apiVersion: listwarden.dev/v1\nkind: ListPolicy\nmetadata:\n  name: {name}\nspec:\n  \
             contactListId: {list}\n  exclude:\n{exclude}"
        )
    }

    fn inbox(event_type: &str, email: Option<&str>, bounce: Option<&str>) -> InboxEvent {
        InboxEvent {
            digest: [0; 32],
            delivery_id: Some("d".into()),
            event_type: event_type.into(),
            created_at_ms: 1,
            email: email.map(str::to_string),
            contact_id: None,
            bounce_type: bounce.map(str::to_string),
            account: "default".into(),
        }
    }

    fn policies() -> (tempfile::TempDir, Manifests) {
        load(&[
            (
                "hard.yaml",
                &doc(
                    "hard",
                    "l1",
                    "    events: [{type: email.bounced, bounceType: Permanent}]\n    emails: [a@example.com]\n",
                ),
            ),
            (
                "spam.yaml",
                &doc("spam", "l2", "    events: [{type: email.spam_reported}]\n"),
            ),
            (
                "plain.yaml",
                &doc("plain", "l3", "    emails: [x@example.com]\n"),
            ),
        ])
    }

    #[test]
    fn a_bounce_feeds_only_the_policies_whose_filters_match_it() {
        let (_d, m) = policies();
        let desired = DesiredState::build(&m.policies);
        let events = vec![
            (
                1,
                inbox("email.bounced", Some("b@example.com"), Some("Permanent")),
            ),
            (
                2,
                inbox("email.bounced", Some("c@example.com"), Some("Transient")),
            ),
            (3, inbox("email.spam_reported", Some("d@example.com"), None)),
        ];
        let (outcomes, handling) = decide(&events, &m.policies, &desired, &|_| None);
        let fed: Vec<(&str, &str)> = handling
            .fed
            .iter()
            .map(|f| (f.policy.as_str(), f.contact.as_str()))
            .collect();
        assert_eq!(
            fed,
            vec![("hard", "b@example.com"), ("spam", "d@example.com")]
        );
        assert_eq!(handling.fed[0].list_id, "l1");
        assert_eq!(outcomes[1].1, "no policy takes this event");
        assert!(handling.resync.is_empty());
    }

    #[test]
    fn a_contact_event_resyncs_only_lists_whose_desired_set_holds_the_contact() {
        let (_d, m) = policies();
        let desired = DesiredState::build(&m.policies);
        let events = vec![
            (1, inbox("contact.updated", Some("x@example.com"), None)),
            (
                2,
                inbox("contact.created", Some("stranger@example.com"), None),
            ),
        ];
        let (outcomes, handling) = decide(&events, &m.policies, &desired, &|_| None);
        assert_eq!(
            handling.resync,
            vec![Resync {
                account: "default".into(),
                list_id: "l3".into(),
                kind: ContactKind::Email,
                contact: "x@example.com".into(),
            }]
        );
        assert_eq!(outcomes[1].1, "no policy excludes this contact");
        assert!(handling.fed.is_empty());
    }

    #[test]
    fn joined_event_contacts_extend_the_set_and_change_the_revision() {
        let (_d, mut m) = policies();
        let rows = vec![
            (ContactKind::Email, "a@example.com".to_string()),
            (ContactKind::Email, "b@example.com".to_string()),
        ];
        let hard = &mut m.policies[0];
        assert_eq!(hard.name.as_str(), "hard");
        let before = hard.revision.clone();
        join(hard, &rows);
        let emails: Vec<&str> = hard.emails.iter().map(Email::as_str).collect();
        assert_eq!(emails, vec!["a@example.com", "b@example.com"]);
        assert_eq!(hard.event_fed, 2);
        assert_ne!(hard.revision, before);
        // The same rows again: the same revision (the daemon reconciles on change only).
        let again = {
            let (_d2, mut m2) = policies();
            join(&mut m2.policies[0], &rows);
            m2.policies[0].revision.clone()
        };
        assert_eq!(again, m.policies[0].revision);
    }

    #[test]
    fn a_policy_without_events_gets_nothing_whatever_was_recorded_for_it() {
        let (_d, mut m) = policies();
        let store = Store::in_memory().unwrap();
        let fed = |policy: &str| EventContact {
            policy: policy.into(),
            kind: ContactKind::Email,
            contact: "z@example.com".into(),
            event_type: "email.spam_reported".into(),
            bounce_type: None,
            event_at_ms: 1,
            delivery_id: None,
            list_id: if policy == "spam" { "l2" } else { "l3" }.into(),
            account: "default".into(),
        };
        let handling = Handling {
            held: vec![],
            fed: vec![fed("plain"), fed("spam")],
            resync: vec![],
        };
        store.handle_events(&[], &handling, 1).unwrap();
        join_event_contacts(&mut m, &store).unwrap();
        let by_name = |n: &str| m.policies.iter().find(|p| p.name.as_str() == n).unwrap();
        assert_eq!(by_name("plain").event_fed, 0);
        assert!(
            !by_name("plain")
                .emails
                .iter()
                .any(|e| e.as_str() == "z@example.com")
        );
        assert_eq!(by_name("spam").event_fed, 1);
    }

    /// Invariant 1: what an event fed is asserted only while a current filter of the policy
    /// takes that event, and only on the list the policy named when it was fed.
    #[test]
    fn only_events_a_current_filter_takes_on_the_current_list_are_joined() {
        let (_d, mut m) = policies();
        let store = Store::in_memory().unwrap();
        let fed =
            |contact: &str, event_type: &str, bounce: Option<&str>, list: &str| EventContact {
                policy: "hard".into(),
                kind: ContactKind::Email,
                contact: contact.into(),
                event_type: event_type.into(),
                bounce_type: bounce.map(str::to_string),
                event_at_ms: 1,
                delivery_id: None,
                list_id: list.into(),
                account: "default".into(),
            };
        let handling = Handling {
            held: vec![],
            fed: vec![
                fed(
                    "taken@example.com",
                    "email.bounced",
                    Some("Permanent"),
                    "l1",
                ),
                // Fed under a filter the policy no longer has (a soft bounce, a spam report).
                fed("soft@example.com", "email.bounced", Some("Transient"), "l1"),
                fed("spam@example.com", "email.spam_reported", None, "l1"),
                // Fed while the policy named another list.
                fed(
                    "moved@example.com",
                    "email.bounced",
                    Some("Permanent"),
                    "l9",
                ),
            ],
            resync: vec![],
        };
        store.handle_events(&[], &handling, 1).unwrap();
        join_event_contacts(&mut m, &store).unwrap();
        let hard = m
            .policies
            .iter()
            .find(|p| p.name.as_str() == "hard")
            .unwrap();
        let emails: Vec<&str> = hard.emails.iter().map(Email::as_str).collect();
        assert_eq!(emails, vec!["a@example.com", "taken@example.com"]);
        assert_eq!(hard.event_fed, 1);
    }
}
