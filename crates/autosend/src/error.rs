//! Errors a caller of the client can act on.

use crate::config::DEFAULT_BASE_URL;
#[cfg(doc)]
use crate::sanitise::sanitise;

/// Errors a caller acts on. None of them carries the key: every text in them that came from
/// the server went through [`sanitise`].
#[derive(Clone, Debug, thiserror::Error)]
pub enum ApiError {
    /// 401, 402, 403: the key is missing, invalid, unpaid or lacks permission. Stops the run.
    #[error("AutoSend refused the API key ({status} {code}): {message}; check {key_source}{}", if *status == 402 { " and the account's plan" } else { "" })]
    Auth {
        status: u16,
        code: String,
        message: String,
        /// Where the key came from ([`crate::ClientConfig::key_source`]).
        key_source: String,
    },
    #[error("not found (404): {message}")]
    NotFound { message: String },
    /// 400 (or 413): the request as sent is refused; retrying it unchanged cannot help.
    #[error("request refused ({status} {code}): {message}")]
    Rejected {
        status: u16,
        code: String,
        message: String,
    },
    /// A 3xx. Never followed: the request carries the key and the contacts, and the place it
    /// points to is not the API the operator configured. Not retried.
    #[error(
        "AutoSend answered {status}, redirecting to {location}; listwarden does not follow \
         redirects (they would carry the API key and the contacts elsewhere): check \
         AUTOSEND_API_URL, it should be the API's own address (like {DEFAULT_BASE_URL})"
    )]
    Redirect { status: u16, location: String },
    #[error("rate limited {0} times in a row; giving up on this request")]
    RateLimited(usize),
    #[error(
        "AutoSend server error ({status}) after {attempts} attempts at {url}: {message}; \
         AutoSend may be down: try again later, and check AUTOSEND_API_URL"
    )]
    Server {
        status: u16,
        url: String,
        message: String,
        attempts: usize,
    },
    #[error(
        "cannot reach AutoSend at {url} after {attempts} attempts: {message}; check \
         AUTOSEND_API_URL and the network"
    )]
    Transport {
        url: String,
        message: String,
        attempts: usize,
    },
    /// An answer that is not one: malformed, not an explicit success, or too large. The
    /// request is not taken as done, and not retried (the same server would answer the same).
    #[error("unexpected response from AutoSend: {0}")]
    Protocol(String),
    #[error("stopped: shutting down")]
    Cancelled,
    /// The caller's [`crate::Admission`] withdrew the request before it was sent.
    #[error("withdrawn before it was sent: {0}")]
    Withdrawn(String),
}

impl ApiError {
    pub fn is_auth(&self) -> bool {
        matches!(self, ApiError::Auth { .. })
    }
}
