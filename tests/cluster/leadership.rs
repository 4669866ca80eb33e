//! Leadership on the local control plane, in two layers. The elector: two on one Lease, exactly
//! one leads; when it goes the other takes over within the Lease duration; losing the Lease stops
//! the leader at once, and a replica that lost it stands by and leads again once the other holder's
//! Lease expired. The operator: two replicas on one Lease, only the leader acts (the standby never
//! starts the controller, never logs an action or transition), the standby is ready and serves
//! health and metrics, and after a SIGKILL of the leader the standby takes the Lease within the
//! lease duration plus a few seconds and finishes the rollout with the invariants holding.

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use dedup2d::operator::crd::Phase;
use dedup2d::operator::leader::{LeaderElector, LeaderError, Leadership};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use kube::api::{Patch, PatchParams};
use serde_json::json;

use crate::support::{
    fleet::*, kube::TestNamespace, operator::Operator, poll::eventually, scenario::Scenario,
};

const LEASE: &str = "dedup2d-operator";
const DURATION: Duration = Duration::from_secs(4);
const GRACE: Duration = Duration::from_secs(1);

async fn elector(ns: &TestNamespace, identity: &str) -> Leadership {
    elector_with(ns, identity, DURATION, GRACE).await
}

async fn elector_with(
    ns: &TestNamespace,
    identity: &str,
    duration: Duration,
    grace: Duration,
) -> Leadership {
    LeaderElector::new(ns.client.clone(), &ns.name, LEASE, identity)
        .with_timing(duration, grace)
        .unwrap()
        .start()
        .await
        .unwrap_or_else(|e| panic!("start elector {identity}: {e}"))
}

/// The Lease's holder identity, `None` while there is no Lease.
pub(crate) async fn holder(ns: &TestNamespace) -> Option<String> {
    ns.api::<Lease>()
        .get_opt(LEASE)
        .await
        .ok()??
        .spec?
        .holder_identity
}

/// Another party takes the Lease for `seconds` (as an expired-lease takeover would look).
async fn intruder_takes_the_lease(ns: &TestNamespace, seconds: i32) {
    let now = serde_json::to_value(MicroTime(k8s_openapi::jiff::Timestamp::now())).unwrap();
    ns.api::<Lease>()
        .patch(
            LEASE,
            &PatchParams::apply("intruder").force(),
            &Patch::Apply(json!({
                "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                "metadata": {"name": LEASE},
                "spec": {"holderIdentity": "intruder", "leaseDurationSeconds": seconds,
                         "acquireTime": now, "renewTime": now}
            })),
        )
        .await
        .unwrap();
}

/// Samples both electors for `span`: never both leading.
async fn never_both_lead(a: &Leadership, b: &Leadership, span: Duration) {
    let end = Instant::now() + span;
    while Instant::now() < end {
        assert!(
            !(a.is_leader() && b.is_leader()),
            "{} and {} both lead",
            a.identity(),
            b.identity()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn exactly_one_of_two_leads_and_the_other_takes_over() {
    let ns = TestNamespace::new("leader").await;
    let a = elector(&ns, "replica-a").await;
    let b = elector(&ns, "replica-b").await;

    let first = eventually("one elector leads", Duration::from_secs(20), || async {
        match (a.is_leader(), b.is_leader()) {
            (true, false) => Some("replica-a"),
            (false, true) => Some("replica-b"),
            (true, true) => panic!("both lead"),
            (false, false) => None,
        }
    })
    .await;
    assert_eq!(holder(&ns).await.as_deref(), Some(first));
    // Across several renewals the leader stays, alone.
    never_both_lead(&a, &b, DURATION * 2).await;
    let (leader, standby) = if first == "replica-a" { (a, b) } else { (b, a) };
    assert!(
        leader.is_leader(),
        "the leader kept the Lease across renewals"
    );
    assert!(!standby.is_leader());
    assert_eq!(holder(&ns).await.as_deref(), Some(first));

    // The leader goes away (release): the standby takes over within the lease duration.
    let gone = Instant::now();
    leader.release().await.expect("release");
    eventually(
        "the standby leads",
        DURATION + Duration::from_secs(3),
        || async { standby.is_leader().then_some(()) },
    )
    .await;
    let took = gone.elapsed();
    assert!(
        took <= DURATION + Duration::from_secs(2),
        "takeover took {took:?}"
    );
    assert_eq!(
        holder(&ns).await.as_deref(),
        Some(standby.identity()),
        "holderIdentity names the new leader"
    );
}

#[tokio::test]
async fn a_dropped_leader_is_replaced_within_the_lease_duration() {
    let ns = TestNamespace::new("leader").await;
    let a = elector(&ns, "replica-a").await;
    eventually("a leads", Duration::from_secs(20), || async {
        a.is_leader().then_some(())
    })
    .await;
    let b = elector(&ns, "replica-b").await;
    never_both_lead(&a, &b, Duration::from_secs(2)).await;
    assert!(!b.is_leader());

    let gone = Instant::now();
    drop(a);
    eventually("b leads", DURATION + Duration::from_secs(3), || async {
        b.is_leader().then_some(())
    })
    .await;
    assert!(gone.elapsed() <= DURATION + Duration::from_secs(2));
    assert_eq!(holder(&ns).await.as_deref(), Some("replica-b"));
}

#[tokio::test]
async fn losing_the_lease_stops_the_work_at_once() {
    let ns = TestNamespace::new("leader").await;
    // A long term: the lease manager itself would notice the takeover only at its next renewal,
    // up to 18 s later; the leader must stop as soon as the Lease shows another holder.
    let a = elector_with(
        &ns,
        "replica-a",
        Duration::from_secs(20),
        Duration::from_secs(2),
    )
    .await;
    let running = Arc::new(AtomicBool::new(false));
    let ticks = Arc::new(AtomicU32::new(0));
    let work = {
        let (running, ticks) = (running.clone(), ticks.clone());
        async move {
            running.store(true, Ordering::SeqCst);
            loop {
                ticks.fetch_add(1, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    };
    let lost_at = tokio::spawn(async move {
        let out: Result<(), LeaderError> = a.run_while_leader(work).await;
        (out, Instant::now(), a)
    });
    eventually("the work runs", Duration::from_secs(20), || async {
        running.load(Ordering::SeqCst).then_some(())
    })
    .await;

    // Another party takes the Lease (as an expired-lease takeover would look).
    let taken = Instant::now();
    intruder_takes_the_lease(&ns, 60).await;
    let (out, stopped, a) = tokio::time::timeout(Duration::from_secs(5), lost_at)
        .await
        .expect("the work was stopped within 5 s")
        .unwrap();
    match out {
        Err(LeaderError::Lost { identity, .. }) => assert_eq!(identity, "replica-a"),
        other => panic!("expected Lost, got {other:?}"),
    }
    let reaction = stopped.duration_since(taken);
    assert!(
        reaction < Duration::from_secs(1),
        "stopped {reaction:?} after the takeover; it must not wait for its next renewal"
    );
    assert!(!a.is_leader());
    // The work future was dropped: it no longer ticks.
    let n = ticks.load(Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(ticks.load(Ordering::SeqCst), n, "the work still runs");
    assert_eq!(holder(&ns).await.as_deref(), Some("intruder"));
}

#[tokio::test]
async fn a_leader_that_lost_the_lease_stands_by_and_leads_again_when_it_expires() {
    let ns = TestNamespace::new("leader").await;
    let a = elector(&ns, "replica-a").await;
    a.run_while_leader(async {}).await.expect("replica-a leads");

    // An intruder takes the Lease for a short term and then goes away without renewing.
    let term = 3;
    intruder_takes_the_lease(&ns, term).await;
    let taken = Instant::now();
    eventually(
        "replica-a stops leading",
        Duration::from_secs(2),
        || async { (!a.is_leader()).then_some(()) },
    )
    .await;

    // Standing by: the work only starts once replica-a holds the Lease again, after the term.
    let started = tokio::time::timeout(
        Duration::from_secs(term as u64) + DURATION * 2,
        a.run_while_leader(async { Instant::now() }),
    )
    .await
    .expect("replica-a leads again once the intruder's Lease expired")
    .expect("leading");
    let waited = started.duration_since(taken);
    assert!(
        waited >= Duration::from_secs(term as u64) - Duration::from_millis(500),
        "replica-a acted after {waited:?}, while the intruder's Lease was still valid"
    );
    assert_eq!(holder(&ns).await.as_deref(), Some("replica-a"));
}

// ----- two operator processes on one Lease ---------------------------------------------------

/// `--lease-duration` in [`crate::support::operator::LEASE_ARGS`].
const LEASE_DURATION: Duration = Duration::from_secs(6);

pub(crate) fn is_holder(holder: &Option<String>, op: &Operator) -> bool {
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
    let s = Scenario::builder("op-ha")
        .workers(&[("worker-a", 3)])
        .history()
        .fleet()
        .await;
    let ns = &s.ns;

    // A first, so that it leads; then B stands by on the same Lease.
    let mut a = Operator::start(&ns.name);
    eventually("A holds the Lease", WAIT, || async {
        is_holder(&holder(ns).await, &a).then_some(())
    })
    .await;
    let b = Operator::start(&ns.name);
    let (a_addr, b_addr) = (metrics_addr(&a).await, metrics_addr(&b).await);
    eventually("B stands by and is ready", WAIT, || async {
        let (code, _) = get(&b_addr, "/readyz").await;
        (code == 200 && b.log_text().contains("standing by")).then_some(())
    })
    .await;

    apply_rollout(ns, "ha", upgrade_spec(&["worker-a"], "30s")).await;
    s.wait("ha", Phase::Soaking).await;

    // Up to here A did everything, B nothing.
    assert!(is_holder(&holder(ns).await, &a), "A still leads");
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
        is_holder(&holder(ns).await, &b).then_some(())
    })
    .await;
    let took = killed.elapsed();
    println!("takeover after SIGKILL: {:.3}s", took.as_secs_f64());
    assert!(
        took <= LEASE_DURATION + Duration::from_secs(5),
        "takeover took {took:?}"
    );

    let r = s.wait("ha", Phase::Completed).await;
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
    s.check_completed_forward(&["worker-a"], NEW_IMAGE).await;
}
