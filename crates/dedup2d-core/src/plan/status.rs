//! The status summary the planner writes with every decision: phase, message, per-worker counts,
//! drain figures, `status.dualWrite`, and the conditions, each built by its own function in the
//! order they are listed in status.

use super::{
    field_id, DualWriteBasis, DualWriteState, HoldReason, Planner, StallReason, TargetObject,
};
use crate::{
    conditions::{self as cond, set_condition, CondStatus},
    crd::{Phase, WorkerStatus},
    snapshot::{include_b64_is_on, DrainObs, ScanKind, KEY_INCLUDE_B64},
};

/// One condition's value.
struct Cond {
    status: CondStatus,
    reason: &'static str,
    message: String,
}

impl Cond {
    fn new(status: CondStatus, reason: &'static str, message: impl Into<String>) -> Cond {
        Cond {
            status,
            reason,
            message: message.into(),
        }
    }
}

/// Dual-write as the world shows it, and what that is based on.
type DualWrite = (DualWriteState, DualWriteBasis);

impl Planner<'_> {
    /// A finished rollout whose Deployments a newer rollout targets.
    pub(super) fn superseded(&self) -> bool {
        self.phase.is_terminal() && !self.obs.superseded_by.is_empty()
    }

    pub(super) fn terminal_message(&self) -> String {
        if self.superseded() {
            return format!(
                "{}; superseded by {}: see that rollout for the fleet's state",
                self.phase,
                self.obs.superseded_by.join(", ")
            );
        }
        match self.phase {
            Phase::Completed => {
                "completed: dual-write off and drained; the system is file_ref-only".into()
            }
            Phase::RolledBack => format!(
                "rolled back ({})",
                self.st
                    .rollback
                    .as_ref()
                    .map_or("rollback", |r| r.reason.as_str())
            ),
            Phase::Failed => "failed".into(),
            p => p.to_string(),
        }
    }

    /// Fill in phase, message, counts and conditions.
    pub(super) fn finish(&mut self) {
        self.st.phase = Some(self.phase);
        self.st.observed_generation = Some(self.obs.generation);
        self.st.message = Some(std::mem::take(&mut self.message));
        if self.superseded() {
            // The counts would describe the newer rollout's work as this one's.
            self.st.workers.clear();
            self.st.worker_summary = None;
        } else {
            self.summarize_workers();
        }
        // A check not read this time keeps its last recorded figures.
        if let DrainObs::Figures(f) = &self.obs.drain {
            if f.legacy_scan != ScanKind::None {
                self.st.legacy_payloads = Some(saturating_i64(f.legacy_payloads));
                self.st.legacy_payloads_without_expiry =
                    Some(saturating_i64(f.legacy_without_expiry));
            }
            if f.active_scan != ScanKind::None {
                self.st.active_jobs_without_b64 = Some(saturating_i64(f.active_without_b64));
            }
        }
        let dual_write = self.dual_write();
        self.st.dual_write = Some(dual_write.0.to_string());
        let conditions = [
            (cond::WORKERS_UPGRADED, self.workers_upgraded_condition()),
            (cond::DUAL_WRITE, dual_write_condition(dual_write)),
            (cond::DRAINED, self.drained_condition()),
            (
                cond::ROLLBACK_SAFE,
                self.rollback_safe_condition(dual_write),
            ),
            (cond::STALLED, self.stalled_condition()),
            (cond::RECONCILING, self.reconciling_condition()),
            (cond::READY, self.ready_condition()),
        ];
        let superseded = self.superseded_condition();
        for (type_, c) in conditions.into_iter().chain(superseded) {
            set_condition(
                &mut self.st.conditions,
                type_,
                c.status,
                c.reason,
                c.message,
                self.obs.generation,
                self.stamp,
            );
        }
    }

    /// Per-worker pod counts and `status.workerSummary`.
    fn summarize_workers(&mut self) {
        let workers: Vec<WorkerStatus> = self
            .spec
            .workers
            .iter()
            .map(|w| {
                let mut ws = WorkerStatus {
                    deployment: w.deployment.clone(),
                    ..Default::default()
                };
                if let Some((d, c)) = self.worker_container(w) {
                    let count = |n: usize| i32::try_from(n).unwrap_or(i32::MAX);
                    ws.pods = count(d.pods.len());
                    ws.updated = count(self.new_worker_pods(w, d, &c));
                    ws.ready = count(
                        d.pods
                            .iter()
                            .filter(|p| {
                                p.ready && !p.terminating && self.worker_pod_is_new(w, &c, p)
                            })
                            .count(),
                    );
                    ws.old = count(
                        d.pods
                            .iter()
                            .filter(|p| p.image(&c) != Some(w.image.as_str()))
                            .count(),
                    );
                    ws.upgraded = self.worker_upgraded(w);
                }
                ws
            })
            .collect();
        let upgraded = workers.iter().filter(|w| w.upgraded).count();
        self.st.worker_summary = Some(format!("{upgraded}/{}", self.spec.workers.len()));
        self.st.workers = workers;
    }

    fn dual_write(&self) -> DualWrite {
        if let Some(on) = self.api_restart_ahead() {
            let state = match on {
                true => DualWriteState::TurningOn,
                false => DualWriteState::TurningOff,
            };
            return (state, DualWriteBasis::ApiRolling);
        }
        let (on_i, on_m) = self.payload_values(true);
        let (off_i, off_m) = self.payload_values(false);
        let include_on = self
            .obs
            .config
            .as_ref()
            .is_some_and(|c| include_b64_is_on(c.include_b64.as_deref()));
        let never_restarted = self.obs.api.as_ref().is_some_and(|a| {
            !a.template_annotations
                .contains_key(crate::crd::PAYLOAD_CONFIG_ANNOTATION)
        });
        if self.config_in_effect(&on_i, &on_m) {
            (DualWriteState::On, DualWriteBasis::InEffect)
        } else if self.config_in_effect(&off_i, &off_m) {
            (DualWriteState::Off, DualWriteBasis::InEffect)
        } else if never_restarted {
            // Before the operator's first API restart the ConfigMap is all there is to go by.
            match include_on {
                true => (DualWriteState::On, DualWriteBasis::ConfigMapOnly),
                false => (DualWriteState::Off, DualWriteBasis::ConfigMapOnly),
            }
        } else if include_on {
            (DualWriteState::TurningOn, DualWriteBasis::ApiRolling)
        } else {
            (DualWriteState::TurningOff, DualWriteBasis::ApiRolling)
        }
    }

    /// An API restart the rollout has recorded and is about to make: a record of an API
    /// Deployment field or a ConfigMap key that is not in place yet, in an unfinished phase that is
    /// not held. `Some(on)`: dual-write `on` once it is done. The status written with the record
    /// already says the API is rolling (and so that a quick rollback is not safe), rather than a
    /// second write once the restart is seen.
    fn api_restart_ahead(&self) -> Option<bool> {
        if self.phase.is_terminal() || self.st.hold.is_some() {
            return None;
        }
        let api = TargetObject::Deployment(self.spec.api.deployment.clone());
        let cm = TargetObject::ConfigMap(self.spec.api.config_map.clone());
        let ahead = self.st.fields.iter().any(|r| {
            let target = field_id::object(&r.field);
            (target.as_ref() == Some(&api) || target.as_ref() == Some(&cm))
                && !r.confirmed
                && !self.holds(&r.field, &r.written)
        });
        let include = field_id::config_key(&self.spec.api.config_map, KEY_INCLUDE_B64);
        let recorded = self.record(&include).map(|r| r.written.as_str());
        let current = self
            .obs
            .config
            .as_ref()
            .and_then(|c| c.include_b64.as_deref());
        ahead.then(|| include_b64_is_on(recorded.or(current)))
    }

    fn workers_upgraded_condition(&self) -> Cond {
        let all_up = self.st.workers.iter().all(|w| w.upgraded);
        Cond::new(
            CondStatus::from_bool(all_up),
            if all_up {
                "AllPodsNew"
            } else {
                "OldPodsPresent"
            },
            self.st.worker_summary.clone().unwrap_or_default()
                + " worker Deployments on the target image",
        )
    }

    fn drained_condition(&self) -> Cond {
        let drained = matches!(self.phase, Phase::AwaitingFinalize | Phase::Completed);
        let reason = if drained {
            "Drained"
        } else if self.phase == Phase::Draining {
            "Draining"
        } else {
            "NotDraining"
        };
        let message = match self.st.legacy_payloads {
            Some(n) => format!("{n} legacy payloads in Redis"),
            None => "no Redis scan yet".into(),
        };
        Cond::new(CondStatus::from_bool(drained), reason, message)
    }

    /// From the last recorded active-job figure (this observation's, when it read one); `True`
    /// only when a full scan made it.
    fn rollback_safe_condition(&self, (state, basis): DualWrite) -> Cond {
        let on_in_effect = state == DualWriteState::On && basis == DualWriteBasis::InEffect;
        if let DrainObs::Unreachable(why) = &self.obs.drain {
            return Cond::new(
                CondStatus::Unknown,
                StallReason::RedisUnreachable.as_str(),
                why.clone(),
            );
        }
        let rechecked =
            matches!(&self.obs.drain, DrainObs::Figures(f) if f.active_scan == ScanKind::Recheck);
        match self.st.active_jobs_without_b64 {
            Some(n) if n > 0 => Cond::new(
                CondStatus::False,
                "FileRefOnlyJobsActive",
                format!("{n} active jobs have file_ref-only payloads; old workers could not run them"),
            ),
            None => Cond::new(
                CondStatus::Unknown,
                "NotScanned",
                "no Redis scan of the active jobs yet",
            ),
            Some(_) if rechecked => Cond::new(
                CondStatus::False,
                "Confirming",
                "a re-check found no file_ref-only active job left; a full scan confirms it next",
            ),
            Some(_) if on_in_effect => Cond::new(
                CondStatus::True,
                "Safe",
                "dual-write on and no active job lacks file_bytes_b64",
            ),
            Some(_) => Cond::new(
                CondStatus::False,
                "DualWriteNotOn",
                "dual-write is not on in effect: a full rollback first turns it on and waits for file_ref-only jobs to finish",
            ),
        }
    }

    /// `Superseded`: present once a newer rollout re-targets this finished one's Deployments (and
    /// `False` again should that one go away).
    fn superseded_condition(&self) -> Option<(&'static str, Cond)> {
        let c = if self.superseded() {
            Cond::new(
                CondStatus::True,
                "NewerRollout",
                format!("superseded by {}", self.obs.superseded_by.join(", ")),
            )
        } else if cond::get_condition(&self.st.conditions, cond::SUPERSEDED).is_some() {
            Cond::new(CondStatus::False, "NotSuperseded", "")
        } else {
            return None;
        };
        Some((cond::SUPERSEDED, c))
    }

    /// Why the rollout is stalled: this call's stall, a hold, or a terminal failure (kstatus). A
    /// superseded rollout is not: it is over, and the newer one carries the fleet on.
    fn stalled_because(&self) -> Option<(StallReason, String)> {
        if self.superseded() {
            return None;
        }
        let message = || self.st.message.clone().unwrap_or_default();
        self.stalled
            .clone()
            .or_else(|| {
                self.st
                    .hold
                    .as_ref()
                    .map(|h| (HoldReason::stall_reason(&h.reason), h.message.clone()))
            })
            .or_else(|| {
                (self.phase == Phase::RolledBack).then(|| (StallReason::RolledBack, message()))
            })
            .or_else(|| (self.phase == Phase::Failed).then(|| (StallReason::Failed, message())))
    }

    fn paused(&self) -> bool {
        self.spec.paused && !self.phase.is_terminal()
    }

    fn stalled_condition(&self) -> Cond {
        match self.stalled_because() {
            Some((reason, message)) => Cond::new(CondStatus::True, reason.as_str(), message),
            None => Cond::new(CondStatus::False, "NotStalled", ""),
        }
    }

    fn reconciling_condition(&self) -> Cond {
        let reconciling =
            self.stalled_because().is_none() && !self.paused() && !self.phase.is_terminal();
        let reason = if !reconciling && self.paused() {
            "Paused"
        } else {
            self.phase.as_str()
        };
        let message = self.st.message.clone().unwrap_or_default();
        Cond::new(CondStatus::from_bool(reconciling), reason, message)
    }

    /// `True` when Completed, or when superseded (over, whatever it ended in: the newer rollout
    /// carries the fleet on, so kstatus users such as `helm --wait` do not wait on this one).
    fn ready_condition(&self) -> Cond {
        let ready = self.phase == Phase::Completed || self.superseded();
        let reason = if self.superseded() {
            "Superseded"
        } else if ready {
            "Completed"
        } else if self.paused() {
            "Paused"
        } else {
            self.phase.as_str()
        };
        let message = self.st.message.clone().unwrap_or_default();
        Cond::new(CondStatus::from_bool(ready), reason, message)
    }
}

fn dual_write_condition((state, basis): DualWrite) -> Cond {
    let (status, message) = match (state, basis) {
        (_, DualWriteBasis::ConfigMapOnly) => (
            CondStatus::from_bool(state == DualWriteState::On),
            format!(
                "dual-write {state} per the ConfigMap (the operator has not restarted the API yet)"
            ),
        ),
        (DualWriteState::On, _) => (CondStatus::True, format!("dual-write {state}")),
        (DualWriteState::Off, _) => (CondStatus::False, format!("dual-write {state}")),
        (DualWriteState::TurningOn | DualWriteState::TurningOff, _) => {
            (CondStatus::Unknown, format!("dual-write {state}"))
        }
    };
    Cond::new(status, basis.as_str(), message)
}

fn saturating_i64(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}
