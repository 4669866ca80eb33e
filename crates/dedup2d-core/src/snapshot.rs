//! The observed world the planner decides from: plain data the observer fills in from the Deployments,
//! their Pods (terminating ones included), the ConfigMap, worker heartbeats and the Redis drain scan.
//!
//! Nothing here does IO. The predicates on these types (rollout completeness, which container a target
//! means) are part of the planner's logic and tested with it.

use std::collections::BTreeMap;

use k8s_openapi::jiff::Timestamp;

use crate::crd::PAYLOAD_CONFIG_ANNOTATION;

/// ConfigMap key: dual-write on/off.
pub const KEY_INCLUDE_B64: &str = "DEDUP2D_JOB_PAYLOAD_INCLUDE_BYTES_B64";
/// ConfigMap key: largest file that also travels as `file_bytes_b64`.
pub const KEY_MAX_BYTES: &str = "DEDUP2D_JOB_PAYLOAD_BYTES_B64_MAX_BYTES";
/// ConfigMap key: job/payload TTL in seconds.
pub const KEY_TTL_SECONDS: &str = "DEDUP2D_ASYNC_TTL_SECONDS";
/// Default payload TTL when neither the spec nor the ConfigMap says.
pub const DEFAULT_TTL_SECONDS: i64 = 3600;
/// The capability a worker heartbeat must list to count as able to read `file_ref` payloads.
pub(crate) const FILE_REF_FORMAT: &str = "file_ref";

/// Everything observed for one reconcile of one rollout.
#[derive(Debug, Clone, PartialEq)]
pub struct Observed {
    /// `metadata.generation` of the rollout.
    pub generation: i64,
    /// The `dedup2d.io/request` annotation, if any.
    pub request: Option<String>,
    /// Worker Deployments by name; a name missing here does not exist.
    pub workers: BTreeMap<String, DeploymentObs>,
    /// The API Deployment, `None` when it does not exist.
    pub api: Option<DeploymentObs>,
    /// The ConfigMap, `None` when it does not exist.
    pub config: Option<ConfigObs>,
    /// Worker capability heartbeats by pod name (`{prefix}:worker:{hostname}`).
    pub heartbeats: Heartbeats,
    /// The Redis drain figures.
    pub drain: DrainObs,
    /// Older rollouts that target one of this rollout's Deployments (names), for `ConflictingRollout`.
    pub conflicts: Vec<String>,
    /// Newer rollouts that target one of this rollout's Deployments (names), for `Superseded`.
    pub superseded_by: Vec<String>,
}

/// Values found before a rollout's first write, by field id (`None`: the field was absent), as
/// recorded on a target object's `dedup2d.io/originals` annotation.
pub type Originals = BTreeMap<String, Option<String>>;

/// The `dedup2d.io/originals` annotation's entries; a value that is not such a JSON object counts
/// as none (the next write restates the entries the rollout knows).
pub fn parse_originals(annotation: Option<&str>) -> Originals {
    annotation
        .and_then(|v| serde_json::from_str(v).ok())
        .unwrap_or_default()
}

/// One Deployment as the rollout-status test and the planner need it.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct DeploymentObs {
    /// The Deployment's name.
    pub name: String,
    /// `metadata.generation`.
    pub generation: i64,
    /// `status.observedGeneration`.
    pub observed_generation: i64,
    /// `spec.replicas` (defaulted to 1 by the observer when absent).
    pub replicas: i32,
    /// `status.replicas` (pods of all ReplicaSets, terminating ones not counted).
    pub status_replicas: i32,
    /// `status.updatedReplicas`.
    pub updated_replicas: i32,
    /// `status.availableReplicas`.
    pub available_replicas: i32,
    /// The Progressing condition's reason is `ProgressDeadlineExceeded`.
    pub progress_deadline_exceeded: bool,
    /// Pod template containers: (name, image), in order.
    pub containers: Vec<(String, String)>,
    /// Pod template annotations.
    pub template_annotations: BTreeMap<String, String>,
    /// ConfigMaps the pod template reads (via `envFrom.configMapRef` or `env[].valueFrom.configMapKeyRef`).
    pub reads_config_maps: Vec<String>,
    /// Every pod matching the Deployment's selector, terminating ones included.
    pub pods: Vec<PodObs>,
    /// Field managers of fields the operator writes, by field id (see `FieldRecord::field`), when known.
    pub managers: BTreeMap<String, String>,
    /// The `dedup2d.io/originals` annotation of the Deployment's metadata.
    pub originals: Originals,
}

/// One pod of a Deployment.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct PodObs {
    /// The pod's name (its hostname, which names its heartbeat).
    pub name: String,
    /// Containers: (name, image) from the pod spec.
    pub containers: Vec<(String, String)>,
    /// Pod annotations (copied from the template it was created from).
    pub annotations: BTreeMap<String, String>,
    /// The Ready condition is True.
    pub ready: bool,
    /// `metadata.deletionTimestamp` is set; the pod may still be running and consuming jobs.
    pub terminating: bool,
}

impl PodObs {
    /// The image of `container` in this pod's spec.
    pub fn image(&self, container: &str) -> Option<&str> {
        self.containers
            .iter()
            .find(|(n, _)| n == container)
            .map(|(_, i)| i.as_str())
    }

    /// The payload-config annotation the pod was created with: the ConfigMap values it started on.
    pub fn payload_config(&self) -> Option<&str> {
        self.annotations
            .get(PAYLOAD_CONFIG_ANNOTATION)
            .map(String::as_str)
    }
}

/// Why a target's container cannot be resolved.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum ContainerError {
    #[error("Deployment {deployment} has no container named {container}")]
    /// The Deployment has no container of that name.
    NotFound {
        /// The Deployment.
        deployment: String,
        /// The container asked for.
        container: String,
    },
    #[error("Deployment {deployment} has {count} containers; name one in the rollout's `container` field")]
    /// No container named and the pod template has more than one.
    Ambiguous {
        /// The Deployment.
        deployment: String,
        /// How many containers it has.
        count: usize,
    },
}

impl DeploymentObs {
    /// The container a target means: the named one, or the only one.
    pub(crate) fn resolve_container(&self, wanted: Option<&str>) -> Result<String, ContainerError> {
        match wanted {
            Some(name) => self
                .containers
                .iter()
                .find(|(n, _)| n == name)
                .map(|(n, _)| n.clone())
                .ok_or_else(|| ContainerError::NotFound {
                    deployment: self.name.clone(),
                    container: name.into(),
                }),
            None if self.containers.len() == 1 => Ok(self.containers[0].0.clone()),
            None => Err(ContainerError::Ambiguous {
                deployment: self.name.clone(),
                count: self.containers.len(),
            }),
        }
    }

    /// The payload-config annotation of the pod template: what new pods are created with.
    pub fn template_payload_config(&self) -> Option<&str> {
        self.template_annotations
            .get(PAYLOAD_CONFIG_ANNOTATION)
            .map(String::as_str)
    }

    /// The template image of a container.
    pub fn template_image(&self, container: &str) -> Option<&str> {
        self.containers
            .iter()
            .find(|(n, _)| n == container)
            .map(|(_, i)| i.as_str())
    }

    /// `kubectl rollout status`'s test: the controller saw the latest spec, every replica is updated,
    /// no replica of an older ReplicaSet is counted, and the updated ones are available. The Progressing
    /// condition alone is stale right after a patch, so it is not used.
    pub(crate) fn rollout_complete(&self) -> bool {
        self.observed_generation >= self.generation
            && !self.progress_deadline_exceeded
            && self.updated_replicas == self.replicas
            && self.status_replicas == self.updated_replicas
            && self.available_replicas >= self.updated_replicas
    }

    /// Fully rolled *and* every pod that exists (terminating ones included) satisfies `is_new`.
    /// Terminating pods are not counted in `status.replicas`, so the pods are checked one by one.
    pub(crate) fn fully_rolled(&self, is_new: impl Fn(&PodObs) -> bool) -> bool {
        self.rollout_complete() && self.pods.iter().all(is_new)
    }
}

/// The API's ConfigMap values the rollout reads and writes (raw strings, as found).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ConfigObs {
    /// `DEDUP2D_JOB_PAYLOAD_INCLUDE_BYTES_B64`.
    pub include_b64: Option<String>,
    /// `DEDUP2D_JOB_PAYLOAD_BYTES_B64_MAX_BYTES`.
    pub max_bytes: Option<String>,
    /// `DEDUP2D_ASYNC_TTL_SECONDS`.
    pub ttl_seconds: Option<String>,
    /// The `dedup2d.io/originals` annotation of the ConfigMap.
    pub originals: Originals,
}

/// Worker heartbeats, or why they could not be read.
#[derive(Debug, Clone, PartialEq)]
pub enum Heartbeats {
    /// Heartbeats found, by pod name: the `formats` each lists.
    Read(BTreeMap<String, Vec<String>>),
    /// Redis could not be read.
    Unavailable(String),
    /// Not read: the observation plan said the phase does not use them (pods are then judged by
    /// image alone; only the status summary looks at them in such a phase).
    NotRead,
}

impl Default for Heartbeats {
    fn default() -> Self {
        Heartbeats::Read(BTreeMap::new())
    }
}

/// The Redis drain scan result, or why there is none.
#[derive(Debug, Clone, PartialEq)]
pub enum DrainObs {
    /// Redis could not be reached; the planner holds any step that needs these figures.
    Unreachable(String),
    /// What the scan found.
    Figures(DrainFigures),
}

/// Which kind of read produced a check's figures (and, in the observation plan, which to make).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ScanKind {
    /// Not read: the check's figures are meaningless.
    #[default]
    None,
    /// Every key was examined: the only kind that proves an absence.
    Full,
    /// Only the keys an earlier full scan found were examined again: it proves a presence, and
    /// an absence only among those keys.
    Recheck,
}

/// What one observation of `{prefix}:payload:*` and `{prefix}:active` found.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct DrainFigures {
    /// When the reads began: only a scan begun after dual-write-off was in effect proves the drain.
    pub scanned_at: Timestamp,
    /// How the legacy-payload figures were read.
    pub legacy_scan: ScanKind,
    /// Payloads carrying `file_bytes_b64`.
    pub legacy_payloads: u64,
    /// Of those, payloads without an expiry.
    pub legacy_without_expiry: u64,
    /// How the active-job figure was read.
    pub active_scan: ScanKind,
    /// Active jobs (`{prefix}:active`) whose payload lacks `file_bytes_b64`.
    pub active_without_b64: u64,
}

/// Is a ConfigMap value for `DEDUP2D_JOB_PAYLOAD_INCLUDE_BYTES_B64` "on"? (trimmed, case-insensitive
/// 1/true/yes/on, as the API reads it; absent is off).
pub(crate) fn include_b64_is_on(value: Option<&str>) -> bool {
    value.is_some_and(|v| {
        matches!(
            v.trim().to_ascii_lowercase().as_str(),
            "1" | "true" | "yes" | "on"
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn deployment() -> DeploymentObs {
        DeploymentObs {
            name: "w".into(),
            generation: 2,
            observed_generation: 2,
            replicas: 2,
            status_replicas: 2,
            updated_replicas: 2,
            available_replicas: 2,
            containers: vec![("worker".into(), "new".into())],
            ..Default::default()
        }
    }

    #[test]
    fn rollout_status_test() {
        assert!(deployment().rollout_complete());
        let stale = DeploymentObs {
            observed_generation: 1,
            ..deployment()
        };
        assert!(
            !stale.rollout_complete(),
            "the controller has not seen the new spec"
        );
        let old_left = DeploymentObs {
            status_replicas: 3,
            ..deployment()
        };
        assert!(
            !old_left.rollout_complete(),
            "a pod of an old ReplicaSet is counted"
        );
        let unavailable = DeploymentObs {
            available_replicas: 1,
            ..deployment()
        };
        assert!(!unavailable.rollout_complete());
        let stuck = DeploymentObs {
            progress_deadline_exceeded: true,
            ..deployment()
        };
        assert!(!stuck.rollout_complete());
    }

    #[test]
    fn terminating_old_pod_blocks_fully_rolled() {
        let mut d = deployment();
        d.pods = vec![
            PodObs {
                name: "a".into(),
                containers: vec![("worker".into(), "new".into())],
                ready: true,
                ..Default::default()
            },
            PodObs {
                name: "b".into(),
                containers: vec![("worker".into(), "old".into())],
                terminating: true,
                ..Default::default()
            },
        ];
        assert!(d.rollout_complete());
        assert!(!d.fully_rolled(|p| p.image("worker") == Some("new")));
    }

    #[test]
    fn container_resolution() {
        let d = deployment();
        assert_eq!(d.resolve_container(None), Ok("worker".into()));
        assert!(matches!(
            d.resolve_container(Some("x")),
            Err(ContainerError::NotFound { .. })
        ));
        let two = DeploymentObs {
            containers: vec![("a".into(), "i".into()), ("b".into(), "j".into())],
            ..d
        };
        assert!(matches!(
            two.resolve_container(None),
            Err(ContainerError::Ambiguous { count: 2, .. })
        ));
    }

    #[test]
    fn originals_annotation_parsing() {
        let parsed = parse_originals(Some(
            r#"{"ConfigMap/c/data/K": null, "Deployment/w/containers/w/image": "reg/w:1"}"#,
        ));
        assert_eq!(parsed.get("ConfigMap/c/data/K"), Some(&None));
        assert_eq!(
            parsed.get("Deployment/w/containers/w/image"),
            Some(&Some("reg/w:1".to_string()))
        );
        assert!(parse_originals(Some("not json")).is_empty());
        assert!(parse_originals(Some(r#"{"a": 1}"#)).is_empty());
        assert!(parse_originals(None).is_empty());
    }

    #[test]
    fn include_flag_parsing() {
        assert!(include_b64_is_on(Some(" TRUE ")));
        assert!(include_b64_is_on(Some("1")));
        assert!(!include_b64_is_on(Some("0")));
        assert!(!include_b64_is_on(None));
    }
}
