//! The GitOps health fixtures: whole `Dedup2DRollout` objects whose status the real planner produced,
//! driven through the simulated cluster of `sim.rs` into every phase, pause, hold and stall reason.
//!
//! They are committed under `docs/gitops/testdata/`, where `hack/gitops.sh` runs the Argo CD health
//! check and actions (gopher-lua, Argo CD's library set) and kstatus on them. This test fails when a
//! committed file differs from what the planner produces now, or when a case has no file or a file no
//! case; `DEDUP2D_BLESS=1` rewrites them. Times come from the simulation's fixed clock. Two more
//! tests tie the documents to the cluster and to Argo CD: they pass the CRD's CEL rules, and the
//! action discovery expected in `docs/gitops/actions/action_test.yaml` greys out exactly the
//! requests the planner would ignore in that state.

use std::{collections::BTreeMap, path::PathBuf};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use super::sim::*;
use super::tests::{round, until_phase};
use super::*;
use crate::crd::{Dedup2DRollout, OnFailure, REQUEST_ANNOTATION};

const NAME: &str = "file-ref-migration";
const NAMESPACE: &str = "dedup2d";

fn dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../docs/gitops/testdata")
}

/// The object as the API server would hold it: the world's spec, generation and request annotation,
/// and the status the planner last persisted.
fn object(spec: &Spec, generation: i64, request: Option<&str>, status: Option<&Status>) -> String {
    let annotations =
        request.map(|r| BTreeMap::from([(REQUEST_ANNOTATION.to_string(), r.to_string())]));
    let obj = Dedup2DRollout {
        metadata: ObjectMeta {
            name: Some(NAME.into()),
            namespace: Some(NAMESPACE.into()),
            generation: Some(generation),
            annotations,
            ..Default::default()
        },
        spec: spec.clone(),
        status: status.cloned(),
    };
    let mut json = serde_json::to_string_pretty(&obj).expect("a rollout serializes");
    json.push('\n');
    json
}

/// One fixture: the document, and what the planner saw when it wrote its status (to replay requests).
struct Case {
    doc: String,
    replay: Option<Replay>,
}

struct Replay {
    spec: Spec,
    status: Status,
    observed: Observed,
    now: Timestamp,
}

fn of_world(w: &World) -> Case {
    Case {
        doc: object(
            &w.spec,
            w.generation,
            w.request.as_deref(),
            w.status.as_ref(),
        ),
        replay: w.status.clone().map(|status| Replay {
            spec: w.spec.clone(),
            status,
            observed: w.observe(),
            now: ts(w.now),
        }),
    }
}

/// Reconcile until the planner asks for an action matching `pred` (applied), then once more without
/// letting any controller move: the status then shows the phase waiting for that write to roll out.
fn wait_after(w: &mut World, pred: impl Fn(&Action) -> bool) {
    for _ in 0..20 {
        if pred(&w.reconcile().action) {
            w.tick(1);
            w.reconcile();
            return;
        }
    }
    panic!("action not reached in {}", w.phase());
}

/// One reconcile on a world changed by `change` (observation only), from the persisted status.
fn stalled(w: &World, change: impl Fn(&mut Observed)) -> Case {
    let mut observed = w.observe();
    change(&mut observed);
    let d = plan(&w.spec, w.status.as_ref(), &observed, ts(w.now));
    Case {
        doc: object(&w.spec, w.generation, w.request.as_deref(), Some(&d.status)),
        replay: Some(Replay {
            spec: w.spec.clone(),
            status: d.status,
            observed,
            now: ts(w.now),
        }),
    }
}

fn completed() -> World {
    let mut w = World::new(spec(1), 1);
    assert_eq!(w.settle(400), Phase::Completed);
    w
}

/// Every case, by file stem.
fn cases() -> BTreeMap<&'static str, Case> {
    let mut out = BTreeMap::new();
    let mut add =
        |name: &'static str, case: Case| assert!(out.insert(name, case).is_none(), "{name} twice");

    let w = World::new(spec(1), 1);
    add("pending-no-status", of_world(&w));

    let mut s = spec(1);
    s.paused = true;
    let mut w = World::new(s, 1);
    w.reconcile();
    assert_eq!(w.phase(), Phase::Pending);
    add("pending-paused", of_world(&w));

    let mut w = World::new(spec(1), 1);
    wait_after(&mut w, |a| {
        matches!(a, Action::SetApiRestartAnnotation { .. })
    });
    assert_eq!(w.phase(), Phase::DualWriteOn);
    add("dual-write-on", of_world(&w));

    let mut w = World::new(spec(1), 1);
    until_phase(&mut w, Phase::UpgradingWorkers, 50);
    wait_after(&mut w, |a| matches!(a, Action::SetWorkerImage { .. }));
    assert_eq!(w.phase(), Phase::UpgradingWorkers);
    add("upgrading-workers", of_world(&w));

    w.spec.paused = true;
    w.generation += 1;
    w.tick(30);
    w.reconcile();
    add("paused-upgrading-workers", of_world(&w));

    let mut w = World::new(spec(1), 1);
    until_phase(&mut w, Phase::UpgradingApi, 80);
    wait_after(&mut w, |a| matches!(a, Action::SetApiImage { .. }));
    assert_eq!(w.phase(), Phase::UpgradingApi);
    add("upgrading-api", of_world(&w));

    let mut w = World::new(spec(1), 1);
    until_phase(&mut w, Phase::Soaking, 80);
    w.tick(10);
    w.reconcile();
    add("soaking", of_world(&w));

    // The spec was edited (a new worker image) and the operator has not seen it yet.
    w.spec.workers[0].image = "reg/dedup2d:2.6.0".into();
    w.generation += 1;
    add("generation-behind", of_world(&w));

    let mut w = World::new(spec(1), 1);
    until_phase(&mut w, Phase::DualWriteOff, 120);
    wait_after(&mut w, |a| {
        matches!(a, Action::SetApiRestartAnnotation { .. })
    });
    assert_eq!(w.phase(), Phase::DualWriteOff);
    add("dual-write-off", of_world(&w));

    let mut w = World::new(spec(1), 1);
    until_phase(&mut w, Phase::Draining, 150);
    w.legacy.push(Some(w.now + 120));
    w.tick(2);
    w.reconcile();
    assert_eq!(w.phase(), Phase::Draining);
    add("draining", of_world(&w));

    w.redis_up = false;
    w.tick(10);
    w.reconcile();
    add("stalled-redis-unreachable", of_world(&w));

    let mut w = World::new(spec(1), 1);
    until_phase(&mut w, Phase::Draining, 150);
    w.legacy.push(None);
    w.tick(w.ttl() + 1);
    w.reconcile();
    assert_eq!(w.phase(), Phase::Draining);
    add("stalled-legacy-payloads-remain", of_world(&w));

    let mut s = spec(1);
    s.finalize = Finalize::Manual;
    let mut w = World::new(s, 1);
    until_phase(&mut w, Phase::AwaitingFinalize, 200);
    w.tick(5);
    w.reconcile();
    add("awaiting-finalize", of_world(&w));

    let mut w = completed();
    add("completed", of_world(&w));

    // spec.paused has no effect once the rollout is finished.
    w.spec.paused = true;
    w.generation += 1;
    w.tick(5);
    w.reconcile();
    add("completed-paused", of_world(&w));

    let mut w = World::new(spec(1), 1);
    until_phase(&mut w, Phase::Draining, 150);
    w.active_file_ref_only = 3;
    w.request = Some("abort-full:1700000400".into());
    for _ in 0..6 {
        round(&mut w);
    }
    assert_eq!(w.phase(), Phase::RollingBack);
    add("rolling-back", of_world(&w));

    let mut w = World::new(spec(1), 1);
    until_phase(&mut w, Phase::Soaking, 80);
    w.request = Some("abort:1700000300".into());
    assert_eq!(w.settle(100), Phase::RolledBack);
    add("rolled-back-abort", of_world(&w));
    // A newer rollout re-targets the same Deployments: healthy, whatever phase this one ended in.
    let newer =
        |o: &mut Observed| o.superseded_by = vec!["next-upgrade (Deployment worker-0)".into()];
    add("superseded-rolled-back", stalled(&w, newer));
    add("superseded-completed", stalled(&completed(), newer));

    let mut w = World::new(spec(1), 1);
    until_phase(&mut w, Phase::UpgradingWorkers, 50);
    w.workers[0].stuck = true;
    while w.phase() != Phase::RollingBack {
        round(&mut w);
        w.tick(10);
    }
    w.workers[0].stuck = false;
    assert_eq!(w.settle(100), Phase::RolledBack);
    add("rolled-back-deadline", of_world(&w));

    let mut s = spec(1);
    s.on_failure = OnFailure::Pause;
    let mut w = World::new(s, 1);
    until_phase(&mut w, Phase::UpgradingWorkers, 50);
    w.workers[0].stuck = true;
    while w.status.as_ref().is_none_or(|s| s.hold.is_none()) {
        round(&mut w);
        w.tick(10);
    }
    add("held-progress-deadline", of_world(&w));

    let mut w = World::new(spec(1), 1);
    until_phase(&mut w, Phase::UpgradingApi, 80);
    w.workers[0].image = "someone/else:1".into();
    w.workers[0].generation += 1;
    w.reconcile();
    assert!(w.status.as_ref().unwrap().hold.is_some());
    add("held-external-modification", of_world(&w));

    // Cluster problems, seen at the first reconcile (the rollout applied before or beside its fleet).
    let w = World::new(spec(1), 1);
    add("stalled-target-missing", stalled(&w, |o| o.workers.clear()));
    add(
        "stalled-container-not-found",
        stalled(&w, |o| {
            let d = o.workers.get_mut("worker-0").unwrap();
            d.containers.push(("sidecar".into(), "x".into()));
        }),
    );
    add(
        "stalled-api-does-not-read-config-map",
        stalled(&w, |o| o.api.as_mut().unwrap().reads_config_maps.clear()),
    );
    add(
        "stalled-conflicting-rollout",
        stalled(&w, |o| o.conflicts = vec!["older-migration".into()]),
    );
    // The CRD's CEL rule rejects such a soak; the planner still stalls on one it cannot parse.
    let mut s = spec(1);
    s.dual_write.soak = "soon".into();
    let w = World::new(s, 1);
    add("stalled-invalid-spec", stalled(&w, |_| {}));
    out
}

#[test]
fn committed_gitops_fixtures_match_the_planner() {
    let cases: BTreeMap<&str, String> = cases().into_iter().map(|(k, c)| (k, c.doc)).collect();
    let dir = dir();
    let on_disk: BTreeMap<String, String> = std::fs::read_dir(&dir)
        .map(|rd| {
            rd.filter_map(std::result::Result::ok)
                .filter_map(|e| {
                    let name = e.file_name().into_string().ok()?;
                    let stem = name.strip_suffix(".json")?.to_string();
                    Some((stem, std::fs::read_to_string(e.path()).unwrap()))
                })
                .collect()
        })
        .unwrap_or_default();
    if std::env::var_os("DEDUP2D_BLESS").is_some() {
        std::fs::create_dir_all(&dir).unwrap();
        for stem in on_disk.keys().filter(|s| !cases.contains_key(s.as_str())) {
            std::fs::remove_file(dir.join(format!("{stem}.json"))).unwrap();
        }
        for (stem, doc) in &cases {
            std::fs::write(dir.join(format!("{stem}.json")), doc).unwrap();
        }
        return;
    }
    let mut problems = vec![];
    for (stem, doc) in &cases {
        match on_disk.get(*stem) {
            None => problems.push(format!("{stem}.json is missing")),
            Some(committed) if committed != doc => problems.push(format!("{stem}.json differs")),
            Some(_) => {}
        }
    }
    for stem in on_disk.keys().filter(|s| !cases.contains_key(s.as_str())) {
        problems.push(format!("{stem}.json has no case"));
    }
    assert!(
        problems.is_empty(),
        "docs/gitops/testdata is stale: {}\nregenerate it with\n    \
         DEDUP2D_BLESS=1 cargo test -p dedup2d-core --lib plan::gitops_fixtures\n\
         and re-run hack/gitops.sh",
        problems.join(", ")
    );
}

#[test]
fn fixtures_cover_every_phase_but_failed_and_every_stall_reason() {
    let mut phases = std::collections::BTreeSet::new();
    let mut stalls = std::collections::BTreeSet::new();
    for case in cases().values() {
        let v: serde_json::Value = serde_json::from_str(&case.doc).unwrap();
        if let Some(p) = v["status"]["phase"].as_str() {
            phases.insert(p.to_string());
        }
        for c in v["status"]["conditions"].as_array().into_iter().flatten() {
            if c["type"] == "Stalled" && c["status"] == "True" {
                stalls.insert(c["reason"].as_str().unwrap().to_string());
            }
        }
    }
    // Failed: no planner path leads there today (progress deadlines roll back or hold).
    let want_phases: std::collections::BTreeSet<String> = Phase::ALL
        .iter()
        .filter(|p| **p != Phase::Failed)
        .map(std::string::ToString::to_string)
        .collect();
    assert_eq!(phases, want_phases);
    let want_stalls: std::collections::BTreeSet<String> = [
        "TargetMissing",
        "ContainerNotFound",
        "ApiDoesNotReadConfigMap",
        "ConflictingRollout",
        "InvalidSpec",
        "RedisUnreachable",
        "LegacyPayloadsRemain",
        "ExternalModification",
        "ProgressDeadlineExceeded",
        "RolledBack",
    ]
    .iter()
    .map(std::string::ToString::to_string)
    .collect();
    assert_eq!(stalls, want_stalls);
}

/// The documents are what the API server would hold: the CRD's CEL rules accept every one but the
/// invalid soak that `stalled-invalid-spec` needs.
#[test]
fn fixtures_pass_the_crd_cel_rules() {
    use kube::{core::cel::Validator, CustomResourceExt};
    let crd = Dedup2DRollout::crd();
    let schema = serde_json::to_value(
        crd.spec.versions[0]
            .schema
            .as_ref()
            .and_then(|s| s.open_api_v3_schema.as_ref())
            .unwrap(),
    )
    .unwrap();
    for (name, case) in cases() {
        let obj: serde_json::Value = serde_json::from_str(&case.doc).unwrap();
        let errors: Vec<String> = match Validator::new().validate(&schema, &obj, None) {
            Ok(()) => vec![],
            Err(e) => e.iter().map(std::string::ToString::to_string).collect(),
        };
        if name == "stalled-invalid-spec" {
            assert!(
                errors.iter().any(|e| e.contains("soak must be a duration")),
                "{errors:?}"
            );
        } else {
            assert!(errors.is_empty(), "{name}: {errors:?}");
        }
    }
}

/// `actions/action_test.yaml` as far as this test reads it.
#[derive(serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct ActionTests {
    discovery_tests: Vec<DiscoveryTest>,
}

#[derive(serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct DiscoveryTest {
    input_path: String,
    result: Vec<DiscoveredAction>,
}

#[derive(serde::Deserialize)]
struct DiscoveredAction {
    name: String,
    disabled: bool,
}

/// The Argo CD discovery (checked against discovery.lua by hack/gitops.sh) greys out a request
/// exactly when the planner, sent that request in that state, answers "ignored".
#[test]
fn discovery_greys_out_exactly_the_requests_the_planner_ignores() {
    let path = dir().join("../actions/action_test.yaml");
    let text = std::fs::read_to_string(&path).unwrap();
    let tests: ActionTests = serde_saphyr::from_str(&text).expect("action_test.yaml parses");
    let cases = cases();
    let mut checked = 0;
    for t in &tests.discovery_tests {
        let stem = t
            .input_path
            .trim_start_matches("../testdata/")
            .trim_end_matches(".json");
        let case = cases.get(stem).unwrap_or_else(|| panic!("no case {stem}"));
        let Some(r) = &case.replay else {
            // Before the operator wrote a status every request is greyed out.
            assert!(t
                .result
                .iter()
                .filter(|a| Request::parse(&a.name).is_some())
                .all(|a| a.disabled));
            continue;
        };
        for a in t
            .result
            .iter()
            .filter(|a| Request::parse(&a.name).is_some())
        {
            let mut observed = r.observed.clone();
            observed.request = Some(format!("{}:1700000999", a.name));
            let d = plan(&r.spec, Some(&r.status), &observed, r.now);
            let outcome = d
                .status
                .last_request
                .expect("the request is handled")
                .outcome;
            assert_eq!(
                a.disabled,
                outcome.starts_with("ignored"),
                "{stem}: {} is {} in discovery, the planner says {outcome:?}",
                a.name,
                if a.disabled { "disabled" } else { "enabled" },
            );
            checked += 1;
        }
    }
    assert!(checked >= 40, "only {checked} requests checked");
}
