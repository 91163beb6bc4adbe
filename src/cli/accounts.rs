//! The accounts a command serves: the config file's (`--config`), or the one account of the
//! environment. Building each account's client is here too, so `apply`, `run` and
//! `plan --refresh` get the same clients from the same settings.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use super::{ApiFlags, PlanFlags};
use autosend::{Client, RateLimits};
use listwarden::account::{Accounts, Clients};
use listwarden::config::{Config, KeySource};
use listwarden::contact::AccountName;

/// The accounts of a command, and the config file they came from, if any.
pub struct Setup {
    pub accounts: Accounts,
    pub config: Option<Config>,
}

/// Reads the config file when one is given, and refuses settings that would be a second
/// source of truth beside it (a key, a URL or a budget from flags or the environment).
/// `api` is `None` for commands that never call AutoSend.
pub fn setup(
    config: Option<&Path>,
    rate_limit: Option<&RateLimits>,
    api: Option<&ApiFlags>,
) -> Result<Setup, String> {
    let Some(path) = config else {
        return Ok(Setup {
            accounts: Accounts::single(rate_limit.cloned().unwrap_or_default()),
            config: None,
        });
    };
    let mut clashes: Vec<&str> = Vec::new();
    if rate_limit.is_some() {
        clashes.push("--rate-limit (or LISTWARDEN_RATE_LIMIT)");
    }
    if let Some(api) = api {
        if api.api_url.is_some() {
            clashes.push("--api-url (or AUTOSEND_API_URL)");
        }
        if api.api_key_file.is_some() {
            clashes.push("--api-key-file (or AUTOSEND_API_KEY_FILE)");
        }
        if api.project_id.is_some() {
            clashes.push("--project-id (or AUTOSEND_PROJECT_ID)");
        }
    }
    if std::env::var_os("AUTOSEND_API_KEY").is_some_and(|k| !k.is_empty()) {
        clashes.push("AUTOSEND_API_KEY");
    }
    if !clashes.is_empty() {
        return Err(format!(
            "{} given with --config {}: two sources of truth. With a config file, each \
             account's key, URL, project and rateLimit are set in it; unset {}",
            clashes.join(", "),
            path.display(),
            clashes.join(", ")
        ));
    }
    let config = listwarden::config::load(path).map_err(|diagnostics| {
        let lines: Vec<String> = diagnostics.iter().map(ToString::to_string).collect();
        format!(
            "the config file has {} error(s):\n{}",
            diagnostics.iter().filter(|d| d.is_error()).count(),
            lines.join("\n")
        )
    })?;
    let accounts = Accounts::from_config(&config);
    Ok(Setup {
        accounts,
        config: Some(config),
    })
}

/// Each account's client. Without a config file, the one client of the environment (an
/// error ends the command, as it always did). With one, an account whose key cannot be read
/// gets its error instead of a client: its lists fail, the others run.
pub fn clients(
    setup: &Setup,
    api: &ApiFlags,
    flags: &PlanFlags,
    observe: impl Fn(&AccountName, Client) -> Client,
) -> Result<Clients, String> {
    let Some(config) = &setup.config else {
        let rate = flags.rate_limit.clone().unwrap_or_default();
        let client = super::commands::client(api, &rate)?;
        return Ok(Clients::single(observe(
            &AccountName::default_account(),
            client,
        )));
    };
    let mut clients = BTreeMap::new();
    let mut concurrency = BTreeMap::new();
    for spec in &config.accounts {
        let client = spec.client_config().and_then(|mut c| {
            let key_file = match &spec.api_key {
                KeySource::File(path) => Some(path.as_path()),
                KeySource::Env(_) => None,
            };
            super::commands::warn_exposure(key_file, &c.base_url);
            tune(&mut c, api);
            Client::new(c).map_err(|e| format!("account {}: {e}", spec.name))
        });
        if let Err(e) = &client {
            tracing::error!(account = %spec.name, error = %e, "this account's lists cannot run");
        }
        clients.insert(spec.name.clone(), client.map(|c| observe(&spec.name, c)));
        if let Some(n) = spec.concurrency {
            concurrency.insert(spec.name.clone(), n);
        }
    }
    Ok(Clients::new(clients).with_concurrency(concurrency))
}

/// [`setup`] and [`clients`] for `apply` and `run`: the accounts of their flags, and each
/// one's client.
pub fn for_sync(
    sync: &super::SyncArgs,
    observe: impl Fn(&AccountName, Client) -> Client,
) -> Result<(Setup, Clients), String> {
    let setup = sync.flags.accounts(Some(&sync.api))?;
    let clients = clients(&setup, &sync.api, &sync.flags, observe)?;
    Ok((setup, clients))
}

/// The retry settings of the command line, which apply to every account.
pub fn tune(config: &mut autosend::ClientConfig, api: &ApiFlags) {
    config.max_retries = api.max_retries;
    config.min_backoff = api.retry_backoff.0;
    config.max_backoff = config.max_backoff.max(api.retry_backoff.0);
}

/// Observes nothing.
pub fn unobserved(_: &AccountName, client: Client) -> Client {
    client
}

/// Reports each account's requests to the daemon's metrics, labelled with the account.
pub fn observed(
    metrics: Arc<listwarden::metrics::Metrics>,
) -> impl Fn(&AccountName, Client) -> Client {
    move |account, client| {
        client.with_observer(Arc::new(listwarden::metrics::MetricsObserver {
            metrics: metrics.clone(),
            account: account.to_string(),
        }))
    }
}
