//! What the whole-process benchmarks share: realistic addresses and list ids, the release
//! directory they run from, and the fake AutoSend server as a process. Included with
//! `#[path = "common/mod.rs"] mod common;`; each benchmark uses part of it.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// The `n`th address: realistic lengths and shapes (~30 bytes), mixed case so normalisation
/// does work.
pub fn email(n: usize) -> String {
    const FIRST: [&str; 8] = [
        "Jane", "john", "maria", "Wei", "olu", "priya", "sven", "Ana",
    ];
    const DOMAINS: [&str; 6] = [
        "example.com",
        "mail.example.org",
        "Example.net",
        "corp.example.io",
        "example.co.uk",
        "inbox.example.de",
    ];
    format!(
        "{}.user{}@{}",
        FIRST[n % FIRST.len()],
        n,
        DOMAINS[(n / 7) % DOMAINS.len()]
    )
}

/// A list id shaped like AutoSend's (24 hex characters).
pub fn list_id(l: usize) -> String {
    format!("60d5ec49f1b2c72d9c8b{l:04}")
}

/// `target/release`, where this benchmark, `listwarden` and `autosend-fake` are built.
pub fn release_dir() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    exe.parent().unwrap().parent().unwrap().to_path_buf()
}

/// The fake AutoSend server as a process, without rate limits, seeded from a file; killed
/// when dropped.
pub struct FakeProcess {
    child: Child,
    pub port: u16,
}

impl FakeProcess {
    pub fn start(seed: &Path) -> FakeProcess {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = Command::new(release_dir().join("autosend-fake"))
            .args([
                "--listen",
                &format!("127.0.0.1:{port}"),
                "--rate-limit",
                "none",
            ])
            .arg("--seed")
            .arg(seed)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start autosend-fake (cargo build --release -p autosend-fake)");
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            std::thread::sleep(Duration::from_millis(50));
        }
        FakeProcess { child, port }
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}/v1", self.port)
    }
}

impl Drop for FakeProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `cmd` run under `tool` (`/usr/bin/time`, `strace`): a command for `tool` with `tool_args`
/// first, then `cmd`'s program, arguments, environment and working directory.
pub fn wrapped(cmd: &Command, tool: &str, tool_args: &[&std::ffi::OsStr]) -> Command {
    let mut out = Command::new(tool);
    out.args(tool_args)
        .arg(cmd.get_program())
        .args(cmd.get_args())
        .envs(
            cmd.get_envs()
                .filter_map(|(k, v)| v.map(|v| (k.to_owned(), v.to_owned()))),
        )
        .current_dir(cmd.get_current_dir().unwrap_or(Path::new(".")));
    out
}

/// Waits for `child` to exit, calling `watch` every 2 ms meanwhile: the fake has no clock
/// of its own for when it saw a request, so a benchmark reads its counters this often.
pub fn wait_watching(child: &mut Child, mut watch: impl FnMut()) -> std::process::ExitStatus {
    loop {
        watch();
        if let Some(status) = child.try_wait().expect("wait for the child") {
            return status;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// The median of `v` (the upper one of an even count).
pub fn median_f64(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}
