//! Serves a fake AutoSend API (see the `autosend_fake` library) for demos, manual testing and benchmarks.
//!
//! ```text
//! cargo run -p autosend-fake -- --listen 127.0.0.1:8025 --seed seed.json
//! ```
//!
//! Prints `fake AutoSend listening on http://ADDR/v1` once bound, then serves until Ctrl-C or
//! SIGTERM.
//!
//! With `--webhook-url` it delivers webhook events there, signed with the secret read from
//! `--webhook-secret-file` or `FAKE_AUTOSEND_WEBHOOK_SECRET` (never from a flag, which `ps`
//! would show, and never printed); `POST /admin/webhook-events` makes it emit one.

use std::collections::HashSet;
use std::io::Write;
use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context;
use autosend_fake::{
    DOCUMENTED_RETRY_DELAYS, DOCUMENTED_TIMEOUT, FakeAutoSend, FakeConfig, Faults, RateLimit,
    RateWindow, WebhookConfig, parse_rate_limits,
};
use clap::Parser;

#[derive(Parser, Debug)]
#[command(about = "Serve a fake AutoSend API (contact lists) for tests, demos and benchmarks")]
struct Args {
    /// Address to listen on (port 0 picks a free port).
    #[arg(long, default_value = "127.0.0.1:8025")]
    listen: SocketAddr,

    /// The API key clients must send as `Authorization: Bearer <key>`.
    #[arg(long, env = "FAKE_AUTOSEND_API_KEY", default_value = "test-key")]
    api_key: String,

    /// JSON seed file: {"lists": [{"id", "name", "type", "contacts": [..], "generate": {..}}]};
    /// a contact is an email, or {"email", "id"} to give it a known id.
    #[arg(long, value_name = "FILE")]
    seed: Option<std::path::PathBuf>,

    /// Per-key rate limits ("none" disables them).
    #[arg(long, default_value = "2/s,50/m", value_parser = parse_limits)]
    rate_limit: Limits,

    /// How --rate-limit counts: `fixed` windows aligned to epoch time, or `sliding` windows
    /// (at most N requests in any window ending now).
    #[arg(long, default_value = "fixed")]
    rate_window: RateWindow,

    /// Share of requests answered with --error-status (0.0..=1.0) without being applied.
    #[arg(long, default_value_t = 0.0)]
    error_rate: f64,

    /// Status used by --error-rate.
    #[arg(long, default_value_t = 500)]
    error_status: u16,

    /// Latency added to every request, in milliseconds.
    #[arg(long, default_value_t = 0)]
    latency_ms: u64,

    /// Refuse remove batches with more entries than this (400 VALIDATION_FAILED).
    #[arg(long)]
    max_batch: Option<usize>,

    /// Share of requests whose connection is dropped before they are applied (0.0..=1.0).
    #[arg(long, default_value_t = 0.0)]
    drop_rate: f64,

    /// Contact (email or id) that always lands in a remove's `errors`; repeatable.
    #[arg(long, value_name = "EMAIL_OR_ID")]
    contact_error: Vec<String>,

    /// Contact (email or id) that makes any remove batch containing it a 400; repeatable.
    #[arg(long, value_name = "EMAIL_OR_ID")]
    poison: Vec<String>,

    /// Send 429 `retryAfter` as an epoch timestamp instead of seconds.
    #[arg(long)]
    retry_after_epoch: bool,

    /// Also send a `Retry-After` header with 429 answers.
    #[arg(long)]
    retry_after_header: bool,

    /// Deliver webhook events (contact.created/updated, and those emitted through
    /// POST /admin/webhook-events) to this URL. Needs a secret: --webhook-secret-file or the
    /// FAKE_AUTOSEND_WEBHOOK_SECRET environment variable.
    #[arg(long, value_name = "URL")]
    webhook_url: Option<String>,

    /// File holding the webhook signing secret (surrounding whitespace is ignored).
    #[arg(long, value_name = "FILE", requires = "webhook_url")]
    webhook_secret_file: Option<std::path::PathBuf>,

    /// Delays before the webhook retries, in milliseconds, comma-separated ("none": no retry).
    /// Default: AutoSend's documented 5000,10000,20000.
    #[arg(long, value_name = "MS,..", value_parser = parse_delays)]
    webhook_retry_delays_ms: Option<Delays>,

    /// Timeout of each webhook delivery attempt, in milliseconds (AutoSend's is 10000).
    #[arg(long, value_name = "MS")]
    webhook_timeout_ms: Option<u64>,
}

const WEBHOOK_SECRET_ENV: &str = "FAKE_AUTOSEND_WEBHOOK_SECRET";

/// Newtype for the same reason as [`Limits`].
#[derive(Debug, Clone)]
struct Delays(Vec<Duration>);

fn parse_delays(s: &str) -> Result<Delays, String> {
    if s.trim().eq_ignore_ascii_case("none") {
        return Ok(Delays(Vec::new()));
    }
    s.split(',')
        .map(|part| {
            part.trim()
                .parse::<u64>()
                .map(Duration::from_millis)
                .map_err(|_| format!("`{part}` is not a number of milliseconds"))
        })
        .collect::<Result<_, _>>()
        .map(Delays)
}

/// The webhook from the flags, or `None` without `--webhook-url`.
fn webhook_config(args: &Args) -> anyhow::Result<Option<WebhookConfig>> {
    let Some(url) = &args.webhook_url else {
        return Ok(None);
    };
    let parsed = reqwest::Url::parse(url).with_context(|| format!("--webhook-url {url}"))?;
    anyhow::ensure!(
        matches!(parsed.scheme(), "http" | "https"),
        "--webhook-url must be an http or https URL, got {url}"
    );
    let from_env = std::env::var_os(WEBHOOK_SECRET_ENV);
    let secret = match (&args.webhook_secret_file, from_env) {
        (Some(_), Some(_)) => {
            anyhow::bail!("both --webhook-secret-file and {WEBHOOK_SECRET_ENV} are set: use one")
        }
        (Some(path), None) => std::fs::read_to_string(path)
            .with_context(|| format!("reading the webhook secret file {}", path.display()))?,
        (None, Some(value)) => value
            .into_string()
            .map_err(|_| anyhow::anyhow!("{WEBHOOK_SECRET_ENV} is not valid UTF-8"))?,
        (None, None) => anyhow::bail!(
            "--webhook-url needs a signing secret: --webhook-secret-file FILE or {WEBHOOK_SECRET_ENV}"
        ),
    };
    // A file written by `echo` ends with a newline that is not part of the secret.
    let secret = secret.trim();
    anyhow::ensure!(!secret.is_empty(), "the webhook secret is empty");
    Ok(Some(WebhookConfig {
        url: url.clone(),
        secret: secret.to_string(),
        retry_delays: args
            .webhook_retry_delays_ms
            .as_ref()
            .map_or_else(|| DOCUMENTED_RETRY_DELAYS.to_vec(), |d| d.0.clone()),
        timeout: args
            .webhook_timeout_ms
            .map_or(DOCUMENTED_TIMEOUT, Duration::from_millis),
    }))
}

/// Newtype so clap parses the whole comma-separated list as one value (a bare `Vec` field would
/// mean "repeatable flag" to clap).
#[derive(Debug, Clone)]
struct Limits(Vec<RateLimit>);

fn parse_limits(s: &str) -> Result<Limits, String> {
    parse_rate_limits(s).map(Limits)
}

fn check_share(name: &str, value: f64) -> anyhow::Result<()> {
    anyhow::ensure!(
        (0.0..=1.0).contains(&value),
        "--{name} must be between 0.0 and 1.0, got {value}"
    );
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    check_share("error-rate", args.error_rate)?;
    check_share("drop-rate", args.drop_rate)?;
    let webhook = webhook_config(&args)?;

    let faults = Faults {
        error_rate: args.error_rate,
        error_status: args.error_status,
        latency: Duration::from_millis(args.latency_ms),
        max_batch: args.max_batch,
        contact_errors: args.contact_error.into_iter().collect::<HashSet<_>>(),
        poisoned: args.poison.into_iter().collect::<HashSet<_>>(),
        drop_rate: args.drop_rate,
        retry_after_epoch: args.retry_after_epoch,
        retry_after_header: args.retry_after_header,
        ..Faults::default()
    };
    let fake = FakeAutoSend::new(FakeConfig {
        api_key: args.api_key,
        rate_limits: args.rate_limit.0,
        faults,
    });
    fake.set_rate_window(args.rate_window);
    if let Some(webhook) = webhook {
        tracing::info!(url = %webhook.url, "delivering webhook events");
        fake.set_webhook(Some(webhook));
    }
    if let Some(path) = &args.seed {
        let json = std::fs::read_to_string(path)
            .with_context(|| format!("reading seed file {}", path.display()))?;
        fake.seed_from_json(&json)
            .map_err(anyhow::Error::msg)
            .with_context(|| format!("loading seed file {}", path.display()))?;
    }

    let running = fake
        .serve(args.listen)
        .await
        .with_context(|| format!("binding {}", args.listen))?;
    {
        let mut out = std::io::stdout().lock();
        writeln!(out, "fake AutoSend listening on {}", running.base_url())?;
        out.flush()?;
    }

    shutdown_signal().await;
    running.shutdown().await;
    Ok(())
}

async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
