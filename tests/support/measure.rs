//! What the measurements under `bench/` share: their size knobs, Redis's own counters, a client
//! that pings Redis every millisecond, and the drain's payload mix.

/// A size knob of a measurement: the number in env var `name`, else `default`.
pub fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name)
        .map(|v| v.parse().unwrap_or_else(|_| panic!("{name}: a number")))
        .unwrap_or(default)
}

/// One section of `INFO` (`cpu`, `memory`, `commandstats`, ...).
pub async fn info_section(conn: &mut redis::aio::ConnectionManager, section: &str) -> String {
    redis::cmd("INFO")
        .arg(section)
        .query_async(conn)
        .await
        .unwrap()
}

/// Redis CPU seconds so far (`INFO cpu`: `used_cpu_sys` + `used_cpu_user`).
pub async fn redis_cpu_s(conn: &mut redis::aio::ConnectionManager) -> f64 {
    info_section(conn, "cpu")
        .await
        .lines()
        .filter_map(|l| {
            l.strip_prefix("used_cpu_sys:")
                .or_else(|| l.strip_prefix("used_cpu_user:"))
        })
        .map(|v| v.trim().parse::<f64>().unwrap())
        .sum()
}

/// A list knob of a measurement: the comma-separated numbers in env var `name`, else `default`.
pub fn env_list(name: &str, default: &str) -> Vec<usize> {
    std::env::var(name)
        .unwrap_or_else(|_| default.into())
        .split(',')
        .map(|s| {
            s.trim()
                .parse()
                .unwrap_or_else(|_| panic!("{name}: comma-separated numbers"))
        })
        .collect()
}

/// What a pinging client saw.
#[derive(Debug, Clone, Copy, Default)]
pub struct Pings {
    pub worst: std::time::Duration,
    pub count: u64,
    /// Round trips over 10 ms (the issue's stall bound).
    pub over_10ms: u64,
}

/// A client pinging Redis every millisecond until `stop`. It runs on a thread of its own with a
/// blocking connection, so that the measuring side's async work (parsing large replies, say)
/// cannot hold a ping up: what it sees is Redis's latency and the scheduler's.
pub fn pinger(
    url: String,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> tokio::task::JoinHandle<Pings> {
    use std::time::{Duration, Instant};
    tokio::task::spawn_blocking(move || {
        // No timeout: a ping held up by a blocked Redis is the figure, not an error.
        let mut conn = redis::Client::open(url).unwrap().get_connection().unwrap();
        let mut seen = Pings::default();
        while !stop.load(std::sync::atomic::Ordering::Relaxed) {
            let t = Instant::now();
            let _: String = redis::cmd("PING").query(&mut conn).unwrap();
            let took = t.elapsed();
            seen.worst = seen.worst.max(took);
            seen.count += 1;
            seen.over_10ms += u64::from(took > Duration::from_millis(10));
            std::thread::sleep(Duration::from_millis(1));
        }
        seen
    })
}

/// A payload as the Python API's `json.dumps` writes it: its member order (`file_bytes_b64` last)
/// and its `", "` / `": "` separators, with `b64_bytes` of base64 when above zero.
fn mix_payload(i: usize, b64_bytes: usize) -> String {
    let mut p = format!(
        r#"{{"tenant_id": "t", "file_name": "f{i}.dxf", "content_type": "application/octet-stream", "file_ref": {{"backend": "local", "path": "j{i}/f{i}.dxf"}}, "query_geom": null, "request_params": {{}}, "callback_url": null, "render_required": true"#
    );
    if b64_bytes > 0 {
        p.push_str(r#", "file_bytes_b64": ""#);
        p.push_str(&"QUJD".repeat(b64_bytes / 4));
        p.push('"');
    }
    p.push('}');
    p
}

/// Loads `n` small payload keys (one in `dual_every` dual-write, 1–100 KiB of base64, the rest
/// file_ref-only; one in seven of the dual-write ones and one in eleven of the others without a
/// TTL) and `big` dual-write ones from 10 MiB files (no TTL), as the drain sees them; returns the
/// legacy payloads and the bytes stored.
pub async fn load_payload_mix(
    conn: &mut redis::aio::ConnectionManager,
    keys: &dedup2d::contract::keys::Keys,
    (n, dual_every, big): (usize, usize, usize),
) -> (u64, u64) {
    let (mut legacy, mut bytes) = (0u64, 0u64);
    for chunk in (0..n).collect::<Vec<_>>().chunks(500) {
        let mut pipe = redis::pipe();
        for &i in chunk {
            let b64 = if i % dual_every == 0 {
                (1 + (i / dual_every) % 100) * 1024
            } else {
                0
            };
            let p = mix_payload(i, b64);
            legacy += u64::from(b64 > 0);
            bytes += p.len() as u64;
            let key = keys.payload(&format!("s{i}"));
            let forever = if b64 > 0 { i % 7 == 0 } else { i % 11 == 0 };
            if forever {
                pipe.set(key, p).ignore();
            } else {
                pipe.set_ex(key, p, 3600).ignore();
            }
        }
        let _: () = pipe.query_async(conn).await.unwrap();
    }
    for i in 0..big {
        let p = mix_payload(i, 10 << 20);
        bytes += p.len() as u64;
        legacy += 1;
        let _: () = redis::cmd("SET")
            .arg(keys.payload(&format!("b{i}")))
            .arg(p)
            .query_async(conn)
            .await
            .unwrap();
    }
    (legacy, bytes)
}

/// The median of field `key` over `rows` (the upper one of an even count), for figures taken
/// over several rounds.
pub fn median_of(rows: &[serde_json::Value], key: &str) -> f64 {
    let mut v: Vec<f64> = rows
        .iter()
        .map(|r| {
            r[key]
                .as_f64()
                .unwrap_or_else(|| panic!("{key} is not a number in {r}"))
        })
        .collect();
    assert!(!v.is_empty(), "no rows to take the median of {key} from");
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}
