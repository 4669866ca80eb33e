//! Configuration from the environment, with the names, defaults and clamps of the dedup2d
//! contract. An unparsable number is an error naming the variable, never a silent default.

use std::collections::HashMap;
use std::path::PathBuf;

use super::keys::Keys;

pub(crate) const DEFAULT_REDIS_URL: &str = "redis://localhost:6379/0";
pub(crate) const DEFAULT_KEY_PREFIX: &str = "dedup2d";
pub(crate) const DEFAULT_TTL_SECONDS: u64 = 3600;
pub(crate) const MIN_TTL_SECONDS: u64 = 60;
pub(crate) const DEFAULT_MAX_JOBS: u64 = 200;
pub(crate) const DEFAULT_JOB_TIMEOUT_SECONDS: u64 = 300;
pub(crate) const DEFAULT_WORKER_MAX_JOBS: u64 = 10;
pub(crate) const DEFAULT_B64_MAX_BYTES: u64 = 10 * 1024 * 1024;
pub(crate) const DEFAULT_FILE_STORAGE_DIR: &str = "data/dedup2d_uploads";
pub(crate) const DEFAULT_S3_PREFIX: &str = "dedup2d/uploads";

pub(crate) const ENV_INCLUDE_B64: &str = "DEDUP2D_JOB_PAYLOAD_INCLUDE_BYTES_B64";
pub(crate) const ENV_B64_MAX_BYTES: &str = "DEDUP2D_JOB_PAYLOAD_BYTES_B64_MAX_BYTES";
pub(crate) const ENV_TTL_SECONDS: &str = "DEDUP2D_ASYNC_TTL_SECONDS";
pub(crate) const ENV_KEY_PREFIX: &str = "DEDUP2D_REDIS_KEY_PREFIX";

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    #[error("{var}={value:?} is not a valid integer")]
    NotANumber { var: &'static str, value: String },
    #[error("{var}={value:?} is not a known file storage backend (expected \"local\" or \"s3\")")]
    UnknownStorage { var: &'static str, value: String },
    #[error("{var} is required when DEDUP2D_FILE_STORAGE=s3")]
    Missing { var: &'static str },
    #[error("{var}={value:?} is not a boolean (expected 1/0, true/false, yes/no, on/off)")]
    NotABool { var: &'static str, value: String },
}

/// Where uploaded files are kept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StorageConfig {
    Local {
        root: PathBuf,
        cleanup_on_finish: bool,
    },
    S3 {
        bucket: String,
        prefix: String,
        endpoint: Option<String>,
        region: Option<String>,
        cleanup_on_finish: bool,
    },
}

impl StorageConfig {
    pub(crate) fn cleanup_on_finish(&self) -> bool {
        match self {
            StorageConfig::Local {
                cleanup_on_finish, ..
            }
            | StorageConfig::S3 {
                cleanup_on_finish, ..
            } => *cleanup_on_finish,
        }
    }
}

/// The payload settings the operator toggles through the API's ConfigMap.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PayloadSettings {
    /// Dual-write ("grayscale"): also embed `file_bytes_b64`.
    pub include_b64: bool,
    /// Embed the bytes only for files of at most this size.
    pub b64_max_bytes: u64,
}

/// Everything the API and worker read from the environment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    pub redis_url: String,
    pub key_prefix: String,
    pub queue_name: String,
    pub render_queue_name: Option<String>,
    pub ttl_seconds: u64,
    pub max_jobs: u64,
    pub job_timeout_seconds: u64,
    pub worker_max_jobs: u64,
    pub payload: PayloadSettings,
    pub storage: StorageConfig,
}

impl Config {
    /// Reads the process environment.
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_map(&std::env::vars().collect())
    }

    /// Reads configuration from a variable map (the process environment or a ConfigMap's data).
    pub(crate) fn from_map(env: &HashMap<String, String>) -> Result<Self, ConfigError> {
        let get = |k: &str| env.get(k).map(String::as_str);
        let non_blank = |k: &str| get(k).map(str::trim).filter(|v| !v.is_empty());

        let redis_url = redis_url(env);
        let key_prefix = key_prefix(env);
        let queue_name = non_blank("DEDUP2D_ARQ_QUEUE_NAME")
            .map(str::to_string)
            .unwrap_or_else(|| Keys::new(key_prefix.clone()).default_queue());
        let render_queue_name = non_blank("DEDUP2D_RENDER_QUEUE_NAME").map(str::to_string);
        let ttl_seconds = ttl_seconds(env)?;
        let max_jobs = int(env, "DEDUP2D_ASYNC_MAX_JOBS", DEFAULT_MAX_JOBS as i64)?.max(1) as u64;
        let job_timeout_seconds = int(
            env,
            "DEDUP2D_ASYNC_JOB_TIMEOUT_SECONDS",
            DEFAULT_JOB_TIMEOUT_SECONDS as i64,
        )?
        .max(1) as u64;
        let worker_max_jobs = int(
            env,
            "DEDUP2D_WORKER_MAX_JOBS",
            DEFAULT_WORKER_MAX_JOBS as i64,
        )?
        .max(1) as u64;
        let payload = payload_settings(env)?;
        let storage = storage(env)?;
        Ok(Config {
            redis_url,
            key_prefix,
            queue_name,
            render_queue_name,
            ttl_seconds,
            max_jobs,
            job_timeout_seconds,
            worker_max_jobs,
            payload,
            storage,
        })
    }

    pub fn keys(&self) -> Keys {
        Keys::new(self.key_prefix.clone())
    }
}

/// `DEDUP2D_REDIS_URL`, then `REDIS_URL`, then the default.
pub(crate) fn redis_url(env: &HashMap<String, String>) -> String {
    ["DEDUP2D_REDIS_URL", "REDIS_URL"]
        .iter()
        .filter_map(|k| env.get(*k).map(|v| v.trim()))
        .find(|v| !v.is_empty())
        .unwrap_or(DEFAULT_REDIS_URL)
        .to_string()
}

/// `DEDUP2D_REDIS_KEY_PREFIX`; blank means the default.
pub(crate) fn key_prefix(env: &HashMap<String, String>) -> String {
    env.get(ENV_KEY_PREFIX)
        .map(|v| v.trim())
        .filter(|v| !v.is_empty())
        .unwrap_or(DEFAULT_KEY_PREFIX)
        .to_string()
}

/// `DEDUP2D_ASYNC_TTL_SECONDS`, at least 60.
pub(crate) fn ttl_seconds(env: &HashMap<String, String>) -> Result<u64, ConfigError> {
    Ok(int(env, ENV_TTL_SECONDS, DEFAULT_TTL_SECONDS as i64)?.max(MIN_TTL_SECONDS as i64) as u64)
}

/// The two dual-write settings.
pub(crate) fn payload_settings(
    env: &HashMap<String, String>,
) -> Result<PayloadSettings, ConfigError> {
    Ok(PayloadSettings {
        include_b64: env.get(ENV_INCLUDE_B64).is_some_and(|v| truthy(v)),
        b64_max_bytes: int(env, ENV_B64_MAX_BYTES, DEFAULT_B64_MAX_BYTES as i64)?.max(0) as u64,
    })
}

/// The contract's boolean rule: trimmed, case-insensitive, one of `1/true/yes/on`.
pub(crate) fn truthy(value: &str) -> bool {
    matches!(
        value.trim().to_ascii_lowercase().as_str(),
        "1" | "true" | "yes" | "on"
    )
}

fn storage(env: &HashMap<String, String>) -> Result<StorageConfig, ConfigError> {
    let get = |k: &str| env.get(k).map(|v| v.trim()).filter(|v| !v.is_empty());
    let backend = get("DEDUP2D_FILE_STORAGE")
        .unwrap_or("local")
        .to_ascii_lowercase();
    match backend.as_str() {
        "local" => Ok(StorageConfig::Local {
            root: PathBuf::from(
                get("DEDUP2D_FILE_STORAGE_DIR").unwrap_or(DEFAULT_FILE_STORAGE_DIR),
            ),
            cleanup_on_finish: bool_var(env, "DEDUP2D_FILE_STORAGE_CLEANUP_ON_FINISH", true)?,
        }),
        "s3" => Ok(StorageConfig::S3 {
            bucket: get("DEDUP2D_S3_BUCKET")
                .ok_or(ConfigError::Missing {
                    var: "DEDUP2D_S3_BUCKET",
                })?
                .to_string(),
            prefix: get("DEDUP2D_S3_PREFIX")
                .unwrap_or(DEFAULT_S3_PREFIX)
                .trim_matches('/')
                .to_string(),
            endpoint: get("DEDUP2D_S3_ENDPOINT").map(str::to_string),
            region: get("DEDUP2D_S3_REGION").map(str::to_string),
            cleanup_on_finish: bool_var(env, "DEDUP2D_FILE_STORAGE_CLEANUP_ON_FINISH", false)?,
        }),
        _ => Err(ConfigError::UnknownStorage {
            var: "DEDUP2D_FILE_STORAGE",
            value: backend,
        }),
    }
}

/// An integer variable; unset or blank means the default, anything unparsable is an error.
pub(crate) fn int(
    env: &HashMap<String, String>,
    var: &'static str,
    default: i64,
) -> Result<i64, ConfigError> {
    match env.get(var).map(|v| v.trim()).filter(|v| !v.is_empty()) {
        None => Ok(default),
        Some(v) => v.parse().map_err(|_| ConfigError::NotANumber {
            var,
            value: v.to_string(),
        }),
    }
}

/// A strict boolean variable (unlike the dual-write flag, a typo here is an error).
fn bool_var(
    env: &HashMap<String, String>,
    var: &'static str,
    default: bool,
) -> Result<bool, ConfigError> {
    match env.get(var).map(|v| v.trim().to_ascii_lowercase()) {
        None => Ok(default),
        Some(v) if v.is_empty() => Ok(default),
        Some(v) if truthy(&v) => Ok(true),
        Some(v) if matches!(v.as_str(), "0" | "false" | "no" | "off") => Ok(false),
        Some(v) => Err(ConfigError::NotABool { var, value: v }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::test_support::string_map as env;

    #[test]
    fn defaults() {
        let c = Config::from_map(&env(&[])).unwrap();
        assert_eq!(c.redis_url, "redis://localhost:6379/0");
        assert_eq!(c.key_prefix, "dedup2d");
        assert_eq!(c.queue_name, "dedup2d:queue");
        assert_eq!(c.render_queue_name, None);
        assert_eq!(c.ttl_seconds, 3600);
        assert_eq!(c.max_jobs, 200);
        assert_eq!(c.job_timeout_seconds, 300);
        assert_eq!(c.worker_max_jobs, 10);
        assert_eq!(
            c.payload,
            PayloadSettings {
                include_b64: false,
                b64_max_bytes: 10485760
            }
        );
        assert_eq!(
            c.storage,
            StorageConfig::Local {
                root: "data/dedup2d_uploads".into(),
                cleanup_on_finish: true
            }
        );
    }

    #[test]
    fn redis_url_precedence() {
        assert_eq!(
            redis_url(&env(&[("REDIS_URL", "redis://b/1")])),
            "redis://b/1"
        );
        assert_eq!(
            redis_url(&env(&[
                ("REDIS_URL", "redis://b/1"),
                ("DEDUP2D_REDIS_URL", "redis://a/0")
            ])),
            "redis://a/0"
        );
        assert_eq!(
            redis_url(&env(&[
                ("REDIS_URL", "redis://b/1"),
                ("DEDUP2D_REDIS_URL", " ")
            ])),
            "redis://b/1"
        );
    }

    #[test]
    fn every_variable_is_read() {
        let c = Config::from_map(&env(&[
            ("DEDUP2D_REDIS_URL", "redis://r:1/2"),
            ("DEDUP2D_REDIS_KEY_PREFIX", "p"),
            ("DEDUP2D_ARQ_QUEUE_NAME", "q"),
            ("DEDUP2D_RENDER_QUEUE_NAME", "rq"),
            ("DEDUP2D_ASYNC_TTL_SECONDS", "120"),
            ("DEDUP2D_ASYNC_MAX_JOBS", "7"),
            ("DEDUP2D_ASYNC_JOB_TIMEOUT_SECONDS", "9"),
            ("DEDUP2D_WORKER_MAX_JOBS", "3"),
            ("DEDUP2D_JOB_PAYLOAD_INCLUDE_BYTES_B64", " On "),
            ("DEDUP2D_JOB_PAYLOAD_BYTES_B64_MAX_BYTES", "42"),
            ("DEDUP2D_FILE_STORAGE", "S3"),
            ("DEDUP2D_S3_BUCKET", "bk"),
            ("DEDUP2D_S3_PREFIX", "/pre/fix/"),
            ("DEDUP2D_S3_ENDPOINT", "http://127.0.0.1:9000"),
            ("DEDUP2D_S3_REGION", "eu-west-1"),
        ]))
        .unwrap();
        assert_eq!(c.redis_url, "redis://r:1/2");
        assert_eq!(c.key_prefix, "p");
        assert_eq!(c.queue_name, "q");
        assert_eq!(c.render_queue_name.as_deref(), Some("rq"));
        assert_eq!(c.ttl_seconds, 120);
        assert_eq!(c.max_jobs, 7);
        assert_eq!(c.job_timeout_seconds, 9);
        assert_eq!(c.worker_max_jobs, 3);
        assert!(c.payload.include_b64);
        assert_eq!(c.payload.b64_max_bytes, 42);
        assert_eq!(
            c.storage,
            StorageConfig::S3 {
                bucket: "bk".into(),
                prefix: "pre/fix".into(),
                endpoint: Some("http://127.0.0.1:9000".into()),
                region: Some("eu-west-1".into()),
                cleanup_on_finish: false
            }
        );
    }

    #[test]
    fn queue_name_follows_prefix() {
        let c = Config::from_map(&env(&[("DEDUP2D_REDIS_KEY_PREFIX", "tenantA")])).unwrap();
        assert_eq!(c.queue_name, "tenantA:queue");
        let c = Config::from_map(&env(&[("DEDUP2D_REDIS_KEY_PREFIX", "  ")])).unwrap();
        assert_eq!(c.key_prefix, "dedup2d");
    }

    #[test]
    fn clamps() {
        let c = Config::from_map(&env(&[
            ("DEDUP2D_ASYNC_TTL_SECONDS", "5"),
            ("DEDUP2D_ASYNC_MAX_JOBS", "0"),
            ("DEDUP2D_ASYNC_JOB_TIMEOUT_SECONDS", "-3"),
            ("DEDUP2D_WORKER_MAX_JOBS", "0"),
            ("DEDUP2D_JOB_PAYLOAD_BYTES_B64_MAX_BYTES", "-1"),
        ]))
        .unwrap();
        assert_eq!(c.ttl_seconds, 60);
        assert_eq!(c.max_jobs, 1);
        assert_eq!(c.job_timeout_seconds, 1);
        assert_eq!(c.worker_max_jobs, 1);
        assert_eq!(c.payload.b64_max_bytes, 0);
    }

    #[test]
    fn dual_write_truthiness() {
        for v in ["1", "true", "TRUE", " yes ", "On"] {
            assert!(truthy(v), "{v:?}");
        }
        for v in ["0", "false", "", "enabled", "y", "2"] {
            assert!(!truthy(v), "{v:?}");
        }
        let off = Config::from_map(&env(&[(ENV_INCLUDE_B64, "nope")])).unwrap();
        assert!(
            !off.payload.include_b64,
            "the contract treats unknown words as off"
        );
    }

    #[test]
    fn bad_numbers_name_the_variable() {
        for var in [
            "DEDUP2D_ASYNC_TTL_SECONDS",
            "DEDUP2D_ASYNC_MAX_JOBS",
            "DEDUP2D_ASYNC_JOB_TIMEOUT_SECONDS",
            "DEDUP2D_WORKER_MAX_JOBS",
            "DEDUP2D_JOB_PAYLOAD_BYTES_B64_MAX_BYTES",
        ] {
            let err = Config::from_map(&env(&[(var, "12x")])).unwrap_err();
            assert!(err.to_string().contains(var), "{err}");
            assert!(err.to_string().contains("12x"), "{err}");
        }
    }

    #[test]
    fn storage_errors() {
        let err = Config::from_map(&env(&[("DEDUP2D_FILE_STORAGE", "gcs")])).unwrap_err();
        assert!(matches!(err, ConfigError::UnknownStorage { .. }));
        let err = Config::from_map(&env(&[("DEDUP2D_FILE_STORAGE", "s3")])).unwrap_err();
        assert_eq!(
            err,
            ConfigError::Missing {
                var: "DEDUP2D_S3_BUCKET"
            }
        );
        let err = Config::from_map(&env(&[("DEDUP2D_FILE_STORAGE_CLEANUP_ON_FINISH", "maybe")]))
            .unwrap_err();
        assert!(err
            .to_string()
            .contains("DEDUP2D_FILE_STORAGE_CLEANUP_ON_FINISH"));
        let c = Config::from_map(&env(&[
            ("DEDUP2D_FILE_STORAGE_DIR", "/srv/up"),
            ("DEDUP2D_FILE_STORAGE_CLEANUP_ON_FINISH", "0"),
        ]))
        .unwrap();
        assert_eq!(
            c.storage,
            StorageConfig::Local {
                root: "/srv/up".into(),
                cleanup_on_finish: false
            }
        );
    }
}
