//! `dedup2d`: one binary, one subcommand per role. Wiring only; the work lives in the library.

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

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Crd => print!("{}", dedup2d::operator::crd::crd_yaml()),
        Command::Config => {
            let config = dedup2d::contract::config::Config::from_env()?;
            println!("{config:#?}");
        }
        Command::Operator {
            namespace,
            log_format,
        } => {
            init_logging(log_format);
            // kube and object_store both bring rustls providers; pick one before any client exists.
            let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
            tokio::runtime::Runtime::new()?.block_on(async {
                let client = kube::Client::try_default().await?;
                dedup2d::operator::controller::run(client, namespace).await?;
                anyhow::Ok(())
            })?;
        }
    }
    Ok(())
}

/// Logs to stderr: JSON in clusters, human-readable on a terminal.
// TODO(telemetry): move to src/telemetry.rs once it lands on main.
fn init_logging(format: LogFormat) {
    use std::io::IsTerminal;
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let json = match format {
        LogFormat::Json => true,
        LogFormat::Text => false,
        LogFormat::Auto => !std::io::stderr().is_terminal(),
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}
