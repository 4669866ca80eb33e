//! Hostile inputs against `dedup2d worker` as a real process on a real redis-server: poison ARQ
//! records, records and job hashes of the wrong type, forged try numbers, oversize payloads,
//! malformed payloads with an upload behind them. Each case asserts the job's final state and
//! error text, that the worker keeps serving (a good job after the bad ones completes and the
//! process is still alive), and that nothing is left behind: no lock, retry key or queue entry,
//! no upload, and no key without a TTL except the two the contract keeps (the active set and the
//! queue).

use std::collections::HashMap;
use std::time::Duration;

use crate::support::worker::{self as w, LocalSetup, WorkerProc};
use dedup2d::contract::arq::{JobRecord, Outcome};
use dedup2d::contract::keys::{arq as arq_keys, Keys};
use dedup2d::contract::payload::FileRef;
use dedup2d::contract::queue::ArqQueue;
use dedup2d::contract::store::{JobStatus, JobStore};
use dedup2d::storage::FileStorage;
use redis::aio::ConnectionManager;
use redis::AsyncCommands;
use serde_json::json;

/// A worker that deletes each job's upload when the job finishes, with `extra` environment.
fn hostile_worker(s: &LocalSetup, extra: &[(&str, &str)]) -> WorkerProc {
    let mut env = vec![("DEDUP2D_FILE_STORAGE_CLEANUP_ON_FINISH", "1")];
    env.extend_from_slice(extra);
    s.worker("hostile", &env)
}

/// Files left under the storage root (directories are not counted).
fn files_left(s: &LocalSetup) -> Vec<String> {
    fn walk(dir: &std::path::Path, out: &mut Vec<String>) {
        for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                walk(&p, out);
            } else {
                out.push(p.display().to_string());
            }
        }
    }
    let mut out = Vec::new();
    walk(&s.uploads(), &mut out);
    out
}

/// Every key in the database with its TTL (-1: none).
async fn key_ttls(conn: &ConnectionManager) -> HashMap<String, i64> {
    let mut c = conn.clone();
    let mut cursor: u64 = 0;
    let mut out = HashMap::new();
    loop {
        let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("COUNT")
            .arg(500)
            .query_async(&mut c)
            .await
            .unwrap();
        for k in keys {
            let ttl: i64 = c.ttl(&k).await.unwrap();
            out.insert(k, ttl);
        }
        if next == 0 {
            return out;
        }
        cursor = next;
    }
}

/// No lock, retry counter, record or queue entry of `id` remains, and it is off the active set.
async fn assert_arq_clean(conn: &ConnectionManager, id: &str) {
    let mut c = conn.clone();
    for k in [
        arq_keys::in_progress(id),
        arq_keys::retry(id),
        arq_keys::job(id),
    ] {
        let n: i64 = c.exists(&k).await.unwrap();
        assert_eq!(n, 0, "{k} left behind");
    }
    let score: Option<f64> = c.zscore(w::QUEUE, id).await.unwrap();
    assert!(score.is_none(), "{id} still queued");
    let active: bool = c
        .sismember(Keys::new(w::PREFIX).active(), id)
        .await
        .unwrap();
    assert!(!active, "{id} still counts as active");
}

/// Every key has a TTL except the active set and the queue (bounded by the jobs in them).
async fn assert_no_key_without_ttl(conn: &ConnectionManager) {
    let keys = Keys::new(w::PREFIX);
    let allowed = [keys.active(), w::QUEUE.to_string()];
    for (k, ttl) in key_ttls(conn).await {
        if !allowed.contains(&k) {
            assert!(ttl > 0, "key {k} has no TTL ({ttl})");
        }
    }
}

/// A protocol-2 pickle of a list nested `depth` levels deep (or tuples with `tuples`).
fn nested(depth: usize, tuples: bool) -> Vec<u8> {
    let mut p = vec![0x80, 2];
    if tuples {
        p.push(b'N');
        p.extend(std::iter::repeat_n(0x85u8, depth)); // TUPLE1
    } else {
        for _ in 0..depth {
            p.extend_from_slice(b"](");
        }
        p.push(b'N');
        p.extend(std::iter::repeat_n(b'e', depth));
    }
    p.push(b'.');
    p
}

/// The process exists and has not exited (an exited child not yet reaped is a zombie, `Z`).
fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        stat.rsplit(") ")
            .next()
            .is_some_and(|rest| !rest.starts_with('Z'))
    })
}

fn corpus_file(name: &str) -> Vec<u8> {
    std::fs::read(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/corpus")
            .join(name),
    )
    .unwrap()
}

fn record_with_args(args: Vec<serde_pickle::Value>, function: &str) -> Vec<u8> {
    JobRecord {
        function: function.into(),
        args,
        kwargs: Default::default(),
        job_try: None,
        enqueue_time_ms: 1,
    }
    .encode()
}

/// A submitted job with an upload behind it (file_ref payload).
async fn submit_with_upload(s: &LocalSetup, store: &JobStore, data: &[u8]) -> String {
    submit_with_ref(s, store, data).await.0
}

async fn submit_with_ref(s: &LocalSetup, store: &JobStore, data: &[u8]) -> (String, FileRef) {
    let id = uuid::Uuid::new_v4().to_string();
    let r = s.upload(&id, data.to_vec()).await;
    w::submit_as(store, &id, w::payload(Some(r.clone()), None)).await;
    (id, r)
}

/// How a poisoned job is poisoned.
enum Poison {
    /// `arq:job:{id}` replaced by these bytes.
    Record(Vec<u8>),
    /// `arq:job:{id}` replaced by a hash.
    RecordIsAHash,
    /// `{prefix}:payload:{id}` replaced by this text.
    Payload(String),
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poison_records_fail_their_own_job_at_once_and_the_worker_keeps_serving() {
    let s = LocalSetup::start();
    let conn = s.redis.manager().await;
    let store = w::store(conn.clone());
    let mut c = conn.clone();
    let keys = Keys::new(w::PREFIX);

    let deep_dict = {
        // {'t': None, 'f': 'dedup2d_run_job', 'a': (<2,000 nested lists>,), ...}
        let inner = nested(2000, false);
        let mut p = vec![0x80, 2, b'}', b'(', b'X', 1, 0, 0, 0, b'a'];
        p.extend_from_slice(&inner[2..inner.len() - 1]);
        p.extend_from_slice(&[0x85, b'u', b'.']);
        p
    };
    // (poison, expected final status, expected error fragment)
    let cases: Vec<(&str, Poison, JobStatus, &str)> = vec![
        ("2,000 nested lists", Poison::Record(nested(2000, false)), JobStatus::Failed,
            "cannot decode job record: ARQ record refused before decoding: pickle nests deeper than 64 levels"),
        ("2,000 nested tuples", Poison::Record(nested(2000, true)), JobStatus::Failed,
            "pickle nests deeper than 64 levels"),
        ("a record dict whose args nest 2,000 deep", Poison::Record(deep_dict), JobStatus::Failed,
            "pickle nests deeper than 64 levels"),
        ("a 2,000-link chain through memo references", Poison::Record(corpus_file("pickle/bad-memo-chain-2000.pickle")), JobStatus::Failed,
            "pickle nests deeper than 64 levels"),
        ("a memo reference bomb", Poison::Record(corpus_file("pickle/bad-memo-doubling.pickle")), JobStatus::Failed,
            "pickle expands to more than 100000 values"),
        ("a self-referencing record", Poison::Record(corpus_file("pickle/bad-self-reference.pickle")), JobStatus::Failed,
            "pickle refers to itself"),
        ("corrupt pickle", Poison::Record(b"\x80\x04garbage".to_vec()), JobStatus::Failed,
            "cannot decode job record"),
        ("truncated pickle", Poison::Record(record_with_args(vec![], "dedup2d_run_job")[..20].to_vec()), JobStatus::Failed,
            "cannot decode job record"),
        ("a record that is not a dict", Poison::Record(b"\x80\x02N.".to_vec()), JobStatus::Failed,
            "ARQ record is not a dict"),
        ("unknown function", Poison::Record(record_with_args(vec![serde_pickle::Value::String("x".into())], "os.system")), JobStatus::Failed,
            "function \"os.system\" not found"),
        ("args not a job id", Poison::Record(record_with_args(vec![serde_pickle::Value::I64(7)], "dedup2d_run_job")), JobStatus::Failed,
            "dedup2d_run_job expects the job id as its argument"),
        ("no args", Poison::Record(record_with_args(vec![], "dedup2d_run_job")), JobStatus::Failed,
            "dedup2d_run_job expects the job id as its argument"),
        ("a 2 MiB record", Poison::Record(vec![b'N'; 2 << 20]), JobStatus::Failed,
            "job record is 2097152 bytes, over the limit of 1048576 bytes; it was not read"),
        ("record key of the wrong type", Poison::RecordIsAHash, JobStatus::Failed,
            "job record key holds a Redis hash, not a string"),
        ("payload 10,000 levels deep", Poison::Payload(format!("{}{}", "[".repeat(10_000), "]".repeat(10_000))), JobStatus::Failed,
            "payload is not valid JSON: recursion limit exceeded"),
        ("request_params a string (upload still cleaned)", Poison::Payload(String::new()), JobStatus::Failed,
            "payload field request_params must be an object, got a string"),
    ];

    let mut ids = Vec::new();
    for (name, poison, _, _) in &cases {
        let (id, upload) = submit_with_ref(&s, &store, name.as_bytes()).await;
        match poison {
            Poison::Record(bytes) => {
                let _: () = c.set(arq_keys::job(&id), bytes.as_slice()).await.unwrap();
                let _: bool = c.pexpire(arq_keys::job(&id), 3_600_000).await.unwrap();
            }
            Poison::RecordIsAHash => {
                let _: () = c.del(arq_keys::job(&id)).await.unwrap();
                let _: () = c.hset(arq_keys::job(&id), "f", "x").await.unwrap();
                let _: bool = c.expire(arq_keys::job(&id), 3600).await.unwrap();
            }
            Poison::Payload(raw) if raw.is_empty() => {
                let raw = json!({"tenant_id": w::TENANT, "file_ref": upload, "request_params": "mode=fast"});
                let _: () = c
                    .set_ex(keys.payload(&id), raw.to_string(), 3600)
                    .await
                    .unwrap();
            }
            Poison::Payload(raw) => {
                // Nothing in this payload names the upload: it is not this test's subject.
                s.storage.delete(&upload).await.unwrap();
                let _: () = c.set_ex(keys.payload(&id), raw, 3600).await.unwrap();
            }
        }
        ids.push(id);
    }
    // A job whose record claims it already used 999 tries: it never ran, so it runs.
    let forged = submit_with_upload(&s, &store, b"forged try").await;
    let mut rec = JobRecord::dedup2d(&forged, 1);
    rec.job_try = Some(999);
    let _: () = c
        .set_ex(arq_keys::job(&forged), rec.encode(), 3600)
        .await
        .unwrap();
    // A retry counter that is not a number does not stop the claim.
    let bad_retry = submit_with_upload(&s, &store, b"bad retry key").await;
    let _: () = c
        .set_ex(arq_keys::retry(&bad_retry), "not a number", 3600)
        .await
        .unwrap();

    let mut worker = hostile_worker(&s, &[]);
    worker.wait_healthy(Duration::from_secs(20)).await;
    let mut all = ids.clone();
    all.extend([forged.clone(), bad_retry.clone()]);
    let done = w::wait_finished(&store, &all, Duration::from_secs(60)).await;
    let queue = ArqQueue::new(conn.clone(), w::QUEUE);
    for ((name, _, status, want), id) in cases.iter().zip(&ids) {
        let v = &done[id];
        assert_eq!(v.status, *status, "{name}: {v:?}");
        let err = v.error.as_deref().unwrap_or("");
        assert!(err.contains(want), "{name}: error {err:?} lacks {want:?}");
        eprintln!("{name}: {} \"{err}\"", v.status.as_str());
        wait_arq_result(&queue, id).await;
        assert_arq_clean(&conn, id).await;
    }
    for id in [&forged, &bad_retry] {
        assert_eq!(done[id].status, JobStatus::Completed, "{:?}", done[id]);
        assert_arq_clean(&conn, id).await;
    }

    // The worker is alive (a supervisor would have nothing to restart) and serves the next job.
    assert!(alive(worker.pid()), "the worker exited:\n{}", worker.log());
    let next = submit_with_upload(&s, &store, b"the next good job").await;
    let done = w::wait_finished(&store, std::slice::from_ref(&next), Duration::from_secs(20)).await;
    assert_eq!(done[&next].status, JobStatus::Completed);
    worker.wait_healthy(Duration::from_secs(5)).await;
    assert!(
        files_left(&s).is_empty(),
        "uploads left: {:?}",
        files_left(&s)
    );
    wait_arq_result(&queue, &next).await;
    assert_no_key_without_ttl(&conn).await;
}

/// Waits until `arq:result:{id}` is written (the ARQ side finishes just after the job hash).
async fn wait_arq_result(queue: &ArqQueue, id: &str) -> Outcome {
    for _ in 0..100 {
        if let Some(r) = queue.result(id).await.unwrap() {
            return r.outcome;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("no ARQ result for {id}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_hash_of_the_wrong_type_fails_its_job_instead_of_looping() {
    let s = LocalSetup::start();
    let conn = s.redis.manager().await;
    let store = w::store(conn.clone());
    let mut c = conn.clone();
    let id = submit_with_upload(&s, &store, b"wrong type").await;
    let job_key = Keys::new(w::PREFIX).job(&id);
    let _: () = c.del(&job_key).await.unwrap();
    let _: () = c.set_ex(&job_key, "not a hash", 3600).await.unwrap();

    let mut worker = hostile_worker(&s, &[("DEDUP2D_INDEX_TTL_SECONDS", "600")]);
    worker.wait_healthy(Duration::from_secs(20)).await;
    let queue = ArqQueue::new(conn.clone(), w::QUEUE);
    match wait_arq_result(&queue, &id).await {
        Outcome::Success(v) => assert!(format!("{v:?}").contains("failed"), "{v:?}"),
        other => panic!("{other:?}"),
    }
    assert_arq_clean(&conn, &id).await;
    let retries: Option<i64> = c.get(arq_keys::retry(&id)).await.unwrap();
    assert!(retries.is_none());
    let next = submit_with_upload(&s, &store, b"next").await;
    let done = w::wait_finished(&store, std::slice::from_ref(&next), Duration::from_secs(20)).await;
    assert_eq!(done[&next].status, JobStatus::Completed);
    assert!(worker
        .log()
        .contains("job hash holds a Redis string, not a hash"));
    worker.wait_healthy(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn payload_cap_read_steps_and_the_dual_write_fallback() {
    use sha2::Digest as _;
    let s = LocalSetup::start();
    let conn = s.redis.manager().await;
    let store = w::store(conn.clone());
    let mut c = conn.clone();
    let keys = Keys::new(w::PREFIX);

    // 9 MiB of file in a 12 MiB payload: three read steps, under a 16 MiB cap.
    let big: Vec<u8> = (0..9 << 20).map(|i: u32| (i % 251) as u8).collect();
    let big_id = w::submit(&store, w::payload(None, Some(&big))).await;
    // Over the cap: failed unread.
    let huge: Vec<u8> = vec![7; 13 << 20];
    let huge_id = w::submit(&store, w::payload(None, Some(&huge))).await;
    let huge_len: u64 = c.strlen(keys.payload(&huge_id)).await.unwrap();
    // A payload key of the wrong type.
    let typed_id = w::submit(&store, w::payload(None, Some(b"x"))).await;
    let _: () = c.del(keys.payload(&typed_id)).await.unwrap();
    let _: () = c.hset(keys.payload(&typed_id), "a", "b").await.unwrap();
    let _: bool = c.expire(keys.payload(&typed_id), 3600).await.unwrap();
    // Dual-write, stored file gone: the payload's own bytes are used.
    let lost_id = uuid::Uuid::new_v4().to_string();
    let lost_ref = s.upload(&lost_id, b"lost file".to_vec()).await;
    s.storage.delete(&lost_ref).await.unwrap();
    w::submit_as(
        &store,
        &lost_id,
        w::payload(Some(lost_ref), Some(b"lost file")),
    )
    .await;
    // Dual-write with a ref refused for safety: no fallback.
    let trav_id = w::submit(
        &store,
        w::payload(
            Some(FileRef::Local {
                path: "../secret".into(),
            }),
            Some(b"x"),
        ),
    )
    .await;

    let mut worker = hostile_worker(
        &s,
        &[(
            "DEDUP2D_WORKER_MAX_PAYLOAD_BYTES",
            &(16u64 << 20).to_string(),
        )],
    );
    worker.wait_healthy(Duration::from_secs(20)).await;
    let ids = [&big_id, &huge_id, &typed_id, &lost_id, &trav_id].map(|s| (*s).clone());
    let done = w::wait_finished(&store, &ids, Duration::from_secs(60)).await;

    assert_eq!(
        done[&big_id].status,
        JobStatus::Completed,
        "{:?}",
        done[&big_id]
    );
    let result = w::result(&conn, &big_id).await.unwrap();
    assert_eq!(
        result["file_hash"],
        json!(hex::encode(sha2::Sha256::digest(&big)))
    );
    let cases = [
        (&huge_id, JobStatus::Failed, format!("payload is {huge_len} bytes, over DEDUP2D_WORKER_MAX_PAYLOAD_BYTES=16777216; it was not read")),
        (&typed_id, JobStatus::Failed, "payload key holds a Redis hash, not a string".to_string()),
        (&trav_id, JobStatus::Failed, "contains a '..' component".to_string()),
    ];
    for (id, status, want) in &cases {
        let v = &done[*id];
        assert_eq!(v.status, *status, "{v:?}");
        let err = v.error.as_deref().unwrap_or("");
        assert!(err.contains(want.as_str()), "error {err:?} lacks {want:?}");
        eprintln!("{want}: {}", v.status.as_str());
    }
    assert_eq!(
        done[&lost_id].status,
        JobStatus::Completed,
        "{:?}",
        done[&lost_id]
    );
    let lost = w::result(&conn, &lost_id).await.unwrap();
    assert!(
        lost["warnings"]
            .as_array()
            .unwrap()
            .contains(&json!("file_ref_missing:used_file_bytes_b64")),
        "{lost}"
    );
    assert_eq!(
        lost["file_hash"],
        json!(hex::encode(sha2::Sha256::digest(b"lost file")))
    );
    let page = worker.metrics().await;
    assert_eq!(
        w::metric(
            &page,
            "dedup2d_worker_b64_fallback_total{reason=\"stored_file_missing\"}"
        ),
        1.0
    );
    assert_eq!(
        w::metric(
            &page,
            "dedup2d_worker_b64_fallback_total{reason=\"b64_only\"}"
        ),
        1.0
    );
    worker.wait_healthy(Duration::from_secs(5)).await;
    assert_no_key_without_ttl(&conn).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_large_payloads_never_time_out_the_claim_path() {
    let s = LocalSetup::start();
    // The submitting side writes 21 MiB payloads in one call: no response timeout here.
    let conn = redis::Client::open(s.redis.url())
        .unwrap()
        .get_connection_manager_with_config(
            redis::aio::ConnectionManagerConfig::new().set_response_timeout(None),
        )
        .await
        .unwrap();
    let store = w::store(conn.clone());
    let mut ids = Vec::new();
    for i in 0..4u8 {
        let data = vec![i; 16 << 20];
        ids.push(w::submit(&store, w::payload(None, Some(&data))).await);
    }
    let mut worker = hostile_worker(&s, &[("DEDUP2D_WORKER_MAX_JOBS", "4")]);
    worker.wait_healthy(Duration::from_secs(20)).await;
    let done = w::wait_finished(&store, &ids, Duration::from_secs(120)).await;
    for id in &ids {
        assert_eq!(done[id].status, JobStatus::Completed, "{:?}", done[id]);
    }
    let log = worker.log();
    assert!(!log.contains("cannot claim jobs"), "{log}");
    assert!(!log.contains("timed out"), "{log}");
    let page = worker.metrics().await;
    assert_eq!(
        w::metric(&page, "dedup2d_jobs_total{status=\"completed\"}"),
        4.0
    );
}
