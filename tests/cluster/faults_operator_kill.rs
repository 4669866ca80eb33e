//! Fault suite: operator SIGKILLs. Two operator replicas share one short Lease; at random moments
//! one of them (the Lease holder four times in five) is SIGKILLed and a new process started in its
//! place, while rollouts go forward, are aborted (quick during `Soaking`, full during `Draining`
//! with file_ref-only jobs active) and roll back by themselves (a stuck worker past its progress
//! deadline). Every rollout must reach its terminal phase, and the invariants are judged from the
//! recorded history: dual-write off only when no old worker pod existed, the ConfigMap's values in
//! order, a full rollback's images reverted only after dual-write was on again and the jobs were
//! done, `Completed` only after the legacy payloads were gone. Rounds of the four stories run in
//! parallel namespaces until the kill count is reached (8 in the normal run, 200 in the full one).
//! The kill schedule is seeded: the seed is printed, `DEDUP2D_FAULT_SEED` replays it (the cluster's
//! own timing is not replayed).

use std::{cell::RefCell, collections::BTreeMap, convert::Infallible, time::Duration};

use dedup2d::operator::crd::{Dedup2DRollout, Phase, RollbackLevel};
use serde_json::json;

use crate::leadership::{holder, is_holder};
use crate::safety::stuck_worker_fleet;
use crate::support::{
    faults::{fault_count, record_fault_counts},
    fleet::*,
    history::*,
    kube::TestNamespace,
    operator::Operator,
    poll::eventually,
    rollback::{abort_full_held_by_active_jobs, finish_jobs},
    scenario::Scenario,
};

const ROLLOUT: &str = "r";
/// How long a rollout may take to reach a phase while its operators are being killed.
const FAULT_WAIT: Duration = Duration::from_secs(300);
/// The pause between two kills in one namespace, in milliseconds.
const KILL_EVERY_MS: std::ops::Range<u64> = 1000..6000;

/// What one namespace's rollout goes through, and the terminal phase it must reach.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Story {
    /// Forward to `Completed`, the Observe drain held by legacy payloads until the test deletes them.
    Forward,
    /// `abort` during a long soak: `RolledBack`, quick.
    QuickAbort,
    /// `abort-full` during `Draining`, held by file_ref-only jobs: `RolledBack`, full.
    FullAbort,
    /// A worker that cannot roll (pod quota) past `progressDeadlineSeconds`: `RolledBack`, full.
    AutoRollback,
}

const STORIES: [Story; 4] = [
    Story::Forward,
    Story::QuickAbort,
    Story::FullAbort,
    Story::AutoRollback,
];

/// What the story's driver hands to its checks.
enum Driven {
    /// The revision just before the legacy payloads were deleted.
    LegacyDeletedAfter(u64),
    /// When the file_ref-only jobs finished.
    JobsFinished(k8s_openapi::jiff::Timestamp),
    Nothing,
}

/// The run's counts, shared by the namespaces of a round (one thread: a `RefCell`).
#[derive(Default)]
struct Tally {
    kills: usize,
    leader_kills: usize,
    by_phase: BTreeMap<String, usize>,
    rollouts: BTreeMap<String, usize>,
    checks_passed: usize,
}

/// The two operator replicas of one namespace.
struct Replicas {
    ops: [Operator; 2],
}

impl Replicas {
    fn start(ns: &str) -> Self {
        Replicas {
            ops: [Operator::start(ns), Operator::start(ns)],
        }
    }

    /// SIGKILLs one replica, the Lease holder four times in five when one of them holds it (else
    /// either), and starts a new process in its place. Returns whether it held the Lease.
    async fn kill_one(&mut self, ns: &TestNamespace, rng: &mut fastrand::Rng) -> bool {
        let lease = holder(ns).await;
        let leader = self.ops.iter().position(|op| is_holder(&lease, op));
        let victim = match leader {
            Some(l) if rng.u8(0..5) != 0 => l,
            _ => rng.usize(0..2),
        };
        self.ops[victim].kill();
        self.ops[victim] = Operator::start(&ns.name);
        leader == Some(victim)
    }
}

async fn phase_now(ns: &TestNamespace) -> String {
    let r = ns
        .api::<Dedup2DRollout>()
        .get_opt(ROLLOUT)
        .await
        .ok()
        .flatten();
    r.and_then(|r| r.status?.phase)
        .map_or_else(|| "none yet".to_string(), |p| p.to_string())
}

/// Kills a replica every [`KILL_EVERY_MS`], counting each kill by the phase it landed in. Runs
/// until dropped.
async fn kill_loop(
    replicas: &mut Replicas,
    ns: &TestNamespace,
    rng: &mut fastrand::Rng,
    tally: &RefCell<Tally>,
) -> Infallible {
    loop {
        tokio::time::sleep(Duration::from_millis(rng.u64(KILL_EVERY_MS))).await;
        let phase = phase_now(ns).await;
        let was_leader = replicas.kill_one(ns, rng).await;
        let mut t = tally.borrow_mut();
        t.kills += 1;
        t.leader_kills += usize::from(was_leader);
        *t.by_phase.entry(phase).or_default() += 1;
    }
}

async fn wait_fault(ns: &TestNamespace, phase: Phase) -> Dedup2DRollout {
    wait_phase(ns, ROLLOUT, phase, FAULT_WAIT).await
}

/// A random pause of up to `max_ms`, so that kills also land while a phase is held.
async fn linger(rng: &mut fastrand::Rng, max_ms: u64) {
    tokio::time::sleep(Duration::from_millis(rng.u64(0..max_ms))).await;
}

impl Story {
    /// The namespace with its fleet and history, and the rollout applied.
    async fn set_up(self) -> Scenario {
        let s = match self {
            Story::AutoRollback => {
                let mut s = stuck_worker_fleet("fault-auto").await;
                s.start_history().await;
                s
            }
            Story::Forward => {
                Scenario::builder("fault-fwd")
                    .payloads(&["l1", "l2"], &[])
                    .workers(&[("worker-a", 3), ("worker-b", 2)])
                    .history()
                    .fleet()
                    .await
            }
            Story::QuickAbort => {
                Scenario::builder("fault-quick")
                    .workers(&[("worker-a", 2)])
                    .history()
                    .fleet()
                    .await
            }
            Story::FullAbort => {
                Scenario::builder("fault-full")
                    .payloads(&["l1"], &[])
                    .workers(&[("worker-a", 2)])
                    .history()
                    .fleet()
                    .await
            }
        };
        apply_rollout(&s.ns, ROLLOUT, self.spec()).await;
        s
    }

    fn spec(self) -> serde_json::Value {
        match self {
            Story::Forward => upgrade_spec(&["worker-a", "worker-b"], "5s"),
            Story::QuickAbort => upgrade_spec(&["worker-a"], "1h"),
            Story::FullAbort => upgrade_spec(&["worker-a"], "0"),
            Story::AutoRollback => rollout_spec(
                &["worker-a"],
                json!({"api": {"image": API_NEW}, "dualWrite": {"soak": "1h"},
                       "progressDeadlineSeconds": 15, "onFailure": "Rollback"}),
            ),
        }
    }

    fn workers(self) -> &'static [&'static str] {
        match self {
            Story::Forward => &["worker-a", "worker-b"],
            _ => &["worker-a"],
        }
    }

    /// Steers the rollout to its terminal phase (the operators being killed meanwhile).
    async fn drive(self, s: &Scenario, rng: &mut fastrand::Rng) -> Driven {
        let ns = &s.ns;
        match self {
            Story::Forward => {
                wait_fault(ns, Phase::Draining).await;
                linger(rng, 5000).await;
                let before = revision_now(ns).await;
                let _: () = redis::cmd("DEL")
                    .arg("dedup2d:payload:l1")
                    .arg("dedup2d:payload:l2")
                    .query_async(&mut s.conn.clone())
                    .await
                    .unwrap();
                wait_fault(ns, Phase::Completed).await;
                Driven::LegacyDeletedAfter(before)
            }
            Story::QuickAbort => {
                wait_fault(ns, Phase::Soaking).await;
                linger(rng, 5000).await;
                request(ns, ROLLOUT, Some("abort")).await;
                wait_fault(ns, Phase::RolledBack).await;
                Driven::Nothing
            }
            Story::FullAbort => {
                wait_fault(ns, Phase::Draining).await;
                linger(rng, 5000).await;
                let ids = ["j1", "j2"];
                let hold = rng.u32(2..6);
                abort_full_held_by_active_jobs(ns, &mut s.conn.clone(), ROLLOUT, &ids, hold).await;
                let finished = finish_jobs(&mut s.conn.clone(), &ids).await;
                wait_fault(ns, Phase::RolledBack).await;
                Driven::JobsFinished(finished)
            }
            Story::AutoRollback => {
                wait_fault(ns, Phase::RolledBack).await;
                Driven::Nothing
            }
        }
    }

    /// The invariants of this story, from the recorded history; returns how many checks passed.
    async fn check(self, s: &Scenario, driven: Driven) -> usize {
        let h = s.history().by_revision();
        let ns = &s.ns;
        // Invariant 1 for every story: dual-write off only with no old worker pod.
        let offs = check_dual_write_off_after_workers(&h, self.workers(), NEW_IMAGE);
        let st = status(ns, ROLLOUT).await;
        let level = st.rollback.as_ref().map(|r| r.level);
        let rest = match (self, driven) {
            (Story::Forward, Driven::LegacyDeletedAfter(before)) => {
                // Exactly one dual-write-off, 0 -> 1 -> 0, every transition Event once in order.
                s.check_completed_forward(self.workers(), NEW_IMAGE).await;
                let done = first_in_phase(&h, Phase::Completed).expect("Completed recorded");
                assert!(
                    done > before,
                    "Completed at revision {done}, before the legacy payloads were deleted ({before})"
                );
                // The summary is a progress figure: a transient "1/2" (a Deployment's generation
                // moves when the originals annotation is removed at Completed) is coalesced and
                // corrected within one coalescing interval.
                let wait =
                    dedup2d::operator::plan::coalesce::COALESCE_INTERVAL + Duration::from_secs(30);
                eventually("the worker summary 2/2", wait, || async {
                    let st = status(ns, ROLLOUT).await;
                    (st.worker_summary.as_deref() == Some("2/2")).then_some(())
                })
                .await;
                5
            }
            (Story::QuickAbort, _) => {
                assert_eq!(level, Some(RollbackLevel::Quick));
                assert_eq!(includes(&h), ["0", "1"], "dual-write never went off");
                assert_eq!(template_image(&deploy(ns, "worker-a").await), NEW_IMAGE);
                assert_eq!(template_image(&deploy(ns, "api").await), API_NEW);
                4
            }
            (Story::FullAbort, Driven::JobsFinished(finished)) => {
                assert_eq!(level, Some(RollbackLevel::Full));
                // 0 -> 1 -> 0 -> 1; images reverted only after dual-write on and the jobs done.
                check_full_rollback_order(s.history(), finished);
                wait_rolled_to(ns, "worker-a", OLD_IMAGE).await;
                4
            }
            (Story::AutoRollback, _) => {
                assert_eq!(level, Some(RollbackLevel::Full));
                assert_eq!(includes(&h), ["0", "1"], "dual-write never went off");
                assert_eq!(template_image(&deploy(ns, "worker-a").await), OLD_IMAGE);
                3
            }
            (story, _) => unreachable!("{story:?} drove to the wrong outcome"),
        };
        assert!(
            offs.len() <= 1,
            "dual-write turned off more than once: {offs:?}"
        );
        rest + 1
    }

    /// The whole story: set up, drive it while killing operators, check it with the last two
    /// replicas still running (a lost transition Event is re-published by the leader).
    async fn play(self, seed: u64, tally: &RefCell<Tally>) {
        let s = self.set_up().await;
        let mut replicas = Replicas::start(&s.ns.name);
        let (mut drive_rng, mut kill_rng) = (
            fastrand::Rng::with_seed(seed),
            fastrand::Rng::with_seed(seed.rotate_left(32) ^ 0x9e37_79b9),
        );
        let driven = tokio::select! {
            d = self.drive(&s, &mut drive_rng) => d,
            never = kill_loop(&mut replicas, &s.ns, &mut kill_rng, tally) => match never {},
        };
        let passed = self.check(&s, driven).await;
        let mut t = tally.borrow_mut();
        t.checks_passed += passed;
        *t.rollouts.entry(format!("{self:?}")).or_default() += 1;
        drop(replicas);
    }
}

fn seed() -> u64 {
    let seed = std::env::var("DEDUP2D_FAULT_SEED")
        .ok()
        .map(|v| v.parse().expect("DEDUP2D_FAULT_SEED is a u64"))
        .unwrap_or_else(|| fastrand::u64(..));
    println!("fault seed {seed} (DEDUP2D_FAULT_SEED={seed} replays the kill schedule)");
    seed
}

#[tokio::test]
async fn faults_operator_sigkills_in_every_phase_keep_the_invariants() {
    let seed = seed();
    let want = fault_count(8, 200);
    let tally = RefCell::new(Tally::default());
    let started = std::time::Instant::now();
    let mut round = 0u64;
    while tally.borrow().kills < want {
        let plays = STORIES
            .iter()
            .enumerate()
            .map(|(i, story)| story.play(seed ^ (round * 16 + i as u64), &tally));
        futures::future::join_all(plays).await;
        round += 1;
        println!("round {round}: {} kills so far", tally.borrow().kills);
    }
    let t = tally.into_inner();
    // Kills landed in every phase a story holds for a while.
    for phase in ["UpgradingWorkers", "Soaking", "Draining", "RollingBack"] {
        assert!(
            !crate::support::faults::full_run() || t.by_phase.contains_key(phase),
            "no kill landed in {phase}: {:?}",
            t.by_phase
        );
    }
    record_fault_counts(
        "operator_sigkill",
        &json!({
            "seed": seed,
            "replicas": 2,
            "lease_duration_s": 6,
            "kills": t.kills,
            "kills_of_the_leader": t.leader_kills,
            "kills_by_phase": t.by_phase,
            "rounds": round,
            "rollouts_by_story": t.rollouts,
            "invariant_checks_passed": t.checks_passed,
            "wall_s": started.elapsed().as_secs(),
        }),
    );
}
