//! The pure core of the dedup2d operator: the `Dedup2DRollout` custom resource, the observed world as
//! plain data, and the planner that decides the next step from them. Nothing here does IO: no
//! Kubernetes client, no Redis, no async runtime (the root crate's adapters do that), so the planner
//! is tested, property-checked and simulated without a cluster.

#![warn(missing_docs)]
// Pedantic lints the core holds itself to (on top of the workspace's).
#![warn(
    clippy::map_unwrap_or,
    clippy::match_same_arms,
    clippy::needless_pass_by_value,
    clippy::redundant_closure_for_method_calls,
    clippy::semicolon_if_nothing_returned,
    clippy::cast_lossless
)]

pub mod conditions;
pub mod crd;
pub mod duration;
pub mod managed;
pub mod plan;
pub mod reason;
pub mod snapshot;
