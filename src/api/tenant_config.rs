//! Per-tenant default search settings (`GET/PUT/DELETE /2d/config`), stored where the Python API
//! keeps them in Redis: `{DEDUPCAD_TENANT_CONFIG_PREFIX}:tenant_config:{tenant}` (prefix
//! `dedup2d`), a JSON object of the fields that are set. The Python API also writes a file
//! copy and gives the Redis key a TTL; this API has no disk, so its key does not expire.

use redis::aio::ConnectionManager;
use redis::AsyncCommands;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::presets::Preset;

pub const ENV_PREFIX: &str = "DEDUPCAD_TENANT_CONFIG_PREFIX";
const DEFAULT_PREFIX: &str = "dedup2d";

pub const MODES: [&str; 3] = ["fast", "balanced", "precise"];
pub const PRECISION_PROFILES: [&str; 2] = ["strict", "version"];
pub const VERSION_GATES: [&str; 4] = ["off", "auto", "file_name", "meta"];

/// The settings a tenant may store (`Dedup2DTenantConfig`). Unset fields are left out.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TenantConfig {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preset: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub precision_profile: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version_gate: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub precision_top_n: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub precision_visual_weight: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub precision_geom_weight: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duplicate_threshold: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub similar_threshold: Option<f64>,
}

/// Why a tenant config was refused.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum InvalidConfig {
    #[error("{0}")]
    Preset(#[from] super::presets::UnknownPreset),
    #[error("Invalid {field}: {value} (expected one of {expected})")]
    Choice {
        field: &'static str,
        value: String,
        expected: String,
    },
    #[error("{field}={value} is out of range: expected {expected}")]
    Range {
        field: &'static str,
        value: f64,
        expected: &'static str,
    },
    #[error("similar_threshold must be <= duplicate_threshold")]
    ThresholdOrder,
}

fn choice(
    field: &'static str,
    v: &Option<String>,
    allowed: &[&str],
    lower: bool,
) -> Result<(), InvalidConfig> {
    let Some(raw) = v else { return Ok(()) };
    let key = if lower {
        raw.trim().to_ascii_lowercase()
    } else {
        raw.clone()
    };
    if allowed.contains(&key.as_str()) {
        Ok(())
    } else {
        Err(InvalidConfig::Choice {
            field,
            value: raw.clone(),
            expected: allowed.join("|"),
        })
    }
}

fn range(
    field: &'static str,
    v: Option<f64>,
    max: f64,
    expected: &'static str,
) -> Result<(), InvalidConfig> {
    match v {
        Some(x) if !(x.is_finite() && x >= 0.0 && x <= max) => Err(InvalidConfig::Range {
            field,
            value: x,
            expected,
        }),
        _ => Ok(()),
    }
}

impl TenantConfig {
    /// The Python API's checks (model validators and `PUT /2d/config`); the preset name is
    /// stored normalized (lower case), like there.
    pub fn validated(mut self) -> Result<Self, InvalidConfig> {
        if let Some(raw) = &self.preset {
            let p =
                Preset::parse(raw)?.ok_or_else(|| super::presets::UnknownPreset(raw.clone()))?;
            self.preset = Some(p.name().to_string());
        }
        choice("mode", &self.mode, &MODES, false)?;
        choice(
            "precision_profile",
            &self.precision_profile,
            &PRECISION_PROFILES,
            false,
        )?;
        choice("version_gate", &self.version_gate, &VERSION_GATES, true)?;
        if let Some(n) = self.precision_top_n.filter(|n| *n < 1) {
            return Err(InvalidConfig::Range {
                field: "precision_top_n",
                value: n as f64,
                expected: "an integer >= 1",
            });
        }
        range(
            "precision_visual_weight",
            self.precision_visual_weight,
            f64::MAX,
            ">= 0",
        )?;
        range(
            "precision_geom_weight",
            self.precision_geom_weight,
            f64::MAX,
            ">= 0",
        )?;
        range(
            "duplicate_threshold",
            self.duplicate_threshold,
            1.0,
            "0..=1",
        )?;
        range("similar_threshold", self.similar_threshold, 1.0, "0..=1")?;
        if let (Some(d), Some(s)) = (self.duplicate_threshold, self.similar_threshold) {
            if s > d {
                return Err(InvalidConfig::ThresholdOrder);
            }
        }
        Ok(self)
    }

    /// The search parameters this config sets (everything but `preset`).
    pub fn search_defaults(&self) -> Map<String, Value> {
        let mut m = match serde_json::to_value(self) {
            Ok(Value::Object(m)) => m,
            _ => Map::new(),
        };
        m.remove("preset");
        m
    }
}

/// The Redis side of the tenant configs.
#[derive(Clone)]
pub struct TenantConfigStore {
    conn: ConnectionManager,
    prefix: String,
}

impl TenantConfigStore {
    pub fn new(conn: ConnectionManager, prefix: Option<String>) -> Self {
        TenantConfigStore {
            conn,
            prefix: prefix
                .map(|p| p.trim().to_string())
                .filter(|p| !p.is_empty())
                .unwrap_or_else(|| DEFAULT_PREFIX.into()),
        }
    }

    pub fn from_env(conn: ConnectionManager) -> Self {
        Self::new(conn, std::env::var(ENV_PREFIX).ok())
    }

    pub fn key(&self, tenant_id: &str) -> String {
        format!("{}:tenant_config:{tenant_id}", self.prefix)
    }

    /// The stored config; an unreadable or non-object value reads as none (as in Python).
    pub async fn get(&self, tenant_id: &str) -> Result<TenantConfig, redis::RedisError> {
        let raw: Option<String> = self.conn.clone().get(self.key(tenant_id)).await?;
        Ok(raw
            .and_then(|r| serde_json::from_str::<Value>(&r).ok())
            .and_then(|v| parse_stored(v).ok())
            .unwrap_or_default())
    }

    pub async fn set(
        &self,
        tenant_id: &str,
        config: &TenantConfig,
    ) -> Result<(), redis::RedisError> {
        let json = serde_json::to_string(config).expect("a tenant config serializes");
        self.conn.clone().set(self.key(tenant_id), json).await
    }

    pub async fn delete(&self, tenant_id: &str) -> Result<(), redis::RedisError> {
        self.conn.clone().del(self.key(tenant_id)).await
    }
}

/// A stored value (possibly written by the Python API, which may hold fields unknown here):
/// known fields are read, the rest ignored.
fn parse_stored(v: Value) -> Result<TenantConfig, serde_json::Error> {
    let Value::Object(mut m) = v else {
        return Ok(TenantConfig::default());
    };
    const FIELDS: [&str; 9] = [
        "preset",
        "mode",
        "precision_profile",
        "version_gate",
        "precision_top_n",
        "precision_visual_weight",
        "precision_geom_weight",
        "duplicate_threshold",
        "similar_threshold",
    ];
    m.retain(|k, v| FIELDS.contains(&k.as_str()) && !v.is_null());
    serde_json::from_value(Value::Object(m))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn cfg(v: Value) -> Result<TenantConfig, String> {
        serde_json::from_value::<TenantConfig>(v)
            .map_err(|e| e.to_string())?
            .validated()
            .map_err(|e| e.to_string())
    }

    #[test]
    fn the_python_checks() {
        let ok =
            cfg(json!({"preset": " LOOSE ", "version_gate": "Auto", "similar_threshold": 0.5}))
                .unwrap();
        assert_eq!(ok.preset.as_deref(), Some("loose"));
        assert_eq!(
            ok.version_gate.as_deref(),
            Some("Auto"),
            "stored as given, checked lower-cased"
        );
        for (bad, needle) in [
            (json!({"preset": "fuzzy"}), "Unknown preset: fuzzy"),
            (json!({"mode": "turbo"}), "Invalid mode: turbo"),
            (
                json!({"precision_profile": "loose"}),
                "Invalid precision_profile",
            ),
            (json!({"version_gate": "sometimes"}), "Invalid version_gate"),
            (json!({"precision_top_n": 0}), "precision_top_n"),
            (
                json!({"precision_geom_weight": -1.0}),
                "precision_geom_weight",
            ),
            (json!({"duplicate_threshold": 1.5}), "duplicate_threshold"),
            (
                json!({"duplicate_threshold": 0.5, "similar_threshold": 0.6}),
                "similar_threshold must be <=",
            ),
            (json!({"duplicate_treshold": 0.5}), "unknown field"),
            (json!({"mode": 3}), "invalid type"),
        ] {
            let err = cfg(bad.clone()).unwrap_err();
            assert!(err.contains(needle), "{bad}: {err}");
        }
    }

    #[test]
    fn stored_values_from_python_are_read_leniently() {
        let c = parse_stored(json!({"mode": "fast", "future_field": 1, "preset": null})).unwrap();
        assert_eq!(c.mode.as_deref(), Some("fast"));
        assert_eq!(c.preset, None);
        assert_eq!(
            c.search_defaults(),
            json!({"mode": "fast"}).as_object().unwrap().clone()
        );
    }
}
