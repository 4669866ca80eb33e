//! The drain check's cost on Redis: not a test (it is `#[ignore]`d and asserts nothing timed), but
//! the measurement `bench/drain.sh` runs. One private `redis-server` is loaded with a mix of
//! payloads in the Python API's layout (file_ref-only, dual-write with 1–100 KiB of base64, some
//! without a TTL, a few of 10 MiB), then four passes over the same keys run side by side: the
//! operator's bounded check (`operator::drain`), the naive approach that moves every payload to the
//! client, the first Lua check (which `GET`s every payload into Lua; its Lua is kept here only) and
//! a bare `SCAN`. Each pass reports Redis CPU (`INFO cpu` delta), bytes moved (`INFO stats` delta),
//! bytes examined, wall time, the longest single command (slow log), and the worst round trip a
//! second client sees pinging every 1 ms. The JSON goes to `bench/results/$DEDUP2D_BENCH_NAME.json`
//! (default `drain`) with the ratios.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use crate::support::measure::{env_or, load_payload_mix, pinger, redis_cpu_s};
use crate::support::redis::RedisServer;
use dedup2d::contract::keys::Keys;
use dedup2d::contract::payload::is_legacy_payload;
use dedup2d::contract::scan::Scan;
use dedup2d::operator::drain::{
    observe_legacy_payloads, CALL_BUDGET_BYTES, SCAN_BATCH as BATCH, WINDOW_BYTES,
};
use dedup2d::operator::found::MAX_FOUND_KEYS;
use redis::aio::ConnectionManager;
use serde_json::{json, Value};

/// The payload keys of `Keys::new("dedup2d")`.
const PATTERN: &str = "dedup2d:payload:*";

/// The check before bounded windows: `GET`s every payload of a batch into Lua.
const OLD_CHECK: &str = r#"
local function is_legacy(v)
  return string.find(v, '"file_bytes_b64"%s*:%s*"[^"]') ~= nil
end
local legacy, bytes = 0, 0
for _, key in ipairs(KEYS) do
  local v = redis.call('GET', key)
  if v then
    bytes = bytes + #v
    if is_legacy(v) then
      legacy = legacy + 1
      redis.call('PTTL', key)
    end
  end
end
return {legacy, bytes}
"#;

/// The longest command in the slow log, which logs every command (see `drain_check_cost_on_redis`):
/// its time (µs) and its name with its first two arguments.
async fn longest_command(conn: &mut ConnectionManager) -> (i64, String) {
    let entries: Vec<Vec<redis::Value>> = redis::cmd("SLOWLOG")
        .arg("GET")
        .arg(1_000_000)
        .query_async(conn)
        .await
        .unwrap();
    let args = |e: &[redis::Value]| match e.get(3) {
        Some(redis::Value::Array(args)) => args
            .iter()
            .take(3)
            .filter_map(|a| redis::from_redis_value::<String>(a.clone()).ok())
            .collect::<Vec<_>>()
            .join(" "),
        _ => String::new(),
    };
    // The measurement's own commands (a `SLOWLOG RESET` frees the last pass's log) are not the pass.
    let ours = |command: &str| {
        let name = command.split(' ').next().unwrap_or("").to_ascii_uppercase();
        ["SLOWLOG", "INFO", "SCRIPT", "CONFIG", "PING"].contains(&name.as_str())
    };
    entries
        .iter()
        .filter_map(|e| match e.get(2) {
            Some(redis::Value::Int(us)) => Some((*us, args(e))),
            _ => None,
        })
        .filter(|(_, command)| !ours(command))
        .max_by_key(|(us, _)| *us)
        .unwrap_or_default()
}

/// Bytes Redis received and sent so far (`INFO stats`).
async fn redis_net_bytes(conn: &mut ConnectionManager) -> u64 {
    let info: String = redis::cmd("INFO")
        .arg("stats")
        .query_async(conn)
        .await
        .unwrap();
    info.lines()
        .filter_map(|l| {
            l.strip_prefix("total_net_input_bytes:")
                .or_else(|| l.strip_prefix("total_net_output_bytes:"))
        })
        .map(|v| v.trim().parse::<u64>().unwrap())
        .sum()
}

/// A `PING` and its `+PONG` reply on the wire: the pinger's share of the bytes moved.
const PING_WIRE_BYTES: u64 = 14 + 7;

/// Runs `pass` while a second client pings every 1 ms; returns what it counted (legacy payloads,
/// or keys seen by the bare SCAN) and examined, the Redis CPU
/// it cost, its wall time and the worst ping round trip.
async fn measure<F, Fut>(redis: &RedisServer, conn: &mut ConnectionManager, pass: F) -> Value
where
    F: FnOnce(ConnectionManager) -> Fut,
    Fut: std::future::Future<Output = (u64, u64)>,
{
    let stop = Arc::new(AtomicBool::new(false));
    let pings = pinger(redis.url(), stop.clone());
    // A fresh Lua interpreter: an earlier pass's garbage (the old check's copies of whole
    // payloads) is not collected during this one.
    let _: () = redis::cmd("SCRIPT")
        .arg("FLUSH")
        .arg("SYNC")
        .query_async(conn)
        .await
        .unwrap();
    let _: () = redis::cmd("SLOWLOG")
        .arg("RESET")
        .query_async(conn)
        .await
        .unwrap();
    let net0 = redis_net_bytes(conn).await;
    let cpu0 = redis_cpu_s(conn).await;
    let started = Instant::now();
    let (counted, examined) = pass(conn.clone()).await;
    let wall = started.elapsed();
    let cpu = redis_cpu_s(conn).await - cpu0;
    stop.store(true, Ordering::Relaxed);
    let pings = pings.await.unwrap();
    let (worst, count) = (pings.worst, pings.count);
    let moved = (redis_net_bytes(conn).await - net0).saturating_sub(count * PING_WIRE_BYTES);
    let (longest, longest_name) = longest_command(conn).await;
    json!({"counted": counted, "bytes_examined": examined, "bytes_moved": moved,
           "redis_cpu_s": cpu, "wall_s": wall.as_secs_f64(),
           "worst_ping_ms": worst.as_secs_f64() * 1e3, "pings": count,
           "pings_over_10ms": pings.over_10ms,
           "longest_command_ms": longest as f64 / 1e3, "longest_command": longest_name})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a benchmark: run bench/drain.sh"]
async fn drain_check_cost_on_redis() {
    let n = env_or("DEDUP2D_BENCH_KEYS", 20_000);
    let dual_every = env_or("DEDUP2D_BENCH_DUAL_EVERY", 5).max(1);
    let big = env_or("DEDUP2D_BENCH_BIG", 50);
    let redis = RedisServer::start();
    // The old check holds Redis for seconds: no response timeout on the measuring side.
    let mut conn = redis::Client::open(redis.url())
        .unwrap()
        .get_connection_manager_with_config(
            redis::aio::ConnectionManagerConfig::new().set_response_timeout(None),
        )
        .await
        .unwrap();
    let keys = Keys::new("dedup2d");
    let (legacy, stored) = load_payload_mix(&mut conn, &keys, (n, dual_every, big)).await;
    // Every command goes to the slow log, so each pass can report its longest one.
    for (name, value) in [
        ("slowlog-log-slower-than", "0"),
        ("slowlog-max-len", "1000000"),
    ] {
        let _: () = redis::cmd("CONFIG")
            .arg("SET")
            .arg(name)
            .arg(value)
            .query_async(&mut conn)
            .await
            .unwrap();
    }

    let old = measure(&redis, &mut conn, |mut c| async move {
        let script = redis::Script::new(OLD_CHECK);
        let (mut legacy, mut bytes) = (0, 0);
        let mut scan = Scan::keys(PATTERN, BATCH);
        while let Some(found) = scan.next_batch(&mut c).await.unwrap() {
            let mut inv = script.prepare_invoke();
            for k in &found {
                inv.key(k);
            }
            let (l, b): (u64, u64) = inv.invoke_async(&mut c).await.unwrap();
            (legacy, bytes) = (legacy + l, bytes + b);
        }
        (legacy, bytes)
    })
    .await;
    let new = measure(&redis, &mut conn, |mut c| async move {
        let f = observe_legacy_payloads(&mut c, &keys, BATCH, MAX_FOUND_KEYS)
            .await
            .unwrap();
        (f.legacy, f.bytes_inspected)
    })
    .await;
    let naive = measure(&redis, &mut conn, |mut c| async move {
        let (mut legacy, mut bytes) = (0, 0);
        let mut scan = Scan::keys(PATTERN, BATCH);
        while let Some(found) = scan.next_batch(&mut c).await.unwrap() {
            let values: Vec<Option<String>> = redis::cmd("MGET")
                .arg(&found)
                .query_async(&mut c)
                .await
                .unwrap();
            for v in values.iter().flatten() {
                bytes += v.len() as u64;
                legacy += u64::from(is_legacy_payload(v));
            }
        }
        (legacy, bytes)
    })
    .await;
    let scan = measure(&redis, &mut conn, |mut c| async move {
        let mut s = Scan::keys(PATTERN, BATCH);
        let mut seen = 0;
        while let Some(found) = s.next_batch(&mut c).await.unwrap() {
            seen += found.len() as u64;
        }
        (seen, 0)
    })
    .await;
    assert_eq!(old["counted"], json!(legacy), "old check miscounted");
    assert_eq!(naive["counted"], json!(legacy), "naive check miscounted");
    assert_eq!(new["counted"], json!(legacy), "bounded check miscounted");
    let keys_total = (n + big) as f64;
    let ratio = |a: &Value, b: &Value, f: &str| a[f].as_f64().unwrap() / b[f].as_f64().unwrap();
    let per_key = |v: &Value| v["bytes_moved"].as_f64().unwrap() / keys_total;
    let out = json!({
        "keys": n + big, "small_keys": n, "dual_write_every": dual_every, "ten_mib_keys": big,
        "legacy": legacy, "stored_bytes": stored, "scan_batch": BATCH,
        "window_bytes": WINDOW_BYTES, "call_budget_bytes": CALL_BUDGET_BYTES,
        "redis_pinned_to_cpu": std::env::var("DEDUP2D_BENCH_REDIS_CPU").ok(),
        "old_check": old, "naive_get": naive, "bounded_check": new, "bare_scan": scan,
        "bytes_moved_per_key": {
            "bounded_check": per_key(&new), "bare_scan": per_key(&scan),
            "naive_get": per_key(&naive), "old_check": per_key(&old),
        },
        "ratios": {
            "redis_cpu_bounded_over_bare_scan": ratio(&new, &scan, "redis_cpu_s"),
            "redis_cpu_naive_over_bare_scan": ratio(&naive, &scan, "redis_cpu_s"),
            "redis_cpu_old_over_bare_scan": ratio(&old, &scan, "redis_cpu_s"),
            "redis_cpu_naive_over_bounded": ratio(&naive, &new, "redis_cpu_s"),
            "redis_cpu_old_over_bounded": ratio(&old, &new, "redis_cpu_s"),
            "bytes_moved_naive_over_bounded": ratio(&naive, &new, "bytes_moved"),
            "wall_bounded_over_bare_scan": ratio(&new, &scan, "wall_s"),
            "wall_naive_over_bounded": ratio(&naive, &new, "wall_s"),
            "worst_ping_old_over_bounded": ratio(&old, &new, "worst_ping_ms"),
            "worst_ping_naive_over_bounded": ratio(&naive, &new, "worst_ping_ms"),
            "longest_command_old_over_bounded": ratio(&old, &new, "longest_command_ms"),
        },
    });
    let text = serde_json::to_string_pretty(&out).unwrap();
    println!("{text}");
    let path = crate::support::bench::named_result_path("drain");
    std::fs::write(path, text + "\n").unwrap();
}
