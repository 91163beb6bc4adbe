//! The config file: the AutoSend accounts one listwarden serves, each with its own key,
//! project, request budget, concurrency and webhook secret.
//!
//! It is checked like a manifest: every problem is a [`Diagnostic`] with the file and the
//! field path (`accounts[1].apiKeyEnv`), all of them reported at once, and a file with any
//! error yields no config at all (a half-read config could send one account's lists with
//! another's key).
//!
//! The file says where the secrets are, never what they are. A relative `apiKeyFile` or
//! `webhookSecretFile` is relative to the config file's directory, as kubeconfig does: the
//! config and its keys are deployed together (a Kubernetes Secret mounted next to it, a
//! directory in /etc), and the meaning of the file must not change with the directory the
//! daemon happens to be started from. The path is resolved when the file is loaded, made
//! absolute but not canonical, so a Secret rotated by swapping its `..data` symlink is
//! followed.
//!
//! Secrets are read late and one account at a time ([`AccountSpec::client_config`],
//! [`AccountSpec::webhook_secret_text`]), not by [`load`]: a key that cannot be read (not
//! mounted yet, a variable missing from one unit's environment) then fails only the account
//! that needs it, and the config stays free of secrets, so it can be logged and compared.
//! Their errors name the account and the file or the variable, never the text read.

use std::io::Read;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_yaml::Value;

use crate::contact::{AccountName, clipped, quoted};
use crate::manifest::{
    API_VERSION, Diagnostic, bounds, check_header, fix_hint, source, yaml_error,
};

pub const KIND: &str = "Config";

/// Largest config file read. A thousand accounts take about 200 KB.
pub const MAX_CONFIG_BYTES: u64 = 1024 * 1024;

/// Most accounts one config may declare.
pub const MAX_ACCOUNTS: usize = 1000;

/// Most lists of one account reconciled at once. They share the account's request budget, so
/// more only wait for it.
pub const MAX_CONCURRENCY: usize = 64;

/// Longest `projectId`. AutoSend's are 24 hex characters; the value goes in a header.
pub const MAX_PROJECT_ID_BYTES: usize = 128;

/// A loaded, checked config file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    pub path: PathBuf,
    pub accounts: Vec<AccountSpec>,
    /// The account of whatever names none: `defaultAccount`, or the only account. `None` when
    /// there are several and none is named.
    pub default_account: Option<AccountName>,
}

/// One account as the config declares it. It holds where its secrets are, not the secrets.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AccountSpec {
    pub name: AccountName,
    pub api_key: KeySource,
    /// Sent as `x-project-id` (account keys, `ASA_...`, need it).
    pub project_id: Option<String>,
    /// `None`: [`autosend::DEFAULT_BASE_URL`].
    pub api_url: Option<String>,
    /// `None`: the client's default budget.
    pub rate_limits: Option<autosend::RateLimits>,
    /// Lists of this account reconciled at once, 1 to [`MAX_CONCURRENCY`].
    pub concurrency: Option<usize>,
    pub webhook_secret: Option<KeySource>,
}

/// Where a secret is read from. A file path is absolute (resolved against the config
/// file's directory when it was relative).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KeySource {
    File(PathBuf),
    Env(String),
}

impl KeySource {
    /// Where the secret is, for messages: `file /run/secrets/a.key (apiKeyFile)`. A name
    /// that may be the secret itself, pasted where its place belongs, is not repeated.
    fn describe(&self, field: &str) -> String {
        match self {
            KeySource::File(p)
                if p.file_name()
                    .is_some_and(|n| may_be_secret(&n.to_string_lossy())) =>
            {
                format!(
                    "file named in {field}File (not repeated: it looks like a key; write the \
                     path of the file holding it)"
                )
            }
            KeySource::File(p) => {
                format!("file {} ({field}File)", clipped(&p.display().to_string()))
            }
            KeySource::Env(v) if !variable_name_shown(v) => format!(
                "environment variable named in {field}Env ({} characters, not repeated: \
                 variable names are upper case, and this may be the secret itself)",
                v.chars().count()
            ),
            KeySource::Env(v) => format!("environment variable {v} ({field}Env)"),
        }
    }
}

/// Whether `text`, written where a name, a path or a URL belongs, may be an AutoSend key
/// pasted there by mistake (`AS_...`, or an account key, `ASA_...`): such text is described
/// by its field and length in messages, never repeated.
fn may_be_secret(text: &str) -> bool {
    let upper = text.get(..4).unwrap_or(text).to_ascii_uppercase();
    upper.starts_with("AS_") || upper.starts_with("ASA_")
}

/// Whether a well-formed variable name is shown in messages: one in the upper case form of
/// variable names (`BRAND_EU_KEY`). A key, or a webhook secret's hex, with no character a
/// name cannot have would pass for a name; those have lower-case letters, a key's prefix,
/// or a length no one types.
fn variable_name_shown(name: &str) -> bool {
    name.len() <= 48 && !may_be_secret(name) && !name.bytes().any(|b| b.is_ascii_lowercase())
}

impl AccountSpec {
    /// The client settings of this account: its key (read now), base URL, project and
    /// budget; the rest are the client's defaults. The error names the account and where
    /// the key should be, never the key.
    pub fn client_config(&self) -> Result<autosend::ClientConfig, String> {
        use autosend::ConfigError;
        let key = match &self.api_key {
            KeySource::File(p) => autosend::ApiKey::from_file(p),
            KeySource::Env(v) => autosend::ApiKey::from_env(v),
        };
        let name = &self.name;
        let place = self.api_key.describe("apiKey");
        let key = key.map_err(|e| match e {
            ConfigError::KeyFile { reason, .. } => format!(
                "account {name}: cannot read the API key {place}: {reason}; make it readable \
                 by listwarden, or fix the path in the config file (a relative one starts from the config file's \
                 directory)"
            ),
            ConfigError::EmptyKeyFile(_) => format!(
                "account {name}: the API key {place} is empty; write the account's API key \
                 into it"
            ),
            ConfigError::MissingEnv(_) => format!(
                "account {name}: the API key {place} is not set (or blank); set it in \
                 listwarden's environment, or fix the name in the config file"
            ),
            ConfigError::BadKey => format!(
                "account {name}: the API key in the {place} contains characters that cannot \
                 be sent in an HTTP header (a line break or a control character inside the \
                 key?); write the key alone, on one line"
            ),
            other => format!("account {name}: {other}"),
        })?;
        let base = self
            .api_url
            .as_deref()
            .unwrap_or(autosend::DEFAULT_BASE_URL);
        let mut config = autosend::ClientConfig::new(base, key);
        config.key_source = format!(
            "the {} of account {} in the config file",
            self.api_key.describe("apiKey"),
            self.name
        );
        config.project_id = self.project_id.clone();
        if let Some(limits) = &self.rate_limits {
            config.rate_limits = limits.clone();
        }
        Ok(config)
    }

    /// The account's webhook secret as written (surrounding whitespace removed), read now;
    /// `None` when the account declares none. The error names the account and where the
    /// secret should be, never the secret.
    pub fn webhook_secret_text(&self) -> Result<Option<String>, String> {
        let Some(secret) = &self.webhook_secret else {
            return Ok(None);
        };
        let name = &self.name;
        let place = secret.describe("webhookSecret");
        let text = match secret {
            KeySource::File(p) => read_secret_file(p).map_err(|reason| {
                format!(
                    "account {name}: cannot read the webhook secret {place}: {reason}; make \
                     it readable by listwarden, or fix the path in the config file (a relative one starts from the config file's \
                 directory)"
                )
            })?,
            KeySource::Env(v) => match std::env::var(v) {
                Ok(text) => text,
                Err(std::env::VarError::NotPresent) => {
                    return Err(format!(
                        "account {name}: the webhook secret {place} is not set; set it in \
                         listwarden's environment, or fix the name in the config file"
                    ));
                }
                Err(std::env::VarError::NotUnicode(_)) => {
                    return Err(format!(
                        "account {name}: the webhook secret {place} is not valid UTF-8; copy \
                         the secret again from AutoSend's webhook settings"
                    ));
                }
            },
        };
        let text = text.trim();
        if text.is_empty() {
            return Err(format!(
                "account {name}: the webhook secret {place} is empty; copy the secret from \
                 AutoSend's webhook settings"
            ));
        }
        Ok(Some(text.to_string()))
    }
}

/// Reads a secret file within the bound a key file has. The error is a reason, never the
/// file's bytes.
fn read_secret_file(path: &Path) -> Result<String, String> {
    let max = autosend::config::MAX_KEY_FILE_BYTES;
    let mut text = String::new();
    std::fs::File::open(path)
        .and_then(|f| f.take(max + 1).read_to_string(&mut text))
        .map_err(|e| source::io_reason(&e))?;
    if text.len() as u64 > max {
        return Err(format!(
            "it is larger than {max} bytes, which no secret is; is it the right file?"
        ));
    }
    Ok(text)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawConfig {
    api_version: Option<String>,
    kind: Option<String>,
    /// Read one by one, so that one broken account does not hide the others' problems.
    accounts: Option<Vec<Value>>,
    default_account: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawAccount {
    name: Option<String>,
    api_key_file: Option<String>,
    api_key_env: Option<String>,
    project_id: Option<String>,
    api_url: Option<String>,
    rate_limit: Option<String>,
    /// Signed, so that `-1` gets the range's message rather than serde's.
    concurrency: Option<i64>,
    webhook_secret_file: Option<String>,
    webhook_secret_env: Option<String>,
}

/// Loads and checks the config file at `path`. Secrets are not read (see the module doc).
/// The error holds every problem found.
pub fn load(path: &Path) -> Result<Config, Vec<Diagnostic>> {
    let text = read_config(path)?;
    let mut diagnostics = Vec::new();
    let mut err = |field: &str, message: String| {
        let d = Diagnostic::error(path, message);
        diagnostics.push(if field.is_empty() { d } else { d.field(field) });
    };
    let Some((raw, broken)) = parse(path, &text, &mut err)? else {
        return Err(diagnostics);
    };

    check_header(
        raw.api_version.as_deref(),
        raw.kind.as_deref(),
        KIND,
        "a config file is",
        &mut err,
    );

    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let dir = std::path::absolute(dir).unwrap_or_else(|_| dir.to_path_buf());
    let accounts = raw.accounts.unwrap_or_default();
    if accounts.is_empty() && !broken.iter().any(|b| b == "accounts") {
        err(
            "accounts",
            "no account declared; add `accounts:` with at least one account, e.g. \
             `- {name: main, apiKeyEnv: AUTOSEND_API_KEY}`"
                .into(),
        );
    } else if accounts.len() > MAX_ACCOUNTS {
        // Not checked one by one: thousands of lines about a file of this size help nobody.
        err(
            "accounts",
            format!(
                "{} accounts declared, more than the {MAX_ACCOUNTS} one listwarden serves; \
                 split them between several listwarden instances",
                accounts.len()
            ),
        );
        return Err(diagnostics);
    }

    let mut specs = Vec::with_capacity(accounts.len());
    // Every name as written, valid or not, for the checks across accounts.
    let mut names: Vec<(usize, String)> = Vec::with_capacity(accounts.len());
    for (i, value) in accounts.into_iter().enumerate() {
        let at = format!("accounts[{i}]");
        if !value.is_mapping() {
            err(
                &at,
                "an account is a mapping, e.g. `{name: main, apiKeyEnv: AUTOSEND_API_KEY}`".into(),
            );
            continue;
        }
        let Some((account, broken)) = read_fields::<RawAccount>(value, &at, &mut err) else {
            continue;
        };
        if let Some(name) = &account.name {
            names.push((i, name.clone()));
        }
        if let Some(spec) = check_account(account, &broken, &at, &dir, &mut err) {
            specs.push(spec);
        }
    }

    for (i, name) in &names {
        if AccountName::parse(name).is_err() {
            continue;
        }
        let others: Vec<String> = names
            .iter()
            .filter(|(j, other)| j != i && other == name)
            .map(|(j, _)| format!("accounts[{j}]"))
            .collect();
        if !others.is_empty() {
            err(
                &format!("accounts[{i}].name"),
                format!(
                    "account name {} is also used by {}; names must be unique, rename one",
                    quoted(name),
                    others.join(", ")
                ),
            );
        }
    }

    let default_account = match raw.default_account {
        Some(wanted) => {
            if !names.iter().any(|(_, n)| *n == wanted) {
                const SHOWN: usize = 10;
                let mut declared: Vec<String> =
                    names.iter().take(SHOWN).map(|(_, n)| quoted(n)).collect();
                if names.len() > SHOWN {
                    declared.push(format!("and {} more", names.len() - SHOWN));
                }
                err(
                    "defaultAccount",
                    format!(
                        "defaultAccount {} names no declared account; use the name of one of \
                         `accounts` ({}), or remove it",
                        quoted(&wanted),
                        if declared.is_empty() {
                            "none has a name".to_string()
                        } else {
                            declared.join(", ")
                        }
                    ),
                );
            }
            AccountName::parse(&wanted).ok()
        }
        None => match specs.as_slice() {
            [only] => Some(only.name.clone()),
            _ => None,
        },
    };

    if !diagnostics.is_empty() {
        return Err(diagnostics);
    }
    Ok(Config {
        path: path.to_path_buf(),
        accounts: specs,
        default_account,
    })
}

/// Reads the file within [`MAX_CONFIG_BYTES`], as UTF-8. The error is the one diagnostic.
fn read_config(path: &Path) -> Result<String, Vec<Diagnostic>> {
    let unreadable = |e: std::io::Error| {
        vec![Diagnostic::error(
            path,
            format!(
                "cannot read the config file: {}; check the path given by --config or \
                 LISTWARDEN_CONFIG",
                source::io_reason(&e)
            ),
        )]
    };
    let file = std::fs::File::open(path).map_err(unreadable)?;
    let mut bytes = Vec::new();
    // `take`: the file may grow while it is read.
    file.take(MAX_CONFIG_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(unreadable)?;
    if bytes.len() as u64 > MAX_CONFIG_BYTES {
        return Err(vec![Diagnostic::error(
            path,
            format!(
                "the config file is larger than {} MiB; is it the right file?",
                MAX_CONFIG_BYTES / (1024 * 1024)
            ),
        )]);
    }
    String::from_utf8(bytes).map_err(|e| {
        let valid = &e.as_bytes()[..e.utf8_error().valid_up_to()];
        let line = valid.iter().filter(|&&b| b == b'\n').count() + 1;
        vec![Diagnostic::error(path, "the file is not valid UTF-8; save it as UTF-8").at(line, 1)]
    })
}

/// The document's top level, or `None` when nothing more can be checked (the reasons are
/// reported). `Err` for a file that is not YAML at all, with its line and column.
fn parse(
    path: &Path,
    text: &str,
    err: &mut impl FnMut(&str, String),
) -> Result<Option<(RawConfig, Vec<String>)>, Vec<Diagnostic>> {
    if let Some((line, column)) = bounds::flow_depth_exceeded(text) {
        return Err(vec![
            Diagnostic::error(
                path,
                format!(
                    "flow collections ([...] or {{...}}) are nested more than {} deep here; \
                     write the nested parts as indented blocks",
                    bounds::MAX_FLOW_DEPTH
                ),
            )
            .at(line, column),
        ]);
    }
    let syntax = |e: &serde_yaml::Error| {
        let (message, place) = yaml_error(e);
        let d = Diagnostic::error(path, format!("YAML syntax error: {}", fix_hint(&message)));
        vec![match place {
            Some((line, column)) => d.at(line, column),
            None => d,
        }]
    };
    let mut value: Value = serde_yaml::from_str(text).map_err(|e| syntax(&e))?;
    // Merge keys (`<<: *defaults`) are how accounts would share an apiUrl or a rateLimit.
    value.apply_merge().map_err(|e| syntax(&e))?;
    if value.is_null() {
        err(
            "",
            format!(
                "the config file is empty; it starts with `apiVersion: {API_VERSION}`, \
                 `kind: {KIND}` and `accounts:`"
            ),
        );
        return Ok(None);
    }
    if !value.is_mapping() {
        err(
            "",
            format!(
                "the config file is not a mapping; it starts with `apiVersion: {API_VERSION}`, \
                 `kind: {KIND}` and `accounts:`"
            ),
        );
        return Ok(None);
    }
    Ok(read_fields::<RawConfig>(value, "", err))
}

/// Reads a mapping as `T`, reporting every unknown or mistyped field, not just the first
/// serde stops at: each field it refuses is reported, taken out, and the rest read again.
/// Also returns the fields taken out, which were given (so are not "missing") but are
/// unusable. `None` when what is wrong is not one field.
fn read_fields<T: DeserializeOwned>(
    mut value: Value,
    at: &str,
    err: &mut impl FnMut(&str, String),
) -> Option<(T, Vec<String>)> {
    let mut broken = Vec::new();
    loop {
        let e = match serde_path_to_error::deserialize::<_, T>(value.clone()) {
            Ok(t) => return Some((t, broken)),
            Err(e) => e,
        };
        let message = fix_hint(&yaml_error(e.inner()).0);
        let key = match e.path().iter().next() {
            Some(serde_path_to_error::Segment::Map { key }) => Some(key.clone()),
            _ => None,
        };
        let removed = key.as_ref().and_then(|k| {
            value
                .as_mapping_mut()
                .and_then(|m| m.remove(k.as_str()))
                .map(|_| k)
        });
        let Some(key) = removed else {
            err(at, message);
            return None;
        };
        err(&join(at, key), message);
        broken.push(key.clone());
    }
}

fn join(at: &str, field: &str) -> String {
    if at.is_empty() || field.is_empty() {
        format!("{at}{field}")
    } else {
        format!("{at}.{field}")
    }
}

/// Checks one account; `None` when it has an error (reported through `err`).
fn check_account(
    raw: RawAccount,
    broken: &[String],
    at: &str,
    dir: &Path,
    err: &mut impl FnMut(&str, String),
) -> Option<AccountSpec> {
    let mut ok = true;
    let mut fail = |field: &str, message: String| {
        ok = false;
        err(&join(at, field), message);
    };
    // Given, even if unusable: a field reported broken is not also reported missing.
    let given = |field: &str, value: bool| value || broken.iter().any(|b| b == field);

    let name = match &raw.name {
        Some(n) if may_be_secret(n) => {
            fail(
                "name",
                format!(
                    "the name ({} characters, not repeated: it looks like an API key) is not \
                     an account name; use lowercase letters, digits and '-', e.g. `brand-eu`, \
                     and give the key with apiKeyFile or apiKeyEnv",
                    n.chars().count()
                ),
            );
            None
        }
        Some(n) => AccountName::parse(n).map_err(|e| fail("name", e)).ok(),
        None => {
            if !given("name", false) {
                fail(
                    "name",
                    "missing name; every account needs a unique `name`, e.g. `name: brand-eu`"
                        .into(),
                );
            }
            None
        }
    };

    let key_file = given("apiKeyFile", raw.api_key_file.is_some());
    let key_env = given("apiKeyEnv", raw.api_key_env.is_some());
    if key_file && key_env {
        fail(
            "",
            "both apiKeyFile and apiKeyEnv are given; an account reads its key from one place: \
             remove one"
                .into(),
        );
    } else if !key_file && !key_env {
        fail(
            "",
            "missing the API key's source; add `apiKeyFile: PATH` (a file holding the key) or \
             `apiKeyEnv: VARIABLE` (an environment variable holding it)"
                .into(),
        );
    }
    let api_key = secret_source(
        &raw.api_key_file,
        &raw.api_key_env,
        "apiKey",
        dir,
        &mut fail,
    );

    if given("webhookSecretFile", raw.webhook_secret_file.is_some())
        && given("webhookSecretEnv", raw.webhook_secret_env.is_some())
    {
        fail(
            "",
            "both webhookSecretFile and webhookSecretEnv are given; the secret is read from one \
             place: remove one"
                .into(),
        );
    }
    let webhook_secret = secret_source(
        &raw.webhook_secret_file,
        &raw.webhook_secret_env,
        "webhookSecret",
        dir,
        &mut fail,
    );

    if let Some(id) = &raw.project_id {
        if id.is_empty() {
            fail(
                "projectId",
                "projectId is empty; give the AutoSend project's id, or remove the field".into(),
            );
        } else if may_be_secret(id) {
            fail(
                "projectId",
                format!(
                    "projectId ({} characters, not repeated: it looks like an API key) is not \
                     a project id; copy the id from AutoSend's project settings, and give the \
                     key with apiKeyFile or apiKeyEnv",
                    id.chars().count()
                ),
            );
        } else if id.len() > MAX_PROJECT_ID_BYTES || !id.bytes().all(|b| b.is_ascii_graphic()) {
            // It is sent as a header: visible ASCII only.
            fail(
                "projectId",
                format!(
                    "projectId {} is not a project id (at most {MAX_PROJECT_ID_BYTES} visible \
                     ASCII characters, no spaces); copy it from AutoSend's project settings",
                    quoted(id)
                ),
            );
        }
    }

    if let Some(url) = &raw.api_url {
        let host = url
            .strip_prefix("https://")
            .or_else(|| url.strip_prefix("http://"));
        let well_formed = url.chars().all(|c| c.is_ascii_graphic());
        if !host.is_some_and(|h| !h.is_empty() && !h.starts_with('/')) || !well_formed {
            let shown = if may_be_secret(url) {
                format!(
                    "({} characters, not repeated: it looks like an API key)",
                    url.chars().count()
                )
            } else {
                quoted(url)
            };
            fail(
                "apiUrl",
                format!(
                    "apiUrl {shown} is not an http(s) URL; write it like {}, or remove it for \
                     that default",
                    autosend::DEFAULT_BASE_URL
                ),
            );
        }
    }

    let rate_limits =
        raw.rate_limit
            .as_deref()
            .and_then(|r| match r.parse::<autosend::RateLimits>() {
                Ok(limits) => Some(limits),
                Err(e) => {
                    fail("rateLimit", format!("{e} (the syntax of --rate-limit)"));
                    None
                }
            });

    let concurrency = raw.concurrency.and_then(|n| {
        match usize::try_from(n) {
            Ok(n) if (1..=MAX_CONCURRENCY).contains(&n) => return Some(n),
            _ => {}
        }
        fail(
            "concurrency",
            format!("must be from 1 to {MAX_CONCURRENCY}, got {n}; omit it to use --concurrency"),
        );
        None
    });

    if !ok {
        return None;
    }
    Some(AccountSpec {
        name: name?,
        api_key: api_key?,
        project_id: raw.project_id,
        api_url: raw.api_url,
        rate_limits,
        concurrency,
        webhook_secret,
    })
}

/// The source of `<prefix>File` or `<prefix>Env`, whichever is given and well-formed (the
/// exclusivity is checked by the caller). A relative file is resolved against `dir`.
fn secret_source(
    file: &Option<String>,
    env: &Option<String>,
    prefix: &str,
    dir: &Path,
    fail: &mut impl FnMut(&str, String),
) -> Option<KeySource> {
    if let Some(raw) = file {
        let field = format!("{prefix}File");
        if raw.trim().is_empty() {
            fail(
                &field,
                format!("{field} is empty; give the path of the file holding the secret"),
            );
            return None;
        }
        if raw.contains('\0') {
            fail(
                &field,
                format!("{field} contains a NUL character; fix the path"),
            );
            return None;
        }
        let joined = dir.join(raw);
        // `absolute` also drops the `./` of `./keys/eu.key`, for messages.
        return Some(KeySource::File(
            std::path::absolute(&joined).unwrap_or(joined),
        ));
    }
    let raw = env.as_ref()?;
    let field = format!("{prefix}Env");
    let mut chars = raw.chars();
    let well_formed = chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_');
    if !well_formed {
        // Not quoted: what is written here by mistake is often the secret itself.
        fail(
            &field,
            format!(
                "{field} is not an environment variable name ({} characters); write the \
                 variable's name (letters, digits and _, not starting with a digit, e.g. \
                 BRAND_EU_KEY), never the secret itself",
                raw.chars().count()
            ),
        );
        return None;
    }
    Some(KeySource::Env(raw.clone()))
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEAD: &str = "apiVersion: listwarden.dev/v1\nkind: Config\n";

    /// A config file `text` in a fresh directory (kept alive by the returned guard).
    fn config(text: &str) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("listwarden.yaml");
        std::fs::write(&path, text).unwrap();
        (dir, path)
    }

    fn errors(text: &str) -> Vec<String> {
        let (_dir, path) = config(text);
        let diagnostics = load(&path).expect_err("the config should be refused");
        assert!(diagnostics.iter().all(Diagnostic::is_error));
        diagnostics
            .iter()
            .map(|d| {
                let line = d.to_string();
                let file = path.display().to_string();
                line.strip_prefix(&file).unwrap_or(&line).to_string()
            })
            .collect()
    }

    fn account(text: &str) -> AccountSpec {
        let (_dir, path) = config(&format!("{HEAD}accounts:\n  - {text}\n"));
        let mut config = load(&path).unwrap();
        config.accounts.remove(0)
    }

    /// Sets a variable no other test uses (each test names its own: they run in parallel).
    fn set_env(var: &str, value: &str) {
        assert!(var.starts_with("LISTWARDEN_TEST_CONFIG_"));
        // SAFETY: the variable is this test's own, and the tests of this crate do not read
        // the environment through libc while they run.
        unsafe { std::env::set_var(var, value) };
    }

    #[test]
    fn a_valid_two_account_file_loads_with_every_field() {
        let (dir, path) = config(&format!(
            "{HEAD}accounts:
  - name: brand-eu
    apiKeyFile: /run/secrets/brand-eu.key
    projectId: 64f1aa
    apiUrl: https://eu.example.com/v1
    rateLimit: 2/s,50/m
    concurrency: 4
    webhookSecretFile: secrets/brand-eu.webhook
  - name: brand-us
    apiKeyEnv: BRAND_US_KEY
    webhookSecretEnv: BRAND_US_WEBHOOK_SECRET
defaultAccount: brand-us
"
        ));
        let config = load(&path).unwrap();
        assert_eq!(config.path, path);
        assert_eq!(config.default_account.unwrap().as_str(), "brand-us");
        let [eu, us] = config.accounts.as_slice() else {
            panic!("{:?}", config.accounts)
        };
        assert_eq!(
            *eu,
            AccountSpec {
                name: AccountName::parse("brand-eu").unwrap(),
                api_key: KeySource::File("/run/secrets/brand-eu.key".into()),
                project_id: Some("64f1aa".into()),
                api_url: Some("https://eu.example.com/v1".into()),
                rate_limits: Some("2/s,50/m".parse().unwrap()),
                concurrency: Some(4),
                webhook_secret: Some(KeySource::File(dir.path().join("secrets/brand-eu.webhook"))),
            }
        );
        assert_eq!(us.api_key, KeySource::Env("BRAND_US_KEY".into()));
        assert_eq!(
            us.webhook_secret,
            Some(KeySource::Env("BRAND_US_WEBHOOK_SECRET".into()))
        );
        assert_eq!(
            (&us.project_id, &us.api_url, &us.rate_limits, us.concurrency),
            (&None, &None, &None, None)
        );
    }

    #[test]
    fn the_only_account_is_the_default_and_several_without_one_named_have_none() {
        let one = format!("{HEAD}accounts: [{{name: solo, apiKeyEnv: K}}]\n");
        let (_dir, path) = config(&one);
        assert_eq!(
            load(&path).unwrap().default_account.unwrap().as_str(),
            "solo"
        );
        let two =
            format!("{HEAD}accounts: [{{name: a, apiKeyEnv: K}}, {{name: b, apiKeyEnv: K}}]\n");
        let (_dir, path) = config(&two);
        assert_eq!(load(&path).unwrap().default_account, None);
    }

    #[test]
    fn every_problem_of_a_broken_file_is_reported_at_once_with_its_field_path() {
        let errors = errors(
            "apiVersion: listwarden.dev/v2
accounts:
  - name: Brand_EU
    apiKeyFile: a.key
    apiKeyEnv: A_KEY
    concurrency: four
    rateLimit: 2/s;50/m
    colour: blue
  - apiKeyEnv: 1BAD
    apiUrl: ftp://example.com
    projectId: ''
    concurrency: 65
    webhookSecretFile: w
    webhookSecretEnv: W
  - just-a-string
defaultAccount: nobody
",
        );
        let expected = [
            ": apiVersion: error: unsupported apiVersion \"listwarden.dev/v2\"",
            ": kind: error: missing kind; add `kind: Config`",
            ": accounts[0].concurrency: error: invalid type: string \"four\", expected a whole number",
            ": accounts[0].colour: error: unknown field `colour`",
            ": accounts[0].name: error: name \"Brand_EU\" is not a valid account name",
            ": accounts[0]: error: both apiKeyFile and apiKeyEnv are given",
            ": accounts[0].rateLimit: error: unknown unit \"s;50/m\"",
            ": accounts[1].name: error: missing name",
            ": accounts[1].apiKeyEnv: error: apiKeyEnv is not an environment variable name",
            ": accounts[1]: error: both webhookSecretFile and webhookSecretEnv are given",
            ": accounts[1].projectId: error: projectId is empty",
            ": accounts[1].apiUrl: error: apiUrl \"ftp://example.com\" is not an http(s) URL",
            ": accounts[1].concurrency: error: must be from 1 to 64, got 65",
            ": accounts[2]: error: an account is a mapping",
            ": defaultAccount: error: defaultAccount \"nobody\" names no declared account",
        ];
        for (line, want) in errors.iter().zip(expected) {
            assert!(
                line.starts_with(want),
                "{line}\n  should start with\n{want}"
            );
        }
        assert_eq!(errors.len(), expected.len(), "{errors:#?}");
    }

    #[test]
    fn an_unknown_field_is_refused_with_the_field_it_was_meant_to_be() {
        let errors = errors(&format!(
            "{HEAD}acounts: []\naccounts:\n  - {{name: a, apiKeyFiel: k}}\n"
        ));
        assert_eq!(errors.len(), 3, "{errors:#?}");
        assert!(
            errors[0].starts_with(": acounts: error: unknown field `acounts`")
                && errors[0].ends_with("did you mean `accounts`?"),
            "{errors:#?}"
        );
        assert!(
            errors[1].starts_with(": accounts[0].apiKeyFiel: error: unknown field")
                && errors[1].ends_with("did you mean `apiKeyFile`?"),
            "{errors:#?}"
        );
        // The misspelt field is not taken for the one meant.
        assert!(
            errors[2].starts_with(": accounts[0]: error: missing the API key's source"),
            "{errors:#?}"
        );
    }

    #[test]
    fn duplicate_account_names_are_refused_at_each_use() {
        let errors = errors(&format!(
            "{HEAD}accounts:\n  - {{name: eu, apiKeyEnv: A}}\n  - {{name: us, apiKeyEnv: B}}\n  \
             - {{name: eu, apiKeyEnv: C}}\n"
        ));
        assert_eq!(
            errors,
            [
                ": accounts[0].name: error: account name \"eu\" is also used by accounts[2]; \
                 names must be unique, rename one",
                ": accounts[2].name: error: account name \"eu\" is also used by accounts[0]; \
                 names must be unique, rename one",
            ]
        );
    }

    #[test]
    fn an_account_needs_exactly_one_of_api_key_file_and_api_key_env() {
        let both = errors(&format!(
            "{HEAD}accounts: [{{name: a, apiKeyFile: k, apiKeyEnv: K}}]\n"
        ));
        assert_eq!(
            both,
            [
                ": accounts[0]: error: both apiKeyFile and apiKeyEnv are given; an account reads \
              its key from one place: remove one"
            ]
        );
        let neither = errors(&format!("{HEAD}accounts: [{{name: a}}]\n"));
        assert_eq!(neither.len(), 1, "{neither:?}");
        assert!(
            neither[0].starts_with(
                ": accounts[0]: error: missing the API key's source; add \
                                    `apiKeyFile: PATH`"
            ),
            "{neither:?}"
        );
    }

    #[test]
    fn a_default_account_that_names_no_account_is_refused() {
        let errors = errors(&format!(
            "{HEAD}accounts: [{{name: eu, apiKeyEnv: A}}, {{name: us, apiKeyEnv: B}}]\n\
             defaultAccount: ue\n"
        ));
        assert_eq!(
            errors,
            [
                ": defaultAccount: error: defaultAccount \"ue\" names no declared account; use the \
              name of one of `accounts` (\"eu\", \"us\"), or remove it"
            ]
        );
    }

    #[test]
    fn a_file_that_is_not_a_config_is_refused_with_its_place() {
        let syntax = errors(&format!("{HEAD}accounts:\n  - name: a\n apiKeyEnv: [\n"));
        assert_eq!(syntax.len(), 1, "{syntax:?}");
        assert!(
            syntax[0].starts_with(":5:2: error: YAML syntax error: "),
            "{syntax:?}"
        );
        assert_eq!(
            errors(""),
            [
                ": error: the config file is empty; it starts with `apiVersion: listwarden.dev/v1`, \
              `kind: Config` and `accounts:`"
            ]
        );
        let missing = load(Path::new("/nonexistent/listwarden.yaml")).unwrap_err();
        assert!(
            missing[0]
                .to_string()
                .contains("cannot read the config file: no such file"),
            "{missing:?}"
        );
        let big = format!("{HEAD}#{}\n", "x".repeat(MAX_CONFIG_BYTES as usize));
        assert!(errors(&big)[0].contains("larger than 1 MiB"));
    }

    #[test]
    fn more_accounts_than_the_bound_are_refused_as_a_whole() {
        let accounts: String = (0..=MAX_ACCOUNTS)
            .map(|i| format!("  - {{name: a{i}, apiKeyEnv: K}}\n"))
            .collect();
        let errors = errors(&format!("{HEAD}accounts:\n{accounts}"));
        assert_eq!(
            errors,
            [
                ": accounts: error: 1001 accounts declared, more than the 1000 one listwarden \
              serves; split them between several listwarden instances"
            ]
        );
    }

    #[test]
    fn a_relative_key_file_is_resolved_against_the_config_directory() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("etc/keys")).unwrap();
        std::fs::write(dir.path().join("etc/keys/eu.key"), "AS_eu\n").unwrap();
        let path = dir.path().join("etc/listwarden.yaml");
        std::fs::write(
            &path,
            format!("{HEAD}accounts: [{{name: eu, apiKeyFile: ./keys/eu.key, projectId: p1}}]\n"),
        )
        .unwrap();
        let config = load(&path).unwrap();
        let eu = &config.accounts[0];
        assert_eq!(
            eu.api_key,
            KeySource::File(dir.path().join("etc/keys/eu.key"))
        );
        // Read from there, whatever the working directory.
        let client = eu.client_config().unwrap();
        assert_eq!(client.base_url, autosend::DEFAULT_BASE_URL);
        assert_eq!(client.project_id.as_deref(), Some("p1"));
        assert_eq!(client.rate_limits, autosend::RateLimits::default());
    }

    #[test]
    fn a_missing_key_file_fails_its_account_naming_the_account_and_the_path() {
        let eu = account("{name: eu, apiKeyFile: /nonexistent/eu.key}");
        let e = eu.client_config().unwrap_err();
        assert_eq!(
            e,
            "account eu: cannot read the API key file /nonexistent/eu.key (apiKeyFile): no such \
             file; make it readable by listwarden, or fix the path in the config file (a relative one starts from the config file's \
                 directory)"
        );
    }

    #[test]
    fn a_key_read_from_the_environment_is_used_with_the_account_settings() {
        set_env("LISTWARDEN_TEST_CONFIG_KEY_FROM_ENV", "  AS_from_env\n");
        let eu = account(
            "{name: eu, apiKeyEnv: LISTWARDEN_TEST_CONFIG_KEY_FROM_ENV, \
             apiUrl: 'http://127.0.0.1:8080/v1/', rateLimit: 10/s}",
        );
        let client = eu.client_config().unwrap();
        assert_eq!(client.base_url, "http://127.0.0.1:8080/v1");
        assert_eq!(client.rate_limits, "10/s".parse().unwrap());

        let missing = account("{name: us, apiKeyEnv: LISTWARDEN_TEST_CONFIG_KEY_NEVER_SET}");
        assert_eq!(
            missing.client_config().unwrap_err(),
            "account us: the API key environment variable LISTWARDEN_TEST_CONFIG_KEY_NEVER_SET \
             (apiKeyEnv) is not set (or blank); set it in listwarden's environment, or fix the \
             name in the config file"
        );
    }

    #[test]
    fn an_unusable_key_never_shows_in_the_error() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("eu.key");
        std::fs::write(&file, "AS_secret\u{7}tail\n").unwrap();
        set_env("LISTWARDEN_TEST_CONFIG_KEY_UNUSABLE", "AS_secret\rtail");
        for source in [
            KeySource::File(file),
            KeySource::Env("LISTWARDEN_TEST_CONFIG_KEY_UNUSABLE".into()),
        ] {
            let mut eu = account("{name: eu, apiKeyEnv: K}");
            eu.api_key = source;
            let e = eu.client_config().unwrap_err();
            assert!(e.starts_with("account eu: the API key in the "), "{e}");
            assert!(e.contains("cannot be sent in an HTTP header"), "{e}");
            assert!(!e.contains("secret") && !e.contains("tail"), "{e}");
        }
    }

    #[test]
    fn an_environment_variable_name_that_is_not_one_is_not_repeated() {
        // What lands in apiKeyEnv by mistake is often the key itself.
        let errors = errors(&format!(
            "{HEAD}accounts: [{{name: eu, apiKeyEnv: 'AS_key-material'}}]\n"
        ));
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert!(!errors[0].contains("key-material"), "{errors:?}");
        assert!(errors[0].contains("(15 characters)"), "{errors:?}");
    }

    #[test]
    fn a_key_pasted_where_a_name_a_path_or_a_url_belongs_is_never_repeated() {
        // Each is well formed for its field (a variable name, a file name): only its shape
        // says it is a key.
        let key = "AS_9f8e7d6c5b4a3f2e1d0c";
        let errors = errors(&format!(
            "{HEAD}accounts:\n  - {{name: {key}, apiKeyEnv: A}}\n  - {{name: b, apiKeyEnv: B, \
             apiUrl: {key}}}\n  - {{name: c, apiKeyEnv: C, projectId: {key}}}\n"
        ));
        assert_eq!(errors.len(), 3, "{errors:?}");
        for e in &errors {
            assert!(!e.contains("9f8e7d6c"), "{e}");
            assert!(e.contains("looks like an API key"), "{e}");
        }
        for (field, secret) in [
            ("apiKeyEnv", key),
            ("apiKeyFile", key),
            // A webhook secret's hex passes for a variable name.
            ("webhookSecretEnv", "a3f9c0d1e2b4a5968778695a4b3c2d1e"),
        ] {
            let key_source = if field.starts_with("apiKey") {
                String::new()
            } else {
                "apiKeyEnv: K, ".to_string()
            };
            let spec = account(&format!("{{name: eu, {key_source}{field}: {secret}}}"));
            let e = if field.starts_with("webhook") {
                spec.webhook_secret_text().unwrap_err()
            } else {
                spec.client_config().unwrap_err()
            };
            assert!(!e.contains(&secret[4..14]), "{field}: {e}");
            assert!(e.contains(field), "{field}: {e}");
        }
        // A variable name as they are written is still named.
        let spec = account("{name: eu, apiKeyEnv: LISTWARDEN_TEST_CONFIG_KEY_NEVER_SET}");
        let e = spec.client_config().unwrap_err();
        assert!(e.contains("LISTWARDEN_TEST_CONFIG_KEY_NEVER_SET"), "{e}");
    }

    #[test]
    fn the_webhook_secret_is_read_trimmed_and_an_empty_one_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("w");
        std::fs::write(&file, "  whsec_abc\n").unwrap();
        let mut eu = account("{name: eu, apiKeyEnv: K}");
        assert_eq!(eu.webhook_secret_text(), Ok(None));
        eu.webhook_secret = Some(KeySource::File(file.clone()));
        assert_eq!(eu.webhook_secret_text(), Ok(Some("whsec_abc".into())));

        std::fs::write(&file, " \n").unwrap();
        let e = eu.webhook_secret_text().unwrap_err();
        assert!(
            e.starts_with("account eu: the webhook secret file ") && e.contains("is empty"),
            "{e}"
        );
        set_env("LISTWARDEN_TEST_CONFIG_WEBHOOK_SECRET", "whsec_env");
        eu.webhook_secret = Some(KeySource::Env(
            "LISTWARDEN_TEST_CONFIG_WEBHOOK_SECRET".into(),
        ));
        assert_eq!(eu.webhook_secret_text(), Ok(Some("whsec_env".into())));
    }
}
