//! `dedup2d rollout status --wait` against the status the real operator writes (the operator
//! binary on the local control plane, a small fleet, a real redis-server): a `finalize: Manual`
//! rollout ends the wait with 12 at AwaitingFinalize, and `promote` followed at once by `--wait`
//! waits for the operator to handle the request and exits 0 at Completed.

use std::process::Output;

use serde_json::json;

use crate::support::{fleet::*, scenario::Scenario};

const BIN: &str = env!("CARGO_BIN_EXE_dedup2d");

async fn cli(args: &[&str]) -> Output {
    tokio::process::Command::new(BIN)
        .args(args)
        .env("RUST_BACKTRACE", "1")
        .output()
        .await
        .unwrap_or_else(|e| panic!("run {BIN}: {e}"))
}

/// `dedup2d rollout status fleet -n NS --wait --timeout TIMEOUT`.
async fn status_wait(ns: &str, timeout: &str) -> Output {
    cli(&[
        "rollout",
        "status",
        "fleet",
        "-n",
        ns,
        "--wait",
        "--timeout",
        timeout,
    ])
    .await
}

fn text(out: &Output) -> String {
    format!(
        "exit {:?}\nstdout:\n{}\nstderr:\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[tokio::test]
async fn wait_stops_at_awaiting_finalize_and_promote_then_wait_completes() {
    let (s, _op) = Scenario::builder("cli-op")
        .workers(&[("worker-a", 2)])
        .run(
            "fleet",
            rollout_spec(
                &["worker-a"],
                json!({"drain": {"strategy": "Observe"}, "finalize": "Manual"}),
            ),
        )
        .await;
    let ns = &s.ns;

    let id = format!("Dedup2DRollout {}/fleet", ns.name);
    let out = status_wait(&ns.name, "3m").await;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    println!("status --wait (exit {:?}):\n{stdout}", out.status.code());
    assert_eq!(out.status.code(), Some(12), "{}", text(&out));
    // One line per phase on the way, as the operator moved through them.
    for arrow in [
        "-> UpgradingWorkers",
        "-> DualWriteOff",
        "-> Draining",
        "-> AwaitingFinalize",
    ] {
        assert!(
            stdout.lines().any(|l| l.contains(arrow)),
            "{arrow} missing:\n{stdout}"
        );
    }
    assert_eq!(
        stdout.lines().last().unwrap(),
        format!(
            "{id}: needs a person: drained, AwaitingFinalize (finalize: Manual); \
             `dedup2d rollout promote fleet` completes it"
        )
    );

    // Right after `promote` the status still says AwaitingFinalize; --wait waits for the
    // operator to handle the request instead of exiting 12 again.
    let promoted = cli(&["rollout", "promote", "fleet", "-n", &ns.name]).await;
    assert!(promoted.status.success(), "{}", text(&promoted));
    let out = status_wait(&ns.name, "1m").await;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    println!(
        "promote; status --wait (exit {:?}):\n{stdout}",
        out.status.code()
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    // Usually `AwaitingFinalize -> Completed`; `Completed:` on the first line when the operator
    // was quicker than this process's start.
    assert!(
        stdout
            .lines()
            .any(|l| l.contains("AwaitingFinalize -> Completed") || l.contains("  Completed: ")),
        "{stdout}"
    );
    assert_eq!(stdout.lines().last().unwrap(), format!("{id}: Completed"));
    let st = status(ns, "fleet").await;
    assert_eq!(st.last_request.unwrap().outcome, "finalized");
}
