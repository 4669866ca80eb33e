//! The dedupcad-vision stand-in (`tests/peers/vision_stub.py`) as a child process on a loopback
//! port: script its next answers, read back the searches it received.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

pub struct VisionStub {
    child: Child,
    pub port: u16,
    _dir: tempfile::TempDir,
}

impl VisionStub {
    pub fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let port_file = dir.path().join("port");
        let mut child = Command::new(super::peers::python())
            .arg(super::peers::peer("vision_stub.py"))
            .arg(&port_file)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start vision_stub.py");
        let deadline = Instant::now() + Duration::from_secs(20);
        let port = loop {
            if let Ok(p) = std::fs::read_to_string(&port_file) {
                break p.trim().parse().unwrap();
            }
            if let Ok(Some(status)) = child.try_wait() {
                panic!("vision_stub.py exited at start-up: {status}");
            }
            assert!(Instant::now() < deadline, "vision_stub.py did not start");
            std::thread::sleep(Duration::from_millis(25));
        };
        VisionStub {
            child,
            port,
            _dir: dir,
        }
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The next answers, in order (then the default answer again).
    pub async fn script(&self, steps: Value) {
        let resp = reqwest::Client::new()
            .post(format!("{}/_script", self.url()))
            .json(&steps)
            .send()
            .await
            .unwrap();
        assert!(resp.status().is_success());
    }

    /// The searches received so far.
    pub async fn requests(&self) -> Vec<Value> {
        reqwest::get(format!("{}/_requests", self.url()))
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }
}

impl Drop for VisionStub {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
