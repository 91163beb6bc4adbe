//! The client: every request waits its turn at the pacer, then goes through [`Client::send`],
//! the single place that decides what a response means (see the crate's documentation).
//!
//! Long, on purpose: `send` and the handful of helpers it owns (reading a bounded body,
//! honouring the server's waits, turning a response into an answer or an error) are one
//! decision procedure, read best in one place.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use backon::BackoffBuilder;
use rand::Rng;
use reqwest::header::{HeaderMap, HeaderValue};
use reqwest::{Method, StatusCode};
use secrecy::ExposeSecret as _;
use serde_json::{Map, Value};

use crate::config::ClientConfig;
use crate::error::ApiError;
use crate::pacing::{Pacer, RateLimits};
use crate::retry::{DEFAULT_RATE_LIMIT_WAIT, MAX_RESET_WAIT, header_f64, retry_wait, wait_from};
use crate::sanitise::{sanitise, without_userinfo};
use crate::wire::{ListInfo, MemberPage, RemoveBatch, RemoveOutcome, parse_remove};

/// The largest response body read. This API's biggest answer, a search page of 100 contacts,
/// is a few tens of KiB; the bound keeps an endless or huge body from growing the process.
pub const MAX_BODY_BYTES: usize = 4 * 1024 * 1024;

/// Everything but RFC 3986's unreserved characters is encoded, so an id is always exactly one
/// path segment (validated ids never need it; this is the second lock on the door).
const PATH_SEGMENT: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~');

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

/// Asked before every attempt of a request, the first and each retry, once the pacer let
/// it go: a caller can hold a request, or withdraw it, when its reason to be sent may have
/// gone while it waited (a retry can come an hour after a 429).
pub trait Admission: Send + Sync {
    /// `Ok` to send now; an error (say [`ApiError::Withdrawn`]) gives up the request.
    fn admit(&self) -> std::pin::Pin<Box<dyn Future<Output = Result<(), ApiError>> + Send + '_>>;
}

/// Hook for metrics: told about every HTTP exchange. The default does nothing.
pub trait Observer: Send + Sync {
    /// `status` is `None` for a transport error.
    fn request(&self, _endpoint: &'static str, _status: Option<u16>, _elapsed: Duration) {}
}

struct NoObserver;
impl Observer for NoObserver {}

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
        self.remove_admitted(list, batch, tally, None).await
    }

    /// Like [`Client::remove`], asking `admission` before every attempt (the first and each
    /// retry): a batch whose reason to be sent went away while it waited out a 429 or a
    /// backoff is withdrawn instead of sent.
    pub async fn remove_admitted(
        &self,
        list: &str,
        batch: &RemoveBatch,
        tally: &Tally,
        admission: Option<&dyn Admission>,
    ) -> Result<RemoveOutcome, ApiError> {
        let url = self.url(&["contact-lists", list, "contacts", "remove"]);
        let data = self
            .send(
                "remove",
                Method::POST,
                &url,
                Some(&batch.body()),
                tally,
                admission,
            )
            .await?;
        parse_remove(&data, self.config.api_key.current().expose_secret()).map_err(|why| {
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
            .send("get_list", Method::GET, &url, None, tally, None)
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
            .send("search", Method::POST, &url, Some(&body), tally, None)
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
        sanitise(text, self.config.api_key.current().expose_secret())
    }

    /// The URL as logs and errors show it: no userinfo, should `AUTOSEND_API_URL` carry any.
    fn shown_url(&self, url: &str) -> String {
        self.clean(&without_userinfo(url))
    }

    fn authorise(&self, rb: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        let key = self.config.api_key.current();
        let mut auth = HeaderValue::from_str(&format!("Bearer {}", key.expose_secret()))
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
        admission: Option<&dyn Admission>,
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
        // A refused key's file is read again once per logical request.
        let mut key_reloaded = false;
        loop {
            tokio::select! {
                biased;
                _ = self.cancel.cancelled() => return Err(ApiError::Cancelled),
                _ = self.pacer.acquire() => {}
            }
            // Right before sending, not once per logical request: a retry may come long
            // after the first attempt, and the caller may no longer want it sent.
            if let Some(admission) = admission {
                tokio::select! {
                    biased;
                    _ = self.cancel.cancelled() => return Err(ApiError::Cancelled),
                    admitted = admission.admit() => admitted?,
                }
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
                    let what = format!(
                        "cannot reach AutoSend at {shown} (attempt {failures} of \
                         {max_attempts}): {message}"
                    );
                    if self.back_off(&mut backoff, tally, endpoint, &what).await? {
                        continue;
                    }
                    return Err(ApiError::Transport {
                        url: shown,
                        message,
                        attempts: failures,
                    });
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
                    self.pacer.rate_limited();
                    continue;
                }
                StatusCode::UNAUTHORIZED | StatusCode::PAYMENT_REQUIRED | StatusCode::FORBIDDEN => {
                    if !key_reloaded && self.config.api_key.reload() {
                        key_reloaded = true;
                        tracing::info!(
                            endpoint,
                            source = %self.config.key_source,
                            "the API key was refused and its file holds another one now: \
                             retrying with it"
                        );
                        continue;
                    }
                    let (code, message) = self.error_text(envelope.as_ref(), &bytes);
                    return Err(ApiError::Auth {
                        status: status.as_u16(),
                        code,
                        message,
                        key_source: self.config.key_source.clone(),
                    });
                }
                StatusCode::NOT_FOUND => {
                    let (_, message) = self.error_text(envelope.as_ref(), &bytes);
                    return Err(ApiError::NotFound { message });
                }
                s if s.is_server_error() || s == StatusCode::REQUEST_TIMEOUT => {
                    failures += 1;
                    let what = format!(
                        "AutoSend at {shown} answered {s} (attempt {failures} of {max_attempts})"
                    );
                    if !self.back_off(&mut backoff, tally, endpoint, &what).await? {
                        let (_, message) = self.error_text(envelope.as_ref(), &bytes);
                        return Err(ApiError::Server {
                            status: s.as_u16(),
                            url: shown,
                            message,
                            attempts: failures,
                        });
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

    /// After a failure worth retrying (transport, 5xx): waits the next step of the backoff,
    /// saying why, and returns `true`; `false` when the retries are spent.
    async fn back_off(
        &self,
        backoff: &mut impl Iterator<Item = Duration>,
        tally: &Tally,
        endpoint: &'static str,
        what: &str,
    ) -> Result<bool, ApiError> {
        let Some(bound) = backoff.next() else {
            return Ok(false);
        };
        tally.retries.fetch_add(1, Ordering::Relaxed);
        // Full jitter: a uniform wait up to the exponential bound, so that clients that
        // failed together do not retry together.
        let wait = full_jitter(bound);
        tracing::info!(endpoint, "{what}; retrying in {} ms", wait.as_millis());
        self.sleep(wait).await?;
        Ok(true)
    }

    async fn sleep(&self, d: Duration) -> Result<(), ApiError> {
        tokio::select! {
            _ = self.cancel.cancelled() => Err(ApiError::Cancelled),
            _ = tokio::time::sleep(d) => Ok(()),
        }
    }

    /// `X-RateLimit-Remaining: 0`: the window is used up. Unless our own requests used it
    /// (the pacer already waits for the slot), hold every request until it resets (at most a
    /// minute; a reset that cannot be read holds them for the default wait).
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
        let limit = header_f64(headers, "x-ratelimit-limit")
            .filter(|l| l.fract() == 0.0 && *l >= 1.0 && *l <= f64::from(u32::MAX))
            .map(|l| l as u32);
        if !wait.is_zero() {
            self.pacer
                .server_window_used_up(limit, tokio::time::Instant::now() + wait);
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ApiKey;

    #[test]
    fn list_ids_are_percent_encoded_as_one_segment() {
        let c = Client::new(ClientConfig::new("http://h/v1/", ApiKey::new("k"))).unwrap();
        assert_eq!(
            c.url(&["contact-lists", "a/b c", "contacts", "remove"]),
            "http://h/v1/contact-lists/a%2Fb%20c/contacts/remove"
        );
    }
}
