//! The operator as the e2e tests run it: the CRD installed on the real API server, and the built
//! `dedup2d operator` binary as a separate process (not a tokio task), so tests exercise the real
//! CLI wiring and can SIGKILL it mid-phase and start a new one.

use std::{
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::Duration,
};

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::{
    api::{Patch, PatchParams},
    Api, Client, CustomResourceExt, ResourceExt,
};

use dedup2d::operator::crd::Dedup2DRollout;

use super::fleet::WAIT;
use super::poll::eventually;

/// Install (or update) the CRD from `dedup2d crd` and wait until the API server serves it.
pub async fn install_crd(client: &Client) {
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    let crd = Dedup2DRollout::crd();
    let name = crd.name_any();
    crds.patch(
        &name,
        &PatchParams::apply("dedup2d-e2e").force(),
        &Patch::Apply(&crd),
    )
    .await
    .unwrap_or_else(|e| panic!("the API server refused the CRD (schema or CEL cost budget?): {e}"));
    wait_established(&crds, &name).await;
}

/// Waits until the API server serves the CRD `name`.
pub async fn wait_established(crds: &Api<CustomResourceDefinition>, name: &str) {
    eventually("CRD established", WAIT, || async {
        let c = crds.get(name).await.ok()?;
        c.status?
            .conditions?
            .iter()
            .any(|c| c.type_ == "Established" && c.status == "True")
            .then_some(())
    })
    .await;
}

/// The `dedup2d operator --namespace <ns>` process; SIGKILLed on drop (its log is printed when the
/// test failed).
pub struct Operator {
    child: Child,
    pub log: PathBuf,
    _dir: tempfile::TempDir,
}

/// Short leader-election timing, so a new process takes over a SIGKILLed one's Lease within seconds.
pub const LEASE_ARGS: [&str; 4] = ["--lease-duration", "6", "--lease-grace", "2"];

impl Operator {
    /// The operator on a free port for /metrics, with the short [`LEASE_ARGS`], on the Lease
    /// `dedup2d-operator` in `ns`.
    pub fn start(ns: &str) -> Self {
        Self::start_with(ns, &[])
    }

    /// [`Operator::start`] with more arguments.
    pub fn start_with(ns: &str, extra: &[&str]) -> Self {
        Self::start_env(ns, extra, &[])
    }

    /// [`Operator::start_with`] with environment overrides (e.g. another `KUBECONFIG`).
    pub fn start_env(ns: &str, extra: &[&str], env: &[(&str, &str)]) -> Self {
        let mut args = vec![
            "operator",
            "--namespace",
            ns,
            "--metrics-addr",
            "127.0.0.1:0",
        ];
        args.extend(LEASE_ARGS);
        args.extend(extra);
        Self::start_args(&args, env)
    }

    /// `dedup2d ARGS` exactly (e.g. the arguments a Deployment gives the container), text logs
    /// unless `env` says otherwise.
    pub fn start_args(args: &[&str], env: &[(&str, &str)]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("operator.log");
        let file = std::fs::File::create(&log).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_dedup2d"))
            .args(args)
            .env("DEDUP2D_LOG_FORMAT", "text")
            .env(
                "RUST_LOG",
                std::env::var("DEDUP2D_E2E_OPERATOR_LOG").unwrap_or_else(|_| "info".into()),
            )
            .env("NO_COLOR", "1")
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(file)
            .spawn()
            .expect("start the dedup2d operator binary");
        Operator {
            child,
            log,
            _dir: dir,
        }
    }

    /// Waits up to `timeout` for the process to exit on its own; its exit status, or `None`.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let deadline = std::time::Instant::now() + timeout;
        while std::time::Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        None
    }

    /// The process id (the Lease holder identity ends with `-<pid>`).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGKILL, no clean shutdown.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Operator {
    fn drop(&mut self) {
        self.kill();
        if std::thread::panicking() {
            let text = self.log_text();
            let tail: Vec<&str> = text.lines().rev().take(60).collect();
            eprintln!("---- operator log (last 60 lines) ----");
            for l in tail.into_iter().rev() {
                eprintln!("{l}");
            }
        }
    }
}
