//! The state store: what listwarden has confirmed, per list and contact, and the condition of
//! every policy. SQLite (bundled), WAL mode, `synchronous=FULL`.
//!
//! Durability rule: the outcome of each remove request is committed in its own transaction
//! before the next request is sent ([`Store::record_batch`]). A crash or `kill -9` therefore
//! loses at most the request in flight, and since remove is idempotent, the next run simply
//! asserts it again; nothing already confirmed is re-sent until its resync is due.
//!
//! One writer: `apply` and `run` hold a [`StoreLock`] for their whole life, and opening the
//! store for writing needs it ([`Store::open`]), so migrations also run under it. `plan` and
//! `status` open it read-only; `approve` writes one row in a short transaction.
//!
//! The store holds contact addresses (personal data): its directory is created `0700` and
//! the database `0600`, whatever the umask (SQLite gives its WAL the database's mode).
//!
//! The schema is versioned with `PRAGMA user_version` and migrated forward on open; a
//! database written by a newer listwarden is refused rather than guessed at.

mod lock;

use std::collections::HashMap;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use rusqlite::{Connection, ErrorCode, OptionalExtension, params};
use serde::Serialize;

use crate::contact::{ContactKind, ContactListId};
pub use lock::{LockError, StoreLock, create_private_dir, lock_path};

pub const DEFAULT_PATH: &str = ".listwarden/state.db";

/// Longest text (a message, an error) written to the store. Server texts and diagnostics are
/// cut before they get here; this is the last guard, so a 10 MB message never makes a 50 MB
/// database.
pub const MAX_STORED_TEXT: usize = 1024;

/// A contact left unaccounted by this many answers in a row is reported failed.
pub const UNACCOUNTED_LIMIT: i64 = 3;

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
    // 1 -> 2: per-contact streaks of answers that did not account for a contact; each
    // policy's accepted size, held change and approval (the forget threshold); the last load.
    "ALTER TABLE contacts ADD COLUMN unaccounted INTEGER NOT NULL DEFAULT 0;
     ALTER TABLE policies ADD COLUMN contacts INTEGER;
     ALTER TABLE policies ADD COLUMN held_revision TEXT;
     ALTER TABLE policies ADD COLUMN held_contacts INTEGER;
     ALTER TABLE policies ADD COLUMN approved_revision TEXT;
     CREATE TABLE loads (
        id          INTEGER PRIMARY KEY CHECK (id = 1),
        at          INTEGER NOT NULL,
        policies    INTEGER NOT NULL,
        invalid     INTEGER NOT NULL,
        errors      INTEGER NOT NULL,
        first_error TEXT
     );",
];

pub const SCHEMA_VERSION: i64 = MIGRATIONS.len() as i64;

/// Tables every listwarden store has, whatever its version.
const OWN_TABLES: [&str; 3] = ["contacts", "policies", "lists"];

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("state store {path}: {message}")]
    Open { path: String, message: String },
    #[error(
        "state store {path} has schema version {found}, newer than this listwarden understands \
         ({SCHEMA_VERSION}); upgrade listwarden, or point --state at another file"
    )]
    TooNew { path: String, found: i64 },
    #[error("{}", describe(path, source))]
    Sql {
        path: String,
        source: rusqlite::Error,
    },
    #[error(transparent)]
    Lock(#[from] LockError),
    #[error(
        "state store {path} was deleted or replaced while listwarden had it open; what is \
         recorded now would be lost: restart listwarden (it resumes from the file at {path})"
    )]
    Replaced { path: String },
}

impl StoreError {
    /// True when the store could not be written (disk full, I/O error, read-only, replaced):
    /// the daemon is not ready while that lasts.
    pub fn is_write_failure(&self) -> bool {
        match self {
            StoreError::Replaced { .. } => true,
            StoreError::Sql { source, .. } => matches!(
                source.sqlite_error_code(),
                Some(
                    ErrorCode::DiskFull
                        | ErrorCode::SystemIoFailure
                        | ErrorCode::ReadOnly
                        | ErrorCode::CannotOpen
                        | ErrorCode::PermissionDenied
                        | ErrorCode::DatabaseCorrupt
                )
            ),
            _ => false,
        }
    }
}

/// SQLite's messages name the symptom; these say what it means for a state store and what to
/// do about it.
fn describe(path: &str, e: &rusqlite::Error) -> String {
    let what = match e.sqlite_error_code() {
        Some(ErrorCode::DiskFull | ErrorCode::SystemIoFailure) => {
            return format!(
                "state store: disk full (or I/O error) at {path}; free space on its disk: \
                 listwarden resumes where it stopped ({e})"
            );
        }
        Some(ErrorCode::ReadOnly) => {
            "cannot write: the file or its directory is read-only; give listwarden write access"
        }
        Some(ErrorCode::PermissionDenied | ErrorCode::CannotOpen) => {
            "cannot open it (permission denied, or its directory is missing); run as the \
             store's owner or choose another --state"
        }
        Some(ErrorCode::NotADatabase) => {
            "not a listwarden state store (not a SQLite database); point --state at a new file"
        }
        Some(ErrorCode::DatabaseCorrupt) => {
            "the database is corrupt; restore it from a backup, or start a new store (everything \
             is then asserted again once)"
        }
        Some(ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked) => {
            "busy: another process kept it locked for too long"
        }
        _ => return format!("state store {path}: {e}"),
    };
    format!("state store {path}: {what} ({e})")
}

/// `text` cut to [`MAX_STORED_TEXT`] bytes at a char boundary, with an ellipsis.
pub fn stored_text(text: &str) -> std::borrow::Cow<'_, str> {
    if text.len() <= MAX_STORED_TEXT {
        return std::borrow::Cow::Borrowed(text);
    }
    let mut end = MAX_STORED_TEXT - 3;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    std::borrow::Cow::Owned(format!("{}…", &text[..end]))
}

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
    pub emails: HashMap<Box<str>, Record>,
    pub contact_ids: HashMap<Box<str>, Record>,
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

/// One policy row to write. `None` fields keep their stored value.
#[derive(Clone, Debug)]
pub struct PolicyUpdate<'a> {
    pub name: &'a str,
    pub list: Option<&'a str>,
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
    pub list: Option<(&'a str, ListSync)>,
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

/// What the store knows of a policy for the forget threshold: the size of its last accepted
/// load, the change held back, and the change a person approved.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Baseline {
    pub contacts: Option<u64>,
    pub held_revision: Option<String>,
    pub approved_revision: Option<String>,
}

/// A policy whose load is accepted: its size becomes the new baseline (its row is created
/// when it is new, so the next load has something to compare with).
#[derive(Clone, Debug)]
pub struct Accepted<'a> {
    pub name: &'a str,
    pub list: &'a str,
    pub file: &'a Path,
    pub document: usize,
    pub contacts: u64,
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
    /// Contacts to keep per list when forgetting (`None`: forget nothing). Lists not named
    /// are forgotten whole, except those in `spare`.
    pub forget: Option<Vec<(&'a ContactListId, &'a Keep<'a>)>>,
    /// Lists whose contacts are never forgotten by this load (a policy on them is held).
    pub spare: Vec<&'a ContactListId>,
    pub now: i64,
}

/// The store. One connection behind a mutex: statements are short, and SQLite serialises
/// writers anyway.
pub struct Store {
    conn: Mutex<Connection>,
    path: PathBuf,
    /// Device and inode of the file opened: a file deleted or replaced under a running daemon
    /// is detected ([`Store::check_file`]) instead of written to in vain.
    identity: Option<(u64, u64)>,
    /// Held for as long as the store is open for writing.
    _lock: Option<StoreLock>,
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

fn file_identity(path: &Path) -> Option<(u64, u64)> {
    std::fs::metadata(path).ok().map(|m| (m.dev(), m.ino()))
}

impl Store {
    /// Opens (creating it and its directory if needed) and migrates the store, holding its
    /// lock for as long as it is open: a second writer is refused, naming the holder.
    pub fn open(path: &Path, command: &str) -> Result<Store, StoreError> {
        let lock = StoreLock::try_acquire(path, command)?;
        Store::open_locked(path, lock)
    }

    /// Like [`Store::open`], with a lock already taken (say, after [`StoreLock::wait`]).
    pub fn open_locked(path: &Path, lock: StoreLock) -> Result<Store, StoreError> {
        let open_err = |message: String| StoreError::Open {
            path: path.display().to_string(),
            message,
        };
        check_openable(path)?;
        create_private_dir(path)
            .map_err(|e| open_err(format!("cannot create its directory: {e}")))?;
        match std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
        {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                let meta = std::fs::metadata(path).map_err(|e| open_err(io_text(&e)))?;
                if meta.permissions().mode() & 0o077 != 0 {
                    tracing::warn!(
                        path = %path.display(),
                        "the state store was readable by others; making it private (0600): it holds contact addresses"
                    );
                    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
                        .map_err(|e| open_err(io_text(&e)))?;
                }
            }
            Err(e) => return Err(open_err(io_text(&e))),
        }
        let conn = Connection::open(path).map_err(|e| sql(path, e))?;
        let mut store = Store::init(conn, path, true)?;
        store._lock = Some(lock);
        Ok(store)
    }

    /// Opens an existing store read-only (for `plan` and `status`): `None` when there is no
    /// store yet. A dry run never creates, migrates or writes it.
    pub fn open_existing(path: &Path) -> Result<Option<Store>, StoreError> {
        if !path.exists() && !path.is_symlink() {
            return Ok(None);
        }
        Store::open_current(path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY).map(Some)
    }

    /// Opens an existing store to record an approval: writable, but never created or
    /// migrated, so it needs no lock (a running daemon keeps it).
    pub fn open_for_approval(path: &Path) -> Result<Store, StoreError> {
        if !path.exists() {
            return Err(StoreError::Open {
                path: path.display().to_string(),
                message: "no such file: run `listwarden apply` (or `run`) first, or pass --state"
                    .into(),
            });
        }
        Store::open_current(path, rusqlite::OpenFlags::SQLITE_OPEN_READ_WRITE)
    }

    fn open_current(path: &Path, flags: rusqlite::OpenFlags) -> Result<Store, StoreError> {
        check_openable(path)?;
        let conn = Connection::open_with_flags(path, flags | rusqlite::OpenFlags::SQLITE_OPEN_URI)
            .map_err(|e| sql(path, e))?;
        conn.busy_timeout(std::time::Duration::from_secs(10))
            .map_err(|e| sql(path, e))?;
        let version = schema_version(&conn, path)?;
        if version < SCHEMA_VERSION {
            return Err(StoreError::Open {
                path: path.display().to_string(),
                message: format!(
                    "written by an older listwarden (schema {version}, this one reads \
                     {SCHEMA_VERSION}); run `listwarden apply` once to migrate it"
                ),
            });
        }
        Ok(Store {
            conn: Mutex::new(conn),
            path: path.to_path_buf(),
            identity: file_identity(path),
            _lock: None,
        })
    }

    /// An in-memory store, for tests and benchmarks.
    pub fn in_memory() -> Result<Store, StoreError> {
        let path = Path::new(":memory:");
        let conn = Connection::open_in_memory().map_err(|e| sql(path, e))?;
        Store::init(conn, path, false)
    }

    fn init(conn: Connection, path: &Path, on_disk: bool) -> Result<Store, StoreError> {
        let setup = |conn: &Connection| -> rusqlite::Result<()> {
            conn.busy_timeout(std::time::Duration::from_secs(10))?;
            conn.pragma_update(None, "journal_mode", "WAL")?;
            conn.pragma_update(None, "synchronous", "FULL")
        };
        setup(&conn).map_err(|e| sql(path, e))?;
        let version = schema_version(&conn, path)?;
        for (i, migration) in MIGRATIONS.iter().enumerate().skip(version as usize) {
            let migrate = || -> rusqlite::Result<()> {
                let tx = conn.unchecked_transaction()?;
                tx.execute_batch(migration)?;
                tx.pragma_update(None, "user_version", (i + 1) as i64)?;
                tx.commit()
            };
            migrate().map_err(|e| sql(path, e))?;
        }
        Ok(Store {
            conn: Mutex::new(conn),
            path: path.to_path_buf(),
            identity: on_disk.then(|| file_identity(path)).flatten(),
            _lock: None,
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

    /// Runs `f` on the connection; a SQLite error is named with the store's path and
    /// explained.
    fn with<T>(
        &self,
        f: impl FnOnce(&mut Connection) -> rusqlite::Result<T>,
    ) -> Result<T, StoreError> {
        let mut guard = self.conn();
        f(&mut guard).map_err(|e| sql(&self.path, e))
    }

    /// Fails when the file at the store's path is no longer the one opened (deleted, or
    /// replaced by another file): everything written now would be lost.
    pub fn check_file(&self) -> Result<(), StoreError> {
        match self.identity {
            Some(id) if file_identity(&self.path) != Some(id) => Err(StoreError::Replaced {
                path: self.path.display().to_string(),
            }),
            _ => Ok(()),
        }
    }

    /// Writes one small row and commits, to learn whether the store can be written again
    /// (after a full disk was freed, say).
    pub fn probe_write(&self) -> Result<(), StoreError> {
        self.check_file()?;
        self.with(|conn| {
            // The row changes every time, so SQLite really writes and syncs a page.
            conn.execute(
                "INSERT INTO loads (id, at, policies, invalid, errors) VALUES (1, 0, 0, 0, 0)
                 ON CONFLICT (id) DO UPDATE SET at = at + 0 * random()",
                [],
            )
            .map(drop)
        })
    }

    /// Everything the store remembers of `list`, for planning.
    pub fn records(&self, list: &ContactListId) -> Result<ListRecords, StoreError> {
        self.with(|conn| {
            let mut stmt = conn.prepare_cached(
                "SELECT kind, contact, confirmed_at, failed_at, unaccounted FROM contacts
                 WHERE list_id = ?1",
            )?;
            let mut out = ListRecords::default();
            let mut rows = stmt.query(params![list.as_str()])?;
            while let Some(row) = rows.next()? {
                let kind: i64 = row.get(0)?;
                let contact: String = row.get(1)?;
                let record = Record {
                    confirmed_at: row.get(2)?,
                    failed_at: row.get(3)?,
                    unaccounted: row.get::<_, i64>(4)?.clamp(0, u8::MAX as i64) as u8,
                };
                let map = if kind == 0 {
                    &mut out.emails
                } else {
                    &mut out.contact_ids
                };
                map.insert(contact.into_boxed_str(), record);
            }
            Ok(out)
        })
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
        self.check_file()?;
        self.with(|conn| {
            let tx = conn.transaction()?;
            {
                let mut confirm = tx.prepare_cached(
                    "INSERT INTO contacts (list_id, kind, contact, confirmed_at, revision, attempts)
                     VALUES (?1, ?2, ?3, ?4, ?5, 1)
                     ON CONFLICT (list_id, kind, contact) DO UPDATE SET
                       confirmed_at = excluded.confirmed_at, revision = excluded.revision,
                       failed_at = NULL, last_error = NULL, unaccounted = 0,
                       attempts = attempts + 1",
                )?;
                let mut fail = tx.prepare_cached(
                    "INSERT INTO contacts (list_id, kind, contact, failed_at, last_error, revision, attempts)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, 1)
                     ON CONFLICT (list_id, kind, contact) DO UPDATE SET
                       failed_at = excluded.failed_at, last_error = excluded.last_error,
                       revision = excluded.revision, unaccounted = 0, attempts = attempts + 1",
                )?;
                // The streak grows; at the limit the contact is failed with that reason (and
                // the streak starts again, so a failed contact keeps being retried).
                let mut unaccounted = tx.prepare_cached(
                    "INSERT INTO contacts (list_id, kind, contact, revision, attempts, unaccounted)
                     VALUES (?1, ?2, ?3, ?4, 1, 1)
                     ON CONFLICT (list_id, kind, contact) DO UPDATE SET
                       revision = excluded.revision, attempts = attempts + 1,
                       unaccounted = unaccounted + 1
                     RETURNING unaccounted",
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
                                stored_text(msg),
                                revision
                            ])?;
                        }
                        ContactOutcome::Unaccounted => {
                            let streak: i64 = unaccounted.query_row(
                                params![list.as_str(), kind_code(kind), contact, revision],
                                |r| r.get(0),
                            )?;
                            if streak >= UNACCOUNTED_LIMIT {
                                let msg = unaccounted_message(streak);
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
            }
            tx.commit()
        })
    }

    /// Forgets contacts that no loaded policy asks for any more (no API call: a policy only
    /// says who must not be in a list). `keep(kind, contact)` says who stays. Lists not in
    /// `lists` are forgotten whole. Only call this after a load without errors, or the
    /// contacts of a temporarily broken manifest would be forgotten and re-sent later.
    pub fn forget_unlisted(
        &self,
        lists: &[(&ContactListId, &Keep<'_>)],
    ) -> Result<u64, StoreError> {
        self.with(|conn| {
            let tx = conn.transaction()?;
            let n = forget_in(&tx, lists, &[])?;
            tx.commit()?;
            Ok(n)
        })
    }

    /// Writes what a manifest load says, in one transaction (one fsync, however many
    /// policies): conditions of invalid and held policies, files that did not parse, pruned
    /// rows, baselines and holds of the forget threshold, forgotten contacts, the summary.
    /// Returns how many contacts were forgotten.
    pub fn record_load(&self, load: &LoadRecord<'_>) -> Result<u64, StoreError> {
        self.with(|conn| {
            let tx = conn.transaction()?;
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
                        condition.reason,
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
                let rows: Vec<(String, String)> = {
                    let mut stmt = tx.prepare("SELECT name, file FROM policies")?;
                    stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
                        .collect::<Result<_, _>>()?
                };
                let keep: std::collections::HashSet<&str> = keep.iter().copied().collect();
                for (name, file) in rows {
                    if !keep.contains(name.as_str()) && !unparsed.contains(&file) {
                        tx.execute("DELETE FROM policies WHERE name = ?1", params![name])?;
                    }
                }
            }
            for a in &load.accepted {
                tx.prepare_cached(
                    "INSERT INTO policies (name, contact_list_id, file, document, updated_at, contacts)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6)
                     ON CONFLICT (name) DO UPDATE SET contacts = excluded.contacts,
                       held_revision = NULL, held_contacts = NULL, approved_revision = NULL",
                )?
                .execute(params![
                    a.name,
                    a.list,
                    a.file.display().to_string(),
                    a.document as i64,
                    load.now,
                    a.contacts.min(i64::MAX as u64) as i64
                ])?;
            }
            for h in &load.held {
                tx.execute(
                    "UPDATE policies SET held_revision = ?2, held_contacts = ?3 WHERE name = ?1",
                    params![h.name, h.revision, h.contacts.min(i64::MAX as u64) as i64],
                )?;
            }
            let forgotten = match &load.forget {
                Some(lists) => forget_in(&tx, lists, &load.spare)?,
                None => 0,
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
            let mut stmt = conn
                .prepare("SELECT name, contacts, held_revision, approved_revision FROM policies")?;
            let rows = stmt.query_map([], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    Baseline {
                        contacts: r.get::<_, Option<i64>>(1)?.map(|n| n.max(0) as u64),
                        held_revision: r.get(2)?,
                        approved_revision: r.get(3)?,
                    },
                ))
            })?;
            rows.collect()
        })
    }

    /// Approves the change held back for `policy` by its forget threshold. Returns the
    /// (revision, contacts before, contacts after) approved, or an error saying why there is
    /// nothing to approve.
    pub fn approve(&self, policy: &str) -> Result<Result<Approval, String>, StoreError> {
        self.with(|conn| {
            let tx = conn.transaction()?;
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
            let tx = conn.transaction()?;
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

    pub fn update_list(&self, list: &str, sync: &ListSync) -> Result<(), StoreError> {
        self.with(|conn| write_list(conn, list, sync))
    }

    /// Records what an observation (a full read of the list) found.
    pub fn record_drift(&self, list: &str, drift: u64, at: i64) -> Result<(), StoreError> {
        self.with(|conn| {
            conn.execute(
                "INSERT INTO lists (list_id, drift, last_observed_at) VALUES (?1, ?2, ?3)
                 ON CONFLICT (list_id) DO UPDATE SET drift = excluded.drift,
                   last_observed_at = excluded.last_observed_at",
                params![list, drift.min(i64::MAX as u64) as i64, at],
            )
            .map(drop)
        })
    }

    /// The last observed drift of every list that was observed.
    pub fn drifts(&self) -> Result<Vec<(String, u64)>, StoreError> {
        self.with(|conn| {
            let mut stmt =
                conn.prepare_cached("SELECT list_id, drift FROM lists WHERE drift IS NOT NULL")?;
            let rows =
                stmt.query_map([], |r| Ok((r.get(0)?, r.get::<_, i64>(1)?.max(0) as u64)))?;
            rows.collect()
        })
    }

    /// How many desired-absent members the list's last observation found.
    pub fn last_drift(&self, list: &str) -> Result<Option<u64>, StoreError> {
        self.with(|conn| {
            Ok(conn
                .query_row(
                    "SELECT drift FROM lists WHERE list_id = ?1",
                    params![list],
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
                        not_in_list, failed, pending, ready, reason, message, last_error
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
                        reason: r.get(14)?,
                        message: r.get(15)?,
                    },
                    last_error: r.get(16)?,
                })
            })?;
            rows.collect()
        })
    }

    /// Lists with their counts and up to `failing_per_list` failing contacts each.
    pub fn lists(&self, failing_per_list: usize) -> Result<Vec<ListStatus>, StoreError> {
        self.with(|conn| {
            let mut out: Vec<ListStatus> = {
                let mut stmt = conn.prepare(
                    "SELECT l.list_id, l.last_attempt_at, l.last_success_at, l.last_error,
                            l.strategy, l.strategy_reason, l.requests, l.rate_limited, l.drift,
                            l.last_observed_at, l.contact_count
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
                "SELECT COUNT(confirmed_at) FILTER (WHERE failed_at IS NULL AND unaccounted = 0),
                        COUNT(failed_at),
                        COUNT(*) FILTER (WHERE unaccounted > 0 AND failed_at IS NULL)
                 FROM contacts WHERE list_id = ?1",
            )?;
            let mut failing = conn.prepare_cached(
                "SELECT kind, contact, last_error, attempts, failed_at FROM contacts
                 WHERE list_id = ?1 AND failed_at IS NOT NULL
                 ORDER BY failed_at DESC, contact LIMIT ?2",
            )?;
            for l in &mut out {
                let (confirmed, failed, unaccounted): (i64, i64, i64) = counts
                    .query_row(params![l.contact_list_id], |r| {
                        Ok((r.get(0)?, r.get(1)?, r.get(2)?))
                    })?;
                l.confirmed = confirmed;
                l.failed = failed;
                l.unaccounted = unaccounted;
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
        })
    }

    /// The error of one contact, if its last attempt failed (for tests and status).
    pub fn contact_error(
        &self,
        list: &str,
        kind: ContactKind,
        contact: &str,
    ) -> Result<Option<String>, StoreError> {
        self.with(|conn| {
            Ok(conn
                .query_row(
                    "SELECT last_error FROM contacts
                     WHERE list_id = ?1 AND kind = ?2 AND contact = ?3",
                    params![list, kind_code(kind), contact],
                    |r| r.get::<_, Option<String>>(0),
                )
                .optional()?
                .flatten())
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

pub fn unaccounted_message(times: i64) -> String {
    format!(
        "AutoSend's answers did not account for this contact {times} times running \
         (removed + notInList + errors < the batch); it is asserted again next sync"
    )
}

fn sql(path: &Path, source: rusqlite::Error) -> StoreError {
    StoreError::Sql {
        path: path.display().to_string(),
        source,
    }
}

fn io_text(e: &std::io::Error) -> String {
    match e.kind() {
        std::io::ErrorKind::PermissionDenied => {
            "permission denied; run as the store's owner or choose another --state".into()
        }
        _ => e.to_string(),
    }
}

/// Problems std can name better than SQLite's "unable to open database file".
fn check_openable(path: &Path) -> Result<(), StoreError> {
    let err = |message: String| StoreError::Open {
        path: path.display().to_string(),
        message,
    };
    if path.is_dir() {
        return Err(err(format!(
            "is a directory; give the path of a file, e.g. {}",
            path.join("state.db").display()
        )));
    }
    if path.exists() {
        if let Err(e) = std::fs::File::open(path) {
            return Err(err(io_text(&e)));
        }
    } else if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty())
        && dir.exists()
        && !dir.is_dir()
    {
        return Err(err(format!(
            "{} is not a directory; choose another --state",
            dir.display()
        )));
    }
    Ok(())
}

/// The schema version, after checking the file is a listwarden store at all.
fn schema_version(conn: &Connection, path: &Path) -> Result<i64, StoreError> {
    let version: i64 = conn
        .pragma_query_value(None, "user_version", |r| r.get(0))
        .map_err(|e| sql(path, e))?;
    if version > SCHEMA_VERSION {
        return Err(StoreError::TooNew {
            path: path.display().to_string(),
            found: version,
        });
    }
    let tables: Vec<String> = conn
        .prepare("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")
        .and_then(|mut s| s.query_map([], |r| r.get(0))?.collect())
        .map_err(|e| sql(path, e))?;
    let ours = OWN_TABLES.iter().all(|t| tables.iter().any(|n| n == t));
    let foreign = if version == 0 {
        !tables.is_empty()
    } else {
        !ours
    };
    if foreign {
        return Err(StoreError::Open {
            path: path.display().to_string(),
            message: format!(
                "is a SQLite database but not a listwarden state store (its tables: {}); point \
                 --state at a new file",
                {
                    let mut shown = tables
                        .iter()
                        .take(5)
                        .cloned()
                        .collect::<Vec<_>>()
                        .join(", ");
                    if tables.len() > 5 {
                        shown.push_str(", …");
                    }
                    shown
                }
            ),
        });
    }
    Ok(version)
}

fn write_policy(conn: &Connection, u: &PolicyUpdate<'_>, now: i64) -> rusqlite::Result<()> {
    let mut upsert = conn.prepare_cached(
        "INSERT INTO policies (name, contact_list_id, file, document, revision, updated_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)
         ON CONFLICT (name) DO UPDATE SET
           contact_list_id = COALESCE(excluded.contact_list_id, contact_list_id),
           file = excluded.file, document = excluded.document,
           revision = COALESCE(excluded.revision, revision),
           updated_at = excluded.updated_at",
    )?;
    upsert.execute(params![
        u.name,
        u.list,
        u.file.display().to_string(),
        u.document as i64,
        u.revision,
        now
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
        u.condition.reason,
        stored_text(&u.condition.message),
        u.record_error
    ])?;
    Ok(())
}

fn write_list(conn: &Connection, list: &str, sync: &ListSync) -> rusqlite::Result<()> {
    let n = |v: u64| v.min(i64::MAX as u64) as i64;
    conn.prepare_cached(
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
    )?
    .execute(params![
        list,
        sync.attempt_at,
        sync.success,
        sync.error.as_deref().map(stored_text),
        sync.strategy,
        sync.strategy_reason.as_deref().map(stored_text),
        n(sync.requests),
        n(sync.rate_limited),
        sync.contact_count.map(n)
    ])?;
    Ok(())
}

fn forget_in(
    tx: &Connection,
    lists: &[(&ContactListId, &Keep<'_>)],
    spare: &[&ContactListId],
) -> rusqlite::Result<u64> {
    let mut forgotten = 0u64;
    let known: Vec<String> = {
        let mut stmt = tx.prepare("SELECT DISTINCT list_id FROM contacts")?;
        stmt.query_map([], |r| r.get(0))?
            .collect::<Result<_, _>>()?
    };
    // Lookups by list, not scans: a load with 100,000 lists must stay linear.
    let keepers: HashMap<&str, &Keep<'_>> = lists.iter().map(|(l, k)| (l.as_str(), *k)).collect();
    let spare: std::collections::HashSet<&str> = spare.iter().map(|l| l.as_str()).collect();
    for list_id in known {
        if spare.contains(list_id.as_str()) {
            continue;
        }
        match keepers.get(list_id.as_str()).map(|k| ((), k)) {
            None => {
                forgotten +=
                    tx.execute("DELETE FROM contacts WHERE list_id = ?1", params![list_id])? as u64;
            }
            Some((_, keep)) => {
                let mut stale = Vec::new();
                {
                    let mut stmt =
                        tx.prepare_cached("SELECT kind, contact FROM contacts WHERE list_id = ?1")?;
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
    Ok(forgotten)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn list() -> ContactListId {
        ContactListId::parse("l1").unwrap()
    }

    fn open(path: &Path) -> Store {
        Store::open(path, "test").unwrap()
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
    fn a_contact_unaccounted_three_times_running_is_failed_with_that_reason() {
        let s = Store::in_memory().unwrap();
        let unaccounted = [("a@x.com", ContactOutcome::Unaccounted)];
        for round in 1..=2 {
            s.record_batch(&list(), ContactKind::Email, &unaccounted, "r", round)
                .unwrap();
            let r = s.records(&list()).unwrap().emails["a@x.com"];
            assert_eq!(r.unaccounted, round as u8);
            assert_eq!((r.confirmed_at, r.failed_at), (None, None), "still pending");
        }
        s.record_batch(&list(), ContactKind::Email, &unaccounted, "r", 3)
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
            "r",
            4,
        )
        .unwrap();
        let r = s.records(&list()).unwrap().emails["a@x.com"];
        assert_eq!((r.unaccounted, r.failed_at), (0, None));
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
    fn a_load_spares_the_lists_of_held_policies() {
        let s = Store::in_memory().unwrap();
        let (l1, l2) = (list(), ContactListId::parse("l2").unwrap());
        for l in [&l1, &l2] {
            s.record_batch(
                l,
                ContactKind::Email,
                &[("a@x.com", ContactOutcome::Confirmed)],
                "r",
                1,
            )
            .unwrap();
        }
        let keep_none = |_: ContactKind, _: &str| false;
        let load = LoadRecord {
            forget: Some(vec![(&l1, &keep_none), (&l2, &keep_none)]),
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
        let condition = Condition::new(Ready::False, "ThresholdExceeded", "held");
        let update = PolicyUpdate {
            name: "p",
            list: Some("l1"),
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
            s.approve("nope")
                .unwrap()
                .unwrap_err()
                .contains("no policy")
        );
        assert!(
            s.approve("p")
                .unwrap()
                .unwrap_err()
                .contains("no change waiting")
        );
        let load = LoadRecord {
            accepted: vec![Accepted {
                name: "p",
                list: "l1",
                file: Path::new("p.yaml"),
                document: 1,
                contacts: 1000,
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
        let approval = s.approve("p").unwrap().unwrap();
        assert_eq!((approval.before, approval.after), (1000, 10));
        let b = &s.baselines().unwrap()["p"];
        assert_eq!(b.approved_revision.as_deref(), Some("sha256:new"));
        assert_eq!(b.contacts, Some(1000));
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
        let err = Store::open(&path, "t").unwrap_err();
        assert!(matches!(err, StoreError::TooNew { .. }), "{err}");
        assert!(err.to_string().contains("upgrade listwarden"));
    }

    #[test]
    fn reopening_keeps_the_schema_and_the_data_and_the_file_is_private() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/state.db");
        {
            let s = open(&path);
            s.record_batch(
                &list(),
                ContactKind::ContactId,
                &[("c1", ContactOutcome::Confirmed)],
                "r",
                5,
            )
            .unwrap();
        }
        let s = open(&path);
        assert_eq!(
            s.records(&list()).unwrap().contact_ids["c1"].confirmed_at,
            Some(5)
        );
        for f in [path.clone(), dir.path().join("sub/state.db-wal")] {
            let mode = std::fs::metadata(&f).unwrap().permissions().mode();
            assert_eq!(mode & 0o077, 0, "{} is {mode:o}", f.display());
        }
    }

    #[test]
    fn a_second_writer_is_refused_while_the_store_is_open() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.db");
        let first = open(&path);
        let err = Store::open(&path, "listwarden apply")
            .unwrap_err()
            .to_string();
        assert!(err.contains("in use by test (pid"), "{err}");
        drop(first);
        open(&path);
    }

    #[test]
    fn wrong_store_paths_are_explained() {
        let dir = tempfile::tempdir().unwrap();
        let err = Store::open_existing(dir.path()).unwrap_err().to_string();
        assert!(err.contains("is a directory"), "{err}");
        let text = dir.path().join("notes.txt");
        std::fs::write(
            &text,
            "hello, this is not a database at all, just some text\n",
        )
        .unwrap();
        let err = Store::open_existing(&text).unwrap_err().to_string();
        assert!(err.contains("not a listwarden state store"), "{err}");
        let other = dir.path().join("other.db");
        Connection::open(&other)
            .unwrap()
            .execute_batch("CREATE TABLE songs (title TEXT);")
            .unwrap();
        let err = Store::open_existing(&other).unwrap_err().to_string();
        assert!(
            err.contains("not a listwarden state store (its tables: songs)"),
            "{err}"
        );
    }

    #[test]
    fn a_full_disk_is_named_and_counts_as_a_write_failure() {
        let s = Store::in_memory().unwrap();
        // SQLite answers SQLITE_FULL exactly as on a full disk once the page cap is reached.
        s.with(|c| c.pragma_update(None, "max_page_count", 8))
            .unwrap();
        let many: Vec<String> = (0..5000).map(|i| format!("c{i}@example.com")).collect();
        let outcomes: Vec<(&str, ContactOutcome)> = many
            .iter()
            .map(|c| (c.as_str(), ContactOutcome::Confirmed))
            .collect();
        let err = s
            .record_batch(&list(), ContactKind::Email, &outcomes, "r", 1)
            .unwrap_err();
        assert!(err.is_write_failure(), "{err}");
        assert!(
            err.to_string()
                .starts_with("state store: disk full (or I/O error) at :memory:;"),
            "{err}"
        );
    }

    #[test]
    fn a_deleted_store_file_is_detected() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.db");
        let s = open(&path);
        s.check_file().unwrap();
        std::fs::remove_file(&path).unwrap();
        let err = s
            .record_batch(
                &list(),
                ContactKind::Email,
                &[("a@x.com", ContactOutcome::Confirmed)],
                "r",
                1,
            )
            .unwrap_err();
        assert!(matches!(err, StoreError::Replaced { .. }), "{err}");
        assert!(err.is_write_failure());
    }

    #[test]
    fn stored_texts_are_capped() {
        let long = "é".repeat(10_000);
        let cut = stored_text(&long);
        assert!(
            cut.len() <= MAX_STORED_TEXT && cut.ends_with('…'),
            "{}",
            cut.len()
        );
    }
}
