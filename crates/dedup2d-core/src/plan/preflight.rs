//! The checks before any step: what only the cluster can tell (missing targets, a container that
//! cannot be resolved, an API that does not read the ConfigMap). A pass yields [`Targets`], the
//! resolved view the phase handlers work on.

use super::{Planner, StallReason};
use crate::{
    crd::WorkerTarget,
    duration::parse_duration,
    snapshot::{ConfigObs, DeploymentObs},
};

/// One worker target with its Deployment and resolved container.
pub(super) struct WorkerView<'a> {
    pub(super) target: &'a WorkerTarget,
    pub(super) deployment: &'a DeploymentObs,
    pub(super) container: String,
}

/// The API Deployment and, when the spec sets an API image, its resolved container.
pub(super) struct ApiView<'a> {
    pub(super) deployment: &'a DeploymentObs,
    pub(super) container: Option<String>,
}

/// The targets as preflight found them: every Deployment exists, every container resolved, the API
/// reads the ConfigMap, the spec parses.
pub(super) struct Targets<'a> {
    pub(super) workers: Vec<WorkerView<'a>>,
    pub(super) api: ApiView<'a>,
    pub(super) config: &'a ConfigObs,
}

/// Why preflight did not pass.
pub(super) type Blocked = (StallReason, String);

impl<'a> Planner<'a> {
    /// The validated targets, or why the rollout cannot take a step.
    pub(super) fn preflight(&self) -> Result<Targets<'a>, Blocked> {
        if !self.obs.conflicts.is_empty() {
            return Err((
                StallReason::ConflictingRollout,
                format!(
                    "an older rollout targets the same Deployments: {}",
                    self.obs.conflicts.join(", ")
                ),
            ));
        }
        let workers = self.worker_views()?;
        let api = self.api_view()?;
        let config = self.config_view(api.deployment)?;
        if let Err(e) = parse_duration(&self.spec.dual_write.soak) {
            return Err((StallReason::InvalidSpec, e.to_string()));
        }
        Ok(Targets {
            workers,
            api,
            config,
        })
    }

    fn worker_views(&self) -> Result<Vec<WorkerView<'a>>, Blocked> {
        let obs = self.obs;
        self.spec
            .workers
            .iter()
            .map(|w| {
                let Some(d) = obs.workers.get(&w.deployment) else {
                    return Err((
                        StallReason::TargetMissing,
                        format!("worker Deployment {} not found", w.deployment),
                    ));
                };
                let container = d
                    .resolve_container(w.container.as_deref())
                    .map_err(|e| (StallReason::ContainerNotFound, e.to_string()))?;
                Ok(WorkerView {
                    target: w,
                    deployment: d,
                    container,
                })
            })
            .collect()
    }

    fn api_view(&self) -> Result<ApiView<'a>, Blocked> {
        let api = &self.spec.api;
        let Some(d) = self.obs.api.as_ref() else {
            return Err((
                StallReason::TargetMissing,
                format!("API Deployment {} not found", api.deployment),
            ));
        };
        let container = match api.image {
            Some(_) => Some(
                d.resolve_container(api.container.as_deref())
                    .map_err(|e| (StallReason::ContainerNotFound, e.to_string()))?,
            ),
            None => None,
        };
        Ok(ApiView {
            deployment: d,
            container,
        })
    }

    /// The ConfigMap, which the API Deployment must read (else changing it has no effect).
    fn config_view(&self, api_deployment: &DeploymentObs) -> Result<&'a ConfigObs, Blocked> {
        let api = &self.spec.api;
        let Some(config) = self.obs.config.as_ref() else {
            return Err((
                StallReason::TargetMissing,
                format!("ConfigMap {} not found", api.config_map),
            ));
        };
        if !api_deployment
            .reads_config_maps
            .iter()
            .any(|c| c == &api.config_map)
        {
            return Err((
                StallReason::ApiDoesNotReadConfigMap,
                format!(
                    "API Deployment {} does not read ConfigMap {} (envFrom or env valueFrom), so changing it would have no effect",
                    api.deployment, api.config_map
                ),
            ));
        }
        Ok(config)
    }
}
