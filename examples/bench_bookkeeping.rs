//! Benchmark of the bookkeeping around many small policies: `plan --output json` with
//! 100,000 lists, and an `apply` with nothing to do over 100,000 policies (its status
//! writes, counted in fsyncs when `strace` is there).
//!
//! Both are timed as whole processes of a `listwarden` binary, so two builds (say, before and
//! after a change) can be compared in one run on the same data:
//!
//! ```sh
//! cargo build --release -p listwarden --bin listwarden -p autosend-fake --bin autosend-fake
//! cargo run --release --example bench_bookkeeping -- [--lists 100000] \
//!     [--bin target/release/listwarden --bin /other/build/listwarden]
//! ```
//!
//! Data: one policy per list, one email each, 100 manifest files. For the apply, the fake
//! AutoSend (`target/release/autosend-fake`, no rate limit) is seeded with every
//! list; a first apply confirms every contact, then the no-op apply is timed (median of 3).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const FILES: usize = 100;
const RUNS: usize = 3;

fn generate(dir: &Path, lists: usize) {
    let manifests = dir.join("manifests");
    std::fs::create_dir_all(&manifests).unwrap();
    let per_file = lists.div_ceil(FILES);
    for f in 0..FILES {
        let mut text = String::new();
        for i in f * per_file..((f + 1) * per_file).min(lists) {
            text.push_str(&format!(
                "---\napiVersion: listwarden.dev/v1\nkind: ListPolicy\nmetadata: {{name: p{i}}}\n\
                 spec:\n  contactListId: l{i}\n  exclude: {{emails: [u{i}@example.com]}}\n"
            ));
        }
        std::fs::write(manifests.join(format!("m{f:03}.yaml")), text).unwrap();
    }
    let seed: Vec<String> = (0..lists)
        .map(|i| format!("{{\"id\": \"l{i}\"}}"))
        .collect();
    std::fs::write(
        dir.join("seed.json"),
        format!("{{\"lists\": [{}]}}", seed.join(",")),
    )
    .unwrap();
}

fn timed(cmd: &mut Command) -> Duration {
    let started = Instant::now();
    let status = cmd
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("run listwarden");
    let took = started.elapsed();
    assert!(status.success(), "{cmd:?} failed: {status}");
    took
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// fsync + fdatasync calls of one command, if strace is installed.
fn fsyncs(cmd: Command) -> Option<u64> {
    let program = cmd.get_program().to_owned();
    let args: Vec<_> = cmd.get_args().map(|a| a.to_owned()).collect();
    let out = Command::new("strace")
        .args([
            "-f",
            "-c",
            "-e",
            "trace=fsync,fdatasync",
            "-o",
            "/dev/stdout",
            "--",
        ])
        .arg(program)
        .args(args)
        .envs(
            cmd.get_envs()
                .filter_map(|(k, v)| v.map(|v| (k.to_owned(), v.to_owned()))),
        )
        .current_dir(cmd.get_current_dir().unwrap_or(Path::new(".")))
        .stderr(Stdio::null())
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let calls = text
        .lines()
        .filter(|l| l.contains("fsync") || l.contains("fdatasync"))
        .filter_map(|l| l.split_whitespace().nth(3)?.parse::<u64>().ok())
        .sum();
    Some(calls)
}

fn main() {
    let mut bins: Vec<PathBuf> = Vec::new();
    let mut lists = 100_000usize;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--bin" => bins.push(args.next().expect("--bin PATH").into()),
            "--lists" => lists = args.next().expect("--lists N").parse().expect("a number"),
            other => panic!("unknown argument {other}"),
        }
    }
    let here = std::env::current_exe().unwrap();
    let release = here.parent().unwrap().parent().unwrap().to_path_buf();
    if bins.is_empty() {
        bins.push(release.join("listwarden"));
    }
    let fake = release.join("autosend-fake");
    let dir = tempfile::tempdir().unwrap();
    generate(dir.path(), lists);
    println!("{lists} lists, one policy and one email each, {FILES} files");
    for bin in &bins {
        let plan = |output: &str| {
            median(
                (0..RUNS)
                    .map(|_| {
                        timed(
                            Command::new(bin)
                                .current_dir(dir.path())
                                .env("LISTWARDEN_STATE", "absent/state.db")
                                .args(["plan", "manifests", "--output", output]),
                        )
                    })
                    .collect(),
            )
        };
        let (json, text) = (plan("json"), plan("text"));

        let port = free_port();
        let mut server = Command::new(&fake)
            .args([
                "--listen",
                &format!("127.0.0.1:{port}"),
                "--rate-limit",
                "none",
            ])
            .arg("--seed")
            .arg(dir.path().join("seed.json"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start the fake (cargo build --release -p autosend-fake)");
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            std::thread::sleep(Duration::from_millis(50));
        }
        let state = dir.path().join(format!(
            "state-{}.db",
            bins.iter().position(|b| b == bin).unwrap()
        ));
        let apply = || {
            let mut c = Command::new(bin);
            c.current_dir(dir.path())
                .env("AUTOSEND_API_URL", format!("http://127.0.0.1:{port}/v1"))
                .env("AUTOSEND_API_KEY", "test-key")
                .env("RUST_LOG", "warn")
                .arg("apply")
                .arg("manifests")
                .arg("--state")
                .arg(&state)
                .args(["--rate-limit", "unlimited", "--strategy", "assert"]);
            c
        };
        let first = timed(&mut apply());
        let noop = median((0..RUNS).map(|_| timed(&mut apply())).collect());
        let syncs = fsyncs(apply());
        let _ = server.kill();
        let _ = server.wait();
        println!("\n{}", bin.display());
        println!(
            "  plan --output json: {:.2} s (text: {:.2} s)",
            json.as_secs_f64(),
            text.as_secs_f64()
        );
        println!(
            "  first apply (every list once): {:.1} s",
            first.as_secs_f64()
        );
        println!(
            "  apply with nothing to do: {:.2} s, {} fsync/fdatasync calls",
            noop.as_secs_f64(),
            syncs.map_or("?".to_string(), |n| n.to_string())
        );
    }
}
