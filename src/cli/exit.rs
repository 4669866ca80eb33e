//! How the binary ends: the typed exit codes (those of `rollout status --wait` are a script's
//! interface, listed in its `--help`) and the one-line report of an error, without a backtrace.

use std::error::Error;
use std::fmt::Write as _;

/// Exit code of `dedup2d`. Invalid arguments exit with clap's code 2.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Exit {
    /// Done; for `status --wait`: the rollout reached Completed.
    Success = 0,
    /// An error: rollout not found, no Kubernetes configuration, an API error, a bad setting.
    Error = 1,
    /// `status --wait`: the rollout ended RolledBack.
    RolledBack = 10,
    /// `status --wait`: the rollout ended Failed.
    Failed = 11,
    /// `status --wait`: the rollout waits for a person (spec.paused, AwaitingFinalize, or a hold
    /// that only a retry or abort request lifts).
    NeedsPerson = 12,
    /// `status --wait`: `--timeout` passed first.
    Timeout = 13,
}

impl Exit {
    /// Every exit code of `status --wait`, in the order `--help` lists them.
    pub(crate) const WAIT: [Exit; 6] = [
        Exit::Success,
        Exit::RolledBack,
        Exit::Failed,
        Exit::NeedsPerson,
        Exit::Timeout,
        Exit::Error,
    ];

    pub(crate) fn code(self) -> u8 {
        self as u8
    }

    /// What the code means after `status --wait`.
    pub(crate) fn wait_meaning(self) -> &'static str {
        match self {
            Exit::Success => "Completed",
            Exit::Error => "error (rollout not found, no Kubernetes configuration, API error)",
            Exit::RolledBack => "RolledBack",
            Exit::Failed => "Failed",
            Exit::NeedsPerson => {
                "waiting for a person: spec.paused (resume), AwaitingFinalize (promote), or held \
                 by ExternalModification / ProgressDeadlineExceeded (retry or abort)"
            }
            Exit::Timeout => "--timeout passed first",
        }
    }
}

impl From<Exit> for std::process::ExitCode {
    fn from(e: Exit) -> Self {
        std::process::ExitCode::from(e.code())
    }
}

/// The `Exit codes:` section of `rollout status --help`.
pub(crate) fn wait_exit_codes_help() -> String {
    let mut text = String::from("Exit codes with --wait:\n");
    for e in Exit::WAIT {
        let _ = writeln!(text, "  {:>2}  {}", e.code(), e.wait_meaning());
    }
    text.push_str("   2  invalid arguments\n");
    text.push_str(
        "Problems that heal by themselves (a missing target, Redis unreachable) keep it waiting.",
    );
    text
}

/// `err` and its sources on one line, `outer: inner: innermost`. A source whose text the outer
/// message already contains (the `"...: {0}"` habit) is not repeated; line breaks become spaces.
pub fn one_line(err: &(dyn Error + 'static)) -> String {
    let mut line = err.to_string();
    let mut source = err.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !text.is_empty() && !line.contains(&text) {
            line.push_str(": ");
            line.push_str(&text);
        }
        source = s.source();
    }
    line.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("outer: {0}")]
    struct Repeats(#[source] Inner);

    #[derive(Debug, thiserror::Error)]
    #[error("reading config")]
    struct Wraps(#[source] Inner);

    #[derive(Debug, thiserror::Error)]
    #[error("inner\nsecond line")]
    struct Inner(#[source] std::io::Error);

    #[test]
    fn the_wait_codes_are_the_documented_ones() {
        let codes: Vec<(u8, Exit)> = Exit::WAIT.iter().map(|e| (e.code(), *e)).collect();
        assert_eq!(
            codes,
            [
                (0, Exit::Success),
                (10, Exit::RolledBack),
                (11, Exit::Failed),
                (12, Exit::NeedsPerson),
                (13, Exit::Timeout),
                (1, Exit::Error),
            ]
        );
        let help = wait_exit_codes_help();
        for e in Exit::WAIT {
            assert!(
                help.contains(&format!("{:>2}  {}", e.code(), e.wait_meaning())),
                "{help}"
            );
        }
    }

    #[test]
    fn errors_are_one_line_without_repeats() {
        let io = || std::io::Error::new(std::io::ErrorKind::NotFound, "no such file");
        assert_eq!(
            one_line(&Repeats(Inner(io()))),
            "outer: inner second line: no such file"
        );
        assert_eq!(
            one_line(&Wraps(Inner(io()))),
            "reading config: inner second line: no such file"
        );
        let line = one_line(&Wraps(Inner(io())));
        assert!(!line.contains('\n'));
    }
}
