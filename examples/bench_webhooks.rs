//! Benchmark of webhook-driven convergence (issue 12): a contact someone re-adds to a list
//! is removed again within seconds, and a burst of contact events costs a few requests.
//!
//! ```sh
//! cargo build --release --bin listwarden
//! cargo run --release --example bench_webhooks -- [--trials 20]
//! ```
//!
//! Setup: the fake AutoSend served in this process on 127.0.0.1 at AutoSend's default
//! limits (2 requests/s and 50/min, fixed windows), delivering signed webhooks to
//! `listwarden run --webhook-listen` (a child process, `--rate-limit 2/s,50/m`, default
//! debounce). One policy on one list excludes 1,000 addresses (a text file source); the
//! daemon converges first (2 removes).
//!
//! Measured:
//! - latency: `--trials` times, one excluded contact is added back to the list (the fake
//!   emits `contact.updated`), and the time until the fake receives a remove request naming
//!   it; median and p90. Trials are 2 s apart.
//! - burst: all 1,000 excluded contacts are added back at once (1,000 events); the requests
//!   the daemon sends until every one is removed again, by endpoint.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

#[path = "common/mod.rs"]
mod common;

use autosend_fake::{FakeAutoSend, FakeConfig, ListKind, RateLimit, WebhookConfig};
use common::{email, list_id, release_dir};

const KEY: &str = "bench-key";
const SECRET: &str = "bench-webhook-secret";
const EXCLUDED: usize = 1000;

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn wait_until(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    while !f() {
        assert!(start.elapsed() < timeout, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(1));
    }
    start.elapsed()
}

fn main() {
    let mut trials = 20;
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        match flag.as_str() {
            "--trials" => trials = it.next().and_then(|v| v.parse().ok()).expect("--trials N"),
            other => panic!("unknown flag {other}"),
        }
    }
    let dir = std::env::temp_dir().join(format!("lw-bench-webhooks-{}", std::process::id()));
    std::fs::create_dir_all(dir.join("m")).unwrap();
    let list = list_id(0);
    let excluded: Vec<String> = (0..EXCLUDED).map(email).collect();
    std::fs::write(dir.join("m/excluded.txt"), excluded.join("\n")).unwrap();
    std::fs::write(
        dir.join("m/p.yaml"),
        format!(
            "apiVersion: listwarden.dev/v1\nkind: ListPolicy\nmetadata:\n  name: bench\nspec:\n  \
             contactListId: {list}\n  exclude:\n    files:\n      - path: excluded.txt\n"
        ),
    )
    .unwrap();
    std::fs::write(dir.join("secret"), SECRET).unwrap();

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let fake = FakeAutoSend::new(FakeConfig {
        api_key: KEY.into(),
        rate_limits: vec![RateLimit::per_second(2), RateLimit::per_minute(50)],
        ..FakeConfig::default()
    });
    fake.add_list(&list, "bench", ListKind::List);
    fake.add_contacts(&list, &excluded);
    let running = rt.block_on(fake.clone().serve_local()).unwrap();
    let (port, hook_port) = (free_port(), free_port());
    let mut daemon = Command::new(release_dir().join("listwarden"))
        .arg("run")
        .arg(dir.join("m"))
        .arg("--state")
        .arg(dir.join("state.db"))
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .args(["--webhook-listen", &format!("127.0.0.1:{hook_port}")])
        .arg("--webhook-secret-file")
        .arg(dir.join("secret"))
        .args(["--rate-limit", "2/s,50/m"])
        .env("AUTOSEND_API_KEY", KEY)
        .env("AUTOSEND_API_URL", running.base_url())
        .env(
            "RUST_LOG",
            std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into()),
        )
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("run listwarden (cargo build --release --bin listwarden)");
    let member = |c: &str| fake.is_member(&list, c);
    let converged = wait_until("the first convergence", Duration::from_secs(120), || {
        excluded.iter().all(|c| !member(c))
    });
    println!("first convergence of {EXCLUDED} contacts: {converged:?}");
    fake.set_webhook(Some(WebhookConfig::new(
        format!("http://127.0.0.1:{hook_port}/webhooks/autosend"),
        SECRET,
    )));

    let mut latencies = Vec::new();
    for t in 0..trials {
        std::thread::sleep(Duration::from_secs(2));
        let who = &excluded[t % EXCLUDED];
        let before = fake.counters().remove_batches.len();
        fake.add_contacts(&list, std::slice::from_ref(who));
        let latency = wait_until(
            "the re-added contact's remove",
            Duration::from_secs(60),
            || {
                fake.counters().remove_batches[before..]
                    .iter()
                    .any(|b| b.entries.iter().any(|e| e.eq_ignore_ascii_case(who)))
            },
        );
        println!("trial {:>2}: re-added to remove request {latency:?}", t + 1);
        latencies.push(latency);
    }
    latencies.sort();
    let pick = |q: f64| latencies[((latencies.len() - 1) as f64 * q).round() as usize];
    println!(
        "latency over {trials} trials: median {:?}, p90 {:?}, max {:?}",
        pick(0.5),
        pick(0.9),
        latencies.last().unwrap()
    );

    // The burst: every excluded contact back at once.
    std::thread::sleep(Duration::from_secs(2));
    fake.reset_counters();
    let burst_at = std::time::SystemTime::now();
    fake.add_contacts(&list, &excluded);
    let took = wait_until(
        "the burst's contacts removed",
        Duration::from_secs(300),
        || excluded.iter().all(|c| !member(c)),
    );
    std::thread::sleep(Duration::from_secs(3));
    let c = fake.counters();
    let delivered = fake
        .webhook_deliveries()
        .iter()
        .filter(|d| d.attempt == 1 && d.sent_at >= burst_at)
        .count();
    println!(
        "burst of {EXCLUDED} contact events ({delivered} deliveries): removed again in {took:?}; \
         requests: {} removes, {} reads of the list (pre-flight), {} in all, {} x 429",
        c.remove_requests,
        c.endpoint_total("get_list"),
        c.requests,
        c.rate_limited,
    );
    let _ = daemon.kill();
    let _ = daemon.wait();
    drop(running);
    let _ = std::fs::remove_dir_all(&dir);
}
