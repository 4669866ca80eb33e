//! Our worker in a fleet: sharing one ARQ queue with a real Python `arq` legacy worker (reads
//! only `file_bytes_b64`), and three of our workers losing members to SIGKILL mid-job.

use std::collections::HashMap;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::support::peers::{peer, python};
use crate::support::redis::RedisServer;
use crate::support::worker::{self as w, WorkerProc};
use bytes::Bytes;
use dedup2d::contract::store::JobStatus;
use dedup2d::storage::{FileStorage, LocalStorage};
use redis::AsyncCommands;
use serde_json::json;

/// The Python legacy worker process; killed on drop.
struct LegacyWorker(Child);

impl LegacyWorker {
    fn start(redis_url: &str) -> Self {
        LegacyWorker(
            Command::new(python())
                .arg(peer("legacy_worker.py"))
                .args([redis_url, w::QUEUE, w::PREFIX, "--max-jobs", "4"])
                .current_dir(std::env::temp_dir())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("start the Python legacy worker"),
        )
    }
}

impl Drop for LegacyWorker {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A Redis server, a directory with local file storage under `uploads/`, and the job store.
async fn setup() -> (
    RedisServer,
    tempfile::TempDir,
    LocalStorage,
    redis::aio::ConnectionManager,
    dedup2d::contract::store::JobStore,
) {
    let redis = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let storage = LocalStorage::new(dir.path().join("uploads")).unwrap();
    let conn = redis.manager().await;
    let store = w::store(conn.clone());
    (redis, dir, storage, conn, store)
}

fn local_env(dir: &std::path::Path, extra: &[(&str, &str)]) -> Vec<(String, String)> {
    let mut env = w::env(&[
        ("DEDUP2D_FILE_STORAGE", "local"),
        (
            "DEDUP2D_FILE_STORAGE_DIR",
            dir.join("uploads").to_str().unwrap(),
        ),
    ]);
    env.extend(w::env(extra));
    env
}

/// Submits `n` jobs with files in storage; `dual_write` also embeds the bytes.
async fn submit_many(
    store: &dedup2d::contract::store::JobStore,
    storage: &LocalStorage,
    n: usize,
    dual_write: bool,
    tag: &str,
) -> Vec<String> {
    let mut ids = Vec::new();
    for i in 0..n {
        let id = uuid::Uuid::new_v4().to_string();
        let data = format!("{tag} drawing {i} {id}").into_bytes();
        let r = storage
            .save(
                &id,
                "part.dxf",
                "application/dxf",
                Bytes::from(data.clone()),
            )
            .await
            .unwrap();
        let b64 = dual_write.then_some(data.as_slice());
        w::submit_as(store, &id, w::payload(Some(r), b64)).await;
        ids.push(id);
    }
    ids
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mixed_fleet_needs_dual_write_until_every_worker_is_new() {
    let (redis, dir, storage, conn, store) = setup().await;
    // Keep uploads so both workers can read them (cleanup off for this fleet).
    let env = local_env(
        dir.path(),
        &[
            ("DEDUP2D_FILE_STORAGE_CLEANUP_ON_FINISH", "0"),
            ("DEDUP2D_WORKER_MAX_JOBS", "4"),
            ("DEDUP2D_WORKER_DEBUG_JOB_DELAY_MS", "100"),
        ],
    );

    // Legacy worker alone on file_ref-only payloads: every job fails.
    let legacy = LegacyWorker::start(&redis.url());
    let ref_only = submit_many(&store, &storage, 8, false, "ref-only-legacy").await;
    let done = w::wait_finished(&store, &ref_only, Duration::from_secs(60)).await;
    for id in &ref_only {
        assert_eq!(done[id].status, JobStatus::Failed, "{:?}", done[id]);
        assert!(done[id]
            .error
            .as_deref()
            .unwrap()
            .contains("no file_bytes_b64"));
    }

    // Both workers, dual-write payloads: every job completes, whoever takes it.
    let mut ours = WorkerProc::spawn(&redis.url(), dir.path(), "new", &env);
    ours.wait_healthy(Duration::from_secs(20)).await;
    let dual = submit_many(&store, &storage, 60, true, "dual").await;
    let done = w::wait_finished(&store, &dual, Duration::from_secs(90)).await;
    let mut by_worker: HashMap<&str, usize> = HashMap::new();
    for id in &dual {
        assert_eq!(done[id].status, JobStatus::Completed, "{:?}", done[id]);
        let r = w::result(&conn, id).await.expect("result");
        let who = if r.get("worker") == Some(&json!("python-legacy")) {
            "legacy"
        } else {
            assert_eq!(r["engine"], json!("exact_sha256"), "{r}");
            "ours"
        };
        *by_worker.entry(who).or_default() += 1;
    }
    assert!(
        by_worker.get("legacy").copied().unwrap_or(0) > 0
            && by_worker.get("ours").copied().unwrap_or(0) > 0,
        "both workers took jobs: {by_worker:?}"
    );
    let page = ours.metrics().await;
    assert_eq!(
        w::metric(&page, "dedup2d_legacy_b64_fallback_total"),
        0.0,
        "file_ref read first"
    );

    // Both workers, file_ref-only payloads: the legacy worker fails what it takes, ours does not.
    let ref_only = submit_many(&store, &storage, 60, false, "ref-only-mixed").await;
    let done = w::wait_finished(&store, &ref_only, Duration::from_secs(90)).await;
    let (mut failed, mut completed) = (0, 0);
    for id in &ref_only {
        match done[id].status {
            JobStatus::Completed => {
                completed += 1;
                let r = w::result(&conn, id).await.unwrap();
                assert_eq!(
                    r["engine"],
                    json!("exact_sha256"),
                    "only ours can complete these"
                );
            }
            JobStatus::Failed => {
                failed += 1;
                assert!(done[id].error.as_deref().unwrap().contains("legacy worker"));
            }
            other => panic!("{other:?}"),
        }
    }
    assert!(
        failed > 0 && completed > 0,
        "failed {failed}, completed {completed}"
    );
    drop(legacy);

    // Once every worker is new, file_ref-only payloads all complete.
    let ref_only = submit_many(&store, &storage, 20, false, "ref-only-new").await;
    let done = w::wait_finished(&store, &ref_only, Duration::from_secs(60)).await;
    assert!(ref_only
        .iter()
        .all(|id| done[id].status == JobStatus::Completed));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn arq_result_of_our_worker_reads_back_in_python() {
    let redis = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let conn = redis.manager().await;
    let store = w::store(conn.clone());
    let mut ours = WorkerProc::spawn(&redis.url(), dir.path(), "new", &local_env(dir.path(), &[]));
    ours.wait_healthy(Duration::from_secs(20)).await;
    let id = w::submit(&store, w::payload(None, Some(b"python reads this"))).await;
    w::wait_finished(&store, std::slice::from_ref(&id), Duration::from_secs(20)).await;
    // The ARQ result is written right after the job hash; give it a moment.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let out = crate::support::peer_scripts::run_peer_async(
        "arq_client.py",
        &["result", &redis.url(), w::QUEUE, &id],
    )
    .await;
    let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(v["value"], json!({"status": "completed"}), "{out}");
    assert_eq!(v["status"], json!("complete"), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_job_lost_when_workers_are_killed_mid_job() {
    const JOBS: usize = 240;
    const KILLS: usize = 5;
    let (redis, dir, storage, conn, store) = setup().await;
    // Job timeout 2 s: a dead worker's in-progress key expires after 12 s (ARQ: timeout + 10 s).
    let env = local_env(
        dir.path(),
        &[
            ("DEDUP2D_WORKER_MAX_JOBS", "4"),
            ("DEDUP2D_WORKER_DEBUG_JOB_DELAY_MS", "400"),
            ("DEDUP2D_ASYNC_JOB_TIMEOUT_SECONDS", "2"),
        ],
    );
    let spawn = |n: usize| WorkerProc::spawn(&redis.url(), dir.path(), &format!("w{n}"), &env);
    let mut workers: Vec<WorkerProc> = (0..3).map(spawn).collect();
    for wk in &mut workers {
        wk.wait_healthy(Duration::from_secs(30)).await;
    }
    let ids = submit_many(&store, &storage, JOBS, false, "chaos").await;
    let start = Instant::now();

    let mut c = conn.clone();
    let mut kills = 0;
    let mut spawned = 3;
    let mut killed_mid_job = 0; // kills of a worker that was running jobs
    while kills < KILLS {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let left: i64 = c.zcard(w::QUEUE).await.unwrap();
        if left == 0 {
            break;
        }
        // Kill the busiest worker (one that is running jobs right now).
        let mut victim = None;
        let mut busiest = 0.0;
        for (i, wk) in workers.iter().enumerate() {
            let n = w::metric(&wk.metrics().await, "dedup2d_worker_jobs_in_flight");
            if n > busiest {
                busiest = n;
                victim = Some(i);
            }
        }
        let Some(victim) = victim else { continue };
        workers[victim].sigkill();
        kills += 1;
        killed_mid_job += 1;
        let mut fresh = spawn(spawned);
        spawned += 1;
        fresh.wait_healthy(Duration::from_secs(30)).await;
        workers[victim] = fresh;
    }
    assert!(
        killed_mid_job >= 3,
        "only {killed_mid_job} kills hit running jobs"
    );

    let done = w::wait_finished(&store, &ids, Duration::from_secs(180)).await;
    let elapsed = start.elapsed();
    for id in &ids {
        let v = &done[id];
        assert_eq!(v.status, JobStatus::Completed, "{v:?}");
        let r = w::result(&conn, id).await.expect("one result per job");
        assert_eq!(r["success"], json!(true));
        assert_eq!(
            r["total_matches"],
            json!(0),
            "a re-run must not see itself as a duplicate"
        );
    }
    // Nothing left behind in ARQ: queue empty, no in-progress keys, one ARQ result per job.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let left: i64 = c.zcard(w::QUEUE).await.unwrap();
    assert_eq!(left, 0);
    let held: Vec<String> = redis::cmd("KEYS")
        .arg("arq:in-progress:*")
        .query_async(&mut c)
        .await
        .unwrap();
    assert!(held.is_empty(), "{held:?}");
    let queue = dedup2d::contract::queue::ArqQueue::new(conn.clone(), w::QUEUE);
    let mut retried = 0;
    for id in &ids {
        let rec = queue
            .result(id)
            .await
            .unwrap()
            .unwrap_or_else(|| panic!("ARQ result for {id}"));
        assert!(
            matches!(&rec.outcome, dedup2d::contract::arq::Outcome::Success(_)),
            "{rec:?}"
        );
        if rec.job_try > 1 {
            retried += 1;
        }
        let retry: Option<i64> = c
            .get(dedup2d::contract::keys::arq::retry(id))
            .await
            .unwrap();
        assert!(retry.is_none());
    }
    assert!(
        retried >= killed_mid_job,
        "jobs of killed workers re-ran: {retried}"
    );
    eprintln!(
        "chaos: {JOBS} jobs, {kills} SIGKILLs ({killed_mid_job} mid-job), {retried} jobs re-run, \
         all completed once in {:.1} s",
        elapsed.as_secs_f64()
    );
}
