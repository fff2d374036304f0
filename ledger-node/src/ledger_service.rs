//! The client gRPC service `aegis.ledger.v1.Ledger`: appends (group-committed on the leader,
//! forwarded from followers), published checkpoints, entries and proofs.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use mmr::{LeafIndex, MmrError, TreeSize};
use proto::v1;
use tokio::sync::{Semaphore, mpsc, watch};
use tokio_stream::Stream;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{Channel, Endpoint};
use tonic::{Request, Response, Status};
use tracing::Instrument as _;

use crate::batcher::{AppendBatcher, SubmitError};
use crate::checkpoint_cache::CheckpointCache;
use crate::metrics::{Metrics, ProofKind, RejectReason};
use crate::read_pool::ReadPool;
use crate::storage::ledger::AppliedState;
use crate::storage::reader::{LedgerReader, ReadError};
use crate::types::{NodeId, Raft, Record, RecordId, parse_record_id};

/// Metadata key set on an `Append` a follower forwards, so the leader never forwards it again.
const FORWARDED: &str = "aegis-forwarded";
/// Metadata key carrying the leader's client address when a write cannot be served here.
const LEADER_HINT: &str = "aegis-leader";

/// Bounds on client requests; see `[limits]` in the configuration.
#[derive(Clone, Copy, Debug)]
pub struct ServiceLimits {
    pub record_bytes_max: usize,
    pub append_records_max: usize,
    pub append_bytes_max: usize,
    pub entries_per_request_max: u64,
    pub watch_subscribers_max: usize,
    pub message_bytes_max: usize,
    /// Append calls handled at once, forwarded ones included; beyond, RESOURCE_EXHAUSTED.
    pub concurrent_appends_max: usize,
}

/// The `Ledger` service of one node.
#[derive(Clone)]
pub struct LedgerService {
    node_id: NodeId,
    raft: Raft,
    batcher: AppendBatcher,
    reader: LedgerReader,
    /// Where proofs read the ledger: off the runtime, batched (see `read_pool.rs`).
    reads: ReadPool,
    /// Parsed published checkpoints: every proof carries one (see `checkpoint_cache.rs`).
    checkpoints: Arc<CheckpointCache>,
    applied: watch::Receiver<AppliedState>,
    limits: ServiceLimits,
    leaders: Arc<LeaderClients>,
    watchers: Arc<Semaphore>,
    appends: Arc<Semaphore>,
    metrics: Metrics,
}

/// One client channel per leader address, reused across forwarded appends.
#[derive(Default)]
struct LeaderClients {
    channels: Mutex<HashMap<String, Channel>>,
}

impl LedgerService {
    /// The service, with its reader threads started (see `read_pool.rs`).
    pub fn new(
        node_id: NodeId,
        raft: Raft,
        batcher: AppendBatcher,
        reader: LedgerReader,
        applied: watch::Receiver<AppliedState>,
        limits: ServiceLimits,
        metrics: Metrics,
    ) -> std::io::Result<Self> {
        let reads = ReadPool::start(&reader)?;
        Ok(Self {
            node_id,
            raft,
            batcher,
            reader,
            reads,
            checkpoints: Arc::default(),
            applied,
            limits,
            leaders: Arc::default(),
            watchers: Arc::new(Semaphore::new(limits.watch_subscribers_max)),
            appends: Arc::new(Semaphore::new(limits.concurrent_appends_max)),
            metrics,
        })
    }

    pub fn into_server(self) -> proto::LedgerServer<Self> {
        let bytes = self.limits.message_bytes_max;
        proto::LedgerServer::new(self).max_decoding_message_size(bytes).max_encoding_message_size(bytes)
    }

    /// Checks every limit and reads every record's id before anything is proposed: a bad
    /// request changes nothing. Borrows the records, so a follower can check what it forwards.
    fn validate(&self, records: &[Vec<u8>]) -> Result<Vec<RecordId>, Status> {
        let limits = &self.limits;
        let reject = |reason: RejectReason, message: String| {
            self.metrics.requests_rejected_total(reason).inc();
            Status::invalid_argument(message)
        };
        if records.is_empty() {
            return Err(reject(
                RejectReason::InvalidArgument,
                "an Append needs at least one record".to_owned(),
            ));
        }
        if records.len() > limits.append_records_max {
            return Err(reject(
                RejectReason::TooManyRecords,
                format!(
                    "{} records in one Append, the limit is {}: split the batch",
                    records.len(),
                    limits.append_records_max
                ),
            ));
        }
        let total: usize = records.iter().map(Vec::len).sum();
        if total > limits.append_bytes_max {
            return Err(reject(
                RejectReason::RequestTooLarge,
                format!(
                    "{total} bytes of records in one Append, the limit is {}: split the batch",
                    limits.append_bytes_max
                ),
            ));
        }
        records
            .iter()
            .enumerate()
            .map(|(index, bytes)| {
                if bytes.len() > limits.record_bytes_max {
                    return Err(reject(
                        RejectReason::RecordTooLarge,
                        format!(
                            "record {index} is {} bytes, the limit is {}",
                            bytes.len(),
                            limits.record_bytes_max
                        ),
                    ));
                }
                Record::read_id(index, bytes)
                    .map_err(|error| reject(RejectReason::MalformedRecord, error.to_string()))
            })
            .collect()
    }

    /// Sends an `Append` on to the leader, once.
    async fn forward(
        &self,
        request: v1::AppendRequest,
        leader_addr: &str,
    ) -> Result<v1::AppendResponse, Status> {
        let channel = self.leaders.channel(leader_addr)?;
        let mut client = proto::LedgerClient::new(channel)
            .max_decoding_message_size(self.limits.message_bytes_max)
            .max_encoding_message_size(self.limits.message_bytes_max);
        let mut forwarded = Request::new(request);
        forwarded.metadata_mut().insert(FORWARDED, tonic::metadata::MetadataValue::from_static("1"));
        // The leader's spans join this request's trace.
        telemetry::inject_current_tonic(forwarded.metadata_mut());
        Ok(client.append(forwarded).await?.into_inner())
    }

    /// The current leader's id and client address, as this node knows them.
    fn leader(&self) -> Option<(NodeId, String)> {
        // Borrowed, not cloned: this runs on every Append.
        let receiver = self.raft.metrics();
        let metrics = receiver.borrow();
        let leader = metrics.current_leader?;
        let node = metrics.membership_config.membership().get_node(&leader)?;
        Some((leader, node.client_addr.clone()))
    }

    fn applied_size(&self) -> TreeSize {
        self.applied.borrow().size
    }

    /// The latest published checkpoint's size and note, or an error for the caller.
    fn latest_published(&self) -> Result<(u64, String), Status> {
        self.reader
            .latest_published()
            .map_err(read_status)?
            .ok_or_else(|| Status::unavailable("no checkpoint has been published yet: retry shortly"))
    }

    /// The wire form of a stored note; its convenience fields come from the note itself.
    fn signed_checkpoint(&self, note: String) -> Result<v1::SignedCheckpoint, Status> {
        let checkpoint = mmr::SignedNote::parse(note.as_bytes(), &mmr::NoteLimits::default())
            .ok()
            .and_then(|parsed| mmr::Checkpoint::from_body(parsed.text()).ok())
            .ok_or_else(|| Status::internal("a stored checkpoint is corrupt: see this node's logs"))?;
        Ok(v1::SignedCheckpoint { tree_size: checkpoint.size.0, root: checkpoint.root.0.to_vec(), note })
    }

    /// The published checkpoint of exactly `size`, if there is one.
    fn checkpoint_at(&self, size: u64) -> Result<Option<v1::SignedCheckpoint>, Status> {
        if let Some(checkpoint) = self.checkpoints.get(size) {
            return Ok(Some(checkpoint));
        }
        match self.reader.published(size).map_err(read_status)? {
            Some(note) => Ok(Some(self.cache_checkpoint(size, self.signed_checkpoint(note)?))),
            None => Ok(None),
        }
    }

    /// The wire form of the published checkpoint of `size` whose note is `note`.
    fn published_checkpoint(&self, size: u64, note: String) -> Result<v1::SignedCheckpoint, Status> {
        match self.checkpoints.get(size) {
            Some(checkpoint) => Ok(checkpoint),
            None => Ok(self.cache_checkpoint(size, self.signed_checkpoint(note)?)),
        }
    }

    /// Caches the checkpoint stored under `size`, if its note agrees on the size.
    fn cache_checkpoint(&self, size: u64, checkpoint: v1::SignedCheckpoint) -> v1::SignedCheckpoint {
        if checkpoint.tree_size == size {
            self.checkpoints.insert(checkpoint.clone());
        }
        checkpoint
    }
}

impl LeaderClients {
    fn channel(&self, addr: &str) -> Result<Channel, Status> {
        let mut channels = self.channels.lock().expect("the leader channel map is never poisoned");
        if let Some(channel) = channels.get(addr) {
            return Ok(channel.clone());
        }
        let endpoint = Endpoint::from_shared(format!("http://{addr}"))
            .map_err(|_| {
                Status::internal(format!("the leader's client address {addr:?} is not a valid URI"))
            })?
            .tcp_nodelay(true)
            .connect_timeout(std::time::Duration::from_secs(2));
        let channel = endpoint.connect_lazy();
        channels.insert(addr.to_owned(), channel.clone());
        Ok(channel)
    }
}

type EntryStream = Pin<Box<dyn Stream<Item = Result<v1::GetEntriesResponse, Status>> + Send>>;
type CheckpointStream = Pin<Box<dyn Stream<Item = Result<v1::WatchCheckpointsResponse, Status>> + Send>>;

#[tonic::async_trait]
impl proto::Ledger for LedgerService {
    async fn append(
        &self,
        request: Request<v1::AppendRequest>,
    ) -> Result<Response<v1::AppendResponse>, Status> {
        // A SERVER span in the caller's trace (W3C context in the gRPC metadata), covering the
        // append until it is committed on a majority and applied.
        let span = tracing::info_span!(
            "append",
            otel.name = "aegis.ledger.v1.Ledger/Append",
            otel.kind = "server",
            rpc.system = "grpc",
            rpc.service = "aegis.ledger.v1.Ledger",
            rpc.method = "Append",
            aegis.records = request.get_ref().records.len(),
        );
        let _ = telemetry::set_parent_from_tonic(&span, &request);
        self.append_in_span(request).instrument(span).await
    }
    async fn get_checkpoint(
        &self,
        request: Request<v1::GetCheckpointRequest>,
    ) -> Result<Response<v1::GetCheckpointResponse>, Status> {
        let checkpoint = match request.into_inner().tree_size {
            None => {
                let (size, note) = self.latest_published()?;
                self.published_checkpoint(size, note)?
            }
            Some(size) => self
                .checkpoint_at(size)?
                .ok_or_else(|| Status::not_found(format!("no checkpoint of size {size} was published")))?,
        };
        Ok(Response::new(v1::GetCheckpointResponse { checkpoint: Some(checkpoint) }))
    }

    type GetEntriesStream = EntryStream;

    async fn get_entries(
        &self,
        request: Request<v1::GetEntriesRequest>,
    ) -> Result<Response<EntryStream>, Status> {
        let v1::GetEntriesRequest { start, end } = request.into_inner();
        if start >= end {
            return Err(Status::invalid_argument(format!(
                "empty range: start {start} must be below end {end}"
            )));
        }
        if end - start > self.limits.entries_per_request_max {
            return Err(Status::invalid_argument(format!(
                "{} entries requested, at most {} per request: page through the range",
                end - start,
                self.limits.entries_per_request_max
            )));
        }
        let (published, _) = self.latest_published()?;
        if end > published {
            return Err(Status::out_of_range(format!(
                "entries end at {end}, but the latest published checkpoint covers {published} leaves"
            )));
        }
        let (sender, receiver) = mpsc::channel(64);
        let reader = self.reader.clone();
        // sled reads may block: stream from a blocking thread, bounded by the channel.
        tokio::task::spawn_blocking(move || {
            for entry in reader.leaves(start, end) {
                let item = entry
                    .map(|(leaf_index, record)| v1::GetEntriesResponse {
                        leaf_index,
                        record: record.to_vec(),
                    })
                    .map_err(read_status);
                if sender.blocking_send(item).is_err() {
                    return; // the client went away
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(receiver))))
    }

    async fn get_inclusion_proof(
        &self,
        request: Request<v1::GetInclusionProofRequest>,
    ) -> Result<Response<v1::GetInclusionProofResponse>, Status> {
        let started = Instant::now();
        let request = request.into_inner();
        let index = match request.leaf {
            Some(v1::get_inclusion_proof_request::Leaf::LeafIndex(index)) => index,
            Some(v1::get_inclusion_proof_request::Leaf::RecordId(id)) => {
                let record_id = parse_record_id(&id).ok_or_else(|| {
                    Status::invalid_argument(format!("record id {id:?} is not a canonical lowercase UUIDv7"))
                })?;
                self.reader
                    .leaf_index_of(&record_id)
                    .map_err(read_status)?
                    .ok_or_else(|| Status::not_found(format!("no record with id {id} is in the log")))?
            }
            None => return Err(Status::invalid_argument("give a leaf_index or a record_id")),
        };
        let (size, checkpoint) = self.proof_size(request.tree_size)?;
        if index >= size {
            return Err(match request.tree_size {
                Some(_) => Status::out_of_range(format!("leaf {index} is not in the tree of size {size}")),
                None => Status::unavailable(format!(
                    "leaf {index} is not covered by a published checkpoint yet (the latest covers {size} leaves): \
                     retry after the next checkpoint"
                )),
            });
        }
        let (proof, record) = self
            .reads
            .run(move |reader| {
                let proof = reader.view(TreeSize(size)).inclusion_proof(LeafIndex(index), TreeSize(size))?;
                let record = reader.leaf(index).map_err(MmrError::Store)?;
                Ok::<_, MmrError<ReadError>>((proof, record))
            })
            .await
            .map_err(|_| Status::internal("proof task failed"))?
            .map_err(mmr_status)?;
        let record =
            record.ok_or_else(|| Status::internal(format!("leaf {index} is missing from this node")))?;
        self.metrics.proof_latency_seconds(ProofKind::Inclusion).observe(started.elapsed().as_secs_f64());
        Ok(Response::new(v1::GetInclusionProofResponse::from_proof(&proof, record, checkpoint)))
    }

    async fn get_consistency_proof(
        &self,
        request: Request<v1::GetConsistencyProofRequest>,
    ) -> Result<Response<v1::GetConsistencyProofResponse>, Status> {
        let started = Instant::now();
        let request = request.into_inner();
        let (new_size, checkpoint) = self.proof_size(request.new_size)?;
        if request.old_size > new_size {
            return Err(Status::invalid_argument(format!(
                "old size {} is larger than new size {new_size}",
                request.old_size
            )));
        }
        let old_size = request.old_size;
        let proof = self
            .reads
            .run(move |reader| {
                reader.view(TreeSize(new_size)).consistency_proof(TreeSize(old_size), TreeSize(new_size))
            })
            .await
            .map_err(|_| Status::internal("proof task failed"))?
            .map_err(mmr_status)?;
        self.metrics.proof_latency_seconds(ProofKind::Consistency).observe(started.elapsed().as_secs_f64());
        Ok(Response::new(v1::GetConsistencyProofResponse::from_proof(&proof, checkpoint)))
    }

    type WatchCheckpointsStream = CheckpointStream;

    async fn watch_checkpoints(
        &self,
        request: Request<v1::WatchCheckpointsRequest>,
    ) -> Result<Response<CheckpointStream>, Status> {
        let permit = Arc::clone(&self.watchers).try_acquire_owned().map_err(|_| {
            Status::resource_exhausted(format!(
                "{} checkpoint watchers already: retry later or poll GetCheckpoint",
                self.limits.watch_subscribers_max
            ))
        })?;
        // Without a position, a watcher starts at the latest published checkpoint.
        let mut first = match request.into_inner().after_size {
            Some(after) => after.saturating_add(1),
            None => self.reader.latest_published().map_err(read_status)?.map_or(0, |(size, _)| size),
        };
        let (sender, receiver) = mpsc::channel(16);
        let reader = self.reader.clone();
        let mut applied = self.applied.clone();
        let service = self.clone();
        tokio::spawn(async move {
            let _permit = permit;
            loop {
                // Everything published from `first` on, oldest first, in pages.
                let published: Vec<_> = reader.published_from(first).take(64).collect();
                let caught_up = published.len() < 64;
                for item in published {
                    let message = item.map_err(read_status).and_then(|(size, note)| {
                        first = size.saturating_add(1);
                        service.signed_checkpoint(note)
                    });
                    let message = message
                        .map(|checkpoint| v1::WatchCheckpointsResponse { checkpoint: Some(checkpoint) });
                    if sender.send(message).await.is_err() {
                        return;
                    }
                }
                if caught_up {
                    // Publications arrive through applied Raft entries: wake on every apply.
                    tokio::select! {
                        changed = applied.changed() => if changed.is_err() { return },
                        () = sender.closed() => return,
                    }
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(receiver))))
    }
}

impl LedgerService {
    /// `Append`, inside its span: validation, forwarding from a follower, group commit.
    async fn append_in_span(
        &self,
        request: Request<v1::AppendRequest>,
    ) -> Result<Response<v1::AppendResponse>, Status> {
        let started = Instant::now();
        let Ok(_in_flight) = self.appends.try_acquire() else {
            self.metrics.requests_rejected_total(RejectReason::TooManyAppends).inc();
            return Err(Status::resource_exhausted(format!(
                "{} Append calls are in flight on this node: retry with backoff",
                self.limits.concurrent_appends_max
            )));
        };
        let forwarded = request.metadata().contains_key(FORWARDED);
        let request = request.into_inner();
        match self.leader() {
            Some((leader, _)) if leader == self.node_id => {}
            Some((_, leader_addr)) if !forwarded => {
                // Validate here too, so a bad request never costs the leader a round trip.
                self.validate(&request.records)?;
                let response = self.forward(request, &leader_addr).await?;
                self.metrics.append_latency_seconds.observe(started.elapsed().as_secs_f64());
                return Ok(Response::new(response));
            }
            leader => return Err(not_leader(leader.map(|(_, addr)| addr))),
        }
        let ids = self.validate(&request.records)?;
        let records: Vec<Record> =
            ids.into_iter().zip(request.records).map(|(id, bytes)| Record { id, bytes }).collect();
        let count = records.len();
        let commit = tracing::info_span!(
            "commit",
            otel.name = "aegis.ledger.commit",
            otel.kind = "internal",
            aegis.records = count
        );
        let appended =
            self.batcher.submit(records).instrument(commit).await.map_err(|error| match error {
                SubmitError::QueueFull { .. } => {
                    self.metrics.requests_rejected_total(RejectReason::QueueFull).inc();
                    Status::resource_exhausted(error.to_string())
                }
                SubmitError::NotLeader { leader } => not_leader(leader.map(|(_, node)| node.client_addr)),
                SubmitError::Raft(_) | SubmitError::ShuttingDown => Status::unavailable(format!(
                    "{error}; the outcome is unknown: retry with the same record ids (appends are idempotent)"
                )),
            })?;
        let duplicates = appended.leaves.iter().filter(|leaf| leaf.already_present).count();
        self.metrics.append_records_total.inc_by((count - duplicates) as u64);
        self.metrics.append_duplicates_total.inc_by(duplicates as u64);
        self.metrics.append_latency_seconds.observe(started.elapsed().as_secs_f64());
        let results = appended
            .leaves
            .iter()
            .map(|leaf| v1::AppendResult {
                leaf_index: leaf.leaf_index,
                already_present: leaf.already_present,
            })
            .collect();
        Ok(Response::new(v1::AppendResponse { results, tree_size: appended.tree_size }))
    }

    /// The tree size a proof is for: the requested one (bounded by what this node applied),
    /// or the latest published checkpoint's. Returns the checkpoint of that size if published.
    fn proof_size(&self, requested: Option<u64>) -> Result<(u64, Option<v1::SignedCheckpoint>), Status> {
        match requested {
            Some(size) => {
                let applied = self.applied_size().0;
                if size > applied {
                    return Err(Status::out_of_range(format!(
                        "tree size {size} is beyond this node's {applied} applied leaves"
                    )));
                }
                Ok((size, self.checkpoint_at(size)?))
            }
            None => {
                let (size, note) = self.latest_published()?;
                Ok((size, Some(self.published_checkpoint(size, note)?)))
            }
        }
    }
}

fn not_leader(leader_addr: Option<String>) -> Status {
    let mut status = Status::unavailable(match &leader_addr {
        Some(addr) => format!("this node is not the leader; the leader is at {addr}: retry there or here"),
        None => "no leader is known right now (election in progress?): retry shortly".to_owned(),
    });
    if let Some(value) = leader_addr.and_then(|addr| addr.parse().ok()) {
        status.metadata_mut().insert(LEADER_HINT, value);
    }
    status
}

fn read_status(error: ReadError) -> Status {
    tracing::error!(%error, "reading the ledger failed");
    Status::internal("this node could not read its ledger: see its logs")
}

fn mmr_status(error: MmrError<ReadError>) -> Status {
    match error {
        MmrError::SizeBeyondCurrent { .. } | MmrError::IndexOutOfRange { .. } => {
            Status::out_of_range(error.to_string())
        }
        MmrError::SizeDecreased { .. } => Status::invalid_argument(error.to_string()),
        MmrError::Store(read) => read_status(read),
        MmrError::MissingNode(_) | MmrError::Full => {
            tracing::error!(%error, "the ledger could not build a proof");
            Status::internal("this node could not build the proof: see its logs")
        }
    }
}
