//! Worker metrics, served on `/metrics`: the legacy-fallback counter the rollout watches, jobs
//! by final status and their durations, queue depth, payload formats seen, webhook outcomes,
//! and the storage metrics.

use std::sync::Arc;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

use crate::storage::StorageMetrics;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StatusLabels {
    pub status: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FormatLabels {
    pub format: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    pub reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    pub outcome: &'static str,
}

fn job_duration_histogram() -> Histogram {
    // 5 ms .. ~20 min
    Histogram::new(exponential_buckets(0.005, 2.0, 18))
}

pub struct WorkerMetrics {
    registry: Registry,
    /// `dedup2d_legacy_b64_fallback_total`: jobs whose bytes came from `file_bytes_b64`.
    pub legacy_b64_fallback: Counter,
    /// `dedup2d_worker_b64_fallback_total{reason}`: the same jobs, by why (`b64_only`,
    /// `stored_file_missing`).
    pub b64_fallbacks: Family<ReasonLabels, Counter>,
    /// `dedup2d_jobs_total{status}`: jobs this worker finished, by final status.
    pub jobs: Family<StatusLabels, Counter>,
    /// `dedup2d_job_duration_seconds{status}`.
    pub job_duration: Family<StatusLabels, Histogram, fn() -> Histogram>,
    /// `dedup2d_job_queue_depth`: entries in the ARQ queue(s) this worker consumes.
    pub queue_depth: Gauge,
    /// `dedup2d_worker_jobs_in_flight`.
    pub in_flight: Gauge,
    /// `dedup2d_worker_payload_format_total{format}`: payload formats this worker read.
    pub payload_formats: Family<FormatLabels, Counter>,
    /// `dedup2d_webhook_deliveries_total{outcome}`: success, failed, skipped.
    pub webhooks: Family<OutcomeLabels, Counter>,
    pub storage: Arc<StorageMetrics>,
    /// The dedupcad-vision client's metrics (`dedupcad_vision_*`).
    pub vision: super::vision::metrics::VisionMetrics,
}

impl Default for WorkerMetrics {
    fn default() -> Self {
        Self::new()
    }
}

impl WorkerMetrics {
    pub fn new() -> Self {
        let mut registry = Registry::default();
        let storage = Arc::new(StorageMetrics::register(&mut registry));
        let vision = super::vision::metrics::VisionMetrics::register(&mut registry);
        let m = WorkerMetrics {
            registry: Registry::default(),
            legacy_b64_fallback: Counter::default(),
            b64_fallbacks: Family::default(),
            jobs: Family::default(),
            job_duration: Family::new_with_constructor(job_duration_histogram),
            queue_depth: Gauge::default(),
            in_flight: Gauge::default(),
            payload_formats: Family::default(),
            webhooks: Family::default(),
            storage,
            vision,
        };
        // prometheus-client appends `_total` to counters itself.
        registry.register(
            "dedup2d_legacy_b64_fallback",
            "Jobs whose file came from the legacy file_bytes_b64 payload field",
            m.legacy_b64_fallback.clone(),
        );
        registry.register(
            "dedup2d_worker_b64_fallback",
            "Jobs whose file came from file_bytes_b64, by reason (b64_only, stored_file_missing)",
            m.b64_fallbacks.clone(),
        );
        registry.register(
            "dedup2d_jobs",
            "Jobs finished by this worker, by final status",
            m.jobs.clone(),
        );
        registry.register(
            "dedup2d_job_duration_seconds",
            "Time from claim to final status, by final status",
            m.job_duration.clone(),
        );
        registry.register(
            "dedup2d_job_queue_depth",
            "Jobs waiting or running in the ARQ queue(s) this worker consumes",
            m.queue_depth.clone(),
        );
        registry.register(
            "dedup2d_worker_jobs_in_flight",
            "Jobs this worker is running now",
            m.in_flight.clone(),
        );
        registry.register(
            "dedup2d_worker_payload_format",
            "Job payloads read by this worker, by format",
            m.payload_formats.clone(),
        );
        registry.register(
            "dedup2d_webhook_deliveries",
            "Webhook callbacks by outcome",
            m.webhooks.clone(),
        );
        WorkerMetrics { registry, ..m }
    }

    pub fn render(&self) -> String {
        crate::telemetry::render(&self.registry)
    }

    pub fn count_job(&self, status: &'static str, seconds: f64) {
        self.jobs.get_or_create(&StatusLabels { status }).inc();
        self.job_duration
            .get_or_create(&StatusLabels { status })
            .observe(seconds);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exposes_the_contract_names() {
        let m = WorkerMetrics::new();
        m.legacy_b64_fallback.inc();
        m.count_job("completed", 0.2);
        m.queue_depth.set(3);
        m.storage.record(
            "local",
            crate::storage::metrics::Op::Download,
            true,
            std::time::Instant::now(),
        );
        let text = m.render();
        for needle in [
            "dedup2d_legacy_b64_fallback_total 1",
            "dedup2d_jobs_total{status=\"completed\"} 1",
            "dedup2d_job_duration_seconds_count{status=\"completed\"} 1",
            "dedup2d_job_queue_depth 3",
            "dedup2d_file_downloads_total{backend=\"local\",status=\"success\"} 1",
            "dedup2d_file_operation_duration_seconds_count{backend=\"local\",operation=\"download\"} 1",
        ] {
            assert!(text.contains(needle), "missing {needle:?} in\n{text}");
        }
    }
}
