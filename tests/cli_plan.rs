//! `listwarden plan`: per-list text output, the versioned JSON document, exit codes
//! (`--detailed-exitcode`), `--verbose`, `--batch-size`, suspended policies, unions of
//! policies on one list, safety thresholds, and isolation of broken manifests.

mod support;

use std::path::Path;

use support::{Policy, Run, list_status, policy, run, run_in, write};

/// The lines of the text plan from `list ID` to the blank line that ends its block.
fn block<'a>(r: &'a Run, id: &str) -> Vec<&'a str> {
    let header = format!("list {id}");
    let lines: Vec<&str> = r.stdout.lines().collect();
    let start = lines
        .iter()
        .position(|l| *l == header)
        .unwrap_or_else(|| panic!("no {header:?} in\n{}", r.stdout));
    lines[start..]
        .iter()
        .take_while(|l| !l.is_empty())
        .copied()
        .collect()
}

fn has_line(lines: &[&str], fragments: &[&str]) -> bool {
    lines
        .iter()
        .any(|l| fragments.iter().all(|f| l.contains(f)))
}

#[test]
fn text_plan_shows_each_list_with_policies_counts_and_requests() {
    let r = run(&["plan", "plan_two_lists"]);
    r.code(0);
    assert!(r.stderr.is_empty(), "{}", r.stderr);

    let news = block(&r, "list-news");
    assert_eq!(news[1], "  policies     news-bounces, news-legal");
    assert!(
        has_line(
            &news,
            &["emails", "5 must be absent", "5 to assert (5 new)"]
        ),
        "{news:#?}"
    );
    assert!(
        has_line(
            &news,
            &["contact ids", "1 must be absent", "1 to assert (1 new)"]
        ),
        "{news:#?}"
    );
    assert!(
        has_line(
            &news,
            &[
                "requests     3 (1 list read + 2 remove: 1 for emails, 1 for contactIds, batches of 500)",
                "2/s,50/m"
            ]
        ),
        "{news:#?}"
    );

    let promo = block(&r, "list-promo");
    assert_eq!(promo[1], "  policies     promo-optouts");
    assert!(
        has_line(
            &promo,
            &["emails", "3 must be absent", "3 to assert (3 new)"]
        ),
        "{promo:#?}"
    );
    assert!(
        r.stdout.contains(
            "Plan: 9 contacts to assert absent in 2 lists, in 5 requests (2 list reads + 3 removes)"
        ),
        "{}",
        r.stdout
    );
    // Without --verbose no contact is listed.
    assert!(!r.stdout.contains("b1@example.org"), "{}", r.stdout);
}

#[test]
fn json_plan_follows_the_format_version_1_shape() {
    let r = run(&["plan", "plan_two_lists", "--output", "json"]);
    r.code(0);
    assert!(r.stderr.is_empty(), "{}", r.stderr);
    let doc = r.json();
    assert_eq!(doc["format_version"], 1);
    assert_eq!(doc["path"], "plan_two_lists");
    assert_eq!(doc["batch_size"], 500);
    assert_eq!(doc["rate_limits"], "2/s,50/m");

    let s = &doc["summary"];
    for key in [
        "lists",
        "policies",
        "suspended_policies",
        "invalid_policies",
        "to_assert",
        "requests",
        "estimated_seconds",
        "refused_lists",
        "has_changes",
    ] {
        assert!(s.get(key).is_some(), "summary.{key} missing: {s:#}");
    }
    assert_eq!(s["lists"], 2);
    assert_eq!(s["policies"], 3);
    assert_eq!(s["suspended_policies"], 0);
    assert_eq!(s["invalid_policies"], 0);
    assert_eq!(s["to_assert"], 9);
    assert_eq!(s["requests"], 3);
    assert!(s["estimated_seconds"].is_f64());
    assert_eq!(s["refused_lists"], 0);
    assert_eq!(s["has_changes"], true);

    let news = list_status(&doc, "list-news");
    assert_eq!(
        news["policies"],
        serde_json::json!(["news-bounces", "news-legal"])
    );
    assert_eq!(news["suspended_policies"], serde_json::json!([]));
    assert_eq!(
        news["emails"],
        serde_json::json!({
            "desired": 5, "new": 5, "retry": 0, "resync": 0, "confirmed": 0,
            "to_assert": 5, "requests": 1
        })
    );
    assert_eq!(
        news["contact_ids"],
        serde_json::json!({
            "desired": 1, "new": 1, "retry": 0, "resync": 0, "confirmed": 0,
            "to_assert": 1, "requests": 1
        })
    );
    assert_eq!(news["to_assert"], 6);
    assert_eq!(news["requests"], 2);
    assert_eq!(news["strategy"], "auto");
    assert!(news["refused"].is_null());
    assert!(news["revision"].as_str().unwrap().starts_with("sha256:"));
    assert!(
        news.get("contacts").is_none(),
        "contacts only with --verbose"
    );

    let policies = doc["policies"].as_array().unwrap();
    assert_eq!(policies.len(), 3);
    let bounces = &policies[0];
    assert_eq!(bounces["name"], "news-bounces");
    assert_eq!(bounces["file"], "plan_two_lists/policies.yaml");
    assert_eq!(bounces["document"], 1);
    assert_eq!(bounces["contact_list_id"], "list-news");
    assert_eq!(bounces["labels"], serde_json::json!({"team": "growth"}));
    assert_eq!(bounces["suspended"], false);
    assert!(bounces["max_removals_per_sync"].is_null());
    assert_eq!(bounces["emails"], 4);
    assert_eq!(bounces["contact_ids"], 0);
    assert_eq!(bounces["to_assert"], 4);

    assert_eq!(doc["invalid_policies"], serde_json::json!([]));
    assert_eq!(doc["errors"], serde_json::json!([]));
    assert_eq!(doc["warnings"], serde_json::json!([]));
}

#[test]
fn json_plan_carries_errors_and_warnings_as_structured_diagnostics() {
    let r = run(&["plan", "broken_and_valid", "--output", "json"]);
    r.code(1);
    // JSON mode keeps stdout a single document and stderr free of diagnostics.
    let doc = r.json();
    assert_eq!(
        doc["errors"],
        serde_json::json!([{
            "severity": "error",
            "file": "broken_and_valid/broken.yaml",
            "document": 1,
            "policy": "broken",
            "field": "spec.exclude.emails[0]",
            "message": doc["errors"][0]["message"].clone(),
        }])
    );
    assert_eq!(doc["summary"]["invalid_policies"], 1);
    assert_eq!(doc["invalid_policies"][0]["name"], "broken");
    assert_eq!(doc["invalid_policies"][0]["contact_list_id"], "list-broken");

    let w = run(&["plan", "empty_policy", "--output", "json"]);
    w.code(0);
    let doc = w.json();
    assert_eq!(doc["warnings"][0]["severity"], "warning");
    assert_eq!(doc["warnings"][0]["field"], "spec.exclude");
    assert_eq!(doc["warnings"][0]["file"], "empty_policy/policy.yaml");
}

#[test]
fn detailed_exitcode_is_2_when_there_is_work() {
    run(&["plan", "plan_two_lists", "--detailed-exitcode"]).code(2);
    run(&[
        "plan",
        "plan_two_lists",
        "--detailed-exitcode",
        "--output",
        "json",
    ])
    .code(2);
    // Without the flag, work is still exit 0.
    run(&["plan", "plan_two_lists"]).code(0);
}

#[test]
fn detailed_exitcode_is_0_when_every_policy_is_suspended() {
    let r = run(&["plan", "plan_suspended", "--detailed-exitcode"]);
    r.code(0);
    let doc = run(&["plan", "plan_suspended", "--output", "json"]).json();
    assert_eq!(doc["summary"]["has_changes"], false);
    assert_eq!(doc["summary"]["suspended_policies"], 1);
    assert_eq!(doc["summary"]["to_assert"], 0);
}

#[test]
fn detailed_exitcode_is_0_when_policies_exclude_nothing() {
    run(&["plan", "empty_policy", "--detailed-exitcode"]).code(0);
}

#[test]
fn detailed_exitcode_is_1_on_a_manifest_error_even_with_work() {
    run(&["plan", "broken_and_valid", "--detailed-exitcode"]).code(1);
    run(&["plan", "several_problems", "--detailed-exitcode"]).code(1);
}

#[test]
fn broken_manifest_does_not_stop_other_policies_from_being_planned() {
    let r = run(&["plan", "broken_and_valid"]);
    r.code(1);
    // The error is reported, the valid policy's list is planned, the broken one's is not.
    r.line(
        "broken_and_valid/broken.yaml: document 1 (broken): spec.exclude.emails[0]: error: ",
        &["\"nope\""],
    );
    assert!(
        r.stderr.contains(
            "error: 1 manifest error(s): the policies concerned are left out of the plan"
        ),
        "{}",
        r.stderr
    );
    let healthy = block(&r, "list-healthy");
    assert_eq!(healthy[1], "  policies     healthy");
    assert!(!r.stdout.contains("list-broken"), "{}", r.stdout);

    let doc = run(&["plan", "broken_and_valid", "--output", "json"]).json();
    assert_eq!(doc["summary"]["lists"], 1);
    assert_eq!(list_status(&doc, "list-healthy")["emails"]["to_assert"], 2);
}

#[test]
fn verbose_lists_every_contact_with_its_reason_and_policies() {
    let r = run(&["plan", "plan_two_lists", "--verbose"]);
    r.code(0);
    let news = block(&r, "list-news");
    let contacts: Vec<&str> = news
        .iter()
        .filter(|l| l.starts_with("    - "))
        .copied()
        .collect();
    assert_eq!(
        contacts,
        [
            "    - b1@example.org (new; news-bounces)",
            "    - b2@example.org (new; news-bounces)",
            "    - only-bounces@example.com (new; news-bounces)",
            "    - only-legal@example.com (new; news-legal)",
            "    - shared@example.com (new; news-bounces, news-legal)",
            "    - id:cid-legal-1 (new; news-legal)",
        ]
    );
    let doc = run(&["plan", "plan_two_lists", "-v", "--output", "json"]).json();
    assert_eq!(
        list_status(&doc, "list-promo")["contacts"],
        serde_json::json!({
            "emails": ["p1@example.com", "p2@example.com", "p3@example.com"],
            "contact_ids": []
        })
    );
}

#[test]
fn two_policies_on_one_list_are_unioned_and_a_shared_contact_counts_once() {
    // news-bounces: shared, only-bounces, b1, b2; news-legal: Shared (same after
    // normalising), only-legal, cid-legal-1. Union: 5 emails + 1 id.
    let doc = run(&["plan", "plan_two_lists", "--output", "json"]).json();
    let news = list_status(&doc, "list-news");
    assert_eq!(news["emails"]["desired"], 5);
    assert_eq!(news["contact_ids"]["desired"], 1);
    // Each policy is credited with the shared contact.
    let per: Vec<(String, u64)> = doc["policies"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["name"].as_str().unwrap().to_string(),
                p["to_assert"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        per,
        [
            ("news-bounces".to_string(), 4),
            ("news-legal".to_string(), 3),
            ("promo-optouts".to_string(), 3)
        ]
    );
}

#[test]
fn suspended_policy_is_shown_as_suspended_and_contributes_nothing() {
    let r = run(&["plan", "plan_mixed_suspended", "--verbose"]);
    r.code(0);
    let a = block(&r, "list-a");
    assert_eq!(a[1], "  policies     active");
    assert_eq!(a[2], "  suspended    paused (planned, never applied)");
    // paused-only@ comes only from the suspended policy; both@ is attributed to `active`
    // alone.
    assert!(
        !r.stdout.contains("paused-only@example.com"),
        "{}",
        r.stdout
    );
    assert!(
        has_line(&a, &["    - both@example.com (new; active)"]),
        "{a:#?}"
    );
    assert!(has_line(&a, &["emails", "1 must be absent"]), "{a:#?}");

    let doc = run(&["plan", "plan_mixed_suspended", "--output", "json"]).json();
    let l = list_status(&doc, "list-a");
    assert_eq!(l["policies"], serde_json::json!(["active"]));
    assert_eq!(l["suspended_policies"], serde_json::json!(["paused"]));
    assert_eq!(l["emails"]["desired"], 1);
    let paused = &doc["policies"][0];
    assert_eq!(paused["name"], "paused");
    assert_eq!(paused["suspended"], true);
    assert_eq!(paused["to_assert"], 0);
}

#[test]
fn list_with_only_suspended_policies_is_shown_with_none_active() {
    let r = run(&["plan", "plan_suspended"]);
    r.code(0);
    let a = block(&r, "list-a");
    assert_eq!(a[1], "  policies     (none active)");
    assert_eq!(a[2], "  suspended    paused (planned, never applied)");
    assert!(has_line(&a, &["emails", "0 must be absent"]), "{a:#?}");
}

/// A manifest dir with one policy of `emails` addresses (in a text file source) and
/// `ids` contact ids (inline).
fn big_policy(dir: &Path, emails: usize, ids: usize) {
    let mut text = String::new();
    for i in 0..emails {
        text.push_str(&format!("user{i}@example.com\n"));
    }
    write(&dir.join("m/data/emails.txt"), &text);
    let ids: Vec<String> = (0..ids).map(|i| format!("cid-{i}")).collect();
    let doc = Policy::new("big", "list-big")
        .file("data/emails.txt")
        .ids(&ids)
        .yaml();
    write(&dir.join("m/big.yaml"), &doc);
}

#[test]
fn batch_size_sets_request_counts_with_emails_and_ids_in_separate_requests() {
    let dir = tempfile::tempdir().unwrap();
    big_policy(dir.path(), 1001, 3);
    let plan = |batch: &str| {
        let r = run_in(
            dir.path(),
            &["plan", "m", "--output", "json", "--batch-size", batch],
        );
        r.code(0);
        let doc = r.json();
        let l = list_status(&doc, "list-big").clone();
        (
            l["emails"]["requests"].as_u64().unwrap(),
            l["contact_ids"]["requests"].as_u64().unwrap(),
            doc["summary"]["requests"].as_u64().unwrap(),
            doc["batch_size"].as_u64().unwrap(),
        )
    };
    // 1,001 emails at 500 a request: 3; the 3 ids never share a request with emails.
    assert_eq!(plan("500"), (3, 1, 4, 500));
    assert_eq!(plan("1000"), (2, 1, 3, 1000));
    assert_eq!(plan("1001"), (1, 1, 2, 1001));
    assert_eq!(plan("1"), (1001, 3, 1004, 1));

    // The default is 500, and the text says so.
    let r = run_in(dir.path(), &["plan", "m"]);
    r.code(0);
    let b = block(&r, "list-big");
    assert!(
        has_line(
            &b,
            &[
                "requests     5 (1 list read + 4 remove: 3 for emails, 1 for contactIds, batches of 500)"
            ]
        ),
        "{b:#?}"
    );
    assert!(has_line(&b, &["emails", "1,001 must be absent"]), "{b:#?}");
}

#[test]
fn batch_size_out_of_range_is_refused() {
    let r = run(&["plan", "plan_two_lists", "--batch-size", "0"]);
    assert_ne!(r.code, 0);
    assert!(
        r.stderr
            .contains("is not a batch size; give a whole number from 1 to 10000"),
        "{}",
        r.stderr
    );
    let r = run(&["plan", "plan_two_lists", "--batch-size", "10001"]);
    assert_ne!(r.code, 0);
}

/// The CLI documents exit 1 for bad flags, but clap's own exit code for usage errors is 2,
/// which `--detailed-exitcode` reserves for "there is work": a CI job would read a typo in
/// its flags as "changes pending".
#[test]
fn bad_flags_exit_1_not_the_detailed_exitcode_2() {
    run(&[
        "plan",
        "plan_two_lists",
        "--detailed-exitcode",
        "--batch-size",
        "0",
    ])
    .code(1);
    run(&[
        "plan",
        "plan_two_lists",
        "--detailed-exitcode",
        "--no-such-flag",
    ])
    .code(1);
}

#[test]
fn max_removals_per_sync_exceeded_refuses_the_list_in_the_plan() {
    let r = run(&["plan", "plan_threshold"]);
    r.code(0);
    let careful = block(&r, "list-careful");
    assert!(
        has_line(
            &careful,
            &[
                "  REFUSED      policy careful would assert 3 contacts, more than its threshold of 2",
                "--force"
            ]
        ),
        "{careful:#?}"
    );
    assert!(!has_line(&careful, &["requests"]), "{careful:#?}");
    // The other list is planned as usual; the refused one is not counted in the total.
    let free = block(&r, "list-free");
    assert!(
        has_line(
            &free,
            &["requests     2 (1 list read + 1 remove: 1 for emails"]
        ),
        "{free:#?}"
    );
    assert!(
        r.stdout.contains(
            "Plan: 3 contacts to assert absent in 1 list, in 2 requests (1 list read + 1 remove), at least"
        ),
        "{}",
        r.stdout
    );
    assert!(
        r.stdout
            .contains("1 list(s) refused by a safety threshold."),
        "{}",
        r.stdout
    );

    let doc = run(&["plan", "plan_threshold", "--output", "json"]).json();
    assert_eq!(
        list_status(&doc, "list-careful")["refused"],
        serde_json::json!({"policy": "careful", "threshold": 2, "would_assert": 3})
    );
    assert!(list_status(&doc, "list-free")["refused"].is_null());
    assert_eq!(doc["summary"]["refused_lists"], 1);
    assert_eq!(doc["summary"]["to_assert"], 3);
    assert_eq!(doc["policies"][0]["max_removals_per_sync"], 2);
}

#[test]
fn max_removals_flag_is_the_default_threshold_for_policies_without_one() {
    // `unbounded` has 3 contacts and no maxRemovalsPerSync: refused above 2, not at 3.
    let doc = run(&[
        "plan",
        "plan_threshold",
        "--output",
        "json",
        "--max-removals",
        "2",
    ])
    .json();
    assert_eq!(
        list_status(&doc, "list-free")["refused"],
        serde_json::json!({"policy": "unbounded", "threshold": 2, "would_assert": 3})
    );
    assert_eq!(doc["summary"]["refused_lists"], 2);
    assert_eq!(doc["summary"]["to_assert"], 0);
    // A refusal is a change waiting for a decision, never "nothing to do".
    assert_eq!(doc["summary"]["has_changes"], true);

    let doc = run(&[
        "plan",
        "plan_threshold",
        "--output",
        "json",
        "--max-removals",
        "3",
    ])
    .json();
    assert!(list_status(&doc, "list-free")["refused"].is_null());

    // A policy's own maxRemovalsPerSync wins over a looser flag.
    let doc = run(&[
        "plan",
        "plan_threshold",
        "--output",
        "json",
        "--max-removals",
        "100",
    ])
    .json();
    assert_eq!(list_status(&doc, "list-careful")["refused"]["threshold"], 2);
}

#[test]
fn threshold_counts_a_shared_contact_for_each_policy_asking_for_it() {
    let dir = tempfile::tempdir().unwrap();
    let mut a = policy("a", "list-x", &["s1@example.com", "s2@example.com"]);
    a.push_str("---\n");
    a.push_str(&policy(
        "b",
        "list-x",
        &["s1@example.com", "s2@example.com", "b@example.com"],
    ));
    write(&dir.path().join("m/p.yaml"), &a);
    let r = run_in(
        dir.path(),
        &["plan", "m", "--output", "json", "--max-removals", "2"],
    );
    r.code(0);
    let doc = r.json();
    // The list has 3 contacts; policy a asks for 2 (not above 2), policy b for 3.
    assert_eq!(
        list_status(&doc, "list-x")["refused"],
        serde_json::json!({"policy": "b", "threshold": 2, "would_assert": 3})
    );
}

#[test]
fn repository_sample_manifests_plan_cleanly() {
    let r = run_in(
        Path::new(env!("CARGO_MANIFEST_DIR")),
        &["plan", "manifests/"],
    );
    r.code(0);
    assert!(r.stderr.is_empty(), "{}", r.stderr);
    let l = block(&r, "60d5ec49f1b2c72d9c8b4567");
    assert_eq!(
        l[1],
        "  policies     newsletter-suppressions, newsletter-legal-holds"
    );
    let doc = run_in(
        Path::new(env!("CARGO_MANIFEST_DIR")),
        &["plan", "manifests/", "--output", "json"],
    )
    .json();
    assert_eq!(doc["summary"]["lists"], 2);
    assert_eq!(doc["summary"]["policies"], 3);
}
