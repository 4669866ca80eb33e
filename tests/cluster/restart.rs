//! Restart resilience on the local control plane: the operator process is SIGKILLed in each phase of
//! the forward path it is seen in (at least five of them), a new process takes over the Lease and
//! resumes, and the rollout completes with the invariants holding, checked from the recorded history:
//! dual-write off only after no old worker pod is left, the ConfigMap went 0 -> 1 -> 0 exactly, and
//! every transition was reported exactly once. One more kill lands exactly between "ConfigMap
//! written" and "API restart annotation written", held there by RBAC.

use std::{
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use dedup2d::operator::{
    crd::{Dedup2DRollout, Phase, PAYLOAD_CONFIG_ANNOTATION},
    plan::payload_config_hash,
};
use k8s_openapi::api::{
    core::v1::ServiceAccount,
    rbac::v1::{PolicyRule, Role, RoleBinding},
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Patch, PatchParams};
use serde_json::json;

use crate::support::{
    events::*, fleet::*, history::*, kube::TestNamespace, operator::Operator, poll::eventually,
    scenario::Scenario,
};

/// The phases an undisturbed rollout passes, in order ([`FORWARD_TRANSITIONS`]).
fn forward() -> Vec<Phase> {
    Phase::ALL
        .into_iter()
        .filter(|p| FORWARD_TRANSITIONS.contains(&p.to_string().as_str()))
        .collect()
}

fn rank(p: Phase) -> usize {
    forward().iter().position(|q| *q == p).unwrap_or(0)
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
                if forward().contains(&p) && rank(p) > rank(target) {
                    return None;
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

#[tokio::test]
async fn sigkill_in_every_phase_resumes_and_completes() {
    // Legacy payloads hold the Observe drain until the test removes them.
    let (s, mut op) = Scenario::builder("op-restart")
        .payloads(&["l1", "l2"], &[])
        .workers(&[("worker-a", 6), ("worker-b", 4)])
        .history()
        .run("restart", upgrade_spec(&["worker-a", "worker-b"], "5s"))
        .await;
    let (ns, mut conn) = (&s.ns, s.conn.clone());

    let mut killed_in = vec![];
    for target in &forward()[..6] {
        let Some(phase) = reach(ns, *target).await else {
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

    let r = s.wait("restart", Phase::Completed).await;
    assert_eq!(r.status.unwrap().worker_summary.as_deref(), Some("2/2"));
    // Invariants from the recorded history; each transition reported once, in forward order, none
    // lost: a SIGKILL between the status write and the Event publication is repaired by the next
    // process from `status.transitions`.
    s.check_completed_forward(&["worker-a", "worker-b"], NEW_IMAGE)
        .await;
    let expected: Vec<String> = FORWARD_TRANSITIONS.map(String::from).to_vec();
    let r = ns.api::<Dedup2DRollout>().get("restart").await.unwrap();
    let recorded: Vec<String> = r
        .status
        .unwrap()
        .transitions
        .iter()
        .map(|t| t.to.to_string())
        .collect();
    assert_eq!(recorded, expected, "status.transitions");
    drop(op);
}

/// The operator's Role as documented in `examples/operator-role.yaml`.
fn example_role() -> Role {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/operator-role.yaml");
    serde_saphyr::from_str(&std::fs::read_to_string(path).unwrap())
        .unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// `role` without the right to create Events or to write any Deployment but `writable`.
fn without_api_writes(mut role: Role, writable: &str) -> Role {
    let rules = role.rules.as_mut().unwrap();
    rules.retain(|r| !r.resources.iter().flatten().any(|x| x == "events"));
    for r in rules.iter_mut() {
        if r.resources.iter().flatten().any(|x| x == "deployments") {
            r.verbs.retain(|v| v != "patch");
        }
    }
    rules.push(PolicyRule {
        api_groups: Some(vec!["apps".into()]),
        resources: Some(vec!["deployments".into()]),
        resource_names: Some(vec![writable.into()]),
        verbs: vec!["patch".into()],
        ..Default::default()
    });
    role
}

/// A ServiceAccount `sa` bound to `role` in `ns`, and a kubeconfig (in `dir`) that authenticates as
/// it with a bound token.
async fn service_account_kubeconfig(
    ns: &TestNamespace,
    dir: &Path,
    sa: &str,
    mut role: Role,
) -> PathBuf {
    let ssa = PatchParams::apply("e2e-restart").force();
    ns.api::<ServiceAccount>()
        .patch(
            sa,
            &ssa,
            &Patch::Apply(
                json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": sa}}),
            ),
        )
        .await
        .unwrap();
    role.metadata = ObjectMeta {
        name: Some(sa.into()),
        ..Default::default()
    };
    ns.api::<Role>()
        .patch(sa, &ssa, &Patch::Apply(&role))
        .await
        .unwrap();
    let binding = json!({
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding", "metadata": {"name": sa},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": sa},
        "subjects": [{"kind": "ServiceAccount", "name": sa, "namespace": ns.name}]
    });
    ns.api::<RoleBinding>()
        .patch(sa, &ssa, &Patch::Apply(binding))
        .await
        .unwrap();
    service_account_token_kubeconfig(ns, sa, dir).await
}

/// The kill the issue asks for between "ConfigMap written" and "API restart annotation written".
/// The first operator runs with `examples/operator-role.yaml` minus the right to write the API
/// Deployment or create Events, so it
/// turns dual-write on in the ConfigMap and then cannot write the restart annotation (nor publish
/// the `DualWriteOn` Event): it is held exactly in that window, verified, and SIGKILLed there. A
/// new process with exactly the example Role resumes: it writes the annotation, re-publishes the
/// lost Event and completes with the invariants holding.
#[tokio::test]
async fn sigkill_between_config_map_and_api_restart_annotation_resumes() {
    let s = Scenario::builder("op-window")
        .workers(&[("worker-a", 3)])
        .history()
        .fleet()
        .await;
    let (ns, history) = (&s.ns, s.history());
    let dir = tempfile::tempdir().unwrap();
    let restricted = service_account_kubeconfig(
        ns,
        dir.path(),
        "no-api-writes",
        without_api_writes(example_role(), "worker-a"),
    )
    .await;
    let least = service_account_kubeconfig(ns, dir.path(), "operator", example_role()).await;

    let mut op = Operator::start_env(
        &ns.name,
        &[],
        &[("KUBECONFIG", restricted.to_str().unwrap())],
    );
    apply_rollout(ns, "window", upgrade_spec(&["worker-a"], "2s")).await;

    // In the window: the ConfigMap says dual-write on, the API Deployment write was refused.
    eventually(
        "the ConfigMap written and the API restart annotation refused",
        WAIT,
        || async {
            let refused = op.log_text().contains("applying Deployment api");
            (include(ns).await == "1" && refused).then_some(())
        },
    )
    .await;
    // It stays there (each retry is refused), then SIGKILL.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let api = deploy(ns, "api").await;
    assert_eq!(
        template_annotation(&api, PAYLOAD_CONFIG_ANNOTATION),
        None,
        "the restart annotation must not be written yet"
    );
    assert_eq!(status(ns, "window").await.phase, Some(Phase::DualWriteOn));
    assert!(
        transitions(ns).await.is_empty(),
        "the restricted operator cannot have published Events"
    );
    let log = op.log_text();
    assert!(log.contains("forbidden"), "refusals in the log:\n{log}");
    op.kill();
    println!("SIGKILL between the ConfigMap write and the API restart annotation");

    // The new process runs with exactly the documented Role.
    let op = Operator::start_env(&ns.name, &[], &[("KUBECONFIG", least.to_str().unwrap())]);
    let r = s.wait("window", Phase::Completed).await;
    assert_eq!(r.status.unwrap().worker_summary.as_deref(), Some("1/1"));

    // Invariants from the recorded history; the Event the first process could not publish was
    // published by the second, once.
    s.check_completed_forward(&["worker-a"], NEW_IMAGE).await;
    let h = history.by_revision();
    let annotations = api_restart_annotations(&h);
    assert_eq!(
        annotations,
        [
            None,
            Some(payload_config_hash("1", "10485760")),
            Some(payload_config_hash("0", "10485760"))
        ],
        "the API restarted once per ConfigMap value, in order"
    );
    // Workers were written only after the API ran with dual-write on.
    let first_on = h
        .iter()
        .find(|e| {
            matches!(&e.rec, Rec::Deployment { name, restart_annotation: Some(a), rolled: true, .. }
            if name == "api" && *a == payload_config_hash("1", "10485760"))
        })
        .expect("the API rolled with dual-write on")
        .rv;
    let first_worker_write = h
        .iter()
        .find(|e| matches!(&e.rec, Rec::Deployment { name, image, .. } if name == "worker-a" && image == NEW_IMAGE))
        .expect("worker-a written")
        .rv;
    assert!(
        first_on < first_worker_write,
        "workers upgraded before dual-write was in effect"
    );
    assert!(
        op.log_text().contains("re-publishing a transition Event"),
        "the new process re-published the lost Event"
    );
}
