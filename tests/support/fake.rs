//! The fake AutoSend served in-process: for the real binary ([`Env`], the fake on a runtime
//! the test keeps alive, manifests and a store in a temporary directory) and for the library
//! driven directly the way `apply` drives it ([`Local`], [`sync`], fast clients).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use autosend::{ApiKey, Client, ClientConfig, RateLimits};
use autosend_fake::{FakeAutoSend, FakeConfig, Faults, RunningFake};
use listwarden::contact::{ContactKind, ContactListId};
use listwarden::manifest::{Manifests, Strategy};
use listwarden::plan::{Plan, PlanOptions};
use listwarden::reconcile::{self, Context, ListOutcome, SyncReport};
use listwarden::store::Store;
use serde_json::Value;

use super::scripted::{self, Server};
use super::{KEY, Run, listwarden, output, write};

/// A fake with the given key, no rate limit and no faults.
pub fn fake_config(api_key: &str) -> FakeConfig {
    FakeConfig {
        api_key: api_key.to_string(),
        rate_limits: vec![],
        faults: Faults::default(),
    }
}

/// How an [`Env`] serves its fake.
enum Serving {
    /// As the fake serves itself (dropped connections and all).
    Itself(RunningFake),
    /// Its router inside another one (a layer rewriting answers).
    Wrapped(Server),
}

/// A fake AutoSend served on 127.0.0.1 by a runtime kept alive for the whole test, and a
/// temporary directory for `manifests/` and `state.db`; runs the real binary against both.
pub struct Env {
    // Declared before `rt`: the server is told to stop before its runtime goes.
    serving: Serving,
    fake: FakeAutoSend,
    url: String,
    pub rt: tokio::runtime::Runtime,
    pub dir: tempfile::TempDir,
    /// The key runs use unless told another.
    pub key: String,
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

impl Env {
    pub fn new(config: FakeConfig) -> Env {
        let rt = runtime();
        let key = config.api_key.clone();
        let served = rt
            .block_on(FakeAutoSend::new(config).serve_local())
            .expect("serve the fake");
        Env {
            fake: served.handle().clone(),
            url: served.base_url(),
            serving: Serving::Itself(served),
            rt,
            dir: tempfile::tempdir().unwrap(),
            key,
        }
    }

    /// The fake's router served inside `wrap(router)`, e.g. behind a layer that rewrites its
    /// answers ([`scripted::header_only_429`]).
    pub fn wrapped(config: FakeConfig, wrap: impl FnOnce(axum::Router) -> axum::Router) -> Env {
        let rt = runtime();
        let key = config.api_key.clone();
        let fake = FakeAutoSend::new(config);
        let server = rt.block_on(scripted::serve_router(wrap(fake.router())));
        Env {
            url: server.url.clone(),
            serving: Serving::Wrapped(server),
            fake,
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
        &self.fake
    }

    /// The base URL, `http://127.0.0.1:PORT/v1`.
    pub fn url(&self) -> String {
        self.url.clone()
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

    /// A [`listwarden`] command in the temporary directory, pointing at the fake with `key`.
    pub fn command(&self, key: &str) -> Command {
        let mut cmd = listwarden();
        cmd.current_dir(self.dir.path())
            .env("AUTOSEND_API_URL", self.url())
            .env("AUTOSEND_API_KEY", key);
        cmd
    }

    /// Runs `listwarden ARGS` with the env's key.
    pub fn run(&self, args: &[&str]) -> Run {
        self.run_with_key(&self.key, args)
    }

    pub fn run_with_key(&self, key: &str, args: &[&str]) -> Run {
        output(self.command(key).args(args))
    }

    /// `COMMAND manifests --state state.db EXTRA...` (absolute paths).
    fn on_manifests(&self, command: &str, extra: &[&str]) -> Vec<String> {
        let mut args = vec![
            command.to_string(),
            self.manifests().display().to_string(),
            "--state".into(),
            self.state().display().to_string(),
        ];
        args.extend(extra.iter().map(|a| a.to_string()));
        args
    }

    /// `apply manifests --state state.db --rate-limit 100/s --strategy assert EXTRA...` with
    /// `key` (the defaults unless EXTRA gives its own; assert, so request counts do not
    /// depend on what `auto` picks).
    pub fn apply_command(&self, key: &str, extra: &[&str]) -> Command {
        let mut defaults: Vec<&str> = Vec::new();
        if !extra.contains(&"--rate-limit") {
            defaults.extend_from_slice(&["--rate-limit", "100/s"]);
        }
        if !extra.contains(&"--strategy") {
            defaults.extend_from_slice(&["--strategy", "assert"]);
        }
        let mut cmd = self.command(key);
        cmd.args(self.on_manifests("apply", &[defaults.as_slice(), extra].concat()));
        cmd
    }

    /// [`apply_command`](Self::apply_command) with the env's key, run to its end.
    pub fn apply(&self, extra: &[&str]) -> Run {
        output(&mut self.apply_command(&self.key, extra))
    }

    /// `plan manifests --state state.db EXTRA...`.
    pub fn plan(&self, extra: &[&str]) -> Run {
        output(
            self.command(&self.key)
                .args(self.on_manifests("plan", extra)),
        )
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

/// Every entry of every remove batch the fake received for `list`, whatever the answer.
pub fn removes_sent(fake: &FakeAutoSend, list: &str) -> Vec<String> {
    fake.counters()
        .remove_batches
        .iter()
        .filter(|b| b.list_id == list)
        .flat_map(|b| b.entries.iter().cloned())
        .collect()
}

/// Every entry of the remove batches to `list` the fake answered 200.
pub fn removes_accepted(fake: &FakeAutoSend, list: &str) -> Vec<String> {
    fake.counters()
        .remove_batches
        .iter()
        .filter(|b| b.list_id == list && b.status == 200)
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

/// Plan options for `batch_size` and `strategy`, no rate limit.
pub fn plan_options(batch_size: usize, strategy: Strategy) -> PlanOptions {
    PlanOptions {
        batch_size,
        accounts: listwarden::account::Accounts::single(RateLimits(vec![])),
        strategy,
        ..PlanOptions::default()
    }
}

/// What one in-process pass did.
pub struct Pass {
    pub manifests: Manifests,
    pub plan: Plan,
    pub report: SyncReport,
}

impl Pass {
    /// The outcomes of a pass whose manifests loaded without errors and whose key was
    /// accepted (asserted).
    #[track_caller]
    pub fn checked_outcomes(self) -> Vec<ListOutcome> {
        assert!(
            !self.manifests.has_errors(),
            "{:?}",
            self.manifests.diagnostics
        );
        assert!(self.report.unauthorized.is_empty(), "{:?}", self.report);
        self.report.outcomes
    }
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

/// [`sync`] with a [`fast_client`] of `base_url` (key [`KEY`]), one list at a time in the
/// order of the plan.
pub async fn sync_one_at_a_time(
    base_url: &str,
    store: &Arc<Store>,
    path: &Path,
    options: PlanOptions,
) -> Pass {
    sync(&fast_client(base_url, KEY), store, path, options, 1).await
}

/// A fake served on the test's own runtime, an in-memory store and a manifests directory:
/// the library's apply path, in-process.
pub struct Local {
    pub served: RunningFake,
    pub store: Arc<Store>,
    pub dir: tempfile::TempDir,
}

impl Local {
    /// A fake with key [`KEY`], no rate limit and no faults.
    pub async fn new() -> Local {
        Local {
            served: FakeAutoSend::new(fake_config(KEY))
                .serve_local()
                .await
                .expect("serve the fake"),
            store: Arc::new(Store::in_memory().unwrap()),
            dir: tempfile::tempdir().unwrap(),
        }
    }

    pub fn fake(&self) -> &FakeAutoSend {
        self.served.handle()
    }

    pub fn url(&self) -> String {
        self.served.base_url()
    }

    /// Writes `{dir}/{file}`.
    pub fn manifest(&self, file: &str, text: &str) {
        write(&self.dir.path().join(file), text);
    }

    /// A [`fast_client`] of the fake.
    pub fn client(&self) -> Client {
        fast_client(&self.url(), KEY)
    }

    /// One pass with a [`fast_client`], four lists at a time.
    pub async fn sync(&self, options: PlanOptions) -> Pass {
        self.sync_with(&self.client(), options).await
    }

    /// One pass with `client`, four lists at a time.
    pub async fn sync_with(&self, client: &Client, options: PlanOptions) -> Pass {
        sync(client, &self.store, self.dir.path(), options, 4).await
    }

    pub fn confirmed(&self, list: &str) -> BTreeSet<String> {
        confirmed(&self.store, list)
    }
}

/// Contacts (emails and contact ids) the store holds as confirmed absent and not failed, for
/// `list`.
pub fn confirmed(store: &Store, list: &str) -> BTreeSet<String> {
    let r = store
        .records(&listwarden::contact::ListKey::default_account(
            ContactListId::parse(list).unwrap(),
        ))
        .unwrap();
    r.emails
        .iter()
        .chain(r.contact_ids.iter())
        .filter(|(_, r)| r.confirmed_at.is_some() && r.failed_at.is_none())
        .map(|(c, _)| c.to_string())
        .collect()
}

/// Whether the store holds `contact`, named as `kind`, as confirmed absent and not failed.
pub fn is_confirmed(store: &Store, list: &str, kind: ContactKind, contact: &str) -> bool {
    let r = store
        .records(&listwarden::contact::ListKey::default_account(
            ContactListId::parse(list).unwrap(),
        ))
        .unwrap();
    let records = match kind {
        ContactKind::Email => &r.emails,
        ContactKind::ContactId => &r.contact_ids,
    };
    records
        .get(contact)
        .is_some_and(|r| r.confirmed_at.is_some() && r.failed_at.is_none())
}
