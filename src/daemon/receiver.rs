//! The webhook listener: `POST /webhooks/autosend` on `--webhook-listen`, apart from the
//! metrics and status listener (AutoSend must reach this one; nobody outside should reach
//! the other).
//!
//! A delivery is answered only after what it says is committed: verified (HMAC-SHA256 of
//! the raw body, constant-time), parsed, judged fresh by its *signed* `createdAt`, and either
//! recognised as a retry or replay (digest of the body, or delivery id, within the window:
//! 200, nothing changes) or written to the store's inbox (200). The handling (feeding
//! policies, resyncing lists) happens afterwards in the daemon's loop, from the inbox, so a
//! crash after the answer loses nothing.
//!
//! Everything before the signature check is bounded and cheap: at most
//! [`MAX_IN_FLIGHT`] deliveries at once and [`IN_FLIGHT_PER_ADDRESS`] from one address
//! (beyond that 503, which AutoSend retries), bodies capped at
//! [`webhook::event::MAX_BODY_BYTES`] (413) and given [`BODY_TIMEOUT`] to arrive (408). An address whose deliveries keep
//! being refused (more than [`REFUSALS_PER_SECOND`] in a second) gets 429 before its body
//! is even read, for the rest of that second: unverified traffic is throttled by where it
//! comes from, so AutoSend's own deliveries, which verify, are never throttled by it (behind
//! a proxy every delivery comes from the proxy's address: put the limit there). Refusals
//! (4xx) change nothing. Nothing here touches the reconcile path: it only writes the inbox
//! and wakes the loop.

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use axum::Router;
use axum::body::Body;
use axum::extract::{ConnectInfo, Path as AxumPath, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use tokio::sync::{Notify, Semaphore};
use tokio_util::sync::CancellationToken;

use crate::contact::AccountName;
use crate::metrics::Metrics;
use crate::store::{InboxEvent, Received, Store};
use crate::webhook::{self, EventKind, Refused};

/// Deliveries handled at once; more wait for AutoSend's retry (5, 10, 20 s).
pub const MAX_IN_FLIGHT: usize = 32;

/// Refused deliveries an address may make in one second before it is answered 429 unread.
pub const REFUSALS_PER_SECOND: u32 = 20;

/// Deliveries one address may have in flight at once. AutoSend sends at most 5 at a time;
/// without this, one address holding [`MAX_IN_FLIGHT`] slow requests (a body trickled a
/// byte at a time) would answer every genuine delivery 503 until AutoSend gives up.
pub const IN_FLIGHT_PER_ADDRESS: u32 = 8;

/// How long a body may take to arrive. AutoSend's bodies are under 2 KB and arrive at once;
/// a body still trickling in after this is refused (and counted as a refusal of its address).
pub const BODY_TIMEOUT: Duration = Duration::from_secs(5);

/// Addresses remembered for throttling; beyond it the memory starts again (a flood from
/// many addresses is bounded by [`MAX_IN_FLIGHT`] instead).
const MAX_TRACKED: usize = 10_000;

/// The route AutoSend posts to.
pub const PATH: &str = "/webhooks/autosend";

/// The webhook secret: never printed, not even by `Debug`.
#[derive(Clone)]
pub struct Secret(Arc<[u8]>);

impl Secret {
    /// A secret as read from a file or the environment, surrounding whitespace removed (a
    /// file written by `echo` ends with a newline the sender never signed with).
    pub fn new(text: &str) -> Option<Secret> {
        let t = text.trim();
        (!t.is_empty()).then(|| Secret(Arc::from(t.as_bytes())))
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

/// How the listener judges deliveries.
#[derive(Clone, Debug)]
pub struct WebhookConfig {
    pub listen: SocketAddr,
    /// Each account's secret: its route is `PATH/{account}`, and its events feed only its
    /// own policies.
    pub secrets: BTreeMap<AccountName, Secret>,
    /// The account `PATH` itself serves (the default account): what AutoSend was pointed
    /// at before there were accounts keeps working.
    pub bare: Option<AccountName>,
    /// Accounts whose secret could not be read, with why: their route answers 503 (AutoSend
    /// retries) and the daemon is not ready, while the other accounts' routes serve.
    pub unreadable: BTreeMap<AccountName, String>,
    /// Events older than this are refused, and retries are recognised for this long.
    pub window: Duration,
    /// How far in the future an event may be dated.
    pub skew: Duration,
}

impl WebhookConfig {
    /// One secret, for the default account, on `PATH`.
    pub fn new(listen: SocketAddr, secret: Secret) -> WebhookConfig {
        WebhookConfig::for_accounts(
            listen,
            BTreeMap::from([(AccountName::default_account(), secret)]),
            Some(AccountName::default_account()),
        )
    }

    pub fn for_accounts(
        listen: SocketAddr,
        secrets: BTreeMap<AccountName, Secret>,
        bare: Option<AccountName>,
    ) -> WebhookConfig {
        WebhookConfig {
            listen,
            secrets,
            bare,
            unreadable: BTreeMap::new(),
            window: webhook::DEFAULT_WINDOW,
            skew: webhook::DEFAULT_SKEW,
        }
    }
}

struct Receiver {
    config: WebhookConfig,
    store: Arc<Store>,
    metrics: Arc<Metrics>,
    /// Wakes the daemon's loop: an event is in the inbox.
    inbox: Arc<Notify>,
    in_flight: Semaphore,
    refusals: Mutex<Refusals>,
    /// Deliveries in flight per source address.
    by_address: Mutex<HashMap<IpAddr, u32>>,
}

/// One delivery in flight from an address; released on drop.
struct AddressSlot<'a> {
    by_address: &'a Mutex<HashMap<IpAddr, u32>>,
    ip: IpAddr,
}

impl<'a> AddressSlot<'a> {
    fn take(by_address: &'a Mutex<HashMap<IpAddr, u32>>, ip: IpAddr) -> Option<Self> {
        let mut map = by_address.lock().unwrap_or_else(|p| p.into_inner());
        let n = map.entry(ip).or_insert(0);
        if *n >= IN_FLIGHT_PER_ADDRESS {
            return None;
        }
        *n += 1;
        Some(AddressSlot { by_address, ip })
    }
}

impl Drop for AddressSlot<'_> {
    fn drop(&mut self) {
        let mut map = self.by_address.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = map.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                map.remove(&self.ip);
            }
        }
    }
}

/// Refused deliveries per source address in the current second.
#[derive(Default)]
struct Refusals {
    second: u64,
    by_address: HashMap<IpAddr, u32>,
}

impl Refusals {
    fn roll(&mut self, now: u64) {
        if self.second != now || self.by_address.len() > MAX_TRACKED {
            self.second = now;
            self.by_address.clear();
        }
    }

    fn throttled(&mut self, ip: IpAddr, now: u64) -> bool {
        self.roll(now);
        self.by_address
            .get(&ip)
            .is_some_and(|&n| n >= REFUSALS_PER_SECOND)
    }

    fn note(&mut self, ip: IpAddr, now: u64) {
        self.roll(now);
        *self.by_address.entry(ip).or_insert(0) += 1;
    }
}

fn this_second() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Binds the listener and serves until `stop`.
pub async fn serve(
    config: WebhookConfig,
    store: Arc<Store>,
    metrics: Arc<Metrics>,
    inbox: Arc<Notify>,
    stop: CancellationToken,
) -> std::io::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    let listener = tokio::net::TcpListener::bind(config.listen).await?;
    let addr = listener.local_addr()?;
    let receiver = Arc::new(Receiver {
        config,
        store,
        metrics,
        inbox,
        in_flight: Semaphore::new(MAX_IN_FLIGHT),
        refusals: Mutex::new(Refusals::default()),
        by_address: Mutex::new(HashMap::new()),
    });
    let app = Router::new()
        .route(PATH, post(deliver_bare))
        .route(&format!("{PATH}/{{account}}"), post(deliver_account))
        .with_state(receiver);
    let task = tokio::spawn(async move {
        let service = app.into_make_service_with_connect_info::<SocketAddr>();
        let _ = axum::serve(listener, service)
            .with_graceful_shutdown(stop.cancelled_owned())
            .await;
    });
    Ok((addr, task))
}

fn answer(status: StatusCode, result: &str, reason: &str) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        serde_json::json!({"result": result, "reason": reason}).to_string(),
    )
        .into_response()
}

fn refused(r: &Refused) -> (StatusCode, &'static str) {
    match r {
        Refused::NoSecret
        | Refused::MissingSignature
        | Refused::SignatureNotHex
        | Refused::SignatureWrongLength { .. }
        | Refused::BadSignature => (StatusCode::UNAUTHORIZED, "bad_signature"),
        Refused::TooLarge { .. } => (StatusCode::PAYLOAD_TOO_LARGE, "invalid"),
        Refused::Stale { .. } | Refused::Future { .. } => (StatusCode::BAD_REQUEST, "stale"),
        _ => (StatusCode::BAD_REQUEST, "invalid"),
    }
}

fn unix_ms(t: SystemTime) -> i64 {
    match t.duration_since(SystemTime::UNIX_EPOCH) {
        Ok(d) => d.as_millis().min(i64::MAX as u128) as i64,
        Err(_) => 0,
    }
}

async fn deliver_bare(
    State(r): State<Arc<Receiver>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let account = r.config.bare.clone();
    deliver(r, account, peer, headers, body).await
}

async fn deliver_account(
    State(r): State<Arc<Receiver>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    AxumPath(account): AxumPath<String>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let account = AccountName::parse(&account).ok();
    deliver(r, account, peer, headers, body).await
}

/// One delivery for `account` (`None`: a route no account serves, refused like a bad
/// signature, as it is most likely probing).
async fn deliver(
    r: Arc<Receiver>,
    account: Option<AccountName>,
    peer: SocketAddr,
    headers: HeaderMap,
    body: Body,
) -> Response {
    // Throttled addresses first: answering them takes no delivery slot.
    if r.refusals
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .throttled(peer.ip(), this_second())
    {
        r.metrics.webhook_event("other", "throttled");
        return answer(
            StatusCode::TOO_MANY_REQUESTS,
            "throttled",
            "too many refused deliveries from this address; retry later",
        );
    }
    let Some(_slot) = AddressSlot::take(&r.by_address, peer.ip()) else {
        r.metrics.webhook_event("other", "unavailable");
        return answer(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            "too many deliveries at once from this address; retry later",
        );
    };
    let Ok(_permit) = r.in_flight.try_acquire() else {
        r.metrics.webhook_event("other", "unavailable");
        return answer(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            "too many deliveries at once; retry later",
        );
    };
    // A signed delivery refused afterwards (a stale retry, a payload we cannot use) comes
    // from whoever holds the secret: it does not count toward its address's throttle, or a
    // few of them would turn away AutoSend's other deliveries.
    let refuse_signed = |status: StatusCode, result: &str, event_type: &str, reason: &str| {
        r.metrics.webhook_event(event_type, result);
        answer(status, result, reason)
    };
    let refuse = |status: StatusCode, result: &str, event_type: &str, reason: &str| {
        r.refusals
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .note(peer.ip(), this_second());
        r.metrics.webhook_event(event_type, result);
        answer(status, result, reason)
    };
    let header_text = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let json = header_text(header::CONTENT_TYPE.as_str()).is_some_and(|ct| {
        ct.split(';')
            .next()
            .is_some_and(|m| m.trim().eq_ignore_ascii_case("application/json"))
    });
    if !json {
        return refuse(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "invalid",
            "other",
            "Content-Type must be application/json",
        );
    }
    let max = webhook::event::MAX_BODY_BYTES;
    let read = tokio::time::timeout(BODY_TIMEOUT, axum::body::to_bytes(body, max + 1)).await;
    let Ok(read) = read else {
        return refuse(
            StatusCode::REQUEST_TIMEOUT,
            "invalid",
            "other",
            "the body did not arrive in time",
        );
    };
    let Ok(body) = read else {
        return refuse(
            StatusCode::PAYLOAD_TOO_LARGE,
            "invalid",
            "other",
            &format!("the body is over the {max}-byte limit, or could not be read"),
        );
    };
    if body.len() > max {
        let reason = Refused::TooLarge {
            got: body.len(),
            max,
        };
        return refuse(
            StatusCode::PAYLOAD_TOO_LARGE,
            "invalid",
            "other",
            &reason.to_string(),
        );
    }
    // Signature first: nothing unauthenticated is parsed. Each account's route checks
    // its own secret, so one account's secret cannot feed another's policies.
    if let Some(a) = account
        .as_ref()
        .filter(|a| r.config.unreadable.contains_key(*a))
    {
        let reason = format!("the webhook secret of account {a} cannot be read; retry later");
        return refuse_signed(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            "other",
            &reason,
        );
    }
    let Some((account, secret)) = account.and_then(|a| {
        let secret = r.config.secrets.get(&a)?;
        Some((a, secret))
    }) else {
        return refuse(
            StatusCode::NOT_FOUND,
            "invalid",
            "other",
            "no account receives webhooks on this path",
        );
    };
    if let Err(e) = webhook::verify_signature(&secret.0, &body, header_text("x-webhook-signature"))
    {
        let (status, result) = refused(&e);
        tracing::warn!(reason = %e, peer = %peer.ip(), "webhook delivery refused");
        return refuse(status, result, "other", &e.to_string());
    }
    let event = match webhook::parse(
        &body,
        header_text("x-webhook-event"),
        &webhook::Limits::default(),
    ) {
        Ok(e) => e,
        Err(e) => {
            let (status, result) = refused(&e);
            tracing::warn!(reason = %e, "signed webhook delivery refused");
            return refuse_signed(status, result, "other", &e.to_string());
        }
    };
    let event_type = event.kind.event_type().to_string();
    let now = SystemTime::now();
    if let Err(e) = webhook::check_fresh(event.created_at, now, r.config.window, r.config.skew) {
        let (status, result) = refused(&e);
        tracing::warn!(event = %event_type, reason = %e, "webhook event refused");
        return refuse_signed(status, result, &event_type, &e.to_string());
    }
    let (email, contact_id, bounce_type) = match &event.kind {
        EventKind::Bounced { email, bounce_type } => (
            Some(email.as_str().to_string()),
            None,
            bounce_type.map(|b| b.as_str().to_string()),
        ),
        EventKind::SpamReported { email } => (Some(email.as_str().to_string()), None, None),
        EventKind::ContactChanged {
            email, contact_id, ..
        } => (
            email.as_ref().map(|e| e.as_str().to_string()),
            contact_id.as_ref().map(|c| c.as_str().to_string()),
            None,
        ),
        // Counted, never acted on: nothing to keep.
        EventKind::NoAddress { .. } | EventKind::Other { .. } => {
            r.metrics.webhook_event(&event_type, "ignored");
            return answer(
                StatusCode::OK,
                "ignored",
                "this event type names no contact to act on",
            );
        }
    };
    let inbox = InboxEvent {
        digest: event.digest,
        delivery_id: header_text("x-webhook-delivery-id").map(str::to_string),
        event_type: event_type.clone(),
        created_at_ms: unix_ms(event.created_at),
        email,
        contact_id,
        bounce_type,
        account: account.to_string(),
    };
    let now_ms = unix_ms(now);
    let keep_since = now_ms - (r.config.window + r.config.skew).as_millis() as i64;
    let store = r.store.clone();
    let received =
        tokio::task::spawn_blocking(move || store.receive_event(&inbox, now_ms, keep_since)).await;
    match received {
        Ok(Ok(Received::Accepted(id))) => {
            r.metrics.webhook_event(&event_type, "accepted");
            tracing::info!(event = %event_type, inbox = id, "webhook event accepted");
            r.inbox.notify_one();
            answer(StatusCode::OK, "accepted", "committed")
        }
        Ok(Ok(Received::Duplicate)) => {
            r.metrics.webhook_event(&event_type, "duplicate");
            answer(StatusCode::OK, "duplicate", "already received")
        }
        Ok(Err(e)) => {
            // Not committed: AutoSend must retry, so no 2xx.
            tracing::error!(error = %e, "cannot commit a webhook event; asking for a retry");
            r.metrics.webhook_event(&event_type, "unavailable");
            answer(
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                "the state store cannot be written; retry later",
            )
        }
        Err(e) => {
            tracing::error!(error = %e, "webhook commit panicked");
            r.metrics.webhook_event(&event_type, "unavailable");
            answer(
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                "retry later",
            )
        }
    }
}
