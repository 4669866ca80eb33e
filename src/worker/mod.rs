//! `dedup2d worker`: the job worker the rollout installs. It shares the ARQ queue with the
//! Python workers, reads `file_ref` first and falls back to `file_bytes_b64`, announces that
//! capability in a Redis heartbeat, serves `/metrics` and `/healthz`, and shuts down without
//! losing or falsely finishing a job.

pub mod callback;
pub mod consumer;
pub mod engine;
pub mod heartbeat;
pub mod http;
pub mod input;
pub mod job;
pub mod metrics;
pub mod settings;
pub mod vision;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use tokio_util::sync::CancellationToken;

use crate::contract::queue::{ArqQueue, QueueSettings};
use crate::contract::redact::redact_url;
use crate::contract::store::{bulk_response_timeout, JobStore, PAYLOAD_READ_STEP};

pub use settings::WorkerSettings;

/// How often the queue-depth gauge and the ARQ health-check line are refreshed.
const HOUSEKEEPING_INTERVAL: Duration = Duration::from_secs(5);

/// Runs the worker until `stop` fires (the binary wires SIGTERM/SIGINT to it).
pub async fn run(settings: WorkerSettings, stop: CancellationToken) -> anyhow::Result<()> {
    let config = &settings.config;
    let (conn, bulk) = redis_connections(&settings).await?;

    let metrics = Arc::new(metrics::WorkerMetrics::new());
    let storage = crate::storage::from_config(&config.storage, metrics.storage.clone())
        .context("cannot set up file storage")?;
    let keys = config.keys();
    let store = JobStore::new(
        conn.clone(),
        keys.clone(),
        config.ttl_seconds,
        config.max_jobs,
    )
    .with_bulk_connection(bulk);
    let queue_names = settings.queue_names();
    let queues: Vec<ArqQueue> = queue_names
        .iter()
        .map(|q| ArqQueue::new(conn.clone(), q.clone()))
        .collect();
    let mut queue_settings = QueueSettings::for_job_timeout(config.job_timeout_seconds);
    queue_settings.max_tries = settings.max_tries;

    let ctx = Arc::new(job::JobContext {
        store,
        storage,
        engine: search_engine(&settings, &conn, &keys, &metrics)?,
        callbacks: callback::CallbackSender::new(settings.callbacks.clone())
            .context("cannot build the webhook HTTP client")?,
        metrics: metrics.clone(),
        cleanup_on_finish: config.storage.cleanup_on_finish(),
        max_payload_bytes: settings.max_payload_bytes,
        job_timeout: Duration::from_secs(config.job_timeout_seconds),
        debug_job_delay: settings.debug_job_delay,
        cancel_poll: Duration::from_secs(1),
    });

    let consuming = Arc::new(AtomicBool::new(true));
    let http_stop = CancellationToken::new();
    let http = serve_metrics(
        &settings,
        http::HttpState {
            metrics: metrics.clone(),
            conn: conn.clone(),
            consuming: consuming.clone(),
        },
        http_stop.clone(),
    )
    .await?;

    let beat_stop = CancellationToken::new();
    let beat_task =
        start_heartbeat(&settings, &conn, &keys, &queue_names, beat_stop.clone()).await?;

    let housekeeping = tokio::spawn(housekeeping(
        queues.clone(),
        metrics.clone(),
        settings.hostname.clone(),
        stop.clone(),
    ));

    consumer::Consumer {
        jobs: ctx,
        queues,
        queue_settings,
        max_jobs: config.worker_max_jobs as usize,
        poll_interval: settings.poll_interval,
        shutdown_grace: settings.shutdown_grace,
    }
    .run(stop)
    .await;

    consuming.store(false, Ordering::Relaxed);
    beat_stop.cancel();
    let _ = beat_task.await;
    housekeeping.abort();
    http_stop.cancel();
    let _ = http.await;
    tracing::info!("worker stopped");
    Ok(())
}

/// The worker's two Redis connections: claims, job state and heartbeats on one (small calls,
/// redis-rs's default timeout); payload reads on their own, with a timeout sized for the
/// largest call they make.
async fn redis_connections(
    settings: &WorkerSettings,
) -> anyhow::Result<(redis::aio::ConnectionManager, redis::aio::ConnectionManager)> {
    let config = &settings.config;
    let client = redis::Client::open(config.redis_url.as_str())
        .with_context(|| format!("invalid Redis URL {}", redact_url(&config.redis_url)))?;
    let redacted = redact_url(&config.redis_url);
    let connect = |config: redis::aio::ConnectionManagerConfig| {
        let client = client.clone();
        let redacted = redacted.clone();
        async move {
            client
                .get_connection_manager_with_config(config)
                .await
                .with_context(|| format!("cannot connect to Redis at {redacted}"))
        }
    };
    let conn = connect(redis::aio::ConnectionManagerConfig::new()).await?;
    let bulk = connect(
        redis::aio::ConnectionManagerConfig::new().set_response_timeout(Some(
            bulk_response_timeout(settings.max_payload_bytes.min(PAYLOAD_READ_STEP)),
        )),
    )
    .await?;
    Ok((conn, bulk))
}

/// Binds `/metrics` and `/healthz` and serves them until `stop`.
async fn serve_metrics(
    settings: &WorkerSettings,
    state: http::HttpState,
    stop: CancellationToken,
) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    let listener = tokio::net::TcpListener::bind(settings.metrics_addr)
        .await
        .with_context(|| format!("cannot listen on {}", settings.metrics_addr))?;
    tracing::info!(addr = %listener.local_addr()?, "serving /metrics and /healthz");
    let state = Arc::new(state);
    Ok(tokio::spawn(async move {
        let served = axum::serve(listener, http::router(state))
            .with_graceful_shutdown(async move { stop.cancelled().await })
            .await;
        if let Err(e) = served {
            tracing::error!(error = %e, "metrics server stopped");
        }
    }))
}

/// Writes the capability heartbeat once (a start-up error if it cannot), then keeps it fresh
/// until `stop`.
async fn start_heartbeat(
    settings: &WorkerSettings,
    conn: &redis::aio::ConnectionManager,
    keys: &crate::contract::keys::Keys,
    queue_names: &[String],
    stop: CancellationToken,
) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    let capability = heartbeat::Capability::this_process(queue_names.to_vec());
    let beat = heartbeat::Heartbeat::new(
        conn.clone(),
        keys.worker_heartbeat(&settings.hostname),
        &capability,
        settings.heartbeat_ttl,
        settings.heartbeat_interval,
    );
    beat.beat()
        .await
        .context("cannot write the capability heartbeat")?;
    let task = tokio::spawn(beat.run(stop));
    tracing::info!(hostname = %settings.hostname, formats = ?heartbeat::FORMATS, "capability heartbeat on");
    Ok(task)
}

/// The dedupcad-vision backend when `DEDUPCAD_VISION_URL` is set, else the built-in engine.
fn search_engine(
    settings: &WorkerSettings,
    conn: &redis::aio::ConnectionManager,
    keys: &crate::contract::keys::Keys,
    metrics: &metrics::WorkerMetrics,
) -> anyhow::Result<Arc<dyn engine::SearchEngine>> {
    Ok(match &settings.vision {
        Some(v) => {
            tracing::info!(url = %redact_url(v.base_url.as_str()), "search backend: dedupcad-vision");
            Arc::new(vision::VisionEngine::new(
                v.clone(),
                metrics.vision.clone(),
            )?)
        }
        None => Arc::new(engine::DrawingEngine::new(
            conn.clone(),
            keys.clone(),
            settings.index_ttl_seconds,
        )),
    })
}

/// Queue depth for `/metrics` and ARQ's `{queue}:health-check` line, until `stop`.
async fn housekeeping(
    queues: Vec<ArqQueue>,
    metrics: Arc<metrics::WorkerMetrics>,
    hostname: String,
    stop: CancellationToken,
) {
    loop {
        let mut depth = 0u64;
        for q in &queues {
            match q.depth().await {
                Ok(d) => depth += d,
                Err(e) => tracing::debug!(error = %e, "cannot read queue depth"),
            }
        }
        metrics.queue_depth.set(depth as i64);
        let ongoing = metrics.in_flight.get();
        let line = format!(
            "{} worker={hostname} j_ongoing={ongoing} queued={depth}",
            crate::contract::store::epoch_seconds_string()
        );
        for q in &queues {
            let _ = q
                .record_health(&line, (HOUSEKEEPING_INTERVAL * 3).as_millis() as u64)
                .await;
        }
        tokio::select! {
            () = tokio::time::sleep(HOUSEKEEPING_INTERVAL) => {}
            () = stop.cancelled() => return,
        }
    }
}
