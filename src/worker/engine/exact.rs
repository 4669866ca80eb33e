//! The built-in engine: exact duplicates by content hash. Each tenant has an index in Redis,
//! `{prefix}:dedup:{tenant}:sha256` (hash: sha256 hex → JSON list of the uploads with that
//! content, newest last, capped). A search looks its hash up and registers the upload in one
//! Lua call, so concurrent workers never lose a registration. A retried job finds its own
//! earlier registration and does not report itself as a duplicate, so a re-run gives the same
//! answer.

use std::time::Instant;

use futures::future::BoxFuture;
use redis::aio::ConnectionManager;
use redis::Script;
use serde::{Deserialize, Serialize};
use serde_json::{json, Map};
use sha2::{Digest, Sha256};

use super::result::{level, level_stat, MatchItem, SearchResult, Timing, Verdict};
use super::{EngineError, SearchEngine, SearchRequest};
use crate::contract::keys::Keys;

/// Uploads remembered per content hash.
const MAX_RECORDS_PER_HASH: usize = 100;

const LOOKUP_AND_REGISTER: &str = r#"
-- KEYS: index. ARGV: sha256, record_json, job_id, cap, ttl_s, register (0/1)
local raw = redis.call('HGET', KEYS[1], ARGV[1])
if ARGV[6] ~= '1' then return raw or '' end
-- An entry that does not decode is replaced (the caller warns about the raw value it gets back).
local list = {}
if raw then
  local ok, decoded = pcall(cjson.decode, raw)
  if ok and type(decoded) == 'table' then list = decoded end
end
for _, r in ipairs(list) do
  if r['job_id'] == ARGV[3] then return raw end
end
table.insert(list, cjson.decode(ARGV[2]))
while #list > tonumber(ARGV[4]) do table.remove(list, 1) end
redis.call('HSET', KEYS[1], ARGV[1], cjson.encode(list))
redis.call('EXPIRE', KEYS[1], ARGV[5])
return raw or ''
"#;

#[derive(Debug, Serialize, Deserialize)]
struct IndexRecord {
    job_id: String,
    file_name: String,
    size: u64,
    /// Epoch milliseconds (an integer: Lua's cjson would round a float).
    indexed_at_ms: i64,
}

pub struct ExactEngine {
    conn: ConnectionManager,
    keys: Keys,
    /// Retention of the index after its last write (`DEDUP2D_INDEX_TTL_SECONDS`).
    index_ttl_seconds: u64,
}

impl ExactEngine {
    pub fn new(conn: ConnectionManager, keys: Keys) -> Self {
        ExactEngine {
            conn,
            keys,
            index_ttl_seconds: crate::contract::keys::DEFAULT_INDEX_TTL_SECONDS,
        }
    }

    pub fn with_index_ttl(mut self, seconds: u64) -> Self {
        self.index_ttl_seconds = seconds;
        self
    }

    /// `{prefix}:dedup:{tenant}:sha256`.
    pub fn index_key(&self, tenant_id: &str) -> String {
        self.keys.dedup_index(tenant_id)
    }
}

/// Milliseconds since `since`, rounded to microseconds.
pub(super) fn ms(since: Instant) -> f64 {
    (since.elapsed().as_secs_f64() * 1_000_000.0).round() / 1000.0
}

impl ExactEngine {
    /// The records already indexed under `hash`; registers `record` there too unless the
    /// request says not to (one Lua call).
    async fn lookup_and_register(
        &self,
        req: &SearchRequest<'_>,
        hash: &str,
        record: &IndexRecord,
    ) -> Result<String, redis::RedisError> {
        let mut conn = self.conn.clone();
        Script::new(LOOKUP_AND_REGISTER)
            .key(self.index_key(req.tenant_id))
            .arg(hash)
            .arg(serde_json::to_string(record).expect("index record serializes"))
            .arg(req.job_id)
            .arg(MAX_RECORDS_PER_HASH)
            .arg(self.index_ttl_seconds)
            .arg(if req.params.add_to_index { "1" } else { "0" })
            .invoke_async(&mut conn)
            .await
    }
}

/// An earlier upload with the same content: a duplicate at the hash level.
fn hash_match(r: IndexRecord, hash: &str) -> MatchItem {
    MatchItem::new(
        r.job_id,
        hash.to_string(),
        r.file_name,
        1.0,
        Verdict::Duplicate,
        level::HASH,
        json!({"method": "sha256", "match": true}),
    )
    .indexed(r.size, r.indexed_at_ms)
}

impl SearchEngine for ExactEngine {
    fn name(&self) -> &'static str {
        "exact_sha256"
    }

    fn search<'a>(
        &'a self,
        req: SearchRequest<'a>,
    ) -> BoxFuture<'a, Result<SearchResult, EngineError>> {
        Box::pin(async move {
            let start = Instant::now();
            // Hashing a large file is CPU work: let the runtime move other tasks (the Redis
            // connections' readers) off this thread meanwhile.
            let hash = tokio::task::block_in_place(|| hex::encode(Sha256::digest(req.data)));
            let hash_ms = ms(start);

            let index_start = Instant::now();
            let record = IndexRecord {
                job_id: req.job_id.to_string(),
                file_name: req.file_name.to_string(),
                size: req.data.len() as u64,
                indexed_at_ms: crate::contract::queue::now_ms(),
            };
            let previous = self.lookup_and_register(&req, &hash, &record).await?;
            let index_ms = ms(index_start);

            let mut warnings = vec!["similar_search_unavailable:exact_engine".to_string()];
            let records: Vec<IndexRecord> = if previous.is_empty() {
                Vec::new()
            } else {
                serde_json::from_str(&previous).unwrap_or_else(|e| {
                    warnings.push(format!("index_entry_unreadable:{e}"));
                    Vec::new()
                })
            };
            let duplicates: Vec<MatchItem> = records
                .into_iter()
                .rev()
                .filter(|r| r.job_id != req.job_id)
                .take(req.params.max_results)
                .map(|r| hash_match(r, &hash))
                .collect();
            if req.query_geom.is_some() {
                warnings.push("query_geom_ignored:exact_engine".to_string());
            }
            let mut level_stats = Map::new();
            level_stats.insert("l1".into(), level_stat(duplicates.len(), 0, index_ms));
            Ok(SearchResult {
                success: true,
                total_matches: duplicates.len(),
                // L1 is the only level this engine runs, match or not.
                final_level: level::HASH,
                duplicates,
                similar: Vec::new(),
                timing: Timing::levels(
                    ms(start),
                    [index_ms, 0.0, 0.0, 0.0],
                    &[("hash_ms", hash_ms), ("index_ms", index_ms)],
                ),
                level_stats,
                warnings,
                error: None,
                file_hash: Some(hash),
                engine: Some(self.name().to_string()),
                extra: Map::new(),
            })
        })
    }
}
