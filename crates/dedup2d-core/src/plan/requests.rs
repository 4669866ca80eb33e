//! What a person asks for: spec edits (a new `metadata.generation`) and the `dedup2d.io/request`
//! annotation, each value handled once: recorded in `status.lastRequest` and in the bounded
//! `status.requestHistory`, and a value found in either is ignored silently (no Event), so a
//! re-applied manifest never repeats a request, whatever order its values come back in.
//!
//! The history's size is bounded whatever the annotation holds (an annotation may be 256 KiB): a
//! value longer than [`MAX_STORED_REQUEST`] bytes is stored, and compared, as its sha256 digest,
//! and a value longer than [`MAX_REQUEST_BYTES`] is not acted on (ignored, with the reason).

use std::fmt;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use sha2::{Digest, Sha256};

use super::{EventKind, EventReason, PlanEvent, Planner, Request, TransitionReason};
use crate::crd::{HandledRequest, Phase, RollbackLevel, MAX_REQUEST_HISTORY, MAX_STORED_REQUEST};

/// Longest request value acted on: a verb and a nonce never need more.
pub const MAX_REQUEST_BYTES: usize = 1024;

/// How a request value is kept in status and compared: as is up to [`MAX_STORED_REQUEST`] bytes,
/// else `sha256:<hex>` of it (71 bytes).
pub fn stored_form(value: &str) -> String {
    if value.len() <= MAX_STORED_REQUEST {
        value.to_string()
    } else {
        format!("sha256:{}", hex::encode(Sha256::digest(value.as_bytes())))
    }
}

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
    /// Ignored: the value is longer than any request (this many bytes).
    TooLong(usize),
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
                | RequestOutcome::TooLong(_)
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
            RequestOutcome::TooLong(n) => write!(
                f,
                "ignored: the value is {n} bytes; a request is a verb and an optional nonce of at most {MAX_REQUEST_BYTES} bytes"
            ),
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
        self.bound_request_records();
        let Some(value) = self.obs.request.clone() else {
            return;
        };
        if self.was_handled(&value) {
            return;
        }
        let stored = stored_form(&value);
        let outcome = match Request::parse(&value) {
            _ if value.len() > MAX_REQUEST_BYTES => RequestOutcome::TooLong(value.len()),
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
            action: match stored.trim() {
                "" => EventReason::Request.to_string(),
                v => v.chars().take(128).collect(), // the Events API limit
            },
            message: format!("request {stored:?}: {outcome}"),
            transition: None,
        });
        let handled = HandledRequest {
            request: stored,
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
        let stored = stored_form(value);
        self.st
            .last_request
            .iter()
            .chain(&self.st.request_history)
            .any(|r| r.request == stored)
    }

    /// Records written before values were bounded hold them whole: keep them in the stored form.
    fn bound_request_records(&mut self) {
        for r in self
            .st
            .last_request
            .iter_mut()
            .chain(&mut self.st.request_history)
        {
            if r.request.len() > MAX_STORED_REQUEST {
                r.request = stored_form(&r.request);
            }
        }
    }

    /// Nothing was ever written, so a rollback would only turn dual-write on and restart the API.
    /// Originals annotations on the targets mean an earlier rollout of this fleet (deleted
    /// unfinished) wrote something, which a rollback of this one puts back.
    fn nothing_written(&self) -> bool {
        self.st.fields.is_empty() && !self.targets_carry_originals()
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

#[cfg(test)]
mod tests {
    use super::super::sim::*;
    use super::super::tests::until_phase;
    use super::*;

    fn request_events(d: &super::super::Decision) -> Vec<String> {
        d.events
            .iter()
            .filter(|e| e.reason == EventReason::Request.as_str())
            .map(|e| e.message.clone())
            .collect()
    }

    #[test]
    fn short_values_are_kept_as_they_are() {
        assert_eq!(stored_form("abort-full:7"), "abort-full:7");
        let at_limit = "r".repeat(MAX_STORED_REQUEST);
        assert_eq!(stored_form(&at_limit), at_limit);
    }

    #[test]
    fn a_long_value_is_kept_as_its_digest_and_still_acts_once() {
        let mut w = World::new(spec(1), 1);
        let long = format!("retry:{}", "n".repeat(300));
        w.request = Some(long.clone());
        let d = w.reconcile();
        let kept = &d.status.request_history.last().unwrap().request;
        assert!(kept.starts_with("sha256:") && kept.len() == 71, "{kept}");
        assert_eq!(kept, &stored_form(&long));
        assert_ne!(stored_form(&long), stored_form(&format!("{long}x")));
        assert_eq!(request_events(&d).len(), 1);
        assert!(request_events(&d)[0].contains("nothing to retry"));
        assert!(request_events(&w.reconcile()).is_empty(), "handled once");
    }

    #[test]
    fn an_absurd_value_is_ignored_with_the_reason_and_changes_nothing() {
        let mut w = World::new(spec(1), 1);
        until_phase(&mut w, Phase::Soaking, 100);
        let absurd = format!("abort:{}", "x".repeat(256 * 1024));
        w.request = Some(absurd.clone());
        let d = w.reconcile();
        assert_eq!(d.status.phase, Some(Phase::Soaking), "not aborted");
        let told = request_events(&d);
        assert_eq!(told.len(), 1);
        assert!(
            told[0].contains(&format!("ignored: the value is {} bytes", absurd.len())),
            "{}",
            told[0]
        );
        assert!(
            told[0].len() < 300,
            "the Event names the digest, not the value"
        );
        let last = d.status.last_request.unwrap();
        assert!(last.outcome.starts_with("ignored"), "{}", last.outcome);
        assert!(last.request.len() <= MAX_STORED_REQUEST);
    }

    #[test]
    fn a_record_from_before_the_bound_is_kept_in_the_stored_form_and_still_matches() {
        let mut w = World::new(spec(1), 1);
        w.reconcile();
        let long = format!("abort:{}", "o".repeat(200));
        let mut st = w.status.clone().unwrap();
        st.last_request = Some(HandledRequest {
            request: long.clone(),
            handled_at: Time(ts(T0)),
            outcome: "ignored: nothing to roll back".into(),
        });
        w.status = Some(st);
        w.request = Some(long.clone());
        let d = w.reconcile();
        assert!(request_events(&d).is_empty(), "already handled");
        assert_eq!(d.status.last_request.unwrap().request, stored_form(&long));
    }
}
