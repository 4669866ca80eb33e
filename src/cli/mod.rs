//! `dedup2d rollout ...`: the command line for people. `status [--watch]` shows a rollout, `pause` and
//! `resume` server-side apply `spec.paused` (field manager `dedup2d-cli`, forced: it is a person's
//! intent), `promote` and `abort [--full]` write a one-shot request `<verb>:<nonce>` into the
//! `dedup2d.io/request` annotation. Installed as `kubectl-dedup2d` it is a kubectl plugin
//! (`kubectl dedup2d status NAME`). Rendering lives in [`render`]; this module is the thin IO.

pub mod render;

use std::ffi::OsString;
use std::path::Path;

use clap::{Args, Subcommand};
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Patch, PatchParams};
use kube::runtime::watcher::{self, watch_object};
use kube::{Api, Client};
use serde_json::json;

use crate::operator::crd::{Dedup2DRollout, Phase, REQUEST_ANNOTATION};

/// Field manager of every write the CLI does.
pub const CLI_FIELD_MANAGER: &str = "dedup2d-cli";

/// `dedup2d rollout` arguments.
#[derive(Args, Debug, Clone)]
pub struct RolloutArgs {
    #[command(subcommand)]
    pub command: RolloutCommand,
}

/// The rollout verbs.
#[derive(Subcommand, Debug, Clone, PartialEq, Eq)]
pub enum RolloutCommand {
    /// Show phase, workers, dual-write, drain, conditions and requests of a rollout.
    Status {
        #[command(flatten)]
        target: Target,
        /// Print phase changes until the rollout reaches Completed, RolledBack or Failed
        /// (exit status 0 only for Completed).
        #[arg(short, long)]
        watch: bool,
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
            | RolloutCommand::Abort { target, .. } => target,
        }
    }
}

/// Errors of the CLI, each naming the rollout it concerns.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error("cannot reach Kubernetes (check KUBECONFIG and the current context): {0}")]
    Connect(#[source] kube::Error),
    #[error("Dedup2DRollout {namespace}/{name} not found")]
    NotFound { namespace: String, name: String },
    #[error("{action} Dedup2DRollout {namespace}/{name}: {source}")]
    Kube {
        action: &'static str,
        namespace: String,
        name: String,
        #[source]
        source: kube::Error,
    },
    #[error("Dedup2DRollout {namespace}/{name} ended in phase {phase}")]
    EndedIn {
        namespace: String,
        name: String,
        phase: Phase,
    },
    #[error("watching Dedup2DRollout {namespace}/{name}: {source}")]
    Watch {
        namespace: String,
        name: String,
        #[source]
        source: watcher::Error,
    },
    #[error("the watch of Dedup2DRollout {namespace}/{name} ended unexpectedly")]
    WatchEnded { namespace: String, name: String },
    #[error("Dedup2DRollout {namespace}/{name} was deleted while watching")]
    Deleted { namespace: String, name: String },
}

/// The request value a command writes into `dedup2d.io/request`: `<verb>:<nonce>`.
pub fn request_value(verb: &str, nonce: &str) -> String {
    format!("{verb}:{nonce}")
}

/// A fresh nonce: a repeated command is a new request, a re-applied manifest is not.
pub fn new_nonce() -> String {
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

/// Runs one rollout command, printing to stdout.
pub async fn run(args: RolloutArgs) -> Result<(), CliError> {
    let client = Client::try_default().await.map_err(CliError::Connect)?;
    let mut stdout = std::io::stdout();
    run_with(client, args.command, &mut stdout).await
}

/// [`run`] with a given client and output.
pub async fn run_with(
    client: Client,
    command: RolloutCommand,
    out: &mut impl std::io::Write,
) -> Result<(), CliError> {
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
    match &command {
        RolloutCommand::Status { watch: false, .. } => {
            let r = rollouts.get().await?;
            let _ = write!(out, "{}", render::render_status(&r, Timestamp::now()));
        }
        RolloutCommand::Status { watch: true, .. } => rollouts.watch(out).await?,
        RolloutCommand::Pause { .. } => {
            rollouts.set_paused(true).await?;
            let _ = writeln!(out, "{}: paused (spec.paused=true)", rollouts.id());
        }
        RolloutCommand::Resume { .. } => {
            rollouts.set_paused(false).await?;
            let _ = writeln!(out, "{}: resumed (spec.paused=false)", rollouts.id());
        }
        RolloutCommand::Promote { .. } => {
            let v = rollouts.request("promote").await?;
            let _ = writeln!(out, "{}: requested {REQUEST_ANNOTATION}={v}", rollouts.id());
        }
        RolloutCommand::Abort { full, .. } => {
            let verb = if *full { "abort-full" } else { "abort" };
            let v = rollouts.request(verb).await?;
            let _ = writeln!(out, "{}: requested {REQUEST_ANNOTATION}={v}", rollouts.id());
        }
    }
    Ok(())
}

struct Rollouts {
    api: Api<Dedup2DRollout>,
    namespace: String,
    name: String,
}

impl Rollouts {
    fn id(&self) -> String {
        format!("Dedup2DRollout {}/{}", self.namespace, self.name)
    }

    fn err(&self, action: &'static str) -> impl FnOnce(kube::Error) -> CliError + '_ {
        move |source| match &source {
            kube::Error::Api(s) if s.code == 404 => self.not_found(),
            _ => CliError::Kube {
                action,
                namespace: self.namespace.clone(),
                name: self.name.clone(),
                source,
            },
        }
    }

    fn not_found(&self) -> CliError {
        CliError::NotFound {
            namespace: self.namespace.clone(),
            name: self.name.clone(),
        }
    }

    async fn get(&self) -> Result<Dedup2DRollout, CliError> {
        self.api
            .get_opt(&self.name)
            .await
            .map_err(self.err("reading"))?
            .ok_or_else(|| self.not_found())
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

    /// Prints the view, then one line per phase (or message) change until a terminal phase.
    async fn watch(&self, out: &mut impl std::io::Write) -> Result<(), CliError> {
        let first = self.get().await?;
        let _ = write!(out, "{}", render::render_status(&first, Timestamp::now()));
        let _ = out.flush();
        let mut seen = observed(&first);
        if let Some(done) = self.finished(seen.0) {
            return done;
        }
        let mut stream = watch_object(self.api.clone(), &self.name)
            .map_err(|source| CliError::Watch {
                namespace: self.namespace.clone(),
                name: self.name.clone(),
                source,
            })
            .boxed();
        while let Some(next) = stream.next().await {
            let Some(r) = next? else {
                return Err(CliError::Deleted {
                    namespace: self.namespace.clone(),
                    name: self.name.clone(),
                });
            };
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
        Err(CliError::WatchEnded {
            namespace: self.namespace.clone(),
            name: self.name.clone(),
        })
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
                watch: true
            }
        );
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
    fn not_found_message_names_the_rollout() {
        let e = CliError::NotFound {
            namespace: "prod".into(),
            name: "fleet".into(),
        };
        assert_eq!(e.to_string(), "Dedup2DRollout prod/fleet not found");
    }
}
