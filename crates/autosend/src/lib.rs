//! The AutoSend API client: typed calls, pacing, retries, and errors a caller can act on.
//!
//! Contract (see `shared/autosend-api/README.md`): bearer auth, `{"success", "data"}` bodies,
//! `{"success": false, "error": {"message", "code", "details"?, "retryAfter"?}}` errors.
//!
//! Every request goes through one [`Pacer`] shared by the whole process, then through
//! [`Client::send`], the single place that decides what a response means. The server is not
//! trusted: it may be a proxy, a misconfigured `AUTOSEND_API_URL` or simply wrong.
//! - 2xx with a JSON body, `"success": true` and an object `data`: an answer. Any other 2xx
//!   is [`ApiError::Protocol`], never retried and never taken as done (for remove, `data`
//!   must also hold `removed` and/or `notInList` as non-negative whole numbers);
//! - 3xx: [`ApiError::Redirect`]; never followed, since following would send the key and the
//!   contacts wherever `Location` points;
//! - 429: wait as the server says (`retryAfter` in seconds or as an epoch timestamp, the
//!   `Retry-After` header, or `X-RateLimit-Reset`), pausing every request, then retry; a wait
//!   that is not a finite, plausible number is 1 s, and no wait exceeds an hour;
//! - 5xx, 408, timeouts, dropped connections: retry with exponential backoff and full jitter
//!   (safe: remove is idempotent, a second call reports `notInList`); then
//!   [`ApiError::Server`] or [`ApiError::Transport`], naming the URL;
//! - 401/402/403: [`ApiError::Auth`], which stops the run; never retried;
//! - 404: [`ApiError::NotFound`]; 400, 413 and other 4xx: [`ApiError::Rejected`]; splitting a
//!   refused batch is the caller's decision.
//!
//! A body larger than [`MAX_BODY_BYTES`] is not read ([`ApiError::Protocol`]). Every text
//! taken from a response (messages, codes, details, `Location`, per-contact errors) passes
//! through one sanitiser before it reaches an error, a log line or the store: the key and any
//! `Bearer` token are redacted, control characters replaced, and the text cut short.
//!
//! The crate knows nothing of listwarden: it is a typed client for the part of the AutoSend
//! API that suppression tools need (contact lists, their members, removing contacts), with
//! the pacing and the distrust a long-running caller needs. Modules:
//! - [`config`]: base URL, key, project, budget, timeouts;
//! - [`client`]: the requests and the one place that decides what a response means;
//! - [`wire`]: request and answer types;
//! - [`error`]: what went wrong, in terms a caller acts on;
//! - [`pacing`]: the client-side request budget;
//! - `retry`, `sanitise`: numbers and texts from the server, distrusted.
//!
//! ```no_run
//! # async fn demo() -> Result<(), autosend::ApiError> {
//! use autosend::{ApiKey, Client, ClientConfig, RemoveBatch, Tally};
//!
//! let config = ClientConfig::new(autosend::DEFAULT_BASE_URL, ApiKey::new("AS_..."));
//! let client = Client::new(config)?;
//! let batch = RemoveBatch::Emails(vec!["jane@example.com".into()]);
//! let outcome = client.remove("60d5ec49f1b2c72d9c8b4567", &batch, &Tally::default()).await?;
//! println!("removed {}, not in list {}", outcome.removed, outcome.not_in_list);
//! # Ok(()) }
//! ```

pub mod client;
pub mod config;
pub mod error;
pub mod pacing;
mod retry;
mod sanitise;
pub mod wire;

pub use client::{Admission, Client, Observer, Tally};
pub use config::{
    ApiKey, ClientConfig, ConfigError, DEFAULT_BASE_URL, DEFAULT_MAX_RETRIES, DEFAULT_MIN_BACKOFF,
};
pub use error::ApiError;
pub use pacing::{Pacer, RateLimit, RateLimits};
pub use wire::{
    ContactError, ListInfo, Member, MemberPage, Pagination, RemoveBatch, RemoveOutcome,
};
