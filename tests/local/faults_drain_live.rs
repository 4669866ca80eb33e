//! Fault: the operator's drain check against a Redis that serves live traffic. A real
//! `dedup2d api` and `dedup2d worker` run steady submits (file_ref-only, every job run to the end)
//! on a Redis preloaded with many payload keys, legacy ones among them and some from 10 MiB
//! files, while the drain check (`observe_legacy_payloads`, then `observe_active_jobs`) runs in a
//! loop. No API or worker Redis call may time out (their connections use short response
//! timeouts): no error answer from the API, no failed job, no timeout in the worker's log; every
//! submitted job completes, and every drain pass counts exactly the legacy payloads loaded. A third
//! client pinging every millisecond prints its worst round trip (printed, never asserted).
//! Reduced size in the normal run; `DEDUP2D_FAULTS=full` (hack/faults.sh) loads 20,000 payloads
//! and 20 of 10 MiB and submits 600 jobs.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::support::api::{submit_file, ApiProcess};
use crate::support::faults::{fault_count, record_fault_counts};
use crate::support::measure::{load_payload_mix, pinger};
use crate::support::redis::RedisServer;
use crate::support::worker::{self as w, WorkerProc};
use dedup2d::contract::keys::Keys;
use dedup2d::contract::store::JobStatus;
use dedup2d::operator::drain::{observe_active_jobs, observe_legacy_payloads};
use dedup2d::operator::found::MAX_FOUND_KEYS;
use serde_json::json;

/// The operator's SCAN batch.
const BATCH: usize = 500;

/// The steady traffic: one submit every this often.
const SUBMIT_EVERY: Duration = Duration::from_millis(15);

/// What the drain loop saw: passes made, and passes whose legacy count was not the loaded one.
#[derive(Default)]
struct DrainLoop {
    passes: u64,
    miscounted: u64,
    active_seen_max: u64,
}

/// Runs the drain check, payload scan then active-set scan, until `stop`.
async fn drain_loop(url: String, legacy: u64, stop: Arc<AtomicBool>) -> DrainLoop {
    // The operator's connection settings (operator::observe): a 10 s response timeout.
    let config = redis::aio::ConnectionManagerConfig::new()
        .set_response_timeout(Some(Duration::from_secs(10)));
    let mut conn = redis::Client::open(url)
        .unwrap()
        .get_connection_manager_with_config(config)
        .await
        .unwrap();
    let keys = Keys::new(w::PREFIX);
    let mut seen = DrainLoop::default();
    while !stop.load(Ordering::Relaxed) {
        let f = observe_legacy_payloads(&mut conn, &keys, BATCH, MAX_FOUND_KEYS)
            .await
            .expect("drain check: payload scan");
        let a = observe_active_jobs(&mut conn, &keys, BATCH, MAX_FOUND_KEYS)
            .await
            .expect("drain check: active-set scan");
        seen.passes += 1;
        seen.miscounted += u64::from(f.legacy != legacy);
        seen.active_seen_max = seen.active_seen_max.max(a.active);
    }
    seen
}

/// Log lines of the worker that report a timeout.
fn timeout_lines(log: &str) -> Vec<&str> {
    log.lines()
        .filter(|l| {
            let l = l.to_ascii_lowercase();
            l.contains("timed out") || l.contains("timeout")
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn faults_drain_live_traffic_sees_no_redis_timeouts() {
    let small = fault_count(2_000, 20_000);
    let big = fault_count(2, 20);
    let submits = fault_count(40, 600);
    let redis = RedisServer::start();
    let mut conn = redis.manager().await;
    let (legacy, stored) =
        load_payload_mix(&mut conn, &Keys::new(w::PREFIX), (small, 5, big)).await;

    let dir = tempfile::tempdir().unwrap();
    let uploads = dir.path().join("uploads");
    let api = ApiProcess::start(&redis.url(), &uploads, &[]);
    let storage_dir = uploads.to_str().unwrap();
    let mut worker = WorkerProc::spawn(
        &redis.url(),
        dir.path(),
        "live",
        &w::env(&[
            ("DEDUP2D_FILE_STORAGE", "local"),
            ("DEDUP2D_FILE_STORAGE_DIR", storage_dir),
        ]),
    );
    worker.wait_healthy(Duration::from_secs(30)).await;

    let stop = Arc::new(AtomicBool::new(false));
    let drain = tokio::spawn(drain_loop(redis.url(), legacy, stop.clone()));
    let pings = pinger(redis.url(), stop.clone());

    let http = reqwest::Client::new();
    let drawing = b"0\nSECTION\n2\nENTITIES\n0\nLINE\n0\nENDSEC\n0\nEOF\n";
    let (mut ids, mut refused) = (Vec::new(), Vec::new());
    let mut tick = tokio::time::interval(SUBMIT_EVERY);
    for _ in 0..submits {
        tick.tick().await;
        let (status, body) = submit_file(&http, &api.base, "part.dxf", drawing.to_vec()).await;
        match body["job_id"].as_str() {
            Some(id) if status.is_success() => ids.push(id.to_string()),
            _ => refused.push(format!("{status}: {body}")),
        }
    }
    let store = w::store(conn.clone());
    let done = w::wait_finished(&store, &ids, Duration::from_secs(300)).await;
    stop.store(true, Ordering::Relaxed);
    let seen = drain.await.unwrap();
    let pings = pings.await.unwrap();
    let (worst_ping, ping_count) = (pings.worst, pings.count);

    let failed: Vec<String> = done
        .values()
        .filter(|v| v.status != JobStatus::Completed)
        .map(|v| format!("{}: {:?} {:?}", v.job_id, v.status, v.error))
        .collect();
    let api_errors = w::metric(
        &reqwest::get(api.url("/metrics"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap(),
        "dedup2d_jobs_submitted_total{outcome=\"error\"}",
    );
    let log = worker.log();
    let worker_timeouts = timeout_lines(&log);
    record_fault_counts(
        "drain_live",
        &json!({
            "payload_keys_loaded": small + big,
            "ten_mib_payloads": big,
            "legacy_loaded": legacy,
            "stored_bytes": stored,
            "submitted": submits,
            "accepted": ids.len(),
            "api_error_answers": refused.len(),
            "api_submit_errors_metric": api_errors,
            "completed": done.len() - failed.len(),
            "failed": failed.len(),
            "worker_timeout_log_lines": worker_timeouts.len(),
            "drain_passes": seen.passes,
            "drain_passes_miscounted": seen.miscounted,
            "drain_active_seen_max": seen.active_seen_max,
            "pings": ping_count,
            "worst_ping_ms": worst_ping.as_secs_f64() * 1e3,
        }),
    );
    assert!(refused.is_empty(), "the API refused submits: {refused:?}");
    assert_eq!(api_errors, 0.0, "the API counted failed submits");
    assert!(failed.is_empty(), "jobs did not complete: {failed:?}");
    assert!(
        worker_timeouts.is_empty(),
        "the worker logged timeouts: {worker_timeouts:?}"
    );
    assert!(
        seen.passes > 0,
        "the drain check never finished a pass during the traffic"
    );
    assert_eq!(
        seen.miscounted, 0,
        "a drain pass miscounted the legacy payloads"
    );
}
