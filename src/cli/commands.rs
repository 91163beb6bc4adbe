//! `apply`, `status` and `plan --refresh`: the commands that talk to AutoSend or read the
//! store. Each builds its pieces, calls the library, and maps the outcome to an exit code.

use std::io::IsTerminal;
use std::sync::Arc;

use indicatif::{ProgressBar, ProgressStyle};

use super::{
    ApiFlags, ApplyArgs, ApproveArgs, EXIT_CHANGES, EXIT_ERROR, EXIT_OK, EXIT_PARTIAL, Output,
    PlanArgs, PlanOutput, RunArgs, StatusArgs, check_manifests_path, plan_options,
    print_diagnostics,
};
use autosend::{Client, ClientConfig};
use listwarden::contact::ListKey;
use listwarden::human::{plural, thousands};
use listwarden::manifest::Manifests;
use listwarden::plan::Plan;
use listwarden::reconcile::{self, Context, ListResult, Progress, SyncReport};
use listwarden::render;
use listwarden::store::Store;

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a tokio runtime")
}

/// Builds the client from the environment and flags; the error never holds the key.
pub fn client(api: &ApiFlags, rate_limits: &autosend::RateLimits) -> Result<Client, String> {
    let mut config = ClientConfig::from_settings(
        api.api_key_file.as_deref(),
        api.api_url.as_deref(),
        api.project_id.as_deref(),
    )
    .map_err(|e| match e {
        autosend::ConfigError::MissingKey => "no API key: set AUTOSEND_API_KEY or pass \
            --api-key-file PATH (validate, status, approve and plan without --refresh need none)"
            .to_string(),
        other => other.to_string(),
    })?;
    warn_exposure(api.api_key_file.as_deref(), &config.base_url);
    config.rate_limits = rate_limits.clone();
    super::accounts::tune(&mut config, api);
    Client::new(config).map_err(|e| e.to_string())
}

/// Warns about a key others can read, and a key sent in clear over the network. Group-readable
/// key files are normal (Kubernetes Secrets, systemd credentials), and so is plain HTTP to
/// this machine: no warning for those.
pub(super) fn warn_exposure(key_file: Option<&std::path::Path>, base_url: &str) {
    use std::os::unix::fs::PermissionsExt;
    if let Some(path) = key_file
        && let Ok(meta) = std::fs::metadata(path)
        && meta.permissions().mode() & 0o004 != 0
    {
        tracing::warn!(
            path = %path.display(),
            "the API key file is readable by every user of this machine; make it private (chmod o-r)"
        );
    }
    if plain_http_to_another_host(base_url) {
        tracing::warn!(
            url = base_url,
            "AUTOSEND_API_URL is plain http:// to another host: the API key and the contact \
             addresses cross the network unencrypted; use https://"
        );
    }
}

/// `http://` to anything but this machine.
fn plain_http_to_another_host(base_url: &str) -> bool {
    let Some(rest) = base_url.strip_prefix("http://") else {
        return false;
    };
    let authority = rest.split('/').next().unwrap_or("");
    let authority = authority.rsplit_once('@').map_or(authority, |(_, a)| a);
    let host = match authority.rsplit_once(':') {
        Some((h, port)) if port.chars().all(|c| c.is_ascii_digit()) => h,
        _ => authority,
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let loopback = host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback());
    !loopback
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

/// Without a terminal, progress goes through the log, so `--log-format json` stays JSON.
impl Progress for ApplyProgress {
    fn list_started(&self, list: &ListKey, contacts: usize) {
        if self.bar.is_none() {
            tracing::info!(%list, contacts, "asserting contacts");
        }
    }
    fn batch_done(&self, list: &ListKey, contacts: usize) {
        match &self.bar {
            Some(bar) => bar.inc(contacts as u64),
            None => tracing::info!(%list, contacts, "batch done"),
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

pub fn apply(args: &ApplyArgs) -> u8 {
    super::init_logging(args.sync.log_format);
    // Everything that can be checked before anything is created or printed, is.
    if let Err(e) = check_manifests_path(&args.sync.path, args.sync.allow_empty) {
        eprintln!("error: {e}");
        return EXIT_ERROR;
    }
    let (setup, clients) = match or_exit(super::accounts::for_sync(
        &args.sync,
        super::accounts::unobserved,
    )) {
        Ok(x) => x,
        Err(code) => return code,
    };
    let store = Store::open(&args.sync.state.state, "listwarden apply");
    let store = match or_exit(store.map_err(|e| e.to_string())) {
        Ok(s) => Arc::new(s),
        Err(code) => return code,
    };
    let adopted = listwarden::account::adopt_default_rows(&store, &setup.accounts);
    if let Err(code) = or_exit(adopted.map_err(|e| e.to_string())) {
        return code;
    }
    if let Ok(unserved) = listwarden::account::unserved_in_store(&store, &setup.accounts)
        && !unserved.is_empty()
    {
        tracing::warn!("{}", listwarden::account::unserved_warning(&unserved));
    }
    let mut options = plan_options(&args.sync.flags, setup.accounts.clone());
    options.resync_after = args.sync.state.resync_after.0;
    options.resync_all = args.resync;
    options.force = args.force;
    let prepared = reconcile::prepare(&store, &args.sync.path, options);
    let (manifests, plan) = match or_exit(prepared.map_err(|e| e.to_string())) {
        Ok(p) => p,
        Err(code) => return code,
    };
    let json_logs = args.sync.log_format == super::LogFormat::Json;
    if json_logs {
        // Log shippers read stderr line by line: every line stays JSON.
        for d in &manifests.diagnostics {
            if d.is_error() {
                tracing::error!(diagnostic = %d, "manifest error");
            } else {
                tracing::warn!(diagnostic = %d, "manifest warning");
            }
        }
    } else {
        print_diagnostics(&manifests);
    }
    print!("{}", render::plan_text(&manifests, &plan, false));
    let progress = Arc::new(ApplyProgress::new(plan.to_assert()));
    let base_url = clients
        .iter()
        .find_map(|(_, c)| c.as_ref().ok())
        .map(|c| c.base_url().to_string())
        .unwrap_or_default();
    // One token stops every account's requests on a signal.
    let shutdown = tokio_util::sync::CancellationToken::new();
    let clients = clients.map(|_, c| c.with_cancel(shutdown.child_token()));
    let ctx = Context {
        progress: progress.clone(),
        source_revision: listwarden::revision::git_commit(&args.sync.path),
        ..Context::for_accounts(clients, store.clone(), plan.options.batch_size)
    };
    let policies = Arc::new(manifests.policies.clone());
    let report = runtime().block_on(async {
        let signals = stop_on_signals(shutdown.clone());
        let report =
            reconcile::sync_all(&ctx, policies, plan.lists.clone(), args.sync.concurrency).await;
        signals.abort();
        report
    });
    if let Some(bar) = &progress.bar {
        bar.finish_and_clear();
    }
    print!("{}", summary(&report, &plan, &manifests));
    let code = exit_code(&manifests, &plan, &report);
    if code != EXIT_OK {
        let failure = failure_line(&manifests, &plan, &report, &base_url);
        if json_logs {
            tracing::error!(error = %failure, "apply failed");
        } else {
            eprintln!("error: {failure}");
        }
    }
    super::leave_to_exit((manifests, plan));
    code
}

/// The one `error:` line a failing apply ends with: what failed first, and what to check.
fn failure_line(manifests: &Manifests, plan: &Plan, report: &SyncReport, base_url: &str) -> String {
    // The message names the account and where its key comes from already.
    if let Some(m) = report.unauthorized.values().next() {
        let more = match report.unauthorized.len() {
            1 => String::new(),
            n => format!(" (and {} more account(s))", n - 1),
        };
        return format!("{m}{more}");
    }
    if report.all_not_found() {
        return format!(
            "every contact list answered 404 Not Found: is the API URL right? It is {base_url} \
             (AutoSend's is {}, with /v1); set AUTOSEND_API_URL or --api-url",
            autosend::DEFAULT_BASE_URL
        );
    }
    let failing: Vec<&reconcile::ListOutcome> = report
        .outcomes
        .iter()
        .filter(|o| {
            !matches!(
                o.result,
                ListResult::Converged | ListResult::PartiallyFailed
            )
        })
        .collect();
    if let Some(first) = failing.first() {
        let more = match failing.len() {
            1 => String::new(),
            n => format!(" (and {} more list(s): see the summary)", n - 1),
        };
        return format!("list {}: {}{more}", first.list, first.result);
    }
    if manifests.has_errors() {
        return format!(
            "{} manifest error(s): the policies concerned were left out (see above)",
            manifests.errors().count()
        );
    }
    if let Some(hold) = plan.holds.first() {
        return hold.to_string();
    }
    format!(
        "{} contact(s) failed or were not accounted for; they are asserted again next run \
         (`listwarden status` lists them)",
        report.failed_contacts()
    )
}

fn exit_code(manifests: &Manifests, plan: &Plan, report: &SyncReport) -> u8 {
    if manifests.has_errors() || report.has_list_errors() || !plan.holds.is_empty() {
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

pub fn summary(report: &SyncReport, plan: &Plan, manifests: &Manifests) -> String {
    let mut out = String::from(
        "\nSummary (requests: every one sent to AutoSend, list reads and retries included):\n",
    );
    for o in &report.outcomes {
        // A list whose policy is held is not converged, whatever its other policies did.
        let list_plan = plan.lists.iter().find(|l| l.list == o.list);
        let held: Vec<&str> = list_plan
            .into_iter()
            .flat_map(|l| l.held.iter().map(|&i| manifests.policies[i].name.as_str()))
            .collect();
        let result = match (
            held.is_empty(),
            list_plan.is_some_and(|l| l.policies.is_empty()),
        ) {
            (true, _) => o.result.to_string(),
            (false, true) => format!("held ({}, see below)", held.join(", ")),
            (false, false) => format!(
                "held ({}, see below); its other policies: {}",
                held.join(", "),
                o.result
            ),
        };
        let unaccounted = if o.unaccounted > 0 {
            format!(", not accounted for {}", thousands(o.unaccounted as usize))
        } else {
            String::new()
        };
        out.push_str(&format!(
            "  {}: {result}; removed {}, not in list {}, failed {}{unaccounted}; {} sent, {} rate-limited, {:.1}s{}\n",
            o.list,
            thousands(o.removed as usize),
            thousands((o.not_in_list + o.observed_absent) as usize),
            thousands(o.failed as usize),
            plural(o.requests as usize, "request"),
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
    for h in &plan.holds {
        out.push_str(&format!("  HELD {h}\n"));
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
    // The operator's own terminal: addresses are shown (the daemon's /status masks them).
    match listwarden::status::status_document(&store, true) {
        Ok(doc) => {
            match args.output {
                Output::Json => super::print_json(&doc),
                Output::Text => print!("{}", listwarden::status::status_text(&doc)),
            }
            EXIT_OK
        }
        Err(e) => {
            eprintln!("error: {e}");
            EXIT_ERROR
        }
    }
}

/// `plan --refresh`: read every list, report the desired-absent contacts present in it.
pub fn refresh(
    args: &PlanArgs,
    setup: &super::accounts::Setup,
    manifests: &Manifests,
    plan: &Plan,
) -> u8 {
    let clients = match super::accounts::clients(
        setup,
        &args.api,
        &args.flags,
        super::accounts::unobserved,
    ) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            return EXIT_ERROR;
        }
    };
    let path = args.path.display().to_string();
    let doc = runtime().block_on(listwarden::refresh::refresh(
        &clients,
        manifests,
        plan,
        &path,
        args.verbose,
    ));
    match args.output {
        PlanOutput::Json => super::print_json(&doc),
        PlanOutput::Text | PlanOutput::Markdown => {
            print_diagnostics(manifests);
            print!("{}", listwarden::refresh::refresh_text(&doc));
        }
    }
    if doc.lists.iter().any(|l| l.error.is_some()) || manifests.has_errors() {
        EXIT_ERROR
    } else if args.detailed_exitcode && doc.drift > 0 {
        EXIT_CHANGES
    } else {
        EXIT_OK
    }
}

/// The webhook listener's settings, when `--webhook-listen` asks for one; the error never
/// holds the secret.
fn webhook_config(
    args: &RunArgs,
    setup: &super::accounts::Setup,
) -> Result<Option<listwarden::daemon::receiver::WebhookConfig>, String> {
    use listwarden::daemon::receiver::{Secret, WebhookConfig};
    let Some(listen) = args.webhook_listen else {
        if args.webhook_secret_file.is_some() {
            return Err("--webhook-secret-file needs --webhook-listen ADDR".into());
        }
        return Ok(None);
    };
    if let Some(config) = &setup.config {
        // Each account's secret is in the config, and its route is its own.
        if args.webhook_secret_file.is_some()
            || std::env::var_os("AUTOSEND_WEBHOOK_SECRET").is_some_and(|s| !s.is_empty())
        {
            return Err(format!(
                "--webhook-secret-file or AUTOSEND_WEBHOOK_SECRET given with --config {}: two \
                 sources of truth; set each account's webhookSecretFile or webhookSecretEnv in \
                 the config instead",
                config.path.display()
            ));
        }
        let mut secrets = std::collections::BTreeMap::new();
        // An account whose secret cannot be read fails alone: its route answers 503 (AutoSend
        // retries) and the daemon is not ready; the other accounts' routes serve.
        let mut unreadable = std::collections::BTreeMap::new();
        for spec in &config.accounts {
            let secret = spec.webhook_secret_text().and_then(|text| {
                text.map(|t| {
                    Secret::new(&t).ok_or_else(|| {
                        format!("account {}: the webhook secret is empty", spec.name)
                    })
                })
                .transpose()
            });
            match secret {
                Ok(Some(secret)) => {
                    secrets.insert(spec.name.clone(), secret);
                }
                Ok(None) => {}
                Err(e) => {
                    tracing::error!(account = %spec.name, error = %e, "this account's webhooks cannot be verified");
                    unreadable.insert(spec.name.clone(), e);
                }
            }
        }
        if secrets.is_empty() && unreadable.is_empty() {
            return Err(format!(
                "--webhook-listen needs a webhook secret: set webhookSecretFile or \
                 webhookSecretEnv for the accounts whose events to receive in {}",
                config.path.display()
            ));
        }
        let bare = config
            .default_account
            .clone()
            .filter(|a| secrets.contains_key(a));
        let mut wh = WebhookConfig::for_accounts(listen, secrets, bare);
        wh.unreadable = unreadable;
        wh.window = args.webhook_window.0;
        return Ok(Some(wh));
    }
    let text = match &args.webhook_secret_file {
        Some(path) => std::fs::read_to_string(path).map_err(|e| {
            format!(
                "cannot read the webhook secret file {}: {e}",
                path.display()
            )
        })?,
        None => std::env::var("AUTOSEND_WEBHOOK_SECRET").map_err(|_| {
            "--webhook-listen needs the webhook secret: set AUTOSEND_WEBHOOK_SECRET or pass \
                 --webhook-secret-file PATH"
                .to_string()
        })?,
    };
    let secret = Secret::new(&text).ok_or_else(|| {
        "the webhook secret is empty: copy it from AutoSend's webhook settings".to_string()
    })?;
    let mut config = WebhookConfig::new(listen, secret);
    config.window = args.webhook_window.0;
    Ok(Some(config))
}

pub fn run(args: &RunArgs) -> u8 {
    super::init_logging(args.sync.log_format);
    let metrics = Arc::new(listwarden::metrics::Metrics::new());
    let (setup, clients) = match or_exit(super::accounts::for_sync(
        &args.sync,
        super::accounts::observed(metrics.clone()),
    )) {
        Ok(x) => x,
        Err(code) => return code,
    };
    let mut config = listwarden::daemon::DaemonConfig::new(args.sync.path.clone());
    config.plan = plan_options(&args.sync.flags, setup.accounts.clone());
    config.plan.resync_after = args.sync.state.resync_after.0;
    config.interval = args.interval.0;
    config.concurrency = args.sync.concurrency;
    config.listen = args.listen;
    config.debounce = args.debounce.0;
    config.allow_empty = args.sync.allow_empty;
    config.expose_contacts = args.expose_contacts;
    config.webhook = match or_exit(webhook_config(args, &setup)) {
        Ok(w) => w,
        Err(code) => return code,
    };
    let store = listwarden::daemon::StoreSource::Wait(args.sync.state.state.clone());
    runtime().block_on(async {
        let shutdown = tokio_util::sync::CancellationToken::new();
        stop_on_signals(shutdown.clone());
        match listwarden::daemon::run(config, clients, store, metrics, shutdown).await {
            Ok(()) => EXIT_OK,
            Err(e) => {
                eprintln!("error: {e}");
                EXIT_ERROR
            }
        }
    })
}

/// `listwarden approve POLICY`: records the approval in one short transaction, without the
/// store's lock, so it works beside a running daemon.
pub fn approve(args: &ApproveArgs) -> u8 {
    let store = match Store::open_for_approval(&args.state) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: {e}");
            return EXIT_ERROR;
        }
    };
    // Event-fed contacts held beyond the policy's threshold go through first: they are the
    // other large change a policy can wait with.
    let now_ms = listwarden::clock::now_unix() * 1000;
    let released = match store.approve_event_contacts(&args.policy, now_ms) {
        Ok(n) => n,
        Err(e) => {
            eprintln!("error: {e}");
            return EXIT_ERROR;
        }
    };
    if released > 0 {
        println!(
            "approved: {} fed by webhook events and held for policy {} (beyond its \
             maxRemovalsPerSync within an hour) go through; a running daemon sends them within \
             seconds, otherwise the next `listwarden apply` does",
            listwarden::human::plural(released as usize, "contact"),
            args.policy
        );
    }
    match store.approve(&args.policy, args.revision.as_deref()) {
        Ok(Ok(a)) => {
            println!(
                "approved: policy {} may go from {} to {} contacts (revision {}); a running \
                 daemon applies it within seconds, otherwise the next `listwarden apply` does",
                args.policy,
                thousands(a.before as usize),
                thousands(a.after as usize),
                a.revision
            );
            EXIT_OK
        }
        // Nothing held by the forget threshold: fine when held events were approved.
        Ok(Err(_)) if released > 0 && args.revision.is_none() => EXIT_OK,
        Ok(Err(why)) => {
            eprintln!("error: {why}");
            EXIT_ERROR
        }
        Err(e) => {
            eprintln!("error: {e}");
            EXIT_ERROR
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_plain_http_to_another_host_is_flagged() {
        for url in [
            "http://10.0.0.5/v1",
            "http://api.autosend.com/v1",
            "http://user@example.org:8080/v1",
        ] {
            assert!(plain_http_to_another_host(url), "{url}");
        }
        for url in [
            "https://api.autosend.com/v1",
            "http://127.0.0.1:8025/v1",
            "http://localhost/v1",
            "http://[::1]:9/v1",
        ] {
            assert!(!plain_http_to_another_host(url), "{url}");
        }
    }
}
