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

/// The largest key file read. Keys are well under a hundred bytes.
pub const MAX_KEY_FILE_BYTES: u64 = 64 * 1024;

/// An API key. It has no `Display`, its `Debug` is redacted, and it is exposed only to build
/// the `Authorization` header, so it cannot reach a log line, an error or the store.
///
/// A key read from a file remembers the file: when AutoSend refuses the key, the client
/// reads the file again ([`ApiKey::reload`]), so a rotated key (a Kubernetes Secret updated
/// in place, a credential replaced) is taken without a restart.
#[derive(Clone)]
pub struct ApiKey(Arc<KeyCell>);

struct KeyCell {
    secret: std::sync::RwLock<Arc<SecretString>>,
    file: Option<std::path::PathBuf>,
}

impl ApiKey {
    pub fn new(key: &str) -> ApiKey {
        ApiKey::with_file(key, None)
    }

    fn with_file(key: &str, file: Option<&Path>) -> ApiKey {
        ApiKey(Arc::new(KeyCell {
            secret: std::sync::RwLock::new(Arc::new(SecretString::from(key.trim().to_string()))),
            file: file.map(Path::to_path_buf),
        }))
    }

    /// Reads the key from a file (surrounding whitespace removed: `echo` ends it with a
    /// newline). The file is read only up to [`MAX_KEY_FILE_BYTES`], so a path pointing at a
    /// device or a large file by mistake fails at once instead of filling memory.
    pub fn from_file(path: &Path) -> Result<ApiKey, ConfigError> {
        use std::io::Read;
        let shown = || path.display().to_string();
        let unreadable = |e: std::io::Error| ConfigError::KeyFile {
            path: shown(),
            reason: match e.kind() {
                std::io::ErrorKind::NotFound => "no such file".into(),
                std::io::ErrorKind::PermissionDenied => "permission denied".into(),
                // Not the bytes themselves: they may be the key.
                std::io::ErrorKind::InvalidData => "it is not UTF-8 text".into(),
                _ => e.to_string(),
            },
        };
        let mut text = String::new();
        std::fs::File::open(path)
            .and_then(|f| f.take(MAX_KEY_FILE_BYTES + 1).read_to_string(&mut text))
            .map_err(unreadable)?;
        if text.len() as u64 > MAX_KEY_FILE_BYTES {
            return Err(ConfigError::KeyFile {
                path: shown(),
                reason: format!(
                    "it is larger than {MAX_KEY_FILE_BYTES} bytes, which no API key is; is it \
                     the right file?"
                ),
            });
        }
        if text.trim().is_empty() {
            return Err(ConfigError::EmptyKeyFile(shown()));
        }
        ApiKey::with_file(&text, Some(path)).checked()
    }

    /// Reads the key's file again, if it came from one, and takes what it holds now when
    /// that is a usable key different from the current one. True when the key changed. A
    /// file that cannot be read now keeps the current key.
    pub(crate) fn reload(&self) -> bool {
        let Some(path) = &self.0.file else {
            return false;
        };
        let Ok(fresh) = ApiKey::from_file(path) else {
            return false;
        };
        let fresh = fresh.current();
        let mut secret = self.0.secret.write().unwrap_or_else(|p| p.into_inner());
        if fresh.expose_secret() == secret.expose_secret() {
            return false;
        }
        *secret = fresh;
        true
    }

    /// Reads the key from the environment variable `var`; unset and blank are the same
    /// mistake.
    pub fn from_env(var: &str) -> Result<ApiKey, ConfigError> {
        match std::env::var(var) {
            Ok(k) if !k.trim().is_empty() => ApiKey::new(&k).checked(),
            // Not valid Unicode: it cannot go in a header either.
            Err(std::env::VarError::NotUnicode(_)) => Err(ConfigError::BadKey),
            _ => Err(ConfigError::MissingEnv(var.to_string())),
        }
    }

    /// Refuses a key that cannot go in the `Authorization` header now, rather than on the
    /// first request, whose error would come from deep inside the HTTP client.
    fn checked(self) -> Result<ApiKey, ConfigError> {
        match HeaderValue::from_str(&format!("Bearer {}", self.current().expose_secret())) {
            Ok(_) => Ok(self),
            Err(_) => Err(ConfigError::BadKey),
        }
    }

    /// The key now. Only for the `Authorization` header and for redacting the key out of
    /// server text.
    pub(crate) fn current(&self) -> Arc<SecretString> {
        self.0
            .secret
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
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
    /// The named environment variable is unset or blank.
    #[error("the environment variable {0} that should hold the API key is not set (or blank)")]
    MissingEnv(String),
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
    /// Where the key came from, for the message of a refused key (never the key):
    /// `AUTOSEND_API_KEY / --api-key-file` unless whoever read it says otherwise.
    pub key_source: String,
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
            key_source: "AUTOSEND_API_KEY / --api-key-file".to_string(),
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
            Some(path) => ApiKey::from_file(path)?,
            None => ApiKey::from_env("AUTOSEND_API_KEY").map_err(|e| match e {
                ConfigError::BadKey => ConfigError::BadKey,
                _ => ConfigError::MissingKey,
            })?,
        };
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

    #[test]
    fn a_key_file_is_read_trimmed_and_its_errors_never_hold_the_key() {
        // No tempfile dependency for one test: a name of this process's own.
        let dir = std::env::temp_dir().join(format!("autosend-key-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("key");
        std::fs::write(&path, "AS_file-key\n").unwrap();
        assert_eq!(
            ApiKey::from_file(&path).unwrap().current().expose_secret(),
            "AS_file-key"
        );

        std::fs::write(&path, "AS_very-secret\u{1}x\n").unwrap();
        let e = ApiKey::from_file(&path).unwrap_err();
        assert!(matches!(e, ConfigError::BadKey), "{e}");
        std::fs::write(&path, b"AS_very-secret\xff").unwrap();
        let e = ApiKey::from_file(&path).unwrap_err().to_string();
        assert!(e.ends_with("key: it is not UTF-8 text"), "{e}");
        std::fs::write(&path, "x".repeat(MAX_KEY_FILE_BYTES as usize + 1)).unwrap();
        let e = ApiKey::from_file(&path).unwrap_err().to_string();
        assert!(
            e.contains("larger than 65536 bytes") && !e.contains("xx"),
            "{e}"
        );
        std::fs::write(&path, " \n").unwrap();
        assert!(matches!(
            ApiKey::from_file(&path),
            Err(ConfigError::EmptyKeyFile(_))
        ));
        let e = ApiKey::from_file(&dir.join("nope"))
            .unwrap_err()
            .to_string();
        assert!(e.ends_with("nope: no such file"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_key_from_the_environment_is_read_and_a_missing_one_names_its_variable() {
        // SAFETY: a variable no other test reads or writes.
        unsafe { std::env::set_var("AUTOSEND_TEST_KEY_FROM_ENV", " AS_env-key\n") };
        let key = ApiKey::from_env("AUTOSEND_TEST_KEY_FROM_ENV").unwrap();
        assert_eq!(key.current().expose_secret(), "AS_env-key");
        let e = ApiKey::from_env("AUTOSEND_TEST_KEY_NEVER_SET").unwrap_err();
        assert!(
            matches!(&e, ConfigError::MissingEnv(v) if v == "AUTOSEND_TEST_KEY_NEVER_SET"),
            "{e}"
        );
        assert!(e.to_string().contains("AUTOSEND_TEST_KEY_NEVER_SET"), "{e}");
    }
}
