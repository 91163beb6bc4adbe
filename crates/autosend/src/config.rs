//! Where and how to call AutoSend: the base URL, the key (which cannot be printed), the
//! project, the budget, timeouts and retries.

use std::fmt;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use reqwest::header::HeaderValue;
use secrecy::{ExposeSecret, SecretString};

use crate::pacing::RateLimits;

/// Retries of one request after a 5xx, a timeout or a dropped connection.
pub const DEFAULT_MAX_RETRIES: usize = 6;

/// First wait of the exponential backoff between those retries.
pub const DEFAULT_MIN_BACKOFF: Duration = Duration::from_millis(500);

pub const DEFAULT_BASE_URL: &str = "https://api.autosend.com/v1";

/// An API key. It has no `Display`, its `Debug` is redacted, and it is exposed only to build
/// the `Authorization` header, so it cannot reach a log line, an error or the store.
#[derive(Clone)]
pub struct ApiKey(Arc<SecretString>);

impl ApiKey {
    pub fn new(key: &str) -> ApiKey {
        ApiKey(Arc::new(SecretString::from(key.trim().to_string())))
    }

    /// Only for the `Authorization` header and for redacting the key out of server text.
    pub(crate) fn expose(&self) -> &str {
        self.0.expose_secret()
    }
}

impl fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ApiKey([REDACTED])")
    }
}

/// Why a key could not be read. Messages never contain the key.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("no API key: set AUTOSEND_API_KEY, or give a file holding the key")]
    MissingKey,
    #[error("cannot read the API key file {path}: {reason}")]
    KeyFile { path: String, reason: String },
    #[error("the API key file {0} is empty")]
    EmptyKeyFile(String),
    #[error("AUTOSEND_API_URL {0:?} is not an http(s) URL")]
    BadUrl(String),
    #[error(
        "the API key contains characters that cannot be sent in an HTTP header (a line break \
         or a control character inside the key?); check AUTOSEND_API_KEY or the key file"
    )]
    BadKey,
}

/// Where and how to call AutoSend.
#[derive(Clone, Debug)]
pub struct ClientConfig {
    pub base_url: String,
    pub api_key: ApiKey,
    pub project_id: Option<String>,
    pub rate_limits: RateLimits,
    pub connect_timeout: Duration,
    pub request_timeout: Duration,
    /// Retries of one request after 5xx / transport errors.
    pub max_retries: usize,
    /// 429s tolerated for one request before giving up (each is waited out first).
    pub max_rate_limited: usize,
    /// Bounds of the exponential backoff.
    pub min_backoff: Duration,
    pub max_backoff: Duration,
}

impl ClientConfig {
    pub fn new(base_url: &str, api_key: ApiKey) -> ClientConfig {
        ClientConfig {
            base_url: base_url.trim_end_matches('/').to_string(),
            api_key,
            project_id: None,
            rate_limits: RateLimits::default(),
            connect_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(30),
            max_retries: DEFAULT_MAX_RETRIES,
            max_rate_limited: 30,
            min_backoff: DEFAULT_MIN_BACKOFF,
            max_backoff: Duration::from_secs(30),
        }
    }

    /// Reads the key from `--api-key-file` or `AUTOSEND_API_KEY`, the base URL from
    /// `AUTOSEND_API_URL` and the project from `AUTOSEND_PROJECT_ID`.
    pub fn from_env(api_key_file: Option<&Path>) -> Result<ClientConfig, ConfigError> {
        let base = std::env::var("AUTOSEND_API_URL").ok();
        let project = std::env::var("AUTOSEND_PROJECT_ID").ok();
        ClientConfig::from_settings(api_key_file, base.as_deref(), project.as_deref())
    }

    /// As [`from_env`](Self::from_env), with the base URL and the project given (a command
    /// line's flags, which fall back to the same variables). Blank values count as unset.
    pub fn from_settings(
        api_key_file: Option<&Path>,
        base_url: Option<&str>,
        project_id: Option<&str>,
    ) -> Result<ClientConfig, ConfigError> {
        let key = match api_key_file {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|e| ConfigError::KeyFile {
                    path: path.display().to_string(),
                    reason: match e.kind() {
                        std::io::ErrorKind::NotFound => "no such file".into(),
                        std::io::ErrorKind::PermissionDenied => "permission denied".into(),
                        _ => e.to_string(),
                    },
                })?;
                if text.trim().is_empty() {
                    return Err(ConfigError::EmptyKeyFile(path.display().to_string()));
                }
                ApiKey::new(&text)
            }
            None => match std::env::var("AUTOSEND_API_KEY") {
                Ok(k) if !k.trim().is_empty() => ApiKey::new(&k),
                _ => return Err(ConfigError::MissingKey),
            },
        };
        if HeaderValue::from_str(&format!("Bearer {}", key.expose())).is_err() {
            return Err(ConfigError::BadKey);
        }
        let base = base_url
            .filter(|s| !s.trim().is_empty())
            .unwrap_or(DEFAULT_BASE_URL)
            .to_string();
        if !(base.starts_with("https://") || base.starts_with("http://")) {
            return Err(ConfigError::BadUrl(base));
        }
        let mut config = ClientConfig::new(&base, key);
        config.project_id = project_id
            .filter(|s| !s.trim().is_empty())
            .map(str::to_string);
        Ok(config)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn api_key_debug_is_redacted() {
        let key = ApiKey::new("sk-very-secret");
        assert!(!format!("{key:?}").contains("very-secret"));
        let cfg = ClientConfig::new("http://x/v1", key);
        assert!(!format!("{cfg:?}").contains("very-secret"));
    }
}
