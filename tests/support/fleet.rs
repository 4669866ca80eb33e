//! The fleet an operator e2e test rolls: a small set of worker and API Deployments on the kwok
//! nodes reading one ConfigMap, the rollout applied to it, and reading and poking them.

use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use k8s_openapi::api::{
    apps::v1::Deployment,
    authentication::v1::{TokenRequest, TokenRequestSpec},
    core::v1::{ConfigMap, Pod, ServiceAccount},
};
use kube::{
    api::{ListParams, Patch, PatchParams, PostParams},
    config::Kubeconfig,
};
use serde_json::{json, Value};

use dedup2d::operator::crd::{Dedup2DRollout, Dedup2DRolloutStatus, Phase, ORIGINALS_ANNOTATION};

use super::kube::TestNamespace;
use super::poll::eventually;

pub const CM: &str = "dedup2d-config";
pub const INCLUDE: &str = "DEDUP2D_JOB_PAYLOAD_INCLUDE_BYTES_B64";
pub const MAX_BYTES: &str = "DEDUP2D_JOB_PAYLOAD_BYTES_B64_MAX_BYTES";
pub const OLD_IMAGE: &str = "registry.example.com/cad-ml-platform/dedup2d-worker:2.4.0";
pub const NEW_IMAGE: &str = "registry.example.com/dedup2d:0.1.0";
pub const API_OLD: &str = "registry.example.com/cad-ml-platform/dedup2d-api:2.4.0";
pub const API_NEW: &str = "registry.example.com/dedup2d:0.1.0-api";
pub const WAIT: Duration = Duration::from_secs(120);

/// A Deployment on the kwok nodes reading the ConfigMap.
pub fn deployment(name: &str, container: &str, image: &str, replicas: i32) -> Value {
    json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": name},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {
                    "containers": [{"name": container, "image": image,
                                    "envFrom": [{"configMapRef": {"name": CM}}]}],
                    "tolerations": [{"key": "kwok.x-k8s.io/node", "operator": "Exists", "effect": "NoSchedule"}]
                }
            }
        }
    })
}

/// The fleet: the ConfigMap, worker Deployments `(name, replicas)` on [`OLD_IMAGE`], and `api` (2
/// replicas on [`API_OLD`]), applied by manager `e2e-fleet`, rolled out.
pub async fn fleet(
    ns: &TestNamespace,
    redis_url: &str,
    include_b64: &str,
    workers: &[(&str, i32)],
) {
    let ssa = PatchParams::apply("e2e-fleet").force();
    let cm = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": CM}, "data": {
        "DEDUP2D_REDIS_URL": redis_url,
        "DEDUP2D_REDIS_KEY_PREFIX": "dedup2d",
        INCLUDE: include_b64,
        MAX_BYTES: "10485760",
    }});
    ns.api::<ConfigMap>()
        .patch(CM, &ssa, &Patch::Apply(&cm))
        .await
        .unwrap();
    let deploys = ns.api::<Deployment>();
    for (name, replicas) in workers {
        deploys
            .patch(
                name,
                &ssa,
                &Patch::Apply(deployment(name, "worker", OLD_IMAGE, *replicas)),
            )
            .await
            .unwrap();
    }
    deploys
        .patch(
            "api",
            &ssa,
            &Patch::Apply(deployment("api", "api", API_OLD, 2)),
        )
        .await
        .unwrap();
    for name in workers.iter().map(|w| w.0).chain(["api"]) {
        eventually(&format!("{name} rolled out"), WAIT, || async {
            rolled_out(&deploys.get(name).await.ok()?).then_some(())
        })
        .await;
    }
}

/// kubectl's rollout-status test.
pub fn rolled_out(d: &Deployment) -> bool {
    let gen = d.metadata.generation.unwrap_or(0);
    let want = d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
    let Some(s) = d.status.as_ref() else {
        return false;
    };
    s.observed_generation.unwrap_or(0) >= gen
        && s.updated_replicas.unwrap_or(0) == want
        && s.replicas.unwrap_or(0) == want
        && s.available_replicas.unwrap_or(0) >= want
}

pub fn template_image(d: &Deployment) -> String {
    d.spec
        .as_ref()
        .unwrap()
        .template
        .spec
        .as_ref()
        .unwrap()
        .containers[0]
        .image
        .clone()
        .unwrap_or_default()
}

pub fn template_annotation(d: &Deployment, key: &str) -> Option<String> {
    d.spec
        .as_ref()?
        .template
        .metadata
        .as_ref()?
        .annotations
        .as_ref()?
        .get(key)
        .cloned()
}

/// The rollout spec the tests start from, with `changes` merged in (RFC 7386: objects merge, `null`
/// removes a field): `workers` to [`NEW_IMAGE`], the API Deployment `api` reading [`CM`] with no
/// image, dual-write on without a soak, the default drain.
pub fn rollout_spec(workers: &[&str], changes: Value) -> Value {
    let mut spec = json!({
        "workers": workers.iter().map(|w| json!({"deployment": w, "image": NEW_IMAGE})).collect::<Vec<_>>(),
        "api": {"deployment": "api", "configMap": CM},
        "dualWrite": {"enabled": true, "soak": "0"},
    });
    merge(&mut spec, changes);
    spec
}

/// [`rollout_spec`] of a whole upgrade: the API to [`API_NEW`] as well, a soak of `soak`, the
/// Observe drain.
pub fn upgrade_spec(workers: &[&str], soak: &str) -> Value {
    rollout_spec(
        workers,
        json!({"api": {"image": API_NEW}, "dualWrite": {"soak": soak}, "drain": {"strategy": "Observe"}}),
    )
}

fn merge(target: &mut Value, changes: Value) {
    let (Value::Object(t), Value::Object(c)) = (&mut *target, &changes) else {
        *target = changes;
        return;
    };
    for (k, v) in c.clone() {
        if v.is_null() {
            t.remove(&k);
        } else {
            merge(t.entry(k).or_insert(Value::Null), v);
        }
    }
}

/// Apply a rollout (manager `e2e`).
pub async fn apply_rollout(ns: &TestNamespace, name: &str, spec: Value) {
    let obj = json!({"apiVersion": "dedup2d.io/v1alpha1", "kind": "Dedup2DRollout",
                     "metadata": {"name": name}, "spec": spec});
    ns.api::<Dedup2DRollout>()
        .patch(name, &PatchParams::apply("e2e"), &Patch::Apply(&obj))
        .await
        .unwrap_or_else(|e| panic!("apply rollout {name}: {e}"));
}

pub async fn wait_phase(
    ns: &TestNamespace,
    name: &str,
    phase: Phase,
    timeout: Duration,
) -> Dedup2DRollout {
    let api = ns.api::<Dedup2DRollout>();
    eventually(
        &format!("rollout {name} in phase {phase}"),
        timeout,
        || async {
            let r = api.get(name).await.ok()?;
            (r.status.as_ref()?.phase == Some(phase)).then_some(r)
        },
    )
    .await
}

/// Legacy payloads (`file_bytes_b64`) and file_ref-only payloads, the way the API writes them.
pub async fn write_payloads(
    redis: &mut redis::aio::ConnectionManager,
    legacy: &[&str],
    file_ref_only: &[&str],
    ttl_s: u64,
) {
    let all = legacy.iter().map(|id| (id, true));
    for (id, with_b64) in all.chain(file_ref_only.iter().map(|id| (id, false))) {
        let mut body = json!({"job_id": id, "tenant_id": "t", "file_name": "a.dxf",
            "file_ref": {"backend": "local", "path": format!("/data/{id}.dxf")}});
        if with_b64 {
            body["file_bytes_b64"] = json!("AAECAwQFBgcICQ==");
        }
        let _: () = redis::cmd("SET")
            .arg(format!("dedup2d:payload:{id}"))
            .arg(body.to_string())
            .arg("EX")
            .arg(ttl_s)
            .query_async(redis)
            .await
            .unwrap();
    }
}

/// A kubeconfig (written into `dir`) for the admin kubeconfig's cluster that authenticates as the
/// ServiceAccount `sa` of `ns` with a bound token (TokenRequest, one hour), not as the admin.
pub async fn service_account_token_kubeconfig(ns: &TestNamespace, sa: &str, dir: &Path) -> PathBuf {
    let request = TokenRequest {
        spec: TokenRequestSpec {
            expiration_seconds: Some(3600),
            ..Default::default()
        },
        ..Default::default()
    };
    let token = ns
        .api::<ServiceAccount>()
        .create_token_request(sa, &PostParams::default(), &request)
        .await
        .unwrap()
        .status
        .expect("a token")
        .token;

    // The admin kubeconfig's cluster, with the ServiceAccount as the user.
    let admin = Kubeconfig::read().expect("KUBECONFIG");
    let context = admin
        .contexts
        .iter()
        .find(|c| Some(&c.name) == admin.current_context.as_ref())
        .and_then(|c| c.context.as_ref())
        .expect("a current context");
    let cluster = admin
        .clusters
        .iter()
        .find(|c| c.name == context.cluster)
        .expect("the current context's cluster");
    let config = json!({
        "apiVersion": "v1", "kind": "Config",
        "clusters": [cluster],
        "users": [{"name": sa, "user": {"token": token}}],
        "contexts": [{"name": sa, "context": {"cluster": cluster.name, "user": sa}}],
        "current-context": sa,
    });
    let path = dir.join(format!("{sa}.kubeconfig"));
    std::fs::write(&path, config.to_string()).unwrap();
    path
}

pub async fn include(ns: &TestNamespace) -> String {
    let cm = ns.api::<ConfigMap>().get(CM).await.unwrap();
    cm.data.unwrap_or_default()[INCLUDE].clone()
}

pub async fn status(ns: &TestNamespace, name: &str) -> Dedup2DRolloutStatus {
    ns.api::<Dedup2DRollout>()
        .get(name)
        .await
        .unwrap()
        .status
        .unwrap_or_default()
}

pub async fn deploy(ns: &TestNamespace, name: &str) -> Deployment {
    ns.api::<Deployment>().get(name).await.unwrap()
}

pub async fn pod_images(ns: &TestNamespace, app: &str) -> Vec<String> {
    ns.api::<Pod>()
        .list(&ListParams::default().labels(&format!("app={app}")))
        .await
        .unwrap()
        .items
        .iter()
        .map(|p| {
            p.spec.as_ref().unwrap().containers[0]
                .image
                .clone()
                .unwrap()
        })
        .collect()
}

/// Waits until the Deployment fully rolled to `image` (template and every pod).
pub async fn wait_rolled_to(ns: &TestNamespace, name: &str, image: &str) {
    eventually(&format!("{name} rolled to {image}"), WAIT, || async {
        let d = ns.api::<Deployment>().get(name).await.ok()?;
        let pods = pod_images(ns, name).await;
        (template_image(&d) == image && rolled_out(&d) && pods.iter().all(|i| i == image))
            .then_some(())
    })
    .await
}

/// Waits until no target of the rollout `name` (its Deployments, its ConfigMap) carries the
/// `dedup2d.io/originals` annotation: a `Completed` rollout removes it with writes after the one
/// that persisted the phase (metadata only, but a Deployment's generation moves with it).
pub async fn wait_originals_released(ns: &TestNamespace, name: &str) {
    let r = ns.api::<Dedup2DRollout>().get(name).await.unwrap();
    eventually(&format!("{name}'s originals released"), WAIT, || async {
        let mut annotations = vec![];
        for w in r
            .spec
            .workers
            .iter()
            .map(|w| &w.deployment)
            .chain([&r.spec.api.deployment])
        {
            annotations.push(deploy(ns, w).await.metadata.annotations);
        }
        let cm = ns
            .api::<ConfigMap>()
            .get(&r.spec.api.config_map)
            .await
            .ok()?;
        annotations.push(cm.metadata.annotations);
        annotations
            .iter()
            .all(|a| {
                a.as_ref()
                    .is_none_or(|a| !a.contains_key(ORIGINALS_ANNOTATION))
            })
            .then_some(())
    })
    .await
}

/// Set `spec.paused` (merge patch by a person, not the GitOps manager).
pub async fn set_paused(ns: &TestNamespace, name: &str, paused: bool) {
    ns.api::<Dedup2DRollout>()
        .patch(
            name,
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"paused": paused}})),
        )
        .await
        .unwrap();
}

/// Write the one-shot request annotation.
pub async fn request(ns: &TestNamespace, name: &str, value: Option<&str>) {
    ns.api::<Dedup2DRollout>()
        .patch(
            name,
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"annotations": {"dedup2d.io/request": value}}})),
        )
        .await
        .unwrap();
}

/// The phase stays `phase` for `secs` seconds (checked every 500 ms).
pub async fn holds(ns: &TestNamespace, name: &str, phase: Phase, secs: u64) {
    let until = tokio::time::Instant::now() + Duration::from_secs(secs);
    while tokio::time::Instant::now() < until {
        let st = status(ns, name).await;
        assert_eq!(st.phase, Some(phase), "phase held: {:?}", st.message);
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}
