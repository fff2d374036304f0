//! A ledger cluster of `aegis-ledger` processes on loopback, initialised as one Raft group.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use proto::v1;
use tonic::transport::{Channel, Endpoint};

use crate::binaries::binary;
use crate::disk::Tmpfs;
use crate::ports::free_port;
use crate::process::{Process, wait_for_port};
use crate::relay::{Network, source_ip};

/// The checkpoint origin of every test cluster.
pub const ORIGIN: &str = "aegis.test/ledger";

/// One ledger node: its addresses, data directory and (while running) its process.
pub struct LedgerNode {
    pub id: u64,
    pub client: SocketAddr,
    pub peer: SocketAddr,
    pub metrics: SocketAddr,
    pub data_dir: PathBuf,
    pub log: PathBuf,
    process: Option<Process>,
}

impl LedgerNode {
    /// `http://<client address>`, as gRPC clients take it.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.client)
    }

    /// The node's checkpoint signing key file (created by the node on first start).
    pub fn signing_key_file(&self) -> PathBuf {
        self.data_dir.join("checkpoint.key")
    }

    pub fn is_running(&self) -> bool {
        self.process.is_some()
    }
}

/// How to start a test cluster.
#[derive(Debug, Clone)]
pub struct ClusterOptions {
    /// How many nodes (ids 1..=nodes).
    pub nodes: u64,
    /// Added to every node's command line.
    pub extra_args: Vec<String>,
    /// Signing key files to give nodes 1, 2, ... instead of letting them create their own
    /// (to build a cluster that signs with another's keys: a fork).
    pub signing_keys: Vec<PathBuf>,
    /// Start the nodes but leave them for the test to initialise.
    pub uninitialised: bool,
    /// Environment variables for every node (e.g. `OTEL_EXPORTER_OTLP_ENDPOINT`).
    pub env: Vec<(String, String)>,
    /// Route peer traffic through fault-injecting relays ([`LedgerCluster::network`]).
    pub relays: bool,
    /// Give node `.0` (an id) a data directory on a tmpfs of `.1` bytes, to fill it up.
    pub small_disk: Option<(u64, u64)>,
}

impl Default for ClusterOptions {
    fn default() -> Self {
        Self {
            nodes: 3,
            extra_args: Vec::new(),
            signing_keys: Vec::new(),
            uninitialised: false,
            env: Vec::new(),
            relays: false,
            small_disk: None,
        }
    }
}

/// Ledger nodes as separate processes, each with its own data directory and log file under one
/// temporary directory. Dropping the cluster kills every node.
pub struct LedgerCluster {
    /// Unmounted before `dir` is removed (fields drop in order, after `Drop::drop` killed the nodes).
    mounts: Vec<Tmpfs>,
    dir: tempfile::TempDir,
    nodes: Vec<LedgerNode>,
    extra_args: Vec<String>,
    env: Vec<(String, String)>,
    network: Option<Network>,
}

impl LedgerCluster {
    /// Starts three nodes, initialises them as one cluster and waits for a leader.
    pub async fn start() -> Self {
        Self::start_with(ClusterOptions::default()).await
    }

    /// Starts the nodes `options` describe; unless told not to, initialises them as one cluster
    /// and waits for a leader.
    pub async fn start_with(options: ClusterOptions) -> Self {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let nodes: Vec<LedgerNode> = (1..=options.nodes)
            .map(|id| LedgerNode {
                id,
                client: free_port(),
                peer: free_port(),
                metrics: free_port(),
                data_dir: dir.path().join(format!("node-{id}")),
                log: dir.path().join(format!("node-{id}.log")),
                process: None,
            })
            .collect();
        for (node, key) in nodes.iter().zip(&options.signing_keys) {
            std::fs::create_dir_all(&node.data_dir).expect("create the node's data directory");
            std::fs::copy(key, node.signing_key_file()).expect("copy the node's signing key");
        }
        let mut mounts = Vec::new();
        if let Some((id, bytes)) = options.small_disk {
            let node = nodes.iter().find(|node| node.id == id).expect("small_disk names a node");
            mounts.push(Tmpfs::mount(&node.data_dir, bytes));
        }
        let network = options
            .relays
            .then(|| Network::start(&nodes.iter().map(|node| (node.id, node.peer)).collect::<Vec<_>>()));
        let mut cluster =
            Self { mounts, dir, nodes, extra_args: options.extra_args, env: options.env, network };
        for index in 0..cluster.nodes.len() {
            cluster.spawn(index);
        }
        for node in &cluster.nodes {
            wait_for_port(node.client, &node.log).await;
        }
        if !options.uninitialised {
            let mut members = Vec::new();
            for index in 0..cluster.nodes.len() {
                members.push(cluster.status(index).await.node.expect("a node reports itself"));
            }
            admin(cluster.nodes[0].client).init(v1::InitRequest { members }).await.expect("init");
            cluster.wait_for_leader().await;
        }
        cluster
    }

    /// The directory holding every node's data directory and log.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn nodes(&self) -> &[LedgerNode] {
        &self.nodes
    }

    /// Every node's client endpoint (`http://host:port`).
    pub fn endpoints(&self) -> Vec<String> {
        self.nodes.iter().map(LedgerNode::endpoint).collect()
    }

    /// Every node's client address (`host:port`).
    pub fn client_addrs(&self) -> Vec<String> {
        self.nodes.iter().map(|node| node.client.to_string()).collect()
    }

    /// The relays between the nodes.
    ///
    /// # Panics
    ///
    /// If the cluster was started without [`ClusterOptions::relays`].
    pub fn network(&self) -> &Network {
        self.network.as_ref().expect("the cluster was started with relays")
    }

    /// The tmpfs of [`ClusterOptions::small_disk`].
    ///
    /// # Panics
    ///
    /// If the cluster was started without one.
    pub fn small_disk(&self) -> &Tmpfs {
        self.mounts.first().expect("the cluster was started with a small disk")
    }

    /// The process id of node `index`, if it runs.
    pub fn pid(&self, index: usize) -> Option<u32> {
        self.nodes[index].process.as_ref().map(Process::pid)
    }

    /// SIGSTOP: the node freezes (timers, connections and all) until [`Self::resume`].
    pub fn pause(&self, index: usize) {
        self.nodes[index].process.as_ref().expect("a running node").signal("STOP");
    }

    /// SIGCONT after [`Self::pause`].
    pub fn resume(&self, index: usize) {
        self.nodes[index].process.as_ref().expect("a running node").signal("CONT");
    }

    /// Whether node `index`'s process has exited (by itself: a crash or a fatal error).
    pub fn has_exited(&mut self, index: usize) -> bool {
        self.nodes[index].process.as_mut().is_some_and(|process| !process.is_running())
    }

    /// Forgets node `index`'s exited process, so it can be restarted.
    pub fn reap(&mut self, index: usize) {
        if let Some(process) = self.nodes[index].process.take() {
            process.kill();
        }
    }

    /// Kills node `index` (SIGKILL: nothing is flushed that was not already durable).
    pub fn kill(&mut self, index: usize) {
        if let Some(process) = self.nodes[index].process.take() {
            process.kill();
        }
    }

    /// Starts node `index` again on its data directory and waits for its client port.
    pub async fn restart(&mut self, index: usize) {
        self.spawn(index);
        wait_for_port(self.nodes[index].client, &self.nodes[index].log).await;
    }

    /// Starts node `index` again on its data directory without waiting for anything (it may
    /// refuse to serve).
    pub fn start_node(&mut self, index: usize) {
        self.spawn(index);
    }

    /// The status code of node `index`'s `GET /healthz`, if it answers.
    pub async fn healthz(&self, index: usize) -> Option<u16> {
        crate::gateway::http_status(self.nodes[index].metrics, "/healthz").await
    }

    /// SIGTERM to node `index`; returns whether it shut down cleanly within 30 s.
    pub fn stop(&mut self, index: usize) -> bool {
        self.nodes[index].process.take().is_none_or(|process| process.terminate(Duration::from_secs(30)))
    }

    /// The index of the node the first answering running node names as leader.
    pub async fn leader_index(&self) -> Option<usize> {
        for node in &self.nodes {
            if !node.is_running() {
                continue;
            }
            let mut admin = admin(node.client);
            let status =
                tokio::time::timeout(Duration::from_secs(1), admin.status(v1::StatusRequest {})).await;
            if let Ok(Ok(status)) = status
                && let Some(leader) = status.into_inner().leader_id
            {
                return self.nodes.iter().position(|node| node.id == leader);
            }
        }
        None
    }

    /// Kills every node.
    pub fn kill_all(&mut self) {
        for index in 0..self.nodes.len() {
            self.kill(index);
        }
    }

    /// Restarts every node on its data directory and waits for a leader.
    pub async fn restart_all(&mut self) {
        for index in 0..self.nodes.len() {
            self.spawn(index);
        }
        for node in &self.nodes {
            wait_for_port(node.client, &node.log).await;
        }
        self.wait_for_leader().await;
    }

    fn spawn(&mut self, index: usize) {
        let node = &mut self.nodes[index];
        assert!(node.process.is_none(), "node {} is already running", node.id);
        let mut command = Command::new(binary("aegis-ledger"));
        command
            .args(["--node-id", &node.id.to_string()])
            .arg("--data-dir")
            .arg(&node.data_dir)
            .args(["--origin", ORIGIN])
            .args(["--client-listen", &node.client.to_string()])
            .args(["--peer-listen", &node.peer.to_string()])
            .args(["--metrics-listen", &node.metrics.to_string()])
            .args(&self.extra_args)
            .env("RUST_LOG", "warn")
            .envs(self.env.iter().map(|(name, value)| (name, value)));
        if let Some(network) = &self.network {
            command
                .args(["--advertise-peer-addr", &network.relay_addr(node.id).to_string()])
                .args(["--peer-source-ip", &source_ip(node.id).to_string()]);
        }
        node.process = Some(Process::spawn(command, &node.log));
    }

    /// Waits up to 30 s until the first running node knows a leader.
    pub async fn wait_for_leader(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        let node = self.nodes.iter().find(|node| node.is_running()).expect("a running node");
        loop {
            let status =
                tokio::time::timeout(Duration::from_secs(1), admin(node.client).status(v1::StatusRequest {}))
                    .await;
            if let Ok(Ok(status)) = status
                && status.into_inner().leader_id.is_some()
            {
                return;
            }
            assert!(Instant::now() < deadline, "no ledger leader after 30 s; see {}", node.log.display());
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Node `index`'s view of the cluster.
    pub async fn status(&self, index: usize) -> v1::StatusResponse {
        admin(self.nodes[index].client).status(v1::StatusRequest {}).await.expect("status").into_inner()
    }

    /// Node `index`'s view of the cluster, if it answers within a second.
    pub async fn try_status(&self, index: usize) -> Option<v1::StatusResponse> {
        let mut admin = admin(self.nodes[index].client);
        let status = tokio::time::timeout(Duration::from_secs(1), admin.status(v1::StatusRequest {})).await;
        Some(status.ok()?.ok()?.into_inner())
    }

    /// Waits up to 30 s until node `index` applied `size` leaves.
    ///
    /// # Panics
    ///
    /// On timeout, with the end of the node's log.
    pub async fn wait_applied(&self, index: usize, size: u64) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.try_status(index).await.is_none_or(|status| status.applied_tree_size < size) {
            assert!(
                Instant::now() < deadline,
                "node {} did not apply {size} leaves within 30 s; its log ends:\n{}",
                index + 1,
                self.log_tail(index, 20)
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The last `lines` lines of node `index`'s log.
    pub fn log_tail(&self, index: usize, lines: usize) -> String {
        let log = std::fs::read_to_string(&self.nodes[index].log).unwrap_or_default();
        let all: Vec<&str> = log.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// The ledger's applied tree size, as the first running node reports it.
    pub async fn tree_size(&self) -> u64 {
        let index = self.nodes.iter().position(LedgerNode::is_running).expect("a running node");
        self.status(index).await.applied_tree_size
    }

    /// Every member's verifier key, as the first node reports them.
    pub async fn verifier_keys(&self) -> Vec<String> {
        self.status(0).await.verifier_keys
    }

    /// A `Ledger` client of node `index`.
    pub fn ledger(&self, index: usize) -> proto::LedgerClient<Channel> {
        proto::LedgerClient::new(channel(self.nodes[index].client))
    }

    /// Appends `records` through node 0 (forwarded to the leader) and returns the reply.
    pub async fn append(&self, records: Vec<Vec<u8>>) -> v1::AppendResponse {
        self.ledger(0).append(v1::AppendRequest { records }).await.expect("append").into_inner()
    }

    /// Waits (up to 30 s) until node 0 has published a checkpoint of at least `size` leaves.
    pub async fn wait_for_published(&self, size: u64) -> v1::SignedCheckpoint {
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut client = self.ledger(0);
        loop {
            if let Ok(response) = client.get_checkpoint(v1::GetCheckpointRequest { tree_size: None }).await
                && let Some(checkpoint) = response.into_inner().checkpoint
                && checkpoint.tree_size >= size
            {
                return checkpoint;
            }
            assert!(Instant::now() < deadline, "no checkpoint of {size} leaves published after 30 s");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The inclusion proof of `record_id` against the latest published checkpoint, waiting
    /// (up to 20 s) until it is published.
    pub async fn proof(&self, record_id: &str) -> v1::GetInclusionProofResponse {
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut client = self.ledger(0);
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

/// A lazily connected gRPC channel to `address`. A node that is down is reported within a
/// second (connection refused or timed out), so callers can retry elsewhere.
pub(crate) fn channel(address: SocketAddr) -> Channel {
    Endpoint::from_shared(format!("http://{address}"))
        .expect("a valid endpoint")
        .connect_timeout(Duration::from_secs(1))
        .connect_lazy()
}

fn admin(address: SocketAddr) -> proto::AdminClient<Channel> {
    proto::AdminClient::new(channel(address))
}
