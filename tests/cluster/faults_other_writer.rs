//! Fault suite: another writer updates the same objects as the operator, concurrently, for the
//! whole rollout and after it: a second field manager applies its own annotations, labels and
//! `revisionHistoryLimit` to the worker and API Deployments, and a person merge-patches other keys
//! of the ConfigMap, every second. No update is lost (their last values and the operator's are
//! all there at the end) and there is no write loop: the operator's writes, counted from the
//! recorded history of its managedFields entry, stay at what the rollout needs, and none follows
//! the other writer's writes once the rollout is `Completed`.

use std::{convert::Infallible, time::Duration};

use dedup2d::operator::{
    crd::{Phase, PAYLOAD_CONFIG_ANNOTATION},
    plan::payload_config_hash,
};
use k8s_openapi::api::{apps::v1::Deployment, core::v1::ConfigMap};
use kube::api::{Patch, PatchParams};
use serde_json::json;

use crate::support::{
    faults::{fault_count, record_fault_counts},
    fleet::*,
    history::*,
    kube::TestNamespace,
    scenario::Scenario,
};

const TICK: &str = "other.example.com/tick";
const TEAM: &str = "other.example.com/team";

/// The other writer's values at tick `i`.
async fn write_once(ns: &TestNamespace, i: usize) {
    let ssa = PatchParams::apply("other-writer");
    for name in ["worker-a", "api"] {
        let mine = json!({"apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": name, "annotations": {TICK: i.to_string()}, "labels": {TEAM: "search"}},
            "spec": {"revisionHistoryLimit": 7}});
        ns.api::<Deployment>()
            .patch(name, &ssa, &Patch::Apply(mine))
            .await
            .unwrap_or_else(|e| panic!("the other writer's apply to {name}: {e}"));
    }
    let edit = PatchParams {
        field_manager: Some("other-editor".into()),
        ..Default::default()
    };
    ns.api::<ConfigMap>()
        .patch(
            CM,
            &edit,
            &Patch::Merge(json!({"data": {"OTHER_TICK": i.to_string(), "OTHER_STATIC": "kept"}})),
        )
        .await
        .unwrap_or_else(|e| panic!("the other editor's patch to the ConfigMap: {e}"));
}

/// Writes once a second, counting the ticks in `ticks`; runs until dropped.
async fn other_writer(ns: &TestNamespace, ticks: &mut usize) -> Infallible {
    loop {
        write_once(ns, *ticks).await;
        *ticks += 1;
        // Every edit moves the Deployments' `generation`, and the API's dual-write restart is
        // judged with `observedGeneration` (kubectl's rollout-status test): at one edit every
        // 250 ms under CI load that restart could wait past the test's deadline (a known limit,
        // see docs/faults.md), so the editor writes once a second.
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// The operator's writes per object: (ConfigMap, worker-a, api).
fn our_writes(s: &Scenario) -> (usize, usize, usize) {
    let h = s.history().by_revision();
    let deployment = |want: &'static str| move |r: &Rec| matches!(r, Rec::Deployment { name, .. } if name == want);
    (
        operator_writes(&h, |r| matches!(r, Rec::ConfigMap { .. })),
        operator_writes(&h, deployment("worker-a")),
        operator_writes(&h, deployment("api")),
    )
}

#[tokio::test]
async fn faults_another_writer_on_the_same_objects_loses_nothing_and_loops_nothing() {
    let s = Scenario::builder("fault-writer")
        .workers(&[("worker-a", 3)])
        .history()
        .fleet()
        .await;
    let ns = &s.ns;
    let _op = s.run("r", upgrade_spec(&["worker-a"], "5s")).await;
    let mut ticks = 0;
    tokio::select! {
        _ = s.wait("r", Phase::Completed) => {}
        never = other_writer(ns, &mut ticks) => match never {},
    }
    let at_completed = our_writes(&s);
    // The other writer goes on after the rollout finished: the operator must not answer it.
    let after = Duration::from_secs(fault_count(5, 30) as u64);
    let _ = tokio::time::timeout(after, other_writer(ns, &mut ticks)).await;
    // The timeout can cut a write after the server applied it but before the tick was counted:
    // one last write, not cut, makes `ticks - 1` the newest value written.
    write_once(ns, ticks).await;
    ticks += 1;
    // The recorder's watches catch up.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let at_end = our_writes(&s);
    let last = (ticks - 1).to_string();

    // No lost update: theirs...
    let cm = ns.api::<ConfigMap>().get(CM).await.unwrap().data.unwrap();
    assert_eq!(cm.get("OTHER_TICK"), Some(&last), "the editor's last key");
    assert_eq!(cm.get("OTHER_STATIC").map(String::as_str), Some("kept"));
    for name in ["worker-a", "api"] {
        let d = deploy(ns, name).await;
        let annotations = d.metadata.annotations.clone().unwrap_or_default();
        assert_eq!(
            annotations.get(TICK),
            Some(&last),
            "{name}: the writer's last tick"
        );
        let labels = d.metadata.labels.clone().unwrap_or_default();
        assert_eq!(
            labels.get(TEAM).map(String::as_str),
            Some("search"),
            "{name}"
        );
        assert_eq!(
            d.spec.as_ref().unwrap().revision_history_limit,
            Some(7),
            "{name}"
        );
    }
    // ...and ours.
    assert_eq!(cm.get(INCLUDE).map(String::as_str), Some("0"));
    assert_eq!(template_image(&deploy(ns, "worker-a").await), NEW_IMAGE);
    let api = deploy(ns, "api").await;
    assert_eq!(template_image(&api), API_NEW);
    assert_eq!(
        template_annotation(&api, PAYLOAD_CONFIG_ANNOTATION),
        Some(payload_config_hash("0", "10485760"))
    );
    s.check_completed_forward(&["worker-a"], NEW_IMAGE).await;

    // No write loop: what the rollout needs (ConfigMap on, off; worker image; API restart on,
    // image, restart off), a retry at most each, and nothing after Completed.
    let (cm_writes, worker_writes, api_writes) = at_end;
    assert!(ticks >= 20, "the other writer wrote only {ticks} times");
    assert!(cm_writes <= 3, "{cm_writes} ConfigMap writes");
    assert!(worker_writes <= 2, "{worker_writes} worker-a writes");
    assert!(api_writes <= 5, "{api_writes} API Deployment writes");
    assert_eq!(at_completed, at_end, "the operator wrote after Completed");
    record_fault_counts(
        "other_writer",
        &json!({
            "other_writer_ticks": ticks,
            "other_writer_writes": ticks * 3,
            "operator_writes": {"configmap": cm_writes, "worker-a": worker_writes, "api": api_writes},
            "operator_writes_after_completed":
                (cm_writes + worker_writes + api_writes) - (at_completed.0 + at_completed.1 + at_completed.2),
            "invariant_checks_passed": 9,
        }),
    );
}
