//! The forget threshold: a load in which a policy loses more than a set share of its
//! contacts is held until a person approves it.
//!
//! A suppression export cut short (a failed download, a half-written file, a bad query) looks
//! exactly like a deliberate shrink. Applied, it would forget confirmed contacts and stop
//! suppressing them. So, like octoDNS's update thresholds, a policy whose contact count drops
//! by more than `maxForgetPercent` (default 50) since its last accepted load is *held*:
//! nothing is sent for it, nothing of its list is forgotten, and its condition is
//! `ThresholdExceeded`, naming the shrink. `listwarden approve POLICY` (or raising the
//! threshold in the manifest, the GitOps way) lets that exact change through.
//!
//! A policy that is gone from the manifests (its file deleted, or the policy renamed) has
//! lost all its contacts: it is held the same way, as long as it had any, so that a deleted
//! file or a partial checkout does not silently end the suppression of its contacts. Only a
//! load without errors can say a policy is gone (a file that cannot be read may still hold
//! it).
//!
//! Pure: the caller passes the baselines the store keeps.

use std::collections::HashMap;

use serde::Serialize;

use crate::contact::ListKey;
use crate::human::thousands;
use crate::manifest::{Manifests, Policy};
use crate::store::Baseline;

/// Share of its contacts (in percent) a policy may lose in one load without approval.
pub const DEFAULT_MAX_FORGET_PERCENT: u8 = 50;

/// The revision a held, gone policy is approved by.
pub const GONE: &str = "gone";

/// A policy's change held back by the forget threshold.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Hold {
    pub policy: String,
    /// Contacts at the last accepted load.
    pub before: u64,
    /// Contacts now.
    pub after: u64,
    pub threshold: u8,
    /// The policy's revision now (or [`GONE`]): what an approval lets through.
    pub revision: String,
    /// The policy is no longer in the manifests.
    pub gone: bool,
    /// The list it targets (for a gone policy, the one it targeted).
    pub list: Option<ListKey>,
}

impl Hold {
    /// The share lost, rounded down (the comparison itself is exact).
    pub fn percent(&self) -> u64 {
        (self.before - self.after) * 100 / self.before.max(1)
    }
}

impl std::fmt::Display for Hold {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.gone {
            return write!(
                f,
                "policy {} is no longer in the manifests (it named {} contacts of list {}): a \
                 deleted file or a partial checkout? Nothing of that list is forgotten until \
                 you check and run `listwarden approve {}`",
                self.policy,
                thousands(self.before as usize),
                self.list
                    .as_ref()
                    .map_or_else(|| "?".to_string(), ListKey::to_string),
                self.policy
            );
        }
        write!(
            f,
            "policy {} would forget {} of its {} contacts ({}%), more than its maxForgetPercent \
             of {} (a truncated export?); nothing is sent or forgotten for it until you check \
             the change and run `listwarden approve {} --revision {}` (or raise \
             spec.maxForgetPercent)",
            self.policy,
            thousands((self.before - self.after) as usize),
            thousands(self.before as usize),
            self.percent(),
            self.threshold,
            self.policy,
            self.revision
        )
    }
}

/// What the forget threshold holds in a load.
#[derive(Clone, Debug, Default)]
pub struct Holds {
    /// The hold of each loaded policy, in the order of `Manifests::policies`.
    pub of_policies: Vec<Option<Hold>>,
    /// Policies the store knows that are gone from the manifests.
    pub gone: Vec<Hold>,
}

impl Holds {
    /// `true` for each loaded policy that is held.
    pub fn mask(&self) -> Vec<bool> {
        self.of_policies.iter().map(Option::is_some).collect()
    }

    /// Every hold, loaded policies first.
    pub fn all(self) -> Vec<Hold> {
        self.of_policies
            .into_iter()
            .flatten()
            .chain(self.gone)
            .collect()
    }
}

/// The holds of a load. `force` (`apply --force`) lets every change through.
pub fn check(
    manifests: &Manifests,
    baselines: &HashMap<String, Baseline>,
    default_percent: u8,
    force: bool,
) -> Holds {
    let of_policies = check_policies(&manifests.policies, baselines, default_percent, force);
    let gone = if force || manifests.has_errors() || default_percent >= 100 {
        Vec::new()
    } else {
        let present: std::collections::HashSet<&str> = manifests
            .policies
            .iter()
            .map(|p| p.name.as_str())
            .chain(manifests.invalid.iter().filter_map(|p| p.name.as_deref()))
            .collect();
        let mut gone: Vec<Hold> = baselines
            .iter()
            .filter(|(name, _)| !present.contains(name.as_str()))
            .filter(|(_, b)| b.approved_revision.as_deref() != Some(GONE))
            // A policy of an account this load does not serve (a run without the config
            // file) is not gone: it is none of this load's business.
            .filter(|(_, b)| match (&manifests.accounts, &b.list) {
                (Some(served), Some(list)) => served.contains(&list.account),
                _ => true,
            })
            .filter_map(|(name, b)| {
                let before = b.contacts.filter(|&n| n > 0)?;
                Some(Hold {
                    policy: name.clone(),
                    before,
                    after: 0,
                    threshold: default_percent,
                    revision: GONE.to_string(),
                    gone: true,
                    list: b.list.clone(),
                })
            })
            .collect();
        gone.sort_by(|a, b| a.policy.cmp(&b.policy));
        gone
    };
    Holds { of_policies, gone }
}

/// The hold of each policy (same order as `policies`): `Some` when its load is held.
fn check_policies(
    policies: &[Policy],
    baselines: &HashMap<String, Baseline>,
    default_percent: u8,
    force: bool,
) -> Vec<Option<Hold>> {
    policies
        .iter()
        .map(|p| {
            if force {
                return None;
            }
            let base = baselines.get(p.name.as_str())?;
            let before = base.contacts?;
            let after = p.declared_contacts() as u64;
            let threshold = p.max_forget_percent.unwrap_or(default_percent).min(100);
            // lost / before > threshold / 100, in integers.
            let exceeded = after < before
                && u128::from(before - after) * 100 > u128::from(threshold) * u128::from(before);
            let approved = base.approved_revision.as_deref() == Some(p.revision.as_str());
            (exceeded && !approved).then(|| Hold {
                policy: p.name.to_string(),
                before,
                after,
                threshold,
                revision: p.revision.clone(),
                gone: false,
                list: Some(p.list.clone()),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policies(yaml_spec: &str, emails: usize) -> Vec<Policy> {
        let dir = tempfile::tempdir().unwrap();
        let list: String = (0..emails)
            .map(|i| format!("      - u{i}@example.com\n"))
            .collect();
        std::fs::write(
            dir.path().join("p.yaml"),
            format!(
                "apiVersion: listwarden.dev/v1\nkind: ListPolicy\nmetadata: {{name: p}}\n\
                 spec:\n  contactListId: l1\n{yaml_spec}  exclude:\n    emails:\n{list}"
            ),
        )
        .unwrap();
        let m = crate::manifest::load(dir.path());
        assert!(!m.has_errors(), "{:?}", m.diagnostics);
        m.policies
    }

    fn baseline(contacts: u64, approved: Option<&str>) -> HashMap<String, Baseline> {
        HashMap::from([(
            "p".to_string(),
            Baseline {
                contacts: Some(contacts),
                held_revision: None,
                approved_revision: approved.map(str::to_string),
                list: Some(ListKey::default_account(
                    crate::contact::ContactListId::parse("l1").unwrap(),
                )),
            },
        )])
    }

    #[test]
    fn losing_more_than_half_is_held_and_half_is_not() {
        let half = policies("", 50);
        assert_eq!(
            check_policies(&half, &baseline(100, None), 50, false),
            vec![None]
        );
        let less = policies("", 49);
        let hold = check_policies(&less, &baseline(100, None), 50, false)[0]
            .clone()
            .expect("held");
        assert_eq!((hold.before, hold.after, hold.percent()), (100, 49, 51));
        let text = hold.to_string();
        assert!(
            text.contains("would forget 51 of its 100 contacts (51%)"),
            "{text}"
        );
        assert!(text.contains("listwarden approve p"), "{text}");
    }

    #[test]
    fn a_policy_threshold_wins_and_an_approval_or_force_lets_the_change_through() {
        let strict = policies("  maxForgetPercent: 10\n", 80);
        assert!(check_policies(&strict, &baseline(100, None), 50, false)[0].is_some());
        let revision = strict[0].revision.clone();
        assert!(check_policies(&strict, &baseline(100, Some(&revision)), 50, false)[0].is_none());
        assert!(
            check_policies(&strict, &baseline(100, Some("sha256:other")), 50, false)[0].is_some()
        );
        assert!(check_policies(&strict, &baseline(100, None), 50, true)[0].is_none());
    }

    #[test]
    fn a_policy_never_loaded_before_or_growing_is_not_held() {
        let p = policies("", 1);
        assert_eq!(check_policies(&p, &HashMap::new(), 50, false), vec![None]);
        assert_eq!(check_policies(&p, &baseline(0, None), 0, false), vec![None]);
    }

    #[test]
    fn a_policy_gone_from_the_manifests_is_held_until_approved() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("q.yaml"),
            "apiVersion: listwarden.dev/v1\nkind: ListPolicy\nmetadata: {name: q}\n\
             spec: {contactListId: l2, exclude: {emails: [a@example.com]}}\n",
        )
        .unwrap();
        let m = crate::manifest::load(dir.path());
        let holds = check(&m, &baseline(100, None), 50, false);
        let gone = &holds.gone[0];
        assert_eq!(
            (gone.policy.as_str(), gone.before, gone.gone),
            ("p", 100, true)
        );
        assert!(
            gone.to_string().contains("no longer in the manifests"),
            "{gone}"
        );
        assert!(
            check(&m, &baseline(100, Some(GONE)), 50, false)
                .gone
                .is_empty()
        );
        assert!(check(&m, &baseline(100, None), 50, true).gone.is_empty());
        assert!(check(&m, &baseline(0, None), 50, false).gone.is_empty());
    }
}
