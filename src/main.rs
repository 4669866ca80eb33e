//! `dedup2d`: one binary, one subcommand per role. Wiring only; the work lives in the library.

use std::net::SocketAddr;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "dedup2d",
    version,
    about = "dedup2d rollout operator, worker and API"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Print the Dedup2DRollout CustomResourceDefinition as YAML.
    Crd,
    /// Print the effective dedup2d configuration read from the environment (the contract's rules).
    Config,
    /// Run the dedup2d HTTP API (dual-writes according to DEDUP2D_JOB_PAYLOAD_*).
    Api {
        /// Address to listen on.
        #[arg(long, env = "DEDUP2D_API_LISTEN", default_value = "0.0.0.0:8000")]
        listen: SocketAddr,
        /// Largest accepted upload in bytes (larger ones get 413).
        #[arg(long, env = "DEDUP2D_API_MAX_UPLOAD_BYTES", default_value_t = dedup2d::api::DEFAULT_MAX_UPLOAD_BYTES)]
        max_upload_bytes: u64,
    },
    /// Run the dedup2d job worker (reads file_ref and file_bytes_b64 payloads).
    Worker,
    /// Show and steer Dedup2DRollouts: status [--watch], pause, resume, promote, abort [--full].
    /// Also a kubectl plugin when installed as `kubectl-dedup2d`.
    Rollout(dedup2d::cli::RolloutArgs),
    /// Run the controller that reconciles Dedup2DRollout resources (KUBECONFIG or in-cluster config;
    /// logs as DEDUP2D_LOG_FORMAT / RUST_LOG say).
    Operator {
        /// Only reconcile rollouts (and watch targets) in this namespace; default: all namespaces.
        #[arg(long, env = "DEDUP2D_OPERATOR_NAMESPACE")]
        namespace: Option<String>,
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    // kube (aws-lc-rs) and object_store both bring rustls; pick the provider once.
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    // As `kubectl-dedup2d`, the arguments are `rollout ...` without the word `rollout`.
    match Cli::parse_from(dedup2d::cli::plugin_argv(std::env::args_os())).command {
        Command::Crd => print!("{}", dedup2d::operator::crd::crd_yaml()),
        Command::Config => {
            let config = dedup2d::contract::config::Config::from_env()?;
            println!("{config:#?}");
        }
        Command::Api {
            listen,
            max_upload_bytes,
        } => {
            dedup2d::telemetry::init_tracing();
            dedup2d::api::run(dedup2d::api::ApiSettings {
                listen,
                max_upload_bytes,
            })
            .await?;
        }
        Command::Worker => worker().await?,
        Command::Rollout(args) => dedup2d::cli::run(args).await?,
        Command::Operator { namespace } => {
            dedup2d::telemetry::init_tracing();
            let client = kube::Client::try_default().await?;
            dedup2d::operator::controller::run(client, namespace).await?;
        }
    }
    Ok(())
}

/// `dedup2d worker`: configuration errors end the process before anything starts;
/// SIGTERM/SIGINT start a graceful shutdown.
async fn worker() -> anyhow::Result<()> {
    dedup2d::telemetry::init_tracing();
    let settings = dedup2d::worker::WorkerSettings::from_env()?;
    let stop = tokio_util::sync::CancellationToken::new();
    let signal_stop = stop.clone();
    tokio::spawn(async move {
        use tokio::signal::unix::{signal, SignalKind};
        let (Ok(mut term), Ok(mut int)) = (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) else {
            tracing::error!("cannot install signal handlers");
            return;
        };
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM: shutting down"),
            _ = int.recv() => tracing::info!("SIGINT: shutting down"),
        }
        signal_stop.cancel();
    });
    dedup2d::worker::run(settings, stop).await
}
