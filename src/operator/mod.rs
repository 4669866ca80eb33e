//! The `Dedup2DRollout` operator.

pub mod drain;
