//! dedup2d: a Kubernetes operator that moves a dedup2d fleet from `file_bytes_b64` job payloads to
//! `file_ref` payloads, plus the worker and API it rolls out (wire-compatible with the Python system).

pub mod api;
pub mod cli;
pub mod contract;
pub mod operator;
pub mod shutdown;
pub mod storage;
pub mod telemetry;
#[cfg(test)]
mod test_support;
pub mod worker;
