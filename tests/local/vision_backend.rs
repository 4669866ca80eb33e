//! `dedup2d worker` with `DEDUPCAD_VISION_URL` against a dedupcad-vision stand-in on loopback
//! (`tests/peers/vision_stub.py`, a real HTTP server): success and pass-through, 5xx then
//! success, 429 with Retry-After, timeout, invalid JSON, the circuit breaker open → half-open →
//! closed, render fallback and render/DWG failures, a bad URL at start-up. Every failed job's
//! error is a sentence, and the worker goes on with the next job.

use std::time::Duration;

use crate::support::redis::RedisServer;
use crate::support::schema::{assert_valid, SEARCH_RESULT};
use crate::support::vision_stub::VisionStub;
use crate::support::worker::{self as w, metric, WorkerProc};
use dedup2d::contract::store::{JobStatus, JobStore, JobView};
use serde_json::{json, Value};

const SQUARE_DXF: &str = "0\nSECTION\n2\nENTITIES\n0\nLINE\n8\n0\n10\n0\n20\n0\n11\n10\n21\n0\n0\nCIRCLE\n8\n0\n10\n5\n20\n5\n40\n2\n0\nENDSEC\n0\nEOF\n";

struct Setup {
    redis: RedisServer,
    stub: VisionStub,
    dir: tempfile::TempDir,
}

impl Setup {
    fn new() -> Self {
        Setup {
            redis: RedisServer::start(),
            stub: VisionStub::start(),
            dir: tempfile::tempdir().unwrap(),
        }
    }

    /// A worker on the stub, with fast retries; `extra` wins.
    async fn worker(&self, extra: &[(&str, &str)]) -> WorkerProc {
        let url = self.stub.url();
        let mut env = w::env(&[
            ("DEDUPCAD_VISION_URL", url.as_str()),
            ("DEDUPCAD_VISION_RETRY_BASE_DELAY_SECONDS", "0.05"),
            ("DEDUPCAD_VISION_RETRY_MAX_DELAY_SECONDS", "0.2"),
            ("DEDUPCAD_VISION_TIMEOUT_SECONDS", "5"),
        ]);
        env.extend(w::env(extra));
        let mut worker = WorkerProc::spawn(&self.redis.url(), self.dir.path(), "vision", &env);
        worker.wait_healthy(Duration::from_secs(20)).await;
        worker
    }

    async fn store(&self) -> JobStore {
        w::store(self.redis.manager().await)
    }

    /// Runs one job to its end: `name` decides PNG or DXF handling.
    async fn run(
        &self,
        name: &str,
        content_type: &str,
        data: &[u8],
        geom: Option<Value>,
    ) -> (JobView, Option<Value>) {
        let store = self.store().await;
        let mut payload = w::payload(None, Some(data));
        payload.file_name = name.into();
        payload.content_type = Some(content_type.into());
        payload.render_required = name.ends_with(".dxf") || name.ends_with(".dwg");
        payload.query_geom = geom;
        let id = w::submit(&store, payload).await;
        let done =
            w::wait_finished(&store, std::slice::from_ref(&id), Duration::from_secs(30)).await;
        let result = w::result(&self.redis.manager().await, &id).await;
        (done[&id].clone(), result)
    }

    async fn png(&self) -> (JobView, Option<Value>) {
        self.run("scan.png", "image/png", b"\x89PNG fake image", None)
            .await
    }
}

fn error_of(v: &JobView) -> String {
    assert_eq!(v.status, JobStatus::Failed, "{v:?}");
    v.error.clone().expect("a failed job says why")
}

async fn completed_after_failure(s: &Setup) {
    let (v, r) = s.png().await;
    assert_eq!(v.status, JobStatus::Completed, "the worker goes on: {v:?}");
    assert!(r.is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn success_passes_the_vision_answer_through_with_the_python_enrichment() {
    let s = Setup::new();
    let worker = s.worker(&[]).await;
    let (v, r) = s.png().await;
    assert_eq!(v.status, JobStatus::Completed, "{v:?}");
    let r = r.unwrap();
    let reqs = s.stub.requests().await;
    assert_eq!(reqs.len(), 1);
    assert_eq!(
        reqs[0]["fields"],
        json!({"mode": "balanced", "max_results": "50", "compute_diff": "true", "enable_ml": "false", "enable_geometric": "false"})
    );
    assert_eq!(
        (
            reqs[0]["file_name"].clone(),
            reqs[0]["content_type"].clone()
        ),
        (json!("scan.png"), json!("image/png"))
    );
    // Passed through: the stub's own fields, the model's fields, plus the four label fields.
    assert_eq!(r["search_id"].as_str().unwrap().len(), 10);
    assert_eq!(r["final_level"], json!(2));
    assert_eq!(r["level_stats"]["l1"]["passed"], json!(40));
    let d = &r["duplicates"][0];
    assert_eq!(
        (d["vendor_rank"].clone(), d["confidence"].clone()),
        (json!(1), json!(0.95))
    );
    assert_eq!(
        d.get("diff_image_base64"),
        Some(&Value::Null),
        "an explicit null stays"
    );
    for k in [
        "fine_part_type",
        "coarse_part_type",
        "decision_source",
        "is_coarse_label",
    ] {
        assert_eq!(d.get(k), Some(&Value::Null), "{k} written as null");
    }
    assert!(
        r.get("engine").is_none() && r.get("file_hash").is_none(),
        "{r}"
    );

    // A DXF is rendered to {stem}.png at DEDUPCAD2_RENDER_SIZE_PX (1024) first.
    let (v, dxf) = s
        .run("part.dxf", "application/dxf", SQUARE_DXF.as_bytes(), None)
        .await;
    assert_eq!(v.status, JobStatus::Completed, "{v:?}");
    let reqs = s.stub.requests().await;
    assert_eq!(
        (
            reqs[1]["file_name"].clone(),
            reqs[1]["content_type"].clone(),
            reqs[1]["png_width"].clone()
        ),
        (json!("part.png"), json!("image/png"), json!(1024))
    );

    // With geometry the precision pass runs: no candidate geometry here, so every match is
    // down-weighted to the visual share (0.3 of 0.97 and 0.86) and falls below the thresholds.
    let (_, geo) = s
        .run(
            "scan.png",
            "image/png",
            b"img",
            Some(json!({"entities": []})),
        )
        .await;
    let geo = geo.unwrap();
    assert_eq!(geo["total_matches"], json!(0), "{geo}");
    assert_eq!(geo["warnings"], json!(["precision_missing_geom_json:2"]));
    assert!(geo["timing"]["precision_ms"].as_f64().is_some());

    // A partial failure answered by vision (success false, an error) is passed on as a result.
    s.stub
        .script(json!([{"body": {"success": false, "total_matches": 0, "duplicates": [], "similar": [],
            "final_level": 1, "timing": {"total_ms": 3.0, "l1_ms": 3.0, "l2_ms": 0, "l3_ms": 0, "l4_ms": 0},
            "level_stats": {"l1": {"passed": 0, "filtered": 0, "time_ms": 3.0}},
            "warnings": ["l2_index_unavailable"], "error": "L2 index is rebuilding"}}]))
        .await;
    let (_, partial) = s.png().await;
    let partial = partial.unwrap();
    assert_eq!(
        (partial["success"].clone(), partial["error"].clone()),
        (json!(false), json!("L2 index is rebuilding"))
    );

    assert_valid(SEARCH_RESULT, &[r, dxf.unwrap(), geo, partial]);
    let page = worker.metrics().await;
    assert_eq!(
        metric(
            &page,
            "dedupcad_vision_requests_total{endpoint=\"search_2d\",status=\"success\"}"
        ),
        4.0,
        "{page}"
    );
    assert_eq!(metric(&page, "dedupcad_vision_request_duration_seconds_count{endpoint=\"search_2d\",status=\"success\"}"), 4.0);
    assert_eq!(
        metric(
            &page,
            "dedupcad_vision_circuit_state{endpoint=\"search_2d\"}"
        ),
        0.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_errors_are_retried_then_fail_the_job_with_a_reason() {
    let s = Setup::new();
    let worker = s.worker(&[]).await;
    s.stub
        .script(json!([{"status": 503, "body": {"detail": "warming up"}}]))
        .await;
    let (v, _) = s.png().await;
    assert_eq!(v.status, JobStatus::Completed, "5xx then success: {v:?}");
    assert_eq!(s.stub.requests().await.len(), 2);

    s.stub
        .script(json!([{"status": 502, "raw": "bad gateway"}, {"status": 500, "raw": "boom"}]))
        .await;
    let (v, _) = s.png().await;
    let err = error_of(&v);
    assert_eq!(
        err,
        "dedupcad-vision answered HTTP 500 (2 attempt(s)): boom"
    );
    // A 4xx other than 408/429 is not retried.
    s.stub
        .script(json!([{"status": 422, "body": {"detail": "bad mode"}}]))
        .await;
    let before = s.stub.requests().await.len();
    let (v, _) = s.png().await;
    assert!(error_of(&v).contains("HTTP 422 (1 attempt(s))"), "{v:?}");
    assert_eq!(s.stub.requests().await.len(), before + 1);
    completed_after_failure(&s).await;

    let page = worker.metrics().await;
    assert_eq!(
        metric(
            &page,
            "dedupcad_vision_retry_total{endpoint=\"search_2d\",reason=\"http_503\"}"
        ),
        1.0,
        "{page}"
    );
    assert_eq!(
        metric(
            &page,
            "dedupcad_vision_retry_total{endpoint=\"search_2d\",reason=\"http_502\"}"
        ),
        1.0
    );
    assert_eq!(
        metric(
            &page,
            "dedupcad_vision_errors_total{endpoint=\"search_2d\",error=\"http_500\"}"
        ),
        1.0
    );
    assert_eq!(
        metric(
            &page,
            "dedupcad_vision_requests_total{endpoint=\"search_2d\",status=\"error\"}"
        ),
        2.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_429_waits_at_least_its_retry_after() {
    let s = Setup::new();
    let _worker = s.worker(&[]).await;
    s.stub.script(json!([{"status": 429, "body": {"detail": "slow down"}, "headers": {"Retry-After": "1"}}])).await;
    let (v, _) = s.png().await;
    assert_eq!(v.status, JobStatus::Completed, "{v:?}");
    let reqs = s.stub.requests().await;
    assert_eq!(reqs.len(), 2);
    let gap = reqs[1]["at"].as_f64().unwrap() - reqs[0]["at"].as_f64().unwrap();
    // The backoff alone would be at most 0.05 s here; Retry-After: 1 makes it a second.
    assert!(gap >= 0.95, "retried after {gap} s");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timeouts_and_invalid_json_are_retried_then_explained() {
    let s = Setup::new();
    let worker = s
        .worker(&[("DEDUPCAD_VISION_TIMEOUT_SECONDS", "0.5")])
        .await;
    s.stub.script(json!([{"delay": 1.5}, {"delay": 1.5}])).await;
    let (v, _) = s.png().await;
    assert_eq!(
        error_of(&v),
        "dedupcad-vision did not answer within 0.5 s (2 attempt(s))"
    );

    s.stub.script(json!([{"raw": "<html>oops</html>"}])).await;
    let (v, _) = s.png().await;
    assert_eq!(
        v.status,
        JobStatus::Completed,
        "invalid JSON then success: {v:?}"
    );
    s.stub
        .script(json!([{"raw": "<html>oops</html>"}, {"raw": "still no json"}]))
        .await;
    let (v, _) = s.png().await;
    let err = error_of(&v);
    assert!(
        err.starts_with("dedupcad-vision answered with a body that is not JSON (2 attempt(s))"),
        "{err}"
    );
    assert!(err.contains("still no json"), "{err}");
    completed_after_failure(&s).await;

    let page = worker.metrics().await;
    assert_eq!(
        metric(
            &page,
            "dedupcad_vision_errors_total{endpoint=\"search_2d\",error=\"timeout\"}"
        ),
        2.0,
        "{page}"
    );
    assert_eq!(
        metric(
            &page,
            "dedupcad_vision_retry_total{endpoint=\"search_2d\",reason=\"invalid_json\"}"
        ),
        2.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_circuit_opens_then_half_opens_then_closes() {
    let s = Setup::new();
    let worker = s
        .worker(&[
            ("DEDUPCAD_VISION_RETRY_MAX_ATTEMPTS", "1"),
            ("DEDUPCAD_VISION_CIRCUIT_FAILURE_THRESHOLD", "2"),
            ("DEDUPCAD_VISION_CIRCUIT_RECOVERY_TIMEOUT_SECONDS", "1"),
        ])
        .await;
    let state = || async {
        metric(
            &worker.metrics().await,
            "dedupcad_vision_circuit_state{endpoint=\"search_2d\"}",
        )
    };
    s.stub
        .script(json!([{"status": 500, "raw": "down"}, {"status": 500, "raw": "down"}]))
        .await;
    for _ in 0..2 {
        let (v, _) = s.png().await;
        assert!(error_of(&v).contains("HTTP 500"));
    }
    assert_eq!(state().await, 1.0, "open after 2 failures");
    let (v, _) = s.png().await;
    assert_eq!(
        error_of(&v),
        "dedupcad-vision is unavailable: its circuit breaker is open after repeated failures, so the call was not made; retry the job later"
    );
    assert_eq!(s.stub.requests().await.len(), 2, "no call while open");

    tokio::time::sleep(Duration::from_millis(1100)).await; // the recovery timeout
    let (v, _) = s.png().await;
    assert_eq!(v.status, JobStatus::Completed, "{v:?}");
    assert_eq!(
        state().await,
        2.0,
        "half-open: one success of the two needed"
    );
    let (v, _) = s.png().await;
    assert_eq!(v.status, JobStatus::Completed);
    assert_eq!(state().await, 0.0, "closed");
    let page = worker.metrics().await;
    assert_eq!(
        metric(
            &page,
            "dedupcad_vision_requests_total{endpoint=\"search_2d\",status=\"circuit_open\"}"
        ),
        1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_render_falls_back_and_render_failures_are_explained() {
    let s = Setup::new();
    {
        // Primary settings that cannot render: the fallback (512 px, no text) is used.
        let _worker = s.worker(&[("DEDUPCAD2_RENDER_SIZE_PX", "0")]).await;
        let (v, r) = s
            .run("part.dxf", "application/dxf", SQUARE_DXF.as_bytes(), None)
            .await;
        assert_eq!(v.status, JobStatus::Completed, "{v:?}");
        assert_eq!(s.stub.requests().await[0]["png_width"], json!(512));
        assert_valid(SEARCH_RESULT, &[r.unwrap()]);
        let (v, _) = s
            .run(
                "broken.dxf",
                "application/dxf",
                b"this is not a DXF drawing",
                None,
            )
            .await;
        let err = error_of(&v);
        assert!(err.starts_with("cannot render the drawing to PNG: render settings are invalid: size_px must be in 1..=16384, got 0; the fallback render failed too: the DXF file cannot be read"), "{err}");
    }
    let _worker = s
        .worker(&[
            ("DEDUPCAD2_RENDER_SIZE_PX", "0"),
            ("DEDUPCAD2_RENDER_FALLBACK", "0"),
        ])
        .await;
    let (v, _) = s
        .run("part.dxf", "application/dxf", SQUARE_DXF.as_bytes(), None)
        .await;
    assert_eq!(
        error_of(&v),
        "cannot render the drawing to PNG: render settings are invalid: size_px must be in 1..=16384, got 0"
    );
    let (v, _) = s
        .run("part.dwg", "application/acad", b"AC1032 binary", None)
        .await;
    assert!(
        error_of(&v).starts_with(
            "DWG conversion disabled by DWG_CONVERTER: set DWG_CONVERTER=cmd and DWG_TO_DXF_CMD"
        ),
        "{v:?}"
    );
    let (v, _) = s.run("part.cad", "application/acad", b"?", None).await;
    assert_eq!(error_of(&v), "Unsupported CAD format for rendering: .cad");
    completed_after_failure(&s).await;
}

#[tokio::test]
async fn a_bad_vision_url_stops_the_worker_at_start_up_naming_the_variable() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_dedup2d"))
        .arg("worker")
        .env("DEDUP2D_REDIS_URL", "redis://127.0.0.1:1/0")
        .env("DEDUPCAD_VISION_URL", "dedupcad-vision:58001")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains("DEDUPCAD_VISION_URL=\"dedupcad-vision:58001\" is invalid"),
        "{stderr}"
    );
}
