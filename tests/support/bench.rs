//! For the `#[ignore]`d measurements that the scripts under `bench/` run (and the fault tests
//! that load Redis the same way): where results go and the commands Redis has served.

use std::collections::BTreeMap;

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

/// [`bench_result_path`] of `$DEDUP2D_BENCH_NAME.json`, or of `{default}.json` when it is unset
/// (a measurement run at several sizes keeps each run's figures apart).
pub fn named_result_path(default: &str) -> std::path::PathBuf {
    let name = std::env::var("DEDUP2D_BENCH_NAME").unwrap_or_else(|_| default.into());
    bench_result_path(&format!("{name}.json"))
}

/// Calls per command (`get`, `evalsha`, `config|get`, ...) Redis has served since it started or
/// since the last [`reset_command_stats`], from `INFO commandstats`: the commands a Lua script
/// calls count, the measurement's own `INFO` and `CONFIG` calls do not.
pub async fn command_calls(conn: &mut redis::aio::ConnectionManager) -> BTreeMap<String, u64> {
    let info: String = redis::cmd("INFO")
        .arg("commandstats")
        .query_async(conn)
        .await
        .unwrap();
    parse_command_calls(&info)
}

/// All the calls of [`command_calls`].
pub async fn command_total(conn: &mut redis::aio::ConnectionManager) -> u64 {
    command_calls(conn).await.values().sum()
}

/// Zeroes Redis's counters (`CONFIG RESETSTAT`), `INFO commandstats` among them.
pub async fn reset_command_stats(conn: &mut redis::aio::ConnectionManager) {
    let _: () = redis::cmd("CONFIG")
        .arg("RESETSTAT")
        .query_async(conn)
        .await
        .unwrap();
}

/// `cmdstat_<name>:calls=<n>,usec=...` lines; a Redis before 7 names `config` with no subcommand.
fn parse_command_calls(info: &str) -> BTreeMap<String, u64> {
    info.lines()
        .filter_map(|l| l.strip_prefix("cmdstat_"))
        .filter_map(|l| {
            let (name, rest) = l.split_once(':')?;
            let calls = rest
                .strip_prefix("calls=")?
                .split(',')
                .next()?
                .parse()
                .ok()?;
            Some((name.to_string(), calls))
        })
        .filter(|(name, _)| name != "info" && name != "config" && !name.starts_with("config|"))
        .collect()
}
