//! Smoke test of the local control plane: it must behave like a real cluster in everything the
//! operator relies on (scheduling and readiness, Deployment rollouts through ReplicaSets, the
//! progress deadline, ConfigMaps not restarting pods, server-side apply, status subresources).

use std::collections::BTreeSet;
use std::time::Duration;

use crate::support::fleet::rolled_out;
use crate::support::kube::TestNamespace;
use crate::support::operator::wait_established;
use crate::support::poll::eventually;
use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use k8s_openapi::api::core::v1::{ConfigMap, Pod};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{ListParams, Patch, PatchParams};
use kube::core::{ApiResource, DynamicObject, GroupVersionKind};
use kube::{Api, ResourceExt};
use serde_json::json;

const WAIT: Duration = Duration::from_secs(90);

fn deployment(name: &str, image: &str, replicas: i32) -> serde_json::Value {
    json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": name},
        "spec": {
            "replicas": replicas,
            "progressDeadlineSeconds": 15,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {
                    "containers": [{"name": "main", "image": image}],
                    "tolerations": [{"key": "kwok.x-k8s.io/node", "operator": "Exists", "effect": "NoSchedule"}]
                }
            }
        }
    })
}

async fn pods_of(ns: &TestNamespace, app: &str) -> Vec<Pod> {
    ns.api::<Pod>()
        .list(&ListParams::default().labels(&format!("app={app}")))
        .await
        .unwrap()
        .items
}

fn ready(p: &Pod) -> bool {
    p.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

fn image(p: &Pod) -> String {
    p.spec.as_ref().unwrap().containers[0]
        .image
        .clone()
        .unwrap_or_default()
}

#[tokio::test]
async fn deployments_roll_like_in_a_real_cluster() {
    let ns = TestNamespace::new("smoke").await;
    let deploys = ns.api::<Deployment>();
    let ssa = PatchParams::apply("dedup2d-smoke").force();
    deploys
        .patch(
            "web",
            &ssa,
            &Patch::Apply(deployment("web", "example/web:1", 3)),
        )
        .await
        .unwrap();

    // Pods are scheduled onto the fake nodes and become Ready; the Deployment converges.
    eventually("3 ready pods of web:1", WAIT, || async {
        let pods = pods_of(&ns, "web").await;
        (pods.len() == 3
            && pods
                .iter()
                .all(|p| ready(p) && p.spec.as_ref().unwrap().node_name.is_some()))
        .then_some(())
    })
    .await;
    eventually("web rolled out", WAIT, || async {
        rolled_out(&deploys.get("web").await.unwrap()).then_some(())
    })
    .await;
    let first_pods: BTreeSet<String> = pods_of(&ns, "web")
        .await
        .iter()
        .map(|p| p.name_any())
        .collect();

    // A new image goes through a new ReplicaSet and replaces every pod.
    deploys
        .patch(
            "web",
            &ssa,
            &Patch::Apply(deployment("web", "example/web:2", 3)),
        )
        .await
        .unwrap();
    let d = deploys.get("web").await.unwrap();
    assert_eq!(d.metadata.generation, Some(2));
    eventually("web:2 rolled out, no old pod left", WAIT, || async {
        let d = deploys.get("web").await.unwrap();
        let pods = pods_of(&ns, "web").await;
        (rolled_out(&d)
            && pods.len() == 3
            && pods.iter().all(|p| image(p) == "example/web:2" && ready(p)))
        .then_some(())
    })
    .await;
    let rs = ns
        .api::<ReplicaSet>()
        .list(&ListParams::default().labels("app=web"))
        .await
        .unwrap();
    assert_eq!(rs.items.len(), 2, "one ReplicaSet per template");
    let now: BTreeSet<String> = pods_of(&ns, "web")
        .await
        .iter()
        .map(|p| p.name_any())
        .collect();
    assert!(first_pods.is_disjoint(&now), "every pod was replaced");
    let d = deploys.get("web").await.unwrap();
    assert!(d.status.unwrap().observed_generation.unwrap() >= 2);
}

#[tokio::test]
async fn an_unschedulable_template_hits_the_progress_deadline() {
    let ns = TestNamespace::new("smoke").await;
    let deploys = ns.api::<Deployment>();
    let ssa = PatchParams::apply("dedup2d-smoke").force();
    deploys
        .patch(
            "stuck",
            &ssa,
            &Patch::Apply(deployment("stuck", "example/stuck:1", 2)),
        )
        .await
        .unwrap();
    eventually("stuck:1 rolled out", WAIT, || async {
        rolled_out(&deploys.get("stuck").await.unwrap()).then_some(())
    })
    .await;
    let mut bad = deployment("stuck", "example/stuck:2", 2);
    bad["spec"]["template"]["spec"]["nodeSelector"] = json!({"dedup2d.io/no-such-node": "true"});
    deploys
        .patch("stuck", &ssa, &Patch::Apply(bad))
        .await
        .unwrap();
    let reason = eventually("ProgressDeadlineExceeded", WAIT, || async {
        let d = deploys.get("stuck").await.unwrap();
        d.status
            .and_then(|s| s.conditions)
            .and_then(|cs| cs.into_iter().find(|c| c.type_ == "Progressing"))
            .and_then(|c| c.reason)
            .filter(|r| r == "ProgressDeadlineExceeded")
    })
    .await;
    assert_eq!(reason, "ProgressDeadlineExceeded");
    let pending = pods_of(&ns, "stuck")
        .await
        .into_iter()
        .filter(|p| image(p) == "example/stuck:2")
        .all(|p| p.status.and_then(|s| s.phase).as_deref() == Some("Pending"));
    assert!(pending, "new pods stay Pending");
    // The old pods keep serving.
    assert_eq!(
        pods_of(&ns, "stuck")
            .await
            .iter()
            .filter(|p| image(p) == "example/stuck:1" && ready(p))
            .count(),
        2
    );
}

#[tokio::test]
async fn a_configmap_change_does_not_restart_pods() {
    let ns = TestNamespace::new("smoke").await;
    let cms = ns.api::<ConfigMap>();
    let ssa = PatchParams::apply("dedup2d-smoke").force();
    let cm = |v: &str| json!({"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"cfg"},"data":{"DEDUP2D_JOB_PAYLOAD_INCLUDE_BYTES_B64": v}});
    cms.patch("cfg", &ssa, &Patch::Apply(cm("1")))
        .await
        .unwrap();
    let mut d = deployment("api", "example/api:1", 2);
    d["spec"]["template"]["spec"]["containers"][0]["envFrom"] =
        json!([{"configMapRef": {"name": "cfg"}}]);
    ns.api::<Deployment>()
        .patch("api", &ssa, &Patch::Apply(d))
        .await
        .unwrap();
    eventually("api ready", WAIT, || async {
        let pods = pods_of(&ns, "api").await;
        (pods.len() == 2 && pods.iter().all(ready)).then_some(())
    })
    .await;
    let before: BTreeSet<String> = pods_of(&ns, "api")
        .await
        .iter()
        .map(|p| p.uid().unwrap())
        .collect();
    cms.patch("cfg", &ssa, &Patch::Apply(cm("0")))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_secs(5)).await;
    let after: BTreeSet<String> = pods_of(&ns, "api")
        .await
        .iter()
        .map(|p| p.uid().unwrap())
        .collect();
    assert_eq!(
        before, after,
        "pods were not restarted by the ConfigMap edit"
    );
    let d = ns.api::<Deployment>().get("api").await.unwrap();
    assert_eq!(d.metadata.generation, Some(1));
}

#[tokio::test]
async fn server_side_apply_and_status_subresource_of_a_crd() {
    let ns = TestNamespace::new("smoke").await;
    let crds: Api<CustomResourceDefinition> = Api::all(ns.client.clone());
    let crd: CustomResourceDefinition = serde_json::from_value(json!({
        "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
        "metadata": {"name": "widgets.smoke.dedup2d.io"},
        "spec": {
            "group": "smoke.dedup2d.io", "scope": "Namespaced",
            "names": {"plural": "widgets", "singular": "widget", "kind": "Widget"},
            "versions": [{"name": "v1", "served": true, "storage": true,
                "subresources": {"status": {}},
                "schema": {"openAPIV3Schema": {"type": "object", "properties": {
                    "spec": {"type": "object", "properties": {"size": {"type": "integer", "minimum": 0}}},
                    "status": {"type": "object", "properties": {"phase": {"type": "string"}}}}}}}]
        }
    }))
    .unwrap();
    crds.patch(
        "widgets.smoke.dedup2d.io",
        &PatchParams::apply("dedup2d-smoke").force(),
        &Patch::Apply(&crd),
    )
    .await
    .unwrap();
    wait_established(&crds, "widgets.smoke.dedup2d.io").await;

    let gvk = GroupVersionKind::gvk("smoke.dedup2d.io", "v1", "Widget");
    let widgets: Api<DynamicObject> =
        Api::namespaced_with(ns.client.clone(), &ns.name, &ApiResource::from_gvk(&gvk));
    let obj = json!({"apiVersion": "smoke.dedup2d.io/v1", "kind": "Widget", "metadata": {"name": "w"}, "spec": {"size": 3}});
    let ssa = PatchParams::apply("dedup2d-operator");
    widgets.patch("w", &ssa, &Patch::Apply(&obj)).await.unwrap();
    // The schema is enforced by the API server.
    let bad = json!({"apiVersion": "smoke.dedup2d.io/v1", "kind": "Widget", "metadata": {"name": "w"}, "spec": {"size": -1}});
    let err = widgets
        .patch("w", &ssa, &Patch::Apply(&bad))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("spec.size"), "{err}");
    // A status write through the subresource does not touch spec, and spec writes ignore status.
    let status = json!({"apiVersion": "smoke.dedup2d.io/v1", "kind": "Widget", "metadata": {"name": "w"}, "status": {"phase": "Ready"}});
    widgets
        .patch_status("w", &ssa, &Patch::Apply(&status))
        .await
        .unwrap();
    let w = widgets.get("w").await.unwrap();
    assert_eq!(w.data["status"]["phase"], json!("Ready"));
    assert_eq!(w.data["spec"]["size"], json!(3));
    let managers: BTreeSet<(String, Option<String>)> = w
        .managed_fields()
        .iter()
        .map(|m| (m.manager.clone().unwrap_or_default(), m.subresource.clone()))
        .collect();
    assert!(
        managers.contains(&("dedup2d-operator".into(), None)),
        "{managers:?}"
    );
    assert!(
        managers.contains(&("dedup2d-operator".into(), Some("status".into()))),
        "{managers:?}"
    );
    // Another manager changing our field is a conflict unless forced.
    let theirs = json!({"apiVersion": "smoke.dedup2d.io/v1", "kind": "Widget", "metadata": {"name": "w"}, "spec": {"size": 9}});
    let err = widgets
        .patch(
            "w",
            &PatchParams::apply("someone-else"),
            &Patch::Apply(&theirs),
        )
        .await
        .unwrap_err();
    assert!(err.to_string().to_lowercase().contains("conflict"), "{err}");
}
