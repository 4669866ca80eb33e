//! Status conditions kept as a list keyed by `type`; `lastTransitionTime` moves only when the status
//! value changes, so re-running the planner on the same world leaves conditions byte-identical.

use k8s_openapi::{
    apimachinery::pkg::apis::meta::v1::{Condition, Time},
    jiff::Timestamp,
};

pub(crate) const READY: &str = "Ready";
pub(crate) const RECONCILING: &str = "Reconciling";
/// The kstatus condition: `True` when the rollout cannot progress without a change.
pub const STALLED: &str = "Stalled";
pub(crate) const WORKERS_UPGRADED: &str = "WorkersUpgraded";
pub(crate) const DUAL_WRITE: &str = "DualWrite";
pub(crate) const DRAINED: &str = "Drained";
pub(crate) const ROLLBACK_SAFE: &str = "RollbackSafe";
/// `True` on a finished rollout whose Deployments a newer rollout targets: its figures are no longer kept.
pub const SUPERSEDED: &str = "Superseded";

/// A condition status value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CondStatus {
    True,
    False,
    Unknown,
}

impl CondStatus {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            CondStatus::True => "True",
            CondStatus::False => "False",
            CondStatus::Unknown => "Unknown",
        }
    }

    pub(crate) fn from_bool(b: bool) -> Self {
        if b {
            CondStatus::True
        } else {
            CondStatus::False
        }
    }
}

/// Insert or update the condition `type_`. The transition time is `now` only when the status changes.
pub(crate) fn set_condition(
    conditions: &mut Vec<Condition>,
    type_: &str,
    status: CondStatus,
    reason: &str,
    message: impl Into<String>,
    generation: i64,
    now: Timestamp,
) {
    let message = message.into();
    match conditions.iter_mut().find(|c| c.type_ == type_) {
        Some(c) => {
            if c.status != status.as_str() {
                c.status = status.as_str().into();
                c.last_transition_time = Time(now);
            }
            c.reason = reason.into();
            c.message = message;
            c.observed_generation = Some(generation);
        }
        None => conditions.push(Condition {
            type_: type_.into(),
            status: status.as_str().into(),
            reason: reason.into(),
            message,
            observed_generation: Some(generation),
            last_transition_time: Time(now),
        }),
    }
}

/// The condition `type_`, if present.
pub fn get_condition<'a>(conditions: &'a [Condition], type_: &str) -> Option<&'a Condition> {
    conditions.iter().find(|c| c.type_ == type_)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transition_time_moves_only_on_status_change() {
        let t0 = Timestamp::from_second(1000).unwrap();
        let t1 = Timestamp::from_second(2000).unwrap();
        let mut cs = vec![];
        set_condition(&mut cs, READY, CondStatus::False, "Progressing", "a", 1, t0);
        set_condition(&mut cs, READY, CondStatus::False, "Progressing", "b", 2, t1);
        assert_eq!(cs[0].last_transition_time, Time(t0));
        assert_eq!(cs[0].message, "b");
        set_condition(&mut cs, READY, CondStatus::True, "Completed", "c", 2, t1);
        assert_eq!(cs[0].last_transition_time, Time(t1));
        assert_eq!(cs.len(), 1);
    }
}
