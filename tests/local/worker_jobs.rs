//! `dedup2d worker` as a process against a real redis-server and real file storage: both payload
//! formats, the result shape, duplicates, metrics, heartbeat, cleanup, bad payloads, timeout,
//! cancel, and shutdown.

use std::time::Duration;

use crate::support::worker::{self as w, LocalSetup};
use bytes::Bytes;
use dedup2d::contract::keys::Keys;
use dedup2d::contract::payload::FileRef;
use dedup2d::contract::store::{CancelOutcome, JobStatus};
use dedup2d::storage::FileStorage;
use redis::AsyncCommands;
use serde_json::{json, Value};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_formats_complete_with_the_contract_result_and_metrics() {
    let s = LocalSetup::start();
    let conn = s.redis.manager().await;
    let store = w::store(conn.clone());
    let mut worker = s.worker("w", &[]);
    worker.wait_healthy(Duration::from_secs(20)).await;

    // Heartbeat: capability JSON with a short TTL.
    let mut c = conn.clone();
    let hb_key = Keys::new(w::PREFIX).worker_heartbeat(&worker.hostname);
    let hb: String = c.get(&hb_key).await.expect("heartbeat present");
    let hb: Value = serde_json::from_str(&hb).unwrap();
    assert_eq!(hb["formats"], json!(["file_ref", "file_bytes_b64"]));
    assert_eq!(hb["queues"], json!([w::QUEUE]));
    assert_eq!(hb["pid"], json!(worker.pid()));
    assert!(hb["version"].as_str().is_some_and(|v| !v.is_empty()));
    assert!(hb["started_at"].as_f64().unwrap() > 1.7e9);
    let ttl: i64 = c.ttl(&hb_key).await.unwrap();
    assert!((1..=30).contains(&ttl), "ttl {ttl}");

    let drawing: &'static [u8] = b"0\nSECTION\n2\nENTITIES\n0\nLINE\n0\nENDSEC\n0\nEOF\n";
    let other: &'static [u8] = b"another drawing";

    // 1: file_ref only; 2: b64 only (legacy) with the same bytes; 3: both, other bytes.
    let id1 = uuid::Uuid::new_v4().to_string();
    let ref1 = s.upload(&id1, drawing).await;
    w::submit_as(&store, &id1, w::payload(Some(ref1.clone()), None)).await;
    let done = w::wait_finished(&store, std::slice::from_ref(&id1), Duration::from_secs(20)).await;
    assert_eq!(done[&id1].status, JobStatus::Completed, "{:?}", done[&id1]);

    let id2 = w::submit(&store, w::payload(None, Some(drawing))).await;
    let id3 = uuid::Uuid::new_v4().to_string();
    let ref3 = s.upload(&id3, other).await;
    w::submit_as(&store, &id3, w::payload(Some(ref3), Some(other))).await;
    let ids = vec![id2.clone(), id3.clone()];
    let done = w::wait_finished(&store, &ids, Duration::from_secs(20)).await;
    for id in &ids {
        assert_eq!(done[id].status, JobStatus::Completed, "{:?}", done[id]);
        assert!(done[id].started_at.is_some() && done[id].finished_at.is_some());
        assert_eq!(done[id].error, None);
    }

    let r1 = w::result(&conn, &id1).await.expect("result 1");
    for field in [
        "success",
        "total_matches",
        "duplicates",
        "similar",
        "timing",
        "warnings",
    ] {
        assert!(r1.get(field).is_some(), "result lacks {field}: {r1}");
    }
    assert_eq!(r1["success"], json!(true));
    assert_eq!(r1["total_matches"], json!(0));
    // The legacy-format job has the same bytes: the first job is its exact duplicate.
    let r2 = w::result(&conn, &id2).await.expect("result 2");
    assert_eq!(r2["total_matches"], json!(1), "{r2}");
    assert_eq!(r2["duplicates"][0]["drawing_id"], json!(id1));
    assert_eq!(r2["duplicates"][0]["similarity"], json!(1.0));
    assert_eq!(r2["duplicates"][0]["verdict"], json!("duplicate"));
    assert_eq!(r2["file_hash"], r1["file_hash"]);
    let r3 = w::result(&conn, &id3).await.expect("result 3");
    assert_eq!(r3["total_matches"], json!(0), "{r3}");

    // Uploads are cleaned up (local default), the job's ARQ record finished.
    let FileRef::Local { path } = &ref1 else {
        unreachable!()
    };
    assert!(!s.uploads().join(path).exists());
    // The job hash is final just before the ARQ record is finished: give that a moment.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let queued: i64 = c.zcard(w::QUEUE).await.unwrap();
        if queued == 0 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{queued} ARQ entries left after every job finished"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let page = worker.metrics().await;
    assert_eq!(
        w::metric(&page, "dedup2d_legacy_b64_fallback_total"),
        1.0,
        "{page}"
    );
    assert_eq!(
        w::metric(&page, "dedup2d_jobs_total{status=\"completed\"}"),
        3.0
    );
    assert_eq!(
        w::metric(
            &page,
            "dedup2d_file_downloads_total{backend=\"local\",status=\"success\"}"
        ),
        2.0
    );
    assert_eq!(
        w::metric(
            &page,
            "dedup2d_file_deletes_total{backend=\"local\",status=\"success\"}"
        ),
        2.0
    );
    assert_eq!(
        w::metric(
            &page,
            "dedup2d_worker_payload_format_total{format=\"b64_only\"}"
        ),
        1.0
    );
    assert_eq!(
        w::metric(
            &page,
            "dedup2d_job_duration_seconds_count{status=\"completed\"}"
        ),
        3.0
    );

    // Clean exit removes the heartbeat.
    worker.signal("TERM");
    let status = worker.wait_exit(Duration::from_secs(20)).await;
    assert!(status.success(), "{status}\n{}", worker.log());
    let exists: bool = c.exists(&hb_key).await.unwrap();
    assert!(!exists, "heartbeat removed on clean exit");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_payloads_fail_only_their_own_job_with_a_reason() {
    let s = LocalSetup::start();
    let conn = s.redis.manager().await;
    let store = w::store(conn.clone());
    let mut c = conn.clone();
    let keys = Keys::new(w::PREFIX);

    // A file outside the storage root and a symlink to it inside the root.
    let secret = s.dir.path().join("secret.txt");
    std::fs::write(&secret, b"secret").unwrap();
    std::os::unix::fs::symlink(&secret, s.uploads().join("escape.txt")).unwrap();

    let good_ref = |id: &str| {
        let id = id.to_string();
        let storage = &s.storage;
        async move {
            storage
                .save(&id, "ok.dxf", "", Bytes::from(format!("good {id}")))
                .await
                .unwrap()
        }
    };
    // (raw payload to store, expected reason fragment)
    let bad: Vec<(String, &str)> = vec![
        ("{\"tenant_id\": \"t\", ".into(), "payload is not valid JSON"),
        ("[\"not\", \"an\", \"object\"]".into(), "payload must be a JSON object"),
        (json!({"tenant_id": w::TENANT, "file_name": "a.dxf"}).to_string(),
            "Missing file_ref and file_bytes_b64 in job payload"),
        (json!({"tenant_id": w::TENANT, "file_bytes_b64": "***not base64***"}).to_string(),
            "file_bytes_b64 is not valid base64"),
        (json!({"tenant_id": w::TENANT, "file_ref": {"backend": "local", "path": "../secret.txt"}}).to_string(),
            "contains a '..' component"),
        (json!({"tenant_id": w::TENANT, "file_ref": {"backend": "local", "path": "/etc/passwd"}}).to_string(),
            "is absolute"),
        (json!({"tenant_id": w::TENANT, "file_ref": {"backend": "local", "path": "escape.txt"}}).to_string(),
            "resolves outside the storage root"),
        (json!({"tenant_id": w::TENANT, "file_ref": {"backend": "gcs", "path": "x/y"}}).to_string(),
            "Unknown file_ref backend: \"gcs\""),
        (json!({"tenant_id": w::TENANT, "file_ref": {"backend": "local", "path": "nojob/abc_missing.dxf"}}).to_string(),
            "not found"),
        (json!({"tenant_id": w::TENANT, "file_ref": {"backend": "s3", "bucket": "other", "key": "dedup2d/uploads/x"}}).to_string(),
            "does not match the configured storage backend \"local\""),
        (json!({"tenant_id": w::TENANT, "file_bytes_b64": "QUJD", "request_params": {"duplicate_threshold": 0.2, "similar_threshold": 0.9}}).to_string(),
            "Invalid request_params: invalid thresholds"),
        (json!({"tenant_id": w::TENANT, "file_ref": "j/abc_a.dxf"}).to_string(),
            "file_ref must be an object"),
        (json!({"tenant_id": w::TENANT, "file_bytes_b64": 12345}).to_string(),
            "file_bytes_b64 must be a string"),
    ];

    let mut bad_ids = Vec::new();
    let mut good_ids = Vec::new();
    for (raw, _) in &bad {
        let id = w::submit(&store, w::payload(None, Some(b"placeholder"))).await;
        let _: () = c.set_ex(keys.payload(&id), raw, 3600).await.unwrap();
        bad_ids.push(id);
        // A good job after every bad one.
        let gid = uuid::Uuid::new_v4().to_string();
        let r = good_ref(&gid).await;
        w::submit_as(&store, &gid, w::payload(Some(r), None)).await;
        good_ids.push(gid);
    }
    // The payload key is gone entirely (expired before the worker got to it).
    let gone = w::submit(&store, w::payload(None, Some(b"x"))).await;
    let _: () = c.del(keys.payload(&gone)).await.unwrap();

    let mut worker = s.worker("w", &[("DEDUP2D_WORKER_MAX_JOBS", "3")]);
    worker.wait_healthy(Duration::from_secs(20)).await;
    let mut all = bad_ids.clone();
    all.extend(good_ids.iter().cloned());
    all.push(gone.clone());
    let done = w::wait_finished(&store, &all, Duration::from_secs(60)).await;

    for ((_, want), id) in bad.iter().zip(&bad_ids) {
        let v = &done[id];
        assert_eq!(v.status, JobStatus::Failed, "{want}: {v:?}");
        let err = v.error.as_deref().unwrap_or("");
        assert!(err.contains(want), "job {id}: error {err:?} lacks {want:?}");
        assert!(w::result(&conn, id).await.is_none());
    }
    assert!(done[&gone]
        .error
        .as_deref()
        .unwrap()
        .contains("Missing payload in Redis"));
    for id in &good_ids {
        assert_eq!(done[id].status, JobStatus::Completed, "{:?}", done[id]);
    }
    assert_eq!(std::fs::read(&secret).unwrap(), b"secret", "never touched");
    // The worker carried on and is still healthy.
    let page = worker.metrics().await;
    assert_eq!(
        w::metric(&page, "dedup2d_jobs_total{status=\"failed\"}"),
        bad.len() as f64 + 1.0
    );
    assert_eq!(
        w::metric(&page, "dedup2d_jobs_total{status=\"completed\"}"),
        good_ids.len() as f64
    );
    worker.wait_healthy(Duration::from_secs(5)).await;
    eprintln!("bad payload kinds tried: {}", bad.len() + 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timeout_fails_the_job_and_cancel_cancels_it() {
    let s = LocalSetup::start();
    let conn = s.redis.manager().await;
    let store = w::store(conn.clone());
    let mut c = conn.clone();

    // Cancel requested before the worker starts it (the flag set, job still pending).
    let pre = w::submit(&store, w::payload(None, Some(b"pre"))).await;
    let _: () = c
        .hset(Keys::new(w::PREFIX).job(&pre), "cancel_requested", "1")
        .await
        .unwrap();

    let mut worker = s.worker(
        "w",
        &[
            ("DEDUP2D_ASYNC_JOB_TIMEOUT_SECONDS", "1"),
            ("DEDUP2D_WORKER_DEBUG_JOB_DELAY_MS", "3000"),
        ],
    );
    worker.wait_healthy(Duration::from_secs(20)).await;
    let slow = w::submit(&store, w::payload(None, Some(b"slow"))).await;
    let done = w::wait_finished(
        &store,
        &[pre.clone(), slow.clone()],
        Duration::from_secs(20),
    )
    .await;
    assert_eq!(done[&pre].status, JobStatus::Canceled, "{:?}", done[&pre]);
    assert_eq!(
        done[&slow].status,
        JobStatus::Failed,
        "timeout is failed, not canceled"
    );
    assert_eq!(done[&slow].error.as_deref(), Some("timed out after 1 s"));
    worker.signal("TERM");
    worker.wait_exit(Duration::from_secs(20)).await;

    // Cancel while running: the worker notices within about a second and ends it canceled.
    let mut worker = s.worker("w2", &[("DEDUP2D_WORKER_DEBUG_JOB_DELAY_MS", "20000")]);
    worker.wait_healthy(Duration::from_secs(20)).await;
    let running = w::submit(&store, w::payload(None, Some(b"running"))).await;
    w::wait_status(
        &store,
        &running,
        JobStatus::InProgress,
        Duration::from_secs(10),
    )
    .await;
    let outcome = store
        .cancel_for_tenant(&running, w::TENANT, &[])
        .await
        .unwrap();
    assert_eq!(outcome, CancelOutcome::Requested);
    let t = std::time::Instant::now();
    let done = w::wait_finished(
        &store,
        std::slice::from_ref(&running),
        Duration::from_secs(10),
    )
    .await;
    assert_eq!(done[&running].status, JobStatus::Canceled);
    assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
    assert!(w::result(&conn, &running).await.is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_running_jobs_finish() {
    let s = LocalSetup::start();
    let conn = s.redis.manager().await;
    let store = w::store(conn.clone());
    let mut worker = s.worker(
        "w",
        &[
            ("DEDUP2D_WORKER_MAX_JOBS", "4"),
            ("DEDUP2D_WORKER_DEBUG_JOB_DELAY_MS", "2000"),
            ("DEDUP2D_WORKER_SHUTDOWN_GRACE_SECONDS", "20"),
        ],
    );
    worker.wait_healthy(Duration::from_secs(20)).await;
    let mut ids = Vec::new();
    for i in 0..6u8 {
        ids.push(w::submit(&store, w::payload(None, Some(&[i; 16]))).await);
    }
    // Wait until 4 run (max jobs), then SIGTERM.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let mut running = 0;
        for id in &ids {
            if store.get(id).await.unwrap().unwrap().status == JobStatus::InProgress {
                running += 1;
            }
        }
        if running == 4 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "4 jobs never ran together"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    worker.signal("TERM");
    let status = worker.wait_exit(Duration::from_secs(20)).await;
    assert!(status.success(), "{status}");
    let mut completed = 0;
    // Not necessarily the last two submitted: jobs enqueued in the same millisecond are claimed in
    // id order.
    let mut left = Vec::new();
    for id in &ids {
        match store.get(id).await.unwrap().unwrap().status {
            JobStatus::Completed => completed += 1,
            JobStatus::Pending => left.push(id.clone()),
            other => panic!("job {id} ended {other:?} on shutdown\n{}", worker.log()),
        }
    }
    assert_eq!(
        (completed, left.len()),
        (4, 2),
        "in-flight finished, nothing new claimed"
    );

    // Grace period shorter than the jobs: they are handed back, not failed or canceled.
    let mut worker = s.worker(
        "w2",
        &[
            ("DEDUP2D_WORKER_MAX_JOBS", "4"),
            ("DEDUP2D_WORKER_DEBUG_JOB_DELAY_MS", "30000"),
            ("DEDUP2D_WORKER_SHUTDOWN_GRACE_SECONDS", "1"),
        ],
    );
    worker.wait_healthy(Duration::from_secs(20)).await;
    for id in &left {
        w::wait_status(&store, id, JobStatus::InProgress, Duration::from_secs(10)).await;
    }
    worker.signal("TERM");
    let t = std::time::Instant::now();
    worker.wait_exit(Duration::from_secs(10)).await;
    assert!(t.elapsed() < Duration::from_secs(5));
    let mut c = conn.clone();
    for id in &left {
        let v = store.get(id).await.unwrap().unwrap();
        assert_eq!(
            v.status,
            JobStatus::InProgress,
            "shutdown must not finish a job"
        );
        let held: bool = c
            .exists(dedup2d::contract::keys::arq::in_progress(id))
            .await
            .unwrap();
        assert!(!held, "handed back: another worker may claim it now");
        let score: Option<f64> = c.zscore(w::QUEUE, id).await.unwrap();
        assert!(score.is_some(), "still queued");
    }
    let worker = s.worker("w3", &[]);
    let done = w::wait_finished(&store, &left, Duration::from_secs(20)).await;
    for id in &left {
        assert_eq!(done[id].status, JobStatus::Completed);
    }
    drop(worker);
}
