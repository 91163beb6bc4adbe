//! Desired state + what the store remembers -> a plan: per list, which contacts to assert
//! absent, in how many remove requests, and how long that takes at the rate limits.
//!
//! A contact is asserted when it is new (never confirmed), when an earlier attempt failed
//! (retry), or when its confirmation is older than the resync period (resync: that is how a
//! contact someone re-added gets removed again). Confirmed contacts cost nothing.
//!
//! The plan is pure: no I/O, no clock (the caller passes `now` and the store's records), so
//! `plan`, `apply` and the daemon compute exactly the same thing. Reading the manifests from
//! disk is [`crate::load`]'s job.

use std::collections::HashMap;
use std::time::Duration;

use serde::Serialize;

use crate::account::Accounts;
use crate::contact::{AccountName, ContactId, Email, ListKey};
use crate::desired::{DesiredList, DesiredState, Member, PolicySet};
use crate::manifest::{Policy, Strategy};
use autosend::pacing::RateLimits;

/// Default number of contacts per remove request. AutoSend documents no maximum for remove;
/// bulk-add allows 500, and a server that refuses a batch as too large makes the client split.
pub const DEFAULT_BATCH_SIZE: usize = 500;

/// Confirmed contacts are asserted again after this long (a contact someone re-added is
/// removed again within a day).
pub const DEFAULT_RESYNC_AFTER: Duration = Duration::from_secs(24 * 3600);

/// Largest page the search endpoint serves (used by the observe strategy).
pub const SEARCH_PAGE_LIMIT: usize = 100;

pub use crate::store::{ListRecords, Record, Records};

/// Why a contact is asserted in this run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Reason {
    New,
    Retry,
    Resync,
}

#[derive(Clone, Debug)]
pub struct Assertion<K> {
    pub contact: K,
    pub policies: PolicySet,
    pub reason: Reason,
}

/// Counts for one kind of contact (emails or contact ids) of one list.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Counts {
    pub desired: usize,
    pub new: usize,
    pub retry: usize,
    pub resync: usize,
    pub confirmed: usize,
    pub to_assert: usize,
    pub requests: usize,
}

/// A list the safety threshold stopped.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Refusal {
    pub policy: String,
    pub threshold: u64,
    pub would_assert: usize,
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "policy {} would assert {} contacts, more than its threshold of {} \
             (maxRemovalsPerSync or --max-removals); check the manifest change, then rerun with --force",
            self.policy, self.would_assert, self.threshold
        )
    }
}

#[derive(Clone, Debug)]
pub struct ListPlan {
    pub list: ListKey,
    /// The whole desired-absent set (the observe strategy removes any member in it, pending
    /// or already confirmed).
    pub desired: std::sync::Arc<DesiredList>,
    pub revision: String,
    pub policies: Vec<usize>,
    pub suspended: Vec<usize>,
    /// Policies whose load is held by the forget threshold (nothing is sent for them).
    pub held: Vec<usize>,
    pub emails: Vec<Assertion<Email>>,
    pub contact_ids: Vec<Assertion<ContactId>>,
    pub email_counts: Counts,
    pub contact_id_counts: Counts,
    /// Per active policy: (policy index, contacts it would newly assert or retry).
    pub per_policy: Vec<(usize, usize)>,
    pub refused: Option<Refusal>,
    /// The strategy asked for (per-policy override or the command's).
    pub strategy: Strategy,
}

impl ListPlan {
    pub fn requests(&self) -> usize {
        self.email_counts.requests + self.contact_id_counts.requests
    }

    pub fn to_assert(&self) -> usize {
        self.emails.len() + self.contact_ids.len()
    }

    pub fn has_work(&self) -> bool {
        self.refused.is_none() && self.to_assert() > 0
    }
}

#[derive(Clone, Debug)]
pub struct PlanOptions {
    pub batch_size: usize,
    /// The accounts served, with each key's budget: each policy's account is settled
    /// against them after a load, and each account's requests are timed at its budget.
    pub accounts: Accounts,
    /// Unix seconds.
    pub now: i64,
    pub resync_after: Duration,
    /// Assert every confirmed contact again now (`apply --resync`, SIGHUP in the daemon).
    pub resync_all: bool,
    /// Threshold for policies that set no `maxRemovalsPerSync`.
    pub max_removals: Option<u64>,
    /// Share of its contacts (percent) a policy may lose in one load before the change is
    /// held, for policies that set no `maxForgetPercent`.
    pub max_forget_percent: u8,
    /// Ignore thresholds (`--force`).
    pub force: bool,
    pub strategy: Strategy,
}

impl PlanOptions {
    /// The budget of `account`'s key.
    pub fn limits_for(&self, account: &AccountName) -> RateLimits {
        self.accounts.rate_limits(account)
    }
}

/// What one account's share of a plan costs.
#[derive(Clone, Debug)]
pub struct AccountCost {
    pub account: AccountName,
    pub requests: usize,
    pub least_time: Duration,
    pub rate_limits: RateLimits,
}

impl Default for PlanOptions {
    fn default() -> Self {
        PlanOptions {
            batch_size: DEFAULT_BATCH_SIZE,
            accounts: Accounts::single(RateLimits::default()),
            now: crate::clock::now_unix(),
            resync_after: DEFAULT_RESYNC_AFTER,
            resync_all: false,
            max_removals: None,
            max_forget_percent: crate::hold::DEFAULT_MAX_FORGET_PERCENT,
            force: false,
            strategy: Strategy::Auto,
        }
    }
}

#[derive(Clone, Debug)]
pub struct Plan {
    pub lists: Vec<ListPlan>,
    /// Policies the forget threshold holds, with what they would lose.
    pub holds: Vec<crate::hold::Hold>,
    pub options: PlanOptions,
}

impl Plan {
    /// Holds what the forget threshold stops, builds the desired state and plans it: the one
    /// path `plan`, `apply` and the daemon share.
    pub fn for_manifests<E: Send>(
        manifests: &crate::manifest::Manifests,
        baselines: &HashMap<String, crate::store::Baseline>,
        records: impl Fn(&ListKey) -> Result<ListRecords, E> + Sync,
        options: PlanOptions,
    ) -> Result<Plan, E> {
        let holds = crate::hold::check(
            manifests,
            baselines,
            options.max_forget_percent,
            options.force,
        );
        let desired = DesiredState::build_holding(&manifests.policies, &holds.mask());
        let mut plan = Plan::try_build(&manifests.policies, &desired, records, options)?;
        plan.holds = holds.all();
        Ok(plan)
    }

    /// Plans every list of `desired`. `records` gives what the store knows of a list (an
    /// empty [`ListRecords`] when there is no store yet: everything is new).
    pub fn build(
        policies: &[Policy],
        desired: &DesiredState,
        records: impl Fn(&ListKey) -> ListRecords + Sync,
        options: PlanOptions,
    ) -> Plan {
        match Plan::try_build(
            policies,
            desired,
            |l| Ok::<_, std::convert::Infallible>(records(l)),
            options,
        ) {
            Ok(plan) => plan,
            Err(never) => match never {},
        }
    }

    /// Like [`Plan::build`], for records that can fail to be read. A store that cannot be
    /// read fails the plan: planning its contacts as new would re-send confirmed work.
    pub fn try_build<E: Send>(
        policies: &[Policy],
        desired: &DesiredState,
        records: impl Fn(&ListKey) -> Result<ListRecords, E> + Sync,
        options: PlanOptions,
    ) -> Result<Plan, E> {
        // Lists on every core: one worker reads a list's records (the store serialises its
        // reads) while the other plans the list it has read.
        let lists = crate::parallel::try_map(&desired.lists, |d| {
            Ok(plan_list(policies, d, &records(&d.list)?, &options))
        })?;
        Ok(Plan {
            lists,
            holds: Vec::new(),
            options,
        })
    }

    pub fn requests(&self) -> usize {
        self.lists
            .iter()
            .filter(|l| l.refused.is_none())
            .map(ListPlan::requests)
            .sum()
    }

    pub fn to_assert(&self) -> usize {
        self.lists
            .iter()
            .filter(|l| l.refused.is_none())
            .map(ListPlan::to_assert)
            .sum()
    }

    /// Least time for the whole plan: all lists share the key's one rate budget.
    /// The least time of the remove requests: accounts run side by side, each at its own
    /// budget, so the slowest account's.
    pub fn least_time(&self) -> Duration {
        self.per_account(ListPlan::requests)
            .iter()
            .map(|a| a.least_time)
            .max()
            .unwrap_or_default()
    }

    /// Per account with lists in the plan: `requests(list)` summed, and their least time at
    /// the account's budget.
    pub fn per_account(&self, requests: impl Fn(&ListPlan) -> usize) -> Vec<AccountCost> {
        let mut by: std::collections::BTreeMap<&AccountName, usize> = Default::default();
        for l in &self.lists {
            *by.entry(&l.list.account).or_default() += requests(l);
        }
        by.into_iter()
            .map(|(account, requests)| {
                let limits = self.options.limits_for(account);
                AccountCost {
                    account: account.clone(),
                    requests,
                    least_time: limits.least_time(requests),
                    rate_limits: limits,
                }
            })
            .collect()
    }

    /// True when something is to be done, including lists a threshold refused and changes
    /// the forget threshold holds: each is a change waiting for a decision, never "nothing
    /// to do".
    pub fn has_work(&self) -> bool {
        !self.holds.is_empty() || self.lists.iter().any(|l| l.to_assert() > 0)
    }
}

fn classify(record: Option<&Record>, options: &PlanOptions) -> Option<Reason> {
    match record {
        None => Some(Reason::New),
        // An answer that did not account for it confirmed nothing: assert it again.
        Some(r) if r.unaccounted > 0 => Some(Reason::Retry),
        Some(r) => match (r.confirmed_at, r.failed_at) {
            (_, Some(_)) => Some(Reason::Retry),
            (Some(t), None) => {
                let due = options.resync_all
                    || options.now.saturating_sub(t) >= options.resync_after.as_secs() as i64;
                due.then_some(Reason::Resync)
            }
            (None, None) => Some(Reason::New),
        },
    }
}

/// Classifies each desired contact by its record: one walk over the two sorted sequences
/// (desired members, the store's records), no lookup per contact.
fn plan_kind<K: Clone + AsRef<str>>(
    members: &[Member<K>],
    records: &Records,
    options: &PlanOptions,
) -> (Vec<Assertion<K>>, Counts) {
    let mut counts = Counts {
        desired: members.len(),
        ..Counts::default()
    };
    let mut out = Vec::new();
    let mut stored = records.iter().peekable();
    for m in members {
        let contact = m.contact.as_ref();
        while stored.next_if(|(c, _)| *c < contact).is_some() {}
        let record = stored.next_if(|(c, _)| *c == contact).map(|(_, r)| r);
        match classify(record, options) {
            None => counts.confirmed += 1,
            Some(reason) => {
                match reason {
                    Reason::New => counts.new += 1,
                    Reason::Retry => counts.retry += 1,
                    Reason::Resync => counts.resync += 1,
                }
                out.push(Assertion {
                    contact: m.contact.clone(),
                    policies: m.policies.clone(),
                    reason,
                });
            }
        }
    }
    counts.to_assert = out.len();
    counts.requests = out.len().div_ceil(options.batch_size.max(1));
    (out, counts)
}

impl AsRef<str> for Email {
    fn as_ref(&self) -> &str {
        self.as_str()
    }
}

impl AsRef<str> for ContactId {
    fn as_ref(&self) -> &str {
        self.as_str()
    }
}

/// Plans one list (the daemon reconciles lists one by one, each from fresh records).
pub fn plan_list(
    policies: &[Policy],
    desired: &std::sync::Arc<DesiredList>,
    records: &ListRecords,
    options: &PlanOptions,
) -> ListPlan {
    let (emails, email_counts) = plan_kind(&desired.emails, &records.emails, options);
    let (contact_ids, contact_id_counts) =
        plan_kind(&desired.contact_ids, &records.contact_ids, options);

    // Thresholds count what a policy newly asks for (new and retried contacts), not the
    // periodic resync of contacts it already had confirmed: a resync is no change.
    let mut per_policy: Vec<(usize, usize)> = desired.policies.iter().map(|&p| (p, 0)).collect();
    // A contact only events fed a policy is not counted for it here: the threshold was
    // counted over the storm window where the events arrived (`feed::decide`), and what it
    // held back was approved.
    let mut bump = |set: &PolicySet, event_only: &dyn Fn(&Policy) -> bool| {
        for &p in set {
            if event_only(&policies[p as usize]) {
                continue;
            }
            if let Some(entry) = per_policy.iter_mut().find(|(i, _)| *i == p as usize) {
                entry.1 += 1;
            }
        }
    };
    for a in emails.iter().filter(|a| a.reason != Reason::Resync) {
        bump(&a.policies, &|p| {
            p.event_only_emails.binary_search(&a.contact).is_ok()
        });
    }
    for a in contact_ids.iter().filter(|a| a.reason != Reason::Resync) {
        bump(&a.policies, &|p| {
            p.event_only_ids.binary_search(&a.contact).is_ok()
        });
    }
    let refused = if options.force {
        None
    } else {
        per_policy.iter().find_map(|&(p, n)| {
            let threshold = policies[p].max_removals_per_sync.or(options.max_removals)?;
            (n as u64 > threshold).then(|| Refusal {
                policy: policies[p].name.to_string(),
                threshold,
                would_assert: n,
            })
        })
    };
    // A per-policy strategy wins over the command's; when policies on one list disagree,
    // the cheapest-safe choice is `auto`.
    let mut overrides = desired
        .policies
        .iter()
        .filter_map(|&p| policies[p].strategy);
    let strategy = match overrides.next() {
        None => options.strategy,
        Some(first) if overrides.all(|s| s == first) => first,
        Some(_) => Strategy::Auto,
    };
    ListPlan {
        list: desired.list.clone(),
        desired: desired.clone(),
        revision: desired.revision.clone(),
        policies: desired.policies.clone(),
        suspended: desired.suspended.clone(),
        held: desired.held.clone(),
        emails,
        contact_ids,
        email_counts,
        contact_id_counts,
        per_policy,
        refused,
        strategy,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(confirmed: Option<i64>, failed: Option<i64>) -> Record {
        Record {
            confirmed_at: confirmed,
            failed_at: failed,
            unaccounted: 0,
        }
    }

    #[test]
    fn contacts_are_classified_by_what_the_store_remembers() {
        let opts = PlanOptions {
            now: 100_000,
            resync_after: Duration::from_secs(1000),
            ..PlanOptions::default()
        };
        assert_eq!(classify(None, &opts), Some(Reason::New));
        assert_eq!(classify(Some(&record(Some(99_500), None)), &opts), None);
        assert_eq!(
            classify(Some(&record(Some(90_000), None)), &opts),
            Some(Reason::Resync)
        );
        assert_eq!(
            classify(Some(&record(Some(99_500), Some(99_600))), &opts),
            Some(Reason::Retry)
        );
        let unaccounted = Record {
            unaccounted: 1,
            ..record(Some(99_500), None)
        };
        assert_eq!(classify(Some(&unaccounted), &opts), Some(Reason::Retry));
        let all = PlanOptions {
            resync_all: true,
            ..opts
        };
        assert_eq!(
            classify(Some(&record(Some(99_999), None)), &all),
            Some(Reason::Resync)
        );
    }
}
