//! A faithful, in-memory fake of the part of the AutoSend HTTP API that listwarden uses.
//!
//! The fake exists so that listwarden's tests, README demo and benchmarks can exercise the real
//! HTTP client against something that behaves like AutoSend, including the ways AutoSend can
//! fail, without an account, a network or rate-limit waits measured in minutes. It is an
//! ordinary axum server: [`FakeAutoSend::serve`] binds a port (0 is fine) and returns at once;
//! [`FakeAutoSend::router`] gives the bare router for embedding. The binary
//! The crate's binary (`cargo run -p autosend-fake -- --help`) serves it from the command line.
//!
//! # What it reproduces (from AutoSend's public docs, see `shared/autosend-api/`)
//!
//! All paths live under `/v1`; every endpoint needs `Authorization: Bearer <key>` (an
//! `x-project-id` header is accepted and ignored), else 401 `UNAUTHORIZED`.
//! Success bodies are `{"success": true, "data": {...}}`; errors are
//! `{"success": false, "error": {"message", "code", "details"?: [{"field", "message"}], "retryAfter"?}}`
//! with 400 `VALIDATION_FAILED`, 401 `UNAUTHORIZED`, 402 `PLAN_UPGRADE_REQUIRED`,
//! 403 `INSUFFICIENT_PERMISSIONS`, 404 `NOT_FOUND`, 429 `RATE_LIMIT_EXCEEDED` and
//! 500 `INTERNAL_SERVER_ERROR` (every injected 5xx, 503 included, uses that code too).
//!
//! | endpoint (counter name) | behaviour |
//! |---|---|
//! | `POST /v1/contact-lists/{id}/contacts/remove` (`remove`) | `{"emails": [..]}` xor `{"contactIds": [..]}`; both, neither, an empty array, a non-string entry or malformed JSON is a 400 with `details`. Emails match trimmed and lowercased. Each distinct entry counts once: a member is really removed (`removed`), anything else, unknown contacts included, is `notInList`. `GLOBAL_CONTACT_LIST` is a 400 pointing at the delete-contact API, a segment is a 400, an unknown list a 404. |
//! | `GET /v1/contact-lists/{id}` (`get_list`) | `{id, name, description, type, contactCount, createdAt, updatedAt}` (+ `filterCriteria` for segments); `GLOBAL_CONTACT_LIST` is the virtual all-contacts list. |
//! | `GET /v1/contact-lists?type=list\|segment` (`list_lists`) | `{lists: [..]}`, `GLOBAL_CONTACT_LIST` always first, then lists in creation order. |
//! | `POST /v1/contact-lists/contacts/search` (`search`) | `{contactListId, page >= 1 = 1, limit 1..=100 = 20, email?}` (partial, case-insensitive). Members in insertion order, paged by offset over the membership *at request time*, so removals between pages shift later pages exactly like a real offset-paginated API. A page past the end is empty with the right `total`/`pages`. |
//! | `POST /v1/contact-lists/contacts/bulk-add` (`bulk_add`) | `{contactListId, emails \| contactIds}`, at most 500; unknown emails become contacts. Answers `{added, created, alreadyInList, errors, totalContactsInList}`. |
//!
//! Rate limits are per API key, default 2/s and 50/min as documented, and every response
//! (429 included) carries `X-RateLimit-Limit`, `X-RateLimit-Remaining` and `X-RateLimit-Reset`
//! for the most constraining window.
//!
//! # Open points of the docs, and what the fake decides
//!
//! - **Rate-limit algorithm**: fixed windows aligned to epoch time (the 1 s window is the
//!   current epoch second, the minute window the current epoch minute). A request counts
//!   against every window; a rejected (429) request counts against none.
//! - **`retryAfter`**: whole seconds until the blocking window ends, at least 1 (the rate-limit
//!   page's reading). [`Faults::retry_after_epoch`] sends the epoch second instead (the errors
//!   page's reading); [`Faults::retry_after_header`] adds a `Retry-After` header (seconds).
//! - **Remove `errors` items**: shaped like bulk-add's, `{"email": .., "error": ..}`, or
//!   `{"contactId": .., "error": ..}` when the batch was by id; the contact is echoed in its
//!   normalised form (trimmed, emails lowercased).
//! - **Batch size**: unlimited for remove unless [`Faults::max_batch`] is set; bulk-add allows 500.
//! - **Contact ids** are 24 lowercase hex characters, generated from a counter (deterministic).
//! - **Order of checks** for a request: latency, dropped connection, auth, rate limit, injected
//!   status (`fail_next`, then `error_rate`), then the endpoint itself. So a dropped request
//!   consumes no quota, while an injected 5xx does (it happened "inside" the server).
//!
//! # Faults
//!
//! [`Faults`] can be changed while the server runs ([`FakeAutoSend::set_faults`],
//! [`FakeAutoSend::update_faults`]): random or scheduled error statuses, latency, a maximum
//! remove batch, per-contact errors, poisoned entries that make a whole batch a 400, and dropped
//! connections. A dropped connection is closed before any response byte is written, so the
//! client sees a transport error (connection closed before the message completed), never a
//! status. That needs the fake's own accept loop ([`FakeAutoSend::serve`]); through a bare
//! [`FakeAutoSend::router`] embedded elsewhere the handler unwinds instead, which hyper turns
//! into the same closed connection.
//!
//! # Seed file
//!
//! [`FakeAutoSend::seed_from_json`] (and `--seed` of the example binary) takes:
//!
//! ```json
//! {"lists": [
//!   {"id": "60d5ec49f1b2c72d9c8b4567", "name": "Newsletter", "type": "list",
//!    "description": "optional",
//!    "contacts": ["jane@example.com", {"email": "john@example.com", "id": "60d5ec49f1b2c72d9c8b1111"}],
//!    "generate": {"count": 1000, "prefix": "member", "domain": "example.com"}}
//! ]}
//! ```
//!
//! `type` is `list` (default) or `segment`; `contacts`, `generate` and `description` are
//! optional. A contact is an email (its id is generated) or `{"email", "id"}`, so a demo can
//! name contacts by id in its policies. Generated emails are `{prefix}{i}@{domain}` for `i` from 0, added after `contacts`.
//! `generate.prefix` defaults to `member` and `generate.domain` to `example.com`.
//!
//! # Webhooks
//!
//! With a webhook set ([`FakeAutoSend::set_webhook`] or [`FakeAutoSend::with_webhook`], or
//! `--webhook-url` and `--webhook-secret-file` for the binary), the fake delivers signed events
//! the way AutoSend's webhook pages describe (headers, signature, retries: see the `webhook`
//! module): `contact.created` when bulk-add, [`FakeAutoSend::add_contacts`] or
//! [`FakeAutoSend::add_contact_with_id`] create a contact, `contact.updated`
//! (`changedFields: ["listIds"]`) when they add an existing contact to a list, and the email
//! events tests ask for ([`FakeAutoSend::emit_bounce`], [`FakeAutoSend::emit_spam_report`],
//! [`FakeAutoSend::emit_unsubscribed`], [`FakeAutoSend::emit_event`], or
//! `POST /admin/webhook-events` with the API key, for a fake in another process). Seeding
//! emits nothing. Deliveries run in the background and never slow the API down;
//! [`FakeAutoSend::webhook_deliveries`] lists every attempt and
//! [`FakeAutoSend::wait_webhooks_idle`] waits for them to settle.
//!
//! # Counters
//!
//! [`FakeAutoSend::counters`] returns a [`Counters`] snapshot: requests, answers per
//! (endpoint, status), 429s, remove outcomes per contact, rejected batches, dropped connections,
//! and a log of every remove batch that reached the remove logic.
//!
//! Long, mostly documentation: the contract the fake follows and the decisions it makes on
//! the docs' open points are written here, where a test author looks first.

mod http;
mod ratelimit;
mod state;
#[cfg(test)]
mod tests;
mod webhook;
#[cfg(test)]
mod webhook_tests;

use std::collections::{BTreeMap, HashSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use serde::Deserialize;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

pub use ratelimit::{RateLimit, RateWindow, parse_rate_limits};
pub use state::{GLOBAL_CONTACT_LIST, ListKind};
pub use webhook::{
    BounceType, DOCUMENTED_RETRY_DELAYS, DOCUMENTED_TIMEOUT, DeliveryOutcome, DeliveryRecord,
    EmitError, WebhookConfig, WebhooksBusy, sign as sign_webhook,
};

use ratelimit::Limiter;
use state::{Store, normalize_email};
use webhook::Hub;

/// How the fake is set up when created.
#[derive(Debug, Clone)]
pub struct FakeConfig {
    /// The one API key accepted as `Authorization: Bearer <api_key>`.
    pub api_key: String,
    /// Per-key rate limits; empty disables rate limiting.
    pub rate_limits: Vec<RateLimit>,
    /// Failures injected from the start (changeable later with [`FakeAutoSend::set_faults`]).
    pub faults: Faults,
}

impl Default for FakeConfig {
    /// Key `test-key`, the documented limits (2/s and 50/min), no faults.
    fn default() -> Self {
        FakeConfig {
            api_key: "test-key".to_string(),
            rate_limits: vec![RateLimit::per_second(2), RateLimit::per_minute(50)],
            faults: Faults::default(),
        }
    }
}

/// Failures to inject. `Faults::default()` injects none.
///
/// Contacts in `contact_errors` and `poisoned` are matched by email (any case) or by contact id,
/// whichever way the batch names them.
#[derive(Debug, Clone)]
pub struct Faults {
    /// Share (0.0..=1.0) of requests answered with `error_status` without being applied.
    pub error_rate: f64,
    /// Status used by `error_rate` (500 by default; 503 is a common alternative).
    pub error_status: u16,
    /// Answer the next `count` requests with `status` (401, 402, 403, 429, 500, 503, ...),
    /// with the matching error code and body, without applying them.
    pub fail_next: Option<(u16, u32)>,
    /// Added before every request is handled.
    pub latency: Duration,
    /// A remove with more entries than this is a 400 `VALIDATION_FAILED` ("too many contacts").
    pub max_batch: Option<usize>,
    /// Contacts that always end up in a remove's `errors` (and are not removed).
    pub contact_errors: HashSet<String>,
    /// Contacts that make any remove batch containing them a 400 for the whole batch.
    pub poisoned: HashSet<String>,
    /// Share (0.0..=1.0) of requests whose connection is dropped before they are applied.
    pub drop_rate: f64,
    /// Drop the connection of the next `drop_next` requests.
    pub drop_next: u32,
    /// Send `retryAfter` as an epoch timestamp (seconds) instead of seconds to wait.
    pub retry_after_epoch: bool,
    /// Also send a `Retry-After` header (seconds to wait) with 429 answers.
    pub retry_after_header: bool,
}

impl Default for Faults {
    fn default() -> Self {
        Faults {
            error_rate: 0.0,
            error_status: 500,
            fail_next: None,
            latency: Duration::ZERO,
            max_batch: None,
            contact_errors: HashSet::new(),
            poisoned: HashSet::new(),
            drop_rate: 0.0,
            drop_next: 0,
            retry_after_epoch: false,
            retry_after_header: false,
        }
    }
}

impl Faults {
    /// Normalises contact sets the way requests are normalised, so `Jane@X.com` in a set
    /// matches `jane@x.com` in a batch.
    fn normalized(mut self) -> Self {
        let norm = |set: HashSet<String>| -> HashSet<String> {
            set.into_iter()
                .map(|s| {
                    if s.contains('@') {
                        normalize_email(&s)
                    } else {
                        s.trim().to_string()
                    }
                })
                .collect()
        };
        self.contact_errors = norm(self.contact_errors);
        self.poisoned = norm(self.poisoned);
        self
    }
}

/// How a remove batch named its contacts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BatchKind {
    /// `{"emails": [..]}`
    Emails,
    /// `{"contactIds": [..]}`
    ContactIds,
}

impl BatchKind {
    /// The JSON field carrying the entries.
    pub fn field(self) -> &'static str {
        match self {
            BatchKind::Emails => "emails",
            BatchKind::ContactIds => "contactIds",
        }
    }
}

/// One remove request whose body was well-formed, as received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoveBatch {
    /// The `{contactListId}` of the path.
    pub list_id: String,
    /// Whether the batch named contacts by email or by id.
    pub kind: BatchKind,
    /// Entries exactly as sent (not normalised, duplicates kept).
    pub entries: Vec<String>,
    /// Status of the answer (200, or 400/404 for a refused batch).
    pub status: u16,
}

/// Snapshot of what the fake has seen since creation or the last [`FakeAutoSend::reset_counters`].
#[derive(Debug, Clone, Default)]
pub struct Counters {
    /// Every request received, dropped ones included.
    pub requests: u64,
    /// Answers per (endpoint, status). Endpoints: `remove`, `get_list`, `list_lists`, `search`,
    /// `bulk_add`, and `other` for unknown routes. Dropped requests have no status, so are not here.
    pub by_endpoint_status: BTreeMap<(&'static str, u16), u64>,
    /// 429 answers (rate limited or injected).
    pub rate_limited: u64,
    /// Remove requests received, whatever happened to them.
    pub remove_requests: u64,
    /// Contacts removed from a list.
    pub contacts_removed: u64,
    /// Contacts counted in `notInList`.
    pub contacts_not_in_list: u64,
    /// Contacts reported in a remove's `errors`.
    pub contacts_errored: u64,
    /// Remove batches refused whole because of `max_batch` or a poisoned entry.
    pub batches_rejected: u64,
    /// Connections dropped on purpose.
    pub dropped_connections: u64,
    /// Remove batches that reached the remove logic (well-formed bodies, past auth, rate limit
    /// and injected statuses), in arrival order.
    pub remove_batches: Vec<RemoveBatch>,
}

impl Counters {
    /// Answers with `status` from `endpoint`.
    pub fn count(&self, endpoint: &str, status: u16) -> u64 {
        self.by_endpoint_status
            .iter()
            .filter(|((e, s), _)| *e == endpoint && *s == status)
            .map(|(_, n)| n)
            .sum()
    }

    /// Answers of any status from `endpoint`.
    pub fn endpoint_total(&self, endpoint: &str) -> u64 {
        self.by_endpoint_status
            .iter()
            .filter(|((e, _), _)| *e == endpoint)
            .map(|(_, n)| n)
            .sum()
    }
}

/// Everything mutable, behind one mutex: requests are short, so one lock keeps it simple and
/// makes every request atomic (as the real API is per request).
pub(crate) struct Shared {
    pub api_key: String,
    pub store: Store,
    pub faults: Faults,
    pub limiter: Limiter,
    pub counters: Counters,
    /// Here too so that endpoint logic, which runs under the lock, can emit events.
    pub webhooks: Arc<Hub>,
}

impl Shared {
    /// `contact.created` for a contact that did not exist, or `contact.updated` when an
    /// existing contact joined a list (`listIds` is a field of AutoSend's contact object, see
    /// the bulk-add response). Failures only drop the event: the API answer must not depend
    /// on webhooks.
    pub(crate) fn emit_contact_change(&self, contact: u32, created: bool) {
        let Some(contact) = self.store.contacts.get(contact as usize) else {
            return;
        };
        let result = if created {
            self.webhooks.emit_contact("contact.created", contact, None)
        } else {
            self.webhooks
                .emit_contact("contact.updated", contact, Some(&["listIds"]))
        };
        if let Err(e) = result
            && e != EmitError::NoWebhook
        {
            tracing::debug!(error = %e, "contact event not emitted");
        }
    }
}

/// Handle on a fake AutoSend: cheap to clone, all clones share the same state.
#[derive(Clone)]
pub struct FakeAutoSend {
    inner: Arc<Mutex<Shared>>,
    /// Outside the state lock: waiting for webhooks to settle is async and must not hold it.
    webhooks: Arc<Hub>,
}

impl std::fmt::Debug for FakeAutoSend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let s = self.lock();
        f.debug_struct("FakeAutoSend")
            .field("lists", &s.store.lists.len())
            .field("contacts", &s.store.contacts.len())
            .finish_non_exhaustive()
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Seed {
    #[serde(default)]
    lists: Vec<SeedList>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SeedList {
    id: String,
    name: Option<String>,
    #[serde(default)]
    description: String,
    #[serde(rename = "type", default)]
    kind: SeedKind,
    #[serde(default)]
    contacts: Vec<SeedContact>,
    generate: Option<SeedGenerate>,
}

#[derive(Deserialize)]
#[serde(untagged, expecting = "an email, or {\"email\": ..., \"id\": ...}")]
enum SeedContact {
    Email(String),
    WithId(SeedContactWithId),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SeedContactWithId {
    email: String,
    id: String,
}

#[derive(Deserialize, Default, Clone, Copy)]
#[serde(rename_all = "lowercase")]
enum SeedKind {
    #[default]
    List,
    Segment,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SeedGenerate {
    count: usize,
    #[serde(default = "default_prefix")]
    prefix: String,
    #[serde(default = "default_domain")]
    domain: String,
}

fn default_prefix() -> String {
    "member".to_string()
}

fn default_domain() -> String {
    "example.com".to_string()
}

impl FakeAutoSend {
    /// A fake with no lists and no contacts (add them with [`add_list`](Self::add_list),
    /// [`add_contacts`](Self::add_contacts) or [`seed_from_json`](Self::seed_from_json)).
    pub fn new(config: FakeConfig) -> Self {
        let webhooks = Arc::new(Hub::new(None));
        FakeAutoSend {
            inner: Arc::new(Mutex::new(Shared {
                api_key: config.api_key,
                store: Store::new(),
                faults: config.faults.normalized(),
                limiter: Limiter::new(config.rate_limits),
                counters: Counters::default(),
                webhooks: webhooks.clone(),
            })),
            webhooks,
        }
    }

    /// A panic in a test holding the lock must not hide the test's own failure behind
    /// poison errors, so poisoning is ignored.
    pub(crate) fn lock(&self) -> MutexGuard<'_, Shared> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Accepts `key` from now on, and no other: a key rotated in AutoSend's settings.
    pub fn set_api_key(&self, key: &str) {
        self.lock().api_key = key.to_string();
    }

    /// Creates a list or segment (or renames an existing one, keeping its members).
    pub fn add_list(&self, id: &str, name: &str, kind: ListKind) {
        self.lock().store.add_list(id, name, "", kind);
    }

    /// Adds contacts (by email, created as needed) to a list, in order, and returns their ids.
    /// An unknown list is created as a plain list named after its id. With
    /// [`GLOBAL_CONTACT_LIST`] the contacts are only created, which makes "exists but is not a
    /// member" cases easy to set up.
    ///
    /// With a webhook configured, emits what bulk-add would: `contact.created` for each new
    /// contact, `contact.updated` for an existing one that joined the list.
    pub fn add_contacts(
        &self,
        list_id: &str,
        emails: impl IntoIterator<Item = impl AsRef<str>>,
    ) -> Vec<String> {
        self.add_contacts_inner(list_id, emails, true)
    }

    /// `emit` is false for seeding: a seed is the world as it already was, not a change.
    fn add_contacts_inner(
        &self,
        list_id: &str,
        emails: impl IntoIterator<Item = impl AsRef<str>>,
        emit: bool,
    ) -> Vec<String> {
        let mut s = self.lock();
        let global = list_id == GLOBAL_CONTACT_LIST;
        if !global && s.store.list(list_id).is_none() {
            s.store.add_list(list_id, list_id, "", ListKind::List);
        }
        let mut ids = Vec::new();
        let mut changed = false;
        for email in emails {
            let (index, created) = s.store.get_or_create(&normalize_email(email.as_ref()));
            ids.push(s.store.contacts[index as usize].id.clone());
            let joined = !global
                && s.store
                    .list_mut(list_id)
                    .expect("created above")
                    .members
                    .insert(index);
            changed |= joined;
            if emit && (created || joined) {
                s.emit_contact_change(index, created);
            }
        }
        if changed {
            let now = state::now_ms();
            if let Some(list) = s.store.list_mut(list_id) {
                list.updated_ms = now;
            }
        }
        ids
    }

    /// Adds the contact `email` with the id `id` to `list_id` (see
    /// [`get_or_create_with_id`](state::Store::get_or_create_with_id) for the errors).
    /// Emits contact events like [`add_contacts`](Self::add_contacts).
    pub fn add_contact_with_id(&self, list_id: &str, email: &str, id: &str) -> Result<(), String> {
        self.add_contact_with_id_inner(list_id, email, id, true)
    }

    fn add_contact_with_id_inner(
        &self,
        list_id: &str,
        email: &str,
        id: &str,
        emit: bool,
    ) -> Result<(), String> {
        let mut s = self.lock();
        let email = normalize_email(email);
        let created = s.store.find_email(&email).is_none();
        let index = s.store.get_or_create_with_id(&email, id)?;
        let mut joined = false;
        if let Some(list) = s.store.list_mut(list_id)
            && list.members.insert(index)
        {
            list.updated_ms = state::now_ms();
            joined = true;
        }
        if emit && (created || joined) {
            s.emit_contact_change(index, created);
        }
        Ok(())
    }

    /// Id of the contact with this email (any case), if it exists.
    pub fn contact_id(&self, email: &str) -> Option<String> {
        let s = self.lock();
        s.store
            .find_email(&normalize_email(email))
            .map(|i| s.store.contacts[i as usize].id.clone())
    }

    /// Whether the contact (by email in any case, or by id) is in the list. For
    /// [`GLOBAL_CONTACT_LIST`]: whether the contact exists.
    pub fn is_member(&self, list_id: &str, email_or_id: &str) -> bool {
        let s = self.lock();
        let Some(contact) = s.store.find_any(email_or_id) else {
            return false;
        };
        if list_id == GLOBAL_CONTACT_LIST {
            return true;
        }
        s.store
            .list(list_id)
            .is_some_and(|l| l.members.contains(contact))
    }

    /// Members of a list (0 if unknown); all contacts for [`GLOBAL_CONTACT_LIST`].
    pub fn member_count(&self, list_id: &str) -> usize {
        let s = self.lock();
        if list_id == GLOBAL_CONTACT_LIST {
            return s.store.contacts.len();
        }
        s.store.list(list_id).map_or(0, |l| l.members.len())
    }

    /// Member emails of a list in insertion order (empty if unknown).
    pub fn members(&self, list_id: &str) -> Vec<String> {
        let s = self.lock();
        if list_id == GLOBAL_CONTACT_LIST {
            return s.store.contacts.iter().map(|c| c.email.clone()).collect();
        }
        s.store.list(list_id).map_or_else(Vec::new, |l| {
            l.members
                .iter()
                .map(|i| s.store.contacts[i as usize].email.clone())
                .collect()
        })
    }

    /// Replaces all faults; takes effect for the next request.
    pub fn set_faults(&self, faults: Faults) {
        self.lock().faults = faults.normalized();
    }

    /// Changes some faults in place, e.g. `fake.update_faults(|f| f.fail_next = Some((503, 3)))`.
    pub fn update_faults(&self, f: impl FnOnce(&mut Faults)) {
        let mut s = self.lock();
        let mut faults = std::mem::take(&mut s.faults);
        f(&mut faults);
        s.faults = faults.normalized();
    }

    /// Current faults (`fail_next` and `drop_next` count down as they fire).
    pub fn faults(&self) -> Faults {
        self.lock().faults.clone()
    }

    /// Replaces the rate limits and forgets what was counted so far.
    pub fn set_rate_limits(&self, limits: Vec<RateLimit>) {
        self.lock().limiter.set_limits(limits);
    }

    /// Counts requests in fixed epoch windows (the default) or sliding ones, and forgets what
    /// was counted so far.
    pub fn set_rate_window(&self, window: RateWindow) {
        self.lock().limiter.set_window(window);
    }

    /// Snapshot of the counters.
    pub fn counters(&self) -> Counters {
        self.lock().counters.clone()
    }

    /// Zeroes the counters and clears the remove-batch log.
    pub fn reset_counters(&self) {
        self.lock().counters = Counters::default();
    }

    /// Loads lists and contacts from a seed document (format in the module doc).
    pub fn seed_from_json(&self, json: &str) -> Result<(), String> {
        let seed: Seed = serde_json::from_str(json).map_err(|e| format!("invalid seed: {e}"))?;
        for list in seed.lists {
            if list.id.trim().is_empty() || list.id == GLOBAL_CONTACT_LIST {
                return Err(format!(
                    "invalid seed: list id `{}` cannot be used",
                    list.id
                ));
            }
            let kind = match list.kind {
                SeedKind::List => ListKind::List,
                SeedKind::Segment => ListKind::Segment,
            };
            let name = list.name.unwrap_or_else(|| list.id.clone());
            self.lock()
                .store
                .add_list(&list.id, &name, &list.description, kind);
            for contact in list.contacts {
                match contact {
                    SeedContact::Email(email) => {
                        self.add_contacts_inner(&list.id, [email], false);
                    }
                    SeedContact::WithId(c) => {
                        self.add_contact_with_id_inner(&list.id, &c.email, &c.id, false)
                            .map_err(|e| format!("invalid seed: list `{}`: {e}", list.id))?;
                    }
                }
            }
            if let Some(g) = list.generate {
                self.add_contacts_inner(
                    &list.id,
                    (0..g.count).map(|i| format!("{}{i}@{}", g.prefix, g.domain)),
                    false,
                );
            }
        }
        Ok(())
    }

    /// Starts (`Some`) or stops (`None`) webhook deliveries for the events emitted from now on;
    /// events already queued keep the webhook they were emitted for.
    pub fn set_webhook(&self, webhook: Option<WebhookConfig>) {
        self.webhooks.set_config(webhook);
    }

    /// [`set_webhook`](Self::set_webhook) as a builder, for `FakeAutoSend::new(..).with_webhook(..)`.
    pub fn with_webhook(self, webhook: WebhookConfig) -> Self {
        self.set_webhook(Some(webhook));
        self
    }

    /// Queues an `email.bounced` event for `email` (any case; sent lowercased) with the given
    /// bounce type, and returns its delivery id. `to.name` is the contact's name when the
    /// address is a known contact, else null.
    pub fn emit_bounce(&self, email: &str, bounce_type: BounceType) -> Result<String, EmitError> {
        let (email, name) = self.recipient(email);
        self.webhooks
            .emit_bounce(&email, name.as_deref(), bounce_type)
    }

    /// Queues an `email.spam_reported` event (`complaintType: "abuse"`) for `email`.
    pub fn emit_spam_report(&self, email: &str) -> Result<String, EmitError> {
        let (email, name) = self.recipient(email);
        self.webhooks.emit_spam_report(&email, name.as_deref())
    }

    /// Queues an `email.unsubscribed` event. AutoSend's payload carries no address (for
    /// privacy), only the `emailId` of the email the unsubscribe came from, if any.
    pub fn emit_unsubscribed(&self, email_id: Option<&str>) -> Result<String, EmitError> {
        self.webhooks.emit_unsubscribed(email_id)
    }

    /// Queues any event with any `data`, for tests that need odd payloads.
    pub fn emit_event(
        &self,
        event_type: &str,
        data: serde_json::Value,
    ) -> Result<String, EmitError> {
        self.webhooks.emit(event_type, &data)
    }

    /// Every delivery attempt so far (the last 10,000), in the order they ended.
    pub fn webhook_deliveries(&self) -> Vec<DeliveryRecord> {
        self.webhooks.deliveries()
    }

    /// Events dropped because the queue was full or the worker had stopped (events emitted
    /// while no webhook was configured are not counted: they were never meant to be sent).
    pub fn webhook_events_dropped(&self) -> u64 {
        self.webhooks.dropped()
    }

    /// Waits until no event is queued and no delivery is in flight or waiting for a retry.
    pub async fn wait_webhooks_idle(&self, timeout: Duration) -> Result<(), WebhooksBusy> {
        self.webhooks.wait_idle(timeout).await
    }

    /// The address as AutoSend would report it, and the name of the contact with it, if any.
    fn recipient(&self, email: &str) -> (String, Option<String>) {
        let email = normalize_email(email);
        let s = self.lock();
        let name = s
            .store
            .find_email(&email)
            .map(|i| s.store.contacts[i as usize].name());
        (email, name)
    }

    /// The axum router serving `/v1/...`, for embedding in another server.
    pub fn router(&self) -> axum::Router {
        http::router(self.clone())
    }

    /// Binds `addr` (port 0 picks a free port), starts serving in a background task and
    /// returns at once.
    pub async fn serve(self, addr: SocketAddr) -> std::io::Result<RunningFake> {
        let listener = tokio::net::TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        // Contacts added before serving (outside any runtime) may have queued events.
        self.webhooks.ensure_worker();
        let (tx, rx) = oneshot::channel::<()>();
        let service = self
            .router()
            .into_make_service_with_connect_info::<http::ConnHandle>();
        let task = tokio::spawn(async move {
            let shutdown = async {
                let _ = rx.await;
            };
            if let Err(e) = axum::serve(http::KillableListener::new(listener), service)
                .with_graceful_shutdown(shutdown)
                .await
            {
                tracing::warn!(error = %e, "fake AutoSend server stopped with an error");
            }
        });
        Ok(RunningFake {
            handle: self,
            addr,
            shutdown: Some(tx),
            task: Some(task),
        })
    }

    /// [`serve`](Self::serve) on `127.0.0.1` with a free port.
    pub async fn serve_local(self) -> std::io::Result<RunningFake> {
        self.serve(SocketAddr::from(([127, 0, 0, 1], 0))).await
    }
}

/// A fake serving in the background. Dropping it asks the server to stop.
#[derive(Debug)]
pub struct RunningFake {
    handle: FakeAutoSend,
    addr: SocketAddr,
    shutdown: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

impl RunningFake {
    /// Base URL including the API version, e.g. `http://127.0.0.1:8025/v1`.
    pub fn base_url(&self) -> String {
        format!("http://{}/v1", self.addr)
    }

    /// The bound address (with the real port when bound to port 0).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The fake being served, to seed it, change faults or read counters.
    pub fn handle(&self) -> &FakeAutoSend {
        &self.handle
    }

    /// Stops accepting, lets in-flight requests finish (at most 5 s) and waits for the server.
    pub async fn shutdown(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(mut task) = self.task.take()
            && tokio::time::timeout(Duration::from_secs(5), &mut task)
                .await
                .is_err()
        {
            task.abort();
        }
    }
}

impl Drop for RunningFake {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}
