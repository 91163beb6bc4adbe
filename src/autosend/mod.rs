//! The AutoSend API client: typed calls, pacing, retries, and errors a caller can act on.
//!
//! Contract (see `shared/autosend-api/README.md`): bearer auth, `{"success", "data"}` bodies,
//! `{"success": false, "error": {"message", "code", "retryAfter"?}}` errors.
//!
//! Every request goes through one [`Pacer`] shared by the whole process, then through
//! [`Client::send`], the single place that decides what a response means:
//! - 2xx: parsed;
//! - 429: wait as the server says (`retryAfter` in seconds or as an epoch timestamp, the
//!   `Retry-After` header, or `X-RateLimit-Reset`), pausing every request, then retry;
//! - 5xx, timeouts, dropped connections: retry with exponential backoff and full jitter
//!   (safe: remove is idempotent, a second call reports `notInList`);
//! - 401/402/403: [`ApiError::Auth`], which stops the run; never retried;
//! - 404, 400, 413: returned as such; splitting a refused batch is the caller's decision.

pub mod pacing;

use std::fmt;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use backon::BackoffBuilder;
use rand::Rng;
use reqwest::StatusCode;
use reqwest::header::{HeaderMap, HeaderValue};
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use serde_json::Value;

pub use pacing::{Pacer, RateLimits};

pub const DEFAULT_BASE_URL: &str = "https://api.autosend.com/v1";

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
        if HeaderValue::from_str(&format!("Bearer {}", key.0.expose_secret())).is_err() {
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

/// Errors a caller acts on. None of them carries the key.
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
    #[error("rate limited {0} times in a row; giving up on this request")]
    RateLimited(usize),
    #[error("AutoSend server error ({status}) after {attempts} attempts: {message}")]
    Server {
        status: u16,
        message: String,
        attempts: usize,
    },
    #[error("cannot reach AutoSend after {attempts} attempts: {message}")]
    Transport { message: String, attempts: usize },
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

    /// Splits in two halves of the same kind (for a batch the server refused).
    pub fn halves(&self) -> (RemoveBatch, RemoveBatch) {
        let mid = self.len() / 2;
        match self {
            RemoveBatch::Emails(v) => (
                RemoveBatch::Emails(v[..mid].to_vec()),
                RemoveBatch::Emails(v[mid..].to_vec()),
            ),
            RemoveBatch::ContactIds(v) => (
                RemoveBatch::ContactIds(v[..mid].to_vec()),
                RemoveBatch::ContactIds(v[mid..].to_vec()),
            ),
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

/// The `data` of a successful remove.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RemoveOutcome {
    pub removed: u64,
    pub not_in_list: u64,
    pub errors: Vec<ContactError>,
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
/// list over a formatting detail the documentation does not pin down.
fn lenient_u64<'de, D: serde::Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    match Value::deserialize(d)? {
        Value::Null => Ok(0),
        Value::Number(n) => n
            .as_u64()
            .or_else(|| {
                n.as_f64()
                    .filter(|f| *f >= 0.0 && f.fract() == 0.0)
                    .map(|f| f as u64)
            })
            .ok_or_else(|| serde::de::Error::custom(format!("{n} is not a count"))),
        Value::String(s) => s
            .trim()
            .parse()
            .map_err(|_| serde::de::Error::custom(format!("{s:?} is not a count"))),
        other => Err(serde::de::Error::custom(format!("{other} is not a count"))),
    }
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
            .field("base_url", &self.config.base_url)
            .finish_non_exhaustive()
    }
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
        let body = batch.body();
        let data = self
            .send("remove", tally, || self.http.post(&url).json(&body))
            .await?;
        parse_remove(&data)
    }

    /// `GET /contact-lists/{id}`.
    pub async fn get_list(&self, list: &str, tally: &Tally) -> Result<ListInfo, ApiError> {
        let url = self.url(&["contact-lists", list]);
        let data = self.send("get_list", tally, || self.http.get(&url)).await?;
        serde_json::from_value(data)
            .map_err(|e| ApiError::Protocol(format!("contact list object: {e}")))
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
            .send("search", tally, || self.http.post(&url).json(&body))
            .await?;
        serde_json::from_value(data)
            .map_err(|e| ApiError::Protocol(format!("search response: {e}")))
    }

    fn authorise(&self, rb: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        let mut auth =
            HeaderValue::from_str(&format!("Bearer {}", self.config.api_key.0.expose_secret()))
                .unwrap_or_else(|_| HeaderValue::from_static("Bearer invalid-key-characters"));
        auth.set_sensitive(true);
        let rb = rb.header(reqwest::header::AUTHORIZATION, auth);
        match &self.config.project_id {
            Some(p) => rb.header("x-project-id", p),
            None => rb,
        }
    }

    /// Sends one logical request until it succeeds or fails for good. Returns `data`.
    async fn send(
        &self,
        endpoint: &'static str,
        tally: &Tally,
        build: impl Fn() -> reqwest::RequestBuilder,
    ) -> Result<Value, ApiError> {
        let mut backoff = backon::ExponentialBuilder::default()
            .with_min_delay(self.config.min_backoff)
            .with_max_delay(self.config.max_backoff)
            .with_max_times(self.config.max_retries)
            .build();
        let mut attempts = 0usize;
        let mut rate_limited = 0usize;
        loop {
            tokio::select! {
                biased;
                _ = self.cancel.cancelled() => return Err(ApiError::Cancelled),
                _ = self.pacer.acquire() => {}
            }
            attempts += 1;
            tally.requests.fetch_add(1, Ordering::Relaxed);
            let started = std::time::Instant::now();
            let result = self.exchange(build()).await;
            let status = result.as_ref().ok().map(|(s, _, _)| s.as_u16());
            self.observer.request(endpoint, status, started.elapsed());
            let (status, headers, body) = match result {
                Ok(r) => r,
                Err(message) => {
                    // Full jitter: a uniform wait up to the exponential bound, so that
                    // clients that failed together do not retry together.
                    match backoff.next() {
                        Some(bound) => {
                            tally.retries.fetch_add(1, Ordering::Relaxed);
                            tracing::info!(endpoint, attempts, %message, "transport error; retrying");
                            self.sleep(full_jitter(bound)).await?;
                            continue;
                        }
                        None => return Err(ApiError::Transport { message, attempts }),
                    }
                }
            };
            self.honour_remaining(&headers);
            let envelope: Option<Value> = serde_json::from_slice(&body).ok();
            let error = envelope
                .as_ref()
                .and_then(|v| v.get("error"))
                .cloned()
                .unwrap_or(Value::Null);
            let code = error
                .get("code")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string();
            let message = error
                .get("message")
                .and_then(Value::as_str)
                .map(str::to_string)
                .unwrap_or_else(|| {
                    String::from_utf8_lossy(&body[..body.len().min(200)]).into_owned()
                });
            match status {
                s if s.is_success() => {
                    let envelope = envelope.ok_or_else(|| {
                        ApiError::Protocol(format!("{endpoint}: the body is not JSON"))
                    })?;
                    return envelope.get("data").cloned().ok_or_else(|| {
                        ApiError::Protocol(format!("{endpoint}: no `data` in the response"))
                    });
                }
                StatusCode::TOO_MANY_REQUESTS => {
                    rate_limited += 1;
                    tally.rate_limited.fetch_add(1, Ordering::Relaxed);
                    if rate_limited > self.config.max_rate_limited {
                        return Err(ApiError::RateLimited(rate_limited));
                    }
                    let wait = retry_wait(&error, &headers, now_unix_f64())
                        .unwrap_or(Duration::from_secs(1));
                    tracing::info!(
                        endpoint,
                        wait_ms = wait.as_millis() as u64,
                        "rate limited (429); waiting as the server asks"
                    );
                    self.pacer.pause_until(tokio::time::Instant::now() + wait);
                    continue;
                }
                StatusCode::UNAUTHORIZED | StatusCode::PAYMENT_REQUIRED | StatusCode::FORBIDDEN => {
                    return Err(ApiError::Auth {
                        status: status.as_u16(),
                        code,
                        message,
                    });
                }
                StatusCode::NOT_FOUND => return Err(ApiError::NotFound { message }),
                s if s.is_server_error() || s == StatusCode::REQUEST_TIMEOUT => {
                    match backoff.next() {
                        Some(bound) => {
                            tally.retries.fetch_add(1, Ordering::Relaxed);
                            tracing::info!(
                                endpoint,
                                status = s.as_u16(),
                                attempts,
                                "server error; retrying"
                            );
                            self.sleep(full_jitter(bound)).await?;
                        }
                        None => {
                            return Err(ApiError::Server {
                                status: s.as_u16(),
                                message,
                                attempts,
                            });
                        }
                    }
                }
                s => {
                    return Err(ApiError::Rejected {
                        status: s.as_u16(),
                        code,
                        message,
                    });
                }
            }
        }
    }

    async fn exchange(
        &self,
        rb: reqwest::RequestBuilder,
    ) -> Result<(StatusCode, HeaderMap, Vec<u8>), String> {
        let resp = self
            .authorise(rb)
            .send()
            .await
            .map_err(|e| describe_transport(&e))?;
        let status = resp.status();
        let headers = resp.headers().clone();
        let body = resp
            .bytes()
            .await
            .map_err(|e| describe_transport(&e))?
            .to_vec();
        Ok((status, headers, body))
    }

    async fn sleep(&self, d: Duration) -> Result<(), ApiError> {
        tokio::select! {
            _ = self.cancel.cancelled() => Err(ApiError::Cancelled),
            _ = tokio::time::sleep(d) => Ok(()),
        }
    }

    /// `X-RateLimit-Remaining: 0`: the window is used up; hold every request until it resets.
    fn honour_remaining(&self, headers: &HeaderMap) {
        let remaining = header_f64(headers, "x-ratelimit-remaining");
        if remaining != Some(0.0) {
            return;
        }
        if let Some(reset) = header_f64(headers, "x-ratelimit-reset") {
            let wait = until(reset, now_unix_f64()).min(Duration::from_secs(61));
            if !wait.is_zero() {
                self.pacer.pause_until(tokio::time::Instant::now() + wait);
            }
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

fn header_f64(headers: &HeaderMap, name: &str) -> Option<f64> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .and_then(|s| s.trim().parse::<f64>().ok())
}

/// `Retry-After` may also be an HTTP date (RFC 9110); returned as an epoch timestamp.
fn http_date(headers: &HeaderMap, name: &str, now: f64) -> Option<f64> {
    let text = headers.get(name)?.to_str().ok()?;
    let at = httpdate::parse_http_date(text.trim()).ok()?;
    let secs = at.duration_since(UNIX_EPOCH).ok()?.as_secs_f64();
    Some(secs.max(now))
}

/// A value above 1,000,000,000 can only be an epoch timestamp; a small one only seconds.
fn until(value: f64, now: f64) -> Duration {
    let secs = if value > 1_000_000_000.0 {
        value - now
    } else {
        value
    };
    Duration::from_secs_f64(secs.clamp(0.0, 3600.0))
}

/// How long a 429 asks us to wait: `error.retryAfter`, else `Retry-After`, else
/// `X-RateLimit-Reset`. Capped at an hour: a bogus value must not park the daemon forever.
fn retry_wait(error: &Value, headers: &HeaderMap, now: f64) -> Option<Duration> {
    let from_body = error.get("retryAfter").and_then(|v| {
        v.as_f64()
            .or_else(|| v.as_str().and_then(|s| s.trim().parse().ok()))
    });
    let value = from_body
        .or_else(|| header_f64(headers, "retry-after"))
        .or_else(|| http_date(headers, "retry-after", now))
        .or_else(|| header_f64(headers, "x-ratelimit-reset"))?;
    // A wait of zero would retry at once into the same window: wait at least a little.
    Some(until(value, now).max(Duration::from_millis(250)))
}

/// Parses the remove `data`. Error items are read leniently (the contact by `email`,
/// `contactId` or `id`; the text by `error`, `message` or `reason`); an item that names no
/// contact makes the whole response unusable, so the batch is retried rather than guessed.
fn parse_remove(data: &Value) -> Result<RemoveOutcome, ApiError> {
    let count = |field: &str| -> Result<u64, ApiError> {
        match data.get(field) {
            None | Some(Value::Null) => Ok(0),
            Some(v) => v
                .as_u64()
                .ok_or_else(|| ApiError::Protocol(format!("remove: `{field}` is not a count"))),
        }
    };
    let mut errors = Vec::new();
    let items: &[Value] = match data.get("errors") {
        None | Some(Value::Null) => &[],
        Some(Value::Array(items)) => items,
        Some(Value::Object(o)) if o.is_empty() => &[],
        // Anything else may well name failed contacts in a shape we cannot read: confirming
        // the batch would be a guess, so it stays pending and is asserted again.
        Some(other) => {
            return Err(ApiError::Protocol(format!(
                "remove: `errors` is not a list: {}",
                other.to_string().chars().take(200).collect::<String>()
            )));
        }
    };
    {
        for item in items {
            let text_of = |keys: &[&str]| {
                keys.iter()
                    .find_map(|k| item.get(*k).and_then(Value::as_str))
                    .map(str::to_string)
            };
            let contact = match item {
                Value::String(s) => Some(s.clone()),
                _ => text_of(&["email", "contactId", "id"]),
            };
            let Some(contact) = contact else {
                return Err(ApiError::Protocol(format!(
                    "remove: an item of `errors` names no contact: {item}"
                )));
            };
            let message =
                text_of(&["error", "message", "reason"]).unwrap_or_else(|| "failed".to_string());
            errors.push(ContactError { contact, message });
        }
    }
    let lenient = |field: &str| -> Result<u64, ApiError> {
        match data.get(field) {
            Some(Value::String(s)) => s
                .trim()
                .parse()
                .map_err(|_| ApiError::Protocol(format!("remove: `{field}` is not a count"))),
            _ => count(field),
        }
    };
    Ok(RemoveOutcome {
        removed: lenient("removed")?,
        not_in_list: lenient("notInList")?,
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
        let secs = retry_wait(&serde_json::json!({"retryAfter": 7}), &h, now).unwrap();
        assert_eq!(secs, Duration::from_secs(7));
        let epoch = retry_wait(
            &serde_json::json!({"retryAfter": 2_000_000_003u64}),
            &h,
            now,
        )
        .unwrap();
        assert_eq!(epoch, Duration::from_secs(3));
        let mut h = HeaderMap::new();
        h.insert("retry-after", HeaderValue::from_static("2"));
        assert_eq!(
            retry_wait(&Value::Null, &h, now).unwrap(),
            Duration::from_secs(2)
        );
        let mut h = HeaderMap::new();
        h.insert(
            "retry-after",
            HeaderValue::from_static("Wed, 18 May 2033 03:33:24 GMT"),
        );
        assert_eq!(
            retry_wait(&Value::Null, &h, now).unwrap(),
            Duration::from_secs(4)
        );
        let mut h = HeaderMap::new();
        h.insert("x-ratelimit-reset", HeaderValue::from_static("2000000005"));
        assert_eq!(
            retry_wait(&Value::Null, &h, now).unwrap(),
            Duration::from_secs(5)
        );
    }

    #[test]
    fn remove_errors_are_parsed_leniently() {
        let data = serde_json::json!({
            "removed": 1, "notInList": 2,
            "errors": [
                {"email": "a@x.com", "error": "locked"},
                {"contactId": "c1", "message": "nope"},
                {"id": "c2", "reason": "why"},
                "b@x.com"
            ]
        });
        let out = parse_remove(&data).unwrap();
        assert_eq!(out.removed, 1);
        assert_eq!(out.not_in_list, 2);
        let names: Vec<&str> = out.errors.iter().map(|e| e.contact.as_str()).collect();
        assert_eq!(names, ["a@x.com", "c1", "c2", "b@x.com"]);
        assert_eq!(out.errors[1].message, "nope");
    }

    #[test]
    fn an_error_item_naming_no_contact_fails_the_batch() {
        let data = serde_json::json!({"removed": 0, "notInList": 0, "errors": [{"error": "?"}]});
        assert!(matches!(parse_remove(&data), Err(ApiError::Protocol(_))));
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
