//! One manifest file: read within bounds, split into YAML documents, each parsed (syntax
//! errors with their line and column, schema errors with their field path) and validated.

use std::path::Path;

use serde::Deserialize;

use super::raw::RawDocument;
use super::validate::validate;
use super::{
    Diagnostic, InvalidPolicy, ManifestFile, Manifests, Origin, bounds, diag, source, yaml,
};
use crate::contact::clipped;

/// Splits a serde_yaml error into its message and its place (1-based line and column).
///
/// libyaml's messages read `problem at line L column C, context at line X column Y`: only the
/// problem's place (the diagnostic's own `path:L:C:`) is cut; the context's place (e.g. where
/// an unclosed `[` started) stays, as it is the hint that finds the mistake.
pub(crate) fn yaml_error(e: &serde_yaml::Error) -> (String, Option<(usize, usize)>) {
    let text = e.to_string();
    let place = e.location().map(|l| (l.line(), l.column()));
    let message = match place {
        Some((line, column)) => text.replacen(&format!(" at line {line} column {column}"), "", 1),
        None => text,
    };
    (message, place)
}

/// Reads a manifest, refusing one larger than [`bounds::MAX_MANIFEST_BYTES`] without reading
/// it whole. The error is the message of a diagnostic.
fn read_manifest(path: &Path) -> Result<Vec<u8>, String> {
    use std::io::Read;
    let unreadable =
        |e: std::io::Error| format!("cannot read the manifest: {}", source::io_reason(&e));
    let file = std::fs::File::open(path).map_err(unreadable)?;
    let size = file.metadata().map_err(unreadable)?.len();
    let mut bytes = Vec::new();
    if size <= bounds::MAX_MANIFEST_BYTES {
        // `take`: the file may grow while it is read.
        file.take(bounds::MAX_MANIFEST_BYTES + 1)
            .read_to_end(&mut bytes)
            .map_err(unreadable)?;
    }
    if size > bounds::MAX_MANIFEST_BYTES || bytes.len() as u64 > bounds::MAX_MANIFEST_BYTES {
        return Err(format!(
            "the manifest is {} bytes, more than the {} MiB a manifest may be; keep large \
             exclusion sets in a file source (spec.exclude.files: one entry a line, or a CSV \
             column), which has no such limit",
            size.max(bytes.len() as u64),
            bounds::MAX_MANIFEST_BYTES / (1024 * 1024)
        ));
    }
    Ok(bytes)
}

/// The documents of a manifest read a second time, for the few whose ids need the text they
/// were written as (see [`yaml`]). Parsed lazily, once, in document order.
struct Reread<'t> {
    text: &'t str,
    documents: Option<serde_yaml::Deserializer<'t>>,
    next: usize,
}

impl<'t> Reread<'t> {
    /// Document `index` (0-based); indexes asked for must grow.
    fn document(&mut self, index: usize) -> Option<serde_yaml::Deserializer<'t>> {
        let text = self.text;
        let documents = self
            .documents
            .get_or_insert_with(|| serde_yaml::Deserializer::from_str(text));
        let skip = index.checked_sub(self.next)?;
        self.next = index + 1;
        documents.nth(skip)
    }
}

pub(super) fn load_file(path: &Path, out: &mut Manifests) {
    // A file that cannot be read at all: none of its policies are known.
    let unparsed = |out: &mut Manifests, d: Diagnostic| {
        out.diagnostics.push(d);
        out.files.push(ManifestFile {
            path: path.to_path_buf(),
            parsed: false,
        });
    };
    let text = match read_manifest(path).map(String::from_utf8) {
        Ok(Ok(t)) => t,
        Ok(Err(e)) => {
            let valid = &e.as_bytes()[..e.utf8_error().valid_up_to()];
            let line = valid.iter().filter(|&&b| b == b'\n').count() + 1;
            let d = Diagnostic::error(path, "the file is not valid UTF-8; save it as UTF-8")
                .at(line, 1);
            unparsed(out, d);
            return;
        }
        Err(message) => {
            unparsed(out, Diagnostic::error(path, message));
            return;
        }
    };
    if let Some((line, column)) = bounds::flow_depth_exceeded(&text) {
        let d = Diagnostic::error(
            path,
            format!(
                "flow collections ([...] or {{...}}) are nested more than {} deep here; \
                 listwarden does not parse such a manifest (no policy needs it, and parsing \
                 it is slow): write the nested parts as indented blocks",
                bounds::MAX_FLOW_DEPTH
            ),
        )
        .at(line, column);
        unparsed(out, d);
        return;
    }
    let manifest_dir = path.parent().unwrap_or(Path::new("."));
    let mut parsed = true;
    let mut file_policies = Vec::new();
    let mut file_invalid = Vec::new();
    let mut again = Reread {
        text: &text,
        documents: None,
        next: 0,
    };
    for (index, document) in serde_yaml::Deserializer::from_str(&text).enumerate() {
        let doc_no = index + 1;
        // Two steps: YAML -> Value catches syntax errors (which have a line and column),
        // Value -> RawDocument catches schema errors (which have a field path).
        let value = match yaml::Lenient::deserialize(document) {
            Ok(yaml::Lenient(v)) => v,
            Err(e) => {
                let (message, place) = yaml_error(&e);
                let mut d =
                    Diagnostic::error(path, format!("YAML syntax error: {}", fix_hint(&message)));
                if let Some((line, column)) = place {
                    d = d.at(line, column);
                }
                // libyaml cannot resynchronise after a syntax error: nothing after it can
                // be trusted, and the file's earlier documents are dropped too, so a
                // half-parsed file never applies anything.
                out.diagnostics.push(d);
                parsed = false;
                break;
            }
        };
        // An empty document (a trailing `---`, a file of comments) holds no policy.
        if value.is_null() {
            continue;
        }
        // The document as written guides a second read of it, if its ids need one; merging
        // changes its shape, so it is kept aside when there is something to merge.
        let shape = yaml::has_merge_key(&value).then(|| value.clone());
        // YAML merge keys (`<<: *defaults`) are how people share parts of documents.
        let mut value = value;
        if let Err(e) = value.apply_merge() {
            let d = Diagnostic::error(
                path,
                format!("cannot apply a YAML merge key (<<): {}", yaml_error(&e).0),
            )
            .in_document(doc_no, None);
            reject(&mut file_invalid, &mut out.diagnostics, d, None, doc_no);
            continue;
        }
        let id_problems = yaml::check_ids(&mut value, |merged| {
            let document = again.document(index)?;
            yaml::source_texts(document, shape.as_ref().unwrap_or(merged), &text)
        });
        let name_hint = value
            .get("metadata")
            .and_then(|m| m.get("name"))
            .and_then(|n| n.as_str())
            .map(str::to_string);
        let raw: RawDocument = match serde_path_to_error::deserialize(value) {
            Ok(raw) => raw,
            Err(e) => {
                let field = e.path().to_string();
                let message = fix_hint(&yaml_error(e.inner()).0);
                let mut d = Diagnostic::error(path, message.clone())
                    .in_document(doc_no, name_hint.as_deref());
                if field != "." {
                    d = d.field(field);
                }
                reject(
                    &mut file_invalid,
                    &mut out.diagnostics,
                    d,
                    name_hint,
                    doc_no,
                );
                continue;
            }
        };
        let origin = Origin {
            file: path.to_path_buf(),
            document: doc_no,
        };
        match validate(
            raw,
            origin,
            &out.root,
            manifest_dir,
            &id_problems,
            &mut out.diagnostics,
        ) {
            Ok(policy) => file_policies.push(policy),
            Err(invalid) => file_invalid.push(invalid),
        }
    }
    out.files.push(ManifestFile {
        path: path.to_path_buf(),
        parsed,
    });
    if parsed {
        out.policies.extend(file_policies);
        out.invalid.extend(file_invalid);
    } else {
        for p in file_policies {
            out.invalid.push(InvalidPolicy {
                name: Some(p.name.to_string()),
                contact_list_id: Some(p.list.id.to_string()),
                origin: p.origin,
                reason: "the file has a YAML syntax error".into(),
            });
        }
        out.invalid.extend(file_invalid);
    }
}

/// A document that could not even be read as a policy: it is listed as invalid (so status
/// can say why) with its one diagnostic.
fn reject(
    invalid: &mut Vec<InvalidPolicy>,
    diagnostics: &mut Vec<Diagnostic>,
    d: Diagnostic,
    name: Option<String>,
    document: usize,
) {
    invalid.push(InvalidPolicy {
        name: name.map(|n| clipped(&n).into_owned()),
        contact_list_id: None,
        origin: Origin {
            file: d.file.clone(),
            document,
        },
        reason: d.to_string(),
    });
    diagnostics.push(d);
}

/// serde's and libyaml's messages name the problem; the common ones also get the fix. Values
/// they repeat are shortened.
pub(crate) fn fix_hint(message: &str) -> String {
    let message = diag::clip_echoed(message)
        .replace("expected i64", "expected a whole number")
        .replace("expected u64", "expected a positive whole number");
    let suggestion;
    let hint = if message.starts_with("unknown field") {
        suggestion = did_you_mean(&message);
        suggestion
            .as_deref()
            .unwrap_or("remove it or fix its spelling")
    } else if message.starts_with("unknown variant") {
        "use one of the listed values"
    } else if message.contains("cannot start any token") {
        "a tab? YAML does not allow tabs for indentation: use spaces"
    } else if message.contains("expected a sequence") {
        "write a list: [a@example.com, b@example.com], or one `- item` per line"
    } else if message.contains("expected a boolean") {
        "use true or false"
    } else if message.contains("expected a string") {
        "quote the value, e.g. \"1\""
    } else {
        return message;
    };
    format!("{message}; {hint}")
}

/// For serde's "unknown field `contactListID`, expected one of `contactListId`, ...": the
/// expected field the typo is closest to, when it is close enough to be the one meant.
fn did_you_mean(message: &str) -> Option<String> {
    let mut quoted = message.split('`').skip(1).step_by(2);
    let unknown = quoted.next()?.to_ascii_lowercase();
    quoted
        .map(|field| {
            let score = strsim::jaro_winkler(&unknown, &field.to_ascii_lowercase());
            (score, field)
        })
        // 0.8 catches swapped, doubled, dropped letters and a wrong case; unrelated words
        // of the same length score lower.
        .filter(|(score, _)| *score >= 0.8)
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, field)| format!("did you mean `{field}`?"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_near_miss_field_name_gets_the_field_it_was_meant_to_be() {
        let cases = [
            ("contactListID", "`contactListId`"),
            ("contactlistid", "`contactListId`"),
            ("exlcude", "`exclude`"),
            ("maxRemovalPerSync", "`maxRemovalsPerSync`"),
        ];
        for (typo, meant) in cases {
            let message = format!(
                "unknown field `{typo}`, expected one of `contactListId`, `suspend`, \
                 `maxRemovalsPerSync`, `maxForgetPercent`, `strategy`, `exclude`"
            );
            let hint = fix_hint(&message);
            assert!(hint.ends_with(&format!("did you mean {meant}?")), "{hint}");
        }
    }

    #[test]
    fn an_unrelated_unknown_field_is_told_to_be_removed() {
        let message = "unknown field `owner`, expected one of `contactListId`, `exclude`";
        assert!(
            fix_hint(message).ends_with("remove it or fix its spelling"),
            "{}",
            fix_hint(message)
        );
    }
}
