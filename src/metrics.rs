//! Prometheus metrics of the daemon (prometheus-client, OpenMetrics text format).
//!
//! Names, all prefixed `listwarden_`:
//! - `reconciles_total{list,result}`, `reconcile_duration_seconds{result}` (histogram);
//! - `contacts_total{list,outcome}` with outcome `removed`, `not_in_list`, `failed`;
//! - `pending_contacts{list}`, `drift_contacts{list}`, `last_success_timestamp_seconds{list}`;
//! - `api_requests_total{endpoint,status}` (status `error` for transport errors),
//!   `rate_limited_total`, `pacing_wait_seconds_total`;
//! - `policy_ready{policy,reason}` (1 when Ready=True), `manifest_errors`,
//!   `manifest_loads_total{result}`;
//! - `webhook_events_total{type,result}` (result `accepted`, `duplicate`, `bad_signature`,
//!   `invalid`, `stale`, `ignored`, `throttled`, `unavailable`), `webhook_event_to_remove_seconds`
//!   (histogram: from an event's receipt to the end of the reconcile that asserted it);
//! - `build_info{version,store_schema}`, always 1: which build is running, for dashboards
//!   and for alerts that must tell an upgrade from a fault.

use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::reconcile::ListOutcome;
use autosend::Observer;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ListLabel {
    pub account: String,
    pub list: String,
}

/// The account of a key: its budget, its 429s and its pacing are its own.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AccountLabel {
    pub account: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReconcileLabels {
    pub account: String,
    pub list: String,
    pub result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabel {
    pub result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ContactLabels {
    pub account: String,
    pub list: String,
    pub outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub account: String,
    pub endpoint: String,
    pub status: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PolicyLabels {
    pub policy: String,
    pub reason: String,
}

/// `type` and `result`: a label named like a Rust keyword, so pairs rather than a derive.
pub type WebhookLabels = Vec<(String, String)>;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BuildLabels {
    pub version: String,
    pub store_schema: String,
}

type FloatGauge = Gauge<f64, AtomicU64>;

pub struct Metrics {
    registry: Registry,
    pub reconciles: Family<ReconcileLabels, Counter>,
    pub reconcile_duration: Family<ResultLabel, Histogram>,
    pub contacts: Family<ContactLabels, Counter>,
    pub pending: Family<ListLabel, Gauge>,
    pub drift: Family<ListLabel, Gauge>,
    pub last_success: Family<ListLabel, FloatGauge>,
    pub api_requests: Family<RequestLabels, Counter>,
    pub rate_limited: Family<AccountLabel, Counter>,
    pub pacing_wait: Family<AccountLabel, Counter<f64, AtomicU64>>,
    /// Each account's pacer total when its counter was last brought up to date.
    pacing_seen: std::sync::Mutex<std::collections::HashMap<String, Duration>>,
    pub policy_ready: Family<PolicyLabels, Gauge>,
    pub manifest_errors: Gauge,
    pub manifest_loads: Family<ResultLabel, Counter>,
    pub webhook_events: Family<WebhookLabels, Counter>,
    pub webhook_event_to_remove: Histogram,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

fn duration_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.005, 2.0, 18))
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("listwarden");
        let m = Metrics {
            reconciles: Family::default(),
            reconcile_duration: Family::new_with_constructor(
                duration_histogram as fn() -> Histogram,
            ),
            contacts: Family::default(),
            pending: Family::default(),
            drift: Family::default(),
            last_success: Family::default(),
            api_requests: Family::default(),
            rate_limited: Family::default(),
            pacing_wait: Family::default(),
            pacing_seen: std::sync::Mutex::new(Default::default()),
            policy_ready: Family::default(),
            manifest_errors: Gauge::default(),
            manifest_loads: Family::default(),
            webhook_events: Family::default(),
            webhook_event_to_remove: Histogram::new(exponential_buckets(0.05, 2.0, 14)),
            registry: Registry::default(),
        };
        registry.register(
            "reconciles",
            "List reconciles by result",
            m.reconciles.clone(),
        );
        registry.register(
            "reconcile_duration_seconds",
            "Duration of list reconciles",
            m.reconcile_duration.clone(),
        );
        registry.register(
            "contacts",
            "Contacts asserted, by outcome",
            m.contacts.clone(),
        );
        registry.register(
            "pending_contacts",
            "Contacts still to assert per list after the last reconcile",
            m.pending.clone(),
        );
        registry.register(
            "drift_contacts",
            "Desired-absent contacts found in the list by the last observation",
            m.drift.clone(),
        );
        registry.register(
            "last_success_timestamp_seconds",
            "Unix time of the last successful sync of a list",
            m.last_success.clone(),
        );
        registry.register(
            "api_requests",
            "AutoSend API requests by account, endpoint and HTTP status",
            m.api_requests.clone(),
        );
        registry.register(
            "rate_limited",
            "429 answers received, by account",
            m.rate_limited.clone(),
        );
        registry.register(
            "pacing_wait_seconds",
            "Time requests spent waiting for their account's client-side pacing budget",
            m.pacing_wait.clone(),
        );
        registry.register(
            "policy_ready",
            "1 when the policy's Ready condition is True, else 0",
            m.policy_ready.clone(),
        );
        registry.register(
            "manifest_errors",
            "Errors in the last manifest load",
            m.manifest_errors.clone(),
        );
        registry.register(
            "manifest_loads",
            "Manifest loads by result (ok, error)",
            m.manifest_loads.clone(),
        );
        registry.register(
            "webhook_events",
            "AutoSend webhook deliveries by event type and result",
            m.webhook_events.clone(),
        );
        registry.register(
            "webhook_event_to_remove_seconds",
            "From a webhook event's receipt to the end of the reconcile that asserted its contact",
            m.webhook_event_to_remove.clone(),
        );
        let build_info = Family::<BuildLabels, Gauge>::default();
        build_info
            .get_or_create(&BuildLabels {
                version: env!("CARGO_PKG_VERSION").to_string(),
                store_schema: crate::store::SCHEMA_VERSION.to_string(),
            })
            .set(1);
        registry.register(
            "build_info",
            "Always 1; the labels say which listwarden build is running",
            build_info,
        );
        Metrics { registry, ..m }
    }

    pub fn encode(&self) -> String {
        let mut out = String::new();
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }

    /// Counts one webhook delivery. Types outside AutoSend's documented ones are `other`.
    pub fn webhook_event(&self, event_type: &str, result: &str) {
        let known = crate::webhook::event::KNOWN_TYPES.contains(&event_type);
        self.webhook_events
            .get_or_create(&vec![
                (
                    "type".to_string(),
                    if known { event_type } else { "other" }.to_string(),
                ),
                ("result".to_string(), result.to_string()),
            ])
            .inc();
    }

    /// Records one list reconcile.
    pub fn reconciled(&self, o: &ListOutcome, pending: u64) {
        let result = o.result.label();
        let account = o.list.account.to_string();
        let list = o.list.id.to_string();
        self.reconciles
            .get_or_create(&ReconcileLabels {
                account: account.clone(),
                list: list.clone(),
                result: result.to_string(),
            })
            .inc();
        self.reconcile_duration
            .get_or_create(&ResultLabel {
                result: result.to_string(),
            })
            .observe(o.duration.as_secs_f64());
        for (outcome, n) in [
            ("removed", o.removed),
            ("not_in_list", o.not_in_list + o.observed_absent),
            ("failed", o.failed),
        ] {
            self.contacts
                .get_or_create(&ContactLabels {
                    account: account.clone(),
                    list: list.clone(),
                    outcome: outcome.to_string(),
                })
                .inc_by(n);
        }
        let label = ListLabel { account, list };
        self.pending.get_or_create(&label).set(pending as i64);
        if o.result.is_ok() {
            self.last_success
                .get_or_create(&label)
                .set(crate::clock::now_unix() as f64);
        }
    }

    /// Brings an account's counter up to its pacer's running total (read at scrape time).
    pub fn set_pacing_wait(&self, account: &str, waited: Duration) {
        let mut seen = self.pacing_seen.lock().unwrap_or_else(|p| p.into_inner());
        let seen = seen.entry(account.to_string()).or_default();
        if waited > *seen {
            self.pacing_wait
                .get_or_create(&AccountLabel {
                    account: account.to_string(),
                })
                .inc_by((waited - *seen).as_secs_f64());
            *seen = waited;
        }
    }
}

/// An account's client reports every exchange here.
pub struct MetricsObserver {
    pub metrics: Arc<Metrics>,
    pub account: String,
}

impl Observer for MetricsObserver {
    fn request(&self, endpoint: &'static str, status: Option<u16>, _elapsed: Duration) {
        let status_label = status.map_or_else(|| "error".to_string(), |s| s.to_string());
        self.metrics
            .api_requests
            .get_or_create(&RequestLabels {
                account: self.account.clone(),
                endpoint: endpoint.to_string(),
                status: status_label,
            })
            .inc();
        if status == Some(429) {
            self.metrics
                .rate_limited
                .get_or_create(&AccountLabel {
                    account: self.account.clone(),
                })
                .inc();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn build_info_names_the_running_version_from_the_start() {
        let text = Metrics::new().encode();
        let line = format!(
            "listwarden_build_info{{version=\"{}\",store_schema=\"{}\"}} 1",
            env!("CARGO_PKG_VERSION"),
            crate::store::SCHEMA_VERSION
        );
        assert!(text.contains(&line), "{text}");
    }
}
