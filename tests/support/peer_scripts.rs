//! Running a peer script to completion (the Python `arq` client side of the contract tests).

use std::process::Command;

use super::peers::{peer, python};

/// Runs a peer script to completion and returns its stdout; panics with its stderr on failure.
pub fn run_peer(script: &str, args: &[&str]) -> String {
    let out = Command::new(python())
        .arg(peer(script))
        .args(args)
        .current_dir(std::env::temp_dir())
        .output()
        .unwrap_or_else(|e| panic!("cannot run peer {script}: {e}"));
    assert!(
        out.status.success(),
        "peer {script} failed ({}):\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Async wrapper so tokio tests don't block the runtime.
pub async fn run_peer_async(script: &str, args: &[&str]) -> String {
    let script = script.to_string();
    let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    tokio::task::spawn_blocking(move || {
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        run_peer(&script, &refs)
    })
    .await
    .unwrap()
}
