//! The dedup search behind the worker: a `SearchEngine` trait whose result (`result.rs`) has the
//! shape of the Python API's response model, so API clients, the old API and webhooks see the
//! same document whichever worker ran.

pub mod canonical;
pub mod drawing;
pub mod dxf_geometry;
pub mod exact;
pub mod lsh_index;
pub mod minhash;
pub mod phash;
pub mod result;

use futures::future::BoxFuture;
use serde_json::{Map, Value};

pub use drawing::DrawingEngine;
pub use exact::ExactEngine;
pub use result::{MatchItem, SearchResult, Timing, Verdict};

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("Invalid request_params: {0}")]
    InvalidParams(String),
    #[error(transparent)]
    Vision(#[from] crate::worker::vision::VisionFailure),
    #[error("search index unavailable: {0}")]
    Index(#[from] redis::RedisError),
    #[error(transparent)]
    Dxf(#[from] dxf_geometry::DxfError),
    #[error(transparent)]
    Raster(#[from] phash::RasterError),
}

/// The request parameters the search honours, parsed from the payload's `request_params` with
/// the Python pipeline's defaults and checks.
#[derive(Debug, Clone, PartialEq)]
pub struct SearchParams {
    pub mode: String,
    pub max_results: usize,
    pub duplicate_threshold: f64,
    pub similar_threshold: f64,
    /// The rest of the Python pipeline's parameters, read as its worker reads them.
    pub options: SearchOptions,
    /// `add_to_index` (default true): whether the query drawing is also registered in the
    /// tenant's index, so later searches find it.
    pub add_to_index: bool,
}

impl Default for SearchParams {
    fn default() -> Self {
        SearchParams {
            mode: "balanced".into(),
            max_results: 50,
            duplicate_threshold: 0.95,
            similar_threshold: 0.8,
            add_to_index: true,
            options: SearchOptions::default(),
        }
    }
}

/// The flags and precision (L4) settings of a search, with the Python worker's defaults and its
/// lenient reading (`bool(v)`, `int(v or default)`).
#[derive(Debug, Clone, PartialEq)]
pub struct SearchOptions {
    pub compute_diff: bool,
    pub enable_ml: bool,
    pub enable_geometric: bool,
    pub enable_precision: bool,
    pub precision_profile: Option<String>,
    pub version_gate: Option<String>,
    pub precision_top_n: i64,
    pub precision_visual_weight: f64,
    pub precision_geom_weight: f64,
}

impl Default for SearchOptions {
    fn default() -> Self {
        SearchOptions {
            compute_diff: true,
            enable_ml: false,
            enable_geometric: false,
            enable_precision: true,
            precision_profile: None,
            version_gate: None,
            precision_top_n: 20,
            precision_visual_weight: 0.3,
            precision_geom_weight: 0.7,
        }
    }
}

/// Python truthiness of a JSON value (`bool(v)`); `default` when the key is absent.
fn truthy(v: Option<&Value>, default: bool) -> bool {
    match v {
        None => default,
        Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(Value::Number(n)) => n.as_f64().is_some_and(|f| f != 0.0),
        Some(Value::String(s)) => !s.is_empty(),
        Some(Value::Array(a)) => !a.is_empty(),
        Some(Value::Object(o)) => !o.is_empty(),
    }
}

impl SearchOptions {
    fn from_request_params(p: &Map<String, Value>) -> Self {
        let d = SearchOptions::default();
        // `v or default`: a missing, null, zero or empty value takes the default.
        let num = |k: &str, default: f64| {
            p.get(k)
                .filter(|v| truthy(Some(v), false))
                .and_then(|v| {
                    v.as_f64()
                        .or_else(|| v.as_str().and_then(|s| s.trim().parse().ok()))
                })
                .unwrap_or(default)
        };
        let text = |k: &str| p.get(k).and_then(Value::as_str).map(str::to_string);
        SearchOptions {
            compute_diff: truthy(p.get("compute_diff"), d.compute_diff),
            enable_ml: truthy(p.get("enable_ml"), d.enable_ml),
            enable_geometric: truthy(p.get("enable_geometric"), d.enable_geometric),
            enable_precision: truthy(p.get("enable_precision"), d.enable_precision),
            precision_profile: text("precision_profile"),
            version_gate: text("version_gate"),
            precision_top_n: num("precision_top_n", d.precision_top_n as f64) as i64,
            precision_visual_weight: num("precision_visual_weight", d.precision_visual_weight),
            precision_geom_weight: num("precision_geom_weight", d.precision_geom_weight),
        }
    }
}

impl SearchParams {
    pub fn from_request_params(params: &Map<String, Value>) -> Result<Self, EngineError> {
        let d = SearchParams::default();
        let bad = |k: &str, v: &Value| EngineError::InvalidParams(format!("{k}={v} is not valid"));
        let num = |k: &str, default: f64| -> Result<f64, EngineError> {
            match params.get(k) {
                None | Some(Value::Null) => Ok(default),
                Some(Value::Number(n)) => n.as_f64().ok_or_else(|| bad(k, &params[k])),
                Some(Value::String(s)) if s.trim().is_empty() => Ok(default),
                Some(v @ Value::String(s)) => s.trim().parse().map_err(|_| bad(k, v)),
                Some(v) => Err(bad(k, v)),
            }
        };
        let max_results = num("max_results", d.max_results as f64)?;
        if !(max_results >= 1.0 && max_results.fract() == 0.0 && max_results <= 1000.0) {
            return Err(EngineError::InvalidParams(format!(
                "max_results={max_results} must be an integer in 1..=1000"
            )));
        }
        let duplicate_threshold = num("duplicate_threshold", d.duplicate_threshold)?;
        let similar_threshold = num("similar_threshold", d.similar_threshold)?;
        if !(0.0 <= similar_threshold
            && similar_threshold <= duplicate_threshold
            && duplicate_threshold <= 1.0)
        {
            return Err(EngineError::InvalidParams(
                "invalid thresholds: require 0 <= similar_threshold <= duplicate_threshold <= 1"
                    .into(),
            ));
        }
        let mode = match params.get("mode") {
            None | Some(Value::Null) => d.mode,
            Some(Value::String(s)) if s.trim().is_empty() => d.mode,
            Some(Value::String(s)) => s.trim().to_string(),
            Some(v) => return Err(bad("mode", v)),
        };
        let add_to_index = match params.get("add_to_index") {
            None | Some(Value::Null) => d.add_to_index,
            Some(Value::Bool(b)) => *b,
            Some(v @ Value::Number(n)) => match n.as_i64() {
                Some(0) => false,
                Some(1) => true,
                _ => return Err(bad("add_to_index", v)),
            },
            Some(v @ Value::String(s)) => match s.trim().to_ascii_lowercase().as_str() {
                "" => d.add_to_index,
                "1" | "true" | "yes" | "on" => true,
                "0" | "false" | "no" | "off" => false,
                _ => return Err(bad("add_to_index", v)),
            },
            Some(v) => return Err(bad("add_to_index", v)),
        };
        Ok(SearchParams {
            add_to_index,
            mode,
            max_results: max_results as usize,
            duplicate_threshold,
            similar_threshold,
            options: SearchOptions::from_request_params(params),
        })
    }
}

/// What one search looks at.
#[derive(Debug, Clone, Copy)]
pub struct SearchRequest<'a> {
    pub job_id: &'a str,
    pub tenant_id: &'a str,
    pub file_name: &'a str,
    pub content_type: &'a str,
    pub data: &'a [u8],
    pub query_geom: Option<&'a Value>,
    pub params: &'a SearchParams,
}

/// A dedup search implementation.
pub trait SearchEngine: Send + Sync {
    fn name(&self) -> &'static str;

    fn search<'a>(
        &'a self,
        request: SearchRequest<'a>,
    ) -> BoxFuture<'a, Result<SearchResult, EngineError>>;
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn parse(v: Value) -> Result<SearchParams, EngineError> {
        SearchParams::from_request_params(v.as_object().unwrap())
    }

    #[test]
    fn params_defaults_and_checks() {
        assert_eq!(parse(json!({})).unwrap(), SearchParams::default());
        let p = parse(
            json!({"max_results": "7", "mode": "fast", "duplicate_threshold": 1,
            "similar_threshold": null}),
        )
        .unwrap();
        assert_eq!((p.max_results, p.mode.as_str()), (7, "fast"));
        assert_eq!(p.duplicate_threshold, 1.0);
        let o = parse(
            json!({"compute_diff": false, "enable_ml": "yes", "precision_top_n": 0,
            "precision_geom_weight": "0.5", "version_gate": "auto", "enable_precision": null}),
        )
        .unwrap()
        .options;
        assert!(!o.compute_diff && o.enable_ml && !o.enable_precision);
        assert_eq!((o.precision_top_n, o.precision_geom_weight), (20, 0.5));
        assert_eq!(o.version_gate.as_deref(), Some("auto"));
        assert!(p.add_to_index);
        for (v, want) in [(json!(false), false), (json!("0"), false), (json!(1), true)] {
            assert_eq!(
                parse(json!({"add_to_index": v})).unwrap().add_to_index,
                want
            );
        }
        for bad in [
            json!({"max_results": 0}),
            json!({"max_results": 2.5}),
            json!({"max_results": "many"}),
            json!({"max_results": [1]}),
            json!({"duplicate_threshold": 0.5, "similar_threshold": 0.9}),
            json!({"duplicate_threshold": 1.5}),
            json!({"mode": 3}),
            json!({"add_to_index": "maybe"}),
            json!({"add_to_index": 2}),
        ] {
            let err = parse(bad.clone()).unwrap_err();
            assert!(
                err.to_string().starts_with("Invalid request_params"),
                "{bad}: {err}"
            );
        }
    }
}
