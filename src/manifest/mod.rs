//! Manifests on disk -> validated [`Policy`] values, with every problem reported at once.
//!
//! A manifest is a YAML file (`*.yaml`, `*.yml`) holding one or more `ListPolicy` documents.
//! Loading never stops at the first problem: each file, each document and each entry is
//! checked, and the result carries both the valid policies and every [`Diagnostic`].
//!
//! The unit of isolation is the policy: a document with an error yields no policy (it is
//! listed in [`Manifests::invalid`] so status can say why), and a file whose YAML cannot be
//! parsed yields no policy at all. Nothing downstream ever sees a half-valid policy, so a
//! broken manifest can stop only itself, and can never cause a removal.

pub mod bounds;
pub mod diag;
pub mod source;
mod yaml;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use serde::Deserialize;
use sha2::{Digest, Sha256};

use crate::contact::{ContactId, ContactListId, Email, PolicyName, clipped, quoted};
pub use diag::{Diagnostic, Severity};
use source::EntryType;

pub const API_VERSION: &str = "listwarden.dev/v1";
pub const KIND: &str = "ListPolicy";

/// How a list is converged (see the README): `assert` sends every pending contact to the
/// remove endpoint; `observe` reads the list's members and removes only those present;
/// `auto` picks the cheaper one per list and per run.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Strategy {
    #[default]
    Auto,
    Assert,
    Observe,
}

impl std::str::FromStr for Strategy {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(Strategy::Auto),
            "assert" => Ok(Strategy::Assert),
            "observe" => Ok(Strategy::Observe),
            other => Err(format!(
                "unknown strategy {}; use auto, assert or observe",
                quoted(other)
            )),
        }
    }
}

impl std::fmt::Display for Strategy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Strategy::Auto => "auto",
            Strategy::Assert => "assert",
            Strategy::Observe => "observe",
        })
    }
}

/// Where a policy was written.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Origin {
    pub file: PathBuf,
    /// 1-based document index inside the file.
    pub document: usize,
}

/// A valid `ListPolicy`: every field checked, every email normalised, duplicates removed.
#[derive(Clone, Debug)]
pub struct Policy {
    pub name: PolicyName,
    pub labels: BTreeMap<String, String>,
    pub contact_list_id: ContactListId,
    pub suspend: bool,
    pub max_removals_per_sync: Option<u64>,
    /// Share of its contacts (percent) the policy may lose in one load before the change is
    /// held for approval (see [`crate::hold`]).
    pub max_forget_percent: Option<u8>,
    pub strategy: Option<Strategy>,
    pub origin: Origin,
    /// Sorted, without duplicates.
    pub emails: Vec<Email>,
    /// Sorted, without duplicates.
    pub contact_ids: Vec<ContactId>,
    /// The file sources read (canonical paths): an edit of one of them concerns this policy.
    pub sources: Vec<PathBuf>,
    /// Digest of the list id and the desired-absent set: changes exactly when what the
    /// policy asks for changes.
    pub revision: String,
}

/// A policy that was written but could not be loaded. `name` is known when the document got
/// far enough to have a valid `metadata.name`.
#[derive(Clone, Debug, serde::Serialize)]
pub struct InvalidPolicy {
    pub name: Option<String>,
    pub contact_list_id: Option<String>,
    pub origin: Origin,
    /// The first error, for status; every error is in [`Manifests::diagnostics`].
    pub reason: String,
}

/// One manifest file that was read.
#[derive(Clone, Debug)]
pub struct ManifestFile {
    pub path: PathBuf,
    /// False when the file could not be read or parsed as YAML: then none of its policies
    /// are known, and status marks whatever came from it before as invalid.
    pub parsed: bool,
}

/// Everything a load produced.
#[derive(Debug, Default)]
pub struct Manifests {
    /// Canonical root: file sources must resolve inside it.
    pub root: PathBuf,
    pub files: Vec<ManifestFile>,
    pub policies: Vec<Policy>,
    pub invalid: Vec<InvalidPolicy>,
    pub diagnostics: Vec<Diagnostic>,
}

impl Manifests {
    pub fn has_errors(&self) -> bool {
        self.diagnostics.iter().any(Diagnostic::is_error)
    }

    pub fn errors(&self) -> impl Iterator<Item = &Diagnostic> {
        self.diagnostics.iter().filter(|d| d.is_error())
    }

    pub fn warnings(&self) -> impl Iterator<Item = &Diagnostic> {
        self.diagnostics.iter().filter(|d| !d.is_error())
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawDocument {
    api_version: Option<String>,
    kind: Option<String>,
    metadata: Option<RawMetadata>,
    spec: Option<RawSpec>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMetadata {
    name: Option<String>,
    #[serde(default)]
    labels: BTreeMap<String, String>,
}

/// An id. Ids YAML did not read as strings (`contactListId: 12345`) were already replaced by
/// the text they were written as, or refused, by [`yaml::check_ids`]: only strings are left.
struct RawId(String);

impl<'de> Deserialize<'de> for RawId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<RawId, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = RawId;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("an id such as \"60d5ec49f1b2c72d9c8b4567\" (a string)")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<RawId, E> {
                Ok(RawId(v.to_string()))
            }
        }
        d.deserialize_str(V)
    }
}

impl RawId {
    fn into_string(self) -> String {
        self.0
    }
}

fn id_string<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    Ok(Option::<RawId>::deserialize(d)?.map(RawId::into_string))
}

fn id_strings<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    Ok(Vec::<RawId>::deserialize(d)?
        .into_iter()
        .map(RawId::into_string)
        .collect())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawSpec {
    #[serde(default, deserialize_with = "id_string")]
    contact_list_id: Option<String>,
    #[serde(default)]
    suspend: bool,
    max_removals_per_sync: Option<i64>,
    max_forget_percent: Option<i64>,
    strategy: Option<Strategy>,
    #[serde(default)]
    exclude: RawExclude,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawExclude {
    #[serde(default)]
    emails: Vec<String>,
    #[serde(default, deserialize_with = "id_strings")]
    contact_ids: Vec<String>,
    #[serde(default)]
    files: Vec<RawFileSource>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFileSource {
    path: String,
    column: Option<String>,
    #[serde(rename = "type")]
    entry_type: Option<RawEntryType>,
}

#[derive(Deserialize, Clone, Copy)]
#[serde(rename_all = "camelCase")]
enum RawEntryType {
    Email,
    ContactId,
}

/// Loads every manifest under `path` (a file, or a directory searched recursively, hidden
/// entries skipped, in sorted order). Never fails: problems are diagnostics.
pub fn load(path: &Path) -> Manifests {
    let mut out = Manifests::default();
    let root = if path.is_dir() {
        path.to_path_buf()
    } else {
        path.parent()
            .map(|p| {
                if p.as_os_str().is_empty() {
                    Path::new(".").to_path_buf()
                } else {
                    p.to_path_buf()
                }
            })
            .unwrap_or_else(|| PathBuf::from("."))
    };
    out.root = match root.canonicalize() {
        Ok(r) => r,
        Err(e) => {
            out.diagnostics.push(Diagnostic::error(
                path,
                format!(
                    "cannot read the manifests path: {}; give a manifest file or a directory of them",
                    source::io_reason(&e)
                ),
            ));
            return out;
        }
    };
    let Some(files) = manifest_files(path, &mut out) else {
        return out;
    };
    // Unreadable manifests are already in `out.files`: they were found, just not read.
    if files.is_empty() && out.files.is_empty() {
        out.diagnostics.push(Diagnostic::warning(
            path,
            "no *.yaml or *.yml manifest found here: nothing to check or apply; is this the right path?",
        ));
    }
    for file in files {
        load_file(&file, &mut out);
    }
    reject_duplicate_names(&mut out);
    // Stable: a file's own problems stay in the order they were found.
    out.diagnostics.sort_by(|a, b| a.file.cmp(&b.file));
    out
}

fn is_manifest(p: &Path) -> bool {
    matches!(
        p.extension().and_then(|e| e.to_str()),
        Some("yaml") | Some("yml")
    )
}

/// The manifest files a load of `path` would read (none when it does not exist): a cheap
/// check, before anything is created, that a path holds manifests at all.
pub fn manifest_paths(path: &Path) -> Vec<PathBuf> {
    manifest_files(path, &mut Manifests::default()).unwrap_or_default()
}

/// The manifest files under `path`, in sorted order; `None` when `path` itself does not exist
/// (an error is recorded).
///
/// An entry that cannot be read (a dangling symlink, a symlink loop, a directory without
/// permission) stops only itself: it becomes a diagnostic and the walk goes on. A manifest by
/// name that cannot be read is an error and is recorded as an unparsed file, so the policies
/// it held before are reported invalid rather than silently dropped; any other name is only
/// a warning, as it would not have been read anyway.
fn manifest_files(path: &Path, out: &mut Manifests) -> Option<Vec<PathBuf>> {
    if !path.exists() {
        out.diagnostics.push(Diagnostic::error(
            path,
            "no such file or directory; give a manifest file or a directory of them",
        ));
        return None;
    }
    if path.is_file() {
        return Some(vec![path.to_path_buf()]);
    }
    let hidden = |name: &std::ffi::OsStr| name.to_string_lossy().starts_with('.');
    let mut files = Vec::new();
    let walker = walkdir::WalkDir::new(path)
        .follow_links(true)
        .sort_by_file_name()
        .into_iter()
        .filter_entry(|e| e.depth() == 0 || !hidden(e.file_name()));
    for entry in walker {
        match entry {
            Ok(e) if e.file_type().is_file() && is_manifest(e.path()) => {
                files.push(e.into_path());
            }
            Ok(_) => {}
            Err(e) => {
                let entry = e.path().unwrap_or(path).to_path_buf();
                // Errors bypass `filter_entry`: a hidden entry stays skipped, broken or not.
                if e.depth() > 0 && entry.file_name().is_some_and(hidden) {
                    continue;
                }
                unreadable_entry(&entry, &e, out);
            }
        }
    }
    Some(files)
}

fn unreadable_entry(entry: &Path, e: &walkdir::Error, out: &mut Manifests) {
    let is_symlink = entry.is_symlink();
    let reason = if let Some(ancestor) = e.loop_ancestor() {
        format!(
            "it is a symlink loop (it leads back to {})",
            clipped(&ancestor.display().to_string())
        )
    } else if let Some(io) = e.io_error() {
        match (io.kind(), std::fs::read_link(entry)) {
            (std::io::ErrorKind::NotFound, Ok(target)) if is_symlink => format!(
                "it is a symlink to {}, which does not exist",
                clipped(&target.display().to_string())
            ),
            _ => source::io_reason(io),
        }
    } else {
        e.to_string()
    };
    let is_directory = e.loop_ancestor().is_none() && entry.is_dir();
    if is_directory {
        // Its manifests cannot be listed, so the policies they hold are unknown: an error,
        // so that a load missing them forgets nothing.
        out.diagnostics.push(Diagnostic::error(
            entry,
            format!(
                "cannot list this directory: {reason}; the manifests in it are not loaded \
                 (fix its permissions, or move them elsewhere)"
            ),
        ));
    } else if is_manifest(entry) {
        out.diagnostics.push(Diagnostic::error(
            entry,
            format!(
                "cannot read the manifest: {reason}; its policies are left out until it is \
                 fixed (point the symlink at the manifest, or remove it)"
            ),
        ));
        out.files.push(ManifestFile {
            path: entry.to_path_buf(),
            parsed: false,
        });
    } else {
        out.diagnostics.push(Diagnostic::warning(
            entry,
            format!(
                "skipped, cannot read it: {reason}; not a manifest by name (*.yaml, *.yml), so \
                 nothing is lost, but fix or remove it"
            ),
        ));
    }
}

/// Splits a serde_yaml error into its message and its place (1-based line and column).
///
/// libyaml's messages read `problem at line L column C, context at line X column Y`: only the
/// problem's place (the diagnostic's own `path:L:C:`) is cut; the context's place (e.g. where
/// an unclosed `[` started) stays, as it is the hint that finds the mistake.
fn yaml_error(e: &serde_yaml::Error) -> (String, Option<(usize, usize)>) {
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

fn load_file(path: &Path, out: &mut Manifests) {
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
                contact_list_id: Some(p.contact_list_id.to_string()),
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
fn fix_hint(message: &str) -> String {
    let message = diag::clip_echoed(message)
        .replace("expected i64", "expected a whole number")
        .replace("expected u64", "expected a positive whole number");
    let hint = if message.starts_with("unknown field") {
        "remove it or fix its spelling"
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

/// Checks one document. Every broken rule becomes a diagnostic; the policy is returned only
/// when there was no error. `id_problems` are the ids refused for how they were written
/// (field path, message).
fn validate(
    raw: RawDocument,
    origin: Origin,
    root: &Path,
    manifest_dir: &Path,
    id_problems: &[(String, String)],
    diagnostics: &mut Vec<Diagnostic>,
) -> Result<Policy, InvalidPolicy> {
    let file = origin.file.clone();
    let doc = origin.document;
    let first_error = diagnostics.len();
    let name_raw = raw.metadata.as_ref().and_then(|m| m.name.clone());
    let name = match name_raw.as_deref().map(PolicyName::parse) {
        Some(Ok(n)) => Some(n),
        _ => None,
    };
    let label = name_raw.clone();
    let mut err = |field: &str, message: String| {
        diagnostics.push(
            Diagnostic::error(&file, message)
                .in_document(doc, label.as_deref())
                .field(field),
        );
    };

    match raw.api_version.as_deref() {
        Some(API_VERSION) => {}
        Some(other) => err(
            "apiVersion",
            format!(
                "unsupported apiVersion {}; use {API_VERSION:?}",
                quoted(other)
            ),
        ),
        None => err(
            "apiVersion",
            format!("missing apiVersion; add `apiVersion: {API_VERSION}`"),
        ),
    }
    match raw.kind.as_deref() {
        Some(KIND) => {}
        Some(other) => err(
            "kind",
            format!(
                "unsupported kind {}; listwarden reads only `kind: {KIND}`",
                quoted(other)
            ),
        ),
        None => err("kind", format!("missing kind; add `kind: {KIND}`")),
    }
    match (&raw.metadata, &name_raw) {
        (None, _) => err(
            "metadata",
            "missing metadata; add `metadata: {name: <policy-name>}`".into(),
        ),
        (Some(_), None) => err(
            "metadata.name",
            "missing name; every policy needs a unique `metadata.name`".into(),
        ),
        (Some(_), Some(n)) => {
            if let Err(e) = PolicyName::parse(n) {
                err("metadata.name", e);
            }
        }
    }
    let Some(spec) = raw.spec else {
        err(
            "spec",
            "missing spec; add `spec: {contactListId: ..., exclude: ...}`".into(),
        );
        return Err(invalid(name_raw, None, origin, diagnostics, first_error));
    };
    let id_problem = |field: &str| {
        id_problems
            .iter()
            .find(|(f, _)| f == field)
            .map(|(_, message)| message.clone())
    };
    let list_raw = spec.contact_list_id.clone();
    let list = match spec.contact_list_id.as_deref() {
        None => {
            err(
                "spec.contactListId",
                "missing contactListId; give the id of the AutoSend contact list".into(),
            );
            None
        }
        Some(raw_id) => match id_problem("spec.contactListId")
            .map_or_else(|| ContactListId::parse(raw_id), Err)
        {
            Ok(id) => Some(id),
            Err(e) => {
                err("spec.contactListId", e);
                None
            }
        },
    };
    if let Some(n) = spec.max_removals_per_sync
        && n <= 0
    {
        err(
            "spec.maxRemovalsPerSync",
            format!("must be a positive integer, got {n}; omit it for no threshold"),
        );
    }
    if let Some(n) = spec.max_forget_percent
        && !(0..=100).contains(&n)
    {
        err(
            "spec.maxForgetPercent",
            format!("must be a percentage from 0 to 100, got {n}; omit it for the default (50)"),
        );
    }

    let mut emails: Vec<Email> = Vec::with_capacity(spec.exclude.emails.len());
    for (i, raw_email) in spec.exclude.emails.iter().enumerate() {
        match Email::parse(raw_email) {
            Ok(e) => emails.push(e),
            Err(e) => err(&format!("spec.exclude.emails[{i}]"), e),
        }
    }
    let mut contact_ids: Vec<ContactId> = Vec::with_capacity(spec.exclude.contact_ids.len());
    for (i, raw_id) in spec.exclude.contact_ids.iter().enumerate() {
        let field = format!("spec.exclude.contactIds[{i}]");
        match id_problem(&field).map_or_else(|| ContactId::parse(raw_id), Err) {
            Ok(id) => contact_ids.push(id),
            Err(e) => err(&field, e),
        }
    }

    let policy_label = clipped(name_raw.as_deref().unwrap_or("unnamed policy")).into_owned();
    let mut sources = Vec::with_capacity(spec.exclude.files.len());
    for (i, fs) in spec.exclude.files.iter().enumerate() {
        let field = format!("spec.exclude.files[{i}]");
        let file_err = |diagnostics: &mut Vec<Diagnostic>, field: &str, message: String| {
            diagnostics.push(
                Diagnostic::error(&origin.file, message)
                    .in_document(doc, name_raw.as_deref())
                    .field(field),
            );
        };
        let (read_path, shown) = match source::resolve(root, manifest_dir, &fs.path) {
            Ok(p) => p,
            Err(e) => {
                file_err(diagnostics, &format!("{field}.path"), e);
                continue;
            }
        };
        sources.push(read_path.clone());
        let entry_type = match fs.entry_type {
            None | Some(RawEntryType::Email) => EntryType::Email,
            Some(RawEntryType::ContactId) => EntryType::ContactId,
        };
        let spec = source::FileSourceSpec {
            path: &fs.path,
            column: fs.column.as_deref(),
            entry_type,
        };
        let context = format!("policy {policy_label}, {field}");
        if let Err(e) = read_source(
            &read_path,
            &shown,
            &spec,
            &context,
            &mut emails,
            &mut contact_ids,
            diagnostics,
        ) {
            file_err(diagnostics, &field, e);
        }
    }

    if diagnostics[first_error..].iter().any(Diagnostic::is_error) {
        return Err(invalid(
            name_raw,
            list_raw,
            origin,
            diagnostics,
            first_error,
        ));
    }
    let name = name.expect("a valid document has a valid name");
    let list = list.expect("a valid document has a valid list id");

    let before = emails.len() + contact_ids.len();
    emails.sort_unstable();
    emails.dedup();
    contact_ids.sort_unstable();
    contact_ids.dedup();
    let duplicates = before - emails.len() - contact_ids.len();
    let warn = |message: String| {
        Diagnostic::warning(&origin.file, message).in_document(doc, Some(name.as_str()))
    };
    if duplicates > 0 {
        diagnostics.push(
            warn(format!(
                "{duplicates} duplicate entr{} removed (after normalising case and spaces)",
                if duplicates == 1 { "y" } else { "ies" }
            ))
            .field("spec.exclude"),
        );
    }
    if emails.is_empty() && contact_ids.is_empty() {
        diagnostics.push(
            warn("the policy excludes nothing: add emails, contactIds or files".into())
                .field("spec.exclude"),
        );
    }
    let revision = revision(&list, &emails, &contact_ids);
    Ok(Policy {
        name,
        labels: raw.metadata.map(|m| m.labels).unwrap_or_default(),
        contact_list_id: list,
        suspend: spec.suspend,
        max_removals_per_sync: spec.max_removals_per_sync.map(|n| n as u64),
        max_forget_percent: spec.max_forget_percent.map(|n| n.clamp(0, 100) as u8),
        strategy: spec.strategy,
        origin,
        emails,
        contact_ids,
        sources,
        revision,
    })
}

fn invalid(
    name: Option<String>,
    list: Option<String>,
    origin: Origin,
    diagnostics: &[Diagnostic],
    first_error: usize,
) -> InvalidPolicy {
    let reason = diagnostics[first_error..]
        .iter()
        .find(|d| d.is_error())
        .map(|d| d.to_string())
        .unwrap_or_default();
    // As written, so possibly anything: kept short, as they are stored and shown.
    InvalidPolicy {
        name: name.map(|n| clipped(&n).into_owned()),
        contact_list_id: list.map(|l| clipped(&l).into_owned()),
        origin,
        reason,
    }
}

fn read_source(
    read_path: &Path,
    shown: &Path,
    spec: &source::FileSourceSpec<'_>,
    context: &str,
    emails: &mut Vec<Email>,
    contact_ids: &mut Vec<ContactId>,
    diagnostics: &mut Vec<Diagnostic>,
) -> Result<(), String> {
    let shown_text = shown.display().to_string();
    let shown_text = clipped(&shown_text);
    let bytes = std::fs::read(read_path)
        .map_err(|e| format!("cannot read {shown_text}: {}", source::io_reason(&e)))?;
    let text = String::from_utf8(bytes).map_err(|e| {
        let valid = &e.as_bytes()[..e.utf8_error().valid_up_to()];
        let line = valid.iter().filter(|&&b| b == b'\n').count() + 1;
        format!("{shown_text}:{line}: the file is not valid UTF-8; save it as UTF-8")
    })?;
    let text = text.strip_prefix('\u{feff}').unwrap_or(&text);
    let is_csv = spec.column.is_some() || spec.path.to_ascii_lowercase().ends_with(".csv");
    if is_csv {
        let column = spec.column.unwrap_or(match spec.entry_type {
            EntryType::Email => "email",
            EntryType::ContactId => "contactId",
        });
        let rows = source::csv_entries(text, column).map_err(|e| format!("{shown_text}: {e}"))?;
        let entries = rows.iter().map(|(line, value)| source::Entry {
            line: *line,
            column: 1,
            text: value.as_str(),
        });
        push_entries(
            shown,
            entries,
            spec.entry_type,
            context,
            emails,
            contact_ids,
            diagnostics,
        );
    } else {
        push_entries(
            shown,
            source::text_entries(text),
            spec.entry_type,
            context,
            emails,
            contact_ids,
            diagnostics,
        );
    }
    Ok(())
}

fn push_entries<'t>(
    shown: &Path,
    entries: impl Iterator<Item = source::Entry<'t>>,
    entry_type: EntryType,
    context: &str,
    emails: &mut Vec<Email>,
    contact_ids: &mut Vec<ContactId>,
    diagnostics: &mut Vec<Diagnostic>,
) {
    match entry_type {
        EntryType::Email => {
            source::collect_entries(shown, entries, Email::parse, context, emails, diagnostics);
        }
        EntryType::ContactId => {
            source::collect_entries(
                shown,
                entries,
                ContactId::parse,
                context,
                contact_ids,
                diagnostics,
            );
        }
    }
}

/// A short digest of what a policy asks for. Stable across runs and machines; the order of
/// entries in the manifest does not matter (the sets are sorted).
pub fn revision(list: &ContactListId, emails: &[Email], contact_ids: &[ContactId]) -> String {
    let mut h = Sha256::new();
    h.update(list.as_str().as_bytes());
    h.update([0u8]);
    for e in emails {
        h.update(e.as_str().as_bytes());
        h.update([b'\n']);
    }
    h.update([0u8]);
    for c in contact_ids {
        h.update(c.as_str().as_bytes());
        h.update([b'\n']);
    }
    let digest = h.finalize();
    let hex: String = digest.iter().take(8).map(|b| format!("{b:02x}")).collect();
    format!("sha256:{hex}")
}

/// A duplicated `metadata.name` makes both policies invalid: there is no way to know which
/// one the author meant, and applying either could remove the wrong contacts.
fn reject_duplicate_names(out: &mut Manifests) {
    let mut duplicated: BTreeMap<String, Vec<Origin>> = BTreeMap::new();
    let mut all: Vec<(String, Origin)> = out
        .policies
        .iter()
        .map(|p| (p.name.to_string(), p.origin.clone()))
        .chain(
            out.invalid
                .iter()
                .filter_map(|p| p.name.clone().map(|n| (n, p.origin.clone()))),
        )
        .collect();
    all.sort_by(|a, b| (&a.1.file, a.1.document).cmp(&(&b.1.file, b.1.document)));
    let mut seen: HashMap<&str, &Origin> = HashMap::new();
    for (name, origin) in &all {
        if let Some(first) = seen.get(name.as_str()) {
            let entry = duplicated.entry(name.clone()).or_default();
            if entry.is_empty() {
                entry.push((*first).clone());
            }
            entry.push(origin.clone());
        } else {
            seen.insert(name, origin);
        }
    }
    for (name, origins) in duplicated {
        let places: Vec<String> = origins
            .iter()
            .map(|o| format!("{} document {}", o.file.display(), o.document))
            .collect();
        for o in &origins {
            let others: Vec<&String> = places
                .iter()
                .filter(|p| **p != format!("{} document {}", o.file.display(), o.document))
                .collect();
            out.diagnostics.push(
                Diagnostic::error(
                    &o.file,
                    format!(
                        "policy name {} is also used by {}; names must be unique across all manifests, rename one",
                        quoted(&name),
                        others
                            .iter()
                            .map(|s| s.as_str())
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                )
                .in_document(o.document, Some(&name))
                .field("metadata.name"),
            );
        }
        let mut kept = Vec::with_capacity(out.policies.len());
        for p in out.policies.drain(..) {
            if p.name.as_str() == name {
                out.invalid.push(InvalidPolicy {
                    name: Some(name.clone()),
                    contact_list_id: Some(p.contact_list_id.to_string()),
                    origin: p.origin.clone(),
                    reason: format!("policy name {} is used more than once", quoted(&name)),
                });
            } else {
                kept.push(p);
            }
        }
        out.policies = kept;
    }
}

#[cfg(all(test, unix))]
mod tests {
    use super::*;
    use crate::reconcile::record_manifests;
    use crate::store::Store;

    fn policy(name: &str, list: &str) -> String {
        format!(
            "apiVersion: {API_VERSION}\nkind: {KIND}\nmetadata: {{name: {name}}}\nspec: {{contactListId: {list}, exclude: {{emails: [a@example.com]}}}}\n"
        )
    }

    #[test]
    fn policies_of_a_manifest_that_became_a_dangling_symlink_stay_listed_as_invalid() {
        let dir = tempfile::tempdir().unwrap();
        let m = dir.path().join("m");
        std::fs::create_dir_all(&m).unwrap();
        std::fs::write(m.join("ok.yaml"), policy("ok", "list-a")).unwrap();
        // Invalid, so that recording the load stores it.
        std::fs::write(m.join("x.yaml"), policy("from-x", "GLOBAL_CONTACT_LIST")).unwrap();
        let store = Store::open(&dir.path().join("state.db"), "test").unwrap();
        record_manifests(&store, &load(&m), &[], 1).unwrap();

        std::fs::remove_file(m.join("x.yaml")).unwrap();
        std::os::unix::fs::symlink("gone.yaml", m.join("x.yaml")).unwrap();
        let loaded = load(&m);
        assert_eq!(loaded.policies.len(), 1);
        assert!(
            loaded
                .files
                .iter()
                .any(|f| f.path == m.join("x.yaml") && !f.parsed),
            "{:?}",
            loaded.files
        );
        record_manifests(&store, &loaded, &[], 2).unwrap();
        let from_x = store
            .policies()
            .unwrap()
            .into_iter()
            .find(|p| p.name == "from-x")
            .expect("a policy of an unreadable manifest is not forgotten");
        assert_eq!(
            from_x.condition.reason,
            crate::condition::Reason::ManifestInvalid
        );
        assert!(
            from_x
                .condition
                .message
                .contains("a symlink to gone.yaml, which does not exist"),
            "{}",
            from_x.condition.message
        );
    }
}
