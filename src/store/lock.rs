//! One writer per store: an exclusive lock held for the life of `apply` and `run`.
//!
//! Two writers on one store race on its schema, send every request twice and pace them with
//! two separate budgets against one API key. The lock is an advisory `flock` on the database
//! file itself, so it is released by the kernel when the process dies, even by `kill -9` (a
//! crash never leaves a stale lock behind), and it cannot be sidestepped: a symlink to the
//! store, or another spelling of its path, opens the same file, and there is no lock file
//! whose deletion would free it. (SQLite locks with `fcntl`, which `flock` does not touch.)
//! A file beside the database (`state.db.lock`) says who holds it, so a refused `apply` can
//! name the holder. Readers (`plan`, `status`) and `approve`, which writes one row in a short
//! transaction, do not take the lock.

use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Held for as long as this value lives.
#[derive(Debug)]
pub struct StoreLock {
    // The lock lives as long as the open file description.
    _file: File,
    path: PathBuf,
}

#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error(
        "the state store {store} is in use by {holder}; only one `apply` or `run` may use a \
         store at a time: wait for it to finish or stop it (`plan` and `status` need no lock)"
    )]
    Held { store: String, holder: String },
    #[error("cannot lock the state store {store} ({lock}): {reason}")]
    Io {
        store: String,
        lock: String,
        reason: String,
    },
}

/// The file that says who holds the lock of the store at `store` (informational: the lock
/// itself is on the database file).
pub fn lock_path(store: &Path) -> PathBuf {
    let mut name = store.as_os_str().to_owned();
    name.push(".lock");
    PathBuf::from(name)
}

/// Creates the store's directory if needed, readable by its owner only: the store holds
/// contact addresses, which are personal data. An existing directory is left as it is.
pub fn create_private_dir(store: &Path) -> std::io::Result<()> {
    match store.parent() {
        Some(dir) if !dir.as_os_str().is_empty() && !dir.exists() => std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir),
        _ => Ok(()),
    }
}

impl StoreLock {
    /// Takes the lock now, or says who holds it. `command` describes this process for a
    /// later holder message (`listwarden apply`).
    pub fn try_acquire(store: &Path, command: &str) -> Result<StoreLock, LockError> {
        let db = open_database_file(store)?;
        // The holder's note sits beside the file really opened, whatever path led to it.
        let info = lock_path(&store.canonicalize().unwrap_or_else(|_| store.to_path_buf()));
        match db.try_lock() {
            Ok(()) => Ok(StoreLock::claim(db, info, command)),
            Err(TryLockError::WouldBlock) => {
                // The holder writes its note just after taking the lock: a refusal in between
                // would name nobody, so give it a moment (200 ms at most).
                let mut who = holder(&info);
                for _ in 0..20 {
                    if who != UNKNOWN_HOLDER {
                        break;
                    }
                    std::thread::sleep(Duration::from_millis(10));
                    who = holder(&info);
                }
                Err(LockError::Held {
                    store: store.display().to_string(),
                    holder: who,
                })
            }
            Err(TryLockError::Error(e)) => Err(io_error(store, store, &e)),
        }
    }

    /// Waits for the lock, calling `waiting(holder)` once when it is not free at first, and
    /// checking every `poll` whether `stop()` asks to give up (then `Ok(None)`).
    pub fn wait(
        store: &Path,
        command: &str,
        poll: Duration,
        mut waiting: impl FnMut(&str),
        stop: impl Fn() -> bool,
    ) -> Result<Option<StoreLock>, LockError> {
        let mut told = false;
        loop {
            match StoreLock::try_acquire(store, command) {
                Ok(lock) => return Ok(Some(lock)),
                Err(LockError::Held { holder, .. }) => {
                    if !told {
                        waiting(&holder);
                        told = true;
                    }
                }
                Err(e) => return Err(e),
            }
            if stop() {
                return Ok(None);
            }
            std::thread::sleep(poll);
        }
    }

    fn claim(db: File, path: PathBuf, command: &str) -> StoreLock {
        // Who holds it, for the message of a refused `apply`. Best effort: the lock itself is
        // what matters, and it is already held.
        let started = humantime::format_rfc3339_seconds(std::time::SystemTime::now());
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
        let text = format!(
            "{command} (pid {}, host {}, since {started})\n",
            std::process::id(),
            host.trim()
        );
        if let Ok(mut note) = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&path)
        {
            let _ = note.write_all(text.as_bytes());
        }
        StoreLock { _file: db, path }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// Opens the database file (created empty, `0600`, when new: SQLite takes an empty file as a
/// new database), creating its directory private first.
fn open_database_file(store: &Path) -> Result<File, LockError> {
    create_private_dir(store).map_err(|e| io_error(store, store, &e))?;
    OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(store)
        .map_err(|e| io_error(store, store, &e))
}

/// What a refusal says when the holder left no note (an older listwarden, or a note
/// deleted by hand).
const UNKNOWN_HOLDER: &str = "another listwarden process";

fn holder(info: &Path) -> String {
    let mut text = String::new();
    if let Ok(file) = File::open(info) {
        let _ = file.take(512).read_to_string(&mut text);
    }
    let text = text.trim();
    if text.is_empty() {
        UNKNOWN_HOLDER.to_string()
    } else {
        text.to_string()
    }
}

fn io_error(store: &Path, lock: &Path, e: &std::io::Error) -> LockError {
    let reason = match e.kind() {
        std::io::ErrorKind::PermissionDenied => format!(
            "permission denied; run as the owner of {} or choose another --state",
            lock.parent().unwrap_or(Path::new(".")).display()
        ),
        _ => e.to_string(),
    };
    LockError::Io {
        store: store.display().to_string(),
        lock: lock.display().to_string(),
        reason,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_lock_on_the_same_store_is_refused_naming_the_holder() {
        let dir = tempfile::tempdir().unwrap();
        let store = dir.path().join("sub/state.db");
        let first = StoreLock::try_acquire(&store, "listwarden run").unwrap();
        let err = StoreLock::try_acquire(&store, "listwarden apply").unwrap_err();
        let text = err.to_string();
        assert!(text.contains("listwarden run (pid"), "{text}");
        assert!(text.contains("only one `apply` or `run`"), "{text}");
        drop(first);
        StoreLock::try_acquire(&store, "listwarden apply").expect("free once dropped");
    }

    #[test]
    fn neither_a_symlink_nor_a_deleted_note_sidesteps_the_lock() {
        let dir = tempfile::tempdir().unwrap();
        let store = dir.path().join("real/state.db");
        let _first = StoreLock::try_acquire(&store, "listwarden run").unwrap();
        let alias = dir.path().join("alias.db");
        std::os::unix::fs::symlink(&store, &alias).unwrap();
        let err = StoreLock::try_acquire(&alias, "listwarden apply").unwrap_err();
        assert!(err.to_string().contains("listwarden run (pid"), "{err}");
        std::fs::remove_file(lock_path(&store)).unwrap();
        assert!(StoreLock::try_acquire(&store, "listwarden apply").is_err());
    }

    #[test]
    fn the_store_directory_is_created_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let store = dir.path().join("new/state.db");
        let _lock = StoreLock::try_acquire(&store, "t").unwrap();
        let mode = std::fs::metadata(dir.path().join("new"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o700);
        let mode = std::fs::metadata(lock_path(&store))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o077, 0);
    }
}
