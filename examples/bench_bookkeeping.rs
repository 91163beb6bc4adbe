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

#[path = "common/mod.rs"]
mod common;

use common::{FakeProcess, release_dir};

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

/// fsync + fdatasync calls of one command, if strace is installed.
fn fsyncs(cmd: Command) -> Option<u64> {
    // strace's table goes to its own file: the program's stdout must not mix into it.
    let table = tempfile::NamedTempFile::new().ok()?;
    let ok = common::wrapped(
        &cmd,
        "strace",
        &[
            "-f".as_ref(),
            "-c".as_ref(),
            "-e".as_ref(),
            "trace=fsync,fdatasync".as_ref(),
            "-o".as_ref(),
            table.path().as_os_str(),
            "--".as_ref(),
        ],
    )
    .stdout(Stdio::null())
    .stderr(Stdio::null())
    .status()
    .ok()?
    .success();
    if !ok {
        return None;
    }
    let text = std::fs::read_to_string(table.path()).ok()?;
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
    if bins.is_empty() {
        bins.push(release_dir().join("listwarden"));
    }
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

        let fake = FakeProcess::start(&dir.path().join("seed.json"));
        let state = dir.path().join(format!(
            "state-{}.db",
            bins.iter().position(|b| b == bin).unwrap()
        ));
        let apply = || {
            let mut c = Command::new(bin);
            c.current_dir(dir.path())
                .env("AUTOSEND_API_URL", fake.url())
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
        drop(fake);
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
