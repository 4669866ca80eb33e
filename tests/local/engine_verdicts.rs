//! The built-in engine's verdicts on generated drawings: first on the pure pipeline (DXF →
//! canonical form → fingerprint and sketch, PNG/JPEG → perceptual hash), then end to end through
//! the real worker process and a real redis-server (index, `add_to_index`, failures with a
//! reason, `dedup2d delete-index`).

use std::time::Duration;

use crate::support::drawings::{self, Placement, Variant};
use crate::support::redis::RedisServer;
use crate::support::schema::{assert_valid, SEARCH_RESULT};
use crate::support::worker::{self as w, WorkerProc};
use dedup2d::contract::store::JobStatus;
use dedup2d::worker::engine::canonical::Canonical;
use dedup2d::worker::engine::dxf_geometry;
use dedup2d::worker::engine::minhash::Sketch;
use dedup2d::worker::engine::phash::{self, RasterFormat};
use image::ImageFormat;
use redis::AsyncCommands;
use serde_json::{json, Value};

fn resaved() -> Variant {
    Variant {
        resaved: true,
        ..Variant::BASE
    }
}

fn moved() -> Variant {
    Variant {
        placement: Placement {
            scale: 3.0,
            shift: (5000.0, -1200.0),
            swap: false,
        },
        ..Variant::BASE
    }
}

/// Rotated by 90° and mirrored (the axes swapped), also scaled and moved.
fn turned() -> Variant {
    Variant {
        placement: Placement {
            scale: 0.5,
            shift: (-40.0, 700.0),
            swap: true,
        },
        ..Variant::BASE
    }
}

fn changed() -> Variant {
    Variant {
        changed_hole: true,
        ..Variant::BASE
    }
}

fn canonical(dxf: &[u8]) -> Canonical {
    assert!(dxf_geometry::looks_like_dxf(dxf));
    let g = dxf_geometry::parse(dxf).expect("fixture parses");
    assert!(g.ignored.is_empty(), "{:?}", g.ignored);
    Canonical::from_primitives(&g.primitives).expect("fixture has geometry")
}

#[test]
fn dxf_variants_get_the_documented_verdicts() {
    let base = canonical(&drawings::plate(Variant::BASE));
    // Outline 4 edges + slot 4 + 12 holes + 2 arcs + 3 ribs + 2 texts + 3 bolts × 3.
    assert_eq!(base.rows.len(), 36);
    for (name, v) in [
        ("re-saved", resaved()),
        ("moved", moved()),
        ("turned", turned()),
    ] {
        let c = canonical(&drawings::plate(v));
        assert_eq!(c.fingerprint(), base.fingerprint(), "{name}");
        assert_eq!(Sketch::of(&c).similarity(&Sketch::of(&base)), 1.0, "{name}");
    }
    let one_changed = canonical(&drawings::plate(changed()));
    assert_ne!(one_changed.fingerprint(), base.fingerprint());
    let s = Sketch::of(&one_changed).similarity(&Sketch::of(&base));
    assert!((0.8..0.95).contains(&s), "one changed hole: similarity {s}");
    let other = canonical(&drawings::wheel());
    let s = Sketch::of(&other).similarity(&Sketch::of(&base));
    assert!(s < 0.3, "unrelated drawing: similarity {s}");
}

#[test]
fn png_export_and_its_recompressed_jpeg_are_duplicates() {
    let png = drawings::encode(&drawings::raster(0), ImageFormat::Png);
    let jpg = drawings::recompressed_jpeg(&png, 80);
    assert_eq!(RasterFormat::sniff(&jpg), Some(RasterFormat::Jpeg));
    let a = phash::phash(&png, RasterFormat::Png).unwrap();
    let b = phash::phash(&jpg, RasterFormat::Jpeg).unwrap();
    assert!(phash::similarity(a, b) >= 0.95, "{a:016x} vs {b:016x}");
    let other = drawings::encode(&drawings::raster(1), ImageFormat::Png);
    let c = phash::phash(&other, RasterFormat::Png).unwrap();
    assert!(phash::similarity(a, c) < 0.8, "{a:016x} vs {c:016x}");
}

struct Fleet {
    redis: RedisServer,
    conn: redis::aio::ConnectionManager,
    store: dedup2d::contract::store::JobStore,
    _worker: WorkerProc,
    _dir: tempfile::TempDir,
}

impl Fleet {
    async fn start() -> Fleet {
        let redis = RedisServer::start();
        let dir = tempfile::tempdir().unwrap();
        let env = w::env(&[
            ("DEDUP2D_FILE_STORAGE", "local"),
            ("DEDUP2D_FILE_STORAGE_DIR", dir.path().to_str().unwrap()),
            ("DEDUP2D_INDEX_TTL_SECONDS", "3600"),
        ]);
        let mut worker = WorkerProc::spawn(&redis.url(), dir.path(), "engine", &env);
        worker.wait_healthy(Duration::from_secs(30)).await;
        let conn = redis.manager().await;
        Fleet {
            store: w::store(conn.clone()),
            conn,
            redis,
            _worker: worker,
            _dir: dir,
        }
    }

    /// Runs one search job to its end; returns (status, result, error).
    async fn search(&self, name: &str, data: &[u8], params: Value) -> (JobStatus, Value, String) {
        let mut p = w::payload(None, Some(data));
        p.file_name = name.into();
        p.request_params = params.as_object().cloned().unwrap_or_default();
        let id = w::submit(&self.store, p).await;
        let done = w::wait_finished(
            &self.store,
            std::slice::from_ref(&id),
            Duration::from_secs(30),
        )
        .await;
        let view = &done[&id];
        let result = w::result(&self.conn, &id).await.unwrap_or(Value::Null);
        (view.status, result, view.error.clone().unwrap_or_default())
    }

    /// A completed search's result, checked against the result schema the old API validates
    /// with (`docs/schemas/`): every geometric, raster and content-hash answer below.
    async fn completed(&self, name: &str, data: &[u8], params: Value) -> Value {
        let (status, result, error) = self.search(name, data, params).await;
        assert_eq!(status, JobStatus::Completed, "{name}: {error}");
        assert_valid(SEARCH_RESULT, std::slice::from_ref(&result));
        result
    }
}

fn names(items: &Value) -> Vec<String> {
    items
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["file_name"].as_str().unwrap().to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn worker_verdicts_end_to_end() {
    let fleet = Fleet::start().await;
    let probe = json!({"add_to_index": false});

    let base = fleet
        .completed("base.dxf", &drawings::plate(Variant::BASE), json!({}))
        .await;
    assert_eq!(base["engine"], json!("geometry_minhash"), "{base}");
    assert_eq!(
        (base["total_matches"].clone(), base["final_level"].clone()),
        (json!(0), json!(4))
    );

    for (name, v) in [
        ("resaved.dxf", resaved()),
        ("moved.dxf", moved()),
        ("turned.dxf", turned()),
    ] {
        let r = fleet
            .completed(name, &drawings::plate(v), probe.clone())
            .await;
        assert_eq!(names(&r["duplicates"]), vec!["base.dxf"], "{name}: {r}");
        let m = &r["duplicates"][0];
        assert_eq!(
            (m["similarity"].clone(), m["confidence"].clone()),
            (json!(1.0), json!(1.0))
        );
        assert_eq!(
            (m["match_level"].clone(), m["verdict"].clone()),
            (json!(4), json!("duplicate"))
        );
        assert_eq!(m["levels"]["l4"]["fingerprint_match"], json!(true), "{m}");
        assert_eq!(r["fingerprint"], base["fingerprint"]);
        assert!(r["timing"]["total_ms"].as_f64().unwrap() > 0.0);
    }

    let r = fleet
        .completed("changed.dxf", &drawings::plate(changed()), probe.clone())
        .await;
    assert_eq!(r["duplicates"], json!([]), "{r}");
    assert_eq!(names(&r["similar"]), vec!["base.dxf"], "{r}");
    let s = r["similar"][0]["similarity"].as_f64().unwrap();
    assert!((0.8..0.95).contains(&s), "{r}");
    assert!(r["similar"][0]["confidence"].as_f64().unwrap() < s);

    let r = fleet
        .completed("wheel.dxf", &drawings::wheel(), probe.clone())
        .await;
    assert_eq!(r["total_matches"], json!(0), "{r}");

    // None of the probes was indexed: the base is still the only drawing in the index.
    let r = fleet
        .completed("base-again.dxf", &drawings::plate(Variant::BASE), json!({}))
        .await;
    assert_eq!(names(&r["duplicates"]), vec!["base.dxf"], "{r}");
    let r = fleet
        .completed(
            "base-3.dxf",
            &drawings::plate(Variant::BASE),
            json!({"max_results": 1}),
        )
        .await;
    assert_eq!(r["total_matches"], json!(1), "max_results honoured: {r}");

    let png = drawings::encode(&drawings::raster(0), ImageFormat::Png);
    let r = fleet.completed("export.png", &png, json!({})).await;
    assert_eq!(
        (r["engine"].clone(), r["total_matches"].clone()),
        (json!("perceptual_hash"), json!(0))
    );
    let jpg = drawings::recompressed_jpeg(&png, 80);
    let r = fleet.completed("scan.jpg", &jpg, probe.clone()).await;
    assert_eq!(names(&r["duplicates"]), vec!["export.png"], "{r}");
    assert_eq!(r["duplicates"][0]["match_level"], json!(2));
    let other = drawings::encode(&drawings::raster(1), ImageFormat::Png);
    let r = fleet.completed("other.png", &other, probe.clone()).await;
    assert_eq!(r["total_matches"], json!(0), "{r}");

    // Other files: the exact content hash, as before.
    fleet
        .completed("notes.txt", b"not a drawing", json!({}))
        .await;
    let r = fleet
        .completed("notes-copy.txt", b"not a drawing", json!({}))
        .await;
    assert_eq!(
        (r["engine"].clone(), names(&r["duplicates"])),
        (json!("exact_sha256"), vec!["notes.txt".to_string()])
    );

    // Undecodable drawings fail their job with the reason; the worker goes on.
    let (status, _, error) = fleet
        .search(
            "broken.dxf",
            b"0\nSECTION\n2\nENTITIES\n0\nLINE\n10\nnot-a-number\n",
            json!({}),
        )
        .await;
    assert_eq!(status, JobStatus::Failed);
    assert!(error.starts_with("the DXF file cannot be read"), "{error}");
    let (status, _, error) = fleet
        .search("broken.png", b"\x89PNG\r\n\x1a\ntruncated", json!({}))
        .await;
    assert_eq!(status, JobStatus::Failed);
    assert!(
        error.starts_with("the PNG image cannot be decoded"),
        "{error}"
    );

    // The index keys carry the configured TTL.
    let mut c = fleet.conn.clone();
    let ttl: i64 = c
        .ttl(format!("{}:dedup:{}:geom:buckets", w::PREFIX, w::TENANT))
        .await
        .unwrap();
    assert!((3000..=3600).contains(&ttl), "ttl {ttl}");

    // `dedup2d delete-index` empties the tenant's index.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_dedup2d"))
        .args(["delete-index", "--tenant", w::TENANT])
        .env("DEDUP2D_REDIS_URL", fleet.redis.url())
        .env("DEDUP2D_REDIS_KEY_PREFIX", w::PREFIX)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r = fleet
        .completed("base-4.dxf", &drawings::plate(Variant::BASE), json!({}))
        .await;
    assert_eq!(r["total_matches"], json!(0), "{r}");
    let bad = std::process::Command::new(env!("CARGO_BIN_EXE_dedup2d"))
        .args(["delete-index", "--tenant", "a:*"])
        .env("DEDUP2D_REDIS_URL", fleet.redis.url())
        .output()
        .unwrap();
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("is not a tenant id"));
}
