//! Our ARQ consumer against the Python `arq` worker on the same jobs: jobs/s and Redis commands
//! per job at several concurrencies. Not a test (it is `#[ignore]`d and asserts nothing timed),
//! but the measurement `bench/worker-throughput.sh` runs; the JSON goes to
//! `bench/results/worker-throughput.json`.
//!
//! Both sides get the same jobs (ARQ records of `dedup2d_run_job`, each with a 1 KiB payload key)
//! and do the same work per job: one `GET` of the payload, then a sleep of
//! `DEDUP2D_BENCH_JOB_MS` (0 by default), so the queue path is what is compared. Ours is the
//! worker's real `Consumer` (claim, result, finish) with that job plugged in; theirs is the real
//! `arq.worker.Worker` (`tests/peers/bench_arq_worker.py`). The jobs are queued before a worker
//! starts; jobs/s is the job count over the span from the first job's start to the last one's
//! finish, both read from the ARQ results the worker wrote. Redis commands are the
//! `INFO commandstats` delta (commands a Lua script calls included) over the run.

use std::sync::Arc;
use std::time::Duration;

use dedup2d::contract::arq::{JobRecord, Outcome};
use dedup2d::contract::queue::{now_ms, ArqQueue, QueueSettings};
use dedup2d::contract::store::StoreError;
use dedup2d::worker::consumer::{Consumer, JobRunner};
use dedup2d::worker::job::JobEnd;
use dedup2d::worker::metrics::WorkerMetrics;
use futures::future::BoxFuture;
use redis::aio::ConnectionManager;
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

use crate::support::bench::{command_calls, reset_command_stats};
use crate::support::measure::median_of;
use crate::support::peer_scripts::run_peer_async;
use crate::support::redis::RedisServer;

const QUEUE: &str = "bench:queue";
const PAYLOAD_PREFIX: &str = "bench:payload:";

/// The benchmark's job on our side: what `bench_arq_worker.py` does on theirs.
struct ReadAndSleep {
    conn: ConnectionManager,
    sleep: Duration,
    metrics: WorkerMetrics,
}

impl JobRunner for ReadAndSleep {
    fn run<'a>(&'a self, job_id: &'a str) -> BoxFuture<'a, Result<JobEnd, StoreError>> {
        Box::pin(async move {
            let _: Option<Vec<u8>> = redis::cmd("GET")
                .arg(format!("{PAYLOAD_PREFIX}{job_id}"))
                .query_async(&mut self.conn.clone())
                .await
                .expect("GET payload");
            if !self.sleep.is_zero() {
                tokio::time::sleep(self.sleep).await;
            }
            Ok(JobEnd::Completed)
        })
    }

    fn fail_unrunnable<'a>(
        &'a self,
        _job_id: &'a str,
        reason: &'a str,
    ) -> BoxFuture<'a, Result<JobEnd, StoreError>> {
        panic!("every benchmark job is runnable, got: {reason}")
    }

    fn metrics(&self) -> &WorkerMetrics {
        &self.metrics
    }
}

fn env_num(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .map(|v| v.parse().unwrap_or_else(|_| panic!("{name} is a number")))
        .unwrap_or(default)
}

/// Flushes Redis, queues `n` jobs with their payloads, then zeroes the command counters.
async fn load(conn: &ConnectionManager, n: u64) -> Vec<String> {
    let mut c = conn.clone();
    let _: () = redis::cmd("FLUSHALL").query_async(&mut c).await.unwrap();
    let queue = ArqQueue::new(conn.clone(), QUEUE);
    let ids: Vec<String> = (0..n).map(|i| format!("job-{i:06}")).collect();
    for chunk in ids.chunks(200) {
        let mut pipe = redis::pipe();
        for id in chunk {
            pipe.set(format!("{PAYLOAD_PREFIX}{id}"), vec![b'x'; 1024])
                .ignore();
        }
        let _: () = pipe.query_async(&mut c).await.unwrap();
        futures::future::join_all(chunk.iter().map(|id| {
            let queue = queue.clone();
            async move {
                assert!(queue
                    .enqueue(id, &JobRecord::dedup2d(id, now_ms()), 3_600_000)
                    .await
                    .unwrap())
            }
        }))
        .await;
    }
    reset_command_stats(&mut c).await;
    ids
}

/// Every job finished successfully: jobs/s over the span from the first start to the last finish
/// in the ARQ results, and the mean time from a job's start to its finish (ms).
async fn throughput(conn: &ConnectionManager, ids: &[String]) -> (f64, f64) {
    let queue = ArqQueue::new(conn.clone(), QUEUE);
    assert_eq!(queue.depth().await.unwrap(), 0, "every job left the queue");
    let (mut first, mut last, mut busy) = (i64::MAX, i64::MIN, 0);
    for id in ids {
        let r = queue
            .result(id)
            .await
            .unwrap()
            .unwrap_or_else(|| panic!("job {id} has no ARQ result"));
        assert!(
            matches!(r.outcome, Outcome::Success(_)),
            "job {id}: {:?}",
            r.outcome
        );
        busy += r.finish_ms - r.start_ms;
        first = first.min(r.start_ms);
        last = last.max(r.finish_ms);
    }
    let n = ids.len() as f64;
    (n * 1000.0 / ((last - first).max(1) as f64), busy as f64 / n)
}

async fn run_ours(redis: &RedisServer, concurrency: u64, sleep: Duration) {
    let conn = redis.manager().await;
    let queue = ArqQueue::new(conn.clone(), QUEUE);
    let stop = CancellationToken::new();
    let consumer = Consumer {
        jobs: Arc::new(ReadAndSleep {
            conn: conn.clone(),
            sleep,
            metrics: WorkerMetrics::new(),
        }),
        queues: vec![queue.clone()],
        queue_settings: QueueSettings::for_job_timeout(300),
        max_jobs: concurrency as usize,
        poll_interval: Duration::from_millis(50),
        shutdown_grace: Duration::from_secs(30),
    };
    let running = tokio::spawn(consumer.run(stop.clone()));
    // Done when the queue is empty; these ZCARDs are the benchmark's, subtracted below.
    while queue.depth().await.unwrap() > 0 {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stop.cancel();
    running.await.unwrap();
}

async fn run_arq(redis: &RedisServer, concurrency: u64, sleep: Duration) {
    run_peer_async(
        "bench_arq_worker.py",
        &[
            &redis.url(),
            QUEUE,
            PAYLOAD_PREFIX,
            &concurrency.to_string(),
            &sleep.as_millis().to_string(),
        ],
    )
    .await;
}

fn round(x: f64, places: i32) -> f64 {
    let f = 10f64.powi(places);
    (x * f).round() / f
}

/// One side at one concurrency: jobs/s and the commands per job, by command.
async fn measure(
    redis: &RedisServer,
    side: &str,
    concurrency: u64,
    n: u64,
    sleep: Duration,
) -> Value {
    let conn = redis.manager().await;
    let ids = load(&conn, n).await;
    match side {
        "dedup2d" => run_ours(redis, concurrency, sleep).await,
        _ => run_arq(redis, concurrency, sleep).await,
    }
    let mut counts = command_calls(&mut conn.clone()).await;
    if side == "dedup2d" {
        // Our depth polls above; the consumer itself sends no ZCARD.
        counts.remove("zcard");
    }
    let (jobs_per_s, job_ms) = throughput(&conn, &ids).await;
    let total: u64 = counts.values().sum();
    let scripts: u64 = ["evalsha", "eval"]
        .iter()
        .filter_map(|c| counts.get(*c))
        .sum();
    // What the worker sent itself: everything but what its Lua scripts called. Our job's
    // one GET per job is a client command; arq uses no scripts.
    let inside_scripts = if scripts > 0 {
        total - scripts - counts.get("script|load").copied().unwrap_or(0) - n
    } else {
        0
    };
    let per_job = |c: u64| round(c as f64 / n as f64, 2);
    let row = json!({
        "worker": side,
        "concurrency": concurrency,
        "jobs": n,
        "jobs_per_s": round(jobs_per_s, 1),
        "mean_job_ms": round(job_ms, 2),
        "redis_commands_per_job": per_job(total),
        "client_calls_per_job": per_job(total - inside_scripts),
        "by_command_per_job": counts.iter().map(|(k, v)| (k.clone(), json!(per_job(*v)))).collect::<serde_json::Map<_, _>>(),
    });
    eprintln!("{row}");
    row
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a benchmark: run bench/worker-throughput.sh"]
async fn worker_throughput_against_arq() {
    let redis = RedisServer::start();
    let n = env_num("DEDUP2D_BENCH_JOBS", 3000);
    let sleep = Duration::from_millis(env_num("DEDUP2D_BENCH_JOB_MS", 0));
    let mut rows = Vec::new();
    let mut ratios = Vec::new();
    let levels: Vec<u64> = std::env::var("DEDUP2D_BENCH_CONCURRENCY")
        .unwrap_or_else(|_| "1,10,50".into())
        .split(',')
        .map(|c| c.trim().parse().expect("concurrency levels"))
        .collect();
    // Rounds alternate the sides, so that a slow spell of a shared machine falls on both; the
    // ratio is of the medians.
    let rounds = env_num("DEDUP2D_BENCH_ROUNDS", 3).max(1);
    for concurrency in levels {
        let (mut ours, mut arq) = (Vec::new(), Vec::new());
        for _ in 0..rounds {
            ours.push(measure(&redis, "dedup2d", concurrency, n, sleep).await);
            arq.push(measure(&redis, "arq", concurrency, n, sleep).await);
        }
        let ratio = |k: &str| round(median_of(&ours, k) / median_of(&arq, k), 2);
        let per_round: Vec<f64> = ours
            .iter()
            .zip(&arq)
            .map(|(o, a)| {
                round(
                    o["jobs_per_s"].as_f64().unwrap() / a["jobs_per_s"].as_f64().unwrap(),
                    2,
                )
            })
            .collect();
        ratios.push(json!({
            "concurrency": concurrency,
            "rounds": rounds,
            "jobs_per_s_ours_median": median_of(&ours, "jobs_per_s"),
            "jobs_per_s_arq_median": median_of(&arq, "jobs_per_s"),
            "jobs_per_s_ours_over_arq": ratio("jobs_per_s"),
            "jobs_per_s_ours_over_arq_by_round": per_round,
            "commands_per_job_ours_over_arq": ratio("redis_commands_per_job"),
        }));
        rows.extend(ours.into_iter().chain(arq));
    }
    let out = json!({
        "benchmark": "worker jobs/s and Redis commands per job: our consumer against the Python arq worker",
        "command": "bench/worker-throughput.sh",
        "profile": std::env::var("DEDUP2D_BENCH_PROFILE").unwrap_or_else(|_| "dev".into()),
        "job": format!("GET of a 1 KiB payload key, then sleep {} ms, on both sides", sleep.as_millis()),
        "note": "commands from INFO commandstats over the run, Lua-internal included; client calls exclude what our scripts call",
        "results": rows,
        "ratios": ratios,
    });
    let path = crate::support::bench::bench_result_path("worker-throughput.json");
    std::fs::write(&path, serde_json::to_string_pretty(&out).unwrap() + "\n").unwrap();
    eprintln!("wrote {}", path.display());
}
