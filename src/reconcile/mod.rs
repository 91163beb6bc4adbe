//! Plan -> AutoSend calls -> the state store: converging contact lists.
//!
//! [`reconcile_list`] is the one function `apply` and the daemon both call for a list. It is
//! level-triggered and idempotent: everything it needs is in the plan (computed from the
//! manifests and the store) and it never depends on why it was called. Per list:
//!
//! 1. a refused plan (safety threshold) or an empty one returns at once;
//! 2. a pre-flight `GET /contact-lists/{id}`: a missing list or a segment fails this list
//!    only, a refused key stops the run;
//! 3. the strategy is chosen (assert, or observe the list's members first: see
//!    [`crate::observe`]);
//! 4. batches are sent one at a time ([`batches`]), each after the list's
//!    [gate](crate::gate) lets it through; the outcome of each is committed to the store
//!    before the next is sent;
//! 5. every policy of the list gets its condition and counts, in one transaction
//!    ([`record`]).
//!
//! [`pass`] runs every list of a plan (the `apply` pass), [`record`] also writes what a
//! manifest load says. A panic inside one list's reconcile is caught and fails that list
//! (`ApiError`), so it is retried with backoff and never wedges the daemon or reads as
//! success.
//!
//! A little over 500 lines: the types every part of the reconcile shares ([`Context`],
//! [`ListResult`], [`ListOutcome`]) and the steps of one list, in the order they run.

mod batches;
mod pass;
mod record;

use std::collections::HashMap;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::{Duration, Instant};

use autosend::{ApiError, Client, Tally};
use futures_util::FutureExt;
use serde::Serialize;

use crate::account::Clients;
use crate::condition::{Condition, Ready, Reason};
use crate::contact::{ContactKind, ListKey};
use crate::gate::{Admit, Gates};
use crate::manifest::{Policy, Strategy};
use crate::observe;
use crate::plan::ListPlan;
use crate::store::{ContactOutcome, Store, StoreError};
use batches::{pending, present, send_all};
pub use pass::{SyncReport, sync_all};
use record::status_write;
pub use record::{
    mark_policies, mark_unauthorized, prepare, record_manifests, record_manifests_since,
};

/// How many failing contacts a summary quotes.
const FIRST_ERRORS: usize = 5;

/// Told about progress, for a progress bar or log lines. Default: nothing.
pub trait Progress: Send + Sync {
    fn list_started(&self, _list: &ListKey, _contacts: usize) {}
    fn batch_done(&self, _list: &ListKey, _contacts: usize) {}
}

pub struct NoProgress;
impl Progress for NoProgress {}

/// What `reconcile_list` needs besides the plan.
#[derive(Clone)]
pub struct Context {
    /// Each account's client: a list is reconciled with its account's.
    pub clients: Clients,
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
    /// A context for one client (the default account's), with no progress reporting, no
    /// source revision and no gates.
    pub fn new(client: Client, store: Arc<Store>, batch_size: usize) -> Context {
        Context::for_accounts(Clients::single(client), store, batch_size)
    }

    /// [`Context::new`], for every account's client.
    pub fn for_accounts(clients: Clients, store: Arc<Store>, batch_size: usize) -> Context {
        Context {
            clients,
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
    pub list: ListKey,
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
    pub fn new(list: ListKey, result: ListResult) -> ListOutcome {
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
                ApiError::Withdrawn(_) => ListResult::Superseded,
                ApiError::Auth { .. } => ListResult::Unauthorized(e.to_string()),
                ApiError::NotFound { .. } => ListResult::ListNotFound(e.to_string()),
                ApiError::Cancelled => ListResult::Interrupted,
                other => ListResult::Failed(other.to_string()),
            },
            Stop::Store(e) => ListResult::StoreFailed(e.to_string()),
            Stop::Segment => ListResult::ListIsSegment,
        }
    }
}

impl ListOutcome {
    /// The condition this outcome gives the list's policies.
    pub fn condition(&self) -> Condition {
        let o = self;
        match &o.result {
            ListResult::Converged => Condition::new(
                Ready::True,
                Reason::Converged,
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
                    Reason::PartiallyFailed,
                    format!("{}; asserted again next sync", parts.join(", ")),
                )
            }
            ListResult::Refused(m) => {
                Condition::new(Ready::False, Reason::ThresholdExceeded, m.clone())
            }
            ListResult::ListNotFound(m) => Condition::new(
                Ready::False,
                Reason::ListNotFound,
                format!("contact list {} does not exist: {m}", o.list),
            ),
            ListResult::ListIsSegment => {
                Condition::new(Ready::False, Reason::ListIsSegment, SEGMENT_MESSAGE)
            }
            ListResult::Unauthorized(m) => {
                Condition::new(Ready::False, Reason::Unauthorized, m.clone())
            }
            ListResult::Failed(m) => Condition::new(Ready::False, Reason::ApiError, m.clone()),
            ListResult::StoreFailed(m) => {
                Condition::new(Ready::False, Reason::StoreError, m.clone())
            }
            ListResult::Superseded => Condition::new(
                Ready::Unknown,
                Reason::Progressing,
                "the manifests changed during this sync; it is planned again from them",
            ),
            ListResult::Interrupted => Condition::new(
                Ready::Unknown,
                Reason::Progressing,
                "interrupted by shutdown; the next sync resumes where this one stopped",
            ),
        }
    }
}

/// Converges one list according to its plan, recording everything in the store.
pub async fn reconcile_list(ctx: &Context, policies: &[Policy], plan: &ListPlan) -> ListOutcome {
    let started = Instant::now();
    let now = crate::clock::now_unix();
    let tally = Tally::default();
    let mut acc = Acc {
        outcome: ListOutcome::new(plan.list.clone(), ListResult::Converged),
        per_policy: HashMap::new(),
    };
    let mut contact_count = None;
    let result = match (ctx.clients.get(&plan.list.account), &plan.refused) {
        // The account's key could not be read: its lists fail, even those with nothing to
        // send (no change could be applied to them), and no other account's.
        (Err(why), _) => ListResult::Unauthorized(why),
        (Ok(_), Some(refusal)) => ListResult::Refused(refusal.to_string()),
        (Ok(_), None) if plan.to_assert() == 0 => ListResult::Converged,
        (Ok(client), None) => {
            ctx.progress.list_started(&plan.list, plan.to_assert());
            let converge =
                AssertUnwindSafe(run(ctx, client, plan, &tally, &mut acc, &mut contact_count));
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
    client: &Client,
    plan: &ListPlan,
    tally: &Tally,
    acc: &mut Acc,
    contact_count: &mut Option<u64>,
) -> Result<(), Stop> {
    let info = client.get_list(plan.list.as_str(), tally).await?;
    if info.is_segment() {
        return Err(Stop::Segment);
    }
    *contact_count = info.contact_count;
    let last_drift = ctx.store.last_drift(&plan.list)?;
    let choice = observe::choose(
        plan,
        info.contact_count,
        ctx.batch_size,
        client.rate_limits(),
        last_drift,
    );
    let mut reason = choice.reason.clone();
    let mut members = None;
    if choice.strategy() == Strategy::Observe {
        members = observe::read_members(
            client,
            plan.list.as_str(),
            info.contact_count.unwrap_or(0),
            tally,
        )
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
            ctx.store
                .record_drift(&plan.list, drift.len() as u64, crate::clock::now_unix())?;
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
    send_all(ctx, client, plan, ContactKind::Email, emails, tally, acc).await?;
    send_all(ctx, client, plan, ContactKind::ContactId, ids, tally, acc).await?;
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
    let now = crate::clock::now_unix();
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
        .record_batch(&plan.list, ContactKind::Email, &emails, now)?;
    ctx.store
        .record_batch(&plan.list, ContactKind::ContactId, &ids, now)?;
    Ok(())
}

/// The list's gate, asked by the client before every attempt of a remove (the first and each
/// retry): it holds the request while the manifests may be changing, and withdraws it when
/// the list's desired revision is no longer the one the plan was made from.
struct AtTheGate<'a> {
    gates: &'a Gates,
    list: &'a ListKey,
    revision: &'a str,
}

impl autosend::Admission for AtTheGate<'_> {
    fn admit(
        &self,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), ApiError>> + Send + '_>>
    {
        Box::pin(async move {
            match self.gates.admit(self.list, self.revision).await {
                Admit::Go => Ok(()),
                Admit::Superseded => {
                    tracing::info!(list = %self.list, "the manifests changed during this reconcile: stopping it to plan again");
                    Err(ApiError::Withdrawn(
                        "the manifests changed; the list is planned again".into(),
                    ))
                }
            }
        })
    }
}
