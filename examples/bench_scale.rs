//! Benchmark of listwarden at scale, as whole processes: the figures of the scale issue.
//!
//! ```sh
//! cargo build --release -p listwarden --bin listwarden -p autosend-fake --bin autosend-fake
//! cargo run --release --example bench_scale -- [--contacts 1000000] [--bin PATH]
//! ```
//!
//! Data (generated here): `--contacts` distinct addresses over 100 policies and 10 lists, each
//! policy with its own text file source, plus 20% duplicates across the policies of a list
//! (each file repeats the first addresses of another policy on its list).
//!
//! Measured, each a whole process timed start to exit (median of `--runs`, default 5, for
//! the plans; 3 for applies), with its peak RSS (`/usr/bin/time`):
//! - cold `plan DIR --output json` (no store), and the same union done by a plain Python
//!   script (read every file, one set per list, print the counts) in the same run: the ratio;
//! - the store filled by a real `apply` against the fake (`--rate-limit unlimited`, batches
//!   of 500), then: warm `plan`, `apply` with nothing to do (0 requests), `apply` after
//!   adding one address (1 request), `status --output json`, and the store's size per
//!   contact row.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

#[path = "common/mod.rs"]
mod common;

use common::{FakeProcess, email, list_id, release_dir};

const LISTS: usize = 10;
const POLICIES: usize = 100;

fn generate(dir: &Path, contacts: usize) {
    let per_policy = contacts / POLICIES;
    let duplicates = per_policy / 5;
    std::fs::create_dir_all(dir.join("m/data")).unwrap();
    for p in 0..POLICIES {
        let mut text = String::with_capacity((per_policy + duplicates) * 36);
        for i in 0..per_policy {
            let _ = writeln!(text, "{}", email(p * per_policy + i));
        }
        let other = (p + LISTS) % POLICIES;
        for i in 0..duplicates {
            let _ = writeln!(text, "{}", email(other * per_policy + i));
        }
        std::fs::write(dir.join(format!("m/data/policy-{p:03}.txt")), text).unwrap();
        std::fs::write(
            dir.join(format!("m/policy-{p:03}.yaml")),
            format!(
                "apiVersion: listwarden.dev/v1\nkind: ListPolicy\nmetadata:\n  name: policy-{p:03}\n\
                 spec:\n  contactListId: {}\n  exclude:\n    files:\n      - path: data/policy-{p:03}.txt\n",
                list_id(p % LISTS)
            ),
        )
        .unwrap();
    }
    let seed: Vec<String> = (0..LISTS)
        .map(|l| format!("{{\"id\": \"{}\"}}", list_id(l)))
        .collect();
    std::fs::write(
        dir.join("seed.json"),
        format!("{{\"lists\": [{}]}}", seed.join(",")),
    )
    .unwrap();
    // The baseline: a plain set union per list, as a few lines of Python would do it.
    std::fs::write(
        dir.join("union.py"),
        "import sys, glob, re, json\n\
         lists = {}\n\
         for y in sorted(glob.glob(sys.argv[1] + '/*.yaml')):\n\
         \x20   text = open(y).read()\n\
         \x20   lid = re.search(r'contactListId: (\\S+)', text).group(1)\n\
         \x20   data = re.search(r'path: (\\S+)', text).group(1)\n\
         \x20   s = lists.setdefault(lid, set())\n\
         \x20   with open(sys.argv[1] + '/' + data) as f:\n\
         \x20       for line in f:\n\
         \x20           line = line.strip().lower()\n\
         \x20           if line and not line.startswith('#'):\n\
         \x20               s.add(line)\n\
         print(json.dumps({k: len(v) for k, v in sorted(lists.items())}))\n",
    )
    .unwrap();
}

/// Wall time and peak RSS (KiB) of one command; its stdout.
fn measure(cmd: &mut Command) -> (Duration, u64, String) {
    let rss_file = tempfile::NamedTempFile::new().unwrap();
    let mut timed = common::wrapped(
        cmd,
        "/usr/bin/time",
        &[
            "-f".as_ref(),
            "%M".as_ref(),
            "-o".as_ref(),
            rss_file.path().as_os_str(),
        ],
    );
    timed.stderr(Stdio::null());
    let started = Instant::now();
    let out = timed.output().expect("run /usr/bin/time");
    let took = started.elapsed();
    assert!(out.status.success(), "{cmd:?} failed: {}", out.status);
    let rss = std::fs::read_to_string(rss_file.path())
        .unwrap_or_default()
        .trim()
        .parse()
        .unwrap_or(0);
    (took, rss, String::from_utf8_lossy(&out.stdout).into_owned())
}

fn median(mut v: Vec<(Duration, u64)>) -> (Duration, u64) {
    v.sort();
    let max_rss = v.iter().map(|(_, r)| *r).max().unwrap_or(0);
    (v[v.len() / 2].0, max_rss)
}

fn row(what: &str, (t, rss): (Duration, u64)) {
    println!(
        "  {what:<44} {:>8.2} s   peak {:>6} MiB",
        t.as_secs_f64(),
        rss / 1024
    );
}

fn main() {
    let mut contacts = 1_000_000usize;
    let mut runs = 5usize;
    let mut bin: Option<PathBuf> = None;
    let mut keep: Option<PathBuf> = None;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--contacts" => contacts = args.next().unwrap().parse().unwrap(),
            "--runs" => runs = args.next().unwrap().parse().unwrap(),
            "--bin" => bin = Some(args.next().unwrap().into()),
            "--keep" => keep = Some(PathBuf::from(args.next().unwrap())),
            other => panic!("unknown argument {other}"),
        }
    }
    let bin = bin.unwrap_or_else(|| release_dir().join("listwarden"));
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // `--keep DIR` leaves the data and the store behind, for profiling one command by hand.
    let d = match &keep {
        Some(k) => {
            let _ = std::fs::remove_dir_all(k);
            std::fs::create_dir_all(k).unwrap();
            k.as_path()
        }
        None => d,
    };
    let started = Instant::now();
    generate(d, contacts);
    println!(
        "{contacts} contacts over {POLICIES} policies and {LISTS} lists (+20% duplicates), \
         generated in {:.1} s; {}",
        started.elapsed().as_secs_f64(),
        bin.display()
    );
    let lw = || {
        let mut c = Command::new(&bin);
        c.current_dir(d).env("RUST_LOG", "warn");
        c
    };

    let mut cold = Vec::new();
    let mut python = Vec::new();
    for _ in 0..runs {
        let (t, rss, _) = measure(
            lw().env("LISTWARDEN_STATE", d.join("absent.db"))
                .args(["plan", "m", "--output", "json"]),
        );
        cold.push((t, rss));
        let (t, rss, _) = measure(
            Command::new("python3")
                .current_dir(d)
                .args(["union.py", "m"]),
        );
        python.push((t, rss));
    }
    let (cold, python) = (median(cold), median(python));
    row("cold plan --output json", cold);
    row("Python set-union baseline", python);
    println!(
        "  {:<44} {:>8.2} x",
        "Python / listwarden (higher is better)",
        python.0.as_secs_f64() / cold.0.as_secs_f64()
    );

    let fake = FakeProcess::start(&d.join("seed.json"));
    let apply = || {
        let mut c = lw();
        c.env("AUTOSEND_API_URL", fake.url())
            .env("AUTOSEND_API_KEY", "test-key")
            .args(["apply", "m", "--state", "s.db", "--rate-limit", "unlimited"])
            .args(["--strategy", "assert"]);
        c
    };
    let (t, rss, _) = measure(&mut apply());
    row("first apply (fills the store)", (t, rss));
    let warm = median(
        (0..runs.min(3))
            .map(|_| {
                let (t, rss, _) =
                    measure(lw().args(["plan", "m", "--output", "json", "--state", "s.db"]));
                (t, rss)
            })
            .collect(),
    );
    row("warm plan --output json", warm);
    let mut requests = String::new();
    let noop = median(
        (0..3)
            .map(|_| {
                let (t, rss, out) = measure(&mut apply());
                requests = out
                    .lines()
                    .filter(|l| l.contains("request(s)"))
                    .filter_map(|l| {
                        l.split("; ")
                            .find(|p| p.contains("request(s)"))
                            .map(str::to_string)
                    })
                    .collect::<Vec<_>>()
                    .join(" | ");
                (t, rss)
            })
            .collect(),
    );
    row("apply with nothing to do", noop);
    let status = median(
        (0..runs.min(3))
            .map(|_| {
                let (t, rss, _) =
                    measure(lw().args(["status", "--state", "s.db", "--output", "json"]));
                (t, rss)
            })
            .collect(),
    );
    row("status --output json", status);
    println!("    its requests: {requests}");
    let first = d.join("m/data/policy-000.txt");
    let mut text = std::fs::read_to_string(&first).unwrap();
    text.push_str("one.more@example.com\n");
    std::fs::write(&first, text).unwrap();
    let (t, rss, _) = measure(&mut apply());
    row("apply after adding one address", (t, rss));
    drop(fake);

    let size = ["s.db", "s.db-wal"]
        .iter()
        .map(|f| std::fs::metadata(d.join(f)).map(|m| m.len()).unwrap_or(0))
        .sum::<u64>();
    let rows = contacts + 1;
    println!(
        "  {:<44} {:>8.1} MB   {:.0} B per contact row",
        "store size",
        size as f64 / 1e6,
        size as f64 / rows as f64
    );
}
