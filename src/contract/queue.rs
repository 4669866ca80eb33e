//! ARQ queue operations on Redis, speaking the same protocol as the Python `arq` library so our
//! workers and Python workers can share one queue.
//!
//! ARQ uses WATCH/MULTI optimistic transactions; we use Lua scripts, which give the same
//! all-or-nothing effect without connection-bound WATCH state (our connection is multiplexed).

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
}

impl QueueSettings {
    pub fn for_job_timeout(job_timeout_seconds: u64) -> Self {
        QueueSettings {
            max_tries: 5,
            in_progress_ttl_ms: (job_timeout_seconds + 10) * 1000,
            keep_result_ms: 3_600_000,
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

const CLAIM: &str = r#"
-- KEYS: in_progress, queue, job, retry.
-- ARGV: job_id, now_ms, in_progress_ttl_ms, retry_ttl_s, max_record_bytes
-- Returns {record, try, score, problem}: problem is '' (record read), 'none' (expired),
-- 'size:<n>' (too large, not read) or 'type:<t>' (not a string). Never raises on the job's
-- own keys, so a hostile record cannot make claiming fail for the whole queue.
if redis.call('EXISTS', KEYS[1]) == 1 then return false end
local score = redis.call('ZSCORE', KEYS[2], ARGV[1])
if not score or tonumber(score) > tonumber(ARGV[2]) then return false end
redis.call('SET', KEYS[1], '1', 'PX', ARGV[3])
local job, problem = '', ''
local t = redis.call('TYPE', KEYS[3]).ok
if t == 'none' then problem = 'none'
elseif t ~= 'string' then problem = 'type:' .. t
else
  local n = redis.call('STRLEN', KEYS[3])
  if n > tonumber(ARGV[5]) then problem = 'size:' .. n else job = redis.call('GET', KEYS[3]) end
end
local rt = redis.call('TYPE', KEYS[4]).ok
if rt ~= 'none' and (rt ~= 'string' or not tonumber(redis.call('GET', KEYS[4]))) then
  redis.call('DEL', KEYS[4])
end
local try = redis.call('INCR', KEYS[4])
redis.call('EXPIRE', KEYS[4], ARGV[4])
return {job, try, score, problem}
"#;

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

    async fn due_page(
        &self,
        now_ms: i64,
        offset: usize,
        limit: usize,
    ) -> Result<Vec<String>, QueueError> {
        let mut conn = self.conn.clone();
        redis::cmd("ZRANGEBYSCORE")
            .arg(&self.name)
            .arg("-inf")
            .arg(now_ms)
            .arg("LIMIT")
            .arg(offset)
            .arg(limit)
            .query_async(&mut conn)
            .await
            .map_err(|e| self.err(e))
    }

    /// Claims one job: sets `arq:in-progress:{id}` only when it is absent and the id is still
    /// queued and due, then bumps the retry counter. `None` when another consumer has it.
    pub async fn claim(
        &self,
        job_id: &str,
        now_ms: i64,
        settings: &QueueSettings,
    ) -> Result<Option<ClaimedJob>, QueueError> {
        let mut conn = self.conn.clone();
        let reply: Option<(Vec<u8>, i64, String, String)> = Script::new(CLAIM)
            .key(arq_keys::in_progress(job_id))
            .key(&self.name)
            .key(arq_keys::job(job_id))
            .key(arq_keys::retry(job_id))
            .arg(job_id)
            .arg(now_ms)
            .arg(settings.in_progress_ttl_ms.max(1))
            .arg(RETRY_KEY_TTL_S)
            .arg(MAX_RECORD_BYTES)
            .invoke_async(&mut conn)
            .await
            .map_err(|e| self.err(e))?;
        let Some((raw, job_try, score, problem)) = reply else {
            return Ok(None);
        };
        // The try number is the count of real claims (`arq:retry:{id}`); a `t` written in the
        // record is not trusted, so a record cannot make a job that never ran look used up.
        Ok(Some(ClaimedJob {
            job_id: job_id.to_string(),
            record: ClaimedRecord::from_reply(&raw, &problem),
            job_try,
            score: score.parse::<f64>().unwrap_or(0.0) as i64,
        }))
    }

    /// Claims the oldest due job that nobody else holds, paging through the due ids `page` at
    /// a time (jobs held by other consumers stay in the queue until they finish).
    pub async fn claim_next(
        &self,
        now_ms: i64,
        settings: &QueueSettings,
        page: usize,
    ) -> Result<Option<ClaimedJob>, QueueError> {
        let page = page.max(1);
        let mut offset = 0;
        loop {
            let ids = self.due_page(now_ms, offset, page).await?;
            for id in &ids {
                if let Some(job) = self.claim(id, now_ms, settings).await? {
                    return Ok(Some(job));
                }
            }
            if ids.len() < page {
                return Ok(None);
            }
            offset += page;
        }
    }

    /// Finishes a job in one transaction, as ARQ does: result written, and the job, retry and
    /// in-progress keys and the queue entry removed.
    pub async fn complete(
        &self,
        result: &ResultRecord,
        settings: &QueueSettings,
    ) -> Result<(), QueueError> {
        let id = &result.job_id;
        let mut conn = self.conn.clone();
        let mut pipe = redis::pipe();
        pipe.atomic()
            .del(&[
                arq_keys::retry(id),
                arq_keys::in_progress(id),
                arq_keys::job(id),
            ])
            .ignore()
            .zrem(ABORT_SET, id)
            .ignore()
            .zrem(&self.name, id)
            .ignore();
        if settings.keep_result_ms > 0 {
            pipe.cmd("SET")
                .arg(arq_keys::result(id))
                .arg(result.encode())
                .arg("PX")
                .arg(settings.keep_result_ms)
                .ignore();
        }
        pipe.query_async::<()>(&mut conn)
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
