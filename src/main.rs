//! `dedup2d`: one binary, one subcommand per role. Wiring only; the work lives in the library.

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
    /// Run the dedup2d job worker (reads file_ref and file_bytes_b64 payloads).
    Worker,
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Crd => print!("{}", dedup2d::operator::crd::crd_yaml()),
        Command::Config => {
            let config = dedup2d::contract::config::Config::from_env()?;
            println!("{config:#?}");
        }
        Command::Worker => worker()?,
    }
    Ok(())
}

/// `dedup2d worker`: configuration errors end the process before anything starts;
/// SIGTERM/SIGINT start a graceful shutdown.
fn worker() -> anyhow::Result<()> {
    dedup2d::telemetry::init_tracing();
    // One TLS provider for reqwest/object_store/kube (see ecosystem notes); an error only means
    // one is already installed.
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let settings = dedup2d::worker::WorkerSettings::from_env()?;
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(async move {
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
    })?;
    Ok(())
}
