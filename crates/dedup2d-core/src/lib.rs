//! The pure core of the dedup2d operator: the `Dedup2DRollout` custom resource, the observed world as
//! plain data, and the planner that decides the next step from them. Nothing here does IO: no
//! Kubernetes client, no Redis, no async runtime (the root crate's adapters do that), so the planner
//! is tested, property-checked and simulated without a cluster.

pub mod conditions;
pub mod crd;
pub mod duration;
pub mod managed;
pub mod plan;
pub mod reason;
pub mod snapshot;
