//! The daemon's safety promises under change, as an attacker or an unlucky operator would
//! test them: an edit mid-reconcile stops what no manifest names any more, a store deleted
//! under it fails readiness, a missing manifests path (git-sync not cloned yet) makes it
//! wait, not crash, and `/status` shows no address unless asked.

mod support;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use support::daemon::{Harness, L1, L2, Opts};
use support::fake::{Env, fake_config};
use support::scripted;
use support::{KEY, Policy, emails, listwarden, output, policy, write_atomic};

const CONVERGE: Duration = Duration::from_secs(15);

fn addresses(prefix: &str, range: std::ops::Range<usize>) -> Vec<String> {
    range
        .map(|i| format!("{prefix}{i:03}@example.com"))
        .collect()
}

/// A daemon at 5 requests/s with batches of 10, reconciling a 200-address file source on L1,
/// every address a member; returns once some batches were sent.
fn mid_pass(extra_spec: &str) -> (Harness, Vec<String>) {
    let mut h = Harness::new();
    let all = addresses("d", 0..200);
    h.fake().add_contacts(L1, &all);
    std::fs::write(h.manifests().join("d.txt"), all.join("\n") + "\n").unwrap();
    h.write(
        "p.yaml",
        &Policy::new("p", L1).spec(extra_spec).file("d.txt").yaml(),
    );
    h.start_with(Opts {
        rate_limit: "5/s".into(),
        extra: vec![
            "--batch-size".into(),
            "10".into(),
            "--strategy".into(),
            "assert".into(),
        ],
        ..Opts::default()
    });
    h.wait("a few batches to be sent", CONVERGE, || {
        (h.ok_batches().len() >= 4).then_some(())
    });
    (h, all)
}

/// Addresses of `dropped` that reached the remove endpoint at batch index `from` or later.
fn dropped_sent(h: &Harness, dropped: &[String], from: usize) -> usize {
    let sent = h.sent_since(L1, from);
    dropped.iter().filter(|d| sent.contains(*d)).count()
}

#[test]
fn contacts_dropped_from_a_file_mid_reconcile_are_not_removed_after_the_edit() {
    let (h, all) = mid_pass("");
    // The batches go in address order: keep the first half, drop the second, still pending.
    let (kept, dropped) = all.split_at(100);
    let at_edit = h.batch_count();
    std::fs::write(h.manifests().join("d.txt"), kept.join("\n") + "\n").unwrap();
    h.wait_removed(L1, kept, CONVERGE);
    h.wait_reason("p", "Converged", CONVERGE);
    // The grace is the debounce (200 ms) plus the request in flight: at 5 requests/s, at
    // most two batches of ten. Before send gates, the old plan went on: 55 were removed.
    let late = dropped_sent(&h, dropped, at_edit);
    assert!(
        late <= 20,
        "{late} contacts no manifest names were removed after the edit"
    );
    let still_members = dropped.iter().filter(|d| h.fake().is_member(L1, d)).count();
    assert!(
        still_members >= 80,
        "only {still_members} dropped contacts are still members"
    );
    assert!(
        h.log_text()
            .contains("the manifests changed during this reconcile"),
        "{}",
        h.log_text()
    );
}

#[test]
fn suspending_a_policy_mid_reconcile_stops_its_sends() {
    let (h, all) = mid_pass("");
    let at_edit = h.batch_count();
    h.write(
        "p.yaml",
        &Policy::new("p", L1)
            .spec("  suspend: true\n")
            .file("d.txt")
            .yaml(),
    );
    h.wait_reason("p", "Suspended", CONVERGE);
    std::thread::sleep(Duration::from_millis(800));
    let late = h.batch_count() - at_edit;
    assert!(
        late <= 2,
        "{late} batches were sent after the policy was suspended"
    );
    let members = all.iter().filter(|a| h.fake().is_member(L1, a)).count();
    assert!(members >= 100, "only {members} of 200 still members");
}

#[test]
fn a_store_deleted_under_the_daemon_fails_readiness_and_stops_sending() {
    let mut h = Harness::new();
    let first = emails("a", 3);
    h.fake().add_contacts(L1, &first);
    h.write("p.yaml", &policy("p", L1, &first));
    h.start();
    h.wait_ready(CONVERGE);
    std::fs::remove_file(h.state()).unwrap();
    let (code, body) = h.wait("/readyz to fail", CONVERGE, || {
        h.get("/readyz").filter(|(c, _)| *c == 503)
    });
    assert_eq!(code, 503);
    assert!(body.contains("deleted or replaced"), "{body}");
    // An edit now would be sent and its outcome lost: nothing is sent.
    let before = h.fake().counters().requests;
    let more = emails("b", 3);
    h.fake().add_contacts(L1, &more);
    h.write("p.yaml", &policy("p", L1, &[first, more.clone()].concat()));
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(h.fake().counters().requests, before, "{}", h.log_text());
    assert!(more.iter().all(|m| h.fake().is_member(L1, m)));
}

#[test]
fn a_missing_manifests_path_waits_not_ready_then_starts_when_it_appears() {
    let mut h = Harness::new();
    let later = h.dir.path().join("checkout");
    h.start_with(Opts {
        path: Some(later.clone()),
        ..Opts::default()
    });
    let (code, body) = h.wait("/readyz to say why", CONVERGE, || {
        h.get("/readyz")
            .filter(|(_, b)| b.contains("does not exist"))
    });
    assert_eq!(code, 503, "{body}");
    std::thread::sleep(Duration::from_millis(1500));
    assert!(h.daemon().running(), "the daemon exited: {}", h.log_text());
    let wanted = emails("g", 2);
    h.fake().add_contacts(L1, &wanted);
    write_atomic(&later.join("p.yaml"), &policy("p", L1, &wanted));
    h.wait_ready(CONVERGE);
    h.wait_removed(L1, &wanted, CONVERGE);
}

#[test]
fn a_manifests_path_without_manifests_is_not_ready_unless_allowed() {
    let mut h = Harness::new();
    std::fs::write(h.manifests().join("notes.json"), "{}").unwrap();
    h.start();
    let (code, body) = h.wait("/readyz to say why", CONVERGE, || {
        h.get("/readyz")
            .filter(|(_, b)| b.contains("no manifests found under"))
    });
    assert_eq!(code, 503, "{body}");
    drop(h.take_daemon());
    h.start_with(Opts {
        extra: vec!["--allow-empty".into()],
        ..Opts::default()
    });
    h.wait_ready(CONVERGE);
}

#[test]
fn status_masks_contact_addresses_unless_exposed() {
    let mut h = Harness::new();
    let bad = "secret.person@example.com".to_string();
    h.fake().add_contacts(L1, [&bad]);
    h.fake().update_faults(|f| {
        f.contact_errors.insert(bad.clone());
    });
    h.write("p.yaml", &policy("p", L1, std::slice::from_ref(&bad)));
    // A manifest error quoting an address: the load's first error is masked too.
    h.write("typo.yaml", &policy("typo", L2, &["leak.me@localhost"]));
    h.start();
    h.wait_reason("p", "PartiallyFailed", CONVERGE);
    let (_, body) = h.get("/status").unwrap();
    assert!(!body.contains("secret.person"), "{body}");
    assert!(body.contains("s***@example.com"), "{body}");
    assert!(!body.contains("leak.me"), "{body}");
    assert!(body.contains("l***@localhost"), "{body}");
    assert!(!h.metrics().contains("secret.person"));
    drop(h.take_daemon());
    h.start_with(Opts {
        extra: vec!["--expose-contacts".into()],
        ..Opts::default()
    });
    h.wait_reason("p", "PartiallyFailed", CONVERGE);
    let (_, body) = h.get("/status").unwrap();
    assert!(body.contains("secret.person@example.com"), "{body}");
}

#[test]
fn a_second_daemon_waits_for_the_store_and_says_so() {
    let mut h = Harness::new();
    let first = emails("a", 2);
    h.fake().add_contacts(L1, &first);
    h.write("p.yaml", &policy("p", L1, &first));
    h.start();
    h.wait_ready(CONVERGE);
    let first_daemon = h.take_daemon();
    h.start();
    h.wait("the second daemon to say it waits", CONVERGE, || {
        h.log_text()
            .contains("the state store is in use; waiting for it to be released")
            .then_some(())
    });
    assert!(
        h.log_text().contains("listwarden run (pid"),
        "{}",
        h.log_text()
    );
    assert!(!h.ready());
    drop(first_daemon);
    h.wait_ready(CONVERGE);
}

#[test]
fn an_approval_recorded_beside_a_running_daemon_lets_a_held_shrink_through() {
    let mut h = Harness::new();
    let all = addresses("h", 0..10);
    h.fake().add_contacts(L1, &all);
    h.write("p.yaml", &policy("p", L1, &all));
    h.start();
    h.wait_reason("p", "Converged", CONVERGE);
    // A truncated export: 8 of 10 gone.
    h.write("p.yaml", &policy("p", L1, &all[..2]));
    let (_, _, message) = h.wait_reason("p", "ThresholdExceeded", CONVERGE);
    assert!(
        message.contains("would forget 8 of its 10 contacts (80%)"),
        "{message}"
    );
    output(
        listwarden()
            .args(["approve", "p", "--state"])
            .arg(h.state()),
    )
    .code(0);
    h.wait_reason("p", "Converged", CONVERGE);
    let confirmed: BTreeSet<String> = h.status()["lists"][0]["confirmed"]
        .as_u64()
        .map(|n| BTreeSet::from([n.to_string()]))
        .unwrap();
    assert_eq!(confirmed, BTreeSet::from(["2".to_string()]));
}

#[test]
fn a_dangling_manifest_symlink_fails_only_itself_and_never_looks_green() {
    let mut h = Harness::new();
    let wanted = emails("s", 2);
    h.fake().add_contacts(L1, &wanted);
    h.write("good.yaml", &policy("good", L1, &wanted));
    std::os::unix::fs::symlink("gone.yaml", h.manifests().join("broken.yaml")).unwrap();
    std::os::unix::fs::symlink("loop", h.manifests().join("loop")).unwrap();
    h.start();
    h.wait_ready(CONVERGE);
    h.wait_removed(L1, &wanted, CONVERGE);
    h.wait_reason("good", "Converged", CONVERGE);
    let status = h.status();
    assert_eq!(status["ready"], false, "{status:#}");
    assert_eq!(status["manifests"]["errors"], 1, "{status:#}");
    assert!(
        status["manifests"]["first_error"]
            .as_str()
            .unwrap()
            .contains("broken.yaml"),
        "{status:#}"
    );
}

#[test]
fn an_edit_waiting_to_be_applied_is_progressing_not_converged() {
    // Once `on`, every remove is answered 429, asking for a minute.
    let on = Arc::new(AtomicBool::new(false));
    let limit = on.clone();
    let mut h = Harness::with_env(Env::wrapped(fake_config(KEY), move |r| {
        scripted::removes_rate_limited(r, 60, move || limit.load(Ordering::SeqCst))
    }));
    let first = emails("e", 2);
    h.fake().add_contacts(L1, &first);
    h.write("p.yaml", &policy("p", L1, &first));
    h.start_with(Opts {
        extra: vec!["--strategy".into(), "assert".into()],
        ..Opts::default()
    });
    h.wait_reason("p", "Converged", CONVERGE);
    on.store(true, Ordering::SeqCst);
    let more = [first.clone(), emails("f", 1)].concat();
    h.fake().add_contacts(L1, &more);
    h.write("p.yaml", &policy("p", L1, &more));
    let (ready, _, message) = h.wait_reason("p", "Progressing", CONVERGE);
    assert_eq!(ready, "Unknown");
    assert!(message.contains("the manifests changed"), "{message}");
    // Still not green a little later: the remove is waiting out its 429.
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(h.condition("p").unwrap().1, "Progressing");
    assert_eq!(h.status()["ready"], false);
}

#[test]
fn a_retry_waiting_out_a_429_is_withdrawn_when_the_manifests_drop_its_contacts() {
    // The first remove is answered 429, asking for 3 s: long enough to edit meanwhile.
    let first = Arc::new(AtomicBool::new(true));
    let mut h = Harness::with_env(Env::wrapped(fake_config(KEY), move |r| {
        scripted::removes_rate_limited(r, 3, move || first.swap(false, Ordering::SeqCst))
    }));
    let wanted = emails("w", 3);
    h.fake().add_contacts(L1, &wanted);
    h.write("p.yaml", &policy("p", L1, &wanted));
    h.start_with(Opts {
        extra: vec!["--strategy".into(), "assert".into()],
        ..Opts::default()
    });
    h.wait("the rate-limited retry to be logged", CONVERGE, || {
        h.log_text().contains("rate limited (429)").then_some(())
    });
    h.write(
        "p.yaml",
        &Policy::new("p", L1)
            .spec("  suspend: true\n")
            .emails(&wanted)
            .yaml(),
    );
    h.wait_reason("p", "Suspended", CONVERGE);
    // Past the 3 s the 429 asked for: the retry was withdrawn at the gate, not sent.
    std::thread::sleep(Duration::from_secs(4));
    assert!(h.ok_batches().is_empty(), "{:?}", h.ok_batches());
    assert!(wanted.iter().all(|w| h.fake().is_member(L1, w)));
}

#[test]
fn edits_under_hidden_paths_and_configmap_swaps_are_seen() {
    let mut h = Harness::new();
    let m = h.manifests();
    let first = emails("c", 2);
    let more = emails("d", 2);
    h.fake().add_contacts(L1, &first);
    h.fake().add_contacts(L1, &more);
    h.fake().add_contacts(L2, &more);
    // A file source in a hidden directory.
    write_atomic(&m.join(".data/list.txt"), &(first.join("\n") + "\n"));
    h.write(
        "files.yaml",
        &Policy::new("files", L1).file(".data/list.txt").yaml(),
    );
    // A manifest mounted the way Kubernetes mounts a ConfigMap: p.yaml -> ..data/p.yaml,
    // ..data -> ..v1, swapped by renaming a new hidden link over ..data.
    let v1 = m.join("..v1");
    std::fs::create_dir_all(&v1).unwrap();
    std::fs::write(v1.join("p.yaml"), policy("mounted", L2, &more[..1])).unwrap();
    std::os::unix::fs::symlink("..v1", m.join("..data")).unwrap();
    std::os::unix::fs::symlink("..data/p.yaml", m.join("p.yaml")).unwrap();
    h.start();
    h.wait_removed(L1, &first, CONVERGE);
    h.wait_removed(L2, &more[..1], CONVERGE);

    write_atomic(&m.join(".data/list.txt"), &(more.join("\n") + "\n"));
    h.wait_removed(L1, &more, CONVERGE);

    let v2 = m.join("..v2");
    std::fs::create_dir_all(&v2).unwrap();
    std::fs::write(v2.join("p.yaml"), policy("mounted", L2, &more)).unwrap();
    std::os::unix::fs::symlink("..v2", m.join("..data_tmp")).unwrap();
    std::fs::rename(m.join("..data_tmp"), m.join("..data")).unwrap();
    h.wait_removed(L2, &more, CONVERGE);
}
