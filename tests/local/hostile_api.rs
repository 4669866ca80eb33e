//! Hostile clients against `dedup2d api` (the real binary on a real redis-server and local
//! storage): odd and oversized file names, a missing multipart boundary, hostile callback hosts,
//! an oversize geom_json, clients that send their head or body at 2 bytes/s, and more
//! connections than the API serves at once. Every bad request gets a 4xx `{error, message}` JSON,
//! and nothing of it is left in storage or Redis.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::support::api::{ApiProcess, KEY_A};
use crate::support::redis::RedisServer;
use redis::AsyncCommands;
use reqwest::multipart::{Form, Part};
use reqwest::StatusCode;
use serde_json::Value;

const SEARCH: &str = "/api/v1/dedup/2d/search";

fn files_under(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.push(p.clone());
            out.extend(files_under(&p));
        } else {
            out.push(p);
        }
    }
    out
}

async fn send(req: reqwest::RequestBuilder) -> (StatusCode, Value) {
    let resp = req.header("X-API-Key", KEY_A).send().await.unwrap();
    let status = resp.status();
    let body = resp.json::<Value>().await.unwrap_or(Value::Null);
    (status, body)
}

fn upload(api: &ApiProcess, query: &str, name: &str, bytes: Vec<u8>) -> reqwest::RequestBuilder {
    reqwest::Client::new()
        .post(api.url(&format!("{SEARCH}?{query}")))
        .multipart(Form::new().part("file", Part::bytes(bytes).file_name(name.to_string())))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_a_4xx_json_and_leave_nothing_behind() {
    let redis = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let api = ApiProcess::start(&redis.url(), dir.path(), &[]);
    let client = reqwest::Client::new();

    // Accepted, with the stored name bounded and the original kept in the job.
    let long_safe = format!("{}.dxf", "a".repeat(300));
    let odd = [
        long_safe.as_str(),
        "../../etc/passwd",
        "名前 (コピー).dwg",
        "   ",
        ".hidden",
        "a\u{202e}gpj.exe",
    ];
    let mut accepted = Vec::new();
    for name in odd {
        let (status, body) = send(upload(&api, "", name, b"drawing".to_vec())).await;
        assert_eq!(status, StatusCode::OK, "{name:?}: {body}");
        let id = body["job_id"].as_str().unwrap().to_string();
        let mut c = redis.manager().await;
        let raw: String = c.get(format!("dedup2d:payload:{id}")).await.unwrap();
        let payload: Value = serde_json::from_str(&raw).unwrap();
        assert_eq!(payload["file_name"], name, "the original name is kept");
        let path = payload["file_ref"]["path"].as_str().unwrap();
        let stored = path.rsplit('/').next().unwrap();
        assert!(stored.len() <= 153, "{stored}");
        assert!(dir.path().join(path).is_file(), "{path}");
        eprintln!("{name:?}: 200, stored as {stored:?}");
        accepted.push(id);
    }
    let before = files_under(dir.path());

    let boundaryless = client
        .post(api.url(SEARCH))
        .header("content-type", "multipart/form-data")
        .body("--x\r\n\r\n");
    let not_multipart = client
        .post(api.url(SEARCH))
        .header("content-type", "application/json")
        .body("{}");
    let big_geom = Form::new()
        .part("file", Part::bytes(b"x".to_vec()).file_name("a.dxf"))
        .part("geom_json", Part::bytes(vec![b' '; 600 * 1024]));
    // (case, request, status, error code, message fragment)
    let cases: Vec<(&str, reqwest::RequestBuilder, u16, &str, &str)> = vec![
        (
            "no multipart boundary",
            boundaryless,
            400,
            "INVALID_UPLOAD",
            "boundary",
        ),
        (
            "not multipart at all",
            not_multipart,
            400,
            "INVALID_UPLOAD",
            "multipart/form-data",
        ),
        (
            "a 2,000-byte file name",
            upload(&api, "", &"n".repeat(2000), b"x".to_vec()),
            400,
            "FILE_NAME_TOO_LONG",
            "file name is 2000 bytes; at most 1024 are accepted",
        ),
        (
            "an empty file",
            upload(&api, "", "a.dxf", Vec::new()),
            400,
            "EMPTY_FILE",
            "Empty file",
        ),
        (
            "callback to localhost. (trailing dot)",
            upload(
                &api,
                "callback_url=https://localhost./hook",
                "a.dxf",
                b"x".to_vec(),
            ),
            400,
            "CALLBACK_URL_INVALID",
            "loopback/private/link-local",
        ),
        (
            "callback to LOCALHOST..",
            upload(
                &api,
                "callback_url=https://LOCALHOST../hook",
                "a.dxf",
                b"x".to_vec(),
            ),
            400,
            "CALLBACK_URL_INVALID",
            "loopback/private/link-local",
        ),
        (
            "callback to 127.0.0.1.",
            upload(
                &api,
                "callback_url=https://127.0.0.1./hook",
                "a.dxf",
                b"x".to_vec(),
            ),
            400,
            "CALLBACK_URL_INVALID",
            "loopback/private/link-local",
        ),
        (
            "a 600 KiB geom_json",
            client.post(api.url(SEARCH)).multipart(big_geom),
            413,
            "GEOM_JSON_TOO_LARGE",
            "geom_json exceeds 524288 bytes",
        ),
        (
            "a status that is not one",
            client.get(api.url("/api/v1/dedup/2d/jobs?status=%ZZ")),
            400,
            "INVALID_STATUS",
            "is invalid",
        ),
        (
            "a method the path does not take",
            client.put(api.url(SEARCH)),
            405,
            "METHOD_NOT_ALLOWED",
            "PUT",
        ),
        (
            "an unknown path",
            client.get(api.url("/api/v1/nothing")),
            404,
            "NOT_FOUND",
            "no such endpoint",
        ),
        (
            "a bad job id path",
            client.get(api.url("/api/v1/dedup/2d/jobs/%FF")),
            400,
            "INVALID_PARAMETER",
            "",
        ),
    ];
    for (name, req, status, code, fragment) in cases {
        let resp = req.header("X-API-Key", KEY_A).send().await.unwrap();
        let got = resp.status().as_u16();
        let text = resp.text().await.unwrap();
        assert_eq!(got, status, "{name}: {text}");
        let body: Value =
            serde_json::from_str(&text).unwrap_or_else(|_| panic!("{name}: not JSON: {text:?}"));
        assert_eq!(body["error"], code, "{name}: {body}");
        let message = body["message"].as_str().unwrap();
        assert!(
            message.contains(fragment),
            "{name}: {message:?} lacks {fragment:?}"
        );
        eprintln!("{name}: {got} {code} {message:?}");
    }
    assert_eq!(
        files_under(dir.path()),
        before,
        "a rejected request left a file"
    );
    let mut c = redis.manager().await;
    let active: Vec<String> = c.smembers("dedup2d:active").await.unwrap();
    assert_eq!(
        active.len(),
        accepted.len(),
        "only accepted jobs are stored"
    );
}

/// Reads until the server closes the connection; returns what it sent.
fn read_to_close(mut s: TcpStream) -> String {
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_clients_are_cut_off_and_connections_are_bounded() {
    let redis = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let api = ApiProcess::start(
        &redis.url(),
        dir.path(),
        &[
            ("DEDUP2D_API_HEADER_READ_TIMEOUT_SECONDS", "2"),
            ("DEDUP2D_API_REQUEST_TIMEOUT_SECONDS", "3"),
            ("DEDUP2D_API_MAX_CONNECTIONS", "2"),
        ],
    );
    let addr = api.base.trim_start_matches("http://").to_string();

    // The head at 2 bytes/s: the connection is closed (the writer sees it fail or stop).
    let head = {
        let addr = addr.clone();
        std::thread::spawn(move || {
            let mut s = TcpStream::connect(&addr).unwrap();
            let reader = s.try_clone().unwrap();
            let dripper = std::thread::spawn(move || {
                for b in b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n\r\n" {
                    if s.write_all(&[*b]).is_err() {
                        return;
                    }
                    std::thread::sleep(Duration::from_millis(500));
                }
            });
            let answer = read_to_close(reader);
            let _ = dripper.join();
            answer
        })
    };
    // The body at 2 bytes/s after a complete head: a 408 JSON, then the close.
    let body = {
        let addr = addr.clone();
        std::thread::spawn(move || {
            let mut s = TcpStream::connect(&addr).unwrap();
            let head = format!(
                "POST {SEARCH} HTTP/1.1\r\nHost: x\r\nX-API-Key: {KEY_A}\r\n\
                 Content-Type: multipart/form-data; boundary=b\r\nContent-Length: 100000\r\n\r\n"
            );
            s.write_all(head.as_bytes()).unwrap();
            let reader = s.try_clone().unwrap();
            let dripper = std::thread::spawn(move || {
                let part = b"--b\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.dxf\"\r\n\r\n";
                for b in part.iter().chain(std::iter::repeat(&b'x')) {
                    if s.write_all(&[*b]).is_err() {
                        return;
                    }
                    std::thread::sleep(Duration::from_millis(500));
                }
            });
            let answer = read_to_close(reader);
            drop(dripper);
            answer
        })
    };
    let head = tokio::task::spawn_blocking(move || head.join().unwrap())
        .await
        .unwrap();
    assert!(
        !head.contains("200 OK"),
        "a 2 bytes/s head was served: {head:?}"
    );
    let body = tokio::task::spawn_blocking(move || body.join().unwrap())
        .await
        .unwrap();
    assert!(body.starts_with("HTTP/1.1 408"), "{body:?}");
    assert!(body.contains("\"error\":\"REQUEST_TIMEOUT\""), "{body:?}");
    eprintln!("slow head: closed without an answer; slow body: 408 REQUEST_TIMEOUT");

    // Two idle connections take both slots: a third request is answered only after the API cut
    // one of them off at the 2 s head deadline. The check is on the third request's wait, not on
    // when the idle clients notice their close: a loaded machine can wake them after the answer.
    let cut = Arc::new(AtomicUsize::new(0));
    let idle_since = std::time::Instant::now();
    let idle: Vec<_> = (0..2)
        .map(|_| {
            let s = TcpStream::connect(&addr).unwrap();
            let cut = cut.clone();
            std::thread::spawn(move || {
                read_to_close(s);
                cut.fetch_add(1, Ordering::SeqCst);
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let resp = reqwest::get(api.url("/healthz")).await.unwrap();
    let waited = idle_since.elapsed();
    assert_eq!(resp.status(), StatusCode::OK);
    assert!(
        waited >= Duration::from_millis(1500),
        "the third connection was served after {waited:?}, while two idle ones held both slots \
         (the head deadline is 2 s)"
    );
    for t in idle {
        t.join().unwrap();
    }
    assert_eq!(
        cut.load(Ordering::SeqCst),
        2,
        "both idle connections are cut off"
    );
    assert!(
        files_under(dir.path()).is_empty(),
        "{:?}",
        files_under(dir.path())
    );
}

#[test]
fn bad_api_variables_are_reported_by_their_own_names() {
    for (var, value) in [
        ("DEDUP2D_API_MAX_UPLOAD_BYTES", "10MB"),
        ("DEDUP2D_API_HEADER_READ_TIMEOUT_SECONDS", "soon"),
        ("DEDUP2D_API_REQUEST_TIMEOUT_SECONDS", "-1"),
        ("DEDUP2D_API_MAX_CONNECTIONS", "many"),
    ] {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_dedup2d"))
            .arg("api")
            .env(var, value)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{stderr}");
        assert!(
            stderr.starts_with(&format!("error: {var}={value:?}")),
            "{stderr}"
        );
        eprintln!("{}", stderr.trim());
    }
}
