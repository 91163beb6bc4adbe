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
//!
//! A little over 500 lines, a quarter of them tests: opening a store safely (lock, modes,
//! schema, faults) is one concern.

mod contacts;
mod events;
mod loads;
mod lock;
mod schema;
mod status;

use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use rusqlite::{Connection, ErrorCode};

pub use crate::condition::{Condition, Ready, Reason};
use crate::contact::ContactKind;
pub use contacts::{
    ContactOutcome, Keep, Keeper, ListRecords, Record, Records, UNACCOUNTED_LIMIT,
    unaccounted_message,
};
pub use events::{EventContact, Handling, InboxEvent, Received, Resync};
pub use loads::{Accepted, Approval, Baseline, Held, LoadRecord, LoadSummary};
pub use lock::{LockError, StoreLock, create_private_dir, lock_path};
pub use schema::SCHEMA_VERSION;
use schema::{MIGRATIONS, schema_version};
pub use status::{
    FailingContact, ListStatus, ListSync, PolicyCounts, PolicyStatus, PolicyUpdate, StatusWrite,
};

pub const DEFAULT_PATH: &str = ".listwarden/state.db";

/// Longest text (a message, an error) written to the store. Server texts and diagnostics are
/// cut before they get here; this is the last guard, so a 10 MB message never makes a 50 MB
/// database.
pub const MAX_STORED_TEXT: usize = 1024;

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

/// The store. One connection behind a mutex: statements are short, and SQLite serialises
/// writers anyway.
pub struct Store {
    conn: Mutex<Connection>,
    /// Read-only connections for [`Store::read`], opened on demand (one per thread reading
    /// at once) and kept.
    readers: Mutex<Vec<Connection>>,
    path: PathBuf,
    /// Device and inode of the file opened: a file deleted or replaced under a running daemon
    /// is detected ([`Store::check_file`]) instead of written to in vain.
    identity: Option<(u64, u64)>,
    /// Held for as long as the store is open for writing.
    _lock: Option<StoreLock>,
    /// The config's default account, when the store's rows from before accounts are not
    /// adopted yet (a read-only `plan`): its lists are read from those rows.
    adopting: Option<crate::contact::AccountName>,
}

/// True once the store has rows of a named account: a run with a config has adopted the
/// rows from before accounts, if there were any (see [`Store::adopt_default_rows`]).
const ADOPTED_BEFORE: &str = "EXISTS (SELECT 1 FROM lists WHERE account != 'default')
    OR EXISTS (SELECT 1 FROM policies WHERE account != 'default')";

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
        check_openable(path)?;
        // A file that is not a store (a typo in --state) is refused before anything touches
        // it: no lock note beside it, no change of its mode.
        if std::fs::metadata(path).is_ok_and(|m| m.len() > 0) {
            let conn =
                Connection::open_with_flags(path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
                    .map_err(|e| sql(path, e))?;
            schema_version(&conn, path)?;
        }
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
        // NO_MUTEX, as `Connection::open` has by default: the store serialises use of its one
        // connection itself, and SQLite's own mutex per column read cost 15% of a warm plan.
        let flags = flags
            | rusqlite::OpenFlags::SQLITE_OPEN_URI
            | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX;
        let conn = Connection::open_with_flags(path, flags).map_err(|e| sql(path, e))?;
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
            readers: Mutex::new(Vec::new()),
            path: path.to_path_buf(),
            identity: file_identity(path),
            _lock: None,
            adopting: None,
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
            readers: Mutex::new(Vec::new()),
            path: path.to_path_buf(),
            identity: on_disk.then(|| file_identity(path)).flatten(),
            _lock: None,
            adopting: None,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Gives the rows from before accounts (account `default`) to `account`, the config
    /// file's default account, where it has no list of the same id already: they were
    /// written with the one key of the environment, which the default account now stands
    /// for. Returns the lists adopted. An account literally named `default` needs none.
    ///
    /// Once only: a store with rows of a named account has had a run with a config, and
    /// rows stored under `default` since were written by a run without it (an old cron
    /// job, a rollback) with whatever key its environment had, maybe another account's.
    /// They are left alone: the default account asserts its lists again, which is safe,
    /// where adopting them could make its list of the same id look converged.
    pub fn adopt_default_rows(
        &self,
        account: &crate::contact::AccountName,
    ) -> Result<u64, StoreError> {
        if account.is_default() {
            return Ok(0);
        }
        self.with(|conn| {
            let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
            if tx.query_row(&format!("SELECT {ADOPTED_BEFORE}"), [], |r| {
                r.get::<_, bool>(0)
            })? {
                return Ok(0);
            }
            let lists = tx.execute(
                "UPDATE lists SET account = ?1 WHERE account = 'default' AND NOT EXISTS
                   (SELECT 1 FROM lists o WHERE o.account = ?1 AND o.list_id = lists.list_id)",
                [account.as_str()],
            )?;
            for table in ["policies", "event_contacts", "webhook_events"] {
                tx.execute(
                    &format!("UPDATE {table} SET account = ?1 WHERE account = 'default'"),
                    [account.as_str()],
                )?;
            }
            tx.commit()?;
            Ok(lists as u64)
        })
    }

    /// For a read-only store: reads `account`'s lists from the rows from before accounts
    /// too, as [`Store::adopt_default_rows`] will make them at the next `apply` or `run`, so
    /// a `plan` made first does not show confirmed contacts as new.
    pub fn reading_default_rows_as(&mut self, account: Option<crate::contact::AccountName>) {
        // An unreadable answer reads nothing more: showing more to assert is the safe side.
        let adopted_before = self
            .read(|conn| conn.query_row(&format!("SELECT {ADOPTED_BEFORE}"), [], |r| r.get(0)))
            .unwrap_or(true);
        self.adopting = account.filter(|a| !a.is_default() && !adopted_before);
    }

    /// The account name `account`'s rows may be stored under besides its own.
    fn stored_as<'a>(&'a self, account: &'a crate::contact::AccountName) -> &'a str {
        match &self.adopting {
            Some(a) if a == account => crate::contact::AccountName::DEFAULT,
            _ => account.as_str(),
        }
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

    /// Runs a read-only `f` on a connection of its own when the store is a file: in WAL
    /// mode readers do not wait for each other or for the writer, so a plan reads the
    /// records of its lists on every core instead of one list at a time.
    fn read<T>(&self, f: impl FnOnce(&Connection) -> rusqlite::Result<T>) -> Result<T, StoreError> {
        if self.identity.is_none() {
            return self.with(|conn| f(conn));
        }
        let pool = || self.readers.lock().unwrap_or_else(|p| p.into_inner());
        let spare = pool().pop();
        let conn = match spare {
            Some(conn) => conn,
            None => {
                // A new connection opens whatever file is at the path now: it must be the
                // one this store opened, or records would come from another store.
                self.check_file()?;
                let flags = rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY
                    | rusqlite::OpenFlags::SQLITE_OPEN_URI
                    | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX;
                let conn = Connection::open_with_flags(&self.path, flags)
                    .map_err(|e| sql(&self.path, e))?;
                conn.busy_timeout(std::time::Duration::from_secs(10))
                    .map_err(|e| sql(&self.path, e))?;
                conn
            }
        };
        let out = f(&conn).map_err(|e| sql(&self.path, e));
        pool().push(conn);
        out
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::contact::{ContactListId, ListKey};

    fn list() -> ListKey {
        ListKey::default_account(ContactListId::parse("l1").unwrap())
    }

    fn open(path: &Path) -> Store {
        Store::open(path, "test").unwrap()
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
            .record_batch(&list(), ContactKind::Email, &outcomes, 1)
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
                1,
            )
            .unwrap_err();
        assert!(matches!(err, StoreError::Replaced { .. }), "{err}");
        assert!(err.is_write_failure());
    }

    #[test]
    fn records_are_never_read_from_another_file_put_in_the_store_s_place() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.db");
        let s = open(&path);
        s.record_batch(
            &list(),
            ContactKind::Email,
            &[("a@x.com", ContactOutcome::Confirmed)],
            1,
        )
        .unwrap();
        // Another (empty) store replaces the file: a fresh reader must not plan from it.
        let other = dir.path().join("other.db");
        drop(open(&other));
        std::fs::rename(&other, &path).unwrap();
        let err = s.records(&list()).unwrap_err();
        assert!(matches!(err, StoreError::Replaced { .. }), "{err}");
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
