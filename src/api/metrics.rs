//! API metrics in Prometheus text format.

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

type Labels = Vec<(String, String)>;

pub(crate) struct ApiMetrics {
    registry: Registry,
    /// `dedup2d_payload_format_total{format}`: payloads written, by format label.
    pub payload_format: Family<Labels, Counter>,
    /// `dedup2d_jobs_submitted_total{outcome}`: accepted, queue_full, error.
    pub submits: Family<Labels, Counter>,
    /// `dedup2d_job_queue_depth`: unfinished jobs seen at the last submit.
    pub queue_depth: Gauge,
}

impl Default for ApiMetrics {
    fn default() -> Self {
        let mut registry = Registry::default();
        let payload_format = Family::<Labels, Counter>::default();
        let submits = Family::<Labels, Counter>::default();
        let queue_depth = Gauge::default();
        // prometheus-client appends `_total` to counters itself.
        registry.register(
            "dedup2d_payload_format",
            "Job payloads written by the API, by format",
            payload_format.clone(),
        );
        registry.register(
            "dedup2d_jobs_submitted",
            "Job submissions by outcome",
            submits.clone(),
        );
        registry.register(
            "dedup2d_job_queue_depth",
            "Unfinished jobs in the active set",
            queue_depth.clone(),
        );
        ApiMetrics {
            registry,
            payload_format,
            submits,
            queue_depth,
        }
    }
}

impl ApiMetrics {
    /// The registry, for other components (storage) to register their metrics in.
    pub(crate) fn registry_mut(&mut self) -> &mut Registry {
        &mut self.registry
    }

    pub(crate) fn count_format(&self, label: &str) {
        self.payload_format
            .get_or_create(&vec![("format".into(), label.into())])
            .inc();
    }

    pub(crate) fn count_submit(&self, outcome: &str) {
        self.submits
            .get_or_create(&vec![("outcome".into(), outcome.into())])
            .inc();
    }

    pub(crate) fn render(&self) -> String {
        crate::telemetry::render(&self.registry)
    }
}
