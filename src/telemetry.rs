//! Process-wide logging and metrics plumbing shared by every subcommand: a tracing subscriber
//! (JSON in clusters, human-readable on a terminal) and Prometheus text rendering.

use std::io::IsTerminal;

use prometheus_client::registry::Registry;
use tracing_subscriber::EnvFilter;

/// Installs the global tracing subscriber. `RUST_LOG` filters (default `info`);
/// `DEDUP2D_LOG_FORMAT=json|text` forces a format, otherwise JSON unless stderr is a terminal.
/// Calling it twice is harmless.
pub fn init_tracing() {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let json = match std::env::var("DEDUP2D_LOG_FORMAT")
        .ok()
        .as_deref()
        .map(str::trim)
    {
        Some("json") => true,
        Some("text") => false,
        _ => !std::io::stderr().is_terminal(),
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = if json {
        builder.json().flatten_event(true).try_init()
    } else {
        builder.try_init()
    };
}

/// Renders a registry in the Prometheus text exposition format.
pub(crate) fn render(registry: &Registry) -> String {
    let mut out = String::new();
    prometheus_client::encoding::text::encode(&mut out, registry)
        .expect("encoding metrics into a String cannot fail");
    out
}

/// The content type of [`render`]'s output.
pub(crate) const METRICS_CONTENT_TYPE: &str =
    "application/openmetrics-text; version=1.0.0; charset=utf-8";
