//! Predicates on the observed world: which worker pods can read `file_ref` payloads, whether a
//! Deployment has fully rolled, whether a payload config is in effect. They answer `false` for a
//! target that does not exist, so the status summary can use them before preflight passes.

use super::{payload_config_hash, Planner};
use crate::{
    crd::{Evidence, WorkerTarget},
    snapshot::{
        ConfigObs, DeploymentObs, Heartbeats, PodObs, DEFAULT_TTL_SECONDS, FILE_REF_FORMAT,
    },
};

impl<'a> Planner<'a> {
    pub(super) fn worker_container(&self, w: &WorkerTarget) -> Option<(&'a DeploymentObs, String)> {
        let d = self.obs.workers.get(&w.deployment)?;
        let c = d.resolve_container(w.container.as_deref()).ok()?;
        Some((d, c))
    }

    /// Can this worker pod read `file_ref` payloads? (target image; a heartbeat, when present, lists
    /// file_ref; with `Heartbeat` evidence a running pod must have one.)
    pub(super) fn worker_pod_is_new(
        &self,
        w: &WorkerTarget,
        container: &str,
        pod: &PodObs,
    ) -> bool {
        if pod.image(container) != Some(w.image.as_str()) {
            return false;
        }
        let beat = match &self.obs.heartbeats {
            Heartbeats::Read(map) => map.get(&pod.name),
            Heartbeats::Unavailable(_) => None,
            // Not read in this phase: the image decides (the phases that gate on heartbeats read them).
            Heartbeats::NotRead => return true,
        };
        match beat {
            Some(formats) => formats.iter().any(|f| f == FILE_REF_FORMAT),
            None => w.evidence == Evidence::Image || pod.terminating,
        }
    }

    /// How many pods of this worker's Deployment can read `file_ref` payloads.
    pub(super) fn new_worker_pods(&self, w: &WorkerTarget, d: &DeploymentObs, c: &str) -> usize {
        d.pods
            .iter()
            .filter(|p| self.worker_pod_is_new(w, c, p))
            .count()
    }

    /// Is this worker on the target image and fully rolled: its template, every replica updated
    /// and available, and every pod (terminating ones included) new? Judged from the template and
    /// the pods rather than from `observedGeneration`, which moves with any edit outside the
    /// template (our originals annotation, another writer's `revisionHistoryLimit`) and would
    /// otherwise hold a rollout while such edits keep coming: old pods can only come from an old
    /// template, which is checked, and every existing pod is.
    pub(super) fn worker_upgraded(&self, w: &WorkerTarget) -> bool {
        let Some((d, c)) = self.worker_container(w) else {
            return false;
        };
        d.template_image(&c) == Some(w.image.as_str())
            && !d.progress_deadline_exceeded
            && d.updated_replicas == d.replicas
            && d.status_replicas == d.updated_replicas
            && d.available_replicas >= d.updated_replicas
            && d.pods.iter().all(|p| self.worker_pod_is_new(w, &c, p))
    }

    /// A worker upgraded before is not any more: its template left the target image, or a pod that
    /// cannot read file_ref exists. A lagging `observedGeneration` alone (another writer's edit
    /// outside the pod template, such as `revisionHistoryLimit`) is no regression: the phase that
    /// needs the Deployment settled waits for it.
    pub(super) fn any_worker_regressed(&self) -> bool {
        self.spec.workers.iter().any(|w| {
            let Some((d, c)) = self.worker_container(w) else {
                return true;
            };
            d.template_image(&c) != Some(w.image.as_str())
                || !d.pods.iter().all(|p| self.worker_pod_is_new(w, &c, p))
        })
    }

    /// Invariant 1's precondition for turning dual-write off.
    pub(super) fn all_workers_upgraded(&self) -> bool {
        self.spec.workers.iter().all(|w| self.worker_upgraded(w))
    }

    pub(super) fn api_image_rolled(&self) -> bool {
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

    /// The ConfigMap values (include, max bytes) for dual-write `on`.
    pub(super) fn payload_values(&self, on: bool) -> (String, String) {
        (
            (if on { "1" } else { "0" }).to_string(),
            self.spec.dual_write.max_bytes.to_string(),
        )
    }

    /// The API has fully rolled with the restart annotation of these values (invariant 2).
    pub(super) fn config_in_effect(&self, include: &str, max_bytes: &str) -> bool {
        match (&self.obs.config, &self.obs.api) {
            (Some(config), Some(api)) => config_in_effect(config, api, include, max_bytes),
            _ => false,
        }
    }

    /// The payload TTL: spec, else the ConfigMap, else 3600 (never below the dedup2d minimum of 60).
    pub(super) fn ttl_seconds(&self) -> i64 {
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
}

/// The ConfigMap holds these values and every API pod restarted with their annotation.
pub(super) fn config_in_effect(
    config: &ConfigObs,
    api: &DeploymentObs,
    include: &str,
    max_bytes: &str,
) -> bool {
    let hash = payload_config_hash(include, max_bytes);
    config.include_b64.as_deref() == Some(include)
        && config.max_bytes.as_deref() == Some(max_bytes)
        && api.template_payload_config() == Some(hash.as_str())
        && api.fully_rolled(|p| p.payload_config() == Some(hash.as_str()))
}
