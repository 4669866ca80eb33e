//! What a person asks for: spec edits (a new `metadata.generation`) and the `dedup2d.io/request`
//! annotation, each value handled once: recorded in `status.lastRequest` and in the bounded
//! `status.requestHistory`, and a value found in either is ignored silently (no Event), so a
//! re-applied manifest never repeats a request, whatever order its values come back in.

use std::fmt;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use super::{EventKind, EventReason, PlanEvent, Planner, Request, TransitionReason};
use crate::crd::{HandledRequest, Phase, RollbackLevel, MAX_REQUEST_HISTORY};

/// What the operator did with a request (`status.lastRequest.outcome`, the Event message).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RequestOutcome {
    /// A promote request ended the soak early.
    SoakEnded,
    /// A promote request finalized a drained rollout.
    Finalized,
    /// An abort request started a quick rollback.
    QuickRollbackStarted,
    /// An abort-full request started a full rollback.
    FullRollbackStarted,
    /// A retry request lifted the hold with this reason.
    Resumed {
        /// The hold's recorded reason.
        after: String,
    },
    /// A retry request restarted a rolled-back or failed rollout.
    Restarted,
    /// Ignored: not a request this operator knows.
    Unknown,
    /// Ignored: promote outside Soaking and AwaitingFinalize.
    PromoteNotApplicable(Phase),
    /// Ignored: an abort while rolling back or rolled back.
    AlreadyRollingBack(Phase),
    /// Ignored: an abort-full while a full rollback runs or ran.
    AlreadyFullRollback(Phase),
    /// Ignored: a retry with no hold and nothing finished to restart.
    NothingToRetry,
    /// Ignored: an abort or abort-full before the operator wrote any field.
    NothingToRollBack,
}

impl RequestOutcome {
    /// The request changed nothing (a Warning Event).
    pub fn is_ignored(&self) -> bool {
        matches!(
            self,
            RequestOutcome::Unknown
                | RequestOutcome::PromoteNotApplicable(_)
                | RequestOutcome::AlreadyRollingBack(_)
                | RequestOutcome::AlreadyFullRollback(_)
                | RequestOutcome::NothingToRetry
                | RequestOutcome::NothingToRollBack
        )
    }
}

impl fmt::Display for RequestOutcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RequestOutcome::SoakEnded => f.write_str("soak ended"),
            RequestOutcome::Finalized => f.write_str("finalized"),
            RequestOutcome::QuickRollbackStarted => f.write_str("quick rollback started"),
            RequestOutcome::FullRollbackStarted => f.write_str("full rollback started"),
            RequestOutcome::Resumed { after } => write!(f, "resumed after {after}"),
            RequestOutcome::Restarted => f.write_str("rollout restarted"),
            RequestOutcome::Unknown => f.write_str(
                "ignored: unknown request (use promote, abort, abort-full or retry[:nonce])",
            ),
            RequestOutcome::PromoteNotApplicable(p) => write!(
                f,
                "ignored: promote applies in Soaking or AwaitingFinalize, not {p}"
            ),
            RequestOutcome::AlreadyRollingBack(p) => write!(f, "ignored: already {p}"),
            RequestOutcome::AlreadyFullRollback(p) => {
                write!(f, "ignored: a full rollback is already {p}")
            }
            RequestOutcome::NothingToRetry => f.write_str("ignored: nothing to retry"),
            RequestOutcome::NothingToRollBack => f.write_str("ignored: nothing to roll back"),
        }
    }
}

impl Planner<'_> {
    /// A new `metadata.generation`: lift holds, and go back to the phase whose result the edit undid.
    pub(super) fn on_spec_change(&mut self) {
        let gen = self.obs.generation;
        let before = self.st.observed_generation.replace(gen);
        if before.is_none() || before == Some(gen) {
            return;
        }
        if self.st.hold.take().is_some() {
            self.event(
                EventKind::Normal,
                EventReason::HoldLifted,
                "the spec changed",
            );
        }
        // In UpgradingApi the API is still being rolled: only the workers must still be done.
        let api_done = self.phase == Phase::UpgradingApi || self.api_image_rolled();
        let targets_met = self.all_workers_upgraded() && api_done;
        match self.phase {
            Phase::Completed | Phase::RolledBack | Phase::Failed if !targets_met => {
                self.st.rollback = None;
                self.st.finished_at = None;
                self.transition(
                    Phase::Pending,
                    TransitionReason::SpecChanged,
                    "new targets: starting again",
                );
            }
            p if !targets_met && p.forward_rank().is_some_and(|r| r > 2) => {
                let to = self.upgrade_start();
                self.transition(
                    to,
                    TransitionReason::SpecChanged,
                    "new targets: upgrading again",
                );
            }
            _ => {}
        }
    }

    /// Handle a new `dedup2d.io/request` value once and record it.
    pub(super) fn handle_request(&mut self) {
        let Some(value) = self.obs.request.clone() else {
            return;
        };
        if self.was_handled(&value) {
            return;
        }
        let outcome = match Request::parse(&value) {
            None => RequestOutcome::Unknown,
            Some(Request::Promote) => self.promote(),
            Some(Request::Abort) => self.abort(),
            Some(Request::AbortFull) => self.abort_full(),
            Some(Request::Retry) => self.retry(),
        };
        let kind = if outcome.is_ignored() {
            EventKind::Warning
        } else {
            EventKind::Normal
        };
        // Each request its own Event (a count on the first one would hide this outcome).
        self.events.push(PlanEvent {
            kind,
            reason: EventReason::Request.to_string(),
            action: match value.trim() {
                "" => EventReason::Request.to_string(),
                v => v.chars().take(128).collect(), // the Events API limit
            },
            message: format!("request {value:?}: {outcome}"),
            transition: None,
        });
        let handled = HandledRequest {
            request: value,
            handled_at: Time(self.stamp),
            outcome: outcome.to_string(),
        };
        self.st.request_history.push(handled.clone());
        let excess = self
            .st
            .request_history
            .len()
            .saturating_sub(MAX_REQUEST_HISTORY);
        self.st.request_history.drain(..excess);
        self.st.last_request = Some(handled);
    }

    /// The value is `lastRequest` (a status from before the history existed) or in the history.
    fn was_handled(&self, value: &str) -> bool {
        self.st
            .last_request
            .iter()
            .chain(&self.st.request_history)
            .any(|r| r.request == value)
    }

    /// Nothing was ever written, so a rollback would only turn dual-write on and restart the API.
    fn nothing_written(&self) -> bool {
        self.st.fields.is_empty()
    }

    fn promote(&mut self) -> RequestOutcome {
        match self.phase {
            Phase::Soaking => {
                self.transition(
                    Phase::DualWriteOff,
                    TransitionReason::Promoted,
                    "soak ended early by a promote request",
                );
                RequestOutcome::SoakEnded
            }
            Phase::AwaitingFinalize => {
                self.transition(
                    Phase::Completed,
                    TransitionReason::Promoted,
                    "finalized by a promote request",
                );
                RequestOutcome::Finalized
            }
            p => RequestOutcome::PromoteNotApplicable(p),
        }
    }

    fn abort(&mut self) -> RequestOutcome {
        if matches!(self.phase, Phase::RollingBack | Phase::RolledBack) {
            return RequestOutcome::AlreadyRollingBack(self.phase);
        }
        if self.nothing_written() {
            return RequestOutcome::NothingToRollBack;
        }
        self.start_rollback(
            RollbackLevel::Quick,
            TransitionReason::AbortRequested,
            "abort requested",
        );
        RequestOutcome::QuickRollbackStarted
    }

    fn abort_full(&mut self) -> RequestOutcome {
        let level = self.st.rollback.as_ref().map(|r| r.level);
        if matches!(self.phase, Phase::RollingBack | Phase::RolledBack)
            && level == Some(RollbackLevel::Full)
        {
            return RequestOutcome::AlreadyFullRollback(self.phase);
        }
        if self.nothing_written() {
            return RequestOutcome::NothingToRollBack;
        }
        self.start_rollback(
            RollbackLevel::Full,
            TransitionReason::AbortRequested,
            "full abort requested",
        );
        RequestOutcome::FullRollbackStarted
    }

    fn retry(&mut self) -> RequestOutcome {
        if let Some(hold) = self.st.hold.take() {
            // Re-apply our values where someone else changed them.
            for r in &mut self.st.fields {
                if self
                    .world
                    .get(&r.field)
                    .is_some_and(|v| v.as_deref() != Some(r.written.as_str()))
                {
                    r.confirmed = false;
                }
            }
            self.st.phase_started_at = Some(Time(self.stamp));
            self.st.phase_paused_seconds = 0;
            RequestOutcome::Resumed { after: hold.reason }
        } else if matches!(self.phase, Phase::RolledBack | Phase::Failed) {
            self.st.rollback = None;
            self.st.finished_at = None;
            self.transition(Phase::Pending, TransitionReason::Retry, "retry requested");
            RequestOutcome::Restarted
        } else {
            RequestOutcome::NothingToRetry
        }
    }
}
