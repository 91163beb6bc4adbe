//! Per-list send gates: how a manifest edit stops a reconcile that is already sending.
//!
//! A reconcile plans from one load and may then send for minutes (thousands of contacts at
//! 50 requests a minute). If the manifests change meanwhile and drop contacts, the rest of
//! the old plan must not be sent: invariant 1, nothing is sent that the current manifests do
//! not name. So the daemon closes the gates of the lists a change may concern as soon as the
//! watcher reports it, and opens them after the reload with each list's new desired revision.
//! Before every remove request, reconcile waits at its list's gate, then goes on only if the
//! revision it planned from is still the current one; otherwise it stops (`Superseded`) and
//! the daemon plans the list again from the new load. Lists the change does not concern keep
//! sending. What can still be sent after an edit is the request already in flight, plus what
//! was sent before the watcher reported it (the debounce).
//!
//! `apply` has no gates: it applies the load it started from, as `terraform apply` applies
//! its plan; a list without a gate always passes.

use std::collections::HashMap;
use std::sync::Mutex;

use tokio::sync::watch;

use crate::contact::ListKey;

#[derive(Clone, Debug, PartialEq, Eq)]
struct Gate {
    open: bool,
    /// The list's current desired revision; `None` once no manifest names the list.
    revision: Option<String>,
}

/// What a reconcile may do at its gate.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Admit {
    Go,
    /// The manifests changed since the reconcile planned: stop and plan again.
    Superseded,
}

#[derive(Debug, Default)]
pub struct Gates {
    lists: Mutex<HashMap<ListKey, watch::Sender<Gate>>>,
}

impl Gates {
    pub fn new() -> Gates {
        Gates::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<ListKey, watch::Sender<Gate>>> {
        self.lists.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Holds the sends of `list` until [`Gates::open`].
    pub fn close(&self, list: &ListKey) {
        if let Some(tx) = self.lock().get(list) {
            tx.send_modify(|g| g.open = false);
        }
    }

    /// Holds the sends of every list (a change whose lists cannot be told).
    pub fn close_all(&self) {
        for tx in self.lock().values() {
            tx.send_modify(|g| g.open = false);
        }
    }

    /// Lets `list` send again, for reconciles planned from `revision` only (`None`: the list
    /// is no longer desired, every reconcile of it stops).
    pub fn open(&self, list: &ListKey, revision: Option<&str>) {
        let gate = Gate {
            open: true,
            revision: revision.map(str::to_string),
        };
        let mut lists = self.lock();
        match lists.get(list) {
            Some(tx) => {
                tx.send_replace(gate);
            }
            None => {
                lists.insert(list.clone(), watch::channel(gate).0);
            }
        }
    }

    /// Forgets the gates of lists `keep` rejects (their reconciles have finished).
    pub fn retain(&self, keep: impl Fn(&ListKey) -> bool) {
        self.lock().retain(|l, _| keep(l));
    }

    /// Waits while `list`'s gate is closed, then says whether a reconcile planned from
    /// `revision` may send.
    pub async fn admit(&self, list: &ListKey, revision: &str) -> Admit {
        let Some(mut rx) = self.lock().get(list).map(watch::Sender::subscribe) else {
            return Admit::Go;
        };
        loop {
            let gate = rx.borrow_and_update().clone();
            if gate.open {
                return if gate.revision.as_deref() == Some(revision) {
                    Admit::Go
                } else {
                    Admit::Superseded
                };
            }
            if rx.changed().await.is_err() {
                // The gate was dropped while closed: the list left the schedule.
                return Admit::Superseded;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::contact::ContactListId;
    use std::sync::Arc;
    use std::time::Duration;

    fn list(id: &str) -> ListKey {
        ListKey::default_account(ContactListId::parse(id).unwrap())
    }

    #[tokio::test]
    async fn a_closed_gate_holds_sends_until_the_reload_then_checks_the_revision() {
        let gates = Arc::new(Gates::new());
        let (a, b) = (list("a"), list("b"));
        gates.open(&a, Some("r1"));
        gates.open(&b, Some("r1"));
        assert_eq!(gates.admit(&a, "r1").await, Admit::Go);
        gates.close(&a);
        // Another list is not held.
        assert_eq!(gates.admit(&b, "r1").await, Admit::Go);
        let waiting = {
            let (gates, a) = (gates.clone(), a.clone());
            tokio::spawn(async move { gates.admit(&a, "r1").await })
        };
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!waiting.is_finished(), "a closed gate must hold the send");
        gates.open(&a, Some("r2"));
        assert_eq!(waiting.await.unwrap(), Admit::Superseded);
        assert_eq!(gates.admit(&a, "r2").await, Admit::Go);
        gates.open(&a, None);
        assert_eq!(gates.admit(&a, "r2").await, Admit::Superseded);
    }

    #[tokio::test]
    async fn a_list_without_a_gate_always_passes() {
        assert_eq!(Gates::new().admit(&list("x"), "r").await, Admit::Go);
    }
}
