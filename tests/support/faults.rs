//! The fault suite's size and its record. Every fault test runs in the normal test run at a reduced
//! size (CI) and at full size under `DEDUP2D_FAULTS=full` (`hack/faults.sh`). A full run writes its
//! counts to `bench/results/faults/{name}.json`; a reduced run only prints them, so CI never touches
//! the committed record.

use super::bench::bench_result_path;

/// Is this the full fault run (`DEDUP2D_FAULTS=full`)?
pub fn full_run() -> bool {
    std::env::var("DEDUP2D_FAULTS").is_ok_and(|v| v == "full")
}

/// How many times to inject a fault: `reduced` in the normal test run, `full` in the full run.
pub fn fault_count(reduced: usize, full: usize) -> usize {
    if full_run() {
        full
    } else {
        reduced
    }
}

/// Print a fault test's counts and, in the full run, write them to
/// `bench/results/faults/{name}.json`.
pub fn record_fault_counts(name: &str, counts: &serde_json::Value) {
    let text = serde_json::to_string_pretty(counts).expect("counts serialize");
    eprintln!("fault counts {name}: {text}");
    if full_run() {
        let path = bench_result_path(&format!("faults/{name}.json"));
        std::fs::create_dir_all(path.parent().expect("results dir")).expect("create results dir");
        std::fs::write(&path, text + "\n").expect("write fault counts");
    }
}
