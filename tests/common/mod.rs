//! Test fixtures shared by the integration tests: a private `redis-server` per test on a free
//! loopback port, and the Python interpreter that has the pinned `arq` package.
//!
//! A missing binary is a test failure with an install hint, never a skip.

#![allow(dead_code)]

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A free TCP port on 127.0.0.1 (bound and released; good enough for tests).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .expect("bind an ephemeral loopback port")
        .local_addr()
        .unwrap()
        .port()
}

fn which(bin: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|p| p.join(bin))
            .find(|p| p.is_file())
    })
}

/// A `redis-server` owned by one test; killed on drop.
pub struct RedisServer {
    child: Child,
    pub port: u16,
    _dir: tempfile::TempDir,
}

impl RedisServer {
    pub fn start() -> Self {
        let bin = std::env::var_os("DEDUP2D_REDIS_SERVER")
            .map(PathBuf::from)
            .or_else(|| which("redis-server"))
            .unwrap_or_else(|| {
                panic!(
                    "redis-server not found on PATH. Install it (Debian: `apt-get install -y redis-server`) \
                     or run the tests through `.ci/run`, which installs it."
                )
            });
        let dir = tempfile::tempdir().expect("temp dir for redis");
        for _ in 0..5 {
            let port = free_port();
            let child = Command::new(&bin)
                .args([
                    "--port",
                    &port.to_string(),
                    "--bind",
                    "127.0.0.1",
                    "--save",
                    "",
                ])
                .args(["--appendonly", "no", "--protected-mode", "yes"])
                .arg("--dir")
                .arg(dir.path())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap_or_else(|e| panic!("cannot start {}: {e}", bin.display()));
            let mut server = RedisServer {
                child,
                port,
                _dir: tempfile::tempdir().unwrap(),
            };
            if server.wait_ready(Duration::from_secs(10)) {
                server._dir = dir;
                return server;
            }
            let _ = server.child.kill();
        }
        panic!("redis-server did not become ready on a loopback port");
    }

    fn wait_ready(&mut self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return false;
            }
            if let Ok(client) = redis::Client::open(self.url()) {
                if let Ok(mut c) = client.get_connection() {
                    if redis::cmd("PING").query::<String>(&mut c).is_ok() {
                        return true;
                    }
                }
            }
            std::thread::sleep(Duration::from_millis(25));
        }
        false
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    pub async fn manager(&self) -> redis::aio::ConnectionManager {
        redis::Client::open(self.url())
            .unwrap()
            .get_connection_manager()
            .await
            .expect("connect to the test redis")
    }

    /// Stops the server (for "Redis down" tests).
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The Python interpreter with the pinned peer packages (`tests/peers/requirements.txt`):
/// `DEDUP2D_PYTHON`, else the virtualenv `hack/lib/peers.sh` makes for the current requirements
/// (`$DEDUP2D_CACHE/venv-<first 12 hex of their sha256>`), else `$DEDUP2D_CACHE/venv`.
pub fn python() -> PathBuf {
    let candidates = [
        std::env::var_os("DEDUP2D_PYTHON").map(PathBuf::from),
        dirs_cache().map(|c| c.join(format!("venv-{}/bin/python", requirements_hash()))),
        dirs_cache().map(|c| c.join("venv/bin/python")),
    ];
    for c in candidates.into_iter().flatten() {
        if c.is_file() {
            return c;
        }
    }
    panic!(
        "no Python with the peer packages found. Create it with `hack/test.sh` or `hack/demo.sh` \
         (they make $DEDUP2D_CACHE/venv-<hash> from tests/peers/requirements.txt), or set DEDUP2D_PYTHON."
    )
}

/// `sha256sum tests/peers/requirements.txt | cut -c1-12`, as `hack/lib/peers.sh` computes it.
fn requirements_hash() -> String {
    use sha2::Digest as _;
    let req = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/peers/requirements.txt");
    let bytes = std::fs::read(&req).unwrap_or_else(|e| panic!("read {}: {e}", req.display()));
    hex::encode(sha2::Sha256::digest(bytes))[..12].to_string()
}

fn dirs_cache() -> Option<PathBuf> {
    std::env::var_os("DEDUP2D_CACHE")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/dedup2d")))
}

/// Path of a peer script under `tests/peers/`.
pub fn peer(script: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/peers")
        .join(script)
}

/// Runs a peer script to completion and returns its stdout; panics with its stderr on failure.
pub fn run_peer(script: &str, args: &[&str]) -> String {
    let out = Command::new(python())
        .arg(peer(script))
        .args(args)
        .current_dir(std::env::temp_dir())
        .output()
        .unwrap_or_else(|e| panic!("cannot run peer {script}: {e}"));
    assert!(
        out.status.success(),
        "peer {script} failed ({}):\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Async wrapper so tokio tests don't block the runtime.
pub async fn run_peer_async(script: &str, args: &[&str]) -> String {
    let script = script.to_string();
    let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    tokio::task::spawn_blocking(move || {
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        run_peer(&script, &refs)
    })
    .await
    .unwrap()
}
pub mod api;
pub mod cluster;
pub mod drawings;
pub mod s3;
pub mod worker;
