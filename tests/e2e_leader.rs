//! Leader election on the local control plane: two electors on one Lease, exactly one leads; when it
//! goes the other takes over within the Lease duration; losing the Lease stops the leader at once,
//! and a replica that lost it stands by and leads again once the other holder's Lease expired.

mod common;

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::cluster::{eventually, TestNamespace};
use dedup2d::operator::leader::{LeaderElector, LeaderError, Leadership};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use kube::api::{Patch, PatchParams};
use serde_json::json;

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

async fn holder(ns: &TestNamespace) -> Option<String> {
    ns.api::<Lease>()
        .get(LEASE)
        .await
        .ok()?
        .spec?
        .holder_identity
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
    let now = serde_json::to_value(MicroTime(k8s_openapi::jiff::Timestamp::now())).unwrap();
    ns.api::<Lease>()
        .patch(
            LEASE,
            &PatchParams::apply("intruder").force(),
            &Patch::Apply(json!({
                "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                "metadata": {"name": LEASE},
                "spec": {"holderIdentity": "intruder", "leaseDurationSeconds": 60,
                         "acquireTime": now, "renewTime": now}
            })),
        )
        .await
        .unwrap();
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
    let now = serde_json::to_value(MicroTime(k8s_openapi::jiff::Timestamp::now())).unwrap();
    ns.api::<Lease>()
        .patch(
            LEASE,
            &PatchParams::apply("intruder").force(),
            &Patch::Apply(json!({
                "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                "metadata": {"name": LEASE},
                "spec": {"holderIdentity": "intruder", "leaseDurationSeconds": term,
                         "acquireTime": now, "renewTime": now}
            })),
        )
        .await
        .unwrap();
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
