//! The library's apply path (load -> plan -> record_manifests -> sync_all) driven in-process
//! against the fake AutoSend, with fast retry settings: convergence, idempotence, and the
//! transient failures (5xx, dropped connections, 429 with only a `Retry-After` header) that
//! must be retried until the lists converge.

mod apply_support;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use apply_support::*;
use autosend_fake::{FakeAutoSend, GLOBAL_CONTACT_LIST};
use listwarden::contact::{ContactKind, ContactListId};
use listwarden::reconcile::ListResult;
use listwarden::store::{Ready, Store};

struct Setup {
    served: autosend_fake::RunningFake,
    store: Arc<Store>,
    dir: tempfile::TempDir,
}

impl Setup {
    async fn new() -> Setup {
        let served = FakeAutoSend::new(fake_config(KEY))
            .serve_local()
            .await
            .unwrap();
        Setup {
            served,
            store: Arc::new(Store::in_memory().unwrap()),
            dir: tempfile::tempdir().unwrap(),
        }
    }
    fn fake(&self) -> &FakeAutoSend {
        self.served.handle()
    }
    fn manifest(&self, file: &str, text: &str) {
        write(&self.dir.path().join(file), text);
    }
    async fn sync(&self, batch_size: usize) -> Pass {
        let client = fast_client(&self.served.base_url(), KEY);
        sync(
            &client,
            &self.store,
            self.dir.path(),
            plan_options(batch_size),
            4,
        )
        .await
    }
    fn confirmed(&self, list: &str) -> usize {
        let list = ContactListId::parse(list).unwrap();
        let r = self.store.records(&list).unwrap();
        r.emails
            .values()
            .filter(|r| r.confirmed_at.is_some() && r.failed_at.is_none())
            .count()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_removes_members_and_confirms_every_desired_contact() {
    let s = Setup::new().await;
    s.fake().add_contacts("list-a", emails("a", 120));
    s.fake().add_contacts("list-b", emails("b", 30));
    s.fake()
        .add_contacts(GLOBAL_CONTACT_LIST, emails("elsewhere", 5));
    let mut a = emails("a", 100);
    a.extend(emails("elsewhere", 5));
    s.manifest("a.yaml", &policy("pa", "list-a", &a));
    s.manifest("b.yaml", &policy("pb", "list-b", &emails("b", 30)));

    let pass = s.sync(25).await;
    assert!(pass.report.unauthorized.is_none());
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
    assert_eq!(s.confirmed("list-a"), 105);
    assert_eq!(s.confirmed("list-b"), 30);
    for p in s.store.policies().unwrap() {
        assert_eq!(p.condition.ready, Ready::True, "{p:?}");
        assert_eq!(p.condition.reason, "Converged");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn second_sync_sends_no_request() {
    let s = Setup::new().await;
    s.fake().add_contacts("list-a", emails("a", 40));
    s.manifest("a.yaml", &policy("pa", "list-a", &emails("a", 40)));
    let first = s.sync(10).await;
    assert_eq!(first.report.outcomes[0].result, ListResult::Converged);

    s.fake().reset_counters();
    let second = s.sync(10).await;
    assert_eq!(second.plan.to_assert(), 0);
    assert_eq!(second.report.outcomes[0].result, ListResult::Converged);
    assert_eq!(second.report.outcomes[0].requests, 0);
    assert_eq!(s.fake().counters().requests, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_errors_503_are_retried_until_the_lists_converge() {
    let s = Setup::new().await;
    s.fake().add_contacts("list-a", emails("a", 100));
    s.fake().add_contacts("list-b", emails("b", 100));
    s.manifest("a.yaml", &policy("pa", "list-a", &emails("a", 100)));
    s.manifest("b.yaml", &policy("pb", "list-b", &emails("b", 100)));
    s.fake().update_faults(|f| {
        f.error_status = 503;
        f.error_rate = 0.2;
        f.fail_next = Some((503, 3));
    });

    let pass = s.sync(10).await;
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
    assert_eq!(s.confirmed("list-a") + s.confirmed("list-b"), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropped_connections_are_retried_until_the_lists_converge() {
    let s = Setup::new().await;
    s.fake().add_contacts("list-a", emails("a", 100));
    s.manifest("a.yaml", &policy("pa", "list-a", &emails("a", 100)));
    s.fake().update_faults(|f| {
        f.drop_next = 3;
        f.drop_rate = 0.15;
    });

    let pass = s.sync(10).await;
    let o = &pass.report.outcomes[0];
    assert_eq!(o.result, ListResult::Converged, "{o:?}");
    let c = s.fake().counters();
    assert!(c.dropped_connections >= 3, "{c:?}");
    assert_eq!(o.requests, 11 + c.dropped_connections);
    assert_eq!(s.fake().member_count("list-a"), 0);
    assert_eq!(s.confirmed("list-a"), 100);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_that_stays_down_fails_its_list_with_an_api_error() {
    let s = Setup::new().await;
    s.fake().add_contacts("list-a", emails("a", 5));
    s.manifest("a.yaml", &policy("pa", "list-a", &emails("a", 5)));
    s.fake().update_faults(|f| f.fail_next = Some((503, 1000)));

    let pass = s.sync(10).await;
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
    let pass = s.sync(10).await;
    assert_eq!(pass.report.outcomes[0].result, ListResult::Converged);
    assert_eq!(s.fake().member_count("list-a"), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_contact_errors_are_recorded_by_name_and_retried_next_sync() {
    let s = Setup::new().await;
    s.fake().add_contacts("list-a", emails("a", 10));
    s.manifest("a.yaml", &policy("pa", "list-a", &emails("a", 10)));
    s.fake()
        .update_faults(|f| f.contact_errors = ["A4@Example.com".to_string()].into_iter().collect());

    let pass = s.sync(500).await;
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
    let pass = s.sync(500).await;
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
    assert_eq!(s.confirmed("list-a"), 10);
}

/// When each request arrived, and the status it was answered with.
type ArrivalLog = Arc<Mutex<Vec<(Instant, u16)>>>;

/// Rewrites the fake's 429 answers so that only a `Retry-After: 2` header says how long to
/// wait (no `retryAfter` in the body, no `X-RateLimit-*` headers), and logs when each request
/// arrived and how it was answered.
async fn header_only_429(
    axum::extract::State(log): axum::extract::State<ArrivalLog>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    let arrived = Instant::now();
    let resp = next.run(req).await;
    let status = resp.status().as_u16();
    log.lock().unwrap().push((arrived, status));
    if status != 429 {
        return resp;
    }
    let (mut parts, body) = resp.into_parts();
    let bytes = axum::body::to_bytes(body, 1 << 20).await.unwrap();
    let mut v: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
    v["error"].as_object_mut().unwrap().remove("retryAfter");
    for h in [
        "x-ratelimit-limit",
        "x-ratelimit-remaining",
        "x-ratelimit-reset",
        "content-length",
    ] {
        parts.headers.remove(h);
    }
    parts
        .headers
        .insert("retry-after", axum::http::HeaderValue::from_static("2"));
    axum::response::Response::from_parts(
        parts,
        axum::body::Body::from(serde_json::to_vec(&v).unwrap()),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_after_header_alone_is_honoured() {
    let fake = FakeAutoSend::new(fake_config(KEY));
    fake.add_contacts("list-a", emails("a", 30));
    fake.update_faults(|f| f.fail_next = Some((429, 1)));
    let log: ArrivalLog = Arc::new(Mutex::new(Vec::new()));
    let app = fake.router().layer(axum::middleware::from_fn_with_state(
        log.clone(),
        header_only_429,
    ));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(async move { axum::serve(listener, app).await });

    let dir = tempfile::tempdir().unwrap();
    write(
        &dir.path().join("a.yaml"),
        &policy("pa", "list-a", &emails("a", 30)),
    );
    let store = Arc::new(Store::in_memory().unwrap());
    let client = fast_client(&format!("http://{addr}/v1"), KEY);
    let pass = sync(&client, &store, dir.path(), plan_options(10), 1).await;
    server.abort();

    let o = &pass.report.outcomes[0];
    assert_eq!(o.result, ListResult::Converged, "{o:?}");
    assert_eq!(o.rate_limited, 1);
    assert_eq!(fake.member_count("list-a"), 0);
    let log = log.lock().unwrap().clone();
    assert_eq!(log[0].1, 429, "{log:?}");
    assert!(log[1..].iter().all(|(_, s)| *s == 200), "{log:?}");
    let waited = log[1].0 - log[0].0;
    // The fallback without any hint is 1 s: waiting 2 s shows the header was read.
    assert!(
        waited >= Duration::from_millis(1950) && waited < Duration::from_secs(6),
        "waited {waited:?} after the 429"
    );
}
