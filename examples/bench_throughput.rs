//! Benchmark of throughput at the server's limit, as a whole `listwarden apply` process: the
//! last row of the scale issue's targets.
//!
//! ```sh
//! cargo build --release -p listwarden --bin listwarden
//! cargo run --release --example bench_throughput -- [--seconds 60] [--runs 5] [--window both]
//! ```
//!
//! Setup: the fake AutoSend served in this process on 127.0.0.1, limited to 50 requests/s
//! per key, counting fixed epoch-second windows (`fixed`) or any 1 s window ending now
//! (`sliding`, the strict one). Enough desired-absent addresses to keep that budget busy for
//! `--seconds` (50 × 500 × seconds, over 4 lists, one text file source each), `strategy:
//! assert`, batches of 500, 4 lists at a time, `--rate-limit 50/s`, a fresh SQLite store per
//! run, `--force` (the runs are far beyond any removal threshold).
//!
//! Measured per run: the whole process, from spawn to exit, and the moment the fake saw its
//! first request (load, plan and recording before it); requests and 429s as the fake counted
//! them. Ratio = contacts confirmed ÷ (50 × 500 × process wall time): what the issue asks,
//! start-up included.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

#[path = "common/mod.rs"]
mod common;

use autosend_fake::{FakeAutoSend, FakeConfig, ListKind, RateLimit, RateWindow};
use common::{email, list_id, median_f64, release_dir, wait_watching};

const KEY: &str = "bench-key";
const LISTS: usize = 4;
const RATE: u32 = 50;
const BATCH: usize = 500;

struct Args {
    seconds: usize,
    runs: usize,
    windows: Vec<RateWindow>,
    bin: std::path::PathBuf,
}

fn args() -> Args {
    let mut a = Args {
        seconds: 60,
        runs: 5,
        windows: vec![RateWindow::Sliding, RateWindow::Fixed],
        bin: release_dir().join("listwarden"),
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it.next().unwrap_or_else(|| panic!("{flag} needs a value"));
        match flag.as_str() {
            "--seconds" => a.seconds = value.parse().expect("--seconds N"),
            "--runs" => a.runs = value.parse().expect("--runs N"),
            "--window" => {
                a.windows = match value.as_str() {
                    "both" => vec![RateWindow::Sliding, RateWindow::Fixed],
                    w => vec![w.parse().expect("--window fixed|sliding|both")],
                }
            }
            "--bin" => a.bin = value.into(),
            other => panic!("unknown flag {other}"),
        }
    }
    a
}

fn generate(dir: &Path, contacts: usize) {
    let per_list = contacts / LISTS;
    for l in 0..LISTS {
        let mut text = String::with_capacity(per_list * 36);
        for i in 0..per_list {
            text.push_str(&email(l * per_list + i));
            text.push('\n');
        }
        std::fs::write(dir.join(format!("list{l}.txt")), text).unwrap();
        std::fs::write(
            dir.join(format!("list{l}.yaml")),
            format!(
                "apiVersion: listwarden.dev/v1\nkind: ListPolicy\nmetadata:\n  name: bench-{l}\n\
                 spec:\n  contactListId: {}\n  strategy: assert\n  exclude:\n    files:\n      \
                 - path: list{l}.txt\n",
                list_id(l)
            ),
        )
        .unwrap();
    }
}

struct Run {
    wall: Duration,
    first_request: Duration,
    requests: u64,
    removes: u64,
    rate_limited: u64,
    ok: bool,
}

fn one_run(rt: &tokio::runtime::Runtime, args: &Args, dir: &Path, window: RateWindow) -> Run {
    let fake = FakeAutoSend::new(FakeConfig {
        api_key: KEY.into(),
        rate_limits: vec![RateLimit::per_second(RATE)],
        ..FakeConfig::default()
    });
    fake.set_rate_window(window);
    for l in 0..LISTS {
        fake.add_list(&list_id(l), &format!("bench {l}"), ListKind::List);
    }
    let running = rt.block_on(fake.clone().serve_local()).unwrap();
    let state = dir.join("state.db");
    let _ = std::fs::remove_file(&state);
    let _ = std::fs::remove_file(dir.join("state.db-wal"));
    let _ = std::fs::remove_file(dir.join("state.db-shm"));

    let start = Instant::now();
    let mut child = Command::new(&args.bin)
        .arg("apply")
        .arg(dir.join("m"))
        .args(["--rate-limit", &format!("{RATE}/s")])
        .args(["--batch-size", &BATCH.to_string()])
        .args(["--concurrency", "4", "--strategy", "assert", "--force"])
        .arg("--state")
        .arg(&state)
        .env("AUTOSEND_API_KEY", KEY)
        .env("AUTOSEND_API_URL", running.base_url())
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("run listwarden (cargo build --release --bin listwarden)");
    // The fake has no clock of its own for its first request: watch its counter.
    let mut first_request = None;
    let status = wait_watching(&mut child, || {
        if first_request.is_none() && fake.counters().requests > 0 {
            first_request = Some(start.elapsed());
        }
    });
    let wall = start.elapsed();
    let counters = fake.counters();
    drop(running);
    Run {
        wall,
        first_request: first_request.unwrap_or(wall),
        requests: counters.requests,
        removes: counters.remove_requests,
        rate_limited: counters.rate_limited,
        ok: status.success(),
    }
}

fn main() {
    let args = args();
    let contacts = RATE as usize * BATCH * args.seconds;
    let tmp = std::env::temp_dir().join(format!("lw-bench-throughput-{}", std::process::id()));
    std::fs::create_dir_all(tmp.join("m")).unwrap();
    generate(&tmp.join("m"), contacts);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let ceiling = f64::from(RATE) * BATCH as f64;
    println!(
        "throughput: {contacts} contacts over {LISTS} lists, fake at {RATE}/s, batch {BATCH}, \
         {} runs per window\n",
        args.runs
    );
    println!(
        "| window | run | wall (process) | first request at | requests | removes | 429 | ratio |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|");
    for &window in &args.windows {
        let mut ratios = Vec::new();
        for run in 1..=args.runs {
            let r = one_run(&rt, &args, &tmp, window);
            assert!(r.ok, "listwarden apply failed");
            let ratio = contacts as f64 / (ceiling * r.wall.as_secs_f64());
            ratios.push(ratio);
            println!(
                "| {window:?} | {run} | {:.2} s | {:.2} s | {} | {} | {} | {ratio:.4} |",
                r.wall.as_secs_f64(),
                r.first_request.as_secs_f64(),
                r.requests,
                r.removes,
                r.rate_limited,
            );
        }
        println!(
            "| {window:?} | median | | | | | | {:.4} |",
            median_f64(ratios)
        );
    }
    let _ = std::fs::remove_dir_all(&tmp);
}
