//! `listwarden init [DIR]`: a manifests folder to start from. It never overwrites: when a
//! file it would write exists, nothing is written and the command says which.

use std::io::Write as _;
use std::path::{Path, PathBuf};

use super::{EXIT_ERROR, EXIT_OK};

const POLICY_FILE: &str = "example-policy.yaml";
const SUPPRESSION_FILE: &str = "suppressions/bounced.txt";
const IGNORED: &str = ".listwarden/";

fn sample_policy() -> String {
    format!(
        "\
# yaml-language-server: $schema={schema}
# A ListPolicy: contacts that must NOT be in one AutoSend contact list. Every field and
# rule: `listwarden --help` points to the manifest reference. Check this folder with
# `listwarden validate` and see what would be done with `listwarden plan`.
apiVersion: {api_version}
kind: {kind}
metadata:
  # Unique across all manifests: lowercase letters, digits and '-'.
  name: newsletter-suppressions
  labels: {{team: growth}}
spec:
  # The id of your contact list in AutoSend (quote it unless it is a plain number).
  contactListId: replace-with-your-list-id
  # Planned but never applied while true: set it to false once contactListId is yours.
  suspend: true
  # A sync in which this policy would newly remove more contacts is refused until
  # `listwarden apply --force`: a safety net against a wrong file.
  maxRemovalsPerSync: 1000
  exclude:
    emails:
      - unsubscribed@example.com
    # contactIds: [60d5ec49f1b2c72d9c8b1111]
    files:
      # One address a line, '#' comments; a CSV export works too (add `column: email`).
      - path: {suppressions}
",
        schema = listwarden::manifest::SCHEMA_ID,
        api_version = listwarden::manifest::API_VERSION,
        kind = listwarden::manifest::KIND,
        suppressions = SUPPRESSION_FILE,
    )
}

const SAMPLE_SUPPRESSIONS: &str = "\
# Addresses that must not be in the list, one a line; blank lines and '#' comments are
# ignored. Export them from wherever bounces are recorded, and commit the file.
bounced@example.com
";

/// Writes the scaffold into `dir`, and `.listwarden/` into the `.gitignore` of the folder
/// holding `dir` (where `listwarden apply` is run, so where the state store is created).
pub fn init(dir: &Path) -> u8 {
    match scaffold(dir) {
        Ok(report) => {
            print!("{report}");
            EXIT_OK
        }
        Err(e) => {
            eprintln!("error: {e}");
            EXIT_ERROR
        }
    }
}

fn gitignore_path(dir: &Path) -> PathBuf {
    match dir.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent.join(".gitignore"),
        Some(_) => PathBuf::from(".gitignore"),
        None => dir.join(".gitignore"),
    }
}

fn scaffold(dir: &Path) -> Result<String, String> {
    let policy = dir.join(POLICY_FILE);
    let suppressions = dir.join(SUPPRESSION_FILE);
    let existing: Vec<String> = [&policy, &suppressions]
        .iter()
        .filter(|p| p.symlink_metadata().is_ok())
        .map(|p| p.display().to_string())
        .collect();
    if !existing.is_empty() {
        return Err(format!(
            "{} already exist{}; init never overwrites: move {} away, or give another folder \
             (`listwarden init DIR`)",
            existing.join(" and "),
            if existing.len() == 1 { "s" } else { "" },
            if existing.len() == 1 { "it" } else { "them" },
        ));
    }
    let write_err = |path: &Path, e: std::io::Error| {
        format!(
            "cannot write {}: {e}; check the folder's permissions",
            path.display()
        )
    };
    let parent = suppressions.parent().unwrap_or(dir);
    std::fs::create_dir_all(parent).map_err(|e| write_err(parent, e))?;
    create_new(&policy, &sample_policy()).map_err(|e| write_err(&policy, e))?;
    create_new(&suppressions, SAMPLE_SUPPRESSIONS).map_err(|e| write_err(&suppressions, e))?;
    let gitignore = gitignore_path(dir);
    let ignore_note = ignore_state(&gitignore).map_err(|e| write_err(&gitignore, e))?;
    Ok(format!(
        "created {}\ncreated {}\n{ignore_note}\nnext: set spec.contactListId and suspend: false \
         in {}, then `listwarden validate {d}` and `listwarden plan {d}`\n",
        policy.display(),
        suppressions.display(),
        policy.display(),
        d = dir.display(),
    ))
}

/// Creates `path` with `text`, failing if it appeared since the check (never truncates).
fn create_new(path: &Path, text: &str) -> std::io::Result<()> {
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)?;
    f.write_all(text.as_bytes())
}

/// Adds `.listwarden/` to `gitignore` unless a line already ignores it; an existing file is
/// appended to, never rewritten.
fn ignore_state(gitignore: &Path) -> std::io::Result<String> {
    let current = match std::fs::read_to_string(gitignore) {
        Ok(text) => Some(text),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(e),
    };
    let already = current.as_deref().is_some_and(|text| {
        text.lines().map(str::trim).any(|l| {
            matches!(
                l,
                ".listwarden" | ".listwarden/" | "/.listwarden" | "/.listwarden/"
            )
        })
    });
    if already {
        return Ok(format!("{} already ignores {IGNORED}", gitignore.display()));
    }
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .open(gitignore)?;
    let separator = match &current {
        Some(text) if !text.is_empty() && !text.ends_with('\n') => "\n",
        _ => "",
    };
    writeln!(
        f,
        "{separator}# listwarden's state store (contact addresses: never commit it)\n{IGNORED}"
    )?;
    Ok(format!(
        "{} {} (ignores {IGNORED}, the state store)",
        if current.is_some() {
            "updated"
        } else {
            "created"
        },
        gitignore.display()
    ))
}
