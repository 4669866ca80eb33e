//! The worker's small HTTP server: `/metrics` (Prometheus text) and `/healthz` (Redis reachable
//! and the consumer loop alive).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use redis::aio::ConnectionManager;

use super::metrics::WorkerMetrics;

pub struct HttpState {
    pub metrics: Arc<WorkerMetrics>,
    pub conn: ConnectionManager,
    /// Cleared when the consumer loop stops.
    pub consuming: Arc<AtomicBool>,
}

pub fn router(state: Arc<HttpState>) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .with_state(state)
}

async fn metrics(State(s): State<Arc<HttpState>>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, crate::telemetry::METRICS_CONTENT_TYPE)],
        s.metrics.render(),
    )
}

async fn healthz(State(s): State<Arc<HttpState>>) -> impl IntoResponse {
    if !s.consuming.load(Ordering::Relaxed) {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            "shutting down\n".to_string(),
        );
    }
    let mut conn = s.conn.clone();
    let ping = tokio::time::timeout(
        std::time::Duration::from_secs(2),
        redis::cmd("PING").query_async::<String>(&mut conn),
    )
    .await;
    match ping {
        Ok(Ok(_)) => (StatusCode::OK, "ok\n".to_string()),
        Ok(Err(e)) => (StatusCode::SERVICE_UNAVAILABLE, format!("redis: {e}\n")),
        Err(_) => (
            StatusCode::SERVICE_UNAVAILABLE,
            "redis: timeout\n".to_string(),
        ),
    }
}
