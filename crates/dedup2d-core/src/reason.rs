//! The planner's reasons and states as enums. Each variant's name is its wire string (strum derives
//! `Display`, `as_str` and parsing from it): Events, the `Stalled` condition, transition records and
//! the GitOps health checks match these exact strings, so a variant is never renamed.

use strum::{Display, EnumString, IntoStaticStr};

macro_rules! wire_str {
    ($($t:ty),*) => {$(
        impl $t {
            /// The wire string (the variant's name).
            pub fn as_str(self) -> &'static str {
                self.into()
            }
        }
    )*};
}

/// Why the rollout cannot take a step: the `Stalled=True` reason.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Display, EnumString, IntoStaticStr)]
pub enum StallReason {
    /// An older rollout targets one of the same Deployments.
    ConflictingRollout,
    /// A target Deployment or the ConfigMap does not exist.
    TargetMissing,
    /// A target container cannot be resolved.
    ContainerNotFound,
    /// The API Deployment does not read the ConfigMap.
    ApiDoesNotReadConfigMap,
    /// The spec does not parse (e.g. the soak duration).
    InvalidSpec,
    /// Redis could not be scanned.
    RedisUnreachable,
    /// Legacy payloads remain after the TTL.
    LegacyPayloadsRemain,
    /// Held: a field the operator set was changed by someone else.
    ExternalModification,
    /// Held: a phase made no progress within its deadline.
    ProgressDeadlineExceeded,
    /// Held for a reason recorded by another version.
    Held,
    /// The rollout rolled back.
    RolledBack,
    /// The rollout failed.
    Failed,
}

/// Why a rollout is held (`status.hold.reason`) until a retry or abort request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Display, EnumString, IntoStaticStr)]
pub enum HoldReason {
    /// A field the operator set was changed by someone else.
    ExternalModification,
    /// A phase made no progress within `progressDeadlineSeconds` and `onFailure` is `Pause`.
    ProgressDeadlineExceeded,
}

impl HoldReason {
    /// The `Stalled` reason for a recorded hold reason (one from another version reads `Held`).
    pub fn stall_reason(recorded: &str) -> StallReason {
        match recorded.parse() {
            Ok(HoldReason::ExternalModification) => StallReason::ExternalModification,
            Ok(HoldReason::ProgressDeadlineExceeded) => StallReason::ProgressDeadlineExceeded,
            Err(_) => StallReason::Held,
        }
    }
}

/// Why the rollout moved from one phase to another (`status.transitions[].reason`, the Event reason).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Display, EnumString, IntoStaticStr)]
pub enum TransitionReason {
    /// The rollout started, its targets found.
    Started,
    /// The spec changed after the targets were met.
    SpecChanged,
    /// A promote request ended the soak or finalized.
    Promoted,
    /// An abort request.
    AbortRequested,
    /// A phase made no progress within its deadline (`onFailure: Rollback`).
    ProgressDeadlineExceeded,
    /// A retry request restarted a finished rollout.
    Retry,
    /// Dual-write is disabled in the spec.
    DualWriteDisabled,
    /// Every API pod runs with dual-write on.
    DualWriteOnInEffect,
    /// Every worker pod runs the target image.
    WorkersUpgraded,
    /// The spec names no API image.
    NoApiImage,
    /// Every API pod runs the target image.
    ApiUpgraded,
    /// The soak time passed.
    SoakDone,
    /// Every API pod runs with dual-write off.
    DualWriteOffInEffect,
    /// A worker pod not on the target image exists again.
    WorkersNotUpgraded,
    /// The dual-write-off time was not recorded.
    DualWriteOffUnknown,
    /// No legacy payload is left.
    Drained,
    /// The rollback finished.
    RolledBack,
}

/// The reason of an Event that is not a transition.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Display, EnumString, IntoStaticStr)]
pub enum EventReason {
    /// The rollout started.
    Started,
    /// A field the operator set was changed by someone else: the rollout is held.
    ExternalModification,
    /// A spec edit lifted a hold.
    HoldLifted,
    /// `spec.paused` became true.
    Paused,
    /// `spec.paused` became false.
    Resumed,
    /// A phase made no progress within its deadline: the rollout is held.
    ProgressDeadlineExceeded,
    /// A `dedup2d.io/request` was handled.
    Request,
    /// A field's previous value was taken from the target's `dedup2d.io/originals` annotation
    /// (left by an earlier rollout of the same fleet that was deleted unfinished).
    OriginalAdopted,
    /// The rollout was deleted: the Event tells the state the fleet is left in.
    Deleted,
}

/// `status.dualWrite`: dual-write as the world shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Display, EnumString, IntoStaticStr)]
pub enum DualWriteState {
    /// On (in effect, or per the ConfigMap before the first API restart).
    On,
    /// Off (likewise).
    Off,
    /// The ConfigMap says on; API pods are still restarting.
    TurningOn,
    /// The ConfigMap says off; API pods are still restarting.
    TurningOff,
}

/// The `DualWrite` condition's reason: what the [`DualWriteState`] is based on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Display, EnumString, IntoStaticStr)]
pub enum DualWriteBasis {
    /// Every API pod restarted with the ConfigMap's values.
    InEffect,
    /// The operator has not restarted the API yet: the ConfigMap is all there is to go by.
    ConfigMapOnly,
    /// The API pods are restarting.
    ApiRolling,
}

wire_str!(
    StallReason,
    HoldReason,
    TransitionReason,
    EventReason,
    DualWriteState,
    DualWriteBasis
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_strings_are_the_variant_names() {
        assert_eq!(
            StallReason::ApiDoesNotReadConfigMap.as_str(),
            "ApiDoesNotReadConfigMap"
        );
        assert_eq!(
            TransitionReason::DualWriteOffInEffect.to_string(),
            "DualWriteOffInEffect"
        );
        assert_eq!(DualWriteState::TurningOff.as_str(), "TurningOff");
        assert_eq!("ConfigMapOnly".parse(), Ok(DualWriteBasis::ConfigMapOnly));
    }

    #[test]
    fn a_hold_reason_from_another_version_reads_held() {
        assert_eq!(
            HoldReason::stall_reason("ExternalModification"),
            StallReason::ExternalModification
        );
        assert_eq!(
            HoldReason::stall_reason("ProgressDeadlineExceeded"),
            StallReason::ProgressDeadlineExceeded
        );
        assert_eq!(HoldReason::stall_reason("SomethingElse"), StallReason::Held);
    }
}
