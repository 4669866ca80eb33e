//! `dedup2d api`: the job-submitting HTTP API, drop-in compatible with the Python dedup2d API
//! (same paths, parameters and response shapes), honouring the dual-write settings read at
//! start-up from `DEDUP2D_JOB_PAYLOAD_INCLUDE_BYTES_B64` / `..._BYTES_B64_MAX_BYTES`.

pub mod auth;
pub mod error;
mod handlers;
pub mod metrics;
pub mod params;
pub mod uploads;

use std::sync::Arc;

use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post};
use axum::Router;

use crate::contract::callback::CallbackPolicy;
use crate::contract::config::{Config, PayloadSettings};
use crate::contract::queue::ArqQueue;
use crate::contract::store::JobStore;

pub use auth::ApiKeys;

/// Default upper bound of an upload (`DEDUP2D_API_MAX_UPLOAD_BYTES`).
pub const DEFAULT_MAX_UPLOAD_BYTES: u64 = 50 * 1024 * 1024;

/// Everything a request handler needs.
pub struct ApiState {
    pub store: JobStore,
    pub main_queue: ArqQueue,
    pub render_queue: Option<ArqQueue>,
    pub storage: Arc<dyn uploads::Uploads>,
    pub payload: PayloadSettings,
    pub keys: ApiKeys,
    pub callbacks: CallbackPolicy,
    pub max_upload_bytes: u64,
    /// Delete an upload when its job ends (`DEDUP2D_FILE_STORAGE_CLEANUP_ON_FINISH`).
    pub cleanup_on_finish: bool,
    pub metrics: metrics::ApiMetrics,
}

impl ApiState {
    pub fn queues(&self) -> Vec<ArqQueue> {
        std::iter::once(self.main_queue.clone())
            .chain(self.render_queue.clone())
            .collect()
    }
}

/// Builds the state from the contract configuration and an open Redis connection.
pub fn state(
    config: &Config,
    conn: redis::aio::ConnectionManager,
    storage: Arc<dyn uploads::Uploads>,
    keys: ApiKeys,
    callbacks: CallbackPolicy,
    max_upload_bytes: u64,
) -> ApiState {
    ApiState {
        store: JobStore::new(
            conn.clone(),
            config.keys(),
            config.ttl_seconds,
            config.max_jobs,
        ),
        main_queue: ArqQueue::new(conn.clone(), config.queue_name.clone()),
        render_queue: config
            .render_queue_name
            .as_ref()
            .map(|q| ArqQueue::new(conn.clone(), q.clone())),
        storage,
        payload: config.payload,
        keys,
        callbacks,
        max_upload_bytes,
        cleanup_on_finish: config.storage.cleanup_on_finish(),
        metrics: metrics::ApiMetrics::default(),
    }
}

pub fn router(state: Arc<ApiState>) -> Router {
    // Multipart framing adds a little on top of the file itself.
    let body_limit = state.max_upload_bytes as usize + 64 * 1024;
    Router::new()
        .route("/api/v1/dedup/2d/search", post(handlers::search))
        .route("/api/v1/dedup/2d/jobs", get(handlers::list_jobs))
        .route("/api/v1/dedup/2d/jobs/{job_id}", get(handlers::get_job))
        .route(
            "/api/v1/dedup/2d/jobs/{job_id}/cancel",
            post(handlers::cancel_job),
        )
        .route("/healthz", get(handlers::healthz))
        .route("/readyz", get(handlers::readyz))
        .route("/metrics", get(handlers::metrics))
        .layer(DefaultBodyLimit::max(body_limit))
        .with_state(state)
}
