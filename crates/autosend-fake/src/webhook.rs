//! Webhook emission, following AutoSend's webhook pages (`shared/autosend-api/webhooks-*.mdx`).
//!
//! # Contract
//!
//! A delivery is a `POST` of `{"type": .., "createdAt": .., "data": {..}}` to the configured URL
//! with `Content-Type: application/json`, `User-Agent: AutoSend-Webhooks/1.0`,
//! `X-Webhook-Event` (the type), `X-Webhook-Delivery-Id`, `X-Webhook-Timestamp` (epoch
//! milliseconds at the moment the attempt is sent) and `X-Webhook-Signature`: lowercase hex
//! HMAC-SHA256 of the exact body bytes, keyed with the webhook secret. Any 2xx ends the
//! delivery; another status, a transport error or no answer within `timeout` (10 s documented)
//! is a failure, retried after each of `retry_delays` (~5, 10, 20 s documented), so 1 + 3
//! attempts. A retry resends the same body (so the same `createdAt` and signature) under the
//! same delivery id; only the timestamp header is new. Redirects are never followed: a 3xx
//! is a failure like any non-2xx. At most 5 attempts are on the wire at once (the retries
//! page's "up to 5 webhooks concurrently"), and deliveries are not ordered, as in AutoSend.
//!
//! # Design
//!
//! Events are emitted from API handlers while they hold the fake's state lock, so emission
//! must cost next to nothing and never wait: the payload is serialised and pushed with
//! `try_send` onto a bounded queue; a full queue drops the event (counted) rather than slowing
//! the API. A background worker drains the queue. It is spawned lazily on the first emission
//! made inside a tokio runtime (or when the fake starts serving, or when a test waits for
//! idleness), so a fake built outside a runtime still works and a fake without webhooks never
//! spawns anything. Each event is bound to the webhook configured when it was emitted: changing
//! the configuration later does not redirect deliveries already queued. Events emitted while no
//! webhook is configured are dropped, like events for which nobody registered a webhook.
//!
//! Every queued event holds a [`Pending`] guard that decrements the pending count when the
//! event is dropped, whether delivered, given up, refused by a full queue or lost with its
//! runtime, so [`FakeAutoSend::wait_webhooks_idle`](crate::FakeAutoSend::wait_webhooks_idle)
//! can never wait for an event that no longer exists.

use std::collections::VecDeque;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use hmac::{Hmac, Mac};
use serde::Serialize;
use sha2::Sha256;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, watch};

use crate::state::{Contact, iso8601, now_ms};

/// The documented delay before each retry (retries page: ~5 s, ~10 s, ~20 s).
pub const DOCUMENTED_RETRY_DELAYS: [Duration; 3] = [
    Duration::from_secs(5),
    Duration::from_secs(10),
    Duration::from_secs(20),
];

/// The documented per-attempt timeout.
pub const DOCUMENTED_TIMEOUT: Duration = Duration::from_secs(10);

/// The retries page: "AutoSend processes up to 5 webhooks concurrently".
const CONCURRENCY: usize = 5;

/// Large enough for any test burst (a bulk-add creates at most 500 contacts), small enough that
/// a receiver that never answers cannot make a long-running fake grow without bound.
const QUEUE_CAPACITY: usize = 10_000;

/// A long-running fake (the binary) must not keep every attempt forever; tests never get near.
const MAX_RECORDS: usize = 10_000;

/// The user agent the verify page documents.
const USER_AGENT: &str = "AutoSend-Webhooks/1.0";

/// Where and how the fake delivers webhook events.
#[derive(Clone, PartialEq, Eq)]
pub struct WebhookConfig {
    /// Endpoint URL (AutoSend does not enforce HTTPS, neither does the fake).
    pub url: String,
    /// Key of the HMAC-SHA256 signature.
    pub secret: String,
    /// Delay before each retry; its length is the number of retries.
    pub retry_delays: Vec<Duration>,
    /// Time allowed for each attempt, from sending to the response's status line.
    pub timeout: Duration,
}

impl WebhookConfig {
    /// A webhook with the documented schedule: 3 retries after ~5, 10 and 20 s, 10 s timeout.
    pub fn new(url: impl Into<String>, secret: impl Into<String>) -> Self {
        WebhookConfig {
            url: url.into(),
            secret: secret.into(),
            retry_delays: DOCUMENTED_RETRY_DELAYS.to_vec(),
            timeout: DOCUMENTED_TIMEOUT,
        }
    }
}

/// The secret must not end up in test output or logs.
impl fmt::Debug for WebhookConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WebhookConfig")
            .field("url", &self.url)
            .field("secret", &"<redacted>")
            .field("retry_delays", &self.retry_delays)
            .field("timeout", &self.timeout)
            .finish()
    }
}

/// The documented `bounceType` values of `email.bounced`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BounceType {
    /// Hard bounce: the address or its domain does not exist.
    Permanent,
    /// Soft bounce: mailbox full, server temporarily unavailable.
    Transient,
}

impl BounceType {
    /// The value sent in `bounceType`.
    pub fn as_str(self) -> &'static str {
        match self {
            BounceType::Permanent => "Permanent",
            BounceType::Transient => "Transient",
        }
    }

    /// Parses the documented spelling exactly (the value is case-sensitive on the wire).
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "Permanent" => Some(BounceType::Permanent),
            "Transient" => Some(BounceType::Transient),
            _ => None,
        }
    }

    /// Server replies as shown in the event-type page (the transient one in the same style).
    fn reason(self) -> &'static str {
        match self {
            BounceType::Permanent => {
                "550 5.1.1 The email account that you tried to reach does not exist"
            }
            BounceType::Transient => {
                "452 4.2.2 The email account that you tried to reach is over quota"
            }
        }
    }
}

/// How one delivery attempt ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeliveryOutcome {
    /// The receiver answered with this status (2xx is a success, anything else a failure).
    Status(u16),
    /// No answer: connection refused or reset, timeout, invalid URL, ...
    TransportError(String),
}

/// One delivery attempt, as the fake saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeliveryRecord {
    /// The `X-Webhook-Delivery-Id`, shared by every attempt of one event.
    pub delivery_id: String,
    /// The event type, e.g. `email.bounced`.
    pub event_type: String,
    /// 1 for the first attempt, up to 1 + the number of retry delays.
    pub attempt: u32,
    /// Status or transport error.
    pub outcome: DeliveryOutcome,
    /// When the attempt was sent (the `X-Webhook-Timestamp`).
    pub sent_at: SystemTime,
}

impl DeliveryRecord {
    /// Whether the receiver answered 2xx.
    pub fn succeeded(&self) -> bool {
        matches!(self.outcome, DeliveryOutcome::Status(s) if (200..300).contains(&s))
    }
}

/// Why an event was not queued.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EmitError {
    /// No webhook is configured: the event is dropped, as AutoSend drops events nobody
    /// subscribed to.
    NoWebhook,
    /// The event type cannot be sent in the `X-Webhook-Event` header (empty or not visible
    /// ASCII).
    InvalidEventType(String),
    /// The queue is full (the receiver is far behind); the event is dropped.
    QueueFull,
    /// The delivery worker is gone, with the tokio runtime it was spawned on.
    WorkerStopped,
    /// The payload could not be serialised.
    Payload(String),
}

impl fmt::Display for EmitError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EmitError::NoWebhook => write!(f, "no webhook is configured"),
            EmitError::InvalidEventType(t) => write!(f, "invalid webhook event type {t:?}"),
            EmitError::QueueFull => write!(f, "the webhook queue is full"),
            EmitError::WorkerStopped => write!(f, "the webhook worker has stopped"),
            EmitError::Payload(e) => write!(f, "webhook payload: {e}"),
        }
    }
}

impl std::error::Error for EmitError {}

/// [`FakeAutoSend::wait_webhooks_idle`](crate::FakeAutoSend::wait_webhooks_idle) timed out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WebhooksBusy {
    /// Events still queued or being delivered (retry waits included).
    pub pending: usize,
}

impl fmt::Display for WebhooksBusy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} webhook event(s) still pending", self.pending)
    }
}

impl std::error::Error for WebhooksBusy {}

/// What the API handlers and the worker share: records and the pending count.
struct Tracker {
    records: Mutex<VecDeque<DeliveryRecord>>,
    pending: watch::Sender<usize>,
    dropped: AtomicU64,
}

impl Tracker {
    fn records(&self) -> MutexGuard<'_, VecDeque<DeliveryRecord>> {
        self.records.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn record(&self, record: DeliveryRecord) {
        let mut records = self.records();
        if records.len() >= MAX_RECORDS {
            records.pop_front();
        }
        records.push_back(record);
    }
}

/// Counts an event as pending for as long as it exists (see the module doc).
struct Pending(Arc<Tracker>);

impl Pending {
    fn new(tracker: &Arc<Tracker>) -> Self {
        tracker.pending.send_modify(|n| *n += 1);
        Pending(tracker.clone())
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        self.0.pending.send_modify(|n| *n = n.saturating_sub(1));
    }
}

/// One event on its way: everything needed to (re)send it.
struct Job {
    config: Arc<WebhookConfig>,
    delivery_id: String,
    event_type: String,
    body: Vec<u8>,
    _pending: Pending,
}

/// The webhook side of one fake: configuration, queue and records.
pub(crate) struct Hub {
    config: Mutex<Option<Arc<WebhookConfig>>>,
    tx: mpsc::Sender<Job>,
    /// Taken by the worker when it is spawned.
    rx: Mutex<Option<mpsc::Receiver<Job>>>,
    tracker: Arc<Tracker>,
    email_ids: AtomicU64,
}

impl Hub {
    pub fn new(config: Option<WebhookConfig>) -> Self {
        let (tx, rx) = mpsc::channel(QUEUE_CAPACITY);
        Hub {
            config: Mutex::new(config.map(Arc::new)),
            tx,
            rx: Mutex::new(Some(rx)),
            tracker: Arc::new(Tracker {
                records: Mutex::new(VecDeque::new()),
                pending: watch::Sender::new(0),
                dropped: AtomicU64::new(0),
            }),
            email_ids: AtomicU64::new(0),
        }
    }

    fn config(&self) -> MutexGuard<'_, Option<Arc<WebhookConfig>>> {
        self.config.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn set_config(&self, config: Option<WebhookConfig>) {
        *self.config() = config.map(Arc::new);
        self.ensure_worker();
    }

    /// Serialises and queues one event; never waits. Returns the delivery id.
    pub fn emit<D: Serialize + ?Sized>(
        &self,
        event_type: &str,
        data: &D,
    ) -> Result<String, EmitError> {
        if event_type.is_empty() || !event_type.chars().all(|c| c.is_ascii_graphic()) {
            return Err(EmitError::InvalidEventType(event_type.to_string()));
        }
        let Some(config) = self.config().clone() else {
            tracing::trace!(event_type, "no webhook configured: event dropped");
            return Err(EmitError::NoWebhook);
        };
        #[derive(Serialize)]
        #[serde(rename_all = "camelCase")]
        struct Payload<'a, D: ?Sized> {
            #[serde(rename = "type")]
            kind: &'a str,
            created_at: String,
            data: &'a D,
        }
        let body = serde_json::to_vec(&Payload {
            kind: event_type,
            created_at: iso8601(now_ms()),
            data,
        })
        .map_err(|e| EmitError::Payload(e.to_string()))?;
        // Random rather than a counter: a receiver that remembers delivery ids across runs
        // (an idempotency table) must not see a restarted fake reuse them.
        let delivery_id = format!("deliver-webhook-{:016x}", rand::random::<u64>());
        let job = Job {
            config,
            delivery_id: delivery_id.clone(),
            event_type: event_type.to_string(),
            body,
            _pending: Pending::new(&self.tracker),
        };
        let queued = match self.tx.try_send(job) {
            Ok(()) => Ok(delivery_id),
            Err(mpsc::error::TrySendError::Full(_)) => Err(EmitError::QueueFull),
            Err(mpsc::error::TrySendError::Closed(_)) => Err(EmitError::WorkerStopped),
        };
        if let Err(e) = &queued {
            self.tracker.dropped.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(event_type, error = %e, "webhook event dropped");
        }
        self.ensure_worker();
        queued
    }

    /// Spawns the delivery worker if it is not running yet and a runtime is at hand.
    pub fn ensure_worker(&self) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let mut rx = self.rx.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(rx) = rx.take() {
            runtime.spawn(worker(rx, self.tracker.clone()));
        }
    }

    /// A fresh 24-hex id for the `emailId` of a synthetic email event (AutoSend's are
    /// ObjectIds); a distinct prefix from contact ids keeps them apart in logs.
    pub fn next_email_id(&self) -> String {
        let n = self.email_ids.fetch_add(1, Ordering::Relaxed);
        format!(
            "{:024x}",
            0x6a27_e3a1_0000_0000_0000_0000u128 + u128::from(n)
        )
    }

    pub fn deliveries(&self) -> Vec<DeliveryRecord> {
        self.tracker.records().iter().cloned().collect()
    }

    pub fn dropped(&self) -> u64 {
        self.tracker.dropped.load(Ordering::Relaxed)
    }

    pub async fn wait_idle(&self, timeout: Duration) -> Result<(), WebhooksBusy> {
        // Events emitted before any runtime existed are waiting for a worker.
        self.ensure_worker();
        let mut pending = self.tracker.pending.subscribe();
        match tokio::time::timeout(timeout, pending.wait_for(|n| *n == 0)).await {
            // The sender lives in `self`, so the wait cannot fail for a closed channel.
            Ok(_) => Ok(()),
            Err(_) => Err(WebhooksBusy {
                pending: *self.tracker.pending.borrow(),
            }),
        }
    }
}

/// HMAC-SHA256 of `body` keyed with `secret`, lowercase hex (the verify page's recipe): the
/// `X-Webhook-Signature` of a delivery. Public so that tests forging deliveries sign them
/// exactly as the fake (and AutoSend) does; pinned by RFC 4231's test vector.
pub fn sign(secret: &str, body: &[u8]) -> String {
    let mut mac = match Hmac::<Sha256>::new_from_slice(secret.as_bytes()) {
        Ok(mac) => mac,
        // HMAC takes keys of any length; this arm exists only because the trait is fallible.
        Err(_) => return String::new(),
    };
    mac.update(body);
    mac.finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Drains the queue: takes a concurrency slot, then the next event, and delivers it in its own
/// task so that one slow receiver answer does not hold up the events behind it.
async fn worker(mut rx: mpsc::Receiver<Job>, tracker: Arc<Tracker>) {
    // reqwest is built with `rustls-no-provider`: even a plain-HTTP client needs a provider.
    // Installing twice is harmless (the second call returns an error, ignored).
    let _ = rustls::crypto::ring::default_provider().install_default();
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        // Receivers in tests listen on 127.0.0.1; an HTTP(S)_PROXY of the environment must not
        // capture them.
        .no_proxy()
        .user_agent(USER_AGENT)
        .build()
        .map_err(|e| format!("building the HTTP client: {}", error_chain(&e)));
    let slots = Arc::new(Semaphore::new(CONCURRENCY));
    loop {
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        let Some(job) = rx.recv().await else {
            return;
        };
        tokio::spawn(deliver(
            job,
            client.clone(),
            slots.clone(),
            slot,
            tracker.clone(),
        ));
    }
}

/// All attempts of one event. The concurrency slot is released while waiting for a retry, as
/// a delayed job in a queue system does not occupy a worker.
async fn deliver(
    job: Job,
    client: Result<reqwest::Client, String>,
    slots: Arc<Semaphore>,
    slot: OwnedSemaphorePermit,
    tracker: Arc<Tracker>,
) {
    let signature = sign(&job.config.secret, &job.body);
    let mut slot = Some(slot);
    let attempts = 1 + job.config.retry_delays.len();
    for attempt in 1..=attempts {
        if attempt > 1 {
            drop(slot.take());
            tokio::time::sleep(job.config.retry_delays[attempt - 2]).await;
            match slots.clone().acquire_owned().await {
                Ok(s) => slot = Some(s),
                Err(_) => return,
            }
        }
        let sent_at = SystemTime::now();
        let outcome = match &client {
            Ok(client) => send_once(client, &job, &signature).await,
            Err(e) => DeliveryOutcome::TransportError(e.clone()),
        };
        let record = DeliveryRecord {
            delivery_id: job.delivery_id.clone(),
            event_type: job.event_type.clone(),
            attempt: attempt as u32,
            outcome,
            sent_at,
        };
        let done = record.succeeded();
        tracing::debug!(
            delivery_id = %record.delivery_id,
            event_type = %record.event_type,
            attempt,
            outcome = ?record.outcome,
            "webhook delivery attempt"
        );
        tracker.record(record);
        if done {
            return;
        }
    }
    tracing::info!(
        delivery_id = %job.delivery_id,
        event_type = %job.event_type,
        attempts,
        "webhook delivery failed, giving up"
    );
}

async fn send_once(client: &reqwest::Client, job: &Job, signature: &str) -> DeliveryOutcome {
    let result = client
        .post(&job.config.url)
        .timeout(job.config.timeout)
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .header("X-Webhook-Signature", signature)
        .header("X-Webhook-Event", &job.event_type)
        .header("X-Webhook-Delivery-Id", &job.delivery_id)
        .header("X-Webhook-Timestamp", now_ms().to_string())
        .body(job.body.clone())
        .send()
        .await;
    match result {
        // The body is not read: AutoSend judges a delivery by its status alone.
        Ok(response) => DeliveryOutcome::Status(response.status().as_u16()),
        Err(e) => DeliveryOutcome::TransportError(error_chain(&e)),
    }
}

/// reqwest's own message is only "error sending request"; the causes say what happened.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut message = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        message.push_str(": ");
        message.push_str(&cause.to_string());
        source = cause.source();
    }
    message
}

// ---------------------------------------------------------------------------------------------
// Payloads, field for field as the event-type page shows them (structs keep the documented key
// order, which a `serde_json::Value` would sort).

/// `data` of `contact.created` and `contact.updated`.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ContactData<'a> {
    contact_id: &'a str,
    email: &'a str,
    name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    changed_fields: Option<&'a [&'a str]>,
}

/// The recipient of an email event; `name` is null for an address the fake has no contact
/// for (AutoSend sends null names too, see `email.received`).
#[derive(Serialize)]
struct Recipient<'a> {
    email: &'a str,
    name: Option<&'a str>,
}

/// The common fields of email events, then the event's own.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct EmailData<'a, E: Serialize> {
    email_id: String,
    from: &'a str,
    to: Recipient<'a>,
    subject: &'a str,
    test: bool,
    #[serde(flatten)]
    extra: E,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Bounce {
    bounce_type: &'static str,
    bounce_sub_type: &'static str,
    reason: &'static str,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Complaint {
    complaint_type: &'static str,
}

/// `data` of `email.unsubscribed`: the page says it carries no address, for privacy.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Unsubscribed<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    email_id: Option<&'a str>,
    test: bool,
}

/// The sender and subject of the emails the fake pretends to have sent.
const FROM: &str = "sender@fake-autosend.test";
const SUBJECT: &str = "Message from the fake AutoSend";

impl Hub {
    /// `email.bounced` for `email` (already normalised); `name` is the contact's, if known.
    pub fn emit_bounce(
        &self,
        email: &str,
        name: Option<&str>,
        bounce_type: BounceType,
    ) -> Result<String, EmitError> {
        self.emit_email_event(
            "email.bounced",
            email,
            name,
            Bounce {
                bounce_type: bounce_type.as_str(),
                bounce_sub_type: "General",
                reason: bounce_type.reason(),
            },
        )
    }

    /// `email.spam_reported` for `email` (already normalised).
    pub fn emit_spam_report(&self, email: &str, name: Option<&str>) -> Result<String, EmitError> {
        self.emit_email_event(
            "email.spam_reported",
            email,
            name,
            Complaint {
                complaint_type: "abuse",
            },
        )
    }

    pub fn emit_unsubscribed(&self, email_id: Option<&str>) -> Result<String, EmitError> {
        self.emit(
            "email.unsubscribed",
            &Unsubscribed {
                email_id,
                test: false,
            },
        )
    }

    fn emit_email_event<E: Serialize>(
        &self,
        event_type: &str,
        email: &str,
        name: Option<&str>,
        extra: E,
    ) -> Result<String, EmitError> {
        self.emit(
            event_type,
            &EmailData {
                email_id: self.next_email_id(),
                from: FROM,
                to: Recipient { email, name },
                subject: SUBJECT,
                test: false,
                extra,
            },
        )
    }
}

impl Hub {
    /// `contact.created`, or `contact.updated` with `changed_fields`, for a stored contact.
    pub fn emit_contact(
        &self,
        event_type: &str,
        contact: &Contact,
        changed_fields: Option<&[&str]>,
    ) -> Result<String, EmitError> {
        self.emit(
            event_type,
            &ContactData {
                contact_id: &contact.id,
                email: &contact.email,
                name: contact.name(),
                changed_fields,
            },
        )
    }
}
