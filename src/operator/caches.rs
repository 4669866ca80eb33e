//! The operator's watch caches: one reflector store each for rollouts, Deployments, Pods and
//! ConfigMaps, filled by the same watches that wake the controller, so a reconcile reads its world
//! from memory instead of the API server.
//!
//! Pods and Deployments are held in the compact types of `cached`, which keep only what the
//! observer maps into the snapshot. Objects are stripped before they are stored: Pods lose their
//! managedFields and every condition but Ready; Deployments keep the part of their managedFields
//! that names who owns a field the operator writes (each entry's tree cut to those fields) and
//! lose the last-applied annotation; ConfigMaps keep only the keys the planner and the drain read
//! (and who owns them). Writes never use these copies: an apply reads its target fresh.
//!
//! Two indexes (`index`) sit beside the stores, kept from the same events: pods by their labels,
//! rollouts by the Deployments and ConfigMap they target. Every per-rollout read
//! goes through them, so its cost does not grow with the number of fleets in the namespace.

use std::sync::Arc;

use futures::{Stream, StreamExt};
use k8s_openapi::{
    api::core::v1::ConfigMap,
    apimachinery::pkg::apis::meta::v1::{FieldsV1, LabelSelector, ManagedFieldsEntry},
    NamespaceResourceScope,
};
use kube::{
    core::{ObjectMeta, Selector, SelectorExt},
    runtime::{
        reflector::{self, store::Writer, ObjectRef, Store},
        watcher, WatchStreamExt,
    },
    Api, Resource,
};
use serde::de::DeserializeOwned;

use super::{
    cached::{CachedDeployment, CachedPod},
    controller::GuardedRollout,
    crd::Dedup2DRollout,
    index::Index,
    managed,
    observe::{KEY_REDIS_KEY_PREFIX, KEY_REDIS_URL, KEY_REDIS_URL_FALLBACK},
    snapshot::{KEY_INCLUDE_B64, KEY_MAX_BYTES, KEY_TTL_SECONDS},
};

/// kubectl's copy of the whole applied object: never read, often the largest annotation.
const LAST_APPLIED: &str = "kubectl.kubernetes.io/last-applied-configuration";
/// The ConfigMap keys anything in the operator reads.
const CONFIG_KEYS: [&str; 6] = [
    KEY_INCLUDE_B64,
    KEY_MAX_BYTES,
    KEY_TTL_SECONDS,
    KEY_REDIS_URL,
    KEY_REDIS_URL_FALLBACK,
    KEY_REDIS_KEY_PREFIX,
];

/// What a rollout targets, as the rollout index files it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Target {
    /// A worker Deployment or the API's.
    Deployment(String),
    /// The API's ConfigMap.
    ConfigMap(String),
}

/// The targets a rollout names (none when it does not deserialize).
fn rollout_targets(r: &GuardedRollout) -> Vec<Target> {
    let Ok(r) = &r.0 else { return vec![] };
    r.spec
        .workers
        .iter()
        .map(|w| Target::Deployment(w.deployment.clone()))
        .chain([
            Target::Deployment(r.spec.api.deployment.clone()),
            Target::ConfigMap(r.spec.api.config_map.clone()),
        ])
        .collect()
}

/// One `key=value` label, as the pod index files pods.
pub type Label = (String, String);

/// The label the ReplicaSet controller adds to tell a Deployment's revisions apart: every pod has
/// one, and no Deployment selects by it.
const POD_TEMPLATE_HASH: &str = "pod-template-hash";

/// A pod's labels but its template hash.
fn pod_labels(p: &CachedPod) -> Vec<Label> {
    p.metadata
        .labels
        .iter()
        .flatten()
        .filter(|(k, _)| k.as_str() != POD_TEMPLATE_HASH)
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

/// Readers of the four stores and the two indexes (cheap to clone).
#[derive(Clone)]
pub struct Caches {
    pub rollouts: Store<GuardedRollout>,
    pub deployments: Store<CachedDeployment>,
    pub pods: Store<CachedPod>,
    pub config_maps: Store<ConfigMap>,
    /// Rollouts by what they target.
    pub rollouts_by_target: Index<GuardedRollout, Target>,
    /// Pods by each of their labels (but the template hash).
    pub pods_by_label: Index<CachedPod, Label>,
}

/// The writers behind [`Caches`], each consumed by the watch stream that fills it (the indexes
/// are written through their shared handles in [`Caches`]).
pub struct Writers {
    pub rollouts: Writer<GuardedRollout>,
    pub deployments: Writer<CachedDeployment>,
    pub pods: Writer<CachedPod>,
    pub config_maps: Writer<ConfigMap>,
}

/// Empty stores and indexes, and the stores' writers.
pub fn stores() -> (Caches, Writers) {
    let (rollouts, rw) = reflector::store();
    let (deployments, dw) = reflector::store();
    let (pods, pw) = reflector::store();
    let (config_maps, cw) = reflector::store();
    let caches = Caches {
        rollouts,
        deployments,
        pods,
        config_maps,
        rollouts_by_target: Index::new(rollout_targets),
        pods_by_label: Index::new(pod_labels),
    };
    let writers = Writers {
        rollouts: rw,
        deployments: dw,
        pods: pw,
        config_maps: cw,
    };
    (caches, writers)
}

impl Caches {
    /// Resolves once the Deployment, Pod and ConfigMap stores have their initial lists. The
    /// rollout store is left out: the controller itself waits for it before any reconcile, and a
    /// store's readiness wakes only one waiter at a time (a second one would never be woken). So
    /// call this from one task only.
    pub async fn wait_until_targets_ready(&self) -> Result<(), reflector::store::WriterDropped> {
        self.deployments.wait_until_ready().await?;
        self.pods.wait_until_ready().await?;
        self.config_maps.wait_until_ready().await
    }

    pub fn rollout(&self, ns: &str, name: &str) -> Option<Arc<GuardedRollout>> {
        self.rollouts.get(&ObjectRef::new(name).within(ns))
    }

    /// The rollouts of namespace `ns` that target `target` (ones that deserialize), by name.
    pub fn rollouts_targeting(&self, ns: &str, target: &Target) -> Vec<Arc<GuardedRollout>> {
        self.rollouts_by_target
            .names(ns, target)
            .into_iter()
            .filter_map(|name| self.rollout(ns, &name))
            .collect()
    }

    /// The other rollouts of namespace `ns` that target a Deployment `rollout` targets, each once.
    pub fn rollouts_sharing_a_deployment(
        &self,
        ns: &str,
        rollout: &Dedup2DRollout,
    ) -> Vec<Arc<GuardedRollout>> {
        let spec = &rollout.spec;
        let mut names: Vec<String> = spec
            .workers
            .iter()
            .map(|w| &w.deployment)
            .chain([&spec.api.deployment])
            .flat_map(|d| {
                self.rollouts_by_target
                    .names(ns, &Target::Deployment(d.clone()))
            })
            .filter(|n| Some(n.as_str()) != rollout.metadata.name.as_deref())
            .collect();
        names.sort_unstable();
        names.dedup();
        names
            .into_iter()
            .filter_map(|name| self.rollout(ns, &name))
            .collect()
    }

    pub fn deployment(&self, ns: &str, name: &str) -> Option<Arc<CachedDeployment>> {
        self.deployments.get(&ObjectRef::new(name).within(ns))
    }

    pub fn config_map(&self, ns: &str, name: &str) -> Option<Arc<ConfigMap>> {
        self.config_maps.get(&ObjectRef::new(name).within(ns))
    }

    /// The pods of namespace `ns` that `selector` selects, terminating ones included (every pod
    /// that matches, owned by the Deployment or not: an orphaned old pod still takes jobs). The
    /// candidates are the pods carrying the selector's rarest `matchLabels` pair; a selector of
    /// `matchExpressions` alone walks the namespace's pods. An empty or unparsable selector would
    /// select the whole namespace: it selects no pods instead.
    pub fn pods_selected(&self, ns: &str, selector: &LabelSelector) -> Vec<Arc<CachedPod>> {
        let matcher = match Selector::try_from(selector.clone()) {
            Ok(m) if !m.selects_all() => m,
            _ => return vec![],
        };
        let matches = |p: &CachedPod| {
            matcher.matches(p.metadata.labels.as_ref().unwrap_or(&Default::default()))
        };
        let rarest = selector
            .match_labels
            .iter()
            .flatten()
            .map(|(k, v)| self.pods_by_label.names(ns, &(k.clone(), v.clone())))
            .min_by_key(Vec::len);
        match rarest {
            Some(names) => names
                .into_iter()
                .filter_map(|name| self.pods.get(&ObjectRef::new(&name).within(ns)))
                .filter(|p| matches(p))
                .collect(),
            None => self
                .pods
                .state_filter(|p| p.metadata.namespace.as_deref() == Some(ns) && matches(p)),
        }
    }
}

/// The watch of `api`, each object passed through `strip`, stored by `writer` and shown to
/// `index`; yields its events (for the controller's triggers).
pub fn reflected<K>(
    api: Api<K>,
    writer: Writer<K>,
    strip: fn(&mut K),
    index: impl Fn(&watcher::Event<K>) + Send + 'static,
) -> impl Stream<Item = Result<watcher::Event<K>, watcher::Error>> + Send + 'static
where
    K: Resource<Scope = NamespaceResourceScope> + Clone + DeserializeOwned + std::fmt::Debug,
    K: Send + Sync + 'static,
    K::DynamicType: Default + Eq + std::hash::Hash + Clone + Send + Sync,
{
    watcher(api, watcher::Config::default())
        .default_backoff()
        .modify(strip)
        .reflect(writer)
        .inspect(move |event| {
            if let Ok(event) = event {
                index(event);
            }
        })
}

/// An index hook that files nothing (for the stores that have no index).
pub fn unindexed<K>(_: &watcher::Event<K>) {}

/// Metadata without managedFields and the last-applied annotation.
fn strip_meta(meta: &mut ObjectMeta, keep_managed_fields: bool) {
    if !keep_managed_fields {
        meta.managed_fields = None;
    }
    if let Some(a) = meta.annotations.as_mut() {
        a.remove(LAST_APPLIED);
    }
}

/// managedFields cut to what `managed::managers` reads: entries of the main resource (not a
/// subresource), each tree reduced by `kept` and dropped when nothing of it is left.
fn keep_managed_fields(
    meta: &mut ObjectMeta,
    kept: impl Fn(&serde_json::Value) -> Option<serde_json::Value>,
) {
    let Some(entries) = meta.managed_fields.take() else {
        return;
    };
    let entries: Vec<ManagedFieldsEntry> = entries
        .into_iter()
        .filter(|e| e.subresource.as_deref().unwrap_or("").is_empty())
        .filter_map(|mut e| {
            let tree = kept(&e.fields_v1.take()?.0)?;
            e.fields_v1 = Some(FieldsV1(tree));
            Some(e)
        })
        .collect();
    meta.managed_fields = Some(entries);
}

/// A rollout as the reconciler reads it (its status write drops managedFields anyway).
pub fn strip_rollout(r: &mut GuardedRollout) {
    let meta = match &mut r.0 {
        Ok(r) => &mut r.metadata,
        Err(invalid) => &mut invalid.metadata,
    };
    strip_meta(meta, false);
}

/// A pod as `observe::pod_obs` and `controller::pod_deployment` read it.
pub fn strip_pod(p: &mut CachedPod) {
    strip_meta(&mut p.metadata, false);
    p.status.conditions.retain(|c| c.type_ == "Ready");
    p.status.conditions.shrink_to_fit();
}

/// A Deployment as `observe::deployment_obs` reads it: of its containers' environment, only the
/// entries that read a ConfigMap.
pub fn strip_deployment(d: &mut CachedDeployment) {
    strip_meta(&mut d.metadata, true);
    keep_managed_fields(&mut d.metadata, managed::deployment_fields_kept);
    let Some(spec) = d.spec.as_mut() else {
        return;
    };
    for c in &mut spec.template.spec.containers {
        c.env.retain(|e| {
            e.value_from
                .as_ref()
                .is_some_and(|v| v.config_map_key_ref.is_some())
        });
        c.env_from.retain(|e| e.config_map_ref.is_some());
        c.env.shrink_to_fit();
        c.env_from.shrink_to_fit();
    }
}

/// A ConfigMap with only the keys the operator reads.
pub fn strip_config_map(c: &mut ConfigMap) {
    strip_meta(&mut c.metadata, true);
    keep_managed_fields(&mut c.metadata, |f| {
        managed::config_map_fields_kept(&CONFIG_KEYS, f)
    });
    c.binary_data = None;
    if let Some(data) = c.data.as_mut() {
        data.retain(|k, _| CONFIG_KEYS.contains(&k.as_str()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::operator::crd::Dedup2DRolloutSpec;
    use crate::operator::observe::{config_obs, deployment_obs, pod_obs, redis_target};
    use kube::ResourceExt;
    use serde_json::json;

    const MANAGED: &str = r#"[{"manager": "kubectl", "operation": "Update", "fieldsType": "FieldsV1", "fieldsV1": {"f:data": {"f:DEDUP2D_INCLUDE_FILE_BYTES_B64": {}}}}]"#;

    fn managed() -> serde_json::Value {
        serde_json::from_str(MANAGED).unwrap()
    }

    /// kubectl's entry (the image, the restart annotation and much else) and the controller's
    /// status entry.
    fn deployment_managed() -> serde_json::Value {
        json!([
            {"manager": "kubectl", "operation": "Update", "fieldsType": "FieldsV1", "time": "2026-01-01T00:00:00Z",
                "fieldsV1": {"f:spec": {"f:replicas": {}, "f:selector": {}, "f:strategy": {"f:type": {}},
                    "f:template": {"f:metadata": {"f:labels": {".": {}, "f:app": {}}, "f:annotations": {".": {}, "f:dedup2d.io/payload-config": {}}},
                        "f:spec": {"f:containers": {"k:{\"name\":\"worker\"}": {".": {}, "f:image": {}, "f:name": {},
                            "f:envFrom": {}, "f:readinessProbe": {".": {}, "f:exec": {".": {}, "f:command": {}}}}},
                            "f:volumes": {".": {}, "k:{\"name\":\"v\"}": {".": {}, "f:emptyDir": {}, "f:name": {}}}}}}}},
            {"manager": "kube-controller-manager", "operation": "Update", "subresource": "status", "fieldsType": "FieldsV1",
                "fieldsV1": {"f:status": {"f:observedGeneration": {}, "f:replicas": {}, "f:updatedReplicas": {}}}}
        ])
    }

    /// A pod as the API serves it.
    fn pod_json() -> serde_json::Value {
        json!({
            "metadata": {"name": "w-5d8f9-abcde", "namespace": "ns", "labels": {"app": "w"},
                "annotations": {"a": "b"},
                "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "w-5d8f9", "uid": "u"}],
                "deletionTimestamp": "2026-01-01T00:00:00Z", "managedFields": managed()},
            "spec": {"containers": [{"name": "worker", "image": "w:2", "args": ["x"], "env": [{"name": "E", "value": "v"}]}],
                "volumes": [{"name": "v", "emptyDir": {}}], "nodeName": "n1"},
            "status": {"phase": "Running", "podIP": "10.0.0.1",
                "conditions": [{"type": "Ready", "status": "True"}, {"type": "PodScheduled", "status": "True"}],
                "containerStatuses": [{"name": "worker", "image": "w:2", "imageID": "x", "ready": true, "restartCount": 0}]}
        })
    }

    fn pod() -> CachedPod {
        serde_json::from_value(pod_json()).unwrap()
    }

    fn deployment() -> CachedDeployment {
        serde_json::from_value(json!({
            "metadata": {"name": "w", "namespace": "ns", "generation": 3, "managedFields": deployment_managed(),
                "annotations": {LAST_APPLIED: "{...}"}},
            "spec": {"replicas": 2, "selector": {"matchLabels": {"app": "w"}},
                "template": {"metadata": {"labels": {"app": "w"}, "annotations": {"dedup2d.io/payload-config": "h"}},
                    "spec": {"containers": [{"name": "worker", "image": "w:2",
                        "envFrom": [{"configMapRef": {"name": "cfg"}}, {"secretRef": {"name": "s"}}],
                        "env": [{"name": "X", "valueFrom": {"configMapKeyRef": {"name": "other", "key": "x"}}},
                            {"name": "E", "value": "v"}, {"name": "F", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}],
                        "readinessProbe": {"exec": {"command": ["true"]}}}],
                    "volumes": [{"name": "v", "emptyDir": {}}]}}},
            "status": {"observedGeneration": 3, "replicas": 2, "updatedReplicas": 2, "availableReplicas": 2}
        }))
        .unwrap()
    }

    #[test]
    fn a_stripped_pod_observes_the_same_and_keeps_little() {
        let full = pod();
        let mut stripped = full.clone();
        strip_pod(&mut stripped);
        assert_eq!(pod_obs(&stripped), pod_obs(&full));
        assert_eq!(
            super::super::controller::pod_deployment(&stripped).as_deref(),
            Some("w")
        );
        assert_eq!(stripped.metadata.labels, full.metadata.labels);
        assert!(stripped.metadata.managed_fields.is_none());
        assert_eq!(stripped.status.conditions.len(), 1, "Ready only");
        let kept = serde_json::to_vec(&stripped).unwrap().len();
        let served = serde_json::to_vec(&pod_json()).unwrap().len();
        assert!(kept * 2 < served, "{kept} of {served}");
    }

    #[test]
    fn a_stripped_deployment_observes_the_same() {
        let full = deployment();
        let mut stripped = full.clone();
        strip_deployment(&mut stripped);
        let pods = [pod()];
        assert_eq!(
            deployment_obs(&stripped, &pods),
            deployment_obs(&full, &pods)
        );
        let managers = deployment_obs(&stripped, &pods).managers;
        assert_eq!(
            managers
                .get("Deployment/w/containers/worker/image")
                .map(String::as_str),
            Some("kubectl"),
            "who owns the fields the operator writes is kept: {managers:?}"
        );
        let entries = stripped.metadata.managed_fields.as_ref().unwrap();
        assert_eq!(entries.len(), 1, "the status entry is dropped");
        let tree = |d: &CachedDeployment| {
            serde_json::to_string(&d.metadata.managed_fields)
                .unwrap()
                .len()
        };
        assert!(
            tree(&stripped) * 2 < tree(&full),
            "{} of {}",
            tree(&stripped),
            tree(&full)
        );
        let container = &stripped.spec.as_ref().unwrap().template.spec.containers[0];
        assert_eq!(
            (container.env.len(), container.env_from.len()),
            (1, 1),
            "only the environment read from a ConfigMap is kept"
        );
        assert!(!stripped.annotations().contains_key(LAST_APPLIED));
    }

    #[test]
    fn a_stripped_config_map_keeps_the_keys_the_operator_reads() {
        let full: ConfigMap = serde_json::from_value(json!({
            "metadata": {"name": "cfg", "namespace": "ns", "managedFields": [{"manager": "kubectl",
                "operation": "Update", "fieldsType": "FieldsV1",
                "fieldsV1": {"f:data": {".": {}, format!("f:{KEY_INCLUDE_B64}"): {}, "f:BIG": {}}}}]},
            "data": {KEY_INCLUDE_B64: "1", KEY_MAX_BYTES: "5", KEY_TTL_SECONDS: "60",
                KEY_REDIS_URL: "redis://r", KEY_REDIS_KEY_PREFIX: "p", "BIG": "x".repeat(10_000)},
            "binaryData": {"blob": "AAAA"}
        }))
        .unwrap();
        let mut stripped = full.clone();
        strip_config_map(&mut stripped);
        assert_eq!(config_obs(&stripped), config_obs(&full));
        let spec: Dedup2DRolloutSpec = serde_json::from_value(json!({
            "workers": [{"deployment": "w", "image": "i"}],
            "api": {"deployment": "api", "configMap": "cfg"}
        }))
        .unwrap();
        assert_eq!(
            redis_target(&spec, Some(&stripped), None),
            redis_target(&spec, Some(&full), None)
        );
        let managers = |c: &ConfigMap| {
            managed::managers(c.managed_fields(), "dedup2d-operator", |f| {
                managed::config_map_fields("cfg", &CONFIG_KEYS, f)
            })
        };
        assert_eq!(managers(&stripped), managers(&full));
        assert_eq!(
            managers(&stripped)
                .get(&format!("ConfigMap/cfg/data/{KEY_INCLUDE_B64}"))
                .map(String::as_str),
            Some("kubectl")
        );
        let tree = &stripped.metadata.managed_fields.as_ref().unwrap()[0].fields_v1;
        assert!(!serde_json::to_string(tree).unwrap().contains("BIG"));
        assert!(stripped.binary_data.is_none());
        assert!(!stripped.data.as_ref().unwrap().contains_key("BIG"));
    }

    #[test]
    fn pods_are_found_by_selector_within_the_namespace_owned_or_not() {
        let (caches, mut writers) = stores();
        let mut other_ns = pod();
        other_ns.metadata.namespace = Some("elsewhere".into());
        let mut other_app = pod();
        other_app.metadata.name = Some("x".into());
        other_app.metadata.labels = Some([("app".to_string(), "x".to_string())].into());
        let mut orphan = pod();
        orphan.metadata.name = Some("w-orphan".into());
        orphan.metadata.owner_references = None;
        let mut gone = pod();
        gone.metadata.name = Some("w-5d8f9-gone".into());
        for p in [pod(), other_ns, other_app, orphan, gone.clone()] {
            let event = watcher::Event::Apply(p);
            writers.pods.apply_watcher_event(&event);
            caches.pods_by_label.apply(&event);
        }
        let event = watcher::Event::Delete(gone);
        writers.pods.apply_watcher_event(&event);
        caches.pods_by_label.apply(&event);
        let names = |sel: &LabelSelector| -> Vec<String> {
            let mut n: Vec<_> = caches
                .pods_selected("ns", sel)
                .iter()
                .map(|p| p.name_any())
                .collect();
            n.sort();
            n
        };
        let by_labels = deployment().spec.unwrap().selector;
        assert_eq!(names(&by_labels), ["w-5d8f9-abcde", "w-orphan"]);
        let by_expression: LabelSelector = serde_json::from_value(
            json!({"matchExpressions": [{"key": "app", "operator": "In", "values": ["w"]}]}),
        )
        .unwrap();
        assert_eq!(
            names(&by_expression),
            names(&by_labels),
            "the walk finds the same"
        );
    }

    /// A rollout as the watch delivers it, from its workers and API Deployment.
    fn guarded(name: &str, workers: &[&str], api: &str) -> GuardedRollout {
        let workers: Vec<_> = workers
            .iter()
            .map(|w| json!({"deployment": w, "image": "i"}))
            .collect();
        serde_json::from_value(json!({
            "apiVersion": "dedup2d.io/v1alpha1", "kind": "Dedup2DRollout",
            "metadata": {"name": name, "namespace": "ns"},
            "spec": {"workers": workers, "api": {"deployment": api, "configMap": "c"}}
        }))
        .unwrap()
    }

    #[test]
    fn rollouts_target_workers_and_the_api() {
        let targets = rollout_targets(&guarded("r", &["w"], "a"));
        let deployment = |d: &str| Target::Deployment(d.into());
        assert!(targets.contains(&deployment("w")));
        assert!(targets.contains(&deployment("a")));
        assert!(!targets.contains(&deployment("c")));
    }

    #[test]
    fn rollouts_on_a_common_deployment_are_related() {
        let a = guarded("a", &["w1", "w2"], "api");
        for (b, related) in [
            (guarded("b", &["w2"], "api2"), true),
            (guarded("c", &["x"], "api"), true),
            (guarded("d", &["api"], "api3"), true),
            (guarded("e", &["x"], "w1"), true),
            (guarded("f", &["x", "y"], "z"), false),
        ] {
            let (caches, mut writers) = stores();
            for r in [&a, &b] {
                let event = watcher::Event::Apply(r.clone());
                writers.rollouts.apply_watcher_event(&event);
                caches.rollouts_by_target.apply(&event);
            }
            let sharing = |x: &GuardedRollout| {
                !caches
                    .rollouts_sharing_a_deployment("ns", x.0.as_ref().unwrap())
                    .is_empty()
            };
            assert_eq!(sharing(&a), related, "{}", b.name_any());
            assert_eq!(sharing(&b), related, "{} (symmetric)", b.name_any());
        }
    }
}
