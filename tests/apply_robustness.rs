//! The real binary under stress: rate limiting by the server (429 with `retryAfter` in
//! seconds, as an epoch timestamp, and with a `Retry-After` header), `kill -9` in the middle
//! of an apply, and the API key kept out of every output and of the state files.

mod support;

use std::collections::BTreeSet;
use std::process::Stdio;
use std::time::{Duration, Instant};

use autosend_fake::{FakeConfig, Faults, RateLimit};
use listwarden::store::Store;
use support::fake::{Env, confirmed, fake_config, removes_sent};
use support::scripted::{Arrivals, header_only_429};
use support::{KEY, Policy, Run, emails, list_status, output, policy, policy_status};

const SECRET: &str = "sk-live-SECRET-123";

/// A fake allowing 5 requests a second, answering each after 100 ms.
fn rate_limited(faults: Faults) -> FakeConfig {
    FakeConfig {
        api_key: KEY.into(),
        rate_limits: vec![RateLimit::per_second(5)],
        faults: Faults {
            latency: Duration::from_millis(100),
            ..faults
        },
    }
}

/// Four lists of 30 members, batches of 10: 16 requests against a server allowing 5 a second,
/// sent by a client that paces itself at 50 a second. The client holds back when a response
/// says `X-RateLimit-Remaining: 0`, so 100 ms of server latency keeps several requests in
/// flight at once: those reach a full window and get 429s.
fn rate_limited_apply(env: &Env) {
    let lists = ["list-a", "list-b", "list-c", "list-d"];
    for (i, list) in lists.iter().enumerate() {
        let prefix = format!("c{i}-");
        env.fake().add_contacts(list, emails(&prefix, 30));
        env.manifest(
            &format!("{list}.yaml"),
            &policy(&format!("p{i}"), list, &emails(&prefix, 30)),
        );
    }

    let started = Instant::now();
    let run = env.apply(&["--rate-limit", "50/s", "--batch-size", "10"]);
    let took = started.elapsed();
    run.code(0);
    let c = env.fake().counters();
    assert!(c.rate_limited > 0, "the server never said 429: {c:?}");
    assert_eq!(c.count("remove", 200), 12, "{c:?}");
    assert_eq!(c.count("get_list", 200), 4, "{c:?}");
    for list in lists {
        assert_eq!(env.fake().member_count(list), 0, "{list}");
    }
    // 16 accepted requests at 5 a second span four epoch windows: more than two whole ones.
    assert!(took >= Duration::from_secs(2), "{took:?}");
    assert!(took < Duration::from_secs(30), "{took:?}");

    let doc = env.status_json();
    assert_eq!(doc["ready"], true, "{doc:#}");
    let counted: u64 = lists
        .iter()
        .map(|l| list_status(&doc, l)["rate_limited"].as_u64().unwrap())
        .sum();
    assert_eq!(
        counted, c.rate_limited,
        "listwarden counted every 429 the server sent"
    );
    assert!(
        run.stdout
            .lines()
            .any(|l| l.contains("rate-limited") && !l.contains(" 0 rate-limited")),
        "{}",
        run.stdout
    );
}

#[test]
fn rate_limited_with_retry_after_in_seconds_waits_and_converges() {
    rate_limited_apply(&Env::new(rate_limited(Faults::default())));
}

#[test]
fn rate_limited_with_retry_after_as_an_epoch_timestamp_waits_and_converges() {
    rate_limited_apply(&Env::new(rate_limited(Faults {
        retry_after_epoch: true,
        ..Faults::default()
    })));
}

/// The same, with every 429 rewritten so that only a `Retry-After` header says how long to
/// wait: twice the client's default wait for a 429 without a readable hint, so a client that
/// ignored the header would come back too early. Every request answered 429 is sent again no
/// sooner than that (less 10%), and is then accepted.
#[test]
fn rate_limited_with_a_retry_after_header_waits_and_converges() {
    const RETRY_AFTER: Duration = Duration::from_secs(2);
    let log = Arrivals::default();
    let env = Env::wrapped(rate_limited(Faults::default()), |fake| {
        header_only_429(fake, RETRY_AFTER.as_secs(), log.clone())
    });
    rate_limited_apply(&env);

    let arrivals = log.all();
    let limited: Vec<_> = arrivals.iter().filter(|a| a.status == 429).collect();
    assert!(!limited.is_empty(), "no 429 to wait out: {arrivals:#?}");
    for a in limited {
        let again: Vec<_> = arrivals
            .iter()
            .filter(|b| b.request == a.request && b.at > a.at)
            .collect();
        let next = again
            .iter()
            .map(|b| b.at)
            .min()
            .unwrap_or_else(|| panic!("never sent again after its 429: {}", a.request));
        let waited = next - a.at;
        assert!(
            waited >= RETRY_AFTER.mul_f64(0.9),
            "sent again {waited:?} after a 429 asking for {RETRY_AFTER:?}: {}",
            a.request
        );
        assert!(
            again.iter().any(|b| b.status == 200),
            "never accepted after its 429: {}",
            a.request
        );
    }
}

fn contains(haystack: &[u8], needle: &str) -> bool {
    haystack
        .windows(needle.len())
        .any(|w| w == needle.as_bytes())
}

/// The state database and its `-wal` / `-shm` files, whichever exist.
fn state_files(env: &Env) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    for suffix in ["", "-wal", "-shm", "-journal"] {
        let p = format!("{}{suffix}", env.state().display());
        if let Ok(bytes) = std::fs::read(&p) {
            out.push((p, bytes));
        }
    }
    out
}

/// A long apply in the background (300 contacts at 5 requests/s in batches of 10), its
/// output in `stdout` / `stderr` beside the state.
fn spawn_slow_apply(env: &Env) -> std::process::Child {
    let log = |name: &str| std::fs::File::create(env.dir.path().join(name)).unwrap();
    env.apply_command(SECRET, &["--rate-limit", "5/s", "--batch-size", "10"])
        .stdout(Stdio::from(log("stdout")))
        .stderr(Stdio::from(log("stderr")))
        .spawn()
        .unwrap()
}

#[test]
fn kill_9_mid_apply_then_rerun_sends_only_unconfirmed_batches() {
    let env = Env::new(fake_config(SECRET));
    let all = emails("k", 300);
    env.fake().add_contacts("list-a", &all);
    Policy::new("pa", "list-a").write_with_emails_file(&env.manifests(), &all);

    let mut child = spawn_slow_apply(&env);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let seen = env
            .fake()
            .counters()
            .remove_batches
            .iter()
            .filter(|b| b.status == 200)
            .count();
        if seen >= 6 {
            break;
        }
        assert!(Instant::now() < deadline, "the apply never got going");
        assert!(child.try_wait().unwrap().is_none(), "apply ended early");
        std::thread::sleep(Duration::from_millis(10));
    }
    child.kill().unwrap(); // SIGKILL
    let status = child.wait().unwrap();
    assert!(!status.success());

    let before = env.fake().counters().remove_batches;
    assert!(before.len() < 30, "the apply finished before the kill");
    assert!(before.iter().all(|b| b.status == 200));
    // The WAL left behind by the kill holds the batches committed so far, and no key.
    let files = state_files(&env);
    assert!(
        files
            .iter()
            .any(|(p, b)| p.ends_with("-wal") && !b.is_empty()),
        "no WAL left by the kill: {:?}",
        files.iter().map(|(p, b)| (p, b.len())).collect::<Vec<_>>()
    );
    for (path, bytes) in files {
        assert!(!contains(&bytes, SECRET), "the API key is in {path}");
    }
    let confirmed = confirmed(&Store::open(&env.state(), "test").unwrap(), "list-a");
    // Each batch is committed before the next is sent: every batch but the last one the
    // server saw (maybe in flight at the kill) is confirmed in the store.
    let (in_flight, committed) = before.split_last().unwrap();
    for b in committed {
        for e in &b.entries {
            assert!(
                confirmed.contains(e),
                "{e} was removed before the kill but is not recorded"
            );
        }
    }
    assert!(confirmed.len() >= committed.len() * 10);

    env.fake().reset_counters();
    let rerun = output(&mut env.apply_command(SECRET, &["--batch-size", "10"]));
    rerun.code(0);
    let resent: BTreeSet<String> = removes_sent(env.fake(), "list-a").into_iter().collect();
    let again: Vec<&String> = resent.intersection(&confirmed).collect();
    assert!(
        again.is_empty(),
        "confirmed before the kill and sent again: {again:?}"
    );
    let in_flight: BTreeSet<&String> = in_flight.entries.iter().collect();
    let expected: BTreeSet<String> = all
        .iter()
        .filter(|e| !confirmed.contains(*e))
        .cloned()
        .collect();
    assert_eq!(
        resent, expected,
        "the rerun sends exactly what was not confirmed"
    );
    assert!(
        resent.len() <= 300 - committed.len() * 10,
        "{} re-sent, {} batches committed before the kill",
        resent.len(),
        committed.len()
    );
    // Only the in-flight batch can have been applied by the server and still be re-sent.
    let c = env.fake().counters();
    assert!(
        c.contacts_not_in_list as usize <= in_flight.len(),
        "{} re-sent contacts were already gone, more than the batch in flight",
        c.contacts_not_in_list
    );
    assert_eq!(env.fake().member_count("list-a"), 0);
    let doc = env.status_json();
    assert_eq!(list_status(&doc, "list-a")["confirmed"], 300);
    assert_eq!(doc["ready"], true);
}

#[test]
fn api_key_appears_in_no_output_and_no_state_file() {
    let env = Env::new(fake_config(SECRET));
    env.fake().add_contacts("list-a", emails("s", 20));
    env.manifest("a.yaml", &policy("pa", "list-a", &emails("s", 20)));
    env.fake()
        .update_faults(|f| f.contact_errors = ["s3@example.com".to_string()].into_iter().collect());
    let m = env.manifests();
    let s = env.state();
    let (m, s) = (m.to_str().unwrap(), s.to_str().unwrap());
    let mut outputs: Vec<(String, Run)> = Vec::new();
    let mut record = |what: &str, r: Run| outputs.push((what.to_string(), r));

    for args in [
        vec!["--help"],
        vec!["apply", "--help"],
        vec!["plan", "--help"],
        vec!["status", "--help"],
        vec!["--version"],
    ] {
        record(&args.join(" "), env.run_with_key(SECRET, &args));
    }
    let r = env.apply(&[]);
    r.code(3);
    record("apply", r);
    // Everything logged at the most verbose level, in both formats.
    for format in ["text", "json"] {
        let r = output(
            env.command(SECRET)
                .env("RUST_LOG", "trace")
                .args([
                    "apply",
                    m,
                    "--state",
                    s,
                    "--rate-limit",
                    "100/s",
                    "--resync",
                ])
                .args(["--log-format", format]),
        );
        assert!(
            r.stderr.contains("strategy chosen"),
            "logging is on:\n{}",
            r.stderr
        );
        record(&format!("apply trace {format}"), r);
    }
    record(
        "status",
        env.run_with_key(SECRET, &["status", "--state", s]),
    );
    record(
        "status json",
        env.run_with_key(SECRET, &["status", "--state", s, "--output", "json"]),
    );
    record("plan", env.run_with_key(SECRET, &["plan", m, "--state", s]));
    record(
        "plan refresh",
        output(env.command(SECRET).env("RUST_LOG", "trace").args([
            "plan",
            m,
            "--state",
            s,
            "--refresh",
            "--rate-limit",
            "100/s",
        ])),
    );
    record(
        "plan refresh json",
        env.run_with_key(
            SECRET,
            &[
                "plan",
                m,
                "--refresh",
                "--output",
                "json",
                "--rate-limit",
                "100/s",
            ],
        ),
    );
    // A refused key is quoted in no error either.
    let wrong = "sk-live-WRONG-456";
    let r = output(env.command(wrong).env("RUST_LOG", "trace").args([
        "apply",
        m,
        "--state",
        s,
        "--rate-limit",
        "100/s",
        "--resync",
    ]));
    r.code(1);
    record("apply wrong key", r);

    assert!(
        env.fake().counters().contacts_removed > 0,
        "the key was used"
    );
    for (what, r) in &outputs {
        for key in [SECRET, wrong, "SECRET-123", "WRONG-456"] {
            assert!(
                !r.stdout.contains(key),
                "{what}: key in stdout:\n{}",
                r.stdout
            );
            assert!(
                !r.stderr.contains(key),
                "{what}: key in stderr:\n{}",
                r.stderr
            );
        }
    }
    let files = state_files(&env);
    assert!(!files.is_empty());
    for (path, bytes) in files {
        for key in [SECRET, wrong] {
            assert!(!contains(&bytes, key), "the API key is in {path}");
        }
    }
}

#[test]
fn sigterm_mid_apply_finishes_the_request_in_flight_exits_1_and_shows_progressing() {
    let env = Env::new(fake_config(SECRET));
    let all = emails("t", 300);
    env.fake().add_contacts("list-a", &all);
    Policy::new("pa", "list-a").write_with_emails_file(&env.manifests(), &all);
    let mut child = spawn_slow_apply(&env);
    let deadline = Instant::now() + Duration::from_secs(30);
    while env.fake().counters().remove_batches.len() < 3 {
        assert!(Instant::now() < deadline, "the apply never got going");
        std::thread::sleep(Duration::from_millis(10));
    }
    let sent = Instant::now();
    std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(
            sent.elapsed() < Duration::from_secs(10),
            "apply did not stop within 10 s of SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(10));
    };
    assert_eq!(status.code(), Some(1), "interrupted apply exits 1");
    let stderr = std::fs::read_to_string(env.dir.path().join("stderr")).unwrap();
    assert!(stderr.contains("signal received"), "{stderr}");
    // Every batch AutoSend answered is recorded: status counts them as confirmed.
    let answered: usize = env
        .fake()
        .counters()
        .remove_batches
        .iter()
        .filter(|b| b.status == 200)
        .map(|b| b.entries.len())
        .sum();
    let doc = env.status_json();
    assert_eq!(list_status(&doc, "list-a")["confirmed"], answered as u64);
    assert_eq!(
        policy_status(&doc, "pa")["condition"]["reason"],
        "Progressing"
    );
}
