//! The wire contract with the existing dedup2d system: environment configuration, payloads, Redis
//! key names, the ARQ queue codec and the job store. Shared by the API, the worker and the operator.

pub mod arq;
pub mod callback;
pub mod config;
pub mod keys;
pub mod payload;
pub mod pickle_guard;
pub mod queue;
pub mod redact;
pub mod scan;
pub mod store;
