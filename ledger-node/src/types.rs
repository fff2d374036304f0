//! The openraft type configuration and the data a Raft log entry carries: batches of records.

use std::fmt;
use std::time::SystemTime;

use prost::Message as _;
use serde::{Deserialize, Serialize};

openraft::declare_raft_types!(
    /// Aegis's Raft types: entries carry [`Command`]s, applying one yields an [`AppendOutcome`].
    pub TypeConfig:
        D = Command,
        R = AppendOutcome,
        NodeId = NodeId,
        Node = NodeInfo,
        Entry = openraft::Entry<TypeConfig>,
        SnapshotData = tokio::fs::File,
        AsyncRuntime = openraft::TokioRuntime,
);

/// A ledger node's id in the Raft group. Never reused for a node whose data was wiped.
pub type NodeId = u64;

pub type Raft = openraft::Raft<TypeConfig>;
pub type LogId = openraft::LogId<NodeId>;
pub type Entry = openraft::Entry<TypeConfig>;
pub type StorageError = openraft::StorageError<NodeId>;
pub type StoredMembership = openraft::StoredMembership<NodeId, NodeInfo>;
pub type SnapshotMeta = openraft::SnapshotMeta<NodeId, NodeInfo>;
pub type Snapshot = openraft::storage::Snapshot<TypeConfig>;
pub type Vote = openraft::Vote<NodeId>;

/// What the cluster knows of a member: where to reach it and the key it signs checkpoints with.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeInfo {
    /// Address of the peer (Raft) service, `host:port`. Only other ledger nodes connect here.
    pub peer_addr: String,
    /// Address of the client service (`Ledger`, `Admin`), `host:port`, for gateways and auditors.
    /// Followers return the leader's in their answers to writes.
    pub client_addr: String,
    /// The node's checkpoint verifier key (`<name>+<hex id>+<base64 key>`). The leader checks
    /// the node's cosignatures with it, and auditors build their policy from the members' keys.
    pub verifier_key: String,
}

impl fmt::Display for NodeInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "peer {} client {}", self.peer_addr, self.client_addr)
    }
}

/// The 16 bytes of an audit record's UUIDv7 id: the key of idempotent appends.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct RecordId(pub [u8; 16]);

/// One audit record as a Raft entry carries it: its id, read once by the leader, and the exact
/// bytes the gateway sent, which become the leaf data unchanged.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    pub id: RecordId,
    #[serde(with = "serde_bytes")]
    pub bytes: Vec<u8>,
}

/// What one Raft log entry asks every node's state machine to do.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    /// Append these records, in order, skipping ids already in the log.
    Append(AppendBatch),
    /// Store this checkpoint as published. The leader proposes it once a majority of voters
    /// cosigned; every node re-verifies the signatures against the membership's verifier keys
    /// and the root against its own tree before storing it, so replication cannot smuggle in a
    /// checkpoint the node would not itself vouch for.
    Publish(PublishCheckpoint),
}

/// A checkpoint note signed by a majority of voters.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PublishCheckpoint {
    /// The C2SP signed note, text and signature lines.
    pub note: String,
}

/// The payload of an append: records to append in this order.
/// Several clients' `Append` calls are coalesced into one batch (group commit).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppendBatch {
    pub records: Vec<Record>,
}

/// Where one record of a batch landed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppendedLeaf {
    pub leaf_index: u64,
    /// The record id was already in the log (or earlier in the same batch): nothing was appended.
    pub already_present: bool,
}

/// The result of applying one [`Command`]: for an append, one [`AppendedLeaf`] per record, in
/// order; for a publication, no leaves. openraft hands it to the leader's `client_write` caller
/// only; it is never persisted.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppendOutcome {
    pub leaves: Vec<AppendedLeaf>,
    /// Tree size right after this entry was applied.
    pub tree_size: u64,
    /// When the state machine applied the entry, for the leader's spans; measured only while
    /// spans are exported. Local to this process: never encoded.
    #[serde(skip)]
    pub applied: Option<ApplyTimes>,
}

/// When the state machine applied an entry (wall clock). The entries of one `apply` call share
/// their times: they are applied in one atomic sled batch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ApplyTimes {
    /// When openraft handed the committed entry to the state machine.
    pub started: SystemTime,
    /// When its records were in the tree and visible to readers.
    pub finished: SystemTime,
}

impl fmt::Display for Command {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Command::Append(batch) => write!(f, "append {} records", batch.records.len()),
            Command::Publish(_) => f.write_str("publish checkpoint"),
        }
    }
}

/// Why bytes offered as an audit record were refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RecordError {
    #[error("record {index} is not a valid AuditRecord protobuf encoding")]
    Malformed { index: usize },
    #[error("record {index} has record_id {id:?}, expected a canonical lowercase hyphenated UUIDv7")]
    BadRecordId { index: usize, id: String },
}

impl Record {
    /// Reads the record id out of `bytes`, the encoding of an `AuditRecord`, and keeps the
    /// bytes as they are. `index` names the record in its request for error messages.
    pub fn parse(index: usize, bytes: Vec<u8>) -> Result<Self, RecordError> {
        Ok(Self { id: Self::read_id(index, &bytes)?, bytes })
    }

    /// Reads and checks the record id of the `AuditRecord` encoded in `bytes`, without taking them.
    pub fn read_id(index: usize, bytes: &[u8]) -> Result<RecordId, RecordError> {
        let record = proto::v1::AuditRecord::decode(bytes).map_err(|_| RecordError::Malformed { index })?;
        match parse_record_id(&record.record_id) {
            Some(id) => Ok(id),
            None => Err(RecordError::BadRecordId { index, id: record.record_id }),
        }
    }
}

/// Parses a canonical (lowercase, hyphenated) UUIDv7 string.
pub fn parse_record_id(text: &str) -> Option<RecordId> {
    let uuid = uuid::Uuid::try_parse(text).ok()?;
    let mut canonical_text = [0u8; uuid::fmt::Hyphenated::LENGTH];
    let canonical = uuid.hyphenated().encode_lower(&mut canonical_text) == text;
    (canonical && uuid.get_version_num() == 7).then(|| RecordId(uuid.into_bytes()))
}
