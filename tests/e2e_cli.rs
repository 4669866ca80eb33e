//! `dedup2d rollout ...` (the built binary) against the local control plane with the CRD installed
//! and a rollout object created; no operator runs, so what the CLI writes stays as written.

mod common;

use std::path::Path;
use std::process::Output;
use std::time::Duration;

use common::cluster::{eventually, TestNamespace};
use dedup2d::operator::crd::{Dedup2DRollout, REQUEST_ANNOTATION};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Patch, PatchParams};
use kube::{Api, CustomResourceExt, ResourceExt};
use serde_json::json;
use tokio::io::AsyncBufReadExt;

const BIN: &str = env!("CARGO_BIN_EXE_dedup2d");

/// Installs (server-side apply, idempotent) the CRD and waits until it is Established.
async fn install_crd(ns: &TestNamespace) {
    let crds: Api<CustomResourceDefinition> = Api::all(ns.client.clone());
    let crd = Dedup2DRollout::crd();
    let name = crd.name_any();
    crds.patch(
        &name,
        &PatchParams::apply("dedup2d-test").force(),
        &Patch::Apply(&crd),
    )
    .await
    .unwrap_or_else(|e| panic!("apply CRD {name}: {e}"));
    eventually("CRD established", Duration::from_secs(30), || async {
        crds.get(&name)
            .await
            .ok()?
            .status?
            .conditions?
            .iter()
            .any(|c| c.type_ == "Established" && c.status == "True")
            .then_some(())
    })
    .await;
}

/// Creates rollout `name` the way a GitOps tool would (its own field manager).
async fn create_rollout(ns: &TestNamespace, name: &str) {
    let obj = json!({
        "apiVersion": "dedup2d.io/v1alpha1", "kind": "Dedup2DRollout",
        "metadata": {"name": name},
        "spec": {
            "workers": [{"deployment": "dedup2d-worker", "image": "reg/dedup2d:2.5.0"}],
            "api": {"deployment": "dedup2d-api", "configMap": "dedup2d-config"}
        }
    });
    // The API server may need a moment after Established to serve the new type.
    let api = ns.api::<Dedup2DRollout>();
    eventually("rollout created", Duration::from_secs(30), || async {
        api.patch(
            name,
            &PatchParams::apply("gitops-test"),
            &Patch::Apply(&obj),
        )
        .await
        .ok()
    })
    .await;
}

async fn setup(name: &str) -> TestNamespace {
    let ns = TestNamespace::new("cli").await;
    install_crd(&ns).await;
    create_rollout(&ns, name).await;
    ns
}

async fn cli_as(program: &Path, args: &[&str]) -> Output {
    tokio::process::Command::new(program)
        .args(args)
        .output()
        .await
        .unwrap_or_else(|e| panic!("run {}: {e}", program.display()))
}

async fn cli(args: &[&str]) -> Output {
    cli_as(Path::new(BIN), args).await
}

fn ok(out: &Output) -> String {
    assert!(
        out.status.success(),
        "exit {}\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout.clone()).unwrap()
}

async fn get(ns: &TestNamespace, name: &str) -> Dedup2DRollout {
    ns.api::<Dedup2DRollout>().get(name).await.unwrap()
}

/// The managers that own `spec.paused` (from managedFields).
fn paused_owners(r: &Dedup2DRollout) -> Vec<String> {
    r.managed_fields()
        .iter()
        .filter(|m| {
            m.fields_v1
                .as_ref()
                .is_some_and(|f| f.0.pointer("/f:spec/f:paused").is_some())
        })
        .map(|m| m.manager.clone().unwrap_or_default())
        .collect()
}

fn request(r: &Dedup2DRollout) -> String {
    r.annotations()
        .get(REQUEST_ANNOTATION)
        .cloned()
        .unwrap_or_else(|| panic!("no {REQUEST_ANNOTATION} annotation on {}", r.name_any()))
}

#[tokio::test]
async fn pause_and_resume_apply_spec_paused_as_dedup2d_cli() {
    let ns = setup("fleet").await;
    let out = ok(&cli(&["rollout", "pause", "fleet", "-n", &ns.name]).await);
    assert!(out.contains("paused"), "{out}");
    let r = get(&ns, "fleet").await;
    assert!(r.spec.paused);
    assert_eq!(paused_owners(&r), ["dedup2d-cli"]);
    // The rest of the spec is untouched and still owned by the GitOps manager.
    assert_eq!(r.spec.workers[0].image, "reg/dedup2d:2.5.0");
    assert!(r
        .managed_fields()
        .iter()
        .any(|m| m.manager.as_deref() == Some("gitops-test")));

    ok(&cli(&["rollout", "resume", "fleet", "--namespace", &ns.name]).await);
    let r = get(&ns, "fleet").await;
    assert!(!r.spec.paused);
    assert_eq!(paused_owners(&r), ["dedup2d-cli"]);

    // A person's intent wins over a GitOps manager that owned the field (forced apply).
    ns.api::<Dedup2DRollout>()
        .patch(
            "fleet",
            &PatchParams::apply("gitops-test").force(),
            &Patch::Apply(json!({
                "apiVersion": "dedup2d.io/v1alpha1", "kind": "Dedup2DRollout",
                "metadata": {"name": "fleet"},
                "spec": {
                    "workers": [{"deployment": "dedup2d-worker", "image": "reg/dedup2d:2.5.0"}],
                    "api": {"deployment": "dedup2d-api", "configMap": "dedup2d-config"},
                    "paused": false
                }
            })),
        )
        .await
        .unwrap();
    ok(&cli(&["rollout", "pause", "fleet", "-n", &ns.name]).await);
    let r = get(&ns, "fleet").await;
    assert!(r.spec.paused);
    assert_eq!(paused_owners(&r), ["dedup2d-cli"]);
}

#[tokio::test]
async fn promote_and_abort_write_requests_with_fresh_nonces() {
    let ns = setup("fleet").await;
    let out = ok(&cli(&["rollout", "promote", "fleet", "-n", &ns.name]).await);
    let first = request(&get(&ns, "fleet").await);
    assert!(first.starts_with("promote:"), "{first}");
    assert!(out.contains(&first), "the CLI tells what it wrote: {out}");

    ok(&cli(&["rollout", "promote", "fleet", "-n", &ns.name]).await);
    let second = request(&get(&ns, "fleet").await);
    assert!(second.starts_with("promote:"), "{second}");
    assert_ne!(first, second, "a repeated command is a new request");

    ok(&cli(&["rollout", "abort", "fleet", "--full", "-n", &ns.name]).await);
    let full = request(&get(&ns, "fleet").await);
    assert!(full.starts_with("abort-full:"), "{full}");

    ok(&cli(&["rollout", "abort", "fleet", "-n", &ns.name]).await);
    let quick = request(&get(&ns, "fleet").await);
    assert!(quick.starts_with("abort:"), "{quick}");

    let nonces: std::collections::BTreeSet<&str> = [&first, &second, &full, &quick]
        .iter()
        .map(|v| v.split_once(':').unwrap().1)
        .collect();
    assert_eq!(nonces.len(), 4, "distinct nonces: {nonces:?}");
    let r = get(&ns, "fleet").await;
    assert!(r
        .managed_fields()
        .iter()
        .any(|m| m.manager.as_deref() == Some("dedup2d-cli")
            && m.fields_v1.as_ref().is_some_and(|f| f
                .0
                // JSON pointer: the `/` of the annotation key is escaped as `~1`.
                .pointer(&format!(
                    "/f:metadata/f:annotations/f:{}",
                    REQUEST_ANNOTATION.replace('/', "~1")
                ))
                .is_some())));
}

async fn set_status(ns: &TestNamespace, name: &str, status: serde_json::Value) {
    ns.api::<Dedup2DRollout>()
        .patch_status(
            name,
            &PatchParams::apply("dedup2d-test").force(),
            &Patch::Apply(json!({
                "apiVersion": "dedup2d.io/v1alpha1", "kind": "Dedup2DRollout",
                "metadata": {"name": name},
                "status": status
            })),
        )
        .await
        .unwrap();
}

fn condition(t: &str, s: &str, reason: &str, message: &str) -> serde_json::Value {
    json!({"type": t, "status": s, "reason": reason, "message": message,
           "lastTransitionTime": "2026-05-01T10:00:00Z"})
}

#[tokio::test]
async fn status_prints_phase_and_conditions_also_as_a_kubectl_plugin() {
    let ns = setup("fleet").await;
    set_status(
        &ns,
        "fleet",
        json!({
            "observedGeneration": 1,
            "phase": "Soaking",
            "message": "dual-write stays on for 10m",
            "dualWrite": "On",
            "workerSummary": "1/1",
            "conditions": [
                condition("Ready", "False", "Soaking", "soak until 10:10"),
                condition("RollbackSafe", "True", "DualWriteOn", "every payload carries file_bytes_b64"),
            ]
        }),
    )
    .await;
    let out = ok(&cli(&["rollout", "status", "fleet", "-n", &ns.name]).await);
    assert!(
        out.starts_with(&format!("Dedup2DRollout {}/fleet\n", ns.name)),
        "{out}"
    );
    for want in [
        "Phase:       Soaking",
        "Message:     dual-write stays on for 10m",
        "Workers:     1/1 upgraded",
        "Dual-write:  On",
        "Ready         False    Soaking      soak until 10:10",
        "RollbackSafe  True     DualWriteOn  every payload carries file_bytes_b64",
    ] {
        assert!(out.contains(want), "missing {want:?} in\n{out}");
    }

    // Installed as `kubectl-dedup2d`, the verbs come first.
    let dir = tempfile::tempdir().unwrap();
    let plugin = dir.path().join("kubectl-dedup2d");
    std::os::unix::fs::symlink(BIN, &plugin).unwrap();
    let via_plugin = ok(&cli_as(&plugin, &["status", "fleet", "-n", &ns.name]).await);
    assert!(via_plugin.contains("Phase:       Soaking"), "{via_plugin}");
}

#[tokio::test]
async fn status_watch_prints_changes_until_a_terminal_phase() {
    let ns = setup("fleet").await;
    set_status(&ns, "fleet", json!({"phase": "Soaking"})).await;
    let mut child = tokio::process::Command::new(BIN)
        .args(["rollout", "status", "fleet", "--watch", "-n", &ns.name])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
    // Wait for the initial view before changing anything.
    let mut seen = Vec::new();
    while let Some(line) = tokio::time::timeout(Duration::from_secs(20), lines.next_line())
        .await
        .expect("initial view printed")
        .unwrap()
    {
        let done = line.contains("Dual-write:");
        seen.push(line);
        if done {
            break;
        }
    }
    assert!(
        seen.iter().any(|l| l.contains("Phase:       Soaking")),
        "{seen:#?}"
    );

    set_status(
        &ns,
        "fleet",
        json!({"phase": "Draining", "message": "12 legacy payloads"}),
    )
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    set_status(
        &ns,
        "fleet",
        json!({"phase": "Completed", "message": "file_ref-only"}),
    )
    .await;
    let status = tokio::time::timeout(Duration::from_secs(20), child.wait())
        .await
        .expect("watch ends at Completed")
        .unwrap();
    let mut rest = Vec::new();
    while let Some(line) = lines.next_line().await.unwrap() {
        rest.push(line);
    }
    assert!(status.success(), "{status}: {rest:#?}");
    assert!(
        rest.iter()
            .any(|l| l.ends_with("Soaking -> Draining: 12 legacy payloads")),
        "{rest:#?}"
    );
    assert!(
        rest.iter()
            .any(|l| l.ends_with("Draining -> Completed: file_ref-only")),
        "{rest:#?}"
    );

    // A rollout that ended rolled back makes `--watch` exit non-zero.
    set_status(&ns, "fleet", json!({"phase": "RolledBack"})).await;
    let out = cli(&["rollout", "status", "fleet", "--watch", "-n", &ns.name]).await;
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("ended in phase RolledBack"), "{err}");
}

#[tokio::test]
async fn a_missing_rollout_is_a_clear_error() {
    let ns = TestNamespace::new("cli").await;
    install_crd(&ns).await;
    for verb in ["status", "pause", "resume", "promote", "abort"] {
        let out = cli(&["rollout", verb, "nope", "-n", &ns.name]).await;
        assert!(!out.status.success(), "{verb} succeeded");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains(&format!("Dedup2DRollout {}/nope not found", ns.name)),
            "{verb}: {err}"
        );
    }
    // And nothing was created by the attempts.
    assert!(ns
        .api::<Dedup2DRollout>()
        .get_opt("nope")
        .await
        .unwrap()
        .is_none());
}
