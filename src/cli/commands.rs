//! `apply`, `status` and `plan --refresh`: the commands that talk to AutoSend or read the
//! store. Each builds its pieces, calls the library, and maps the outcome to an exit code.

use std::io::IsTerminal;
use std::sync::Arc;

use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;

use super::{
    ApiFlags, ApplyArgs, EXIT_CHANGES, EXIT_ERROR, EXIT_OK, EXIT_PARTIAL, Output, PlanArgs,
    RunArgs, StatusArgs, plan_options, print_diagnostics,
};
use crate::autosend::{Client, ClientConfig, Tally};
use crate::contact::ContactListId;
use crate::manifest::Manifests;
use crate::plan::Plan;
use crate::reconcile::{self, Context, ListResult, Progress, SyncReport};
use crate::render::{self, thousands};
use crate::store::Store;

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a tokio runtime")
}

/// Builds the client from the environment and flags; the error never holds the key.
pub fn client(api: &ApiFlags, rate_limits: &crate::autosend::RateLimits) -> Result<Client, String> {
    let mut config =
        ClientConfig::from_env(api.api_key_file.as_deref()).map_err(|e| e.to_string())?;
    config.rate_limits = rate_limits.clone();
    config.max_retries = api.max_retries;
    config.min_backoff = api.retry_backoff;
    config.max_backoff = config.max_backoff.max(api.retry_backoff);
    Client::new(config).map_err(|e| e.to_string())
}

/// A progress bar on a terminal, a log line a batch otherwise.
struct ApplyProgress {
    bar: Option<ProgressBar>,
}

impl ApplyProgress {
    fn new(total: usize) -> ApplyProgress {
        let bar = std::io::stderr().is_terminal().then(|| {
            let bar = ProgressBar::new(total as u64);
            bar.set_style(
                ProgressStyle::with_template(
                    "{spinner} [{elapsed_precise}] {bar:40} {pos}/{len} contacts ({eta} left)",
                )
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
            );
            bar
        });
        ApplyProgress { bar }
    }
}

impl Progress for ApplyProgress {
    fn list_started(&self, list: &ContactListId, contacts: usize) {
        if self.bar.is_none() {
            eprintln!("list {list}: asserting {contacts} contact(s)");
        }
    }
    fn batch_done(&self, list: &ContactListId, contacts: usize) {
        match &self.bar {
            Some(bar) => bar.inc(contacts as u64),
            None => eprintln!("list {list}: batch of {contacts} done"),
        }
    }
}

/// Prints a setup error (no key, unreadable store...) as one line; the exit code is 1.
fn or_exit<T>(r: Result<T, String>) -> Result<T, u8> {
    r.map_err(|e| {
        eprintln!("error: {e}");
        EXIT_ERROR
    })
}

/// The client and the store that `apply` and `run` both need.
fn connect(
    api: &ApiFlags,
    flags: &super::PlanFlags,
    state: &super::StateFlags,
) -> Result<(Client, Arc<Store>), u8> {
    let client = or_exit(client(api, &flags.rate_limit))?;
    let store = or_exit(Store::open(&state.state).map_err(|e| e.to_string()))?;
    Ok((client, Arc::new(store)))
}

pub fn apply(args: &ApplyArgs) -> u8 {
    super::init_logging(args.sync.log_format);
    let (client, store) = match connect(&args.sync.api, &args.sync.flags, &args.sync.state) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let mut options = plan_options(&args.sync.flags);
    options.resync_after = args.sync.state.resync_after;
    options.resync_all = args.resync;
    options.force = args.force;
    let prepared = reconcile::prepare(&store, &args.sync.path, options);
    let (manifests, plan) = match or_exit(prepared.map_err(|e| e.to_string())) {
        Ok(p) => p,
        Err(code) => return code,
    };
    print_diagnostics(&manifests);
    print!("{}", render::plan_text(&manifests, &plan, false));
    let progress = Arc::new(ApplyProgress::new(plan.to_assert()));
    let ctx = Context {
        client,
        store: store.clone(),
        batch_size: plan.options.batch_size,
        progress: progress.clone(),
        source_revision: crate::revision::git_commit(&args.sync.path),
    };
    let policies = Arc::new(manifests.policies.clone());
    let report = runtime().block_on(async {
        let signals = stop_on_signals(ctx.client.cancel_token().clone());
        let report =
            reconcile::sync_all(&ctx, policies, plan.lists.clone(), args.sync.concurrency).await;
        signals.abort();
        report
    });
    if let Some(bar) = &progress.bar {
        bar.finish_and_clear();
    }
    print!("{}", summary(&report));
    exit_code(&manifests, &report)
}

fn exit_code(manifests: &Manifests, report: &SyncReport) -> u8 {
    if manifests.has_errors() || report.has_list_errors() {
        EXIT_ERROR
    } else if report.failed_contacts() > 0 {
        EXIT_PARTIAL
    } else {
        EXIT_OK
    }
}

/// SIGTERM or SIGINT: cancel `stop` (requests in flight finish and are recorded); a second
/// signal exits at once, which is safe because every batch is its own transaction.
fn stop_on_signals(stop: tokio_util::sync::CancellationToken) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        use tokio::signal::unix::{SignalKind, signal};
        let (Ok(mut term), Ok(mut int)) = (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) else {
            return;
        };
        tokio::select! { _ = term.recv() => {}, _ = int.recv() => {} }
        tracing::warn!(
            "signal received: finishing the request in flight, then stopping \
             (a second signal exits at once)"
        );
        stop.cancel();
        tokio::select! { _ = term.recv() => {}, _ = int.recv() => {} }
        std::process::exit(130);
    })
}

pub fn summary(report: &SyncReport) -> String {
    let mut out = String::from("\nSummary:\n");
    for o in &report.outcomes {
        let result = match &o.result {
            ListResult::Converged => "converged".to_string(),
            ListResult::PartiallyFailed => "partially failed".to_string(),
            ListResult::Refused(m) => format!("refused: {m}"),
            ListResult::ListNotFound(m) => format!("list not found: {m}"),
            ListResult::ListIsSegment => "refused: the list is a segment".to_string(),
            ListResult::Unauthorized(m) => format!("stopped: {m}"),
            ListResult::Failed(m) => format!("failed: {m}"),
            ListResult::Interrupted => "interrupted (resumes next run)".to_string(),
        };
        out.push_str(&format!(
            "  {}: {result}; removed {}, not in list {}, failed {}; {} request(s), {} rate-limited, {:.1}s{}\n",
            o.list,
            thousands(o.removed as usize),
            thousands((o.not_in_list + o.observed_absent) as usize),
            thousands(o.failed as usize),
            o.requests,
            o.rate_limited,
            o.duration.as_secs_f64(),
            o.strategy
                .as_ref()
                .map(|s| format!(" [{s}]"))
                .unwrap_or_default()
        ));
        for (contact, message) in &o.first_errors {
            out.push_str(&format!("      {contact}: {message}\n"));
        }
    }
    if let Some(m) = &report.unauthorized {
        out.push_str(&format!("error: {m}\n"));
    }
    out
}

pub fn status(args: &StatusArgs) -> u8 {
    let store = match Store::open_existing(&args.state) {
        Ok(Some(s)) => s,
        Ok(None) => {
            eprintln!(
                "error: no state store at {}: run `listwarden apply` (or `run`) first, or pass --state",
                args.state.display()
            );
            return EXIT_ERROR;
        }
        Err(e) => {
            eprintln!("error: {e}");
            return EXIT_ERROR;
        }
    };
    match crate::status::status_document(&store) {
        Ok(doc) => {
            match args.output {
                Output::Json => {
                    println!("{}", serde_json::to_string_pretty(&doc).unwrap_or_default())
                }
                Output::Text => print!("{}", crate::status::status_text(&doc)),
            }
            EXIT_OK
        }
        Err(e) => {
            eprintln!("error: {e}");
            EXIT_ERROR
        }
    }
}

#[derive(Serialize)]
struct RefreshList<'a> {
    contact_list_id: &'a str,
    contact_count: Option<u64>,
    drift: Option<usize>,
    drift_by_policy: Vec<PolicyDrift<'a>>,
    /// What `auto` picks for this list now, with both costs (the drift just read makes the
    /// observe cost exact).
    #[serde(skip_serializing_if = "Option::is_none")]
    strategy: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    strategy_reason: Option<String>,
    requests: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    present: Option<Vec<&'a str>>,
}

#[derive(Serialize)]
struct PolicyDrift<'a> {
    policy: &'a str,
    drift: usize,
}

#[derive(Serialize)]
struct RefreshDocument<'a> {
    format_version: u32,
    path: String,
    drift: usize,
    lists: Vec<RefreshList<'a>>,
}

/// `plan --refresh`: read every list, report the desired-absent contacts present in it.
pub fn refresh(args: &PlanArgs, manifests: &Manifests, plan: &Plan) -> u8 {
    let client = match client(&args.api, &args.flags.rate_limit) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            return EXIT_ERROR;
        }
    };
    let results = runtime().block_on(async {
        let mut out = Vec::new();
        for l in &plan.lists {
            let tally = Tally::default();
            let read = async {
                let info = client.get_list(l.list.as_str(), &tally).await?;
                let members = crate::observe::read_members(
                    &client,
                    l.list.as_str(),
                    info.contact_count,
                    &tally,
                )
                .await?;
                Ok::<_, crate::autosend::ApiError>((info, members))
            }
            .await;
            out.push((l, read, tally.requests()));
        }
        out
    });
    let mut lists = Vec::new();
    let mut total_drift = 0;
    let mut failed = false;
    for (l, read, requests) in &results {
        let mut entry = RefreshList {
            contact_list_id: l.list.as_str(),
            contact_count: None,
            drift: None,
            drift_by_policy: Vec::new(),
            strategy: None,
            strategy_reason: None,
            requests: *requests,
            error: None,
            present: None,
        };
        match read {
            Ok((info, Some(members))) => {
                let drift = crate::observe::drift(&l.desired, members);
                total_drift += drift.len();
                entry.contact_count = Some(info.contact_count);
                entry.drift = Some(drift.len());
                for (p, n) in crate::observe::drift_by_policy(&l.desired, members) {
                    entry.drift_by_policy.push(PolicyDrift {
                        policy: manifests.policies[p].name.as_str(),
                        drift: n,
                    });
                }
                let choice = crate::observe::choose(
                    l,
                    info.contact_count,
                    plan.options.batch_size,
                    &plan.options.rate_limits,
                    Some(drift.len() as u64),
                );
                entry.strategy = Some(choice.strategy.to_string());
                entry.strategy_reason = Some(choice.reason);
                if args.verbose {
                    entry.present = Some(
                        drift
                            .emails
                            .iter()
                            .chain(drift.contact_ids.iter())
                            .copied()
                            .collect(),
                    );
                }
            }
            Ok((info, None)) => {
                entry.contact_count = Some(info.contact_count);
                entry.error =
                    Some("the list kept changing while it was read; try again".to_string());
                failed = true;
            }
            Err(e) => {
                entry.error = Some(e.to_string());
                failed = true;
            }
        }
        lists.push(entry);
    }
    let doc = RefreshDocument {
        format_version: 1,
        path: args.path.display().to_string(),
        drift: total_drift,
        lists,
    };
    match args.output {
        Output::Json => println!("{}", serde_json::to_string_pretty(&doc).unwrap_or_default()),
        Output::Text => {
            print_diagnostics(manifests);
            for l in &doc.lists {
                match (&l.error, l.drift) {
                    (Some(e), _) => println!("list {}: error: {e}", l.contact_list_id),
                    (None, Some(d)) => {
                        println!(
                            "list {}: {} member(s), {} desired-absent contact(s) present ({} request(s))",
                            l.contact_list_id,
                            l.contact_count.unwrap_or(0),
                            d,
                            l.requests
                        );
                        for d in &l.drift_by_policy {
                            println!("  {}: {}", d.policy, d.drift);
                        }
                        if let Some(reason) = &l.strategy_reason {
                            println!("  strategy {reason}");
                        }
                        for c in l.present.iter().flatten() {
                            println!("    - {c}");
                        }
                    }
                    _ => {}
                }
            }
            let unread = doc.lists.iter().filter(|l| l.error.is_some()).count();
            if unread > 0 {
                println!(
                    "Drift: {total_drift} contact(s) present that must not be in the lists read; \
                     unknown for {unread} list(s) that could not be read."
                );
            } else {
                println!("Drift: {total_drift} contact(s) present that must not be.");
            }
        }
    }
    if failed || manifests.has_errors() {
        EXIT_ERROR
    } else if args.detailed_exitcode && total_drift > 0 {
        EXIT_CHANGES
    } else {
        EXIT_OK
    }
}

pub fn run(args: &RunArgs) -> u8 {
    super::init_logging(args.sync.log_format);
    let metrics = Arc::new(crate::metrics::Metrics::new());
    let (client, store) = match connect(&args.sync.api, &args.sync.flags, &args.sync.state) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let client = client.with_observer(Arc::new(crate::metrics::MetricsObserver(metrics.clone())));
    let mut config = crate::daemon::DaemonConfig::new(args.sync.path.clone());
    config.plan = plan_options(&args.sync.flags);
    config.plan.resync_after = args.sync.state.resync_after;
    config.interval = args.interval;
    config.concurrency = args.sync.concurrency;
    config.listen = args.listen;
    config.debounce = args.debounce;
    runtime().block_on(async {
        let shutdown = tokio_util::sync::CancellationToken::new();
        stop_on_signals(shutdown.clone());
        match crate::daemon::run(config, client, store, metrics, shutdown).await {
            Ok(()) => EXIT_OK,
            Err(e) => {
                eprintln!("error: {e}");
                EXIT_ERROR
            }
        }
    })
}
