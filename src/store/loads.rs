//! What manifest loads leave in the store: the forget threshold's baselines, held changes and
//! approvals, policy rows of invalid and held policies, forgotten contacts, and the summary of
//! the last load. One transaction per load.

use std::collections::HashMap;
use std::path::Path;

use rusqlite::{OptionalExtension, TransactionBehavior, params};
use serde::Serialize;

use super::contacts::{Keeper, forget_in};
use super::status::{PolicyUpdate, write_policy};
use super::{Store, StoreError, stored_text};
use crate::condition::Condition;
use crate::contact::{AccountName, ContactListId, ListKey};

/// What the store knows of a policy for the forget threshold: the size of its last accepted
/// load, the change held back, and the change a person approved.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Baseline {
    pub contacts: Option<u64>,
    pub held_revision: Option<String>,
    pub approved_revision: Option<String>,
    /// The list the policy targeted.
    pub list: Option<ListKey>,
}

/// A policy whose load is accepted: its size becomes the new baseline (its row is created
/// when it is new, so the next load has something to compare with).
#[derive(Clone, Debug)]
pub struct Accepted<'a> {
    pub name: &'a str,
    pub list: &'a ListKey,
    pub file: &'a Path,
    pub document: usize,
    pub contacts: u64,
    /// What the policy asks for now: when it differs from what was last reconciled, the
    /// policy is `Progressing` until its list is (a change is never shown as converged).
    pub revision: &'a str,
}

/// A policy whose load is held by the forget threshold.
#[derive(Clone, Debug)]
pub struct Held<'a> {
    pub name: &'a str,
    pub revision: &'a str,
    pub contacts: u64,
}

/// The summary of the last manifest load, for status (a broken manifest must never look
/// green, even when it had no known policy).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct LoadSummary {
    pub at: i64,
    pub policies: u64,
    pub invalid: u64,
    pub errors: u64,
    pub first_error: Option<String>,
}

/// Everything a manifest load says to the store, written in one transaction.
#[derive(Default)]
pub struct LoadRecord<'a> {
    pub summary: LoadSummary,
    /// Rows for invalid and held policies (and other per-policy conditions of the load).
    pub policies: Vec<PolicyUpdate<'a>>,
    /// Files that could not be parsed: the policies they held keep their rows, marked with
    /// the condition.
    pub unparsed: Vec<(&'a Path, Condition)>,
    /// Policy rows to keep when pruning (`None`: prune nothing, the load is not trusted).
    pub keep: Option<Vec<&'a str>>,
    pub accepted: Vec<Accepted<'a>>,
    pub held: Vec<Held<'a>>,
    /// Policies gone from the manifests but held: their rows stay, with this condition.
    pub gone: Vec<(&'a str, Condition)>,
    /// Contacts to keep per list when forgetting (`None`: forget nothing). Lists not named
    /// are forgotten whole, except those in `spare`.
    pub forget: Option<Vec<Keeper<'a>>>,
    /// Lists whose contacts are never forgotten by this load (a policy on them is held).
    pub spare: Vec<&'a ListKey>,
    /// The accounts this load serves: lists of other accounts are never forgotten by it
    /// (`None`: every account's).
    pub accounts: Option<Vec<&'a str>>,
    pub now: i64,
}

impl Store {
    /// Writes what a manifest load says, in one transaction (one fsync, however many
    /// policies): conditions of invalid and held policies, files that did not parse, pruned
    /// rows, baselines and holds of the forget threshold, forgotten contacts, the summary.
    /// Returns how many contacts were forgotten.
    pub fn record_load(&self, load: &LoadRecord<'_>) -> Result<u64, StoreError> {
        self.with(|conn| {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            for p in &load.policies {
                write_policy(&tx, p, load.now)?;
            }
            for (file, condition) in &load.unparsed {
                tx.execute(
                    "UPDATE policies SET ready = ?2, reason = ?3, message = ?4, last_error = ?4,
                       updated_at = ?5
                     WHERE file = ?1",
                    params![
                        file.display().to_string(),
                        condition.ready.as_str(),
                        condition.reason.as_str(),
                        stored_text(&condition.message),
                        load.now
                    ],
                )?;
            }
            if let Some(keep) = &load.keep {
                let unparsed: Vec<String> = load
                    .unparsed
                    .iter()
                    .map(|(f, _)| f.display().to_string())
                    .collect();
                let rows: Vec<(String, String, String)> = {
                    let mut stmt = tx.prepare("SELECT name, file, account FROM policies")?;
                    stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
                        .collect::<Result<_, _>>()?
                };
                let keep: std::collections::HashSet<&str> = keep.iter().copied().collect();
                let served =
                    |a: &str| load.accounts.as_ref().is_none_or(|served| served.contains(&a));
                for (name, file, account) in rows {
                    if !keep.contains(name.as_str()) && !unparsed.contains(&file) && served(&account)
                    {
                        tx.execute("DELETE FROM policies WHERE name = ?1", params![name])?;
                    }
                }
            }
            for a in &load.accepted {
                tx.prepare_cached(
                    "INSERT INTO policies (name, contact_list_id, file, document, updated_at, contacts,
                                           account)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
                     ON CONFLICT (name) DO UPDATE SET contacts = excluded.contacts,
                       held_revision = NULL, held_contacts = NULL, approved_revision = NULL",
                )?
                .execute(params![
                    a.name,
                    a.list.as_str(),
                    a.file.display().to_string(),
                    a.document as i64,
                    load.now,
                    a.contacts.min(i64::MAX as u64) as i64,
                    a.list.account.as_str()
                ])?;
                tx.prepare_cached(
                    "UPDATE policies SET ready = 'Unknown', reason = 'Progressing', message = ?3,
                       revision = ?2
                     WHERE name = ?1 AND (revision IS NULL OR revision != ?2)",
                )?
                .execute(params![
                    a.name,
                    a.revision,
                    "the manifests changed; the list is being reconciled"
                ])?;
            }
            for (name, condition) in &load.gone {
                tx.prepare_cached(
                    "UPDATE policies SET ready = ?2, reason = ?3, message = ?4, last_error = ?4,
                       updated_at = ?5
                     WHERE name = ?1",
                )?
                .execute(params![
                    name,
                    condition.ready.as_str(),
                    condition.reason.as_str(),
                    stored_text(&condition.message),
                    load.now
                ])?;
            }
            for h in &load.held {
                tx.execute(
                    "UPDATE policies SET held_revision = ?2, held_contacts = ?3 WHERE name = ?1",
                    params![h.name, h.revision, h.contacts.min(i64::MAX as u64) as i64],
                )?;
            }
            let forgotten = match &load.forget {
                Some(lists) => forget_in(&tx, lists, &load.spare, load.accounts.as_deref())?,
                None => {
                    // Nothing is forgotten now, but reconciles may record contacts this load
                    // names and a later one drops: the next load that may forget reads every
                    // list again, whatever its keep-set digest says.
                    tx.execute(
                        "UPDATE lists SET forget_revision = NULL WHERE forget_revision IS NOT NULL",
                        [],
                    )?;
                    0
                }
            };
            let s = &load.summary;
            tx.execute(
                "INSERT INTO loads (id, at, policies, invalid, errors, first_error)
                 VALUES (1, ?1, ?2, ?3, ?4, ?5)
                 ON CONFLICT (id) DO UPDATE SET at = excluded.at, policies = excluded.policies,
                   invalid = excluded.invalid, errors = excluded.errors,
                   first_error = excluded.first_error",
                params![
                    s.at,
                    s.policies as i64,
                    s.invalid as i64,
                    s.errors as i64,
                    s.first_error.as_deref().map(stored_text)
                ],
            )?;
            tx.commit()?;
            Ok(forgotten)
        })
    }

    /// The summary of the last manifest load, if one was recorded.
    pub fn last_load(&self) -> Result<Option<LoadSummary>, StoreError> {
        self.with(|conn| {
            conn.query_row(
                "SELECT at, policies, invalid, errors, first_error FROM loads WHERE id = 1",
                [],
                |r| {
                    Ok(LoadSummary {
                        at: r.get(0)?,
                        policies: r.get::<_, i64>(1)?.max(0) as u64,
                        invalid: r.get::<_, i64>(2)?.max(0) as u64,
                        errors: r.get::<_, i64>(3)?.max(0) as u64,
                        first_error: r.get(4)?,
                    })
                },
            )
            .optional()
        })
    }

    /// The forget-threshold state of every policy the store knows.
    pub fn baselines(&self) -> Result<HashMap<String, Baseline>, StoreError> {
        self.with(|conn| {
            let mut stmt = conn.prepare(
                "SELECT name, contacts, held_revision, approved_revision, contact_list_id, account
                 FROM policies",
            )?;
            let rows = stmt.query_map([], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    Baseline {
                        contacts: r.get::<_, Option<i64>>(1)?.map(|n| n.max(0) as u64),
                        held_revision: r.get(2)?,
                        approved_revision: r.get(3)?,
                        list: list_of(r.get(5)?, r.get(4)?),
                    },
                ))
            })?;
            rows.collect()
        })
    }

    /// Approves the change held back for `policy` by its forget threshold. Returns the
    /// (revision, contacts before, contacts after) approved, or an error saying why there is
    /// nothing to approve.
    ///
    /// With `expected`, only that exact change is approved: the export may have been cut
    /// further between reading the hold and approving it, and that worse change must be
    /// looked at again, not approved by surprise.
    pub fn approve(
        &self,
        policy: &str,
        expected: Option<&str>,
    ) -> Result<Result<Approval, String>, StoreError> {
        self.with(|conn| {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let row: Option<(Option<String>, Option<i64>, Option<i64>)> = tx
                .query_row(
                    "SELECT held_revision, contacts, held_contacts FROM policies WHERE name = ?1",
                    params![policy],
                    |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
                )
                .optional()?;
            let outcome = match row {
                None => Err(format!(
                    "no policy {policy:?} in the state store; `listwarden status` lists them"
                )),
                Some((None, _, _)) => Err(format!(
                    "policy {policy:?} has no change waiting for approval"
                )),
                Some((Some(revision), before, after))
                    if expected.is_some_and(|e| e != revision) =>
                {
                    Err(format!(
                        "policy {policy:?} now waits with revision {revision} ({} -> {} \
                         contacts), not {}: the change moved since it was checked; check it again",
                        before.unwrap_or(0),
                        after.unwrap_or(0),
                        expected.unwrap_or_default()
                    ))
                }
                Some((Some(revision), before, after)) => {
                    tx.execute(
                        "UPDATE policies SET approved_revision = ?2 WHERE name = ?1",
                        params![policy, revision],
                    )?;
                    Ok(Approval {
                        revision,
                        before: before.unwrap_or(0).max(0) as u64,
                        after: after.unwrap_or(0).max(0) as u64,
                    })
                }
            };
            tx.commit()?;
            Ok(outcome)
        })
    }
}

/// The approval `approve` recorded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Approval {
    pub revision: String,
    pub before: u64,
    pub after: u64,
}

/// A list as the store wrote it; `None` when the row holds no valid list (a policy recorded
/// while invalid), which then compares unequal to every loaded one.
fn list_of(account: String, list: Option<String>) -> Option<ListKey> {
    Some(ListKey::new(
        AccountName::parse(&account).ok()?,
        ContactListId::parse(&list?).ok()?,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::condition::{Ready, Reason};
    use crate::contact::ContactKind;
    use crate::store::{ContactOutcome, Keeper};

    fn list() -> ListKey {
        ListKey::default_account(ContactListId::parse("l1").unwrap())
    }

    #[test]
    fn a_load_spares_the_lists_of_held_policies() {
        let s = Store::in_memory().unwrap();
        let (l1, l2) = (
            list(),
            ListKey::default_account(ContactListId::parse("l2").unwrap()),
        );
        for l in [&l1, &l2] {
            s.record_batch(
                l,
                ContactKind::Email,
                &[("a@x.com", ContactOutcome::Confirmed)],
                1,
            )
            .unwrap();
        }
        let keep_none = |_: ContactKind, _: &str| false;
        let keeper = |list| Keeper {
            list,
            keep: &keep_none,
            revision: None,
            grown_from: None,
        };
        let load = LoadRecord {
            forget: Some(vec![keeper(&l1), keeper(&l2)]),
            spare: vec![&l2],
            ..LoadRecord::default()
        };
        assert_eq!(s.record_load(&load).unwrap(), 1);
        assert!(s.records(&l1).unwrap().emails.is_empty());
        assert_eq!(s.records(&l2).unwrap().emails.len(), 1);
    }

    #[test]
    fn an_approval_needs_a_held_change_and_records_its_revision() {
        let s = Store::in_memory().unwrap();
        let l1 = list();
        let condition = Condition::new(Ready::False, Reason::ThresholdExceeded, "held");
        let update = PolicyUpdate {
            name: "p",
            list: Some(&l1),
            file: Path::new("p.yaml"),
            document: 1,
            revision: Some("sha256:new"),
            attempt: None,
            success: None,
            counts: None,
            condition,
            record_error: true,
        };
        s.write_policies(&[update], 1).unwrap();
        assert!(
            s.approve("nope", None)
                .unwrap()
                .unwrap_err()
                .contains("no policy")
        );
        assert!(
            s.approve("p", None)
                .unwrap()
                .unwrap_err()
                .contains("no change waiting")
        );
        let load = LoadRecord {
            accepted: vec![Accepted {
                name: "p",
                list: &l1,
                file: Path::new("p.yaml"),
                document: 1,
                contacts: 1000,
                revision: "sha256:old",
            }],
            ..LoadRecord::default()
        };
        s.record_load(&load).unwrap();
        let load = LoadRecord {
            held: vec![Held {
                name: "p",
                revision: "sha256:new",
                contacts: 10,
            }],
            ..LoadRecord::default()
        };
        s.record_load(&load).unwrap();
        let moved = s.approve("p", Some("sha256:older")).unwrap().unwrap_err();
        assert!(
            moved.contains("now waits with revision sha256:new"),
            "{moved}"
        );
        let approval = s.approve("p", Some("sha256:new")).unwrap().unwrap();
        assert_eq!((approval.before, approval.after), (1000, 10));
        let b = &s.baselines().unwrap()["p"];
        assert_eq!(b.approved_revision.as_deref(), Some("sha256:new"));
        assert_eq!(b.contacts, Some(1000));
    }
}
