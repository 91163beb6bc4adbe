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
    /// The load the reconcile planned from.
    generation: u64,
    /// `None` when the list was no longer in the manifests by the time its turn came.
    outcome: Option<ListOutcome>,
    pending_after: u64,
}

/// What the latest load says; a reconcile plans from it when its turn comes (not when it was
/// queued), so a queued list never runs a plan the manifests have since changed.
struct Snapshot {
    generation: u64,
    policies: Arc<Vec<manifest::Policy>>,
    desired: DesiredState,
    source_revision: Option<String>,
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
        snapshot: Arc::new(std::sync::RwLock::new(Snapshot {
            generation: 0,
            policies: Arc::new(Vec::new()),
            desired: DesiredState::default(),
            source_revision: None,
        })),
        lists: BTreeMap::new(),
        limit: Arc::new(Semaphore::new(1)),
        auth_paused_until: None,
        auth_backoff: None,
    };
    d.limit = Arc::new(Semaphore::new(d.config.concurrency.max(1)));
    let (done_tx, mut done_rx) = mpsc::unbounded_channel::<Done>();
    d.reload(false).await;

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
                d.reload(false).await;
            }
            _ = hangup(&mut sighup) => {
                tracing::info!("SIGHUP: reloading and re-asserting every list");
                d.reload(true).await;
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

/// Plans one list from the store's records now and reconciles it. A store that cannot be
/// read fails the list (requeued with backoff) rather than planning every contact as new.
async fn reconcile_one(
    ctx: &Context,
    policies: &[manifest::Policy],
    desired: &Arc<crate::desired::DesiredList>,
    mut options: PlanOptions,
) -> (ListOutcome, usize, String) {
    let names: Vec<&str> = desired
        .policies
        .iter()
        .map(|&i| policies[i].name.as_str())
        .collect();
    let names = names.join(",");
    let records = {
        let (store, list) = (ctx.store.clone(), desired.list.clone());
        tokio::task::spawn_blocking(move || store.records(&list)).await
    };
    let records = match records {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => {
            let message = format!("cannot read the state store: {e}");
            tracing::error!(list = %desired.list, %message);
            let outcome = ListOutcome::new(desired.list.clone(), ListResult::Failed(message));
            return (outcome, 0, names);
        }
        Err(e) => {
            let outcome = ListOutcome::new(desired.list.clone(), ListResult::Failed(e.to_string()));
            return (outcome, 0, names);
        }
    };
    options.now = plan::now_unix();
    let list_plan = plan::plan_list(policies, desired, &records, &options);
    let outcome = reconcile::reconcile_list(ctx, policies, &list_plan).await;
    (outcome, list_plan.to_assert(), names)
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
    snapshot: Arc<std::sync::RwLock<Snapshot>>,
    lists: BTreeMap<ContactListId, ListState>,
    limit: Arc<Semaphore>,
    auth_paused_until: Option<Instant>,
    auth_backoff: Option<backon::ExponentialBackoff>,
}

impl Scheduler {
    /// Loads the manifests again and schedules the lists whose desired state changed.
    async fn reload(&mut self, resync_all: bool) {
        // Loading (possibly millions of lines), the store writes and `git rev-parse` block:
        // off the async workers, so pacing timers and the HTTP endpoints stay responsive.
        let (path, store) = (self.config.path.clone(), self.store.clone());
        let loaded = tokio::task::spawn_blocking(move || {
            let manifests = manifest::load(&path);
            if let Err(e) = reconcile::record_manifests(&store, &manifests, plan::now_unix()) {
                tracing::error!(error = %e, "cannot record manifest state");
            }
            let desired = DesiredState::build(&manifests.policies);
            let revision = crate::revision::git_commit(&path);
            (manifests, desired, revision)
        })
        .await;
        let (manifests, desired, source_revision) = match loaded {
            Ok(l) => l,
            Err(e) => {
                tracing::error!(error = %e, "manifest load panicked; keeping the previous load");
                return;
            }
        };
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
        // Lists no policy names any more: stop scheduling them (a run in flight finishes,
        // then `finished` drops them).
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
        {
            let mut snap = self.snapshot.write().unwrap_or_else(|p| p.into_inner());
            snap.generation += 1;
            snap.policies = Arc::new(manifests.policies.clone());
            snap.desired = desired;
            snap.source_revision = source_revision;
        }
        self.manifests = Arc::new(manifests);
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
            let state = self.lists.get_mut(&id).expect("scheduled list");
            state.running = true;
            state.dirty = false;
            let mut options = self.config.plan.clone();
            options.resync_all = std::mem::take(&mut state.resync_all);
            let ctx = Context {
                client: self.client.clone(),
                store: self.store.clone(),
                batch_size: options.batch_size,
                progress: Arc::new(NoProgress),
                source_revision: None,
            };
            let (snapshot, limit, done) = (self.snapshot.clone(), self.limit.clone(), done.clone());
            tokio::spawn(async move {
                let _permit = limit.acquire_owned().await;
                let (generation, policies, desired, source_revision) = {
                    let snap = snapshot.read().unwrap_or_else(|p| p.into_inner());
                    let desired = snap.desired.lists.iter().find(|l| l.list == id).cloned();
                    (
                        snap.generation,
                        snap.policies.clone(),
                        desired,
                        snap.source_revision.clone(),
                    )
                };
                let Some(desired) = desired else {
                    let _ = done.send(Done {
                        list: id,
                        generation,
                        outcome: None,
                        pending_after: 0,
                    });
                    return;
                };
                let ctx = Context {
                    source_revision,
                    ..ctx
                };
                let (outcome, to_assert, names) =
                    reconcile_one(&ctx, &policies, &desired, options).await;
                let confirmed = outcome.removed + outcome.not_in_list + outcome.observed_absent;
                let pending_after = if outcome.result.is_ok() {
                    0
                } else {
                    (to_assert as u64).saturating_sub(confirmed)
                };
                tracing::info!(
                    list = %outcome.list,
                    policies = %names,
                    result = crate::metrics::result_label(&outcome.result),
                    to_assert,
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
                    list: id,
                    generation,
                    outcome: Some(outcome),
                    pending_after,
                });
            });
        }
    }

    fn finished(&mut self, done: Done) {
        let (generation, still_desired) = self
            .snapshot
            .read()
            .map(|s| {
                (
                    s.generation,
                    s.desired.lists.iter().any(|l| l.list == done.list),
                )
            })
            .unwrap_or((0, true));
        // A reconcile that planned from an older load may have written a condition the newer
        // load contradicts (a policy since made invalid, or deleted): state it again.
        if done.generation != generation
            && let Err(e) =
                reconcile::record_manifests(&self.store, &self.manifests, plan::now_unix())
        {
            tracing::error!(error = %e, "cannot record manifest state");
        }
        let now = Instant::now();
        let result = done.outcome.as_ref().map(|o| &o.result);
        let unauthorized = matches!(result, Some(ListResult::Unauthorized(_)));
        if let Some(o) = &done.outcome {
            self.metrics.reconciled(o, done.pending_after);
        }
        if !still_desired {
            // The list left the manifests meanwhile: drop its schedule (a due time left in
            // the past would keep the loop from ever sleeping).
            self.lists.remove(&done.list);
        } else if let Some(state) = self.lists.get_mut(&done.list) {
            state.running = false;
            state.completed_once = true;
            let ok = result.is_some_and(ListResult::is_ok);
            if state.dirty || result.is_none() {
                state.next_due = now;
            } else if ok || matches!(result, Some(ListResult::Interrupted)) {
                state.next_due = now + self.config.interval;
                state.backoff = None;
            } else if !unauthorized {
                let fresh = || {
                    backon::ExponentialBuilder::default()
                        .with_min_delay(self.config.min_backoff)
                        .with_max_delay(self.config.max_backoff)
                        .with_jitter()
                        .without_max_times()
                        .build()
                };
                let wait = state
                    .backoff
                    .get_or_insert_with(fresh)
                    .next()
                    .unwrap_or(self.config.max_backoff);
                tracing::info!(list = %done.list, wait_ms = wait.as_millis() as u64, "requeued after failure");
                state.next_due = now + wait;
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
            if let Some(ListResult::Unauthorized(m)) = result {
                let condition = Condition::new(Ready::False, "Unauthorized", m.clone());
                let snap = self
                    .snapshot
                    .read()
                    .map(|s| (s.policies.clone(), s.source_revision.clone()));
                if let Ok((policies, revision)) = snap {
                    reconcile::mark_policies(
                        &self.store,
                        policies.iter().filter(|p| !p.suspend),
                        &condition,
                        revision.as_deref(),
                        plan::now_unix(),
                    );
                }
            }
            // Every list waits for the pause, then tries again.
            for s in self.lists.values_mut() {
                s.next_due = s.next_due.max(now + wait);
            }
        } else if done.outcome.as_ref().is_some_and(|o| o.requests > 0)
            && !matches!(result, Some(ListResult::Interrupted))
        {
            // Only a list that actually reached AutoSend proves the key works again; one with
            // nothing pending made no request and proves nothing.
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
        if let Ok(drifts) = self.store.drifts() {
            for (list, drift) in drifts {
                self.metrics
                    .drift
                    .get_or_create(&ListLabel { list })
                    .set(drift as i64);
            }
        }
    }
}
