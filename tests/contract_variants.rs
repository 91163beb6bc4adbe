//! Answers a faithful implementation of AutoSend's documented contract may give that our own
//! fake does not: members named by `_id` or by email only, `errors` that is not a list,
//! counts as strings, a refusal that concerns the request rather than a contact. None of
//! them may confirm a contact wrongly or burn the request budget.

mod support;

use std::path::Path;
use std::sync::{Arc, Mutex};

use axum::Json;
use axum::extract::{Path as AxPath, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use listwarden::contact::ContactKind;
use listwarden::manifest::Strategy;
use listwarden::reconcile::{self, ListResult};
use listwarden::store::Store;
use serde_json::{Value, json};
use support::fake::{Pass, fast_client, is_confirmed, plan_options, sync_one_at_a_time};
use support::scripted::{self, serve_router};
use support::{KEY, Policy, policy, write};

const LIST: &str = "L1";

/// How the scripted server answers.
#[derive(Clone, Copy)]
enum Mode {
    /// Search members carry `email` but no id; remove answers normally.
    MembersWithoutId,
    /// Search members carry `_id` (and `total` as a string).
    UnderscoreIdStringTotal,
    /// Remove answers `errors` as an object keyed by email.
    ErrorsAsObject,
    /// Every remove is refused with the same 400, whatever the batch.
    RefuseEverything,
    /// The list `L2` answers 401 (a key scoped to other lists); `L1` works.
    UnauthorizedOnL2,
    /// Remove answers `removed: 1, notInList: 0` whatever the batch held (and removes
    /// nothing): counts that do not cover the batch.
    UnderAccounted,
    /// Remove answers `removed: 3000` for any batch (and removes it).
    OverAccounted,
    /// The list's `contactCount` is missing, and search pages say `total: null` with no
    /// contacts: an answer that says nothing about the list's size.
    NullCounts,
}

struct Script {
    mode: Mode,
    /// Members of the list: (id, email).
    members: Vec<(String, String)>,
    /// Every remove body received.
    removes: Vec<Value>,
}

type Shared = Arc<Mutex<Script>>;

fn unauthorized() -> (StatusCode, Json<Value>) {
    (
        StatusCode::UNAUTHORIZED,
        Json(
            json!({"success": false, "error": {"message": "Unauthorized", "code": "UNAUTHORIZED"}}),
        ),
    )
}

async fn get_list(
    State(s): State<Shared>,
    AxPath(id): AxPath<String>,
) -> (StatusCode, Json<Value>) {
    let s = s.lock().unwrap();
    if matches!(s.mode, Mode::UnauthorizedOnL2) && id == "L2" {
        return unauthorized();
    }
    let n = s.members.len();
    let data = match s.mode {
        Mode::NullCounts => json!({"id": id, "name": "n", "type": "list"}),
        _ => json!({"id": id, "name": "n", "type": "list", "contactCount": n}),
    };
    (StatusCode::OK, Json(json!({"success": true, "data": data})))
}

async fn search(State(s): State<Shared>, Json(body): Json<Value>) -> Json<Value> {
    let s = s.lock().unwrap();
    let page = body["page"].as_u64().unwrap_or(1) as usize;
    let limit = body["limit"].as_u64().unwrap_or(20) as usize;
    let total = s.members.len();
    let contacts: Vec<Value> = s
        .members
        .iter()
        .skip((page - 1) * limit)
        .take(limit)
        .map(|(id, email)| match s.mode {
            Mode::MembersWithoutId => json!({"email": email}),
            Mode::UnderscoreIdStringTotal => json!({"_id": id, "email": email}),
            _ => json!({"id": id, "email": email}),
        })
        .collect();
    let total_value = match s.mode {
        Mode::UnderscoreIdStringTotal => json!(total.to_string()),
        Mode::NullCounts => {
            return Json(
                json!({"success": true, "data": {"contacts": [], "pagination": {"total": null}}}),
            );
        }
        _ => json!(total),
    };
    Json(
        json!({"success": true, "data": {"contacts": contacts, "pagination": {
        "page": page, "limit": limit, "total": total_value, "pages": total.div_ceil(limit)}}}),
    )
}

async fn remove(State(s): State<Shared>, Json(body): Json<Value>) -> (StatusCode, Json<Value>) {
    let mut s = s.lock().unwrap();
    s.removes.push(body.clone());
    match s.mode {
        Mode::RefuseEverything => (
            StatusCode::BAD_REQUEST,
            Json(
                json!({"success": false, "error": {"message": "contactListId is not a valid ObjectId", "code": "VALIDATION_FAILED"}}),
            ),
        ),
        Mode::UnderAccounted => (
            StatusCode::OK,
            Json(json!({"success": true, "data": {"removed": 1, "notInList": 0, "errors": []}})),
        ),
        Mode::ErrorsAsObject => {
            let first = body["emails"][0].as_str().unwrap_or("").to_string();
            (
                StatusCode::OK,
                Json(
                    json!({"success": true, "data": {"removed": 0, "notInList": 0, "errors": {first: "Failed to remove"}}}),
                ),
            )
        }
        _ => {
            let entries: Vec<String> = body["emails"]
                .as_array()
                .or(body["contactIds"].as_array())
                .unwrap()
                .iter()
                .map(|v| v.as_str().unwrap().to_string())
                .collect();
            let before = s.members.len();
            s.members
                .retain(|(id, email)| !entries.contains(id) && !entries.contains(email));
            let removed = match s.mode {
                Mode::OverAccounted => 3000,
                _ => before - s.members.len(),
            };
            (
                StatusCode::OK,
                Json(
                    json!({"success": true, "data": {"removed": removed, "notInList": entries.len().saturating_sub(removed), "errors": []}}),
                ),
            )
        }
    }
}

struct Server {
    url: String,
    state: Shared,
    _served: scripted::Server,
}

async fn serve(mode: Mode, members: &[(&str, &str)]) -> Server {
    let state: Shared = Arc::new(Mutex::new(Script {
        mode,
        members: members
            .iter()
            .map(|(i, e)| (i.to_string(), e.to_string()))
            .collect(),
        removes: Vec::new(),
    }));
    let app = axum::Router::new()
        .route("/v1/contact-lists/{id}", get(get_list))
        .route("/v1/contact-lists/contacts/search", post(search))
        .route("/v1/contact-lists/{id}/contacts/remove", post(remove))
        .with_state(state.clone());
    let served = serve_router(app).await;
    Server {
        url: served.url.clone(),
        state,
        _served: served,
    }
}

fn manifest(dir: &Path, emails: &[&str], ids: &[&str]) {
    let p = Policy::new("p", LIST).emails(emails).ids(ids);
    write(&dir.join("p.yaml"), &p.yaml());
}

fn confirmed(store: &Store, kind: ContactKind, contact: &str) -> bool {
    is_confirmed(store, LIST, kind, contact)
}

/// One pass against `server` in batches of 500, one list at a time.
async fn sync_pass(server: &Server, store: &Arc<Store>, dir: &Path, strategy: Strategy) -> Pass {
    sync_one_at_a_time(&server.url, store, dir, plan_options(500, strategy)).await
}

/// One pass into a new store.
async fn run(server: &Server, dir: &Path, strategy: Strategy) -> (Arc<Store>, Pass) {
    let store = Arc::new(Store::in_memory().unwrap());
    let pass = sync_pass(server, &store, dir, strategy).await;
    (store, pass)
}

#[tokio::test]
async fn members_without_ids_never_confirm_contact_ids_by_absence() {
    let server = serve(
        Mode::MembersWithoutId,
        &[("c1", "m1@example.com"), ("c2", "m2@example.com")],
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    manifest(dir.path(), &["x1@example.com", "m1@example.com"], &["c2"]);
    let (store, pass) = run(&server, dir.path(), Strategy::Observe).await;
    assert_eq!(pass.report.outcomes[0].result, ListResult::Converged);
    let removes = server.state.lock().unwrap().removes.clone();
    // The email found is removed by email; the id, unreadable in the search answer, is
    // asserted by id rather than confirmed by a read that could not see it.
    assert!(
        removes.iter().any(|b| b["contactIds"] == json!(["c2"])),
        "{removes:?}"
    );
    assert!(
        removes
            .iter()
            .any(|b| b["emails"] == json!(["m1@example.com"])),
        "{removes:?}"
    );
    assert!(server.state.lock().unwrap().members.is_empty());
    assert!(confirmed(&store, ContactKind::Email, "x1@example.com"));
    assert!(confirmed(&store, ContactKind::ContactId, "c2"));
}

#[tokio::test]
async fn underscore_ids_and_counts_as_strings_are_read() {
    let server = serve(
        Mode::UnderscoreIdStringTotal,
        &[("c1", "m1@example.com"), ("c2", "m2@example.com")],
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    manifest(dir.path(), &["x1@example.com"], &["c2", "c9"]);
    let (store, pass) = run(&server, dir.path(), Strategy::Observe).await;
    assert_eq!(pass.report.outcomes[0].result, ListResult::Converged);
    assert_eq!(pass.report.outcomes[0].strategy.as_deref(), Some("observe"));
    let removes = server.state.lock().unwrap().removes.clone();
    assert_eq!(removes, vec![json!({"contactIds": ["c2"]})]);
    assert!(confirmed(&store, ContactKind::ContactId, "c9"));
    assert!(confirmed(&store, ContactKind::Email, "x1@example.com"));
}

#[tokio::test]
async fn errors_that_are_not_a_list_leave_the_batch_unconfirmed() {
    let server = serve(Mode::ErrorsAsObject, &[("c1", "m1@example.com")]).await;
    let dir = tempfile::tempdir().unwrap();
    manifest(dir.path(), &["m1@example.com", "x1@example.com"], &[]);
    let (store, pass) = run(&server, dir.path(), Strategy::Assert).await;
    assert!(
        matches!(&pass.report.outcomes[0].result, ListResult::Failed(m) if m.contains("not a list")),
        "{:?}",
        pass.report.outcomes[0].result
    );
    assert!(!confirmed(&store, ContactKind::Email, "m1@example.com"));
    assert!(!confirmed(&store, ContactKind::Email, "x1@example.com"));
}

#[tokio::test]
async fn a_refusal_of_every_request_fails_the_list_without_splitting_to_every_contact() {
    let server = serve(Mode::RefuseEverything, &[]).await;
    let dir = tempfile::tempdir().unwrap();
    let emails: Vec<String> = (0..300).map(|i| format!("u{i}@example.com")).collect();
    let refs: Vec<&str> = emails.iter().map(String::as_str).collect();
    manifest(dir.path(), &refs, &[]);
    let (store, pass) = run(&server, dir.path(), Strategy::Assert).await;
    let result = &pass.report.outcomes[0].result;
    assert!(
        matches!(result, ListResult::Failed(m) if m.contains("every request for this list is refused")),
        "{result:?}"
    );
    let sent = server.state.lock().unwrap().removes.len();
    // 300 -> 150 -> 75 -> 38 -> 19 -> 10 -> 5 -> 3 -> 2 -> 1 and two more singles: a dozen
    // requests, not the ~600 of splitting down to every contact.
    assert!(sent <= 20, "{sent} remove requests");
    assert!(!confirmed(&store, ContactKind::Email, "u0@example.com"));
}

#[tokio::test]
async fn a_load_without_any_policy_forgets_nothing() {
    let server = serve(Mode::MembersWithoutId, &[("c1", "m1@example.com")]).await;
    let dir = tempfile::tempdir().unwrap();
    manifest(dir.path(), &["m1@example.com"], &[]);
    let (store, _) = run(&server, dir.path(), Strategy::Assert).await;
    assert!(confirmed(&store, ContactKind::Email, "m1@example.com"));
    // The manifests vanish (a failed checkout, a missing mount): nothing is forgotten.
    std::fs::remove_file(dir.path().join("p.yaml")).unwrap();
    let pass = sync_pass(&server, &store, dir.path(), Strategy::Assert).await;
    assert!(pass.manifests.policies.is_empty());
    assert!(
        pass.manifests
            .warnings()
            .any(|d| d.message.contains("no *.yaml"))
    );
    assert!(confirmed(&store, ContactKind::Email, "m1@example.com"));
}

#[tokio::test]
async fn a_key_refused_on_one_list_leaves_the_converged_lists_ready() {
    let server = serve(Mode::UnauthorizedOnL2, &[("c1", "m1@example.com")]).await;
    let dir = tempfile::tempdir().unwrap();
    write(
        &dir.path().join("a.yaml"),
        &policy("on-l1", "L1", &["m1@example.com"]),
    );
    write(
        &dir.path().join("b.yaml"),
        &policy("on-l2", "L2", &["m2@example.com"]),
    );
    let store = Arc::new(Store::in_memory().unwrap());
    // One list at a time, L1 first: it converges before L2's 401 stops the pass.
    let pass = sync_pass(&server, &store, dir.path(), Strategy::Assert).await;
    assert!(!pass.report.unauthorized.is_empty(), "{:?}", pass.report);
    let policies = store.policies().unwrap();
    let reason = |name: &str| {
        policies
            .iter()
            .find(|p| p.name == name)
            .map(|p| p.condition.reason)
            .unwrap()
    };
    assert_eq!(reason("on-l1"), "Converged");
    assert_eq!(reason("on-l2"), "Unauthorized");
}

#[tokio::test]
async fn counts_that_do_not_cover_the_batch_confirm_nothing_and_fail_the_third_time() {
    let server = serve(Mode::UnderAccounted, &[]).await;
    let dir = tempfile::tempdir().unwrap();
    manifest(
        dir.path(),
        &["a@example.com", "b@example.com", "c@example.com"],
        &[],
    );
    let store = Arc::new(Store::in_memory().unwrap());
    for pass_no in 1..=3 {
        let pass = sync_pass(&server, &store, dir.path(), Strategy::Assert).await;
        let o = &pass.report.outcomes[0];
        assert_eq!(
            o.result,
            ListResult::PartiallyFailed,
            "pass {pass_no}: {o:?}"
        );
        assert!(!confirmed(&store, ContactKind::Email, "a@example.com"));
        let p = &store.policies().unwrap()[0];
        assert_eq!(p.condition.reason, "PartiallyFailed");
        if pass_no < 3 {
            assert_eq!(o.unaccounted, 3, "pass {pass_no}");
            assert!(
                p.condition.message.contains("not accounted for"),
                "{}",
                p.condition.message
            );
            // Pending, asserted again: not reported as failing yet.
            assert_eq!(store.lists(10).unwrap()[0].failed, 0);
        }
    }
    let error = store
        .contact_error(LIST, ContactKind::Email, "b@example.com")
        .unwrap()
        .expect("failed after three unaccounted answers");
    assert!(
        error.contains("did not account for this contact 3 times"),
        "{error}"
    );
    assert_eq!(server.state.lock().unwrap().removes.len(), 3);
}

#[tokio::test]
async fn counts_beyond_the_batch_are_clamped_never_stored_as_sent() {
    let server = serve(
        Mode::OverAccounted,
        &[("c1", "a@example.com"), ("c2", "b@example.com")],
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    manifest(
        dir.path(),
        &["a@example.com", "b@example.com", "c@example.com"],
        &[],
    );
    let (store, pass) = run(&server, dir.path(), Strategy::Assert).await;
    let o = &pass.report.outcomes[0];
    assert_eq!(o.result, ListResult::Converged);
    assert_eq!(o.removed + o.not_in_list, 3, "{o:?}");
    let p = &store.policies().unwrap()[0];
    assert!(p.counts.removed <= 3, "{:?}", p.counts);
    assert!(confirmed(&store, ContactKind::Email, "c@example.com"));
}

/// Panics at the first batch of one list: a bug anywhere in a reconcile.
struct PanicOn(&'static str);

impl listwarden::reconcile::Progress for PanicOn {
    fn batch_done(&self, list: &listwarden::contact::ListKey, _contacts: usize) {
        if list.as_str() == self.0 {
            panic!("a bug in the reconcile of {list}");
        }
    }
}

#[tokio::test]
async fn a_panic_in_one_list_fails_that_list_and_the_others_converge() {
    let server = serve(Mode::MembersWithoutId, &[("c1", "m1@example.com")]).await;
    let dir = tempfile::tempdir().unwrap();
    for (name, list) in [("on-l1", "L1"), ("on-l2", "L2")] {
        write(
            &dir.path().join(format!("{name}.yaml")),
            &policy(name, list, &["m1@example.com"]),
        );
    }
    let store = Arc::new(Store::in_memory().unwrap());
    let options = plan_options(500, Strategy::Assert);
    let (manifests, plan) = reconcile::prepare(&store, dir.path(), options).unwrap();
    let ctx = reconcile::Context {
        progress: Arc::new(PanicOn("L1")),
        ..reconcile::Context::new(fast_client(&server.url, KEY), store.clone(), 500)
    };
    let report =
        reconcile::sync_all(&ctx, Arc::new(manifests.policies.clone()), plan.lists, 2).await;
    let result = |list: &str| {
        report
            .outcomes
            .iter()
            .find(|o| o.list.as_str() == list)
            .map(|o| o.result.clone())
            .unwrap()
    };
    assert!(
        matches!(result("L1"), ListResult::Failed(m) if m.contains("internal error")),
        "{:?}",
        result("L1")
    );
    assert_eq!(result("L2"), ListResult::Converged);
    assert!(report.has_list_errors(), "apply must not exit 0");
    let reason = |name: &str| {
        store
            .policies()
            .unwrap()
            .into_iter()
            .find(|p| p.name == name)
            .map(|p| p.condition.reason)
            .unwrap()
    };
    assert_eq!(reason("on-l1"), "ApiError");
    assert_eq!(reason("on-l2"), "Converged");
}

#[tokio::test]
async fn an_answer_without_counts_never_confirms_by_absence() {
    let members = [("c1", "m1@example.com")];
    let server = serve(Mode::NullCounts, &members).await;
    let dir = tempfile::tempdir().unwrap();
    manifest(dir.path(), &["m1@example.com", "x1@example.com"], &[]);
    // Observing: a page whose total is null is no answer; nothing is confirmed by it.
    let (store, pass) = run(&server, dir.path(), Strategy::Observe).await;
    let result = &pass.report.outcomes[0].result;
    assert!(
        matches!(result, ListResult::Failed(m) if m.contains("total")),
        "{result:?}"
    );
    assert!(!confirmed(&store, ContactKind::Email, "x1@example.com"));
    assert!(server.state.lock().unwrap().removes.is_empty());
    // `auto` does not cost an observation of a list of unknown size: it asserts, and the
    // remove answers confirm.
    let (store, pass) = run(&server, dir.path(), Strategy::Auto).await;
    let o = &pass.report.outcomes[0];
    assert_eq!(o.strategy.as_deref(), Some("assert"), "{o:?}");
    assert!(confirmed(&store, ContactKind::Email, "x1@example.com"));
    assert!(!server.state.lock().unwrap().removes.is_empty());
}
