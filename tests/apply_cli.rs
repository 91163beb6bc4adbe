//! `listwarden apply` and `status`, the real binary against the fake AutoSend served by the
//! test: convergence, idempotence, per-contact and per-list failures, safety refusals, and
//! what the store remembers between runs.

mod support;

use std::collections::BTreeSet;

use autosend_fake::{GLOBAL_CONTACT_LIST, ListKind};
use support::fake::{Env, fake_config, removes_sent};
use support::{Policy, emails, list_status, policy, policy_status};

fn set(v: impl IntoIterator<Item = String>) -> BTreeSet<String> {
    v.into_iter().collect()
}

#[test]
fn apply_removes_members_and_status_reports_ready() {
    let env = Env::plain();
    let members = emails("m", 50);
    let others = emails("o", 50);
    env.fake().add_contacts("list-a", &members);
    env.fake().add_contacts("list-a", &others);
    let mut excluded = members.clone();
    excluded.extend(emails("never", 10));
    env.manifest("a.yaml", &policy("suppress-a", "list-a", &excluded));

    let run = env.apply(&[]);
    run.code(0);
    assert!(
        run.stdout
            .contains("list-a: converged; removed 50, not in list 10"),
        "{}",
        run.stdout
    );
    for m in &members {
        assert!(!env.fake().is_member("list-a", m), "{m} still in list-a");
    }
    for o in &others {
        assert!(
            env.fake().is_member("list-a", o),
            "{o} was removed but never excluded"
        );
    }
    assert_eq!(env.fake().counters().contacts_removed, 50);

    let doc = env.status_json();
    assert_eq!(doc["ready"], true, "{doc:#}");
    let p = policy_status(&doc, "suppress-a");
    assert_eq!(p["condition"]["ready"], "True");
    assert_eq!(p["condition"]["reason"], "Converged");
    assert_eq!(p["counts"]["removed"], 50);
    assert_eq!(p["counts"]["not_in_list"], 10);
    assert_eq!(p["counts"]["failed"], 0);
    assert_eq!(p["counts"]["pending"], 0);
    let l = list_status(&doc, "list-a");
    assert_eq!(l["confirmed"], 60);
    assert_eq!(l["failed"], 0);
    assert_eq!(l["strategy"], "assert");

    let text = env.status_text();
    assert!(
        text.stdout
            .contains("suppress-a  Ready=True reason=Converged  list=list-a"),
        "{}",
        text.stdout
    );
    assert!(
        text.stdout
            .contains("list-a  confirmed absent 60, failing 0"),
        "{}",
        text.stdout
    );
}

#[test]
fn second_apply_sends_no_request() {
    let env = Env::plain();
    env.fake().add_contacts("list-a", emails("m", 30));
    env.fake().add_contacts("list-b", emails("n", 30));
    env.manifest("a.yaml", &policy("pa", "list-a", &emails("m", 30)));
    env.manifest("b.yaml", &policy("pb", "list-b", &emails("n", 20)));
    env.apply(&["--batch-size", "7"]).code(0);
    assert!(env.fake().counters().remove_requests > 0);

    env.fake().reset_counters();
    let run = env.apply(&["--batch-size", "7"]);
    run.code(0);
    let c = env.fake().counters();
    assert_eq!(c.requests, 0, "the second apply sent {c:?}");
    assert!(
        run.stdout
            .contains("Plan: no changes (nothing to assert in"),
        "{}",
        run.stdout
    );
    assert_eq!(env.status_json()["ready"], true);
}

#[test]
fn contacts_not_in_the_list_count_as_converged() {
    let env = Env::plain();
    env.fake().add_list("list-a", "A", ListKind::List);
    env.fake().add_contacts("list-a", emails("member", 5));
    // Contacts that exist (in other lists) but not in this one, and contacts that do not exist.
    env.fake()
        .add_contacts(GLOBAL_CONTACT_LIST, emails("known", 10));
    let mut excluded = emails("known", 10);
    excluded.extend(emails("unknown", 5));
    env.manifest("a.yaml", &policy("pa", "list-a", &excluded));

    let run = env.apply(&[]);
    run.code(0);
    assert!(
        run.stdout
            .contains("list-a: converged; removed 0, not in list 15, failed 0"),
        "{}",
        run.stdout
    );
    let c = env.fake().counters();
    assert_eq!(c.contacts_not_in_list, 15);
    assert_eq!(c.contacts_removed, 0);
    assert_eq!(env.fake().member_count("list-a"), 5);

    let doc = env.status_json();
    let p = policy_status(&doc, "pa");
    assert_eq!(p["condition"]["ready"], "True", "{doc:#}");
    assert_eq!(p["condition"]["reason"], "Converged");
    assert_eq!(p["counts"]["not_in_list"], 15);
    assert_eq!(list_status(&doc, "list-a")["confirmed"], 15);
}

#[test]
fn per_contact_errors_exit_3_show_in_status_and_are_retried_until_cleared() {
    let env = Env::plain();
    let all = emails("e", 20);
    env.fake().add_contacts("list-a", &all);
    env.fake().update_faults(|f| {
        f.contact_errors = ["e3@example.com", "e7@example.com"]
            .iter()
            .map(|s| s.to_string())
            .collect()
    });
    env.manifest("a.yaml", &policy("pa", "list-a", &all));

    let run = env.apply(&[]);
    run.code(3);
    assert!(
        run.stdout
            .contains("list-a: partially failed; removed 18, not in list 0, failed 2"),
        "{}",
        run.stdout
    );
    assert!(
        run.stdout
            .contains("e3@example.com: Failed to remove contact from list"),
        "{}",
        run.stdout
    );
    for (i, e) in all.iter().enumerate() {
        assert_eq!(env.fake().is_member("list-a", e), i == 3 || i == 7, "{e}");
    }

    let text = env.status_text();
    assert!(
        text.stdout
            .contains("pa  Ready=False reason=PartiallyFailed"),
        "{}",
        text.stdout
    );
    for e in ["e3@example.com", "e7@example.com"] {
        assert!(
            text.stdout.contains(&format!(
                "failing email {e}: Failed to remove contact from list (1 attempt(s))"
            )),
            "{}",
            text.stdout
        );
    }
    let doc = env.status_json();
    assert_eq!(doc["ready"], false);
    let l = list_status(&doc, "list-a");
    assert_eq!(l["confirmed"], 18);
    assert_eq!(l["failed"], 2);
    let failing: BTreeSet<String> = l["failing"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| {
            assert_eq!(f["kind"], "email");
            assert_eq!(f["error"], "Failed to remove contact from list");
            f["contact"].as_str().unwrap().to_string()
        })
        .collect();
    assert_eq!(
        failing,
        set(["e3@example.com".into(), "e7@example.com".into()])
    );
    let p = policy_status(&doc, "pa");
    assert_eq!(p["counts"]["failed"], 2);
    assert!(
        p["last_error"]
            .as_str()
            .unwrap()
            .contains("Failed to remove contact from list")
    );

    // Next run: only the failed contacts are asserted again; still failing, still exit 3.
    env.fake().reset_counters();
    env.apply(&[]).code(3);
    assert_eq!(
        set(removes_sent(env.fake(), "list-a")),
        set(["e3@example.com".into(), "e7@example.com".into()])
    );
    let doc = env.status_json();
    let f = &list_status(&doc, "list-a")["failing"];
    assert!(
        f.as_array().unwrap().iter().all(|f| f["attempts"] == 2),
        "{f:#}"
    );

    // The fault is cleared: the retry converges.
    env.fake().update_faults(|f| f.contact_errors.clear());
    env.fake().reset_counters();
    env.apply(&[]).code(0);
    assert_eq!(
        set(removes_sent(env.fake(), "list-a")),
        set(["e3@example.com".into(), "e7@example.com".into()])
    );
    assert_eq!(env.fake().member_count("list-a"), 0);
    let doc = env.status_json();
    assert_eq!(doc["ready"], true, "{doc:#}");
    let l = list_status(&doc, "list-a");
    assert_eq!(l["confirmed"], 20);
    assert_eq!(l["failed"], 0);
    assert!(policy_status(&doc, "pa")["last_error"].is_null());
}

#[test]
fn wrong_api_key_stops_the_run_removes_nothing_and_marks_policies_unauthorized() {
    let env = Env::new(fake_config("the-right-key"));
    env.fake().add_contacts("list-a", emails("a", 10));
    env.fake().add_contacts("list-b", emails("b", 10));
    env.manifest("a.yaml", &policy("pa", "list-a", &emails("a", 10)));
    env.manifest("b.yaml", &policy("pb", "list-b", &emails("b", 10)));
    let s = env.state();
    let m = env.manifests();
    let run = env.run_with_key(
        "sk-live-WRONG-456",
        &[
            "apply",
            m.to_str().unwrap(),
            "--state",
            s.to_str().unwrap(),
            "--rate-limit",
            "100/s",
        ],
    );
    run.code(1);
    let out = run.all();
    assert!(
        out.contains("AutoSend refused the API key (401 UNAUTHORIZED)"),
        "{out}"
    );
    assert!(
        out.contains("check AUTOSEND_API_KEY / --api-key-file"),
        "{out}"
    );
    assert!(!out.contains("WRONG-456"), "the key leaked:\n{out}");
    let c = env.fake().counters();
    assert_eq!(c.remove_requests, 0, "{c:?}");
    assert_eq!(c.contacts_removed, 0);
    assert_eq!(env.fake().member_count("list-a"), 10);
    assert_eq!(env.fake().member_count("list-b"), 10);

    let doc = env.status_json();
    for name in ["pa", "pb"] {
        let p = policy_status(&doc, name);
        assert_eq!(p["condition"]["ready"], "False", "{doc:#}");
        assert_eq!(p["condition"]["reason"], "Unauthorized", "{doc:#}");
        assert!(p["condition"]["message"].as_str().unwrap().contains("401"));
    }
    assert_eq!(list_status(&doc, "list-a")["confirmed"], 0);
}

#[test]
fn missing_list_fails_only_that_list_and_the_other_converges() {
    let env = Env::plain();
    env.fake().add_contacts("list-b", emails("b", 10));
    env.manifest("a.yaml", &policy("pa", "no-such-list", &emails("a", 5)));
    env.manifest("b.yaml", &policy("pb", "list-b", &emails("b", 10)));

    let run = env.apply(&[]);
    run.code(1);
    assert!(
        run.stdout.contains("no-such-list: list not found"),
        "{}",
        run.stdout
    );
    assert!(
        run.stdout.contains("list-b: converged; removed 10"),
        "{}",
        run.stdout
    );
    assert_eq!(env.fake().member_count("list-b"), 0);
    assert!(removes_sent(env.fake(), "no-such-list").is_empty());

    let doc = env.status_json();
    let a = policy_status(&doc, "pa");
    assert_eq!(a["condition"]["ready"], "False");
    assert_eq!(a["condition"]["reason"], "ListNotFound");
    assert!(
        a["condition"]["message"]
            .as_str()
            .unwrap()
            .contains("no-such-list does not exist")
    );
    let b = policy_status(&doc, "pb");
    assert_eq!(b["condition"]["ready"], "True");
    assert_eq!(b["condition"]["reason"], "Converged");
}

#[test]
fn global_list_is_refused_at_validation_and_nothing_is_sent_to_it() {
    let env = Env::plain();
    env.fake().add_contacts("list-b", emails("b", 5));
    env.manifest(
        "global.yaml",
        &policy("everyone", GLOBAL_CONTACT_LIST, &emails("b", 5)),
    );
    env.manifest("b.yaml", &policy("pb", "list-b", &emails("b", 5)));

    let run = env.apply(&[]);
    run.code(1);
    assert!(
        run.stderr.contains("GLOBAL_CONTACT_LIST cannot be used"),
        "{}",
        run.stderr
    );
    assert!(run.stderr.contains("spec.contactListId"), "{}", run.stderr);
    let c = env.fake().counters();
    assert!(
        c.remove_batches.iter().all(|b| b.list_id == "list-b"),
        "{:?}",
        c.remove_batches
    );
    // The valid policy is not held hostage by the invalid one.
    assert_eq!(env.fake().member_count("list-b"), 0);
    assert!(env.fake().is_member(GLOBAL_CONTACT_LIST, "b0@example.com"));

    let doc = env.status_json();
    let g = policy_status(&doc, "everyone");
    assert_eq!(g["condition"]["ready"], "False");
    assert_eq!(g["condition"]["reason"], "ManifestInvalid");
    assert_eq!(
        policy_status(&doc, "pb")["condition"]["reason"],
        "Converged"
    );
}

#[test]
fn segment_is_refused_at_preflight_with_list_is_segment_and_no_remove() {
    let env = Env::plain();
    env.fake()
        .add_list("seg-1", "VIP segment", ListKind::Segment);
    env.fake().add_contacts("seg-1", emails("s", 5));
    env.manifest("s.yaml", &policy("ps", "seg-1", &emails("s", 5)));

    let run = env.apply(&[]);
    run.code(1);
    assert!(
        run.stdout.contains("seg-1: refused: the list is a segment"),
        "{}",
        run.stdout
    );
    let c = env.fake().counters();
    assert_eq!(c.remove_requests, 0, "{c:?}");
    assert_eq!(c.count("get_list", 200), 1);
    assert_eq!(env.fake().member_count("seg-1"), 5);

    let doc = env.status_json();
    let p = policy_status(&doc, "ps");
    assert_eq!(p["condition"]["ready"], "False");
    assert_eq!(p["condition"]["reason"], "ListIsSegment");
    assert!(
        p["condition"]["message"]
            .as_str()
            .unwrap()
            .contains("segment")
    );
}

#[test]
fn max_removals_per_sync_refuses_the_list_and_force_applies_it() {
    let env = Env::plain();
    env.fake().add_contacts("list-a", emails("a", 10));
    env.manifest(
        "a.yaml",
        &Policy::new("pa", "list-a")
            .spec("  maxRemovalsPerSync: 5\n")
            .emails(&emails("a", 10))
            .yaml(),
    );

    let run = env.apply(&[]);
    run.code(1);
    assert!(run.stdout.contains("REFUSED"), "{}", run.stdout);
    assert!(
        run.stdout.contains(
            "list-a: refused: policy pa would assert 10 contacts, more than its threshold of 5"
        ),
        "{}",
        run.stdout
    );
    assert_eq!(env.fake().counters().requests, 0);
    assert_eq!(env.fake().member_count("list-a"), 10);
    let doc = env.status_json();
    let p = policy_status(&doc, "pa");
    assert_eq!(p["condition"]["ready"], "False");
    assert_eq!(p["condition"]["reason"], "ThresholdExceeded");
    assert!(
        p["condition"]["message"]
            .as_str()
            .unwrap()
            .contains("--force")
    );

    let run = env.apply(&["--force"]);
    run.code(0);
    assert_eq!(env.fake().member_count("list-a"), 0);
    assert_eq!(
        policy_status(&env.status_json(), "pa")["condition"]["reason"],
        "Converged"
    );
}

#[test]
fn too_large_batch_is_split_until_the_server_accepts_it() {
    let env = Env::plain();
    let all = emails("big", 1000);
    env.fake().add_contacts("list-a", &all[..600]);
    env.fake().update_faults(|f| f.max_batch = Some(100));
    Policy::new("pa", "list-a").write_with_emails_file(&env.manifests(), &all);

    let run = env.apply(&["--batch-size", "500"]);
    run.code(0);
    let c = env.fake().counters();
    assert!(c.batches_rejected > 0, "{c:?}");
    assert!(
        c.remove_batches
            .iter()
            .any(|b| b.status == 400 && b.entries.len() == 500)
    );
    for b in c.remove_batches.iter().filter(|b| b.status == 200) {
        assert!(
            b.entries.len() <= 100,
            "an accepted batch of {}",
            b.entries.len()
        );
    }
    assert_eq!(c.contacts_removed, 600);
    assert_eq!(c.contacts_not_in_list, 400);
    // Once both halves of a refused batch were accepted, the size is learned: only the first
    // batch pays refusals (500, 250, 125), the rest go out at 63 without being refused.
    let refused = c.remove_batches.iter().filter(|b| b.status == 400).count();
    assert_eq!(
        refused,
        3,
        "{:?}",
        c.remove_batches
            .iter()
            .map(|b| (b.status, b.entries.len()))
            .collect::<Vec<_>>()
    );
    let accepted = c.remove_batches.iter().filter(|b| b.status == 200).count();
    // 62 + 63, then the other half of the 250 (125 -> 2 batches), the other half of the 500
    // (250 -> 4) and the second 500 (-> 8): 19 requests in all, where splitting every batch
    // afresh would cost 30 (and the ideal, knowing the limit, is 10).
    assert_eq!(accepted, 16, "accepted batches");
    assert_eq!(env.fake().member_count("list-a"), 0);
    let doc = env.status_json();
    assert_eq!(list_status(&doc, "list-a")["confirmed"], 1000);
    assert_eq!(list_status(&doc, "list-a")["failed"], 0);
    assert_eq!(
        policy_status(&doc, "pa")["condition"]["reason"],
        "Converged"
    );
}

#[test]
fn poisoned_entry_fails_alone_by_name_and_the_rest_of_its_batch_converges() {
    let env = Env::plain();
    let all = emails("p", 40);
    env.fake().add_contacts("list-a", &all);
    env.fake()
        .update_faults(|f| f.poisoned = ["p17@example.com".to_string()].into_iter().collect());
    env.manifest("a.yaml", &policy("pa", "list-a", &all));

    let run = env.apply(&[]);
    run.code(3);
    assert!(
        run.stdout
            .contains("p17@example.com: refused by AutoSend (400): Validation failed"),
        "{}",
        run.stdout
    );
    for e in &all {
        assert_eq!(
            env.fake().is_member("list-a", e),
            e == "p17@example.com",
            "{e}"
        );
    }
    let doc = env.status_json();
    let l = list_status(&doc, "list-a");
    assert_eq!(l["confirmed"], 39);
    assert_eq!(l["failed"], 1);
    assert_eq!(l["failing"][0]["contact"], "p17@example.com");
    assert!(
        l["failing"][0]["error"]
            .as_str()
            .unwrap()
            .contains("refused by AutoSend (400)")
    );
    let text = env.status_text();
    assert!(
        text.stdout
            .contains("failing email p17@example.com: refused by AutoSend (400)"),
        "{}",
        text.stdout
    );
}

#[test]
fn contacts_dropped_from_manifests_are_forgotten_without_any_api_call() {
    let env = Env::plain();
    env.fake().add_contacts("list-a", emails("a", 10));
    env.manifest("a.yaml", &policy("pa", "list-a", &emails("a", 10)));
    env.apply(&[]).code(0);
    assert_eq!(list_status(&env.status_json(), "list-a")["confirmed"], 10);

    // 40% fewer: under the forget threshold (50%), so forgotten at once.
    env.manifest("a.yaml", &policy("pa", "list-a", &emails("a", 6)));
    env.fake().reset_counters();
    env.apply(&[]).code(0);
    assert_eq!(env.fake().counters().requests, 0);
    let doc = env.status_json();
    assert_eq!(list_status(&doc, "list-a")["confirmed"], 6);
    assert_eq!(policy_status(&doc, "pa")["condition"]["ready"], "True");

    // A whole policy (and its list) dropped: forgotten too, still without a request.
    env.fake().add_contacts("list-b", emails("b", 4));
    env.manifest("b.yaml", &policy("pb", "list-b", &emails("b", 4)));
    env.apply(&[]).code(0);
    assert_eq!(list_status(&env.status_json(), "list-b")["confirmed"], 4);
    // A deleted manifest looks like a partial checkout: held until approved, like any policy
    // that would lose more than half its contacts; nothing is forgotten meanwhile.
    env.remove_manifest("b.yaml");
    env.fake().reset_counters();
    let held = env.apply(&[]);
    held.code(1);
    assert!(
        held.stderr
            .contains("policy pb is no longer in the manifests"),
        "{}",
        held.stderr
    );
    assert_eq!(list_status(&env.status_json(), "list-b")["confirmed"], 4);
    let state = env.state();
    env.run(&["approve", "pb", "--state", state.to_str().unwrap()])
        .code(0);
    env.apply(&[]).code(0);
    assert_eq!(env.fake().counters().requests, 0);
    let doc = env.status_json();
    assert_eq!(list_status(&doc, "list-b")["confirmed"], 0);
    assert!(
        doc["policies"]
            .as_array()
            .unwrap()
            .iter()
            .all(|p| p["name"] != "pb")
    );
}

#[test]
fn resync_reasserts_confirmed_contacts() {
    let env = Env::plain();
    let all = emails("r", 12);
    env.fake().add_contacts("list-a", &all[..6]);
    env.manifest("a.yaml", &policy("pa", "list-a", &all));
    env.apply(&["--batch-size", "5"]).code(0);

    // Someone adds two contacts back; a plain apply trusts the store and sends nothing.
    env.fake().add_contacts("list-a", &all[..2]);
    env.fake().reset_counters();
    env.apply(&["--batch-size", "5"]).code(0);
    assert_eq!(env.fake().counters().requests, 0);
    assert_eq!(env.fake().member_count("list-a"), 2);

    env.fake().reset_counters();
    let run = env.apply(&["--batch-size", "5", "--resync"]);
    run.code(0);
    assert!(
        run.stdout
            .contains("list-a: converged; removed 2, not in list 10"),
        "{}",
        run.stdout
    );
    assert_eq!(set(removes_sent(env.fake(), "list-a")), set(all.clone()));
    assert_eq!(env.fake().counters().remove_requests, 3);
    assert_eq!(env.fake().member_count("list-a"), 0);
}

#[test]
fn plan_after_a_converged_apply_has_nothing_to_assert_and_detailed_exitcode_0() {
    let env = Env::plain();
    env.fake().add_contacts("list-a", emails("a", 8));
    env.manifest("a.yaml", &policy("pa", "list-a", &emails("a", 8)));
    let s = env.state();
    let plan = |env: &Env| env.plan(&["--detailed-exitcode"]);
    let before = plan(&env);
    before.code(2);
    assert!(
        before.stdout.contains(
            "Plan: 8 contacts to assert absent in 1 list, in 2 requests (1 list read + 1 remove)"
        ),
        "{}",
        before.stdout
    );
    assert!(!s.exists(), "plan must not create the store");

    env.apply(&[]).code(0);
    env.fake().reset_counters();
    let after = plan(&env);
    after.code(0);
    assert!(
        after
            .stdout
            .contains("Plan: no changes (nothing to assert in"),
        "{}",
        after.stdout
    );
    assert_eq!(
        env.fake().counters().requests,
        0,
        "plan without --refresh is offline"
    );
}
