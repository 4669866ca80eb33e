//! Fault suite: Redis stopped and restarted (same port, its data kept as a persistent Redis keeps
//! it) while a rollout waits on it, in `UpgradingWorkers` (workers with `evidence: Heartbeat`: a
//! pod counts as new only with a heartbeat read from Redis) and in `Draining` (the Observe drain,
//! held by a legacy payload). While Redis is down the recorded history shows no phase change and
//! the status says why; once it is back the rollout resumes from fresh figures (never assumed
//! drained) and completes with the invariants holding. Each test stops Redis once in the normal
//! run and three times in the full run.

use std::{future::Future, time::Duration};

use dedup2d::operator::crd::Phase;
use dedup2d::worker::heartbeat::Capability;
use k8s_openapi::api::core::v1::Pod;
use kube::api::ListParams;
use serde_json::json;

use crate::stalled::stalled;
use crate::support::{
    faults::{fault_count, record_fault_counts},
    fleet::*,
    history::*,
    kube::TestNamespace,
    operator::Operator,
    poll::eventually,
    redis::RedisServer,
    scenario::Scenario,
};

const ROLLOUT: &str = "r";

/// Stops Redis, runs `while_down`, starts Redis again. Returns the store's revisions just after
/// it stopped and just before it came back: the history between them is the time it was down.
async fn redis_down_while(
    redis: &mut RedisServer,
    ns: &TestNamespace,
    while_down: impl Future<Output = ()>,
) -> (u64, u64) {
    redis.stop();
    let down = revision_now(ns).await;
    while_down.await;
    let up = revision_now(ns).await;
    redis.restart();
    (down, up)
}

/// The rollout's `RollbackSafe` condition as `(status, reason)`.
async fn rollback_safe(ns: &TestNamespace) -> Option<(String, String)> {
    let st = status(ns, ROLLOUT).await;
    let c = st
        .conditions
        .into_iter()
        .find(|c| c.type_ == "RollbackSafe")?;
    Some((c.status, c.reason))
}

/// Waits until the rollout is no longer `Stalled=True`.
async fn not_stalled(ns: &TestNamespace) {
    eventually("Stalled cleared", WAIT, || async {
        let st = status(ns, ROLLOUT).await;
        let c = st.conditions.iter().find(|c| c.type_ == "Stalled")?;
        (c.status != "True").then_some(())
    })
    .await;
}

/// What a new worker writes to Redis for each pod of `app`: its capability heartbeat.
async fn heartbeats_of(s: &Scenario, app: &str) {
    let pods =
        s.ns.api::<Pod>()
            .list(&ListParams::default().labels(&format!("app={app}")))
            .await
            .unwrap();
    let body =
        serde_json::to_string(&Capability::this_process(vec!["dedup2d:queue".into()])).unwrap();
    for p in pods.items {
        let key = format!("dedup2d:worker:{}", p.metadata.name.unwrap());
        let _: () = redis::cmd("SET")
            .arg(key)
            .arg(&body)
            .arg("EX")
            .arg(3600)
            .query_async(&mut s.conn.clone())
            .await
            .unwrap();
    }
}

/// Waits until the drain's figures count the one legacy payload.
async fn legacy_counted(ns: &TestNamespace) {
    eventually("the drain counts the legacy payload", WAIT, || async {
        (status(ns, ROLLOUT).await.legacy_payloads == Some(1)).then_some(())
    })
    .await
}

/// The history held `phase` (and nothing else) through every down window.
fn held_through(s: &Scenario, windows: &[(u64, u64)], phase: Phase) -> usize {
    let h = s.history().by_revision();
    for (down, up) in windows {
        assert_eq!(
            phases_between(&h, *down, *up),
            [Some(phase)],
            "the phase changed while Redis was down (revisions {down}..{up})"
        );
    }
    windows.len()
}

#[tokio::test]
async fn faults_redis_down_in_upgrading_workers_holds_then_resumes() {
    let mut s = Scenario::builder("fault-redis-up")
        .workers(&[("worker-a", 2)])
        .history()
        .fleet()
        .await;
    let _op = Operator::start(&s.ns.name);
    let mut spec = upgrade_spec(&["worker-a"], "0");
    spec["workers"][0]["evidence"] = json!("Heartbeat");
    apply_rollout(&s.ns, ROLLOUT, spec).await;
    s.wait(ROLLOUT, Phase::UpgradingWorkers).await;

    let mut windows = vec![];
    for _ in 0..fault_count(1, 3) {
        let ns = &s.ns;
        let window = redis_down_while(&mut s.redis, ns, async {
            // The pods roll to the new image, but with no heartbeat readable none counts as new.
            wait_rolled_to(ns, "worker-a", NEW_IMAGE).await;
            eventually("RollbackSafe=Unknown RedisUnreachable", WAIT, || async {
                let safe = rollback_safe(ns).await?;
                (safe == ("Unknown".into(), "RedisUnreachable".into())).then_some(())
            })
            .await;
            holds(ns, ROLLOUT, Phase::UpgradingWorkers, 3).await;
            // The message is a progress figure: written within one coalescing interval.
            let wait = dedup2d::operator::plan::coalesce::COALESCE_INTERVAL + WAIT;
            eventually(
                "the message to say the heartbeats are unreadable",
                wait,
                || async {
                    let message = status(ns, ROLLOUT).await.message.unwrap_or_default();
                    (message.contains("0/2 pods new") && message.contains("heartbeats unreadable"))
                        .then_some(())
                },
            )
            .await;
            holds(ns, ROLLOUT, Phase::UpgradingWorkers, 1).await;
        })
        .await;
        windows.push(window);
        // The test's own connection broke with the server; the operator makes its own.
        s.conn = s.redis.manager().await;
        // Back up, still no heartbeat: still waiting (Redis being back proves nothing by itself).
        eventually("RollbackSafe known again", WAIT, || async {
            let safe = rollback_safe(&s.ns).await?;
            (safe.1 != "RedisUnreachable").then_some(())
        })
        .await;
        assert_eq!(
            status(&s.ns, ROLLOUT).await.phase,
            Some(Phase::UpgradingWorkers)
        );
    }
    // The workers heartbeat into the restarted Redis: the rollout goes on and completes.
    heartbeats_of(&s, "worker-a").await;
    s.wait(ROLLOUT, Phase::Completed).await;
    let held = held_through(&s, &windows, Phase::UpgradingWorkers);
    s.check_completed_forward(&["worker-a"], NEW_IMAGE).await;
    record_fault_counts(
        "redis_restart_upgrading_workers",
        &json!({"redis_stops": windows.len(), "windows_held": held, "invariant_checks_passed": held + 3}),
    );
}

#[tokio::test]
async fn faults_redis_down_in_draining_holds_then_resumes() {
    let mut s = Scenario::builder("fault-redis-drain")
        .payloads(&["l1"], &[])
        .workers(&[("worker-a", 2)])
        .history()
        .fleet()
        .await;
    let _op = Operator::start(&s.ns.name);
    apply_rollout(&s.ns, ROLLOUT, upgrade_spec(&["worker-a"], "0")).await;
    s.wait(ROLLOUT, Phase::Draining).await;
    legacy_counted(&s.ns).await;

    let mut windows = vec![];
    for _ in 0..fault_count(1, 3) {
        let ns = &s.ns;
        let window = redis_down_while(&mut s.redis, ns, async {
            let message = stalled(ns, ROLLOUT, "RedisUnreachable").await;
            assert!(
                message.contains("Redis unreachable, drain on hold"),
                "{message}"
            );
            assert_eq!(
                rollback_safe(ns).await,
                Some(("Unknown".into(), "RedisUnreachable".into()))
            );
            holds(ns, ROLLOUT, Phase::Draining, 3).await;
        })
        .await;
        windows.push(window);
        // The test's own connection broke with the server; the operator makes its own.
        s.conn = s.redis.manager().await;
        // Back with its data: the stall clears and the drain reads the legacy payload again.
        not_stalled(&s.ns).await;
        legacy_counted(&s.ns).await;
        assert_eq!(status(&s.ns, ROLLOUT).await.phase, Some(Phase::Draining));
    }
    let deleted_after = revision_now(&s.ns).await;
    let _: () = redis::cmd("DEL")
        .arg("dedup2d:payload:l1")
        .query_async(&mut s.conn.clone())
        .await
        .unwrap();
    wait_phase(&s.ns, ROLLOUT, Phase::Completed, Duration::from_secs(60)).await;
    let held = held_through(&s, &windows, Phase::Draining);
    let h = s.history().by_revision();
    let done = first_in_phase(&h, Phase::Completed).expect("Completed recorded");
    assert!(
        done > deleted_after,
        "Completed at revision {done}, before the legacy payload was deleted ({deleted_after})"
    );
    s.check_completed_forward(&["worker-a"], NEW_IMAGE).await;
    record_fault_counts(
        "redis_restart_draining",
        &json!({"redis_stops": windows.len(), "windows_held": held, "invariant_checks_passed": held + 4}),
    );
}
