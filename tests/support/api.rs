//! A `dedup2d api` process for HTTP tests: the real binary on a free loopback port.

use std::collections::HashMap;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::process::free_port;

pub const KEY_A: &str = "key-tenant-a";
pub const KEY_B: &str = "key-tenant-b";

pub struct ApiProcess {
    child: Child,
    pub base: String,
}

impl ApiProcess {
    /// Starts the API with local storage under `storage_dir`; `extra` env vars win.
    pub fn start(redis_url: &str, storage_dir: &Path, extra: &[(&str, &str)]) -> Self {
        let port = free_port();
        let mut env: HashMap<String, String> = HashMap::from([
            ("DEDUP2D_REDIS_URL".into(), redis_url.into()),
            ("DEDUP2D_FILE_STORAGE".into(), "local".into()),
            (
                "DEDUP2D_FILE_STORAGE_DIR".into(),
                storage_dir.display().to_string(),
            ),
            ("DEDUP2D_API_KEYS".into(), format!("{KEY_A},{KEY_B}")),
            ("DEDUP2D_API_LISTEN".into(), format!("127.0.0.1:{port}")),
            ("RUST_LOG".into(), "warn".into()),
        ]);
        for (k, v) in extra {
            env.insert(k.to_string(), v.to_string());
        }
        let child = Command::new(env!("CARGO_BIN_EXE_dedup2d"))
            .arg("api")
            .env_clear()
            .envs(&env)
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start dedup2d api");
        let mut api = ApiProcess {
            child,
            base: format!("http://127.0.0.1:{port}"),
        };
        api.wait_healthy();
        api
    }

    fn wait_healthy(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("dedup2d api exited at start-up: {status}");
            }
            if std::net::TcpStream::connect(self.base.trim_start_matches("http://")).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("dedup2d api did not listen within 20 s");
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }
}

impl Drop for ApiProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `POST {base}/api/v1/dedup/2d/search?async=true` with `bytes` as the multipart `file`, under
/// tenant A's key: the status and the JSON body (`null` when it is not JSON).
pub async fn submit_file(
    http: &reqwest::Client,
    base: &str,
    name: &str,
    bytes: Vec<u8>,
) -> (reqwest::StatusCode, serde_json::Value) {
    let form = reqwest::multipart::Form::new().part(
        "file",
        reqwest::multipart::Part::bytes(bytes).file_name(name.to_string()),
    );
    let resp = http
        .post(format!("{base}/api/v1/dedup/2d/search?async=true"))
        .header("X-API-Key", KEY_A)
        .multipart(form)
        .send()
        .await
        .expect("POST /api/v1/dedup/2d/search");
    let status = resp.status();
    (status, resp.json().await.unwrap_or(serde_json::Value::Null))
}
