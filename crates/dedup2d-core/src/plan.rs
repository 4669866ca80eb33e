//! The pure planner: `plan(spec, status, observed, now) -> Decision`. No IO, no clock of its own.
//!
//! # Contract with the adapter (reconciler)
//!
//! 1. Write `decision.status` through the status subresource when it differs from the current status
//!    *or* an action follows, with the `resourceVersion` that was read as precondition: a decision made
//!    from a stale (cache-lagged) status is then refused with 409 and never acted on.
//! 2. Only when that succeeded, perform `decision.action` (server-side apply, field manager
//!    `dedup2d-operator`).
//! 3. Emit one Kubernetes Event per `decision.events` entry.
//! 4. Requeue after `decision.requeue_after` (`None`: wait for a watch event).
//!
//! Record-then-act: the planner returns a write action only when the *input* status already records
//! that field (its previous value and the value about to be written, see [`FieldRecord`]). When a record
//! is missing it returns the status with the record added, `Action::None` and a zero requeue, and the
//! write follows on the next call. So previous values are persisted before any change even if the
//! adapter ignores step ordering or crashes between steps, and a restarted operator never records a
//! value it wrote itself as "previous".
//!
//! Idempotency: every step compares the world with what it wants and acts only on a difference; the
//! phase and the in-effect times live in status, so re-running on the same inputs gives the same answer.

//!
//! # Layout
//!
//! This file holds the decision types and the step loop ([`Planner::run`]); the rooms around it:
//! `observation` (what the next observation reads from Redis), `preflight` (the validated
//! [`Targets`](preflight::Targets)), `phases` (one handler per forward phase), `rollback`, `requests` (spec edits and `dedup2d.io/request`), `records` (record-then-act),
//! `world` (predicates on the observed world), `timeline` (events, transitions, pause time,
//! deadlines) and `status` (the summary and one function per condition).

use std::{collections::BTreeMap, fmt, time::Duration};

use k8s_openapi::{apimachinery::pkg::apis::meta::v1::Time, jiff::Timestamp};
use sha2::{Digest, Sha256};

pub use crate::reason::{
    DualWriteBasis, DualWriteState, EventReason, HoldReason, StallReason, TransitionReason,
};
use crate::{
    crd::{
        Dedup2DRolloutSpec as Spec, Dedup2DRolloutStatus as Status, Hold, Phase, TransitionRecord,
        ORIGINALS_ANNOTATION, PAYLOAD_CONFIG_ANNOTATION,
    },
    snapshot::{Observed, Originals, KEY_INCLUDE_B64, KEY_MAX_BYTES},
};

pub mod coalesce;
mod observation;
mod phases;
mod preflight;
mod records;
mod requests;
mod rollback;
mod status;
mod timeline;
mod world;

pub use observation::{observation, Observation, MAX_RECHECK_KEYS};
pub use requests::RequestOutcome;

/// How soon to look again after a write (watch events usually come first).
const AFTER_ACTION: Duration = Duration::from_secs(5);
/// How often to re-check while waiting on Deployments (watch events usually come first).
const POLL: Duration = Duration::from_secs(15);
/// How often to re-scan Redis while draining or waiting for active jobs.
const DRAIN_POLL: Duration = Duration::from_secs(10);
/// How often to look again while only the keys a full scan found are re-checked (cheap: a few
/// thousand keys at most), so the last legacy payload's disappearance is seen within seconds.
const RECHECK_POLL: Duration = Duration::from_secs(1);
/// How soon to scan again when the last scan began before a moment that matters (e.g. dual-write-off
/// in effect, recorded rounded up to a second).
const NEXT_SCAN: Duration = Duration::from_secs(1);
/// How often to re-check a stalled rollout.
const STALLED_POLL: Duration = Duration::from_secs(30);
/// How often to re-observe a finished or paused rollout, so `RollbackSafe` (the active file_ref-only jobs a
/// full rollback would wait for) stays current without a Redis scan every few seconds.
pub(crate) const IDLE_POLL: Duration = Duration::from_secs(120);

/// One write the adapter performs (server-side apply). Each corresponds to [`FieldRecord`]s.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Nothing to write: persist the status (if changed) and requeue.
    None,
    /// Set one container image of a worker Deployment's pod template.
    SetWorkerImage {
        /// The worker Deployment.
        deployment: String,
        /// The resolved container.
        container: String,
        /// The target (or, rolling back, the recorded previous) image.
        image: String,
    },
    /// Set one container image of the API Deployment's pod template.
    SetApiImage {
        /// The API Deployment.
        deployment: String,
        /// The resolved container.
        container: String,
        /// The target (or, rolling back, the recorded previous) image.
        image: String,
    },
    /// Set `DEDUP2D_JOB_PAYLOAD_INCLUDE_BYTES_B64` and `..._MAX_BYTES` in the API's ConfigMap.
    SetConfig {
        /// The API's ConfigMap.
        config_map: String,
        /// `"1"` (dual-write on) or `"0"`.
        include_b64: String,
        /// `spec.dualWrite.maxBytes`.
        max_bytes: String,
    },
    /// Set the `dedup2d.io/payload-config` pod-template annotation of the API Deployment (restarts its pods).
    SetApiRestartAnnotation {
        /// The API Deployment.
        deployment: String,
        /// [`payload_config_hash`] of the values in effect.
        value: String,
    },
    /// Set the `dedup2d.io/originals` metadata annotation of a target object to exactly these
    /// entries (no entry: no annotation). Metadata, not the pod template: no pod restarts.
    SetOriginals {
        /// The target object.
        target: TargetObject,
        /// The entries, by field id.
        values: Originals,
    },
}

/// A target object the rollout writes to.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum TargetObject {
    /// A worker or the API Deployment, by name.
    Deployment(String),
    /// The API's ConfigMap, by name.
    ConfigMap(String),
}

impl fmt::Display for TargetObject {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TargetObject::Deployment(n) => write!(f, "Deployment {n}"),
            TargetObject::ConfigMap(n) => write!(f, "ConfigMap {n}"),
        }
    }
}

impl Action {
    /// The fields this action writes, by [`field_id`], with the values: what the status must
    /// record before the action is taken (record-then-act), what the actor applies, and what the
    /// simulator changes.
    pub fn writes(&self) -> Vec<(String, String)> {
        match self {
            // SetOriginals: not a field the rollout records (the annotation copies the records).
            Action::None | Action::SetOriginals { .. } => vec![],
            Action::SetWorkerImage {
                deployment,
                container,
                image,
            }
            | Action::SetApiImage {
                deployment,
                container,
                image,
            } => vec![(field_id::image(deployment, container), image.clone())],
            Action::SetConfig {
                config_map,
                include_b64,
                max_bytes,
            } => vec![
                (
                    field_id::config_key(config_map, KEY_INCLUDE_B64),
                    include_b64.clone(),
                ),
                (
                    field_id::config_key(config_map, KEY_MAX_BYTES),
                    max_bytes.clone(),
                ),
            ],
            Action::SetApiRestartAnnotation { deployment, value } => {
                vec![(field_id::restart_annotation(deployment), value.clone())]
            }
        }
    }
}

/// Normal or Warning, as for Kubernetes Events.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    /// Progress as planned.
    Normal,
    /// A rollback, a failure, a hold or an ignored request.
    Warning,
}

/// Something worth a Kubernetes Event: every phase transition, handled requests, holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlanEvent {
    /// Normal or Warning.
    pub kind: EventKind,
    /// The Event reason (a wire string of the `reason` enums).
    pub reason: String,
    /// With the reason, what tells Events apart (repeats of one pair are counted on one Event):
    /// the target phase for a transition, the annotation value for a request, else the reason.
    pub action: String,
    /// The Event note.
    pub message: String,
    /// `(from, to)` when this event is a phase transition.
    pub transition: Option<(Phase, Phase)>,
}

/// The Event that tells a transition: a Warning when it leads into a rollback or failure.
pub fn transition_event(t: &TransitionRecord) -> PlanEvent {
    let kind = if matches!(t.to, Phase::RollingBack | Phase::RolledBack | Phase::Failed) {
        EventKind::Warning
    } else {
        EventKind::Normal
    };
    PlanEvent {
        kind,
        reason: t.reason.clone(),
        action: t.to.to_string(),
        message: format!("{} -> {}: {}", t.from, t.to, t.message),
        transition: Some((t.from, t.to)),
    }
}

/// What the planner decided.
#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    /// The one write to perform after the status is persisted.
    pub action: Action,
    /// The new status (persist before acting).
    pub status: Status,
    /// Events to emit, phase transitions included, in order.
    pub events: Vec<PlanEvent>,
    /// When to reconcile again at the latest; `None` waits for a watch event.
    pub requeue_after: Option<Duration>,
}

impl Decision {
    /// The phase transitions among the events.
    pub fn transitions(&self) -> impl Iterator<Item = (Phase, Phase)> + '_ {
        self.events.iter().filter_map(|e| e.transition)
    }
}

/// A request parsed from the `dedup2d.io/request` annotation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Request {
    /// `promote`: end the soak early, or finalize a drained rollout.
    Promote,
    /// `abort`: quick rollback.
    Abort,
    /// `abort-full`: full rollback.
    AbortFull,
    /// `retry`: lift a hold or restart a finished rollout.
    Retry,
}

impl Request {
    /// Parse `promote|abort|abort-full|retry`, optionally followed by `:nonce`.
    pub fn parse(value: &str) -> Option<Request> {
        let verb = value.split(':').next().unwrap_or("").trim();
        Some(match verb {
            "promote" => Request::Promote,
            "abort" => Request::Abort,
            "abort-full" => Request::AbortFull,
            "retry" => Request::Retry,
            _ => return None,
        })
    }
}

/// The restart annotation value for a payload config: sha256 of both values, stable across releases.
pub fn payload_config_hash(include_b64: &str, max_bytes: &str) -> String {
    let mut h = Sha256::new();
    h.update(format!(
        "{KEY_INCLUDE_B64}={include_b64}\n{KEY_MAX_BYTES}={max_bytes}\n"
    ));
    hex::encode(&h.finalize()[..16])
}

/// Field ids used in [`FieldRecord::field`].
pub mod field_id {
    use super::*;

    /// The image of one container of a Deployment's pod template.
    pub fn image(deployment: &str, container: &str) -> String {
        format!("Deployment/{deployment}/containers/{container}/image")
    }
    /// A key of the ConfigMap's `data`.
    pub fn config_key(config_map: &str, key: &str) -> String {
        format!("ConfigMap/{config_map}/data/{key}")
    }
    /// The payload-config annotation of a Deployment's pod template.
    pub fn restart_annotation(deployment: &str) -> String {
        format!("Deployment/{deployment}/template/annotations/{PAYLOAD_CONFIG_ANNOTATION}")
    }
    /// The object a field id belongs to.
    pub fn object(field: &str) -> Option<TargetObject> {
        let (kind, rest) = field.split_once('/')?;
        let (name, _) = rest.split_once('/')?;
        match kind {
            "Deployment" => Some(TargetObject::Deployment(name.into())),
            "ConfigMap" => Some(TargetObject::ConfigMap(name.into())),
            _ => None,
        }
    }
}

/// Decide the next step. Pure: the same inputs always give the same decision.
pub fn plan(spec: &Spec, status: Option<&Status>, observed: &Observed, now: Timestamp) -> Decision {
    let mut p = Planner::new(spec, status.cloned().unwrap_or_default(), observed, now);
    let (action, requeue_after) = p.run();
    p.finish();
    Decision {
        action,
        status: p.st,
        events: p.events,
        requeue_after,
    }
}

/// What a phase handler wants.
enum Step {
    /// Perform this write.
    Act(Action),
    /// Status records were added; persist them and come back at once.
    Recorded,
    /// Nothing to do until the world changes.
    Wait { message: String, requeue: Duration },
    /// Something outside the rollout blocks it (re-checked on requeue; `Stalled=True`).
    Stall {
        reason: StallReason,
        message: String,
    },
    /// The phase is done: go to the next.
    Next {
        to: Phase,
        reason: TransitionReason,
        message: String,
    },
    /// The phase failed (progress deadline): apply `onFailure`.
    Fail { message: String },
    /// Terminal phase: nothing to do.
    Idle,
}

impl Step {
    fn next(to: Phase, reason: TransitionReason, message: impl Into<String>) -> Step {
        Step::Next {
            to,
            reason,
            message: message.into(),
        }
    }
}

struct Planner<'a> {
    spec: &'a Spec,
    obs: &'a Observed,
    /// The caller's clock, used for comparisons.
    now: Timestamp,
    /// `now` rounded up to a whole second, used for recorded times (status keeps seconds).
    stamp: Timestamp,
    st: Status,
    phase: Phase,
    events: Vec<PlanEvent>,
    /// Current world value of every field the rollout may write (`None` inside: field absent).
    world: BTreeMap<String, Option<String>>,
    /// Why the rollout is stalled this time, if it is.
    stalled: Option<(StallReason, String)>,
    message: String,
}

/// What [`Planner::run`] returns: the write and when to come back.
type Outcome = (Action, Option<Duration>);

impl<'a> Planner<'a> {
    fn new(spec: &'a Spec, st: Status, obs: &'a Observed, now: Timestamp) -> Self {
        let stamp = ceil_second(now);
        let phase = st.phase.unwrap_or_default();
        let world = records::world_values(spec, obs);
        Planner {
            spec,
            obs,
            now,
            stamp,
            st,
            phase,
            events: vec![],
            world,
            stalled: None,
            message: String::new(),
        }
    }

    fn run(&mut self) -> Outcome {
        if self.st.phase.is_none() {
            self.st.phase_started_at = Some(Time(self.stamp));
            self.event(EventKind::Normal, EventReason::Started, "rollout started");
        }
        self.confirm_records();
        self.on_spec_change();
        self.handle_request();
        self.track_pause();

        if self.phase.is_terminal() {
            return self.idle();
        }
        if self.spec.paused {
            self.message = format!("paused in {} (spec.paused)", self.phase);
            return (Action::None, Some(IDLE_POLL));
        }
        if self.st.hold.is_some() {
            return self.held();
        }
        let targets = match self.preflight() {
            Ok(targets) => targets,
            Err((reason, message)) => return self.stall(reason, message),
        };
        if let Some(message) = self.external_modification() {
            self.st.hold = Some(Hold {
                reason: HoldReason::ExternalModification.to_string(),
                message: message.clone(),
                since: Time(self.stamp),
            });
            self.event(
                EventKind::Warning,
                EventReason::ExternalModification,
                &message,
            );
            return self.held();
        }
        // Run phase handlers; skipped and finished phases pass within one call.
        for _ in 0..16 {
            if let Some(outcome) = self.take_step(&targets) {
                return outcome;
            }
        }
        unreachable!("phase handlers loop: {:?}", self.phase)
    }

    /// Run the current phase's handler once: `None` when the next phase's handler runs next.
    fn take_step(&mut self, targets: &preflight::Targets<'a>) -> Option<Outcome> {
        match self.handle_phase(targets) {
            Step::Next {
                to,
                reason,
                message,
            } => {
                self.transition(to, reason, &message);
                None
            }
            Step::Act(action) => {
                self.message = format!("{}: {}", self.phase, describe(&action));
                Some((action, Some(AFTER_ACTION)))
            }
            Step::Recorded => {
                self.message = format!(
                    "{}: recording previous values before changing them",
                    self.phase
                );
                Some((Action::None, Some(Duration::ZERO)))
            }
            Step::Wait { message, requeue } => {
                self.message = format!("{}: {message}", self.phase);
                Some((Action::None, Some(requeue)))
            }
            Step::Stall { reason, message } => Some(self.stall(reason, message)),
            Step::Fail { message } => {
                self.fail(message);
                self.st.hold.is_some().then(|| self.held())
            }
            Step::Idle => Some(self.idle()),
        }
    }

    /// A terminal phase: clear the original values this rollout recorded on its targets once they
    /// are no longer needed (see `records`), else nothing to do.
    fn idle(&mut self) -> Outcome {
        if let Some(action) = self.release_originals() {
            self.message = format!("{}: {}", self.phase, describe(&action));
            return (action, Some(AFTER_ACTION));
        }
        self.message = self.terminal_message();
        (Action::None, Some(IDLE_POLL))
    }

    fn held(&mut self) -> Outcome {
        let hold = self
            .st
            .hold
            .as_ref()
            .map(|h| h.message.as_str())
            .unwrap_or_default();
        self.message = format!("held: {hold} (send a retry or abort request)");
        (Action::None, Some(STALLED_POLL))
    }

    fn stall(&mut self, reason: StallReason, message: String) -> Outcome {
        self.message = format!("stalled: {message}");
        self.stalled = Some((reason, message));
        (Action::None, Some(STALLED_POLL))
    }
}

fn describe(action: &Action) -> String {
    match action {
        Action::None => "nothing to write".into(),
        Action::SetWorkerImage { deployment, container, image } => {
            format!("setting worker Deployment {deployment} container {container} to {image}")
        }
        Action::SetApiImage { deployment, container, image } => {
            format!("setting API Deployment {deployment} container {container} to {image}")
        }
        Action::SetConfig { config_map, include_b64, max_bytes } => format!(
            "setting ConfigMap {config_map}: {KEY_INCLUDE_B64}={include_b64}, {KEY_MAX_BYTES}={max_bytes}"
        ),
        Action::SetApiRestartAnnotation { deployment, value } => {
            format!("restarting API Deployment {deployment} ({PAYLOAD_CONFIG_ANNOTATION}={value})")
        }
        Action::SetOriginals { target, values } if values.is_empty() => {
            format!("clearing the original values recorded on {target} ({ORIGINALS_ANNOTATION})")
        }
        Action::SetOriginals { target, .. } => {
            format!("recording the original values on {target} ({ORIGINALS_ANNOTATION})")
        }
    }
}

fn ceil_second(t: Timestamp) -> Timestamp {
    if t.subsec_nanosecond() > 0 {
        Timestamp::from_second(t.as_second() + 1).unwrap_or(t)
    } else {
        t
    }
}

/// What the test modules below take from here with `use super::*`.
#[cfg(test)]
use crate::{
    conditions as cond,
    crd::{DrainStrategy, Evidence, Finalize},
    snapshot::{
        include_b64_is_on, DeploymentObs, DrainObs, Heartbeats, PodObs, ScanKind,
        DEFAULT_TTL_SECONDS,
    },
};
#[cfg(test)]
use records::world_values;

#[cfg(test)]
mod delete_tests;
#[cfg(test)]
mod gitops_fixtures;
#[cfg(test)]
mod sim;
#[cfg(test)]
mod tests;
