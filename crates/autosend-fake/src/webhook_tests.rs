//! Webhook emission against a real receiver (a tiny axum server on 127.0.0.1), checked
//! against the webhook pages of AutoSend's docs.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use serde_json::{Value, json};
use tokio::task::JoinHandle;

use super::*;

const KEY: &str = "test-key";
const SECRET: &str = "whsec-test-0123456789abcdef";
const LIST: &str = "60d5ec49f1b2c72d9c8b4567";
const OTHER_LIST: &str = "60d5ec49f1b2c72d9c8b4568";
/// Long enough for a loaded CI machine, short enough to fail fast.
const IDLE: Duration = Duration::from_secs(10);

/// One request as the receiver got it: the raw body is what the signature covers.
#[derive(Debug, Clone)]
struct Received {
    path: String,
    headers: HeaderMap,
    body: Bytes,
}

impl Received {
    fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_else(|| panic!("header {name} missing or not text"))
    }

    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).expect("body is JSON")
    }
}

#[derive(Clone)]
struct Script {
    /// Statuses for the first requests, in order; `then` for the rest.
    statuses: Arc<Mutex<VecDeque<u16>>>,
    then: u16,
    delay: Duration,
    received: Arc<Mutex<Vec<Received>>>,
}

/// A webhook endpoint at `/hook` answering as scripted; a 3xx points at `/elsewhere`, which
/// records the request too, so a followed redirect would show.
struct Receiver {
    url: String,
    received: Arc<Mutex<Vec<Received>>>,
    task: JoinHandle<()>,
}

impl Receiver {
    async fn start(statuses: &[u16], then: u16, delay: Duration) -> Self {
        let script = Script {
            statuses: Arc::new(Mutex::new(statuses.iter().copied().collect())),
            then,
            delay,
            received: Arc::new(Mutex::new(Vec::new())),
        };
        let received = script.received.clone();
        let app = Router::new()
            .route("/hook", post(scripted))
            .route("/elsewhere", post(scripted))
            .with_state(script);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind receiver");
        let url = format!("http://{}/hook", listener.local_addr().expect("addr"));
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Receiver {
            url,
            received,
            task,
        }
    }

    async fn ok() -> Self {
        Receiver::start(&[], 200, Duration::ZERO).await
    }

    fn received(&self) -> Vec<Received> {
        self.received.lock().expect("receiver lock").clone()
    }

    /// The receiver sees a request slightly before the fake records its answer; tests that
    /// look at the receiver after `wait_webhooks_idle` are exact, this is for the others.
    async fn wait_for(&self, count: usize) -> Vec<Received> {
        let deadline = Instant::now() + IDLE;
        loop {
            let got = self.received();
            if got.len() >= count || Instant::now() > deadline {
                return got;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn scripted(
    State(script): State<Script>,
    uri: axum::http::Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    script
        .received
        .lock()
        .expect("receiver lock")
        .push(Received {
            path: uri.path().to_string(),
            headers,
            body,
        });
    let status = script
        .statuses
        .lock()
        .expect("script lock")
        .pop_front()
        .unwrap_or(script.then);
    if !script.delay.is_zero() {
        tokio::time::sleep(script.delay).await;
    }
    let status = StatusCode::from_u16(status).expect("scripted status");
    if status.is_redirection() {
        (status, [(header::LOCATION, "/elsewhere")]).into_response()
    } else {
        status.into_response()
    }
}

/// The documented contract with delays short enough for tests.
fn fast_webhook(url: &str) -> WebhookConfig {
    WebhookConfig {
        url: url.to_string(),
        secret: SECRET.to_string(),
        retry_delays: vec![Duration::from_millis(20); 3],
        timeout: Duration::from_secs(5),
    }
}

fn fake() -> FakeAutoSend {
    let fake = FakeAutoSend::new(FakeConfig {
        rate_limits: Vec::new(),
        ..FakeConfig::default()
    });
    fake.add_list(LIST, "Newsletter", ListKind::List);
    fake.add_list(OTHER_LIST, "Product updates", ListKind::List);
    fake
}

fn client() -> reqwest::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::new()
}

async fn post_json(client: &reqwest::Client, url: &str, key: &str, body: Value) -> (u16, Value) {
    let res = client
        .post(url)
        .bearer_auth(key)
        .json(&body)
        .send()
        .await
        .expect("transport");
    let status = res.status().as_u16();
    (status, res.json().await.unwrap_or(Value::Null))
}

/// HMAC-SHA256 written out from RFC 2104 over plain SHA-256, so the check does not reuse the
/// `hmac` crate the fake signs with.
fn independent_hmac_sha256_hex(key: &[u8], message: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    const BLOCK: usize = 64;
    let mut block_key = [0u8; BLOCK];
    if key.len() > BLOCK {
        block_key[..32].copy_from_slice(&Sha256::digest(key));
    } else {
        block_key[..key.len()].copy_from_slice(key);
    }
    let pad = |byte: u8| block_key.iter().map(|k| k ^ byte).collect::<Vec<u8>>();
    let inner = Sha256::new()
        .chain_update(pad(0x36))
        .chain_update(message)
        .finalize();
    let outer = Sha256::new()
        .chain_update(pad(0x5c))
        .chain_update(inner)
        .finalize();
    outer.iter().map(|b| format!("{b:02x}")).collect()
}

fn epoch_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .expect("after 1970")
        .as_millis() as u64
}

#[test]
fn signing_matches_the_rfc_4231_test_vector() {
    // RFC 4231, test case 2.
    let want = "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843";
    assert_eq!(
        independent_hmac_sha256_hex(b"Jefe", b"what do ya want for nothing?"),
        want
    );
    assert_eq!(webhook::sign("Jefe", b"what do ya want for nothing?"), want);
}

#[test]
fn webhook_config_debug_hides_the_secret() {
    let shown = format!("{:?}", WebhookConfig::new("http://x.test/hook", SECRET));
    assert!(!shown.contains(SECRET), "{shown}");
    assert!(shown.contains("http://x.test/hook"));
}

#[test]
fn the_default_webhook_config_follows_the_documented_schedule() {
    let config = WebhookConfig::new("http://x.test/hook", SECRET);
    let secs: Vec<u64> = config.retry_delays.iter().map(Duration::as_secs).collect();
    assert_eq!(secs, [5, 10, 20]);
    assert_eq!(config.timeout, Duration::from_secs(10));
}

#[tokio::test]
async fn signature_is_the_hmac_sha256_of_the_raw_body_with_the_secret() {
    let receiver = Receiver::ok().await;
    let fake = fake().with_webhook(fast_webhook(&receiver.url));
    fake.emit_bounce("jane@example.com", BounceType::Permanent)
        .expect("queued");
    fake.wait_webhooks_idle(IDLE).await.expect("idle");

    let got = receiver.received();
    assert_eq!(got.len(), 1);
    let signature = got[0].header("x-webhook-signature");
    assert_eq!(
        signature,
        independent_hmac_sha256_hex(SECRET.as_bytes(), &got[0].body)
    );
    assert_ne!(
        signature,
        independent_hmac_sha256_hex(b"another secret", &got[0].body)
    );
}

#[tokio::test]
async fn deliveries_carry_the_documented_headers_and_envelope() {
    let receiver = Receiver::ok().await;
    let fake = fake().with_webhook(fast_webhook(&receiver.url));
    let before = epoch_ms(SystemTime::now());
    let delivery_id = fake.emit_spam_report("Jane@Example.com").expect("queued");
    fake.wait_webhooks_idle(IDLE).await.expect("idle");
    let after = epoch_ms(SystemTime::now());

    let got = receiver.received();
    assert_eq!(got.len(), 1);
    let r = &got[0];
    assert_eq!(r.header("content-type"), "application/json");
    assert_eq!(r.header("user-agent"), "AutoSend-Webhooks/1.0");
    assert_eq!(r.header("x-webhook-event"), "email.spam_reported");
    assert_eq!(r.header("x-webhook-delivery-id"), delivery_id);
    assert!(delivery_id.starts_with("deliver-webhook-"), "{delivery_id}");
    let signature = r.header("x-webhook-signature");
    assert_eq!(signature.len(), 64);
    assert!(
        signature
            .chars()
            .all(|c| c.is_ascii_digit() || ('a'..='f').contains(&c))
    );
    let timestamp: u64 = r.header("x-webhook-timestamp").parse().expect("integer");
    assert!(
        (before..=after).contains(&timestamp),
        "{timestamp} not in {before}..={after}: not milliseconds?"
    );

    // The documented order, as AutoSend's JSON.stringify of {type, createdAt, data} gives.
    assert!(
        r.body
            .starts_with(b"{\"type\":\"email.spam_reported\",\"createdAt\":\"")
    );
    let body = r.json();
    let keys: Vec<&str> = body
        .as_object()
        .expect("object")
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(keys, ["createdAt", "data", "type"]);
    assert_eq!(body["type"], "email.spam_reported");
    let created_at = body["createdAt"].as_str().expect("string");
    assert_eq!(created_at.len(), "2025-11-12T10:45:00.000Z".len());
    assert!(created_at.ends_with('Z') && created_at.as_bytes()[10] == b'T');
    assert_eq!(body["data"]["to"]["email"], "jane@example.com");
    assert_eq!(body["data"]["complaintType"], "abuse");

    let records = fake.webhook_deliveries();
    assert_eq!(records.len(), 1);
    assert_eq!(records[0].delivery_id, delivery_id);
    assert_eq!(records[0].event_type, "email.spam_reported");
    assert_eq!(records[0].attempt, 1);
    assert_eq!(records[0].outcome, DeliveryOutcome::Status(200));
}

#[tokio::test]
async fn a_failed_delivery_is_retried_with_the_same_delivery_id_and_body() {
    let receiver = Receiver::start(&[500, 500], 200, Duration::ZERO).await;
    let fake = fake().with_webhook(fast_webhook(&receiver.url));
    let delivery_id = fake
        .emit_bounce("jane@example.com", BounceType::Transient)
        .expect("queued");
    fake.wait_webhooks_idle(IDLE).await.expect("idle");

    let got = receiver.received();
    assert_eq!(got.len(), 3);
    for r in &got {
        assert_eq!(r.header("x-webhook-delivery-id"), delivery_id);
        assert_eq!(r.body, got[0].body);
        assert_eq!(
            r.header("x-webhook-signature"),
            got[0].header("x-webhook-signature")
        );
    }
    let records = fake.webhook_deliveries();
    let attempts: Vec<(u32, DeliveryOutcome)> = records
        .iter()
        .map(|r| (r.attempt, r.outcome.clone()))
        .collect();
    assert_eq!(
        attempts,
        [
            (1, DeliveryOutcome::Status(500)),
            (2, DeliveryOutcome::Status(500)),
            (3, DeliveryOutcome::Status(200)),
        ]
    );
    assert!(records.iter().all(|r| r.delivery_id == delivery_id));
    // The configured delays separate the attempts.
    for pair in records.windows(2) {
        let gap = pair[1]
            .sent_at
            .duration_since(pair[0].sent_at)
            .unwrap_or_default();
        assert!(gap >= Duration::from_millis(20), "{gap:?}");
    }
}

#[tokio::test]
async fn a_receiver_that_always_fails_gets_one_attempt_and_three_retries_then_nothing() {
    let receiver = Receiver::start(&[], 503, Duration::ZERO).await;
    let fake = fake().with_webhook(fast_webhook(&receiver.url));
    fake.emit_bounce("jane@example.com", BounceType::Permanent)
        .expect("queued");
    fake.wait_webhooks_idle(IDLE).await.expect("idle");
    // Longer than every retry delay together: a fourth retry would have come by now.
    tokio::time::sleep(Duration::from_millis(200)).await;

    assert_eq!(receiver.received().len(), 4);
    let records = fake.webhook_deliveries();
    assert_eq!(records.len(), 4);
    assert_eq!(
        records.iter().map(|r| r.attempt).collect::<Vec<_>>(),
        [1, 2, 3, 4]
    );
    assert!(records.iter().all(|r| !r.succeeded()));
}

#[tokio::test]
async fn transport_errors_are_retried_like_failed_statuses() {
    // A port that was just free: nothing listens there any more.
    let closed = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!("http://{}/hook", closed.local_addr().expect("addr"));
    drop(closed);
    let fake = fake().with_webhook(fast_webhook(&url));
    fake.emit_bounce("jane@example.com", BounceType::Permanent)
        .expect("queued");
    fake.wait_webhooks_idle(IDLE).await.expect("idle");

    let records = fake.webhook_deliveries();
    assert_eq!(records.len(), 4);
    for r in &records {
        assert!(
            matches!(&r.outcome, DeliveryOutcome::TransportError(e) if !e.is_empty()),
            "{r:?}"
        );
    }
}

#[tokio::test]
async fn redirects_are_not_followed_and_count_as_failures() {
    let receiver = Receiver::start(&[], 307, Duration::ZERO).await;
    let fake = fake().with_webhook(fast_webhook(&receiver.url));
    fake.emit_bounce("jane@example.com", BounceType::Permanent)
        .expect("queued");
    fake.wait_webhooks_idle(IDLE).await.expect("idle");

    let got = receiver.received();
    assert_eq!(got.len(), 4);
    assert!(
        got.iter().all(|r| r.path == "/hook"),
        "a redirect was followed"
    );
    assert!(
        fake.webhook_deliveries()
            .iter()
            .all(|r| r.outcome == DeliveryOutcome::Status(307))
    );
}

#[tokio::test]
async fn bulk_add_of_a_new_contact_emits_contact_created() {
    let receiver = Receiver::ok().await;
    let server = fake()
        .with_webhook(fast_webhook(&receiver.url))
        .serve_local()
        .await
        .expect("serve");
    let (status, _) = post_json(
        &client(),
        &format!("{}/contact-lists/contacts/bulk-add", server.base_url()),
        KEY,
        json!({"contactListId": LIST, "emails": ["New.User@Example.com"]}),
    )
    .await;
    assert_eq!(status, 200);
    let fake = server.handle();
    fake.wait_webhooks_idle(IDLE).await.expect("idle");

    let got = receiver.received();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].header("x-webhook-event"), "contact.created");
    let body = got[0].json();
    assert_eq!(body["type"], "contact.created");
    let id = fake.contact_id("new.user@example.com").expect("created");
    assert_eq!(
        body["data"],
        json!({"contactId": id, "email": "new.user@example.com", "name": "New.user Fake"})
    );
}

#[tokio::test]
async fn bulk_add_of_an_existing_contact_to_another_list_emits_contact_updated() {
    let receiver = Receiver::ok().await;
    let fake = fake();
    fake.seed_from_json(
        &json!({"lists": [{"id": LIST, "contacts": ["jane@example.com"]}]}).to_string(),
    )
    .expect("seed");
    let server = fake
        .with_webhook(fast_webhook(&receiver.url))
        .serve_local()
        .await
        .expect("serve");
    let url = format!("{}/contact-lists/contacts/bulk-add", server.base_url());
    let client = client();
    let (status, answer) = post_json(
        &client,
        &url,
        KEY,
        json!({"contactListId": OTHER_LIST, "emails": ["jane@example.com"]}),
    )
    .await;
    assert_eq!((status, &answer["data"]["added"]), (200, &json!(1)));
    // Already a member: no change, no event.
    let (status, answer) = post_json(
        &client,
        &url,
        KEY,
        json!({"contactListId": OTHER_LIST, "emails": ["jane@example.com"]}),
    )
    .await;
    assert_eq!((status, &answer["data"]["alreadyInList"]), (200, &json!(1)));
    let fake = server.handle();
    fake.wait_webhooks_idle(IDLE).await.expect("idle");

    let got = receiver.received();
    assert_eq!(got.len(), 1, "{got:?}");
    let body = got[0].json();
    assert_eq!(body["type"], "contact.updated");
    assert_eq!(
        body["data"]["contactId"],
        json!(fake.contact_id("jane@example.com"))
    );
    assert_eq!(body["data"]["email"], "jane@example.com");
    assert_eq!(body["data"]["changedFields"], json!(["listIds"]));
}

#[tokio::test]
async fn seeding_emits_no_event() {
    let receiver = Receiver::ok().await;
    let fake = fake().with_webhook(fast_webhook(&receiver.url));
    let seed = json!({"lists": [
        {"id": LIST, "contacts": ["jane@example.com", {"email": "john@example.com", "id": "60d5ec49f1b2c72d9c8b1111"}]},
        {"id": OTHER_LIST, "contacts": ["jane@example.com"], "generate": {"count": 20}},
    ]});
    fake.seed_from_json(&seed.to_string()).expect("seed");
    assert_eq!(fake.member_count(OTHER_LIST), 21);
    fake.wait_webhooks_idle(IDLE).await.expect("idle");
    // Time for a stray event to arrive, had one been queued.
    tokio::time::sleep(Duration::from_millis(100)).await;

    assert!(receiver.received().is_empty());
    assert!(fake.webhook_deliveries().is_empty());
}

#[tokio::test]
async fn admin_add_contacts_emits_like_bulk_add() {
    let receiver = Receiver::ok().await;
    let fake = fake().with_webhook(fast_webhook(&receiver.url));
    let ids = fake.add_contacts(LIST, ["a@example.com", "b@example.com"]);
    fake.add_contacts(LIST, ["a@example.com"]);
    fake.add_contacts(OTHER_LIST, ["a@example.com"]);
    fake.add_contact_with_id(LIST, "c@example.com", "60d5ec49f1b2c72d9c8b2222")
        .expect("new id");
    fake.wait_webhooks_idle(IDLE).await.expect("idle");

    let mut events: Vec<(String, String)> = receiver
        .received()
        .iter()
        .map(|r| {
            let body = r.json();
            (
                body["type"].as_str().unwrap_or_default().to_string(),
                body["data"]["contactId"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string(),
            )
        })
        .collect();
    // Deliveries run concurrently, so their arrival order is not guaranteed.
    events.sort();
    let mut want = vec![
        ("contact.created".to_string(), ids[0].clone()),
        ("contact.created".to_string(), ids[1].clone()),
        (
            "contact.created".to_string(),
            "60d5ec49f1b2c72d9c8b2222".to_string(),
        ),
        ("contact.updated".to_string(), ids[0].clone()),
    ];
    want.sort();
    assert_eq!(events, want);
}

#[tokio::test]
async fn emit_bounce_sends_email_bounced_with_the_bounce_type() {
    let receiver = Receiver::ok().await;
    let fake = fake();
    fake.seed_from_json(
        &json!({"lists": [{"id": LIST, "contacts": ["jane@example.com"]}]}).to_string(),
    )
    .expect("seed");
    let fake = fake.with_webhook(fast_webhook(&receiver.url));
    fake.emit_bounce("JANE@example.com", BounceType::Transient)
        .expect("queued");
    fake.wait_webhooks_idle(IDLE).await.expect("idle");
    fake.emit_bounce("nobody@example.com", BounceType::Permanent)
        .expect("queued");
    fake.wait_webhooks_idle(IDLE).await.expect("idle");

    let got = receiver.received();
    assert_eq!(got.len(), 2);
    let known = got[0].json();
    assert_eq!(known["type"], "email.bounced");
    assert_eq!(got[0].header("x-webhook-event"), "email.bounced");
    let data = &known["data"];
    assert_eq!(
        data["to"],
        json!({"email": "jane@example.com", "name": "Jane Fake"})
    );
    assert_eq!(data["bounceType"], "Transient");
    assert_eq!(data["bounceSubType"], "General");
    assert_eq!(data["test"], false);
    for field in ["emailId", "from", "subject", "reason"] {
        assert!(data[field].is_string(), "{field} missing: {data}");
    }
    let unknown = got[1].json();
    assert_eq!(
        unknown["data"]["to"],
        json!({"email": "nobody@example.com", "name": null})
    );
    assert_eq!(unknown["data"]["bounceType"], "Permanent");
    assert_ne!(unknown["data"]["emailId"], data["emailId"]);
}

#[tokio::test]
async fn emit_unsubscribed_carries_no_address() {
    let receiver = Receiver::ok().await;
    let fake = fake().with_webhook(fast_webhook(&receiver.url));
    fake.emit_unsubscribed(Some("64f1a2b3c4d5e6f7a8b9c0d1"))
        .expect("queued");
    fake.wait_webhooks_idle(IDLE).await.expect("idle");

    let got = receiver.received();
    assert_eq!(got.len(), 1);
    assert_eq!(
        got[0].json()["data"],
        json!({"emailId": "64f1a2b3c4d5e6f7a8b9c0d1", "test": false})
    );
}

#[tokio::test]
async fn emit_event_sends_any_payload_as_given() {
    let receiver = Receiver::ok().await;
    let fake = fake().with_webhook(fast_webhook(&receiver.url));
    let data = json!({"to": "not-an-object", "bounceType": 42});
    fake.emit_event("email.bounced", data.clone())
        .expect("queued");
    assert_eq!(
        fake.emit_event("bad type", json!({})),
        Err(EmitError::InvalidEventType("bad type".to_string()))
    );
    fake.wait_webhooks_idle(IDLE).await.expect("idle");

    let got = receiver.received();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].json()["data"], data);
}

#[tokio::test]
async fn events_without_a_webhook_are_dropped() {
    let receiver = Receiver::ok().await;
    let fake = fake();
    assert_eq!(
        fake.emit_bounce("jane@example.com", BounceType::Permanent),
        Err(EmitError::NoWebhook)
    );
    fake.add_contacts(LIST, ["jane@example.com"]);
    fake.set_webhook(Some(fast_webhook(&receiver.url)));
    fake.wait_webhooks_idle(IDLE).await.expect("idle");
    tokio::time::sleep(Duration::from_millis(100)).await;

    assert!(receiver.received().is_empty());
    assert_eq!(fake.webhook_events_dropped(), 0);
}

#[tokio::test]
async fn admin_route_emits_events_and_requires_the_api_key() {
    let receiver = Receiver::ok().await;
    let server = fake().serve_local().await.expect("serve");
    let url = format!("http://{}/admin/webhook-events", server.addr());
    let client = client();
    let bounce =
        json!({"type": "email.bounced", "email": "jane@example.com", "bounceType": "Permanent"});

    let (status, answer) = post_json(&client, &url, KEY, bounce.clone()).await;
    assert_eq!(status, 409, "{answer}");
    assert_eq!(answer["error"]["code"], "WEBHOOK_NOT_CONFIGURED");

    server
        .handle()
        .set_webhook(Some(fast_webhook(&receiver.url)));
    let (status, _) = post_json(&client, &url, "wrong-key", bounce.clone()).await;
    assert_eq!(status, 401);
    let (status, answer) = post_json(
        &client,
        &url,
        KEY,
        json!({"type": "email.bounced", "email": "jane@example.com"}),
    )
    .await;
    assert_eq!(status, 400, "{answer}");
    assert_eq!(answer["error"]["details"][0]["field"], "bounceType");
    let (status, answer) = post_json(&client, &url, KEY, json!({"type": "contact.deleted"})).await;
    assert_eq!(status, 400, "{answer}");

    let (status, answer) = post_json(&client, &url, KEY, bounce).await;
    assert_eq!(status, 202, "{answer}");
    let delivery_id = answer["data"]["deliveryId"]
        .as_str()
        .expect("id")
        .to_string();
    let (status, _) = post_json(
        &client,
        &url,
        KEY,
        json!({"type": "contact.deleted", "data": {"contactId": "x", "email": "gone@example.com"}}),
    )
    .await;
    assert_eq!(status, 202);
    server
        .handle()
        .wait_webhooks_idle(IDLE)
        .await
        .expect("idle");

    let got = receiver.received();
    assert_eq!(got.len(), 2);
    let bounced = got
        .iter()
        .find(|r| r.header("x-webhook-delivery-id") == delivery_id)
        .expect("bounce delivered");
    assert_eq!(bounced.json()["data"]["bounceType"], "Permanent");
    assert_eq!(bounced.json()["data"]["to"]["email"], "jane@example.com");
    // The control route is not part of the faked API: it leaves the API's counters alone.
    assert_eq!(server.handle().counters().requests, 0);
}

#[tokio::test]
async fn api_answers_do_not_wait_for_a_hanging_receiver() {
    let receiver = Receiver::start(&[], 200, Duration::from_secs(20)).await;
    let config = WebhookConfig {
        // Long enough that an API answer waiting for even one attempt would be caught.
        timeout: Duration::from_secs(5),
        ..fast_webhook(&receiver.url)
    };
    let server = fake()
        .with_webhook(config)
        .serve_local()
        .await
        .expect("serve");
    let client = client();
    let url = format!("{}/contact-lists/contacts/bulk-add", server.base_url());
    // Warm the connection up so that the timed requests measure the handler only.
    let warm_up = client
        .get(format!("{}/contact-lists", server.base_url()))
        .bearer_auth(KEY)
        .send()
        .await
        .expect("transport");
    assert_eq!(warm_up.status().as_u16(), 200);

    for round in 0..3 {
        let emails: Vec<String> = (0..10)
            .map(|i| format!("user{round}-{i}@example.com"))
            .collect();
        let started = Instant::now();
        let (status, _) = post_json(
            &client,
            &url,
            KEY,
            json!({"contactListId": LIST, "emails": emails}),
        )
        .await;
        let took = started.elapsed();
        assert_eq!(status, 200);
        assert!(took < Duration::from_millis(500), "bulk-add took {took:?}");
    }
    // The deliveries did start, and are stuck in the receiver.
    assert!(!receiver.wait_for(1).await.is_empty());
    let busy = server
        .handle()
        .wait_webhooks_idle(Duration::from_millis(50))
        .await
        .expect_err("deliveries hang");
    assert_eq!(busy.pending, 30);
}
