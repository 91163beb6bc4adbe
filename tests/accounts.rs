//! Several AutoSend accounts in one listwarden (`--config`): each account's lists go to its
//! own server with its own key; a refused or unreadable key, or a 429 storm, stays within its
//! account; the same list id in two accounts is two lists; a store from before accounts is
//! adopted by the default account without re-sending anything.

mod support;

use std::time::Duration;

use support::accounts::{KEY_EU, KEY_US, Two, condition, get, policy};
use support::{Policy, emails, listwarden, output};

#[test]
fn each_account_s_lists_go_to_its_own_server_with_its_own_key() {
    let t = Two::new();
    let (eu, us) = t.same_list_id_in_both();
    let config = t.config();
    let run = t.apply(&config);
    run.code(0);
    for e in &eu {
        assert!(!t.eu.handle().is_member("list-1", e), "{e} left in eu");
    }
    for u in &us {
        assert!(!t.us.handle().is_member("list-1", u), "{u} left in us");
    }
    // Nothing crossed over: each server saw only its own account's contacts.
    let c_eu = t.eu.handle().counters();
    let c_us = t.us.handle().counters();
    assert_eq!(c_eu.count("remove", 200), 1, "{}", run.all());
    assert_eq!(c_us.count("remove", 200), 1, "{}", run.all());
    assert_eq!(c_eu.count("remove", 401) + c_us.count("remove", 401), 0);

    let status = t.status();
    assert_eq!(policy(&status, "eu")["account"], "brand-eu");
    assert_eq!(policy(&status, "us")["account"], "brand-us");
    let lists = status["lists"].as_array().unwrap();
    assert_eq!(
        lists.len(),
        2,
        "the same id in two accounts is two lists: {status}"
    );

    // A second apply sends nothing to either.
    t.apply(&config).code(0);
    assert_eq!(t.eu.handle().counters().count("remove", 200), 1);
    assert_eq!(t.us.handle().counters().count("remove", 200), 1);

    // No key anywhere: output, status, the store's bytes.
    let store = std::fs::read(t.path("state.db")).unwrap();
    for key in [KEY_EU, KEY_US] {
        assert!(!run.all().contains(key));
        assert!(!status.to_string().contains(key));
        assert!(
            !store.windows(key.len()).any(|w| w == key.as_bytes()),
            "a key is in the store"
        );
    }
}

#[test]
fn a_refused_key_fails_only_its_account_and_the_other_converges() {
    let t = Two::new();
    let (eu, _) = t.same_list_id_in_both();
    let config = t.config();
    let run = t.apply_with_us_key(&config, "not-the-us-key");
    assert_ne!(run.code, 0, "{}", run.all());
    assert!(run.all().contains("brand-us"), "{}", run.all());
    // The message says where this account's key comes from, not AUTOSEND_API_KEY.
    assert!(
        run.all()
            .contains("environment variable BRAND_US_KEY (apiKeyEnv) of account brand-us"),
        "{}",
        run.all()
    );
    for e in &eu {
        assert!(!t.eu.handle().is_member("list-1", e));
    }
    let status = t.status();
    assert_eq!(condition(&status, "eu").0, "True", "{status}");
    assert_eq!(condition(&status, "us").1, "Unauthorized", "{status}");
    assert!(!run.all().contains("not-the-us-key"));
}

#[test]
fn an_unreadable_key_file_fails_only_its_account() {
    let t = Two::new();
    let (_, us) = t.same_list_id_in_both();
    let config = t.config();
    std::fs::remove_file(t.path("keys/eu.key")).unwrap();
    let run = t.apply(&config);
    assert_ne!(run.code, 0);
    assert!(run.all().contains("brand-eu"), "{}", run.all());
    for u in &us {
        assert!(!t.us.handle().is_member("list-1", u));
    }
    let status = t.status();
    assert_eq!(condition(&status, "eu").1, "Unauthorized", "{status}");
    assert_eq!(condition(&status, "us").0, "True", "{status}");
}

#[test]
fn a_key_in_the_environment_beside_a_config_is_refused_as_two_sources_of_truth() {
    let t = Two::new();
    t.same_list_id_in_both();
    let config = t.config();
    let mut cmd = listwarden();
    cmd.current_dir(t.dir.path())
        .env("AUTOSEND_API_KEY", KEY_EU)
        .env("BRAND_US_KEY", KEY_US)
        .args(["apply", "manifests", "--state", "state.db", "--config"])
        .arg(&config);
    let run = output(&mut cmd);
    assert_eq!(run.code, 1, "{}", run.all());
    assert!(
        run.stderr.contains("two sources of truth"),
        "{}",
        run.stderr
    );
    assert!(run.stderr.contains("AUTOSEND_API_KEY"), "{}", run.stderr);
    assert!(!run.all().contains(KEY_EU));
    assert_eq!(t.eu.handle().counters().endpoint_total("remove"), 0);
}

#[test]
fn a_policy_naming_an_undeclared_account_is_a_manifest_error_and_sends_nothing() {
    let t = Two::new();
    t.same_list_id_in_both();
    t.eu.handle().add_contacts("list-2", ["x@example.com"]);
    t.us.handle().add_contacts("list-2", ["x@example.com"]);
    t.manifest(
        "typo.yaml",
        &Policy::new("typo", "list-2")
            .spec("  account: brand-uss\n")
            .emails(&["x@example.com"])
            .yaml(),
    );
    let config = t.config();
    let run = t.command(&[
        "validate",
        "manifests",
        "--config",
        config.to_str().unwrap(),
    ]);
    assert_eq!(run.code, 1);
    let line = run
        .errors()
        .into_iter()
        .find(|l| l.contains("spec.account"))
        .unwrap_or_else(|| panic!("{}", run.stderr))
        .to_string();
    assert!(line.contains("typo.yaml"), "{line}");
    assert!(line.contains("did you mean \"brand-us\""), "{line}");
    // Without --config, naming any account but `default` is an error too.
    let run = t.command(&["validate", "manifests"]);
    assert_eq!(run.code, 1);
    assert!(run.stderr.contains("--config"), "{}", run.stderr);
    // apply: the others converge, nothing is sent for it.
    let run = t.apply(&config);
    assert_ne!(run.code, 0);
    assert!(t.eu.handle().is_member("list-2", "x@example.com"));
    assert!(t.us.handle().is_member("list-2", "x@example.com"));
    let status = t.status();
    assert_eq!(condition(&status, "eu").0, "True", "{status}");
    assert_eq!(condition(&status, "us").0, "True", "{status}");
}

#[test]
fn a_store_from_before_accounts_is_adopted_by_the_default_account_and_nothing_is_sent_again() {
    let t = Two::new();
    let eu = emails("eu", 5);
    t.eu.handle().add_contacts("list-1", &eu);
    t.manifest("eu.yaml", &Policy::new("eu", "list-1").emails(&eu).yaml());
    // Before accounts: the one key of the environment.
    t.apply_without_config("manifests", &t.eu.base_url(), KEY_EU)
        .code(0);
    assert_eq!(t.eu.handle().counters().count("remove", 200), 1);

    let config = t.config();
    // A dry run first: it reads the old rows as the default account's.
    assert_eq!(t.plan_to_assert(&config), 0);
    // Then apply: nothing confirmed is sent again.
    t.apply(&config).code(0);
    assert_eq!(t.eu.handle().counters().count("remove", 200), 1);
    let status = t.status();
    assert_eq!(policy(&status, "eu")["account"], "brand-eu", "{status}");
}

#[test]
fn a_429_storm_in_one_account_leaves_the_other_converging() {
    // brand-us's server answers 429 to half its requests, with no warning in the headers
    // before (the pacer heeds `X-RateLimit-Remaining: 0`, so a plain limit would not
    // storm). brand-eu's lists must not wait for it.
    let t = Two::new();
    t.us.handle().set_faults(autosend_fake::Faults {
        error_rate: 0.5,
        error_status: 429,
        ..Default::default()
    });
    let mut eu_lists = Vec::new();
    for i in 0..4 {
        let list = format!("eu-{i}");
        let e = emails(&format!("e{i}-"), 2);
        t.eu.handle().add_contacts(&list, &e);
        t.manifest(
            &format!("{list}.yaml"),
            &Policy::new(&list, &list).emails(&e).yaml(),
        );
        eu_lists.push(list);
    }
    for i in 0..8 {
        let list = format!("us-{i}");
        let u = emails(&format!("u{i}-"), 2);
        t.us.handle().add_contacts(&list, &u);
        t.manifest(
            &format!("{list}.yaml"),
            &Policy::new(&list, &list)
                .spec("  account: brand-us\n")
                .emails(&u)
                .yaml(),
        );
    }
    let config = t.config();
    let run = t.apply(&config);
    for list in &eu_lists {
        assert_eq!(t.eu.handle().member_count(list), 0, "{list}: {}", run.all());
    }
    assert_eq!(t.eu.handle().counters().count("remove", 429), 0);
    // The storm was real: brand-us was answered 429.
    assert!(
        t.us.handle().counters().rate_limited > 0,
        "no 429 in brand-us: {}",
        run.all()
    );
}

#[test]
fn one_daemon_converges_an_account_while_another_s_key_is_refused_and_says_which() {
    let t = Two::new();
    let (eu, us) = t.same_list_id_in_both();
    let config = t.config();
    let port = support::free_port();
    let child = t
        .daemon_command(&config, port, "not-the-us-key")
        .args(["--strategy", "assert"])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let converged = || eu.iter().all(|e| !t.eu.handle().is_member("list-1", e));
    while !converged() && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        converged(),
        "brand-eu did not converge beside brand-us's refused key"
    );
    // brand-us's list is untouched, and the refusal is named, never green.
    let readyz = loop {
        let r = get(port, "/readyz");
        if r.as_ref().is_some_and(|(_, b)| b.contains("brand-us"))
            || std::time::Instant::now() > deadline
        {
            break r;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let (code, body) = readyz.expect("/readyz answers");
    assert_eq!(code, 503, "{body}");
    assert!(body.contains("brand-us"), "{body}");
    assert!(us.iter().all(|u| t.us.handle().is_member("list-1", u)));
    let (_, metrics) = get(port, "/metrics").unwrap();
    assert!(
        metrics.contains("account=\"brand-eu\",list=\"list-1\",result=\"converged\""),
        "{metrics}"
    );
    let (_, status) = get(port, "/status").unwrap();
    assert!(!status.contains(KEY_EU) && !status.contains("not-the-us-key"));
    let _ = std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let out = child.wait_with_output().unwrap();
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(
        !log.contains(KEY_EU) && !log.contains("not-the-us-key"),
        "{log}"
    );
}

#[test]
fn an_unreadable_key_fails_its_account_s_apply_even_with_nothing_to_send() {
    let t = Two::new();
    t.same_list_id_in_both();
    let config = t.config();
    t.apply(&config).code(0);
    std::fs::remove_file(t.path("keys/eu.key")).unwrap();
    // Nothing is pending for brand-eu, but no change of its lists could be applied now: its
    // policies must not look converged, and apply must not exit 0.
    let run = t.apply(&config);
    assert_ne!(run.code, 0, "{}", run.all());
    assert!(run.all().contains("brand-eu"), "{}", run.all());
    let status = t.status();
    assert_eq!(condition(&status, "eu").1, "Unauthorized", "{status}");
    assert_eq!(condition(&status, "us").0, "True", "{status}");
}

#[test]
fn a_run_without_the_config_leaves_the_config_accounts_rows_alone_and_says_so() {
    let t = Two::new();
    t.same_list_id_in_both();
    let config = t.config();
    t.apply(&config).code(0);
    // An old job on the same store, without the config and with other manifests: a valid
    // load, whose lists are the environment's account's only.
    support::write(
        &t.path("old/old.yaml"),
        &Policy::new("old", "list-9")
            .emails(&["o@example.com"])
            .yaml(),
    );
    let run = t.apply_without_config("old", &t.eu.base_url(), KEY_EU);
    assert!(
        run.stderr.contains("is --config missing?"),
        "{}",
        run.stderr
    );
    assert!(run.stderr.contains("brand-eu, brand-us"), "{}", run.stderr);
    // The accounts' confirmations and policy rows are still there: nothing is sent again.
    let status = t.status();
    assert_eq!(condition(&status, "eu").0, "True", "{status}");
    assert_eq!(condition(&status, "us").0, "True", "{status}");
    t.apply(&config).code(0);
    // (list-9 is in neither fake: the old job's one request was a 404.)
    assert_eq!(t.eu.handle().counters().count("remove", 200), 1);
    assert_eq!(t.us.handle().counters().count("remove", 200), 1);
}

#[test]
fn a_rotated_key_file_is_read_again_when_the_old_key_is_refused() {
    let t = Two::new();
    let (mut eu, _) = t.same_list_id_in_both();
    let config = t.config();
    let port = support::free_port();
    let child = t
        .daemon_command(&config, port, KEY_US)
        .args(["--strategy", "assert"])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let removed = |eu: &[String]| eu.iter().all(|e| !t.eu.handle().is_member("list-1", e));
    while !removed(&eu) && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(removed(&eu), "brand-eu did not converge");
    // The key is rotated in AutoSend and in its Secret; then a manifest change needs a send.
    const ROTATED: &str = "key-eu-rotated-55aa";
    t.eu.handle().set_api_key(ROTATED);
    support::write(&t.path("keys/eu.key"), &format!("{ROTATED}\n"));
    let late = "late@example.com".to_string();
    t.eu.handle()
        .add_contacts("list-1", std::slice::from_ref(&late));
    eu.push(late);
    t.manifest("eu.yaml", &Policy::new("eu", "list-1").emails(&eu).yaml());
    while !removed(&eu) && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let out = child.wait_with_output().unwrap();
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(removed(&eu), "not removed with the rotated key:\n{log}");
    assert!(log.contains("retrying with it"), "{log}");
    assert!(!log.contains(ROTATED) && !log.contains(KEY_EU), "{log}");
}
