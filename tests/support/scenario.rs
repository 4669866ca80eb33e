//! The preamble the operator e2e tests share, as a builder: a fresh namespace with the CRD, a
//! private `redis-server` holding the test's payloads, the fleet rolled out, optionally the history
//! recorder; then the operator process and the rollout.
//!
//! ```ignore
//! let (s, _op) = Scenario::builder("op-ttl").workers(&[("worker-a", 2)]).run("ttl", spec).await;
//! s.wait("ttl", Phase::Draining).await;
//! ```

use redis::aio::ConnectionManager;
use serde_json::Value;

use dedup2d::operator::crd::{Dedup2DRollout, Phase};

use k8s_openapi::{api::events::v1::Event, jiff::Timestamp};

use super::events::{transitions_until, FORWARD_TRANSITIONS};
use super::fleet::{apply_rollout, fleet, wait_phase, write_payloads, WAIT};
use super::history::{check_dual_write_off_after_workers, includes, History};
use super::kube::{ClusterWide, TestNamespace};
use super::operator::{install_crd, Operator};
use super::redis::RedisServer;

/// A namespace with the CRD, Redis and the fleet, ready for a rollout.
pub struct Scenario {
    pub ns: TestNamespace,
    pub redis: RedisServer,
    /// A connection to [`Scenario::redis`].
    pub conn: ConnectionManager,
    history: Option<History>,
}

/// What [`Scenario::new`] sets up; see the methods for the choices.
pub struct ScenarioBuilder<'a> {
    prefix: &'a str,
    claim: Option<&'a ClusterWide>,
    workers: Vec<(&'a str, i32)>,
    include_b64: &'a str,
    legacy: Vec<&'a str>,
    file_ref_only: Vec<&'a str>,
    redis_url: Option<String>,
    fleet: bool,
    history: bool,
}

impl Scenario {
    /// A scenario in a namespace `<prefix>-<8 hex>`: by default the fleet's `api` and no worker
    /// Deployment, dual-write off, no payload in Redis, no history.
    pub fn builder(prefix: &str) -> ScenarioBuilder<'_> {
        ScenarioBuilder {
            prefix,
            claim: None,
            workers: vec![],
            include_b64: "0",
            legacy: vec![],
            file_ref_only: vec![],
            redis_url: None,
            fleet: true,
            history: false,
        }
    }

    /// The recorded history (the builder's [`ScenarioBuilder::history`]).
    pub fn history(&self) -> &History {
        self.history
            .as_ref()
            .expect("the scenario was built without .history()")
    }

    /// Starts recording the history now (a test that changes the fleet before it records).
    pub async fn start_history(&mut self) {
        self.history = Some(History::start(&self.ns).await);
    }

    /// Starts the operator on the namespace and applies the rollout `name`.
    pub async fn run(&self, name: &str, spec: Value) -> Operator {
        let op = Operator::start(&self.ns.name);
        apply_rollout(&self.ns, name, spec).await;
        op
    }

    /// The one check of a forward rollout that reached `Completed` with dual-write on the way
    /// (recorded history required): dual-write turned off exactly once and only when no pod of
    /// `workers` on another image than `target` existed (invariant 1), the ConfigMap went
    /// 0 -> 1 -> 0, and every forward transition was reported by exactly one Event, in order, none
    /// repeated as a series. Returns the revisions where dual-write went off and the transitions.
    pub async fn check_completed_forward(
        &self,
        workers: &[&str],
        target: &str,
    ) -> (Vec<u64>, Vec<(Timestamp, String)>) {
        let h = self.history().by_revision();
        let offs = check_dual_write_off_after_workers(&h, workers, target);
        assert_eq!(offs.len(), 1, "dual-write turned off exactly once");
        assert_eq!(
            includes(&h),
            ["0", "1", "0"],
            "ConfigMap history 0 -> 1 -> 0"
        );
        let trans = transitions_until(&self.ns, "Completed").await;
        let phases: Vec<&str> = trans.iter().map(|t| t.1.as_str()).collect();
        assert_eq!(
            phases, FORWARD_TRANSITIONS,
            "every transition Event, once, in order"
        );
        let events = self.ns.api::<Event>();
        for e in events.list(&Default::default()).await.unwrap().items {
            let note = e.note.clone().unwrap_or_default();
            if e.reporting_controller.as_deref() == Some("dedup2d-operator")
                && note.contains(" -> ")
            {
                assert!(e.series.is_none(), "repeated transition Event: {note}");
            }
        }
        (offs, trans)
    }

    /// Waits up to [`WAIT`] for the rollout `name` to be in `phase`.
    pub async fn wait(&self, name: &str, phase: Phase) -> Dedup2DRollout {
        wait_phase(&self.ns, name, phase, WAIT).await
    }
}

impl<'a> ScenarioBuilder<'a> {
    /// Worker Deployments `(name, replicas)` on the old image.
    pub fn workers(mut self, workers: &[(&'a str, i32)]) -> Self {
        self.workers = workers.to_vec();
        self
    }

    /// The fleet starts with dual-write on (`file_bytes_b64` included), as if turned on by hand.
    pub fn dual_write_on(mut self) -> Self {
        self.include_b64 = "1";
        self
    }

    /// Payloads in Redis before anything else: legacy ones (`file_bytes_b64`) and file_ref-only
    /// ones, with an hour's TTL.
    pub fn payloads(mut self, legacy: &[&'a str], file_ref_only: &[&'a str]) -> Self {
        self.legacy = legacy.to_vec();
        self.file_ref_only = file_ref_only.to_vec();
        self
    }

    /// The fleet's ConfigMap names this Redis URL instead of the scenario's server.
    pub fn redis_url(mut self, url: String) -> Self {
        self.redis_url = Some(url);
        self
    }

    /// No fleet: the test brings its own (the Helm chart's).
    pub fn without_fleet(mut self) -> Self {
        self.fleet = false;
        self
    }

    /// Record the namespace's history (started after the fleet rolled out).
    pub fn history(mut self) -> Self {
        self.history = true;
        self
    }

    /// The namespace is made under the test's exclusive claim on the cluster.
    pub fn cluster_wide(mut self, claim: &'a ClusterWide) -> Self {
        self.claim = Some(claim);
        self
    }

    /// Namespace, CRD, Redis with the payloads, the fleet rolled out, the history.
    pub async fn fleet(self) -> Scenario {
        let ns = match self.claim {
            Some(claim) => claim.namespace(self.prefix).await,
            None => TestNamespace::new(self.prefix).await,
        };
        install_crd(&ns.client).await;
        let redis = RedisServer::start();
        let mut conn = redis.manager().await;
        write_payloads(&mut conn, &self.legacy, &self.file_ref_only, 3600).await;
        if self.fleet {
            let url = self.redis_url.unwrap_or_else(|| redis.url());
            fleet(&ns, &url, self.include_b64, &self.workers).await;
        }
        let history = match self.history {
            true => Some(History::start(&ns).await),
            false => None,
        };
        Scenario {
            ns,
            redis,
            conn,
            history,
        }
    }

    /// [`ScenarioBuilder::fleet`], then the operator and the rollout `name` ([`Scenario::run`]).
    pub async fn run(self, name: &str, spec: Value) -> (Scenario, Operator) {
        let s = self.fleet().await;
        let op = s.run(name, spec).await;
        (s, op)
    }
}
