//! `dedup2d api`: the job-submitting HTTP API, drop-in compatible with the Python dedup2d API
//! (same paths, parameters and response shapes), honouring the dual-write settings read at
//! start-up from `DEDUP2D_JOB_PAYLOAD_INCLUDE_BYTES_B64` / `..._BYTES_B64_MAX_BYTES`.

pub mod auth;
mod config_routes;
pub mod error;
mod handlers;
pub mod limits;
pub mod metrics;
pub mod params;
pub mod presets;
pub mod tenant_config;

use std::sync::Arc;
use std::time::Duration;

use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post};

use axum::Router;
use tenant_config::TenantConfigStore;

use crate::contract::callback::CallbackPolicy;
use crate::contract::config::{Config, PayloadSettings};
use crate::contract::queue::ArqQueue;
use crate::contract::store::JobStore;
use crate::storage::FileStorage;

pub use auth::ApiKeys;

pub use crate::contract::payload::DEFAULT_MAX_UPLOAD_BYTES;

/// Everything a request handler needs.
pub(crate) struct ApiState {
    pub store: JobStore,
    pub main_queue: ArqQueue,
    pub render_queue: Option<ArqQueue>,
    pub storage: Arc<dyn FileStorage>,
    pub payload: PayloadSettings,
    pub keys: ApiKeys,
    pub callbacks: CallbackPolicy,
    pub max_upload_bytes: u64,
    /// Delete an upload when its job ends (`DEDUP2D_FILE_STORAGE_CLEANUP_ON_FINISH`).
    pub cleanup_on_finish: bool,
    pub metrics: metrics::ApiMetrics,
    /// Per-tenant default settings (`/2d/config`).
    pub tenant_configs: TenantConfigStore,
    /// `ADMIN_TOKEN`: who may change tenant configs.
    pub admin_token: auth::AdminToken,
}

impl ApiState {
    pub(crate) fn queues(&self) -> Vec<ArqQueue> {
        std::iter::once(self.main_queue.clone())
            .chain(self.render_queue.clone())
            .collect()
    }
}

/// Builds the state from the contract configuration and an open Redis connection.
pub(crate) fn state(
    config: &Config,
    conn: redis::aio::ConnectionManager,
    storage: Arc<dyn FileStorage>,
    keys: ApiKeys,
    callbacks: CallbackPolicy,
    max_upload_bytes: u64,
    metrics: metrics::ApiMetrics,
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
        metrics,
        tenant_configs: TenantConfigStore::from_env(conn),
        admin_token: auth::AdminToken::from_env(),
    }
}

pub(crate) fn router(state: Arc<ApiState>, request_timeout: Duration) -> Router {
    // Multipart framing adds a little on top of the file itself.
    let body_limit = state.max_upload_bytes as usize + 64 * 1024;
    Router::new()
        .route("/api/v1/dedup/2d/search", post(handlers::search))
        .route("/api/v1/dedup/2d/jobs", get(handlers::list_jobs))
        .route("/api/v1/dedup/2d/presets", get(config_routes::presets))
        .route(
            "/api/v1/dedup/2d/config",
            get(config_routes::get_config)
                .put(config_routes::put_config)
                .delete(config_routes::delete_config),
        )
        .route("/api/v1/dedup/2d/jobs/{job_id}", get(handlers::get_job))
        .route(
            "/api/v1/dedup/2d/jobs/{job_id}/cancel",
            post(handlers::cancel_job),
        )
        .route("/healthz", get(handlers::healthz))
        .route("/readyz", get(handlers::readyz))
        .route("/metrics", get(handlers::metrics))
        .fallback(handlers::no_route)
        .method_not_allowed_fallback(handlers::wrong_method)
        .layer(DefaultBodyLimit::max(body_limit))
        .layer(axum::middleware::from_fn(move |req, next| {
            limits::request_timeout(request_timeout, req, next)
        }))
        .with_state(state)
}

/// Start-up settings of `dedup2d api` that are not part of the shared contract.
#[derive(Debug, Clone)]
pub struct ApiSettings {
    pub listen: std::net::SocketAddr,
    pub max_upload_bytes: u64,
    pub limits: limits::ConnectionLimits,
}

#[derive(Debug, thiserror::Error)]
pub enum ApiStartError {
    #[error("configuration: {0}")]
    Config(#[from] crate::contract::config::ConfigError),
    #[error("API keys: {0}")]
    Keys(#[from] auth::AuthConfigError),
    #[error("file storage: {0}")]
    Storage(#[from] crate::storage::StorageError),
    #[error("redis URL {url}: {source}")]
    Redis {
        url: String,
        #[source]
        source: redis::RedisError,
    },
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: std::net::SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

/// Runs the API until SIGTERM/SIGINT. Settings are read once, at start-up, like the Python
/// API: a ConfigMap change takes effect when the pods restart (the operator does that).
pub async fn run(settings: ApiSettings) -> Result<(), ApiStartError> {
    let config = Config::from_env()?;
    let keys = ApiKeys::from_env()?;
    let mut metrics = metrics::ApiMetrics::default();
    let storage_metrics = Arc::new(crate::storage::metrics::StorageMetrics::register(
        metrics.registry_mut(),
    ));
    let storage = crate::storage::from_config(&config.storage, storage_metrics)?;
    let redis_err = |source| ApiStartError::Redis {
        url: crate::contract::redact::redact_url(&config.redis_url),
        source,
    };
    let client = redis::Client::open(config.redis_url.as_str()).map_err(redis_err)?;
    // The connection manager reconnects on its own; Redis being down at start-up is a 503 on
    // /readyz, not a crash loop.
    // A submit carries the whole payload in one call: its timeout is sized for the largest.
    let timeout = crate::contract::store::bulk_response_timeout(
        crate::contract::payload::payload_bytes_for_upload(settings.max_upload_bytes),
    );
    let conn = redis::aio::ConnectionManager::new_lazy_with_config(
        client,
        redis::aio::ConnectionManagerConfig::new().set_response_timeout(Some(timeout)),
    )
    .map_err(redis_err)?;
    tracing::info!(
        include_bytes_b64 = config.payload.include_b64,
        bytes_b64_max_bytes = config.payload.b64_max_bytes,
        payload_mode = if config.payload.include_b64 { "file_ref_and_b64 (dual-write)" } else { "file_ref_only" },
        storage = storage.backend(),
        queue = %config.queue_name,
        render_queue = ?config.render_queue_name,
        "dedup2d api starting"
    );
    let state = Arc::new(state(
        &config,
        conn,
        storage,
        keys,
        CallbackPolicy::from_env(),
        settings.max_upload_bytes,
        metrics,
    ));
    let listener = tokio::net::TcpListener::bind(settings.listen)
        .await
        .map_err(|source| ApiStartError::Listen {
            addr: settings.listen,
            source,
        })?;
    tracing::info!(addr = %settings.listen, limits = ?settings.limits, "listening");
    let app = router(state, settings.limits.request_timeout);
    limits::serve(listener, app, settings.limits, crate::shutdown::signal()).await;
    Ok(())
}
