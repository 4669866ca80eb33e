//! What a client may hold of the API: a bound on open connections, a deadline for the request
//! head, and one for the whole request (body included), so a slow or stalled client is cut off
//! instead of holding a connection and a task for ever. `axum::serve` has no header timeout,
//! hence this accept loop on hyper-util (hyper's HTTP/1, as `axum::serve` uses; graceful shutdown kept).

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::Request;
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

use super::error::ApiError;

/// Defaults of `DEDUP2D_API_HEADER_READ_TIMEOUT_SECONDS`, `DEDUP2D_API_REQUEST_TIMEOUT_SECONDS`
/// and `DEDUP2D_API_MAX_CONNECTIONS`.
pub const DEFAULT_HEADER_READ_TIMEOUT_SECONDS: u64 = 10;
pub const DEFAULT_REQUEST_TIMEOUT_SECONDS: u64 = 300;
pub const DEFAULT_MAX_CONNECTIONS: usize = 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectionLimits {
    /// From accept to the end of the request head.
    pub header_read_timeout: Duration,
    /// From the request head to the response, reading the body included.
    pub request_timeout: Duration,
    /// Connections served at once; the next ones wait in the listen backlog.
    pub max_connections: usize,
}

/// Answers 408 `REQUEST_TIMEOUT` when the handler (and the body it reads) takes too long.
pub async fn request_timeout(limit: Duration, req: Request, next: Next) -> Response {
    match tokio::time::timeout(limit, next.run(req)).await {
        Ok(resp) => resp,
        Err(_) => ApiError::new(
            StatusCode::REQUEST_TIMEOUT,
            "REQUEST_TIMEOUT",
            format!(
                "the request was not received and answered within {} s",
                limit.as_secs()
            ),
        )
        .into_response(),
    }
}

/// Serves `app` until `shutdown` resolves, then lets open connections finish their requests.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    limits: ConnectionLimits,
    shutdown: impl Future<Output = ()>,
) {
    let permits = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout);
    tokio::pin!(shutdown);
    loop {
        let permit = tokio::select! {
            p = permits.clone().acquire_owned() => p.expect("semaphore never closed"),
            () = &mut shutdown => break,
        };
        let (stream, _peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors and the like: pause instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let service = TowerToHyperService::new(app.clone());
        let conn = graceful.watch(builder.serve_connection(TokioIo::new(stream), service));
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "connection ended with an error");
            }
            drop(permit);
        });
    }
    drop(listener);
    graceful.shutdown().await;
}
