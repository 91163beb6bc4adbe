//! The client's retry log lines, in a test binary of their own: the test reads what a
//! subscriber scoped to its thread captured, and tracing caches, per log call site, whether
//! any subscriber wants it. Another test hitting the same call site at the same moment on a
//! thread without a subscriber could make that cache say "nobody" (it did once, on a loaded
//! CI machine); alone in its process, this test cannot race anyone.

mod support;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use autosend::{ApiError, Client, Tally};
use support::fake::fast_config;

const SECRET: &str = "ASA_live_7f3c9e21b84d4a6f9e0c5d1b2a3f4e5d";

fn client(url: &str) -> Client {
    let mut c = fast_config(url, SECRET);
    c.min_backoff = Duration::from_millis(1);
    c.max_backoff = Duration::from_millis(5);
    c.request_timeout = Duration::from_secs(20);
    Client::new(c).unwrap()
}

/// Log output written while a test runs on this thread.
#[derive(Clone, Default)]
struct Logs(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Logs {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Logs {
    type Writer = Logs;
    fn make_writer(&'a self) -> Logs {
        self.clone()
    }
}

#[tokio::test]
async fn a_refused_connection_names_the_url_and_the_attempt_in_every_line() {
    let logs = Logs::default();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(logs.clone())
        .with_ansi(false)
        .with_max_level(tracing::Level::INFO)
        .finish();
    // This test's runtime runs on this thread only, so the client logs here.
    let _guard = tracing::subscriber::set_default(subscriber);
    let err = client("http://127.0.0.1:1/v1")
        .get_list("L1", &Tally::default())
        .await
        .unwrap_err();
    let text = err.to_string();
    assert!(
        matches!(err, ApiError::Transport { attempts: 7, .. }),
        "{err:?}"
    );
    assert!(
        text.starts_with(
            "cannot reach AutoSend at http://127.0.0.1:1/v1/contact-lists/L1 after 7 attempts: "
        ),
        "{text}"
    );
    assert!(
        text.contains("check AUTOSEND_API_URL and the network"),
        "{text}"
    );
    let logged = String::from_utf8(logs.0.lock().unwrap().clone()).unwrap();
    let lines: Vec<&str> = logged.lines().collect();
    assert_eq!(lines.len(), 6, "{logged}");
    for (n, line) in lines.iter().enumerate() {
        assert!(
            line.contains("http://127.0.0.1:1/v1/contact-lists/L1"),
            "{line}"
        );
        assert!(line.contains(&format!("attempt {} of 7", n + 1)), "{line}");
    }
    assert!(!logged.contains(SECRET) && !text.contains(SECRET));
}
