//! The drain observer: how many legacy (`file_bytes_b64`-carrying) payloads are still in Redis,
//! and when the last one can expire.
//!
//! It walks `{prefix}:payload:*` with an incremental `SCAN` (never `KEYS`) in bounded batches and
//! runs the check inside Redis with Lua calls bounded in bytes examined, reading large values in
//! `GETRANGE` windows only, so payload bodies never cross the
//! network and no single call holds Redis for long. The same kind of check over `{prefix}:active`
//! tells whether a full rollback would strand file_ref-only jobs. Both can keep the keys they
//! counted, so the next observations re-check only those (`recheck_*`) instead of scanning again.

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
    /// Lua calls made: one per SCAN batch that returned keys, more when a batch's payloads exceed
    /// [`CALL_BUDGET_BYTES`].
    pub batches: u64,
    /// Payload bytes actually examined server-side (read by `GET` or `GETRANGE` windows).
    pub bytes_inspected: u64,
    /// Wall time of the pass.
    pub elapsed: Duration,
    /// The legacy payload keys found, when there were at most the number asked to keep (a
    /// re-check of exactly these keys can then stand in for the next full scans).
    pub found: Option<Vec<String>>,
}

/// Whether the active jobs can be served by old workers (full rollback safety).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ActiveFigures {
    pub active: u64,
    /// Active jobs whose payload lacks `file_bytes_b64` (an old worker would fail them).
    pub file_ref_only: u64,
    /// Their job ids, when there were at most the number asked to keep.
    pub found: Option<Vec<String>>,
}

/// Bytes of a value read per `GETRANGE` window; a value of at most two windows is read whole.
pub const WINDOW_BYTES: u64 = 4096;

/// Bytes one Lua call examines before it stops and returns where it stopped (the Rust side
/// continues the batch from there in the next call), so no call holds Redis long.
pub const CALL_BUDGET_BYTES: u64 = 256 * 1024;

/// `contract::payload::is_legacy_payload` in Lua, for the checks below: a `"file_bytes_b64"`
/// member whose value is a non-empty string, found in the text (no JSON decode). Unlike the Rust
/// definition it would also count such a member nested in another object, which no producer
/// writes. `tests/local/drain_redis.rs` runs both on one table of payloads, small and large.
///
/// A value is never copied whole unless it is small (at most two windows). A large payload is
/// large because of its base64, which directly follows the member name, so the name sits in the
/// first window (the member comes first, or only small members precede it) or in the last one
/// (a large other member comes first and the base64 is small): those two windows decide almost
/// every large legacy payload. Otherwise the middle is scanned in further windows overlapping by
/// the name's length less one, resumable across calls (`examine` returns where to go on).
/// After a name found in a window, a whitespace run longer than [`TAIL`] before the value
/// counts as legacy (no producer writes one; the drain then waits rather than finishes early).
const EXAMINE: &str = r#"
local W, BUDGET, TAIL = tonumber(ARGV[3]), tonumber(ARGV[4]), 256
local NAME = '"file_bytes_b64"'
local OVERLAP = #NAME - 1
local function is_legacy(v)
  return string.find(v, '"file_bytes_b64"%s*:%s*"[^"]') ~= nil
end
-- Whether a name ending at w[e] (w starts at byte `from` of the value) opens a legacy member.
local function member_at(key, w, e, from)
  if string.find(w, '^%s*:%s*"[^"]', e + 1) then return true, 0 end
  if not string.find(w, '^%s*:?%s*"?$', e + 1) then return false, 0 end
  local c = redis.call('GETRANGE', key, from + e, from + e + TAIL)
  if string.find(c, '^%s*:%s*"[^"]') then return true, #c end
  return #c > TAIL and string.find(c, '^%s*:?%s*"?$') ~= nil, #c
end
-- Whether window w (starting at byte `from`) holds a legacy member; bytes read beyond it.
local function window_legacy(key, w, from)
  local i, extra = 1, 0
  while true do
    local s, e = string.find(w, NAME, i, true)
    if not s then return false, extra end
    local hit, n = member_at(key, w, e, from)
    extra = extra + n
    if hit then return true, extra end
    i = s + 1
  end
end
local function read(key, from, to)
  local w = redis.call('GETRANGE', key, from, to - 1)
  local hit, extra = window_legacy(key, w, from)
  return hit, #w + extra
end
-- One step on `key` from `off` (0: not started): verdict 'missing' | 'legacy' | 'plain', or nil
-- with the offset to go on from; and the bytes examined.
local function examine(key, off)
  local len = redis.call('STRLEN', key)
  if len == 0 then
    return (redis.call('EXISTS', key) == 1) and 'plain' or 'missing', 0
  end
  if len <= 2 * W then
    local v = redis.call('GET', key)
    return is_legacy(v) and 'legacy' or 'plain', #v
  end
  local stop = len - W + OVERLAP
  local bytes = 0
  if off == 0 then
    local hit, n = read(key, 0, W)
    bytes = n
    if hit then return 'legacy', bytes end
    hit, n = read(key, len - W, len)
    bytes = bytes + n
    if hit then return 'legacy', bytes end
    off = W - OVERLAP
    return nil, bytes, off
  end
  if off >= stop then return 'plain', 0 end
  local to = math.min(off + W, stop)
  local hit, n = read(key, off, to)
  if hit then return 'legacy', n end
  if to == stop then return 'plain', n end
  return nil, n, to - OVERLAP
end
-- Walks KEYS from ARGV[1] (1-based) at offset ARGV[2] until done or BUDGET bytes examined,
-- calling decided(key, verdict) per decided key; returns bytes, next index, next offset.
-- `keep` collects up to ARGV[5] names of the keys the check counts.
local names, KEEP = {}, tonumber(ARGV[5])
local function keep(key)
  if #names < KEEP then names[#names + 1] = key end
end
local function walk(decided)
  local idx, off, bytes = tonumber(ARGV[1]), tonumber(ARGV[2]), 0
  while idx <= #KEYS and bytes < BUDGET do
    local verdict, n, next_off = examine(KEYS[idx], off)
    bytes = bytes + n
    if verdict then
      decided(KEYS[idx], verdict)
      idx, off = idx + 1, 0
    else
      off = next_off
    end
  end
  return bytes, idx, off
end
"#;

/// Lua check of payload keys ([`EXAMINE`] first). Returns
/// {legacy, legacy_without_expiry, max_legacy_pttl, bytes, next_index, next_offset, names}.
const CHECK_BATCH: &str = r#"
local legacy, no_expiry, max_pttl = 0, 0, -1
local bytes, idx, off = walk(function(key, verdict)
  if verdict == 'legacy' then
    legacy = legacy + 1
    keep(key)
    local pttl = redis.call('PTTL', key)
    if pttl == -1 then
      no_expiry = no_expiry + 1
    elseif pttl > max_pttl then
      max_pttl = pttl
    end
  end
end)
return {legacy, no_expiry, max_pttl, bytes, idx, off, names}
"#;

/// Lua check of the active set ([`EXAMINE`] first): counts active jobs whose payload exists and
/// is not legacy. KEYS: payload keys of the active jobs. Returns the same shape as
/// [`CHECK_BATCH`], the count first.
const CHECK_ACTIVE: &str = r#"
local file_ref_only = 0
local bytes, idx, off = walk(function(key, verdict)
  if verdict == 'plain' then
    file_ref_only = file_ref_only + 1
    keep(key)
  end
end)
return {file_ref_only, 0, -1, bytes, idx, off, names}
"#;

/// What the Lua calls over one batch of keys found, summed.
#[derive(Debug, Default)]
struct BatchCounts {
    first: u64,
    second: u64,
    max_pttl: Option<u64>,
    bytes: u64,
    calls: u64,
    /// Up to `keep` of the keys counted in `first`.
    names: Vec<String>,
}

/// One Lua call's answer: the counts, where to go on, and the names kept.
type CallReply = (u64, u64, i64, u64, usize, u64, Vec<String>);

/// Runs `script` (one of the checks above) over `keys` in as many calls as the byte budget needs,
/// keeping the names of up to `keep` counted keys.
async fn check_keys(
    conn: &mut ConnectionManager,
    script: &Script,
    keys: &[String],
    keep: usize,
    action: &'static str,
) -> Result<BatchCounts, DrainError> {
    let mut counts = BatchCounts::default();
    let (mut idx, mut off) = (1usize, 0u64);
    while idx <= keys.len() {
        let mut inv = script.prepare_invoke();
        for k in keys {
            inv.key(k);
        }
        inv.arg(idx)
            .arg(off)
            .arg(WINDOW_BYTES)
            .arg(CALL_BUDGET_BYTES)
            .arg(keep.saturating_sub(counts.names.len()));
        let (first, second, max_pttl, bytes, next_idx, next_off, names): CallReply = inv
            .invoke_async(conn)
            .await
            .map_err(|source| DrainError::Redis { action, source })?;
        counts.first += first;
        counts.second += second;
        counts.bytes += bytes;
        counts.calls += 1;
        counts.names.extend(names);
        if max_pttl >= 0 {
            let m = max_pttl as u64;
            counts.max_pttl = Some(counts.max_pttl.map_or(m, |x| x.max(m)));
        }
        (idx, off) = (next_idx, next_off);
    }
    Ok(counts)
}

fn legacy_script() -> Script {
    Script::new(&format!("{EXAMINE}{CHECK_BATCH}"))
}

fn active_script() -> Script {
    Script::new(&format!("{EXAMINE}{CHECK_ACTIVE}"))
}

impl DrainFigures {
    /// Adds one batch's counts (`found` is filled in at the end of the pass).
    fn add(&mut self, scanned: usize, c: BatchCounts, found: &mut Vec<String>) {
        self.scanned += scanned as u64;
        self.legacy += c.first;
        self.legacy_without_expiry += c.second;
        self.bytes_inspected += c.bytes;
        self.batches += c.calls;
        if let Some(m) = c.max_pttl {
            self.max_legacy_pttl_ms = Some(self.max_legacy_pttl_ms.map_or(m, |x| x.max(m)));
        }
        found.extend(c.names);
    }

    fn finish(mut self, started: Instant, found: Vec<String>, keep: usize) -> Self {
        self.elapsed = started.elapsed();
        self.found = (self.legacy as usize <= keep).then_some(found);
        self
    }
}

/// Scans every payload key of `keys`' prefix, `batch` keys per SCAN step, keeping the names of
/// the legacy ones when there are at most `keep`.
pub async fn observe_legacy_payloads(
    conn: &mut ConnectionManager,
    keys: &Keys,
    batch: usize,
    keep: usize,
) -> Result<DrainFigures, DrainError> {
    let started = Instant::now();
    let pattern = keys.payload_pattern();
    let script = legacy_script();
    let (mut figures, mut found) = (DrainFigures::default(), vec![]);
    let mut scan = Scan::keys(&pattern, batch);
    while let Some(batch) = scan
        .next_batch(conn)
        .await
        .map_err(|source| DrainError::Redis {
            action: "scanning payload keys",
            source,
        })?
    {
        let left = keep.saturating_sub(found.len());
        let c = check_keys(conn, &script, &batch, left, "checking a batch of payloads").await?;
        figures.add(batch.len(), c, &mut found);
    }
    Ok(figures.finish(started, found, keep))
}

/// Checks again only `found` (the legacy keys of an earlier full scan), `batch` keys per Lua
/// walk: the same check as the full scan; keys that vanished or lost their `file_bytes_b64`
/// drop out of the returned `found`.
pub async fn recheck_legacy_payloads(
    conn: &mut ConnectionManager,
    found: &[String],
    batch: usize,
) -> Result<DrainFigures, DrainError> {
    let started = Instant::now();
    let script = legacy_script();
    let (mut figures, mut still) = (DrainFigures::default(), vec![]);
    for chunk in found.chunks(batch.max(1)) {
        let c = check_keys(
            conn,
            &script,
            chunk,
            chunk.len(),
            "re-checking legacy payloads",
        )
        .await?;
        figures.add(chunk.len(), c, &mut still);
    }
    Ok(figures.finish(started, still, found.len()))
}

/// Counts active jobs whose payload an old worker could not read, keeping their ids when there
/// are at most `keep`.
pub async fn observe_active_jobs(
    conn: &mut ConnectionManager,
    keys: &Keys,
    batch: usize,
    keep: usize,
) -> Result<ActiveFigures, DrainError> {
    let script = active_script();
    let mut figures = ActiveFigures::default();
    let mut found = vec![];
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
        let left = keep.saturating_sub(found.len());
        let c = check_active(conn, &script, keys, &ids, left).await?;
        figures.active += ids.len() as u64;
        figures.file_ref_only += c.first;
        found.extend(c.names);
    }
    figures.found = (figures.file_ref_only as usize <= keep).then_some(found);
    Ok(figures)
}

/// Checks again only the job ids `found` (the file_ref-only active jobs of an earlier full
/// check): those still in `{prefix}:active`, in batches of `batch` (one pipelined `SISMEMBER`
/// round trip, then the payload check).
pub async fn recheck_active_jobs(
    conn: &mut ConnectionManager,
    keys: &Keys,
    found: &[String],
    batch: usize,
) -> Result<ActiveFigures, DrainError> {
    let script = active_script();
    let active = keys.active();
    let mut figures = ActiveFigures::default();
    let mut still = vec![];
    for chunk in found.chunks(batch.max(1)) {
        let mut pipe = redis::pipe();
        for id in chunk {
            pipe.sismember(&active, id);
        }
        let member: Vec<bool> =
            pipe.query_async(conn)
                .await
                .map_err(|source| DrainError::Redis {
                    action: "re-checking active jobs",
                    source,
                })?;
        let ids: Vec<String> = chunk
            .iter()
            .zip(member)
            .filter_map(|(id, m)| m.then(|| id.clone()))
            .collect();
        let c = check_active(conn, &script, keys, &ids, ids.len()).await?;
        figures.active += ids.len() as u64;
        figures.file_ref_only += c.first;
        still.extend(c.names);
    }
    figures.found = Some(still);
    Ok(figures)
}

/// The active check over the payloads of `ids`; the names kept are job ids again.
async fn check_active(
    conn: &mut ConnectionManager,
    script: &Script,
    keys: &Keys,
    ids: &[String],
    keep: usize,
) -> Result<BatchCounts, DrainError> {
    let payloads: Vec<String> = ids.iter().map(|id| keys.payload(id)).collect();
    let mut c = check_keys(
        conn,
        script,
        &payloads,
        keep,
        "checking active job payloads",
    )
    .await?;
    let prefix = keys.payload("");
    c.names = c
        .names
        .iter()
        .filter_map(|k| k.strip_prefix(&prefix).map(str::to_string))
        .collect();
    Ok(c)
}
