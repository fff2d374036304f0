//! Real openraft nodes for the transport tests, and an in-memory log and state machine for
//! them: the transport is tested with elections, replication and snapshots apart from the sled
//! storage too. The in-memory state machine only keeps the records it applied; it is not a
//! model of the ledger.

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::io::{self, Seek as _, SeekFrom, Write as _};
use std::ops::RangeBounds;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use ledger_node::cosign::Cosign;
use ledger_node::network::{PeerNetwork, PeerNetworkSettings};
use ledger_node::peer_service::PeerService;
use ledger_node::types::{
    AppendOutcome, AppendedLeaf, Command, Entry, LogId, NodeId, NodeInfo, Raft, Record, Snapshot,
    SnapshotMeta, StorageError, StoredMembership, TypeConfig, Vote,
};
use openraft::storage::{LogFlushed, RaftLogStorage, RaftStateMachine};
use openraft::{EntryPayload, ErrorSubject, ErrorVerb, LogState, RaftLogReader, RaftSnapshotBuilder};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt as _, AsyncSeekExt as _};
use tokio::task::JoinHandle;

/// A ledger node of a test cluster: Raft serving its peer port. `S` is the test's handle on
/// what the node applied.
pub(crate) struct TestNode<S = MemStateMachine> {
    pub(crate) id: NodeId,
    pub(crate) info: NodeInfo,
    pub(crate) raft: Raft,
    pub(crate) state: S,
    server: JoinHandle<()>,
}

/// openraft settings fast enough for tests on one host.
pub(crate) fn test_config(snapshot_max_chunk_size: u64) -> Arc<openraft::Config> {
    let config = openraft::Config {
        cluster_name: "aegis-test".to_owned(),
        heartbeat_interval: 100,
        election_timeout_min: 400,
        election_timeout_max: 800,
        snapshot_max_chunk_size,
        // Nothing but the tests below triggers snapshots.
        snapshot_policy: openraft::SnapshotPolicy::Never,
        max_in_snapshot_log_to_keep: 0,
        ..Default::default()
    };
    Arc::new(config.validate().expect("valid openraft config"))
}

impl TestNode {
    /// Starts node `id` on in-memory storage: its peer service on a port of its own, and Raft
    /// using `settings` to reach the others.
    pub(crate) async fn start(
        id: NodeId,
        config: Arc<openraft::Config>,
        settings: PeerNetworkSettings,
        cosigner: Arc<dyn Cosign>,
    ) -> Self {
        let state = MemStateMachine::default();
        Self::start_on(id, config, settings, cosigner, MemLog::default(), state.clone(), state).await
    }
}

impl<S> TestNode<S> {
    /// Starts node `id` on the given storage; `state` is kept for the test.
    pub(crate) async fn start_on<L, M>(
        id: NodeId,
        config: Arc<openraft::Config>,
        settings: PeerNetworkSettings,
        cosigner: Arc<dyn Cosign>,
        log: L,
        state_machine: M,
        state: S,
    ) -> Self
    where
        L: RaftLogStorage<TypeConfig>,
        M: RaftStateMachine<TypeConfig>,
    {
        let message_bytes_max = settings.message_bytes_max;
        let raft =
            Raft::new(id, config, PeerNetwork::new(settings), log, state_machine).await.expect("raft starts");
        let service = PeerService::new(raft.clone(), cosigner).into_server(message_bytes_max);
        let (peer_addr, server) = super::serve(service).await;
        let info = NodeInfo { peer_addr, client_addr: String::new(), verifier_key: String::new() };
        Self { id, info, raft, state, server }
    }

    pub(crate) async fn stop(self) {
        self.raft.shutdown().await.expect("raft shuts down");
        self.server.abort();
    }
}

/// The Raft log: vote and entries in memory.
#[derive(Clone, Default)]
pub(crate) struct MemLog {
    inner: Arc<Mutex<LogInner>>,
}

/// What the state machine applied. Clones share it, so tests can read what Raft applied.
#[derive(Clone, Default)]
pub(crate) struct MemStateMachine {
    inner: Arc<Mutex<StateInner>>,
}

impl MemStateMachine {
    /// The records applied so far, in log order.
    pub(crate) fn records(&self) -> Vec<Record> {
        lock(&self.inner).data.records.clone()
    }
}

#[derive(Default)]
struct LogInner {
    vote: Option<Vote>,
    committed: Option<LogId>,
    last_purged: Option<LogId>,
    entries: BTreeMap<u64, Entry>,
}

#[derive(Default)]
struct StateInner {
    data: StateData,
    /// The last snapshot built or installed: its metadata and bytes.
    snapshot: Option<(SnapshotMeta, Vec<u8>)>,
}

/// The state machine's content, which is also the snapshot's.
#[derive(Clone, Default, Serialize, Deserialize)]
struct StateData {
    last_applied: Option<LogId>,
    membership: StoredMembership,
    records: Vec<Record>,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().expect("no test thread panicked holding the lock")
}

fn snapshot_error(verb: ErrorVerb, error: io::Error) -> StorageError {
    StorageError::from_io_error(ErrorSubject::Snapshot(None), verb, error)
}

/// A snapshot file holding `bytes`, positioned at its start.
fn snapshot_file(bytes: &[u8]) -> Result<Box<tokio::fs::File>, StorageError> {
    let mut file = tempfile::tempfile().map_err(|error| snapshot_error(ErrorVerb::Write, error))?;
    file.write_all(bytes).map_err(|error| snapshot_error(ErrorVerb::Write, error))?;
    file.seek(SeekFrom::Start(0)).map_err(|error| snapshot_error(ErrorVerb::Seek, error))?;
    Ok(Box::new(tokio::fs::File::from_std(file)))
}

impl RaftLogReader<TypeConfig> for MemLog {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + Send>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, StorageError> {
        Ok(lock(&self.inner).entries.range(range).map(|(_, entry)| entry.clone()).collect())
    }
}

impl RaftLogStorage<TypeConfig> for MemLog {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError> {
        let inner = lock(&self.inner);
        let last_log_id = inner.entries.values().next_back().map(|entry| entry.log_id).or(inner.last_purged);
        Ok(LogState { last_purged_log_id: inner.last_purged, last_log_id })
    }

    async fn get_log_reader(&mut self) -> Self {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote) -> Result<(), StorageError> {
        lock(&self.inner).vote = Some(*vote);
        Ok(())
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, StorageError> {
        Ok(lock(&self.inner).vote)
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), StorageError> {
        lock(&self.inner).committed = committed;
        Ok(())
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, StorageError> {
        Ok(lock(&self.inner).committed)
    }

    async fn append<I>(&mut self, entries: I, callback: LogFlushed<TypeConfig>) -> Result<(), StorageError>
    where
        I: IntoIterator<Item = Entry> + Send,
        I::IntoIter: Send,
    {
        lock(&self.inner).entries.extend(entries.into_iter().map(|entry| (entry.log_id.index, entry)));
        callback.log_io_completed(Ok(()));
        Ok(())
    }

    async fn truncate(&mut self, log_id: LogId) -> Result<(), StorageError> {
        lock(&self.inner).entries.split_off(&log_id.index);
        Ok(())
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), StorageError> {
        let mut inner = lock(&self.inner);
        inner.entries = inner.entries.split_off(&(log_id.index + 1));
        inner.last_purged = Some(log_id);
        Ok(())
    }
}

impl RaftSnapshotBuilder<TypeConfig> for MemStateMachine {
    async fn build_snapshot(&mut self) -> Result<Snapshot, StorageError> {
        let mut inner = lock(&self.inner);
        let bytes = postcard::to_stdvec(&inner.data).expect("state encodes");
        let last_log_id = inner.data.last_applied;
        let meta = SnapshotMeta {
            last_log_id,
            last_membership: inner.data.membership.clone(),
            snapshot_id: format!("{}", last_log_id.map_or(0, |log_id| log_id.index)),
        };
        let snapshot = Snapshot { meta: meta.clone(), snapshot: snapshot_file(&bytes)? };
        inner.snapshot = Some((meta, bytes));
        Ok(snapshot)
    }
}

impl RaftStateMachine<TypeConfig> for MemStateMachine {
    type SnapshotBuilder = Self;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembership), StorageError> {
        let inner = lock(&self.inner);
        Ok((inner.data.last_applied, inner.data.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<AppendOutcome>, StorageError>
    where
        I: IntoIterator<Item = Entry> + Send,
        I::IntoIter: Send,
    {
        let mut inner = lock(&self.inner);
        let mut outcomes = Vec::new();
        for entry in entries {
            inner.data.last_applied = Some(entry.log_id);
            let mut outcome = AppendOutcome::default();
            match entry.payload {
                EntryPayload::Blank => {}
                EntryPayload::Normal(Command::Publish(_)) => {}
                EntryPayload::Normal(Command::Append(batch)) => {
                    for record in batch.records {
                        let leaf_index = u64::try_from(inner.data.records.len()).expect("fits");
                        outcome.leaves.push(AppendedLeaf { leaf_index, already_present: false });
                        inner.data.records.push(record);
                    }
                }
                EntryPayload::Membership(membership) => {
                    inner.data.membership = StoredMembership::new(Some(entry.log_id), membership);
                }
            }
            outcome.tree_size = u64::try_from(inner.data.records.len()).expect("fits");
            outcomes.push(outcome);
        }
        Ok(outcomes)
    }

    async fn get_snapshot_builder(&mut self) -> Self {
        self.clone()
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<tokio::fs::File>, StorageError> {
        snapshot_file(&[])
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        mut snapshot: Box<tokio::fs::File>,
    ) -> Result<(), StorageError> {
        let mut bytes = Vec::new();
        snapshot.seek(SeekFrom::Start(0)).await.map_err(|error| snapshot_error(ErrorVerb::Seek, error))?;
        snapshot.read_to_end(&mut bytes).await.map_err(|error| snapshot_error(ErrorVerb::Read, error))?;
        let data: StateData = postcard::from_bytes(&bytes).map_err(|error| {
            snapshot_error(ErrorVerb::Read, io::Error::new(io::ErrorKind::InvalidData, error))
        })?;
        let mut inner = lock(&self.inner);
        inner.data = data;
        inner.snapshot = Some((meta.clone(), bytes));
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot>, StorageError> {
        let inner = lock(&self.inner);
        match &inner.snapshot {
            Some((meta, bytes)) => Ok(Some(Snapshot { meta: meta.clone(), snapshot: snapshot_file(bytes)? })),
            None => Ok(None),
        }
    }
}

/// Waits this long at most for the cluster to reach a state; far more than it needs on one host.
pub(crate) const WAIT: Option<Duration> = Some(Duration::from_secs(15));
