//! What only the cluster can tell: a missing target, an API that does not read the ConfigMap, Redis
//! unreachable. Each becomes `Stalled=True` with a clear reason, the operator keeps running (no crash
//! loop), and the rollout goes on by itself once the world is fixed.

use std::time::Duration;

use dedup2d::operator::crd::{Dedup2DRollout, Phase};
use k8s_openapi::api::{apps::v1::Deployment, core::v1::ConfigMap};
use kube::api::{Patch, PatchParams};
use serde_json::json;

use crate::support::{
    fleet::*, kube::TestNamespace, poll::eventually, process::free_port, redis::RedisServer,
    scenario::Scenario,
};

/// Waits for `Stalled=True` with `reason` and returns its message.
pub(crate) async fn stalled(ns: &TestNamespace, name: &str, reason: &str) -> String {
    let api = ns.api::<Dedup2DRollout>();
    eventually(&format!("{name} Stalled with {reason}"), WAIT, || async {
        let r = api.get(name).await.ok()?;
        let c = r
            .status?
            .conditions
            .into_iter()
            .find(|c| c.type_ == "Stalled")?;
        (c.status == "True" && c.reason == reason).then_some(c.message)
    })
    .await
}

#[tokio::test]
async fn a_missing_worker_deployment_stalls_until_it_exists() {
    let (s, op) = Scenario::builder("op-missing")
        .workers(&[("worker-a", 1)])
        .run("r", rollout_spec(&["worker-a", "worker-late"], json!({})))
        .await;
    let ns = &s.ns;
    let message = stalled(ns, "r", "TargetMissing").await;
    assert!(
        message.contains("worker Deployment worker-late not found"),
        "{message}"
    );
    // Nothing was written while stalled.
    let cm = ns.api::<ConfigMap>().get(CM).await.unwrap();
    assert_eq!(cm.data.unwrap()[INCLUDE], "0");
    // Re-checked on requeue / on the Deployment's watch event: it goes on by itself.
    ns.api::<Deployment>()
        .patch(
            "worker-late",
            &PatchParams::apply("e2e-fleet"),
            &Patch::Apply(deployment("worker-late", "worker", OLD_IMAGE, 1)),
        )
        .await
        .unwrap();
    s.wait("r", Phase::Completed).await;
    assert!(
        !op.log_text().contains("panicked"),
        "the operator did not crash"
    );
}

#[tokio::test]
async fn an_api_that_does_not_read_the_config_map_stalls() {
    let s = Scenario::builder("op-noread")
        .workers(&[("worker-a", 1)])
        .fleet()
        .await;
    let ns = &s.ns;
    // The API reads another ConfigMap: editing ours would change nothing.
    let mut api = deployment("api", "api", API_OLD, 2);
    api["spec"]["template"]["spec"]["containers"][0]["envFrom"] =
        json!([{"configMapRef": {"name": "something-else"}}]);
    ns.api::<Deployment>()
        .patch(
            "api",
            &PatchParams::apply("e2e-fleet").force(),
            &Patch::Apply(api),
        )
        .await
        .unwrap();
    let _op = s.run("r", rollout_spec(&["worker-a"], json!({}))).await;
    let message = stalled(ns, "r", "ApiDoesNotReadConfigMap").await;
    assert!(
        message.contains("API Deployment api does not read ConfigMap dedup2d-config"),
        "{message}"
    );
    // Fixed by the owner of the API Deployment: the rollout proceeds.
    ns.api::<Deployment>()
        .patch(
            "api",
            &PatchParams::apply("e2e-fleet").force(),
            &Patch::Apply(deployment("api", "api", API_OLD, 2)),
        )
        .await
        .unwrap();
    s.wait("r", Phase::Completed).await;
}

#[tokio::test]
async fn redis_unreachable_holds_the_drain() {
    let (s, op) = Scenario::builder("op-noredis")
        .redis_url(format!("redis://127.0.0.1:{}/0", free_port()))
        .workers(&[("worker-a", 1)])
        .run("r", rollout_spec(&["worker-a"], json!({})))
        .await;
    let ns = &s.ns;
    let message = stalled(ns, "r", "RedisUnreachable").await;
    assert!(message.contains("Redis unreachable"), "{message}");
    let r = ns.api::<Dedup2DRollout>().get("r").await.unwrap();
    let st = r.status.unwrap();
    assert_eq!(
        st.phase,
        Some(Phase::Draining),
        "the phase is held, not advanced"
    );
    let safe = st
        .conditions
        .iter()
        .find(|c| c.type_ == "RollbackSafe")
        .unwrap();
    assert_eq!(
        (safe.status.as_str(), safe.reason.as_str()),
        ("Unknown", "RedisUnreachable")
    );
    tokio::time::sleep(Duration::from_secs(3)).await;
    let r = ns.api::<Dedup2DRollout>().get("r").await.unwrap();
    assert_eq!(r.status.unwrap().phase, Some(Phase::Draining));

    // Redis back (here: the URL fixed in the ConfigMap): the drain completes.
    let redis = RedisServer::start();
    ns.api::<ConfigMap>()
        .patch(
            CM,
            &PatchParams::apply("e2e-fleet-url").force(),
            &Patch::Apply(
                json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": CM},
                                 "data": {"DEDUP2D_REDIS_URL": redis.url()}}),
            ),
        )
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    wait_phase(ns, "r", Phase::Completed, Duration::from_secs(60)).await;
    assert!(!op.log_text().contains("panicked"));
}

/// Another writer changes a worker image the operator set: the rollout holds with
/// `ExternalModification`, naming the field and the other manager (read from managedFields).
#[tokio::test]
async fn another_writer_changing_an_image_holds_the_rollout() {
    let spec = rollout_spec(&["worker-a"], json!({"dualWrite": {"soak": "10m"}}));
    let (s, _op) = Scenario::builder("op-extmod")
        .workers(&[("worker-a", 2)])
        .run("r", spec)
        .await;
    let ns = &s.ns;
    s.wait("r", Phase::Soaking).await;
    // `kubectl set image`-style update under another field manager.
    let patch = json!({"spec": {"template": {"spec": {"containers": [{"name": "worker", "image": "someone/else:1"}]}}}});
    ns.api::<Deployment>()
        .patch(
            "worker-a",
            &PatchParams {
                field_manager: Some("kubectl-set".into()),
                ..Default::default()
            },
            &Patch::Strategic(patch),
        )
        .await
        .unwrap();
    let message = stalled(ns, "r", "ExternalModification").await;
    assert!(
        message.contains("Deployment/worker-a/containers/worker/image")
            && message.contains("by kubectl-set")
            && message.contains("someone/else:1"),
        "{message}"
    );
    // Held: the operator does not fight back.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let d = ns.api::<Deployment>().get("worker-a").await.unwrap();
    assert_eq!(template_image(&d), "someone/else:1");
}
