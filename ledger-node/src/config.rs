//! The ledger node's settings and where they come from: built-in defaults, overridden by a TOML
//! file (`--config`), overridden by `AEGIS_*` environment variables, overridden by flags.
//!
//! Every setting has one name in each layer: the TOML key `raft.heartbeat_interval_ms` is the
//! flag `--raft-heartbeat-interval-ms` and the variable `AEGIS_RAFT_HEARTBEAT_INTERVAL_MS`.
//! `ledger.example.toml` lists them all with their defaults.

use std::cell::RefCell;
use std::ffi::OsString;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use clap::error::{ContextKind, ContextValue, ErrorKind};
use clap::{CommandFactory as _, FromArgMatches as _, Parser};
use serde::{Deserialize, Serialize};

use crate::types::NodeId;

/// Room a gRPC message needs besides the record bytes it carries (request fields, headers of the
/// protobuf encoding). `limits.message_bytes_max` must leave at least this much.
pub const MESSAGE_OVERHEAD_BYTES: usize = 64 * 1024;

/// Framing of one record inside a message or a Raft entry: its record id and a length prefix.
pub const RECORD_OVERHEAD_BYTES: usize = 32;

/// Longest linger a batch may wait for, in microseconds. Anything longer is almost surely a
/// value meant in milliseconds, and would delay every append by that much.
pub const LINGER_US_MAX: u64 = 1_000_000;

/// Everything a ledger node is configured with. Build it with [`Config::load`] (or
/// [`Config::load_from`] in tests) and check it with [`Config::validate`] before use.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// This node's Raft id: unique in the cluster, never 0, never reused for a node whose data
    /// was wiped (its old votes and log would be attributed to the new node).
    pub node_id: NodeId,
    /// Where the Raft log, the MMR and the node's key live. Relative paths are relative to the
    /// working directory.
    pub data_dir: PathBuf,
    /// The checkpoint origin, the first line of every checkpoint this cluster signs, e.g.
    /// `aegis.example.com/ledger/prod`. The same on every node; verifiers pin it.
    pub origin: String,

    /// Where the client service (`Ledger`, `Admin`, health, reflection) listens.
    #[serde(default = "default_client_listen")]
    pub client_listen: SocketAddr,
    /// Where the peer (Raft) service listens. Only other ledger nodes connect here.
    #[serde(default = "default_peer_listen")]
    pub peer_listen: SocketAddr,
    /// Where `/metrics` and `/healthz` are served over plain HTTP.
    #[serde(default = "default_metrics_listen")]
    pub metrics_listen: SocketAddr,
    /// `host:port` gateways, auditors and followers answering writes give out for this node's
    /// client service. Default: the bound `client_listen` address.
    #[serde(default)]
    pub advertise_client_addr: Option<String>,
    /// `host:port` other ledger nodes dial for Raft. Default: the bound `peer_listen` address.
    #[serde(default)]
    pub advertise_peer_addr: Option<String>,
    /// The local IP outgoing peer (Raft, cosigning) connections are made from, so that peers
    /// and firewalls can tell nodes apart by source address. Default: the operating system's
    /// choice.
    #[serde(default)]
    pub peer_source_ip: Option<IpAddr>,

    /// The node's Ed25519 checkpoint signing key. Default: `<data_dir>/checkpoint.key`.
    #[serde(default)]
    pub signing_key_file: Option<PathBuf>,
    /// The name the node signs checkpoints under. Default: `aegis-ledger-<node_id>`.
    #[serde(default)]
    pub key_name: Option<String>,
    /// A file holding the bearer token the Admin service requires. When unset, the Admin
    /// service answers only connections from loopback addresses.
    #[serde(default)]
    pub admin_token_file: Option<PathBuf>,

    /// Raft timing and replication: `[raft]`.
    #[serde(default)]
    pub raft: RaftConfig,
    /// Request and message limits: `[limits]`.
    #[serde(default)]
    pub limits: LimitsConfig,
    /// How Append calls are coalesced into Raft entries: `[group_commit]`.
    #[serde(default)]
    pub group_commit: GroupCommitConfig,
    /// Checkpoint cosigning: `[checkpoints]`.
    #[serde(default)]
    pub checkpoints: CheckpointsConfig,
    /// `[durability]`.
    #[serde(default)]
    pub durability: DurabilityConfig,
    /// `[log]`.
    #[serde(default)]
    pub log: LogConfig,
}

/// Raft timing and replication. openraft's defaults (heartbeat 50 ms, election 150–300 ms)
/// assume idle machines; on a busy 2-core box a follower misses heartbeats while fsyncing or
/// hashing and starts spurious elections, so ours are three to seven times longer.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RaftConfig {
    /// How often the leader sends heartbeats. Must be less than half the minimum election timeout.
    ///
    /// openraft 0.9 also uses it as the timeout of every AppendEntries call: it MUST exceed the
    /// round trip between nodes plus a follower's flush (fdatasync), or replication times out
    /// and nothing commits (the chaos suite's `very-slow-links` scenario shows it). Raise it, and
    /// the election timeouts with it, for nodes far apart or on slow disks.
    pub heartbeat_interval_ms: u64,
    /// A follower that hears no leader for a random time in [min, max) starts an election.
    ///
    /// After a leader dies, openraft 0.9 first waits out its leader lease (`max`), so failover
    /// takes `max` plus a random time in [min, max), and longer when the first follower to time
    /// out knows of a longer log elsewhere (it waits `2 * max` more): 3.7-6.3 s with the defaults
    /// in the chaos suite's `leader-kill`. Shorter timeouts fail over faster but elect spuriously when a busy
    /// machine delays heartbeats.
    pub election_timeout_min_ms: u64,
    pub election_timeout_max_ms: u64,
    /// How long sending one snapshot chunk to a follower may take before it is retried.
    pub install_snapshot_timeout_ms: u64,
    /// Build a snapshot after this many entries were applied since the last one; the log before
    /// it can then be purged.
    pub snapshot_after_entries: u64,
    /// Most entries the leader sends in one AppendEntries call.
    pub max_payload_entries: u64,
    /// A follower this many entries behind is caught up with a snapshot instead of the log.
    pub replication_lag_threshold: u64,
}

/// Limits on what clients and peers may ask of the node. Beyond them requests are refused with a
/// clear status instead of queueing without bound.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LimitsConfig {
    /// Largest record (its encoded bytes) accepted.
    pub record_bytes_max: usize,
    /// Most records in one Append request.
    pub append_records_max: usize,
    /// Most record bytes, summed, in one Append request.
    pub append_bytes_max: usize,
    /// Largest gRPC message sent or accepted, on the client and the peer service. Must hold a
    /// full Append request, a full Raft entry and a snapshot chunk with their framing.
    pub message_bytes_max: usize,
    /// Append calls in flight at once; beyond this they fail with RESOURCE_EXHAUSTED.
    pub concurrent_appends_max: usize,
    /// Most entries one GetEntries call returns.
    pub entries_per_request_max: u64,
    /// Size of one streamed snapshot chunk, so snapshots larger than memory can be sent.
    pub snapshot_chunk_bytes: usize,
    /// WatchCheckpoints streams open at once.
    pub watch_subscribers_max: usize,
}

/// Group commit: the leader coalesces concurrent Append calls into one Raft entry, paying one
/// replication round and one fsync for all of them. An Append request always fits in one entry.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GroupCommitConfig {
    /// Most records in one Raft entry.
    pub entry_records_max: usize,
    /// Most record bytes, summed, in one Raft entry.
    pub entry_bytes_max: usize,
    /// How long the leader waits for more records when a batch is not full; 0 sends at once.
    pub linger_us: u64,
    /// Records waiting to be proposed; beyond this Append fails with RESOURCE_EXHAUSTED.
    pub queue_records_max: usize,
}

/// Checkpoint cosigning rounds.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CheckpointsConfig {
    /// How often the leader asks followers to cosign its latest applied state.
    pub interval_ms: u64,
    /// How long the leader waits for a follower's cosignature in one round.
    pub cosign_timeout_ms: u64,
}

/// Durability of the Raft log and the state machine.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DurabilityConfig {
    /// fsync the log before Raft counts an entry as stored. `false` is for benchmarks only:
    /// a power failure can then lose acknowledged records.
    pub fsync: bool,
}

/// Logging. `RUST_LOG`, when set, replaces `filter`.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogConfig {
    pub format: LogFormat,
    /// A `tracing` filter, e.g. `info` or `info,ledger_node=debug,openraft=warn`.
    pub filter: String,
}

/// How log lines are written to stderr.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines, colored on a terminal.
    #[default]
    Text,
    /// One JSON object per line, for log collectors.
    Json,
}

/// Why the node's configuration could not be loaded or is not usable. Every message names the
/// setting and says what to change.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// Flags could not be parsed, or `--help`/`--version` was asked for. Let clap print it:
    /// `error.print()` and exit with `error.exit_code()`.
    #[error("{0}")]
    Flags(#[from] clap::Error),
    #[error("environment variable {var}={value:?} is not valid: {reason}. Fix it or unset it.")]
    Env { var: String, value: String, reason: String },
    #[error("environment variable {var} is not valid UTF-8. Fix it or unset it.")]
    EnvNotUnicode { var: String },
    #[error(
        "cannot read the config file {}: {source}. Check --config / AEGIS_CONFIG.",
        path.display()
    )]
    ReadFile { path: PathBuf, source: std::io::Error },
    #[error("config file {}: {message}", path.display())]
    File { path: PathBuf, message: String },
    #[error("a value given by flag or environment cannot be used ({message}); settings stop at 2^63 - 1.")]
    Override { message: String },
    #[error("{setting} is not set. Give it as {flag}, as {env}, or as `{setting} = ...` in the config file.")]
    Missing { setting: &'static str, flag: &'static str, env: &'static str },
    #[error("{setting} = {value}: {problem}")]
    Invalid { setting: &'static str, value: String, problem: String },
}

impl Config {
    /// Loads the configuration from the process's arguments and environment and validates it.
    pub fn load() -> Result<Self, ConfigError> {
        let not_unicode = RefCell::new(None);
        let loaded = Self::load_from(std::env::args_os(), |var| match std::env::var(var) {
            Ok(value) => Some(value),
            Err(std::env::VarError::NotPresent) => None,
            Err(std::env::VarError::NotUnicode(_)) => {
                not_unicode.borrow_mut().get_or_insert_with(|| var.to_owned());
                None
            }
        });
        match not_unicode.into_inner() {
            Some(var) => Err(ConfigError::EnvNotUnicode { var }),
            None => loaded,
        }
    }

    /// Loads the configuration from `args` (the program name first) and the environment as
    /// `env` reports it, and validates it. Layers, each overriding the one before: built-in
    /// defaults, the TOML file named by `--config`/`AEGIS_CONFIG`, `AEGIS_*` variables, flags.
    /// An empty variable counts as unset.
    pub fn load_from<I, T>(args: I, env: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError>
    where
        I: IntoIterator<Item = T>,
        T: Into<OsString>,
    {
        let args: Vec<OsString> = args.into_iter().map(Into::into).collect();
        let flags = parse_flags_and_env(&args, &env)?;

        let file = match &flags.config {
            Some(path) => match std::fs::read_to_string(path) {
                Ok(text) => Some((path.clone(), text)),
                Err(source) => return Err(ConfigError::ReadFile { path: path.clone(), source }),
            },
            None => None,
        };
        let mut table = match &file {
            Some((path, text)) => toml::from_str::<toml::Table>(text).map_err(|error| ConfigError::File {
                path: path.clone(),
                message: error.to_string().trim_end().to_owned(),
            })?,
            None => toml::Table::new(),
        };
        let overrides = match toml::Value::try_from(&flags) {
            Ok(toml::Value::Table(overrides)) => overrides,
            Ok(_) => unreachable!("flags serialize as a table"),
            Err(error) => return Err(ConfigError::Override { message: error.to_string() }),
        };
        merge(&mut table, overrides);

        for (setting, flag, env) in REQUIRED {
            if !table.contains_key(setting) {
                return Err(ConfigError::Missing { setting, flag, env });
            }
        }
        let config = toml::Value::Table(table).try_into::<Config>().map_err(|error| {
            // Only the file can hold a wrong value: flags and variables were parsed to their
            // types already. Parsing the file alone gives the same error with a line number.
            let path = file.as_ref().map(|(path, _)| path.clone()).unwrap_or_default();
            let spanned = file.as_ref().and_then(|(_, text)| toml::from_str::<Config>(text).err());
            let message = match spanned {
                Some(spanned) if spanned.message() == error.message() => spanned.to_string(),
                _ => error.to_string(),
            };
            ConfigError::File { path, message: message.trim_end().to_owned() }
        })?;
        config.validate()?;
        Ok(config)
    }

    /// The command line: its flags, their environment variables and help.
    pub fn command() -> clap::Command {
        Flags::command()
    }

    /// A valid configuration for in-process tests: listeners on loopback port 0 (bind them and
    /// pass the listeners in), and timings short enough for tests to elect and cosign quickly.
    pub fn for_test(node_id: NodeId, data_dir: impl Into<PathBuf>) -> Self {
        let loopback_port_0 = SocketAddr::from(([127, 0, 0, 1], 0));
        Self {
            node_id,
            data_dir: data_dir.into(),
            origin: "aegis.test/ledger".to_owned(),
            client_listen: loopback_port_0,
            peer_listen: loopback_port_0,
            metrics_listen: loopback_port_0,
            advertise_client_addr: None,
            advertise_peer_addr: None,
            peer_source_ip: None,
            signing_key_file: None,
            key_name: None,
            admin_token_file: None,
            raft: RaftConfig {
                heartbeat_interval_ms: 100,
                election_timeout_min_ms: 600,
                election_timeout_max_ms: 1200,
                install_snapshot_timeout_ms: 5000,
                ..RaftConfig::default()
            },
            limits: LimitsConfig::default(),
            group_commit: GroupCommitConfig { linger_us: 100, ..GroupCommitConfig::default() },
            checkpoints: CheckpointsConfig { interval_ms: 200, cosign_timeout_ms: 1000 },
            durability: DurabilityConfig::default(),
            log: LogConfig::default(),
        }
    }

    /// Checks every setting and how they fit together. The error names the first setting that
    /// is wrong and says what to do.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.validate_identity()?;
        self.validate_addresses()?;
        self.raft.validate()?;
        self.validate_limits()?;
        self.group_commit.validate()?;
        self.checkpoints.validate()?;
        self.log.validate()
    }

    /// Things that are allowed but that an operator should know about, to be logged at start-up.
    pub fn warnings(&self) -> Vec<String> {
        let mut warnings = Vec::new();
        if !self.durability.fsync {
            warnings.push(
                "durability.fsync = false: the Raft log is NOT fsync'd, a power failure or kernel crash \
                 can lose acknowledged audit records. Use this only for benchmarks."
                    .to_owned(),
            );
        }
        if self.admin_token_file.is_none() && !self.client_listen.ip().is_loopback() {
            warnings.push(format!(
                "admin_token_file is not set: the Admin service on {} answers only loopback \
                 connections. Set admin_token_file to administer this node remotely.",
                self.client_listen
            ));
        }
        warnings
    }

    /// The node's checkpoint signing key file: `signing_key_file`, or `<data_dir>/checkpoint.key`.
    pub fn signing_key_path(&self) -> PathBuf {
        self.signing_key_file.clone().unwrap_or_else(|| self.data_dir.join("checkpoint.key"))
    }

    /// The name the node signs checkpoints under: `key_name`, or `aegis-ledger-<node_id>`.
    pub fn checkpoint_key_name(&self) -> String {
        self.key_name.clone().unwrap_or_else(|| format!("aegis-ledger-{}", self.node_id))
    }

    /// The client address to give out: `advertise_client_addr`, or `bound`, the address the
    /// client listener actually bound (which resolves port 0).
    pub fn advertised_client_addr(&self, bound: SocketAddr) -> String {
        self.advertise_client_addr.clone().unwrap_or_else(|| bound.to_string())
    }

    /// The peer address to give out: `advertise_peer_addr`, or `bound`, the address the peer
    /// listener actually bound.
    pub fn advertised_peer_addr(&self, bound: SocketAddr) -> String {
        self.advertise_peer_addr.clone().unwrap_or_else(|| bound.to_string())
    }

    fn validate_identity(&self) -> Result<(), ConfigError> {
        if self.node_id == 0 {
            return Err(invalid(
                "node_id",
                0,
                "0 is not a valid Raft node id. Give every node a distinct positive id and never reuse it.",
            ));
        }
        if self.data_dir.as_os_str().is_empty() {
            return Err(invalid("data_dir", "\"\"", "set it to the directory that holds this node's data."));
        }
        let origin_bytes_max = mmr::NoteLimits::default().line_bytes_max;
        if self.origin.is_empty() || self.origin.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(invalid(
                "origin",
                format!("{:?}", self.origin),
                "the checkpoint origin must be non-empty, without spaces or line breaks, e.g. \
                 \"aegis.example.com/ledger/prod\", and the same on every node of the cluster.",
            ));
        }
        if self.origin.len() > origin_bytes_max {
            return Err(invalid(
                "origin",
                format!("{:?}", self.origin),
                format!(
                    "{} bytes long; checkpoint verifiers accept lines of at most {origin_bytes_max} bytes.",
                    self.origin.len()
                ),
            ));
        }
        if let Some(key_name) = &self.key_name {
            // The C2SP signed-note rules for key names live in `mmr`; ask it rather than repeat them.
            if mmr::NoteSigner::from_seed(key_name, &[0; 32]).is_err() {
                return Err(invalid(
                    "key_name",
                    format!("{key_name:?}"),
                    "a checkpoint key name must be non-empty, without spaces or '+'. \
                     Unset it to use aegis-ledger-<node_id>.",
                ));
            }
        }
        Ok(())
    }

    fn validate_addresses(&self) -> Result<(), ConfigError> {
        let listeners = [
            ("client_listen", self.client_listen),
            ("peer_listen", self.peer_listen),
            ("metrics_listen", self.metrics_listen),
        ];
        for (index, (setting, address)) in listeners.iter().enumerate() {
            let clash =
                listeners[..index].iter().find(|(_, earlier)| address.port() != 0 && earlier == address);
            if let Some((earlier_setting, _)) = clash {
                return Err(invalid(
                    setting,
                    address,
                    format!("{earlier_setting} uses the same address; give every listener its own port."),
                ));
            }
        }
        check_advertised(
            "advertise_client_addr",
            "client_listen",
            self.client_listen,
            &self.advertise_client_addr,
        )?;
        check_advertised("advertise_peer_addr", "peer_listen", self.peer_listen, &self.advertise_peer_addr)
    }

    fn validate_limits(&self) -> Result<(), ConfigError> {
        let limits = &self.limits;
        let group_commit = &self.group_commit;
        for (setting, value) in [
            ("limits.record_bytes_max", limits.record_bytes_max),
            ("limits.append_records_max", limits.append_records_max),
            ("limits.append_bytes_max", limits.append_bytes_max),
            ("limits.message_bytes_max", limits.message_bytes_max),
            ("limits.concurrent_appends_max", limits.concurrent_appends_max),
            ("limits.snapshot_chunk_bytes", limits.snapshot_chunk_bytes),
            ("limits.watch_subscribers_max", limits.watch_subscribers_max),
        ] {
            positive(setting, value)?;
        }
        positive("limits.entries_per_request_max", limits.entries_per_request_max)?;
        if limits.record_bytes_max > limits.append_bytes_max {
            return Err(invalid(
                "limits.record_bytes_max",
                limits.record_bytes_max,
                format!(
                    "larger than limits.append_bytes_max ({}), so the largest record could never be \
                     appended. Lower it or raise limits.append_bytes_max.",
                    limits.append_bytes_max
                ),
            ));
        }
        if limits.append_records_max > group_commit.entry_records_max {
            return Err(invalid(
                "limits.append_records_max",
                limits.append_records_max,
                format!(
                    "an Append request must fit in one Raft entry, but group_commit.entry_records_max \
                     is {}. Lower it or raise group_commit.entry_records_max.",
                    group_commit.entry_records_max
                ),
            ));
        }
        if limits.append_bytes_max > group_commit.entry_bytes_max {
            return Err(invalid(
                "limits.append_bytes_max",
                limits.append_bytes_max,
                format!(
                    "an Append request must fit in one Raft entry, but group_commit.entry_bytes_max \
                     is {}. Lower it or raise group_commit.entry_bytes_max.",
                    group_commit.entry_bytes_max
                ),
            ));
        }
        if limits.append_records_max > group_commit.queue_records_max {
            return Err(invalid(
                "group_commit.queue_records_max",
                group_commit.queue_records_max,
                format!(
                    "smaller than limits.append_records_max ({}), so the largest Append could never \
                     be queued. Raise it or lower limits.append_records_max.",
                    limits.append_records_max
                ),
            ));
        }
        let needs = [
            (
                "an Append request of limits.append_bytes_max bytes in limits.append_records_max records",
                message_bytes(limits.append_bytes_max, limits.append_records_max),
            ),
            (
                "a Raft entry of group_commit.entry_bytes_max bytes in group_commit.entry_records_max records",
                message_bytes(group_commit.entry_bytes_max, group_commit.entry_records_max),
            ),
            (
                "a snapshot chunk of limits.snapshot_chunk_bytes bytes",
                limits.snapshot_chunk_bytes.saturating_add(MESSAGE_OVERHEAD_BYTES),
            ),
        ];
        for (what, bytes) in needs {
            if limits.message_bytes_max < bytes {
                return Err(invalid(
                    "limits.message_bytes_max",
                    limits.message_bytes_max,
                    format!(
                        "{what} needs up to {bytes} bytes with its framing. Raise \
                         limits.message_bytes_max to at least {bytes}, or lower the other limit."
                    ),
                ));
            }
        }
        Ok(())
    }
}

impl RaftConfig {
    pub fn heartbeat_interval(&self) -> Duration {
        Duration::from_millis(self.heartbeat_interval_ms)
    }

    pub fn election_timeout_min(&self) -> Duration {
        Duration::from_millis(self.election_timeout_min_ms)
    }

    pub fn election_timeout_max(&self) -> Duration {
        Duration::from_millis(self.election_timeout_max_ms)
    }

    pub fn install_snapshot_timeout(&self) -> Duration {
        Duration::from_millis(self.install_snapshot_timeout_ms)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        positive("raft.heartbeat_interval_ms", self.heartbeat_interval_ms)?;
        positive("raft.install_snapshot_timeout_ms", self.install_snapshot_timeout_ms)?;
        positive("raft.snapshot_after_entries", self.snapshot_after_entries)?;
        positive("raft.max_payload_entries", self.max_payload_entries)?;
        positive("raft.replication_lag_threshold", self.replication_lag_threshold)?;
        if self.election_timeout_min_ms >= self.election_timeout_max_ms {
            return Err(invalid(
                "raft.election_timeout_min_ms",
                self.election_timeout_min_ms,
                format!(
                    "must be less than raft.election_timeout_max_ms ({}): nodes pick their timeout at \
                     random in between, which keeps them from starting elections at once.",
                    self.election_timeout_max_ms
                ),
            ));
        }
        if self.heartbeat_interval_ms >= self.election_timeout_min_ms / 2 {
            return Err(invalid(
                "raft.heartbeat_interval_ms",
                self.heartbeat_interval_ms,
                format!(
                    "must be less than half of raft.election_timeout_min_ms ({}), or one late heartbeat \
                     makes a follower start an election. Lower it or raise the election timeouts.",
                    self.election_timeout_min_ms
                ),
            ));
        }
        Ok(())
    }
}

impl GroupCommitConfig {
    pub fn linger(&self) -> Duration {
        Duration::from_micros(self.linger_us)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        positive("group_commit.entry_records_max", self.entry_records_max)?;
        positive("group_commit.entry_bytes_max", self.entry_bytes_max)?;
        positive("group_commit.queue_records_max", self.queue_records_max)?;
        if self.linger_us > LINGER_US_MAX {
            return Err(invalid(
                "group_commit.linger_us",
                self.linger_us,
                format!(
                    "is in microseconds and at most {LINGER_US_MAX} (1 s); every append not filling a \
                     batch waits this long. Typical values are 0 to 1000."
                ),
            ));
        }
        Ok(())
    }
}

impl CheckpointsConfig {
    pub fn interval(&self) -> Duration {
        Duration::from_millis(self.interval_ms)
    }

    pub fn cosign_timeout(&self) -> Duration {
        Duration::from_millis(self.cosign_timeout_ms)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        positive("checkpoints.interval_ms", self.interval_ms)?;
        positive("checkpoints.cosign_timeout_ms", self.cosign_timeout_ms)
    }
}

impl LogConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        match tracing_subscriber::EnvFilter::builder().parse(&self.filter) {
            Ok(_) => Ok(()),
            Err(error) => Err(invalid(
                "log.filter",
                format!("{:?}", self.filter),
                format!("not a tracing filter ({error}). Write e.g. \"info\" or \"info,openraft=warn\"."),
            )),
        }
    }
}

impl ConfigError {
    /// The setting the error is about, as its TOML key, when it is about one.
    pub fn setting(&self) -> Option<&str> {
        match self {
            Self::Missing { setting, .. } | Self::Invalid { setting, .. } => Some(setting),
            _ => None,
        }
    }
}

impl Default for RaftConfig {
    fn default() -> Self {
        Self {
            heartbeat_interval_ms: 150,
            election_timeout_min_ms: 1000,
            election_timeout_max_ms: 2000,
            install_snapshot_timeout_ms: 30_000,
            snapshot_after_entries: 50_000,
            // openraft gives an AppendEntries call one heartbeat interval to complete: 64
            // entries of at most 112 KiB (~7 MiB) fit; 512 did not, and timed-out calls were
            // retried, which showed as acknowledgement latency spikes.
            max_payload_entries: 64,
            replication_lag_threshold: 20_000,
        }
    }
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            record_bytes_max: 64 * 1024,
            append_records_max: 1024,
            append_bytes_max: 112 * 1024,
            message_bytes_max: 16 * 1024 * 1024,
            concurrent_appends_max: 4096,
            entries_per_request_max: 10_000,
            snapshot_chunk_bytes: 4 * 1024 * 1024,
            watch_subscribers_max: 1024,
        }
    }
}

impl Default for GroupCommitConfig {
    fn default() -> Self {
        Self {
            entry_records_max: 1024,
            // sled keeps up to 16 values in a leaf page and rewrites whole pages, and a page
            // over a quarter of a segment (`storage::SLED_SEGMENT_BYTES`) becomes a file of its
            // own, written and fsynced apart from the log. Entries of at most 112 KiB keep a
            // page of the Raft log under that threshold.
            entry_bytes_max: 112 * 1024,
            linger_us: 200,
            queue_records_max: 65_536,
        }
    }
}

impl Default for CheckpointsConfig {
    fn default() -> Self {
        Self { interval_ms: 1000, cosign_timeout_ms: 2000 }
    }
}

impl Default for DurabilityConfig {
    fn default() -> Self {
        Self { fsync: true }
    }
}

impl Default for LogConfig {
    fn default() -> Self {
        Self { format: LogFormat::Text, filter: "info".to_owned() }
    }
}

impl fmt::Display for LogFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Text => "text",
            Self::Json => "json",
        })
    }
}

/// The settings without a default: (TOML key, flag, environment variable).
const REQUIRED: [(&str, &str, &str); 3] = [
    ("node_id", "--node-id", "AEGIS_NODE_ID"),
    ("data_dir", "--data-dir", "AEGIS_DATA_DIR"),
    ("origin", "--origin", "AEGIS_ORIGIN"),
];

fn default_client_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 7400))
}

fn default_peer_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 7401))
}

fn default_metrics_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 7402))
}

/// The flag and environment layers. Every field is optional: unset ones leave the file's value
/// or the default in place. Fields serialize under their TOML keys, so the set ones overlay the
/// file's table; each flag is the TOML key with `-` for `_` and `.`, and its variable is
/// `AEGIS_` and the flag in upper case with `_` for `-`.
#[derive(Debug, Default, Parser, Serialize)]
#[command(
    name = "aegis-ledger",
    version,
    about = "Aegis ledger node: commits audit records in a Raft-replicated Merkle Mountain Range and \
             serves signed checkpoints and proofs.",
    after_help = "Settings are read from built-in defaults, then the --config file, then AEGIS_* \
                  variables, then flags; each overrides the one before."
)]
struct Flags {
    /// TOML config file; AEGIS_* variables and flags override its settings.
    #[arg(long, env = "AEGIS_CONFIG", value_name = "PATH")]
    #[serde(skip)]
    config: Option<PathBuf>,
    /// Check the configuration (file, variables and flags), print it is valid and exit.
    #[arg(long)]
    #[serde(skip)]
    check_config: bool,
    /// This node's Raft id: positive, unique in the cluster, never reused [required].
    #[arg(long, env = "AEGIS_NODE_ID", value_name = "ID")]
    node_id: Option<NodeId>,
    /// Directory of the node's log, tree and key [required].
    #[arg(long, env = "AEGIS_DATA_DIR", value_name = "PATH")]
    data_dir: Option<PathBuf>,
    /// Checkpoint origin, e.g. aegis.example.com/ledger/prod [required].
    #[arg(long, env = "AEGIS_ORIGIN", value_name = "ORIGIN")]
    origin: Option<String>,
    /// Client service (Ledger, Admin) listen address [default: 127.0.0.1:7400].
    #[arg(long, env = "AEGIS_CLIENT_LISTEN", value_name = "ADDR")]
    client_listen: Option<SocketAddr>,
    /// Peer (Raft) service listen address [default: 127.0.0.1:7401].
    #[arg(long, env = "AEGIS_PEER_LISTEN", value_name = "ADDR")]
    peer_listen: Option<SocketAddr>,
    /// /metrics and /healthz listen address [default: 127.0.0.1:7402].
    #[arg(long, env = "AEGIS_METRICS_LISTEN", value_name = "ADDR")]
    metrics_listen: Option<SocketAddr>,
    /// host:port clients reach the client service at [default: the client listen address].
    #[arg(long, env = "AEGIS_ADVERTISE_CLIENT_ADDR", value_name = "HOST:PORT")]
    advertise_client_addr: Option<String>,
    /// host:port other nodes reach the peer service at [default: the peer listen address].
    #[arg(long, env = "AEGIS_ADVERTISE_PEER_ADDR", value_name = "HOST:PORT")]
    advertise_peer_addr: Option<String>,
    /// Local IP of outgoing peer connections [default: the operating system's choice].
    #[arg(long, env = "AEGIS_PEER_SOURCE_IP", value_name = "IP")]
    peer_source_ip: Option<IpAddr>,
    /// Ed25519 checkpoint signing key [default: <data-dir>/checkpoint.key].
    #[arg(long, env = "AEGIS_SIGNING_KEY_FILE", value_name = "PATH")]
    signing_key_file: Option<PathBuf>,
    /// Checkpoint signing key name [default: aegis-ledger-<node-id>].
    #[arg(long, env = "AEGIS_KEY_NAME", value_name = "NAME")]
    key_name: Option<String>,
    /// File holding the Admin service's bearer token [default: none, Admin on loopback only].
    #[arg(long, env = "AEGIS_ADMIN_TOKEN_FILE", value_name = "PATH")]
    admin_token_file: Option<PathBuf>,

    #[command(flatten, next_help_heading = "Raft")]
    raft: RaftFlags,
    #[command(flatten, next_help_heading = "Limits")]
    limits: LimitsFlags,
    #[command(flatten, next_help_heading = "Group commit")]
    group_commit: GroupCommitFlags,
    #[command(flatten, next_help_heading = "Checkpoints")]
    checkpoints: CheckpointsFlags,
    #[command(flatten, next_help_heading = "Durability")]
    durability: DurabilityFlags,
    #[command(flatten, next_help_heading = "Logging")]
    log: LogFlags,
}

#[derive(Debug, Default, clap::Args, Serialize)]
struct RaftFlags {
    /// Leader heartbeat interval [default: 150].
    #[arg(long = "raft-heartbeat-interval-ms", env = "AEGIS_RAFT_HEARTBEAT_INTERVAL_MS", value_name = "MS")]
    heartbeat_interval_ms: Option<u64>,
    /// Minimum election timeout [default: 1000].
    #[arg(
        long = "raft-election-timeout-min-ms",
        env = "AEGIS_RAFT_ELECTION_TIMEOUT_MIN_MS",
        value_name = "MS"
    )]
    election_timeout_min_ms: Option<u64>,
    /// Maximum election timeout [default: 2000].
    #[arg(
        long = "raft-election-timeout-max-ms",
        env = "AEGIS_RAFT_ELECTION_TIMEOUT_MAX_MS",
        value_name = "MS"
    )]
    election_timeout_max_ms: Option<u64>,
    /// Timeout of one snapshot chunk sent to a follower [default: 30000].
    #[arg(
        long = "raft-install-snapshot-timeout-ms",
        env = "AEGIS_RAFT_INSTALL_SNAPSHOT_TIMEOUT_MS",
        value_name = "MS"
    )]
    install_snapshot_timeout_ms: Option<u64>,
    /// Snapshot after this many applied entries [default: 50000].
    #[arg(long = "raft-snapshot-after-entries", env = "AEGIS_RAFT_SNAPSHOT_AFTER_ENTRIES", value_name = "N")]
    snapshot_after_entries: Option<u64>,
    /// Most entries per AppendEntries call [default: 64].
    #[arg(long = "raft-max-payload-entries", env = "AEGIS_RAFT_MAX_PAYLOAD_ENTRIES", value_name = "N")]
    max_payload_entries: Option<u64>,
    /// Entries behind after which a follower gets a snapshot [default: 20000].
    #[arg(
        long = "raft-replication-lag-threshold",
        env = "AEGIS_RAFT_REPLICATION_LAG_THRESHOLD",
        value_name = "N"
    )]
    replication_lag_threshold: Option<u64>,
}

#[derive(Debug, Default, clap::Args, Serialize)]
struct LimitsFlags {
    /// Largest record [default: 65536].
    #[arg(long = "limits-record-bytes-max", env = "AEGIS_LIMITS_RECORD_BYTES_MAX", value_name = "BYTES")]
    record_bytes_max: Option<usize>,
    /// Most records per Append request [default: 1024].
    #[arg(long = "limits-append-records-max", env = "AEGIS_LIMITS_APPEND_RECORDS_MAX", value_name = "N")]
    append_records_max: Option<usize>,
    /// Most record bytes per Append request [default: 114688].
    #[arg(long = "limits-append-bytes-max", env = "AEGIS_LIMITS_APPEND_BYTES_MAX", value_name = "BYTES")]
    append_bytes_max: Option<usize>,
    /// Largest gRPC message [default: 16777216].
    #[arg(long = "limits-message-bytes-max", env = "AEGIS_LIMITS_MESSAGE_BYTES_MAX", value_name = "BYTES")]
    message_bytes_max: Option<usize>,
    /// Append calls in flight [default: 4096].
    #[arg(
        long = "limits-concurrent-appends-max",
        env = "AEGIS_LIMITS_CONCURRENT_APPENDS_MAX",
        value_name = "N"
    )]
    concurrent_appends_max: Option<usize>,
    /// Most entries per GetEntries call [default: 10000].
    #[arg(
        long = "limits-entries-per-request-max",
        env = "AEGIS_LIMITS_ENTRIES_PER_REQUEST_MAX",
        value_name = "N"
    )]
    entries_per_request_max: Option<u64>,
    /// Snapshot chunk size [default: 4194304].
    #[arg(
        long = "limits-snapshot-chunk-bytes",
        env = "AEGIS_LIMITS_SNAPSHOT_CHUNK_BYTES",
        value_name = "BYTES"
    )]
    snapshot_chunk_bytes: Option<usize>,
    /// Open WatchCheckpoints streams [default: 1024].
    #[arg(
        long = "limits-watch-subscribers-max",
        env = "AEGIS_LIMITS_WATCH_SUBSCRIBERS_MAX",
        value_name = "N"
    )]
    watch_subscribers_max: Option<usize>,
}

#[derive(Debug, Default, clap::Args, Serialize)]
struct GroupCommitFlags {
    /// Most records per Raft entry [default: 1024].
    #[arg(
        long = "group-commit-entry-records-max",
        env = "AEGIS_GROUP_COMMIT_ENTRY_RECORDS_MAX",
        value_name = "N"
    )]
    entry_records_max: Option<usize>,
    /// Most record bytes per Raft entry [default: 114688].
    #[arg(
        long = "group-commit-entry-bytes-max",
        env = "AEGIS_GROUP_COMMIT_ENTRY_BYTES_MAX",
        value_name = "BYTES"
    )]
    entry_bytes_max: Option<usize>,
    /// Wait for a batch to fill, 0 = send at once [default: 200].
    #[arg(long = "group-commit-linger-us", env = "AEGIS_GROUP_COMMIT_LINGER_US", value_name = "US")]
    linger_us: Option<u64>,
    /// Records waiting to be proposed [default: 65536].
    #[arg(
        long = "group-commit-queue-records-max",
        env = "AEGIS_GROUP_COMMIT_QUEUE_RECORDS_MAX",
        value_name = "N"
    )]
    queue_records_max: Option<usize>,
}

#[derive(Debug, Default, clap::Args, Serialize)]
struct CheckpointsFlags {
    /// How often the leader gathers cosignatures [default: 1000].
    #[arg(long = "checkpoints-interval-ms", env = "AEGIS_CHECKPOINTS_INTERVAL_MS", value_name = "MS")]
    interval_ms: Option<u64>,
    /// How long to wait for one cosignature [default: 2000].
    #[arg(
        long = "checkpoints-cosign-timeout-ms",
        env = "AEGIS_CHECKPOINTS_COSIGN_TIMEOUT_MS",
        value_name = "MS"
    )]
    cosign_timeout_ms: Option<u64>,
}

#[derive(Debug, Default, clap::Args, Serialize)]
struct DurabilityFlags {
    /// fsync the Raft log; false only for benchmarks [default: true].
    #[arg(long = "durability-fsync", env = "AEGIS_DURABILITY_FSYNC", value_name = "BOOL")]
    fsync: Option<bool>,
}

#[derive(Debug, Default, clap::Args, Serialize)]
struct LogFlags {
    /// Log line format [default: text].
    #[arg(long = "log-format", env = "AEGIS_LOG_FORMAT", value_name = "FORMAT")]
    format: Option<LogFormat>,
    /// tracing filter; RUST_LOG replaces it [default: info].
    #[arg(long = "log-filter", env = "AEGIS_LOG_FILTER", value_name = "FILTER")]
    filter: Option<String>,
}

/// Parses the flags, then lays them over the variables `env` reports. clap reads variables from
/// the process itself, so the command is used without its `env` names and each variable is
/// parsed as if it were its flag: one parser, and tests need not touch the process environment.
fn parse_flags_and_env(
    args: &[OsString],
    env: &impl Fn(&str) -> Option<String>,
) -> Result<Flags, ConfigError> {
    let with_env = Flags::command();
    let mut without_env = with_env.clone().mut_args(|arg| arg.env(None::<&'static str>));

    let flag_matches = match without_env.try_get_matches_from_mut(args) {
        Ok(matches) => matches,
        Err(error) if matches!(error.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion) => {
            // Help from the full command, which lists each flag's variable.
            return Err(with_env.try_get_matches_from(args).err().unwrap_or(error).into());
        }
        Err(error) => return Err(error.into()),
    };

    let program = args.first().cloned().unwrap_or_else(|| "aegis-ledger".into());
    let mut flags = Flags::default();
    for arg in with_env.get_arguments() {
        let (Some(var), Some(long)) = (arg.get_env().and_then(|var| var.to_str()), arg.get_long()) else {
            continue;
        };
        let Some(value) = env(var).filter(|value| !value.is_empty()) else {
            continue;
        };
        let as_flag = OsString::from(format!("--{long}={value}"));
        let env_error = |error: clap::Error| ConfigError::Env {
            var: var.to_owned(),
            value: value.clone(),
            reason: clap_reason(&error),
        };
        let matches = without_env.try_get_matches_from_mut([program.clone(), as_flag]).map_err(env_error)?;
        flags.update_from_arg_matches(&matches).map_err(env_error)?;
    }
    flags.update_from_arg_matches(&flag_matches)?;
    Ok(flags)
}

/// What was wrong with a value, without clap's framing (which names the flag, not the variable).
fn clap_reason(error: &clap::Error) -> String {
    if let Some(source) = std::error::Error::source(error) {
        return source.to_string();
    }
    match error.get(ContextKind::ValidValue) {
        Some(ContextValue::Strings(valid)) => format!("expected one of {}", valid.join(", ")),
        _ => error.kind().to_string(),
    }
}

/// Lays `overrides` over `base`, key by key, descending into tables.
fn merge(base: &mut toml::Table, overrides: toml::Table) {
    for (key, value) in overrides {
        match (base.get_mut(&key), value) {
            (Some(toml::Value::Table(base_table)), toml::Value::Table(override_table)) => {
                merge(base_table, override_table);
            }
            // A section with no flags set overrides nothing.
            (_, toml::Value::Table(override_table)) if override_table.is_empty() => {}
            (_, value) => {
                base.insert(key, value);
            }
        }
    }
}

fn invalid(setting: &'static str, value: impl fmt::Display, problem: impl Into<String>) -> ConfigError {
    ConfigError::Invalid { setting, value: value.to_string(), problem: problem.into() }
}

fn positive<T: Default + PartialEq + fmt::Display>(
    setting: &'static str,
    value: T,
) -> Result<(), ConfigError> {
    if value == T::default() {
        return Err(invalid(setting, value, "must be greater than 0."));
    }
    Ok(())
}

/// The largest gRPC message carrying `bytes` of records in `records` records.
fn message_bytes(bytes: usize, records: usize) -> usize {
    bytes.saturating_add(records.saturating_mul(RECORD_OVERHEAD_BYTES)).saturating_add(MESSAGE_OVERHEAD_BYTES)
}

/// Checks an advertised address, or, when it is unset, that the listen address it defaults to
/// is one others can dial.
fn check_advertised(
    setting: &'static str,
    listen_setting: &'static str,
    listen: SocketAddr,
    advertised: &Option<String>,
) -> Result<(), ConfigError> {
    let Some(advertised) = advertised else {
        if listen.ip().is_unspecified() {
            return Err(invalid(
                listen_setting,
                listen,
                format!(
                    "listening on all interfaces, so this node cannot tell others where to reach it. \
                     Set {setting} to the host:port they dial."
                ),
            ));
        }
        return Ok(());
    };
    let problem = if advertised.contains("://") {
        Some("write host:port, without a scheme.".to_owned())
    } else if advertised.chars().any(|c| c.is_whitespace() || c.is_control()) {
        Some("must not contain spaces or line breaks.".to_owned())
    } else if let Ok(address) = advertised.parse::<SocketAddr>() {
        if address.ip().is_unspecified() {
            Some(format!(
                "{} means \"any interface\" and cannot be dialed. Advertise the address other \
                 nodes and clients reach this node at.",
                address.ip()
            ))
        } else {
            (address.port() == 0).then(|| "port 0 cannot be dialed; give the real port.".to_owned())
        }
    } else {
        match advertised.rsplit_once(':') {
            Some((host, port)) if !host.is_empty() => match port.parse::<u16>() {
                Ok(0) | Err(_) => Some(format!("{port:?} is not a port; write host:port.")),
                Ok(_) => None,
            },
            _ => Some("write host:port, e.g. ledger-1.internal:7400.".to_owned()),
        }
    };
    match problem {
        Some(problem) => Err(invalid(setting, format!("{advertised:?}"), problem)),
        None => Ok(()),
    }
}
