//! Assembles a ledger node: storage, Raft, group commit, the three listeners (client, peer,
//! metrics), checkpoint publication; and takes it down again in order.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tonic::transport::Server;
use tonic::transport::server::TcpIncoming;

use crate::admin_service::AdminService;
use crate::batcher::{AppendBatcher, BatcherSettings};
use crate::checkpointer::{self, CheckpointSigner, PublisherSettings};
use crate::config::Config;
use crate::ledger_service::{LedgerService, ServiceLimits};
use crate::metrics::{self, Health, Metrics};
use crate::network::{PeerNetwork, PeerNetworkSettings};
use crate::peer_service::PeerService;
use crate::storage::durable::{SyncMode, Syncer};
use crate::storage::ledger::AppliedState;
use crate::storage::log_store::LogStore;
use crate::storage::reader::LedgerReader;
use crate::storage::state_machine::StateMachineStore;
use crate::storage::watermark::Watermark;
use crate::types::{NodeId, NodeInfo, Raft};

/// How long shutdown waits for in-flight requests before it stops the servers anyway.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// A started node. Dropping it does not stop it: call [`LedgerNode::shutdown`].
pub struct LedgerNode {
    pub node_id: NodeId,
    pub raft: Raft,
    /// Where this node's client service (Ledger, Admin) listens.
    pub client_addr: SocketAddr,
    pub peer_addr: SocketAddr,
    pub metrics_addr: SocketAddr,
    /// This node's own member description, as `Init`/`AddNode` need it.
    pub info: NodeInfo,
    pub reader: LedgerReader,
    pub applied: watch::Receiver<AppliedState>,
    pub health: Health,
    stop: watch::Sender<bool>,
    tasks: JoinSet<anyhow::Result<()>>,
}

/// Runs a node until `shutdown` completes, then stops it cleanly.
///
/// A node whose stored ledger fails its start-up checks does not serve it: it logs why, keeps
/// only the metrics port up (`/healthz` answers 503 with the reason, so an orchestrator sees it)
/// until `shutdown`, then returns the error.
pub async fn run(config: Config, shutdown: impl Future<Output = ()> + Send + 'static) -> anyhow::Result<()> {
    let metrics = Metrics::new();
    let node = match LedgerNode::start_with_metrics(&config, metrics.clone()).await {
        Ok(node) => node,
        Err(error) if !metrics.health().is_healthy() => {
            tracing::error!(error = format!("{error:#}"), "refusing to serve this node's ledger");
            let listener = bind(config.metrics_listen, "metrics").await?;
            metrics::serve(listener, metrics, shutdown).await.context("metrics server")?;
            return Err(error);
        }
        Err(error) => return Err(error),
    };
    tracing::info!(
        node_id = node.node_id,
        client = %node.client_addr,
        peer = %node.peer_addr,
        metrics = %node.metrics_addr,
        verifier_key = %node.info.verifier_key,
        "ledger node started"
    );
    // A node whose Raft stopped on a fatal error (a log or state machine write failed: disk
    // full, I/O error) can no longer persist or apply anything. Serving on would answer reads
    // from a frozen state forever; fail-stop instead, so the supervisor restarts it on its
    // durable state once the disk is fixed.
    tokio::select! {
        () = shutdown => node.shutdown().await,
        fatal = node.raft_failed() => {
            tracing::error!(
                error = %fatal,
                "Raft stopped on a fatal error: this node can no longer persist or apply entries. Exiting so \
                 that it restarts on its durable state; check the data directory's disk (space, I/O errors)"
            );
            let _ = node.shutdown().await;
            Err(anyhow::anyhow!("Raft stopped on a fatal error: {fatal}"))
        }
    }
}

impl LedgerNode {
    /// Opens storage, binds the listeners and starts every task.
    pub async fn start(config: &Config) -> anyhow::Result<Self> {
        Self::start_with_metrics(config, Metrics::new()).await
    }

    /// [`Self::start`], reporting into `metrics` (whose health flag says why a start failed).
    pub async fn start_with_metrics(config: &Config, metrics: Metrics) -> anyhow::Result<Self> {
        config.validate().context("invalid configuration")?;
        let health = metrics.health().clone();

        std::fs::create_dir_all(&config.data_dir)
            .with_context(|| format!("creating the data directory {}", config.data_dir.display()))?;
        let sled_dir = config.data_dir.join("sled");
        let db = sled::Config::new()
            .path(&sled_dir)
            .segment_size(crate::storage::SLED_SEGMENT_BYTES)
            // The ledger only appends: favour write throughput over rewriting for space.
            .mode(sled::Mode::HighThroughput)
            .open()
            .with_context(|| format!("opening the sled database in {}", sled_dir.display()))?;
        let mode = if config.durability.fsync { SyncMode::Fdatasync } else { SyncMode::SledFlushOnly };
        let syncer = Syncer::new(&db, &sled_dir, mode).context("starting the log syncer")?;
        let unhealthy = |error: &dyn std::fmt::Display| health.set_unhealthy(error.to_string());
        let (watermark, mark) = Watermark::open(&config.data_dir).inspect_err(|error| unhealthy(error))?;
        let log_store = LogStore::open(&db, syncer.clone(), watermark).context("opening the Raft log")?;
        log_store
            .check_watermark(mark)
            .inspect_err(|error| unhealthy(error))
            .context("checking the Raft log")?;
        let state_machine =
            StateMachineStore::open(&db, &config.data_dir.join("snapshots"), &config.origin, syncer.clone())
                .map_err(|error| {
                    health.set_unhealthy(error.to_string());
                    anyhow::Error::new(error)
                })
                .context("opening the ledger state")?;
        let reader = state_machine.reader();
        let applied = state_machine.subscribe();

        let signer =
            checkpointer::load_or_create_signer(&config.signing_key_path(), &config.checkpoint_key_name())?;
        let client_listener = bind(config.client_listen, "client").await?;
        let peer_listener = bind(config.peer_listen, "peer").await?;
        let metrics_listener = bind(config.metrics_listen, "metrics").await?;
        let (client_addr, peer_addr, metrics_addr) =
            (client_listener.local_addr()?, peer_listener.local_addr()?, metrics_listener.local_addr()?);
        let info = NodeInfo {
            peer_addr: config.advertised_peer_addr(peer_addr),
            client_addr: config.advertised_client_addr(client_addr),
            verifier_key: signer.verifier_key().to_string(),
        };

        let raft_config = Arc::new(raft_config(config)?);
        let network = PeerNetwork::new(PeerNetworkSettings {
            connect_timeout: Duration::from_secs(2),
            message_bytes_max: config.limits.message_bytes_max,
            source_ip: config.peer_source_ip,
        });
        let raft = Raft::new(config.node_id, raft_config, network.clone(), log_store, state_machine)
            .await
            .context("starting Raft")?;

        let batcher = AppendBatcher::start(
            raft.clone(),
            BatcherSettings {
                entry_records_max: config.group_commit.entry_records_max,
                entry_bytes_max: config.group_commit.entry_bytes_max,
                linger: config.group_commit.linger(),
                queue_records_max: config.group_commit.queue_records_max,
                entries_in_flight_max: crate::batcher::ENTRIES_IN_FLIGHT_MAX,
            },
            metrics.clone(),
        );
        let limits = ServiceLimits {
            record_bytes_max: config.limits.record_bytes_max,
            append_records_max: config.limits.append_records_max,
            append_bytes_max: config.limits.append_bytes_max,
            entries_per_request_max: config.limits.entries_per_request_max,
            watch_subscribers_max: config.limits.watch_subscribers_max,
            message_bytes_max: config.limits.message_bytes_max,
            concurrent_appends_max: config.limits.concurrent_appends_max,
        };
        let ledger = LedgerService::new(
            config.node_id,
            raft.clone(),
            batcher,
            reader.clone(),
            applied.clone(),
            limits,
            metrics.clone(),
        )
        .context("starting the ledger reader threads")?;
        let admin_token = match &config.admin_token_file {
            Some(path) => Some(
                std::fs::read_to_string(path)
                    .with_context(|| format!("reading the admin token from {}", path.display()))?
                    .trim()
                    .to_owned(),
            ),
            None => None,
        };
        let admin = AdminService::new(
            config.node_id,
            info.clone(),
            config.origin.clone(),
            raft.clone(),
            reader.clone(),
            applied.clone(),
            health.clone(),
            admin_token,
        );
        let cosigner = Arc::new(CheckpointSigner::new(
            signer,
            config.origin.clone(),
            reader.clone(),
            applied.clone(),
            health.clone(),
        ));
        let peer = PeerService::new(raft.clone(), cosigner.clone());

        let (health_reporter, health_service) = tonic_health::server::health_reporter();
        health_reporter.set_serving::<proto::LedgerServer<LedgerService>>().await;
        let reflection = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(proto::FILE_DESCRIPTOR_SET)
            .build_v1()
            .context("building the gRPC reflection service")?;

        let (stop, stopped) = watch::channel(false);
        let mut tasks = JoinSet::new();
        let client_server = Server::builder()
            .add_service(ledger.into_server())
            .add_service(admin.into_server())
            .add_service(health_service)
            .add_service(reflection);
        tasks.spawn({
            let stopped = stopped.clone();
            async move {
                client_server
                    .serve_with_incoming_shutdown(incoming(client_listener), wait(stopped))
                    .await
                    .context("client service")
            }
        });
        let peer_server = Server::builder().add_service(peer.into_server(config.limits.message_bytes_max));
        tasks.spawn({
            let stopped = stopped.clone();
            async move {
                peer_server
                    .serve_with_incoming_shutdown(incoming(peer_listener), wait(stopped))
                    .await
                    .context("peer service")
            }
        });
        tasks.spawn({
            let (metrics, stopped) = (metrics.clone(), stopped.clone());
            async move { metrics::serve(metrics_listener, metrics, wait(stopped)).await.context("metrics server") }
        });
        let publisher = checkpointer::run_publisher(
            config.node_id,
            raft.clone(),
            cosigner,
            network,
            PublisherSettings {
                interval: config.checkpoints.interval(),
                cosign_timeout: config.checkpoints.cosign_timeout(),
            },
            metrics.clone(),
            stopped.clone(),
        );
        tasks.spawn(async move {
            publisher.await;
            Ok(())
        });
        tasks.spawn(follow_raft_metrics(config.node_id, raft.clone(), applied.clone(), metrics, stopped));

        Ok(Self {
            node_id: config.node_id,
            raft,
            client_addr,
            peer_addr,
            metrics_addr,
            info,
            reader,
            applied,
            health,
            stop,
            tasks,
        })
    }

    /// Completes when Raft stops by itself on a fatal error (never on [`Self::shutdown`]);
    /// returns the error.
    pub async fn raft_failed(&self) -> String {
        let mut metrics = self.raft.metrics();
        loop {
            if let Err(fatal) = &metrics.borrow_and_update().running_state {
                return fatal.to_string();
            }
            if metrics.changed().await.is_err() {
                return "the Raft core is gone".to_owned();
            }
        }
    }

    /// Stops accepting requests, lets in-flight ones finish (up to a grace period), stops Raft
    /// and waits for every task.
    pub async fn shutdown(mut self) -> anyhow::Result<()> {
        let _ = self.stop.send(true);
        let mut first_error = None;
        let drained = tokio::time::timeout(SHUTDOWN_GRACE, async {
            while let Some(joined) = self.tasks.join_next().await {
                if let Ok(Err(error)) | Err(error) = joined.map_err(anyhow::Error::from) {
                    first_error.get_or_insert(error);
                }
            }
        })
        .await;
        if drained.is_err() {
            tracing::warn!("requests still in flight after the grace period: stopping anyway");
            self.tasks.abort_all();
        }
        self.raft.shutdown().await.map_err(|error| anyhow::anyhow!("stopping Raft: {error}"))?;
        first_error.map_or(Ok(()), Err)
    }
}

fn raft_config(config: &Config) -> anyhow::Result<openraft::Config> {
    let raft = &config.raft;
    openraft::Config {
        cluster_name: format!("aegis-{}", config.origin),
        heartbeat_interval: raft.heartbeat_interval_ms,
        election_timeout_min: raft.election_timeout_min_ms,
        election_timeout_max: raft.election_timeout_max_ms,
        install_snapshot_timeout: raft.install_snapshot_timeout_ms,
        max_payload_entries: raft.max_payload_entries,
        replication_lag_threshold: raft.replication_lag_threshold,
        snapshot_policy: openraft::SnapshotPolicy::LogsSinceLast(raft.snapshot_after_entries),
        snapshot_max_chunk_size: u64::try_from(config.limits.snapshot_chunk_bytes).unwrap_or(u64::MAX),
        ..Default::default()
    }
    .validate()
    .context("invalid Raft settings")
}

/// The accepted connections of `listener`, with Nagle's algorithm off.
///
/// tonic ignores `Server::tcp_nodelay` when it is handed a listener (`serve_with_incoming*`),
/// so it is set here. Without it, h2's small writes (a response's HEADERS, DATA and trailers;
/// a follower's AppendEntries reply) wait behind the peer's delayed ACK: a 40 ms stall on Linux,
/// measured as the p99 of proofs and a large share of append latency.
fn incoming(listener: TcpListener) -> TcpIncoming {
    TcpIncoming::from(listener).with_nodelay(Some(true))
}

async fn bind(addr: SocketAddr, what: &str) -> anyhow::Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding the {what} listener to {addr}: is the port in use?"))
}

async fn wait(mut stopped: watch::Receiver<bool>) {
    let _ = stopped.wait_for(|stopped| *stopped).await;
}

/// Mirrors Raft's and the ledger's progress into the Prometheus gauges.
async fn follow_raft_metrics(
    node_id: NodeId,
    raft: Raft,
    mut applied: watch::Receiver<AppliedState>,
    metrics: Metrics,
    mut stopped: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let mut raft_metrics = raft.metrics();
    let mut leader = None;
    loop {
        {
            let current = raft_metrics.borrow_and_update().clone();
            if current.current_leader != leader {
                leader = current.current_leader;
                metrics.leader_changes_total.inc();
            }
            metrics.is_leader.set(i64::from(current.current_leader == Some(node_id)));
            metrics.applied_index.set(current.last_applied.map_or(0, |log_id| log_id.index));
            metrics.tree_size.set(applied.borrow_and_update().size.0);
        }
        tokio::select! {
            changed = raft_metrics.changed() => if changed.is_err() { return Ok(()) },
            changed = applied.changed() => if changed.is_err() { return Ok(()) },
            _ = stopped.changed() => return Ok(()),
        }
    }
}
