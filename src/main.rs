//! `dedup2d`: one binary, one subcommand per role. Wiring only; the work lives in the library.

use std::net::SocketAddr;

use clap::{Parser, Subcommand, ValueEnum};

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
    /// Run the controller that reconciles Dedup2DRollout resources (uses KUBECONFIG or the in-cluster config).
    Operator {
        /// Only reconcile rollouts (and watch targets) in this namespace; default: all namespaces.
        #[arg(long, env = "DEDUP2D_OPERATOR_NAMESPACE")]
        namespace: Option<String>,
        /// Log format; `auto` is JSON unless stderr is a terminal. Filter with RUST_LOG.
        #[arg(long, value_enum, default_value_t = LogFormat::Auto, env = "DEDUP2D_LOG_FORMAT")]
        log_format: LogFormat,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Auto,
    Json,
    Text,
}

fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

/// Logs to stderr: JSON in clusters, human-readable on a terminal.
// TODO(telemetry): fold into src/telemetry.rs once it lands on main.
fn init_logging(format: LogFormat) {
    use std::io::IsTerminal;
    let json = match format {
        LogFormat::Json => true,
        LogFormat::Text => false,
        LogFormat::Auto => !std::io::stderr().is_terminal(),
    };
    if !json {
        return init_tracing();
    }
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .json()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    // kube (aws-lc-rs) and object_store both bring rustls; pick the provider once.
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    match Cli::parse().command {
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
        Command::Operator {
            namespace,
            log_format,
        } => {
            init_logging(log_format);
            let client = kube::Client::try_default().await?;
            dedup2d::operator::controller::run(client, namespace).await?;
        }
    }
    Ok(())
}
