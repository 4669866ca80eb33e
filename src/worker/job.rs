//! One dedup2d job from start to final status: cancel check, `in_progress`, payload, bytes,
//! search, cancel check again, result, webhook, upload cleanup.
//!
//! Every way a job can go wrong ends in *that job's* status (`failed` with the reason, or
//! `canceled`); nothing here makes the worker stop. A timeout is `failed` ("timed out after
//! N s"), never `canceled`. Running a job twice (a retry after a crash) is safe: a job already
//! finished is left as it is, and the search answers the same.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::callback::CallbackSender;
use super::engine::{SearchEngine, SearchRequest};
use super::input::{self, Fallback, InputError, JobInput, Parsed};
use super::metrics::{FormatLabels, OutcomeLabels, ReasonLabels, WorkerMetrics};
use crate::contract::callback::CallbackRecord;
use crate::contract::payload::FileRef;
use crate::contract::store::{
    CallbackUpdate, JobStatus, JobStore, PayloadSize, StartState, StoreError,
};
use crate::storage::FileStorage;

/// Everything a job needs, shared by all running jobs.
pub struct JobContext {
    pub store: JobStore,
    pub storage: Arc<dyn FileStorage>,
    pub engine: Arc<dyn SearchEngine>,
    pub callbacks: CallbackSender,
    pub metrics: Arc<WorkerMetrics>,
    pub cleanup_on_finish: bool,
    /// `DEDUP2D_WORKER_MAX_PAYLOAD_BYTES`: a larger payload fails its job unread.
    pub max_payload_bytes: u64,
    pub job_timeout: Duration,
    pub debug_job_delay: Duration,
    /// How often a running job looks for a cancel request.
    pub cancel_poll: Duration,
}

/// How a run ended.
#[derive(Debug, Clone, PartialEq)]
pub enum JobEnd {
    Completed,
    Failed(String),
    Canceled,
    /// The job had already finished (a retry after a crash that happened after the final write).
    AlreadyFinished(JobStatus),
    /// The job hash is gone (expired): there is nothing to update.
    Missing,
}

impl JobEnd {
    /// The label for `dedup2d_jobs_total` and the value returned to ARQ (`{"status": ...}`).
    pub fn label(&self) -> &'static str {
        match self {
            JobEnd::Completed => "completed",
            JobEnd::Failed(_) => "failed",
            JobEnd::Canceled => "canceled",
            JobEnd::AlreadyFinished(s) => s.as_str(),
            JobEnd::Missing => "missing",
        }
    }
}

fn now() -> f64 {
    crate::contract::queue::now_ms() as f64 / 1000.0
}

/// What the body of a job produced.
enum Outcome {
    Done(Value),
    Failed(String),
    CancelRequested,
}

/// A job's final record, decided from its outcome (pure).
struct Final {
    end: JobEnd,
    status: JobStatus,
    result: Option<Value>,
    error: Option<String>,
}

impl Final {
    fn of(outcome: Outcome) -> Self {
        match outcome {
            Outcome::Done(result) => Final {
                end: JobEnd::Completed,
                status: JobStatus::Completed,
                result: Some(result),
                error: None,
            },
            Outcome::Failed(reason) => Final {
                end: JobEnd::Failed(reason.clone()),
                status: JobStatus::Failed,
                result: None,
                error: Some(reason),
            },
            Outcome::CancelRequested => Final {
                end: JobEnd::Canceled,
                status: JobStatus::Canceled,
                result: None,
                error: None,
            },
        }
    }
}

/// What the job hash says about the job, for when the payload cannot be read.
#[derive(Default)]
struct HashFacts {
    tenant_id: Option<String>,
    callback_url: Option<String>,
}

/// The reason of a job whose key holds another Redis type.
pub fn wrong_type_reason(kind: &str) -> String {
    format!("job hash holds a Redis {kind}, not a hash; the job cannot be tracked")
}

/// Runs job `job_id`. Errors are Redis failures while recording state; the caller leaves the job
/// claimable so it runs again.
pub async fn run(ctx: &JobContext, job_id: &str) -> Result<JobEnd, StoreError> {
    let started_at = now();
    match ctx.store.mark_started(job_id, started_at).await? {
        StartState::Started => {}
        StartState::Missing => {
            tracing::warn!(job_id, "job hash is gone (expired?); nothing to run");
            return Ok(JobEnd::Missing);
        }
        StartState::WrongType(kind) => {
            let reason = wrong_type_reason(&kind);
            tracing::warn!(job_id, reason, "job failed");
            return Ok(JobEnd::Failed(reason));
        }
        StartState::Finished(status) => {
            tracing::info!(
                job_id,
                status = status.as_str(),
                "job already finished; not running it again"
            );
            return Ok(JobEnd::AlreadyFinished(status));
        }
        StartState::CancelRequested => return cancel_before_start(ctx, job_id).await,
    }
    let facts = hash_facts(ctx, job_id).await?;
    let Parsed {
        input: parsed,
        file_ref,
    } = load_input(ctx, job_id).await?;
    if let Ok(i) = &parsed {
        ctx.metrics
            .payload_formats
            .get_or_create(&FormatLabels {
                format: i.format.label(),
            })
            .inc();
    }
    let outcome = run_body(ctx, job_id, &parsed, facts.tenant_id.as_deref()).await?;
    let finished_at = now();
    let fin = Final::of(outcome);
    if let Some(reason) = &fin.error {
        tracing::warn!(job_id, reason, "job failed");
    }
    ctx.store
        .mark_result(
            job_id,
            fin.status,
            Some(started_at),
            finished_at,
            fin.result.as_ref(),
            fin.error.as_deref(),
        )
        .await?;
    let input = parsed.ok();
    let callback_url = input
        .as_ref()
        .and_then(|i| i.callback_url.clone())
        .or(facts.callback_url);
    if let Some(url) = callback_url {
        let tenant = input
            .as_ref()
            .and_then(|i| i.tenant_id.clone())
            .or(facts.tenant_id);
        let record = CallbackRecord {
            job_id: job_id.to_string(),
            tenant_id: tenant,
            status: fin.status,
            started_at,
            finished_at,
            result: fin.result,
            error: fin.error,
        };
        notify(ctx, &url, &record).await?;
    }
    cleanup(ctx, job_id, file_ref.as_ref()).await;
    Ok(fin.end)
}

/// Reads and parses the payload; one over `max_payload_bytes` or of the wrong type is refused
/// before it is read.
async fn load_input(ctx: &JobContext, job_id: &str) -> Result<Parsed, StoreError> {
    let raw = match ctx.store.payload_size(job_id).await? {
        PayloadSize::Missing => None,
        PayloadSize::WrongType(kind) => return Ok(Parsed::failed(InputError::WrongType(kind))),
        PayloadSize::Bytes(bytes) if bytes > ctx.max_payload_bytes => {
            return Ok(Parsed::failed(InputError::TooLarge {
                bytes,
                limit: ctx.max_payload_bytes,
            }))
        }
        PayloadSize::Bytes(len) => ctx.store.read_payload(job_id, len).await?,
    };
    // Parsing and base64 decoding are CPU work proportional to the payload: off the async
    // threads, so the Redis connections' replies are still read while it runs.
    Ok(tokio::task::spawn_blocking(move || input::parse(raw))
        .await
        .unwrap_or_else(|e| {
            Parsed::failed(InputError::NotJson(format!("payload parser stopped: {e}")))
        }))
}

/// A job that cannot run (its ARQ record is unusable, or its tries are used up): `failed` with
/// the reason and its upload cleaned, without running anything.
pub async fn fail_unrunnable(
    ctx: &JobContext,
    job_id: &str,
    reason: &str,
) -> Result<JobEnd, StoreError> {
    Ok(match ctx.store.fail_unstarted(job_id, reason).await? {
        StartState::Started => {
            tracing::warn!(job_id, reason, "job failed without running");
            cleanup_upload(ctx, job_id).await?;
            JobEnd::Failed(reason.to_string())
        }
        StartState::Finished(status) => JobEnd::AlreadyFinished(status),
        StartState::WrongType(kind) => JobEnd::Failed(wrong_type_reason(&kind)),
        StartState::Missing | StartState::CancelRequested => JobEnd::Missing,
    })
}

async fn hash_facts(ctx: &JobContext, job_id: &str) -> Result<HashFacts, StoreError> {
    Ok(ctx
        .store
        .get(job_id)
        .await?
        .map(|v| HashFacts {
            tenant_id: Some(v.tenant_id),
            callback_url: v.callback_url,
        })
        .unwrap_or_default())
}

/// A cancel that came before the start: `canceled`, its webhook skipped, its upload cleaned.
async fn cancel_before_start(ctx: &JobContext, job_id: &str) -> Result<JobEnd, StoreError> {
    let facts = hash_facts(ctx, job_id).await?;
    let finished = now();
    ctx.store
        .mark_result(job_id, JobStatus::Canceled, None, finished, None, None)
        .await?;
    if facts.callback_url.is_some() {
        ctx.store
            .record_callback(
                job_id,
                &CallbackUpdate {
                    status: "skipped",
                    delivery: None,
                    finished_at: finished,
                    last_error: "canceled_before_start".into(),
                },
            )
            .await?;
        ctx.metrics
            .webhooks
            .get_or_create(&OutcomeLabels { outcome: "skipped" })
            .inc();
    }
    cleanup_upload(ctx, job_id).await?;
    Ok(JobEnd::Canceled)
}

/// The body under the timeout and the cancel watch, then the cancel check the Python worker
/// makes after the search.
async fn run_body(
    ctx: &JobContext,
    job_id: &str,
    parsed: &Result<JobInput, InputError>,
    tenant_from_hash: Option<&str>,
) -> Result<Outcome, StoreError> {
    let seconds = ctx.job_timeout.as_secs();
    let work = execute(ctx, job_id, parsed, tenant_from_hash);
    let outcome = tokio::select! {
        res = tokio::time::timeout(ctx.job_timeout, work) => match res {
            Ok(o) => o,
            Err(_) => Outcome::Failed(format!("timed out after {seconds} s")),
        },
        () = watch_cancel(ctx, job_id) => Outcome::CancelRequested,
    };
    Ok(match outcome {
        Outcome::Done(_) if ctx.store.is_cancel_requested(job_id).await? => {
            Outcome::CancelRequested
        }
        o => o,
    })
}

/// Sends the webhook and records its outcome in the job hash.
async fn notify(ctx: &JobContext, url: &str, record: &CallbackRecord) -> Result<(), StoreError> {
    let job_id = record.job_id.as_str();
    let outcome = ctx.callbacks.send(url, record).await;
    let label = if outcome.ok { "success" } else { "failed" };
    ctx.metrics
        .webhooks
        .get_or_create(&OutcomeLabels { outcome: label })
        .inc();
    ctx.store
        .record_callback(
            job_id,
            &CallbackUpdate {
                status: label,
                delivery: Some((outcome.attempts, outcome.http_status)),
                finished_at: now(),
                last_error: outcome.error.unwrap_or_default(),
            },
        )
        .await
}

/// Resolves when a cancel is requested (never otherwise); Redis errors are retried.
async fn watch_cancel(ctx: &JobContext, job_id: &str) {
    loop {
        tokio::time::sleep(ctx.cancel_poll).await;
        if let Ok(true) = ctx.store.is_cancel_requested(job_id).await {
            tracing::info!(job_id, "cancel requested while running");
            return;
        }
    }
}

/// The body of a job, under the timeout.
async fn execute(
    ctx: &JobContext,
    job_id: &str,
    parsed: &Result<JobInput, InputError>,
    tenant_from_hash: Option<&str>,
) -> Outcome {
    if !ctx.debug_job_delay.is_zero() {
        tokio::time::sleep(ctx.debug_job_delay).await;
    }
    let input = match parsed {
        Ok(i) => i,
        Err(e) => return Outcome::Failed(e.to_string()),
    };
    let Some(tenant) = input
        .tenant_id
        .as_deref()
        .or(tenant_from_hash)
        .filter(|t| !t.is_empty())
    else {
        return Outcome::Failed("payload has no tenant_id and the job hash names none".into());
    };
    let started = Instant::now();
    let loaded = match input::load_bytes(input, ctx.storage.as_ref()).await {
        Ok(l) => l,
        Err(e) => return Outcome::Failed(e.to_string()),
    };
    if let Some(fallback) = loaded.fallback {
        count_fallback(ctx, job_id, fallback);
    }
    let load_ms = (started.elapsed().as_secs_f64() * 1_000_000.0).round() / 1000.0;
    let request = SearchRequest {
        job_id,
        tenant_id: tenant,
        file_name: &input.file_name,
        content_type: &input.content_type,
        data: &loaded.data,
        query_geom: input.query_geom.as_ref(),
        params: &input.params,
    };
    match ctx.engine.search(request).await {
        Ok(result) => {
            let mut v = serde_json::to_value(&result).expect("a search result serializes");
            if let Some(t) = v.get_mut("timing").and_then(Value::as_object_mut) {
                t.insert("load_ms".into(), json!(load_ms));
            }
            let warning = loaded.fallback.and_then(Fallback::warning);
            if let (Some(w), Some(list)) =
                (warning, v.get_mut("warnings").and_then(Value::as_array_mut))
            {
                list.push(json!(w));
            }
            Outcome::Done(v)
        }
        Err(e) => Outcome::Failed(e.to_string()),
    }
}

fn count_fallback(ctx: &JobContext, job_id: &str, fallback: Fallback) {
    ctx.metrics.legacy_b64_fallback.inc();
    ctx.metrics
        .b64_fallbacks
        .get_or_create(&ReasonLabels {
            reason: fallback.label(),
        })
        .inc();
    match fallback {
        Fallback::B64Only => tracing::info!(job_id, "file read from legacy file_bytes_b64"),
        Fallback::StoredFileMissing => tracing::warn!(
            job_id,
            "stored file is missing; file read from the payload's file_bytes_b64"
        ),
    }
}

/// Cleans the upload a payload names, whatever else is wrong with the payload.
async fn cleanup_upload(ctx: &JobContext, job_id: &str) -> Result<(), StoreError> {
    if ctx.cleanup_on_finish {
        let file_ref = load_input(ctx, job_id).await?.file_ref;
        cleanup(ctx, job_id, file_ref.as_ref()).await;
    }
    Ok(())
}

/// Deletes the upload when `DEDUP2D_FILE_STORAGE_CLEANUP_ON_FINISH` says so. Only refs the
/// storage accepts are touched (a foreign or traversal ref is refused by the backend).
async fn cleanup(ctx: &JobContext, job_id: &str, file_ref: Option<&FileRef>) {
    let Some(file_ref) =
        file_ref.filter(|r| ctx.cleanup_on_finish && r.backend() == ctx.storage.backend())
    else {
        return;
    };
    if let Err(e) = ctx.storage.delete(file_ref).await {
        tracing::warn!(job_id, error = %e, "upload cleanup failed");
    }
}
