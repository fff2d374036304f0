//! Group commit on the leader: concurrent `Append` calls are coalesced into one Raft entry.
//!
//! openraft waits for a log flush on every `client_write`, so one record per entry would cap a
//! node at a couple of thousand entries per second. The batcher gathers what arrives within a
//! short linger (bounded by records and bytes) into one entry, and keeps several entries in
//! flight so replication, flushing and applying overlap.
//!
//! While spans are exported, each submitter's span (`aegis.ledger.commit`) gets the Raft write
//! of its entry as children, exported once `client_write` returns: `aegis.ledger.raft.client_write`
//! (proposed → returned) with `aegis.ledger.raft.replicate` (proposed → the state machine took
//! the entry: replicated to a majority, flushed, committed) and `aegis.ledger.apply`.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use openraft::error::{ClientWriteError, RaftError};
use openraft::raft::ClientWriteResponse;
use telemetry::{FinishedSpan, KeyValue, SpanKind};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, oneshot};
use tokio::time::Instant;

use crate::metrics::Metrics;
use crate::types::{AppendBatch, AppendedLeaf, Command, NodeId, NodeInfo, Raft, Record, TypeConfig};

/// Raft entries the leader keeps proposed but not yet applied: enough to overlap replication,
/// flushing and applying; each holds at most `group_commit.entry_bytes_max` of records.
pub const ENTRIES_IN_FLIGHT_MAX: usize = 64;

/// Limits of group commit; see `[group_commit]` in the configuration.
#[derive(Clone, Copy, Debug)]
pub struct BatcherSettings {
    pub entry_records_max: usize,
    pub entry_bytes_max: usize,
    pub linger: Duration,
    /// Records accepted but not yet acknowledged; beyond, `submit` refuses at once.
    pub queue_records_max: usize,
    /// Raft entries proposed and not yet applied.
    pub entries_in_flight_max: usize,
}

/// Hands records to the group-commit task. Cheap to clone.
#[derive(Clone)]
pub struct AppendBatcher {
    requests: mpsc::UnboundedSender<Pending>,
    queue: Arc<Semaphore>,
    queue_records_max: usize,
}

/// Where a submitted batch of records landed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Appended {
    pub leaves: Vec<AppendedLeaf>,
    /// Tree size after the Raft entry that carried these records was applied.
    pub tree_size: u64,
}

/// Why records were not appended. Only `Rejected` is certain to have changed nothing; after
/// `Raft` the outcome is unknown and the caller retries with the same record ids.
#[derive(Debug, thiserror::Error)]
pub enum SubmitError {
    #[error("the append queue is full ({queue_records_max} records waiting): retry with backoff")]
    QueueFull { queue_records_max: usize },
    #[error("this node is not the leader")]
    NotLeader { leader: Option<(NodeId, NodeInfo)> },
    #[error("the Raft group could not commit the records: {0}")]
    Raft(String),
    #[error("the node is shutting down")]
    ShuttingDown,
}

struct Pending {
    records: Vec<Record>,
    bytes: usize,
    permit: OwnedSemaphorePermit,
    reply: oneshot::Sender<Result<Appended, SubmitError>>,
    /// The submitter's span, when spans are exported: the Raft write's spans go under it.
    span: Option<tracing::Span>,
}

/// What `client_write` answers.
type WriteResult =
    Result<ClientWriteResponse<TypeConfig>, RaftError<NodeId, ClientWriteError<NodeId, NodeInfo>>>;

impl AppendBatcher {
    /// Starts the group-commit task for `raft`; it ends when every `AppendBatcher` is dropped.
    pub fn start(raft: Raft, settings: BatcherSettings, metrics: Metrics) -> Self {
        let (requests, receiver) = mpsc::unbounded_channel();
        let queue = Arc::new(Semaphore::new(settings.queue_records_max));
        tokio::spawn(run(raft, settings, metrics, receiver));
        Self { requests, queue, queue_records_max: settings.queue_records_max }
    }

    /// Appends `records` (already validated) in order and waits until they are committed and
    /// applied. All of one call's records go into the same Raft entry.
    pub async fn submit(&self, records: Vec<Record>) -> Result<Appended, SubmitError> {
        let count = u32::try_from(records.len()).unwrap_or(u32::MAX);
        let permit = Arc::clone(&self.queue)
            .try_acquire_many_owned(count)
            .map_err(|_| SubmitError::QueueFull { queue_records_max: self.queue_records_max })?;
        let bytes = records.iter().map(|record| record.bytes.len()).sum();
        let (reply, answer) = oneshot::channel();
        let span = telemetry::exporting().then(tracing::Span::current);
        self.requests
            .send(Pending { records, bytes, permit, reply, span })
            .map_err(|_| SubmitError::ShuttingDown)?;
        answer.await.map_err(|_| SubmitError::ShuttingDown)?
    }
}

async fn run(
    raft: Raft,
    settings: BatcherSettings,
    metrics: Metrics,
    mut requests: mpsc::UnboundedReceiver<Pending>,
) {
    let in_flight = Arc::new(Semaphore::new(settings.entries_in_flight_max));
    // A request that did not fit the previous entry starts the next one.
    let mut carried: Option<Pending> = None;
    loop {
        let first = match carried.take() {
            Some(pending) => pending,
            None => match requests.recv().await {
                Some(pending) => pending,
                None => return,
            },
        };
        let Ok(slot) = Arc::clone(&in_flight).acquire_owned().await else { return };
        let mut batch = vec![first];
        let (mut records, mut bytes) = (batch[0].records.len(), batch[0].bytes);
        let deadline = Instant::now() + settings.linger;
        while records < settings.entry_records_max && bytes < settings.entry_bytes_max {
            let next = match requests.try_recv() {
                Ok(pending) => pending,
                Err(mpsc::error::TryRecvError::Disconnected) => break,
                Err(mpsc::error::TryRecvError::Empty) => {
                    match tokio::time::timeout_at(deadline, requests.recv()).await {
                        Ok(Some(pending)) => pending,
                        Ok(None) | Err(_) => break,
                    }
                }
            };
            if records + next.records.len() > settings.entry_records_max
                || bytes + next.bytes > settings.entry_bytes_max
            {
                carried = Some(next);
                break;
            }
            records += next.records.len();
            bytes += next.bytes;
            batch.push(next);
        }
        metrics.entry_records.observe(records as f64);
        let raft = raft.clone();
        tokio::spawn(async move {
            commit(&raft, batch).await;
            drop(slot);
        });
    }
}

/// Proposes one entry with the records of `batch` and answers each request with its share.
async fn commit(raft: &Raft, batch: Vec<Pending>) {
    let mut records = Vec::with_capacity(batch.iter().map(|pending| pending.records.len()).sum());
    let mut replies = Vec::with_capacity(batch.len());
    let mut spans = Vec::new();
    for pending in batch {
        replies.push((pending.records.len(), pending.reply, pending.permit));
        records.extend(pending.records);
        spans.extend(pending.span);
    }
    let entry_records = records.len();
    let proposed = (!spans.is_empty()).then(SystemTime::now);
    let result = raft.client_write(Command::Append(AppendBatch { records })).await;
    // Exported before the answers go out: a submitter's span ends once its caller has the
    // answer, so after these children.
    if let Some(proposed) = proposed {
        let write = client_write_span(proposed, SystemTime::now(), entry_records, &result);
        // Dropped here: a submitter's span closes as soon as its caller is done with it.
        for span in spans {
            telemetry::export_finished(&span, write.clone());
        }
    }
    match result {
        Ok(response) => {
            let outcome = response.data;
            let mut leaves = outcome.leaves.into_iter();
            for (count, reply, _permit) in replies {
                let mine: Vec<AppendedLeaf> = leaves.by_ref().take(count).collect();
                // The caller may have gone away (client cancelled): its records are in the log anyway.
                let _ = reply.send(Ok(Appended { leaves: mine, tree_size: outcome.tree_size }));
            }
        }
        Err(error) => {
            for (_, reply, _permit) in replies {
                let _ = reply.send(Err(submit_error(&error)));
            }
        }
    }
}

/// The spans of one entry's `client_write`, proposed at `proposed`, returned at `returned`:
/// replication to a majority until the state machine took the entry, then applying it.
fn client_write_span(
    proposed: SystemTime,
    returned: SystemTime,
    entry_records: usize,
    result: &WriteResult,
) -> FinishedSpan {
    let int = |value: u64| i64::try_from(value).unwrap_or(i64::MAX);
    let mut write =
        FinishedSpan::new("aegis.ledger.raft.client_write", SpanKind::Internal, proposed, returned);
    write
        .attributes
        .push(KeyValue::new("aegis.ledger.entry_records", i64::try_from(entry_records).unwrap_or(i64::MAX)));
    match result {
        Ok(response) => {
            write.attributes.push(KeyValue::new("aegis.raft.log_index", int(response.log_id.index)));
            write.attributes.push(KeyValue::new("aegis.raft.term", int(response.log_id.leader_id.term)));
            write.attributes.push(KeyValue::new("aegis.ledger.tree_size", int(response.data.tree_size)));
            if let Some(applied) = response.data.applied {
                write.children.push(FinishedSpan::new(
                    "aegis.ledger.raft.replicate",
                    SpanKind::Internal,
                    proposed,
                    applied.started,
                ));
                write.children.push(FinishedSpan::new(
                    "aegis.ledger.apply",
                    SpanKind::Internal,
                    applied.started,
                    applied.finished,
                ));
            }
        }
        Err(error) => write.error = Some(error.to_string()),
    }
    write
}

fn submit_error(error: &RaftError<NodeId, ClientWriteError<NodeId, NodeInfo>>) -> SubmitError {
    match error {
        RaftError::APIError(ClientWriteError::ForwardToLeader(forward)) => {
            SubmitError::NotLeader { leader: forward.leader_id.zip(forward.leader_node.clone()) }
        }
        RaftError::Fatal(openraft::error::Fatal::Stopped) => SubmitError::ShuttingDown,
        other => SubmitError::Raft(other.to_string()),
    }
}
