//! What the next observation must read from Redis, decided from the spec and the persisted status
//! alone, so the observer never scans more than the phase needs.
//!
//! Heartbeats are read only in the phases that gate on them (up to turning dual-write off), the
//! legacy-payload scan only while draining, and the active-job check behind `RollbackSafe` only in
//! the unfinished phases (and in a full rollback, whose gate it is). A finished, paused or held
//! rollout reads nothing. A check whose last recorded figure is 0 is next made by a full scan (the
//! only kind that proves an absence); while it is above 0 (or unknown) only the keys the last full
//! scan found are re-checked, and the observer falls back to a full scan when it holds no such set.

use crate::{
    crd::{Dedup2DRolloutSpec as Spec, Dedup2DRolloutStatus as Status, Phase, RollbackLevel},
    snapshot::ScanKind,
};

/// The most keys the observer keeps from a full scan to re-check; a scan that finds more is
/// followed by full scans again (so the planner polls at the slower scan cadence then).
pub const MAX_RECHECK_KEYS: u64 = 10_000;

/// What one observation reads from Redis.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Observation {
    /// Read the worker capability heartbeats.
    pub heartbeats: bool,
    /// How to count the legacy payloads.
    pub legacy: ScanKind,
    /// How to count the active jobs without `file_bytes_b64`.
    pub active: ScanKind,
}

impl Observation {
    /// Whether anything at all is read from Redis.
    pub fn reads_redis(&self) -> bool {
        self.heartbeats || self.legacy != ScanKind::None || self.active != ScanKind::None
    }
}

/// The reads the next observation of a rollout in this state must make.
pub fn observation(spec: &Spec, status: Option<&Status>) -> Observation {
    let phase = status.and_then(|s| s.phase).unwrap_or_default();
    let held = status.is_some_and(|s| s.hold.is_some());
    if phase.is_terminal() || spec.paused || held {
        return Observation::default();
    }
    let full_rollback = status
        .and_then(|s| s.rollback.as_ref())
        .is_some_and(|r| r.level == RollbackLevel::Full);
    let heartbeats = matches!(
        phase,
        Phase::Pending
            | Phase::DualWriteOn
            | Phase::UpgradingWorkers
            | Phase::UpgradingApi
            | Phase::Soaking
            | Phase::DualWriteOff
    );
    let legacy = match phase {
        Phase::Draining => confirm_or_recheck(status.and_then(|s| s.legacy_payloads)),
        _ => ScanKind::None,
    };
    let active = match phase {
        // The first observation reads it, so that the first status write carries RollbackSafe.
        Phase::Pending if status.is_some() => ScanKind::None,
        Phase::RollingBack if !full_rollback => ScanKind::None,
        _ => confirm_or_recheck(status.and_then(|s| s.active_jobs_without_b64)),
    };
    Observation {
        heartbeats,
        legacy,
        active,
    }
}

/// A full scan once the last figure is 0 (to prove it), else a re-check of what was found.
fn confirm_or_recheck(last: Option<i64>) -> ScanKind {
    if last == Some(0) {
        ScanKind::Full
    } else {
        ScanKind::Recheck
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        crd::{Hold, RollbackRecord},
        plan::sim::{spec, ts},
    };
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

    fn status(phase: Phase) -> Status {
        Status {
            phase: Some(phase),
            ..Default::default()
        }
    }

    fn reads(phase: Phase) -> Observation {
        observation(&spec(1), Some(&status(phase)))
    }

    #[test]
    fn terminal_phases_read_nothing() {
        for p in [Phase::Completed, Phase::RolledBack, Phase::Failed] {
            assert_eq!(reads(p), Observation::default(), "{p}");
            assert!(!reads(p).reads_redis());
        }
    }

    #[test]
    fn heartbeats_only_up_to_dual_write_off() {
        // Phases are ordered as declared: the forward path, then the backward phases.
        for p in Phase::ALL {
            assert_eq!(reads(p).heartbeats, p <= Phase::DualWriteOff, "{p}");
        }
        assert!(observation(&spec(1), None).heartbeats, "a new rollout");
    }

    #[test]
    fn legacy_payloads_are_scanned_only_while_draining() {
        for p in Phase::ALL {
            let scanned = reads(p).legacy != ScanKind::None;
            assert_eq!(scanned, p == Phase::Draining, "{p}");
        }
    }

    #[test]
    fn a_zero_is_confirmed_by_a_full_scan_and_a_count_is_rechecked() {
        let mut st = status(Phase::Draining);
        assert_eq!(observation(&spec(1), Some(&st)).legacy, ScanKind::Recheck);
        st.legacy_payloads = Some(12);
        st.active_jobs_without_b64 = Some(0);
        let o = observation(&spec(1), Some(&st));
        assert_eq!((o.legacy, o.active), (ScanKind::Recheck, ScanKind::Full));
        st.legacy_payloads = Some(0);
        st.active_jobs_without_b64 = Some(3);
        let o = observation(&spec(1), Some(&st));
        assert_eq!((o.legacy, o.active), (ScanKind::Full, ScanKind::Recheck));
    }

    #[test]
    fn active_jobs_are_checked_in_unfinished_phases_and_the_full_rollback() {
        assert_eq!(reads(Phase::Pending).active, ScanKind::None);
        for p in [
            Phase::DualWriteOn,
            Phase::UpgradingWorkers,
            Phase::UpgradingApi,
            Phase::Soaking,
            Phase::DualWriteOff,
            Phase::Draining,
            Phase::AwaitingFinalize,
        ] {
            assert_ne!(reads(p).active, ScanKind::None, "{p}");
        }
        let mut st = status(Phase::RollingBack);
        let record = |level| RollbackRecord {
            level,
            reason: "r".into(),
            from_phase: Phase::Soaking,
            started_at: Time(ts(0)),
        };
        st.rollback = Some(record(RollbackLevel::Quick));
        assert_eq!(observation(&spec(1), Some(&st)), Observation::default());
        st.rollback = Some(record(RollbackLevel::Full));
        assert_ne!(observation(&spec(1), Some(&st)).active, ScanKind::None);
    }

    #[test]
    fn paused_and_held_rollouts_read_nothing() {
        let mut paused = spec(1);
        paused.paused = true;
        assert!(!observation(&paused, Some(&status(Phase::Draining))).reads_redis());
        let mut held = status(Phase::UpgradingWorkers);
        held.hold = Some(Hold {
            reason: "ProgressDeadlineExceeded".into(),
            message: "m".into(),
            since: Time(ts(0)),
        });
        assert!(!observation(&spec(1), Some(&held)).reads_redis());
    }
}
