//! `apply`, `plan`, `validate` and `approve` against the safety promises: a truncated export
//! is held, one writer per store, private store files, wrong paths and unreachable servers
//! fail early and loudly with one `error:` line that says what to check.

mod support;

use std::os::unix::fs::PermissionsExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use autosend_fake::{FakeConfig, Faults};
use support::fake::{Env, fake_config};
use support::{KEY, Policy, emails, free_port, list_status, output, policy, policy_status};

#[test]
fn a_truncated_export_is_held_until_approved() {
    let env = Env::plain();
    let all = emails("t", 10);
    env.fake().add_contacts("list-a", &all);
    env.manifest("a.yaml", &policy("pa", "list-a", &all));
    env.apply(&[]).code(0);

    // 8 of 10 contacts gone at once: held, nothing sent, nothing forgotten.
    env.manifest("a.yaml", &policy("pa", "list-a", &all[..2]));
    env.fake().reset_counters();
    let r = env.apply(&[]);
    r.code(1);
    assert_eq!(env.fake().counters().requests, 0);
    assert!(
        r.stdout.contains("list-a: held (pa, see below);"),
        "{}",
        r.stdout
    );
    assert!(
        r.last_stderr_line()
            .starts_with("error: policy pa would forget 8 of its 10 contacts (80%)"),
        "{}",
        r.stderr
    );
    let doc = env.status_json();
    let p = policy_status(&doc, "pa");
    assert_eq!(p["condition"]["reason"], "ThresholdExceeded");
    assert!(
        p["condition"]["message"]
            .as_str()
            .unwrap()
            .contains("listwarden approve pa")
    );
    assert_eq!(list_status(&doc, "list-a")["confirmed"], 10);

    // plan says so too, as a change waiting for a decision.
    let s = env.state();
    let plan = env.plan(&["--detailed-exitcode"]);
    plan.code(2);
    assert!(
        plan.stdout
            .contains("HELD         policy pa would forget 8"),
        "{}",
        plan.stdout
    );

    let approve = env.run(&["approve", "pa", "--state", s.to_str().unwrap()]);
    approve.code(0);
    assert!(
        approve.stdout.contains("from 10 to 2 contacts"),
        "{}",
        approve.stdout
    );
    env.apply(&[]).code(0);
    let doc = env.status_json();
    assert_eq!(list_status(&doc, "list-a")["confirmed"], 2);
    assert_eq!(
        policy_status(&doc, "pa")["condition"]["reason"],
        "Converged"
    );
    // Nothing is left to approve.
    env.run(&["approve", "pa", "--state", s.to_str().unwrap()])
        .code(1);
}

#[test]
fn renaming_a_policy_while_cutting_it_short_holds_the_old_name() {
    let env = Env::plain();
    let all = emails("n", 10);
    env.fake().add_contacts("list-a", &all);
    env.manifest("a.yaml", &policy("pa", "list-a", &all));
    env.apply(&[]).code(0);
    env.remove_manifest("a.yaml");
    env.manifest("a2.yaml", &policy("pa-renamed", "list-a", &all[..1]));
    let r = env.apply(&[]);
    r.code(1);
    assert!(
        r.last_stderr_line()
            .contains("policy pa is no longer in the manifests (it named 10"),
        "{}",
        r.stderr
    );
    assert_eq!(list_status(&env.status_json(), "list-a")["confirmed"], 10);
}

#[test]
fn raising_max_forget_percent_in_the_manifest_lets_a_shrink_through() {
    let env = Env::plain();
    let all = emails("g", 10);
    env.fake().add_contacts("list-a", &all);
    env.manifest("a.yaml", &policy("pa", "list-a", &all));
    env.apply(&[]).code(0);
    env.manifest(
        "a.yaml",
        &Policy::new("pa", "list-a")
            .spec("  maxForgetPercent: 80\n")
            .emails(&all[..3])
            .yaml(),
    );
    env.apply(&[]).code(0);
    assert_eq!(list_status(&env.status_json(), "list-a")["confirmed"], 3);
}

/// An apply that takes a few seconds: 20 contacts one a request at 5 requests/s.
fn spawn_slow_apply(env: &Env, log: &str) -> std::process::Child {
    let log = std::fs::File::create(env.dir.path().join(log)).unwrap();
    env.apply_command(KEY, &["--rate-limit", "5/s", "--batch-size", "1"])
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap()
}

fn wait_for_lock_holder(env: &Env) {
    let lock = env.dir.path().join("state.db.lock");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !std::fs::read_to_string(&lock).is_ok_and(|t| t.contains("pid")) {
        assert!(
            Instant::now() < deadline,
            "the first apply never took the lock"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_second_apply_on_a_store_in_use_is_refused_naming_the_holder() {
    let env = Env::plain();
    env.fake().add_contacts("list-a", emails("s", 20));
    env.manifest("a.yaml", &policy("pa", "list-a", &emails("s", 20)));
    let mut first = spawn_slow_apply(&env, "first.log");
    wait_for_lock_holder(&env);
    let second = env.apply(&[]);
    second.code(1);
    assert!(
        second.stderr.contains("is in use by listwarden apply (pid"),
        "{}",
        second.stderr
    );
    assert!(second.stdout.is_empty(), "{}", second.stdout);
    assert!(first.wait().unwrap().success());
    // Every contact was sent once: the second apply sent nothing.
    assert_eq!(env.fake().counters().remove_requests, 20);
}

#[test]
fn three_applies_racing_on_a_fresh_store_run_once_without_schema_errors() {
    let env = Env::new(FakeConfig {
        faults: Faults {
            latency: Duration::from_millis(100),
            ..Faults::default()
        },
        ..fake_config(KEY)
    });
    env.fake().add_contacts("list-a", emails("r", 5));
    env.manifest("a.yaml", &policy("pa", "list-a", &emails("r", 5)));
    let children: Vec<_> = (0..3)
        .map(|_| {
            env.apply_command(KEY, &["--batch-size", "1"])
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let outs: Vec<_> = children
        .into_iter()
        .map(|c| c.wait_with_output().unwrap())
        .collect();
    let ok = outs.iter().filter(|o| o.status.success()).count();
    assert_eq!(ok, 1, "exactly one apply runs");
    for o in outs.iter().filter(|o| !o.status.success()) {
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(err.contains("is in use by listwarden apply"), "{err}");
        assert!(!err.contains("already exists"), "{err}");
    }
    assert_eq!(env.fake().counters().remove_requests, 5);
}

#[test]
fn the_store_is_private_whatever_the_umask() {
    let env = Env::plain();
    env.fake().add_contacts("list-a", emails("u", 1));
    env.manifest("a.yaml", &policy("pa", "list-a", &emails("u", 1)));
    let m = env.manifests();
    let state = env.dir.path().join("new-dir/state.db");
    let status = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "umask 000; AUTOSEND_API_KEY={KEY} exec {} apply {} --state {} --rate-limit 100/s",
            env!("CARGO_BIN_EXE_listwarden"),
            m.display(),
            state.display()
        ))
        .env("AUTOSEND_API_URL", env.url())
        .stdout(Stdio::null())
        .status()
        .unwrap();
    assert!(status.success());
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&env.dir.path().join("new-dir")), 0o700);
    assert_eq!(mode(&state), 0o600);
    assert_eq!(mode(&env.dir.path().join("new-dir/state.db.lock")), 0o600);
}

#[test]
fn a_world_readable_key_file_is_warned_about_and_a_group_readable_one_is_not() {
    let env = Env::plain();
    env.fake().add_contacts("list-a", emails("k", 1));
    env.manifest("a.yaml", &policy("pa", "list-a", &emails("k", 1)));
    let key = env.dir.path().join("key");
    std::fs::write(&key, KEY).unwrap();
    for (mode, warned) in [(0o644, true), (0o640, false)] {
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(mode)).unwrap();
        let r = output(
            env.command("")
                .env_remove("AUTOSEND_API_KEY")
                .args([
                    "apply",
                    "manifests",
                    "--state",
                    "state.db",
                    "--rate-limit",
                    "100/s",
                ])
                .arg("--api-key-file")
                .arg(&key),
        );
        r.code(0);
        assert_eq!(
            r.stderr.contains("readable by every user"),
            warned,
            "mode {mode:o}: {}",
            r.stderr
        );
    }
}

#[test]
fn a_path_without_manifests_fails_validate_plan_and_apply_unless_allowed() {
    let env = Env::plain();
    std::fs::create_dir_all(env.manifests()).unwrap();
    std::fs::write(env.manifests().join("policy.json"), "{}").unwrap();
    for cmd in ["validate", "plan", "apply"] {
        let state: &[&str] = if cmd == "validate" {
            &[]
        } else {
            &["--state", "state.db"]
        };
        let r = env.run(&[&[cmd, "manifests"], state].concat());
        r.code(1);
        assert!(
            r.last_stderr_line()
                .starts_with("error: no manifests found under manifests"),
            "{cmd}: {}",
            r.stderr
        );
        assert!(r.stdout.is_empty(), "{cmd}: {}", r.stdout);
        env.run(&[&[cmd, "manifests", "--allow-empty"], state].concat())
            .code(0);
    }
}

#[test]
fn apply_on_a_missing_path_prints_nothing_and_creates_no_store() {
    let env = Env::plain();
    let r = env.run(&["apply", "nosuchdir", "--state", "state.db"]);
    r.code(1);
    assert!(r.stdout.is_empty(), "{}", r.stdout);
    assert_eq!(
        r.stderr.trim(),
        "error: manifests path nosuchdir does not exist; give a manifest file or a directory of them"
    );
    assert!(!env.state().exists());
}

#[test]
fn a_refused_connection_ends_with_one_error_line_naming_the_url() {
    let env = Env::plain();
    env.manifest("a.yaml", &policy("pa", "list-a", &emails("c", 1)));
    let closed = free_port();
    let url = format!("http://127.0.0.1:{closed}/v1");
    let r = output(
        env.command(KEY)
            .env("AUTOSEND_API_URL", &url)
            .args([
                "apply",
                "manifests",
                "--state",
                "state.db",
                "--rate-limit",
                "100/s",
            ])
            .args(["--max-retries", "2", "--retry-backoff", "10ms"]),
    );
    r.code(1);
    let last = r.last_stderr_line();
    assert!(
        last.starts_with("error: list list-a: failed: cannot reach AutoSend at"),
        "{last}"
    );
    assert!(last.contains(&url), "{last}");
    assert!(last.contains("check AUTOSEND_API_URL"), "{last}");
    let retries: Vec<&str> = r
        .stderr
        .lines()
        .filter(|l| l.contains("retrying"))
        .collect();
    assert!(!retries.is_empty(), "{}", r.stderr);
    assert!(
        retries
            .iter()
            .all(|l| l.contains(&url) && l.contains(" of ")),
        "{retries:?}"
    );
}

#[test]
fn every_list_not_found_points_at_the_base_url() {
    let env = Env::plain();
    env.fake().add_contacts("list-a", emails("n", 1));
    env.manifest("a.yaml", &policy("pa", "list-a", &emails("n", 1)));
    let without_v1 = env.url().trim_end_matches("/v1").to_string();
    let r = output(env.command(KEY).env("AUTOSEND_API_URL", &without_v1).args([
        "apply",
        "manifests",
        "--state",
        "state.db",
        "--rate-limit",
        "100/s",
    ]));
    r.code(1);
    let last = r.last_stderr_line();
    assert!(
        last.contains("every contact list answered 404 Not Found: is the API URL right?"),
        "{last}"
    );
    assert!(last.contains(&without_v1), "{last}");
}

#[test]
fn store_paths_that_cannot_work_are_explained() {
    let env = Env::plain();
    env.manifest("a.yaml", &policy("pa", "list-a", &emails("x", 1)));
    std::fs::create_dir_all(env.dir.path().join("adir")).unwrap();
    let r = env.run(&["apply", "manifests", "--state", "adir"]);
    r.code(1);
    assert!(
        r.stderr
            .contains("state store adir: is a directory; give the path of a file"),
        "{}",
        r.stderr
    );
    std::fs::write(
        env.dir.path().join("text.db"),
        "not a database, only some words in a file",
    )
    .unwrap();
    let r = env.run(&["status", "--state", "text.db"]);
    r.code(1);
    assert!(
        r.stderr.contains("not a listwarden state store"),
        "{}",
        r.stderr
    );
}

#[test]
fn a_listen_address_without_a_port_gets_a_hint() {
    let env = Env::plain();
    let r = env.run(&["run", "manifests", "--listen", "localhost"]);
    r.code(1);
    assert!(
        r.stderr
            .contains("a port is missing: write it like 127.0.0.1:9464"),
        "{}",
        r.stderr
    );
}

#[test]
fn a_full_disk_is_named_as_such_and_fails_the_apply() {
    let env = Env::plain();
    let many = emails("f", 3000);
    env.fake().add_contacts("list-a", &many);
    env.manifest("a.yaml", &policy("pa", "list-a", &many));
    // The process may write files of at most 200 KiB (SIGXFSZ ignored, so writes fail with
    // EFBIG the way they would on a full disk): the store fills up part-way.
    let r = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "trap '' XFSZ; ulimit -f 200; exec {} apply manifests --state state.db --rate-limit 1000/s --batch-size 10 --strategy assert",
            env!("CARGO_BIN_EXE_listwarden")
        ))
        .current_dir(env.dir.path())
        .env("AUTOSEND_API_URL", env.url())
        .env("AUTOSEND_API_KEY", KEY)
        .env("NO_COLOR", "1")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&r.stderr);
    assert_eq!(r.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("state store: disk full (or I/O error) at state.db"),
        "{stderr}"
    );
    assert!(
        !stderr.contains("unexpected response from AutoSend"),
        "{stderr}"
    );
}

#[test]
fn with_json_logs_every_line_of_stderr_is_json() {
    let env = Env::plain();
    env.fake().add_contacts("list-a", emails("j", 3));
    // One policy with a warning (a duplicate entry), one list to converge.
    let mut dup = emails("j", 3);
    dup.push("j0@example.com".into());
    env.manifest("a.yaml", &policy("pa", "list-a", &dup));
    let r = env.apply(&["--log-format", "json"]);
    r.code(0);
    assert!(!r.stderr.trim().is_empty());
    for line in r.stderr.lines() {
        assert!(
            serde_json::from_str::<serde_json::Value>(line).is_ok(),
            "not JSON: {line}\n{}",
            r.stderr
        );
    }
    assert!(r.stderr.contains("duplicate"), "{}", r.stderr);
}
