//! Observed state: reading a list's members, and choosing the cheaper way to converge it.
//!
//! Asserting costs `ceil(D / batch)` remove requests for `D` pending contacts, whoever is in
//! the list. Observing costs `ceil(N / 100)` search requests for a list of `N` members, then
//! removes only the members found in the desired-absent set. With AutoSend's 50 requests a
//! minute, a 1,000,000-address suppression file against a 2,000-member list is 2,000
//! requests one way and about 21 the other; `auto` picks per list and per run.
//!
//! A page-based read is trusted only when it is complete and consistent: every page reported
//! the same `total`, and the distinct members seen equal it; pages are read last to first so
//! that a removal meanwhile can only make a member seen twice, never skipped (see
//! [`read_members`]). Otherwise members may have
//! shifted between pages (someone added or removed contacts meanwhile), the read is retried,
//! and after [`READ_ATTEMPTS`] inconsistent reads the list falls back to asserting. Contacts a
//! consistent read did not find are confirmed absent by it; nothing else is.

use std::collections::HashSet;

use crate::contact::Email;
use crate::desired::DesiredList;
use crate::manifest::Strategy;
use crate::plan::{ListPlan, SEARCH_PAGE_LIMIT};
use autosend::{ApiError, Client, Tally};

pub const READ_ATTEMPTS: usize = 3;

/// Every member of a list, by normalised email and by contact id.
///
/// A kind is *complete* when every member came with it. Only a complete kind can confirm
/// contacts by their absence: if some members came without an `id`, a desired contact id
/// missing from `contact_ids` may still be in the list.
#[derive(Clone, Debug, Default)]
pub struct Members {
    pub emails: HashSet<String>,
    pub contact_ids: HashSet<String>,
    pub total: u64,
    pub emails_complete: bool,
    pub ids_complete: bool,
}

/// The strategy chosen for one list, and why (for plan output, logs and status).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Choice {
    pub strategy: Strategy,
    pub reason: String,
    pub assert_requests: u64,
    pub observe_requests: u64,
}

/// Requests to read a list of `members` members.
pub fn pages(members: u64) -> u64 {
    members.div_ceil(SEARCH_PAGE_LIMIT as u64).max(1)
}

/// Chooses between assert and observe for `plan`, given the list's `contactCount`.
///
/// The observe estimate counts the pages plus the remove requests for the members it expects
/// to find: as many as the list's last observation found (`last_drift`), or one request when
/// the list was never observed. The actual number is known only after the read, so a list
/// that is mostly suppressed, observed for the first time, can cost more than asserting
/// (BENCHMARKS.md measures by how much); from its second observation on, the estimate knows.
pub fn choose(
    plan: &ListPlan,
    contact_count: Option<u64>,
    batch_size: usize,
    limits: &autosend::RateLimits,
    last_drift: Option<u64>,
) -> Choice {
    let b = batch_size.max(1);
    let Some(contact_count) = contact_count else {
        // Without the list's size, observing cannot be costed, and its first page would be
        // the only thing saying how big the list is: `auto` asserts.
        let strategy = match plan.strategy {
            Strategy::Observe => Strategy::Observe,
            _ => Strategy::Assert,
        };
        let assert_requests =
            (plan.emails.len().div_ceil(b) + plan.contact_ids.len().div_ceil(b)) as u64;
        return Choice {
            strategy,
            reason: format!(
                "{strategy}: the list's contactCount is unknown (AutoSend did not send it), so \
                 observing cannot be costed"
            ),
            assert_requests,
            observe_requests: 0,
        };
    };
    let assert_requests =
        (plan.emails.len().div_ceil(b) + plan.contact_ids.len().div_ceil(b)) as u64;
    let removes = if plan.to_assert() > 0 {
        last_drift.unwrap_or(0).div_ceil(b as u64).max(1)
    } else {
        0
    };
    let observe_requests = pages(contact_count) + removes;
    // One request waits for nothing: "at least 0.0s" would read as a measurement.
    let time = |r: u64| match limits.least_time(r as usize) {
        std::time::Duration::ZERO => "without waiting".to_string(),
        d => format!("at least {}", crate::human::duration(d)),
    };
    let costs = format!(
        "assert = {assert_requests} remove request(s) for {} pending contact(s), {}; \
         observe = {} search page(s) for {contact_count} member(s) + {removes} remove request(s) expected, {}",
        plan.to_assert(),
        time(assert_requests),
        pages(contact_count),
        time(observe_requests)
    );
    let (strategy, why) = match plan.strategy {
        Strategy::Assert => (Strategy::Assert, "asked for"),
        Strategy::Observe => (Strategy::Observe, "asked for"),
        Strategy::Auto if observe_requests < assert_requests => (Strategy::Observe, "cheaper"),
        Strategy::Auto => (Strategy::Assert, "cheaper or equal"),
    };
    Choice {
        strategy,
        reason: format!("{strategy} ({why}): {costs}"),
        assert_requests,
        observe_requests,
    }
}

impl Choice {
    pub fn strategy(&self) -> Strategy {
        self.strategy
    }
}

/// Reads every member of `list`, whose `contactCount` was just read as `contact_count` (it
/// sizes the read: a stale count costs one more request). `Ok(None)` when no consistent read
/// could be made.
///
/// Pages are read from the last to the first. Pages are offsets into the membership at
/// request time (the fake: insertion order, new members last), so a member someone removes
/// meanwhile shifts the later members towards the pages not read yet, never past them: a
/// member present for the whole read is seen (at worst twice, which the count check
/// rejects), and a member added meanwhile lands after the pages already read. Read first to
/// last, a removal on a page already read would shift the next page's first member onto it
/// unseen, and a simultaneous addition would keep every page's `total` the same: that member
/// would be confirmed absent while still in the list.
pub async fn read_members(
    client: &Client,
    list: &str,
    contact_count: u64,
    tally: &Tally,
) -> Result<Option<Members>, ApiError> {
    let limit = SEARCH_PAGE_LIMIT as u64;
    // A list grows between two requests, but not by orders of magnitude: a `total` far
    // beyond the count just read is a server's mistake (or a lie), and reading it would
    // walk billions of pages. Such a list is asserted instead.
    let max_pages = pages(contact_count).saturating_mul(2).saturating_add(10);
    let mut expected = contact_count;
    for attempt in 1..=READ_ATTEMPTS {
        let mut members = Members::default();
        let mut seen = 0u64;
        let last = pages(expected);
        let mut page = client.search(list, last, limit, tally).await?;
        let total = page.pagination.total;
        let pages_now = page.pagination.pages.max(total.div_ceil(limit)).max(1);
        if pages_now > max_pages {
            tracing::warn!(
                list,
                contact_count,
                total,
                "the search answer claims far more members than the list's count; not observing it"
            );
            return Ok(None);
        }
        if pages_now != last {
            tracing::info!(
                list,
                attempt,
                expected,
                total,
                "the list changed size since its count was read; reading it again"
            );
            expected = total;
            continue;
        }
        let mut consistent = true;
        let (mut without_email, mut without_id) = (0u64, 0u64);
        let mut n = last;
        loop {
            if page.pagination.total != total {
                consistent = false;
                expected = page.pagination.total;
                break;
            }
            for m in &page.contacts {
                seen += 1;
                if m.email.trim().is_empty() {
                    without_email += 1;
                } else {
                    members.emails.insert(Email::normalise(&m.email));
                }
                if m.id.trim().is_empty() {
                    without_id += 1;
                } else {
                    members.contact_ids.insert(m.id.trim().to_string());
                }
            }
            if n <= 1 {
                break;
            }
            n -= 1;
            page = client.search(list, n, limit, tally).await?;
        }
        members.emails_complete = without_email == 0;
        members.ids_complete = without_id == 0;
        if !members.emails_complete && !members.ids_complete {
            tracing::warn!(
                list,
                "the search answer names members by neither email nor id everywhere; cannot observe"
            );
            return Ok(None);
        }
        // Each complete kind must count every member once: a member seen twice or skipped
        // (the pages shifted) shows up here.
        let distinct_ok = (!members.emails_complete || members.emails.len() as u64 == total)
            && (!members.ids_complete || members.contact_ids.len() as u64 == total);
        let distinct = members.contact_ids.len().max(members.emails.len()) as u64;
        if consistent && seen == total && distinct_ok {
            members.total = total;
            return Ok(Some(members));
        }
        tracing::warn!(
            list,
            attempt,
            total,
            seen,
            distinct,
            "the list changed while it was read; reading it again"
        );
    }
    Ok(None)
}

/// Desired-absent contacts present in the list, per kind (the drift).
pub struct Drift<'a> {
    pub emails: Vec<&'a str>,
    pub contact_ids: Vec<&'a str>,
}

impl Drift<'_> {
    pub fn len(&self) -> usize {
        self.emails.len() + self.contact_ids.len()
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Drift per active policy of the list: (policy index, desired-absent members it asks for).
pub fn drift_by_policy(desired: &DesiredList, members: &Members) -> Vec<(usize, usize)> {
    let mut counts: std::collections::HashMap<u32, usize> = std::collections::HashMap::new();
    let present = desired
        .emails
        .iter()
        .filter(|m| members.emails.contains(m.contact.as_str()))
        .map(|m| &m.policies)
        .chain(
            desired
                .contact_ids
                .iter()
                .filter(|m| members.contact_ids.contains(m.contact.as_str()))
                .map(|m| &m.policies),
        );
    for set in present {
        for p in set {
            *counts.entry(*p).or_default() += 1;
        }
    }
    desired
        .policies
        .iter()
        .map(|&p| (p, counts.get(&(p as u32)).copied().unwrap_or(0)))
        .collect()
}

pub fn drift<'a>(desired: &'a DesiredList, members: &Members) -> Drift<'a> {
    Drift {
        emails: desired
            .emails
            .iter()
            .filter(|m| members.emails.contains(m.contact.as_str()))
            .map(|m| m.contact.as_str())
            .collect(),
        contact_ids: desired
            .contact_ids
            .iter()
            .filter(|m| members.contact_ids.contains(m.contact.as_str()))
            .map(|m| m.contact.as_str())
            .collect(),
    }
}
