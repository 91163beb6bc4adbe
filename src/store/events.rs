//! Webhook events: the inbox of verified deliveries, and the contacts events fed to policies.
//!
//! An event is committed to the inbox before its delivery is answered 2xx (AutoSend retries
//! otherwise), and handled afterwards: the handling (its contacts fed to policies, drift
//! hints turned into resyncs) and the event's "handled" mark are one transaction, so a crash
//! between the answer and the handling loses nothing, and a crash during the handling does
//! it again, whole. The inbox also remembers, for the freshness window, the digest of every
//! signed body and every delivery id: a retry or a replay is recognised by either.
//!
//! Event-fed contacts live in a table of their own, apart from the contacts of lists: they
//! are what the events said (type, time, delivery id, list), kept for audit even when the
//! policy stops reading events; they leave a policy's set only through
//! [`Store::forget_event_contact`] (`listwarden events forget`), never silently.

use rusqlite::{OptionalExtension, TransactionBehavior, params};

use super::{Store, StoreError, kind_code, stored_text};
use crate::contact::ContactKind;

/// Longest delivery id or event type kept: they come from the network.
const MAX_ID: usize = 128;

/// A verified event, as the inbox keeps it until it is handled.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InboxEvent {
    /// SHA-256 of the signed body.
    pub digest: [u8; 32],
    pub delivery_id: Option<String>,
    pub event_type: String,
    /// The signed `createdAt`, unix milliseconds.
    pub created_at_ms: i64,
    /// The recipient (email events) or the contact's address (contact events), normalised.
    pub email: Option<String>,
    pub contact_id: Option<String>,
    pub bounce_type: Option<String>,
    /// The account whose route received it (its secret verified it): it feeds only that
    /// account's policies.
    pub account: String,
}

/// What the inbox made of a delivery.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Received {
    /// New: committed, to be handled (its inbox id).
    Accepted(i64),
    /// Seen within the window already, by its body's digest or its delivery id.
    Duplicate,
}

/// A contact an event fed to a policy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EventContact {
    pub policy: String,
    pub kind: ContactKind,
    pub contact: String,
    pub event_type: String,
    /// `email.bounced`: the bounce type as AutoSend wrote it (`Permanent`, `Transient`), if any.
    pub bounce_type: Option<String>,
    /// The event's signed `createdAt`, unix milliseconds.
    pub event_at_ms: i64,
    pub delivery_id: Option<String>,
    /// The policy's list when the event arrived, and its account.
    pub list_id: String,
    pub account: String,
}

/// A confirmed contact of a list that an event says may be back: assert it again now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Resync {
    pub account: String,
    pub list_id: String,
    pub kind: ContactKind,
    pub contact: String,
}

/// What handling one inbox event did, committed with its mark.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Handling {
    pub fed: Vec<EventContact>,
    /// Fed beyond the policy's `maxRemovalsPerSync` within the storm window: recorded, not
    /// asserted until `listwarden approve`.
    pub held: Vec<EventContact>,
    pub resync: Vec<Resync>,
}

fn capped(text: &str) -> String {
    let mut end = text.len().min(MAX_ID);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text[..end].to_string()
}

impl Store {
    /// Commits a verified, fresh event unless the window has seen it (same signed body, or
    /// same delivery id), and forgets handled events older than `keep_since_ms`.
    pub fn receive_event(
        &self,
        event: &InboxEvent,
        now_ms: i64,
        keep_since_ms: i64,
    ) -> Result<Received, StoreError> {
        self.check_file()?;
        self.with(|conn| {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            tx.execute(
                "DELETE FROM webhook_events WHERE handled_at IS NOT NULL AND received_at < ?1",
                params![keep_since_ms],
            )?;
            let delivery = event.delivery_id.as_deref().map(capped);
            let seen: Option<i64> = tx
                .query_row(
                    "SELECT id FROM webhook_events
                     WHERE digest = ?1 OR (?2 IS NOT NULL AND delivery_id = ?2) LIMIT 1",
                    params![&event.digest[..], delivery],
                    |r| r.get(0),
                )
                .optional()?;
            if seen.is_some() {
                tx.commit()?;
                return Ok(Received::Duplicate);
            }
            tx.execute(
                "INSERT INTO webhook_events (digest, delivery_id, event_type, created_at,
                    received_at, email, contact_id, bounce_type, account)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
                params![
                    &event.digest[..],
                    delivery,
                    capped(&event.event_type),
                    event.created_at_ms,
                    now_ms,
                    event.email.as_deref().map(stored_text),
                    event.contact_id.as_deref().map(capped),
                    event.bounce_type.as_deref().map(capped),
                    capped(&event.account),
                ],
            )?;
            let id = tx.last_insert_rowid();
            tx.commit()?;
            Ok(Received::Accepted(id))
        })
    }

    /// Events committed but not handled yet, oldest first (after a restart: those answered
    /// 2xx before the crash). With `contact_events_only`, only `contact.*` ones: what can
    /// be handled while bounces wait for the manifests, so that those never starve them.
    pub fn unhandled_events(
        &self,
        limit: usize,
        contact_events_only: bool,
    ) -> Result<Vec<(i64, InboxEvent)>, StoreError> {
        self.with(|conn| {
            let mut stmt = conn.prepare_cached(
                "SELECT id, digest, delivery_id, event_type, created_at, email, contact_id,
                        bounce_type, account
                 FROM webhook_events
                 WHERE handled_at IS NULL AND (?2 = 0 OR event_type LIKE 'contact.%')
                 ORDER BY id LIMIT ?1",
            )?;
            let rows = stmt.query_map(params![limit as i64, contact_events_only], |r| {
                let digest: Vec<u8> = r.get(1)?;
                let mut d = [0u8; 32];
                if digest.len() == 32 {
                    d.copy_from_slice(&digest);
                }
                Ok((
                    r.get(0)?,
                    InboxEvent {
                        digest: d,
                        delivery_id: r.get(2)?,
                        event_type: r.get(3)?,
                        created_at_ms: r.get(4)?,
                        email: r.get(5)?,
                        contact_id: r.get(6)?,
                        bounce_type: r.get(7)?,
                        account: r.get(8)?,
                    },
                ))
            })?;
            rows.collect()
        })
    }

    /// Commits what handling the events `ids` did, and marks them handled, in one
    /// transaction. A resync sets a confirmed contact's confirmation to the epoch: confirmed
    /// long ago, so the next plan asserts it again as a resync (not as a new contact, which
    /// the removal threshold would count); it is also counted as drift of its list.
    pub fn handle_events(
        &self,
        ids: &[(i64, &str)],
        handling: &Handling,
        now_ms: i64,
    ) -> Result<(), StoreError> {
        self.check_file()?;
        self.with(|conn| {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            {
                // A held contact that is already asserted stays asserted; a contact fed within
                // the budget is asserted whatever it was.
                let mut feed = tx.prepare_cached(
                    "INSERT INTO event_contacts (policy, kind, contact, event_type, event_at,
                        delivery_id, list_id, added_at, bounce_type, held_at, account)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)
                     ON CONFLICT (policy, kind, contact, event_type) DO UPDATE SET
                       event_at = excluded.event_at,
                       bounce_type = excluded.bounce_type,
                       delivery_id = excluded.delivery_id, list_id = excluded.list_id,
                       account = excluded.account,
                       added_at = excluded.added_at,
                       held_at = CASE
                         WHEN excluded.held_at IS NULL THEN NULL
                         WHEN event_contacts.held_at IS NULL
                              AND event_contacts.forgotten_at IS NULL THEN NULL
                         ELSE excluded.held_at END,
                       forgotten_at = NULL, forgotten_by = NULL",
                )?;
                let fed = handling.fed.iter().map(|f| (f, None));
                let held = handling.held.iter().map(|f| (f, Some(now_ms)));
                for (f, held_at) in fed.chain(held) {
                    feed.execute(params![
                        f.policy,
                        kind_code(f.kind),
                        stored_text(&f.contact),
                        capped(&f.event_type),
                        f.event_at_ms,
                        f.delivery_id.as_deref().map(capped),
                        f.list_id,
                        now_ms,
                        f.bounce_type.as_deref().map(capped),
                        held_at,
                        f.account,
                    ])?;
                }
                let mut resync = tx.prepare_cached(
                    "UPDATE contacts SET confirmed_at = 0
                     WHERE list = (SELECT id FROM lists WHERE account = ?4 AND list_id = ?1)
                       AND kind = ?2 AND contact = ?3 AND confirmed_at IS NOT NULL",
                )?;
                // A contact back in a list is drift, as an observation of the list would
                // have found it: counted where the strategy's estimate reads drift.
                let mut drift = tx.prepare_cached(
                    "UPDATE lists SET drift = COALESCE(drift, 0) + 1
                     WHERE account = ?2 AND list_id = ?1",
                )?;
                for r in &handling.resync {
                    if resync.execute(params![
                        r.list_id,
                        kind_code(r.kind),
                        r.contact,
                        r.account
                    ])? > 0
                    {
                        drift.execute(params![r.list_id, r.account])?;
                    }
                }
                let mut mark = tx.prepare_cached(
                    "UPDATE webhook_events SET handled_at = ?2, outcome = ?3 WHERE id = ?1",
                )?;
                for (id, outcome) in ids {
                    mark.execute(params![id, now_ms, stored_text(outcome)])?;
                }
            }
            tx.commit()
        })
    }

    /// The contacts events fed to `policy`, not forgotten nor held, sorted by contact per
    /// kind, whatever fed them (the daemon joins [`Store::event_contact_sources`], which says
    /// what did): for tests.
    #[cfg(test)]
    pub(crate) fn event_contacts(
        &self,
        policy: &str,
    ) -> Result<Vec<(ContactKind, String)>, StoreError> {
        self.read(|conn| {
            let mut stmt = conn.prepare_cached(
                "SELECT DISTINCT kind, contact FROM event_contacts
                 WHERE policy = ?1 AND forgotten_at IS NULL AND held_at IS NULL
                 ORDER BY kind, contact",
            )?;
            let rows = stmt.query_map(params![policy], |r| {
                let kind = if r.get::<_, i64>(0)? == 1 {
                    ContactKind::ContactId
                } else {
                    ContactKind::Email
                };
                Ok((kind, r.get::<_, String>(1)?))
            })?;
            rows.collect()
        })
    }

    /// The event-fed contacts of `policy` not forgotten, with what fed them (the policy, the
    /// delivery and the times are left out): what [`crate::feed`] joins to the policy when
    /// the event still matches one of its filters and was fed on its current list.
    pub fn event_contact_sources(&self, policy: &str) -> Result<Vec<EventContact>, StoreError> {
        self.read(|conn| {
            let mut stmt = conn.prepare_cached(
                "SELECT kind, contact, event_type, bounce_type, list_id, account FROM event_contacts
                 WHERE policy = ?1 AND forgotten_at IS NULL AND held_at IS NULL
                 ORDER BY kind, contact",
            )?;
            let rows = stmt.query_map(params![policy], |r| {
                let kind = if r.get::<_, i64>(0)? == 1 {
                    ContactKind::ContactId
                } else {
                    ContactKind::Email
                };
                Ok(EventContact {
                    policy: policy.to_string(),
                    kind,
                    contact: r.get(1)?,
                    event_type: r.get(2)?,
                    bounce_type: r.get(3)?,
                    event_at_ms: 0,
                    delivery_id: None,
                    list_id: r.get(4)?,
                    account: r.get(5)?,
                })
            })?;
            rows.collect()
        })
    }

    /// Every event-fed contact of `policy` recorded at or after `since_ms` (forgotten ones
    /// too, for export and audit), oldest event first.
    pub fn event_contact_log(
        &self,
        policy: &str,
        since_ms: i64,
    ) -> Result<Vec<(EventContact, Option<i64>)>, StoreError> {
        self.read(|conn| {
            let mut stmt = conn.prepare_cached(
                "SELECT kind, contact, event_type, event_at, delivery_id, list_id, forgotten_at,
                        bounce_type, account
                 FROM event_contacts WHERE policy = ?1 AND event_at >= ?2
                 ORDER BY event_at, contact",
            )?;
            let rows = stmt.query_map(params![policy, since_ms], |r| {
                let kind = if r.get::<_, i64>(0)? == 1 {
                    ContactKind::ContactId
                } else {
                    ContactKind::Email
                };
                Ok((
                    EventContact {
                        policy: policy.to_string(),
                        kind,
                        contact: r.get(1)?,
                        event_type: r.get(2)?,
                        bounce_type: r.get(7)?,
                        event_at_ms: r.get(3)?,
                        delivery_id: r.get(4)?,
                        list_id: r.get(5)?,
                        account: r.get(8)?,
                    },
                    r.get(6)?,
                ))
            })?;
            rows.collect()
        })
    }

    /// Per policy, how many event-fed contacts it has (not forgotten).
    pub fn event_contact_counts(
        &self,
    ) -> Result<std::collections::BTreeMap<String, u64>, StoreError> {
        self.read(|conn| {
            let mut stmt = conn.prepare_cached(
                "SELECT policy, COUNT(DISTINCT kind || ':' || contact) FROM event_contacts
                 WHERE forgotten_at IS NULL AND held_at IS NULL GROUP BY policy",
            )?;
            let rows =
                stmt.query_map([], |r| Ok((r.get(0)?, r.get::<_, i64>(1)?.max(0) as u64)))?;
            rows.collect()
        })
    }

    /// Changes whenever `listwarden events forget` takes a contact out of an event-fed set,
    /// or `listwarden approve` lets held ones through: the daemon polls it to pick them up.
    pub fn event_forget_mark(&self) -> Result<i64, StoreError> {
        self.read(|conn| {
            conn.query_row(
                "SELECT COUNT(forgotten_at), COALESCE(MAX(forgotten_at), 0),
                        (SELECT COALESCE(MAX(at), 0) FROM event_approvals)
                 FROM event_contacts",
                [],
                |r| Ok(r.get::<_, i64>(0)? ^ r.get::<_, i64>(1)? ^ r.get::<_, i64>(2)?),
            )
        })
    }

    /// Per policy, event-fed contacts held beyond its threshold, waiting for `approve`.
    pub fn held_event_contact_counts(
        &self,
    ) -> Result<std::collections::BTreeMap<String, u64>, StoreError> {
        self.read(|conn| {
            let mut stmt = conn.prepare_cached(
                "SELECT policy, COUNT(DISTINCT kind || ':' || contact) FROM event_contacts
                 WHERE forgotten_at IS NULL AND held_at IS NOT NULL GROUP BY policy",
            )?;
            let rows =
                stmt.query_map([], |r| Ok((r.get(0)?, r.get::<_, i64>(1)?.max(0) as u64)))?;
            rows.collect()
        })
    }

    /// How many contacts events fed `policy` (and were let through) since `since_ms`, or
    /// since its last approval if later: what a storm has already spent of its threshold.
    pub fn event_additions_since(&self, policy: &str, since_ms: i64) -> Result<u64, StoreError> {
        self.read(|conn| {
            conn.query_row(
                "SELECT COUNT(DISTINCT kind || ':' || contact) FROM event_contacts
                 WHERE policy = ?1 AND held_at IS NULL AND forgotten_at IS NULL
                   AND added_at >= MAX(?2, COALESCE(
                         (SELECT at FROM event_approvals WHERE policy = ?1), 0))",
                params![policy, since_ms],
                |r| Ok(r.get::<_, i64>(0)?.max(0) as u64),
            )
        })
    }

    /// `listwarden approve POLICY` for events: lets the held event-fed contacts through and
    /// starts the policy's storm window again. Returns how many were held.
    pub fn approve_event_contacts(&self, policy: &str, now_ms: i64) -> Result<u64, StoreError> {
        self.check_file()?;
        self.with(|conn| {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let released: i64 = tx.query_row(
                "SELECT COUNT(DISTINCT kind || ':' || contact) FROM event_contacts
                 WHERE policy = ?1 AND held_at IS NOT NULL AND forgotten_at IS NULL",
                params![policy],
                |r| r.get(0),
            )?;
            if released > 0 {
                tx.execute(
                    "UPDATE event_contacts SET held_at = NULL WHERE policy = ?1
                       AND held_at IS NOT NULL",
                    params![policy],
                )?;
                tx.execute(
                    "INSERT INTO event_approvals (policy, at) VALUES (?1, ?2)
                     ON CONFLICT (policy) DO UPDATE SET at = excluded.at",
                    params![policy, now_ms],
                )?;
            }
            tx.commit()?;
            Ok(released.max(0) as u64)
        })
    }

    /// Takes one contact out of `policy`'s event-fed set (it stays recorded, with who and
    /// when). Returns false when the policy had no such event-fed contact.
    pub fn forget_event_contact(
        &self,
        policy: &str,
        kind: ContactKind,
        contact: &str,
        by: &str,
        now_ms: i64,
    ) -> Result<bool, StoreError> {
        self.check_file()?;
        self.with(|conn| {
            let n = conn.execute(
                "UPDATE event_contacts SET forgotten_at = ?4, forgotten_by = ?5
                 WHERE policy = ?1 AND kind = ?2 AND contact = ?3 AND forgotten_at IS NULL",
                params![policy, kind_code(kind), contact, now_ms, stored_text(by)],
            )?;
            Ok(n > 0)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::contact::{ContactListId, ListKey};
    use crate::store::ContactOutcome;

    fn event(digest: u8, delivery: Option<&str>, email: &str) -> InboxEvent {
        InboxEvent {
            digest: [digest; 32],
            delivery_id: delivery.map(str::to_string),
            event_type: "email.bounced".into(),
            created_at_ms: 1_700_000_000_000,
            email: Some(email.into()),
            contact_id: None,
            bounce_type: Some("Permanent".into()),
            account: "default".into(),
        }
    }

    fn fed(policy: &str, contact: &str) -> EventContact {
        EventContact {
            policy: policy.into(),
            kind: ContactKind::Email,
            contact: contact.into(),
            event_type: "email.bounced".into(),
            bounce_type: Some("Permanent".into()),
            event_at_ms: 1_700_000_000_000,
            delivery_id: Some("d-1".into()),
            list_id: "l1".into(),
            account: "default".into(),
        }
    }

    #[test]
    fn a_retry_or_replay_is_recognised_by_digest_or_delivery_id_within_the_window() {
        let store = Store::in_memory().unwrap();
        let now = 1_700_000_000_000;
        let a = event(1, Some("d-1"), "a@example.com");
        assert!(matches!(
            store.receive_event(&a, now, 0).unwrap(),
            Received::Accepted(_)
        ));
        // Same body (a replay without the header), same delivery id (a retry).
        assert_eq!(
            store
                .receive_event(&event(1, None, "a@example.com"), now, 0)
                .unwrap(),
            Received::Duplicate
        );
        assert_eq!(
            store
                .receive_event(&event(2, Some("d-1"), "a@example.com"), now, 0)
                .unwrap(),
            Received::Duplicate
        );
        assert!(matches!(
            store
                .receive_event(&event(3, Some("d-3"), "b@example.com"), now, 0)
                .unwrap(),
            Received::Accepted(_)
        ));
        assert_eq!(store.unhandled_events(10, false).unwrap().len(), 2);
    }

    #[test]
    fn handled_events_are_forgotten_after_the_window_and_unhandled_ones_never() {
        let store = Store::in_memory().unwrap();
        let t0 = 1_700_000_000_000;
        let Received::Accepted(handled) = store
            .receive_event(&event(1, Some("d-1"), "a@example.com"), t0, 0)
            .unwrap()
        else {
            panic!("accepted")
        };
        store
            .receive_event(&event(2, Some("d-2"), "b@example.com"), t0, 0)
            .unwrap();
        store
            .handle_events(&[(handled, "fed")], &Handling::default(), t0)
            .unwrap();
        // An hour later, the window forgot the handled one: its replay is new again (and
        // refused as stale before it gets here); the unhandled one is still there.
        let later = t0 + 3_600_001;
        assert!(matches!(
            store
                .receive_event(
                    &event(1, Some("d-1"), "a@example.com"),
                    later,
                    later - 3_600_000
                )
                .unwrap(),
            Received::Accepted(_)
        ));
        let left: Vec<String> = store
            .unhandled_events(10, false)
            .unwrap()
            .into_iter()
            .filter_map(|(_, e)| e.email)
            .collect();
        assert_eq!(
            left,
            vec!["b@example.com".to_string(), "a@example.com".into()]
        );
    }

    #[test]
    fn handling_feeds_policies_resyncs_confirmed_contacts_and_marks_in_one_step() {
        let store = Store::in_memory().unwrap();
        let l1 = ListKey::default_account(ContactListId::parse("l1").unwrap());
        store
            .record_batch(
                &l1,
                ContactKind::Email,
                &[("back@example.com", ContactOutcome::Confirmed)],
                1_700_000_000,
            )
            .unwrap();
        let Received::Accepted(id) = store
            .receive_event(&event(1, None, "x@example.com"), 0, 0)
            .unwrap()
        else {
            panic!("accepted")
        };
        let handling = Handling {
            held: vec![],
            fed: vec![fed("bounces", "x@example.com")],
            resync: vec![
                Resync {
                    account: "default".into(),
                    list_id: "l1".into(),
                    kind: ContactKind::Email,
                    contact: "back@example.com".into(),
                },
                // Never confirmed: nothing to resync, no row made up.
                Resync {
                    account: "default".into(),
                    list_id: "l1".into(),
                    kind: ContactKind::Email,
                    contact: "never@example.com".into(),
                },
            ],
        };
        store
            .handle_events(&[(id, "fed to 1 policy")], &handling, 5)
            .unwrap();
        assert!(store.unhandled_events(10, false).unwrap().is_empty());
        assert_eq!(
            store.event_contacts("bounces").unwrap(),
            vec![(ContactKind::Email, "x@example.com".to_string())]
        );
        let records = store.records(&l1).unwrap();
        assert_eq!(records.emails["back@example.com"].confirmed_at, Some(0));
        assert!(records.emails.get("never@example.com").is_none());
        assert_eq!(store.event_contact_counts().unwrap()["bounces"], 1);
    }

    #[test]
    fn a_forgotten_event_contact_stays_recorded_and_a_new_event_brings_it_back() {
        let store = Store::in_memory().unwrap();
        let mark = store.event_forget_mark().unwrap();
        store
            .handle_events(
                &[],
                &Handling {
                    held: vec![],
                    fed: vec![fed("b", "x@example.com")],
                    resync: vec![],
                },
                1,
            )
            .unwrap();
        assert!(
            store
                .forget_event_contact("b", ContactKind::Email, "x@example.com", "ops", 2)
                .unwrap()
        );
        assert!(
            !store
                .forget_event_contact("b", ContactKind::Email, "x@example.com", "ops", 3)
                .unwrap()
        );
        assert_ne!(store.event_forget_mark().unwrap(), mark);
        assert!(store.event_contacts("b").unwrap().is_empty());
        let log = store.event_contact_log("b", 0).unwrap();
        assert_eq!(log.len(), 1);
        assert_eq!(log[0].1, Some(2));
        store
            .handle_events(
                &[],
                &Handling {
                    held: vec![],
                    fed: vec![fed("b", "x@example.com")],
                    resync: vec![],
                },
                4,
            )
            .unwrap();
        assert_eq!(store.event_contacts("b").unwrap().len(), 1);
    }

    #[test]
    fn a_later_event_of_another_type_does_not_hide_the_first_from_its_filter() {
        let store = Store::in_memory().unwrap();
        let bounce = fed("p", "x@example.com");
        let spam = EventContact {
            event_type: "email.spam_reported".into(),
            bounce_type: None,
            ..fed("p", "x@example.com")
        };
        for f in [bounce, spam] {
            let handling = Handling {
                held: vec![],
                fed: vec![f],
                resync: vec![],
            };
            store.handle_events(&[], &handling, 1).unwrap();
        }
        let types: Vec<String> = store
            .event_contact_sources("p")
            .unwrap()
            .into_iter()
            .map(|c| c.event_type)
            .collect();
        assert_eq!(types, vec!["email.bounced", "email.spam_reported"]);
        assert_eq!(store.event_contacts("p").unwrap().len(), 1);
        assert_eq!(store.event_contact_counts().unwrap()["p"], 1);
        // Forgetting the contact forgets it whatever fed it.
        assert!(
            store
                .forget_event_contact("p", ContactKind::Email, "x@example.com", "ops", 2)
                .unwrap()
        );
        assert!(store.event_contact_sources("p").unwrap().is_empty());
    }
}
