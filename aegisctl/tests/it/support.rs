//! Running `aegisctl` and reading what it prints.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use chaos_tests::{LedgerCluster, ORIGIN, audit_record, record_id};
use serde_json::Value;

/// What one `aegisctl` run did.
pub(crate) struct Run {
    pub code: i32,
    pub json: Value,
    pub stderr: String,
}

/// Runs `aegisctl --json <args>`.
pub(crate) fn aegisctl(args: &[&str]) -> Run {
    aegisctl_with_stdin(args, None)
}

pub(crate) fn aegisctl_with_stdin(args: &[&str], stdin: Option<&str>) -> Run {
    let mut command = Command::new(env!("CARGO_BIN_EXE_aegisctl"));
    command.arg("--json").args(args).env_remove("AEGIS_LEDGER_ENDPOINTS").env_remove("AEGIS_TRUST_FILE");
    let output: Output = match stdin {
        Some(input) => {
            use std::io::Write as _;
            let mut child = command
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .expect("start aegisctl");
            child.stdin.take().expect("stdin").write_all(input.as_bytes()).expect("write stdin");
            child.wait_with_output().expect("aegisctl output")
        }
        None => command.output().expect("run aegisctl"),
    };
    let stdout = String::from_utf8_lossy(&output.stdout);
    let json = serde_json::from_str(stdout.trim()).unwrap_or_else(|_| {
        panic!(
            "aegisctl {args:?} printed no JSON: {stdout}\nstderr: {}",
            String::from_utf8_lossy(&output.stderr)
        )
    });
    Run {
        code: output.status.code().expect("exit status"),
        json,
        stderr: String::from_utf8_lossy(&output.stderr).into(),
    }
}

impl Run {
    /// Asserts success and returns the JSON.
    pub(crate) fn ok(self) -> Value {
        assert_eq!(self.code, 0, "aegisctl failed: {}\n{}", self.stderr, self.json);
        self.json
    }
}

/// `--ledger a,b,c` for the cluster's nodes.
pub(crate) fn ledger_arg(cluster: &LedgerCluster) -> String {
    cluster.client_addrs().join(",")
}

/// Writes a trust file for `cluster` (origin, its nodes' keys, majority) with `aegisctl pin`.
pub(crate) fn pin(cluster: &LedgerCluster, dir: &Path) -> PathBuf {
    let path = dir.join("trust.toml");
    let ledger = ledger_arg(cluster);
    aegisctl(&["pin", "--ledger", &ledger, "--out", path.to_str().expect("utf-8 path")]).ok();
    path
}

/// Appends `count` records with ids `record_id(run, first..first+count)`, in batches.
pub(crate) async fn append_records(cluster: &LedgerCluster, run: u32, first: u64, count: u64) {
    let mut next = first;
    while next < first + count {
        let end = (next + 500).min(first + count);
        let records = (next..end).map(|n| audit_record(&record_id(run, n), "acme")).collect();
        cluster.append(records).await;
        next = end;
    }
}

pub(crate) fn origin() -> &'static str {
    ORIGIN
}
