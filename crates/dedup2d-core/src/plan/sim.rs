//! A small simulated cluster for the planner's tests: Deployments whose controller replaces pods one
//! step at a time (old pods go terminating, then away), an API whose pods keep the payload config they
//! started with, Redis payloads with TTLs, and an operator that persists the planner's status and
//! applies its actions. It checks invariants 1–5 of docs/design.md §5 at every reconcile and panics
//! on a breach, and that every write finds the written field's original on its target object
//! (`dedup2d.io/originals`, so it survives the rollout's deletion).

use std::collections::BTreeMap;

use k8s_openapi::jiff::Timestamp;

use super::*;
use crate::{
    crd::{ApiTarget, Dedup2DRolloutSpec, DrainSpec, DualWriteSpec, FieldRecord, WorkerTarget},
    snapshot::{ConfigObs, DrainFigures, Originals, ScanKind},
};

pub const OLD: &str = "reg/dedup2d:2.4.0";
pub const NEW: &str = "reg/dedup2d:2.5.0";
pub const API_OLD: &str = "reg/api:1.0";
pub const API_NEW: &str = "reg/api:2.0";
pub const T0: i64 = 1_700_000_000;

pub fn spec(workers: usize) -> Dedup2DRolloutSpec {
    Dedup2DRolloutSpec {
        workers: (0..workers)
            .map(|i| WorkerTarget {
                deployment: format!("worker-{i}"),
                container: None,
                image: NEW.into(),
                evidence: Default::default(),
            })
            .collect(),
        api: ApiTarget {
            deployment: "api".into(),
            config_map: "cfg".into(),
            container: None,
            image: Some(API_NEW.into()),
        },
        dual_write: DualWriteSpec {
            enabled: true,
            max_bytes: 1000,
            soak: "60s".into(),
        },
        drain: DrainSpec {
            ttl_seconds: Some(300),
            ..Default::default()
        },
        finalize: Default::default(),
        progress_deadline_seconds: 600,
        on_failure: Default::default(),
        paused: false,
    }
}

#[derive(Debug, Clone)]
pub struct SimPod {
    pub name: String,
    pub image: String,
    pub annotation: Option<String>,
    pub ready: bool,
    pub terminating: bool,
    /// API pods: dual-write as read from the ConfigMap when the pod started.
    pub include_on: bool,
}

#[derive(Debug, Clone)]
pub struct SimDeployment {
    pub name: String,
    pub container: String,
    pub image: String,
    pub annotation: Option<String>,
    pub replicas: i32,
    pub generation: i64,
    pub observed_generation: i64,
    pub pods: Vec<SimPod>,
    /// New pods never become Ready (an unschedulable template).
    pub stuck: bool,
    /// The `dedup2d.io/originals` metadata annotation.
    pub originals: Originals,
}

impl SimDeployment {
    fn new(name: &str, container: &str, image: &str, replicas: i32, include_on: bool) -> Self {
        let pods = (0..replicas)
            .map(|i| SimPod {
                name: format!("{name}-orig-{i}"),
                image: image.into(),
                annotation: None,
                ready: true,
                terminating: false,
                include_on,
            })
            .collect();
        SimDeployment {
            name: name.into(),
            container: container.into(),
            image: image.into(),
            annotation: None,
            replicas,
            generation: 1,
            observed_generation: 1,
            pods,
            stuck: false,
            originals: Originals::new(),
        }
    }

    fn is_current(&self, p: &SimPod) -> bool {
        p.image == self.image && p.annotation == self.annotation
    }

    /// One step of the Deployment controller (maxSurge 1, maxUnavailable 0). Returns whether it did anything.
    pub fn controller_step(&mut self, next_id: &mut u64, include_on: bool) -> bool {
        if self.observed_generation < self.generation {
            self.observed_generation = self.generation;
            return true;
        }
        let live = self.pods.iter().filter(|p| !p.terminating).count() as i32;
        let current: Vec<usize> = (0..self.pods.len())
            .filter(|&i| !self.pods[i].terminating && self.is_current(&self.pods[i]))
            .collect();
        if let Some(&i) = current.iter().find(|&&i| !self.pods[i].ready) {
            if self.stuck {
                return false;
            }
            self.pods[i].ready = true;
            return true;
        }
        if (current.len() as i32) < self.replicas && live < self.replicas + 1 {
            *next_id += 1;
            self.pods.push(SimPod {
                name: format!("{}-{next_id}", self.name),
                image: self.image.clone(),
                annotation: self.annotation.clone(),
                ready: false,
                terminating: false,
                include_on,
            });
            return true;
        }
        let old = (0..self.pods.len())
            .find(|&i| !self.pods[i].terminating && !self.is_current(&self.pods[i]));
        if let Some(i) = old {
            self.pods[i].terminating = true;
            return true;
        }
        false
    }

    /// A terminating pod finishes shutting down.
    pub fn reap(&mut self) -> bool {
        match self.pods.iter().position(|p| p.terminating) {
            Some(i) => {
                self.pods.remove(i);
                true
            }
            None => false,
        }
    }

    pub fn observe(&self) -> DeploymentObs {
        let live: Vec<&SimPod> = self.pods.iter().filter(|p| !p.terminating).collect();
        let seen = self.observed_generation >= self.generation;
        let updated = if seen {
            live.iter().filter(|p| self.is_current(p)).count() as i32
        } else {
            0
        };
        let mut template_annotations = BTreeMap::new();
        if let Some(a) = &self.annotation {
            template_annotations.insert(PAYLOAD_CONFIG_ANNOTATION.to_string(), a.clone());
        }
        DeploymentObs {
            name: self.name.clone(),
            generation: self.generation,
            observed_generation: self.observed_generation,
            replicas: self.replicas,
            status_replicas: live.len() as i32,
            updated_replicas: updated,
            available_replicas: live.iter().filter(|p| p.ready).count() as i32,
            progress_deadline_exceeded: false,
            containers: vec![(self.container.clone(), self.image.clone())],
            template_annotations,
            reads_config_maps: vec!["cfg".into()],
            pods: self
                .pods
                .iter()
                .map(|p| PodObs {
                    name: p.name.clone(),
                    containers: vec![(self.container.clone(), p.image.clone())],
                    annotations: p
                        .annotation
                        .iter()
                        .map(|a| (PAYLOAD_CONFIG_ANNOTATION.to_string(), a.clone()))
                        .collect(),
                    ready: p.ready,
                    terminating: p.terminating,
                })
                .collect(),
            managers: BTreeMap::new(),
            originals: self.originals.clone(),
        }
    }
}

/// The simulated cluster plus the operator's persisted status.
#[derive(Debug, Clone)]
pub struct World {
    pub now: i64,
    pub spec: Dedup2DRolloutSpec,
    pub generation: i64,
    pub request: Option<String>,
    pub workers: Vec<SimDeployment>,
    pub api: SimDeployment,
    pub include: Option<String>,
    pub max_bytes: Option<String>,
    /// The ConfigMap's `dedup2d.io/originals` annotation.
    pub config_originals: Originals,
    /// Expiry times of legacy payloads in Redis (`None`: no expiry).
    pub legacy: Vec<Option<i64>>,
    /// Active jobs with file_ref-only payloads.
    pub active_file_ref_only: u64,
    pub redis_up: bool,
    pub next_id: u64,
    /// The operator's persisted status, and earlier persisted versions (for restart replays).
    pub status: Option<Status>,
    pub history: Vec<Status>,
    /// Since when dual-write has truly been off: ConfigMap off and every API pod started with it off.
    pub truly_off_since: Option<i64>,
    /// Values before the rollout touched anything, by field id.
    pub originals: BTreeMap<String, Option<String>>,
    pub actions: Vec<Action>,
    pub phases: Vec<Phase>,
    /// The next reconcile persists its status but the operator dies before acting.
    pub crash_before_action: bool,
    /// The operator's memory of the last full scans: indices into `legacy` found live, and the
    /// file_ref-only active jobs found (a restart forgets both).
    pub found_legacy: Option<Vec<usize>>,
    pub found_active: Option<u64>,
}

impl World {
    pub fn new(spec: Dedup2DRolloutSpec, replicas: i32) -> Self {
        let workers: Vec<SimDeployment> = spec
            .workers
            .iter()
            .map(|w| SimDeployment::new(&w.deployment, "worker", OLD, replicas, false))
            .collect();
        // Before the rollout the API writes legacy payloads (dual-write on, as the legacy system does).
        let api = SimDeployment::new("api", "api", API_OLD, replicas, true);
        let mut w = World {
            now: T0,
            spec,
            generation: 1,
            request: None,
            workers,
            api,
            include: Some("1".into()),
            max_bytes: None,
            config_originals: Originals::new(),
            legacy: vec![],
            active_file_ref_only: 0,
            redis_up: true,
            next_id: 0,
            status: None,
            history: vec![],
            truly_off_since: None,
            originals: BTreeMap::new(),
            actions: vec![],
            phases: vec![],
            crash_before_action: false,
            found_legacy: None,
            found_active: None,
        };
        w.originals = world_values(&w.spec, &w.observe());
        w
    }

    pub fn ttl(&self) -> i64 {
        self.spec.drain.ttl_seconds.unwrap_or(DEFAULT_TTL_SECONDS)
    }

    pub fn phase(&self) -> Phase {
        self.status
            .as_ref()
            .and_then(|s| s.phase)
            .unwrap_or_default()
    }

    /// The persisted status's record of `field`; a test asking for one expects it there.
    pub fn field_record(&self, field: &str) -> &FieldRecord {
        let st = self.status.as_ref().expect("a persisted status");
        st.fields
            .iter()
            .find(|r| r.field == field)
            .unwrap_or_else(|| panic!("no record of {field} in {:?}", st.fields))
    }

    pub fn observe(&self) -> Observed {
        let mut heartbeats = BTreeMap::new();
        for d in &self.workers {
            for p in d.pods.iter().filter(|p| p.image == NEW && p.ready) {
                heartbeats.insert(
                    p.name.clone(),
                    vec!["file_ref".to_string(), "file_bytes_b64".to_string()],
                );
            }
        }
        let drain = if self.redis_up {
            let live: Vec<_> = self
                .legacy
                .iter()
                .filter(|e| e.is_none_or(|e| e > self.now))
                .collect();
            DrainObs::Figures(DrainFigures {
                scanned_at: ts(self.now),
                legacy_scan: ScanKind::Full,
                legacy_payloads: live.len() as u64,
                legacy_without_expiry: live.iter().filter(|e| e.is_none()).count() as u64,
                active_scan: ScanKind::Full,
                active_without_b64: self.active_file_ref_only,
            })
        } else {
            DrainObs::Unreachable("connection refused".into())
        };
        Observed {
            generation: self.generation,
            request: self.request.clone(),
            workers: self
                .workers
                .iter()
                .map(|d| (d.name.clone(), d.observe()))
                .collect(),
            api: Some(self.api.observe()),
            config: Some(ConfigObs {
                include_b64: self.include.clone(),
                max_bytes: self.max_bytes.clone(),
                ttl_seconds: None,
                originals: self.config_originals.clone(),
            }),
            heartbeats: Heartbeats::Read(heartbeats),
            drain,
            conflicts: vec![],
            superseded_by: vec![],
        }
    }

    /// What the operator observes when it reads only what [`observation`] asks for: a re-check
    /// sees only the keys its last full scan found (a full scan when it has none), so a legacy
    /// payload written after that scan is invisible to it.
    pub fn observe_as_planned(&mut self) -> Observed {
        let plan = observation(&self.spec, self.status.as_ref());
        let mut obs = self.observe();
        if !plan.heartbeats {
            obs.heartbeats = Heartbeats::NotRead;
        }
        let DrainObs::Figures(f) = &mut obs.drain else {
            return obs;
        };
        let live = |e: &Option<i64>| e.is_none_or(|e| e > self.now);
        f.legacy_scan = match (plan.legacy, &self.found_legacy) {
            (ScanKind::Recheck, Some(found)) => {
                let still: Vec<usize> = found
                    .iter()
                    .copied()
                    .filter(|&i| live(&self.legacy[i]))
                    .collect();
                f.legacy_payloads = still.len() as u64;
                f.legacy_without_expiry =
                    still.iter().filter(|&&i| self.legacy[i].is_none()).count() as u64;
                self.found_legacy = Some(still);
                ScanKind::Recheck
            }
            (ScanKind::None, _) => {
                (f.legacy_payloads, f.legacy_without_expiry) = (0, 0);
                ScanKind::None
            }
            _ => {
                let found = (0..self.legacy.len()).filter(|&i| live(&self.legacy[i]));
                self.found_legacy = Some(found.collect());
                ScanKind::Full
            }
        };
        f.active_scan = match (plan.active, self.found_active) {
            (ScanKind::Recheck, Some(found)) => {
                f.active_without_b64 = found.min(self.active_file_ref_only);
                self.found_active = Some(f.active_without_b64);
                ScanKind::Recheck
            }
            (ScanKind::None, _) => {
                f.active_without_b64 = 0;
                ScanKind::None
            }
            _ => {
                self.found_active = Some(self.active_file_ref_only);
                ScanKind::Full
            }
        };
        obs
    }

    fn include_on(&self) -> bool {
        include_b64_is_on(self.include.as_deref())
    }

    /// Advance the controllers of one Deployment by a step (index `workers.len()` is the API).
    pub fn controller_step(&mut self, which: usize) -> bool {
        let on = self.include_on();
        let did = if which < self.workers.len() {
            self.workers[which].controller_step(&mut self.next_id, false)
        } else {
            self.api.controller_step(&mut self.next_id, on)
        };
        self.track_truth();
        did
    }

    pub fn reap(&mut self, which: usize) -> bool {
        let did = if which < self.workers.len() {
            self.workers[which].reap()
        } else {
            self.api.reap()
        };
        self.track_truth();
        did
    }

    /// An upload reaches some API pod: with dual-write on it leaves a legacy payload, else a
    /// file_ref-only active job.
    pub fn upload(&mut self, pick: usize) {
        let live: Vec<&SimPod> = self
            .api
            .pods
            .iter()
            .filter(|p| !p.terminating || pick.is_multiple_of(2))
            .collect();
        if live.is_empty() {
            return;
        }
        if live[pick % live.len()].include_on {
            self.legacy.push(Some(self.now + self.ttl()));
        } else {
            self.active_file_ref_only += 1;
        }
    }

    pub fn tick(&mut self, secs: i64) {
        self.now += secs;
        self.track_truth();
    }

    fn track_truth(&mut self) {
        let off = !self.include_on() && self.api.pods.iter().all(|p| !p.include_on);
        if !off {
            self.truly_off_since = None;
        } else if self.truly_off_since.is_none() {
            self.truly_off_since = Some(self.now);
        }
    }

    /// Run the planner once as the operator would, check invariants, persist, act.
    pub fn reconcile(&mut self) -> Decision {
        let obs = self.observe_as_planned();
        let before = self.status.clone();
        let d = plan(&self.spec, before.as_ref(), &obs, ts(self.now));
        self.check(&before, &d, &obs);
        // Idempotency: planning again from the new status on the same world answers the same.
        let again = plan(&self.spec, Some(&d.status), &obs, ts(self.now));
        assert_eq!(
            again.status.phase, d.status.phase,
            "re-planning moved the phase: {:?}",
            again.events
        );
        if d.action != Action::None {
            assert_eq!(again.action, d.action, "re-planning changed the action");
        }
        if let Some(s) = before {
            self.history.push(s);
        }
        self.status = Some(d.status.clone());
        self.phases.extend(d.transitions().map(|(_, to)| to));
        if self.crash_before_action {
            // The operator died after persisting the status and before writing; its memory of
            // what the last scans found is gone with it.
            self.crash_before_action = false;
            self.found_legacy = None;
            self.found_active = None;
        } else {
            self.apply(&d.action);
        }
        d
    }

    /// A reconcile that read an older status (informer cache lag). The adapter writes status with
    /// the read `resourceVersion` as precondition before any action, so such a decision is refused by
    /// the API server and has no effect; still, what the planner would do from the world must be safe.
    pub fn stale_read(&mut self, back: usize) {
        if self.history.is_empty() {
            return;
        }
        let i = self.history.len() - 1 - back % self.history.len();
        let obs = self.observe();
        let d = plan(&self.spec, Some(&self.history[i]), &obs, ts(self.now));
        self.check_world_safety(&d, &obs);
    }

    fn apply(&mut self, action: &Action) {
        match action {
            Action::None => return,
            Action::SetWorkerImage {
                deployment, image, ..
            } => {
                let d = self
                    .workers
                    .iter_mut()
                    .find(|d| &d.name == deployment)
                    .unwrap();
                if &d.image != image {
                    d.image = image.clone();
                    d.generation += 1;
                }
            }
            Action::SetApiImage { image, .. } => {
                if &self.api.image != image {
                    self.api.image = image.clone();
                    self.api.generation += 1;
                }
            }
            Action::SetConfig {
                include_b64,
                max_bytes,
                ..
            } => {
                self.include = Some(include_b64.clone());
                self.max_bytes = Some(max_bytes.clone());
            }
            Action::SetApiRestartAnnotation { value, .. } => {
                if self.api.annotation.as_ref() != Some(value) {
                    self.api.annotation = Some(value.clone());
                    self.api.generation += 1;
                }
            }
            // Metadata: no new generation, no pod restart.
            Action::SetOriginals { target, values } => match target {
                TargetObject::ConfigMap(_) => self.config_originals.clone_from(values),
                TargetObject::Deployment(name) => {
                    let d = self
                        .workers
                        .iter_mut()
                        .chain([&mut self.api])
                        .find(|d| &d.name == name)
                        .unwrap();
                    d.originals.clone_from(values);
                }
            },
        }
        self.actions.push(action.clone());
        self.track_truth();
    }

    /// The invariants of docs/design.md §5, checked on every decision.
    fn check(&self, before: &Option<Status>, d: &Decision, obs: &Observed) {
        let prev = before.clone().unwrap_or_default();
        // Invariant 5: a write happens only for a field already recorded (with that value) in the
        // persisted status, and the recorded previous value is the value before the rollout.
        for (field, value) in d.action.writes() {
            let rec = prev.fields.iter().find(|r| r.field == field);
            let rec =
                rec.unwrap_or_else(|| panic!("{:?} writes {field} before recording it", d.action));
            assert_eq!(
                rec.written, value,
                "{field}: the write differs from the recorded intent"
            );
            if let Some(orig) = self.originals.get(&field) {
                assert_eq!(
                    &rec.previous, orig,
                    "{field}: recorded previous value is not the original"
                );
            }
            // The target itself holds the original before it is written, so it survives the
            // rollout's deletion.
            assert_eq!(
                originals_on(obs, &field).and_then(|o| o.get(&field)),
                Some(&rec.previous),
                "{field}: written before its original was on the target"
            );
        }
        self.check_world_safety(d, obs);
        // Every transition Event is also recorded in status (newest last, bounded), so a crash
        // between the status write and the Event cannot lose it for good.
        let told: Vec<(Phase, Phase)> = d.transitions().collect();
        let kept = &d.status.transitions;
        assert!(kept.len() <= crate::crd::MAX_TRANSITIONS);
        let recorded: Vec<(Phase, Phase)> = kept[kept.len().saturating_sub(told.len())..]
            .iter()
            .map(|t| (t.from, t.to))
            .collect();
        assert_eq!(
            recorded, told,
            "transitions missing from status.transitions"
        );
        check_requests_act_once(&prev, d, obs);
        // Invariant 4: images are reverted only when no active job lacks file_bytes_b64.
        let rolling_back =
            d.status.phase == Some(Phase::RollingBack) || prev.phase == Some(Phase::RollingBack);
        if rolling_back
            && matches!(
                d.action,
                Action::SetWorkerImage { .. } | Action::SetApiImage { .. }
            )
        {
            assert_eq!(
                self.active_file_ref_only, 0,
                "image reverted with file_ref-only jobs active"
            );
            assert!(
                matches!(&obs.drain, DrainObs::Figures(f) if f.active_scan == ScanKind::Full),
                "image reverted on a re-check of the active jobs"
            );
            assert!(
                self.include_on() && self.api.pods.iter().all(|p| p.include_on),
                "reverted before dual-write on"
            );
        }
        // Invariant 2: an in-effect time is recorded only when the API has fully rolled with it.
        let newly = |a: &Option<Time>, b: &Option<Time>| a.is_none() && b.is_some();
        if newly(
            &prev.dual_write_off_in_effect_at,
            &d.status.dual_write_off_in_effect_at,
        ) {
            let api = obs.api.as_ref().unwrap();
            assert!(
                api.rollout_complete(),
                "dual-write-off recorded in effect before the API rolled"
            );
            assert!(
                self.api.pods.iter().all(|p| !p.include_on),
                "an API pod with dual-write on is alive"
            );
            assert!(!self.include_on());
            let since = self.truly_off_since.expect("truly off");
            assert!(
                d.status
                    .dual_write_off_in_effect_at
                    .as_ref()
                    .unwrap()
                    .0
                    .as_second()
                    >= since
            );
        }
        if newly(
            &prev.dual_write_on_in_effect_at,
            &d.status.dual_write_on_in_effect_at,
        ) {
            assert!(obs.api.as_ref().unwrap().rollout_complete());
            assert!(
                self.api.pods.iter().all(|p| p.include_on),
                "dual-write-on recorded before every API pod has it"
            );
        }
        // Invariant 3: Completed only after the TTL since dual-write was truly off, or (Observe) with
        // no legacy payload left; and never while one could still exist.
        if d.status.phase == Some(Phase::Completed) && prev.phase != Some(Phase::Completed) {
            let since = self
                .truly_off_since
                .expect("Completed while dual-write is not truly off");
            let live_legacy = self
                .legacy
                .iter()
                .filter(|e| e.is_none_or(|e| e > self.now))
                .count();
            assert_eq!(live_legacy, 0, "Completed with legacy payloads in Redis");
            if self.spec.drain.strategy == DrainStrategy::Ttl {
                assert!(
                    self.now >= since + self.ttl(),
                    "Completed before the TTL elapsed"
                );
            }
        }
        // Completed (or awaiting the promote) only after a full scan that found no legacy payload,
        // begun after dual-write-off was in effect; a re-check never finishes the drain.
        if d.transitions()
            .any(|(from, to)| from == Phase::Draining && to != Phase::RollingBack)
        {
            let off = d.status.dual_write_off_in_effect_at.as_ref().unwrap().0;
            let DrainObs::Figures(f) = &obs.drain else {
                panic!("drained without figures")
            };
            assert_eq!(f.legacy_scan, ScanKind::Full, "drained on a re-check");
            assert_eq!(f.legacy_payloads, 0);
            assert!(
                f.scanned_at > off,
                "drained on a scan from before dual-write-off"
            );
        }
        // Phases never skip a step the spec asks for.
        for (from, to) in d.transitions() {
            if let (Some(a), Some(b)) = (from.forward_rank(), to.forward_rank()) {
                for skipped in (a + 1)..b {
                    let ok = match skipped {
                        1 => !self.spec.dual_write.enabled,
                        3 => self.spec.api.image.is_none(),
                        7 => self.spec.finalize == Finalize::Auto,
                        _ => false,
                    };
                    assert!(ok, "{from} -> {to} skipped phase rank {skipped}");
                }
            }
        }
    }

    /// Invariant 1: dual-write is turned off only when every worker pod (terminating included) runs
    /// the target image and every heartbeat present lists file_ref.
    fn check_world_safety(&self, d: &Decision, obs: &Observed) {
        if let Action::SetConfig { include_b64, .. } = &d.action {
            if !include_b64_is_on(Some(include_b64)) {
                for (w, dep) in self.spec.workers.iter().zip(&self.workers) {
                    for p in &dep.pods {
                        assert_eq!(
                            p.image, w.image,
                            "dual-write turned off while pod {} runs {}",
                            p.name, p.image
                        );
                    }
                }
                if let Heartbeats::Read(hb) = &obs.heartbeats {
                    assert!(hb.values().all(|f| f.iter().any(|f| f == "file_ref")));
                }
            }
        }
    }

    /// The rollout is deleted and the same manifest applied again: its status is gone, the targets
    /// (and the originals annotations on them) stay. After a `Completed` rollout the values it left
    /// are the new originals.
    pub fn recreate(&mut self) {
        if self.phase() == Phase::Completed {
            self.originals = world_values(&self.spec, &self.observe());
        }
        self.status = None;
        self.history.clear();
        self.request = None;
        self.generation = 1;
    }

    /// Drive the world without faults until the rollout settles; returns the final phase.
    pub fn settle(&mut self, max_rounds: usize) -> Phase {
        for _ in 0..self.workers.len() {
            self.workers.iter_mut().for_each(|d| d.stuck = false);
        }
        self.api.stuck = false;
        self.redis_up = true;
        for round in 0..max_rounds {
            if self.spec.paused {
                self.spec.paused = false;
                self.generation += 1;
            }
            let st = self.status.clone().unwrap_or_default();
            if st.hold.is_some() {
                self.request = Some(format!("retry:{round}"));
            }
            if self.phase() == Phase::AwaitingFinalize {
                self.request = Some(format!("promote:{round}"));
            }
            let d = self.reconcile();
            if d.status
                .phase
                .is_some_and(super::super::crd::Phase::is_terminal)
                && d.action == Action::None
            {
                return d.status.phase.unwrap();
            }
            for i in 0..=self.workers.len() {
                while self.controller_step(i) {}
                self.reap(i); // terminating pods linger: one goes away per round
            }
            self.active_file_ref_only = 0;
            if d.action == Action::None && d.requeue_after.unwrap_or(POLL) > Duration::ZERO {
                let secs = d.requeue_after.unwrap_or(POLL).as_secs().clamp(1, 60) as i64;
                self.tick(secs);
            }
        }
        panic!(
            "rollout did not settle: {:?}",
            self.status.as_ref().map(|s| (&s.phase, &s.message))
        );
    }
}

/// Requests act once: a value handled before (in `lastRequest` or the history) leaves no Event and
/// the history as it was; a new value gets one Event and is appended, newest last, bounded.
fn check_requests_act_once(prev: &Status, d: &Decision, obs: &Observed) {
    let history = &d.status.request_history;
    assert!(history.len() <= crate::crd::MAX_REQUEST_HISTORY);
    let told = d
        .events
        .iter()
        .filter(|e| e.reason == EventReason::Request.to_string())
        .count();
    let Some(value) = &obs.request else {
        assert_eq!(told, 0, "a Request Event without a request");
        return;
    };
    let stored = super::requests::stored_form(value);
    let seen = prev
        .last_request
        .iter()
        .chain(&prev.request_history)
        .any(|r| r.request == stored || &r.request == value);
    if seen {
        assert_eq!(told, 0, "request {value:?} handled again");
        assert_eq!(
            history, &prev.request_history,
            "history changed by a repeat"
        );
    } else {
        assert_eq!(told, 1, "request {value:?} not told exactly once");
        assert_eq!(history.last().map(|r| &r.request), Some(&stored));
    }
}

/// The originals annotation of the object a field belongs to, as observed.
fn originals_on<'a>(obs: &'a Observed, field: &str) -> Option<&'a Originals> {
    match field_id::object(field)? {
        TargetObject::ConfigMap(_) => obs.config.as_ref().map(|c| &c.originals),
        TargetObject::Deployment(name) => obs
            .workers
            .get(&name)
            .or(obs.api.as_ref().filter(|a| a.name == name))
            .map(|d| &d.originals),
    }
}

pub fn ts(secs: i64) -> Timestamp {
    Timestamp::from_second(secs).unwrap()
}
