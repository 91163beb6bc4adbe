//! File sources: large exclusion sets kept beside the manifest, as plain text (one entry a
//! line, `#` comments) or as CSV with a header row.
//!
//! A file source is read relative to its manifest's directory and must resolve (symlinks
//! included) inside the loaded root: a manifest must not be able to pull data from anywhere
//! else on the machine that runs listwarden.

use std::path::{Path, PathBuf};

use super::diag::Diagnostic;
use crate::contact::{clipped, quoted};

/// At most this many headers of a CSV file are listed when its column is not found.
const MAX_HEADERS_SHOWN: usize = 10;

/// A path in a message: it may come from a manifest, so it is kept short.
fn shown(path: &Path) -> String {
    clipped(&path.display().to_string()).into_owned()
}

/// At most this many entry errors are listed per file source; the rest are counted. A file
/// of 100,000 bad lines (say, the wrong column) must not bury every other diagnostic.
const MAX_ENTRY_DIAGNOSTICS: usize = 20;

/// What the entries of a file are.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EntryType {
    Email,
    ContactId,
}

/// A file source as written in a manifest, after its fields were checked.
pub struct FileSourceSpec<'a> {
    pub path: &'a str,
    pub column: Option<&'a str>,
    pub entry_type: EntryType,
}

/// Resolves `spec.path` against the manifest's directory and checks that it stays inside
/// `root` (canonical). Returns the path to read and the path to show in diagnostics.
pub fn resolve(root: &Path, manifest_dir: &Path, raw: &str) -> Result<(PathBuf, PathBuf), String> {
    let rel = Path::new(raw);
    if raw.trim().is_empty() {
        return Err("path is empty; give a file path relative to the manifest".into());
    }
    if rel.is_absolute() {
        return Err(format!(
            "{} is an absolute path; file sources are relative to the manifest's directory",
            quoted(raw)
        ));
    }
    let shown = manifest_dir.join(rel);
    let canonical = match shown.canonicalize() {
        Ok(p) => p,
        Err(e) => {
            return Err(format!(
                "cannot read {}: {}; check the path (it is relative to the manifest's directory)",
                self::shown(&shown),
                io_reason(&e)
            ));
        }
    };
    if !canonical.starts_with(root) {
        return Err(format!(
            "{} resolves to {}, outside the loaded root {}; keep file sources inside the \
             manifests directory (no '..' escape, no symlink leading out)",
            quoted(raw),
            self::shown(&canonical),
            self::shown(root)
        ));
    }
    if !canonical.is_file() {
        return Err(format!(
            "{} is not a regular file; give the path of a text or CSV file",
            self::shown(&shown)
        ));
    }
    Ok((canonical, shown))
}

pub fn io_reason(e: &std::io::Error) -> String {
    match e.kind() {
        std::io::ErrorKind::NotFound => "no such file".into(),
        std::io::ErrorKind::PermissionDenied => "permission denied".into(),
        _ => e.to_string(),
    }
}

/// One entry read from a file source, with the line it came from.
pub struct Entry<'t> {
    pub line: usize,
    pub column: usize,
    pub text: &'t str,
}

/// Reads the entries of a plain-text source: one a line, blank lines and `#` comments
/// (whole-line, or after whitespace) ignored.
pub fn text_entries(text: &str) -> impl Iterator<Item = Entry<'_>> {
    text.lines().enumerate().filter_map(|(i, line)| {
        let start = line.len() - line.trim_start().len();
        let mut content = line.trim();
        if content.starts_with('#') || content.is_empty() {
            return None;
        }
        // Bytes, not chars: a space or a tab is one byte in UTF-8, and this runs per line.
        let blank = content.bytes().position(|b| b == b' ' || b == b'\t');
        if let Some(pos) = blank.and_then(|p| {
            content[p..]
                .find('#')
                .map(|h| p + h)
                .filter(|&h| content[..h].ends_with([' ', '\t']))
        }) {
            content = content[..pos].trim_end();
        }
        Some(Entry {
            line: i + 1,
            column: start + 1,
            text: content,
        })
    })
}

/// Parses every entry of a source with `parse`, collecting the good ones and at most
/// [`MAX_ENTRY_DIAGNOSTICS`] errors (plus one line counting the rest).
pub fn collect_entries<'t, T>(
    shown: &Path,
    entries: impl Iterator<Item = Entry<'t>>,
    parse: impl Fn(&str) -> Result<T, String>,
    context: &str,
    out: &mut Vec<T>,
    diagnostics: &mut Vec<Diagnostic>,
) -> usize {
    let mut errors = 0usize;
    for entry in entries {
        match parse(entry.text) {
            Ok(v) => out.push(v),
            Err(msg) => {
                errors += 1;
                if errors <= MAX_ENTRY_DIAGNOSTICS {
                    diagnostics.push(
                        Diagnostic::error(shown, format!("{msg} ({context})"))
                            .at(entry.line, entry.column),
                    );
                }
            }
        }
    }
    if errors > MAX_ENTRY_DIAGNOSTICS {
        diagnostics.push(Diagnostic::error(
            shown,
            format!(
                "{} more invalid entries not listed ({context}); is `type` or `column` right?",
                errors - MAX_ENTRY_DIAGNOSTICS
            ),
        ));
    }
    errors
}

/// Reads the column `column` of a CSV file with a header row (matched case-insensitively).
/// Returns owned entries with their line numbers, or one error for the whole file.
pub fn csv_entries(text: &str, column: &str) -> Result<Vec<(usize, String)>, String> {
    let mut reader = csv::ReaderBuilder::new()
        .flexible(true)
        .trim(csv::Trim::All)
        .from_reader(text.as_bytes());
    let headers = reader
        .headers()
        .map_err(|e| format!("cannot read the CSV header row: {e}"))?
        .clone();
    let wanted = column.trim();
    let index = headers
        .iter()
        .position(|h| {
            h.trim_start_matches('\u{feff}')
                .eq_ignore_ascii_case(wanted)
        })
        .ok_or_else(|| {
            let found: Vec<&str> = headers.iter().collect();
            if found.len() == 1 && found[0].contains(';') {
                return format!(
                    "the CSV header row is {}: the file seems to use ';' between fields; \
                     only ',' is supported, export it with commas",
                    quoted(found[0])
                );
            }
            let mut listed: Vec<String> = found
                .iter()
                .take(MAX_HEADERS_SHOWN)
                .map(|h| quoted(h))
                .collect();
            if found.len() > MAX_HEADERS_SHOWN {
                listed.push(format!("… ({} more)", found.len() - MAX_HEADERS_SHOWN));
            }
            format!(
                "the CSV has no column {}; its header row has [{}]; set `column` to one of them",
                quoted(wanted),
                listed.join(", ")
            )
        })?;
    let mut out = Vec::new();
    let mut record = csv::StringRecord::new();
    loop {
        match reader.read_record(&mut record) {
            Ok(false) => break,
            Ok(true) => {
                let line = record.position().map(|p| p.line() as usize).unwrap_or(0);
                if let Some(value) = record.get(index)
                    && !value.is_empty()
                {
                    out.push((line, value.to_string()));
                }
            }
            Err(e) => {
                let line = e.position().map(|p| p.line()).unwrap_or(0);
                return Err(format!("malformed CSV at line {line}: {e}"));
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_entries_skip_comments_and_blank_lines_and_keep_line_numbers() {
        let text = "# header\n\na@x.com\n  b@x.com  # trailing comment\nc#d@x.com\n";
        let got: Vec<(usize, &str)> = text_entries(text).map(|e| (e.line, e.text)).collect();
        assert_eq!(got, vec![(3, "a@x.com"), (4, "b@x.com"), (5, "c#d@x.com")]);
    }

    #[test]
    fn csv_column_is_found_case_insensitively_with_line_numbers() {
        let text = "id,Email,name\n1,a@x.com,A\n2,,B\n3,c@x.com,C\n";
        let got = csv_entries(text, "email").unwrap();
        assert_eq!(got, vec![(2, "a@x.com".into()), (4, "c@x.com".into())]);
    }

    #[test]
    fn csv_missing_column_names_the_headers_found() {
        let err = csv_entries("id,mail\n1,a@x.com\n", "email").unwrap_err();
        assert!(err.contains("\"mail\""), "{err}");
    }
}
