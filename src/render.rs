//! Human and machine renderings of a plan. The JSON document is a stable, versioned
//! contract (documented in the README): CI bots parse it, so fields are only ever added.

use std::fmt::Write as _;
use std::path::Path;
use std::time::Duration;

use serde::Serialize;

use crate::human::{duration, plural, thousands};
use crate::manifest::{Diagnostic, Manifests};
use crate::plan::{Counts, ListPlan, Plan, Refusal};

pub const PLAN_FORMAT_VERSION: u32 = 1;

#[derive(Serialize)]
pub struct PlanDocument<'a> {
    pub format_version: u32,
    pub path: String,
    pub batch_size: usize,
    pub rate_limits: String,
    pub summary: PlanSummary,
    pub lists: Vec<ListDocument<'a>>,
    pub policies: Vec<PolicyDocument<'a>>,
    /// Policies the forget threshold holds (nothing sent or forgotten for them).
    pub held_policies: &'a [crate::hold::Hold],
    pub invalid_policies: &'a [crate::manifest::InvalidPolicy],
    pub errors: Vec<&'a Diagnostic>,
    pub warnings: Vec<&'a Diagnostic>,
}

#[derive(Serialize)]
pub struct PlanSummary {
    pub lists: usize,
    pub policies: usize,
    pub suspended_policies: usize,
    pub invalid_policies: usize,
    pub to_assert: usize,
    pub requests: usize,
    pub estimated_seconds: f64,
    /// Every request, the pre-flight reads included ([`plan_requests`]); `requests` counts
    /// remove requests only, as it always has.
    pub api_requests: usize,
    pub api_estimated_seconds: f64,
    pub refused_lists: usize,
    pub held_policies: usize,
    pub has_changes: bool,
    /// Per account with lists in the plan: each runs at its own key's budget, side by side
    /// (`apiEstimatedSeconds` above is the slowest one's).
    pub accounts: Vec<AccountDocument>,
}

#[derive(Serialize)]
pub struct AccountDocument {
    pub account: String,
    pub rate_limits: String,
    pub requests: usize,
    pub api_requests: usize,
    pub api_estimated_seconds: f64,
}

#[derive(Serialize)]
pub struct ListDocument<'a> {
    pub account: &'a str,
    pub contact_list_id: &'a str,
    pub revision: &'a str,
    pub policies: Vec<&'a str>,
    pub suspended_policies: Vec<&'a str>,
    pub held_policies: Vec<&'a str>,
    pub emails: &'a Counts,
    pub contact_ids: &'a Counts,
    pub to_assert: usize,
    pub requests: usize,
    pub estimated_seconds: f64,
    /// As in [`PlanSummary::api_requests`].
    pub api_requests: usize,
    pub api_estimated_seconds: f64,
    pub strategy: String,
    pub refused: Option<&'a Refusal>,
    /// Only with `--verbose`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub contacts: Option<ContactsDocument<'a>>,
}

#[derive(Serialize)]
pub struct ContactsDocument<'a> {
    pub emails: Vec<&'a str>,
    pub contact_ids: Vec<&'a str>,
}

#[derive(Serialize)]
pub struct PolicyDocument<'a> {
    #[serde(flatten)]
    pub policy: PolicySummary<'a>,
    pub to_assert: usize,
}

/// A valid policy as the plan and validate documents show it.
#[derive(Serialize)]
pub struct PolicySummary<'a> {
    pub name: &'a str,
    pub file: String,
    pub document: usize,
    pub account: &'a str,
    pub contact_list_id: &'a str,
    pub labels: &'a std::collections::BTreeMap<String, String>,
    pub suspended: bool,
    pub max_removals_per_sync: Option<u64>,
    pub revision: &'a str,
    pub emails: usize,
    pub contact_ids: usize,
    /// The `spec.exclude.events` filters, e.g. `email.bounced (Permanent)`.
    pub events: Vec<String>,
    /// Contacts webhook events fed the policy (counted in `emails` / `contact_ids` too).
    pub event_contacts: usize,
}

impl<'a> PolicySummary<'a> {
    pub fn of(p: &'a crate::manifest::Policy) -> PolicySummary<'a> {
        PolicySummary {
            name: p.name.as_str(),
            file: p.origin.file.display().to_string(),
            document: p.origin.document,
            account: p.list.account.as_str(),
            contact_list_id: p.list.as_str(),
            labels: &p.labels,
            suspended: p.suspend,
            max_removals_per_sync: p.max_removals_per_sync,
            revision: &p.revision,
            emails: p.emails.len(),
            contact_ids: p.contact_ids.len(),
            events: p.events.iter().map(ToString::to_string).collect(),
            event_contacts: p.event_fed,
        }
    }
}

/// `validate --output json`: the load's verdict, every policy and every problem.
#[derive(Serialize)]
pub struct ValidateDocument<'a> {
    pub format_version: u32,
    pub path: String,
    pub valid: bool,
    pub files: Vec<String>,
    pub policies: Vec<PolicySummary<'a>>,
    pub invalid_policies: &'a [crate::manifest::InvalidPolicy],
    pub errors: Vec<&'a Diagnostic>,
    pub warnings: Vec<&'a Diagnostic>,
}

pub const VALIDATE_FORMAT_VERSION: u32 = 1;

pub fn validate_document<'a>(path: &Path, manifests: &'a Manifests) -> ValidateDocument<'a> {
    ValidateDocument {
        format_version: VALIDATE_FORMAT_VERSION,
        path: path.display().to_string(),
        valid: !manifests.has_errors(),
        files: manifests
            .files
            .iter()
            .map(|f| f.path.display().to_string())
            .collect(),
        policies: manifests.policies.iter().map(PolicySummary::of).collect(),
        invalid_policies: &manifests.invalid,
        errors: manifests.errors().collect(),
        warnings: manifests.warnings().collect(),
    }
}

/// The requests a list's plan sends: the pre-flight read of the list (`GET
/// /contact-lists/{id}`, made before its first batch) and its remove requests; none when it
/// has nothing to send. `apply` and `status` count the same requests as they are sent, with
/// retries and search pages on top. Every request count shown to people is this one.
pub fn list_requests(l: &ListPlan) -> usize {
    if l.has_work() { l.requests() + 1 } else { 0 }
}

/// [`list_requests`] over the whole plan.
pub fn plan_requests(plan: &Plan) -> usize {
    plan.lists.iter().map(list_requests).sum()
}

/// The least time of every request of the plan: each account at its own budget, side by
/// side, so the slowest account's.
pub fn plan_least_time(plan: &Plan) -> Duration {
    plan.per_account(list_requests)
        .iter()
        .map(|a| a.least_time)
        .max()
        .unwrap_or_default()
}

fn secs(d: Duration) -> f64 {
    (d.as_secs_f64() * 10.0).round() / 10.0
}

pub fn plan_document<'a>(
    path: &Path,
    manifests: &'a Manifests,
    plan: &'a Plan,
    verbose: bool,
) -> PlanDocument<'a> {
    let names = |idx: &[usize]| -> Vec<&'a str> {
        idx.iter()
            .map(|&i| manifests.policies[i].name.as_str())
            .collect()
    };
    let limits = plan.options.accounts.default_rate_limits();
    let lists = plan
        .lists
        .iter()
        .map(|l| (l, plan.options.limits_for(&l.list.account)))
        .map(|(l, limits)| ListDocument {
            account: l.list.account.as_str(),
            contact_list_id: l.list.as_str(),
            revision: &l.revision,
            policies: names(&l.policies),
            suspended_policies: names(&l.suspended),
            held_policies: names(&l.held),
            emails: &l.email_counts,
            contact_ids: &l.contact_id_counts,
            to_assert: l.to_assert(),
            requests: l.requests(),
            estimated_seconds: secs(limits.least_time(l.requests())),
            api_requests: list_requests(l),
            api_estimated_seconds: secs(limits.least_time(list_requests(l))),
            strategy: l.strategy.to_string(),
            refused: l.refused.as_ref(),
            contacts: verbose.then(|| ContactsDocument {
                emails: l.emails.iter().map(|a| a.contact.as_str()).collect(),
                contact_ids: l.contact_ids.iter().map(|a| a.contact.as_str()).collect(),
            }),
        })
        .collect();
    // One pass over the lists, not one per policy: 100,000 lists must stay linear.
    let mut to_assert_of = vec![0usize; manifests.policies.len()];
    for (p, n) in plan.lists.iter().flat_map(|l| l.per_policy.iter()) {
        if let Some(slot) = to_assert_of.get_mut(*p) {
            *slot += n;
        }
    }
    let policies = manifests
        .policies
        .iter()
        .enumerate()
        .map(|(i, p)| PolicyDocument {
            policy: PolicySummary::of(p),
            to_assert: to_assert_of[i],
        })
        .collect();
    PlanDocument {
        format_version: PLAN_FORMAT_VERSION,
        path: path.display().to_string(),
        batch_size: plan.options.batch_size,
        rate_limits: limits.to_string(),
        summary: PlanSummary {
            lists: plan.lists.len(),
            policies: manifests.policies.len(),
            suspended_policies: manifests.policies.iter().filter(|p| p.suspend).count(),
            invalid_policies: manifests.invalid.len(),
            to_assert: plan.to_assert(),
            requests: plan.requests(),
            estimated_seconds: secs(plan.least_time()),
            api_requests: plan_requests(plan),
            api_estimated_seconds: secs(plan_least_time(plan)),
            refused_lists: plan.lists.iter().filter(|l| l.refused.is_some()).count(),
            held_policies: plan.holds.len(),
            has_changes: plan.has_work(),
            accounts: {
                let removes = plan.per_account(ListPlan::requests);
                plan.per_account(list_requests)
                    .into_iter()
                    .zip(removes)
                    .map(|(api, removes)| AccountDocument {
                        account: api.account.to_string(),
                        rate_limits: api.rate_limits.to_string(),
                        requests: removes.requests,
                        api_requests: api.requests,
                        api_estimated_seconds: secs(api.least_time),
                    })
                    .collect()
            },
        },
        lists,
        policies,
        held_policies: &plan.holds,
        invalid_policies: &manifests.invalid,
        errors: manifests.errors().collect(),
        warnings: manifests.warnings().collect(),
    }
}

fn counts_line(label: &str, c: &Counts) -> String {
    let mut parts = Vec::new();
    if c.new > 0 {
        parts.push(format!("{} new", thousands(c.new)));
    }
    if c.retry > 0 {
        parts.push(format!("{} retry", thousands(c.retry)));
    }
    if c.resync > 0 {
        parts.push(format!("{} resync", thousands(c.resync)));
    }
    if c.confirmed > 0 {
        parts.push(format!("{} already confirmed", thousands(c.confirmed)));
    }
    let detail = if parts.is_empty() {
        String::new()
    } else {
        format!(" ({})", parts.join(", "))
    };
    format!(
        "  {label:<12} {:>9} must be absent, {:>9} to assert{detail}",
        thousands(c.desired),
        thousands(c.to_assert)
    )
}

pub fn plan_text(manifests: &Manifests, plan: &Plan, verbose: bool) -> String {
    let mut out = String::new();
    let limits = plan.options.accounts.default_rate_limits();
    let name = |i: usize| manifests.policies[i].name.as_str();
    for l in &plan.lists {
        let _ = writeln!(out, "list {}", l.list);
        let active: Vec<&str> = l.policies.iter().map(|&i| name(i)).collect();
        let _ = writeln!(
            out,
            "  policies     {}",
            if active.is_empty() {
                "(none active)".to_string()
            } else {
                active.join(", ")
            }
        );
        let fed: Vec<String> = l
            .policies
            .iter()
            .map(|&i| &manifests.policies[i])
            .filter(|p| !p.events.is_empty())
            .map(|p| format!("{} {} from webhook events", p.name, thousands(p.event_fed)))
            .collect();
        if !fed.is_empty() {
            let _ = writeln!(out, "  events       {}", fed.join(", "));
        }
        if !l.suspended.is_empty() {
            let s: Vec<&str> = l.suspended.iter().map(|&i| name(i)).collect();
            let _ = writeln!(
                out,
                "  suspended    {} (planned, never applied)",
                s.join(", ")
            );
        }
        for &i in &l.held {
            if let Some(h) = plan.holds.iter().find(|h| h.policy == name(i)) {
                let _ = writeln!(out, "  HELD         {h}");
            }
        }
        let _ = writeln!(out, "{}", counts_line("emails", &l.email_counts));
        let _ = writeln!(out, "{}", counts_line("contact ids", &l.contact_id_counts));
        if let Some(r) = &l.refused {
            let _ = writeln!(out, "  REFUSED      {r}");
        } else if l.has_work() {
            let _ = writeln!(
                out,
                "  requests     {} (1 list read + {} remove: {} for emails, {} for contactIds, \
                 batches of {}), at least {} at {}",
                thousands(list_requests(l)),
                thousands(l.requests()),
                thousands(l.email_counts.requests),
                thousands(l.contact_id_counts.requests),
                plan.options.batch_size,
                duration(
                    plan.options
                        .limits_for(&l.list.account)
                        .least_time(list_requests(l))
                ),
                plan.options.limits_for(&l.list.account)
            );
        } else {
            let _ = writeln!(out, "  requests     none: no changes");
        }
        if l.has_work() {
            let _ = writeln!(out, "  strategy     {}", strategy_note(l));
        }
        if verbose {
            for a in &l.emails {
                let _ = writeln!(
                    out,
                    "    - {} ({})",
                    a.contact,
                    reason_and_policies(a.reason, &a.policies, manifests)
                );
            }
            for a in &l.contact_ids {
                let _ = writeln!(
                    out,
                    "    - id:{} ({})",
                    a.contact,
                    reason_and_policies(a.reason, &a.policies, manifests)
                );
            }
        }
        out.push('\n');
    }
    let refused = plan.lists.iter().filter(|l| l.refused.is_some()).count();
    let changing = plan.lists.iter().filter(|l| l.has_work()).count();
    if changing == 0 && refused == 0 && plan.holds.is_empty() {
        let _ = write!(
            out,
            "Plan: no changes (nothing to assert in {}).",
            plural(plan.lists.len(), "list"),
        );
    } else if changing == 0 {
        // Refusals and holds follow on this line: they are what waits.
        out.push_str("Plan: nothing to send now.");
    } else {
        let _ = write!(
            out,
            "Plan: {} to assert absent in {}, in {} ({} list read{} + {}), at least {} at {}.",
            plural(plan.to_assert(), "contact"),
            plural(changing, "list"),
            plural(plan_requests(plan), "request"),
            thousands(changing),
            if changing == 1 { "" } else { "s" },
            plural(plan.requests(), "remove"),
            duration(plan_least_time(plan)),
            if plan.options.accounts.is_configured() {
                "each account's budget".to_string()
            } else {
                limits.to_string()
            }
        );
    }
    if refused > 0 {
        let _ = write!(out, " {refused} list(s) refused by a safety threshold.");
    }
    if plan.options.accounts.is_configured() {
        for a in plan
            .per_account(list_requests)
            .iter()
            .filter(|a| a.requests > 0)
        {
            let _ = write!(
                out,
                "\n  account {}: {}, at least {} at {}",
                a.account,
                plural(a.requests, "request"),
                duration(a.least_time),
                a.rate_limits
            );
        }
    }
    if !plan.holds.is_empty() {
        let _ = write!(
            out,
            " {} polic{} held by the forget threshold (`listwarden approve`).",
            plan.holds.len(),
            if plan.holds.len() == 1 { "y" } else { "ies" }
        );
    }
    out.push('\n');
    out
}

fn strategy_note(l: &ListPlan) -> String {
    use crate::manifest::Strategy;
    match l.strategy {
        Strategy::Assert => "assert: every pending contact is sent to remove".into(),
        Strategy::Observe => {
            "observe: the list's members are read (100 a page) and only those found are removed"
                .into()
        }
        // Mirrors observe::choose: observe wins when pages + 1 remove < assert requests.
        Strategy::Auto if l.requests() <= 2 => format!(
            "auto: assert ({}; observing the list instead costs at least a page read and a \
             remove)",
            plural(l.requests(), "remove")
        ),
        Strategy::Auto => format!(
            "auto: observe if the list has at most {} members, else assert (decided at apply \
             time from its contactCount; `plan --refresh` shows the choice)",
            thousands((l.requests() - 2) * crate::plan::SEARCH_PAGE_LIMIT)
        ),
    }
}

pub(crate) fn reason_and_policies(
    reason: crate::plan::Reason,
    policies: &crate::desired::PolicySet,
    manifests: &Manifests,
) -> String {
    let names: Vec<&str> = policies
        .iter()
        .map(|&i| manifests.policies[i as usize].name.as_str())
        .collect();
    let reason = match reason {
        crate::plan::Reason::New => "new",
        crate::plan::Reason::Retry => "retry",
        crate::plan::Reason::Resync => "resync",
    };
    format!("{reason}; {}", names.join(", "))
}
