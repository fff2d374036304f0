//! The command line.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "aegisctl",
    version,
    about = "Administer an Aegis ledger cluster and verify its checkpoints, proofs and history.",
    after_help = "Exit status: 0 success; 1 the command could not be carried out (unreachable node, \
                  server error, bad input); 2 usage error; 3 verification failed (a signature, proof, \
                  bundle or recomputed tree does not check out); 4 the monitor found an inconsistency \
                  and wrote an evidence file."
)]
pub struct Cli {
    #[command(flatten)]
    pub connection: Connection,
    /// Print one JSON object on stdout instead of text (errors too, with a non-zero status).
    #[arg(long, global = true)]
    pub json: bool,
    #[command(subcommand)]
    pub command: Command,
}

/// Where the ledger is and how to talk to it.
#[derive(Debug, Args)]
pub struct Connection {
    /// A ledger node's client address (host:port or http://host:port); repeat or separate with
    /// commas. Reads go to the first that answers.
    #[arg(
        long = "ledger",
        global = true,
        env = "AEGIS_LEDGER_ENDPOINTS",
        value_delimiter = ',',
        default_value = "127.0.0.1:7400"
    )]
    pub ledger: Vec<String>,
    /// File holding the Admin service's bearer token (nodes without one admit loopback callers).
    #[arg(long, global = true, env = "AEGIS_ADMIN_TOKEN_FILE", value_name = "PATH")]
    pub admin_token_file: Option<PathBuf>,
    /// How long one call to a node may take.
    #[arg(long, global = true, default_value_t = 10_000, value_name = "MS")]
    pub timeout_ms: u64,
}

/// What to trust: the log's origin and the verifier keys of its nodes, "at least k of these".
#[derive(Debug, Args)]
pub struct TrustArgs {
    /// Trust file (TOML: origin, keys, quorum), as `aegisctl pin` writes it. Flags override it.
    #[arg(long, env = "AEGIS_TRUST_FILE", value_name = "PATH")]
    pub trust: Option<PathBuf>,
    /// The log's origin, the first line of its checkpoints.
    #[arg(long, env = "AEGIS_ORIGIN")]
    pub origin: Option<String>,
    /// A verifier key (name+keyid+base64) of a ledger node; repeat for each node.
    #[arg(long = "key", env = "AEGIS_VERIFIER_KEYS", value_delimiter = ',', value_name = "VERIFIER_KEY")]
    pub keys: Vec<String>,
    /// How many of the keys must have signed [default: a majority of them].
    #[arg(long, value_name = "K")]
    pub quorum: Option<usize>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Each node's view of the cluster: role, term, leader, sizes, replication lag, health.
    Status,
    /// Joins fresh nodes into a new cluster (asks each for its identity, then initialises).
    Init(InitArgs),
    /// Adds a running node to the cluster (as a learner, then a voter once caught up).
    AddNode(AddNodeArgs),
    /// Removes a node from the cluster's membership.
    RemoveNode(RemoveNodeArgs),
    /// Writes a trust file from the cluster's own report of its origin and keys.
    Pin(PinArgs),
    /// Fetches the latest published checkpoint and verifies its signatures.
    Checkpoint(CheckpointArgs),
    /// Fetches a record and its inclusion proof and verifies them against a checkpoint.
    Prove(ProveArgs),
    /// Verifies a proof bundle written by `prove --out`, offline.
    Verify(VerifyArgs),
    /// Checks that each new checkpoint extends the trusted one; writes evidence if not.
    Monitor(MonitorArgs),
    /// Downloads every entry, recomputes the tree and compares it with the checkpoint.
    Audit(AuditArgs),
    /// Creates an Ed25519 checkpoint signing key for a ledger node.
    Keygen(KeygenArgs),
    /// Prints the SHA-256 of a gateway API key (read from stdin), for `key_sha256`.
    HashKey(HashKeyArgs),
}

#[derive(Debug, Args)]
pub struct InitArgs {
    /// Client addresses of every initial voter, the first receiving the Init call.
    #[arg(long, value_delimiter = ',', required = true, value_name = "HOST:PORT")]
    pub nodes: Vec<String>,
}

#[derive(Debug, Args)]
pub struct AddNodeArgs {
    /// The new node's client address; it must be running and never have been a member.
    #[arg(long, value_name = "HOST:PORT")]
    pub node: String,
    /// Keep it a learner: it replicates and serves reads but does not vote.
    #[arg(long)]
    pub learner: bool,
}

#[derive(Debug, Args)]
pub struct RemoveNodeArgs {
    /// The Raft id of the node to remove. Never wipe a removed node and add it back under the
    /// same id: give it a new one.
    #[arg(long, value_name = "ID")]
    pub node_id: u64,
}

#[derive(Debug, Args)]
pub struct PinArgs {
    /// Where to write the trust file (refuses to overwrite one).
    #[arg(long, value_name = "PATH")]
    pub out: PathBuf,
    /// Signatures required [default: a majority of the voters].
    #[arg(long, value_name = "K")]
    pub quorum: Option<usize>,
}

#[derive(Debug, Args)]
pub struct CheckpointArgs {
    #[command(flatten)]
    pub trust: TrustArgs,
}

#[derive(Debug, Args)]
#[command(group = clap::ArgGroup::new("which").required(true).args(["record_id", "index"]))]
pub struct ProveArgs {
    /// The record id (as in the gateway's x-aegis-record-id header).
    pub record_id: Option<String>,
    /// Prove the leaf at this index instead.
    #[arg(long, value_name = "N")]
    pub index: Option<u64>,
    /// Also write a self-contained proof bundle here, for `aegisctl verify`.
    #[arg(long, value_name = "FILE")]
    pub out: Option<PathBuf>,
    /// How long to wait for the record to be covered by a published checkpoint.
    #[arg(long, default_value_t = 10_000, value_name = "MS")]
    pub wait_ms: u64,
    #[command(flatten)]
    pub trust: TrustArgs,
}

#[derive(Debug, Args)]
pub struct VerifyArgs {
    /// A proof bundle written by `aegisctl prove --out`.
    pub bundle: PathBuf,
    #[command(flatten)]
    pub trust: TrustArgs,
}

#[derive(Debug, Args)]
pub struct MonitorArgs {
    /// Directory of the trusted state, one file per (origin, keys, quorum)
    /// [default: $XDG_STATE_HOME/aegisctl or ~/.local/state/aegisctl].
    #[arg(long, env = "AEGISCTL_STATE_DIR", value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
    /// Where evidence files go [default: the state directory].
    #[arg(long, value_name = "DIR")]
    pub evidence_dir: Option<PathBuf>,
    /// Keep checking, every --interval-ms, until an inconsistency or Ctrl-C.
    #[arg(long)]
    pub follow: bool,
    /// Time between checks with --follow.
    #[arg(long, default_value_t = 5_000, value_name = "MS")]
    pub interval_ms: u64,
    #[command(flatten)]
    pub trust: TrustArgs,
}

#[derive(Debug, Args)]
pub struct AuditArgs {
    /// Entries asked for per GetEntries call (at most the node's entries_per_request_max).
    #[arg(long, default_value_t = 10_000, value_name = "N")]
    pub page: u64,
    #[command(flatten)]
    pub trust: TrustArgs,
}

#[derive(Debug, Args)]
pub struct KeygenArgs {
    /// The key's name, as it appears in signatures (no spaces, no '+'), e.g. aegis-ledger-4.
    #[arg(long)]
    pub name: String,
    /// Where to write the private key (mode 0600; refuses to overwrite). Give it to the node
    /// as signing_key_file.
    #[arg(long, value_name = "PATH")]
    pub out: PathBuf,
}

#[derive(Debug, Args)]
pub struct HashKeyArgs {
    /// Generate a new random API key instead of reading one, and print it with its hash.
    #[arg(long)]
    pub generate: bool,
}
