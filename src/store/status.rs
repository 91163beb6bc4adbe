//! Policy and list rows: conditions, counts and syncs, as status shows them. A list's rows
//! are written together in one transaction (and every quiet list of a pass in one).

use std::path::Path;

use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};
use serde::Serialize;

use super::{Store, StoreError, stored_text};
use crate::condition::{Condition, Ready, Reason};
use crate::contact::ListKey;

/// What a sync did for one policy.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct PolicyCounts {
    pub removed: u64,
    pub not_in_list: u64,
    pub failed: u64,
    pub pending: u64,
}

/// One policy row to write. `None` fields keep their stored value.
#[derive(Clone, Debug)]
pub struct PolicyUpdate<'a> {
    pub name: &'a str,
    pub list: Option<&'a ListKey>,
    pub file: &'a Path,
    pub document: usize,
    pub revision: Option<&'a str>,
    /// When and which revision was attempted.
    pub attempt: Option<(i64, &'a str)>,
    /// When and which revision was applied (converged).
    pub success: Option<(i64, &'a str)>,
    pub counts: Option<PolicyCounts>,
    pub condition: Condition,
    /// The condition's message is also the policy's last error (kept until it converges).
    pub record_error: bool,
}

/// What one reconcile (or one pass of quiet lists) writes: policy rows and the list's row.
#[derive(Clone, Debug)]
pub struct StatusWrite<'a> {
    pub policies: Vec<PolicyUpdate<'a>>,
    pub list: Option<(&'a ListKey, ListSync)>,
}

/// A policy's row as status shows it.
#[derive(Clone, Debug, Serialize)]
pub struct PolicyStatus {
    pub name: String,
    /// The account of its list (`default` without a config file).
    pub account: String,
    pub contact_list_id: Option<String>,
    pub file: String,
    pub document: i64,
    pub revision: Option<String>,
    pub last_attempted_revision: Option<String>,
    pub last_applied_revision: Option<String>,
    pub last_attempt_at: Option<i64>,
    pub last_success_at: Option<i64>,
    pub counts: PolicyCounts,
    pub condition: Condition,
    pub last_error: Option<String>,
    /// Contacts webhook events fed the policy (`spec.exclude.events`), not forgotten.
    pub event_contacts: u64,
    /// Event-fed contacts held beyond its `maxRemovalsPerSync` within the storm window,
    /// waiting for `listwarden approve`.
    pub event_contacts_held: u64,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct ListStatus {
    pub account: String,
    pub contact_list_id: String,
    pub last_attempt_at: Option<i64>,
    pub last_success_at: Option<i64>,
    pub last_error: Option<String>,
    pub strategy: Option<String>,
    pub strategy_reason: Option<String>,
    pub requests: i64,
    pub rate_limited: i64,
    pub drift: Option<i64>,
    pub last_observed_at: Option<i64>,
    pub contact_count: Option<i64>,
    pub confirmed: i64,
    pub failed: i64,
    /// Contacts the last answers did not account for (asserted again).
    pub unaccounted: i64,
    pub failing: Vec<FailingContact>,
}

#[derive(Clone, Debug, Serialize)]
pub struct FailingContact {
    pub kind: &'static str,
    pub contact: String,
    pub error: String,
    pub attempts: i64,
    pub failed_at: i64,
}

/// Fields of a list's row written after a reconcile.
#[derive(Clone, Debug, Default)]
pub struct ListSync {
    pub attempt_at: i64,
    pub success: bool,
    pub error: Option<String>,
    pub strategy: Option<String>,
    pub strategy_reason: Option<String>,
    pub requests: u64,
    pub rate_limited: u64,
    pub contact_count: Option<u64>,
}

impl Store {
    /// Writes policy rows in one transaction.
    pub fn write_policies(&self, updates: &[PolicyUpdate<'_>], now: i64) -> Result<(), StoreError> {
        let write = StatusWrite {
            policies: updates.to_vec(),
            list: None,
        };
        self.write_status(std::slice::from_ref(&write), now)
    }

    /// Writes lists' policies and rows in one transaction: a reader (status in another
    /// process) never sees new counts next to an old condition, and a pass over 100,000
    /// quiet lists is one fsync, not 100,000.
    pub fn write_status(&self, writes: &[StatusWrite<'_>], now: i64) -> Result<(), StoreError> {
        self.with(|conn| {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            for w in writes {
                for u in &w.policies {
                    write_policy(&tx, u, now)?;
                }
                if let Some((id, sync)) = &w.list {
                    write_list(&tx, id, sync)?;
                }
            }
            tx.commit()
        })
    }

    pub fn update_list(&self, list: &ListKey, sync: &ListSync) -> Result<(), StoreError> {
        self.with(|conn| write_list(conn, list, sync))
    }

    /// Records what an observation (a full read of the list) found.
    pub fn record_drift(&self, list: &ListKey, drift: u64, at: i64) -> Result<(), StoreError> {
        self.with(|conn| {
            conn.execute(
                "INSERT INTO lists (account, list_id, drift, last_observed_at)
                 VALUES (?4, ?1, ?2, ?3)
                 ON CONFLICT (account, list_id) DO UPDATE SET drift = excluded.drift,
                   last_observed_at = excluded.last_observed_at",
                params![
                    list.as_str(),
                    drift.min(i64::MAX as u64) as i64,
                    at,
                    list.account.as_str()
                ],
            )
            .map(drop)
        })
    }

    /// The last observed drift of every list that was observed.
    /// The accounts the store holds lists of, sorted.
    pub fn list_accounts(&self) -> Result<Vec<String>, StoreError> {
        self.read(|conn| {
            let mut stmt =
                conn.prepare_cached("SELECT DISTINCT account FROM lists ORDER BY account")?;
            let rows = stmt.query_map([], |r| r.get(0))?;
            rows.collect()
        })
    }

    /// (account, list id, drift).
    pub fn drifts(&self) -> Result<Vec<(String, String, u64)>, StoreError> {
        self.with(|conn| {
            let mut stmt = conn.prepare_cached(
                "SELECT account, list_id, drift FROM lists WHERE drift IS NOT NULL",
            )?;
            let rows = stmt.query_map([], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get::<_, i64>(2)?.max(0) as u64))
            })?;
            rows.collect()
        })
    }

    /// How many desired-absent members the list's last observation found.
    pub fn last_drift(&self, list: &ListKey) -> Result<Option<u64>, StoreError> {
        self.with(|conn| {
            Ok(conn
                .query_row(
                    "SELECT drift FROM lists WHERE account = ?2 AND list_id = ?1",
                    params![list.as_str(), list.account.as_str()],
                    |r| r.get::<_, Option<i64>>(0),
                )
                .optional()?
                .flatten()
                .map(|d| d.max(0) as u64))
        })
    }

    pub fn policies(&self) -> Result<Vec<PolicyStatus>, StoreError> {
        self.with(|conn| {
            let mut stmt = conn.prepare(
                "SELECT name, contact_list_id, file, document, revision, last_attempted_revision,
                        last_applied_revision, last_attempt_at, last_success_at, removed,
                        not_in_list, failed, pending, ready, reason, message, last_error, account
                 FROM policies ORDER BY name",
            )?;
            let rows = stmt.query_map([], |r| {
                Ok(PolicyStatus {
                    name: r.get(0)?,
                    contact_list_id: r.get(1)?,
                    file: r.get(2)?,
                    document: r.get(3)?,
                    revision: r.get(4)?,
                    last_attempted_revision: r.get(5)?,
                    last_applied_revision: r.get(6)?,
                    last_attempt_at: r.get(7)?,
                    last_success_at: r.get(8)?,
                    counts: PolicyCounts {
                        removed: r.get::<_, i64>(9)?.max(0) as u64,
                        not_in_list: r.get::<_, i64>(10)?.max(0) as u64,
                        failed: r.get::<_, i64>(11)?.max(0) as u64,
                        pending: r.get::<_, i64>(12)?.max(0) as u64,
                    },
                    condition: Condition {
                        ready: Ready::parse(&r.get::<_, String>(13)?),
                        reason: Reason::parse(&r.get::<_, String>(14)?),
                        message: r.get(15)?,
                    },
                    last_error: r.get(16)?,
                    account: r.get(17)?,
                    event_contacts: 0,
                    event_contacts_held: 0,
                })
            })?;
            rows.collect()
        })
    }

    /// Lists with their counts and up to `failing_per_list` failing contacts each.
    pub fn lists(&self, failing_per_list: usize) -> Result<Vec<ListStatus>, StoreError> {
        self.with(|conn| {
            let mut out: Vec<(i64, ListStatus)> = {
                let mut stmt = conn.prepare(
                    "SELECT l.list_id, l.last_attempt_at, l.last_success_at, l.last_error,
                            l.strategy, l.strategy_reason, l.requests, l.rate_limited, l.drift,
                            l.last_observed_at, l.contact_count, l.account, l.id
                     FROM lists l ORDER BY l.account, l.list_id",
                )?;
                stmt.query_map([], |r| {
                    Ok((
                        r.get::<_, i64>(12)?,
                        ListStatus {
                            account: r.get(11)?,
                            contact_list_id: r.get(0)?,
                            last_attempt_at: r.get(1)?,
                            last_success_at: r.get(2)?,
                            last_error: r.get(3)?,
                            strategy: r.get(4)?,
                            strategy_reason: r.get(5)?,
                            requests: r.get(6)?,
                            rate_limited: r.get(7)?,
                            drift: r.get(8)?,
                            last_observed_at: r.get(9)?,
                            contact_count: r.get(10)?,
                            ..ListStatus::default()
                        },
                    ))
                })?
                .collect::<Result<_, _>>()?
            };
            // The counts are kept per list by the store's triggers: reading them costs the
            // same for ten contacts or ten million; the failing ones have their own index.
            let mut counts = conn
                .prepare_cached("SELECT confirmed, failed, unaccounted FROM lists WHERE id = ?1")?;
            let mut failing = conn.prepare_cached(
                "SELECT kind, contact, last_error, attempts, failed_at FROM contacts
                 WHERE list = ?1 AND failed_at IS NOT NULL
                 ORDER BY failed_at DESC, contact LIMIT ?2",
            )?;
            for (key, l) in &mut out {
                let (confirmed, failed, unaccounted): (i64, i64, i64) =
                    counts.query_row(params![*key], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?;
                l.confirmed = confirmed;
                l.failed = failed;
                l.unaccounted = unaccounted;
                l.failing = failing
                    .query_map(params![*key, failing_per_list as i64], |r| {
                        Ok(FailingContact {
                            kind: if r.get::<_, i64>(0)? == 0 {
                                "email"
                            } else {
                                "contactId"
                            },
                            contact: r.get(1)?,
                            error: r.get::<_, Option<String>>(2)?.unwrap_or_default(),
                            attempts: r.get(3)?,
                            failed_at: r.get(4)?,
                        })
                    })?
                    .collect::<Result<_, _>>()?;
            }
            Ok(out.into_iter().map(|(_, l)| l).collect())
        })
    }
}

pub(super) fn write_policy(
    conn: &Connection,
    u: &PolicyUpdate<'_>,
    now: i64,
) -> rusqlite::Result<()> {
    let mut upsert = conn.prepare_cached(
        "INSERT INTO policies (name, contact_list_id, file, document, revision, updated_at,
                               account)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, COALESCE(?7, 'default'))
         ON CONFLICT (name) DO UPDATE SET
           contact_list_id = COALESCE(excluded.contact_list_id, contact_list_id),
           account = COALESCE(?7, account),
           file = excluded.file, document = excluded.document,
           revision = COALESCE(excluded.revision, revision),
           updated_at = excluded.updated_at",
    )?;
    upsert.execute(params![
        u.name,
        u.list.map(ListKey::as_str),
        u.file.display().to_string(),
        u.document as i64,
        u.revision,
        now,
        u.list.map(|l| l.account.as_str())
    ])?;
    if let Some((at, rev)) = u.attempt {
        conn.prepare_cached(
            "UPDATE policies SET last_attempt_at = ?2, last_attempted_revision = ?3 WHERE name = ?1",
        )?
        .execute(params![u.name, at, rev])?;
    }
    if let Some((at, rev)) = u.success {
        conn.prepare_cached(
            "UPDATE policies SET last_success_at = ?2, last_applied_revision = ?3 WHERE name = ?1",
        )?
        .execute(params![u.name, at, rev])?;
    }
    if let Some(c) = &u.counts {
        let n = |v: u64| v.min(i64::MAX as u64) as i64;
        conn.prepare_cached(
            "UPDATE policies SET removed = ?2, not_in_list = ?3, failed = ?4, pending = ?5
             WHERE name = ?1",
        )?
        .execute(params![
            u.name,
            n(c.removed),
            n(c.not_in_list),
            n(c.failed),
            n(c.pending)
        ])?;
    }
    conn.prepare_cached(
        "UPDATE policies SET ready = ?2, reason = ?3, message = ?4,
           last_error = CASE WHEN ?3 = 'Converged' THEN NULL WHEN ?5 THEN ?4 ELSE last_error END
         WHERE name = ?1",
    )?
    .execute(params![
        u.name,
        u.condition.ready.as_str(),
        u.condition.reason.as_str(),
        stored_text(&u.condition.message),
        u.record_error
    ])?;
    Ok(())
}

fn write_list(conn: &Connection, list: &ListKey, sync: &ListSync) -> rusqlite::Result<()> {
    let n = |v: u64| v.min(i64::MAX as u64) as i64;
    conn.prepare_cached(
        "INSERT INTO lists (list_id, last_attempt_at, last_success_at, last_error, strategy,
                            strategy_reason, requests, rate_limited, contact_count, account)
         VALUES (?1, ?2, CASE WHEN ?3 THEN ?2 END, ?4, ?5, ?6, ?7, ?8, ?9, ?10)
         ON CONFLICT (account, list_id) DO UPDATE SET
           last_attempt_at = excluded.last_attempt_at,
           last_success_at = CASE WHEN ?3 THEN excluded.last_attempt_at ELSE last_success_at END,
           last_error = excluded.last_error,
           strategy = COALESCE(excluded.strategy, strategy),
           strategy_reason = COALESCE(excluded.strategy_reason, strategy_reason),
           requests = excluded.requests, rate_limited = excluded.rate_limited,
           contact_count = COALESCE(excluded.contact_count, contact_count)",
    )?
    .execute(params![
        list.as_str(),
        sync.attempt_at,
        sync.success,
        sync.error.as_deref().map(stored_text),
        sync.strategy,
        sync.strategy_reason.as_deref().map(stored_text),
        n(sync.requests),
        n(sync.rate_limited),
        sync.contact_count.map(n),
        list.account.as_str()
    ])?;
    Ok(())
}
