//! Mixed-fleet equality with the dedupcad-vision backend: the same uploads go to the Python
//! legacy worker (`tests/peers/legacy_worker.py --vision-url`, the real `arq`, re-implementing the
//! Python worker's vision pipeline) and to our worker, both configured with the same vision
//! stand-in. Their requests to the service and their result documents are equal, field by
//! field, except the timing fields that measure this run (our `timing.load_ms`; after the
//! precision pass `precision_ms` and the `l4_ms`/`total_ms` it was added to) and the rendered
//! pixels (the two renderers differ; the image size is compared). A job that cannot be rendered
//! fails on both.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::support::peers::{peer, python};
use crate::support::redis::RedisServer;
use crate::support::schema::{assert_valid, SEARCH_RESULT};
use crate::support::vision_stub::VisionStub;
use crate::support::worker::{self as w, WorkerProc};
use dedup2d::contract::store::{JobStatus, NewJob};
use serde_json::{json, Map, Value};

const LEGACY_QUEUE: &str = "legacy:queue";
const OUR_QUEUE: &str = "ours:queue";
const DXF: &str =
    "0\nSECTION\n2\nENTITIES\n0\nLINE\n8\n0\n10\n0\n20\n0\n11\n10\n21\n0\n0\nENDSEC\n0\nEOF\n";

/// File name, content type, bytes, geometry, preset.
type Upload<'a> = (&'a str, &'a str, &'a [u8], Option<Value>, Option<&'a str>);

struct Legacy(Child);

impl Drop for Legacy {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The request_params our API writes for `preset` (or none), as the Python API would.
fn params(preset: Option<&str>) -> Map<String, Value> {
    let mut p = json!({"mode": "balanced", "max_results": 50, "compute_diff": true, "enable_ml": false,
        "enable_geometric": false, "enable_precision": true, "precision_profile": null, "version_gate": null,
        "precision_top_n": 20, "precision_visual_weight": 0.3, "precision_geom_weight": 0.7,
        "precision_compute_diff": false, "precision_diff_top_n": 5, "precision_diff_max_paths": 200,
        "duplicate_threshold": 0.95, "similar_threshold": 0.8});
    if let Some(name) = preset {
        let preset = &dedup2d::api::presets::presets_json()["presets"][name];
        for (k, v) in preset.as_object().unwrap() {
            p[k] = v.clone();
        }
    }
    p.as_object().unwrap().clone()
}

/// Everything but the timing of this run: our `load_ms`, and the precision pass's own duration
/// (`precision_ms`, which both add to `l4_ms` and `total_ms`).
fn comparable(mut r: Value) -> Value {
    if let Some(t) = r.get_mut("timing").and_then(Value::as_object_mut) {
        t.remove("load_ms");
        if t.remove("precision_ms").is_some() {
            t.remove("l4_ms");
            t.remove("total_ms");
        }
    }
    r
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_and_rust_workers_give_equal_results_with_the_same_vision_service() {
    let redis = RedisServer::start();
    let stub = VisionStub::start();
    let dir = tempfile::tempdir().unwrap();
    let _legacy = Legacy(
        Command::new(python())
            .arg(peer("legacy_worker.py"))
            .args([
                &redis.url(),
                LEGACY_QUEUE,
                w::PREFIX,
                "--vision-url",
                &stub.url(),
            ])
            .current_dir(std::env::temp_dir())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start the Python legacy worker"),
    );
    let url = stub.url();
    let mut ours = WorkerProc::spawn(
        &redis.url(),
        dir.path(),
        "ours",
        &w::env(&[
            ("DEDUPCAD_VISION_URL", url.as_str()),
            ("DEDUP2D_ARQ_QUEUE_NAME", OUR_QUEUE),
        ]),
    );
    ours.wait_healthy(Duration::from_secs(20)).await;
    let store = w::store(redis.manager().await);

    let loose_geom = Some(json!({"entities": [], "meta": {}}));
    let uploads: Vec<Upload> = vec![
        ("scan.png", "image/png", b"\x89PNG not really", None, None),
        (
            "part.dxf",
            "application/dxf",
            DXF.as_bytes(),
            None,
            Some("strict"),
        ),
        (
            "scan_v3.png",
            "image/png",
            b"img",
            Some(json!({"meta": {}})),
            Some("version"),
        ),
        (
            "part_v2.dxf",
            "application/dxf",
            DXF.as_bytes(),
            loose_geom.clone(),
            Some("loose"),
        ),
        ("scan.png", "image/png", b"img", loose_geom, None),
        // No DWG converter configured: both fail the job.
        ("part.dwg", "image/vnd.dwg", b"AC1032", None, None),
    ];
    let mut pairs = Vec::new();
    for (name, ct, data, geom, preset) in &uploads {
        let mut ids = Vec::new();
        for queue in [LEGACY_QUEUE, OUR_QUEUE] {
            let mut payload = w::payload(None, Some(data));
            payload.file_name = name.to_string();
            payload.content_type = Some(ct.to_string());
            payload.render_required = name.ends_with(".dxf") || name.ends_with(".dwg");
            payload.query_geom = geom.clone();
            payload.request_params = params(*preset);
            let job_id = uuid::Uuid::new_v4().to_string();
            store
                .submit(&NewJob {
                    job_id: job_id.clone(),
                    tenant_id: w::TENANT.into(),
                    payload,
                    queue_name: queue.into(),
                })
                .await
                .unwrap();
            ids.push(job_id);
        }
        pairs.push(ids);
    }
    let all: Vec<String> = pairs.iter().flatten().cloned().collect();
    let done = w::wait_finished(&store, &all, Duration::from_secs(60)).await;
    let conn = redis.manager().await;
    let mut results = Vec::new();
    let (dwg, pairs) = pairs.split_last().unwrap();
    for id in dwg {
        assert_eq!(done[id].status, JobStatus::Failed, "{:?}", done[id]);
        assert!(done[id]
            .error
            .as_deref()
            .unwrap()
            .starts_with("DWG conversion disabled by DWG_CONVERTER"));
    }
    for (ids, upload) in pairs.iter().zip(&uploads) {
        for id in ids {
            assert_eq!(
                done[id].status,
                JobStatus::Completed,
                "{}: {:?}",
                upload.0,
                done[id]
            );
        }
        let python = w::result(&conn, &ids[0]).await.unwrap();
        let rust = w::result(&conn, &ids[1]).await.unwrap();
        assert_eq!(
            comparable(rust.clone()),
            comparable(python.clone()),
            "{} ({:?})",
            upload.0,
            upload.4
        );
        results.extend([python, rust]);
    }
    assert_valid(SEARCH_RESULT, &results);
    // The cases reach the paths they are meant to: gate, down-weighting with matches left, none.
    assert_eq!(results[0]["total_matches"], json!(2), "{}", results[0]);
    assert_eq!(
        results[4]["warnings"],
        json!(["precision_version_gate_filtered:2"])
    );
    assert_eq!(results[4]["total_matches"], json!(0));
    assert_eq!(
        results[6]["warnings"],
        json!(["precision_missing_geom_json:2"])
    );
    assert_eq!(
        results[6]["similar"].as_array().map(Vec::len),
        Some(2),
        "{}",
        results[6]
    );
    assert_eq!(results[8]["total_matches"], json!(0));

    // Both asked the service the same thing.
    let mut requests: Vec<Value> = stub
        .requests()
        .await
        .into_iter()
        .map(|r| json!({"fields": r["fields"], "file_name": r["file_name"], "content_type": r["content_type"], "png_width": r["png_width"]}))
        .collect();
    assert_eq!(requests.len(), 2 * pairs.len());
    requests.sort_by_key(|r| r.to_string());
    for pair in requests.chunks(2) {
        assert_eq!(pair[0], pair[1]);
    }
}
