//! Worker SIGKILLs under load: several `dedup2d worker` processes on one queue while jobs keep
//! arriving; a random one is SIGKILLed at a random moment and restarted, again and again
//! (`fault_count(10, 100)`: 100 under `hack/faults.sh`). At the end no job is lost (each one
//! submitted is completed, or failed with a stated reason) and none is completed twice, judged
//! from a `redis-cli MONITOR` record of every command Redis ran (Lua-internal ones included):
//! each job's final-status write and ARQ result write happen exactly once.

use std::collections::HashMap;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::support::faults::{fault_count, record_fault_counts};
use crate::support::process::which;
use crate::support::redis::RedisServer;
use crate::support::worker::{self as w, WorkerProc};
use dedup2d::contract::store::{JobStatus, JobStore};
use redis::AsyncCommands;
use serde_json::json;

const WORKERS: usize = 3;

/// `redis-cli MONITOR` writing every command the server runs to a file; stopped on drop.
struct Monitor {
    child: Child,
    path: std::path::PathBuf,
}

impl Monitor {
    async fn start(redis: &RedisServer, dir: &std::path::Path) -> Self {
        let cli = which("redis-cli").unwrap_or_else(|| {
            panic!("redis-cli not found on PATH: it comes with redis-server (Debian: `apt-get install -y redis-tools`)")
        });
        let path = dir.join("monitor.log");
        let child = Command::new(cli)
            .args(["-p", &redis.port.to_string(), "monitor"])
            .stdout(std::fs::File::create(&path).unwrap())
            .stderr(Stdio::null())
            .spawn()
            .expect("start redis-cli monitor");
        let m = Monitor { child, path };
        // MONITOR answers OK before it streams anything: wait for it.
        let deadline = Instant::now() + Duration::from_secs(10);
        while m.text().is_empty() {
            assert!(Instant::now() < deadline, "redis-cli monitor never started");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        m
    }

    fn text(&self) -> String {
        std::fs::read_to_string(&self.path).unwrap_or_default()
    }
}

impl Drop for Monitor {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// How many times each job's final status was written and its ARQ result set, from the
/// MONITOR record (`"HMSET"`/`"HSET" "<prefix>:job:<id>" "status" "<final>"` and
/// `"SET" "arq:result:<id>"`).
fn finishes(record: &str) -> (HashMap<String, usize>, HashMap<String, usize>) {
    let job_writes = ["HMSET", "HSET"].map(|c| format!("\"{c}\" \"{}:job:", w::PREFIX));
    let (mut statuses, mut results) = (HashMap::new(), HashMap::new());
    for line in record.lines() {
        let job_write = job_writes
            .iter()
            .find_map(|p| line.split_once(p.as_str()).map(|(_, r)| r));
        if let Some(rest) = job_write {
            let (id, fields) = rest.split_once('"').unwrap_or((rest, ""));
            let finished = ["completed", "failed", "canceled"]
                .iter()
                .any(|s| fields.starts_with(&format!(" \"status\" \"{s}\"")));
            if finished {
                *statuses.entry(id.to_string()).or_default() += 1;
            }
        } else if let Some(rest) = line.split_once("\"SET\" \"arq:result:").map(|(_, r)| r) {
            let id = rest.split_once('"').map_or(rest, |(id, _)| id);
            *results.entry(id.to_string()).or_default() += 1;
        }
    }
    (statuses, results)
}

/// Keeps submitting small jobs until `stop`, returning their ids.
async fn steady_load(store: JobStore, stop: tokio_util::sync::CancellationToken) -> Vec<String> {
    let mut ids = Vec::new();
    while !stop.is_cancelled() {
        for _ in 0..2 {
            let data = format!("fault drawing {}", ids.len()).into_bytes();
            ids.push(w::submit(&store, w::payload(None, Some(&data))).await);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    ids
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_job_lost_or_completed_twice_across_worker_sigkills() {
    let kills = fault_count(10, 100);
    let redis = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let monitor = Monitor::start(&redis, dir.path()).await;
    let conn = redis.manager().await;
    let store = w::store(conn.clone());
    // Job timeout 1 s: a killed worker's in-progress keys expire after 11 s (timeout + 10 s).
    let env = w::env(&[
        ("DEDUP2D_FILE_STORAGE", "local"),
        (
            "DEDUP2D_FILE_STORAGE_DIR",
            dir.path().join("uploads").to_str().unwrap(),
        ),
        ("DEDUP2D_WORKER_MAX_JOBS", "4"),
        ("DEDUP2D_WORKER_DEBUG_JOB_DELAY_MS", "150"),
        ("DEDUP2D_ASYNC_JOB_TIMEOUT_SECONDS", "1"),
        ("RUST_LOG", "warn"),
    ]);
    let spawn = |n: usize| WorkerProc::spawn(&redis.url(), dir.path(), &format!("k{n}"), &env);
    let mut workers: Vec<WorkerProc> = (0..WORKERS).map(spawn).collect();
    for wk in &mut workers {
        wk.wait_healthy(Duration::from_secs(30)).await;
    }
    let stop_load = tokio_util::sync::CancellationToken::new();
    let load = tokio::spawn(steady_load(store.clone(), stop_load.clone()));

    let mut c = conn.clone();
    let mut mid_job = 0;
    for k in 0..kills {
        tokio::time::sleep(Duration::from_millis(fastrand::u64(50..400))).await;
        let victim = fastrand::usize(0..WORKERS);
        let running = w::metric(
            &workers[victim].metrics().await,
            "dedup2d_worker_jobs_in_flight",
        );
        mid_job += usize::from(running > 0.0);
        workers[victim].sigkill();
        workers[victim] = spawn(WORKERS + k);
        workers[victim].wait_healthy(Duration::from_secs(30)).await;
    }
    stop_load.cancel();
    let ids = load.await.unwrap();
    let done = w::wait_finished(&store, &ids, Duration::from_secs(300)).await;
    let left: i64 = c.zcard(w::QUEUE).await.unwrap();
    assert_eq!(left, 0, "the queue is empty once every job finished");

    let mut failed = Vec::new();
    for id in &ids {
        let v = &done[id];
        match v.status {
            JobStatus::Completed => {}
            JobStatus::Failed if v.error.as_deref().is_some_and(|e| !e.is_empty()) => {
                failed.push((id.clone(), v.error.clone()))
            }
            _ => panic!("job {id} ended {v:?}"),
        }
    }
    drop(workers);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (statuses, results) = finishes(&monitor.text());
    let twice: Vec<_> = ids
        .iter()
        .filter(|id| statuses.get(*id) != Some(&1) || results.get(*id) != Some(&1))
        .map(|id| (id, statuses.get(id), results.get(id)))
        .collect();
    assert!(
        twice.is_empty(),
        "jobs whose final status or ARQ result was not written exactly once \
         (status writes, result writes): {:?}",
        &twice[..twice.len().min(10)]
    );
    let queue = dedup2d::contract::queue::ArqQueue::new(conn.clone(), w::QUEUE);
    let mut rerun = 0;
    for id in &ids {
        let rec = queue
            .result(id)
            .await
            .unwrap()
            .expect("an ARQ result per job");
        rerun += usize::from(rec.job_try > 1);
    }
    record_fault_counts(
        "worker_kill",
        &json!({
            "test": "tests/local/faults_worker_kill.rs",
            "workers": WORKERS,
            "sigkills": kills,
            "sigkills_while_jobs_were_held": mid_job,
            "jobs": ids.len(),
            "completed": ids.len() - failed.len(),
            "failed_with_reason": failed.len(),
            "failure_reasons": failed.iter().map(|(_, e)| e.clone()).collect::<std::collections::BTreeSet<_>>(),
            "lost": 0,
            "completed_twice": 0,
            "jobs_rerun_after_a_kill": rerun,
        }),
    );
    assert!(
        mid_job * 2 >= kills,
        "too few kills hit a worker with jobs in progress: {mid_job} of {kills}"
    );
}
