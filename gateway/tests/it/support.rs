//! Test fixtures: a real three-process ledger cluster, a gateway served in-process on port 0,
//! and a small HTTP client.

use std::net::{SocketAddr, TcpListener as StdListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use gateway::config::Config;
use http::{HeaderMap, Method, Request, StatusCode};
use http_body_util::{BodyExt as _, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use proto::v1;
use sha2::{Digest as _, Sha256};
use tokio::sync::oneshot;

/// API keys of the test configuration.
pub(crate) const KEY_ALPHA: &str = "sk-test-alpha";
pub(crate) const KEY_NO_PROXY_SCOPE: &str = "sk-test-noscope";
pub(crate) const KEY_LIMITED: &str = "sk-test-limited";
pub(crate) const KEY_BETA: &str = "sk-test-beta";

/// Three `aegis-ledger` processes on this machine, initialised as one cluster.
pub(crate) struct LedgerCluster {
    _dir: tempfile::TempDir,
    nodes: Vec<LedgerProcess>,
}

struct LedgerProcess {
    id: u64,
    client: SocketAddr,
    peer: SocketAddr,
    metrics: SocketAddr,
    data_dir: PathBuf,
    log: PathBuf,
    child: Option<Child>,
}

impl LedgerCluster {
    pub(crate) async fn start() -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let nodes = (1..=3)
            .map(|id| LedgerProcess {
                id,
                client: free_port(),
                peer: free_port(),
                metrics: free_port(),
                data_dir: dir.path().join(format!("node-{id}")),
                log: dir.path().join(format!("node-{id}.log")),
                child: None,
            })
            .collect();
        let mut cluster = Self { _dir: dir, nodes };
        cluster.start_processes().await;
        let mut members = Vec::new();
        for node in &cluster.nodes {
            let status =
                admin(node.client).await.status(v1::StatusRequest {}).await.expect("status").into_inner();
            members.push(status.node.expect("a node reports itself"));
        }
        admin(cluster.nodes[0].client).await.init(v1::InitRequest { members }).await.expect("init");
        cluster.wait_for_leader().await;
        cluster
    }

    pub(crate) fn endpoints(&self) -> Vec<String> {
        self.nodes.iter().map(|node| format!("http://{}", node.client)).collect()
    }

    /// Kills every node (SIGKILL: nothing is flushed that was not already durable).
    pub(crate) fn kill_all(&mut self) {
        for node in &mut self.nodes {
            if let Some(mut child) = node.child.take() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }

    /// Restarts every node on its data directory and waits for a leader.
    pub(crate) async fn restart_all(&mut self) {
        self.start_processes().await;
        self.wait_for_leader().await;
    }

    async fn start_processes(&mut self) {
        let binary = ledger_binary();
        for node in &mut self.nodes {
            let log =
                std::fs::OpenOptions::new().create(true).append(true).open(&node.log).expect("log file");
            let child = Command::new(&binary)
                .args(["--node-id", &node.id.to_string()])
                .arg("--data-dir")
                .arg(&node.data_dir)
                .args(["--origin", "aegis.test/ledger"])
                .args(["--client-listen", &node.client.to_string()])
                .args(["--peer-listen", &node.peer.to_string()])
                .args(["--metrics-listen", &node.metrics.to_string()])
                .env("RUST_LOG", "warn")
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .expect("start aegis-ledger");
            node.child = Some(child);
        }
        for node in &self.nodes {
            wait_for_port(node.client, &node.log).await;
        }
    }

    async fn wait_for_leader(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let mut client = admin(self.nodes[0].client).await;
            let status =
                tokio::time::timeout(Duration::from_secs(1), client.status(v1::StatusRequest {})).await;
            if let Ok(Ok(status)) = status
                && status.into_inner().leader_id.is_some()
            {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "no ledger leader after 30 s; see {}",
                self.nodes[0].log.display()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The ledger's applied tree size, as node 1 reports it.
    pub(crate) async fn tree_size(&self) -> u64 {
        let status = admin(self.nodes[0].client).await.status(v1::StatusRequest {}).await.expect("status");
        status.into_inner().applied_tree_size
    }

    /// The inclusion proof of `record_id` against the latest published checkpoint, waiting
    /// (up to 20 s) until it is published.
    pub(crate) async fn proof(&self, record_id: &str) -> v1::GetInclusionProofResponse {
        let deadline = Instant::now() + Duration::from_secs(20);
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", self.nodes[0].client))
            .expect("endpoint")
            .connect_lazy();
        let mut client = proto::LedgerClient::new(channel);
        loop {
            let request = v1::GetInclusionProofRequest {
                leaf: Some(v1::get_inclusion_proof_request::Leaf::RecordId(record_id.to_owned())),
                tree_size: None,
            };
            match client.get_inclusion_proof(request).await {
                Ok(response) => return response.into_inner(),
                Err(status) => {
                    assert!(
                        Instant::now() < deadline,
                        "record {record_id} not provable after 20 s: {status}"
                    );
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        }
    }
}

impl Drop for LedgerCluster {
    fn drop(&mut self) {
        self.kill_all();
    }
}

async fn admin(address: SocketAddr) -> proto::AdminClient<tonic::transport::Channel> {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{address}"))
        .expect("endpoint")
        .connect_lazy();
    proto::AdminClient::new(channel)
}

/// The `aegis-ledger` binary: `AEGIS_LEDGER_BIN`, or next to this test's target directory
/// (built by `cargo test --workspace`), built on demand otherwise.
fn ledger_binary() -> PathBuf {
    if let Ok(path) = std::env::var("AEGIS_LEDGER_BIN") {
        return PathBuf::from(path);
    }
    let exe = std::env::current_exe().expect("test executable path");
    let target_profile = exe.parent().and_then(Path::parent).expect("target/<profile>/deps/<test>");
    let binary = target_profile.join("aegis-ledger");
    if !binary.exists() {
        let status = Command::new(env!("CARGO"))
            .args(["build", "-p", "ledger-node", "--bin", "aegis-ledger"])
            .status()
            .expect("run cargo build");
        assert!(status.success(), "building aegis-ledger failed");
    }
    binary
}

/// A port nobody listens on right now, below Linux's ephemeral range (32768 and up) so that no
/// outgoing connection of a parallel test takes it while a ledger node restarts on it.
pub(crate) fn free_port() -> SocketAddr {
    static NEXT: AtomicU16 = AtomicU16::new(0);
    let _ = NEXT.compare_exchange(
        0,
        20_000 + (std::process::id() % 5_000) as u16,
        Ordering::Relaxed,
        Ordering::Relaxed,
    );
    loop {
        let port = NEXT.fetch_add(1, Ordering::Relaxed);
        assert!(port < 32_000, "ran out of test ports");
        if let Ok(listener) = StdListener::bind(("127.0.0.1", port)) {
            return listener.local_addr().expect("bound address");
        }
    }
}

async fn wait_for_port(address: SocketAddr, log: &Path) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while tokio::net::TcpStream::connect(address).await.is_err() {
        assert!(
            Instant::now() < deadline,
            "ledger node at {address} did not start: {}",
            std::fs::read_to_string(log).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Lowercase hex SHA-256 of `key`, as the configuration stores it.
pub(crate) fn key_hash(key: &str) -> String {
    Sha256::digest(key.as_bytes()).iter().map(|byte| format!("{byte:02x}")).collect()
}

/// The test configuration: a mock upstream, tenants `alpha` (async) and `beta`, four keys.
pub(crate) fn config(ledger_endpoints: &[String], spool_dir: &Path) -> Config {
    let endpoints: Vec<String> = ledger_endpoints.iter().map(|endpoint| format!("{endpoint:?}")).collect();
    let text = format!(
        r#"
gateway_id = "gw-test"
listen = "127.0.0.1:0"
[limits]
body_bytes_max = 65536
json_depth_max = 16
messages_max = 64
stream_keepalive_ms = 100
[[upstreams]]
name = "mock"
kind = "mock"
models = ["mock-1", "mock-*", "claude-mock"]
[upstreams.mock]
chunk_count = 6
[[tenants]]
id = "alpha"
[[tenants]]
id = "beta"
[[credentials]]
id = "alpha-app"
tenant = "alpha"
key_sha256 = "{alpha}"
scopes = ["proxy", "audit:read"]
[[credentials]]
id = "alpha-reader"
tenant = "alpha"
key_sha256 = "{noscope}"
scopes = ["audit:read"]
[[credentials]]
id = "beta-limited"
tenant = "beta"
key_sha256 = "{limited}"
scopes = ["proxy", "audit:read"]
requests_per_minute = 1
requests_burst = 1
[[credentials]]
id = "beta-app"
tenant = "beta"
key_sha256 = "{beta}"
scopes = ["proxy", "audit:read"]
[audit]
ledger_endpoints = [{endpoints}]
spool_dir = "{spool}"
append_timeout_ms = 1000
append_attempts = 2
retry_backoff_initial_ms = 20
retry_backoff_max_ms = 200
linger_ms = 2
"#,
        alpha = key_hash(KEY_ALPHA),
        noscope = key_hash(KEY_NO_PROXY_SCOPE),
        limited = key_hash(KEY_LIMITED),
        beta = key_hash(KEY_BETA),
        endpoints = endpoints.join(", "),
        spool = spool_dir.display(),
    );
    let config = Config::from_toml(&text, "test config").expect("test config parses");
    config.validate().expect("test config is valid");
    config
}

/// A gateway served in-process until dropped (or `stop`ped).
pub(crate) struct Gateway {
    pub(crate) address: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
}

impl Gateway {
    pub(crate) async fn start(config: Config) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let address = listener.local_addr().expect("address");
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(gateway::serve(config, listener, async {
            let _ = stopped.await;
        }));
        Self { address, stop: Some(stop), task: Some(task) }
    }

    pub(crate) fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.address)
    }

    /// Shuts the gateway down gracefully and waits for it.
    pub(crate) async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            task.await.expect("gateway task").expect("gateway shut down cleanly");
        }
    }

    /// The value of a metric line (`name` with its labels, if any) in `/metrics`.
    pub(crate) async fn metric(&self, name: &str) -> f64 {
        let response = get(&self.url("/metrics"), None).await;
        let text = String::from_utf8_lossy(&response.body).into_owned();
        text.lines()
            .find_map(|line| line.strip_prefix(name).and_then(|rest| rest.strip_prefix(' ')))
            .and_then(|value| value.trim().parse().ok())
            .unwrap_or_else(|| panic!("metric {name} not in /metrics:\n{text}"))
    }
}

/// A response as the test client saw it.
pub(crate) struct Reply {
    pub(crate) status: StatusCode,
    pub(crate) headers: HeaderMap,
    pub(crate) body: Bytes,
}

impl Reply {
    pub(crate) fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|error| panic!("not JSON ({error}): {}", String::from_utf8_lossy(&self.body)))
    }

    pub(crate) fn record_id(&self) -> String {
        self.headers
            .get("x-aegis-record-id")
            .expect("every response carries x-aegis-record-id")
            .to_str()
            .expect("ascii")
            .to_owned()
    }
}

fn client() -> Client<HttpConnector, Full<Bytes>> {
    Client::builder(TokioExecutor::new()).build(HttpConnector::new())
}

pub(crate) async fn post(url: &str, key: Option<&str>, body: &str) -> Reply {
    send(Method::POST, url, key, Bytes::from(body.to_owned()), &[]).await
}

pub(crate) async fn post_with_headers(
    url: &str,
    key: Option<&str>,
    body: &str,
    headers: &[(&str, &str)],
) -> Reply {
    send(Method::POST, url, key, Bytes::from(body.to_owned()), headers).await
}

pub(crate) async fn get(url: &str, key: Option<&str>) -> Reply {
    send(Method::GET, url, key, Bytes::new(), &[]).await
}

async fn send(method: Method, url: &str, key: Option<&str>, body: Bytes, headers: &[(&str, &str)]) -> Reply {
    let mut request = Request::builder().method(method).uri(url).header("content-type", "application/json");
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    if let Some(key) = key {
        request = request.header("authorization", format!("Bearer {key}"));
    }
    let response =
        client().request(request.body(Full::new(body)).expect("request")).await.expect("gateway answers");
    let (parts, body) = response.into_parts();
    let body = body.collect().await.expect("body").to_bytes();
    Reply { status: parts.status, headers: parts.headers, body }
}
