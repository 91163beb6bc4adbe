//! What a verified delivery says: its type, its signed time, and the contact it names, read
//! into the same validated identifiers as manifest entries ([`Email::parse`],
//! [`ContactId::parse`]), so an address from an event and the same address from a file
//! compare equal.
//!
//! Only what listwarden acts on is read; every other field, and every type it does not act
//! on (known today or added by AutoSend tomorrow), is accepted and ignored, so a new event
//! type never turns deliveries into failures that AutoSend would retry and then disable the
//! webhook over. What is read is strict: an event that should name a recipient and does not
//! is refused with a reason, not guessed at.
//!
//! Bounded: the body is capped before parsing ([`Limits`]), nesting by serde_json's own
//! recursion limit (128), and the one free-form string kept (an unknown type) is cut to
//! printable ASCII of a bounded length, since it may reach logs and metric labels.

use std::time::SystemTime;

use serde::Serialize;
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

use super::Refused;
use crate::contact::{ContactId, Email, quoted};

/// Largest body parsed. AutoSend's payloads are well under 2 KB; an inbound email
/// (`email.received`) carries metadata only, not the message.
pub const MAX_BODY_BYTES: usize = 256 * 1024;

/// Longest event type kept from an unknown event (AutoSend's are under 30 characters).
pub const MAX_EVENT_TYPE_CHARS: usize = 64;

pub const EMAIL_BOUNCED: &str = "email.bounced";
pub const EMAIL_SPAM_REPORTED: &str = "email.spam_reported";
pub const CONTACT_CREATED: &str = "contact.created";
pub const CONTACT_UPDATED: &str = "contact.updated";

/// The events AutoSend documents without `from`, `to` or `subject` ("for privacy"): they
/// cannot name a contact.
pub const NO_ADDRESS_TYPES: [&str; 3] = [
    "email.unsubscribed",
    "email.group_unsubscribed",
    "email.group_resubscribed",
];

/// Every event type AutoSend documents, for telling a misspelling from a type not acted on.
pub const KNOWN_TYPES: [&str; 14] = [
    "email.sent",
    "email.delivered",
    "email.deferred",
    EMAIL_BOUNCED,
    "email.opened",
    "email.clicked",
    EMAIL_SPAM_REPORTED,
    "email.unsubscribed",
    "email.group_unsubscribed",
    "email.group_resubscribed",
    CONTACT_CREATED,
    CONTACT_UPDATED,
    "contact.deleted",
    "email.received",
];

/// What the parser may spend on one body.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    pub max_body_bytes: usize,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            max_body_bytes: MAX_BODY_BYTES,
        }
    }
}

/// AutoSend's bounce classification (`data.bounceType`): a hard bounce (the address or
/// domain does not exist) or a soft one (mailbox full, server unavailable).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub enum BounceType {
    Permanent,
    Transient,
}

impl BounceType {
    /// As AutoSend writes it.
    pub fn as_str(self) -> &'static str {
        match self {
            BounceType::Permanent => "Permanent",
            BounceType::Transient => "Transient",
        }
    }

    /// Exactly as AutoSend writes it (`Permanent`, `Transient`).
    pub fn from_name(name: &str) -> Option<BounceType> {
        [BounceType::Permanent, BounceType::Transient]
            .into_iter()
            .find(|b| b.as_str() == name)
    }
}

impl std::fmt::Display for BounceType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One verified, parsed delivery.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Event {
    pub kind: EventKind,
    /// The signed `createdAt`: what freshness is judged from.
    pub created_at: SystemTime,
    /// SHA-256 of the raw body: AutoSend's retries of one delivery carry the same body, so
    /// this recognises them (and replays) whatever the unsigned headers say.
    pub digest: [u8; 32],
    /// `data.test`: an event of a test email. Kept for the caller to decide; nothing here
    /// treats it differently.
    pub test: bool,
}

/// What an event means to listwarden.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EventKind {
    /// `email.bounced`; `bounce_type` is `None` when absent or neither value AutoSend documents.
    Bounced {
        email: Email,
        bounce_type: Option<BounceType>,
    },
    /// `email.spam_reported`.
    SpamReported { email: Email },
    /// `contact.created` (`created`) or `contact.updated`: a hint that a contact may be back
    /// in a list. At least one of the two is present.
    ContactChanged {
        created: bool,
        email: Option<Email>,
        contact_id: Option<ContactId>,
    },
    /// One of [`NO_ADDRESS_TYPES`]: counted, never acted on.
    NoAddress { event_type: String },
    /// Any other type, known or not: accepted and ignored. The type is sanitised.
    Other { event_type: String },
}

impl EventKind {
    /// The event's type (sanitised for `Other`).
    pub fn event_type(&self) -> &str {
        match self {
            EventKind::Bounced { .. } => EMAIL_BOUNCED,
            EventKind::SpamReported { .. } => EMAIL_SPAM_REPORTED,
            EventKind::ContactChanged { created: true, .. } => CONTACT_CREATED,
            EventKind::ContactChanged { created: false, .. } => CONTACT_UPDATED,
            EventKind::NoAddress { event_type } | EventKind::Other { event_type } => event_type,
        }
    }
}

/// Parses a verified body. `header_event` is the `X-Webhook-Event` header, when sent: it is
/// not signed, so it must agree with the signed `type` or the delivery is refused (a
/// listener that routed on the header would otherwise be misled).
pub fn parse(body: &[u8], header_event: Option<&str>, limits: &Limits) -> Result<Event, Refused> {
    if body.len() > limits.max_body_bytes {
        return Err(Refused::TooLarge {
            got: body.len(),
            max: limits.max_body_bytes,
        });
    }
    let value: Value = serde_json::from_slice(body).map_err(|e| Refused::NotJson(e.to_string()))?;
    let Value::Object(root) = value else {
        return Err(Refused::NotAnObject);
    };
    let event_type = string_field(&root, "type").ok_or(Refused::MissingField("type"))?;
    if let Some(header) = header_event.map(str::trim)
        && header != event_type
    {
        return Err(Refused::TypeMismatch {
            header: quoted(&sanitised(header)),
            body: quoted(&sanitised(event_type)),
        });
    }
    let created_raw = string_field(&root, "createdAt").ok_or(Refused::MissingField("createdAt"))?;
    let created_at = humantime::parse_rfc3339(created_raw)
        .map_err(|_| Refused::BadCreatedAt(quoted(&sanitised(created_raw))))?;
    let empty = Map::new();
    let data = match root.get("data") {
        Some(Value::Object(data)) => data,
        _ => &empty,
    };
    let kind = match event_type {
        EMAIL_BOUNCED => EventKind::Bounced {
            email: recipient(data, EMAIL_BOUNCED)?,
            bounce_type: string_field(data, "bounceType").and_then(|b| {
                [BounceType::Permanent, BounceType::Transient]
                    .into_iter()
                    .find(|t| t.as_str().eq_ignore_ascii_case(b.trim()))
            }),
        },
        EMAIL_SPAM_REPORTED => EventKind::SpamReported {
            email: recipient(data, EMAIL_SPAM_REPORTED)?,
        },
        CONTACT_CREATED | CONTACT_UPDATED => {
            let created = event_type == CONTACT_CREATED;
            let email = string_field(data, "email").and_then(|e| Email::parse(e).ok());
            let contact_id = string_field(data, "contactId").and_then(|c| ContactId::parse(c).ok());
            if email.is_none() && contact_id.is_none() {
                return Err(Refused::UnusableContact(if created {
                    CONTACT_CREATED
                } else {
                    CONTACT_UPDATED
                }));
            }
            EventKind::ContactChanged {
                created,
                email,
                contact_id,
            }
        }
        t if NO_ADDRESS_TYPES.contains(&t) => EventKind::NoAddress {
            event_type: t.to_string(),
        },
        other => EventKind::Other {
            event_type: sanitised(other),
        },
    };
    Ok(Event {
        kind,
        created_at,
        digest: Sha256::digest(body).into(),
        test: matches!(data.get("test"), Some(Value::Bool(true))),
    })
}

fn string_field<'v>(object: &'v Map<String, Value>, key: &str) -> Option<&'v str> {
    object.get(key).and_then(Value::as_str)
}

/// `data.to.email` of an email event, validated like a manifest entry.
fn recipient(data: &Map<String, Value>, event_type: &'static str) -> Result<Email, Refused> {
    let refused = |reason: String| Refused::BadRecipient {
        event_type,
        field: "data.to.email",
        reason,
    };
    let raw = data
        .get("to")
        .and_then(Value::as_object)
        .and_then(|to| to.get("email"))
        .ok_or_else(|| refused("missing".to_string()))?
        .as_str()
        .ok_or_else(|| refused("not a string".to_string()))?;
    Email::parse(raw).map_err(refused)
}

/// Printable ASCII only, at most [`MAX_EVENT_TYPE_CHARS`]: safe in a log line or a label.
fn sanitised(raw: &str) -> String {
    raw.chars()
        .filter(|c| c.is_ascii_graphic() || *c == ' ')
        .take(MAX_EVENT_TYPE_CHARS)
        .collect()
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn parse_ok(body: &str) -> Event {
        parse(body.as_bytes(), None, &Limits::default())
            .unwrap_or_else(|e| panic!("refused: {e}\n{body}"))
    }

    fn refused(body: &str) -> Refused {
        parse(body.as_bytes(), None, &Limits::default()).expect_err(body)
    }

    fn email(s: &str) -> Email {
        Email::parse(s).unwrap()
    }

    fn at(rfc3339: &str) -> SystemTime {
        humantime::parse_rfc3339(rfc3339).unwrap()
    }

    // The sample payloads of AutoSend's "Event Types" page, as published.
    const SENT: &str = r#"{
  "type": "email.sent",
  "createdAt": "2025-11-12T10:00:00.000Z",
  "data": {
    "emailId": "64f1a2b3c4d5e6f7g8h9i0j1",
    "from": "sender@yourdomain.com",
    "to": {
      "email": "user@example.com",
      "name": "John Doe"
    },
    "subject": "Welcome to AutoSend",
    "test": false,
    "campaignId": "64f1a2b3c4d5e6f7g8h9i0j2",
    "templateId": "64f1a2b3c4d5e6f7g8h9i0j4",
    "workflowAutomationId": "64f1a2b3c4d5e6f7g8h9i0j5",
    "batchId": "64f1a2b3c4d5e6f7g8h9i0j6"
  }
}"#;

    const DEFERRED: &str = r#"{
  "type": "email.deferred",
  "createdAt": "2025-11-12T10:10:00.000Z",
  "data": {
    "emailId": "64f1a2b3c4d5e6f7g8h9i0j1",
    "from": "sender@yourdomain.com",
    "to": {
      "email": "user@example.com",
      "name": "John Doe"
    },
    "subject": "Welcome to AutoSend",
    "test": false,
    "campaignId": "64f1a2b3c4d5e6f7g8h9i0j2",
    "templateId": "64f1a2b3c4d5e6f7g8h9i0j4",
    "workflowAutomationId": "64f1a2b3c4d5e6f7g8h9i0j5",
    "batchId": "64f1a2b3c4d5e6f7g8h9i0j6",
    "delayType": "InternalFailure",
    "delayReason": "Temporary connection failure",
    "expirationTime": "2025-11-12T14:10:00.000Z"
  }
}"#;

    const BOUNCED: &str = r#"{
  "type": "email.bounced",
  "createdAt": "2025-11-12T10:20:00.000Z",
  "data": {
    "emailId": "64f1a2b3c4d5e6f7g8h9i0j1",
    "from": "sender@yourdomain.com",
    "to": {
      "email": "invalid@example.com",
      "name": "Invalid User"
    },
    "subject": "Welcome to AutoSend",
    "test": false,
    "campaignId": "64f1a2b3c4d5e6f7g8h9i0j2",
    "templateId": "64f1a2b3c4d5e6f7g8h9i0j4",
    "workflowAutomationId": "64f1a2b3c4d5e6f7g8h9i0j5",
    "batchId": "64f1a2b3c4d5e6f7g8h9i0j6",
    "bounceType": "Permanent",
    "bounceSubType": "General",
    "reason": "550 5.1.1 The email account that you tried to reach does not exist"
  }
}"#;

    const CLICKED: &str = r#"{
  "type": "email.clicked",
  "createdAt": "2025-11-12T10:35:00.000Z",
  "data": {
    "emailId": "64f1a2b3c4d5e6f7g8h9i0j1",
    "from": "sender@yourdomain.com",
    "to": {
      "email": "user@example.com",
      "name": "John Doe"
    },
    "subject": "Welcome to AutoSend",
    "test": false,
    "clickedUrl": "https://example.com/product",
    "campaignId": "64f1a2b3c4d5e6f7g8h9i0j2",
    "templateId": "64f1a2b3c4d5e6f7g8h9i0j4",
    "workflowAutomationId": "64f1a2b3c4d5e6f7g8h9i0j5",
    "batchId": "64f1a2b3c4d5e6f7g8h9i0j6"
  }
}"#;

    const SPAM_REPORTED: &str = r#"{
  "type": "email.spam_reported",
  "createdAt": "2025-11-12T10:45:00.000Z",
  "data": {
    "emailId": "64f1a2b3c4d5e6f7g8h9i0j1",
    "from": "sender@yourdomain.com",
    "to": {
      "email": "user@example.com",
      "name": "John Doe"
    },
    "subject": "Welcome to AutoSend",
    "test": false,
    "campaignId": "64f1a2b3c4d5e6f7g8h9i0j2",
    "templateId": "64f1a2b3c4d5e6f7g8h9i0j4",
    "workflowAutomationId": "64f1a2b3c4d5e6f7g8h9i0j5",
    "batchId": "64f1a2b3c4d5e6f7g8h9i0j6",
    "complaintType": "abuse"
  }
}"#;

    const UNSUBSCRIBED: &str = r#"{
  "type": "email.unsubscribed",
  "createdAt": "2025-11-12T10:40:00.000Z",
  "data": {
    "emailId": "64f1a2b3c4d5e6f7g8h9i0j1",
    "test": false,
    "campaignId": "64f1a2b3c4d5e6f7g8h9i0j2",
    "templateId": "64f1a2b3c4d5e6f7g8h9i0j4",
    "workflowAutomationId": "64f1a2b3c4d5e6f7g8h9i0j5",
    "batchId": "64f1a2b3c4d5e6f7g8h9i0j6"
  }
}"#;

    const GROUP_UNSUBSCRIBED: &str = r#"{
  "type": "email.group_unsubscribed",
  "createdAt": "2025-11-12T10:42:00.000Z",
  "data": {
    "emailId": "64f1a2b3c4d5e6f7g8h9i0j1",
    "test": false,
    "unsubscribeGroupId": "newsletter-marketing",
    "campaignId": "64f1a2b3c4d5e6f7g8h9i0j2",
    "templateId": "64f1a2b3c4d5e6f7g8h9i0j4",
    "workflowAutomationId": "64f1a2b3c4d5e6f7g8h9i0j5",
    "batchId": "64f1a2b3c4d5e6f7g8h9i0j6"
  }
}"#;

    const GROUP_RESUBSCRIBED: &str = r#"{
  "type": "email.group_resubscribed",
  "createdAt": "2025-11-12T11:00:00.000Z",
  "data": {
    "emailId": "64f1a2b3c4d5e6f7g8h9i0j1",
    "test": false,
    "unsubscribeGroupId": "newsletter-marketing",
    "campaignId": "64f1a2b3c4d5e6f7g8h9i0j2"
  }
}"#;

    const CONTACT_CREATED_SAMPLE: &str = r#"{
  "type": "contact.created",
  "createdAt": "2025-11-12T09:00:00.000Z",
  "data": {
    "contactId": "64f1a2b3c4d5e6f7g8h9i0j3",
    "email": "newuser@example.com",
    "name": "John Doe"
  }
}"#;

    const CONTACT_UPDATED_SAMPLE: &str = r#"{
  "type": "contact.updated",
  "createdAt": "2025-11-12T09:30:00.000Z",
  "data": {
    "contactId": "64f1a2b3c4d5e6f7g8h9i0j3",
    "email": "user@example.com",
    "name": "Jonathan Doe",
    "changedFields": ["name"]
  }
}"#;

    const CONTACT_DELETED: &str = r#"{
  "type": "contact.deleted",
  "createdAt": "2025-11-12T09:45:00.000Z",
  "data": {
    "contactId": "64f1a2b3c4d5e6f7g8h9i0j3",
    "email": "deleteduser@example.com"
  }
}"#;

    const RECEIVED: &str = r#"{
  "type": "email.received",
  "createdAt": "2026-06-24T10:30:00.000Z",
  "data": {
    "inboundEmailId": "64f1a2b3c4d5e6f7g8h9i0j1",
    "from": {
      "email": "customer@example.com",
      "name": "Jane Customer"
    },
    "to": [
      {
        "email": "support@inbox.autosend.email",
        "name": null
      }
    ],
    "cc": [],
    "subject": "Question about my order"
  }
}"#;

    #[test]
    fn the_documented_bounce_names_its_recipient_and_bounce_type() {
        let event = parse_ok(BOUNCED);
        assert_eq!(
            event.kind,
            EventKind::Bounced {
                email: email("invalid@example.com"),
                bounce_type: Some(BounceType::Permanent)
            }
        );
        assert_eq!(event.created_at, at("2025-11-12T10:20:00Z"));
        assert!(!event.test);
        assert_eq!(event.kind.event_type(), "email.bounced");
    }

    #[test]
    fn the_documented_spam_report_names_its_recipient() {
        let event = parse_ok(SPAM_REPORTED);
        assert_eq!(
            event.kind,
            EventKind::SpamReported {
                email: email("user@example.com")
            }
        );
        assert_eq!(event.created_at, at("2025-11-12T10:45:00Z"));
    }

    #[test]
    fn the_documented_contact_events_are_hints_with_email_and_id() {
        let created = parse_ok(CONTACT_CREATED_SAMPLE);
        assert_eq!(
            created.kind,
            EventKind::ContactChanged {
                created: true,
                email: Some(email("newuser@example.com")),
                contact_id: ContactId::parse("64f1a2b3c4d5e6f7g8h9i0j3").ok(),
            }
        );
        let updated = parse_ok(CONTACT_UPDATED_SAMPLE);
        assert_eq!(
            updated.kind,
            EventKind::ContactChanged {
                created: false,
                email: Some(email("user@example.com")),
                contact_id: ContactId::parse("64f1a2b3c4d5e6f7g8h9i0j3").ok(),
            }
        );
        assert_eq!(updated.kind.event_type(), "contact.updated");
    }

    #[test]
    fn the_documented_subscription_events_carry_no_address() {
        for (body, event_type) in [
            (UNSUBSCRIBED, "email.unsubscribed"),
            (GROUP_UNSUBSCRIBED, "email.group_unsubscribed"),
            (GROUP_RESUBSCRIBED, "email.group_resubscribed"),
        ] {
            assert_eq!(
                parse_ok(body).kind,
                EventKind::NoAddress {
                    event_type: event_type.into()
                }
            );
        }
    }

    #[test]
    fn the_other_documented_events_are_accepted_and_ignored() {
        for (body, event_type) in [
            (SENT, "email.sent"),
            (DEFERRED, "email.deferred"),
            (CLICKED, "email.clicked"),
            (CONTACT_DELETED, "contact.deleted"),
            (RECEIVED, "email.received"),
        ] {
            assert_eq!(
                parse_ok(body).kind,
                EventKind::Other {
                    event_type: event_type.into()
                }
            );
        }
    }

    #[test]
    fn an_unknown_type_is_accepted_with_its_type_cut_to_printable_ascii() {
        let long = format!("future.{}\u{7}\u{1b}[31mé", "x".repeat(100));
        let body =
            serde_json::json!({"type": long, "createdAt": "2025-11-12T10:00:00Z"}).to_string();
        let EventKind::Other { event_type } = parse_ok(&body).kind else {
            panic!("not Other");
        };
        assert_eq!(event_type.len(), MAX_EVENT_TYPE_CHARS);
        assert!(event_type.starts_with("future.xxx"));
        assert!(event_type.bytes().all(|b| (0x20..0x7f).contains(&b)));
    }

    #[test]
    fn a_recipient_address_is_normalised_like_a_manifest_entry() {
        let body = BOUNCED.replace("invalid@example.com", "  Invalid@Example.COM ");
        let EventKind::Bounced { email: got, .. } = parse_ok(&body).kind else {
            panic!("not Bounced");
        };
        assert_eq!(got, email("invalid@example.com"));
    }

    #[test]
    fn a_bounce_type_is_read_in_any_case_and_an_unknown_or_absent_one_is_none() {
        let bounce_type = |body: &str| match parse_ok(body).kind {
            EventKind::Bounced { bounce_type, .. } => bounce_type,
            other => panic!("{other:?}"),
        };
        let transient = BOUNCED.replace("\"Permanent\"", "\"transient\"");
        assert_eq!(bounce_type(&transient), Some(BounceType::Transient));
        let undetermined = BOUNCED.replace("\"Permanent\"", "\"Undetermined\"");
        assert_eq!(bounce_type(&undetermined), None);
        let absent = BOUNCED.replace("\"bounceType\": \"Permanent\",", "");
        assert_eq!(bounce_type(&absent), None);
    }

    #[test]
    fn a_test_email_event_is_marked_as_a_test() {
        let body = BOUNCED.replace("\"test\": false", "\"test\": true");
        assert!(parse_ok(&body).test);
    }

    #[test]
    fn the_digest_is_the_sha256_of_the_raw_body() {
        let event = parse_ok(BOUNCED);
        let want: [u8; 32] = Sha256::digest(BOUNCED.as_bytes()).into();
        assert_eq!(event.digest, want);
        let reformatted = BOUNCED.replace("\n", "");
        assert_ne!(parse_ok(&reformatted).digest, event.digest);
    }

    #[test]
    fn a_body_that_is_not_json_is_refused() {
        for body in ["", "type=email.bounced", "{\"type\":", "{\"a\":1} trailing"] {
            assert!(matches!(refused(body), Refused::NotJson(_)), "{body:?}");
        }
    }

    #[test]
    fn a_body_that_is_not_an_object_is_refused() {
        for body in [
            "[]",
            r#"[{"type":"email.bounced"}]"#,
            "\"email.bounced\"",
            "1",
        ] {
            assert_eq!(refused(body), Refused::NotAnObject, "{body}");
        }
    }

    #[test]
    fn a_body_without_a_string_type_is_refused() {
        assert_eq!(
            refused(r#"{"createdAt":"2025-11-12T10:00:00Z"}"#),
            Refused::MissingField("type")
        );
        assert_eq!(
            refused(r#"{"type":7,"createdAt":"2025-11-12T10:00:00Z"}"#),
            Refused::MissingField("type")
        );
    }

    #[test]
    fn a_body_without_created_at_is_refused() {
        let body = BOUNCED.replace("\"createdAt\"", "\"created\"");
        assert_eq!(refused(&body), Refused::MissingField("createdAt"));
    }

    #[test]
    fn a_created_at_that_is_not_an_rfc_3339_utc_time_is_refused() {
        for date in [
            "yesterday",
            "2025-11-12",
            "2025-13-12T10:20:00Z",
            "1762942800000",
            "2025-11-12T10:20:00+02:00",
        ] {
            let body = BOUNCED.replace("2025-11-12T10:20:00.000Z", date);
            assert_eq!(
                refused(&body),
                Refused::BadCreatedAt(format!("{date:?}")),
                "{date}"
            );
        }
    }

    #[test]
    fn a_bounce_or_spam_report_whose_recipient_is_not_an_email_is_refused() {
        for sample in [BOUNCED, SPAM_REPORTED] {
            let address = if sample == BOUNCED {
                "invalid@example.com"
            } else {
                "user@example.com"
            };
            let body = sample.replace(address, "not-an-address");
            let reason = refused(&body);
            assert!(
                matches!(
                    &reason,
                    Refused::BadRecipient {
                        field: "data.to.email",
                        ..
                    }
                ),
                "{reason:?}"
            );
            assert!(
                reason.to_string().contains("\"not-an-address\""),
                "{reason}"
            );
        }
    }

    #[test]
    fn a_bounce_without_a_recipient_is_refused() {
        let no_to = r#"{"type":"email.bounced","createdAt":"2025-11-12T10:20:00Z","data":{}}"#;
        assert!(matches!(refused(no_to), Refused::BadRecipient { .. }));
        let no_data = r#"{"type":"email.bounced","createdAt":"2025-11-12T10:20:00Z"}"#;
        assert!(matches!(refused(no_data), Refused::BadRecipient { .. }));
        let number = r#"{"type":"email.spam_reported","createdAt":"2025-11-12T10:20:00Z","data":{"to":{"email":5}}}"#;
        assert_eq!(
            refused(number).to_string(),
            "email.spam_reported event without a usable recipient at `data.to.email`: not a string"
        );
    }

    #[test]
    fn a_contact_event_with_one_usable_identifier_keeps_that_one() {
        let only_id = r#"{"type":"contact.updated","createdAt":"2025-11-12T09:30:00Z","data":{"contactId":"c-1","email":"nope"}}"#;
        assert_eq!(
            parse_ok(only_id).kind,
            EventKind::ContactChanged {
                created: false,
                email: None,
                contact_id: ContactId::parse("c-1").ok()
            }
        );
        let only_email = r#"{"type":"contact.created","createdAt":"2025-11-12T09:30:00Z","data":{"email":"A@Example.com"}}"#;
        assert_eq!(
            parse_ok(only_email).kind,
            EventKind::ContactChanged {
                created: true,
                email: Some(email("a@example.com")),
                contact_id: None
            }
        );
    }

    #[test]
    fn a_contact_event_with_neither_a_valid_email_nor_a_valid_id_is_refused_as_unusable() {
        for data in [
            "{}",
            r#"{"name":"John"}"#,
            r#"{"email":"nope","contactId":"../etc"}"#,
        ] {
            let body = format!(
                r#"{{"type":"contact.created","createdAt":"2025-11-12T09:00:00Z","data":{data}}}"#
            );
            assert_eq!(
                refused(&body),
                Refused::UnusableContact("contact.created"),
                "{data}"
            );
        }
    }

    #[test]
    fn a_type_that_disagrees_with_the_event_header_is_refused() {
        let limits = Limits::default();
        let got = parse(BOUNCED.as_bytes(), Some("email.opened"), &limits);
        assert_eq!(
            got,
            Err(Refused::TypeMismatch {
                header: "\"email.opened\"".into(),
                body: "\"email.bounced\"".into()
            })
        );
        assert!(parse(BOUNCED.as_bytes(), Some("email.bounced"), &limits).is_ok());
        assert!(parse(BOUNCED.as_bytes(), None, &limits).is_ok());
    }

    #[test]
    fn an_oversize_body_is_refused_before_it_is_parsed() {
        let padding = " ".repeat(MAX_BODY_BYTES);
        let body = format!("{BOUNCED}{padding}");
        assert_eq!(
            refused(&body),
            Refused::TooLarge {
                got: body.len(),
                max: MAX_BODY_BYTES
            }
        );
        let small = Limits { max_body_bytes: 16 };
        assert!(matches!(
            parse(BOUNCED.as_bytes(), None, &small),
            Err(Refused::TooLarge { max: 16, .. })
        ));
    }

    #[test]
    fn deep_nesting_is_refused_without_exhausting_the_stack() {
        let depth = 100_000;
        let body = format!(
            r#"{{"type":"email.sent","createdAt":"2025-11-12T10:00:00Z","data":{}{}}}"#,
            "[".repeat(depth),
            "]".repeat(depth)
        );
        let limits = Limits {
            max_body_bytes: body.len(),
        };
        let got = parse(body.as_bytes(), None, &limits);
        assert!(
            matches!(&got, Err(Refused::NotJson(reason)) if reason.contains("recursion limit")),
            "{got:?}"
        );
    }

    #[test]
    fn created_at_keeps_its_milliseconds() {
        let body = BOUNCED.replace("10:20:00.000Z", "10:20:00.250Z");
        assert_eq!(
            parse_ok(&body).created_at,
            at("2025-11-12T10:20:00Z") + Duration::from_millis(250)
        );
    }
}
