//! Two AutoSend accounts for the binary: a fake per account (each with its own key), a
//! config naming them, manifests and a store in a temporary directory ([`Two`]).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use autosend_fake::{FakeAutoSend, RunningFake};

use super::fake::fake_config;
use super::{Policy, Run, emails, listwarden, output, write};

pub const KEY_EU: &str = "key-eu-7f3a9c";
pub const KEY_US: &str = "key-us-2b8d41";

/// Two fakes (brand-eu's, brand-us's), served by a runtime kept alive for the test, and a
/// directory for `listwarden.yaml`, `keys/eu.key`, `manifests/` and `state.db`.
pub struct Two {
    pub eu: RunningFake,
    pub us: RunningFake,
    pub rt: tokio::runtime::Runtime,
    pub dir: tempfile::TempDir,
}

impl Two {
    pub fn new() -> Two {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let serve = |key: &str| {
            rt.block_on(FakeAutoSend::new(fake_config(key)).serve_local())
                .unwrap()
        };
        let (eu, us) = (serve(KEY_EU), serve(KEY_US));
        let dir = tempfile::tempdir().unwrap();
        write(&dir.path().join("keys/eu.key"), &format!("{KEY_EU}\n"));
        Two { eu, us, rt, dir }
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    /// The usual config: brand-eu (key file, the default) and brand-us (key from
    /// BRAND_US_KEY).
    pub fn config(&self) -> PathBuf {
        self.config_named("brand-eu", "brand-us", "brand-eu")
    }

    /// A config of two accounts: `eu_name` (key file, eu's server) and `us_name` (key from
    /// BRAND_US_KEY, us's server); `default` is the defaultAccount.
    pub fn config_named(&self, eu_name: &str, us_name: &str, default: &str) -> PathBuf {
        self.config_with(eu_name, us_name, default, "apiKeyEnv: BRAND_US_KEY")
    }

    /// [`Two::config_named`] with `us_key` the line that says where us's key is.
    pub fn config_with(
        &self,
        eu_name: &str,
        us_name: &str,
        default: &str,
        us_key: &str,
    ) -> PathBuf {
        let text = format!(
            "apiVersion: listwarden.dev/v1\nkind: Config\naccounts:\n  - name: {eu_name}\n    \
             apiKeyFile: keys/eu.key\n    apiUrl: {}\n    rateLimit: 100/s\n  - name: {us_name}\n    \
             {us_key}\n    apiUrl: {}\n    rateLimit: 100/s\n\
             defaultAccount: {default}\n",
            self.eu.base_url(),
            self.us.base_url()
        );
        let path = self.path("listwarden.yaml");
        write(&path, &text);
        path
    }

    pub fn manifest(&self, file: &str, text: &str) {
        write(&self.path("manifests").join(file), text);
    }

    /// `listwarden ARGS` in the directory, BRAND_US_KEY set to `us_key`, no URL or key of
    /// the environment.
    pub fn command_with_us_key(&self, args: &[&str], us_key: &str) -> Run {
        let mut cmd = listwarden();
        cmd.current_dir(self.dir.path())
            .env_remove("AUTOSEND_API_URL")
            .env("BRAND_US_KEY", us_key)
            .args(args);
        output(&mut cmd)
    }

    /// [`Two::command_with_us_key`] with brand-us's right key.
    pub fn command(&self, args: &[&str]) -> Run {
        self.command_with_us_key(args, KEY_US)
    }

    /// `apply manifests --state state.db --strategy assert --config CONFIG`, BRAND_US_KEY
    /// set to `us_key`.
    pub fn apply_with_us_key(&self, config: &Path, us_key: &str) -> Run {
        self.command_with_us_key(
            &[
                "apply",
                "manifests",
                "--state",
                "state.db",
                "--strategy",
                "assert",
                "--config",
                config.to_str().unwrap(),
            ],
            us_key,
        )
    }

    pub fn apply(&self, config: &Path) -> Run {
        self.apply_with_us_key(config, KEY_US)
    }

    /// `apply MANIFESTS --state state.db --strategy assert` without a config file: the one
    /// account of the environment, `key` against `url` (a run from before accounts, or an
    /// old job beside the config's).
    pub fn apply_without_config(&self, manifests: &str, url: &str, key: &str) -> Run {
        let mut cmd = listwarden();
        cmd.current_dir(self.dir.path())
            .env("AUTOSEND_API_URL", url)
            .env("AUTOSEND_API_KEY", key)
            .args([
                "apply",
                manifests,
                "--state",
                "state.db",
                "--strategy",
                "assert",
            ]);
        output(&mut cmd)
    }

    /// `plan --output json` with `config`: its `summary.to_assert`.
    pub fn plan_to_assert(&self, config: &Path) -> serde_json::Value {
        let run = self.command(&[
            "plan",
            "manifests",
            "--state",
            "state.db",
            "--output",
            "json",
            "--config",
            config.to_str().unwrap(),
        ]);
        run.code(0);
        run.json()["summary"]["to_assert"].clone()
    }

    /// `status --output json`.
    pub fn status(&self) -> serde_json::Value {
        self.command(&["status", "--state", "state.db", "--output", "json"])
            .json()
    }

    /// `listwarden run manifests --state state.db --listen 127.0.0.1:PORT --config CONFIG`,
    /// BRAND_US_KEY set to `us_key`, stdout and stderr discarded: add flags, or a pipe for
    /// the log, then spawn.
    pub fn daemon_command(&self, config: &Path, port: u16, us_key: &str) -> Command {
        let mut cmd = listwarden();
        cmd.current_dir(self.dir.path())
            .env_remove("AUTOSEND_API_URL")
            .env("BRAND_US_KEY", us_key)
            .args(["run", "manifests", "--state", "state.db"])
            .args(["--listen", &format!("127.0.0.1:{port}"), "--config"])
            .arg(config)
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        cmd
    }

    /// Policies `eu` (the default account) and `us` (brand-us) on the same list id,
    /// `list-1`, each list holding its policy's contacts.
    pub fn same_list_id_in_both(&self) -> (Vec<String>, Vec<String>) {
        let (eu, us) = (emails("eu", 3), emails("us", 4));
        self.eu.handle().add_contacts("list-1", &eu);
        self.us.handle().add_contacts("list-1", &us);
        self.manifest("eu.yaml", &Policy::new("eu", "list-1").emails(&eu).yaml());
        self.manifest(
            "us.yaml",
            &Policy::new("us", "list-1")
                .spec("  account: brand-us\n")
                .emails(&us)
                .yaml(),
        );
        (eu, us)
    }
}

/// `GET http://127.0.0.1:{port}{path}`, blocking: (status, body).
pub fn get(port: u16, path: &str) -> Option<(u16, String)> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let resp = reqwest::get(format!("http://127.0.0.1:{port}{path}"))
            .await
            .ok()?;
        let status = resp.status().as_u16();
        Some((status, resp.text().await.ok()?))
    })
}

/// (ready, reason) of policy `name` in a status document.
pub fn condition(status: &serde_json::Value, name: &str) -> (String, String) {
    let c = &policy(status, name)["condition"];
    (
        c["ready"].as_str().unwrap_or("?").to_string(),
        c["reason"].as_str().unwrap_or("?").to_string(),
    )
}

pub fn policy<'a>(status: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    status["policies"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == name)
        .unwrap_or_else(|| panic!("no policy {name} in {status}"))
}
