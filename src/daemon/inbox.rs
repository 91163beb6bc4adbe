//! The daemon's side of webhooks: handling what the [receiver](super::receiver) committed to
//! the store's inbox, through the same reload and reconcile path as a file edit.
//!
//! Events are gathered for a short while (until none came for [`EVENT_QUIET`], at most
//! [`EVENT_BATCH_MAX`] after the first), so that a burst of a thousand events is one reload
//! and one reconcile per list, not a thousand. Handling an event and marking it handled is
//! one store transaction ([`crate::store::Store::handle_events`]); then:
//! - contacts fed to policies change those policies' sets: a reload (no file is read again)
//!   joins them, and the lists whose revision changed reconcile at once;
//! - a contact some list excludes that AutoSend says was created or updated is resynced on
//!   those lists (confirmed long ago as far as the plan is concerned), and they run now.
//!
//! Bounces and spam reports wait while any policy cannot be loaded or the last reload
//! failed: the policy that takes them may be the broken one, and handling them without it
//! would lose them for it. Contact hints need only the desired state and never wait.

use std::collections::HashSet;
use std::time::Duration;

use tokio::time::Instant;

use super::scheduler::Scheduler;
use crate::contact::{AccountName, ContactListId, ListKey};

/// A batch of events closes when none came for this long...
pub(super) const EVENT_QUIET: Duration = Duration::from_millis(250);
/// ...or this long after its first event.
pub(super) const EVENT_BATCH_MAX: Duration = Duration::from_secs(2);
/// `maxRemovalsPerSync` counts a policy's event-fed additions over this window (and since
/// its last `listwarden approve`): a storm trickles in over many reconciles.
pub(super) const EVENT_STORM_WINDOW: Duration = Duration::from_secs(3600);
/// Events handled in one transaction; more are handled in the next round.
const EVENTS_PER_ROUND: usize = 5_000;

impl Scheduler {
    /// Handles what the inbox holds. `received` is when the first event of the batch was
    /// announced (for the event-to-remove latency). Returns whether events are left (more
    /// than a round, or waiting for the manifests to load cleanly).
    pub(super) async fn handle_inbox(&mut self, received: Instant) -> bool {
        let (generation, policies, desired) = {
            let snap = self.snapshot.read().unwrap_or_else(|p| p.into_inner());
            (snap.generation, snap.policies.clone(), snap.desired.clone())
        };
        if generation == 0 {
            // Nothing loaded yet: after the first load.
            return true;
        }
        let policies_complete = self.manifests.invalid.is_empty() && !self.reload_failed;
        let max_removals = self.config.plan.max_removals;
        let store = self.store.clone();
        let handled = tokio::task::spawn_blocking(move || {
            // While some policy cannot be loaded, bounces and spam reports wait (the policy
            // that takes them may be the broken one): only contact hints are read, so that a
            // backlog of the others never starves them.
            let ready = store.unhandled_events(EVENTS_PER_ROUND, !policies_complete)?;
            let seen = ready.len();
            let now_ms = crate::clock::now_unix() * 1000;
            let since = now_ms - EVENT_STORM_WINDOW.as_millis() as i64;
            // A store that cannot say what was spent gives nothing: held, not sent.
            let budget = |p: &crate::manifest::Policy| {
                let threshold = p.max_removals_per_sync.or(max_removals)?;
                let spent = store
                    .event_additions_since(p.name.as_str(), since)
                    .unwrap_or(threshold);
                Some(threshold.saturating_sub(spent))
            };
            let (outcomes, handling) = crate::feed::decide(&ready, &policies, &desired, &budget);
            let marks: Vec<(i64, &str)> =
                outcomes.iter().map(|(id, o)| (*id, o.as_str())).collect();
            store.handle_events(&marks, &handling, now_ms)?;
            for ((_, e), (_, outcome)) in ready.iter().zip(&outcomes) {
                tracing::info!(event = %e.event_type, %outcome, "webhook event handled");
            }
            Ok::<_, crate::store::StoreError>((
                handling,
                ready.len() < seen || seen == EVENTS_PER_ROUND,
            ))
        })
        .await;
        let (handling, left) = match handled {
            Ok(Ok(h)) => h,
            Ok(Err(e)) => {
                tracing::error!(error = %e, "cannot handle webhook events; retrying");
                return true;
            }
            Err(e) => {
                tracing::error!(error = %e, "handling webhook events panicked; retrying");
                return true;
            }
        };
        let now = Instant::now();
        let key = |account: &str, list: &str| {
            Some(ListKey::new(
                AccountName::parse(account).ok()?,
                ContactListId::parse(list).ok()?,
            ))
        };
        let resynced: HashSet<ListKey> = handling
            .resync
            .iter()
            .filter_map(|r| key(&r.account, &r.list_id))
            .collect();
        let fed: HashSet<ListKey> = handling
            .fed
            .iter()
            .filter_map(|f| key(&f.account, &f.list_id))
            .collect();
        for id in resynced.iter().chain(&fed) {
            self.event_waits.entry(id.clone()).or_insert(received);
        }
        for id in &resynced {
            if let Some(state) = self.lists.get_mut(id) {
                if state.running {
                    state.dirty = true;
                } else {
                    state.next_due = now;
                    state.backoff = None;
                }
            }
        }
        if !fed.is_empty() {
            // No file changed: nothing is read again, the policies' event-fed sets are.
            self.reload(false, Some(HashSet::new())).await;
        }
        left
    }

    /// Whether `listwarden events forget` took a contact out of an event-fed set since the
    /// last look (then the daemon reloads, and stops asserting it).
    pub(super) fn event_forgets_changed(&mut self) -> bool {
        let Ok(mark) = self.store.event_forget_mark() else {
            return false;
        };
        let changed = self.forget_mark.is_some_and(|seen| seen != mark);
        self.forget_mark = Some(mark);
        changed
    }

    /// A reconcile of `list` ended well: the events waiting on it were asserted.
    pub(super) fn events_asserted(&mut self, list: &ListKey) {
        if let Some(received) = self.event_waits.remove(list) {
            self.metrics
                .webhook_event_to_remove
                .observe(received.elapsed().as_secs_f64());
        }
    }
}
