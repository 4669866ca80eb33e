//! Webhook delivery against a real HTTP receiver on loopback: signature, canonical body,
//! retries on 503, no redirect following, SSRF guard (literal and DNS), and the outcome in the
//! job hash when the worker process sends it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::support::redis::RedisServer;
use crate::support::worker::{self as w, WorkerProc};
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use axum::routing::post;
use axum::Router;
use dedup2d::contract::callback::CallbackRecord;
use dedup2d::contract::store::JobStatus;
use dedup2d::worker::callback::{
    canonical_json, signature, CallbackSender, CallbackSettings, GuardedResolver,
};
use serde_json::json;

#[derive(Clone, Default)]
struct Receiver {
    hits: Arc<Mutex<Vec<(String, HeaderMap, String)>>>,
    fail_first: Arc<Mutex<HashMap<String, u32>>>,
}

async fn hook(
    State(r): State<Receiver>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: String,
) -> impl IntoResponse {
    r.hits.lock().unwrap().push((name.clone(), headers, body));
    match name.as_str() {
        "redirect" => (StatusCode::FOUND, [("location", "/hook/target")]).into_response(),
        "gone" => StatusCode::GONE.into_response(),
        _ => {
            let mut f = r.fail_first.lock().unwrap();
            let left = f.entry(name).or_insert(1);
            if *left > 0 {
                *left -= 1;
                StatusCode::SERVICE_UNAVAILABLE.into_response()
            } else {
                StatusCode::NO_CONTENT.into_response()
            }
        }
    }
}

async fn start_receiver() -> (Receiver, u16) {
    let r = Receiver::default();
    let app = Router::new()
        .route("/hook/{name}", post(hook))
        .with_state(r.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (r, port)
}

fn settings(pairs: &[(&str, &str)]) -> CallbackSettings {
    CallbackSettings::from_map(
        &pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
    )
    .unwrap()
}

/// A finished job's webhook body.
fn record(job_id: &str, tenant_id: Option<&str>) -> CallbackRecord {
    CallbackRecord {
        job_id: job_id.into(),
        tenant_id: tenant_id.map(Into::into),
        status: JobStatus::Completed,
        started_at: 1.5,
        finished_at: 2.5,
        result: Some(json!({"b": 1, "a": [true]})),
        error: None,
    }
}

#[tokio::test]
async fn delivery_retries_signs_and_never_follows_redirects() {
    let (recv, port) = start_receiver().await;
    let sender = CallbackSender::new(settings(&[
        ("DEDUP2D_CALLBACK_ALLOW_HTTP", "1"),
        ("DEDUP2D_CALLBACK_BLOCK_PRIVATE_NETWORKS", "0"),
        ("DEDUP2D_CALLBACK_HMAC_SECRET", "s3cret"),
        ("DEDUP2D_CALLBACK_BACKOFF_BASE_SECONDS", "0.05"),
    ]))
    .unwrap();
    let body = record("j1", Some("t"));

    let out = sender
        .send(&format!("http://127.0.0.1:{port}/hook/flaky"), &body)
        .await;
    assert!(out.ok, "{out:?}");
    assert_eq!((out.attempts, out.http_status), (2, Some(204)));
    {
        let hits = recv.hits.lock().unwrap();
        assert_eq!(hits.len(), 2, "503 retried once");
        let (_, headers, raw) = &hits[1];
        assert_eq!(raw, &canonical_json(&serde_json::to_value(&body).unwrap()));
        assert!(
            raw.starts_with(
                r#"{"error":null,"finished_at":2.5,"job_id":"j1","result":{"a":[true],"b":1}"#
            ),
            "{raw}"
        );
        assert_eq!(headers["x-dedup-job-id"], "j1");
        assert_eq!(headers["x-dedup-tenant-id"], "t");
        assert_eq!(headers["content-type"], "application/json");
        let sig = headers["x-dedup-signature"].to_str().unwrap();
        let ts: i64 = sig
            .strip_prefix("t=")
            .unwrap()
            .split(',')
            .next()
            .unwrap()
            .parse()
            .unwrap();
        assert_eq!(sig, signature("s3cret", ts, "j1", raw));
    }

    let out = sender
        .send(
            &format!("http://127.0.0.1:{port}/hook/redirect"),
            &record("j2", None),
        )
        .await;
    assert!(!out.ok);
    assert_eq!((out.attempts, out.http_status), (1, Some(302)));
    let out = sender
        .send(
            &format!("http://127.0.0.1:{port}/hook/gone"),
            &record("j3", None),
        )
        .await;
    assert_eq!(
        (out.ok, out.attempts, out.http_status),
        (false, 1, Some(410))
    );
    let hits: Vec<String> = recv
        .hits
        .lock()
        .unwrap()
        .iter()
        .map(|h| h.0.clone())
        .collect();
    assert!(
        !hits.contains(&"target".to_string()),
        "redirect not followed: {hits:?}"
    );

    // Network errors are retried up to the attempt limit.
    let dead = crate::support::process::free_port();
    let out = sender
        .send(&format!("http://127.0.0.1:{dead}/x"), &record("j4", None))
        .await;
    assert_eq!((out.ok, out.attempts, out.http_status), (false, 3, None));
    assert!(out.error.is_some());
}

#[tokio::test]
async fn default_policy_refuses_http_private_and_names_resolving_to_loopback() {
    let (recv, port) = start_receiver().await;
    let strict = CallbackSender::new(settings(&[])).unwrap();
    let url = format!("http://127.0.0.1:{port}/hook/a");
    let out = strict.send(&url, &record("j", None)).await;
    assert_eq!(out.attempts, 0);
    assert!(out.error.unwrap().contains("https"));

    let http_ok = CallbackSender::new(settings(&[("DEDUP2D_CALLBACK_ALLOW_HTTP", "1")])).unwrap();
    let out = http_ok.send(&url, &record("j", None)).await;
    assert_eq!(out.attempts, 0);
    assert!(out.error.unwrap().contains("private"));
    // Names that pass the literal check but resolve to loopback are refused at DNS time
    // (the policy only sees the name; the resolver sees the addresses).
    use reqwest::dns::Resolve;
    let guarded = GuardedResolver::new(true);
    let err = guarded
        .resolve("localhost".parse().unwrap())
        .await
        .err()
        .expect("loopback-only name refused")
        .to_string();
    assert!(err.contains("loopback/private"), "{err}");
    let open = GuardedResolver::new(false);
    let addrs: Vec<_> = open
        .resolve("localhost".parse().unwrap())
        .await
        .map_err(|e| e.to_string())
        .unwrap()
        .collect();
    assert!(addrs.iter().any(|a| a.ip().is_loopback()), "{addrs:?}");
    assert!(
        recv.hits.lock().unwrap().is_empty(),
        "nothing reached the receiver"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn worker_records_the_callback_outcome_in_the_job_hash() {
    let (recv, port) = start_receiver().await;
    let redis = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let store = w::store(redis.manager().await);
    let env = w::env(&[
        (
            "DEDUP2D_FILE_STORAGE_DIR",
            dir.path().join("up").to_str().unwrap(),
        ),
        ("DEDUP2D_CALLBACK_ALLOW_HTTP", "1"),
        ("DEDUP2D_CALLBACK_BLOCK_PRIVATE_NETWORKS", "0"),
        ("DEDUP2D_CALLBACK_HMAC_SECRET", "k"),
        ("DEDUP2D_CALLBACK_BACKOFF_BASE_SECONDS", "0.05"),
    ]);
    let mut worker = WorkerProc::spawn(&redis.url(), dir.path(), "cb", &env);
    worker.wait_healthy(Duration::from_secs(20)).await;

    let mut ok = w::payload(None, Some(b"callback me"));
    ok.callback_url = Some(format!("http://127.0.0.1:{port}/hook/ok"));
    let ok_id = w::submit(&store, ok).await;
    let mut bad = w::payload(None, Some(b"callback me too"));
    bad.callback_url = Some(format!("http://127.0.0.1:{port}/hook/gone"));
    let bad_id = w::submit(&store, bad).await;
    w::wait_finished(
        &store,
        &[ok_id.clone(), bad_id.clone()],
        Duration::from_secs(20),
    )
    .await;
    // The callback fields are written after the final status.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let (okv, badv) = loop {
        let okv = store.get(&ok_id).await.unwrap().unwrap();
        let badv = store.get(&bad_id).await.unwrap().unwrap();
        if okv.callback_status != "pending" && badv.callback_status != "pending" {
            break (okv, badv);
        }
        assert!(
            std::time::Instant::now() < deadline,
            "callbacks never recorded"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(okv.status, JobStatus::Completed);
    assert_eq!(okv.callback_status, "success");
    assert_eq!(
        (okv.callback_attempts, okv.callback_http_status),
        (2, Some(204))
    );
    assert!(okv.callback_finished_at.is_some());
    assert_eq!(badv.callback_status, "failed");
    assert_eq!(
        (badv.callback_attempts, badv.callback_http_status),
        (1, Some(410))
    );
    assert_eq!(badv.callback_last_error.as_deref(), Some("http_status:410"));

    let hits = recv.hits.lock().unwrap();
    let (_, headers, raw) = hits.iter().find(|h| h.0 == "ok").unwrap();
    let body: CallbackRecord = serde_json::from_str(raw).unwrap();
    assert_eq!(body.job_id, ok_id);
    assert_eq!(body.tenant_id.as_deref(), Some(w::TENANT));
    assert_eq!(body.status, JobStatus::Completed);
    assert_eq!(body.result.unwrap()["success"], json!(true));
    // Compact and key-sorted (compared structurally: re-serializing floats may differ).
    assert!(!raw.contains(": ") && !raw.contains(", "), "{raw}");
    let positions: Vec<usize> = [
        "\"error\":",
        "\"finished_at\":",
        "\"job_id\":",
        "\"result\":",
        "\"started_at\":",
        "\"status\":",
        "\"tenant_id\":",
    ]
    .iter()
    .map(|k| {
        raw.find(k)
            .unwrap_or_else(|| panic!("{k} missing in {raw}"))
    })
    .collect();
    assert!(positions.windows(2).all(|p| p[0] < p[1]), "{raw}");
    let sig = headers["x-dedup-signature"].to_str().unwrap();
    let ts: i64 = sig[2..].split(',').next().unwrap().parse().unwrap();
    assert_eq!(sig, signature("k", ts, &ok_id, raw));
}
