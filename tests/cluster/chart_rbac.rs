//! The Helm chart on the real API server, RBAC included. `helm install` puts the chart into the
//! local control plane, namespaced in one test and cluster-wide in another. kwok makes the chart's
//! operator pods "Ready" without running them, so each test runs the operator process itself, with
//! the arguments and environment of the Deployment helm installed, authenticated as the chart's
//! ServiceAccount (a TokenRequest token, not the admin). Each completes a whole rollout across a
//! SIGKILL and a new process; the namespaced one is refused outside its namespace, and says so;
//! `helm upgrade` with other values and `helm uninstall` leave the rollouts and the fleet as they
//! are. A pure test checks that the chart's rules are those of `examples/operator-role.yaml`.

use std::{path::Path, process::Command, time::Duration};

use dedup2d::operator::crd::{Dedup2DRollout, Phase, PAYLOAD_CONFIG_ANNOTATION};
use k8s_openapi::api::{
    apps::v1::Deployment,
    rbac::v1::{ClusterRole, PolicyRule, Role},
};
use serde_json::{json, Value};

use crate::support::{
    fleet::*,
    history::*,
    kube::{ClusterWide, TestNamespace},
    operator::Operator,
    poll::eventually,
    process::free_port,
    scenario::Scenario,
};

const CHART: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/charts/dedup2d-operator");

/// `helm ARGS`; its stdout, or a panic with its stderr.
fn helm(args: &[&str]) -> String {
    let out = Command::new("helm")
        .args(args)
        .output()
        .unwrap_or_else(|e| {
            panic!(
            "cannot run helm ({e}): build it with `hack/cluster.sh build` and put it on PATH with \
             `eval \"$(hack/cluster.sh env)\"` (hack/test.sh does both)"
        )
        });
    assert!(
        out.status.success(),
        "helm {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Values of every install here: text logs, short leases (a new process takes over within seconds),
/// kwok's nodes tolerated, and a free metrics port (the process runs on this machine).
fn test_values() -> Vec<String> {
    [
        "--set",
        "logFormat=text",
        "--set",
        "leaderElection.leaseDuration=6",
        "--set",
        "leaderElection.leaseGrace=2",
        "--set-json",
        r#"tolerations=[{"key":"kwok.x-k8s.io/node","operator":"Exists","effect":"NoSchedule"}]"#,
        "--set",
    ]
    .into_iter()
    .map(String::from)
    .chain([format!("metrics.port={}", free_port())])
    .collect()
}

fn helm_install(release: &str, ns: &str, values: &[String]) {
    let mut args = vec!["install", release, CHART, "--namespace", ns];
    args.extend(values.iter().map(String::as_str));
    let notes = helm(&args);
    assert!(
        notes.contains("get d2r -w"),
        "NOTES.txt tells the next command:\n{notes}"
    );
}

/// The chart's operator as a local process: the container arguments and environment of the
/// Deployment helm installed (field references resolved as the kubelet would), and a kubeconfig
/// with the chart's ServiceAccount token.
struct ChartOperator {
    args: Vec<String>,
    env: Vec<(String, String)>,
    _dir: tempfile::TempDir,
}

impl ChartOperator {
    async fn from_release(release_ns: &TestNamespace, deployment: &str) -> Self {
        let d = deploy(release_ns, deployment).await;
        let pod = d.spec.unwrap().template.spec.unwrap();
        let sa = pod.service_account_name.clone().expect("a ServiceAccount");
        let container = pod
            .containers
            .iter()
            .find(|c| c.name == "operator")
            .expect("the operator container");
        let args = container.args.clone().unwrap_or_default();
        let pod_name = format!("{deployment}-local");
        let mut env: Vec<(String, String)> = container
            .env
            .iter()
            .flatten()
            .map(|e| {
                let field = e
                    .value_from
                    .as_ref()
                    .and_then(|f| f.field_ref.as_ref())
                    .map(|f| f.field_path.as_str());
                let value = match (e.value.as_deref(), field) {
                    (Some(v), _) => v.to_string(),
                    (None, Some("metadata.name")) => pod_name.clone(),
                    (None, Some("metadata.namespace")) => release_ns.name.clone(),
                    other => panic!("env {} from {other:?}: not resolved by the test", e.name),
                };
                (e.name.clone(), value)
            })
            .collect();
        let dir = tempfile::tempdir().unwrap();
        let kubeconfig = service_account_token_kubeconfig(release_ns, &sa, dir.path()).await;
        env.push(("KUBECONFIG".into(), path_str(&kubeconfig)));
        ChartOperator {
            args,
            env,
            _dir: dir,
        }
    }

    fn start(&self) -> Operator {
        self.start_with_args(&self.args)
    }

    fn start_with_args(&self, args: &[String]) -> Operator {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let env: Vec<(&str, &str)> = self
            .env
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        Operator::start_args(&args, &env)
    }

    /// The same process pointed at `namespace`, on a Lease and a metrics port of its own.
    fn start_for_namespace(&self, namespace: &str) -> Operator {
        let args: Vec<String> = self
            .args
            .iter()
            .map(|a| {
                if a.starts_with("--namespace=") {
                    format!("--namespace={namespace}")
                } else if let Some(lease) = a.strip_prefix("--lease-name=") {
                    format!("--lease-name={lease}-stray")
                } else if a.starts_with("--metrics-addr=") {
                    "--metrics-addr=127.0.0.1:0".into()
                } else {
                    a.clone()
                }
            })
            .collect();
        assert_ne!(
            args, self.args,
            "the chart runs the operator with --namespace"
        );
        self.start_with_args(&args)
    }
}

fn path_str(p: &Path) -> String {
    p.to_str().unwrap().to_string()
}

/// What `helm upgrade` and `helm uninstall` must leave alone: the rollout's phase and transitions,
/// and per fleet Deployment its generation, image and restart annotation, plus the dual-write key
/// of the ConfigMap [`CM`] (the chart's fleet of release `dedup2d` has that name too).
async fn untouched_state(ns: &TestNamespace, rollout: &str, deployments: &[&str]) -> Value {
    let r = ns.api::<Dedup2DRollout>().get(rollout).await.unwrap();
    let st = r.status.unwrap_or_default();
    let mut out = json!({
        "rollout": {
            "uid": r.metadata.uid,
            "phase": st.phase.map(|p| p.to_string()),
            "transitions": st.transitions.iter().map(|t| t.to.to_string()).collect::<Vec<_>>(),
        },
        "configMap": include(ns).await,
    });
    for name in deployments {
        let d = deploy(ns, name).await;
        out[name] = json!({
            "uid": d.metadata.uid,
            "generation": d.metadata.generation,
            "image": template_image(&d),
            "restart": template_annotation(&d, PAYLOAD_CONFIG_ANNOTATION),
        });
    }
    out
}

/// Runs the rollout already applied as `rollout` in `ns` to Completed across one SIGKILL: a
/// legacy payload holds it in Draining, the operator is killed there, a new process takes over and
/// the payload goes. Returns the new process.
async fn complete_across_a_restart(
    ns: &TestNamespace,
    rollout: &str,
    chart_op: &ChartOperator,
    mut op: Operator,
    redis: &mut redis::aio::ConnectionManager,
) -> Operator {
    wait_phase(ns, rollout, Phase::Draining, WAIT).await;
    op.kill();
    println!("SIGKILL in Draining");
    let op = chart_op.start();
    let _: () = redis::cmd("DEL")
        .arg("dedup2d:payload:legacy-1")
        .query_async(redis)
        .await
        .unwrap();
    let r = wait_phase(ns, rollout, Phase::Completed, WAIT).await;
    assert_eq!(r.status.unwrap().worker_summary.as_deref(), Some("1/1"));
    wait_originals_released(ns, rollout).await;
    let log = op.log_text();
    assert!(log.contains("leading"), "the new process leads:\n{log}");
    op
}

/// Namespaced mode with the chart's own fleet as the target: a whole rollout as the chart's
/// ServiceAccount, nothing done outside the namespace, and upgrade/uninstall leaving it all alone.
#[tokio::test]
async fn namespaced_chart_rolls_its_fleet_as_its_service_account_and_stays_in_its_namespace() {
    let s = Scenario::builder("chart-ns")
        .payloads(&["legacy-1"], &[])
        .without_fleet()
        .fleet()
        .await;
    let (ns, redis, mut conn) = (&s.ns, &s.redis, s.conn.clone());
    // Under the scenario's claim: a second claim could deadlock behind a cluster-wide test.
    let other = ns.sibling("chart-other").await;

    let mut values = test_values();
    for v in [
        "fleet.enabled=true".to_string(),
        format!("fleet.redis.url={}", redis.url()),
        format!("fleet.image={OLD_IMAGE}"),
        "fleet.workers.replicas=2".into(),
    ] {
        values.extend(["--set".to_string(), v]);
    }
    helm_install("dedup2d", &ns.name, &values);
    let fleet = ["dedup2d-worker", "dedup2d-api"];
    for name in fleet {
        eventually(&format!("{name} rolled out"), WAIT, || async {
            rolled_out(&ns.api::<Deployment>().get(name).await.ok()?).then_some(())
        })
        .await;
    }
    let history = History::start(ns).await;
    let chart_op = ChartOperator::from_release(ns, "dedup2d-operator").await;
    assert!(
        chart_op.args.contains(&format!("--namespace={}", ns.name)),
        "namespaced mode passes --namespace: {:?}",
        chart_op.args
    );
    let op = chart_op.start();
    let spec = rollout_spec(
        &["dedup2d-worker"],
        json!({
            "api": {"deployment": "dedup2d-api", "image": API_NEW},
            "dualWrite": {"soak": "2s"},
            "drain": {"strategy": "Observe", "redis": {"urlSecretRef": {"name": "dedup2d-redis", "key": "url"}}},
        }),
    );
    apply_rollout(ns, "chart", spec.clone()).await;
    let op = complete_across_a_restart(ns, "chart", &chart_op, op, &mut conn).await;
    assert_eq!(
        includes(&history.by_revision()),
        ["0", "1", "0"],
        "ConfigMap history 0 -> 1 -> 0"
    );
    assert_eq!(
        template_image(&deploy(ns, "dedup2d-worker").await),
        NEW_IMAGE
    );
    assert_eq!(template_image(&deploy(ns, "dedup2d-api").await), API_NEW);

    // Outside its namespace: a rollout there is never touched...
    apply_rollout(&other, "elsewhere", spec).await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    let elsewhere = other
        .api::<Dedup2DRollout>()
        .get("elsewhere")
        .await
        .unwrap();
    assert!(
        elsewhere.status.is_none(),
        "a rollout outside the watched namespace got a status: {:?}",
        elsewhere.status
    );
    // ...and pointed at that namespace, the same process is refused and says why.
    let mut stray = chart_op.start_for_namespace(&other.name);
    let exit = stray
        .wait_exit(Duration::from_secs(60))
        .expect("the operator without rights in its namespace exits");
    assert!(!exit.success(), "it exits with an error");
    let log = stray.log_text();
    let want = format!(
        "not allowed to list Dedup2DRollouts in namespace {}",
        other.name
    );
    assert!(log.contains(&want), "a clear error ({want}):\n{log}");
    assert!(log.contains("forbidden"), "the API server's reason:\n{log}");

    // helm upgrade with other operator values, then helm uninstall: the rollout and the fleet stay.
    let before = untouched_state(ns, "chart", &fleet).await;
    helm(&[
        "upgrade",
        "dedup2d",
        CHART,
        "--namespace",
        &ns.name,
        "--reuse-values",
        "--set",
        "replicaCount=3",
        "--set",
        "podDisruptionBudget.minAvailable=2",
        "--set",
        "resources.limits.memory=512Mi",
    ]);
    let operator = deploy(ns, "dedup2d-operator").await;
    assert_eq!(
        operator.spec.unwrap().replicas,
        Some(3),
        "the upgrade took effect"
    );
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        untouched_state(ns, "chart", &fleet).await,
        before,
        "helm upgrade changed the rollout or the fleet"
    );
    drop(op);
    helm(&["uninstall", "dedup2d", "--namespace", &ns.name]);
    assert!(
        ns.api::<Deployment>()
            .get_opt("dedup2d-operator")
            .await
            .unwrap()
            .is_none(),
        "uninstalled"
    );
    assert_eq!(
        untouched_state(ns, "chart", &fleet).await,
        before,
        "helm uninstall changed the rollout or the fleet"
    );
}

/// Cluster mode: the chart in one namespace, the fleet and the rollout in another (only a
/// ClusterRole allows that), a whole rollout across a restart, then upgrade and uninstall.
#[tokio::test]
async fn cluster_chart_rolls_a_fleet_in_another_namespace_as_its_service_account() {
    // The cluster-wide operator would reconcile every other test's rollout too: it runs alone.
    let claim = ClusterWide::claim().await;
    let release_ns = claim.namespace("chart-cl").await;
    let s = Scenario::builder("chart-cl-fleet")
        .cluster_wide(&claim)
        .payloads(&["legacy-1"], &[])
        .workers(&[("worker-a", 2)])
        .history()
        .fleet()
        .await;
    let (ns, history, mut conn) = (&s.ns, s.history(), s.conn.clone());

    let mut values = test_values();
    values.extend(["--set".to_string(), "rbac.scope=Cluster".into()]);
    helm_install("ops", &release_ns.name, &values);
    let chart_op = ChartOperator::from_release(&release_ns, "ops-dedup2d-operator").await;
    assert!(
        !chart_op.args.iter().any(|a| a.starts_with("--namespace")),
        "cluster mode watches every namespace: {:?}",
        chart_op.args
    );
    let op = chart_op.start();
    apply_rollout(ns, "chart", upgrade_spec(&["worker-a"], "2s")).await;
    let op = complete_across_a_restart(ns, "chart", &chart_op, op, &mut conn).await;
    let h = history.by_revision();
    let offs = check_dual_write_off_after_workers(&h, &["worker-a"], NEW_IMAGE);
    assert_eq!(offs.len(), 1, "dual-write turned off once");
    assert_eq!(
        includes(&h),
        ["0", "1", "0"],
        "ConfigMap history 0 -> 1 -> 0"
    );

    let deployments = ["worker-a", "api"];
    let before = untouched_state(ns, "chart", &deployments).await;
    helm(&[
        "upgrade",
        "ops",
        CHART,
        "--namespace",
        &release_ns.name,
        "--reuse-values",
        "--set",
        "replicaCount=3",
        "--set",
        "logLevel=debug",
    ]);
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        untouched_state(ns, "chart", &deployments).await,
        before,
        "helm upgrade changed the rollout or the fleet"
    );
    drop(op);
    helm(&["uninstall", "ops", "--namespace", &release_ns.name]);
    let roles: kube::Api<ClusterRole> = kube::Api::all(ns.client.clone());
    let name = format!("{}-ops-dedup2d-operator", release_ns.name);
    assert!(
        roles.get_opt(&name).await.unwrap().is_none(),
        "the ClusterRole {name} is uninstalled"
    );
    assert_eq!(
        untouched_state(ns, "chart", &deployments).await,
        before,
        "helm uninstall changed the rollout or the fleet"
    );
}

/// The Role (and, cluster-wide, ClusterRole) rules of the rendered chart plus its Lease Role are
/// exactly `examples/operator-role.yaml`: the chart is the one source of the rules, the example
/// may not drift from it.
#[test]
fn chart_rules_are_those_of_examples_operator_role() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/operator-role.yaml");
    let example: Role = serde_saphyr::from_str(&std::fs::read_to_string(path).unwrap())
        .unwrap_or_else(|e| panic!("{path}: {e}"));
    let example = example.rules.unwrap();
    for scope in ["Namespace", "Cluster"] {
        let rendered = helm(&[
            "template",
            "dedup2d",
            CHART,
            "--namespace",
            "ops",
            "--show-only",
            "templates/rbac.yaml",
            "--set",
            &format!("rbac.scope={scope}"),
        ]);
        let mut rules: Vec<PolicyRule> = vec![];
        for doc in rendered.split("\n---") {
            let kind = doc.lines().find_map(|l| l.strip_prefix("kind: "));
            match kind {
                Some("Role") => rules.extend(parse::<Role>(doc).rules.unwrap()),
                Some("ClusterRole") => rules.extend(parse::<ClusterRole>(doc).rules.unwrap()),
                _ => {}
            }
        }
        assert_eq!(
            rules, example,
            "rbac.scope={scope}: the chart's rules differ from {path}; the chart is the source, \
             update the example to match"
        );
    }
}

fn parse<T: serde::de::DeserializeOwned>(doc: &str) -> T {
    serde_saphyr::from_str(doc).unwrap_or_else(|e| panic!("{e}:\n{doc}"))
}
