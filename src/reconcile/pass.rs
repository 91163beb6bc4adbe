//! One pass over every list of a plan: what `apply` runs. Lists that need no request are
//! recorded together in one transaction; the others are reconciled up to `concurrency` at a
//! time, sharing the key's pacing budget.

use std::collections::HashMap;
use std::sync::Arc;

use super::record::status_write;
use super::{
    Acc, Context, ListOutcome, ListResult, mark_unauthorized, quiet_outcome, reconcile_list,
};
use crate::contact::ContactListId;
use crate::manifest::Policy;
use crate::plan::ListPlan;
use crate::store::StatusWrite;

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
    // Policies the forget threshold holds keep their own condition whatever happens here.
    let held: std::collections::HashSet<&str> = lists
        .iter()
        .flat_map(|l| l.held.iter().map(|&i| policies[i].name.as_str()))
        .collect();
    let (busy, quiet): (Vec<ListPlan>, Vec<ListPlan>) =
        lists.into_iter().partition(ListPlan::has_work);
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
        let now = crate::clock::now_unix();
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
        mark_unauthorized(
            &ctx.store,
            policies
                .iter()
                .filter(|p| interrupted.contains(&&p.contact_list_id)),
            &held,
            message,
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
