//! Every result document the worker writes, and every job response the API answers, is valid
//! against the repository's JSON Schemas (`docs/schemas/`, written from the Python API's
//! response models): no match, duplicates, a partial answer (geometry the engine could not
//! use), a failed job. The schemas themselves reject the shapes the old API refused (`final_level`
//! null, a match item without `confidence`/`levels`). Vision pass-through results are checked
//! in `vision_backend.rs`, the geometric and raster engines' results in `engine_verdicts.rs`.

use std::time::{Duration, Instant};

use crate::support::api::{ApiProcess, KEY_A};
use crate::support::redis::RedisServer;
use crate::support::schema::{assert_valid, violations, JOB_RESPONSE, SEARCH_RESULT};
use crate::support::worker::{self as w, WorkerProc};
use dedup2d::api::auth::tenant_id;
use dedup2d::contract::keys::Keys;
use dedup2d::contract::store::{JobStore, NewJob};
use reqwest::multipart::{Form, Part};
use serde_json::{json, Value};

async fn submit(api: &ApiProcess, name: &str, bytes: &[u8]) -> String {
    let form = Form::new().part(
        "file",
        Part::bytes(bytes.to_vec()).file_name(name.to_string()),
    );
    post_form(api, form).await
}

async fn submit_with_geom(api: &ApiProcess, name: &str, bytes: &[u8]) -> String {
    let form = Form::new()
        .part(
            "file",
            Part::bytes(bytes.to_vec()).file_name(name.to_string()),
        )
        .part("geom_json", Part::bytes(br#"{"entities": []}"#.to_vec()));
    post_form(api, form).await
}

async fn post_form(api: &ApiProcess, form: Form) -> String {
    let body: Value = reqwest::Client::new()
        .post(api.url("/api/v1/dedup/2d/search?async=true"))
        .header("X-API-Key", KEY_A)
        .multipart(form)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    body["job_id"].as_str().expect("job_id").to_string()
}

/// Polls the API until the job is finished; returns the job response.
async fn finished(api: &ApiProcess, id: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let v: Value = reqwest::Client::new()
            .get(api.url(&format!("/api/v1/dedup/2d/jobs/{id}")))
            .header("X-API-Key", KEY_A)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if ["completed", "failed", "canceled"].contains(&v["status"].as_str().unwrap_or("")) {
            return v;
        }
        assert!(Instant::now() < deadline, "job {id} not finished: {v}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn worker_results_and_api_job_responses_match_the_schemas() {
    let redis = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let uploads = dir.path().join("uploads");
    let api = ApiProcess::start(&redis.url(), &uploads, &[]);
    let mut worker = WorkerProc::spawn(
        &redis.url(),
        dir.path(),
        "schema",
        &w::env(&[
            ("DEDUP2D_FILE_STORAGE", "local"),
            ("DEDUP2D_FILE_STORAGE_DIR", uploads.to_str().unwrap()),
        ]),
    );
    worker.wait_healthy(Duration::from_secs(20)).await;
    let conn = redis.manager().await;
    let tenant = tenant_id(KEY_A);

    let first = submit(&api, "a.png", b"drawing A").await;
    let first_done = finished(&api, &first).await;
    let dup = submit(&api, "a-copy.png", b"drawing A").await;
    let other = submit(&api, "b.png", b"drawing B").await;
    // A partial answer: the engine cannot use the geometry it was given, and says so.
    let partial = submit_with_geom(&api, "c.png", b"drawing C").await;
    // A failed job: a payload without any file.
    let failed = uuid::Uuid::new_v4().to_string();
    let mut payload = w::payload(None, None);
    payload.tenant_id = tenant.clone();
    JobStore::new(conn.clone(), Keys::new(w::PREFIX), 3600, 1000)
        .submit(&NewJob {
            job_id: failed.clone(),
            tenant_id: tenant.clone(),
            payload,
            queue_name: w::QUEUE.into(),
        })
        .await
        .unwrap();

    let mut responses = vec![first_done];
    for id in [&dup, &other, &partial, &failed] {
        responses.push(finished(&api, id).await);
    }
    assert_valid(JOB_RESPONSE, &responses);
    let results: Vec<Value> = responses[..4].iter().map(|r| r["result"].clone()).collect();
    assert_valid(SEARCH_RESULT, &results);

    // What the documents say, beyond their shape.
    let [no_match, duplicate, other_r, partial_r] = &results[..] else {
        unreachable!()
    };
    for r in &results {
        assert_eq!(r["final_level"], json!(1), "the hash level ran: {r}");
    }
    assert_eq!(no_match["total_matches"], json!(0));
    assert_eq!(other_r["total_matches"], json!(0));
    let item = &duplicate["duplicates"][0];
    assert_eq!(item["drawing_id"], json!(first));
    assert_eq!(item["file_name"], json!("a.png"));
    assert_eq!(item["confidence"], json!(1.0));
    assert_eq!(item["match_level"], json!(1));
    assert_eq!(item["levels"]["l1"]["method"], json!("sha256"));
    assert!(
        partial_r["warnings"]
            .as_array()
            .unwrap()
            .iter()
            .any(|w| w.as_str().unwrap().starts_with("query_geom_ignored")),
        "{partial_r}"
    );
    assert_eq!(responses[4]["status"], json!("failed"));
    assert_eq!(responses[4]["result"], Value::Null);

    // The schema refuses what the old API refused.
    let mut bad = duplicate.clone();
    bad["final_level"] = Value::Null;
    bad["duplicates"][0]
        .as_object_mut()
        .unwrap()
        .remove("confidence");
    bad["duplicates"][0]
        .as_object_mut()
        .unwrap()
        .remove("levels");
    let v = violations(SEARCH_RESULT, &[bad]);
    for needle in [
        "final_level",
        "'confidence' is a required",
        "'levels' is a required",
    ] {
        assert!(v.contains(needle), "{needle:?} not reported in:\n{v}");
    }
}
