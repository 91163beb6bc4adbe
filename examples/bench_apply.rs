//! Benchmark of `apply` throughput against the fake AutoSend (issue 3).
//!
//! Run with:
//!
//! ```sh
//! cargo run --release --example bench_apply                       # 3 runs, file store
//! cargo run --release --example bench_apply -- --runs 1 --store memory
//! ```
//!
//! The parent writes the manifests to a temp dir, then runs each measurement in a fresh child
//! process of itself (`--child N DIR`), so each peak RSS belongs to that run alone.
//!
//! Setup, per run: the fake AutoSend served in-process on 127.0.0.1 with a rate limit of
//! 50 requests/s (no per-minute limit); 200,000 desired-absent emails over 4 lists, 50,000 per
//! list, each list's set in a text file source beside its manifest; each list seeded with
//! 20,000 of its 50,000 addresses plus 5,000 other members (so the fake really removes 80,000
//! and answers `notInList` for 120,000, and `auto` picks assert: reading 25,000 members takes
//! 250 pages against 100 remove requests). listwarden's client paces at 50/s, batches of 500,
//! 4 lists at a time, the state store a SQLite file in the temp dir (WAL, synchronous=FULL)
//! unless `--store memory`. The apply path is the library's, as `listwarden apply` runs it:
//! `manifest::load`, `DesiredState::build`, `Plan::build` against the store,
//! `reconcile::record_manifests`, `reconcile::sync_all`.
//!
//! Measured: the sync (`sync_all`) wall time and contacts/s, the ratio to the ceiling of
//! 50 requests/s x 500 contacts = 25,000 contacts/s, the requests and 429s seen by the fake and
//! by listwarden, remove-request latency (client side, from the client's observer hook), time
//! spent waiting for the pacer, and peak RSS (VmHWM from /proc/self/status, reset after the
//! fake is seeded; it includes the fake's own memory, reported separately as `fake RSS`).
//! A last section times `Store::record_batch` of 500 rows alone, the per-batch commit cost.

use std::io::Write as _;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use autosend::{ApiKey, Client, ClientConfig, Observer};
use autosend_fake::{FakeAutoSend, FakeConfig, Faults, RateLimit};
use listwarden::contact::{ContactKind, ContactListId};
use listwarden::manifest::{self, Strategy};
use listwarden::plan::{Plan, PlanOptions};
use listwarden::reconcile::{self, Context};
use listwarden::store::{ContactOutcome, Store};

const KEY: &str = "bench-key";
const LISTS: usize = 4;
const PER_LIST: usize = 50_000;
const MEMBERS_DESIRED: usize = 20_000;
const MEMBERS_OTHER: usize = 5_000;
const RATE: u32 = 50;
const BATCH: usize = 500;
const CONCURRENCY: usize = 4;

fn email(list: usize, i: usize) -> String {
    format!("user{i}.l{list}@bench.example.com")
}

fn list_id(list: usize) -> String {
    format!("64b7f0c2a1d3e4f5a6b7c8d{list}")
}

fn proc_status(field: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(field))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|n| n.parse().ok())
        })
        .unwrap_or(0)
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

/// Remove-request latencies, client side (send to response body read), and when each
/// request (any endpoint) was sent.
#[derive(Default)]
struct Latencies {
    remove: Mutex<Vec<Duration>>,
    sent: Mutex<Vec<Instant>>,
}

impl Observer for Latencies {
    fn request(&self, endpoint: &'static str, _status: Option<u16>, elapsed: Duration) {
        self.sent.lock().unwrap().push(Instant::now() - elapsed);
        if endpoint == "remove" {
            self.remove.lock().unwrap().push(elapsed);
        }
    }
}

fn write_manifests(dir: &Path) {
    for l in 0..LISTS {
        let mut data = String::with_capacity(PER_LIST * 32);
        for i in 0..PER_LIST {
            data.push_str(&email(l, i));
            data.push('\n');
        }
        std::fs::write(dir.join(format!("list{l}.txt")), data).unwrap();
        std::fs::write(
            dir.join(format!("list{l}.yaml")),
            format!(
                "apiVersion: listwarden.dev/v1\nkind: ListPolicy\nmetadata:\n  name: bench-{l}\n\
                 spec:\n  contactListId: {}\n  exclude:\n    files:\n      - path: list{l}.txt\n",
                list_id(l)
            ),
        )
        .unwrap();
    }
}

struct RunResult {
    load_plan: Duration,
    sync: Duration,
    contacts: usize,
    planned_requests: usize,
    fake_requests: u64,
    fake_429: u64,
    client_requests: u64,
    client_429: u64,
    removed: u64,
    not_in_list: u64,
    strategies: Vec<String>,
    lat_mean: Duration,
    gap_mean: Duration,
    gap_p50: Duration,
    gap_p99: Duration,
    gap_max: Duration,
    first_to_last: Duration,
    lat_p50: Duration,
    lat_p99: Duration,
    lat_max: Duration,
    pacer_waited: Duration,
    fake_rss_kib: u64,
    hwm_kib: u64,
}

async fn one_run(dir: &Path, memory_store: bool, run: usize) -> RunResult {
    let fake = FakeAutoSend::new(FakeConfig {
        api_key: KEY.into(),
        rate_limits: vec![RateLimit::per_second(RATE)],
        faults: Faults::default(),
    });
    for l in 0..LISTS {
        let id = list_id(l);
        fake.add_contacts(&id, (0..MEMBERS_DESIRED).map(|i| email(l, i * 2)));
        fake.add_contacts(
            &id,
            (0..MEMBERS_OTHER).map(|i| format!("other{i}.l{l}@bench.example.com")),
        );
    }
    let served = fake.clone().serve_local().await.unwrap();
    let fake_rss_kib = proc_status("VmRSS:");
    // Reset the peak: from here on VmHWM is the apply's (plus the fake's resident memory).
    let _ = std::fs::write("/proc/self/clear_refs", "5");

    let store = Arc::new(if memory_store {
        Store::in_memory().unwrap()
    } else {
        let path = dir.join(format!("state-{run}.db"));
        Store::open(&path, "bench_apply").unwrap()
    });
    let mut config = ClientConfig::new(&served.base_url(), ApiKey::new(KEY));
    config.rate_limits = format!("{RATE}/s").parse().unwrap();
    let latencies = Arc::new(Latencies::default());
    let client = Client::new(config)
        .unwrap()
        .with_observer(latencies.clone());

    let started = Instant::now();
    let manifests = manifest::load(dir);
    assert!(!manifests.has_errors(), "{:?}", manifests.diagnostics);
    let options = PlanOptions {
        batch_size: BATCH,
        accounts: listwarden::account::Accounts::single(format!("{RATE}/s").parse().unwrap()),
        strategy: Strategy::Auto,
        ..PlanOptions::default()
    };
    let baselines = store.baselines().unwrap();
    let plan = Plan::for_manifests(&manifests, &baselines, |l| store.records(l), options).unwrap();
    reconcile::record_manifests(
        &store,
        &manifests,
        &plan.holds,
        listwarden::clock::now_unix(),
    )
    .unwrap();
    let load_plan = started.elapsed();
    let contacts = plan.to_assert();
    let planned_requests = plan.requests();
    let ctx = Context::new(client.clone(), store.clone(), BATCH);
    let sync_started = Instant::now();
    let report = reconcile::sync_all(
        &ctx,
        Arc::new(manifests.policies.clone()),
        plan.lists.clone(),
        CONCURRENCY,
    )
    .await;
    let sync = sync_started.elapsed();
    let hwm_kib = proc_status("VmHWM:");

    for o in &report.outcomes {
        assert!(
            o.result.is_ok(),
            "{} did not converge: {:?}",
            o.list,
            o.result
        );
    }
    for l in 0..LISTS {
        assert_eq!(fake.member_count(&list_id(l)), MEMBERS_OTHER);
    }
    let c = fake.counters();
    let mut lat = latencies.remove.lock().unwrap().clone();
    let mut sent = latencies.sent.lock().unwrap().clone();
    sent.sort();
    let mut gaps: Vec<Duration> = sent.windows(2).map(|w| w[1] - w[0]).collect();
    gaps.sort();
    let gap_mean = (sent[sent.len() - 1] - sent[0]) / (sent.len() as u32 - 1);
    lat.sort();
    let pct = |p: f64| lat[((lat.len() as f64 - 1.0) * p).round() as usize];
    let result = RunResult {
        load_plan,
        sync,
        contacts,
        planned_requests,
        fake_requests: c.requests,
        fake_429: c.rate_limited,
        client_requests: report.outcomes.iter().map(|o| o.requests).sum(),
        client_429: report.outcomes.iter().map(|o| o.rate_limited).sum(),
        removed: report.outcomes.iter().map(|o| o.removed).sum(),
        not_in_list: report.outcomes.iter().map(|o| o.not_in_list).sum(),
        strategies: report
            .outcomes
            .iter()
            .map(|o| o.strategy.clone().unwrap_or_default())
            .collect(),
        lat_mean: lat.iter().sum::<Duration>() / lat.len() as u32,
        gap_mean,
        gap_p50: gaps[gaps.len() / 2],
        gap_p99: gaps[((gaps.len() - 1) as f64 * 0.99).round() as usize],
        gap_max: *gaps.last().unwrap(),
        first_to_last: sent[sent.len() - 1] - sent[0],
        lat_p50: pct(0.5),
        lat_p99: pct(0.99),
        lat_max: *lat.last().unwrap(),
        pacer_waited: client.pacer().waited(),
        fake_rss_kib,
        hwm_kib,
    };
    served.shutdown().await;
    result
}

/// Time of `Store::record_batch` for 500 confirmed contacts, alone (median of 50).
fn commit_cost(dir: &Path, memory: bool) -> (Duration, Duration) {
    let store = if memory {
        Store::in_memory().unwrap()
    } else {
        Store::open(&dir.join("commit-cost.db"), "bench_apply").unwrap()
    };
    let list =
        listwarden::contact::ListKey::default_account(ContactListId::parse("commit-cost").unwrap());
    let mut times = Vec::new();
    for b in 0..50 {
        let contacts: Vec<String> = (0..BATCH).map(|i| email(9, b * BATCH + i)).collect();
        let outcomes: Vec<(&str, ContactOutcome)> = contacts
            .iter()
            .map(|c| (c.as_str(), ContactOutcome::Confirmed))
            .collect();
        let t = Instant::now();
        store
            .record_batch(&list, ContactKind::Email, &outcomes, 1)
            .unwrap();
        times.push(t.elapsed());
    }
    times.sort();
    (times[times.len() / 2], *times.last().unwrap())
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

fn main() {
    let mut runs = 3usize;
    let mut memory = false;
    let mut child: Option<(usize, std::path::PathBuf)> = None;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--runs" => runs = args.next().and_then(|n| n.parse().ok()).expect("--runs N"),
            "--store" => {
                memory = match args.next().as_deref() {
                    Some("memory") => true,
                    Some("file") => false,
                    _ => panic!("--store memory|file"),
                }
            }
            // Internal: one measured run in this process, on manifests already in DIR.
            "--child" => {
                let run = args
                    .next()
                    .and_then(|n| n.parse().ok())
                    .expect("--child N DIR");
                let dir = args.next().expect("--child N DIR").into();
                child = Some((run, dir));
            }
            other => panic!("unknown argument {other}; use --runs N, --store memory|file"),
        }
    }
    let ceiling = f64::from(RATE) * BATCH as f64;
    if let Some((run, dir)) = child {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let r = rt.block_on(one_run(&dir, memory, run));
        let rate = r.contacts as f64 / r.sync.as_secs_f64();
        println!(
            "{} | {run} | {:.2} s | {:.2} s | {:.0} | {:.3} | {} / {} / {} | {} / {} | {} / {} / {} / {} | {:.1} s | {:.0} MiB | {:.0} MiB |",
            rate / ceiling,
            r.load_plan.as_secs_f64(),
            r.sync.as_secs_f64(),
            rate,
            rate / ceiling,
            r.fake_requests,
            r.client_requests,
            r.planned_requests,
            r.fake_429,
            r.client_429,
            ms(r.lat_mean),
            ms(r.lat_p50),
            ms(r.lat_p99),
            ms(r.lat_max),
            r.pacer_waited.as_secs_f64(),
            mib(r.hwm_kib),
            mib(r.fake_rss_kib),
        );
        eprintln!(
            "run {run}: {} contacts asserted, removed {}, notInList {}, strategies {:?}; \
             gap between requests sent: mean {:.3} ms, p50 {:.3} ms, p99 {:.3} ms, max {:.3} ms \
             (pacer period {:.3} ms); first to last request {:.3} s",
            r.contacts,
            r.removed,
            r.not_in_list,
            r.strategies,
            r.gap_mean.as_secs_f64() * 1000.0,
            r.gap_p50.as_secs_f64() * 1000.0,
            r.gap_p99.as_secs_f64() * 1000.0,
            r.gap_max.as_secs_f64() * 1000.0,
            1000.0 / f64::from(RATE) * 1.02,
            r.first_to_last.as_secs_f64()
        );
        return;
    }

    // Parent: generate the manifests once, then one child process per run, so that each
    // run's peak RSS is its own.
    let dir = tempfile::tempdir().unwrap();
    write_manifests(dir.path());
    println!(
        "apply benchmark: {} contacts over {LISTS} lists, fake at {RATE}/s, client pacing {RATE}/s, \
         batch {BATCH}, concurrency {CONCURRENCY}, store {}",
        LISTS * PER_LIST,
        if memory { "in memory" } else { "SQLite file" }
    );
    println!(
        "| run | load+plan | sync | contacts/s | ratio to {RATE}x{BATCH} | requests (fake / client / planned) | 429 (fake / client) | remove latency mean / p50 / p99 / max | pacer wait (sum) | peak RSS (VmHWM) | fake RSS |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    let exe = std::env::current_exe().unwrap();
    let mut ratios = Vec::new();
    for run in 1..=runs {
        let out = std::process::Command::new(&exe)
            .args(["--child", &run.to_string()])
            .arg(dir.path())
            .args(["--store", if memory { "memory" } else { "file" }])
            .stderr(std::process::Stdio::inherit())
            .output()
            .unwrap();
        assert!(out.status.success(), "run {run} failed");
        let line = String::from_utf8(out.stdout).unwrap();
        let (ratio, row) = line.trim().split_once(" | ").unwrap();
        ratios.push(ratio.parse::<f64>().unwrap());
        println!("| {row}");
        let _ = std::io::stdout().flush();
    }
    let (median, max) = commit_cost(dir.path(), memory);
    println!(
        "\nrecord_batch of {BATCH} rows alone ({}): median {}, max {} (50 commits)",
        if memory { "in memory" } else { "SQLite file" },
        ms(median),
        ms(max)
    );
    ratios.sort_by(|a, b| a.partial_cmp(b).unwrap());
    println!(
        "ratio: min {:.3}, median {:.3}, max {:.3} (target >= 0.95 with zero 429s)",
        ratios[0],
        ratios[ratios.len() / 2],
        ratios[ratios.len() - 1]
    );
}
