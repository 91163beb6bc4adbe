//! `listwarden run` as a process: the real binary against the in-process fake AutoSend,
//! driven through its manifests, signals and HTTP endpoints.

mod support;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use autosend_fake::{FakeConfig, Faults};
use support::daemon::{Harness, L1, L2, Opts, metric_sum, parse_sample};
use support::fake::fake_config;
use support::{KEY, Policy, emails, listwarden, output, policy, write_atomic};

const CONVERGE: Duration = Duration::from_secs(10);

/// One list with members and one policy naming some of them; the daemon started and
/// converged.
fn converged_one_list(policy_emails: &[String], extra_members: &[String]) -> Harness {
    let mut h = Harness::new();
    h.fake().add_contacts(L1, policy_emails);
    h.fake().add_contacts(L1, extra_members);
    h.write("p1.yaml", &policy("p1", L1, policy_emails));
    h.start();
    h.wait_ready(CONVERGE);
    h.wait_removed(L1, policy_emails, CONVERGE);
    h.wait_reason("p1", "Converged", CONVERGE);
    h
}

#[test]
fn an_edited_manifest_is_reconciled_within_two_seconds() {
    let first = emails("a", 3);
    let h = converged_one_list(
        &first,
        &[
            "new@example.com".to_string(),
            "keep@example.com".to_string(),
        ],
    );
    assert!(h.fake().is_member(L1, "new@example.com"));

    let mut edited = first.clone();
    edited.push("new@example.com".into());
    let written = Instant::now();
    h.write("p1.yaml", &policy("p1", L1, &edited));
    h.wait(
        "a remove batch with new@example.com",
        Duration::from_secs(2),
        || {
            h.sent_since(L1, 0)
                .contains("new@example.com")
                .then_some(())
        },
    );
    let latency = written.elapsed();
    assert!(!h.fake().is_member(L1, "new@example.com"));
    assert!(h.fake().is_member(L1, "keep@example.com"));
    assert!(latency < Duration::from_secs(2), "took {latency:?}");
    eprintln!("edit to remove request: {latency:?}");
    h.wait_reason("p1", "Converged", CONVERGE);
    // Only the new contact was sent after the edit: the others were confirmed already.
    let all: Vec<String> = h.ok_batches().into_iter().flat_map(|b| b.entries).collect();
    assert_eq!(
        all.iter().filter(|e| e.starts_with('a')).count(),
        3,
        "confirmed contacts sent again: {all:?}"
    );
}

#[test]
fn a_burst_of_fifty_renames_makes_only_a_few_reconciles() {
    burst(false);
}

#[test]
fn a_burst_of_fifty_in_place_writes_makes_only_a_few_reconciles() {
    burst(true);
}

/// 50 writes of a data file in ~1 s, each adding one address: by rename (editors, git) or
/// in place (truncate and write, like `>` in a shell).
fn burst(in_place: bool) {
    let mut h = Harness::new();
    let burst = emails("burst", 50);
    h.fake().add_contacts(L1, &burst);
    h.fake().add_contacts(L1, ["seed@example.com"]);
    h.write("data.txt", "seed@example.com\n");
    h.write("p1.yaml", &Policy::new("p1", L1).file("data.txt").yaml());
    h.start();
    h.wait_ready(CONVERGE);
    h.wait_removed(L1, &["seed@example.com".to_string()], CONVERGE);
    let reconciles = |h: &Harness| h.metric_sum("listwarden_reconciles_total", &[("list", L1)]);
    let before = reconciles(&h);
    let loads_before = h.metric_sum("listwarden_manifest_loads_total", &[]);

    // 50 writes of the data file in ~1 s, each adding one address.
    let mut text = String::from("seed@example.com\n");
    let started = Instant::now();
    for (i, e) in burst.iter().enumerate() {
        text.push_str(e);
        text.push('\n');
        if in_place {
            std::fs::write(h.manifests().join("data.txt"), &text).unwrap();
        } else {
            h.write("data.txt", &text);
        }
        let next = started + Duration::from_millis(20 * (i as u64 + 1));
        std::thread::sleep(next.saturating_duration_since(Instant::now()));
    }
    let burst_took = started.elapsed();
    h.wait_removed(L1, &burst, CONVERGE);
    // Settle: no further reconcile for a second.
    let mut last = reconciles(&h);
    let mut stable_since = Instant::now();
    h.wait("the reconcile count to settle", CONVERGE, || {
        let now = reconciles(&h);
        if now != last {
            last = now;
            stable_since = Instant::now();
        }
        (stable_since.elapsed() >= Duration::from_secs(1)).then_some(())
    });
    let made = last - before;
    let loads = h.metric_sum("listwarden_manifest_loads_total", &[]) - loads_before;
    eprintln!(
        "burst of 50 writes (in place: {in_place}) in {burst_took:?}: {loads} reload(s), {made} reconcile(s)"
    );
    assert!(made >= 1.0);
    assert!(
        made <= 3.0,
        "{made} reconciles ({loads} reloads) for one burst of 50 writes\n{}",
        h.log_text()
    );
}

#[test]
fn an_invalid_manifest_is_reported_and_the_others_keep_converging() {
    let mut h = Harness::new();
    let a = emails("a", 2);
    let b = emails("b", 2);
    h.fake().add_contacts(L1, &a);
    h.fake().add_contacts(L1, ["a-later@example.com"]);
    h.fake().add_contacts(L2, &b);
    h.fake().add_contacts(L2, ["b-later@example.com"]);
    h.write("pa.yaml", &policy("pa", L1, &a));
    h.write("pb.yaml", &policy("pb", L2, &b));
    h.start();
    h.wait_ready(CONVERGE);
    h.wait_reason("pa", "Converged", CONVERGE);
    h.wait_reason("pb", "Converged", CONVERGE);
    assert_eq!(h.metric_sum("listwarden_manifest_errors", &[]), 0.0);

    // Break pa.yaml.
    h.write(
        "pa.yaml",
        "apiVersion: listwarden.dev/v1\nkind: ListPolicy\nmetadata: [name: pa\n",
    );
    let (ready, _, message) = h.wait_reason("pa", "ManifestInvalid", CONVERGE);
    assert_eq!(ready, "False");
    assert!(
        message.contains("pa.yaml"),
        "message does not name the file: {message}"
    );
    h.wait("listwarden_manifest_errors > 0", CONVERGE, || {
        (h.metric_sum("listwarden_manifest_errors", &[]) > 0.0).then_some(())
    });
    assert!(h.status()["ready"] == false);

    // The other policy still converges.
    let mut b2 = b.clone();
    b2.push("b-later@example.com".into());
    h.write("pb.yaml", &policy("pb", L2, &b2));
    h.wait_removed(
        L2,
        &["b-later@example.com".to_string()],
        Duration::from_secs(3),
    );
    h.wait_reason("pb", "Converged", CONVERGE);
    assert_eq!(h.condition("pa").unwrap().1, "ManifestInvalid");

    // Fixed (with one more contact): it converges again.
    let mut a2 = a.clone();
    a2.push("a-later@example.com".into());
    h.write("pa.yaml", &policy("pa", L1, &a2));
    h.wait_removed(
        L1,
        &["a-later@example.com".to_string()],
        Duration::from_secs(3),
    );
    h.wait_reason("pa", "Converged", CONVERGE);
    h.wait("listwarden_manifest_errors == 0", CONVERGE, || {
        (h.metric_sum("listwarden_manifest_errors", &[]) == 0.0).then_some(())
    });

    // A deleted manifest's policy is held (a partial checkout looks the same), then leaves
    // /status once the deletion is approved.
    h.remove_manifest("pb.yaml");
    let (_, _, message) = h.wait_reason("pb", "ThresholdExceeded", CONVERGE);
    assert!(message.contains("no longer in the manifests"), "{message}");
    let state = h.state();
    output(listwarden().args(["approve", "pb", "--state"]).arg(&state)).code(0);
    h.wait("pb to leave /status", CONVERGE, || {
        h.policy_status("pb").is_none().then_some(())
    });
    assert!(h.policy_status("pa").is_some());
    assert!(h.daemon().running());
}

#[test]
fn server_errors_beyond_the_client_retries_are_requeued_until_they_pass() {
    // With `--max-retries 2 --retry-backoff 20ms` the client tries a request 3 times: 3
    // 503s fail the first reconcile, which is requeued (1 s backoff), then converges.
    let mut h = Harness::with_fake(FakeConfig {
        faults: Faults {
            fail_next: Some((503, 3)),
            ..Faults::default()
        },
        ..fake_config(KEY)
    });
    let a = emails("a", 3);
    h.fake().add_contacts(L1, &a);
    h.write("p1.yaml", &policy("p1", L1, &a));
    h.start_with(Opts {
        extra: vec![
            "--max-retries".into(),
            "2".into(),
            "--retry-backoff".into(),
            "20ms".into(),
        ],
        ..Opts::default()
    });
    let pid = h.daemon().pid();
    h.wait("a failed reconcile", Duration::from_secs(10), || {
        (h.metric_sum(
            "listwarden_reconciles_total",
            &[("list", L1), ("result", "failed")],
        ) >= 1.0)
            .then_some(())
    });
    assert_eq!(h.fake().counters().count("get_list", 503), 3);
    h.wait_removed(L1, &a, Duration::from_secs(10));
    h.wait_reason("p1", "Converged", CONVERGE);
    h.wait_ready(CONVERGE);
    assert!(h.daemon().running());
    assert_eq!(h.daemon().pid(), pid);
    assert!(
        h.log_text().contains("requeued after failure"),
        "{}",
        h.log_text()
    );
}

#[test]
fn a_refused_key_pauses_api_work_and_keeps_running() {
    let mut h = Harness::new();
    let a = emails("a", 3);
    h.fake().add_contacts(L1, &a);
    h.write("p1.yaml", &policy("p1", L1, &a));
    h.start_with(Opts {
        key: "wrong-key".into(),
        ..Opts::default()
    });
    let (ready, _, _) = h.wait_reason("p1", "Unauthorized", CONVERGE);
    assert_eq!(ready, "False");
    let (code, body) = h.get("/readyz").unwrap();
    assert_eq!(code, 503, "{body}");
    assert!(body.contains("refused"), "{body}");
    // Paused: no request for a while, and still alive and serving.
    let requests = h.fake().counters().requests;
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(
        h.fake().counters().requests,
        requests,
        "API work was not paused"
    );
    assert!(h.daemon().running());
    assert_eq!(h.get("/healthz").unwrap().0, 200);
    assert_eq!(h.get("/readyz").unwrap().0, 503);
    assert!(a.iter().all(|c| h.fake().is_member(L1, c)));
}

#[test]
fn a_401_pauses_until_sighup_then_it_converges() {
    let mut h = Harness::with_fake(FakeConfig {
        faults: Faults {
            fail_next: Some((401, 1)),
            ..Faults::default()
        },
        ..fake_config(KEY)
    });
    let a = emails("a", 3);
    h.fake().add_contacts(L1, &a);
    h.write("p1.yaml", &policy("p1", L1, &a));
    h.start();
    h.wait_reason("p1", "Unauthorized", CONVERGE);
    h.wait("/readyz 503", CONVERGE, || {
        matches!(h.get("/readyz"), Some((503, _))).then_some(())
    });
    assert!(h.daemon().running());
    h.daemon().signal("HUP");
    h.wait_removed(L1, &a, CONVERGE);
    h.wait_reason("p1", "Converged", CONVERGE);
    h.wait_ready(CONVERGE);
}

#[test]
fn sigterm_during_a_long_reconcile_exits_0_and_a_restart_resends_nothing_confirmed() {
    let mut h = Harness::new();
    let all = emails("m", 300);
    h.fake().add_contacts(L1, &all);
    h.write("p1.yaml", &policy("p1", L1, &all));
    h.start_with(Opts {
        rate_limit: "5/s".into(),
        extra: ["--batch-size", "10", "--strategy", "assert"]
            .map(String::from)
            .to_vec(),
        ..Opts::default()
    });
    h.wait("3 remove batches answered", Duration::from_secs(10), || {
        (h.ok_batches().len() >= 3).then_some(())
    });
    let mut d = h.take_daemon();
    let sent = Instant::now();
    d.signal("TERM");
    let status = d.wait_exit(Duration::from_secs(10)).unwrap_or_else(|| {
        panic!("no exit within 10 s of SIGTERM\n{}", d.log_text());
    });
    let took = sent.elapsed();
    assert_eq!(status.code(), Some(0), "{}", d.log_text());
    eprintln!("exit {took:?} after SIGTERM");
    drop(d);

    // Everything the first process got a 200 for (the request in flight at SIGTERM included).
    let before = h.batch_count();
    let confirmed: BTreeSet<String> = h.sent_since(L1, 0);
    assert!(
        confirmed.len() < all.len(),
        "the apply finished before SIGTERM; nothing to resume"
    );

    h.start();
    h.wait_removed(L1, &all, Duration::from_secs(15));
    h.wait_reason("p1", "Converged", CONVERGE);
    let resent: BTreeSet<String> = h.sent_since(L1, before);
    let again: Vec<&String> = resent.intersection(&confirmed).collect();
    assert!(again.is_empty(), "sent again after the restart: {again:?}");
    let union: BTreeSet<String> = confirmed.union(&resent).cloned().collect();
    assert_eq!(union.len(), all.len());
}

#[test]
fn metrics_are_valid_prometheus_text_with_the_expected_names() {
    let a = emails("a", 3);
    let h = converged_one_list(&a, &[]);
    let text = h.metrics();
    let mut names = BTreeSet::new();
    for line in text.lines() {
        if line.starts_with('#') {
            assert!(
                line == "# EOF"
                    || line.starts_with("# HELP ")
                    || line.starts_with("# TYPE ")
                    || line.starts_with("# UNIT "),
                "bad comment line: {line:?}"
            );
            continue;
        }
        let (name, _, _) =
            parse_sample(line).unwrap_or_else(|e| panic!("{e}: {line:?}\n--- metrics ---\n{text}"));
        names.insert(name);
    }
    for expected in [
        "listwarden_reconciles_total",
        "listwarden_reconcile_duration_seconds_bucket",
        "listwarden_contacts_total",
        "listwarden_pending_contacts",
        "listwarden_api_requests_total",
        "listwarden_rate_limited_total",
        "listwarden_pacing_wait_seconds_total",
        "listwarden_policy_ready",
        "listwarden_manifest_errors",
        "listwarden_last_success_timestamp_seconds",
    ] {
        assert!(names.contains(expected), "no {expected} sample in\n{text}");
    }
    assert_eq!(text.trim_end().lines().last(), Some("# EOF"));
    assert!(text.ends_with("# EOF\n"), "must end with # EOF");
    assert_eq!(
        metric_sum(
            &text,
            "listwarden_policy_ready",
            &[("policy", "p1"), ("reason", "Converged")]
        ),
        1.0
    );
    assert!(
        metric_sum(
            &text,
            "listwarden_contacts_total",
            &[("list", L1), ("outcome", "removed")]
        ) >= 3.0
    );
    assert!(
        metric_sum(
            &text,
            "listwarden_api_requests_total",
            &[("endpoint", "remove"), ("status", "200")]
        ) >= 1.0
    );
}

#[test]
fn sighup_reloads_and_reasserts_every_confirmed_contact() {
    let mut h = Harness::new();
    let a = emails("a", 4);
    let b = emails("b", 3);
    h.fake().add_contacts(L1, &a);
    h.fake().add_contacts(L2, &b);
    h.write("pa.yaml", &policy("pa", L1, &a));
    h.write("pb.yaml", &policy("pb", L2, &b));
    h.start();
    h.wait_ready(CONVERGE);
    h.wait_removed(L1, &a, CONVERGE);
    h.wait_removed(L2, &b, CONVERGE);
    h.wait_reason("pa", "Converged", CONVERGE);
    h.wait_reason("pb", "Converged", CONVERGE);
    let before = h.batch_count();
    // Someone re-adds one contact behind listwarden's back; SIGHUP catches it.
    h.fake().add_contacts(L1, ["a0@example.com"]);
    h.daemon().signal("HUP");
    let want_a: BTreeSet<String> = a.iter().cloned().collect();
    let want_b: BTreeSet<String> = b.iter().cloned().collect();
    h.wait(
        "every confirmed contact asserted again",
        Duration::from_secs(5),
        || (h.sent_since(L1, before) == want_a && h.sent_since(L2, before) == want_b).then_some(()),
    );
    h.wait_removed(L1, &a, CONVERGE);
    h.wait_reason("pa", "Converged", CONVERGE);
    assert!(h.daemon().running());
}

/// What git-sync does on each sync: a new worktree under `.worktrees/`, the `policies` link
/// swapped to it atomically (a new link renamed over the old one), the old worktree deleted.
fn git_sync_swap(root: &std::path::Path, rev: &str, manifest: &str) {
    let wt = root.join(".worktrees").join(rev);
    write_atomic(&wt.join("manifests/p1.yaml"), manifest);
    let old = std::fs::read_link(root.join("policies")).ok();
    let tmp = root.join("tmp-link");
    let _ = std::fs::remove_file(&tmp);
    std::os::unix::fs::symlink(format!(".worktrees/{rev}"), &tmp).unwrap();
    std::fs::rename(&tmp, root.join("policies")).unwrap();
    if let Some(old) = old {
        std::fs::remove_dir_all(root.join(old)).unwrap();
    }
}

#[test]
fn a_git_sync_checkout_is_followed_across_worktree_swaps() {
    let mut h = Harness::new();
    let all = emails("g", 5);
    h.fake().add_contacts(L1, &all);
    // The daemon watches <root>/policies/manifests, where <root>/policies is git-sync's link.
    let root = h.manifests();
    git_sync_swap(&root, "rev1", &policy("p1", L1, &all[..1]));
    h.start_with(Opts {
        path: Some(root.join("policies/manifests")),
        ..Opts::default()
    });
    h.wait_ready(CONVERGE);
    h.wait_removed(L1, &all[..1], CONVERGE);
    for (i, rev) in ["rev2", "rev3", "rev4", "rev5"].into_iter().enumerate() {
        git_sync_swap(&root, rev, &policy("p1", L1, &all[..i + 2]));
        h.wait_removed(L1, &all[i + 1..i + 2], Duration::from_secs(3));
    }
    // The watch follows the link to the current checkout: an edit made there is seen too.
    let extra = "g-extra@example.com".to_string();
    h.fake().add_contacts(L1, [&extra]);
    let mut last = all.clone();
    last.push(extra.clone());
    write_atomic(
        &root.join("policies/manifests/p1.yaml"),
        &policy("p1", L1, &last),
    );
    h.wait_removed(L1, &[extra], Duration::from_secs(3));
}

/// utime + stime of a process, in clock ticks (Linux).
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // Fields after the command name (which may hold spaces) start after the last ')'.
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()
}

#[test]
fn a_list_moved_away_during_its_reconcile_leaves_the_daemon_idle() {
    let mut h = Harness::new();
    let all = emails("mv", 40);
    h.fake().add_contacts(L1, &all);
    h.fake().add_contacts(L2, &all);
    h.write("p1.yaml", &policy("p1", L1, &all));
    h.start_with(Opts {
        rate_limit: "10/s".into(),
        // A short interval: a list left scheduled without a desired state would fall due,
        // and the scheduler would find nothing to run and never sleep.
        extra: [
            "--batch-size",
            "5",
            "--strategy",
            "assert",
            "--interval",
            "1s",
        ]
        .map(String::from)
        .to_vec(),
        ..Opts::default()
    });
    h.wait("the first batch", Duration::from_secs(10), || {
        (!h.ok_batches().is_empty()).then_some(())
    });
    // While L1 is being reconciled, the policy moves to L2.
    h.write("p1.yaml", &policy("p1", L2, &all));
    h.wait_removed(L2, &all, Duration::from_secs(15));
    h.wait_reason("p1", "Converged", CONVERGE);
    // L1's run has ended too (its batches stop); the daemon must now sleep, not spin.
    std::thread::sleep(Duration::from_millis(1500));
    let pid = h.daemon().pid();
    let before = cpu_ticks(pid);
    std::thread::sleep(Duration::from_secs(2));
    let used = cpu_ticks(pid) - before;
    // 2 s of a busy loop would be ~200 ticks; an idle daemon uses 0 or 1.
    assert!(used < 20, "{used} ticks of CPU in 2 s while idle");
    assert!(h.daemon().running());
}

#[test]
fn sigterm_stops_the_daemon_even_when_its_stderr_is_a_closed_pipe() {
    // `listwarden run ... 2>&1 | head`: the reader is gone, every log line fails to write.
    let env = support::fake::Env::plain();
    let members = emails("p", 2);
    env.fake().add_contacts(L1, &members);
    env.manifest("p1.yaml", &policy("p1", L1, &members));
    let port = support::free_port();
    let mut child = env
        .command(KEY)
        .arg("run")
        .arg(env.manifests())
        .arg("--state")
        .arg(env.state())
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stderr.take());
    let deadline = Instant::now() + Duration::from_secs(20);
    while members.iter().any(|m| env.fake().is_member(L1, m)) {
        assert!(Instant::now() < deadline, "the daemon did not converge");
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let stop = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break Some(status);
        }
        if Instant::now() > stop {
            let _ = child.kill();
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(
        status.is_some(),
        "SIGTERM did not stop the daemon within 10 s"
    );
}
