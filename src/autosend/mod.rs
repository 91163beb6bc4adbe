//! The AutoSend API client: typed calls, pacing, retries, and errors a caller can act on.
//!
//! Contract (see `shared/autosend-api/README.md`): bearer auth, `{"success", "data"}` bodies,
//! `{"success": false, "error": {"message", "code", "details"?, "retryAfter"?}}` errors.
//!
//! Every request goes through one [`Pacer`] shared by the whole process, then through
//! [`Client::send`], the single place that decides what a response means. The server is not
//! trusted: it may be a proxy, a misconfigured `AUTOSEND_API_URL` or simply wrong.
//! - 2xx with a JSON body, `"success": true` and an object `data`: an answer. Any other 2xx
//!   is [`ApiError::Protocol`], never retried and never taken as done (for remove, `data`
//!   must also hold `removed` and/or `notInList` as non-negative whole numbers);
//! - 3xx: [`ApiError::Redirect`]; never followed, since following would send the key and the
//!   contacts wherever `Location` points;
//! - 429: wait as the server says (`retryAfter` in seconds or as an epoch timestamp, the
//!   `Retry-After` header, or `X-RateLimit-Reset`), pausing every request, then retry; a wait
//!   that is not a finite, plausible number is 1 s, and no wait exceeds an hour;
//! - 5xx, 408, timeouts, dropped connections: retry with exponential backoff and full jitter
//!   (safe: remove is idempotent, a second call reports `notInList`); then
//!   [`ApiError::Server`] or [`ApiError::Transport`], naming the URL;
//! - 401/402/403: [`ApiError::Auth`], which stops the run; never retried;
//! - 404: [`ApiError::NotFound`]; 400, 413 and other 4xx: [`ApiError::Rejected`]; splitting a
//!   refused batch is the caller's decision.
//!
//! A body larger than [`MAX_BODY_BYTES`] is not read ([`ApiError::Protocol`]). Every text
//! taken from a response (messages, codes, details, `Location`, per-contact errors) passes
//! through one sanitiser before it reaches an error, a log line or the store: the key and any
//! `Bearer` token are redacted, control characters replaced, and the text cut short.

pub mod pacing;

use std::fmt;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use backon::BackoffBuilder;
use rand::Rng;
use reqwest::header::{HeaderMap, HeaderValue};
use reqwest::{Method, StatusCode};
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use serde_json::{Map, Value};

pub use pacing::{Pacer, RateLimits};

pub const DEFAULT_BASE_URL: &str = "https://api.autosend.com/v1";

/// The largest response body read. This API's biggest answer, a search page of 100 contacts,
/// is a few tens of KiB; the bound keeps an endless or huge body from growing the process.
pub const MAX_BODY_BYTES: usize = 4 * 1024 * 1024;

/// The most bytes of one server text kept (before the ellipsis): enough for any real message,
/// and a 10 MB message can no longer fill logs, the state store and `/status`.
const MAX_SERVER_TEXT: usize = 300;

/// What replaces the key, or a bearer token, in server text.
const REDACTED: &str = "[REDACTED]";

/// A 429 whose wait cannot be read (missing, NaN, negative, absurd) waits this long.
const DEFAULT_RATE_LIMIT_WAIT: Duration = Duration::from_secs(1);
/// A wait of zero would retry at once into the same window.
const MIN_RATE_LIMIT_WAIT: Duration = Duration::from_millis(250);
/// A bogus but plausible wait must not park the daemon for longer than this.
const MAX_RATE_LIMIT_WAIT: Duration = Duration::from_secs(3600);
/// `X-RateLimit-Remaining: 0` pauses until the reset, at most this long (windows are a minute).
const MAX_RESET_WAIT: Duration = Duration::from_secs(61);
/// A wait further ahead than a day is not a rate limit but a wrong number (a timestamp in
/// milliseconds, 1e300): it gets the default wait rather than the hour's cap.
const MAX_PLAUSIBLE_WAIT_SECS: f64 = 86_400.0;
/// The server is JavaScript: above `Number.MAX_SAFE_INTEGER` a number is no longer exact, so
/// it cannot be a count. Keeping counts below it also keeps their sums far from overflowing.
const MAX_COUNT: u64 = (1 << 53) - 1;

/// Everything but RFC 3986's unreserved characters is encoded, so an id is always exactly one
/// path segment (validated ids never need it; this is the second lock on the door).
const PATH_SEGMENT: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~');

/// An API key. It has no `Display`, its `Debug` is redacted, and it is exposed only to build
/// the `Authorization` header, so it cannot reach a log line, an error or the store.
#[derive(Clone)]
pub struct ApiKey(Arc<SecretString>);

impl ApiKey {
    pub fn new(key: &str) -> ApiKey {
        ApiKey(Arc::new(SecretString::from(key.trim().to_string())))
    }

    /// Only for the `Authorization` header and for redacting the key out of server text.
    fn expose(&self) -> &str {
        self.0.expose_secret()
    }
}

impl fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ApiKey([REDACTED])")
    }
}

/// Why a key could not be read. Messages never contain the key.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error(
        "no API key: set AUTOSEND_API_KEY or pass --api-key-file PATH (plan and status need none)"
    )]
    MissingKey,
    #[error("cannot read the API key file {path}: {reason}")]
    KeyFile { path: String, reason: String },
    #[error("the API key file {0} is empty")]
    EmptyKeyFile(String),
    #[error("AUTOSEND_API_URL {0:?} is not an http(s) URL")]
    BadUrl(String),
    #[error(
        "the API key contains characters that cannot be sent in an HTTP header (a line break \
         or a control character inside the key?); check AUTOSEND_API_KEY / --api-key-file"
    )]
    BadKey,
}

/// Where and how to call AutoSend.
#[derive(Clone, Debug)]
pub struct ClientConfig {
    pub base_url: String,
    pub api_key: ApiKey,
    pub project_id: Option<String>,
    pub rate_limits: RateLimits,
    pub connect_timeout: Duration,
    pub request_timeout: Duration,
    /// Retries of one request after 5xx / transport errors.
    pub max_retries: usize,
    /// 429s tolerated for one request before giving up (each is waited out first).
    pub max_rate_limited: usize,
    /// Bounds of the exponential backoff.
    pub min_backoff: Duration,
    pub max_backoff: Duration,
}

impl ClientConfig {
    pub fn new(base_url: &str, api_key: ApiKey) -> ClientConfig {
        ClientConfig {
            base_url: base_url.trim_end_matches('/').to_string(),
            api_key,
            project_id: None,
            rate_limits: RateLimits::default(),
            connect_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(30),
            max_retries: 6,
            max_rate_limited: 30,
            min_backoff: Duration::from_millis(500),
            max_backoff: Duration::from_secs(30),
        }
    }

    /// Reads the key from `--api-key-file` or `AUTOSEND_API_KEY`, the base URL from
    /// `AUTOSEND_API_URL` and the project from `AUTOSEND_PROJECT_ID`.
    pub fn from_env(api_key_file: Option<&Path>) -> Result<ClientConfig, ConfigError> {
        let key = match api_key_file {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|e| ConfigError::KeyFile {
                    path: path.display().to_string(),
                    reason: crate::manifest::source::io_reason(&e),
                })?;
                if text.trim().is_empty() {
                    return Err(ConfigError::EmptyKeyFile(path.display().to_string()));
                }
                ApiKey::new(&text)
            }
            None => match std::env::var("AUTOSEND_API_KEY") {
                Ok(k) if !k.trim().is_empty() => ApiKey::new(&k),
                _ => return Err(ConfigError::MissingKey),
            },
        };
        if HeaderValue::from_str(&format!("Bearer {}", key.expose())).is_err() {
            return Err(ConfigError::BadKey);
        }
        let base = std::env::var("AUTOSEND_API_URL")
            .ok()
            .filter(|s| !s.trim().is_empty())
            .unwrap_or_else(|| DEFAULT_BASE_URL.to_string());
        if !(base.starts_with("https://") || base.starts_with("http://")) {
            return Err(ConfigError::BadUrl(base));
        }
        let mut config = ClientConfig::new(&base, key);
        config.project_id = std::env::var("AUTOSEND_PROJECT_ID")
            .ok()
            .filter(|s| !s.trim().is_empty());
        Ok(config)
    }
}

/// Errors a caller acts on. None of them carries the key: every text in them that came from
/// the server went through [`sanitise`].
#[derive(Clone, Debug, thiserror::Error)]
pub enum ApiError {
    /// 401, 402, 403: the key is missing, invalid, unpaid or lacks permission. Stops the run.
    #[error("AutoSend refused the API key ({status} {code}): {message}; check AUTOSEND_API_KEY / --api-key-file{}", if *status == 402 { " and the account's plan" } else { "" })]
    Auth {
        status: u16,
        code: String,
        message: String,
    },
    #[error("not found (404): {message}")]
    NotFound { message: String },
    /// 400 (or 413): the request as sent is refused; retrying it unchanged cannot help.
    #[error("request refused ({status} {code}): {message}")]
    Rejected {
        status: u16,
        code: String,
        message: String,
    },
    /// A 3xx. Never followed: the request carries the key and the contacts, and the place it
    /// points to is not the API the operator configured. Not retried.
    #[error(
        "AutoSend answered {status}, redirecting to {location}; listwarden does not follow \
         redirects (they would carry the API key and the contacts elsewhere): check \
         AUTOSEND_API_URL, it should be the API's own address (like {DEFAULT_BASE_URL})"
    )]
    Redirect { status: u16, location: String },
    #[error("rate limited {0} times in a row; giving up on this request")]
    RateLimited(usize),
    #[error(
        "AutoSend server error ({status}) after {attempts} attempts at {url}: {message}; \
         AutoSend may be down: try again later, and check AUTOSEND_API_URL"
    )]
    Server {
        status: u16,
        url: String,
        message: String,
        attempts: usize,
    },
    #[error(
        "cannot reach AutoSend at {url} after {attempts} attempts: {message}; check \
         AUTOSEND_API_URL and the network"
    )]
    Transport {
        url: String,
        message: String,
        attempts: usize,
    },
    /// An answer that is not one: malformed, not an explicit success, or too large. The
    /// request is not taken as done, and not retried (the same server would answer the same).
    #[error("unexpected response from AutoSend: {0}")]
    Protocol(String),
    #[error("stopped: shutting down")]
    Cancelled,
}

impl ApiError {
    pub fn is_auth(&self) -> bool {
        matches!(self, ApiError::Auth { .. })
    }
}

/// Counters of one caller's requests (one list's reconcile, say), for summaries.
#[derive(Debug, Default)]
pub struct Tally {
    pub requests: AtomicU64,
    pub rate_limited: AtomicU64,
    pub retries: AtomicU64,
}

impl Tally {
    pub fn requests(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }
    pub fn rate_limited(&self) -> u64 {
        self.rate_limited.load(Ordering::Relaxed)
    }
}

/// Hook for metrics: told about every HTTP exchange. The default does nothing.
pub trait Observer: Send + Sync {
    /// `status` is `None` for a transport error.
    fn request(&self, _endpoint: &'static str, _status: Option<u16>, _elapsed: Duration) {}
}

struct NoObserver;
impl Observer for NoObserver {}

/// One batch for the remove endpoint: emails or contact ids, never both.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RemoveBatch {
    Emails(Vec<String>),
    ContactIds(Vec<String>),
}

impl RemoveBatch {
    pub fn len(&self) -> usize {
        match self {
            RemoveBatch::Emails(v) | RemoveBatch::ContactIds(v) => v.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn entries(&self) -> &[String] {
        match self {
            RemoveBatch::Emails(v) | RemoveBatch::ContactIds(v) => v,
        }
    }

    fn body(&self) -> Value {
        match self {
            RemoveBatch::Emails(v) => serde_json::json!({ "emails": v }),
            RemoveBatch::ContactIds(v) => serde_json::json!({ "contactIds": v }),
        }
    }
}

/// A contact the server named in `errors`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ContactError {
    pub contact: String,
    pub message: String,
}

/// The `data` of a successful remove. The counts are the server's, as sent (whole numbers up
/// to 2^53 - 1): nothing here checks them against the batch; that is the caller's job.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RemoveOutcome {
    pub removed: u64,
    pub not_in_list: u64,
    pub errors: Vec<ContactError>,
}

impl RemoveOutcome {
    /// How many contacts the answer accounts for: `removed + notInList + errors`, saturating,
    /// so that a server's oversized counts cannot overflow. Compare it with the batch's size:
    /// fewer means contacts went unmentioned, more means the counts cannot all be about it.
    pub fn accounted(&self) -> u64 {
        self.removed
            .saturating_add(self.not_in_list)
            .saturating_add(self.errors.len() as u64)
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ListInfo {
    #[serde(default, alias = "_id", deserialize_with = "lenient_string")]
    pub id: String,
    #[serde(default, deserialize_with = "lenient_string")]
    pub name: String,
    #[serde(rename = "type", default = "default_list_type")]
    pub kind: String,
    #[serde(default, deserialize_with = "lenient_u64")]
    pub contact_count: u64,
}

/// A count sent as a number or as a numeric string (`"6"`): reading it strictly would fail a
/// list over a formatting detail the documentation does not pin down. Null is 0.
fn lenient_u64<'de, D: serde::Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    let v = Value::deserialize(d)?;
    count_of(&v)
        .map(Option::unwrap_or_default)
        .map_err(serde::de::Error::custom)
}

/// Reads a count: a whole number from 0 to [`MAX_COUNT`], as a JSON number (`6`, `6.0`) or
/// a string of digits (`"6"`). Negative, fractional, non-finite, exponent-sized or
/// non-numeric values are errors, never a guess. `None` for null.
fn count_of(v: &Value) -> Result<Option<u64>, String> {
    let n = match v {
        Value::Null => return Ok(None),
        Value::Number(n) => n.as_u64().or_else(|| {
            n.as_f64()
                .filter(|f| f.is_finite() && *f >= 0.0 && f.fract() == 0.0)
                .filter(|f| *f <= MAX_COUNT as f64)
                .map(|f| f as u64)
        }),
        Value::String(s) => {
            let t = s.trim();
            if !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit()) {
                t.parse::<u64>().ok()
            } else {
                None
            }
        }
        _ => None,
    };
    match n {
        Some(n) if n <= MAX_COUNT => Ok(Some(n)),
        // The value is described, not quoted: a string may hold anything, the key included.
        _ => Err(format!(
            "is {}, not a count (a whole number from 0 to {MAX_COUNT})",
            match v {
                Value::Number(n) => n.to_string(),
                Value::String(_) => "a string that is no whole number".to_string(),
                Value::Bool(b) => b.to_string(),
                Value::Array(_) => "a list".to_string(),
                _ => "an object".to_string(),
            }
        )),
    }
}

/// A number the server sent to say how long to wait: a JSON number or a numeric string.
/// Only finite values: `"NaN"` and `"inf"` parse as floats, and must not reach a `Duration`.
fn number_of(v: &Value) -> Option<f64> {
    v.as_f64()
        .or_else(|| v.as_str().and_then(|s| s.trim().parse().ok()))
        .filter(|f: &f64| f.is_finite())
}

/// An id or a text sent as a string or a number; null is empty.
fn lenient_string<'de, D: serde::Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    match Value::deserialize(d)? {
        Value::Null => Ok(String::new()),
        Value::String(s) => Ok(s),
        Value::Number(n) => Ok(n.to_string()),
        other => Err(serde::de::Error::custom(format!("{other} is not a string"))),
    }
}

fn default_list_type() -> String {
    "list".into()
}

impl ListInfo {
    pub fn is_segment(&self) -> bool {
        self.kind.eq_ignore_ascii_case("segment")
    }
}

/// A member of a list, as the search endpoint names it. The id is also read from `_id` or
/// `contactId`; a member without one makes the read incomplete for ids (see `observe`).
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
pub struct Member {
    #[serde(
        default,
        alias = "_id",
        alias = "contactId",
        deserialize_with = "lenient_string"
    )]
    pub id: String,
    #[serde(default, deserialize_with = "lenient_string")]
    pub email: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
pub struct Pagination {
    #[serde(default, deserialize_with = "lenient_u64")]
    pub page: u64,
    #[serde(default, deserialize_with = "lenient_u64")]
    pub limit: u64,
    #[serde(deserialize_with = "lenient_u64")]
    pub total: u64,
    #[serde(default, deserialize_with = "lenient_u64")]
    pub pages: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
pub struct MemberPage {
    pub contacts: Vec<Member>,
    pub pagination: Pagination,
}

/// The client. Cheap to clone; clones share the connection pool and the pacer.
#[derive(Clone)]
pub struct Client {
    http: reqwest::Client,
    config: Arc<ClientConfig>,
    pacer: Arc<Pacer>,
    observer: Arc<dyn Observer>,
    cancel: tokio_util::sync::CancellationToken,
}

impl fmt::Debug for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Client")
            .field("base_url", &without_userinfo(&self.config.base_url))
            .finish_non_exhaustive()
    }
}

/// One response, read within bounds.
struct Exchange {
    status: StatusCode,
    headers: HeaderMap,
    body: Vec<u8>,
}

/// Why no response could be read.
enum Failure {
    /// The connection failed, timed out or dropped: worth retrying. The text is sanitised.
    Transport(String),
    /// The body is larger than [`MAX_BODY_BYTES`]: the same server would send it again.
    TooLarge(StatusCode),
}

impl Client {
    pub fn new(config: ClientConfig) -> Result<Client, ApiError> {
        // reqwest is built without a default crypto provider (no aws-lc C build); ring is
        // installed once for the process. A second install is a harmless no-op.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let http = reqwest::Client::builder()
            .user_agent(concat!("listwarden/", env!("CARGO_PKG_VERSION")))
            .connect_timeout(config.connect_timeout)
            .timeout(config.request_timeout)
            .pool_idle_timeout(Duration::from_secs(60))
            // reqwest follows redirects by default, re-sending the body: a 307 to another host
            // would hand it the contacts, and its 200 would confirm them. See ApiError::Redirect.
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| ApiError::Protocol(format!("cannot build the HTTP client: {e}")))?;
        let pacer = Arc::new(Pacer::new(&config.rate_limits));
        Ok(Client {
            http,
            config: Arc::new(config),
            pacer,
            observer: Arc::new(NoObserver),
            cancel: tokio_util::sync::CancellationToken::new(),
        })
    }

    pub fn with_observer(mut self, observer: Arc<dyn Observer>) -> Client {
        self.observer = observer;
        self
    }

    /// Requests not yet sent fail with [`ApiError::Cancelled`] once `token` is cancelled;
    /// one in flight finishes (so its outcome can be recorded).
    pub fn with_cancel(mut self, token: tokio_util::sync::CancellationToken) -> Client {
        self.cancel = token;
        self
    }

    /// The token that stops this client's requests (child tokens stop with it).
    pub fn cancel_token(&self) -> &tokio_util::sync::CancellationToken {
        &self.cancel
    }

    pub fn rate_limits(&self) -> &RateLimits {
        &self.config.rate_limits
    }

    /// The base URL requests go to (for messages: it holds no secret).
    pub fn base_url(&self) -> &str {
        &self.config.base_url
    }

    pub fn pacer(&self) -> &Pacer {
        &self.pacer
    }

    fn url(&self, segments: &[&str]) -> String {
        let mut url = self.config.base_url.clone();
        for s in segments {
            url.push('/');
            url.extend(percent_encoding::utf8_percent_encode(s, PATH_SEGMENT));
        }
        url
    }

    /// `POST /contact-lists/{id}/contacts/remove` with one batch.
    pub async fn remove(
        &self,
        list: &str,
        batch: &RemoveBatch,
        tally: &Tally,
    ) -> Result<RemoveOutcome, ApiError> {
        let url = self.url(&["contact-lists", list, "contacts", "remove"]);
        let data = self
            .send("remove", Method::POST, &url, Some(&batch.body()), tally)
            .await?;
        parse_remove(&data, self.config.api_key.expose()).map_err(|why| {
            ApiError::Protocol(format!(
                "POST {} answered with success but {why}; the batch is not taken as done",
                self.shown_url(&url)
            ))
        })
    }

    /// `GET /contact-lists/{id}`.
    pub async fn get_list(&self, list: &str, tally: &Tally) -> Result<ListInfo, ApiError> {
        let url = self.url(&["contact-lists", list]);
        let data = self
            .send("get_list", Method::GET, &url, None, tally)
            .await?;
        self.typed(&url, "the contact list object", data)
    }

    /// `POST /contact-lists/contacts/search`: one page of a list's members.
    pub async fn search(
        &self,
        list: &str,
        page: u64,
        limit: u64,
        tally: &Tally,
    ) -> Result<MemberPage, ApiError> {
        let url = self.url(&["contact-lists", "contacts", "search"]);
        let body = serde_json::json!({ "contactListId": list, "page": page, "limit": limit });
        let data = self
            .send("search", Method::POST, &url, Some(&body), tally)
            .await?;
        self.typed(&url, "the search answer", data)
    }

    /// Reads `data` as `T`, naming the field that does not fit. serde's messages quote the
    /// offending value, which is server text, so they are sanitised too.
    fn typed<T: serde::de::DeserializeOwned>(
        &self,
        url: &str,
        what: &str,
        data: Map<String, Value>,
    ) -> Result<T, ApiError> {
        serde_path_to_error::deserialize(Value::Object(data)).map_err(|e| {
            ApiError::Protocol(format!(
                "{}: {what} cannot be read: {}",
                self.shown_url(url),
                self.clean(&e.to_string())
            ))
        })
    }

    fn clean(&self, text: &str) -> String {
        sanitise(text, self.config.api_key.expose())
    }

    /// The URL as logs and errors show it: no userinfo, should `AUTOSEND_API_URL` carry any.
    fn shown_url(&self, url: &str) -> String {
        self.clean(&without_userinfo(url))
    }

    fn authorise(&self, rb: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        let mut auth = HeaderValue::from_str(&format!("Bearer {}", self.config.api_key.expose()))
            .unwrap_or_else(|_| HeaderValue::from_static("Bearer invalid-key-characters"));
        auth.set_sensitive(true);
        let rb = rb.header(reqwest::header::AUTHORIZATION, auth);
        match &self.config.project_id {
            Some(p) => rb.header("x-project-id", p),
            None => rb,
        }
    }

    /// Sends one logical request until it succeeds or fails for good. Returns `data`, which
    /// is always an object.
    async fn send(
        &self,
        endpoint: &'static str,
        method: Method,
        url: &str,
        body: Option<&Value>,
        tally: &Tally,
    ) -> Result<Map<String, Value>, ApiError> {
        let shown = self.shown_url(url);
        let max_attempts = self.config.max_retries + 1;
        let mut backoff = backon::ExponentialBuilder::default()
            .with_min_delay(self.config.min_backoff)
            .with_max_delay(self.config.max_backoff)
            .with_max_times(self.config.max_retries)
            .build();
        // Attempts that failed for a reason worth retrying (transport, 5xx); 429s are counted
        // apart, since waiting them out is not a failure.
        let mut failures = 0usize;
        let mut rate_limited = 0usize;
        loop {
            tokio::select! {
                biased;
                _ = self.cancel.cancelled() => return Err(ApiError::Cancelled),
                _ = self.pacer.acquire() => {}
            }
            tally.requests.fetch_add(1, Ordering::Relaxed);
            let started = std::time::Instant::now();
            let mut rb = self.http.request(method.clone(), url);
            if let Some(body) = body {
                rb = rb.json(body);
            }
            let result = self.exchange(rb).await;
            let observed = match &result {
                Ok(x) => Some(x.status.as_u16()),
                Err(Failure::TooLarge(status)) => Some(status.as_u16()),
                Err(Failure::Transport(_)) => None,
            };
            self.observer.request(endpoint, observed, started.elapsed());
            let Exchange {
                status,
                headers,
                body: bytes,
            } = match result {
                Ok(x) => x,
                Err(Failure::TooLarge(status)) => {
                    return Err(ApiError::Protocol(format!(
                        "{method} {shown} answered {status} with a response body larger than \
                         {} MiB, which was not read; is AUTOSEND_API_URL the AutoSend API?",
                        MAX_BODY_BYTES >> 20
                    )));
                }
                Err(Failure::Transport(message)) => {
                    failures += 1;
                    match backoff.next() {
                        Some(bound) => {
                            tally.retries.fetch_add(1, Ordering::Relaxed);
                            // Full jitter: a uniform wait up to the exponential bound, so that
                            // clients that failed together do not retry together.
                            let wait = full_jitter(bound);
                            tracing::info!(
                                endpoint,
                                "cannot reach AutoSend at {shown} (attempt {failures} of \
                                 {max_attempts}): {message}; retrying in {} ms",
                                wait.as_millis()
                            );
                            self.sleep(wait).await?;
                            continue;
                        }
                        None => {
                            return Err(ApiError::Transport {
                                url: shown,
                                message,
                                attempts: failures,
                            });
                        }
                    }
                }
            };
            self.honour_remaining(&headers);
            if status.is_redirection() {
                let location = headers
                    .get(reqwest::header::LOCATION)
                    .map(|v| self.clean(&String::from_utf8_lossy(v.as_bytes())))
                    .filter(|l| !l.is_empty())
                    .unwrap_or_else(|| "nowhere (no Location header)".to_string());
                return Err(ApiError::Redirect {
                    status: status.as_u16(),
                    location,
                });
            }
            let envelope: Option<Value> = serde_json::from_slice(&bytes).ok();
            if status.is_success() {
                return self.answer(&method, &shown, status, envelope, &bytes);
            }
            match status {
                StatusCode::TOO_MANY_REQUESTS => {
                    rate_limited += 1;
                    tally.rate_limited.fetch_add(1, Ordering::Relaxed);
                    if rate_limited > self.config.max_rate_limited {
                        return Err(ApiError::RateLimited(rate_limited));
                    }
                    let error = envelope
                        .as_ref()
                        .and_then(|v| v.get("error"))
                        .unwrap_or(&Value::Null);
                    let wait = retry_wait(error, &headers, now_unix_f64());
                    tracing::info!(
                        endpoint,
                        wait_ms = wait.as_millis() as u64,
                        "rate limited (429) by {shown} ({rate_limited} of at most {}); waiting \
                         as the server asks",
                        self.config.max_rate_limited
                    );
                    self.pacer.pause_until(tokio::time::Instant::now() + wait);
                    continue;
                }
                StatusCode::UNAUTHORIZED | StatusCode::PAYMENT_REQUIRED | StatusCode::FORBIDDEN => {
                    let (code, message) = self.error_text(envelope.as_ref(), &bytes);
                    return Err(ApiError::Auth {
                        status: status.as_u16(),
                        code,
                        message,
                    });
                }
                StatusCode::NOT_FOUND => {
                    let (_, message) = self.error_text(envelope.as_ref(), &bytes);
                    return Err(ApiError::NotFound { message });
                }
                s if s.is_server_error() || s == StatusCode::REQUEST_TIMEOUT => {
                    failures += 1;
                    match backoff.next() {
                        Some(bound) => {
                            tally.retries.fetch_add(1, Ordering::Relaxed);
                            let wait = full_jitter(bound);
                            tracing::info!(
                                endpoint,
                                status = s.as_u16(),
                                "AutoSend at {shown} answered {s} (attempt {failures} of \
                                 {max_attempts}); retrying in {} ms",
                                wait.as_millis()
                            );
                            self.sleep(wait).await?;
                        }
                        None => {
                            let (_, message) = self.error_text(envelope.as_ref(), &bytes);
                            return Err(ApiError::Server {
                                status: s.as_u16(),
                                url: shown,
                                message,
                                attempts: failures,
                            });
                        }
                    }
                }
                s => {
                    let (code, message) = self.error_text(envelope.as_ref(), &bytes);
                    return Err(ApiError::Rejected {
                        status: s.as_u16(),
                        code,
                        message,
                    });
                }
            }
        }
    }

    /// A 2xx is an answer only when it says so explicitly. Anything else may be a proxy's
    /// page, a half-implemented server or a failure dressed as success; taking it as done
    /// would confirm contacts nobody removed. Not retried: the same server answers the same.
    fn answer(
        &self,
        method: &Method,
        shown: &str,
        status: StatusCode,
        envelope: Option<Value>,
        bytes: &[u8],
    ) -> Result<Map<String, Value>, ApiError> {
        let fail = |why: String| {
            Err(ApiError::Protocol(format!(
                "{method} {shown} answered {status} but {why}; the request is not taken as done"
            )))
        };
        let Some(Value::Object(mut envelope)) = envelope else {
            return fail(format!(
                "the body is not a JSON object: {}",
                self.body_excerpt(bytes)
            ));
        };
        match envelope.get("success") {
            Some(Value::Bool(true)) => {}
            other => {
                let said = match other {
                    None => "holds no `success`".to_string(),
                    Some(v) => format!("says `success` is {}", self.clean(&v.to_string())),
                };
                let whole = Value::Object(envelope);
                let (_, message) = self.error_text(Some(&whole), bytes);
                return fail(format!("{said}, not true ({message})"));
            }
        }
        match envelope.remove("data") {
            Some(Value::Object(data)) => Ok(data),
            None => fail("holds no `data`".to_string()),
            Some(other) => fail(format!(
                "its `data` is not an object: {}",
                self.clean(&other.to_string())
            )),
        }
    }

    /// The code and the message of an error answer, sanitised: `error.message` (with
    /// `error.details`, which say which field was wrong), a bare `error` or `message` string,
    /// or else the start of the body.
    fn error_text(&self, envelope: Option<&Value>, bytes: &[u8]) -> (String, String) {
        let error = envelope.and_then(|v| v.get("error"));
        let code = match error.and_then(|e| e.get("code")) {
            None | Some(Value::Null) => String::new(),
            Some(Value::String(c)) => self.clean(c),
            Some(other) => self.clean(&other.to_string()),
        };
        let stated = error
            .and_then(|e| e.get("message"))
            .and_then(Value::as_str)
            .or_else(|| error.and_then(Value::as_str))
            .or_else(|| {
                envelope
                    .and_then(|v| v.get("message"))
                    .and_then(Value::as_str)
            });
        let mut message = match stated {
            Some(m) => m.to_string(),
            None => return (code, self.body_excerpt(bytes)),
        };
        if let Some(Value::Array(details)) = error.and_then(|e| e.get("details")) {
            let parts: Vec<String> = details
                .iter()
                .take(5)
                .map(|d| {
                    let text = |k: &str| d.get(k).and_then(Value::as_str);
                    match (text("field"), text("message")) {
                        (Some(f), Some(m)) => format!("{f}: {m}"),
                        (None, Some(m)) => m.to_string(),
                        _ => d.to_string(),
                    }
                })
                .collect();
            if !parts.is_empty() {
                message = format!("{message} ({})", parts.join("; "));
            }
        }
        (code, self.clean(&message))
    }

    fn body_excerpt(&self, bytes: &[u8]) -> String {
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return "(an empty body)".to_string();
        }
        self.clean(&String::from_utf8_lossy(bytes))
    }

    async fn exchange(&self, rb: reqwest::RequestBuilder) -> Result<Exchange, Failure> {
        let transport = |e: reqwest::Error| Failure::Transport(self.clean(&describe_transport(&e)));
        let mut resp = self.authorise(rb).send().await.map_err(transport)?;
        let status = resp.status();
        let headers = resp.headers().clone();
        // A declared length over the bound fails before a byte of the body is read; a body
        // of undeclared length is counted as it arrives.
        if resp
            .content_length()
            .is_some_and(|n| n > MAX_BODY_BYTES as u64)
        {
            return Err(Failure::TooLarge(status));
        }
        let mut body = Vec::new();
        while let Some(chunk) = resp.chunk().await.map_err(transport)? {
            if body.len() + chunk.len() > MAX_BODY_BYTES {
                return Err(Failure::TooLarge(status));
            }
            body.extend_from_slice(&chunk);
        }
        Ok(Exchange {
            status,
            headers,
            body,
        })
    }

    async fn sleep(&self, d: Duration) -> Result<(), ApiError> {
        tokio::select! {
            _ = self.cancel.cancelled() => Err(ApiError::Cancelled),
            _ = tokio::time::sleep(d) => Ok(()),
        }
    }

    /// `X-RateLimit-Remaining: 0`: the window is used up; hold every request until it resets
    /// (at most a minute; a reset that cannot be read holds them for the default wait).
    fn honour_remaining(&self, headers: &HeaderMap) {
        if header_f64(headers, "x-ratelimit-remaining") != Some(0.0)
            || !headers.contains_key("x-ratelimit-reset")
        {
            return;
        }
        let wait = header_f64(headers, "x-ratelimit-reset")
            .and_then(|reset| wait_from(reset, now_unix_f64()))
            .unwrap_or(DEFAULT_RATE_LIMIT_WAIT)
            .min(MAX_RESET_WAIT);
        if !wait.is_zero() {
            self.pacer.pause_until(tokio::time::Instant::now() + wait);
        }
    }
}

/// reqwest's messages can include the URL; ours never include headers, so no key leaks.
fn describe_transport(e: &reqwest::Error) -> String {
    let kind = if e.is_timeout() {
        "timed out"
    } else if e.is_connect() {
        "connection failed"
    } else if e.is_body() || e.is_decode() {
        "connection dropped while reading the response"
    } else {
        "request failed"
    };
    let mut source = std::error::Error::source(e);
    let mut detail = String::new();
    while let Some(s) = source {
        detail = s.to_string();
        source = s.source();
    }
    if detail.is_empty() {
        kind.to_string()
    } else {
        format!("{kind}: {detail}")
    }
}

/// `https://user:pass@host/path` -> `https://host/path`.
fn without_userinfo(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    let host = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    format!("{scheme}://{host}{path}")
}

/// Makes a text that came from the server fit to show, log and store. Applied to every such
/// text (messages, codes, details, body excerpts, `Location`, per-contact errors, transport
/// errors) before it reaches an [`ApiError`]:
/// - the API key, wherever it appears, and any `Bearer <token>` become `[REDACTED]` (a server
///   echoing the request's headers must not print the key, nor store it in the state DB);
/// - control characters (newlines, escape sequences) and bidirectional overrides become
///   spaces, so that a text is one line that shows what it says;
/// - the text is cut to a few hundred bytes, at a character boundary, with an ellipsis.
///
/// Redaction comes first, so that a cut cannot leave a prefix of the key behind.
pub(crate) fn sanitise(text: &str, key: &str) -> String {
    let redacted = if key.is_empty() {
        redact_bearer(text)
    } else {
        redact_bearer(&text.replace(key, REDACTED))
    };
    let mut out = String::with_capacity(redacted.len().min(MAX_SERVER_TEXT + 3));
    for c in redacted.chars() {
        let c = if c.is_control() || matches!(c, '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}')
        {
            ' '
        } else {
            c
        };
        if out.len() + c.len_utf8() > MAX_SERVER_TEXT {
            out.push('…');
            break;
        }
        out.push(c);
    }
    out.trim().to_string()
}

/// `Bearer <token>` (any case, any whitespace between) -> `Bearer [REDACTED]`: the server may
/// echo a token that is not exactly our key (another key, a re-encoded one).
fn redact_bearer(text: &str) -> String {
    // ASCII lowercasing keeps every byte offset, so positions found in `lower` fit `text`.
    let lower = text.to_ascii_lowercase();
    let ends_token = |c: char| c.is_whitespace() || "\"'`,;()<>[]{}\\".contains(c);
    let mut out = String::with_capacity(text.len());
    let mut copied = 0;
    let mut from = 0;
    while let Some(found) = lower[from..].find("bearer") {
        let word_end = from + found + "bearer".len();
        let after = &text[word_end..];
        let gap = after.len() - after.trim_start_matches(char::is_whitespace).len();
        let quote = after[gap..]
            .chars()
            .next()
            .filter(|c| *c == '"' || *c == '\'')
            .map_or(0, char::len_utf8);
        let start = word_end + gap + quote;
        let len = text[start..].find(ends_token).unwrap_or(text.len() - start);
        if gap > 0 && len > 0 {
            out.push_str(&text[copied..start]);
            out.push_str(REDACTED);
            copied = start + len;
            from = copied;
        } else {
            from = word_end;
        }
    }
    out.push_str(&text[copied..]);
    out
}

fn full_jitter(bound: Duration) -> Duration {
    let max = bound.as_millis().max(1) as u64;
    Duration::from_millis(rand::rng().random_range(0..=max))
}

fn now_unix_f64() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// A header as a finite number; `NaN`, `inf` and text are `None`.
fn header_f64(headers: &HeaderMap, name: &str) -> Option<f64> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .and_then(|s| s.trim().parse::<f64>().ok())
        .filter(|f| f.is_finite())
}

/// `Retry-After` may also be an HTTP date (RFC 9110); returned as an epoch timestamp.
fn http_date(headers: &HeaderMap, name: &str, now: f64) -> Option<f64> {
    let text = headers.get(name)?.to_str().ok()?;
    let at = httpdate::parse_http_date(text.trim()).ok()?;
    let secs = at.duration_since(UNIX_EPOCH).ok()?.as_secs_f64();
    Some(secs.max(now))
}

/// The wait a server's number asks for. A value above 1,000,000,000 can only be an epoch
/// timestamp; a small one only seconds. `None` for a value that is no wait at all: not
/// finite, negative, or further ahead than a day; the caller then uses its default, so no
/// server number reaches `Duration::from_secs_f64` unchecked (it panics on NaN and inf).
fn wait_from(value: f64, now: f64) -> Option<Duration> {
    if !value.is_finite() || value < 0.0 {
        return None;
    }
    let secs = if value > 1_000_000_000.0 {
        value - now
    } else {
        value
    };
    if !secs.is_finite() || secs > MAX_PLAUSIBLE_WAIT_SECS {
        return None;
    }
    // A timestamp in the past asks for no wait.
    Some(Duration::from_secs_f64(secs.max(0.0)))
}

/// How long a 429 asks us to wait: the first readable of `error.retryAfter`, `Retry-After`
/// (seconds or an HTTP date) and `X-RateLimit-Reset`; else 1 s. Between 250 ms and an hour.
fn retry_wait(error: &Value, headers: &HeaderMap, now: f64) -> Duration {
    let wait = |v: Option<f64>| v.and_then(|v| wait_from(v, now));
    wait(error.get("retryAfter").and_then(number_of))
        .or_else(|| wait(header_f64(headers, "retry-after")))
        .or_else(|| wait(http_date(headers, "retry-after", now)))
        .or_else(|| wait(header_f64(headers, "x-ratelimit-reset")))
        .unwrap_or(DEFAULT_RATE_LIMIT_WAIT)
        .clamp(MIN_RATE_LIMIT_WAIT, MAX_RATE_LIMIT_WAIT)
}

/// Parses the remove `data`; the error says why it is not an answer (already sanitised).
///
/// The counts must be there: `removed` and/or `notInList` (a missing one is 0), each a
/// whole number; `{}` says nothing about the batch, so it confirms nothing. Error items are
/// read leniently (the contact by `email`, `contactId` or `id`; the text by `error`,
/// `message` or `reason`); an item that names no contact makes the whole response unusable,
/// so the batch is retried rather than guessed.
fn parse_remove(data: &Map<String, Value>, key: &str) -> Result<RemoveOutcome, String> {
    let count = |field: &str| -> Result<Option<u64>, String> {
        match data.get(field) {
            None => Ok(None),
            Some(v) => count_of(v).map_err(|e| format!("`{field}` {e}")),
        }
    };
    let (removed, not_in_list) = (count("removed")?, count("notInList")?);
    if removed.is_none() && not_in_list.is_none() {
        return Err("its `data` holds neither `removed` nor `notInList`".to_string());
    }
    let items: &[Value] = match data.get("errors") {
        None | Some(Value::Null) => &[],
        Some(Value::Array(items)) => items,
        Some(Value::Object(o)) if o.is_empty() => &[],
        // Anything else may well name failed contacts in a shape we cannot read: confirming
        // the batch would be a guess, so it stays pending and is asserted again.
        Some(other) => {
            return Err(format!(
                "`errors` is not a list: {}",
                sanitise(&other.to_string(), key)
            ));
        }
    };
    let mut errors = Vec::with_capacity(items.len());
    for item in items {
        let text_of = |keys: &[&str]| {
            keys.iter()
                .find_map(|k| item.get(*k).and_then(Value::as_str))
                .map(|t| sanitise(t, key))
        };
        let contact = match item {
            Value::String(s) => Some(sanitise(s, key)),
            _ => text_of(&["email", "contactId", "id"]),
        };
        let Some(contact) = contact else {
            return Err(format!(
                "an item of `errors` names no contact: {}",
                sanitise(&item.to_string(), key)
            ));
        };
        let message = text_of(&["error", "message", "reason"])
            .filter(|m| !m.is_empty())
            .unwrap_or_else(|| "failed".to_string());
        errors.push(ContactError { contact, message });
    }
    Ok(RemoveOutcome {
        removed: removed.unwrap_or(0),
        not_in_list: not_in_list.unwrap_or(0),
        errors,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn api_key_debug_is_redacted() {
        let key = ApiKey::new("sk-very-secret");
        assert!(!format!("{key:?}").contains("very-secret"));
        let cfg = ClientConfig::new("http://x/v1", key);
        assert!(!format!("{cfg:?}").contains("very-secret"));
    }

    #[test]
    fn retry_after_is_read_as_seconds_or_as_an_epoch_timestamp() {
        let h = HeaderMap::new();
        let now = 2_000_000_000.0;
        let secs = retry_wait(&serde_json::json!({"retryAfter": 7}), &h, now);
        assert_eq!(secs, Duration::from_secs(7));
        let epoch = retry_wait(
            &serde_json::json!({"retryAfter": 2_000_000_003u64}),
            &h,
            now,
        );
        assert_eq!(epoch, Duration::from_secs(3));
        let mut h = HeaderMap::new();
        h.insert("retry-after", HeaderValue::from_static("2"));
        assert_eq!(retry_wait(&Value::Null, &h, now), Duration::from_secs(2));
        let mut h = HeaderMap::new();
        h.insert(
            "retry-after",
            HeaderValue::from_static("Wed, 18 May 2033 03:33:24 GMT"),
        );
        assert_eq!(retry_wait(&Value::Null, &h, now), Duration::from_secs(4));
        let mut h = HeaderMap::new();
        h.insert("x-ratelimit-reset", HeaderValue::from_static("2000000005"));
        assert_eq!(retry_wait(&Value::Null, &h, now), Duration::from_secs(5));
    }

    fn data(v: Value) -> Map<String, Value> {
        match v {
            Value::Object(m) => m,
            other => panic!("not an object: {other}"),
        }
    }

    #[test]
    fn remove_errors_are_parsed_leniently() {
        let d = data(serde_json::json!({
            "removed": 1, "notInList": 2,
            "errors": [
                {"email": "a@x.com", "error": "locked"},
                {"contactId": "c1", "message": "nope"},
                {"id": "c2", "reason": "why"},
                "b@x.com"
            ]
        }));
        let out = parse_remove(&d, "k").unwrap();
        assert_eq!(out.removed, 1);
        assert_eq!(out.not_in_list, 2);
        let names: Vec<&str> = out.errors.iter().map(|e| e.contact.as_str()).collect();
        assert_eq!(names, ["a@x.com", "c1", "c2", "b@x.com"]);
        assert_eq!(out.errors[1].message, "nope");
        assert_eq!(out.accounted(), 7);
    }

    #[test]
    fn an_error_item_naming_no_contact_fails_the_batch() {
        let d = data(serde_json::json!({"removed": 0, "notInList": 0, "errors": [{"error": "?"}]}));
        assert!(parse_remove(&d, "k").is_err());
    }

    #[test]
    fn remove_counts_are_whole_numbers_and_at_least_one_is_there() {
        let counts = |v: Value| parse_remove(&data(v), "k").map(|o| (o.removed, o.not_in_list));
        use serde_json::json;
        assert_eq!(
            counts(json!({"removed": "6", "notInList": 2.0})),
            Ok((6, 2))
        );
        assert_eq!(counts(json!({"notInList": 3})), Ok((0, 3)));
        assert_eq!(counts(json!({"removed": 4, "notInList": null})), Ok((4, 0)));
        for bad in [
            json!({}),
            json!({"errors": []}),
            json!({"removed": null, "notInList": null}),
            json!({"removed": -1}),
            json!({"removed": 1.5}),
            json!({"removed": "NaN"}),
            json!({"removed": "-2"}),
            json!({"removed": "1e3"}),
            json!({"removed": "six"}),
            json!({"removed": true}),
            json!({"removed": [1]}),
            json!({"removed": 1e300}),
            json!({"notInList": u64::MAX}),
        ] {
            assert!(counts(bad.clone()).is_err(), "{bad} was taken as an answer");
        }
    }

    #[test]
    fn accounted_saturates_instead_of_overflowing() {
        let o = RemoveOutcome {
            removed: u64::MAX,
            not_in_list: 5,
            errors: vec![ContactError {
                contact: "a".into(),
                message: "m".into(),
            }],
        };
        assert_eq!(o.accounted(), u64::MAX);
    }

    #[test]
    fn sanitise_redacts_the_key_and_bearer_tokens() {
        let key = "sk-live-0123456789abcdef";
        let out = sanitise(
            &format!(
                "bad key {key}; got authorization: bearer\tother.token-xyz, BEARER \"quoted\""
            ),
            key,
        );
        assert!(!out.contains(key), "{out}");
        assert!(!out.contains("other.token"), "{out}");
        assert!(!out.contains("quoted"), "{out}");
        assert_eq!(
            out,
            "bad key [REDACTED]; got authorization: bearer [REDACTED], BEARER \"[REDACTED]\""
        );
        // A key followed by a bearer pass: redacted once, not mangled.
        assert_eq!(sanitise(&format!("Bearer {key}"), key), "Bearer [REDACTED]");
        // A word merely containing "bearer" is left alone.
        assert_eq!(sanitise("the bearer-less note", ""), "the bearer-less note");
    }

    #[test]
    fn sanitise_makes_one_short_line_cut_at_a_char_boundary() {
        let out = sanitise("line one\nline\u{1b}[31m two\r\u{202e}", "k-unused");
        assert_eq!(out, "line one line [31m two");
        let long = "é".repeat(10_000);
        let out = sanitise(&long, "");
        assert!(
            out.len() <= MAX_SERVER_TEXT + '…'.len_utf8(),
            "{}",
            out.len()
        );
        assert!(out.ends_with('…'));
        // The key is redacted before the cut: no prefix of it survives at the edge.
        let key = "KEYKEYKEYKEYKEYKEYKEYKEYKEYKEY";
        let text = format!("{}{key}", "x".repeat(MAX_SERVER_TEXT - 5));
        assert!(!sanitise(&text, key).contains("KEYKE"));
    }

    #[test]
    fn waits_from_bad_numbers_fall_back_to_the_default() {
        let now = 2_000_000_000.0;
        for bad in [
            f64::NAN,
            f64::INFINITY,
            f64::NEG_INFINITY,
            -5.0,
            1e300,
            1.9e12,
        ] {
            assert_eq!(wait_from(bad, now), None, "{bad}");
            let error = serde_json::json!({ "retryAfter": bad.to_string() });
            assert_eq!(
                retry_wait(&error, &HeaderMap::new(), now),
                DEFAULT_RATE_LIMIT_WAIT,
                "{bad}"
            );
        }
        // Plausible but long: capped, not defaulted.
        assert_eq!(
            retry_wait(
                &serde_json::json!({"retryAfter": 7200}),
                &HeaderMap::new(),
                now
            ),
            MAX_RATE_LIMIT_WAIT
        );
        // An unreadable body value gives way to a readable header.
        let mut h = HeaderMap::new();
        h.insert("retry-after", HeaderValue::from_static("3"));
        assert_eq!(
            retry_wait(&serde_json::json!({"retryAfter": "NaN"}), &h, now),
            Duration::from_secs(3)
        );
    }

    #[test]
    fn userinfo_never_shows_in_a_url() {
        assert_eq!(
            without_userinfo("https://u:p@api.example.com/v1/x"),
            "https://api.example.com/v1/x"
        );
        assert_eq!(without_userinfo("http://h:1/v1"), "http://h:1/v1");
    }

    #[test]
    fn list_ids_are_percent_encoded_as_one_segment() {
        let c = Client::new(ClientConfig::new("http://h/v1/", ApiKey::new("k"))).unwrap();
        assert_eq!(
            c.url(&["contact-lists", "a/b c", "contacts", "remove"]),
            "http://h/v1/contact-lists/a%2Fb%20c/contacts/remove"
        );
    }
}
