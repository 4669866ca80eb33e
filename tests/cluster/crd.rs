//! The real API server enforces the CRD: bad specs are refused with the message a person needs, and
//! identity fields cannot change once the rollout exists. Installing the CRD at all proves the CEL
//! rules fit the server's cost budget (the server refuses a CRD whose rules are too expensive).

use crate::support::kube::TestNamespace;
use crate::support::operator::install_crd;
use dedup2d::operator::crd::Dedup2DRollout;
use kube::api::{ApiResource, DynamicObject, Patch, PatchParams, PostParams};
use kube::Api;
use serde_json::{json, Value};

fn valid() -> Value {
    json!({
        "apiVersion": "dedup2d.io/v1alpha1", "kind": "Dedup2DRollout",
        "metadata": {"name": "r"},
        "spec": {
            "workers": [{"deployment": "dedup2d-worker", "image": "reg.example/dedup2d:2.5.0"}],
            "api": {"deployment": "dedup2d-api", "configMap": "dedup2d-config"},
            "dualWrite": {"enabled": true, "maxBytes": 1024, "soak": "30s"},
            "drain": {"strategy": "Observe", "redis": {"keyPrefix": "dedup2d"}}
        }
    })
}

/// `valid()` with `value` at the JSON pointer `at` (`None`: the field removed).
fn with(at: &str, value: Option<Value>) -> Value {
    let mut v = valid();
    let (parent, key) = at.rsplit_once('/').unwrap();
    let p = v.pointer_mut(parent).unwrap();
    match value {
        Some(x) => p[key] = x,
        None => {
            p.as_object_mut().unwrap().remove(key);
        }
    }
    v
}

#[tokio::test]
async fn invalid_specs_are_rejected_by_the_api_server() {
    let ns = TestNamespace::new("op-crd").await;
    install_crd(&ns.client).await;
    // Untyped, so values the Rust types would refuse reach the API server.
    let api: Api<DynamicObject> = Api::namespaced_with(
        ns.client.clone(),
        &ns.name,
        &ApiResource::erase::<Dedup2DRollout>(&()),
    );
    let cases: Vec<(&str, Value, &str)> = vec![
        (
            "no workers",
            with("/spec/workers", Some(json!([]))),
            "spec.workers must list at least one worker Deployment",
        ),
        (
            "a worker twice",
            with(
                "/spec/workers",
                Some(json!([{"deployment": "w", "image": "a"}, {"deployment": "w", "image": "b"}])),
            ),
            "each worker Deployment may be listed only once",
        ),
        (
            "empty image",
            with("/spec/workers/0/image", Some(json!(""))),
            "spec.workers[].image must be a non-empty image reference",
        ),
        (
            "image with a space",
            with("/spec/workers/0/image", Some(json!("reg/x: 1"))),
            "spec.workers[].image must be a non-empty image reference without spaces",
        ),
        (
            "bad Deployment name",
            with("/spec/workers/0/deployment", Some(json!("Worker_A"))),
            "spec.workers[].deployment must be a Deployment name",
        ),
        (
            "negative maxBytes",
            with("/spec/dualWrite/maxBytes", Some(json!(-1))),
            "spec.dualWrite.maxBytes must be >= 0",
        ),
        (
            "soak not a duration",
            with("/spec/dualWrite/soak", Some(json!("10 minutes"))),
            "spec.dualWrite.soak must be a duration such as 30s, 10m or 1h30m",
        ),
        (
            "fractional soak",
            with("/spec/dualWrite/soak", Some(json!("1.5h"))),
            "spec.dualWrite.soak must be a duration",
        ),
        (
            "zero progress deadline",
            with("/spec/progressDeadlineSeconds", Some(json!(0))),
            "spec.progressDeadlineSeconds must be greater than 0",
        ),
        (
            "TTL below the dedup2d minimum",
            with("/spec/drain/ttlSeconds", Some(json!(30))),
            "spec.drain.ttlSeconds must be at least 60",
        ),
        (
            "unknown drain strategy",
            with("/spec/drain/strategy", Some(json!("Sometimes"))),
            "Unsupported value: \"Sometimes\"",
        ),
        (
            "empty container name",
            with("/spec/workers/0/container", Some(json!(""))),
            "spec.workers[].container must not be empty when given",
        ),
        (
            "no api",
            with("/spec/api", None),
            "spec.api: Required value",
        ),
    ];
    let mut report = vec![];
    for (i, (what, mut obj, needle)) in cases.into_iter().enumerate() {
        obj["metadata"]["name"] = json!(format!("bad-{i}"));
        let err = api
            .create(
                &PostParams::default(),
                &serde_json::from_value(obj).unwrap_or_else(|e| panic!("{what}: {e}")),
            )
            .await;
        let err = match err {
            Ok(_) => panic!("{what}: accepted by the API server"),
            Err(e) => e.to_string(),
        };
        assert!(
            err.contains(needle),
            "{what}: expected {needle:?} in the API server's answer, got: {err}"
        );
        report.push(format!("  {what}: {needle}"));
    }
    println!("rejected by the API server:\n{}", report.join("\n"));

    // The valid spec is accepted, including the largest allowed worker list.
    let mut big = valid();
    big["metadata"]["name"] = json!("big");
    big["spec"]["workers"] = json!((0..16)
        .map(|i| json!({"deployment": format!("worker-{i}"), "image": "reg.example/dedup2d:2.5.0", "container": "worker"}))
        .collect::<Vec<_>>());
    api.create(
        &PostParams::default(),
        &serde_json::from_value(big).unwrap(),
    )
    .await
    .expect("16 workers are accepted");
    let mut too_many = valid();
    too_many["metadata"]["name"] = json!("too-many");
    too_many["spec"]["workers"] = json!((0..17)
        .map(|i| json!({"deployment": format!("worker-{i}"), "image": "i"}))
        .collect::<Vec<_>>());
    let err = api
        .create(
            &PostParams::default(),
            &serde_json::from_value(too_many).unwrap(),
        )
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("must have at most 16 items"), "{err}");
}

#[tokio::test]
async fn identity_fields_are_immutable_on_the_api_server() {
    let ns = TestNamespace::new("op-crd-imm").await;
    install_crd(&ns.client).await;
    let api = ns.api::<Dedup2DRollout>();
    let ssa = PatchParams::apply("e2e");
    api.patch("r", &ssa, &Patch::Apply(valid())).await.unwrap();
    let cases = [
        (
            with("/spec/workers/0/deployment", Some(json!("other-worker"))),
            "the worker Deployments (spec.workers[].deployment and their order) cannot be changed",
        ),
        (
            with("/spec/api/deployment", Some(json!("api2"))),
            "spec.api.deployment cannot be changed once the rollout exists",
        ),
        (
            with("/spec/api/configMap", Some(json!("cm2"))),
            "spec.api.configMap cannot be changed once the rollout exists",
        ),
        (
            with("/spec/drain/redis", Some(json!({"keyPrefix": "other"}))),
            "spec.drain.redis cannot be changed once the rollout exists",
        ),
    ];
    for (obj, needle) in cases {
        let err = api
            .patch("r", &ssa, &Patch::Apply(obj))
            .await
            .unwrap_err()
            .to_string();
        assert!(err.contains(needle), "expected {needle:?}, got: {err}");
    }
    // A new target image is an ordinary edit.
    api.patch(
        "r",
        &ssa,
        &Patch::Apply(with(
            "/spec/workers/0/image",
            Some(json!("reg.example/dedup2d:2.6.0")),
        )),
    )
    .await
    .expect("changing the target image is allowed");
}
