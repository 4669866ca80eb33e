//! Query parameters of `POST /2d/search` and `GET /2d/jobs`, validated the way the Python API
//! does (same names and defaults); an unknown value is a 400, not a silent default.

use std::collections::HashMap;

use serde_json::{json, Map, Value};

use super::error::ApiError;
use crate::contract::store::JobStatus;

const MODES: [&str; 3] = ["fast", "balanced", "precise"];
const PRECISION_PROFILES: [&str; 2] = ["strict", "version"];

/// The search request's parameters, as they go into the payload's `request_params`.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct SearchParams {
    pub async_request: bool,
    pub callback_url: Option<String>,
    pub request_params: Map<String, Value>,
}

fn bad(name: &str, value: &str, expected: &str) -> ApiError {
    ApiError::bad_request(
        "INVALID_PARAMETER",
        format!("query parameter {name}={value:?} is invalid: expected {expected}"),
    )
}

fn parse_bool(q: &HashMap<String, String>, name: &str, default: bool) -> Result<bool, ApiError> {
    match q.get(name).map(|v| v.trim().to_ascii_lowercase()) {
        None => Ok(default),
        Some(v) => match v.as_str() {
            "1" | "true" | "yes" | "on" => Ok(true),
            "0" | "false" | "no" | "off" => Ok(false),
            _ => Err(bad(name, &v, "a boolean")),
        },
    }
}

fn parse_int(
    q: &HashMap<String, String>,
    name: &str,
    default: i64,
    min: i64,
    max: i64,
) -> Result<i64, ApiError> {
    match q.get(name) {
        None => Ok(default),
        Some(v) => v
            .trim()
            .parse::<i64>()
            .ok()
            .filter(|n| (min..=max).contains(n))
            .ok_or_else(|| bad(name, v, &format!("an integer in {min}..={max}"))),
    }
}

fn parse_float(
    q: &HashMap<String, String>,
    name: &str,
    default: f64,
    min: f64,
    max: f64,
) -> Result<f64, ApiError> {
    match q.get(name) {
        None => Ok(default),
        Some(v) => v
            .trim()
            .parse::<f64>()
            .ok()
            .filter(|n| n.is_finite() && *n >= min && *n <= max)
            .ok_or_else(|| bad(name, v, &format!("a number in {min}..={max}"))),
    }
}

fn parse_choice(
    q: &HashMap<String, String>,
    name: &str,
    choices: &[&str],
) -> Result<Option<String>, ApiError> {
    match q.get(name) {
        None => Ok(None),
        Some(v) if choices.contains(&v.trim()) => Ok(Some(v.trim().to_string())),
        Some(v) => Err(bad(name, v, &format!("one of {}", choices.join("|")))),
    }
}

const KNOWN: [&str; 22] = [
    "async",
    "add_to_index",
    "callback_url",
    "mode",
    "max_results",
    "compute_diff",
    "enable_ml",
    "enable_geometric",
    "enable_precision",
    "preset",
    "precision_profile",
    "version_gate",
    "precision_top_n",
    "precision_visual_weight",
    "precision_geom_weight",
    "precision_compute_diff",
    "precision_diff_top_n",
    "precision_diff_max_paths",
    "duplicate_threshold",
    "similar_threshold",
    "tenant_id",
    "api_key",
];

pub(crate) fn search_params(q: &HashMap<String, String>) -> Result<SearchParams, ApiError> {
    if let Some(unknown) = q.keys().find(|k| !KNOWN.contains(&k.as_str())) {
        return Err(ApiError::bad_request(
            "INVALID_PARAMETER",
            format!("unknown query parameter {unknown:?}"),
        ));
    }
    if q.contains_key("tenant_id") || q.contains_key("api_key") {
        return Err(ApiError::bad_request(
            "INVALID_PARAMETER",
            "query parameters tenant_id/api_key are not accepted: the tenant comes from the X-API-Key header",
        ));
    }
    let mode = parse_choice(q, "mode", &MODES)?.unwrap_or_else(|| "balanced".into());
    let duplicate = parse_float(q, "duplicate_threshold", 0.95, 0.0, 1.0)?;
    let similar = parse_float(q, "similar_threshold", 0.80, 0.0, 1.0)?;
    if similar > duplicate {
        return Err(ApiError::bad_request(
            "INVALID_PARAMETER",
            "similar_threshold must be <= duplicate_threshold",
        ));
    }
    let params = json!({
        "mode": mode,
        "max_results": parse_int(q, "max_results", 50, 1, 1000)?,
        "compute_diff": parse_bool(q, "compute_diff", true)?,
        "enable_ml": parse_bool(q, "enable_ml", false)?,
        "enable_geometric": parse_bool(q, "enable_geometric", false)?,
        "enable_precision": parse_bool(q, "enable_precision", true)?,
        "precision_profile": parse_choice(q, "precision_profile", &PRECISION_PROFILES)?,
        "version_gate": q.get("version_gate").map(|s| s.trim().to_string()),
        "precision_top_n": parse_int(q, "precision_top_n", 20, 1, 1000)?,
        "precision_visual_weight": parse_float(q, "precision_visual_weight", 0.3, 0.0, 1e6)?,
        "precision_geom_weight": parse_float(q, "precision_geom_weight", 0.7, 0.0, 1e6)?,
        "precision_compute_diff": parse_bool(q, "precision_compute_diff", false)?,
        "precision_diff_top_n": parse_int(q, "precision_diff_top_n", 5, 0, 1000)?,
        "precision_diff_max_paths": parse_int(q, "precision_diff_max_paths", 200, 0, 100_000)?,
        "duplicate_threshold": duplicate,
        "similar_threshold": similar,
        // Ours (the Python search never indexes; it has POST /2d/index/add for that).
        "add_to_index": parse_bool(q, "add_to_index", true)?,
    });
    Ok(SearchParams {
        async_request: parse_bool(q, "async", false)?,
        callback_url: q
            .get("callback_url")
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty()),
        request_params: params.as_object().cloned().unwrap_or_default(),
    })
}

/// `GET /2d/jobs?status=&limit=`: status one of the job statuses, limit 1..=200 (default 50).
pub(crate) fn list_params(
    q: &HashMap<String, String>,
) -> Result<(Option<JobStatus>, usize), ApiError> {
    if let Some(unknown) = q
        .keys()
        .find(|k| !["status", "limit"].contains(&k.as_str()))
    {
        return Err(ApiError::bad_request(
            "INVALID_PARAMETER",
            format!("unknown query parameter {unknown:?}"),
        ));
    }
    let status = match q.get("status").map(|s| s.trim()).filter(|s| !s.is_empty()) {
        None => None,
        Some(s) => Some(JobStatus::parse(s).ok_or_else(|| {
            ApiError::bad_request(
                "INVALID_STATUS",
                format!(
                    "status {s:?} is invalid: expected pending|in_progress|completed|failed|canceled"
                ),
            )
        })?),
    };
    let limit = parse_int(q, "limit", 50, 1, 200)? as usize;
    Ok((status, limit))
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::test_support::string_map as q;

    #[test]
    fn defaults_match_the_python_api() {
        let p = search_params(&q(&[])).unwrap();
        assert!(!p.async_request);
        assert_eq!(p.request_params["mode"], json!("balanced"));
        assert_eq!(p.request_params["max_results"], json!(50));
        assert_eq!(p.request_params["duplicate_threshold"], json!(0.95));
        assert_eq!(p.request_params["precision_top_n"], json!(20));
    }

    #[test]
    fn bad_values_are_400() {
        for (k, v) in [
            ("mode", "turbo"),
            ("max_results", "x"),
            ("max_results", "0"),
            ("async", "maybe"),
            ("duplicate_threshold", "1.5"),
            ("precision_profile", "loose"),
            ("bogus", "1"),
            ("tenant_id", "someone"),
        ] {
            let err = search_params(&q(&[(k, v)])).unwrap_err();
            assert_eq!(err.status, 400, "{k}={v}");
            assert!(err.message.contains(k), "{}", err.message);
        }
        let err = search_params(&q(&[
            ("duplicate_threshold", "0.5"),
            ("similar_threshold", "0.6"),
        ]))
        .unwrap_err();
        assert!(err.message.contains("similar_threshold"));
    }

    #[test]
    fn list_validation() {
        assert_eq!(list_params(&q(&[])).unwrap(), (None, 50));
        assert_eq!(
            list_params(&q(&[("status", "failed"), ("limit", "200")])).unwrap(),
            (Some(JobStatus::Failed), 200)
        );
        assert_eq!(
            list_params(&q(&[("status", "done")])).unwrap_err().code,
            "INVALID_STATUS"
        );
        assert_eq!(list_params(&q(&[("limit", "0")])).unwrap_err().status, 400);
        assert_eq!(
            list_params(&q(&[("limit", "201")])).unwrap_err().status,
            400
        );
    }
}
