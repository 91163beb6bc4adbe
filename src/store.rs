//! The state store: what listwarden has confirmed, per list and contact, and the condition of
//! every policy. SQLite (bundled), WAL mode, `synchronous=FULL`.
//!
//! Durability rule: the outcome of each remove request is committed in its own transaction
//! before the next request is sent ([`Store::record_batch`]). A crash or `kill -9` therefore
//! loses at most the request in flight, and since remove is idempotent, the next run simply
//! asserts it again; nothing already confirmed is re-sent until its resync is due.
//!
//! The schema is versioned with `PRAGMA user_version` and migrated forward on open; a
//! database written by a newer listwarden is refused rather than guessed at.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use rusqlite::{Connection, OptionalExtension, params};
use serde::Serialize;

use crate::contact::{ContactKind, ContactListId};
use crate::plan::{ListRecords, Record};

pub const DEFAULT_PATH: &str = ".listwarden/state.db";

/// Says whether a contact of a list is still asked for by some policy.
pub type Keep<'a> = dyn Fn(ContactKind, &str) -> bool + 'a;

/// Each entry migrates from version `i` to `i + 1`.
const MIGRATIONS: &[&str] = &[
    // 0 -> 1
    "CREATE TABLE contacts (
        list_id      TEXT NOT NULL,
        kind         INTEGER NOT NULL,          -- 0 email, 1 contact id
        contact      TEXT NOT NULL,
        confirmed_at INTEGER,                   -- unix seconds, last confirmed absent
        revision     TEXT,                      -- the list's desired revision then
        failed_at    INTEGER,                   -- set while the last attempt failed
        last_error   TEXT,
        attempts     INTEGER NOT NULL DEFAULT 0,
        PRIMARY KEY (list_id, kind, contact)
     ) WITHOUT ROWID;
     CREATE TABLE policies (
        name                    TEXT PRIMARY KEY,
        contact_list_id         TEXT,
        file                    TEXT NOT NULL,
        document                INTEGER NOT NULL,
        revision                TEXT,
        last_attempted_revision TEXT,
        last_applied_revision   TEXT,
        last_attempt_at         INTEGER,
        last_success_at         INTEGER,
        removed                 INTEGER NOT NULL DEFAULT 0,
        not_in_list             INTEGER NOT NULL DEFAULT 0,
        failed                  INTEGER NOT NULL DEFAULT 0,
        pending                 INTEGER NOT NULL DEFAULT 0,
        ready                   TEXT NOT NULL DEFAULT 'Unknown',
        reason                  TEXT NOT NULL DEFAULT 'Progressing',
        message                 TEXT NOT NULL DEFAULT '',
        last_error              TEXT,
        updated_at              INTEGER NOT NULL
     );
     CREATE TABLE lists (
        list_id          TEXT PRIMARY KEY,
        last_attempt_at  INTEGER,
        last_success_at  INTEGER,
        last_error       TEXT,
        strategy         TEXT,
        strategy_reason  TEXT,
        requests         INTEGER NOT NULL DEFAULT 0,
        rate_limited     INTEGER NOT NULL DEFAULT 0,
        drift            INTEGER,
        last_observed_at INTEGER,
        contact_count    INTEGER
     );",
];

pub const SCHEMA_VERSION: i64 = MIGRATIONS.len() as i64;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("state store {path}: {message}")]
    Open { path: String, message: String },
    #[error(
        "state store {path} has schema version {found}, newer than this listwarden understands \
         ({SCHEMA_VERSION}); upgrade listwarden, or point --state at another file"
    )]
    TooNew { path: String, found: i64 },
    #[error("state store: {0}")]
    Sql(#[from] rusqlite::Error),
}

/// What one request established for one contact.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ContactOutcome {
    /// Removed, or reported not in the list: absent either way.
    Confirmed,
    Failed(String),
}

/// Kubernetes-style readiness of a policy.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum Ready {
    True,
    False,
    Unknown,
}

impl Ready {
    fn as_str(self) -> &'static str {
        match self {
            Ready::True => "True",
            Ready::False => "False",
            Ready::Unknown => "Unknown",
        }
    }
    fn parse(s: &str) -> Ready {
        match s {
            "True" => Ready::True,
            "False" => Ready::False,
            _ => Ready::Unknown,
        }
    }
}

/// A policy's `Ready` condition, in the spirit of Flux's kstatus.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Condition {
    pub ready: Ready,
    /// `Converged`, `Progressing`, `PartiallyFailed`, `ListNotFound`, `ListIsSegment`,
    /// `Unauthorized`, `ManifestInvalid`, `Suspended`, `ThresholdExceeded`, `ApiError`.
    pub reason: String,
    pub message: String,
}

impl Condition {
    pub fn new(ready: Ready, reason: &str, message: impl Into<String>) -> Condition {
        Condition {
            ready,
            reason: reason.to_string(),
            message: message.into(),
        }
    }
}

/// What a sync did for one policy.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct PolicyCounts {
    pub removed: u64,
    pub not_in_list: u64,
    pub failed: u64,
    pub pending: u64,
}

/// A policy's row as status shows it.
#[derive(Clone, Debug, Serialize)]
pub struct PolicyStatus {
    pub name: String,
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
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct ListStatus {
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

/// The store. One connection behind a mutex: statements are short, and SQLite serialises
/// writers anyway.
pub struct Store {
    conn: Mutex<Connection>,
    path: PathBuf,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").field("path", &self.path).finish()
    }
}

fn kind_code(kind: ContactKind) -> i64 {
    match kind {
        ContactKind::Email => 0,
        ContactKind::ContactId => 1,
    }
}

impl Store {
    /// Opens (creating it and its directory if needed) and migrates the store.
    pub fn open(path: &Path) -> Result<Store, StoreError> {
        let open_err = |message: String| StoreError::Open {
            path: path.display().to_string(),
            message,
        };
        if let Some(dir) = path.parent()
            && !dir.as_os_str().is_empty()
        {
            std::fs::create_dir_all(dir)
                .map_err(|e| open_err(format!("cannot create its directory: {e}")))?;
        }
        let conn = Connection::open(path).map_err(|e| open_err(e.to_string()))?;
        Store::init(conn, path)
    }

    /// Opens an existing store read-only (for `plan` and `status`): `None` when there is no
    /// store yet. A dry run never creates, migrates or writes it.
    pub fn open_existing(path: &Path) -> Result<Option<Store>, StoreError> {
        if !path.exists() {
            return Ok(None);
        }
        let conn = Connection::open_with_flags(
            path,
            rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_URI,
        )
        .map_err(|e| StoreError::Open {
            path: path.display().to_string(),
            message: e.to_string(),
        })?;
        conn.busy_timeout(std::time::Duration::from_secs(10))?;
        let version: i64 = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
        if version > SCHEMA_VERSION {
            return Err(StoreError::TooNew {
                path: path.display().to_string(),
                found: version,
            });
        }
        if version < SCHEMA_VERSION {
            return Err(StoreError::Open {
                path: path.display().to_string(),
                message: format!(
                    "written by an older listwarden (schema {version}, this one reads \
                     {SCHEMA_VERSION}); run `listwarden apply` once to migrate it"
                ),
            });
        }
        Ok(Some(Store {
            conn: Mutex::new(conn),
            path: path.to_path_buf(),
        }))
    }

    /// An in-memory store, for tests and benchmarks.
    pub fn in_memory() -> Result<Store, StoreError> {
        Store::init(Connection::open_in_memory()?, Path::new(":memory:"))
    }

    fn init(conn: Connection, path: &Path) -> Result<Store, StoreError> {
        conn.busy_timeout(std::time::Duration::from_secs(10))?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "FULL")?;
        let version: i64 = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
        if version > SCHEMA_VERSION {
            return Err(StoreError::TooNew {
                path: path.display().to_string(),
                found: version,
            });
        }
        for (i, migration) in MIGRATIONS.iter().enumerate().skip(version as usize) {
            let tx = conn.unchecked_transaction()?;
            tx.execute_batch(migration)?;
            tx.pragma_update(None, "user_version", (i + 1) as i64)?;
            tx.commit()?;
        }
        Ok(Store {
            conn: Mutex::new(conn),
            path: path.to_path_buf(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn conn(&self) -> std::sync::MutexGuard<'_, Connection> {
        // A panic while holding the lock leaves no half transaction (rusqlite rolls back on
        // drop), so the connection is still usable.
        self.conn.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Everything the store remembers of `list`, for planning.
    pub fn records(&self, list: &ContactListId) -> Result<ListRecords, StoreError> {
        let conn = self.conn();
        let mut stmt = conn.prepare_cached(
            "SELECT kind, contact, confirmed_at, failed_at FROM contacts WHERE list_id = ?1",
        )?;
        let mut out = ListRecords::default();
        let mut rows = stmt.query(params![list.as_str()])?;
        while let Some(row) = rows.next()? {
            let kind: i64 = row.get(0)?;
            let contact: String = row.get(1)?;
            let record = Record {
                confirmed_at: row.get(2)?,
                failed_at: row.get(3)?,
            };
            let map = if kind == 0 {
                &mut out.emails
            } else {
                &mut out.contact_ids
            };
            map.insert(contact.into_boxed_str(), record);
        }
        Ok(out)
    }

    /// Commits the outcome of one request, in one transaction.
    pub fn record_batch(
        &self,
        list: &ContactListId,
        kind: ContactKind,
        outcomes: &[(&str, ContactOutcome)],
        revision: &str,
        now: i64,
    ) -> Result<(), StoreError> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        {
            let mut confirm = tx.prepare_cached(
                "INSERT INTO contacts (list_id, kind, contact, confirmed_at, revision, attempts)
                 VALUES (?1, ?2, ?3, ?4, ?5, 1)
                 ON CONFLICT (list_id, kind, contact) DO UPDATE SET
                   confirmed_at = excluded.confirmed_at, revision = excluded.revision,
                   failed_at = NULL, last_error = NULL, attempts = attempts + 1",
            )?;
            let mut fail = tx.prepare_cached(
                "INSERT INTO contacts (list_id, kind, contact, failed_at, last_error, revision, attempts)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, 1)
                 ON CONFLICT (list_id, kind, contact) DO UPDATE SET
                   failed_at = excluded.failed_at, last_error = excluded.last_error,
                   revision = excluded.revision, attempts = attempts + 1",
            )?;
            for (contact, outcome) in outcomes {
                match outcome {
                    ContactOutcome::Confirmed => {
                        confirm.execute(params![
                            list.as_str(),
                            kind_code(kind),
                            contact,
                            now,
                            revision
                        ])?;
                    }
                    ContactOutcome::Failed(msg) => {
                        fail.execute(params![
                            list.as_str(),
                            kind_code(kind),
                            contact,
                            now,
                            msg,
                            revision
                        ])?;
                    }
                }
            }
        }
        tx.commit()?;
        Ok(())
    }

    /// Forgets contacts that no loaded policy asks for any more (no API call: a policy only
    /// says who must not be in a list). `keep(kind, contact)` says who stays. Lists not in
    /// `lists` are forgotten whole. Only call this after a load without errors, or the
    /// contacts of a temporarily broken manifest would be forgotten and re-sent later.
    pub fn forget_unlisted(
        &self,
        lists: &[(&ContactListId, &Keep<'_>)],
    ) -> Result<u64, StoreError> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        let mut forgotten = 0u64;
        {
            let known: Vec<String> = {
                let mut stmt = tx.prepare("SELECT DISTINCT list_id FROM contacts")?;
                stmt.query_map([], |r| r.get(0))?
                    .collect::<Result<_, _>>()?
            };
            for list_id in known {
                let keep = lists.iter().find(|(l, _)| l.as_str() == list_id);
                match keep {
                    None => {
                        forgotten += tx
                            .execute("DELETE FROM contacts WHERE list_id = ?1", params![list_id])?
                            as u64;
                    }
                    Some((_, keep)) => {
                        let mut stale = Vec::new();
                        {
                            let mut stmt = tx.prepare_cached(
                                "SELECT kind, contact FROM contacts WHERE list_id = ?1",
                            )?;
                            let mut rows = stmt.query(params![list_id])?;
                            while let Some(row) = rows.next()? {
                                let kind: i64 = row.get(0)?;
                                let contact: String = row.get(1)?;
                                let k = if kind == 0 {
                                    ContactKind::Email
                                } else {
                                    ContactKind::ContactId
                                };
                                if !keep(k, &contact) {
                                    stale.push((kind, contact));
                                }
                            }
                        }
                        let mut del = tx.prepare_cached(
                            "DELETE FROM contacts WHERE list_id = ?1 AND kind = ?2 AND contact = ?3",
                        )?;
                        for (kind, contact) in stale {
                            forgotten += del.execute(params![list_id, kind, contact])? as u64;
                        }
                    }
                }
            }
        }
        tx.commit()?;
        Ok(forgotten)
    }

    /// Writes (or creates) a policy's row. `None` fields keep their stored value.
    #[allow(clippy::too_many_arguments)]
    pub fn update_policy(
        &self,
        name: &str,
        list: Option<&str>,
        file: &Path,
        document: usize,
        revision: Option<&str>,
        attempt: Option<(i64, &str)>,
        success: Option<(i64, &str)>,
        counts: Option<&PolicyCounts>,
        condition: &Condition,
        last_error: Option<&str>,
        now: i64,
    ) -> Result<(), StoreError> {
        let mut guard = self.conn();
        // One transaction: a reader (status in another process) never sees new counts next to
        // an old condition, and it is one fsync instead of five.
        let conn = guard.transaction()?;
        conn.execute(
            "INSERT INTO policies (name, contact_list_id, file, document, revision, updated_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)
             ON CONFLICT (name) DO UPDATE SET
               contact_list_id = COALESCE(excluded.contact_list_id, contact_list_id),
               file = excluded.file, document = excluded.document,
               revision = COALESCE(excluded.revision, revision),
               updated_at = excluded.updated_at",
            params![
                name,
                list,
                file.display().to_string(),
                document as i64,
                revision,
                now
            ],
        )?;
        if let Some((at, rev)) = attempt {
            conn.execute(
                "UPDATE policies SET last_attempt_at = ?2, last_attempted_revision = ?3 WHERE name = ?1",
                params![name, at, rev],
            )?;
        }
        if let Some((at, rev)) = success {
            conn.execute(
                "UPDATE policies SET last_success_at = ?2, last_applied_revision = ?3 WHERE name = ?1",
                params![name, at, rev],
            )?;
        }
        if let Some(c) = counts {
            conn.execute(
                "UPDATE policies SET removed = ?2, not_in_list = ?3, failed = ?4, pending = ?5 WHERE name = ?1",
                params![
                    name,
                    c.removed as i64,
                    c.not_in_list as i64,
                    c.failed as i64,
                    c.pending as i64
                ],
            )?;
        }
        conn.execute(
            "UPDATE policies SET ready = ?2, reason = ?3, message = ?4,
               last_error = CASE WHEN ?3 = 'Converged' THEN NULL ELSE COALESCE(?5, last_error) END
             WHERE name = ?1",
            params![
                name,
                condition.ready.as_str(),
                condition.reason,
                condition.message,
                last_error
            ],
        )?;
        conn.commit()?;
        Ok(())
    }

    /// Marks every policy that came from `file` (in an earlier load) with `condition`: how a
    /// manifest that no longer parses gets its policies reported as `ManifestInvalid`.
    pub fn mark_file_policies(
        &self,
        file: &Path,
        condition: &Condition,
        now: i64,
    ) -> Result<usize, StoreError> {
        let conn = self.conn();
        Ok(conn.execute(
            "UPDATE policies SET ready = ?2, reason = ?3, message = ?4, last_error = ?4, updated_at = ?5
             WHERE file = ?1",
            params![
                file.display().to_string(),
                condition.ready.as_str(),
                condition.reason,
                condition.message,
                now
            ],
        )?)
    }

    /// Drops the status of policies that are not in `keep` and whose file is not in
    /// `unparsed_files` (a policy whose manifest was deleted disappears after the next load).
    pub fn prune_policies(
        &self,
        keep: &[&str],
        unparsed_files: &[&Path],
    ) -> Result<usize, StoreError> {
        let conn = self.conn();
        let mut stmt = conn.prepare("SELECT name, file FROM policies")?;
        let rows: Vec<(String, String)> = stmt
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
            .collect::<Result<_, _>>()?;
        let mut n = 0;
        for (name, file) in rows {
            let kept = keep.contains(&name.as_str())
                || unparsed_files
                    .iter()
                    .any(|f| f.display().to_string() == file);
            if !kept {
                n += conn.execute("DELETE FROM policies WHERE name = ?1", params![name])?;
            }
        }
        Ok(n)
    }

    pub fn update_list(&self, list: &str, sync: &ListSync) -> Result<(), StoreError> {
        let conn = self.conn();
        conn.execute(
            "INSERT INTO lists (list_id, last_attempt_at, last_success_at, last_error, strategy,
                                strategy_reason, requests, rate_limited, contact_count)
             VALUES (?1, ?2, CASE WHEN ?3 THEN ?2 END, ?4, ?5, ?6, ?7, ?8, ?9)
             ON CONFLICT (list_id) DO UPDATE SET
               last_attempt_at = excluded.last_attempt_at,
               last_success_at = CASE WHEN ?3 THEN excluded.last_attempt_at ELSE last_success_at END,
               last_error = excluded.last_error,
               strategy = COALESCE(excluded.strategy, strategy),
               strategy_reason = COALESCE(excluded.strategy_reason, strategy_reason),
               requests = excluded.requests, rate_limited = excluded.rate_limited,
               contact_count = COALESCE(excluded.contact_count, contact_count)",
            params![
                list,
                sync.attempt_at,
                sync.success,
                sync.error,
                sync.strategy,
                sync.strategy_reason,
                sync.requests as i64,
                sync.rate_limited as i64,
                sync.contact_count.map(|n| n as i64)
            ],
        )?;
        Ok(())
    }

    /// Records what an observation (a full read of the list) found.
    pub fn record_drift(&self, list: &str, drift: u64, at: i64) -> Result<(), StoreError> {
        let conn = self.conn();
        conn.execute(
            "INSERT INTO lists (list_id, drift, last_observed_at) VALUES (?1, ?2, ?3)
             ON CONFLICT (list_id) DO UPDATE SET drift = excluded.drift,
               last_observed_at = excluded.last_observed_at",
            params![list, drift as i64, at],
        )?;
        Ok(())
    }

    /// The last observed drift of every list that was observed.
    pub fn drifts(&self) -> Result<Vec<(String, u64)>, StoreError> {
        let conn = self.conn();
        let mut stmt =
            conn.prepare_cached("SELECT list_id, drift FROM lists WHERE drift IS NOT NULL")?;
        let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get::<_, i64>(1)?.max(0) as u64)))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// How many desired-absent members the list's last observation found.
    pub fn last_drift(&self, list: &str) -> Result<Option<u64>, StoreError> {
        let conn = self.conn();
        Ok(conn
            .query_row(
                "SELECT drift FROM lists WHERE list_id = ?1",
                params![list],
                |r| r.get::<_, Option<i64>>(0),
            )
            .optional()?
            .flatten()
            .map(|d| d.max(0) as u64))
    }

    pub fn policies(&self) -> Result<Vec<PolicyStatus>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn.prepare(
            "SELECT name, contact_list_id, file, document, revision, last_attempted_revision,
                    last_applied_revision, last_attempt_at, last_success_at, removed, not_in_list,
                    failed, pending, ready, reason, message, last_error
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
                    removed: r.get::<_, i64>(9)? as u64,
                    not_in_list: r.get::<_, i64>(10)? as u64,
                    failed: r.get::<_, i64>(11)? as u64,
                    pending: r.get::<_, i64>(12)? as u64,
                },
                condition: Condition {
                    ready: Ready::parse(&r.get::<_, String>(13)?),
                    reason: r.get(14)?,
                    message: r.get(15)?,
                },
                last_error: r.get(16)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Lists with their counts and up to `failing_per_list` failing contacts each.
    pub fn lists(&self, failing_per_list: usize) -> Result<Vec<ListStatus>, StoreError> {
        let conn = self.conn();
        let mut out: Vec<ListStatus> = {
            let mut stmt = conn.prepare(
                "SELECT l.list_id, l.last_attempt_at, l.last_success_at, l.last_error, l.strategy,
                        l.strategy_reason, l.requests, l.rate_limited, l.drift, l.last_observed_at,
                        l.contact_count
                 FROM lists l ORDER BY l.list_id",
            )?;
            stmt.query_map([], |r| {
                Ok(ListStatus {
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
                })
            })?
            .collect::<Result<_, _>>()?
        };
        let mut counts = conn.prepare_cached(
            "SELECT COUNT(confirmed_at) FILTER (WHERE failed_at IS NULL),
                    COUNT(failed_at)
             FROM contacts WHERE list_id = ?1",
        )?;
        let mut failing = conn.prepare_cached(
            "SELECT kind, contact, last_error, attempts, failed_at FROM contacts
             WHERE list_id = ?1 AND failed_at IS NOT NULL ORDER BY failed_at DESC, contact LIMIT ?2",
        )?;
        for l in &mut out {
            let (confirmed, failed): (i64, i64) =
                counts.query_row(params![l.contact_list_id], |r| Ok((r.get(0)?, r.get(1)?)))?;
            l.confirmed = confirmed;
            l.failed = failed;
            l.failing = failing
                .query_map(params![l.contact_list_id, failing_per_list as i64], |r| {
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
        Ok(out)
    }

    /// The error of one contact, if its last attempt failed (for tests and status).
    pub fn contact_error(
        &self,
        list: &str,
        kind: ContactKind,
        contact: &str,
    ) -> Result<Option<String>, StoreError> {
        let conn = self.conn();
        Ok(conn
            .query_row(
                "SELECT last_error FROM contacts WHERE list_id = ?1 AND kind = ?2 AND contact = ?3",
                params![list, kind_code(kind), contact],
                |r| r.get::<_, Option<String>>(0),
            )
            .optional()?
            .flatten())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn list() -> ContactListId {
        ContactListId::parse("l1").unwrap()
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
            "rev1",
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
            "rev1",
            200,
        )
        .unwrap();
        let r = s.records(&list()).unwrap();
        assert_eq!(r.emails["b@x.com"].failed_at, None);
        assert_eq!(r.emails["b@x.com"].confirmed_at, Some(200));
    }

    #[test]
    fn contacts_no_policy_asks_for_are_forgotten() {
        let s = Store::in_memory().unwrap();
        let l2 = ContactListId::parse("l2").unwrap();
        for l in [&list(), &l2] {
            s.record_batch(
                l,
                ContactKind::Email,
                &[
                    ("a@x.com", ContactOutcome::Confirmed),
                    ("b@x.com", ContactOutcome::Confirmed),
                ],
                "r",
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
    fn a_store_from_a_newer_listwarden_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.db");
        {
            let conn = Connection::open(&path).unwrap();
            conn.pragma_update(None, "user_version", SCHEMA_VERSION + 1)
                .unwrap();
        }
        let err = Store::open(&path).unwrap_err();
        assert!(matches!(err, StoreError::TooNew { .. }), "{err}");
        assert!(err.to_string().contains("upgrade listwarden"));
    }

    #[test]
    fn reopening_keeps_the_schema_and_the_data() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/state.db");
        {
            let s = Store::open(&path).unwrap();
            s.record_batch(
                &list(),
                ContactKind::ContactId,
                &[("c1", ContactOutcome::Confirmed)],
                "r",
                5,
            )
            .unwrap();
        }
        let s = Store::open(&path).unwrap();
        assert_eq!(
            s.records(&list()).unwrap().contact_ids["c1"].confirmed_at,
            Some(5)
        );
    }
}
