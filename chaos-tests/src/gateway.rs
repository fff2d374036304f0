//! An `aegis-gateway` process on loopback.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use crate::binaries::binary;
use crate::ports::free_port;
use crate::process::{Process, wait_for_port};

/// A gateway process: its configuration file, spool directory and log live under `dir`, and
/// survive restarts (a restarted gateway replays its predecessor's spool).
pub struct GatewayProcess {
    pub id: String,
    pub addr: SocketAddr,
    config: PathBuf,
    spool_dir: PathBuf,
    log: PathBuf,
    ledger_endpoints: String,
    process: Option<Process>,
}

impl GatewayProcess {
    /// Writes `config` (a gateway TOML file; listen address, gateway id, ledger endpoints and
    /// spool directory are given as flags) under `dir`, starts the gateway and waits until
    /// `/readyz` answers 200.
    pub async fn start(dir: &Path, id: &str, config: &str, ledger_endpoints: &[String]) -> Self {
        std::fs::create_dir_all(dir).expect("create the gateway's directory");
        let config_path = dir.join(format!("{id}.toml"));
        std::fs::write(&config_path, config).expect("write the gateway's configuration");
        let mut gateway = Self {
            id: id.to_owned(),
            addr: free_port(),
            config: config_path,
            spool_dir: dir.join(format!("{id}-spool")),
            log: dir.join(format!("{id}.log")),
            ledger_endpoints: ledger_endpoints.join(","),
            process: None,
        };
        gateway.restart().await;
        gateway
    }

    /// Starts the gateway again on the same port, configuration and spool, and waits until it
    /// is ready.
    pub async fn restart(&mut self) {
        assert!(self.process.is_none(), "gateway {} is already running", self.id);
        let mut command = Command::new(binary("aegis-gateway"));
        command
            .arg("--config")
            .arg(&self.config)
            .args(["--listen", &self.addr.to_string()])
            .args(["--gateway-id", &self.id])
            .args(["--ledger-endpoints", &self.ledger_endpoints])
            .arg("--spool-dir")
            .arg(&self.spool_dir)
            .env("RUST_LOG", "warn");
        self.process = Some(Process::spawn(command, &self.log));
        wait_for_port(self.addr, &self.log).await;
        let deadline = Instant::now() + Duration::from_secs(30);
        while http_status(self.addr, "/readyz").await != Some(200) {
            assert!(
                Instant::now() < deadline,
                "gateway {} not ready after 30 s: {}",
                self.id,
                self.log_text()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// SIGTERM and wait for the graceful shutdown (drain, flush the audit sender).
    pub fn stop(&mut self) {
        if let Some(process) = self.process.take() {
            let clean = process.terminate(Duration::from_secs(30));
            assert!(clean, "gateway {} did not shut down within 30 s: {}", self.id, self.log_text());
        }
    }

    /// SIGKILL: whatever was not spooled or sent is lost.
    pub fn kill(&mut self) {
        if let Some(process) = self.process.take() {
            process.kill();
        }
    }

    /// The value of the unlabelled metric `name` in the gateway's `/metrics`, if it answers.
    pub async fn metric(&self, name: &str) -> Option<f64> {
        let body = http_get(self.addr, "/metrics").await?;
        body.lines().find_map(|line| {
            let (metric, value) = line.split_once(' ')?;
            (metric == name).then(|| value.trim().parse().ok()).flatten()
        })
    }

    /// Waits up to `within` until the gateway holds no audit record in memory or in its spool.
    /// Returns whether it drained.
    pub async fn wait_drained(&self, within: Duration) -> bool {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            let queued = self.metric("aegis_gateway_audit_queue_depth").await;
            let spooled = self.metric("aegis_gateway_audit_spool_records").await;
            if queued == Some(0.0) && spooled == Some(0.0) {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        false
    }

    pub fn is_running(&self) -> bool {
        self.process.is_some()
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

/// The body of `GET path` on `addr` when it answers 200.
async fn http_get(addr: SocketAddr, path: &str) -> Option<String> {
    let mut stream = tokio::net::TcpStream::connect(addr).await.ok()?;
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.ok()?;
    let mut response = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut response)).await.ok()?.ok()?;
    let text = String::from_utf8(response).ok()?;
    let (head, body) = text.split_once("\r\n\r\n")?;
    head.starts_with("HTTP/1.1 200").then(|| body.to_owned())
}

/// The status code of `GET path` on `addr`, or `None` if nothing answered.
pub(crate) async fn http_status(addr: SocketAddr, path: &str) -> Option<u16> {
    let mut stream = tokio::net::TcpStream::connect(addr).await.ok()?;
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.ok()?;
    let mut response = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut response)).await.ok()?.ok()?;
    let head = std::str::from_utf8(response.get(..12)?).ok()?;
    head.strip_prefix("HTTP/1.1 ")?.get(..3)?.parse().ok()
}
