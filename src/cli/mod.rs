//! `dedup2d rollout ...`: the command line for people. `status [--watch | --wait]` shows a rollout,
//! `pause` and `resume` server-side apply `spec.paused` (field manager `dedup2d-cli`, forced: it is a
//! person's intent), `promote`, `retry` and `abort [--full]` write a one-shot request
//! `<verb>:<nonce>` into the `dedup2d.io/request` annotation. Installed as `kubectl-dedup2d` it is a
//! kubectl plugin (`kubectl dedup2d status NAME`). Rendering lives in [`render`], the meaning of a
//! status for `--wait` in [`wait`], exit codes and error lines in [`exit`]; this module is the thin IO.

pub mod exit;
pub mod render;
pub mod wait;

use std::ffi::OsString;
use std::path::Path;
use std::time::Duration;

use clap::{Args, Subcommand};
use futures::StreamExt;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Patch, PatchParams};
use kube::runtime::watcher::watch_object;
use kube::runtime::WatchStreamExt;
use kube::{Api, Client};
use serde_json::json;

use self::exit::{one_line, Exit};
use self::wait::Verdict;
use crate::operator::conditions::{get_condition, STALLED};
use crate::operator::crd::{Dedup2DRollout, Phase, REQUEST_ANNOTATION};

/// Field manager of every write the CLI does.
pub(crate) const CLI_FIELD_MANAGER: &str = "dedup2d-cli";

/// Consecutive failed watch attempts (each after a backoff) before `--wait`/`--watch` give up.
const WATCH_ATTEMPTS: u32 = 5;

/// `dedup2d rollout` arguments.
#[derive(Args, Debug, Clone)]
pub struct RolloutArgs {
    #[command(subcommand)]
    pub command: RolloutCommand,
}

/// The rollout verbs.
#[derive(Subcommand, Debug, Clone, PartialEq, Eq)]
pub enum RolloutCommand {
    /// Show phase, workers, dual-write, drain, conditions and requests of a rollout; with --wait,
    /// wait for an outcome and exit with a code a script can use.
    #[command(after_help = exit::wait_exit_codes_help())]
    Status {
        #[command(flatten)]
        target: Target,
        /// Print phase changes until the rollout reaches Completed, RolledBack or Failed
        /// (exit status 0 only for Completed).
        #[arg(short, long, conflicts_with = "wait")]
        watch: bool,
        /// Watch the rollout, print each phase change, and exit once it is Completed, RolledBack,
        /// Failed or waiting for a person (exit codes below).
        #[arg(long)]
        wait: bool,
        /// With --wait: give up after this long (e.g. 30s, 10m, 1h30m; 0 checks once).
        #[arg(long, value_name = "DUR", requires = "wait", value_parser = crate::operator::duration::parse_duration)]
        timeout: Option<Duration>,
    },
    /// Hold the rollout at its current step (sets spec.paused=true).
    Pause {
        #[command(flatten)]
        target: Target,
    },
    /// Let a paused rollout go on (sets spec.paused=false).
    Resume {
        #[command(flatten)]
        target: Target,
    },
    /// End a soak or an AwaitingFinalize early.
    Promote {
        #[command(flatten)]
        target: Target,
    },
    /// Lift a hold (ExternalModification, ProgressDeadlineExceeded with onFailure: Pause), or
    /// start a RolledBack or Failed rollout again.
    Retry {
        #[command(flatten)]
        target: Target,
    },
    /// Roll back: dual-write on and the API rolled (quick), or with --full also the old images,
    /// once no active job lacks file_bytes_b64.
    Abort {
        #[command(flatten)]
        target: Target,
        /// Full rollback: also restore the recorded worker and API images.
        #[arg(long)]
        full: bool,
    },
}

/// Which rollout.
#[derive(Args, Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// Name of the Dedup2DRollout.
    pub name: String,
    /// Namespace (default: the kubeconfig context's namespace).
    #[arg(short, long)]
    pub namespace: Option<String>,
}

impl RolloutCommand {
    fn target(&self) -> &Target {
        match self {
            RolloutCommand::Status { target, .. }
            | RolloutCommand::Pause { target }
            | RolloutCommand::Resume { target }
            | RolloutCommand::Promote { target }
            | RolloutCommand::Retry { target }
            | RolloutCommand::Abort { target, .. } => target,
        }
    }

    /// The verb of the one-shot request this command sends, if it sends one.
    fn request_verb(&self) -> Option<&'static str> {
        match self {
            RolloutCommand::Promote { .. } => Some("promote"),
            RolloutCommand::Retry { .. } => Some("retry"),
            RolloutCommand::Abort { full: false, .. } => Some("abort"),
            RolloutCommand::Abort { full: true, .. } => Some("abort-full"),
            _ => None,
        }
    }
}

/// Errors of the CLI, each one line naming the rollout it concerns.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error("no Kubernetes configuration: set KUBECONFIG or run in a cluster")]
    NoConfig,
    #[error("cannot load the Kubernetes configuration: {0}")]
    BadConfig(String),
    #[error("rollout {name:?} not found in namespace {namespace:?}")]
    NotFound { namespace: String, name: String },
    #[error(
        "the Dedup2DRollout CRD is not installed in this cluster \
         (install it with `dedup2d crd | kubectl apply -f -`)"
    )]
    CrdMissing,
    #[error("{action} rollout {name:?} in namespace {namespace:?}: {reason}")]
    Kube {
        action: &'static str,
        namespace: String,
        name: String,
        reason: String,
    },
    #[error("rollout {name:?} in namespace {namespace:?} ended in phase {phase}")]
    EndedIn {
        namespace: String,
        name: String,
        phase: Phase,
    },
    #[error("rollout {name:?} in namespace {namespace:?} was deleted while watching")]
    Deleted { namespace: String, name: String },
}

/// The request value a command writes into `dedup2d.io/request`: `<verb>:<nonce>`.
pub(crate) fn request_value(verb: &str, nonce: &str) -> String {
    format!("{verb}:{nonce}")
}

/// A fresh nonce: a repeated command is a new request, a re-applied manifest is not.
pub(crate) fn new_nonce() -> String {
    uuid::Uuid::new_v4().simple().to_string()[..12].to_string()
}

/// When the binary runs as `kubectl-dedup2d` (a kubectl plugin), rewrites its arguments to the
/// `dedup2d rollout ...` form (`kubectl dedup2d status x` → `dedup2d rollout status x`); otherwise
/// returns them unchanged. `kubectl dedup2d rollout status x` works too.
pub fn plugin_argv(args: impl IntoIterator<Item = OsString>) -> Vec<OsString> {
    let mut args: Vec<OsString> = args.into_iter().collect();
    let is_plugin = args
        .first()
        .and_then(|a0| {
            Path::new(a0)
                .file_name()
                .map(|f| f.to_string_lossy().into_owned())
        })
        .is_some_and(|f| {
            f.strip_suffix(".exe")
                .unwrap_or(&f)
                .ends_with("kubectl-dedup2d")
        });
    if is_plugin {
        args[0] = OsString::from("dedup2d");
        if args.get(1).map(|a| a != "rollout").unwrap_or(true) {
            args.insert(1, OsString::from("rollout"));
        }
    }
    args
}

/// A Kubernetes client from KUBECONFIG (or `~/.kube/config`) or the in-cluster ServiceAccount,
/// with an error a person can act on when there is neither.
pub async fn connect() -> Result<Client, CliError> {
    Client::try_default().await.map_err(|e| {
        let home_config = std::env::var_os("HOME")
            .map(|h| Path::new(&h).join(".kube/config"))
            .is_some_and(|p| p.exists());
        let nothing_given = std::env::var_os("KUBECONFIG").is_none_or(|v| v.is_empty())
            && std::env::var_os("KUBERNETES_SERVICE_HOST").is_none()
            && !home_config;
        if nothing_given {
            CliError::NoConfig
        } else {
            CliError::BadConfig(one_line(&e))
        }
    })
}

/// Runs one rollout command, printing to stdout; the exit code says how it ended.
pub async fn run(args: RolloutArgs) -> Result<Exit, CliError> {
    let client = connect().await?;
    let mut stdout = std::io::stdout();
    run_with(client, args.command, &mut stdout).await
}

/// [`run`] with a given client and output.
pub(crate) async fn run_with(
    client: Client,
    command: RolloutCommand,
    out: &mut impl std::io::Write,
) -> Result<Exit, CliError> {
    let target = command.target();
    let namespace = target
        .namespace
        .clone()
        .unwrap_or_else(|| client.default_namespace().to_string());
    let rollouts = Rollouts {
        api: Api::namespaced(client, &namespace),
        namespace,
        name: target.name.clone(),
    };
    if let Some(verb) = command.request_verb() {
        let v = rollouts.request(verb).await?;
        let _ = writeln!(out, "{}: requested {REQUEST_ANNOTATION}={v}", rollouts.id());
        return Ok(Exit::Success);
    }
    match &command {
        RolloutCommand::Status {
            watch: false,
            wait: false,
            ..
        } => {
            let r = rollouts.get().await?;
            let _ = write!(out, "{}", render::render_status(&r, Timestamp::now()));
        }
        RolloutCommand::Status { watch: true, .. } => rollouts.watch(out).await?,
        RolloutCommand::Status {
            wait: true,
            timeout,
            ..
        } => return rollouts.wait(*timeout, out).await,
        RolloutCommand::Pause { .. } => {
            rollouts.set_paused(true).await?;
            let _ = writeln!(out, "{}: paused (spec.paused=true)", rollouts.id());
        }
        RolloutCommand::Resume { .. } => {
            rollouts.set_paused(false).await?;
            let _ = writeln!(out, "{}: resumed (spec.paused=false)", rollouts.id());
        }
        RolloutCommand::Promote { .. }
        | RolloutCommand::Retry { .. }
        | RolloutCommand::Abort { .. } => unreachable!("requests are sent above"),
    }
    Ok(Exit::Success)
}

struct Rollouts {
    api: Api<Dedup2DRollout>,
    namespace: String,
    name: String,
}

/// What `--wait` prints a line for when it changes: the phase, the pause, and a Stalled reason.
fn progress(r: &Dedup2DRollout) -> (Option<Phase>, bool, Option<String>) {
    let s = r.status.as_ref();
    let stalled = s
        .and_then(|s| get_condition(&s.conditions, STALLED))
        .filter(|c| c.status == "True")
        .map(|c| c.reason.clone());
    (s.and_then(|s| s.phase), r.spec.paused, stalled)
}

impl Rollouts {
    fn id(&self) -> String {
        format!("Dedup2DRollout {}/{}", self.namespace, self.name)
    }

    fn err(&self, action: &'static str) -> impl FnOnce(kube::Error) -> CliError + '_ {
        move |e| api_error(action, &self.namespace, &self.name, e)
    }

    /// The rollout (not `get_opt`: it would read a missing CRD as a missing rollout).
    async fn get(&self) -> Result<Dedup2DRollout, CliError> {
        self.api.get(&self.name).await.map_err(self.err("reading"))
    }

    /// Server-side apply of `patch` with the CLI's field manager, forced. The rollout must exist
    /// (an apply would otherwise try to create it from the fragment).
    async fn apply(&self, action: &'static str, patch: serde_json::Value) -> Result<(), CliError> {
        self.get().await?;
        self.api
            .patch(
                &self.name,
                &PatchParams::apply(CLI_FIELD_MANAGER).force(),
                &Patch::Apply(patch),
            )
            .await
            .map_err(self.err(action))?;
        Ok(())
    }

    async fn set_paused(&self, paused: bool) -> Result<(), CliError> {
        self.apply(
            if paused { "pausing" } else { "resuming" },
            json!({
                "apiVersion": "dedup2d.io/v1alpha1", "kind": "Dedup2DRollout",
                "metadata": {"name": self.name, "namespace": self.namespace},
                "spec": {"paused": paused}
            }),
        )
        .await
    }

    async fn request(&self, verb: &str) -> Result<String, CliError> {
        let value = request_value(verb, &new_nonce());
        self.apply(
            "sending a request to",
            json!({
                "apiVersion": "dedup2d.io/v1alpha1", "kind": "Dedup2DRollout",
                "metadata": {
                    "name": self.name, "namespace": self.namespace,
                    "annotations": {REQUEST_ANNOTATION: value}
                }
            }),
        )
        .await?;
        Ok(value)
    }

    /// The rollout's changes as the API server sends them (a watch, re-established after a
    /// backoff when it breaks); `None` when the rollout was deleted. Gives up after
    /// [`WATCH_ATTEMPTS`] failures in a row.
    fn changes(&self) -> impl futures::Stream<Item = Result<Dedup2DRollout, CliError>> + Send + '_ {
        let mut failures = 0;
        watch_object(self.api.clone(), &self.name)
            .default_backoff()
            .filter_map(move |next| {
                let item = match next {
                    Ok(Some(r)) => {
                        failures = 0;
                        Some(Ok(r))
                    }
                    Ok(None) => Some(Err(CliError::Deleted {
                        namespace: self.namespace.clone(),
                        name: self.name.clone(),
                    })),
                    Err(e) => {
                        failures += 1;
                        (failures >= WATCH_ATTEMPTS).then(|| {
                            Err(CliError::Kube {
                                action: "watching",
                                namespace: self.namespace.clone(),
                                name: self.name.clone(),
                                reason: one_line(&e),
                            })
                        })
                    }
                };
                std::future::ready(item)
            })
    }

    /// Prints the view, then one line per phase (or message) change until a terminal phase.
    async fn watch(&self, out: &mut impl std::io::Write) -> Result<(), CliError> {
        let first = self.get().await?;
        let _ = write!(out, "{}", render::render_status(&first, Timestamp::now()));
        let _ = out.flush();
        let mut seen = observed(&first);
        if let Some(done) = self.finished(seen.0) {
            return done;
        }
        let mut stream = std::pin::pin!(self.changes());
        while let Some(next) = stream.next().await {
            let r = next?;
            let now = observed(&r);
            if now != seen {
                let _ = writeln!(
                    out,
                    "{}",
                    render::render_change(&r, seen.0, Timestamp::now())
                );
                let _ = out.flush();
                seen = now;
            }
            if let Some(done) = self.finished(seen.0) {
                return done;
            }
        }
        unreachable!("a watch stream does not end")
    }

    /// `status --wait`: one line now and one per change of phase, pause or Stalled reason, until
    /// [`wait::verdict`] gives an exit code or `timeout` passes; then a line saying how it ended.
    async fn wait(
        &self,
        timeout: Option<Duration>,
        out: &mut impl std::io::Write,
    ) -> Result<Exit, CliError> {
        let mut latest = self.get().await?;
        let _ = writeln!(
            out,
            "{}",
            render::render_change(&latest, None, Timestamp::now())
        );
        let _ = out.flush();
        let mut verdict = wait::verdict(&latest);
        if verdict.exit().is_none() && timeout != Some(Duration::ZERO) {
            let watching = async {
                let mut stream = std::pin::pin!(self.changes());
                while let Some(next) = stream.next().await {
                    let r = next?;
                    let (before, now) = (progress(&latest), progress(&r));
                    if before != now {
                        let line = render::render_change(&r, before.0, Timestamp::now());
                        let _ = writeln!(out, "{line}");
                        let _ = out.flush();
                    }
                    latest = r;
                    verdict = wait::verdict(&latest);
                    if verdict.exit().is_some() {
                        break;
                    }
                }
                Ok::<_, CliError>(())
            };
            match timeout {
                Some(t) => {
                    if let Ok(done) = tokio::time::timeout(t, watching).await {
                        done?;
                    }
                }
                None => watching.await?,
            }
        }
        let message = latest
            .status
            .as_ref()
            .and_then(|s| s.message.as_deref())
            .unwrap_or_default();
        let how = match &verdict {
            Verdict::Completed => "Completed".into(),
            Verdict::RolledBack => format!("RolledBack: {message}"),
            Verdict::Failed => format!("Failed: {message}"),
            Verdict::NeedsPerson(why) => format!("needs a person: {why}"),
            Verdict::Waiting => format!(
                "timed out after {} in phase {}: {message}",
                render::human(timeout.unwrap_or_default().as_secs() as i64),
                progress(&latest)
                    .0
                    .map(|p| p.to_string())
                    .unwrap_or_else(|| "<none>".into())
            ),
        };
        let _ = writeln!(out, "{}: {how}", self.id());
        Ok(verdict.exit().unwrap_or(Exit::Timeout))
    }

    /// `Some(result)` once the phase is terminal.
    fn finished(&self, phase: Option<Phase>) -> Option<Result<(), CliError>> {
        match phase {
            Some(Phase::Completed) => Some(Ok(())),
            Some(p) if p.is_terminal() => Some(Err(CliError::EndedIn {
                namespace: self.namespace.clone(),
                name: self.name.clone(),
                phase: p,
            })),
            _ => None,
        }
    }
}

fn observed(r: &Dedup2DRollout) -> (Option<Phase>, Option<String>) {
    let s = r.status.as_ref();
    (s.and_then(|s| s.phase), s.and_then(|s| s.message.clone()))
}

/// The CLI error for a failed call on rollout `namespace/name`. The API server names the object
/// in a 404 for it; a 404 without that (plain `404 page not found`) means the type is unknown.
fn api_error(action: &'static str, namespace: &str, name: &str, e: kube::Error) -> CliError {
    match &e {
        kube::Error::Api(s) if s.code == 404 => {
            if s.details.as_ref().is_some_and(|d| d.name == name) {
                CliError::NotFound {
                    namespace: namespace.into(),
                    name: name.into(),
                }
            } else {
                CliError::CrdMissing
            }
        }
        _ => CliError::Kube {
            action,
            namespace: namespace.into(),
            name: name.into(),
            reason: kube_reason(&e),
        },
    }
}

/// One line for a failed Kubernetes call: the API server's own message and reason, or the
/// transport error chain.
fn kube_reason(e: &kube::Error) -> String {
    match e {
        kube::Error::Api(s) if !s.message.is_empty() => match s.reason.as_str() {
            "" => format!("{} (HTTP {})", s.message, s.code),
            reason => format!("{} ({reason})", s.message),
        },
        kube::Error::Service(_) | kube::Error::HyperError(_) => {
            format!("cannot reach the Kubernetes API server: {}", one_line(e))
        }
        other => one_line(other),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::operator::plan::Request;
    use clap::Parser;

    #[derive(Parser, Debug)]
    struct TestCli {
        #[command(subcommand)]
        command: Top,
    }
    #[derive(Subcommand, Debug)]
    enum Top {
        Rollout(RolloutArgs),
    }

    fn parse(args: &[&str]) -> Result<RolloutCommand, clap::Error> {
        let argv = plugin_argv(args.iter().map(OsString::from));
        TestCli::try_parse_from(argv).map(|c| match c.command {
            Top::Rollout(a) => a.command,
        })
    }

    fn target(name: &str, ns: Option<&str>) -> Target {
        Target {
            name: name.into(),
            namespace: ns.map(Into::into),
        }
    }

    #[test]
    fn parses_every_verb() {
        assert_eq!(
            parse(&["dedup2d", "rollout", "status", "r", "-n", "prod", "--watch"]).unwrap(),
            RolloutCommand::Status {
                target: target("r", Some("prod")),
                watch: true,
                wait: false,
                timeout: None,
            }
        );
        assert_eq!(
            parse(&[
                "dedup2d",
                "rollout",
                "status",
                "r",
                "--wait",
                "--timeout",
                "1h30m"
            ])
            .unwrap(),
            RolloutCommand::Status {
                target: target("r", None),
                watch: false,
                wait: true,
                timeout: Some(Duration::from_secs(5400)),
            }
        );
        assert_eq!(
            parse(&["dedup2d", "rollout", "retry", "r"]).unwrap(),
            RolloutCommand::Retry {
                target: target("r", None)
            }
        );
        for bad in [
            &["dedup2d", "rollout", "status", "r", "--timeout", "10m"][..],
            &["dedup2d", "rollout", "status", "r", "--wait", "--watch"],
            &[
                "dedup2d",
                "rollout",
                "status",
                "r",
                "--wait",
                "--timeout",
                "10 minutes",
            ],
        ] {
            assert!(parse(bad).is_err(), "{bad:?}");
        }
        assert_eq!(
            parse(&["dedup2d", "rollout", "abort", "r", "--full"]).unwrap(),
            RolloutCommand::Abort {
                target: target("r", None),
                full: true
            }
        );
        assert_eq!(
            parse(&["dedup2d", "rollout", "pause", "--namespace", "x", "r"]).unwrap(),
            RolloutCommand::Pause {
                target: target("r", Some("x"))
            }
        );
        assert!(
            parse(&["dedup2d", "rollout", "promote"]).is_err(),
            "name is required"
        );
        assert!(parse(&["dedup2d", "rollout", "pause", "r", "--full"]).is_err());
    }

    #[test]
    fn as_a_kubectl_plugin_the_verbs_come_first() {
        for argv0 in [
            "kubectl-dedup2d",
            "/usr/local/bin/kubectl-dedup2d",
            "kubectl-dedup2d.exe",
        ] {
            assert_eq!(
                parse(&[argv0, "resume", "r", "-n", "prod"]).unwrap(),
                RolloutCommand::Resume {
                    target: target("r", Some("prod"))
                },
                "{argv0}"
            );
            assert_eq!(
                parse(&[argv0, "rollout", "promote", "r"]).unwrap(),
                RolloutCommand::Promote {
                    target: target("r", None)
                }
            );
        }
        // Not a plugin: arguments untouched.
        let same = plugin_argv(["dedup2d", "crd"].map(OsString::from));
        assert_eq!(same, ["dedup2d", "crd"].map(OsString::from));
        let same = plugin_argv(["/bin/kubectl-dedup2d-old", "x"].map(OsString::from));
        assert_eq!(same[1], "x");
    }

    #[test]
    fn requests_are_what_the_planner_parses_and_nonces_are_fresh() {
        for (verb, want) in [
            ("promote", Request::Promote),
            ("abort", Request::Abort),
            ("abort-full", Request::AbortFull),
            ("retry", Request::Retry),
        ] {
            let v = request_value(verb, &new_nonce());
            assert_eq!(Request::parse(&v), Some(want), "{v}");
        }
        let a = new_nonce();
        let b = new_nonce();
        assert_ne!(a, b);
        assert_eq!(a.len(), 12);
        assert!(!a.contains(':'));
    }

    #[test]
    fn each_request_command_sends_its_verb() {
        let t = || target("r", None);
        for (command, verb) in [
            (RolloutCommand::Promote { target: t() }, "promote"),
            (RolloutCommand::Retry { target: t() }, "retry"),
            (
                RolloutCommand::Abort {
                    target: t(),
                    full: false,
                },
                "abort",
            ),
            (
                RolloutCommand::Abort {
                    target: t(),
                    full: true,
                },
                "abort-full",
            ),
        ] {
            assert_eq!(command.request_verb(), Some(verb));
        }
        assert_eq!(RolloutCommand::Pause { target: t() }.request_verb(), None);
    }

    #[test]
    fn a_404_is_the_rollout_or_the_whole_type_missing_and_other_errors_keep_the_reason() {
        use kube::core::Status;
        let api = |s: Status| kube::Error::Api(s.boxed());
        // The API server's answer for a missing object, as it sends it.
        let object_404: Status = serde_json::from_str(
            r#"{"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure",
                "message":"dedup2drollouts.dedup2d.io \"fleet\" not found","reason":"NotFound",
                "details":{"name":"fleet","group":"dedup2d.io","kind":"dedup2drollouts"},"code":404}"#,
        )
        .unwrap();
        assert!(matches!(
            api_error("reading", "prod", "fleet", api(object_404)),
            CliError::NotFound { .. }
        ));
        // What kube makes of the API server's plain-text answer for an unknown resource type.
        let type_404 =
            Status::failure("404 page not found", "Failed to parse error data").with_code(404);
        let e = api_error("reading", "prod", "fleet", api(type_404));
        assert!(matches!(e, CliError::CrdMissing), "{e}");
        assert!(e.to_string().contains("dedup2d crd | kubectl apply -f -"));

        let forbidden = Status::failure(
            r#"dedup2drollouts.dedup2d.io "fleet" is forbidden: User "bob" cannot patch resource"#,
            "Forbidden",
        )
        .with_code(403);
        assert_eq!(
            api_error("pausing", "prod", "fleet", api(forbidden)).to_string(),
            r#"pausing rollout "fleet" in namespace "prod": dedup2drollouts.dedup2d.io "fleet" is forbidden: User "bob" cannot patch resource (Forbidden)"#
        );
    }

    #[test]
    fn not_found_message_names_the_rollout() {
        let e = CliError::NotFound {
            namespace: "prod".into(),
            name: "fleet".into(),
        };
        assert_eq!(
            e.to_string(),
            r#"rollout "fleet" not found in namespace "prod""#
        );
    }
}
