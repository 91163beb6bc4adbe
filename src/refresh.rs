//! `plan --refresh`: read every list's members from AutoSend and report the drift, the
//! desired-absent contacts present in it now. Read-only: it never removes anything.
//!
//! The report is a stable, versioned JSON document (README: "Plan JSON"), and a text for
//! people.

use std::fmt::Write as _;

use autosend::Tally;

use crate::account::Clients;
use serde::Serialize;

use crate::manifest::Manifests;
use crate::plan::Plan;

pub const REFRESH_FORMAT_VERSION: u32 = 1;

#[derive(Serialize)]
pub struct RefreshList<'a> {
    pub account: &'a str,
    pub contact_list_id: &'a str,
    pub contact_count: Option<u64>,
    pub drift: Option<usize>,
    pub drift_by_policy: Vec<PolicyDrift<'a>>,
    /// What `auto` picks for this list now, with both costs (the drift just read makes the
    /// observe cost exact).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub strategy: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub strategy_reason: Option<String>,
    pub requests: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The contacts present, only with `--verbose`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub present: Option<Vec<&'a str>>,
}

#[derive(Serialize)]
pub struct PolicyDrift<'a> {
    pub policy: &'a str,
    pub drift: usize,
}

#[derive(Serialize)]
pub struct RefreshDocument<'a> {
    pub format_version: u32,
    pub path: String,
    pub drift: usize,
    pub lists: Vec<RefreshList<'a>>,
}

/// Reads every list of `plan` (one at a time: the key's budget is shared anyway) and reports
/// its drift. A list that cannot be read is reported with its error; the others go on.
pub async fn refresh<'a>(
    clients: &Clients,
    manifests: &'a Manifests,
    plan: &'a Plan,
    path: &str,
    verbose: bool,
) -> RefreshDocument<'a> {
    let mut lists = Vec::new();
    let mut total_drift = 0;
    for l in &plan.lists {
        let tally = Tally::default();
        let client = clients.get(&l.list.account);
        let read = async {
            // An account without a client: its lists report why, the others are read.
            let client = client.as_ref().map_err(|e| e.clone())?;
            let info = client
                .get_list(l.list.as_str(), &tally)
                .await
                .map_err(|e| e.to_string())?;
            let members = crate::observe::read_members(
                client,
                l.list.as_str(),
                info.contact_count.unwrap_or(0),
                &tally,
            )
            .await
            .map_err(|e| e.to_string())?;
            Ok::<_, String>((info, members))
        }
        .await;
        let mut entry = RefreshList {
            account: l.list.account.as_str(),
            contact_list_id: l.list.as_str(),
            contact_count: None,
            drift: None,
            drift_by_policy: Vec::new(),
            strategy: None,
            strategy_reason: None,
            requests: tally.requests(),
            error: None,
            present: None,
        };
        match read {
            Ok((info, Some(members))) => {
                let drift = crate::observe::drift(&l.desired, &members);
                total_drift += drift.len();
                entry.contact_count = info.contact_count;
                entry.drift = Some(drift.len());
                for (p, n) in crate::observe::drift_by_policy(&l.desired, &members) {
                    entry.drift_by_policy.push(PolicyDrift {
                        policy: manifests.policies[p].name.as_str(),
                        drift: n,
                    });
                }
                let choice = crate::observe::choose(
                    l,
                    info.contact_count,
                    plan.options.batch_size,
                    &plan.options.limits_for(&l.list.account),
                    Some(drift.len() as u64),
                );
                entry.strategy = Some(choice.strategy.to_string());
                entry.strategy_reason = Some(choice.reason);
                if verbose {
                    entry.present = Some(
                        drift
                            .emails
                            .iter()
                            .chain(drift.contact_ids.iter())
                            .copied()
                            .collect(),
                    );
                }
            }
            Ok((info, None)) => {
                entry.contact_count = info.contact_count;
                entry.error =
                    Some("the list kept changing while it was read; try again".to_string());
            }
            Err(e) => entry.error = Some(e.to_string()),
        }
        lists.push(entry);
    }
    RefreshDocument {
        format_version: REFRESH_FORMAT_VERSION,
        path: path.to_string(),
        drift: total_drift,
        lists,
    }
}

/// The report for people.
pub fn refresh_text(doc: &RefreshDocument<'_>) -> String {
    let mut out = String::new();
    for l in &doc.lists {
        match (&l.error, l.drift) {
            (Some(e), _) => {
                let _ = writeln!(out, "list {}: error: {e}", l.contact_list_id);
            }
            (None, Some(d)) => {
                let _ = writeln!(
                    out,
                    "list {}: {} member(s), {} desired-absent contact(s) present ({} request(s))",
                    l.contact_list_id,
                    l.contact_count.unwrap_or(0),
                    d,
                    l.requests
                );
                for d in &l.drift_by_policy {
                    let _ = writeln!(out, "  {}: {}", d.policy, d.drift);
                }
                if let Some(reason) = &l.strategy_reason {
                    let _ = writeln!(out, "  strategy {reason}");
                }
                for c in l.present.iter().flatten() {
                    let _ = writeln!(out, "    - {c}");
                }
            }
            _ => {}
        }
    }
    let unread = doc.lists.iter().filter(|l| l.error.is_some()).count();
    if unread > 0 {
        let _ = writeln!(
            out,
            "Drift: {} contact(s) present that must not be in the lists read; unknown for \
             {unread} list(s) that could not be read.",
            doc.drift
        );
    } else {
        let _ = writeln!(
            out,
            "Drift: {} contact(s) present that must not be.",
            doc.drift
        );
    }
    out
}
