//! Fixtures for the worker tests: our `dedup2d worker` as a real child process (so tests can
//! SIGTERM and SIGKILL it), job submission through the real job store with files in real
//! storage, and polling helpers.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use base64::Engine as _;
use bytes::Bytes;
use dedup2d::contract::payload::{FileRef, JobPayload};
use dedup2d::contract::store::{JobStatus, JobStore, JobView, NewJob};
use dedup2d::storage::{FileStorage, LocalStorage};

pub use super::job_store::{result, store, PREFIX};
use super::process::free_port;
use super::redis::RedisServer;

pub const QUEUE: &str = "dedup2d:queue";
pub const TENANT: &str = "0123456789abcdef";

/// A redis-server and local file storage (`uploads/` in a temporary directory, which also holds
/// the workers' logs): what a test of `dedup2d worker` processes runs them on.
pub struct LocalSetup {
    pub redis: RedisServer,
    pub dir: tempfile::TempDir,
    pub storage: LocalStorage,
}

impl LocalSetup {
    pub fn start() -> Self {
        let redis = RedisServer::start();
        let dir = tempfile::tempdir().unwrap();
        let storage = LocalStorage::new(dir.path().join("uploads")).unwrap();
        LocalSetup {
            redis,
            dir,
            storage,
        }
    }

    /// The storage's root.
    pub fn uploads(&self) -> PathBuf {
        self.dir.path().join("uploads")
    }

    /// A worker (`name` for its log) on this Redis and storage, with `extra` environment on top.
    pub fn worker(&self, name: &str, extra: &[(&str, &str)]) -> WorkerProc {
        let uploads = self.uploads();
        let mut vars = env(&[
            ("DEDUP2D_FILE_STORAGE", "local"),
            ("DEDUP2D_FILE_STORAGE_DIR", uploads.to_str().unwrap()),
        ]);
        vars.extend(env(extra));
        WorkerProc::spawn(&self.redis.url(), self.dir.path(), name, &vars)
    }

    /// Stores `data` as an upload of `job_id` (`part.dxf`).
    pub async fn upload(&self, job_id: &str, data: impl Into<Bytes>) -> FileRef {
        self.storage
            .save(job_id, "part.dxf", "application/dxf", data.into())
            .await
            .unwrap()
    }
}

/// One `dedup2d worker` process; SIGKILLed on drop if still running.
pub struct WorkerProc {
    child: Child,
    pub hostname: String,
    pub metrics_port: u16,
    pub log_path: PathBuf,
}

impl WorkerProc {
    /// Starts a worker against `redis_url` with the given extra environment (overrides).
    pub fn spawn(redis_url: &str, log_dir: &Path, name: &str, env: &[(String, String)]) -> Self {
        let metrics_port = free_port();
        let hostname = format!("{name}-{}", uuid::Uuid::new_v4().simple());
        let log_path = log_dir.join(format!("{hostname}.log"));
        let log = std::fs::File::create(&log_path).expect("worker log file");
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_dedup2d"));
        cmd.arg("worker")
            .env("DEDUP2D_REDIS_URL", redis_url)
            .env("DEDUP2D_REDIS_KEY_PREFIX", PREFIX)
            .env(
                "DEDUP2D_WORKER_METRICS_ADDR",
                format!("127.0.0.1:{metrics_port}"),
            )
            .env("DEDUP2D_WORKER_POLL_INTERVAL_MS", "50")
            .env("DEDUP2D_LOG_FORMAT", "text")
            .env("RUST_LOG", "info")
            .env("HOSTNAME", &hostname)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let child = cmd.spawn().expect("start dedup2d worker");
        WorkerProc {
            child,
            hostname,
            metrics_port,
            log_path,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// Waits until `/healthz` answers 200 (the worker is consuming).
    pub async fn wait_healthy(&mut self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        let url = format!("http://127.0.0.1:{}/healthz", self.metrics_port);
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("worker exited early ({status}):\n{}", self.log());
            }
            if let Ok(r) = reqwest::get(&url).await {
                if r.status().is_success() {
                    return;
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("worker not healthy after {timeout:?}:\n{}", self.log());
    }

    pub async fn metrics(&self) -> String {
        reqwest::get(format!("http://127.0.0.1:{}/metrics", self.metrics_port))
            .await
            .expect("GET /metrics")
            .text()
            .await
            .unwrap()
    }

    pub fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .args([&format!("-{sig}"), &self.pid().to_string()])
            .status()
            .expect("run kill")
            .success();
        assert!(ok, "kill -{sig} {}", self.pid());
    }

    pub fn sigkill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Waits for the process to exit (after a signal).
    pub async fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "worker did not exit within {timeout:?}:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }
}

impl Drop for WorkerProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Reads one counter/gauge value (0 when absent) from a Prometheus text page.
pub fn metric(page: &str, series: &str) -> f64 {
    page.lines()
        .find_map(|l| {
            l.strip_prefix(series)
                .and_then(|rest| rest.strip_prefix(' '))
        })
        .map(|v| v.trim().parse().unwrap())
        .unwrap_or(0.0)
}

pub fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

pub fn b64(data: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(data)
}

/// A payload as our API writes it.
pub fn payload(file_ref: Option<FileRef>, bytes_b64: Option<&[u8]>) -> JobPayload {
    JobPayload {
        tenant_id: TENANT.into(),
        file_name: "part.dxf".into(),
        content_type: Some("application/dxf".into()),
        file_ref,
        query_geom: None,
        request_params: Default::default(),
        callback_url: None,
        render_required: true,
        file_bytes_b64: bytes_b64.map(b64),
        extra: Default::default(),
    }
}

/// Submits a job (job hash, payload, ARQ enqueue) and returns its id.
pub async fn submit(store: &JobStore, payload: JobPayload) -> String {
    let job_id = uuid::Uuid::new_v4().to_string();
    submit_as(store, &job_id, payload).await;
    job_id
}

pub async fn submit_as(store: &JobStore, job_id: &str, payload: JobPayload) {
    store
        .submit(&NewJob {
            job_id: job_id.to_string(),
            tenant_id: TENANT.into(),
            payload,
            queue_name: QUEUE.into(),
        })
        .await
        .expect("submit job");
}

/// Waits until every job is finished; returns their views by id.
pub async fn wait_finished(
    store: &JobStore,
    ids: &[String],
    timeout: Duration,
) -> HashMap<String, JobView> {
    let deadline = Instant::now() + timeout;
    loop {
        let mut done = HashMap::new();
        for id in ids {
            if let Some(v) = store.get(id).await.unwrap() {
                if v.status.is_finished() {
                    done.insert(id.clone(), v);
                }
            }
        }
        if done.len() == ids.len() {
            return done;
        }
        if Instant::now() > deadline {
            let missing: Vec<_> = ids.iter().filter(|i| !done.contains_key(*i)).collect();
            panic!(
                "{} of {} jobs not finished after {timeout:?}: {:?}",
                missing.len(),
                ids.len(),
                &missing[..missing.len().min(5)]
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits until a job reaches `status`.
pub async fn wait_status(store: &JobStore, id: &str, status: JobStatus, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = store.get(id).await.unwrap() {
            if v.status == status {
                return;
            }
        }
        assert!(
            Instant::now() < deadline,
            "job {id} never reached {status:?}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}
