//! Storage metrics of the contract: `dedup2d_file_{uploads,downloads,deletes}_total{backend,status}`
//! and `dedup2d_file_operation_duration_seconds{backend,operation}`.

use std::time::Instant;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    pub backend: &'static str,
    pub status: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OperationLabels {
    pub backend: &'static str,
    pub operation: &'static str,
}

/// The three storage operations.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    Upload,
    Download,
    Delete,
}

impl Op {
    pub(crate) fn label(self) -> &'static str {
        match self {
            Op::Upload => "upload",
            Op::Download => "download",
            Op::Delete => "delete",
        }
    }
}

fn duration_histogram() -> Histogram {
    // 1 ms .. ~16 s
    Histogram::new(exponential_buckets(0.001, 2.0, 15))
}

pub struct StorageMetrics {
    pub uploads: Family<OutcomeLabels, Counter>,
    pub downloads: Family<OutcomeLabels, Counter>,
    pub deletes: Family<OutcomeLabels, Counter>,
    pub duration: Family<OperationLabels, Histogram, fn() -> Histogram>,
}

impl StorageMetrics {
    /// Creates the metrics and registers them (prometheus-client appends `_total` to counters).
    pub(crate) fn register(registry: &mut Registry) -> Self {
        let m = Self::unregistered();
        registry.register(
            "dedup2d_file_uploads",
            "Uploads to file storage by backend and status",
            m.uploads.clone(),
        );
        registry.register(
            "dedup2d_file_downloads",
            "Downloads from file storage by backend and status",
            m.downloads.clone(),
        );
        registry.register(
            "dedup2d_file_deletes",
            "Deletes in file storage by backend and status",
            m.deletes.clone(),
        );
        registry.register(
            "dedup2d_file_operation_duration_seconds",
            "Duration of file storage operations",
            m.duration.clone(),
        );
        m
    }

    /// Metrics that are counted but not exported (tools and tests).
    pub fn unregistered() -> Self {
        StorageMetrics {
            uploads: Family::default(),
            downloads: Family::default(),
            deletes: Family::default(),
            duration: Family::new_with_constructor(duration_histogram),
        }
    }

    pub(crate) fn record(&self, backend: &'static str, op: Op, ok: bool, started: Instant) {
        let status = if ok { "success" } else { "error" };
        let family = match op {
            Op::Upload => &self.uploads,
            Op::Download => &self.downloads,
            Op::Delete => &self.deletes,
        };
        family
            .get_or_create(&OutcomeLabels { backend, status })
            .inc();
        self.duration
            .get_or_create(&OperationLabels {
                backend,
                operation: op.label(),
            })
            .observe(started.elapsed().as_secs_f64());
    }

    /// Current value of one outcome counter (for tests and logs).
    pub fn count(&self, op: Op, backend: &'static str, status: &'static str) -> u64 {
        let family = match op {
            Op::Upload => &self.uploads,
            Op::Download => &self.downloads,
            Op::Delete => &self.deletes,
        };
        family
            .get_or_create(&OutcomeLabels { backend, status })
            .get()
    }
}
