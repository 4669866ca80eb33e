//! Webhook callback URL policy, shared by the API (checked at submit) and the worker (checked
//! again before sending). https only unless `DEDUP2D_CALLBACK_ALLOW_HTTP`; no userinfo; an
//! optional host allowlist (`DEDUP2D_CALLBACK_ALLOWLIST`, exact hosts or `.suffix`); loopback,
//! private, link-local and unspecified addresses blocked unless
//! `DEDUP2D_CALLBACK_BLOCK_PRIVATE_NETWORKS=0`. And the webhook body itself, [`CallbackRecord`].

use std::collections::HashMap;
use std::net::IpAddr;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use url::{Host, Url};

use super::config::truthy;
use super::store::JobStatus;

/// The webhook body a worker posts when a job finished, as the Python system sends it; on the wire
/// as canonical JSON (keys sorted, compact), the bytes the signature covers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CallbackRecord {
    pub job_id: String,
    pub tenant_id: Option<String>,
    pub status: JobStatus,
    /// Unix seconds.
    pub started_at: f64,
    /// Unix seconds.
    pub finished_at: f64,
    /// The job's result when it completed.
    pub result: Option<Value>,
    /// Why it failed.
    pub error: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct CallbackPolicy {
    pub allow_http: bool,
    pub block_private_networks: bool,
    /// Lower-case hosts; an entry starting with `.` matches any subdomain.
    pub allowlist: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum CallbackUrlError {
    #[error("callback_url is not a valid URL: {0}")]
    Parse(String),
    #[error("callback_url must use https (got {0})")]
    Scheme(String),
    #[error("callback_url must not contain credentials")]
    Userinfo,
    #[error("callback_url has no host")]
    NoHost,
    #[error("callback_url host {0} is not in the allowlist")]
    NotAllowed(String),
    #[error("callback_url host {0} is a loopback/private/link-local address")]
    PrivateAddress(String),
}

impl CallbackPolicy {
    pub(crate) fn from_map(env: &HashMap<String, String>) -> Self {
        let get = |k: &str| env.get(k).map(|v| v.trim().to_string());
        CallbackPolicy {
            allow_http: get("DEDUP2D_CALLBACK_ALLOW_HTTP").is_some_and(|v| truthy(&v)),
            block_private_networks: get("DEDUP2D_CALLBACK_BLOCK_PRIVATE_NETWORKS")
                .filter(|v| !v.is_empty())
                .is_none_or(|v| truthy(&v)),
            allowlist: get("DEDUP2D_CALLBACK_ALLOWLIST")
                .unwrap_or_default()
                .split(',')
                .map(|h| match h.trim().strip_prefix('.') {
                    Some(suffix) => format!(".{}", normalise_host(suffix)),
                    None => normalise_host(h.trim()),
                })
                .filter(|h| !h.is_empty() && h != ".")
                .collect(),
        }
    }

    pub fn from_env() -> Self {
        Self::from_map(&std::env::vars().collect())
    }

    /// Checks a URL and returns it normalized.
    pub(crate) fn validate(&self, raw: &str) -> Result<Url, CallbackUrlError> {
        let url = Url::parse(raw.trim()).map_err(|e| CallbackUrlError::Parse(e.to_string()))?;
        match url.scheme() {
            "https" => {}
            "http" if self.allow_http => {}
            other => return Err(CallbackUrlError::Scheme(other.to_string())),
        }
        if !url.username().is_empty() || url.password().is_some() {
            return Err(CallbackUrlError::Userinfo);
        }
        let host = url.host().ok_or(CallbackUrlError::NoHost)?;
        let host_str = match &host {
            Host::Domain(d) => normalise_host(d),
            Host::Ipv4(ip) => ip.to_string(),
            Host::Ipv6(ip) => ip.to_string(),
        };
        if host_str.is_empty() {
            return Err(CallbackUrlError::NoHost);
        }
        if !self.allowlist.is_empty()
            && !self.allowlist.iter().any(|a| {
                if let Some(suffix) = a.strip_prefix('.') {
                    host_str.ends_with(&format!(".{suffix}")) || host_str == suffix
                } else {
                    *a == host_str
                }
            })
        {
            return Err(CallbackUrlError::NotAllowed(host_str));
        }
        if self.block_private_networks {
            let blocked = match host {
                Host::Domain(_) => host_str == "localhost" || host_str.ends_with(".localhost"),
                Host::Ipv4(ip) => is_private(IpAddr::V4(ip)),
                Host::Ipv6(ip) => is_private(IpAddr::V6(ip)),
            };
            if blocked {
                return Err(CallbackUrlError::PrivateAddress(host_str));
            }
        }
        Ok(url)
    }
}

/// A host name as it is compared: IDNA to punycode (as the URL parser does), lower case,
/// without the trailing dots of a fully qualified name (`localhost.` is `localhost`).
fn normalise_host(host: &str) -> String {
    let ascii = match Host::parse(host) {
        Ok(Host::Domain(d)) => d,
        Ok(other) => other.to_string(),
        Err(_) => host.to_string(),
    };
    ascii.trim_end_matches('.').to_ascii_lowercase()
}

/// Addresses a webhook must never reach when private networks are blocked.
pub(crate) fn is_private(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            v4.is_loopback()
                || v4.is_private()
                || v4.is_link_local()
                || v4.is_unspecified()
                || v4.is_broadcast()
                || v4.octets()[0] == 100 && (v4.octets()[1] & 0xc0) == 64 // 100.64/10 CGNAT
        }
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return is_private(IpAddr::V4(v4));
            }
            let seg0 = v6.segments()[0];
            v6.is_loopback()
                || v6.is_unspecified()
                || (seg0 & 0xfe00) == 0xfc00 // unique local
                || (seg0 & 0xffc0) == 0xfe80 // link local
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(pairs: &[(&str, &str)]) -> CallbackPolicy {
        CallbackPolicy::from_map(
            &pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        )
    }

    #[test]
    fn defaults_are_strict() {
        let p = policy(&[]);
        assert!(p.validate("https://hooks.example.com/x").is_ok());
        assert!(matches!(
            p.validate("http://hooks.example.com/x"),
            Err(CallbackUrlError::Scheme(_))
        ));
        assert!(matches!(
            p.validate("ftp://a/x"),
            Err(CallbackUrlError::Scheme(_))
        ));
        assert_eq!(
            p.validate("https://u:p@hooks.example.com/"),
            Err(CallbackUrlError::Userinfo)
        );
        assert!(matches!(
            p.validate("not a url"),
            Err(CallbackUrlError::Parse(_))
        ));
        for bad in [
            "https://127.0.0.1/",
            "https://10.1.2.3/",
            "https://192.168.0.1/",
            "https://169.254.169.254/latest",
            "https://[::1]/",
            "https://[fd00::1]/",
            "https://[::ffff:10.0.0.1]/",
            "https://localhost:8443/",
            "https://0.0.0.0/",
            "https://localhost./",
            "https://LOCALHOST../x",
            "https://a.localhost./",
            "https://127.0.0.1./",
        ] {
            assert!(
                matches!(p.validate(bad), Err(CallbackUrlError::PrivateAddress(_))),
                "{bad}"
            );
        }
    }

    #[test]
    fn dev_overrides_and_allowlist() {
        let p = policy(&[
            ("DEDUP2D_CALLBACK_ALLOW_HTTP", "1"),
            ("DEDUP2D_CALLBACK_BLOCK_PRIVATE_NETWORKS", "0"),
        ]);
        assert!(p.validate("http://127.0.0.1:9000/hook").is_ok());
        let p = policy(&[(
            "DEDUP2D_CALLBACK_ALLOWLIST",
            "hooks.example.com, .corp.example",
        )]);
        assert!(p.validate("https://hooks.example.com/").is_ok());
        assert!(p.validate("https://a.b.corp.example/").is_ok());
        assert!(matches!(
            p.validate("https://evil.example.com/"),
            Err(CallbackUrlError::NotAllowed(_))
        ));
        assert!(matches!(
            p.validate("https://xcorp.example/"),
            Err(CallbackUrlError::NotAllowed(_))
        ));
        // Trailing dots, case and IDN are normalised on both sides.
        assert!(p.validate("https://HOOKS.example.com./").is_ok());
        let idn = policy(&[("DEDUP2D_CALLBACK_ALLOWLIST", "bücher.example.")]);
        assert!(idn.validate("https://xn--bcher-kva.example/").is_ok());
        assert!(idn.validate("https://BÜCHER.example./").is_ok());
        assert!(matches!(
            idn.validate("https://bucher.example/"),
            Err(CallbackUrlError::NotAllowed(_))
        ));
    }
}
