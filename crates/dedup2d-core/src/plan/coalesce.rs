//! Status-write coalescing: which status changes are worth a write now.
//!
//! A change that matters is written at once: the phase, a condition's status or reason, a recorded
//! value (field records, in-effect times, holds, the rollback, request history), the drain figures
//! and whether each worker Deployment is upgraded. What only restates progress or what the world
//! shows anyway is coalesced: the message, a condition's message, the per-worker pod counters, and
//! a field record turning `confirmed` (the written value seen in place; the planner confirms it
//! again from the world until the write lands). It is written at most [`COALESCE_INTERVAL`] after
//! the last write, or together with the next change that matters.

use std::time::Duration;

use k8s_openapi::jiff::Timestamp;

use crate::crd::Dedup2DRolloutStatus as Status;

/// The longest a progress-only change (a message, pod counters) waits before it is written.
pub const COALESCE_INTERVAL: Duration = Duration::from_secs(30);

/// What a write must say now: `status` without the parts that only restate progress.
fn what_matters(status: &Status) -> Status {
    let mut s = status.clone();
    s.message = None;
    for c in &mut s.conditions {
        c.message.clear();
    }
    for w in &mut s.workers {
        (w.pods, w.updated, w.ready, w.old) = (0, 0, 0, 0);
    }
    for r in &mut s.fields {
        r.confirmed = false;
    }
    s
}

/// Is the difference between `old` and `new` only progress (nothing that matters changed)?
pub fn only_progress_changed(old: Option<&Status>, new: &Status) -> bool {
    old.is_some_and(|old| what_matters(old) == what_matters(new))
}

/// Should `new` be written over the stored `old`? Yes when it differs in something that matters
/// (see the module docs); a progress-only difference waits until [`COALESCE_INTERVAL`] has passed
/// since `last_written_at` (unknown, e.g. after a restart: written now).
pub fn status_write_needed(
    old: Option<&Status>,
    new: &Status,
    last_written_at: Option<Timestamp>,
    now: Timestamp,
) -> bool {
    if old == Some(new) {
        return false;
    }
    if !only_progress_changed(old, new) {
        return true;
    }
    last_written_at.is_none_or(|at| coalesce_wait(at, now).is_zero())
}

/// How long a coalesced change still waits when the last write was at `last_written_at`.
pub fn coalesce_wait(last_written_at: Timestamp, now: Timestamp) -> Duration {
    let elapsed_ms = (now.as_millisecond() - last_written_at.as_millisecond()).max(0);
    COALESCE_INTERVAL.saturating_sub(Duration::from_millis(elapsed_ms as u64))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::{FieldRecord, Phase, WorkerStatus};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
    use proptest::prelude::*;

    fn at(secs: i64) -> Timestamp {
        Timestamp::from_second(1_800_000_000 + secs).unwrap()
    }

    fn status(message: &str, ready: i32, upgraded: bool, cond: (&str, &str, &str)) -> Status {
        Status {
            phase: Some(Phase::UpgradingWorkers),
            message: Some(message.into()),
            conditions: vec![Condition {
                type_: "Ready".into(),
                status: cond.0.into(),
                reason: cond.1.into(),
                message: cond.2.into(),
                observed_generation: Some(1),
                last_transition_time: Time(at(0)),
            }],
            workers: vec![WorkerStatus {
                deployment: "w".into(),
                pods: 3,
                updated: ready,
                ready,
                old: 3 - ready,
                upgraded,
            }],
            ..Default::default()
        }
    }

    fn base() -> Status {
        status(
            "1/3 pods updated",
            1,
            false,
            ("False", "Progressing", "1/3"),
        )
    }

    #[test]
    fn a_first_status_is_written_and_an_unchanged_one_never() {
        assert!(status_write_needed(None, &base(), None, at(0)));
        assert!(!status_write_needed(Some(&base()), &base(), None, at(0)));
        assert!(!status_write_needed(
            Some(&base()),
            &base(),
            Some(at(0)),
            at(1000)
        ));
    }

    #[test]
    fn a_counter_change_waits_for_the_interval() {
        let new = status(
            "2/3 pods updated",
            2,
            false,
            ("False", "Progressing", "2/3"),
        );
        let old = base();
        assert!(!status_write_needed(Some(&old), &new, Some(at(0)), at(29)));
        assert!(status_write_needed(Some(&old), &new, Some(at(0)), at(30)));
        assert!(
            status_write_needed(Some(&old), &new, None, at(0)),
            "no known last write: written"
        );
        assert_eq!(coalesce_wait(at(0), at(10)), Duration::from_secs(20));
        assert_eq!(coalesce_wait(at(0), at(100)), Duration::ZERO);
    }

    #[test]
    fn what_matters_is_written_at_once() {
        let old = base();
        let recent = Some(at(0));
        let mut phase = old.clone();
        phase.phase = Some(Phase::Soaking);
        let flipped = status("1/3 pods updated", 1, false, ("True", "Progressing", "1/3"));
        let reason = status("1/3 pods updated", 1, false, ("False", "Stalled", "1/3"));
        let upgraded = status("1/3 pods updated", 1, true, ("False", "Progressing", "1/3"));
        let mut figures = old.clone();
        figures.legacy_payloads = Some(2);
        let mut dual = old.clone();
        dual.dual_write_on_in_effect_at = Some(Time(at(1)));
        let mut record = old.clone();
        record.fields.push(FieldRecord {
            field: "Deployment/w/containers/worker/image".into(),
            previous: Some("w:1".into()),
            written: "w:2".into(),
            confirmed: false,
        });
        for (what, new) in [
            ("phase", phase),
            ("condition status", flipped),
            ("condition reason", reason),
            ("worker upgraded", upgraded),
            ("drain figures", figures),
            ("recorded time", dual),
            ("a new field record", record),
        ] {
            assert!(
                status_write_needed(Some(&old), &new, recent, at(1)),
                "{what}"
            );
        }
    }

    #[test]
    fn a_confirmation_is_progress() {
        let mut old = base();
        old.fields.push(FieldRecord {
            field: "f".into(),
            previous: None,
            written: "v".into(),
            confirmed: false,
        });
        let mut new = old.clone();
        new.fields[0].confirmed = true;
        assert!(only_progress_changed(Some(&old), &new));
        assert!(!status_write_needed(Some(&old), &new, Some(at(0)), at(5)));
        assert!(!only_progress_changed(None, &new));
    }

    /// One forward rollout in the simulator, the pods rolling one step per reconcile, the operator
    /// requeueing as planned (at most 5 s): the status writes the adapter makes, each with what
    /// changed.
    fn forward_status_writes(workers: usize) -> Vec<(Option<Phase>, Vec<String>)> {
        use crate::plan::{sim, Action};
        let mut w = sim::World::new(sim::spec(workers), 2);
        w.legacy.push(Some(w.now + 20));
        let (mut written, mut last_at) = (None::<Status>, None);
        let mut writes = vec![];
        for round in 0..2_000 {
            if w.phase() == Phase::AwaitingFinalize {
                w.request = Some(format!("promote:{round}"));
            }
            let d = w.reconcile();
            let now = sim::ts(w.now);
            if status_write_needed(written.as_ref(), &d.status, last_at, now) {
                let (a, b) = (
                    serde_json::to_value(written.as_ref().map(what_matters)).unwrap(),
                    serde_json::to_value(what_matters(&d.status)).unwrap(),
                );
                let fields = b.as_object().unwrap().iter();
                let mut changed: Vec<String> = fields
                    .filter(|(k, v)| a.get(*k) != Some(*v))
                    .map(|(k, _)| k.clone())
                    .collect();
                let before = |t: &str| written.as_ref()?.conditions.iter().find(|c| c.type_ == t);
                for c in &d.status.conditions {
                    if before(&c.type_)
                        .is_none_or(|o| (&o.status, &o.reason) != (&c.status, &c.reason))
                    {
                        changed.push(format!("{}={}/{}", c.type_, c.status, c.reason));
                    }
                }
                writes.push((d.status.phase, changed));
                (written, last_at) = (Some(d.status.clone()), Some(now));
            }
            if d.status.phase.is_some_and(Phase::is_terminal) && d.action == Action::None {
                assert_eq!(d.status.phase, Some(Phase::Completed));
                return writes;
            }
            for i in 0..=workers {
                w.controller_step(i);
                w.reap(i);
            }
            if d.action == Action::None {
                let wait = d.requeue_after.unwrap_or(COALESCE_INTERVAL);
                w.tick(wait.as_secs().clamp(1, 5) as i64);
            }
        }
        panic!("the rollout did not complete: {writes:?}");
    }

    /// The bound: at most 10 status writes per completed rollout (one worker Deployment,
    /// as the operator benchmark runs it; two cost the same: their images are recorded at once).
    #[test]
    fn a_forward_rollout_costs_at_most_ten_status_writes() {
        for workers in [1, 2] {
            let writes = forward_status_writes(workers);
            println!(
                "{workers} worker Deployments: {} status writes: {writes:?}",
                writes.len()
            );
            assert!(
                writes.len() <= 10,
                "{workers} workers: {} writes: {writes:#?}",
                writes.len()
            );
        }
    }

    proptest! {
        /// Within the interval a write happens exactly when something that matters changed; after
        /// it, whenever anything changed.
        #[test]
        fn written_iff_it_matters_or_the_interval_passed(
            ready in 0..4i32, upgraded: bool, cond_true: bool, msg in "[a-z/0-9 ]{0,12}", elapsed in 0..120i64,
        ) {
            let old = base();
            let new = status(&msg, ready, upgraded, (if cond_true {"True"} else {"False"}, "Progressing", &msg));
            let matters = upgraded || cond_true;
            let changed = old != new;
            let needed = status_write_needed(Some(&old), &new, Some(at(0)), at(elapsed));
            prop_assert_eq!(needed, changed && (matters || elapsed >= 30));
        }
    }
}
