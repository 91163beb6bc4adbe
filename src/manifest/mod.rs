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
pub mod events;
mod file;
mod raw;
pub mod source;
mod validate;
mod yaml;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::contact::{AccountName, ContactId, Email, ListKey, PolicyName, clipped, quoted};
pub use diag::{Diagnostic, Severity};
pub use events::{EventFilter, EventSourceKind};
use file::load_file;
// The config file reads YAML the same way and words its problems the same way.
pub(crate) use file::{fix_hint, yaml_error};
pub(crate) use validate::check_header;
pub use validate::{digest, revision, revision_with_events};

pub const API_VERSION: &str = "listwarden.dev/v1";
pub const KIND: &str = "ListPolicy";

/// Where the schema is published (the copy in the repository's `schemas/`), for the
/// `# yaml-language-server: $schema=` line of manifests outside this repository.
pub const SCHEMA_ID: &str =
    "https://raw.githubusercontent.com/listwarden/listwarden/main/schemas/listpolicy.schema.json";

/// The JSON Schema of a `ListPolicy` document, generated from the types the loader reads, so
/// editors flag what the loader would refuse (the rules a schema can state).
pub fn json_schema() -> serde_json::Value {
    serde_json::to_value(raw::json_schema()).expect("a schema is JSON")
}

/// How a list is converged (see the README): `assert` sends every pending contact to the
/// remove endpoint; `observe` reads the list's members and removes only those present;
/// `auto` picks the cheaper one per list and per run.
#[derive(
    Clone,
    Copy,
    Debug,
    Default,
    PartialEq,
    Eq,
    Hash,
    Deserialize,
    serde::Serialize,
    schemars::JsonSchema,
)]
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
    /// The list: `spec.contactListId` in the policy's account (`spec.account`, or the
    /// default account; [`Manifests::resolve_accounts`] settles which that is).
    pub list: ListKey,
    /// `spec.account` as written.
    pub spec_account: Option<AccountName>,
    pub suspend: bool,
    pub max_removals_per_sync: Option<u64>,
    /// Share of its contacts (percent) the policy may lose in one load before the change is
    /// held for approval (see [`crate::hold`]).
    pub max_forget_percent: Option<u8>,
    pub strategy: Option<Strategy>,
    pub origin: Origin,
    /// Sorted, without duplicates. Shared: the daemon keeps a load's policies between
    /// reloads and hands them to every reconcile, so a copy must not copy a million entries.
    pub emails: std::sync::Arc<[Email]>,
    /// Sorted, without duplicates.
    pub contact_ids: std::sync::Arc<[ContactId]>,
    /// The file sources read (canonical paths): an edit of one of them concerns this policy.
    pub sources: Vec<PathBuf>,
    /// `spec.exclude.events`: the webhook events whose recipient joins this policy's
    /// contacts. Sorted, without repeats or filters another one covers.
    pub events: Vec<EventFilter>,
    /// How many contacts webhook events fed this policy ([`crate::feed`] joins them after a
    /// load; 0 until then). They are in `emails` / `contact_ids` too.
    pub event_fed: usize,
    /// Those the manifests do not name themselves: what the joining added, sorted. The
    /// threshold counted where events arrive covers them (see [`crate::feed::decide`]), so
    /// neither `maxRemovalsPerSync` per sync nor the forget threshold counts them again.
    pub event_only_emails: std::sync::Arc<[Email]>,
    pub event_only_ids: std::sync::Arc<[ContactId]>,
    /// Digest of the list id, the desired-absent set and the event filters: changes exactly
    /// when what the policy asks for changes.
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
#[derive(Clone, Debug, Default)]
pub struct Manifests {
    /// Canonical root: file sources must resolve inside it.
    pub root: PathBuf,
    pub files: Vec<ManifestFile>,
    pub policies: Vec<Policy>,
    pub invalid: Vec<InvalidPolicy>,
    pub diagnostics: Vec<Diagnostic>,
    /// The accounts the policies were settled against ([`crate::account::resolve`]): the
    /// lists of other accounts in the store are none of this load's business (a run without
    /// the config file must not forget what the config's accounts confirmed). `None` before
    /// resolution: every list is this load's.
    pub accounts: Option<Vec<AccountName>>,
}

impl Policy {
    /// The contacts the manifests themselves name (event-fed ones left out): what the forget
    /// threshold compares, so that forgetting an event-fed contact, which is a command of
    /// its own, never holds a policy.
    pub fn declared_contacts(&self) -> usize {
        (self.emails.len() + self.contact_ids.len())
            .saturating_sub(self.event_only_emails.len() + self.event_only_ids.len())
    }
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

/// Loads every manifest under `path` (a file, or a directory searched recursively, hidden
/// entries skipped, in sorted order). Never fails: problems are diagnostics.
pub fn load(path: &Path) -> Manifests {
    load_cached(path, &mut Cache::default(), None)
}

/// What each manifest file yielded at the last load (its policies, with their file sources
/// read): the daemon keeps it so that a change re-reads only the manifests it concerns.
#[derive(Clone, Debug, Default)]
pub struct Cache {
    root: PathBuf,
    /// By path of the manifest file, as the walk found it.
    parts: HashMap<PathBuf, Manifests>,
}

impl Cache {
    /// The manifests (canonical paths) whose policies read each file source (canonical), as
    /// the cached load found them.
    pub fn readers_of_sources(&self) -> HashMap<PathBuf, Vec<PathBuf>> {
        let mut out: HashMap<PathBuf, Vec<PathBuf>> = HashMap::new();
        for (file, part) in &self.parts {
            let file = file.canonicalize().unwrap_or_else(|_| file.clone());
            for source in part.policies.iter().flat_map(|p| &p.sources) {
                let readers = out.entry(source.clone()).or_default();
                if !readers.contains(&file) {
                    readers.push(file.clone());
                }
            }
        }
        out
    }
}

/// Like [`load`], reading again only the manifest files in `stale` (canonical paths; all of
/// them when `None`) and taking the others' results from `cache`, which is then updated.
/// The directory is walked every time, so a manifest added or removed is always seen; the
/// checks across files (unique policy names) run on the whole result. The result is the
/// same as a full load's as long as every file not in `stale` is unchanged since it was
/// cached: the caller must pass `None` whenever it cannot vouch for that.
pub fn load_cached(path: &Path, cache: &mut Cache, stale: Option<&HashSet<PathBuf>>) -> Manifests {
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
    if cache.root != out.root || stale.is_none() {
        cache.parts.clear();
        cache.root = out.root.clone();
    }
    let is_stale = |f: &PathBuf| {
        stale.is_some_and(|stale| stale.contains(&f.canonicalize().unwrap_or_else(|_| f.clone())))
    };
    // A manifest with problems is always read again: the files its invalid policies name are
    // not known as theirs, so a fix of one of them could not name it.
    let read: Vec<PathBuf> = files
        .iter()
        .filter(|f| {
            cache
                .parts
                .get(*f)
                .is_none_or(|p| p.has_errors() || !p.invalid.is_empty())
                || is_stale(f)
        })
        .cloned()
        .collect();
    for (file, part) in read.iter().zip(load_files(&read, &out.root)) {
        cache.parts.insert(file.clone(), part);
    }
    let found: HashSet<&PathBuf> = files.iter().collect();
    cache.parts.retain(|file, _| found.contains(file));
    for file in &files {
        // Cheap: a policy's sets are shared, not copied.
        let part = cache.parts[file].clone();
        out.files.extend(part.files);
        out.policies.extend(part.policies);
        out.invalid.extend(part.invalid);
        out.diagnostics.extend(part.diagnostics);
    }
    reject_duplicate_names(&mut out);
    // Stable: a file's own problems stay in the order they were found.
    out.diagnostics.sort_by(|a, b| a.file.cmp(&b.file));
    out
}

/// Loads `files` on every core (reading and checking a million-line file source is most of
/// a load), each file on its own, and returns their results in the order of `files`, so a
/// load is the same whatever the threads did.
fn load_files(files: &[PathBuf], root: &Path) -> Vec<Manifests> {
    crate::parallel::map(files, |file| {
        let mut part = Manifests {
            root: root.to_path_buf(),
            ..Manifests::default()
        };
        load_file(file, &mut part);
        part
    })
}

/// Whether `p` is named like a manifest (`*.yaml`, `*.yml`).
pub fn is_manifest_name(p: &Path) -> bool {
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
            Ok(e) if e.file_type().is_file() && is_manifest_name(e.path()) => {
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
    } else if is_manifest_name(entry) {
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
                    contact_list_id: Some(p.list.id.to_string()),
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

#[cfg(test)]
mod cache_tests {
    use super::*;

    fn policy(name: &str, list: &str, data: &str) -> String {
        format!(
            "apiVersion: listwarden.dev/v1\nkind: ListPolicy\nmetadata: {{name: {name}}}\n\
             spec:\n  contactListId: {list}\n  exclude:\n    files:\n      - path: {data}\n"
        )
    }

    /// What a load says, in a comparable form.
    fn said(m: &Manifests) -> Vec<String> {
        let mut out: Vec<String> = m
            .policies
            .iter()
            .map(|p| format!("{} {} {}", p.name, p.revision, p.origin.file.display()))
            .collect();
        out.extend(m.invalid.iter().map(|p| format!("invalid {:?}", p.name)));
        out.extend(m.diagnostics.iter().map(|d| d.to_string()));
        out
    }

    fn canonical(p: &Path) -> PathBuf {
        p.canonicalize().unwrap()
    }

    #[test]
    fn a_cached_load_reads_only_the_stale_manifests_and_sees_added_and_removed_files() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        std::fs::write(d.join("a.yaml"), policy("a", "l1", "a.txt")).unwrap();
        std::fs::write(d.join("b.yaml"), policy("b", "l2", "b.txt")).unwrap();
        std::fs::write(d.join("a.txt"), "one@example.com\n").unwrap();
        std::fs::write(d.join("b.txt"), "two@example.com\n").unwrap();
        let mut cache = Cache::default();
        let first = load_cached(d, &mut cache, None);
        assert_eq!(said(&first), said(&load(d)));
        assert_eq!(
            cache.readers_of_sources()[&canonical(&d.join("b.txt"))],
            vec![canonical(&d.join("b.yaml"))]
        );

        // b's data changes, but only a is named stale: b's cached part is kept (this is why
        // the daemon names every manifest that reads a changed file, or asks for a full load).
        std::fs::write(d.join("b.txt"), "three@example.com\n").unwrap();
        let stale: HashSet<PathBuf> = [canonical(&d.join("a.yaml"))].into();
        let kept = load_cached(d, &mut cache, Some(&stale));
        assert_eq!(said(&kept), said(&first));

        // Named stale, it is read again; a new manifest is read though nobody named it, and
        // a removed one is gone.
        std::fs::write(d.join("c.yaml"), policy("c", "l3", "b.txt")).unwrap();
        std::fs::remove_file(d.join("a.yaml")).unwrap();
        let stale: HashSet<PathBuf> = [canonical(&d.join("b.yaml"))].into();
        let next = load_cached(d, &mut cache, Some(&stale));
        assert_eq!(said(&next), said(&load(d)));
        assert_eq!(next.policies.len(), 2);
        assert_eq!(
            cache.readers_of_sources()[&canonical(&d.join("b.txt"))].len(),
            2
        );
    }

    #[test]
    fn names_duplicated_across_a_cached_and_a_fresh_file_are_still_rejected() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        std::fs::write(d.join("a.txt"), "one@example.com\n").unwrap();
        std::fs::write(d.join("a.yaml"), policy("same", "l1", "a.txt")).unwrap();
        let mut cache = Cache::default();
        load_cached(d, &mut cache, None);
        std::fs::write(d.join("b.yaml"), policy("same", "l2", "a.txt")).unwrap();
        let next = load_cached(d, &mut cache, Some(&HashSet::new()));
        assert!(next.policies.is_empty(), "{:?}", said(&next));
        assert_eq!(said(&next), said(&load(d)));
    }
}
