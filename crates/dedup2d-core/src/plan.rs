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

use std::{collections::BTreeMap, time::Duration};

use k8s_openapi::{apimachinery::pkg::apis::meta::v1::Time, jiff::Timestamp};
use sha2::{Digest, Sha256};

use crate::{
    conditions::{self as cond, set_condition, CondStatus},
    crd::{
        Dedup2DRolloutSpec as Spec, Dedup2DRolloutStatus as Status, DrainStrategy, Evidence,
        FieldRecord, Finalize, HandledRequest, Hold, OnFailure, Phase, RollbackLevel,
        RollbackRecord, TransitionRecord, WorkerStatus, WorkerTarget, MAX_TRANSITIONS,
        PAYLOAD_CONFIG_ANNOTATION,
    },
    duration::parse_duration,
    snapshot::{
        include_b64_is_on, DeploymentObs, DrainObs, Heartbeats, Observed, PodObs,
        DEFAULT_TTL_SECONDS, FILE_REF_FORMAT, KEY_INCLUDE_B64, KEY_MAX_BYTES,
    },
};

/// How soon to look again after a write (watch events usually come first).
const AFTER_ACTION: Duration = Duration::from_secs(5);
/// How often to re-check while waiting on Deployments (watch events usually come first).
const POLL: Duration = Duration::from_secs(15);
/// How often to re-scan Redis while draining or waiting for active jobs.
const DRAIN_POLL: Duration = Duration::from_secs(10);
/// How soon to scan again when the last scan began before a moment that matters (e.g. dual-write-off
/// in effect, recorded rounded up to a second).
const NEXT_SCAN: Duration = Duration::from_secs(1);
/// How often to re-check a stalled rollout.
const STALLED_POLL: Duration = Duration::from_secs(30);
/// How often to re-observe a finished or paused rollout, so `RollbackSafe` (the active file_ref-only jobs a
/// full rollback would wait for) stays current without a Redis scan every few seconds.
pub const IDLE_POLL: Duration = Duration::from_secs(120);

/// One write the adapter performs (server-side apply). Each corresponds to [`FieldRecord`]s.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Nothing to write: persist the status (if changed) and requeue.
    None,
    /// Set one container image of a worker Deployment's pod template.
    SetWorkerImage {
        deployment: String,
        container: String,
        image: String,
    },
    /// Set one container image of the API Deployment's pod template.
    SetApiImage {
        deployment: String,
        container: String,
        image: String,
    },
    /// Set `DEDUP2D_JOB_PAYLOAD_INCLUDE_BYTES_B64` and `..._MAX_BYTES` in the API's ConfigMap.
    SetConfig {
        config_map: String,
        include_b64: String,
        max_bytes: String,
    },
    /// Set the `dedup2d.io/payload-config` pod-template annotation of the API Deployment (restarts its pods).
    SetApiRestartAnnotation { deployment: String, value: String },
}

/// Normal or Warning, as for Kubernetes Events.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    Normal,
    Warning,
}

/// Something worth a Kubernetes Event: every phase transition, handled requests, holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlanEvent {
    pub kind: EventKind,
    pub reason: String,
    /// With the reason, what tells Events apart (repeats of one pair are counted on one Event):
    /// the target phase for a transition, the annotation value for a request, else the reason.
    pub action: String,
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
    Promote,
    Abort,
    AbortFull,
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

    pub fn image(deployment: &str, container: &str) -> String {
        format!("Deployment/{deployment}/containers/{container}/image")
    }
    pub fn config_key(config_map: &str, key: &str) -> String {
        format!("ConfigMap/{config_map}/data/{key}")
    }
    pub fn restart_annotation(deployment: &str) -> String {
        format!("Deployment/{deployment}/template/annotations/{PAYLOAD_CONFIG_ANNOTATION}")
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
        reason: &'static str,
        message: String,
    },
    /// The phase is done: go to the next.
    Next {
        to: Phase,
        reason: &'static str,
        message: String,
    },
    /// The phase failed (progress deadline): apply `onFailure`.
    Fail { message: String },
    /// Terminal phase: nothing to do.
    Idle,
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
    stalled: Option<(&'static str, String)>,
    message: String,
}

impl<'a> Planner<'a> {
    fn new(spec: &'a Spec, st: Status, obs: &'a Observed, now: Timestamp) -> Self {
        let stamp = ceil_second(now);
        let phase = st.phase.unwrap_or_default();
        let world = world_values(spec, obs);
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

    fn run(&mut self) -> (Action, Option<Duration>) {
        if self.st.phase.is_none() {
            self.st.phase_started_at = Some(Time(self.stamp));
            self.event(EventKind::Normal, "Started", "rollout started");
        }
        self.confirm_records();
        self.on_spec_change();
        self.handle_request();
        self.track_pause();

        if self.phase.is_terminal() {
            self.message = self.terminal_message();
            return (Action::None, Some(IDLE_POLL));
        }
        if self.spec.paused {
            self.message = format!("paused in {} (spec.paused)", self.phase);
            return (Action::None, Some(IDLE_POLL));
        }
        if let Some(hold) = &self.st.hold {
            self.message = format!("held: {} (send a retry or abort request)", hold.message);
            return (Action::None, Some(STALLED_POLL));
        }
        if let Some((reason, message)) = self.preflight() {
            return self.stall(reason, message);
        }
        if let Some(message) = self.external_modification() {
            self.st.hold = Some(Hold {
                reason: "ExternalModification".into(),
                message: message.clone(),
                since: Time(self.stamp),
            });
            self.event(EventKind::Warning, "ExternalModification", &message);
            self.message = format!("held: {message} (send a retry or abort request)");
            return (Action::None, Some(STALLED_POLL));
        }

        // Run phase handlers; skipped and finished phases pass within one call.
        for _ in 0..16 {
            let step = self.handle_phase();
            match step {
                Step::Next {
                    to,
                    reason,
                    message,
                } => self.transition(to, reason, &message),
                Step::Act(action) => {
                    self.message = format!("{}: {}", self.phase, describe(&action));
                    return (action, Some(AFTER_ACTION));
                }
                Step::Recorded => {
                    self.message = format!(
                        "{}: recording previous values before changing them",
                        self.phase
                    );
                    return (Action::None, Some(Duration::ZERO));
                }
                Step::Wait { message, requeue } => {
                    self.message = format!("{}: {message}", self.phase);
                    return (Action::None, Some(requeue));
                }
                Step::Stall { reason, message } => return self.stall(reason, message),
                Step::Fail { message } => {
                    self.fail(message);
                    if let Some(hold) = &self.st.hold {
                        self.message =
                            format!("held: {} (send a retry or abort request)", hold.message);
                        return (Action::None, Some(STALLED_POLL));
                    }
                }
                Step::Idle => {
                    self.message = self.terminal_message();
                    return (Action::None, Some(IDLE_POLL));
                }
            }
        }
        unreachable!("phase handlers loop: {:?}", self.phase)
    }

    fn stall(&mut self, reason: &'static str, message: String) -> (Action, Option<Duration>) {
        self.message = format!("stalled: {message}");
        self.stalled = Some((reason, message));
        (Action::None, Some(STALLED_POLL))
    }

    // ----- bookkeeping -------------------------------------------------------------------------

    fn event(&mut self, kind: EventKind, reason: &str, message: &str) {
        self.events.push(PlanEvent {
            kind,
            reason: reason.into(),
            action: reason.into(),
            message: message.into(),
            transition: None,
        });
    }

    fn transition(&mut self, to: Phase, reason: &str, message: &str) {
        let record = TransitionRecord {
            from: self.phase,
            to,
            reason: reason.into(),
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
                self.st.finished_at = Some(Time(self.stamp))
            }
            _ => {}
        }
    }

    /// Seconds the current phase has been active (pause time excluded).
    fn active_elapsed(&self) -> i64 {
        let started = self
            .st
            .phase_started_at
            .as_ref()
            .map(|t| t.0)
            .unwrap_or(self.now);
        let mut secs = self.now.as_second() - started.as_second() - self.st.phase_paused_seconds;
        if let Some(p) = &self.st.paused_since {
            secs -= self.now.as_second() - p.0.as_second();
        }
        secs.max(0)
    }

    fn track_pause(&mut self) {
        match (self.spec.paused, &self.st.paused_since) {
            (true, None) => {
                self.st.paused_since = Some(Time(self.stamp));
                self.event(EventKind::Normal, "Paused", "rollout paused (spec.paused)");
            }
            (false, Some(since)) => {
                self.st.phase_paused_seconds +=
                    (self.stamp.as_second() - since.0.as_second()).max(0);
                self.st.paused_since = None;
                self.event(EventKind::Normal, "Resumed", "rollout resumed");
            }
            _ => {}
        }
    }

    /// Mark records whose written value is now seen in the world as confirmed.
    fn confirm_records(&mut self) {
        for r in &mut self.st.fields {
            if !r.confirmed
                && self
                    .world
                    .get(&r.field)
                    .is_some_and(|v| v.as_deref() == Some(r.written.as_str()))
            {
                r.confirmed = true;
            }
        }
    }

    /// Record (if needed) and compare fields the step wants to hold `desired`.
    /// `Ok(true)`: all in place; `Ok(false)`: the write may go ahead; `Err(Step::Recorded)`: persist first.
    ///
    /// Record the intent for `wants` before any of them is written. Any change to the records
    /// (a new field, a new intended value) is persisted on its own before a write of the same
    /// action follows, even for a field already in place: the action writes every field it
    /// carries, so each one must already be recorded with that value (invariant 5).
    fn ensure_fields(&mut self, wants: &[(String, String)]) -> Result<bool, Step> {
        let mut recorded = false;
        let mut all_in_place = true;
        for (field, desired) in wants {
            let current = self.world.get(field).cloned().flatten();
            let in_place = current.as_deref() == Some(desired.as_str());
            all_in_place &= in_place;
            match self.st.fields.iter_mut().find(|r| &r.field == field) {
                None => {
                    self.st.fields.push(FieldRecord {
                        field: field.clone(),
                        previous: current,
                        written: desired.clone(),
                        confirmed: in_place,
                    });
                    recorded = true;
                }
                Some(r) if &r.written != desired => {
                    r.written = desired.clone();
                    r.confirmed = in_place;
                    recorded = true;
                }
                Some(_) => {}
            }
        }
        if all_in_place {
            Ok(true)
        } else if recorded {
            Err(Step::Recorded)
        } else {
            Ok(false)
        }
    }

    fn record(&self, field: &str) -> Option<&FieldRecord> {
        self.st.fields.iter().find(|r| r.field == field)
    }

    // ----- spec edits and requests -------------------------------------------------------------

    /// A new `metadata.generation`: lift holds, and go back to the phase whose result the edit undid.
    fn on_spec_change(&mut self) {
        let gen = self.obs.generation;
        let before = self.st.observed_generation.replace(gen);
        if before.is_none() || before == Some(gen) {
            return;
        }
        if self.st.hold.take().is_some() {
            self.event(EventKind::Normal, "HoldLifted", "the spec changed");
        }
        let targets_met = self.all_workers_upgraded() && self.api_image_rolled();
        match self.phase {
            Phase::Completed | Phase::RolledBack | Phase::Failed if !targets_met => {
                self.st.rollback = None;
                self.st.finished_at = None;
                self.transition(Phase::Pending, "SpecChanged", "new targets: starting again");
            }
            p if !targets_met && p.forward_rank().is_some_and(|r| r > 2) => {
                let to = if self.spec.dual_write.enabled {
                    Phase::DualWriteOn
                } else {
                    Phase::UpgradingWorkers
                };
                self.transition(to, "SpecChanged", "new targets: upgrading again");
            }
            _ => {}
        }
    }

    /// Handle a new `dedup2d.io/request` value once and record it.
    fn handle_request(&mut self) {
        let Some(value) = self.obs.request.clone() else {
            return;
        };
        if self
            .st
            .last_request
            .as_ref()
            .is_some_and(|r| r.request == value)
        {
            return;
        }
        let outcome = match Request::parse(&value) {
            None => "ignored: unknown request (use promote, abort, abort-full or retry[:nonce])"
                .to_string(),
            Some(Request::Promote) => match self.phase {
                Phase::Soaking => {
                    self.transition(
                        Phase::DualWriteOff,
                        "Promoted",
                        "soak ended early by a promote request",
                    );
                    "soak ended".into()
                }
                Phase::AwaitingFinalize => {
                    self.transition(
                        Phase::Completed,
                        "Promoted",
                        "finalized by a promote request",
                    );
                    "finalized".into()
                }
                p => format!("ignored: promote applies in Soaking or AwaitingFinalize, not {p}"),
            },
            Some(Request::Abort) => {
                match (self.phase, self.st.rollback.as_ref().map(|r| r.level)) {
                    (Phase::RollingBack, _) | (Phase::RolledBack, _) => {
                        format!("ignored: already {}", self.phase)
                    }
                    _ => {
                        self.start_rollback(
                            RollbackLevel::Quick,
                            "AbortRequested",
                            "abort requested",
                        );
                        "quick rollback started".into()
                    }
                }
            }
            Some(Request::AbortFull) => {
                match (self.phase, self.st.rollback.as_ref().map(|r| r.level)) {
                    (Phase::RollingBack | Phase::RolledBack, Some(RollbackLevel::Full)) => {
                        format!("ignored: a full rollback is already {}", self.phase)
                    }
                    _ => {
                        self.start_rollback(
                            RollbackLevel::Full,
                            "AbortRequested",
                            "full abort requested",
                        );
                        "full rollback started".into()
                    }
                }
            }
            Some(Request::Retry) => {
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
                    format!("resumed after {}", hold.reason)
                } else if matches!(self.phase, Phase::RolledBack | Phase::Failed) {
                    self.st.rollback = None;
                    self.st.finished_at = None;
                    self.transition(Phase::Pending, "Retry", "retry requested");
                    "rollout restarted".into()
                } else {
                    "ignored: nothing to retry".into()
                }
            }
        };
        let kind = if outcome.starts_with("ignored") {
            EventKind::Warning
        } else {
            EventKind::Normal
        };
        // Each request its own Event (a count on the first one would hide this outcome).
        self.events.push(PlanEvent {
            kind,
            reason: "Request".into(),
            action: match value.trim() {
                "" => "Request".into(),
                v => v.chars().take(128).collect(), // the Events API limit
            },
            message: format!("request {value:?}: {outcome}"),
            transition: None,
        });
        self.st.last_request = Some(HandledRequest {
            request: value,
            handled_at: Time(self.stamp),
            outcome,
        });
    }

    fn start_rollback(&mut self, level: RollbackLevel, reason: &str, message: &str) {
        let from_phase = self
            .st
            .rollback
            .as_ref()
            .map(|r| r.from_phase)
            .unwrap_or(self.phase);
        self.st.hold = None;
        self.st.rollback = Some(RollbackRecord {
            level,
            reason: message.into(),
            from_phase,
            started_at: Time(self.stamp),
        });
        self.transition(Phase::RollingBack, reason, message);
    }

    fn fail(&mut self, message: String) {
        match self.spec.on_failure {
            OnFailure::Rollback => {
                self.start_rollback(RollbackLevel::Full, "ProgressDeadlineExceeded", &message)
            }
            OnFailure::Pause => {
                self.event(EventKind::Warning, "ProgressDeadlineExceeded", &message);
                self.st.hold = Some(Hold {
                    reason: "ProgressDeadlineExceeded".into(),
                    message,
                    since: Time(self.stamp),
                });
            }
        }
    }

    // ----- checks before any step --------------------------------------------------------------

    /// What only the cluster can tell: missing targets, an API that does not read the ConfigMap, ...
    fn preflight(&self) -> Option<(&'static str, String)> {
        if !self.obs.conflicts.is_empty() {
            return Some((
                "ConflictingRollout",
                format!(
                    "an older rollout targets the same Deployments: {}",
                    self.obs.conflicts.join(", ")
                ),
            ));
        }
        for w in &self.spec.workers {
            let Some(d) = self.obs.workers.get(&w.deployment) else {
                return Some((
                    "TargetMissing",
                    format!("worker Deployment {} not found", w.deployment),
                ));
            };
            if let Err(e) = d.resolve_container(w.container.as_deref()) {
                return Some(("ContainerNotFound", e.to_string()));
            }
        }
        let api = &self.spec.api;
        let Some(d) = &self.obs.api else {
            return Some((
                "TargetMissing",
                format!("API Deployment {} not found", api.deployment),
            ));
        };
        if api.image.is_some() {
            if let Err(e) = d.resolve_container(api.container.as_deref()) {
                return Some(("ContainerNotFound", e.to_string()));
            }
        }
        if self.obs.config.is_none() {
            return Some((
                "TargetMissing",
                format!("ConfigMap {} not found", api.config_map),
            ));
        }
        if !d.reads_config_maps.iter().any(|c| c == &api.config_map) {
            return Some((
                "ApiDoesNotReadConfigMap",
                format!(
                    "API Deployment {} does not read ConfigMap {} (envFrom or env valueFrom), so changing it would have no effect",
                    api.deployment, api.config_map
                ),
            ));
        }
        if let Err(e) = parse_duration(&self.spec.dual_write.soak) {
            return Some(("InvalidSpec", e.to_string()));
        }
        None
    }

    /// A field the operator set and saw in place now holds another value.
    fn external_modification(&self) -> Option<String> {
        for r in self.st.fields.iter().filter(|r| r.confirmed) {
            let Some(now) = self.world.get(&r.field) else {
                continue;
            };
            if now.as_deref() != Some(r.written.as_str()) {
                let manager = self
                    .obs
                    .workers
                    .values()
                    .chain(self.obs.api.as_ref())
                    .find_map(|d| d.managers.get(&r.field))
                    .map(|m| format!(" by {m}"))
                    .unwrap_or_default();
                return Some(format!(
                    "{} was changed{manager} to {} (the operator set {:?})",
                    r.field,
                    now.as_deref()
                        .map(|v| format!("{v:?}"))
                        .unwrap_or_else(|| "nothing".into()),
                    r.written
                ));
            }
        }
        None
    }

    // ----- world predicates --------------------------------------------------------------------

    fn worker_container(&self, w: &WorkerTarget) -> Option<(&'a DeploymentObs, String)> {
        let d = self.obs.workers.get(&w.deployment)?;
        let c = d.resolve_container(w.container.as_deref()).ok()?;
        Some((d, c))
    }

    /// Can this worker pod read `file_ref` payloads? (target image; a heartbeat, when present, lists
    /// file_ref; with `Heartbeat` evidence a running pod must have one.)
    fn worker_pod_is_new(&self, w: &WorkerTarget, container: &str, pod: &PodObs) -> bool {
        if pod.image(container) != Some(w.image.as_str()) {
            return false;
        }
        let beat = match &self.obs.heartbeats {
            Heartbeats::Read(map) => map.get(&pod.name),
            Heartbeats::Unavailable(_) => None,
        };
        match beat {
            Some(formats) => formats.iter().any(|f| f == FILE_REF_FORMAT),
            None => w.evidence == Evidence::Image || pod.terminating,
        }
    }

    fn worker_upgraded(&self, w: &WorkerTarget) -> bool {
        let Some((d, c)) = self.worker_container(w) else {
            return false;
        };
        d.template_image(&c) == Some(w.image.as_str())
            && d.fully_rolled(|p| self.worker_pod_is_new(w, &c, p))
    }

    /// Invariant 1's precondition for turning dual-write off.
    fn all_workers_upgraded(&self) -> bool {
        self.spec.workers.iter().all(|w| self.worker_upgraded(w))
    }

    fn api_image_rolled(&self) -> bool {
        let Some(image) = &self.spec.api.image else {
            return true;
        };
        let Some(d) = &self.obs.api else { return false };
        let Ok(c) = d.resolve_container(self.spec.api.container.as_deref()) else {
            return false;
        };
        d.template_image(&c) == Some(image.as_str())
            && d.fully_rolled(|p| p.image(&c) == Some(image.as_str()))
    }

    fn payload_values(&self, on: bool) -> (String, String) {
        (
            (if on { "1" } else { "0" }).to_string(),
            self.spec.dual_write.max_bytes.to_string(),
        )
    }

    /// The API has fully rolled with the restart annotation of these values (invariant 2).
    fn config_in_effect(&self, include: &str, max_bytes: &str) -> bool {
        let hash = payload_config_hash(include, max_bytes);
        let Some(config) = &self.obs.config else {
            return false;
        };
        let Some(api) = &self.obs.api else {
            return false;
        };
        config.include_b64.as_deref() == Some(include)
            && config.max_bytes.as_deref() == Some(max_bytes)
            && api.template_annotations.get(PAYLOAD_CONFIG_ANNOTATION) == Some(&hash)
            && api.fully_rolled(|p| p.annotations.get(PAYLOAD_CONFIG_ANNOTATION) == Some(&hash))
    }

    /// Drive the ConfigMap and the API restart annotation to dual-write `on`; `Ok` once in effect.
    fn ensure_payload_config(&mut self, on: bool) -> Result<(), Step> {
        let cm = self.spec.api.config_map.clone();
        let api = self.spec.api.deployment.clone();
        let (include, max_bytes) = self.payload_values(on);
        let wants = [
            (field_id::config_key(&cm, KEY_INCLUDE_B64), include.clone()),
            (field_id::config_key(&cm, KEY_MAX_BYTES), max_bytes.clone()),
        ];
        if !self.ensure_fields(&wants)? {
            return Err(Step::Act(Action::SetConfig {
                config_map: cm,
                include_b64: include,
                max_bytes,
            }));
        }
        let hash = payload_config_hash(&include, &max_bytes);
        if !self.ensure_fields(&[(field_id::restart_annotation(&api), hash.clone())])? {
            return Err(Step::Act(Action::SetApiRestartAnnotation {
                deployment: api,
                value: hash,
            }));
        }
        if self.config_in_effect(&include, &max_bytes) {
            return Ok(());
        }
        let d = self
            .obs
            .api
            .as_ref()
            .expect("preflight checked the API Deployment");
        let new = d
            .pods
            .iter()
            .filter(|p| p.annotations.get(PAYLOAD_CONFIG_ANNOTATION) == Some(&hash))
            .count();
        Err(Step::Wait {
            message: format!(
                "waiting for API Deployment {} to roll out with dual-write {} ({new}/{} pods restarted, {} pods in total)",
                d.name,
                if on { "on" } else { "off" },
                d.replicas,
                d.pods.len()
            ),
            requeue: POLL,
        })
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
    fn with_deadline(&self, step: Step) -> Step {
        match step {
            Step::Wait { message, requeue } => match self.deadline_exceeded() {
                Some(message) => Step::Fail { message },
                // Come back right after the deadline, not a whole poll later.
                None => {
                    let limit = i64::from(self.spec.progress_deadline_seconds);
                    let left = (limit - self.active_elapsed()).max(0) as u64 + 1;
                    Step::Wait {
                        message,
                        requeue: requeue.min(Duration::from_secs(left)),
                    }
                }
            },
            other => other,
        }
    }

    // ----- phases ------------------------------------------------------------------------------

    fn handle_phase(&mut self) -> Step {
        match self.phase {
            Phase::Pending => {
                let to = if self.spec.dual_write.enabled {
                    Phase::DualWriteOn
                } else {
                    Phase::UpgradingWorkers
                };
                Step::Next {
                    to,
                    reason: "Started",
                    message: "targets found".into(),
                }
            }
            Phase::DualWriteOn => self.dual_write_on(),
            Phase::UpgradingWorkers => self.upgrading_workers(),
            Phase::UpgradingApi => self.upgrading_api(),
            Phase::Soaking => self.soaking(),
            Phase::DualWriteOff => self.dual_write_off(),
            Phase::Draining => self.draining(),
            Phase::AwaitingFinalize => Step::Wait {
                message: "drained; waiting for a promote request (finalize: Manual)".into(),
                requeue: POLL,
            },
            Phase::RollingBack => self.rolling_back(),
            Phase::Completed | Phase::RolledBack | Phase::Failed => Step::Idle,
        }
    }

    fn dual_write_on(&mut self) -> Step {
        if !self.spec.dual_write.enabled {
            return Step::Next {
                to: Phase::UpgradingWorkers,
                reason: "DualWriteDisabled",
                message: "dual-write disabled in spec".into(),
            };
        }
        if let Err(step) = self.ensure_payload_config(true) {
            return self.with_deadline(step);
        }
        self.st
            .dual_write_on_in_effect_at
            .get_or_insert(Time(self.stamp));
        Step::Next {
            to: Phase::UpgradingWorkers,
            reason: "DualWriteOnInEffect",
            message: "every API pod runs with dual-write on".into(),
        }
    }

    fn upgrading_workers(&mut self) -> Step {
        for w in &self.spec.workers {
            let (d, c) = self
                .worker_container(w)
                .expect("preflight checked the worker targets");
            let field = field_id::image(&w.deployment, &c);
            match self.ensure_fields(&[(field, w.image.clone())]) {
                Err(step) => return step,
                Ok(false) => {
                    return Step::Act(Action::SetWorkerImage {
                        deployment: w.deployment.clone(),
                        container: c,
                        image: w.image.clone(),
                    })
                }
                Ok(true) => {}
            }
            if !self.worker_upgraded(w) {
                if d.progress_deadline_exceeded {
                    return Step::Fail {
                        message: format!(
                            "worker Deployment {} reports ProgressDeadlineExceeded",
                            d.name
                        ),
                    };
                }
                let new = d
                    .pods
                    .iter()
                    .filter(|p| self.worker_pod_is_new(w, &c, p))
                    .count();
                let wait = Step::Wait {
                    message: format!(
                        "waiting for worker Deployment {}: {new}/{} pods new, {} old (terminating included)",
                        d.name,
                        d.replicas,
                        d.pods.len() - new
                    ),
                    requeue: POLL,
                };
                return self.with_deadline(wait);
            }
        }
        Step::Next {
            to: Phase::UpgradingApi,
            reason: "WorkersUpgraded",
            message: "every worker pod runs the target image".into(),
        }
    }

    fn upgrading_api(&mut self) -> Step {
        let Some(image) = self.spec.api.image.clone() else {
            return Step::Next {
                to: Phase::Soaking,
                reason: "NoApiImage",
                message: "no API image in spec".into(),
            };
        };
        let d = self
            .obs
            .api
            .as_ref()
            .expect("preflight checked the API Deployment");
        let c = d
            .resolve_container(self.spec.api.container.as_deref())
            .expect("preflight resolved it");
        match self.ensure_fields(&[(field_id::image(&d.name, &c), image.clone())]) {
            Err(step) => return step,
            Ok(false) => {
                return Step::Act(Action::SetApiImage {
                    deployment: d.name.clone(),
                    container: c,
                    image,
                })
            }
            Ok(true) => {}
        }
        if !self.api_image_rolled() {
            if d.progress_deadline_exceeded {
                return Step::Fail {
                    message: format!("API Deployment {} reports ProgressDeadlineExceeded", d.name),
                };
            }
            let wait = Step::Wait {
                message: format!("waiting for API Deployment {} to run {image}", d.name),
                requeue: POLL,
            };
            return self.with_deadline(wait);
        }
        Step::Next {
            to: Phase::Soaking,
            reason: "ApiUpgraded",
            message: "every API pod runs the target image".into(),
        }
    }

    fn soaking(&mut self) -> Step {
        if let Some(back) = self.workers_regressed() {
            return back;
        }
        if !self.spec.dual_write.enabled {
            return Step::Next {
                to: Phase::DualWriteOff,
                reason: "DualWriteDisabled",
                message: "no soak without dual-write".into(),
            };
        }
        let soak = parse_duration(&self.spec.dual_write.soak)
            .map(|d| d.as_secs() as i64)
            .unwrap_or(0);
        let elapsed = self.active_elapsed();
        if elapsed >= soak {
            return Step::Next {
                to: Phase::DualWriteOff,
                reason: "SoakDone",
                message: format!("soaked {}", self.spec.dual_write.soak),
            };
        }
        Step::Wait {
            message: format!("soaking with dual-write on: {}s of {}s", elapsed, soak),
            requeue: Duration::from_secs((soak - elapsed) as u64),
        }
    }

    fn dual_write_off(&mut self) -> Step {
        // Invariant 1: never turn dual-write off while an old worker pod exists; go back and upgrade
        // (turning dual-write on again if it was already being turned off).
        if let Some(back) = self.workers_regressed() {
            return back;
        }
        if let Err(step) = self.ensure_payload_config(false) {
            return self.with_deadline(step);
        }
        self.st
            .dual_write_off_in_effect_at
            .get_or_insert(Time(self.stamp));
        Step::Next {
            to: Phase::Draining,
            reason: "DualWriteOffInEffect",
            message: "every API pod runs with dual-write off".into(),
        }
    }

    /// After the workers were upgraded, one is not any more (a new target image, another writer, a
    /// scaled-up old ReplicaSet): go back to the phase that fixes it.
    fn workers_regressed(&self) -> Option<Step> {
        if self.all_workers_upgraded() {
            return None;
        }
        let to = if self.spec.dual_write.enabled {
            Phase::DualWriteOn
        } else {
            Phase::UpgradingWorkers
        };
        Some(Step::Next {
            to,
            reason: "WorkersNotUpgraded",
            message: "a worker pod not on the target image exists".into(),
        })
    }

    /// The payload TTL: spec, else the ConfigMap, else 3600 (never below the dedup2d minimum of 60).
    fn ttl_seconds(&self) -> i64 {
        self.spec
            .drain
            .ttl_seconds
            .or_else(|| {
                self.obs
                    .config
                    .as_ref()?
                    .ttl_seconds
                    .as_deref()?
                    .trim()
                    .parse()
                    .ok()
            })
            .unwrap_or(DEFAULT_TTL_SECONDS)
            .max(60)
    }

    fn draining(&mut self) -> Step {
        let Some(off) = self.st.dual_write_off_in_effect_at.clone() else {
            return Step::Next {
                to: Phase::DualWriteOff,
                reason: "DualWriteOffUnknown",
                message: "dual-write-off time not recorded".into(),
            };
        };
        let deadline =
            Timestamp::from_second(off.0.as_second() + self.ttl_seconds()).unwrap_or(off.0);
        self.st.drain_deadline = Some(Time(deadline));
        let f = match &self.obs.drain {
            DrainObs::Unreachable(why) => {
                return Step::Stall {
                    reason: "RedisUnreachable",
                    message: format!("Redis unreachable, drain on hold: {why}"),
                }
            }
            DrainObs::NotScanned => {
                return Step::Wait {
                    message: "waiting for a Redis scan".into(),
                    requeue: DRAIN_POLL,
                }
            }
            DrainObs::Figures(f) => f,
        };
        // Only a scan begun strictly after dual-write-off took effect proves anything.
        if f.scanned_at <= off.0 {
            return Step::Wait {
                message: "waiting for a Redis scan begun after dual-write-off took effect".into(),
                // The in-effect time is rounded up to a second: the next scan proves it soon.
                requeue: NEXT_SCAN,
            };
        }
        let next = if self.spec.finalize == Finalize::Manual {
            Phase::AwaitingFinalize
        } else {
            Phase::Completed
        };
        let past_deadline = self.now >= deadline;
        if f.legacy_payloads == 0
            && (self.spec.drain.strategy == DrainStrategy::Observe || past_deadline)
        {
            let message = if past_deadline {
                "TTL elapsed since dual-write-off and no legacy payload left"
            } else {
                "a Redis scan found no legacy payload"
            };
            return Step::Next {
                to: next,
                reason: "Drained",
                message: message.into(),
            };
        }
        if past_deadline {
            return Step::Stall {
                reason: "LegacyPayloadsRemain",
                message: format!(
                    "{} legacy payloads remain after the TTL ({} without expiry)",
                    f.legacy_payloads, f.legacy_without_expiry
                ),
            };
        }
        let left = (deadline.as_second() - self.now.as_second()).max(1) as u64;
        let requeue = match self.spec.drain.strategy {
            DrainStrategy::Observe => DRAIN_POLL.min(Duration::from_secs(left)),
            DrainStrategy::Ttl => Duration::from_secs(left),
        };
        Step::Wait {
            message: format!(
                "draining: {} legacy payloads, {left}s to the TTL deadline",
                f.legacy_payloads
            ),
            requeue,
        }
    }

    fn rolling_back(&mut self) -> Step {
        if let Err(step) = self.ensure_payload_config(true) {
            return step;
        }
        self.st
            .dual_write_on_in_effect_at
            .get_or_insert(Time(self.stamp));
        let level = self
            .st
            .rollback
            .as_ref()
            .map(|r| r.level)
            .unwrap_or(RollbackLevel::Quick);
        if level == RollbackLevel::Quick {
            return Step::Next {
                to: Phase::RolledBack,
                reason: "RolledBack",
                message: "dual-write on and in effect; workers kept".into(),
            };
        }
        // Full: restore the recorded images, workers first, once no active job lacks file_bytes_b64.
        let mut restores: Vec<(String, String, String, bool)> = vec![]; // (deployment, container, image, is_api)
        for w in &self.spec.workers {
            if let Some((d, c)) = self.worker_container(w) {
                restores.push((d.name.clone(), c, String::new(), false));
            }
        }
        if self.spec.api.image.is_some() {
            if let Some(d) = &self.obs.api {
                if let Ok(c) = d.resolve_container(self.spec.api.container.as_deref()) {
                    restores.push((d.name.clone(), c, String::new(), true));
                }
            }
        }
        for (deployment, container, _, is_api) in restores {
            let field = field_id::image(&deployment, &container);
            let Some(previous) = self.record(&field).and_then(|r| r.previous.clone()) else {
                continue;
            };
            let d = if is_api {
                self.obs.api.as_ref()
            } else {
                self.obs.workers.get(&deployment)
            }
            .expect("preflight");
            let template = d.template_image(&container).map(str::to_string);
            if template.as_deref() != Some(previous.as_str()) {
                if let Some(step) = self.rollback_gate() {
                    return step;
                }
                match self.ensure_fields(&[(field, previous.clone())]) {
                    Err(step) => return step,
                    Ok(true) => {}
                    Ok(false) => {
                        return Step::Act(if is_api {
                            Action::SetApiImage {
                                deployment,
                                container,
                                image: previous,
                            }
                        } else {
                            Action::SetWorkerImage {
                                deployment,
                                container,
                                image: previous,
                            }
                        })
                    }
                }
            }
            if !d.fully_rolled(|p| p.image(&container) == Some(previous.as_str())) {
                return Step::Wait {
                    message: format!("waiting for {deployment} to run {previous} again"),
                    requeue: POLL,
                };
            }
        }
        Step::Next {
            to: Phase::RolledBack,
            reason: "RolledBack",
            message: "recorded images restored, dual-write on".into(),
        }
    }

    /// Invariant 4: images are reverted only when no active job's payload lacks `file_bytes_b64`,
    /// per a scan begun after dual-write-on took effect.
    fn rollback_gate(&self) -> Option<Step> {
        let on = self.st.dual_write_on_in_effect_at.as_ref()?.0;
        match &self.obs.drain {
            DrainObs::Unreachable(why) => Some(Step::Stall {
                reason: "RedisUnreachable",
                message: format!("Redis unreachable, full rollback on hold: {why}"),
            }),
            DrainObs::Figures(f) if f.scanned_at > on && f.active_without_b64 == 0 => None,
            DrainObs::Figures(f) if f.scanned_at > on => Some(Step::Wait {
                message: format!(
                    "{} active jobs have file_ref-only payloads; old workers could not run them",
                    f.active_without_b64
                ),
                requeue: DRAIN_POLL,
            }),
            _ => Some(Step::Wait {
                message: "waiting for a Redis scan of active jobs".into(),
                requeue: DRAIN_POLL,
            }),
        }
    }

    // ----- status summary ----------------------------------------------------------------------

    fn terminal_message(&self) -> String {
        match self.phase {
            Phase::Completed => {
                "completed: dual-write off and drained; the system is file_ref-only".into()
            }
            Phase::RolledBack => format!(
                "rolled back ({})",
                self.st
                    .rollback
                    .as_ref()
                    .map(|r| r.reason.as_str())
                    .unwrap_or("rollback")
            ),
            Phase::Failed => "failed".into(),
            p => p.to_string(),
        }
    }

    /// Fill in phase, message, counts and conditions.
    fn finish(&mut self) {
        let gen = self.obs.generation;
        let now = self.stamp;
        self.st.phase = Some(self.phase);
        self.st.observed_generation = Some(gen);
        self.st.message = Some(std::mem::take(&mut self.message));

        // Per-worker counts.
        let mut workers = vec![];
        let mut upgraded = 0;
        for w in &self.spec.workers {
            let mut ws = WorkerStatus {
                deployment: w.deployment.clone(),
                ..Default::default()
            };
            if let Some((d, c)) = self.worker_container(w) {
                ws.pods = d.pods.len() as i32;
                ws.updated = d
                    .pods
                    .iter()
                    .filter(|p| self.worker_pod_is_new(w, &c, p))
                    .count() as i32;
                ws.ready = d
                    .pods
                    .iter()
                    .filter(|p| p.ready && !p.terminating && self.worker_pod_is_new(w, &c, p))
                    .count() as i32;
                ws.old = d
                    .pods
                    .iter()
                    .filter(|p| p.image(&c) != Some(w.image.as_str()))
                    .count() as i32;
                ws.upgraded = self.worker_upgraded(w);
            }
            upgraded += i32::from(ws.upgraded);
            workers.push(ws);
        }
        self.st.worker_summary = Some(format!("{upgraded}/{}", self.spec.workers.len()));
        self.st.workers = workers;

        // Drain figures.
        if let DrainObs::Figures(f) = &self.obs.drain {
            self.st.legacy_payloads = Some(f.legacy_payloads as i64);
            self.st.legacy_payloads_without_expiry = Some(f.legacy_without_expiry as i64);
            self.st.active_jobs_without_b64 = Some(f.active_without_b64 as i64);
        }

        // Dual-write as the world shows it.
        let (on_i, on_m) = self.payload_values(true);
        let (off_i, off_m) = self.payload_values(false);
        let include_on = self
            .obs
            .config
            .as_ref()
            .is_some_and(|c| include_b64_is_on(c.include_b64.as_deref()));
        let never_restarted = self.obs.api.as_ref().is_some_and(|a| {
            !a.template_annotations
                .contains_key(PAYLOAD_CONFIG_ANNOTATION)
        });
        let (dw, dw_status, dw_reason) = if self.config_in_effect(&on_i, &on_m) {
            ("On", CondStatus::True, "InEffect")
        } else if self.config_in_effect(&off_i, &off_m) {
            ("Off", CondStatus::False, "InEffect")
        } else if never_restarted {
            // Before the operator's first API restart the ConfigMap is all there is to go by.
            match include_on {
                true => ("On", CondStatus::True, "ConfigMapOnly"),
                false => ("Off", CondStatus::False, "ConfigMapOnly"),
            }
        } else if include_on {
            ("TurningOn", CondStatus::Unknown, "ApiRolling")
        } else {
            ("TurningOff", CondStatus::Unknown, "ApiRolling")
        };
        self.st.dual_write = Some(dw.into());

        let conds = &mut self.st.conditions;
        let all_up = upgraded as usize == self.spec.workers.len();
        set_condition(
            conds,
            cond::WORKERS_UPGRADED,
            CondStatus::from_bool(all_up),
            if all_up {
                "AllPodsNew"
            } else {
                "OldPodsPresent"
            },
            self.st.worker_summary.clone().unwrap_or_default()
                + " worker Deployments on the target image",
            gen,
            now,
        );
        set_condition(
            conds,
            cond::DUAL_WRITE,
            dw_status,
            dw_reason,
            match dw_reason {
                "ConfigMapOnly" => format!(
                    "dual-write {dw} per the ConfigMap (the operator has not restarted the API yet)"
                ),
                _ => format!("dual-write {dw}"),
            },
            gen,
            now,
        );
        let drained = matches!(self.phase, Phase::AwaitingFinalize | Phase::Completed);
        let drain_msg = match self.st.legacy_payloads {
            Some(n) => format!("{n} legacy payloads in Redis"),
            None => "no Redis scan yet".into(),
        };
        set_condition(
            conds,
            cond::DRAINED,
            CondStatus::from_bool(drained),
            if drained {
                "Drained"
            } else if self.phase == Phase::Draining {
                "Draining"
            } else {
                "NotDraining"
            },
            drain_msg,
            gen,
            now,
        );
        let (safe, safe_reason, safe_msg) = match (&self.obs.drain, dw) {
            (DrainObs::Figures(f), _) if f.active_without_b64 > 0 => (
                CondStatus::False,
                "FileRefOnlyJobsActive",
                format!("{} active jobs have file_ref-only payloads; old workers could not run them", f.active_without_b64),
            ),
            (DrainObs::Figures(_), "On") if dw_reason == "InEffect" => {
                (CondStatus::True, "Safe", "dual-write on and no active job lacks file_bytes_b64".into())
            }
            (DrainObs::Figures(_), _) => (
                CondStatus::False,
                "DualWriteNotOn",
                "dual-write is not on in effect: a full rollback first turns it on and waits for file_ref-only jobs to finish".into(),
            ),
            (DrainObs::Unreachable(why), _) => (CondStatus::Unknown, "RedisUnreachable", why.clone()),
            (DrainObs::NotScanned, _) => (CondStatus::Unknown, "NotScanned", "no Redis scan yet".into()),
        };
        set_condition(
            conds,
            cond::ROLLBACK_SAFE,
            safe,
            safe_reason,
            safe_msg,
            gen,
            now,
        );

        // kstatus: Ready / Reconciling / Stalled.
        let message = self.st.message.clone().unwrap_or_default();
        let stalled = self
            .stalled
            .clone()
            .or_else(|| {
                self.st
                    .hold
                    .as_ref()
                    .map(|h| (hold_reason(&h.reason), h.message.clone()))
            })
            .or_else(|| (self.phase == Phase::RolledBack).then(|| ("RolledBack", message.clone())))
            .or_else(|| (self.phase == Phase::Failed).then(|| ("Failed", message.clone())));
        let paused = self.spec.paused && !self.phase.is_terminal();
        let reconciling = stalled.is_none() && !paused && !self.phase.is_terminal();
        let conds = &mut self.st.conditions;
        match &stalled {
            Some((reason, msg)) => set_condition(
                conds,
                cond::STALLED,
                CondStatus::True,
                reason,
                msg.clone(),
                gen,
                now,
            ),
            None => set_condition(
                conds,
                cond::STALLED,
                CondStatus::False,
                "NotStalled",
                "",
                gen,
                now,
            ),
        }
        let phase_reason = phase_reason(self.phase);
        if reconciling {
            set_condition(
                conds,
                cond::RECONCILING,
                CondStatus::True,
                phase_reason,
                message.clone(),
                gen,
                now,
            );
        } else {
            let reason = if paused { "Paused" } else { phase_reason };
            set_condition(
                conds,
                cond::RECONCILING,
                CondStatus::False,
                reason,
                message.clone(),
                gen,
                now,
            );
        }
        let ready = self.phase == Phase::Completed;
        let ready_reason = if ready {
            "Completed"
        } else if paused {
            "Paused"
        } else {
            phase_reason
        };
        set_condition(
            conds,
            cond::READY,
            CondStatus::from_bool(ready),
            ready_reason,
            message,
            gen,
            now,
        );
    }
}

fn hold_reason(reason: &str) -> &'static str {
    match reason {
        "ExternalModification" => "ExternalModification",
        "ProgressDeadlineExceeded" => "ProgressDeadlineExceeded",
        _ => "Held",
    }
}

fn phase_reason(p: Phase) -> &'static str {
    match p {
        Phase::Pending => "Pending",
        Phase::DualWriteOn => "DualWriteOn",
        Phase::UpgradingWorkers => "UpgradingWorkers",
        Phase::UpgradingApi => "UpgradingApi",
        Phase::Soaking => "Soaking",
        Phase::DualWriteOff => "DualWriteOff",
        Phase::Draining => "Draining",
        Phase::AwaitingFinalize => "AwaitingFinalize",
        Phase::Completed => "Completed",
        Phase::RollingBack => "RollingBack",
        Phase::RolledBack => "RolledBack",
        Phase::Failed => "Failed",
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
    }
}

fn ceil_second(t: Timestamp) -> Timestamp {
    if t.subsec_nanosecond() > 0 {
        Timestamp::from_second(t.as_second() + 1).unwrap_or(t)
    } else {
        t
    }
}

/// Current values of every field the rollout may write, by field id.
fn world_values(spec: &Spec, obs: &Observed) -> BTreeMap<String, Option<String>> {
    let mut m = BTreeMap::new();
    for d in obs.workers.values().chain(obs.api.as_ref()) {
        for (c, image) in &d.containers {
            m.insert(field_id::image(&d.name, c), Some(image.clone()));
        }
    }
    if let Some(api) = &obs.api {
        m.insert(
            field_id::restart_annotation(&api.name),
            api.template_annotations
                .get(PAYLOAD_CONFIG_ANNOTATION)
                .cloned(),
        );
    }
    if let Some(c) = &obs.config {
        let cm = &spec.api.config_map;
        m.insert(
            field_id::config_key(cm, KEY_INCLUDE_B64),
            c.include_b64.clone(),
        );
        m.insert(field_id::config_key(cm, KEY_MAX_BYTES), c.max_bytes.clone());
    }
    m
}

#[cfg(test)]
mod gitops_fixtures;
#[cfg(test)]
mod sim;
#[cfg(test)]
mod tests;
