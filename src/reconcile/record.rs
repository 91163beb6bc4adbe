//! Writing what happened: the status of a list's policies after a reconcile, what a manifest
//! load says about policies, and conditions set on many policies at once.

use std::collections::HashMap;

use super::{Acc, Context, ListResult};
use crate::condition::{Condition, Ready, Reason};
use crate::contact::{AccountName, ContactKind, ListKey};
use crate::hold::Hold;
use crate::manifest::{Manifests, Policy};
use crate::plan::ListPlan;
use crate::store::{
    Accepted, Held, Keep, Keeper, ListSync, LoadRecord, LoadSummary, PolicyCounts, PolicyUpdate,
    StatusWrite, Store, StoreError,
};

/// A policy's row with `condition` and nothing else changed (its revision included: the
/// callers that record a sync set it).
fn row(p: &Policy, condition: Condition) -> PolicyUpdate<'_> {
    PolicyUpdate {
        name: p.name.as_str(),
        list: Some(&p.list),
        file: &p.origin.file,
        document: p.origin.document,
        revision: None,
        attempt: None,
        success: None,
        counts: None,
        record_error: false,
        condition,
    }
}

/// Each policy's condition and counts, and the list's row, as one write.
pub(super) fn status_write<'a>(
    ctx: &'a Context,
    policies: &'a [Policy],
    plan: &'a ListPlan,
    acc: &Acc,
    now: i64,
    contact_count: Option<u64>,
) -> StatusWrite<'a> {
    let o = &acc.outcome;
    let list_condition = o.condition();
    let ok = o.result.is_ok();
    // Contacts each policy had to assert in this sync (resyncs included), in one pass.
    let mut asserted_by: HashMap<u32, usize> = HashMap::new();
    for set in plan
        .emails
        .iter()
        .map(|a| &a.policies)
        .chain(plan.contact_ids.iter().map(|a| &a.policies))
    {
        for p in set {
            *asserted_by.entry(*p).or_default() += 1;
        }
    }
    let mut updates = Vec::with_capacity(plan.per_policy.len() + plan.suspended.len());
    for &(pi, _) in &plan.per_policy {
        let p = &policies[pi];
        let a = acc
            .per_policy
            .get(&(pi as u32))
            .cloned()
            .unwrap_or_default();
        let asserted = asserted_by.get(&(pi as u32)).copied().unwrap_or(0);
        let counts = PolicyCounts {
            removed: a.removed.round() as u64,
            not_in_list: a.not_in_list.round() as u64,
            failed: a.failed,
            pending: (asserted as u64).saturating_sub(a.confirmed + a.failed),
        };
        // A list-level result applies to each policy; a per-policy condition refines it:
        // in a partly failed list, a policy with nothing failed or pending has converged.
        let own_converged =
            matches!(o.result, ListResult::PartiallyFailed) && a.failed == 0 && counts.pending == 0;
        let condition = if ok || own_converged {
            Condition::new(
                Ready::True,
                Reason::Converged,
                format!(
                    "all contacts confirmed absent (this sync: {} removed, {} not in list)",
                    counts.removed, counts.not_in_list
                ),
            )
        } else {
            list_condition.clone()
        };
        let rev = ctx.source_revision.as_deref().unwrap_or(&p.revision);
        let converged = condition.reason == Reason::Converged;
        updates.push(PolicyUpdate {
            revision: Some(&p.revision),
            attempt: Some((now, rev)),
            success: converged.then_some((now, rev)),
            counts: Some(counts),
            record_error: !converged,
            ..row(p, condition)
        });
    }
    for &pi in &plan.suspended {
        let p = &policies[pi];
        updates.push(PolicyUpdate {
            revision: Some(&p.revision),
            ..row(
                p,
                Condition::new(
                    Ready::False,
                    Reason::Suspended,
                    "spec.suspend is true: loaded and validated, never applied",
                ),
            )
        });
    }
    StatusWrite {
        policies: updates,
        list: Some((
            &plan.list,
            ListSync {
                attempt_at: now,
                success: ok,
                error: (!ok).then(|| list_condition.message.clone()),
                strategy: o.strategy.clone(),
                strategy_reason: o.strategy_reason.clone(),
                requests: o.requests,
                rate_limited: o.rate_limited,
                contact_count,
            },
        )),
    }
}

/// Everything `apply` does before its first request: load and plan against the store (its
/// records, and its baselines for the forget threshold), then record what the load says
/// about policies. The daemon does the same per reload.
pub fn prepare(
    store: &Store,
    path: &std::path::Path,
    options: crate::plan::PlanOptions,
) -> Result<(Manifests, crate::plan::Plan), StoreError> {
    let baselines = store.baselines()?;
    let (manifests, plan) = crate::load::load_and_plan(
        path,
        options,
        &baselines,
        |m| crate::feed::join_event_contacts(m, store),
        |l| store.records(l),
    )?;
    record_manifests(store, &manifests, &plan.holds, crate::clock::now_unix())?;
    Ok((manifests, plan))
}

/// Records what a load says about policies, before any API call, in one transaction:
/// invalid policies get `ManifestInvalid`, policies of a file that no longer parses too,
/// policies whose manifest is gone are dropped, held policies get `ThresholdExceeded` and
/// the others their new baseline; and (only after a load without errors, so a broken
/// manifest never makes listwarden forget and later re-send) contacts no policy asks for
/// are forgotten, except on the lists of held policies.
pub fn record_manifests(
    store: &Store,
    manifests: &Manifests,
    holds: &[Hold],
    now: i64,
) -> Result<(), StoreError> {
    record_manifests_since(store, manifests, holds, now, None)
}

/// Like [`record_manifests`], knowing the policies of the load before (the daemon's): a list
/// whose policies only gained contacts since then has nothing to forget, and is not read.
pub fn record_manifests_since(
    store: &Store,
    manifests: &Manifests,
    holds: &[Hold],
    now: i64,
    previous: Option<&[Policy]>,
) -> Result<(), StoreError> {
    let mut load = LoadRecord {
        summary: LoadSummary {
            at: now,
            policies: manifests.policies.len() as u64,
            invalid: manifests.invalid.len() as u64,
            errors: manifests.errors().count() as u64,
            first_error: manifests.errors().next().map(ToString::to_string),
        },
        now,
        accounts: manifests
            .accounts
            .as_ref()
            .map(|a| a.iter().map(AccountName::as_str).collect()),
        ..LoadRecord::default()
    };
    for inv in &manifests.invalid {
        if let Some(name) = &inv.name {
            load.policies.push(PolicyUpdate {
                name,
                // Its list as written may not even parse: the row keeps the last valid one.
                list: None,
                file: &inv.origin.file,
                document: inv.origin.document,
                revision: None,
                attempt: None,
                success: None,
                counts: None,
                condition: Condition::new(
                    Ready::False,
                    Reason::ManifestInvalid,
                    inv.reason.clone(),
                ),
                record_error: true,
            });
        }
    }
    for file in manifests.files.iter().filter(|f| !f.parsed) {
        let first = manifests
            .errors()
            .find(|d| d.file == file.path)
            .map(|d| d.to_string())
            .unwrap_or_else(|| "the manifest cannot be parsed".into());
        load.unparsed.push((
            file.path.as_path(),
            Condition::new(Ready::False, Reason::ManifestInvalid, first),
        ));
    }
    let held_names: HashMap<&str, &Hold> = holds
        .iter()
        .filter(|h| !h.gone)
        .map(|h| (h.policy.as_str(), h))
        .collect();
    // Policies gone from the manifests but held: their rows and their lists' contacts stay.
    let gone_lists: Vec<ListKey> = holds
        .iter()
        .filter(|h| h.gone)
        .filter_map(|h| h.list.clone())
        .collect();
    for h in holds.iter().filter(|h| h.gone) {
        load.gone.push((
            h.policy.as_str(),
            Condition::new(Ready::False, Reason::ThresholdExceeded, h.to_string()),
        ));
        load.held.push(Held {
            name: h.policy.as_str(),
            revision: &h.revision,
            contacts: 0,
        });
    }
    load.spare.extend(gone_lists.iter());
    for p in &manifests.policies {
        match held_names.get(p.name.as_str()) {
            Some(hold) => {
                load.held.push(Held {
                    name: p.name.as_str(),
                    revision: &hold.revision,
                    contacts: hold.after,
                });
                load.policies.push(PolicyUpdate {
                    record_error: true,
                    ..row(
                        p,
                        Condition::new(Ready::False, Reason::ThresholdExceeded, hold.to_string()),
                    )
                });
                load.spare.push(&p.list);
            }
            None => load.accepted.push(Accepted {
                name: p.name.as_str(),
                list: &p.list,
                file: &p.origin.file,
                document: p.origin.document,
                contacts: p.declared_contacts() as u64,
                revision: &p.revision,
            }),
        }
    }
    // A load that found no policy at all is far more often a missing mount or a failed
    // checkout than an intent: forgetting everything would re-send everything later.
    let keepers = keepers(&manifests.policies, previous);
    // Only a load without errors says what is gone: a manifest that could not be read (or a
    // directory that could not be listed) may still hold policies, which must stay listed
    // and keep their contacts until it can be read again.
    if manifests.policies.is_empty() {
        tracing::warn!("no policy loaded: nothing is forgotten from the state store");
    } else if !manifests.has_errors() {
        load.keep = Some(
            manifests
                .policies
                .iter()
                .map(|p| p.name.as_str())
                .chain(manifests.invalid.iter().filter_map(|p| p.name.as_deref()))
                .chain(holds.iter().filter(|h| h.gone).map(|h| h.policy.as_str()))
                .collect(),
        );
        load.forget = Some(
            keepers
                .iter()
                .map(|(list, keep, revision, grown_from)| Keeper {
                    list,
                    keep: keep.as_ref(),
                    revision: Some(revision),
                    grown_from: grown_from.as_deref(),
                })
                .collect(),
        );
    }
    let forgotten = store.record_load(&load)?;
    if forgotten > 0 {
        tracing::info!(
            forgotten,
            "forgot contacts that no policy asks for any more"
        );
    }
    Ok(())
}

/// A list, who its policies ask for, the digest of that, and the digest before if it only grew.
type ListKeeper<'p> = (&'p ListKey, Box<Keep<'p>>, String, Option<String>);

/// Per list, who a policy of it still asks for, the digest of that keep-set, and (given the
/// policies of the load before) the digest the list had then if its keep-set only grew since.
fn keepers<'p>(policies: &'p [Policy], previous: Option<&[Policy]>) -> Vec<ListKeeper<'p>> {
    let by_list = |policies: &'p [Policy]| {
        let mut by_list: std::collections::BTreeMap<&'p ListKey, Vec<&'p Policy>> =
            std::collections::BTreeMap::new();
        for p in policies {
            by_list.entry(&p.list).or_default().push(p);
        }
        by_list
    };
    let before: HashMap<&ListKey, Vec<&Policy>> = previous
        .map(|old| {
            let mut m: HashMap<&ListKey, Vec<&Policy>> = HashMap::new();
            for p in old {
                m.entry(&p.list).or_default().push(p);
            }
            m
        })
        .unwrap_or_default();
    by_list(policies)
        .into_iter()
        .map(|(list, ps)| {
            let revision = keep_revision(&ps);
            let grown_from = before
                .get(list)
                .filter(|old| only_grew(old, &ps))
                .map(|old| keep_revision(old));
            let keep: Box<Keep<'_>> = Box::new(Walk::new(ps).into_keep());
            (list, keep, revision, grown_from)
        })
        .collect()
}

/// The digest of what a list's policies ask for: equal digests, equal keep-sets.
fn keep_revision(policies: &[&Policy]) -> String {
    let mut revisions: Vec<String> = policies
        .iter()
        .map(|p| format!("{}={}", p.name, p.revision))
        .collect();
    revisions.sort();
    crate::manifest::digest(revisions.join("\n").as_bytes())
}

/// True when every policy of `old` is still in `new` and asks for all it asked for then.
fn only_grew(old: &[&Policy], new: &[&Policy]) -> bool {
    let new: HashMap<&str, &Policy> = new.iter().map(|p| (p.name.as_str(), *p)).collect();
    old.iter().all(|o| {
        new.get(o.name.as_str()).is_some_and(|n| {
            contains_all(&n.emails, &o.emails) && contains_all(&n.contact_ids, &o.contact_ids)
        })
    })
}

/// Whether sorted, duplicate-free `big` holds every entry of sorted `small`: one walk.
fn contains_all<T: Ord>(big: &std::sync::Arc<[T]>, small: &std::sync::Arc<[T]>) -> bool {
    if std::sync::Arc::ptr_eq(big, small) {
        return true;
    }
    let mut rest = big.iter();
    small
        .iter()
        .all(|s| rest.by_ref().find(|b| *b >= s) == Some(s))
}

/// Who the policies of a list ask for, answered for contacts that come in sorted order (as
/// the store reads a list): a cursor per policy and kind moves forward only, so a list of a
/// million rows costs a comparison or two per policy and row, where a binary search per
/// policy cost twenty. A contact out of order moves the cursors back by a binary search.
struct Walk<'a> {
    policies: Vec<&'a Policy>,
    emails: Vec<std::cell::Cell<usize>>,
    contact_ids: Vec<std::cell::Cell<usize>>,
}

impl<'a> Walk<'a> {
    fn new(policies: Vec<&'a Policy>) -> Walk<'a> {
        let n = policies.len();
        Walk {
            policies,
            emails: (0..n).map(|_| std::cell::Cell::new(0)).collect(),
            contact_ids: (0..n).map(|_| std::cell::Cell::new(0)).collect(),
        }
    }

    fn into_keep(self) -> impl Fn(ContactKind, &str) -> bool + 'a {
        move |kind, contact| {
            self.policies.iter().enumerate().any(|(i, p)| match kind {
                ContactKind::Email => seek(&p.emails, &self.emails[i], contact),
                ContactKind::ContactId => seek(&p.contact_ids, &self.contact_ids[i], contact),
            })
        }
    }
}

/// Whether sorted `set` holds `contact`, moving `cursor` to the first entry not below it.
fn seek<K: AsRef<str>>(set: &[K], cursor: &std::cell::Cell<usize>, contact: &str) -> bool {
    let mut at = cursor.get();
    if at > 0 && set.get(at - 1).is_some_and(|k| k.as_ref() >= contact) {
        at = set.partition_point(|k| k.as_ref() < contact);
    }
    while set.get(at).is_some_and(|k| k.as_ref() < contact) {
        at += 1;
    }
    cursor.set(at);
    set.get(at).is_some_and(|k| k.as_ref() == contact)
}

/// Marks `Unauthorized` the policies a refused key stopped: those of `policies` that are
/// enforced (not suspended, not `held` by the forget threshold, whose own condition says
/// more). `apply` and the daemon both call this.
pub fn mark_unauthorized<'a>(
    store: &Store,
    policies: impl Iterator<Item = &'a Policy>,
    held: &std::collections::HashSet<&str>,
    message: &str,
    source_revision: Option<&str>,
    now: i64,
) {
    let condition = Condition::new(Ready::False, Reason::Unauthorized, message);
    mark_policies(
        store,
        policies.filter(|p| !p.suspend && !held.contains(p.name.as_str())),
        &condition,
        source_revision,
        now,
    );
}

/// Sets `condition` on each of `policies` (e.g. `Unauthorized` on every policy a refused key
/// stopped, not only the one whose request got the 401), in one transaction.
pub fn mark_policies<'a>(
    store: &Store,
    policies: impl Iterator<Item = &'a Policy>,
    condition: &Condition,
    source_revision: Option<&str>,
    now: i64,
) {
    let updates: Vec<PolicyUpdate<'_>> = policies
        .map(|p| PolicyUpdate {
            revision: Some(&p.revision),
            attempt: Some((now, source_revision.unwrap_or(&p.revision))),
            record_error: true,
            ..row(p, condition.clone())
        })
        .collect();
    if let Err(e) = store.write_policies(&updates, now) {
        tracing::error!(error = %e, "cannot write status");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::contact::ContactListId;
    use proptest::prelude::*;

    proptest! {
        /// The walk answers as a plain set lookup, for contacts in any order.
        #[test]
        fn the_forward_walk_answers_like_a_set(
            set in proptest::collection::btree_set("[a-e]{1,3}", 0..30),
            asked in proptest::collection::vec("[a-e]{1,3}", 0..40),
            sorted_first in any::<bool>(),
        ) {
            let sorted: Vec<String> = set.iter().cloned().collect();
            let cursor = std::cell::Cell::new(0);
            let mut asked = asked;
            if sorted_first {
                asked.sort();
            }
            for a in &asked {
                prop_assert_eq!(seek(&sorted, &cursor, a), set.contains(a), "{}", a);
            }
        }
    }
    use crate::manifest::{API_VERSION, KIND, load};

    fn policy(name: &str, list: &str) -> String {
        format!(
            "apiVersion: {API_VERSION}\nkind: {KIND}\nmetadata: {{name: {name}}}\nspec: {{contactListId: {list}, exclude: {{emails: [a@example.com]}}}}\n"
        )
    }

    #[test]
    fn policies_of_a_manifest_that_became_a_dangling_symlink_stay_listed_as_invalid() {
        let dir = tempfile::tempdir().unwrap();
        let m = dir.path().join("m");
        std::fs::create_dir_all(&m).unwrap();
        std::fs::write(m.join("ok.yaml"), policy("ok", "list-a")).unwrap();
        // Invalid, so that recording the load stores it.
        std::fs::write(m.join("x.yaml"), policy("from-x", "GLOBAL_CONTACT_LIST")).unwrap();
        let store = Store::open(&dir.path().join("state.db"), "test").unwrap();
        record_manifests(&store, &load(&m), &[], 1).unwrap();

        std::fs::remove_file(m.join("x.yaml")).unwrap();
        std::os::unix::fs::symlink("gone.yaml", m.join("x.yaml")).unwrap();
        let loaded = load(&m);
        assert_eq!(loaded.policies.len(), 1);
        assert!(
            loaded
                .files
                .iter()
                .any(|f| f.path == m.join("x.yaml") && !f.parsed),
            "{:?}",
            loaded.files
        );
        record_manifests(&store, &loaded, &[], 2).unwrap();
        let from_x = store
            .policies()
            .unwrap()
            .into_iter()
            .find(|p| p.name == "from-x")
            .expect("a policy of an unreadable manifest is not forgotten");
        assert_eq!(
            from_x.condition.reason,
            crate::condition::Reason::ManifestInvalid
        );
        assert!(
            from_x
                .condition
                .message
                .contains("a symlink to gone.yaml, which does not exist"),
            "{}",
            from_x.condition.message
        );
    }

    proptest! {
        #[test]
        fn contains_all_answers_like_a_subset_check(
            big in proptest::collection::btree_set(0u16..60, 0..40),
            small in proptest::collection::btree_set(0u16..60, 0..20),
        ) {
            let b: std::sync::Arc<[u16]> = big.iter().copied().collect();
            let s: std::sync::Arc<[u16]> = small.iter().copied().collect();
            prop_assert_eq!(contains_all(&b, &s), small.is_subset(&big));
        }
    }

    fn emails(name: &str, list: &str, emails: &[&str]) -> String {
        format!(
            "apiVersion: {API_VERSION}\nkind: {KIND}\nmetadata: {{name: {name}}}\nspec: {{contactListId: {list}, exclude: {{emails: [{}]}}}}\n",
            emails.join(", ")
        )
    }

    #[test]
    fn a_list_that_only_grew_forgets_nothing_and_a_later_shrink_or_reset_still_forgets() {
        let dir = tempfile::tempdir().unwrap();
        let m = dir.path().join("m");
        std::fs::create_dir_all(&m).unwrap();
        let store = Store::open(&dir.path().join("state.db"), "test").unwrap();
        let list = ListKey::default_account(ContactListId::parse("l1").unwrap());
        let confirm = |contacts: &[&str]| {
            let outcomes: Vec<(&str, crate::store::ContactOutcome)> = contacts
                .iter()
                .map(|c| (*c, crate::store::ContactOutcome::Confirmed))
                .collect();
            store
                .record_batch(&list, crate::contact::ContactKind::Email, &outcomes, 1)
                .unwrap();
        };
        let stored = || -> Vec<String> {
            store
                .records(&list)
                .unwrap()
                .emails
                .iter()
                .map(|(c, _)| c.to_string())
                .collect()
        };
        let write = |e: &[&str]| {
            std::fs::write(m.join("p.yaml"), emails("p", "l1", e)).unwrap();
            load(&m)
        };
        let v1 = write(&["a@x.com", "b@x.com"]);
        record_manifests(&store, &v1, &[], 1).unwrap();
        confirm(&["a@x.com", "b@x.com"]);
        let v2 = write(&["a@x.com", "b@x.com", "c@x.com"]);
        record_manifests_since(&store, &v2, &[], 2, Some(&v1.policies)).unwrap();
        assert_eq!(stored(), ["a@x.com", "b@x.com"]);
        // It shrank: read and forgotten.
        let v3 = write(&["a@x.com", "c@x.com"]);
        record_manifests_since(&store, &v3, &[], 3, Some(&v2.policies)).unwrap();
        assert_eq!(stored(), ["a@x.com"]);
        // A reconcile from an older load recorded a contact the manifests dropped since, and
        // the list was marked to be read again: growing does not skip that read.
        confirm(&["z@x.com"]);
        store.reset_forget(&list).unwrap();
        let v4 = write(&["a@x.com", "c@x.com", "d@x.com"]);
        record_manifests_since(&store, &v4, &[], 4, Some(&v3.policies)).unwrap();
        assert_eq!(stored(), ["a@x.com"]);
    }
}
