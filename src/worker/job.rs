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
use super::input::{self, FileSource, JobInput};
use super::metrics::{FormatLabels, OutcomeLabels, WorkerMetrics};
use crate::contract::callback::CallbackRecord;
use crate::contract::payload::FileRef;
use crate::contract::store::{JobStatus, JobStore, StoreError};
use crate::storage::FileStorage;

/// Everything a job needs, shared by all running jobs.
pub struct JobContext {
    pub store: JobStore,
    pub storage: Arc<dyn FileStorage>,
    pub engine: Arc<dyn SearchEngine>,
    pub callbacks: CallbackSender,
    pub metrics: Arc<WorkerMetrics>,
    pub cleanup_on_finish: bool,
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

/// Runs job `job_id`. Errors are Redis failures while recording state; the caller leaves the job
/// claimable so it runs again.
pub async fn run(ctx: &JobContext, job_id: &str) -> Result<JobEnd, StoreError> {
    let started_at = now();
    let found = ctx.store.mark_started(job_id, started_at).await?;
    let view = ctx.store.get(job_id).await?;
    match found.as_str() {
        "missing" => {
            tracing::warn!(job_id, "job hash is gone (expired?); nothing to run");
            return Ok(JobEnd::Missing);
        }
        "cancel_requested" => {
            let finished = now();
            ctx.store
                .mark_result(job_id, JobStatus::Canceled, None, finished, None, None)
                .await?;
            if view
                .as_ref()
                .and_then(|v| v.callback_url.as_ref())
                .is_some()
            {
                ctx.store
                    .set_fields(
                        job_id,
                        &[
                            ("callback_status", "skipped".into()),
                            ("callback_finished_at", format!("{finished:.6}")),
                            ("callback_last_error", "canceled_before_start".into()),
                        ],
                    )
                    .await?;
                ctx.metrics
                    .webhooks
                    .get_or_create(&OutcomeLabels { outcome: "skipped" })
                    .inc();
            }
            // The payload may still name an upload to clean up.
            if let Ok(input) = input::parse(ctx.store.load_payload_raw(job_id).await?.as_deref()) {
                cleanup(ctx, job_id, &input).await;
            }
            return Ok(JobEnd::Canceled);
        }
        other => {
            if let Some(status) = JobStatus::parse(other).filter(|s| s.is_finished()) {
                tracing::info!(
                    job_id,
                    status = other,
                    "job already finished; not running it again"
                );
                return Ok(JobEnd::AlreadyFinished(status));
            }
        }
    }
    let tenant_from_hash = view.as_ref().map(|v| v.tenant_id.clone());
    let callback_from_hash = view.as_ref().and_then(|v| v.callback_url.clone());

    let raw = ctx.store.load_payload_raw(job_id).await?;
    let parsed = input::parse(raw.as_deref());
    if let Ok(i) = &parsed {
        ctx.metrics
            .payload_formats
            .get_or_create(&FormatLabels {
                format: i.format.label(),
            })
            .inc();
    }
    let seconds = ctx.job_timeout.as_secs();
    let work = execute(ctx, job_id, &parsed, tenant_from_hash.as_deref());
    let outcome = tokio::select! {
        res = tokio::time::timeout(ctx.job_timeout, work) => match res {
            Ok(o) => o,
            Err(_) => Outcome::Failed(format!("timed out after {seconds} s")),
        },
        () = watch_cancel(ctx, job_id) => Outcome::CancelRequested,
    };
    // Cancel checked again after the search, as the Python worker does.
    let outcome = match outcome {
        Outcome::Done(_) if ctx.store.is_cancel_requested(job_id).await? => {
            Outcome::CancelRequested
        }
        o => o,
    };

    let finished_at = now();
    let (end, result, error) = match outcome {
        Outcome::Done(result) => (JobEnd::Completed, Some(result), None),
        Outcome::Failed(reason) => {
            tracing::warn!(job_id, reason, "job failed");
            (JobEnd::Failed(reason.clone()), None, Some(reason))
        }
        Outcome::CancelRequested => (JobEnd::Canceled, None, None),
    };
    let status = match end {
        JobEnd::Completed => JobStatus::Completed,
        JobEnd::Canceled => JobStatus::Canceled,
        _ => JobStatus::Failed,
    };
    ctx.store
        .mark_result(
            job_id,
            status,
            Some(started_at),
            finished_at,
            result.as_ref(),
            error.as_deref(),
        )
        .await?;

    let input = parsed.ok();
    let callback_url = input
        .as_ref()
        .and_then(|i| i.callback_url.clone())
        .or(callback_from_hash);
    if let Some(url) = callback_url {
        let tenant = input
            .as_ref()
            .and_then(|i| i.tenant_id.clone())
            .or(tenant_from_hash);
        let record = CallbackRecord {
            job_id: job_id.to_string(),
            tenant_id: tenant,
            status,
            started_at,
            finished_at,
            result,
            error,
        };
        let outcome = ctx.callbacks.send(&url, &record).await;
        ctx.metrics
            .webhooks
            .get_or_create(&OutcomeLabels {
                outcome: if outcome.ok { "success" } else { "failed" },
            })
            .inc();
        ctx.store
            .set_fields(
                job_id,
                &[
                    (
                        "callback_status",
                        if outcome.ok { "success" } else { "failed" }.into(),
                    ),
                    ("callback_attempts", outcome.attempts.to_string()),
                    (
                        "callback_http_status",
                        outcome
                            .http_status
                            .map(|s| s.to_string())
                            .unwrap_or_default(),
                    ),
                    ("callback_finished_at", format!("{:.6}", now())),
                    ("callback_last_error", outcome.error.unwrap_or_default()),
                ],
            )
            .await?;
    }
    if let Some(i) = &input {
        cleanup(ctx, job_id, i).await;
    }
    Ok(end)
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
    parsed: &Result<JobInput, input::InputError>,
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
    let data = match input::load_bytes(input, ctx.storage.as_ref()).await {
        Ok(d) => d,
        Err(e) => return Outcome::Failed(e.to_string()),
    };
    if matches!(input.source, FileSource::Base64(_)) {
        ctx.metrics.legacy_b64_fallback.inc();
        tracing::info!(job_id, "file read from legacy file_bytes_b64");
    }
    let load_ms = (started.elapsed().as_secs_f64() * 1_000_000.0).round() / 1000.0;
    let request = SearchRequest {
        job_id,
        tenant_id: tenant,
        file_name: &input.file_name,
        content_type: &input.content_type,
        data: &data,
        query_geom: input.query_geom.as_ref(),
        params: &input.params,
    };
    match ctx.engine.search(request).await {
        Ok(result) => {
            let mut v = serde_json::to_value(&result).expect("a search result serializes");
            if let Some(t) = v.get_mut("timing").and_then(Value::as_object_mut) {
                t.insert("load_ms".into(), json!(load_ms));
            }
            Outcome::Done(v)
        }
        Err(e) => Outcome::Failed(e.to_string()),
    }
}

/// Deletes the upload when `DEDUP2D_FILE_STORAGE_CLEANUP_ON_FINISH` says so. Only refs the
/// storage accepts are touched (a foreign or traversal ref is refused by the backend).
async fn cleanup(ctx: &JobContext, job_id: &str, input: &JobInput) {
    if !ctx.cleanup_on_finish {
        return;
    }
    let FileSource::Ref(file_ref) = &input.source else {
        return;
    };
    if file_ref_matches(file_ref, ctx.storage.backend()) {
        if let Err(e) = ctx.storage.delete(file_ref).await {
            tracing::warn!(job_id, error = %e, "upload cleanup failed");
        }
    }
}

fn file_ref_matches(file_ref: &FileRef, backend: &str) -> bool {
    file_ref.backend() == backend
}
