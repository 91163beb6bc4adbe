//! Plan -> AutoSend calls -> the state store: converging one contact list.
//!
//! [`reconcile_list`] is the one function `apply` and the daemon both call. It is
//! level-triggered and idempotent: everything it needs is in the plan (computed from the
//! manifests and the store) and it never depends on why it was called. Per list:
//!
//! 1. a refused plan (safety threshold) or an empty one returns at once;
//! 2. a pre-flight `GET /contact-lists/{id}`: a missing list or a segment fails this list
//!    only, a refused key stops the run;
//! 3. the strategy is chosen (assert, or observe the list's members first: see
//!    [`crate::observe`]);
//! 4. batches are sent one at a time, each after the list's [gate](crate::gate) lets it
//!    through; the outcome of each is committed to the store before the next is sent. A
//!    batch the server refuses (400/413) is split in halves down to single contacts, so one
//!    poisoned entry fails alone and by name. Only what an answer accounts for is confirmed:
//!    when `removed + notInList + errors` falls short of the batch, its contacts stay pending;
//!    counts beyond the batch are clamped;
//! 5. every policy of the list gets its condition and counts, in one transaction.
//!
//! A panic inside one list's reconcile is caught and fails that list (`ApiError`), so it is
//! retried with backoff and never wedges the daemon or reads as success.

use std::collections::HashMap;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::FutureExt;
use serde::Serialize;

use crate::contact::{ContactKind, ContactListId, Email};
use crate::desired::PolicySet;
use crate::gate::{Admit, Gates};
use crate::hold::Hold;
use crate::manifest::{Manifests, Policy, Strategy};
use crate::observe;
use crate::plan::{Assertion, ListPlan};
use crate::store::{
    Accepted, Condition, ContactOutcome, Held, Keep, ListSync, LoadRecord, LoadSummary,
    PolicyCounts, PolicyUpdate, Ready, StatusWrite, Store, StoreError,
};
use autosend::{ApiError, Client, RemoveBatch, RemoveOutcome, Tally};

/// How many failing contacts a summary quotes.
const FIRST_ERRORS: usize = 5;

/// Single contacts refused alike, with nothing accepted, before a list is failed as a whole.
const UNIFORM_REFUSALS: usize = 3;

/// Told about progress, for a progress bar or log lines. Default: nothing.
pub trait Progress: Send + Sync {
    fn list_started(&self, _list: &ContactListId, _contacts: usize) {}
    fn batch_done(&self, _list: &ContactListId, _contacts: usize) {}
}

pub struct NoProgress;
impl Progress for NoProgress {}

/// What `reconcile_list` needs besides the plan.
#[derive(Clone)]
pub struct Context {
    pub client: Client,
    pub store: Arc<Store>,
    pub batch_size: usize,
    pub progress: Arc<dyn Progress>,
    /// Revision recorded as applied/attempted (a git commit when the manifests are in a
    /// work tree, else the list's desired digest).
    pub source_revision: Option<String>,
    /// Where sends wait while the manifests may be changing (the daemon's); none for apply.
    pub gates: Arc<Gates>,
}

impl Context {
    /// A context with no progress reporting, no source revision and no gates.
    pub fn new(client: Client, store: Arc<Store>, batch_size: usize) -> Context {
        Context {
            client,
            store,
            batch_size,
            progress: Arc::new(NoProgress),
            source_revision: None,
            gates: Arc::new(Gates::new()),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "result", content = "detail", rename_all = "camelCase")]
pub enum ListResult {
    /// Every desired contact is confirmed absent.
    Converged,
    /// Some contacts failed or were not accounted for (recorded; asserted again next run).
    PartiallyFailed,
    /// The safety threshold stopped this list; nothing was sent.
    Refused(String),
    ListNotFound(String),
    ListIsSegment,
    /// 401/402/403: the whole run stops.
    Unauthorized(String),
    /// Another API error (server down after retries, protocol error...), or a panic.
    Failed(String),
    /// The state store could not be written (disk full, I/O error, file replaced).
    StoreFailed(String),
    /// The manifests changed while the list was being reconciled: planned again.
    Superseded,
    /// Shutdown before the list finished; the next run resumes.
    Interrupted,
}

impl ListResult {
    pub fn is_ok(&self) -> bool {
        matches!(self, ListResult::Converged)
    }

    /// A stable label, for metrics and logs.
    pub fn label(&self) -> &'static str {
        match self {
            ListResult::Converged => "converged",
            ListResult::PartiallyFailed => "partially_failed",
            ListResult::Refused(_) => "refused",
            ListResult::ListNotFound(_) => "list_not_found",
            ListResult::ListIsSegment => "list_is_segment",
            ListResult::Unauthorized(_) => "unauthorized",
            ListResult::Failed(_) => "failed",
            ListResult::StoreFailed(_) => "store_failed",
            ListResult::Superseded => "superseded",
            ListResult::Interrupted => "interrupted",
        }
    }
}

impl std::fmt::Display for ListResult {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ListResult::Converged => f.write_str("converged"),
            ListResult::PartiallyFailed => f.write_str("partially failed"),
            ListResult::Refused(m) => write!(f, "refused: {m}"),
            ListResult::ListNotFound(m) => write!(f, "list not found: {m}"),
            ListResult::ListIsSegment => f.write_str("refused: the list is a segment"),
            ListResult::Unauthorized(m) => write!(f, "stopped: {m}"),
            ListResult::Failed(m) => write!(f, "failed: {m}"),
            ListResult::StoreFailed(m) => write!(f, "stopped: {m}"),
            ListResult::Superseded => f.write_str("superseded by a manifest change; planned again"),
            ListResult::Interrupted => f.write_str("interrupted (resumes next run)"),
        }
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct ListOutcome {
    pub list: ContactListId,
    pub result: ListResult,
    pub removed: u64,
    pub not_in_list: u64,
    pub failed: u64,
    /// Contacts the answers did not account for: still pending, asserted again next sync.
    pub unaccounted: u64,
    /// Contacts confirmed by an observation (a full, consistent read) rather than a remove.
    pub observed_absent: u64,
    pub first_errors: Vec<(String, String)>,
    pub requests: u64,
    pub rate_limited: u64,
    #[serde(serialize_with = "ser_secs")]
    pub duration: Duration,
    pub strategy: Option<String>,
    pub strategy_reason: Option<String>,
}

impl ListOutcome {
    /// An outcome with nothing done yet.
    pub fn new(list: ContactListId, result: ListResult) -> ListOutcome {
        ListOutcome {
            list,
            result,
            removed: 0,
            not_in_list: 0,
            failed: 0,
            unaccounted: 0,
            observed_absent: 0,
            first_errors: Vec::new(),
            requests: 0,
            rate_limited: 0,
            duration: Duration::ZERO,
            strategy: None,
            strategy_reason: None,
        }
    }
}

fn ser_secs<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64((d.as_secs_f64() * 1000.0).round() / 1000.0)
}

/// Per-policy tallies of this sync.
#[derive(Default, Clone)]
struct Attribution {
    removed: f64,
    not_in_list: f64,
    failed: u64,
    confirmed: u64,
}

struct Acc {
    outcome: ListOutcome,
    per_policy: HashMap<u32, Attribution>,
}

impl Acc {
    fn note_error(&mut self, contact: &str, message: &str) {
        self.outcome.failed += 1;
        if self.outcome.first_errors.len() < FIRST_ERRORS {
            self.outcome
                .first_errors
                .push((contact.to_string(), message.to_string()));
        }
    }
}

/// Why a list's sends stopped.
enum Stop {
    Api(ApiError),
    Store(StoreError),
    Segment,
    Superseded,
}

impl From<ApiError> for Stop {
    fn from(e: ApiError) -> Stop {
        Stop::Api(e)
    }
}

impl From<StoreError> for Stop {
    fn from(e: StoreError) -> Stop {
        Stop::Store(e)
    }
}

impl From<Stop> for ListResult {
    fn from(stop: Stop) -> ListResult {
        match stop {
            Stop::Api(e) => match e {
                ApiError::Auth { .. } => ListResult::Unauthorized(e.to_string()),
                ApiError::NotFound { .. } => ListResult::ListNotFound(e.to_string()),
                ApiError::Cancelled => ListResult::Interrupted,
                other => ListResult::Failed(other.to_string()),
            },
            Stop::Store(e) => ListResult::StoreFailed(e.to_string()),
            Stop::Segment => ListResult::ListIsSegment,
            Stop::Superseded => ListResult::Superseded,
        }
    }
}

/// One contact to assert, kind-erased for batching.
struct Pending<'a> {
    key: &'a str,
    policies: &'a PolicySet,
}

fn pending<'a, K: AsRef<str>>(items: &'a [Assertion<K>]) -> Vec<Pending<'a>> {
    sorted(
        items
            .iter()
            .map(|a| Pending {
                key: a.contact.as_ref(),
                policies: &a.policies,
            })
            .collect(),
    )
}

/// The desired-absent contacts a read found in the list.
fn present<'a, K: AsRef<str>>(
    desired: &'a [crate::desired::Member<K>],
    found: &std::collections::HashSet<String>,
) -> Vec<Pending<'a>> {
    sorted(
        desired
            .iter()
            .filter(|m| found.contains(m.contact.as_ref()))
            .map(|m| Pending {
                key: m.contact.as_ref(),
                policies: &m.policies,
            })
            .collect(),
    )
}

/// Grouping by policy set keeps most batches to one policy, so per-policy removed and
/// notInList counts are exact for them; the request count is the same either way.
fn sorted(mut v: Vec<Pending<'_>>) -> Vec<Pending<'_>> {
    v.sort_by(|a, b| a.policies.cmp(b.policies).then(a.key.cmp(b.key)));
    v
}

/// Converges one list according to its plan, recording everything in the store.
pub async fn reconcile_list(ctx: &Context, policies: &[Policy], plan: &ListPlan) -> ListOutcome {
    let started = Instant::now();
    let now = crate::plan::now_unix();
    let tally = Tally::default();
    let mut acc = Acc {
        outcome: ListOutcome::new(plan.list.clone(), ListResult::Converged),
        per_policy: HashMap::new(),
    };
    let mut contact_count = None;
    let result = if let Some(refusal) = &plan.refused {
        ListResult::Refused(refusal.to_string())
    } else if plan.to_assert() == 0 {
        ListResult::Converged
    } else {
        ctx.progress.list_started(&plan.list, plan.to_assert());
        let converge = AssertUnwindSafe(run(ctx, plan, &tally, &mut acc, &mut contact_count));
        match converge.catch_unwind().await {
            Ok(Ok(())) if acc.outcome.failed > 0 || acc.outcome.unaccounted > 0 => {
                ListResult::PartiallyFailed
            }
            Ok(Ok(())) => ListResult::Converged,
            Ok(Err(stop)) => stop.into(),
            Err(panic) => {
                let what = panic
                    .downcast_ref::<String>()
                    .map(String::as_str)
                    .or_else(|| panic.downcast_ref::<&str>().copied())
                    .unwrap_or("a panic");
                tracing::error!(list = %plan.list, panic = what, "the reconcile of this list panicked");
                ListResult::Failed(format!(
                    "internal error while reconciling this list ({what}); what was recorded \
                     stays, and the list is tried again"
                ))
            }
        }
    };
    acc.outcome.result = result;
    acc.outcome.requests = tally.requests();
    acc.outcome.rate_limited = tally.rate_limited();
    acc.outcome.duration = started.elapsed();
    let write = status_write(ctx, policies, plan, &acc, now, contact_count);
    if let Err(e) = ctx.store.write_status(std::slice::from_ref(&write), now) {
        tracing::error!(list = %plan.list, error = %e, "cannot write status");
        if acc.outcome.result.is_ok() || e.is_write_failure() {
            acc.outcome.result = ListResult::StoreFailed(e.to_string());
        }
    }
    acc.outcome
}

/// The outcome of a list that needs no request (nothing pending, or refused): no I/O.
fn quiet_outcome(plan: &ListPlan) -> ListOutcome {
    let result = match &plan.refused {
        Some(refusal) => ListResult::Refused(refusal.to_string()),
        None => ListResult::Converged,
    };
    ListOutcome::new(plan.list.clone(), result)
}

async fn run(
    ctx: &Context,
    plan: &ListPlan,
    tally: &Tally,
    acc: &mut Acc,
    contact_count: &mut Option<u64>,
) -> Result<(), Stop> {
    let info = ctx.client.get_list(plan.list.as_str(), tally).await?;
    if info.is_segment() {
        return Err(Stop::Segment);
    }
    *contact_count = Some(info.contact_count);
    let last_drift = ctx.store.last_drift(plan.list.as_str())?;
    let choice = observe::choose(
        plan,
        info.contact_count,
        ctx.batch_size,
        ctx.client.rate_limits(),
        last_drift,
    );
    let mut reason = choice.reason.clone();
    let mut members = None;
    if choice.strategy() == Strategy::Observe {
        members = observe::read_members(&ctx.client, plan.list.as_str(), info.contact_count, tally)
            .await?;
        if members.is_none() {
            reason
                .push_str("; the list kept changing while it was read, so it was asserted instead");
        }
    }
    let used = if members.is_some() {
        Strategy::Observe
    } else {
        Strategy::Assert
    };
    tracing::info!(list = %plan.list, strategy = %used, reason = %reason, "strategy chosen");
    acc.outcome.strategy = Some(used.to_string());
    acc.outcome.strategy_reason = Some(reason);
    let (emails, ids) = match members {
        Some(members) => {
            let drift = observe::drift(&plan.desired, &members);
            ctx.store.record_drift(
                plan.list.as_str(),
                drift.len() as u64,
                crate::plan::now_unix(),
            )?;
            record_observed_absent(ctx, plan, &members, acc)?;
            // Every desired-absent member goes, pending or confirmed earlier: the read has
            // just shown it is back. A kind the read could not see completely is asserted
            // as usual.
            let emails = if members.emails_complete {
                present(&plan.desired.emails, &members.emails)
            } else {
                pending(&plan.emails)
            };
            let ids = if members.ids_complete {
                present(&plan.desired.contact_ids, &members.contact_ids)
            } else {
                pending(&plan.contact_ids)
            };
            (emails, ids)
        }
        None => (pending(&plan.emails), pending(&plan.contact_ids)),
    };
    send_all(ctx, plan, ContactKind::Email, emails, tally, acc).await?;
    send_all(ctx, plan, ContactKind::ContactId, ids, tally, acc).await?;
    Ok(())
}

const SEGMENT_MESSAGE: &str = "this contact list is a segment: its members are computed from \
    filters and nothing can be removed from it; point the policy at a real list";

fn record_observed_absent(
    ctx: &Context,
    plan: &ListPlan,
    members: &observe::Members,
    acc: &mut Acc,
) -> Result<(), StoreError> {
    let now = crate::plan::now_unix();
    // Only a kind every member came with can confirm by absence (see observe::Members).
    let absent_emails = plan
        .emails
        .iter()
        .filter(|a| members.emails_complete && !members.emails.contains(a.contact.as_str()));
    let absent_ids = plan
        .contact_ids
        .iter()
        .filter(|a| members.ids_complete && !members.contact_ids.contains(a.contact.as_str()));
    let emails: Vec<(&str, ContactOutcome)> = absent_emails
        .clone()
        .map(|a| (a.contact.as_str(), ContactOutcome::Confirmed))
        .collect();
    let ids: Vec<(&str, ContactOutcome)> = absent_ids
        .clone()
        .map(|a| (a.contact.as_str(), ContactOutcome::Confirmed))
        .collect();
    for a in absent_emails
        .map(|a| &a.policies)
        .chain(absent_ids.map(|a| &a.policies))
    {
        for p in a {
            let e = acc.per_policy.entry(*p).or_default();
            e.confirmed += 1;
            e.not_in_list += 1.0;
        }
    }
    acc.outcome.observed_absent += (emails.len() + ids.len()) as u64;
    ctx.store
        .record_batch(&plan.list, ContactKind::Email, &emails, &plan.revision, now)?;
    ctx.store.record_batch(
        &plan.list,
        ContactKind::ContactId,
        &ids,
        &plan.revision,
        now,
    )?;
    Ok(())
}

/// Waits at the list's gate; stops when the manifests changed since the plan, or on shutdown.
async fn admit(ctx: &Context, plan: &ListPlan) -> Result<(), Stop> {
    let cancel = ctx.client.cancel_token();
    tokio::select! {
        biased;
        _ = cancel.cancelled() => Err(Stop::Api(ApiError::Cancelled)),
        admit = ctx.gates.admit(&plan.list, &plan.revision) => match admit {
            Admit::Go => Ok(()),
            Admit::Superseded => {
                tracing::info!(list = %plan.list, "the manifests changed during this reconcile: stopping it to plan again");
                Err(Stop::Superseded)
            }
        },
    }
}

/// Sends `items` in batches, splitting refused batches, committing each outcome.
async fn send_all(
    ctx: &Context,
    plan: &ListPlan,
    kind: ContactKind,
    items: Vec<Pending<'_>>,
    tally: &Tally,
    acc: &mut Acc,
) -> Result<(), Stop> {
    // Each entry: a batch, and the index in `splits` of the refused batch it is half of.
    let mut stack: Vec<(&[Pending], Option<usize>)> = items
        .chunks(ctx.batch_size.max(1))
        .rev()
        .map(|c| (c, None))
        .collect();
    // Refused batches that were split: how many of their halves were accepted. When both
    // were, the refusal was about the size (a server with a smaller maximum), not about a
    // contact: every later batch of this run is cut to that half size up front, instead of
    // paying the same refusals again for each batch.
    let mut splits: Vec<usize> = Vec::new();
    let mut cap: Option<usize> = None;
    // A refusal that is about the request, not about a contact (say, the list id itself),
    // would otherwise be split down to every single contact: hundreds of wasted requests.
    // When several single contacts were refused with the same message and no request of
    // this list has succeeded, the list fails instead.
    let mut accepted = 0usize;
    let mut single_refusals: HashMap<String, usize> = HashMap::new();
    while let Some((batch, parent)) = stack.pop() {
        if let Some(c) = cap
            && batch.len() > c
        {
            stack.extend(batch.chunks(c).rev().map(|c| (c, None)));
            continue;
        }
        let entries: Vec<String> = batch.iter().map(|p| p.key.to_string()).collect();
        let request = match kind {
            ContactKind::Email => RemoveBatch::Emails(entries),
            ContactKind::ContactId => RemoveBatch::ContactIds(entries),
        };
        admit(ctx, plan).await?;
        // A store replaced under us would lose this request's outcome: stop before sending.
        ctx.store.check_file()?;
        let now = crate::plan::now_unix();
        match ctx.client.remove(plan.list.as_str(), &request, tally).await {
            Ok(outcome) => {
                accepted += 1;
                if let Some(i) = parent {
                    splits[i] += 1;
                    if splits[i] == 2 {
                        let learned = batch.len().max(1);
                        if cap.is_none_or(|c| learned < c) {
                            tracing::info!(list = %plan.list, size = learned, "AutoSend takes smaller batches; using this size for the rest of the run");
                            cap = Some(learned);
                        }
                    }
                }
                let records = account(plan, kind, batch, &outcome, acc);
                ctx.store
                    .record_batch(&plan.list, kind, &records, &plan.revision, now)?;
                ctx.progress.batch_done(&plan.list, batch.len());
            }
            Err(ApiError::Rejected {
                status, message, ..
            }) if matches!(status, 400 | 413 | 422) => {
                if batch.len() > 1 {
                    let mid = batch.len() / 2;
                    tracing::info!(list = %plan.list, size = batch.len(), status, "batch refused; splitting it in halves");
                    splits.push(0);
                    let id = Some(splits.len() - 1);
                    stack.push((&batch[mid..], id));
                    stack.push((&batch[..mid], id));
                } else {
                    let same = single_refusals.entry(message.clone()).or_default();
                    *same += 1;
                    if *same >= UNIFORM_REFUSALS && accepted == 0 {
                        return Err(Stop::Api(ApiError::Rejected {
                            status,
                            code: "REQUEST_REFUSED".into(),
                            message: format!(
                                "every request for this list is refused, down to single contacts: {message}"
                            ),
                        }));
                    }
                    let p = &batch[0];
                    let msg = format!("refused by AutoSend ({status}): {message}");
                    acc.note_error(p.key, &msg);
                    for pol in p.policies {
                        acc.per_policy.entry(*pol).or_default().failed += 1;
                    }
                    ctx.store.record_batch(
                        &plan.list,
                        kind,
                        &[(p.key, ContactOutcome::Failed(msg))],
                        &plan.revision,
                        now,
                    )?;
                    ctx.progress.batch_done(&plan.list, 1);
                }
            }
            Err(e) => return Err(Stop::Api(e)),
        }
    }
    Ok(())
}

/// What one answer establishes for each contact of its batch, tallied into `acc`.
///
/// Contacts named in `errors` failed. The others are confirmed only when the counts account
/// for them: the docs define `notInList` as the contacts not in the list, so `removed +
/// notInList` must cover every contact not named in `errors`. When they fall short there is
/// no telling which contacts were handled, so none of them is confirmed: they stay pending
/// (asserted again next sync; failed after three such answers in a row). Counts beyond the
/// batch are nonsense: clamped, with a warning, never stored as they came.
fn account<'b>(
    plan: &ListPlan,
    kind: ContactKind,
    batch: &[Pending<'b>],
    outcome: &RemoveOutcome,
    acc: &mut Acc,
) -> Vec<(&'b str, ContactOutcome)> {
    let errors = match_errors(kind, batch, &outcome.errors);
    let failed = errors.iter().filter(|e| e.is_some()).count() as u64;
    let rest = batch.len() as u64 - failed;
    let reported = outcome.removed.saturating_add(outcome.not_in_list);
    let removed = outcome.removed.min(rest);
    let not_in_list = outcome.not_in_list.min(rest - removed);
    let covered = reported >= rest;
    let mismatch = if reported > rest {
        Some("AutoSend reported more contacts than the batch held; the counts are clamped")
    } else if !covered {
        Some("AutoSend's answer does not account for every contact of the batch; they stay pending")
    } else {
        None
    };
    if let Some(what) = mismatch {
        tracing::warn!(
            list = %plan.list,
            batch = batch.len(),
            removed = outcome.removed,
            not_in_list = outcome.not_in_list,
            errors = outcome.errors.len(),
            "{what}"
        );
    }
    let mut records: Vec<(&str, ContactOutcome)> = Vec::with_capacity(batch.len());
    // The API reports counts, not names: split them over the batch's policies in
    // proportion (exact when the batch serves one policy set, as most do).
    let share = |n: u64| n as f64 / rest.max(1) as f64;
    for (p, err) in batch.iter().zip(&errors) {
        match err {
            Some(msg) => {
                acc.note_error(p.key, msg);
                for pol in p.policies {
                    acc.per_policy.entry(*pol).or_default().failed += 1;
                }
                records.push((p.key, ContactOutcome::Failed(msg.clone())));
            }
            None if covered => {
                for pol in p.policies {
                    let e = acc.per_policy.entry(*pol).or_default();
                    e.confirmed += 1;
                    e.removed += share(removed);
                    e.not_in_list += share(not_in_list);
                }
                records.push((p.key, ContactOutcome::Confirmed));
            }
            None => records.push((p.key, ContactOutcome::Unaccounted)),
        }
    }
    acc.outcome.removed += removed;
    acc.outcome.not_in_list += not_in_list;
    if !covered {
        acc.outcome.unaccounted += rest;
    }
    records
}

/// Matches the server's error items to the batch (emails case-insensitively). An item that
/// names a contact not in the batch means we cannot tell who failed: then every contact of
/// the batch is left failed, to be asserted again, rather than wrongly confirmed.
fn match_errors(
    kind: ContactKind,
    batch: &[Pending],
    errors: &[autosend::ContactError],
) -> Vec<Option<String>> {
    let mut out: Vec<Option<String>> = vec![None; batch.len()];
    if errors.is_empty() {
        return out;
    }
    let index: HashMap<&str, usize> = batch.iter().enumerate().map(|(i, p)| (p.key, i)).collect();
    for e in errors {
        let key = match kind {
            ContactKind::Email => Email::normalise(&e.contact),
            ContactKind::ContactId => e.contact.trim().to_string(),
        };
        match index.get(key.as_str()) {
            Some(&i) => out[i] = Some(e.message.clone()),
            None => {
                let msg = format!(
                    "AutoSend reported an error for {:?}, which was not in the batch; the whole batch is retried",
                    e.contact
                );
                return vec![Some(msg); batch.len()];
            }
        }
    }
    out
}

/// The condition a list's result gives its policies.
fn list_condition(plan: &ListPlan, o: &ListOutcome) -> Condition {
    match &o.result {
        ListResult::Converged => Condition::new(
            Ready::True,
            "Converged",
            format!(
                "all contacts confirmed absent (this sync: {} removed, {} not in list)",
                o.removed,
                o.not_in_list + o.observed_absent
            ),
        ),
        ListResult::PartiallyFailed => {
            let mut parts = Vec::new();
            if o.failed > 0 {
                let first = o
                    .first_errors
                    .first()
                    .map(|(_, m)| format!(", first error: {m}"))
                    .unwrap_or_default();
                parts.push(format!(
                    "{} contact(s) failed{first} (`listwarden status` lists them)",
                    o.failed
                ));
            }
            if o.unaccounted > 0 {
                parts.push(format!(
                    "{} contact(s) not accounted for by AutoSend's answers",
                    o.unaccounted
                ));
            }
            Condition::new(
                Ready::False,
                "PartiallyFailed",
                format!("{}; asserted again next sync", parts.join(", ")),
            )
        }
        ListResult::Refused(m) => Condition::new(Ready::False, "ThresholdExceeded", m.clone()),
        ListResult::ListNotFound(m) => Condition::new(
            Ready::False,
            "ListNotFound",
            format!("contact list {} does not exist: {m}", plan.list),
        ),
        ListResult::ListIsSegment => Condition::new(Ready::False, "ListIsSegment", SEGMENT_MESSAGE),
        ListResult::Unauthorized(m) => Condition::new(Ready::False, "Unauthorized", m.clone()),
        ListResult::Failed(m) => Condition::new(Ready::False, "ApiError", m.clone()),
        ListResult::StoreFailed(m) => Condition::new(Ready::False, "StoreError", m.clone()),
        ListResult::Superseded => Condition::new(
            Ready::Unknown,
            "Progressing",
            "the manifests changed during this sync; it is planned again from them",
        ),
        ListResult::Interrupted => Condition::new(
            Ready::Unknown,
            "Progressing",
            "interrupted by shutdown; the next sync resumes where this one stopped",
        ),
    }
}

/// Each policy's condition and counts, and the list's row, as one write.
fn status_write<'a>(
    ctx: &'a Context,
    policies: &'a [Policy],
    plan: &'a ListPlan,
    acc: &Acc,
    now: i64,
    contact_count: Option<u64>,
) -> StatusWrite<'a> {
    let o = &acc.outcome;
    let list_condition = list_condition(plan, o);
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
                "Converged",
                format!(
                    "all contacts confirmed absent (this sync: {} removed, {} not in list)",
                    counts.removed, counts.not_in_list
                ),
            )
        } else {
            list_condition.clone()
        };
        let rev = ctx.source_revision.as_deref().unwrap_or(&p.revision);
        let converged = condition.reason == "Converged";
        updates.push(PolicyUpdate {
            name: p.name.as_str(),
            list: Some(p.contact_list_id.as_str()),
            file: &p.origin.file,
            document: p.origin.document,
            revision: Some(&p.revision),
            attempt: Some((now, rev)),
            success: converged.then_some((now, rev)),
            counts: Some(counts),
            record_error: !converged,
            condition,
        });
    }
    for &pi in &plan.suspended {
        let p = &policies[pi];
        updates.push(PolicyUpdate {
            name: p.name.as_str(),
            list: Some(p.contact_list_id.as_str()),
            file: &p.origin.file,
            document: p.origin.document,
            revision: Some(&p.revision),
            attempt: None,
            success: None,
            counts: None,
            condition: Condition::new(
                Ready::False,
                "Suspended",
                "spec.suspend is true: loaded and validated, never applied",
            ),
            record_error: false,
        });
    }
    StatusWrite {
        policies: updates,
        list: Some((
            plan.list.as_str(),
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

/// What one pass over every list did.
#[derive(Debug, Default)]
pub struct SyncReport {
    pub outcomes: Vec<ListOutcome>,
    /// Set when the key was refused: the pass stopped there.
    pub unauthorized: Option<String>,
}

impl SyncReport {
    pub fn failed_contacts(&self) -> u64 {
        self.outcomes.iter().map(|o| o.failed + o.unaccounted).sum()
    }

    /// True when a list ended in an error other than per-contact failures.
    pub fn has_list_errors(&self) -> bool {
        self.unauthorized.is_some()
            || self.outcomes.iter().any(|o| {
                !matches!(
                    o.result,
                    ListResult::Converged | ListResult::PartiallyFailed
                )
            })
    }

    /// True when every list that reached AutoSend was "not found": more likely a wrong base
    /// URL (one without `/v1`, say) than every list id being wrong.
    pub fn all_not_found(&self) -> bool {
        let mut reached = self
            .outcomes
            .iter()
            .filter(|o| !matches!(o.result, ListResult::Converged | ListResult::Refused(_)))
            .peekable();
        reached.peek().is_some() && reached.all(|o| matches!(o.result, ListResult::ListNotFound(_)))
    }
}

/// Reconciles every list of `lists`, up to `concurrency` at a time, all sharing the client's
/// pacing budget. Lists that need no request (nothing pending, or refused by a threshold)
/// are recorded together in one transaction. A refused key cancels the lists still running
/// and marks every policy of the pass `Unauthorized`.
pub async fn sync_all(
    ctx: &Context,
    policies: Arc<Vec<Policy>>,
    lists: Vec<ListPlan>,
    concurrency: usize,
) -> SyncReport {
    let mut report = SyncReport::default();
    let (busy, quiet): (Vec<ListPlan>, Vec<ListPlan>) =
        lists.into_iter().partition(ListPlan::has_work);
    if !quiet.is_empty() {
        let now = crate::plan::now_unix();
        let outcomes: Vec<ListOutcome> = quiet.iter().map(quiet_outcome).collect();
        let writes: Vec<StatusWrite<'_>> = quiet
            .iter()
            .zip(&outcomes)
            .map(|(plan, outcome)| {
                let acc = Acc {
                    outcome: outcome.clone(),
                    per_policy: HashMap::new(),
                };
                status_write(ctx, &policies, plan, &acc, now, None)
            })
            .collect();
        match ctx.store.write_status(&writes, now) {
            Ok(()) => report.outcomes.extend(outcomes),
            Err(e) => {
                tracing::error!(error = %e, "cannot write status");
                report.outcomes.extend(outcomes.into_iter().map(|mut o| {
                    o.result = ListResult::StoreFailed(e.to_string());
                    o
                }));
            }
        }
    }

    // A child token: shutdown stops the pass, and a refused key stops only this pass.
    let auth_stop = ctx.client.cancel_token().child_token();
    let client = ctx.client.clone().with_cancel(auth_stop.clone());
    let ctx = Arc::new(Context {
        client,
        ..ctx.clone()
    });
    let limit = Arc::new(tokio::sync::Semaphore::new(concurrency.max(1)));
    let mut tasks = tokio::task::JoinSet::new();
    let mut running: HashMap<tokio::task::Id, ContactListId> = HashMap::new();
    for plan in busy {
        let (ctx, policies, limit, auth_stop) = (
            ctx.clone(),
            policies.clone(),
            limit.clone(),
            auth_stop.clone(),
        );
        let list = plan.list.clone();
        let handle = tasks.spawn(async move {
            let _permit = limit.acquire_owned().await;
            if auth_stop.is_cancelled() {
                return (plan, None);
            }
            let outcome = reconcile_list(&ctx, &policies, &plan).await;
            if matches!(outcome.result, ListResult::Unauthorized(_)) {
                auth_stop.cancel();
            }
            (plan, Some(outcome))
        });
        running.insert(handle.id(), list);
    }
    let mut skipped = Vec::new();
    while let Some(joined) = tasks.join_next_with_id().await {
        match joined {
            Ok((_, (_, Some(outcome)))) => {
                if let ListResult::Unauthorized(m) = &outcome.result {
                    report.unauthorized.get_or_insert_with(|| m.clone());
                }
                report.outcomes.push(outcome);
            }
            Ok((_, (plan, None))) => skipped.push(plan),
            Err(e) => {
                // reconcile_list catches panics itself; this is the last guard, so a list
                // never vanishes from the report (and `apply` never exits 0 for it).
                let list = running.get(&e.id()).cloned();
                tracing::error!(error = %e, "a list's reconcile task failed");
                if let Some(list) = list {
                    report.outcomes.push(ListOutcome::new(
                        list,
                        ListResult::Failed(format!("internal error: {e}")),
                    ));
                }
            }
        }
    }
    if let Some(message) = &report.unauthorized {
        let now = crate::plan::now_unix();
        let condition = Condition::new(Ready::False, "Unauthorized", message.clone());
        for o in report
            .outcomes
            .iter_mut()
            .filter(|o| o.result == ListResult::Interrupted)
        {
            o.result = ListResult::Unauthorized(message.clone());
        }
        // Lists that converged in this pass keep their condition; only those the refused key
        // stopped (mid-way, or before they started) are marked.
        let interrupted: Vec<&ContactListId> = report
            .outcomes
            .iter()
            .filter(|o| matches!(o.result, ListResult::Unauthorized(_)))
            .map(|o| &o.list)
            .chain(skipped.iter().map(|p| &p.list))
            .collect();
        mark_policies(
            &ctx.store,
            policies
                .iter()
                .filter(|p| !p.suspend && interrupted.contains(&&p.contact_list_id)),
            &condition,
            ctx.source_revision.as_deref(),
            now,
        );
        for plan in skipped {
            report.outcomes.push(ListOutcome::new(
                plan.list.clone(),
                ListResult::Unauthorized(message.clone()),
            ));
        }
    }
    report.outcomes.sort_by(|a, b| a.list.cmp(&b.list));
    report
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
    let (manifests, plan) =
        crate::plan::load_and_plan(path, options, &baselines, |l| store.records(l))?;
    record_manifests(store, &manifests, &plan.holds, crate::plan::now_unix())?;
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
    let mut load = LoadRecord {
        summary: LoadSummary {
            at: now,
            policies: manifests.policies.len() as u64,
            invalid: manifests.invalid.len() as u64,
            errors: manifests.errors().count() as u64,
            first_error: manifests.errors().next().map(ToString::to_string),
        },
        now,
        ..LoadRecord::default()
    };
    for inv in &manifests.invalid {
        if let Some(name) = &inv.name {
            load.policies.push(PolicyUpdate {
                name,
                list: inv.contact_list_id.as_deref(),
                file: &inv.origin.file,
                document: inv.origin.document,
                revision: None,
                attempt: None,
                success: None,
                counts: None,
                condition: Condition::new(Ready::False, "ManifestInvalid", inv.reason.clone()),
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
            Condition::new(Ready::False, "ManifestInvalid", first),
        ));
    }
    let held_names: HashMap<&str, &Hold> = holds.iter().map(|h| (h.policy.as_str(), h)).collect();
    for p in &manifests.policies {
        match held_names.get(p.name.as_str()) {
            Some(hold) => {
                load.held.push(Held {
                    name: p.name.as_str(),
                    revision: &hold.revision,
                    contacts: hold.after,
                });
                load.policies.push(PolicyUpdate {
                    name: p.name.as_str(),
                    list: Some(p.contact_list_id.as_str()),
                    file: &p.origin.file,
                    document: p.origin.document,
                    revision: None,
                    attempt: None,
                    success: None,
                    counts: None,
                    condition: Condition::new(Ready::False, "ThresholdExceeded", hold.to_string()),
                    record_error: true,
                });
                load.spare.push(&p.contact_list_id);
            }
            None => load.accepted.push(Accepted {
                name: p.name.as_str(),
                list: p.contact_list_id.as_str(),
                file: &p.origin.file,
                document: p.origin.document,
                contacts: (p.emails.len() + p.contact_ids.len()) as u64,
            }),
        }
    }
    // A load that found no policy at all is far more often a missing mount or a failed
    // checkout than an intent: forgetting everything would re-send everything later.
    let keepers = keepers(&manifests.policies);
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
                .collect(),
        );
        load.forget = Some(
            keepers
                .iter()
                .map(|(l, k)| (*l, k.as_ref() as &Keep<'_>))
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

/// Per list, who a policy of it still asks for.
fn keepers(policies: &[Policy]) -> Vec<(&ContactListId, Box<Keep<'_>>)> {
    let mut by_list: std::collections::BTreeMap<&ContactListId, Vec<&Policy>> =
        std::collections::BTreeMap::new();
    for p in policies {
        by_list.entry(&p.contact_list_id).or_default().push(p);
    }
    by_list
        .into_iter()
        .map(|(list, ps)| {
            let keep: Box<Keep<'_>> = Box::new(move |kind: ContactKind, contact: &str| {
                ps.iter().any(|p| match kind {
                    ContactKind::Email => p
                        .emails
                        .binary_search_by(|e| e.as_str().cmp(contact))
                        .is_ok(),
                    ContactKind::ContactId => p
                        .contact_ids
                        .binary_search_by(|e| e.as_str().cmp(contact))
                        .is_ok(),
                })
            });
            (list, keep)
        })
        .collect()
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
            name: p.name.as_str(),
            list: Some(p.contact_list_id.as_str()),
            file: &p.origin.file,
            document: p.origin.document,
            revision: Some(&p.revision),
            attempt: Some((now, source_revision.unwrap_or(&p.revision))),
            success: None,
            counts: None,
            condition: condition.clone(),
            record_error: true,
        })
        .collect();
    if let Err(e) = store.write_policies(&updates, now) {
        tracing::error!(error = %e, "cannot write status");
    }
}
