//! The default engine: what a file is decides how it is compared. DXF (by its bytes) → geometric
//! fingerprint and MinHash sketch in the tenant's LSH index (level 4); PNG/JPEG → perceptual
//! hash in the tenant's multi-index (level 2); anything else, and a DXF without measurable
//! geometry → the exact content hash ([`ExactEngine`], level 1). A DXF or image that cannot be
//! decoded fails the job with the decoder's reason.

use std::time::Instant;

use base64::Engine as _;
use futures::future::BoxFuture;
use redis::aio::ConnectionManager;
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};
use sha2::{Digest, Sha256};

use super::canonical::Canonical;
use super::exact::{ms, ExactEngine};
use super::lsh_index::{BucketIndex, Family, Registration, MAX_CANDIDATES};
use super::minhash::{Sketch, SLOTS};
use super::phash::{self, RasterFormat};
use super::result::{level, level_stat, MatchItem, SearchResult, Timing, Verdict};
use super::{dxf_geometry, EngineError, SearchEngine, SearchRequest};
use crate::contract::keys::Keys;

/// What is stored per indexed drawing (the `items` hash of its family).
#[derive(Debug, Serialize, Deserialize)]
pub struct ItemRecord {
    pub job_id: String,
    pub file_name: String,
    pub size: u64,
    pub indexed_at_ms: i64,
    pub file_hash: String,
    /// Geometry: the canonical form's fingerprint; raster: the perceptual hash (hex).
    pub fingerprint: String,
    /// Geometry: the MinHash sketch (base64 of 128 little-endian u16); raster: empty.
    #[serde(default)]
    pub sketch: String,
}

/// How one query compares with an indexed record: `(similarity, confidence, level details)`.
pub type Compare<'a> =
    dyn Fn(&ItemRecord) -> Option<(f64, f64, Map<String, Value>)> + Send + Sync + 'a;

pub struct DrawingEngine {
    exact: ExactEngine,
    index: BucketIndex,
}

impl DrawingEngine {
    /// `index_ttl_seconds`: TTL of the content-hash, geometry and raster index keys, refreshed on every
    /// registration; 0 keeps them until deleted.
    pub fn new(conn: ConnectionManager, keys: Keys, index_ttl_seconds: u64) -> Self {
        DrawingEngine {
            exact: ExactEngine::new(conn.clone(), keys.clone()).with_index_ttl(index_ttl_seconds),
            index: BucketIndex::new(conn, keys, index_ttl_seconds),
        }
    }
}

/// A `levels` entry: `{name: {method, similarity, ...extra}}`.
pub fn level(
    name: &str,
    method: &str,
    similarity: f64,
    mut extra: Map<String, Value>,
) -> Map<String, Value> {
    extra.insert("method".into(), json!(method));
    extra.insert("similarity".into(), json!(similarity));
    Map::from_iter([(name.to_string(), Value::Object(extra))])
}

/// The lower end of a 95% interval of a MinHash estimate over [`SLOTS`] slots.
pub fn minhash_confidence(similarity: f64) -> f64 {
    let stderr = (similarity * (1.0 - similarity) / SLOTS as f64).sqrt();
    (similarity - 1.96 * stderr).clamp(0.0, 1.0)
}

/// The query's side of a search in one family.
struct Query<'a> {
    family: Family,
    /// `result::level::PRECISION` (geometry) or `VISUAL` (raster).
    level: i64,
    engine: &'static str,
    probes: Vec<Vec<u8>>,
    own_buckets: Vec<Vec<u8>>,
    fingerprint: String,
    sketch: String,
    compare: Box<Compare<'a>>,
    hash_ms: f64,
    warnings: Vec<String>,
}

impl SearchEngine for DrawingEngine {
    fn name(&self) -> &'static str {
        "drawing"
    }

    fn search<'a>(
        &'a self,
        req: SearchRequest<'a>,
    ) -> BoxFuture<'a, Result<SearchResult, EngineError>> {
        Box::pin(async move {
            let start = Instant::now();
            let query = if dxf_geometry::looks_like_dxf(req.data) {
                geometry_query(req.data.to_vec()).await?
            } else if let Some(format) = RasterFormat::sniff(req.data) {
                Some(raster_query(req.data.to_vec(), format).await?)
            } else {
                None
            };
            match query {
                Some(q) => self.run(req, q, start).await,
                None => {
                    let mut r = self.exact.search(req).await?;
                    if dxf_geometry::looks_like_dxf(req.data) {
                        r.warnings
                            .push("dxf_without_geometry:exact_content_hash".into());
                    }
                    Ok(r)
                }
            }
        })
    }
}

impl DrawingEngine {
    async fn run(
        &self,
        req: SearchRequest<'_>,
        q: Query<'_>,
        start: Instant,
    ) -> Result<SearchResult, EngineError> {
        let file_hash = hex::encode(Sha256::digest(req.data));
        let record = ItemRecord {
            job_id: req.job_id.to_string(),
            file_name: req.file_name.to_string(),
            size: req.data.len() as u64,
            indexed_at_ms: crate::contract::queue::now_ms(),
            file_hash: file_hash.clone(),
            fingerprint: q.fingerprint.clone(),
            sketch: q.sketch.clone(),
        };
        let index_start = Instant::now();
        let reg = Registration {
            job_id: req.job_id,
            record_json: serde_json::to_string(&record).expect("an item record serializes"),
            own_buckets: &q.own_buckets,
            register: req.params.add_to_index,
        };
        let found = lookup(
            &self.index,
            req.tenant_id,
            q.family,
            &q.probes,
            &reg,
            &*q.compare,
        )
        .await?;
        let index_ms = ms(index_start);

        let mut warnings = q.warnings;
        if found.touched > MAX_CANDIDATES {
            warnings.push(format!(
                "candidates_capped:{}_of_{}",
                MAX_CANDIDATES, found.touched
            ));
        }
        let (duplicates, similar) = ranked_matches(found.scored, &req, q.level);
        if req.query_geom.is_some() {
            warnings.push(format!("query_geom_ignored:{}", q.engine));
        }
        let matched = duplicates.len() + similar.len();
        let mut per_level_ms = [0.0; 4];
        per_level_ms[(q.level - 1) as usize] = q.hash_ms + index_ms;
        let level_stats = Map::from_iter([(
            format!("l{}", q.level),
            level_stat(matched, found.touched.saturating_sub(matched), index_ms),
        )]);
        Ok(SearchResult {
            success: true,
            total_matches: matched,
            duplicates,
            similar,
            final_level: q.level,
            timing: Timing::levels(
                ms(start),
                per_level_ms,
                &[("hash_ms", q.hash_ms), ("index_ms", index_ms)],
            ),
            level_stats,
            warnings,
            error: None,
            file_hash: Some(file_hash),
            engine: Some(q.engine.to_string()),
            extra: Map::from_iter([("fingerprint".to_string(), json!(q.fingerprint))]),
        })
    }
}

/// The candidates above a threshold, best first (newest first on a tie), at most
/// `max_results`, split into duplicates and similar.
fn ranked_matches(
    scored: Vec<Scored>,
    req: &SearchRequest<'_>,
    level: i64,
) -> (Vec<MatchItem>, Vec<MatchItem>) {
    let mut scored: Vec<(f64, MatchItem)> = scored
        .into_iter()
        .filter(|c| c.record.job_id != req.job_id)
        .filter_map(|c| {
            let verdict = verdict(c.similarity, req.params)?;
            let m = to_match_item(
                c.record,
                c.similarity,
                c.confidence,
                verdict,
                level,
                c.levels,
            );
            Some((c.similarity, m))
        })
        .collect();
    let indexed_at = |m: &MatchItem| m.number("indexed_at").unwrap_or(0.0);
    scored.sort_by(|a, b| {
        b.0.total_cmp(&a.0)
            .then(indexed_at(&b.1).total_cmp(&indexed_at(&a.1)))
    });
    scored.truncate(req.params.max_results);
    scored
        .into_iter()
        .map(|(_, m)| m)
        .partition(|m| m.verdict == Verdict::Duplicate)
}

/// One indexed drawing compared with the query.
pub struct Scored {
    pub record: ItemRecord,
    pub similarity: f64,
    pub confidence: f64,
    pub levels: Map<String, Value>,
}

/// What one lookup found: the compared candidates and how many ids the buckets held.
pub struct Lookup {
    pub scored: Vec<Scored>,
    pub touched: usize,
}

/// Probes the index (registering the query when `reg` says so), fetches the capped candidate
/// records and compares each with the query.
pub async fn lookup(
    index: &BucketIndex,
    tenant: &str,
    family: Family,
    probes: &[Vec<u8>],
    reg: &Registration<'_>,
    compare: &Compare<'_>,
) -> Result<Lookup, redis::RedisError> {
    let found = index.query(tenant, family, probes, reg).await?;
    let ids: Vec<u32> = found.ranked.iter().map(|(id, _)| *id).collect();
    let records = index.records(tenant, family, &ids).await?;
    let scored = records
        .into_iter()
        .flatten()
        .filter_map(|raw| serde_json::from_str::<ItemRecord>(&raw).ok())
        .filter_map(|record| {
            let (similarity, confidence, levels) = compare(&record)?;
            Some(Scored {
                record,
                similarity,
                confidence,
                levels,
            })
        })
        .collect();
    Ok(Lookup {
        scored,
        touched: found.touched,
    })
}

/// Compares a query sketch with an indexed geometry record: 1.0 when the canonical forms are
/// the same, else the sketch similarity.
pub fn geometry_compare(sketch: Sketch, fingerprint: String) -> Box<Compare<'static>> {
    let b64 = base64::engine::general_purpose::STANDARD;
    Box::new(move |r: &ItemRecord| {
        let theirs = Sketch::from_bytes(&b64.decode(&r.sketch).ok()?)?;
        let same_form = r.fingerprint == fingerprint;
        let sim = if same_form {
            1.0
        } else {
            sketch.similarity(&theirs)
        };
        let conf = if same_form {
            1.0
        } else {
            minhash_confidence(sim)
        };
        let extra = Map::from_iter([("fingerprint_match".to_string(), json!(same_form))]);
        Some((
            sim,
            conf,
            level("l4", "geometry_minhash_lsh", round4(sim), extra),
        ))
    })
}

/// The verdict by the request's thresholds; `None` for a candidate below both.
pub fn verdict(similarity: f64, params: &super::SearchParams) -> Option<Verdict> {
    match Verdict::classify(
        similarity,
        params.duplicate_threshold,
        params.similar_threshold,
    ) {
        Verdict::Different => None,
        v => Some(v),
    }
}

fn to_match_item(
    r: ItemRecord,
    similarity: f64,
    confidence: f64,
    verdict: Verdict,
    match_level: i64,
    levels: Map<String, Value>,
) -> MatchItem {
    let mut m = MatchItem::new(
        r.job_id,
        r.file_hash,
        r.file_name,
        round4(similarity),
        verdict,
        match_level,
        Value::Null,
    );
    m.confidence = round4(confidence);
    m.levels = levels;
    m.indexed(r.size, r.indexed_at_ms)
}

fn round4(v: f64) -> f64 {
    (v * 10_000.0).round() / 10_000.0
}

/// Parses the DXF off the async threads; `None` when it has no measurable geometry.
async fn geometry_query(data: Vec<u8>) -> Result<Option<Query<'static>>, EngineError> {
    let start = Instant::now();
    let work = tokio::task::spawn_blocking(move || {
        let geometry = dxf_geometry::parse(&data)?;
        let canonical = Canonical::from_primitives(&geometry.primitives);
        let sketch = canonical.as_ref().map(Sketch::of);
        Ok::<_, dxf_geometry::DxfError>((geometry, canonical, sketch))
    });
    let (geometry, canonical, sketch) = work
        .await
        .map_err(|e| dxf_geometry::DxfError::Unreadable(format!("the parser crashed: {e}")))??;
    let (Some(canonical), Some(sketch)) = (canonical, sketch) else {
        return Ok(None);
    };
    let mut warnings = Vec::new();
    if !geometry.ignored.is_empty() {
        let kinds: Vec<String> = geometry
            .ignored
            .iter()
            .map(|(k, n)| format!("{k}={n}"))
            .collect();
        warnings.push(format!("dxf_entities_ignored:{}", kinds.join(",")));
    }
    if geometry.missing_blocks > 0 {
        warnings.push(format!("dxf_missing_blocks:{}", geometry.missing_blocks));
    }
    let fingerprint = canonical.fingerprint();
    let buckets = sketch.band_buckets();
    let b64 = base64::engine::general_purpose::STANDARD;
    let sketch_b64 = b64.encode(sketch.to_bytes());
    Ok(Some(Query {
        family: Family::Geometry,
        level: level::PRECISION,
        engine: "geometry_minhash",
        probes: buckets.clone(),
        own_buckets: buckets,
        compare: geometry_compare(sketch, fingerprint.clone()),
        fingerprint,
        sketch: sketch_b64,
        hash_ms: ms(start),
        warnings,
    }))
}

/// Decodes and hashes a PNG or JPEG off the async threads.
async fn raster_query(data: Vec<u8>, format: RasterFormat) -> Result<Query<'static>, EngineError> {
    let start = Instant::now();
    let hash = tokio::task::spawn_blocking(move || phash::phash(&data, format))
        .await
        .map_err(|e| phash::RasterError {
            format: format.name(),
            reason: format!("the decoder crashed: {e}"),
        })??;
    let compare = move |r: &ItemRecord| {
        let theirs = u64::from_str_radix(&r.fingerprint, 16).ok()?;
        let sim = phash::similarity(hash, theirs);
        let extra = Map::from_iter([("hamming".to_string(), json!((hash ^ theirs).count_ones()))]);
        Some((sim, sim, level("l2", "perceptual_hash", round4(sim), extra)))
    };
    Ok(Query {
        family: Family::Raster,
        level: level::VISUAL,
        engine: "perceptual_hash",
        probes: phash::probe_buckets(hash),
        own_buckets: phash::band_buckets(hash),
        fingerprint: format!("{hash:016x}"),
        sketch: String::new(),
        compare: Box::new(compare),
        hash_ms: ms(start),
        warnings: Vec::new(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verdicts_follow_the_thresholds() {
        let p = super::super::SearchParams::default();
        assert_eq!(verdict(0.95, &p), Some(Verdict::Duplicate));
        assert_eq!(verdict(0.9, &p), Some(Verdict::Similar));
        assert_eq!(verdict(0.79, &p), None);
    }

    #[test]
    fn confidence_is_below_the_estimate_except_at_the_ends() {
        assert_eq!(minhash_confidence(1.0), 1.0);
        let c = minhash_confidence(0.9);
        assert!(c < 0.9 && c > 0.8, "{c}");
        assert_eq!(minhash_confidence(0.0), 0.0);
    }
}
