//! Benchmark of `listwarden run` (issue 4): idle cost and reaction time.
//!
//! ```sh
//! cargo build --release --bin listwarden && cargo run --release --example bench_daemon
//! ```
//!
//! Sets up 100 policies over 20 lists (5 per list, each with its own data file of 1,000
//! addresses, half of them list members) against the in-process fake AutoSend (200 req/s),
//! starts the real release binary (`target/release/listwarden`, next to this example's own
//! directory) with `--rate-limit 200/s` and the default `--debounce 200ms`, and waits until
//! every list has converged. Then:
//!
//! 1. idle cost: CPU time (utime + stime from /proc/<pid>/stat) of the daemon over 60 s of
//!    doing nothing, as % of one core, and its memory (VmRSS, VmHWM);
//! 2. reaction time, 20 times: append an address (a member of the list) to one policy's data
//!    file and measure from just before the write to the first remove request the fake
//!    receives that contains it (the fake's remove log polled every 2 ms).
//!
//! Environment: `BENCH_IDLE_SECS` (default 60), `BENCH_TRIALS` (default 20),
//! `BENCH_PER_POLICY` (addresses per policy, default 1,000: 100,000 contacts; 10,000 makes
//! a million), `BENCH_LISTS` (default 20) and `BENCH_POLICIES_PER_LIST` (default 5),
//! `BENCH_UNLIMITED=1` (no rate limit at the fake, `--rate-limit unlimited` for the daemon).
//! Each trial also reports the daemon's CPU time from the write until it is quiet again.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use autosend_fake::{FakeAutoSend, FakeConfig, Faults, RateLimit};

fn env_or<T: std::str::FromStr>(key: &str, default: T) -> T {
    std::env::var(key)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

struct Guard(Child);

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn list_id(l: usize) -> String {
    format!("60d5ec49f1b2c72d9c8b{l:04x}")
}

fn policy_name(l: usize, p: usize) -> String {
    format!("list{l:02}-policy{p}")
}

fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("/proc/<pid>/stat");
    // Fields after the command name (which may hold spaces) start at field 3 (state).
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // utime is field 14, stime field 15 (1-based): indices 11 and 12 here.
    f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap()
}

fn status_kib(pid: u32, key: &str) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    s.lines()
        .find(|l| l.starts_with(key))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn clk_tck() -> u64 {
    let out = Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .expect("getconf");
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .unwrap_or(100)
}

fn machine() -> String {
    let nproc = std::thread::available_parallelism().map_or(0, |n| n.get());
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split_once(':'))
        .map_or("unknown".to_string(), |(_, m)| m.trim().to_string());
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let mem_kib: u64 = meminfo
        .lines()
        .find(|l| l.starts_with("MemTotal"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    format!(
        "nproc {nproc}, CPU \"{model}\", MemTotal {:.1} GiB, Linux {}",
        mem_kib as f64 / 1024.0 / 1024.0,
        kernel.trim()
    )
}

/// A plain HTTP/1.0 GET on 127.0.0.1 (no client library, so no TLS provider to set up).
fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    use std::io::Read;
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").ok()?;
    let mut buf = String::new();
    s.read_to_string(&mut buf).ok()?;
    let code = buf.split_whitespace().nth(1)?.parse().ok()?;
    let body = buf
        .split_once("\r\n\r\n")
        .map_or("", |(_, b)| b)
        .to_string();
    Some((code, body))
}

fn binary() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    // target/<profile>/examples/bench_daemon -> target/<profile>/listwarden
    let bin = exe
        .parent()
        .and_then(Path::parent)
        .map(|d| d.join("listwarden"))
        .unwrap();
    if !bin.exists() {
        eprintln!(
            "{} not found: build it first with `cargo build --release --bin listwarden`",
            bin.display()
        );
        std::process::exit(1);
    }
    bin
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx]
}

fn main() {
    let bin = binary();
    let idle_secs: u64 = std::env::var("BENCH_IDLE_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(60);
    let trials: usize = std::env::var("BENCH_TRIALS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20);
    let lists: usize = env_or("BENCH_LISTS", 20);
    let policies_per_list: usize = env_or("BENCH_POLICIES_PER_LIST", 5);
    let unlimited = std::env::var("BENCH_UNLIMITED").is_ok_and(|v| v == "1");
    println!("machine: {}", machine());
    println!("binary: {}", bin.display());

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let fake = FakeAutoSend::new(FakeConfig {
        api_key: "bench-key".into(),
        rate_limits: if unlimited {
            vec![]
        } else {
            vec![RateLimit::per_second(200)]
        },
        faults: Faults::default(),
    });
    let dir = tempfile::tempdir().unwrap();
    let manifests = dir.path().join("manifests");
    std::fs::create_dir_all(manifests.join("data")).unwrap();
    let per_policy: usize = std::env::var("BENCH_PER_POLICY")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1000);
    for l in 0..lists {
        let list = list_id(l);
        let mut members = Vec::new();
        for p in 0..policies_per_list {
            let name = policy_name(l, p);
            let emails: Vec<String> = (0..per_policy)
                .map(|i| format!("user{i}.{name}@example.com"))
                .collect();
            members.extend(emails.iter().step_by(2).cloned());
            std::fs::write(
                manifests.join(format!("data/{name}.txt")),
                emails.join("\n") + "\n",
            )
            .unwrap();
            std::fs::write(
                manifests.join(format!("{name}.yaml")),
                format!(
                    "apiVersion: listwarden.dev/v1\nkind: ListPolicy\nmetadata:\n  name: {name}\n\
                     spec:\n  contactListId: {list}\n  exclude:\n    files:\n      - path: data/{name}.txt\n"
                ),
            )
            .unwrap();
        }
        members.extend((0..500).map(|i| format!("keep{i}.{l}@example.com")));
        fake.add_contacts(&list, &members);
    }
    let served = rt.block_on(fake.clone().serve_local()).unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let log = std::fs::File::create(dir.path().join("daemon.log")).unwrap();
    let started = Instant::now();
    let child = Command::new(&bin)
        .arg("run")
        .arg(&manifests)
        .arg("--state")
        .arg(dir.path().join("state.db"))
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .args([
            "--rate-limit",
            if unlimited { "unlimited" } else { "200/s" },
        ])
        .env("AUTOSEND_API_URL", served.base_url())
        .env("AUTOSEND_API_KEY", "bench-key")
        .env_remove("LISTWARDEN_RATE_LIMIT")
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("start listwarden run");
    let daemon = Guard(child);
    let pid = daemon.0.id();

    // Converged: /readyz OK and every policy Ready=True.
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let ready = matches!(http_get(port, "/readyz"), Some((200, _)));
        let all_true = ready
            && http_get(port, "/status").is_some_and(|(_, body)| {
                body.contains("\"ready\": true") && !body.contains("\"ready\": \"False\"")
            });
        if all_true {
            break;
        }
        assert!(Instant::now() < deadline, "not converged after 120 s");
        std::thread::sleep(Duration::from_millis(50));
    }
    let converge = started.elapsed();
    let c = fake.counters();
    println!(
        "converged: {lists} lists, {} policies, {} contacts, in {:.2} s ({} requests, {} removed, {} not in list, {} x 429)",
        lists * policies_per_list,
        lists * policies_per_list * per_policy,
        converge.as_secs_f64(),
        c.requests,
        c.contacts_removed,
        c.contacts_not_in_list,
        c.rate_limited
    );
    fake.reset_counters();
    println!(
        "memory after convergence: VmRSS {} KiB, VmHWM {} KiB",
        status_kib(pid, "VmRSS:"),
        status_kib(pid, "VmHWM:")
    );

    // 1. Idle cost.
    let tck = clk_tck();
    std::thread::sleep(Duration::from_secs(2));
    let t0 = Instant::now();
    let c0 = cpu_ticks(pid);
    std::thread::sleep(Duration::from_secs(idle_secs));
    let c1 = cpu_ticks(pid);
    let wall = t0.elapsed().as_secs_f64();
    let cpu_secs = (c1 - c0) as f64 / tck as f64;
    let idle_requests = fake.counters().requests;
    println!(
        "idle {wall:.1} s: CPU {:.3} s ({} ticks at {tck}/s) = {:.3}% of one core; {idle_requests} API request(s); VmRSS {} KiB, VmHWM {} KiB",
        cpu_secs,
        c1 - c0,
        cpu_secs / wall * 100.0,
        status_kib(pid, "VmRSS:"),
        status_kib(pid, "VmHWM:")
    );

    // 2. Reaction time.
    let mut latencies = Vec::new();
    let mut cpu_per_edit = Vec::new();
    let mut rss_per_trial = Vec::new();
    for t in 0..trials {
        let l = (t * 7) % lists;
        let p = t % policies_per_list;
        let name = policy_name(l, p);
        let email = format!("late{t}.{name}@example.com");
        fake.add_contacts(&list_id(l), [&email]);
        fake.reset_counters();
        let path = manifests.join(format!("data/{name}.txt"));
        let cpu_before = cpu_ticks(pid);
        let before = Instant::now();
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap();
        writeln!(f, "{email}").unwrap();
        drop(f);
        let deadline = before + Duration::from_secs(10);
        loop {
            let seen = fake
                .counters()
                .remove_batches
                .iter()
                .any(|b| b.entries.iter().any(|e| e == &email));
            if seen {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "trial {t}: no remove within 10 s"
            );
            std::thread::sleep(Duration::from_millis(2));
        }
        let ms = before.elapsed().as_secs_f64() * 1000.0;
        latencies.push(ms);
        // Let the reconcile finish and the daemon go quiet before the next trial.
        std::thread::sleep(Duration::from_millis(400));
        cpu_per_edit.push((cpu_ticks(pid) - cpu_before) as f64 * 1000.0 / tck as f64);
        rss_per_trial.push(status_kib(pid, "VmRSS:") / 1024);
    }
    println!("VmRSS after each reload (MiB): {rss_per_trial:?}");
    cpu_per_edit.sort_by(|a, b| a.partial_cmp(b).unwrap());
    println!(
        "daemon CPU per edit (ms, write to quiet, {} ms ticks): median {:.0}, max {:.0}",
        1000 / tck,
        percentile(&cpu_per_edit, 0.5),
        cpu_per_edit[cpu_per_edit.len() - 1]
    );
    let mut sorted = latencies.clone();
    sorted.sort_by(|a, b| a.partial_cmp(b).unwrap());
    println!(
        "reaction over {trials} trials (ms): median {:.0}, p90 {:.0}, min {:.0}, max {:.0}; all: {}",
        percentile(&sorted, 0.5),
        percentile(&sorted, 0.9),
        sorted[0],
        sorted[sorted.len() - 1],
        latencies
            .iter()
            .map(|v| format!("{v:.0}"))
            .collect::<Vec<_>>()
            .join(" ")
    );
    println!(
        "memory at the end: VmRSS {} KiB, VmHWM {} KiB",
        status_kib(pid, "VmRSS:"),
        status_kib(pid, "VmHWM:")
    );
    drop(daemon);
    drop(served);
}
