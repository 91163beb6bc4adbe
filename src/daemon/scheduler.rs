//! The scheduler: per-list state, what a reload changes, which reconcile starts when, and
//! what happens after one ends. `run` (the module above) drives it from its event loop.
//!
//! Long, on purpose: the scheduler is one state machine (per-list state, reloads, starts,
//! ends, process faults), and its handlers read best together; the decision after a
//! reconcile is apart, in `requeue`.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use crate::account::Clients;
use crate::contact::AccountName;
use backon::BackoffBuilder;
use futures_util::FutureExt;
use tokio::sync::{Semaphore, mpsc};
use tokio::time::Instant;

use super::requeue::{self, Action};
use super::watch::{self, Changed, Watch};
use super::{DaemonConfig, http};
use crate::condition::Ready;
use crate::contact::ListKey;
use crate::desired::DesiredState;
use crate::gate::Gates;
use crate::manifest::{self, Manifests};
use crate::metrics::{ListLabel, Metrics, PolicyLabels, ResultLabel};
use crate::plan::{self, PlanOptions};
use crate::reconcile::{self, Context, ListOutcome, ListResult, NoProgress};
use crate::store::Store;

/// How long after a store write failed the daemon tries writing again.
const STORE_RETRY: Duration = Duration::from_secs(10);

/// Per-list scheduling state.
pub(super) struct ListState {
    pub(super) next_due: Instant,
    pub(super) running: bool,
    /// Asked to run again while running.
    pub(super) dirty: bool,
    /// Re-assert every confirmed contact on the next run (SIGHUP).
    pub(super) resync_all: bool,
    pub(super) revision: String,
    pub(super) backoff: Option<backon::ExponentialBackoff>,
    pub(super) completed_once: bool,
}

pub(super) struct Done {
    pub(super) list: ListKey,
    /// The load the reconcile planned from.
    pub(super) generation: u64,
    /// `None` when the list was no longer in the manifests by the time its turn came.
    pub(super) outcome: Option<ListOutcome>,
    pub(super) pending_after: u64,
}

/// What the latest load says; a reconcile plans from it when its turn comes (not when it was
/// queued), so a queued list never runs a plan the manifests have since changed.
pub(super) struct Snapshot {
    pub(super) generation: u64,
    pub(super) policies: Arc<Vec<manifest::Policy>>,
    pub(super) desired: DesiredState,
    pub(super) source_revision: Option<String>,
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
            let outcome = ListOutcome::new(desired.list.clone(), ListResult::StoreFailed(message));
            return (outcome, 0, names);
        }
        Err(e) => {
            let outcome = ListOutcome::new(desired.list.clone(), ListResult::Failed(e.to_string()));
            return (outcome, 0, names);
        }
    };
    options.now = crate::clock::now_unix();
    let list_plan = plan::plan_list(policies, desired, &records, &options);
    let outcome = reconcile::reconcile_list(ctx, policies, &list_plan).await;
    (outcome, list_plan.to_assert(), names)
}

/// `path` made comparable with the paths of another load: canonical, or, for a file that no
/// longer exists, its canonical directory joined with its name.
fn comparable(path: &Path) -> PathBuf {
    if let Ok(p) = path.canonicalize() {
        return p;
    }
    match (path.parent(), path.file_name()) {
        (Some(dir), Some(name)) => dir
            .canonicalize()
            .map(|d| d.join(name))
            .unwrap_or_else(|_| path.to_path_buf()),
        _ => path.to_path_buf(),
    }
}

/// The manifest files (canonical) to read again for a change of `changed` (as the watcher
/// named them), given which manifests read each file source (`readers`, canonical); `None`
/// for all of them. Only a plain file edited in place can be tied to the manifests that read
/// it: a path that is gone (a deleted source, a temporary file renamed away, a directory or
/// a link removed), a symlink (re-pointed at what another manifest reads), a directory, a
/// file with several hard links (its other names changed too), or a file no valid policy
/// reads (an invalid one may be waiting for it) makes everything load again, so a stale
/// cached part can never keep asserting what the manifests dropped. Manifests themselves are
/// named directly (a removed one is dropped by the walk).
fn stale_manifests(
    readers: &HashMap<PathBuf, Vec<PathBuf>>,
    changed: &HashSet<PathBuf>,
) -> Option<HashSet<PathBuf>> {
    let mut stale = HashSet::new();
    for path in changed {
        let plain = plain_file(path);
        if manifest::is_manifest_name(path) && (plain || std::fs::symlink_metadata(path).is_err()) {
            stale.insert(comparable(path));
            continue;
        }
        if !plain {
            return None;
        }
        stale.extend(readers.get(&comparable(path))?.iter().cloned());
    }
    Some(stale)
}

/// Gives the memory a reload freed (the previous load's sets) back to the system. glibc keeps
/// freed blocks in per-thread arenas, and the reload's blocking threads are new ones now and
/// then: without this, the resident size of a daemon holding a million contacts crept up by
/// about 2 MiB a reload.
fn release_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    tokio::task::spawn_blocking(|| {
        // SAFETY: malloc_trim only returns free memory to the system; it has no preconditions.
        unsafe { libc::malloc_trim(0) };
    });
}

/// A regular file with one name, not a symlink: the only kind of changed path whose readers
/// are known for sure (see [`stale_manifests`]).
fn plain_file(path: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_file() && m.nlink() == 1)
}

/// An account whose key AutoSend refused: its lists wait until `until`.
pub(super) struct AuthPause {
    pub(super) until: Instant,
    pub(super) backoff: backon::ExponentialBackoff,
}

pub(super) struct Scheduler {
    pub(super) config: DaemonConfig,
    pub(super) clients: Clients,
    pub(super) store: Arc<Store>,
    pub(super) metrics: Arc<Metrics>,
    pub(super) shared: Arc<http::Shared>,
    pub(super) manifests: Arc<Manifests>,
    pub(super) snapshot: Arc<std::sync::RwLock<Snapshot>>,
    pub(super) lists: BTreeMap<ListKey, ListState>,
    /// Lists at once over every account.
    pub(super) limit: Arc<Semaphore>,
    /// Lists at once per account (its `concurrency`, else `--concurrency`).
    pub(super) account_limits: HashMap<AccountName, Arc<Semaphore>>,
    pub(super) gates: Arc<Gates>,
    /// Which lists each file source (comparable path) feeds.
    pub(super) concerns: HashMap<PathBuf, Vec<ListKey>>,
    /// What each manifest yielded at the last load, so a reload reads only what changed.
    pub(super) cache: manifest::Cache,
    /// Which manifests (canonical) read each file source (canonical), from the last load.
    pub(super) readers: HashMap<PathBuf, Vec<PathBuf>>,
    /// Policies the forget threshold holds in the current load.
    pub(super) holds: Vec<crate::hold::Hold>,
    /// Accounts whose key was refused, each paused on its own backoff: the others go on.
    pub(super) auth_paused: HashMap<AccountName, AuthPause>,
    /// While the store cannot be written: when to try again. No reconcile starts meanwhile.
    pub(super) store_retry_at: Option<Instant>,
    /// The last reload did not complete: sends stay held, and it is tried again.
    pub(super) reload_failed: bool,
    /// Lists with webhook events waiting to be asserted, and when the first was received.
    pub(super) event_waits: HashMap<ListKey, Instant>,
    /// What `Store::event_forget_mark` said at the last look.
    pub(super) forget_mark: Option<i64>,
}

impl Scheduler {
    pub(super) fn start_watch(
        &self,
        watched: &Path,
        tx: &mpsc::UnboundedSender<Changed>,
    ) -> Option<Watch> {
        match watch::watch(watched, self.config.debounce / 2, tx.clone()) {
            Ok(w) => Some(w),
            Err(e) => {
                tracing::warn!(error = %e, path = %watched.display(), "cannot watch the manifests path");
                None
            }
        }
    }

    /// Holds the sends of the lists `changed` concerns until the next reload.
    pub(super) fn hold_changed(&self, changed: &Changed) {
        let lists: Option<HashSet<&ListKey>> = match changed {
            Changed::Unknown => None,
            // A symlink, a path that is gone or a hard-linked file may concern lists other
            // than the ones its current target feeds: every list, then.
            Changed::Paths(paths) => paths
                .iter()
                .map(|p| {
                    plain_file(p)
                        .then(|| self.concerns.get(&comparable(p)))
                        .flatten()
                })
                .collect::<Option<Vec<_>>>()
                .map(|found| found.into_iter().flatten().collect()),
        };
        match lists {
            Some(lists) => {
                for l in &lists {
                    self.gates.close(l);
                }
                tracing::debug!(
                    lists = lists.len(),
                    "manifest change: holding the sends of the lists it concerns"
                );
            }
            None => {
                // A manifest, a new file, a directory, a watcher error: any list may be
                // concerned.
                self.gates.close_all();
                tracing::debug!("manifest change: holding every list's sends until the reload");
            }
        }
    }

    /// True (once) when `approve` recorded an approval of a held policy's change.
    pub(super) fn approval_recorded(&self) -> bool {
        if self.holds.is_empty() {
            return false;
        }
        let Ok(baselines) = self.store.baselines() else {
            return false;
        };
        self.holds.iter().any(|h| {
            baselines
                .get(&h.policy)
                .and_then(|b| b.approved_revision.as_deref())
                == Some(h.revision.as_str())
        })
    }

    /// The store file must still be the one opened, and writable after a failure.
    pub(super) fn check_store(&mut self) {
        if let Err(e) = self.store.check_file() {
            if self.shared.store_fault().is_none() {
                tracing::error!(error = %e, "state store lost: pausing all API work");
            }
            self.shared.set_store_fault(Some(e.to_string()));
            self.store_retry_at = Some(Instant::now() + STORE_RETRY);
            return;
        }
        if let Some(at) = self.store_retry_at
            && at <= Instant::now()
        {
            match self.store.probe_write() {
                Ok(()) => {
                    tracing::info!("the state store can be written again; resuming");
                    self.store_retry_at = None;
                    self.shared.set_store_fault(None);
                }
                Err(e) => {
                    self.shared.set_store_fault(Some(e.to_string()));
                    self.store_retry_at = Some(Instant::now() + STORE_RETRY);
                }
            }
        }
    }

    /// Loads the manifests again and schedules the lists whose desired state changed.
    /// `changed`: the paths the watcher named since the last load, or `None` to read
    /// everything again (SIGHUP, a watcher error, a failed reload, the first load).
    pub(super) async fn reload(&mut self, resync_all: bool, changed: Option<HashSet<PathBuf>>) {
        let stale = changed.and_then(|c| stale_manifests(&self.readers, &c));
        // Loading (possibly millions of lines), the store writes and `git rev-parse` block:
        // off the async workers, so pacing timers and the HTTP endpoints stay responsive.
        let (path, store, options) = (
            self.config.path.clone(),
            self.store.clone(),
            self.config.plan.clone(),
        );
        // Taken out while the load runs: if it panics, the next load starts from nothing.
        let mut cache = std::mem::take(&mut self.cache);
        let previous = self
            .snapshot
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .desired
            .clone();
        let before = self.manifests.clone();
        let loaded = tokio::task::spawn_blocking(move || {
            let mut manifests = manifest::load_cached(&path, &mut cache, stale.as_ref());
            crate::account::resolve(&mut manifests, &options.accounts);
            crate::feed::join_event_contacts(&mut manifests, &store)?;
            let baselines = store.baselines()?;
            let holds = crate::hold::check(
                &manifests,
                &baselines,
                options.max_forget_percent,
                options.force,
            );
            let held = holds.mask();
            let holds = holds.all();
            reconcile::record_manifests_since(
                &store,
                &manifests,
                &holds,
                crate::clock::now_unix(),
                Some(&before.policies),
            )?;
            let desired = DesiredState::build_reusing(
                &manifests.policies,
                &held,
                &previous,
                &before.policies,
            );
            let revision = crate::revision::git_commit(&path);
            Ok::<_, crate::store::StoreError>((manifests, desired, holds, revision, cache))
        })
        .await;
        let (manifests, desired, holds, source_revision, cache) = match loaded {
            Ok(Ok(l)) => l,
            Ok(Err(e)) => {
                // Without the store's baselines the forget threshold cannot be checked:
                // sends stay held until a reload works.
                tracing::error!(error = %e, "cannot reload: the state store failed; sends stay held, retrying");
                self.shared.set_store_fault(Some(e.to_string()));
                self.store_retry_at = Some(Instant::now() + STORE_RETRY);
                self.gates.close_all();
                self.reload_failed = true;
                return;
            }
            Err(e) => {
                tracing::error!(error = %e, "manifest load panicked; sends stay held, retrying");
                self.gates.close_all();
                self.reload_failed = true;
                return;
            }
        };
        self.reload_failed = false;
        self.readers = cache.readers_of_sources();
        self.cache = cache;
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
        let root_fault = if !self.config.path.exists() {
            Some(format!(
                "the manifests path {} does not exist (yet); waiting for it",
                self.config.path.display()
            ))
        } else if manifests.files.is_empty() && !self.config.allow_empty {
            Some(format!(
                "no manifests found under {}: nothing is enforced; add *.yaml manifests (or start \
                 with --allow-empty if an empty set is intended)",
                self.config.path.display()
            ))
        } else {
            None
        };
        self.shared.set_manifests_fault(root_fault);
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
        // Lists no policy names any more: stop scheduling them (a run in flight stops at its
        // next request, then `finished` drops them).
        self.lists.retain(|id, s| seen.contains(id) || s.running);
        if resync_all {
            self.auth_paused.clear();
        }
        tracing::info!(
            policies = manifests.policies.len(),
            invalid = manifests.invalid.len(),
            lists = desired.lists.len(),
            held = holds.len(),
            errors,
            "manifests loaded"
        );
        for h in &holds {
            tracing::warn!(policy = %h.policy, "{h}");
        }
        self.holds = holds;
        self.concerns = Scheduler::concerns_of(&manifests);
        {
            let mut snap = self.snapshot.write().unwrap_or_else(|p| p.into_inner());
            snap.generation += 1;
            snap.policies = Arc::new(manifests.policies.clone());
            snap.desired = desired;
            snap.source_revision = source_revision;
            // Open every gate with its list's revision now: a reconcile planned from an
            // older load stops at its next request; lists that left are closed for good.
            for l in &snap.desired.lists {
                self.gates.open(&l.list, Some(&l.revision));
            }
            for id in self.lists.keys().filter(|id| !seen.contains(*id)) {
                self.gates.open(id, None);
            }
        }
        let lists = &self.lists;
        self.gates
            .retain(|l| seen.contains(l) || lists.get(l).is_some_and(|s| s.running));
        self.manifests = Arc::new(manifests);
        release_freed_memory();
        self.refresh_ready_gauges();
        self.update_first_pass();
    }

    /// Which lists each file feeds, from this load; files that no longer parse keep what they
    /// fed before (an edit that breaks a manifest must still hold its lists).
    /// Which lists each file source (comparable path) feeds. Only data files: an edit of a
    /// manifest can rename a policy, duplicate another's name or move it to another list, so
    /// it may concern any list, and holds them all until the reload.
    pub(super) fn concerns_of(manifests: &Manifests) -> HashMap<PathBuf, Vec<ListKey>> {
        let mut out: HashMap<PathBuf, Vec<ListKey>> = HashMap::new();
        for p in &manifests.policies {
            for s in &p.sources {
                let lists = out.entry(comparable(s)).or_default();
                if !lists.contains(&p.list) {
                    lists.push(p.list.clone());
                }
            }
        }
        out
    }

    pub(super) fn next_wake(&self) -> Instant {
        let far = Instant::now() + Duration::from_secs(3600);
        self.lists
            .iter()
            .filter(|(_, s)| !s.running)
            .map(|(id, s)| match self.auth_paused.get(&id.account) {
                Some(p) => s.next_due.max(p.until),
                None => s.next_due,
            })
            .min()
            .unwrap_or(far)
    }

    pub(super) fn start_due(&mut self, done: &mpsc::UnboundedSender<Done>) {
        let now = Instant::now();
        // A store that cannot be written would lose what the requests establish.
        if self.store_retry_at.is_some() || self.shared.store_fault().is_some() {
            return;
        }
        let due: Vec<ListKey> = self
            .lists
            .iter()
            .filter(|(id, s)| {
                !s.running
                    && s.next_due <= now
                    && self
                        .auth_paused
                        .get(&id.account)
                        .is_none_or(|p| p.until <= now)
            })
            .map(|(id, _)| id.clone())
            .collect();
        for id in due {
            let state = self.lists.get_mut(&id).expect("scheduled list");
            state.running = true;
            state.dirty = false;
            let mut options = self.config.plan.clone();
            options.resync_all = std::mem::take(&mut state.resync_all);
            let account_limit = self
                .account_limits
                .entry(id.account.clone())
                .or_insert_with(|| {
                    Arc::new(Semaphore::new(
                        self.clients
                            .concurrency(&id.account, self.config.concurrency),
                    ))
                })
                .clone();
            let ctx = Context {
                clients: self.clients.clone(),
                store: self.store.clone(),
                batch_size: options.batch_size,
                progress: Arc::new(NoProgress),
                source_revision: None,
                gates: self.gates.clone(),
            };
            let (snapshot, limit, done) = (self.snapshot.clone(), self.limit.clone(), done.clone());
            tokio::spawn(async move {
                // The account's slot first, so a busy account never holds a slot of the
                // total while it waits for one of its own.
                let _mine = account_limit.acquire_owned().await;
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
                // reconcile_list catches its own panics; anything else here that panics must
                // still report the list done, or it would stay "running" forever.
                let attempt = AssertUnwindSafe(reconcile_one(&ctx, &policies, &desired, options))
                    .catch_unwind()
                    .await;
                let (outcome, to_assert, names) = attempt.unwrap_or_else(|_| {
                    let outcome = ListOutcome::new(
                        id.clone(),
                        ListResult::Failed("internal error while reconciling this list".into()),
                    );
                    (outcome, 0, String::new())
                });
                let confirmed = outcome.removed + outcome.not_in_list + outcome.observed_absent;
                let pending_after = if outcome.result.is_ok() {
                    0
                } else {
                    (to_assert as u64).saturating_sub(confirmed)
                };
                tracing::info!(
                    list = %outcome.list,
                    policies = %names,
                    result = outcome.result.label(),
                    to_assert,
                    removed = outcome.removed,
                    not_in_list = outcome.not_in_list + outcome.observed_absent,
                    failed = outcome.failed,
                    unaccounted = outcome.unaccounted,
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

    pub(super) fn finished(&mut self, done: Done) {
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
        // load contradicts (a policy since made invalid, held, or deleted): state it again.
        if done.generation != generation
            && let Err(e) = self.store.reset_forget(&done.list).and_then(|()| {
                reconcile::record_manifests(
                    &self.store,
                    &self.manifests,
                    &self.holds,
                    crate::clock::now_unix(),
                )
            })
        {
            tracing::error!(error = %e, "cannot record manifest state");
        }
        let now = Instant::now();
        let result = done.outcome.as_ref().map(|o| &o.result);
        let unauthorized = matches!(result, Some(ListResult::Unauthorized(_)));
        if let Some(o) = &done.outcome {
            self.metrics.reconciled(o, done.pending_after);
            if o.result.is_ok() {
                self.events_asserted(&done.list);
            }
        }
        if let Some(ListResult::StoreFailed(m)) = result {
            tracing::error!(error = %m, "the state store cannot be written: pausing all API work until it can");
            self.shared.set_store_fault(Some(m.clone()));
            self.store_retry_at = Some(now + STORE_RETRY);
        }
        if !still_desired {
            // The list left the manifests meanwhile: drop its schedule (a due time left in
            // the past would keep the loop from ever sleeping).
            self.lists.remove(&done.list);
            self.gates.retain(|l| *l != done.list);
        } else if let Some(state) = self.lists.get_mut(&done.list) {
            state.running = false;
            state.completed_once |= !matches!(result, Some(ListResult::Superseded));
            match requeue::action(result, state.dirty) {
                Action::RunNow => state.next_due = now,
                Action::Requeue => {
                    state.next_due = now + self.config.interval;
                    state.backoff = None;
                }
                Action::Backoff => {
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
                // Handled below for every list.
                Action::PauseAll => {}
            }
        }
        let account = &done.list.account;
        if unauthorized {
            let max_backoff = self.config.max_backoff;
            let pause = self
                .auth_paused
                .entry(account.clone())
                .or_insert_with(|| AuthPause {
                    until: now,
                    backoff: backon::ExponentialBuilder::default()
                        .with_min_delay(Duration::from_secs(30).min(max_backoff))
                        .with_max_delay(max_backoff)
                        .with_jitter()
                        .without_max_times()
                        .build(),
                });
            let wait = pause.backoff.next().unwrap_or(max_backoff);
            pause.until = now + wait;
            tracing::error!(
                %account,
                wait_s = wait.as_secs(),
                "the account's API key was refused by AutoSend or cannot be read: pausing its API work (other accounts go on)"
            );
            if let Some(ListResult::Unauthorized(m)) = result {
                self.shared.set_unauthorized(account, Some(m));
                let snap = self
                    .snapshot
                    .read()
                    .map(|s| (s.policies.clone(), s.source_revision.clone()));
                if let Ok((policies, revision)) = snap {
                    let held: HashSet<&str> =
                        self.holds.iter().map(|h| h.policy.as_str()).collect();
                    reconcile::mark_unauthorized(
                        &self.store,
                        policies.iter().filter(|p| p.list.account == *account),
                        &held,
                        m,
                        revision.as_deref(),
                        crate::clock::now_unix(),
                    );
                }
            }
            // Every list of the account waits for the pause, then tries again.
            for (_, s) in self
                .lists
                .iter_mut()
                .filter(|(id, _)| id.account == *account)
            {
                s.next_due = s.next_due.max(now + wait);
            }
        } else if done.outcome.as_ref().is_some_and(|o| o.requests > 0)
            && !matches!(result, Some(ListResult::Interrupted))
        {
            // Only a list that actually reached AutoSend proves the key works again; one with
            // nothing pending made no request and proves nothing.
            self.auth_paused.remove(account);
            self.shared.set_unauthorized(account, None);
        }
        self.refresh_ready_gauges();
        self.update_first_pass();
    }

    pub(super) fn update_first_pass(&self) {
        if self.lists.values().all(|s| s.completed_once) {
            self.shared.first_pass_done.store(true, Ordering::Relaxed);
        }
    }

    pub(super) fn refresh_ready_gauges(&self) {
        let Ok(policies) = self.store.policies() else {
            return;
        };
        self.metrics.policy_ready.clear();
        for p in policies {
            self.metrics
                .policy_ready
                .get_or_create(&PolicyLabels {
                    policy: p.name,
                    reason: p.condition.reason.to_string(),
                })
                .set(i64::from(p.condition.ready == Ready::True));
        }
        if let Ok(drifts) = self.store.drifts() {
            for (account, list, drift) in drifts {
                self.metrics
                    .drift
                    .get_or_create(&ListLabel { account, list })
                    .set(drift as i64);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_change_reads_again_the_manifests_it_concerns_or_everything_when_unsure() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().canonicalize().unwrap();
        for f in ["a.yaml", "a.txt", "shared.txt", "b.yaml", "orphan.txt"] {
            std::fs::write(d.join(f), "").unwrap();
        }
        std::fs::create_dir(d.join("sub")).unwrap();
        let readers: HashMap<PathBuf, Vec<PathBuf>> = [
            (d.join("a.txt"), vec![d.join("a.yaml")]),
            (
                d.join("shared.txt"),
                vec![d.join("a.yaml"), d.join("b.yaml")],
            ),
        ]
        .into();
        let set =
            |names: &[&str]| -> HashSet<PathBuf> { names.iter().map(|n| d.join(n)).collect() };
        // A data file: the manifests that read it; a manifest: itself.
        assert_eq!(
            stale_manifests(&readers, &set(&["a.txt"])),
            Some(set(&["a.yaml"]))
        );
        assert_eq!(
            stale_manifests(&readers, &set(&["shared.txt", "b.yaml"])),
            Some(set(&["a.yaml", "b.yaml"]))
        );
        // A new manifest is found by the walk, and named.
        assert_eq!(
            stale_manifests(&readers, &set(&["new.yml"])),
            Some(set(&["new.yml"]))
        );
        // A path that is gone (a temporary file renamed away, or a source deleted through a
        // link): everything.
        assert_eq!(stale_manifests(&readers, &set(&["a.txt.tmp123"])), None);
        // A file no valid policy reads (an invalid policy may be waiting for it), or a
        // directory: everything.
        assert_eq!(
            stale_manifests(&readers, &set(&["a.txt", "orphan.txt"])),
            None
        );
        assert_eq!(stale_manifests(&readers, &set(&["sub"])), None);
        // A directory that is gone, under which sources were read: everything.
        std::fs::create_dir(d.join("gone")).unwrap();
        let readers_below: HashMap<PathBuf, Vec<PathBuf>> =
            [(d.join("gone/x.txt"), vec![d.join("a.yaml")])].into();
        std::fs::remove_dir(d.join("gone")).unwrap();
        assert_eq!(stale_manifests(&readers_below, &set(&["gone"])), None);
    }

    /// A data file a policy reads through a symlink: readers are keyed by the link's target
    /// as the last load resolved it; `a.yaml` reads `a.txt` (-> `v1.txt`), `b.yaml` reads
    /// `v2.txt`.
    fn symlinked_source() -> (tempfile::TempDir, PathBuf, HashMap<PathBuf, Vec<PathBuf>>) {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().canonicalize().unwrap();
        for f in ["a.yaml", "b.yaml", "v1.txt", "v2.txt"] {
            std::fs::write(d.join(f), "").unwrap();
        }
        std::os::unix::fs::symlink("v1.txt", d.join("a.txt")).unwrap();
        let readers: HashMap<PathBuf, Vec<PathBuf>> = [
            (d.join("v1.txt"), vec![d.join("a.yaml")]),
            (d.join("v2.txt"), vec![d.join("b.yaml")]),
        ]
        .into();
        (dir, d, readers)
    }

    #[test]
    fn a_data_symlink_repointed_at_another_manifests_file_reads_again_its_own_manifest() {
        let (_dir, d, readers) = symlinked_source();
        std::fs::remove_file(d.join("a.txt")).unwrap();
        std::os::unix::fs::symlink("v2.txt", d.join("a.txt")).unwrap();
        let stale = stale_manifests(&readers, &[d.join("a.txt")].into());
        assert!(
            stale.as_ref().is_none_or(|s| s.contains(&d.join("a.yaml"))),
            "a.yaml is not read again: {stale:?}"
        );
    }

    #[test]
    fn a_deleted_data_symlink_reads_again_the_manifest_reading_it() {
        let (_dir, d, readers) = symlinked_source();
        std::fs::remove_file(d.join("a.txt")).unwrap();
        let stale = stale_manifests(&readers, &[d.join("a.txt")].into());
        assert!(
            stale.as_ref().is_none_or(|s| s.contains(&d.join("a.yaml"))),
            "a.yaml is not read again: {stale:?}"
        );
    }
}
