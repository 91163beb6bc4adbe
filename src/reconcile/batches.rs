//! Sending a list's contacts in batches: one request at a time, each outcome committed before
//! the next; refused batches split down to the contact at fault; an answer trusted only for
//! what it accounts for.

use std::collections::HashMap;

use autosend::{ApiError, RemoveBatch, RemoveOutcome, Tally};

use super::{Acc, AtTheGate, Context, Stop};
use crate::contact::{ContactKind, Email};
use crate::desired::PolicySet;
use crate::plan::{Assertion, ListPlan};
use crate::store::ContactOutcome;

/// Single contacts refused alike, with nothing accepted, before a list is failed as a whole.
const UNIFORM_REFUSALS: usize = 3;

/// One contact to assert, kind-erased for batching.
pub(super) struct Pending<'a> {
    key: &'a str,
    policies: &'a PolicySet,
}

pub(super) fn pending<'a, K: AsRef<str>>(items: &'a [Assertion<K>]) -> Vec<Pending<'a>> {
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
pub(super) fn present<'a, K: AsRef<str>>(
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

/// Sends `items` in batches, splitting refused batches, committing each outcome.
pub(super) async fn send_all(
    ctx: &Context,
    client: &autosend::Client,
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
        // A store replaced under us would lose this request's outcome: stop before sending.
        ctx.store.check_file()?;
        let now = crate::clock::now_unix();
        let gate = AtTheGate {
            gates: &ctx.gates,
            list: &plan.list,
            revision: &plan.revision,
        };
        let sent = client
            .remove_admitted(plan.list.as_str(), &request, tally, Some(&gate))
            .await;
        match sent {
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
                ctx.store.record_batch(&plan.list, kind, &records, now)?;
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
