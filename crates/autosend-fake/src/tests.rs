//! Behaviour of the fake over real HTTP, with reqwest as the client.
//!
//! Long, on purpose: one test per rule of the contract the fake follows.

use std::time::{Duration, Instant};

use reqwest::Client;
use serde_json::{Value, json};

use super::*;

const KEY: &str = "test-key";
const LIST: &str = "60d5ec49f1b2c72d9c8b4567";
const SEGMENT: &str = "60d5ec49f1b2c72d9c8b9876";

/// Rate limits off: most tests send bursts and must not wait.
fn unlimited() -> FakeConfig {
    FakeConfig {
        rate_limits: Vec::new(),
        ..FakeConfig::default()
    }
}

/// reqwest is built with `rustls-no-provider`: even a plain-HTTP client needs a crypto
/// provider installed (the one listwarden ships with, ring). Installing twice is harmless.
fn client() -> Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    Client::new()
}

struct Harness {
    server: RunningFake,
    client: Client,
}

struct Answer {
    status: u16,
    headers: reqwest::header::HeaderMap,
    body: Value,
}

impl Harness {
    async fn start(config: FakeConfig) -> Self {
        let fake = FakeAutoSend::new(config);
        fake.add_list(LIST, "Newsletter", ListKind::List);
        fake.add_list(SEGMENT, "Active users", ListKind::Segment);
        let server = fake.serve_local().await.expect("bind");
        Harness {
            server,
            client: client(),
        }
    }

    fn fake(&self) -> &FakeAutoSend {
        self.server.handle()
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.server.base_url())
    }

    async fn send(&self, req: reqwest::RequestBuilder) -> Answer {
        let res = req.send().await.expect("transport");
        let status = res.status().as_u16();
        let headers = res.headers().clone();
        let text = res.text().await.expect("body");
        let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
        Answer {
            status,
            headers,
            body,
        }
    }

    async fn post(&self, path: &str, body: Value) -> Answer {
        self.send(
            self.client
                .post(self.url(path))
                .bearer_auth(KEY)
                .json(&body),
        )
        .await
    }

    async fn get(&self, path: &str) -> Answer {
        self.send(self.client.get(self.url(path)).bearer_auth(KEY))
            .await
    }

    async fn remove(&self, list: &str, body: Value) -> Answer {
        self.post(&format!("/contact-lists/{list}/contacts/remove"), body)
            .await
    }

    async fn search(&self, body: Value) -> Answer {
        self.post("/contact-lists/contacts/search", body).await
    }
}

fn assert_error(answer: &Answer, status: u16, code: &str) {
    assert_eq!(answer.status, status, "body: {}", answer.body);
    assert_eq!(answer.body["success"], false, "body: {}", answer.body);
    assert_eq!(answer.body["error"]["code"], code, "body: {}", answer.body);
    assert!(answer.body["error"]["message"].is_string());
}

fn detail_fields(answer: &Answer) -> Vec<String> {
    answer.body["error"]["details"]
        .as_array()
        .expect("details")
        .iter()
        .map(|d| {
            assert!(d["message"].is_string());
            d["field"].as_str().unwrap().to_string()
        })
        .collect()
}

fn header(answer: &Answer, name: &str) -> Option<u64> {
    answer
        .headers
        .get(name)
        .map(|v| v.to_str().unwrap().parse().unwrap())
}

fn epoch_secs() -> u64 {
    state::now_ms() / 1000
}

// ---- auth -------------------------------------------------------------------------------------

#[tokio::test]
async fn requests_without_the_configured_bearer_key_are_unauthorized() {
    let h = Harness::start(unlimited()).await;
    let url = h.url(&format!("/contact-lists/{LIST}"));
    for req in [
        h.client.get(&url),
        h.client.get(&url).bearer_auth("wrong-key"),
        h.client.get(&url).header("authorization", KEY),
        h.client.get(&url).basic_auth(KEY, Some("x")),
    ] {
        let a = h.send(req).await;
        assert_error(&a, 401, "UNAUTHORIZED");
    }
    let ok = h
        .send(
            h.client
                .get(&url)
                .bearer_auth(KEY)
                .header("x-project-id", "p1"),
        )
        .await;
    assert_eq!(ok.status, 200);
    // Nothing was applied or counted as an endpoint success.
    assert_eq!(h.fake().counters().count("get_list", 401), 4);
    assert_eq!(h.fake().counters().count("get_list", 200), 1);
}

#[tokio::test]
async fn unauthorized_remove_does_not_remove() {
    let h = Harness::start(unlimited()).await;
    h.fake().add_contacts(LIST, ["a@x.com"]);
    let a = h
        .send(
            h.client
                .post(h.url(&format!("/contact-lists/{LIST}/contacts/remove")))
                .bearer_auth("nope")
                .json(&json!({"emails": ["a@x.com"]})),
        )
        .await;
    assert_error(&a, 401, "UNAUTHORIZED");
    assert!(h.fake().is_member(LIST, "a@x.com"));
}

// ---- remove: validation -------------------------------------------------------------------------

#[tokio::test]
async fn remove_with_both_emails_and_contact_ids_is_rejected() {
    let h = Harness::start(unlimited()).await;
    let ids = h.fake().add_contacts(LIST, ["a@x.com"]);
    let a = h
        .remove(LIST, json!({"emails": ["a@x.com"], "contactIds": ids}))
        .await;
    assert_error(&a, 400, "VALIDATION_FAILED");
    assert!(detail_fields(&a).contains(&"contactIds".to_string()));
    assert!(h.fake().is_member(LIST, "a@x.com"));
}

#[tokio::test]
async fn remove_with_neither_field_an_empty_array_or_non_strings_is_rejected() {
    let h = Harness::start(unlimited()).await;
    let cases = [
        (json!({}), "emails"),
        (json!({"emails": []}), "emails"),
        (json!({"contactIds": []}), "contactIds"),
        (json!({"emails": "a@x.com"}), "emails"),
        (json!({"emails": ["a@x.com", 42]}), "emails[1]"),
        (json!({"contactIds": [null]}), "contactIds[0]"),
        (json!(["a@x.com"]), "body"),
    ];
    for (body, field) in cases {
        let a = h.remove(LIST, body.clone()).await;
        assert_error(&a, 400, "VALIDATION_FAILED");
        assert!(
            detail_fields(&a).contains(&field.to_string()),
            "{body}: {}",
            a.body
        );
    }
    // Malformed JSON is a validation failure too, with details.
    let a = h
        .send(
            h.client
                .post(h.url(&format!("/contact-lists/{LIST}/contacts/remove")))
                .bearer_auth(KEY)
                .header("content-type", "application/json")
                .body("{\"emails\": [\"a@x.com\""),
        )
        .await;
    assert_error(&a, 400, "VALIDATION_FAILED");
    assert_eq!(detail_fields(&a), ["body"]);
    // Invalid bodies are not logged as batches.
    assert!(h.fake().counters().remove_batches.is_empty());
}

// ---- remove: semantics --------------------------------------------------------------------------

#[tokio::test]
async fn remove_counts_removed_and_not_in_list_and_really_removes() {
    let h = Harness::start(unlimited()).await;
    h.fake()
        .add_contacts(LIST, ["a@x.com", "b@x.com", "c@x.com"]);
    h.fake()
        .add_contacts(GLOBAL_CONTACT_LIST, ["elsewhere@x.com"]);
    let a = h
        .remove(
            LIST,
            json!({"emails": ["a@x.com", "b@x.com", "elsewhere@x.com", "unknown@x.com"]}),
        )
        .await;
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(
        a.body,
        json!({"success": true, "data": {"removed": 2, "notInList": 2, "errors": []}})
    );
    assert!(!h.fake().is_member(LIST, "a@x.com"));
    assert!(!h.fake().is_member(LIST, "b@x.com"));
    assert!(h.fake().is_member(LIST, "c@x.com"));
    assert_eq!(h.fake().member_count(LIST), 1);
    // Removing from a list does not delete the contact.
    assert!(h.fake().is_member(GLOBAL_CONTACT_LIST, "a@x.com"));

    // Idempotent: a second call reports the same contacts as notInList.
    let again = h
        .remove(LIST, json!({"emails": ["a@x.com", "b@x.com"]}))
        .await;
    assert_eq!(
        again.body["data"],
        json!({"removed": 0, "notInList": 2, "errors": []})
    );
}

#[tokio::test]
async fn remove_matches_emails_case_insensitively_and_counts_duplicates_once() {
    let h = Harness::start(unlimited()).await;
    h.fake()
        .add_contacts(LIST, ["Jane@Example.com", "john@example.com"]);
    assert!(h.fake().is_member(LIST, "jane@example.com"));
    let a = h
        .remove(
            LIST,
            json!({"emails": [" JANE@example.COM ", "jane@example.com", "JOHN@EXAMPLE.COM", "nobody@x.com", "NOBODY@x.com"]}),
        )
        .await;
    assert_eq!(
        a.body["data"],
        json!({"removed": 2, "notInList": 1, "errors": []})
    );
    assert_eq!(h.fake().member_count(LIST), 0);
}

#[tokio::test]
async fn remove_by_contact_ids_removes_members_and_counts_unknown_ids_as_not_in_list() {
    let h = Harness::start(unlimited()).await;
    let ids = h.fake().add_contacts(LIST, ["a@x.com", "b@x.com"]);
    assert!(
        ids.iter()
            .all(|id| id.len() == 24 && id.chars().all(|c| c.is_ascii_hexdigit()))
    );
    assert_eq!(
        h.fake().contact_id("A@x.com").as_deref(),
        Some(ids[0].as_str())
    );
    let a = h
        .remove(
            LIST,
            json!({"contactIds": [ids[0], ids[0], "ffffffffffffffffffffffff"]}),
        )
        .await;
    assert_eq!(
        a.body["data"],
        json!({"removed": 1, "notInList": 1, "errors": []})
    );
    assert!(!h.fake().is_member(LIST, &ids[0]));
    assert!(h.fake().is_member(LIST, &ids[1]));
    let log = h.fake().counters().remove_batches;
    assert_eq!(log.len(), 1);
    assert_eq!(log[0].kind, BatchKind::ContactIds);
    assert_eq!(log[0].entries.len(), 3);
    assert_eq!(log[0].list_id, LIST);
    assert_eq!(log[0].status, 200);
}

#[tokio::test]
async fn remove_from_global_contact_list_is_refused_pointing_at_delete_contact() {
    let h = Harness::start(unlimited()).await;
    h.fake().add_contacts(LIST, ["a@x.com"]);
    let a = h
        .remove(GLOBAL_CONTACT_LIST, json!({"emails": ["a@x.com"]}))
        .await;
    assert_error(&a, 400, "VALIDATION_FAILED");
    let message = a.body["error"]["message"].as_str().unwrap();
    assert!(message.contains("Delete Contact"), "{message}");
    assert!(h.fake().is_member(GLOBAL_CONTACT_LIST, "a@x.com"));
}

#[tokio::test]
async fn remove_from_segment_is_refused() {
    let h = Harness::start(unlimited()).await;
    h.fake().add_contacts(SEGMENT, ["a@x.com"]);
    let a = h.remove(SEGMENT, json!({"emails": ["a@x.com"]})).await;
    assert_error(&a, 400, "VALIDATION_FAILED");
    assert!(
        a.body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("segment")
    );
    assert!(h.fake().is_member(SEGMENT, "a@x.com"));
}

#[tokio::test]
async fn unknown_list_is_not_found_for_remove_get_and_search() {
    let h = Harness::start(unlimited()).await;
    let missing = "000000000000000000000000";
    assert_error(
        &h.remove(missing, json!({"emails": ["a@x.com"]})).await,
        404,
        "NOT_FOUND",
    );
    assert_error(
        &h.get(&format!("/contact-lists/{missing}")).await,
        404,
        "NOT_FOUND",
    );
    assert_error(
        &h.search(json!({"contactListId": missing})).await,
        404,
        "NOT_FOUND",
    );
    assert_error(&h.get("/no/such/route").await, 404, "NOT_FOUND");
}

// ---- lists --------------------------------------------------------------------------------------

#[tokio::test]
async fn get_list_returns_the_documented_list_object() {
    let h = Harness::start(unlimited()).await;
    h.fake().add_contacts(LIST, ["a@x.com", "b@x.com"]);
    h.fake().add_contacts(SEGMENT, ["c@x.com"]);
    let a = h.get(&format!("/contact-lists/{LIST}")).await;
    assert_eq!(a.status, 200);
    assert_eq!(a.body["success"], true);
    let d = &a.body["data"];
    assert_eq!(d["id"], LIST);
    assert_eq!(d["name"], "Newsletter");
    assert_eq!(d["type"], "list");
    assert_eq!(d["contactCount"], 2);
    assert!(d["description"].is_string());
    assert!(d["createdAt"].as_str().unwrap().ends_with('Z'));
    assert!(d["updatedAt"].is_string());
    assert!(d.get("filterCriteria").is_none());

    let seg = h.get(&format!("/contact-lists/{SEGMENT}")).await;
    assert_eq!(seg.body["data"]["type"], "segment");
    assert!(seg.body["data"]["filterCriteria"].is_object());

    let global = h.get("/contact-lists/GLOBAL_CONTACT_LIST").await;
    assert_eq!(global.body["data"]["id"], GLOBAL_CONTACT_LIST);
    assert_eq!(global.body["data"]["contactCount"], 3);
}

#[tokio::test]
async fn list_lists_puts_global_first_and_filters_by_type() {
    let h = Harness::start(unlimited()).await;
    h.fake().add_list("second", "Second", ListKind::List);
    let ids = |a: &Answer| -> Vec<String> {
        a.body["data"]["lists"]
            .as_array()
            .unwrap()
            .iter()
            .map(|l| l["id"].as_str().unwrap().to_string())
            .collect()
    };
    let all = h.get("/contact-lists").await;
    assert_eq!(ids(&all), [GLOBAL_CONTACT_LIST, LIST, SEGMENT, "second"]);
    let lists = h.get("/contact-lists?type=list").await;
    assert_eq!(ids(&lists), [GLOBAL_CONTACT_LIST, LIST, "second"]);
    let segments = h.get("/contact-lists?type=segment").await;
    assert_eq!(ids(&segments), [GLOBAL_CONTACT_LIST, SEGMENT]);
    assert_error(
        &h.get("/contact-lists?type=bogus").await,
        400,
        "VALIDATION_FAILED",
    );
}

// ---- search -------------------------------------------------------------------------------------

#[tokio::test]
async fn search_pages_members_in_insertion_order_with_total_and_pages() {
    let h = Harness::start(unlimited()).await;
    let emails: Vec<String> = (0..45).map(|i| format!("m{i}@x.com")).collect();
    h.fake().add_contacts(LIST, &emails);

    let first = h.search(json!({"contactListId": LIST})).await;
    assert_eq!(first.status, 200);
    assert_eq!(
        first.body["data"]["pagination"],
        json!({"page": 1, "limit": 20, "total": 45, "pages": 3})
    );
    let c = &first.body["data"]["contacts"][0];
    assert_eq!(c["email"], "m0@x.com");
    for field in ["id", "firstName", "lastName", "createdAt", "updatedAt"] {
        assert!(c[field].is_string(), "{field}");
    }

    let mut seen = Vec::new();
    for page in 1..=3 {
        let a = h
            .search(json!({"contactListId": LIST, "page": page, "limit": 20}))
            .await;
        for c in a.body["data"]["contacts"].as_array().unwrap() {
            seen.push(c["email"].as_str().unwrap().to_string());
        }
    }
    assert_eq!(seen, emails);

    let beyond = h
        .search(json!({"contactListId": LIST, "page": 9, "limit": 20}))
        .await;
    assert_eq!(beyond.status, 200);
    assert_eq!(beyond.body["data"]["contacts"], json!([]));
    assert_eq!(
        beyond.body["data"]["pagination"],
        json!({"page": 9, "limit": 20, "total": 45, "pages": 3})
    );

    let full = h.search(json!({"contactListId": LIST, "limit": 100})).await;
    assert_eq!(full.body["data"]["contacts"].as_array().unwrap().len(), 45);
    assert_eq!(full.body["data"]["pagination"]["pages"], 1);
}

#[tokio::test]
async fn search_rejects_limit_out_of_range_and_page_below_one() {
    let h = Harness::start(unlimited()).await;
    for (body, field) in [
        (json!({"contactListId": LIST, "limit": 0}), "limit"),
        (json!({"contactListId": LIST, "limit": 101}), "limit"),
        (json!({"contactListId": LIST, "limit": "10"}), "limit"),
        (json!({"contactListId": LIST, "page": 0}), "page"),
        (json!({"contactListId": LIST, "page": -1}), "page"),
        (json!({"page": 1}), "contactListId"),
    ] {
        let a = h.search(body.clone()).await;
        assert_error(&a, 400, "VALIDATION_FAILED");
        assert_eq!(detail_fields(&a), [field], "{body}");
    }
}

#[tokio::test]
async fn search_pages_shift_after_removal_like_offset_pagination() {
    let h = Harness::start(unlimited()).await;
    let emails: Vec<String> = (0..10).map(|i| format!("m{i}@x.com")).collect();
    h.fake().add_contacts(LIST, &emails);
    let page = |a: &Answer| -> Vec<String> {
        a.body["data"]["contacts"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["email"].as_str().unwrap().to_string())
            .collect()
    };
    let p1 = h
        .search(json!({"contactListId": LIST, "page": 1, "limit": 4}))
        .await;
    assert_eq!(page(&p1), ["m0@x.com", "m1@x.com", "m2@x.com", "m3@x.com"]);
    // Remove what page 1 showed: page 2 now starts 4 members later than it would have.
    h.remove(LIST, json!({"emails": page(&p1)})).await;
    let p2 = h
        .search(json!({"contactListId": LIST, "page": 2, "limit": 4}))
        .await;
    assert_eq!(page(&p2), ["m8@x.com", "m9@x.com"]);
    assert_eq!(
        p2.body["data"]["pagination"],
        json!({"page": 2, "limit": 4, "total": 6, "pages": 2})
    );
    // A re-added contact goes to the end of the insertion order.
    h.fake().add_contacts(LIST, ["m0@x.com"]);
    let p2 = h
        .search(json!({"contactListId": LIST, "page": 2, "limit": 4}))
        .await;
    assert_eq!(page(&p2), ["m8@x.com", "m9@x.com", "m0@x.com"]);
}

#[tokio::test]
async fn search_filters_by_partial_case_insensitive_email() {
    let h = Harness::start(unlimited()).await;
    h.fake().add_contacts(
        LIST,
        ["jane@example.com", "janet@example.com", "bob@example.com"],
    );
    let a = h
        .search(json!({"contactListId": LIST, "email": "JANE", "limit": 1, "page": 2}))
        .await;
    assert_eq!(a.body["data"]["contacts"][0]["email"], "janet@example.com");
    assert_eq!(
        a.body["data"]["pagination"],
        json!({"page": 2, "limit": 1, "total": 2, "pages": 2})
    );
    let global = h
        .search(json!({"contactListId": GLOBAL_CONTACT_LIST, "email": "bob"}))
        .await;
    assert_eq!(global.body["data"]["pagination"]["total"], 1);
}

// ---- bulk add -----------------------------------------------------------------------------------

#[tokio::test]
async fn bulk_add_creates_unknown_contacts_and_adds_them() {
    let h = Harness::start(unlimited()).await;
    h.fake().add_contacts(LIST, ["in@x.com"]);
    h.fake().add_contacts(GLOBAL_CONTACT_LIST, ["exists@x.com"]);
    let a = h
        .post(
            "/contact-lists/contacts/bulk-add",
            json!({"contactListId": LIST, "emails": ["IN@x.com", "exists@x.com", "new@x.com", "not-an-email"]}),
        )
        .await;
    assert_eq!(a.status, 200, "{}", a.body);
    let d = &a.body["data"];
    assert_eq!(d["added"], 1);
    assert_eq!(d["created"], 1);
    assert_eq!(d["alreadyInList"], 1);
    assert_eq!(d["errors"].as_array().unwrap().len(), 1);
    assert_eq!(d["errors"][0]["email"], "not-an-email");
    assert_eq!(d["totalContactsInList"], 3);
    assert!(h.fake().is_member(LIST, "new@x.com"));
    assert_eq!(
        h.fake().members(LIST),
        ["in@x.com", "exists@x.com", "new@x.com"]
    );

    let id = h.fake().contact_id("new@x.com").unwrap();
    h.remove(LIST, json!({"emails": ["new@x.com"]})).await;
    let by_id = h
        .post(
            "/contact-lists/contacts/bulk-add",
            json!({"contactListId": LIST, "contactIds": [id, "nope"]}),
        )
        .await;
    assert_eq!(by_id.body["data"]["added"], 1);
    assert_eq!(by_id.body["data"]["errors"][0]["contactId"], "nope");

    let too_many: Vec<String> = (0..501).map(|i| format!("b{i}@x.com")).collect();
    let a = h
        .post(
            "/contact-lists/contacts/bulk-add",
            json!({"contactListId": LIST, "emails": too_many}),
        )
        .await;
    assert_error(&a, 400, "VALIDATION_FAILED");
    let both = h
        .post(
            "/contact-lists/contacts/bulk-add",
            json!({"contactListId": LIST, "emails": ["a@x.com"], "contactIds": ["x"]}),
        )
        .await;
    assert_error(&both, 400, "VALIDATION_FAILED");
}

// ---- rate limiting ------------------------------------------------------------------------------

/// Sends requests until one is rate limited (a window boundary may reset the count once).
async fn until_rate_limited(h: &Harness) -> (Vec<Answer>, Answer) {
    let mut ok = Vec::new();
    for _ in 0..40 {
        let a = h.get("/contact-lists").await;
        if a.status == 429 {
            return (ok, a);
        }
        assert_eq!(a.status, 200);
        ok.push(a);
    }
    panic!("never rate limited");
}

#[tokio::test]
async fn rate_limit_answers_429_with_retry_after_seconds_and_headers() {
    let config = FakeConfig {
        rate_limits: vec![RateLimit::per_second(5), RateLimit::per_hour(1000)],
        ..FakeConfig::default()
    };
    let h = Harness::start(config).await;
    let (ok, limited) = until_rate_limited(&h).await;
    let before = epoch_secs();

    // Successes carry the headers of the most constraining window (the per-second one).
    let last_ok = ok.last().unwrap();
    assert_eq!(header(last_ok, "x-ratelimit-limit"), Some(5));
    assert_eq!(header(last_ok, "x-ratelimit-remaining"), Some(0));

    assert_error(&limited, 429, "RATE_LIMIT_EXCEEDED");
    assert_eq!(limited.body["error"]["retryAfter"], 1);
    assert_eq!(header(&limited, "x-ratelimit-limit"), Some(5));
    assert_eq!(header(&limited, "x-ratelimit-remaining"), Some(0));
    let reset = header(&limited, "x-ratelimit-reset").unwrap();
    assert!(
        reset == before || reset == before + 1,
        "reset {reset}, now {before}"
    );
    assert!(limited.headers.get("retry-after").is_none());
    assert_eq!(h.fake().counters().rate_limited, 1);
    assert_eq!(h.fake().counters().count("list_lists", 429), 1);

    // The next epoch second is a new window.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let a = h.get("/contact-lists").await;
    assert_eq!(a.status, 200);
    assert_eq!(header(&a, "x-ratelimit-remaining"), Some(4));
}

#[tokio::test]
async fn rate_limit_retry_after_can_be_an_epoch_timestamp_and_a_header() {
    let config = FakeConfig {
        rate_limits: vec![RateLimit::per_second(5)],
        faults: Faults {
            retry_after_epoch: true,
            retry_after_header: true,
            ..Faults::default()
        },
        ..FakeConfig::default()
    };
    let h = Harness::start(config).await;
    let (_, limited) = until_rate_limited(&h).await;
    assert_error(&limited, 429, "RATE_LIMIT_EXCEEDED");
    let at = limited.body["error"]["retryAfter"].as_u64().unwrap();
    assert!(at > 1_000_000_000);
    assert_eq!(Some(at), header(&limited, "x-ratelimit-reset"));
    assert_eq!(header(&limited, "retry-after"), Some(1));
}

#[tokio::test]
async fn rate_limits_can_be_changed_and_disabled_at_run_time() {
    let h = Harness::start(unlimited()).await;
    let a = h.get("/contact-lists").await;
    assert!(a.headers.get("x-ratelimit-limit").is_none());
    h.fake().set_rate_limits(parse_rate_limits("3/m").unwrap());
    let a = h.get("/contact-lists").await;
    assert_eq!(header(&a, "x-ratelimit-limit"), Some(3));
    assert_eq!(header(&a, "x-ratelimit-remaining"), Some(2));
    assert_eq!(header(&a, "x-ratelimit-reset").unwrap() % 60, 0);
}

// ---- injected faults ----------------------------------------------------------------------------

#[tokio::test]
async fn fail_next_answers_the_given_status_then_recovers() {
    let h = Harness::start(unlimited()).await;
    h.fake().add_contacts(LIST, ["a@x.com"]);
    h.fake().update_faults(|f| f.fail_next = Some((503, 2)));
    for _ in 0..2 {
        let a = h.remove(LIST, json!({"emails": ["a@x.com"]})).await;
        assert_error(&a, 503, "INTERNAL_SERVER_ERROR");
        assert!(h.fake().is_member(LIST, "a@x.com"), "not applied");
    }
    let a = h.remove(LIST, json!({"emails": ["a@x.com"]})).await;
    assert_eq!(a.body["data"]["removed"], 1);
    assert_eq!(h.fake().faults().fail_next, None);

    for (status, code) in [
        (401, "UNAUTHORIZED"),
        (402, "PLAN_UPGRADE_REQUIRED"),
        (403, "INSUFFICIENT_PERMISSIONS"),
        (500, "INTERNAL_SERVER_ERROR"),
    ] {
        h.fake().update_faults(|f| f.fail_next = Some((status, 1)));
        assert_error(&h.get("/contact-lists").await, status, code);
    }
    h.fake().update_faults(|f| f.fail_next = Some((429, 1)));
    let a = h.get("/contact-lists").await;
    assert_error(&a, 429, "RATE_LIMIT_EXCEEDED");
    assert_eq!(a.body["error"]["retryAfter"], 1);
    assert_eq!(h.get("/contact-lists").await.status, 200);

    let c = h.fake().counters();
    assert_eq!(c.count("remove", 503), 2);
    assert_eq!(c.count("list_lists", 402), 1);
    // Batches answered by an injected status never reached the remove logic.
    assert_eq!(c.remove_batches.len(), 1);
}

#[tokio::test]
async fn error_rate_answers_the_configured_status_without_applying() {
    let h = Harness::start(unlimited()).await;
    h.fake().add_contacts(LIST, ["a@x.com"]);
    h.fake().update_faults(|f| {
        f.error_rate = 1.0;
        f.error_status = 503;
    });
    let a = h.remove(LIST, json!({"emails": ["a@x.com"]})).await;
    assert_error(&a, 503, "INTERNAL_SERVER_ERROR");
    assert!(h.fake().is_member(LIST, "a@x.com"));
    h.fake().update_faults(|f| f.error_rate = 0.0);
    let a = h.remove(LIST, json!({"emails": ["a@x.com"]})).await;
    assert_eq!(a.body["data"]["removed"], 1);
}

#[tokio::test]
async fn remove_larger_than_max_batch_is_rejected_whole() {
    let h = Harness::start(unlimited()).await;
    let emails: Vec<String> = (0..4).map(|i| format!("m{i}@x.com")).collect();
    h.fake().add_contacts(LIST, &emails);
    h.fake().update_faults(|f| f.max_batch = Some(3));
    let a = h.remove(LIST, json!({"emails": emails})).await;
    assert_error(&a, 400, "VALIDATION_FAILED");
    assert!(
        a.body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("Too many contacts")
    );
    assert_eq!(detail_fields(&a), ["emails"]);
    assert_eq!(h.fake().member_count(LIST), 4);
    let a = h.remove(LIST, json!({"emails": &emails[..3]})).await;
    assert_eq!(a.body["data"]["removed"], 3);
    let c = h.fake().counters();
    assert_eq!(c.batches_rejected, 1);
    assert_eq!(c.remove_batches[0].status, 400);
    assert_eq!(c.remove_batches[0].entries.len(), 4);
}

#[tokio::test]
async fn poisoned_entry_fails_the_whole_batch_naming_the_field() {
    let h = Harness::start(unlimited()).await;
    let ids = h
        .fake()
        .add_contacts(LIST, ["a@x.com", "bad@x.com", "c@x.com"]);
    h.fake()
        .update_faults(|f| f.poisoned = ["BAD@x.com".to_string()].into());
    let a = h
        .remove(LIST, json!({"emails": ["a@x.com", "bad@x.com", "c@x.com"]}))
        .await;
    assert_error(&a, 400, "VALIDATION_FAILED");
    assert_eq!(detail_fields(&a), ["emails[1]"]);
    assert_eq!(h.fake().member_count(LIST), 3);
    // The same contact sent by id poisons the batch too.
    let a = h.remove(LIST, json!({"contactIds": [ids[1]]})).await;
    assert_eq!(detail_fields(&a), ["contactIds[0]"]);
    // Without it, the rest goes through.
    let a = h
        .remove(LIST, json!({"emails": ["a@x.com", "c@x.com"]}))
        .await;
    assert_eq!(a.body["data"]["removed"], 2);
    assert_eq!(h.fake().counters().batches_rejected, 2);
}

#[tokio::test]
async fn contact_errors_land_in_errors_and_are_not_removed() {
    let h = Harness::start(unlimited()).await;
    let ids = h.fake().add_contacts(LIST, ["a@x.com", "stuck@x.com"]);
    h.fake()
        .update_faults(|f| f.contact_errors = ["stuck@x.com".to_string()].into());
    let a = h
        .remove(LIST, json!({"emails": ["a@x.com", "Stuck@x.com"]}))
        .await;
    assert_eq!(a.status, 200);
    assert_eq!(a.body["data"]["removed"], 1);
    assert_eq!(a.body["data"]["notInList"], 0);
    let errors = a.body["data"]["errors"].as_array().unwrap();
    assert_eq!(errors.len(), 1);
    assert_eq!(errors[0]["email"], "stuck@x.com");
    assert!(errors[0]["error"].is_string());
    assert!(h.fake().is_member(LIST, "stuck@x.com"));

    let a = h.remove(LIST, json!({"contactIds": [ids[1]]})).await;
    assert_eq!(a.body["data"]["errors"][0]["contactId"], ids[1].as_str());
    assert_eq!(h.fake().counters().contacts_errored, 2);
}

#[tokio::test]
async fn dropped_connection_is_a_transport_error_and_is_not_applied() {
    let h = Harness::start(unlimited()).await;
    h.fake().add_contacts(LIST, ["a@x.com"]);
    // Warm up a pooled keep-alive connection: the drop must also work on a reused one.
    assert_eq!(h.get("/contact-lists").await.status, 200);
    h.fake().update_faults(|f| f.drop_next = 1);
    let err = h
        .client
        .post(h.url(&format!("/contact-lists/{LIST}/contacts/remove")))
        .bearer_auth(KEY)
        .json(&json!({"emails": ["a@x.com"]}))
        .send()
        .await
        .expect_err("a dropped connection is not an HTTP answer");
    assert!(err.status().is_none());
    assert!(h.fake().is_member(LIST, "a@x.com"));
    // The next request is served normally.
    let a = h.remove(LIST, json!({"emails": ["a@x.com"]})).await;
    assert_eq!(a.body["data"]["removed"], 1);
    let c = h.fake().counters();
    assert_eq!(c.dropped_connections, 1);
    assert_eq!(c.remove_requests, 2);
    assert_eq!(c.count("remove", 200), 1);

    h.fake().update_faults(|f| f.drop_rate = 1.0);
    for _ in 0..3 {
        assert!(
            h.client
                .get(h.url("/contact-lists"))
                .bearer_auth(KEY)
                .send()
                .await
                .is_err()
        );
    }
    assert_eq!(h.fake().counters().dropped_connections, 4);
}

#[tokio::test]
async fn dropped_connection_is_a_transport_error_through_an_embedded_router_too() {
    let fake = FakeAutoSend::new(unlimited());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/v1/contact-lists", listener.local_addr().unwrap());
    let server = tokio::spawn(axum::serve(listener, fake.router()).into_future());
    let client = client();
    fake.update_faults(|f| f.drop_next = 1);
    let err = client.get(&url).bearer_auth(KEY).send().await.unwrap_err();
    assert!(err.status().is_none());
    // The server survives: the next request is answered.
    let ok = client.get(&url).bearer_auth(KEY).send().await.unwrap();
    assert_eq!(ok.status(), 200);
    assert_eq!(fake.counters().dropped_connections, 1);
    server.abort();
}

#[tokio::test]
async fn latency_delays_every_answer() {
    let h = Harness::start(unlimited()).await;
    h.fake()
        .update_faults(|f| f.latency = Duration::from_millis(150));
    let start = Instant::now();
    assert_eq!(h.get("/contact-lists").await.status, 200);
    assert!(start.elapsed() >= Duration::from_millis(150));
}

// ---- counters, seed, scale ----------------------------------------------------------------------

#[tokio::test]
async fn counters_track_requests_statuses_outcomes_and_reset() {
    let h = Harness::start(unlimited()).await;
    h.fake().add_contacts(LIST, ["a@x.com", "b@x.com"]);
    h.remove(LIST, json!({"emails": ["a@x.com", "zzz@x.com"]}))
        .await;
    h.remove(LIST, json!({})).await;
    h.get(&format!("/contact-lists/{LIST}")).await;
    h.search(json!({"contactListId": LIST})).await;
    h.post(
        "/contact-lists/contacts/bulk-add",
        json!({"contactListId": LIST, "emails": ["n@x.com"]}),
    )
    .await;
    let c = h.fake().counters();
    assert_eq!(c.requests, 5);
    assert_eq!(c.remove_requests, 2);
    assert_eq!(c.count("remove", 200), 1);
    assert_eq!(c.count("remove", 400), 1);
    assert_eq!(c.endpoint_total("remove"), 2);
    assert_eq!(c.count("get_list", 200), 1);
    assert_eq!(c.count("search", 200), 1);
    assert_eq!(c.count("bulk_add", 200), 1);
    assert_eq!(c.contacts_removed, 1);
    assert_eq!(c.contacts_not_in_list, 1);
    assert_eq!(c.contacts_errored, 0);
    assert_eq!(
        c.remove_batches,
        [RemoveBatch {
            list_id: LIST.to_string(),
            kind: BatchKind::Emails,
            entries: vec!["a@x.com".into(), "zzz@x.com".into()],
            status: 200,
        }]
    );
    h.fake().reset_counters();
    let c = h.fake().counters();
    assert_eq!(c.requests, 0);
    assert!(c.by_endpoint_status.is_empty() && c.remove_batches.is_empty());
}

#[test]
fn seed_from_json_creates_lists_segments_and_generated_members() {
    let fake = FakeAutoSend::new(unlimited());
    fake.seed_from_json(
        r#"{"lists": [
            {"id": "l1", "name": "One", "type": "list", "contacts": ["Jane@X.com"],
             "generate": {"count": 3, "prefix": "member", "domain": "example.com"}},
            {"id": "s1", "name": "Seg", "type": "segment", "contacts": ["jane@x.com"]},
            {"id": "l2"}
        ]}"#,
    )
    .unwrap();
    assert_eq!(
        fake.members("l1"),
        [
            "jane@x.com",
            "member0@example.com",
            "member1@example.com",
            "member2@example.com"
        ]
    );
    assert!(fake.is_member("s1", "JANE@x.com"));
    assert_eq!(fake.member_count("l2"), 0);
    assert_eq!(fake.member_count(GLOBAL_CONTACT_LIST), 4);
    assert!(
        fake.seed_from_json(r#"{"lists": [{"id": "x", "type": "bogus"}]}"#)
            .is_err()
    );
    assert!(fake.seed_from_json("not json").is_err());
}

#[tokio::test]
async fn seeded_contacts_keep_the_ids_the_seed_gives_them() {
    let h = Harness::start(unlimited()).await;
    let fake = h.fake();
    fake.seed_from_json(
        r#"{"lists": [{"id": "l1", "contacts": [
            "plain@example.com",
            {"email": "Held@Example.com", "id": "60d5ec49f1b2c72d9c8b1111"}
        ]}]}"#,
    )
    .unwrap();
    assert_eq!(
        fake.contact_id("held@example.com").as_deref(),
        Some("60d5ec49f1b2c72d9c8b1111")
    );
    let a = h
        .remove("l1", json!({ "contactIds": ["60d5ec49f1b2c72d9c8b1111"] }))
        .await;
    assert_eq!(a.body["data"]["removed"], 1);
    assert_eq!(fake.members("l1"), ["plain@example.com"]);

    let taken = fake.seed_from_json(
        r#"{"lists": [{"id": "l2", "contacts": [{"email": "other@example.com", "id": "60d5ec49f1b2c72d9c8b1111"}]}]}"#,
    );
    assert!(
        taken
            .unwrap_err()
            .contains("id 60d5ec49f1b2c72d9c8b1111 is already the contact held@example.com's")
    );
    let renamed = fake.seed_from_json(
        r#"{"lists": [{"id": "l2", "contacts": [{"email": "plain@example.com", "id": "abc"}]}]}"#,
    );
    assert!(renamed.unwrap_err().contains("already has the id"));
    assert!(
        fake.seed_from_json(
            r#"{"lists": [{"id": "l3", "contacts": [{"email": "x@example.com"}]}]}"#
        )
        .is_err(),
        "a contact object needs its id"
    );
}

#[tokio::test]
async fn large_list_removes_and_deep_pages_stay_fast() {
    let h = Harness::start(unlimited()).await;
    let fake = h.fake();
    fake.seed_from_json(r#"{"lists": [{"id": "big", "generate": {"count": 120000}}]}"#)
        .unwrap();
    let start = Instant::now();
    // 100,000 removals in batches of 500, plus deep pages: must not be O(list size) per call.
    for b in 0..200 {
        let emails: Vec<String> = (b * 500..(b + 1) * 500)
            .map(|i| format!("member{i}@example.com"))
            .collect();
        let a = h.remove("big", json!({ "emails": emails })).await;
        assert_eq!(a.body["data"]["removed"], 500);
    }
    assert_eq!(fake.member_count("big"), 20_000);
    let a = h
        .search(json!({"contactListId": "big", "page": 200, "limit": 100}))
        .await;
    assert_eq!(
        a.body["data"]["contacts"][0]["email"],
        "member119900@example.com"
    );
    assert_eq!(a.body["data"]["pagination"]["pages"], 200);
    assert!(
        start.elapsed() < Duration::from_secs(20),
        "{:?}",
        start.elapsed()
    );
}

#[tokio::test]
async fn shutdown_stops_the_server() {
    let h = Harness::start(unlimited()).await;
    let url = h.url("/contact-lists");
    assert_eq!(h.get("/contact-lists").await.status, 200);
    let Harness { server, client } = h;
    server.shutdown().await;
    assert!(client.get(&url).bearer_auth(KEY).send().await.is_err());
}
