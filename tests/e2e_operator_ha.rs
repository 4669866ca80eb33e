//! Two operator replicas on one Lease on the local control plane: only the leader acts (the standby
//! never starts the controller, never logs an action or transition), the standby is ready and serves
//! health and metrics, and after a SIGKILL of the leader the standby takes the Lease within the lease
//! duration plus a few seconds and finishes the rollout with the invariants holding.

mod common;
mod e2e_operator_support;

use std::time::{Duration, Instant};

use common::{
    cluster::{eventually, TestNamespace},
    RedisServer,
};
use dedup2d::operator::crd::Phase;
use e2e_operator_support::*;
use k8s_openapi::api::coordination::v1::Lease;
use serde_json::json;

const LEASE: &str = "dedup2d-operator";
/// `--lease-duration` in [`LEASE_ARGS`].
const LEASE_DURATION: Duration = Duration::from_secs(6);

async fn holder(ns: &TestNamespace) -> Option<String> {
    ns.api::<Lease>()
        .get_opt(LEASE)
        .await
        .ok()??
        .spec?
        .holder_identity
}

fn holds(holder: &Option<String>, op: &Operator) -> bool {
    holder
        .as_deref()
        .is_some_and(|h| h.ends_with(&format!("-{}", op.pid())))
}

/// Lines of the operator log that only a replica running the controller writes.
fn acting_lines(op: &Operator) -> Vec<String> {
    op.log_text()
        .lines()
        .filter(|l| {
            l.contains("dedup2d operator starting")
                || l.contains("applying")
                || l.contains("phase transition")
        })
        .map(str::to_string)
        .collect()
}

/// The /metrics address from the `serving /metrics` log line.
async fn metrics_addr(op: &Operator) -> String {
    eventually("metrics address logged", WAIT, || async {
        let text = op.log_text();
        let line = text.lines().find(|l| l.contains("serving /metrics"))?;
        let rest = &line[line.find("addr=")? + 5..];
        Some(rest.split_whitespace().next()?.to_string())
    })
    .await
}

async fn get(addr: &str, path: &str) -> (u16, String) {
    let r = reqwest::get(format!("http://{addr}{path}")).await.unwrap();
    (r.status().as_u16(), r.text().await.unwrap())
}

#[tokio::test]
async fn only_the_leader_acts_and_a_standby_takes_over_after_sigkill() {
    let ns = TestNamespace::new("op-ha").await;
    install_crd(&ns.client).await;
    let redis = RedisServer::start();
    fleet(&ns, &redis.url(), "0", &[("worker-a", 3)]).await;
    let history = History::start(&ns).await;

    // A first, so that it leads; then B stands by on the same Lease.
    let mut a = Operator::start(&ns.name);
    eventually("A holds the Lease", WAIT, || async {
        holds(&holder(&ns).await, &a).then_some(())
    })
    .await;
    let b = Operator::start(&ns.name);
    let (a_addr, b_addr) = (metrics_addr(&a).await, metrics_addr(&b).await);
    eventually("B stands by and is ready", WAIT, || async {
        let (code, _) = get(&b_addr, "/readyz").await;
        (code == 200 && b.log_text().contains("standing by")).then_some(())
    })
    .await;

    apply_rollout(
        &ns,
        "ha",
        json!({
            "workers": [{"deployment": "worker-a", "image": NEW_IMAGE}],
            "api": {"deployment": "api", "configMap": CM, "image": API_NEW},
            "dualWrite": {"enabled": true, "soak": "30s"},
            "drain": {"strategy": "Observe"},
        }),
    )
    .await;
    wait_phase(&ns, "ha", Phase::Soaking, WAIT).await;

    // Up to here A did everything, B nothing.
    assert!(holds(&holder(&ns).await, &a), "A still leads");
    let a_acts = acting_lines(&a);
    assert!(
        a_acts.iter().any(|l| l.contains("applying")),
        "the leader acted:\n{}",
        a.log_text()
    );
    assert!(
        a_acts.iter().all(|l| l.contains(&format!("-{}", a.pid()))),
        "the leader's lines carry its identity: {a_acts:#?}"
    );
    assert_eq!(
        acting_lines(&b),
        Vec::<String>::new(),
        "the standby never acts"
    );
    for (who, addr, leading) in [("A", &a_addr, 1), ("B", &b_addr, 0)] {
        assert_eq!(get(addr, "/healthz").await.0, 200, "{who} /healthz");
        assert_eq!(get(addr, "/readyz").await.0, 200, "{who} /readyz");
        let (_, body) = get(addr, "/metrics").await;
        assert!(
            body.contains(&format!("dedup2d_operator_leader {leading}")),
            "{who}: {body}"
        );
    }
    let (_, body) = get(&a_addr, "/metrics").await;
    assert!(
        body.contains("dedup2d_rollouts{phase=\"Soaking\"} 1"),
        "{body}"
    );
    assert!(body.contains("dedup2d_rollout_transitions_total"), "{body}");

    // SIGKILL the leader mid-soak: B takes the Lease within the lease duration + a few seconds.
    a.kill();
    let killed = Instant::now();
    eventually("B holds the Lease", LEASE_DURATION * 3, || async {
        holds(&holder(&ns).await, &b).then_some(())
    })
    .await;
    let took = killed.elapsed();
    println!("takeover after SIGKILL: {:.3}s", took.as_secs_f64());
    assert!(
        took <= LEASE_DURATION + Duration::from_secs(5),
        "takeover took {took:?}"
    );

    let r = wait_phase(&ns, "ha", Phase::Completed, WAIT).await;
    assert!(r.status.unwrap().finished_at.is_some());
    let b_acts = acting_lines(&b);
    assert!(
        b_acts.iter().any(|l| l.contains("phase transition")),
        "B finished the rollout:\n{}",
        b.log_text()
    );
    let (_, body) = get(&b_addr, "/metrics").await;
    assert!(body.contains("dedup2d_operator_leader 1"), "{body}");

    // Invariants from the recorded history.
    let h = history.by_revision();
    let offs = check_dual_write_off_after_workers(&h, &["worker-a"], NEW_IMAGE);
    assert_eq!(offs.len(), 1, "dual-write turned off once");
    assert_eq!(
        includes(&h),
        ["0", "1", "0"],
        "ConfigMap history 0 -> 1 -> 0"
    );
    let trans = transitions_until(&ns, "Completed").await;
    let phases: Vec<&str> = trans.iter().map(|t| t.1.as_str()).collect();
    let mut dedup = phases.clone();
    dedup.dedup();
    assert_eq!(phases, dedup, "no repeated transition Event");
    assert_eq!(
        phases.iter().filter(|p| **p == "Completed").count(),
        1,
        "{phases:?}"
    );
}
