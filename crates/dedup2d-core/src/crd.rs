//! The `Dedup2DRollout` custom resource (group `dedup2d.io`, version `v1alpha1`): spec, status and the
//! validation the API server enforces (OpenAPI schema plus CEL rules with messages a person understands).
//!
//! Doc comments on the types here are the schema's descriptions, so a field or variant whose
//! description the CRD leaves out carries `#[allow(missing_docs)]` rather than a doc comment that
//! would change the committed CRD.
//!
//! `dedup2d crd` prints [`crd_yaml`]; `crds/dedup2d.io_dedup2drollouts.yaml` is that output, committed,
//! and a test fails when the two differ.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::{CustomResource, CustomResourceExt, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Annotation through which people and the CLI send one-shot requests (`promote`, `abort`, `abort-full`,
/// `retry`, each optionally followed by `:nonce`).
pub const REQUEST_ANNOTATION: &str = "dedup2d.io/request";
/// Pod-template annotation on the API Deployment whose change restarts the API pods.
pub const PAYLOAD_CONFIG_ANNOTATION: &str = "dedup2d.io/payload-config";
/// Field manager of every server-side apply the operator does.
pub const FIELD_MANAGER: &str = "dedup2d-operator";
/// Metadata annotation on each target object (worker and API Deployments, the ConfigMap): a JSON
/// object from field id (see `FieldRecord::field`) to the value found before the operator's first
/// write (`null`: the field was absent). It outlives the rollout, so a rollout deleted half-way and
/// created again still knows the true originals.
pub const ORIGINALS_ANNOTATION: &str = "dedup2d.io/originals";
/// Field manager of the [`ORIGINALS_ANNOTATION`] applies. A manager of its own: the target writes
/// (by [`FIELD_MANAGER`]) never have to restate the annotation, and an apply of the annotation alone
/// removes the entries it no longer states.
pub const ORIGINALS_FIELD_MANAGER: &str = "dedup2d-operator-originals";
/// Finalizer the operator puts on every rollout so that its deletion is announced with an Event
/// telling the state the fleet is left in. Removed by the operator once the Event is out.
pub const CLEANUP_FINALIZER: &str = "dedup2d.io/cleanup";

// CEL snippets shared by several fields.
const DNS_SUBDOMAIN: &str =
    "self.matches('^[a-z0-9]([-a-z0-9]*[a-z0-9])?([.][a-z0-9]([-a-z0-9]*[a-z0-9])?)*$')";
const IMAGE_REF: &str = "self.matches('^[^\\\\s]+$')";

/// Spec of a rollout of dedup2d from `file_bytes_b64` payloads to `file_ref` payloads.
// clippy reads the repeated `type_ = "string"` of the printcolumns as duplicated attributes.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "dedup2d.io",
    version = "v1alpha1",
    kind = "Dedup2DRollout",
    plural = "dedup2drollouts",
    namespaced,
    shortname = "d2r",
    status = "Dedup2DRolloutStatus",
    derive = "PartialEq",
    doc = "Rolls a dedup2d fleet from file_bytes_b64 job payloads to file_ref payloads: workers first, dual-write, API, drain.",
    printcolumn(name = "Phase", type_ = "string", json_path = ".status.phase"),
    printcolumn(
        name = "Workers",
        type_ = "string",
        json_path = ".status.workerSummary",
        description = "worker Deployments fully on the target image / total"
    ),
    printcolumn(name = "Dual-write", type_ = "string", json_path = ".status.dualWrite"),
    printcolumn(
        name = "Legacy payloads",
        type_ = "integer",
        json_path = ".status.legacyPayloads"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    ),
    // Priority 0: plain `kubectl get d2r` shows why a rollout is stalled, held or paused.
    printcolumn(
        name = "Message",
        type_ = "string",
        json_path = ".status.message",
        description = "what the rollout is doing or waiting for",
        priority = "0"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct Dedup2DRolloutSpec {
    /// Worker Deployments, upgraded first and in this order.
    #[schemars(length(max = 16))]
    #[x_kube(validation = Rule::new("size(self) >= 1").message("spec.workers must list at least one worker Deployment"))]
    #[x_kube(validation = Rule::new("self.all(w, self.exists_one(o, o.deployment == w.deployment))").message("each worker Deployment may be listed only once in spec.workers"))]
    #[x_kube(validation = Rule::new("self.map(w, w.deployment) == oldSelf.map(w, w.deployment)").message("the worker Deployments (spec.workers[].deployment and their order) cannot be changed once the rollout exists; create a new Dedup2DRollout instead"))]
    pub workers: Vec<WorkerTarget>,
    /// The API Deployment and the ConfigMap holding `DEDUP2D_JOB_PAYLOAD_*`.
    pub api: ApiTarget,
    /// The grayscale phase: the API writes both `file_ref` and `file_bytes_b64`.
    #[serde(default)]
    pub dual_write: DualWriteSpec,
    /// How the operator waits for legacy payloads to leave Redis.
    #[serde(default)]
    pub drain: DrainSpec,
    /// `Manual`: wait for a `promote` request before declaring the system file_ref-only.
    #[serde(default)]
    pub finalize: Finalize,
    /// Seconds a phase that waits for Deployments may take before `onFailure` applies (pause time excluded).
    #[serde(default = "default_progress_deadline")]
    #[x_kube(validation = Rule::new("self > 0").message("spec.progressDeadlineSeconds must be greater than 0"))]
    pub progress_deadline_seconds: i32,
    /// What to do when a phase exceeds its progress deadline.
    #[serde(default)]
    pub on_failure: OnFailure,
    /// Hold the rollout at the current step.
    #[serde(default)]
    pub paused: bool,
}

fn default_progress_deadline() -> i32 {
    600
}

/// One worker Deployment to upgrade.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct WorkerTarget {
    /// Name of the worker Deployment (in the rollout's namespace).
    #[schemars(length(max = 253))]
    #[x_kube(validation = Rule::new(DNS_SUBDOMAIN).message("spec.workers[].deployment must be a Deployment name (lower-case letters, digits, '-' and '.')"))]
    pub deployment: String,
    /// Container to change; optional when the pod template has exactly one container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 63))]
    #[x_kube(validation = Rule::new("size(self) > 0").message("spec.workers[].container must not be empty when given"))]
    pub container: Option<String>,
    /// Target image (must read both `file_ref` and `file_bytes_b64`).
    #[schemars(length(max = 512))]
    #[x_kube(validation = Rule::new(IMAGE_REF).message("spec.workers[].image must be a non-empty image reference without spaces"))]
    pub image: String,
    /// What proves a pod is new: its image, or also a live capability heartbeat listing `file_ref`.
    #[serde(default)]
    pub evidence: Evidence,
}

/// What proves that a worker pod can read `file_ref` payloads.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Evidence {
    /// The pod runs the target image.
    #[default]
    Image,
    /// The pod runs the target image and has a live heartbeat in Redis whose formats include `file_ref`.
    Heartbeat,
}

/// The API Deployment, the ConfigMap it reads, and optionally its new image.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ApiTarget {
    /// Name of the API Deployment.
    #[schemars(length(max = 253))]
    #[x_kube(validation = Rule::new(DNS_SUBDOMAIN).message("spec.api.deployment must be a Deployment name (lower-case letters, digits, '-' and '.')"))]
    #[x_kube(validation = Rule::new("self == oldSelf").message("spec.api.deployment cannot be changed once the rollout exists"))]
    pub deployment: String,
    /// Name of the ConfigMap holding `DEDUP2D_JOB_PAYLOAD_INCLUDE_BYTES_B64` and `..._MAX_BYTES`.
    #[schemars(length(max = 253))]
    #[x_kube(validation = Rule::new(DNS_SUBDOMAIN).message("spec.api.configMap must be a ConfigMap name (lower-case letters, digits, '-' and '.')"))]
    #[x_kube(validation = Rule::new("self == oldSelf").message("spec.api.configMap cannot be changed once the rollout exists"))]
    pub config_map: String,
    /// Container to change when `image` is set; optional when the pod template has one container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 63))]
    #[x_kube(validation = Rule::new("size(self) > 0").message("spec.api.container must not be empty when given"))]
    pub container: Option<String>,
    /// Optional: upgrade the API to this image after the workers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 512))]
    #[x_kube(validation = Rule::new(IMAGE_REF).message("spec.api.image must be a non-empty image reference without spaces"))]
    pub image: Option<String>,
}

/// The dual-write ("grayscale") settings.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct DualWriteSpec {
    /// Turn dual-write on before upgrading the workers and keep it on for `soak` after.
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// `DEDUP2D_JOB_PAYLOAD_BYTES_B64_MAX_BYTES`: files up to this size also travel as `file_bytes_b64`.
    #[serde(default = "default_max_bytes")]
    #[x_kube(validation = Rule::new("self >= 0").message("spec.dualWrite.maxBytes must be >= 0"))]
    pub max_bytes: i64,
    /// How long dual-write stays on after every worker is new (e.g. `10m`, `30s`, `1h30m`).
    #[serde(default = "default_soak")]
    #[schemars(length(max = 64))]
    #[x_kube(validation = Rule::new("self.matches('^(0|([0-9]+(h|ms|m|s))+)$')").message("spec.dualWrite.soak must be a duration such as 30s, 10m or 1h30m"))]
    pub soak: String,
}

impl Default for DualWriteSpec {
    fn default() -> Self {
        Self {
            enabled: true,
            max_bytes: default_max_bytes(),
            soak: default_soak(),
        }
    }
}

fn default_true() -> bool {
    true
}
fn default_max_bytes() -> i64 {
    10_485_760
}
fn default_soak() -> String {
    "10m".into()
}

/// How the drain is observed and how long it lasts.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("has(self.redis) == has(oldSelf.redis) && (!has(self.redis) || self.redis == oldSelf.redis)").message("spec.drain.redis cannot be changed once the rollout exists"))]
pub struct DrainSpec {
    /// `Observe`: done as soon as Redis holds no legacy payload; `TTL`: wait the full TTL.
    #[serde(default)]
    pub strategy: DrainStrategy,
    /// Payload TTL; default `DEDUP2D_ASYNC_TTL_SECONDS` from the ConfigMap, else 3600.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self >= 60").message("spec.drain.ttlSeconds must be at least 60 (the dedup2d minimum TTL)"))]
    pub ttl_seconds: Option<i64>,
    /// Where to observe; default: what the API reads from its ConfigMap.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redis: Option<RedisRef>,
}

/// The drain strategy.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum DrainStrategy {
    /// Finish as soon as a Redis scan finds no legacy payload (never later than the TTL).
    #[default]
    Observe,
    /// Wait the full TTL after dual-write-off is in effect.
    #[serde(rename = "TTL")]
    Ttl,
}

/// Redis connection for the drain observer.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RedisRef {
    /// Secret key holding the Redis URL; default `DEDUP2D_REDIS_URL` from the ConfigMap.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url_secret_ref: Option<SecretKeyRef>,
    /// Key prefix; default `DEDUP2D_REDIS_KEY_PREFIX` from the ConfigMap, else `dedup2d`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 256))]
    pub key_prefix: Option<String>,
}

/// A key of a Secret in the rollout's namespace.
#[allow(missing_docs)] // see the module docs: a doc comment here would change the CRD
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct SecretKeyRef {
    #[schemars(length(max = 253))]
    pub name: String,
    #[schemars(length(max = 253))]
    pub key: String,
}

/// When the rollout may declare the system file_ref-only.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Finalize {
    /// As soon as the drain is done.
    #[default]
    Auto,
    /// After the drain, wait for a `promote` request.
    Manual,
}

/// What happens when a phase exceeds its progress deadline.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum OnFailure {
    /// Dual-write on, then restore the recorded images (the safe full rollback).
    #[default]
    Rollback,
    /// Hold with `Stalled` until a `retry` or `abort` request.
    Pause,
}

// The declaration order is the one source of the phase list and of the forward order: the forward
// phases come first, in the order a rollout goes through them, then the backward ones from
// `RollingBack` on. A variant's name is its wire string (serde, `Display`, `FromStr`, `as_str`).
// (Not a doc comment: the doc comment is the CRD schema's description.)
/// Phases of a rollout, forward then backward. See docs/design.md §5.
#[allow(missing_docs)] // see the module docs: a doc comment here would change the CRD
#[derive(
    JsonSchema,
    Serialize,
    Deserialize,
    Clone,
    Copy,
    Debug,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Default,
    strum::Display,
    strum::EnumString,
    strum::IntoStaticStr,
    strum::EnumCount,
    strum::VariantArray,
)]
pub enum Phase {
    #[default]
    Pending,
    DualWriteOn,
    UpgradingWorkers,
    UpgradingApi,
    Soaking,
    DualWriteOff,
    Draining,
    AwaitingFinalize,
    Completed,
    RollingBack,
    RolledBack,
    Failed,
}

impl Phase {
    /// Every phase, forward ones first, in declaration order.
    pub const ALL: [Phase; <Phase as strum::EnumCount>::COUNT] = {
        let variants = <Phase as strum::VariantArray>::VARIANTS;
        let mut all = [Phase::Pending; <Phase as strum::EnumCount>::COUNT];
        let mut i = 0;
        while i < all.len() {
            all[i] = variants[i];
            i += 1;
        }
        all
    };

    /// The phase's name, as written in status and used as a condition reason.
    pub fn as_str(self) -> &'static str {
        self.into()
    }

    /// Phases after which nothing happens until a spec edit or a request.
    pub fn is_terminal(self) -> bool {
        matches!(self, Phase::Completed | Phase::RolledBack | Phase::Failed)
    }

    /// Position in the forward order (`None` for the backward phases): the declaration order.
    pub(crate) fn forward_rank(self) -> Option<u8> {
        (self < Phase::RollingBack).then_some(self as u8)
    }
}

/// Observed state of a rollout. Everything the operator needs to resume after a restart is here.
#[allow(missing_docs)] // see the module docs: a doc comment here would change the CRD
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct Dedup2DRolloutStatus {
    /// `metadata.generation` of the spec this status was computed from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<Phase>,
    /// What the rollout is doing or waiting for, for people.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// `Ready`, `Reconciling`, `Stalled` (kstatus) and `WorkersUpgraded`, `DualWrite`, `Drained`, `RollbackSafe`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["type".into()]))]
    pub conditions: Vec<Condition>,
    /// When the current phase began.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase_started_at: Option<Time>,
    /// Seconds the rollout spent paused since the current phase began (not counted against deadlines).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub phase_paused_seconds: i64,
    /// Set while `spec.paused` holds the rollout.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub paused_since: Option<Time>,
    /// A hold that only a `retry` or `abort` request (or a spec edit) lifts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hold: Option<Hold>,
    /// The rollback under way or done.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollback: Option<RollbackRecord>,
    /// Every field the operator writes: its value before the first write, and the value written.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["field".into()]))]
    pub fields: Vec<FieldRecord>,
    /// Per worker Deployment counts.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["deployment".into()]))]
    pub workers: Vec<WorkerStatus>,
    /// `<upgraded>/<total>` worker Deployments, for the printer column.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub worker_summary: Option<String>,
    /// `On`, `Off`, `TurningOn`, `TurningOff` or `Unknown`, for the printer column.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dual_write: Option<String>,
    /// When dual-write-on was last seen in effect (the API fully rolled with it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dual_write_on_in_effect_at: Option<Time>,
    /// When dual-write-off was seen in effect; the drain is measured from here.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dual_write_off_in_effect_at: Option<Time>,
    /// Dual-write-off in effect + TTL: the latest moment a legacy payload can still exist.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub drain_deadline: Option<Time>,
    /// Legacy (`file_bytes_b64`-carrying) payloads found by the last Redis scan.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub legacy_payloads: Option<i64>,
    /// Of those, payloads without expiry (they would never drain).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub legacy_payloads_without_expiry: Option<i64>,
    /// Active jobs whose payload lacks `file_bytes_b64` (they block a full rollback).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub active_jobs_without_b64: Option<i64>,
    /// The last `dedup2d.io/request` handled (never handled twice).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_request: Option<HandledRequest>,
    /// The latest handled `dedup2d.io/request` values, oldest first (at most 16). A value found
    /// here is never handled again, whatever order re-applied manifests bring values back in.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = MAX_REQUEST_HISTORY))]
    pub request_history: Vec<HandledRequest>,
    /// When the rollout reached `Completed` or `RolledBack`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<Time>,
    /// The latest phase transitions, oldest first (at most 10). Each one is also
    /// a Kubernetes Event; a restarted operator re-publishes the newest ones if their Event is missing.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = MAX_TRANSITIONS))]
    pub transitions: Vec<TransitionRecord>,
}

/// How many transitions `status.transitions` keeps.
pub(crate) const MAX_TRANSITIONS: usize = 10;

/// How many handled requests `status.requestHistory` keeps.
pub(crate) const MAX_REQUEST_HISTORY: usize = 16;

/// Longest request value kept as is in status (longer ones are kept as their sha256 digest).
pub(crate) const MAX_STORED_REQUEST: usize = 128;

/// One phase transition, as its Event tells it.
#[allow(missing_docs)] // see the module docs: a doc comment here would change the CRD
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct TransitionRecord {
    pub from: Phase,
    pub to: Phase,
    /// The Event reason, e.g. `WorkersUpgraded`, `Promoted`, `ProgressDeadlineExceeded`.
    pub reason: String,
    pub message: String,
    pub at: Time,
}

fn is_zero(v: &i64) -> bool {
    *v == 0
}

/// A field the operator writes, with what it found there before its first write.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct FieldRecord {
    /// Stable id, e.g. `Deployment/dedup2d-worker/containers/worker/image`,
    /// `ConfigMap/dedup2d-config/data/DEDUP2D_JOB_PAYLOAD_INCLUDE_BYTES_B64`.
    pub field: String,
    /// The value before the operator first wrote it (absent when the field was absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous: Option<String>,
    /// The value the operator writes (recorded before the write).
    pub written: String,
    /// The written value has been seen in the object; from then on a different value is an external change.
    #[serde(default)]
    pub confirmed: bool,
}

/// Counts for one worker Deployment.
#[allow(missing_docs)] // see the module docs: a doc comment here would change the CRD
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase")]
pub struct WorkerStatus {
    pub deployment: String,
    /// Pods (terminating included) that exist.
    pub pods: i32,
    /// Pods on the target image (and with a file_ref heartbeat when evidence is Heartbeat).
    pub updated: i32,
    /// Pods on the target image that are Ready and not terminating.
    pub ready: i32,
    /// Pods on any other image, terminating ones included.
    pub old: i32,
    /// Every pod is new and the Deployment has fully rolled.
    pub upgraded: bool,
}

/// Why the rollout is held until a person acts.
#[allow(missing_docs)] // see the module docs: a doc comment here would change the CRD
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Hold {
    /// `ProgressDeadlineExceeded`, `ExternalModification`, ...
    pub reason: String,
    pub message: String,
    pub since: Time,
}

/// How far a rollback goes.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum RollbackLevel {
    /// Dual-write on and the API rolled; workers kept.
    Quick,
    /// Quick, then (once no active job lacks `file_bytes_b64`) the recorded images restored.
    Full,
}

/// A rollback and why it started.
#[allow(missing_docs)] // see the module docs: a doc comment here would change the CRD
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct RollbackRecord {
    pub level: RollbackLevel,
    pub reason: String,
    /// The phase the rollout was in when the rollback began.
    pub from_phase: Phase,
    pub started_at: Time,
}

/// A one-shot request that has been handled.
#[allow(missing_docs)] // see the module docs: a doc comment here would change the CRD
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct HandledRequest {
    /// The annotation value, nonce included (over 128 bytes: `sha256:<hex>` of it).
    #[schemars(length(max = MAX_STORED_REQUEST))]
    pub request: String,
    pub handled_at: Time,
    /// What the operator did with it.
    pub outcome: String,
}

/// The CRD as YAML, exactly what `dedup2d crd` prints and what `crds/` holds.
pub fn crd_yaml() -> String {
    serde_saphyr::to_string(&Dedup2DRollout::crd()).expect("the CRD serializes to YAML")
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::core::cel::Validator;
    use serde_json::{json, Value};

    const COMMITTED: &str = include_str!("../../../crds/dedup2d.io_dedup2drollouts.yaml");

    #[test]
    fn committed_crd_matches_generated() {
        let generated = crd_yaml();
        if std::env::var_os("DEDUP2D_BLESS").is_some() {
            let path = concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/../../crds/dedup2d.io_dedup2drollouts.yaml"
            );
            std::fs::write(path, &generated).unwrap();
            return;
        }
        assert!(
            COMMITTED == generated,
            "crds/dedup2d.io_dedup2drollouts.yaml is stale; regenerate it with\n    \
             cargo run -- crd > crds/dedup2d.io_dedup2drollouts.yaml\nor\n    \
             DEDUP2D_BLESS=1 cargo test -p dedup2d-core --lib crd"
        );
    }

    fn schema() -> Value {
        let crd = Dedup2DRollout::crd();
        serde_json::to_value(
            crd.spec.versions[0]
                .schema
                .as_ref()
                .unwrap()
                .open_api_v3_schema
                .as_ref()
                .unwrap(),
        )
        .unwrap()
    }

    fn valid() -> Value {
        json!({
            "apiVersion": "dedup2d.io/v1alpha1", "kind": "Dedup2DRollout",
            "metadata": {"name": "r", "namespace": "ns"},
            "spec": {
                "workers": [
                    {"deployment": "dedup2d-worker", "container": "worker", "image": "reg.example/dedup2d:2.5.0"},
                    {"deployment": "dedup2d-render", "image": "reg.example/dedup2d:2.5.0", "evidence": "Heartbeat"}
                ],
                "api": {"deployment": "dedup2d-api", "configMap": "dedup2d-config", "image": "reg.example/dedup2d:2.5.0"},
                "dualWrite": {"enabled": true, "maxBytes": 10485760, "soak": "10m"},
                "drain": {"strategy": "Observe", "redis": {"keyPrefix": "dedup2d"}},
                "progressDeadlineSeconds": 600
            }
        })
    }

    fn errors(obj: &Value, old: Option<&Value>) -> Vec<String> {
        match Validator::new().validate(&schema(), obj, old) {
            Ok(()) => vec![],
            Err(e) => e.iter().map(std::string::ToString::to_string).collect(),
        }
    }

    fn with(path: &[&str], value: Value) -> Value {
        let mut obj = valid();
        let mut cur = &mut obj;
        for p in &path[..path.len() - 1] {
            cur = if let Ok(i) = p.parse::<usize>() {
                &mut cur[i]
            } else {
                &mut cur[*p]
            };
        }
        cur[path[path.len() - 1]] = value;
        obj
    }

    fn assert_rejected(obj: &Value, old: Option<&Value>, needle: &str) {
        let errs = errors(obj, old);
        assert!(
            errs.iter().any(|e| e.contains(needle)),
            "expected an error containing {needle:?}, got {errs:?}"
        );
    }

    #[test]
    fn valid_spec_passes_cel() {
        assert_eq!(errors(&valid(), None), Vec::<String>::new());
        assert_eq!(errors(&valid(), Some(&valid())), Vec::<String>::new());
    }

    #[test]
    fn cel_rejects_bad_specs_with_readable_messages() {
        assert_rejected(
            &with(&["spec", "workers"], json!([])),
            None,
            "at least one worker",
        );
        let dup = json!([{"deployment": "w", "image": "i"}, {"deployment": "w", "image": "j"}]);
        assert_rejected(&with(&["spec", "workers"], dup), None, "only once");
        assert_rejected(
            &with(&["spec", "workers", "0", "image"], json!("")),
            None,
            "non-empty image",
        );
        assert_rejected(
            &with(&["spec", "workers", "0", "image"], json!("a b")),
            None,
            "non-empty image",
        );
        assert_rejected(
            &with(&["spec", "workers", "0", "deployment"], json!("Bad_Name")),
            None,
            "Deployment name",
        );
        assert_rejected(
            &with(&["spec", "dualWrite", "maxBytes"], json!(-1)),
            None,
            "maxBytes must be >= 0",
        );
        assert_rejected(
            &with(&["spec", "dualWrite", "soak"], json!("10 minutes")),
            None,
            "soak must be a duration",
        );
        assert_rejected(
            &with(&["spec", "dualWrite", "soak"], json!("1.5h")),
            None,
            "soak must be a duration",
        );
        assert_rejected(
            &with(&["spec", "progressDeadlineSeconds"], json!(0)),
            None,
            "greater than 0",
        );
        assert_rejected(
            &with(&["spec", "drain", "ttlSeconds"], json!(30)),
            None,
            "at least 60",
        );
        assert_rejected(
            &with(&["spec", "api", "image"], json!("")),
            None,
            "spec.api.image",
        );
    }

    #[test]
    fn identity_fields_are_immutable() {
        let old = valid();
        let renamed = with(
            &["spec", "workers", "0", "deployment"],
            json!("other-worker"),
        );
        assert_rejected(&renamed, Some(&old), "cannot be changed");
        assert_rejected(
            &with(&["spec", "api", "deployment"], json!("api2")),
            Some(&old),
            "spec.api.deployment cannot",
        );
        assert_rejected(
            &with(&["spec", "api", "configMap"], json!("cm2")),
            Some(&old),
            "spec.api.configMap cannot",
        );
        assert_rejected(
            &with(&["spec", "drain", "redis"], json!({"keyPrefix": "x"})),
            Some(&old),
            "spec.drain.redis cannot",
        );
        // A new target image is an ordinary edit.
        let new_image = with(
            &["spec", "workers", "0", "image"],
            json!("reg.example/dedup2d:2.6.0"),
        );
        assert_eq!(errors(&new_image, Some(&old)), Vec::<String>::new());
    }

    #[test]
    fn spec_defaults_fill_in() {
        let spec: Dedup2DRolloutSpec = serde_json::from_value(json!({
            "workers": [{"deployment": "w", "image": "i"}],
            "api": {"deployment": "a", "configMap": "c"}
        }))
        .unwrap();
        assert!(spec.dual_write.enabled);
        assert_eq!(spec.dual_write.max_bytes, 10_485_760);
        assert_eq!(spec.progress_deadline_seconds, 600);
        assert_eq!(spec.drain.strategy, DrainStrategy::Observe);
        assert_eq!(spec.on_failure, OnFailure::Rollback);
    }
}
