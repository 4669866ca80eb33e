//! The drain observer: how many legacy (`file_bytes_b64`-carrying) payloads are still in Redis,
//! and when the last one can expire.
//!
//! It walks `{prefix}:payload:*` with an incremental `SCAN` (never `KEYS`) in bounded batches,
//! each step run inside Redis together with the check (so neither key names nor payload bodies
//! cross the network), in Lua calls bounded in bytes examined that read values in `GETRANGE`
//! windows only, so no single call holds Redis for long. The same kind of check over `{prefix}:active`
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

/// Keys per SCAN step and per server-side Lua check. A check of one key costs Redis a few
/// microseconds (more for a legacy one), so a call of 200 keys stays within a few milliseconds.
pub const SCAN_BATCH: usize = 200;

/// Bytes of a value read per `GETRANGE` window; a value of at most two windows is read whole. Above
/// a file_ref-only payload's length (about 700 bytes; a longer `file_ref` or request fits too), so
/// one window decides it; a legacy payload's member name sits in its first few hundred bytes.
pub const WINDOW_BYTES: u64 = 2048;

/// Bytes one Lua call examines before it stops and returns where it stopped (the Rust side
/// continues the batch from there in the next call), so no call holds Redis long: copying and
/// searching 1 MiB takes well under a millisecond; the per-key commands of a batch cost more.
pub const CALL_BUDGET_BYTES: u64 = 1024 * 1024;

/// `contract::payload::is_legacy_payload` in Lua, for the checks below: a `"file_bytes_b64"`
/// member whose value is a non-empty string, found in the text (no JSON decode). Unlike the Rust
/// definition it would also count such a member nested in another object, which no producer
/// writes. `tests/local/drain_redis.rs` runs both on one table of payloads, small and large.
///
/// Every value is first read as its first window only (`GETRANGE 0 W-1`): a shorter answer is
/// the whole value, so a small payload costs that one call (a plain search for the name, then an
/// anchored match after it). A value is never copied whole. A large payload is large because of
/// its base64, which directly follows the member name, so the name sits in the first window (the
/// producers write few small members before it) or in the last one (a large other member comes
/// first and the base64 is small): those two windows decide almost every large legacy payload.
/// Otherwise the middle is scanned in further windows overlapping by the name's length less one,
/// resumable across calls (`examine` returns where to go on). After a name found at a window's
/// end, a whitespace run longer than [`TAIL`] before the value counts as legacy (no producer
/// writes one; the drain then waits rather than finishes early).
const EXAMINE: &str = r#"
local W, BUDGET, TAIL = tonumber(ARGV[3]), tonumber(ARGV[4]), 256
local NAME = '"file_bytes_b64"'
local OVERLAP = #NAME - 1
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
-- The first step on `key`: its first window, and for a larger value its last one.
local function examine_start(key)
  local head = redis.call('GETRANGE', key, 0, W - 1)
  if #head == 0 then
    return (redis.call('EXISTS', key) == 1) and 'plain' or 'missing', 0
  end
  local hit, n = window_legacy(key, head, 0)
  local bytes = #head + n
  if hit then return 'legacy', bytes end
  if #head < W then return 'plain', bytes end
  local len = redis.call('STRLEN', key)
  if len <= 2 * W then
    hit, n = read(key, W - OVERLAP, len)
    return hit and 'legacy' or 'plain', bytes + n
  end
  hit, n = read(key, len - W, len)
  bytes = bytes + n
  if hit then return 'legacy', bytes end
  return nil, bytes, W - OVERLAP
end
-- One step on `key` from `off` (0: not started): verdict 'missing' | 'legacy' | 'plain', or nil
-- with the offset to go on from; and the bytes examined.
local function examine(key, off)
  if off == 0 then return examine_start(key) end
  local stop = redis.call('STRLEN', key) - W + OVERLAP
  if off >= stop then return 'plain', 0 end
  local to = math.min(off + W, stop)
  local hit, n = read(key, off, to)
  if hit then return 'legacy', n end
  if to == stop then return 'plain', n end
  return nil, n, to - OVERLAP
end
-- Walks `list` from `idx` (1-based) at offset `off` until done or BUDGET bytes examined,
-- calling decided(key, verdict) per decided key; returns bytes, next index, next offset.
-- `keep` collects up to ARGV[5] names of the keys the check counts.
local names, KEEP = {}, tonumber(ARGV[5])
local function keep(key)
  if #names < KEEP then names[#names + 1] = key end
end
local function walk(list, idx, off, decided)
  local bytes = 0
  while idx <= #list and bytes < BUDGET do
    local verdict, n, next_off = examine(list[idx], off)
    bytes = bytes + n
    if verdict then
      decided(list[idx], verdict)
      idx, off = idx + 1, 0
    else
      off = next_off
    end
  end
  return bytes, idx, off
end
"#;

/// The legacy count ([`EXAMINE`] first): `count_legacy` as the walk's `decided`.
const LEGACY: &str = r#"
local legacy, no_expiry, max_pttl = 0, 0, -1
local function count_legacy(key, verdict)
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
end
"#;

/// Lua check of the payload keys in KEYS from ARGV[1] at offset ARGV[2] ([`LEGACY`] first).
/// Returns {legacy, legacy_without_expiry, max_legacy_pttl, bytes, next_index, next_offset, names}.
const CHECK_BATCH: &str = r#"
local bytes, idx, off = walk(KEYS, tonumber(ARGV[1]), tonumber(ARGV[2]), count_legacy)
return {legacy, no_expiry, max_pttl, bytes, idx, off, names}
"#;

/// Lua full-scan step ([`LEGACY`] first): one `SCAN` step (cursor ARGV[6], pattern ARGV[7],
/// COUNT ARGV[8]) inside Redis, then the check of the keys it returned, so key names never
/// cross the network. Returns {legacy, legacy_without_expiry, max_legacy_pttl, bytes,
/// next_offset, names, next_cursor, keys_returned, rest}: `rest` are the keys the byte budget
/// left (the first of them examined up to next_offset), for [`CHECK_BATCH`] to finish.
const SCAN_CHECK: &str = r#"
local page = redis.call('SCAN', ARGV[6], 'MATCH', ARGV[7], 'COUNT', ARGV[8])
local list = page[2]
local bytes, idx, off = walk(list, 1, 0, count_legacy)
local rest = {}
for i = idx, #list do rest[#rest + 1] = list[i] end
return {legacy, no_expiry, max_pttl, bytes, off, names, page[1], #list, rest}
"#;

/// Lua check of the active set ([`EXAMINE`] first): counts active jobs whose payload exists and
/// is not legacy. KEYS: payload keys of the active jobs. Returns the same shape as
/// [`CHECK_BATCH`], the count first.
const CHECK_ACTIVE: &str = r#"
local file_ref_only = 0
local bytes, idx, off = walk(KEYS, tonumber(ARGV[1]), tonumber(ARGV[2]), function(key, verdict)
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

/// Runs `script` (one of the checks above) over `keys`, the first examined from byte `off`, in
/// as many calls as the byte budget needs, keeping the names of up to `keep` counted keys.
async fn check_keys(
    conn: &mut ConnectionManager,
    script: &Script,
    (keys, off): (&[String], u64),
    keep: usize,
    action: &'static str,
) -> Result<BatchCounts, DrainError> {
    let mut counts = BatchCounts::default();
    let (mut idx, mut off) = (1usize, off);
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
        counts.add((first, second, max_pttl, bytes), names);
        (idx, off) = (next_idx, next_off);
    }
    Ok(counts)
}

impl BatchCounts {
    /// Adds one Lua call's (count, second count, max PTTL or -1, bytes) and kept names.
    fn add(&mut self, (first, second, max_pttl, bytes): (u64, u64, i64, u64), names: Vec<String>) {
        self.first += first;
        self.second += second;
        self.bytes += bytes;
        self.calls += 1;
        self.names.extend(names);
        if max_pttl >= 0 {
            let m = max_pttl as u64;
            self.max_pttl = Some(self.max_pttl.map_or(m, |x| x.max(m)));
        }
    }
}

/// One [`SCAN_CHECK`] call's answer.
type ScanReply = (
    u64,
    u64,
    i64,
    u64,
    u64,
    Vec<String>,
    u64,
    usize,
    Vec<String>,
);

/// One full-scan step from `cursor`: the keys it returned and their counts (the byte budget's
/// leftover finished by [`CHECK_BATCH`] calls), and the next cursor (0: done).
async fn scan_check_step(
    conn: &mut ConnectionManager,
    (scan, check): (&Script, &Script),
    (pattern, batch, cursor): (&str, usize, u64),
    keep: usize,
) -> Result<(usize, BatchCounts, u64), DrainError> {
    let action = "scanning and checking payload keys";
    let reply: ScanReply = scan
        .prepare_invoke()
        .arg(1)
        .arg(0)
        .arg(WINDOW_BYTES)
        .arg(CALL_BUDGET_BYTES)
        .arg(keep)
        .arg(cursor)
        .arg(pattern)
        .arg(batch)
        .invoke_async(conn)
        .await
        .map_err(|source| DrainError::Redis { action, source })?;
    let (first, second, max_pttl, bytes, off, names, next, returned, rest) = reply;
    let mut counts = BatchCounts::default();
    counts.add((first, second, max_pttl, bytes), names);
    if !rest.is_empty() {
        let left = keep.saturating_sub(counts.names.len());
        let more = check_keys(conn, check, (&rest, off), left, action).await?;
        counts.add((more.first, more.second, -1, more.bytes), more.names);
        counts.calls += more.calls - 1;
        if let Some(m) = more.max_pttl {
            counts.max_pttl = Some(counts.max_pttl.map_or(m, |x| x.max(m)));
        }
    }
    Ok((returned, counts, next))
}

fn legacy_script() -> Script {
    Script::new(&format!("{EXAMINE}{LEGACY}{CHECK_BATCH}"))
}

fn scan_script() -> Script {
    Script::new(&format!("{EXAMINE}{LEGACY}{SCAN_CHECK}"))
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

/// Scans every payload key of `keys`' prefix, about `batch` keys per SCAN step (the step runs
/// inside Redis with the check), keeping the names of the legacy ones when there are at most
/// `keep`.
pub async fn observe_legacy_payloads(
    conn: &mut ConnectionManager,
    keys: &Keys,
    batch: usize,
    keep: usize,
) -> Result<DrainFigures, DrainError> {
    let started = Instant::now();
    let pattern = keys.payload_pattern();
    let scripts = (&scan_script(), &legacy_script());
    let (mut figures, mut found) = (DrainFigures::default(), vec![]);
    let mut cursor = 0;
    loop {
        let left = keep.saturating_sub(found.len());
        let step = (pattern.as_str(), batch.max(1), cursor);
        let (returned, c, next) = scan_check_step(conn, scripts, step, left).await?;
        figures.add(returned, c, &mut found);
        if next == 0 {
            break;
        }
        cursor = next;
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
            (chunk, 0),
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
            .filter(|(_, m)| *m)
            .map(|(id, _)| id.clone())
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
        (&payloads, 0),
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
