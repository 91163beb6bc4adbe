//! The store as a report: per policy and per list, what the last syncs did. Shared by
//! `listwarden status` and the daemon's `/status` endpoint, so both say the same thing.

use std::fmt::Write as _;

use serde::Serialize;

use crate::render::thousands;
use crate::store::{ListStatus, PolicyStatus, Ready, Store, StoreError};

pub const STATUS_FORMAT_VERSION: u32 = 1;

/// Failing contacts quoted per list.
const FAILING_PER_LIST: usize = 20;

#[derive(Clone, Debug, Serialize)]
pub struct StatusDocument {
    pub format_version: u32,
    pub state: String,
    pub generated_at: String,
    pub ready: bool,
    pub policies: Vec<PolicyStatus>,
    pub lists: Vec<ListStatus>,
}

pub fn status_document(store: &Store) -> Result<StatusDocument, StoreError> {
    let policies = store.policies()?;
    let lists = store.lists(FAILING_PER_LIST)?;
    Ok(StatusDocument {
        format_version: STATUS_FORMAT_VERSION,
        state: store.path().display().to_string(),
        generated_at: humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string(),
        ready: !policies.is_empty()
            && policies
                .iter()
                .all(|p| p.condition.ready == Ready::True || p.condition.reason == "Suspended"),
        policies,
        lists,
    })
}

pub fn time(t: Option<i64>) -> String {
    match t {
        Some(secs) if secs > 0 => humantime::format_rfc3339_seconds(
            std::time::UNIX_EPOCH + std::time::Duration::from_secs(secs as u64),
        )
        .to_string(),
        _ => "never".into(),
    }
}

pub fn status_text(doc: &StatusDocument) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "Policies ({}):", doc.policies.len());
    for p in &doc.policies {
        let ready = match p.condition.ready {
            Ready::True => "True",
            Ready::False => "False",
            Ready::Unknown => "Unknown",
        };
        let _ = writeln!(
            out,
            "  {}  Ready={} reason={}  list={}  ({} document {})",
            p.name,
            ready,
            p.condition.reason,
            p.contact_list_id.as_deref().unwrap_or("?"),
            p.file,
            p.document
        );
        let _ = writeln!(
            out,
            "      last sync {}, last success {}, applied revision {}",
            time(p.last_attempt_at),
            time(p.last_success_at),
            p.last_applied_revision.as_deref().unwrap_or("none")
        );
        let _ = writeln!(
            out,
            "      removed {}, not in list {}, failed {}, pending {}",
            thousands(p.counts.removed as usize),
            thousands(p.counts.not_in_list as usize),
            thousands(p.counts.failed as usize),
            thousands(p.counts.pending as usize)
        );
        if p.condition.ready != Ready::True && !p.condition.message.is_empty() {
            let _ = writeln!(out, "      {}", p.condition.message);
        }
    }
    let _ = writeln!(out, "\nLists ({}):", doc.lists.len());
    for l in &doc.lists {
        let _ = writeln!(
            out,
            "  {}  confirmed absent {}, failing {}, last sync {}, last success {}",
            l.contact_list_id,
            thousands(l.confirmed as usize),
            thousands(l.failed as usize),
            time(l.last_attempt_at),
            time(l.last_success_at)
        );
        if let Some(s) = &l.strategy {
            let _ = writeln!(
                out,
                "      strategy {s}: {}",
                l.strategy_reason.as_deref().unwrap_or("")
            );
        }
        if let Some(d) = l.drift {
            let _ = writeln!(
                out,
                "      drift {} (desired-absent contacts found in the list), observed {}",
                d,
                time(l.last_observed_at)
            );
        }
        if let Some(e) = &l.last_error {
            let _ = writeln!(out, "      last error: {e}");
        }
        for f in &l.failing {
            let _ = writeln!(
                out,
                "      failing {} {}: {} ({} attempt(s))",
                f.kind, f.contact, f.error, f.attempts
            );
        }
    }
    out
}
