//! Conditions: how a policy's state is said, in the spirit of Flux's kstatus: `Ready` (True,
//! False, Unknown) with a [`Reason`] and a message. Shared by the store, reconcile, status,
//! metrics and the daemon; the reasons are documented in the README ("Conditions").

use serde::Serialize;

/// Kubernetes-style readiness of a policy.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum Ready {
    True,
    False,
    Unknown,
}

impl Ready {
    pub fn as_str(self) -> &'static str {
        match self {
            Ready::True => "True",
            Ready::False => "False",
            Ready::Unknown => "Unknown",
        }
    }

    pub fn parse(s: &str) -> Ready {
        match s {
            "True" => Ready::True,
            "False" => Ready::False,
            _ => Ready::Unknown,
        }
    }
}

/// Why a policy is (not) ready. Stored and shown by name.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Reason {
    Converged,
    Progressing,
    PartiallyFailed,
    ThresholdExceeded,
    ListNotFound,
    ListIsSegment,
    Unauthorized,
    ManifestInvalid,
    Suspended,
    ApiError,
    StoreError,
}

impl Reason {
    pub const ALL: [Reason; 11] = [
        Reason::Converged,
        Reason::Progressing,
        Reason::PartiallyFailed,
        Reason::ThresholdExceeded,
        Reason::ListNotFound,
        Reason::ListIsSegment,
        Reason::Unauthorized,
        Reason::ManifestInvalid,
        Reason::Suspended,
        Reason::ApiError,
        Reason::StoreError,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Converged => "Converged",
            Reason::Progressing => "Progressing",
            Reason::PartiallyFailed => "PartiallyFailed",
            Reason::ThresholdExceeded => "ThresholdExceeded",
            Reason::ListNotFound => "ListNotFound",
            Reason::ListIsSegment => "ListIsSegment",
            Reason::Unauthorized => "Unauthorized",
            Reason::ManifestInvalid => "ManifestInvalid",
            Reason::Suspended => "Suspended",
            Reason::ApiError => "ApiError",
            Reason::StoreError => "StoreError",
        }
    }

    /// The reason named `s`; an unknown name (a store written by another version) reads as
    /// `Progressing`: not ready, not failed, resolved by the next sync.
    pub fn parse(s: &str) -> Reason {
        Reason::ALL
            .into_iter()
            .find(|r| r.as_str() == s)
            .unwrap_or(Reason::Progressing)
    }
}

impl std::fmt::Display for Reason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A reason compares with its name, as it reads in status and the store.
impl PartialEq<&str> for Reason {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

impl Serialize for Reason {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

/// A policy's `Ready` condition.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Condition {
    pub ready: Ready,
    pub reason: Reason,
    pub message: String,
}

impl Condition {
    pub fn new(ready: Ready, reason: Reason, message: impl Into<String>) -> Condition {
        Condition {
            ready,
            reason,
            message: message.into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_reason_reads_back_by_its_name() {
        for r in Reason::ALL {
            assert_eq!(Reason::parse(r.as_str()), r);
        }
        assert_eq!(Reason::parse("SomethingNew"), Reason::Progressing);
    }
}
