//! The dedupcad-vision client's metrics, with the Python platform's names, labels and buckets,
//! registered in the worker's registry (served on its `/metrics`).

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EndpointStatus {
    pub endpoint: &'static str,
    pub status: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EndpointError {
    pub endpoint: &'static str,
    pub error: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EndpointReason {
    pub endpoint: &'static str,
    pub reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Endpoint {
    pub endpoint: &'static str,
}

fn duration_histogram() -> Histogram {
    Histogram::new([0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0])
}

#[derive(Clone)]
pub struct VisionMetrics {
    /// `dedupcad_vision_requests_total{endpoint,status}`: success, error, circuit_open.
    pub requests: Family<EndpointStatus, Counter>,
    /// `dedupcad_vision_request_duration_seconds{endpoint,status}`: per attempt.
    pub duration: Family<EndpointStatus, Histogram, fn() -> Histogram>,
    /// `dedupcad_vision_errors_total{endpoint,error}`: `http_503`, `timeout`, `invalid_json`...
    pub errors: Family<EndpointError, Counter>,
    /// `dedupcad_vision_retry_total{endpoint,reason}`.
    pub retries: Family<EndpointReason, Counter>,
    /// `dedupcad_vision_circuit_state{endpoint}`: 0 closed, 1 open, 2 half-open.
    pub circuit_state: Family<Endpoint, Gauge>,
}

impl VisionMetrics {
    pub fn register(registry: &mut Registry) -> Self {
        let m = VisionMetrics {
            requests: Family::default(),
            duration: Family::new_with_constructor(duration_histogram),
            errors: Family::default(),
            retries: Family::default(),
            circuit_state: Family::default(),
        };
        // prometheus-client appends `_total` to counters itself.
        registry.register(
            "dedupcad_vision_requests",
            "Total requests from cad-ml-platform to dedupcad-vision",
            m.requests.clone(),
        );
        registry.register(
            "dedupcad_vision_request_duration_seconds",
            "Latency of dedupcad-vision requests (seconds)",
            m.duration.clone(),
        );
        registry.register(
            "dedupcad_vision_errors",
            "Dedupcad-vision request errors",
            m.errors.clone(),
        );
        registry.register(
            "dedupcad_vision_retry",
            "Dedupcad-vision retry attempts",
            m.retries.clone(),
        );
        registry.register(
            "dedupcad_vision_circuit_state",
            "Circuit breaker state for dedupcad-vision (0=closed, 1=open, 2=half_open)",
            m.circuit_state.clone(),
        );
        m
    }
}
