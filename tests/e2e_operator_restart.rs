//! Restart resilience on the local control plane: the operator process is SIGKILLed in each phase of
//! the forward path it is seen in (at least five of them), a new process takes over the Lease and
//! resumes, and the rollout completes with the invariants holding, checked from the recorded history:
//! dual-write off only after no old worker pod is left, the ConfigMap went 0 -> 1 -> 0 exactly, and
//! every transition was reported exactly once.

mod common;
mod e2e_operator_support;

use std::time::{Duration, Instant};

use common::{cluster::TestNamespace, RedisServer};
use dedup2d::operator::crd::{Dedup2DRollout, Phase};
use e2e_operator_support::*;
use serde_json::json;

const FORWARD: [Phase; 7] = [
    Phase::DualWriteOn,
    Phase::UpgradingWorkers,
    Phase::UpgradingApi,
    Phase::Soaking,
    Phase::DualWriteOff,
    Phase::Draining,
    Phase::Completed,
];

fn rank(p: Phase) -> usize {
    FORWARD.iter().position(|q| *q == p).unwrap_or(0)
}

/// Polls the rollout until it is in `target` (`Some(target)`) or already past it (`None`).
async fn reach(ns: &TestNamespace, target: Phase) -> Option<Phase> {
    let api = ns.api::<Dedup2DRollout>();
    let deadline = Instant::now() + WAIT;
    loop {
        assert!(Instant::now() < deadline, "rollout never reached {target}");
        if let Ok(r) = api.get("restart").await {
            if let Some(p) = r.status.and_then(|s| s.phase) {
                if p == target {
                    return Some(p);
                }
                if FORWARD.contains(&p) && rank(p) > rank(target) {
                    return None;
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

#[tokio::test]
async fn sigkill_in_every_phase_resumes_and_completes() {
    let ns = TestNamespace::new("op-restart").await;
    install_crd(&ns.client).await;
    let redis = RedisServer::start();
    let mut conn = redis.manager().await;
    // Legacy payloads hold the Observe drain until the test removes them.
    write_payloads(&mut conn, &["l1", "l2"], &[], 3600).await;
    fleet(&ns, &redis.url(), "0", &[("worker-a", 6), ("worker-b", 4)]).await;
    let history = History::start(&ns).await;

    let mut op = Operator::start(&ns.name);
    apply_rollout(
        &ns,
        "restart",
        json!({
            "workers": [
                {"deployment": "worker-a", "image": NEW_IMAGE},
                {"deployment": "worker-b", "image": NEW_IMAGE}
            ],
            "api": {"deployment": "api", "configMap": CM, "image": API_NEW},
            "dualWrite": {"enabled": true, "soak": "5s"},
            "drain": {"strategy": "Observe"},
        }),
    )
    .await;

    let mut killed_in = vec![];
    for target in &FORWARD[..6] {
        let Some(phase) = reach(&ns, *target).await else {
            println!("{target}: passed before it was seen");
            continue;
        };
        op.kill();
        killed_in.push(phase);
        println!("SIGKILL in {phase}");
        if phase == Phase::Draining {
            let _: () = redis::cmd("DEL")
                .arg("dedup2d:payload:l1")
                .arg("dedup2d:payload:l2")
                .query_async(&mut conn)
                .await
                .unwrap();
        }
        op = Operator::start(&ns.name);
    }
    assert!(
        killed_in.len() >= 5,
        "killed in only {killed_in:?}; need at least five phases"
    );

    let r = wait_phase(&ns, "restart", Phase::Completed, WAIT).await;
    assert_eq!(r.status.unwrap().worker_summary.as_deref(), Some("2/2"));

    // Invariants from the recorded history.
    let h = history.by_revision();
    let offs = check_dual_write_off_after_workers(&h, &["worker-a", "worker-b"], NEW_IMAGE);
    assert_eq!(offs.len(), 1, "dual-write turned off once");
    let includes = sequence(&h, |r| match r {
        Rec::ConfigMap { include_b64, .. } => include_b64.clone(),
        _ => None,
    });
    assert_eq!(includes, ["0", "1", "0"], "ConfigMap history 0 -> 1 -> 0");

    // Each transition reported once (a repeat would be a second Event or a series on one).
    let trans = transitions_until(&ns, "Completed").await;
    let phases: Vec<String> = trans.into_iter().map(|t| t.1).collect();
    // In forward order, none twice, none lost: a SIGKILL between the status write and the Event
    // publication is repaired by the next process from `status.transitions`.
    let expected: Vec<String> = FORWARD.iter().map(|p| p.to_string()).collect();
    let mut rest = expected.iter();
    for p in &phases {
        assert!(
            rest.any(|e| e == p),
            "transition Events out of order or repeated: {phases:?}"
        );
    }
    assert_eq!(phases, expected, "a transition Event was lost to a SIGKILL");
    let r = ns.api::<Dedup2DRollout>().get("restart").await.unwrap();
    let recorded: Vec<String> = r
        .status
        .unwrap()
        .transitions
        .iter()
        .map(|t| t.to.to_string())
        .collect();
    assert_eq!(recorded, expected, "status.transitions");
    assert_eq!(phases.last().map(String::as_str), Some("Completed"));
    let events: kube::Api<k8s_openapi::api::events::v1::Event> = ns.api();
    for e in events.list(&Default::default()).await.unwrap().items {
        let note = e.note.clone().unwrap_or_default();
        if e.reporting_controller.as_deref() == Some("dedup2d-operator") && note.contains(" -> ") {
            assert!(e.series.is_none(), "repeated transition Event: {note}");
        }
    }
    drop(op);
}
