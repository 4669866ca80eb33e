//! `dedup2d rollout ...` (the built binary) against the local control plane with the CRD installed
//! and a rollout object created; no operator runs, so what the CLI writes stays as written.

use std::path::Path;
use std::process::Output;
use std::time::Duration;

use crate::support::kube::{kubectl, TestNamespace};
use crate::support::operator::install_crd;
use crate::support::poll::eventually;
use dedup2d::operator::crd::{Dedup2DRollout, REQUEST_ANNOTATION};
use kube::api::{Patch, PatchParams};
use kube::ResourceExt;
use serde_json::json;
use tokio::io::AsyncBufReadExt;

const BIN: &str = env!("CARGO_BIN_EXE_dedup2d");

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
    install_crd(&ns.client).await;
    create_rollout(&ns, name).await;
    ns
}

async fn cli_as(program: &Path, args: &[&str]) -> Output {
    tokio::process::Command::new(program)
        .args(args)
        .env("RUST_BACKTRACE", "1")
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
async fn promote_abort_and_retry_write_requests_with_fresh_nonces() {
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

    let out = ok(&cli(&["rollout", "retry", "fleet", "-n", &ns.name]).await);
    let retry = request(&get(&ns, "fleet").await);
    assert!(retry.starts_with("retry:"), "{retry}");
    assert!(out.contains(&retry), "{out}");

    let nonces: std::collections::BTreeSet<&str> = [&first, &second, &full, &quick, &retry]
        .iter()
        .map(|v| v.split_once(':').unwrap().1)
        .collect();
    assert_eq!(nonces.len(), 5, "distinct nonces: {nonces:?}");
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
    assert_eq!(
        stderr_line(&out),
        format!(
            r#"error: rollout "fleet" in namespace "{}" ended in phase RolledBack"#,
            ns.name
        )
    );
}

#[tokio::test]
async fn a_missing_rollout_is_one_error_line_without_a_backtrace() {
    let ns = TestNamespace::new("cli").await;
    install_crd(&ns.client).await;
    let want = format!(
        r#"error: rollout "nope" not found in namespace "{}""#,
        ns.name
    );
    for verb in [
        &["status"][..],
        &["status", "--wait"],
        &["status", "--watch"],
        &["pause"],
        &["resume"],
        &["promote"],
        &["retry"],
        &["abort"],
        &["abort", "--full"],
    ] {
        let mut args = vec!["rollout"];
        args.extend_from_slice(verb);
        args.extend_from_slice(&["nope", "-n", &ns.name]);
        let out = cli(&args).await;
        assert_eq!(out.status.code(), Some(1), "{verb:?}");
        assert_eq!(stderr_line(&out), want, "{verb:?}");
    }
    // And nothing was created by the attempts.
    assert!(ns
        .api::<Dedup2DRollout>()
        .get_opt("nope")
        .await
        .unwrap()
        .is_none());
}

/// Stderr of a failed run: exactly one line, no backtrace (RUST_BACKTRACE=1 is set by [`cli`]).
fn stderr_line(out: &Output) -> String {
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!err.to_lowercase().contains("backtrace"), "{err}");
    let lines: Vec<&str> = err.lines().collect();
    assert_eq!(lines.len(), 1, "one line expected:\n{err}");
    lines[0].to_string()
}

#[tokio::test]
async fn an_api_error_is_one_line_with_the_reason() {
    let ns = setup("fleet").await;
    // The same API server, with a token it does not know.
    let config = kube::Config::infer().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = dir.path().join("bad-token.yaml");
    std::fs::write(
        &kubeconfig,
        format!(
            "apiVersion: v1\nkind: Config\ncurrent-context: x\n\
             clusters: [{{name: c, cluster: {{server: '{}', insecure-skip-tls-verify: true}}}}]\n\
             users: [{{name: u, user: {{token: not-a-valid-token}}}}]\n\
             contexts: [{{name: x, context: {{cluster: c, user: u, namespace: {}}}}}]\n",
            config.cluster_url, ns.name
        ),
    )
    .unwrap();
    for verb in ["status", "retry"] {
        let out = tokio::process::Command::new(BIN)
            .args(["rollout", verb, "fleet"])
            .env("KUBECONFIG", &kubeconfig)
            .env("RUST_BACKTRACE", "1")
            .output()
            .await
            .unwrap();
        assert_eq!(out.status.code(), Some(1), "{verb}");
        assert_eq!(
            stderr_line(&out),
            format!(
                r#"error: reading rollout "fleet" in namespace "{}": Unauthorized (Unauthorized)"#,
                ns.name
            ),
            "{verb}"
        );
    }
}

/// Runs `status NAME --wait` plus `extra`; the exit code and stdout.
async fn wait(ns: &TestNamespace, extra: &[&str]) -> (Option<i32>, String) {
    let mut args = vec!["rollout", "status", "fleet", "--wait", "-n", &ns.name];
    args.extend_from_slice(extra);
    let out = cli(&args).await;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code(), stdout)
}

fn last_line(text: &str) -> &str {
    text.lines().last().unwrap_or_default()
}

#[tokio::test]
async fn status_wait_exits_with_the_code_of_the_outcome() {
    let ns = setup("fleet").await;
    let id = format!("Dedup2DRollout {}/fleet", ns.name);
    for (phase, message, code, end) in [
        ("Completed", "completed", 0, "Completed"),
        (
            "RolledBack",
            "rolled back (abort requested)",
            10,
            "RolledBack: rolled back (abort requested)",
        ),
        ("Failed", "failed", 11, "Failed: failed"),
        (
            "AwaitingFinalize",
            "drained; waiting for a promote request (finalize: Manual)",
            12,
            "needs a person: drained, AwaitingFinalize (finalize: Manual); \
             `dedup2d rollout promote fleet` completes it",
        ),
    ] {
        set_status(
            &ns,
            "fleet",
            json!({"observedGeneration": 1, "phase": phase, "message": message}),
        )
        .await;
        let (got, out) = wait(&ns, &[]).await;
        assert_eq!(got, Some(code), "{phase}: {out}");
        assert!(
            out.lines()
                .next()
                .unwrap()
                .ends_with(&format!("  {phase}: {message}")),
            "{phase}: {out}"
        );
        assert_eq!(last_line(&out), format!("{id}: {end}"), "{phase}");
    }

    // A hold that needs a retry, as the operator writes it.
    set_status(
        &ns,
        "fleet",
        json!({
            "observedGeneration": 1, "phase": "UpgradingWorkers",
            "message": "held: image changed (send a retry or abort request)",
            "hold": {"reason": "ExternalModification", "message": "image changed by kubectl-edit",
                     "since": "2026-05-01T10:00:00Z"},
            "conditions": [condition("Stalled", "True", "ExternalModification", "image changed by kubectl-edit")]
        }),
    )
    .await;
    let (got, out) = wait(&ns, &[]).await;
    assert_eq!(got, Some(12), "{out}");
    assert!(
        last_line(&out).contains("needs a person: held by ExternalModification: image changed by kubectl-edit; `dedup2d rollout retry fleet`"),
        "{out}"
    );
    // A retry sent and not handled yet (no operator runs): the hold is about to be lifted, so
    // --wait waits, here until its timeout.
    ok(&cli(&["rollout", "retry", "fleet", "-n", &ns.name]).await);
    let (got, out) = wait(&ns, &["--timeout", "1s"]).await;
    assert_eq!(got, Some(13), "{out}");
    assert_eq!(
        last_line(&out),
        format!(
            "{id}: timed out after 1s in phase UpgradingWorkers: held: image changed (send a retry or abort request)"
        )
    );

    // A cluster problem heals by itself: keep waiting. `--timeout 0` checks once.
    let retry = request(&get(&ns, "fleet").await);
    set_status(
        &ns,
        "fleet",
        json!({
            "observedGeneration": 1, "phase": "DualWriteOn",
            "message": "stalled: API Deployment dedup2d-api not found",
            "conditions": [condition("Stalled", "True", "TargetMissing", "API Deployment dedup2d-api not found")],
            "lastRequest": {"request": retry, "handledAt": "2026-05-01T10:00:00Z", "outcome": "resumed after ExternalModification"}
        }),
    )
    .await;
    let (got, out) = wait(&ns, &["--timeout", "0"]).await;
    assert_eq!(got, Some(13), "{out}");
    assert!(
        out.contains("DualWriteOn: stalled: API Deployment dedup2d-api not found"),
        "{out}"
    );

    // Paused: spec.paused, whatever the status says.
    ok(&cli(&["rollout", "pause", "fleet", "-n", &ns.name]).await);
    let (got, out) = wait(&ns, &[]).await;
    assert_eq!(got, Some(12), "{out}");
    assert_eq!(
        last_line(&out),
        format!("{id}: needs a person: paused (spec.paused); `dedup2d rollout resume fleet` lets it go on")
    );
}

#[tokio::test]
async fn status_wait_watches_and_prints_each_phase_change() {
    let ns = setup("fleet").await;
    set_status(
        &ns,
        "fleet",
        json!({"observedGeneration": 1, "phase": "Soaking", "message": "soaking"}),
    )
    .await;
    let spawn = || {
        tokio::process::Command::new(BIN)
            .args(["rollout", "status", "fleet", "--wait", "-n", &ns.name])
            .args(["--timeout", "60s"])
            .env("RUST_BACKTRACE", "1")
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap()
    };
    let first_line = |child: &mut tokio::process::Child| {
        let stdout = child.stdout.take().unwrap();
        async move {
            let mut lines = tokio::io::BufReader::new(stdout).lines();
            let first = tokio::time::timeout(Duration::from_secs(20), lines.next_line())
                .await
                .expect("first line printed")
                .unwrap()
                .unwrap();
            (first, lines)
        }
    };

    // To Completed: exit 0 with a line per phase.
    let mut child = spawn();
    let (first, mut lines) = first_line(&mut child).await;
    assert!(first.ends_with("  Soaking: soaking"), "{first}");
    // Give it a moment to start watching after the first line.
    tokio::time::sleep(Duration::from_secs(1)).await;
    for (phase, message) in [
        ("DualWriteOff", "turning dual-write off"),
        ("Draining", "12 legacy payloads"),
        ("Completed", "file_ref-only"),
    ] {
        tokio::time::sleep(Duration::from_millis(300)).await;
        set_status(
            &ns,
            "fleet",
            json!({"observedGeneration": 1, "phase": phase, "message": message}),
        )
        .await;
    }
    let status = tokio::time::timeout(Duration::from_secs(20), child.wait())
        .await
        .expect("--wait ends at Completed")
        .unwrap();
    let mut rest = Vec::new();
    while let Some(line) = lines.next_line().await.unwrap() {
        rest.push(line);
    }
    assert_eq!(status.code(), Some(0), "{rest:#?}");
    for want in [
        "Soaking -> DualWriteOff: turning dual-write off",
        "DualWriteOff -> Draining: 12 legacy payloads",
        "Draining -> Completed: file_ref-only",
    ] {
        assert!(rest.iter().any(|l| l.ends_with(want)), "{want}: {rest:#?}");
    }
    assert_eq!(
        rest.last().unwrap(),
        &format!("Dedup2DRollout {}/fleet: Completed", ns.name)
    );

    // Paused while waiting: exit 12.
    set_status(
        &ns,
        "fleet",
        json!({"observedGeneration": 1, "phase": "Draining", "message": "draining"}),
    )
    .await;
    let mut child = spawn();
    let (first, mut lines) = first_line(&mut child).await;
    assert!(first.ends_with("  Draining: draining"), "{first}");
    tokio::time::sleep(Duration::from_secs(1)).await;
    ok(&cli(&["rollout", "pause", "fleet", "-n", &ns.name]).await);
    let status = tokio::time::timeout(Duration::from_secs(20), child.wait())
        .await
        .expect("--wait ends when paused")
        .unwrap();
    let mut rest = Vec::new();
    while let Some(line) = lines.next_line().await.unwrap() {
        rest.push(line);
    }
    assert_eq!(status.code(), Some(12), "{rest:#?}");
    assert!(
        rest.last()
            .unwrap()
            .contains("needs a person: paused (spec.paused)"),
        "{rest:#?}"
    );
}

#[tokio::test]
async fn kubectl_get_shows_the_message_column() {
    let ns = setup("fleet").await;
    set_status(
        &ns,
        "fleet",
        json!({"observedGeneration": 1, "phase": "Soaking",
               "message": "paused in Soaking (spec.paused)"}),
    )
    .await;
    let kubectl = kubectl();
    let out = tokio::process::Command::new(&kubectl)
        .args(["get", "d2r", "fleet", "-n", &ns.name])
        .output()
        .await
        .unwrap_or_else(|e| panic!("run {}: {e}", kubectl.display()));
    let text = ok(&out);
    let mut lines = text.lines();
    let header: Vec<&str> = lines.next().unwrap().split_whitespace().collect();
    assert_eq!(header.last(), Some(&"MESSAGE"), "{text}");
    assert!(
        lines
            .next()
            .unwrap()
            .ends_with("paused in Soaking (spec.paused)"),
        "{text}"
    );
}
