//! Search presets and how a search's effective parameters are resolved, as the Python API
//! does it: a preset (`strict`, `version`, `loose`) and the tenant's stored defaults fill in
//! every parameter the caller did not give explicitly in the query string.
//!
//! Order (Python `dedup_2d_search`): with `preset` in the query, the tenant defaults apply
//! first and the preset then overrides them; without it, the tenant's stored preset (if any)
//! applies first and the tenant's own values then override it. An explicit query value
//! always wins.

use std::collections::HashMap;

use serde_json::{json, Map, Value};

use super::error::ApiError;
use super::tenant_config::{TenantConfig, VERSION_GATES};

/// A named set of defaults.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Preset {
    /// "strict duplicate": few false positives.
    Strict,
    /// "version dedup": groups versions of one drawing.
    Version,
    /// "loose similar": recall.
    Loose,
}

impl Preset {
    pub const ALL: [Preset; 3] = [Preset::Strict, Preset::Version, Preset::Loose];

    pub fn name(self) -> &'static str {
        match self {
            Preset::Strict => "strict",
            Preset::Version => "version",
            Preset::Loose => "loose",
        }
    }

    /// The preset named `raw` (trimmed, case-insensitive); `Ok(None)` for an empty name.
    pub fn parse(raw: &str) -> Result<Option<Preset>, UnknownPreset> {
        let key = raw.trim().to_ascii_lowercase();
        if key.is_empty() {
            return Ok(None);
        }
        Preset::ALL
            .into_iter()
            .find(|p| p.name() == key)
            .map(Some)
            .ok_or_else(|| UnknownPreset(raw.to_string()))
    }

    /// The Python API's values, exactly.
    pub fn values(self) -> Map<String, Value> {
        let v = match self {
            Preset::Strict => json!({
                "mode": "balanced", "precision_profile": "strict", "precision_top_n": 20,
                "duplicate_threshold": 0.95, "similar_threshold": 0.80,
                "precision_visual_weight": 0.3, "precision_geom_weight": 0.7,
                "version_gate": "off",
            }),
            Preset::Version => json!({
                "mode": "balanced", "precision_profile": "version", "precision_top_n": 50,
                "duplicate_threshold": 0.95, "similar_threshold": 0.70,
                "precision_visual_weight": 0.5, "precision_geom_weight": 0.5,
                "version_gate": "auto",
            }),
            Preset::Loose => json!({
                "mode": "balanced", "precision_profile": "version", "precision_top_n": 50,
                "duplicate_threshold": 0.90, "similar_threshold": 0.50,
                "precision_visual_weight": 0.6, "precision_geom_weight": 0.4,
                "version_gate": "off",
            }),
        };
        match v {
            Value::Object(m) => m,
            _ => unreachable!("preset values are an object"),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("Unknown preset: {0} (known presets: strict, version, loose)")]
pub struct UnknownPreset(pub String);

impl From<UnknownPreset> for ApiError {
    fn from(e: UnknownPreset) -> Self {
        ApiError::bad_request("UNKNOWN_PRESET", e.to_string())
    }
}

/// `GET /2d/presets`: `{presets: {name: values}}`.
pub fn presets_json() -> Value {
    let presets: Map<String, Value> = Preset::ALL
        .into_iter()
        .map(|p| (p.name().to_string(), Value::Object(p.values())))
        .collect();
    json!({ "presets": presets })
}

/// Sets each of `defaults` into `params` unless the caller gave it in the query.
fn fill(
    query: &HashMap<String, String>,
    defaults: &Map<String, Value>,
    params: &mut Map<String, Value>,
) {
    for (k, v) in defaults {
        if !query.contains_key(k) && !v.is_null() {
            params.insert(k.clone(), v.clone());
        }
    }
}

/// Resolves `params` (the query's values and the API defaults) into the effective request
/// parameters, in the Python API's order; then checks the threshold order of the result.
pub(crate) fn resolve(
    query: &HashMap<String, String>,
    tenant: &TenantConfig,
    params: &mut Map<String, Value>,
) -> Result<(), ApiError> {
    let tenant_values = tenant.search_defaults();
    match query.get("preset") {
        Some(raw) => {
            fill(query, &tenant_values, params);
            if let Some(p) = Preset::parse(raw)? {
                fill(query, &p.values(), params);
            }
        }
        None => {
            let stored = tenant.preset.as_deref().unwrap_or("");
            if let Some(p) = Preset::parse(stored)? {
                fill(query, &p.values(), params);
            }
            fill(query, &tenant_values, params);
        }
    }
    if let Some(gate) = params.get("version_gate").and_then(Value::as_str) {
        if !VERSION_GATES.contains(&gate.trim().to_ascii_lowercase().as_str()) {
            return Err(ApiError::bad_request(
                "INVALID_PARAMETER",
                format!(
                    "Invalid version_gate: {gate} (expected one of {})",
                    VERSION_GATES.join("|")
                ),
            ));
        }
    }
    let num = |k: &str| params.get(k).and_then(Value::as_f64).unwrap_or(f64::NAN);
    let (similar, duplicate) = (num("similar_threshold"), num("duplicate_threshold"));
    if !(0.0 <= similar && similar <= duplicate && duplicate <= 1.0) {
        return Err(ApiError::bad_request(
            "INVALID_PARAMETER",
            format!(
                "invalid thresholds: require 0 <= similar_threshold <= duplicate_threshold <= 1 \
                 (effective similar_threshold={similar}, duplicate_threshold={duplicate})"
            ),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::test_support::string_map as q;

    fn base() -> Map<String, Value> {
        match json!({"mode": "balanced", "precision_top_n": 20, "duplicate_threshold": 0.95,
                     "similar_threshold": 0.8, "precision_visual_weight": 0.3,
                     "precision_geom_weight": 0.7, "precision_profile": null,
                     "version_gate": null, "max_results": 50})
        {
            Value::Object(m) => m,
            _ => unreachable!(),
        }
    }

    #[test]
    fn a_preset_fills_what_the_query_did_not_set() {
        let query = q(&[("preset", "Loose"), ("similar_threshold", "0.6")]);
        let mut p = base();
        p["similar_threshold"] = json!(0.6);
        resolve(&query, &TenantConfig::default(), &mut p).unwrap();
        assert_eq!(p["duplicate_threshold"], json!(0.90));
        assert_eq!(p["similar_threshold"], json!(0.6), "explicit value wins");
        assert_eq!(p["precision_profile"], json!("version"));
        assert_eq!(p["precision_top_n"], json!(50));
        assert_eq!(p["max_results"], json!(50), "not a preset key");
    }

    #[test]
    fn tenant_defaults_and_presets_in_the_python_order() {
        let tenant = TenantConfig {
            preset: Some("version".into()),
            similar_threshold: Some(0.75),
            ..Default::default()
        };
        // No preset in the query: the tenant's preset, then the tenant's own values.
        let mut p = base();
        resolve(&q(&[]), &tenant, &mut p).unwrap();
        assert_eq!(p["similar_threshold"], json!(0.75));
        assert_eq!(p["version_gate"], json!("auto"));
        // A preset in the query overrides the tenant's values.
        let mut p = base();
        resolve(&q(&[("preset", "strict")]), &tenant, &mut p).unwrap();
        assert_eq!(p["similar_threshold"], json!(0.80));
        assert_eq!(p["version_gate"], json!("off"));
        // An empty preset in the query: tenant values, but not the tenant's preset.
        let mut p = base();
        resolve(&q(&[("preset", " ")]), &tenant, &mut p).unwrap();
        assert_eq!(p["similar_threshold"], json!(0.75));
        assert_eq!(p["version_gate"], Value::Null);
    }

    #[test]
    fn unknown_presets_and_crossed_thresholds_are_400() {
        let err = resolve(
            &q(&[("preset", "fuzzy")]),
            &TenantConfig::default(),
            &mut base(),
        )
        .unwrap_err();
        assert_eq!((err.status.as_u16(), err.code), (400, "UNKNOWN_PRESET"));
        assert!(err.message.contains("fuzzy") && err.message.contains("strict, version, loose"));
        let tenant = TenantConfig {
            similar_threshold: Some(0.97),
            ..Default::default()
        };
        let err = resolve(&q(&[]), &tenant, &mut base()).unwrap_err();
        assert!(
            err.message.contains("similar_threshold=0.97"),
            "{}",
            err.message
        );
    }

    #[test]
    fn the_presets_listing_has_every_preset() {
        let v = presets_json();
        assert_eq!(v["presets"].as_object().unwrap().len(), 3);
        assert_eq!(v["presets"]["strict"]["precision_geom_weight"], json!(0.7));
    }
}
