//! AutoSend webhooks, the pure part: is a delivery authentic ([`verify`]), what does it say
//! ([`event`]), is it recent enough to act on ([`freshness`]).
//!
//! No I/O here, no store, no clock of its own (the caller passes `now`): the HTTP listener,
//! the duplicate memory and the handling live elsewhere, and call these in this order:
//! signature first (nothing unauthenticated is parsed beyond its size), then the body, then
//! freshness judged from the *signed* `createdAt` (the `X-Webhook-Timestamp` header is not
//! signed, so it proves nothing).
//!
//! Every refusal is one [`Refused`] variant, so the listener can count them by cause
//! (`webhook_events_total{result}`) and answer with a short reason. Reasons are written for
//! the person reading AutoSend's delivery log: they never repeat the secret or the expected
//! signature, and repeat at most a clipped, quoted piece of the body.

pub mod event;
pub mod freshness;
pub mod verify;

use std::time::Duration;

pub use event::{BounceType, Event, EventKind, Limits, parse};
pub use freshness::{DEFAULT_SKEW, DEFAULT_WINDOW, check_fresh};
pub use verify::verify_signature;

/// Why a delivery was refused. `Display` is the short reason given back to the sender.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    /// A deployment without a secret must not accept what anyone can sign with an empty key.
    #[error("no webhook secret is configured")]
    NoSecret,
    #[error("missing X-Webhook-Signature header")]
    MissingSignature,
    #[error("X-Webhook-Signature is not hexadecimal")]
    SignatureNotHex,
    #[error("X-Webhook-Signature has {got} hex digits, expected 64 (HMAC-SHA256)")]
    SignatureWrongLength { got: usize },
    #[error("X-Webhook-Signature does not match the body")]
    BadSignature,
    #[error("body of {got} bytes is over the {max}-byte limit")]
    TooLarge { got: usize, max: usize },
    /// serde_json's syntax errors name a place, never the text, so they are safe to repeat.
    #[error("body is not JSON: {0}")]
    NotJson(String),
    #[error("body is not a JSON object")]
    NotAnObject,
    #[error("missing or non-string field `{0}`")]
    MissingField(&'static str),
    #[error("createdAt {0} is not an RFC 3339 UTC time such as 2025-11-12T10:20:00.000Z")]
    BadCreatedAt(String),
    #[error("body type {body} disagrees with the X-Webhook-Event header {header}")]
    TypeMismatch { header: String, body: String },
    #[error("{event_type} event without a usable recipient at `{field}`: {reason}")]
    BadRecipient {
        event_type: &'static str,
        field: &'static str,
        reason: String,
    },
    #[error("{0} event names neither a valid email nor a valid contactId")]
    UnusableContact(&'static str),
    #[error("event is {} old, over the {} window", human(*age), human(*window))]
    Stale { age: Duration, window: Duration },
    #[error("event is {} in the future, over the {} allowed skew", human(*ahead), human(*skew))]
    Future { ahead: Duration, skew: Duration },
}

fn human(d: Duration) -> String {
    humantime::format_duration(Duration::from_secs(d.as_secs())).to_string()
}
