//! `engine-bench`: the geometry index against brute force, in one run, on a private
//! redis-server. For each size it indexes that many drawings through the engine's real Redis
//! path (the same Lua registration and lookup the worker uses), then runs the same queries two
//! ways: through the LSH index (`lookup`: bucket probe, capped candidate fetch, sketch
//! comparison) and by brute force (the query's sketch against every indexed sketch, already in
//! memory; a lower bound on any scan). Reported: latency p50/p99 of both and their ratio,
//! candidates touched per query, the index's recall against brute force at the duplicate and
//! similar thresholds, and Redis memory per indexed drawing (INFO memory before and after).
//!
//! Drawings are generated as sets of geometric shingle hashes and sketched with the engine's
//! MinHash (`Sketch::from_shingles`) instead of writing and parsing DXF files; a fifth of them
//! (and most queries) are edited copies of an earlier drawing, so near duplicates exist at
//! every similarity.
//!
//! Usage: `bench/engine.sh` (release build; writes bench/results/engine.json), or
//! `cargo run --release --example engine-bench -- [--sizes 10000,100000] [--queries 400] [--out FILE]`.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine as _;
use dedup2d::contract::keys::Keys;
use dedup2d::worker::engine::drawing::{geometry_compare, lookup, ItemRecord};
use dedup2d::worker::engine::lsh_index::{BucketIndex, Family, Registration};
use dedup2d::worker::engine::minhash::{mix, Sketch, BANDS, ROWS_PER_BAND, SLOTS};
use futures::StreamExt;
use serde_json::{json, Value};

const TENANT: &str = "bench";
const SHINGLES: usize = 150;
const DUPLICATE: f64 = 0.95;
const SIMILAR: f64 = 0.8;
/// Queries also answered by scanning every record in Redis (slow: a few are enough).
const REDIS_SCAN_QUERIES: usize = 20;

/// A tiny deterministic generator (splitmix64), so every run indexes the same drawings.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(1);
        mix(self.0)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

fn fresh(rng: &mut Rng) -> Vec<u64> {
    (0..SHINGLES).map(|_| rng.next()).collect()
}

/// A copy of `of` with `edits` shingles replaced: Jaccard `(n - k) / (n + k)`.
fn edited(rng: &mut Rng, of: &[u64], edits: usize) -> Vec<u64> {
    let mut s = of.to_vec();
    for _ in 0..edits {
        let i = rng.below(s.len());
        s[i] = rng.next();
    }
    s
}

struct RedisProc {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl RedisProc {
    fn start() -> anyhow::Result<RedisProc> {
        let bin = std::env::var("DEDUP2D_REDIS_SERVER").unwrap_or_else(|_| "redis-server".into());
        let dir = tempfile::tempdir()?;
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let child = Command::new(&bin)
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", ""])
            .args(["--appendonly", "no"])
            .current_dir(dir.path())
            .stdout(Stdio::null())
            .spawn()
            .map_err(|e| {
                anyhow::anyhow!("cannot start {bin} ({e}): install redis-server (apt-get install -y redis-server) or set DEDUP2D_REDIS_SERVER")
            })?;
        Ok(RedisProc {
            child,
            port,
            _dir: dir,
        })
    }
}

impl Drop for RedisProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn used_memory(conn: &mut redis::aio::ConnectionManager) -> anyhow::Result<i64> {
    let info: String = redis::cmd("INFO").arg("memory").query_async(conn).await?;
    info.lines()
        .find_map(|l| l.strip_prefix("used_memory:"))
        .and_then(|v| v.trim().parse().ok())
        .ok_or_else(|| anyhow::anyhow!("INFO memory has no used_memory"))
}

fn record(i: usize, sketch: &Sketch) -> String {
    let r = ItemRecord {
        job_id: format!("drawing-{i}"),
        file_name: format!("drawing-{i}.dxf"),
        size: 40_000,
        indexed_at_ms: 1_700_000_000_000 + i as i64,
        file_hash: format!("{:064x}", i),
        fingerprint: format!("{:064x}", i),
        sketch: base64::engine::general_purpose::STANDARD.encode(sketch.to_bytes()),
    };
    serde_json::to_string(&r).expect("record serializes")
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn summary(mut v: Vec<f64>) -> Value {
    v.sort_by(f64::total_cmp);
    let mean = v.iter().sum::<f64>() / v.len() as f64;
    json!({"p50": round3(percentile(&v, 0.5)), "p99": round3(percentile(&v, 0.99)),
           "mean": round3(mean), "max": round3(*v.last().unwrap())})
}

fn round3(v: f64) -> f64 {
    (v * 1000.0).round() / 1000.0
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Registers every sketch through the engine's Lua path, 16 at a time; returns the seconds taken.
async fn build_index(index: &BucketIndex, sketches: &[Sketch]) -> anyhow::Result<f64> {
    let build = Instant::now();
    let inserts = futures::stream::iter(sketches.iter().enumerate().map(|(i, sk)| {
        let index = index.clone();
        async move {
            let buckets = sk.band_buckets();
            let job_id = format!("drawing-{i}");
            let reg = Registration {
                job_id: &job_id,
                record_json: record(i, sk),
                own_buckets: &buckets,
                register: true,
            };
            index
                .query(TENANT, Family::Geometry, &buckets, &reg)
                .await
                .map(|_| ())
        }
    }))
    .buffer_unordered(16)
    .collect::<Vec<_>>()
    .await;
    inserts.into_iter().collect::<Result<Vec<()>, _>>()?;
    Ok(build.elapsed().as_secs_f64())
}

/// The indexed drawings: fresh shingle sets, and 1 in 5 an edited copy of an earlier one.
fn generate(rng: &mut Rng, size: usize) -> Vec<Vec<u64>> {
    let mut sets: Vec<Vec<u64>> = Vec::with_capacity(size);
    for i in 0..size {
        let s = if i > 0 && rng.below(5) == 0 {
            let j = rng.below(i);
            let edits = rng.below(40);
            edited(rng, &sets[j], edits)
        } else {
            fresh(rng)
        };
        sets.push(s);
    }
    sets
}

/// A query: 1 in 5 unrelated; else an indexed drawing edited lightly (mostly duplicates) or
/// more (similar or less), half and half.
fn query_set(rng: &mut Rng, sets: &[Vec<u64>]) -> Vec<u64> {
    if rng.below(5) == 0 {
        return fresh(rng);
    }
    let j = rng.below(sets.len());
    let edits = if rng.below(2) == 0 {
        rng.below(5)
    } else {
        rng.below(45)
    };
    edited(rng, &sets[j], edits)
}

/// Reads every record of the geometry index with HSCAN and compares it: returns the matches.
async fn scan_all(
    mut conn: redis::aio::ConnectionManager,
    compare: &dedup2d::worker::engine::drawing::Compare<'_>,
) -> anyhow::Result<usize> {
    let [_, items, _, _] = BucketIndex::family_keys(&Keys::new("bench"), TENANT, Family::Geometry);
    let (mut cursor, mut matches) = (0u64, 0usize);
    loop {
        let (next, page): (u64, Vec<(u32, String)>) = redis::cmd("HSCAN")
            .arg(&items)
            .arg(cursor)
            .arg("COUNT")
            .arg(1000)
            .query_async(&mut conn)
            .await?;
        for (_, raw) in page {
            let r: ItemRecord = serde_json::from_str(&raw)?;
            if compare(&r).is_some_and(|(s, _, _)| s >= SIMILAR) {
                matches += 1;
            }
        }
        if next == 0 {
            return Ok(matches);
        }
        cursor = next;
    }
}

/// Per-query measurements of one size.
#[derive(Default)]
struct Tally {
    index_ms: Vec<f64>,
    brute_ms: Vec<f64>,
    /// Brute force as a stateless worker would have to do it: every record read from Redis.
    redis_scan_ms: Vec<f64>,
    touched: Vec<f64>,
    verified: Vec<f64>,
    /// Brute-force matches and those the index also answered, at [duplicate, similar].
    truth: [usize; 2],
    found: [usize; 2],
}

impl Tally {
    /// Runs one query through the index and by brute force.
    async fn query(
        &mut self,
        index: &BucketIndex,
        sketches: &[Sketch],
        set: Vec<u64>,
        q: usize,
    ) -> anyhow::Result<()> {
        let sketch = Sketch::from_shingles(set);
        let buckets = sketch.band_buckets();
        let job_id = format!("query-{q}");
        let reg = Registration {
            job_id: &job_id,
            record_json: String::new(),
            own_buckets: &buckets,
            register: false,
        };
        let compare = geometry_compare(sketch.clone(), job_id.clone());
        let t = Instant::now();
        let hit = lookup(index, TENANT, Family::Geometry, &buckets, &reg, &*compare).await?;
        self.index_ms.push(ms(t.elapsed()));
        self.touched.push(hit.touched as f64);
        self.verified.push(hit.scored.len() as f64);

        let t = Instant::now();
        let brute: Vec<(usize, f64)> = sketches
            .iter()
            .enumerate()
            .map(|(i, s)| (i, sketch.similarity(s)))
            .filter(|(_, s)| *s >= SIMILAR)
            .collect();
        self.brute_ms.push(ms(t.elapsed()));
        if q < REDIS_SCAN_QUERIES {
            let t = Instant::now();
            let n = scan_all(index.connection(), &*compare).await?;
            self.redis_scan_ms.push(ms(t.elapsed()));
            anyhow::ensure!(n == brute.len(), "the Redis scan and brute force disagree");
        }

        for (k, thr) in [DUPLICATE, SIMILAR].into_iter().enumerate() {
            let want: Vec<String> = brute
                .iter()
                .filter(|(_, s)| *s >= thr)
                .map(|(i, _)| format!("drawing-{i}"))
                .collect();
            self.truth[k] += want.len();
            self.found[k] += hit
                .scored
                .iter()
                .filter(|c| c.similarity >= thr && want.contains(&c.record.job_id))
                .count();
        }
        Ok(())
    }

    fn recall(&self, k: usize) -> f64 {
        if self.truth[k] == 0 {
            1.0
        } else {
            round3(self.found[k] as f64 / self.truth[k] as f64)
        }
    }
}

async fn run_size(
    conn: &mut redis::aio::ConnectionManager,
    size: usize,
    queries: usize,
) -> anyhow::Result<Value> {
    let _: () = redis::cmd("FLUSHALL").query_async(conn).await?;
    let index = BucketIndex::new(conn.clone(), Keys::new("bench"), 0);
    let mut rng = Rng(size as u64);
    let sets = generate(&mut rng, size);
    let sketches: Vec<Sketch> = sets
        .iter()
        .map(|s| Sketch::from_shingles(s.iter().copied()))
        .collect();

    let before = used_memory(conn).await?;
    let build_s = build_index(&index, &sketches).await?;
    let after = used_memory(conn).await?;

    let mut tally = Tally::default();
    for q in 0..queries {
        let set = query_set(&mut rng, &sets);
        tally.query(&index, &sketches, set, q).await?;
    }
    let index_summary = summary(std::mem::take(&mut tally.index_ms));
    let brute_summary = summary(std::mem::take(&mut tally.brute_ms));
    let scan_summary = summary(std::mem::take(&mut tally.redis_scan_ms));
    let ratio =
        |p: &str| round3(brute_summary[p].as_f64().unwrap() / index_summary[p].as_f64().unwrap());
    Ok(json!({
        "drawings": size,
        "queries": queries,
        "index_build_seconds": round3(build_s),
        "redis_memory_bytes_per_drawing": round3((after - before) as f64 / size as f64),
        "index_query_ms": index_summary,
        "brute_force_query_ms": brute_summary,
        "speedup_p50": ratio("p50"),
        "speedup_p99": ratio("p99"),
        "brute_force_redis_scan_ms": scan_summary,
        "brute_force_redis_scan_queries": REDIS_SCAN_QUERIES.min(queries),
        "speedup_vs_redis_scan_p50": round3(scan_summary["p50"].as_f64().unwrap() / index_summary["p50"].as_f64().unwrap()),
        "speedup_vs_redis_scan_p99": round3(scan_summary["p99"].as_f64().unwrap() / index_summary["p99"].as_f64().unwrap()),
        "candidates_touched_per_query": summary(std::mem::take(&mut tally.touched)),
        "candidates_verified_per_query": summary(std::mem::take(&mut tally.verified)),
        "brute_force_compared_per_query": size,
        "recall_at_duplicate_threshold": tally.recall(0),
        "recall_at_similar_threshold": tally.recall(1),
        "brute_force_matches": {"duplicate": tally.truth[0], "similar_or_better": tally.truth[1]},
    }))
}

fn arg(args: &[String], name: &str) -> Option<String> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let sizes: Vec<usize> = arg(&args, "--sizes")
        .unwrap_or_else(|| "10000,100000".into())
        .split(',')
        .map(|s| s.trim().parse())
        .collect::<Result<_, _>>()?;
    let queries: usize = arg(&args, "--queries").map_or(Ok(400), |q| q.parse())?;
    let out =
        PathBuf::from(arg(&args, "--out").unwrap_or_else(|| "bench/results/engine.json".into()));

    let redis = RedisProc::start()?;
    let url = format!("redis://127.0.0.1:{}/", redis.port);
    let client = redis::Client::open(url.as_str())?;
    let mut conn = None;
    for _ in 0..100 {
        if let Ok(c) = client.get_connection_manager().await {
            conn = Some(c);
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut conn = conn.ok_or_else(|| anyhow::anyhow!("redis-server did not answer"))?;
    let version: String = redis::cmd("INFO")
        .arg("server")
        .query_async(&mut conn)
        .await?;
    let version = version
        .lines()
        .find_map(|l| l.strip_prefix("redis_version:"))
        .unwrap_or("?")
        .trim()
        .to_string();

    let mut runs = Vec::new();
    for size in sizes {
        eprintln!("engine-bench: {size} drawings, {queries} queries");
        let r = run_size(&mut conn, size, queries).await?;
        eprintln!("{}", serde_json::to_string_pretty(&r)?);
        runs.push(r);
    }
    let doc = json!({
        "benchmark": "engine-bench: geometry LSH index vs brute force",
        "command": "bench/engine.sh",
        "redis_version": version,
        "sketch": {"slots": SLOTS, "bands": BANDS, "rows_per_band": ROWS_PER_BAND,
                   "shingles_per_drawing": SHINGLES},
        "thresholds": {"duplicate": DUPLICATE, "similar": SIMILAR},
        "drawings_generated_as": "shingle sets sketched with Sketch::from_shingles (no DXF parsing); 1 in 5 an edited copy of an earlier drawing",
        "brute_force": "the query sketch against every indexed sketch held in memory (no Redis reads): a lower bound on any scan; brute_force_redis_scan: every record read from Redis with HSCAN and compared, as a stateless worker without the index would have to",
        "runs": runs,
    });
    if let Some(dir) = out.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(&out, serde_json::to_string_pretty(&doc)? + "\n")?;
    eprintln!("engine-bench: wrote {}", out.display());
    Ok(())
}
