//! `aegisctl`: administers an Aegis ledger cluster and checks what it serves. Every checkpoint,
//! proof and history it reports has been verified here, against keys the user gave, with the
//! `mmr` crate: it trusts nothing the server says without the math. The binary is a thin shell
//! over [`run`].

pub mod bundle;
pub mod cli;
pub mod client;
pub mod commands;
pub mod failure;
pub mod progress;
pub mod record;
pub mod report;
pub mod trust;

use crate::cli::{Cli, Command};
use crate::failure::Failure;
use crate::report::Report;

/// Runs one command line.
pub async fn run(cli: Cli) -> Result<Report, Failure> {
    let cluster = client::Cluster::new(&cli.connection)?;
    match cli.command {
        Command::Status => commands::admin::status(&cluster).await,
        Command::Init(args) => commands::admin::init(&cluster, &args).await,
        Command::AddNode(args) => commands::admin::add_node(&cluster, &args).await,
        Command::RemoveNode(args) => commands::admin::remove_node(&cluster, &args).await,
        Command::Pin(args) => commands::admin::pin(&cluster, &args).await,
        Command::Checkpoint(args) => commands::checkpoint::run(&cluster, &args.trust.load()?).await,
        Command::Prove(args) => commands::prove::run(&cluster, &args).await,
        Command::Verify(args) => commands::prove::verify_bundle(&args),
        Command::Monitor(args) => commands::monitor::run(&cluster, &args, cli.json).await,
        Command::Audit(args) => commands::audit::run(&cluster, &args, !cli.json).await,
        Command::Keygen(args) => commands::keys::keygen(&args),
        Command::HashKey(args) => commands::keys::hash_key(&args),
    }
}
