//! A whole rollout under live traffic, with real processes behind the fake pods: one redis-server,
//! `dedup2d api`, the Python legacy arq worker (`tests/peers/legacy_worker.py`, which reads only
//! `file_bytes_b64`) and `dedup2d worker`, tied to the Deployments by `tests/peers/fleet_supervisor.py`
//! (the one `hack/demo.sh` runs): a worker Deployment on the old image runs the legacy worker, on the
//! new image ours; the API restarts with the ConfigMap's values whenever its pod template changes.
//! `tests/peers/traffic.py` uploads through the API from before the rollout until it completed.
//!
//! Asserted: every upload was accepted and every job completed (none failed); the legacy workers were
//! only ever handed payloads with `file_bytes_b64`, and were gone before the API wrote its first
//! file_ref-only payload; the operator went through every phase. Run with `--nocapture` for figures.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use dedup2d::contract::store::JobStatus;
use dedup2d::operator::crd::Phase;
use k8s_openapi::{api::core::v1::ConfigMap, jiff::Timestamp};
use kube::api::{Patch, PatchParams};
use serde_json::{json, Value};

use crate::support::{
    events::*,
    fleet::*,
    history::*,
    job_store::{result, store},
    kube::kubectl,
    peers::{peer, python},
    poll::eventually,
    scenario::Scenario,
};

const WORKERS: [&str; 2] = ["worker-a", "worker-b"];
const API_KEY: &str = "live-traffic-key";

/// `fleet_supervisor.py` for the test's namespace; SIGTERM on drop (it stops every process it runs).
struct LiveFleet {
    child: Child,
    dir: PathBuf,
}

impl LiveFleet {
    fn start(ns: &str, dir: &Path) -> Self {
        let uploads = dir.join("uploads");
        std::fs::create_dir_all(&uploads).unwrap();
        let log = std::fs::File::create(dir.join("fleet.log")).unwrap();
        let child = Command::new(python())
            .arg(peer("fleet_supervisor.py"))
            .args(["--namespace", ns, "--configmap", CM, "--api", "api"])
            .args(["--worker", WORKERS[0], "--worker", WORKERS[1]])
            .args(["--legacy-image", OLD_IMAGE, "--die-with-parent"])
            .arg("--dedup2d")
            .arg(env!("CARGO_BIN_EXE_dedup2d"))
            .arg("--kubectl")
            .arg(kubectl())
            .arg("--python")
            .arg(python())
            .arg("--dir")
            .arg(dir)
            .arg("--env")
            .arg(format!("DEDUP2D_API_KEYS={API_KEY}"))
            .arg("--env")
            .arg(format!("DEDUP2D_FILE_STORAGE_DIR={}", uploads.display()))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start tests/peers/fleet_supervisor.py");
        LiveFleet {
            child,
            dir: dir.to_path_buf(),
        }
    }

    fn jsonl(&self, file: &str) -> Vec<Value> {
        read_jsonl(&self.dir.join(file))
    }

    /// The supervisor's process events: `started`, `stopped`, `crashed`.
    fn events(&self) -> Vec<Value> {
        self.jsonl("events.jsonl")
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("fleet.log")).unwrap_or_default()
    }
}

impl Drop for LiveFleet {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        for _ in 0..400 {
            if let Ok(Some(_)) = self.child.try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("---- fleet supervisor log ----\n{}", self.log());
        }
    }
}

fn read_jsonl(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{}: {e}: {l}", path.display())))
        .collect()
}

fn at(v: &Value) -> f64 {
    v["at"].as_f64().expect("an `at` epoch")
}

/// `traffic.py` against the supervisor's current API URL until [`Traffic::stop`].
struct Traffic {
    child: Child,
    dir: PathBuf,
}

impl Traffic {
    fn start(dir: &Path, rate: f64) -> Self {
        let child = Command::new(python())
            .arg(peer("traffic.py"))
            .arg("--url-file")
            .arg(dir.join("api.url"))
            .args(["--api-key", API_KEY, "--rate", &rate.to_string()])
            .args(["--max-seconds", "300"])
            .arg("--out")
            .arg(dir.join("jobs.jsonl"))
            .arg("--stop-file")
            .arg(dir.join("stop-traffic"))
            .arg("--results")
            .arg(dir.join("results.jsonl"))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start tests/peers/traffic.py");
        Traffic {
            child,
            dir: dir.to_path_buf(),
        }
    }

    /// Stops the uploads; returns traffic.py's own summary and every submission it recorded.
    fn stop(self) -> (Value, Vec<Value>) {
        std::fs::write(self.dir.join("stop-traffic"), "").unwrap();
        let out = self.child.wait_with_output().expect("traffic.py ends");
        assert!(out.status.success(), "traffic.py failed: {}", out.status);
        let summary = serde_json::from_slice(&out.stdout).expect("traffic.py summary JSON");
        (summary, read_jsonl(&self.dir.join("jobs.jsonl")))
    }
}

/// What became of every job traffic.py submitted, read from Redis while the job records exist
/// (they live `DEDUP2D_ASYNC_TTL_SECONDS`, 60 s here): job id -> (final status, run by the legacy
/// peer). Independent of traffic.py's own polling through the API.
struct Tracker {
    seen: Arc<Mutex<BTreeMap<String, (JobStatus, bool)>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Tracker {
    fn start(jobs_file: PathBuf, conn: redis::aio::ConnectionManager) -> Self {
        let seen = Arc::new(Mutex::new(BTreeMap::new()));
        let jobs = store(conn.clone());
        let task = tokio::spawn({
            let seen = seen.clone();
            async move {
                loop {
                    for s in read_jsonl(&jobs_file) {
                        let Some(id) = s["job_id"].as_str() else {
                            continue;
                        };
                        if seen.lock().unwrap().contains_key(id) {
                            continue;
                        }
                        let Ok(Some(v)) = jobs.get(id).await else {
                            continue;
                        };
                        if v.status.is_finished() {
                            let result = result(&conn, id).await;
                            let legacy = result.is_some_and(|r| r["worker"] == "python-legacy");
                            seen.lock()
                                .unwrap()
                                .insert(id.to_string(), (v.status, legacy));
                        }
                    }
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        });
        Tracker { seen, task }
    }

    fn outcomes(&self) -> BTreeMap<String, (JobStatus, bool)> {
        self.seen.lock().unwrap().clone()
    }
}

impl Drop for Tracker {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[tokio::test]
async fn every_job_submitted_during_the_rollout_completes() {
    // The legacy fleet: the API embeds file_bytes_b64 (its workers read nothing else); the
    // contract's shortest job TTL, so the drain takes a minute.
    let s = Scenario::builder("live")
        .dual_write_on()
        .workers(&[(WORKERS[0], 2), (WORKERS[1], 1)])
        .fleet()
        .await;
    let (ns, redis) = (&s.ns, &s.redis);
    let dir = tempfile::tempdir().unwrap();
    ns.api::<ConfigMap>()
        .patch(
            CM,
            &PatchParams::default(),
            &Patch::Merge(json!({"data": {"DEDUP2D_ASYNC_TTL_SECONDS": "60"}})),
        )
        .await
        .unwrap();
    let history = History::start(ns).await;
    let live = LiveFleet::start(&ns.name, dir.path());
    eventually(
        "the supervisor started the API and both legacy workers",
        Duration::from_secs(60),
        || async {
            let started = live
                .events()
                .iter()
                .filter(|e| e["action"] == "started")
                .count();
            (started >= 3 && dir.path().join("api.url").exists()).then_some(())
        },
    )
    .await;
    let traffic = Traffic::start(dir.path(), 8.0);
    let tracker = Tracker::start(dir.path().join("jobs.jsonl"), redis.manager().await);
    eventually(
        "the legacy workers handling uploads",
        Duration::from_secs(30),
        || async { (live.jsonl("legacy-received.jsonl").len() >= 20).then_some(()) },
    )
    .await;

    let applied = Timestamp::now();
    let _op = s
        .run(
            "live",
            rollout_spec(
                &WORKERS,
                json!({"api": {"image": API_NEW}, "dualWrite": {"soak": "5s"},
                       "drain": {"strategy": "Observe"}, "progressDeadlineSeconds": 120}),
            ),
        )
        .await;
    let r = wait_phase(ns, "live", Phase::Completed, Duration::from_secs(150)).await;
    let completed = Timestamp::now();
    let (summary, submissions) = traffic.stop();

    // Every upload accepted, every job completed.
    assert_eq!(
        summary["refused"],
        0,
        "uploads refused: {summary}; {:?}",
        submissions
            .iter()
            .filter(|s| s.get("job_id").is_none())
            .collect::<Vec<_>>()
    );
    let ids: Vec<String> = submissions
        .iter()
        .map(|s| s["job_id"].as_str().unwrap().to_string())
        .collect();
    assert!(ids.len() >= 100, "only {} uploads", ids.len());
    let outcomes = eventually(
        "every submitted job finished",
        Duration::from_secs(60),
        || async {
            let done = tracker.outcomes();
            ids.iter().all(|id| done.contains_key(id)).then_some(done)
        },
    )
    .await;
    drop(tracker);
    let failed: Vec<_> = outcomes
        .iter()
        .filter(|(_, o)| o.0 != JobStatus::Completed)
        .collect();
    assert!(
        failed.is_empty(),
        "{} of {} jobs did not complete, e.g. {:?}",
        failed.len(),
        ids.len(),
        &failed[..failed.len().min(5)]
    );
    assert_eq!(
        (
            summary["completed"].as_u64(),
            summary["unfinished"].as_u64()
        ),
        (Some(ids.len() as u64), Some(0)),
        "traffic.py, polling the API, saw the same: {summary}"
    );
    let by_legacy: BTreeMap<String, bool> =
        outcomes.iter().map(|(id, o)| (id.clone(), o.1)).collect();

    // The legacy workers saw only payloads they can read.
    let received = live.jsonl("legacy-received.jsonl");
    assert!(!received.is_empty());
    let unreadable: Vec<_> = received
        .iter()
        .filter(|r| r["file_bytes_b64"] != true)
        .collect();
    assert!(
        unreadable.is_empty(),
        "legacy workers were handed {} payloads without file_bytes_b64, e.g. {:?}",
        unreadable.len(),
        &unreadable[..unreadable.len().min(5)]
    );

    // The processes followed the Deployments: each worker went legacy -> ours once, nothing crashed,
    // the API restarted for each template change (dual-write on, new image, dual-write off), and no
    // legacy worker was alive when the API started writing file_ref-only payloads.
    let events = live.events();
    assert!(
        events.iter().all(|e| e["action"] != "crashed"),
        "a process crashed: {events:?}"
    );
    let started = |dep: &str| -> Vec<&Value> {
        events
            .iter()
            .filter(|e| e["action"] == "started" && e["deployment"] == dep)
            .collect()
    };
    for w in WORKERS {
        let kinds: Vec<&str> = started(w)
            .iter()
            .map(|e| e["process"].as_str().unwrap())
            .collect();
        assert_eq!(kinds, ["legacy-worker", "dedup2d-worker"], "{w}");
    }
    let api_starts = started("api");
    let includes: Vec<&str> = api_starts
        .iter()
        .map(|e| e["include_b64"].as_str().unwrap())
        .collect();
    assert_eq!(
        includes,
        ["1", "1", "1", "0"],
        "API (re)starts: {api_starts:?}"
    );
    let file_ref_only_from = at(api_starts[3]);
    let legacy_stopped: Vec<f64> = events
        .iter()
        .filter(|e| e["action"] == "stopped" && e["process"] == "legacy-worker")
        .map(at)
        .collect();
    assert_eq!(legacy_stopped.len(), WORKERS.len());
    assert!(
        legacy_stopped.iter().all(|t| *t < file_ref_only_from),
        "a legacy worker stopped at {legacy_stopped:?}, after the file_ref-only API started at {file_ref_only_from}"
    );
    let h = history.by_revision();
    assert_eq!(
        check_dual_write_off_after_workers(&h, &WORKERS, NEW_IMAGE).len(),
        1
    );

    // Traffic covered the whole rollout: legacy-run jobs before, file_ref-only jobs after.
    let applied_s = applied.as_millisecond() as f64 / 1000.0;
    let submitted_at = |s: &Value| at(s);
    let before = submissions
        .iter()
        .filter(|s| submitted_at(s) < applied_s)
        .count();
    let file_ref_only: Vec<&Value> = submissions
        .iter()
        .filter(|s| submitted_at(s) > file_ref_only_from)
        .collect();
    assert!(
        before > 0 && file_ref_only.len() > 10,
        "before {before}, file_ref-only {}",
        file_ref_only.len()
    );
    assert!(
        file_ref_only
            .iter()
            .all(|s| !by_legacy[s["job_id"].as_str().unwrap()]),
        "a file_ref-only job was run by a legacy worker"
    );
    let legacy_runs = by_legacy.values().filter(|l| **l).count();
    assert!(legacy_runs > 0, "the legacy workers completed no job");

    let trans = transitions_until(ns, "Completed").await;
    let phases: Vec<&str> = trans.iter().map(|t| t.1.as_str()).collect();
    assert_eq!(phases, FORWARD_TRANSITIONS);
    assert_eq!(r.status.unwrap().legacy_payloads, Some(0));

    // Figures.
    println!(
        "live traffic: {} uploads ({} connection retries during API restarts), all completed: {legacy_runs} by \
         the legacy workers (handed {} payloads, all with file_bytes_b64), {} by ours; {} file_ref-only",
        ids.len(),
        summary["connection_retries"],
        received.len(),
        ids.len() - legacy_runs,
        file_ref_only.len()
    );
    let mut prev = (applied, "Pending".to_string());
    for (t, p) in &trans {
        let n = submissions
            .iter()
            .filter(|s| {
                let a = submitted_at(s);
                a >= prev.0.as_millisecond() as f64 / 1000.0
                    && a < t.as_millisecond() as f64 / 1000.0
            })
            .count();
        println!(
            "  {:<18} {:>6.2}s  {n:>4} uploads",
            prev.1,
            secs(prev.0, *t)
        );
        prev = (*t, p.clone());
    }
    println!(
        "  rollout applied -> Completed observed: {:.1}s",
        secs(applied, completed)
    );
}
