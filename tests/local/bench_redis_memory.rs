//! Redis memory per pending job by payload format: not a test (it is `#[ignore]`d), but the
//! measurement `bench/redis-memory.sh` runs. For each file size and format, a fresh
//! `redis-server` takes K submits (no worker, so every job stays pending); the figure is the
//! settled `INFO memory` `used_memory` growth over K (after one warm-up job), with `MEMORY USAGE`
//! of each key kind:
//! - **file_ref_only**: the real `dedup2d api`, dual-write off (the file goes to local storage);
//! - **dual_write**: the real `dedup2d api` with `DEDUP2D_JOB_PAYLOAD_INCLUDE_BYTES_B64=1` (the
//!   file in storage and as `file_bytes_b64` in the payload);
//! - **legacy**: the payload the Python API wrote before `file_ref` (docs/contract.md's payload
//!   with `file_bytes_b64` and no `file_ref`), submitted through the same submit script
//!   (`JobStore::submit`) so that only the payload differs.
//!
//! The JSON goes to `bench/results/redis-memory.json` with the ratios to file_ref_only.

use std::time::Duration;

use crate::support::api::{submit_file, ApiProcess};
use crate::support::measure::{env_list, env_or, info_section};
use crate::support::redis::RedisServer;
use crate::support::worker as w;
use dedup2d::contract::keys::{arq as arq_keys, Keys};
use dedup2d::contract::payload::JobPayload;
use redis::aio::ConnectionManager;
use serde_json::{json, Value};

/// How the jobs of one measurement are submitted.
#[derive(Clone, Copy, PartialEq, Debug)]
enum Format {
    FileRefOnly,
    DualWrite,
    Legacy,
}

impl Format {
    const ALL: [Format; 3] = [Format::FileRefOnly, Format::DualWrite, Format::Legacy];

    fn label(self) -> &'static str {
        match self {
            Format::FileRefOnly => "file_ref_only",
            Format::DualWrite => "dual_write",
            Format::Legacy => "legacy",
        }
    }

    /// Does its payload carry `file_ref`, `file_bytes_b64`?
    fn members(self) -> (bool, bool) {
        match self {
            Format::FileRefOnly => (true, false),
            Format::DualWrite => (true, true),
            Format::Legacy => (false, true),
        }
    }
}

async fn used_memory(conn: &mut ConnectionManager) -> i64 {
    info_section(conn, "memory")
        .await
        .lines()
        .find_map(|l| l.strip_prefix("used_memory:"))
        .map(|v| v.trim().parse().unwrap())
        .expect("used_memory in INFO memory")
}

/// `used_memory` once it has settled: Redis shrinks an idle client's query buffer (which held the
/// last payload it received) only in its periodic cron, so a reading right after a large submit
/// counts that buffer too.
async fn settled_used_memory(conn: &mut ConnectionManager) -> i64 {
    let mut last = used_memory(conn).await;
    for _ in 0..20 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let now = used_memory(conn).await;
        if (now - last).abs() < 16 * 1024 {
            return now;
        }
        last = now;
    }
    last
}

/// `MEMORY USAGE key SAMPLES 0` (every element counted); 0 for a missing key.
async fn memory_usage(conn: &mut ConnectionManager, key: &str) -> u64 {
    let n: Option<u64> = redis::cmd("MEMORY")
        .arg("USAGE")
        .arg(key)
        .arg("SAMPLES")
        .arg(0)
        .query_async(conn)
        .await
        .unwrap();
    n.unwrap_or(0)
}

/// Submits one warm-up job (its connections opened, the submit script loaded) and then `k` jobs of
/// `file` in `format`, through the API (or the store, for legacy); every id, and the settled
/// `used_memory` growth per job over the `k`.
async fn submit_jobs(
    format: Format,
    redis: &RedisServer,
    conn: &mut ConnectionManager,
    file: &[u8],
    k: usize,
) -> (Vec<String>, i64) {
    let dir = tempfile::tempdir().unwrap();
    let b64_limit = (file.len() * 2).to_string();
    let env: Vec<(&str, &str)> = match format {
        Format::FileRefOnly => vec![],
        Format::DualWrite => vec![
            ("DEDUP2D_JOB_PAYLOAD_INCLUDE_BYTES_B64", "1"),
            ("DEDUP2D_JOB_PAYLOAD_BYTES_B64_MAX_BYTES", &b64_limit),
        ],
        Format::Legacy => {
            let store = w::store(conn.clone());
            let mut ids = vec![w::submit(&store, legacy_payload(file)).await];
            let before = settled_used_memory(conn).await;
            for _ in 0..k {
                ids.push(w::submit(&store, legacy_payload(file)).await);
            }
            return (ids, (settled_used_memory(conn).await - before) / k as i64);
        }
    };
    let api = ApiProcess::start(&redis.url(), dir.path(), &env);
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(120))
        .build()
        .unwrap();
    let submit = || async {
        let (status, body) = submit_file(&http, &api.base, "part.dxf", file.to_vec()).await;
        assert!(status.is_success(), "submit answered {status}: {body}");
        body["job_id"].as_str().expect("job_id").to_string()
    };
    let mut ids = vec![submit().await];
    let before = settled_used_memory(conn).await;
    for _ in 0..k {
        ids.push(submit().await);
    }
    (ids, (settled_used_memory(conn).await - before) / k as i64)
}

/// The Python API's payload before `file_ref`: the file only as `file_bytes_b64`.
fn legacy_payload(file: &[u8]) -> JobPayload {
    w::payload(None, Some(file))
}

/// Average `MEMORY USAGE` over the jobs of each per-job key kind (and the payload's length: its
/// `MEMORY USAGE` is the allocator's size class, which can hide a small difference), and of the keys all jobs share
/// (active set, deadline index, sweep cursor, tenant index, queue) divided by the job count.
async fn key_kinds(conn: &mut ConnectionManager, ids: &[String]) -> Value {
    let keys = Keys::new(w::PREFIX);
    let k = ids.len() as u64;
    let (mut hash, mut payload, mut arq, mut text) = (0, 0, 0, 0);
    for id in ids {
        hash += memory_usage(conn, &keys.job(id)).await;
        payload += memory_usage(conn, &keys.payload(id)).await;
        text += redis::cmd("STRLEN")
            .arg(keys.payload(id))
            .query_async::<u64>(conn)
            .await
            .unwrap();
        arq += memory_usage(conn, &arq_keys::job(id)).await;
    }
    let mut shared = 0;
    for key in [
        keys.active(),
        keys.active_deadlines(),
        keys.active_sweep(),
        format!(
            "{}:tenant:{}:jobs",
            w::PREFIX,
            dedup2d::api::auth::tenant_id(crate::support::api::KEY_A)
        ),
        format!("{}:tenant:{}:jobs", w::PREFIX, w::TENANT),
        w::QUEUE.to_string(),
    ] {
        shared += memory_usage(conn, &key).await;
    }
    json!({
        "job_hash": hash / k,
        "payload": payload / k,
        "payload_strlen": text / k,
        "arq_job": arq / k,
        "shared_keys_per_job": shared / k,
    })
}

/// The payload of `id` carries exactly the members `format` writes.
async fn check_format(conn: &mut ConnectionManager, format: Format, id: &str) {
    let raw: String = redis::cmd("GET")
        .arg(Keys::new(w::PREFIX).payload(id))
        .query_async(conn)
        .await
        .unwrap();
    let p: Value = serde_json::from_str(&raw).unwrap();
    let has = |m: &str| p.get(m).is_some_and(|v| !v.is_null());
    assert_eq!(
        (has("file_ref"), has("file_bytes_b64")),
        format.members(),
        "{format:?}: payload members"
    );
}

/// One measurement: a fresh `redis-server`, `k` jobs of `kib` KiB in `format`.
async fn measure(format: Format, kib: usize, k: usize) -> Value {
    let redis = RedisServer::start();
    let mut conn = redis.manager().await;
    let file: Vec<u8> = (0..kib * 1024).map(|i| (i % 251) as u8).collect();
    let (ids, per_job) = submit_jobs(format, &redis, &mut conn, &file, k).await;
    check_format(&mut conn, format, &ids[0]).await;
    let pending: u64 = redis::cmd("SCARD")
        .arg(Keys::new(w::PREFIX).active())
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(pending as usize, ids.len(), "every job pending");
    let kinds = key_kinds(&mut conn, &ids).await;
    let stored: u64 = ["job_hash", "payload", "arq_job", "shared_keys_per_job"]
        .iter()
        .map(|f| kinds[f].as_u64().unwrap())
        .sum();
    json!({
        "format": format.label(),
        "file_kib": kib,
        "jobs": k,
        "used_memory_per_job": per_job,
        "used_memory_per_job_over_file": ((per_job as f64 / file.len() as f64) * 1000.0).round() / 1000.0,
        "memory_usage_per_job": stored,
        "memory_usage": kinds,
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a benchmark: run bench/redis-memory.sh"]
async fn redis_memory_per_pending_job() {
    let k = env_or("DEDUP2D_BENCH_JOBS", 20);
    let sizes = env_list("DEDUP2D_BENCH_SIZES_KIB", "100,1024,10240");
    let mut rows = Vec::new();
    for &kib in &sizes {
        let mut by_format = Vec::new();
        for format in Format::ALL {
            let row = measure(format, kib, k).await;
            eprintln!("{row}");
            by_format.push(row);
        }
        let base = by_format[0]["used_memory_per_job"].as_f64().unwrap();
        for row in &mut by_format {
            let r = row["used_memory_per_job"].as_f64().unwrap() / base;
            row["over_file_ref_only"] = json!((r * 100.0).round() / 100.0);
        }
        rows.extend(by_format);
    }
    let out = json!({
        "benchmark": "Redis memory per pending job, by payload format",
        "command": "bench/redis-memory.sh",
        "jobs_per_measurement": k,
        "note": "used_memory_per_job = INFO memory used_memory delta / jobs; memory_usage = MEMORY USAGE (SAMPLES 0) per key kind, averaged; over_file_ref_only = used_memory_per_job / file_ref_only's at the same size",
        "results": rows,
    });
    let text = serde_json::to_string_pretty(&out).unwrap();
    println!("{text}");
    let path = crate::support::bench::bench_result_path("redis-memory.json");
    std::fs::write(&path, text + "\n").unwrap();
    eprintln!("wrote {}", path.display());
}
