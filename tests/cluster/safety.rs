//! The bad cases on the local control plane: a stuck worker rollout rolled back automatically,
//! `spec.paused` holding the rollout in several phases, `promote` ending a soak (and a request
//! applied twice acting once), a quick abort during `Soaking`, and a full abort that waits for the
//! active file_ref-only jobs before restoring images; requests act once (a re-applied `abort` after
//! `retry:1` changes nothing, a stale `abort` on a new rollout is ignored). Each test runs its own operator process
//! restricted to its own namespace (helpers from `tests/support`).

use std::time::Duration;

use dedup2d::operator::{
    crd::{Dedup2DRollout, Phase, RollbackLevel},
    plan::payload_config_hash,
};
use k8s_openapi::{
    api::{apps::v1::Deployment, core::v1::ResourceQuota},
    jiff::Timestamp,
};
use kube::api::{DeleteParams, Patch, PatchParams};
use serde_json::json;

use crate::support::{
    events::*, fleet::*, history::*, kube::TestNamespace, poll::eventually, rollback::*,
    scenario::Scenario,
};

const DEFAULT_MAX: &str = "10485760";

/// The API Deployment with the `Recreate` strategy, so a restart never needs a pod more than the
/// fleet has (the quota below then only blocks the worker surge); returns once it rolled.
async fn api_recreate(ns: &TestNamespace) {
    ns.api::<Deployment>()
        .patch(
            "api",
            &PatchParams::default(),
            &Patch::Merge(
                json!({"spec": {"strategy": {"type": "Recreate", "rollingUpdate": null}}}),
            ),
        )
        .await
        .unwrap();
    wait_rolled_to(ns, "api", API_OLD).await;
}

/// A ResourceQuota allowing exactly `pods` pods in the namespace: a RollingUpdate of a worker
/// Deployment cannot create its surge pod, so the new ReplicaSet never gets a pod (namespace-local,
/// unlike cordoning nodes). Returns once the quota controller computed its usage (before that the
/// admission plugin would reject every pod).
async fn pod_quota(ns: &TestNamespace, pods: i32) {
    let q: ResourceQuota = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "ResourceQuota",
        "metadata": {"name": "pods"},
        "spec": {"hard": {"pods": pods.to_string()}}
    }))
    .unwrap();
    ns.api::<ResourceQuota>()
        .create(&Default::default(), &q)
        .await
        .unwrap();
    eventually("quota usage computed", WAIT, || async {
        let q = ns.api::<ResourceQuota>().get("pods").await.ok()?;
        let used = q.status?.used?;
        (used.get("pods")?.0 == pods.to_string()).then_some(())
    })
    .await;
}

async fn drop_quota(ns: &TestNamespace) {
    ns.api::<ResourceQuota>()
        .delete("pods", &DeleteParams::default())
        .await
        .unwrap();
}

/// One worker Deployment `worker-a` (2 pods) that cannot roll: the API recreates its pod, and the
/// namespace quota of 4 pods leaves no room for the worker surge.
pub(crate) async fn stuck_worker_fleet(prefix: &str) -> Scenario {
    let s = Scenario::builder(prefix)
        .workers(&[("worker-a", 2)])
        .fleet()
        .await;
    api_recreate(&s.ns).await;
    pod_quota(&s.ns, 4).await;
    s
}

/// 1. The new worker template cannot get a pod (namespace pod quota): the UpgradingWorkers phase
/// passes `progressDeadlineSeconds`, `onFailure: Rollback` rolls back: old images back, dual-write
/// on, `RolledBack`, and the Events tell the story.
#[tokio::test]
async fn stuck_worker_rollout_rolls_back_automatically() {
    let s = stuck_worker_fleet("op-stuck").await;
    let ns = &s.ns;
    let history = History::start(ns).await;
    let started = Timestamp::now();
    let _op = s
        .run(
            "stuck",
            rollout_spec(
                &["worker-a"],
                json!({
                    "api": {"image": API_NEW},
                    "dualWrite": {"soak": "1h"},
                    "progressDeadlineSeconds": 15,
                    "onFailure": "Rollback",
                }),
            ),
        )
        .await;
    s.wait("stuck", Phase::UpgradingWorkers).await;
    let entered = Timestamp::now();
    let r = s.wait("stuck", Phase::RolledBack).await;
    let done = Timestamp::now();
    let st = r.status.unwrap();
    let rb = st.rollback.clone().expect("rollback record");
    assert_eq!(rb.level, RollbackLevel::Full, "onFailure Rollback is full");
    assert_eq!(rb.from_phase, Phase::UpgradingWorkers);
    assert!(
        rb.reason.contains("progressDeadlineSeconds"),
        "{}",
        rb.reason
    );
    // Old images back, every pod old; dual-write on and the API restarted with it.
    let w = deploy(ns, "worker-a").await;
    assert_eq!(template_image(&w), OLD_IMAGE);
    assert!(pod_images(ns, "worker-a")
        .await
        .iter()
        .all(|i| i == OLD_IMAGE));
    let api = deploy(ns, "api").await;
    assert_eq!(template_image(&api), API_OLD, "the API was never upgraded");
    assert_eq!(include(ns).await, "1", "dual-write stays on");
    assert_eq!(
        template_annotation(&api, "dedup2d.io/payload-config"),
        Some(payload_config_hash("1", DEFAULT_MAX))
    );
    assert_eq!(st.dual_write.as_deref(), Some("On"));

    // The story: the transitions, and a Warning naming the deadline.
    let trans = transitions_until(ns, "RolledBack").await;
    let phases: Vec<&str> = trans.iter().map(|t| t.1.as_str()).collect();
    assert_eq!(
        phases,
        [
            "DualWriteOn",
            "UpgradingWorkers",
            "RollingBack",
            "RolledBack"
        ]
    );
    let evs = events(ns).await;
    print_events("stuck worker rollout", &evs);
    assert!(
        evs.iter().any(|e| e.1 == "Warning"
            && e.2 == "ProgressDeadlineExceeded"
            && e.4.contains("UpgradingWorkers made no progress")),
        "a Warning with reason ProgressDeadlineExceeded"
    );
    assert!(evs.iter().any(|e| e.1 == "Warning" && e.3 == "RolledBack"));
    // The trigger held: no pod of the new worker template ever existed.
    assert!(
        !history.arrived().iter().any(|e| matches!(&e.rec,
            Rec::Pod { app, image, .. } if app == "worker-a" && image == NEW_IMAGE)),
        "the quota kept the new ReplicaSet without pods"
    );
    // Detection latency: the planner re-checks a waiting phase every 15 s (POLL), so the
    // deadline is noticed up to one poll late.
    let failed_at = evs
        .iter()
        .find(|e| e.2 == "ProgressDeadlineExceeded")
        .unwrap()
        .0;
    let detect = secs(entered, failed_at);
    assert!(
        (15.0..=15.0 + 15.0 + 5.0).contains(&detect),
        "deadline noticed {detect:.1}s after UpgradingWorkers began"
    );
    println!("stuck rollout: deadline (15s) noticed {detect:.1}s after UpgradingWorkers began");
    println!(
        "stuck rollout: applied -> UpgradingWorkers {:.1}s, -> RolledBack {:.1}s later (deadline 15s)",
        secs(started, entered),
        secs(entered, done)
    );
}

/// 2. `spec.paused` holds the rollout in three phases (Pending, UpgradingWorkers, Draining): the
/// phase stays and the operator writes nothing, even when the world would let it go on; resuming
/// continues.
#[tokio::test]
async fn paused_holds_in_three_phases_and_resume_continues() {
    let s = Scenario::builder("op-pause")
        .payloads(&["l1"], &[])
        .workers(&[("worker-a", 2)])
        .fleet()
        .await;
    let (ns, mut conn) = (&s.ns, s.conn.clone());
    api_recreate(ns).await;
    let mut spec = rollout_spec(
        &["worker-a"],
        json!({
            "api": {"image": API_NEW},
            "drain": {"strategy": "Observe"},
            "progressDeadlineSeconds": 600,
            "paused": true,
        }),
    );
    // Paused from the start: Pending, nothing written.
    let _op = s.run("p", spec.clone()).await;
    s.wait("p", Phase::Pending).await;
    holds(ns, "p", Phase::Pending, 5).await;
    assert_eq!(include(ns).await, "0", "dual-write untouched while paused");
    assert_eq!(template_image(&deploy(ns, "worker-a").await), OLD_IMAGE);
    let st = status(ns, "p").await;
    assert!(st.paused_since.is_some());
    assert!(
        st.fields.is_empty(),
        "nothing recorded or written: {:?}",
        st.fields
    );

    // Resume (the GitOps manifest flips the field); the worker surge is blocked by a quota so the
    // rollout sits in UpgradingWorkers; pause there, then let the workers finish: still held.
    pod_quota(ns, 4).await;
    spec["paused"] = json!(false);
    apply_rollout(ns, "p", spec.clone()).await;
    wait_phase(ns, "p", Phase::UpgradingWorkers, WAIT).await;
    eventually("worker image written", WAIT, || async {
        (template_image(&deploy(ns, "worker-a").await) == NEW_IMAGE).then_some(())
    })
    .await;
    set_paused(ns, "p", true).await;
    eventually("paused recorded", WAIT, || async {
        status(ns, "p").await.paused_since.map(|_| ())
    })
    .await;
    drop_quota(ns).await;
    wait_rolled_to(ns, "worker-a", NEW_IMAGE).await;
    holds(ns, "p", Phase::UpgradingWorkers, 5).await;
    assert_eq!(
        template_image(&deploy(ns, "api").await),
        API_OLD,
        "no API write while paused"
    );
    set_paused(ns, "p", false).await;

    // Draining: the one legacy payload holds it; pause, delete the payload: still held.
    wait_phase(ns, "p", Phase::Draining, WAIT).await;
    set_paused(ns, "p", true).await;
    eventually("paused recorded", WAIT, || async {
        status(ns, "p").await.paused_since.map(|_| ())
    })
    .await;
    let _: () = redis::cmd("DEL")
        .arg("dedup2d:payload:l1")
        .query_async(&mut conn)
        .await
        .unwrap();
    holds(ns, "p", Phase::Draining, 6).await;
    set_paused(ns, "p", false).await;
    let r = wait_phase(ns, "p", Phase::Completed, Duration::from_secs(60)).await;
    assert_eq!(r.status.unwrap().paused_since, None);
    let evs = events(ns).await;
    print_events("pause/resume", &evs);
    wait_event_count(ns, "Paused", 3).await;
    wait_event_count(ns, "Resumed", 3).await;
}

/// 3. `promote` ends a 1h soak at once; with `finalize: Manual` the same annotation value,
/// re-applied by GitOps in AwaitingFinalize, acts no more; a new nonce finalizes.
#[tokio::test]
async fn promote_skips_the_soak_and_acts_once() {
    let spec = rollout_spec(
        &["worker-a"],
        json!({"dualWrite": {"soak": "1h"}, "drain": {"strategy": "Observe"}, "finalize": "Manual"}),
    );
    let (s, _op) = Scenario::builder("op-promote")
        .workers(&[("worker-a", 2)])
        .run("pr", spec.clone())
        .await;
    let ns = &s.ns;
    s.wait("pr", Phase::Soaking).await;
    holds(ns, "pr", Phase::Soaking, 2).await;
    let sent = Timestamp::now();
    // GitOps style: the manifest carries the annotation (manager `e2e`).
    let with_annotation = |value: &str| {
        json!({"apiVersion": "dedup2d.io/v1alpha1", "kind": "Dedup2DRollout",
               "metadata": {"name": "pr", "annotations": {"dedup2d.io/request": value}},
               "spec": spec.clone()})
    };
    let api = ns.api::<Dedup2DRollout>();
    let ssa = PatchParams::apply("e2e");
    api.patch("pr", &ssa, &Patch::Apply(with_annotation("promote")))
        .await
        .unwrap();
    eventually("left Soaking", Duration::from_secs(20), || async {
        let p = status(ns, "pr").await.phase?;
        (p != Phase::Soaking).then_some(())
    })
    .await;
    let left = Timestamp::now();
    let r = wait_phase(ns, "pr", Phase::AwaitingFinalize, WAIT).await;
    let st = r.status.unwrap();
    let handled = st.last_request.clone().expect("request recorded");
    assert_eq!(handled.request, "promote");
    assert_eq!(handled.outcome, "soak ended");
    assert_eq!(include(ns).await, "0", "dual-write off after the promote");

    // The same manifest applied again (and once more with a label change so the object changes):
    // promote would finalize in AwaitingFinalize, but it was handled already.
    api.patch("pr", &ssa, &Patch::Apply(with_annotation("promote")))
        .await
        .unwrap();
    let mut relabelled = with_annotation("promote");
    relabelled["metadata"]["labels"] = json!({"touched": "yes"});
    api.patch("pr", &ssa, &Patch::Apply(relabelled))
        .await
        .unwrap();
    holds(ns, "pr", Phase::AwaitingFinalize, 5).await;
    let st = status(ns, "pr").await;
    assert_eq!(st.last_request, Some(handled), "not handled a second time");

    // A new nonce is a new request.
    request(ns, "pr", Some("promote:2")).await;
    let r = wait_phase(ns, "pr", Phase::Completed, Duration::from_secs(30)).await;
    assert_eq!(r.status.unwrap().last_request.unwrap().outcome, "finalized");
    // One Request Event per distinct value.
    wait_event_count(ns, "Request", 2).await;
    print_events("promote", &events(ns).await);
    println!(
        "promote -> phase left Soaking after {:.2}s (soak 1h)",
        secs(sent, left)
    );
}

/// 4. `abort` during Soaking: a quick rollback: dual-write on (it is), the API rolled with it,
/// workers and API image kept, `RolledBack`.
#[tokio::test]
async fn quick_abort_during_soaking() {
    let (s, _op) = Scenario::builder("op-abort")
        .workers(&[("worker-a", 2)])
        .run(
            "ab",
            rollout_spec(
                &["worker-a"],
                json!({"api": {"image": API_NEW}, "dualWrite": {"soak": "1h"}}),
            ),
        )
        .await;
    let ns = &s.ns;
    s.wait("ab", Phase::Soaking).await;
    request(ns, "ab", Some("abort")).await;
    let r = wait_phase(ns, "ab", Phase::RolledBack, Duration::from_secs(30)).await;
    let st = r.status.unwrap();
    let rb = st.rollback.expect("rollback record");
    assert_eq!(
        (rb.level, rb.from_phase),
        (RollbackLevel::Quick, Phase::Soaking)
    );
    assert_eq!(st.last_request.unwrap().outcome, "quick rollback started");
    assert_eq!(include(ns).await, "1");
    let api = deploy(ns, "api").await;
    assert!(rolled_out(&api));
    assert_eq!(
        template_annotation(&api, "dedup2d.io/payload-config"),
        Some(payload_config_hash("1", DEFAULT_MAX))
    );
    assert_eq!(template_image(&api), API_NEW, "quick: API image kept");
    assert_eq!(template_image(&deploy(ns, "worker-a").await), NEW_IMAGE);
    assert!(pod_images(ns, "worker-a")
        .await
        .iter()
        .all(|i| i == NEW_IMAGE));
    let trans = transitions_until(ns, "RolledBack").await;
    let phases: Vec<&str> = trans.iter().map(|t| t.1.as_str()).collect();
    assert_eq!(&phases[phases.len() - 2..], ["RollingBack", "RolledBack"]);
    print_events("quick abort", &events(ns).await);
}

/// 5. `abort-full` after dual-write-off while file_ref-only jobs are active: dual-write on at once,
/// the images stay new while those jobs are active (RollbackSafe=False says how many), and are
/// restored only after the test finishes them.
#[tokio::test]
async fn full_abort_waits_for_file_ref_only_jobs() {
    // One legacy payload holds the drain, so the rollout sits in Draining (dual-write off).
    let (s, _op) = Scenario::builder("op-fullabort")
        .payloads(&["l1"], &[])
        .workers(&[("worker-a", 2)])
        .history()
        .run("fa", upgrade_spec(&["worker-a"], "0"))
        .await;
    let (ns, history, mut conn) = (&s.ns, s.history(), s.conn.clone());
    s.wait("fa", Phase::Draining).await;
    assert_eq!(include(ns).await, "0");
    // Jobs the API enqueued with dual-write off: file_ref-only payloads, active.
    let (reason, message) =
        abort_full_held_by_active_jobs(ns, &mut conn, "fa", &["j1", "j2"], 8).await;
    println!("full abort blocked: {reason}: {message}");
    // The jobs finish.
    let finished = finish_jobs(&mut conn, &["j1", "j2"]).await;
    let r = s.wait("fa", Phase::RolledBack).await;
    let done = Timestamp::now();
    let st = r.status.unwrap();
    assert_eq!(st.rollback.unwrap().level, RollbackLevel::Full);
    wait_rolled_to(ns, "worker-a", OLD_IMAGE).await;
    wait_rolled_to(ns, "api", API_OLD).await;
    assert_eq!(include(ns).await, "1");
    // From the store's history.
    check_full_rollback_order(history, finished);
    print_events("full abort", &events(ns).await);
    println!(
        "full abort: jobs finished -> RolledBack {:.2}s",
        secs(finished, done)
    );
}

/// 1b. The same stuck worker rollout with `onFailure: Pause`: held in UpgradingWorkers with
/// `Stalled=True` reason `ProgressDeadlineExceeded`, nothing reverted; once the cause is gone a
/// `retry` request resumes and the rollout completes.
#[tokio::test]
async fn stuck_worker_rollout_with_on_failure_pause_holds_until_retry() {
    let s = stuck_worker_fleet("op-stuckp").await;
    let ns = &s.ns;
    let _op = s
        .run(
            "sp",
            rollout_spec(
                &["worker-a"],
                json!({"progressDeadlineSeconds": 10, "onFailure": "Pause"}),
            ),
        )
        .await;
    s.wait("sp", Phase::UpgradingWorkers).await;
    let message = eventually("Stalled=True ProgressDeadlineExceeded", WAIT, || async {
        let st = status(ns, "sp").await;
        let c = st.conditions.iter().find(|c| c.type_ == "Stalled")?;
        (c.status == "True" && c.reason == "ProgressDeadlineExceeded").then(|| c.message.clone())
    })
    .await;
    assert!(
        message.contains("UpgradingWorkers made no progress"),
        "{message}"
    );
    let st = status(ns, "sp").await;
    assert_eq!(st.phase, Some(Phase::UpgradingWorkers));
    assert_eq!(st.hold.unwrap().reason, "ProgressDeadlineExceeded");
    assert!(st.rollback.is_none(), "Pause does not roll back");
    // The cause goes away (the Deployment controller finishes by itself): still held.
    drop_quota(ns).await;
    wait_rolled_to(ns, "worker-a", NEW_IMAGE).await;
    holds(ns, "sp", Phase::UpgradingWorkers, 4).await;
    assert_eq!(include(ns).await, "1");
    request(ns, "sp", Some("retry")).await;
    let r = s.wait("sp", Phase::Completed).await;
    assert!(r
        .status
        .unwrap()
        .last_request
        .unwrap()
        .outcome
        .starts_with("resumed after ProgressDeadlineExceeded"));
    print_events("stuck with onFailure Pause", &events(ns).await);
}

/// Requests act once whatever order re-applied manifests bring them back in: `abort` from the
/// manifest rolls back, `retry:1` goes forward again, and the unchanged manifest applied again (which
/// puts `abort` back) changes nothing and emits no Event.
#[tokio::test]
async fn a_reapplied_abort_after_a_retry_acts_once() {
    let spec = rollout_spec(&["worker-a"], json!({"dualWrite": {"soak": "1h"}}));
    let (s, _op) = Scenario::builder("op-reabort")
        .workers(&[("worker-a", 2)])
        .run("ra", spec.clone())
        .await;
    let ns = &s.ns;
    s.wait("ra", Phase::Soaking).await;
    let manifest = json!({"apiVersion": "dedup2d.io/v1alpha1", "kind": "Dedup2DRollout",
        "metadata": {"name": "ra", "annotations": {"dedup2d.io/request": "abort"}},
        "spec": spec});
    let api = ns.api::<Dedup2DRollout>();
    let ssa = PatchParams::apply("e2e");
    api.patch("ra", &ssa, &Patch::Apply(&manifest))
        .await
        .unwrap();
    wait_phase(ns, "ra", Phase::RolledBack, Duration::from_secs(30)).await;
    request(ns, "ra", Some("retry:1")).await;
    s.wait("ra", Phase::Soaking).await;
    wait_event_count(ns, "Request", 2).await;

    // The retry wrote the annotation last: a GitOps sync takes it back with a forced apply.
    api.patch("ra", &ssa.clone().force(), &Patch::Apply(&manifest))
        .await
        .unwrap();
    holds(ns, "ra", Phase::Soaking, 5).await;
    let st = status(ns, "ra").await;
    let seen: Vec<&str> = st
        .request_history
        .iter()
        .map(|r| r.request.as_str())
        .collect();
    assert_eq!(seen, ["abort", "retry:1"]);
    assert_eq!(st.last_request.unwrap().request, "retry:1");
    wait_event_count(ns, "Request", 2).await;
}

/// A brand-new rollout created from a manifest that still carries a stale `abort`: nothing was
/// written, so the abort is recorded as ignored and the rollout goes forward; it never rolls back
/// (which would turn dual-write on and restart the API for nothing).
#[tokio::test]
async fn a_new_rollout_carrying_a_stale_abort_goes_forward() {
    let s = Scenario::builder("op-staleabort")
        .workers(&[("worker-a", 2)])
        .fleet()
        .await;
    let ns = &s.ns;
    let manifest = json!({"apiVersion": "dedup2d.io/v1alpha1", "kind": "Dedup2DRollout",
        "metadata": {"name": "sa", "annotations": {"dedup2d.io/request": "abort"}},
        "spec": rollout_spec(&["worker-a"], json!({"dualWrite": {"soak": "1h"}}))});
    ns.api::<Dedup2DRollout>()
        .patch("sa", &PatchParams::apply("e2e"), &Patch::Apply(&manifest))
        .await
        .unwrap();
    let _op = crate::support::operator::Operator::start(&ns.name);
    let r = s.wait("sa", Phase::Soaking).await;
    let st = r.status.unwrap();
    let handled = st.last_request.expect("request recorded");
    assert_eq!(
        (handled.request.as_str(), handled.outcome.as_str()),
        ("abort", "ignored: nothing to roll back")
    );
    assert!(st.rollback.is_none());
    let phases: Vec<String> = transitions(ns).await.into_iter().map(|t| t.1).collect();
    assert!(
        !phases
            .iter()
            .any(|p| p.starts_with("Rolling") || p.starts_with("Rolled")),
        "{phases:?}"
    );
}
