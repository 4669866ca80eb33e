//! Rolling back: quick (dual-write on and in effect, workers kept) or full (then the recorded
//! images restored, workers first, once no active job lacks `file_bytes_b64`, invariant 4); and
//! what a missed progress deadline does (`onFailure`).

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use super::{
    field_id, phases::poll_after, preflight::Targets, Action, EventKind, EventReason, HoldReason,
    Planner, StallReason, Step, TransitionReason, NEXT_SCAN, POLL,
};
use crate::{
    crd::{Hold, OnFailure, Phase, RollbackLevel, RollbackRecord},
    snapshot::{DeploymentObs, DrainObs, ScanKind},
};

/// One image a full rollback puts back: a target Deployment's resolved container.
struct Restore<'a> {
    deployment: &'a DeploymentObs,
    container: String,
    is_api: bool,
}

impl<'a> Planner<'a> {
    pub(super) fn start_rollback(
        &mut self,
        level: RollbackLevel,
        reason: TransitionReason,
        message: &str,
    ) {
        let from_phase = self
            .st
            .rollback
            .as_ref()
            .map_or(self.phase, |r| r.from_phase);
        self.st.hold = None;
        self.st.rollback = Some(RollbackRecord {
            level,
            reason: message.into(),
            from_phase,
            started_at: Time(self.stamp),
        });
        self.transition(Phase::RollingBack, reason, message);
    }

    /// A phase missed its progress deadline: roll back fully or hold, per `spec.onFailure`.
    pub(super) fn fail(&mut self, message: String) {
        match self.spec.on_failure {
            OnFailure::Rollback => self.start_rollback(
                RollbackLevel::Full,
                TransitionReason::ProgressDeadlineExceeded,
                &message,
            ),
            OnFailure::Pause => {
                self.event(
                    EventKind::Warning,
                    EventReason::ProgressDeadlineExceeded,
                    &message,
                );
                self.st.hold = Some(Hold {
                    reason: HoldReason::ProgressDeadlineExceeded.to_string(),
                    message,
                    since: Time(self.stamp),
                });
            }
        }
    }

    pub(super) fn rolling_back(&mut self, t: &Targets<'a>) -> Step {
        if let Err(step) = self.ensure_payload_config(t, true) {
            return step;
        }
        self.st
            .dual_write_on_in_effect_at
            .get_or_insert(Time(self.stamp));
        let level = self
            .st
            .rollback
            .as_ref()
            .map_or(RollbackLevel::Quick, |r| r.level);
        if level == RollbackLevel::Quick {
            return Step::next(
                Phase::RolledBack,
                TransitionReason::RolledBack,
                "dual-write on and in effect; workers kept",
            );
        }
        for r in restores(t) {
            if let Err(step) = self.restore_image(r) {
                return step;
            }
        }
        Step::next(
            Phase::RolledBack,
            TransitionReason::RolledBack,
            "recorded images restored, dual-write on",
        )
    }

    /// `Ok` once this container runs its recorded previous image again (or none was recorded).
    fn restore_image(&mut self, r: Restore<'a>) -> Result<(), Step> {
        let (d, container) = (r.deployment, r.container);
        let field = field_id::image(&d.name, &container);
        // A rollout created again after a deletion may have no record yet: the target's
        // originals annotation still says what to restore.
        let previous = match self.record(&field) {
            Some(r) => r.previous.clone(),
            None => self.original_on_target(&field).flatten(),
        };
        let Some(previous) = previous else {
            return Ok(());
        };
        if d.template_image(&container) != Some(previous.as_str()) {
            if let Some(step) = self.rollback_gate() {
                return Err(step);
            }
            if !self.ensure_fields(&[(field, previous.clone())])? {
                let deployment = d.name.clone();
                let image = previous;
                return Err(Step::Act(if r.is_api {
                    Action::SetApiImage {
                        deployment,
                        container,
                        image,
                    }
                } else {
                    Action::SetWorkerImage {
                        deployment,
                        container,
                        image,
                    }
                }));
            }
        }
        if !d.fully_rolled(|p| p.image(&container) == Some(previous.as_str())) {
            return Err(Step::Wait {
                message: format!("waiting for {} to run {previous} again", d.name),
                requeue: POLL,
            });
        }
        Ok(())
    }

    /// Invariant 4: images are reverted only when no active job's payload lacks `file_bytes_b64`,
    /// per a full scan begun after dual-write-on took effect.
    fn rollback_gate(&self) -> Option<Step> {
        let on = self.st.dual_write_on_in_effect_at.as_ref()?.0;
        let f = match &self.obs.drain {
            DrainObs::Unreachable(why) => {
                return Some(Step::Stall {
                    reason: StallReason::RedisUnreachable,
                    message: format!("Redis unreachable, full rollback on hold: {why}"),
                })
            }
            DrainObs::Figures(f) if f.active_scan != ScanKind::None && f.scanned_at > on => f,
            DrainObs::Figures(_) => {
                return Some(Step::Wait {
                    message: "waiting for a Redis scan of active jobs".into(),
                    requeue: NEXT_SCAN,
                })
            }
        };
        match (f.active_without_b64, f.active_scan) {
            (0, ScanKind::Full) => None,
            (0, _) => Some(Step::Wait {
                message:
                    "a re-check found no file_ref-only active job left; confirming with a full scan"
                        .into(),
                requeue: NEXT_SCAN,
            }),
            (n, scan) => Some(Step::Wait {
                message: format!(
                    "{n} active jobs have file_ref-only payloads; old workers could not run them"
                ),
                requeue: poll_after(scan, n),
            }),
        }
    }
}

/// What a full rollback restores, workers first, then the API when the spec sets its image.
fn restores<'a>(t: &Targets<'a>) -> Vec<Restore<'a>> {
    let workers = t.workers.iter().map(|w| Restore {
        deployment: w.deployment,
        container: w.container.clone(),
        is_api: false,
    });
    let api = t.api.container.clone().map(|container| Restore {
        deployment: t.api.deployment,
        container,
        is_api: true,
    });
    workers.chain(api).collect()
}
