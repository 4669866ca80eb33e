//! The compact Pod and Deployment the watch caches hold, deserialized straight from the watch with
//! only the fields the observer and the triggers read (every other field of the JSON is skipped).
//!
//! A cache of `k8s-openapi` objects pays for each object's full struct however much of it is
//! emptied: before any string is stored, a `Pod` is 2,176 bytes, a `Deployment` 2,400 and each
//! `Container` 2,120, so a small fleet's two Deployments and two pods cost 17.6 KB of fixed size.
//! These types keep the API's JSON shape for the fields they have (so a Pod or Deployment manifest
//! deserializes into them) and serialize back to that shape. Writes never use them: an apply reads
//! its target fresh as the full type.

use std::{borrow::Cow, collections::BTreeMap};

use k8s_openapi::{apimachinery::pkg::apis::meta::v1::LabelSelector, NamespaceResourceScope};
use kube::{core::ObjectMeta, Resource};
use serde::{Deserialize, Serialize};

/// A Pod: its metadata (labels, owners, annotations, deletion), container images, Ready condition.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct CachedPod {
    #[serde(default)]
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub spec: PodSpec,
    #[serde(default)]
    pub status: PodStatus,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct PodSpec {
    #[serde(default)]
    pub containers: Vec<Container>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct PodStatus {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
}

/// A pod's container: its name and image.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Container {
    #[serde(default)]
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
}

/// A condition of a Pod or a Deployment.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Condition {
    #[serde(rename = "type")]
    pub type_: String,
    #[serde(default)]
    pub status: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// A Deployment: its metadata (managedFields included), replicas, selector, template annotations,
/// containers with where their environment comes from, and rollout status.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct CachedDeployment {
    #[serde(default)]
    pub metadata: ObjectMeta,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spec: Option<DeploymentSpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<DeploymentStatus>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct DeploymentSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replicas: Option<i32>,
    #[serde(default)]
    pub selector: LabelSelector,
    #[serde(default)]
    pub template: PodTemplate,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct PodTemplate {
    #[serde(default)]
    pub metadata: TemplateMeta,
    #[serde(default)]
    pub spec: TemplateSpec,
}

/// The pod template's annotations (its labels are the selector's business, not the observer's).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct TemplateMeta {
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct TemplateSpec {
    #[serde(default)]
    pub containers: Vec<TemplateContainer>,
}

/// A template container: name, image, and the ConfigMaps its environment is read from.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TemplateContainer {
    #[serde(default)]
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub env: Vec<EnvVar>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub env_from: Vec<EnvFromSource>,
}

/// `env[]`: only a `valueFrom.configMapKeyRef` matters.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EnvVar {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value_from: Option<EnvVarSource>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EnvVarSource {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config_map_key_ref: Option<NameRef>,
}

/// `envFrom[]`: only a `configMapRef` matters.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EnvFromSource {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config_map_ref: Option<NameRef>,
}

/// A reference by name (to a ConfigMap).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct NameRef {
    #[serde(default)]
    pub name: String,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DeploymentStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replicas: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub updated_replicas: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub available_replicas: Option<i32>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
}

/// `Resource` for a compact type of a namespaced core or apps/v1 kind.
macro_rules! cached_resource {
    ($ty:ty, $kind:literal, $group:literal, $version:literal, $plural:literal) => {
        impl Resource for $ty {
            type DynamicType = ();
            type Scope = NamespaceResourceScope;

            fn kind(_: &()) -> Cow<'_, str> {
                Cow::Borrowed($kind)
            }
            fn group(_: &()) -> Cow<'_, str> {
                Cow::Borrowed($group)
            }
            fn version(_: &()) -> Cow<'_, str> {
                Cow::Borrowed($version)
            }
            fn plural(_: &()) -> Cow<'_, str> {
                Cow::Borrowed($plural)
            }
            fn meta(&self) -> &ObjectMeta {
                &self.metadata
            }
            fn meta_mut(&mut self) -> &mut ObjectMeta {
                &mut self.metadata
            }
        }
    };
}

cached_resource!(CachedPod, "Pod", "", "v1", "pods");
cached_resource!(CachedDeployment, "Deployment", "apps", "v1", "deployments");

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::{apps::v1::Deployment, core::v1::Pod};
    use serde_json::json;

    fn deployment_json() -> serde_json::Value {
        json!({
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "w", "namespace": "ns", "generation": 3},
            "spec": {"replicas": 2, "selector": {"matchLabels": {"app": "w"}},
                "template": {"metadata": {"labels": {"app": "w"}, "annotations": {"k": "v"}},
                    "spec": {"containers": [{"name": "worker", "image": "w:2",
                        "envFrom": [{"secretRef": {"name": "s"}}, {"configMapRef": {"name": "cfg"}}],
                        "env": [{"name": "A", "value": "1"},
                                {"name": "X", "valueFrom": {"configMapKeyRef": {"name": "other", "key": "x"}}}],
                        "readinessProbe": {"exec": {"command": ["true"]}}}],
                    "volumes": [{"name": "v", "emptyDir": {}}]}}},
            "status": {"observedGeneration": 3, "replicas": 2, "updatedReplicas": 2, "availableReplicas": 1,
                "conditions": [{"type": "Progressing", "status": "True", "reason": "NewReplicaSetAvailable"}]}
        })
    }

    #[test]
    fn a_deployment_manifest_deserializes_to_the_fields_kept() {
        let d: CachedDeployment = serde_json::from_value(deployment_json()).unwrap();
        let spec = d.spec.as_ref().unwrap();
        assert_eq!(spec.replicas, Some(2));
        assert_eq!(spec.selector.match_labels.as_ref().unwrap()["app"], "w");
        assert_eq!(spec.template.metadata.annotations["k"], "v");
        let c = &spec.template.spec.containers[0];
        assert_eq!(
            (c.name.as_str(), c.image.as_deref()),
            ("worker", Some("w:2"))
        );
        assert_eq!(c.env.len(), 2);
        assert_eq!(
            c.env[1]
                .value_from
                .as_ref()
                .unwrap()
                .config_map_key_ref
                .as_ref()
                .unwrap()
                .name,
            "other"
        );
        assert!(c.env_from[0].config_map_ref.is_none());
        assert_eq!(c.env_from[1].config_map_ref.as_ref().unwrap().name, "cfg");
        let status = d.status.as_ref().unwrap();
        assert_eq!(
            (
                status.observed_generation,
                status.replicas,
                status.updated_replicas,
                status.available_replicas
            ),
            (Some(3), Some(2), Some(2), Some(1))
        );
        assert_eq!(
            status.conditions[0].reason.as_deref(),
            Some("NewReplicaSetAvailable")
        );
    }

    /// What the compact form serializes to is the API's shape: the full type reads the same values.
    #[test]
    fn the_compact_forms_serialize_to_the_api_shape() {
        let d: CachedDeployment = serde_json::from_value(deployment_json()).unwrap();
        let full: Deployment = serde_json::from_value(serde_json::to_value(&d).unwrap()).unwrap();
        let spec = full.spec.unwrap();
        let container = &spec.template.spec.unwrap().containers[0];
        assert_eq!(container.image.as_deref(), Some("w:2"));
        assert_eq!(container.env_from.as_ref().unwrap().len(), 2);
        assert_eq!(
            spec.template.metadata.unwrap().annotations.unwrap()["k"],
            "v"
        );
        assert_eq!(full.status.unwrap().available_replicas, Some(1));

        let p: CachedPod = serde_json::from_value(json!({
            "metadata": {"name": "p"},
            "spec": {"containers": [{"name": "c", "image": "i", "args": ["x"]}], "nodeName": "n"},
            "status": {"phase": "Running", "conditions": [{"type": "Ready", "status": "True"}]}
        }))
        .unwrap();
        let full: Pod = serde_json::from_value(serde_json::to_value(&p).unwrap()).unwrap();
        assert_eq!(full.spec.unwrap().containers[0].image.as_deref(), Some("i"));
        assert_eq!(full.status.unwrap().conditions.unwrap()[0].status, "True");
        assert_eq!(CachedPod::kind(&()), "Pod");
        assert_eq!(CachedDeployment::api_version(&()), "apps/v1");
        assert_eq!(
            CachedDeployment::url_path(&(), Some("ns")),
            "/apis/apps/v1/namespaces/ns/deployments"
        );
        assert_eq!(
            CachedPod::url_path(&(), Some("ns")),
            "/api/v1/namespaces/ns/pods"
        );
    }

    /// The point of the module: the fixed size of what the caches hold.
    #[test]
    fn the_compact_forms_are_a_fraction_of_the_full_types() {
        use std::mem::size_of;
        let pod = size_of::<CachedPod>() + size_of::<Container>();
        let full_pod = size_of::<Pod>() + size_of::<k8s_openapi::api::core::v1::Container>();
        let deployment = size_of::<CachedDeployment>() + size_of::<TemplateContainer>();
        let full_deployment =
            size_of::<Deployment>() + size_of::<k8s_openapi::api::core::v1::Container>();
        assert!(pod * 4 < full_pod, "{pod} of {full_pod}");
        assert!(
            deployment * 3 < full_deployment,
            "{deployment} of {full_deployment}"
        );
    }
}
