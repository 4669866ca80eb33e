//! The rollout operator's adapters (observer, actor, reconciler, drain scan, Events, metrics, leader
//! election) around the pure core in the `dedup2d-core` crate: the `Dedup2DRollout` CRD, the
//! observed-world snapshot and the planner, re-exported here at their old paths.

pub use dedup2d_core::{conditions, crd, duration, managed, plan, snapshot};

pub mod act;
pub mod cached;
pub mod caches;
pub mod changes;
pub mod controller;
pub mod drain;
pub mod events;
pub mod finalizer;
pub mod found;
pub mod index;
pub mod leader;
pub mod metrics;
pub mod observe;
pub mod serve;
