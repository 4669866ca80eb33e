//! For the `#[ignore]`d measurements that the scripts under `bench/` run (and the fault tests
//! that load Redis the same way): where results go, size knobs, Redis CPU, a payload mix.

/// Where a measurement writes its JSON: `bench/results/{name}` in the repository, or the
/// directory in `DEDUP2D_BENCH_OUT` (CI's smoke run of the benchmarks, which must not touch the
/// committed figures).
pub fn bench_result_path(name: &str) -> std::path::PathBuf {
    std::env::var_os("DEDUP2D_BENCH_OUT")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| {
            std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("bench/results")
        })
        .join(name)
}
