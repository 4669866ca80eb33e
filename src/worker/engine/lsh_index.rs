//! A per-tenant bucket index in Redis, shared by the MinHash LSH (DXF) and the multi-index
//! perceptual hash (raster) families. Per tenant and family, four keys with a fixed name:
//!
//! - `{prefix}:dedup:{tenant}:{family}:buckets` hash: bucket → ids (u32 little-endian, newest
//!   last, at most [`MAX_IDS_PER_BUCKET`]);
//! - `…:items` hash: id → the item's record (JSON, with its sketch);
//! - `…:jobs` hash: job id → id (a retried job finds its own registration);
//! - `…:seq` counter of ids.
//!
//! A query is one Lua call that reads the probed buckets and, when asked, registers the item in
//! its own buckets (so two concurrent uploads of the same drawing cannot both miss each other),
//! then one HMGET of at most [`MAX_CANDIDATES`] records. Its cost depends on the buckets
//! touched, never on the number of drawings. Every write refreshes the TTL of the four keys
//! when one is configured.

use std::collections::HashMap;
use std::sync::LazyLock;

use redis::aio::ConnectionManager;
use redis::Script;

use crate::contract::keys::Keys;

/// Ids kept per bucket (4 KiB): a bucket that every drawing falls into cannot grow a query.
pub const MAX_IDS_PER_BUCKET: usize = 1024;
/// Candidate records fetched and verified per query, best bucket agreement first.
pub const MAX_CANDIDATES: usize = 256;

const QUERY_AND_REGISTER: &str = r#"
-- KEYS: buckets, items, jobs, seq
-- ARGV: register (0/1), job_id, record, cap_bytes, ttl_seconds, n_probes, probes..., own buckets...
local n = tonumber(ARGV[6])
local out = {}
for i = 1, n do out[i + 1] = redis.call('HGET', KEYS[1], ARGV[6 + i]) or '' end
local own = redis.call('HGET', KEYS[3], ARGV[2])
if ARGV[1] == '1' and not own then
  local id = redis.call('INCR', KEYS[4])
  own = tostring(id)
  redis.call('HSET', KEYS[3], ARGV[2], id)
  redis.call('HSET', KEYS[2], id, ARGV[3])
  local packed = struct.pack('<I4', id)
  local cap = tonumber(ARGV[4])
  for j = 7 + n, #ARGV do
    local v = (redis.call('HGET', KEYS[1], ARGV[j]) or '') .. packed
    if #v > cap then v = string.sub(v, #v - cap + 1) end
    redis.call('HSET', KEYS[1], ARGV[j], v)
  end
  local ttl = tonumber(ARGV[5])
  if ttl > 0 then
    for k = 1, 4 do redis.call('EXPIRE', KEYS[k], ttl) end
  end
end
out[1] = own or ''
return out
"#;

static SCRIPT: LazyLock<Script> = LazyLock::new(|| Script::new(QUERY_AND_REGISTER));

/// The index families (each has its own keys).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    /// MinHash LSH bands of DXF geometry.
    Geometry,
    /// Multi-index bands of raster perceptual hashes.
    Raster,
}

impl Family {
    pub const ALL: [Family; 2] = [Family::Geometry, Family::Raster];

    pub fn key_part(self) -> &'static str {
        match self {
            Family::Geometry => "geom",
            Family::Raster => "phash",
        }
    }
}

/// The item a query registers (when the request asks for it).
pub struct Registration<'a> {
    pub job_id: &'a str,
    pub record_json: String,
    pub own_buckets: &'a [Vec<u8>],
    pub register: bool,
}

/// What a query found.
#[derive(Debug, Default)]
pub struct Candidates {
    /// `(id, buckets shared)`, most shared first, newest first among equals, capped.
    pub ranked: Vec<(u32, usize)>,
    /// The query's own id (registered now, or by an earlier run of the same job).
    pub own_id: Option<u32>,
    /// Distinct ids seen in the probed buckets before the cap.
    pub touched: usize,
}

#[derive(Clone)]
pub struct BucketIndex {
    conn: ConnectionManager,
    keys: Keys,
    /// Seconds; 0 keeps the index until it is deleted.
    ttl_seconds: u64,
}

impl BucketIndex {
    pub fn new(conn: ConnectionManager, keys: Keys, ttl_seconds: u64) -> Self {
        BucketIndex {
            conn,
            keys,
            ttl_seconds,
        }
    }

    /// A handle on the index's Redis connection (for tools that read the keys directly).
    pub fn connection(&self) -> ConnectionManager {
        self.conn.clone()
    }

    /// `[buckets, items, jobs, seq]` of one tenant and family.
    pub fn family_keys(keys: &Keys, tenant: &str, family: Family) -> [String; 4] {
        let base = format!("{}:dedup:{tenant}:{}", keys.prefix(), family.key_part());
        ["buckets", "items", "jobs", "seq"].map(|k| format!("{base}:{k}"))
    }

    /// Reads the probed buckets and registers the item, in one atomic call.
    pub async fn query(
        &self,
        tenant: &str,
        family: Family,
        probes: &[Vec<u8>],
        reg: &Registration<'_>,
    ) -> Result<Candidates, redis::RedisError> {
        let mut script = SCRIPT.prepare_invoke();
        for k in Self::family_keys(&self.keys, tenant, family) {
            script.key(k);
        }
        script
            .arg(if reg.register { "1" } else { "0" })
            .arg(reg.job_id)
            .arg(&reg.record_json)
            .arg(MAX_IDS_PER_BUCKET * 4)
            .arg(self.ttl_seconds)
            .arg(probes.len());
        for p in probes {
            script.arg(p.as_slice());
        }
        for b in reg.own_buckets {
            script.arg(b.as_slice());
        }
        let mut conn = self.conn.clone();
        let reply: Vec<Vec<u8>> = script.invoke_async(&mut conn).await?;
        let own_id = reply
            .first()
            .and_then(|b| std::str::from_utf8(b).ok())
            .and_then(|s| s.parse().ok());
        Ok(rank(&reply[1.min(reply.len())..], own_id))
    }

    /// The records of the given ids (`None` for an id that is gone).
    pub async fn records(
        &self,
        tenant: &str,
        family: Family,
        ids: &[u32],
    ) -> Result<Vec<Option<String>>, redis::RedisError> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let [_, items, _, _] = Self::family_keys(&self.keys, tenant, family);
        let mut conn = self.conn.clone();
        redis::cmd("HMGET")
            .arg(items)
            .arg(ids)
            .query_async(&mut conn)
            .await
    }
}

/// Unions the ids of the bucket values, counting in how many each appears.
pub fn rank(buckets: &[Vec<u8>], own_id: Option<u32>) -> Candidates {
    let mut hits: HashMap<u32, usize> = HashMap::new();
    for b in buckets {
        for c in b.chunks_exact(4) {
            let id = u32::from_le_bytes([c[0], c[1], c[2], c[3]]);
            if Some(id) != own_id {
                *hits.entry(id).or_default() += 1;
            }
        }
    }
    let touched = hits.len();
    let mut ranked: Vec<(u32, usize)> = hits.into_iter().collect();
    ranked.sort_unstable_by(|a, b| b.1.cmp(&a.1).then(b.0.cmp(&a.0)));
    ranked.truncate(MAX_CANDIDATES);
    Candidates {
        ranked,
        own_id,
        touched,
    }
}

/// Deletes every dedup index of a tenant (content hash, geometry, raster); returns the number of
/// keys removed. The key names are fixed, so this is one UNLINK, no scan.
pub async fn delete_tenant(
    conn: &mut ConnectionManager,
    keys: &Keys,
    tenant: &str,
) -> Result<u64, redis::RedisError> {
    let mut all = vec![keys.dedup_index(tenant)];
    for f in Family::ALL {
        all.extend(BucketIndex::family_keys(keys, tenant, f));
    }
    redis::cmd("UNLINK").arg(all).query_async(conn).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(v: &[u32]) -> Vec<u8> {
        v.iter().flat_map(|i| i.to_le_bytes()).collect()
    }

    #[test]
    fn rank_counts_shared_buckets_and_drops_the_query_itself() {
        let c = rank(
            &[ids(&[1, 2, 7]), ids(&[2, 7]), ids(&[2]), Vec::new()],
            Some(7),
        );
        assert_eq!(c.ranked, vec![(2, 3), (1, 1)]);
        assert_eq!((c.touched, c.own_id), (2, Some(7)));
    }

    #[test]
    fn rank_is_capped() {
        let many: Vec<u32> = (0..(MAX_CANDIDATES as u32 * 2)).collect();
        let c = rank(&[ids(&many)], None);
        assert_eq!(c.ranked.len(), MAX_CANDIDATES);
        assert_eq!(c.touched, MAX_CANDIDATES * 2);
        assert_eq!(c.ranked[0].0, MAX_CANDIDATES as u32 * 2 - 1, "newest first");
    }
}
