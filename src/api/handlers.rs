//! Request handlers. Each one: authenticate, validate, act on the store, answer JSON.

use std::collections::HashMap;
use std::sync::Arc;

use axum::extract::multipart::{MultipartError, MultipartRejection};
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{FromRequestParts, Multipart, Path, Query, State};
use axum::http::{request::Parts, HeaderMap, StatusCode};
use axum::response::IntoResponse;
use axum::Json;
use base64::Engine;
use serde_json::{json, Value};

use super::error::ApiError;
use super::params::{list_params, search_params};
use super::presets;
use super::ApiState;
use crate::contract::payload::{render_required, FileRef, JobPayload};
use crate::contract::store::{CancelOutcome, JobView, NewJob};

type Shared = State<Arc<ApiState>>;

pub(super) fn tenant(state: &ApiState, headers: &HeaderMap) -> Result<String, ApiError> {
    let key = headers
        .get("x-api-key")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if key.trim().is_empty() {
        return Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "UNAUTHORIZED",
            "missing X-API-Key header",
        ));
    }
    state
        .keys
        .tenant_of(key)
        .ok_or_else(|| ApiError::new(StatusCode::UNAUTHORIZED, "UNAUTHORIZED", "invalid API key"))
}

/// A request axum could not even take apart (no multipart boundary, a query string that is not
/// form-encoded, a bad path segment): the documented JSON error, not axum's plain text.
fn rejected(code: &'static str, status: StatusCode, text: String) -> ApiError {
    ApiError::new(status, code, text)
}

fn query_of(
    q: Result<Query<HashMap<String, String>>, QueryRejection>,
) -> Result<HashMap<String, String>, ApiError> {
    q.map(|Query(q)| q)
        .map_err(|e| rejected("INVALID_PARAMETER", e.status(), e.body_text()))
}

fn path_of(p: Result<Path<String>, PathRejection>) -> Result<String, ApiError> {
    p.map(|Path(p)| p)
        .map_err(|e| rejected("INVALID_PARAMETER", e.status(), e.body_text()))
}

/// The caller's tenant and the path's `{job_id}`, checked in that order (a bad key is a 401 before
/// a bad path is a 400).
pub(crate) struct TenantJob {
    tenant_id: String,
    job_id: String,
}

impl FromRequestParts<Arc<ApiState>> for TenantJob {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &Arc<ApiState>,
    ) -> Result<Self, ApiError> {
        let tenant_id = tenant(state, &parts.headers)?;
        let job_id = path_of(Path::<String>::from_request_parts(parts, state).await)?;
        Ok(TenantJob { tenant_id, job_id })
    }
}

fn multipart_error(e: MultipartError) -> ApiError {
    if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "FILE_TOO_LARGE",
            "upload exceeds the configured size limit",
        )
    } else {
        ApiError::bad_request("INVALID_UPLOAD", format!("malformed multipart body: {e}"))
    }
}

/// Largest `geom_json`: it must fit in the payload's room beside the file
/// ([`PAYLOAD_OVERHEAD_BYTES`](crate::contract::payload::PAYLOAD_OVERHEAD_BYTES)).
const MAX_GEOM_JSON_BYTES: u64 = 512 * 1024;

/// Longest original file name kept in the job (the stored name is bounded further).
const MAX_FILE_NAME_BYTES: usize = 1024;

struct Upload {
    file_name: String,
    content_type: String,
    bytes: bytes::Bytes,
    geom: Option<Value>,
}

async fn read_upload(state: &ApiState, mut form: Multipart) -> Result<Upload, ApiError> {
    let mut file = None;
    let mut geom = None;
    while let Some(field) = form.next_field().await.map_err(multipart_error)? {
        match field.name() {
            Some("file") => {
                let name = field.file_name().unwrap_or("unknown").to_string();
                if name.len() > MAX_FILE_NAME_BYTES {
                    return Err(ApiError::bad_request(
                        "FILE_NAME_TOO_LONG",
                        format!(
                            "file name is {} bytes; at most {MAX_FILE_NAME_BYTES} are accepted",
                            name.len()
                        ),
                    ));
                }
                let ct = field
                    .content_type()
                    .unwrap_or("application/octet-stream")
                    .to_string();
                let bytes = field.bytes().await.map_err(multipart_error)?;
                if bytes.len() as u64 > state.max_upload_bytes {
                    return Err(ApiError::new(
                        StatusCode::PAYLOAD_TOO_LARGE,
                        "FILE_TOO_LARGE",
                        format!(
                            "upload of {} bytes exceeds the limit of {} bytes",
                            bytes.len(),
                            state.max_upload_bytes
                        ),
                    ));
                }
                file = Some((name, ct, bytes));
            }
            Some("geom_json") => {
                let bytes = field.bytes().await.map_err(multipart_error)?;
                if bytes.len() as u64 > MAX_GEOM_JSON_BYTES {
                    return Err(ApiError::new(
                        StatusCode::PAYLOAD_TOO_LARGE,
                        "GEOM_JSON_TOO_LARGE",
                        format!("geom_json exceeds {MAX_GEOM_JSON_BYTES} bytes"),
                    ));
                }
                if bytes.is_empty() {
                    return Err(ApiError::bad_request(
                        "INVALID_GEOM_JSON",
                        "Empty geom_json",
                    ));
                }
                let v: Value = serde_json::from_slice(&bytes).map_err(|e| {
                    ApiError::bad_request("INVALID_GEOM_JSON", format!("Invalid geom_json: {e}"))
                })?;
                if !v.is_object() {
                    return Err(ApiError::bad_request(
                        "INVALID_GEOM_JSON",
                        "Invalid geom_json: expected a JSON object",
                    ));
                }
                geom = Some(v);
            }
            // Unknown form fields are drained and ignored, as the Python API does.
            _ => {
                let _ = field.bytes().await.map_err(multipart_error)?;
            }
        }
    }
    let (file_name, content_type, bytes) = file.ok_or_else(|| {
        ApiError::bad_request("MISSING_FILE", "multipart field 'file' is required")
    })?;
    if bytes.is_empty() {
        return Err(ApiError::bad_request("EMPTY_FILE", "Empty file"));
    }
    Ok(Upload {
        file_name,
        content_type,
        bytes,
        geom,
    })
}

/// `POST /api/v1/dedup/2d/search`
pub(crate) async fn search(
    State(state): Shared,
    headers: HeaderMap,
    query: Result<Query<HashMap<String, String>>, QueryRejection>,
    form: Result<Multipart, MultipartRejection>,
) -> Result<impl IntoResponse, ApiError> {
    let tenant_id = tenant(&state, &headers)?;
    let query = query_of(query)?;
    let mut params = search_params(&query)?;
    let form = form.map_err(|e| rejected("INVALID_UPLOAD", e.status(), e.body_text()))?;
    let defaults = state
        .tenant_configs
        .get(&tenant_id)
        .await
        .map_err(super::config_routes::redis_down)?;
    presets::resolve(&query, &defaults, &mut params.request_params)?;
    let callback_url = match &params.callback_url {
        None => None,
        Some(raw) => Some(
            state
                .callbacks
                .validate(raw)
                .map_err(|e| ApiError::bad_request("CALLBACK_URL_INVALID", e.to_string()))?
                .to_string(),
        ),
    };
    let upload = read_upload(&state, form).await?;

    let job_id = uuid::Uuid::new_v4().to_string();
    let file_ref = state
        .storage
        .save(
            &job_id,
            &upload.file_name,
            &upload.content_type,
            upload.bytes.clone(),
        )
        .await
        .map_err(|e| {
            tracing::warn!(job_id, error = %e, "storing an upload failed");
            ApiError::unavailable("file storage is unavailable; retry later")
        })?;
    let render = render_required(&upload.file_name, Some(&upload.content_type));
    let payload = job_payload(
        &state,
        &tenant_id,
        upload,
        file_ref.clone(),
        params.request_params,
        callback_url,
        render,
    );
    let format = payload.format();
    let queue = match (&state.render_queue, render) {
        (Some(q), true) => q,
        _ => &state.main_queue,
    };
    let job = NewJob {
        job_id: job_id.clone(),
        tenant_id: tenant_id.clone(),
        payload,
        queue_name: queue.name().to_string(),
    };
    let active = submit_or_clean(&state, &job, &file_ref).await?;
    state.metrics.count_format(format.label());
    state.metrics.count_submit("accepted");
    state.metrics.queue_depth.set(active as i64);
    tracing::info!(
        job_id,
        tenant_id,
        format = format.label(),
        queue = queue.name(),
        "job submitted"
    );
    Ok(Json(json!({
        "job_id": job_id,
        "status": "pending",
        "poll_url": format!("/api/v1/dedup/2d/jobs/{job_id}"),
        "forced_async_reason": (!params.async_request)
            .then_some("this API runs every search asynchronously on the worker fleet"),
    })))
}

/// The payload of an upload, dual-writing its bytes when the settings say so.
fn job_payload(
    state: &ApiState,
    tenant_id: &str,
    upload: Upload,
    file_ref: FileRef,
    request_params: serde_json::Map<String, Value>,
    callback_url: Option<String>,
    render: bool,
) -> JobPayload {
    let include_b64 =
        state.payload.include_b64 && upload.bytes.len() as u64 <= state.payload.b64_max_bytes;
    JobPayload {
        tenant_id: tenant_id.to_string(),
        file_name: upload.file_name,
        content_type: Some(upload.content_type),
        file_ref: Some(file_ref),
        query_geom: upload.geom,
        request_params,
        callback_url,
        render_required: render,
        file_bytes_b64: include_b64
            .then(|| base64::engine::general_purpose::STANDARD.encode(&upload.bytes)),
        extra: Default::default(),
    }
}

/// Submits the job; when that fails nothing may remain: the store cleaned its keys, the upload
/// goes too.
async fn submit_or_clean(
    state: &ApiState,
    job: &NewJob,
    file_ref: &FileRef,
) -> Result<u64, ApiError> {
    match state.store.submit(job).await {
        Ok(active) => Ok(active),
        Err(e) => {
            if let Err(del) = state.storage.delete(file_ref).await {
                tracing::warn!(job_id = job.job_id, error = %del, "cleanup of an upload after a failed submit failed");
            }
            let err = ApiError::from(e);
            state.metrics.count_submit(if err.code == "JOB_QUEUE_FULL" {
                "queue_full"
            } else {
                "error"
            });
            Err(err)
        }
    }
}

fn job_json(v: &JobView) -> Value {
    json!({
        "job_id": v.job_id,
        "tenant_id": v.tenant_id,
        "status": v.status,
        "created_at": v.created_at,
        "started_at": v.started_at,
        "finished_at": v.finished_at,
        "result": v.result,
        "error": v.error,
        "callback_status": (!v.callback_status.is_empty()).then_some(&v.callback_status),
        "callback_attempts": v.callback_url.as_ref().map(|_| v.callback_attempts),
        "callback_http_status": v.callback_http_status,
        "callback_finished_at": v.callback_finished_at,
        "callback_last_error": v.callback_last_error,
    })
}

/// `GET /api/v1/dedup/2d/jobs/{job_id}`: another tenant's job is 404 like a missing one.
pub(crate) async fn get_job(
    State(state): Shared,
    TenantJob { tenant_id, job_id }: TenantJob,
) -> Result<Json<Value>, ApiError> {
    let view = state.store.get_for_tenant(&job_id, &tenant_id).await?;
    Ok(Json(job_json(&view)))
}

/// `POST /api/v1/dedup/2d/jobs/{job_id}/cancel`: never waits for a worker.
pub(crate) async fn cancel_job(
    State(state): Shared,
    TenantJob { tenant_id, job_id }: TenantJob,
) -> Result<Json<Value>, ApiError> {
    let outcome = state
        .store
        .cancel_for_tenant(&job_id, &tenant_id, &state.queues())
        .await?;
    if let CancelOutcome::CanceledNow {
        file_ref: Some(file_ref),
    } = &outcome
    {
        if state.cleanup_on_finish {
            if let Err(e) = state.storage.delete(file_ref).await {
                tracing::warn!(job_id, error = %e, "deleting the upload of a canceled job failed");
            }
        }
    }
    Ok(Json(
        json!({"job_id": job_id, "tenant_id": tenant_id, "canceled": true}),
    ))
}

/// `GET /api/v1/dedup/2d/jobs?status=&limit=`
pub(crate) async fn list_jobs(
    State(state): Shared,
    headers: HeaderMap,
    query: Result<Query<HashMap<String, String>>, QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let tenant_id = tenant(&state, &headers)?;
    let (status, limit) = list_params(&query_of(query)?)?;
    let jobs = state
        .store
        .list_for_tenant(&tenant_id, status, limit)
        .await?;
    let items: Vec<Value> = jobs
        .iter()
        .map(|v| {
            json!({"job_id": v.job_id, "tenant_id": v.tenant_id, "status": v.status,
                   "created_at": v.created_at, "started_at": v.started_at,
                   "finished_at": v.finished_at, "error": v.error})
        })
        .collect();
    Ok(Json(json!({"total": items.len(), "jobs": items})))
}

/// Any other path: the JSON 404.
pub(crate) async fn no_route() -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "NOT_FOUND", "no such endpoint")
}

/// A known path with another method: the JSON 405.
pub(crate) async fn wrong_method(method: axum::http::Method) -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "METHOD_NOT_ALLOWED",
        format!("{method} is not allowed on this path"),
    )
}

pub(crate) async fn healthz() -> Json<Value> {
    Json(json!({"status": "ok"}))
}

/// Ready when Redis answers.
pub(crate) async fn readyz(State(state): Shared) -> Result<Json<Value>, ApiError> {
    let mut conn = state.store.connection();
    let pong: Result<String, _> = redis::cmd("PING").query_async(&mut conn).await;
    match pong {
        Ok(_) => Ok(Json(json!({"status": "ready"}))),
        Err(e) => Err(ApiError::unavailable(format!("redis unreachable: {e}"))),
    }
}

pub(crate) async fn metrics(State(state): Shared) -> impl IntoResponse {
    (
        [(
            axum::http::header::CONTENT_TYPE,
            crate::telemetry::METRICS_CONTENT_TYPE,
        )],
        state.metrics.render(),
    )
}
