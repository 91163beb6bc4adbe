//! Contacts: what the store remembers per list and contact, the outcome of each request
//! (committed before the next one is sent), and forgetting what no policy asks for.

use std::collections::HashMap;

use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};

use super::{Store, StoreError, kind_code, stored_text};
use crate::contact::{ContactKind, ListKey};

/// A contact left unaccounted by this many answers in a row is reported failed.
pub const UNACCOUNTED_LIMIT: i64 = 3;

/// Says whether a contact of a list is still asked for by some policy.
pub type Keep<'a> = dyn Fn(ContactKind, &str) -> bool + 'a;

/// What the store remembers about one contact of one list.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Record {
    /// Unix seconds of the last confirmation that it is absent (removed or notInList).
    pub confirmed_at: Option<i64>,
    /// Unix seconds of the last failed attempt, if the last attempt failed.
    pub failed_at: Option<i64>,
    /// Answers in a row that did not account for it (asserted again while above zero).
    pub unaccounted: u8,
}

/// The store's records of one list, by contact.
#[derive(Clone, Debug, Default)]
pub struct ListRecords {
    pub emails: Records,
    pub contact_ids: Records,
}

/// The records of one kind of contact of a list, sorted by contact, their text in one
/// buffer: reading a list of a million rows allocates a few buffers, not a million strings,
/// and planning walks it beside the sorted desired set instead of hashing every contact.
#[derive(Clone, Debug, Default)]
pub struct Records {
    text: String,
    /// (start, length) of the contact in `text`, and its record.
    rows: Vec<(u32, u32, Record)>,
    sorted: bool,
}

impl Records {
    /// Room for `rows` records of addresses of a typical length.
    pub fn with_capacity(rows: usize) -> Records {
        Records {
            text: String::with_capacity(rows.saturating_mul(24)),
            rows: Vec::with_capacity(rows),
            sorted: true,
        }
    }

    /// Adds a row. Rows come sorted from the store; out of order, [`Records::finish`] sorts.
    pub fn push(&mut self, contact: &str, record: Record) {
        let start = self.text.len() as u32;
        if let Some(last) = self.rows.last()
            && self.contact(last) >= contact
        {
            self.sorted = false;
        } else if self.rows.is_empty() {
            self.sorted = true;
        }
        self.text.push_str(contact);
        self.rows.push((start, contact.len() as u32, record));
    }

    /// Sorts the rows if they came out of order.
    pub fn finish(mut self) -> Records {
        if !self.sorted && !self.rows.is_empty() {
            let text = std::mem::take(&mut self.text);
            let contact = |r: &(u32, u32, Record)| &text[r.0 as usize..(r.0 + r.1) as usize];
            self.rows.sort_by(|a, b| contact(a).cmp(contact(b)));
            self.text = text;
            self.sorted = true;
        }
        // The capacity was a guess from the list's counts.
        self.text.shrink_to_fit();
        self.rows.shrink_to_fit();
        self
    }

    fn contact(&self, row: &(u32, u32, Record)) -> &str {
        &self.text[row.0 as usize..(row.0 + row.1) as usize]
    }

    pub fn len(&self) -> usize {
        self.rows.len()
    }

    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    pub fn get(&self, contact: &str) -> Option<&Record> {
        self.rows
            .binary_search_by(|r| self.contact(r).cmp(contact))
            .ok()
            .map(|i| &self.rows[i].2)
    }

    /// (contact, record), sorted by contact.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &Record)> {
        self.rows.iter().map(|r| (self.contact(r), &r.2))
    }
}

impl std::ops::Index<&str> for Records {
    type Output = Record;

    fn index(&self, contact: &str) -> &Record {
        self.get(contact)
            .unwrap_or_else(|| panic!("no record of {contact:?}"))
    }
}

/// What one request established for one contact.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ContactOutcome {
    /// Removed, or reported not in the list: absent either way.
    Confirmed,
    Failed(String),
    /// The answer's counts did not cover the batch, so nothing says this contact is absent:
    /// it stays pending; after [`UNACCOUNTED_LIMIT`] such answers in a row it is failed.
    Unaccounted,
}

impl Store {
    /// Makes the next load read `list` again when forgetting: a reconcile planned from an
    /// older load may have recorded contacts the current one no longer names.
    pub fn reset_forget(&self, list: &ListKey) -> Result<(), StoreError> {
        self.with(|conn| {
            conn.execute(
                "UPDATE lists SET forget_revision = NULL WHERE account = ?1 AND list_id = ?2",
                params![list.account.as_str(), list.as_str()],
            )
            .map(drop)
        })
    }

    /// Everything the store remembers of `list`, for planning.
    pub fn records(&self, list: &ListKey) -> Result<ListRecords, StoreError> {
        self.read(|conn| {
            let Some((key, rows)) = conn
                .prepare_cached(
                    "SELECT id, confirmed + failed + unaccounted FROM lists
                     WHERE account IN (?1, ?3) AND list_id = ?2
                     ORDER BY account = ?1 DESC LIMIT 1",
                )?
                .query_row(
                    params![
                        list.account.as_str(),
                        list.as_str(),
                        self.stored_as(&list.account)
                    ],
                    |r| Ok((r.get::<_, i64>(0)?, r.get::<_, i64>(1)?)),
                )
                .optional()?
            else {
                return Ok(ListRecords::default());
            };
            // The primary key's order: no sort, each kind sorted by contact. The list's
            // counts size the buffers once (rows no outcome counts are few: grown as needed).
            let mut stmt = conn.prepare_cached(
                "SELECT contact, confirmed_at, failed_at, unaccounted FROM contacts
                 WHERE list = ?1 AND kind = ?2 ORDER BY contact",
            )?;
            let mut read = |kind: ContactKind, capacity: usize| -> rusqlite::Result<Records> {
                let mut out = Records::with_capacity(capacity);
                let mut rows = stmt.query(params![key, kind_code(kind)])?;
                while let Some(row) = rows.next()? {
                    let record = Record {
                        confirmed_at: row.get(1)?,
                        failed_at: row.get(2)?,
                        unaccounted: row.get::<_, i64>(3)?.clamp(0, u8::MAX as i64) as u8,
                    };
                    out.push(row.get_ref(0)?.as_str()?, record);
                }
                Ok(out.finish())
            };
            let rows = rows.max(0) as usize;
            let emails = read(ContactKind::Email, rows)?;
            let contact_ids = read(ContactKind::ContactId, rows.saturating_sub(emails.len()))?;
            Ok(ListRecords {
                emails,
                contact_ids,
            })
        })
    }

    /// Commits the outcome of one request, in one transaction.
    pub fn record_batch(
        &self,
        list: &ListKey,
        kind: ContactKind,
        outcomes: &[(&str, ContactOutcome)],
        now: i64,
    ) -> Result<(), StoreError> {
        self.check_file()?;
        self.with(|conn| {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            {
                let key = list_key(&tx, list)?;
                let mut confirm = tx.prepare_cached(
                    "INSERT INTO contacts (list, kind, contact, confirmed_at, attempts)
                     VALUES (?1, ?2, ?3, ?4, 1)
                     ON CONFLICT (list, kind, contact) DO UPDATE SET
                       confirmed_at = excluded.confirmed_at,
                       failed_at = NULL, last_error = NULL, unaccounted = 0,
                       attempts = attempts + 1",
                )?;
                let mut fail = tx.prepare_cached(
                    "INSERT INTO contacts (list, kind, contact, failed_at, last_error, attempts)
                     VALUES (?1, ?2, ?3, ?4, ?5, 1)
                     ON CONFLICT (list, kind, contact) DO UPDATE SET
                       failed_at = excluded.failed_at, last_error = excluded.last_error,
                       unaccounted = 0, attempts = attempts + 1",
                )?;
                // The streak grows; at the limit the contact is failed with that reason (and
                // the streak starts again, so a failed contact keeps being retried).
                let mut unaccounted = tx.prepare_cached(
                    "INSERT INTO contacts (list, kind, contact, attempts, unaccounted)
                     VALUES (?1, ?2, ?3, 1, 1)
                     ON CONFLICT (list, kind, contact) DO UPDATE SET
                       attempts = attempts + 1, unaccounted = unaccounted + 1
                     RETURNING unaccounted",
                )?;
                for (contact, outcome) in outcomes {
                    match outcome {
                        ContactOutcome::Confirmed => {
                            confirm.execute(params![key, kind_code(kind), contact, now])?;
                        }
                        ContactOutcome::Failed(msg) => {
                            fail.execute(params![
                                key,
                                kind_code(kind),
                                contact,
                                now,
                                stored_text(msg)
                            ])?;
                        }
                        ContactOutcome::Unaccounted => {
                            let streak: i64 = unaccounted
                                .query_row(params![key, kind_code(kind), contact], |r| r.get(0))?;
                            if streak >= UNACCOUNTED_LIMIT {
                                let msg = unaccounted_message(streak);
                                fail.execute(params![key, kind_code(kind), contact, now, msg])?;
                            }
                        }
                    }
                }
            }
            tx.commit()
        })
    }

    /// Forgets contacts that no loaded policy asks for any more (no API call: a policy only
    /// says who must not be in a list). `keep(kind, contact)` says who stays. Lists not in
    /// `lists` are forgotten whole. Only call this after a load without errors, or the
    /// contacts of a temporarily broken manifest would be forgotten and re-sent later.
    pub fn forget_unlisted(&self, lists: &[(&ListKey, &Keep<'_>)]) -> Result<u64, StoreError> {
        let keepers: Vec<Keeper<'_>> = lists
            .iter()
            .map(|(list, keep)| Keeper {
                list,
                keep,
                revision: None,
                grown_from: None,
            })
            .collect();
        self.with(|conn| {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let n = forget_in(&tx, &keepers, &[], None)?;
            tx.commit()?;
            Ok(n)
        })
    }

    /// The error of one contact, if its last attempt failed (for tests and status). `list`
    /// as a [`ListKey`] is shown: `account/list`, or the bare id in the default account.
    pub fn contact_error(
        &self,
        list: &str,
        kind: ContactKind,
        contact: &str,
    ) -> Result<Option<String>, StoreError> {
        let (account, list) = list
            .split_once('/')
            .unwrap_or((crate::contact::AccountName::DEFAULT, list));
        self.with(|conn| {
            Ok(conn
                .query_row(
                    "SELECT last_error FROM contacts
                     WHERE list = (SELECT id FROM lists WHERE account = ?4 AND list_id = ?1)
                       AND kind = ?2 AND contact = ?3",
                    params![list, kind_code(kind), contact, account],
                    |r| r.get::<_, Option<String>>(0),
                )
                .optional()?
                .flatten())
        })
    }
}

pub fn unaccounted_message(times: i64) -> String {
    format!(
        "AutoSend's answers did not account for this contact {times} times running \
         (removed + notInList + errors < the batch); it is asserted again next sync"
    )
}

/// What to keep of one list when forgetting: who a policy still asks for, and a digest of
/// that set. A list last forgotten against the same digest holds nothing to forget (its rows
/// were all desired then, and only desired contacts are recorded since), so it is not read.
pub struct Keeper<'a> {
    pub list: &'a ListKey,
    pub keep: &'a Keep<'a>,
    /// `None`: always read the list.
    pub revision: Option<&'a str>,
    /// The digest of the keep-set before, when the list's keep-set only grew since: a list
    /// last forgotten against that one holds nothing to forget either.
    pub grown_from: Option<&'a str>,
}

/// The store's integer key of `list`, created on first use: contact rows carry it instead
/// of the list id's text.
pub(super) fn list_key(tx: &Connection, list: &ListKey) -> rusqlite::Result<i64> {
    tx.prepare_cached(
        "INSERT INTO lists (account, list_id) VALUES (?1, ?2)
         ON CONFLICT (account, list_id) DO UPDATE SET list_id = excluded.list_id
         RETURNING id",
    )?
    .query_row(params![list.account.as_str(), list.as_str()], |r| r.get(0))
}

pub(super) fn forget_in(
    tx: &Connection,
    lists: &[Keeper<'_>],
    spare: &[&ListKey],
    accounts: Option<&[&str]>,
) -> rusqlite::Result<u64> {
    let mut forgotten = 0u64;
    // Each list with contacts, one index seek apiece: `SELECT DISTINCT` would walk every row.
    let mut known: Vec<(i64, (String, String), Option<String>)> = Vec::new();
    {
        let mut next =
            tx.prepare_cached("SELECT list FROM contacts WHERE list > ?1 ORDER BY list LIMIT 1")?;
        let mut about =
            tx.prepare_cached("SELECT account, list_id, forget_revision FROM lists WHERE id = ?1")?;
        let mut after = i64::MIN;
        while let Some(key) = next
            .query_row(params![after], |r| r.get::<_, i64>(0))
            .optional()?
        {
            after = key;
            let (list_id, forgotten_at) =
                about.query_row(params![key], |r| Ok(((r.get(0)?, r.get(1)?), r.get(2)?)))?;
            known.push((key, list_id, forgotten_at));
        }
    }
    // Lookups by list, not scans: a load with 100,000 lists must stay linear.
    let keepers: HashMap<(&str, &str), &Keeper<'_>> = lists
        .iter()
        .map(|k| ((k.list.account.as_str(), k.list.as_str()), k))
        .collect();
    let spare: std::collections::HashSet<(&str, &str)> = spare
        .iter()
        .map(|l| (l.account.as_str(), l.as_str()))
        .collect();
    for (key, (account, list_id), forgotten_at) in known {
        let at = (account.as_str(), list_id.as_str());
        if spare.contains(&at) || accounts.is_some_and(|a| !a.contains(&account.as_str())) {
            continue;
        }
        let Some(keeper) = keepers.get(&at) else {
            forgotten += tx.execute("DELETE FROM contacts WHERE list = ?1", params![key])? as u64;
            continue;
        };
        if keeper.revision.is_some() && forgotten_at.as_deref() == keeper.revision {
            continue;
        }
        if let (Some(revision), Some(before)) = (keeper.revision, keeper.grown_from)
            && forgotten_at.as_deref() == Some(before)
        {
            tx.prepare_cached("UPDATE lists SET forget_revision = ?2 WHERE id = ?1")?
                .execute(params![key, revision])?;
            continue;
        }
        let mut stale = Vec::new();
        {
            let mut stmt = tx.prepare_cached(
                "SELECT kind, contact FROM contacts WHERE list = ?1 ORDER BY kind, contact",
            )?;
            let mut rows = stmt.query(params![key])?;
            while let Some(row) = rows.next()? {
                let kind: i64 = row.get(0)?;
                let contact = row.get_ref(1)?.as_str()?;
                let k = if kind == 0 {
                    ContactKind::Email
                } else {
                    ContactKind::ContactId
                };
                if !(keeper.keep)(k, contact) {
                    stale.push((kind, contact.to_string()));
                }
            }
        }
        let mut del = tx.prepare_cached(
            "DELETE FROM contacts WHERE list = ?1 AND kind = ?2 AND contact = ?3",
        )?;
        for (kind, contact) in stale {
            forgotten += del.execute(params![key, kind, contact])? as u64;
        }
        if let Some(revision) = keeper.revision {
            tx.prepare_cached("UPDATE lists SET forget_revision = ?2 WHERE id = ?1")?
                .execute(params![key, revision])?;
        }
    }
    Ok(forgotten)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::contact::ContactListId;

    fn list() -> ListKey {
        ListKey::default_account(ContactListId::parse("l1").unwrap())
    }

    #[test]
    fn records_read_in_any_order_are_found_by_contact() {
        let mut r = Records::default();
        for c in ["b@x.com", "a@x.com", "c@x.com"] {
            r.push(c, Record::default());
        }
        let r = r.finish();
        let order: Vec<&str> = r.iter().map(|(c, _)| c).collect();
        assert_eq!(order, ["a@x.com", "b@x.com", "c@x.com"]);
        assert!(r.get("b@x.com").is_some() && r.get("d@x.com").is_none());
    }

    #[test]
    fn confirmed_and_failed_contacts_are_remembered() {
        let s = Store::in_memory().unwrap();
        s.record_batch(
            &list(),
            ContactKind::Email,
            &[
                ("a@x.com", ContactOutcome::Confirmed),
                ("b@x.com", ContactOutcome::Failed("locked".into())),
            ],
            100,
        )
        .unwrap();
        let r = s.records(&list()).unwrap();
        assert_eq!(r.emails["a@x.com"].confirmed_at, Some(100));
        assert_eq!(r.emails["b@x.com"].failed_at, Some(100));
        // A later success clears the failure.
        s.record_batch(
            &list(),
            ContactKind::Email,
            &[("b@x.com", ContactOutcome::Confirmed)],
            200,
        )
        .unwrap();
        let r = s.records(&list()).unwrap();
        assert_eq!(r.emails["b@x.com"].failed_at, None);
        assert_eq!(r.emails["b@x.com"].confirmed_at, Some(200));
    }

    #[test]
    fn a_contact_unaccounted_three_times_running_is_failed_with_that_reason() {
        let s = Store::in_memory().unwrap();
        let unaccounted = [("a@x.com", ContactOutcome::Unaccounted)];
        for round in 1..=2 {
            s.record_batch(&list(), ContactKind::Email, &unaccounted, round)
                .unwrap();
            let r = s.records(&list()).unwrap().emails["a@x.com"];
            assert_eq!(r.unaccounted, round as u8);
            assert_eq!((r.confirmed_at, r.failed_at), (None, None), "still pending");
        }
        s.record_batch(&list(), ContactKind::Email, &unaccounted, 3)
            .unwrap();
        let r = s.records(&list()).unwrap().emails["a@x.com"];
        assert_eq!(r.failed_at, Some(3));
        let error = s
            .contact_error("l1", ContactKind::Email, "a@x.com")
            .unwrap()
            .unwrap();
        assert!(
            error.contains("did not account for this contact 3 times"),
            "{error}"
        );
        // A confirmation ends the streak.
        s.record_batch(
            &list(),
            ContactKind::Email,
            &[("a@x.com", ContactOutcome::Confirmed)],
            4,
        )
        .unwrap();
        let r = s.records(&list()).unwrap().emails["a@x.com"];
        assert_eq!((r.unaccounted, r.failed_at), (0, None));
    }

    #[test]
    fn contacts_no_policy_asks_for_are_forgotten() {
        let s = Store::in_memory().unwrap();
        let l2 = ListKey::default_account(ContactListId::parse("l2").unwrap());
        for l in [&list(), &l2] {
            s.record_batch(
                l,
                ContactKind::Email,
                &[
                    ("a@x.com", ContactOutcome::Confirmed),
                    ("b@x.com", ContactOutcome::Confirmed),
                ],
                1,
            )
            .unwrap();
        }
        let keep_a = |_: ContactKind, c: &str| c == "a@x.com";
        let l1 = list();
        let n = s.forget_unlisted(&[(&l1, &keep_a)]).unwrap();
        assert_eq!(n, 3);
        assert_eq!(s.records(&l1).unwrap().emails.len(), 1);
        assert!(s.records(&l2).unwrap().emails.is_empty());
    }

    #[test]
    fn a_list_forgotten_against_the_same_keep_set_is_not_read_again_until_reset() {
        let s = Store::in_memory().unwrap();
        let l1 = list();
        let confirm = |contact: &str| {
            s.record_batch(
                &l1,
                ContactKind::Email,
                &[(contact, ContactOutcome::Confirmed)],
                1,
            )
            .unwrap()
        };
        confirm("a@x.com");
        let keep_a = |_: ContactKind, c: &str| c == "a@x.com";
        let forget = |revision: &str| {
            s.with(|conn| {
                let keeper = Keeper {
                    list: &l1,
                    keep: &keep_a,
                    revision: Some(revision),
                    grown_from: None,
                };
                forget_in(conn, &[keeper], &[], None)
            })
            .unwrap()
        };
        assert_eq!(forget("k1"), 0);
        // A row recorded by a reconcile planned from an older load, then the same keep-set:
        // skipped, the list is not read.
        confirm("stale@x.com");
        assert_eq!(forget("k1"), 0);
        assert_eq!(s.records(&l1).unwrap().emails.len(), 2);
        // Reset (the daemon does it when such a reconcile ends): read and forgotten.
        s.reset_forget(&l1).unwrap();
        assert_eq!(forget("k1"), 1);
        assert_eq!(s.records(&l1).unwrap().emails.len(), 1);
        // A new keep-set is always read.
        confirm("stale@x.com");
        assert_eq!(forget("k2"), 1);
    }
}
