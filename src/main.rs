use clap::{Parser, Subcommand};

/// dedup2d: rollout operator, worker and API for the file_ref payload migration.
#[derive(Parser)]
#[command(name = "dedup2d", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Print the Dedup2DRollout CustomResourceDefinition as YAML.
    Crd,
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Crd => print!("{}", dedup2d::operator::crd::crd_yaml()),
    }
    Ok(())
}
