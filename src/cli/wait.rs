//! What a rollout's state means for `rollout status --wait`: a pure function of the object (spec,
//! annotations and the status the operator wrote), so every phase and hold is unit-tested.
//!
//! A status is trusted only when it is current: the operator has observed the newest spec
//! generation and handled the newest `dedup2d.io/request`. Until then `--wait` keeps waiting, so
//! `retry NAME && status NAME --wait` does not end on the hold that the retry is about to lift.

use kube::ResourceExt;

use super::exit::Exit;
use crate::operator::conditions::{get_condition, STALLED};
use crate::operator::crd::{Dedup2DRollout, Phase, REQUEST_ANNOTATION};
use dedup2d_core::reason::StallReason;

/// `Stalled` reasons that only a person lifts (a retry or abort request, or a spec edit). The
/// others (`TargetMissing`, `RedisUnreachable`, `ConflictingRollout`, ...) heal by themselves.
const NEEDS_A_REQUEST: [StallReason; 3] = [
    StallReason::ExternalModification,
    StallReason::ProgressDeadlineExceeded,
    StallReason::Held,
];

/// Where a rollout stands for `--wait`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// It moves on by itself, or the operator has not handled the newest spec or request yet.
    Waiting,
    Completed,
    RolledBack,
    Failed,
    /// Nothing happens until a person acts; says what is needed.
    NeedsPerson(String),
}

impl Verdict {
    /// The exit code `--wait` ends with, `None` while it keeps waiting.
    pub(crate) fn exit(&self) -> Option<Exit> {
        match self {
            Verdict::Waiting => None,
            Verdict::Completed => Some(Exit::Success),
            Verdict::RolledBack => Some(Exit::RolledBack),
            Verdict::Failed => Some(Exit::Failed),
            Verdict::NeedsPerson(_) => Some(Exit::NeedsPerson),
        }
    }
}

/// The verdict for `rollout` as it is now.
pub(crate) fn verdict(rollout: &Dedup2DRollout) -> Verdict {
    let name = rollout.name_any();
    let status = rollout.status.as_ref().filter(|_| is_current(rollout));
    let phase = status.and_then(|s| s.phase);
    match phase {
        Some(Phase::Completed) => return Verdict::Completed,
        Some(Phase::RolledBack) => return Verdict::RolledBack,
        Some(Phase::Failed) => return Verdict::Failed,
        _ => {}
    }
    // The person's own intent, read from the spec: true even before the operator saw it.
    if rollout.spec.paused {
        return Verdict::NeedsPerson(format!(
            "paused (spec.paused); `dedup2d rollout resume {name}` lets it go on"
        ));
    }
    let Some(status) = status else {
        return Verdict::Waiting;
    };
    if let Some(hold) = &status.hold {
        return Verdict::NeedsPerson(format!(
            "held by {}: {}; `dedup2d rollout retry {name}` or `abort {name}`",
            hold.reason, hold.message
        ));
    }
    if let Some(stalled) = get_condition(&status.conditions, STALLED).filter(|c| {
        c.status == "True"
            && c.reason
                .parse()
                .is_ok_and(|r: StallReason| NEEDS_A_REQUEST.contains(&r))
    }) {
        return Verdict::NeedsPerson(format!(
            "held by {}: {}; `dedup2d rollout retry {name}` or `abort {name}`",
            stalled.reason, stalled.message
        ));
    }
    if phase == Some(Phase::AwaitingFinalize) {
        return Verdict::NeedsPerson(format!(
            "drained, AwaitingFinalize (finalize: Manual); `dedup2d rollout promote {name}` completes it"
        ));
    }
    Verdict::Waiting
}

/// The `dedup2d.io/request` value the operator has not handled yet, if any.
/// A value in `lastRequest` or `requestHistory` is handled: the operator ignores it silently.
pub(crate) fn pending_request(rollout: &Dedup2DRollout) -> Option<&str> {
    let handled = |v: &str| {
        rollout.status.as_ref().is_some_and(|s| {
            s.last_request
                .iter()
                .chain(&s.request_history)
                .any(|r| r.request == v)
        })
    };
    rollout
        .annotations()
        .get(REQUEST_ANNOTATION)
        .map(String::as_str)
        .filter(|v| !handled(v))
}

/// The status describes the newest spec and every request sent so far.
fn is_current(rollout: &Dedup2DRollout) -> bool {
    let generation = rollout.metadata.generation.unwrap_or(0);
    let observed = rollout.status.as_ref().and_then(|s| s.observed_generation);
    observed.is_some_and(|g| g >= generation) && pending_request(rollout).is_none()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::operator::crd::{Dedup2DRolloutStatus, HandledRequest, Hold};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
    use k8s_openapi::jiff::Timestamp;
    use serde_json::json;

    fn t() -> Time {
        Time(Timestamp::from_second(1_780_000_000).unwrap())
    }

    /// A rollout at generation 3 whose status (operator-written) observed generation 3.
    fn rollout(phase: Phase) -> Dedup2DRollout {
        let mut r: Dedup2DRollout = serde_json::from_value(json!({
            "apiVersion": "dedup2d.io/v1alpha1", "kind": "Dedup2DRollout",
            "metadata": {"name": "fleet", "namespace": "prod", "generation": 3},
            "spec": {
                "workers": [{"deployment": "dedup2d-worker", "image": "reg/dedup2d:2.5.0"}],
                "api": {"deployment": "dedup2d-api", "configMap": "dedup2d-config"}
            }
        }))
        .unwrap();
        r.status = Some(Dedup2DRolloutStatus {
            observed_generation: Some(3),
            phase: Some(phase),
            ..Default::default()
        });
        r
    }

    fn stalled(reason: &str, message: &str) -> Condition {
        Condition {
            type_: STALLED.into(),
            status: "True".into(),
            reason: reason.into(),
            message: message.into(),
            last_transition_time: t(),
            observed_generation: Some(3),
        }
    }

    fn with_stalled(phase: Phase, reason: &str) -> Dedup2DRollout {
        let mut r = rollout(phase);
        r.status.as_mut().unwrap().conditions = vec![stalled(reason, "why")];
        r
    }

    fn needs_person(v: &Verdict) -> &str {
        match v {
            Verdict::NeedsPerson(why) => why,
            other => panic!("expected NeedsPerson, got {other:?}"),
        }
    }

    #[test]
    fn every_phase_on_its_own() {
        for phase in Phase::ALL {
            let want = match phase {
                Phase::Completed => Verdict::Completed,
                Phase::RolledBack => Verdict::RolledBack,
                Phase::Failed => Verdict::Failed,
                Phase::AwaitingFinalize => Verdict::NeedsPerson(
                    "drained, AwaitingFinalize (finalize: Manual); \
                     `dedup2d rollout promote fleet` completes it"
                        .into(),
                ),
                _ => Verdict::Waiting,
            };
            assert_eq!(verdict(&rollout(phase)), want, "{phase}");
        }
    }

    #[test]
    fn exit_codes_follow_the_verdict() {
        assert_eq!(
            verdict(&rollout(Phase::Completed)).exit(),
            Some(Exit::Success)
        );
        assert_eq!(
            verdict(&rollout(Phase::RolledBack)).exit(),
            Some(Exit::RolledBack)
        );
        assert_eq!(verdict(&rollout(Phase::Failed)).exit(), Some(Exit::Failed));
        assert_eq!(
            verdict(&rollout(Phase::AwaitingFinalize)).exit(),
            Some(Exit::NeedsPerson)
        );
        assert_eq!(verdict(&rollout(Phase::Draining)).exit(), None);
    }

    #[test]
    fn paused_needs_a_person_in_every_unfinished_phase() {
        for phase in Phase::ALL {
            let mut r = rollout(phase);
            r.spec.paused = true;
            let v = verdict(&r);
            if phase.is_terminal() {
                // The planner ignores spec.paused once finished; so does --wait.
                assert_ne!(v.exit(), Some(Exit::NeedsPerson), "{phase}");
            } else {
                assert!(
                    needs_person(&v).starts_with("paused (spec.paused)"),
                    "{phase}"
                );
                assert!(needs_person(&v).contains("resume fleet"), "{phase}");
            }
        }
    }

    #[test]
    fn a_hold_needs_a_person() {
        for reason in ["ExternalModification", "ProgressDeadlineExceeded"] {
            let mut r = rollout(Phase::UpgradingWorkers);
            r.status.as_mut().unwrap().hold = Some(Hold {
                reason: reason.into(),
                message: "image of dedup2d-worker changed by kubectl-edit".into(),
                since: t(),
            });
            let v = verdict(&r);
            assert_eq!(
                needs_person(&v),
                format!(
                    "held by {reason}: image of dedup2d-worker changed by kubectl-edit; \
                     `dedup2d rollout retry fleet` or `abort fleet`"
                )
            );
        }
    }

    #[test]
    fn stalled_reasons_needing_a_request_end_the_wait_the_others_keep_it() {
        for reason in NEEDS_A_REQUEST {
            let v = verdict(&with_stalled(Phase::Soaking, reason.as_str()));
            assert!(needs_person(&v).starts_with(&format!("held by {reason}: why")));
        }
        for reason in [
            "TargetMissing",
            "ContainerNotFound",
            "ApiDoesNotReadConfigMap",
            "ConflictingRollout",
            "InvalidSpec",
            "RedisUnreachable",
            "LegacyPayloadsRemain",
        ] {
            assert_eq!(
                verdict(&with_stalled(Phase::Draining, reason)),
                Verdict::Waiting,
                "{reason}"
            );
        }
        // Stalled=False with a hold reason left over means nothing.
        let mut r = with_stalled(Phase::Soaking, "ExternalModification");
        r.status.as_mut().unwrap().conditions[0].status = "False".into();
        assert_eq!(verdict(&r), Verdict::Waiting);
    }

    #[test]
    fn a_status_the_operator_has_not_caught_up_with_keeps_waiting() {
        // No status at all: no operator has handled it.
        let mut r = rollout(Phase::Pending);
        r.status = None;
        assert_eq!(verdict(&r), Verdict::Waiting);

        // A spec edit not observed yet: a Completed status is from the previous run.
        let mut r = rollout(Phase::Completed);
        r.metadata.generation = Some(4);
        assert_eq!(verdict(&r), Verdict::Waiting);
        let mut r = rollout(Phase::Completed);
        r.status.as_mut().unwrap().observed_generation = None;
        assert_eq!(verdict(&r), Verdict::Waiting);

        // A retry sent but not handled: the hold is about to be lifted.
        let mut r = with_stalled(Phase::Soaking, "ExternalModification");
        r.metadata.annotations =
            Some([(REQUEST_ANNOTATION.to_string(), "retry:n2".to_string())].into());
        assert_eq!(verdict(&r), Verdict::Waiting);
        assert_eq!(pending_request(&r), Some("retry:n2"));
        // Once handled (recorded in lastRequest) the status is current again.
        r.status.as_mut().unwrap().last_request = Some(HandledRequest {
            request: "retry:n2".into(),
            handled_at: t(),
            outcome: "resumed after ExternalModification".into(),
        });
        assert_eq!(pending_request(&r), None);
        assert_eq!(verdict(&r).exit(), Some(Exit::NeedsPerson));
        // An older value re-applied is in the history: the operator ignores it, nothing to wait for.
        let st = r.status.as_mut().unwrap();
        st.request_history = vec![st.last_request.clone().unwrap()];
        st.last_request.as_mut().unwrap().request = "retry:n9".into();
        assert_eq!(pending_request(&r), None);

        // An abort-full sent after Completed: wait for the rollback, not exit 0.
        let mut r = rollout(Phase::Completed);
        r.metadata.annotations =
            Some([(REQUEST_ANNOTATION.to_string(), "abort-full:n3".to_string())].into());
        assert_eq!(verdict(&r), Verdict::Waiting);

        // spec.paused is read from the spec itself, so it counts even when the status lags.
        let mut r = rollout(Phase::Draining);
        r.metadata.generation = Some(4);
        r.spec.paused = true;
        assert_eq!(verdict(&r).exit(), Some(Exit::NeedsPerson));
    }
}
