//! `listwarden run` as a child process (killed when the guard drops) against the fake of an
//! [`Env`], manifests in its temporary directory, observed through `/readyz`, `/status`,
//! `/metrics` and the fake's counters; and a parser of the Prometheus text format.

use std::collections::BTreeSet;
use std::ops::Deref;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus};
use std::time::{Duration, Instant};

use autosend_fake::{FakeConfig, RemoveBatch};
use serde_json::Value;

use super::fake::{Env, fake_config};
use super::{KEY, free_port, write_atomic};

pub const L1: &str = "60d5ec49f1b2c72d9c8b0001";
pub const L2: &str = "60d5ec49f1b2c72d9c8b0002";

/// The daemon process; killed (SIGKILL) and reaped on drop unless it already exited.
pub struct Daemon {
    pub child: Child,
    pub port: u16,
    pub log: PathBuf,
}

impl Daemon {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .args([&format!("-{sig}"), &self.pid().to_string()])
            .status()
            .expect("run kill")
            .success();
        assert!(ok, "kill -{sig} {} failed", self.pid());
    }

    pub fn running(&mut self) -> bool {
        self.child.try_wait().expect("try_wait").is_none()
    }

    /// Waits for the process to exit, at most `timeout`.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(s) = self.child.try_wait().expect("try_wait") {
                return Some(s);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}

/// How to start the daemon.
#[derive(Clone, Debug)]
pub struct Opts {
    pub key: String,
    pub rate_limit: String,
    pub debounce: String,
    pub extra: Vec<String>,
    /// PATH given to `run` (default: the harness's `manifests/`).
    pub path: Option<PathBuf>,
}

impl Default for Opts {
    fn default() -> Self {
        Opts {
            key: KEY.into(),
            rate_limit: "100/s".into(),
            debounce: "200ms".into(),
            extra: Vec::new(),
            path: None,
        }
    }
}

/// A daemon (once started) against the fake of an [`Env`], whose methods it has too.
pub struct Harness {
    // Field order matters: the daemon goes first, then the fake (told to stop), then its
    // runtime, then the directory.
    pub daemon: Option<Daemon>,
    http: reqwest::Client,
    pub env: Env,
    runs: u32,
}

impl Deref for Harness {
    type Target = Env;
    fn deref(&self) -> &Env {
        &self.env
    }
}

impl Harness {
    /// A fake with key [`KEY`], no rate limit and no faults.
    pub fn new() -> Harness {
        Harness::with_fake(fake_config(KEY))
    }

    pub fn with_fake(config: FakeConfig) -> Harness {
        Harness::with_env(Env::new(config))
    }

    /// A daemon harness around `env` (e.g. [`Env::wrapped`], a fake behind a rewriting layer).
    pub fn with_env(env: Env) -> Harness {
        let _ = rustls::crypto::ring::default_provider().install_default();
        std::fs::create_dir_all(env.manifests()).unwrap();
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(3))
            .build()
            .unwrap();
        Harness {
            daemon: None,
            http,
            env,
            runs: 0,
        }
    }

    /// Writes `manifests/{rel}` atomically.
    pub fn write(&self, rel: &str, text: &str) {
        write_atomic(&self.manifests().join(rel), text);
    }

    /// Starts `listwarden run` with the defaults of [`Opts`].
    pub fn start(&mut self) {
        self.start_with(Opts::default());
    }

    pub fn start_with(&mut self, opts: Opts) {
        assert!(self.daemon.is_none(), "a daemon is already running");
        self.runs += 1;
        let port = free_port();
        let log = self.dir.path().join(format!("daemon-{}.log", self.runs));
        let logfile = std::fs::File::create(&log).unwrap();
        let mut cmd = self.env.command(&opts.key);
        cmd.env("RUST_LOG", "listwarden=info,autosend=info,warn")
            .arg("run")
            .arg(opts.path.clone().unwrap_or_else(|| self.manifests()))
            .arg("--state")
            .arg(self.state())
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .args(["--rate-limit", &opts.rate_limit])
            .args(["--debounce", &opts.debounce])
            .args(&opts.extra)
            .stdout(logfile.try_clone().unwrap())
            .stderr(logfile);
        let child = cmd.spawn().expect("spawn listwarden run");
        self.daemon = Some(Daemon { child, port, log });
        self.wait(
            "the HTTP listener to answer /healthz",
            Duration::from_secs(10),
            || self.get("/healthz").filter(|(s, _)| *s == 200),
        );
    }

    pub fn daemon(&mut self) -> &mut Daemon {
        self.daemon.as_mut().expect("a running daemon")
    }

    /// Takes the daemon out (e.g. to stop it and start another).
    pub fn take_daemon(&mut self) -> Daemon {
        self.daemon.take().expect("a running daemon")
    }

    pub fn log_text(&self) -> String {
        self.daemon
            .as_ref()
            .map(|d| d.log_text())
            .unwrap_or_default()
    }

    /// `GET path` on the daemon: `(status, body)`, or `None` when nothing answers.
    pub fn get(&self, path: &str) -> Option<(u16, String)> {
        let port = self.daemon.as_ref()?.port;
        let url = format!("http://127.0.0.1:{port}{path}");
        self.env.rt.block_on(async {
            let resp = self.http.get(&url).send().await.ok()?;
            let status = resp.status().as_u16();
            let body = resp.text().await.ok()?;
            Some((status, body))
        })
    }

    pub fn status(&self) -> Value {
        let (code, body) = self.get("/status").expect("/status answers");
        assert_eq!(code, 200, "/status: {body}");
        serde_json::from_str(&body).expect("/status is JSON")
    }

    /// The policy named `name` in /status, if listed (`None` too while /status cannot answer
    /// yet, e.g. before the daemon holds the store's lock).
    pub fn policy_status(&self, name: &str) -> Option<Value> {
        let (200, body) = self.get("/status")? else {
            return None;
        };
        serde_json::from_str::<Value>(&body).ok()?["policies"]
            .as_array()?
            .iter()
            .find(|p| p["name"] == name)
            .cloned()
    }

    /// `(ready, reason, message)` of a policy's condition.
    pub fn condition(&self, name: &str) -> Option<(String, String, String)> {
        let p = self.policy_status(name)?;
        let c = &p["condition"];
        Some((
            c["ready"].as_str()?.to_string(),
            c["reason"].as_str()?.to_string(),
            c["message"].as_str().unwrap_or("").to_string(),
        ))
    }

    pub fn metrics(&self) -> String {
        let (code, body) = self.get("/metrics").expect("/metrics answers");
        assert_eq!(code, 200, "/metrics: {body}");
        body
    }

    /// Sum of the samples of `name` whose labels contain every `label="value"` of `labels`.
    pub fn metric_sum(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        metric_sum(&self.metrics(), name, labels)
    }

    pub fn ready(&self) -> bool {
        matches!(self.get("/readyz"), Some((200, _)))
    }

    pub fn wait_ready(&self, timeout: Duration) {
        self.wait("/readyz to be OK", timeout, || self.ready().then_some(()));
    }

    /// Polls `f` every 20 ms until it returns `Some`, failing with the daemon's log after
    /// `timeout`.
    #[track_caller]
    pub fn wait<T>(&self, what: &str, timeout: Duration, mut f: impl FnMut() -> Option<T>) -> T {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(v) = f() {
                return v;
            }
            if Instant::now() >= deadline {
                panic!(
                    "timed out after {timeout:?} waiting for {what}\n--- daemon log ---\n{}",
                    self.log_text()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Remove batches the fake answered 200, in arrival order.
    pub fn ok_batches(&self) -> Vec<RemoveBatch> {
        self.fake()
            .counters()
            .remove_batches
            .into_iter()
            .filter(|b| b.status == 200)
            .collect()
    }

    /// Contacts of the 200-answered remove batches to `list`, from batch index `from` on.
    pub fn sent_since(&self, list: &str, from: usize) -> BTreeSet<String> {
        self.fake()
            .counters()
            .remove_batches
            .into_iter()
            .skip(from)
            .filter(|b| b.status == 200 && b.list_id == list)
            .flat_map(|b| b.entries)
            .map(|e| e.trim().to_lowercase())
            .collect()
    }

    pub fn batch_count(&self) -> usize {
        self.fake().counters().remove_batches.len()
    }

    /// Waits until every one of `contacts` is absent from `list` in the fake.
    #[track_caller]
    pub fn wait_removed(&self, list: &str, contacts: &[String], timeout: Duration) {
        self.wait(
            &format!("{} contact(s) to leave {list}", contacts.len()),
            timeout,
            || {
                contacts
                    .iter()
                    .all(|c| !self.fake().is_member(list, c))
                    .then_some(())
            },
        );
    }

    /// Waits until the policy's condition has `reason`; returns the condition.
    #[track_caller]
    pub fn wait_reason(
        &self,
        policy: &str,
        reason: &str,
        timeout: Duration,
    ) -> (String, String, String) {
        self.wait(
            &format!("policy {policy} to have reason {reason}"),
            timeout,
            || self.condition(policy).filter(|c| c.1 == reason),
        )
    }
}

/// A sample: metric name, labels, value.
pub type Sample = (String, Vec<(String, String)>, f64);

/// Parses one sample line `name{labels} value [timestamp]` of the text exposition format:
/// `(name, labels, value)`, or an error saying what is wrong.
pub fn parse_sample(line: &str) -> Result<Sample, String> {
    let bytes = line.as_bytes();
    let mut i = 0;
    while i < bytes.len()
        && (bytes[i].is_ascii_alphanumeric() || bytes[i] == b'_' || bytes[i] == b':')
    {
        i += 1;
    }
    let name = &line[..i];
    if name.is_empty() || name.as_bytes()[0].is_ascii_digit() {
        return Err("no metric name".into());
    }
    let mut labels = Vec::new();
    if i < bytes.len() && bytes[i] == b'{' {
        i += 1;
        loop {
            if i < bytes.len() && bytes[i] == b'}' {
                i += 1;
                break;
            }
            let start = i;
            while i < bytes.len() && (bytes[i].is_ascii_alphanumeric() || bytes[i] == b'_') {
                i += 1;
            }
            let key = &line[start..i];
            if key.is_empty() || !line[i..].starts_with("=\"") {
                return Err(format!("bad label at column {start}"));
            }
            i += 2;
            let mut value = String::new();
            loop {
                match bytes.get(i) {
                    None => return Err("unterminated label value".into()),
                    Some(b'\\') => {
                        match bytes.get(i + 1) {
                            Some(b'n') => value.push('\n'),
                            Some(b'\\') => value.push('\\'),
                            Some(b'"') => value.push('"'),
                            _ => return Err("bad escape in a label value".into()),
                        }
                        i += 2;
                    }
                    Some(b'"') => {
                        i += 1;
                        break;
                    }
                    Some(_) => {
                        let c = line[i..].chars().next().unwrap();
                        value.push(c);
                        i += c.len_utf8();
                    }
                }
            }
            labels.push((key.to_string(), value));
            match bytes.get(i) {
                Some(b',') => i += 1,
                Some(b'}') => {}
                _ => return Err("expected , or } after a label".into()),
            }
        }
    }
    let rest = &line[i..];
    let Some(rest) = rest.strip_prefix(' ') else {
        return Err("no space before the value".into());
    };
    let mut parts = rest.split(' ');
    let value = parts.next().unwrap_or("");
    let value: f64 = match value {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        "NaN" => f64::NAN,
        v => v
            .parse()
            .map_err(|_| format!("value {v:?} is not a number"))?,
    };
    if let Some(ts) = parts.next()
        && ts.parse::<f64>().is_err()
    {
        return Err(format!("timestamp {ts:?} is not a number"));
    }
    if parts.next().is_some() {
        return Err("trailing fields".into());
    }
    Ok((name.to_string(), labels, value))
}

/// Sum of the samples of `name` in `text` whose labels include every pair of `labels`.
pub fn metric_sum(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(|l| parse_sample(l).ok())
        .filter(|(n, ls, _)| {
            n == name
                && labels
                    .iter()
                    .all(|(k, v)| ls.iter().any(|(lk, lv)| lk == k && lv == v))
        })
        .map(|(_, _, v)| v)
        .sum()
}
