//! The built binary on bad input, with RUST_BACKTRACE=1 (as in a developer's shell): one line
//! `error: ...` on stderr, no backtrace, the documented exit code. No cluster needed; the
//! cluster cases (rollout not found, an API error) are in `tests/cluster/cli.rs`.

use std::io::Write as _;
use std::process::{Command, Output};

const BIN: &str = env!("CARGO_BIN_EXE_dedup2d");

/// Runs the binary with RUST_BACKTRACE=1 and without any Kubernetes configuration (no KUBECONFIG,
/// an empty HOME, not in a cluster), plus `env`.
fn run(args: &[&str], env: &[(&str, &str)]) -> Output {
    let home = tempfile::tempdir().unwrap();
    let mut cmd = Command::new(BIN);
    cmd.args(args)
        .env("RUST_BACKTRACE", "1")
        .env("HOME", home.path())
        .env_remove("KUBECONFIG")
        .env_remove("KUBERNETES_SERVICE_HOST")
        .env_remove("KUBERNETES_SERVICE_PORT");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output()
        .unwrap_or_else(|e| panic!("run {BIN} {args:?}: {e}"))
}

/// Asserts exit `code` and that stderr is exactly one line, `error: ...`, without a backtrace;
/// returns that line.
fn one_error_line(out: &Output, code: i32) -> String {
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(code), "stderr:\n{err}");
    assert!(!err.to_lowercase().contains("backtrace"), "{err}");
    let lines: Vec<&str> = err.lines().collect();
    assert_eq!(lines.len(), 1, "one line expected:\n{err}");
    assert!(lines[0].starts_with("error: "), "{err}");
    lines[0].to_string()
}

#[test]
fn no_kubernetes_configuration_is_one_line() {
    let want = "error: no Kubernetes configuration: set KUBECONFIG or run in a cluster";
    for args in [
        &["rollout", "status", "fleet"][..],
        &["rollout", "status", "fleet", "--wait", "--timeout", "10s"],
        &["rollout", "retry", "fleet"],
        &["rollout", "abort", "fleet", "--full"],
        &["operator"],
    ] {
        assert_eq!(one_error_line(&run(args, &[]), 1), want, "{args:?}");
    }
}

#[test]
fn a_broken_kubeconfig_and_an_unreachable_api_server_are_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let garbage = dir.path().join("garbage.yaml");
    std::fs::write(&garbage, "clusters: [\n").unwrap();
    let line = one_error_line(
        &run(
            &["rollout", "status", "fleet"],
            &[("KUBECONFIG", garbage.to_str().unwrap())],
        ),
        1,
    );
    assert!(
        line.starts_with("error: cannot load the Kubernetes configuration: "),
        "{line}"
    );

    // A kubeconfig whose server does not listen (port 1 on loopback).
    let dead = dir.path().join("dead.yaml");
    let mut f = std::fs::File::create(&dead).unwrap();
    write!(
        f,
        "apiVersion: v1\nkind: Config\ncurrent-context: x\n\
         clusters: [{{name: c, cluster: {{server: 'https://127.0.0.1:1', insecure-skip-tls-verify: true}}}}]\n\
         users: [{{name: u, user: {{token: t}}}}]\n\
         contexts: [{{name: x, context: {{cluster: c, user: u, namespace: prod}}}}]\n"
    )
    .unwrap();
    for args in [
        &["rollout", "status", "fleet"][..],
        &["rollout", "status", "fleet", "--wait"],
        &["rollout", "pause", "fleet"],
    ] {
        let line = one_error_line(&run(args, &[("KUBECONFIG", dead.to_str().unwrap())]), 1);
        assert!(
            line.starts_with(
                r#"error: reading rollout "fleet" in namespace "prod": cannot reach the Kubernetes API server: "#
            ),
            "{args:?}: {line}"
        );
    }
}

#[test]
fn a_bad_environment_variable_is_one_line_naming_it() {
    // Flags that also read a variable (clap `env`): exit 2 like any invalid argument.
    for (args, var, value) in [
        (&["api"][..], "DEDUP2D_API_LISTEN", "not-an-address"),
        (&["api"], "DEDUP2D_API_MAX_UPLOAD_BYTES", "lots"),
        (&["operator"], "DEDUP2D_LEASE_DURATION", "15 seconds"),
        (&["operator"], "DEDUP2D_OPERATOR_METRICS_ADDR", "nowhere"),
    ] {
        let line = one_error_line(&run(args, &[(var, value)]), 2);
        assert!(
            line.starts_with(&format!("error: {var}={value:?} is not valid for --")),
            "{line}"
        );
    }
    // The contract's variables, read at start-up: exit 1.
    for (args, var, value) in [
        (
            &["worker"][..],
            "DEDUP2D_WORKER_HEARTBEAT_TTL_SECONDS",
            "abc",
        ),
        (&["worker"], "DEDUP2D_FILE_STORAGE", "ftp"),
        (&["api"], "DEDUP2D_FILE_STORAGE", "ftp"),
        (&["config"], "DEDUP2D_ASYNC_TTL_SECONDS", "an hour"),
    ] {
        let line = one_error_line(&run(args, &[(var, value)]), 1);
        assert!(line.contains(&format!("{var}={value:?}")), "{line}");
    }
}

#[test]
fn invalid_flags_get_clap_s_message_without_a_backtrace() {
    for (args, needle) in [
        (&["rollout", "status", "fleet", "--bogus"][..], "--bogus"),
        (
            &["rollout", "status", "fleet", "--wait", "--timeout", "5x"],
            "invalid duration",
        ),
        (
            &["rollout", "status", "fleet", "--timeout", "10m"],
            "--wait",
        ),
        (
            &["rollout", "status", "fleet", "--wait", "--watch"],
            "--watch",
        ),
        (&["rollout", "retry"], "<NAME>"),
        (&["rollout", "frobnicate", "fleet"], "frobnicate"),
    ] {
        let out = run(args, &[]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(!err.to_lowercase().contains("backtrace"), "{err}");
        let first = err.lines().next().unwrap_or_default();
        assert!(first.starts_with("error: "), "{args:?}: {err}");
        assert_eq!(
            err.lines().filter(|l| l.starts_with("error")).count(),
            1,
            "{err}"
        );
        assert!(err.contains(needle), "{args:?}: {err}");
    }
}

#[test]
fn help_lists_the_wait_exit_codes_and_retry() {
    let out = run(&["rollout", "status", "--help"], &[]);
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    for line in [
        "Exit codes with --wait:",
        "   0  Completed",
        "  10  RolledBack",
        "  11  Failed",
        "  12  waiting for a person",
        "  13  --timeout passed first",
        "   1  error",
        "--timeout <DUR>",
    ] {
        assert!(help.contains(line), "missing {line:?} in\n{help}");
    }
    let out = run(&["rollout", "--help"], &[]);
    let help = String::from_utf8_lossy(&out.stdout);
    assert!(help.contains("retry"), "{help}");
}

/// A Redis URL that does not parse (here: its port) is never echoed, so its password cannot reach
/// a log: not by the worker's start-up error, not by the API's, not by `dedup2d config`.
#[test]
fn a_password_in_an_unparsable_redis_url_never_reaches_the_output() {
    let secret = "WrongSecretPW123";
    let url = format!("redis://:{secret}@127.0.0.1:notaport/0");
    let storage = tempfile::tempdir().unwrap();
    let dir = storage.path().to_str().unwrap();
    let env = [
        ("DEDUP2D_REDIS_URL", url.as_str()),
        ("DEDUP2D_FILE_STORAGE_DIR", dir),
        ("DEDUP2D_API_KEYS", "k1"),
    ];
    for (args, code) in [(&["worker"][..], 1), (&["api"], 1)] {
        let line = one_error_line(&run(args, &env), code);
        assert!(line.contains("<unparsable URL>"), "{args:?}: {line}");
        assert!(!line.contains(secret), "{args:?}: {line}");
    }
    let out = run(&["config"], &env);
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("<unparsable URL>"), "{text}");
    assert!(!text.contains(secret), "{text}");
}
