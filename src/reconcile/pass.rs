//! One pass over every list of a plan: what `apply` runs. Lists that need no request are
//! recorded together in one transaction; the others are reconciled up to `concurrency` at a
//! time, sharing the key's pacing budget.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use super::record::status_write;
use super::{
    Acc, Context, ListOutcome, ListResult, mark_unauthorized, quiet_outcome, reconcile_list,
};
use crate::account::MAX_TOTAL_CONCURRENCY;
use crate::contact::{AccountName, ListKey};
use crate::manifest::Policy;
use crate::plan::ListPlan;
use crate::store::StatusWrite;

/// What one pass over every list did.
#[derive(Debug, Default)]
pub struct SyncReport {
    pub outcomes: Vec<ListOutcome>,
    /// The accounts whose key was refused (or could not be read), with why: each one's
    /// lists stopped there, the other accounts' went on.
    pub unauthorized: BTreeMap<AccountName, String>,
}

impl SyncReport {
    pub fn failed_contacts(&self) -> u64 {
        self.outcomes.iter().map(|o| o.failed + o.unaccounted).sum()
    }

    /// True when a list ended in an error other than per-contact failures.
    pub fn has_list_errors(&self) -> bool {
        !self.unauthorized.is_empty()
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

/// Reconciles every list of `lists`, up to `concurrency` at a time per account (or the
/// account's own bound), each account's lists sharing its client's pacing budget. Lists that
/// need no request (nothing pending, or refused by a threshold) are recorded together in one
/// transaction. A refused key cancels its account's lists still running and marks their
/// policies `Unauthorized`; other accounts go on.
pub async fn sync_all(
    ctx: &Context,
    policies: Arc<Vec<Policy>>,
    lists: Vec<ListPlan>,
    concurrency: usize,
) -> SyncReport {
    let mut report = SyncReport::default();
    // Policies the forget threshold holds keep their own condition whatever happens here.
    let held: std::collections::HashSet<&str> = lists
        .iter()
        .flat_map(|l| l.held.iter().map(|&i| policies[i].name.as_str()))
        .collect();
    let (busy, quiet): (Vec<ListPlan>, Vec<ListPlan>) =
        // A list whose account has no client is not quiet: `reconcile_list` fails it.
        lists
            .into_iter()
            .partition(|l| l.has_work() || ctx.clients.get(&l.list.account).is_err());
    if !quiet.is_empty() {
        let now = crate::clock::now_unix();
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

    // A child token per account: shutdown stops the pass, and a refused key stops only its
    // own account's lists, in this pass.
    let mut auth_stops: BTreeMap<AccountName, CancellationToken> = BTreeMap::new();
    let clients = ctx.clients.map(|account, client| {
        let stop = client.cancel_token().child_token();
        auth_stops.insert(account.clone(), stop.clone());
        client.with_cancel(stop)
    });
    let ctx = Arc::new(Context {
        clients,
        ..ctx.clone()
    });
    let total = Arc::new(Semaphore::new(MAX_TOTAL_CONCURRENCY));
    let mut per_account: BTreeMap<AccountName, Arc<Semaphore>> = BTreeMap::new();
    let mut tasks = tokio::task::JoinSet::new();
    let mut running: HashMap<tokio::task::Id, ListKey> = HashMap::new();
    for plan in busy {
        let account = plan.list.account.clone();
        let limit = per_account
            .entry(account.clone())
            .or_insert_with(|| {
                Arc::new(Semaphore::new(
                    ctx.clients.concurrency(&account, concurrency),
                ))
            })
            .clone();
        // An account without a client has no token: its lists fail at once, alone.
        let auth_stop = auth_stops.get(&account).cloned().unwrap_or_default();
        let (ctx, policies, total) = (ctx.clone(), policies.clone(), total.clone());
        let list = plan.list.clone();
        let handle = tasks.spawn(async move {
            // The account's own slot first: waiting for it must not hold a slot of the total
            // that another account's list could use.
            let _mine = limit.acquire_owned().await;
            let _any = total.acquire_owned().await;
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
                    report
                        .unauthorized
                        .entry(outcome.list.account.clone())
                        .or_insert_with(|| m.clone());
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
    for (account, message) in &report.unauthorized {
        let now = crate::clock::now_unix();
        for o in report
            .outcomes
            .iter_mut()
            .filter(|o| o.list.account == *account && o.result == ListResult::Interrupted)
        {
            o.result = ListResult::Unauthorized(message.clone());
        }
        // Lists that converged in this pass keep their condition; only those the refused key
        // stopped (mid-way, or before they started) are marked.
        let interrupted: Vec<&ListKey> = report
            .outcomes
            .iter()
            .filter(|o| {
                o.list.account == *account && matches!(o.result, ListResult::Unauthorized(_))
            })
            .map(|o| &o.list)
            .chain(
                skipped
                    .iter()
                    .filter(|p| p.list.account == *account)
                    .map(|p| &p.list),
            )
            .collect();
        mark_unauthorized(
            &ctx.store,
            policies.iter().filter(|p| interrupted.contains(&&p.list)),
            &held,
            message,
            ctx.source_revision.as_deref(),
            now,
        );
    }
    for plan in skipped {
        let message = report
            .unauthorized
            .get(&plan.list.account)
            .cloned()
            .unwrap_or_default();
        report.outcomes.push(ListOutcome::new(
            plan.list.clone(),
            ListResult::Unauthorized(message),
        ));
    }
    report.outcomes.sort_by(|a, b| a.list.cmp(&b.list));
    report
}
