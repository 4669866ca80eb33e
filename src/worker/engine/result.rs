//! The result document every engine produces, shaped like the Python API's response models
//! (`Dedup2DSearchResponse` and `Dedup2DMatchItem`), so the old API can validate a result our
//! worker wrote. The contract is `docs/schemas/dedup2d-search-result.schema.json`.
//!
//! The model's optional match fields other than the labels ([`PASSED_THROUGH`]) and every field
//! beyond the model live in `extra`, as raw JSON written back unchanged (an explicit `null`
//! stays one), so a vision answer passes through whole.

use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

/// What a match is, by the thresholds of the request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    Duplicate,
    Similar,
    Different,
}

impl Verdict {
    /// `duplicate` at or above the duplicate threshold, `similar` at or above the similar one.
    pub fn classify(similarity: f64, duplicate_threshold: f64, similar_threshold: f64) -> Self {
        if similarity >= duplicate_threshold {
            Verdict::Duplicate
        } else if similarity >= similar_threshold {
            Verdict::Similar
        } else {
            Verdict::Different
        }
    }
}

/// The levels of the progressive search, as the Python pipeline numbers them.
pub mod level {
    /// L1: content hash.
    pub const HASH: i64 = 1;
    /// L2: visual features (dedupcad-vision's image recall).
    pub const VISUAL: i64 = 2;
    /// L3: learned embeddings.
    pub const ML: i64 = 3;
    /// L4: geometric precision.
    pub const PRECISION: i64 = 4;
}

/// The optional `Dedup2DMatchItem` fields kept in `MatchItem::extra` (set by the precision pass
/// or by the vision service).
pub const PASSED_THROUGH: [&str; 7] = [
    "visual_similarity",
    "precision_score",
    "precision_breakdown",
    "precision_diff_similarity",
    "precision_diff",
    "diff_image_base64",
    "diff_regions",
];

/// One candidate drawing (`Dedup2DMatchItem`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MatchItem {
    pub drawing_id: String,
    pub file_hash: String,
    pub file_name: String,
    /// The four label fields of the Python pipeline's filename classifier; always written.
    #[serde(default)]
    pub fine_part_type: Option<String>,
    #[serde(default)]
    pub coarse_part_type: Option<String>,
    #[serde(default)]
    pub decision_source: Option<String>,
    #[serde(default)]
    pub is_coarse_label: Option<bool>,
    pub similarity: f64,
    pub confidence: f64,
    pub match_level: i64,
    pub verdict: Verdict,
    /// Per-level evidence, keyed `l1`..`l4`.
    pub levels: Map<String, Value>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

impl MatchItem {
    /// A match found at `match_level` with the given evidence for that level; the confidence
    /// is the similarity (how sure the engine is that the verdict holds).
    pub fn new(
        drawing_id: String,
        file_hash: String,
        file_name: String,
        similarity: f64,
        verdict: Verdict,
        match_level: i64,
        evidence: Value,
    ) -> Self {
        let mut levels = Map::new();
        levels.insert(format!("l{match_level}"), evidence);
        MatchItem {
            drawing_id,
            file_hash,
            file_name,
            fine_part_type: None,
            coarse_part_type: None,
            decision_source: None,
            is_coarse_label: None,
            similarity,
            confidence: similarity,
            match_level,
            verdict,
            levels,
            extra: Map::new(),
        }
    }

    /// The built-in engines' facts about the indexed upload: `size_bytes` and `indexed_at`
    /// (epoch seconds), beyond the model.
    pub fn indexed(mut self, size_bytes: u64, indexed_at_ms: i64) -> Self {
        self.extra.insert("size_bytes".into(), json!(size_bytes));
        self.extra
            .insert("indexed_at".into(), json!(indexed_at_ms as f64 / 1000.0));
        self
    }

    /// A number in `extra` (`None` when absent, null or not a number).
    pub fn number(&self, key: &str) -> Option<f64> {
        self.extra.get(key).and_then(Value::as_f64)
    }
}

/// The search's timing in milliseconds: `total_ms` plus any stage (`l1_ms`..`l4_ms`,
/// engine-specific stages; the worker adds `load_ms`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Timing {
    pub total_ms: f64,
    #[serde(flatten)]
    pub stages: Map<String, Value>,
}

impl Timing {
    /// `total_ms` and the four level timings (0 for a level that did not run), then `extra`.
    pub fn levels(total_ms: f64, per_level_ms: [f64; 4], extra: &[(&str, f64)]) -> Self {
        let mut stages = Map::new();
        for (i, ms) in per_level_ms.iter().enumerate() {
            stages.insert(format!("l{}_ms", i + 1), json!(ms));
        }
        for (k, ms) in extra {
            stages.insert((*k).to_string(), json!(ms));
        }
        Timing { total_ms, stages }
    }
}

/// The result document stored at `{prefix}:result:{id}` (`Dedup2DSearchResponse`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SearchResult {
    pub success: bool,
    pub total_matches: usize,
    #[serde(default)]
    pub duplicates: Vec<MatchItem>,
    #[serde(default)]
    pub similar: Vec<MatchItem>,
    /// The deepest level the search ran (an integer even when nothing matched).
    pub final_level: i64,
    pub timing: Timing,
    /// Per level: `{passed, filtered, time_ms}`.
    #[serde(default)]
    pub level_stats: Map<String, Value>,
    #[serde(default)]
    pub warnings: Vec<String>,
    #[serde(default)]
    pub error: Option<String>,
    /// The query file's content hash, written by the built-in engines.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file_hash: Option<String>,
    /// Which built-in engine answered; absent on a dedupcad-vision answer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub engine: Option<String>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// `{passed, filtered, time_ms}` of one level.
pub fn level_stat(passed: usize, filtered: usize, time_ms: f64) -> Value {
    json!({"passed": passed, "filtered": filtered, "time_ms": time_ms})
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verdicts_follow_the_thresholds() {
        assert_eq!(Verdict::classify(0.95, 0.95, 0.8), Verdict::Duplicate);
        assert_eq!(Verdict::classify(0.8, 0.95, 0.8), Verdict::Similar);
        assert_eq!(Verdict::classify(0.79, 0.95, 0.8), Verdict::Different);
    }

    #[test]
    fn unknown_fields_survive_a_round_trip_and_unset_optionals_stay_out() {
        let doc = json!({
            "success": true, "total_matches": 1, "similar": [], "final_level": 2,
            "timing": {"total_ms": 3.0, "l1_ms": 1.0, "note": "x"},
            "level_stats": {}, "warnings": [], "error": null, "search_id": "s-1",
            "duplicates": [{"drawing_id": "7", "file_hash": "h", "file_name": "a.png",
                "similarity": 0.97, "confidence": 0.9, "match_level": 2,
                "verdict": "duplicate", "levels": {"l2": {"score": 0.97}}, "vendor": [1],
                "diff_image_base64": null}]
        });
        let parsed: SearchResult = serde_json::from_value(doc.clone()).unwrap();
        let back = serde_json::to_value(&parsed).unwrap();
        assert_eq!(back["search_id"], json!("s-1"));
        assert_eq!(back["duplicates"][0]["vendor"], json!([1]));
        assert_eq!(back["timing"]["note"], json!("x"));
        assert!(back["duplicates"][0].get("precision_score").is_none());
        assert_eq!(
            back["duplicates"][0].get("diff_image_base64"),
            Some(&Value::Null)
        );
        // Whole round trip: only the always-written label fields are added.
        let mut expected = doc.clone();
        for k in [
            "fine_part_type",
            "coarse_part_type",
            "decision_source",
            "is_coarse_label",
        ] {
            expected["duplicates"][0][k] = Value::Null;
        }
        assert_eq!(back, expected);
        assert_eq!(back["duplicates"][0]["fine_part_type"], Value::Null);
        assert!(back.get("engine").is_none());
    }
}
