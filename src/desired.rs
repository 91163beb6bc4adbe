//! Valid policies -> the desired state of each contact list: the union of what its active
//! policies exclude, each contact keeping the policies that asked for it.
//!
//! Suspended policies are listed with their list but contribute nothing: they are loaded and
//! validated, never applied. Held policies (a change waiting for approval, see
//! [`crate::hold`]) likewise contribute nothing until the change is approved.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use smallvec::SmallVec;

use crate::contact::{ContactId, Email, ListKey};
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
    pub list: ListKey,
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
        DesiredState::build_reusing(policies, held, &DesiredState::default(), &[])
    }

    /// Like [`DesiredState::build_holding`], taking from `previous` (built from
    /// `previous_policies`) each list whose policies (the same ones, at the same places in
    /// `policies`, with the same revisions and settings) are unchanged: the daemon's reload
    /// after an edit of one file unions only the lists that file feeds. A list where only
    /// the contents of a few policies changed is updated from their differences instead of
    /// unioned again: with a million contacts on one list, an edit of one file costs a walk
    /// over the list, not a merge of a hundred sets.
    pub fn build_reusing(
        policies: &[Policy],
        held: &[bool],
        previous: &DesiredState,
        previous_policies: &[Policy],
    ) -> DesiredState {
        type Groups = (Vec<usize>, Vec<usize>, Vec<usize>);
        let mut by_list: BTreeMap<&ListKey, Groups> = BTreeMap::new();
        for (i, p) in policies.iter().enumerate() {
            let entry = by_list.entry(&p.list).or_default();
            if held.get(i).copied().unwrap_or(false) {
                entry.2.push(i);
            } else if p.suspend {
                entry.1.push(i);
            } else {
                entry.0.push(i);
            }
        }
        let before: HashMap<&ListKey, &Arc<DesiredList>> =
            previous.lists.iter().map(|l| (&l.list, l)).collect();
        // Each list's union on its own core: with a million contacts over ten lists, the
        // merge is most of a plan after the load.
        let groups: Vec<(&ListKey, Groups)> = by_list.into_iter().collect();
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
            let changed = before.get(list).and_then(|old| {
                changed_policies(old, active, suspended, held, policies, previous_policies)
            });
            let (emails, contact_ids) = match (changed, before.get(list)) {
                (Some(changed), Some(old)) => (
                    updated(
                        &old.emails,
                        &differences(&changed, previous_policies, policies, |p| &p.emails),
                    ),
                    updated(
                        &old.contact_ids,
                        &differences(&changed, previous_policies, policies, |p| &p.contact_ids),
                    ),
                ),
                _ => (
                    union(active.iter().map(|&i| (i as u32, &policies[i].emails[..]))),
                    union(
                        active
                            .iter()
                            .map(|&i| (i as u32, &policies[i].contact_ids[..])),
                    ),
                ),
            };
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

/// The active policies (indices) of a list whose contents changed since `old` was built,
/// when an update from their differences is sound and worth it: the same policies at the
/// same indices (names checked), the same suspended and held ones, and at most a quarter of
/// them changed. `None`: union the list again.
fn changed_policies(
    old: &DesiredList,
    active: &[usize],
    suspended: &[usize],
    held: &[usize],
    policies: &[Policy],
    previous_policies: &[Policy],
) -> Option<Vec<usize>> {
    if old.policies != active || old.suspended != suspended || old.held != held {
        return None;
    }
    let mut changed = Vec::new();
    for &i in active {
        let before = previous_policies.get(i)?;
        let now = &policies[i];
        if before.name != now.name || before.list != now.list {
            return None;
        }
        if before.revision != now.revision {
            changed.push(i);
        }
    }
    (changed.len() * 4 <= active.len().max(1)).then_some(changed)
}

/// (policy, its set before, its set now) for each of `changed`.
fn differences<'p, K>(
    changed: &[usize],
    previous_policies: &'p [Policy],
    policies: &'p [Policy],
    set: fn(&Policy) -> &Arc<[K]>,
) -> Vec<(u32, &'p [K], &'p [K])> {
    changed
        .iter()
        .map(|&i| {
            (
                i as u32,
                &set(&previous_policies[i])[..],
                &set(&policies[i])[..],
            )
        })
        .collect()
}

/// `old` members with the differences of the changed policies applied, given as (policy,
/// its sorted set before, its sorted set now): each contact a policy dropped loses that
/// policy (and goes when no policy is left), each contact it gained gets it. One walk over
/// `old` and the sorted differences.
fn updated<K: Ord + Clone>(old: &[Member<K>], changed: &[(u32, &[K], &[K])]) -> Vec<Member<K>> {
    // (contact, policy, gained?) for every difference, sorted by contact.
    let mut diffs: Vec<(&K, u32, bool)> = Vec::new();
    for &(i, before, now) in changed {
        let (mut b, mut n) = (before.iter().peekable(), now.iter().peekable());
        loop {
            match (b.peek(), n.peek()) {
                (Some(x), Some(y)) if x == y => {
                    b.next();
                    n.next();
                }
                (Some(x), Some(y)) if x < y => diffs.push((b.next().unwrap(), i, false)),
                (Some(_), Some(_)) | (None, Some(_)) => diffs.push((n.next().unwrap(), i, true)),
                (Some(_), None) => diffs.push((b.next().unwrap(), i, false)),
                (None, None) => break,
            }
        }
    }
    if diffs.is_empty() {
        return old.to_vec();
    }
    diffs.sort_by(|a, b| a.0.cmp(b.0).then(a.1.cmp(&b.1)));
    let mut out: Vec<Member<K>> = Vec::with_capacity(old.len() + diffs.len());
    let mut d = diffs.iter().peekable();
    for m in old {
        while let Some(&&(contact, policy, gained)) = d.peek()
            && contact < &m.contact
        {
            d.next();
            add_difference(&mut out, contact, policy, gained);
        }
        let mut member = m.clone();
        while let Some(&&(_, policy, gained)) = d.peek().filter(|(c, _, _)| *c == &m.contact) {
            d.next();
            apply_difference(&mut member.policies, policy, gained);
        }
        if !member.policies.is_empty() {
            out.push(member);
        }
    }
    for &(contact, policy, gained) in d {
        add_difference(&mut out, contact, policy, gained);
    }
    out
}

/// A difference for a contact the old members did not hold: it joins the last member when
/// that is the same contact (two policies gained it), or becomes a member when gained.
fn add_difference<K: Ord + Clone>(
    out: &mut Vec<Member<K>>,
    contact: &K,
    policy: u32,
    gained: bool,
) {
    match out.last_mut() {
        Some(last) if &last.contact == contact => {
            apply_difference(&mut last.policies, policy, gained)
        }
        _ if gained => out.push(Member {
            contact: contact.clone(),
            policies: SmallVec::from_slice(&[policy]),
        }),
        _ => {}
    }
}

/// Adds (`gained`) or removes `policy`, keeping the set sorted.
fn apply_difference(policies: &mut PolicySet, policy: u32, gained: bool) {
    match (policies.binary_search(&policy), gained) {
        (Err(at), true) => policies.insert(at, policy),
        (Ok(at), false) => {
            policies.remove(at);
        }
        _ => {}
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
    #[test]
    fn a_reload_that_changed_one_policy_gives_the_same_desired_state_as_a_full_build() {
        let dir = tempfile::tempdir().unwrap();
        let write = |name: &str, list: &str, emails: &str| {
            std::fs::write(
                dir.path().join(format!("{name}.yaml")),
                format!(
                    "apiVersion: listwarden.dev/v1\nkind: ListPolicy\nmetadata: {{name: {name}}}\n\
                     spec:\n  contactListId: {list}\n  exclude: {{emails: [{emails}]}}\n"
                ),
            )
            .unwrap();
        };
        for (i, name) in ["a", "b", "c", "d", "e"].iter().enumerate() {
            write(
                name,
                "l1",
                &format!("{name}@x.com, shared@x.com, n{i}@x.com"),
            );
        }
        write("z", "l2", "z@x.com");
        let v1 = crate::manifest::load(dir.path());
        let d1 = DesiredState::build(&v1.policies);
        // One policy of five on l1 changes: l1 is updated from the difference, l2 reused.
        write("c", "l1", "c@x.com, new@x.com, a@x.com");
        let v2 = crate::manifest::load(dir.path());
        let reused = DesiredState::build_reusing(&v2.policies, &[], &d1, &v1.policies);
        let full = DesiredState::build(&v2.policies);
        for (r, f) in reused.lists.iter().zip(&full.lists) {
            assert_eq!(r.emails, f.emails, "{}", f.list);
            assert_eq!(r.revision, f.revision);
        }
        assert!(Arc::ptr_eq(&reused.lists[1], &d1.lists[1]), "l2 is reused");
    }

    use proptest::prelude::*;
    use std::collections::{BTreeSet, HashSet};

    proptest! {
        /// Updating a union from the differences of some of its sets gives the union of the
        /// new sets, policies and all.
        #[test]
        fn an_update_from_differences_equals_a_union_of_the_new_sets(
            before in proptest::collection::vec(proptest::collection::btree_set(0u16..200, 0..50), 1..6),
            after in proptest::collection::vec(proptest::collection::btree_set(0u16..200, 0..50), 1..6),
            change in proptest::collection::vec(any::<bool>(), 6),
        ) {
            let n = before.len().min(after.len());
            let old_sets: Vec<Vec<u16>> = before[..n].iter().map(|s| s.iter().copied().collect()).collect();
            let new_sets: Vec<Vec<u16>> = (0..n)
                .map(|i| if change[i] { after[i].iter().copied().collect() } else { old_sets[i].clone() })
                .collect();
            let old = union(old_sets.iter().enumerate().map(|(i, s)| (i as u32, &s[..])));
            let changed: Vec<(u32, &[u16], &[u16])> = (0..n)
                .filter(|&i| change[i])
                .map(|i| (i as u32, &old_sets[i][..], &new_sets[i][..]))
                .collect();
            let want = union(new_sets.iter().enumerate().map(|(i, s)| (i as u32, &s[..])));
            prop_assert_eq!(updated(&old, &changed), want);
        }

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
