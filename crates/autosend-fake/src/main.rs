//! Serves a fake AutoSend API (see the `autosend_fake` library) for demos, manual testing and benchmarks.
//!
//! ```text
//! cargo run -p autosend-fake -- --listen 127.0.0.1:8025 --seed seed.json
//! ```
//!
//! Prints `fake AutoSend listening on http://ADDR/v1` once bound, then serves until Ctrl-C or
//! SIGTERM.

use std::collections::HashSet;
use std::io::Write;
use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context;
use autosend_fake::{FakeAutoSend, FakeConfig, Faults, RateLimit, RateWindow, parse_rate_limits};
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
