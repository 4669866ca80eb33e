//! Shared parts of the operator e2e tests: the CRD installed on the real API server, the operator
//! run as the built `dedup2d` binary restricted to the test's namespace, a small fleet (worker and
//! API Deployments, the ConfigMap), and a history recorder that watches the namespace.
//!
//! The operator runs as a separate process (not a tokio task) so tests exercise the real CLI wiring
//! and the safety tests can SIGKILL it mid-phase and start a new one.
//!
//! The history is ordered by `resourceVersion`: with the single etcd of the local control plane it
//! is one global, increasing revision, so "the ConfigMap changed after the last old pod was gone" is
//! an exact statement about the store, not about watch delivery timing.

#![allow(dead_code)]

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex},
    time::Duration,
};

use futures::StreamExt;
use k8s_openapi::{
    api::{
        apps::v1::Deployment,
        authentication::v1::{TokenRequest, TokenRequestSpec},
        core::v1::{ConfigMap, Pod, ServiceAccount},
    },
    apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition,
    jiff::Timestamp,
};
use kube::{
    api::{ListParams, Patch, PatchParams, PostParams},
    config::Kubeconfig,
    runtime::watcher,
    Api, Client, CustomResourceExt, ResourceExt,
};
use serde_json::{json, Value};

use dedup2d::operator::crd::{Dedup2DRollout, Dedup2DRolloutStatus, Phase};

use crate::common::cluster::{eventually, TestNamespace};

pub const CM: &str = "dedup2d-config";
pub const INCLUDE: &str = "DEDUP2D_JOB_PAYLOAD_INCLUDE_BYTES_B64";
pub const MAX_BYTES: &str = "DEDUP2D_JOB_PAYLOAD_BYTES_B64_MAX_BYTES";
pub const OLD_IMAGE: &str = "registry.example.com/cad-ml-platform/dedup2d-worker:2.4.0";
pub const NEW_IMAGE: &str = "registry.example.com/dedup2d:0.1.0";
pub const API_OLD: &str = "registry.example.com/cad-ml-platform/dedup2d-api:2.4.0";
pub const API_NEW: &str = "registry.example.com/dedup2d:0.1.0-api";
pub const WAIT: Duration = Duration::from_secs(120);

/// Install (or update) the CRD from `dedup2d crd` and wait until the API server serves it.
pub async fn install_crd(client: &Client) {
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    let crd = Dedup2DRollout::crd();
    let name = crd.name_any();
    crds.patch(
        &name,
        &PatchParams::apply("dedup2d-e2e").force(),
        &Patch::Apply(&crd),
    )
    .await
    .unwrap_or_else(|e| panic!("the API server refused the CRD (schema or CEL cost budget?): {e}"));
    eventually("CRD established", WAIT, || async {
        let c = crds.get(&name).await.ok()?;
        c.status?
            .conditions?
            .iter()
            .any(|c| c.type_ == "Established" && c.status == "True")
            .then_some(())
    })
    .await;
}

/// The `dedup2d operator --namespace <ns>` process; SIGKILLed on drop (its log is printed when the
/// test failed).
pub struct Operator {
    child: Child,
    pub log: PathBuf,
    _dir: tempfile::TempDir,
}

/// Short leader-election timing, so a new process takes over a SIGKILLed one's Lease within seconds.
pub const LEASE_ARGS: [&str; 4] = ["--lease-duration", "6", "--lease-grace", "2"];

impl Operator {
    /// The operator on a free port for /metrics, with the short [`LEASE_ARGS`], on the Lease
    /// `dedup2d-operator` in `ns`.
    pub fn start(ns: &str) -> Self {
        Self::start_with(ns, &[])
    }

    /// [`Operator::start`] with more arguments.
    pub fn start_with(ns: &str, extra: &[&str]) -> Self {
        Self::start_env(ns, extra, &[])
    }

    /// [`Operator::start_with`] with environment overrides (e.g. another `KUBECONFIG`).
    pub fn start_env(ns: &str, extra: &[&str], env: &[(&str, &str)]) -> Self {
        let mut args = vec![
            "operator",
            "--namespace",
            ns,
            "--metrics-addr",
            "127.0.0.1:0",
        ];
        args.extend(LEASE_ARGS);
        args.extend(extra);
        Self::start_args(&args, env)
    }

    /// `dedup2d ARGS` exactly (e.g. the arguments a Deployment gives the container), text logs
    /// unless `env` says otherwise.
    pub fn start_args(args: &[&str], env: &[(&str, &str)]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("operator.log");
        let file = std::fs::File::create(&log).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_dedup2d"))
            .args(args)
            .env("DEDUP2D_LOG_FORMAT", "text")
            .env(
                "RUST_LOG",
                std::env::var("DEDUP2D_E2E_OPERATOR_LOG").unwrap_or_else(|_| "info".into()),
            )
            .env("NO_COLOR", "1")
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(file)
            .spawn()
            .expect("start the dedup2d operator binary");
        Operator {
            child,
            log,
            _dir: dir,
        }
    }

    /// Waits up to `timeout` for the process to exit on its own; its exit status, or `None`.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let deadline = std::time::Instant::now() + timeout;
        while std::time::Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        None
    }

    /// The process id (the Lease holder identity ends with `-<pid>`).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGKILL, no clean shutdown.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Operator {
    fn drop(&mut self) {
        self.kill();
        if std::thread::panicking() {
            let text = self.log_text();
            let tail: Vec<&str> = text.lines().rev().take(60).collect();
            eprintln!("---- operator log (last 60 lines) ----");
            for l in tail.into_iter().rev() {
                eprintln!("{l}");
            }
        }
    }
}

/// A Deployment on the kwok nodes reading the ConfigMap.
pub fn deployment(name: &str, container: &str, image: &str, replicas: i32) -> Value {
    json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": name},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {
                    "containers": [{"name": container, "image": image,
                                    "envFrom": [{"configMapRef": {"name": CM}}]}],
                    "tolerations": [{"key": "kwok.x-k8s.io/node", "operator": "Exists", "effect": "NoSchedule"}]
                }
            }
        }
    })
}

/// The fleet: the ConfigMap, worker Deployments `(name, replicas)` on [`OLD_IMAGE`], and `api` (2
/// replicas on [`API_OLD`]), applied by manager `e2e-fleet`, rolled out.
pub async fn fleet(
    ns: &TestNamespace,
    redis_url: &str,
    include_b64: &str,
    workers: &[(&str, i32)],
) {
    let ssa = PatchParams::apply("e2e-fleet").force();
    let cm = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": CM}, "data": {
        "DEDUP2D_REDIS_URL": redis_url,
        "DEDUP2D_REDIS_KEY_PREFIX": "dedup2d",
        INCLUDE: include_b64,
        MAX_BYTES: "10485760",
    }});
    ns.api::<ConfigMap>()
        .patch(CM, &ssa, &Patch::Apply(&cm))
        .await
        .unwrap();
    let deploys = ns.api::<Deployment>();
    for (name, replicas) in workers {
        deploys
            .patch(
                name,
                &ssa,
                &Patch::Apply(deployment(name, "worker", OLD_IMAGE, *replicas)),
            )
            .await
            .unwrap();
    }
    deploys
        .patch(
            "api",
            &ssa,
            &Patch::Apply(deployment("api", "api", API_OLD, 2)),
        )
        .await
        .unwrap();
    for name in workers.iter().map(|w| w.0).chain(["api"]) {
        eventually(&format!("{name} rolled out"), WAIT, || async {
            rolled_out(&deploys.get(name).await.ok()?).then_some(())
        })
        .await;
    }
}

/// kubectl's rollout-status test.
pub fn rolled_out(d: &Deployment) -> bool {
    let gen = d.metadata.generation.unwrap_or(0);
    let want = d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
    let Some(s) = d.status.as_ref() else {
        return false;
    };
    s.observed_generation.unwrap_or(0) >= gen
        && s.updated_replicas.unwrap_or(0) == want
        && s.replicas.unwrap_or(0) == want
        && s.available_replicas.unwrap_or(0) >= want
}

pub fn template_image(d: &Deployment) -> String {
    d.spec
        .as_ref()
        .unwrap()
        .template
        .spec
        .as_ref()
        .unwrap()
        .containers[0]
        .image
        .clone()
        .unwrap_or_default()
}

pub fn template_annotation(d: &Deployment, key: &str) -> Option<String> {
    d.spec
        .as_ref()?
        .template
        .metadata
        .as_ref()?
        .annotations
        .as_ref()?
        .get(key)
        .cloned()
}

/// Apply a rollout (manager `e2e`).
pub async fn apply_rollout(ns: &TestNamespace, name: &str, spec: Value) {
    let obj = json!({"apiVersion": "dedup2d.io/v1alpha1", "kind": "Dedup2DRollout",
                     "metadata": {"name": name}, "spec": spec});
    ns.api::<Dedup2DRollout>()
        .patch(name, &PatchParams::apply("e2e"), &Patch::Apply(&obj))
        .await
        .unwrap_or_else(|e| panic!("apply rollout {name}: {e}"));
}

pub async fn wait_phase(
    ns: &TestNamespace,
    name: &str,
    phase: Phase,
    timeout: Duration,
) -> Dedup2DRollout {
    let api = ns.api::<Dedup2DRollout>();
    eventually(
        &format!("rollout {name} in phase {phase}"),
        timeout,
        || async {
            let r = api.get(name).await.ok()?;
            (r.status.as_ref()?.phase == Some(phase)).then_some(r)
        },
    )
    .await
}

/// Legacy payloads (`file_bytes_b64`) and file_ref-only payloads, the way the API writes them.
pub async fn write_payloads(
    redis: &mut redis::aio::ConnectionManager,
    legacy: &[&str],
    file_ref_only: &[&str],
    ttl_s: u64,
) {
    for id in legacy {
        let body = json!({"job_id": id, "tenant_id": "t", "file_name": "a.dxf",
            "file_ref": {"backend": "local", "path": format!("/data/{id}.dxf")},
            "file_bytes_b64": "AAECAwQFBgcICQ=="});
        let _: () = redis::cmd("SET")
            .arg(format!("dedup2d:payload:{id}"))
            .arg(body.to_string())
            .arg("EX")
            .arg(ttl_s)
            .query_async(redis)
            .await
            .unwrap();
    }
    for id in file_ref_only {
        let body = json!({"job_id": id, "tenant_id": "t", "file_name": "a.dxf",
            "file_ref": {"backend": "local", "path": format!("/data/{id}.dxf")}});
        let _: () = redis::cmd("SET")
            .arg(format!("dedup2d:payload:{id}"))
            .arg(body.to_string())
            .arg("EX")
            .arg(ttl_s)
            .query_async(redis)
            .await
            .unwrap();
    }
}

/// A kubeconfig (written into `dir`) for the admin kubeconfig's cluster that authenticates as the
/// ServiceAccount `sa` of `ns` with a bound token (TokenRequest, one hour), not as the admin.
pub async fn service_account_token_kubeconfig(ns: &TestNamespace, sa: &str, dir: &Path) -> PathBuf {
    let request = TokenRequest {
        spec: TokenRequestSpec {
            expiration_seconds: Some(3600),
            ..Default::default()
        },
        ..Default::default()
    };
    let token = ns
        .api::<ServiceAccount>()
        .create_token_request(sa, &PostParams::default(), &request)
        .await
        .unwrap()
        .status
        .expect("a token")
        .token;

    // The admin kubeconfig's cluster, with the ServiceAccount as the user.
    let admin = Kubeconfig::read().expect("KUBECONFIG");
    let context = admin
        .contexts
        .iter()
        .find(|c| Some(&c.name) == admin.current_context.as_ref())
        .and_then(|c| c.context.as_ref())
        .expect("a current context");
    let cluster = admin
        .clusters
        .iter()
        .find(|c| c.name == context.cluster)
        .expect("the current context's cluster");
    let config = json!({
        "apiVersion": "v1", "kind": "Config",
        "clusters": [cluster],
        "users": [{"name": sa, "user": {"token": token}}],
        "contexts": [{"name": sa, "context": {"cluster": cluster.name, "user": sa}}],
        "current-context": sa,
    });
    let path = dir.join(format!("{sa}.kubeconfig"));
    std::fs::write(&path, config.to_string()).unwrap();
    path
}

// ----- reading and poking the namespace ------------------------------------------------------

pub async fn include(ns: &TestNamespace) -> String {
    let cm = ns.api::<ConfigMap>().get(CM).await.unwrap();
    cm.data.unwrap_or_default()[INCLUDE].clone()
}

pub async fn status(ns: &TestNamespace, name: &str) -> Dedup2DRolloutStatus {
    ns.api::<Dedup2DRollout>()
        .get(name)
        .await
        .unwrap()
        .status
        .unwrap_or_default()
}

pub async fn deploy(ns: &TestNamespace, name: &str) -> Deployment {
    ns.api::<Deployment>().get(name).await.unwrap()
}

pub async fn pod_images(ns: &TestNamespace, app: &str) -> Vec<String> {
    ns.api::<Pod>()
        .list(&ListParams::default().labels(&format!("app={app}")))
        .await
        .unwrap()
        .items
        .iter()
        .map(|p| {
            p.spec.as_ref().unwrap().containers[0]
                .image
                .clone()
                .unwrap()
        })
        .collect()
}

/// Waits until the Deployment fully rolled to `image` (template and every pod).
pub async fn wait_rolled_to(ns: &TestNamespace, name: &str, image: &str) {
    eventually(&format!("{name} rolled to {image}"), WAIT, || async {
        let d = ns.api::<Deployment>().get(name).await.ok()?;
        let pods = pod_images(ns, name).await;
        (template_image(&d) == image && rolled_out(&d) && pods.iter().all(|i| i == image))
            .then_some(())
    })
    .await
}

/// An operator Event as `(time, type, reason, action, note)`.
pub type OpEvent = (Timestamp, String, String, String, String);

/// The operator's Events as `(time, type, reason, action, note)`, oldest first.
pub async fn events(ns: &TestNamespace) -> Vec<OpEvent> {
    events_of(ns, None).await
}

/// [`events`], only those regarding the rollout `rollout` when given.
pub async fn events_of(ns: &TestNamespace, rollout: Option<&str>) -> Vec<OpEvent> {
    let api: Api<k8s_openapi::api::events::v1::Event> = ns.api();
    let mut out: Vec<_> = api
        .list(&Default::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter(|e| e.reporting_controller.as_deref() == Some("dedup2d-operator"))
        .filter(|e| {
            rollout.is_none_or(|name| {
                e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(name)
            })
        })
        .map(|e| {
            (
                e.event_time.map(|t| t.0).unwrap_or(Timestamp::UNIX_EPOCH),
                e.type_.unwrap_or_default(),
                e.reason.unwrap_or_default(),
                e.action.unwrap_or_default(),
                e.note.unwrap_or_default(),
            )
        })
        .collect();
    out.sort_by_key(|e| e.0);
    out
}

pub fn print_events(what: &str, evs: &[OpEvent]) {
    println!("{what}: operator Events");
    for (t, ty, reason, action, note) in evs {
        println!("  {t} {ty:<7} {reason:<26} {action:<16} {note}");
    }
}

/// How many times the operator emitted an Event with `reason` (a repeated Event is one object with
/// a series count), polled until it is `want`.
pub async fn wait_event_count(ns: &TestNamespace, reason: &str, want: i32) {
    let api: Api<k8s_openapi::api::events::v1::Event> = ns.api();
    eventually(
        &format!("{want} Events with reason {reason}"),
        Duration::from_secs(15),
        || async {
            let n: i32 = api
                .list(&Default::default())
                .await
                .ok()?
                .items
                .iter()
                .filter(|e| {
                    e.reporting_controller.as_deref() == Some("dedup2d-operator")
                        && e.reason.as_deref() == Some(reason)
                })
                .map(|e| e.series.as_ref().map(|s| s.count).unwrap_or(1))
                .sum();
            (n == want).then_some(())
        },
    )
    .await
}

/// Set `spec.paused` (merge patch by a person, not the GitOps manager).
pub async fn set_paused(ns: &TestNamespace, name: &str, paused: bool) {
    ns.api::<Dedup2DRollout>()
        .patch(
            name,
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"paused": paused}})),
        )
        .await
        .unwrap();
}

/// Write the one-shot request annotation.
pub async fn request(ns: &TestNamespace, name: &str, value: Option<&str>) {
    ns.api::<Dedup2DRollout>()
        .patch(
            name,
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"annotations": {"dedup2d.io/request": value}}})),
        )
        .await
        .unwrap();
}

/// The phase stays `phase` for `secs` seconds (checked every 500 ms).
pub async fn holds(ns: &TestNamespace, name: &str, phase: Phase, secs: u64) {
    let until = tokio::time::Instant::now() + Duration::from_secs(secs);
    while tokio::time::Instant::now() < until {
        let st = status(ns, name).await;
        assert_eq!(st.phase, Some(phase), "phase held: {:?}", st.message);
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

// ----- history ----------------------------------------------------------------------------------

/// One observed object version.
#[derive(Debug, Clone)]
pub enum Rec {
    Pod {
        name: String,
        app: String,
        image: String,
        ready: bool,
        terminating: bool,
        deleted: bool,
    },
    ConfigMap {
        include_b64: Option<String>,
        max_bytes: Option<String>,
    },
    Deployment {
        name: String,
        image: String,
        restart_annotation: Option<String>,
        /// kubectl's rollout-status test holds for this version.
        rolled: bool,
    },
    Rollout {
        phase: Option<Phase>,
        legacy_payloads: Option<i64>,
    },
}

#[derive(Debug, Clone)]
pub struct Entry {
    /// etcd revision of this version (deletions: of the delete).
    pub rv: u64,
    /// When the test saw it.
    pub seen: Timestamp,
    pub rec: Rec,
}

/// Everything the namespace's watches delivered, in arrival order.
pub struct History {
    entries: Arc<Mutex<Vec<Entry>>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Drop for History {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

fn spawn_watch<K, F>(
    api: Api<K>,
    entries: Arc<Mutex<Vec<Entry>>>,
    to_rec: F,
) -> tokio::task::JoinHandle<()>
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug + Send + 'static,
    K::DynamicType: Default,
    F: Fn(&K, bool) -> Rec + Send + 'static,
{
    tokio::spawn(async move {
        let mut stream = watcher(api, watcher::Config::default()).boxed();
        while let Some(ev) = stream.next().await {
            let (obj, deleted) = match ev {
                Ok(watcher::Event::Apply(o)) | Ok(watcher::Event::InitApply(o)) => (o, false),
                Ok(watcher::Event::Delete(o)) => (o, true),
                _ => continue,
            };
            let rv = obj
                .meta()
                .resource_version
                .as_deref()
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            entries.lock().unwrap().push(Entry {
                rv,
                seen: Timestamp::now(),
                rec: to_rec(&obj, deleted),
            });
        }
    })
}

impl History {
    /// Start watching pods, the ConfigMap, Deployments and rollouts of the namespace; returns once
    /// the initial lists arrived.
    pub async fn start(ns: &TestNamespace) -> History {
        let entries = Arc::new(Mutex::new(vec![]));
        let tasks = vec![
            spawn_watch(ns.api::<Pod>(), entries.clone(), |p: &Pod, deleted| {
                Rec::Pod {
                    name: p.name_any(),
                    app: p.labels().get("app").cloned().unwrap_or_default(),
                    image: p.spec.as_ref().unwrap().containers[0]
                        .image
                        .clone()
                        .unwrap_or_default(),
                    ready: p
                        .status
                        .as_ref()
                        .and_then(|s| s.conditions.as_ref())
                        .is_some_and(|cs| {
                            cs.iter().any(|c| c.type_ == "Ready" && c.status == "True")
                        }),
                    terminating: p.metadata.deletion_timestamp.is_some(),
                    deleted,
                }
            }),
            spawn_watch(
                ns.api::<ConfigMap>(),
                entries.clone(),
                |c: &ConfigMap, _| {
                    let get = |k: &str| c.data.as_ref().and_then(|d| d.get(k)).cloned();
                    Rec::ConfigMap {
                        include_b64: get(INCLUDE),
                        max_bytes: get(MAX_BYTES),
                    }
                },
            ),
            spawn_watch(
                ns.api::<Deployment>(),
                entries.clone(),
                |d: &Deployment, _| Rec::Deployment {
                    name: d.name_any(),
                    image: template_image(d),
                    restart_annotation: template_annotation(
                        d,
                        dedup2d::operator::crd::PAYLOAD_CONFIG_ANNOTATION,
                    ),
                    rolled: rolled_out(d),
                },
            ),
            spawn_watch(
                ns.api::<Dedup2DRollout>(),
                entries.clone(),
                |r: &Dedup2DRollout, _| Rec::Rollout {
                    phase: r.status.as_ref().and_then(|s| s.phase),
                    legacy_payloads: r.status.as_ref().and_then(|s| s.legacy_payloads),
                },
            ),
        ];
        tokio::time::sleep(Duration::from_secs(1)).await;
        History { entries, tasks }
    }

    /// Entries sorted by etcd revision (ties keep arrival order).
    pub fn by_revision(&self) -> Vec<Entry> {
        let mut v = self.entries.lock().unwrap().clone();
        v.sort_by_key(|e| e.rv);
        v.dedup_by(|a, b| a.rv == b.rv && format!("{:?}", a.rec) == format!("{:?}", b.rec));
        v
    }

    /// Entries in arrival order.
    pub fn arrived(&self) -> Vec<Entry> {
        self.entries.lock().unwrap().clone()
    }
}

/// Replays the history in revision order and checks invariant 1 (docs/design.md §5) at every
/// ConfigMap version that turns dual-write off: no pod of a worker Deployment (terminating ones
/// included) on another image than `target` exists at that revision. Returns the revisions of those
/// ConfigMap versions.
pub fn check_dual_write_off_after_workers(
    entries: &[Entry],
    workers: &[&str],
    target: &str,
) -> Vec<u64> {
    let mut live: BTreeMap<String, (String, String)> = BTreeMap::new(); // pod -> (app, image)
    let mut include: Option<String> = None;
    let mut offs = vec![];
    for e in entries {
        match &e.rec {
            Rec::Pod {
                name,
                app,
                image,
                deleted,
                ..
            } => {
                if *deleted {
                    live.remove(name);
                } else {
                    live.insert(name.clone(), (app.clone(), image.clone()));
                }
            }
            Rec::ConfigMap { include_b64, .. } => {
                if include.as_deref() == Some("1") && include_b64.as_deref() == Some("0") {
                    let old: Vec<&String> = live
                        .iter()
                        .filter(|(_, (app, image))| {
                            workers.contains(&app.as_str()) && image != target
                        })
                        .map(|(n, _)| n)
                        .collect();
                    assert!(
                        old.is_empty(),
                        "invariant 1 broken: dual-write turned off at revision {} while old worker pods existed: {old:?}",
                        e.rv
                    );
                    offs.push(e.rv);
                }
                include = include_b64.clone();
            }
            _ => {}
        }
    }
    offs
}

/// The pods of the namespace that exist at revision `rv` (terminating ones included), replayed from
/// the history in revision order: pod name -> `(app, image)`.
pub fn pods_at(entries: &[Entry], rv: u64) -> BTreeMap<String, (String, String)> {
    let mut live = BTreeMap::new();
    for e in entries.iter().take_while(|e| e.rv <= rv) {
        if let Rec::Pod {
            name,
            app,
            image,
            deleted,
            ..
        } = &e.rec
        {
            if *deleted {
                live.remove(name);
            } else {
                live.insert(name.clone(), (app.clone(), image.clone()));
            }
        }
    }
    live
}

/// The first version of Deployment `name` whose template is back on `old` after it had been on
/// `new` (a reverted image), from the history in revision order.
pub fn reverted(entries: &[Entry], name: &str, old: &str, new: &str) -> Option<Entry> {
    let first_new = entries
        .iter()
        .find(|e| matches!(&e.rec, Rec::Deployment { name: n, image, .. } if n == name && image == new))?
        .rv;
    entries
        .iter()
        .find(|e| {
            e.rv > first_new
                && matches!(&e.rec, Rec::Deployment { name: n, image, .. } if n == name && image == old)
        })
        .cloned()
}

/// The ConfigMap's `DEDUP2D_JOB_PAYLOAD_INCLUDE_BYTES_B64` values in the history, repeats collapsed.
pub fn includes(entries: &[Entry]) -> Vec<String> {
    sequence(entries, |r| match r {
        Rec::ConfigMap { include_b64, .. } => include_b64.clone(),
        _ => None,
    })
}

/// A full rollback's order in the store's history: dual-write went 0 -> 1 -> 0 -> 1, and neither
/// the worker-a nor the API image was reverted before dual-write was back on, nor before the test
/// finished the file_ref-only jobs at `jobs_finished`.
pub fn check_full_rollback_order(history: &History, jobs_finished: Timestamp) {
    let h = history.by_revision();
    assert_eq!(includes(&h), ["0", "1", "0", "1"]);
    let on_again = h
        .iter()
        .rfind(|e| matches!(&e.rec, Rec::ConfigMap { include_b64: Some(v), .. } if v == "1"))
        .unwrap()
        .rv;
    let arrived = history.arrived();
    for (name, old, new) in [
        ("worker-a", OLD_IMAGE, NEW_IMAGE),
        ("api", API_OLD, API_NEW),
    ] {
        let e = reverted(&h, name, old, new).expect("the image was reverted");
        assert!(
            on_again < e.rv,
            "{name}: dual-write on ({on_again}) before the revert ({})",
            e.rv
        );
        let seen = arrived.iter().find(|a| a.rv == e.rv).unwrap().seen;
        assert!(
            seen >= jobs_finished,
            "{name} reverted before the jobs finished"
        );
    }
}

/// The sequence of distinct values `f` picks out of the history (consecutive repeats collapsed).
pub fn sequence<T: PartialEq + Clone>(entries: &[Entry], f: impl Fn(&Rec) -> Option<T>) -> Vec<T> {
    let mut out: Vec<T> = vec![];
    for e in entries {
        if let Some(v) = f(&e.rec) {
            if out.last() != Some(&v) {
                out.push(v);
            }
        }
    }
    out
}

/// The operator's Events on the rollout as `(eventTime, reason, action, note)`, oldest first.
pub async fn operator_events(ns: &TestNamespace) -> Vec<(Timestamp, String, String, String)> {
    let api: Api<k8s_openapi::api::events::v1::Event> = ns.api();
    let mut out: Vec<_> = api
        .list(&Default::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter(|e| e.reporting_controller.as_deref() == Some("dedup2d-operator"))
        .map(|e| {
            (
                e.event_time.map(|t| t.0).unwrap_or(Timestamp::UNIX_EPOCH),
                e.reason.unwrap_or_default(),
                e.action.unwrap_or_default(),
                e.note.unwrap_or_default(),
            )
        })
        .collect();
    out.sort_by_key(|e| e.0);
    out
}

/// Phase transitions from the Events: `(time, to-phase)`. The Event's action is the target phase.
pub async fn transitions(ns: &TestNamespace) -> Vec<(Timestamp, String)> {
    operator_events(ns)
        .await
        .into_iter()
        .filter(|e| e.3.contains(" -> "))
        .map(|e| (e.0, e.2))
        .collect()
}

/// The transition Events of an undisturbed rollout, in order (`to` phases).
pub const FORWARD_TRANSITIONS: [&str; 7] = [
    "DualWriteOn",
    "UpgradingWorkers",
    "UpgradingApi",
    "Soaking",
    "DualWriteOff",
    "Draining",
    "Completed",
];

/// [`transitions`] once the last one goes to `last` (Events are published just after the status
/// write that a test may have seen first).
pub async fn transitions_until(ns: &TestNamespace, last: &str) -> Vec<(Timestamp, String)> {
    eventually(
        &format!("the transition Event to {last}"),
        Duration::from_secs(15),
        || async {
            let t = transitions(ns).await;
            (t.last().map(|x| x.1.as_str()) == Some(last)).then_some(t)
        },
    )
    .await
}

/// Seconds between two timestamps.
pub fn secs(from: Timestamp, to: Timestamp) -> f64 {
    (to.as_millisecond() - from.as_millisecond()) as f64 / 1000.0
}
