//! What people do to a rollout that is under way or finished, on the local control plane: a second
//! rollout for the same workers (stalled until the older one is gone), a new target image edited
//! into the spec mid-rollout (the workers are upgraded again before dual-write goes off), and a full
//! rollback requested after `Completed` while a file_ref-only job is active. Each test runs its own
//! operator process restricted to its own namespace (helpers from `tests/support`).

use std::time::Duration;

use dedup2d::operator::{
    crd::{Dedup2DRollout, Dedup2DRolloutStatus, Phase, RollbackLevel},
    plan::payload_config_hash,
};
use k8s_openapi::jiff::Timestamp;
use kube::api::{DeleteParams, Patch, PatchParams};
use serde_json::json;

use crate::support::{
    events::*, fleet::*, history::*, kube::TestNamespace, poll::eventually, rollback::*,
    scenario::Scenario,
};

/// A third image: neither the fleet's nor [`NEW_IMAGE`].
const NEXT_IMAGE: &str = "registry.example.com/dedup2d:0.2.0";
const WORKER_IMAGE_FIELD: &str = "Deployment/worker-a/containers/worker/image";

/// The worker-a template images in the history, consecutive repeats collapsed.
fn worker_images(h: &[Entry]) -> Vec<String> {
    sequence(h, |r| match r {
        Rec::Deployment { name, image, .. } if name == "worker-a" => Some(image.clone()),
        _ => None,
    })
}

/// The worker image's field record as `(previous, written)`.
fn worker_image_record(st: &Dedup2DRolloutStatus) -> (Option<&str>, &str) {
    let f = st
        .fields
        .iter()
        .find(|f| f.field == WORKER_IMAGE_FIELD)
        .expect("worker image recorded");
    (f.previous.as_deref(), f.written.as_str())
}

/// The `Stalled` condition of a rollout as `(status, reason, message)`.
async fn stalled(ns: &TestNamespace, name: &str) -> Option<(String, String, String)> {
    let st = status(ns, name).await;
    let c = st.conditions.iter().find(|c| c.type_ == "Stalled")?;
    Some((c.status.clone(), c.reason.clone(), c.message.clone()))
}

/// 1. Two rollouts for the same worker Deployment: the younger one is `Stalled` with reason
/// `ConflictingRollout` naming the older one and writes nothing (no record, no transition, the
/// worker only ever gets the older one's image); once the older one is deleted, the younger one
/// proceeds and completes.
#[tokio::test]
async fn conflicting_rollout_stalls_until_the_older_one_is_gone() {
    // The older one soaks for an hour: it stays unfinished (a finished rollout conflicts with none).
    let (s, _op) = Scenario::builder("op-conflict")
        .workers(&[("worker-a", 2)])
        .history()
        .run(
            "first",
            rollout_spec(&["worker-a"], json!({"dualWrite": {"soak": "1h"}})),
        )
        .await;
    let (ns, history) = (&s.ns, s.history());
    eventually("the operator picked up the first rollout", WAIT, || async {
        status(ns, "first").await.phase.map(|_| ())
    })
    .await;
    apply_rollout(
        ns,
        "second",
        rollout_spec(
            &["worker-a"],
            json!({
                "workers": [{"deployment": "worker-a", "image": NEXT_IMAGE}],
                "drain": {"strategy": "Observe"},
            }),
        ),
    )
    .await;
    let (_, _, message) = eventually("second Stalled=True ConflictingRollout", WAIT, || async {
        let c = stalled(ns, "second").await?;
        (c.0 == "True" && c.1 == "ConflictingRollout").then_some(c)
    })
    .await;
    assert!(
        message.contains("first (Deployment worker-a, api)"),
        "the message names the older rollout and the shared Deployments: {message}"
    );

    // The first one upgrades the workers and soaks; the second one stays stalled in Pending.
    s.wait("first", Phase::Soaking).await;
    wait_rolled_to(ns, "worker-a", NEW_IMAGE).await;
    holds(ns, "second", Phase::Pending, 4).await;
    let st = status(ns, "second").await;
    assert!(
        st.fields.is_empty(),
        "the stalled rollout recorded (so wrote) nothing: {:?}",
        st.fields
    );
    assert!(
        st.message.as_deref().unwrap_or("").contains("first"),
        "{:?}",
        st.message
    );
    assert_eq!(
        stalled(ns, "second").await.map(|c| c.1).as_deref(),
        Some("ConflictingRollout")
    );
    let reasons: Vec<String> = events_of(ns, Some("second"))
        .await
        .into_iter()
        .map(|e| e.2)
        .collect();
    assert_eq!(reasons, ["Started"], "no transition, no write");
    assert_eq!(
        worker_images(&history.by_revision()),
        [OLD_IMAGE, NEW_IMAGE],
        "only the first rollout's image was ever written"
    );

    // The older rollout goes away: the conflict clears and the second one runs to the end.
    let deleted = Timestamp::now();
    ns.api::<Dedup2DRollout>()
        .delete("first", &DeleteParams::default())
        .await
        .unwrap();
    eventually("second's conflict cleared", WAIT, || async {
        let c = stalled(ns, "second").await?;
        (c.0 == "False").then_some(())
    })
    .await;
    let cleared = Timestamp::now();
    // The deletion itself triggers the re-check (not the 30 s stall poll).
    assert!(
        secs(deleted, cleared) < 5.0,
        "the conflict cleared {:.1}s after the deletion",
        secs(deleted, cleared)
    );
    let r = s.wait("second", Phase::Completed).await;
    let done = Timestamp::now();
    wait_rolled_to(ns, "worker-a", NEXT_IMAGE).await;
    let st = r.status.unwrap();
    assert_eq!(
        worker_image_record(&st),
        (Some(OLD_IMAGE), NEXT_IMAGE),
        "the second rollout took over, with the true original the first one left on worker-a \
         (dedup2d.io/originals), not the half-done value"
    );

    let h = history.by_revision();
    assert_eq!(worker_images(&h), [OLD_IMAGE, NEW_IMAGE, NEXT_IMAGE]);
    let arrived = history.arrived();
    let first_next = arrived
        .iter()
        .find(|e| matches!(&e.rec, Rec::Deployment { name, image, .. } if name == "worker-a" && image == NEXT_IMAGE))
        .unwrap();
    assert!(
        first_next.seen >= deleted,
        "the second rollout wrote the worker image only after the first one was deleted"
    );
    assert_eq!(includes(&h), ["0", "1", "0"]);
    let offs = check_dual_write_off_after_workers(&h, &["worker-a"], NEXT_IMAGE);
    assert_eq!(offs.len(), 1);
    print_events("conflicting rollouts", &events(ns).await);
    println!(
        "conflict: first deleted -> second's conflict cleared {:.2}s, -> Completed {:.2}s",
        secs(deleted, cleared),
        secs(deleted, done)
    );
}

/// 2. A new worker image edited into the spec while the rollout soaks: a `SpecChanged` transition
/// back to `DualWriteOn`, the workers rolled to the new image (dual-write stays on throughout),
/// `Soaking` again only once every worker pod runs it, then the rollout completes; the record keeps
/// the original previous image.
#[tokio::test]
async fn new_worker_image_while_soaking_upgrades_again_then_completes() {
    let mut spec = upgrade_spec(&["worker-a"], "1h");
    let (s, _op) = Scenario::builder("op-edit")
        .workers(&[("worker-a", 3)])
        .history()
        .run("edit", spec.clone())
        .await;
    let (ns, history) = (&s.ns, s.history());
    s.wait("edit", Phase::Soaking).await;
    wait_rolled_to(ns, "worker-a", NEW_IMAGE).await;
    assert_eq!(include(ns).await, "1");

    // The edit (the GitOps manifest changes the image).
    spec["workers"][0]["image"] = json!(NEXT_IMAGE);
    apply_rollout(ns, "edit", spec.clone()).await;
    let edited = Timestamp::now();
    let generation = ns
        .api::<Dedup2DRollout>()
        .get("edit")
        .await
        .unwrap()
        .metadata
        .generation
        .unwrap();
    let changed = eventually("a SpecChanged Event", Duration::from_secs(30), || async {
        events(ns).await.into_iter().find(|e| e.2 == "SpecChanged")
    })
    .await;
    assert_eq!(changed.3, "DualWriteOn", "back to the upgrading phase");
    assert!(
        changed.4.starts_with("Soaking -> DualWriteOn"),
        "{}",
        changed.4
    );
    let st = eventually("Soaking again on the new generation", WAIT, || async {
        let st = status(ns, "edit").await;
        (st.observed_generation == Some(generation) && st.phase == Some(Phase::Soaking))
            .then_some(st)
    })
    .await;
    let resoaked = Timestamp::now();
    assert_eq!(st.worker_summary.as_deref(), Some("1/1"));
    let d = deploy(ns, "worker-a").await;
    assert_eq!(template_image(&d), NEXT_IMAGE);
    assert!(pod_images(ns, "worker-a")
        .await
        .iter()
        .all(|i| i == NEXT_IMAGE));
    assert_eq!(include(ns).await, "1", "dual-write stayed on");

    // End the new soak; the rollout completes.
    request(ns, "edit", Some("promote")).await;
    let r = s.wait("edit", Phase::Completed).await;
    let st = r.status.unwrap();
    assert_eq!(
        worker_image_record(&st),
        (Some(OLD_IMAGE), NEXT_IMAGE),
        "the previous value stays the one before the rollout (what a full rollback restores)"
    );
    assert_eq!(include(ns).await, "0");

    // From the store's history.
    let h = history.by_revision();
    assert_eq!(worker_images(&h), [OLD_IMAGE, NEW_IMAGE, NEXT_IMAGE]);
    let api_images = sequence(&h, |r| match r {
        Rec::Deployment { name, image, .. } if name == "api" => Some(image.clone()),
        _ => None,
    });
    assert_eq!(api_images, [API_OLD, API_NEW], "the API was upgraded once");
    assert_eq!(
        includes(&h),
        ["0", "1", "0"],
        "dual-write on through the edit, off once"
    );
    let offs = check_dual_write_off_after_workers(&h, &["worker-a"], NEXT_IMAGE);
    assert_eq!(offs.len(), 1);
    // Soaking re-entered only when no worker pod on another image was left.
    let next_written = h
        .iter()
        .find(|e| matches!(&e.rec, Rec::Deployment { name, image, .. } if name == "worker-a" && image == NEXT_IMAGE))
        .unwrap()
        .rv;
    let resoak = h
        .iter()
        .find(|e| {
            e.rv > next_written
                && matches!(
                    &e.rec,
                    Rec::Rollout {
                        phase: Some(Phase::Soaking),
                        ..
                    }
                )
        })
        .expect("Soaking after the new image was written")
        .rv;
    let old: Vec<String> = pods_at(&h, resoak)
        .into_iter()
        .filter(|(_, (app, image))| app == "worker-a" && image != NEXT_IMAGE)
        .map(|(n, _)| n)
        .collect();
    assert!(
        old.is_empty(),
        "Soaking again at revision {resoak} while worker pods on another image existed: {old:?}"
    );
    let phases = sequence(&h, |r| match r {
        Rec::Rollout { phase, .. } => *phase,
        _ => None,
    });
    let tail: Vec<Phase> = phases
        .iter()
        .copied()
        .skip_while(|p| *p != Phase::Soaking)
        .collect();
    assert!(
        matches!(tail[1], Phase::DualWriteOn | Phase::UpgradingWorkers),
        "after the edit: {phases:?}"
    );
    assert_eq!(
        &tail[tail.len() - 4..],
        [
            Phase::Soaking,
            Phase::DualWriteOff,
            Phase::Draining,
            Phase::Completed
        ],
        "{phases:?}"
    );
    let evs = events(ns).await;
    print_events("spec edit", &evs);
    assert_eq!(
        evs.iter().filter(|e| e.2 == "SpecChanged").count(),
        1,
        "one SpecChanged Event"
    );
    // The upgrade phases were passed twice, each time reported (a repeated Event is one object
    // with a series count).
    wait_event_count(ns, "WorkersUpgraded", 2).await;
    wait_event_count(ns, "ApiUpgraded", 2).await;
    println!(
        "spec edit: edited -> Soaking again (workers on the new image) {:.2}s",
        secs(edited, resoaked)
    );
}

/// 3. `abort-full` after `Completed` while a file_ref-only job is active: dual-write on at once,
/// `RollbackSafe=False` counting the job, the images kept while it is active; once it finished the
/// old worker and API images are back, dual-write is on, `RolledBack`, and the request is handled
/// once.
#[tokio::test]
async fn full_rollback_after_completed_waits_for_file_ref_only_jobs() {
    let (s, _op) = Scenario::builder("op-fullback")
        .workers(&[("worker-a", 2)])
        .history()
        .run("done", upgrade_spec(&["worker-a"], "0"))
        .await;
    let (ns, history, mut conn) = (&s.ns, s.history(), s.conn.clone());
    s.wait("done", Phase::Completed).await;
    assert_eq!(include(ns).await, "0");
    wait_rolled_to(ns, "worker-a", NEW_IMAGE).await;
    wait_rolled_to(ns, "api", API_NEW).await;

    // A job the API enqueued with dual-write off: a file_ref-only payload, active.
    let requested = Timestamp::now();
    let (reason, message) = abort_full_held_by_active_jobs(ns, &mut conn, "done", &["j1"], 6).await;
    assert_eq!(reason, "FileRefOnlyJobsActive");
    assert!(message.starts_with("1 active jobs"), "{message}");

    // The job finishes.
    let finished = finish_jobs(&mut conn, &["j1"]).await;
    let r = s.wait("done", Phase::RolledBack).await;
    let done = Timestamp::now();
    wait_rolled_to(ns, "worker-a", OLD_IMAGE).await;
    wait_rolled_to(ns, "api", API_OLD).await;
    assert_eq!(include(ns).await, "1");
    let st = r.status.unwrap();
    let rb = st.rollback.clone().expect("rollback record");
    assert_eq!(
        (rb.level, rb.from_phase),
        (RollbackLevel::Full, Phase::Completed)
    );
    let handled = st.last_request.clone().expect("request recorded");
    assert_eq!(
        (handled.request.as_str(), handled.outcome.as_str()),
        ("abort-full", "full rollback started")
    );
    let st = eventually("dual-write On, RollbackSafe=True", WAIT, || async {
        let st = status(ns, "done").await;
        let safe = st.conditions.iter().find(|c| c.type_ == "RollbackSafe")?;
        (st.dual_write.as_deref() == Some("On") && safe.status == "True").then_some(st)
    })
    .await;
    assert_eq!(
        template_annotation(&deploy(ns, "api").await, "dedup2d.io/payload-config"),
        Some(payload_config_hash("1", "10485760")),
        "the API restarted with dual-write on"
    );

    // The manifest re-applied with the same annotation (and a label, so the object changes): not
    // handled again.
    ns.api::<Dedup2DRollout>()
        .patch(
            "done",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": {"touched": "yes"},
                "annotations": {"dedup2d.io/request": "abort-full"}}})),
        )
        .await
        .unwrap();
    holds(ns, "done", Phase::RolledBack, 3).await;
    assert_eq!(status(ns, "done").await.last_request, st.last_request);
    wait_event_count(ns, "Request", 1).await;

    // From the store's history.
    check_full_rollback_order(history, finished);
    print_events("full rollback after Completed", &events(ns).await);
    println!(
        "full rollback after Completed: request -> job finished {:.2}s (held), job finished -> RolledBack {:.2}s",
        secs(requested, finished),
        secs(finished, done)
    );
}
