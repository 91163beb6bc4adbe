//! Benchmark of the per-list strategy (issue 5): assert vs observe vs auto.
//!
//! Run with:
//!
//! ```sh
//! cargo run --release --example bench_strategy            # the whole grid, markdown table
//! cargo run --release --example bench_strategy -- --quick # D <= 10,000 only
//! ```
//!
//! For every cell of the grid D (desired-absent contacts, all pending: a first sync or a
//! resync) x N (members of the list), with `present = max(1, min(D, N) / 100)` of the
//! members in the desired-absent set, each strategy is **run** against the fake AutoSend
//! (served in-process, no rate limit, no client pacing, a fresh state store per run) through
//! the library's real sync path (`Plan::build` + `reconcile::sync_all`), and the requests are
//! the fake's own counters (the pre-flight `get_list` included). Nothing is computed from a
//! formula, but the formula (`assert = 1 + ceil(D / 500)`, `observe = 1 + ceil(N / 100) +
//! ceil(present / 500)`) is checked against every measured count, so a cell that disagrees
//! stops the benchmark.
//!
//! The simulated wall time is `RateLimits::default().least_time(requests)`: what the requests
//! need at AutoSend's documented 2/s and 50/min (one request every 1.2 s), which dwarfs the
//! time the fake takes. `auto ok` says whether auto's requests are at most
//! `min(assert, observe) + 1`.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use autosend::{ApiKey, Client, ClientConfig, RateLimits};
use autosend_fake::{FakeAutoSend, FakeConfig, Faults};
use listwarden::desired::DesiredState;
use listwarden::human::{duration, thousands};
use listwarden::manifest::{self, Manifests, Strategy};
use listwarden::plan::{ListRecords, Plan, PlanOptions};
use listwarden::reconcile::{self, Context, ListResult};
use listwarden::store::Store;

const KEY: &str = "bench-key";
const LIST: &str = "bench-list";

struct Cell {
    d: usize,
    n: usize,
    present: usize,
    assert: u64,
    observe: u64,
    auto: u64,
    auto_choice: String,
}

fn member(i: usize) -> String {
    format!("m{i}@list.example")
}

/// The desired-absent set of size `d`: `in_list` list members (`m{i}`) first, the rest
/// addresses no list has.
fn write_manifest(dir: &Path, d: usize, in_list: usize) {
    let mut text = String::with_capacity(d * 28);
    for i in 0..d {
        if i < in_list {
            text.push_str(&member(i));
        } else {
            text.push_str(&format!("s{i}@suppressed.example"));
        }
        text.push('\n');
    }
    std::fs::write(dir.join("set.txt"), text).unwrap();
    std::fs::write(
        dir.join("policy.yaml"),
        format!(
            "apiVersion: listwarden.dev/v1\nkind: ListPolicy\nmetadata:\n  name: bench\n\
             spec:\n  contactListId: {LIST}\n  exclude:\n    files:\n      - path: set.txt\n"
        ),
    )
    .unwrap();
}

/// One sync of the list with `strategy`; returns the fake's request count and the strategy
/// used, then puts the removed members back.
async fn run_once(
    fake: &FakeAutoSend,
    client: &Client,
    m: &Manifests,
    desired: &DesiredState,
    strategy: Strategy,
    present: &[String],
) -> (u64, String) {
    fake.reset_counters();
    let store = Arc::new(Store::in_memory().unwrap());
    let plan = Plan::build(
        &m.policies,
        desired,
        |_| ListRecords::default(),
        PlanOptions {
            strategy,
            ..PlanOptions::default()
        },
    );
    let ctx = Context::new(client.clone(), store, plan.options.batch_size);
    let report = reconcile::sync_all(&ctx, Arc::new(m.policies.clone()), plan.lists, 1).await;
    let o = &report.outcomes[0];
    assert_eq!(o.result, ListResult::Converged, "{o:?}");
    assert_eq!(o.removed as usize, present.len(), "{o:?}");
    let requests = fake.counters().requests;
    assert_eq!(requests, o.requests, "the fake and the client disagree");
    fake.add_contacts(LIST, present);
    (requests, o.strategy.clone().unwrap_or_default())
}

/// (list size N, members of the list that are desired-absent)
type ListCell = (usize, usize);

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let ds: &[usize] = if quick {
        &[100, 1_000, 10_000]
    } else {
        &[100, 1_000, 10_000, 100_000, 1_000_000]
    };
    let ns: &[usize] = &[100, 1_000, 10_000, 100_000];
    let limits = RateLimits::default();
    let started = Instant::now();
    let mut cells = Vec::new();
    // (D, members of the set that are `m{i}`, [(N, present)]): the grid, then one adversarial
    // cell outside it where every member of the list is desired-absent.
    let mut cases: Vec<(usize, usize, Vec<ListCell>)> = ds
        .iter()
        .map(|&d| {
            let per_n = ns.iter().map(|&n| (n, (d.min(n) / 100).max(1))).collect();
            (d, (d / 100).max(1), per_n)
        })
        .collect();
    cases.push((55_000, 10_000, vec![(10_000, 10_000)]));
    for (d, in_list, per_n) in cases {
        let dir = tempfile::tempdir().unwrap();
        write_manifest(dir.path(), d, in_list);
        let m = manifest::load(dir.path());
        assert!(!m.has_errors(), "{:?}", m.diagnostics);
        let desired = DesiredState::build(&m.policies);
        for (n, present_n) in per_n {
            let fake = FakeAutoSend::new(FakeConfig {
                api_key: KEY.into(),
                rate_limits: vec![],
                faults: Faults::default(),
            });
            let present: Vec<String> = (0..present_n).map(member).collect();
            fake.add_contacts(LIST, &present);
            fake.add_contacts(
                LIST,
                (present_n..n).map(|i| format!("o{i}@members.example")),
            );
            assert_eq!(fake.member_count(LIST), n);
            let served = fake.clone().serve_local().await.unwrap();
            let mut config = ClientConfig::new(&served.base_url(), ApiKey::new(KEY));
            config.rate_limits = RateLimits(vec![]);
            config.min_backoff = Duration::from_millis(10);
            let client = Client::new(config).unwrap();

            let (assert, _) =
                run_once(&fake, &client, &m, &desired, Strategy::Assert, &present).await;
            let (observe, _) =
                run_once(&fake, &client, &m, &desired, Strategy::Observe, &present).await;
            let (auto, auto_choice) =
                run_once(&fake, &client, &m, &desired, Strategy::Auto, &present).await;
            let formula_assert = 1 + d.div_ceil(500) as u64;
            let formula_observe =
                1 + listwarden::observe::pages(n as u64) + present_n.div_ceil(500) as u64;
            assert_eq!(assert, formula_assert, "assert D={d} N={n}");
            assert_eq!(observe, formula_observe, "observe D={d} N={n}");
            eprintln!(
                "D={d} N={n}: assert {assert}, observe {observe}, auto {auto} ({auto_choice}) [{:.1}s]",
                started.elapsed().as_secs_f64()
            );
            cells.push(Cell {
                d,
                n,
                present: present_n,
                assert,
                observe,
                auto,
                auto_choice,
            });
            served.shutdown().await;
        }
    }

    let t = |r: u64| duration(limits.least_time(r as usize));
    println!(
        "| D (desired-absent) | N (members) | present | assert: requests, time | observe: requests, time | auto: choice, requests, time | auto <= min + 1 |"
    );
    println!("|---:|---:|---:|---:|---:|---|---|");
    let mut violations = 0;
    let grid = cells.len() - 1;
    for (i, c) in cells.iter().enumerate() {
        if i == grid {
            println!("| *outside the grid: every member desired-absent* | | | | | | |");
        }
        let best = c.assert.min(c.observe);
        let ok = c.auto <= best + 1;
        if !ok && i < grid {
            violations += 1;
        }
        println!(
            "| {} | {} | {} | {}, {} | {}, {} | {}, {}, {} | {} |",
            thousands(c.d),
            thousands(c.n),
            thousands(c.present),
            thousands(c.assert as usize),
            t(c.assert),
            thousands(c.observe as usize),
            t(c.observe),
            c.auto_choice,
            thousands(c.auto as usize),
            t(c.auto),
            if ok {
                if c.auto == best {
                    "yes (best)".to_string()
                } else {
                    format!("yes (+{})", c.auto - best)
                }
            } else {
                format!("**no** (+{})", c.auto - best)
            }
        );
    }
    eprintln!(
        "{} grid cell(s), {} violation(s), {:.1}s",
        grid,
        violations,
        started.elapsed().as_secs_f64()
    );
    if violations > 0 {
        std::process::exit(1);
    }
}
