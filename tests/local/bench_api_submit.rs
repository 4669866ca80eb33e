//! The API's submit rate as pending jobs grow: not a test (it is `#[ignore]`d and asserts nothing
//! timed), but the measurement `bench/api-submit.sh` runs. With no worker, every submit adds a
//! pending job, so the last block of submits runs against ten times the pending jobs of the first.
//!
//! Passes, each on its own fresh `redis-server`, in blocks (every block's submits run at that
//! concurrency; the block ends when all have answered); the first two at every concurrency:
//! - **api**: the real `dedup2d api` process, `POST /api/v1/dedup/2d/search?async=true` with a
//!   1 KiB DXF: authentication, the tenant defaults read, the multipart upload, the file written
//!   to local storage (on tmpfs, see [`upload_dir`]), then the submit script (capacity check,
//!   job hash, payload, ARQ enqueue);
//! - **store_new**: the submit script alone, through `JobStore::submit` as the API calls it;
//! - **store_old**: the capacity check before the change (`SMEMBERS` and an `HGET` per member,
//!   its Lua kept here only) with the same writes, on the same payload, once, at the highest
//!   concurrency.
//!
//! For each block: submits/s, Redis CPU per submit (`INFO cpu` delta), Redis commands per submit
//! (`INFO commandstats`, script calls included) and the pending jobs at its end; the JSON goes to `bench/results/api-submit.json` with the last/first ratios.
//!
//! The api and store_new passes run `DEDUP2D_BENCH_ROUNDS` times (default 5, each round on fresh
//! Redis): a release-build block of 1,000 submits lasts 50–400 ms, where one scheduling hiccup
//! moves its rate by a third. Each block's figures are the median over the rounds, and the
//! last/first ratios are of those medians; every round's rates are kept beside them.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

use crate::support::api::{submit_file, ApiProcess};
use crate::support::bench::command_total;
use crate::support::measure::{env_list, env_or, median_of, redis_cpu_s};
use crate::support::redis::RedisServer;
use crate::support::worker::{self as w, QUEUE, TENANT};
use dedup2d::contract::arq::JobRecord;
use dedup2d::contract::keys::{arq as arq_keys, Keys};
use dedup2d::contract::payload::{FileRef, JobPayload};
use dedup2d::contract::store::{JobStore, NewJob};
use redis::aio::ConnectionManager;
use serde_json::{json, Value};

/// Blocks per pass: the rate is reported per block.
const BLOCKS: usize = 10;

/// The submit script before the constant-cost capacity check: prunes by walking the whole active
/// set with an `HGET` per member, then the same writes (without the deadline index).
const OLD_SUBMIT: &str = r#"
local prefix = ARGV[11]
for _, id in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  local st = redis.call('HGET', prefix .. ':job:' .. id, 'status')
  if (not st) or st == 'completed' or st == 'failed' or st == 'canceled' then
    redis.call('SREM', KEYS[1], id)
  end
end
local active = redis.call('SCARD', KEYS[1])
if active >= tonumber(ARGV[6]) then return {-1, active} end
if redis.call('EXISTS', KEYS[5], KEYS[6], KEYS[2]) > 0 then return {-2, active} end
redis.call('HSET', KEYS[2], 'job_id', ARGV[1], 'tenant_id', ARGV[2], 'status', 'pending',
  'created_at', ARGV[3], 'started_at', '', 'finished_at', '', 'error', '', 'cancel_requested', '0',
  'callback_url', ARGV[4], 'callback_status', '', 'callback_attempts', '0',
  'callback_http_status', '', 'callback_finished_at', '', 'callback_last_error', '')
redis.call('EXPIRE', KEYS[2], ARGV[5])
redis.call('SET', KEYS[3], ARGV[7], 'EX', ARGV[5])
redis.call('SADD', KEYS[1], ARGV[1])
redis.call('ZADD', KEYS[4], ARGV[3], ARGV[1])
redis.call('EXPIRE', KEYS[4], ARGV[5])
redis.call('SET', KEYS[5], ARGV[8], 'PX', ARGV[9])
redis.call('ZADD', KEYS[7], ARGV[10], ARGV[1])
return {1, active + 1}
"#;

/// A small DXF (about `bytes` long): a few LINE entities, so the queue and Redis path dominate.
pub fn small_dxf(bytes: usize) -> Vec<u8> {
    let mut s = String::from("0\nSECTION\n2\nENTITIES\n");
    let mut i = 0;
    while s.len() + 20 < bytes {
        s.push_str(&format!(
            "0\nLINE\n8\n0\n10\n{i}.0\n20\n0.0\n11\n{}.0\n21\n5.0\n",
            i + 1
        ));
        i += 1;
    }
    s.push_str("0\nENDSEC\n0\nEOF\n");
    s.into_bytes()
}

async fn scard(conn: &mut ConnectionManager, key: &str) -> u64 {
    redis::cmd("SCARD")
        .arg(key)
        .query_async(conn)
        .await
        .unwrap()
}

/// One way of submitting a job; each call submits one and fails loudly on anything but success.
#[derive(Clone)]
enum Submitter {
    Api {
        http: reqwest::Client,
        base: String,
        file: Vec<u8>,
    },
    Store {
        store: JobStore,
        payload: Arc<JobPayload>,
    },
    OldScript {
        conn: ConnectionManager,
        script: Arc<redis::Script>,
        payload: Arc<String>,
    },
}

impl Submitter {
    async fn submit_one(&self) {
        match self {
            Submitter::Api { http, base, file } => {
                let (status, body) = submit_file(http, base, "part.dxf", file.clone()).await;
                assert!(status.is_success(), "submit answered {status}: {body}");
            }
            Submitter::Store { store, payload } => {
                let job = NewJob {
                    job_id: uuid::Uuid::new_v4().to_string(),
                    tenant_id: TENANT.into(),
                    payload: (**payload).clone(),
                    queue_name: QUEUE.into(),
                };
                store.submit(&job).await.expect("submit through JobStore");
            }
            Submitter::OldScript {
                conn,
                script,
                payload,
            } => old_submit(&mut conn.clone(), script, payload).await,
        }
    }
}

/// One submit through [`OLD_SUBMIT`], with the keys and arguments the API passed it.
async fn old_submit(conn: &mut ConnectionManager, script: &redis::Script, payload: &str) {
    let keys = Keys::new(w::PREFIX);
    let id = uuid::Uuid::new_v4().to_string();
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    let ttl: u64 = 3600;
    let (code, _active): (i64, u64) = script
        .key(keys.active())
        .key(keys.job(&id))
        .key(keys.payload(&id))
        .key(format!("{}:tenant:{TENANT}:jobs", w::PREFIX))
        .key(arq_keys::job(&id))
        .key(arq_keys::result(&id))
        .key(QUEUE)
        .arg(&id)
        .arg(TENANT)
        .arg(format!("{:.6}", now_ms as f64 / 1000.0))
        .arg("")
        .arg(ttl)
        .arg(u64::MAX / 2)
        .arg(payload)
        .arg(JobRecord::dedup2d(&id, now_ms).encode())
        .arg(ttl * 1000)
        .arg(now_ms)
        .arg(w::PREFIX)
        .invoke_async(conn)
        .await
        .expect("old submit script");
    assert_eq!(code, 1, "old submit script refused a job");
}

/// Runs `n` submits in blocks of `n / BLOCKS`, `concurrency` at a time; one row per block.
async fn run_blocks(
    submitter: &Submitter,
    conn: &mut ConnectionManager,
    n: usize,
    concurrency: usize,
) -> Vec<Value> {
    let block = (n / BLOCKS).max(1);
    let active_key = Keys::new(w::PREFIX).active();
    let mut rows = Vec::new();
    for b in 0..n.div_ceil(block) {
        let size = block.min(n - b * block);
        let next = Arc::new(AtomicUsize::new(0));
        let cpu0 = redis_cpu_s(conn).await;
        let commands0 = command_total(conn).await;
        let started = Instant::now();
        let tasks: Vec<_> = (0..concurrency.min(size))
            .map(|_| {
                let (s, next) = (submitter.clone(), next.clone());
                tokio::spawn(async move {
                    while next.fetch_add(1, Ordering::Relaxed) < size {
                        s.submit_one().await;
                    }
                })
            })
            .collect();
        for t in tasks {
            t.await.expect("submit task");
        }
        let wall = started.elapsed().as_secs_f64();
        let cpu = redis_cpu_s(conn).await - cpu0;
        let commands = command_total(conn).await - commands0;
        let pending = scard(conn, &active_key).await;
        assert_eq!(pending as usize, b * block + size, "every submit pending");
        rows.push(json!({
            "block": b + 1,
            "submits": size,
            "pending_after": pending,
            "submits_per_s": round1(size as f64 / wall),
            "redis_cpu_us_per_submit": round1(cpu * 1e6 / size as f64),
            "redis_commands_per_submit": round1(commands as f64 / size as f64),
        }));
    }
    rows
}

fn round1(x: f64) -> f64 {
    (x * 10.0).round() / 10.0
}

/// A pass's blocks and its last/first ratios.
fn summary(rows: Vec<Value>) -> Value {
    let f = |i: usize, k: &str| rows[i][k].as_f64().unwrap();
    let last = rows.len() - 1;
    json!({
        "last_over_first_rate": round3(f(last, "submits_per_s") / f(0, "submits_per_s")),
        "last_over_first_redis_commands": round3(
            f(last, "redis_commands_per_submit") / f(0, "redis_commands_per_submit")
        ),
        "last_over_first_redis_cpu": round3(
            f(last, "redis_cpu_us_per_submit") / f(0, "redis_cpu_us_per_submit").max(1e-9)
        ),
        "blocks": rows,
    })
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

/// Where the API under measurement stores uploads: tmpfs when there is one. Local storage
/// `fsync`s every upload, and on a disk that (about 10 ms, serialised) would be all the bench
/// measured; the subject here is the queue and Redis path.
fn upload_dir() -> tempfile::TempDir {
    let shm = std::path::Path::new("/dev/shm");
    if shm.is_dir() {
        tempfile::tempdir_in(shm).unwrap()
    } else {
        tempfile::tempdir().unwrap()
    }
}

/// Block figures over rounds: each block's median rate, commands and CPU per submit (the
/// summary's ratios are of those), and every round's rates.
fn summary_of_rounds(rounds: Vec<Vec<Value>>) -> Value {
    let blocks = rounds[0].len();
    let medians: Vec<Value> = (0..blocks)
        .map(|b| {
            let at: Vec<Value> = rounds.iter().map(|r| r[b].clone()).collect();
            json!({
                "block": at[0]["block"],
                "pending_after": at[0]["pending_after"],
                "submits": at[0]["submits"],
                "submits_per_s": median_of(&at, "submits_per_s"),
                "redis_commands_per_submit": median_of(&at, "redis_commands_per_submit"),
                "redis_cpu_us_per_submit": median_of(&at, "redis_cpu_us_per_submit"),
            })
        })
        .collect();
    let per_round: Vec<Value> = rounds
        .iter()
        .map(|r| {
            json!(r
                .iter()
                .map(|b| b["submits_per_s"].clone())
                .collect::<Vec<_>>())
        })
        .collect();
    let mut v = summary(medians);
    v["rounds"] = json!(rounds.len());
    v["submits_per_s_by_round"] = json!(per_round);
    v
}

/// The API and the submit script alone at one concurrency, `rounds` times each (alternating),
/// every pass on a fresh `redis-server`.
async fn passes_at(concurrency: usize, n: usize, file: &[u8], rounds: usize) -> Value {
    let (mut api, mut store) = (vec![], vec![]);
    for _ in 0..rounds {
        api.push(api_pass(concurrency, n, file).await);
        store.push(store_pass(concurrency, n).await);
    }
    json!({
        "concurrency": concurrency,
        "api": summary_of_rounds(api),
        "store_new": summary_of_rounds(store),
    })
}

/// One pass of the real API process.
async fn api_pass(concurrency: usize, n: usize, file: &[u8]) -> Vec<Value> {
    let max_jobs = (n + 1000).to_string();
    let redis = RedisServer::start();
    let dir = upload_dir();
    let api = ApiProcess::start(
        &redis.url(),
        dir.path(),
        &[("DEDUP2D_ASYNC_MAX_JOBS", &max_jobs)],
    );
    let s = Submitter::Api {
        http: reqwest::Client::new(),
        base: api.base.clone(),
        file: file.to_vec(),
    };
    run_blocks(&s, &mut redis.manager().await, n, concurrency).await
}

/// One pass of the submit script alone.
async fn store_pass(concurrency: usize, n: usize) -> Vec<Value> {
    let redis = RedisServer::start();
    let mut conn = redis.manager().await;
    let s = Submitter::Store {
        store: JobStore::new(conn.clone(), Keys::new(w::PREFIX), 3600, n as u64 + 1000),
        payload: Arc::new(store_payload()),
    };
    run_blocks(&s, &mut conn, n, concurrency).await
}

/// The capacity check before the change, on the same payload: its cost is one `HGET` per pending
/// job, so it runs once (at the highest concurrency, as the issue measured it); Redis runs one
/// script at a time, so concurrency does not change its cost.
async fn old_baseline(concurrency: usize, n: usize, payload: &JobPayload) -> Value {
    let redis = RedisServer::start();
    let mut conn = redis.manager().await;
    let s = Submitter::OldScript {
        conn: conn.clone(),
        script: Arc::new(redis::Script::new(OLD_SUBMIT)),
        payload: Arc::new(serde_json::to_string(payload).unwrap()),
    };
    let mut v = summary(run_blocks(&s, &mut conn, n, concurrency).await);
    v["concurrency"] = json!(concurrency);
    v
}

/// The payload of the store passes: file_ref-only, as the API writes it.
fn store_payload() -> JobPayload {
    w::payload(
        Some(FileRef::Local {
            path: "job/0123_part.dxf".into(),
        }),
        None,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a benchmark: run bench/api-submit.sh"]
async fn api_submit_rate_as_pending_jobs_grow() {
    let n = env_or("DEDUP2D_BENCH_SUBMITS", 10_000);
    let concurrencies = env_list("DEDUP2D_BENCH_CONCURRENCY", "1,8,32");
    let rounds = env_or("DEDUP2D_BENCH_ROUNDS", 5).max(1);
    let file = small_dxf(1024);
    let mut results = Vec::new();
    for &c in &concurrencies {
        let r = passes_at(c, n, &file, rounds).await;
        eprintln!("{r}");
        results.push(r);
    }
    let top = *concurrencies.iter().max().unwrap();
    let old = old_baseline(top, n, &store_payload()).await;
    eprintln!("{old}");
    let rate = |v: &Value, b: usize| v["blocks"][b]["submits_per_s"].as_f64().unwrap();
    let cpu = |v: &Value, b: usize| v["blocks"][b]["redis_cpu_us_per_submit"].as_f64().unwrap();
    let new = &results
        .iter()
        .find(|r| r["concurrency"] == json!(top))
        .unwrap()["store_new"];
    let last = old["blocks"].as_array().unwrap().len() - 1;
    let out = json!({
        "benchmark": "API submit rate as pending jobs grow (no worker)",
        "command": "bench/api-submit.sh",
        "profile": std::env::var("DEDUP2D_BENCH_PROFILE").unwrap_or_else(|_| "dev".into()),
        "submits_per_pass": n,
        "rounds": rounds,
        "blocks_per_pass": BLOCKS,
        "file_bytes": file.len(),
        "target": "api: last block at least 0.9 of the first block's rate (medians over the rounds)",
        "results": results,
        "store_old": old,
        "new_over_old_at_last_block": {
            "concurrency": top,
            "rate": round3(rate(new, last) / rate(&old, last)),
            "redis_cpu_old_over_new": round3(cpu(&old, last) / cpu(new, last)),
            "redis_commands_old_over_new": round3(
                old["blocks"][last]["redis_commands_per_submit"].as_f64().unwrap()
                    / new["blocks"][last]["redis_commands_per_submit"].as_f64().unwrap()
            ),
        },
    });
    let text = serde_json::to_string_pretty(&out).unwrap();
    println!("{text}");
    let path = crate::support::bench::bench_result_path("api-submit.json");
    std::fs::write(&path, text + "\n").unwrap();
    eprintln!("wrote {}", path.display());
}
