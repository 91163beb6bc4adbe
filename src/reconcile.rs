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
//! 4. batches are sent one at a time; the outcome of each is committed to the store before
//!    the next is sent. A batch the server refuses (400/413) is split in halves down to
//!    single contacts, so one poisoned entry fails alone and by name;
//! 5. every policy of the list gets its condition and counts.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::autosend::{ApiError, Client, RemoveBatch, Tally};
use crate::contact::{ContactKind, ContactListId, Email};
use crate::desired::PolicySet;
use crate::manifest::{Policy, Strategy};
use crate::observe;
use crate::plan::{Assertion, ListPlan};
use crate::store::{Condition, ContactOutcome, Keep, ListSync, PolicyCounts, Ready, Store};

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
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "result", content = "detail", rename_all = "camelCase")]
pub enum ListResult {
    /// Every desired contact is confirmed absent.
    Converged,
    /// Some contacts failed (recorded; retried next run).
    PartiallyFailed,
    /// The safety threshold stopped this list; nothing was sent.
    Refused(String),
    ListNotFound(String),
    ListIsSegment,
    /// 401/402/403: the whole run stops.
    Unauthorized(String),
    /// Another API error (server down after retries, protocol error...).
    Failed(String),
    /// Shutdown before the list finished; the next run resumes.
    Interrupted,
}

impl ListResult {
    pub fn is_ok(&self) -> bool {
        matches!(self, ListResult::Converged)
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct ListOutcome {
    pub list: ContactListId,
    pub result: ListResult,
    pub removed: u64,
    pub not_in_list: u64,
    pub failed: u64,
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
        match run(ctx, plan, &tally, &mut acc, &mut contact_count).await {
            Ok(()) if acc.outcome.failed > 0 => ListResult::PartiallyFailed,
            Ok(()) => ListResult::Converged,
            Err(result) => result,
        }
    };
    acc.outcome.result = result;
    acc.outcome.requests = tally.requests();
    acc.outcome.rate_limited = tally.rate_limited();
    acc.outcome.duration = started.elapsed();
    record_status(ctx, policies, plan, &acc, now, contact_count);
    acc.outcome
}

fn classify_error(e: ApiError) -> ListResult {
    match e {
        ApiError::Auth { .. } => ListResult::Unauthorized(e.to_string()),
        ApiError::NotFound { .. } => ListResult::ListNotFound(e.to_string()),
        ApiError::Cancelled => ListResult::Interrupted,
        other => ListResult::Failed(other.to_string()),
    }
}

async fn run(
    ctx: &Context,
    plan: &ListPlan,
    tally: &Tally,
    acc: &mut Acc,
    contact_count: &mut Option<u64>,
) -> Result<(), ListResult> {
    let info = ctx
        .client
        .get_list(plan.list.as_str(), tally)
        .await
        .map_err(classify_error)?;
    if info.is_segment() {
        return Err(ListResult::ListIsSegment);
    }
    *contact_count = Some(info.contact_count);
    let last_drift = ctx.store.last_drift(plan.list.as_str()).unwrap_or(None);
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
            .await
            .map_err(classify_error)?;
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
            let _ = ctx.store.record_drift(
                plan.list.as_str(),
                drift.len() as u64,
                crate::plan::now_unix(),
            );
            record_observed_absent(ctx, plan, &members, acc).map_err(classify_error)?;
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
    send_all(ctx, plan, ContactKind::Email, emails, tally, acc)
        .await
        .map_err(classify_error)?;
    send_all(ctx, plan, ContactKind::ContactId, ids, tally, acc)
        .await
        .map_err(classify_error)?;
    Ok(())
}

const SEGMENT_MESSAGE: &str = "this contact list is a segment: its members are computed from \
    filters and nothing can be removed from it; point the policy at a real list";

fn store_err(e: crate::store::StoreError) -> ApiError {
    ApiError::Protocol(format!("cannot record progress in the state store: {e}"))
}

fn record_observed_absent(
    ctx: &Context,
    plan: &ListPlan,
    members: &observe::Members,
    acc: &mut Acc,
) -> Result<(), ApiError> {
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
        .record_batch(&plan.list, ContactKind::Email, &emails, &plan.revision, now)
        .map_err(store_err)?;
    ctx.store
        .record_batch(
            &plan.list,
            ContactKind::ContactId,
            &ids,
            &plan.revision,
            now,
        )
        .map_err(store_err)?;
    Ok(())
}

/// Sends `items` in batches, splitting refused batches, committing each outcome.
async fn send_all(
    ctx: &Context,
    plan: &ListPlan,
    kind: ContactKind,
    items: Vec<Pending<'_>>,
    tally: &Tally,
    acc: &mut Acc,
) -> Result<(), ApiError> {
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
                let errors = match_errors(kind, batch, &outcome.errors);
                let accounted = outcome.removed + outcome.not_in_list + outcome.errors.len() as u64;
                if accounted < batch.len() as u64 {
                    // The contract implies partial failure only through `errors`, so the
                    // contacts it does not name are confirmed; the mismatch is worth a look.
                    tracing::warn!(
                        list = %plan.list,
                        batch = batch.len(),
                        removed = outcome.removed,
                        not_in_list = outcome.not_in_list,
                        errors = outcome.errors.len(),
                        "AutoSend accounted for fewer contacts than the batch held"
                    );
                }
                let mut records: Vec<(&str, ContactOutcome)> = Vec::with_capacity(batch.len());
                let failed: usize = errors.iter().filter(|e| e.is_some()).count();
                let confirmed = batch.len() - failed;
                // The API reports counts, not names: split them over the batch's policies in
                // proportion (exact when the batch serves one policy set, as most do).
                let share = |n: u64| n as f64 / confirmed.max(1) as f64;
                for (p, err) in batch.iter().zip(&errors) {
                    match err {
                        Some(msg) => {
                            acc.note_error(p.key, msg);
                            for pol in p.policies {
                                acc.per_policy.entry(*pol).or_default().failed += 1;
                            }
                            records.push((p.key, ContactOutcome::Failed(msg.clone())));
                        }
                        None => {
                            for pol in p.policies {
                                let e = acc.per_policy.entry(*pol).or_default();
                                e.confirmed += 1;
                                e.removed += share(outcome.removed);
                                e.not_in_list += share(outcome.not_in_list);
                            }
                            records.push((p.key, ContactOutcome::Confirmed));
                        }
                    }
                }
                acc.outcome.removed += outcome.removed;
                acc.outcome.not_in_list += outcome.not_in_list;
                ctx.store
                    .record_batch(&plan.list, kind, &records, &plan.revision, now)
                    .map_err(store_err)?;
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
                        return Err(ApiError::Rejected {
                            status,
                            code: "REQUEST_REFUSED".into(),
                            message: format!(
                                "every request for this list is refused, down to single contacts: {message}"
                            ),
                        });
                    }
                    let p = &batch[0];
                    let msg = format!("refused by AutoSend ({status}): {message}");
                    acc.note_error(p.key, &msg);
                    for pol in p.policies {
                        acc.per_policy.entry(*pol).or_default().failed += 1;
                    }
                    ctx.store
                        .record_batch(
                            &plan.list,
                            kind,
                            &[(p.key, ContactOutcome::Failed(msg))],
                            &plan.revision,
                            now,
                        )
                        .map_err(store_err)?;
                    ctx.progress.batch_done(&plan.list, 1);
                }
            }
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Matches the server's error items to the batch (emails case-insensitively). An item that
/// names a contact not in the batch means we cannot tell who failed: then every contact of
/// the batch is left failed, to be asserted again, rather than wrongly confirmed.
fn match_errors(
    kind: ContactKind,
    batch: &[Pending],
    errors: &[crate::autosend::ContactError],
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

/// Writes each policy's condition and counts, and the list's row.
fn record_status(
    ctx: &Context,
    policies: &[Policy],
    plan: &ListPlan,
    acc: &Acc,
    now: i64,
    contact_count: Option<u64>,
) {
    let o = &acc.outcome;
    let store = &ctx.store;
    let (ready, reason, message) = match &o.result {
        ListResult::Converged => (
            Ready::True,
            "Converged",
            format!(
                "all contacts confirmed absent (this sync: {} removed, {} not in list)",
                o.removed,
                o.not_in_list + o.observed_absent
            ),
        ),
        ListResult::PartiallyFailed => (
            Ready::False,
            "PartiallyFailed",
            format!(
                "{} contact(s) failed, retried next sync; first: {}",
                o.failed,
                o.first_errors
                    .first()
                    .map(|(c, m)| format!("{c}: {m}"))
                    .unwrap_or_default()
            ),
        ),
        ListResult::Refused(m) => (Ready::False, "ThresholdExceeded", m.clone()),
        ListResult::ListNotFound(m) => (
            Ready::False,
            "ListNotFound",
            format!("contact list {} does not exist: {m}", plan.list),
        ),
        ListResult::ListIsSegment => (Ready::False, "ListIsSegment", SEGMENT_MESSAGE.into()),
        ListResult::Unauthorized(m) => (Ready::False, "Unauthorized", m.clone()),
        ListResult::Failed(m) => (Ready::False, "ApiError", m.clone()),
        ListResult::Interrupted => (
            Ready::Unknown,
            "Progressing",
            "interrupted by shutdown; the next sync resumes where this one stopped".into(),
        ),
    };
    let ok = o.result.is_ok();
    let source_rev = |policy: &Policy| {
        ctx.source_revision
            .clone()
            .unwrap_or_else(|| policy.revision.clone())
    };
    let log_err = |e: crate::store::StoreError| tracing::error!(error = %e, "cannot write status");
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
        // A list-level result applies to each policy; a per-policy condition refines it.
        let condition = if ok || a.failed == 0 && matches!(o.result, ListResult::PartiallyFailed) {
            Condition::new(
                Ready::True,
                "Converged",
                format!(
                    "all contacts confirmed absent (this sync: {} removed, {} not in list)",
                    counts.removed, counts.not_in_list
                ),
            )
        } else {
            Condition::new(ready, reason, message.clone())
        };
        let rev = source_rev(p);
        let converged = condition.reason == "Converged";
        let last_error = (!converged).then_some(condition.message.as_str());
        if let Err(e) = store.update_policy(
            p.name.as_str(),
            Some(p.contact_list_id.as_str()),
            &p.origin.file,
            p.origin.document,
            Some(&p.revision),
            Some((now, &rev)),
            converged.then_some((now, rev.as_str())),
            Some(&counts),
            &condition,
            last_error,
            now,
        ) {
            log_err(e);
        }
    }
    for &pi in &plan.suspended {
        let p = &policies[pi];
        let condition = Condition::new(
            Ready::False,
            "Suspended",
            "spec.suspend is true: loaded and validated, never applied",
        );
        if let Err(e) = store.update_policy(
            p.name.as_str(),
            Some(p.contact_list_id.as_str()),
            &p.origin.file,
            p.origin.document,
            Some(&p.revision),
            None,
            None,
            None,
            &condition,
            None,
            now,
        ) {
            log_err(e);
        }
    }
    let sync = ListSync {
        attempt_at: now,
        success: ok,
        error: (!ok).then(|| message.clone()),
        strategy: o.strategy.clone(),
        strategy_reason: o.strategy_reason.clone(),
        requests: o.requests,
        rate_limited: o.rate_limited,
        contact_count,
    };
    if let Err(e) = store.update_list(plan.list.as_str(), &sync) {
        log_err(e);
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
        self.outcomes.iter().map(|o| o.failed).sum()
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
}

/// Reconciles every list of `lists`, up to `concurrency` at a time, all sharing the client's
/// pacing budget. A refused key cancels the lists still running and marks every policy of
/// the pass `Unauthorized`.
pub async fn sync_all(
    ctx: &Context,
    policies: Arc<Vec<Policy>>,
    lists: Vec<ListPlan>,
    concurrency: usize,
) -> SyncReport {
    // A child token: shutdown stops the pass, and a refused key stops only this pass.
    let auth_stop = ctx.client.cancel_token().child_token();
    let client = ctx.client.clone().with_cancel(auth_stop.clone());
    let ctx = Arc::new(Context {
        client,
        ..ctx.clone()
    });
    let limit = Arc::new(tokio::sync::Semaphore::new(concurrency.max(1)));
    let mut tasks = tokio::task::JoinSet::new();
    for plan in lists {
        let (ctx, policies, limit, auth_stop) = (
            ctx.clone(),
            policies.clone(),
            limit.clone(),
            auth_stop.clone(),
        );
        tasks.spawn(async move {
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
    }
    let mut report = SyncReport::default();
    let mut skipped = Vec::new();
    while let Some(joined) = tasks.join_next().await {
        match joined {
            Ok((_, Some(outcome))) => {
                if let ListResult::Unauthorized(m) = &outcome.result {
                    report.unauthorized.get_or_insert_with(|| m.clone());
                }
                report.outcomes.push(outcome);
            }
            Ok((plan, None)) => skipped.push(plan),
            Err(e) => tracing::error!(error = %e, "a list's reconcile task panicked"),
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

/// Everything `apply` does before its first request: load and plan against the store, then
/// record what the load says about policies. The daemon does the same per list.
pub fn prepare(
    store: &Store,
    path: &std::path::Path,
    options: crate::plan::PlanOptions,
) -> Result<(crate::manifest::Manifests, crate::plan::Plan), crate::store::StoreError> {
    let (manifests, plan) = crate::plan::load_and_plan(path, options, |l| store.records(l))?;
    record_manifests(store, &manifests, crate::plan::now_unix())?;
    Ok((manifests, plan))
}

/// Records what a load says about policies, before any API call: invalid policies get
/// `ManifestInvalid`, policies of a file that no longer parses too, policies whose manifest
/// is gone are dropped, and (only after a load without errors, so a broken manifest never
/// makes listwarden forget and later re-send) contacts no policy asks for are forgotten.
pub fn record_manifests(
    store: &Store,
    manifests: &crate::manifest::Manifests,
    now: i64,
) -> Result<(), crate::store::StoreError> {
    for inv in &manifests.invalid {
        if let Some(name) = &inv.name {
            let condition = Condition::new(Ready::False, "ManifestInvalid", inv.reason.clone());
            store.update_policy(
                name,
                inv.contact_list_id.as_deref(),
                &inv.origin.file,
                inv.origin.document,
                None,
                None,
                None,
                None,
                &condition,
                Some(&inv.reason),
                now,
            )?;
        }
    }
    let unparsed: Vec<&std::path::Path> = manifests
        .files
        .iter()
        .filter(|f| !f.parsed)
        .map(|f| f.path.as_path())
        .collect();
    for file in &unparsed {
        let first = manifests
            .errors()
            .find(|d| d.file == *file)
            .map(|d| d.to_string())
            .unwrap_or_else(|| "the manifest cannot be parsed".into());
        store.mark_file_policies(
            file,
            &Condition::new(Ready::False, "ManifestInvalid", first),
            now,
        )?;
    }
    let keep: Vec<&str> = manifests
        .policies
        .iter()
        .map(|p| p.name.as_str())
        .chain(manifests.invalid.iter().filter_map(|p| p.name.as_deref()))
        .collect();
    // A load that found no policy at all is far more often a missing mount or a failed
    // checkout than an intent: forgetting everything would re-send everything later.
    if manifests.policies.is_empty() {
        tracing::warn!("no policy loaded: nothing is forgotten from the state store");
        return Ok(());
    }
    store.prune_policies(&keep, &unparsed)?;
    if !manifests.has_errors() {
        forget_unlisted(store, &manifests.policies)?;
    }
    Ok(())
}

fn forget_unlisted(store: &Store, policies: &[Policy]) -> Result<u64, crate::store::StoreError> {
    let mut by_list: std::collections::BTreeMap<&ContactListId, Vec<&Policy>> =
        std::collections::BTreeMap::new();
    for p in policies {
        by_list.entry(&p.contact_list_id).or_default().push(p);
    }
    let keepers: Vec<(&ContactListId, Box<Keep<'_>>)> = by_list
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
        .collect();
    let refs: Vec<(&ContactListId, &Keep<'_>)> =
        keepers.iter().map(|(l, k)| (*l, k.as_ref())).collect();
    let n = store.forget_unlisted(&refs)?;
    if n > 0 {
        tracing::info!(
            forgotten = n,
            "forgot contacts that no policy asks for any more"
        );
    }
    Ok(n)
}

/// Sets `condition` on each of `policies` (e.g. `Unauthorized` on every policy a refused key
/// stopped, not only the one whose request got the 401).
pub fn mark_policies<'a>(
    store: &Store,
    policies: impl Iterator<Item = &'a Policy>,
    condition: &Condition,
    source_revision: Option<&str>,
    now: i64,
) {
    for p in policies {
        let attempted = source_revision.unwrap_or(&p.revision);
        if let Err(e) = store.update_policy(
            p.name.as_str(),
            Some(p.contact_list_id.as_str()),
            &p.origin.file,
            p.origin.document,
            Some(&p.revision),
            Some((now, attempted)),
            None,
            None,
            condition,
            Some(&condition.message),
            now,
        ) {
            tracing::error!(error = %e, "cannot write status");
        }
    }
}
