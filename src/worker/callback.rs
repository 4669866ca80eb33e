//! Webhook delivery when a job ends. The URL policy is the contract's
//! ([`crate::contract::callback::CallbackPolicy`]: https only unless allowed, no userinfo,
//! allowlist, private networks blocked), checked again here before sending, and also applied to
//! DNS answers so a public name that resolves to a private address is refused too. The body is
//! compact key-sorted JSON; with a secret it is signed as
//! `X-Dedup-Signature: t=<ts>,v1=<hex HMAC-SHA256(secret, "<ts>.<job_id>." + body)>`.
//! Up to 3 attempts with backoff 1 s doubling to 10 s; 408/425/429/5xx and network errors are
//! retried; redirects are never followed.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hmac::{Hmac, Mac};
use reqwest::dns::{Addrs, Name, Resolve, Resolving};
use serde_json::Value;
use sha2::Sha256;

use crate::contract::callback::{is_private, CallbackPolicy, CallbackRecord};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CallbackConfigError {
    #[error("{var}={value:?} is not a valid number")]
    NotANumber { var: &'static str, value: String },
}

/// Delivery settings (`DEDUP2D_CALLBACK_*`, the Python worker's names and defaults).
#[derive(Debug, Clone, PartialEq)]
pub struct CallbackSettings {
    pub policy: CallbackPolicy,
    /// `DEDUP2D_CALLBACK_HMAC_SECRET`; blank means unsigned.
    pub hmac_secret: Option<String>,
    /// `DEDUP2D_CALLBACK_TIMEOUT_SECONDS` (10) per attempt.
    pub timeout: Duration,
    /// `DEDUP2D_CALLBACK_MAX_ATTEMPTS` (3).
    pub max_attempts: u32,
    /// `DEDUP2D_CALLBACK_BACKOFF_BASE_SECONDS` (1).
    pub backoff_base: Duration,
    /// `DEDUP2D_CALLBACK_BACKOFF_MAX_SECONDS` (10).
    pub backoff_max: Duration,
}

impl CallbackSettings {
    pub fn from_map(env: &HashMap<String, String>) -> Result<Self, CallbackConfigError> {
        let num = |var: &'static str, default: f64| -> Result<f64, CallbackConfigError> {
            match env.get(var).map(|v| v.trim()).filter(|v| !v.is_empty()) {
                None => Ok(default),
                Some(v) => v
                    .parse::<f64>()
                    .ok()
                    .filter(|x| x.is_finite())
                    .ok_or_else(|| CallbackConfigError::NotANumber {
                        var,
                        value: v.to_string(),
                    }),
            }
        };
        Ok(CallbackSettings {
            policy: CallbackPolicy::from_map(env),
            hmac_secret: env
                .get("DEDUP2D_CALLBACK_HMAC_SECRET")
                .map(|s| s.trim().to_string())
                .filter(|s| !s.is_empty()),
            timeout: Duration::from_secs_f64(
                num("DEDUP2D_CALLBACK_TIMEOUT_SECONDS", 10.0)?.max(0.1),
            ),
            max_attempts: num("DEDUP2D_CALLBACK_MAX_ATTEMPTS", 3.0)?.max(1.0) as u32,
            backoff_base: Duration::from_secs_f64(
                num("DEDUP2D_CALLBACK_BACKOFF_BASE_SECONDS", 1.0)?.max(0.0),
            ),
            backoff_max: Duration::from_secs_f64(
                num("DEDUP2D_CALLBACK_BACKOFF_MAX_SECONDS", 10.0)?.max(0.0),
            ),
        })
    }
}

/// How a delivery ended (recorded in the job hash).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallbackOutcome {
    pub ok: bool,
    pub attempts: u32,
    pub http_status: Option<u16>,
    pub error: Option<String>,
}

/// Resolves names and, when private networks are blocked, drops private/loopback answers.
pub struct GuardedResolver {
    block_private: bool,
}

impl GuardedResolver {
    pub fn new(block_private: bool) -> Self {
        GuardedResolver { block_private }
    }
}

impl Resolve for GuardedResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let block = self.block_private;
        Box::pin(async move {
            let host = name.as_str().to_string();
            let addrs: Vec<SocketAddr> =
                tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let allowed: Vec<SocketAddr> = addrs
                .iter()
                .copied()
                .filter(|a| !block || !is_private(a.ip()))
                .collect();
            if allowed.is_empty() {
                let msg = if addrs.is_empty() {
                    format!("{host} did not resolve")
                } else {
                    format!("{host} resolves only to loopback/private/link-local addresses")
                };
                return Err(msg.into());
            }
            Ok(Box::new(allowed.into_iter()) as Addrs)
        })
    }
}

pub struct CallbackSender {
    client: reqwest::Client,
    settings: CallbackSettings,
}

impl CallbackSender {
    pub fn new(settings: CallbackSettings) -> Result<Self, reqwest::Error> {
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(settings.timeout)
            .user_agent(concat!("dedup2d-worker/", env!("CARGO_PKG_VERSION")))
            .dns_resolver(Arc::new(GuardedResolver::new(
                settings.policy.block_private_networks,
            )))
            .build()?;
        Ok(CallbackSender { client, settings })
    }

    pub fn settings(&self) -> &CallbackSettings {
        &self.settings
    }

    /// Delivers `record` to `url`. Never fails: the outcome says what happened.
    pub async fn send(&self, url: &str, record: &CallbackRecord) -> CallbackOutcome {
        let (job_id, tenant_id) = (record.job_id.as_str(), record.tenant_id.as_deref());
        let url = match self.settings.policy.validate(url) {
            Ok(u) => u,
            Err(e) => {
                return CallbackOutcome {
                    ok: false,
                    attempts: 0,
                    http_status: None,
                    error: Some(e.to_string()),
                }
            }
        };
        let body = canonical_json(&serde_json::to_value(record).expect("a record serializes"));
        let mut backoff = self.settings.backoff_base;
        let mut last_status = None;
        let mut last_error = None;
        let mut attempts = 0;
        while attempts < self.settings.max_attempts {
            attempts += 1;
            let mut req = self
                .client
                .post(url.clone())
                .header("Content-Type", "application/json")
                .header("X-Dedup-Job-Id", job_id);
            if let Some(t) = tenant_id.filter(|t| !t.is_empty()) {
                req = req.header("X-Dedup-Tenant-Id", t);
            }
            if let Some(secret) = &self.settings.hmac_secret {
                let ts = crate::contract::queue::now_ms() / 1000;
                req = req
                    .header("X-Dedup-Signature", signature(secret, ts, job_id, &body))
                    .header("X-Dedup-Signature-Version", "v1");
            }
            match req.body(body.clone()).send().await {
                Ok(resp) => {
                    let code = resp.status().as_u16();
                    last_status = Some(code);
                    if (200..300).contains(&code) {
                        return CallbackOutcome {
                            ok: true,
                            attempts,
                            http_status: Some(code),
                            error: None,
                        };
                    }
                    last_error = Some(format!("http_status:{code}"));
                    if !retryable(code) {
                        break;
                    }
                }
                Err(e) => {
                    last_status = None;
                    last_error = Some(error_chain(&e));
                }
            }
            if attempts < self.settings.max_attempts && !backoff.is_zero() {
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(self.settings.backoff_max);
            }
        }
        tracing::warn!(job_id, attempts, error = ?last_error, "webhook delivery failed");
        CallbackOutcome {
            ok: false,
            attempts,
            http_status: last_status,
            error: last_error,
        }
    }
}

fn retryable(code: u16) -> bool {
    matches!(code, 408 | 425 | 429) || (500..600).contains(&code)
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(inner) = src {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        src = inner.source();
    }
    s
}

/// `t=<ts>,v1=<hex HMAC-SHA256(secret, "<ts>.<job_id>." + body)>`.
pub fn signature(secret: &str, ts: i64, job_id: &str, body: &str) -> String {
    let mut mac =
        Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("HMAC accepts any key length");
    mac.update(format!("{ts}.{job_id}.").as_bytes());
    mac.update(body.as_bytes());
    format!("t={ts},v1={}", hex::encode(mac.finalize().into_bytes()))
}

/// Compact JSON with object keys sorted at every level (Python's
/// `json.dumps(sort_keys=True, separators=(",", ":"), ensure_ascii=False)`), independent of
/// serde_json's map ordering features.
pub fn canonical_json(value: &Value) -> String {
    let mut out = String::new();
    write_canonical(value, &mut out);
    out
}

fn write_canonical(value: &Value, out: &mut String) {
    match value {
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            out.push('{');
            for (i, k) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&serde_json::to_string(k).expect("a string serializes"));
                out.push(':');
                write_canonical(&map[k], out);
            }
            out.push('}');
        }
        Value::Array(items) => {
            out.push('[');
            for (i, v) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_canonical(v, out);
            }
            out.push(']');
        }
        other => out.push_str(&serde_json::to_string(other).expect("a JSON value serializes")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn canonical_json_sorts_keys_compactly() {
        let v = json!({"b": 1, "a": {"z": [1, {"y": null, "x": "é\n"}], "c": true}, "f": 1.5});
        assert_eq!(
            canonical_json(&v),
            r#"{"a":{"c":true,"z":[1,{"x":"é\n","y":null}]},"b":1,"f":1.5}"#
        );
    }

    #[test]
    fn signature_matches_the_python_definition() {
        // hmac.new(b"s3cret", b"1700000000.job-1." + b'{"a":1}', hashlib.sha256).hexdigest()
        assert_eq!(
            signature("s3cret", 1_700_000_000, "job-1", r#"{"a":1}"#),
            "t=1700000000,v1=07b269813e98809d3478f0925ca96de40c354d281d6a9d1ecd7ea6475a3bebe0"
        );
    }

    #[test]
    fn retry_classes() {
        for c in [408, 425, 429, 500, 502, 503, 599] {
            assert!(retryable(c), "{c}");
        }
        for c in [200, 301, 302, 400, 401, 404, 410, 422] {
            assert!(!retryable(c), "{c}");
        }
    }

    #[test]
    fn settings_from_env() {
        let env: HashMap<String, String> = [
            ("DEDUP2D_CALLBACK_HMAC_SECRET", " k "),
            ("DEDUP2D_CALLBACK_MAX_ATTEMPTS", "5"),
            ("DEDUP2D_CALLBACK_BACKOFF_BASE_SECONDS", "0.01"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        let s = CallbackSettings::from_map(&env).unwrap();
        assert_eq!(s.hmac_secret.as_deref(), Some("k"));
        assert_eq!(s.max_attempts, 5);
        assert_eq!(s.backoff_base, Duration::from_millis(10));
        assert_eq!(s.backoff_max, Duration::from_secs(10));
        assert!(s.policy.block_private_networks && !s.policy.allow_http);
        let bad: HashMap<String, String> = [(
            "DEDUP2D_CALLBACK_TIMEOUT_SECONDS".to_string(),
            "ten".to_string(),
        )]
        .into();
        let err = CallbackSettings::from_map(&bad).unwrap_err();
        assert!(err.to_string().contains("DEDUP2D_CALLBACK_TIMEOUT_SECONDS"));
    }
}
