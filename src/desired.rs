//! Valid policies -> the desired state of each contact list: the union of what its active
//! policies exclude, each contact keeping the policies that asked for it.
//!
//! Suspended policies are listed with their list but contribute nothing: they are loaded and
//! validated, never applied. Held policies (a change waiting for approval, see
//! [`crate::hold`]) likewise contribute nothing until the change is approved.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use smallvec::SmallVec;

use crate::contact::{ContactId, ContactListId, Email};
use crate::manifest::Policy;

/// Indices into the policy slice the desired state was built from. Most contacts are asked
/// for by one or two policies, so they stay inline.
pub type PolicySet = SmallVec<[u32; 2]>;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Member<K> {
    pub contact: K,
    pub policies: PolicySet,
}

#[derive(Clone, Debug)]
pub struct DesiredList {
    pub list: ContactListId,
    /// Active policies targeting this list (indices into the policy slice).
    pub policies: Vec<usize>,
    /// Suspended policies targeting this list.
    pub suspended: Vec<usize>,
    /// Policies of this list whose load is held by the forget threshold.
    pub held: Vec<usize>,
    /// Sorted by address, one entry per address.
    pub emails: Vec<Member<Email>>,
    /// Sorted by id, one entry per id.
    pub contact_ids: Vec<Member<ContactId>>,
    /// Digest of the active policies' revisions: changes when the desired set changes.
    pub revision: String,
}

impl DesiredList {
    pub fn len(&self) -> usize {
        self.emails.len() + self.contact_ids.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The desired state of every list named by at least one valid policy, sorted by list id.
#[derive(Clone, Debug, Default)]
pub struct DesiredState {
    /// Shared: a plan and a reconcile keep a list's desired set without copying it.
    pub lists: Vec<std::sync::Arc<DesiredList>>,
}

impl DesiredState {
    pub fn build(policies: &[Policy]) -> DesiredState {
        DesiredState::build_holding(policies, &[])
    }

    /// Like [`DesiredState::build`], with `held[i]` true for each policy whose load is held.
    pub fn build_holding(policies: &[Policy], held: &[bool]) -> DesiredState {
        DesiredState::build_reusing(policies, held, &DesiredState::default())
    }

    /// Like [`DesiredState::build_holding`], taking from `previous` each list whose policies
    /// (the same ones, at the same places in `policies`, with the same revisions and
    /// settings) are unchanged: the daemon's reload after an edit of one file unions only
    /// the lists that file feeds.
    pub fn build_reusing(
        policies: &[Policy],
        held: &[bool],
        previous: &DesiredState,
    ) -> DesiredState {
        type Groups = (Vec<usize>, Vec<usize>, Vec<usize>);
        let mut by_list: BTreeMap<&ContactListId, Groups> = BTreeMap::new();
        for (i, p) in policies.iter().enumerate() {
            let entry = by_list.entry(&p.contact_list_id).or_default();
            if held.get(i).copied().unwrap_or(false) {
                entry.2.push(i);
            } else if p.suspend {
                entry.1.push(i);
            } else {
                entry.0.push(i);
            }
        }
        let before: HashMap<&ContactListId, &Arc<DesiredList>> =
            previous.lists.iter().map(|l| (&l.list, l)).collect();
        // Each list's union on its own core: with a million contacts over ten lists, the
        // merge is most of a plan after the load.
        let groups: Vec<(&ContactListId, Groups)> = by_list.into_iter().collect();
        let lists = crate::parallel::map(&groups, |(list, (active, suspended, held))| {
            // Settings count too: raising a threshold to unblock a refused list, or switching
            // strategy, must make the daemon reconcile it now.
            let mut text = String::new();
            for &i in active.iter().chain(suspended).chain(held) {
                let p = &policies[i];
                text.push_str(&format!(
                    "{}={} suspend={} held={} max={:?} forget={:?} strategy={:?}\n",
                    p.name,
                    p.revision,
                    p.suspend,
                    held.contains(&i),
                    p.max_removals_per_sync,
                    p.max_forget_percent,
                    p.strategy
                ));
            }
            let revision = crate::manifest::digest(text.as_bytes());
            // Members name their policies by index: a list is reused only when its policies
            // sit at the same indices, not merely when its revision is the same.
            if let Some(old) = before.get(list)
                && old.revision == revision
                && old.policies == *active
                && old.suspended == *suspended
                && old.held == *held
            {
                return Arc::clone(old);
            }
            let emails = union(active.iter().map(|&i| (i as u32, &policies[i].emails[..])));
            let contact_ids = union(
                active
                    .iter()
                    .map(|&i| (i as u32, &policies[i].contact_ids[..])),
            );
            Arc::new(DesiredList {
                list: (*list).clone(),
                policies: active.clone(),
                suspended: suspended.clone(),
                held: held.clone(),
                emails,
                contact_ids,
                revision,
            })
        });
        DesiredState { lists }
    }
}

/// Unions sorted, duplicate-free sets, keeping for each contact the policies that hold it.
/// A k-way merge: each set is already sorted, so a heap of the k heads costs `log k`
/// comparisons per contact, where sorting every (contact, policy) pair again cost `log n`.
/// The contacts themselves are shared, never copied.
fn union<'a, K: Ord + Clone + 'a>(sets: impl Iterator<Item = (u32, &'a [K])>) -> Vec<Member<K>> {
    use std::cmp::Reverse;
    use std::collections::BinaryHeap;
    let sets: Vec<(u32, &[K])> = sets.filter(|(_, s)| !s.is_empty()).collect();
    if let [(policy, set)] = sets.as_slice() {
        // One policy: already sorted and unique.
        return set
            .iter()
            .map(|k| Member {
                contact: k.clone(),
                policies: SmallVec::from_slice(&[*policy]),
            })
            .collect();
    }
    let total: usize = sets.iter().map(|(_, s)| s.len()).sum();
    let mut out: Vec<Member<K>> = Vec::with_capacity(total);
    // (head, policy, index of the set, position of the head in it); ties between equal
    // contacts pop in policy order, so each contact's policies come out sorted.
    let mut heads: BinaryHeap<Reverse<(&K, u32, usize, usize)>> = sets
        .iter()
        .enumerate()
        .map(|(i, (policy, set))| Reverse((&set[0], *policy, i, 0)))
        .collect();
    // The head is replaced in place (one sift down) rather than popped and pushed again.
    while let Some(mut head) = heads.peek_mut() {
        let Reverse((contact, policy, i, pos)) = *head;
        match out.last_mut() {
            Some(last) if &last.contact == contact => {
                if last.policies.last() != Some(&policy) {
                    last.policies.push(policy);
                }
            }
            _ => out.push(Member {
                contact: contact.clone(),
                policies: SmallVec::from_slice(&[policy]),
            }),
        }
        let set = sets[i].1;
        if pos + 1 < set.len() {
            *head = Reverse((&set[pos + 1], policy, i, pos + 1));
        } else {
            std::collections::binary_heap::PeekMut::pop(head);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn list_revision(threshold: &str) -> String {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("p.yaml"),
            format!(
                "apiVersion: listwarden.dev/v1\nkind: ListPolicy\nmetadata: {{name: p}}\n\
                 spec:\n  contactListId: l1\n{threshold}  exclude: {{emails: [a@example.com]}}\n"
            ),
        )
        .unwrap();
        let m = crate::manifest::load(dir.path());
        assert!(!m.has_errors(), "{:?}", m.diagnostics);
        DesiredState::build(&m.policies).lists[0].revision.clone()
    }

    #[test]
    fn a_settings_change_changes_the_list_revision() {
        // The daemon reconciles a list when its revision changes: raising a threshold to
        // unblock a refused list must count as a change.
        let none = list_revision("");
        let some = list_revision("  maxRemovalsPerSync: 10\n");
        let more = list_revision("  maxRemovalsPerSync: 20\n");
        assert_ne!(none, some);
        assert_ne!(some, more);
        assert_eq!(some, list_revision("  maxRemovalsPerSync: 10\n"));
    }
    use proptest::prelude::*;
    use std::collections::{BTreeSet, HashSet};

    proptest! {
        #[test]
        fn union_keeps_every_contact_once_with_all_its_policies(
            sets in proptest::collection::vec(proptest::collection::btree_set(0u16..300, 0..60), 0..6)
        ) {
            let sorted: Vec<Vec<u16>> = sets.iter().map(|s| s.iter().copied().collect()).collect();
            let got = union(sorted.iter().enumerate().map(|(i, s)| (i as u32, &s[..])));
            let expected: BTreeSet<u16> = sets.iter().flatten().copied().collect();
            let got_keys: Vec<u16> = got.iter().map(|m| m.contact).collect();
            prop_assert_eq!(got_keys, expected.iter().copied().collect::<Vec<_>>());
            for m in &got {
                let want: HashSet<u32> = sets.iter().enumerate()
                    .filter(|(_, s)| s.contains(&m.contact)).map(|(i, _)| i as u32).collect();
                let have: HashSet<u32> = m.policies.iter().copied().collect();
                prop_assert_eq!(have, want);
            }
        }
    }
}
