//! Deleting a rollout and creating it again, and a newer rollout superseding a finished one: the
//! original values recorded on the targets (`dedup2d.io/originals`) and the `Superseded` condition.

use super::sim::*;
use super::tests::{round, until_phase};
use super::*;

fn originals_everywhere(w: &World) -> Vec<Originals> {
    w.workers
        .iter()
        .chain([&w.api])
        .map(|d| d.originals.clone())
        .chain([w.config_originals.clone()])
        .collect()
}

/// Half the first worker's pods on the new image: the rollout is deleted there.
fn deleted_half_way() -> World {
    let mut w = World::new(spec(2), 2);
    until_phase(&mut w, Phase::UpgradingWorkers, 100);
    while !matches!(w.reconcile().action, Action::SetWorkerImage { .. }) {}
    w.controller_step(0); // the Deployment controller sees the new template
    w.controller_step(0); // one new pod
    w.recreate();
    w
}

#[test]
fn originals_are_on_the_targets_before_the_first_write_to_them() {
    let mut w = World::new(spec(2), 2);
    until_phase(&mut w, Phase::UpgradingWorkers, 100);
    loop {
        let d = w.reconcile();
        if let Action::SetWorkerImage { deployment, .. } = &d.action {
            let field = field_id::image(deployment, "worker");
            let d = w.workers.iter().find(|d| &d.name == deployment).unwrap();
            assert_eq!(d.originals.get(&field), Some(&Some(OLD.to_string())));
            break;
        }
    }
    assert_eq!(
        w.config_originals
            .get(&field_id::config_key("cfg", KEY_INCLUDE_B64)),
        Some(&Some("1".to_string())),
        "the ConfigMap keeps the value of dual-write before the rollout"
    );
}

#[test]
fn a_rollout_created_again_adopts_the_originals_and_a_full_abort_restores_them() {
    let mut w = deleted_half_way();
    assert_eq!(
        w.workers[0].image, NEW,
        "the deleted rollout had changed it"
    );
    // At once, before the new rollout recorded anything: the abort is not "nothing to roll back".
    w.request = Some("abort-full:1".into());
    let d = w.reconcile();
    assert!(
        d.events
            .iter()
            .any(|e| e.message.contains("full rollback started")),
        "{:?}",
        d.events
    );
    assert_eq!(w.settle(400), Phase::RolledBack);
    assert!(w.workers.iter().all(|d| d.image == OLD), "true originals");
    assert!(w.workers[0].pods.iter().all(|p| p.image == OLD));
    assert_eq!(w.include.as_deref(), Some("1"), "dual-write on");
    // A full rollback put the images back: their entries are gone. The ConfigMap's keys still
    // differ from their originals (dual-write stays on), so their entries stay.
    assert!(w.workers.iter().all(|d| d.originals.is_empty()));
    assert!(!w.api.originals.contains_key(&field_id::image("api", "api")));
    assert!(w
        .config_originals
        .contains_key(&field_id::config_key("cfg", KEY_MAX_BYTES)));
}

#[test]
fn a_rollout_created_again_records_the_adopted_previous_value_with_an_event() {
    let mut w = deleted_half_way();
    let mut adopted = vec![];
    for _ in 0..40 {
        let d = round(&mut w);
        adopted.extend(
            d.events
                .into_iter()
                .filter(|e| e.reason == EventReason::OriginalAdopted.as_str()),
        );
    }
    let rec = w.field_record(&field_id::image("worker-0", "worker"));
    assert_eq!(rec.previous.as_deref(), Some(OLD));
    assert!(
        adopted
            .iter()
            .any(|e| e.message.contains(OLD) && e.message.contains(NEW)),
        "{adopted:?}"
    );
}

#[test]
fn a_completed_rollout_clears_its_originals_so_the_next_records_fresh_ones() {
    let mut w = World::new(spec(2), 2);
    assert_eq!(w.settle(400), Phase::Completed);
    assert!(originals_everywhere(&w).iter().all(BTreeMap::is_empty));
    // The next upgrade of the same fleet (a new rollout): NEW is its original.
    w.recreate();
    w.spec.workers[0].image = "reg/dedup2d:2.6.0".into();
    until_phase(&mut w, Phase::Soaking, 200);
    let rec = w.field_record(&field_id::image("worker-0", "worker"));
    assert_eq!(rec.previous.as_deref(), Some(NEW));
}

#[test]
fn a_quick_rollback_keeps_the_originals_for_a_later_full_one() {
    let mut w = World::new(spec(2), 2);
    until_phase(&mut w, Phase::Soaking, 200);
    w.request = Some("abort".into());
    assert_eq!(w.settle(200), Phase::RolledBack);
    let field = field_id::image("worker-0", "worker");
    assert_eq!(
        w.workers[0].originals.get(&field),
        Some(&Some(OLD.to_string()))
    );
}

#[test]
fn a_superseded_rollout_says_so_drops_its_counts_and_leaves_the_originals() {
    let mut w = World::new(spec(2), 2);
    assert_eq!(w.settle(400), Phase::Completed);
    let mut obs = w.observe();
    obs.superseded_by = vec!["next (Deployment worker-0)".into()];
    // The newer rollout recorded its own originals meanwhile.
    let field = field_id::image("worker-0", "worker");
    obs.workers.get_mut("worker-0").unwrap().originals =
        BTreeMap::from([(field, Some(NEW.to_string()))]);
    let d = plan(&w.spec, w.status.as_ref(), &obs, ts(w.now));
    assert_eq!(d.action, Action::None, "the newer rollout's entries stay");
    let c = cond::get_condition(&d.status.conditions, cond::SUPERSEDED).unwrap();
    assert_eq!(
        (c.status.as_str(), c.reason.as_str()),
        ("True", "NewerRollout")
    );
    assert!(c.message.contains("next"), "{}", c.message);
    assert!(d.status.workers.is_empty() && d.status.worker_summary.is_none());
    let message = d.status.message.clone().unwrap();
    assert!(message.contains("superseded by next"), "{message}");
    let stalled = cond::get_condition(&d.status.conditions, cond::STALLED).unwrap();
    assert_eq!(stalled.status, "False");
    // The newer one gone: no longer superseded, the counts come back.
    let d = plan(&w.spec, Some(&d.status), &w.observe(), ts(w.now));
    let c = cond::get_condition(&d.status.conditions, cond::SUPERSEDED).unwrap();
    assert_eq!(c.status, "False");
    assert_eq!(d.status.worker_summary.as_deref(), Some("2/2"));
}

#[test]
fn entries_naming_another_object_are_not_adopted() {
    let mut w = World::new(spec(2), 2);
    // Someone copied worker-1's annotation onto worker-0 claiming another original for worker-1.
    w.workers[0].originals = BTreeMap::from([(
        field_id::image("worker-1", "worker"),
        Some("evil/image:1".to_string()),
    )]);
    until_phase(&mut w, Phase::Soaking, 200);
    let rec = w.field_record(&field_id::image("worker-1", "worker"));
    assert_eq!(rec.previous.as_deref(), Some(OLD));
}
