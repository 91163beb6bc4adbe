//! The one harness of the integration tests, a module per concern:
//!
//! - here, the shared vocabulary: manifests ([`HEADER`], [`Policy`], [`policy`], [`emails`]),
//!   files ([`write`], [`write_atomic`]), [`free_port`], and the real binary ([`listwarden`],
//!   [`Run`], [`run`] from `tests/fixtures/`, [`run_in`], status documents);
//! - [`fake`]: the fake AutoSend served in-process, for the binary ([`fake::Env`]) and for the
//!   library driven directly ([`fake::Local`], [`fake::sync`]);
//! - [`daemon`]: `listwarden run` as a child process ([`daemon::Harness`]) and its metrics;
//! - [`scripted`]: small servers that answer what a test scripts, and the fake behind a layer
//!   that rewrites its 429 answers.
//!
//! Each test file says `mod support;` and uses what it needs.

#![allow(dead_code)]

pub mod accounts;
pub mod daemon;
pub mod fake;
pub mod scripted;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use serde_json::Value;

/// The API key of the fake, and of every client and run pointed at it.
pub const KEY: &str = "test-key";
pub const HEADER: &str = "apiVersion: listwarden.dev/v1\nkind: ListPolicy\n";

/// `{prefix}0@example.com`, `{prefix}1@example.com`, ...: `n` addresses.
pub fn emails(prefix: &str, n: usize) -> Vec<String> {
    (0..n).map(|i| format!("{prefix}{i}@example.com")).collect()
}

// ---- manifests -------------------------------------------------------------------------------

/// A `ListPolicy` document, built up: inline emails, file sources, contact ids and extra
/// `spec` lines. [`policy`] is the short form for inline emails only.
///
/// ```text
/// Policy::new("pa", "list-a").spec("  strategy: observe\n").emails(&e).ids(&ids).yaml()
/// ```
#[derive(Clone, Debug)]
pub struct Policy {
    name: String,
    list: String,
    spec: String,
    emails: Vec<String>,
    files: Vec<String>,
    ids: Vec<String>,
}

impl Policy {
    pub fn new(name: &str, list: &str) -> Policy {
        Policy {
            name: name.to_string(),
            list: list.to_string(),
            spec: String::new(),
            emails: Vec::new(),
            files: Vec::new(),
            ids: Vec::new(),
        }
    }

    /// Extra `spec` lines, each indented by 2 and ending with a newline
    /// (`"  maxRemovalsPerSync: 5\n"`), placed before `exclude`.
    pub fn spec(mut self, lines: &str) -> Policy {
        self.spec.push_str(lines);
        self
    }

    /// Inline `exclude.emails`.
    pub fn emails<S: AsRef<str>>(mut self, emails: &[S]) -> Policy {
        self.emails
            .extend(emails.iter().map(|e| e.as_ref().to_string()));
        self
    }

    /// An `exclude.files` source, `path` relative to the manifest.
    pub fn file(mut self, path: &str) -> Policy {
        self.files.push(path.to_string());
        self
    }

    /// Inline `exclude.contactIds`.
    pub fn ids<S: AsRef<str>>(mut self, ids: &[S]) -> Policy {
        self.ids.extend(ids.iter().map(|i| i.as_ref().to_string()));
        self
    }

    /// The document; each `exclude` section only when it has entries.
    pub fn yaml(&self) -> String {
        let Policy {
            name,
            list,
            spec,
            emails,
            files,
            ids,
        } = self;
        let mut s = format!(
            "{HEADER}metadata:\n  name: {name}\nspec:\n  contactListId: {list}\n{spec}  exclude:\n"
        );
        if !emails.is_empty() {
            s.push_str("    emails:\n");
            for e in emails {
                s.push_str(&format!("      - {e:?}\n"));
            }
        }
        if !files.is_empty() {
            s.push_str("    files:\n");
            for f in files {
                s.push_str(&format!("      - path: {f}\n"));
            }
        }
        if !ids.is_empty() {
            s.push_str("    contactIds:\n");
            for i in ids {
                s.push_str(&format!("      - {i:?}\n"));
            }
        }
        s
    }

    /// Writes `{dir}/{name}.txt` holding `emails` (one a line) and `{dir}/{name}.yaml`, this
    /// policy with that file as a source: the shape of a big suppression set.
    pub fn write_with_emails_file<S: AsRef<str>>(self, dir: &Path, emails: &[S]) {
        let data = format!("{}.txt", self.name);
        let lines: Vec<&str> = emails.iter().map(AsRef::as_ref).collect();
        write(&dir.join(&data), &(lines.join("\n") + "\n"));
        let yaml = dir.join(format!("{}.yaml", self.name));
        write(&yaml, &self.file(&data).yaml());
    }
}

/// A policy document with inline emails.
pub fn policy<S: AsRef<str>>(name: &str, list: &str, emails: &[S]) -> String {
    Policy::new(name, list).emails(emails).yaml()
}

// ---- files -------------------------------------------------------------------------------------

/// Writes `path`, creating its directories.
pub fn write(path: &Path, text: &str) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, text).unwrap();
}

/// Writes `path` the way editors do: a hidden temporary file renamed over the target, so a
/// watcher never reads half a file.
pub fn write_atomic(path: &Path, text: &str) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    let tmp = path.with_file_name(format!(
        ".{}.tmp",
        path.file_name().unwrap().to_string_lossy()
    ));
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// A free TCP port on 127.0.0.1 (bound then released): nothing listens on it.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

// ---- the binary --------------------------------------------------------------------------------

/// `listwarden` with a clean environment: none of the settings a developer's shell may hold
/// (rate limit, state path, key, project, log filter), no colour, no stdin.
pub fn listwarden() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_listwarden"));
    cmd.env_remove("LISTWARDEN_RATE_LIMIT")
        .env_remove("LISTWARDEN_STATE")
        .env_remove("AUTOSEND_API_KEY")
        .env_remove("AUTOSEND_API_KEY_FILE")
        .env_remove("AUTOSEND_PROJECT_ID")
        .env_remove("LISTWARDEN_CONFIG")
        .env_remove("AUTOSEND_WEBHOOK_SECRET")
        .env_remove("RUST_LOG")
        .env("NO_COLOR", "1")
        .stdin(Stdio::null());
    cmd
}

/// Runs `cmd` to its end.
pub fn output(cmd: &mut Command) -> Run {
    let out = cmd.output().expect("run listwarden");
    Run {
        code: out.status.code().expect("exited with a code"),
        stdout: String::from_utf8(out.stdout).expect("utf-8 stdout"),
        stderr: String::from_utf8(out.stderr).expect("utf-8 stderr"),
    }
}

pub fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

/// Runs `listwarden ARGS` with `dir` as the working directory. The state store points to a
/// path that does not exist, so `plan` sees no records (everything is new) whatever
/// `.listwarden/state.db` a developer has lying around, and nothing is ever written.
pub fn run_in(dir: &Path, args: &[&str]) -> Run {
    let no_state = tempfile::tempdir().expect("temp dir");
    output(
        listwarden()
            .current_dir(dir)
            .env("LISTWARDEN_STATE", no_state.path().join("absent/state.db"))
            .args(args),
    )
}

/// Runs `listwarden ARGS` from `tests/fixtures/`, so the paths in diagnostics are short and
/// exact (`unknown_field/policy.yaml: ...`).
pub fn run(args: &[&str]) -> Run {
    run_in(&fixtures(), args)
}

/// What one run of the binary produced.
#[derive(Debug)]
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    #[track_caller]
    pub fn code(&self, expected: i32) -> &Self {
        assert_eq!(
            self.code, expected,
            "exit code\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.stdout, self.stderr
        );
        self
    }

    /// stdout and stderr together.
    pub fn all(&self) -> String {
        format!("{}\n{}", self.stdout, self.stderr)
    }

    #[track_caller]
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.stdout).unwrap_or_else(|e| {
            panic!(
                "stdout is not JSON ({e}):\n{}\n{}",
                self.stdout, self.stderr
            )
        })
    }

    /// The lines of stderr that are diagnostics (`...: error: ...` / `...: warning: ...`).
    pub fn diagnostics(&self) -> Vec<&str> {
        self.stderr_lines_with(&[": error: ", ": warning: "])
    }

    pub fn errors(&self) -> Vec<&str> {
        self.stderr_lines_with(&[": error: "])
    }

    pub fn warnings(&self) -> Vec<&str> {
        self.stderr_lines_with(&[": warning: "])
    }

    fn stderr_lines_with(&self, markers: &[&str]) -> Vec<&str> {
        self.stderr
            .lines()
            .filter(|l| markers.iter().any(|m| l.contains(m)))
            .collect()
    }

    /// Asserts that exactly one stderr line starts with `prefix` and contains every one of
    /// `fragments`; returns that line.
    #[track_caller]
    pub fn line(&self, prefix: &str, fragments: &[&str]) -> &str {
        let matching: Vec<&str> = self
            .stderr
            .lines()
            .filter(|l| l.starts_with(prefix))
            .collect();
        assert_eq!(
            matching.len(),
            1,
            "expected exactly one line starting with {prefix:?}\n--- stderr ---\n{}",
            self.stderr
        );
        for f in fragments {
            assert!(
                matching[0].contains(f),
                "line {:?} does not contain {f:?}\n--- stderr ---\n{}",
                matching[0],
                self.stderr
            );
        }
        matching[0]
    }

    /// The last line of stderr (where a failed run says why).
    pub fn last_stderr_line(&self) -> &str {
        self.stderr.lines().last().unwrap_or("")
    }
}

// ---- status and plan documents -----------------------------------------------------------------

/// The element of the array `doc[array]` whose `key` is `value`.
#[track_caller]
pub fn entry<'a>(doc: &'a Value, array: &str, key: &str, value: &str) -> &'a Value {
    doc[array]
        .as_array()
        .unwrap_or_else(|| panic!("{array} is not an array in {doc:#}"))
        .iter()
        .find(|e| e[key] == value)
        .unwrap_or_else(|| panic!("no {array} entry with {key} {value} in {doc:#}"))
}

/// The policy named `name` in a status document.
#[track_caller]
pub fn policy_status<'a>(doc: &'a Value, name: &str) -> &'a Value {
    entry(doc, "policies", "name", name)
}

/// The list `id` in a status, plan or refresh document.
#[track_caller]
pub fn list_status<'a>(doc: &'a Value, id: &str) -> &'a Value {
    entry(doc, "lists", "contact_list_id", id)
}
