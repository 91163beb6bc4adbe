//! The library's apply path (load -> plan -> record_manifests -> sync_all) driven in-process
//! against the fake AutoSend, with fast retry settings: convergence, idempotence, and the
//! transient failures (5xx, dropped connections, 429 with only a `Retry-After` header) that
//! must be retried until the lists converge.

mod support;

use std::sync::Arc;
use std::time::Duration;

use autosend_fake::{FakeAutoSend, GLOBAL_CONTACT_LIST};
use listwarden::contact::ContactKind;
use listwarden::manifest::Strategy;
use listwarden::reconcile::ListResult;
use listwarden::store::{Ready, Store};
use support::fake::{Local, fake_config, plan_options, removes_sent, sync_one_at_a_time};
use support::scripted::{Arrivals, header_only_429, serve_router};
use support::{KEY, emails, policy, write};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_removes_members_and_confirms_every_desired_contact() {
    let s = Local::new().await;
    s.fake().add_contacts("list-a", emails("a", 120));
    s.fake().add_contacts("list-b", emails("b", 30));
    s.fake()
        .add_contacts(GLOBAL_CONTACT_LIST, emails("elsewhere", 5));
    let mut a = emails("a", 100);
    a.extend(emails("elsewhere", 5));
    s.manifest("a.yaml", &policy("pa", "list-a", &a));
    s.manifest("b.yaml", &policy("pb", "list-b", &emails("b", 30)));

    let pass = s.sync(plan_options(25, Strategy::Assert)).await;
    assert!(pass.report.unauthorized.is_empty());
    assert_eq!(pass.report.outcomes.len(), 2);
    let oa = &pass.report.outcomes[0];
    assert_eq!(oa.list.as_str(), "list-a");
    assert_eq!(oa.result, ListResult::Converged);
    assert_eq!((oa.removed, oa.not_in_list, oa.failed), (100, 5, 0));
    // 1 pre-flight + ceil(105 / 25) removes.
    assert_eq!(oa.requests, 1 + 5);
    let ob = &pass.report.outcomes[1];
    assert_eq!(ob.result, ListResult::Converged);
    assert_eq!(ob.removed, 30);

    for e in emails("a", 100) {
        assert!(!s.fake().is_member("list-a", &e), "{e}");
    }
    assert_eq!(s.fake().member_count("list-a"), 20);
    assert_eq!(s.fake().member_count("list-b"), 0);
    assert_eq!(s.confirmed("list-a").len(), 105);
    assert_eq!(s.confirmed("list-b").len(), 30);
    for p in s.store.policies().unwrap() {
        assert_eq!(p.condition.ready, Ready::True, "{p:?}");
        assert_eq!(p.condition.reason, "Converged");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn second_sync_sends_no_request() {
    let s = Local::new().await;
    s.fake().add_contacts("list-a", emails("a", 40));
    s.manifest("a.yaml", &policy("pa", "list-a", &emails("a", 40)));
    let first = s.sync(plan_options(10, Strategy::Assert)).await;
    assert_eq!(first.report.outcomes[0].result, ListResult::Converged);

    s.fake().reset_counters();
    let second = s.sync(plan_options(10, Strategy::Assert)).await;
    assert_eq!(second.plan.to_assert(), 0);
    assert_eq!(second.report.outcomes[0].result, ListResult::Converged);
    assert_eq!(second.report.outcomes[0].requests, 0);
    assert_eq!(s.fake().counters().requests, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_errors_503_are_retried_until_the_lists_converge() {
    let s = Local::new().await;
    s.fake().add_contacts("list-a", emails("a", 100));
    s.fake().add_contacts("list-b", emails("b", 100));
    s.manifest("a.yaml", &policy("pa", "list-a", &emails("a", 100)));
    s.manifest("b.yaml", &policy("pb", "list-b", &emails("b", 100)));
    s.fake().update_faults(|f| {
        f.error_status = 503;
        f.error_rate = 0.2;
        f.fail_next = Some((503, 3));
    });

    let pass = s.sync(plan_options(10, Strategy::Assert)).await;
    for o in &pass.report.outcomes {
        assert_eq!(o.result, ListResult::Converged, "{o:?}");
        assert_eq!(o.removed, 100);
    }
    let c = s.fake().counters();
    let served_503 = c.count("remove", 503) + c.count("get_list", 503);
    assert!(served_503 >= 3, "{c:?}");
    // Every request that was answered 503 was sent again: more requests than the plan's.
    let sent: u64 = pass.report.outcomes.iter().map(|o| o.requests).sum();
    assert_eq!(sent, 22 + served_503);
    assert_eq!(s.fake().member_count("list-a"), 0);
    assert_eq!(s.fake().member_count("list-b"), 0);
    assert_eq!(
        s.confirmed("list-a").len() + s.confirmed("list-b").len(),
        200
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropped_connections_are_retried_until_the_lists_converge() {
    let s = Local::new().await;
    s.fake().add_contacts("list-a", emails("a", 100));
    s.manifest("a.yaml", &policy("pa", "list-a", &emails("a", 100)));
    s.fake().update_faults(|f| {
        f.drop_next = 3;
        f.drop_rate = 0.15;
    });

    let pass = s.sync(plan_options(10, Strategy::Assert)).await;
    let o = &pass.report.outcomes[0];
    assert_eq!(o.result, ListResult::Converged, "{o:?}");
    let c = s.fake().counters();
    assert!(c.dropped_connections >= 3, "{c:?}");
    assert_eq!(o.requests, 11 + c.dropped_connections);
    assert_eq!(s.fake().member_count("list-a"), 0);
    assert_eq!(s.confirmed("list-a").len(), 100);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_that_stays_down_fails_its_list_with_an_api_error() {
    let s = Local::new().await;
    s.fake().add_contacts("list-a", emails("a", 5));
    s.manifest("a.yaml", &policy("pa", "list-a", &emails("a", 5)));
    s.fake().update_faults(|f| f.fail_next = Some((503, 1000)));

    let pass = s.sync(plan_options(10, Strategy::Assert)).await;
    let o = &pass.report.outcomes[0];
    match &o.result {
        ListResult::Failed(m) => assert!(m.contains("server error (503) after 7 attempts"), "{m}"),
        other => panic!("expected Failed, got {other:?}"),
    }
    assert!(pass.report.has_list_errors());
    let p = &s.store.policies().unwrap()[0];
    assert_eq!(p.condition.ready, Ready::False);
    assert_eq!(p.condition.reason, "ApiError");
    assert_eq!(s.fake().member_count("list-a"), 5);

    // Back up: the next sync converges.
    s.fake().update_faults(|f| f.fail_next = None);
    let pass = s.sync(plan_options(10, Strategy::Assert)).await;
    assert_eq!(pass.report.outcomes[0].result, ListResult::Converged);
    assert_eq!(s.fake().member_count("list-a"), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_contact_errors_are_recorded_by_name_and_retried_next_sync() {
    let s = Local::new().await;
    s.fake().add_contacts("list-a", emails("a", 10));
    s.manifest("a.yaml", &policy("pa", "list-a", &emails("a", 10)));
    s.fake()
        .update_faults(|f| f.contact_errors = ["A4@Example.com".to_string()].into_iter().collect());

    let pass = s.sync(plan_options(500, Strategy::Assert)).await;
    let o = &pass.report.outcomes[0];
    assert_eq!(o.result, ListResult::PartiallyFailed);
    assert_eq!(o.failed, 1);
    assert_eq!(
        o.first_errors,
        vec![(
            "a4@example.com".to_string(),
            "Failed to remove contact from list".to_string()
        )]
    );
    assert_eq!(
        s.store
            .contact_error("list-a", ContactKind::Email, "a4@example.com")
            .unwrap()
            .as_deref(),
        Some("Failed to remove contact from list")
    );
    assert_eq!(pass.report.failed_contacts(), 1);
    assert!(!pass.report.has_list_errors());

    s.fake().update_faults(|f| f.contact_errors.clear());
    s.fake().reset_counters();
    let pass = s.sync(plan_options(500, Strategy::Assert)).await;
    assert_eq!(pass.plan.to_assert(), 1);
    assert_eq!(pass.report.outcomes[0].result, ListResult::Converged);
    assert_eq!(
        removes_sent(s.fake(), "list-a"),
        vec!["a4@example.com".to_string()]
    );
    assert_eq!(
        s.store
            .contact_error("list-a", ContactKind::Email, "a4@example.com")
            .unwrap(),
        None
    );
    assert_eq!(s.confirmed("list-a").len(), 10);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_after_header_alone_is_honoured() {
    let fake = FakeAutoSend::new(fake_config(KEY));
    fake.add_contacts("list-a", emails("a", 30));
    fake.update_faults(|f| f.fail_next = Some((429, 1)));
    // Only a `Retry-After: 2` header says how long to wait.
    let log = Arrivals::default();
    let server = serve_router(header_only_429(fake.router(), 2, log.clone())).await;

    let dir = tempfile::tempdir().unwrap();
    write(
        &dir.path().join("a.yaml"),
        &policy("pa", "list-a", &emails("a", 30)),
    );
    let store = Arc::new(Store::in_memory().unwrap());
    let pass = sync_one_at_a_time(
        &server.url,
        &store,
        dir.path(),
        plan_options(10, Strategy::Assert),
    )
    .await;
    drop(server);

    let o = &pass.report.outcomes[0];
    assert_eq!(o.result, ListResult::Converged, "{o:?}");
    assert_eq!(o.rate_limited, 1);
    assert_eq!(fake.member_count("list-a"), 0);
    let log = log.all();
    assert_eq!(log[0].status, 429, "{log:?}");
    assert!(log[1..].iter().all(|a| a.status == 200), "{log:?}");
    let waited = log[1].at - log[0].at;
    // The fallback without any hint is 1 s: waiting 2 s shows the header was read.
    assert!(
        waited >= Duration::from_millis(1950) && waited < Duration::from_secs(6),
        "waited {waited:?} after the 429"
    );
}
