//! Diagnostics: one problem, one line, with a place a person can jump to.
//!
//! Two shapes, both `LOCATION: severity: message`, so `grep ': error:'` finds every error:
//! - `path:line:column: error: ...` when the place is a line of a file (YAML syntax, an entry
//!   of a file source);
//! - `path: document N (name): spec.exclude.emails[3]: error: ...` for a rule broken by a
//!   value, named by its field path inside the document.

use std::fmt;
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::contact::{QUOTE_MAX_BYTES, clipped};

/// The longest message a diagnostic keeps. Values are already quoted short
/// ([`crate::contact::quoted`]); this bounds what they are embedded in (a long list of CSV
/// headers, of duplicate places, a library's message), since every message is printed, put
/// in the JSON plan and stored as a policy's status.
pub const MAX_MESSAGE_BYTES: usize = 1024;

/// Cuts a message longer than [`MAX_MESSAGE_BYTES`] in its middle: the start names the
/// problem and the end says the fix, so both are kept.
fn capped(message: String) -> String {
    if message.len() <= MAX_MESSAGE_BYTES {
        return message;
    }
    // Room for the marker, " … [N bytes cut] … ".
    let kept = MAX_MESSAGE_BYTES - 40;
    let mut head = kept * 2 / 3;
    while !message.is_char_boundary(head) {
        head -= 1;
    }
    let mut tail = message.len() - kept / 3;
    while !message.is_char_boundary(tail) {
        tail += 1;
    }
    format!(
        "{} … [{} bytes cut] … {}",
        &message[..head],
        tail - head,
        &message[tail..]
    )
}

/// Library messages (serde's, libyaml's) repeat values inside `backticks` or "quotes"
/// (`unknown field `…``, `invalid type: string "…"`); each such span is shortened the way
/// [`crate::contact::quoted`] shortens a value, so a runaway key or value cannot make the
/// message huge.
pub fn clip_echoed(message: &str) -> String {
    if message.len() <= QUOTE_MAX_BYTES {
        return message.to_string();
    }
    let bytes = message.as_bytes();
    let mut out = String::with_capacity(message.len().min(MAX_MESSAGE_BYTES * 2));
    let mut i = 0;
    // A delimiter that found no closing one once never will later: not scanning again keeps
    // this linear.
    let mut unclosed = [false, false];
    while i < bytes.len() {
        let open = bytes[i];
        let kind = usize::from(open == b'"');
        if (open == b'`' || open == b'"') && !unclosed[kind] {
            // The closing delimiter; `"` spans are Rust-escaped, so `\"` does not close them.
            let mut j = i + 1;
            while j < bytes.len() && bytes[j] != open {
                j += if open == b'"' && bytes[j] == b'\\' {
                    2
                } else {
                    1
                };
            }
            if j < bytes.len() {
                let inner = &message[i + 1..j];
                if inner.len() > QUOTE_MAX_BYTES {
                    let mut end = QUOTE_MAX_BYTES;
                    while !inner.is_char_boundary(end) {
                        end -= 1;
                    }
                    let delimiter = open as char;
                    out.push(delimiter);
                    out.push_str(&inner[..end]);
                    out.push('…');
                    out.push(delimiter);
                    out.push_str(&format!(" ({} bytes)", inner.len()));
                } else {
                    out.push_str(&message[i..=j]);
                }
                i = j + 1;
                continue;
            }
            unclosed[kind] = true;
        }
        let next = message[i..].chars().next().map_or(1, char::len_utf8);
        out.push_str(&message[i..i + next]);
        i += next;
    }
    out
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Error,
    Warning,
}

impl fmt::Display for Severity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Severity::Error => "error",
            Severity::Warning => "warning",
        })
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Diagnostic {
    pub severity: Severity,
    pub file: PathBuf,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub line: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub column: Option<usize>,
    /// 1-based index of the YAML document inside its file.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub document: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub policy: Option<String>,
    /// Field path inside the document, e.g. `spec.exclude.emails[3]`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
    pub message: String,
}

impl Diagnostic {
    pub fn error(file: &Path, message: impl Into<String>) -> Diagnostic {
        Diagnostic {
            severity: Severity::Error,
            file: file.to_path_buf(),
            line: None,
            column: None,
            document: None,
            policy: None,
            field: None,
            message: capped(message.into()),
        }
    }

    pub fn warning(file: &Path, message: impl Into<String>) -> Diagnostic {
        Diagnostic {
            severity: Severity::Warning,
            ..Diagnostic::error(file, message)
        }
    }

    pub fn at(mut self, line: usize, column: usize) -> Diagnostic {
        self.line = Some(line);
        self.column = Some(column);
        self
    }

    pub fn in_document(mut self, document: usize, policy: Option<&str>) -> Diagnostic {
        self.document = Some(document);
        // The name as written, which may be anything when it is invalid.
        self.policy = policy.map(|p| clipped(p).into_owned());
        self
    }

    pub fn field(mut self, field: impl Into<String>) -> Diagnostic {
        // A path can hold a key as written (`metadata.labels.<key>`).
        let field = field.into();
        self.field = Some(match clipped(&field) {
            std::borrow::Cow::Borrowed(_) => field,
            std::borrow::Cow::Owned(short) => short,
        });
        self
    }

    pub fn is_error(&self) -> bool {
        self.severity == Severity::Error
    }
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if let Some(line) = self.line {
            write!(f, ":{line}:{}", self.column.unwrap_or(1))?;
        }
        f.write_str(":")?;
        if let Some(doc) = self.document {
            write!(f, " document {doc}")?;
            if let Some(policy) = &self.policy {
                write!(f, " ({policy})")?;
            }
            f.write_str(":")?;
        } else if let Some(policy) = &self.policy {
            write!(f, " policy {policy}:")?;
        }
        if let Some(field) = &self.field {
            write!(f, " {field}:")?;
        }
        // Messages are kept on one line so that every problem stays one grep-able line.
        write!(f, " {}: {}", self.severity, self.message.replace('\n', " "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_long_message_keeps_its_start_and_its_fix() {
        let d = Diagnostic::error(
            Path::new("a.yaml"),
            format!("bad {}; fix it like this", "x".repeat(5000)),
        );
        assert!(d.message.len() <= MAX_MESSAGE_BYTES, "{}", d.message);
        assert!(d.message.starts_with("bad xxx"), "{}", d.message);
        assert!(
            d.message.ends_with("xxx; fix it like this"),
            "{}",
            d.message
        );
        assert!(d.message.contains(" bytes cut] "), "{}", d.message);
    }

    #[test]
    fn policy_labels_and_field_paths_are_shortened() {
        let long = "n".repeat(10_000);
        let d = Diagnostic::error(Path::new("a.yaml"), "bad")
            .in_document(1, Some(&long))
            .field(format!("metadata.labels.{long}"));
        let line = d.to_string();
        assert!(line.len() < 600, "{line}");
        assert!(
            line.contains("n… (10000 bytes)): metadata.labels.nnn"),
            "{line}"
        );
        assert!(line.ends_with("n… (10016 bytes): error: bad"), "{line}");
    }

    #[test]
    fn values_repeated_in_library_messages_are_shortened() {
        let key = "k".repeat(1000);
        let value = format!("{}\\\"{}", "v".repeat(10), "w".repeat(1000));
        let message =
            format!("unknown field `{key}`, expected `a`; invalid type: string \"{value}\" here");
        let short = clip_echoed(&message);
        assert!(short.len() < 600, "{short}");
        assert!(short.starts_with("unknown field `kkk"), "{short}");
        assert!(short.contains("k…` (1000 bytes), expected `a`;"), "{short}");
        assert!(short.contains("…\" (1012 bytes) here"), "{short}");
        // Short spans and unmatched delimiters are left alone.
        let plain = format!("a `b` and \"c\" and an ` alone {}", "z".repeat(300));
        assert_eq!(clip_echoed(&plain), plain);
    }

    #[test]
    fn line_diagnostics_read_path_line_column_severity() {
        let d = Diagnostic::error(Path::new("m/bounced.txt"), "bad").at(42, 1);
        assert_eq!(d.to_string(), "m/bounced.txt:42:1: error: bad");
    }

    #[test]
    fn field_diagnostics_name_document_policy_and_field() {
        let d = Diagnostic::warning(Path::new("m/a.yaml"), "dup")
            .in_document(2, Some("news"))
            .field("spec.exclude.emails[3]");
        assert_eq!(
            d.to_string(),
            "m/a.yaml: document 2 (news): spec.exclude.emails[3]: warning: dup"
        );
    }
}
