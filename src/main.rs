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
    /// Show and steer Dedup2DRollouts: status [--watch], pause, resume, promote, abort [--full].
    /// Also a kubectl plugin when installed as `kubectl-dedup2d`.
    Rollout(dedup2d::cli::RolloutArgs),
}

fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
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
            init_tracing();
            dedup2d::api::run(dedup2d::api::ApiSettings {
                listen,
                max_upload_bytes,
            })
            .await?;
        }
        Command::Rollout(args) => dedup2d::cli::run(args).await?,
    }
    Ok(())
}
