//! The operator benchmark (`bench/operator.sh`, an `#[ignore]`d test it runs against its own
//! control plane with an audit log): each operator binary under comparison runs as its own
//! ServiceAccount, one after another on the same objects, and is measured from outside: its API
//! requests from the API server's audit log, its CPU and memory from `/proc`, its Redis commands
//! from `INFO commandstats` of the one private `redis-server` every fleet points at, its phases
//! from a watch. Scenarios, in order: one rollout through the whole forward path (requests and
//! status writes per rollout, the drain's end to `Completed`), 50 and 150 rollouts progressing at
//! once (a Deployment settling to the next phase), 10/100/1,000 idle `Completed` rollouts (two
//! windows: right after the start-up burst, and the settled state after it), and a leader restart at
//! the largest size with two replicas. Writes `bench/results/$DEDUP2D_BENCH_NAME.json` (default
//! `operator`).

use std::{
    collections::{BTreeMap, HashMap},
    io::{BufRead, Seek},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use futures::{stream, StreamExt};
use k8s_openapi::api::{
    apps::v1::Deployment,
    coordination::v1::Lease,
    core::v1::{ConfigMap, ServiceAccount},
    rbac::v1::RoleBinding,
};
use kube::{
    api::{ListParams, Patch, PatchParams, PostParams},
    runtime::{watcher, WatchStreamExt},
    Api,
};
use serde_json::{json, Value};

use dedup2d::operator::crd::{Dedup2DRollout, Phase};

use crate::support::{
    bench::{command_total, named_result_path, reset_command_stats},
    fleet::{
        apply_rollout, deployment, fleet, rolled_out, service_account_token_kubeconfig,
        upgrade_spec, wait_originals_released, write_payloads, API_NEW, API_OLD, INCLUDE,
        MAX_BYTES, NEW_IMAGE, OLD_IMAGE,
    },
    kube::TestNamespace,
    operator::install_crd,
    process::free_port,
    redis::RedisServer,
};

/// How long any one scenario may take before the benchmark gives up on it (and says so).
const SCENARIO_CAP: Duration = Duration::from_secs(900);

/// What `bench/operator.sh` passes in the environment.
struct Settings {
    /// `(label, binary)`, measured in this order.
    operators: Vec<(String, PathBuf)>,
    idle_sizes: Vec<usize>,
    progressing_sizes: Vec<usize>,
    idle_window: Duration,
    restart_window: Duration,
    audit_log: PathBuf,
    apiserver_pid: u32,
}

fn env_list(name: &str, default: &str) -> Vec<usize> {
    std::env::var(name)
        .unwrap_or_else(|_| default.into())
        .split(',')
        .filter(|s| !s.trim().is_empty())
        .map(|s| {
            s.trim()
                .parse()
                .unwrap_or_else(|e| panic!("{name}: {s:?}: {e}"))
        })
        .collect()
}

fn env_secs(name: &str, default: u64) -> Duration {
    Duration::from_secs(
        std::env::var(name)
            .ok()
            .map(|s| s.parse().unwrap_or_else(|e| panic!("{name}: {e}")))
            .unwrap_or(default),
    )
}

impl Settings {
    fn from_env() -> Self {
        let hint = "run it through bench/operator.sh (it builds the operators and starts the bench cluster)";
        let operators = std::env::var("DEDUP2D_BENCH_OPERATORS")
            .unwrap_or_else(|_| {
                panic!("DEDUP2D_BENCH_OPERATORS=label=binary,... is not set: {hint}")
            })
            .split(',')
            .map(|pair| {
                let (label, bin) = pair.split_once('=').expect("label=binary");
                let bin = PathBuf::from(bin);
                assert!(
                    bin.is_file(),
                    "operator binary {} missing: {hint}",
                    bin.display()
                );
                (label.to_string(), bin)
            })
            .collect();
        let dir = PathBuf::from(
            std::env::var("DEDUP2D_CLUSTER_DIR")
                .unwrap_or_else(|_| panic!("DEDUP2D_CLUSTER_DIR is not set: {hint}")),
        );
        let audit_log = dir.join("logs/audit.log");
        assert!(
            audit_log.is_file(),
            "{} missing: the cluster was not started with DEDUP2D_AUDIT_POLICY: {hint}",
            audit_log.display()
        );
        let pid =
            std::fs::read_to_string(dir.join("pids/kube-apiserver.pid")).expect("apiserver pid");
        Settings {
            operators,
            idle_sizes: env_list("DEDUP2D_BENCH_SIZES", "10,100,1000"),
            progressing_sizes: env_list("DEDUP2D_BENCH_PROGRESSING", "50,150"),
            idle_window: env_secs("DEDUP2D_BENCH_IDLE_SECS", 120),
            restart_window: env_secs("DEDUP2D_BENCH_RESTART_SECS", 60),
            audit_log,
            apiserver_pid: pid.trim().parse().expect("apiserver pid"),
        }
    }
}

// ---- measuring from outside -------------------------------------------------------------------

/// CPU seconds (user + system) and resident memory of a process, from `/proc`.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // The fields after the command name (which may hold spaces), from field 3 on.
    let after = stat.rsplit_once(')').map(|x| x.1).unwrap_or("");
    let f: Vec<u64> = after
        .split_whitespace()
        .map(|x| x.parse().unwrap_or(0))
        .collect();
    let ticks = f.get(11).copied().unwrap_or(0) + f.get(12).copied().unwrap_or(0);
    ticks as f64 / clock_ticks()
}

fn clock_ticks() -> f64 {
    static TICKS: std::sync::OnceLock<f64> = std::sync::OnceLock::new();
    *TICKS.get_or_init(|| {
        let out = Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .expect("getconf");
        String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse()
            .unwrap_or(100.0)
    })
}

/// `VmRSS` and `VmHWM` in MiB.
fn memory_mib(pid: u32) -> (f64, f64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let kib = |key: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    (kib("VmRSS:") / 1024.0, kib("VmHWM:") / 1024.0)
}

/// The requests one user made, counted from the audit log between two offsets.
#[derive(Default)]
struct Requests {
    total: u64,
    /// Writes other than the Lease's.
    writes: u64,
    lease_writes: u64,
    status_writes: u64,
    by_kind: BTreeMap<String, u64>,
}

impl Requests {
    fn json(&self, minutes: f64) -> Value {
        json!({
            "total": self.total, "per_minute": round(self.total as f64 / minutes),
            "writes_except_lease": self.writes, "lease_writes": self.lease_writes,
            "status_writes": self.status_writes, "by_verb_resource": self.by_kind,
        })
    }
}

fn is_write(verb: &str) -> bool {
    matches!(
        verb,
        "create" | "update" | "patch" | "delete" | "deletecollection"
    )
}

/// The audit log (Metadata level): one JSON event per line. A request is counted once: a watch at
/// `ResponseStarted`, anything else at `ResponseComplete`.
struct AuditLog(PathBuf);

impl AuditLog {
    fn offset(&self) -> u64 {
        std::fs::metadata(&self.0).map(|m| m.len()).unwrap_or(0)
    }

    fn requests(&self, from: u64, to: u64, user: &str) -> Requests {
        let mut file = std::fs::File::open(&self.0).expect("open the audit log");
        file.seek(std::io::SeekFrom::Start(from)).unwrap();
        let mut reader = std::io::BufReader::new(file);
        let (mut out, mut pos, mut line) = (Requests::default(), from, String::new());
        while pos < to {
            line.clear();
            let n = reader.read_line(&mut line).unwrap_or(0);
            if n == 0 {
                break;
            }
            pos += n as u64;
            let Ok(ev) = serde_json::from_str::<Value>(&line) else {
                continue;
            };
            if ev["user"]["username"] != user {
                continue;
            }
            let (verb, stage) = (
                ev["verb"].as_str().unwrap_or(""),
                ev["stage"].as_str().unwrap_or(""),
            );
            let counted = if verb == "watch" {
                stage == "ResponseStarted"
            } else {
                stage == "ResponseComplete"
            };
            if !counted {
                continue;
            }
            let obj = &ev["objectRef"];
            let resource = match obj["subresource"].as_str() {
                Some(sub) => format!("{}/{sub}", obj["resource"].as_str().unwrap_or("")),
                None => obj["resource"].as_str().unwrap_or("").to_string(),
            };
            out.total += 1;
            *out.by_kind.entry(format!("{verb} {resource}")).or_default() += 1;
            if is_write(verb) {
                match resource.as_str() {
                    "leases" => out.lease_writes += 1,
                    "dedup2drollouts/status" => {
                        out.status_writes += 1;
                        out.writes += 1
                    }
                    _ => out.writes += 1,
                }
            }
        }
        out
    }
}

fn round(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

/// One counter of the window, all of its figures taken at the same two moments.
struct Window {
    started: Instant,
    audit_from: u64,
    op_cpu: f64,
    apiserver_cpu: f64,
}

struct Bench {
    settings: Settings,
    audit: AuditLog,
    redis: RedisServer,
    conn: redis::aio::ConnectionManager,
    /// The namespace the operators' ServiceAccounts live in, and each one's token kubeconfig.
    _home: TestNamespace,
    kubeconfigs: HashMap<String, PathBuf>,
    _dir: tempfile::TempDir,
}

impl Bench {
    fn user(&self, label: &str) -> String {
        format!("system:serviceaccount:{}:opbench-{label}", self._home.name)
    }

    fn open(&self, op_pid: u32) -> Window {
        // Let the audit log's buffered events of what came before land first.
        std::thread::sleep(Duration::from_millis(500));
        Window {
            started: Instant::now(),
            audit_from: self.audit.offset(),
            op_cpu: cpu_seconds(op_pid),
            apiserver_cpu: cpu_seconds(self.settings.apiserver_pid),
        }
    }

    /// The window's figures for the operator `label` (process `op_pid`).
    async fn close(&mut self, w: Window, label: &str, op_pid: u32, rollouts: usize) -> Value {
        let secs = w.started.elapsed().as_secs_f64();
        let op_cpu = cpu_seconds(op_pid) - w.op_cpu;
        let api_cpu = cpu_seconds(self.settings.apiserver_pid) - w.apiserver_cpu;
        let (rss, hwm) = memory_mib(op_pid);
        let redis = command_total(&mut self.conn).await;
        tokio::time::sleep(Duration::from_secs(1)).await;
        let req = self
            .audit
            .requests(w.audit_from, self.audit.offset(), &self.user(label));
        let minutes = secs / 60.0;
        let per = rollouts.max(1) as f64;
        json!({
            "seconds": round(secs),
            "operator_cpu_seconds": round(op_cpu),
            "operator_cpu_seconds_per_5min": round(op_cpu / secs * 300.0),
            "operator_cpu_ms_per_rollout_per_minute": round(op_cpu * 1000.0 / minutes / per),
            "operator_rss_mib": round(rss), "operator_peak_rss_mib": round(hwm),
            "apiserver_cpu_cores": round(api_cpu / secs),
            "requests": req.json(minutes),
            "requests_per_rollout_per_minute": round(req.total as f64 / minutes / per),
            "redis_commands": redis, "redis_commands_per_minute": round(redis as f64 / minutes),
        })
    }
}

// ---- the operator process -----------------------------------------------------------------------

/// An operator binary under measurement, as its own ServiceAccount, on its own Lease.
struct BenchOperator {
    child: Child,
    port: u16,
    log: PathBuf,
}

impl BenchOperator {
    fn start(bench: &Bench, label: &str, bin: &Path, ns: &str, log_name: &str) -> Self {
        let port = free_port();
        let log = bench._dir.path().join(format!("{log_name}.log"));
        let file = std::fs::File::create(&log).unwrap();
        let addr = format!("127.0.0.1:{port}");
        let lease = format!("opbench-{label}");
        let child = Command::new(bin)
            .args([
                "operator",
                "--namespace",
                ns,
                "--metrics-addr",
                &addr,
                "--lease-name",
                &lease,
            ])
            .env("KUBECONFIG", &bench.kubeconfigs[label])
            .env("DEDUP2D_LOG_FORMAT", "text")
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .stdout(Stdio::null())
            .stderr(file)
            .spawn()
            .unwrap_or_else(|e| panic!("start {}: {e}", bin.display()));
        BenchOperator { child, port, log }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    async fn metrics(&self) -> String {
        let url = format!("http://127.0.0.1:{}/metrics", self.port);
        match reqwest::get(url).await {
            Ok(r) => r.text().await.unwrap_or_default(),
            Err(_) => String::new(),
        }
    }

    /// Reconciles so far (`dedup2d_reconcile_duration_seconds_count`).
    async fn reconciles(&self) -> u64 {
        self.metrics()
            .await
            .lines()
            .find_map(|l| {
                l.strip_prefix("dedup2d_reconcile_duration_seconds_count ")?
                    .parse::<f64>()
                    .ok()
            })
            .unwrap_or(0.0) as u64
    }

    /// Leads (`dedup2d_operator_leader 1`).
    async fn leads(&self) -> bool {
        self.metrics()
            .await
            .lines()
            .any(|l| l.trim() == "dedup2d_operator_leader 1")
    }

    /// How often this replica stepped down after having led (its log).
    fn leadership_losses(&self) -> usize {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        text.lines()
            .filter(|l| l.contains("leadership changed") && l.contains("leading=false"))
            .count()
    }

    /// [`settle`] over this replica alone: the seconds it took and the reconciles so far.
    async fn settle(&self, rollouts: usize, cap: Duration) -> (f64, u64) {
        let (secs, _) = settle(&[self], rollouts, cap).await;
        (secs, self.reconciles().await)
    }

    /// Has it led through the start-up burst (it leads and reconciled every rollout once)?
    async fn through_startup(&self, rollouts: usize) -> bool {
        self.leads().await && self.reconciles().await >= rollouts as u64
    }

    /// SIGTERM (it releases its Lease), SIGKILL after 10 s.
    fn stop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let t0 = Instant::now();
        while t0.elapsed() < Duration::from_secs(10) {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        self.kill();
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for BenchOperator {
    fn drop(&mut self) {
        self.kill();
    }
}

// ---- fleets -------------------------------------------------------------------------------------

/// Lets the operators' ServiceAccounts act in `ns` (a RoleBinding to `cluster-admin`, namespaced).
async fn grant(bench: &Bench, ns: &TestNamespace) {
    let subjects: Vec<Value> = bench
        .settings
        .operators
        .iter()
        .map(|(l, _)| json!({"kind": "ServiceAccount", "name": format!("opbench-{l}"), "namespace": bench._home.name}))
        .collect();
    let rb: RoleBinding = serde_json::from_value(json!({
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
        "metadata": {"name": "opbench"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "cluster-admin"},
        "subjects": subjects,
    }))
    .unwrap();
    ns.api::<RoleBinding>()
        .create(&PostParams::default(), &rb)
        .await
        .unwrap();
}

/// Fleet `id`: the ConfigMap `<id>-cm`, a worker Deployment `<id>-w` on the old image and the API
/// Deployment `<id>-api` (1 replica each) reading it.
fn fleet_objects(id: &str, redis_url: &str) -> (Value, Value, Value) {
    let cm = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": format!("{id}-cm")}, "data": {
        "DEDUP2D_REDIS_URL": redis_url, "DEDUP2D_REDIS_KEY_PREFIX": "dedup2d", INCLUDE: "1", MAX_BYTES: "10485760",
    }});
    let reading = |mut d: Value| {
        d["spec"]["template"]["spec"]["containers"][0]["envFrom"][0]["configMapRef"]["name"] =
            json!(format!("{id}-cm"));
        d
    };
    let w = reading(deployment(&format!("{id}-w"), "worker", OLD_IMAGE, 1));
    let api = reading(deployment(&format!("{id}-api"), "api", API_OLD, 1));
    (cm, w, api)
}

/// The rollout of fleet `id`: the whole upgrade (workers, API image, dual-write with no soak, the
/// Observe drain).
fn fleet_spec(id: &str) -> Value {
    let mut spec = upgrade_spec(&[&format!("{id}-w")], "0");
    spec["api"]["deployment"] = json!(format!("{id}-api"));
    spec["api"]["configMap"] = json!(format!("{id}-cm"));
    spec
}

async fn apply_all<K>(api: &Api<K>, objects: Vec<Value>)
where
    K: kube::Resource<DynamicType = ()>
        + Clone
        + serde::de::DeserializeOwned
        + serde::Serialize
        + std::fmt::Debug,
{
    let ssa = PatchParams::apply("e2e-fleet").force();
    stream::iter(objects)
        .for_each_concurrent(8, |o| {
            let (api, ssa) = (api.clone(), ssa.clone());
            async move {
                let name = o["metadata"]["name"].as_str().unwrap().to_string();
                api.patch(&name, &ssa, &Patch::Apply(&o))
                    .await
                    .unwrap_or_else(|e| panic!("apply {name}: {e}"));
            }
        })
        .await;
}

/// Creates fleets `ids` and waits until every Deployment of the namespace rolled out.
async fn create_fleets(ns: &TestNamespace, ids: &[String], redis_url: &str) {
    let (mut cms, mut deploys) = (vec![], vec![]);
    for id in ids {
        let (cm, w, api) = fleet_objects(id, redis_url);
        cms.push(cm);
        deploys.extend([w, api]);
    }
    apply_all(&ns.api::<ConfigMap>(), cms).await;
    apply_all(&ns.api::<Deployment>(), deploys).await;
    wait_all_rolled_out(ns).await;
}

async fn wait_all_rolled_out(ns: &TestNamespace) {
    let t0 = Instant::now();
    loop {
        let list = ns
            .api::<Deployment>()
            .list(&ListParams::default())
            .await
            .unwrap();
        let pending = list.items.iter().filter(|d| !rolled_out(d)).count();
        if pending == 0 {
            return;
        }
        assert!(
            t0.elapsed() < SCENARIO_CAP,
            "{pending} Deployments did not roll out"
        );
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
}

async fn apply_rollouts(ns: &TestNamespace, ids: &[String]) {
    stream::iter(ids)
        .for_each_concurrent(8, |id| async move {
            apply_rollout(ns, id, fleet_spec(id)).await
        })
        .await;
}

// ---- watching phases and settles ----------------------------------------------------------------

/// What a watch saw: every phase change of every rollout and every Deployment settling (rolled
/// out again after a change of its spec), with the moment the bench saw it.
#[derive(Default)]
struct Timeline {
    phases: Vec<(Instant, String, Phase)>,
    settles: Vec<(Instant, String)>,
}

/// Watches the rollouts and Deployments of `ns` until dropped.
struct Watch {
    timeline: Arc<Mutex<Timeline>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Watch {
    fn start(ns: &TestNamespace) -> Self {
        let timeline = Arc::new(Mutex::new(Timeline::default()));
        let rollouts = {
            let (t, api) = (timeline.clone(), ns.api::<Dedup2DRollout>());
            tokio::spawn(async move {
                let mut last: HashMap<String, Phase> = HashMap::new();
                let mut s = watcher(api, watcher::Config::default())
                    .applied_objects()
                    .boxed();
                while let Some(Ok(r)) = s.next().await {
                    let Some(p) = r.status.as_ref().and_then(|s| s.phase) else {
                        continue;
                    };
                    let name = r.metadata.name.clone().unwrap_or_default();
                    if last.insert(name.clone(), p) != Some(p) {
                        t.lock().unwrap().phases.push((Instant::now(), name, p));
                    }
                }
            })
        };
        let deploys = {
            let (t, api) = (timeline.clone(), ns.api::<Deployment>());
            tokio::spawn(async move {
                let mut settled: HashMap<String, bool> = HashMap::new();
                let mut s = watcher(api, watcher::Config::default())
                    .applied_objects()
                    .boxed();
                while let Some(Ok(d)) = s.next().await {
                    let name = d.metadata.name.clone().unwrap_or_default();
                    let now = rolled_out(&d);
                    if settled.insert(name.clone(), now) == Some(false) && now {
                        t.lock().unwrap().settles.push((Instant::now(), name));
                    }
                }
            })
        };
        Watch {
            timeline,
            tasks: vec![rollouts, deploys],
        }
    }

    fn phase_of(&self, rollout: &str) -> Option<Phase> {
        let t = self.timeline.lock().unwrap();
        t.phases
            .iter()
            .rev()
            .find(|(_, n, _)| n == rollout)
            .map(|x| x.2)
    }

    /// Waits until every rollout of `ids` is `Completed`, at most `cap`; how many are.
    async fn until_completed(&self, ids: &[String], cap: Duration) -> usize {
        let t0 = Instant::now();
        loop {
            let done = ids
                .iter()
                .filter(|id| self.phase_of(id) == Some(Phase::Completed))
                .count();
            if done == ids.len() || t0.elapsed() > cap {
                return done;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// For each Deployment settling while its rollout was not finished: the phase it was in and
    /// the seconds to that rollout's next phase change. A Deployment `<id>-...` belongs to the
    /// rollout `<id>`.
    fn settle_to_phase(&self) -> Vec<(Phase, f64)> {
        let t = self.timeline.lock().unwrap();
        let mut out = vec![];
        for (at, deploy) in &t.settles {
            let id = deploy.split('-').next().unwrap_or("");
            let before = t.phases.iter().rfind(|(p, n, _)| n == id && p <= at);
            let Some(phase) = before.map(|x| x.2).filter(|p| *p != Phase::Completed) else {
                continue;
            };
            if let Some((p, _, _)) = t.phases.iter().find(|(p, n, _)| n == id && p > at) {
                out.push((phase, p.duration_since(*at).as_secs_f64()));
            }
        }
        out
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// Median and p99 (nearest rank) in seconds.
fn percentiles(mut xs: Vec<f64>) -> Value {
    if xs.is_empty() {
        return json!({"samples": 0});
    }
    xs.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let rank = |q: f64| xs[((q * xs.len() as f64).ceil() as usize).clamp(1, xs.len()) - 1];
    json!({"samples": xs.len(), "median_s": round(rank(0.5)), "p99_s": round(rank(0.99)), "max_s": round(xs[xs.len() - 1])})
}

fn ids(prefix: &str, range: std::ops::Range<usize>) -> Vec<String> {
    range.map(|i| format!("{prefix}{i:04}")).collect()
}

// ---- scenarios ----------------------------------------------------------------------------------

/// One rollout through the whole forward path, with legacy payloads that the bench deletes a few
/// seconds into `Draining`: requests, status writes and reconciles per rollout, and the drain's
/// end to `Completed`.
async fn forward(bench: &mut Bench, label: &str, bin: &Path) -> Value {
    let ns = TestNamespace::new("obfwd").await;
    grant(bench, &ns).await;
    let url = bench.redis.url();
    fleet(&ns, &url, "1", &[("w", 1)]).await;
    let legacy: Vec<String> = (0..20).map(|i| format!("fwd-{label}-{i}")).collect();
    let legacy_refs: Vec<&str> = legacy.iter().map(String::as_str).collect();
    write_payloads(&mut bench.conn, &legacy_refs, &[], 3600).await;
    let op = BenchOperator::start(bench, label, bin, &ns.name, &format!("forward-{label}"));
    op.settle(0, Duration::from_secs(60)).await;
    let watch = Watch::start(&ns);
    reset_command_stats(&mut bench.conn).await;
    let reconciles_before = op.reconciles().await;
    let w = bench.open(op.pid());
    apply_rollout(&ns, "fwd", upgrade_spec(&["w"], "0")).await;
    let t0 = Instant::now();
    while watch.phase_of("fwd") != Some(Phase::Draining) {
        assert!(
            t0.elapsed() < SCENARIO_CAP,
            "{label}: the rollout never reached Draining"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    let _: () = redis::cmd("DEL")
        .arg(
            legacy
                .iter()
                .map(|id| format!("dedup2d:payload:{id}"))
                .collect::<Vec<_>>(),
        )
        .query_async(&mut bench.conn)
        .await
        .unwrap();
    let gone = Instant::now();
    let done = watch.until_completed(&["fwd".into()], SCENARIO_CAP).await;
    let drain_to_completed = gone.elapsed().as_secs_f64();
    let mut out = bench.close(w, label, op.pid(), 1).await;
    out["completed"] = json!(done == 1);
    out["reconciles"] = json!(op.reconciles().await - reconciles_before);
    out["phase_changes"] = json!(watch.timeline.lock().unwrap().phases.len());
    out["last_legacy_payload_gone_to_completed_s"] = json!(round(drain_to_completed));
    out
}

/// `n` rollouts applied at once to `n` fresh fleets: a Deployment settling to the next phase
/// change, the API server's CPU, the operator's requests.
async fn progressing(bench: &mut Bench, label: &str, bin: &Path, n: usize) -> Value {
    let ns = TestNamespace::new("obprog").await;
    grant(bench, &ns).await;
    let ids = ids("p", 0..n);
    create_fleets(&ns, &ids, &bench.redis.url()).await;
    let op = BenchOperator::start(
        bench,
        label,
        bin,
        &ns.name,
        &format!("progressing{n}-{label}"),
    );
    op.settle(0, Duration::from_secs(60)).await;
    let watch = Watch::start(&ns);
    tokio::time::sleep(Duration::from_secs(2)).await;
    reset_command_stats(&mut bench.conn).await;
    let w = bench.open(op.pid());
    apply_rollouts(&ns, &ids).await;
    let done = watch.until_completed(&ids, SCENARIO_CAP).await;
    let mut out = bench.close(w, label, op.pid(), n).await;
    out["rollouts"] = json!(n);
    out["completed"] = json!(done);
    let samples = watch.settle_to_phase();
    out["settle_to_next_phase"] = percentiles(samples.iter().map(|x| x.1).collect());
    // Where the tail is: by the phase the rollout was in when its Deployment settled.
    let mut by_phase: BTreeMap<String, Vec<f64>> = BTreeMap::new();
    for (phase, secs) in samples {
        by_phase.entry(phase.to_string()).or_default().push(secs);
    }
    out["settle_to_next_phase_by_phase"] = by_phase
        .into_iter()
        .map(|(phase, xs)| (phase, percentiles(xs)))
        .collect::<serde_json::Map<_, _>>()
        .into();
    out
}

/// The idle namespace: fleet `i0000` rolled to `Completed` by a real operator, the others copies of
/// its final objects (names changed), so every operator sees the same finished rollouts.
struct IdleFleets {
    ns: TestNamespace,
    template: BTreeMap<&'static str, Value>,
    count: usize,
}

/// The object as a copy's template: its name-bearing text with `i0000` replaced by `{}`, without
/// what the API server sets.
fn as_template(mut v: Value) -> Value {
    let meta = v["metadata"].take();
    let keep_annotations: serde_json::Map<String, Value> = meta["annotations"]
        .as_object()
        .map(|a| {
            a.iter()
                .filter(|(k, _)| {
                    !k.starts_with("deployment.kubernetes.io/") && !k.starts_with("kubectl.")
                })
                .map(|(k, x)| (k.clone(), x.clone()))
                .collect()
        })
        .unwrap_or_default();
    v["metadata"] =
        json!({"name": meta["name"], "labels": meta["labels"], "annotations": keep_annotations});
    v
}

impl IdleFleets {
    async fn create(bench: &mut Bench, label: &str, bin: &Path) -> Self {
        let ns = TestNamespace::new("obidle").await;
        grant(bench, &ns).await;
        let first = ids("i", 0..1);
        create_fleets(&ns, &first, &bench.redis.url()).await;
        let op = BenchOperator::start(bench, label, bin, &ns.name, "idle-template");
        let watch = Watch::start(&ns);
        apply_rollouts(&ns, &first).await;
        assert_eq!(
            watch.until_completed(&first, SCENARIO_CAP).await,
            1,
            "the template rollout did not complete"
        );
        // Copies must not carry the template's originals annotation (a Completed rollout removes
        // it after persisting the phase), or every operator measured spends its first window
        // removing 1,000 of them.
        wait_originals_released(&ns, &first[0]).await;
        drop(op);
        let mut template = BTreeMap::new();
        let get = |v: serde_json::Result<Value>| as_template(v.unwrap());
        template.insert(
            "cm",
            get(serde_json::to_value(
                ns.api::<ConfigMap>().get("i0000-cm").await.unwrap(),
            )),
        );
        for (key, name) in [("w", "i0000-w"), ("api", "i0000-api")] {
            let mut d = get(serde_json::to_value(
                ns.api::<Deployment>().get(name).await.unwrap(),
            ));
            d.as_object_mut().unwrap().remove("status");
            template.insert(key, d);
        }
        let r =
            serde_json::to_value(ns.api::<Dedup2DRollout>().get("i0000").await.unwrap()).unwrap();
        template.insert("status", json!({"status": r["status"].clone()}));
        let mut r = as_template(r);
        r.as_object_mut().unwrap().remove("status");
        template.insert("rollout", r);
        IdleFleets {
            ns,
            template,
            count: 1,
        }
    }

    fn copy(&self, key: &str, id: &str) -> Value {
        serde_json::from_str(&self.template[key].to_string().replace("i0000", id)).unwrap()
    }

    /// Grows to `n` fleets (copies), every one `Completed`.
    async fn grow(&mut self, n: usize) {
        let new = ids("i", self.count..n.max(self.count));
        let per = |key: &str| new.iter().map(|id| self.copy(key, id)).collect::<Vec<_>>();
        apply_all(&self.ns.api::<ConfigMap>(), per("cm")).await;
        let deploys = [per("w"), per("api")].concat();
        apply_all(&self.ns.api::<Deployment>(), deploys).await;
        apply_all(&self.ns.api::<Dedup2DRollout>(), per("rollout")).await;
        let api = self.ns.api::<Dedup2DRollout>();
        stream::iter(&new)
            .for_each_concurrent(8, |id| {
                let (api, status) = (api.clone(), self.copy("status", id));
                async move {
                    api.patch_status(id, &PatchParams::default(), &Patch::Merge(&status))
                        .await
                        .unwrap_or_else(|e| panic!("status of {id}: {e}"));
                }
            })
            .await;
        wait_all_rolled_out(&self.ns).await;
        self.count = self.count.max(n);
    }
}

/// One operator over the idle namespace: the start-up burst, then a quiet window, then a second
/// one (`settled`).
async fn idle(bench: &mut Bench, fleets: &IdleFleets, label: &str, bin: &Path) -> Value {
    let n = fleets.count;
    let mut op = BenchOperator::start(
        bench,
        label,
        bin,
        &fleets.ns.name,
        &format!("idle{n}-{label}"),
    );
    let (startup_s, startup_reconciles) = op.settle(n, Duration::from_secs(300)).await;
    let mut out = idle_window(bench, &op, label, n).await;
    out["rollouts"] = json!(n);
    out["startup_s"] = json!(startup_s);
    out["startup_reconciles"] = json!(startup_reconciles);
    // A second window on the same process: the steady state, once any one-time work over fleets
    // this operator meets for the first time (finalizers, Events) that ran on into the first
    // window is over.
    out["settled"] = idle_window(bench, &op, label, n).await;
    let phases = fleets
        .ns
        .api::<Dedup2DRollout>()
        .list(&ListParams::default())
        .await
        .unwrap();
    out["still_completed"] = json!(phases
        .items
        .iter()
        .filter(|r| r.status.as_ref().and_then(|s| s.phase) == Some(Phase::Completed))
        .count());
    op.stop();
    out
}

/// One measured window of `DEDUP2D_BENCH_IDLE_SECS` over operator `op`, with its reconciles.
async fn idle_window(bench: &mut Bench, op: &BenchOperator, label: &str, n: usize) -> Value {
    reset_command_stats(&mut bench.conn).await;
    let r0 = op.reconciles().await;
    let w = bench.open(op.pid());
    tokio::time::sleep(bench.settings.idle_window).await;
    let mut out = bench.close(w, label, op.pid(), n).await;
    out["reconciles_in_window"] = json!(op.reconciles().await - r0);
    out
}

/// Waits until one of `replicas` leads and has reconciled every rollout at least once (the
/// start-up burst), then a few quiet seconds; at most `cap`. The seconds it took, and the index of
/// the replica leading then (if any does).
async fn settle(
    replicas: &[&BenchOperator],
    rollouts: usize,
    cap: Duration,
) -> (f64, Option<usize>) {
    let t0 = Instant::now();
    'wait: while t0.elapsed() < cap {
        for r in replicas {
            if r.through_startup(rollouts).await {
                break 'wait;
            }
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    tokio::time::sleep(Duration::from_secs(5)).await;
    let mut leading = None;
    for (i, r) in replicas.iter().enumerate() {
        if r.leads().await {
            leading = Some(i);
        }
    }
    (round(t0.elapsed().as_secs_f64()), leading)
}

/// Two replicas over the idle namespace; the leader is SIGKILLed once the start-up burst is over
/// and started again; the Lease holder and both survivors' logs over the following window.
async fn restart(bench: &mut Bench, fleets: &IdleFleets, label: &str, bin: &Path) -> Value {
    let ns = &fleets.ns.name;
    let a = BenchOperator::start(bench, label, bin, ns, &format!("restart-a-{label}"));
    let b = BenchOperator::start(bench, label, bin, ns, &format!("restart-b-{label}"));
    let (startup_s, leading) = settle(&[&a, &b], fleets.count, Duration::from_secs(300)).await;
    let (mut leader, standby) = if leading == Some(0) { (a, b) } else { (b, a) };
    let leases = fleets.ns.api::<Lease>();
    // `None` when the read failed; `Some(None)` while the Lease names no holder.
    let holder = || async {
        let lease = leases.get_opt(&format!("opbench-{label}")).await.ok()?;
        Some(lease.and_then(|l| l.spec?.holder_identity))
    };
    let killed_holder = holder().await.flatten();
    leader.kill();
    let killed = Instant::now();
    let again = BenchOperator::start(bench, label, bin, ns, &format!("restart-c-{label}"));
    // Every holder the Lease had, and when (seconds after the kill).
    let (mut holders, mut last) = (vec![json!([0.0, killed_holder])], killed_holder.clone());
    while killed.elapsed() < bench.settings.restart_window {
        if let Some(h) = holder().await.filter(|h| *h != last) {
            holders.push(json!([round(killed.elapsed().as_secs_f64()), h]));
            last = h;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let losses = standby.leadership_losses() + again.leadership_losses();
    json!({
        "rollouts": fleets.count, "replicas": 2, "first_startup_s": startup_s,
        "window_s": bench.settings.restart_window.as_secs(),
        "lease_holders": holders, "lease_holder_changes": holders.len() - 1,
        "leadership_losses": losses,
        "new_leader_reconciles": standby.reconciles().await + again.reconciles().await,
    })
}

/// `candidate / baseline` for every number both have (nested objects too).
fn ratios(base: &Value, cand: &Value) -> Value {
    match (base, cand) {
        (Value::Object(b), Value::Object(c)) => {
            let mut out = serde_json::Map::new();
            for (k, bv) in b {
                let Some(cv) = c.get(k) else { continue };
                let r = ratios(bv, cv);
                if !r.is_null() && r != json!({}) {
                    out.insert(k.clone(), r);
                }
            }
            Value::Object(out)
        }
        (Value::Number(b), Value::Number(c)) => {
            let (b, c) = (b.as_f64().unwrap_or(0.0), c.as_f64().unwrap_or(0.0));
            if b == 0.0 {
                Value::Null
            } else {
                json!(round(c / b))
            }
        }
        _ => Value::Null,
    }
}

/// Each operator's figures of one scenario, and the last one's ratio to the first.
fn side_by_side(results: Vec<(String, Value)>) -> Value {
    let mut out = serde_json::Map::new();
    if results.len() >= 2 {
        let r = ratios(&results[0].1, &results[results.len() - 1].1);
        out.insert(
            format!("ratio_{}_to_{}", results[results.len() - 1].0, results[0].0),
            r,
        );
    }
    for (label, v) in results {
        out.insert(label, v);
    }
    Value::Object(out)
}

async fn setup() -> Bench {
    let settings = Settings::from_env();
    let home = TestNamespace::new("opbench").await;
    install_crd(&home.client).await;
    let dir = tempfile::tempdir().unwrap();
    let mut kubeconfigs = HashMap::new();
    for (label, _) in &settings.operators {
        let sa: ServiceAccount =
            serde_json::from_value(json!({"metadata": {"name": format!("opbench-{label}")}}))
                .unwrap();
        home.api::<ServiceAccount>()
            .create(&PostParams::default(), &sa)
            .await
            .unwrap();
        let kc =
            service_account_token_kubeconfig(&home, &format!("opbench-{label}"), dir.path()).await;
        kubeconfigs.insert(label.clone(), kc);
    }
    let redis = RedisServer::start();
    let conn = redis.manager().await;
    Bench {
        audit: AuditLog(settings.audit_log.clone()),
        settings,
        redis,
        conn,
        _home: home,
        kubeconfigs,
        _dir: dir,
    }
}

/// The report so far, written after every scenario (a run cut short keeps what it measured).
struct Report {
    started: Instant,
    sections: serde_json::Map<String, Value>,
}

impl Report {
    fn progress(&self, what: &str) {
        eprintln!("[opbench {:>5}s] {what}", self.started.elapsed().as_secs());
    }

    fn add(&mut self, section: &str, value: Value, settings: &Settings) {
        self.sections.insert(section.into(), value);
        self.sections.insert(
            "run".into(),
            json!({
                "operators": std::env::var("DEDUP2D_BENCH_OPERATOR_NOTES").unwrap_or_default(),
                "idle_sizes": settings.idle_sizes, "progressing_sizes": settings.progressing_sizes,
                "idle_window_s": settings.idle_window.as_secs(),
                "restart_window_s": settings.restart_window.as_secs(),
                "seconds_so_far": self.started.elapsed().as_secs(),
                "new_image": NEW_IMAGE, "api_new_image": API_NEW,
            }),
        );
        let path = named_result_path("operator");
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        let text = serde_json::to_string_pretty(&Value::Object(self.sections.clone())).unwrap();
        std::fs::write(&path, text + "\n").unwrap();
        self.progress(&format!("wrote {section} to {}", path.display()));
    }
}

/// The scenarios cheapest first, so that a run cut short still has the forward path, the idle
/// sizes and the restart: the progressing ones (fresh fleets per operator) come last.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a benchmark: bench/operator.sh runs it"]
async fn operator_cost() {
    let mut report = Report {
        started: Instant::now(),
        sections: serde_json::Map::new(),
    };
    let mut bench = setup().await;
    let ops = bench.settings.operators.clone();

    let mut fwd = vec![];
    for (label, bin) in &ops {
        report.progress(&format!("forward path: {label}"));
        fwd.push((label.clone(), forward(&mut bench, label, bin).await));
    }
    report.add("forward", side_by_side(fwd), &bench.settings);

    let (first_label, first_bin) = ops[0].clone();
    let mut fleets = IdleFleets::create(&mut bench, &first_label, &first_bin).await;
    let mut idles = vec![];
    for n in bench.settings.idle_sizes.clone() {
        report.progress(&format!("{n} idle rollouts: creating"));
        fleets.grow(n).await;
        let mut at = vec![];
        for (label, bin) in &ops {
            report.progress(&format!("{n} idle: {label}"));
            at.push((label.clone(), idle(&mut bench, &fleets, label, bin).await));
        }
        idles.push(json!({"rollouts": n, "results": side_by_side(at)}));
        report.add("idle", json!(idles), &bench.settings);
    }

    let mut rs = vec![];
    for (label, bin) in &ops {
        report.progress(&format!("restart at {}: {label}", fleets.count));
        rs.push((
            label.clone(),
            restart(&mut bench, &fleets, label, bin).await,
        ));
    }
    report.add("restart", side_by_side(rs), &bench.settings);

    let mut prog = vec![];
    for n in bench.settings.progressing_sizes.clone() {
        let mut at = vec![];
        for (label, bin) in &ops {
            report.progress(&format!("{n} progressing: {label}"));
            at.push((label.clone(), progressing(&mut bench, label, bin, n).await));
        }
        prog.push(json!({"rollouts": n, "results": side_by_side(at)}));
        report.add("progressing", json!(prog), &bench.settings);
    }
    report.progress("done");
}
