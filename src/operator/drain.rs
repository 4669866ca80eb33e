//! The drain observer: how many legacy (`file_bytes_b64`-carrying) payloads are still in Redis,
//! and when the last one can expire.
//!
//! It walks `{prefix}:payload:*` with an incremental `SCAN` (never `KEYS`) in bounded batches and
//! runs the check inside Redis with a Lua script per batch, so payload bodies never cross the
//! network and no single call holds Redis for long. The same kind of check over `{prefix}:active`
//! tells whether a full rollback would strand file_ref-only jobs.

use std::time::{Duration, Instant};

use redis::aio::ConnectionManager;
use redis::Script;

use crate::contract::keys::Keys;
use crate::contract::scan::Scan;

#[derive(Debug, thiserror::Error)]
pub enum DrainError {
    #[error("redis unreachable or failing while {action}: {source}")]
    Redis {
        action: &'static str,
        #[source]
        source: redis::RedisError,
    },
}

/// What one full pass over the payload keys found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DrainFigures {
    /// Payload keys examined.
    pub scanned: u64,
    /// Payloads that carry a non-empty `file_bytes_b64`.
    pub legacy: u64,
    /// Legacy payloads without an expiry: they would never drain by themselves.
    pub legacy_without_expiry: u64,
    /// The largest remaining TTL among legacy payloads (ms); `None` when there are none with one.
    pub max_legacy_pttl_ms: Option<u64>,
    /// Lua calls made (one per SCAN batch that returned keys).
    pub batches: u64,
    /// Payload bytes inspected server-side (what would have crossed the network otherwise).
    pub bytes_inspected: u64,
    /// Wall time of the pass.
    pub elapsed: Duration,
}

/// Whether the active jobs can be served by old workers (full rollback safety).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ActiveFigures {
    pub active: u64,
    /// Active jobs whose payload lacks `file_bytes_b64` (an old worker would fail them).
    pub file_ref_only: u64,
}

/// `contract::payload::is_legacy_payload` in Lua, for the checks below: a `"file_bytes_b64"`
/// member whose value is a non-empty string, found in the text (no JSON decode, so the cost per
/// payload stays a scan of its text, stopping at the member). Unlike the Rust definition it would
/// also count such a member nested in another object, which no producer writes.
/// `tests/local/drain_redis.rs` runs both on one table of payloads.
const IS_LEGACY: &str = r#"
local function is_legacy(v)
  return string.find(v, '"file_bytes_b64"%s*:%s*"[^"]') ~= nil
end
"#;

/// Lua check of a batch of payload keys ([`IS_LEGACY`] first). Returns
/// {legacy, legacy_without_expiry, max_legacy_pttl, bytes}.
const CHECK_BATCH: &str = r#"
local legacy, no_expiry, max_pttl, bytes = 0, 0, -1, 0
for _, key in ipairs(KEYS) do
  local v = redis.call('GET', key)
  if v then
    bytes = bytes + #v
    if is_legacy(v) then
      legacy = legacy + 1
      local pttl = redis.call('PTTL', key)
      if pttl == -1 then
        no_expiry = no_expiry + 1
      elseif pttl > max_pttl then
        max_pttl = pttl
      end
    end
  end
end
return {legacy, no_expiry, max_pttl, bytes}
"#;

/// Lua check of the active set ([`IS_LEGACY`] first): counts active jobs whose payload exists and
/// is not legacy. KEYS: payload keys of the active jobs.
const CHECK_ACTIVE: &str = r#"
local file_ref_only = 0
for _, key in ipairs(KEYS) do
  local v = redis.call('GET', key)
  if v and not is_legacy(v) then
    file_ref_only = file_ref_only + 1
  end
end
return file_ref_only
"#;

/// Scans every payload key of `keys`' prefix, `batch` keys per SCAN step.
pub async fn observe_legacy_payloads(
    conn: &mut ConnectionManager,
    keys: &Keys,
    batch: usize,
) -> Result<DrainFigures, DrainError> {
    let started = Instant::now();
    let pattern = keys.payload_pattern();
    let script = Script::new(&format!("{IS_LEGACY}{CHECK_BATCH}"));
    let mut figures = DrainFigures::default();
    let mut scan = Scan::keys(&pattern, batch);
    while let Some(found) = scan
        .next_batch(conn)
        .await
        .map_err(|source| DrainError::Redis {
            action: "scanning payload keys",
            source,
        })?
    {
        let mut inv = script.prepare_invoke();
        for k in &found {
            inv.key(k);
        }
        let (legacy, no_expiry, max_pttl, bytes): (u64, u64, i64, u64) = inv
            .invoke_async(conn)
            .await
            .map_err(|source| DrainError::Redis {
                action: "checking a batch of payloads",
                source,
            })?;
        figures.scanned += found.len() as u64;
        figures.legacy += legacy;
        figures.legacy_without_expiry += no_expiry;
        figures.bytes_inspected += bytes;
        figures.batches += 1;
        if max_pttl >= 0 {
            let m = max_pttl as u64;
            figures.max_legacy_pttl_ms = Some(figures.max_legacy_pttl_ms.map_or(m, |x| x.max(m)));
        }
    }
    figures.elapsed = started.elapsed();
    Ok(figures)
}

/// Counts active jobs whose payload an old worker could not read.
pub async fn observe_active_jobs(
    conn: &mut ConnectionManager,
    keys: &Keys,
    batch: usize,
) -> Result<ActiveFigures, DrainError> {
    let script = Script::new(&format!("{IS_LEGACY}{CHECK_ACTIVE}"));
    let mut figures = ActiveFigures::default();
    let active = keys.active();
    let mut scan = Scan::set_members(&active, batch);
    while let Some(ids) = scan
        .next_batch(conn)
        .await
        .map_err(|source| DrainError::Redis {
            action: "scanning active jobs",
            source,
        })?
    {
        let mut inv = script.prepare_invoke();
        for id in &ids {
            inv.key(keys.payload(id));
        }
        let n: u64 = inv
            .invoke_async(conn)
            .await
            .map_err(|source| DrainError::Redis {
                action: "checking active job payloads",
                source,
            })?;
        figures.active += ids.len() as u64;
        figures.file_ref_only += n;
    }
    Ok(figures)
}
