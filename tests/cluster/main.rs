//! The tests that need the Kubernetes control plane (`hack/cluster.sh up`, or any cluster in
//! `KUBECONFIG`): the control plane itself, the CRD on the API server, the operator process through
//! every forward shape, the bad cases, edits, stalls, restarts and leadership, the CLI, the Helm
//! chart's RBAC and a rollout under live traffic. `cargo test --test cluster`, or
//! `hack/test.sh cluster`. Without a cluster every test fails with a hint.

#[path = "../support"]
mod support {
    pub mod bench;
    pub mod events;
    pub mod faults;
    pub mod fleet;
    pub mod history;
    pub mod job_store;
    pub mod kube;
    pub mod operator;
    pub mod peers;
    pub mod poll;
    pub mod process;
    pub mod redis;
    pub mod rollback;
    pub mod scenario;
}

mod bench_operator;
mod chart_rbac;
mod cli;
mod cli_with_operator;
mod crd;
mod delete;
mod edits;
mod faults_operator_kill;
mod faults_other_writer;
mod faults_redis_restart;
mod leadership;
mod live_traffic;
mod restart;
mod rollout;
mod safety;
mod smoke;
mod stalled;
