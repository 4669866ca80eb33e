//! The Python pipeline's local L4 "precision" pass over a vision answer, for a query that came
//! with `geom_json` (`_apply_precision_l4`). This system keeps no candidate geometry (the Python
//! platform's geometry store is filled by its `/2d/index/add`, which this API does not have), so
//! every candidate takes the pass's "geometry missing" path: the version gate may filter it,
//! its similarity is down-weighted to the visual share, and the lists are re-sorted by the
//! request's thresholds, exactly as the Python pass does for unverified candidates.

use serde_json::{json, Map, Value};

use super::super::engine::{MatchItem, SearchParams, SearchResult, Verdict};

const GATE_MODES: [&str; 4] = ["off", "auto", "file_name", "meta"];

/// Whether the pass runs (Python: geometry given and precision, geometric or precise mode).
pub fn applies(query_geom: Option<&Value>, p: &SearchParams) -> bool {
    query_geom.is_some()
        && (p.options.enable_precision || p.options.enable_geometric || p.mode == "precise")
}

/// `(visual, geom)` weights scaled to sum 1.
fn normalize(visual: f64, geom: f64) -> Result<(f64, f64), String> {
    if visual < 0.0 || geom < 0.0 {
        return Err("weights must be >= 0".into());
    }
    let total = visual + geom;
    if total <= 0.0 {
        return Err("weights sum must be > 0".into());
    }
    Ok((visual / total, geom / total))
}

/// The drawing number in a v2 geometry's `meta`.
fn meta_key(geom: &Value) -> Option<String> {
    let meta = geom.get("meta")?.as_object()?;
    [
        "drawing_number",
        "drawing_no",
        "drawingNo",
        "drawingNumber",
        "drawing_id",
        "drawingId",
        "number",
    ]
    .iter()
    .find_map(|k| {
        meta.get(*k)
            .and_then(Value::as_str)
            .map(str::trim)
            .filter(|s| !s.is_empty())
    })
    .map(str::to_string)
}

/// `part_v2.png` → `part`: the file stem without a version suffix (`v<digits>`, optionally after
/// `_`, `-` or a space); `None` without such a suffix.
pub fn file_stem_key(file_name: &str) -> Option<String> {
    let last = file_name.rsplit('/').next().unwrap_or(file_name);
    let stem = match last.rfind('.') {
        Some(i) if i > 0 => &last[..i],
        _ => last,
    }
    .trim();
    let digits = stem.len() - stem.trim_end_matches(|c: char| c.is_ascii_digit()).len();
    if digits == 0 {
        return None;
    }
    let before = &stem[..stem.len() - digits];
    let head = before.strip_suffix(['v', 'V'])?;
    let head = head.strip_suffix(['_', '-', ' ', '\t']).unwrap_or(head);
    let base = head.trim_end_matches([' ', '_', '-']).trim();
    (!base.is_empty()).then(|| base.to_string())
}

/// The gate in effect and the query's key (`off` when the query has no key for the mode).
fn gate(
    p: &SearchParams,
    query_geom: &Value,
    query_file: &str,
) -> Result<(&'static str, Option<String>), String> {
    let raw = p.options.version_gate.as_deref().unwrap_or("off");
    let mode = match raw.trim().to_ascii_lowercase() {
        m if m.is_empty() => "off".to_string(),
        m => m,
    };
    if !GATE_MODES.contains(&mode.as_str()) {
        return Err(format!("Invalid version_gate: {raw}"));
    }
    let profile = p
        .options
        .precision_profile
        .as_deref()
        .unwrap_or("strict")
        .trim()
        .to_ascii_lowercase();
    if profile != "version" || mode == "off" {
        return Ok(("off", None));
    }
    let (meta, file) = (meta_key(query_geom), file_stem_key(query_file));
    Ok(match mode.as_str() {
        "meta" => (if meta.is_some() { "meta" } else { "off" }, meta),
        "file_name" => (if file.is_some() { "file_name" } else { "off" }, file),
        _ => match (meta, file) {
            (Some(m), _) => ("meta", Some(m)),
            (None, Some(f)) => ("file_name", Some(f)),
            (None, None) => ("off", None),
        },
    })
}

fn gate_out(m: &mut MatchItem, mode: &str, query_key: &str, candidate_key: &str) {
    m.similarity = 0.0;
    m.verdict = Verdict::Different;
    let l4 = m
        .levels
        .entry("l4")
        .or_insert_with(|| Value::Object(Map::new()));
    if let Some(l4) = l4.as_object_mut() {
        l4.insert(
            "version_gate".into(),
            json!({"mode": mode, "query_key": query_key, "candidate_key": candidate_key, "match": false}),
        );
    }
}

/// The pass, in place. An invalid weight, gate or threshold is an error (the job fails).
pub fn apply(
    r: &mut SearchResult,
    query_geom: &Value,
    query_file: &str,
    p: &SearchParams,
) -> Result<(), String> {
    let (visual_w, _geom_w) = normalize(
        p.options.precision_visual_weight,
        p.options.precision_geom_weight,
    )?;
    let mut matches: Vec<MatchItem> = std::mem::take(&mut r.duplicates);
    matches.append(&mut r.similar);
    if matches.is_empty() {
        return Ok(());
    }
    let (mode, query_key) = gate(p, query_geom, query_file)?;
    let (dup_th, sim_th) = (p.duplicate_threshold, p.similar_threshold);
    if !(0.0 <= sim_th && sim_th <= dup_th && dup_th <= 1.0) {
        return Err(
            "invalid thresholds: require 0 <= similar_threshold <= duplicate_threshold <= 1".into(),
        );
    }
    let mut order: Vec<usize> = (0..matches.len()).collect();
    order.sort_by(|a, b| matches[*b].similarity.total_cmp(&matches[*a].similarity));
    let (mut missing, mut gated) = (0usize, 0usize);
    for &i in order.iter().take(p.options.precision_top_n.max(1) as usize) {
        let m = &mut matches[i];
        if m.file_hash.is_empty() {
            continue;
        }
        if let (true, Some(q)) = (mode == "file_name", &query_key) {
            if let Some(c) = file_stem_key(&m.file_name).filter(|c| c != q) {
                gate_out(m, mode, q, &c);
                gated += 1;
                continue;
            }
        }
        // No candidate geometry is stored here.
        missing += 1;
    }
    for m in &mut matches {
        if m.number("precision_score").is_some() {
            continue;
        }
        let visual = m.similarity;
        let kept = m.number("visual_similarity").filter(|v| *v != 0.0);
        m.extra
            .insert("visual_similarity".into(), json!(kept.unwrap_or(visual)));
        m.similarity = visual_w * visual;
    }
    let (mut dups, mut sims) = (Vec::new(), Vec::new());
    for mut m in matches {
        m.verdict = Verdict::classify(m.similarity, dup_th, sim_th);
        match m.verdict {
            Verdict::Duplicate => dups.push(m),
            Verdict::Similar => sims.push(m),
            Verdict::Different => {}
        }
    }
    for list in [&mut dups, &mut sims] {
        list.sort_by(|a, b| b.similarity.total_cmp(&a.similarity));
        list.truncate(p.max_results);
    }
    r.total_matches = dups.len() + sims.len();
    (r.duplicates, r.similar) = (dups, sims);
    if missing > 0 {
        r.warnings
            .push(format!("precision_missing_geom_json:{missing}"));
    }
    if gated > 0 {
        r.warnings
            .push(format!("precision_version_gate_filtered:{gated}"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_suffixes() {
        assert_eq!(file_stem_key("dir/part_v2.png").as_deref(), Some("part"));
        assert_eq!(file_stem_key("Part-V12.dxf").as_deref(), Some("Part"));
        assert_eq!(file_stem_key("part v3").as_deref(), Some("part"));
        assert_eq!(file_stem_key("partv3.png").as_deref(), Some("part"));
        assert_eq!(file_stem_key("part.png"), None);
        assert_eq!(file_stem_key("part_3.png"), None);
        assert_eq!(file_stem_key("v2.png"), None);
    }

    fn item(name: &str, sim: f64) -> MatchItem {
        MatchItem::new(
            name.into(),
            format!("h-{name}"),
            name.into(),
            sim,
            Verdict::Duplicate,
            2,
            json!({}),
        )
    }

    #[test]
    fn unverified_candidates_are_down_weighted_gated_and_resorted() {
        let mut r: SearchResult = serde_json::from_value(json!({
            "success": true, "total_matches": 0, "final_level": 2, "timing": {"total_ms": 1.0},
        }))
        .unwrap();
        r.duplicates = vec![item("a_v1.png", 0.99), item("b_v1.png", 0.98)];
        r.similar = vec![item("a_v2.png", 0.9)];
        let mut p = SearchParams::default();
        p.options.precision_profile = Some("version".into());
        p.options.version_gate = Some("file_name".into());
        p.options.precision_visual_weight = 1.0;
        p.options.precision_geom_weight = 0.0;
        apply(&mut r, &json!({}), "a_v3.png", &p).unwrap();
        let names: Vec<&str> = r.duplicates.iter().map(|m| m.file_name.as_str()).collect();
        assert_eq!(names, ["a_v1.png"]);
        assert_eq!(r.similar[0].file_name, "a_v2.png");
        assert_eq!(r.total_matches, 2);
        assert_eq!(
            r.warnings,
            [
                "precision_missing_geom_json:2",
                "precision_version_gate_filtered:1"
            ]
        );

        p.options.precision_visual_weight = -1.0;
        assert_eq!(
            apply(&mut r, &json!({}), "x", &p).unwrap_err(),
            "weights must be >= 0"
        );
    }
}
