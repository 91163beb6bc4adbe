//! `listwarden run`: a controller that keeps every list converged.
//!
//! The daemon is a watcher and a scheduler around the same plan/reconcile path as `apply`:
//!
//! - **Level-triggered.** A reconcile of a list recomputes its plan from the manifests and the
//!   store at that moment; nothing depends on which event woke it. Events only decide *when*.
//! - **Events.** A debounced file change reloads the manifests; only lists whose desired
//!   revision changed are reconciled (a burst of edits or a git checkout is one reload, one
//!   reconcile per affected list). SIGHUP reloads and re-asserts everything.
//! - **Edits stop what they concern.** As soon as the watcher reports a change, the sends of
//!   the lists the changed files concern are held at their [gates](crate::gate) (every
//!   list's, when the change cannot be tied to lists); the reload opens them again with the
//!   lists' new revisions, and a reconcile planned from an older one stops and is planned
//!   again. Nothing no manifest names any more is sent after the reload.
//! - **Schedule.** Each list is re-checked every `--interval` (cheap when nothing is pending:
//!   a plan from the store, no API call) and re-asserted when its contacts' resync is due.
//! - **One reconcile at a time per list**, lists in parallel up to `--concurrency`, sharing
//!   one pacing budget. A change arriving during a list's reconcile marks it dirty, and it
//!   runs again right after.
//! - **Failures** requeue the list with exponential backoff and jitter (1 s doubling to
//!   15 min, reset on success); a panic in a reconcile is one such failure. A refused key
//!   pauses all API work (`Unauthorized`), retried slowly; nothing crashes.
//! - **Process faults** make `/readyz` fail and pause API work: the manifests path missing
//!   (a git-sync sidecar that has not cloned yet: the daemon waits for it) or holding no
//!   manifest, a state store that cannot be written (disk full) or was deleted or replaced.
//!   A broken manifest is not a process fault: it shows in `/status`, the other policies go on.
//! - **Approvals.** While a policy is held by the forget threshold, the store is polled for
//!   `listwarden approve`; an approval reloads at once.
//! - **Shutdown.** SIGTERM/SIGINT stop taking work, let requests in flight finish (their
//!   outcome is committed), and exit 0 within the grace period; a second signal exits at once.

pub mod http;
mod inbox;
pub mod receiver;
mod requeue;
mod scheduler;
pub mod watch;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use crate::account::Clients;
use tokio::sync::{Semaphore, mpsc};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::desired::DesiredState;
use crate::gate::Gates;
use crate::manifest::Manifests;
use crate::metrics::Metrics;
use crate::plan::PlanOptions;
use crate::store::Store;
use scheduler::{Done, Scheduler, Snapshot};
use watch::{Changed, Watch};

/// Longest a reload waits for changes to settle.
const MAX_RELOAD_DELAY: Duration = Duration::from_secs(2);

/// How often the daemon looks at things no event announces: the store file still being the
/// one it opened, a missing manifests path appearing, an approval recorded by `approve`.
const HOUSEKEEPING: Duration = Duration::from_secs(1);

/// Defaults shared by `listwarden run`'s flags and library callers.
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(600);
pub const DEFAULT_CONCURRENCY: usize = 4;
pub const DEFAULT_LISTEN: &str = "127.0.0.1:9464";
pub const DEFAULT_DEBOUNCE: Duration = Duration::from_millis(200);

#[derive(Clone, Debug)]
pub struct DaemonConfig {
    pub path: PathBuf,
    pub plan: PlanOptions,
    pub interval: Duration,
    pub concurrency: usize,
    pub listen: SocketAddr,
    pub debounce: Duration,
    /// How long shutdown waits for requests in flight.
    pub grace: Duration,
    /// First and largest wait before retrying a failed list.
    pub min_backoff: Duration,
    pub max_backoff: Duration,
    /// A manifests path holding no manifest is fine (otherwise the daemon is not ready).
    pub allow_empty: bool,
    /// `/status` shows contact addresses (it is unauthenticated: off by default).
    pub expose_contacts: bool,
    /// Serve AutoSend's webhooks (`--webhook-listen`): off unless configured.
    pub webhook: Option<receiver::WebhookConfig>,
}

impl DaemonConfig {
    pub fn new(path: PathBuf) -> DaemonConfig {
        DaemonConfig {
            path,
            plan: PlanOptions::default(),
            interval: DEFAULT_INTERVAL,
            concurrency: DEFAULT_CONCURRENCY,
            listen: DEFAULT_LISTEN.parse().expect("a socket address"),
            debounce: DEFAULT_DEBOUNCE,
            grace: Duration::from_secs(8),
            min_backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(15 * 60),
            allow_empty: false,
            expose_contacts: false,
            webhook: None,
        }
    }
}

/// The state store the daemon works on.
pub enum StoreSource {
    Open(Arc<Store>),
    /// Open the store at this path once its lock is free, waiting (and saying so) while
    /// another `apply` or `run` holds it; the endpoints answer meanwhile (not ready).
    Wait(PathBuf),
}

/// Runs until shutdown. Returns once the store is consistent and tasks have stopped.
pub async fn run(
    config: DaemonConfig,
    clients: Clients,
    store: StoreSource,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
) -> Result<(), String> {
    let clients = clients.map(|_, c| c.with_cancel(shutdown.child_token()));
    let pacer_clients = clients.clone();
    // Every account's series from the start: a dashboard or an alert sees 0, not nothing.
    for (account, _) in clients.iter() {
        let label = crate::metrics::AccountLabel {
            account: account.to_string(),
        };
        drop(metrics.rate_limited.get_or_create(&label));
        drop(metrics.pacing_wait.get_or_create(&label));
    }
    let shared = Arc::new(http::Shared {
        metrics: metrics.clone(),
        store: Default::default(),
        first_pass_done: Default::default(),
        unauthorized: Default::default(),
        store_fault: Default::default(),
        manifests_fault: Default::default(),
        webhook_fault: config.webhook.as_ref().and_then(|w| {
            (!w.unreadable.is_empty()).then(|| {
                let names: Vec<&str> = w.unreadable.keys().map(|a| a.as_str()).collect();
                format!(
                    "the webhook secret of account {} cannot be read (restart once it can)",
                    names.join(", ")
                )
            })
        }),
        pacer_waited: Box::new(move || {
            pacer_clients
                .iter()
                .filter_map(|(a, c)| Some((a.to_string(), c.as_ref().ok()?.pacer().waited())))
                .collect()
        }),
        expose_contacts: config.expose_contacts,
    });
    // An account whose key could not be read has no client until a restart: not ready from
    // the start, even while its lists have nothing to send (the next change would fail).
    for (account, client) in clients.iter() {
        if let Err(why) = client {
            shared.set_unauthorized(account, Some(why));
        }
    }
    let http_stop = CancellationToken::new();
    let (addr, http_task) = http::serve(config.listen, shared.clone(), http_stop.clone())
        .await
        .map_err(|e| format!("cannot listen on {}: {e}", config.listen))?;
    tracing::info!(%addr, "serving /healthz, /readyz, /metrics and /status");
    let store = match store {
        StoreSource::Open(store) => store,
        StoreSource::Wait(path) => match wait_for_store(path, &shutdown).await? {
            Some(store) => store,
            None => {
                http_stop.cancel();
                return Ok(());
            }
        },
    };
    let _ = shared.store.set(store.clone());
    crate::account::adopt_default_rows(&store, &config.plan.accounts).map_err(|e| e.to_string())?;
    match crate::account::unserved_in_store(&store, &config.plan.accounts) {
        Ok(unserved) if !unserved.is_empty() => {
            tracing::warn!("{}", crate::account::unserved_warning(&unserved));
        }
        _ => {}
    }
    let inbox = Arc::new(tokio::sync::Notify::new());
    let webhook_task = match config.webhook.clone() {
        Some(wh) => {
            let listen = wh.listen;
            let (addr, task) = receiver::serve(
                wh,
                store.clone(),
                metrics.clone(),
                inbox.clone(),
                http_stop.clone(),
            )
            .await
            .map_err(|e| format!("cannot listen for webhooks on {listen}: {e}"))?;
            tracing::info!(%addr, path = receiver::PATH, "serving AutoSend webhooks");
            Some(task)
        }
        None => None,
    };

    let (watch_tx, mut watch_rx) = mpsc::unbounded_channel();
    // A single manifest file may read data files beside it: watch its directory.
    let watched = if config.path.is_dir() || !config.path.exists() {
        config.path.clone()
    } else {
        config
            .path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .map(|p| p.to_path_buf())
            .unwrap_or_else(|| PathBuf::from("."))
    };
    let mut sighup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        .map_err(|e| format!("cannot handle SIGHUP: {e}"))?;

    let mut d = Scheduler {
        limit: Arc::new(Semaphore::new(crate::account::MAX_TOTAL_CONCURRENCY)),
        account_limits: HashMap::new(),
        config,
        clients,
        store,
        metrics,
        shared,
        manifests: Arc::new(Manifests::default()),
        snapshot: Arc::new(std::sync::RwLock::new(Snapshot {
            generation: 0,
            policies: Arc::new(Vec::new()),
            desired: DesiredState::default(),
            source_revision: None,
        })),
        lists: BTreeMap::new(),
        gates: Arc::new(Gates::new()),
        concerns: HashMap::new(),
        cache: crate::manifest::Cache::default(),
        readers: HashMap::new(),
        holds: Vec::new(),
        auth_paused: HashMap::new(),
        store_retry_at: None,
        reload_failed: false,
        event_waits: HashMap::new(),
        forget_mark: None,
    };
    let (done_tx, mut done_rx) = mpsc::unbounded_channel::<Done>();
    let mut watch: Option<Watch> = None;
    let mut housekeeping = tokio::time::interval(HOUSEKEEPING);
    housekeeping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Trailing-edge debounce on top of the watcher's: a reload waits until changes have
    // been quiet for `debounce` (a git checkout touching files for a second is one reload),
    // but never more than `MAX_RELOAD_DELAY` after the first change.
    let mut reload_at: Option<(Instant, Instant)> = None;
    // What changed since the last load: the paths the watcher named, or `None` once it could
    // not say (then everything is read again).
    let mut changed: Option<HashSet<PathBuf>> = Some(HashSet::new());
    // Whether the manifests path existed at the last load; the first load happens on the
    // first housekeeping tick, at once.
    let mut root_seen: Option<bool> = None;
    // Webhook events gathered into one batch: (close at, first received). Events left in
    // the inbox by a previous run are handled after the first load.
    let mut events_at: Option<(Instant, Instant)> = None;
    let mut inbox_pending = true;
    loop {
        d.start_due(&done_tx);
        let wake = match reload_at {
            Some((at, _)) => d.next_wake().min(at),
            None => d.next_wake(),
        };
        tokio::select! {
            _ = shutdown.cancelled() => break,
            Some(change) = watch_rx.recv() => {
                d.hold_changed(&change);
                match (change, changed.as_mut()) {
                    (Changed::Paths(paths), Some(set)) => set.extend(paths),
                    _ => changed = None,
                }
                let now = Instant::now();
                let first = reload_at.map_or(now, |(_, first)| first);
                let at = (now + d.config.debounce / 2).min(first + MAX_RELOAD_DELAY);
                reload_at = Some((at, first));
            }
            _ = tokio::time::sleep_until(reload_at.map_or(wake, |(at, _)| at)), if reload_at.is_some() => {
                reload_at = None;
                tracing::info!("manifests changed; reloading");
                let mut since = changed.replace(HashSet::new());
                if watch.as_ref().is_some_and(Watch::moved) {
                    // A symlink on the path now points to a new checkout (git-sync): follow it,
                    // and read everything from the new checkout.
                    watch = d.start_watch(&watched, &watch_tx);
                    since = None;
                }
                d.reload(false, since).await;
            }
            _ = hangup(&mut sighup) => {
                tracing::info!("SIGHUP: reloading and re-asserting every list");
                changed = Some(HashSet::new());
                d.reload(true, None).await;
            }
            Some(done) = done_rx.recv() => d.finished(done),
            _ = inbox.notified() => {
                let now = Instant::now();
                let first = events_at.map_or(now, |(_, first)| first);
                let at = (now + inbox::EVENT_QUIET).min(first + inbox::EVENT_BATCH_MAX);
                events_at = Some((at, first));
            }
            _ = tokio::time::sleep_until(events_at.map_or(wake, |(at, _)| at)), if events_at.is_some() => {
                let first = events_at.take().map_or_else(Instant::now, |(_, first)| first);
                inbox_pending = d.handle_inbox(first).await;
            }
            _ = housekeeping.tick() => {
                let present = d.config.path.exists() || d.config.path.is_symlink();
                if present && watch.is_none() {
                    watch = d.start_watch(&watched, &watch_tx);
                }
                if !present {
                    watch = None;
                }
                // Load when the path appeared or vanished since the last load, when the last
                // reload failed, or when `approve` let a held change through.
                if root_seen != Some(present) || d.reload_failed || d.approval_recorded() {
                    root_seen = Some(present);
                    if !present {
                        d.gates.close_all();
                    }
                    changed = Some(HashSet::new());
                    d.reload(false, None).await;
                } else if d.event_forgets_changed() {
                    tracing::info!("an event-fed contact was forgotten; reloading");
                    d.reload(false, Some(HashSet::new())).await;
                }
                if inbox_pending && events_at.is_none() {
                    let now = Instant::now();
                    events_at = Some((now, now));
                }
                d.check_store();
            }
            _ = tokio::time::sleep_until(wake) => {}
        }
    }

    tracing::info!("shutting down: finishing requests in flight");
    let deadline = Instant::now() + d.config.grace;
    while d.lists.values().any(|s| s.running) {
        tokio::select! {
            Some(done) = done_rx.recv() => d.finished(done),
            _ = tokio::time::sleep_until(deadline) => {
                tracing::warn!("grace period over; exiting with reconciles still running (the store is consistent)");
                break;
            }
        }
    }
    http_stop.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(1), http_task).await;
    if let Some(task) = webhook_task {
        let _ = tokio::time::timeout(Duration::from_secs(1), task).await;
    }
    Ok(())
}

/// Takes the store's lock, waiting while another process holds it (`None`: shut down
/// meanwhile), then opens the store.
async fn wait_for_store(
    path: PathBuf,
    shutdown: &CancellationToken,
) -> Result<Option<Arc<Store>>, String> {
    let stop = shutdown.clone();
    let opened = tokio::task::spawn_blocking(move || {
        let lock = crate::store::StoreLock::wait(
            &path,
            "listwarden run",
            Duration::from_millis(500),
            |holder| {
                tracing::warn!(
                    store = %path.display(),
                    holder,
                    "the state store is in use; waiting for it to be released"
                )
            },
            || stop.is_cancelled(),
        )?;
        lock.map(|l| Store::open_locked(&path, l)).transpose()
    })
    .await
    .map_err(|e| e.to_string())?;
    opened.map(|s| s.map(Arc::new)).map_err(|e| e.to_string())
}

async fn hangup(s: &mut tokio::signal::unix::Signal) {
    s.recv().await;
}
