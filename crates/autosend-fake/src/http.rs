//! HTTP side of the fake: routing, the common request pipeline (latency, dropped connections,
//! auth, rate limit, injected statuses, counters, headers) and the endpoint logic.
//!
//! Long, on purpose: it is the documented contract, endpoint by endpoint, with the faults
//! each can inject; split, the order of checks every request goes through would be lost.

use std::collections::{HashMap, HashSet};
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::extract::connect_info::Connected;
use axum::extract::{ConnectInfo, Path, Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::serve::{IncomingStream, Listener};
use serde_json::{Map, Value, json};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};

use super::ratelimit::{Decision, WindowStatus};
use super::state::{GLOBAL_CONTACT_LIST, ListKind, normalize_email, now_ms};
use super::webhook::{BounceType, EmitError};
use super::{BatchKind, FakeAutoSend, RemoveBatch, Shared};

/// Large enough for any batch a test could send (100,000 emails is about 3 MB).
const MAX_BODY: usize = 64 * 1024 * 1024;
/// AutoSend's documented bulk-add limit.
const BULK_ADD_MAX: usize = 500;

pub(crate) fn router(app: FakeAutoSend) -> Router {
    Router::new()
        .route("/v1/contact-lists", get(list_lists))
        .route("/v1/contact-lists/contacts/search", post(search))
        .route("/v1/contact-lists/contacts/bulk-add", post(bulk_add))
        .route("/v1/contact-lists/{id}", get(get_list))
        .route("/v1/contact-lists/{id}/contacts/remove", post(remove))
        .route("/admin/webhook-events", post(admin_webhook_event))
        .fallback(fallback)
        .with_state(app)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Endpoint {
    Remove,
    GetList,
    ListLists,
    Search,
    BulkAdd,
    Other,
}

impl Endpoint {
    fn name(self) -> &'static str {
        match self {
            Endpoint::Remove => "remove",
            Endpoint::GetList => "get_list",
            Endpoint::ListLists => "list_lists",
            Endpoint::Search => "search",
            Endpoint::BulkAdd => "bulk_add",
            Endpoint::Other => "other",
        }
    }
}

async fn remove(State(app): State<FakeAutoSend>, Path(id): Path<String>, req: Request) -> Response {
    dispatch(app, Endpoint::Remove, req, move |s, body| {
        s.remove(&id, body)
    })
    .await
}

async fn get_list(
    State(app): State<FakeAutoSend>,
    Path(id): Path<String>,
    req: Request,
) -> Response {
    dispatch(app, Endpoint::GetList, req, move |s, _| s.get_list(&id)).await
}

async fn list_lists(State(app): State<FakeAutoSend>, req: Request) -> Response {
    let query = Query::<HashMap<String, String>>::try_from_uri(req.uri())
        .map(|q| q.0.get("type").cloned())
        .map_err(|_| ());
    dispatch(app, Endpoint::ListLists, req, move |s, _| {
        s.list_lists(query)
    })
    .await
}

async fn search(State(app): State<FakeAutoSend>, req: Request) -> Response {
    dispatch(app, Endpoint::Search, req, |s, body| s.search(body)).await
}

async fn bulk_add(State(app): State<FakeAutoSend>, req: Request) -> Response {
    dispatch(app, Endpoint::BulkAdd, req, |s, body| s.bulk_add(body)).await
}

async fn fallback(State(app): State<FakeAutoSend>, req: Request) -> Response {
    dispatch(app, Endpoint::Other, req, |_, _| Reply::not_found()).await
}

/// `POST /admin/webhook-events`: makes the fake emit a webhook event, so that a fake running
/// as its own process can be driven by tests of another binary. Not part of AutoSend's API,
/// so it takes the API key but none of the API's rate limits, injected faults or counters:
/// a test's control channel must not consume the failures it set up for the client under test.
///
/// Bodies: `{"type": "email.bounced", "email", "bounceType": "Permanent" | "Transient"}`,
/// `{"type": "email.spam_reported", "email"}`, `{"type": "email.unsubscribed", "emailId"?}`,
/// or any `{"type", "data"}` sent as is. Answers 202 `{"deliveryId", "type"}`, 409
/// `WEBHOOK_NOT_CONFIGURED` without a webhook, 503 when the queue is full.
async fn admin_webhook_event(State(app): State<FakeAutoSend>, req: Request) -> Response {
    let authorized = bearer_token(req.headers()).as_deref() == Some(app.lock().api_key.as_str());
    let reply = if authorized {
        match axum::body::to_bytes(req.into_body(), MAX_BODY).await {
            Ok(body) => admin_emit(&app, &body),
            Err(_) => Reply::field_error("body", "Could not read the request body"),
        }
    } else {
        Reply::canned(401)
    };
    let status = StatusCode::from_u16(reply.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    (status, axum::Json(reply.body)).into_response()
}

fn admin_emit(app: &FakeAutoSend, body: &[u8]) -> Reply {
    let body = match parse_object(body) {
        Ok(b) => b,
        Err(reply) => return reply,
    };
    let Some(Value::String(event_type)) = body.get("type") else {
        return Reply::field_error("type", "Required string, e.g. \"email.bounced\"");
    };
    let email = || match body.get("email") {
        Some(Value::String(e)) if !e.trim().is_empty() => Ok(e.as_str()),
        _ => Err(Reply::field_error("email", "Required non-empty string")),
    };
    let result = match (event_type.as_str(), body.get("data")) {
        (_, Some(data)) => app.emit_event(event_type, data.clone()),
        ("email.bounced", None) => {
            let bounce_type = match body.get("bounceType").and_then(Value::as_str) {
                Some(t) => BounceType::parse(t),
                None => None,
            };
            let Some(bounce_type) = bounce_type else {
                return Reply::field_error("bounceType", "Must be one of: Permanent, Transient");
            };
            match email() {
                Ok(email) => app.emit_bounce(email, bounce_type),
                Err(reply) => return reply,
            }
        }
        ("email.spam_reported", None) => match email() {
            Ok(email) => app.emit_spam_report(email),
            Err(reply) => return reply,
        },
        ("email.unsubscribed", None) => match body.get("emailId") {
            None | Some(Value::Null) => app.emit_unsubscribed(None),
            Some(Value::String(id)) => app.emit_unsubscribed(Some(id)),
            Some(_) => return Reply::field_error("emailId", "Expected a string"),
        },
        _ => {
            return Reply::field_error(
                "data",
                "Required for this type (built-in: email.bounced, email.spam_reported, email.unsubscribed)",
            );
        }
    };
    match result {
        Ok(delivery_id) => Reply {
            status: 202,
            body: json!({"success": true, "data": {"deliveryId": delivery_id, "type": event_type}}),
        },
        Err(EmitError::InvalidEventType(_)) => Reply::field_error(
            "type",
            "Must be non-empty visible ASCII (it is sent as a header)",
        ),
        Err(e @ EmitError::NoWebhook) => Reply {
            status: 409,
            body: json!({"success": false, "error": {
                "message": format!("Not emitted: {e} (--webhook-url)"),
                "code": "WEBHOOK_NOT_CONFIGURED",
            }}),
        },
        Err(e) => Reply {
            status: 503,
            body: json!({"success": false, "error": {
                "message": format!("Not emitted: {e}"),
                "code": code_for(503),
            }}),
        },
    }
}

/// An answer before headers: status and JSON body.
pub(crate) struct Reply {
    status: u16,
    body: Value,
}

impl Reply {
    fn ok(data: Value) -> Self {
        Reply {
            status: 200,
            body: json!({"success": true, "data": data}),
        }
    }

    /// An error with the code AutoSend uses for `status`.
    fn error(status: u16, message: &str, details: Vec<(String, String)>) -> Self {
        let mut error = json!({"message": message, "code": code_for(status)});
        if !details.is_empty() {
            error["details"] = details
                .into_iter()
                .map(|(field, message)| json!({"field": field, "message": message}))
                .collect();
        }
        Reply {
            status,
            body: json!({"success": false, "error": error}),
        }
    }

    /// The documented body for `status`, as sent by an injected fault.
    fn canned(status: u16) -> Self {
        Reply::error(status, default_message(status), Vec::new())
    }

    fn validation(message: &str, details: Vec<(String, String)>) -> Self {
        Reply::error(400, message, details)
    }

    fn field_error(field: &str, message: &str) -> Self {
        Reply::validation(
            "Validation failed",
            vec![(field.to_string(), message.to_string())],
        )
    }

    fn not_found() -> Self {
        Reply::canned(404)
    }
}

fn code_for(status: u16) -> &'static str {
    match status {
        400 => "VALIDATION_FAILED",
        401 => "UNAUTHORIZED",
        402 => "PLAN_UPGRADE_REQUIRED",
        403 => "INSUFFICIENT_PERMISSIONS",
        404 => "NOT_FOUND",
        429 => "RATE_LIMIT_EXCEEDED",
        // Only 500 is documented; the fake uses its code for every 5xx it injects.
        500..=599 => "INTERNAL_SERVER_ERROR",
        _ => "ERROR",
    }
}

/// Messages from AutoSend's errors page.
fn default_message(status: u16) -> &'static str {
    match status {
        400 => "Validation failed",
        401 => "Unauthorized",
        402 => "Please upgrade your plan to access these resources.",
        403 => "Insufficient permissions to access these resources.",
        404 => "The requested resource was not found.",
        429 => "Rate limit exceeded",
        503 => "Service temporarily unavailable",
        500..=599 => "Something went wrong on our end",
        _ => "Request failed",
    }
}

/// The pipeline every request goes through; `run` is the endpoint logic, given the state and
/// the raw body, and runs under the lock so each request is atomic.
async fn dispatch(
    app: FakeAutoSend,
    ep: Endpoint,
    req: Request,
    run: impl FnOnce(&mut Shared, &[u8]) -> Reply,
) -> Response {
    let conn = req
        .extensions()
        .get::<ConnectInfo<ConnHandle>>()
        .map(|c| c.0.clone());
    let token = bearer_token(req.headers());
    // Read the whole body first: closing a socket with unread data sends a reset, and a
    // dropped connection should look the same whatever the request size.
    let body = axum::body::to_bytes(req.into_body(), MAX_BODY).await;

    let latency = {
        let mut s = app.lock();
        s.counters.requests += 1;
        if ep == Endpoint::Remove {
            s.counters.remove_requests += 1;
        }
        s.faults.latency
    };
    if !latency.is_zero() {
        tokio::time::sleep(latency).await;
    }

    let drop_it = {
        let mut s = app.lock();
        let drop_it = if s.faults.drop_next > 0 {
            s.faults.drop_next -= 1;
            true
        } else {
            s.faults.drop_rate > 0.0 && rand::random::<f64>() < s.faults.drop_rate
        };
        if drop_it {
            s.counters.dropped_connections += 1;
        }
        drop_it
    };
    if drop_it {
        return drop_connection(conn);
    }

    let now = now_ms();
    let mut s = app.lock();
    let mut window: Option<WindowStatus> = None;
    // (seconds to wait, epoch second to retry at) for a 429.
    let mut retry: Option<(u64, u64)> = None;
    let reply = if token.as_deref() != Some(s.api_key.as_str()) {
        window = s.limiter.peek(token.as_deref().unwrap_or(""), now);
        Reply::canned(401)
    } else {
        match s.limiter.check(token.as_deref().unwrap_or(""), now) {
            Decision::Unlimited => {}
            Decision::Allowed(w) => window = Some(w),
            Decision::Rejected {
                status,
                retry_after_secs,
            } => {
                window = Some(status);
                retry = Some((retry_after_secs, status.reset));
            }
        }
        if retry.is_some() {
            Reply::canned(429)
        } else if let Some(status) = take_fail_next(&mut s) {
            if status == 429 {
                retry = Some((1, now / 1000 + 1));
            }
            Reply::canned(status)
        } else if s.faults.error_rate > 0.0 && rand::random::<f64>() < s.faults.error_rate {
            Reply::canned(s.faults.error_status)
        } else {
            match &body {
                Ok(bytes) => run(&mut s, bytes),
                Err(_) => Reply::field_error("body", "Could not read the request body"),
            }
        }
    };

    *s.counters
        .by_endpoint_status
        .entry((ep.name(), reply.status))
        .or_insert(0) += 1;
    if reply.status == 429 {
        s.counters.rate_limited += 1;
    }
    let (epoch, retry_header) = (s.faults.retry_after_epoch, s.faults.retry_after_header);
    drop(s);
    tracing::debug!(endpoint = ep.name(), status = reply.status, "fake AutoSend");

    let mut body = reply.body;
    if let (429, Some((secs, at))) = (reply.status, retry) {
        body["error"]["retryAfter"] = json!(if epoch { at } else { secs });
    }
    let status = StatusCode::from_u16(reply.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut response = (status, axum::Json(body)).into_response();
    let headers = response.headers_mut();
    if let Some(w) = window {
        headers.insert("x-ratelimit-limit", HeaderValue::from(w.limit));
        headers.insert("x-ratelimit-remaining", HeaderValue::from(w.remaining));
        headers.insert("x-ratelimit-reset", HeaderValue::from(w.reset));
    }
    if let (429, Some((secs, _)), true) = (reply.status, retry, retry_header) {
        headers.insert(header::RETRY_AFTER, HeaderValue::from(secs));
    }
    response
}

fn bearer_token(headers: &HeaderMap) -> Option<String> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?.trim();
    let (scheme, token) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim().to_string())
}

fn take_fail_next(s: &mut Shared) -> Option<u16> {
    let (status, count) = s.faults.fail_next?;
    if count == 0 {
        s.faults.fail_next = None;
        return None;
    }
    s.faults.fail_next = (count > 1).then_some((status, count - 1));
    Some(status)
}

/// Makes the client see a transport error instead of an answer.
fn drop_connection(conn: Option<ConnHandle>) -> Response {
    match conn {
        Some(conn) => {
            tracing::debug!(peer = %conn.peer, "fake AutoSend: dropping the connection");
            // The connection's IO now fails, so hyper cannot write this response: it closes the
            // socket with nothing sent and the client gets "connection closed before message
            // completed".
            conn.kill();
            StatusCode::INTERNAL_SERVER_ERROR.into_response()
        }
        // Embedded router without the fake's listener: unwinding the connection task has the
        // same effect in hyper. `resume_unwind` skips the panic hook, so nothing is printed.
        None => std::panic::resume_unwind(Box::new("fake AutoSend: dropped connection")),
    }
}

// ---------------------------------------------------------------------------------------------
// Connections that can be dropped on purpose.

/// Connection info handed to handlers: lets a handler kill its own connection.
#[derive(Debug, Clone)]
pub(crate) struct ConnHandle {
    peer: SocketAddr,
    killed: Arc<AtomicBool>,
}

impl ConnHandle {
    fn kill(&self) {
        self.killed.store(true, Ordering::SeqCst);
    }
}

impl Connected<IncomingStream<'_, KillableListener>> for ConnHandle {
    fn connect_info(stream: IncomingStream<'_, KillableListener>) -> Self {
        stream.remote_addr().clone()
    }
}

/// TCP listener whose connections can be killed from a handler.
pub(crate) struct KillableListener {
    inner: TcpListener,
}

impl KillableListener {
    pub fn new(inner: TcpListener) -> Self {
        KillableListener { inner }
    }
}

impl Listener for KillableListener {
    type Io = KillableStream;
    type Addr = ConnHandle;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            match self.inner.accept().await {
                Ok((stream, peer)) => {
                    // Small JSON answers: do not let Nagle's algorithm add delays to benchmarks.
                    let _ = stream.set_nodelay(true);
                    let killed = Arc::new(AtomicBool::new(false));
                    return (
                        KillableStream {
                            inner: stream,
                            killed: killed.clone(),
                        },
                        ConnHandle { peer, killed },
                    );
                }
                // Same policy as axum's own TcpListener (e.g. EMFILE): wait a little, retry.
                Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
            }
        }
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        Ok(ConnHandle {
            peer: self.inner.local_addr()?,
            killed: Arc::new(AtomicBool::new(false)),
        })
    }
}

pub(crate) struct KillableStream {
    inner: TcpStream,
    killed: Arc<AtomicBool>,
}

impl KillableStream {
    fn check(&self) -> io::Result<()> {
        if self.killed.load(Ordering::SeqCst) {
            Err(io::Error::new(
                io::ErrorKind::ConnectionAborted,
                "connection dropped by the fake AutoSend",
            ))
        } else {
            Ok(())
        }
    }
}

impl AsyncRead for KillableStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        self.check()?;
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for KillableStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.check()?;
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.check()?;
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.check()?;
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.check()?;
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

// ---------------------------------------------------------------------------------------------
// Endpoint logic.

fn parse_object(body: &[u8]) -> Result<Map<String, Value>, Reply> {
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(_) => Err(Reply::field_error("body", "Expected a JSON object")),
        Err(e) => Err(Reply::validation(
            "Malformed JSON",
            vec![("body".to_string(), e.to_string())],
        )),
    }
}

/// `emails` xor `contactIds`, a non-empty array of strings.
fn parse_entries(body: &Map<String, Value>) -> Result<(BatchKind, Vec<String>), Reply> {
    let emails = body.get("emails");
    let ids = body.get("contactIds");
    let (kind, value) = match (emails, ids) {
        (Some(_), Some(_)) => {
            return Err(Reply::validation(
                "Provide either emails or contactIds, not both",
                vec![
                    (
                        "emails".into(),
                        "Provide either emails or contactIds, not both".into(),
                    ),
                    (
                        "contactIds".into(),
                        "Provide either emails or contactIds, not both".into(),
                    ),
                ],
            ));
        }
        (None, None) => {
            return Err(Reply::validation(
                "Either emails or contactIds is required",
                vec![(
                    "emails".into(),
                    "Either emails or contactIds is required".into(),
                )],
            ));
        }
        (Some(v), None) => (BatchKind::Emails, v),
        (None, Some(v)) => (BatchKind::ContactIds, v),
    };
    let field = kind.field();
    let Value::Array(items) = value else {
        return Err(Reply::field_error(field, "Expected an array of strings"));
    };
    if items.is_empty() {
        return Err(Reply::field_error(field, "Must contain at least 1 item"));
    }
    let mut entries = Vec::with_capacity(items.len());
    let mut details = Vec::new();
    for (i, item) in items.iter().enumerate() {
        match item {
            Value::String(s) => entries.push(s.clone()),
            _ => details.push((format!("{field}[{i}]"), "Expected string".to_string())),
        }
    }
    if !details.is_empty() {
        return Err(Reply::validation("Validation failed", details));
    }
    Ok((kind, entries))
}

/// Normalised form of an entry: emails trimmed and lowercased, ids trimmed.
fn normalize_entry(kind: BatchKind, entry: &str) -> String {
    match kind {
        BatchKind::Emails => normalize_email(entry),
        BatchKind::ContactIds => entry.trim().to_string(),
    }
}

fn looks_like_email(email: &str) -> bool {
    let Some((local, domain)) = email.split_once('@') else {
        return false;
    };
    !local.is_empty()
        && domain.contains('.')
        && !domain.starts_with('.')
        && !domain.ends_with('.')
        && !domain.contains('@')
        && !email.chars().any(char::is_whitespace)
}

fn contact_list_id(body: &Map<String, Value>) -> Result<String, Reply> {
    match body.get("contactListId") {
        Some(Value::String(s)) if !s.trim().is_empty() => Ok(s.clone()),
        Some(_) => Err(Reply::field_error(
            "contactListId",
            "Expected a non-empty string",
        )),
        None => Err(Reply::field_error("contactListId", "Required")),
    }
}

impl Shared {
    /// Whether `set` names this entry, by the form sent or by the contact's other identifier.
    fn flagged(&self, set: &HashSet<String>, key: &str, contact: Option<u32>) -> bool {
        if set.is_empty() {
            return false;
        }
        set.contains(key)
            || contact.is_some_and(|c| {
                let c = &self.store.contacts[c as usize];
                set.contains(&c.email) || set.contains(&c.id)
            })
    }

    fn lookup(&self, kind: BatchKind, key: &str) -> Option<u32> {
        match kind {
            BatchKind::Emails => self.store.find_email(key),
            BatchKind::ContactIds => self.store.find_id(key),
        }
    }

    fn remove(&mut self, list_id: &str, body: &[u8]) -> Reply {
        let (kind, entries) = match parse_object(body).and_then(|b| parse_entries(&b)) {
            Ok(parsed) => parsed,
            Err(reply) => return reply,
        };
        let reply = self.remove_batch(list_id, kind, &entries);
        self.counters.remove_batches.push(RemoveBatch {
            list_id: list_id.to_string(),
            kind,
            entries,
            status: reply.status,
        });
        reply
    }

    fn remove_batch(&mut self, list_id: &str, kind: BatchKind, entries: &[String]) -> Reply {
        if list_id == GLOBAL_CONTACT_LIST {
            return Reply::validation(
                "Cannot remove contacts from GLOBAL_CONTACT_LIST. Use the Delete Contact API instead.",
                vec![(
                    "contactListId".into(),
                    "GLOBAL_CONTACT_LIST cannot be used here; use the Delete Contact API".into(),
                )],
            );
        }
        if let Some(max) = self.faults.max_batch.filter(|&max| entries.len() > max) {
            self.counters.batches_rejected += 1;
            let message = format!("Too many contacts: at most {max} per request");
            return Reply::validation(&message, vec![(kind.field().to_string(), message.clone())]);
        }
        let poisoned: Vec<(String, String)> = entries
            .iter()
            .enumerate()
            .filter(|(_, e)| {
                let key = normalize_entry(kind, e);
                self.flagged(&self.faults.poisoned, &key, self.lookup(kind, &key))
            })
            .map(|(i, e)| {
                (
                    format!("{}[{i}]", kind.field()),
                    format!("Invalid value: {e}"),
                )
            })
            .collect();
        if !poisoned.is_empty() {
            self.counters.batches_rejected += 1;
            return Reply::validation("Validation failed", poisoned);
        }
        let Some(list) = self.store.list(list_id) else {
            return Reply::not_found();
        };
        if list.kind == ListKind::Segment {
            return Reply::validation(
                "Cannot remove contacts from a segment: segment membership comes from its filter criteria",
                vec![(
                    "contactListId".into(),
                    "Contacts cannot be removed from a segment".into(),
                )],
            );
        }

        let mut seen = HashSet::with_capacity(entries.len());
        let (mut removed, mut not_in_list) = (0u64, 0u64);
        let mut errors = Vec::new();
        for entry in entries {
            let key = normalize_entry(kind, entry);
            if !seen.insert(key.clone()) {
                continue;
            }
            let contact = self.lookup(kind, &key);
            if self.flagged(&self.faults.contact_errors, &key, contact) {
                let mut item = Map::new();
                item.insert(kind_key(kind).to_string(), Value::String(key));
                item.insert(
                    "error".to_string(),
                    Value::String("Failed to remove contact from list".to_string()),
                );
                errors.push(Value::Object(item));
                continue;
            }
            let list = self.store.list_mut(list_id).expect("checked above");
            if contact.is_some_and(|c| list.members.remove(c)) {
                removed += 1;
            } else {
                not_in_list += 1;
            }
        }
        if removed > 0 {
            let now = now_ms();
            if let Some(list) = self.store.list_mut(list_id) {
                list.updated_ms = now;
            }
        }
        self.counters.contacts_removed += removed;
        self.counters.contacts_not_in_list += not_in_list;
        self.counters.contacts_errored += errors.len() as u64;
        Reply::ok(json!({"removed": removed, "notInList": not_in_list, "errors": errors}))
    }

    fn get_list(&self, id: &str) -> Reply {
        if id == GLOBAL_CONTACT_LIST {
            return Reply::ok(self.store.global_list_json());
        }
        match self.store.list(id) {
            Some(list) => Reply::ok(list.to_json()),
            None => Reply::not_found(),
        }
    }

    fn list_lists(&self, kind: Result<Option<String>, ()>) -> Reply {
        let kind = match kind.as_ref().map(|k| k.as_deref()) {
            Ok(None) => None,
            Ok(Some("list")) => Some(ListKind::List),
            Ok(Some("segment")) => Some(ListKind::Segment),
            _ => return Reply::field_error("type", "Must be one of: list, segment"),
        };
        // Documented: the virtual "All Contacts" list is always prepended, whatever the filter.
        let mut lists = vec![self.store.global_list_json()];
        lists.extend(
            self.store
                .lists
                .iter()
                .filter(|l| kind.is_none_or(|k| l.kind == k))
                .map(|l| l.to_json()),
        );
        Reply::ok(json!({ "lists": lists }))
    }

    fn search(&self, body: &[u8]) -> Reply {
        let body = match parse_object(body) {
            Ok(b) => b,
            Err(reply) => return reply,
        };
        let mut details = Vec::new();
        let list_id = contact_list_id(&body)
            .map_err(|_| {
                details.push((
                    "contactListId".to_string(),
                    "Required non-empty string".to_string(),
                ))
            })
            .ok();
        let page = match body.get("page") {
            None | Some(Value::Null) => 1,
            Some(v) => match v.as_u64() {
                Some(p) if p >= 1 => p,
                _ => {
                    details.push(("page".into(), "Must be an integer >= 1".into()));
                    1
                }
            },
        };
        let limit = match body.get("limit") {
            None | Some(Value::Null) => 20,
            Some(v) => match v.as_u64() {
                Some(l) if (1..=100).contains(&l) => l,
                _ => {
                    details.push((
                        "limit".into(),
                        "Must be an integer between 1 and 100".into(),
                    ));
                    20
                }
            },
        };
        let filter = match body.get("email") {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) if s.trim().is_empty() => None,
            Some(Value::String(s)) => Some(normalize_email(s)),
            Some(_) => {
                details.push(("email".into(), "Expected a string".into()));
                None
            }
        };
        let Some(list_id) = list_id.filter(|_| details.is_empty()) else {
            return Reply::validation("Validation failed", details);
        };

        let offset = usize::try_from((page - 1).saturating_mul(limit)).unwrap_or(usize::MAX);
        let limit_usize = limit as usize;
        let contacts = &self.store.contacts;
        let (total, members): (usize, Vec<u32>) = if list_id == GLOBAL_CONTACT_LIST {
            let all = (0..contacts.len() as u32).filter(|&i| {
                filter
                    .as_ref()
                    .is_none_or(|f| contacts[i as usize].email.contains(f.as_str()))
            });
            page_of(all, offset, limit_usize)
        } else {
            let Some(list) = self.store.list(&list_id) else {
                return Reply::not_found();
            };
            match &filter {
                // Fast path: O(log n) to find the page start, however deep the page.
                None => (list.members.len(), list.members.page(offset, limit_usize)),
                Some(f) => page_of(
                    list.members
                        .iter()
                        .filter(|&i| contacts[i as usize].email.contains(f.as_str())),
                    offset,
                    limit_usize,
                ),
            }
        };
        let contacts: Vec<Value> = members
            .into_iter()
            .map(|i| contacts[i as usize].to_json())
            .collect();
        Reply::ok(json!({
            "contacts": contacts,
            "pagination": {
                "page": page,
                "limit": limit,
                "total": total,
                "pages": (total as u64).div_ceil(limit),
            },
        }))
    }

    fn bulk_add(&mut self, body: &[u8]) -> Reply {
        let body = match parse_object(body) {
            Ok(b) => b,
            Err(reply) => return reply,
        };
        let list_id = match contact_list_id(&body) {
            Ok(id) => id,
            Err(reply) => return reply,
        };
        let (kind, entries) = match parse_entries(&body) {
            Ok(parsed) => parsed,
            Err(reply) => return reply,
        };
        if entries.len() > BULK_ADD_MAX {
            let message = format!("Too many contacts: at most {BULK_ADD_MAX} per request");
            return Reply::validation(&message, vec![(kind.field().to_string(), message.clone())]);
        }
        let global = list_id == GLOBAL_CONTACT_LIST;
        if !global {
            match self.store.list(&list_id) {
                None => return Reply::not_found(),
                Some(l) if l.kind == ListKind::Segment => {
                    return Reply::validation(
                        "Cannot add contacts to a segment: segment membership comes from its filter criteria",
                        vec![(
                            "contactListId".into(),
                            "Contacts cannot be added to a segment".into(),
                        )],
                    );
                }
                Some(_) => {}
            }
        }

        let mut seen = HashSet::with_capacity(entries.len());
        let (mut added, mut created, mut already) = (0u64, 0u64, 0u64);
        let mut errors = Vec::new();
        for entry in &entries {
            let key = normalize_entry(kind, entry);
            if !seen.insert(key.clone()) {
                continue;
            }
            let (contact, new) = match kind {
                BatchKind::Emails if !looks_like_email(&key) => {
                    errors.push(json!({"email": entry, "error": "Invalid email address"}));
                    continue;
                }
                BatchKind::Emails => self.store.get_or_create(&key),
                BatchKind::ContactIds => match self.store.find_id(&key) {
                    Some(c) => (c, false),
                    None => {
                        errors.push(json!({"contactId": entry, "error": "Contact not found"}));
                        continue;
                    }
                },
            };
            // Adding to the virtual all-contacts list only creates contacts.
            let inserted = if global {
                new
            } else {
                self.store
                    .list_mut(&list_id)
                    .expect("checked above")
                    .members
                    .insert(contact)
            };
            if inserted {
                self.emit_contact_change(contact, new);
            }
            match (inserted, new) {
                (true, true) => created += 1,
                (true, false) => added += 1,
                (false, _) => already += 1,
            }
        }
        let total = if global {
            self.store.contacts.len()
        } else {
            let now = now_ms();
            let list = self.store.list_mut(&list_id).expect("checked above");
            if added + created > 0 {
                list.updated_ms = now;
            }
            list.members.len()
        };
        Reply::ok(json!({
            "added": added,
            "created": created,
            "alreadyInList": already,
            "errors": errors,
            "totalContactsInList": total,
        }))
    }
}

fn kind_key(kind: BatchKind) -> &'static str {
    match kind {
        BatchKind::Emails => "email",
        BatchKind::ContactIds => "contactId",
    }
}

/// Counts all items and keeps the page `[offset, offset + limit)`.
fn page_of(items: impl Iterator<Item = u32>, offset: usize, limit: usize) -> (usize, Vec<u32>) {
    let mut total = 0;
    let mut page = Vec::new();
    for item in items {
        if total >= offset && page.len() < limit {
            page.push(item);
        }
        total += 1;
    }
    (total, page)
}
