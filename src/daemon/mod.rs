//! `listwarden run`: a controller that keeps every list converged.
//!
//! The daemon is a watcher and a scheduler around the same plan/reconcile path as `apply`:
//!
//! - **Level-triggered.** A reconcile of a list recomputes its plan from the manifests and the
//!   store at that moment; nothing depends on which event woke it. Events only decide *when*.
//! - **Events.** A debounced file change reloads the manifests; only lists whose desired
//!   revision changed are reconciled (a burst of edits or a git checkout is one reload, one
//!   reconcile per affected list). SIGHUP reloads and re-asserts everything.
//! - **Schedule.** Each list is re-checked every `--interval` (cheap when nothing is pending:
//!   a plan from the store, no API call) and re-asserted when its contacts' resync is due.
//! - **One reconcile at a time per list**, lists in parallel up to `--concurrency`, sharing
//!   one pacing budget. A change arriving during a list's reconcile marks it dirty, and it
//!   runs again right after.
//! - **Failures** requeue the list with exponential backoff and jitter (1 s doubling to
//!   15 min, reset on success). A refused key pauses all API work (`Unauthorized`), retried
//!   slowly; nothing crashes.
//! - **Shutdown.** SIGTERM/SIGINT stop taking work, let requests in flight finish (their
//!   outcome is committed), and exit 0 within the grace period; a second signal exits at once.

pub mod http;
pub mod watch;

use std::collections::{BTreeMap, HashSet};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use backon::BackoffBuilder;
use tokio::sync::{Semaphore, mpsc};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::autosend::Client;
use crate::contact::ContactListId;
use crate::desired::DesiredState;
use crate::manifest::{self, Manifests};
use crate::metrics::{ListLabel, Metrics, PolicyLabels, ResultLabel};
use crate::plan::{self, PlanOptions};
use crate::reconcile::{self, Context, ListOutcome, ListResult, NoProgress};
use crate::store::{Condition, Ready, Store};

/// Longest a reload waits for changes to settle.
const MAX_RELOAD_DELAY: Duration = Duration::from_secs(2);

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
}

impl DaemonConfig {
    pub fn new(path: PathBuf) -> DaemonConfig {
        DaemonConfig {
            path,
            plan: PlanOptions::default(),
            interval: Duration::from_secs(600),
            concurrency: 4,
            listen: "127.0.0.1:9464".parse().expect("a socket address"),
            debounce: Duration::from_millis(200),
            grace: Duration::from_secs(8),
            min_backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(15 * 60),
        }
    }
}

/// Per-list scheduling state.
struct ListState {
    next_due: Instant,
    running: bool,
    /// Asked to run again while running.
    dirty: bool,
    /// Re-assert every confirmed contact on the next run (SIGHUP).
    resync_all: bool,
    revision: String,
    backoff: Option<backon::ExponentialBackoff>,
    completed_once: bool,
}

struct Done {
    list: ContactListId,
    outcome: ListOutcome,
    pending_after: u64,
}

/// Runs until shutdown. Returns once the store is consistent and tasks have stopped.
pub async fn run(
    config: DaemonConfig,
    client: Client,
    store: Arc<Store>,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
) -> Result<(), String> {
    let client = client.with_cancel(shutdown.child_token());
    let pacer_client = client.clone();
    let shared = Arc::new(http::Shared {
        metrics: metrics.clone(),
        store: store.clone(),
        first_pass_done: Default::default(),
        unauthorized: Default::default(),
        pacer_waited: Box::new(move || pacer_client.pacer().waited()),
    });
    let http_stop = CancellationToken::new();
    let (addr, http_task) = http::serve(config.listen, shared.clone(), http_stop.clone())
        .await
        .map_err(|e| format!("cannot listen on {}: {e}", config.listen))?;
    tracing::info!(%addr, "serving /healthz, /readyz, /metrics and /status");

    let (watch_tx, mut watch_rx) = mpsc::channel(1);
    // A single manifest file may read data files beside it: watch its directory.
    let watched = if config.path.is_dir() {
        config.path.clone()
    } else {
        config
            .path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .map(|p| p.to_path_buf())
            .unwrap_or_else(|| PathBuf::from("."))
    };
    // Half the debounce in the watcher (folding an editor's rename dance into one event),
    // half in the trailing-edge wait below: a change is picked up about `debounce` later.
    let mut watch = watch::watch(&watched, config.debounce / 2, watch_tx.clone())
        .map_err(|e| format!("cannot watch {}: {e}", watched.display()))?;
    let mut sighup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        .map_err(|e| format!("cannot handle SIGHUP: {e}"))?;

    let mut d = Scheduler {
        config,
        client,
        store,
        metrics,
        shared,
        manifests: Arc::new(Manifests::default()),
        desired: DesiredState::default(),
        policies: Arc::new(Vec::new()),
        lists: BTreeMap::new(),
        limit: Arc::new(Semaphore::new(1)),
        auth_paused_until: None,
        auth_backoff: None,
        source_revision: None,
    };
    d.limit = Arc::new(Semaphore::new(d.config.concurrency.max(1)));
    let (done_tx, mut done_rx) = mpsc::unbounded_channel::<Done>();
    d.reload(false);

    // Trailing-edge debounce on top of the watcher's: a reload waits until changes have
    // been quiet for `debounce` (a git checkout touching files for a second is one reload),
    // but never more than `MAX_RELOAD_DELAY` after the first change.
    let mut reload_at: Option<(Instant, Instant)> = None;
    loop {
        d.start_due(&done_tx);
        let wake = match reload_at {
            Some((at, _)) => d.next_wake().min(at),
            None => d.next_wake(),
        };
        tokio::select! {
            _ = shutdown.cancelled() => break,
            Some(()) = watch_rx.recv() => {
                let now = Instant::now();
                let first = reload_at.map_or(now, |(_, first)| first);
                let at = (now + d.config.debounce / 2).min(first + MAX_RELOAD_DELAY);
                reload_at = Some((at, first));
            }
            _ = tokio::time::sleep_until(reload_at.map_or(wake, |(at, _)| at)), if reload_at.is_some() => {
                reload_at = None;
                tracing::info!("manifests changed; reloading");
                if watch.moved() {
                    // A symlink on the path now points to a new checkout (git-sync): follow it.
                    match watch::watch(&watched, d.config.debounce / 2, watch_tx.clone()) {
                        Ok(w) => watch = w,
                        Err(e) => tracing::warn!(
                            error = %e,
                            path = %watched.display(),
                            "cannot watch the new target of the manifests path"
                        ),
                    }
                }
                d.reload(false);
            }
            _ = hangup(&mut sighup) => {
                tracing::info!("SIGHUP: reloading and re-asserting every list");
                d.reload(true);
            }
            Some(done) = done_rx.recv() => d.finished(done),
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
    Ok(())
}

async fn hangup(s: &mut tokio::signal::unix::Signal) {
    s.recv().await;
}

struct Scheduler {
    config: DaemonConfig,
    client: Client,
    store: Arc<Store>,
    metrics: Arc<Metrics>,
    shared: Arc<http::Shared>,
    manifests: Arc<Manifests>,
    desired: DesiredState,
    policies: Arc<Vec<manifest::Policy>>,
    lists: BTreeMap<ContactListId, ListState>,
    limit: Arc<Semaphore>,
    auth_paused_until: Option<Instant>,
    auth_backoff: Option<backon::ExponentialBackoff>,
    source_revision: Option<String>,
}

impl Scheduler {
    fn backoff(&self) -> backon::ExponentialBackoff {
        backon::ExponentialBuilder::default()
            .with_min_delay(self.config.min_backoff)
            .with_max_delay(self.config.max_backoff)
            .with_jitter()
            .without_max_times()
            .build()
    }

    /// Loads the manifests again and schedules the lists whose desired state changed.
    fn reload(&mut self, resync_all: bool) {
        let manifests = manifest::load(&self.config.path);
        let errors = manifests.errors().count();
        for d in manifests.errors() {
            tracing::warn!(diagnostic = %d, "manifest error");
        }
        self.metrics.manifest_errors.set(errors as i64);
        self.metrics
            .manifest_loads
            .get_or_create(&ResultLabel {
                result: if errors > 0 { "error" } else { "ok" }.into(),
            })
            .inc();
        let now = plan::now_unix();
        if let Err(e) = reconcile::record_manifests(&self.store, &manifests, now) {
            tracing::error!(error = %e, "cannot record manifest state");
        }
        let desired = DesiredState::build(&manifests.policies);
        self.source_revision = crate::revision::git_commit(&self.config.path);
        let mut seen = HashSet::new();
        let due_now = Instant::now();
        for l in &desired.lists {
            seen.insert(l.list.clone());
            match self.lists.get_mut(&l.list) {
                Some(state) => {
                    if state.revision != l.revision || resync_all {
                        state.revision = l.revision.clone();
                        state.resync_all |= resync_all;
                        if state.running {
                            state.dirty = true;
                        } else {
                            state.next_due = due_now;
                            state.backoff = None;
                        }
                    }
                }
                None => {
                    self.lists.insert(
                        l.list.clone(),
                        ListState {
                            next_due: due_now,
                            running: false,
                            dirty: false,
                            resync_all,
                            revision: l.revision.clone(),
                            backoff: None,
                            completed_once: false,
                        },
                    );
                }
            }
        }
        // Lists no policy names any more: stop scheduling them (a run in flight finishes).
        self.lists.retain(|id, s| seen.contains(id) || s.running);
        if resync_all {
            self.auth_paused_until = None;
        }
        tracing::info!(
            policies = manifests.policies.len(),
            invalid = manifests.invalid.len(),
            lists = desired.lists.len(),
            errors,
            "manifests loaded"
        );
        self.policies = Arc::new(manifests.policies.clone());
        self.manifests = Arc::new(manifests);
        self.desired = desired;
        self.refresh_ready_gauges();
        self.update_first_pass();
    }

    fn next_wake(&self) -> Instant {
        let far = Instant::now() + Duration::from_secs(3600);
        let mut wake = self
            .lists
            .values()
            .filter(|s| !s.running)
            .map(|s| s.next_due)
            .min()
            .unwrap_or(far);
        if let Some(p) = self.auth_paused_until {
            wake = wake.max(p);
        }
        wake
    }

    fn start_due(&mut self, done: &mpsc::UnboundedSender<Done>) {
        let now = Instant::now();
        if let Some(until) = self.auth_paused_until
            && until > now
        {
            return;
        }
        let due: Vec<ContactListId> = self
            .lists
            .iter()
            .filter(|(_, s)| !s.running && s.next_due <= now)
            .map(|(id, _)| id.clone())
            .collect();
        for id in due {
            let Some(desired) = self.desired.lists.iter().find(|l| l.list == id).cloned() else {
                continue;
            };
            let state = self.lists.get_mut(&id).expect("scheduled list");
            state.running = true;
            state.dirty = false;
            let mut options = self.config.plan.clone();
            options.now = plan::now_unix();
            options.resync_all = std::mem::take(&mut state.resync_all);
            let records = self.store.records(&id).unwrap_or_else(|e| {
                tracing::error!(error = %e, list = %id, "cannot read the store");
                Default::default()
            });
            let list_plan = plan::plan_list(&self.policies, &desired, &records, &options);
            let ctx = Context {
                client: self.client.clone(),
                store: self.store.clone(),
                batch_size: options.batch_size,
                progress: Arc::new(NoProgress),
                source_revision: self.source_revision.clone(),
            };
            let (policies, limit, done) = (self.policies.clone(), self.limit.clone(), done.clone());
            tokio::spawn(async move {
                let _permit = limit.acquire_owned().await;
                let outcome = reconcile::reconcile_list(&ctx, &policies, &list_plan).await;
                let confirmed = outcome.removed + outcome.not_in_list + outcome.observed_absent;
                let pending_after = if outcome.result.is_ok() {
                    0
                } else {
                    (list_plan.to_assert() as u64).saturating_sub(confirmed)
                };
                let names: Vec<&str> = list_plan
                    .policies
                    .iter()
                    .map(|&i| policies[i].name.as_str())
                    .collect();
                tracing::info!(
                    list = %list_plan.list,
                    policies = %names.join(","),
                    result = crate::metrics::result_label(&outcome.result),
                    to_assert = list_plan.to_assert(),
                    removed = outcome.removed,
                    not_in_list = outcome.not_in_list + outcome.observed_absent,
                    failed = outcome.failed,
                    requests = outcome.requests,
                    rate_limited = outcome.rate_limited,
                    duration_ms = outcome.duration.as_millis() as u64,
                    strategy = outcome.strategy.as_deref().unwrap_or("none"),
                    "reconciled"
                );
                let _ = done.send(Done {
                    list: list_plan.list.clone(),
                    outcome,
                    pending_after,
                });
            });
        }
    }

    fn finished(&mut self, done: Done) {
        self.metrics.reconciled(&done.outcome, done.pending_after);
        let now = Instant::now();
        let unauthorized = matches!(done.outcome.result, ListResult::Unauthorized(_));
        let fresh = self.backoff();
        let mut backoff = self
            .lists
            .get_mut(&done.list)
            .and_then(|s| s.backoff.take());
        if let Some(state) = self.lists.get_mut(&done.list) {
            state.running = false;
            state.completed_once = true;
            let ok = done.outcome.result.is_ok();
            if state.dirty {
                state.next_due = now;
            } else if ok || matches!(done.outcome.result, ListResult::Interrupted) {
                state.next_due = now + self.config.interval;
            } else if !unauthorized {
                let b = backoff.get_or_insert(fresh);
                let wait = b.next().unwrap_or(self.config.max_backoff);
                tracing::info!(list = %done.list, wait_ms = wait.as_millis() as u64, "requeued after failure");
                state.next_due = now + wait;
                state.backoff = backoff;
            }
        }
        if unauthorized {
            let wait = {
                let mut b = self.auth_backoff.take().unwrap_or_else(|| {
                    backon::ExponentialBuilder::default()
                        .with_min_delay(Duration::from_secs(30).min(self.config.max_backoff))
                        .with_max_delay(self.config.max_backoff)
                        .with_jitter()
                        .without_max_times()
                        .build()
                });
                let w = b.next().unwrap_or(self.config.max_backoff);
                self.auth_backoff = Some(b);
                w
            };
            tracing::error!(
                wait_s = wait.as_secs(),
                "AutoSend refused the API key: pausing all API work"
            );
            self.shared.unauthorized.store(true, Ordering::Relaxed);
            self.auth_paused_until = Some(now + wait);
            if let ListResult::Unauthorized(m) = &done.outcome.result {
                let condition = Condition::new(Ready::False, "Unauthorized", m.clone());
                reconcile::mark_policies(
                    &self.store,
                    self.policies.iter().filter(|p| !p.suspend),
                    &condition,
                    plan::now_unix(),
                );
            }
            // Every list waits for the pause, then tries again.
            for s in self.lists.values_mut() {
                s.next_due = s.next_due.max(now + wait);
            }
        } else if !matches!(done.outcome.result, ListResult::Interrupted) {
            self.auth_backoff = None;
            self.auth_paused_until = None;
            self.shared.unauthorized.store(false, Ordering::Relaxed);
        }
        self.refresh_ready_gauges();
        self.update_first_pass();
    }

    fn update_first_pass(&self) {
        if self.lists.values().all(|s| s.completed_once) {
            self.shared.first_pass_done.store(true, Ordering::Relaxed);
        }
    }

    fn refresh_ready_gauges(&self) {
        let Ok(policies) = self.store.policies() else {
            return;
        };
        self.metrics.policy_ready.clear();
        for p in policies {
            self.metrics
                .policy_ready
                .get_or_create(&PolicyLabels {
                    policy: p.name,
                    reason: p.condition.reason,
                })
                .set(i64::from(p.condition.ready == Ready::True));
        }
        if let Ok(lists) = self.store.lists(0) {
            for l in lists {
                if let Some(d) = l.drift {
                    self.metrics
                        .drift
                        .get_or_create(&ListLabel {
                            list: l.contact_list_id,
                        })
                        .set(d);
                }
            }
        }
    }
}
