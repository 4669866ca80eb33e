//! A real S3-compatible server for tests: `moto` in server mode (pinned in
//! `tests/peers/requirements.txt`, run from the peers' Python), one per test on a free loopback
//! port. Missing moto is a test failure with an install hint, never a skip.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::peers::python;
use super::process::free_port;

/// Credentials moto accepts (it does not check them); passed explicitly, never via our env.
pub const ACCESS_KEY: &str = "dedup2d-test";
pub const SECRET_KEY: &str = "dedup2d-test-secret";
pub const REGION: &str = "us-east-1";

pub struct S3Server {
    child: Child,
    pub port: u16,
}

impl S3Server {
    pub fn start() -> Self {
        let py = python();
        let probe = Command::new(&py)
            .args(["-c", "import moto.server, flask"])
            .output()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", py.display()));
        assert!(
            probe.status.success(),
            "moto server is not installed in {}: install the pinned peers with \
             `{} -m pip install -r tests/peers/requirements.txt` (it pins moto[server]); \
             `.ci/run` does this.\n{}",
            py.display(),
            py.display(),
            String::from_utf8_lossy(&probe.stderr)
        );
        for _ in 0..5 {
            let port = free_port();
            let child = Command::new(&py)
                .args([
                    "-m",
                    "moto.server",
                    "-H",
                    "127.0.0.1",
                    "-p",
                    &port.to_string(),
                ])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap_or_else(|e| panic!("cannot start moto server: {e}"));
            let mut server = S3Server { child, port };
            if server.wait_ready(Duration::from_secs(30)) {
                return server;
            }
            let _ = server.child.kill();
            let _ = server.child.wait();
        }
        panic!("moto server did not become ready on a loopback port");
    }

    fn wait_ready(&mut self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return false;
            }
            if std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        false
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Creates a bucket (moto accepts unsigned requests).
    pub async fn create_bucket(&self, bucket: &str) {
        let resp = reqwest::Client::new()
            .put(format!("{}/{bucket}", self.endpoint()))
            .send()
            .await
            .expect("create bucket on moto");
        assert!(
            resp.status().is_success(),
            "create bucket {bucket}: HTTP {}",
            resp.status()
        );
    }

    /// A plain `object_store` client for one bucket, independent of our storage code.
    pub fn raw_client(&self, bucket: &str) -> object_store::aws::AmazonS3 {
        object_store::aws::AmazonS3Builder::new()
            .with_bucket_name(bucket)
            .with_region(REGION)
            .with_endpoint(self.endpoint())
            .with_allow_http(true)
            .with_access_key_id(ACCESS_KEY)
            .with_secret_access_key(SECRET_KEY)
            .build()
            .expect("raw S3 client")
    }

    /// Puts an object directly (bypassing our storage code), e.g. into a foreign bucket.
    pub async fn put_raw(&self, bucket: &str, key: &str, body: &'static [u8]) {
        use object_store::ObjectStoreExt;
        self.raw_client(bucket)
            .put(&object_store::path::Path::from(key), body.into())
            .await
            .unwrap_or_else(|e| panic!("put {bucket}/{key}: {e}"));
    }

    /// Whether an object exists, asked directly.
    pub async fn exists(&self, bucket: &str, key: &str) -> bool {
        use object_store::ObjectStoreExt;
        match self
            .raw_client(bucket)
            .head(&object_store::path::Path::from(key))
            .await
        {
            Ok(_) => true,
            Err(object_store::Error::NotFound { .. }) => false,
            Err(e) => panic!("head {bucket}/{key}: {e}"),
        }
    }

    /// Environment for a worker process using this server.
    pub fn env(&self, bucket: &str, prefix: &str) -> Vec<(String, String)> {
        [
            ("DEDUP2D_FILE_STORAGE", "s3".to_string()),
            ("DEDUP2D_S3_BUCKET", bucket.to_string()),
            ("DEDUP2D_S3_PREFIX", prefix.to_string()),
            ("DEDUP2D_S3_ENDPOINT", self.endpoint()),
            ("DEDUP2D_S3_REGION", REGION.to_string()),
            ("AWS_ACCESS_KEY_ID", ACCESS_KEY.to_string()),
            ("AWS_SECRET_ACCESS_KEY", SECRET_KEY.to_string()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect()
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
