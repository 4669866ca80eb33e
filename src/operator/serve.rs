//! The `dedup2d operator` process: the health and metrics server, leader election on a Lease, and the
//! controller, which runs only while this replica leads. Losing the Lease drops the controller at its
//! current `.await` (it stops acting at once); the replica then stands by and contends again.
//!
//! `/healthz` is 200 while the process runs. `/readyz` is 200 while the election runs and this
//! replica either stands by (a standby has no caches to wait for, and must be ready so a rolling
//! update of the operator can go on) or leads with its watch caches synced; it is 503 before the
//! election starts, while a new leader's caches fill, and once the election has stopped.
//!
//! The Lease is renewed on its own task (`leader.rs`), never behind a reconcile: reconciles are
//! bounded (`max_concurrent_reconciles`), read from memory, hold no lock the renewal takes (the
//! kube client has no client-side rate limit or request lock), and the runtime has at least two
//! worker threads, so a burst of reconciles cannot keep the renewal from running.

use std::{net::SocketAddr, sync::Arc, time::Duration};

use kube::Client;
use tokio::sync::watch;
use tracing::{info, warn, Instrument};

use super::{
    controller::{self, RunError},
    leader::{LeaderElector, LeaderError},
    metrics::{serve_health_and_metrics_on, MetricsServerError, OperatorMetrics},
};

/// How one operator replica runs.
#[derive(Debug, Clone)]
pub struct OperatorSettings {
    /// Only rollouts (and targets) in this namespace; `None`: all namespaces.
    pub namespace: Option<String>,
    pub lease_namespace: String,
    pub lease_name: String,
    /// Unique per replica (pod name + pid).
    pub identity: String,
    pub lease_duration: Duration,
    pub lease_grace: Duration,
    pub metrics_addr: SocketAddr,
    /// At most this many reconciles at once.
    pub max_concurrent_reconciles: u16,
}

/// Identity of this replica: `POD_NAME` (else `HOSTNAME`, else `dedup2d-operator`) and the pid, so a
/// restarted process in the same pod is a new contender.
pub fn default_identity() -> String {
    let base = std::env::var("POD_NAME")
        .or_else(|_| std::env::var("HOSTNAME"))
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "dedup2d-operator".into());
    format!("{base}-{}", std::process::id())
}

/// The Lease namespace when none is given: the watched namespace, else `POD_NAMESPACE`, else `default`.
pub fn default_lease_namespace(namespace: Option<&str>) -> String {
    namespace
        .map(str::to_string)
        .or_else(|| std::env::var("POD_NAMESPACE").ok())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "default".into())
}

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error(transparent)]
    Metrics(#[from] MetricsServerError),
    #[error(transparent)]
    Leader(#[from] LeaderError),
    #[error(transparent)]
    Run(#[from] RunError),
}

/// Runs the operator replica until SIGTERM/SIGINT (then releases the Lease) or a fatal error.
pub async fn run(client: Client, settings: OperatorSettings) -> Result<(), ServeError> {
    let metrics = Arc::new(OperatorMetrics::default());
    let (ready_tx, ready_rx) = watch::channel(false);
    let addr = settings.metrics_addr;
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| MetricsServerError::Bind { addr, source })?;
    let bound = listener.local_addr().unwrap_or(addr);
    info!(addr = %bound, "serving /metrics, /healthz and /readyz");
    let server = tokio::spawn(serve_health_and_metrics_on(
        listener,
        metrics.clone(),
        ready_rx,
    ));

    let identity = settings.identity.clone();
    let span = tracing::info_span!("operator", identity = %identity);
    let result = lead_and_run(client, &settings, metrics, ready_tx)
        .instrument(span)
        .await;
    server.abort();
    result
}

async fn lead_and_run(
    client: Client,
    settings: &OperatorSettings,
    metrics: Arc<OperatorMetrics>,
    ready_tx: watch::Sender<bool>,
) -> Result<(), ServeError> {
    let leadership = LeaderElector::new(
        client.clone(),
        &settings.lease_namespace,
        &settings.lease_name,
        &settings.identity,
    )
    .with_timing(settings.lease_duration, settings.lease_grace)?
    .start()
    .await?;
    info!(
        identity = %settings.identity,
        lease = %format!("{}/{}", settings.lease_namespace, settings.lease_name),
        "contending for leadership"
    );

    // Mirror the leading flag into the metric and the log, and with the caches' state into readiness.
    let mut leading = leadership.subscribe();
    let (synced_tx, mut synced) = watch::channel(false);
    let flag_metrics = metrics.clone();
    let identity = settings.identity.clone();
    let mirror = tokio::spawn(
        async move {
            let mut was_leading = None;
            loop {
                let now = *leading.borrow_and_update();
                if was_leading != Some(now) {
                    flag_metrics.set_leader(now);
                    if now {
                        info!(%identity, "leading");
                    } else {
                        info!(%identity, "standing by");
                    }
                    was_leading = Some(now);
                }
                let _ = ready_tx.send(!now || *synced.borrow_and_update());
                let ended = tokio::select! {
                    r = leading.changed() => r.is_err(),
                    r = synced.changed() => r.is_err(),
                };
                if ended {
                    let _ = ready_tx.send(false);
                    flag_metrics.set_leader(false);
                    return;
                }
            }
        }
        .in_current_span(),
    );

    let mut shutdown = std::pin::pin!(crate::shutdown::signal());
    let result = loop {
        // A new controller starts with empty caches.
        synced_tx.send_replace(false);
        let controller = controller::run(
            client.clone(),
            settings.namespace.clone(),
            settings.max_concurrent_reconciles,
            metrics.clone(),
            synced_tx.clone(),
        );
        tokio::select! {
            _ = &mut shutdown => break Ok(()),
            r = leadership.run_while_leader(controller) => match r {
                Ok(Ok(())) => break Ok(()),
                Ok(Err(e)) => break Err(e.into()),
                Err(LeaderError::Lost { .. }) => {
                    warn!(identity = %settings.identity, "lost leadership: stopped acting; standing by");
                    continue;
                }
                Err(e) => break Err(e.into()),
            },
        }
    };
    info!(identity = %settings.identity, "releasing leadership");
    if let Err(e) = leadership.release().await {
        warn!(error = %e, "could not release the Lease");
    }
    mirror.abort();
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lease_namespace_prefers_the_watched_namespace() {
        assert_eq!(default_lease_namespace(Some("team-a")), "team-a");
    }

    #[test]
    fn identity_ends_with_the_pid() {
        assert!(default_identity().ends_with(&format!("-{}", std::process::id())));
    }
}
