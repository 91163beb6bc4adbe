//! Helpers shared by the CLI tests: run the real binary from `tests/fixtures/`, so the
//! paths in diagnostics are short and exact (`unknown_field/policy.yaml: ...`).

#![allow(dead_code)]

use std::path::{Path, PathBuf};

pub fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

/// What one run of the binary produced.
#[derive(Debug)]
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    /// The lines of stderr that are diagnostics (`...: error: ...` / `...: warning: ...`).
    pub fn diagnostics(&self) -> Vec<&str> {
        self.stderr
            .lines()
            .filter(|l| l.contains(": error: ") || l.contains(": warning: "))
            .collect()
    }

    pub fn errors(&self) -> Vec<&str> {
        self.stderr
            .lines()
            .filter(|l| l.contains(": error: "))
            .collect()
    }

    pub fn warnings(&self) -> Vec<&str> {
        self.stderr
            .lines()
            .filter(|l| l.contains(": warning: "))
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

    #[track_caller]
    pub fn code(&self, expected: i32) -> &Self {
        assert_eq!(
            self.code, expected,
            "exit code\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.stdout, self.stderr
        );
        self
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.stdout).unwrap_or_else(|e| {
            panic!(
                "stdout is not JSON ({e}):\n{}\n{}",
                self.stdout, self.stderr
            )
        })
    }
}

/// Runs `listwarden ARGS` with `dir` as the working directory. The state store points to a
/// path that does not exist, so `plan` sees no records (everything is new) whatever
/// `.listwarden/state.db` a developer has lying around, and nothing is ever written.
pub fn run_in(dir: &Path, args: &[&str]) -> Run {
    let no_state = tempfile::tempdir().expect("temp dir");
    let out = assert_cmd::Command::new(env!("CARGO_BIN_EXE_listwarden"))
        .current_dir(dir)
        .env_remove("LISTWARDEN_RATE_LIMIT")
        .env("LISTWARDEN_STATE", no_state.path().join("absent/state.db"))
        .env("NO_COLOR", "1")
        .args(args)
        .output()
        .expect("run listwarden");
    Run {
        code: out.status.code().expect("exited with a code"),
        stdout: String::from_utf8(out.stdout).expect("utf-8 stdout"),
        stderr: String::from_utf8(out.stderr).expect("utf-8 stderr"),
    }
}

/// Runs `listwarden ARGS` from `tests/fixtures/`.
pub fn run(args: &[&str]) -> Run {
    run_in(&fixtures(), args)
}

pub const HEADER: &str = "apiVersion: listwarden.dev/v1\nkind: ListPolicy\n";

/// A policy document with inline emails.
pub fn policy(name: &str, list: &str, emails: &[&str]) -> String {
    let mut s = format!("{HEADER}metadata:\n  name: {name}\nspec:\n  contactListId: {list}\n");
    s.push_str("  exclude:\n    emails:\n");
    for e in emails {
        s.push_str(&format!("      - {e:?}\n"));
    }
    s
}

pub fn write(path: &Path, text: &str) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, text).unwrap();
}
