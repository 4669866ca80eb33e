//! The dedup2d job store in Redis: job hash, payload, result, active set and per-tenant index,
//! with the TTLs of the contract. Unlike the Python store, the capacity check and the insert
//! happen in one Lua script, so several API replicas never overshoot `DEDUP2D_ASYNC_MAX_JOBS`.

use std::collections::HashMap;

use redis::aio::ConnectionManager;
use redis::{AsyncCommands, Script};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::arq::JobRecord;
use super::keys::{arq as arq_keys, Keys};
use super::payload::{FileRef, JobPayload};
use super::queue::{now_ms, ArqQueue, QueueError};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("job queue is full ({active} active jobs, limit {max_jobs})")]
    QueueFull { active: u64, max_jobs: u64 },
    #[error("job {0} not found")]
    NotFound(String),
    #[error("job {0} already exists in the ARQ queue")]
    Duplicate(String),
    #[error("tenant id is empty")]
    EmptyTenant,
    #[error("redis error while {action}: {source}")]
    Redis {
        action: &'static str,
        #[source]
        source: redis::RedisError,
    },
    #[error(transparent)]
    Queue(#[from] QueueError),
    #[error("payload of job {job_id} is not valid JSON: {source}")]
    BadPayload {
        job_id: String,
        #[source]
        source: serde_json::Error,
    },
}

fn redis_err(action: &'static str) -> impl FnOnce(redis::RedisError) -> StoreError {
    move |source| StoreError::Redis { action, source }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobStatus {
    Pending,
    InProgress,
    Completed,
    Failed,
    Canceled,
}

impl JobStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            JobStatus::Pending => "pending",
            JobStatus::InProgress => "in_progress",
            JobStatus::Completed => "completed",
            JobStatus::Failed => "failed",
            JobStatus::Canceled => "canceled",
        }
    }

    pub(crate) fn parse(s: &str) -> Option<Self> {
        Some(match s.trim().to_ascii_lowercase().as_str() {
            "pending" => JobStatus::Pending,
            "in_progress" => JobStatus::InProgress,
            "completed" => JobStatus::Completed,
            "failed" => JobStatus::Failed,
            "canceled" => JobStatus::Canceled,
            _ => return None,
        })
    }

    pub fn is_finished(self) -> bool {
        matches!(
            self,
            JobStatus::Completed | JobStatus::Failed | JobStatus::Canceled
        )
    }
}

/// The job hash's webhook fields, written by the worker and read back by [`JobView`].
pub mod callback_field {
    pub const STATUS: &str = "callback_status";
    pub const ATTEMPTS: &str = "callback_attempts";
    pub const HTTP_STATUS: &str = "callback_http_status";
    pub const FINISHED_AT: &str = "callback_finished_at";
    pub const LAST_ERROR: &str = "callback_last_error";
}

/// A webhook outcome to record in the job hash.
#[derive(Debug, Clone, PartialEq)]
pub struct CallbackUpdate {
    /// `success`, `failed` or `skipped` (canceled before it started).
    pub status: &'static str,
    /// Delivery attempts and the last HTTP status; `None` when nothing was sent.
    pub delivery: Option<(u32, Option<u16>)>,
    /// Unix seconds.
    pub finished_at: f64,
    pub last_error: String,
}

impl CallbackUpdate {
    fn fields(&self) -> Vec<(&'static str, String)> {
        let mut fields = vec![
            (callback_field::STATUS, self.status.to_string()),
            (
                callback_field::FINISHED_AT,
                format!("{:.6}", self.finished_at),
            ),
            (callback_field::LAST_ERROR, self.last_error.clone()),
        ];
        if let Some((attempts, http_status)) = self.delivery {
            fields.push((callback_field::ATTEMPTS, attempts.to_string()));
            fields.push((
                callback_field::HTTP_STATUS,
                http_status.map(|s| s.to_string()).unwrap_or_default(),
            ));
        }
        fields
    }
}

/// A job as stored in `{prefix}:job:{id}` (plus its result when finished).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct JobView {
    pub job_id: String,
    pub tenant_id: String,
    pub status: JobStatus,
    pub created_at: Option<f64>,
    pub started_at: Option<f64>,
    pub finished_at: Option<f64>,
    pub error: Option<String>,
    pub cancel_requested: bool,
    pub callback_url: Option<String>,
    pub callback_status: String,
    pub callback_attempts: u32,
    pub callback_http_status: Option<u16>,
    pub callback_finished_at: Option<f64>,
    pub callback_last_error: Option<String>,
    pub result: Option<Value>,
}

impl JobView {
    fn from_hash(job_id: &str, h: &HashMap<String, String>) -> Self {
        let s = |k: &str| h.get(k).map(|v| v.trim()).filter(|v| !v.is_empty());
        let f = |k: &str| s(k).and_then(|v| v.parse::<f64>().ok());
        JobView {
            job_id: s("job_id").unwrap_or(job_id).to_string(),
            tenant_id: s("tenant_id").unwrap_or("").to_string(),
            status: s("status")
                .and_then(JobStatus::parse)
                .unwrap_or(JobStatus::Pending),
            created_at: f("created_at"),
            started_at: f("started_at"),
            finished_at: f("finished_at"),
            error: s("error").map(str::to_string),
            cancel_requested: s("cancel_requested") == Some("1"),
            callback_url: s("callback_url").map(str::to_string),
            callback_status: s(callback_field::STATUS).unwrap_or("").to_string(),
            callback_attempts: s(callback_field::ATTEMPTS)
                .and_then(|v| v.parse().ok())
                .unwrap_or(0),
            callback_http_status: s(callback_field::HTTP_STATUS).and_then(|v| v.parse().ok()),
            callback_finished_at: f(callback_field::FINISHED_AT),
            callback_last_error: s(callback_field::LAST_ERROR).map(str::to_string),
            result: None,
        }
    }
}

/// What a cancel did.
#[derive(Debug, Clone, PartialEq)]
pub enum CancelOutcome {
    /// The job was pending and is now canceled; its upload can be cleaned up.
    CanceledNow { file_ref: Option<FileRef> },
    /// The job is running: the worker sees `cancel_requested` and stops at its next check.
    Requested,
    /// The job had already finished.
    AlreadyFinished(JobStatus),
}

/// A job to submit.
#[derive(Debug, Clone)]
pub struct NewJob {
    pub job_id: String,
    pub tenant_id: String,
    pub payload: JobPayload,
    /// The queue it goes to (main queue, or the render queue for DXF/DWG).
    pub queue_name: String,
}

/// Seconds since the epoch as the float string the Python system writes.
pub(crate) fn epoch_seconds_string() -> String {
    format!("{:.6}", now_ms() as f64 / 1000.0)
}

/// Members of the active set a submit examines beyond the expired ones: a few on every submit
/// (a sweep that reaches every member in time), more when the set looks full (stale members
/// must not refuse a job for long).
const SWEEP_PER_SUBMIT: u32 = 4;
const SWEEP_WHEN_FULL: u32 = 64;
/// Expired members pruned per submit from the deadline index.
const EXPIRED_PER_SUBMIT: u32 = 32;

const SUBMIT: &str = r#"
-- KEYS: active, job, payload, tenant_jobs, arq_job, arq_result, queue, deadlines, sweep
-- ARGV: job_id, tenant_id, created_at, callback_url, ttl_s, max_jobs, payload, arq_record,
--       expires_ms, score, key_prefix, now_ms, sweep_small, sweep_full, expired_max
-- The capacity check costs the same whatever the number of pending jobs: the members whose job
-- hash has expired come from the deadline index (each pruned once), and a bounded SSCAN sweep,
-- resumed from where the last submit left it, catches the others (finished without leaving the
-- set, or added by a producer that keeps no deadline).
local prefix = ARGV[11]
local function stale(id)
  local st = redis.call('HGET', prefix .. ':job:' .. id, 'status')
  return (not st) or st == 'completed' or st == 'failed' or st == 'canceled'
end
for _, id in ipairs(redis.call('ZRANGEBYSCORE', KEYS[8], '-inf', ARGV[12], 'LIMIT', 0, ARGV[15])) do
  if stale(id) then redis.call('SREM', KEYS[1], id) end
  redis.call('ZREM', KEYS[8], id)
end
local max_jobs = tonumber(ARGV[6])
local budget = tonumber(ARGV[13])
if redis.call('SCARD', KEYS[1]) >= max_jobs then budget = tonumber(ARGV[14]) end
local cursor = redis.call('GET', KEYS[9]) or '0'
local swept = redis.call('SSCAN', KEYS[1], cursor, 'COUNT', budget)
redis.call('SET', KEYS[9], swept[1], 'EX', ARGV[5])
-- COUNT is a hint: a small set (listpack, at most 128 members) comes back whole.
for _, id in ipairs(swept[2]) do
  if stale(id) then redis.call('SREM', KEYS[1], id) end
end
local active = redis.call('SCARD', KEYS[1])
if active >= max_jobs then return {-1, active} end
if redis.call('EXISTS', KEYS[5], KEYS[6], KEYS[2]) > 0 then return {-2, active} end
local cb = ARGV[4]
local cb_status = ''
if cb ~= '' then cb_status = 'pending' end
redis.call('HSET', KEYS[2], 'job_id', ARGV[1], 'tenant_id', ARGV[2], 'status', 'pending',
  'created_at', ARGV[3], 'started_at', '', 'finished_at', '', 'error', '', 'cancel_requested', '0',
  'callback_url', cb, 'callback_status', cb_status, 'callback_attempts', '0',
  'callback_http_status', '', 'callback_finished_at', '', 'callback_last_error', '')
redis.call('EXPIRE', KEYS[2], ARGV[5])
redis.call('SET', KEYS[3], ARGV[7], 'EX', ARGV[5])
redis.call('SADD', KEYS[1], ARGV[1])
redis.call('ZADD', KEYS[8], ARGV[12] + ARGV[9], ARGV[1])
redis.call('EXPIRE', KEYS[8], ARGV[5])
redis.call('ZADD', KEYS[4], ARGV[3], ARGV[1])
redis.call('EXPIRE', KEYS[4], ARGV[5])
redis.call('SET', KEYS[5], ARGV[8], 'PX', ARGV[9])
redis.call('ZADD', KEYS[7], ARGV[10], ARGV[1])
return {1, active + 1}
"#;

const CANCEL: &str = r#"
-- KEYS: job, active. ARGV: tenant_id, now, ttl_s
local h = redis.call('HGETALL', KEYS[1])
if #h == 0 then return {'missing'} end
local f = {}
for i = 1, #h, 2 do f[h[i]] = h[i + 1] end
if f['tenant_id'] ~= ARGV[1] then return {'missing'} end
local st = f['status'] or 'pending'
if st == 'completed' or st == 'failed' or st == 'canceled' then return {'finished', st} end
redis.call('HSET', KEYS[1], 'cancel_requested', '1')
local out = 'requested'
if st == 'pending' and (f['started_at'] or '') == '' then
  redis.call('HSET', KEYS[1], 'status', 'canceled', 'finished_at', ARGV[2], 'error', '')
  if (f['callback_url'] or '') ~= '' then
    redis.call('HSET', KEYS[1], 'callback_status', 'skipped', 'callback_finished_at', ARGV[2],
      'callback_last_error', 'canceled_before_start')
  end
  redis.call('SREM', KEYS[2], ARGV[4])
  out = 'canceled'
end
redis.call('EXPIRE', KEYS[1], ARGV[3])
return {out}
"#;

const MARK_STARTED: &str = r#"
-- KEYS: job, active. ARGV: started_at, ttl_s, job_id. Returns what the job was (see StartState).
local t = redis.call('TYPE', KEYS[1]).ok
if t == 'none' then return 'missing' end
if t ~= 'hash' then
  redis.call('SREM', KEYS[2], ARGV[3])
  return 'type:' .. t
end
local st = redis.call('HGET', KEYS[1], 'status')
if not st then return 'missing' end
if st == 'completed' or st == 'failed' or st == 'canceled' then return st end
if redis.call('HGET', KEYS[1], 'cancel_requested') == '1' then return 'cancel_requested' end
redis.call('HSET', KEYS[1], 'status', 'in_progress', 'started_at', ARGV[1])
redis.call('EXPIRE', KEYS[1], ARGV[2])
return 'started'
"#;

const FAIL_UNSTARTED: &str = r#"
-- KEYS: job, active. ARGV: job_id, finished_at, error, ttl_s. Fails a job that cannot run,
-- without creating a job hash that is not there. Returns what the job was (see StartState).
redis.call('SREM', KEYS[2], ARGV[1])
local t = redis.call('TYPE', KEYS[1]).ok
if t == 'none' then return 'missing' end
if t ~= 'hash' then return 'type:' .. t end
local st = redis.call('HGET', KEYS[1], 'status')
if st == 'completed' or st == 'failed' or st == 'canceled' then return st end
redis.call('HSET', KEYS[1], 'status', 'failed', 'finished_at', ARGV[2], 'error', ARGV[3])
redis.call('EXPIRE', KEYS[1], ARGV[4])
return 'started'
"#;

/// What a worker found when it went to start a job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StartState {
    /// The job hash is gone (expired, or never written).
    Missing,
    /// The job key holds another Redis type; the job cannot be tracked and is taken off the
    /// active set.
    WrongType(String),
    /// The job had already finished.
    Finished(JobStatus),
    /// A cancel came before the start.
    CancelRequested,
    /// The job is now ours (`in_progress`; for [`JobStore::fail_unstarted`]: now `failed`).
    Started,
}

impl StartState {
    /// Pure: the scripts' reply to a state.
    fn from_reply(reply: &str) -> Self {
        match reply {
            "missing" => StartState::Missing,
            "cancel_requested" => StartState::CancelRequested,
            "started" => StartState::Started,
            other => match other.strip_prefix("type:") {
                Some(t) => StartState::WrongType(t.to_string()),
                None => JobStatus::parse(other)
                    .filter(|s| s.is_finished())
                    .map_or(StartState::Missing, StartState::Finished),
            },
        }
    }
}

const PAYLOAD_SIZE: &str = r#"
-- KEYS: payload. Returns {type, bytes}.
local t = redis.call('TYPE', KEYS[1]).ok
if t ~= 'string' then return {t, 0} end
return {t, redis.call('STRLEN', KEYS[1])}
"#;

/// How big a payload is, read before the payload itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PayloadSize {
    Missing,
    WrongType(String),
    Bytes(u64),
}

/// Largest piece of a payload one Redis call returns: a payload is read in `GETRANGE` steps of
/// this size, so no call holds Redis for more than a few milliseconds whatever the payload's
/// size, and the reply buffers stay this small.
pub const PAYLOAD_READ_STEP: u64 = 4 << 20;

/// The response timeout of a connection whose calls carry up to `max_bytes` (a payload write,
/// or a payload read step): 2 s plus 1 s per 16 MiB, against redis-rs's 500 ms default.
pub fn bulk_response_timeout(max_bytes: u64) -> std::time::Duration {
    std::time::Duration::from_millis(2_000 + max_bytes / (16 << 20) * 1_000)
}

/// The job store of one key prefix.
#[derive(Clone)]
pub struct JobStore {
    conn: ConnectionManager,
    /// Payload reads go through their own connection (with a response timeout sized for them),
    /// so they never queue behind or in front of the claim path's small calls.
    bulk: ConnectionManager,
    keys: Keys,
    ttl_seconds: u64,
    max_jobs: u64,
}

impl JobStore {
    pub fn new(conn: ConnectionManager, keys: Keys, ttl_seconds: u64, max_jobs: u64) -> Self {
        JobStore {
            bulk: conn.clone(),
            conn,
            keys,
            ttl_seconds,
            max_jobs,
        }
    }

    /// Uses `bulk` for payload reads.
    pub fn with_bulk_connection(mut self, bulk: ConnectionManager) -> Self {
        self.bulk = bulk;
        self
    }

    pub fn keys(&self) -> &Keys {
        &self.keys
    }

    pub(crate) fn connection(&self) -> ConnectionManager {
        self.conn.clone()
    }

    /// Stores the job and enqueues it in ARQ format, atomically with the capacity check.
    /// Returns the number of unfinished jobs including this one.
    pub async fn submit(&self, job: &NewJob) -> Result<u64, StoreError> {
        let tenant = job.tenant_id.trim();
        if tenant.is_empty() {
            return Err(StoreError::EmptyTenant);
        }
        let id = &job.job_id;
        let payload = serde_json::to_string(&job.payload).map_err(|e| StoreError::BadPayload {
            job_id: id.clone(),
            source: e,
        })?;
        let enqueue_ms = now_ms();
        let record = JobRecord::dedup2d(id, enqueue_ms);
        let mut conn = self.conn.clone();
        let reply: redis::RedisResult<(i64, u64)> = Script::new(SUBMIT)
            .key(self.keys.active())
            .key(self.keys.job(id))
            .key(self.keys.payload(id))
            .key(self.keys.tenant_jobs(tenant))
            .key(arq_keys::job(id))
            .key(arq_keys::result(id))
            .key(&job.queue_name)
            .key(self.keys.active_deadlines())
            .key(self.keys.active_sweep())
            .arg(id)
            .arg(tenant)
            .arg(format!("{:.6}", enqueue_ms as f64 / 1000.0))
            .arg(job.payload.callback_url.as_deref().unwrap_or(""))
            .arg(self.ttl_seconds)
            .arg(self.max_jobs)
            .arg(payload)
            .arg(record.encode())
            .arg(self.ttl_seconds * 1000)
            .arg(enqueue_ms)
            .arg(self.keys.prefix())
            .arg(enqueue_ms)
            .arg(SWEEP_PER_SUBMIT)
            .arg(SWEEP_WHEN_FULL)
            .arg(EXPIRED_PER_SUBMIT)
            .invoke_async(&mut conn)
            .await;
        match reply {
            Ok((1, active)) => Ok(active),
            Ok((-1, active)) => Err(StoreError::QueueFull {
                active,
                max_jobs: self.max_jobs,
            }),
            Ok((_, _)) => Err(StoreError::Duplicate(id.clone())),
            Err(e) => {
                // A script that fails halfway keeps its earlier writes: undo them.
                self.cleanup(id, tenant, &job.queue_name).await;
                Err(StoreError::Redis {
                    action: "submitting a job",
                    source: e,
                })
            }
        }
    }

    /// Best-effort removal of everything `submit` writes.
    pub(crate) async fn cleanup(&self, job_id: &str, tenant_id: &str, queue_name: &str) {
        let mut conn = self.conn.clone();
        let res: redis::RedisResult<()> = redis::pipe()
            .atomic()
            .del(&[
                self.keys.job(job_id),
                self.keys.payload(job_id),
                arq_keys::job(job_id),
            ])
            .srem(self.keys.active(), job_id)
            .zrem(self.keys.active_deadlines(), job_id)
            .zrem(self.keys.tenant_jobs(tenant_id), job_id)
            .zrem(queue_name, job_id)
            .query_async(&mut conn)
            .await;
        if let Err(e) = res {
            tracing::warn!(job_id, error = %e, "cleanup after a failed submit failed");
        }
    }

    /// The job, if it exists and belongs to `tenant_id` (another tenant's job is "not found").
    pub async fn get_for_tenant(
        &self,
        job_id: &str,
        tenant_id: &str,
    ) -> Result<JobView, StoreError> {
        let view = self
            .get(job_id)
            .await?
            .filter(|v| v.tenant_id == tenant_id)
            .ok_or_else(|| StoreError::NotFound(job_id.to_string()))?;
        self.with_result(view).await
    }

    /// The job hash regardless of tenant (worker side).
    pub async fn get(&self, job_id: &str) -> Result<Option<JobView>, StoreError> {
        let mut conn = self.conn.clone();
        let h: HashMap<String, String> = conn
            .hgetall(self.keys.job(job_id))
            .await
            .map_err(redis_err("reading a job"))?;
        Ok((!h.is_empty()).then(|| JobView::from_hash(job_id, &h)))
    }

    async fn with_result(&self, mut view: JobView) -> Result<JobView, StoreError> {
        if view.status.is_finished() {
            let mut conn = self.conn.clone();
            let raw: Option<String> = conn
                .get(self.keys.result(&view.job_id))
                .await
                .map_err(redis_err("reading a result"))?;
            view.result = raw.and_then(|r| serde_json::from_str(&r).ok());
        }
        Ok(view)
    }

    /// Cancels a job. Never waits for a worker: a pending job is canceled at once and taken off
    /// the given queues; a running one gets `cancel_requested`.
    pub async fn cancel_for_tenant(
        &self,
        job_id: &str,
        tenant_id: &str,
        queues: &[ArqQueue],
    ) -> Result<CancelOutcome, StoreError> {
        let mut conn = self.conn.clone();
        let reply: Vec<String> = Script::new(CANCEL)
            .key(self.keys.job(job_id))
            .key(self.keys.active())
            .arg(tenant_id)
            .arg(epoch_seconds_string())
            .arg(self.ttl_seconds)
            .arg(job_id)
            .invoke_async(&mut conn)
            .await
            .map_err(redis_err("canceling a job"))?;
        match reply.first().map(String::as_str) {
            Some("canceled") => {
                for q in queues {
                    q.remove_if_not_started(job_id).await?;
                }
                let file_ref = self
                    .load_payload(job_id)
                    .await
                    .ok()
                    .flatten()
                    .and_then(|p| p.file_ref);
                Ok(CancelOutcome::CanceledNow { file_ref })
            }
            Some("requested") => Ok(CancelOutcome::Requested),
            Some("finished") => Ok(CancelOutcome::AlreadyFinished(
                reply
                    .get(1)
                    .and_then(|s| JobStatus::parse(s))
                    .unwrap_or(JobStatus::Completed),
            )),
            _ => Err(StoreError::NotFound(job_id.to_string())),
        }
    }

    /// A tenant's jobs, newest first, optionally filtered by status; prunes expired ids.
    pub async fn list_for_tenant(
        &self,
        tenant_id: &str,
        status: Option<JobStatus>,
        limit: usize,
    ) -> Result<Vec<JobView>, StoreError> {
        let key = self.keys.tenant_jobs(tenant_id);
        let mut conn = self.conn.clone();
        let batch = (limit * 3).max(50);
        let mut start = 0usize;
        let mut jobs = Vec::new();
        while jobs.len() < limit {
            let ids: Vec<String> = conn
                .zrevrange(&key, start as isize, (start + batch - 1) as isize)
                .await
                .map_err(redis_err("listing jobs"))?;
            if ids.is_empty() {
                break;
            }
            start += batch;
            for id in ids {
                match self.get(&id).await? {
                    Some(v) if v.tenant_id == tenant_id => {
                        if status.is_none_or(|s| s == v.status) {
                            jobs.push(v);
                            if jobs.len() >= limit {
                                break;
                            }
                        }
                    }
                    _ => {
                        let _: i64 = conn.zrem(&key, &id).await.map_err(redis_err("pruning"))?;
                        start = start.saturating_sub(1);
                    }
                }
            }
        }
        Ok(jobs)
    }

    /// The payload JSON of a job (`None` once expired).
    pub(crate) async fn load_payload_raw(
        &self,
        job_id: &str,
    ) -> Result<Option<String>, StoreError> {
        let mut conn = self.conn.clone();
        conn.get(self.keys.payload(job_id))
            .await
            .map_err(redis_err("reading a payload"))
    }

    /// Worker: the payload's size (and whether it is a string), without reading it.
    pub async fn payload_size(&self, job_id: &str) -> Result<PayloadSize, StoreError> {
        let mut conn = self.conn.clone();
        let (kind, bytes): (String, u64) = Script::new(PAYLOAD_SIZE)
            .key(self.keys.payload(job_id))
            .invoke_async(&mut conn)
            .await
            .map_err(redis_err("reading a payload's size"))?;
        Ok(match kind.as_str() {
            "none" => PayloadSize::Missing,
            "string" => PayloadSize::Bytes(bytes),
            other => PayloadSize::WrongType(other.to_string()),
        })
    }

    /// Worker: reads a payload of `len` bytes in [`PAYLOAD_READ_STEP`] pieces into one buffer of
    /// that size. `None` when it is gone or changed size meanwhile (expired mid-read).
    pub async fn read_payload(
        &self,
        job_id: &str,
        len: u64,
    ) -> Result<Option<Vec<u8>>, StoreError> {
        let key = self.keys.payload(job_id);
        let mut conn = self.bulk.clone();
        let mut buf = Vec::with_capacity(len as usize);
        while (buf.len() as u64) < len {
            let start = buf.len() as u64;
            let end = (start + PAYLOAD_READ_STEP).min(len) - 1;
            let piece: Vec<u8> = conn
                .getrange(&key, start as isize, end as isize)
                .await
                .map_err(redis_err("reading a payload"))?;
            if piece.len() as u64 != end - start + 1 {
                return Ok(None);
            }
            buf.extend_from_slice(&piece);
        }
        Ok(Some(buf))
    }

    pub async fn load_payload(&self, job_id: &str) -> Result<Option<JobPayload>, StoreError> {
        match self.load_payload_raw(job_id).await? {
            None => Ok(None),
            Some(raw) => serde_json::from_str(&raw)
                .map(Some)
                .map_err(|e| StoreError::BadPayload {
                    job_id: job_id.to_string(),
                    source: e,
                }),
        }
    }

    /// Worker: marks a job `in_progress` unless it finished, a cancel was requested, or its key
    /// is not a hash.
    pub async fn mark_started(
        &self,
        job_id: &str,
        started_at: f64,
    ) -> Result<StartState, StoreError> {
        let mut conn = self.conn.clone();
        let reply: String = Script::new(MARK_STARTED)
            .key(self.keys.job(job_id))
            .key(self.keys.active())
            .arg(format!("{started_at:.6}"))
            .arg(self.ttl_seconds)
            .arg(job_id)
            .invoke_async(&mut conn)
            .await
            .map_err(redis_err("marking a job started"))?;
        Ok(StartState::from_reply(&reply))
    }

    /// Worker: fails a job that cannot run at all (its ARQ record is unusable or its tries are
    /// used up) and frees its slot; a missing job hash is not created. `Started` means it is
    /// now `failed` with `reason`.
    pub async fn fail_unstarted(
        &self,
        job_id: &str,
        reason: &str,
    ) -> Result<StartState, StoreError> {
        let mut conn = self.conn.clone();
        let reply: String = Script::new(FAIL_UNSTARTED)
            .key(self.keys.job(job_id))
            .key(self.keys.active())
            .arg(job_id)
            .arg(epoch_seconds_string())
            .arg(reason)
            .arg(self.ttl_seconds)
            .invoke_async(&mut conn)
            .await
            .map_err(redis_err("failing a job that cannot run"))?;
        Ok(StartState::from_reply(&reply))
    }

    pub async fn is_cancel_requested(&self, job_id: &str) -> Result<bool, StoreError> {
        let mut conn = self.conn.clone();
        let v: Option<String> = conn
            .hget(self.keys.job(job_id), "cancel_requested")
            .await
            .map_err(redis_err("reading cancel flag"))?;
        Ok(v.as_deref() == Some("1"))
    }

    /// Worker: records the final status (and the result for completed jobs) and frees the slot.
    pub async fn mark_result(
        &self,
        job_id: &str,
        status: JobStatus,
        started_at: Option<f64>,
        finished_at: f64,
        result: Option<&Value>,
        error: Option<&str>,
    ) -> Result<(), StoreError> {
        let mut conn = self.conn.clone();
        let opt = |v: Option<f64>| v.map(|x| format!("{x:.6}")).unwrap_or_default();
        let mut pipe = redis::pipe();
        pipe.atomic()
            .hset_multiple(
                self.keys.job(job_id),
                &[
                    ("status", status.as_str().to_string()),
                    ("started_at", opt(started_at)),
                    ("finished_at", format!("{finished_at:.6}")),
                    ("error", error.unwrap_or("").to_string()),
                ],
            )
            .ignore()
            .expire(self.keys.job(job_id), self.ttl_seconds as i64)
            .ignore()
            .srem(self.keys.active(), job_id)
            .ignore();
        if let Some(r) = result {
            pipe.set_ex(self.keys.result(job_id), r.to_string(), self.ttl_seconds)
                .ignore();
        }
        pipe.query_async::<()>(&mut conn)
            .await
            .map_err(redis_err("recording a job result"))
    }

    /// Worker: records a webhook outcome in the job hash.
    pub(crate) async fn record_callback(
        &self,
        job_id: &str,
        update: &CallbackUpdate,
    ) -> Result<(), StoreError> {
        let mut conn = self.conn.clone();
        redis::pipe()
            .atomic()
            .hset_multiple(self.keys.job(job_id), &update.fields())
            .ignore()
            .expire(self.keys.job(job_id), self.ttl_seconds as i64)
            .ignore()
            .query_async::<()>(&mut conn)
            .await
            .map_err(redis_err("updating job fields"))
    }

    /// Number of unfinished jobs (after pruning), as the API's queue-depth metric reports.
    pub async fn active_count(&self) -> Result<u64, StoreError> {
        let mut conn = self.conn.clone();
        conn.scard(self.keys.active())
            .await
            .map_err(redis_err("counting active jobs"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn start_state_replies() {
        assert_eq!(StartState::from_reply("missing"), StartState::Missing);
        assert_eq!(StartState::from_reply("started"), StartState::Started);
        assert_eq!(
            StartState::from_reply("cancel_requested"),
            StartState::CancelRequested
        );
        assert_eq!(
            StartState::from_reply("failed"),
            StartState::Finished(JobStatus::Failed)
        );
        assert_eq!(
            StartState::from_reply("type:string"),
            StartState::WrongType("string".into())
        );
    }
}
