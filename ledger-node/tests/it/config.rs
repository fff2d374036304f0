//! The node's configuration (defaults, file < environment < flags, validation, the example file)
//! and the metrics port (`/metrics`, `/healthz`).
//!
//! No test touches the process environment: variables are passed to `Config::load_from` as a map.

use std::collections::{BTreeSet, HashMap};
use std::io::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ledger_node::config::{
    CheckpointsConfig, Config, ConfigError, DurabilityConfig, GroupCommitConfig, LimitsConfig, LogConfig,
    LogFormat, RaftConfig,
};
use ledger_node::metrics::{self, Metrics, ProofKind, RejectReason};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

const PROGRAM: &str = "aegis-ledger";
const REQUIRED_FLAGS: [&str; 6] = ["--node-id", "7", "--data-dir", "/data", "--origin", "test.example/log"];

/// Loads a configuration from `args` (without the program name) and the variables `env`.
fn load(args: &[&str], env: &[(&str, &str)]) -> Result<Config, ConfigError> {
    let env: HashMap<String, String> =
        env.iter().map(|(var, value)| ((*var).to_owned(), (*value).to_owned())).collect();
    Config::load_from(std::iter::once(PROGRAM).chain(args.iter().copied()), |var| env.get(var).cloned())
}

/// A TOML config file holding `text`; deleted when dropped.
fn config_file(text: &str) -> tempfile::NamedTempFile {
    let mut file = tempfile::NamedTempFile::new().expect("create a temporary file");
    file.write_all(text.as_bytes()).expect("write the config file");
    file
}

fn path_arg(file: &tempfile::NamedTempFile) -> &str {
    file.path().to_str().expect("temporary paths are UTF-8")
}

fn example_file() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("ledger.example.toml")
}

fn loopback(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

#[test]
fn defaults_fill_everything_but_the_required_settings() {
    let config = load(&REQUIRED_FLAGS, &[]).expect("required settings are enough");
    let expected = Config {
        node_id: 7,
        data_dir: PathBuf::from("/data"),
        origin: "test.example/log".to_owned(),
        client_listen: loopback(7400),
        peer_listen: loopback(7401),
        metrics_listen: loopback(7402),
        advertise_client_addr: None,
        advertise_peer_addr: None,
        peer_source_ip: None,
        signing_key_file: None,
        key_name: None,
        admin_token_file: None,
        raft: RaftConfig {
            heartbeat_interval_ms: 150,
            election_timeout_min_ms: 1000,
            election_timeout_max_ms: 2000,
            install_snapshot_timeout_ms: 30_000,
            snapshot_after_entries: 50_000,
            max_payload_entries: 64,
            replication_lag_threshold: 20_000,
        },
        limits: LimitsConfig {
            record_bytes_max: 65_536,
            append_records_max: 1024,
            append_bytes_max: 112 << 10,
            message_bytes_max: 16 << 20,
            concurrent_appends_max: 4096,
            entries_per_request_max: 10_000,
            snapshot_chunk_bytes: 4 << 20,
            watch_subscribers_max: 1024,
        },
        group_commit: GroupCommitConfig {
            entry_records_max: 1024,
            entry_bytes_max: 112 << 10,
            linger_us: 200,
            queue_records_max: 65_536,
        },
        checkpoints: CheckpointsConfig { interval_ms: 1000, cosign_timeout_ms: 2000 },
        durability: DurabilityConfig { fsync: true },
        log: LogConfig { format: LogFormat::Text, filter: "info".to_owned() },
    };
    assert_eq!(config, expected);

    assert_eq!(config.signing_key_path(), Path::new("/data/checkpoint.key"));
    assert_eq!(config.checkpoint_key_name(), "aegis-ledger-7");
    assert_eq!(config.advertised_client_addr(loopback(40_000)), "127.0.0.1:40000");
    assert_eq!(config.advertised_peer_addr(loopback(40_001)), "127.0.0.1:40001");
    assert_eq!(config.raft.heartbeat_interval(), Duration::from_millis(150));
    assert_eq!(config.raft.election_timeout_min(), Duration::from_secs(1));
    assert_eq!(config.raft.election_timeout_max(), Duration::from_secs(2));
    assert_eq!(config.raft.install_snapshot_timeout(), Duration::from_secs(30));
    assert_eq!(config.group_commit.linger(), Duration::from_micros(200));
    assert_eq!(config.checkpoints.interval(), Duration::from_secs(1));
    assert_eq!(config.checkpoints.cosign_timeout(), Duration::from_secs(2));
    assert!(config.warnings().is_empty(), "{:?}", config.warnings());
}

#[test]
fn the_example_file_lists_every_default() {
    let example = example_file();
    let from_example =
        load(&["--config", example.to_str().expect("UTF-8 path")], &[]).expect("the example loads");
    let from_defaults = load(
        &[
            "--node-id",
            "1",
            "--data-dir",
            "/var/lib/aegis-ledger",
            "--origin",
            "aegis.example.com/ledger/prod",
        ],
        &[],
    )
    .expect("defaults load");
    assert_eq!(from_example, from_defaults);

    // Every key of the example is a setting with a flag named after it.
    let text = std::fs::read_to_string(&example).expect("read the example");
    let table: toml::Table = toml::from_str(&text).expect("the example is TOML");
    let longs = flag_names();
    for (key, value) in &table {
        let keys: Vec<String> = match value {
            toml::Value::Table(section) => section.keys().map(|inner| format!("{key}.{inner}")).collect(),
            _ => vec![key.clone()],
        };
        for key in keys {
            let flag = key.replace(['.', '_'], "-");
            assert!(longs.contains(&flag), "example key {key} has no flag --{flag}");
        }
    }
}

/// Long names of every flag but `--help` and `--version`.
fn flag_names() -> BTreeSet<String> {
    Config::command()
        .get_arguments()
        .filter_map(|arg| arg.get_long())
        .filter(|long| !matches!(*long, "help" | "version"))
        .map(str::to_owned)
        .collect()
}

#[test]
fn every_flag_has_the_variable_named_after_it() {
    let command = Config::command();
    command.clone().debug_assert();
    for arg in command.get_arguments() {
        let Some(long) = arg.get_long() else { continue };
        // Actions, not settings.
        if matches!(long, "help" | "version" | "check-config") {
            continue;
        }
        let expected = format!("AEGIS_{}", long.to_uppercase().replace('-', "_"));
        assert_eq!(arg.get_env().and_then(|var| var.to_str()), Some(expected.as_str()), "--{long}");
    }
}

/// Every setting, as a flag and a value different from its default.
const EVERY_SETTING: [(&str, &str); 36] = [
    ("node-id", "9"),
    ("data-dir", "/srv/aegis"),
    ("origin", "every.example/log"),
    ("client-listen", "127.0.0.1:8400"),
    ("peer-listen", "127.0.0.1:8401"),
    ("metrics-listen", "127.0.0.1:8402"),
    ("advertise-client-addr", "ledger-9.internal:8400"),
    ("advertise-peer-addr", "ledger-9.internal:8401"),
    ("peer-source-ip", "10.0.0.9"),
    ("signing-key-file", "/keys/ledger.key"),
    ("key-name", "ledger-nine"),
    ("admin-token-file", "/secrets/admin.token"),
    ("raft-heartbeat-interval-ms", "200"),
    ("raft-election-timeout-min-ms", "1500"),
    ("raft-election-timeout-max-ms", "3000"),
    ("raft-install-snapshot-timeout-ms", "60000"),
    ("raft-snapshot-after-entries", "100000"),
    ("raft-max-payload-entries", "256"),
    ("raft-replication-lag-threshold", "40000"),
    ("limits-record-bytes-max", "32768"),
    ("limits-append-records-max", "2048"),
    ("limits-append-bytes-max", "4194304"),
    ("limits-message-bytes-max", "33554432"),
    ("limits-concurrent-appends-max", "1000"),
    ("limits-entries-per-request-max", "5000"),
    ("limits-snapshot-chunk-bytes", "1048576"),
    ("limits-watch-subscribers-max", "64"),
    ("group-commit-entry-records-max", "4096"),
    ("group-commit-entry-bytes-max", "4194304"),
    ("group-commit-linger-us", "0"),
    ("group-commit-queue-records-max", "10000"),
    ("checkpoints-interval-ms", "500"),
    ("checkpoints-cosign-timeout-ms", "700"),
    ("durability-fsync", "false"),
    ("log-format", "json"),
    ("log-filter", "debug,openraft=info"),
];

fn every_setting_config() -> Config {
    Config {
        node_id: 9,
        data_dir: PathBuf::from("/srv/aegis"),
        origin: "every.example/log".to_owned(),
        client_listen: loopback(8400),
        peer_listen: loopback(8401),
        metrics_listen: loopback(8402),
        advertise_client_addr: Some("ledger-9.internal:8400".to_owned()),
        advertise_peer_addr: Some("ledger-9.internal:8401".to_owned()),
        peer_source_ip: Some("10.0.0.9".parse().expect("an IP")),
        signing_key_file: Some(PathBuf::from("/keys/ledger.key")),
        key_name: Some("ledger-nine".to_owned()),
        admin_token_file: Some(PathBuf::from("/secrets/admin.token")),
        raft: RaftConfig {
            heartbeat_interval_ms: 200,
            election_timeout_min_ms: 1500,
            election_timeout_max_ms: 3000,
            install_snapshot_timeout_ms: 60_000,
            snapshot_after_entries: 100_000,
            max_payload_entries: 256,
            replication_lag_threshold: 40_000,
        },
        limits: LimitsConfig {
            record_bytes_max: 32_768,
            append_records_max: 2048,
            append_bytes_max: 4 << 20,
            message_bytes_max: 32 << 20,
            concurrent_appends_max: 1000,
            entries_per_request_max: 5000,
            snapshot_chunk_bytes: 1 << 20,
            watch_subscribers_max: 64,
        },
        group_commit: GroupCommitConfig {
            entry_records_max: 4096,
            entry_bytes_max: 4 << 20,
            linger_us: 0,
            queue_records_max: 10_000,
        },
        checkpoints: CheckpointsConfig { interval_ms: 500, cosign_timeout_ms: 700 },
        durability: DurabilityConfig { fsync: false },
        log: LogConfig { format: LogFormat::Json, filter: "debug,openraft=info".to_owned() },
    }
}

#[test]
fn every_setting_can_be_given_as_a_flag_or_a_variable() {
    let flags_in_table: BTreeSet<String> = EVERY_SETTING.iter().map(|(flag, _)| (*flag).to_owned()).collect();
    let mut all_flags = flag_names();
    all_flags.remove("config");
    all_flags.remove("check-config");
    assert_eq!(flags_in_table, all_flags, "EVERY_SETTING must list every flag");

    let args: Vec<String> = EVERY_SETTING.iter().map(|(flag, value)| format!("--{flag}={value}")).collect();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    assert_eq!(load(&args, &[]).expect("every flag"), every_setting_config());

    let env: Vec<(String, &str)> = EVERY_SETTING
        .iter()
        .map(|(flag, value)| (format!("AEGIS_{}", flag.to_uppercase().replace('-', "_")), *value))
        .collect();
    let env: Vec<(&str, &str)> = env.iter().map(|(var, value)| (var.as_str(), *value)).collect();
    assert_eq!(load(&[], &env).expect("every variable"), every_setting_config());
}

/// One setting given in up to three layers, with a different value in each.
struct Layered {
    /// TOML key, `section.key` in a section.
    key: &'static str,
    /// The file's value as a TOML literal: `values[0]`.
    toml_value: &'static str,
    flag: &'static str,
    var: &'static str,
    /// The value from the file, the environment and the flag.
    values: [&'static str; 3],
    read: fn(&Config) -> String,
}

const LAYERED: [Layered; 6] = [
    Layered {
        key: "node_id",
        toml_value: "11",
        flag: "--node-id",
        var: "AEGIS_NODE_ID",
        values: ["11", "12", "13"],
        read: |config| config.node_id.to_string(),
    },
    Layered {
        key: "origin",
        toml_value: "\"file.example/log\"",
        flag: "--origin",
        var: "AEGIS_ORIGIN",
        values: ["file.example/log", "env.example/log", "flag.example/log"],
        read: |config| config.origin.clone(),
    },
    Layered {
        key: "client_listen",
        toml_value: "\"127.0.0.1:9000\"",
        flag: "--client-listen",
        var: "AEGIS_CLIENT_LISTEN",
        values: ["127.0.0.1:9000", "127.0.0.1:9001", "127.0.0.1:9002"],
        read: |config| config.client_listen.to_string(),
    },
    Layered {
        key: "raft.heartbeat_interval_ms",
        toml_value: "100",
        flag: "--raft-heartbeat-interval-ms",
        var: "AEGIS_RAFT_HEARTBEAT_INTERVAL_MS",
        values: ["100", "110", "120"],
        read: |config| config.raft.heartbeat_interval_ms.to_string(),
    },
    Layered {
        key: "durability.fsync",
        toml_value: "false",
        flag: "--durability-fsync",
        var: "AEGIS_DURABILITY_FSYNC",
        values: ["false", "true", "false"],
        read: |config| config.durability.fsync.to_string(),
    },
    Layered {
        key: "log.format",
        toml_value: "\"json\"",
        flag: "--log-format",
        var: "AEGIS_LOG_FORMAT",
        values: ["json", "text", "json"],
        read: |config| config.log.format.to_string(),
    },
];

/// Loads with `setting` given in the layers asked for, the required settings in a file, and
/// returns the setting's value.
fn layered_value(setting: &Layered, in_file: bool, in_env: bool, in_flags: bool) -> String {
    let mut text = String::new();
    for (key, value) in [("node_id", "1"), ("data_dir", "\"/file\""), ("origin", "\"base.example/log\"")] {
        if !(in_file && key == setting.key) {
            text.push_str(&format!("{key} = {value}\n"));
        }
    }
    if in_file {
        match setting.key.split_once('.') {
            None => text.push_str(&format!("{} = {}\n", setting.key, setting.toml_value)),
            Some((section, key)) => text.push_str(&format!("[{section}]\n{key} = {}\n", setting.toml_value)),
        }
    }
    let file = config_file(&text);
    let mut args = vec!["--config", path_arg(&file)];
    if in_flags {
        args.extend([setting.flag, setting.values[2]]);
    }
    let env: Vec<(&str, &str)> = if in_env { vec![(setting.var, setting.values[1])] } else { Vec::new() };
    let config = load(&args, &env).unwrap_or_else(|error| panic!("{}: {error}", setting.flag));
    (setting.read)(&config)
}

#[test]
fn flags_override_variables_override_the_file() {
    for setting in &LAYERED {
        let [file, env, flag] = setting.values;
        assert_eq!(layered_value(setting, true, false, false), file, "{} from the file", setting.flag);
        assert_eq!(layered_value(setting, true, true, false), env, "{} from the environment", setting.flag);
        assert_eq!(
            layered_value(setting, true, false, true),
            flag,
            "{} from the flag over the file",
            setting.flag
        );
        assert_eq!(
            layered_value(setting, true, true, true),
            flag,
            "{} from the flag over both",
            setting.flag
        );
        assert_eq!(
            layered_value(setting, false, true, true),
            flag,
            "{} from the flag over env",
            setting.flag
        );
    }
}

#[test]
fn the_file_overrides_only_what_it_sets() {
    let file = config_file(
        "node_id = 1\ndata_dir = \"/file\"\norigin = \"file.example/log\"\n[raft]\nheartbeat_interval_ms = 100\n",
    );
    let config = load(&["--config", path_arg(&file)], &[("AEGIS_RAFT_ELECTION_TIMEOUT_MAX_MS", "3000")])
        .expect("file and environment");
    assert_eq!(config.raft.heartbeat_interval_ms, 100, "from the file");
    assert_eq!(config.raft.election_timeout_max_ms, 3000, "from the environment");
    assert_eq!(config.raft.election_timeout_min_ms, 1000, "the default, beside both");
    assert_eq!(config.limits, LimitsConfig::default());
}

#[test]
fn the_config_path_comes_from_the_flag_over_the_variable() {
    let from_env = config_file("node_id = 1\ndata_dir = \"/env\"\norigin = \"env.example/log\"\n");
    let from_flag = config_file("node_id = 2\ndata_dir = \"/flag\"\norigin = \"flag.example/log\"\n");
    let config = load(&[], &[("AEGIS_CONFIG", path_arg(&from_env))]).expect("config from AEGIS_CONFIG");
    assert_eq!(config.node_id, 1);
    let config = load(&["--config", path_arg(&from_flag)], &[("AEGIS_CONFIG", path_arg(&from_env))])
        .expect("config from --config");
    assert_eq!(config.node_id, 2);
}

#[test]
fn an_empty_variable_counts_as_unset() {
    let config = load(&REQUIRED_FLAGS, &[("AEGIS_RAFT_HEARTBEAT_INTERVAL_MS", ""), ("AEGIS_CONFIG", "")])
        .expect("empty variables are ignored");
    assert_eq!(config.raft.heartbeat_interval_ms, 150);
}

#[test]
fn missing_required_settings_say_how_to_give_them() {
    for (index, (setting, flag, var)) in [
        ("node_id", "--node-id", "AEGIS_NODE_ID"),
        ("data_dir", "--data-dir", "AEGIS_DATA_DIR"),
        ("origin", "--origin", "AEGIS_ORIGIN"),
    ]
    .into_iter()
    .enumerate()
    {
        let mut args = REQUIRED_FLAGS.to_vec();
        args.drain(index * 2..index * 2 + 2);
        let error = load(&args, &[]).expect_err("a required setting is missing");
        assert!(matches!(error, ConfigError::Missing { .. }), "{error:?}");
        assert_eq!(error.setting(), Some(setting));
        let message = error.to_string();
        assert!(message.contains(flag) && message.contains(var), "{message}");
    }
}

#[test]
fn unknown_keys_in_the_file_are_rejected_by_name_and_line() {
    for (text, key, line) in [
        ("node_id = 1\ndata_dir = \"/d\"\norigin = \"o\"\nnode_idd = 2\n", "node_idd", "line 4"),
        (
            "node_id = 1\ndata_dir = \"/d\"\norigin = \"o\"\n[raft]\nheartbeat_ms = 100\n",
            "heartbeat_ms",
            "line 5",
        ),
        (
            "node_id = 1\ndata_dir = \"/d\"\norigin = \"o\"\n[rafts]\nheartbeat_interval_ms = 100\n",
            "rafts",
            "line 4",
        ),
    ] {
        let file = config_file(text);
        let error = load(&["--config", path_arg(&file)], &[]).expect_err("unknown key");
        assert!(matches!(error, ConfigError::File { .. }), "{error:?}");
        let message = error.to_string();
        assert!(message.contains(&format!("unknown field `{key}`")), "{message}");
        assert!(message.contains(line), "{message}");
        assert!(message.contains(path_arg(&file)), "the message names the file: {message}");
    }
}

#[test]
fn unknown_keys_are_rejected_even_when_flags_give_the_required_settings() {
    let file = config_file("[limits]\nrecords_max = 5\n");
    let error =
        load(&[&["--config", path_arg(&file)][..], &REQUIRED_FLAGS].concat(), &[]).expect_err("unknown key");
    let message = error.to_string();
    assert!(message.contains("unknown field `records_max`") && message.contains("line 2"), "{message}");
}

#[test]
fn bad_files_are_reported_with_their_path() {
    let file = config_file("[raft]\nheartbeat_interval_ms = \"fast\"\n");
    let args = [&["--config", path_arg(&file)][..], &REQUIRED_FLAGS].concat();
    let message = load(&args, &[]).expect_err("a string for a number").to_string();
    assert!(message.contains("heartbeat_interval_ms") && message.contains("line 2"), "{message}");

    let file = config_file("node_id = = 1\n");
    let message = load(&["--config", path_arg(&file)], &[]).expect_err("not TOML").to_string();
    assert!(message.contains(path_arg(&file)) && message.contains("line 1"), "{message}");

    let error = load(&["--config", "/nonexistent/aegis.toml"], &[]).expect_err("no such file");
    assert!(matches!(error, ConfigError::ReadFile { .. }), "{error:?}");
    assert!(error.to_string().contains("/nonexistent/aegis.toml"), "{error}");
}

#[test]
fn bad_variables_are_reported_by_name() {
    for (var, value, reason) in [
        ("AEGIS_NODE_ID", "seven", "invalid digit"),
        ("AEGIS_LOG_FORMAT", "xml", "text, json"),
        ("AEGIS_CLIENT_LISTEN", "localhost", "invalid socket address"),
        ("AEGIS_DURABILITY_FSYNC", "yes please", "true"),
    ] {
        let error = load(&REQUIRED_FLAGS, &[(var, value)]).expect_err("a bad variable");
        assert!(matches!(&error, ConfigError::Env { var: named, .. } if named == var), "{error:?}");
        let message = error.to_string();
        assert!(message.contains(var) && message.contains(value) && message.contains(reason), "{message}");
    }
}

#[test]
fn bad_flags_and_help_are_left_to_clap() {
    let error = load(&["--no-such-flag"], &[]).expect_err("unknown flag");
    assert!(
        matches!(&error, ConfigError::Flags(error) if error.kind() == clap::error::ErrorKind::UnknownArgument)
    );

    let error = load(&["--node-id", "seven"], &[]).expect_err("not a number");
    assert!(
        matches!(&error, ConfigError::Flags(error) if error.kind() == clap::error::ErrorKind::ValueValidation)
    );

    let error = load(&["--node-id", "18446744073709551615", "--data-dir", "/d", "--origin", "o"], &[]);
    assert!(matches!(error, Err(ConfigError::Override { .. })), "{error:?}");

    let ConfigError::Flags(help) = load(&["--help"], &[]).expect_err("help") else {
        panic!("help is a clap error")
    };
    assert_eq!(help.kind(), clap::error::ErrorKind::DisplayHelp);
    assert_eq!(help.exit_code(), 0);
    let help = help.to_string();
    assert!(
        help.contains("--raft-heartbeat-interval-ms") && help.contains("AEGIS_RAFT_HEARTBEAT_INTERVAL_MS"),
        "{help}"
    );
}

#[test]
fn loading_validates() {
    let error = load(&["--node-id", "0", "--data-dir", "/d", "--origin", "o"], &[]).expect_err("node id 0");
    assert_eq!(error.setting(), Some("node_id"));
}

#[test]
fn the_test_config_is_valid_and_quick() {
    let config = Config::for_test(3, "/tmp/node-3");
    assert_eq!(config.validate().map_err(|error| error.to_string()), Ok(()));
    assert_eq!(config.node_id, 3);
    assert_eq!(config.data_dir, Path::new("/tmp/node-3"));
    for address in [config.client_listen, config.peer_listen, config.metrics_listen] {
        assert_eq!(address, loopback(0));
    }
    assert_eq!(config.raft.heartbeat_interval_ms, 100);
    assert_eq!((config.raft.election_timeout_min_ms, config.raft.election_timeout_max_ms), (600, 1200));
    assert_eq!(config.checkpoints.interval_ms, 200);
    assert_eq!(config.group_commit.linger_us, 100);
    assert!(config.warnings().is_empty(), "{:?}", config.warnings());
}

/// `edit` applied to a valid config makes `validate` fail on `setting`, with a message that
/// contains `hint`.
fn check_invalid(edit: impl FnOnce(&mut Config), setting: &str, hint: &str) {
    let mut config = Config::for_test(1, "/tmp/aegis");
    edit(&mut config);
    let error = config.validate().expect_err(&format!("{setting}: should be invalid"));
    assert_eq!(error.setting(), Some(setting), "{error}");
    let message = error.to_string();
    assert!(message.starts_with(setting), "the message starts with the setting: {message}");
    assert!(message.contains(hint), "{setting}: {message:?} should mention {hint:?}");
}

fn check_valid(edit: impl FnOnce(&mut Config)) {
    let mut config = Config::for_test(1, "/tmp/aegis");
    edit(&mut config);
    if let Err(error) = config.validate() {
        panic!("should be valid: {error}");
    }
}

#[test]
fn invalid_identity_settings_are_named() {
    check_invalid(|config| config.node_id = 0, "node_id", "positive");
    check_invalid(|config| config.data_dir = PathBuf::new(), "data_dir", "directory");
    check_invalid(|config| config.origin = String::new(), "origin", "non-empty");
    check_invalid(|config| config.origin = "aegis example/log".to_owned(), "origin", "spaces");
    check_invalid(|config| config.origin = "aegis.example/log\n".to_owned(), "origin", "line breaks");
    check_invalid(|config| config.origin = "a".repeat(2000), "origin", "at most");
    check_invalid(|config| config.key_name = Some("ledger one".to_owned()), "key_name", "'+'");
    check_invalid(|config| config.key_name = Some("ledger+1".to_owned()), "key_name", "'+'");
    check_invalid(|config| config.key_name = Some(String::new()), "key_name", "non-empty");
    check_valid(|config| config.key_name = Some("ledger-1.example.com".to_owned()));
}

#[test]
fn invalid_addresses_are_named() {
    let any_port = |port| SocketAddr::from(([0, 0, 0, 0], port));
    check_invalid(
        |config| config.advertise_client_addr = Some("0.0.0.0:7400".to_owned()),
        "advertise_client_addr",
        "0.0.0.0",
    );
    check_invalid(
        |config| config.advertise_peer_addr = Some("[::]:7401".to_owned()),
        "advertise_peer_addr",
        "::",
    );
    check_invalid(
        |config| config.advertise_peer_addr = Some("http://ledger-1:7401".to_owned()),
        "advertise_peer_addr",
        "scheme",
    );
    check_invalid(
        |config| config.advertise_peer_addr = Some("ledger-1".to_owned()),
        "advertise_peer_addr",
        "host:port",
    );
    check_invalid(
        |config| config.advertise_peer_addr = Some("ledger-1:0".to_owned()),
        "advertise_peer_addr",
        "port",
    );
    check_invalid(
        |config| config.advertise_peer_addr = Some("10.0.0.1:0".to_owned()),
        "advertise_peer_addr",
        "port 0",
    );
    check_invalid(
        |config| config.advertise_client_addr = Some(String::new()),
        "advertise_client_addr",
        "host:port",
    );
    check_invalid(
        |config| config.advertise_client_addr = Some("ledger 1:7400".to_owned()),
        "advertise_client_addr",
        "spaces",
    );
    check_invalid(|config| config.client_listen = any_port(7400), "client_listen", "advertise_client_addr");
    check_invalid(|config| config.peer_listen = any_port(7401), "peer_listen", "advertise_peer_addr");
    check_invalid(
        |config| {
            config.client_listen = loopback(7400);
            config.metrics_listen = loopback(7400);
        },
        "metrics_listen",
        "client_listen",
    );
    check_valid(|config| {
        config.client_listen = any_port(7400);
        config.peer_listen = any_port(7401);
        config.advertise_client_addr = Some("ledger-1.internal:7400".to_owned());
        config.advertise_peer_addr = Some("[fd00::1]:7401".to_owned());
    });
}

#[test]
fn invalid_raft_settings_are_named() {
    check_invalid(
        |config| config.raft.heartbeat_interval_ms = 0,
        "raft.heartbeat_interval_ms",
        "greater than 0",
    );
    check_invalid(
        |config| config.raft.election_timeout_min_ms = config.raft.election_timeout_max_ms,
        "raft.election_timeout_min_ms",
        "raft.election_timeout_max_ms",
    );
    check_invalid(
        |config| config.raft.heartbeat_interval_ms = 300,
        "raft.heartbeat_interval_ms",
        "half of raft.election_timeout_min_ms",
    );
    check_valid(|config| config.raft.heartbeat_interval_ms = 299);
    check_invalid(
        |config| config.raft.install_snapshot_timeout_ms = 0,
        "raft.install_snapshot_timeout_ms",
        "0",
    );
    check_invalid(|config| config.raft.snapshot_after_entries = 0, "raft.snapshot_after_entries", "0");
    check_invalid(|config| config.raft.max_payload_entries = 0, "raft.max_payload_entries", "0");
    check_invalid(|config| config.raft.replication_lag_threshold = 0, "raft.replication_lag_threshold", "0");
}

#[test]
fn invalid_limits_are_named() {
    check_invalid(|config| config.limits.record_bytes_max = 0, "limits.record_bytes_max", "greater than 0");
    check_invalid(
        |config| config.limits.append_records_max = 0,
        "limits.append_records_max",
        "greater than 0",
    );
    check_invalid(|config| config.limits.append_bytes_max = 0, "limits.append_bytes_max", "greater than 0");
    check_invalid(|config| config.limits.message_bytes_max = 0, "limits.message_bytes_max", "greater than 0");
    check_invalid(
        |config| config.limits.concurrent_appends_max = 0,
        "limits.concurrent_appends_max",
        "greater than 0",
    );
    check_invalid(
        |config| config.limits.entries_per_request_max = 0,
        "limits.entries_per_request_max",
        "greater than 0",
    );
    check_invalid(
        |config| config.limits.snapshot_chunk_bytes = 0,
        "limits.snapshot_chunk_bytes",
        "greater than 0",
    );
    check_invalid(
        |config| config.limits.watch_subscribers_max = 0,
        "limits.watch_subscribers_max",
        "greater than 0",
    );
    check_invalid(
        |config| config.limits.record_bytes_max = config.limits.append_bytes_max + 1,
        "limits.record_bytes_max",
        "limits.append_bytes_max",
    );
    check_invalid(
        |config| config.limits.append_records_max = config.group_commit.entry_records_max + 1,
        "limits.append_records_max",
        "group_commit.entry_records_max",
    );
    check_invalid(
        |config| config.limits.append_bytes_max = config.group_commit.entry_bytes_max + 1,
        "limits.append_bytes_max",
        "group_commit.entry_bytes_max",
    );
    check_invalid(
        |config| config.group_commit.queue_records_max = config.limits.append_records_max - 1,
        "group_commit.queue_records_max",
        "limits.append_records_max",
    );
    check_invalid(
        |config| config.limits.message_bytes_max = config.limits.append_bytes_max,
        "limits.message_bytes_max",
        "Append request",
    );
    check_invalid(
        |config| config.limits.snapshot_chunk_bytes = config.limits.message_bytes_max,
        "limits.message_bytes_max",
        "snapshot chunk",
    );
    check_invalid(
        |config| {
            config.limits.message_bytes_max = 10 << 20;
            config.group_commit.entry_records_max = 400_000;
            config.group_commit.queue_records_max = 400_000;
        },
        "limits.message_bytes_max",
        "Raft entry",
    );
}

#[test]
fn invalid_group_commit_checkpoint_and_log_settings_are_named() {
    check_invalid(
        |config| config.group_commit.entry_records_max = 0,
        "limits.append_records_max",
        "entry_records_max",
    );
    check_invalid(
        |config| config.group_commit.queue_records_max = 0,
        "group_commit.queue_records_max",
        "append_records_max",
    );
    check_invalid(
        |config| config.group_commit.linger_us = 2_000_000,
        "group_commit.linger_us",
        "microseconds",
    );
    check_valid(|config| config.group_commit.linger_us = 0);
    check_invalid(|config| config.checkpoints.interval_ms = 0, "checkpoints.interval_ms", "greater than 0");
    check_invalid(
        |config| config.checkpoints.cosign_timeout_ms = 0,
        "checkpoints.cosign_timeout_ms",
        "greater than 0",
    );
    check_invalid(
        |config| config.log.filter = "info,ledger_node=loud".to_owned(),
        "log.filter",
        "tracing filter",
    );
    check_valid(|config| config.log.filter = "warn,ledger_node=debug,openraft=info".to_owned());
}

#[test]
fn risky_but_valid_settings_are_warned_about() {
    let mut config = Config::for_test(1, "/tmp/aegis");
    config.durability.fsync = false;
    config.client_listen = SocketAddr::from(([10, 0, 0, 1], 7400));
    let warnings = config.warnings();
    assert_eq!(warnings.len(), 2, "{warnings:?}");
    assert!(warnings[0].contains("durability.fsync"), "{warnings:?}");
    assert!(warnings[1].contains("admin_token_file") && warnings[1].contains("loopback"), "{warnings:?}");
}

/// A response of the metrics server.
pub(crate) struct HttpResponse {
    pub(crate) status: u16,
    content_type: Option<String>,
    pub(crate) body: String,
}

/// A bare HTTP/1.1 GET: the server closes the connection after answering.
pub(crate) async fn http_get(address: SocketAddr, path: &str) -> HttpResponse {
    let exchange = async {
        let mut stream =
            tokio::net::TcpStream::connect(address).await.expect("connect to the metrics server");
        let request = format!("GET {path} HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await.expect("send the request");
        let mut response = Vec::new();
        stream.read_to_end(&mut response).await.expect("read the response");
        String::from_utf8(response).expect("a UTF-8 response")
    };
    let response =
        tokio::time::timeout(Duration::from_secs(10), exchange).await.expect("an answer within 10 s");
    let (head, body) = response.split_once("\r\n\r\n").expect("headers end with a blank line");
    let mut lines = head.lines();
    let status_line = lines.next().expect("a status line");
    let status = status_line.split(' ').nth(1).and_then(|code| code.parse().ok()).expect("a status code");
    let content_type = lines.find_map(|line| {
        let (name, value) = line.split_once(':')?;
        name.eq_ignore_ascii_case("content-type").then(|| value.trim().to_owned())
    });
    HttpResponse { status, content_type, body: body.to_owned() }
}

#[tokio::test]
async fn the_metrics_port_serves_metrics_and_health() {
    let metrics = Metrics::new();
    let listener = tokio::net::TcpListener::bind(loopback(0)).await.expect("bind port 0");
    let address = listener.local_addr().expect("bound address");
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(metrics::serve(listener, metrics.clone(), async {
        let _ = stopped.await;
    }));

    metrics.append_records_total.inc_by(3);
    metrics.tree_size.set(42);
    metrics.is_leader.set(1);
    metrics.entry_records.observe(3.0);
    metrics.proof_latency_seconds(ProofKind::Inclusion).observe(0.001);
    metrics.requests_rejected_total(RejectReason::QueueFull).inc();

    let response = http_get(address, "/metrics").await;
    assert_eq!(response.status, 200);
    assert_eq!(response.content_type.as_deref(), Some(telemetry::exposition::TEXT_CONTENT_TYPE));
    let body = response.body;
    for name in [
        "aegis_ledger_append_latency_seconds",
        "aegis_ledger_append_records_total",
        "aegis_ledger_append_duplicates_total",
        "aegis_ledger_entry_records",
        "aegis_ledger_tree_size",
        "aegis_ledger_published_size",
        "aegis_ledger_applied_index",
        "aegis_ledger_leader_changes_total",
        "aegis_ledger_is_leader",
        "aegis_ledger_proof_latency_seconds",
        "aegis_ledger_requests_rejected_total",
        "aegis_ledger_healthy",
        "aegis_ledger_log_flush_seconds",
    ] {
        assert!(body.contains(&format!("\n{name}")), "/metrics lacks {name}:\n{body}");
    }
    for sample in [
        "aegis_ledger_append_records_total 3\n",
        "aegis_ledger_tree_size 42\n",
        "aegis_ledger_is_leader 1\n",
        "aegis_ledger_entry_records_count 1\n",
        "aegis_ledger_proof_latency_seconds_count{kind=\"inclusion\"} 1\n",
        "aegis_ledger_proof_latency_seconds_count{kind=\"consistency\"} 0\n",
        "aegis_ledger_requests_rejected_total{reason=\"queue_full\"} 1\n",
        "aegis_ledger_requests_rejected_total{reason=\"record_too_large\"} 0\n",
        "aegis_ledger_healthy 1\n",
    ] {
        assert!(body.contains(sample), "/metrics lacks {sample:?}:\n{body}");
    }
    assert!(!body.contains("_total_total"), "{body}");
    assert!(!body.contains("# EOF") && !body.contains("# UNIT"), "the classic text format: {body}");

    let response = http_get(address, "/healthz").await;
    assert_eq!((response.status, response.body.trim()), (200, "ok"));

    let health = metrics.health().clone();
    health.set_unhealthy("the stored root differs from the root recomputed from the peaks");
    health.set_unhealthy("a later consequence");
    assert!(!health.is_healthy());
    assert_eq!(
        health.reason().as_deref(),
        Some("the stored root differs from the root recomputed from the peaks")
    );
    let response = http_get(address, "/healthz").await;
    assert_eq!(response.status, 503);
    assert!(response.body.contains("the stored root differs"), "{}", response.body);
    assert!(http_get(address, "/metrics").await.body.contains("aegis_ledger_healthy 0\n"));

    assert_eq!(http_get(address, "/nothing-here").await.status, 404);

    stop.send(()).expect("the server is running");
    let served = tokio::time::timeout(Duration::from_secs(10), server).await.expect("stops within 10 s");
    served.expect("the server task did not panic").expect("the server stopped cleanly");
}
