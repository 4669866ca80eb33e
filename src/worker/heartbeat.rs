//! The capability heartbeat `{prefix}:worker:{hostname}`: JSON saying which payload formats this
//! worker reads (`file_ref` among them), with a short TTL, refreshed while the worker lives and
//! deleted on clean exit. The operator reads it as evidence that a pod can take file_ref jobs.

use std::time::Duration;

use redis::aio::ConnectionManager;
use redis::AsyncCommands;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

/// Payload formats this worker can read, in the order it reads them.
pub const FORMATS: [&str; 2] = ["file_ref", "file_bytes_b64"];

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Capability {
    pub formats: Vec<String>,
    pub version: String,
    pub queues: Vec<String>,
    pub pid: u32,
    /// Epoch seconds.
    pub started_at: f64,
}

impl Capability {
    pub fn this_process(queues: Vec<String>) -> Self {
        Capability {
            formats: FORMATS.iter().map(|f| f.to_string()).collect(),
            version: env!("CARGO_PKG_VERSION").to_string(),
            queues,
            pid: std::process::id(),
            started_at: crate::contract::queue::now_ms() as f64 / 1000.0,
        }
    }
}

pub struct Heartbeat {
    conn: ConnectionManager,
    key: String,
    body: String,
    ttl: Duration,
    interval: Duration,
}

impl Heartbeat {
    pub fn new(
        conn: ConnectionManager,
        key: String,
        capability: &Capability,
        ttl: Duration,
        interval: Duration,
    ) -> Self {
        Heartbeat {
            conn,
            key,
            body: serde_json::to_string(capability).expect("capability serializes"),
            ttl,
            interval,
        }
    }

    pub async fn beat(&self) -> redis::RedisResult<()> {
        let mut conn = self.conn.clone();
        conn.set_ex(&self.key, &self.body, self.ttl.as_secs().max(1))
            .await
    }

    pub async fn remove(&self) -> redis::RedisResult<()> {
        let mut conn = self.conn.clone();
        conn.del(&self.key).await
    }

    /// Refreshes until `stop` fires, then deletes the key. Redis errors are logged and retried
    /// at the next tick (the key simply expires if Redis stays away).
    pub async fn run(self, stop: CancellationToken) {
        loop {
            if let Err(e) = self.beat().await {
                tracing::warn!(key = %self.key, error = %e, "heartbeat refresh failed");
            }
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = tokio::time::sleep(self.interval) => {}
            }
        }
        match self.remove().await {
            Ok(()) => tracing::info!(key = %self.key, "heartbeat removed"),
            Err(e) => tracing::warn!(key = %self.key, error = %e, "heartbeat removal failed"),
        }
    }
}
