//! Operator metrics (Prometheus, via `prometheus-client`) and the small HTTP server that exposes them
//! with the health endpoints: `/metrics`, `/healthz` (200 while the process runs), `/readyz` (200 once
//! the caller says so).
//!
//! How the controller uses it:
//! ```text
//! let metrics = Arc::new(OperatorMetrics::default());
//! tokio::spawn(serve_health_and_metrics(addr, metrics.clone(), ready_rx));  // ready_tx.send(true): see serve.rs
//! let t = Instant::now(); /* reconcile */ metrics.observe_reconcile(t.elapsed());  // + record_reconcile_error(reason) on Err
//! metrics.observe_rollout(ns, name, &status); for (from, to) in decision.transitions() { metrics.record_transition(from, to) }
//! on deletion: metrics.forget_rollout(ns, name); on Completed/RolledBack/Failed: metrics.record_rollout_finished(phase, duration)
//! ```

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use tokio::sync::watch;

use super::crd::{Dedup2DRolloutStatus, Phase};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PhaseLabel {
    phase: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TransitionLabels {
    from: String,
    to: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabel {
    reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RolloutLabels {
    namespace: String,
    name: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabel {
    outcome: String,
}

type FloatGauge = Gauge<f64, AtomicU64>;

fn rollout_labels(namespace: &str, name: &str) -> RolloutLabels {
    RolloutLabels {
        namespace: namespace.into(),
        name: name.into(),
    }
}

/// The operator's metrics. Cheap to share behind an `Arc`; every method takes `&self`.
pub struct OperatorMetrics {
    registry: Registry,
    rollouts: Family<PhaseLabel, Gauge>,
    transitions: Family<TransitionLabels, Counter>,
    reconcile_errors: Family<ReasonLabel, Counter>,
    reconcile_duration: Histogram,
    legacy_payloads: Family<RolloutLabels, Gauge>,
    drain_remaining: Family<RolloutLabels, FloatGauge>,
    rollout_duration: Family<OutcomeLabel, Histogram>,
    leader: Gauge,
    status_writes: Counter,
    status_writes_coalesced: Counter,
    /// Last known phase of every rollout, from which `dedup2d_rollouts{phase}` is computed.
    phases: Mutex<HashMap<(String, String), Phase>>,
}

impl Default for OperatorMetrics {
    fn default() -> Self {
        let mut registry = Registry::default();
        let rollouts = Family::<PhaseLabel, Gauge>::default();
        let transitions = Family::<TransitionLabels, Counter>::default();
        let reconcile_errors = Family::<ReasonLabel, Counter>::default();
        // 5 ms .. ~10 s
        let reconcile_duration = Histogram::new(exponential_buckets(0.005, 2.0, 12));
        let legacy_payloads = Family::<RolloutLabels, Gauge>::default();
        let drain_remaining = Family::<RolloutLabels, FloatGauge>::default();
        // 1 min .. ~17 h
        let rollout_duration = Family::<OutcomeLabel, Histogram>::new_with_constructor(
            (|| Histogram::new(exponential_buckets(60.0, 2.0, 11))) as fn() -> Histogram,
        );
        let leader = Gauge::default();
        let (status_writes, status_writes_coalesced) = (Counter::default(), Counter::default());

        // prometheus-client appends `_total` to counters (and `_seconds` is part of the name we give).
        registry.register(
            "dedup2d_rollouts",
            "Dedup2DRollouts known to this operator, by phase",
            rollouts.clone(),
        );
        registry.register(
            "dedup2d_rollout_transitions",
            "Phase transitions of Dedup2DRollouts",
            transitions.clone(),
        );
        registry.register(
            "dedup2d_reconcile_errors",
            "Reconciles that ended in an error, by reason",
            reconcile_errors.clone(),
        );
        registry.register(
            "dedup2d_reconcile_duration_seconds",
            "Duration of one reconcile",
            reconcile_duration.clone(),
        );
        registry.register(
            "dedup2d_rollout_legacy_payloads",
            "Legacy (file_bytes_b64-carrying) payloads found in Redis by the last drain scan",
            legacy_payloads.clone(),
        );
        registry.register(
            "dedup2d_rollout_drain_seconds_remaining",
            "Seconds until the drain deadline (the last legacy payload can have expired)",
            drain_remaining.clone(),
        );
        registry.register(
            "dedup2d_rollout_duration_seconds",
            "Duration of finished rollouts (creation to Completed/RolledBack/Failed), by outcome",
            rollout_duration.clone(),
        );
        registry.register(
            "dedup2d_operator_leader",
            "1 while this operator replica holds the leader Lease",
            leader.clone(),
        );
        registry.register(
            "dedup2d_status_writes",
            "Status writes of Dedup2DRollouts",
            status_writes.clone(),
        );
        registry.register(
            "dedup2d_status_writes_coalesced",
            "Status changes that only restated progress and were not written (yet)",
            status_writes_coalesced.clone(),
        );
        let metrics = OperatorMetrics {
            registry,
            rollouts,
            transitions,
            reconcile_errors,
            reconcile_duration,
            legacy_payloads,
            drain_remaining,
            rollout_duration,
            leader,
            status_writes,
            status_writes_coalesced,
            phases: Mutex::new(HashMap::new()),
        };
        for p in Phase::ALL {
            metrics.count_phase(p, 0);
        }
        metrics
    }
}

impl OperatorMetrics {
    /// The registry, for other components to register their metrics in before serving.
    pub fn registry_mut(&mut self) -> &mut Registry {
        &mut self.registry
    }

    /// Records what a reconcile saw of one rollout: its phase, legacy payload count and drain time left.
    pub fn observe_rollout(&self, namespace: &str, name: &str, status: &Dedup2DRolloutStatus) {
        let phase = status.phase.unwrap_or_default();
        {
            let mut phases = self.phases.lock().unwrap_or_else(|p| p.into_inner());
            let was = phases.insert((namespace.into(), name.into()), phase);
            if was != Some(phase) {
                self.count_phase(phase, 1);
                if let Some(was) = was {
                    self.count_phase(was, -1);
                }
            }
        }
        let labels = rollout_labels(namespace, name);
        match status.legacy_payloads {
            Some(n) => {
                self.legacy_payloads.get_or_create(&labels).set(n);
            }
            None => {
                self.legacy_payloads.remove(&labels);
            }
        }
        let remaining = status.drain_deadline.as_ref().map(|d| {
            let left = d.0.as_millisecond() - k8s_openapi::jiff::Timestamp::now().as_millisecond();
            (left.max(0) as f64) / 1000.0
        });
        self.set_drain_seconds_remaining(namespace, name, remaining);
    }

    /// Sets (or, with `None`, removes) the drain seconds remaining of one rollout.
    pub fn set_drain_seconds_remaining(&self, namespace: &str, name: &str, seconds: Option<f64>) {
        let labels = rollout_labels(namespace, name);
        match seconds {
            Some(s) => {
                self.drain_remaining.get_or_create(&labels).set(s);
            }
            None => {
                self.drain_remaining.remove(&labels);
            }
        }
    }

    /// Drops every series of a deleted rollout.
    pub fn forget_rollout(&self, namespace: &str, name: &str) {
        {
            let mut phases = self.phases.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(was) = phases.remove(&(namespace.to_string(), name.to_string())) {
                self.count_phase(was, -1);
            }
        }
        let labels = rollout_labels(namespace, name);
        self.legacy_payloads.remove(&labels);
        self.drain_remaining.remove(&labels);
    }

    /// Moves `dedup2d_rollouts{phase}` by `by` (one series per phase, 0 when no rollout is in
    /// it; kept under the `phases` lock, so the counts always match the map).
    fn count_phase(&self, phase: Phase, by: i64) {
        self.rollouts
            .get_or_create(&PhaseLabel {
                phase: phase.to_string(),
            })
            .inc_by(by);
    }

    /// Counts one phase transition.
    pub fn record_transition(&self, from: Phase, to: Phase) {
        self.transitions
            .get_or_create(&TransitionLabels {
                from: from.to_string(),
                to: to.to_string(),
            })
            .inc();
    }

    /// Counts one failed reconcile. Keep `reason` a small fixed set (e.g. `Kube`, `Redis`, `Conflict`).
    pub fn record_reconcile_error(&self, reason: &str) {
        self.reconcile_errors
            .get_or_create(&ReasonLabel {
                reason: reason.into(),
            })
            .inc();
    }

    /// Counts a status write, or (`coalesced`) a status change left unwritten for now.
    pub fn record_status_write(&self, coalesced: bool) {
        if coalesced {
            self.status_writes_coalesced.inc();
        } else {
            self.status_writes.inc();
        }
    }

    /// Records the duration of one reconcile (successful or not).
    pub fn observe_reconcile(&self, took: Duration) {
        self.reconcile_duration.observe(took.as_secs_f64());
    }

    /// Records a finished rollout: `outcome` is its final phase (`Completed`, `RolledBack`, `Failed`).
    pub fn record_rollout_finished(&self, outcome: Phase, took: Duration) {
        self.rollout_duration
            .get_or_create(&OutcomeLabel {
                outcome: outcome.to_string(),
            })
            .observe(took.as_secs_f64());
    }

    /// Whether this replica leads (see `operator::leader`).
    pub fn set_leader(&self, leading: bool) {
        self.leader.set(i64::from(leading));
    }

    /// The registry in the Prometheus/OpenMetrics text format.
    pub fn render(&self) -> String {
        crate::telemetry::render(&self.registry)
    }
}

/// Errors of the health and metrics server.
#[derive(Debug, thiserror::Error)]
pub enum MetricsServerError {
    #[error("cannot listen for /metrics and health checks on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("the /metrics and health server failed: {0}")]
    Serve(#[source] std::io::Error),
}

/// Binds `addr` and serves `/metrics`, `/healthz` and `/readyz` (200 while `ready` holds `true`,
/// 503 otherwise) until the process ends.
pub async fn serve_health_and_metrics(
    addr: SocketAddr,
    metrics: Arc<OperatorMetrics>,
    ready: watch::Receiver<bool>,
) -> Result<(), MetricsServerError> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| MetricsServerError::Bind { addr, source })?;
    serve_health_and_metrics_on(listener, metrics, ready).await
}

/// [`serve_health_and_metrics`] on a listener the caller bound (tests bind port 0).
pub async fn serve_health_and_metrics_on(
    listener: tokio::net::TcpListener,
    metrics: Arc<OperatorMetrics>,
    ready: watch::Receiver<bool>,
) -> Result<(), MetricsServerError> {
    axum::serve(listener, router(metrics, ready))
        .await
        .map_err(MetricsServerError::Serve)
}

fn router(metrics: Arc<OperatorMetrics>, ready: watch::Receiver<bool>) -> Router {
    Router::new()
        .route(
            "/metrics",
            get(move || {
                let metrics = metrics.clone();
                async move {
                    (
                        [(header::CONTENT_TYPE, crate::telemetry::METRICS_CONTENT_TYPE)],
                        metrics.render(),
                    )
                }
            }),
        )
        .route("/healthz", get(|| async { "ok\n" }))
        .route(
            "/readyz",
            get(move || {
                let ready = *ready.borrow();
                async move {
                    if ready {
                        (StatusCode::OK, "ready\n").into_response()
                    } else {
                        (StatusCode::SERVICE_UNAVAILABLE, "not ready\n").into_response()
                    }
                }
            }),
        )
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
    use k8s_openapi::jiff::{SignedDuration, Timestamp};

    fn line_value(text: &str, series: &str) -> Option<f64> {
        text.lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
    }

    #[test]
    fn every_phase_has_a_rollouts_series_and_counts_follow_observations() {
        let m = OperatorMetrics::default();
        let text = m.render();
        for p in Phase::ALL {
            assert_eq!(
                line_value(&text, &format!("dedup2d_rollouts{{phase=\"{p}\"}}")),
                Some(0.0),
                "{text}"
            );
        }
        let soaking = Dedup2DRolloutStatus {
            phase: Some(Phase::Soaking),
            ..Default::default()
        };
        m.observe_rollout("a", "r1", &soaking);
        m.observe_rollout("b", "r1", &soaking);
        m.observe_rollout("a", "r2", &Dedup2DRolloutStatus::default());
        let text = m.render();
        assert_eq!(
            line_value(&text, "dedup2d_rollouts{phase=\"Soaking\"}"),
            Some(2.0)
        );
        assert_eq!(
            line_value(&text, "dedup2d_rollouts{phase=\"Pending\"}"),
            Some(1.0)
        );
        // A rollout moving on is counted once, in its new phase.
        let draining = Dedup2DRolloutStatus {
            phase: Some(Phase::Draining),
            ..Default::default()
        };
        m.observe_rollout("a", "r1", &draining);
        m.observe_rollout("a", "r1", &draining);
        m.forget_rollout("a", "r2");
        m.forget_rollout("a", "never-seen");
        let text = m.render();
        assert_eq!(
            line_value(&text, "dedup2d_rollouts{phase=\"Soaking\"}"),
            Some(1.0)
        );
        assert_eq!(
            line_value(&text, "dedup2d_rollouts{phase=\"Draining\"}"),
            Some(1.0)
        );
        assert_eq!(
            line_value(&text, "dedup2d_rollouts{phase=\"Pending\"}"),
            Some(0.0)
        );
    }

    #[test]
    fn counters_carry_total_once_and_their_labels() {
        let m = OperatorMetrics::default();
        m.record_transition(Phase::Soaking, Phase::DualWriteOff);
        m.record_transition(Phase::Soaking, Phase::DualWriteOff);
        m.record_reconcile_error("Kube");
        let text = m.render();
        assert!(!text.contains("_total_total"), "{text}");
        assert_eq!(
            line_value(
                &text,
                "dedup2d_rollout_transitions_total{from=\"Soaking\",to=\"DualWriteOff\"}"
            ),
            Some(2.0),
            "{text}"
        );
        assert_eq!(
            line_value(&text, "dedup2d_reconcile_errors_total{reason=\"Kube\"}"),
            Some(1.0),
            "{text}"
        );
        assert!(text.contains("# TYPE dedup2d_rollout_transitions counter"));
    }

    #[test]
    fn histograms_observe_in_seconds() {
        let m = OperatorMetrics::default();
        m.observe_reconcile(Duration::from_millis(30));
        m.record_rollout_finished(Phase::Completed, Duration::from_secs(3000));
        m.record_rollout_finished(Phase::RolledBack, Duration::from_secs(100));
        let text = m.render();
        assert!(text.contains("# TYPE dedup2d_reconcile_duration_seconds histogram"));
        assert_eq!(
            line_value(&text, "dedup2d_reconcile_duration_seconds_count"),
            Some(1.0),
            "{text}"
        );
        assert_eq!(
            line_value(&text, "dedup2d_reconcile_duration_seconds_sum"),
            Some(0.03)
        );
        assert_eq!(
            line_value(
                &text,
                "dedup2d_rollout_duration_seconds_sum{outcome=\"Completed\"}"
            ),
            Some(3000.0),
            "{text}"
        );
        assert_eq!(
            line_value(
                &text,
                "dedup2d_rollout_duration_seconds_count{outcome=\"RolledBack\"}"
            ),
            Some(1.0)
        );
    }

    #[test]
    fn per_rollout_gauges_follow_the_status_and_disappear_with_the_rollout() {
        let m = OperatorMetrics::default();
        let deadline = Timestamp::now() + SignedDuration::from_secs(600);
        let status = Dedup2DRolloutStatus {
            phase: Some(Phase::Draining),
            legacy_payloads: Some(12),
            drain_deadline: Some(Time(deadline)),
            ..Default::default()
        };
        m.observe_rollout("prod", "dedup2d", &status);
        let text = m.render();
        assert_eq!(
            line_value(
                &text,
                "dedup2d_rollout_legacy_payloads{namespace=\"prod\",name=\"dedup2d\"}"
            ),
            Some(12.0),
            "{text}"
        );
        let left = line_value(
            &text,
            "dedup2d_rollout_drain_seconds_remaining{namespace=\"prod\",name=\"dedup2d\"}",
        )
        .expect("drain series");
        assert!((595.0..=600.0).contains(&left), "{left}");

        // A past deadline is 0, not negative; no figure removes the series.
        let status = Dedup2DRolloutStatus {
            phase: Some(Phase::Draining),
            legacy_payloads: None,
            drain_deadline: Some(Time(Timestamp::now() - SignedDuration::from_secs(5))),
            ..Default::default()
        };
        m.observe_rollout("prod", "dedup2d", &status);
        let text = m.render();
        assert!(!text.contains("dedup2d_rollout_legacy_payloads{"), "{text}");
        assert_eq!(
            line_value(
                &text,
                "dedup2d_rollout_drain_seconds_remaining{namespace=\"prod\",name=\"dedup2d\"}"
            ),
            Some(0.0)
        );
        m.forget_rollout("prod", "dedup2d");
        assert!(!m
            .render()
            .contains("dedup2d_rollout_drain_seconds_remaining{"));
    }

    #[tokio::test]
    async fn http_endpoints_serve_metrics_health_and_readiness() {
        let metrics = Arc::new(OperatorMetrics::default());
        metrics.record_reconcile_error("Redis");
        metrics.set_leader(true);
        let (ready_tx, ready_rx) = watch::channel(false);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let server = tokio::spawn(serve_health_and_metrics_on(
            listener,
            metrics.clone(),
            ready_rx,
        ));
        let http = reqwest::Client::new();

        let r = http.get(format!("{base}/healthz")).send().await.unwrap();
        assert_eq!(r.status(), 200);
        let r = http.get(format!("{base}/readyz")).send().await.unwrap();
        assert_eq!(r.status(), 503);
        ready_tx.send(true).unwrap();
        let r = http.get(format!("{base}/readyz")).send().await.unwrap();
        assert_eq!(r.status(), 200);

        let r = http.get(format!("{base}/metrics")).send().await.unwrap();
        assert_eq!(r.status(), 200);
        assert!(r.headers()[header::CONTENT_TYPE]
            .to_str()
            .unwrap()
            .starts_with("application/openmetrics-text"));
        let body = r.text().await.unwrap();
        assert!(
            body.contains("dedup2d_reconcile_errors_total{reason=\"Redis\"} 1"),
            "{body}"
        );
        assert!(body.contains("dedup2d_operator_leader 1"), "{body}");
        assert!(body.trim_end().ends_with("# EOF"), "{body}");

        let r = http.get(format!("{base}/nope")).send().await.unwrap();
        assert_eq!(r.status(), 404);
        server.abort();
    }

    #[tokio::test]
    async fn binding_a_busy_address_is_a_clear_error() {
        let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = taken.local_addr().unwrap();
        let (_tx, rx) = watch::channel(true);
        let err = serve_health_and_metrics(addr, Arc::new(OperatorMetrics::default()), rx)
            .await
            .unwrap_err();
        assert!(err.to_string().contains(&addr.to_string()), "{err}");
    }
}
