//! A server that answers oddly, maliciously or not at all, driving `autosend::Client`
//! directly. Whatever it sends, the client must not confirm a contact, follow it elsewhere,
//! panic, hang, grow without bound, or let the API key out in an error or a log line.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use autosend::{ApiError, Client, ClientConfig, RemoveBatch, Tally};
use axum::response::Response;
use serde_json::{Value, json};
use support::fake::fast_config;
use support::scripted::{json_reply, reply, serve};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A key shaped like a real one, so that a leak of it cannot be a coincidence.
const SECRET: &str = "ASA_live_7f3c9e21b84d4a6f9e0c5d1b2a3f4e5d";

fn list_ok() -> Response {
    json_reply(
        200,
        &json!({"success": true, "data": {"id": "L1", "name": "n", "type": "list", "contactCount": 3}}),
    )
}

/// Faster retries than [`fast_config`], no pacing, the realistic key.
fn config(url: &str) -> ClientConfig {
    let mut c = fast_config(url, SECRET);
    c.min_backoff = Duration::from_millis(1);
    c.max_backoff = Duration::from_millis(5);
    c.request_timeout = Duration::from_secs(20);
    c
}

fn client(url: &str) -> Client {
    Client::new(config(url)).unwrap()
}

fn batch() -> RemoveBatch {
    RemoveBatch::Emails(vec!["a@example.com".into(), "b@example.com".into()])
}

async fn remove_once(body: Value) -> (Result<autosend::RemoveOutcome, ApiError>, usize) {
    let answer = body.clone();
    let server = serve(move |_| json_reply(200, &answer)).await;
    let result = client(&server.url)
        .remove("L1", &batch(), &Tally::default())
        .await;
    (result, server.hits())
}

#[tokio::test]
async fn a_2xx_that_is_not_an_explicit_success_is_a_protocol_error_sent_once() {
    let counts = json!({"removed": 2, "notInList": 0, "errors": []});
    let bodies = [
        json!({"data": counts}),
        json!({"success": false, "data": counts}),
        json!({"success": "true", "data": counts}),
        json!({"success": 1, "data": counts}),
        json!({"success": null, "data": counts}),
        json!({"success": true}),
        json!({"success": true, "data": null}),
        json!({"success": true, "data": [counts]}),
        json!({"success": true, "data": "removed"}),
        json!([{"success": true, "data": counts}]),
        json!("OK"),
    ];
    for body in bodies {
        let (result, hits) = remove_once(body.clone()).await;
        assert!(
            matches!(&result, Err(ApiError::Protocol(m)) if m.contains("not taken as done")),
            "{body} gave {result:?}"
        );
        assert_eq!(hits, 1, "{body} was sent again");
    }
    // Not JSON at all, and no body: the same, for any call.
    for text in ["OK", "<html><body>Welcome to nginx!</body></html>", ""] {
        let server = serve(move |_| reply(200, &[("content-type", "text/html")], text)).await;
        let result = client(&server.url).get_list("L1", &Tally::default()).await;
        assert!(
            matches!(&result, Err(ApiError::Protocol(m)) if m.contains("not a JSON object")),
            "{text:?} gave {result:?}"
        );
        assert_eq!(server.hits(), 1);
    }
}

#[tokio::test]
async fn remove_data_without_whole_number_counts_confirms_nothing() {
    let bad = [
        json!({}),
        json!({"errors": []}),
        json!({"removed": null, "notInList": null}),
        json!({"removed": -1, "notInList": 3}),
        json!({"removed": 1.5, "notInList": 0}),
        json!({"removed": "NaN", "notInList": 0}),
        json!({"removed": "2", "notInList": "lots"}),
        json!({"removed": "-2"}),
        json!({"removed": 1e300}),
        json!({"notInList": true}),
    ];
    for data in bad {
        let (result, hits) = remove_once(json!({"success": true, "data": data})).await;
        assert!(
            matches!(&result, Err(ApiError::Protocol(m)) if m.contains("the batch is not taken as done")),
            "{data} gave {result:?}"
        );
        assert_eq!(hits, 1, "{data} was sent again");
    }
}

#[tokio::test]
async fn counts_as_integer_strings_or_only_one_count_are_an_answer() {
    let (result, _) =
        remove_once(json!({"success": true, "data": {"removed": "6", "notInList": " 0 "}})).await;
    let outcome = result.unwrap();
    assert_eq!((outcome.removed, outcome.not_in_list), (6, 0));
    // Raw, not clamped to the batch: checking them is the caller's job.
    assert_eq!(outcome.accounted(), 6);
    let (result, _) = remove_once(json!({"success": true, "data": {"notInList": 2}})).await;
    let outcome = result.unwrap();
    assert_eq!((outcome.removed, outcome.not_in_list), (0, 2));
}

#[tokio::test]
async fn a_redirect_to_another_host_is_an_error_and_sends_nothing_there() {
    for status in [301, 302, 303, 307, 308] {
        let elsewhere = serve(|_| {
            json_reply(
                200,
                &json!({"success": true, "data": {"removed": 2, "notInList": 0, "errors": []}}),
            )
        })
        .await;
        let location = format!(
            "{}/contact-lists/L1/contacts/remove?key={SECRET}",
            elsewhere.url
        );
        let target = location.clone();
        let api = serve(move |_| reply(status, &[("location", target.as_str())], "")).await;
        let result = client(&api.url)
            .remove("L1", &batch(), &Tally::default())
            .await;
        let Err(err @ ApiError::Redirect { .. }) = &result else {
            panic!("{status} gave {result:?}");
        };
        let text = err.to_string();
        assert!(text.contains(&elsewhere.url), "{text}");
        assert!(text.contains("AUTOSEND_API_URL"), "{text}");
        assert!(!text.contains(SECRET), "{text}");
        assert_eq!(elsewhere.hits(), 0, "{status} was followed");
        assert_eq!(api.hits(), 1, "{status} was retried");
    }
}

/// A 429 carrying `header` (or, when `header` is `None`, `retryAfter: value` in the body),
/// then a success. Returns how long the call took.
async fn rate_limited_once(header: Option<&'static str>, value: Value) -> Duration {
    let server = serve(move |n| match (n, header) {
        (0, Some(name)) => reply(
            429,
            &[(name, value.as_str().unwrap())],
            json!({"success": false, "error": {"message": "slow down", "code": "RATE_LIMIT_EXCEEDED"}})
                .to_string(),
        ),
        (0, None) => json_reply(
            429,
            &json!({"success": false, "error": {"message": "slow down", "code": "RATE_LIMIT_EXCEEDED", "retryAfter": value.clone()}}),
        ),
        _ => list_ok(),
    })
    .await;
    let started = Instant::now();
    let info = client(&server.url)
        .get_list("L1", &Tally::default())
        .await
        .unwrap();
    assert_eq!(info.id, "L1");
    assert_eq!(server.hits(), 2);
    started.elapsed()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_numbers_in_a_429_are_waited_out_briefly_then_the_request_succeeds() {
    let mut cases: Vec<(Option<&'static str>, Value)> = [
        json!("NaN"),
        json!("inf"),
        json!("-inf"),
        json!(-5),
        json!(1e300),
        json!("1e300"),
        json!(1.7e12),
    ]
    .into_iter()
    .map(|v| (None, v))
    .collect();
    for header in ["retry-after", "x-ratelimit-reset"] {
        for value in ["nan", "NaN", "inf", "-5", "1e300"] {
            cases.push((Some(header), json!(value)));
        }
    }
    // In parallel: each bad value costs the default wait of about a second.
    let runs: Vec<_> = cases
        .into_iter()
        .map(|(header, value)| {
            let label = format!("{header:?} {value}");
            (label, tokio::spawn(rate_limited_once(header, value)))
        })
        .collect();
    for (label, run) in runs {
        let took = run
            .await
            .unwrap_or_else(|e| panic!("{label}: the client panicked: {e}"));
        assert!(took < Duration::from_secs(3), "{label}: waited {took:?}");
        assert!(
            took >= Duration::from_millis(200),
            "{label}: retried at once"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreadable_reset_with_nothing_remaining_pauses_briefly() {
    for reset in ["NaN", "inf", "-5", "1e300"] {
        let server = serve(move |_| {
            let mut r = list_ok();
            let h = r.headers_mut();
            h.insert("x-ratelimit-remaining", "0".parse().unwrap());
            h.insert("x-ratelimit-reset", reset.parse().unwrap());
            r
        })
        .await;
        let client = client(&server.url);
        let tally = Tally::default();
        let started = Instant::now();
        let run = tokio::spawn(async move {
            client.get_list("L1", &tally).await.unwrap();
            client.get_list("L1", &tally).await.unwrap();
        });
        run.await
            .unwrap_or_else(|e| panic!("{reset}: the client panicked: {e}"));
        let took = started.elapsed();
        assert!(took < Duration::from_secs(3), "{reset}: waited {took:?}");
        assert_eq!(server.hits(), 2);
    }
}

/// A raw HTTP server (axum cannot lie about a body) whose every connection gets `head`,
/// then `body_bytes` of chunked body if `chunked`, then silence. Counts connections.
async fn serve_raw(head: &'static str, chunked_bytes: usize) -> (String, Arc<AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/v1", listener.local_addr().unwrap());
    let connections = Arc::new(AtomicUsize::new(0));
    let counter = connections.clone();
    tokio::spawn(async move {
        loop {
            let Ok((mut socket, _)) = listener.accept().await else {
                return;
            };
            counter.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let mut request = vec![0u8; 64 * 1024];
                let _ = socket.read(&mut request).await;
                if socket.write_all(head.as_bytes()).await.is_err() {
                    return;
                }
                let chunk = vec![b'x'; 64 * 1024];
                let mut sent = 0;
                while sent < chunked_bytes {
                    let frame =
                        [format!("{:x}\r\n", chunk.len()).as_bytes(), &chunk, b"\r\n"].concat();
                    if socket.write_all(&frame).await.is_err() {
                        return;
                    }
                    sent += chunk.len();
                }
                // Never finish the body: only the client can end this.
                tokio::time::sleep(Duration::from_secs(120)).await;
            });
        }
    });
    (url, connections)
}

#[tokio::test]
async fn a_huge_streamed_body_fails_the_request_quickly() {
    // 64 MiB of chunks and no end: far over the bound, and never finished.
    let (url, connections) = serve_raw(
        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n",
        64 * 1024 * 1024,
    )
    .await;
    let result = client(&url).get_list("L1", &Tally::default()).await;
    assert!(
        matches!(&result, Err(ApiError::Protocol(m)) if m.contains("larger than 4 MiB")),
        "{result:?}"
    );
    assert_eq!(connections.load(Ordering::SeqCst), 1, "retried");
}

#[tokio::test]
async fn a_declared_huge_content_length_fails_before_the_body_is_read() {
    let (url, connections) = serve_raw(
        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 1000000000\r\n\r\n{\"success\": true, ",
        0,
    )
    .await;
    let result = client(&url).get_list("L1", &Tally::default()).await;
    assert!(
        matches!(&result, Err(ApiError::Protocol(m)) if m.contains("larger than 4 MiB")),
        "{result:?}"
    );
    assert_eq!(connections.load(Ordering::SeqCst), 1, "retried");
}

#[tokio::test]
async fn a_401_echoing_the_key_shows_neither_the_key_nor_a_bearer_token() {
    let server = serve(|_| {
        json_reply(
            401,
            &json!({"success": false, "error": {
                "message": format!("Invalid key {SECRET}\nreceived: Authorization: Bearer {SECRET}; \
                                    expected a token like bearer eyJhbGciOiJIUzI1NiJ9.e30.sig"),
                "code": format!("UNAUTHORIZED:{SECRET}"),
            }}),
        )
    })
    .await;
    let err = client(&server.url)
        .get_list("L1", &Tally::default())
        .await
        .unwrap_err();
    assert!(err.is_auth(), "{err:?}");
    for shown in [err.to_string(), format!("{err:?}")] {
        assert!(!shown.contains(SECRET), "{shown}");
        assert!(!shown.contains("eyJhbGciOiJIUzI1NiJ9"), "{shown}");
        assert!(!shown.contains('\n'), "{shown}");
        assert!(shown.contains("Bearer [REDACTED]"), "{shown}");
    }
}

#[tokio::test]
async fn a_ten_megabyte_error_message_leaves_an_error_under_a_kilobyte() {
    // 10 MB is over the body bound; 3 MB is read, and its message cut short.
    for size in [10_000_000, 3_000_000] {
        let message = "é".repeat(size / 2);
        let server = serve(move |_| {
            json_reply(
                400,
                &json!({"success": false, "error": {"message": message.clone(), "code": "VALIDATION_FAILED",
                        "details": [{"field": "emails", "message": "x".repeat(100_000)}]}}),
            )
        })
        .await;
        let err = client(&server.url)
            .remove("L1", &batch(), &Tally::default())
            .await
            .unwrap_err();
        let text = err.to_string();
        assert!(text.len() < 1024, "{size}: {} bytes", text.len());
        if size == 3_000_000 {
            assert!(
                matches!(&err, ApiError::Rejected { status: 400, message, .. } if message.ends_with('…')),
                "{err:?}"
            );
        }
    }
}

#[tokio::test]
async fn a_per_contact_error_echoing_the_key_is_redacted() {
    let (result, _) = remove_once(json!({"success": true, "data": {
        "removed": 1, "notInList": 0,
        "errors": [{"email": "a@example.com", "error": format!("locked\r\nby key {SECRET} (Bearer {SECRET})")}]
    }}))
    .await;
    let outcome = result.unwrap();
    assert_eq!(outcome.errors.len(), 1);
    let error = &outcome.errors[0];
    assert_eq!(error.contact, "a@example.com");
    assert!(!error.message.contains(SECRET), "{}", error.message);
    assert!(!error.message.contains(['\r', '\n']), "{}", error.message);
    assert!(error.message.starts_with("locked"), "{}", error.message);
}

#[tokio::test]
async fn a_server_failing_every_time_names_the_url_and_the_attempts() {
    let server = serve(|_| {
        reply(
            503,
            &[("content-type", "text/html")],
            format!("<html>\n<h1>503 Service Unavailable</h1>\n<!-- upstream auth: Bearer {SECRET} -->\n</html>"),
        )
    })
    .await;
    let err = client(&server.url)
        .get_list("L1", &Tally::default())
        .await
        .unwrap_err();
    let text = err.to_string();
    assert!(
        matches!(
            err,
            ApiError::Server {
                status: 503,
                attempts: 7,
                ..
            }
        ),
        "{err:?}"
    );
    assert!(
        text.contains(&format!("{}/contact-lists/L1", server.url)),
        "{text}"
    );
    assert!(text.contains("after 7 attempts"), "{text}");
    assert!(text.contains("AUTOSEND_API_URL"), "{text}");
    assert!(!text.contains(SECRET) && !text.contains('\n'), "{text}");
    assert_eq!(server.hits(), 7);
}
