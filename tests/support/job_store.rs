//! The job store as the tests read it: the contract's `JobStore` on the fleet's key prefix, and a
//! job's ARQ result record.

use dedup2d::contract::keys::Keys;
use dedup2d::contract::store::JobStore;
use redis::aio::ConnectionManager;

pub const PREFIX: &str = "dedup2d";

/// The job store on [`PREFIX`]: job records live an hour, at most 100 000 jobs.
pub fn store(conn: ConnectionManager) -> JobStore {
    JobStore::new(conn, Keys::new(PREFIX), 3600, 100_000)
}

/// The stored result of a job (`None` unless completed).
pub async fn result(conn: &ConnectionManager, id: &str) -> Option<serde_json::Value> {
    use redis::AsyncCommands;
    let mut c = conn.clone();
    let raw: Option<String> = c.get(Keys::new(PREFIX).result(id)).await.unwrap();
    raw.map(|r| serde_json::from_str(&r).unwrap())
}
