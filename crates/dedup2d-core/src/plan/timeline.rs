//! The phase timeline: Events, transitions (with the in-effect times they reset), pause accounting
//! and the progress deadline.

use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use super::{transition_event, EventKind, EventReason, PlanEvent, Planner, Step, TransitionReason};
use crate::crd::{Phase, TransitionRecord, MAX_TRANSITIONS};

impl Planner<'_> {
    pub(super) fn event(&mut self, kind: EventKind, reason: EventReason, message: &str) {
        self.events.push(PlanEvent {
            kind,
            reason: reason.to_string(),
            action: reason.to_string(),
            message: message.into(),
            transition: None,
        });
    }

    pub(super) fn transition(&mut self, to: Phase, reason: TransitionReason, message: &str) {
        let record = TransitionRecord {
            from: self.phase,
            to,
            reason: reason.to_string(),
            message: message.into(),
            at: Time(self.stamp),
        };
        self.events.push(transition_event(&record));
        self.st.transitions.push(record);
        let excess = self.st.transitions.len().saturating_sub(MAX_TRANSITIONS);
        self.st.transitions.drain(..excess);
        self.phase = to;
        self.st.phase_started_at = Some(Time(self.stamp));
        self.st.phase_paused_seconds = 0;
        if self.st.paused_since.is_some() {
            self.st.paused_since = Some(Time(self.stamp));
        }
        self.reset_times_on_entering(to);
    }

    /// Entering a phase forgets the times that belong to a later point of the rollout.
    fn reset_times_on_entering(&mut self, to: Phase) {
        match to {
            Phase::DualWriteOn => self.st.dual_write_on_in_effect_at = None,
            // Dual-write goes back on: no drain is running any more, so no deadline either
            // (a stale one reads as an overdue drain in the metrics).
            Phase::RollingBack => {
                self.st.dual_write_on_in_effect_at = None;
                self.st.drain_deadline = None;
            }
            Phase::DualWriteOff => {
                self.st.dual_write_off_in_effect_at = None;
                self.st.drain_deadline = None;
            }
            Phase::Completed | Phase::RolledBack | Phase::Failed => {
                self.st.finished_at = Some(Time(self.stamp));
            }
            _ => {}
        }
    }

    /// Seconds the current phase has been active (pause time excluded).
    pub(super) fn active_elapsed(&self) -> i64 {
        let started = self.st.phase_started_at.as_ref().map_or(self.now, |t| t.0);
        let mut secs = self.now.as_second() - started.as_second() - self.st.phase_paused_seconds;
        if let Some(p) = &self.st.paused_since {
            secs -= self.now.as_second() - p.0.as_second();
        }
        secs.max(0)
    }

    pub(super) fn track_pause(&mut self) {
        match (self.spec.paused, &self.st.paused_since) {
            (true, None) => {
                self.st.paused_since = Some(Time(self.stamp));
                self.event(
                    EventKind::Normal,
                    EventReason::Paused,
                    "rollout paused (spec.paused)",
                );
            }
            (false, Some(since)) => {
                self.st.phase_paused_seconds +=
                    (self.stamp.as_second() - since.0.as_second()).max(0);
                self.st.paused_since = None;
                self.event(EventKind::Normal, EventReason::Resumed, "rollout resumed");
            }
            _ => {}
        }
    }

    fn deadline_exceeded(&self) -> Option<String> {
        let limit = i64::from(self.spec.progress_deadline_seconds);
        (self.active_elapsed() > limit).then(|| {
            format!(
                "{} made no progress within progressDeadlineSeconds ({limit}s)",
                self.phase
            )
        })
    }

    /// Turn a wait into a failure when the phase is past its progress deadline.
    pub(super) fn with_deadline(&self, step: Step) -> Step {
        match step {
            Step::Wait { message, requeue } => match self.deadline_exceeded() {
                Some(message) => Step::Fail { message },
                // Come back right after the deadline, not a whole poll later.
                None => {
                    let limit = i64::from(self.spec.progress_deadline_seconds);
                    let left = (limit - self.active_elapsed()).max(0).unsigned_abs() + 1;
                    Step::Wait {
                        message,
                        requeue: requeue.min(Duration::from_secs(left)),
                    }
                }
            },
            other => other,
        }
    }
}
