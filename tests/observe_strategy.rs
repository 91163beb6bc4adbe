//! Observed state (issue 5): `auto` picks the cheaper of assert and observe per list, an
//! observation removes exactly the members found and confirms only what a complete,
//! consistent read showed, members are matched by normalised email and by contact id, a
//! list changing while it is read never confirms a contact wrongly, and `plan --refresh`
//! reports the drift without ever removing anything.
//!
//! In-process against the fake AutoSend (library driven the way `apply` drives it), plus the
//! real binary for `apply --strategy`, `status` and `plan --refresh`.

mod support;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use autosend::{Client, RemoveBatch, Tally};
use listwarden::manifest::Strategy;
use listwarden::reconcile::{ListOutcome, ListResult};
use support::fake::{Env, Local, fast_config, plan_options, removes_accepted};
use support::{KEY, Policy, Run, emails, list_status, policy};

// ---- helpers ---------------------------------------------------------------------------------

/// A fast client paced at `limits` (`"5/s"`).
fn paced_client(base_url: &str, limits: &str) -> Client {
    let mut c = fast_config(base_url, KEY);
    c.rate_limits = limits.parse().unwrap();
    Client::new(c).unwrap()
}

/// One pass with `auto` in batches of 500, through `client`, as `apply` does; the manifests
/// must load without errors and the key be accepted.
async fn sync_auto(s: &Local, client: &Client) -> Vec<ListOutcome> {
    s.sync_with(client, plan_options(500, Strategy::Auto))
        .await
        .checked_outcomes()
}

/// `plan --refresh manifests --state state.db --rate-limit 1000/s EXTRA...`
fn refresh(env: &Env, extra: &[&str]) -> Run {
    env.plan(&[&["--refresh", "--rate-limit", "1000/s"], extra].concat())
}

// ---- auto: the cheaper strategy ---------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn big_suppression_set_against_a_small_list_is_observed() {
    let s = Local::new().await;
    let members = emails("member", 1_500);
    s.fake().add_contacts("small-list", &members);
    let suppressed: Vec<String> = [3, 250, 499, 500, 777, 1_200, 1_499]
        .iter()
        .map(|&i| members[i].clone())
        .collect();
    let mut set: Vec<String> = (0..200_000 - suppressed.len())
        .map(|i| format!("gone{i}@suppressed.example"))
        .collect();
    set.extend(suppressed.iter().cloned());
    assert_eq!(set.len(), 200_000);
    Policy::new("suppress", "small-list").write_with_emails_file(s.dir.path(), &set);
    s.fake().reset_counters();

    let outcomes = sync_auto(&s, &s.client()).await;
    let o = &outcomes[0];
    assert_eq!(o.result, ListResult::Converged, "{o:?}");
    assert_eq!(o.strategy.as_deref(), Some("observe"), "{o:?}");
    let reason = o.strategy_reason.as_deref().unwrap();
    assert!(reason.contains("cheaper"), "{reason}");
    assert_eq!(o.removed, 7);

    let c = s.fake().counters();
    let mut sent = removes_accepted(s.fake(), "small-list");
    sent.sort();
    let mut want = suppressed.clone();
    want.sort();
    assert_eq!(sent, want, "exactly the 7 members found are removed");
    assert_eq!(c.endpoint_total("get_list"), 1, "the pre-flight get_list");
    assert!(c.endpoint_total("search") <= 1 + 15, "{c:?}");
    assert_eq!(c.remove_requests, 1);
    assert!(c.requests <= 1 + 15 + 1 + 1, "requests: {}", c.requests);
    assert_eq!(s.fake().member_count("small-list"), 1_493);
    for m in &suppressed {
        assert!(!s.fake().is_member("small-list", m));
    }
    // Every desired contact is confirmed: 7 by the remove response, the rest by the read.
    assert_eq!(s.confirmed("small-list").len(), 200_000);
    assert_eq!(o.observed_absent, 200_000 - 7);
    let lists = s.store.lists(5).unwrap();
    let l = lists
        .iter()
        .find(|l| l.contact_list_id == "small-list")
        .unwrap();
    assert_eq!(l.strategy.as_deref(), Some("observe"));
    assert_eq!(l.drift, Some(7));
    assert!(l.last_observed_at.is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn small_set_against_a_big_list_is_asserted() {
    let s = Local::new().await;
    let members = emails("m", 100_000);
    s.fake().add_contacts("big-list", &members);
    let mut set: Vec<String> = members.iter().step_by(1_000).cloned().collect(); // 100 members
    set.extend(emails("elsewhere", 400));
    assert_eq!(set.len(), 500);
    Policy::new("few", "big-list").write_with_emails_file(s.dir.path(), &set);
    s.fake().reset_counters();

    let outcomes = sync_auto(&s, &s.client()).await;
    let o = &outcomes[0];
    assert_eq!(o.result, ListResult::Converged, "{o:?}");
    assert_eq!(o.strategy.as_deref(), Some("assert"), "{o:?}");
    assert!(
        o.strategy_reason.as_deref().unwrap().contains("cheaper"),
        "{o:?}"
    );
    assert_eq!((o.removed, o.not_in_list), (100, 400));
    let c = s.fake().counters();
    assert_eq!(c.endpoint_total("search"), 0, "assert reads nothing");
    assert_eq!(c.remove_requests, 1);
    assert_eq!(c.requests, 2, "get_list + one remove");
    assert_eq!(s.fake().member_count("big-list"), 99_900);
}

// ---- overrides ----------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spec_strategy_overrides_auto_both_ways() {
    let s = Local::new().await;
    // list-o: 5 contacts against 300 members: auto would assert (1 vs 3+1); the policy asks
    // for observe.
    let a = emails("a", 300);
    s.fake().add_contacts("list-o", &a);
    s.manifest(
        "o.yaml",
        &Policy::new("po", "list-o")
            .spec("  strategy: observe\n")
            .emails(&a[..5])
            .yaml(),
    );
    // list-a: 2,000 contacts against 100 members: auto would observe (1+1 vs 4); the policy
    // asks for assert.
    let b = emails("b", 100);
    s.fake().add_contacts("list-a", &b);
    let mut set = b[..10].to_vec();
    set.extend(emails("x", 1_990));
    Policy::new("pa", "list-a")
        .spec("  strategy: assert\n")
        .write_with_emails_file(s.dir.path(), &set);
    s.fake().reset_counters();

    let outcomes = sync_auto(&s, &s.client()).await;
    let by = |l: &str| outcomes.iter().find(|o| o.list.as_str() == l).unwrap();
    let o = by("list-o");
    assert_eq!(o.strategy.as_deref(), Some("observe"), "{o:?}");
    assert!(o.strategy_reason.as_deref().unwrap().contains("asked for"));
    assert_eq!(o.removed, 5);
    let a_ = by("list-a");
    assert_eq!(a_.strategy.as_deref(), Some("assert"), "{a_:?}");
    assert!(a_.strategy_reason.as_deref().unwrap().contains("asked for"));
    assert_eq!((a_.removed, a_.not_in_list), (10, 1_990));

    let c = s.fake().counters();
    // Only list-o was read (3 pages); list-a got 4 remove requests, list-o 1.
    assert_eq!(c.endpoint_total("search"), 3, "{c:?}");
    assert_eq!(c.remove_requests, 5);
    assert_eq!(
        c.remove_batches
            .iter()
            .filter(|b| b.list_id == "list-a")
            .count(),
        4
    );
}

// ---- matching ----------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_are_matched_by_normalised_email_and_by_contact_id() {
    let s = Local::new().await;
    let others = emails("other", 250);
    s.fake().add_contacts("list-m", &others);
    s.fake()
        .add_contacts("list-m", ["Jane@Example.com", "bob@example.com"]);
    let bob = s.fake().contact_id("bob@example.com").unwrap();
    // A contact id that is not a member, and an email that is not either.
    let stranger = s
        .fake()
        .add_contacts(autosend_fake::GLOBAL_CONTACT_LIST, ["stranger@example.com"])
        .remove(0);
    s.manifest(
        "m.yaml",
        &Policy::new("pm", "list-m")
            .spec("  strategy: observe\n")
            .emails(&[" JANE@example.com", "nobody@example.com"])
            .ids(&[&bob, &stranger])
            .yaml(),
    );
    s.fake().reset_counters();

    let outcomes = sync_auto(&s, &s.client()).await;
    let o = &outcomes[0];
    assert_eq!(o.result, ListResult::Converged, "{o:?}");
    assert_eq!(o.strategy.as_deref(), Some("observe"));
    assert_eq!(o.removed, 2, "{o:?}");
    assert!(!s.fake().is_member("list-m", "jane@example.com"));
    assert!(!s.fake().is_member("list-m", "bob@example.com"));
    assert_eq!(s.fake().member_count("list-m"), 250);
    let c = s.fake().counters();
    let batches: Vec<(String, Vec<String>)> = c
        .remove_batches
        .iter()
        .map(|b| (b.kind.field().to_string(), b.entries.clone()))
        .collect();
    assert_eq!(
        batches,
        vec![
            ("emails".to_string(), vec!["jane@example.com".to_string()]),
            ("contactIds".to_string(), vec![bob.clone()]),
        ],
        "only the members found are sent, each the way the manifest names it"
    );
    let conf = s.confirmed("list-m");
    for c in ["jane@example.com", "nobody@example.com", &bob, &stranger] {
        assert!(conf.contains(c), "{c} not confirmed: {conf:?}");
    }
}

// ---- a list that changes while it is read -------------------------------------------------------

/// Someone else removes members and adds members between two pages of the read (the client
/// is paced at 5 requests a second, so the change lands well between two pages). The
/// membership change is balanced, so `total` is the same on every page: a forward read would
/// skip the member that shifted onto the page already read. Whatever the read does, no
/// contact that is still a member may end up confirmed, and every desired-absent member that
/// stayed in the list throughout must be removed.
async fn churn_between_pages(remove_desired_too: bool) {
    let s = Local::new().await;
    let members = emails("r", 300);
    s.fake().add_contacts("churn", &members);
    let picks = [
        0usize, 50, 98, 99, 100, 101, 150, 198, 199, 200, 201, 202, 250, 299,
    ];
    let mut desired: Vec<String> = picks.iter().map(|&i| members[i].clone()).collect();
    desired.extend(emails("absent", 10));
    desired.push("late@example.com".into()); // added by someone else during the read
    s.manifest(
        "c.yaml",
        &Policy::new("pc", "churn")
            .spec("  strategy: observe\n")
            .emails(&desired)
            .yaml(),
    );
    s.fake().reset_counters();

    // Someone else: its own unpaced client, acting as soon as the first page is answered.
    let fake = s.fake().clone();
    let other = s.client();
    let removed_by_other: Vec<String> = if remove_desired_too {
        vec![members[10].clone(), members[50].clone()]
    } else {
        vec![members[10].clone()]
    };
    let to_remove = removed_by_other.clone();
    let meddler = tokio::spawn(async move {
        let deadline = Instant::now() + Duration::from_secs(20);
        while fake.counters().endpoint_total("search") < 1 {
            assert!(Instant::now() < deadline, "the read never started");
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let tally = Tally::default();
        other
            .remove("churn", &RemoveBatch::Emails(to_remove), &tally)
            .await
            .unwrap();
        let mut added = vec!["late@example.com".to_string()];
        if remove_desired_too {
            added.push("late2@example.com".into());
        }
        fake.add_contacts("churn", &added);
        fake.counters().endpoint_total("search")
    });

    let outcomes = sync_auto(&s, &paced_client(&s.url(), "5/s")).await;
    let searches_before_change = meddler.await.unwrap();
    assert_eq!(
        searches_before_change, 1,
        "the change must land between two pages of the read"
    );
    let o = &outcomes[0];
    assert_eq!(o.result, ListResult::Converged, "{o:?}");

    let conf = s.confirmed("churn");
    for c in &desired {
        if s.fake().is_member("churn", c) {
            assert!(
                !conf.contains(c),
                "{c} is still in the list but was confirmed absent ({o:?})"
            );
        }
    }
    // Every desired-absent member that stayed throughout was removed.
    for &i in &picks {
        let m = &members[i];
        if !removed_by_other.contains(m) {
            assert!(
                !s.fake().is_member("churn", m),
                "{m} (position {i}) stayed in the list ({o:?})"
            );
        }
    }
    // A confirmation comes from a remove response or a consistent read: every confirmed
    // contact is absent from the list now.
    for c in &conf {
        assert!(
            !s.fake().is_member("churn", c),
            "{c} confirmed but a member"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_added_and_removed_between_pages_confirm_nothing_wrongly() {
    churn_between_pages(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn desired_members_removed_by_someone_else_between_pages_are_handled() {
    churn_between_pages(true).await;
}

/// `read_members` reads exactly the pages `contactCount` says, and a stale count costs one
/// more request, not a wrong read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_members_is_sized_by_the_count_and_survives_a_stale_one() {
    let s = Local::new().await;
    s.fake().add_contacts("sized", emails("z", 250));
    let client = s.client();
    for (count, searches) in [(250, 3), (0, 1 + 3), (1_000, 1 + 3), (201, 3)] {
        s.fake().reset_counters();
        let tally = Tally::default();
        let m = listwarden::observe::read_members(&client, "sized", count, &tally)
            .await
            .unwrap()
            .expect("a consistent read");
        assert_eq!(m.total, 250);
        assert_eq!(m.emails.len(), 250);
        assert_eq!(m.contact_ids.len(), 250);
        assert_eq!(
            s.fake().counters().endpoint_total("search"),
            searches,
            "count {count}"
        );
    }
    // An empty list: one page, nothing in it.
    s.fake()
        .add_list("empty", "empty", autosend_fake::ListKind::List);
    let m = listwarden::observe::read_members(&client, "empty", 0, &Tally::default())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(m.total, 0);
}

/// A list that never stops changing is not trusted: the list falls back to asserting.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_list_that_keeps_changing_falls_back_to_assert() {
    let s = Local::new().await;
    let members = emails("k", 250);
    s.fake().add_contacts("busy", &members);
    let desired: Vec<String> = members[..20].to_vec();
    s.manifest(
        "b.yaml",
        &Policy::new("pb", "busy")
            .spec("  strategy: observe\n")
            .emails(&desired)
            .yaml(),
    );
    let fake = s.fake().clone();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stop2 = stop.clone();
    // Adds a member after every search answer.
    let churn = tokio::spawn(async move {
        let mut seen = 0;
        let mut n = 0;
        while !stop2.load(std::sync::atomic::Ordering::Relaxed) {
            let now = fake.counters().endpoint_total("search");
            if now > seen {
                seen = now;
                fake.add_contacts("busy", [format!("new{n}@example.com")]);
                n += 1;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    });
    let outcomes = sync_auto(&s, &paced_client(&s.url(), "10/s")).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    churn.await.unwrap();
    let o = &outcomes[0];
    assert_eq!(o.result, ListResult::Converged, "{o:?}");
    assert_eq!(o.strategy.as_deref(), Some("assert"), "{o:?}");
    assert!(
        o.strategy_reason
            .as_deref()
            .unwrap()
            .contains("kept changing"),
        "{o:?}"
    );
    assert_eq!(
        o.observed_absent, 0,
        "nothing confirmed by an inconsistent read"
    );
    assert_eq!(o.removed, 20);
    for m in &desired {
        assert!(!s.fake().is_member("busy", m));
    }
}

// ---- the real binary ----------------------------------------------------------------------------

#[test]
fn plan_refresh_reports_the_drift_and_never_removes() {
    let env = Env::plain();
    let members = emails("m", 230);
    env.fake().add_contacts("list-r", &members);
    env.fake().add_contacts("list-r", ["Jane@Example.com"]);
    let bob_id = env
        .fake()
        .add_contacts("list-r", ["bob@example.com"])
        .remove(0);
    env.fake().add_contacts("list-clean", emails("c", 40));
    // Two policies on list-r: drift is reported per policy.
    let mut p1 = vec![
        members[0].clone(),
        members[129].clone(),
        "jane@example.com".into(),
    ];
    p1.extend(emails("absent", 3));
    env.manifest("r1.yaml", &policy("drift-one", "list-r", &p1));
    env.manifest(
        "r2.yaml",
        &Policy::new("drift-two", "list-r")
            .emails(&[&members[229], &members[0]])
            .ids(&[&bob_id])
            .yaml(),
    );
    env.manifest(
        "clean.yaml",
        &policy("clean", "list-clean", &emails("gone", 5)),
    );
    env.fake().reset_counters();

    let r = refresh(&env, &["--output", "json", "--verbose"]);
    r.code(0);
    let doc = r.json();
    assert_eq!(doc["drift"], 5, "{doc:#}");
    let l = list_status(&doc, "list-r");
    assert_eq!(l["contact_count"], 232);
    assert_eq!(l["drift"], 5);
    let present: BTreeSet<String> = l["present"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect();
    let want: BTreeSet<String> = [
        members[0].clone(),
        members[129].clone(),
        members[229].clone(),
        "jane@example.com".into(),
        bob_id.clone(),
    ]
    .into_iter()
    .collect();
    assert_eq!(present, want);
    let per_policy: Vec<(String, u64)> = l["drift_by_policy"]
        .as_array()
        .expect("drift_by_policy is an array")
        .iter()
        .map(|d| {
            (
                d["policy"].as_str().unwrap().to_string(),
                d["drift"].as_u64().unwrap(),
            )
        })
        .collect();
    assert!(
        per_policy.contains(&("drift-one".into(), 3)),
        "{per_policy:?}"
    );
    assert!(
        per_policy.contains(&("drift-two".into(), 3)),
        "{per_policy:?}"
    );
    let clean = list_status(&doc, "list-clean");
    assert_eq!(clean["drift"], 0);
    assert_eq!(clean["contact_count"], 40);

    let c = env.fake().counters();
    assert_eq!(c.remove_requests, 0, "plan --refresh never removes");
    // Per list: get_list + the pages (3 for list-r, 1 for list-clean).
    assert_eq!(c.endpoint_total("get_list"), 2);
    assert_eq!(c.endpoint_total("search"), 3 + 1, "{c:?}");
    assert_eq!(env.fake().member_count("list-r"), 232);
    assert!(!env.state().exists(), "plan never creates the store");

    // --detailed-exitcode: 2 only when real drift exists.
    refresh(&env, &["--detailed-exitcode"]).code(2);
    let text = refresh(&env, &["--verbose"]);
    text.code(0);
    assert!(
        text.stdout
            .contains("list list-r: 232 member(s), 5 desired-absent contact(s) present"),
        "{}",
        text.stdout
    );
    assert!(text.stdout.contains("jane@example.com"), "{}", text.stdout);
    assert!(
        text.stdout.contains("Drift: 5 contact(s)"),
        "{}",
        text.stdout
    );
    assert_eq!(env.fake().counters().remove_requests, 0);

    // Converge, then the refresh finds no drift even though every contact is still "desired".
    env.apply(&["--rate-limit", "1000/s", "--strategy", "observe"])
        .code(0);
    let r = refresh(&env, &["--output", "json", "--detailed-exitcode"]);
    r.code(0);
    assert_eq!(r.json()["drift"], 0);
    // Someone re-adds a suppressed contact: real drift again, while the store believes it
    // confirmed (an offline plan would say "nothing to do").
    env.fake().add_contacts("list-r", [members[129].clone()]);
    let offline = env.plan(&["--detailed-exitcode"]);
    offline.code(0);
    let r = refresh(
        &env,
        &["--output", "json", "--detailed-exitcode", "--verbose"],
    );
    r.code(2);
    let doc = r.json();
    assert_eq!(doc["drift"], 1);
    assert_eq!(
        list_status(&doc, "list-r")["present"],
        serde_json::json!([members[129]])
    );
}

#[test]
fn apply_strategy_flag_and_status_report_strategy_and_drift() {
    let env = Env::plain();
    // 1,600 contacts against 150 members: auto observes (2 pages + 1 remove < 4 removes).
    let members = emails("m", 150);
    env.fake().add_contacts("list-s", &members);
    let mut set = members[..12].to_vec();
    set.extend(emails("x", 1_588));
    std::fs::create_dir_all(env.manifests()).unwrap();
    Policy::new("ps", "list-s").write_with_emails_file(&env.manifests(), &set);
    env.fake().reset_counters();

    // --strategy assert forces assert.
    let r = env.apply(&["--rate-limit", "1000/s", "--strategy", "assert"]);
    r.code(0);
    let c = env.fake().counters();
    assert_eq!(c.endpoint_total("search"), 0, "{}", r.stdout);
    assert_eq!(c.remove_requests, 4);
    assert!(r.stdout.contains("[assert]"), "{}", r.stdout);
    let doc = env.status_json();
    let l = list_status(&doc, "list-s");
    assert_eq!(l["strategy"], "assert", "{l:#}");
    let reason = l["strategy_reason"].as_str().unwrap();
    assert!(reason.starts_with("assert (asked for)"), "{reason}");
    assert!(reason.contains("observe = 2 search page(s)"), "{reason}");
    assert!(l["drift"].is_null(), "no observation yet: {l:#}");

    // Someone re-adds 4 of them; --resync with auto observes and reports the drift.
    env.fake().add_contacts("list-s", &members[..4]);
    env.fake().reset_counters();
    let r = env.apply(&["--rate-limit", "1000/s", "--strategy", "auto", "--resync"]);
    r.code(0);
    assert!(r.stdout.contains("[observe]"), "{}", r.stdout);
    let c = env.fake().counters();
    assert_eq!(c.endpoint_total("search"), 2);
    assert_eq!(c.remove_requests, 1);
    let mut sent = removes_accepted(env.fake(), "list-s");
    sent.sort();
    let mut want = members[..4].to_vec();
    want.sort();
    assert_eq!(sent, want);
    let doc = env.status_json();
    let l = list_status(&doc, "list-s");
    assert_eq!(l["strategy"], "observe", "{l:#}");
    let reason = l["strategy_reason"].as_str().unwrap();
    assert!(reason.starts_with("observe (cheaper)"), "{reason}");
    assert!(reason.contains("assert = 4 remove request(s)"), "{reason}");
    assert_eq!(l["drift"], 4, "{l:#}");
    assert!(l["last_observed_at"].as_i64().unwrap() > 0, "{l:#}");
    assert_eq!(l["contact_count"], 142, "members at the pre-flight: {l:#}");
}
