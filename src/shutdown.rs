//! The one shutdown signal of the long-running subcommands (operator, worker, API): the first
//! SIGTERM or SIGINT starts a graceful stop, and each caller says what that means (release the
//! Lease, let running jobs finish, drain HTTP connections). Further signals change nothing; a stop
//! that takes too long is ended by the orchestrator's SIGKILL. If the handlers cannot be
//! installed, that is logged and only SIGKILL stops the process.

use tokio::signal::unix::{signal as unix_signal, SignalKind};
use tokio_util::sync::CancellationToken;

/// Completes at the first SIGTERM or SIGINT (logged); never when the handlers cannot be installed.
pub async fn signal() {
    let (Ok(mut term), Ok(mut int)) = (
        unix_signal(SignalKind::terminate()),
        unix_signal(SignalKind::interrupt()),
    ) else {
        tracing::warn!("cannot install signal handlers; stop with SIGKILL");
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM: shutting down"),
        _ = int.recv() => tracing::info!("SIGINT: shutting down"),
    }
}

/// A token cancelled at the first SIGTERM or SIGINT ([`signal`]), for code that stops on a token.
pub fn cancelled_on_signal() -> CancellationToken {
    let stop = CancellationToken::new();
    let on_signal = stop.clone();
    tokio::spawn(async move {
        signal().await;
        on_signal.cancel();
    });
    stop
}
