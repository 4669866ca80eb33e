//! The actor: persists the planner's status and performs its one write.
//!
//! - Status goes through the status subresource as a full replacement carrying the `resourceVersion`
//!   that was read, so a decision made from a stale rollout is refused (409) and never acted on.
//! - Every write to a target is a server-side apply by `dedup2d-operator` with `force`: the operator
//!   takes ownership of exactly the fields it changes (container images, the two ConfigMap keys, the
//!   API pod-template annotation). Each apply re-states every other field the operator already owns
//!   on that object at its current value, because an apply that leaves out an owned field removes it.
//!   The apply also carries the `resourceVersion` it was built from, so it never creates a deleted
//!   object again and never overwrites a change it did not see.
//! - The `dedup2d.io/originals` metadata annotation is applied by a field manager of its own
//!   (`dedup2d-operator-originals`), stating exactly the entries the planner wants: the target
//!   writes above never need to restate it. Clearing it is a merge patch that deletes it (with the
//!   same `resourceVersion` precondition), not an apply that leaves it out: an apply only gives up
//!   the operator's own claim, so an annotation another manager also owns (a manifest exported from
//!   the cluster and applied back, a copied object) would stay, and the planner would ask again on
//!   every reconcile.

use std::collections::BTreeSet;

use k8s_openapi::{
    api::{apps::v1::Deployment, core::v1::ConfigMap},
    NamespaceResourceScope,
};
use kube::{
    api::{Patch, PatchParams, PostParams},
    Api, Client, Resource, ResourceExt,
};
use serde::de::DeserializeOwned;
use serde_json::{json, Value};

use super::{
    crd::{
        Dedup2DRollout, Dedup2DRolloutStatus, FIELD_MANAGER, ORIGINALS_ANNOTATION,
        ORIGINALS_FIELD_MANAGER, PAYLOAD_CONFIG_ANNOTATION,
    },
    managed,
    plan::{field_id, Action, TargetObject},
    snapshot::{Originals, KEY_INCLUDE_B64, KEY_MAX_BYTES},
};

#[derive(Debug, thiserror::Error)]
pub enum ActError {
    /// The rollout changed since it was read: the decision is void (re-plan, do not act).
    #[error("Dedup2DRollout {0} changed since it was read; re-planning")]
    StaleRollout(String),
    #[error("{what}: {source}")]
    Kube {
        what: String,
        #[source]
        source: kube::Error,
    },
    #[error("{0} not found; it will be re-observed")]
    Missing(String),
}

fn kube_err(what: impl Into<String>) -> impl FnOnce(kube::Error) -> ActError {
    let what = what.into();
    move |source| ActError::Kube { what, source }
}

/// Replace the status of `rollout` (as read) with `status`, refused if the rollout changed since.
pub async fn write_status(
    api: &Api<Dedup2DRollout>,
    rollout: &Dedup2DRollout,
    status: &Dedup2DRolloutStatus,
) -> Result<Dedup2DRollout, ActError> {
    let name = rollout.name_any();
    let mut obj = rollout.clone();
    obj.status = Some(status.clone());
    obj.metadata.managed_fields = None;
    let pp = PostParams {
        field_manager: Some(FIELD_MANAGER.into()),
        ..Default::default()
    };
    match api.replace_status(&name, &pp, &obj).await {
        Ok(o) => Ok(o),
        Err(kube::Error::Api(s)) if s.code == 409 => Err(ActError::StaleRollout(name)),
        Err(e) => Err(kube_err(format!(
            "writing the status of Dedup2DRollout {name}"
        ))(e)),
    }
}

/// Perform one action in namespace `ns`.
pub async fn apply(client: &Client, ns: &str, action: &Action) -> Result<(), ActError> {
    let ssa = PatchParams::apply(FIELD_MANAGER).force();
    match action {
        Action::None => Ok(()),
        Action::SetWorkerImage { deployment, .. }
        | Action::SetApiImage { deployment, .. }
        | Action::SetApiRestartAnnotation { deployment, .. } => {
            // one field each: an image or the restart annotation of the pod template
            for (field, value) in action.writes() {
                apply_deployment(client, ns, deployment, &ssa, (&field, &value)).await?;
            }
            Ok(())
        }
        Action::SetConfig {
            config_map,
            include_b64,
            max_bytes,
        } => {
            let api: Api<ConfigMap> = Api::namespaced(client.clone(), ns);
            let current = api
                .get_opt(config_map)
                .await
                .map_err(kube_err(format!("reading ConfigMap {config_map}")))?
                .ok_or_else(|| ActError::Missing(format!("ConfigMap {config_map}")))?;
            let body = config_map_apply(
                config_map,
                current.resource_version().as_deref(),
                include_b64,
                max_bytes,
            );
            api.patch(config_map, &ssa, &Patch::Apply(&body))
                .await
                .map_err(kube_err(format!("applying ConfigMap {config_map}")))?;
            Ok(())
        }
        Action::SetOriginals { target, values } => match target {
            TargetObject::Deployment(name) => {
                apply_originals::<Deployment>(client, ns, name, values).await
            }
            TargetObject::ConfigMap(name) => {
                apply_originals::<ConfigMap>(client, ns, name, values).await
            }
        },
    }
}

/// Apply the originals annotation of one existing target object (its read `resourceVersion` as
/// precondition: a deleted object is not created again).
async fn apply_originals<K>(
    client: &Client,
    ns: &str,
    name: &str,
    values: &Originals,
) -> Result<(), ActError>
where
    K: Resource<Scope = NamespaceResourceScope, DynamicType = ()>
        + Clone
        + DeserializeOwned
        + std::fmt::Debug,
{
    let what = format!("{} {name}", K::kind(&()));
    let api: Api<K> = Api::namespaced(client.clone(), ns);
    let current = api
        .get_opt(name)
        .await
        .map_err(kube_err(format!("reading {what}")))?
        .ok_or_else(|| ActError::Missing(what.clone()))?;
    let rv = current.resource_version();
    let result = if values.is_empty() {
        let params = PatchParams {
            field_manager: Some(ORIGINALS_FIELD_MANAGER.into()),
            ..Default::default()
        };
        api.patch(name, &params, &Patch::Merge(originals_clear(rv.as_deref())))
            .await
    } else {
        let body = originals_apply(
            (&K::api_version(&()), &K::kind(&())),
            name,
            rv.as_deref(),
            values,
        );
        let ssa = PatchParams::apply(ORIGINALS_FIELD_MANAGER).force();
        api.patch(name, &ssa, &Patch::Apply(&body)).await
    };
    result.map_err(kube_err(format!(
        "applying {what} (its {ORIGINALS_ANNOTATION} annotation)"
    )))?;
    Ok(())
}

/// The merge patch that deletes the originals annotation, whoever owns it.
pub fn originals_clear(resource_version: Option<&str>) -> Value {
    json!({"metadata": {"resourceVersion": resource_version,
                        "annotations": {ORIGINALS_ANNOTATION: null}}})
}

/// The apply configuration of the originals annotation: exactly `values` (clearing is
/// [`originals_clear`]).
pub fn originals_apply(
    (api_version, kind): (&str, &str),
    name: &str,
    resource_version: Option<&str>,
    values: &Originals,
) -> Value {
    let mut metadata = json!({"name": name, "resourceVersion": resource_version});
    if !values.is_empty() {
        let encoded = serde_json::to_string(values).expect("a map of strings serializes");
        metadata["annotations"] = json!({ ORIGINALS_ANNOTATION: encoded });
    }
    json!({"apiVersion": api_version, "kind": kind, "metadata": metadata})
}

async fn apply_deployment(
    client: &Client,
    ns: &str,
    name: &str,
    ssa: &PatchParams,
    set: (&str, &str),
) -> Result<(), ActError> {
    let api: Api<Deployment> = Api::namespaced(client.clone(), ns);
    let current = api
        .get_opt(name)
        .await
        .map_err(kube_err(format!("reading Deployment {name}")))?
        .ok_or_else(|| ActError::Missing(format!("Deployment {name}")))?;
    let owned = managed::owned_by(current.managed_fields(), FIELD_MANAGER, |f| {
        managed::deployment_fields(name, f)
    });
    let body = deployment_apply(&current, &owned, set);
    api.patch(name, ssa, &Patch::Apply(&body))
        .await
        .map_err(kube_err(format!("applying Deployment {name}")))?;
    Ok(())
}

/// The apply configuration for a Deployment: the field `set` (a planner field id and its value) plus
/// every field in `owned` at its current value.
pub fn deployment_apply(
    current: &Deployment,
    owned: &BTreeSet<String>,
    set: (&str, &str),
) -> Value {
    let name = current.name_any();
    let template = current.spec.as_ref().map(|s| &s.template);
    let current_image = |c: &str| {
        template
            .and_then(|t| t.spec.as_ref())
            .and_then(|s| s.containers.iter().find(|x| x.name == c))
            .and_then(|x| x.image.clone())
    };
    let current_annotation = template
        .and_then(|t| t.metadata.as_ref())
        .and_then(|m| m.annotations.as_ref())
        .and_then(|a| a.get(PAYLOAD_CONFIG_ANNOTATION).cloned());

    let mut containers = vec![];
    let mut annotation = None;
    let container_names: Vec<String> = template
        .and_then(|t| t.spec.as_ref())
        .map(|s| s.containers.iter().map(|c| c.name.clone()).collect())
        .unwrap_or_default();
    for c in &container_names {
        let id = field_id::image(&name, c);
        if id == set.0 {
            containers.push(json!({"name": c, "image": set.1}));
        } else if owned.contains(&id) {
            if let Some(image) = current_image(c) {
                containers.push(json!({"name": c, "image": image}));
            }
        }
    }
    let ann_id = field_id::restart_annotation(&name);
    if ann_id == set.0 {
        annotation = Some(set.1.to_string());
    } else if owned.contains(&ann_id) {
        annotation = current_annotation;
    }

    let mut template_json = json!({});
    if let Some(a) = annotation {
        template_json["metadata"] = json!({"annotations": {PAYLOAD_CONFIG_ANNOTATION: a}});
    }
    if !containers.is_empty() {
        template_json["spec"] = json!({"containers": containers});
    }
    json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "resourceVersion": current.resource_version()},
        "spec": {"template": template_json}
    })
}

/// The apply configuration for the two payload keys of the API's ConfigMap.
pub fn config_map_apply(
    name: &str,
    resource_version: Option<&str>,
    include_b64: &str,
    max_bytes: &str,
) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": name, "resourceVersion": resource_version},
        "data": {KEY_INCLUDE_B64: include_b64, KEY_MAX_BYTES: max_bytes}
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn api_deployment() -> Deployment {
        serde_json::from_value(json!({
            "metadata": {"name": "api", "resourceVersion": "42"},
            "spec": {
                "selector": {"matchLabels": {"app": "api"}},
                "template": {
                    "metadata": {"annotations": {PAYLOAD_CONFIG_ANNOTATION: "old-hash", "x": "y"}},
                    "spec": {"containers": [
                        {"name": "api", "image": "api:2"},
                        {"name": "sidecar", "image": "side:1"}
                    ]}
                }
            }
        }))
        .unwrap()
    }

    #[test]
    fn image_apply_names_only_that_container() {
        let body = deployment_apply(
            &api_deployment(),
            &BTreeSet::new(),
            (&field_id::image("api", "api"), "api:3"),
        );
        assert_eq!(
            body,
            json!({
                "apiVersion": "apps/v1", "kind": "Deployment",
                "metadata": {"name": "api", "resourceVersion": "42"},
                "spec": {"template": {"spec": {"containers": [{"name": "api", "image": "api:3"}]}}}
            })
        );
    }

    #[test]
    fn annotation_apply_restates_the_owned_image() {
        let owned = BTreeSet::from([field_id::image("api", "api")]);
        let body = deployment_apply(
            &api_deployment(),
            &owned,
            (&field_id::restart_annotation("api"), "new-hash"),
        );
        assert_eq!(
            body["spec"]["template"],
            json!({
                "metadata": {"annotations": {PAYLOAD_CONFIG_ANNOTATION: "new-hash"}},
                "spec": {"containers": [{"name": "api", "image": "api:2"}]}
            })
        );
    }

    #[test]
    fn image_apply_restates_the_owned_annotation() {
        let owned = BTreeSet::from([field_id::restart_annotation("api")]);
        let body = deployment_apply(
            &api_deployment(),
            &owned,
            (&field_id::image("api", "sidecar"), "side:2"),
        );
        assert_eq!(
            body["spec"]["template"],
            json!({
                "metadata": {"annotations": {PAYLOAD_CONFIG_ANNOTATION: "old-hash"}},
                "spec": {"containers": [{"name": "sidecar", "image": "side:2"}]}
            })
        );
    }

    #[test]
    fn originals_apply_states_exactly_the_entries() {
        let values = Originals::from([
            (field_id::image("w", "worker"), Some("reg/w:1".to_string())),
            (field_id::restart_annotation("w"), None),
        ]);
        let body = originals_apply(("apps/v1", "Deployment"), "w", Some("9"), &values);
        assert_eq!(body["metadata"]["resourceVersion"], "9");
        let encoded = body["metadata"]["annotations"][ORIGINALS_ANNOTATION]
            .as_str()
            .unwrap();
        assert_eq!(
            crate::operator::snapshot::parse_originals(Some(encoded)),
            values,
            "the observer reads back what the actor wrote"
        );
        assert!(body.get("spec").is_none(), "metadata only: no pod restarts");
        assert_eq!(
            originals_clear(Some("3")),
            json!({"metadata": {"resourceVersion": "3",
                                "annotations": {ORIGINALS_ANNOTATION: null}}})
        );
    }

    #[test]
    fn config_map_apply_sets_both_keys() {
        assert_eq!(
            config_map_apply("cfg", Some("7"), "0", "10"),
            json!({"apiVersion": "v1", "kind": "ConfigMap",
                   "metadata": {"name": "cfg", "resourceVersion": "7"},
                   "data": {KEY_INCLUDE_B64: "0", KEY_MAX_BYTES: "10"}})
        );
    }
}
