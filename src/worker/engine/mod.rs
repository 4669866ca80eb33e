//! The dedup search behind the worker: a `SearchEngine` trait whose result has the shape of the
//! Python pipeline's response (`success, total_matches, duplicates[], similar[], final_level,
//! timing, warnings`), so API clients and webhooks see the same document whichever worker ran.

pub mod canonical;
pub mod drawing;
pub mod dxf_geometry;
pub mod exact;
pub mod lsh_index;
pub mod minhash;
pub mod phash;

use futures::future::BoxFuture;
use serde::Serialize;
use serde_json::{Map, Value};

pub use drawing::DrawingEngine;
pub use exact::ExactEngine;

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("Invalid request_params: {0}")]
    InvalidParams(String),
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

/// One candidate drawing.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Match {
    /// The job that uploaded the candidate (the drawing's id in this system).
    pub drawing_id: String,
    pub file_hash: String,
    pub file_name: String,
    pub size_bytes: u64,
    pub similarity: f64,
    /// How sure the similarity is (see docs/engine.md per engine).
    pub confidence: f64,
    /// `duplicate`, `similar` or `different`.
    pub verdict: &'static str,
    /// 1 = content hash, 4 = geometric precision (as in the Python pipeline).
    pub match_level: u8,
    /// Per level that compared the pair: its method and figures.
    pub levels: Map<String, Value>,
    /// When the candidate was indexed (epoch seconds).
    pub indexed_at: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Timing {
    pub total_ms: f64,
    pub hash_ms: f64,
    pub index_ms: f64,
}

/// The result document stored at `{prefix}:result:{id}`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SearchResult {
    pub success: bool,
    pub total_matches: usize,
    pub duplicates: Vec<Match>,
    pub similar: Vec<Match>,
    pub final_level: Option<u8>,
    pub timing: Timing,
    pub warnings: Vec<String>,
    /// The query file's content hash (lets a client find this drawing later).
    pub file_hash: String,
    /// The geometric fingerprint (DXF) or perceptual hash (raster) of the query, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fingerprint: Option<String>,
    pub engine: &'static str,
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
