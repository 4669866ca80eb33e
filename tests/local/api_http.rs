//! `dedup2d api` end to end through HTTP: real binary, real redis-server, real local storage,
//! and the Python `arq` legacy worker as the consumer of dual-write payloads.

use std::path::Path;

use crate::support::api::{ApiProcess, KEY_A, KEY_B};
use crate::support::peer_scripts::run_peer_async;
use crate::support::redis::RedisServer;
use redis::AsyncCommands;
use reqwest::multipart::{Form, Part};
use reqwest::StatusCode;
use serde_json::{json, Value};
use sha2::Digest;

fn form(name: &str, bytes: Vec<u8>) -> Form {
    Form::new().part("file", Part::bytes(bytes).file_name(name.to_string()))
}

async fn submit(
    api: &ApiProcess,
    key: &str,
    query: &str,
    form: Form,
) -> (StatusCode, Value, reqwest::header::HeaderMap) {
    let resp = reqwest::Client::new()
        .post(api.url(&format!("/api/v1/dedup/2d/search?{query}")))
        .header("X-API-Key", key)
        .multipart(form)
        .send()
        .await
        .unwrap();
    let status = resp.status();
    let headers = resp.headers().clone();
    let body = resp.json::<Value>().await.unwrap_or(Value::Null);
    (status, body, headers)
}

async fn get(api: &ApiProcess, key: &str, path: &str) -> (StatusCode, Value) {
    send(reqwest::Client::new().get(api.url(path)), key).await
}

async fn post(api: &ApiProcess, key: &str, path: &str) -> (StatusCode, Value) {
    send(reqwest::Client::new().post(api.url(path)), key).await
}

/// Sends `request` with the API key; the status and the JSON body (`null` when not JSON).
async fn send(request: reqwest::RequestBuilder, key: &str) -> (StatusCode, Value) {
    let resp = request.header("X-API-Key", key).send().await.unwrap();
    (
        resp.status(),
        resp.json::<Value>().await.unwrap_or(Value::Null),
    )
}

async fn payload(redis: &RedisServer, job_id: &str) -> Value {
    let mut conn = redis.manager().await;
    let raw: String = conn.get(format!("dedup2d:payload:{job_id}")).await.unwrap();
    serde_json::from_str(&raw).unwrap()
}

fn uploads_in(dir: &Path) -> usize {
    walk(dir)
}

fn walk(dir: &Path) -> usize {
    std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .map(|e| {
                    if e.path().is_dir() {
                        walk(&e.path())
                    } else {
                        1
                    }
                })
                .sum()
        })
        .unwrap_or(0)
}

async fn metrics(api: &ApiProcess) -> String {
    reqwest::get(api.url("/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

#[tokio::test]
async fn dual_write_off_stores_file_ref_only() {
    let redis = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let api = ApiProcess::start(&redis.url(), dir.path(), &[]);
    let bytes = b"0\nSECTION\n0\nEOF\n".to_vec();
    let (status, body, _) =
        submit(&api, KEY_A, "async=true", form("part.dxf", bytes.clone())).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let job_id = body["job_id"].as_str().unwrap();
    assert_eq!(body["status"], json!("pending"));
    assert_eq!(
        body["poll_url"],
        json!(format!("/api/v1/dedup/2d/jobs/{job_id}"))
    );
    assert_eq!(body["forced_async_reason"], Value::Null);

    let p = payload(&redis, job_id).await;
    assert!(p.get("file_bytes_b64").is_none(), "{p}");
    assert_eq!(p["file_ref"]["backend"], json!("local"));
    assert_eq!(p["render_required"], json!(true));
    assert_eq!(p["tenant_id"], json!(dedup2d::api::auth::tenant_id(KEY_A)));
    let path = p["file_ref"]["path"].as_str().unwrap();
    assert!(
        path.starts_with(&format!("{job_id}/")) && path.ends_with("_part.dxf"),
        "{path}"
    );
    assert_eq!(
        std::fs::read(dir.path().join(path)).unwrap(),
        bytes,
        "upload stored"
    );
    assert!(metrics(&api)
        .await
        .contains(r#"dedup2d_payload_format_total{format="file_ref_only"} 1"#));
}

#[tokio::test]
async fn dual_write_on_embeds_bytes_up_to_the_limit() {
    let redis = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let api = ApiProcess::start(
        &redis.url(),
        dir.path(),
        &[
            ("DEDUP2D_JOB_PAYLOAD_INCLUDE_BYTES_B64", " TRUE "),
            ("DEDUP2D_JOB_PAYLOAD_BYTES_B64_MAX_BYTES", "100"),
        ],
    );
    let small = vec![7u8; 100];
    let (status, body, _) =
        submit(&api, KEY_A, "async=true", form("small.png", small.clone())).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let p = payload(&redis, body["job_id"].as_str().unwrap()).await;
    use base64::Engine;
    assert_eq!(
        p["file_bytes_b64"],
        json!(base64::engine::general_purpose::STANDARD.encode(&small))
    );
    assert!(p["file_ref"].is_object());

    let (_, body, _) = submit(&api, KEY_A, "async=true", form("big.png", vec![7u8; 101])).await;
    let p = payload(&redis, body["job_id"].as_str().unwrap()).await;
    assert!(
        p.get("file_bytes_b64").is_none(),
        "over the max bytes: file_ref only"
    );
    let m = metrics(&api).await;
    assert!(
        m.contains(r#"dedup2d_payload_format_total{format="file_ref_and_b64"} 1"#),
        "{m}"
    );
    assert!(
        m.contains(r#"dedup2d_payload_format_total{format="file_ref_only"} 1"#),
        "{m}"
    );
}

#[tokio::test]
async fn the_python_legacy_worker_processes_dual_write_jobs_from_our_api() {
    let redis = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let api = ApiProcess::start(
        &redis.url(),
        dir.path(),
        &[("DEDUP2D_JOB_PAYLOAD_INCLUDE_BYTES_B64", "1")],
    );
    let mut jobs = Vec::new();
    for i in 0..3u8 {
        let bytes = vec![i; 64 + i as usize];
        let (status, body, _) =
            submit(&api, KEY_A, "async=true", form("d.dxf", bytes.clone())).await;
        assert_eq!(status, StatusCode::OK);
        jobs.push((body["job_id"].as_str().unwrap().to_string(), bytes));
    }
    run_peer_async(
        "legacy_worker.py",
        &[&redis.url(), "dedup2d:queue", "dedup2d", "--burst"],
    )
    .await;
    for (job_id, bytes) in jobs {
        let (status, job) = get(&api, KEY_A, &format!("/api/v1/dedup/2d/jobs/{job_id}")).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(job["status"], json!("completed"), "{job}");
        assert_eq!(
            job["result"]["sha256"],
            json!(hex::encode(sha2::Sha256::digest(&bytes)))
        );
        assert_eq!(job["result"]["worker"], json!("python-legacy"));
    }
}

#[tokio::test]
async fn tenants_are_isolated() {
    let redis = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let api = ApiProcess::start(&redis.url(), dir.path(), &[]);
    let (_, body, _) = submit(&api, KEY_A, "async=true", form("a.png", vec![1; 10])).await;
    let job_id = body["job_id"].as_str().unwrap().to_string();

    let (status, err) = get(&api, KEY_B, &format!("/api/v1/dedup/2d/jobs/{job_id}")).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "no existence leak");
    assert_eq!(err["error"], json!("JOB_NOT_FOUND"));
    let (status, _) = get(
        &api,
        KEY_A,
        "/api/v1/dedup/2d/jobs/00000000-0000-4000-8000-000000000000",
    )
    .await;
    assert_eq!(
        status,
        StatusCode::NOT_FOUND,
        "same answer as a missing job"
    );
    let (status, _) = post(
        &api,
        KEY_B,
        &format!("/api/v1/dedup/2d/jobs/{job_id}/cancel"),
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (_, list) = get(&api, KEY_B, "/api/v1/dedup/2d/jobs").await;
    assert_eq!(list, json!({"jobs": [], "total": 0}));
    let (_, list) = get(&api, KEY_A, "/api/v1/dedup/2d/jobs").await;
    assert_eq!(list["total"], json!(1));
    assert_eq!(list["jobs"][0]["job_id"], json!(job_id));
    let (status, job) = get(&api, KEY_A, &format!("/api/v1/dedup/2d/jobs/{job_id}")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(job["status"], json!("pending"));
}

#[tokio::test]
async fn queue_full_under_concurrent_submits_leaves_nothing_behind() {
    let redis = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let api = std::sync::Arc::new(ApiProcess::start(
        &redis.url(),
        dir.path(),
        &[("DEDUP2D_ASYNC_MAX_JOBS", "3")],
    ));
    let mut tasks = Vec::new();
    for i in 0..8u8 {
        let api = api.clone();
        tasks.push(tokio::spawn(async move {
            submit(&api, KEY_A, "async=true", form("x.png", vec![i; 32])).await
        }));
    }
    let mut ok = 0;
    let mut full = 0;
    for t in tasks {
        let (status, body, headers) = t.await.unwrap();
        match status {
            StatusCode::OK => ok += 1,
            StatusCode::TOO_MANY_REQUESTS => {
                full += 1;
                assert_eq!(body["error"], json!("JOB_QUEUE_FULL"));
                assert_eq!(headers.get("retry-after").unwrap(), "5");
            }
            other => panic!("unexpected {other}: {body}"),
        }
    }
    assert_eq!((ok, full), (3, 5));
    assert_eq!(
        uploads_in(dir.path()),
        3,
        "refused uploads are deleted again"
    );
    let mut conn = redis.manager().await;
    let active: u64 = conn.scard("dedup2d:active").await.unwrap();
    assert_eq!(active, 3);
}

#[tokio::test]
async fn cancel_of_a_pending_job_is_immediate_and_removes_the_upload() {
    let redis = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let api = ApiProcess::start(&redis.url(), dir.path(), &[]);
    let (_, body, _) = submit(&api, KEY_A, "async=true", form("c.png", vec![3; 10])).await;
    let job_id = body["job_id"].as_str().unwrap().to_string();
    assert_eq!(uploads_in(dir.path()), 1);
    let (status, out) = post(
        &api,
        KEY_A,
        &format!("/api/v1/dedup/2d/jobs/{job_id}/cancel"),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        out,
        json!({"job_id": job_id, "tenant_id": dedup2d::api::auth::tenant_id(KEY_A), "canceled": true})
    );
    let (_, job) = get(&api, KEY_A, &format!("/api/v1/dedup/2d/jobs/{job_id}")).await;
    assert_eq!(job["status"], json!("canceled"));
    assert_eq!(uploads_in(dir.path()), 0);
    let mut conn = redis.manager().await;
    let queued: u64 = conn.zcard("dedup2d:queue").await.unwrap();
    assert_eq!(queued, 0);
}

#[tokio::test]
async fn bad_input_gets_a_4xx_json_error_and_stores_nothing() {
    let redis = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let api = ApiProcess::start(
        &redis.url(),
        dir.path(),
        &[("DEDUP2D_API_MAX_UPLOAD_BYTES", "1000")],
    );
    let geom = |json: &'static [u8]| {
        form("g.png", vec![1; 10]).part("geom_json", Part::bytes(json).file_name("g.json"))
    };
    #[rustfmt::skip]
    let mut cases: Vec<(&str, &str, Form, u16, &str)> = vec![
        ("empty file", "async=true", form("e.png", vec![]), 400, "EMPTY_FILE"),
        ("too large", "async=true", form("big.png", vec![1; 5000]), 413, "FILE_TOO_LARGE"),
        ("missing file", "async=true", Form::new().text("other", "x"), 400, "MISSING_FILE"),
        ("bad geom_json", "async=true", geom(b"{not json"), 400, "INVALID_GEOM_JSON"),
        ("geom_json not an object", "async=true", geom(b"[1,2]"), 400, "INVALID_GEOM_JSON"),
    ];
    // Bad parameters with a good upload.
    #[rustfmt::skip]
    let bad_parameters = [
        ("http callback", "async=true&callback_url=http://hooks.example.com/x", "CALLBACK_URL_INVALID"),
        ("private callback", "async=true&callback_url=https://10.0.0.1/x", "CALLBACK_URL_INVALID"),
        ("bad mode", "async=true&mode=turbo", "INVALID_PARAMETER"),
        ("unknown parameter", "async=true&colour=red", "INVALID_PARAMETER"),
        ("bad max_results", "max_results=-4", "INVALID_PARAMETER"),
    ];
    for (what, query, error) in bad_parameters {
        cases.push((what, query, form("m.png", vec![1; 10]), 400, error));
    }
    for (what, query, f, code, error) in cases {
        let (status, body, _) = submit(&api, KEY_A, query, f).await;
        assert_eq!(status.as_u16(), code, "{what}: {body}");
        assert_eq!(body["error"], json!(error), "{what}: {body}");
        assert!(
            body["message"].as_str().is_some_and(|m| !m.is_empty()),
            "{what}: {body}"
        );
    }
    let (status, body, _) = submit(&api, "wrong-key", "async=true", form("a.png", vec![1])).await;
    assert_eq!(
        (status.as_u16(), body["error"].clone()),
        (401, json!("UNAUTHORIZED"))
    );
    for (path, error) in [
        ("/api/v1/dedup/2d/jobs?status=done", "INVALID_STATUS"),
        ("/api/v1/dedup/2d/jobs?limit=0", "INVALID_PARAMETER"),
        ("/api/v1/dedup/2d/jobs?limit=201", "INVALID_PARAMETER"),
        ("/api/v1/dedup/2d/jobs?limit=ten", "INVALID_PARAMETER"),
    ] {
        let (status, body) = get(&api, KEY_A, path).await;
        assert_eq!(
            (status.as_u16(), body["error"].clone()),
            (400, json!(error)),
            "{path}"
        );
    }
    assert_eq!(
        uploads_in(dir.path()),
        0,
        "nothing stored for rejected requests"
    );
    let mut conn = redis.manager().await;
    let keys: Vec<String> = conn.keys("*").await.unwrap();
    assert!(
        keys.is_empty(),
        "no Redis keys for rejected requests: {keys:?}"
    );
}

#[tokio::test]
async fn redis_down_is_503_and_the_upload_is_cleaned_up() {
    let mut redis = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let api = ApiProcess::start(&redis.url(), dir.path(), &[]);
    let (status, _) = get(&api, KEY_A, "/readyz").await;
    assert_eq!(status, StatusCode::OK);
    redis.kill();
    let (status, body, _) = submit(&api, KEY_A, "async=true", form("r.png", vec![1; 10])).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert_eq!(body["error"], json!("BACKEND_UNAVAILABLE"));
    assert_eq!(uploads_in(dir.path()), 0);
    let (status, _) = get(&api, KEY_A, "/readyz").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    let (status, _) = get(&api, KEY_A, "/api/v1/dedup/2d/jobs").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
}

#[tokio::test]
async fn cad_files_go_to_the_render_queue_when_configured() {
    let redis = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let api = ApiProcess::start(
        &redis.url(),
        dir.path(),
        &[("DEDUP2D_RENDER_QUEUE_NAME", "dedup2d:render")],
    );
    let (_, dxf, _) = submit(&api, KEY_A, "async=true", form("a.DWG", vec![1; 10])).await;
    let (_, png, _) = submit(&api, KEY_A, "async=true", form("a.png", vec![1; 10])).await;
    let mut conn = redis.manager().await;
    let render: Vec<String> = conn.zrange("dedup2d:render", 0, -1).await.unwrap();
    let main: Vec<String> = conn.zrange("dedup2d:queue", 0, -1).await.unwrap();
    assert_eq!(render, vec![dxf["job_id"].as_str().unwrap().to_string()]);
    assert_eq!(main, vec![png["job_id"].as_str().unwrap().to_string()]);
}

#[test]
fn the_api_refuses_to_start_without_keys_or_with_bad_numbers() {
    let dir = tempfile::tempdir().unwrap();
    for (env, expected) in [
        (vec![], "no API keys configured"),
        (
            vec![
                ("DEDUP2D_API_KEYS", "k"),
                ("DEDUP2D_ASYNC_TTL_SECONDS", "1h"),
            ],
            "DEDUP2D_ASYNC_TTL_SECONDS",
        ),
    ] {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_dedup2d"))
            .arg("api")
            .env_clear()
            .env("DEDUP2D_FILE_STORAGE_DIR", dir.path())
            .env("DEDUP2D_API_LISTEN", "127.0.0.1:0")
            .envs(env)
            .output()
            .unwrap();
        assert!(!out.status.success());
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(expected), "{stderr}");
    }
}

#[tokio::test]
async fn our_worker_runs_api_jobs_from_file_ref_and_the_result_comes_back() {
    let redis = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let logs = tempfile::tempdir().unwrap();
    let storage_dir = dir.path().display().to_string();
    let api = ApiProcess::start(&redis.url(), dir.path(), &[]);
    let mut worker = crate::support::worker::WorkerProc::spawn(
        &redis.url(),
        logs.path(),
        "api-e2e",
        &crate::support::worker::env(&[
            ("DEDUP2D_FILE_STORAGE", "local"),
            ("DEDUP2D_FILE_STORAGE_DIR", &storage_dir),
        ]),
    );
    worker
        .wait_healthy(std::time::Duration::from_secs(20))
        .await;
    let drawing = b"0\nSECTION\n2\nENTITIES\n0\nLINE\n0\nENDSEC\n0\nEOF\n".to_vec();
    let other = b"another drawing".to_vec();
    let mut ids = Vec::new();
    for bytes in [&drawing, &other, &drawing] {
        let (status, body, _) =
            submit(&api, KEY_A, "async=true", form("p.dxf", bytes.clone())).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        let id = body["job_id"].as_str().unwrap().to_string();
        assert!(
            payload(&redis, &id).await.get("file_bytes_b64").is_none(),
            "file_ref only"
        );
        ids.push(id);
        // Let each job finish before the next, so the duplicate answer is deterministic.
        crate::support::poll::eventually(
            "job completed",
            std::time::Duration::from_secs(30),
            || {
                let api = &api;
                let id = ids.last().unwrap().clone();
                async move {
                    let (_, job) = get(api, KEY_A, &format!("/api/v1/dedup/2d/jobs/{id}")).await;
                    (job["status"] == json!("completed")).then_some(())
                }
            },
        )
        .await;
    }
    let mut results = Vec::new();
    for (id, bytes) in ids.iter().zip([&drawing, &other, &drawing]) {
        let (_, job) = get(&api, KEY_A, &format!("/api/v1/dedup/2d/jobs/{id}")).await;
        assert_eq!(job["status"], json!("completed"), "{job}");
        assert_eq!(
            job["result"]["file_hash"],
            json!(hex::encode(sha2::Sha256::digest(bytes))),
            "the worker loaded exactly the uploaded bytes through file_ref"
        );
        results.push(job["result"].clone());
    }
    assert_eq!(results[0]["total_matches"], json!(0));
    assert_eq!(results[1]["total_matches"], json!(0));
    assert_eq!(results[2]["total_matches"], json!(1), "{}", results[2]);
    assert_eq!(
        crate::support::worker::metric(
            &worker.metrics().await,
            "dedup2d_legacy_b64_fallback_total"
        ),
        0.0
    );
}
