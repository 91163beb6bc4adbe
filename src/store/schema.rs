//! The schema: versioned with `PRAGMA user_version`, migrated forward on open (under the
//! store's lock); a newer version, or a database that is not a listwarden store, is refused.

use std::path::Path;

use rusqlite::Connection;

use super::{StoreError, sql};

/// The triggers that keep each list's counts of confirmed, failed and unaccounted contacts,
/// in the same transaction as the rows. Schema 4 made them; schema 6 drops and makes them
/// again around its rebuild of `lists`: one text, so the two can never differ.
macro_rules! count_triggers {
    () => {
        "CREATE TRIGGER contacts_count_insert AFTER INSERT ON contacts BEGIN
        UPDATE lists SET
          confirmed = confirmed + (NEW.confirmed_at IS NOT NULL AND NEW.failed_at IS NULL
                                   AND NEW.unaccounted = 0),
          failed = failed + (NEW.failed_at IS NOT NULL),
          unaccounted = unaccounted + (NEW.unaccounted > 0 AND NEW.failed_at IS NULL)
        WHERE id = NEW.list;
     END;
     CREATE TRIGGER contacts_count_delete AFTER DELETE ON contacts BEGIN
        UPDATE lists SET
          confirmed = confirmed - (OLD.confirmed_at IS NOT NULL AND OLD.failed_at IS NULL
                                   AND OLD.unaccounted = 0),
          failed = failed - (OLD.failed_at IS NOT NULL),
          unaccounted = unaccounted - (OLD.unaccounted > 0 AND OLD.failed_at IS NULL)
        WHERE id = OLD.list;
     END;
     CREATE TRIGGER contacts_count_update AFTER UPDATE ON contacts BEGIN
        UPDATE lists SET
          confirmed = confirmed - (OLD.confirmed_at IS NOT NULL AND OLD.failed_at IS NULL
                                   AND OLD.unaccounted = 0),
          failed = failed - (OLD.failed_at IS NOT NULL),
          unaccounted = unaccounted - (OLD.unaccounted > 0 AND OLD.failed_at IS NULL)
        WHERE id = OLD.list;
        UPDATE lists SET
          confirmed = confirmed + (NEW.confirmed_at IS NOT NULL AND NEW.failed_at IS NULL
                                   AND NEW.unaccounted = 0),
          failed = failed + (NEW.failed_at IS NOT NULL),
          unaccounted = unaccounted + (NEW.unaccounted > 0 AND NEW.failed_at IS NULL)
        WHERE id = NEW.list;
     END;"
    };
}

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
    // 3 -> 4: the compact layout. A contact row keys its list by a small integer (the list id
    // was repeated as text in every row) and no longer repeats the list's revision (written,
    // never read): about 100 bytes a row became about 45. Each list keeps counts of its
    // confirmed, failed and unaccounted contacts, maintained by triggers in the same
    // transaction as the rows, so `status` reads a few numbers instead of counting a million
    // rows; failing contacts have an index of their own for the same reason.
    //
    // List ids are numbered in list order and the old rows are read in key order, so the new
    // table is written by appending, never by splitting pages.
    concat!(
        "CREATE TABLE lists_v4 (
        id               INTEGER PRIMARY KEY,
        list_id          TEXT NOT NULL UNIQUE,
        last_attempt_at  INTEGER,
        last_success_at  INTEGER,
        last_error       TEXT,
        strategy         TEXT,
        strategy_reason  TEXT,
        requests         INTEGER NOT NULL DEFAULT 0,
        rate_limited     INTEGER NOT NULL DEFAULT 0,
        drift            INTEGER,
        last_observed_at INTEGER,
        contact_count    INTEGER,
        forget_revision  TEXT,
        confirmed        INTEGER NOT NULL DEFAULT 0,
        failed           INTEGER NOT NULL DEFAULT 0,
        unaccounted      INTEGER NOT NULL DEFAULT 0
     );
     INSERT INTO lists_v4 (list_id)
        SELECT list_id FROM lists UNION SELECT DISTINCT list_id FROM contacts ORDER BY 1;
     UPDATE lists_v4 SET (last_attempt_at, last_success_at, last_error, strategy,
            strategy_reason, requests, rate_limited, drift, last_observed_at, contact_count,
            forget_revision) =
        (SELECT last_attempt_at, last_success_at, last_error, strategy, strategy_reason,
                requests, rate_limited, drift, last_observed_at, contact_count, forget_revision
         FROM lists o WHERE o.list_id = lists_v4.list_id)
        WHERE list_id IN (SELECT list_id FROM lists);
     CREATE TABLE contacts_v4 (
        list         INTEGER NOT NULL,          -- lists.id
        kind         INTEGER NOT NULL,          -- 0 email, 1 contact id
        contact      TEXT NOT NULL,
        confirmed_at INTEGER,                   -- unix seconds, last confirmed absent
        failed_at    INTEGER,                   -- set while the last attempt failed
        last_error   TEXT,
        attempts     INTEGER NOT NULL DEFAULT 0,
        unaccounted  INTEGER NOT NULL DEFAULT 0,
        PRIMARY KEY (list, kind, contact)
     ) WITHOUT ROWID;
     INSERT INTO contacts_v4
        SELECT l.id, c.kind, c.contact, c.confirmed_at, c.failed_at, c.last_error, c.attempts,
               c.unaccounted
        FROM contacts c JOIN lists_v4 l ON l.list_id = c.list_id;
     DROP TABLE contacts;
     DROP TABLE lists;
     ALTER TABLE contacts_v4 RENAME TO contacts;
     ALTER TABLE lists_v4 RENAME TO lists;
     CREATE INDEX contacts_failing ON contacts (list, failed_at) WHERE failed_at IS NOT NULL;
     UPDATE lists SET (confirmed, failed, unaccounted) =
        (SELECT COUNT(*) FILTER (WHERE confirmed_at IS NOT NULL AND failed_at IS NULL
                                   AND unaccounted = 0),
                COUNT(failed_at),
                COUNT(*) FILTER (WHERE unaccounted > 0 AND failed_at IS NULL)
         FROM contacts WHERE list = lists.id);
     ",
        count_triggers!()
    ),
    // 4 -> 5: webhooks. The inbox of verified events (committed before the delivery is
    // answered, handled after; kept through the freshness window to recognise retries and
    // replays by digest or delivery id), and the contacts events fed to policies: one row
    // per policy, contact and event type, so a spam report does not hide the bounce before
    // it from a filter that takes bounces only.
    "CREATE TABLE webhook_events (
        id          INTEGER PRIMARY KEY,
        digest      BLOB NOT NULL UNIQUE,       -- SHA-256 of the signed body
        delivery_id TEXT,                       -- X-Webhook-Delivery-Id
        event_type  TEXT NOT NULL,
        created_at  INTEGER NOT NULL,           -- the signed createdAt, unix ms
        received_at INTEGER NOT NULL,           -- unix ms
        email       TEXT,
        contact_id  TEXT,
        bounce_type TEXT,
        handled_at  INTEGER,                    -- unix ms
        outcome     TEXT
     );
     CREATE INDEX webhook_events_delivery ON webhook_events (delivery_id)
        WHERE delivery_id IS NOT NULL;
     CREATE INDEX webhook_events_unhandled ON webhook_events (id) WHERE handled_at IS NULL;
     CREATE TABLE event_contacts (
        policy       TEXT NOT NULL,
        kind         INTEGER NOT NULL,          -- 0 email, 1 contact id
        contact      TEXT NOT NULL,
        event_type   TEXT NOT NULL,
        bounce_type  TEXT,                      -- email.bounced: Permanent, Transient or NULL
        event_at     INTEGER NOT NULL,          -- the event's createdAt, unix ms
        delivery_id  TEXT,
        list_id      TEXT NOT NULL,             -- the policy's list then
        added_at     INTEGER NOT NULL,          -- unix ms
        forgotten_at INTEGER,                   -- unix ms, by `listwarden events forget`
        forgotten_by TEXT,
        held_at      INTEGER,                   -- unix ms: beyond the policy's threshold
        PRIMARY KEY (policy, kind, contact, event_type)
     ) WITHOUT ROWID;
     CREATE TABLE event_approvals (
        policy TEXT PRIMARY KEY,
        at     INTEGER NOT NULL                 -- unix ms of the last `listwarden approve`
     );",
    // 5 -> 6: accounts. The same list id in two accounts is two lists, so a list is keyed
    // by (account, list id). Rows from before belong to the default account (`default`; a
    // config file's default account adopts them, `Store::adopt_default_rows`). Only the
    // small `lists` table is rebuilt: contact rows key their list by its integer id, which
    // is kept, so a store of ten million contacts migrates in moments. The count triggers
    // name `lists`, so they are dropped and made again around the rebuild.
    concat!(
        "DROP TRIGGER contacts_count_insert;
     DROP TRIGGER contacts_count_delete;
     DROP TRIGGER contacts_count_update;
     CREATE TABLE lists_v6 (
        id               INTEGER PRIMARY KEY,
        account          TEXT NOT NULL DEFAULT 'default',
        list_id          TEXT NOT NULL,
        last_attempt_at  INTEGER,
        last_success_at  INTEGER,
        last_error       TEXT,
        strategy         TEXT,
        strategy_reason  TEXT,
        requests         INTEGER NOT NULL DEFAULT 0,
        rate_limited     INTEGER NOT NULL DEFAULT 0,
        drift            INTEGER,
        last_observed_at INTEGER,
        contact_count    INTEGER,
        forget_revision  TEXT,
        confirmed        INTEGER NOT NULL DEFAULT 0,
        failed           INTEGER NOT NULL DEFAULT 0,
        unaccounted      INTEGER NOT NULL DEFAULT 0,
        UNIQUE (account, list_id)
     );
     INSERT INTO lists_v6 (id, list_id, last_attempt_at, last_success_at, last_error, strategy,
            strategy_reason, requests, rate_limited, drift, last_observed_at, contact_count,
            forget_revision, confirmed, failed, unaccounted)
        SELECT id, list_id, last_attempt_at, last_success_at, last_error, strategy,
               strategy_reason, requests, rate_limited, drift, last_observed_at, contact_count,
               forget_revision, confirmed, failed, unaccounted
        FROM lists;
     DROP TABLE lists;
     ALTER TABLE lists_v6 RENAME TO lists;
     ",
        count_triggers!(),
        "
     ALTER TABLE policies ADD COLUMN account TEXT NOT NULL DEFAULT 'default';
     ALTER TABLE event_contacts ADD COLUMN account TEXT NOT NULL DEFAULT 'default';
     ALTER TABLE webhook_events ADD COLUMN account TEXT NOT NULL DEFAULT 'default';"
    ),
];

pub const SCHEMA_VERSION: i64 = MIGRATIONS.len() as i64;

/// Tables every listwarden store has, whatever its version.
const OWN_TABLES: [&str; 3] = ["contacts", "policies", "lists"];

/// The schema version, after checking the file is a listwarden store at all.
pub(super) fn schema_version(conn: &Connection, path: &Path) -> Result<i64, StoreError> {
    // The version and the tables are read in one read transaction: read apart, another
    // process's migration could commit in between, and a store half way through its first
    // migration (tables, but version 0 a moment ago) would look like someone else's
    // database. Dropped without a commit: it only read.
    let snapshot = conn.unchecked_transaction().map_err(|e| sql(path, e))?;
    let conn = &*snapshot;
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::contact::{ContactKind, ContactListId, ListKey};
    use crate::store::{ContactOutcome, Store};

    /// A store as version 3 wrote it: list ids and revisions as text in every row.
    fn version_3_store(path: &Path, now: i64) {
        let conn = Connection::open(path).unwrap();
        for m in &MIGRATIONS[..3] {
            conn.execute_batch(m).unwrap();
        }
        conn.pragma_update(None, "user_version", 3).unwrap();
        conn.execute_batch(&format!(
            "INSERT INTO contacts (list_id, kind, contact, confirmed_at, revision, attempts)
               VALUES ('l1', 0, 'a@example.com', {t}, 'sha256:1', 1),
                      ('l1', 1, 'c1', {t}, 'sha256:1', 1),
                      ('l2', 0, 'd@example.com', {t}, 'sha256:2', 2);
             INSERT INTO contacts (list_id, kind, contact, failed_at, last_error, attempts)
               VALUES ('l1', 0, 'b@example.com', {t}, 'HTTP 500', 3);
             INSERT INTO contacts (list_id, kind, contact, attempts, unaccounted)
               VALUES ('l1', 0, 'c@example.com', 1, 1);
             INSERT INTO lists (list_id, requests, forget_revision) VALUES ('l1', 7, 'sha256:k');",
            t = now - 10
        ))
        .unwrap();
    }

    fn manifests(dir: &Path) -> crate::manifest::Manifests {
        for (name, list, emails, ids) in [
            (
                "p1",
                "l1",
                "[a@example.com, b@example.com, c@example.com]",
                "[c1]",
            ),
            ("p2", "l2", "[d@example.com]", "[]"),
        ] {
            std::fs::write(
                dir.join(format!("{name}.yaml")),
                format!(
                    "apiVersion: listwarden.dev/v1\nkind: ListPolicy\nmetadata: {{name: {name}}}\n\
                     spec:\n  contactListId: {list}\n  exclude:\n    emails: {emails}\n    \
                     contactIds: {ids}\n"
                ),
            )
            .unwrap();
        }
        let m = crate::manifest::load(dir);
        assert!(!m.has_errors(), "{:?}", m.diagnostics);
        m
    }

    #[test]
    fn a_version_3_store_migrates_in_place_and_nothing_confirmed_is_planned_again() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.db");
        let now = 1_800_000_000;
        version_3_store(&path, now);
        let store = Store::open(&path, "test").unwrap();
        let l1 = ListKey::default_account(ContactListId::parse("l1").unwrap());
        let records = store.records(&l1).unwrap();
        assert_eq!(records.emails["a@example.com"].confirmed_at, Some(now - 10));
        assert_eq!(records.emails["b@example.com"].failed_at, Some(now - 10));
        assert_eq!(records.emails["c@example.com"].unaccounted, 1);
        assert_eq!(records.contact_ids["c1"].confirmed_at, Some(now - 10));
        assert_eq!(
            store
                .contact_error("l1", ContactKind::Email, "b@example.com")
                .unwrap()
                .as_deref(),
            Some("HTTP 500")
        );

        let manifest_dir = dir.path().join("m");
        std::fs::create_dir(&manifest_dir).unwrap();
        let m = manifests(&manifest_dir);
        let options = crate::plan::PlanOptions {
            now,
            ..Default::default()
        };
        let plan = crate::plan::Plan::for_manifests(
            &m,
            &Default::default(),
            |l| store.records(l),
            options,
        )
        .unwrap();
        let asserted: Vec<(String, Vec<String>)> = plan
            .lists
            .iter()
            .map(|l| {
                let mut c: Vec<String> = l.emails.iter().map(|a| a.contact.to_string()).collect();
                c.extend(l.contact_ids.iter().map(|a| a.contact.to_string()));
                (l.list.to_string(), c)
            })
            .collect();
        // Only the failed and the unaccounted contact are asserted again; the confirmed ones,
        // on both lists, are not.
        assert_eq!(
            asserted,
            [
                (
                    "l1".to_string(),
                    vec!["b@example.com".to_string(), "c@example.com".to_string()]
                ),
                ("l2".to_string(), vec![])
            ]
        );

        let lists = store.lists(5).unwrap();
        let counts: Vec<(&str, i64, i64, i64, i64)> = lists
            .iter()
            .map(|l| {
                (
                    l.contact_list_id.as_str(),
                    l.confirmed,
                    l.failed,
                    l.unaccounted,
                    l.requests,
                )
            })
            .collect();
        assert_eq!(counts, [("l1", 2, 1, 1, 7), ("l2", 1, 0, 0, 0)]);
        assert_eq!(lists[0].failing[0].contact, "b@example.com");
    }

    /// The counts the triggers keep, next to a count of the rows themselves.
    /// (confirmed, failed, unaccounted) per list.
    type Counts = Vec<(i64, i64, i64)>;

    fn kept_and_counted(store: &Store) -> (Counts, Counts) {
        store
            .with(|conn| {
                let kept = conn
                    .prepare("SELECT confirmed, failed, unaccounted FROM lists ORDER BY id")?
                    .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
                    .collect::<rusqlite::Result<Vec<_>>>()?;
                let counted = conn
                    .prepare(
                        "SELECT (SELECT COUNT(*) FROM contacts c WHERE c.list = l.id
                                   AND confirmed_at IS NOT NULL AND failed_at IS NULL
                                   AND unaccounted = 0),
                                (SELECT COUNT(*) FROM contacts c WHERE c.list = l.id
                                   AND failed_at IS NOT NULL),
                                (SELECT COUNT(*) FROM contacts c WHERE c.list = l.id
                                   AND unaccounted > 0 AND failed_at IS NULL)
                         FROM lists l ORDER BY id",
                    )?
                    .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
                    .collect::<rusqlite::Result<Vec<_>>>()?;
                Ok((kept, counted))
            })
            .unwrap()
    }

    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        #[test]
        fn the_per_list_counts_always_equal_a_count_of_the_rows(
            steps in proptest::collection::vec(
                (0u8..2, proptest::collection::vec((0u8..6, 0u8..4), 1..8), 0u8..10),
                1..20,
            )
        ) {
            let store = Store::in_memory().unwrap();
            for (i, (list, batch, forget)) in steps.iter().enumerate() {
                let list = ListKey::default_account(ContactListId::parse(&format!("l{list}")).unwrap());
                let outcomes: Vec<(String, ContactOutcome)> = batch
                    .iter()
                    .map(|(c, o)| {
                        let outcome = match o {
                            0 | 1 => ContactOutcome::Confirmed,
                            2 => ContactOutcome::Failed("no".into()),
                            _ => ContactOutcome::Unaccounted,
                        };
                        (format!("c{c}@example.com"), outcome)
                    })
                    .collect();
                let refs: Vec<(&str, ContactOutcome)> =
                    outcomes.iter().map(|(c, o)| (c.as_str(), o.clone())).collect();
                store.record_batch(&list, ContactKind::Email, &refs, i as i64).unwrap();
                if *forget == 0 {
                    // Keep only even-numbered contacts of l0; l1 is forgotten whole.
                    let l0 = ListKey::default_account(ContactListId::parse("l0").unwrap());
                    let keep = |_: ContactKind, c: &str| {
                        c.as_bytes()[1].is_ascii_digit() && (c.as_bytes()[1] - b'0').is_multiple_of(2)
                    };
                    store.forget_unlisted(&[(&l0, &keep)]).unwrap();
                }
                let (kept, counted) = kept_and_counted(&store);
                prop_assert_eq!(kept, counted);
            }
        }
    }
}
