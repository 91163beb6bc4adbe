//! Attacks on the store's schema 4 (integer list keys, per-list counts kept by triggers, the
//! in-place migration from schema 3) through the real binary: a migration killed half-way,
//! lists known only from their contact rows, and `status` read while another process writes.

mod support;

use std::collections::BTreeSet;
use std::process::Stdio;
use std::time::{Duration, Instant};

use rusqlite::{Connection, params};
use support::fake::Env;
use support::{Policy, emails, output};

/// Schema 3 as listwarden wrote it (migrations 0 -> 1 -> 2 -> 3, copied here on purpose: a
/// test of the migration must not follow later edits of the old steps).
const V3: &str = "
    CREATE TABLE contacts (
        list_id TEXT NOT NULL, kind INTEGER NOT NULL, contact TEXT NOT NULL,
        confirmed_at INTEGER, revision TEXT, failed_at INTEGER, last_error TEXT,
        attempts INTEGER NOT NULL DEFAULT 0,
        unaccounted INTEGER NOT NULL DEFAULT 0,
        PRIMARY KEY (list_id, kind, contact)) WITHOUT ROWID;
    CREATE TABLE policies (
        name TEXT PRIMARY KEY, contact_list_id TEXT, file TEXT NOT NULL,
        document INTEGER NOT NULL, revision TEXT, last_attempted_revision TEXT,
        last_applied_revision TEXT, last_attempt_at INTEGER, last_success_at INTEGER,
        removed INTEGER NOT NULL DEFAULT 0, not_in_list INTEGER NOT NULL DEFAULT 0,
        failed INTEGER NOT NULL DEFAULT 0, pending INTEGER NOT NULL DEFAULT 0,
        ready TEXT NOT NULL DEFAULT 'Unknown', reason TEXT NOT NULL DEFAULT 'Progressing',
        message TEXT NOT NULL DEFAULT '', last_error TEXT, updated_at INTEGER NOT NULL,
        contacts INTEGER, held_revision TEXT, held_contacts INTEGER, approved_revision TEXT);
    CREATE TABLE lists (
        list_id TEXT PRIMARY KEY, last_attempt_at INTEGER, last_success_at INTEGER,
        last_error TEXT, strategy TEXT, strategy_reason TEXT,
        requests INTEGER NOT NULL DEFAULT 0, rate_limited INTEGER NOT NULL DEFAULT 0,
        drift INTEGER, last_observed_at INTEGER, contact_count INTEGER,
        forget_revision TEXT);
    CREATE TABLE loads (
        id INTEGER PRIMARY KEY CHECK (id = 1), at INTEGER NOT NULL, policies INTEGER NOT NULL,
        invalid INTEGER NOT NULL, errors INTEGER NOT NULL, first_error TEXT);
    PRAGMA user_version = 3;";

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// A schema-3 store: `confirmed` of list-a confirmed a minute ago, `bulk` rows of list-a
/// that no manifest names (some failed, some unaccounted, some with neither), list-b known
/// only from its contact rows, list-c only from its `lists` row.
fn version_3_store(path: &std::path::Path, confirmed: &[String], bulk: usize) {
    let mut conn = Connection::open(path).unwrap();
    conn.execute_batch("PRAGMA journal_mode = WAL;").unwrap();
    conn.execute_batch(V3).unwrap();
    let tx = conn.transaction().unwrap();
    {
        let mut ins = tx
            .prepare(
                "INSERT INTO contacts (list_id, kind, contact, confirmed_at, revision, failed_at,
                                       last_error, attempts, unaccounted)
                 VALUES (?1, ?2, ?3, ?4, 'sha256:old', ?5, ?6, 1, ?7)",
            )
            .unwrap();
        let t = now() - 60;
        for c in confirmed {
            ins.execute(params!["list-a", 0, c, t, None::<i64>, None::<String>, 0])
                .unwrap();
        }
        for i in 0..bulk {
            let (confirmed_at, failed_at, error, unaccounted) = match i % 4 {
                0 | 1 => (Some(t), None, None, 0),
                2 => (None, Some(t), Some("HTTP 500"), 0),
                _ => (None, None, None, 1 + (i % 2) as i64),
            };
            ins.execute(params![
                "list-a",
                (i % 2) as i64,
                format!("bulk{i:08}@example.com"),
                confirmed_at,
                failed_at,
                error,
                unaccounted
            ])
            .unwrap();
        }
        for i in 0..50 {
            ins.execute(params![
                "list-b",
                0,
                format!("b{i}@example.com"),
                t,
                None::<i64>,
                None::<String>,
                0
            ])
            .unwrap();
        }
        tx.execute(
            "INSERT INTO lists (list_id, requests, forget_revision) VALUES ('list-a', 3, 'sha256:k'),
                    ('list-c', 1, NULL)",
            [],
        )
        .unwrap();
    }
    tx.commit().unwrap();
}

/// Per list: (kept confirmed, failed, unaccounted) next to a count of the rows.
fn counts(path: &std::path::Path) -> Vec<(String, [i64; 3], [i64; 3])> {
    let conn = Connection::open(path).unwrap();
    let mut stmt = conn
        .prepare(
            "SELECT l.list_id, l.confirmed, l.failed, l.unaccounted,
                (SELECT COUNT(*) FROM contacts c WHERE c.list = l.id AND confirmed_at IS NOT NULL
                   AND failed_at IS NULL AND unaccounted = 0),
                (SELECT COUNT(*) FROM contacts c WHERE c.list = l.id AND failed_at IS NOT NULL),
                (SELECT COUNT(*) FROM contacts c WHERE c.list = l.id AND unaccounted > 0
                   AND failed_at IS NULL)
             FROM lists l ORDER BY l.list_id",
        )
        .unwrap();
    stmt.query_map([], |r| {
        Ok((
            r.get(0)?,
            [r.get(1)?, r.get(2)?, r.get(3)?],
            [r.get(4)?, r.get(5)?, r.get(6)?],
        ))
    })
    .unwrap()
    .collect::<Result<_, _>>()
    .unwrap()
}

fn user_version(path: &std::path::Path) -> i64 {
    Connection::open(path)
        .unwrap()
        .pragma_query_value(None, "user_version", |r| r.get(0))
        .unwrap()
}

/// `apply` is killed (SIGKILL) while it migrates a large schema-3 store, then run again: the
/// store is either still schema 3 or fully schema 4, the rerun migrates and applies, the
/// counts equal the rows, and nothing the old store had confirmed is sent again.
#[test]
fn a_migration_killed_half_way_leaves_a_store_the_next_run_migrates_and_trusts() {
    let env = Env::plain();
    let confirmed = emails("c", 200);
    let fresh = emails("f", 5);
    env.fake().add_contacts("list-a", &confirmed);
    env.fake().add_contacts("list-a", &fresh);
    Policy::new("pa", "list-a").write_with_emails_file(
        &env.manifests(),
        &[confirmed.clone(), fresh.clone()].concat(),
    );
    version_3_store(&env.state(), &confirmed, 300_000);

    let log = std::fs::File::create(env.dir.path().join("killed.log")).unwrap();
    let mut child = env
        .apply_command(&env.key, &[])
        .stdout(Stdio::from(log.try_clone().unwrap()))
        .stderr(Stdio::from(log))
        .spawn()
        .unwrap();
    let wal = env.dir.path().join("state.db-wal");
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut killed_mid = false;
    loop {
        if child.try_wait().unwrap().is_some() {
            break;
        }
        // The migration's pages spill into the WAL as it goes.
        if std::fs::metadata(&wal).is_ok_and(|m| m.len() > 4 << 20) {
            child.kill().unwrap();
            child.wait().unwrap();
            killed_mid = true;
            break;
        }
        assert!(Instant::now() < deadline, "apply never got going");
        std::thread::sleep(Duration::from_millis(2));
    }
    let after_kill = user_version(&env.state());
    assert!(
        after_kill == 3 || after_kill == 4,
        "schema {after_kill} after the kill"
    );
    eprintln!("killed mid-migration: {killed_mid}, schema after the kill: {after_kill}");
    let sent_before = env.fake().counters().remove_batches.len();
    if after_kill == 3 {
        assert_eq!(
            sent_before, 0,
            "a request was sent before the migration committed"
        );
    }

    let rerun = env.apply(&[]);
    rerun.code(0);
    assert_eq!(
        user_version(&env.state()),
        listwarden::store::SCHEMA_VERSION
    );
    for (list, kept, counted) in counts(&env.state()) {
        assert_eq!(kept, counted, "the counts of {list} drifted from its rows");
    }
    let sent: BTreeSet<String> = env
        .fake()
        .counters()
        .remove_batches
        .iter()
        .filter(|b| b.list_id == "list-a")
        .flat_map(|b| b.entries.iter().cloned())
        .collect();
    let again: Vec<&String> = confirmed.iter().filter(|c| sent.contains(*c)).collect();
    assert!(
        again.is_empty(),
        "contacts the schema-3 store had confirmed were sent again: {again:?}"
    );
    assert!(fresh.iter().all(|f| sent.contains(f)), "{sent:?}");
}

/// `status` (its own read-only connections) read over and over while `apply` writes the same
/// store: every read succeeds, and the counts it shows never move while only resyncs commit.
#[test]
fn status_read_while_another_process_writes_always_answers() {
    let env = Env::plain();
    let all = emails("w", 400);
    env.fake().add_contacts("list-a", &all);
    Policy::new("pa", "list-a").write_with_emails_file(&env.manifests(), &all);
    env.apply(&["--batch-size", "10"]).code(0);
    // Again, slowly, re-asserting every confirmed contact: a writer committing a batch at a
    // time for a few seconds.
    let log = std::fs::File::create(env.dir.path().join("writer.log")).unwrap();
    let mut writer = env
        .apply_command(
            &env.key,
            &["--batch-size", "5", "--rate-limit", "40/s", "--resync"],
        )
        .stdout(Stdio::from(log.try_clone().unwrap()))
        .stderr(Stdio::from(log))
        .spawn()
        .unwrap();
    let state = env.state();
    let mut reads = 0;
    while writer.try_wait().unwrap().is_none() {
        let r = output(env.command(&env.key).args([
            "status",
            "--state",
            state.to_str().unwrap(),
            "--output",
            "json",
        ]));
        r.code(0);
        let doc = r.json();
        let list = support::list_status(&doc, "list-a");
        // A resync re-confirms contacts already confirmed: the kept count never moves.
        assert_eq!(list["confirmed"].as_i64(), Some(400), "{list}");
        assert_eq!(list["failed"].as_i64(), Some(0), "{list}");
        reads += 1;
    }
    assert!(writer.wait().unwrap().success());
    assert!(reads > 3, "only {reads} reads while the writer ran");
    for (list, kept, counted) in counts(&state) {
        assert_eq!(kept, counted, "the counts of {list} drifted from its rows");
    }
}

/// Whether the store holds a row for `contact` on `list`.
fn has_row(path: &std::path::Path, list: &str, contact: &str) -> bool {
    Connection::open(path)
        .unwrap()
        .query_row(
            "SELECT COUNT(*) FROM contacts c JOIN lists l ON l.id = c.list
             WHERE l.list_id = ?1 AND c.contact = ?2",
            params![list, contact],
            |r| r.get::<_, i64>(0),
        )
        .unwrap()
        > 0
}

/// The forget shortcut ("a list last forgotten against the same keep-set holds nothing to
/// forget") assumes only desired contacts are recorded since. Loads with an error elsewhere
/// still apply valid policies but forget nothing: a contact named only during such loads is
/// recorded, and a clean load that no longer names it must forget it.
#[test]
fn a_contact_recorded_while_loads_had_errors_is_forgotten_by_the_next_clean_load() {
    let env = Env::plain();
    let a = emails("a", 1);
    let b = emails("b", 1);
    env.fake()
        .add_contacts("list-a", [a.clone(), b.clone()].concat());
    env.manifest("p.yaml", &support::policy("p", "list-a", &a));
    env.apply(&[]).code(0);
    // Once more: now that the list has rows, the clean load records its keep-set.
    env.apply(&[]).code(0);
    // Another manifest breaks; meanwhile p names b (b is removed and recorded), then no
    // longer does.
    env.manifest("broken.yaml", "apiVersion: listwarden.dev/v1\nkind: ListPolicy\nmetadata: {name: broken}\nspec: {exlcude: {}}\n");
    env.manifest(
        "p.yaml",
        &support::policy("p", "list-a", &[a.clone(), b.clone()].concat()),
    );
    let _ = env.apply(&[]);
    assert!(has_row(&env.state(), "list-a", &b[0]), "b was not recorded");
    env.manifest("p.yaml", &support::policy("p", "list-a", &a));
    let _ = env.apply(&[]);
    // Fixed: a clean load naming only a.
    env.remove_manifest("broken.yaml");
    env.apply(&[]).code(0);
    assert!(
        !has_row(&env.state(), "list-a", &b[0]),
        "b, named by no policy, is still remembered after a clean load"
    );
    let doc = env.status_json();
    let list = support::list_status(&doc, "list-a");
    assert_eq!(list["confirmed"].as_i64(), Some(1), "{list}");
}
