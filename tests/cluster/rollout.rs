//! The operator on the local control plane with a real redis-server: the forward path in its three
//! shapes (dual-write with an Observe drain, the TTL drain, dual-write disabled). Each test runs its
//! own operator process restricted to its own namespace.
//!
//! Figures (phase timeline, reaction times) are printed; run with `--nocapture` to see them.

use std::time::Duration;

use dedup2d::operator::{crd::Phase, plan::payload_config_hash};
use k8s_openapi::{
    api::{apps::v1::Deployment, core::v1::ConfigMap},
    jiff::Timestamp,
};
use kube::core::ObjectMeta;
use serde_json::json;

use crate::support::{events::*, fleet::*, history::*, kube::TestNamespace, scenario::Scenario};

const WORKERS: [&str; 2] = ["worker-a", "worker-b"];
/// The most status writes a forward rollout may take for the changes that matter (phases, records,
/// in-effect times, drain figures; see `plan::coalesce`). The happy path measures 10: the fields a
/// phase writes are recorded together with its transition, and the status written with the record
/// of an API restart already says the API is rolling. The core's
/// `a_forward_rollout_costs_at_most_ten_status_writes` holds the bound of 10 in the
/// simulator; this one leaves room for the cluster's timing (a drain figure seen in between).
const MAX_STATUS_WRITES: usize = 12;

/// How long ago the object was created.
fn age(meta: &ObjectMeta) -> Duration {
    meta.creation_timestamp
        .as_ref()
        .map_or(Duration::ZERO, |t| {
            Timestamp::now().duration_since(t.0).unsigned_abs()
        })
}

/// Asserts that rollout `name` reached its end in at most [`MAX_STATUS_WRITES`] status writes, plus
/// the one progress-only write per coalescing interval that `took` allows.
fn assert_few_status_writes(history: &History, name: &str, took: Duration) {
    let writes = status_writes(&history.by_revision(), name);
    let interval = dedup2d::operator::plan::coalesce::COALESCE_INTERVAL;
    let allowed = MAX_STATUS_WRITES + (took.as_secs() / interval.as_secs()) as usize;
    println!(
        "  status writes of {name}: {} (allowed {allowed}): {writes:?}",
        writes.len()
    );
    assert!(
        (1..=allowed).contains(&writes.len()),
        "{name}: {} status writes in {took:?} (at most {allowed}), by phase: {writes:?}",
        writes.len()
    );
}

async fn cm_values(ns: &TestNamespace) -> (Option<String>, Option<String>) {
    let cm = ns.api::<ConfigMap>().get(CM).await.unwrap();
    let d = cm.data.unwrap_or_default();
    (d.get(INCLUDE).cloned(), d.get(MAX_BYTES).cloned())
}

async fn images(ns: &TestNamespace, name: &str) -> (String, Vec<String>) {
    (
        template_image(&deploy(ns, name).await),
        pod_images(ns, name).await,
    )
}

/// When the last pod of the worker Deployments on `target` became Ready (as the watch saw it).
fn last_worker_ready(h: &History, target: &str) -> Timestamp {
    h.arrived()
        .iter()
        .filter_map(|e| match &e.rec {
            Rec::Pod {
                app, image, ready, ..
            } if WORKERS.contains(&app.as_str()) && image == target && *ready => Some(e.seen),
            _ => None,
        })
        .max()
        .expect("no Ready worker pod on the target image was seen")
}

/// When the watch first saw every worker Deployment fully rolled to `target` (the Deployment
/// controller's status catching up with the pods; what the operator waits for).
fn workers_rolled(h: &History, target: &str) -> Timestamp {
    let mut done = std::collections::BTreeMap::new();
    for e in h.arrived() {
        if let Rec::Deployment {
            name,
            image,
            rolled,
            ..
        } = &e.rec
        {
            if WORKERS.contains(&name.as_str()) && image == target && *rolled {
                done.entry(name.clone()).or_insert(e.seen);
            }
        }
    }
    assert_eq!(
        done.len(),
        WORKERS.len(),
        "every worker Deployment rolled out"
    );
    done.into_values().max().unwrap()
}

/// Dual-write on, two workers, an API image, a 5 s soak and an Observe drain with real legacy
/// payloads: every phase in order, each step checked, then Completed.
#[tokio::test]
async fn happy_path_with_dual_write_and_observe_drain() {
    let (s, _op) = Scenario::builder("op-happy")
        .payloads(&["l1", "l2", "l3"], &["r1"])
        .workers(&[("worker-a", 3), ("worker-b", 2)])
        .history()
        .run(
            "happy",
            rollout_spec(
                &["worker-a", "worker-b"],
                json!({
                    "workers": [
                        {"deployment": "worker-a", "image": NEW_IMAGE},
                        {"deployment": "worker-b", "container": "worker", "image": NEW_IMAGE}
                    ],
                    "api": {"image": API_NEW},
                    "dualWrite": {"maxBytes": 5242880, "soak": "5s"},
                    "drain": {"strategy": "Observe"},
                    "progressDeadlineSeconds": 120,
                }),
            ),
        )
        .await;
    let (ns, history, mut conn) = (&s.ns, s.history(), s.conn.clone());
    let max = "5242880";
    let started = Timestamp::now();

    // Soaking: dual-write on and in effect, every worker and the API on the new image.
    let r = s.wait("happy", Phase::Soaking).await;
    let st = r.status.unwrap();
    assert_eq!(st.dual_write.as_deref(), Some("On"));
    assert!(st.dual_write_on_in_effect_at.is_some());
    assert_eq!(
        cm_values(ns).await,
        (Some("1".into()), Some(max.into())),
        "dual-write on with spec.dualWrite.maxBytes"
    );
    for w in WORKERS {
        let (template, pods) = images(ns, w).await;
        assert_eq!(template, NEW_IMAGE, "{w} template");
        assert!(pods.iter().all(|i| i == NEW_IMAGE), "{w} pods: {pods:?}");
    }
    let api = ns.api::<Deployment>().get("api").await.unwrap();
    assert_eq!(template_image(&api), API_NEW);
    assert_eq!(
        template_annotation(&api, "dedup2d.io/payload-config"),
        Some(payload_config_hash("1", max)),
        "API restarted with dual-write on"
    );
    assert_eq!(
        st.legacy_payloads, None,
        "no legacy-payload scan before Draining (the observation plan reads only what a phase needs)"
    );

    // Draining: dual-write off in effect; the 3 legacy payloads hold the drain.
    let r = s.wait("happy", Phase::Draining).await;
    let st = r.status.unwrap();
    assert_eq!(cm_values(ns).await, (Some("0".into()), Some(max.into())));
    let api = ns.api::<Deployment>().get("api").await.unwrap();
    assert_eq!(
        template_annotation(&api, "dedup2d.io/payload-config"),
        Some(payload_config_hash("0", max)),
        "API restarted with dual-write off"
    );
    assert!(st.dual_write_off_in_effect_at.is_some() && st.drain_deadline.is_some());
    tokio::time::sleep(Duration::from_secs(3)).await;
    let r = wait_phase(ns, "happy", Phase::Draining, Duration::from_secs(1)).await;
    assert_eq!(
        r.status.unwrap().legacy_payloads,
        Some(3),
        "still draining while legacy payloads exist"
    );

    // The legacy jobs finish: the payloads go; the next scan completes the rollout.
    let removed = Timestamp::now();
    let _: () = redis::cmd("DEL")
        .arg(
            &[
                "dedup2d:payload:l1",
                "dedup2d:payload:l2",
                "dedup2d:payload:l3",
            ][..],
        )
        .query_async(&mut conn)
        .await
        .unwrap();
    let r = wait_phase(ns, "happy", Phase::Completed, Duration::from_secs(30)).await;
    let completed = Timestamp::now();
    let st = r.status.unwrap();
    assert_eq!(st.legacy_payloads, Some(0));
    // Order, not time: the drain completed only after the last legacy payload was deleted (the
    // transition is stamped rounded up to a second, the deletion's second rounds down).
    let drained = st
        .transitions
        .iter()
        .find(|t| t.from == Phase::Draining && t.to == Phase::Completed)
        .expect("Draining -> Completed recorded");
    assert!(
        drained.at.0.as_second() >= removed.as_second(),
        "Completed at {} before the last legacy payload was deleted at {removed}",
        drained.at.0
    );
    assert!(
        drained.message.contains("full Redis scan"),
        "{}",
        drained.message
    );
    assert_eq!(st.worker_summary.as_deref(), Some("2/2"));
    let ready = st
        .conditions
        .iter()
        .find(|c| c.type_ == "Ready")
        .expect("Ready condition");
    assert_eq!(ready.status, "True");
    assert_eq!(cm_values(ns).await, (Some("0".into()), Some(max.into())));
    // Previous values were recorded.
    let prev = |field: &str| {
        st.fields
            .iter()
            .find(|f| f.field == field)
            .and_then(|f| f.previous.clone())
    };
    assert_eq!(
        prev("Deployment/worker-a/containers/worker/image").as_deref(),
        Some(OLD_IMAGE)
    );
    assert_eq!(
        prev("Deployment/api/containers/api/image").as_deref(),
        Some(API_OLD)
    );
    assert_eq!(
        prev(&format!("ConfigMap/{CM}/data/{INCLUDE}")).as_deref(),
        Some("0")
    );

    // History: every phase in order (from the transition Events), dual-write on before any worker
    // changed, off only after no old worker pod existed.
    let (offs, trans) = s.check_completed_forward(&WORKERS, NEW_IMAGE).await;
    assert_few_status_writes(history, "happy", age(&r.metadata));
    let h = history.by_revision();
    let on_rev = h
        .iter()
        .find(|e| matches!(&e.rec, Rec::ConfigMap { include_b64: Some(v), .. } if v == "1"))
        .unwrap()
        .rv;
    let first_worker_change = h
        .iter()
        .find(|e| matches!(&e.rec, Rec::Deployment { name, image, .. } if WORKERS.contains(&name.as_str()) && image == NEW_IMAGE))
        .unwrap()
        .rv;
    assert!(
        on_rev < first_worker_change,
        "dual-write on ({on_rev}) before the first worker change ({first_worker_change})"
    );
    let api_images = sequence(&h, |r| match r {
        Rec::Deployment { name, image, .. } if name == "api" => Some(image.clone()),
        _ => None,
    });
    assert_eq!(api_images, [API_OLD, API_NEW], "API upgraded once");
    let annotations = api_restart_annotations(&h);
    assert_eq!(
        annotations,
        [
            None,
            Some(payload_config_hash("1", max)),
            Some(payload_config_hash("0", max))
        ],
        "the restart annotation changes only when the values change"
    );

    // Figures.
    println!("happy path phase timeline (seconds in each phase, from the transition Events):");
    let mut prev_t = started;
    let mut prev_p = "Pending".to_string();
    for (t, p) in &trans {
        println!("  {prev_p:<18} {:>6.2}s", secs(prev_t, *t));
        prev_t = *t;
        prev_p = p.clone();
    }
    println!(
        "  total {:.2}s (rollout applied -> Completed observed); legacy payloads deleted -> Completed observed: {:.2}s",
        secs(started, completed),
        secs(removed, completed)
    );
    let last_ready = last_worker_ready(history, NEW_IMAGE);
    let arrived = history.arrived();
    let api_write = arrived
        .iter()
        .find(|e| matches!(&e.rec, Rec::Deployment { name, image, .. } if name == "api" && image == API_NEW))
        .unwrap()
        .seen;
    let off_write = arrived.iter().find(|e| e.rv == offs[0]).unwrap().seen;
    let rolled = workers_rolled(history, NEW_IMAGE);
    println!(
        "  last worker pod Ready -> next write (API image): {:.3}s (Deployment status complete after {:.3}s, \
         the operator's write {:.3}s later); -> ConfigMap dual-write off: {:.3}s (includes API rollout and the 5s soak)",
        secs(last_ready, api_write),
        secs(last_ready, rolled),
        secs(rolled, api_write),
        secs(last_ready, off_write)
    );
}

/// `TTL` drain: Completed at dual-write-off-in-effect + ttlSeconds, not before.
#[tokio::test]
async fn ttl_drain_ends_at_the_ttl_after_dual_write_off() {
    let (s, _op) = Scenario::builder("op-ttl")
        .workers(&[("worker-a", 2)])
        .run(
            "ttl",
            rollout_spec(
                &["worker-a"],
                json!({"drain": {"strategy": "TTL", "ttlSeconds": 60}}),
            ),
        )
        .await;
    let ns = &s.ns;
    let r = s.wait("ttl", Phase::Draining).await;
    let st = r.status.unwrap();
    let off = st
        .dual_write_off_in_effect_at
        .expect("off-in-effect time")
        .0;
    assert_eq!(
        st.drain_deadline.expect("drain deadline").0.as_second(),
        off.as_second() + 60
    );
    // Redis holds no legacy payload, yet the TTL strategy waits.
    let until = off.as_second() + 55;
    while Timestamp::now().as_second() < until {
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let r = wait_phase(ns, "ttl", Phase::Draining, Duration::from_secs(1)).await;
    assert_eq!(r.status.unwrap().legacy_payloads, Some(0));
    let r = wait_phase(ns, "ttl", Phase::Completed, Duration::from_secs(30)).await;
    let finished = r.status.unwrap().finished_at.unwrap().0;
    let after = finished.as_second() - off.as_second();
    println!("TTL drain: Completed {after}s after dual-write-off was in effect (ttlSeconds 60)");
    assert!(
        (60..=63).contains(&after),
        "completed {after}s after dual-write off; expected the 60s TTL"
    );
}

/// Dual-write disabled: no grayscale phase; workers first, then dual-write off (it had been turned
/// on by hand), the drain, Completed.
#[tokio::test]
async fn dual_write_disabled_upgrades_workers_then_drains() {
    let (s, _op) = Scenario::builder("op-nodw")
        .dual_write_on()
        .workers(&[("worker-a", 3), ("worker-b", 2)])
        .history()
        .run(
            "nodw",
            rollout_spec(
                &["worker-a", "worker-b"],
                json!({"dualWrite": {"enabled": false, "soak": null}}),
            ),
        )
        .await;
    let (ns, history) = (&s.ns, s.history());
    let r = s.wait("nodw", Phase::Completed).await;
    assert_few_status_writes(history, "nodw", age(&r.metadata));
    let st = r.status.unwrap();
    assert_eq!(st.worker_summary.as_deref(), Some("2/2"));
    assert_eq!(
        cm_values(ns).await,
        (Some("0".into()), Some("10485760".into()))
    );
    for w in WORKERS {
        let (template, pods) = images(ns, w).await;
        assert_eq!(template, NEW_IMAGE);
        assert!(pods.iter().all(|i| i == NEW_IMAGE), "{w}: {pods:?}");
    }
    let api = ns.api::<Deployment>().get("api").await.unwrap();
    assert_eq!(template_image(&api), API_OLD, "no API image in spec");
    assert_eq!(
        template_annotation(&api, "dedup2d.io/payload-config"),
        Some(payload_config_hash("0", "10485760"))
    );

    let trans = transitions_until(ns, "Completed").await;
    let phases: Vec<&str> = trans.iter().map(|t| t.1.as_str()).collect();
    assert_eq!(
        phases,
        [
            "UpgradingWorkers",
            "UpgradingApi",
            "Soaking",
            "DualWriteOff",
            "Draining",
            "Completed"
        ],
        "no DualWriteOn phase; skipped phases are passed"
    );
    let h = history.by_revision();
    let offs = check_dual_write_off_after_workers(&h, &WORKERS, NEW_IMAGE);
    assert_eq!(offs.len(), 1);
    assert_eq!(includes(&h), ["1", "0"], "the ConfigMap changed once");

    let last_ready = last_worker_ready(history, NEW_IMAGE);
    let off_seen = history
        .arrived()
        .iter()
        .find(|e| e.rv == offs[0])
        .unwrap()
        .seen;
    let rolled = workers_rolled(history, NEW_IMAGE);
    println!(
        "dual-write disabled: last worker pod Ready -> ConfigMap change (dual-write off): {:.3}s \
         (pod Ready -> Deployment status complete: {:.3}s; -> ConfigMap change: {:.3}s)",
        secs(last_ready, off_seen),
        secs(last_ready, rolled),
        secs(rolled, off_seen)
    );
}
