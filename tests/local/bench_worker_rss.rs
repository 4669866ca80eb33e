//! The worker's peak memory for one job, by file size and payload format: not a test (it is
//! `#[ignore]`d and asserts nothing timed), but the measurement `bench/worker-rss.sh` runs. Each
//! measurement starts a fresh `dedup2d worker`, reads its idle `VmHWM`, runs one job and reads
//! `VmHWM` again; the JSON goes to `bench/results/worker-rss.json` with the ratios to the file.

use std::time::Duration;

use crate::support::redis::RedisServer;
use crate::support::worker::{self as w, WorkerProc};
use bytes::Bytes;
use dedup2d::contract::payload::payload_bytes_for_upload;
use dedup2d::contract::store::JobStatus;
use dedup2d::storage::{FileStorage, LocalStorage};
use serde_json::{json, Value};

const MIB: u64 = 1 << 20;

/// `VmHWM` (peak resident set) of a process, in KiB.
fn vm_hwm_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("read /proc status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM in /proc/PID/status")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a benchmark: run bench/worker-rss.sh"]
async fn worker_peak_rss_per_job() {
    let redis = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let storage = LocalStorage::new(dir.path().join("uploads")).unwrap();
    // The submitting side writes payloads of hundreds of MiB in one call: no response timeout.
    let conn = redis::Client::open(redis.url())
        .unwrap()
        .get_connection_manager_with_config(
            redis::aio::ConnectionManagerConfig::new().set_response_timeout(None),
        )
        .await
        .unwrap();
    let store = w::store(conn.clone());
    let sizes: Vec<u64> = std::env::var("DEDUP2D_BENCH_SIZES_MIB")
        .unwrap_or_else(|_| "10,50,200".into())
        .split(',')
        .map(|s| s.trim().parse().expect("sizes in MiB"))
        .collect();
    let max = *sizes.iter().max().unwrap() * MIB;
    let cap = payload_bytes_for_upload(max).to_string();
    let mut rows = Vec::new();
    for &mib in &sizes {
        for format in ["b64_only", "file_ref_only"] {
            let data: Vec<u8> = (0..mib * MIB).map(|i| (i % 251) as u8).collect();
            let id = uuid::Uuid::new_v4().to_string();
            let payload = if format == "b64_only" {
                w::payload(None, Some(&data))
            } else {
                let r = storage
                    .save(&id, "part.dxf", "application/dxf", Bytes::from(data))
                    .await
                    .unwrap();
                w::payload(Some(r), None)
            };
            let mut worker = WorkerProc::spawn(
                &redis.url(),
                dir.path(),
                "rss",
                &w::env(&[
                    ("DEDUP2D_FILE_STORAGE", "local"),
                    (
                        "DEDUP2D_FILE_STORAGE_DIR",
                        dir.path().join("uploads").to_str().unwrap(),
                    ),
                    ("DEDUP2D_WORKER_MAX_PAYLOAD_BYTES", &cap),
                    ("DEDUP2D_ASYNC_JOB_TIMEOUT_SECONDS", "600"),
                ]),
            );
            worker.wait_healthy(Duration::from_secs(30)).await;
            let idle = vm_hwm_kib(worker.pid());
            w::submit_as(&store, &id, payload).await;
            let done =
                w::wait_finished(&store, std::slice::from_ref(&id), Duration::from_secs(900)).await;
            assert_eq!(done[&id].status, JobStatus::Completed, "{:?}", done[&id]);
            let peak = vm_hwm_kib(worker.pid());
            let file_kib = mib * 1024;
            let row = json!({
                "format": format,
                "file_mib": mib,
                "idle_hwm_kib": idle,
                "peak_hwm_kib": peak,
                "peak_over_file": round2(peak as f64 / file_kib as f64),
                "growth_over_file": round2((peak - idle) as f64 / file_kib as f64),
            });
            eprintln!("{row}");
            rows.push(row);
            worker.sigkill();
            let _: () = redis::cmd("FLUSHDB")
                .query_async(&mut conn.clone())
                .await
                .unwrap();
        }
    }
    let out: Value = json!({
        "benchmark": "worker peak RSS (VmHWM) for one job",
        "command": "bench/worker-rss.sh",
        "profile": std::env::var("DEDUP2D_BENCH_PROFILE").unwrap_or_else(|_| "dev".into()),
        "max_payload_bytes": cap.parse::<u64>().unwrap(),
        "note": "growth_over_file = (peak - idle) / file size; b64_only payloads are 4/3 of the file",
        "results": rows,
    });
    let path = crate::support::bench::bench_result_path("worker-rss.json");
    std::fs::write(&path, serde_json::to_string_pretty(&out).unwrap() + "\n").unwrap();
    eprintln!("wrote {}", path.display());
}

fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}
