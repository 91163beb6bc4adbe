//! Helpers shared by the `apply_*` tests: a fake AutoSend served in-process, manifests in a
//! temporary directory, the real binary run against both, and the library's sync driven
//! directly (the in-process style).

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use autosend::{ApiKey, Client, ClientConfig, RateLimits};
use autosend_fake::{FakeAutoSend, FakeConfig, Faults, RunningFake};
use listwarden::manifest::{Manifests, Strategy};
use listwarden::plan::{Plan, PlanOptions};
use listwarden::reconcile::{self, Context, SyncReport};
use listwarden::store::Store;
use serde_json::Value;

pub const KEY: &str = "test-key";
pub const HEADER: &str = "apiVersion: listwarden.dev/v1\nkind: ListPolicy\n";

/// A fake with the given key, no rate limit and no faults.
pub fn fake_config(api_key: &str) -> FakeConfig {
    FakeConfig {
        api_key: api_key.to_string(),
        rate_limits: vec![],
        faults: Faults::default(),
    }
}

pub fn emails(prefix: &str, n: usize) -> Vec<String> {
    (0..n).map(|i| format!("{prefix}{i}@example.com")).collect()
}

/// A policy document with inline emails.
pub fn policy(name: &str, list: &str, emails: &[String]) -> String {
    policy_with(name, list, emails, "")
}

/// A policy document with inline emails and extra `spec` lines (each indented by 2).
pub fn policy_with(name: &str, list: &str, emails: &[String], spec_extra: &str) -> String {
    let mut s = format!("{HEADER}metadata:\n  name: {name}\nspec:\n  contactListId: {list}\n");
    s.push_str(spec_extra);
    s.push_str("  exclude:\n    emails:\n");
    for e in emails {
        s.push_str(&format!("      - {e:?}\n"));
    }
    s
}

/// A policy whose emails come from a text file source beside the manifest.
pub fn write_file_policy(dir: &Path, name: &str, list: &str, emails: &[String]) {
    let data = format!("{name}.txt");
    write(&dir.join(&data), &(emails.join("\n") + "\n"));
    write(
        &dir.join(format!("{name}.yaml")),
        &format!(
            "{HEADER}metadata:\n  name: {name}\nspec:\n  contactListId: {list}\n  exclude:\n    files:\n      - path: {data}\n"
        ),
    );
}

pub fn write(path: &Path, text: &str) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, text).unwrap();
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

    pub fn all(&self) -> String {
        format!("{}\n{}", self.stdout, self.stderr)
    }

    pub fn json(&self) -> Value {
        serde_json::from_str(&self.stdout).unwrap_or_else(|e| {
            panic!(
                "stdout is not JSON ({e}):\n{}\n{}",
                self.stdout, self.stderr
            )
        })
    }
}

/// A fake AutoSend served on 127.0.0.1 by a runtime kept alive for the whole test, and a
/// temporary directory with `manifests/` and `state.db`.
pub struct Env {
    // Declared before `rt`: the server is told to stop before its runtime goes.
    pub served: RunningFake,
    pub rt: tokio::runtime::Runtime,
    pub dir: tempfile::TempDir,
    pub key: String,
}

impl Env {
    pub fn new(config: FakeConfig) -> Env {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let key = config.api_key.clone();
        let served = rt
            .block_on(FakeAutoSend::new(config).serve_local())
            .expect("serve the fake");
        Env {
            served,
            rt,
            dir: tempfile::tempdir().unwrap(),
            key,
        }
    }

    /// No rate limit, no faults, key [`KEY`].
    pub fn plain() -> Env {
        Env::new(fake_config(KEY))
    }

    pub fn fake(&self) -> &FakeAutoSend {
        self.served.handle()
    }

    pub fn url(&self) -> String {
        self.served.base_url()
    }

    pub fn manifests(&self) -> PathBuf {
        self.dir.path().join("manifests")
    }

    pub fn state(&self) -> PathBuf {
        self.dir.path().join("state.db")
    }

    /// Writes `manifests/{file}`.
    pub fn manifest(&self, file: &str, text: &str) {
        write(&self.manifests().join(file), text);
    }

    pub fn remove_manifest(&self, file: &str) {
        std::fs::remove_file(self.manifests().join(file)).unwrap();
    }

    /// A `listwarden` command with a clean environment pointing at the fake.
    pub fn command(&self, key: &str) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_listwarden"));
        cmd.current_dir(self.dir.path())
            .env_remove("LISTWARDEN_RATE_LIMIT")
            .env_remove("LISTWARDEN_STATE")
            .env_remove("AUTOSEND_API_KEY_FILE")
            .env_remove("AUTOSEND_PROJECT_ID")
            .env_remove("RUST_LOG")
            .env("NO_COLOR", "1")
            .env("AUTOSEND_API_URL", self.url())
            .env("AUTOSEND_API_KEY", key)
            .stdin(Stdio::null());
        cmd
    }

    /// Runs `listwarden ARGS` with the env's key.
    pub fn run(&self, args: &[&str]) -> Run {
        self.run_with_key(&self.key.clone(), args)
    }

    pub fn run_with_key(&self, key: &str, args: &[&str]) -> Run {
        output(self.command(key).args(args))
    }

    /// `apply manifests --state state.db --rate-limit 100/s --strategy assert EXTRA...`
    /// (the defaults unless EXTRA gives its own; assert, so request counts do not depend on
    /// what `auto` picks).
    pub fn apply(&self, extra: &[&str]) -> Run {
        let m = self.manifests();
        let s = self.state();
        let mut args = vec!["apply", m.to_str().unwrap(), "--state", s.to_str().unwrap()];
        if !extra.contains(&"--rate-limit") {
            args.extend_from_slice(&["--rate-limit", "100/s"]);
        }
        if !extra.contains(&"--strategy") {
            args.extend_from_slice(&["--strategy", "assert"]);
        }
        args.extend_from_slice(extra);
        self.run(&args)
    }

    pub fn status_json(&self) -> Value {
        let s = self.state();
        let r = self.run(&["status", "--state", s.to_str().unwrap(), "--output", "json"]);
        r.code(0);
        r.json()
    }

    pub fn status_text(&self) -> Run {
        let s = self.state();
        let r = self.run(&["status", "--state", s.to_str().unwrap()]);
        r.code(0);
        r
    }
}

pub fn output(cmd: &mut Command) -> Run {
    let out = cmd.output().expect("run listwarden");
    Run {
        code: out.status.code().expect("exited with a code"),
        stdout: String::from_utf8(out.stdout).expect("utf-8 stdout"),
        stderr: String::from_utf8(out.stderr).expect("utf-8 stderr"),
    }
}

/// The policy named `name` in a status document.
#[track_caller]
pub fn policy_status<'a>(doc: &'a Value, name: &str) -> &'a Value {
    doc["policies"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == name)
        .unwrap_or_else(|| panic!("no policy {name} in {doc:#}"))
}

/// The list `id` in a status document.
#[track_caller]
pub fn list_status<'a>(doc: &'a Value, id: &str) -> &'a Value {
    doc["lists"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["contact_list_id"] == id)
        .unwrap_or_else(|| panic!("no list {id} in {doc:#}"))
}

/// Every entry of every remove batch the fake received, for `list`.
pub fn removes_sent(fake: &FakeAutoSend, list: &str) -> Vec<String> {
    fake.counters()
        .remove_batches
        .iter()
        .filter(|b| b.list_id == list)
        .flat_map(|b| b.entries.iter().cloned())
        .collect()
}

// ---- in-process style ------------------------------------------------------------------------

/// A client with fast retries and no client-side pacing.
pub fn fast_client(base_url: &str, key: &str) -> Client {
    Client::new(fast_config(base_url, key)).unwrap()
}

pub fn fast_config(base_url: &str, key: &str) -> ClientConfig {
    let mut c = ClientConfig::new(base_url, ApiKey::new(key));
    c.rate_limits = RateLimits(vec![]);
    c.min_backoff = Duration::from_millis(10);
    c.max_backoff = Duration::from_millis(100);
    c.request_timeout = Duration::from_secs(10);
    c
}

pub fn plan_options(batch_size: usize) -> PlanOptions {
    PlanOptions {
        batch_size,
        rate_limits: RateLimits(vec![]),
        strategy: Strategy::Assert,
        ..PlanOptions::default()
    }
}

/// What one in-process pass did.
pub struct Pass {
    pub manifests: Manifests,
    pub plan: Plan,
    pub report: SyncReport,
}

/// Loads `path`, plans against `store`, records the manifests and syncs every list, the way
/// `apply` does.
pub async fn sync(
    client: &Client,
    store: &Arc<Store>,
    path: &Path,
    options: PlanOptions,
    concurrency: usize,
) -> Pass {
    let batch_size = options.batch_size;
    let (manifests, plan) = reconcile::prepare(store, path, options).unwrap();
    let ctx = Context::new(client.clone(), store.clone(), batch_size);
    let report = reconcile::sync_all(
        &ctx,
        Arc::new(manifests.policies.clone()),
        plan.lists.clone(),
        concurrency,
    )
    .await;
    Pass {
        manifests,
        plan,
        report,
    }
}
