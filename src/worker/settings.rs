//! Worker settings: the contract's configuration plus the worker's own knobs, all from the
//! environment, with an unparsable value reported by variable name.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use crate::contract::config::{int, Config, ConfigError};
use crate::contract::keys::{DEFAULT_INDEX_TTL_SECONDS, MIN_INDEX_TTL_SECONDS};
use crate::contract::payload::{payload_bytes_for_upload, DEFAULT_MAX_UPLOAD_BYTES};

use super::callback::{CallbackConfigError, CallbackSettings};

#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Callback(#[from] CallbackConfigError),
    #[error("{var}={value:?} is not a socket address like 0.0.0.0:9090")]
    BadAddr { var: &'static str, value: String },
    #[error(transparent)]
    Vision(#[from] super::vision::VisionConfigError),
    #[error("cannot determine the hostname: set HOSTNAME ({0})")]
    Hostname(String),
}

#[derive(Debug, Clone)]
pub struct WorkerSettings {
    pub config: Config,
    pub callbacks: CallbackSettings,
    /// `DEDUP2D_WORKER_METRICS_ADDR` (`0.0.0.0:9090`): `/metrics` and `/healthz`.
    pub metrics_addr: SocketAddr,
    /// `DEDUP2D_WORKER_SHUTDOWN_GRACE_SECONDS` (25): how long running jobs may finish after
    /// SIGTERM; what is still running then is handed back to the queue untouched.
    pub shutdown_grace: Duration,
    /// `DEDUP2D_WORKER_POLL_INTERVAL_MS` (500, ARQ's poll delay): idle wait between claims.
    pub poll_interval: Duration,
    /// `DEDUP2D_WORKER_HEARTBEAT_TTL_SECONDS` (30) / `..._INTERVAL_SECONDS` (10).
    pub heartbeat_ttl: Duration,
    pub heartbeat_interval: Duration,
    /// `DEDUP2D_WORKER_MAX_TRIES` (5, ARQ's default): runs of one job before it is failed.
    pub max_tries: i64,
    /// `DEDUP2D_WORKER_DEBUG_JOB_DELAY_MS` (0): an artificial pause at the start of every job,
    /// for fault-injection tests and demos (SIGKILL/SIGTERM mid-job). Leave 0 in production.
    pub debug_job_delay: Duration,
    /// `DEDUPCAD_VISION_URL` and the rest of the dedupcad-vision backend's settings; `None`
    /// runs the built-in engine.
    pub vision: Option<super::vision::VisionSettings>,
    /// `DEDUP2D_WORKER_MAX_PAYLOAD_BYTES`: a job whose payload is larger fails unread. Default:
    /// the largest payload the API writes under its upload limit (`DEDUP2D_API_MAX_UPLOAD_BYTES`,
    /// read here too when set), see [`payload_bytes_for_upload`].
    pub max_payload_bytes: u64,
    /// `DEDUP2D_INDEX_TTL_SECONDS` (90 days, at least 60 s): how long a tenant's dedup index
    /// is kept after its last write.
    pub index_ttl_seconds: u64,
    /// `HOSTNAME`, else the system hostname: the heartbeat key (`{prefix}:worker:{hostname}`).
    pub hostname: String,
}

impl WorkerSettings {
    pub fn from_env() -> Result<Self, SettingsError> {
        Self::from_map(&std::env::vars().collect())
    }

    pub fn from_map(env: &HashMap<String, String>) -> Result<Self, SettingsError> {
        let secs = |var: &'static str, default: i64, min: i64| -> Result<Duration, SettingsError> {
            Ok(Duration::from_secs(int(env, var, default)?.max(min) as u64))
        };
        let millis =
            |var: &'static str, default: i64, min: i64| -> Result<Duration, SettingsError> {
                Ok(Duration::from_millis(
                    int(env, var, default)?.max(min) as u64
                ))
            };
        let addr_raw = env
            .get("DEDUP2D_WORKER_METRICS_ADDR")
            .map(|s| s.trim())
            .filter(|s| !s.is_empty())
            .unwrap_or("0.0.0.0:9090");
        let metrics_addr = addr_raw.parse().map_err(|_| SettingsError::BadAddr {
            var: "DEDUP2D_WORKER_METRICS_ADDR",
            value: addr_raw.to_string(),
        })?;
        let heartbeat_ttl = secs("DEDUP2D_WORKER_HEARTBEAT_TTL_SECONDS", 30, 2)?;
        let heartbeat_interval = secs("DEDUP2D_WORKER_HEARTBEAT_INTERVAL_SECONDS", 10, 1)?
            .min(heartbeat_ttl / 2)
            .max(Duration::from_secs(1));
        Ok(WorkerSettings {
            config: Config::from_map(env)?,
            callbacks: CallbackSettings::from_map(env)?,
            metrics_addr,
            shutdown_grace: secs("DEDUP2D_WORKER_SHUTDOWN_GRACE_SECONDS", 25, 0)?,
            poll_interval: millis("DEDUP2D_WORKER_POLL_INTERVAL_MS", 500, 10)?,
            heartbeat_ttl,
            heartbeat_interval,
            max_tries: int(env, "DEDUP2D_WORKER_MAX_TRIES", 5)?.max(1),
            debug_job_delay: millis("DEDUP2D_WORKER_DEBUG_JOB_DELAY_MS", 0, 0)?,
            vision: super::vision::VisionSettings::from_map(env)?,
            max_payload_bytes: max_payload_bytes(env)?,
            index_ttl_seconds: int(
                env,
                "DEDUP2D_INDEX_TTL_SECONDS",
                DEFAULT_INDEX_TTL_SECONDS as i64,
            )?
            .max(MIN_INDEX_TTL_SECONDS as i64) as u64,
            hostname: hostname(env)?,
        })
    }

    /// The ARQ queues this worker consumes: the main queue, then the render queue if set.
    pub fn queue_names(&self) -> Vec<String> {
        let mut q = vec![self.config.queue_name.clone()];
        if let Some(r) = &self.config.render_queue_name {
            if r != &self.config.queue_name {
                q.push(r.clone());
            }
        }
        q
    }
}

fn max_payload_bytes(env: &HashMap<String, String>) -> Result<u64, SettingsError> {
    let upload = int(
        env,
        "DEDUP2D_API_MAX_UPLOAD_BYTES",
        DEFAULT_MAX_UPLOAD_BYTES as i64,
    )?
    .max(1) as u64;
    let default = payload_bytes_for_upload(upload);
    Ok(int(env, "DEDUP2D_WORKER_MAX_PAYLOAD_BYTES", default as i64)?.max(1) as u64)
}

fn hostname(env: &HashMap<String, String>) -> Result<String, SettingsError> {
    if let Some(h) = env
        .get("HOSTNAME")
        .map(|h| h.trim())
        .filter(|h| !h.is_empty())
    {
        return Ok(h.to_string());
    }
    hostname::get()
        .map_err(|e| SettingsError::Hostname(e.to_string()))?
        .into_string()
        .map_err(|h| SettingsError::Hostname(format!("not UTF-8: {h:?}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::test_support::string_map as env;

    #[test]
    fn defaults_and_overrides() {
        let s = WorkerSettings::from_map(&env(&[("HOSTNAME", "pod-a")])).unwrap();
        assert_eq!(s.hostname, "pod-a");
        assert_eq!(s.metrics_addr, "0.0.0.0:9090".parse().unwrap());
        assert_eq!(s.shutdown_grace, Duration::from_secs(25));
        assert_eq!(s.heartbeat_ttl, Duration::from_secs(30));
        assert_eq!(s.heartbeat_interval, Duration::from_secs(10));
        assert_eq!(s.queue_names(), vec!["dedup2d:queue".to_string()]);
        let s = WorkerSettings::from_map(&env(&[
            ("DEDUP2D_RENDER_QUEUE_NAME", "render"),
            ("DEDUP2D_WORKER_METRICS_ADDR", "127.0.0.1:0"),
            ("DEDUP2D_WORKER_HEARTBEAT_TTL_SECONDS", "4"),
        ]))
        .unwrap();
        assert_eq!(s.queue_names(), vec!["dedup2d:queue", "render"]);
        assert_eq!(s.heartbeat_interval, Duration::from_secs(2));
        assert!(!s.hostname.is_empty());
    }

    #[test]
    fn the_payload_cap_follows_the_api_upload_limit() {
        let default = WorkerSettings::from_map(&env(&[("HOSTNAME", "h")])).unwrap();
        assert_eq!(
            default.max_payload_bytes,
            payload_bytes_for_upload(DEFAULT_MAX_UPLOAD_BYTES)
        );
        assert_eq!(
            default.max_payload_bytes, 70_953_644,
            "50 MiB as base64 + 1 MiB"
        );
        let tied = WorkerSettings::from_map(&env(&[
            ("HOSTNAME", "h"),
            ("DEDUP2D_API_MAX_UPLOAD_BYTES", "3000000"),
        ]))
        .unwrap();
        assert_eq!(tied.max_payload_bytes, 4_000_000 + (1 << 20));
        let set = WorkerSettings::from_map(&env(&[
            ("HOSTNAME", "h"),
            ("DEDUP2D_WORKER_MAX_PAYLOAD_BYTES", "1234"),
            ("DEDUP2D_INDEX_TTL_SECONDS", "5"),
        ]))
        .unwrap();
        assert_eq!(set.max_payload_bytes, 1234);
        assert_eq!(set.index_ttl_seconds, MIN_INDEX_TTL_SECONDS);
        assert_eq!(default.index_ttl_seconds, DEFAULT_INDEX_TTL_SECONDS);
    }

    #[test]
    fn bad_values_name_the_variable() {
        for (var, value) in [
            ("DEDUP2D_WORKER_SHUTDOWN_GRACE_SECONDS", "soon"),
            ("DEDUP2D_WORKER_METRICS_ADDR", "9090"),
            ("DEDUP2D_WORKER_MAX_JOBS", "ten"),
            ("DEDUP2D_CALLBACK_MAX_ATTEMPTS", "x"),
            ("DEDUP2D_WORKER_MAX_PAYLOAD_BYTES", "10MB"),
            ("DEDUP2D_INDEX_TTL_SECONDS", "a month"),
        ] {
            let err = WorkerSettings::from_map(&env(&[(var, value)])).unwrap_err();
            assert!(err.to_string().contains(var), "{err}");
        }
    }
}
