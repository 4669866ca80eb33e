//! `dedup2d`: one binary, one subcommand per role. Wiring only; the work lives in the library.

use std::error::Error as _;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::LazyLock;

use clap::{CommandFactory, Parser, Subcommand};
use dedup2d::cli::exit::{one_line, Exit};

/// `--version` text: the crate version, plus the git revision when the build set
/// `DEDUP2D_GIT_REVISION` (the image builds do).
static VERSION: LazyLock<String> = LazyLock::new(|| match option_env!("DEDUP2D_GIT_REVISION") {
    Some(revision) if !revision.is_empty() => {
        format!("{} ({revision})", env!("CARGO_PKG_VERSION"))
    }
    _ => env!("CARGO_PKG_VERSION").to_owned(),
});

#[derive(Parser)]
#[command(
    name = "dedup2d",
    version = VERSION.as_str(),
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
        /// Seconds a client has to send the request head (slow clients are cut off).
        #[arg(long, env = "DEDUP2D_API_HEADER_READ_TIMEOUT_SECONDS", default_value_t = dedup2d::api::limits::DEFAULT_HEADER_READ_TIMEOUT_SECONDS)]
        header_read_timeout_seconds: u64,
        /// Seconds from the request head to the answer, the body upload included (then 408).
        #[arg(long, env = "DEDUP2D_API_REQUEST_TIMEOUT_SECONDS", default_value_t = dedup2d::api::limits::DEFAULT_REQUEST_TIMEOUT_SECONDS)]
        request_timeout_seconds: u64,
        /// Connections served at once (more wait in the listen backlog).
        #[arg(long, env = "DEDUP2D_API_MAX_CONNECTIONS", default_value_t = dedup2d::api::limits::DEFAULT_MAX_CONNECTIONS)]
        max_connections: usize,
    },
    /// Run the dedup2d job worker (reads file_ref and file_bytes_b64 payloads).
    Worker,
    /// Delete one tenant's dedup indexes (content hash, DXF geometry, raster) in the Redis of
    /// DEDUP2D_REDIS_URL / DEDUP2D_REDIS_KEY_PREFIX.
    DeleteIndex {
        /// The tenant id (16 hex characters of sha256 of its API key).
        #[arg(long)]
        tenant: String,
    },
    /// Show and steer Dedup2DRollouts: status [--watch | --wait], pause, resume, promote, retry,
    /// abort [--full].
    /// Also a kubectl plugin when installed as `kubectl-dedup2d`.
    Rollout(dedup2d::cli::RolloutArgs),
    /// Run the controller that reconciles Dedup2DRollout resources (KUBECONFIG or in-cluster config;
    /// logs as DEDUP2D_LOG_FORMAT / RUST_LOG say).
    Operator {
        /// Only reconcile rollouts (and watch targets) in this namespace; default: all namespaces.
        #[arg(long, env = "DEDUP2D_OPERATOR_NAMESPACE")]
        namespace: Option<String>,
        /// Namespace of the leader-election Lease; default: --namespace, else POD_NAMESPACE, else `default`.
        #[arg(long, env = "DEDUP2D_LEASE_NAMESPACE")]
        lease_namespace: Option<String>,
        /// Name of the leader-election Lease (replicas sharing it: only one acts).
        #[arg(long, env = "DEDUP2D_LEASE_NAME", default_value = "dedup2d-operator")]
        lease_name: String,
        /// Lease duration in seconds: a standby takes over at most this long after the leader vanished.
        #[arg(long, env = "DEDUP2D_LEASE_DURATION", default_value_t = dedup2d::operator::leader::DEFAULT_LEASE_DURATION.as_secs())]
        lease_duration: u64,
        /// Seconds before expiry at which the leader renews (0 < grace < duration).
        #[arg(long, env = "DEDUP2D_LEASE_GRACE", default_value_t = dedup2d::operator::leader::DEFAULT_RENEW_GRACE.as_secs())]
        lease_grace: u64,
        /// Address for /metrics, /healthz and /readyz.
        #[arg(
            long,
            env = "DEDUP2D_OPERATOR_METRICS_ADDR",
            default_value = "0.0.0.0:9100"
        )]
        metrics_addr: SocketAddr,
        /// At most this many rollouts are reconciled at once.
        #[arg(long, env = "DEDUP2D_MAX_CONCURRENT_RECONCILES", default_value_t = dedup2d::operator::controller::DEFAULT_MAX_CONCURRENT_RECONCILES, value_parser = clap::value_parser!(u16).range(1..))]
        max_concurrent_reconciles: u16,
    },
}

/// Parses the arguments, runs the subcommand, and reports an error as one line `error: ...` on
/// stderr (never anyhow's debug form, which adds a backtrace when RUST_BACKTRACE is set).
fn main() -> ExitCode {
    // As `kubectl-dedup2d`, the arguments are `rollout ...` without the word `rollout`.
    let argv = dedup2d::cli::plugin_argv(std::env::args_os());
    let command = match Cli::try_parse_from(argv) {
        Ok(cli) => cli.command,
        Err(e) => match env_var_error(&e) {
            Some(line) => {
                eprintln!("error: {line}");
                return ExitCode::from(2);
            }
            None => e.exit(),
        },
    };
    // At least two worker threads, so one busy task (a reconcile burst) never stalls the others
    // (the operator's Lease renewal) on a one-core machine.
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get().max(2));
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads)
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return Exit::Error.into();
        }
    };
    match runtime.block_on(run(command)) {
        Ok(exit) => exit.into(),
        Err(e) => {
            eprintln!("error: {}", one_line(e.as_ref()));
            Exit::Error.into()
        }
    }
}

async fn run(command: Command) -> anyhow::Result<Exit> {
    // kube (aws-lc-rs) and object_store both bring rustls; pick the provider once.
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    match command {
        Command::Crd => print!("{}", dedup2d::operator::crd::crd_yaml()),
        Command::Config => {
            let mut config = dedup2d::contract::config::Config::from_env()?;
            config.redis_url = dedup2d::contract::redact::redact_url(&config.redis_url);
            println!("{config:#?}");
        }
        Command::Api {
            listen,
            max_upload_bytes,
            header_read_timeout_seconds,
            request_timeout_seconds,
            max_connections,
        } => {
            dedup2d::telemetry::init_tracing();
            dedup2d::api::run(dedup2d::api::ApiSettings {
                listen,
                max_upload_bytes,
                limits: dedup2d::api::limits::ConnectionLimits {
                    header_read_timeout: std::time::Duration::from_secs(
                        header_read_timeout_seconds.max(1),
                    ),
                    request_timeout: std::time::Duration::from_secs(request_timeout_seconds.max(1)),
                    max_connections,
                },
            })
            .await?;
        }
        Command::Worker => worker().await?,
        Command::DeleteIndex { tenant } => delete_index(&tenant).await?,
        Command::Rollout(args) => return Ok(dedup2d::cli::run(args).await?),
        Command::Operator {
            namespace,
            lease_namespace,
            lease_name,
            lease_duration,
            lease_grace,
            metrics_addr,
            max_concurrent_reconciles,
        } => {
            use dedup2d::operator::serve;
            dedup2d::telemetry::init_tracing();
            let client = dedup2d::cli::connect().await?;
            let settings = serve::OperatorSettings {
                lease_namespace: lease_namespace
                    .unwrap_or_else(|| serve::default_lease_namespace(namespace.as_deref())),
                namespace,
                lease_name,
                identity: serve::default_identity(),
                lease_duration: std::time::Duration::from_secs(lease_duration),
                lease_grace: std::time::Duration::from_secs(lease_grace),
                metrics_addr,
                max_concurrent_reconciles,
            };
            serve::run(client, settings).await?;
        }
    }
    Ok(Exit::Success)
}

/// When clap rejects a value that came from an environment variable (`env = ...` on the flag),
/// one line naming the variable: clap itself only names the flag.
fn env_var_error(e: &clap::Error) -> Option<String> {
    use clap::error::{ContextKind, ContextValue, ErrorKind};
    if !matches!(
        e.kind(),
        ErrorKind::ValueValidation | ErrorKind::InvalidValue
    ) {
        return None;
    }
    let text = |kind| match e.get(kind) {
        Some(ContextValue::String(s)) => Some(s.clone()),
        _ => None,
    };
    let flag = text(ContextKind::InvalidArg)?;
    let value = text(ContextKind::InvalidValue)?;
    let root = Cli::command();
    let arg = root
        .get_subcommands()
        .flat_map(|c| c.get_arguments())
        .find(|a| {
            a.get_long()
                .is_some_and(|l| flag.starts_with(&format!("--{l}")))
        })?;
    let var = arg.get_env()?.to_string_lossy().into_owned();
    let long = format!("--{}", arg.get_long()?);
    // Only when the variable is what clap read (no flag on the command line overriding it).
    if std::env::var(&var).ok()? != value
        || std::env::args_os().any(|a| a.to_string_lossy().starts_with(&long))
    {
        return None;
    }
    let why = e.source().map(|s| format!(": {s}")).unwrap_or_default();
    Some(format!("{var}={value:?} is not valid for {flag}{why}"))
}

/// `dedup2d delete-index --tenant T`: one UNLINK of the tenant's fixed index keys.
async fn delete_index(tenant: &str) -> anyhow::Result<()> {
    use anyhow::Context as _;
    use dedup2d::contract::redact::redact_url;
    if tenant.is_empty()
        || !tenant
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    {
        anyhow::bail!("--tenant {tenant:?} is not a tenant id (letters, digits, - and _)");
    }
    let config = dedup2d::contract::config::Config::from_env()?;
    let url = redact_url(&config.redis_url);
    let mut conn = redis::Client::open(config.redis_url.as_str())
        .with_context(|| format!("invalid Redis URL {url}"))?
        .get_connection_manager()
        .await
        .with_context(|| format!("cannot connect to Redis at {url}"))?;
    let n = dedup2d::worker::engine::lsh_index::delete_tenant(&mut conn, &config.keys(), tenant)
        .await
        .with_context(|| format!("cannot delete the index of tenant {tenant}"))?;
    println!("deleted {n} index keys of tenant {tenant}");
    Ok(())
}

/// `dedup2d worker`: configuration errors end the process before anything starts;
/// SIGTERM/SIGINT start a graceful shutdown (`dedup2d::shutdown`).
async fn worker() -> anyhow::Result<()> {
    dedup2d::telemetry::init_tracing();
    let settings = dedup2d::worker::WorkerSettings::from_env()?;
    dedup2d::worker::run(settings, dedup2d::shutdown::cancelled_on_signal()).await
}
