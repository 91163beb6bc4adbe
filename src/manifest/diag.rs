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
            message: message.into(),
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
        self.policy = policy.map(str::to_string);
        self
    }

    pub fn field(mut self, field: impl Into<String>) -> Diagnostic {
        self.field = Some(field.into());
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
