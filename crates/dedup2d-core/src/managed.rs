//! Who owns the fields the operator writes, read from `metadata.managedFields`.
//!
//! The observer uses it to name the other writer in an `ExternalModification` message; the actor uses
//! it to re-state every field `dedup2d-operator` already owns on an object in each server-side apply
//! (an apply that leaves out a field its manager owns would remove that field).
//!
//! Field ids are the planner's ([`crate::plan::field_id`]).

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ManagedFieldsEntry;
use serde_json::{json, Map, Value};

use crate::{crd::PAYLOAD_CONFIG_ANNOTATION, plan::field_id};

/// The operator-relevant fields of one `fieldsV1` tree of a Deployment: container images and the
/// payload-config pod-template annotation.
pub fn deployment_fields(deployment: &str, fields_v1: &Value) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let template = &fields_v1["f:spec"]["f:template"];
    if let Some(containers) = template["f:spec"]["f:containers"].as_object() {
        for (key, fields) in containers {
            let Some(name) = container_name(key) else {
                continue;
            };
            if fields.get("f:image").is_some() {
                out.insert(field_id::image(deployment, &name));
            }
        }
    }
    let annotation = format!("f:{PAYLOAD_CONFIG_ANNOTATION}");
    if template["f:metadata"]["f:annotations"]
        .get(&annotation)
        .is_some()
    {
        out.insert(field_id::restart_annotation(deployment));
    }
    out
}

/// The operator-relevant fields of one `fieldsV1` tree of a ConfigMap: the `data` keys in `keys`.
pub fn config_map_fields(config_map: &str, keys: &[&str], fields_v1: &Value) -> BTreeSet<String> {
    keys.iter()
        .filter(|k| fields_v1["f:data"].get(format!("f:{k}")).is_some())
        .map(|k| field_id::config_key(config_map, k))
        .collect()
}

/// Of one `fieldsV1` tree of a Deployment, only what [`deployment_fields`] reads (`None`: none of
/// it). A watch cache keeps this instead of the whole tree: parsed, a tree costs a map allocation
/// per node, tens of KiB per entry.
pub fn deployment_fields_kept(fields_v1: &Value) -> Option<Value> {
    let template = &fields_v1["f:spec"]["f:template"];
    let mut kept = Map::new();
    if let Some(containers) = template["f:spec"]["f:containers"].as_object() {
        let images: Map<String, Value> = containers
            .iter()
            .filter(|(_, fields)| fields.get("f:image").is_some())
            .map(|(key, _)| (key.clone(), json!({"f:image": {}})))
            .collect();
        if !images.is_empty() {
            kept.insert("f:spec".into(), json!({"f:containers": images}));
        }
    }
    let annotation = format!("f:{PAYLOAD_CONFIG_ANNOTATION}");
    if template["f:metadata"]["f:annotations"]
        .get(&annotation)
        .is_some()
    {
        kept.insert(
            "f:metadata".into(),
            json!({"f:annotations": {annotation: {}}}),
        );
    }
    (!kept.is_empty()).then(|| json!({"f:spec": {"f:template": kept}}))
}

/// Of one `fieldsV1` tree of a ConfigMap, only the `data` keys in `keys` (`None`: none of them).
pub fn config_map_fields_kept(keys: &[&str], fields_v1: &Value) -> Option<Value> {
    let data: Map<String, Value> = keys
        .iter()
        .map(|k| format!("f:{k}"))
        .filter(|k| fields_v1["f:data"].get(k).is_some())
        .map(|k| (k, json!({})))
        .collect();
    (!data.is_empty()).then(|| json!({"f:data": data}))
}

/// `k:{"name":"worker"}` -> `worker`.
fn container_name(key: &str) -> Option<String> {
    let json = key.strip_prefix("k:")?;
    let v: Value = serde_json::from_str(json).ok()?;
    v.get("name")?.as_str().map(str::to_string)
}

/// For each field, the manager other than `ours` that owns it (the most recent entry wins); fields only
/// `ours` owns map to `ours`. `fields_of` extracts the relevant field ids from one entry's tree.
pub fn managers(
    entries: &[ManagedFieldsEntry],
    ours: &str,
    fields_of: impl Fn(&Value) -> BTreeSet<String>,
) -> BTreeMap<String, String> {
    let mut sorted: Vec<&ManagedFieldsEntry> = entries
        .iter()
        .filter(|e| e.subresource.as_deref().unwrap_or("").is_empty())
        .collect();
    // Oldest first, ours before others at equal times, so later inserts win.
    sorted.sort_by_key(|e| {
        (
            e.time.as_ref().map_or(0, |t| t.0.as_second()),
            e.manager.as_deref() != Some(ours),
        )
    });
    let mut out = BTreeMap::new();
    for e in sorted {
        let (Some(manager), Some(fields)) = (&e.manager, &e.fields_v1) else {
            continue;
        };
        for f in fields_of(&fields.0) {
            if manager != ours || !out.contains_key(&f) {
                out.insert(f, manager.clone());
            }
        }
    }
    out
}

/// The fields `manager` owns (through any of its entries).
pub fn owned_by(
    entries: &[ManagedFieldsEntry],
    manager: &str,
    fields_of: impl Fn(&Value) -> BTreeSet<String>,
) -> BTreeSet<String> {
    entries
        .iter()
        .filter(|e| e.manager.as_deref() == Some(manager))
        .filter(|e| e.subresource.as_deref().unwrap_or("").is_empty())
        .filter_map(|e| e.fields_v1.as_ref())
        .flat_map(|f| fields_of(&f.0))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{FieldsV1, Time};
    use k8s_openapi::jiff::Timestamp;
    use serde_json::json;

    fn entry(manager: &str, secs: i64, fields: Value) -> ManagedFieldsEntry {
        ManagedFieldsEntry {
            manager: Some(manager.into()),
            operation: Some("Apply".into()),
            time: Some(Time(Timestamp::from_second(secs).unwrap())),
            fields_v1: Some(FieldsV1(fields)),
            fields_type: Some("FieldsV1".into()),
            ..Default::default()
        }
    }

    fn image_tree(container: &str) -> Value {
        json!({"f:spec": {"f:template": {"f:spec": {"f:containers": {
            format!("k:{{\"name\":\"{container}\"}}"): {".": {}, "f:image": {}, "f:name": {}}
        }}}}})
    }

    #[test]
    fn reads_images_and_the_restart_annotation() {
        let tree = json!({"f:spec": {"f:template": {
            "f:metadata": {"f:annotations": {"f:dedup2d.io/payload-config": {}, "f:other": {}}},
            "f:spec": {"f:containers": {
                "k:{\"name\":\"api\"}": {"f:image": {}},
                "k:{\"name\":\"sidecar\"}": {"f:env": {}}
            }}
        }}});
        let got = deployment_fields("api", &tree);
        assert_eq!(
            got,
            BTreeSet::from([
                field_id::image("api", "api"),
                field_id::restart_annotation("api")
            ])
        );
    }

    /// What kubectl's client-side apply owns on a Deployment, plus our annotation and a sidecar.
    fn kubectl_tree() -> Value {
        json!({"f:metadata": {"f:annotations": {".": {}, "f:kubectl.kubernetes.io/last-applied-configuration": {}}},
        "f:spec": {"f:progressDeadlineSeconds": {}, "f:replicas": {}, "f:revisionHistoryLimit": {},
            "f:selector": {}, "f:strategy": {"f:rollingUpdate": {".": {}, "f:maxSurge": {}, "f:maxUnavailable": {}}, "f:type": {}},
            "f:template": {
                "f:metadata": {"f:annotations": {".": {}, "f:dedup2d.io/payload-config": {}}, "f:labels": {".": {}, "f:app": {}}},
                "f:spec": {"f:containers": {
                    "k:{\"name\":\"api\"}": {".": {}, "f:env": {".": {}, "k:{\"name\":\"A\"}": {".": {}, "f:name": {}, "f:value": {}}},
                        "f:image": {}, "f:imagePullPolicy": {}, "f:name": {}, "f:resources": {}},
                    "k:{\"name\":\"sidecar\"}": {".": {}, "f:name": {}, "f:resources": {}}
                }, "f:dnsPolicy": {}, "f:restartPolicy": {}, "f:schedulerName": {}}
            }}})
    }

    #[test]
    fn a_kept_tree_reads_the_same_and_keeps_only_that() {
        let trees = [
            kubectl_tree(),
            image_tree("worker"),
            json!({"f:spec": {"f:template": {"f:metadata": {"f:annotations": {"f:dedup2d.io/payload-config": {}}}}}}),
            json!({"f:spec": {"f:replicas": {}}}),
            json!({}),
        ];
        for tree in trees {
            let kept = deployment_fields_kept(&tree);
            let read = deployment_fields("d", &tree);
            assert_eq!(
                kept.as_ref()
                    .map_or_else(BTreeSet::new, |k| deployment_fields("d", k)),
                read,
                "{tree}"
            );
            assert_eq!(kept.is_none(), read.is_empty(), "{tree}");
        }
        let kept = deployment_fields_kept(&kubectl_tree()).unwrap();
        assert!(
            kept.to_string().len() < kubectl_tree().to_string().len() / 4,
            "{kept}"
        );
        let tree = json!({"f:data": {".": {}, "f:A": {}, "f:B": {}, "f:OTHER": {}}});
        let kept = config_map_fields_kept(&["A", "C"], &tree).unwrap();
        assert_eq!(kept, json!({"f:data": {"f:A": {}}}));
        assert_eq!(
            config_map_fields("cm", &["A", "C"], &kept),
            config_map_fields("cm", &["A", "C"], &tree)
        );
        assert_eq!(config_map_fields_kept(&["C"], &tree), None);
    }

    #[test]
    fn reads_config_map_keys() {
        let tree = json!({"f:data": {"f:A": {}, "f:B": {}}});
        assert_eq!(
            config_map_fields("cm", &["A", "C"], &tree),
            BTreeSet::from([field_id::config_key("cm", "A")])
        );
    }

    #[test]
    fn names_the_other_writer() {
        let entries = vec![
            entry("dedup2d-operator", 100, image_tree("worker")),
            entry("kubectl-set", 200, image_tree("worker")),
        ];
        let m = managers(&entries, "dedup2d-operator", |f| deployment_fields("w", f));
        assert_eq!(
            m.get(&field_id::image("w", "worker")).map(String::as_str),
            Some("kubectl-set")
        );
        // Only ours: ours.
        let m = managers(&entries[..1], "dedup2d-operator", |f| {
            deployment_fields("w", f)
        });
        assert_eq!(
            m.get(&field_id::image("w", "worker")).map(String::as_str),
            Some("dedup2d-operator")
        );
    }

    #[test]
    fn owned_fields_ignore_status_and_other_managers() {
        let mut status = entry("dedup2d-operator", 1, image_tree("x"));
        status.subresource = Some("status".into());
        let entries = vec![
            entry("dedup2d-operator", 1, image_tree("api")),
            entry("gitops", 1, image_tree("sidecar")),
            status,
        ];
        assert_eq!(
            owned_by(&entries, "dedup2d-operator", |f| deployment_fields("d", f)),
            BTreeSet::from([field_id::image("d", "api")])
        );
    }
}
