//! One handler per forward phase. Each compares the world with what its phase wants and returns the
//! one [`Step`] to take; the handlers of phases that are already done pass within one call.

use std::time::Duration;

use k8s_openapi::{apimachinery::pkg::apis::meta::v1::Time, jiff::Timestamp};

use super::{
    field_id, payload_config_hash,
    preflight::{Targets, WorkerView},
    world::config_in_effect,
    Action, Planner, StallReason, Step, TransitionReason as Why, DRAIN_POLL, MAX_RECHECK_KEYS,
    NEXT_SCAN, POLL, RECHECK_POLL,
};
use crate::{
    crd::{DrainStrategy, Evidence, Finalize, Phase},
    duration::parse_duration,
    snapshot::{
        DeploymentObs, DrainFigures, DrainObs, Heartbeats, ScanKind, KEY_INCLUDE_B64, KEY_MAX_BYTES,
    },
};

impl<'a> Planner<'a> {
    pub(super) fn handle_phase(&mut self, t: &Targets<'a>) -> Step {
        match self.phase {
            Phase::Pending => Step::next(self.upgrade_start(), Why::Started, "targets found"),
            Phase::DualWriteOn => self.dual_write_on(t),
            Phase::UpgradingWorkers => self.upgrading_workers(t),
            Phase::UpgradingApi => self.upgrading_api(t),
            Phase::Soaking => self.soaking(),
            Phase::DualWriteOff => self.dual_write_off(t),
            Phase::Draining => self.draining(),
            Phase::AwaitingFinalize => Step::Wait {
                message: "drained; waiting for a promote request (finalize: Manual)".into(),
                requeue: POLL,
            },
            Phase::RollingBack => self.rolling_back(t),
            Phase::Completed | Phase::RolledBack | Phase::Failed => Step::Idle,
        }
    }

    /// Where the upgrade starts (and starts again): dual-write on first when it is enabled.
    pub(super) fn upgrade_start(&self) -> Phase {
        if self.spec.dual_write.enabled {
            Phase::DualWriteOn
        } else {
            Phase::UpgradingWorkers
        }
    }

    fn dual_write_on(&mut self, t: &Targets<'a>) -> Step {
        if !self.spec.dual_write.enabled {
            return Step::next(
                Phase::UpgradingWorkers,
                Why::DualWriteDisabled,
                "dual-write disabled in spec",
            );
        }
        if let Err(step) = self.ensure_payload_config(t, true) {
            return self.with_deadline(step);
        }
        self.st
            .dual_write_on_in_effect_at
            .get_or_insert(Time(self.stamp));
        Step::next(
            Phase::UpgradingWorkers,
            Why::DualWriteOnInEffect,
            "every API pod runs with dual-write on",
        )
    }

    fn upgrading_workers(&mut self, t: &Targets<'a>) -> Step {
        // Every worker Deployment's image is recorded at once (one status write); they are
        // written one Deployment after another.
        let wants: Vec<_> = t
            .workers
            .iter()
            .map(|w| {
                let field = field_id::image(&w.target.deployment, &w.container);
                (field, w.target.image.clone())
            })
            .collect();
        if let Err(step) = self.record_ahead(&wants) {
            return step;
        }
        for w in &t.workers {
            if let Err(step) = self.upgrade_worker(w) {
                return step;
            }
        }
        Step::next(
            Phase::UpgradingApi,
            Why::WorkersUpgraded,
            "every worker pod runs the target image",
        )
    }

    /// `Ok` once this worker Deployment runs the target image in every pod.
    fn upgrade_worker(&mut self, w: &WorkerView<'a>) -> Result<(), Step> {
        let (target, d, c) = (w.target, w.deployment, &w.container);
        let field = field_id::image(&target.deployment, c);
        if !self.ensure_fields(&[(field, target.image.clone())])? {
            return Err(Step::Act(Action::SetWorkerImage {
                deployment: target.deployment.clone(),
                container: c.clone(),
                image: target.image.clone(),
            }));
        }
        if self.worker_upgraded(target) {
            return Ok(());
        }
        if d.progress_deadline_exceeded {
            return Err(Step::Fail {
                message: format!(
                    "worker Deployment {} reports ProgressDeadlineExceeded",
                    d.name
                ),
            });
        }
        let new = self.new_worker_pods(target, d, c);
        // With heartbeat evidence, say when the heartbeats could not be read at all.
        let unread = match &self.obs.heartbeats {
            Heartbeats::Unavailable(why) if target.evidence == Evidence::Heartbeat => {
                format!("; heartbeats unreadable: {why}")
            }
            _ => String::new(),
        };
        let wait = Step::Wait {
            message: format!(
                "waiting for worker Deployment {}: {new}/{} pods new, {} old (terminating included){unread}",
                d.name,
                d.replicas,
                d.pods.len() - new
            ),
            requeue: POLL,
        };
        Err(self.with_deadline(wait))
    }

    fn upgrading_api(&mut self, t: &Targets<'a>) -> Step {
        let (Some(image), Some(c)) = (self.spec.api.image.clone(), t.api.container.clone()) else {
            return Step::next(Phase::Soaking, Why::NoApiImage, "no API image in spec");
        };
        let d = t.api.deployment;
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
        Step::next(
            Phase::Soaking,
            Why::ApiUpgraded,
            "every API pod runs the target image",
        )
    }

    fn soaking(&mut self) -> Step {
        if let Some(back) = self.workers_regressed() {
            return back;
        }
        if !self.spec.dual_write.enabled {
            return Step::next(
                Phase::DualWriteOff,
                Why::DualWriteDisabled,
                "no soak without dual-write",
            );
        }
        let soak = parse_duration(&self.spec.dual_write.soak)
            .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX));
        let elapsed = self.active_elapsed();
        if elapsed >= soak {
            let message = format!("soaked {}", self.spec.dual_write.soak);
            return Step::next(Phase::DualWriteOff, Why::SoakDone, message);
        }
        Step::Wait {
            message: format!("soaking with dual-write on: {elapsed}s of {soak}s"),
            requeue: Duration::from_secs((soak - elapsed).unsigned_abs()),
        }
    }

    fn dual_write_off(&mut self, t: &Targets<'a>) -> Step {
        // Invariant 1: never turn dual-write off while an old worker pod exists; go back and upgrade
        // (turning dual-write on again if it was already being turned off).
        if let Some(back) = self.workers_regressed() {
            return back;
        }
        if !self.all_workers_upgraded() {
            return self.with_deadline(Step::Wait {
                message: "waiting for the worker Deployments to settle".into(),
                requeue: POLL,
            });
        }
        if let Err(step) = self.ensure_payload_config(t, false) {
            return self.with_deadline(step);
        }
        self.st
            .dual_write_off_in_effect_at
            .get_or_insert(Time(self.stamp));
        Step::next(
            Phase::Draining,
            Why::DualWriteOffInEffect,
            "every API pod runs with dual-write off",
        )
    }

    /// After the workers were upgraded, one is not any more (a new target image, another writer, a
    /// scaled-up old ReplicaSet): go back to the phase that fixes it.
    fn workers_regressed(&self) -> Option<Step> {
        if !self.any_worker_regressed() {
            return None;
        }
        Some(Step::next(
            self.upgrade_start(),
            Why::WorkersNotUpgraded,
            "a worker pod not on the target image exists",
        ))
    }

    fn draining(&mut self) -> Step {
        let Some(off) = self.st.dual_write_off_in_effect_at.clone() else {
            return Step::next(
                Phase::DualWriteOff,
                Why::DualWriteOffUnknown,
                "dual-write-off time not recorded",
            );
        };
        let deadline =
            Timestamp::from_second(off.0.as_second() + self.ttl_seconds()).unwrap_or(off.0);
        self.st.drain_deadline = Some(Time(deadline));
        let f = match &self.obs.drain {
            DrainObs::Unreachable(why) => {
                return Step::Stall {
                    reason: StallReason::RedisUnreachable,
                    message: format!("Redis unreachable, drain on hold: {why}"),
                }
            }
            DrainObs::Figures(f) => f,
        };
        // Only a scan begun strictly after dual-write-off took effect proves anything.
        if f.legacy_scan == ScanKind::None || f.scanned_at <= off.0 {
            return Step::Wait {
                message: "waiting for a Redis scan begun after dual-write-off took effect".into(),
                // The in-effect time is rounded up to a second: the next scan proves it soon.
                requeue: NEXT_SCAN,
            };
        }
        self.drain_step(f, deadline)
    }

    /// Draining with a scan that counts: done (only on a full scan), stalled past the deadline, or
    /// wait. A re-check that found none left asks for the confirming full scan at once.
    fn drain_step(&self, f: &DrainFigures, deadline: Timestamp) -> Step {
        let next = if self.spec.finalize == Finalize::Manual {
            Phase::AwaitingFinalize
        } else {
            Phase::Completed
        };
        let past_deadline = self.now >= deadline;
        let may_finish = self.spec.drain.strategy == DrainStrategy::Observe || past_deadline;
        if f.legacy_payloads == 0 && may_finish {
            if f.legacy_scan == ScanKind::Recheck {
                return Step::Wait {
                    message: "a re-check found no legacy payload left; confirming with a full scan"
                        .into(),
                    requeue: NEXT_SCAN,
                };
            }
            let message = if past_deadline {
                "TTL elapsed since dual-write-off and a full Redis scan found no legacy payload"
            } else {
                "a full Redis scan found no legacy payload"
            };
            return Step::next(next, Why::Drained, message);
        }
        if past_deadline {
            return Step::Stall {
                reason: StallReason::LegacyPayloadsRemain,
                message: format!(
                    "{} legacy payloads remain after the TTL ({} without expiry)",
                    f.legacy_payloads, f.legacy_without_expiry
                ),
            };
        }
        let left = (deadline.as_second() - self.now.as_second())
            .max(1)
            .unsigned_abs();
        let requeue = match self.spec.drain.strategy {
            DrainStrategy::Observe => {
                poll_after(f.legacy_scan, f.legacy_payloads).min(Duration::from_secs(left))
            }
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

    /// Drive the ConfigMap and the API restart annotation to dual-write `on`; `Ok` once in effect.
    pub(super) fn ensure_payload_config(&mut self, t: &Targets<'a>, on: bool) -> Result<(), Step> {
        let cm = self.spec.api.config_map.clone();
        let api = self.spec.api.deployment.clone();
        let (include, max_bytes) = self.payload_values(on);
        let hash = payload_config_hash(&include, &max_bytes);
        // The ConfigMap keys and the restart annotation they imply are recorded together (one
        // status write before the two writes); each object's originals go on just before its
        // own first write, the ConfigMap's first.
        let wants = [
            (field_id::config_key(&cm, KEY_INCLUDE_B64), include.clone()),
            (field_id::config_key(&cm, KEY_MAX_BYTES), max_bytes.clone()),
            (field_id::restart_annotation(&api), hash.clone()),
        ];
        self.record_ahead(&wants)?;
        if !self.ensure_fields(&wants[..2])? {
            if let Some(wait) = api_restart_in_flight(t.api.deployment, &cm) {
                return Err(wait);
            }
            return Err(Step::Act(Action::SetConfig {
                config_map: cm,
                include_b64: include,
                max_bytes,
            }));
        }
        if !self.ensure_fields(&wants[2..])? {
            return Err(Step::Act(Action::SetApiRestartAnnotation {
                deployment: api,
                value: hash,
            }));
        }
        let d = t.api.deployment;
        if config_in_effect(t.config, d, &include, &max_bytes) {
            return Ok(());
        }
        let new = d
            .pods
            .iter()
            .filter(|p| p.payload_config() == Some(hash.as_str()))
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
}

/// While the API Deployment rolls out a template that carries a payload-config annotation, the
/// ConfigMap must not change: a pod started now would read the new values but carry the
/// annotation of the old ones, and later count as running with values it never read (a rollout
/// created again over a half-done restart reaches this). A rollout stuck past its progress
/// deadline starts no pods, so it does not hold the change.
/// "Rolling out" is judged from the pods, not from `observedGeneration`, which another writer's
/// edits outside the template keep moving: every pod (terminating ones included) carries the
/// template's annotation value, is ready, and there are as many as the Deployment wants.
fn api_restart_in_flight(api: &DeploymentObs, config_map: &str) -> Option<Step> {
    let value = api.template_payload_config()?;
    let settled = usize::try_from(api.replicas).is_ok_and(|n| api.pods.len() == n)
        && api
            .pods
            .iter()
            .all(|p| p.ready && !p.terminating && p.payload_config() == Some(value));
    let restarting = !settled && !api.progress_deadline_exceeded;
    restarting.then(|| Step::Wait {
        message: format!(
            "waiting for API Deployment {} to finish rolling out before changing ConfigMap {config_map}",
            api.name
        ),
        requeue: POLL,
    })
}

/// How soon to look again while a check's figure (`count`, read by `scan`) is above 0: soon when
/// the next read is a cheap re-check (the observer keeps up to [`MAX_RECHECK_KEYS`] found keys),
/// at the slower scan cadence when it must be a full scan again.
pub(super) fn poll_after(scan: ScanKind, count: u64) -> Duration {
    match scan {
        ScanKind::Recheck => RECHECK_POLL,
        ScanKind::Full if count <= MAX_RECHECK_KEYS => RECHECK_POLL,
        ScanKind::None | ScanKind::Full => DRAIN_POLL,
    }
}
