//! The tests that need no Kubernetes cluster: the wire contract on a real `redis-server` with the
//! Python `arq` peers, the drain scans, the API, the worker and the storage backends (local and a
//! real S3-compatible server) as processes, and the CLI's errors. `cargo test --test local`, or
//! `hack/test.sh local`; they must pass without `KUBECONFIG`.

#[path = "../support"]
mod support {
    pub mod api;
    pub mod bench;
    pub mod drawings;
    pub mod faults;
    pub mod job_store;
    pub mod measure;
    pub mod peer_scripts;
    pub mod peers;
    pub mod poll;
    pub mod process;
    pub mod redis;
    pub mod s3;
    pub mod schema;
    pub mod vision_stub;
    pub mod worker;
}

mod api_http;
mod api_presets;
mod api_worker_s3;
/// `#[ignore]`d measurements run by `bench/api-submit.sh`, not tests.
mod bench_api_submit;
/// `#[ignore]`d measurement run by `bench/drain.sh`, not a test.
mod bench_drain;
/// `#[ignore]`d measurements run by `bench/redis-memory.sh`, not tests.
mod bench_redis_memory;
/// `#[ignore]`d measurements run by `bench/worker-rss.sh`, not tests.
mod bench_worker_rss;
/// `#[ignore]`d measurement run by `bench/worker-throughput.sh`, not a test.
mod bench_worker_throughput;
mod cli_errors;
mod contract_redis;
mod drain_redis;
mod engine_verdicts;
mod faults_drain_live;
mod faults_worker_kill;
mod fuzz_decoders;
mod hostile_api;
mod hostile_worker;
mod mixed_fleet_vision;
mod result_schema;
mod storage_backends;
mod vision_backend;
mod worker_callback;
mod worker_fleet;
mod worker_jobs;
