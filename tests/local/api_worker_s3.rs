//! The API and the worker as processes on S3 storage (a real S3-compatible server, moto):
//! upload through the API, file_ref to S3, the worker loads it with credentials from the
//! environment; a file_ref naming another bucket fails its job with the reason.

use std::time::Duration;

use crate::support::api::{ApiProcess, KEY_A};
use crate::support::redis::RedisServer;
use crate::support::s3::S3Server;
use crate::support::worker::{self as w, WorkerProc};
use dedup2d::contract::payload::FileRef;
use dedup2d::contract::store::JobStatus;
use reqwest::multipart::{Form, Part};
use serde_json::{json, Value};
use sha2::Digest;

#[tokio::test]
async fn api_and_worker_round_trip_a_file_through_s3() {
    let s3 = S3Server::start();
    s3.create_bucket("dedup2d-uploads").await;
    let redis = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let env = s3.env("dedup2d-uploads", "dedup2d/uploads");
    let env_refs: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let api = ApiProcess::start(&redis.url(), dir.path(), &env_refs);
    let mut worker = WorkerProc::spawn(&redis.url(), dir.path(), "s3-worker", &env);
    worker.wait_healthy(Duration::from_secs(20)).await;

    let bytes = b"0\nSECTION\n2\nENTITIES\n0\nCIRCLE\n0\nENDSEC\n0\nEOF\n".to_vec();
    let resp: Value = reqwest::Client::new()
        .post(api.url("/api/v1/dedup/2d/search?async=true"))
        .header("X-API-Key", KEY_A)
        .multipart(Form::new().part("file", Part::bytes(bytes.clone()).file_name("s3.dxf")))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let job_id = resp["job_id"].as_str().expect("job accepted").to_string();

    let store = w::store(redis.manager().await);
    let payload = store.load_payload(&job_id).await.unwrap().unwrap();
    let Some(FileRef::S3 { bucket, key }) = payload.file_ref.clone() else {
        panic!("expected an S3 file_ref, got {:?}", payload.file_ref);
    };
    assert_eq!(bucket, "dedup2d-uploads");
    assert!(
        key.starts_with(&format!("dedup2d/uploads/{job_id}/")),
        "{key}"
    );
    assert!(s3.exists(&bucket, &key).await, "the upload is in S3");

    let done = w::wait_finished(
        &store,
        std::slice::from_ref(&job_id),
        Duration::from_secs(30),
    )
    .await;
    let job = &done[&job_id];
    assert_eq!(
        job.status,
        JobStatus::Completed,
        "{job:?}\n{}",
        worker.log()
    );
    let result = store
        .get_for_tenant(&job_id, &dedup2d::api::auth::tenant_id(KEY_A))
        .await
        .unwrap();
    assert_eq!(
        result.result.unwrap()["file_hash"],
        json!(hex::encode(sha2::Sha256::digest(&bytes)))
    );

    // A file_ref into a bucket the worker is not configured for is refused before any request.
    let mut foreign = w::payload(
        Some(FileRef::S3 {
            bucket: "someone-elses-bucket".into(),
            key: "dedup2d/uploads/x/y".into(),
        }),
        None,
    );
    foreign.tenant_id = "t".into();
    let bad = w::submit(&store, foreign).await;
    let done = w::wait_finished(&store, std::slice::from_ref(&bad), Duration::from_secs(30)).await;
    let job = &done[&bad];
    assert_eq!(job.status, JobStatus::Failed);
    let error = job.error.clone().unwrap_or_default();
    assert!(error.contains("someone-elses-bucket"), "{error}");
}
