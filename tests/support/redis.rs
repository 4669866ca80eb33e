//! A private `redis-server` per test on a free loopback port. A missing binary is a test failure
//! with an install hint, never a skip.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::process::{free_port, which};

/// A `redis-server` owned by one test; killed on drop.
pub struct RedisServer {
    child: Child,
    /// For [`RedisServer::restart`] (the cluster tests' fault suite; tests/local has no restart).
    #[allow(dead_code)]
    bin: PathBuf,
    pub port: u16,
    /// Its working directory: where `SAVE` writes and a restart loads the data from.
    #[allow(dead_code)]
    dir: tempfile::TempDir,
}

/// `redis-server` on `port` with its data in `dir` (no automatic snapshots: only an explicit
/// `SAVE` writes one, which a start in the same `dir` loads).
fn spawn(bin: &Path, port: u16, dir: &Path) -> Child {
    Command::new(bin)
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
        .arg(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {}: {e}", bin.display()))
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
        for _ in 0..5 {
            let port = free_port();
            let dir = tempfile::tempdir().expect("temp dir for redis");
            let mut server = RedisServer {
                child: spawn(&bin, port, dir.path()),
                bin: bin.clone(),
                port,
                dir,
            };
            if server.wait_ready(Duration::from_secs(10)) {
                return server;
            }
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

    /// A connection for the test's own calls. Its response timeout is generous (redis-rs's
    /// default is 500 ms): a test that writes a 16 MiB payload on a loaded machine must not fail
    /// on its own setup. The processes under test keep their own timeouts.
    pub async fn manager(&self) -> redis::aio::ConnectionManager {
        let config = redis::aio::ConnectionManagerConfig::new()
            .set_response_timeout(Some(std::time::Duration::from_secs(30)));
        redis::Client::open(self.url())
            .unwrap()
            .get_connection_manager_with_config(config)
            .await
            .expect("connect to the test redis")
    }

    /// Stops the server the way a persistent Redis goes down: its data snapshotted (`SAVE`), then
    /// SIGKILLed, so a [`RedisServer::restart`] comes back with the same keys on the same port.
    #[allow(dead_code)]
    pub fn stop(&mut self) {
        let mut c = redis::Client::open(self.url())
            .and_then(|c| c.get_connection())
            .expect("connect to the test redis to SAVE");
        let _: () = redis::cmd("SAVE").query(&mut c).expect("SAVE");
        self.kill();
    }

    /// Starts the server again on the same port with the data of the last `SAVE`; returns once it
    /// answers.
    #[allow(dead_code)]
    pub fn restart(&mut self) {
        self.child = spawn(&self.bin, self.port, self.dir.path());
        assert!(
            self.wait_ready(Duration::from_secs(10)),
            "redis-server did not come back on port {}",
            self.port
        );
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
