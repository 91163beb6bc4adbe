//! The schema: versioned with `PRAGMA user_version`, migrated forward on open (under the
//! store's lock); a newer version, or a database that is not a listwarden store, is refused.

use std::path::Path;

use rusqlite::Connection;

use super::{StoreError, sql};

/// Each entry migrates from version `i` to `i + 1`.
pub(super) const MIGRATIONS: &[&str] = &[
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
    // 2 -> 3: the keep-set each list was last forgotten against, so that a load that changes
    // nothing of a list does not read every row of it again.
    "ALTER TABLE lists ADD COLUMN forget_revision TEXT;",
];

pub const SCHEMA_VERSION: i64 = MIGRATIONS.len() as i64;

/// Tables every listwarden store has, whatever its version.
const OWN_TABLES: [&str; 3] = ["contacts", "policies", "lists"];

/// The schema version, after checking the file is a listwarden store at all.
pub(super) fn schema_version(conn: &Connection, path: &Path) -> Result<i64, StoreError> {
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
