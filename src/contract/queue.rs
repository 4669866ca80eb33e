//! ARQ queue operations on Redis, speaking the same protocol as the Python `arq` library so our
//! workers and Python workers can share one queue.
//!
//! ARQ uses WATCH/MULTI optimistic transactions; we use Lua scripts, which give the same
//! all-or-nothing effect without connection-bound WATCH state (our connection is multiplexed).
//! A claim is one script call over a bounded window of the queue from a per-consumer cursor, a
//! finish one more: two round trips per job whatever the queue depth and the concurrency.

use redis::aio::ConnectionManager;
use redis::{AsyncCommands, Script};

use super::arq::{JobRecord, Outcome, ResultRecord};
use super::keys::arq as arq_keys;

/// ARQ's `arq:abort` sorted set (jobs asked to abort); cleaned up when a job finishes.
const ABORT_SET: &str = "arq:abort";
/// ARQ keeps the retry counter this long (seconds).
const RETRY_KEY_TTL_S: i64 = 88_400;

#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    #[error("redis error on queue {queue}: {source}")]
    Redis {
        queue: String,
        #[source]
        source: redis::RedisError,
    },
    #[error("unexpected claim script reply on queue {queue}: {message}")]
    BadReply { queue: String, message: String },
}

/// Tunables of the consumer side, with ARQ's defaults.
#[derive(Debug, Clone)]
pub struct QueueSettings {
    /// A job whose try number exceeds this is failed with "max N retries exceeded" (ARQ: 5).
    pub max_tries: i64,
    /// Lifetime of `arq:in-progress:{id}`: ARQ uses the job timeout + 10 s.
    pub in_progress_ttl_ms: u64,
    /// How long `arq:result:{id}` is kept (ARQ: 3600 s).
    pub keep_result_ms: u64,
    /// How long a claim cursor may skip the head of the queue before claims start from the
    /// head again (see [`ClaimCursor`]).
    pub cursor_max_age: std::time::Duration,
}

impl QueueSettings {
    pub fn for_job_timeout(job_timeout_seconds: u64) -> Self {
        QueueSettings {
            max_tries: 5,
            in_progress_ttl_ms: (job_timeout_seconds + 10) * 1000,
            keep_result_ms: 3_600_000,
            cursor_max_age: CURSOR_MAX_AGE,
        }
    }
}

impl QueueSettings {
    /// ARQ fails a job whose try number is over `max_tries` instead of running it.
    pub fn exceeded(&self, job_try: i64) -> bool {
        job_try > self.max_tries
    }
}

/// A job this consumer now owns (its `arq:in-progress` key is ours until it expires).
#[derive(Debug, Clone)]
pub struct ClaimedJob {
    pub job_id: String,
    pub record: ClaimedRecord,
    /// This run's try number (1 on the first run).
    pub job_try: i64,
    /// The queue score (ms) the job was claimed at.
    pub score: i64,
}

/// The `arq:job:{id}` record found at claim time.
#[derive(Debug, Clone)]
pub enum ClaimedRecord {
    Found(JobRecord),
    /// The record had expired: ARQ fails such a job with "job expired".
    Expired,
    /// The record cannot be used; the job must be failed with this reason.
    Undecodable(RecordProblem),
}

/// Why a claimed record cannot be used.
#[derive(Debug, Clone, thiserror::Error)]
pub enum RecordProblem {
    #[error("job record is {bytes} bytes, over the limit of {limit} bytes; it was not read")]
    TooLarge { bytes: u64, limit: u64 },
    #[error("job record key holds a Redis {0}, not a string")]
    WrongType(String),
    #[error("cannot decode job record: {0}")]
    Codec(String),
}

impl ClaimedRecord {
    pub fn found(&self) -> Option<&JobRecord> {
        match self {
            ClaimedRecord::Found(r) => Some(r),
            _ => None,
        }
    }

    /// Pure: the claim script's reply fields to a record.
    fn from_reply(raw: &[u8], problem: &str) -> Self {
        if problem == "none" {
            return ClaimedRecord::Expired;
        }
        if let Some(n) = problem.strip_prefix("size:") {
            return ClaimedRecord::Undecodable(RecordProblem::TooLarge {
                bytes: n.parse().unwrap_or(u64::MAX),
                limit: MAX_RECORD_BYTES,
            });
        }
        if let Some(t) = problem.strip_prefix("type:") {
            return ClaimedRecord::Undecodable(RecordProblem::WrongType(t.to_string()));
        }
        match JobRecord::decode(raw) {
            Ok(r) => ClaimedRecord::Found(r),
            Err(e) => ClaimedRecord::Undecodable(RecordProblem::Codec(e.to_string())),
        }
    }
}

/// One named ARQ queue.
#[derive(Clone)]
pub struct ArqQueue {
    conn: ConnectionManager,
    name: String,
}

const ENQUEUE: &str = r#"
-- KEYS: job, result, queue. ARGV: job_id, record, expires_ms, score
if redis.call('EXISTS', KEYS[1], KEYS[2]) > 0 then return 0 end
redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
redis.call('ZADD', KEYS[3], ARGV[4], ARGV[1])
return 1
"#;

/// Largest `arq:job:{id}` record a claim reads (a dedup2d record is about 100 bytes). A larger
/// one is never moved: the claim answers with its size and the job is failed.
pub const MAX_RECORD_BYTES: u64 = 1 << 20;

/// How many queued ids one claim call looks at: the bound on the work a claim does inside Redis.
pub const CLAIM_WINDOW: usize = 32;
/// Windows one `claim_next` tries before it gives up until the next poll.
const CLAIM_WINDOWS_PER_CALL: usize = 4;
/// How long a cursor may skip the head of the queue before a claim starts from the head again
/// (a job handed back, or whose holder died, is behind the cursor): a second.
const CURSOR_MAX_AGE: std::time::Duration = std::time::Duration::from_secs(1);

const CLAIM: &str = r#"
-- KEYS: queue. ARGV: now_ms, in_progress_ttl_ms, retry_ttl_s, max_record_bytes, job prefix,
-- in-progress prefix, retry prefix, then either 'id' and a job id (claim that job), or
-- 'window', the cursor's id and score, the window size and how many jobs to claim at most.
-- A job is taken with SET NX PX on its in-progress key (what ARQ's WATCH/MULTI achieves), its
-- retry counter is incremented, and its record read unless it is over the size limit.
-- Reply: {state, last_id, last_score, then 5 fields per job taken: id, record, try, score,
-- problem}. state is 'end' when nothing due is left past the last id examined, else 'more';
-- problem is '' (record read), 'none' (expired), 'size:<n>' (too large, not read) or
-- 'type:<t>' (not a string). Never raises on a job's own keys, so a hostile record cannot
-- stop claiming for the whole queue. The per-job keys are derived here, not declared: ARQ
-- queues live on one Redis, not a cluster.
local now, ttl, retry_ttl, max_bytes = tonumber(ARGV[1]), ARGV[2], ARGV[3], tonumber(ARGV[4])
local out = {'more', '', ''}
local function take(id, score)
  if not redis.call('SET', ARGV[6] .. id, '1', 'NX', 'PX', ttl) then return false end
  local jk, job, problem = ARGV[5] .. id, '', ''
  local n = redis.pcall('STRLEN', jk)
  if type(n) == 'table' then problem = 'type:' .. redis.call('TYPE', jk).ok
  elseif n == 0 and redis.call('EXISTS', jk) == 0 then problem = 'none'
  elseif n > max_bytes then problem = 'size:' .. n
  else job = redis.call('GET', jk) end
  local rk = ARGV[7] .. id
  local try = redis.pcall('INCR', rk)
  if type(try) == 'table' then
    redis.call('DEL', rk)
    try = redis.call('INCR', rk)
  end
  redis.call('EXPIRE', rk, retry_ttl)
  for _, v in ipairs({id, job, try, score, problem}) do out[#out + 1] = v end
  return true
end
if ARGV[8] == 'id' then
  out[1] = 'end'
  local score = redis.call('ZSCORE', KEYS[1], ARGV[9])
  if score and tonumber(score) <= now then take(ARGV[9], score) end
  return out
end
local start, size, want = 0, tonumber(ARGV[11]), tonumber(ARGV[12])
if ARGV[9] ~= '' then
  local rank = redis.call('ZRANK', KEYS[1], ARGV[9])
  if rank then start = rank + 1
  else start = redis.call('ZCOUNT', KEYS[1], '-inf', '(' .. ARGV[10]) end
end
local window = redis.call('ZRANGE', KEYS[1], start, start + size - 1, 'WITHSCORES')
local taken = 0
for i = 1, #window, 2 do
  if tonumber(window[i + 1]) > now then
    out[1] = 'end'
    return out
  end
  out[2], out[3] = window[i], window[i + 1]
  if take(window[i], window[i + 1]) then
    taken = taken + 1
    if taken >= want then return out end
  end
end
if #window < 2 * size then out[1] = 'end' end
return out
"#;

const COMPLETE: &str = r#"
-- KEYS: retry, in_progress, job, abort set, queue, result. ARGV: job_id, result, keep_result_ms
redis.call('DEL', KEYS[1], KEYS[2], KEYS[3])
redis.call('ZREM', KEYS[4], ARGV[1])
redis.call('ZREM', KEYS[5], ARGV[1])
if tonumber(ARGV[3]) > 0 then redis.call('SET', KEYS[6], ARGV[2], 'PX', ARGV[3]) end
return 1
"#;

static CLAIM_SCRIPT: std::sync::LazyLock<Script> = std::sync::LazyLock::new(|| Script::new(CLAIM));
static COMPLETE_SCRIPT: std::sync::LazyLock<Script> =
    std::sync::LazyLock::new(|| Script::new(COMPLETE));

/// Where a consumer's next claim starts in the queue: just after the last job it claimed (or
/// the last held id it saw), so the ids ahead of it, held by running jobs, are not looked at
/// again on every claim. It goes back to the head when the queue past it has nothing due and
/// at least every `cursor_max_age` ([`QueueSettings`]), so a job handed back behind it waits
/// at most that long.
#[derive(Debug, Clone, Default)]
pub struct ClaimCursor {
    after: Option<(String, String)>,
    since: Option<std::time::Instant>,
}

impl ClaimCursor {
    fn at_head(&self) -> bool {
        self.after.is_none()
    }

    fn reset(&mut self) {
        self.after = None;
        self.since = None;
    }

    fn advance(&mut self, id: String, score: String) {
        self.since.get_or_insert_with(std::time::Instant::now);
        self.after = Some((id, score));
    }

    /// Pure: goes back to the head once the cursor is older than `max_age` at `now`.
    fn expire(&mut self, now: std::time::Instant, max_age: std::time::Duration) {
        if self.since.is_some_and(|t| now.duration_since(t) >= max_age) {
            self.reset();
        }
    }
}

/// One claim call's answer.
struct ClaimReply {
    /// Nothing due is left past `last`.
    exhausted: bool,
    /// The last id examined and its score: where the next window starts.
    last: Option<(String, String)>,
    jobs: Vec<ClaimedJob>,
}

impl ClaimReply {
    /// Pure: the claim script's reply.
    fn parse(reply: &[redis::Value]) -> Result<Self, String> {
        use redis::FromRedisValue;
        let text = |v: &redis::Value| String::from_redis_value_ref(v).map_err(|e| e.to_string());
        let [state, last_id, last_score, jobs @ ..] = reply else {
            return Err(format!("short claim reply {reply:?}"));
        };
        if jobs.len() % 5 != 0 {
            return Err(format!("claim reply of {} fields", reply.len()));
        }
        let last_id = text(last_id)?;
        let jobs = jobs
            .chunks_exact(5)
            .map(|f| {
                let raw = Vec::<u8>::from_redis_value_ref(&f[1]).map_err(|e| e.to_string())?;
                // The try number is the count of real claims (`arq:retry:{id}`); a `t`
                // written in the record is not trusted, so a record cannot make a job that
                // never ran look used up.
                Ok(ClaimedJob {
                    job_id: text(&f[0])?,
                    record: ClaimedRecord::from_reply(&raw, &text(&f[4])?),
                    job_try: i64::from_redis_value_ref(&f[2]).map_err(|e| e.to_string())?,
                    score: text(&f[3])?.parse::<f64>().unwrap_or(0.0) as i64,
                })
            })
            .collect::<Result<_, String>>()?;
        Ok(ClaimReply {
            exhausted: text(state)? == "end",
            last: (!last_id.is_empty())
                .then(|| Ok::<_, String>((last_id, text(last_score)?)))
                .transpose()?,
            jobs,
        })
    }
}

impl ArqQueue {
    pub fn new(conn: ConnectionManager, name: impl Into<String>) -> Self {
        ArqQueue {
            conn,
            name: name.into(),
        }
    }

    pub(crate) fn name(&self) -> &str {
        &self.name
    }

    fn err(&self, source: redis::RedisError) -> QueueError {
        QueueError::Redis {
            queue: self.name.clone(),
            source,
        }
    }

    /// Enqueues like `ArqRedis.enqueue_job(..., _job_id=id, _expires=...)`: refused (returns
    /// `false`) when `arq:job:{id}` or `arq:result:{id}` already exists.
    pub async fn enqueue(
        &self,
        job_id: &str,
        record: &JobRecord,
        expires_ms: u64,
    ) -> Result<bool, QueueError> {
        let mut conn = self.conn.clone();
        let added: i64 = Script::new(ENQUEUE)
            .key(arq_keys::job(job_id))
            .key(arq_keys::result(job_id))
            .key(&self.name)
            .arg(job_id)
            .arg(record.encode())
            .arg(expires_ms.max(1))
            .arg(record.enqueue_time_ms)
            .invoke_async(&mut conn)
            .await
            .map_err(|e| self.err(e))?;
        Ok(added == 1)
    }

    /// One call of the claim script with the arguments every mode shares, then `mode`'s.
    async fn claim_call(
        &self,
        now_ms: i64,
        settings: &QueueSettings,
        mode: &[&str],
    ) -> Result<ClaimReply, QueueError> {
        let mut conn = self.conn.clone();
        let mut call = CLAIM_SCRIPT.key(&self.name);
        call.arg(now_ms)
            .arg(settings.in_progress_ttl_ms.max(1))
            .arg(RETRY_KEY_TTL_S)
            .arg(MAX_RECORD_BYTES)
            .arg(arq_keys::job(""))
            .arg(arq_keys::in_progress(""))
            .arg(arq_keys::retry(""))
            .arg(mode);
        let reply: Vec<redis::Value> = call
            .invoke_async(&mut conn)
            .await
            .map_err(|e| self.err(e))?;
        ClaimReply::parse(&reply).map_err(|message| QueueError::BadReply {
            queue: self.name.clone(),
            message,
        })
    }

    /// Claims job `job_id`: sets `arq:in-progress:{id}` only when it is absent and the id is
    /// still queued and due, then bumps the retry counter. `None` when another consumer has
    /// it or it is not due.
    pub async fn claim(
        &self,
        job_id: &str,
        now_ms: i64,
        settings: &QueueSettings,
    ) -> Result<Option<ClaimedJob>, QueueError> {
        let reply = self.claim_call(now_ms, settings, &["id", job_id]).await?;
        Ok(reply.jobs.into_iter().next())
    }

    /// Claims the oldest due job past `cursor` that nobody holds (see [`Self::claim_batch`]).
    pub async fn claim_next(
        &self,
        now_ms: i64,
        settings: &QueueSettings,
        cursor: &mut ClaimCursor,
    ) -> Result<Option<ClaimedJob>, QueueError> {
        Ok(self.claim_batch(now_ms, settings, cursor, 1).await?.pop())
    }

    /// Claims up to `want` of the oldest due jobs past `cursor` that nobody holds, in one round
    /// trip that looks at [`CLAIM_WINDOW`] ids at most, in the common case. When a window
    /// yields fewer, the next one is tried, at most [`CLAIM_WINDOWS_PER_CALL`] in all; fewer
    /// (or none) then, or when nothing is due: the caller polls again later, and the cursor
    /// keeps its place.
    pub async fn claim_batch(
        &self,
        now_ms: i64,
        settings: &QueueSettings,
        cursor: &mut ClaimCursor,
        want: usize,
    ) -> Result<Vec<ClaimedJob>, QueueError> {
        if want == 0 {
            return Ok(Vec::new());
        }
        cursor.expire(std::time::Instant::now(), settings.cursor_max_age);
        let window = CLAIM_WINDOW.to_string();
        let mut jobs = Vec::new();
        for _ in 0..CLAIM_WINDOWS_PER_CALL {
            let from_head = cursor.at_head();
            let (id, score) = cursor.after.clone().unwrap_or_default();
            let left = (want - jobs.len()).to_string();
            let mode = ["window", &id, &score, &window, &left];
            let reply = self.claim_call(now_ms, settings, &mode).await?;
            if let Some((id, score)) = reply.last {
                cursor.advance(id, score);
            }
            jobs.extend(reply.jobs);
            if reply.exhausted {
                cursor.reset();
                if from_head || !jobs.is_empty() {
                    break;
                }
            } else if jobs.len() >= want {
                break;
            }
        }
        Ok(jobs)
    }

    /// Finishes a job in one script, as ARQ does in one transaction: result written, and the
    /// job, retry and in-progress keys, the abort mark and the queue entry removed.
    pub async fn complete(
        &self,
        result: &ResultRecord,
        settings: &QueueSettings,
    ) -> Result<(), QueueError> {
        let id = &result.job_id;
        let mut conn = self.conn.clone();
        COMPLETE_SCRIPT
            .key(arq_keys::retry(id))
            .key(arq_keys::in_progress(id))
            .key(arq_keys::job(id))
            .key(ABORT_SET)
            .key(&self.name)
            .key(arq_keys::result(id))
            .arg(id)
            .arg(result.encode())
            .arg(settings.keep_result_ms)
            .invoke_async::<()>(&mut conn)
            .await
            .map_err(|e| self.err(e))
    }

    /// Gives a claimed job back without finishing it (ARQ's "cancelled, will be run again"):
    /// the in-progress key goes, the job stays queued, optionally deferred by `defer_ms`.
    pub(crate) async fn release(&self, job_id: &str, defer_ms: i64) -> Result<(), QueueError> {
        let mut conn = self.conn.clone();
        let mut pipe = redis::pipe();
        pipe.atomic().del(arq_keys::in_progress(job_id)).ignore();
        if defer_ms > 0 {
            pipe.zincr(&self.name, job_id, defer_ms).ignore();
        }
        pipe.query_async::<()>(&mut conn)
            .await
            .map_err(|e| self.err(e))
    }

    /// Fails a job the way ARQ does when its record expired or its tries are used up.
    pub async fn fail(
        &self,
        claimed: &ClaimedJob,
        message: &str,
        now_ms: i64,
        settings: &QueueSettings,
    ) -> Result<(), QueueError> {
        let job = claimed
            .record
            .found()
            .cloned()
            .unwrap_or_else(|| JobRecord::dedup2d(&claimed.job_id, 0));
        let result = ResultRecord {
            job,
            job_try: claimed.job_try,
            outcome: Outcome::job_execution_failed(message),
            start_ms: now_ms,
            finish_ms: now_ms,
            queue_name: self.name.clone(),
            job_id: claimed.job_id.clone(),
        };
        self.complete(&result, settings).await
    }

    /// Reads `arq:result:{id}`.
    pub async fn result(&self, job_id: &str) -> Result<Option<ResultRecord>, QueueError> {
        let mut conn = self.conn.clone();
        let raw: Option<Vec<u8>> = conn
            .get(arq_keys::result(job_id))
            .await
            .map_err(|e| self.err(e))?;
        Ok(raw.and_then(|r| ResultRecord::decode(&r).ok()))
    }

    /// Number of jobs in the queue (due or deferred).
    pub async fn depth(&self) -> Result<u64, QueueError> {
        let mut conn = self.conn.clone();
        conn.zcard(&self.name).await.map_err(|e| self.err(e))
    }

    /// Writes `{queue}:health-check` like an ARQ worker (a status line, expiring after `ttl_ms`).
    pub(crate) async fn record_health(&self, line: &str, ttl_ms: u64) -> Result<(), QueueError> {
        let mut conn = self.conn.clone();
        redis::cmd("SET")
            .arg(arq_keys::health_check(&self.name))
            .arg(line)
            .arg("PX")
            .arg(ttl_ms.max(1))
            .query_async::<()>(&mut conn)
            .await
            .map_err(|e| self.err(e))
    }

    /// Removes a queued job that has not started (used by cancel): returns whether it was removed.
    pub(crate) async fn remove_if_not_started(&self, job_id: &str) -> Result<bool, QueueError> {
        const REMOVE: &str = r#"
-- KEYS: in_progress, queue, job
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
local n = redis.call('ZREM', KEYS[2], ARGV[1])
if n == 1 then redis.call('DEL', KEYS[3]) end
return n
"#;
        let mut conn = self.conn.clone();
        let n: i64 = Script::new(REMOVE)
            .key(arq_keys::in_progress(job_id))
            .key(&self.name)
            .key(arq_keys::job(job_id))
            .arg(job_id)
            .invoke_async(&mut conn)
            .await
            .map_err(|e| self.err(e))?;
        Ok(n == 1)
    }
}

/// Milliseconds since the Unix epoch (ARQ's `timestamp_ms`).
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use redis::Value;
    use std::time::{Duration, Instant};

    fn bulk(s: &str) -> Value {
        Value::BulkString(s.as_bytes().to_vec())
    }

    #[test]
    fn a_claim_reply_gives_the_jobs_taken_and_where_the_next_window_starts() {
        let record = JobRecord::dedup2d("a", 5).encode();
        let reply = [
            bulk("more"),
            bulk("c"),
            bulk("7"),
            bulk("a"),
            Value::BulkString(record),
            Value::Int(2),
            bulk("5"),
            bulk(""),
            bulk("b"),
            bulk(""),
            Value::Int(1),
            bulk("6"),
            bulk("none"),
        ];
        let parsed = ClaimReply::parse(&reply).unwrap();
        assert!(!parsed.exhausted);
        assert_eq!(parsed.last, Some(("c".into(), "7".into())));
        let [a, b] = parsed.jobs.as_slice() else {
            panic!("two jobs: {:?}", parsed.jobs)
        };
        assert_eq!((a.job_id.as_str(), a.job_try, a.score), ("a", 2, 5));
        assert_eq!(
            a.record.found().and_then(JobRecord::first_str_arg),
            Some("a")
        );
        assert!(matches!(b.record, ClaimedRecord::Expired));

        let empty = ClaimReply::parse(&[bulk("end"), bulk(""), bulk("")]).unwrap();
        assert!(empty.exhausted && empty.last.is_none() && empty.jobs.is_empty());
        assert!(ClaimReply::parse(&[bulk("more"), bulk("")]).is_err());
        assert!(ClaimReply::parse(&[bulk("more"), bulk("x"), bulk("1"), bulk("a")]).is_err());
    }

    #[test]
    fn a_cursor_goes_back_to_the_head_once_it_is_old() {
        let mut cursor = ClaimCursor::default();
        assert!(cursor.at_head());
        cursor.advance("a".into(), "1".into());
        let since = cursor.since.unwrap();
        cursor.advance("b".into(), "2".into());
        assert_eq!(
            cursor.since,
            Some(since),
            "age counts from leaving the head"
        );
        cursor.expire(since + Duration::from_millis(999), Duration::from_secs(1));
        assert_eq!(cursor.after, Some(("b".into(), "2".into())));
        cursor.expire(since + Duration::from_secs(1), Duration::from_secs(1));
        assert!(cursor.at_head() && cursor.since.is_none());
        cursor.expire(
            Instant::now() + Duration::from_secs(60),
            Duration::from_secs(1),
        );
        assert!(cursor.at_head());
    }
}
