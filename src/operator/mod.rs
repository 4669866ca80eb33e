//! The rollout operator: the `Dedup2DRollout` CRD, the observed-world snapshot, and the pure planner
//! that decides the next step. The adapters (observer, actor, reconciler, drain scan) sit around these.

pub mod act;
pub mod conditions;
pub mod controller;
pub mod crd;
pub mod drain;
pub mod duration;
pub mod events;
pub mod leader;
pub mod managed;
pub mod metrics;
pub mod observe;
pub mod plan;
pub mod serve;
pub mod snapshot;
