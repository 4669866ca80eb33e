//! Deleting a rollout on the local control plane: a rollout deleted in `UpgradingWorkers` leaves a
//! Warning Event telling the state of the fleet, its original values stay on the targets
//! (`dedup2d.io/originals`), and the same rollout created again and fully aborted puts the workers
//! back on the true original image. And a finished rollout that a newer one re-targets says it is
//! superseded instead of showing stale counts.

use dedup2d::operator::{
    conditions::{get_condition, SUPERSEDED},
    crd::{Dedup2DRollout, Phase, RollbackLevel, CLEANUP_FINALIZER, ORIGINALS_ANNOTATION},
    plan::field_id,
    snapshot::{parse_originals, Originals, KEY_INCLUDE_B64},
};
use k8s_openapi::api::{apps::v1::Deployment, core::v1::ConfigMap};
use kube::{
    api::{DeleteParams, Patch, PatchParams},
    Resource, ResourceExt,
};
use serde_json::json;

use crate::safety::stuck_worker_fleet;
use crate::support::{
    events::events_of, fleet::*, kube::TestNamespace, poll::eventually, scenario::Scenario,
};

fn originals_of<K: Resource>(obj: &K) -> Originals {
    parse_originals(
        obj.annotations()
            .get(ORIGINALS_ANNOTATION)
            .map(String::as_str),
    )
}

async fn config_map(ns: &TestNamespace) -> ConfigMap {
    ns.api::<ConfigMap>().get(CM).await.unwrap()
}

/// Deleted while `worker-a`'s template is on the new image (its pods cannot surge: a pod quota),
/// then created again and `abort-full`: the workers end on the image from before the first rollout.
#[tokio::test]
async fn deleted_half_way_then_recreated_and_fully_aborted_restores_the_true_originals() {
    let s = stuck_worker_fleet("op-delete").await;
    let ns = &s.ns;
    let spec = rollout_spec(&["worker-a"], json!({"dualWrite": {"soak": "1h"}}));
    let _op = s.run("d", spec.clone()).await;
    let image_field = field_id::image("worker-a", "worker");
    let include_field = field_id::config_key(CM, KEY_INCLUDE_B64);

    // UpgradingWorkers, the template changed: the originals are on the targets by now.
    let r = eventually("worker-a's template on the new image", WAIT, || async {
        let r = ns.api::<Dedup2DRollout>().get("d").await.ok()?;
        let on_new = template_image(&deploy(ns, "worker-a").await) == NEW_IMAGE;
        (r.status.as_ref()?.phase == Some(Phase::UpgradingWorkers) && on_new).then_some(r)
    })
    .await;
    assert!(r.finalizers().iter().any(|f| f == CLEANUP_FINALIZER));
    let on_worker = originals_of(&deploy(ns, "worker-a").await);
    assert_eq!(
        on_worker.get(&image_field),
        Some(&Some(OLD_IMAGE.to_string()))
    );
    let on_config = originals_of(&config_map(ns).await);
    assert_eq!(on_config.get(&include_field), Some(&Some("0".to_string())));
    assert_eq!(include(ns).await, "1", "dual-write on before the workers");

    // Delete: the operator tells what it leaves, then lets the rollout go.
    ns.api::<Dedup2DRollout>()
        .delete("d", &DeleteParams::default())
        .await
        .unwrap();
    eventually("the rollout gone", WAIT, || async {
        ns.api::<Dedup2DRollout>()
            .get_opt("d")
            .await
            .ok()?
            .is_none()
            .then_some(())
    })
    .await;
    let deleted: Vec<_> = events_of(ns, Some("d"))
        .await
        .into_iter()
        .filter(|e| e.2 == "Deleted")
        .collect();
    assert_eq!(deleted.len(), 1, "{deleted:?}");
    let (_, type_, _, _, note) = &deleted[0];
    assert_eq!(type_, "Warning");
    let state = format!("deleted in phase UpgradingWorkers: workers: worker-a 0/2 pods on {NEW_IMAGE}; dual-write On");
    assert!(note.starts_with(&state), "{note}");
    assert!(note.contains("dedup2d.io/originals"), "{note}");
    // Deleting the rollout changed nothing on the targets.
    assert_eq!(template_image(&deploy(ns, "worker-a").await), NEW_IMAGE);
    assert_eq!(
        originals_of(&deploy(ns, "worker-a").await).get(&image_field),
        Some(&Some(OLD_IMAGE.to_string()))
    );

    // Created again and aborted at once, as `dedup2d rollout abort --full` does.
    apply_rollout(ns, "d", spec).await;
    request(ns, "d", Some("abort-full:1")).await;
    let r = s.wait("d", Phase::RolledBack).await;
    let st = r.status.unwrap();
    assert_eq!(
        st.rollback.as_ref().map(|r| r.level),
        Some(RollbackLevel::Full)
    );
    let rec = st.fields.iter().find(|f| f.field == image_field).unwrap();
    assert_eq!(
        rec.previous.as_deref(),
        Some(OLD_IMAGE),
        "adopted, not the half-done value"
    );
    wait_rolled_to(ns, "worker-a", OLD_IMAGE).await;
    assert_eq!(include(ns).await, "1", "dual-write on");
    // The image is back: its entry is gone; the ConfigMap key still differs and keeps its entry.
    let w: Deployment = deploy(ns, "worker-a").await;
    assert!(
        !originals_of(&w).contains_key(&image_field),
        "{:?}",
        w.annotations()
    );
    assert_eq!(
        originals_of(&config_map(ns).await).get(&include_field),
        Some(&Some("0".to_string()))
    );
}

/// A completed rollout, then a newer one on the same worker Deployment: the first one says
/// `Superseded=True` naming the newer one and no longer shows worker counts.
#[tokio::test]
async fn a_finished_rollout_retargeted_by_a_newer_one_says_it_is_superseded() {
    let s = Scenario::builder("op-superseded")
        .workers(&[("worker-a", 1)])
        .fleet()
        .await;
    let ns = &s.ns;
    let _op = s.run("first", rollout_spec(&["worker-a"], json!({}))).await;
    let r = s.wait("first", Phase::Completed).await;
    assert_eq!(r.status.unwrap().worker_summary.as_deref(), Some("1/1"));
    // Completed: the originals it recorded are removed (the writes after the one that persisted
    // the phase), so the next upgrade records fresh ones.
    wait_originals_released(ns, "first").await;

    apply_rollout(ns, "second", rollout_spec(&["worker-a"], json!({}))).await;
    let st = eventually("first superseded", WAIT, || async {
        let st = status(ns, "first").await;
        let c = get_condition(&st.conditions, SUPERSEDED)?;
        (c.status == "True").then_some(st)
    })
    .await;
    let c = get_condition(&st.conditions, SUPERSEDED).unwrap();
    assert_eq!(c.reason, "NewerRollout");
    assert!(
        c.message.contains("second (Deployment worker-a, api)"),
        "{}",
        c.message
    );
    assert!(
        st.worker_summary.is_none() && st.workers.is_empty(),
        "{st:?}"
    );
    let message = st.message.unwrap_or_default();
    assert!(message.contains("superseded by second"), "{message}");
    assert_eq!(st.phase, Some(Phase::Completed));
}

/// A completed rollout whose worker Deployment carries an originals annotation that another
/// manager applied too (a manifest exported from the cluster and applied back, say): the operator
/// deletes it with one write and is quiet after, instead of asking for it again on every reconcile
/// (an apply that leaves the annotation out only gives up the operator's own claim).
#[tokio::test]
async fn a_completed_rollout_clears_originals_another_manager_also_owns_once() {
    let s = Scenario::builder("op-originals-owned")
        .workers(&[("worker-a", 1)])
        .fleet()
        .await;
    let ns = &s.ns;
    let op = s.run("r", rollout_spec(&["worker-a"], json!({}))).await;
    s.wait("r", Phase::Completed).await;
    wait_originals_released(ns, "r").await;

    let encoded = serde_json::to_string(&Originals::from([(
        field_id::image("worker-a", "worker"),
        Some(OLD_IMAGE.to_string()),
    )]))
    .unwrap();
    let exported = json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "worker-a", "annotations": {ORIGINALS_ANNOTATION: encoded}},
    });
    ns.api::<Deployment>()
        .patch(
            "worker-a",
            &PatchParams::apply("gitops-export"),
            &Patch::Apply(&exported),
        )
        .await
        .unwrap();
    wait_originals_released(ns, "r").await;

    // Quiet after: nobody writes the Deployment's object again (its status subresource still moves
    // with the deployment controller and kwok, so the resourceVersion is no test), and the operator
    // logs no further write.
    let spec_writes = |d: Deployment| {
        let entries: Vec<_> = d
            .managed_fields()
            .iter()
            .filter(|m| m.subresource.as_deref() != Some("status"))
            .map(|m| (m.manager.clone(), m.operation.clone(), m.time.clone()))
            .collect();
        (d.metadata.generation, d.metadata.annotations, entries)
    };
    let before = spec_writes(deploy(ns, "worker-a").await);
    let writes = || {
        op.log_text()
            .lines()
            .filter(|l| l.contains("applying") && l.contains("SetOriginals"))
            .count()
    };
    let cleared = writes();
    tokio::time::sleep(std::time::Duration::from_secs(10)).await;
    assert_eq!(spec_writes(deploy(ns, "worker-a").await), before);
    assert_eq!(writes(), cleared, "no write after the one that cleared it");
    assert_eq!(
        s.wait("r", Phase::Completed).await.status.unwrap().phase,
        Some(Phase::Completed)
    );
}
