//! Small in-process servers that answer what a test scripts: any router served in the
//! background ([`serve_router`]), a server whose `n`th answer is `script(n)` ([`serve`]), and
//! the fake's router behind a layer whose 429s say how long to wait only with a
//! `Retry-After` header ([`header_only_429`]).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde_json::Value;

/// A router served on 127.0.0.1 in the background; stops when dropped.
pub struct Server {
    /// The base URL, `http://127.0.0.1:PORT/v1`.
    pub url: String,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Serves `app` on a free port of 127.0.0.1 (on the current runtime).
pub async fn serve_router(app: axum::Router) -> Server {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/v1", listener.local_addr().unwrap());
    let task = tokio::spawn(async move {
        axum::serve(listener, app).await.unwrap();
    });
    Server { url, task }
}

/// A server whose `n`th answer (from 0) is `script(n)`, whatever the request.
pub struct Scripted {
    pub url: String,
    hits: Arc<AtomicUsize>,
    _server: Server,
}

impl Scripted {
    /// How many requests it answered.
    pub fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }
}

pub async fn serve(script: impl Fn(usize) -> Response + Send + Sync + 'static) -> Scripted {
    let hits = Arc::new(AtomicUsize::new(0));
    let counter = hits.clone();
    let script = Arc::new(script);
    let app = axum::Router::new().fallback(move || {
        let n = counter.fetch_add(1, Ordering::SeqCst);
        let response = script(n);
        async move { response }
    });
    let server = serve_router(app).await;
    Scripted {
        url: server.url.clone(),
        hits,
        _server: server,
    }
}

/// A response with `status`, `headers` (JSON unless they name a content type) and `body`.
pub fn reply(status: u16, headers: &[(&str, &str)], body: impl Into<Body>) -> Response {
    let mut b = axum::http::Response::builder().status(status);
    if !headers.iter().any(|(name, _)| *name == "content-type") {
        b = b.header("content-type", "application/json");
    }
    for (name, value) in headers {
        b = b.header(*name, *value);
    }
    b.body(body.into()).unwrap()
}

pub fn json_reply(status: u16, body: &Value) -> Response {
    reply(status, &[], body.to_string())
}

// ---- 429s that carry only a Retry-After header ---------------------------------------------------

/// A request as it reached the server: when, which (method, path and body: a retry of a
/// request is the same text), and the status it was answered with.
#[derive(Clone, Debug)]
pub struct Arrival {
    pub at: Instant,
    pub request: String,
    pub status: u16,
}

/// The requests a [`header_only_429`] server answered, in the order it answered them.
#[derive(Clone, Debug, Default)]
pub struct Arrivals(Arc<Mutex<Vec<Arrival>>>);

impl Arrivals {
    pub fn all(&self) -> Vec<Arrival> {
        self.0.lock().unwrap().clone()
    }
}

/// `router` behind a layer that logs every request into `log` and rewrites every 429 so that
/// only a `Retry-After: {retry_after_secs}` header says how long to wait: no `retryAfter` in
/// the body, no `X-RateLimit-*` headers. A client waiting about that long read the header;
/// without it a client falls back to its default wait.
pub fn header_only_429(router: axum::Router, retry_after_secs: u64, log: Arrivals) -> axum::Router {
    router.layer(axum::middleware::from_fn_with_state(
        (log, retry_after_secs),
        rewrite_429,
    ))
}

async fn rewrite_429(
    State((log, retry_after_secs)): State<(Arrivals, u64)>,
    req: Request,
    next: Next,
) -> Response {
    let at = Instant::now();
    let (parts, body) = req.into_parts();
    let body = axum::body::to_bytes(body, usize::MAX).await.unwrap();
    let request = format!(
        "{} {} {}",
        parts.method,
        parts.uri,
        String::from_utf8_lossy(&body)
    );
    let resp = next.run(Request::from_parts(parts, Body::from(body))).await;
    let status = resp.status().as_u16();
    log.0.lock().unwrap().push(Arrival {
        at,
        request,
        status,
    });
    if status != 429 {
        return resp;
    }
    let (mut parts, body) = resp.into_parts();
    let bytes = axum::body::to_bytes(body, 1 << 20).await.unwrap();
    let mut v: Value = serde_json::from_slice(&bytes).unwrap();
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
        .insert("retry-after", HeaderValue::from(retry_after_secs));
    Response::from_parts(parts, Body::from(serde_json::to_vec(&v).unwrap()))
}

/// Answers a remove with a 429 asking for `retry_after_secs` (by header only) whenever
/// `limit()` says so, without passing it on; everything else goes through to `router`.
pub fn removes_rate_limited(
    router: axum::Router,
    retry_after_secs: u64,
    limit: impl Fn() -> bool + Clone + Send + Sync + 'static,
) -> axum::Router {
    router.layer(axum::middleware::from_fn(move |req: Request, next: Next| {
        let limit = limit.clone();
        async move {
            if req.uri().path().ends_with("/contacts/remove") && limit() {
                return (
                    StatusCode::TOO_MANY_REQUESTS,
                    [("retry-after", retry_after_secs.to_string())],
                    r#"{"success": false, "error": {"message": "slow down", "code": "RATE_LIMIT_EXCEEDED"}}"#,
                )
                    .into_response();
            }
            next.run(req).await
        }
    }))
}
